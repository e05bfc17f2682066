//! OS command injection: a small shell lexer. A command is injected when a shell control
//! operator (`;`, `|`, `||`, `&`, `&&`, newline, `` ` ``, `$(`) or a shell substitution
//! (`${…}`, `$(…)`, `` `…` ``) is followed by a word that, after shell quote removal
//! (`c'a't`, `c\at`, `${IFS}`), names a command, with arguments shaped like a command line.
//! Words that are also English ("set", "who", "time") need shell-shaped surroundings.

/// Commands that are never English words; enough on their own after a control operator.
const STRONG: &[&str] = &[
    "alias",
    "apt",
    "apt-get",
    "arp",
    "attrib",
    "awk",
    "base64",
    "basename",
    "bash",
    "bash.exe",
    "bg",
    "bitsadmin",
    "busybox",
    "bzip2",
    "cacls",
    "cat",
    "cd",
    "certutil",
    "chattr",
    "chdir",
    "chmod",
    "chown",
    "cmd",
    "cmd.exe",
    "cmp",
    "copy",
    "cp",
    "crontab",
    "cscript",
    "csh",
    "curl",
    "cut",
    "dash",
    "date",
    "declare",
    "del",
    "df",
    "diff",
    "dig",
    "dir",
    "dirname",
    "dmesg",
    "dnf",
    "docker",
    "du",
    "echo",
    "env",
    "erase",
    "eval",
    "exec",
    "exit",
    "export",
    "expr",
    "false",
    "fc",
    "fg",
    "file",
    "find",
    "fold",
    "free",
    "ftp",
    "gawk",
    "gcc",
    "getent",
    "getfacl",
    "git",
    "grep",
    "groups",
    "gunzip",
    "gzip",
    "halt",
    "head",
    "hexdump",
    "history",
    "host",
    "hostname",
    "icacls",
    "id",
    "id.exe",
    "iex",
    "ifconfig",
    "init",
    "invoke-expression",
    "invoke-webrequest",
    "ipconfig",
    "jobs",
    "kill",
    "killall",
    "ksh",
    "kubectl",
    "last",
    "lastlog",
    "less",
    "let",
    "ln",
    "local",
    "locate",
    "logout",
    "ls",
    "lsattr",
    "lsb_release",
    "lsof",
    "lua",
    "make",
    "md",
    "mkdir",
    "mkfifo",
    "mknod",
    "more",
    "mount",
    "move",
    "mshta",
    "mv",
    "nc",
    "nc.exe",
    "ncat",
    "net",
    "netcat",
    "netstat",
    "nl",
    "nmap",
    "node",
    "nohup",
    "npm",
    "nslookup",
    "nslookup.exe",
    "od",
    "openssl",
    "passwd",
    "pathping",
    "perl",
    "php",
    "ping",
    "ping.exe",
    "pip",
    "pkill",
    "poweroff",
    "powershell",
    "powershell.exe",
    "print",
    "printenv",
    "printf",
    "ps",
    "pwd",
    "pwsh",
    "python",
    "python2",
    "python3",
    "query",
    "quser",
    "qwinsta",
    "read",
    "readlink",
    "realpath",
    "reboot",
    "reg",
    "regsvr32",
    "ren",
    "rename",
    "rev",
    "rm",
    "rmdir",
    "route",
    "rsync",
    "ruby",
    "runas",
    "rundll32",
    "sc",
    "schtasks",
    "scp",
    "sed",
    "seq",
    "service",
    "set",
    "setfacl",
    "sh",
    "sh.exe",
    "shutdown",
    "sleep",
    "socat",
    "sort",
    "source",
    "split",
    "ssh",
    "start",
    "start-process",
    "stat",
    "strings",
    "su",
    "sudo",
    "systemctl",
    "systeminfo",
    "tail",
    "tar",
    "taskkill",
    "tasklist",
    "tcsh",
    "tee",
    "telnet",
    "telnetd",
    "test",
    "tftp",
    "time",
    "timeout",
    "touch",
    "tr",
    "traceroute",
    "tracert",
    "trap",
    "tree",
    "true",
    "type",
    "ulimit",
    "umask",
    "uname",
    "uniq",
    "unset",
    "unzip",
    "uptime",
    "useradd",
    "usermod",
    "ver",
    "ver.exe",
    "vi",
    "vim",
    "w",
    "wait",
    "wc",
    "wget",
    "whereis",
    "which",
    "who",
    "whoami",
    "whoami.exe",
    "wmic",
    "wscript",
    "xargs",
    "xterm",
    "xxd",
    "yes",
    "yum",
    "zip",
    "zsh",
];

