//! Load: thousands of concurrent requests over loopback (served, denied, cancelled) give
//! exactly that many records with the lossless policy, none torn, the chain intact across
//! rotated files; the drop policy counts what it drops.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::routing::get;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use tokio::io::AsyncWriteExt;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_shield::audit::verify::{VerifyOptions, verify_files};
use tower_shield::audit::{AuditLayer, FileSink, Overflow, rotated_files};
use tower_shield::{Denial, Renderer};

const KEY: &[u8] = b"load-test-chain-key-0123456789";

async fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_mixed_requests_give_exactly_one_record_each() {
    const SERVED: usize = 1500;
    const DENIED: usize = 900;
    const CANCELLED: usize = 200;
    const TOTAL: usize = SERVED + DENIED + CANCELLED;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let audit = AuditLayer::builder()
        .file(
            FileSink::builder(&path)
                .max_bytes(128 * 1024)
                .build()
                .unwrap(),
        )
        .chain_key(KEY.to_vec())
        .capacity(64) // small: the lossless policy must apply back-pressure, not drop
        .overflow(Overflow::Block)
        .build()
        .unwrap();

    let hanging = Arc::new(AtomicUsize::new(0));
    let h = hanging.clone();
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/deny",
            get(|req: Request| async move {
                let d = Denial::new(StatusCode::FORBIDDEN, "test", "forbidden_by_test");
                Renderer::default().respond::<_, Body>(d, &req)
            }),
        )
        .route(
            "/hang",
            get(move || {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                    "never"
                }
            }),
        )
        .layer(audit.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });

    // Cancelled: raw connections that send a request, wait until the handler runs, and
    // go away.
    let mut sockets = Vec::new();
    for i in 0..CANCELLED {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET /hang HTTP/1.1\r\nhost: x\r\nx-request-id: cancel-{i}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        sockets.push(s);
    }
    wait_for(
        || hanging.load(Ordering::SeqCst) == CANCELLED,
        "hanging handlers",
    )
    .await;

    // Served and denied: concurrent requests from a pooled client.
    let client = reqwest::Client::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(128));
    let mut tasks = Vec::new();
    for i in 0..SERVED + DENIED {
        let (route, id) = if i < SERVED {
            ("ok", format!("ok-{i}"))
        } else {
            ("deny", format!("deny-{i}"))
        };
        let client = client.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            let res = client
                .get(format!("http://{addr}/{route}"))
                .header("x-request-id", &id)
                .send()
                .await
                .unwrap();
            assert_eq!(res.headers()["x-request-id"], id.as_str());
            res.status().as_u16()
        }));
    }
    drop(sockets);
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for t in tasks {
        *statuses.entry(t.await.unwrap()).or_default() += 1;
    }
    assert_eq!(statuses[&200], SERVED);
    assert_eq!(statuses[&403], DENIED);

    wait_for(|| audit.stats().enqueued as usize == TOTAL, "all records").await;
    let a = audit.clone();
    assert!(
        tokio::task::spawn_blocking(move || a.flush(Duration::from_secs(30)))
            .await
            .unwrap()
    );
    let stats = audit.stats();
    assert_eq!(
        (stats.written as usize, stats.dropped, stats.sink_errors),
        (TOTAL, 0, 0)
    );

    let files = rotated_files(&path).unwrap();
    assert!(files.len() > 3, "rotation happened under load: {files:?}");
    let v = verify_files(&files, KEY, VerifyOptions::default()).unwrap();
    assert_eq!(v.records as usize, TOTAL);

    let mut outcomes: HashMap<String, usize> = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    for f in &files {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            let rec: serde_json::Value =
                serde_json::from_str(line).expect("every line is one JSON object");
            let id = rec["request_id"].as_str().unwrap().to_owned();
            let outcome = rec["outcome"].as_str().unwrap();
            let expected = match id.split('-').next().unwrap() {
                "ok" => "served",
                "deny" => "denied",
                "cancel" => "cancelled",
                other => panic!("unexpected id {other}"),
            };
            assert_eq!(outcome, expected, "{line}");
            if outcome == "denied" {
                assert_eq!(
                    (rec["layer"].as_str(), rec["reason"].as_str()),
                    (Some("test"), Some("forbidden_by_test"))
                );
                assert_eq!(rec["status"], 403);
            }
            if outcome == "served" {
                assert_eq!(rec["status"], 200);
                assert_eq!(rec["bytes_out"], 2);
                assert_eq!(rec["client_ip"], "127.0.0.1");
            }
            assert!(ids.insert(id), "one record per request");
            *outcomes.entry(outcome.to_owned()).or_default() += 1;
        }
    }
    assert_eq!(outcomes["served"], SERVED);
    assert_eq!(outcomes["denied"], DENIED);
    assert_eq!(outcomes["cancelled"], CANCELLED);
}

#[tokio::test]
async fn drop_policy_never_waits_and_counts_every_dropped_record() {
    const N: usize = 3000;
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(Some(gate_rx));
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink_lines = lines.clone();
    let audit = AuditLayer::builder()
        .callback("test", move |_rec, line| {
            // The sink is stuck until the test has sent every request.
            if let Some(rx) = gate.lock().unwrap().take() {
                let _ = rx.recv();
            }
            sink_lines.lock().unwrap().push(line.to_owned());
            Ok(())
        })
        .capacity(32)
        .overflow(Overflow::Drop)
        .build()
        .unwrap();
    let mut svc =
        ServiceBuilder::new()
            .layer(audit.clone())
            .service_fn(|_r: http::Request<()>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"x"))))
            });
    for i in 0..N {
        let req = http::Request::get(format!("/r/{i}")).body(()).unwrap();
        svc.ready().await.unwrap().call(req).await.unwrap();
    }
    gate_tx.send(()).unwrap();
    assert!(audit.flush(Duration::from_secs(30)));
    let stats = audit.stats();
    assert!(stats.dropped > 0, "the queue overflowed");
    let lines = lines.lock().unwrap();
    let mut requests = 0u64;
    let mut reported = 0u64;
    for l in lines.iter() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        match v["kind"].as_str().unwrap() {
            "request" => requests += 1,
            "dropped" => reported += v["count"].as_u64().unwrap(),
            k => panic!("unexpected kind {k}"),
        }
    }
    assert_eq!(
        reported, stats.dropped,
        "the dropped records say how many were lost"
    );
    assert_eq!(
        requests + reported,
        N as u64,
        "every request is written or counted"
    );
}
