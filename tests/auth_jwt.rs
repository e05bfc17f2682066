//! JWT attack suite, JWKS rotation, issuer outage and OIDC discovery (JWKS served by axum
//! on loopback).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_shield::auth::{AuthLayer, JwtVerifier};
use tower_shield::clock::{Clock, ManualClock};
use tower_shield::{CredentialKind, Principal};

const RSA1: &[u8] = include_bytes!("data/rsa1.pem");
const RSA1_PUB: &[u8] = include_bytes!("data/rsa1.pub.pem");
const RSA2: &[u8] = include_bytes!("data/rsa2.pem");
const EC1: &[u8] = include_bytes!("data/ec1.pem");
const EC1_PUB: &[u8] = include_bytes!("data/ec1.pub.pem");
const ISS: &str = "https://issuer.example";
const AUD: &str = "https://api.example";

fn now(clock: &ManualClock) -> u64 {
    clock.wall().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(clock: &ManualClock) -> serde_json::Value {
    let t = now(clock);
    json!({"iss": ISS, "aud": AUD, "sub": "user-1", "client_id": "app", "exp": t + 300,
           "iat": t, "scope": "products:read"})
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, c: &serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    encode(&h, c, key).unwrap()
}

fn rsa1() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA1).unwrap()
}

type Svc = tower::util::BoxCloneService<Request<()>, Response<Full<Bytes>>, Infallible>;

fn service(verifier: JwtVerifier) -> Svc {
    let auth = AuthLayer::builder()
        .realm("shop")
        .jwt(verifier)
        .require("GET /products", ["products:read"])
        .unwrap()
        .require("POST /orders", ["orders:write"])
        .unwrap()
        .build()
        .unwrap();
    tower::util::BoxCloneService::new(ServiceBuilder::new().layer(auth).service_fn(
        |req: Request<()>| async move {
            let p = req.extensions().get::<Principal>().unwrap();
            assert_eq!(p.kind(), CredentialKind::Jwt);
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(p.id().to_owned()))))
        },
    ))
}

fn static_verifier(clock: &ManualClock) -> JwtVerifier {
    JwtVerifier::builder()
        .rsa_pem(RSA1_PUB, Some("rsa1"))
        .ec_pem(EC1_PUB, Some("ec1"))
        .issuer(ISS)
        .audience(AUD)
        .leeway(Duration::from_secs(10))
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap()
}

async fn call(svc: &Svc, token: &str) -> (u16, String) {
    call_req(
        svc,
        Request::get("/products")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap(),
    )
    .await
}

async fn call_req(svc: &Svc, req: Request<()>) -> (u16, String) {
    let res = svc.clone().oneshot(req).await.unwrap();
    let ch = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (res.status().as_u16(), ch)
}

const INVALID: &str = r#"Bearer realm="shop", error="invalid_token", error_description="The access token is invalid""#;

fn forge(header: serde_json::Value, claims: &serde_json::Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string()),
        B64.encode(sig)
    )
}

