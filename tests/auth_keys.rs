//! API keys through the layer: the header fast path answers like the general path for every
//! shape of request, old whole-key hashes keep working, and a store mixing hash formats
//! answers an unknown key id like a wrong secret.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_shield::Principal;
use tower_shield::auth::{
    ApiKeyFormat, ApiKeyRecord, AuthLayer, GeneratedKey, HashFormats, KeyHasher, KeyStore,
    MemoryKeyStore,
};

const INVALID: &str =
    r#"Bearer realm="api", error="invalid_token", error_description="The access token is invalid""#;
const INVALID_REQUEST: &str = r#"Bearer realm="api", error="invalid_request""#;

type Svc = tower::util::BoxCloneSyncService<Request<()>, Response<Full<Bytes>>, Infallible>;

fn service(auth: AuthLayer) -> Svc {
    let inner = tower::service_fn(|req: Request<()>| async move {
        let who = req
            .extensions()
            .get::<Principal>()
            .map(|p| p.id().to_owned())
            .unwrap_or_default();
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(who))))
    });
    tower::util::BoxCloneSyncService::new(ServiceBuilder::new().layer(auth).service(inner))
}

/// Status, challenge and (for 200) the principal id.
type Answer = (u16, Option<String>, String);
type Headers = Vec<(&'static str, Vec<u8>)>;

async fn answer(svc: &Svc, req: Request<()>) -> Answer {
    use http_body_util::BodyExt;
    let res = svc.clone().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let challenge = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let who = if status == 200 {
        String::from_utf8(body.to_vec()).unwrap()
    } else {
        String::new()
    };
    (status, challenge, who)
}

fn get(headers: &[(&str, &[u8])], uri: &str) -> Request<()> {
    let mut b = Request::get(uri);
    for (n, v) in headers {
        b = b.header(*n, HeaderValue::from_bytes(v).unwrap());
    }
    b.body(()).unwrap()
}

fn record(h: &KeyHasher, k: &GeneratedKey, client: &str, v2: bool) -> ApiKeyRecord {
    let stored = if v2 {
        h.digest(k.secret())
    } else {
        h.digest_whole_key(k.secret())
    };
    // the stored text round-trips as configuration would load it
    let stored = h.parse_hash(&h.encode(&stored), "hash").unwrap();
    assert_eq!(stored.is_v2(), v2);
    ApiKeyRecord::new(k.key_id(), stored).client_id(client)
}

#[tokio::test]
async fn fast_path_answers_like_the_general_path() {
    let f = ApiKeyFormat::default();
    let h = KeyHasher::sha256();
    let k = f.generate();
    let store = MemoryKeyStore::new().with(record(&h, &k, "c1", true));
    let auth = AuthLayer::builder()
        .api_keys(store)
        .api_key_query("api_key")
        .max_token_len(200)
        .build()
        .unwrap();
    let svc = service(auth);
    let key = k.secret().as_bytes();
    let pad = |pre: &[u8], post: &[u8]| [pre, key, post].concat();
    let bearer = |pre: &[u8]| [pre, key].concat();
    let ok = (200, None, "c1".to_owned());
    let invalid = (401, Some(INVALID.to_owned()), String::new());
    let bad_request = (400, Some(INVALID_REQUEST.to_owned()), String::new());
    let query_key = format!("/?api_key={}", k.secret());
    let mut long_key = f.generate().secret().to_owned();
    long_key.push_str(&"x".repeat(200));

    let cases: Vec<(Headers, &str, Answer)> = vec![
        // the key header, with optional whitespace around the value
        (vec![("x-api-key", key.to_vec())], "/", ok.clone()),
        (vec![("x-api-key", pad(b" \t", b"\t  "))], "/", ok.clone()),
        // bearer, any case of the scheme, several spaces
        (vec![("authorization", bearer(b"Bearer "))], "/", ok.clone()),
        (
            vec![("authorization", bearer(b"bEaReR    "))],
            "/",
            ok.clone(),
        ),
        // a trailing space after a bearer token is malformed
        (
            vec![("authorization", pad(b"Bearer ", b" "))],
            "/",
            bad_request.clone(),
        ),
        // a non-ASCII byte in the key header: malformed header
        (
            vec![("x-api-key", pad(b"", b"\xff"))],
            "/",
            bad_request.clone(),
        ),
        (
            vec![("x-api-key", pad(b"\xc3\xa9", b""))],
            "/",
            bad_request.clone(),
        ),
        // empty after trimming
        (
            vec![("x-api-key", b"  ".to_vec())],
            "/",
            bad_request.clone(),
        ),
        // a broken key in either place
        (vec![("x-api-key", pad(b"", b"x"))], "/", invalid.clone()),
        (
            vec![("authorization", pad(b"Bearer ", b"x"))],
            "/",
            invalid.clone(),
        ),
        // two credentials: header + bearer, two key headers, header + query key
        (
            vec![
                ("x-api-key", key.to_vec()),
                ("authorization", bearer(b"Bearer ")),
            ],
            "/",
            bad_request.clone(),
        ),
        (
            vec![("x-api-key", key.to_vec()), ("x-api-key", key.to_vec())],
            "/",
            bad_request.clone(),
        ),
        (
            vec![("x-api-key", key.to_vec())],
            &query_key,
            bad_request.clone(),
        ),
        // a query without the key parameter does not matter; the query key alone works
        (vec![("x-api-key", key.to_vec())], "/?q=1", ok.clone()),
        (vec![], &query_key, ok.clone()),
        // another scheme in Authorization is ignored when the key header is there
        (
            vec![
                ("authorization", b"Basic dXNlcjpwYXNz".to_vec()),
                ("x-api-key", key.to_vec()),
            ],
            "/",
            ok.clone(),
        ),
        // longer than max_token_len
        (
            vec![("x-api-key", long_key.into_bytes())],
            "/",
            invalid.clone(),
        ),
        // two Authorization headers
        (
            vec![
                ("authorization", bearer(b"Bearer ")),
                ("authorization", bearer(b"Bearer ")),
            ],
            "/",
            bad_request.clone(),
        ),
    ];
    // small header maps are scanned once, large ones looked up: the same answers, with the
    // credential headers before, between or after the others
    let fillers: Vec<String> = (0..24).map(|i| format!("x-filler-{i}")).collect();
    for (headers, uri, expect) in cases {
        for (before, after) in [(0, 0), (3, 4), (0, 20), (20, 0), (10, 10)] {
            let mut hs: Vec<(&str, &[u8])> = fillers[..before]
                .iter()
                .map(|n| (n.as_str(), &b"v"[..]))
                .collect();
            hs.extend(headers.iter().map(|(n, v)| (*n, v.as_slice())));
            hs.extend(
                fillers[before..before + after]
                    .iter()
                    .map(|n| (n.as_str(), &b"v"[..])),
            );
            assert_eq!(
                answer(&svc, get(&hs, uri)).await,
                expect,
                "{headers:?} {uri} {before}+{after} other headers"
            );
        }
    }
}

#[tokio::test]
async fn a_shared_memory_store_and_a_custom_store_answer_alike() {
    let f = ApiKeyFormat::default();
    let h = KeyHasher::sha256();
    let (k, other) = (f.generate(), f.generate());
    let store = MemoryKeyStore::new().with(record(&h, &k, "c1", true).scopes(["read"]));
    let shared = Arc::new(store);
    let counting = Arc::new(Counting {
        inner: MemoryKeyStore::new().with(record(&h, &k, "c1", true).scopes(["read"])),
        gets: AtomicUsize::new(0),
    });
    let layers = [
        AuthLayer::builder().api_keys(shared.clone()),
        AuthLayer::builder().api_key_store(shared.clone()),
        AuthLayer::builder().api_keys(counting.clone()),
    ];
    for b in layers {
        let svc = service(b.require("GET /w/*", ["write"]).unwrap().build().unwrap());
        let key = k.secret().as_bytes();
        assert_eq!(
            answer(&svc, get(&[("x-api-key", key)], "/r")).await,
            (200, None, "c1".to_owned())
        );
        assert_eq!(
            answer(&svc, get(&[("x-api-key", other.secret().as_bytes())], "/r")).await,
            (401, Some(INVALID.to_owned()), String::new())
        );
        let res = answer(&svc, get(&[("x-api-key", key)], "/w/1")).await;
        assert_eq!(res.0, 403, "{res:?}");
    }
    assert_eq!(counting.gets.load(Ordering::Relaxed), 3);
}

/// A store that counts lookups and declares the formats it is told to.
struct Counting {
    inner: MemoryKeyStore,
    gets: AtomicUsize,
}

impl KeyStore for Counting {
    fn get(&self, key_id: &str) -> Option<Arc<ApiKeyRecord>> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.get(key_id)
    }
}

