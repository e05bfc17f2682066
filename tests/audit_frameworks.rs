//! The audit layer around axum, tonic (gRPC status recorded) and failing sinks, over real
//! loopback TCP.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use http::StatusCode;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower_shield::audit::{AuditLayer, FailurePolicy, FileSink};
use tower_shield::facts::{self, InputFinding};
use tower_shield::{CredentialKind, Denial, IpFilterLayer, MatchedRoute, Principal, RequestId};

async fn flush(audit: &AuditLayer) {
    let a = audit.clone();
    assert!(
        tokio::task::spawn_blocking(move || a.flush(Duration::from_secs(10)))
            .await
            .unwrap()
    );
}

fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn serve_axum(app: Router) -> SocketAddr {
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
    addr
}

/// An inner stand-in for the layers the audit layer observes: records a principal, the
/// matched route, a sanitizer finding and a shadow denial into the shared facts.
fn record_facts(req: Request) -> Request {
    let ext = req.extensions();
    facts::record_principal(
        ext,
        &Principal::new("client-7", CredentialKind::ApiKey).with_key_id("k_7Hq2"),
    );
    facts::record_route(
        ext,
        &MatchedRoute {
            pattern: "GET /products/{id}".into(),
            template: "/products/{id}".into(),
        },
    );
    facts::record_finding(
        ext,
        InputFinding {
            location: "query.q".into(),
            kind: "sqli",
            rule: "union-select",
            action: "monitor",
        },
    );
    facts::record_shadow_denial(
        ext,
        Denial::new(StatusCode::TOO_MANY_REQUESTS, "throttle", "rate_exceeded"),
    );
    req
}

#[tokio::test]
async fn axum_records_facts_from_inner_layers_errors_and_caught_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let audit = AuditLayer::builder()
        .file(FileSink::builder(&path).build().unwrap())
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/products/{id}",
            get(|req: Request| async move {
                // The request id is available to handlers.
                req.extensions().get::<RequestId>().unwrap().to_string()
            }),
        )
        .route(
            "/boom",
            get(|| async {
                if std::hint::black_box(true) {
                    panic!("handler bug");
                }
                "unreachable"
            }),
        )
        .route(
            "/fail",
            get(|| async { (StatusCode::BAD_GATEWAY, "upstream down") }),
        )
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(axum::middleware::map_request(|r: Request| async move {
            record_facts(r)
        }))
        .layer(audit.clone());
    let addr = serve_axum(app).await;
    let client = reqwest::Client::new();

    let res = client
        .get(format!("http://{addr}/products/42?q=1"))
        .header("user-agent", "test-agent/1.0")
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let rid = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(rid.len(), 32, "generated id");
    assert_eq!(
        res.text().await.unwrap(),
        rid,
        "the handler saw the same id"
    );
    assert_eq!(
        client
            .get(format!("http://{addr}/boom"))
            .send()
            .await
            .unwrap()
            .status(),
        500
    );
    assert_eq!(
        client
            .get(format!("http://{addr}/fail"))
            .send()
            .await
            .unwrap()
            .status(),
        502
    );
    flush(&audit).await;

    let recs = records(&path);
    assert_eq!(recs.len(), 3);
    let r = &recs[0];
    assert_eq!(r["request_id"], rid.as_str());
    assert_eq!(r["client_ip"], "127.0.0.1");
    assert_eq!(
        r["principal"],
        serde_json::json!({"id": "client-7", "kind": "api_key", "key_id": "k_7Hq2"})
    );
    assert_eq!(
        (r["method"].as_str(), r["route"].as_str()),
        (Some("GET"), Some("/products/{id}"))
    );
    assert_eq!(
        (
            r["path"].as_str(),
            r["status"].as_u64(),
            r["outcome"].as_str()
        ),
        (Some("/products/42?q=1"), Some(200), Some("served"))
    );
    assert_eq!(
        (r["bytes_in"].as_u64(), r["bytes_out"].as_u64()),
        (Some(0), Some(32))
    );
    assert_eq!(r["user_agent"], "test-agent/1.0");
    assert_eq!(
        r["findings"],
        serde_json::json!([{"location": "query.q", "kind": "sqli", "rule": "union-select", "action": "monitor"}])
    );
    assert_eq!(
        r["shadow"],
        serde_json::json!([{"layer": "throttle", "reason": "rate_exceeded", "status": 429}])
    );
    assert!(r["latency_us"].is_u64());
    assert!(r["ts"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        (
            recs[1]["status"].as_u64(),
            recs[1]["outcome"].as_str(),
            recs[1]["reason"].as_str()
        ),
        (Some(500), Some("error"), Some("server_error"))
    );
    assert_eq!(
        (recs[2]["status"].as_u64(), recs[2]["outcome"].as_str()),
        (Some(502), Some("error"))
    );
}

