//! Added cost per request of the throttle vs tower_governor, side by side.
//!
//! `cargo bench --bench throttle --features throttle,axum -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{Request, Response};
use tower::{Layer, Service};
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_shield::throttle::{Policy, Rate, ThrottleLayer};

#[path = "support/paired.rs"]
mod paired;

type Ready = std::future::Ready<Result<Response<Body>, Infallible>>;
fn ok(_req: Request<Body>) -> Ready {
    std::future::ready(Ok(Response::new(Body::empty())))
}
fn bare() -> tower::util::ServiceFn<fn(Request<Body>) -> Ready> {
    tower::service_fn(ok as fn(Request<Body>) -> Ready)
}

fn with_content_type(_req: Request<Body>) -> Ready {
    let mut res = Response::new(Body::empty());
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    std::future::ready(Ok(res))
}
/// An inner service whose responses carry a `content-type` field, as real responses do.
fn typed() -> tower::util::ServiceFn<fn(Request<Body>) -> Ready> {
    tower::service_fn(with_content_type as fn(Request<Body>) -> Ready)
}

fn ips(n: u32) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i)), 4000))
        .collect()
}

fn req(addr: SocketAddr) -> Request<Body> {
    let mut r = Request::new(Body::empty());
    r.extensions_mut().insert(ConnectInfo(addr));
    r
}

fn shield(headers: bool) -> ThrottleLayer {
    ThrottleLayer::builder()
        .rate_limit_headers(headers)
        .max_keys(2_000_000)
        // a slow rate with a huge burst: every key stays tracked (live state) for the whole run
        .policy(Policy::rate("per-ip", Rate::per_second(1)).burst(u32::MAX))
        .build()
        .unwrap()
}

/// tower_governor at the same limit as [`shield`] (1 per second, burst `u32::MAX`).
fn governor_conf() -> Arc<
    tower_governor::governor::GovernorConfig<
        tower_governor::key_extractor::PeerIpKeyExtractor,
        governor::middleware::NoOpMiddleware,
    >,
> {
    Arc::new(
        GovernorConfigBuilder::default()
            .per_second(1)
            .burst_size(u32::MAX)
            .finish()
            .unwrap(),
    )
}

fn run<S>(svc: &mut S, addrs: &[SocketAddr], i: &mut usize)
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: std::fmt::Debug,
{
    *i += 1;
    if *i >= addrs.len() {
        *i = 0;
    }
    let res = svc.call(req(addrs[*i])).now_or_never().unwrap().unwrap();
    assert_eq!(res.status(), 200);
    black_box(res);
}

fn added_cost(c: &mut Criterion) {
    let mut g = c.benchmark_group("throttle_reject_mode_by_ip");
    for n in [1u32, 100_000, 1_000_000] {
        let addrs = ips(n);
        let mut i = 0;
        let mut svc = bare();
        g.bench_with_input(BenchmarkId::new("bare", n), &n, |b, _| {
            b.iter(|| run(&mut svc, &addrs, &mut i))
        });
        let mut svc = shield(false).layer(bare());
        for _ in 0..n {
            run(&mut svc, &addrs, &mut i);
        }
        g.bench_with_input(BenchmarkId::new("tower_shield", n), &n, |b, _| {
            b.iter(|| run(&mut svc, &addrs, &mut i))
        });
        drop(svc);
        let mut svc = GovernorLayer::new(governor_conf()).layer(bare());
        for _ in 0..n {
            run(&mut svc, &addrs, &mut i);
        }
        g.bench_with_input(BenchmarkId::new("tower_governor", n), &n, |b, _| {
            b.iter(|| run(&mut svc, &addrs, &mut i))
        });
    }
    g.finish();
}