/// Windows commands (case-insensitive shell).
const WINDOWS: &[&str] = &[
    "attrib",
    "certutil",
    "cmd",
    "cmd.exe",
    "copy",
    "del",
    "dir",
    "echo",
    "hostname",
    "iex",
    "ipconfig",
    "move",
    "net",
    "netstat",
    "nslookup",
    "ping",
    "powershell",
    "powershell.exe",
    "query",
    "reg",
    "ren",
    "sc",
    "set",
    "start",
    "systeminfo",
    "taskkill",
    "tasklist",
    "timeout",
    "type",
    "ver",
    "whoami",
    "whoami.exe",
    "wmic",
];

/// Commands that are also common English words (or bench/pipeline commands seen in
/// legitimate snippets): they need an argument shaped like a command line (a flag, a path,
/// a number, a redirection) or nothing at all after them.
const WEAK: &[&str] = &[
    "alias", "attrib", "awk", "bg", "cat", "cd", "cmd", "cmp", "copy", "cp", "cut", "date",
    "declare", "del", "df", "diff", "dir", "docker", "du", "echo", "env", "erase", "eval", "exec",
    "exit", "export", "expr", "false", "fg", "file", "find", "fold", "free", "git", "grep", "gzip",
    "halt", "head", "history", "host", "id", "iex", "init", "jobs", "kill", "kubectl", "last",
    "less", "let", "ln", "local", "ls", "lua", "make", "md", "more", "mount", "move", "mv", "net",
    "nl", "node", "npm", "od", "perl", "php", "ping", "pip", "print", "ps", "pwd", "python",
    "query", "read", "reboot", "reg", "ren", "rename", "rev", "rm", "route", "ruby", "sc", "sed",
    "seq", "service", "set", "sh", "shutdown", "sleep", "sort", "source", "split", "start", "stat",
    "strings", "su", "tail", "tar", "tee", "test", "time", "timeout", "touch", "tr", "trap",
    "tree", "true", "type", "uniq", "unset", "unzip", "ver", "vi", "w", "wait", "wc", "which",
    "who", "xargs", "yes", "zip",
];

/// Commands that appear in legitimate developer snippets after `|` or `&&`
/// (`git log | head`, `cd x && make`): never enough on their own.
const PIPELINE_BENIGN: &[&str] = &[
    "awk", "cd", "cut", "docker", "git", "grep", "head", "jq", "kubectl", "less", "make", "more",
    "npm", "pip", "sed", "sort", "tail", "tee", "tr", "uniq", "wc", "xargs",
];

/// One of the sorted command lists, with its words of at most 8 bytes packed into
/// integers (sorted) so a lookup compares integers.
struct Commands {
    words: &'static [&'static str],
    packed: &'static [u64],
}

/// Little-endian packing of a word of at most 8 bytes (zero padded).
const fn pack(w: &[u8]) -> u64 {
    let mut v = 0u64;
    let mut i = 0;
    while i < w.len() {
        v |= (w[i] as u64) << (8 * i);
        i += 1;
    }
    v
}

