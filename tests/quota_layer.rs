//! The quota layer around axum, bare hyper and tonic over loopback TCP, and its counting
//! semantics (plans, weights, refunds, exactness, shadow mode).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_shield::clock::ManualClock;
use tower_shield::facts::RequestFacts;
use tower_shield::quota::{
    CountPolicy, DurableCounterStore, DurableOptions, KeyFallback, MemoryCounterStore, Quota,
    QuotaLayer, QuotaStore, Window,
};
use tower_shield::{CredentialKind, Principal};

/// 2026-11-18T11:06:40Z
const NOW: i64 = 1_795_000_000;
/// Seconds from NOW to 2026-12-01T00:00:00Z.
const TO_DEC_1: u64 = 1_083_200;

fn clock() -> ManualClock {
    ManualClock::at_unix(NOW)
}

/// Stands in for the auth layer: `x-client` and `x-plan` headers become a Principal.
fn fake_auth<B>(mut req: Request<B>) -> Request<B> {
    let client = req
        .headers()
        .get("x-client")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(id) = client {
        let mut p = Principal::new(id, CredentialKind::ApiKey);
        if let Some(plan) = req.headers().get("x-plan").and_then(|v| v.to_str().ok()) {
            p = p.with_plan(plan);
        }
        req.extensions_mut().insert(p);
    }
    req
}

fn base(clock: &ManualClock) -> tower_shield::quota::QuotaLayerBuilder {
    QuotaLayer::builder()
        .plan("free", [Quota::new("monthly", 3, Window::month())])
        .plan(
            "pro",
            [
                Quota::new("monthly", 100, Window::month()),
                Quota::new("daily", 5, Window::day()),
            ],
        )
        .weight("GET /products?search", 10)
        .weight("GET /health", 0)
        .headers_on_success(true)
        .clock(Arc::new(clock.clone()))
}

