//! Throttle decisions per second through the Redis store from 64 concurrent tasks, against
//! an own `redis-server` on a free port, side by side with `redis-benchmark` running the same
//! GCRA script (EVALSHA, 64 connections, pipelining 16) against the same server, and the p50 /
//! p99 latency of one decision under that load. Both stores are measured: one script per
//! decision ([`RedisRateStore::new`]) and batched ([`RedisRateStore::batched`]); the batched
//! store is compared with `redis-benchmark` running the one-decision script, the rate a
//! pipelining client reaches per decision. Each side-by-side line also gives the server time
//! per decision from `INFO commandstats`.
//!
//! `cargo bench --bench throttle_redis --features throttle,redis -- --warm-up-time 1 --measurement-time 3`
//!
//! Instruction-count probe of the client (no criterion): `THROTTLE_REDIS_PROBE=single|batched`
//! and `THROTTLE_REDIS_PROBE_N` (decisions per task, default 500) run the 64 tasks once
//! against an own server and print the decisions and scripts sent, e.g.
//! `THROTTLE_REDIS_PROBE=batched valgrind --tool=callgrind target/release/deps/throttle_redis-…`
//! for two values of N: the difference of the totals over the difference of decisions is
//! the client's cost per decision.

use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use tower_shield::store::redis::RedisConn;
use tower_shield::store::{Gcra, RateDecision, RateStore};
use tower_shield::throttle::RedisRateStore;
use tower_shield::throttle::redis::GCRA_LUA;

#[path = "support/redis.rs"]
mod redis_support;
use redis_support::{RedisServer, evalsha_stats, reset_stats, start};

const TASKS: u64 = 64;
/// Keys spread over the tasks (eight clients, as in the quota bench).
const KEYS: u64 = 8;
/// A limit that never refuses: every decision runs the whole script including the `SET`.
const LIMIT: Gcra = Gcra {
    emission_interval: Duration::from_micros(1),
    burst: u32::MAX,
};

