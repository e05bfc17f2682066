//! The quota layer's Redis store against a real `redis-server` started by the test on a
//! free port (never 127.0.0.1:6379).

use std::convert::Infallible;
use std::net::SocketAddr;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_shield::quota::{Quota, QuotaLayer, QuotaStore, RedisCounterStore, Window};
use tower_shield::store::redis::RedisConn;
use tower_shield::store::{CounterDecision, CounterStore, FailureMode};
use tower_shield::{CredentialKind, Principal};

#[path = "support/redis_server.rs"]
mod redis_server;
use redis_server::RedisServer;

/// A lazily connecting client with short timeouts, so failure tests stay fast.
fn conn(url: &str, prefix: &str) -> RedisConn {
    RedisConn::builder(url)
        .key_prefix(prefix)
        .timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(200))
        .build_lazy()
        .unwrap()
}

fn store(url: &str, prefix: &str) -> RedisCounterStore {
    RedisCounterStore::new(conn(url, prefix))
}

fn layer(url: &str, prefix: &str, quotas: Vec<Quota>, mode: FailureMode) -> QuotaLayer {
    QuotaLayer::builder()
        .store(QuotaStore::Redis(store(url, prefix)))
        .failure_mode(mode)
        .plan("free", quotas)
        .default_plan("free")
        .build()
        .unwrap()
}

fn alice<B>(mut req: Request<B>) -> Request<B> {
    req.extensions_mut()
        .insert(Principal::new("alice", CredentialKind::ApiKey).with_plan("free"));
    req
}

type Ready = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;
fn ok(_req: Request<()>) -> Ready {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from("ok")))))
}

async fn status(l: &QuotaLayer) -> u16 {
    let svc = ServiceBuilder::new()
        .layer(l.clone())
        .service_fn(ok as fn(Request<()>) -> Ready);
    let req = alice(Request::get("/products").body(()).unwrap());
    svc.oneshot(req).await.unwrap().status().as_u16()
}

fn secs(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap();
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_against_remaining_n_admit_exactly_n() {
    let redis = RedisServer::start();
    let s = store(&redis.url(), "exact");
    let end = SystemTime::now() + Duration::from_secs(3600);
    // 30 units used already: 50 remain of 80
    assert_eq!(
        s.add_within(b"{c}:m:x", 30, 80, end).await.unwrap(),
        CounterDecision::Counted { used: 30 }
    );
    let tasks: Vec<_> = (0..300)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.add_within(b"{c}:m:x", 1, 80, end).await.unwrap() })
        })
        .collect();
    let mut counted = 0;
    for t in tasks {
        if let CounterDecision::Counted { used } = t.await.unwrap() {
            assert!(used <= 80);
            counted += 1;
        }
    }
    assert_eq!(counted, 50);
    assert_eq!(s.get(b"{c}:m:x").await.unwrap(), 80);
    assert_eq!(redis.cli(&["GET", "exact:{c}:m:x"]), "80");
    // refused without incrementing; refund floors at zero and keeps the expiry
    assert_eq!(
        s.add_within(b"{c}:m:x", 1, 80, end).await.unwrap(),
        CounterDecision::Exceeded { used: 80 }
    );
    s.refund(b"{c}:m:x", 70).await.unwrap();
    assert_eq!(s.get(b"{c}:m:x").await.unwrap(), 10);
    s.refund(b"{c}:m:x", 70).await.unwrap();
    assert_eq!(s.get(b"{c}:m:x").await.unwrap(), 0);
    assert_eq!(
        redis.cli(&["EXPIRETIME", "exact:{c}:m:x"]),
        secs(end).to_string()
    );
    // refunding an absent counter does not create it
    s.refund(b"{c}:absent", 3).await.unwrap();
    assert_eq!(redis.cli(&["EXISTS", "exact:{c}:absent"]), "0");
}

