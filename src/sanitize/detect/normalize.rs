//! Bounded normalization: repeated percent-decoding (with `%uXXXX` and overlong UTF-8),
//! HTML character references, Unicode compatibility folding (NFKC), NUL and control
//! characters. Every step is a single linear pass; the number of passes is fixed.

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization;

/// Maximum number of percent-decoding passes.
const PERCENT_PASSES: usize = 3;
/// Maximum number of HTML entity decoding passes (`&amp;lt;` needs two).
const ENTITY_PASSES: usize = 2;

/// Whether the value needs any normalization work at all (fast path for plain ASCII text).
#[cfg(test)]
fn needs_work(s: &str) -> bool {
    s.bytes()
        .any(|b| b == b'%' || b == b'&' || b >= 0x80 || (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// Normalizes one value. Returns the input unchanged (borrowed) when nothing applies.
#[cfg(test)]
pub(crate) fn normalize(input: &str) -> Cow<'_, str> {
    if !needs_work(input) {
        return Cow::Borrowed(input);
    }
    normalize_hinted(input, super::classes(input.as_bytes()))
}

/// [`normalize`] of a value whose byte classes (`mask`, [`super::classes`]) are known:
/// the steps whose trigger byte is absent are skipped (the result is the same).
pub(crate) fn normalize_hinted(input: &str, mask: u32) -> Cow<'_, str> {
    use super::{B_AMP, B_CTRL, B_DROPLEAD, B_HIGH, B_PCT};
    let first = if mask & B_PCT != 0 {
        percent_decode_pass(input.as_bytes())
    } else {
        None
    };
    let mut s: Cow<'_, str> = match first {
        None => Cow::Borrowed(input),
        Some(mut bytes) => {
            for _ in 1..PERCENT_PASSES {
                match percent_decode_pass(&bytes) {
                    Some(next) => bytes = next,
                    None => break,
                }
            }
            Cow::Owned(bytes_to_string(&bytes))
        }
    };
    // once decoding changed the value, the classes of the input say nothing about it
    let mut changed = matches!(s, Cow::Owned(_));
    if changed || mask & B_AMP != 0 {
        for _ in 0..ENTITY_PASSES {
            match entity_decode_pass(&s) {
                Some(next) => {
                    s = Cow::Owned(next);
                    changed = true;
                }
                None => break,
            }
        }
    }
    if (changed || mask & B_HIGH != 0)
        && !s.is_ascii()
        && unicode_normalization::is_nfkc_quick(s.chars())
            != unicode_normalization::IsNormalized::Yes
    {
        s = Cow::Owned(s.nfkc().collect());
        changed = true;
    }
    // Drop NUL and invisible control / format characters; keep \t, \n, \r (they matter to
    // CRLF and command injection detection). Their bytes: an ASCII control or one of the
    // lead bytes of the invisible characters.
    let drop = |c: char| {
        matches!(c, '\0'..='\x08' | '\x0b' | '\x0c' | '\x0e'..='\x1f' | '\x7f')
            || matches!(
                c,
                '\u{200b}'..='\u{200f}' | '\u{2060}'..='\u{2064}' | '\u{feff}' | '\u{ad}'
            )
    };
    if !(changed || mask & (B_CTRL | B_DROPLEAD) != 0) || !s.chars().any(drop) {
        return s;
    }
    let mut s = s.into_owned();
    s.retain(|c| !drop(c));
    Cow::Owned(s)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One percent-decoding pass (`%XX` and `%uXXXX`); `None` when nothing was decoded.
fn percent_decode_pass(input: &[u8]) -> Option<Vec<u8>> {
    super::find_byte(b'%', input)?;
    let mut out = Vec::with_capacity(input.len());
    let mut changed = false;
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'%' {
            if i + 2 < input.len()
                && let (Some(h), Some(l)) = (hex_val(input[i + 1]), hex_val(input[i + 2]))
            {
                out.push(h << 4 | l);
                i += 3;
                changed = true;
                continue;
            }
            if i + 5 < input.len() && (input[i + 1] == b'u' || input[i + 1] == b'U') {
                let mut cp: u32 = 0;
                let mut ok = true;
                for k in 0..4 {
                    match hex_val(input[i + 2 + k]) {
                        Some(v) => cp = cp << 4 | v as u32,
                        None => {
                            ok = false;
                            break;
                        }
                    }
                }
                if ok && let Some(c) = char::from_u32(cp) {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    i += 6;
                    changed = true;
                    continue;
                }
            }
        }
        out.push(b);
        i += 1;
    }
    changed.then_some(out)
}