async fn serve_axum(layer: QuotaLayer) -> SocketAddr {
    let app = Router::new()
        .route("/products", get(|| async { "[]" }))
        .route("/health", get(|| async { "up" }))
        .route(
            "/fail",
            get(|| async { (StatusCode::BAD_GATEWAY, "upstream down") }),
        )
        .route(
            "/missing",
            get(|| async { (StatusCode::NOT_FOUND, "no such thing") }),
        )
        .layer(layer)
        .layer(tower::util::MapRequestLayer::new(
            fake_auth::<axum::body::Body>,
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

async fn get_as(addr: SocketAddr, path: &str, client: &str, plan: &str) -> reqwest::Response {
    let mut rb = reqwest::Client::new().get(format!("http://{addr}{path}"));
    if !client.is_empty() {
        rb = rb.header("x-client", client);
    }
    if !plan.is_empty() {
        rb = rb.header("x-plan", plan);
    }
    rb.send().await.unwrap()
}

#[tokio::test]
async fn axum_free_plan_is_refused_after_its_monthly_quota_with_full_headers() {
    let c = clock();
    let addr = serve_axum(base(&c).build().unwrap()).await;
    for left in [2, 1, 0] {
        let res = get_as(addr, "/products", "alice", "free").await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers()["ratelimit-policy"],
            r#""monthly";q=3;w=2592000"#
        );
        assert_eq!(
            res.headers()["ratelimit"].to_str().unwrap(),
            format!(r#""monthly";r={left};t={TO_DEC_1}"#)
        );
    }
    let res = get_as(addr, "/products", "alice", "free").await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(res.headers()["retry-after"], TO_DEC_1.to_string().as_str());
    assert_eq!(
        res.headers()["ratelimit"].to_str().unwrap(),
        format!(r#""monthly";r=0;t={TO_DEC_1}"#)
    );
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "type": "https://iana.org/assignments/http-problem-types#quota-exceeded",
            "title": "Request cannot be satisfied as assigned quota has been exceeded",
            "status": 429,
            "detail": "Quota exceeded for policy monthly",
            "violated-policies": ["monthly"]
        })
    );
    // another principal has its own quota
    assert_eq!(get_as(addr, "/products", "bob", "free").await.status(), 200);
    // the next calendar month resets it
    c.advance(Duration::from_secs(TO_DEC_1));
    let res = get_as(addr, "/products", "alice", "free").await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with(r#""monthly";r=2;t=2678400"#)
    );
}

#[tokio::test]
async fn plan_selects_limits_and_several_quotas_apply() {
    let c = clock();
    let addr = serve_axum(base(&c).build().unwrap()).await;
    // pro: 100/month and 5/day; the daily one is hit first
    for _ in 0..5 {
        assert_eq!(
            get_as(addr, "/products", "carol", "pro").await.status(),
            200
        );
    }
    let res = get_as(addr, "/products", "carol", "pro").await;
    assert_eq!(res.status(), 429);
    // 12:53:20 until midnight UTC
    assert_eq!(res.headers()["retry-after"], "46400");
    assert_eq!(
        res.headers()["ratelimit"].to_str().unwrap(),
        format!(r#""monthly";r=95;t={TO_DEC_1}, "daily";r=0;t=46400"#)
    );
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["violated-policies"], serde_json::json!(["daily"]));
    // the refused call was not counted in the monthly quota either
    c.advance(Duration::from_secs(46_400));
    let res = get_as(addr, "/products", "carol", "pro").await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with(r#""monthly";r=94;"#)
    );
}

#[tokio::test]
async fn unknown_plan_is_denied_or_gets_the_default_plan() {
    let c = clock();
    let addr = serve_axum(base(&c).build().unwrap()).await;
    let res = get_as(addr, "/products", "dave", "platinum").await;
    assert_eq!(res.status(), 403);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        body["detail"],
        "No quota is configured for the caller's plan."
    );
    // anonymous callers (no principal, keyed by IP) have no plan either
    assert_eq!(get_as(addr, "/products", "", "").await.status(), 403);

    let addr = serve_axum(base(&c).default_plan("free").build().unwrap()).await;
    for _ in 0..3 {
        assert_eq!(
            get_as(addr, "/products", "dave", "platinum").await.status(),
            200
        );
    }
    assert_eq!(
        get_as(addr, "/products", "dave", "platinum").await.status(),
        429
    );
    // anonymous: keyed by client IP, on the default plan
    for _ in 0..3 {
        assert_eq!(get_as(addr, "/products", "", "").await.status(), 200);
    }
    assert_eq!(get_as(addr, "/products", "", "").await.status(), 429);
    assert!(base(&c).default_plan("nope").build().is_err());
}

