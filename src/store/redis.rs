//! The shared Redis connection (feature `redis`), used by the throttle, quota and replay
//! stores.
//!
//! One [`RedisConn`] is one multiplexed connection ([`redis::aio::ConnectionManager`]) that
//! reconnects by itself, a per-call timeout, and a key prefix. Stores run one atomic Lua
//! script per decision with [`RedisConn::eval`]; every failure becomes a [`StoreError`]
//! whose message never contains the connection URL's password.
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_shield::store::redis::RedisConn;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let conn = RedisConn::builder("redis://:s3cret@127.0.0.1:6379/0")
//!     .key_prefix("shop")
//!     .timeout(Duration::from_millis(50))
//!     .connect()               // bounded by the connect timeout
//!     .await?;
//! let script = redis::Script::new("return redis.call('INCR', KEYS[1])");
//! let n: i64 = conn.eval(&script, &[&conn.key("demo", b"k")], &[]).await?;
//! assert!(!format!("{conn:?}").contains("s3cret"));
//! # let _ = n; Ok(()) }
//! ```
//!
//! # Keys and Redis Cluster
//! [`RedisConn::key`] builds `<prefix>:<namespace>:{<key>}`: the client key is the hash
//! tag, so every namespace of one client (throttle, quota, ...) maps to the same cluster
//! slot and a script may touch several of them atomically. Braces inside the client key are
//! replaced so that they cannot end the tag early.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Script, ToRedisArgs};

use super::StoreError;
use crate::error::ConfigError;

/// Replaces the password (and user name) of a Redis URL with `***`.
///
/// ```
/// use tower_shield::store::redis::redact_url;
/// assert_eq!(redact_url("redis://user:pw@host:6379/1"), "redis://***:***@host:6379/1");
/// assert_eq!(redact_url("redis://:pw@host"), "redis://:***@host");
/// assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return "<redis url>".into();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    let redacted = match userinfo.split_once(':') {
        Some(("", _)) => ":***".to_string(),
        Some(_) => "***:***".to_string(),
        None => "***".to_string(),
    };
    format!("{}{}{}", &url[..scheme_end + 3], redacted, &rest[at..])
}

/// Builder for [`RedisConn`].
pub struct RedisConnBuilder {
    url: String,
    prefix: String,
    timeout: Duration,
    connect_timeout: Duration,
}

impl fmt::Debug for RedisConnBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnBuilder")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisConnBuilder {
    /// Key prefix (default `"tower-shield"`). Use one per application sharing a Redis.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
    /// Per-call timeout (default 50 ms): a call that takes longer fails with
    /// [`StoreError::Timeout`] and the caller applies its failure mode.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Timeout of one connection attempt (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    fn parts(self) -> Result<(redis::Client, ConnectionManagerConfig, Inner), StoreError> {
        let redacted: Arc<str> = redact_url(&self.url).into();
        let client = redis::Client::open(self.url.as_str()).map_err(|e| {
            StoreError::Unavailable(format!("invalid redis url {redacted}: {:?}", e.kind()))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        Ok((
            client,
            config,
            Inner {
                url: redacted,
                prefix: self.prefix.into(),
                timeout: self.timeout,
            },
        ))
    }

    /// Creates the connection lazily: returns at once, connects on first use (and reconnects
    /// after failures). Must be called inside a Tokio runtime. Fails only on an invalid URL.
    pub fn build_lazy(self) -> Result<RedisConn, ConfigError> {
        let (client, config, inner) = self
            .parts()
            .map_err(|e| ConfigError::invalid("redis.url", e.to_string()))?;
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| ConfigError::invalid("redis.url", format!("{:?}", e.kind())))?;
        Ok(RedisConn {
            manager,
            inner: Arc::new(inner),
        })
    }

    /// Connects now, failing after the connect timeout when Redis is unreachable.
    pub async fn connect(self) -> Result<RedisConn, StoreError> {
        let connect_timeout = self.connect_timeout;
        let (client, config, inner) = self.parts()?;
        let fut = ConnectionManager::new_with_config(client, config);
        let manager = match tokio::time::timeout(connect_timeout * 4, fut).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(map_err(&inner.url, &e)),
            Err(_) => return Err(StoreError::Timeout(connect_timeout)),
        };
        Ok(RedisConn {
            manager,
            inner: Arc::new(inner),
        })
    }
}

struct Inner {
    url: Arc<str>,
    prefix: Arc<str>,
    timeout: Duration,
}

