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
use tower_shield::quota::QuotaLayer;
use tower_shield::{Principal, ShieldConfig};

/// The demo API keys whose hashes are in examples/gateway.toml (demo only: real keys are
/// printed once by `examples/keygen.rs` and never stored).
const DEMO_READ_KEY: &str = "tsk_demoread_EX7nLtldAATkf37COJPWOBmOCUNsFRAEbIb6DZ4F424F1n";
const DEMO_WRITE_KEY: &str = "tsk_demowrit_3Hlqkdr9Zww0ICJIRlm6ly4Tz6J1QI0am4RrDL2W3vWU8l";

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

async fn usage(State(quota): State<Option<QuotaLayer>>, principal: Principal) -> Response {
    match quota {
        None => (StatusCode::NOT_FOUND, "no quota configured").into_response(),
        Some(q) => match q.usage_of(&principal).await {
            Ok(u) => Json(json!({"principal": principal.id(), "quotas": u})).into_response(),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
        },
    }
}

fn demo_shop(quota: Option<QuotaLayer>) -> Router {
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
            "/products/{id}/reviews",
            post(|Path(id): Path<u32>, body: String| async move {
                // echoes what the API received: the sanitizer cleaned the review field
                (
                    StatusCode::CREATED,
                    Json(json!({"product": id, "received": body})),
                )
            }),
        )
        .route(
            "/cart/{sku}",
            post(|Path(sku): Path<String>| async move {
                (
                    StatusCode::CREATED,
                    Json(json!({"cart": "updated", "sku": sku})),
                )
            }),
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
        .route("/admin/usage", get(usage))
        .with_state(quota)
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
    // The quota layer is built here (not inside the Shield) so that /admin/usage can read
    // usage back from the same store.
    let built = ShieldConfig::from_file(&args.config).and_then(|mut c| {
        let quota = c.quota.take().map(|q| q.build()).transpose()?;
        let mut b = c.into_builder()?;
        if let Some(q) = &quota {
            b = b.quota(q.clone());
        }
        Ok((b.build()?, quota))
    });
    let (shield, quota) = match built {
        Ok(s) => s,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let app = match &args.upstream {
        None => demo_shop(quota),
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
            println!("demo API keys (read-only, free plan / read-write, pro plan):");
            println!("  READ={DEMO_READ_KEY}");
            println!("  WRITE={DEMO_WRITE_KEY}");
            println!("try:");
            for line in [
                "curl -i http://ADDR/products                                  # 401: no credentials",
                "curl -i -H \"x-api-key: $READ\" http://ADDR/products            # 200 with RateLimit fields",
                "curl -i -H \"x-api-key: $READ\" -X POST http://ADDR/checkout    # 403 insufficient_scope",
                "curl -i -H \"x-api-key: $WRITE\" -X POST http://ADDR/checkout   # 200",
                "curl -i -H \"x-api-key: $READ\" 'http://ADDR/products?q=1%27%20OR%201=1--'   # 400 sqli",
                "curl -i -H \"x-api-key: $WRITE\" http://ADDR/admin/usage       # quota usage",
                "curl -i -H 'X-Forwarded-For: 203.0.113.7' http://ADDR/products # denied client IP: 403",
                "curl -i -d 'username=alice&password=x' http://ADDR/login       # 401; 5 failures ban alice and the IP: 429",
            ] {
                println!("  {}", line.replace("ADDR", &addr));
            }
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
