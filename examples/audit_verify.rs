//! Verifies hash-chained audit logs written by `tower_shield::audit`.
//!
//! ```text
//! audit_verify [--key KEY | --key-env VAR] [--partial] FILE...
//! ```
//! Files are checked in the order given (oldest first: `audit.jsonl.1 audit.jsonl.2
//! audit.jsonl`); a single directory-less path `audit.jsonl` with `--rotated` expands to the
//! whole rotated set. The key comes from `--key`, else the environment variable named by
//! `--key-env` (default `SHIELD_AUDIT_KEY`). Exit codes: 0 intact, 1 tampered, 2 usage or
//! I/O error.

use std::path::PathBuf;
use std::process::ExitCode;

use tower_shield::audit::rotated_files;
use tower_shield::audit::verify::{VerifyFailure, VerifyOptions, verify_files};

fn usage() -> ExitCode {
    eprintln!(
        "usage: audit_verify [--key KEY | --key-env VAR] [--partial] [--rotated] FILE...\n\
         key default: environment variable SHIELD_AUDIT_KEY"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut key: Option<String> = None;
    let mut key_env = "SHIELD_AUDIT_KEY".to_string();
    let mut opts = VerifyOptions::default();
    let mut rotated = false;
    let mut files: Vec<PathBuf> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--key" => match args.next() {
                Some(k) => key = Some(k),
                None => return usage(),
            },
            "--key-env" => match args.next() {
                Some(v) => key_env = v,
                None => return usage(),
            },
            "--partial" => opts.require_genesis = false,
            "--rotated" => rotated = true,
            "-h" | "--help" => return usage(),
            f if f.starts_with("--") => return usage(),
            f => files.push(PathBuf::from(f)),
        }
    }
    if files.is_empty() {
        return usage();
    }
    let key = match key.or_else(|| std::env::var(&key_env).ok()) {
        Some(k) if !k.is_empty() => k,
        _ => {
            eprintln!("audit_verify: no key (use --key or set {key_env})");
            return ExitCode::from(2);
        }
    };
    if rotated {
        let mut all = Vec::new();
        for f in &files {
            match rotated_files(f) {
                Ok(v) => all.extend(v),
                Err(e) => {
                    eprintln!("audit_verify: {}: {e}", f.display());
                    return ExitCode::from(2);
                }
            }
        }
        files = all;
    }
    match verify_files(&files, key.as_bytes(), opts) {
        Ok(v) => {
            println!(
                "OK: {} records in {} file(s){}; last seq {}, last mac {}",
                v.records,
                files.len(),
                v.anchored_at
                    .map(|s| format!(" (anchored at seq {s}: earlier records not checked)"))
                    .unwrap_or_default(),
                v.last_seq
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into()),
                v.last_mac.as_deref().unwrap_or("-"),
            );
            ExitCode::SUCCESS
        }
        Err(VerifyFailure::Tampered(e)) => {
            println!("TAMPERED: {e}");
            ExitCode::from(1)
        }
        Err(e @ VerifyFailure::Io { .. }) => {
            eprintln!("audit_verify: {e}");
            ExitCode::from(2)
        }
    }
}
