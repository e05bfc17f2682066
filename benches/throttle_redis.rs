//! Throttle decisions per second through the Redis store from 64 concurrent tasks, against
//! an own `redis-server` on a free port, side by side with `redis-benchmark` running the same
//! GCRA script (EVALSHA, 64 connections, pipelining 16) against the same server, and the p50 /
//! p99 latency of one decision under that load.
//!
//! `cargo bench --bench throttle_redis --features throttle,redis -- --warm-up-time 1 --measurement-time 3`

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tower_shield::store::redis::RedisConn;
use tower_shield::store::{Gcra, RateDecision, RateStore};
use tower_shield::throttle::RedisRateStore;
use tower_shield::throttle::redis::GCRA_LUA;

const TASKS: u64 = 64;
/// Keys spread over the tasks (eight clients, as in the quota bench).
const KEYS: u64 = 8;
/// A limit that never refuses: every decision runs the whole script including the `SET`.
const LIMIT: Gcra = Gcra {
    emission_interval: Duration::from_micros(1),
    burst: u32::MAX,
};

struct RedisServer {
    port: u16,
    child: Child,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> RedisServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    RedisServer { port, child }
}

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
        RedisRateStore::new(conn)
    });
    let sha = String::from_utf8(
        Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "SCRIPT", "LOAD", GCRA_LUA])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();

    // side by side: the server's capacity for this script, then ours from 64 tasks
    if let Some(rps) = redis_benchmark(redis.port, sha.trim()) {
        let (took, _) = rt.block_on(run(&store, 4000, false));
        let ours = (4000 * TASKS) as f64 / took.as_secs_f64();
        eprintln!(
            "redis-benchmark (64 conns, -P 16): {rps:.0} decisions/s; store from 64 tasks: {ours:.0} decisions/s ({:.2}x)",
            ours / rps
        );
    } else {
        eprintln!("redis-benchmark not available: no side-by-side figure");
    }
    let pct = |lat: &mut Vec<Duration>, p: f64| {
        lat.sort_unstable();
        lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)]
    };
    // one caller at a time: the round trip of a decision
    let mut lat = rt.block_on(async {
        let mut lat = Vec::with_capacity(5000);
        for _ in 0..5000 {
            let t = Instant::now();
            store
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
    // 64 callers: each waits behind the others (Little's law: p50 ≈ 64 / rate)
    let (_, mut lat) = rt.block_on(run(&store, 2000, true));
    eprintln!(
        "latency of one decision with 64 tasks in flight: p50 {:?}, p99 {:?}",
        pct(&mut lat, 0.50),
        pct(&mut lat, 0.99)
    );

    let mut g = c.benchmark_group("throttle_redis");
    g.throughput(Throughput::Elements(1));
    g.bench_function("store_check_64_tasks", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let per = iters.div_ceil(TASKS);
                let (took, _) = run(&store, per, false).await;
                took.mul_f64(iters as f64 / (per * TASKS) as f64)
            })
        })
    });
    g.finish();
    drop(redis);
}

criterion_group!(benches, bench);
criterion_main!(benches);
