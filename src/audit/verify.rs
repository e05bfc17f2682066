//! Verification of hash-chained audit files.
//!
//! [`verify_files`] walks one or more files in chain order (a rotated log: see
//! [`rotated_files`](super::rotated_files)) and stops at the first record that breaks the
//! chain, saying which file and line, and what kind of tampering it looks like:
//!
//! - [`Tampering::Edited`]: the record is where it should be but its MAC does not match
//!   (a field was changed), or the line is not a chained record at all;
//! - [`Tampering::Inserted`]: a record that does not belong was added (the next line
//!   continues the chain as if it were not there), or a copy of an earlier record;
//! - [`Tampering::Deleted`]: records are missing before this line (its `seq` skips ahead);
//! - [`Tampering::Reordered`]: the expected record appears later (or earlier) in the file.
//!
//! What a chain cannot show: records removed from the **end** of the newest file (keep the
//! last `seq` and `mac`, which [`Verified`] reports, somewhere else to compare), and a log
//! rewritten entirely by someone holding the key.
//!
//! ```
//! use tower_shield::audit::verify::{verify_lines, Tampering, VerifyOptions};
//!
//! let lines = vec!["{\"kind\":\"request\"}".to_string()];
//! let err = verify_lines("mem", lines.iter().map(String::as_str), b"key", VerifyOptions::default())
//!     .unwrap_err();
//! assert_eq!((err.kind, err.line), (Tampering::Edited, 1));
//! ```

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use super::chain::{HmacSha256, compute, keyed, seq_of, split_line};

/// How far ahead to look for a displaced record when classifying a break.
const LOOKAHEAD: usize = 4096;

/// Verification options.
#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions {
    /// The first record must be the start of the chain (`seq` 0). When false, a log whose
    /// older files were archived elsewhere verifies from its first record on (that record
    /// is taken on trust as the anchor, and reported as such). Default: true.
    pub require_genesis: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            require_genesis: true,
        }
    }
}

/// The result of a successful verification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// Records verified.
    pub records: u64,
    /// `seq` of the record taken as anchor, when the log did not start at `seq` 0.
    pub anchored_at: Option<u64>,
    /// `seq` of the last record.
    pub last_seq: Option<u64>,
    /// MAC of the last record (hex): compare with an out-of-band copy to detect truncation.
    pub last_mac: Option<String>,
}

/// The kind of tampering found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tampering {
    /// A record was changed (or a line is not a chained record).
    Edited,
    /// Records are missing.
    Deleted,
    /// A record was added.
    Inserted,
    /// Records are out of order.
    Reordered,
}

impl Tampering {
    /// `edited`, `deleted`, `inserted`, `reordered`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Edited => "edited",
            Self::Deleted => "deleted",
            Self::Inserted => "inserted",
            Self::Reordered => "reordered",
        }
    }
}

/// Where and how the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    /// File (as given).
    pub file: PathBuf,
    /// 1-based line number in that file.
    pub line: usize,
    /// Kind of tampering.
    pub kind: Tampering,
    /// The `seq` the chain expected at this line.
    pub expected_seq: u64,
    /// The `seq` found, when the line has one.
    pub found_seq: Option<u64>,
    /// Explanation.
    pub detail: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {} record (expected seq {}{}): {}",
            self.file.display(),
            self.line,
            self.kind.as_str(),
            self.expected_seq,
            match self.found_seq {
                Some(s) => format!(", found seq {s}"),
                None => String::new(),
            },
            self.detail
        )
    }
}

impl std::error::Error for VerifyError {}

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyFailure {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Error.
        #[source]
        source: std::io::Error,
    },
    /// The chain is broken.
    #[error("{0}")]
    Tampered(VerifyError),
}

struct Parsed<'a> {
    canonical: &'a str,
    mac: [u8; 32],
    seq: u64,
}

fn parse(line: &str) -> Option<Parsed<'_>> {
    let (canonical, mac) = split_line(line)?;
    let seq = seq_of(canonical)?;
    // The whole line must be exactly one JSON object.
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if !v.is_object() || v.get("seq").and_then(|s| s.as_u64()) != Some(seq) {
        return None;
    }
    Some(Parsed {
        canonical,
        mac,
        seq,
    })
}