/// A shared, reconnecting Redis connection with a per-call timeout. Cheap to clone.
#[derive(Clone)]
pub struct RedisConn {
    manager: ConnectionManager,
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConn")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

fn map_err(url: &str, e: &redis::RedisError) -> StoreError {
    if e.is_timeout() {
        return StoreError::Timeout(Duration::ZERO);
    }
    // The error kind and category only: redis error messages may quote connection details.
    let what = format!("{:?} ({url})", e.kind());
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        StoreError::Unavailable(what)
    } else {
        StoreError::Protocol(what)
    }
}

impl RedisConn {
    /// Starts a builder for the given URL (`redis://[:password@]host:port[/db]`).
    pub fn builder(url: impl Into<String>) -> RedisConnBuilder {
        RedisConnBuilder {
            url: url.into(),
            prefix: "tower-shield".into(),
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(1),
        }
    }

    /// The URL with credentials redacted.
    pub fn redacted_url(&self) -> &str {
        &self.inner.url
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The key `<prefix>:<namespace>:{<key>}` (the client key is the cluster hash tag).
    pub fn key(&self, namespace: &str, key: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.inner.prefix.len() + namespace.len() + key.len() + 4);
        out.extend_from_slice(self.inner.prefix.as_bytes());
        out.push(b':');
        out.extend_from_slice(namespace.as_bytes());
        out.extend_from_slice(b":{");
        let start = out.len();
        out.extend_from_slice(key);
        // in place, branch-free: the compiler turns this into vector selects
        for b in &mut out[start..] {
            *b = match *b {
                b'{' => b'(',
                b'}' => b')',
                b => b,
            };
        }
        out.push(b'}');
        out
    }

    /// The key `<prefix>:<key>` with `key` used verbatim: for callers that build their own
    /// key with a cluster hash tag (the quota store's keys carry `{<caller>}` already).
    pub fn prefixed(&self, key: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.inner.prefix.len() + key.len() + 1);
        out.extend_from_slice(self.inner.prefix.as_bytes());
        out.push(b':');
        out.extend_from_slice(key);
        out
    }

    /// Runs a Lua script (EVALSHA, loading it on first use) with `keys` and `args` and
    /// converts the reply, within the per-call timeout.
    pub async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&[u8]],
        args: &[&dyn ToRedisArgsDyn],
    ) -> Result<T, StoreError> {
        // One EVALSHA command built in place (two buffers), rather than a ScriptInvocation
        // (a buffer per key and argument, copied again into the command).
        // sized up front: growing the buffers argument by argument costs more than the call
        let data = keys.iter().map(|k| k.len()).sum::<usize>() + 24 * args.len();
        let mut cmd = evalsha_cmd(script, keys.len(), keys.len() + args.len(), data);
        for k in keys {
            cmd.arg(*k);
        }
        for a in args {
            a.push_to_cmd(&mut cmd);
        }
        self.eval_cmd(script, &cmd).await
    }

    /// Sends `cmd`, an `EVALSHA` of `script` built with [`evalsha_cmd`], and converts the
    /// reply, within the per-call timeout. When the server does not know the script
    /// (`NOSCRIPT`: first use, a restart, `SCRIPT FLUSH`), loads it and sends `cmd` again.
    pub(crate) async fn eval_cmd<T: FromRedisValue>(
        &self,
        script: &Script,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        let mut conn = self.manager.clone();
        let fut = async {
            match cmd.query_async::<T>(&mut conn).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    script.load_async(&mut conn).await?;
                    cmd.query_async::<T>(&mut conn).await
                }
                other => other,
            }
        };
        // This timeout must stay: the manager's response timeout does not bound a call that
        // waits through reconnect attempts.
        match tokio::time::timeout(self.inner.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let err = map_err(&self.inner.url, &e);
                Err(match err {
                    StoreError::Timeout(_) => StoreError::Timeout(self.inner.timeout),
                    other => other,
                })
            }
            Err(_) => Err(StoreError::Timeout(self.inner.timeout)),
        }
    }
}

/// `EVALSHA <sha> <nkeys>` with room for `args` more arguments of `bytes` bytes in total;
/// push the keys, then the arguments, and send it with [`RedisConn::eval_cmd`].
pub(crate) fn evalsha_cmd(script: &Script, nkeys: usize, args: usize, bytes: usize) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(3 + args, 48 + bytes);
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(nkeys);
    cmd
}

/// The fields of a flat script reply: decimal integers separated by single spaces.
pub(crate) struct ReplyFields<'a>(std::slice::Split<'a, u8, fn(&u8) -> bool>);

impl<'a> ReplyFields<'a> {
    /// The fields of a bulk-string reply, or `None` for any other kind of reply.
    pub(crate) fn of(reply: &'a redis::Value) -> Option<Self> {
        match reply {
            redis::Value::BulkString(bytes) => {
                Some(Self(bytes.split((|&b| b == b' ') as fn(&u8) -> bool)))
            }
            _ => None,
        }
    }

