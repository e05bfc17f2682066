//! Injection detectors: normalization, then grammar-based detection per attack class.
//!
//! INTERFACE CONTRACT between the sanitize layer and the detectors (owned by the detector
//! work; the layer codes only against `Detectors`, `Finding` and `Kind`).
//!
//! Every value goes through one bounded normalization pass (`normalize`), then through
//! the enabled grammar-based detectors in a fixed order: SQL injection, XSS, command
//! injection, path traversal, CRLF, template/JNDI, NoSQL operators. The first finding
//! wins. Values longer than [`MAX_INSPECT`] bytes are inspected in overlapping windows,
//! so the cost stays linear in the input length.
//!
//! Rule ids (stable; `Finding::rule`):
//!
//! - SQL (tokenizer run as is and in the `'`, `"`, `` ` `` string-break contexts):
//!   `sqli.union_select`, `sqli.select_expression`, `sqli.stacked_query`,
//!   `sqli.time_based`, `sqli.case_when`, `sqli.tautology`, `sqli.logic_comparison`,
//!   `sqli.logic_function`, `sqli.subquery`, `sqli.order_by`, `sqli.declare`,
//!   `sqli.procedure_analyse`, `sqli.break_logic`, `sqli.break_comment`,
//!   `sqli.break_stacked`, `sqli.break_expression`, `sqli.break_clause`.
//! - XSS (HTML tag/attribute tokenizer, URL schemes, JS string breakouts):
//!   `xss.script_tag`, `xss.active_tag`, `xss.event_handler`, `xss.dangerous_url`,
//!   `xss.javascript_url`, `xss.data_url`, `xss.style_expression`,
//!   `xss.attribute_breakout`, `xss.script_breakout`.
//! - Shell (control operator or substitution + command word after quote removal):
//!   `cmdi.command_chain`, `cmdi.substitution`, `cmdi.command_path`,
//!   `cmdi.brace_expansion`, `cmdi.glob_path`, `cmdi.shellshock`.
//! - Paths: `traversal.dot_dot`, `traversal.system_path`, `traversal.stream_wrapper`.
//! - `crlf.header_injection`, `crlf.response_splitting`, `template.jndi`,
//!   `template.expression`, `nosql.operator`.
//!
//! ```
//! use tower_shield::sanitize::detect::{Detectors, Kind};
//!
//! let d = Detectors::default();
//! let f = d.inspect("1' UNION SELECT password FROM users--").unwrap();
//! assert_eq!((f.kind, f.rule), (Kind::Sqli, "sqli.union_select"));
//! assert_eq!(d.inspect("O'Brien & Sons: select your size"), None);
//! ```

mod cmdi;
mod misc;
mod normalize;
mod sqli;
mod traversal;
mod xss;

/// Class of attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// SQL injection.
    Sqli,
    /// Cross-site scripting.
    Xss,
    /// OS command injection.
    Cmdi,
    /// Path traversal / local file inclusion.
    Traversal,
    /// NoSQL operator injection.
    Nosql,
    /// CRLF / header injection.
    Crlf,
    /// JNDI / server-side template injection.
    Template,
}

impl Kind {
    /// Stable short name: `sqli`, `xss`, `cmdi`, `traversal`, `nosql`, `crlf`, `template`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Sqli => "sqli",
            Kind::Xss => "xss",
            Kind::Cmdi => "cmdi",
            Kind::Traversal => "traversal",
            Kind::Nosql => "nosql",
            Kind::Crlf => "crlf",
            Kind::Template => "template",
        }
    }
}

/// One detection: class and rule name (never the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    /// Class of attack.
    pub kind: Kind,
    /// Name of the rule that fired (stable, e.g. `sqli.union_select`).
    pub rule: &'static str,
}

/// The configured detector set. Cheap to share (`Arc`), `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Detectors {
    enabled: [bool; 7],
}

impl Default for Detectors {
    fn default() -> Self {
        Self { enabled: [true; 7] }
    }
}