/// Converts bytes to a string: valid UTF-8 as is, overlong encodings of ASCII decoded to
/// the ASCII character they smuggle (`C0 AE` is `.`), anything else replaced.
fn bytes_to_string(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => {
            let mut out = String::with_capacity(bytes.len());
            let mut rest = bytes;
            loop {
                match std::str::from_utf8(rest) {
                    Ok(s) => {
                        out.push_str(s);
                        break;
                    }
                    Err(e) => {
                        let (good, bad) = rest.split_at(e.valid_up_to());
                        // `good` is valid UTF-8 per valid_up_to.
                        out.push_str(std::str::from_utf8(good).unwrap_or(""));
                        let skip = overlong(bad, &mut out)
                            .unwrap_or_else(|| e.error_len().unwrap_or(bad.len()).max(1));
                        rest = &bad[skip.min(bad.len())..];
                        if rest.is_empty() {
                            break;
                        }
                    }
                }
            }
            out
        }
    }
}

/// Decodes an overlong 2- or 3-byte sequence at the start of `b` into `out`; returns the
/// number of bytes consumed, or pushes U+FFFD and returns `None` when it is not overlong.
fn overlong(b: &[u8], out: &mut String) -> Option<usize> {
    let cont = |x: u8| (0x80..0xc0).contains(&x);
    if b.len() >= 2 && (b[0] == 0xc0 || b[0] == 0xc1) && cont(b[1]) {
        let cp = ((b[0] as u32 & 0x1f) << 6) | (b[1] as u32 & 0x3f);
        out.push(char::from_u32(cp).unwrap_or('\u{fffd}'));
        return Some(2);
    }
    // Lax 2-byte forms seen in IIS-era payloads: C0 2E, C1 1C (continuation byte without
    // its high bit): treat the low 7 bits as intended.
    if b.len() >= 2 && (b[0] == 0xc0 || b[0] == 0xc1) && b[1] < 0x80 {
        // C0 xx: the ASCII byte itself behind a junk lead byte; C1 1C: the 6-bit form
        let cp = if b[0] == 0xc0 {
            b[1] as u32
        } else {
            ((b[0] as u32 & 0x1f) << 6) | (b[1] as u32 & 0x3f)
        };
        out.push(char::from_u32(cp).unwrap_or('\u{fffd}'));
        return Some(2);
    }
    if b.len() >= 3 && b[0] == 0xe0 && cont(b[1]) && b[1] < 0xa0 && cont(b[2]) {
        let cp = ((b[1] as u32 & 0x3f) << 6) | (b[2] as u32 & 0x3f);
        out.push(char::from_u32(cp).unwrap_or('\u{fffd}'));
        return Some(3);
    }
    out.push('\u{fffd}');
    None
}

/// Named character references worth decoding for detection (the ones attackers use to
/// smuggle syntax). Matched case-sensitively, `;` optional.
const NAMED: &[(&str, char)] = &[
    ("lt", '<'),
    ("LT", '<'),
    ("gt", '>'),
    ("GT", '>'),
    ("amp", '&'),
    ("AMP", '&'),
    ("quot", '"'),
    ("QUOT", '"'),
    ("apos", '\''),
    ("colon", ':'),
    ("Tab", '\t'),
    ("NewLine", '\n'),
    ("nbsp", ' '),
    ("sol", '/'),
    ("bsol", '\\'),
    ("lpar", '('),
    ("rpar", ')'),
    ("semi", ';'),
    ("comma", ','),
    ("period", '.'),
    ("excl", '!'),
    ("num", '#'),
    ("dollar", '$'),
    ("percnt", '%'),
    ("equals", '='),
    ("lsqb", '['),
    ("rsqb", ']'),
    ("lbrack", '['),
    ("rbrack", ']'),
    ("lcub", '{'),
    ("rcub", '}'),
    ("lbrace", '{'),
    ("rbrace", '}'),
    ("grave", '`'),
    ("Hat", '^'),
    ("ast", '*'),
    ("plus", '+'),
    ("vert", '|'),
    ("quest", '?'),
    ("copy", '\u{a9}'),
    ("reg", '\u{ae}'),
    ("trade", '\u{2122}'),
    ("hellip", '\u{2026}'),
    ("mdash", '\u{2014}'),
    ("ndash", '\u{2013}'),
    ("laquo", '\u{ab}'),
    ("raquo", '\u{bb}'),
    ("euro", '\u{20ac}'),
    ("pound", '\u{a3}'),
    ("deg", '\u{b0}'),
    ("times", '\u{d7}'),
    ("middot", '\u{b7}'),
    ("bull", '\u{2022}'),
];

/// One entity-decoding pass; `None` when nothing was decoded.
/// The first bytes of the names in [`NAMED`].
static NAMED_FIRST: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < NAMED.len() {
        t[NAMED[i].0.as_bytes()[0] as usize] = true;
        i += 1;
    }
    t
};