#[tokio::test]
async fn jwt_attack_suite_gets_the_right_rfc6750_answers() {
    let clock = ManualClock::new();
    let svc = service(static_verifier(&clock));
    let c = claims(&clock);
    let good = sign(Algorithm::RS256, &rsa1(), Some("rsa1"), &c);
    assert_eq!(call(&svc, &good).await, (200, String::new()));
    let es = sign(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(EC1).unwrap(),
        Some("ec1"),
        &c,
    );
    assert_eq!(call(&svc, &es).await.0, 200);

    // alg none (with and without a signature part)
    let none = forge(json!({"alg":"none","typ":"JWT","kid":"rsa1"}), &c, b"");
    assert_eq!(call(&svc, &none).await, (401, INVALID.into()));
    let none2 = format!("{}.", none.trim_end_matches('.'));
    assert_eq!(call(&svc, &none2).await.0, 401);

    // the RSA public key used as an HMAC secret (HS/RS confusion)
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA1_PUB),
        Some("rsa1"),
        &c,
    );
    assert_eq!(call(&svc, &confused).await, (401, INVALID.into()));
    // an ES256 signature presented for the RSA key id
    let cross = sign(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(EC1).unwrap(),
        Some("rsa1"),
        &c,
    );
    assert_eq!(call(&svc, &cross).await, (401, INVALID.into()));

    // tampered payload (scope escalation) and tampered signature
    let parts: Vec<&str> = good.split('.').collect();
    let mut evil = c.clone();
    evil["scope"] = json!("products:read orders:write admin");
    let tampered = format!("{}.{}.{}", parts[0], B64.encode(evil.to_string()), parts[2]);
    assert_eq!(call(&svc, &tampered).await, (401, INVALID.into()));
    let mut sig = B64.decode(parts[2]).unwrap();
    sig[10] ^= 1;
    let bad_sig = format!("{}.{}.{}", parts[0], parts[1], B64.encode(sig));
    assert_eq!(call(&svc, &bad_sig).await, (401, INVALID.into()));

    // expired (beyond the 10 s leeway), not yet valid
    let mut exp = c.clone();
    exp["exp"] = json!(now(&clock) - 11);
    let expired = sign(Algorithm::RS256, &rsa1(), Some("rsa1"), &exp);
    assert_eq!(
        call(&svc, &expired).await,
        (
            401,
            r#"Bearer realm="shop", error="invalid_token", error_description="The access token expired""#.into()
        )
    );
    exp["exp"] = json!(now(&clock) - 5);
    let within_leeway = sign(Algorithm::RS256, &rsa1(), Some("rsa1"), &exp);
    assert_eq!(call(&svc, &within_leeway).await.0, 200);
    let mut nbf = c.clone();
    nbf["nbf"] = json!(now(&clock) + 60);
    let early = sign(Algorithm::RS256, &rsa1(), Some("rsa1"), &nbf);
    let (s, ch) = call(&svc, &early).await;
    assert_eq!(s, 401);
    assert!(ch.contains(r#"error="invalid_token""#), "{ch}");
    let mut no_exp = c.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let no_exp = sign(Algorithm::RS256, &rsa1(), Some("rsa1"), &no_exp);
    assert_eq!(call(&svc, &no_exp).await, (401, INVALID.into()));

    // wrong issuer, wrong audience, missing audience
    for (k, v) in [
        ("iss", json!("https://evil.example")),
        ("aud", json!("https://other.example")),
        ("aud", json!(null)),
    ] {
        let mut w = c.clone();
        if v.is_null() {
            w.as_object_mut().unwrap().remove(k);
        } else {
            w[k] = v;
        }
        let t = sign(Algorithm::RS256, &rsa1(), Some("rsa1"), &w);
        assert_eq!(call(&svc, &t).await, (401, INVALID.into()), "{k}");
    }

    // unknown kid, path-like kid
    for kid in ["nope", "../../../../etc/passwd", "/dev/null", "rsa1\u{0}"] {
        let t = sign(Algorithm::RS256, &rsa1(), Some(kid), &c);
        assert_eq!(call(&svc, &t).await, (401, INVALID.into()), "{kid:?}");
    }

    // oversized token
    let mut big = c.clone();
    big["pad"] = json!("x".repeat(20_000));
    let big = sign(Algorithm::RS256, &rsa1(), Some("rsa1"), &big);
    assert_eq!(call(&svc, &big).await, (401, INVALID.into()));

    // token in two places; two Authorization headers
    let req = Request::get("/products")
        .header("authorization", format!("Bearer {good}"))
        .header("x-api-key", &good)
        .body(())
        .unwrap();
    assert_eq!(
        call_req(&svc, req).await,
        (
            400,
            r#"Bearer realm="shop", error="invalid_request""#.into()
        )
    );
    let req = Request::get("/products")
        .header("authorization", format!("Bearer {good}"))
        .header("authorization", format!("Bearer {good}"))
        .body(())
        .unwrap();
    assert_eq!(call_req(&svc, req).await.0, 400);

    // jku / x5u / jwk headers pointing elsewhere are ignored: an attacker key is never used
    let attacker = EncodingKey::from_rsa_pem(RSA2).unwrap();
    let attacker_jwk = Jwk::from_encoding_key(&attacker, Algorithm::RS256).unwrap();
    for kid in ["rsa1", "attacker"] {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        h.jku = Some("http://127.0.0.1:1/jwks.json".into());
        h.x5u = Some("http://127.0.0.1:1/cert.pem".into());
        h.jwk = Some(attacker_jwk.clone());
        let t = encode(&h, &c, &attacker).unwrap();
        assert_eq!(call(&svc, &t).await, (401, INVALID.into()), "{kid}");
    }
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rsa1".into());
    h.jku = Some("http://127.0.0.1:1/jwks.json".into());
    let honest = encode(&h, &c, &rsa1()).unwrap();
    assert_eq!(
        call(&svc, &honest).await.0,
        200,
        "the header is merely ignored"
    );

    // typ: at+jwt accepted (RFC 9068), other types refused; crit refused
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rsa1".into());
    h.typ = Some("at+jwt".into());
    assert_eq!(call(&svc, &encode(&h, &c, &rsa1()).unwrap()).await.0, 200);
    h.typ = Some("dpop+jwt".into());
    assert_eq!(call(&svc, &encode(&h, &c, &rsa1()).unwrap()).await.0, 401);
    h.typ = None;
    h.crit = Some(vec!["exp".into()]);
    assert_eq!(call(&svc, &encode(&h, &c, &rsa1()).unwrap()).await.0, 401);

    // scopes from the token: 403 insufficient_scope
    let req = Request::post("/orders")
        .header("authorization", format!("Bearer {good}"))
        .body(())
        .unwrap();
    assert_eq!(
        call_req(&svc, req).await,
        (
            403,
            r#"Bearer realm="shop", error="insufficient_scope", scope="orders:write""#.into()
        )
    );
    let mut scp = c.clone();
    scp.as_object_mut().unwrap().remove("scope");
    scp["scp"] = json!(["orders:write"]);
    let t = sign(Algorithm::RS256, &rsa1(), Some("rsa1"), &scp);
    let req = Request::post("/orders")
        .header("authorization", format!("Bearer {t}"))
        .body(())
        .unwrap();
    assert_eq!(call_req(&svc, req).await.0, 200);
}

#[test]
fn hmac_secrets_only_verify_hs_algorithms() {
    let clock = ManualClock::new();
    let secret = b"an hmac secret of at least 32 bytes!!";
    let v = JwtVerifier::builder()
        .hmac_secret(&secret[..], Some("h"))
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    let c = json!({"sub":"s","exp": now(&clock) + 60});
    let t = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret),
        Some("h"),
        &c,
    );
    assert_eq!(v.verify(&t).unwrap().id(), "s");
    let t = sign(Algorithm::RS256, &rsa1(), Some("h"), &c);
    assert!(v.verify(&t).is_err());
}