/// `redis-benchmark` with the same script and arguments the store sends; its requests/s.
fn redis_benchmark(port: u16, sha: &str) -> Option<f64> {
    let interval = LIMIT.emission_interval.as_micros().to_string();
    let burst = LIMIT.burst.to_string();
    let args = [
        "-p",
        &port.to_string(),
        "-n",
        "400000",
        "-c",
        "64",
        "-P",
        "16",
        "--csv",
        "EVALSHA",
        sha,
        "1",
        "bench:throttle:{per-ip|ip=rb}",
        &interval,
        &burst,
        "1",
        "0",
    ]
    .map(str::to_owned);
    eprintln!("compare: redis-benchmark {}", args.join(" "));
    let out = Command::new("redis-benchmark").args(&args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // CSV: "test","rps",...; the second line holds the numbers
    let line = text.lines().nth(1)?;
    line.split(',').nth(1)?.trim_matches('"').parse().ok()
}

/// Runs `per` decisions on each of 64 tasks; returns the elapsed time and, if asked, every
/// decision's latency.
async fn run(store: &RedisRateStore, per: u64, latencies: bool) -> (Duration, Vec<Duration>) {
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move {
                let key = format!("per-ip|ip=10.0.0.{}", i % KEYS);
                let mut lat = Vec::with_capacity(if latencies { per as usize } else { 0 });
                for _ in 0..per {
                    let t = Instant::now();
                    let d = s
                        .check(key.as_bytes(), LIMIT, 1, Duration::ZERO)
                        .await
                        .unwrap();
                    assert!(matches!(d, RateDecision::Allowed { .. }));
                    if latencies {
                        lat.push(t.elapsed());
                    }
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (t0.elapsed(), all)
}

struct Setup {
    redis: RedisServer,
    rt: tokio::runtime::Runtime,
    single: RedisRateStore,
    batched: RedisRateStore,
}

fn setup() -> Setup {
    let redis = start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let (single, batched) = rt.block_on(async {
        let conn = || {
            RedisConn::builder(url.clone())
                .key_prefix("bench")
                .timeout(Duration::from_secs(5))
                .connect()
        };
        let single = RedisRateStore::new(conn().await.unwrap());
        let batched = RedisRateStore::batched(conn().await.unwrap(), BATCH).unwrap();
        (single, batched)
    });
    Setup {
        redis,
        rt,
        single,
        batched,
    }
}

/// Largest batch of the batched store: the 64 tasks fit in one.
const BATCH: usize = 64;

/// The client-side probe: one run of the 64 tasks, then the decisions and scripts sent.
fn probe() -> bool {
    let Ok(which) = std::env::var("THROTTLE_REDIS_PROBE") else {
        return false;
    };
    let per: u64 = std::env::var("THROTTLE_REDIS_PROBE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let s = setup();
    let store = match which.as_str() {
        "single" => &s.single,
        "batched" => &s.batched,
        other => panic!("unknown THROTTLE_REDIS_PROBE {other}"),
    };
    // warm: connection, script loaded
    s.rt.block_on(run(store, 2, false));
    reset_stats(s.redis.port);
    s.rt.block_on(run(store, per, false));
    let (calls, _) = evalsha_stats(s.redis.port);
    eprintln!(
        "probe {which}: {} decisions in {calls} scripts",
        per * TASKS
    );
    true
}

fn bench(c: &mut Criterion) {
    let Setup {
        redis,
        rt,
        single,
        batched,
    } = setup();
    let sha = String::from_utf8(
        Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "SCRIPT", "LOAD", GCRA_LUA])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let pct = |lat: &mut Vec<Duration>, p: f64| {
        lat.sort_unstable();
        lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)]
    };
    let port = redis.port;
    let server_us = |decisions: u64| {
        let (calls, per_call) = evalsha_stats(port);
        (
            calls * per_call / decisions as f64,
            decisions as f64 / calls.max(1.0),
        )
    };

    // side by side: the server's capacity for this script, then ours from 64 tasks
    for _ in 0..2 {
        reset_stats(port);
        let Some(rps) = redis_benchmark(port, sha.trim()) else {
            eprintln!("redis-benchmark not available: no side-by-side figure");
            break;
        };
        let (rb_us, _) = server_us(400_000);
        eprintln!(
            "redis-benchmark (64 conns, -P 16): {rps:.0} decisions/s, server {rb_us:.2} µs/decision"
        );
        for (name, store) in [("one script per decision", &single), ("batched", &batched)] {
            reset_stats(port);
            let (took, _) = rt.block_on(run(store, 4000, false));
            let ours = (4000 * TASKS) as f64 / took.as_secs_f64();
            let (us, per_script) = server_us(4000 * TASKS);
            let (_, mut lat) = rt.block_on(run(store, 1000, true));
            eprintln!(
                "  store, {name}, 64 tasks: {ours:.0} decisions/s ({:.2}x), server {us:.2} µs/decision, {per_script:.1} decisions/script; p50 {:?}, p99 {:?} with 64 in flight",
                ours / rps,
                pct(&mut lat, 0.50),
                pct(&mut lat, 0.99)
            );
        }
    }
    // one caller at a time: the round trip of a decision
    let mut lat = rt.block_on(async {
        let mut lat = Vec::with_capacity(5000);
        for _ in 0..5000 {
            let t = Instant::now();
            single
                .check(b"per-ip|ip=10.0.0.1", LIMIT, 1, Duration::ZERO)
                .await
                .unwrap();
            lat.push(t.elapsed());
        }
        lat
    });
    eprintln!(
        "latency of one decision, one caller: p50 {:?}, p99 {:?}",
        pct(&mut lat, 0.50),
        pct(&mut lat, 0.99)
    );

    let mut g = c.benchmark_group("throttle_redis");
    g.throughput(Throughput::Elements(1));
    for (name, store) in [
        ("store_check_64_tasks", &single),
        ("batched_store_check_64_tasks", &batched),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let per = iters.div_ceil(TASKS);
                    let (took, _) = run(store, per, false).await;
                    took.mul_f64(iters as f64 / (per * TASKS) as f64)
                })
            })
        });
    }
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
