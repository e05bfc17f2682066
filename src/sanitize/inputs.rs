//! Decoding of the non-JSON inputs (path, query and form pairs, cookies, multipart form
//! fields), the cheap pre-filter in front of the detectors, and the cleaning functions.

use std::borrow::Cow;
use std::ops::Range;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use super::policy::SanitizeMode;

/// Percent-decodes once (`+` as a space when `plus`, form semantics). `None` when the
/// result is not valid UTF-8 (this also refuses overlong encodings).
pub(crate) fn decode(raw: &str, plus: bool) -> Option<Cow<'_, str>> {
    let has_pct = raw.as_bytes().contains(&b'%');
    let has_plus = plus && raw.as_bytes().contains(&b'+');
    if !has_pct && !has_plus {
        return Some(Cow::Borrowed(raw));
    }
    let spaced: Cow<'_, str> = if has_plus {
        Cow::Owned(raw.replace('+', " "))
    } else {
        Cow::Borrowed(raw)
    };
    if !has_pct {
        return Some(spaced);
    }
    match percent_decode_str(&spaced).decode_utf8() {
        Ok(Cow::Borrowed(_)) => Some(spaced),
        Ok(Cow::Owned(s)) => Some(Cow::Owned(s)),
        Err(_) => None,
    }
}

/// `k=v` pairs of a query string or form body, raw (not decoded).
pub(crate) fn pairs(s: &str) -> impl Iterator<Item = (&str, &str)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// `name=value` pairs of a `Cookie` header value.
pub(crate) fn cookies(s: &str) -> impl Iterator<Item = (&str, &str)> {
    s.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// Whether a query or form key carries a NoSQL operator (`$where`, `user[$ne]`).
pub(crate) fn is_operator_key(key: &str) -> bool {
    key.starts_with('$') || key.contains("[$")
}

/// Per byte: bit 0 set when the byte cannot, alone, make a value interesting to any
/// detector (ASCII letters, digits, `_`, `-`, `@`, `.`); bit 1 set for `.`.
static PLAIN: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = b'0';
    while c <= b'9' {
        t[c as usize] = 1;
        c += 1;
    }
    c = b'a';
    while c <= b'z' {
        t[c as usize] = 1;
        t[(c - 32) as usize] = 1;
        c += 1;
    }
    t[b'_' as usize] = 1;
    t[b'-' as usize] = 1;
    t[b'.' as usize] = 3;
    t[b'@' as usize] = 1;
    t
};

/// The pre-filter: a value made only of ASCII letters, digits, `_`, `-`, `@` and single
/// dots (identifiers, numbers, e-mail addresses, UUIDs, ISO dates) cannot be an
/// injection; everything else (spaces, quotes, `<`, `;`, `|`, `$`, `%`, `&`, `(`, `/`,
/// `..`, non-ASCII, control characters, ...) goes to the detectors.
#[inline]
pub(crate) fn candidate(s: &str) -> bool {
    let b = s.as_bytes();
    // branch-free: AND of the "plain" bits, OR of the "dot" bits
    let (mut all, mut dot) = (1u8, 0u8);
    for &c in b {
        let t = PLAIN[c as usize];
        all &= t;
        dot |= t;
    }
    all == 0 || (dot & 2 != 0 && b.windows(2).any(|w| w == b".."))
}

/// [`candidate`] of a value whose byte classes are known (`mask`: `classes(s)`).
#[inline]
pub(crate) fn candidate_classified(s: &str, mask: u32) -> bool {
    candidate_bytes(s.as_bytes(), mask)
}

/// [`candidate_classified`] of raw bytes.
#[inline]
pub(crate) fn candidate_bytes(s: &[u8], mask: u32) -> bool {
    use super::detect::{B_DOT, B_NONPLAIN};
    mask & B_NONPLAIN != 0 || (mask & B_DOT != 0 && s.windows(2).any(|w| w == b".."))
}