#[tokio::test]
async fn weighted_routes_cost_more_and_zero_weight_is_free() {
    let c = clock();
    let layer = QuotaLayer::builder()
        .plan("free", [Quota::new("monthly", 25, Window::month())])
        .weight("GET /products?search=", 10)
        .weight("GET /health", 0)
        .headers_on_success(true)
        .clock(Arc::new(c.clone()))
        .build()
        .unwrap();
    let addr = serve_axum(layer.clone()).await;
    let res = get_as(addr, "/products?search=shoes", "erin", "free").await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with(r#""monthly";r=15;"#)
    );
    let res = get_as(addr, "/products?page=2", "erin", "free").await;
    assert!(
        res.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with(r#""monthly";r=14;"#)
    );
    for _ in 0..5 {
        let res = get_as(addr, "/health", "erin", "free").await;
        assert_eq!(res.status(), 200);
        assert!(res.headers().get("ratelimit").is_none());
    }
    get_as(addr, "/products?search=a", "erin", "free").await;
    // 4 left: a search (10) is refused, a plain call (1) is not
    assert_eq!(
        get_as(addr, "/products?search=b", "erin", "free")
            .await
            .status(),
        429
    );
    assert_eq!(
        get_as(addr, "/products", "erin", "free").await.status(),
        200
    );
    let p = Principal::new("erin", CredentialKind::ApiKey).with_plan("free");
    let usage = layer.usage_of(&p).await.unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(
        (usage[0].used, usage[0].remaining, usage[0].reset_after_secs),
        (22, 3, TO_DEC_1)
    );
    assert_eq!(usage[0].resets_at, NOW as u64 + TO_DEC_1);
}

#[tokio::test]
async fn server_errors_are_refunded_and_success_only_refunds_4xx() {
    let c = clock();
    let addr = serve_axum(base(&c).build().unwrap()).await;
    for _ in 0..10 {
        assert_eq!(get_as(addr, "/fail", "fay", "free").await.status(), 502);
    }
    // 4xx count under the default policy
    assert_eq!(get_as(addr, "/missing", "fay", "free").await.status(), 404);
    assert_eq!(get_as(addr, "/products", "fay", "free").await.status(), 200);
    assert_eq!(get_as(addr, "/products", "fay", "free").await.status(), 200);
    assert_eq!(get_as(addr, "/products", "fay", "free").await.status(), 429);

    let addr = serve_axum(
        base(&c)
            .count_policy(CountPolicy::SuccessOnly)
            .build()
            .unwrap(),
    )
    .await;
    for _ in 0..5 {
        assert_eq!(get_as(addr, "/missing", "gil", "free").await.status(), 404);
    }
    for _ in 0..3 {
        assert_eq!(get_as(addr, "/products", "gil", "free").await.status(), 200);
    }
    assert_eq!(get_as(addr, "/products", "gil", "free").await.status(), 429);

    let addr = serve_axum(
        base(&c)
            .count_policy(CountPolicy::EveryCall)
            .build()
            .unwrap(),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(get_as(addr, "/fail", "hal", "free").await.status(), 502);
    }
    assert_eq!(get_as(addr, "/products", "hal", "free").await.status(), 429);
}

#[tokio::test]
async fn shadow_mode_lets_over_quota_calls_through_and_records_the_denial() {
    let c = clock();
    let layer = base(&c).shadow(true).build().unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
        });
    for i in 0..5 {
        let facts = Arc::new(RequestFacts::default());
        let mut req = Request::get("/products").body(()).unwrap();
        req.extensions_mut().insert(facts.clone());
        req.extensions_mut()
            .insert(Principal::new("ivy", CredentialKind::ApiKey).with_plan("free"));
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let shadow = facts.shadow_denials();
        if i < 3 {
            assert!(shadow.is_empty());
        } else {
            assert_eq!(shadow.len(), 1);
            assert_eq!(shadow[0].reason(), "quota_exceeded");
            assert!(shadow[0].is_shadow());
        }
    }
}

async fn exactly_n_admitted(store: QuotaStore, m: usize, n: u64) -> usize {
    let c = clock();
    let layer = QuotaLayer::builder()
        .store(store)
        .plan("free", [Quota::new("monthly", n, Window::month())])
        .clock(Arc::new(c))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_req: Request<()>| async {
            tokio::task::yield_now().await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
        });
    let mut tasks = Vec::new();
    for _ in 0..m {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = Request::get("/x").body(()).unwrap();
            req.extensions_mut()
                .insert(Principal::new("jo", CredentialKind::ApiKey).with_plan("free"));
            svc.oneshot(req).await.unwrap().status()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == StatusCode::OK {
            ok += 1;
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_admit_exactly_the_remaining_quota_in_memory() {
    let store = QuotaStore::Memory(MemoryCounterStore::new(Arc::new(clock())));
    assert_eq!(exactly_n_admitted(store, 400, 137).await, 137);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_admit_exactly_the_remaining_quota_durable() {
    let dir = tempfile::tempdir().unwrap();
    let opts = DurableOptions {
        flush_interval: Duration::from_millis(5),
        clock: Arc::new(clock()),
        ..Default::default()
    };
    let store = DurableCounterStore::open(dir.path().join("q.redb"), opts.clone()).unwrap();
    assert_eq!(
        exactly_n_admitted(QuotaStore::Durable(store.clone()), 400, 137).await,
        137
    );
    drop(store);
    // and the count is on disk
    let store = DurableCounterStore::open(dir.path().join("q.redb"), opts).unwrap();
    let layer = QuotaLayer::builder()
        .store(QuotaStore::Durable(store))
        .plan("free", [Quota::new("monthly", 137, Window::month())])
        .clock(Arc::new(clock()))
        .build()
        .unwrap();
    let usage = layer
        .usage_of(&Principal::new("jo", CredentialKind::ApiKey).with_plan("free"))
        .await
        .unwrap();
    assert_eq!(usage[0].used, 137);
}

#[tokio::test]
async fn bare_hyper_keys_anonymous_callers_by_ip_or_header() {
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;

    let c = clock();
    for fallback in [
        KeyFallback::ClientIp,
        KeyFallback::Header("x-tenant".parse().unwrap()),
    ] {
        let header_keyed = matches!(fallback, KeyFallback::Header(_));
        let layer = base(&c)
            .default_plan("free")
            .key_fallback(fallback)
            .build()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = listener.accept().await.unwrap();
                let svc = ServiceBuilder::new()
                    .map_request(move |mut req: Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(peer);
                        req
                    })
                    .layer(layer.clone())
                    .service_fn(|_req| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hi"))))
                    });
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                        .await;
                });
            }
        });
        let client = reqwest::Client::new();
        let send = |tenant: &'static str| {
            client
                .get(format!("http://{addr}/products"))
                .header("x-tenant", tenant)
                .send()
        };
        for _ in 0..3 {
            assert_eq!(send("t1").await.unwrap().status(), 200);
        }
        assert_eq!(send("t1").await.unwrap().status(), 429);
        // a different header value is a different caller only when keyed by header
        let other = send("t2").await.unwrap().status();
        assert_eq!(other, if header_keyed { 200 } else { 429 });
        if header_keyed {
            // without the header there is no key
            let res = client
                .get(format!("http://{addr}/products"))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 403);
            let body = res.bytes().await.unwrap();
            assert!(String::from_utf8_lossy(&body).contains("could not be identified"));
        }
    }
}

