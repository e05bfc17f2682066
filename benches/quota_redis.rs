//! Quota decisions per second through the Redis store from 64 concurrent tasks over the one
//! multiplexed connection, against an own `redis-server` on a free port, and in the same run
//! the competitor: `redis-benchmark` (64 clients, pipelining 16) running the same script
//! (`EVALSHA` of the store's own script text) on the same server. The competitor's figure is
//! its own reported requests per second, turned into time per request for criterion.
//!
//! Two scripts: the single-counter `add_within` script of the `CounterStore` API, and the
//! all-or-nothing `charge` script the layer runs per decision (one calendar quota here).
//! Before criterion runs, each is also measured side by side (redis-benchmark, then our
//! 64 tasks, back to back) and the ratio printed, so both figures see the same load.
//!
//! The batched store ([`RedisCounterStore::batched`]) runs the charge of the same 64 tasks,
//! compared with `redis-benchmark` on the one-request charge script (what a pipelining
//! client reaches per request); each line gives the server time per request from
//! `INFO commandstats`.
//!
//! `cargo bench --bench quota_redis --features quota,redis -- --warm-up-time 1 --measurement-time 3`
//!
//! Instruction-count probe of the client (no criterion): `QUOTA_REDIS_PROBE=charge|batched`
//! and `QUOTA_REDIS_PROBE_N` (charges per task, default 500), run under
//! `valgrind --tool=callgrind` for two values of N: the difference of the totals over the
//! difference of charges is the client's cost per charge.

use std::convert::Infallible;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group};
use http::{Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceExt};
use tower_shield::quota::{ChargeSpec, Quota, QuotaLayer, QuotaStore, RedisCounterStore, Window};
use tower_shield::store::CounterStore;
use tower_shield::store::redis::RedisConn;
use tower_shield::{CredentialKind, Principal};

#[path = "support/redis.rs"]
mod redis_support;
use redis_support::{evalsha_stats, reset_stats, start};

const TASKS: u64 = 64;
const LIMIT: u64 = 1_000_000_000_000_000;

