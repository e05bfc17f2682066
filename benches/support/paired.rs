//! Paired ("interleaved A/B") measurement of an added cost.
//!
//! The speed targets are added costs: a layered service minus the same service without the
//! layer. Measured as two separate criterion benchmarks, the two means come from runs seconds
//! apart, and on a shared VM the machine's speed drifts by more than the difference between
//! them (the same bench has moved by 1.5× between two passes ten minutes apart). Here both
//! sides run in the same sample, in alternating blocks of [`BLOCK`] calls (the side that goes
//! first alternates too, so neither always runs on a warmer cache), and the sample's time is
//! the layered side's time minus the base side's. Criterion's statistics then describe the
//! added cost itself; a slow stretch of the machine slows both sides of a block alike and
//! mostly cancels.
//!
//! A sample where the base side happened to be slower counts as zero added time (a `Duration`
//! cannot be negative), which can only bias the figure upwards.

use std::time::{Duration, Instant};

/// Calls per side and block: long enough that the two `Instant::now` calls per block are
/// noise (< 0.1 ns per call), short enough (tens of µs) that a block rarely straddles a
/// preemption of only one side.
pub const BLOCK: u64 = 128;

/// Runs `base` and `layered` `iters` times each, interleaved, and returns the layered side's
/// total time minus the base side's (the added time for `iters` calls).
pub fn added(iters: u64, base: impl FnMut(), layered: impl FnMut()) -> Duration {
    if std::env::var_os("PAIRED_MEDIAN").is_some() {
        return added_median(iters, base, layered);
    }
    let mut base_t = Duration::ZERO;
    let mut layered_t = Duration::ZERO;
    let mut left = iters;
    let mut base_first = true;
    let (mut base, mut layered) = (base, layered);
    let shift = std::env::var_os("PAIRED_SHIFT").is_some();
    let mut block = 0usize;
    while left > 0 {
        let n = left.min(BLOCK);
        let mut pair = || {
            for side in [base_first, !base_first] {
                let t = Instant::now();
                if side {
                    for _ in 0..n {
                        base();
                    }
                    base_t += t.elapsed();
                } else {
                    for _ in 0..n {
                        layered();
                    }
                    layered_t += t.elapsed();
                }
            }
        };
        if shift {
            shifted(block % DEPTHS, &mut pair);
        } else {
            pair();
        }
        block += 1;
        base_first = !base_first;
        left -= n;
    }
    layered_t.saturating_sub(base_t)
}

/// `PAIRED_MEDIAN=1`: the same interleaving, but the sample is the **median** of the blocks'
/// per-call differences times `iters`. A block pair hit by a preemption or a burst of
/// another tenant's load is one outlier among many instead of a share of the sum.
fn added_median(iters: u64, mut base: impl FnMut(), mut layered: impl FnMut()) -> Duration {
    let mut diffs = Vec::with_capacity(iters.div_ceil(BLOCK) as usize);
    let mut left = iters;
    let mut base_first = true;
    while left > 0 {
        let n = left.min(BLOCK);
        let (mut b, mut l) = (Duration::ZERO, Duration::ZERO);
        for side in [base_first, !base_first] {
            let t = Instant::now();
            if side {
                for _ in 0..n {
                    base();
                }
                b = t.elapsed();
            } else {
                for _ in 0..n {
                    layered();
                }
                l = t.elapsed();
            }
        }
        diffs.push((l.as_nanos() as f64 - b.as_nanos() as f64) / n as f64);
        base_first = !base_first;
        left -= n;
    }
    diffs.sort_by(f64::total_cmp);
    let median = diffs[diffs.len() / 2].max(0.0);
    Duration::from_nanos((median * iters as f64) as u64)
}

const DEPTHS: usize = 128;

/// Runs `f` `depth` frames deeper on the stack.
///
/// `PAIRED_SHIFT=1`: block pair `k` runs `k % DEPTHS` frames (32 bytes each) deeper, so
/// the samples cover every 32-byte stack offset in 4 KiB. The stack's start is randomized per
/// process, and a cost that depends on where a stack slot lands (a store-forwarding stall
/// on an aliased address, a copy split over two cache lines) otherwise differs from one
/// process to the next; this averages over placements within each run (Mytkowicz et al.,
/// "Producing Wrong Data Without Doing Anything Obviously Wrong!", ASPLOS 2009).
#[inline(never)]
fn shifted(depth: usize, f: &mut dyn FnMut()) {
    if depth == 0 {
        return f();
    }
    let pad = [0u8; 8];
    std::hint::black_box(&pad);
    shifted(depth - 1, f);
    std::hint::black_box(&pad);
}