// ---- remote keys

#[derive(Clone)]
struct Issuer {
    jwks: Arc<Mutex<String>>,
    down: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
    base: Arc<Mutex<String>>,
}

fn jwks_of(keys: &[(&EncodingKey, &str)]) -> String {
    let keys = keys
        .iter()
        .map(|(k, kid)| {
            let mut j = Jwk::from_encoding_key(k, Algorithm::RS256).unwrap();
            j.common.key_id = Some((*kid).to_owned());
            j
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

async fn serve_issuer(initial: String) -> (SocketAddr, Issuer) {
    use axum::extract::State;
    let st = Issuer {
        jwks: Arc::new(Mutex::new(initial)),
        down: Arc::default(),
        fetches: Arc::default(),
        base: Arc::default(),
    };
    let app = Router::new()
        .route(
            "/jwks.json",
            get(|State(s): State<Issuer>| async move {
                s.fetches.fetch_add(1, Ordering::SeqCst);
                if s.down.load(Ordering::SeqCst) {
                    return (http::StatusCode::SERVICE_UNAVAILABLE, String::new());
                }
                (http::StatusCode::OK, s.jwks.lock().unwrap().clone())
            }),
        )
        .route(
            "/.well-known/openid-configuration",
            get(|State(s): State<Issuer>| async move {
                let base = s.base.lock().unwrap().clone();
                json!({"issuer": base, "jwks_uri": format!("{base}/jwks.json")}).to_string()
            }),
        )
        .with_state(st.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    *st.base.lock().unwrap() = format!("http://{addr}");
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, st)
}

#[tokio::test]
async fn jwks_rotation_cooldown_and_issuer_outage() {
    let clock = ManualClock::new();
    let k1 = rsa1();
    let k2 = EncodingKey::from_rsa_pem(RSA2).unwrap();
    let (addr, issuer) = serve_issuer(jwks_of(&[(&k1, "k1")])).await;
    let v = JwtVerifier::builder()
        .jwks_url(format!("http://{addr}/jwks.json"))
        .issuer(ISS)
        .audience(AUD)
        .clock(Arc::new(clock.clone()))
        .refresh_cooldown(Duration::from_secs(30))
        .refresh_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    assert!(v.ready(Duration::from_secs(5)).await);
    let svc = service(v.clone());
    let c = claims(&clock);
    assert_eq!(
        call(&svc, &sign(Algorithm::RS256, &k1, Some("k1"), &c))
            .await
            .0,
        200
    );
    let base = issuer.fetches.load(Ordering::SeqCst);

    // rotation: the issuer now publishes k2 only; within the cool-down an unknown kid does
    // not fetch, after it one fetch picks the new key up
    *issuer.jwks.lock().unwrap() = jwks_of(&[(&k2, "k2")]);
    let t2 = sign(Algorithm::RS256, &k2, Some("k2"), &c);
    assert_eq!(call(&svc, &t2).await.0, 401);
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), base);
    clock.advance(Duration::from_secs(30));
    assert_eq!(call(&svc, &t2).await.0, 200);
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), base + 1);
    // the removed key is gone
    assert_eq!(
        call(&svc, &sign(Algorithm::RS256, &k1, Some("k1"), &c))
            .await
            .0,
        401
    );

    // random kids cannot flood the issuer: at most one fetch per cool-down
    clock.advance(Duration::from_secs(30));
    let mut calls = Vec::new();
    for i in 0..50 {
        let t = sign(Algorithm::RS256, &k2, Some(&format!("random-{i}")), &c);
        let svc = svc.clone();
        calls.push(async move { call(&svc, &t).await.0 });
    }
    for status in futures_util::future::join_all(calls).await {
        assert_eq!(status, 401);
    }
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), base + 2);

    // issuer down: the refresh fails, the last good keys stay in use
    issuer.down.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(30));
    let t = sign(Algorithm::RS256, &k2, Some("unknown"), &c);
    assert_eq!(call(&svc, &t).await, (401, INVALID.into()));
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), base + 3);
    assert_eq!(call(&svc, &t2).await.0, 200);
    assert!(v.key_set().contains("k2"));
}

