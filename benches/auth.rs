//! Auth layer costs: API key check, JWT layer vs bare `jsonwebtoken::decode`, introspection
//! cache hit.
//!
//! `cargo bench --bench auth --features auth -- --warm-up-time 1 --measurement-time 3`
//!
//! The bare JWT case is a service that decodes the token itself with `jsonwebtoken::decode`
//! (same token, key, backend, algorithm, `exp`/`iss`/`aud` validation) and answers like the
//! inner service of the layered case, so both sides do the same non-auth work.
//!
//! Instruction counts without criterion (load-independent): `AUTH_BENCH_COUNT=<id>=<n>`
//! runs the case `<id>` (e.g. `jwt/HS256/auth_layer`) `n` times and exits; run it under
//! `valgrind --tool=callgrind` with `n` = 0 and `n` = 10000 and divide the difference.
//! With `AUTH_BENCH_ROUNDS=<r>` it times `r` rounds of `n` and prints the fastest round's
//! ns per iteration (a load-robust wall-time figure next to criterion's).

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, encode};
use serde::Deserialize;
use tower::{Service, ServiceBuilder};
#[path = "support/paired.rs"]
mod paired;

use tower_shield::auth::{
    ApiKeyFormat, ApiKeyRecord, AuthLayer, Introspector, JwtVerifier, KeyHasher, MemoryKeyStore,
};

const RSA: &[u8] = include_bytes!("../tests/data/rsa1.pem");
const RSA_PUB: &[u8] = include_bytes!("../tests/data/rsa1.pub.pem");
const EC: &[u8] = include_bytes!("../tests/data/ec1.pem");
const EC_PUB: &[u8] = include_bytes!("../tests/data/ec1.pub.pem");
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn ok(_req: Request<()>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Full::new(Bytes::new()))))
}

fn run<S>(svc: &mut S, req: Request<()>) -> u16
where
    S: Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible>,
{
    svc.call(req)
        .now_or_never()
        .expect("ready")
        .unwrap()
        .status()
        .as_u16()
}

fn api_key(c: &mut Criterion) {
    let f = ApiKeyFormat::default();
    let h = KeyHasher::sha256();
    let mut store = MemoryKeyStore::new();
    let mut key = None;
    for i in 0..10_000 {
        let k = f.generate();
        store.insert(
            ApiKeyRecord::new(k.key_id(), h.parse_hash(&h.hash(k.secret()), "h").unwrap())
                .client_id(format!("client-{i}"))
                .scopes(["products:read"]),
        );
        key = Some(k);
    }
    let key = key.unwrap();
    let auth = AuthLayer::builder()
        .api_keys(store)
        .require("GET /products/*", ["products:read"])
        .unwrap()
        .build()
        .unwrap();
    let mut bare = tower::service_fn(ok);
    let mut layered = ServiceBuilder::new().layer(auth).service_fn(ok);
    let req = || {
        Request::get("/products/42")
            .header("x-api-key", key.secret())
            .body(())
            .unwrap()
    };
    // as servers hand requests over: with an extension already present (hyper's upgrade
    // handle, axum's or tonic's connection info), so the extension map exists and the
    // principal is one more entry
    #[derive(Clone)]
    struct ConnInfo(#[allow(dead_code)] std::net::SocketAddr);
    let req_ext = || {
        let mut r = req();
        r.extensions_mut()
            .insert(ConnInfo(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                40000,
            ))));
        r
    };
    assert_eq!(run(&mut layered, req()), 200);
    if counting("api_key/bare_service", || run(&mut bare, req()))
        | counting("api_key/auth_layer", || run(&mut layered, req()))
        | counting("api_key/bare_service_with_extension", || {
            run(&mut bare, req_ext())
        })
        | counting("api_key/auth_layer_with_extension", || {
            run(&mut layered, req_ext())
        })
    {
        return;
    }
    let mut g = c.benchmark_group("api_key");
    g.bench_function("bare_service", |b| {
        b.iter(|| run(&mut bare, black_box(req())))
    });
    g.bench_function("auth_layer", |b| {
        b.iter(|| run(&mut layered, black_box(req())))
    });
    g.bench_function("bare_service_with_extension", |b| {
        b.iter(|| run(&mut bare, black_box(req_ext())))
    });
    g.bench_function("auth_layer_with_extension", |b| {
        b.iter(|| run(&mut layered, black_box(req_ext())))
    });
    // the added cost measured directly: layer and bare service interleaved in every sample
    // (see benches/support/paired.rs), so drift of the VM's speed between two separate
    // benchmarks does not enter the difference
    g.bench_function("added_paired", |b| {
        b.iter_custom(|iters| {
            paired::added(
                iters,
                || {
                    black_box(run(&mut bare, black_box(req())));
                },
                || {
                    black_box(run(&mut layered, black_box(req())));
                },
            )
        })
    });
    g.bench_function("added_paired_with_extension", |b| {
        b.iter_custom(|iters| {
            paired::added(
                iters,
                || {
                    black_box(run(&mut bare, black_box(req_ext())));
                },
                || {
                    black_box(run(&mut layered, black_box(req_ext())));
                },
            )
        })
    });
    g.finish();
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Claims {
    sub: String,
    exp: u64,
    scope: String,
    iss: String,
    aud: String,
}