/// Verifies files in chain order (oldest first).
pub fn verify_files<P: AsRef<Path>>(
    paths: &[P],
    key: &[u8],
    opts: VerifyOptions,
) -> Result<Verified, VerifyFailure> {
    let mut texts = Vec::with_capacity(paths.len());
    for p in paths {
        let p = p.as_ref();
        let bytes = std::fs::read(p).map_err(|source| VerifyFailure::Io {
            path: p.to_path_buf(),
            source,
        })?;
        texts.push((
            p.to_path_buf(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    let entries: Vec<(usize, usize, &str)> = texts
        .iter()
        .enumerate()
        .flat_map(|(fi, (_, t))| t.lines().enumerate().map(move |(li, l)| (fi, li + 1, l)))
        .collect();
    verify_entries(&entries, &|fi| texts[fi].0.clone(), key, opts).map_err(VerifyFailure::Tampered)
}

/// Verifies lines from one source named `name` (for reports).
pub fn verify_lines<'a>(
    name: &str,
    lines: impl Iterator<Item = &'a str>,
    key: &[u8],
    opts: VerifyOptions,
) -> Result<Verified, VerifyError> {
    let entries: Vec<(usize, usize, &str)> =
        lines.enumerate().map(|(i, l)| (0, i + 1, l)).collect();
    verify_entries(&entries, &|_| PathBuf::from(name), key, opts)
}

fn verify_entries(
    entries: &[(usize, usize, &str)],
    file_name: &dyn Fn(usize) -> PathBuf,
    key: &[u8],
    opts: VerifyOptions,
) -> Result<Verified, VerifyError> {
    let key = keyed(key);
    let mut out = Verified::default();
    let mut expected = 0u64;
    let mut prev = [0u8; 32];
    let mut seen: HashSet<[u8; 32]> = HashSet::new();
    let ok_at = |key: &HmacSha256, prev: &[u8; 32], expected: u64, line: &str| {
        parse(line).is_some_and(|p| {
            p.seq == expected && compute(key, prev, p.canonical.as_bytes()) == p.mac
        })
    };
    for (i, &(fi, ln, line)) in entries.iter().enumerate() {
        let err = |kind, found: Option<u64>, detail: String| VerifyError {
            file: file_name(fi),
            line: ln,
            kind,
            expected_seq: expected,
            found_seq: found,
            detail,
        };
        let next_continues = entries
            .get(i + 1)
            .is_some_and(|(_, _, l)| ok_at(&key, &prev, expected, l));
        let Some(p) = parse(line) else {
            return Err(if next_continues {
                err(
                    Tampering::Inserted,
                    None,
                    "a line that is not a chained record was inserted".into(),
                )
            } else {
                err(
                    Tampering::Edited,
                    None,
                    "the line is not a valid chained record".into(),
                )
            });
        };
        if i == 0 && p.seq != 0 && !opts.require_genesis {
            out.anchored_at = Some(p.seq);
            prev = p.mac;
        } else if p.seq == expected {
            if compute(&key, &prev, p.canonical.as_bytes()) != p.mac {
                return Err(if next_continues {
                    err(
                        Tampering::Inserted,
                        Some(p.seq),
                        "a forged record was inserted; the next line continues the chain".into(),
                    )
                } else {
                    err(
                        Tampering::Edited,
                        Some(p.seq),
                        "the MAC does not match the record's contents".into(),
                    )
                });
            }
            prev = p.mac;
        } else if p.seq > expected {
            if i == 0 {
                return Err(err(
                    Tampering::Deleted,
                    Some(p.seq),
                    format!(
                        "the log starts at seq {} instead of 0: the first records are missing",
                        p.seq
                    ),
                ));
            }
            let found = entries
                .iter()
                .enumerate()
                .skip(i + 1)
                .take(LOOKAHEAD)
                .find(|(_, (_, _, l))| ok_at(&key, &prev, expected, l));
            return Err(match found {
                Some((j, (ffi, fln, _))) => {
                    let dup_follows = entries
                        .get(j + 1)
                        .and_then(|(_, _, l)| parse(l))
                        .is_some_and(|q| q.seq == p.seq && q.mac == p.mac);
                    if j == i + 1 && !dup_follows {
                        err(
                            Tampering::Reordered,
                            Some(p.seq),
                            format!(
                                "records are out of order: seq {expected} follows at {}:{fln}",
                                file_name(*ffi).display()
                            ),
                        )
                    } else if dup_follows {
                        err(
                            Tampering::Inserted,
                            Some(p.seq),
                            "a copy of a later record was inserted".into(),
                        )
                    } else {
                        err(
                            Tampering::Reordered,
                            Some(p.seq),
                            format!(
                                "seq {expected} was moved to {}:{fln}",
                                file_name(*ffi).display()
                            ),
                        )
                    }
                }
                None => err(
                    Tampering::Deleted,
                    Some(p.seq),
                    format!(
                        "{} record(s) missing before this line (seq {expected}..{})",
                        p.seq - expected,
                        p.seq - 1
                    ),
                ),
            });
        } else {
            return Err(if seen.contains(&p.mac) {
                err(
                    Tampering::Inserted,
                    Some(p.seq),
                    format!("a copy of record seq {} was inserted", p.seq),
                )
            } else {
                err(
                    Tampering::Reordered,
                    Some(p.seq),
                    format!(
                        "seq {} appears after seq {}",
                        p.seq,
                        expected.saturating_sub(1)
                    ),
                )
            });
        }
        seen.insert(p.mac);
        expected = p.seq + 1;
        out.records += 1;
        out.last_seq = Some(p.seq);
        out.last_mac = Some(hex::encode(p.mac));
    }
    Ok(out)
}
