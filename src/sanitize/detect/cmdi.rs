//! OS command injection: a small shell lexer. A command is injected when a shell control
//! operator (`;`, `|`, `||`, `&`, `&&`, newline, `` ` ``, `$(`) or a shell substitution
//! (`${…}`, `$(…)`, `` `…` ``) is followed by a word that, after shell quote removal
//! (`c'a't`, `c\at`, `${IFS}`), names a command, with arguments shaped like a command line.
//! Words that are also English ("set", "who", "time") need shell-shaped surroundings.

/// Commands that are never English words; enough on their own after a control operator.
const STRONG: &[&str] = &[
    "whoami", "uname", "ifconfig", "ipconfig", "netstat", "nslookup", "wget", "curl", "bash",
    "sh", "zsh", "ksh", "csh", "tcsh", "dash", "powershell", "pwsh", "cmd", "nc", "ncat",
    "netcat", "busybox", "telnet", "telnetd", "chmod", "chown", "base64", "passwd",
    "systeminfo", "tasklist", "taskkill", "id", "ls", "cat", "env", "printenv", "ver",
    "hostname", "ping", "sleep", "nohup", "xterm", "python", "python2", "python3", "perl",
    "ruby", "php", "lua", "node", "socat", "tftp", "certutil", "bitsadmin", "mshta",
    "rundll32", "regsvr32", "wscript", "cscript", "reg", "sc", "schtasks", "wmic", "net",
    "dig", "host", "traceroute", "tracert", "pathping", "arp", "route", "crontab", "useradd",
    "usermod", "killall", "pkill", "rm", "mkfifo", "mknod", "uptime", "lsb_release", "w",
    "iex", "invoke-expression", "invoke-webrequest", "start-process", "timeout", "expr",
    "sudo", "su", "ssh", "scp", "rsync", "ftp", "xxd", "od", "hexdump", "awk", "gawk",
    "nmap", "openssl", "vi", "vim", "less", "whereis", "which", "locate", "ps", "kill",
    "getent", "groups", "last", "lastlog", "dmesg", "mount", "df", "du", "free", "lsof",
    "tail", "head", "more", "type", "dir", "set", "who", "echo", "touch", "find", "grep",
    "cp", "mv", "sed", "tee", "xargs", "date", "time", "eval", "exec", "source", "export",
    "unset", "alias", "print", "nslookup.exe", "cmd.exe", "powershell.exe", "start",
    "copy", "del", "erase", "move", "ren", "rename", "attrib", "icacls", "cacls", "tree",
    "whoami.exe", "query", "quser", "qwinsta", "runas", "shutdown", "reboot", "halt",
    "poweroff", "init", "systemctl", "service", "apt", "apt-get", "yum", "dnf", "pip",
    "npm", "gcc", "make", "git", "docker", "kubectl", "tar", "zip", "unzip", "gzip",
    "gunzip", "bzip2", "file", "stat", "readlink", "realpath", "basename", "dirname",
    "pwd", "cd", "chdir", "md", "mkdir", "rmdir", "ln", "sort", "uniq", "wc", "cut", "tr",
    "rev", "strings", "nl", "fold", "split", "diff", "cmp", "true", "false", "yes", "seq",
    "test", "read", "let", "declare", "local", "jobs", "fg", "bg", "wait", "trap",
    "logout", "exit", "history", "fc", "umask", "ulimit", "getfacl", "setfacl", "chattr",
    "lsattr", "printf", "id.exe", "bash.exe", "sh.exe", "nc.exe", "ping.exe", "ver.exe",
];

/// Windows commands (case-insensitive shell).
const WINDOWS: &[&str] = &[
    "ver", "dir", "set", "type", "net", "ipconfig", "systeminfo", "tasklist", "whoami",
    "ping", "echo", "cmd", "powershell", "copy", "del", "timeout", "hostname", "netstat",
    "nslookup", "certutil", "wmic", "reg", "sc", "iex", "start", "move", "ren", "attrib",
    "cmd.exe", "powershell.exe", "taskkill", "query", "whoami.exe",
];

