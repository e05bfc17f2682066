//! The auth layer over real loopback TCP: axum, bare hyper, tonic; scope policy, RFC 6750
//! challenges, lockout, introspection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower_shield::Principal;
use tower_shield::auth::{
    ApiKeyFormat, ApiKeyRecord, AuthLayer, GeneratedKey, Introspector, KeyHasher, LockoutPolicy,
    MemoryKeyStore, OnIntrospectionError, RouteRule,
};
use tower_shield::clock::{Clock, ManualClock};

struct Keys {
    read: GeneratedKey,
    write: GeneratedKey,
    expired: GeneratedKey,
    store: MemoryKeyStore,
}

fn keys(clock: &ManualClock) -> Keys {
    let f = ApiKeyFormat::default();
    let h = KeyHasher::sha256();
    let (read, write, expired) = (f.generate(), f.generate(), f.generate());
    let rec = |k: &GeneratedKey| {
        ApiKeyRecord::new(k.key_id(), h.parse_hash(&h.hash(k.secret()), "h").unwrap())
    };
    let store = MemoryKeyStore::new()
        .with(
            rec(&read)
                .client_id("reader")
                .scopes(["products:read"])
                .plan("free"),
        )
        .with(
            rec(&write)
                .client_id("writer")
                .scopes(["products:read", "orders:write"]),
        )
        .with(
            rec(&expired)
                .client_id("old")
                .scopes(["products:read"])
                .expires_at(clock.wall() - Duration::from_secs(1)),
        );
    Keys {
        read,
        write,
        expired,
        store,
    }
}

fn layer(store: MemoryKeyStore, clock: &ManualClock) -> AuthLayer {
    AuthLayer::builder()
        .realm("shop")
        .api_keys(store)
        .clock(Arc::new(clock.clone()))
        .require("GET /products/*", ["products:read"])
        .unwrap()
        .require("POST /orders", ["orders:write"])
        .unwrap()
        .public("GET /health")
        .unwrap()
        .route("POST /login", RouteRule::public().login())
        .unwrap()
        .build()
        .unwrap()
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
        .unwrap();
    });
    addr
}

fn app(auth: AuthLayer) -> Router {
    Router::new()
        .route(
            "/products/{id}",
            get(|p: Principal| async move { p.id().to_owned() }),
        )
        .route(
            "/orders",
            post(|p: Principal| async move { p.id().to_owned() }),
        )
        .route("/health", get(|| async { "ok" }))
        .route(
            "/login",
            post(|body: String| async move {
                if body == "secret" {
                    (StatusCode::OK, "welcome")
                } else {
                    (StatusCode::UNAUTHORIZED, "no")
                }
            }),
        )
        .layer(auth)
}

struct Answer {
    status: u16,
    challenge: Option<String>,
    retry_after: Option<String>,
    content_type: Option<String>,
    body: String,
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let res = req.send().await.unwrap();
    let h = |n: &str| res.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
    Answer {
        status: res.status().as_u16(),
        challenge: h("www-authenticate"),
        retry_after: h("retry-after"),
        content_type: h("content-type"),
        body: res.text().await.unwrap(),
    }
}