#[tokio::test]
async fn tonic_calls_get_resource_exhausted_after_the_quota() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let c = clock();
    let layer = base(&c).default_plan("free").build().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>>()
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    for _ in 0..3 {
        client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
    }
    let err = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert_eq!(err.message(), "Quota exceeded for policy monthly");
}

#[tokio::test]
async fn response_body_of_denial_is_problem_json_without_request_data() {
    let c = clock();
    let layer = base(&c).default_plan("free").build().unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
        });
    let mk = || {
        let mut req = Request::get("/products?q=%3Cscript%3E").body(()).unwrap();
        req.extensions_mut().insert(
            Principal::new("<script>alert(1)</script>", CredentialKind::ApiKey).with_plan("free"),
        );
        req
    };
    for _ in 0..3 {
        svc.clone().oneshot(mk()).await.unwrap();
    }
    let res = svc.clone().oneshot(mk()).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(
        res.extensions()
            .get::<tower_shield::Denial>()
            .unwrap()
            .reason(),
        "quota_exceeded"
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(!String::from_utf8_lossy(&body).contains("script"));
}

#[tokio::test]
async fn poll_ready_and_call_use_the_ready_service() {
    // the layer's service can be driven with Service::ready + call
    let c = clock();
    let layer = base(&c).default_plan("free").build().unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
        });
    let mut req = Request::get("/").body(()).unwrap();
    req.extensions_mut()
        .insert("192.0.2.1:1000".parse::<SocketAddr>().unwrap());
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn rolling_window_releases_units_bucket_by_bucket() {
    let c = clock();
    let layer = QuotaLayer::builder()
        .plan(
            "free",
            [Quota::new(
                "per-minute",
                3,
                Window::rolling(Duration::from_secs(60), 6).unwrap(),
            )],
        )
        .clock(Arc::new(c.clone()))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
        });
    let call = || {
        let mut req = Request::get("/").body(()).unwrap();
        req.extensions_mut()
            .insert(Principal::new("kim", CredentialKind::ApiKey).with_plan("free"));
        svc.clone().oneshot(req)
    };
    // NOW is 40 s into a minute: buckets of 10 s; two calls now, one 25 s later
    assert_eq!(call().await.unwrap().status(), 200);
    assert_eq!(call().await.unwrap().status(), 200);
    c.advance(Duration::from_secs(25));
    assert_eq!(call().await.unwrap().status(), 200);
    let res = call().await.unwrap();
    assert_eq!(res.status(), 429);
    // the first bucket (started 40 s into the minute) leaves 60 s after it started: 35 s on
    assert_eq!(res.headers()["retry-after"], "35");
    c.advance(Duration::from_secs(34));
    assert_eq!(call().await.unwrap().status(), 429);
    c.advance(Duration::from_secs(1));
    assert_eq!(call().await.unwrap().status(), 200);
    assert_eq!(call().await.unwrap().status(), 200);
    assert_eq!(call().await.unwrap().status(), 429);
}