    /// The next field as an unsigned decimal integer (no sign, no blanks, no exponent).
    pub(crate) fn next_u64(&mut self) -> Option<u64> {
        let s = self.0.next()?;
        if s.is_empty() || s.len() > 20 {
            return None;
        }
        s.iter().try_fold(0u64, |n, &b| {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            n.checked_mul(10)?.checked_add(u64::from(d))
        })
    }

    /// Whether every field was read.
    pub(crate) fn is_done(&mut self) -> bool {
        self.0.next().is_none()
    }
}

/// One request of a batch script: what it adds to the command and reads from the reply.
pub(crate) trait BatchJob: Send + Sync + 'static {
    /// The request's answer.
    type Output: Send + 'static;
    /// Keys and arguments it adds, and roughly how many bytes (to size the command).
    fn size(&self) -> (usize, usize, usize);
    /// Appends its keys.
    fn push_keys(&self, cmd: &mut redis::Cmd);
    /// Appends its arguments.
    fn push_args(&self, cmd: &mut redis::Cmd);
    /// Appends the keys of every job of a batch, then their arguments; a job type may
    /// override it to share arguments between jobs.
    fn push_batch<'a>(jobs: impl Iterator<Item = &'a Self> + Clone, cmd: &mut redis::Cmd)
    where
        Self: 'a,
    {
        for j in jobs.clone() {
            j.push_keys(cmd);
        }
        for j in jobs {
            j.push_args(cmd);
        }
    }
    /// Reads its answer from the batch's reply; `None` when the reply is malformed.
    fn parse(&self, fields: &mut ReplyFields<'_>) -> Option<Self::Output>;
}

type Answer<J> = oneshot::Sender<Result<<J as BatchJob>::Output, StoreError>>;

struct Queue<J: BatchJob> {
    waiting: Vec<(J, Answer<J>)>,
    in_flight: usize,
    /// Emptied batch vectors, reused so that queueing does not reallocate.
    spare: Vec<Vec<(J, Answer<J>)>>,
}

impl<J: BatchJob> Queue<J> {
    fn take(&mut self, max: usize) -> Vec<(J, Answer<J>)> {
        let mut next = self.spare.pop().unwrap_or_default();
        if self.waiting.len() <= max {
            std::mem::swap(&mut self.waiting, &mut next);
        } else {
            next.extend(self.waiting.drain(..max));
        }
        next
    }
}

/// How many batch scripts may be in flight at once: while one is on the server, the next
/// is already on the connection behind it.
const MAX_IN_FLIGHT: usize = 2;

/// Sends the requests queued while a script is in flight as one script (one `EVALSHA` of
/// all their keys, then all their arguments), up to `max` per script and [`MAX_IN_FLIGHT`]
/// scripts at once, on spawned tasks. The script's reply is the requests' flat replies
/// joined by spaces, in order. Every request is answered: a script's call is bounded by the
/// per-call timeout, so a request waits at most two of them (the script ahead of it, then
/// its own); a runner dropped with its runtime drops its senders, which answers
/// [`StoreError::Unavailable`].
pub(crate) struct Batcher<J: BatchJob> {
    conn: RedisConn,
    script: Script,
    max: usize,
    what: &'static str,
    queue: Mutex<Queue<J>>,
}

impl<J: BatchJob> fmt::Debug for Batcher<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher")
            .field("script", &self.what)
            .field("max", &self.max)
            .finish()
    }
}

/// Frees a runner's slot if the runner panics, so that later requests start a new one.
struct RunnerSlot<'a, J: BatchJob>(Option<&'a Batcher<J>>);

impl<J: BatchJob> Drop for RunnerSlot<'_, J> {
    fn drop(&mut self) {
        if let Some(b) = self.0 {
            b.lock().in_flight -= 1;
        }
    }
}

impl<J: BatchJob> Batcher<J> {
    /// A batcher of up to `max` requests per script `code`; `what` names the script in
    /// errors.
    pub(crate) fn new(conn: RedisConn, code: &str, max: usize, what: &'static str) -> Self {
        Self {
            conn,
            script: Script::new(code),
            max: max.max(1),
            what,
            queue: Mutex::new(Queue {
                waiting: Vec::new(),
                in_flight: 0,
                spare: Vec::new(),
            }),
        }
    }

