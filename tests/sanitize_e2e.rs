//! End-to-end tests of the sanitize layer with the real detectors (`src/sanitize/detect/`).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tower::{Layer, ServiceExt};
use tower_shield::sanitize::{FieldRule, Kind, RoutePolicy, SanitizeLayer, SanitizeMode};

fn layer() -> SanitizeLayer {
    SanitizeLayer::builder()
        .route(
            "POST /products/{id}/reviews",
            RoutePolicy::new().field(
                FieldRule::new("body.review")
                    .unwrap()
                    .sanitize(SanitizeMode::Rich),
            ),
        )
        .unwrap()
        .route("POST /reports", RoutePolicy::new().exempt(Kind::Sqli))
        .unwrap()
        .field(
            FieldRule::new("body.description")
                .unwrap()
                .exempt(Kind::Xss),
        )
        .build()
        .unwrap()
}

/// Returns (status, problem document or echoed body).
async fn send(req: Request<Full<Bytes>>) -> (u16, String) {
    let svc = layer().layer(tower::service_fn(|req: Request<Full<Bytes>>| async move {
        let b = req.into_body().collect().await.unwrap().to_bytes();
        Ok::<_, Infallible>(Response::new(Full::new(b)))
    }));
    let res = svc.oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let b = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(b.to_vec()).unwrap())
}

fn json(uri: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

#[tokio::test]
async fn sqli_in_query_is_rejected_naming_query_q() {
    let req = Request::get("/search?q=%27+OR+1%3D1--")
        .body(Full::default())
        .unwrap();
    let (status, body) = send(req).await;
    assert_eq!(status, 400);
    let p: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(p["location"], "query.q");
    assert_eq!(p["kind"], "sqli");
    assert!(!body.contains("OR 1=1"));
}

#[tokio::test]
async fn xss_in_nested_json_and_header_is_rejected_with_location() {
    let (status, body) = send(json(
        "/orders",
        r#"{"items":[{"note":"<script>alert(1)</script>"}]}"#,
    ))
    .await;
    assert_eq!(status, 400);
    let p: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(p["location"], "body./items/0/note");
    assert_eq!(p["kind"], "xss");

    let req = Request::get("/")
        .header("referer", "<script>alert(1)</script>")
        .body(Full::default())
        .unwrap();
    let (status, body) = send(req).await;
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["location"],
        "header.referer"
    );
}

#[tokio::test]
async fn benign_customer_text_passes() {
    let body = r#"{"name":"Siobhan O'Brien","band":"Rock & Roll","math":"5 < 6","address":"12 Main St.; Apt 4"}"#;
    let (status, echoed) = send(json("/customers", body)).await;
    assert_eq!(status, 200);
    assert_eq!(echoed, body);
}

#[tokio::test]
async fn sanitize_cleans_xss_in_the_review_field() {
    let (status, echoed) = send(json(
        "/products/1/reviews",
        r#"{"review":"<b>ok</b><script>alert(1)</script>"}"#,
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(echoed, r#"{"review":"<b>ok</b>"}"#);
}

#[tokio::test]
async fn exemptions_let_sql_and_markup_through_where_configured() {
    let sql = r#"{"query":"SELECT name FROM users WHERE id = '1' OR 1=1 --"}"#;
    assert_eq!(send(json("/reports", sql)).await.0, 200);
    assert_eq!(send(json("/orders", sql)).await.0, 400);
    let desc = r#"{"description":"<script>alert(1)</script>"}"#;
    assert_eq!(send(json("/products", desc)).await.0, 200);
}