#[tokio::test]
async fn long_principal_ids_are_counted_whole_and_usage_reads_them_back() {
    // ids longer than the inline key buffers: two ids sharing a 150-byte prefix with
    // characters the key escapes must count separately, and usage must find the counters
    let c = clock();
    let layer = base(&c).build().unwrap();
    let mut svc =
        ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(|_req: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
            });
    let prefix = "{tenant:%}".repeat(15);
    let a = Principal::new(format!("{prefix}a"), CredentialKind::ApiKey).with_plan("free");
    let b = Principal::new(format!("{prefix}b"), CredentialKind::ApiKey).with_plan("free");
    let mut call = async |p: &Principal| {
        let mut req = Request::get("/products").body(()).unwrap();
        req.extensions_mut().insert(p.clone());
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        (res.status(), res.headers().get("ratelimit").cloned())
    };
    for r in [2, 1, 0] {
        let (status, rl) = call(&a).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            rl.unwrap(),
            format!("\"monthly\";r={r};t={TO_DEC_1}").as_str()
        );
    }
    assert_eq!(call(&a).await.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(call(&b).await.0, StatusCode::OK);
    let usage = layer.usage_of(&a).await.unwrap();
    assert_eq!((usage[0].used, usage[0].remaining), (3, 0));
    assert_eq!(layer.usage_of(&b).await.unwrap()[0].used, 1);
}

#[tokio::test]
async fn refunds_reach_the_counters_of_ip_header_and_escaped_principal_callers() {
    // The response future rebuilds the store keys of a refund from the caller: each kind of
    // caller must get its units back on its own counters (and only there).
    let c = clock();
    for case in ["ip", "header", "principal", "pro"] {
        let fallback = match case {
            "header" => KeyFallback::Header("x-tenant".parse().unwrap()),
            _ => KeyFallback::ClientIp,
        };
        let layer = base(&c)
            .default_plan("free")
            .key_fallback(fallback)
            .build()
            .unwrap();
        let mut svc =
            ServiceBuilder::new()
                .layer(layer.clone())
                .service_fn(|req: Request<()>| async move {
                    let status = if req.uri().path() == "/fail" {
                        500
                    } else {
                        200
                    };
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    )
                });
        let req = |path: &str| {
            let mut r = Request::get(path)
                .header("x-tenant", "t:{1}%")
                .body(())
                .unwrap();
            r.extensions_mut()
                .insert(SocketAddr::from(([192, 0, 2, 7], 4000)));
            match case {
                "principal" => {
                    r.extensions_mut().insert(
                        Principal::new("a:b{c}%", CredentialKind::ApiKey).with_plan("free"),
                    );
                }
                "pro" => {
                    r.extensions_mut()
                        .insert(Principal::new("p:{x}", CredentialKind::ApiKey).with_plan("pro"));
                }
                _ => {}
            }
            r
        };
        for _ in 0..8 {
            let res = svc.ready().await.unwrap().call(req("/fail")).await.unwrap();
            assert_eq!(res.status(), 500, "{case}");
        }
        // nothing was burnt by the failures: the whole quota is left
        let left = if case == "pro" { 5 } else { 3 };
        for i in 0..left {
            let res = svc.ready().await.unwrap().call(req("/ok")).await.unwrap();
            assert_eq!(res.status(), 200, "{case} call {i}");
        }
        let res = svc.ready().await.unwrap().call(req("/ok")).await.unwrap();
        assert_eq!(res.status(), 429, "{case}");
        if case == "pro" {
            let p = Principal::new("p:{x}", CredentialKind::ApiKey).with_plan("pro");
            let usage = layer.usage_of(&p).await.unwrap();
            assert_eq!((usage[0].used, usage[1].used), (5, 5));
        }
    }
}

