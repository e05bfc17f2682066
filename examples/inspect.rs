//! Command-line inspector used to measure detection: one input per line on stdin, one JSON
//! object per line on stdout (`{"blocked": true, "kind": "sqli", "rule": "sqli.tautology"}`
//! or `{"blocked": false}`), using the default detector set.

use std::io::{self, BufRead, BufWriter, Write};

use tower_shield::sanitize::detect::Detectors;

fn main() -> io::Result<()> {
    let detectors = Detectors::default();
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let value = String::from_utf8_lossy(&line);
        match detectors.inspect(&value) {
            Some(f) => writeln!(
                out,
                "{{\"blocked\": true, \"kind\": \"{}\", \"rule\": \"{}\"}}",
                f.kind.as_str(),
                f.rule
            )?,
            None => writeln!(out, "{{\"blocked\": false}}")?,
        }
    }
    out.flush()
}
