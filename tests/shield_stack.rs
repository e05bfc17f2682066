//! Every layer stacked by the Shield from one configuration file, over real loopback TCP:
//! the order of DESIGN.md is observable (an IP denial comes before authentication, an
//! authentication failure does not burn quota, the audit layer sees every outcome).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use axum::{Router, routing::get, routing::post};
use tokio::net::TcpListener;
use tower_shield::ShieldConfig;
use tower_shield::auth::{ApiKeyFormat, KeyHasher};

struct Stack {
    addr: SocketAddr,
    key: String,
    audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn config(dir: &Path, key_hash: &str) -> String {
    format!(
        r#"
        routes = ["GET /products", "POST /reviews"]
        [client_ip]
        trusted_proxies = ["127.0.0.1"]
        [ip_filter]
        deny = ["203.0.113.0/24"]
        [audit]
        file = "{audit}"
        [throttle]
        rate_limit_headers = true
        [[throttle.pre_auth]]
        name = "per-ip"
        rate = "100 per second"
        burst = 100
        [auth]
        realm = "test"
        [auth.api_keys]
        [[auth.api_keys.keys]]
        id = "stack001"
        hash = "{key_hash}"
        client_id = "c1"
        scopes = ["products:read"]
        plan = "free"
        [[auth.routes]]
        route = "GET /products"
        scopes = ["products:read"]
        [[auth.routes]]
        route = "POST /reviews"
        scopes = ["products:read"]
        [quota]
        headers = true
        [quota.plans]
        free = [{{ name = "daily", limit = 3, window = "day" }}]
        [sanitize]
        action = "reject"
        "#,
        audit = dir.join("audit.jsonl").display()
    )
}

async fn stack() -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let key = ApiKeyFormat::new("tsk", 40)
        .unwrap()
        .generate_with_id("stack001")
        .unwrap();
    let hash = KeyHasher::sha256().hash(key.secret());
    let shield = ShieldConfig::from_toml_str(&config(dir.path(), &hash))
        .unwrap()
        .build()
        .unwrap();
    let app = Router::new()
        .route("/products", get(|| async { "[]" }))
        .route("/reviews", post(|body: String| async move { body }))
        .layer(shield);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Stack {
        addr,
        key: key.secret().to_owned(),
        audit: dir.path().join("audit.jsonl"),
        _dir: dir,
    }
}

async fn audit_records(path: &Path, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        if let Ok(text) = std::fs::read_to_string(path) {
            let lines: Vec<_> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if lines.len() >= n {
                return lines;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} audit records in {}", path.display());
}

#[tokio::test]
async fn layers_run_in_design_order_and_every_request_is_audited() {
    let s = stack().await;
    let c = reqwest::Client::new();
    let url = |p: &str| format!("http://{}{p}", s.addr);

    // 1. a denied network is refused by the IP filter before any credential check
    let res = c
        .get(url("/products"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(res.headers().get("www-authenticate").is_none());

    // 2. no credentials: 401 with the RFC 6750 challenge, and no quota spent
    let res = c.get(url("/products")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["www-authenticate"], r#"Bearer realm="test""#);

    // 3. a good key: served, with the quota's and the throttle's RateLimit fields
    let res = c
        .get(url("/products"))
        .header("x-api-key", &s.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let rl: Vec<_> = res
        .headers()
        .get_all("ratelimit")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        rl.iter().any(|v| v.starts_with(r#""daily";r=2;"#)),
        "{rl:?}"
    );
    assert!(rl.iter().any(|v| v.starts_with(r#""per-ip";"#)), "{rl:?}");

    // 4. an injection from an authenticated caller: refused by the sanitizer (innermost)
    let res = c
        .post(url("/reviews"))
        .header("x-api-key", &s.key)
        .header("content-type", "application/json")
        .body(r#"{"text":"x' UNION SELECT password FROM users--"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let p: serde_json::Value = res.json().await.unwrap();
    assert_eq!(p["kind"], "sqli");
    assert_eq!(p["location"], "body./text");

    // 5. the quota (3 a day) is spent by the two admitted calls plus one more; then 429
    let res = c
        .get(url("/products"))
        .header("x-api-key", &s.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = c
        .get(url("/products"))
        .header("x-api-key", &s.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    let p: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        p["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(p["violated-policies"], serde_json::json!(["daily"]));

    // every request has exactly one audit record naming the layer that decided
    let records = audit_records(&s.audit, 6).await;
    assert_eq!(records.len(), 6);
    let summary: Vec<(i64, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["status"].as_i64().unwrap(),
                r["outcome"].as_str().unwrap(),
                r.get("layer").and_then(|l| l.as_str()).unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (403, "denied", "ip_filter"),
            (401, "denied", "auth"),
            (200, "served", "-"),
            (400, "denied", "sanitize"),
            (200, "served", "-"),
            (429, "denied", "quota"),
        ]
    );
    assert_eq!(records[2]["principal"]["key_id"], "stack001");
    assert_eq!(records[0]["client_ip"], "203.0.113.9");
    assert_eq!(records[2]["route"], "/products");
    let text = std::fs::read_to_string(&s.audit).unwrap();
    assert!(
        !text.contains(&s.key),
        "the API key leaked into the audit log"
    );
}

#[tokio::test]
async fn the_same_stack_serves_tonic_and_denies_with_grpc_codes() {
    let dir = tempfile::tempdir().unwrap();
    let key = ApiKeyFormat::new("tsk", 40)
        .unwrap()
        .generate_with_id("stack001")
        .unwrap();
    let hash = KeyHasher::sha256().hash(key.secret());
    let shield = ShieldConfig::from_toml_str(&config(dir.path(), &hash))
        .unwrap()
        .build()
        .unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(shield)
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let req = || tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    // no credentials: UNAUTHENTICATED, not a retriable UNAVAILABLE
    let err = client.check(req()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    // with the key in metadata: served (the gRPC body passes the sanitizer untouched)
    let mut r = tonic::Request::new(req());
    r.metadata_mut()
        .insert("x-api-key", key.secret().parse().unwrap());
    assert_eq!(client.check(r).await.unwrap().into_inner().status, 1);
}