/// The packed words of a list (at most 8 bytes; the others as `u64::MAX`), sorted.
const fn packed_sorted<const N: usize>(list: &[&str]) -> [u64; N] {
    let mut t = [u64::MAX; N];
    let mut i = 0;
    while i < N {
        let w = list[i].as_bytes();
        if w.len() <= 8 {
            t[i] = pack(w);
        }
        i += 1;
    }
    // insertion sort (compile time)
    let mut i = 1;
    while i < N {
        let mut j = i;
        while j > 0 && t[j - 1] > t[j] {
            let x = t[j];
            t[j] = t[j - 1];
            t[j - 1] = x;
            j -= 1;
        }
        i += 1;
    }
    t
}

static STRONG_P: [u64; STRONG.len()] = packed_sorted(STRONG);
static WINDOWS_P: [u64; WINDOWS.len()] = packed_sorted(WINDOWS);
static WEAK_P: [u64; WEAK.len()] = packed_sorted(WEAK);
static PIPELINE_BENIGN_P: [u64; PIPELINE_BENIGN.len()] = packed_sorted(PIPELINE_BENIGN);

const STRONG_SET: Commands = Commands {
    words: STRONG,
    packed: &STRONG_P,
};
const WINDOWS_SET: Commands = Commands {
    words: WINDOWS,
    packed: &WINDOWS_P,
};
const WEAK_SET: Commands = Commands {
    words: WEAK,
    packed: &WEAK_P,
};
const PIPELINE_BENIGN_SET: Commands = Commands {
    words: PIPELINE_BENIGN,
    packed: &PIPELINE_BENIGN_P,
};

impl Commands {
    /// Whether `w` is in the list.
    fn contains(&self, w: &[u8]) -> bool {
        // no listed word has a NUL byte (which would pack like a shorter word)
        if w.len() <= 8 && !w.contains(&0) {
            return self.packed.binary_search(&pack(w)).is_ok();
        }
        std::str::from_utf8(w).is_ok_and(|w| self.words.binary_search(&w).is_ok())
    }

    /// `contains` of the lowercase form of an ASCII word, lowercased on the stack.
    fn contains_lower(&self, w: &[u8]) -> bool {
        let mut buf = [0u8; 32];
        if w.len() > buf.len() {
            return self.contains(&w.to_ascii_lowercase());
        }
        let l = &mut buf[..w.len()];
        l.copy_from_slice(w);
        l.make_ascii_lowercase();
        self.contains(l)
    }
}

/// Detects command injection in `s`, whose byte classes are `mask`. Needs a shell control
/// byte (`; | & ` $ ( \n \r`, [`super::B_SHELL`]).
pub(crate) fn detect_in(s: &str, mask: u32) -> Option<&'static str> {
    if mask & super::B_SHELL == 0 {
        return None;
    }
    let b = s.as_bytes();
    let n = b.len();
    // Shellshock: `() {` function definition prefix.
    if mask & super::B_LPAREN != 0
        && let Some(p) = super::find_bytes(b, b"() {")
    {
        let body = &b[p + 4..];
        let semi = body.iter().take(6).position(|c| *c == b';');
        if semi.is_some_and(|k| body[k + 1..].iter().take(3).any(|c| *c == b'}')) {
            return Some("cmdi.shellshock");
        }
    }
    if mask & super::B_SLASH != 0
        && let Some(r) = glob_path(b)
    {
        return Some(r);
    }
    let mut budget = 64;
    let mut i = 0;
    while i < n {
        // skip the bytes that cannot start an operator, 4 at a time first
        while i + 4 <= n
            && !(OP_START[b[i] as usize]
                | OP_START[b[i + 1] as usize]
                | OP_START[b[i + 2] as usize]
                | OP_START[b[i + 3] as usize])
        {
            i += 4;
        }
        while i < n && !OP_START[b[i] as usize] {
            i += 1;
        }
        if i >= n {
            break;
        }
        let c = b[i];
        let (kind, after) = match c {
            b';' => (Op::Seq, i + 1),
            b'\n' | b'\r' => (Op::Newline, i + 1),
            b'|' => {
                if i + 1 < n && b[i + 1] == b'|' {
                    (Op::Or, i + 2)
                } else {
                    (Op::Pipe, i + 1)
                }
            }
            b'&' if is_entity_ref(&b[i..]) && !is_command_entity(&b[i..]) => {
                i += 1;
                continue;
            }
            b'<' if i + 1 < n && b[i + 1] == b'(' => (Op::Subst, i + 2),
            b'&' => {
                if i + 1 < n && b[i + 1] == b'&' {
                    (Op::And, i + 2)
                } else {
                    (Op::Amp, i + 1)
                }
            }
            b'`' => (Op::Subst, i + 1),
            b'$' if i + 1 < n && b[i + 1] == b'(' => (Op::Subst, i + 2),
            b'$' if i + 1 < n && b[i + 1] == b'{' => (Op::Brace, i + 2),
            b'{' if i + 1 < n && b[i + 1] != b'{' => (Op::Group, i + 1),
            b'(' => (Op::Group, i + 1),
            _ => {
                i += 1;
                continue;
            }
        };
        budget -= 1;
        if budget == 0 {
            break;
        }
        if let Some(r) = command_after(b, i, after, kind) {
            return Some(r);
        }
        i = after;
    }
    None
}