/// `per` charges of one calendar quota on each of 64 tasks (eight callers); charges/s.
fn charge_rate(rt: &tokio::runtime::Runtime, store: &RedisCounterStore, per: u64) -> f64 {
    let end = SystemTime::now() + Duration::from_secs(86_400);
    rt.block_on(async {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                let s = store.clone();
                let key = format!("{{c{}}}:m:x", i % 8);
                tokio::spawn(async move {
                    for _ in 0..per {
                        let spec = ChargeSpec {
                            key: key.as_bytes(),
                            limit: LIMIT,
                            window_end: end,
                            earlier: Vec::new(),
                        };
                        let (counted, _) = s.charge(&[spec], 1).await.unwrap();
                        assert!(counted);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        (per * TASKS) as f64 / t0.elapsed().as_secs_f64()
    })
}

fn probe() -> bool {
    let Ok(which) = std::env::var("QUOTA_REDIS_PROBE") else {
        return false;
    };
    let per: u64 = std::env::var("QUOTA_REDIS_PROBE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let redis = start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let conn = rt.block_on(async {
        RedisConn::builder(url)
            .key_prefix("bench")
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap()
    });
    let store = match which.as_str() {
        "charge" => RedisCounterStore::new(conn),
        "batched" => RedisCounterStore::batched(conn, 64).unwrap(),
        other => panic!("unknown QUOTA_REDIS_PROBE {other}"),
    };
    charge_rate(&rt, &store, 2);
    reset_stats(redis.port);
    let rate = charge_rate(&rt, &store, per);
    let (calls, usec) = evalsha_stats(redis.port);
    let charges = (per * TASKS) as f64;
    eprintln!(
        "probe {which}: {charges} charges in {calls} scripts ({:.1} per script), {rate:.0} charges/s; \
         server {usec:.2} us per script = {:.2} us per charge (load-dependent: compare within one run)",
        charges / calls.max(1.0),
        usec * calls / charges,
    );
    true
}

fn bench(c: &mut Criterion) {
    let redis = start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let store = rt.block_on(async {
        let conn = RedisConn::builder(url)
            .key_prefix("bench")
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        RedisCounterStore::new(conn)
    });
    let batched = rt.block_on(async {
        let conn = RedisConn::builder(format!("redis://127.0.0.1:{}/0", redis.port))
            .key_prefix("bench")
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        RedisCounterStore::batched(conn, 64).unwrap()
    });
    let load = |script: &str| {
        let out = Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "SCRIPT", "LOAD"])
            .arg(script)
            .output()
            .unwrap()
            .stdout;
        String::from_utf8(out).unwrap().trim().to_owned()
    };
    let sha = load(RedisCounterStore::add_within_script());
    let charge_sha = load(RedisCounterStore::charge_script());
    let add_args: Vec<String> = [
        "1",
        "bench:q:{rb}:m:x",
        "1",
        &LIMIT.to_string(),
        "4102444800",
    ]
    .map(str::to_owned)
    .to_vec();
    let charge_args: Vec<String> = [
        "1",
        "bench:q:{rb}:m:x",
        "1",
        "1",
        &LIMIT.to_string(),
        "4102444800",
        "0",
    ]
    .map(str::to_owned)
    .to_vec();
    let port = redis.port;
    let competitor = move |n: u64, sha: &str, args: &[String]| -> f64 {
        let out = Command::new("redis-benchmark")
            .args(["-p", &port.to_string(), "-n", &n.to_string()])
            .args(["-c", "64", "-P", "16", "--csv", "EVALSHA", sha])
            .args(args)
            .output()
            .expect("redis-benchmark must be installed");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter_map(|l| l.split(',').nth(1))
            .filter_map(|v| v.trim_matches('"').parse().ok())
            .next_back()
            .expect("redis-benchmark --csv prints requests per second")
    };
    eprintln!(
        "compare: redis-benchmark -p {} -n 200000 -c 64 -P 16 EVALSHA {sha} 1 'bench:q:{{rb}}:m:x' 1 {LIMIT} 4102444800",
        redis.port,
    );
    let end = SystemTime::now() + Duration::from_secs(86_400);
    let spec_key = |i: u64| format!("{{c{}}}:m:x", i % 8);

    // side by side, back to back: the server's rate for the script, then ours
    let ours_add = |per: u64| {
        rt.block_on(async {
            let t0 = Instant::now();
            let tasks: Vec<_> = (0..TASKS)
                .map(|i| {
                    let s = store.clone();
                    let key = spec_key(i);
                    tokio::spawn(async move {
                        for _ in 0..per {
                            s.add_within(key.as_bytes(), 1, LIMIT, end).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            (per * TASKS) as f64 / t0.elapsed().as_secs_f64()
        })
    };
    let ours_charge = |per: u64| charge_rate(&rt, &store, per);
    let server_us = |n: u64| {
        let (calls, per_call) = evalsha_stats(port);
        (calls * per_call / n as f64, n as f64 / calls.max(1.0))
    };
    for _ in 0..2 {
        reset_stats(port);
        let rb = competitor(200_000, &sha, &add_args);
        let (rb_us, _) = server_us(200_000);
        reset_stats(port);
        let ours = ours_add(3000);
        let (us, _) = server_us(3000 * TASKS);
        eprintln!(
            "add_within script: redis-benchmark -c 64 -P 16 {rb:.0}/s (server {rb_us:.2} µs), store from 64 tasks {ours:.0}/s ({:.2}x, server {us:.2} µs)",
            ours / rb
        );
        reset_stats(port);
        let rb = competitor(200_000, &charge_sha, &charge_args);
        let (rb_us, _) = server_us(200_000);
        reset_stats(port);
        let ours = ours_charge(3000);
        let (us, _) = server_us(3000 * TASKS);
        reset_stats(port);
        let ours_b = charge_rate(&rt, &batched, 3000);
        let (us_b, per_script) = server_us(3000 * TASKS);
        eprintln!(
            "charge script: redis-benchmark -c 64 -P 16 {rb:.0}/s (server {rb_us:.2} µs), store from 64 tasks {ours:.0}/s ({:.2}x, server {us:.2} µs), batched {ours_b:.0}/s ({:.2}x, server {us_b:.2} µs, {per_script:.1} charges/script)",
            ours / rb,
            ours_b / rb
        );
    }

    let mut g = c.benchmark_group("quota_redis");
    g.throughput(Throughput::Elements(1));
    g.bench_function("store_add_within_64_tasks", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let per = iters.div_ceil(TASKS);
                let t0 = Instant::now();
                let tasks: Vec<_> = (0..TASKS)
                    .map(|i| {
                        let s = store.clone();
                        tokio::spawn(async move {
                            let key = format!("{{c{}}}:m:x", i % 8);
                            for _ in 0..per {
                                s.add_within(key.as_bytes(), 1, LIMIT, end).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                t0.elapsed().mul_f64(iters as f64 / (per * TASKS) as f64)
            })
        })
    });

    for (name, s) in [
        ("store_charge_64_tasks", &store),
        ("batched_store_charge_64_tasks", &batched),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(TASKS);
                let rate = charge_rate(&rt, s, per);
                Duration::from_secs_f64(iters as f64 / rate)
            })
        });
    }

    for (name, st) in [
        ("layer_request_64_tasks", &store),
        ("batched_layer_request_64_tasks", &batched),
    ] {
        let layer = QuotaLayer::builder()
            .store(QuotaStore::Redis(st.clone()))
            .plan("free", [Quota::new("monthly", LIMIT, Window::month())])
            .default_plan("free")
            .build()
            .unwrap();
        let svc = tower::ServiceBuilder::new()
            .layer(layer)
            .service_fn(|_req: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let per = iters.div_ceil(TASKS);
                    let t0 = Instant::now();
                    let tasks: Vec<_> = (0..TASKS)
                        .map(|i| {
                            let mut svc = svc.clone();
                            tokio::spawn(async move {
                                let p =
                                    Principal::new(format!("c{}", i % 8), CredentialKind::ApiKey);
                                for _ in 0..per {
                                    let mut req = Request::get("/x").body(()).unwrap();
                                    req.extensions_mut().insert(p.clone());
                                    let res = svc.ready().await.unwrap().call(req).await.unwrap();
                                    assert_eq!(res.status(), 200);
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                    t0.elapsed().mul_f64(iters as f64 / (per * TASKS) as f64)
                })
            })
        });
    }
    g.finish();

    // The competitor on the same server and script: redis-benchmark's own requests/second.
    let mut g = c.benchmark_group("quota_redis_competitor");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.bench_function("redis_benchmark_P16_c64", |b| {
        b.iter_custom(|iters| {
            let rps = competitor(iters.max(20_000), &sha, &add_args);
            Duration::from_secs_f64(iters as f64 / rps)
        })
    });
    g.bench_function("redis_benchmark_P16_c64_charge", |b| {
        b.iter_custom(|iters| {
            let rps = competitor(iters.max(20_000), &charge_sha, &charge_args);
            Duration::from_secs_f64(iters as f64 / rps)
        })
    });
    g.finish();
    drop(redis);
}

criterion_group!(benches, bench);

fn main() {
    if probe() {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
