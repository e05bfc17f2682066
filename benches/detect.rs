//! Detector throughput, side by side with libinjectionrs (SQLi + XSS checks on every
//! input, as a WAF using it would run them), over an embedded sample of the development
//! corpus (benign and attack lines), plus the per-input cost of typical short benign
//! strings (the sanitize layer calls the detectors for every candidate string).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tower_shield::sanitize::detect::Detectors;

const MIX: &str = include_str!("data/detect_mix.txt");
const BENIGN_SHORT: &str = include_str!("data/benign_short.txt");

fn lines(s: &'static str) -> Vec<&'static str> {
    s.lines().collect()
}

fn libinjection(v: &str) -> bool {
    libinjectionrs::detect_sqli(v.as_bytes()).is_injection()
        || libinjectionrs::detect_xss(v.as_bytes()).is_injection()
}

fn bench_sets(c: &mut Criterion) {
    let detectors = Detectors::default();
    for (name, set) in [
        ("corpus_mix", lines(MIX)),
        ("benign_short", lines(BENIGN_SHORT)),
    ] {
        let bytes: usize = set.iter().map(|l| l.len()).sum();
        let mut g = c.benchmark_group(format!("detect/{name}"));
        g.throughput(Throughput::Elements(set.len() as u64));
        g.bench_function(BenchmarkId::new("tower_shield", set.len()), |b| {
            b.iter(|| {
                let mut n = 0usize;
                for v in &set {
                    n += detectors.inspect(black_box(v)).is_some() as usize;
                }
                n
            })
        });
        g.bench_function(BenchmarkId::new("libinjectionrs", set.len()), |b| {
            b.iter(|| {
                let mut n = 0usize;
                for v in &set {
                    n += libinjection(black_box(v)) as usize;
                }
                n
            })
        });
        g.finish();
        let _ = bytes;
    }
}

fn bench_single(c: &mut Criterion) {
    let detectors = Detectors::default();
    let mut g = c.benchmark_group("detect/single");
    for v in [
        "Jane Doe",
        "O'Brien & Sons, 12 Main St.",
        "ORDER-2024-000123",
    ] {
        g.bench_with_input(BenchmarkId::new("tower_shield", v), v, |b, v| {
            b.iter(|| detectors.inspect(black_box(v)))
        });
        g.bench_with_input(BenchmarkId::new("libinjectionrs", v), v, |b, v| {
            b.iter(|| libinjection(black_box(v)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_sets, bench_single);
criterion_main!(benches);