fn headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("throttle_headers_1_key");
    let addrs = ips(1);
    let mut i = 0;
    let mut svc = shield(false).layer(bare());
    g.bench_function("tower_shield_without", |b| {
        b.iter(|| run(&mut svc, &addrs, &mut i))
    });
    let mut svc = shield(true).layer(bare());
    g.bench_function("tower_shield_with_ratelimit_fields", |b| {
        b.iter(|| run(&mut svc, &addrs, &mut i))
    });
    let conf = Arc::new(
        GovernorConfigBuilder::default()
            .per_second(1)
            .burst_size(u32::MAX)
            .use_headers()
            .finish()
            .unwrap(),
    );
    let mut svc = GovernorLayer::new(conf).layer(bare());
    g.bench_function("tower_governor_with_headers", |b| {
        b.iter(|| run(&mut svc, &addrs, &mut i))
    });
    g.finish();
}

/// The targets measured directly as added costs: each layered service interleaved with the
/// bare one in every sample (benches/support/paired.rs), and the fields case interleaved with
/// the same layer without fields. tower-shield and tower_governor are measured against the
/// same bare service in the same way, one after the other.
fn added_paired(c: &mut Criterion) {
    let mut g = c.benchmark_group("throttle_added_paired");
    for n in [1u32, 100_000, 1_000_000] {
        // built and primed on first use: a run filtered to other sizes skips the priming
        // of up to a million keys
        let mut addrs: Option<Vec<SocketAddr>> = None;
        let (mut i, mut j) = (0, 0);
        let mut base = bare();
        let mut svc = None;
        g.bench_with_input(BenchmarkId::new("tower_shield", n), &n, |b, _| {
            let addrs = addrs.get_or_insert_with(|| ips(n));
            let svc = svc.get_or_insert_with(|| {
                let mut s = shield(false).layer(bare());
                prime(&mut s, addrs);
                s
            });
            b.iter_custom(|iters| {
                paired::added(
                    iters,
                    || run(&mut base, addrs, &mut i),
                    || run(svc, addrs, &mut j),
                )
            })
        });
        drop(svc);
        let mut svc = None;
        g.bench_with_input(BenchmarkId::new("tower_governor", n), &n, |b, _| {
            let addrs = addrs.get_or_insert_with(|| ips(n));
            let svc = svc.get_or_insert_with(|| {
                let mut s = GovernorLayer::new(governor_conf()).layer(bare());
                prime(&mut s, addrs);
                s
            });
            b.iter_custom(|iters| {
                paired::added(
                    iters,
                    || run(&mut base, addrs, &mut i),
                    || run(svc, addrs, &mut j),
                )
            })
        });
    }
    let addrs = ips(1);
    let (mut i, mut j) = (0, 0);
    let mut without = shield(false).layer(bare());
    let mut with = shield(true).layer(bare());
    g.bench_function("ratelimit_fields_over_without/1", |b| {
        b.iter_custom(|iters| {
            paired::added(
                iters,
                || run(&mut without, &addrs, &mut i),
                || run(&mut with, &addrs, &mut j),
            )
        })
    });
    let mut without = shield(false).layer(typed());
    let mut with = shield(true).layer(typed());
    g.bench_function("ratelimit_fields_over_without_content_type/1", |b| {
        b.iter_custom(|iters| {
            paired::added(
                iters,
                || run(&mut without, &addrs, &mut i),
                || run(&mut with, &addrs, &mut j),
            )
        })
    });
    g.finish();
}

fn memory_per_key(_c: &mut Criterion) {
    let layer = shield(false);
    let mut svc = layer.clone().layer(bare());
    let addrs = ips(1_000_000);
    let mut i = 0;
    for _ in 0..addrs.len() {
        run(&mut svc, &addrs, &mut i);
    }
    let keys = layer.tracked_keys("per-ip").unwrap();
    let bytes = layer.memory_bytes("per-ip").unwrap();
    println!(
        "memory per tracked key: {keys} keys, {bytes} bytes, {:.1} bytes/key",
        bytes as f64 / keys as f64
    );
}