#[tokio::test]
async fn oidc_discovery_finds_the_jwks_and_pins_the_issuer() {
    let clock = ManualClock::new();
    let k1 = rsa1();
    let (addr, _issuer) = serve_issuer(jwks_of(&[(&k1, "k1")])).await;
    let base = format!("http://{addr}");
    let v = JwtVerifier::builder()
        .discovery(&base)
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    assert!(v.ready(Duration::from_secs(5)).await);
    let svc = service(v);
    let mut c = claims(&clock);
    c.as_object_mut().unwrap().remove("aud");
    c["iss"] = json!(base);
    assert_eq!(
        call(&svc, &sign(Algorithm::RS256, &k1, Some("k1"), &c))
            .await
            .0,
        200
    );
    c["iss"] = json!(ISS);
    assert_eq!(
        call(&svc, &sign(Algorithm::RS256, &k1, Some("k1"), &c))
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn an_unreachable_issuer_does_not_block_startup() {
    let clock = ManualClock::new();
    // a port nobody listens on
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let started = std::time::Instant::now();
    let v = JwtVerifier::builder()
        .jwks_url(format!("http://{addr}/jwks.json"))
        .clock(Arc::new(clock.clone()))
        .fetch_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(!v.ready(Duration::from_millis(300)).await);
    let mut svc = service(v);
    let t = sign(Algorithm::RS256, &rsa1(), Some("k1"), &claims(&clock));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(
            Request::get("/products")
                .header("authorization", format!("Bearer {t}"))
                .body(())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}
