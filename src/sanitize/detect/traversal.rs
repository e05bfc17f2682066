//! Path traversal and local file inclusion, on the normalized value (percent layers,
//! overlong UTF-8 and fullwidth forms already folded): path segments that climb
//! (`..`, `...`, `....//`, `..;`), with either separator, absolute paths into system
//! directories, and stream wrappers that reach files (`file://`, `php://filter`, …).

/// System locations a climbing path or absolute path reaches for.
const SYSTEM_DIRS: &[&[u8]] = &[
    b"etc/",
    b"proc/",
    b"sys/",
    b"root/",
    b"var/log/",
    b"var/lib/",
    b"var/www/",
    b"var/run/",
    b"var/mail/",
    b"var/spool/",
    b"dev/",
    b"boot/",
    b"usr/local/",
    b"usr/lib/",
    b"usr/share/",
    b"usr/bin/",
    b"bin/",
    b"sbin/",
    b"opt/",
    b"srv/",
    b"tmp/",
    b"home/",
    b"windows/",
    b"winnt/",
    b"inetpub/",
    b"boot.ini",
    b"win.ini",
    b"system.ini",
    b"web-inf/",
    b"meta-inf/",
    b".ssh/",
    b".env",
    b".htaccess",
    b".htpasswd",
    b".git/",
    b"wp-config",
    b"config/",
    b"app/etc/",
    b"program files",
    b"programdata/",
    b"users/",
    b"documents and settings/",
    b"autoexec.bat",
    b"system32/",
    b"sam",
    b"shadow",
    b"passwd",
    b".bash_history",
    b".aws/",
    b".docker/",
    b".kube/",
    // configuration and credential files, by type
    b".properties",
    b".json",
    b".ini",
    b".conf",
    b".config",
    b".xml",
    b".yml",
    b".yaml",
    b".php",
    b".key",
    b".pem",
    b".log",
    b".sql",
    b".bak",
    b".htpasswd",
    b".toml",
];

/// Absolute system paths that are suspicious even without climbing.
const ABS_SYSTEM: &[&[u8]] = &[
    b"/etc/",
    b"/proc/",
    b"/sys/",
    b"/root/",
    b"/var/log/",
    b"/var/lib/",
    b"/dev/",
    b"/boot/",
    b"/boot.ini",
    b"/usr/local/etc/",
    b"c:/windows/",
    b"c:/winnt/",
    b"c:/boot.ini",
    b"/windows/",
    b"/winnt/",
    b"c:/inetpub/",
    b"/web-inf/",
    b"/meta-inf/",
    b"/.ssh/",
    b"c:/system32/",
    b"/var/www/",
    b"/opt/",
    b"c:/program files",
    b"c:/users/",
    b"/home/",
    b"/usr/",
    b"/bin/",
    b"/tmp/",
    b"c:/",
];

const WRAPPERS: &[&[u8]] = &[
    b"file:/",
    b"php://",
    b"zip://",
    b"phar://",
    b"expect://",
    b"jar:",
    b"glob://",
    b"data://",
    b"compress.zlib://",
    b"compress.bzip2://",
    b"zlib:",
    b"ogg://",
    b"rar://",
    // PHP's ssh2 wrappers are `ssh2.<kind>://` (the bare `ssh2.` had no ':' and could
    // never be found at a colon)
    b"ssh2.shell://",
    b"ssh2.exec://",
    b"ssh2.tunnel://",
    b"ssh2.sftp://",
    b"ssh2.scp://",
    b"netdoc:",
    b"gopher://",
    b"dict://",
];

/// The byte a wrapper has just before its colon (`file:` → `e`), as a set: a wrapper can
/// only be found at a colon whose canonical predecessor is one of these.
static BEFORE_COLON: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < WRAPPERS.len() {
        let w = WRAPPERS[i];
        let mut k = 1;
        while k < w.len() {
            if w[k] == b':' {
                t[w[k - 1] as usize] = true;
                break;
            }
            k += 1;
        }
        i += 1;
    }
    t
};

/// Exact pre-check: every rule needs a `/` in the canonical form (a climbing segment ends
/// at one, an absolute path starts with one) or a colon after a wrapper name. In the input
/// a canonical `/` is a `/`, a `\`, a look-alike slash (non-ASCII, lead byte `E2`, `EE` or
/// `EF`) or a hex `0x2f` / `0x5c` (blanks dropped, any case: a `0`, blanks, then `x`);
/// the canonical byte before a colon is the previous non-blank byte, lowercased.
fn candidate(s: &str, mask: u32) -> bool {
    use super::{B_BSLASH, B_COLON, B_LEAD3, B_SLASH, B_ZERO};
    if mask & (B_SLASH | B_BSLASH | B_LEAD3) != 0 {
        return true;
    }
    let b = s.as_bytes();
    let blank = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r');
    if mask & B_ZERO != 0
        && super::byte_positions(b'0', b).any(|i| {
            b[i + 1..]
                .iter()
                .find(|c| !blank(**c))
                .is_some_and(|c| *c | 0x20 == b'x')
        })
    {
        return true;
    }
    mask & B_COLON != 0
        && super::byte_positions(b':', b).any(|i| {
            b[..i]
                .iter()
                .rev()
                .find(|c| !blank(**c))
                .is_some_and(|c| BEFORE_COLON[c.to_ascii_lowercase() as usize])
        })
}

