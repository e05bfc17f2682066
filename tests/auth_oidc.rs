//! Interop with a real OpenID Connect server: node `oidc-provider` (tests/oidc/server.mjs,
//! version pinned in tests/oidc/package-lock.json), started by the test on a free loopback
//! port. Client-credentials access tokens are obtained over HTTP from its token endpoint:
//! JWTs (RFC 9068, asked for with a `resource`) are verified by a `JwtVerifier` built from
//! OIDC discovery, opaque ones by an `Introspector` at its introspection endpoint, both
//! inside an `AuthLayer` around an axum app over loopback TCP.
//!
//! Needs `node` and `npm`; the pinned packages are installed with `npm ci --prefix
//! tests/oidc` when missing. Without Node.js the tests fail and say so.

#![cfg(all(feature = "auth", feature = "axum"))]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::Value;
use tower_shield::Principal;
use tower_shield::auth::{AuthLayer, Introspector, JwtVerifier, TokenError};
use tower_shield::clock::ManualClock;

const RESOURCE: &str = "https://api.example.test";
const CLIENT: (&str, &str) = ("shop-client", "shop-client-secret");
const RESOURCE_SERVER: (&str, &str) = ("shop-api", "shop-api-secret");
const INSTALL: &str = "npm ci --prefix tests/oidc";
const INVALID: &str = r#"Bearer realm="shop", error="invalid_token", error_description="The access token is invalid""#;

// ---------------------------------------------------------------------------------------
// The provider, a child process killed on drop (and exiting by itself on stdin EOF)

struct OidcServer {
    child: Child,
    stdin: Option<ChildStdin>,
    issuer: String,
}

impl Drop for OidcServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn oidc_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// Installs the pinned npm packages (`npm ci`, from the committed lockfile) once per test
/// run when they are missing, so `cargo test` alone works on a fresh machine with Node.js.
fn ensure_packages(dir: &std::path::Path) {
    static INSTALLED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if *done
        || dir
            .join("node_modules/oidc-provider/package.json")
            .is_file()
    {
        *done = true;
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(dir)
        .status()
        .unwrap_or_else(|e| {
            panic!("`npm` not found ({e}): install Node.js and npm, then `{INSTALL}`")
        });
    assert!(status.success(), "`{INSTALL}` failed ({status})");
    *done = true;
}

/// Starts `node tests/oidc/server.mjs 0` and waits for its `READY <issuer>` line. Fails
/// (never skips) when node or the npm packages are missing.
fn start_provider() -> OidcServer {
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "`node --version` failed ({}): the OIDC interop test needs Node.js (Debian: \
             apt-get install nodejs npm) and then `{INSTALL}`",
            o.status
        ),
        Err(e) => panic!(
            "`node` not found ({e}): the OIDC interop test needs Node.js (Debian: apt-get \
             install nodejs npm) and then `{INSTALL}`"
        ),
    }
    let dir = oidc_dir();
    ensure_packages(&dir);
    assert!(
        dir.join("node_modules/oidc-provider/package.json")
            .is_file(),
        "tests/oidc/node_modules/oidc-provider is missing and `{INSTALL}` did not install it"
    );
    let mut child = Command::new("node")
        .arg(dir.join("server.mjs"))
        .arg("0")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node tests/oidc/server.mjs");
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let errors = Arc::new(Mutex::new(String::new()));
    let sink = errors.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next();
        let _ = tx.send(first);
        for _ in lines {} // keep the pipe drained
    });
    let mut server = OidcServer {
        child,
        stdin,
        issuer: String::new(),
    };
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Some(Ok(line))) => line,
        other => {
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "oidc-provider did not start ({other:?}); its stderr:\n{}\n(is `{INSTALL}` done?)",
                errors.lock().unwrap()
            );
        }
    };
    server.issuer = line
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("unexpected first line from server.mjs: {line:?}"))
        .to_owned();
    server
}

// ---------------------------------------------------------------------------------------
// Talking to the provider as an OAuth client would

struct Endpoints {
    token: String,
    introspection: String,
    revocation: String,
}