impl Detectors {
    /// Only the given classes.
    pub fn only(kinds: &[Kind]) -> Self {
        let mut enabled = [false; 7];
        for k in kinds {
            enabled[*k as usize] = true;
        }
        Self { enabled }
    }

    /// Whether a class is enabled.
    pub fn is_enabled(&self, kind: Kind) -> bool {
        self.enabled[kind as usize]
    }

    /// The enabled classes, one bit per [`Kind`].
    pub(crate) fn bits(&self) -> u8 {
        self.enabled
            .iter()
            .enumerate()
            .fold(0, |m, (i, &on)| m | (u8::from(on) << i))
    }

    /// Inspects one input value (already valid UTF-8; as the application receives it,
    /// i.e. URL-decoded once for query/form values). Normalization (bounded repeated
    /// percent-decoding, HTML entities, Unicode compatibility folding, control characters)
    /// happens inside. Returns the first finding, if any.
    pub fn inspect(&self, value: &str) -> Option<Finding> {
        if value.len() <= MAX_INSPECT {
            return self.inspect_window(value);
        }
        // Long values: overlapping windows (an attack shorter than the overlap is always
        // entirely inside one window).
        let mut start = 0;
        while start < value.len() {
            let mut end = (start + MAX_INSPECT).min(value.len());
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            if let Some(f) = self.inspect_window(&value[start..end]) {
                return Some(f);
            }
            if end == value.len() {
                break;
            }
            let mut next = end - WINDOW_OVERLAP;
            while !value.is_char_boundary(next) {
                next -= 1;
            }
            start = next;
        }
        None
    }

    fn inspect_window(&self, value: &str) -> Option<Finding> {
        self.inspect_classified(value, classes(value.as_bytes()))
    }

    /// [`inspect`](Self::inspect) of a value whose byte classes ([`classes`]) are known
    /// (the JSON scan computes them while it reads the string). `mask` must be
    /// `classes(value.as_bytes())`.
    pub(crate) fn inspect_known(&self, value: &str, mask: u32) -> Option<Finding> {
        if value.len() <= MAX_INSPECT {
            return self.inspect_classified(value, mask);
        }
        self.inspect(value)
    }

    fn inspect_classified(&self, value: &str, mut mask: u32) -> Option<Finding> {
        let norm = if mask & C_NORM != 0 {
            normalize::normalize_hinted(value, mask)
        } else {
            std::borrow::Cow::Borrowed(value)
        };
        if let std::borrow::Cow::Owned(n) = &norm {
            mask = classes(n.as_bytes());
        }
        let s: &str = &norm;
        // Each detector runs only when the value has a byte its own pre-check needs (a
        // necessary condition, so the result is the same as running every detector). The
        // detectors get the byte classes of the value they inspect.
        static CHECKS: [(Kind, u32, DetectFn); 7] = [
            (Kind::Sqli, C_SQLI, sqli::detect_in),
            (Kind::Xss, C_XSS, xss::detect_in),
            (Kind::Cmdi, C_CMDI, cmdi::detect_in),
            (Kind::Traversal, C_TRAV, traversal::detect_in),
            (Kind::Crlf, C_CRLF, misc::detect_crlf),
            (Kind::Template, C_TMPL, misc::detect_template),
            (Kind::Nosql, C_NOSQL, misc::detect_nosql),
        ];
        for &(kind, need, f) in &CHECKS {
            if mask & need != 0
                && self.is_enabled(kind)
                && let Some(rule) = f(s, mask)
            {
                return Some(Finding { kind, rule });
            }
        }
        None
    }
}

// Byte classes for the one-pass pre-filter in front of the detectors: one bit per byte
// (or byte group) a detector's pre-check looks for. The union over a value tells which
// detectors can apply (a detector is only called when the value has a byte of its gate,
// every gate being a superset of what that detector needs) and lets the detectors skip
// sub-checks whose byte is absent.

