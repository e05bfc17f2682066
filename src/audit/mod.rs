//! Audit: one tamper-evident, injection-proof record for every request.
//!
//! [`AuditLayer`] is meant to sit **outermost**, so it sees every outcome: requests served,
//! refused by any layer inside it (the [`Denial`](crate::Denial) in the response
//! extensions gives the layer and reason), failed in the inner service (an error, a 5xx —
//! a panic caught by tower-http's `CatchPanic` is a 500), or cancelled because the client
//! went away before the response (the response future was dropped: a drop guard records
//! `cancelled`). Exactly one record per request, whatever happens.
//!
//! The layer keeps the inner service's body and error types. Before calling the inner
//! service it inserts a [`RequestId`] and a shared [`RequestFacts`](crate::RequestFacts)
//! into the request extensions; the layers inside record the client address, the matched
//! route, the principal, sanitizer findings and shadow-mode denials into it.
//!
//! The request path only captures raw facts (two `Instant`s, method, peer, copies of the
//! request id, target and user agent) into a recycled event and hands it to a bounded queue;
//! a dedicated writer thread formats the timestamp, redacts, encodes, chains and writes ([`Overflow`] decides
//! what happens when the queue is full, [`FailurePolicy`] what happens when a sink fails).
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_shield::audit::{AuditLayer, FileSink, Fsync};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("audit.jsonl");
//! let audit = AuditLayer::builder()
//!     .file(FileSink::builder(&path).max_bytes(64 << 20).fsync(Fsync::Never).build().unwrap())
//!     .chain_key(b"0123456789abcdef0123456789abcdef".to_vec())
//!     .build()
//!     .unwrap();
//! let svc = ServiceBuilder::new().layer(audit.clone()).service_fn(|_req: Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("hello"))))
//! });
//! let req = Request::get("/login?password=hunter2").header("x-request-id", "abc-1").body(()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.headers()["x-request-id"], "abc-1");
//! assert!(audit.flush(Duration::from_secs(5)));
//! let line = std::fs::read_to_string(&path).unwrap();
//! let rec: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
//! assert_eq!(rec["outcome"], "served");
//! assert_eq!(rec["path"], "/login?password=[REDACTED]");
//! assert_eq!(rec["bytes_out"], 5);
//! assert_eq!(rec["seq"], 0);
//! # }
//! ```
//!
//! # Record schema
//! One JSON object per line, fields in this order, absent fields omitted:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `ts` | string | RFC 3339 UTC time the request arrived, microseconds |
//! | `kind` | string | `request`; or `dropped`, `sink_recovered` for records about the log |
//! | `request_id` | string | from `x-request-id` when valid (≤ 128 of `A-Za-z0-9-_.:`), else 32 hex digits |
//! | `client_ip` | string | resolved client address (trusted proxies), else the peer |
//! | `principal` | object | `id`, `kind`, `key_id`, `subject`, `client_id`, `tenant` — never a secret |
//! | `method` | string | request method |
//! | `route` | string | matched route template (`/products/{id}`) |
//! | `path` | string | path and query, redacted, capped at 2048 bytes |
//! | `status` | number | HTTP status |
//! | `grpc_status` | number | `grpc-status` of a trailers-only gRPC response |
//! | `outcome` | string | `served`, `denied`, `error`, `cancelled` |
//! | `layer` | string | the layer that refused (`denied`) |
//! | `reason` | string | denial reason; `server_error`, `grpc_error`, `service_error`, `panic`, `client_gone` |
//! | `latency_us` | number | microseconds from arrival to response (or cancellation) |
//! | `bytes_in`, `bytes_out` | number | body sizes where known (`content-length`, exact size hint) |
//! | `user_agent` | string | redacted, capped |
//! | `headers` | object | configured headers, redacted |
//! | `findings` | array | sanitizer findings: `location`, `kind`, `rule`, `action` |
//! | `shadow` | array | shadow-mode denials: `layer`, `reason`, `status` |
//! | `count` | number | `dropped`/`sink_recovered`: how many records were lost |
//! | `message` | string | for records about the log |
//! | `seq`, `mac` | number, string | with the chain on: sequence number and HMAC-SHA256 (hex) |
//!
//! Strings escape `"`, `\`, every C0/C1 control character (CR, LF, ESC), DEL, U+2028,
//! U+2029 and bidirectional overrides; invalid UTF-8 becomes U+FFFD. No input can end a
//! record early or forge another. Capped fields end with `...[truncated]`.
//!
//! # Deployment caveats
//! - With [`Overflow::Block`] a full queue blocks the calling runtime thread until the
//!   writer catches up: size the queue for bursts, or use [`Overflow::Drop`].
//! - The chain shows edits, insertions, deletions and reordering *inside* the log, not
//!   records cut from its end: keep the last `seq`/`mac` elsewhere (see [`verify`]).
//! - gRPC statuses sent in trailers after a streamed body are not visible to the layer
//!   (it does not wrap the body); trailers-only responses (denials, most errors) are.

mod chain;
pub mod config;
mod layer;
pub mod record;
pub mod redact;
pub mod sink;
pub mod verify;
mod writer;

pub use config::AuditConfig;
pub use layer::{Audit, AuditLayer, AuditLayerBuilder, RequestId, ResponseFuture};
pub use record::{AuditRecord, Outcome};
pub use sink::{
    AuditSink, CallbackSink, FileSink, FileSinkBuilder, Fsync, TracingSink, rotated_files,
};
pub use writer::{AuditStats, FailurePolicy, Overflow};