type ReadyOk = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;
fn ok_plain(_req: Request<()>) -> ReadyOk {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from("ok")))))
}

/// The in-process fast path counts under the documented store keys (the same keys the
/// `CounterStore` API, the durable file and Redis use), for principals, escaped ids, IPv6
/// callers and a key prefix with braces of its own.
#[tokio::test]
async fn fast_path_counts_under_the_documented_store_keys() {
    use tower_shield::store::CounterStore;
    let c = clock();
    for (prefix, caller, key) in [
        ("quota:", "alice", &b"quota:{p%3Aalice}:monthly:2026-11"[..]),
        (
            "quota:",
            "a:b{c}",
            b"quota:{p%3Aa%3Ab%7Bc%7D}:monthly:2026-11",
        ),
        ("{app}q:", "alice", b"{app}q:{p%3Aalice}:monthly:2026-11"),
    ] {
        let store = MemoryCounterStore::new(Arc::new(c.clone()));
        let layer = QuotaLayer::builder()
            .store(QuotaStore::Memory(store.clone()))
            .key_prefix(prefix)
            .plan("free", [Quota::new("monthly", 10, Window::month())])
            .clock(Arc::new(c.clone()))
            .build()
            .unwrap();
        let svc = ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(ok_plain as fn(Request<()>) -> ReadyOk);
        for _ in 0..2 {
            let mut req = Request::get("/x").body(()).unwrap();
            req.extensions_mut()
                .insert(Principal::new(caller, CredentialKind::ApiKey).with_plan("free"));
            let res = svc.clone().oneshot(req).await.unwrap();
            assert_eq!(res.status(), 200);
        }
        assert_eq!(store.get(key).await.unwrap(), 2, "{prefix} {caller}");
        // the slow path (CounterStore API) sees and continues the same counter
        let p = Principal::new(caller, CredentialKind::ApiKey).with_plan("free");
        assert_eq!(layer.usage_of(&p).await.unwrap()[0].used, 2);
    }
    // IPv6 callers are keyed by /64 with the colons escaped
    let store = MemoryCounterStore::new(Arc::new(c.clone()));
    let layer = QuotaLayer::builder()
        .store(QuotaStore::Memory(store.clone()))
        .plan("free", [Quota::new("monthly", 10, Window::month())])
        .default_plan("free")
        .clock(Arc::new(c.clone()))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(ok_plain as fn(Request<()>) -> ReadyOk);
    let mut req = Request::get("/x").body(()).unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(SocketAddr::from((
            [0x2001, 0xdb8, 0, 1, 2, 3, 4, 5],
            4000,
        ))));
    assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
    assert_eq!(
        store
            .get(b"quota:{ip%3A2001%3Adb8%3A0%3A1%3A%3A}:monthly:2026-11")
            .await
            .unwrap(),
        1
    );
}