/// Bytes the operator scan stops at (every arm of its `match` but the default).
static OP_START: [bool; 256] = {
    let mut t = [false; 256];
    let ops = b";\n\r|&<`${(";
    let mut i = 0;
    while i < ops.len() {
        t[ops[i] as usize] = true;
        i += 1;
    }
    t
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Seq,
    Newline,
    Pipe,
    Or,
    Amp,
    And,
    Subst,
    Brace,
    Group,
}

/// A shell word after quote removal, on the stack (`shell_word` stops adding at 64 bytes;
/// one step adds at most 23).
struct Word {
    buf: [u8; 96],
    len: usize,
}

impl Word {
    fn new() -> Self {
        Word {
            buf: [0; 96],
            len: 0,
        }
    }
    fn clear(&mut self) {
        self.len = 0;
    }
    fn len(&self) -> usize {
        self.len
    }
    fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn push(&mut self, c: u8) {
        if self.len < self.buf.len() {
            self.buf[self.len] = c;
            self.len += 1;
        }
    }
    fn extend_from_slice(&mut self, s: &[u8]) {
        let k = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + k].copy_from_slice(&s[..k]);
        self.len += k;
    }
    fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Reads one shell word starting at `i` with quote removal; returns (word, end).
fn shell_word(b: &[u8], mut i: usize, out: &mut Word) -> usize {
    let n = b.len();
    out.clear();
    while i < n && out.len() < 64 {
        let c = b[i];
        match c {
            b'\\' => {
                i += 1;
                if i < n && !super::misc::is_space(b[i]) {
                    out.push(b[i]);
                    i += 1;
                }
            }
            b'\'' | b'"' => {
                // quote removal only when the quote is inside a word (c'a't) or wraps a word
                let q = c;
                match super::find_byte(q, &b[i + 1..]) {
                    Some(p)
                        if p < 24
                            && !b[i + 1..i + 1 + p]
                                .iter()
                                .any(|x| super::misc::is_space(*x)) =>
                    {
                        out.extend_from_slice(&b[i + 1..i + 1 + p]);
                        i = i + 2 + p;
                    }
                    _ => {
                        if out.is_empty() {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                }
            }
            b'$' if i + 1 < n && b[i + 1] == b'@' => i += 2,
            b'$' if starts_with_ci(&b[i..], b"${ifs}") => break,
            b'$' if starts_with_ci(&b[i..], b"$ifs") => break,
            b'$' if i + 2 < n && b[i + 1] == b'{' && b[i + 2] == b'}' => i += 3,
            _ if c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'/' | b':') => {
                out.push(c.to_ascii_lowercase());
                i += 1;
            }
            _ => break,
        }
    }
    i
}

fn starts_with_ci(h: &[u8], p: &[u8]) -> bool {
    h.len() >= p.len() && h[..p.len()].eq_ignore_ascii_case(p)
}

/// Skips blanks, `${IFS}`/`$IFS$9`, and opening quotes/parens before a command word.
fn skip_blank(b: &[u8], mut i: usize) -> usize {
    let n = b.len();
    loop {
        if i >= n {
            return i;
        }
        if super::misc::is_space(b[i]) || matches!(b[i], b'(' | b'{' | b'\'' | b'"' | b'!') {
            i += 1;
        } else if starts_with_ci(&b[i..], b"${ifs}") {
            i += 6;
        } else if starts_with_ci(&b[i..], b"$ifs") {
            i += 4;
            if i + 1 < n && b[i] == b'$' && b[i + 1].is_ascii_digit() {
                i += 2;
            }
        } else {
            return i;
        }
    }
}

fn command_after(b: &[u8], op_at: usize, after: usize, op: Op) -> Option<&'static str> {
    let n = b.len();
    let start = skip_blank(b, after);
    if start >= n {
        return None;
    }
    if matches!(op, Op::Subst) && b[start] == b'<' {
        return Some("cmdi.substitution"); // $(<file)
    }
    if b[start] == b'$'
        && start + 1 < n
        && (b[start + 1] == b'0'
            || starts_with_ci(&b[start + 1..], b"shell")
            || starts_with_ci(&b[start + 1..], b"bash"))
    {
        return Some("cmdi.command_chain"); // $0 -c …
    }
    let mut wbuf = Word::new();
    let end = shell_word(b, start, &mut wbuf);
    if wbuf.is_empty() {
        return None;
    }
    let word = wbuf.as_slice();
    // Absolute program path: /usr/bin/id, /bin/sh, c:\windows\system32\cmd.exe
    let base: &[u8] = match word.iter().rposition(|c| *c == b'/') {
        Some(p) if word[0] == b'/' => &word[p + 1..],
        _ => word,
    };
    let path_prog = word[0] == b'/'
        && word.len() > 1
        && (word.starts_with(b"/bin/")
            || word.starts_with(b"/usr/")
            || word.starts_with(b"/sbin/")
            || word.starts_with(b"/tmp/")
            || word.starts_with(b"/dev/"));
    // Unix commands are lowercase; only Windows commands may be written in capitals.
    if b[start..end].iter().any(|c| c.is_ascii_uppercase()) && !WINDOWS_SET.contains(base) {
        return None;
    }
    let known = STRONG_SET.contains(base);
    if !known && !path_prog {
        return None;
    }
    // Look at the argument shape.
    let mut j = end;
    while j < n && (b[j] == b' ' || b[j] == b'\t') {
        j += 1;
    }
    let rest = &b[j..];
    let next = rest.first().copied();
    // `#` glued to a word is part of the word (`ps#MPfa`), except as the value's last
    // character, where payloads put it to comment out what the application appends.
    let word_boundary = end >= n
        || !(b[end].is_ascii_alphanumeric()
            || (b[end] == b'#' && end + 1 < n && !super::misc::is_space(b[end + 1])));
    if !word_boundary {
        return None;
    }
    // substitution contexts are strong: `id`, $(id), ${id}
    let closed_subst = match op {
        Op::Subst => matches!(next, Some(b'`' | b')')) || rest_has_closer(rest, b"`)"),
        Op::Brace => matches!(next, Some(b'}')) || rest_has_closer(rest, b"}"),
        Op::Group => matches!(next, Some(b',')) && rest_has_closer(rest, b"}"),
        _ => false,
    };
    let ends_command = next.is_none()
        || matches!(
            next,
            Some(b';' | b'|' | b'&' | b'`' | b'#' | b'\n' | b'\r' | b')' | b'>' | b'<')
        )
        || (matches!(next, Some(b'\'' | b'"'))
            && !rest.is_empty()
            && rest[1..]
                .iter()
                .all(|c| matches!(c, b';' | b'|' | b'&' | b')' | b'#' | b' ' | b'\'' | b'"')));
    let arg_shell = matches!(next, Some(b'-' | b'/' | b'\\' | b'$' | b'+'))
        || next.map(|c| c.is_ascii_digit()).unwrap_or(false)
        || (next == Some(b'.')
            && rest
                .get(1)
                .map(|c| *c == b'/' || *c == b'.')
                .unwrap_or(false))
        || rest.starts_with(b"${ifs}")
        || starts_with_ci(rest, b"$ifs")
        || (end < n
            && (starts_with_ci(&b[end..], b"${ifs}") || starts_with_ci(&b[end..], b"$ifs")))
        || (next.map(|c| c.is_ascii_alphabetic()).unwrap_or(false)
            && (rest.starts_with(b"c:") || rest.get(1) == Some(&b':')));
    let weak = WEAK_SET.contains(base);
    let benign_pipeline = PIPELINE_BENIGN_SET.contains(base);
    // What precedes the operator: a value that was "closed" by a quote/paren, or data.
    let before = &b[..op_at];
    let prefix_is_command = first_word_is_command(before);
    let sys_path_arg = rest
        .windows(5)
        .take(80)
        .any(|w| w == b"/etc/" || w == b"/var/" || w == b"/tmp/");
    if benign_pipeline
        && matches!(op, Op::Pipe | Op::And | Op::Or)
        && (prefix_is_command || !ends_command)
        && !sys_path_arg
    {
        return None;
    }
    if path_prog
        && (ends_command
            || arg_shell
            || next.map(|c| c.is_ascii_alphanumeric()).unwrap_or(false)
            || next == Some(b' '))
    {
        return Some("cmdi.command_path");
    }
    let subst_closer = matches!(next, Some(b'`' | b')' | b'}'));
    if matches!(op, Op::Group) && next == Some(b',') && b[op_at] == b'{' {
        return Some("cmdi.brace_expansion");
    }
    // `npm install` in Markdown is a code span, not a substitution: developer tools need
    // a shell-shaped argument, not just words.
    let short_line = short_command_line(rest) && !benign_pipeline;
    if benign_pipeline && op == Op::Subst && !sys_path_arg {
        return None;
    }
    if closed_subst && (!weak || ends_command || arg_shell || subst_closer || short_line) {
        return Some("cmdi.substitution");
    }
    match op {
        Op::Subst | Op::Brace => {
            if !weak || arg_shell {
                return Some("cmdi.substitution");
            }
            None
        }
        Op::Group => None,
        _ => {
            if ends_command || arg_shell {
                if prefix_is_command && matches!(op, Op::Pipe | Op::And | Op::Or) && weak {
                    return None;
                }
                return Some("cmdi.command_chain");
            }
            if data_prefix(before) && short_command_line(rest) {
                return Some("cmdi.command_chain");
            }
            if !weak
                && next
                    .map(|c| c.is_ascii_alphabetic() || c == b'\'' || c == b'"')
                    .unwrap_or(false)
            {
                // `; bash -i`, `& powershell IEX(...)`, `| php -r '...'`: strong command with
                // word argument
                return Some("cmdi.command_chain");
            }
            None
        }
    }
}

