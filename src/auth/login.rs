//! Login-route watching: the username of a `POST /login` form or JSON body, so that the
//! app's 401/403 answers count as failures for that account as well as for the address.
//!
//! The body is buffered up to a size cap and handed to the inner service unchanged (the same
//! frames, trailers included). A body over the cap, of another content type, or of a body
//! type the layer cannot rebuild is passed on untouched and simply not inspected: that is
//! never an error for the app. Rebuildable request bodies: `axum::body::Body` (feature
//! `axum`), `http_body_util::Full<Bytes>`, `String` and `Bytes`.

use std::any::Any;

use bytes::Bytes;
use http::Request;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http_body::Body;
use http_body_util::{BodyExt, Full};

/// Longest username used as a lockout key (longer ones are cut).
const MAX_NAME: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Form,
    Json,
}

fn kind_of<B>(req: &Request<B>) -> Option<Kind> {
    let ct = req.headers().get(CONTENT_TYPE)?.to_str().ok()?;
    let mime = ct.split(';').next()?.trim().to_ascii_lowercase();
    if mime == "application/x-www-form-urlencoded" {
        Some(Kind::Form)
    } else if mime == "application/json"
        || (mime.starts_with("application/") && mime.ends_with("+json"))
    {
        Some(Kind::Json)
    } else {
        None
    }
}

/// The username in `body`, normalised for use as a key: trimmed, lower-cased, control
/// characters replaced, at most 256 bytes. `None` when absent, empty or not a string.
pub(crate) fn username_in(body: &[u8], json: bool, field: &str) -> Option<String> {
    let raw = if json {
        let doc: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
        match doc.get(field)? {
            serde_json::Value::String(s) => s.clone(),
            _ => return None,
        }
    } else {
        form_urlencoded::parse(body)
            .find(|(k, _)| k == field)
            .map(|(_, v)| v.into_owned())?
    };
    let mut name = String::with_capacity(raw.len().min(MAX_NAME));
    for c in raw.trim().chars().flat_map(char::to_lowercase) {
        if name.len() + c.len_utf8() > MAX_NAME {
            break;
        }
        name.push(if c.is_control() { '?' } else { c });
    }
    (!name.is_empty()).then_some(name)
}

/// Replaying a partly read streaming body.
#[cfg(feature = "axum")]
mod stream {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::{Bytes, BytesMut};
    use http_body::{Body, Frame, SizeHint};
    use http_body_util::BodyExt;

    /// Replays buffered frames (and a buffered error), then the rest of the body.
    pub(super) struct Replay<B: Body> {
        frames: VecDeque<Frame<Bytes>>,
        error: Option<B::Error>,
        rest: Option<B>,
    }

    impl<B> Body for Replay<B>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Unpin,
    {
        type Data = Bytes;
        type Error = B::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
            let this = self.get_mut();
            if let Some(f) = this.frames.pop_front() {
                return Poll::Ready(Some(Ok(f)));
            }
            if let Some(e) = this.error.take() {
                this.rest = None;
                return Poll::Ready(Some(Err(e)));
            }
            match &mut this.rest {
                Some(b) => Pin::new(b).poll_frame(cx),
                None => Poll::Ready(None),
            }
        }

        fn is_end_stream(&self) -> bool {
            self.frames.is_empty()
                && self.error.is_none()
                && self.rest.as_ref().is_none_or(Body::is_end_stream)
        }

        fn size_hint(&self) -> SizeHint {
            let buffered: u64 = self
                .frames
                .iter()
                .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
                .sum();
            let mut h = self
                .rest
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
            h.set_lower(h.lower().saturating_add(buffered));
            if let Some(u) = h.upper() {
                h.set_upper(u.saturating_add(buffered));
            }
            h
        }
    }

    /// Reads `body` up to `limit` bytes. Returns the replay body and the complete data when the
    /// whole body fit (and read without error).
    pub(super) async fn read_capped<B>(mut body: B, limit: usize) -> (Replay<B>, Option<Bytes>)
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let mut frames = VecDeque::new();
        let mut data = BytesMut::new();
        loop {
            if data.len() > limit {
                let replay = Replay {
                    frames,
                    error: None,
                    rest: Some(body),
                };
                return (replay, None);
            }
            match body.frame().await {
                None => {
                    let replay = Replay {
                        frames,
                        error: None,
                        rest: None,
                    };
                    return (replay, Some(data.freeze()));
                }
                Some(Ok(f)) => {
                    if let Some(d) = f.data_ref() {
                        data.extend_from_slice(d);
                    }
                    frames.push_back(f);
                }
                Some(Err(e)) => {
                    let replay = Replay {
                        frames,
                        error: Some(e),
                        rest: None,
                    };
                    return (replay, None);
                }
            }
        }
    }
}