/// Every key of `addrs` once, outside `run` (not counted by `--toggle-collect='throttle::run*'`).
fn prime<S>(svc: &mut S, addrs: &[SocketAddr])
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: std::fmt::Debug,
{
    for a in addrs {
        black_box(svc.call(req(*a)).now_or_never().unwrap().unwrap());
    }
}

/// Instruction-count probe for callgrind: `THROTTLE_IR_PROBE=<config>:<iterations>[:<keys>]`
/// runs one configuration (at 1 key, or cycling through `keys` keys that are all tracked
/// first) and exits before criterion starts. Run it under
/// `valgrind --tool=callgrind --toggle-collect='throttle::run*'`, or compare the total `Ir`
/// of two iteration counts, to get the per-request cost without setup.
fn ir_probe(_c: &mut Criterion) {
    let Ok(spec) = std::env::var("THROTTLE_IR_PROBE") else {
        return;
    };
    let mut parts = spec.split(':');
    let cfg = parts.next().expect("<config>:<iterations>[:<keys>]");
    let n: usize = parts
        .next()
        .and_then(|n| n.parse().ok())
        .expect("iterations");
    let keys: u32 = parts.next().map_or(1, |k| k.parse().expect("keys"));
    let addrs = ips(keys);
    let mut i = 0;
    let mut gov_builder = GovernorConfigBuilder::default();
    gov_builder.per_second(1).burst_size(u32::MAX);
    match cfg {
        "bare" => (0..n).for_each(|_| run(&mut bare(), &addrs, &mut i)),
        "shield" => {
            let mut s = shield(false).layer(bare());
            prime(&mut s, &addrs);
            (0..n).for_each(|_| run(&mut s, &addrs, &mut i))
        }
        "shield_headers" => {
            let mut s = shield(true).layer(bare());
            prime(&mut s, &addrs);
            (0..n).for_each(|_| run(&mut s, &addrs, &mut i))
        }
        "governor" => {
            let mut s = GovernorLayer::new(Arc::new(gov_builder.finish().unwrap())).layer(bare());
            prime(&mut s, &addrs);
            (0..n).for_each(|_| run(&mut s, &addrs, &mut i))
        }
        "governor_headers" => {
            let conf = gov_builder.use_headers().finish().unwrap();
            let mut s = GovernorLayer::new(Arc::new(conf)).layer(bare());
            prime(&mut s, &addrs);
            (0..n).for_each(|_| run(&mut s, &addrs, &mut i))
        }
        other => panic!("unknown probe {other}"),
    }
    std::process::exit(0);
}

