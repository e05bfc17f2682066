//! Hash chain: an intact log verifies; each kind of tampering is detected and located, by
//! the library and by the `audit_verify` example binary.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_shield::audit::verify::{Tampering, VerifyFailure, VerifyOptions, verify_files};
use tower_shield::audit::{AuditLayer, FileSink, rotated_files};

const KEY: &str = "test-chain-key-0123456789abcdef";

/// Writes `n` chained records through the real layer and writer into `path` (rotating at
/// `max_bytes` when given).
async fn write_log(path: &Path, n: usize, max_bytes: Option<u64>) {
    let mut fb = FileSink::builder(path);
    if let Some(m) = max_bytes {
        fb = fb.max_bytes(m);
    }
    let audit = AuditLayer::builder()
        .file(fb.build().unwrap())
        .chain_key(KEY.as_bytes().to_vec())
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(audit.clone())
        .service_fn(|_r: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
    for i in 0..n {
        let req = Request::get(format!("/items/{i}"))
            .header("x-request-id", format!("req-{i}"))
            .body(())
            .unwrap();
        svc.ready().await.unwrap().call(req).await.unwrap();
    }
    assert!(audit.flush(Duration::from_secs(10)));
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn check(files: &[PathBuf]) -> Result<u64, (PathBuf, usize, Tampering)> {
    match verify_files(files, KEY.as_bytes(), VerifyOptions::default()) {
        Ok(v) => Ok(v.records),
        Err(VerifyFailure::Tampered(e)) => Err((e.file, e.line, e.kind)),
        Err(e) => panic!("{e}"),
    }
}

fn verifier() -> PathBuf {
    // target/debug/deps/<test> -> target/debug/examples/audit_verify
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("audit_verify");
    if !bin.exists() {
        // `cargo test --test audit_chain` does not build examples; build it now.
        let ok = Command::new(env!("CARGO"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "build",
                "--quiet",
                "--example",
                "audit_verify",
                "--features",
                "audit",
            ])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    bin
}

#[tokio::test]
async fn intact_log_verifies_and_each_tampering_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 40, None).await;
    let orig = lines(&path);
    assert_eq!(orig.len(), 40);
    assert_eq!(check(std::slice::from_ref(&path)), Ok(40));

    let t = dir.path().join("t.jsonl");
    let run = |l: &[String]| {
        write_lines(&t, l);
        check(std::slice::from_ref(&t)).map_err(|(_, line, kind)| (line, kind))
    };

    // Edited: one field of record seq 9 (line 10).
    let mut l = orig.clone();
    l[9] = l[9].replace("\"status\":200", "\"status\":201");
    assert_ne!(l[9], orig[9]);
    assert_eq!(run(&l), Err((10, Tampering::Edited)));

    // Edited: a character inside a string.
    let mut l = orig.clone();
    l[20] = l[20].replace("req-20", "req-2O");
    assert_eq!(run(&l), Err((21, Tampering::Edited)));

    // Deleted: line 10 removed; the new line 10 carries seq 10 where 9 was expected.
    let mut l = orig.clone();
    l.remove(9);
    assert_eq!(run(&l), Err((10, Tampering::Deleted)));

    // Deleted: the first record.
    let mut l = orig.clone();
    l.remove(0);
    assert_eq!(run(&l), Err((1, Tampering::Deleted)));

    // Inserted: a forged record with the expected seq (the attacker has no key).
    let mut l = orig.clone();
    let forged = l[9].replace("req-9", "req-evil");
    l.insert(9, forged);
    assert_eq!(run(&l), Err((10, Tampering::Inserted)));

    // Inserted: a line that is not a record at all.
    let mut l = orig.clone();
    l.insert(5, "{\"kind\":\"request\",\"outcome\":\"served\"}".into());
    assert_eq!(run(&l), Err((6, Tampering::Inserted)));

    // Inserted: a replayed copy of an earlier record.
    let mut l = orig.clone();
    let copy = l[4].clone();
    l.insert(20, copy);
    assert_eq!(run(&l), Err((21, Tampering::Inserted)));

    // Reordered: lines 10 and 11 swapped.
    let mut l = orig.clone();
    l.swap(9, 10);
    assert_eq!(run(&l), Err((10, Tampering::Reordered)));

    // Reordered: a record moved further down.
    let mut l = orig.clone();
    let moved = l.remove(9);
    l.insert(15, moved);
    assert_eq!(run(&l), Err((10, Tampering::Reordered)));

    // The wrong key: the very first record fails.
    assert!(matches!(
        verify_files(std::slice::from_ref(&path), b"another-key-0123456789", VerifyOptions::default()),
        Err(VerifyFailure::Tampered(e)) if e.line == 1 && e.kind == Tampering::Edited
    ));

    // The example binary: exit 0 when intact, 1 with file and line when tampered.
    let out = Command::new(verifier())
        .arg("--key")
        .arg(KEY)
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK: 40 records"));
    let mut l = orig.clone();
    l.swap(9, 10);
    write_lines(&t, &l);
    let out = Command::new(verifier())
        .env("MY_AUDIT_KEY", KEY)
        .args(["--key-env", "MY_AUDIT_KEY"])
        .arg(&t)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{}:10: reordered", t.display())),
        "{text}"
    );
    let out = Command::new(verifier())
        .arg(&t)
        .env_remove("SHIELD_AUDIT_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn chain_runs_across_rotated_files_and_a_missing_file_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 200, Some(4096)).await;
    let files = rotated_files(&path).unwrap();
    assert!(files.len() >= 4, "{files:?}");
    assert_eq!(files.last().unwrap(), &path);
    assert_eq!(check(&files), Ok(200));

    // The binary expands the rotated set itself.
    let out = Command::new(verifier())
        .env("SHIELD_AUDIT_KEY", KEY)
        .arg("--rotated")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A whole rotated file removed: the break is located at line 1 of the next file.
    let without: Vec<PathBuf> = files
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(
        check(&without),
        Err((files[2].clone(), 1, Tampering::Deleted))
    );

    // Verifying a later file alone needs --partial (anchored at its first record).
    assert!(check(&files[2..]).is_err());
    let v = verify_files(
        &files[2..],
        KEY.as_bytes(),
        VerifyOptions {
            require_genesis: false,
        },
    )
    .unwrap();
    assert!(v.anchored_at.is_some());

    // A restarted writer continues the chain from the existing file.
    write_log(&path, 10, Some(4096)).await;
    let files = rotated_files(&path).unwrap();
    assert_eq!(check(&files), Ok(210));
}