/// Takes `B` out of `slot` when it is a `T`, lets `f` turn it into a new `T` and bytes, and
/// puts it back.
async fn with_body<B, T, F, Fut>(slot: &mut Option<B>, f: F) -> Option<Option<Bytes>>
where
    B: 'static,
    T: 'static,
    F: FnOnce(T) -> Fut,
    Fut: Future<Output = (T, Option<Bytes>)>,
{
    let typed = (slot as &mut dyn Any).downcast_mut::<Option<T>>()?;
    let body = typed.take()?;
    let (body, bytes) = f(body).await;
    *typed = Some(body);
    Some(bytes)
}

/// Buffers (up to `limit`) the body of a form or JSON login request and returns the request
/// with an equivalent body and the username found in `field`, if any.
pub(crate) async fn take_username<B: Send + 'static>(
    req: Request<B>,
    field: &str,
    limit: usize,
) -> (Request<B>, Option<String>) {
    let Some(kind) = kind_of(&req) else {
        return (req, None);
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return (req, None);
    }
    let json = kind == Kind::Json;
    let (parts, body) = req.into_parts();
    // in-memory bodies are read in place
    let inline: Option<Option<String>> = {
        let any = &body as &dyn Any;
        any.downcast_ref::<String>()
            .map(|s| s.as_bytes())
            .or_else(|| any.downcast_ref::<Bytes>().map(|b| &b[..]))
            .map(|bytes| {
                (bytes.len() <= limit)
                    .then(|| username_in(bytes, json, field))
                    .flatten()
            })
    };
    if let Some(name) = inline {
        return (Request::from_parts(parts, body), name);
    }
    let mut slot = Some(body);
    #[cfg_attr(not(feature = "axum"), allow(unused_mut))]
    let mut found = with_body(&mut slot, |b: Full<Bytes>| async move {
        if b.size_hint().lower() > limit as u64 {
            return (b, None);
        }
        match b.collect().await {
            Ok(c) => {
                let bytes = c.to_bytes();
                (Full::new(bytes.clone()), Some(bytes))
            }
            Err(never) => match never {},
        }
    })
    .await;
    #[cfg(feature = "axum")]
    if found.is_none() {
        found = with_body(&mut slot, |b: axum::body::Body| async move {
            if b.size_hint().lower() > limit as u64 {
                return (b, None);
            }
            let (replay, bytes) = stream::read_capped(b, limit).await;
            (axum::body::Body::new(replay), bytes)
        })
        .await;
    }
    let Some(body) = slot else {
        // unreachable: every branch puts the body back
        unreachable!("login body taken and not returned")
    };
    let name = match found {
        Some(Some(bytes)) => username_in(&bytes, json, field),
        Some(None) => None,
        None => {
            tracing::debug!(
                body = std::any::type_name::<B>(),
                "auth login watch: request body type cannot be inspected"
            );
            None
        }
    };
    (Request::from_parts(parts, body), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_from_forms_and_json() {
        assert_eq!(
            username_in(b"user=Alice%40Example.com&password=x", false, "user").as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(username_in(b"password=x", false, "user"), None);
        assert_eq!(
            username_in(br#"{"username":" Bob ","password":"x"}"#, true, "username").as_deref(),
            Some("bob")
        );
        assert_eq!(username_in(br#"{"username":7}"#, true, "username"), None);
        assert_eq!(username_in(b"not json", true, "username"), None);
        assert_eq!(
            username_in(b"u=a%0Ab", false, "u").as_deref(),
            Some("a?b"),
            "control characters cannot reach logs"
        );
        let long = format!("u={}", "x".repeat(1000));
        assert_eq!(username_in(long.as_bytes(), false, "u").unwrap().len(), 256);
    }

    #[tokio::test]
    async fn bodies_pass_unchanged_and_over_the_cap_are_not_inspected() {
        let req = |body: Full<Bytes>| {
            Request::post("/login")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .unwrap()
        };
        let (r, name) =
            take_username(req(Full::new(Bytes::from("user=amy&pw=1"))), "user", 64).await;
        assert_eq!(name.as_deref(), Some("amy"));
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "user=amy&pw=1");

        let big = format!("user=amy&pw={}", "x".repeat(100));
        let (r, name) = take_username(req(Full::new(Bytes::from(big.clone()))), "user", 64).await;
        assert_eq!(name, None);
        assert_eq!(r.into_body().collect().await.unwrap().to_bytes(), big);
    }
}
