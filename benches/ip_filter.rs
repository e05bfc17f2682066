//! Added cost of the Shield with only the IP filter, against a bare `service_fn`.
//!
//! Run: `cargo bench --bench ip_filter`

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_shield::{ClientIpResolver, IpFilterLayer, Shield};

fn request(peer: SocketAddr) -> Request<Full<Bytes>> {
    let mut req = Request::get("/products/42")
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.extensions_mut().insert(peer);
    req
}

fn bench<S>(c: &mut Criterion, name: &str, svc: S, peer: SocketAddr)
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone,
{
    c.bench_function(name, |b| {
        b.iter(|| {
            let res = svc
                .clone()
                .oneshot(request(peer))
                .now_or_never()
                .unwrap()
                .unwrap();
            std::hint::black_box(res);
        })
    });
}

fn benches(c: &mut Criterion) {
    let peer: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let denied: SocketAddr = "203.0.113.7:40000".parse().unwrap();
    let bare = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });

    // 100 deny ranges and 10 trusted-proxy ranges: a realistic list, looked up in O(log n)
    let mut filter = IpFilterLayer::builder();
    for i in 0..100u32 {
        filter = filter.deny(&format!("203.0.{i}.0/24")).unwrap();
    }
    let resolver = (0..10u32).fold(ClientIpResolver::builder(), |b, i| {
        b.trusted_proxy(&format!("10.{i}.0.0/16")).unwrap()
    });
    let shield = Shield::builder()
        .client_ip(resolver.build())
        .routes([
            "GET /products",
            "GET /products/{id}",
            "POST /cart",
            "/admin/*",
        ])
        .ip_filter(filter.build())
        .build()
        .unwrap();
    let empty = Shield::builder().build().unwrap();

    bench(c, "bare service_fn", bare, peer);
    bench(
        c,
        "shield: nothing configured",
        ServiceBuilder::new().layer(empty).service(bare),
        peer,
    );
    bench(
        c,
        "shield: ip filter, allowed",
        ServiceBuilder::new().layer(shield.clone()).service(bare),
        peer,
    );
    bench(
        c,
        "shield: ip filter, denied (403 problem+json)",
        ServiceBuilder::new().layer(shield).service(bare),
        denied,
    );
}

criterion_group!(ip_filter, benches);
criterion_main!(ip_filter);