#[tokio::test]
async fn axum_no_credentials_bad_and_good_keys() {
    let clock = ManualClock::new();
    let k = keys(&clock);
    let addr = serve_axum(app(layer(k.store, &clock))).await;
    let c = reqwest::Client::new();
    let url = |p: &str| format!("http://{addr}{p}");

    // no credentials: 401, challenge without error code
    let a = send(c.get(url("/products/1"))).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.challenge.as_deref(), Some(r#"Bearer realm="shop""#));
    assert_eq!(a.content_type.as_deref(), Some("application/problem+json"));

    // good key, header and bearer; the principal reaches the handler through the extractor
    let a = send(
        c.get(url("/products/1"))
            .header("x-api-key", k.read.secret()),
    )
    .await;
    assert_eq!((a.status, a.body.as_str()), (200, "reader"));
    let a = send(c.get(url("/products/1")).bearer_auth(k.write.secret())).await;
    assert_eq!((a.status, a.body.as_str()), (200, "writer"));

    // bad keys: checksum-broken, unknown id, wrong secret, expired
    let invalid = r#"Bearer realm="shop", error="invalid_token", error_description="The access token is invalid""#;
    let mut typo = k.read.secret().to_owned();
    typo.replace_range(20..21, if &typo[20..21] == "A" { "B" } else { "A" });
    let forged_id = ApiKeyFormat::default().generate();
    let wrong_secret = ApiKeyFormat::default()
        .generate_with_id(k.read.key_id())
        .unwrap();
    let mut bodies = vec![];
    for bad in [
        typo.as_str(),
        forged_id.secret(),
        wrong_secret.secret(),
        "garbage",
    ] {
        let a = send(c.get(url("/products/1")).header("x-api-key", bad)).await;
        assert_eq!(a.status, 401, "{bad}");
        assert_eq!(a.challenge.as_deref(), Some(invalid));
        assert!(!a.body.contains(bad) && !a.body.contains(k.read.key_id()));
        bodies.push(a.body);
    }
    // an unknown key id and a wrong secret for a real id are indistinguishable
    assert_eq!(bodies[1], bodies[2]);
    let a = send(
        c.get(url("/products/1"))
            .header("x-api-key", k.expired.secret()),
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(
        a.challenge.as_deref(),
        Some(
            r#"Bearer realm="shop", error="invalid_token", error_description="The access token expired""#
        )
    );

    // scopes: the read-only key may not write
    let a = send(c.post(url("/orders")).header("x-api-key", k.read.secret())).await;
    assert_eq!(a.status, 403);
    assert_eq!(
        a.challenge.as_deref(),
        Some(r#"Bearer realm="shop", error="insufficient_scope", scope="orders:write""#)
    );
    let a = send(c.post(url("/orders")).header("x-api-key", k.write.secret())).await;
    assert_eq!((a.status, a.body.as_str()), (200, "writer"));

    // two credentials, or a malformed bearer token: 400 invalid_request
    let a = send(
        c.get(url("/products/1"))
            .header("x-api-key", k.read.secret())
            .bearer_auth(k.write.secret()),
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.challenge.as_deref(),
        Some(r#"Bearer realm="shop", error="invalid_request""#)
    );
    let a = send(
        c.get(url("/products/1"))
            .header("authorization", "Bearer a b"),
    )
    .await;
    assert_eq!(a.status, 400);

    // public route
    let a = send(c.get(url("/health"))).await;
    assert_eq!((a.status, a.body.as_str()), (200, "ok"));
}

#[tokio::test]
async fn default_scope_mapping_read_and_write() {
    let clock = ManualClock::new();
    let f = ApiKeyFormat::default();
    let h = KeyHasher::hmac_sha256(&[9u8; 32]).unwrap();
    let ro = f.generate();
    let store = MemoryKeyStore::new().with(
        ApiKeyRecord::new(
            ro.key_id(),
            h.parse_hash(&h.hash(ro.secret()), "h").unwrap(),
        )
        .scopes(["read"]),
    );
    let auth = AuthLayer::builder()
        .api_keys(store)
        .key_hasher(h)
        .api_key_query("api_key")
        .default_scopes("read", "write")
        .clock(Arc::new(clock))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/things",
            get(|| async { "list" }).post(|| async { "made" }),
        )
        .layer(auth);
    let addr = serve_axum(app).await;
    let c = reqwest::Client::new();
    let a = send(c.get(format!("http://{addr}/things?api_key={}", ro.secret()))).await;
    assert_eq!((a.status, a.body.as_str()), (200, "list"));
    let a = send(
        c.post(format!("http://{addr}/things"))
            .header("x-api-key", ro.secret()),
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(
        a.challenge.as_deref(),
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="write""#)
    );
}

#[tokio::test]
async fn hyper_server_no_bad_good() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceBuilder;

    let clock = ManualClock::new();
    let k = keys(&clock);
    let auth = layer(k.store, &clock);
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
                .layer(auth.clone())
                .service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let who = req.extensions().get::<Principal>().unwrap().id().to_owned();
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(who))))
                });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });
    let c = reqwest::Client::new();
    let url = format!("http://{addr}/products/9");
    assert_eq!(send(c.get(&url)).await.status, 401);
    assert_eq!(
        send(c.get(&url).header("x-api-key", "tsk_nope"))
            .await
            .status,
        401
    );
    let a = send(c.get(&url).header("x-api-key", k.read.secret())).await;
    assert_eq!((a.status, a.body.as_str()), (200, "reader"));
}