/// The text before the operator is one data token (an IP, a file name, an e-mail) or was
/// closed by a quote / paren / backtick: the shape of an injected parameter.
fn data_prefix(before: &[u8]) -> bool {
    let t = before.trim_ascii();
    // a capitalized word is prose ("Tom & who knows"), not a parameter value
    let capitalized_word = t.first().is_some_and(|c| c.is_ascii_uppercase())
        && t[1..].iter().all(|c| c.is_ascii_lowercase());
    t.is_empty()
        || matches!(t.last(), Some(b'\'' | b'"' | b')' | b'`'))
        || (!t.iter().any(|c| c.is_ascii_whitespace()) && !capitalized_word)
}

/// Up to three lowercase argument words, then the end of the value or a control operator.
fn short_command_line(rest: &[u8]) -> bool {
    let end = rest
        .iter()
        .position(|c| matches!(c, b';' | b'|' | b'&' | b'`' | b'#' | b'\n' | b')' | b'>'))
        .unwrap_or(rest.len());
    let args = &rest[..end];
    let mut words = 0;
    for w in args.split(|c| *c == b' ').filter(|w| !w.is_empty()) {
        words += 1;
        let plain = w.iter().all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, b'-' | b'/' | b'.' | b':' | b'\\' | b'\'' | b'"')
        });
        if words > 3 || !plain {
            return false;
        }
    }
    words > 0
}

