//! Log injection and redaction over a bare hyper 1 server: hostile header, path and query
//! values never end a record early or forge one, and no secret from a request reaches the
//! log.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceBuilder;
use tower_shield::audit::{AuditLayer, FileSink};

/// Serves `audit` around a counting hello service with bare hyper, inserting the peer
/// address into the request extensions.
async fn serve(audit: AuditLayer, calls: Arc<AtomicUsize>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let calls = calls.clone();
            let svc = ServiceBuilder::new()
                .map_request(move |mut r: Request<Incoming>| {
                    r.extensions_mut().insert(peer);
                    r
                })
                .layer(audit.clone())
                .service_fn(move |_r: Request<Incoming>| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async {
                        let mut res = Response::new(Full::new(Bytes::from_static(b"hello")));
                        res.headers_mut()
                            .insert("set-cookie", "sid=SECRET-SET-COOKIE".parse().unwrap());
                        Ok::<_, Infallible>(res)
                    }
                });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });
    addr
}

/// Sends raw request bytes on a fresh connection and returns the status code.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}

fn audit_to(path: &std::path::Path) -> AuditLayer {
    AuditLayer::builder()
        .file(FileSink::builder(path).build().unwrap())
        .log_header(HeaderName::from_static("x-test-id"))
        .log_header(HeaderName::from_static("referer"))
        .log_header(HeaderName::from_static("authorization"))
        .log_header(HeaderName::from_static("proxy-authorization"))
        .log_header(HeaderName::from_static("cookie"))
        .log_header(HeaderName::from_static("x-api-key"))
        .log_header(HeaderName::from_static("x-partner-key"))
        .secret_header(HeaderName::from_static("x-partner-key"))
        .field_caps(256, 512)
        .chain_key(b"injection-test-key-0123456789".to_vec())
        .build()
        .unwrap()
}

#[tokio::test]
async fn hostile_values_never_end_a_record_or_forge_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let audit = audit_to(&path);
    let calls = Arc::new(AtomicUsize::new(0));
    let addr = serve(audit.clone(), calls.clone()).await;

    let forged = br#"{"ts":"2026-01-01T00:00:00Z","kind":"request","outcome":"served","request_id":"forged"}"#;
    let mut hostile_headers: Vec<Vec<u8>> = vec![
        b"\x1b[31mRED\x1b[0m \x1b]0;title\x07".to_vec(),
        b"\"},{\"kind\":\"request\",\"request_id\":\"forged\"".to_vec(),
        b"back\\slash\\\" quote\"".to_vec(),
        b"\xe2\x80\xa8line-sep\xe2\x80\xa9para-sep\xc2\x85nel".to_vec(),
        b"\xff\xfe invalid utf8 \xc3\x28 \xed\xa0\x80".to_vec(),
        b"\xe2\x80\xae reversed \xe2\x81\xa6".to_vec(),
        [b"x".repeat(5000), b"\xe2\x80\xa8".to_vec()].concat(),
        forged.to_vec(),
        b"\x7f\x01\x02\x1f tab\there".to_vec(),
    ];
    hostile_headers.push(b"%0d%0a{\"kind\":\"request\"}".to_vec());
    let hostile_targets = [
        "/a%0d%0a%7b%22kind%22%3a%22request%22%7d",
        "/x?q=%1b%5b2J%0a%e2%80%a8&r=\"}{\"",
        "/%E2%80%A8/%ff%fe/%00",
        "/search?q=<script>alert(1)</script>&n=1",
        "/p?x=\\\"},{\\\"forged\\\":1",
        &format!("/long/{}", "a".repeat(6000)),
    ];

    let mut sent = 0;
    let mut answered_by_service = 0;
    for (i, h) in hostile_headers.iter().enumerate() {
        let mut req = format!("GET /h/{i} HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-test-id: h{i}\r\nx-request-id: ").into_bytes();
        req.extend_from_slice(h);
        req.extend_from_slice(b"\r\nuser-agent: ");
        req.extend_from_slice(h);
        req.extend_from_slice(b"\r\nreferer: ");
        req.extend_from_slice(h);
        req.extend_from_slice(b"\r\n\r\n");
        sent += 1;
        if raw(addr, &req).await == Some(200) {
            answered_by_service += 1;
        }
    }
    for (i, t) in hostile_targets.iter().enumerate() {
        let req =
            format!("GET {t} HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-test-id: t{i}\r\n\r\n");
        sent += 1;
        if raw(addr, req.as_bytes()).await == Some(200) {
            answered_by_service += 1;
        }
    }
    // hyper itself refuses some malformed requests (control bytes in a header, `"` or `<`
    // in a target: 400) before any service runs; the rest reach the service.
    assert!(answered_by_service >= 10, "{answered_by_service}/{sent}");
    let n = calls.load(Ordering::SeqCst);
    assert_eq!(n, answered_by_service);

    let a = audit.clone();
    assert!(
        tokio::task::spawn_blocking(move || a.flush(Duration::from_secs(10)))
            .await
            .unwrap()
    );
    let bytes = std::fs::read(&path).unwrap();
    let text = String::from_utf8(bytes).expect("the log is valid UTF-8");
    for bad in [
        '\u{1b}', '\r', '\u{2028}', '\u{2029}', '\u{85}', '\u{202e}', '\u{7f}', '\0',
    ] {
        assert!(!text.contains(bad), "raw {bad:?} in the log");
    }
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), n, "one line per request, no forged lines");
    let mut test_ids = Vec::new();
    let mut long_paths = 0;
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).expect("each line is exactly one JSON object");
        assert_eq!(v["kind"], "request");
        assert_eq!(v["outcome"], "served");
        let rid = v["request_id"].as_str().unwrap();
        assert!(
            rid.len() == 32 && rid.bytes().all(|b| b.is_ascii_hexdigit()),
            "hostile ids are replaced: {rid}"
        );
        let path = v["path"].as_str().unwrap();
        assert!(path.len() <= 512 + "...[truncated]".len());
        if path.starts_with("/long/") {
            long_paths += 1;
            // the path has its own cap (512), larger than the field cap (256)
            assert_eq!(path.len(), 512 + "...[truncated]".len(), "{path}");
            assert!(path.ends_with("...[truncated]"));
        }
        test_ids.push(v["headers"]["x-test-id"].as_str().unwrap().to_owned());
    }
    assert!(long_paths > 0, "the long path was recorded");
    test_ids.sort();
    test_ids.dedup();
    assert_eq!(test_ids.len(), n);
    assert!(text.contains("...[truncated]"));
    // What a hostile header said is still there, escaped, for the investigator.
    let ua: Vec<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v["user_agent"].as_str().map(str::to_owned))
        .collect();
    // (hyper refuses raw ESC and other controls in header values with 400; the encoder's
    // unit tests cover them.)
    assert!(ua.iter().any(|u| u.contains("\u{2028}line-sep")));
    assert!(ua.iter().any(|u| u.contains("\u{fffd}")));
}

