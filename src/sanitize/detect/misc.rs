//! CRLF/header injection, JNDI and server-side template injection, NoSQL operators.

pub(crate) fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// CR or LF followed by something shaped like a header field (`Name: value`) or a status
/// line (`HTTP/1.1 200`).
pub(crate) fn detect_crlf(s: &str, mask: u32) -> Option<&'static str> {
    let b = s.as_bytes();
    if mask & super::B_CRLF == 0 {
        return None;
    }
    let n = b.len();
    let mut i = 0;
    while i < n {
        if b[i] == b'\r' || b[i] == b'\n' {
            let mut j = i + 1;
            while j < n && (b[j] == b'\r' || b[j] == b'\n' || b[j] == b' ' || b[j] == b'\t') {
                j += 1;
            }
            let ns = j;
            while j < n && (b[j].is_ascii_alphanumeric() || b[j] == b'-' || b[j] == b'_') {
                j += 1;
            }
            let name = &b[ns..j];
            if name.len() >= 2 && j < n && b[j] == b':' {
                let has_dash = name.contains(&b'-');
                let lname = name.to_ascii_lowercase();
                let known = matches!(
                    lname.as_slice(),
                    b"location" | b"refresh" | b"host" | b"cookie" | b"server" | b"link" | b"via"
                ) || lname.starts_with(b"set-cookie")
                    || lname.starts_with(b"content-")
                    || lname.starts_with(b"x-")
                    || lname.starts_with(b"access-control-");
                if known || (has_dash && name[0].is_ascii_uppercase()) {
                    return Some("crlf.header_injection");
                }
            }
            if b[ns..].len() >= 8 && b[ns..ns + 5].eq_ignore_ascii_case(b"HTTP/") {
                return Some("crlf.response_splitting");
            }
            if b[ns..].starts_with(b"<") && b[ns..].len() > 1 && b[ns + 1].is_ascii_alphabetic() {
                // body injection after a blank line: handled by XSS when dangerous
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    None
}

/// `${jndi:…}` (with `${lower:j}` / `${::-j}` obfuscation), and template expressions that
/// compute (`{{7*7}}`, `${7*7}`, `<%= … %>`, `#{…}`, `*{…}`) or reach into objects
/// (`{{config.__class__}}`, `${T(java.lang.Runtime)}`). Plain placeholders (`{{ name }}`,
/// `${HOME}`) pass.
pub(crate) fn detect_template(s: &str, mask: u32) -> Option<&'static str> {
    let b = s.as_bytes();
    if mask & (super::B_LBRACE | super::B_PCT) == 0 {
        return None;
    }
    // JNDI: collapse lookups and look for "jndi:" inside a ${ … }.
    if let Some(p) = super::find_bytes(b, b"${") {
        let collapsed = collapse_lookups(&b[p..b.len().min(p + 512)]);
        if super::find_bytes(&collapsed, b"${jndi:").is_some() {
            return Some("template.jndi");
        }
    }
    let mut budget = 32;
    let n = b.len();
    let mut i = 0;
    while i + 1 < n {
        let (open_len, close): (usize, &[u8]) = match (b[i], b[i + 1]) {
            (b'{', b'{') => (2, b"}}"),
            (b'$', b'{') | (b'#', b'{') | (b'*', b'{') | (b'@', b'{') | (b'~', b'{') => (2, b"}"),
            (b'<', b'%') => (2, b"%>"),
            (b'{', b'%') => (2, b"%}"),
            (b'{', b'#') => (2, b"#}"),
            _ => {
                i += 1;
                continue;
            }
        };
        budget -= 1;
        if budget == 0 {
            break;
        }
        let body_start = i + open_len;
        let rest = &b[body_start..n.min(body_start + 400)];
        let body = match super::find_bytes(rest, close) {
            Some(e) => &rest[..e],
            None => {
                i += 1;
                continue;
            }
        };
        let body: &[u8] = if b[i] == b'<' && body.first() == Some(&b'=') {
            &body[1..]
        } else {
            body
        };
        if template_body_active(body, b[i] == b'<' || b[i + 1] == b'%') {
            return Some("template.expression");
        }
        i += 1;
    }
    None
}

fn collapse_lookups(b: &[u8]) -> Vec<u8> {
    // ${lower:j} -> j ; ${::-j} -> j ; ${env:X:-j} -> j ; lowercase everything
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() && b[i + 1] == b'{' {
            // find the matching close of an inner lookup that contains ':' before any '$'
            let inner = &b[i + 2..];
            let close = inner.iter().position(|c| *c == b'}');
            let dollar = inner.iter().position(|c| *c == b'$');
            if let Some(cl) = close
                && dollar.map(|d| d > cl).unwrap_or(true)
            {
                let seg = &inner[..cl];
                if let Some(dash) = memchr::memmem::rfind(seg, b":-") {
                    out.extend(seg[dash + 2..].iter().map(|c| c.to_ascii_lowercase()));
                    i += 2 + cl + 1;
                    continue;
                }
                if let Some(colon) = seg.iter().position(|c| *c == b':') {
                    let f = seg[..colon].to_ascii_lowercase();
                    if matches!(f.as_slice(), b"lower" | b"upper") {
                        out.extend(seg[colon + 1..].iter().map(|c| c.to_ascii_lowercase()));
                        i += 2 + cl + 1;
                        continue;
                    }
                }
            }
        }
        out.push(b[i].to_ascii_lowercase());
        i += 1;
    }
    out
}

