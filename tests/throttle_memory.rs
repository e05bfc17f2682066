//! Throttle decisions with the in-memory store: exactness, delay pacing, keys, caps.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_shield::clock::ManualClock;
use tower_shield::throttle::{Action, Key, MemoryRateStore, Policy, Rate, ThrottleLayer};
use tower_shield::{ClientIpResolver, Principal, RequestFacts};

type Body = Full<Bytes>;

type Ready = std::future::Ready<Result<Response<Body>, Infallible>>;

fn ok(_req: Request<()>) -> Ready {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from("ok")))))
}

fn ok_service() -> tower::util::ServiceFn<fn(Request<()>) -> Ready> {
    tower::service_fn(ok as fn(Request<()>) -> Ready)
}

fn req_from(peer: &str, path: &str) -> Request<()> {
    let mut r = Request::builder().uri(path).body(()).unwrap();
    r.extensions_mut()
        .insert(peer.parse::<SocketAddr>().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_burst_of_many_concurrent_requests_are_admitted() {
    let clock = ManualClock::at_unix(0);
    let layer = ThrottleLayer::builder()
        .clock(Arc::new(clock.clone()))
        .policy(Policy::rate("p", Rate::per_hour(1)).burst(37))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(layer).service(ok_service());
    let admitted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let svc = svc.clone();
        let admitted = admitted.clone();
        tasks.push(tokio::spawn(async move {
            let res = svc.oneshot(req_from("192.0.2.1:1000", "/")).await.unwrap();
            if res.status() == StatusCode::OK {
                admitted.fetch_add(1, Ordering::SeqCst);
            } else {
                assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(admitted.load(Ordering::SeqCst), 37);
    // one interval later exactly one more
    clock.advance(Duration::from_secs(3600));
    let mut ok = 0;
    for _ in 0..5 {
        let res = svc
            .clone()
            .oneshot(req_from("192.0.2.1:1000", "/"))
            .await
            .unwrap();
        ok += usize::from(res.status() == StatusCode::OK);
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn denial_is_problem_json_with_ratelimit_fields_and_retry_after() {
    let clock = ManualClock::at_unix(0);
    let layer = ThrottleLayer::builder()
        .clock(Arc::new(clock.clone()))
        .policy(Policy::rate("per-ip", Rate::per_minute(6)).burst(2))
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(ok_service());
    for _ in 0..2 {
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(req_from("192.0.2.1:1", "/"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    clock.advance(Duration::from_millis(1500));
    let r = svc
        .ready()
        .await
        .unwrap()
        .call(req_from("192.0.2.1:1", "/"))
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // next unit at 10 s; 8.5 s from now → rounded up to 9
    assert_eq!(r.headers()["retry-after"], "9");
    assert_eq!(r.headers()["ratelimit-policy"], r#""per-ip";q=6;w=60"#);
    assert_eq!(r.headers()["ratelimit"], r#""per-ip";r=0;t=9"#);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["status"], 429);
    assert_eq!(
        body["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(body["violated-policies"], serde_json::json!(["per-ip"]));
    assert!(!body.to_string().contains("192.0.2.1"));
}

#[tokio::test]
async fn allowed_responses_carry_fields_when_enabled() {
    let clock = ManualClock::at_unix(0);
    let layer = ThrottleLayer::builder()
        .clock(Arc::new(clock.clone()))
        .rate_limit_headers(true)
        .policy(Policy::rate("per-ip", Rate::per_second(10)).burst(5))
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(ok_service());
    let r = svc
        .ready()
        .await
        .unwrap()
        .call(req_from("192.0.2.1:1", "/"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ratelimit-policy"], r#""per-ip";q=10;w=1"#);
    assert_eq!(r.headers()["ratelimit"], r#""per-ip";r=4;t=1"#);
}

#[tokio::test(start_paused = true)]
async fn delay_paces_requests_and_rejects_over_bound_at_once() {
    let clock = ManualClock::at_unix(0);
    let layer = ThrottleLayer::builder()
        .clock(Arc::new(clock.clone()))
        .policy(
            Policy::rate("pace", Rate::per_second(10))
                .burst(1)
                .action(Action::Delay {
                    max_wait: Duration::from_millis(350),
                }),
        )
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let inner = tower::service_fn(move |_req: Request<()>| {
        seen2.lock().unwrap().push(start.elapsed());
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
    });
    let svc = ServiceBuilder::new().layer(layer).service(inner);
    // six requests at the same instant: waits 0, 100, 200, 300 ms; the 5th (400 ms) and
    // 6th exceed the 350 ms bound and are rejected without waiting
    let mut futs = Vec::new();
    for _ in 0..6 {
        futs.push(tokio::spawn(
            svc.clone().oneshot(req_from("192.0.2.1:1", "/")),
        ));
    }
    let mut statuses = Vec::new();
    let mut reject_times = Vec::new();
    for f in futs {
        let r = f.await.unwrap().unwrap();
        if r.status() == 429 {
            reject_times.push(start.elapsed());
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    let seen = seen.lock().unwrap().clone();
    let ms: Vec<u128> = seen.iter().map(|d| d.as_millis()).collect();
    assert_eq!(ms, [0, 100, 200, 300]);
    // the rejections were ready before the 4th request had even finished waiting
    assert!(
        reject_times
            .iter()
            .all(|t| *t <= Duration::from_millis(300))
    );
}

#[tokio::test(start_paused = true)]
async fn delay_never_exceeds_grpc_timeout() {
    let clock = ManualClock::at_unix(0);
    let layer = ThrottleLayer::builder()
        .clock(Arc::new(clock.clone()))
        .policy(
            Policy::rate("pace", Rate::per_second(10))
                .burst(1)
                .action(Action::Delay {
                    max_wait: Duration::from_secs(5),
                }),
        )
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(ok_service());
    let grpc = || {
        let mut r = Request::builder()
            .uri("/grpc.health.v1.Health/Check")
            .header("content-type", "application/grpc")
            .header("grpc-timeout", "150m")
            .body(())
            .unwrap();
        r.extensions_mut()
            .insert("192.0.2.1:1".parse::<SocketAddr>().unwrap());
        r
    };
    let a = svc.ready().await.unwrap().call(grpc()).await.unwrap();
    assert_eq!(a.status(), 200);
    let b = svc.ready().await.unwrap().call(grpc()).await.unwrap(); // waits 100 ms
    assert!(b.headers().get("grpc-status").is_none());
    let c = svc.ready().await.unwrap().call(grpc()).await.unwrap(); // would wait 200 ms > 150
    assert_eq!(c.headers()["grpc-status"], "8");
}

#[tokio::test]
async fn spoofed_forwarded_for_from_untrusted_peer_does_not_change_the_key() {
    let layer = ThrottleLayer::builder()
        .resolver(
            ClientIpResolver::builder()
                .trusted_proxy("10.0.0.0/8")
                .unwrap()
                .build(),
        )
        .policy(Policy::rate("per-ip", Rate::per_hour(1)).burst(1))
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(ok_service());
    let spoof = |xff: &str| {
        let mut r = Request::builder()
            .uri("/")
            .header("x-forwarded-for", xff)
            .body(())
            .unwrap();
        r.extensions_mut()
            .insert("198.51.100.7:5000".parse::<SocketAddr>().unwrap());
        r
    };
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(spoof("1.1.1.1"))
            .await
            .unwrap()
            .status(),
        200
    );
    for i in 2..10 {
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(spoof(&format!("1.1.1.{i}")))
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            429,
            "a spoofed header must not give a fresh key"
        );
    }
    // a trusted proxy's header is honoured
    let via_proxy = |client: &str| {
        let mut r = Request::builder()
            .uri("/")
            .header("x-forwarded-for", client)
            .body(())
            .unwrap();
        r.extensions_mut()
            .insert("10.0.0.1:5000".parse::<SocketAddr>().unwrap());
        r
    };
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(via_proxy("203.0.113.1"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(via_proxy("203.0.113.2"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(via_proxy("203.0.113.1"))
            .await
            .unwrap()
            .status(),
        429
    );
}

#[tokio::test]
async fn ipv6_clients_are_keyed_by_64_prefix() {
    let layer = ThrottleLayer::builder()
        .policy(Policy::rate("per-ip", Rate::per_hour(1)).burst(1))
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(ok_service());
    let r = svc
        .ready()
        .await
        .unwrap()
        .call(req_from("[2001:db8:1:2::1]:1", "/"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = svc
        .ready()
        .await
        .unwrap()
        .call(req_from("[2001:db8:1:2:ffff::9]:1", "/"))
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let r = svc
        .ready()
        .await
        .unwrap()
        .call(req_from("[2001:db8:1:3::1]:1", "/"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn several_policies_routes_costs_and_business_keys() {
    let clock = ManualClock::at_unix(0);
    let layer = ThrottleLayer::builder()
        .clock(Arc::new(clock.clone()))
        .policy(Policy::rate("global", Rate::per_hour(100)).burst(100))
        .policy(
            Policy::rate("login", Rate::per_hour(1))
                .burst(2)
                .route("POST /login")
                .unwrap(),
        )
        .policy(
            Policy::rate("sku", Rate::per_hour(1))
                .burst(1)
                .key(Key::principal().and(tower_shield::throttle::KeyPart::PathParam("sku".into())))
                .route("POST /cart/{sku}")
                .unwrap(),
        )
        .policy(
            Policy::rate("promo", Rate::per_hour(1))
                .burst(3)
                .key(Key::query("promo"))
                .route_with_cost("POST /checkout", 3)
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(ok_service());
    let mut call = async |method: &str, path: &str, who: Option<&str>| {
        let mut r = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        r.extensions_mut()
            .insert("192.0.2.1:1".parse::<SocketAddr>().unwrap());
        if let Some(w) = who {
            r.extensions_mut()
                .insert(Principal::new(w, tower_shield::CredentialKind::ApiKey));
        }
        let res = svc.ready().await.unwrap().call(r).await.unwrap();
        (
            res.status().as_u16(),
            res.extensions()
                .get::<tower_shield::Denial>()
                .map(|d| d.rate_limits()[0].policy.to_string()),
        )
    };
    assert_eq!(call("POST", "/login", None).await.0, 200);
    assert_eq!(call("POST", "/login", None).await.0, 200);
    assert_eq!(
        call("POST", "/login", None).await,
        (429, Some("login".into()))
    );
    assert_eq!(
        call("GET", "/login", None).await.0,
        200,
        "other method: login policy does not apply"
    );
    assert_eq!(call("POST", "/cart/SKU-1", Some("alice")).await.0, 200);
    assert_eq!(
        call("POST", "/cart/SKU-1", Some("alice")).await,
        (429, Some("sku".into()))
    );
    assert_eq!(call("POST", "/cart/SKU-2", Some("alice")).await.0, 200);
    assert_eq!(call("POST", "/cart/SKU-1", Some("bob")).await.0, 200);
    assert_eq!(
        call("POST", "/cart/SKU-1", None).await.0,
        200,
        "no principal: sku policy does not apply"
    );
    // weighted route: one checkout with a promo takes the whole burst of 3
    assert_eq!(call("POST", "/checkout?promo=SPRING", None).await.0, 200);
    assert_eq!(
        call("POST", "/checkout?promo=%53PRING", None).await,
        (429, Some("promo".into()))
    );
    assert_eq!(call("POST", "/checkout?promo=SUMMER", None).await.0, 200);
}

#[tokio::test]
async fn in_flight_cap_per_key_releases_on_completion() {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let inner = tower::service_fn(move |_req: Request<()>| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|v| *v).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }
    });
    let layer = ThrottleLayer::builder()
        .policy(Policy::in_flight("conc", 2))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(layer).service(inner);
    let a = tokio::spawn(svc.clone().oneshot(req_from("192.0.2.1:1", "/")));
    let b = tokio::spawn(svc.clone().oneshot(req_from("192.0.2.1:2", "/")));
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let c = svc
        .clone()
        .oneshot(req_from("192.0.2.1:3", "/"))
        .await
        .unwrap();
    assert_eq!(c.status(), 429);
    assert_eq!(
        c.headers()["ratelimit-policy"],
        r#""conc";q=2;qu="concurrent-requests""#
    );
    let other = tokio::spawn(svc.clone().oneshot(req_from("192.0.2.2:3", "/")));
    tx.send(true).unwrap();
    assert_eq!(a.await.unwrap().unwrap().status(), 200);
    assert_eq!(b.await.unwrap().unwrap().status(), 200);
    assert_eq!(other.await.unwrap().unwrap().status(), 200);
    let d = svc
        .clone()
        .oneshot(req_from("192.0.2.1:4", "/"))
        .await
        .unwrap();
    assert_eq!(d.status(), 200, "slots were released");
}

#[tokio::test]
async fn shadow_policy_records_and_lets_through() {
    let layer = ThrottleLayer::builder()
        .policy(
            Policy::rate("trial", Rate::per_hour(1))
                .burst(1)
                .shadow(true),
        )
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(ok_service());
    for i in 0..3 {
        let facts = Arc::new(RequestFacts::default());
        let mut r = req_from("192.0.2.1:1", "/");
        r.extensions_mut().insert(facts.clone());
        let res = svc.ready().await.unwrap().call(r).await.unwrap();
        assert_eq!(res.status(), 200);
        let shadow = facts.shadow_denials();
        assert_eq!(shadow.len(), usize::from(i > 0));
        if i > 0 {
            assert!(shadow[0].is_shadow());
            assert_eq!(shadow[0].layer(), "throttle");
        }
    }
}

#[tokio::test]
async fn key_flood_of_a_million_keys_stays_under_the_cap() {
    use tower_shield::store::{Gcra, RateDecision, RateStore};
    let clock = ManualClock::at_unix(0);
    let store = MemoryRateStore::new(100_000, Arc::new(clock.clone()));
    let limit = Gcra {
        emission_interval: Duration::from_secs(60),
        burst: 1,
    };
    let attacker = b"203.0.113.9";
    assert!(matches!(
        store
            .check(attacker, limit, 1, Duration::ZERO)
            .await
            .unwrap(),
        RateDecision::Allowed { .. }
    ));
    for i in 0..1_000_000u32 {
        store
            .check(&i.to_le_bytes(), limit, 1, Duration::ZERO)
            .await
            .unwrap();
        if i % 100_000 == 0 {
            clock.advance(Duration::from_millis(10));
        }
    }
    let tracked = store.len();
    assert!(tracked <= 100_000, "tracked {tracked}");
    let bytes = store.memory_bytes();
    assert!(bytes <= 100_000 * 70, "bytes {bytes}");
    // flooding did not reset the attacker's own limit
    assert!(matches!(
        store
            .check(attacker, limit, 1, Duration::ZERO)
            .await
            .unwrap(),
        RateDecision::Limited { .. }
    ));
    // once entries expire, traffic sweeps them and memory is returned
    clock.advance(Duration::from_secs(120));
    for i in 0..10_000u32 {
        store
            .check(&(i + 5_000_000).to_le_bytes(), limit, 1, Duration::ZERO)
            .await
            .unwrap();
    }
    assert!(store.len() <= 10_001);
    assert!(store.memory_bytes() < bytes / 4);
}

#[tokio::test]
async fn key_flood_through_the_layer_stays_under_the_cap() {
    let layer = ThrottleLayer::builder()
        .max_keys(2_000)
        .policy(Policy::rate("per-ip", Rate::per_minute(1)).burst(1))
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(ok_service());
    for i in 0..20_000u32 {
        let mut r = Request::new(());
        r.extensions_mut().insert(SocketAddr::from((
            std::net::Ipv4Addr::from(0x0B00_0000 + i),
            1,
        )));
        let _ = svc.ready().await.unwrap().call(r).await.unwrap();
    }
    assert!(layer.tracked_keys("per-ip").unwrap() <= 2_000);
}

/// Allowed-response values stay exact when several layers (same numbers, different names,
/// one with a name too long for the inline value) interleave on one thread, and when the
/// remaining count changes from request to request.
#[tokio::test]
async fn allowed_values_are_exact_across_interleaved_layers() {
    let clock = ManualClock::at_unix(0);
    let long = "a-very-long-policy-name-that-does-not-fit-the-inline-value-buffer";
    let mut svcs: Vec<_> = ["a", "b", long]
        .into_iter()
        .map(|name| {
            let layer = ThrottleLayer::builder()
                .clock(Arc::new(clock.clone()))
                .rate_limit_headers(true)
                .policy(Policy::rate(name, Rate::per_second(10)).burst(5))
                .build()
                .unwrap();
            (
                name,
                ServiceBuilder::new().layer(layer).service(ok_service()),
            )
        })
        .collect();
    for round in 0..5u32 {
        for (name, svc) in &mut svcs {
            let r = svc
                .ready()
                .await
                .unwrap()
                .call(req_from("192.0.2.1:1", "/"))
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(
                r.headers()["ratelimit"],
                format!("\"{name}\";r={};t=1", 4 - round).as_str()
            );
        }
    }
    // a rebuilt layer with the same name and numbers starts from its own state
    let layer = ThrottleLayer::builder()
        .clock(Arc::new(clock.clone()))
        .rate_limit_headers(true)
        .policy(Policy::rate("a", Rate::per_second(10)).burst(5))
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(ok_service());
    let r = svc
        .ready()
        .await
        .unwrap()
        .call(req_from("192.0.2.1:1", "/"))
        .await
        .unwrap();
    assert_eq!(r.headers()["ratelimit"], r#""a";r=4;t=1"#);
}

/// An inner service answering with the given header fields already set.
fn with_fields(
    fields: &'static [(&'static str, &'static str)],
) -> impl Service<
    Request<()>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_req: Request<()>| async move {
        let mut r = Response::new(Full::new(Bytes::from("ok")));
        for (k, v) in fields {
            r.headers_mut().append(*k, v.parse().unwrap());
        }
        Ok::<_, Infallible>(r)
    })
}

#[tokio::test]
async fn fields_are_the_same_on_empty_and_non_empty_responses() {
    // an empty response map gets the shared template, others get both fields appended
    for fields in [
        &[][..],
        &[("content-type", "text/plain")][..],
        &[
            ("content-type", "text/plain"),
            ("ratelimit", "\"inner\";r=1"),
        ][..],
    ] {
        let clock = ManualClock::at_unix(0);
        let layer = ThrottleLayer::builder()
            .clock(Arc::new(clock.clone()))
            .rate_limit_headers(true)
            .policy(Policy::rate("per-ip", Rate::per_second(10)).burst(5))
            .build()
            .unwrap();
        let mut svc = ServiceBuilder::new()
            .layer(layer)
            .service(with_fields(fields));
        for left in [4, 3] {
            let r = svc
                .ready()
                .await
                .unwrap()
                .call(req_from("192.0.2.1:1", "/"))
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let h = r.headers();
            assert_eq!(h.len(), fields.len() + 2, "{fields:?}: {h:?}");
            for (k, v) in fields {
                assert!(h.get_all(*k).iter().any(|x| x == v), "{k} kept");
            }
            let policies: Vec<_> = h.get_all("ratelimit-policy").iter().collect();
            assert_eq!(policies, [r#""per-ip";q=10;w=1"#]);
            let values: Vec<_> = h.get_all("ratelimit").iter().collect();
            let ours = format!("\"per-ip\";r={left};t=1");
            assert_eq!(values.last().unwrap().to_str().unwrap(), ours);
            assert_eq!(
                values.len(),
                1 + fields.iter().filter(|f| f.0 == "ratelimit").count()
            );
        }
    }
}

#[tokio::test]
async fn two_policies_add_two_pairs_on_empty_and_non_empty_responses() {
    for fields in [&[][..], &[("content-type", "text/plain")][..]] {
        let layer = ThrottleLayer::builder()
            .clock(Arc::new(ManualClock::at_unix(0)))
            .rate_limit_headers(true)
            .policy(Policy::rate("a", Rate::per_second(10)).burst(5))
            .policy(Policy::rate("b", Rate::per_minute(60)).burst(3))
            .build()
            .unwrap();
        let mut svc = ServiceBuilder::new()
            .layer(layer)
            .service(with_fields(fields));
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(req_from("192.0.2.1:1", "/"))
            .await
            .unwrap();
        let h = r.headers();
        let policies: Vec<_> = h.get_all("ratelimit-policy").iter().collect();
        assert_eq!(policies, [r#""a";q=10;w=1"#, r#""b";q=60;w=60"#]);
        let values: Vec<_> = h.get_all("ratelimit").iter().collect();
        assert_eq!(values, [r#""a";r=4;t=1"#, r#""b";r=2;t=1"#]);
    }
}

#[tokio::test]
async fn an_outer_client_ip_wins_over_the_peer_address() {
    // the key comes from `ClientIp` when an outer layer set one, whatever else the
    // request carries; from the peer address otherwise
    let layer = ThrottleLayer::builder()
        .clock(Arc::new(ManualClock::at_unix(0)))
        .policy(Policy::rate("per-ip", Rate::per_second(1)).burst(1))
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(ok_service());
    let mut call = async |peer: Option<&str>, client: Option<&str>| {
        let mut r = Request::new(());
        if let Some(p) = peer {
            r.extensions_mut().insert(p.parse::<SocketAddr>().unwrap());
        }
        if let Some(c) = client {
            r.extensions_mut()
                .insert(tower_shield::ClientIp(c.parse().unwrap()));
        }
        svc.ready().await.unwrap().call(r).await.unwrap().status()
    };
    // ClientIp alone
    assert_eq!(call(None, Some("198.51.100.1")).await, 200);
    // the same client behind another peer: limited (keyed by ClientIp, not the peer)
    assert_eq!(call(Some("192.0.2.9:1"), Some("198.51.100.1")).await, 429);
    assert_eq!(call(None, Some("198.51.100.1")).await, 429);
    // the peer alone is a key of its own
    assert_eq!(call(Some("192.0.2.9:1"), None).await, 200);
    assert_eq!(call(Some("192.0.2.9:1"), None).await, 429);
    // another ClientIp behind that peer is not limited by it
    assert_eq!(call(Some("192.0.2.9:1"), Some("198.51.100.2")).await, 200);
}

/// One exchange: status and the throttle's fields.
async fn exchange<S>(svc: &mut S, req: Request<()>) -> (u16, Vec<(String, String)>)
where
    S: Service<Request<()>, Response = Response<Body>, Error = Infallible>,
{
    let r = svc.ready().await.unwrap().call(req).await.unwrap();
    let mut fields: Vec<_> = r
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("ratelimit") || *k == "retry-after")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    fields.sort();
    (r.status().as_u16(), fields)
}

#[tokio::test(start_paused = true)]
async fn the_single_policy_path_decides_like_the_general_one() {
    // A layer whose only policy is a per-IP rate policy takes a straight path; the same
    // policy next to one that never applies (keyed by an absent header) takes the general
    // loop. Both must answer alike: reject, delay (paced), shadow, fields on or off.
    let policies = [
        Policy::rate("p", Rate::per_second(10)).burst(2),
        Policy::rate("p", Rate::per_second(10))
            .burst(2)
            .action(Action::Delay {
                max_wait: Duration::from_millis(150),
            }),
        Policy::rate("p", Rate::per_second(10))
            .burst(2)
            .shadow(true),
        Policy::rate("p", Rate::per_second(10)).burst(2).cost(2),
    ];
    for policy in policies {
        for headers in [false, true] {
            let clock = ManualClock::at_unix(0);
            let build = |extra: bool| {
                let mut b = ThrottleLayer::builder()
                    .clock(Arc::new(clock.clone()))
                    .rate_limit_headers(headers)
                    .policy(policy.clone());
                if extra {
                    b = b.policy(
                        Policy::rate("never", Rate::per_second(1))
                            .burst(1)
                            .key("header:x-absent".parse::<Key>().unwrap()),
                    );
                }
                ServiceBuilder::new()
                    .layer(b.build().unwrap())
                    .service(ok_service())
            };
            let (mut single, mut general) = (build(false), build(true));
            for step in 0..8 {
                let peer = if step % 3 == 2 {
                    "192.0.2.2:1"
                } else {
                    "192.0.2.1:1"
                };
                let a = exchange(&mut single, req_from(peer, "/")).await;
                let b = exchange(&mut general, req_from(peer, "/")).await;
                assert_eq!(a, b, "{policy:?} headers={headers} step {step}");
                if step == 4 {
                    clock.advance(Duration::from_millis(100));
                }
            }
        }
    }
}

#[tokio::test]
async fn a_peer_is_one_key_whichever_path_resolves_it() {
    // A request whose only extension is an IPv4 peer address is keyed on a direct path; a
    // request carrying other extensions too, or the same address written as IPv4-mapped
    // IPv6, goes through the general resolution. All three must share one bucket.
    #[derive(Clone)]
    struct Other;
    let layer = ThrottleLayer::builder()
        .clock(Arc::new(ManualClock::at_unix(0)))
        .policy(Policy::rate("per-ip", Rate::per_second(1)).burst(3))
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(ok_service());
    let mut call = async |peer: &str, other: bool| {
        let mut r = Request::new(());
        r.extensions_mut()
            .insert(peer.parse::<SocketAddr>().unwrap());
        if other {
            r.extensions_mut().insert(Other);
        }
        svc.ready().await.unwrap().call(r).await.unwrap().status()
    };
    assert_eq!(call("192.0.2.1:1", false).await, 200);
    assert_eq!(call("192.0.2.1:2", true).await, 200);
    assert_eq!(call("[::ffff:192.0.2.1]:3", false).await, 200);
    // the burst of 3 is spent, whichever way the next request is resolved
    assert_eq!(call("192.0.2.1:1", false).await, 429);
    assert_eq!(call("192.0.2.1:1", true).await, 429);
    assert_eq!(call("[::ffff:192.0.2.1]:3", true).await, 429);
    // another peer is another key
    assert_eq!(call("192.0.2.2:1", false).await, 200);
}