async fn serve_tonic(audit: AuditLayer, deny_loopback: bool) -> SocketAddr {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let filter = IpFilterLayer::builder()
        .deny(if deny_loopback {
            "127.0.0.0/8"
        } else {
            "203.0.113.0/24"
        })
        .unwrap()
        .build();
    tokio::spawn(async move {
        let _keep = reporter;
        tonic::transport::Server::builder()
            .layer(audit)
            .layer(filter)
            .add_service(health)
            .serve_with_incoming(incoming)
            .await
            .unwrap()
    });
    addr
}

async fn health(addr: SocketAddr) -> HealthClient<tonic::transport::Channel> {
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(ch)
}

#[tokio::test]
async fn tonic_records_grpc_status_of_served_and_denied_calls() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let audit = AuditLayer::builder()
        .file(FileSink::builder(&path).build().unwrap())
        .build()
        .unwrap();

    let open = serve_tonic(audit.clone(), false).await;
    let mut c = health(open).await;
    let ok = c
        .check(HealthCheckRequest {
            service: "shop".into(),
        })
        .await
        .unwrap();
    assert_eq!(ok.into_inner().status, 1);
    let missing = c
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let closed = serve_tonic(audit.clone(), true).await;
    let mut c = health(closed).await;
    let denied = c
        .check(HealthCheckRequest {
            service: "shop".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    flush(&audit).await;

    let recs = records(&path);
    assert_eq!(recs.len(), 3, "{recs:?}");
    for r in &recs {
        assert_eq!(r["method"], "POST");
        assert_eq!(r["path"], "/grpc.health.v1.Health/Check");
        assert_eq!(r["client_ip"], "127.0.0.1");
        assert_eq!(r["status"], 200);
    }
    assert_eq!(recs[0]["outcome"], "served");
    assert_eq!(
        (recs[1]["outcome"].as_str(), recs[1]["grpc_status"].as_u64()),
        (Some("served"), Some(5))
    );
    assert_eq!(
        (
            recs[2]["outcome"].as_str(),
            recs[2]["grpc_status"].as_u64(),
            recs[2]["layer"].as_str(),
            recs[2]["reason"].as_str()
        ),
        (
            Some("denied"),
            Some(7),
            Some("ip_filter"),
            Some("ip_denied")
        )
    );
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not reached");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_failing_sink_fails_closed_with_503_and_says_so_then_recovers() {
    let broken = Arc::new(AtomicBool::new(true));
    let b = broken.clone();
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let l = lines.clone();
    let audit = AuditLayer::builder()
        .callback("siem", move |_r, line| {
            if b.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("connection closed"));
            }
            l.lock().unwrap().push(line.to_owned());
            Ok(())
        })
        .on_sink_failure(FailurePolicy::FailClosed)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(audit.clone());
    let addr = serve_axum(app).await;
    let client = reqwest::Client::new();

    // The first request is served (the failure is not known yet), and its record is lost.
    assert_eq!(
        client
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    wait_until(|| audit.stats().failing).await;
    let res = client.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        body["detail"],
        "Audit logging is unavailable; the request was refused."
    );
    wait_until(|| audit.stats().sink_errors >= 2).await; // the refusal's record was lost too

    // The sink comes back: the next record gets through, the log says how many were lost,
    // and requests are served again.
    broken.store(false, Ordering::SeqCst);
    assert_eq!(
        client
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    wait_until(|| !audit.stats().failing).await;
    assert_eq!(
        client
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    flush(&audit).await;
    let lines = lines.lock().unwrap();
    let recs: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let recovered = recs
        .iter()
        .find(|r| r["kind"] == "sink_recovered")
        .expect("a recovery record");
    assert_eq!(recovered["count"], 2, "two records were lost");
    let refused = recs
        .iter()
        .find(|r| r["outcome"] == "denied")
        .expect("the refusal is audited");
    assert_eq!(
        (
            refused["layer"].as_str(),
            refused["reason"].as_str(),
            refused["status"].as_u64()
        ),
        (Some("audit"), Some("audit_unavailable"), Some(503))
    );
    assert_eq!(recs.last().unwrap()["outcome"], "served");
}

#[tokio::test]
async fn a_full_disk_keeps_serving_under_the_continue_policy_and_reports() {
    let audit = AuditLayer::builder()
        .file(FileSink::builder("/dev/full").build().unwrap())
        .on_sink_failure(FailurePolicy::Continue)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(audit.clone());
    let addr = serve_axum(app).await;
    let client = reqwest::Client::new();
    for _ in 0..5 {
        assert_eq!(
            client
                .get(format!("http://{addr}/"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        flush(&audit).await;
    }
    let s = audit.stats();
    assert!(s.failing && s.sink_errors >= 5, "{s:?}");
    assert_eq!(s.written, 0);
}
