//! The auth lockout in Redis against a real `redis-server` started by the test on a free
//! port: a fleet shares bans; Redis down follows the failure mode.
#![cfg(all(feature = "auth", feature = "redis", feature = "axum"))]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use http::StatusCode;
use tower_shield::auth::{
    ApiKeyFormat, ApiKeyRecord, AuthLayer, GeneratedKey, KeyHasher, LockoutPolicy, LockoutStore,
    MemoryKeyStore, RedisLockoutStore, RouteRule,
};
use tower_shield::client_ip::ClientIpResolver;
use tower_shield::store::FailureMode;
use tower_shield::store::redis::RedisConn;

#[path = "support/redis_server.rs"]
mod redis_server;
use redis_server::RedisServer;

fn conn(url: &str, prefix: &str) -> RedisConn {
    RedisConn::builder(url)
        .key_prefix(prefix)
        .timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(200))
        .build_lazy()
        .unwrap()
}

fn policy() -> LockoutPolicy {
    let mut p = LockoutPolicy::new(3, Duration::from_secs(60), Duration::from_secs(100));
    p.max_ban = Duration::from_secs(1000);
    p
}

fn key_store(key: &GeneratedKey) -> MemoryKeyStore {
    let h = KeyHasher::sha256();
    MemoryKeyStore::new().with(
        ApiKeyRecord::new(
            key.key_id(),
            h.parse_hash(&h.hash(key.secret()), "h").unwrap(),
        )
        .client_id("reader")
        .scopes(["products:read"]),
    )
}

/// One instance of the fleet: its own layer and connection, the shared Redis.
async fn instance(url: &str, prefix: &str, mode: FailureMode, key: &GeneratedKey) -> SocketAddr {
    let auth = AuthLayer::builder()
        .realm("shop")
        .api_keys(key_store(key))
        .resolver(
            ClientIpResolver::builder()
                .trusted_proxy("127.0.0.1/32")
                .unwrap()
                .build(),
        )
        .require("GET /products/*", ["products:read"])
        .unwrap()
        .route("POST /login", RouteRule::public().login())
        .unwrap()
        .lockout(policy())
        .lockout_redis(RedisLockoutStore::new(conn(url, prefix)), mode)
        .login_username_field("username")
        .build()
        .unwrap();
    let app = Router::new()
        .route("/products/{id}", get(|| async { "product" }))
        .route(
            "/login",
            post(|body: String| async move {
                if body.contains("password=right") {
                    (StatusCode::OK, "welcome")
                } else {
                    (StatusCode::UNAUTHORIZED, "no")
                }
            }),
        )
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

struct Answer {
    status: u16,
    retry_after: Option<u64>,
}

async fn get_product(addr: SocketAddr, from: &str, key: &str) -> Answer {
    let res = reqwest::Client::new()
        .get(format!("http://{addr}/products/1"))
        .header("x-forwarded-for", from)
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    answer(res)
}

async fn login(addr: SocketAddr, from: &str, user: &str, password: &str) -> Answer {
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/login"))
        .header("x-forwarded-for", from)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("username={user}&password={password}"))
        .send()
        .await
        .unwrap();
    answer(res)
}

