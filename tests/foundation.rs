//! The foundation over real loopback TCP: the Shield (context stage + IP filter) around an
//! axum Router, a bare hyper 1 server and a tonic server, called by real clients.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::{Router, extract::Extension, routing::get};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_shield::{ClientIp, MatchedRoute, ShieldConfig, ShieldLayer};

fn shield(toml: &str) -> ShieldLayer {
    ShieldConfig::from_toml_str(toml).unwrap().build().unwrap()
}

async fn who(ip: Option<Extension<ClientIp>>, route: Option<Extension<MatchedRoute>>) -> String {
    format!(
        "{}|{}",
        ip.map(|Extension(ip)| ip.to_string()).unwrap_or_default(),
        route
            .map(|Extension(r)| r.template.to_string())
            .unwrap_or_default()
    )
}

async fn serve_axum(shield: ShieldLayer) -> SocketAddr {
    let app = Router::new()
        .route("/products", get(who))
        .route("/products/{id}", get(who))
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
    addr
}

const BEHIND_PROXY: &str = r#"
    routes = ["GET /products", "GET /products/{id}"]
    [client_ip]
    trusted_proxies = ["127.0.0.1/32"]
    [ip_filter]
    deny = ["203.0.113.0/24", "2001:db8:bad::/48"]
"#;

#[tokio::test]
async fn axum_denied_client_gets_403_problem_json() {
    let addr = serve_axum(shield(BEHIND_PROXY)).await;
    let client = reqwest::Client::new();
    let res = client
        .get(format!("http://{addr}/products/42?q=%3Cscript%3E"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "type": "about:blank",
            "title": "Forbidden",
            "status": 403,
            "detail": "The client address is not allowed to call this API."
        })
    );
}

#[tokio::test]
async fn axum_allowed_client_reaches_handler_with_ip_and_route() {
    let addr = serve_axum(shield(BEHIND_PROXY)).await;
    let client = reqwest::Client::new();
    let res = client
        .get(format!("http://{addr}/products/42"))
        .header("x-forwarded-for", "203.0.114.1, 198.51.100.9")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap(), "198.51.100.9|/products/{id}");
    // IPv6 client through the proxy, in the denied /48
    let res = client
        .get(format!("http://{addr}/products"))
        .header("x-forwarded-for", "[2001:db8:bad::1]:443")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn spoofed_forwarding_from_untrusted_peer_is_ignored() {
    // only 203.0.113.7 is allowed; the loopback peer is not a trusted proxy, so its claim
    // to be 203.0.113.7 must not be believed
    let addr = serve_axum(shield(
        "[ip_filter]\nallow = [\"203.0.113.7\"]\n[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\"]",
    ))
    .await;
    let client = reqwest::Client::new();
    for (name, value) in [
        ("x-forwarded-for", "203.0.113.7"),
        ("forwarded", "for=203.0.113.7"),
        ("x-real-ip", "203.0.113.7"),
    ] {
        let res = client
            .get(format!("http://{addr}/products"))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{name}");
    }
}

#[tokio::test]
async fn garbage_and_oversized_forwarding_headers_never_crash() {
    let addr = serve_axum(shield(BEHIND_PROXY)).await;
    let client = reqwest::Client::new();
    let big = "1.2.3.4, ".repeat(700); // ~6 KiB
    let values: Vec<HeaderValue> = vec![
        HeaderValue::from_bytes(b"\xff\xfe\xfd").unwrap(),
        HeaderValue::from_static("not an ip, at all"),
        HeaderValue::from_static(",,,,"),
        HeaderValue::from_static("[::1"),
        HeaderValue::from_static("999.999.999.999"),
        HeaderValue::from_str(&big).unwrap(),
        HeaderValue::from_static("203.0.113.7, garbage"),
    ];
    for v in values {
        let res = client
            .get(format!("http://{addr}/products"))
            .header("x-forwarded-for", v.clone())
            .send()
            .await
            .unwrap();
        // the walk stops at the malformed entry: the client is the proxy (127.0.0.1), which
        // is not denied, and never a value the client chose
        assert_eq!(res.status(), StatusCode::OK, "{v:?}");
        assert_eq!(res.text().await.unwrap(), "127.0.0.1|/products", "{v:?}");
    }
}

#[tokio::test]
async fn bare_hyper_server_with_socket_addr_extension() {
    let layer = shield("[ip_filter]\ndeny = [\"127.0.0.0/8\"]");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let layer = layer.clone();
            tokio::spawn(async move {
                let svc = ServiceBuilder::new()
                    .map_request(move |req: Request<hyper::body::Incoming>| {
                        // hyper's `Incoming` cannot be rebuilt from bytes (the sanitizer
                        // needs that): box it, and hand the layers the peer address
                        let mut req = req.map(|b| b.boxed());
                        req.extensions_mut().insert(peer);
                        req
                    })
                    .layer(layer)
                    .service_fn(|_req: Request<BoxBody<Bytes, hyper::Error>>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
                    });
                let svc = hyper_util::service::TowerToHyperService::new(svc);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let res = reqwest::get(format!("http://{addr}/anything"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], 403);
}

async fn serve_tonic(shield: ShieldLayer) -> SocketAddr {
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
    addr
}

async fn health_check(addr: SocketAddr) -> Result<i32, tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    client
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
}

#[tokio::test]
async fn tonic_client_sees_permission_denied() {
    let addr = serve_tonic(shield("[ip_filter]\ndeny = [\"127.0.0.1\"]")).await;
    let status = health_check(addr).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "The client address is not allowed to call this API."
    );
}

#[tokio::test]
async fn tonic_allowed_client_is_served_and_grpc_code_is_configurable() {
    let addr = serve_tonic(shield("[ip_filter]\nallow = [\"127.0.0.1\"]")).await;
    assert_eq!(health_check(addr).await.unwrap(), 1); // SERVING
    let addr = serve_tonic(shield(
        "[ip_filter]\ndeny = [\"127.0.0.1\"]\n[grpc.codes]\n403 = 16",
    ))
    .await;
    assert_eq!(
        health_check(addr).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
}

#[tokio::test]
async fn unknown_client_address_fails_closed() {
    // no peer address at all (a service driven without connection info)
    use tower::ServiceExt;
    let svc = ServiceBuilder::new()
        .layer(shield("[ip_filter]\ndeny = [\"203.0.113.0/24\"]"))
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
        });
    let res = svc
        .oneshot(Request::new(Full::new(Bytes::new())))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        res.extensions()
            .get::<tower_shield::Denial>()
            .unwrap()
            .reason(),
        "client_ip_unknown"
    );
}