/// `&name;` is an HTML character reference, not a shell operator.
fn is_entity_ref(b: &[u8]) -> bool {
    let k = b[1..]
        .iter()
        .take(10)
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'#')
        .count();
    k >= 2 && b.get(1 + k) == Some(&b';')
}

/// `&set;`, `&ver;`: an "entity" whose name is a command is a command.
fn is_command_entity(b: &[u8]) -> bool {
    let k = b[1..]
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric())
        .count();
    STRONG_SET.contains_lower(&b[1..1 + k])
}

/// `/???/??t /???/p??s??`: path segments made only of glob wildcards resolve to programs.
fn glob_path(b: &[u8]) -> Option<&'static str> {
    let n = b.len();
    let mut i = 0;
    while let Some(p) = super::find_byte(b'/', &b[i..]) {
        let s = i + p;
        let mut j = s + 1;
        while j < n && matches!(b[j], b'?' | b'*') {
            j += 1;
        }
        if j - s >= 3 && j < n && b[j] == b'/' {
            return Some("cmdi.glob_path");
        }
        i = s + 1;
    }
    None
}

fn rest_has_closer(rest: &[u8], closers: &[u8]) -> bool {
    rest.iter().take(120).any(|c| closers.contains(c))
}

/// Whether the text before the operator itself starts with a known command word (the value
/// is a shell snippet written as text, e.g. `ls -la | grep foo`).
fn first_word_is_command(before: &[u8]) -> bool {
    let lead = before
        .iter()
        .take_while(|c| c.is_ascii_whitespace() || **c == b'$')
        .count();
    let trimmed = &before[lead..];
    let wl = trimmed
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'-' || **c == b'_')
        .count();
    if wl == 0 || wl >= trimmed.len() || trimmed[wl] != b' ' {
        return false;
    }
    STRONG_SET.contains_lower(&trimmed[..wl])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_command_lists_agree_with_the_lists() {
        for (set, list) in [
            (&STRONG_SET, STRONG),
            (&WINDOWS_SET, WINDOWS),
            (&WEAK_SET, WEAK),
            (&PIPELINE_BENIGN_SET, PIPELINE_BENIGN),
        ] {
            assert!(
                list.windows(2).all(|w| w[0] < w[1]),
                "sorted, no duplicates"
            );
            for w in list {
                assert!(set.contains(w.as_bytes()), "{w}");
                assert!(set.contains_lower(w.to_ascii_uppercase().as_bytes()), "{w}");
                let mut nul = w.as_bytes().to_vec();
                nul.push(0);
                assert!(!set.contains(&nul), "{w}");
            }
            for s in super::super::test_samples(5000) {
                for w in s.split(' ') {
                    assert_eq!(
                        set.contains(w.as_bytes()),
                        list.binary_search(&w).is_ok(),
                        "{w:?}"
                    );
                }
            }
        }
    }
}