async fn serve_axum(layer: QuotaLayer) -> SocketAddr {
    let app = Router::new()
        .route("/products", get(|| async { "[]" }))
        .layer(layer)
        .layer(tower::util::MapRequestLayer::new(alice::<axum::body::Body>));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_over_http_enforce_one_quota_keyed_by_period() {
    let redis = RedisServer::start();
    let quotas = || {
        vec![
            Quota::new("monthly", 40, Window::month()),
            Quota::new("daily", 1000, Window::day()),
        ]
    };
    let a = serve_axum(layer(&redis.url(), "fleet", quotas(), FailureMode::Reject)).await;
    let b = serve_axum(layer(&redis.url(), "fleet", quotas(), FailureMode::Reject)).await;
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..120)
        .map(|i| {
            let url = format!("http://{}/products", if i % 2 == 0 { a } else { b });
            let client = client.clone();
            tokio::spawn(async move { client.get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    let (mut admitted, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            200 => admitted += 1,
            429 => refused += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!((admitted, refused), (40, 80));

    // keys carry the period label and expire at the window end
    let now = SystemTime::now();
    let month = Window::month().span(now);
    let day = Window::day().span(now);
    let mkey = format!("fleet:quota:{{p%3Aalice}}:monthly:{}", month.label);
    let dkey = format!("fleet:quota:{{p%3Aalice}}:daily:{}", day.label);
    assert!(
        month.label.len() == 7 && month.label.starts_with("20"),
        "{}",
        month.label
    );
    assert_eq!(redis.cli(&["GET", &mkey]), "40");
    // all-or-nothing: refused calls did not burn the daily quota either
    assert_eq!(redis.cli(&["GET", &dkey]), "40");
    assert_eq!(
        redis.cli(&["EXPIRETIME", &mkey]),
        secs(month.end).to_string()
    );
    assert_eq!(redis.cli(&["EXPIRETIME", &dkey]), secs(day.end).to_string());
    let mut keys: Vec<String> = redis
        .cli(&["--scan", "--pattern", "fleet:*"])
        .lines()
        .map(str::to_string)
        .collect();
    keys.sort();
    let mut want = vec![dkey, mkey];
    want.sort();
    assert_eq!(keys, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_modes_when_redis_dies_and_counting_resumes_after_restart() {
    let mut redis = RedisServer::start();
    let q = || vec![Quota::new("monthly", 2, Window::month())];
    let reject = layer(&redis.url(), "reject", q(), FailureMode::Reject);
    let allow = layer(&redis.url(), "allow", q(), FailureMode::Allow);
    let local = layer(&redis.url(), "local", q(), FailureMode::LocalFallback);
    for l in [&reject, &allow, &local] {
        assert_eq!(status(l).await, 200);
    }
    redis.kill();
    for _ in 0..3 {
        assert_eq!(status(&reject).await, 503);
    }
    for _ in 0..5 {
        assert_eq!(status(&allow).await, 200);
    }
    // LocalFallback: this instance enforces the quota in its own memory (fresh state)
    assert_eq!(status(&local).await, 200);
    assert_eq!(status(&local).await, 200);
    assert_eq!(status(&local).await, 429);
    // usage read-back reports the store error instead of panicking
    assert!(
        reject
            .usage_of(&Principal::new("alice", CredentialKind::ApiKey).with_plan("free"))
            .await
            .is_err()
    );

    redis.spawn();
    // the connection reconnects; Redis lost its state (no persistence): counting restarts
    let mut first = 0;
    for _ in 0..100 {
        first = status(&reject).await;
        if first == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(first, 200, "counting resumes after restart");
    assert_eq!(status(&reject).await, 200);
    assert_eq!(status(&reject).await, 429);
    let label = Window::month().span(SystemTime::now()).label;
    assert_eq!(
        redis.cli(&[
            "GET",
            &format!("reject:quota:{{p%3Aalice}}:monthly:{label}")
        ]),
        "2"
    );
}

#[tokio::test]
async fn errors_never_show_the_password() {
    // nothing listens on port 1
    let conn = RedisConn::builder("redis://:hunter2@127.0.0.1:1/0")
        .timeout(Duration::from_millis(100))
        .connect_timeout(Duration::from_millis(100))
        .build_lazy()
        .unwrap();
    let s = RedisCounterStore::new(conn);
    let e = s.get(b"k").await.unwrap_err();
    assert!(!e.to_string().contains("hunter2"), "{e}");
    assert!(!format!("{s:?}").contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_are_loaded_again_after_script_flush() {
    let redis = RedisServer::start();
    let s = store(&redis.url(), "flush");
    let end = SystemTime::now() + Duration::from_secs(3600);
    // first call: the server does not know the script yet (NOSCRIPT, then loaded)
    assert_eq!(
        s.add_within(b"{c}:m:x", 2, 5, end).await.unwrap(),
        CounterDecision::Counted { used: 2 }
    );
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
    assert_eq!(
        s.add_within(b"{c}:m:x", 3, 5, end).await.unwrap(),
        CounterDecision::Counted { used: 5 }
    );
    assert_eq!(
        s.add_within(b"{c}:m:x", 1, 5, end).await.unwrap(),
        CounterDecision::Exceeded { used: 5 }
    );
    assert_eq!(redis.cli(&["GET", "flush:{c}:m:x"]), "5");
}

/// Several quotas are decided by one script over all their keys: a request refused by one
/// quota increments none, so nothing has to be rolled back and no concurrent request ever
/// sees units that are later given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_quotas_are_charged_all_or_nothing_in_one_script() {
    let redis = RedisServer::start();
    let l = layer(
        &redis.url(),
        "aon",
        vec![
            Quota::new("daily", 100, Window::day()),
            Quota::new("monthly", 3, Window::month()),
        ],
        FailureMode::Reject,
    );
    for _ in 0..3 {
        assert_eq!(status(&l).await, 200);
    }
    // the monthly quota refuses: the daily counter is not touched, and the decision was
    // one script call (not one per quota plus a rollback)
    redis.cli(&["CONFIG", "RESETSTAT"]);
    assert_eq!(status(&l).await, 429);
    let stats = redis.cli(&["INFO", "commandstats"]);
    let calls = |cmd: &str| {
        stats
            .lines()
            .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|v| v.split(',').next())
            .map_or(0, |v| v.parse::<u32>().unwrap())
    };
    assert_eq!(calls("evalsha") + calls("eval"), 1, "{stats}");
    assert_eq!(status(&l).await, 429);
    let usage = l
        .usage_of(&Principal::new("alice", CredentialKind::ApiKey).with_plan("free"))
        .await
        .unwrap();
    assert_eq!((usage[0].name.as_str(), usage[0].used), ("daily", 3));
    assert_eq!((usage[1].name.as_str(), usage[1].used), ("monthly", 3));
    let keys = redis.cli(&["KEYS", "aon:*"]);
    let daily = keys
        .lines()
        .find(|k| k.contains(":daily:"))
        .expect("daily key")
        .to_owned();
    assert_eq!(redis.cli(&["GET", &daily]), "3");

    // concurrent requests against 2 remaining monthly units (daily has room): exactly 2
    // are admitted, and the daily counter holds exactly their units (no rolled-back ones)
    let l = layer(
        &redis.url(),
        "aon2",
        vec![
            Quota::new("daily", 1000, Window::day()),
            Quota::new("monthly", 2, Window::month()),
        ],
        FailureMode::Reject,
    );
    let tasks: Vec<_> = (0..60)
        .map(|_| {
            let l = l.clone();
            tokio::spawn(async move { status(&l).await })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => admitted += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(admitted, 2);
    let keys = redis.cli(&["KEYS", "aon2:*"]);
    for k in keys.lines() {
        assert_eq!(redis.cli(&["GET", k]), "2", "{k}");
    }
    assert_eq!(keys.lines().count(), 2);
}

/// The script charges rolling windows too: the earlier buckets count against the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_and_calendar_quotas_in_one_script() {
    let redis = RedisServer::start();
    let l = layer(
        &redis.url(),
        "roll",
        vec![
            Quota::new(
                "hourly",
                2,
                Window::rolling(Duration::from_secs(3600), 60).unwrap(),
            ),
            Quota::new("daily", 100, Window::day()),
        ],
        FailureMode::Reject,
    );
    assert_eq!(status(&l).await, 200);
    assert_eq!(status(&l).await, 200);
    assert_eq!(status(&l).await, 429);
    let usage = l
        .usage_of(&Principal::new("alice", CredentialKind::ApiKey).with_plan("free"))
        .await
        .unwrap();
    assert_eq!((usage[0].used, usage[1].used), (2, 2));
}

mod batched {
    use super::*;
    use tower_shield::quota::ChargeSpec;
    use tower_shield::store::StoreError;

    fn batched_store(url: &str, prefix: &str, max: usize) -> RedisCounterStore {
        RedisCounterStore::batched(conn(url, prefix), max).unwrap()
    }

    fn evalsha_calls(redis: &RedisServer) -> usize {
        redis
            .cli(&["INFO", "commandstats"])
            .lines()
            .find(|l| l.starts_with("cmdstat_evalsha:"))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|v| v.split(',').next())
            .map_or(0, |v| v.parse().unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_charges_admit_exactly_the_remaining_units() {
        let redis = RedisServer::start();
        let l = QuotaLayer::builder()
            .store(QuotaStore::Redis(batched_store(&redis.url(), "bq", 64)))
            .failure_mode(FailureMode::Reject)
            .plan(
                "free",
                [
                    Quota::new("daily", 1000, Window::day()),
                    Quota::new("monthly", 40, Window::month()),
                ],
            )
            .default_plan("free")
            .build()
            .unwrap();
        redis.cli(&["CONFIG", "RESETSTAT"]);
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { status(&l).await })
            })
            .collect();
        let mut by_status = std::collections::BTreeMap::new();
        for t in tasks {
            *by_status.entry(t.await.unwrap()).or_insert(0) += 1;
        }
        assert_eq!(by_status, [(200, 40), (429, 160)].into_iter().collect());
        let calls = evalsha_calls(&redis);
        assert!(calls < 200, "{calls} scripts for 200 requests");
        // all or nothing across the batch too: both counters hold exactly the admitted units
        let keys = redis.cli(&["KEYS", "bq:*"]);
        assert_eq!(keys.lines().count(), 2, "{keys}");
        for k in keys.lines() {
            assert_eq!(redis.cli(&["GET", k]), "40", "{k}");
            let ttl: i64 = redis.cli(&["TTL", k]).parse().unwrap();
            assert!(ttl > 0, "{k} expires");
        }
    }

    /// The same charges, one by one, through the single and the batched script: the same
    /// answers and the same counters, rolling buckets included; concurrently, the batched
    /// store hands out exactly the units left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_charge_agrees_with_the_single_script() {
        let redis = RedisServer::start();
        let single = store(&redis.url(), "one");
        let batched = batched_store(&redis.url(), "many", 16);
        let end = SystemTime::now() + Duration::from_secs(3600);
        for p in ["one", "many"] {
            // two earlier buckets of a rolling window: 3 units two back, 0 one back
            redis.cli(&["SET", &format!("{p}:{{c}}:h:b1"), "3"]);
            redis.cli(&["SET", &format!("{p}:{{c}}:h:b2"), "0"]);
        }
        let earlier = vec![b"{c}:h:b1".to_vec(), b"{c}:h:b2".to_vec()];
        let specs = || {
            [
                ChargeSpec {
                    key: b"{c}:h:now",
                    limit: 8,
                    window_end: end,
                    earlier: earlier.clone(),
                },
                ChargeSpec {
                    key: b"{c}:d",
                    limit: 100,
                    window_end: end,
                    earlier: Vec::new(),
                },
            ]
        };
        for cost in [2, 1, 3, 1, 1] {
            let a = single.charge(&specs(), cost).await.unwrap();
            let b = batched.charge(&specs(), cost).await.unwrap();
            assert_eq!(a, b, "cost {cost}");
        }
        let last = batched.charge(&specs(), 1).await.unwrap();
        assert!(!last.0);
        assert_eq!(
            (last.1[0].used, last.1[0].oldest_back, last.1[1].used),
            (8, 2, 5)
        );
        for k in ["{c}:h:now", "{c}:d"] {
            assert_eq!(
                redis.cli(&["GET", &format!("one:{k}")]),
                redis.cli(&["GET", &format!("many:{k}")])
            );
        }

        // 30 concurrent charges of 1 against 20 units left of a fresh counter
        let mut tasks = Vec::new();
        for _ in 0..30 {
            let s = batched.clone();
            tasks.push(tokio::spawn(async move {
                let spec = ChargeSpec {
                    key: b"{d}:m",
                    limit: 20,
                    window_end: SystemTime::now() + Duration::from_secs(60),
                    earlier: Vec::new(),
                };
                s.charge(&[spec], 1).await.unwrap()
            }));
        }
        let mut counted_used = Vec::new();
        for t in tasks {
            let (counted, c) = t.await.unwrap();
            if counted {
                counted_used.push(c[0].used);
            } else {
                assert_eq!(c[0].used, 20);
            }
        }
        counted_used.sort_unstable();
        assert_eq!(counted_used, (1..=20).collect::<Vec<u64>>());
        assert_eq!(redis.cli(&["GET", "many:{d}:m"]), "20");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_charges_fail_fast_while_redis_is_down_and_resume() {
        let mut redis = RedisServer::start();
        let s = batched_store(&redis.url(), "down", 8);
        let end = SystemTime::now() + Duration::from_secs(3600);
        let charge = |s: RedisCounterStore| async move {
            let spec = ChargeSpec {
                key: b"{c}:m",
                limit: 1000,
                window_end: end,
                earlier: Vec::new(),
            };
            s.charge(&[spec], 1).await
        };
        assert!(charge(s.clone()).await.unwrap().0);
        redis.kill();
        let t0 = std::time::Instant::now();
        let tasks: Vec<_> = (0..40).map(|_| tokio::spawn(charge(s.clone()))).collect();
        for t in tasks {
            let r = t.await.unwrap();
            assert!(
                matches!(r, Err(StoreError::Unavailable(_) | StoreError::Timeout(_))),
                "{r:?}"
            );
        }
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        redis.spawn();
        let mut used = None;
        for _ in 0..100 {
            if let Ok((true, c)) = charge(s.clone()).await {
                used = Some(c[0].used);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Redis lost its state (no persistence): counting restarts
        assert_eq!(used, Some(1));
        assert!(RedisCounterStore::batched(s.conn().clone(), 0).is_err());
    }
}