/// Commands that are also common English words (or bench/pipeline commands seen in
/// legitimate snippets): they need an argument shaped like a command line (a flag, a path,
/// a number, a redirection) or nothing at all after them.
const WEAK: &[&str] = &[
    "set", "who", "type", "more", "find", "sort", "time", "date", "head", "tail", "echo",
    "sleep", "kill", "touch", "dir", "ver", "print", "start", "copy", "move", "test",
    "read", "let", "wait", "exit", "history", "file", "free", "last", "less", "host",
    "which", "route", "query", "local", "split", "cut", "true", "false", "yes", "make",
    "git", "npm", "pip", "docker", "kubectl", "grep", "sed", "awk", "tee", "xargs", "w",
    "cd", "pwd", "ls", "cat", "id", "net", "reg", "sc", "init", "service", "source",
    "export", "alias", "declare", "trap", "jobs", "fg", "bg", "ren", "rename", "del",
    "erase", "md", "tree", "attrib", "uniq", "wc", "tr", "rev", "nl", "fold", "diff",
    "cmp", "seq", "stat", "strings", "mount", "df", "du", "ps", "su", "vi", "od", "cp",
    "mv", "rm", "ln", "halt", "reboot", "shutdown", "exec", "eval", "unset", "tar", "zip",
    "unzip", "gzip", "ping", "iex", "expr", "timeout", "node", "php", "python", "perl",
    "ruby", "lua", "sh", "cmd", "env",
];

/// Commands that appear in legitimate developer snippets after `|` or `&&`
/// (`git log | head`, `cd x && make`): never enough on their own.
const PIPELINE_BENIGN: &[&str] = &[
    "grep", "head", "make", "sort", "uniq", "wc", "less", "more", "tee", "xargs", "sed",
    "awk", "cut", "tr", "git", "npm", "pip", "docker", "kubectl", "cd", "jq", "tail",
];

fn candidate(s: &str) -> bool {
    s.bytes().any(|c| matches!(c, b';' | b'|' | b'&' | b'`' | b'$' | b'\n' | b'\r' | b'('))
}