fn template_body_active(body: &[u8], code_block: bool) -> bool {
    let t: Vec<u8> = body.iter().copied().filter(|c| !is_space(*c)).collect();
    if t.is_empty() {
        return false;
    }
    let lc = t.to_ascii_lowercase();
    // arithmetic between numbers: 7*7, 7*'7'
    for w in lc.windows(3) {
        if w[0].is_ascii_digit()
            && matches!(w[1], b'*' | b'+' | b'-' | b'/' | b'%')
            && (w[2].is_ascii_digit() || w[2] == b'\'' || w[2] == b'"')
        {
            return true;
        }
    }
    // object walking / dangerous names
    const MARKERS: &[&[u8]] = &[
        b"__",
        b"t(java",
        b"java.lang",
        b"runtime",
        b"getclass",
        b".class",
        b"forname",
        b"processbuilder",
        b"exec(",
        b"system(",
        b"popen",
        b"eval(",
        b"import",
        b"require(",
        b"constructor",
        b"config.",
        b"request.",
        b"self.",
        b"lipsum",
        b"cycler",
        b"joiner",
        b"|attr",
        b"getruntime",
        b"new",
        b"${",
        b"#{",
        b"process.",
        b"global.",
        b"file.",
        b"open(",
        b"subprocess",
        b"os.",
        b"shell",
        b"$x=",
        b"<#assign",
        b"freemarker",
        b"velocity",
        b"#set(",
        b"this.",
        b"getenv",
        b"env.",
        b"uri.",
        b"servletcontext",
    ];
    if MARKERS.iter().any(|m| super::find_bytes(&lc, m).is_some()) {
        return true;
    }
    // code blocks (<% %>, {% %}) with a call
    if code_block && lc.contains(&b'(') {
        return true;
    }
    // a call inside an expression: {{ foo('x') }}
    if let Some(p) = lc.iter().position(|c| *c == b'(')
        && p > 0
        && (lc[p - 1].is_ascii_alphanumeric() || matches!(lc[p - 1], b']' | b')'))
        && lc.contains(&b')')
    {
        return true;
    }
    false
}

/// NoSQL operator injection inside a value: `{"$ne": 1}`, `[$where]=…`, `$gt`.
pub(crate) fn detect_nosql(s: &str, mask: u32) -> Option<&'static str> {
    let b = s.as_bytes();
    if mask & super::B_DOLLAR == 0 {
        return None;
    }
    const OPS: &[&[u8]] = &[
        b"ne",
        b"eq",
        b"gt",
        b"gte",
        b"lt",
        b"lte",
        b"in",
        b"nin",
        b"regex",
        b"where",
        b"exists",
        b"or",
        b"and",
        b"not",
        b"nor",
        b"expr",
        b"elemmatch",
        b"function",
        b"accumulator",
        b"type",
        b"all",
        b"size",
        b"mod",
        b"text",
        b"jsonschema",
    ];
    let n = b.len();
    for (i, &c) in b.iter().enumerate() {
        if c != b'$' || i == 0 {
            continue;
        }
        let prev = b[i - 1];
        if !matches!(prev, b'[' | b'{' | b'"' | b'\'') {
            continue;
        }
        let mut j = i + 1;
        while j < n && b[j].is_ascii_alphabetic() {
            j += 1;
        }
        let op = b[i + 1..j].to_ascii_lowercase();
        if !OPS.contains(&op.as_slice()) {
            continue;
        }
        // JSON text mentioning query operators is common (documentation, saved filters);
        // only the query-string form `[$ne]` and server-side JavaScript operators count.
        if prev != b'[' && !matches!(op.as_slice(), b"where" | b"function" | b"accumulator") {
            continue;
        }
        let close = if prev == b'[' { b']' } else { prev };
        let close = if close == b'{' { b':' } else { close };
        let mut k = j;
        while k < n && is_space(b[k]) {
            k += 1;
        }
        if k < n && (b[k] == close || (prev != b'[' && b[k] == b':')) {
            // followed by a value separator
            let mut m = k + 1;
            while m < n && (is_space(b[m]) || b[m] == b'"' || b[m] == b'\'') {
                m += 1;
            }
            if prev == b'[' || (m < n && b[m] == b':') || b[k] == b':' {
                return Some("nosql.operator");
            }
        }
    }
    None
}