#[tokio::test]
async fn old_whole_key_hashes_and_mixed_stores() {
    let f = ApiKeyFormat::default();
    for h in [
        KeyHasher::sha256(),
        KeyHasher::hmac_sha256(&[3u8; 32]).unwrap(),
    ] {
        let (old, new) = (f.generate(), f.generate());
        let store = MemoryKeyStore::new()
            .with(record(&h, &old, "old-client", false))
            .with(record(&h, &new, "new-client", true));
        assert_eq!(store.hash_formats(), HashFormats::BOTH);
        let svc = service(
            AuthLayer::builder()
                .key_hasher(h.clone())
                .api_keys(store)
                .build()
                .unwrap(),
        );
        let ask = |k: &str| get(&[("x-api-key", k.as_bytes())], "/products/1");
        let a = answer(&svc, ask(old.secret())).await;
        assert_eq!(a.2, "old-client", "{a:?} {h:?}");
        assert_eq!(answer(&svc, ask(new.secret())).await.2, "new-client");
        let bearer = format!("Bearer {}", old.secret());
        let req = get(&[("authorization", bearer.as_bytes())], "/");
        assert_eq!(answer(&svc, req).await.2, "old-client");

        // wrong secrets for both ids, and an unknown id: the same answer
        let wrong_old = f.generate_with_id(old.key_id()).unwrap();
        let wrong_new = f.generate_with_id(new.key_id()).unwrap();
        let unknown = f.generate();
        let mut answers = vec![];
        for k in [&wrong_old, &wrong_new, &unknown] {
            answers.push(answer(&svc, ask(k.secret())).await);
        }
        assert_eq!(answers[0], (401, Some(INVALID.to_owned()), String::new()));
        assert!(answers.iter().all(|a| *a == answers[0]));
    }

    // a custom store with the default `hash_formats` (both) and `visit` (through `get`)
    let h = KeyHasher::sha256();
    let k = f.generate();
    let store = Arc::new(Counting {
        inner: MemoryKeyStore::new().with(record(&h, &k, "custom", true)),
        gets: AtomicUsize::new(0),
    });
    assert_eq!(store.hash_formats(), HashFormats::BOTH);
    let mut svc = ServiceBuilder::new()
        .layer(
            AuthLayer::builder()
                .api_key_store(store.clone())
                .build()
                .unwrap(),
        )
        .service_fn(|req: Request<()>| async move {
            let p = req.extensions().get::<Principal>().cloned();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                p.map(|p| p.id().to_owned()).unwrap_or_default(),
            ))))
        });
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(get(&[("x-api-key", k.secret().as_bytes())], "/"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // a forged checksum is refused before any lookup
    let mut typo = k.secret().to_owned();
    let last = typo.pop().unwrap();
    typo.push(if last == '0' { '1' } else { '0' });
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(get(&[("x-api-key", typo.as_bytes())], "/"))
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(store.gets.load(Ordering::Relaxed), 1);
}
