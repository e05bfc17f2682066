//! Login-route watching over real loopback TCP with axum: the username of a form or JSON
//! body counts, the body reaches the app unchanged, an oversized body is passed on
//! uninspected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use http::StatusCode;
use tower_shield::auth::{AuthLayer, LockoutPolicy, MemoryKeyStore, RouteRule};
use tower_shield::client_ip::ClientIpResolver;
use tower_shield::clock::ManualClock;

async fn serve(clock: &ManualClock, limit: usize) -> SocketAddr {
    let auth = AuthLayer::builder()
        .api_keys(MemoryKeyStore::new())
        .clock(Arc::new(clock.clone()))
        .resolver(
            ClientIpResolver::builder()
                .trusted_proxy("127.0.0.1/32")
                .unwrap()
                .build(),
        )
        .route("POST /login", RouteRule::public().login())
        .unwrap()
        .lockout(LockoutPolicy::new(
            3,
            Duration::from_secs(60),
            Duration::from_secs(300),
        ))
        .login_username_field("user")
        .login_body_limit(limit)
        .build()
        .unwrap();
    // the app echoes the body it got (length and content) and refuses the wrong password
    let app = Router::new()
        .route(
            "/login",
            post(|body: Bytes| async move {
                let ok = body.windows(8).any(|w| w == b"pw=right")
                    || body.windows(9).any(|w| w == b"\"right\"}");
                let status = if ok {
                    StatusCode::OK
                } else {
                    StatusCode::UNAUTHORIZED
                };
                (status, body)
            }),
        )
        .layer(auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

async fn send_login(
    addr: SocketAddr,
    from: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Bytes) {
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/login"))
        .header("x-forwarded-for", from)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.bytes().await.unwrap())
}

/// A body sent in chunks without a Content-Length.
fn streamed(chunks: Vec<String>) -> reqwest::Body {
    let frames = chunks
        .into_iter()
        .map(|c| Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(c))));
    reqwest::Body::wrap(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames.collect::<Vec<_>>(),
    )))
}

const FORM: &str = "application/x-www-form-urlencoded";

#[tokio::test]
async fn form_and_json_usernames_are_banned_across_addresses() {
    let clock = ManualClock::new();
    let addr = serve(&clock, 1024).await;
    // three failures for one account from three addresses (no address reaches the limit)
    let body = "user=Mallory%40example.com&pw=guess";
    let (s, echoed) = send_login(addr, "192.0.2.1", FORM, body).await;
    assert_eq!(
        (s, &echoed[..]),
        (401, body.as_bytes()),
        "the app got the body unchanged"
    );
    let json = r#"{"user":"mallory@example.com","pw":"guess"}"#;
    let (s, echoed) = send_login(addr, "192.0.2.2", "application/json; charset=utf-8", json).await;
    assert_eq!((s, &echoed[..]), (401, json.as_bytes()));
    assert_eq!(
        send_login(addr, "192.0.2.3", FORM, "pw=guess&user=mallory@example.com")
            .await
            .0,
        401
    );
    // the account is banned, even from a new address with the right password
    let (s, _) = send_login(addr, "192.0.2.4", FORM, "user=mallory@example.com&pw=right").await;
    assert_eq!(s, 429);
    let (s, _) = send_login(
        addr,
        "192.0.2.4",
        "application/json",
        r#"{"user":"MALLORY@example.com","pw":"right"}"#,
    )
    .await;
    assert_eq!(s, 429);
    // other accounts from that address are fine
    let (s, echoed) = send_login(addr, "192.0.2.4", FORM, "user=trent&pw=right").await;
    assert_eq!((s, &echoed[..]), (200, &b"user=trent&pw=right"[..]));
    // the ban ends with the clock
    clock.advance(Duration::from_secs(300));
    assert_eq!(
        send_login(addr, "192.0.2.5", FORM, "user=mallory@example.com&pw=right")
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn oversized_and_other_bodies_pass_unchanged_without_inspection() {
    let clock = ManualClock::new();
    let addr = serve(&clock, 64).await;
    let padding = "x".repeat(200);
    // over the cap with a Content-Length: passed on untouched, the username not counted
    for i in 0..4 {
        let body = format!("user=victim&pw=guess&pad={padding}");
        let (s, echoed) = send_login(addr, &format!("198.51.100.{i}"), FORM, body.clone()).await;
        assert_eq!((s, &echoed[..]), (401, body.as_bytes()));
    }
    // over the cap, streamed without a length: read up to the cap, then replayed in full
    for i in 4..8 {
        let body = streamed(vec![
            "user=victim&pw=guess&pad=".into(),
            padding.clone(),
            "&end=1".into(),
        ]);
        let (s, echoed) = send_login(addr, &format!("198.51.100.{i}"), FORM, body).await;
        assert_eq!(s, 401);
        assert_eq!(echoed, format!("user=victim&pw=guess&pad={padding}&end=1"));
    }
    // not a form or JSON: not inspected
    for i in 8..12 {
        let (s, _) = send_login(
            addr,
            &format!("198.51.100.{i}"),
            "text/plain",
            "user=victim&pw=guess",
        )
        .await;
        assert_eq!(s, 401);
    }
    // none of that counted for the account
    assert_eq!(
        send_login(addr, "198.51.100.99", FORM, "user=victim&pw=right")
            .await
            .0,
        200
    );
    // a small streamed body is inspected: three failures ban the account
    for i in 20..23 {
        let body = streamed(vec!["user=vic".into(), "tim&pw=guess".into()]);
        let (s, echoed) = send_login(addr, &format!("198.51.100.{i}"), FORM, body).await;
        assert_eq!((s, &echoed[..]), (401, &b"user=victim&pw=guess"[..]));
    }
    assert_eq!(
        send_login(addr, "198.51.100.99", FORM, "user=victim&pw=right")
            .await
            .0,
        429
    );
}