fn entity_decode_pass(s: &str) -> Option<String> {
    if !s.contains('&') {
        return None;
    }
    let b = s.as_bytes();
    // allocated at the first reference decoded
    let mut out = String::new();
    let mut changed = false;
    let mut last = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'&' {
            i += 1;
            continue;
        }
        let mut decoded: Option<(char, usize)> = None;
        if i + 1 < b.len() && b[i + 1] == b'#' {
            let (hex, start) = if i + 2 < b.len() && (b[i + 2] == b'x' || b[i + 2] == b'X') {
                (true, i + 3)
            } else {
                (false, i + 2)
            };
            let mut j = start;
            let mut cp: u32 = 0;
            while j < b.len() && j - start < 8 {
                let d = if hex {
                    hex_val(b[j]).map(u32::from)
                } else if b[j].is_ascii_digit() {
                    Some((b[j] - b'0') as u32)
                } else {
                    None
                };
                match d {
                    Some(d) => cp = cp * if hex { 16 } else { 10 } + d,
                    None => break,
                }
                j += 1;
            }
            // Skip further leading-zero padding digits beyond 8 (e.g. &#0000000060).
            while j < b.len() && j - start < 32 && (b[j] == b'0' && cp == 0) {
                j += 1;
            }
            if j > start {
                if j < b.len() && b[j] == b';' {
                    j += 1;
                }
                let c = char::from_u32(cp).unwrap_or('\u{fffd}');
                decoded = Some((c, j));
            }
        } else {
            let rest = &s[i + 1..];
            let first = rest.as_bytes().first().copied().unwrap_or(0);
            // most `&` in text are not followed by the first letter of a name
            let names = if NAMED_FIRST[first as usize] {
                NAMED
            } else {
                &[]
            };
            for (name, c) in names.iter().filter(|(n, _)| n.as_bytes()[0] == first) {
                if rest.starts_with(name) {
                    let mut j = i + 1 + name.len();
                    if j < b.len() && b[j] == b';' {
                        j += 1;
                    } else if !matches!(
                        *name,
                        "lt" | "gt" | "amp" | "quot" | "LT" | "GT" | "AMP" | "QUOT"
                    ) {
                        // only the legacy references decode without `;`
                        continue;
                    }
                    decoded = Some((*c, j));
                    break;
                }
            }
        }
        if let Some((c, j)) = decoded {
            if !changed {
                out.reserve(s.len());
            }
            out.push_str(&s[last..i]);
            out.push(c);
            last = j;
            i = j;
            changed = true;
        } else {
            i += 1;
        }
    }
    if !changed {
        return None;
    }
    out.push_str(&s[last..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Normalization with every step tried (no byte-class hints).
    fn reference(input: &str) -> Cow<'_, str> {
        if !needs_work(input) {
            return Cow::Borrowed(input);
        }
        let mut s: Cow<'_, str> = match percent_decode_pass(input.as_bytes()) {
            None => Cow::Borrowed(input),
            Some(mut bytes) => {
                for _ in 1..PERCENT_PASSES {
                    match percent_decode_pass(&bytes) {
                        Some(next) => bytes = next,
                        None => break,
                    }
                }
                Cow::Owned(bytes_to_string(&bytes))
            }
        };
        for _ in 0..ENTITY_PASSES {
            match entity_decode_pass(&s) {
                Some(next) => s = Cow::Owned(next),
                None => break,
            }
        }
        if !s.is_ascii()
            && unicode_normalization::is_nfkc_quick(s.chars())
                != unicode_normalization::IsNormalized::Yes
        {
            s = Cow::Owned(s.nfkc().collect());
        }
        let drop = |c: char| {
            matches!(c, '\0'..='\x08' | '\x0b' | '\x0c' | '\x0e'..='\x1f' | '\x7f')
                || matches!(
                    c,
                    '\u{200b}'..='\u{200f}' | '\u{2060}'..='\u{2064}' | '\u{feff}' | '\u{ad}'
                )
        };
        if !s.chars().any(drop) {
            return s;
        }
        let mut s = s.into_owned();
        s.retain(|c| !drop(c));
        Cow::Owned(s)
    }

    #[test]
    fn hinted_steps_agree_with_every_step() {
        for s in super::super::test_samples(20_000) {
            let r = reference(&s);
            let h = normalize_hinted(&s, super::super::classes(s.as_bytes()));
            assert_eq!(h, r, "{s:?}");
            assert_eq!(matches!(h, Cow::Borrowed(_)), matches!(r, Cow::Borrowed(_)));
        }
    }

    #[test]
    fn decodes_layers() {
        assert_eq!(normalize("%253Cscript%253E"), "<script>");
        assert_eq!(normalize("&lt;svg&gt;"), "<svg>");
        assert_eq!(normalize("&#x3C;a&#60b"), "<a<b");
        assert_eq!(normalize("%c0%ae%c0%ae/"), "../");
        assert_eq!(normalize("＜script＞"), "<script>");
        assert_eq!(normalize("a\0b"), "ab");
        assert_eq!(normalize("100% cotton"), "100% cotton");
        assert_eq!(normalize("R&D Q&A AT&T"), "R&D Q&A AT&T");
    }
}