/// `%`.
pub(crate) const B_PCT: u32 = 1 << 0;
/// `&`.
pub(crate) const B_AMP: u32 = 1 << 1;
/// Non-ASCII.
pub(crate) const B_HIGH: u32 = 1 << 2;
/// ASCII control characters normalization drops (all but `\t`, `\n`, `\r`; DEL too).
pub(crate) const B_CTRL: u32 = 1 << 3;
/// `\r`, `\n`.
pub(crate) const B_CRLF: u32 = 1 << 4;
/// Lead bytes of the invisible characters normalization drops (U+00AD, U+200B–U+200F,
/// U+2060–U+2064, U+FEFF): `C2`, `E2`, `EF`.
pub(crate) const B_DROPLEAD: u32 = 1 << 5;
/// Lead bytes of the look-alike slashes (U+2044, U+2215, U+2216, U+29F5, U+29F8, U+29F9,
/// U+EFC8, U+F025, U+FF0F, U+FF3C): `E2`, `EE`, `EF`.
pub(crate) const B_LEAD3: u32 = 1 << 6;
/// `<`.
pub(crate) const B_LT: u32 = 1 << 7;
/// `:`.
pub(crate) const B_COLON: u32 = 1 << 8;
/// `=`.
pub(crate) const B_EQ: u32 = 1 << 9;
/// `'`, `"`, `` ` ``.
pub(crate) const B_QUOTE: u32 = 1 << 10;
/// `(`.
pub(crate) const B_LPAREN: u32 = 1 << 11;
/// `\`.
pub(crate) const B_BSLASH: u32 = 1 << 12;
/// `/`.
pub(crate) const B_SLASH: u32 = 1 << 13;
/// `0`.
pub(crate) const B_ZERO: u32 = 1 << 14;
/// SQL punctuation that makes a value a SQL candidate by itself: `= < > ( ; # @ | !`.
pub(crate) const B_SQLP: u32 = 1 << 15;
/// `-`.
pub(crate) const B_DASH: u32 = 1 << 16;
/// `*`.
pub(crate) const B_STAR: u32 = 1 << 17;
/// ASCII letters.
pub(crate) const B_ALPHA: u32 = 1 << 18;
/// Shell control bytes: `; | & ` $ ( \n \r`.
pub(crate) const B_SHELL: u32 = 1 << 19;
/// `{`.
pub(crate) const B_LBRACE: u32 = 1 << 20;
/// `$`.
pub(crate) const B_DOLLAR: u32 = 1 << 21;
/// JSON string scan: bytes that end the plain part of a string (`"`, `\`, controls).
pub(crate) const B_STOP: u32 = 1 << 29;
/// Bytes other than ASCII letters, digits, `_`, `-`, `@`, `.` (see `inputs::candidate`).
pub(crate) const B_NONPLAIN: u32 = 1 << 30;
/// `.`.
pub(crate) const B_DOT: u32 = 1 << 31;

/// Normalization has something to do: `%`, `&`, non-ASCII, controls it drops.
const C_NORM: u32 = B_PCT | B_AMP | B_HIGH | B_CTRL;
/// SQL: its punctuation, the first bytes of `--`, `/*`, `&&`, and ASCII letters (clause
/// keywords).
const C_SQLI: u32 = B_SQLP | B_DASH | B_SLASH | B_AMP | B_ALPHA;
/// XSS: `< : = ' " ` (`.
const C_XSS: u32 = B_LT | B_COLON | B_EQ | B_QUOTE | B_LPAREN;
/// Shell: `; | & ` $ ( \n \r`.
const C_CMDI: u32 = B_SHELL;
/// Paths: a slash in the canonical form (`/`, `\`, a look-alike slash, `0x2f`/`0x5c`)
/// or a colon (stream wrappers).
const C_TRAV: u32 = B_SLASH | B_BSLASH | B_LEAD3 | B_ZERO | B_COLON;
/// CRLF: `\r \n`.
const C_CRLF: u32 = B_CRLF;
/// Templates: `{ %`.
const C_TMPL: u32 = B_LBRACE | B_PCT;
/// NoSQL: `$`.
const C_NOSQL: u32 = B_DOLLAR;