fn answer(res: reqwest::Response) -> Answer {
    Answer {
        status: res.status().as_u16(),
        retry_after: res
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse().unwrap()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_bans() {
    let redis = RedisServer::start();
    let key = ApiKeyFormat::default().generate();
    let a = instance(&redis.url(), "fleet", FailureMode::Reject, &key).await;
    let b = instance(&redis.url(), "fleet", FailureMode::Reject, &key).await;

    // bad keys from one address, spread over both instances
    let bad = "tsk_0000_notarealkey";
    assert_eq!(get_product(a, "198.51.100.7", bad).await.status, 401);
    assert_eq!(get_product(b, "198.51.100.7", bad).await.status, 401);
    assert_eq!(
        get_product(a, "198.51.100.7", key.secret()).await.status,
        200
    );
    assert_eq!(get_product(b, "198.51.100.7", bad).await.status, 401);
    // the third failure banned the address on both instances, valid key or not
    for addr in [a, b] {
        let r = get_product(addr, "198.51.100.7", key.secret()).await;
        assert_eq!(r.status, 429);
        let wait = r.retry_after.unwrap();
        assert!((99..=100).contains(&wait), "{wait}");
    }
    // other addresses are not affected
    assert_eq!(
        get_product(b, "198.51.100.8", key.secret()).await.status,
        200
    );
    // the state is one hash per key, tagged by the key, expiring by itself
    let k = "fleet:lockout:{ip:198.51.100.7}";
    assert_eq!(redis.cli(&["HGET", k, "o"]), "1");
    let ttl: i64 = redis.cli(&["PTTL", k]).parse().unwrap();
    assert!(ttl > 90_000, "{ttl}");

    // login watching: the app's 401s count for the username across instances and addresses
    assert_eq!(login(a, "203.0.113.1", "Carol", "wrong").await.status, 401);
    assert_eq!(login(b, "203.0.113.2", "carol", "wrong").await.status, 401);
    assert_eq!(login(a, "203.0.113.3", "carol", "wrong").await.status, 401);
    let r = login(b, "203.0.113.4", "carol", "right").await;
    assert_eq!(r.status, 429, "the account is banned fleet-wide");
    assert!(r.retry_after.is_some());
    assert_eq!(login(b, "203.0.113.4", "dave", "right").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_follows_the_failure_mode() {
    let mut redis = RedisServer::start();
    let key = ApiKeyFormat::default().generate();
    let reject = instance(&redis.url(), "reject", FailureMode::Reject, &key).await;
    let allow = instance(&redis.url(), "allow", FailureMode::Allow, &key).await;
    let local = instance(&redis.url(), "local", FailureMode::LocalFallback, &key).await;
    for addr in [reject, allow, local] {
        assert_eq!(
            get_product(addr, "192.0.2.1", key.secret()).await.status,
            200
        );
    }
    redis.kill();

    // reject: fail closed, every request refused with 503
    let r = get_product(reject, "192.0.2.1", key.secret()).await;
    assert_eq!((r.status, r.retry_after), (503, Some(1)));
    assert_eq!(
        login(reject, "192.0.2.1", "erin", "right").await.status,
        503
    );
    // allow: fail open, no lockout at all
    for _ in 0..5 {
        assert_eq!(
            get_product(allow, "192.0.2.1", "tsk_0000_bad").await.status,
            401
        );
    }
    assert_eq!(
        get_product(allow, "192.0.2.1", key.secret()).await.status,
        200
    );
    // local fallback: this instance counts and bans in its own memory
    for _ in 0..3 {
        assert_eq!(
            get_product(local, "192.0.2.1", "tsk_0000_bad").await.status,
            401
        );
    }
    let r = get_product(local, "192.0.2.1", key.secret()).await;
    assert_eq!((r.status, r.retry_after), (429, Some(100)));

    // Redis back: shared decisions resume (the reconnect may take a moment)
    redis.spawn();
    let mut status = 0;
    for _ in 0..100 {
        status = get_product(reject, "192.0.2.1", key.secret()).await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);
}

#[tokio::test]
async fn bans_grow_on_repeat_offences_and_windows_expire() {
    let redis = RedisServer::start();
    let store = RedisLockoutStore::new(conn(&redis.url(), "grow"));
    let mut p = LockoutPolicy::new(2, Duration::from_millis(400), Duration::from_millis(300));
    p.max_ban = Duration::from_millis(700);
    p.forget_after = Duration::from_secs(60);

    // failures further apart than the window do not add up
    assert_eq!(store.fail("k", &p).await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(store.fail("k", &p).await.unwrap(), None);
    // two within the window: banned 300 ms, then 600, then capped at 700
    let mut bans = Vec::new();
    for _ in 0..3 {
        let mut ban = store.fail("k", &p).await.unwrap();
        if ban.is_none() {
            ban = store.fail("k", &p).await.unwrap();
        }
        let ban = ban.expect("banned");
        bans.push(ban.as_millis());
        let left = store.banned("k").await.unwrap().expect("still banned");
        assert!(left <= ban && left > ban / 2, "{left:?} of {ban:?}");
        assert_eq!(
            store.fail("k", &p).await.unwrap(),
            None,
            "no extension while banned"
        );
        tokio::time::sleep(ban + Duration::from_millis(20)).await;
        assert_eq!(store.banned("k").await.unwrap(), None);
    }
    assert_eq!(bans, [300, 600, 700]);
    // a success resets the window's count
    assert_eq!(store.fail("j", &p).await.unwrap(), None);
    store.succeed("j").await.unwrap();
    assert_eq!(store.fail("j", &p).await.unwrap(), None);
    assert!(store.fail("j", &p).await.unwrap().is_some());
}