async fn discover(http: &reqwest::Client, issuer: &str) -> Endpoints {
    let doc: Value = http
        .get(format!("{issuer}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], issuer);
    let s = |k: &str| {
        doc[k]
            .as_str()
            .unwrap_or_else(|| panic!("discovery lacks {k}"))
            .to_owned()
    };
    Endpoints {
        token: s("token_endpoint"),
        introspection: s("introspection_endpoint"),
        revocation: s("revocation_endpoint"),
    }
}

/// A client-credentials access token; with `resource` the provider issues a JWT.
async fn token(
    http: &reqwest::Client,
    ep: &Endpoints,
    scope: &str,
    resource: Option<&str>,
) -> String {
    let mut form = vec![("grant_type", "client_credentials"), ("scope", scope)];
    if let Some(r) = resource {
        form.push(("resource", r));
    }
    let res = http
        .post(&ep.token)
        .basic_auth(CLIENT.0, Some(CLIENT.1))
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert!(status.is_success(), "token endpoint: {status} {body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], scope);
    body["access_token"].as_str().unwrap().to_owned()
}

async fn revoke(http: &reqwest::Client, ep: &Endpoints, token: &str) {
    let res = http
        .post(&ep.revocation)
        .basic_auth(RESOURCE_SERVER.0, Some(RESOURCE_SERVER.1))
        .form(&[("token", token), ("token_type_hint", "access_token")])
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "revocation: {}", res.status());
}

fn jwt_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&B64.decode(part).unwrap()).unwrap()
}

// ---------------------------------------------------------------------------------------
// The protected API

