//! Added cost of the quota layer per request: in-memory store and durable store (the
//! flusher runs off the request path), against a bare `service_fn`.
//!
//! `cargo bench --bench quota --features quota -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service};
use tower_shield::clock::system_clock;
use tower_shield::quota::{
    DurableCounterStore, DurableOptions, MemoryCounterStore, Quota, QuotaLayer, QuotaStore, Window,
};
use tower_shield::{CredentialKind, Principal};

fn inner()
-> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    })
}

fn layer(store: QuotaStore) -> QuotaLayer {
    QuotaLayer::builder()
        .store(store)
        .plan(
            "free",
            [Quota::new("monthly", u64::MAX / 2, Window::month())],
        )
        .plan(
            "pro",
            [
                Quota::new("monthly", u64::MAX / 2, Window::month()),
                Quota::new("daily", u64::MAX / 2, Window::day()),
            ],
        )
        .build()
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let free = Principal::new("client-42", CredentialKind::ApiKey).with_plan("free");
    let pro = Principal::new("client-43", CredentialKind::ApiKey).with_plan("pro");
    let req = |p: &Principal| {
        let mut r = Request::get("/products").body(()).unwrap();
        r.extensions_mut().insert(p.clone());
        r
    };
    let mut g = c.benchmark_group("quota");

    let mut bare = inner();
    g.bench_function("bare_service_fn", |b| {
        b.iter(|| black_box(bare.call(req(&free)).now_or_never().unwrap().unwrap()))
    });

    let mut mem = layer(QuotaStore::Memory(MemoryCounterStore::new(system_clock()))).layer(inner());
    g.bench_function("memory_one_quota", |b| {
        b.iter(|| black_box(mem.call(req(&free)).now_or_never().unwrap().unwrap()))
    });
    g.bench_function("memory_two_quotas", |b| {
        b.iter(|| black_box(mem.call(req(&pro)).now_or_never().unwrap().unwrap()))
    });

    let mut quiet = QuotaLayer::builder()
        .store(QuotaStore::Memory(MemoryCounterStore::new(system_clock())))
        .plan(
            "free",
            [Quota::new("monthly", u64::MAX / 2, Window::month())],
        )
        .headers_on_success(false)
        .build()
        .unwrap()
        .layer(inner());
    g.bench_function("memory_one_quota_no_headers", |b| {
        b.iter(|| black_box(quiet.call(req(&free)).now_or_never().unwrap().unwrap()))
    });

    let dir = tempfile::tempdir().unwrap();
    let store = DurableCounterStore::open(
        dir.path().join("bench.redb"),
        DurableOptions {
            flush_interval: Duration::from_millis(250),
            ..Default::default()
        },
    )
    .unwrap();
    let mut dur = layer(QuotaStore::Durable(store)).layer(inner());
    g.bench_function("durable_one_quota", |b| {
        b.iter(|| black_box(dur.call(req(&free)).now_or_never().unwrap().unwrap()))
    });
    g.bench_function("durable_two_quotas", |b| {
        b.iter(|| black_box(dur.call(req(&pro)).now_or_never().unwrap().unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
