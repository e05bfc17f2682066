//! Cross-site scripting: an HTML tag/attribute tokenizer (tag names, attribute names and
//! values as browsers split them: whitespace or `/` separate attributes, values quoted or
//! not), dangerous URL schemes with the whitespace browsers ignore inside them, attribute
//! breakouts (`" onfocus=…`) and script-context breakouts (`';alert(1)//`).

/// Tags that execute or load active content by themselves.
const SCRIPT_TAGS: &[&str] = &["script"];
const ACTIVE_TAGS: &[&str] = &[
    "iframe", "frame", "frameset", "object", "embed", "applet", "base", "meta", "link", "style",
    "xml", "import", "svg", "math", "isindex", "xss", "vmlframe", "portal", "template", "set",
    "animate", "handler", "listener", "layer", "ilayer", "bgsound",
];
/// Attributes whose value is a URL that may be navigated to or loaded.
const URL_ATTRS: &[&str] = &[
    "href",
    "src",
    "action",
    "formaction",
    "data",
    "xlink:href",
    "background",
    "lowsrc",
    "dynsrc",
    "poster",
    "codebase",
    "srcdoc",
    "to",
    "values",
    "from",
    "by",
    "content",
    "url",
    "value",
    "ping",
    "manifest",
    "icon",
    "cite",
    "longdesc",
    "usemap",
    "archive",
    "code",
    "classid",
];
/// Identifiers that are JavaScript execution or exfiltration sinks.
const SINKS: &[&str] = &[
    "alert",
    "prompt",
    "confirm",
    "eval",
    "print",
    "function",
    "settimeout",
    "setinterval",
    "fetch",
    "atob",
    "fromcharcode",
    "document",
    "window",
    "location",
    "top",
    "self",
    "parent",
    "globalthis",
    "import",
    "constructor",
    "xmlhttprequest",
    "innerhtml",
    "outerhtml",
    "write",
    "writeln",
    "cookie",
    "domain",
    "execscript",
    "msgbox",
    "navigator",
    "sendbeacon",
    "opener",
    "frames",
    "this",
];

#[cfg(test)]
pub(crate) fn detect(s: &str) -> Option<&'static str> {
    detect_in(s, super::classes(s.as_bytes()))
}

/// Detects XSS in `s`, whose byte classes are `mask`. Each check runs only when the byte it
/// starts from is present: tags at `<`, URL schemes at `:`, handler breakouts at `=`,
/// script breakouts at a quote (or `;`, `)`, `}` opening the value), escapes at `\`.
pub(crate) fn detect_in(s: &str, mask: u32) -> Option<&'static str> {
    use super::{B_BSLASH, B_COLON, B_EQ, B_LPAREN, B_LT, B_QUOTE};
    // nothing without one of `< : = ' " ` (`
    if mask & (B_LT | B_COLON | B_EQ | B_QUOTE | B_LPAREN) == 0 {
        return None;
    }
    let opens_script = matches!(s.as_bytes().first(), Some(b';' | b')' | b'}'));
    let breakout = mask & B_QUOTE != 0 || opens_script;
    if mask & (B_LT | B_COLON | B_EQ | B_BSLASH) == 0 && !breakout {
        return None;
    }
    // lowercase copy: on the stack for short values
    let mut stack = [0u8; 256];
    let heap;
    let b: &[u8] = if s.len() <= stack.len() {
        let d = &mut stack[..s.len()];
        d.copy_from_slice(s.as_bytes());
        d.make_ascii_lowercase();
        d
    } else {
        heap = s.to_ascii_lowercase();
        heap.as_bytes()
    };
    if mask & B_LT != 0
        && let Some(r) = tags(b)
    {
        return Some(r);
    }
    if mask & B_COLON != 0
        && let Some(r) = scheme(b, false)
    {
        return Some(r);
    }
    if mask & B_EQ != 0
        && let Some(r) = attribute_breakout(b)
    {
        return Some(r);
    }
    if breakout && let Some(r) = script_breakout(b) {
        return Some(r);
    }
    if mask & B_BSLASH != 0 {
        let d = js_unescape(b);
        if d.len() != b.len()
            && let Some(r) = attribute_breakout(&d).or_else(|| script_breakout(&d))
        {
            return Some(r);
        }
    }
    None
}