/// Renders one location segment: names made of `[A-Za-z0-9_.$~\[\]-]` up to 64 bytes are
/// kept, anything else becomes `…` (locations end up in denials and logs: request data
/// other than plain field names is never echoed).
pub(crate) fn push_segment(seg: &str, out: &mut String) {
    let safe = seg.len() <= 64
        && seg
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_.$~[]-".contains(&c));
    if safe {
        out.push_str(seg);
    } else {
        out.push('…');
    }
}

/// One form field of a `multipart/form-data` body.
pub(crate) struct Part {
    pub(crate) name: String,
    pub(crate) value: Range<usize>,
    /// A file (has a filename) or a non-text part: not inspected.
    pub(crate) skip: bool,
}

/// The `boundary` parameter of a multipart content type.
pub(crate) fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("boundary").then(|| {
            let v = v.trim();
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
                .to_owned()
        })
    })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    memchr::memmem::find(hay.get(from..)?, needle).map(|p| p + from)
}

/// Splits a multipart body into its parts. `None` when malformed.
pub(crate) fn multipart(body: &[u8], boundary: &str, max_parts: usize) -> Option<Vec<Part>> {
    if boundary.is_empty() || boundary.len() > 70 {
        return None;
    }
    let delim = format!("--{boundary}");
    let inner = format!("\r\n--{boundary}");
    let mut i = find(body, delim.as_bytes(), 0)? + delim.len();
    let mut parts = Vec::new();
    loop {
        if body.get(i..i + 2) == Some(b"--") {
            return Some(parts);
        }
        if body.get(i..i + 2) != Some(b"\r\n") {
            return None;
        }
        i += 2;
        let head_end = find(body, b"\r\n\r\n", i)?;
        let head = std::str::from_utf8(&body[i..head_end]).ok()?;
        let mut name = None;
        let mut skip = false;
        for line in head.split("\r\n") {
            let (k, v) = line.split_once(':')?;
            let k = k.trim();
            if k.eq_ignore_ascii_case("content-disposition") {
                for p in v.split(';').skip(1) {
                    let Some((pk, pv)) = p.trim().split_once('=') else {
                        continue;
                    };
                    let pv = pv.trim();
                    let pv = pv
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(pv);
                    match pk.trim().to_ascii_lowercase().as_str() {
                        "name" => name = Some(pv.to_owned()),
                        "filename" | "filename*" => skip = true,
                        _ => {}
                    }
                }
            } else if k.eq_ignore_ascii_case("content-type") {
                let t = v.trim().to_ascii_lowercase();
                if !(t.starts_with("text/") || t.starts_with("application/json")) {
                    skip = true;
                }
            }
        }
        let start = head_end + 4;
        let end = find(body, inner.as_bytes(), start)?;
        parts.push(Part {
            name: name?,
            value: start..end,
            skip,
        });
        if parts.len() > max_parts {
            return Some(parts);
        }
        i = end + inner.len();
    }
}

/// What `application/x-www-form-urlencoded` leaves unescaped (besides space → `+`).
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b' ');

/// Encodes a form value.
pub(crate) fn form_encode(value: &str, out: &mut String) {
    for chunk in utf8_percent_encode(value, FORM) {
        out.push_str(&chunk.replace(' ', "+"));
    }
}

