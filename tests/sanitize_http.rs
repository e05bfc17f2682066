//! The sanitize layer over real loopback TCP: axum, bare hyper 1 (chunked bodies), tonic.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use axum::routing::post;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;
use tower_shield::sanitize::{
    Action, ContentPolicy, FieldRule, Findings, Limits, RoutePolicy, SanitizeLayer, SanitizeMode,
};

fn layer() -> SanitizeLayer {
    SanitizeLayer::builder()
        .limits(Limits {
            max_body_bytes: 256 * 1024,
            ..Limits::default()
        })
        .route(
            "POST /products/{id}/reviews",
            RoutePolicy::new().field(
                FieldRule::new("body.review")
                    .unwrap()
                    .sanitize(SanitizeMode::Rich),
            ),
        )
        .unwrap()
        .route("/admin/*", RoutePolicy::new().action(Action::Monitor))
        .unwrap()
        .build()
        .unwrap()
}

/// Echoes what the handler received: content-length header, body, number of findings.
async fn echo(req: Request) -> String {
    let cl = req
        .headers()
        .get("content-length")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let findings = req.extensions().get::<Findings>().map_or(0, |f| f.0.len());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    format!("{cl}|{findings}|{}", String::from_utf8_lossy(&body))
}

async fn axum_server() -> SocketAddr {
    let app = Router::new()
        .route("/products/{id}/reviews", post(echo))
        .route("/admin/{*rest}", post(echo))
        .route("/search", post(echo).get(echo))
        .layer(layer());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
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

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

#[tokio::test]
async fn axum_rejects_operator_keys_and_deep_nesting_without_echoing() {
    let addr = axum_server().await;
    let res = client()
        .post(format!("http://{addr}/search"))
        .header("content-type", "application/json")
        .body(r#"{"name":"secret-value","price":{"$gt":0}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let text = res.text().await.unwrap();
    assert!(!text.contains("secret-value"));
    let p: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(p["location"], "body./price/$gt");
    assert_eq!(p["kind"], "nosql");
    assert_eq!(p["status"], 400);

    // 100 000 '[' : refused at the depth limit, the server keeps serving
    let res = client()
        .post(format!("http://{addr}/search"))
        .header("content-type", "application/json")
        .body("[".repeat(100_000))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let p: Value = res.json().await.unwrap();
    assert_eq!(p["limit"], "max_depth");

    let res = client()
        .post(format!("http://{addr}/search"))
        .header("content-type", "application/json")
        .body(vec![b' '; 300 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);

    let res = client()
        .get(format!("http://{addr}/search?q=caf%C3%A9+au+lait&n=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn axum_handler_sees_the_sanitized_body_with_its_length() {
    let addr = axum_server().await;
    let res = client()
        .post(format!("http://{addr}/products/9/reviews"))
        .header("content-type", "application/json")
        .body(r#"{"stars":5,"review":"<b>Great</b> <img src=x onerror=alert(1)>"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    let body = r#"{"stars":5,"review":"<b>Great</b> <img src=\"x\">"}"#;
    assert_eq!(text, format!("{}|1|{body}", body.len()));
}

#[tokio::test]
async fn axum_monitor_route_passes_and_exposes_findings() {
    let addr = axum_server().await;
    let res = client()
        .post(format!("http://{addr}/admin/users"))
        .header("content-type", "application/json")
        .body(r#"{"q":{"$where":"1"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), r#"20|1|{"q":{"$where":"1"}}"#);
}

async fn hyper_server(layer: SanitizeLayer) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let svc = ServiceBuilder::new()
                .map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer);
                    req.map(|b| b.boxed())
                })
                .layer(layer.clone())
                .service_fn(
                    |req: http::Request<
                        http_body_util::combinators::BoxBody<Bytes, hyper::Error>,
                    >| async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        Ok::<_, Infallible>(http::Response::new(Full::new(body)))
                    },
                );
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });
    addr
}

/// Sends a raw HTTP/1.1 request with a chunked body; returns (status, body).
async fn chunked(addr: SocketAddr, ct: &str, chunks: &[&[u8]]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST /in HTTP/1.1\r\nhost: x\r\ncontent-type: {ct}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for c in chunks {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    // the server may answer (413) before reading everything: ignore write errors
    let _ = s.write_all(&req).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[tokio::test]
async fn hyper_counts_chunked_bodies_against_the_limit() {
    let l = SanitizeLayer::builder()
        .limits(Limits {
            max_body_bytes: 1000,
            ..Limits::default()
        })
        .build()
        .unwrap();
    let addr = hyper_server(l).await;
    let chunk = [b' '; 400];
    let (status, body) = chunked(
        addr,
        "application/json",
        &[b"[1", &chunk, &chunk, &chunk, b"]"],
    )
    .await;
    assert_eq!(status, 413);
    assert!(body.contains("max_body_bytes"));

    let (status, body) = chunked(addr, "application/json", &[b"{\"a\":", b" [1, \"x\"]}"]).await;
    assert_eq!(status, 200);
    assert_eq!(body, "{\"a\": [1, \"x\"]}");

    let (status, body) = chunked(addr, "application/json", &[b"{\"a\":", b" {\"$ne\": 1}}"]).await;
    assert_eq!(status, 400);
    assert!(body.contains("body./a/$ne"));

    let (status, _) = chunked(addr, "text/plain", &[b"caf\xc3", b"\xa9 \xc0\xaf"]).await;
    assert_eq!(status, 400);

    // unscanned content types are streamed through untouched, whatever their size
    let big = vec![0xffu8; 3000];
    let (status, body) = chunked(addr, "application/octet-stream", &[&big]).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), "\u{fffd}".len() * 3000);
}

mod grpc {
    use super::*;
    use tonic::transport::{Channel, Server};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    async fn server(layer: SanitizeLayer) -> SocketAddr {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("shop", tonic_health::ServingStatus::Serving)
            .await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _keep = reporter;
            Server::builder()
                .layer(layer)
                .add_service(health)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        addr
    }

    async fn check(addr: SocketAddr) -> Result<i32, tonic::Status> {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "shop".into(),
            })
            .await
            .map(|r| r.into_inner().status)
    }

    #[tokio::test]
    async fn tonic_bodies_pass_untouched() {
        // strict limits that a scanned protobuf body would trip: gRPC is not scanned
        let l = SanitizeLayer::builder()
            .limits(Limits {
                max_body_bytes: 1,
                ..Limits::default()
            })
            .other_content_types(ContentPolicy::Refuse)
            .build()
            .unwrap();
        let addr = server(l).await;
        assert_eq!(check(addr).await.unwrap(), 1, "SERVING");
    }

    #[tokio::test]
    async fn tonic_refused_when_configured_gets_a_grpc_status() {
        let l = SanitizeLayer::builder()
            .grpc(ContentPolicy::Refuse)
            .build()
            .unwrap();
        let addr = server(l).await;
        let status = check(addr).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}
