//! The Redis store against a real `redis-server` started by the test on a free port.

use std::convert::Infallible;
use std::net::SocketAddr;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_shield::store::FailureMode;
use tower_shield::store::redis::RedisConn;
use tower_shield::throttle::{Policy, Rate, RedisRateStore, ThrottleLayer};

#[path = "support/redis_server.rs"]
mod redis_server;
use redis_server::RedisServer;

type Ready = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;
fn ok(_req: Request<()>) -> Ready {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from("ok")))))
}

fn req() -> Request<()> {
    let mut r = Request::new(());
    r.extensions_mut()
        .insert("192.0.2.1:1000".parse::<SocketAddr>().unwrap());
    r
}

fn layer(url: &str, prefix: &str, burst: u32, mode: FailureMode) -> ThrottleLayer {
    let conn = RedisConn::builder(url)
        .key_prefix(prefix)
        .timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(200))
        .build_lazy()
        .unwrap();
    ThrottleLayer::builder()
        .policy(Policy::rate("per-ip", Rate::per_hour(1)).burst(burst))
        .redis(RedisRateStore::new(conn), mode)
        .build()
        .unwrap()
}

async fn status(l: &ThrottleLayer) -> u16 {
    let svc = ServiceBuilder::new()
        .layer(l.clone())
        .service_fn(ok as fn(Request<()>) -> Ready);
    svc.oneshot(req()).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_global_limit_exactly() {
    let redis = RedisServer::start();
    let layers: Vec<_> = (0..3)
        .map(|_| layer(&redis.url(), "fleet", 50, FailureMode::Reject))
        .collect();
    let admitted = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..300 {
        let l = layers[i % 3].clone();
        let (admitted, limited) = (admitted.clone(), limited.clone());
        tasks.push(tokio::spawn(async move {
            match status(&l).await {
                200 => admitted.fetch_add(1, Ordering::SeqCst),
                429 => limited.fetch_add(1, Ordering::SeqCst),
                s => panic!("unexpected status {s}"),
            };
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(admitted.load(Ordering::SeqCst), 50);
    assert_eq!(limited.load(Ordering::SeqCst), 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_modes_when_redis_dies_and_limits_resume_after_restart() {
    let mut redis = RedisServer::start();
    let reject = layer(&redis.url(), "reject", 2, FailureMode::Reject);
    let allow = layer(&redis.url(), "allow", 2, FailureMode::Allow);
    let local = layer(&redis.url(), "local", 2, FailureMode::LocalFallback);
    for l in [&reject, &allow, &local] {
        assert_eq!(status(l).await, 200);
    }
    redis.kill();
    // Reject: every request is refused with 503 while the store is down
    for _ in 0..3 {
        assert_eq!(status(&reject).await, 503);
    }
    // Allow: requests pass unlimited
    for _ in 0..5 {
        assert_eq!(status(&allow).await, 200);
    }
    // LocalFallback: this instance enforces the limit in memory (fresh local state)
    assert_eq!(status(&local).await, 200);
    assert_eq!(status(&local).await, 200);
    assert_eq!(status(&local).await, 429);

    redis.spawn();
    // the connection manager reconnects; Redis lost its state (no persistence), so the
    // limit starts afresh: burst of 2, then 429 again
    let mut first = 0;
    for _ in 0..100 {
        first = status(&reject).await;
        if first == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(first, 200, "limits resume after restart");
    assert_eq!(status(&reject).await, 200);
    assert_eq!(status(&reject).await, 429);
}

#[tokio::test]
async fn delay_through_redis_reserves_paced_slots() {
    use tower_shield::store::{Gcra, RateDecision, RateStore};
    let redis = RedisServer::start();
    let conn = RedisConn::builder(redis.url()).connect().await.unwrap();
    let store = RedisRateStore::new(conn);
    let limit = Gcra {
        emission_interval: Duration::from_secs(10),
        burst: 1,
    };
    let d1 = store
        .check(b"k", limit, 1, Duration::from_secs(25))
        .await
        .unwrap();
    assert!(matches!(d1, RateDecision::Allowed { wait, .. } if wait.is_zero()));
    let d2 = store
        .check(b"k", limit, 1, Duration::from_secs(25))
        .await
        .unwrap();
    assert!(
        matches!(d2, RateDecision::Allowed { wait, .. } if wait > Duration::from_secs(9) && wait <= Duration::from_secs(10))
    );
    let d3 = store
        .check(b"k", limit, 1, Duration::from_secs(25))
        .await
        .unwrap();
    assert!(matches!(d3, RateDecision::Allowed { wait, .. } if wait > Duration::from_secs(19)));
    let d4 = store
        .check(b"k", limit, 1, Duration::from_secs(25))
        .await
        .unwrap();
    assert!(
        matches!(d4, RateDecision::Limited { retry_after, .. } if retry_after > Duration::from_secs(29))
    );
}
