//! Durability of the quota counts: a child process serving requests with the durable store
//! is killed with SIGKILL; after a restart the counts are at most the loss window behind,
//! and never ahead.
//!
//! The child is this test binary re-executed with `QUOTA_CHILD_DB` set: it then runs an axum
//! server with the durable store instead of the test, prints its port, and serves until it
//! is killed (or its stdin closes, so a failed test never leaves it running).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use tower_shield::clock::system_clock;
use tower_shield::quota::{
    DurableCounterStore, DurableOptions, KeyFallback, Quota, QuotaLayer, QuotaStore, Window,
};

const TEST_NAME: &str = "sigkilled_server_loses_at_most_the_flush_window";
/// The child's flush interval.
const FLUSH: Duration = Duration::from_millis(100);
/// The loss bound asserted: flush interval plus a generous allowance for one commit on a
/// loaded machine.
const LOSS_BOUND: Duration = Duration::from_millis(1000);

fn layer(store: DurableCounterStore) -> QuotaLayer {
    QuotaLayer::builder()
        .store(QuotaStore::Durable(store))
        .plan(
            "default",
            [Quota::new("monthly", 100_000_000, Window::month())],
        )
        .default_plan("default")
        .key_fallback(KeyFallback::Header("x-client".parse().unwrap()))
        .build()
        .unwrap()
}

fn options() -> DurableOptions {
    DurableOptions {
        flush_interval: FLUSH,
        clock: system_clock(),
        ..Default::default()
    }
}

fn child(db: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = DurableCounterStore::open(db, options()).unwrap();
        let app = Router::new()
            .route("/work", get(|| async { "done" }))
            .layer(layer(store));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("PORT {}", listener.local_addr().unwrap().port());
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        // exit when the parent goes away
        tokio::task::spawn_blocking(|| {
            let mut buf = [0u8; 64];
            while std::io::stdin()
                .read(&mut buf)
                .map(|n| n > 0)
                .unwrap_or(false)
            {}
        })
        .await
        .unwrap();
        std::process::exit(0);
    });
}

#[test]
fn sigkilled_server_loses_at_most_the_flush_window() {
    if let Ok(db) = std::env::var("QUOTA_CHILD_DB") {
        child(&db);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("quota.redb");
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env("QUOTA_CHILD_DB", &db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(proc.stdout.take().unwrap()).lines();
    let port: u16 = loop {
        let line = lines.next().expect("child exited early").unwrap();
        // the harness may print "test <name> ... " on the same line
        if let Some(i) = line.find("PORT ") {
            break line[i + 5..].trim().parse().unwrap();
        }
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // admitted responses and when they arrived
    let admitted: Vec<Instant> = rt.block_on(async move {
        let client = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}/work");
        let start = Instant::now();
        let mut times = Vec::new();
        while start.elapsed() < Duration::from_millis(2500) {
            let res = client
                .get(&url)
                .header("x-client", "k1")
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            times.push(Instant::now());
        }
        times
    });
    let killed_at = Instant::now();
    proc.kill().unwrap(); // SIGKILL
    proc.wait().unwrap();

    let store = DurableCounterStore::open(&db, options()).unwrap();
    let layer = layer(store);
    let usage = rt.block_on(layer.usage_for(None, None, "h:k1")).unwrap();
    let durable = usage[0].used;
    let total = admitted.len() as u64;
    let old_enough = admitted
        .iter()
        .filter(|t| killed_at.duration_since(**t) > LOSS_BOUND)
        .count() as u64;
    eprintln!("admitted {total}, durable {durable}, older than the bound {old_enough}");
    assert!(total > 50, "too few requests to say anything ({total})");
    assert!(
        durable <= total,
        "counts are never ahead: {durable} > {total}"
    );
    assert!(
        durable >= old_enough,
        "lost more than {LOSS_BOUND:?} of counts: {durable} durable, {old_enough} admitted before"
    );
    assert!(old_enough > 0);
}