async fn serve(auth: AuthLayer) -> SocketAddr {
    let who = |p: Principal| async move {
        let scopes: Vec<&str> = p.scopes().iter().map(String::as_str).collect();
        format!(
            "{} {} client={} scopes={}",
            p.kind().as_str(),
            p.id(),
            p.client_id().unwrap_or("-"),
            scopes.join(",")
        )
    };
    let app = Router::new()
        .route("/products/{id}", get(who))
        .route("/orders", post(who))
        .layer(auth);
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

fn routes(b: tower_shield::auth::AuthLayerBuilder) -> AuthLayer {
    b.realm("shop")
        .require("GET /products/*", ["products:read"])
        .unwrap()
        .require("POST /orders", ["orders:write"])
        .unwrap()
        .build()
        .unwrap()
}

#[derive(Debug)]
struct Answer {
    status: u16,
    challenge: Option<String>,
    body: String,
}

async fn call(req: reqwest::RequestBuilder, token: Option<&str>) -> Answer {
    let req = match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    let res = req.send().await.unwrap();
    Answer {
        status: res.status().as_u16(),
        challenge: res
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: res.text().await.unwrap(),
    }
}

// ---------------------------------------------------------------------------------------
// JWT access tokens: discovery + JWKS

#[tokio::test]
async fn jwt_access_tokens_from_oidc_provider_are_verified_via_discovery() {
    let server = start_provider();
    let iss = server.issuer.clone();
    let http = reqwest::Client::new();
    let ep = discover(&http, &iss).await;

    let read = token(&http, &ep, "products:read", Some(RESOURCE)).await;
    let write = token(&http, &ep, "products:read orders:write", Some(RESOURCE)).await;
    let opaque = token(&http, &ep, "products:read", None).await;

    // what the provider issued: an RFC 9068 JWT for the resource, signed with a JWKS key
    let header = jwt_part(&read, 0);
    let claims = jwt_part(&read, 1);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "RS256");
    assert_eq!(claims["iss"], iss.as_str());
    assert_eq!(claims["aud"], RESOURCE);
    assert_eq!(claims["client_id"], CLIENT.0);
    assert_eq!(opaque.matches('.').count(), 0, "expected an opaque token");

    let verifier = JwtVerifier::builder()
        .discovery(iss.clone())
        .audience(RESOURCE)
        .build()
        .unwrap();
    assert!(
        verifier.ready(Duration::from_secs(10)).await,
        "JWKS not fetched via discovery"
    );
    let keys = verifier.key_set();
    assert!(keys.contains(header["kid"].as_str().unwrap()), "{keys:?}");
    assert!(keys.contains("interop-es256"), "{keys:?}");

    // the audience is checked: the same verifier for another API refuses the token
    let other = JwtVerifier::builder()
        .discovery(iss.clone())
        .audience("https://other-api.example.test")
        .build()
        .unwrap();
    assert!(other.ready(Duration::from_secs(10)).await);
    assert_eq!(other.verify(&write), Err(TokenError::Invalid));
    assert!(verifier.verify(&write).is_ok());

    let addr = serve(routes(AuthLayer::builder().jwt(verifier))).await;
    let products = || http.get(format!("http://{addr}/products/7"));
    let orders = || http.post(format!("http://{addr}/orders"));

    // accepted; the handler sees the principal with the provider's scopes and client id
    let a = call(products(), Some(&read)).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.body,
        "jwt shop-client client=shop-client scopes=products:read"
    );
    let a = call(orders(), Some(&write)).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.body,
        "jwt shop-client client=shop-client scopes=orders:write,products:read"
    );

    // a scope the token lacks
    let a = call(orders(), Some(&read)).await;
    assert_eq!(a.status, 403, "{a:?}");
    assert_eq!(
        a.challenge.as_deref(),
        Some(r#"Bearer realm="shop", error="insufficient_scope", scope="orders:write""#)
    );

    // tampered payload (scopes widened, signature kept) and tampered signature
    let mut forged = jwt_part(&read, 1);
    forged["scope"] = "products:read orders:write".into();
    let parts: Vec<&str> = read.split('.').collect();
    let widened = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(forged.to_string()),
        parts[2]
    );
    let a = call(orders(), Some(&widened)).await;
    assert_eq!(a.status, 401, "{a:?}");
    assert_eq!(a.challenge.as_deref(), Some(INVALID));
    let mut sig = B64.decode(parts[2]).unwrap();
    sig[10] ^= 0x01;
    let bad_sig = format!("{}.{}.{}", parts[0], parts[1], B64.encode(&sig));
    let a = call(products(), Some(&bad_sig)).await;
    assert_eq!(a.status, 401, "{a:?}");
    assert_eq!(a.challenge.as_deref(), Some(INVALID));

    // an opaque token means nothing to a JWT-only layer; no token at all is a bare challenge
    let a = call(products(), Some(&opaque)).await;
    assert_eq!(a.status, 401, "{a:?}");
    assert_eq!(a.challenge.as_deref(), Some(INVALID));
    let a = call(products(), None).await;
    assert_eq!(a.status, 401, "{a:?}");
    assert_eq!(a.challenge.as_deref(), Some(r#"Bearer realm="shop""#));

    drop(server);
}

// ---------------------------------------------------------------------------------------
// Opaque access tokens: introspection (RFC 7662) with client authentication

#[tokio::test]
async fn opaque_tokens_from_oidc_provider_are_validated_by_introspection() {
    let server = start_provider();
    let http = reqwest::Client::new();
    let ep = discover(&http, &server.issuer).await;

    let read = token(&http, &ep, "products:read", None).await;
    let write = token(&http, &ep, "products:read orders:write", None).await;
    let revoked = token(&http, &ep, "products:read", None).await;
    revoke(&http, &ep, &revoked).await;

    let clock = ManualClock::new();
    let introspector = Introspector::builder(ep.introspection.clone(), RESOURCE_SERVER.0)
        .client_secret(RESOURCE_SERVER.1)
        .clock(Arc::new(clock.clone()))
        .max_cache_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let addr = serve(routes(AuthLayer::builder().introspection(introspector))).await;
    let products = || http.get(format!("http://{addr}/products/7"));
    let orders = || http.post(format!("http://{addr}/orders"));

    // accepted, scopes and client id from the introspection answer
    let a = call(products(), Some(&read)).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.body,
        "introspection shop-client client=shop-client scopes=products:read"
    );
    let a = call(orders(), Some(&write)).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.body,
        "introspection shop-client client=shop-client scopes=orders:write,products:read"
    );
    let a = call(orders(), Some(&read)).await;
    assert_eq!(a.status, 403, "{a:?}");
    assert_eq!(
        a.challenge.as_deref(),
        Some(r#"Bearer realm="shop", error="insufficient_scope", scope="orders:write""#)
    );

    // revoked before use, and a token the provider never issued
    let a = call(products(), Some(&revoked)).await;
    assert_eq!(a.status, 401, "{a:?}");
    assert_eq!(a.challenge.as_deref(), Some(INVALID));
    let a = call(
        products(),
        Some("G4rbageTokenThatTheProviderNeverIssued0000"),
    )
    .await;
    assert_eq!(a.status, 401, "{a:?}");
    assert_eq!(a.challenge.as_deref(), Some(INVALID));

    // revoked after use: the cached answer holds until the cache lifetime ends, not longer
    revoke(&http, &ep, &read).await;
    let a = call(products(), Some(&read)).await;
    assert_eq!(a.status, 200, "cached active answer: {a:?}");
    clock.advance(Duration::from_secs(61));
    let a = call(products(), Some(&read)).await;
    assert_eq!(a.status, 401, "revocation seen after the cache TTL: {a:?}");
    assert_eq!(a.challenge.as_deref(), Some(INVALID));
    let a = call(orders(), Some(&write)).await;
    assert_eq!(a.status, 200, "{a:?}");

    // client authentication is real: a wrong secret is refused by the provider, which the
    // layer reports as the endpoint failing (503 by default), never as a valid token
    let wrong = Introspector::builder(ep.introspection.clone(), RESOURCE_SERVER.0)
        .client_secret("not-the-secret")
        .build()
        .unwrap();
    let addr = serve(routes(AuthLayer::builder().introspection(wrong))).await;
    let a = call(http.get(format!("http://{addr}/products/7")), Some(&write)).await;
    assert_eq!(a.status, 503, "{a:?}");
    assert!(
        a.body.contains("authorization server is unavailable"),
        "{a:?}"
    );

    drop(server);
}