/// The class bits of every byte.
pub(crate) static CLASS: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        let mut m = 0;
        if c == b'%' {
            m |= B_PCT;
        }
        if c == b'&' {
            m |= B_AMP;
        }
        if c >= 0x80 {
            m |= B_HIGH;
        }
        if (c < 0x20 && c != b'\t' && c != b'\n' && c != b'\r') || c == 0x7f {
            m |= B_CTRL;
        }
        if c == b'\r' || c == b'\n' {
            m |= B_CRLF;
        }
        if c == 0xc2 || c == 0xe2 || c == 0xef {
            m |= B_DROPLEAD;
        }
        if c == 0xe2 || c == 0xee || c == 0xef {
            m |= B_LEAD3;
        }
        if c == b'<' {
            m |= B_LT;
        }
        if c == b':' {
            m |= B_COLON;
        }
        if c == b'=' {
            m |= B_EQ;
        }
        if c == b'\'' || c == b'"' || c == b'`' {
            m |= B_QUOTE;
        }
        if c == b'(' {
            m |= B_LPAREN;
        }
        if c == b'\\' {
            m |= B_BSLASH;
        }
        if c == b'/' {
            m |= B_SLASH;
        }
        if c == b'0' {
            m |= B_ZERO;
        }
        if matches!(
            c,
            b'=' | b'<' | b'>' | b'(' | b';' | b'#' | b'@' | b'|' | b'!'
        ) {
            m |= B_SQLP;
        }
        if c == b'-' {
            m |= B_DASH;
        }
        if c == b'*' {
            m |= B_STAR;
        }
        if c.is_ascii_alphabetic() {
            m |= B_ALPHA;
        }
        if matches!(c, b';' | b'|' | b'&' | b'`' | b'$' | b'\n' | b'\r' | b'(') {
            m |= B_SHELL;
        }
        if c == b'{' {
            m |= B_LBRACE;
        }
        if c == b'$' {
            m |= B_DOLLAR;
        }
        if c == b'"' || c == b'\\' || c < 0x20 {
            m |= B_STOP;
        }
        if !(c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'@' || c == b'.') {
            m |= B_NONPLAIN;
        }
        if c == b'.' {
            m |= B_DOT;
        }
        t[i] = m;
        i += 1;
    }
    t
};

/// The union of the byte classes of `b`.
#[inline]
pub(crate) fn classes(b: &[u8]) -> u32 {
    let mut chunks = b.chunks_exact(4);
    let (mut m0, mut m1) = (0u32, 0u32);
    for c in &mut chunks {
        m0 |= CLASS[c[0] as usize] | CLASS[c[1] as usize];
        m1 |= CLASS[c[2] as usize] | CLASS[c[3] as usize];
    }
    for &c in chunks.remainder() {
        m0 |= CLASS[c as usize];
    }
    m0 | m1
}

/// Inputs shorter than this are scanned by a plain loop rather than `memchr` (whose
/// set-up costs more than scanning a short value).
const SHORT_SCAN: usize = 32;

/// Position of the first `c` in `hay`.
#[inline]
pub(crate) fn find_byte(c: u8, hay: &[u8]) -> Option<usize> {
    if hay.len() < SHORT_SCAN {
        hay.iter().position(|&x| x == c)
    } else {
        memchr::memchr(c, hay)
    }
}

/// The positions of `c` in `hay`, in order.
#[inline]
pub(crate) fn byte_positions(c: u8, hay: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut from = 0;
    std::iter::from_fn(move || {
        let p = from + find_byte(c, hay.get(from..)?)?;
        from = p + 1;
        Some(p)
    })
}

/// The positions of the quotes (`'`, `"`, `` ` ``) in `hay`, in order.
#[inline]
pub(crate) fn quote_positions(hay: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let short = hay.len() < SHORT_SCAN;
    let mut from = 0;
    std::iter::from_fn(move || {
        let rest = hay.get(from..)?;
        let p = from
            + if short {
                rest.iter().position(|&x| matches!(x, b'\'' | b'"' | b'`'))
            } else {
                memchr::memchr3(b'\'', b'"', b'`', rest)
            }?;
        from = p + 1;
        Some(p)
    })
}