/// Decodes JavaScript `\uXXXX`, `\u{X}` and `\xXX` escapes (lowercased result).
fn js_unescape(b: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1] == b'x'
            && let (Some(h), Some(l)) = (hex(b[i + 2]), hex(b[i + 3]))
        {
            out.push(((h << 4 | l) as u8).to_ascii_lowercase());
            i += 4;
            continue;
        }
        if b[i] == b'\\' && i + 5 < b.len() && b[i + 1] == b'u' {
            let v = (2..6).map(|k| hex(b[i + k])).collect::<Option<Vec<u32>>>();
            if let Some(v) = v {
                let cp = v.iter().fold(0u32, |a, d| a << 4 | d);
                if cp < 0x80 {
                    out.push((cp as u8).to_ascii_lowercase());
                    i += 6;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0c | 0x0b)
}

fn is_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b':' | b'_')
}

/// Scans every `<name …>` tag.
fn tags(b: &[u8]) -> Option<&'static str> {
    let n = b.len();
    let mut i = 0;
    let mut budget = 64; // tags examined at most
    while let Some(p) = super::find_byte(b'<', &b[i..]) {
        let lt = i + p;
        i = lt + 1;
        if i >= n || !b[i].is_ascii_alphabetic() {
            continue;
        }
        budget -= 1;
        if budget == 0 {
            break;
        }
        let ns = i;
        while i < n && is_name_byte(b[i]) {
            i += 1;
        }
        let name = std::str::from_utf8(&b[ns..i]).unwrap_or("");
        // the name must end at a separator (or the end of the value) to be a tag
        if SCRIPT_TAGS.iter().any(|t| name.starts_with(t)) {
            // `<script`, and `<scriptsrc=…` with the blank removed
            return Some("xss.script_tag");
        }
        // Handler glued to the tag name or another attribute (`<svgonload=…`,
        // `<img src=xonerror=…>`): look for on<name>= inside the tag text.
        let tag_text_end = super::find_byte(b'>', &b[ns..])
            .map(|p| ns + p)
            .unwrap_or(n)
            .min(ns + 512);
        if let Some(r) = glued_handler(&b[ns..tag_text_end]) {
            return Some(r);
        }
        let tag_end_ok =
            i >= n || is_ws(b[i]) || matches!(b[i], b'/' | b'>' | b'<' | b'\'' | b'"' | b'`');
        if !tag_end_ok {
            continue;
        }
        let active = ACTIVE_TAGS.contains(&name);
        // attributes
        let mut attrs = 0;
        let mut has_attr_or_close = false;
        while i < n && attrs < 64 {
            while i < n
                && (is_ws(b[i]) || b[i] == b'/' || b[i] == b'"' || b[i] == b'\'' || b[i] == b'`')
            {
                i += 1;
            }
            if i >= n {
                break;
            }
            if b[i] == b'>' {
                has_attr_or_close = true;
                i += 1;
                break;
            }
            if b[i] == b'<' {
                break;
            }
            attrs += 1;
            has_attr_or_close = true;
            let as_ = i;
            while i < n && !is_ws(b[i]) && !matches!(b[i], b'/' | b'>' | b'=' | b'<') {
                i += 1;
            }
            let aname = &b[as_..i];
            let mut j = i;
            while j < n && is_ws(b[j]) {
                j += 1;
            }
            let mut value: &[u8] = &[];
            let has_value = j < n && b[j] == b'=';
            if has_value {
                j += 1;
                while j < n && is_ws(b[j]) {
                    j += 1;
                }
                if j < n && matches!(b[j], b'"' | b'\'' | b'`') {
                    let q = b[j];
                    let vs = j + 1;
                    let ve = super::find_byte(q, &b[vs..]).map(|p| vs + p).unwrap_or(n);
                    value = &b[vs..ve];
                    j = (ve + 1).min(n);
                } else {
                    let vs = j;
                    while j < n && !is_ws(b[j]) && b[j] != b'>' {
                        j += 1;
                    }
                    value = &b[vs..j];
                }
                i = j;
            }
            if is_event_handler(aname) && has_value {
                return Some("xss.event_handler");
            }
            if has_value {
                let an = std::str::from_utf8(aname).unwrap_or("");
                if URL_ATTRS.contains(&an) && scheme(value, true).is_some() {
                    return Some("xss.dangerous_url");
                }
                if an == "style" && style_is_active(value) {
                    return Some("xss.style_expression");
                }
            }
        }
        if active && (has_attr_or_close || i >= n) {
            return Some("xss.active_tag");
        }
    }
    None
}