#[tokio::test]
async fn no_secret_from_the_request_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let audit = audit_to(&path);
    let addr = serve(audit.clone(), Arc::new(AtomicUsize::new(0))).await;

    let req = "GET /pay/4111111111111111?access_token=SECRET-Q1&password=SECRET-Q2&API_KEY=SECRET-Q3&client_secret=SECRET-Q4&card=5555%205555%205555%204444&page=2 HTTP/1.1\r\n\
        host: x\r\nconnection: close\r\nx-test-id: secrets\r\n\
        authorization: Bearer SECRET-H1\r\n\
        proxy-authorization: Basic SECRET-H2\r\n\
        cookie: session=SECRET-H3; theme=dark\r\n\
        x-api-key: SECRET-H4\r\n\
        x-partner-key: SECRET-H5\r\n\
        referer: https://shop.example/cb?token=SECRET-H6&ok=1 card 3782-822463-10005\r\n\
        user-agent: app/1.0 (apikey=SECRET-U1; Bearer SECRET-U2) 6011 1111 1111 1117\r\n\r\n";
    assert_eq!(raw(addr, req.as_bytes()).await, Some(200));
    let a = audit.clone();
    assert!(
        tokio::task::spawn_blocking(move || a.flush(Duration::from_secs(10)))
            .await
            .unwrap()
    );
    let text = std::fs::read_to_string(&path).unwrap();
    for secret in ["SECRET", "4111111111111111", "5555", "3782", "6011", "sid="] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(
        v["path"],
        "/pay/[CARD]?access_token=[REDACTED]&password=[REDACTED]&API_KEY=[REDACTED]&client_secret=[REDACTED]&card=[CARD]&page=2"
    );
    for h in [
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-api-key",
        "x-partner-key",
    ] {
        assert_eq!(v["headers"][h], "[REDACTED]", "{h}");
    }
    assert_eq!(
        v["headers"]["referer"],
        "https://shop.example/cb?token=[REDACTED]&ok=1 card [CARD]"
    );
    assert_eq!(
        v["user_agent"],
        "app/1.0 (apikey=[REDACTED]; Bearer [REDACTED]) [CARD]"
    );
}