/// Load-tolerant timing for a busy machine: `THROTTLE_MIN_PROBE=<rounds>` runs every
/// configuration at 1 key in interleaved short samples (10 000 requests each) and prints the
/// fastest sample of each (preemption only ever makes a sample slower), then exits.
fn min_probe(_c: &mut Criterion) {
    let Ok(rounds) = std::env::var("THROTTLE_MIN_PROBE") else {
        return;
    };
    let (rounds, keys) = rounds.split_once(':').unwrap_or((&rounds, "1"));
    let rounds: usize = rounds.parse().expect("rounds");
    let keys: u32 = keys.parse().expect("keys");
    if keys > 1 {
        return min_probe_keys(rounds, keys);
    }
    let addrs = ips(1);
    let mut gb = GovernorConfigBuilder::default();
    gb.per_second(1).burst_size(u32::MAX);
    let mut s0 = shield(false).layer(bare());
    let mut s1 = shield(true).layer(bare());
    let mut s2 = shield(false).layer(typed());
    let mut s3 = shield(true).layer(typed());
    let mut g0 = GovernorLayer::new(Arc::new(gb.finish().unwrap())).layer(bare());
    let mut g1 = GovernorLayer::new(Arc::new(gb.use_headers().finish().unwrap())).layer(bare());
    let mut b0 = bare();
    let mut b1 = typed();
    const N: u32 = 10_000;
    let mut best = [f64::MAX; 8];
    let mut all: [Vec<f64>; 8] = Default::default();
    let names = [
        "bare",
        "tower_shield",
        "tower_shield_with_ratelimit_fields",
        "tower_governor",
        "tower_governor_with_headers",
        "bare_content_type",
        "tower_shield_content_type",
        "tower_shield_with_ratelimit_fields_content_type",
    ];
    let mut i = 0;
    for _ in 0..rounds {
        let mut time = |k: usize, f: &mut dyn FnMut()| {
            let t = std::time::Instant::now();
            for _ in 0..N {
                f();
            }
            let ns = t.elapsed().as_nanos() as f64 / f64::from(N);
            best[k] = best[k].min(ns);
            all[k].push(ns);
        };
        time(0, &mut || run(&mut b0, &addrs, &mut i));
        time(1, &mut || run(&mut s0, &addrs, &mut i));
        time(2, &mut || run(&mut s1, &addrs, &mut i));
        time(3, &mut || run(&mut g0, &addrs, &mut i));
        time(4, &mut || run(&mut g1, &addrs, &mut i));
        time(5, &mut || run(&mut b1, &addrs, &mut i));
        time(6, &mut || run(&mut s2, &addrs, &mut i));
        time(7, &mut || run(&mut s3, &addrs, &mut i));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<f64> = all.iter_mut().map(med).collect();
    for ((n, b), m) in names.iter().zip(best).zip(&medians) {
        println!("{n:52} {b:7.1} ns (median sample {m:7.1})");
    }
    let report = |label: &str, v: &[f64]| {
        println!(
            "{label}: shield {:.1}, governor {:.1} (ratio {:.2}); fields +{:.1} (content-type: shield {:.1}, fields +{:.1}); governor headers +{:.1}",
            v[1] - v[0],
            v[3] - v[0],
            (v[1] - v[0]) / (v[3] - v[0]),
            v[2] - v[1],
            v[6] - v[5],
            v[7] - v[6],
            v[4] - v[3],
        )
    };
    report("median samples, added", &medians);
    report("added", &best);
    std::process::exit(0);
}

/// `THROTTLE_MIN_PROBE=<rounds>:<keys>`: bare, tower-shield and tower_governor with every
/// key tracked, fastest interleaved sample of each.
fn min_probe_keys(rounds: usize, keys: u32) {
    let addrs = ips(keys);
    let mut i = 0;
    let mut b0 = bare();
    let mut s0 = shield(false).layer(bare());
    let mut gb = GovernorConfigBuilder::default();
    gb.per_second(1).burst_size(u32::MAX);
    let mut g0 = GovernorLayer::new(Arc::new(gb.finish().unwrap())).layer(bare());
    for _ in 0..keys {
        run(&mut s0, &addrs, &mut i);
        run(&mut g0, &addrs, &mut i);
    }
    const N: u32 = 10_000;
    let mut best = [f64::MAX; 3];
    for _ in 0..rounds {
        let mut time = |k: usize, f: &mut dyn FnMut()| {
            let t = std::time::Instant::now();
            for _ in 0..N {
                f();
            }
            best[k] = best[k].min(t.elapsed().as_nanos() as f64 / f64::from(N));
        };
        time(0, &mut || run(&mut b0, &addrs, &mut i));
        time(1, &mut || run(&mut s0, &addrs, &mut i));
        time(2, &mut || run(&mut g0, &addrs, &mut i));
    }
    println!(
        "{keys} keys: bare {:.1} ns, tower_shield {:.1}, tower_governor {:.1}; added: shield {:.1}, governor {:.1} (ratio {:.2})",
        best[0],
        best[1],
        best[2],
        best[1] - best[0],
        best[2] - best[0],
        (best[1] - best[0]) / (best[2] - best[0]),
    );
    std::process::exit(0);
}

criterion_group!(
    benches,
    min_probe,
    ir_probe,
    added_cost,
    headers,
    added_paired,
    memory_per_key
);
criterion_main!(benches);
