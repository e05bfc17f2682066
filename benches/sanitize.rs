//! Sanitize layer cost per request, end to end in the layer (buffering, UTF-8 check,
//! streaming JSON pass with structure limits, pre-filter, detectors on candidates, rebuilt
//! request), against a bare service and a naive stack (`serde_json::Value` + libinjectionrs
//! on every string).
//!
//! `cargo bench --bench sanitize --features sanitize -- --warm-up-time 1 --measurement-time 3`
//!
//! Instruction-count probe (no criterion): `SANITIZE_PROBE=1k|16k|64k` (optionally
//! `SANITIZE_PROBE_N=<iterations>`, `SANITIZE_PROBE_BARE=1` for the bare service) runs
//! the same request as the bench in a loop inside `probe_run`, e.g.
//! `valgrind --tool=callgrind --toggle-collect='*probe_run*' target/release/deps/sanitize-…`
//! and divide the instruction count by the iterations. `SANITIZE_PROBE_VARY_UA=1` gives
//! every request its own `User-Agent` (the header memo of clean values never hits).

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use serde_json::Value;
use tower::{Layer, Service, ServiceExt};
use tower_shield::sanitize::SanitizeLayer;

/// A typical ~1 KiB order body: names, address, items, free text.
fn order(i: usize) -> String {
    format!(
        r#"{{"order_id":"ord-2024-{i:06}","customer":{{"id":48213,"first_name":"Siobhan","last_name":"O'Brien","email":"siobhan.obrien@example.com","phone":"+353 1 555 0142"}},"shipping":{{"line1":"12 Rock & Roll Lane","line2":"Apt 5","city":"Dublin","postcode":"D02 X285","country":"IE"}},"items":[{{"sku":"TSHIRT-BLK-M","name":"T-shirt, black (M)","qty":2,"unit_price":19.99}},{{"sku":"MUG-WHT","name":"Mug \"Best dad\"","qty":1,"unit_price":9.5}},{{"sku":"CAP-RED","name":"Cap","qty":1,"unit_price":14.0}}],"coupon":"SPRING-10","gift":true,"note":"Please leave the parcel with the neighbour at no. 14 if I'm not home; 5 < 6 so ring twice.","billing":{{"same_as_shipping":true,"vat_id":"IE6388047V","company":"Kelly's Café Ltd"}},"device":{{"os":"iOS 17.4","app_version":"5.12.0","locale":"en-IE"}},"payment":{{"method":"card","brand":"visa","last4":"4242","3ds":true}},"currency":"EUR","total":63.48,"created_at":"2024-03-18T09:41:27Z","tags":["web","mobile-app","returning"],"referrer":"newsletter-2024-03","ab":"checkout-v2"}}"#
    )
}

fn body_of(size: usize) -> String {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < size - 1100 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&order(i));
        i += 1;
    }
    s.push(']');
    s
}

fn naive(body: &[u8]) -> bool {
    fn walk(v: &Value) -> bool {
        match v {
            Value::String(s) => {
                libinjectionrs::detect_sqli(s.as_bytes()).is_injection()
                    || libinjectionrs::detect_xss(s.as_bytes()).is_injection()
            }
            Value::Array(a) => a.iter().any(walk),
            Value::Object(o) => o
                .iter()
                .any(|(k, v)| libinjectionrs::detect_sqli(k.as_bytes()).is_injection() || walk(v)),
            _ => false,
        }
    }
    let v: Value = serde_json::from_slice(body).unwrap();
    walk(&v)
}

const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0";

fn request(b: &Bytes) -> Request<Full<Bytes>> {
    request_ua(b, HeaderValue::from_static(UA))
}

fn request_ua(b: &Bytes, ua: HeaderValue) -> Request<Full<Bytes>> {
    Request::post("/orders")
        .header("content-type", "application/json")
        .header("user-agent", ua)
        .body(Full::new(b.clone()))
        .unwrap()
}

fn body_named(name: &str) -> Bytes {
    match name {
        "1k" => Bytes::from(order(1)),
        "16k" => Bytes::from(body_of(16 * 1024)),
        "64k" => Bytes::from(body_of(64 * 1024)),
        other => panic!("unknown probe size {other}"),
    }
}

/// The probe loop: `n` requests through the layer (or the bare service), with the
/// user agents `uas` (one per request) or the fixed one.
#[inline(never)]
fn probe_run<S>(rt: &tokio::runtime::Runtime, svc: &S, body: &Bytes, n: usize, uas: &[HeaderValue])
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone,
{
    for i in 0..n {
        let ua = uas.get(i).cloned().unwrap_or(HeaderValue::from_static(UA));
        rt.block_on(async {
            let mut s = svc.clone();
            let s = s.ready().await.unwrap();
            let res = s.call(request_ua(body, ua)).await.unwrap();
            assert_eq!(res.status(), 200);
            black_box(res)
        });
    }
}

fn probe(name: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let inner = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let body = body_named(name);
    let n = std::env::var("SANITIZE_PROBE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let uas: Vec<HeaderValue> = if std::env::var_os("SANITIZE_PROBE_VARY_UA").is_some() {
        (0..n)
            .map(|i| HeaderValue::try_from(format!("{UA} r{i}")).unwrap())
            .collect()
    } else {
        Vec::new()
    };
    if std::env::var_os("SANITIZE_PROBE_BARE").is_some() {
        probe_run(&rt, &inner, &body, n, &uas);
    } else {
        let svc = SanitizeLayer::builder().build().unwrap().layer(inner);
        // warm-up requests outside the probe (thread-local buffers, lazy statics)
        probe_run_warm(&rt, &svc, &body);
        probe_run(&rt, &svc, &body, n, &uas);
    }
    println!("probe {name}: {n} requests, {} body bytes", body.len());
}

#[inline(never)]
fn probe_run_warm<S>(rt: &tokio::runtime::Runtime, svc: &S, body: &Bytes)
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone,
{
    for _ in 0..2 {
        rt.block_on(async {
            let mut s = svc.clone();
            let s = s.ready().await.unwrap();
            black_box(s.call(request(body)).await.unwrap())
        });
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let inner = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let layer = SanitizeLayer::builder().build().unwrap();
    let svc = layer.layer(inner);

    let one_k = Bytes::from(order(1));
    let mut g = c.benchmark_group("sanitize_json");
    for (name, body) in [
        ("1k", one_k.clone()),
        ("16k", Bytes::from(body_of(16 * 1024))),
        ("64k", Bytes::from(body_of(64 * 1024))),
    ] {
        g.throughput(Throughput::Bytes(body.len() as u64));
        let req = request;
        g.bench_with_input(BenchmarkId::new("bare", name), &body, |bch, b| {
            bch.iter(|| {
                rt.block_on(async {
                    let mut s = inner;
                    let s = s.ready().await.unwrap();
                    black_box(s.call(req(b)).await.unwrap())
                })
            })
        });
        g.bench_with_input(BenchmarkId::new("layer", name), &body, |bch, b| {
            bch.iter(|| {
                rt.block_on(async {
                    let mut s = svc.clone();
                    let s = s.ready().await.unwrap();
                    let res = s.call(req(b)).await.unwrap();
                    assert_eq!(res.status(), 200);
                    black_box(res)
                })
            })
        });
        g.bench_with_input(
            BenchmarkId::new("naive_value_libinjection", name),
            &body,
            |bch, b| bch.iter(|| black_box(naive(b))),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(name) = std::env::var("SANITIZE_PROBE") {
        probe(&name);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