/// Two quotas in memory are decided under one lock: concurrent requests against 3
/// remaining daily units admit exactly 3, and the monthly counter holds exactly their
/// units — a refused request never counted anything, not even briefly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_quotas_in_memory_are_all_or_nothing_under_concurrency() {
    use tower_shield::store::CounterStore;
    let c = clock();
    let store = MemoryCounterStore::new(Arc::new(c.clone()));
    let layer = QuotaLayer::builder()
        .store(QuotaStore::Memory(store.clone()))
        .plan(
            "pro",
            [
                Quota::new("monthly", 1000, Window::month()),
                Quota::new("daily", 3, Window::day()),
            ],
        )
        .clock(Arc::new(c.clone()))
        .build()
        .unwrap();
    let monthly = b"quota:{p%3Ab}:monthly:2026-11";
    let seen_over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (layer, store, seen_over) = (layer.clone(), store.clone(), seen_over.clone());
            tokio::spawn(async move {
                let svc = ServiceBuilder::new()
                    .layer(layer)
                    .service_fn(ok_plain as fn(Request<()>) -> ReadyOk);
                let mut req = Request::get("/x").body(()).unwrap();
                req.extensions_mut()
                    .insert(Principal::new("b", CredentialKind::ApiKey).with_plan("pro"));
                let status = svc.oneshot(req).await.unwrap().status();
                // the monthly counter never shows more than the admitted units
                if store.get(monthly).await.unwrap() > 3 {
                    seen_over.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                status
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        if t.await.unwrap() == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3);
    assert_eq!(store.get(monthly).await.unwrap(), 3);
    assert_eq!(
        store.get(b"quota:{p%3Ab}:daily:2026-11-18").await.unwrap(),
        3
    );
    assert!(!seen_over.load(std::sync::atomic::Ordering::Relaxed));
}

/// The window cache follows the clock across a reset: the next period gets a new key.
#[tokio::test]
async fn cached_window_moves_to_the_next_period() {
    use tower_shield::store::CounterStore;
    let c = clock();
    let store = MemoryCounterStore::new(Arc::new(c.clone()));
    let layer = QuotaLayer::builder()
        .store(QuotaStore::Memory(store.clone()))
        .plan("free", [Quota::new("monthly", 1, Window::month())])
        .headers_on_success(true)
        .clock(Arc::new(c.clone()))
        .build()
        .unwrap();
    let call = || {
        let svc = ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(ok_plain as fn(Request<()>) -> ReadyOk);
        let mut req = Request::get("/x").body(()).unwrap();
        req.extensions_mut()
            .insert(Principal::new("m", CredentialKind::ApiKey).with_plan("free"));
        svc.oneshot(req)
    };
    assert_eq!(call().await.unwrap().status(), 200);
    assert_eq!(call().await.unwrap().status(), 429);
    c.advance(Duration::from_secs(TO_DEC_1 - 1));
    assert_eq!(call().await.unwrap().status(), 429);
    c.advance(Duration::from_secs(1));
    let res = call().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["ratelimit"], r#""monthly";r=0;t=2678400"#);
    assert_eq!(
        store.get(b"quota:{p%3Am}:monthly:2026-12").await.unwrap(),
        1
    );
}

fn ok_typed(_req: Request<()>) -> ReadyOk {
    let mut res = Response::new(Full::new(Bytes::from("{}")));
    res.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    std::future::ready(Ok(res))
}

/// By default only denials carry `RateLimit-Policy`/`RateLimit`; with
/// `headers_on_success(true)` admitted responses carry them too, on every decision path
/// (the in-process table, the durable store, a rolling window decided one quota at a time)
/// and whether or not the inner response already has header fields.
#[tokio::test]
async fn admitted_responses_carry_fields_only_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    for on in [false, true] {
        for (kind, store) in [
            (
                "memory",
                QuotaStore::Memory(MemoryCounterStore::new(Arc::new(clock()))),
            ),
            (
                "durable",
                QuotaStore::Durable(
                    DurableCounterStore::open(
                        dir.path().join(format!("fields-{on}.redb")),
                        DurableOptions {
                            clock: Arc::new(clock()),
                            ..Default::default()
                        },
                    )
                    .unwrap(),
                ),
            ),
        ] {
            for (window, typed) in [
                (Window::month(), false),
                (Window::month(), true),
                (
                    Window::rolling(Duration::from_secs(3600), 60).unwrap(),
                    false,
                ),
            ] {
                let c = clock();
                let rolling = window.is_rolling();
                let mut b = QuotaLayer::builder()
                    .store(store.clone())
                    .plan("free", [Quota::new("monthly", 2, window)])
                    .clock(Arc::new(c.clone()));
                if on {
                    b = b.headers_on_success(true);
                }
                let layer = b.build().unwrap();
                let inner = if typed { ok_typed } else { ok_plain };
                let call = |id: &str| {
                    let svc = ServiceBuilder::new()
                        .layer(layer.clone())
                        .service_fn(inner as fn(Request<()>) -> ReadyOk);
                    let mut req = Request::get("/x").body(()).unwrap();
                    req.extensions_mut().insert(
                        Principal::new(
                            format!("{id}-{kind}-{rolling}-{typed}"),
                            CredentialKind::ApiKey,
                        )
                        .with_plan("free"),
                    );
                    svc.oneshot(req)
                };
                let case = format!("{kind} rolling={rolling} typed={typed} on={on}");
                for left in [1, 0] {
                    let res = call("a").await.unwrap();
                    assert_eq!(res.status(), 200, "{case}");
                    assert_eq!(res.headers().contains_key("content-type"), typed, "{case}");
                    if on {
                        assert_eq!(
                            res.headers()["ratelimit-policy"],
                            if rolling {
                                r#""monthly";q=2;w=3600"#
                            } else {
                                r#""monthly";q=2;w=2592000"#
                            },
                            "{case}"
                        );
                        let rl = res.headers()["ratelimit"].to_str().unwrap();
                        assert!(
                            rl.starts_with(&format!(r#""monthly";r={left};t="#)),
                            "{case}: {rl}"
                        );
                        assert_eq!(res.headers().get_all("ratelimit").iter().count(), 1);
                    } else {
                        assert!(res.headers().get("ratelimit").is_none(), "{case}");
                        assert!(res.headers().get("ratelimit-policy").is_none(), "{case}");
                    }
                }
                // the denial carries both fields either way
                let res = call("a").await.unwrap();
                assert_eq!(res.status(), 429, "{case}");
                let rl = res.headers()["ratelimit"].to_str().unwrap();
                assert!(rl.starts_with(r#""monthly";r=0;t="#), "{case}: {rl}");
                assert!(res.headers().contains_key("ratelimit-policy"), "{case}");
            }
        }
    }
}

#[tokio::test]
async fn a_refund_reaches_a_shared_store_after_the_admitting_layer_is_dropped() {
    // The response future keeps only the id of the table that counted the call: the refund
    // of an upstream 5xx still lands when the layer that admitted the call is gone, as long
    // as a clone of its store lives (here: the store of a second layer).
    let c = clock();
    let store = MemoryCounterStore::new(Arc::new(c.clone()));
    let build = |store: &MemoryCounterStore| {
        base(&c)
            .store(QuotaStore::Memory(store.clone()))
            .build()
            .unwrap()
    };
    let (a, b) = (build(&store), build(&store));
    drop(store);
    let p = Principal::new("kim", CredentialKind::ApiKey).with_plan("free");
    // an upstream that answers `status` once released
    let gated = |status: StatusCode| {
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let wait = Arc::new(tokio::sync::Mutex::new(Some(wait)));
        let svc = tower::service_fn(move |_req: Request<()>| {
            let wait = wait.clone();
            async move {
                if let Some(w) = wait.lock().await.take() {
                    let _ = w.await;
                }
                let mut res = Response::new(Full::new(Bytes::from("upstream down")));
                *res.status_mut() = status;
                Ok::<_, Infallible>(res)
            }
        });
        (release, svc)
    };
    let request = || {
        let mut req = Request::get("/products").body(()).unwrap();
        req.extensions_mut().insert(p.clone());
        req
    };
    // one call through `layer` to `upstream`, in flight until released; the service (and
    // with it the layer) is dropped once the call is made
    let call = |layer: QuotaLayer, upstream| {
        tokio::spawn(
            ServiceBuilder::new()
                .layer(layer)
                .service(upstream)
                .oneshot(request()),
        )
    };
    let (release, upstream) = gated(StatusCode::BAD_GATEWAY);
    let in_flight = call(a, upstream);
    tokio::task::yield_now().await;
    // the admitting layer and its service are gone; the call was counted
    assert_eq!(b.usage_of(&p).await.unwrap()[0].used, 1);
    release.send(()).unwrap();
    assert_eq!(in_flight.await.unwrap().unwrap().status(), 502);
    assert_eq!(b.usage_of(&p).await.unwrap()[0].used, 0);

    // with every clone of the store gone, the refund has nowhere to go: it is dropped and
    // the call still completes with the upstream's answer
    let (release, upstream) = gated(StatusCode::SERVICE_UNAVAILABLE);
    let in_flight = call(base(&c).build().unwrap(), upstream);
    tokio::task::yield_now().await;
    release.send(()).unwrap();
    assert_eq!(in_flight.await.unwrap().unwrap().status(), 503);
}