/// Whether any of `pats` occurs in `hay` (one pass over the candidate start bytes).
fn find_any(hay: &[u8], pats: &[&[u8]]) -> Option<(usize, usize)> {
    for (i, &c) in hay.iter().enumerate() {
        for (k, p) in pats.iter().enumerate() {
            if p[0] == c && hay[i..].starts_with(p) {
                return Some((i, k));
            }
        }
    }
    None
}

/// Emits the canonical form of `s` (first 16 KiB chars): lowercase, `\` and look-alike
/// slashes as `/`, blanks dropped, other non-ASCII characters as `_`.
#[inline]
fn canonical(s: &str, mut push: impl FnMut(u8)) {
    if s.is_ascii() {
        for &c in s.as_bytes().iter().take(16 * 1024) {
            match c {
                b'\\' => push(b'/'),
                b' ' | b'\t' | b'\n' | b'\r' => {}
                c => push(c.to_ascii_lowercase()),
            }
        }
    } else {
        for c in s.chars().take(16 * 1024) {
            match c {
                '\\' | '\u{2215}' | '\u{2216}' | '\u{2044}' | '\u{29f5}' | '\u{29f8}'
                | '\u{29f9}' | '\u{ff0f}' | '\u{ff3c}' | '\u{efc8}' | '\u{f025}' => push(b'/'),
                ' ' | '\t' | '\n' | '\r' => {}
                c if c.is_ascii() => push(c.to_ascii_lowercase() as u8),
                _ => push(b'_'),
            }
        }
    }
}

/// Detects path traversal in `s`, whose byte classes are `mask`.
pub(crate) fn detect_in(s: &str, mask: u32) -> Option<&'static str> {
    if !candidate(s, mask) {
        return None;
    }
    detect_all(s)
}

