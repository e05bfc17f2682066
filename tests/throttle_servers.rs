//! The throttle over real loopback TCP: axum, bare hyper 1, and tonic.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower_shield::throttle::{Policy, Rate, ThrottleLayer};

fn layer() -> ThrottleLayer {
    ThrottleLayer::builder()
        .rate_limit_headers(true)
        .policy(Policy::rate("per-ip", Rate::per_hour(2)).burst(2))
        .build()
        .unwrap()
}

#[tokio::test]
async fn axum_router_gets_429_with_headers() {
    use axum::{Router, routing::get};
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(layer());
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
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/");
    let r1 = client.get(&url).send().await.unwrap();
    assert_eq!(r1.status(), 200);
    assert_eq!(r1.headers()["ratelimit"], r#""per-ip";r=1;t=1800"#);
    assert_eq!(r1.headers()["ratelimit-policy"], r#""per-ip";q=2;w=3600"#);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let r3 = client.get(&url).send().await.unwrap();
    assert_eq!(r3.status(), 429);
    assert_eq!(r3.headers()["content-type"], "application/problem+json");
    let ra: u64 = r3.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1800).contains(&ra));
    assert!(
        r3.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with(r#""per-ip";r=0;t="#)
    );
    let body: serde_json::Value = r3.json().await.unwrap();
    assert_eq!(body["status"], 429);
}

#[tokio::test]
async fn bare_hyper_server_gets_429() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceBuilder;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let throttle = layer();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let svc = ServiceBuilder::new()
                .map_request(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer);
                    req
                })
                .layer(throttle.clone())
                .service_fn(|_req: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hi"))))
                });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/x");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.headers().contains_key("ratelimit-policy"));
}

#[tokio::test]
async fn tonic_server_answers_resource_exhausted() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(layer())
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
    for _ in 0..2 {
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
}
