//! A `redis-server` of the bench's own on a free port, and its `INFO commandstats`
//! readings. Shared by the Redis benches (`#[path]`-included; not a bench target).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct RedisServer {
    pub port: u16,
    child: Child,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start() -> RedisServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    RedisServer { port, child }
}

/// `(EVALSHA calls, server µs per call)` since the last `CONFIG RESETSTAT`.
pub fn evalsha_stats(port: u16) -> (f64, f64) {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .unwrap_or("");
    let field = |name: &str| -> f64 {
        line.split(&[':', ','][..])
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    (field("calls="), field("usec_per_call="))
}

/// Zeroes the server's command statistics.
pub fn reset_stats(port: u16) {
    let _ = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "CONFIG", "RESETSTAT"])
        .output();
}