fn glued_handler(t: &[u8]) -> Option<&'static str> {
    let n = t.len();
    let mut i = 0;
    while let Some(p) = super::find_bytes(&t[i..], b"on") {
        let s = i + p;
        i = s + 2;
        let mut j = s + 2;
        while j < n && t[j].is_ascii_alphabetic() {
            j += 1;
        }
        if j - s < 5 {
            continue;
        }
        while j < n && is_ws(t[j]) {
            j += 1;
        }
        if j < n && t[j] == b'=' {
            let v = &t[j + 1..];
            if has_sink(v) || v.iter().any(|c| matches!(c, b'(' | b'`')) {
                return Some("xss.event_handler");
            }
        }
    }
    None
}

fn is_event_handler(name: &[u8]) -> bool {
    name.len() >= 5
        && name.starts_with(b"on")
        && name[2..]
            .iter()
            .all(|c| c.is_ascii_alphabetic() || *c == b'-')
}

fn style_is_active(v: &[u8]) -> bool {
    let s: Vec<u8> = v
        .iter()
        .copied()
        .filter(|c| !is_ws(*c) && *c != b'\\')
        .collect();
    super::find_bytes(&s, b"expression(").is_some()
        || super::find_bytes(&s, b"javascript:").is_some()
        || super::find_bytes(&s, b"behavior:").is_some()
        || super::find_bytes(&s, b"-moz-binding").is_some()
}

/// `javascript:` (and friends) anywhere, ignoring whitespace and control characters
/// browsers drop inside a scheme. In bare text (`in_attr == false`) the body must look
/// like code, so prose such as "javascript: the good parts" passes.
fn scheme(b: &[u8], in_attr: bool) -> Option<&'static str> {
    let mut from = 0;
    let mut budget = 32;
    while let Some(p) = super::find_byte(b':', &b[from..]) {
        let colon = from + p;
        from = colon + 1;
        budget -= 1;
        if budget == 0 {
            break;
        }
        // collect up to 16 letters backwards, skipping whitespace
        let mut letters = [0u8; 16];
        let mut k = 0;
        let mut j = colon;
        while j > 0 && k < 16 {
            let c = b[j - 1];
            if c.is_ascii_alphabetic() {
                letters[15 - k] = c;
                k += 1;
            } else if !is_ws(c) {
                break;
            }
            j -= 1;
        }
        let word = &letters[16 - k..];
        let body = &b[colon + 1..];
        if word.ends_with(b"javascript")
            || word.ends_with(b"vbscript")
            || word.ends_with(b"livescript")
        {
            if in_attr || looks_like_code(body) {
                return Some("xss.javascript_url");
            }
        } else if word.ends_with(b"data") {
            let t: Vec<u8> = body
                .iter()
                .copied()
                .filter(|c| !is_ws(*c))
                .take(40)
                .collect();
            if t.starts_with(b"text/html")
                || t.starts_with(b"image/svg")
                || t.starts_with(b"application/x")
                || t.starts_with(b"text/xml")
                || t.starts_with(b"text/javascript")
                || t.starts_with(b"application/javascript")
            {
                return Some("xss.data_url");
            }
        }
    }
    None
}

fn looks_like_code(body: &[u8]) -> bool {
    let body = &body[..body.len().min(512)];
    body.iter()
        .any(|c| matches!(c, b'(' | b'`' | b'=' | b'[' | b';'))
        || has_sink(body)
}

fn has_sink(b: &[u8]) -> bool {
    find_sink(b).is_some()
}

/// Position of a sink identifier used as code (followed by `(`, `` ` ``, `.`, `[`, `)`, `=`).
fn find_sink(b: &[u8]) -> Option<usize> {
    let n = b.len();
    let mut i = 0;
    while i < n {
        if b[i].is_ascii_alphabetic()
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            let s = i;
            while i < n && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let w = std::str::from_utf8(&b[s..i]).unwrap_or("");
            if SINKS.contains(&w) {
                let mut j = i;
                while j < n && is_ws(b[j]) {
                    j += 1;
                }
                if j < n
                    && matches!(b[j], b'(' | b'`' | b'.' | b'[' | b')' | b'=')
                    && !(b[j] == b'.' && j + 1 < n && !b[j + 1].is_ascii_alphabetic())
                {
                    return Some(s);
                }
            }
        } else {
            i += 1;
        }
    }
    None
}

