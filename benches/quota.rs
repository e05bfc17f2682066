//! Added cost of the quota layer per request: in-memory store and durable store (the
//! flusher runs off the request path), against a bare `service_fn`.
//!
//! `cargo bench --bench quota --features quota -- --warm-up-time 1 --measurement-time 3`
//!
//! Two inner services: one answering a response without headers (the first `RateLimit`
//! field then pays for the header map's first allocation), and one whose responses carry a
//! `content-type` header, as real responses do (`*_ct` cases, with their own bare baseline).
//!
//! Instruction counts (load-independent): `QUOTA_PROBE=<case> QUOTA_PROBE_N=<n>` runs `n`
//! requests of one case and exits without criterion, e.g.
//! `QUOTA_PROBE=memory_one_quota QUOTA_PROBE_N=20000 valgrind --tool=callgrind <bench binary>`;
//! run it with two values of `n` and divide the difference of the totals by the difference
//! of `n`. Cases: `bare`, `memory_one_quota`, `memory_two_quotas`, `durable_one_quota`,
//! `durable_two_quotas` (admitted responses without `RateLimit` fields, the default), the
//! same with `_with_fields` (`headers_on_success(true)`), and all of them with `_ct` appended.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use futures_util::FutureExt;
use http::{HeaderValue, Request, Response, header};
use http_body_util::Full;
use tower::{Layer, Service};
use tower_shield::clock::system_clock;
use tower_shield::quota::{
    DurableCounterStore, DurableOptions, MemoryCounterStore, Quota, QuotaLayer, QuotaStore, Window,
};
use tower_shield::{CredentialKind, Principal};

#[path = "support/paired.rs"]
mod paired;

type Inner = tower::util::ServiceFn<fn(Request<()>) -> Ready>;
type Ready = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

fn plain(_req: Request<()>) -> Ready {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok")))))
}

fn with_content_type(_req: Request<()>) -> Ready {
    let mut res = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    std::future::ready(Ok(res))
}

fn inner(ct: bool) -> Inner {
    tower::service_fn(if ct { with_content_type } else { plain })
}

/// The layer of the cases: `fields` turns on `RateLimit` fields on admitted responses (off
/// by default; denials always carry them).
fn layer(store: QuotaStore, fields: bool) -> QuotaLayer {
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
        .headers_on_success(fields)
        .build()
        .unwrap()
}

fn durable(dir: &tempfile::TempDir, name: &str) -> DurableCounterStore {
    DurableCounterStore::open(
        dir.path().join(name),
        DurableOptions {
            flush_interval: Duration::from_millis(250),
            ..Default::default()
        },
    )
    .unwrap()
}

fn req(p: &Principal) -> Request<()> {
    let mut r = Request::get("/products").body(()).unwrap();
    r.extensions_mut().insert(p.clone());
    r
}

type Boxed = Box<dyn FnMut() -> Response<Full<Bytes>>>;

/// The cases by name: (name, one request through it).
fn cases(dir: &tempfile::TempDir) -> Vec<(String, Boxed)> {
    let free = Principal::new("client-42", CredentialKind::ApiKey).with_plan("free");
    let pro = Principal::new("client-43", CredentialKind::ApiKey).with_plan("pro");
    let mut out: Vec<(String, Boxed)> = Vec::new();
    for ct in [false, true] {
        let sfx = if ct { "_ct" } else { "" };
        let mut bare = inner(ct);
        let f = free.clone();
        out.push((
            format!("bare_service_fn{sfx}"),
            Box::new(move || bare.call(req(&f)).now_or_never().unwrap().unwrap()),
        ));
        for fields in [false, true] {
            let f_sfx = if fields { "_with_fields" } else { "" };
            let mem = layer(
                QuotaStore::Memory(MemoryCounterStore::new(system_clock())),
                fields,
            );
            let (mut a, mut b) = (mem.layer(inner(ct)), mem.layer(inner(ct)));
            let (f, p) = (free.clone(), pro.clone());
            out.push((
                format!("memory_one_quota{f_sfx}{sfx}"),
                Box::new(move || a.call(req(&f)).now_or_never().unwrap().unwrap()),
            ));
            out.push((
                format!("memory_two_quotas{f_sfx}{sfx}"),
                Box::new(move || b.call(req(&p)).now_or_never().unwrap().unwrap()),
            ));
            let dur = layer(
                QuotaStore::Durable(durable(dir, &format!("bench{f_sfx}{sfx}.redb"))),
                fields,
            );
            let (mut a, mut b) = (dur.layer(inner(ct)), dur.layer(inner(ct)));
            let (f, p) = (free.clone(), pro.clone());
            out.push((
                format!("durable_one_quota{f_sfx}{sfx}"),
                Box::new(move || a.call(req(&f)).now_or_never().unwrap().unwrap()),
            ));
            out.push((
                format!("durable_two_quotas{f_sfx}{sfx}"),
                Box::new(move || b.call(req(&p)).now_or_never().unwrap().unwrap()),
            ));
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("quota");
    for (name, mut f) in cases(&dir) {
        g.bench_function(name, |b| b.iter(|| black_box(f())));
    }
    g.finish();
}

/// The targets measured directly as added costs: each case interleaved with its bare
/// service (the same inner service) in every sample (benches/support/paired.rs), so drift of
/// the machine's speed between two separate benchmarks does not enter the difference. Only
/// the default configuration (no fields on admitted responses).
fn bench_paired(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut cs = cases(&dir);
    let mut take = |name: &str| {
        let at = cs.iter().position(|(n, _)| n == name).expect("bare case");
        cs.remove(at).1
    };
    let (mut bare, mut bare_ct) = (take("bare_service_fn"), take("bare_service_fn_ct"));
    let mut g = c.benchmark_group("quota_added_paired");
    for (name, mut f) in cs {
        if name.contains("_with_fields") {
            continue;
        }
        let base = if name.ends_with("_ct") {
            &mut bare_ct
        } else {
            &mut bare
        };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                paired::added(
                    iters,
                    || {
                        black_box(base());
                    },
                    || {
                        black_box(f());
                    },
                )
            })
        });
    }
    g.finish();
}

fn probe() -> bool {
    let Ok(case) = std::env::var("QUOTA_PROBE") else {
        return false;
    };
    let n: u64 = std::env::var("QUOTA_PROBE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let case = if case == "bare" {
        "bare_service_fn".to_owned()
    } else if case == "bare_ct" {
        "bare_service_fn_ct".to_owned()
    } else {
        case
    };
    let (_, mut f) = cases(&dir)
        .into_iter()
        .find(|(name, _)| *name == case)
        .expect("unknown QUOTA_PROBE case");
    for _ in 0..n {
        black_box(f());
    }
    true
}

criterion_group!(benches, bench, bench_paired);

fn main() {
    if probe() {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
