//! A protected demo shop API, or a small protecting reverse proxy.
//!
//! ```text
//! cargo run --example gateway --features full                 # demo shop API on 127.0.0.1:8080
//! cargo run --example gateway --features full -- --config FILE --listen 127.0.0.1:9090
//! cargo run --example gateway --features full -- --upstream http://127.0.0.1:3000   # protect any HTTP API
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Request, State},
    http::{StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tower_shield::ShieldConfig;

struct Args {
    config: String,
    listen: SocketAddr,
    upstream: Option<Uri>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        config: concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gateway.toml").to_owned(),
        listen: "127.0.0.1:8080".parse().expect("static address"),
        upstream: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--config" => args.config = value()?,
            "--listen" => args.listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--upstream" => {
                let uri: Uri = value()?.parse().map_err(|e| format!("--upstream: {e}"))?;
                if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                    return Err("--upstream must be an http://host:port URL".into());
                }
                args.upstream = Some(uri);
            }
            "-h" | "--help" => {
                return Err(
                    "usage: gateway [--config FILE] [--listen ADDR] [--upstream http://HOST:PORT]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

fn demo_shop() -> Router {
    Router::new()
        .route(
            "/products",
            get(|| async {
                Json(json!([{"id": 1, "name": "Espresso cup"}, {"id": 2, "name": "Kettle"}]))
            }),
        )
        .route(
            "/products/{id}",
            get(|Path(id): Path<u32>| async move {
                Json(json!({"id": id, "name": "Espresso cup", "stock": 12}))
            }),
        )
        .route(
            "/cart",
            post(|| async { (StatusCode::CREATED, Json(json!({"cart": "updated"}))) }),
        )
        .route(
            "/checkout",
            post(|| async { Json(json!({"order": "placed"})) }),
        )
        .route(
            "/login",
            post(|| async {
                (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"error": "bad credentials"})),
                )
            }),
        )
        .route(
            "/admin/stats",
            get(|| async { Json(json!({"orders_today": 42})) }),
        )
        .route(
            "/promo/apply",
            post(|| async { Json(json!({"discount": "10%"})) }),
        )
}

type Proxy = Client<HttpConnector, Body>;

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

async fn forward(State((client, upstream)): State<(Proxy, Uri)>, mut req: Request) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri = format!(
        "{}://{}{}",
        upstream.scheme_str().unwrap_or("http"),
        upstream.authority().map(|a| a.as_str()).unwrap_or_default(),
        path
    );
    match uri.parse() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    }
    for h in HOP_BY_HOP {
        req.headers_mut().remove(h);
    }
    req.headers_mut().remove(http::header::HOST);
    match client.request(req).await {
        Ok(res) => {
            let (mut parts, body) = res.into_parts();
            for h in HOP_BY_HOP {
                parts.headers.remove(h);
            }
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => {
            tracing::warn!(error = %e, "upstream request failed");
            (StatusCode::BAD_GATEWAY, "upstream unavailable").into_response()
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let shield = match ShieldConfig::from_file(&args.config).and_then(|c| c.build()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let app = match &args.upstream {
        None => demo_shop(),
        Some(up) => {
            let client: Proxy = Client::builder(TokioExecutor::new()).build_http();
            Router::new()
                .fallback(forward)
                .with_state((client, up.clone()))
        }
    }
    .layer(shield);

    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!(
        "tower-shield gateway listening on http://{addr} (config: {})",
        args.config
    );
    match &args.upstream {
        Some(up) => println!("protecting upstream {up}"),
        None => {
            println!("try:");
            println!("  curl -i http://{addr}/products");
            println!(
                "  curl -i -H 'X-Forwarded-For: 203.0.113.7' http://{addr}/products   # denied client IP: 403 problem+json"
            );
        }
    }
    if let Err(e) = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    {
        eprintln!("server error: {e}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