/// Cleans a value of a field under [`Action::Sanitize`](super::Action::Sanitize). `None`
/// when it is unchanged.
pub(crate) fn clean(value: &str, mode: SanitizeMode) -> Option<String> {
    match mode {
        SanitizeMode::Escape => {
            if !value
                .bytes()
                .any(|c| matches!(c, b'&' | b'<' | b'>' | b'"' | b'\''))
            {
                return None;
            }
            let mut out = String::with_capacity(value.len() + 16);
            for c in value.chars() {
                match c {
                    '&' => out.push_str("&amp;"),
                    '<' => out.push_str("&lt;"),
                    '>' => out.push_str("&gt;"),
                    '"' => out.push_str("&quot;"),
                    '\'' => out.push_str("&#x27;"),
                    c => out.push(c),
                }
            }
            Some(out)
        }
        SanitizeMode::Strip | SanitizeMode::Rich => {
            if !value.bytes().any(|c| matches!(c, b'&' | b'<' | b'>')) {
                return None;
            }
            let out = if mode == SanitizeMode::Strip {
                ammonia::Builder::empty().clean(value).to_string()
            } else {
                ammonia::clean(value)
            };
            (out != value).then_some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_once_with_form_semantics() {
        assert_eq!(decode("a+b%2Bc", true).unwrap(), "a b+c");
        assert_eq!(decode("a+b", false).unwrap(), "a+b");
        assert_eq!(decode("%252e", true).unwrap(), "%2e");
        assert_eq!(decode("caf%C3%A9", true).unwrap(), "café");
        assert!(decode("%ff", true).is_none());
        // overlong encoding of '/'
        assert!(decode("%c0%af", true).is_none());
    }

    #[test]
    fn prefilter_lets_plain_tokens_skip_the_detectors() {
        for plain in [
            "42",
            "john.doe@example.com",
            "2024-01-31",
            "a1b2-c3d4",
            "v1.2.3",
        ] {
            assert!(!candidate(plain), "{plain}");
        }
        for cand in [
            "O'Brien",
            "a b",
            "../etc",
            "<b>",
            "1;ls",
            "a|b",
            "$ne",
            "%27",
            "a&b",
            "f(x)",
            "/etc/passwd",
            "ｓｅｌｅｃｔ",
            "a\u{0}b",
            "{{7*7}}",
            "a\r\nb",
            "x=1",
            "`id`",
        ] {
            assert!(candidate(cand), "{cand}");
        }
    }

    #[test]
    fn prefilter_from_classes_agrees() {
        for s in crate::sanitize::detect::test_samples(5000)
            .iter()
            .map(String::as_str)
            .chain(["v1.2.3", "a..b", "a.b.c", "x", ""])
        {
            let m = crate::sanitize::detect::classes(s.as_bytes());
            assert_eq!(candidate_classified(s, m), candidate(s), "{s:?}");
        }
    }

    #[test]
    fn operator_keys() {
        assert!(is_operator_key("$where"));
        assert!(is_operator_key("user[$ne]"));
        assert!(!is_operator_key("price"));
        assert!(!is_operator_key("a[b]"));
    }

    #[test]
    fn multipart_fields_and_files() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhello\r\n--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n\x00\xff<script>\r\n--XyZ--\r\n";
        let parts = multipart(body, "XyZ", 10).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "title");
        assert_eq!(&body[parts[0].value.clone()], b"hello");
        assert!(!parts[0].skip);
        assert!(parts[1].skip);
        assert!(multipart(b"--XyZ\r\nno end", "XyZ", 10).is_none());
        assert_eq!(
            boundary("multipart/form-data; boundary=\"XyZ\"").as_deref(),
            Some("XyZ")
        );
    }

    #[test]
    fn cleaning_modes() {
        assert_eq!(clean("plain", SanitizeMode::Escape), None);
        assert_eq!(
            clean("<b>O'Brien</b>", SanitizeMode::Escape).unwrap(),
            "&lt;b&gt;O&#x27;Brien&lt;/b&gt;"
        );
        assert_eq!(
            clean("<b>hi</b><script>alert(1)</script>", SanitizeMode::Strip).unwrap(),
            "hi"
        );
        assert_eq!(
            clean("<b>hi</b><img src=x onerror=alert(1)>", SanitizeMode::Rich).unwrap(),
            "<b>hi</b><img src=\"x\">"
        );
        let mut s = String::new();
        form_encode("a b&c=d/é", &mut s);
        assert_eq!(s, "a+b%26c%3Dd%2F%C3%A9");
    }
}