pub(crate) fn detect(s: &str) -> Option<&'static str> {
    if !candidate(s) {
        return None;
    }
    let b = s.as_bytes();
    let n = b.len();
    // Shellshock: `() {` function definition prefix.
    if let Some(p) = memchr::memmem::find(b, b"() {") {
        let body = &b[p + 4..];
        let semi = body.iter().take(6).position(|c| *c == b';');
        if semi.is_some_and(|k| body[k + 1..].iter().take(3).any(|c| *c == b'}')) {
            return Some("cmdi.shellshock");
        }
    }
    if let Some(r) = glob_path(b) {
        return Some(r);
    }
    let mut budget = 64;
    let mut i = 0;
    while i < n {
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
            b'&' if is_entity_ref(&b[i..]) => {
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

/// Reads one shell word starting at `i` with quote removal; returns (word, end).
fn shell_word(b: &[u8], mut i: usize, out: &mut Vec<u8>) -> usize {
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
                match memchr::memchr(q, &b[i + 1..]) {
                    Some(p) if p < 24 && !b[i + 1..i + 1 + p].iter().any(|x| super::misc::is_space(*x)) => {
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
    if b[start] == b'$' && start + 1 < n && (b[start + 1] == b'0' || starts_with_ci(&b[start + 1..], b"shell") || starts_with_ci(&b[start + 1..], b"bash")) {
        return Some("cmdi.command_chain"); // $0 -c …
    }
    let mut word = Vec::new();
    let end = shell_word(b, start, &mut word);
    if word.is_empty() {
        return None;
    }
    // Absolute program path: /usr/bin/id, /bin/sh, c:\windows\system32\cmd.exe
    let base: &[u8] = match word.iter().rposition(|c| *c == b'/') {
        Some(p) if word[0] == b'/' => &word[p + 1..],
        _ => &word,
    };
    let path_prog = word[0] == b'/' && word.len() > 1 && (word.starts_with(b"/bin/") || word.starts_with(b"/usr/") || word.starts_with(b"/sbin/") || word.starts_with(b"/tmp/") || word.starts_with(b"/dev/"));
    let base = std::str::from_utf8(base).unwrap_or("");
    // Unix commands are lowercase; only Windows commands may be written in capitals.
    if b[start..end].iter().any(|c| c.is_ascii_uppercase()) && !WINDOWS.contains(&base) {
        return None;
    }
    let known = STRONG.contains(&base);
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
    let word_boundary = end >= n || !(b[end].is_ascii_alphanumeric() || b[end] == b'#');
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
        || matches!(next, Some(b';' | b'|' | b'&' | b'`' | b'#' | b'\n' | b'\r' | b')' | b'>' | b'<'))
        || (matches!(next, Some(b'\'' | b'"')) && rest.len() >= 1 && rest[1..].iter().all(|c| matches!(c, b';' | b'|' | b'&' | b')' | b'#' | b' ' | b'\'' | b'"')));
    let arg_shell = matches!(next, Some(b'-' | b'/' | b'\\' | b'$' | b'+'))
        || next.map(|c| c.is_ascii_digit()).unwrap_or(false)
        || (next == Some(b'.') && rest.get(1).map(|c| *c == b'/' || *c == b'.').unwrap_or(false))
        || rest.starts_with(b"${ifs}") || starts_with_ci(rest, b"$ifs")
        || (end < n && (starts_with_ci(&b[end..], b"${ifs}") || starts_with_ci(&b[end..], b"$ifs")))
        || (next.map(|c| c.is_ascii_alphabetic()).unwrap_or(false) && (rest.starts_with(b"c:") || rest.get(1) == Some(&b':')));
    let weak = WEAK.contains(&base);
    let benign_pipeline = PIPELINE_BENIGN.contains(&base);
    // What precedes the operator: a value that was "closed" by a quote/paren, or data.
    let before = &b[..op_at];
    let prefix_is_command = first_word_is_command(before);
    let sys_path_arg = rest.windows(5).take(80).any(|w| w == b"/etc/" || w == b"/var/" || w == b"/tmp/");
    if benign_pipeline && matches!(op, Op::Pipe | Op::And | Op::Or) && (prefix_is_command || !ends_command) && !sys_path_arg {
        return None;
    }
    if path_prog && (ends_command || arg_shell || next.map(|c| c.is_ascii_alphanumeric()).unwrap_or(false) || next == Some(b' ')) {
        return Some("cmdi.command_path");
    }
    let subst_closer = matches!(next, Some(b'`' | b')' | b'}'));
    if matches!(op, Op::Group) && next == Some(b',') && b[op_at] == b'{' {
        return Some("cmdi.brace_expansion");
    }
    if closed_subst && (!weak || ends_command || arg_shell || subst_closer) {
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
            if !weak && next.map(|c| c.is_ascii_alphabetic() || c == b'\'' || c == b'"').unwrap_or(false) {
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
    let words: Vec<&[u8]> = args.split(|c| *c == b' ').filter(|w| !w.is_empty()).collect();
    !words.is_empty()
        && words.len() <= 3
        && words.iter().all(|w| {
            w.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'/' | b'.' | b':' | b'\\' | b'\'' | b'"'))
        })
}

/// `&name;` is an HTML character reference, not a shell operator.
fn is_entity_ref(b: &[u8]) -> bool {
    let k = b[1..].iter().take(10).take_while(|c| c.is_ascii_alphanumeric() || **c == b'#').count();
    k >= 2 && b.get(1 + k) == Some(&b';')
}

/// `/???/??t /???/p??s??`: path segments made only of glob wildcards resolve to programs.
fn glob_path(b: &[u8]) -> Option<&'static str> {
    let n = b.len();
    let mut i = 0;
    while let Some(p) = memchr::memchr(b'/', &b[i..]) {
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
    let trimmed: Vec<u8> = before
        .iter()
        .copied()
        .skip_while(|c| c.is_ascii_whitespace() || *c == b'$')
        .collect();
    let wl = trimmed
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'-' || **c == b'_')
        .count();
    if wl == 0 || wl >= trimmed.len() || trimmed[wl] != b' ' {
        return false;
    }
    let w = trimmed[..wl].to_ascii_lowercase();
    let w = std::str::from_utf8(&w).unwrap_or("");
    STRONG.contains(&w)
}