#[tokio::test]
async fn tonic_server_unauthenticated_permission_denied_ok() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let clock = ManualClock::new();
    let k = keys(&clock);
    let auth = AuthLayer::builder()
        .api_keys(k.store)
        .clock(Arc::new(clock))
        .require("POST /grpc.health.v1.Health/*", ["orders:write"])
        .unwrap()
        .build()
        .unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(auth)
            .add_service(health)
            .serve_with_incoming(tokio_stream_from(listener))
            .await
            .unwrap();
    });
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let call = |key: Option<&str>| {
        let mut r = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        if let Some(k) = key {
            r.metadata_mut().insert("x-api-key", k.parse().unwrap());
        }
        r
    };
    let e = client.check(call(None)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = client.check(call(Some("tsk_bad"))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = client.check(call(Some(k.read.secret()))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let ok = client.check(call(Some(k.write.secret()))).await.unwrap();
    assert_eq!(ok.into_inner().status, 1); // SERVING
}

fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}

#[tokio::test]
async fn lockout_bans_after_failures_and_expires_with_the_clock() {
    let clock = ManualClock::new();
    let k = keys(&clock);
    let mut policy = LockoutPolicy::new(3, Duration::from_secs(60), Duration::from_secs(120));
    policy.max_ban = Duration::from_secs(600);
    let auth = AuthLayer::builder()
        .realm("shop")
        .api_keys(k.store)
        .clock(Arc::new(clock.clone()))
        .lockout(policy)
        .route("POST /login", RouteRule::public().login())
        .unwrap()
        .build()
        .unwrap();
    let addr = serve_axum(app(auth)).await;
    let c = reqwest::Client::new();
    let url = |p: &str| format!("http://{addr}{p}");

    // login route watching: the app's 401s count
    for _ in 0..3 {
        let a = send(c.post(url("/login")).body("guess")).await;
        assert_eq!(a.status, 401);
    }
    let a = send(c.post(url("/login")).body("secret")).await;
    assert_eq!(a.status, 429, "banned even with the right password");
    assert_eq!(a.retry_after.as_deref(), Some("120"));
    let a = send(
        c.get(url("/products/1"))
            .header("x-api-key", k.read.secret()),
    )
    .await;
    assert_eq!(a.status, 429, "the ban covers the whole API");

    clock.advance(Duration::from_secs(120));
    let a = send(c.post(url("/login")).body("secret")).await;
    assert_eq!((a.status, a.body.as_str()), (200, "welcome"));

    // bad API keys count too; the second offence bans twice as long
    for _ in 0..3 {
        let a = send(c.get(url("/products/1")).header("x-api-key", "tsk_bad")).await;
        assert_eq!(a.status, 401);
    }
    let a = send(
        c.get(url("/products/1"))
            .header("x-api-key", k.read.secret()),
    )
    .await;
    assert_eq!(a.status, 429);
    assert_eq!(a.retry_after.as_deref(), Some("240"));
    clock.advance(Duration::from_secs(239));
    assert_eq!(
        send(
            c.get(url("/products/1"))
                .header("x-api-key", k.read.secret())
        )
        .await
        .status,
        429
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        send(
            c.get(url("/products/1"))
                .header("x-api-key", k.read.secret())
        )
        .await
        .status,
        200
    );
    // missing credentials are not failures
    for _ in 0..5 {
        assert_eq!(send(c.get(url("/products/1"))).await.status, 401);
    }
}

// ---- introspection against an endpoint served by axum on loopback

#[derive(Clone, Default)]
struct As {
    calls: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    exp: Arc<AtomicUsize>,
}

const JSON: [(http::HeaderName, &str); 1] = [(http::header::CONTENT_TYPE, "application/json")];

async fn serve_introspection(state: As) -> SocketAddr {
    use axum::extract::State;
    let app = Router::new()
        .route(
            "/introspect",
            post(
                |State(s): State<As>, headers: http::HeaderMap, body: String| async move {
                    s.calls.fetch_add(1, Ordering::SeqCst);
                    if s.down.load(Ordering::SeqCst) {
                        return (StatusCode::SERVICE_UNAVAILABLE, JSON, String::new());
                    }
                    // client authentication is required (HTTP Basic rs:rs-secret)
                    let basic = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    if basic != "Basic cnM6cnMtc2VjcmV0" {
                        return (
                            StatusCode::UNAUTHORIZED,
                            JSON,
                            r#"{"error":"invalid_client"}"#.into(),
                        );
                    }
                    let active = body.contains("token=opaque-good");
                    let doc = if active {
                        serde_json::json!({"active":true,"scope":"products:read","client_id":"partner","sub":"svc-1","exp": s.exp.load(Ordering::SeqCst)})
                    } else {
                        serde_json::json!({"active":false})
                    };
                    (StatusCode::OK, JSON, doc.to_string())
                },
            ),
        )
        .with_state(state);
    serve_axum(app).await
}

#[tokio::test]
async fn introspection_caches_within_exp_and_reports_failures() {
    let clock = ManualClock::new();
    let now = clock
        .wall()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as usize;
    let state = As::default();
    state.exp.store(now + 30, Ordering::SeqCst);
    let as_addr = serve_introspection(state.clone()).await;
    let intro = |mode| {
        Introspector::builder(format!("http://{as_addr}/introspect"), "rs")
            .client_secret("rs-secret")
            .clock(Arc::new(clock.clone()))
            .max_cache_ttl(Duration::from_secs(60))
            .negative_cache_ttl(Duration::from_secs(5))
            .on_error(mode)
            .build()
            .unwrap()
    };
    let auth = AuthLayer::builder()
        .realm("shop")
        .introspection(intro(OnIntrospectionError::Unavailable))
        .clock(Arc::new(clock.clone()))
        .require("GET /products/*", ["products:read"])
        .unwrap()
        .require("POST /orders", ["orders:write"])
        .unwrap()
        .build()
        .unwrap();
    let addr = serve_axum(app(auth)).await;
    let c = reqwest::Client::new();
    let url = |p: &str| format!("http://{addr}{p}");

    let a = send(c.get(url("/products/1")).bearer_auth("opaque-good")).await;
    assert_eq!((a.status, a.body.as_str()), (200, "svc-1"));
    assert_eq!(state.calls.load(Ordering::SeqCst), 1);
    // cache hit, and scopes from the introspection answer
    let a = send(c.post(url("/orders")).bearer_auth("opaque-good")).await;
    assert_eq!(a.status, 403);
    assert_eq!(state.calls.load(Ordering::SeqCst), 1);
    // never cached past exp (30 s, below the 60 s maximum)
    clock.advance(Duration::from_secs(31));
    state.exp.store(now + 600, Ordering::SeqCst);
    assert_eq!(
        send(c.get(url("/products/1")).bearer_auth("opaque-good"))
            .await
            .status,
        200
    );
    assert_eq!(state.calls.load(Ordering::SeqCst), 2);
    // inactive: 401 invalid_token, cached briefly
    for _ in 0..3 {
        let a = send(c.get(url("/products/1")).bearer_auth("opaque-bad")).await;
        assert_eq!(a.status, 401);
        assert!(a.challenge.unwrap().contains(r#"error="invalid_token""#));
    }
    assert_eq!(state.calls.load(Ordering::SeqCst), 3);
    clock.advance(Duration::from_secs(5));
    send(c.get(url("/products/1")).bearer_auth("opaque-bad")).await;
    assert_eq!(state.calls.load(Ordering::SeqCst), 4);

    // endpoint down: the configured failure mode, visible in the denial
    state.down.store(true, Ordering::SeqCst);
    let a = send(c.get(url("/products/1")).bearer_auth("opaque-new")).await;
    assert_eq!(a.status, 503);
    assert!(a.retry_after.is_some());
    assert!(
        a.body.contains("authorization server is unavailable"),
        "{}",
        a.body
    );

    let auth = AuthLayer::builder()
        .introspection(intro(OnIntrospectionError::InvalidToken))
        .build()
        .unwrap();
    let addr2 = serve_axum(app(auth)).await;
    let a = send(
        c.get(format!("http://{addr2}/products/1"))
            .bearer_auth("opaque-new"),
    )
    .await;
    assert_eq!(a.status, 401);
    assert!(a.challenge.unwrap().contains("invalid_token"));

    // a wrong client secret is an endpoint failure, not an inactive token
    state.down.store(false, Ordering::SeqCst);
    let wrong = Introspector::builder(format!("http://{as_addr}/introspect"), "rs")
        .client_secret("nope")
        .build()
        .unwrap();
    assert_eq!(
        wrong.introspect("opaque-good").await.unwrap_err(),
        tower_shield::auth::IntrospectionFailure::Unavailable
    );
}