/// `" onmouseover="alert(1)` — an event-handler attribute without its tag (value injected
/// inside an existing tag).
fn attribute_breakout(b: &[u8]) -> Option<&'static str> {
    let n = b.len();
    let mut i = 0;
    while i + 4 < n {
        let Some(p) = super::find_bytes(&b[i..], b"on") else {
            break;
        };
        let s = i + p;
        i = s + 2;
        if s > 0 && !(is_ws(b[s - 1]) || matches!(b[s - 1], b'"' | b'\'' | b'/' | b'`' | b';')) {
            continue;
        }
        let mut j = s + 2;
        while j < n && b[j].is_ascii_alphabetic() {
            j += 1;
        }
        if j - s < 5 {
            continue;
        }
        while j < n && is_ws(b[j]) {
            j += 1;
        }
        if j >= n || b[j] != b'=' {
            continue;
        }
        j += 1;
        while j < n && is_ws(b[j]) {
            j += 1;
        }
        let val = &b[j..];
        let val = val
            .strip_prefix(b"\"")
            .or_else(|| val.strip_prefix(b"'"))
            .unwrap_or(val);
        let val = &val[..val.len().min(256)];
        if has_sink(val) || val.iter().any(|c| matches!(c, b'(' | b'`')) {
            return Some("xss.attribute_breakout");
        }
    }
    None
}

/// `';alert(1)//`, `'-[1].find(alert)-'`, `"+eval(…)+"`: a quote closes a JS string, an
/// operator continues the expression, and a sink is called.
fn script_breakout(b: &[u8]) -> Option<&'static str> {
    let n = b.len();
    let mut budget = 16;
    // a quote closing a JS string, or the very start of the value (`;alert(1);`), in order
    let at_start = matches!(b.first(), Some(b';' | b')' | b'}'));
    let starts = at_start
        .then_some(usize::MAX)
        .into_iter()
        .chain(super::quote_positions(b));
    for qi in starts {
        budget -= 1;
        if budget == 0 {
            break;
        }
        let mut j = qi.wrapping_add(1);
        while j < n && (is_ws(b[j]) || b[j] == b')') {
            j += 1;
        }
        if j >= n
            || !matches!(
                b[j],
                b';' | b'+'
                    | b'-'
                    | b'*'
                    | b'|'
                    | b'&'
                    | b','
                    | b'}'
                    | b']'
                    | b'^'
                    | b'/'
                    | b'%'
                    | b'?'
                    | b'<'
                    | b'>'
                    | b'='
            )
        {
            continue;
        }
        // `'/` only in `';//` / `'//` style, `'-` etc. Then a sink call within a short span.
        let span = &b[j..n.min(j + 200)];
        if let Some(p) = find_sink(span) {
            // the text between the operator and the sink must be code-ish (no plain words)
            let between = &span[1..p];
            let wordy = between
                .split(|c| !c.is_ascii_alphabetic())
                .filter(|w| w.len() >= 4 && *w != b"find" && *w != b"call" && *w != b"apply")
                .count();
            if wordy == 0 {
                return Some("xss.script_breakout");
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every check, whatever the bytes present (the detector before its per-check gates).
    fn detect_ungated(s: &str) -> Option<&'static str> {
        if !s
            .bytes()
            .any(|c| matches!(c, b'<' | b':' | b'=' | b'\'' | b'"' | b'`' | b'('))
        {
            return None;
        }
        let b = s.to_ascii_lowercase().into_bytes();
        tags(&b)
            .or_else(|| scheme(&b, false))
            .or_else(|| attribute_breakout(&b))
            .or_else(|| script_breakout(&b))
            .or_else(|| {
                let d = js_unescape(&b);
                if d.len() != b.len() {
                    attribute_breakout(&d).or_else(|| script_breakout(&d))
                } else {
                    None
                }
            })
    }

    #[test]
    fn gated_checks_agree_with_all_checks() {
        for s in super::super::test_samples(20_000) {
            assert_eq!(detect(&s), detect_ungated(&s), "{s:?}");
        }
    }

    #[test]
    fn basics() {
        for a in [
            "<script>alert(1)</script>",
            "<img src=x onerror=alert(1)>",
            "\"><svg/onload=alert(1)>",
            "javascript:alert(1)",
            "<a href=\"java\tscript:alert(1)\">x</a>",
            "\" onmouseover=\"alert(1)",
            "';alert(1);//",
        ] {
            assert!(detect(a).is_some(), "{a}");
        }
        for b in [
            "5 < 6",
            "<b>bold</b>",
            "<span class=\"x\">y</span>",
            "Hershey's Kisses <3 pack",
            "<Unknown> Brand Tee",
            "console.log('hi');",
        ] {
            assert!(detect(b).is_none(), "{b}");
        }
    }
}