fn jwt(c: &mut Criterion) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"sub":"user-1","exp":now + 3600,"scope":"products:read",
        "iss":"https://issuer.example","aud":"api"});
    let cases: [(&str, Algorithm, EncodingKey, DecodingKey, JwtVerifier); 3] = [
        (
            "HS256",
            Algorithm::HS256,
            EncodingKey::from_secret(SECRET),
            DecodingKey::from_secret(SECRET),
            JwtVerifier::builder().hmac_secret(SECRET, Some("k")),
        ),
        (
            "RS256",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(RSA).unwrap(),
            DecodingKey::from_rsa_pem(RSA_PUB).unwrap(),
            JwtVerifier::builder().rsa_pem(RSA_PUB, Some("k")),
        ),
        (
            "ES256",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(EC).unwrap(),
            DecodingKey::from_ec_pem(EC_PUB).unwrap(),
            JwtVerifier::builder().ec_pem(EC_PUB, Some("k")),
        ),
    ]
    .map(|(name, alg, ek, dk, vb)| {
        let v = vb
            .issuer("https://issuer.example")
            .audience("api")
            .build()
            .unwrap();
        (name, alg, ek, dk, v)
    });
    let mut g = c.benchmark_group("jwt");
    for (name, alg, ek, dk, verifier) in cases {
        let mut h = Header::new(alg);
        h.kid = Some("k".into());
        let token = encode(&h, &claims, &ek).unwrap();
        let mut validation = Validation::new(alg);
        validation.set_issuer(&["https://issuer.example"]);
        validation.set_audience(&["api"]);
        let auth = AuthLayer::builder()
            .jwt(verifier)
            .require("GET /products/*", ["products:read"])
            .unwrap()
            .build()
            .unwrap();
        let mut layered = ServiceBuilder::new().layer(auth).service_fn(ok);
        let bearer = format!("Bearer {token}");
        let req = || {
            Request::get("/products/42")
                .header("authorization", &bearer)
                .body(())
                .unwrap()
        };
        assert_eq!(run(&mut layered, req()), 200);
        let mut bare = tower::service_fn(move |r: Request<()>| {
            let t = &r.headers()["authorization"].to_str().unwrap()[7..];
            jsonwebtoken::decode::<Claims>(black_box(t), &dk, &validation).unwrap();
            ok(r)
        });
        assert_eq!(run(&mut bare, req()), 200);
        let count_bare = counting(&format!("jwt/{name}/bare_decode"), || run(&mut bare, req()));
        if count_bare
            | counting(&format!("jwt/{name}/auth_layer"), || {
                run(&mut layered, req())
            })
        {
            continue;
        }
        g.bench_function(format!("{name}/bare_decode"), |b| {
            b.iter(|| run(&mut bare, black_box(req())))
        });
        g.bench_function(format!("{name}/auth_layer"), |b| {
            b.iter(|| run(&mut layered, black_box(req())))
        });
    }
    g.finish();
}

fn introspection(c: &mut Criterion) {
    use axum::{Router, routing::post};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = rt.block_on(async {
        let app = Router::new().route(
            "/introspect",
            post(|| async {
                (
                    [(http::header::CONTENT_TYPE, "application/json")],
                    r#"{"active":true,"sub":"svc","scope":"products:read"}"#,
                )
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        addr
    });
    let intro = Introspector::builder(format!("http://{addr}/introspect"), "rs")
        .client_secret("s")
        .build()
        .unwrap();
    let token = "opaque-token-0123456789abcdefghijklmnopqrstuvwxyz";
    rt.block_on(intro.introspect(token)).unwrap();
    let auth = AuthLayer::builder()
        .introspection(intro.clone())
        .require("GET /products/*", ["products:read"])
        .unwrap()
        .build()
        .unwrap();
    let mut layered = ServiceBuilder::new().layer(auth).service_fn(ok);
    let bearer = format!("Bearer {token}");
    let req = || {
        Request::get("/products/42")
            .header("authorization", &bearer)
            .body(())
            .unwrap()
    };
    assert_eq!(run(&mut layered, req()), 200);
    let mut g = c.benchmark_group("introspection");
    g.bench_function("cache_hit", |b| {
        b.iter(|| intro.cached(black_box(token)).unwrap().unwrap())
    });
    g.bench_function("auth_layer_cache_hit", |b| {
        b.iter(|| run(&mut layered, black_box(req())))
    });
    g.finish();
}

/// Count mode (`AUTH_BENCH_COUNT=<id>=<n>`): runs the case `id` `n` times. Returns whether
/// count mode is on (then criterion is skipped).
fn counting(id: &str, mut f: impl FnMut() -> u16) -> bool {
    let Ok(spec) = std::env::var("AUTH_BENCH_COUNT") else {
        return false;
    };
    if let Some((case, n)) = spec.rsplit_once('=')
        && case == id
    {
        let n: u64 = n.parse().expect("AUTH_BENCH_COUNT=<id>=<n>");
        // AUTH_BENCH_ROUNDS=<r>: `r` timed rounds of `n`, the fastest printed (on a loaded
        // machine the least disturbed round is the closest to the real cost)
        let rounds: u32 = std::env::var("AUTH_BENCH_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(1);
        let mut best = f64::INFINITY;
        for _ in 0..rounds {
            let t = std::time::Instant::now();
            for _ in 0..n {
                black_box(f());
            }
            best = best.min(t.elapsed().as_nanos() as f64 / n.max(1) as f64);
        }
        eprintln!("{id}: {n} iterations, fastest of {rounds} rounds {best:.1} ns/iter");
    }
    true
}

criterion_group!(benches, api_key, jwt, introspection);

fn main() {
    if std::env::var_os("AUTH_BENCH_COUNT").is_some() {
        let mut c = Criterion::default();
        api_key(&mut c);
        jwt(&mut c);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