/// The rules, without the pre-check.
fn detect_all(s: &str) -> Option<&'static str> {
    // Canonical form: lowercase, `\` as `/`, drop blanks (at most one byte per input
    // byte, so a short value fits the stack buffer).
    let mut stack = [0u8; 512];
    let heap: Vec<u8>;
    let p: &[u8] = if s.len() <= stack.len() {
        let mut k = 0;
        canonical(s, |c| {
            stack[k] = c;
            k += 1;
        });
        &stack[..k]
    } else {
        let mut v = Vec::with_capacity(s.len().min(16 * 1024));
        canonical(s, |c| v.push(c));
        heap = v;
        &heap
    };
    // hex-literal encoded dots and slashes: 0x2e0x2e0x2f
    let decoded: Vec<u8>;
    let p: &[u8] = if super::byte_positions(b'0', p).any(|i| {
        let w = &p[i..];
        w.starts_with(b"0x2e") || w.starts_with(b"0x2f") || w.starts_with(b"0x5c")
    }) {
        let mut q = Vec::with_capacity(p.len());
        let mut i = 0;
        while i < p.len() {
            let w = &p[i..];
            if w.starts_with(b"0x2e") {
                q.push(b'.');
                i += 4;
            } else if w.starts_with(b"0x2f") || w.starts_with(b"0x5c") {
                q.push(b'/');
                i += 4;
            } else {
                q.push(p[i]);
                i += 1;
            }
        }
        decoded = q;
        &decoded
    } else {
        p
    };
    let n = p.len();
    // Count climbing segments.
    let mut steps = 0;
    let mut first_step_end = None;
    let mut i = 0;
    while i < n {
        if p[i] == b'.' {
            let s0 = i;
            while i < n && p[i] == b'.' {
                i += 1;
            }
            let dots = i - s0;
            let at_seg_start =
                s0 == 0 || matches!(p[s0 - 1], b'/' | b'=' | b':' | b'%' | b'?' | b'&');
            let mut j = i;
            if j < n && matches!(p[j], b';' | b'%') {
                j += 1;
            }
            let sep = j < n && p[j] == b'/';
            let end = j >= n;
            if dots >= 2
                && (sep || (end && s0 > 0 && p[s0 - 1] == b'/'))
                && (dots == 2 || at_seg_start)
            {
                steps += 1;
                if first_step_end.is_none() {
                    first_step_end = Some(j);
                }
            }
        } else {
            i += 1;
        }
    }
    let target_sensitive = |from: usize| -> bool {
        let tail = &p[from.min(n)..];
        find_any(tail, SYSTEM_DIRS).is_some()
    };
    let prose = || s.split_whitespace().nth(3).is_some();
    if steps >= 2 && (!prose() || target_sensitive(first_step_end.unwrap_or(0))) {
        return Some("traversal.dot_dot");
    }
    if steps == 1 {
        let from = first_step_end.unwrap_or(0);
        if target_sensitive(from)
            || p.starts_with(b"..")
                && p.len() > 3
                && !p[3..].contains(&b'/')
                && p.ends_with(b".ini")
        {
            return Some("traversal.dot_dot");
        }
    }
    // the bytes just before a colon (a wrapper can only be found where its own byte
    // before the colon is one of them)
    let mut before_colon = [false; 256];
    let mut has_colon = false;
    for c in super::byte_positions(b':', p) {
        has_colon = true;
        if c > 0 {
            before_colon[p[c - 1] as usize] = true;
        }
    }
    for w in WRAPPERS.iter().filter(|_| has_colon) {
        // every wrapper contains a ':'; find it by the scheme's position before a colon
        let colon_in_w = w.iter().position(|c| *c == b':').unwrap_or(0);
        if colon_in_w > 0 && !before_colon[w[colon_in_w - 1] as usize] {
            continue;
        }
        let pos = super::byte_positions(b':', p)
            .filter(|&c| c >= colon_in_w)
            .map(|c| c - colon_in_w)
            .find(|&st| p[st..].starts_with(w));
        if let Some(pos) = pos {
            let at_start =
                pos == 0 || matches!(p[pos - 1], b'=' | b'"' | b'\'' | b'(' | b'/' | b':');
            let after = &p[pos + w.len()..];
            if at_start
                && !after.is_empty()
                && (*w != b"jar:" || after.starts_with(b"file:") || after.starts_with(b"http"))
                && (*w != b"data://" || after.contains(&b'/'))
            {
                return Some("traversal.stream_wrapper");
            }
        }
    }
    // Absolute system path: the value is (or has a parameter that is) a path.
    // every absolute pattern starts with '/' or 'c:/': check them at each slash once
    let mut seen = 0u64;
    // (nested loops: `continue` goes on with the next pattern at this slash, then the
    // next slash, the order the matches occur in)
    for sl in super::byte_positions(b'/', p) {
        for &a in ABS_SYSTEM {
            let off = if a[0] == b'/' { 0 } else { 2 };
            // the byte after the first one decides most patterns without a compare
            if !(sl >= off && p.get(sl - off + 1) == Some(&a[1]) && p[sl - off..].starts_with(a)) {
                continue;
            }
            let pos = sl - off;
            let idx = ABS_SYSTEM.iter().position(|x| *x == a).unwrap_or(0);
            if seen & (1 << idx) != 0 {
                continue; // first occurrence per pattern only, as before
            }
            seen |= 1 << idx;
            {
                let at_start = pos == 0
                    || matches!(p[pos - 1], b'=' | b'"' | b'\'' | b'(' | b'%' | b'/' | b'.');
                let after = &p[pos + a.len()..];
                // a file or directory name follows, and the value is path-shaped (no prose)
                let name_follows = after
                    .first()
                    .map(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'_')
                    .unwrap_or(false);
                let raw_has_space = s.trim().contains(' ');
                let generic = matches!(
                    a,
                    b"/home/"
                        | b"/usr/"
                        | b"/bin/"
                        | b"/tmp/"
                        | b"c:/"
                        | b"/opt/"
                        | b"c:/users/"
                        | b"/var/www/"
                );
                if at_start && name_follows && !raw_has_space {
                    if generic {
                        // only when it reaches a sensitive file below
                        if target_sensitive(pos + a.len()) && !after.starts_with(b"users/public") {
                            return Some("traversal.system_path");
                        }
                        continue;
                    }
                    return Some("traversal.system_path");
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precheck_is_exact() {
        // whenever the pre-check says no, the rules find nothing either
        let mut skipped = 0;
        for s in super::super::test_samples(20_000)
            .iter()
            .map(String::as_str)
            .chain([
                "2024-03-18T09:41:27Z",
                "..\\..\\boot.ini",
                "0 x2f0x2fetc0x2fpasswd",
                "php :// filter",
                "compress.bzip2://x",
                "a\u{2215}etc\u{2215}passwd",
            ])
        {
            let m = super::super::classes(s.as_bytes());
            if !candidate(s, m) {
                skipped += 1;
                assert_eq!(detect_all(s), None, "{s:?}");
            }
        }
        assert!(skipped > 1000, "{skipped}");
    }
}
