//! Audit layer costs.
//!
//! - `request_path`: time spent on the request path per request (call + completion of a
//!   ready inner service) — bare `service_fn` vs. the audit layer with a buffered
//!   JSON-lines file sink (with and without the chain). The writer drains between timed
//!   chunks, so only the request path is measured.
//! - `writer`: records per second the writer thread sustains into a file (time for a
//!   burst of requests until the file is flushed, per record).
//! - `*_cpu` variants measure CPU time (from `/proc/thread-self/schedstat` for the request
//!   path, and the `tower-shield-audit` thread's schedstat for the writer) instead of wall
//!   time: on a shared, overloaded machine, wall time mostly measures the other tenants.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceBuilder};
use tower_shield::audit::{AuditLayer, FileSink};

/// Nanoseconds this thread has spent on a CPU.
fn thread_cpu_ns() -> u64 {
    schedstat("/proc/thread-self/schedstat")
}

fn schedstat(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU nanoseconds of the audit writer thread.
fn writer_cpu_ns() -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() == "tower-shield-au" {
            total += schedstat(&e.path().join("schedstat").to_string_lossy());
        }
    }
    total
}

fn request(i: u64) -> Request<()> {
    let mut r = Request::get("/products/42?page=2&access_token=abc")
        .header("user-agent", "bench/1.0 (x86_64)")
        .header("x-request-id", "bench-request-id-1")
        .body(())
        .unwrap();
    r.extensions_mut().insert(std::net::SocketAddr::from((
        [192, 0, 2, (i % 250) as u8],
        40000,
    )));
    r
}

fn layer(dir: &std::path::Path, name: &str, chain: bool) -> AuditLayer {
    let mut b = AuditLayer::builder()
        .file(
            FileSink::builder(dir.join(name))
                .max_bytes(256 << 20)
                .build()
                .unwrap(),
        )
        .capacity(16_384);
    if chain {
        b = b.chain_key(b"bench-chain-key-0123456789abcdef".to_vec());
    }
    b.build().unwrap()
}

fn inner()
-> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone
{
    tower::service_fn(|_r: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
            b"{\"ok\":true}",
        ))))
    })
}

fn request_path(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("request_path");
    g.bench_function("bare_service_fn", |b| {
        let mut svc = inner();
        let mut i = 0;
        b.iter(|| {
            i += 1;
            svc.call(request(i)).now_or_never().unwrap().unwrap()
        })
    });
    for (name, chain) in [("audit_file", false), ("audit_file_chained", true)] {
        let audit = layer(dir.path(), name, chain);
        let mut svc = ServiceBuilder::new().layer(audit.clone()).service(inner());
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let chunk = (iters - done).min(8_000);
                    let start = Instant::now();
                    for i in 0..chunk {
                        let _ = svc.call(request(i)).now_or_never().unwrap().unwrap();
                    }
                    spent += start.elapsed();
                    done += chunk;
                    assert!(audit.flush(Duration::from_secs(60)));
                }
                spent
            })
        });
    }
    g.bench_function("bare_service_fn_cpu", |b| {
        let mut svc = inner();
        b.iter_custom(|iters| {
            // schedstat advances at scheduler ticks: run enough to make ticks negligible.
            let n = iters.max(200_000);
            let start = thread_cpu_ns();
            for i in 0..n {
                let _ = svc.call(request(i)).now_or_never().unwrap().unwrap();
            }
            Duration::from_nanos((thread_cpu_ns() - start) * iters / n)
        })
    });
    let audit = layer(dir.path(), "cpu", false);
    let mut svc = ServiceBuilder::new().layer(audit.clone()).service(inner());
    g.bench_function("audit_file_cpu", |b| {
        b.iter_custom(|iters| {
            let n = iters.max(100_000);
            let mut spent = 0;
            let mut done = 0;
            while done < n {
                let chunk = (n - done).min(8_000);
                let start = thread_cpu_ns();
                for i in 0..chunk {
                    let _ = svc.call(request(i)).now_or_never().unwrap().unwrap();
                }
                spent += thread_cpu_ns() - start;
                done += chunk;
                assert!(audit.flush(Duration::from_secs(60)));
            }
            Duration::from_nanos(spent * iters / n)
        })
    });
    g.finish();
}

fn writer(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("writer");
    for (name, chain) in [("file", false), ("file_chained", true)] {
        let audit = layer(dir.path(), &format!("w-{name}"), chain);
        let mut svc = ServiceBuilder::new().layer(audit.clone()).service(inner());
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for i in 0..iters {
                    let _ = svc.call(request(i)).now_or_never().unwrap().unwrap();
                }
                assert!(audit.flush(Duration::from_secs(60)));
                start.elapsed()
            })
        });
    }
    // CPU time of the writer thread per record (its capacity when it has a core).
    for (name, chain) in [("file_cpu", false), ("file_chained_cpu", true)] {
        let audit = layer(dir.path(), &format!("w-{name}"), chain);
        let mut svc = ServiceBuilder::new().layer(audit.clone()).service(inner());
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = writer_cpu_ns();
                for i in 0..iters {
                    let _ = svc.call(request(i)).now_or_never().unwrap().unwrap();
                }
                assert!(audit.flush(Duration::from_secs(60)));
                Duration::from_nanos(writer_cpu_ns().saturating_sub(start))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, request_path, writer);
criterion_main!(benches);
