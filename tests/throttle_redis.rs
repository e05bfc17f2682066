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

/// A lazily connecting client with short timeouts, so failure tests stay fast.
fn conn(url: &str, prefix: &str) -> RedisConn {
    RedisConn::builder(url)
        .key_prefix(prefix)
        .timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(200))
        .build_lazy()
        .unwrap()
}

fn layer(url: &str, prefix: &str, burst: u32, mode: FailureMode) -> ThrottleLayer {
    ThrottleLayer::builder()
        .policy(Policy::rate("per-ip", Rate::per_hour(1)).burst(burst))
        .redis(RedisRateStore::new(conn(url, prefix)), mode)
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

mod batched {
    use super::*;
    use tower_shield::store::{Gcra, RateDecision, RateStore, StoreError};

    async fn store(url: &str, prefix: &str, max_batch: usize) -> RedisRateStore {
        RedisRateStore::batched(conn(url, prefix), max_batch).unwrap()
    }

    const SLOW: Gcra = Gcra {
        emission_interval: Duration::from_secs(3600),
        burst: 10,
    };

    /// `n` concurrent decisions on each of `keys`; the decisions per key, in no order.
    async fn burst_of(
        s: &RedisRateStore,
        keys: usize,
        n: usize,
    ) -> Vec<Vec<Result<RateDecision, StoreError>>> {
        let mut tasks = Vec::new();
        for i in 0..keys * n {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("k{}", i % keys);
                (
                    i % keys,
                    s.check(key.as_bytes(), SLOW, 1, Duration::ZERO).await,
                )
            }));
        }
        let mut out = vec![Vec::new(); keys];
        for t in tasks {
            let (k, d) = t.await.unwrap();
            out[k].push(d);
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_store_admits_exactly_the_burst_under_concurrency() {
        let redis = RedisServer::start();
        let s = store(&redis.url(), "exact", 64).await;
        redis.cli(&["CONFIG", "RESETSTAT"]);
        for decisions in burst_of(&s, 5, 40).await {
            let mut remaining: Vec<u64> = decisions
                .iter()
                .filter_map(|d| match d.as_ref().unwrap() {
                    RateDecision::Allowed {
                        wait, remaining, ..
                    } => {
                        assert!(wait.is_zero());
                        Some(*remaining)
                    }
                    RateDecision::Limited { retry_after, .. } => {
                        assert!(*retry_after > Duration::from_secs(3590));
                        None
                    }
                })
                .collect();
            remaining.sort_unstable();
            // exactly the burst is admitted, each admitted one sees the one before it
            assert_eq!(remaining, (0..10).collect::<Vec<u64>>());
        }
        // the 200 decisions went in fewer scripts than decisions
        let stats = redis.cli(&["INFO", "commandstats"]);
        let calls: usize = stats
            .lines()
            .find(|l| l.starts_with("cmdstat_evalsha:"))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .expect("evalsha stats");
        assert!(calls < 200, "{calls} scripts for 200 decisions");
        // each admitted key holds its schedule with an expiry
        for k in 0..5 {
            let key = format!("exact:throttle:{{k{k}}}");
            let tat: u64 = redis.cli(&["GET", &key]).parse().unwrap();
            assert!(tat > 0);
            let ttl: u64 = redis.cli(&["PTTL", &key]).parse().unwrap();
            assert!(ttl > 35_000_000 && ttl <= 36_000_001, "{ttl}");
        }
    }

    #[tokio::test]
    async fn batched_store_paces_like_the_single_script() {
        let redis = RedisServer::start();
        let single = RedisRateStore::new(
            RedisConn::builder(redis.url())
                .key_prefix("one")
                .connect()
                .await
                .unwrap(),
        );
        let batched = store(&redis.url(), "many", 8).await;
        let limit = Gcra {
            emission_interval: Duration::from_secs(10),
            burst: 1,
        };
        let max_wait = Duration::from_secs(25);
        for s in [&single, &batched] {
            let mut got = Vec::new();
            for _ in 0..4 {
                got.push(s.check(b"k", limit, 1, max_wait).await.unwrap());
            }
            assert!(
                matches!(got[0], RateDecision::Allowed { wait, remaining: 0, .. } if wait.is_zero())
            );
            assert!(
                matches!(got[1], RateDecision::Allowed { wait, .. } if wait > Duration::from_secs(9) && wait <= Duration::from_secs(10))
            );
            assert!(
                matches!(got[2], RateDecision::Allowed { wait, .. } if wait > Duration::from_secs(19) && wait <= Duration::from_secs(20))
            );
            assert!(
                matches!(got[3], RateDecision::Limited { retry_after, reset_after } if retry_after > Duration::from_secs(29) && reset_after > Duration::from_secs(29))
            );
        }
        // a cost above the burst never conforms without waiting
        let d = batched
            .check(b"big", limit, 3, Duration::ZERO)
            .await
            .unwrap();
        assert!(
            matches!(d, RateDecision::Limited { retry_after, .. } if retry_after > Duration::from_secs(19))
        );
        assert_eq!(redis.cli(&["EXISTS", "many:throttle:{big}"]), "0");
    }

    /// Decisions of different limits, costs and max waits in the same batches.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_decisions_keep_their_own_limits() {
        let redis = RedisServer::start();
        let s = store(&redis.url(), "mixed", 64).await;
        let minute = Gcra {
            emission_interval: Duration::from_secs(60),
            burst: 4,
        };
        // (key, limit, cost, max wait)
        let cases = [
            ("a", SLOW, 1, Duration::ZERO),
            ("b", minute, 2, Duration::ZERO),
            ("c", minute, 1, Duration::from_secs(120)),
        ];
        let mut tasks = Vec::new();
        for i in 0..90 {
            let s = s.clone();
            let (key, limit, cost, max_wait) = cases[i % 3];
            tasks.push(tokio::spawn(async move {
                (
                    key,
                    s.check(key.as_bytes(), limit, cost, max_wait)
                        .await
                        .unwrap(),
                )
            }));
        }
        let mut waits: std::collections::BTreeMap<&str, Vec<Duration>> = Default::default();
        for t in tasks {
            let (key, d) = t.await.unwrap();
            if let RateDecision::Allowed { wait, .. } = d {
                waits.entry(key).or_default().push(wait);
            }
        }
        assert_eq!(waits["a"].len(), 10);
        assert!(waits["a"].iter().all(Duration::is_zero));
        // a cost of 2 against a burst of 4: two admitted
        assert_eq!(waits["b"].len(), 2);
        // the burst of 4 at once, then two paced slots within the 120 s max wait
        let c = waits.get_mut("c").unwrap();
        c.sort_unstable();
        assert_eq!(c.len(), 6, "{c:?}");
        assert!(c[..4].iter().all(Duration::is_zero), "{c:?}");
        assert!(c[4] > Duration::from_secs(59) && c[4] <= Duration::from_secs(60));
        assert!(c[5] > Duration::from_secs(119) && c[5] <= Duration::from_secs(120));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_store_fails_fast_while_redis_is_down_and_resumes() {
        let mut redis = RedisServer::start();
        let s = store(&redis.url(), "down", 16).await;
        assert!(s.check(b"k", SLOW, 1, Duration::ZERO).await.is_ok());
        redis.kill();
        let t0 = std::time::Instant::now();
        for decisions in burst_of(&s, 4, 25).await {
            for d in decisions {
                assert!(
                    matches!(d, Err(StoreError::Unavailable(_) | StoreError::Timeout(_))),
                    "{d:?}"
                );
            }
        }
        // bounded: at most two per-call timeouts per decision, however many are queued
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        redis.spawn();
        let mut ok = false;
        for _ in 0..100 {
            if s.check(b"k0", SLOW, 1, Duration::ZERO).await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ok, "decisions resume after restart");
        // fresh state after the restart (no persistence): burst of 10, the first one taken
        for decisions in burst_of(&s, 1, 12).await {
            let admitted = decisions
                .iter()
                .filter(|d| matches!(d, Ok(RateDecision::Allowed { .. })))
                .count();
            assert_eq!(admitted, 9);
        }
        // after SCRIPT FLUSH the script is loaded again
        assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
        assert!(s.check(b"other", SLOW, 1, Duration::ZERO).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_layers_share_one_global_limit_exactly() {
        let redis = RedisServer::start();
        let mut layers = Vec::new();
        for _ in 0..3 {
            layers.push(
                ThrottleLayer::builder()
                    .policy(Policy::rate("per-ip", Rate::per_hour(1)).burst(50))
                    .redis(store(&redis.url(), "fleet", 32).await, FailureMode::Reject)
                    .build()
                    .unwrap(),
            );
        }
        let mut tasks = Vec::new();
        for i in 0..300 {
            let l = layers[i % 3].clone();
            tasks.push(tokio::spawn(async move { status(&l).await }));
        }
        let mut by_status = std::collections::BTreeMap::new();
        for t in tasks {
            *by_status.entry(t.await.unwrap()).or_insert(0) += 1;
        }
        assert_eq!(by_status, [(200, 50), (429, 250)].into_iter().collect());
    }
}