/// First occurrence of `pat` in `hay`. Inputs and patterns are short, so a first-byte
/// `memchr` scan beats building a substring searcher per call.
pub(crate) fn find_bytes(hay: &[u8], pat: &[u8]) -> Option<usize> {
    let first = *pat.first()?;
    if hay.len() < SHORT_SCAN {
        // too short for `memchr`'s set-up to pay off
        return (0..hay.len()).find(|&i| hay[i] == first && hay[i..].starts_with(pat));
    }
    let mut from = 0;
    while let Some(p) = memchr::memchr(first, hay.get(from..)?) {
        let i = from + p;
        if hay[i..].starts_with(pat) {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

/// One detector: the value and its byte classes; returns the rule id that fired.
type DetectFn = fn(&str, u32) -> Option<&'static str>;

/// Values longer than this many bytes are inspected in overlapping windows.
pub const MAX_INSPECT: usize = 8 * 1024;
/// Overlap between consecutive windows of a long value.
const WINDOW_OVERLAP: usize = 1024;

/// Pseudo-random test inputs over the attack alphabet (fragments of every detector's
/// syntax, encodings, look-alike characters), deterministic.
#[cfg(test)]
pub(crate) fn test_samples(n: usize) -> Vec<String> {
    const PIECES: &[&str] = &[
        " ",
        "'",
        "\"",
        "`",
        ";",
        "|",
        "&",
        "$",
        "(",
        ")",
        "{",
        "}",
        "<",
        ">",
        "=",
        "/",
        "\\",
        ".",
        "%",
        "0",
        "1",
        "a",
        "x",
        "X",
        "#",
        "*",
        "!",
        "@",
        ":",
        ",",
        "-",
        "\n",
        "\r",
        "\t",
        "--",
        "/*",
        "*/",
        "..",
        "../",
        "0x2f",
        "0 x5c",
        "%2e",
        "%252f",
        "&lt;",
        "&#x3c;",
        "&amp;",
        "union",
        "SELECT",
        " or ",
        "and",
        "like",
        "sleep(",
        "on",
        "onerror=",
        "javascript:",
        "<script",
        "<svg",
        "${",
        "{{",
        "é",
        "\u{ad}",
        "\u{200b}",
        "\u{ff0f}",
        "\u{2215}",
        "file:",
        "php://",
        "data:",
        "C:",
        "c :",
        "cat ",
        "id",
        "ls",
        "/etc/passwd",
        "\0",
        "\x7f",
        "ORDER BY",
        "procedure",
        "UNIONSELECT",
        "where",
        "xp_cmdshell",
        "ssh2.exec://",
        "\\x27",
        "\\u003c",
        "O'Brien",
        "Rock & Roll",
        "5 < 6",
        "Mozilla/5.0 (X11; Linux x86_64)",
        "alert",
        "document.cookie",
        "glob",
        "offset",
        "having",
        "into",
        "$ne",
        "[$gt]",
        "\u{3000}",
        "ｓ",
        "jar:",
        "zlib:",
        "compress.bzip2://",
    ];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|_| {
            let k = 1 + next() % 12;
            (0..k)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_scans_agree_with_memchr() {
        for s in test_samples(3000) {
            let b = s.as_bytes();
            for c in [b'/', b':', b'0', b'\'', b'x'] {
                assert_eq!(find_byte(c, b), memchr::memchr(c, b), "{s:?}");
                let all: Vec<usize> = byte_positions(c, b).collect();
                assert_eq!(all, memchr::memchr_iter(c, b).collect::<Vec<_>>(), "{s:?}");
            }
            let q: Vec<usize> = quote_positions(b).collect();
            assert_eq!(
                q,
                memchr::memchr3_iter(b'\'', b'"', b'`', b).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn known_classes_give_the_same_findings() {
        let d = Detectors::default();
        for s in test_samples(3000) {
            let m = classes(s.as_bytes());
            assert_eq!(d.inspect_known(&s, m), d.inspect(&s), "{s:?}");
        }
    }
}