    /// The largest batch.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<J>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job` and waits for its answer.
    pub(crate) async fn submit(self: &Arc<Self>, job: J) -> Result<J::Output, StoreError> {
        let (answer, rx) = oneshot::channel();
        let start = {
            let mut q = self.lock();
            q.waiting.push((job, answer));
            if q.in_flight < MAX_IN_FLIGHT {
                q.in_flight += 1;
                Some(q.take(self.max))
            } else {
                None
            }
        };
        if let Some(batch) = start {
            tokio::spawn(self.clone().run(batch));
        }
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "{} batch ended without an answer",
                self.what
            )))
        })
    }

    /// Runs batches until the queue is empty.
    async fn run(self: Arc<Self>, mut batch: Vec<(J, Answer<J>)>) {
        let mut slot = RunnerSlot(Some(&*self));
        let mut answers = Vec::new();
        loop {
            match self.eval(&batch, &mut answers).await {
                Ok(()) => {
                    for ((_, tx), a) in batch.drain(..).zip(answers.drain(..)) {
                        let _ = tx.send(Ok(a));
                    }
                }
                Err(e) => {
                    answers.clear();
                    for (_, tx) in batch.drain(..) {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
            let mut q = self.lock();
            let next = if q.waiting.is_empty() {
                // in the same critical section as the check: a request queued after it
                // sees the free slot and starts a runner
                q.in_flight -= 1;
                slot.0 = None;
                None
            } else {
                Some(q.take(self.max))
            };
            if q.spare.len() < MAX_IN_FLIGHT {
                q.spare.push(batch);
            }
            match next {
                Some(next) => batch = next,
                None => return,
            }
        }
    }

    async fn eval(
        &self,
        batch: &[(J, Answer<J>)],
        out: &mut Vec<J::Output>,
    ) -> Result<(), StoreError> {
        let (mut keys, mut args, mut bytes) = (0, 0, 0);
        for (j, _) in batch {
            let (k, a, b) = j.size();
            keys += k;
            args += a;
            bytes += b;
        }
        let mut cmd = evalsha_cmd(&self.script, keys, keys + args, bytes);
        J::push_batch(batch.iter().map(|(j, _)| j), &mut cmd);
        let reply: redis::Value = self.conn.eval_cmd(&self.script, &cmd).await?;
        let bad = || StoreError::Protocol(format!("unexpected {} batch reply", self.what));
        let mut fields = ReplyFields::of(&reply).ok_or_else(bad)?;
        for (j, _) in batch {
            out.push(j.parse(&mut fields).ok_or_else(bad)?);
        }
        if !fields.is_done() {
            out.clear();
            return Err(bad());
        }
        Ok(())
    }
}

/// An argument for [`RedisConn::eval`]: implemented for integers, strings and byte slices.
pub trait ToRedisArgsDyn: Sync {
    /// Appends this argument to a script invocation.
    fn push_to(&self, inv: &mut redis::ScriptInvocation<'_>);
    /// Appends this argument to a command.
    fn push_to_cmd(&self, cmd: &mut redis::Cmd);
}

impl<T: ToRedisArgs + Sync> ToRedisArgsDyn for T {
    fn push_to(&self, inv: &mut redis::ScriptInvocation<'_>) {
        inv.arg(self);
    }
    fn push_to_cmd(&self, cmd: &mut redis::Cmd) {
        cmd.arg(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_passwords() {
        assert_eq!(
            redact_url("redis://alice:hunter2@10.0.0.1:6380/2"),
            "redis://***:***@10.0.0.1:6380/2"
        );
        assert_eq!(redact_url("rediss://:pw@h/0"), "rediss://:***@h/0");
        assert_eq!(redact_url("not a url"), "<redis url>");
        let b = RedisConn::builder("redis://:hunter2@127.0.0.1:1");
        assert!(!format!("{b:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn errors_never_contain_the_password() {
        let conn = RedisConn::builder("redis://:hunter2@127.0.0.1:1/0")
            .timeout(Duration::from_millis(200))
            .connect_timeout(Duration::from_millis(100))
            .build_lazy()
            .unwrap();
        assert!(!format!("{conn:?}").contains("hunter2"));
        let script = Script::new("return 1");
        let err = conn.eval::<i64>(&script, &[b"k"], &[]).await.unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = RedisConn::builder("redis://:hunter2@127.0.0.1:1/0")
            .connect_timeout(Duration::from_millis(100))
            .connect()
            .await
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn keys_use_the_client_key_as_hash_tag() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let conn = RedisConn::builder("redis://127.0.0.1:1")
            .key_prefix("shop")
            .build_lazy()
            .unwrap();
        assert_eq!(conn.key("thr", b"ip:1.2.3.4"), b"shop:thr:{ip:1.2.3.4}");
        assert_eq!(conn.key("q", b"a}b{"), b"shop:q:{a)b(}");
    }
}
