//! Injectable clocks: monotonic by default, manual in tests.
//!
//! Every time-based behaviour of the crate (throttle pacing, lockout bans, quota windows,
//! cache expiry) reads time through [`Clock`], so tests can move time forward without
//! sleeping.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time.
///
/// `monotonic` never goes backwards and is used for all durations; `wall` is the calendar
/// time used for quota windows and token expiry.
pub trait Clock: Send + Sync + Debug + 'static {
    /// Time elapsed since an arbitrary, fixed origin. Never decreases.
    fn monotonic(&self) -> Duration;
    /// Wall-clock time.
    fn wall(&self) -> SystemTime;
    /// Wall-clock time read cheaply, at a resolution of a few milliseconds where the
    /// platform offers such a clock: on Linux `CLOCK_REALTIME_COARSE` (the time of the last
    /// timer tick, 1–4 ms old; about 7 ns a read against about 20 ns for [`wall`]).
    ///
    /// For decisions where milliseconds do not matter: quota windows (hours to years) read
    /// it on every request. It follows the same clock as [`wall`], steps included, only
    /// coarser. The default returns [`wall`] (a [`ManualClock`] is exact).
    ///
    /// [`wall`]: Clock::wall
    fn wall_coarse(&self) -> SystemTime {
        self.wall()
    }
    /// [`wall_coarse`](Clock::wall_coarse) as nanoseconds since the Unix epoch (`None`
    /// before it or after the year 2554): what the quota layer keys its windows on, without
    /// a conversion through `SystemTime` where the clock can give it directly.
    fn wall_coarse_unix_nanos(&self) -> Option<u64> {
        let d = self.wall_coarse().duration_since(UNIX_EPOCH).ok()?;
        u64::try_from(d.as_nanos()).ok()
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn monotonic(&self) -> Duration {
        (**self).monotonic()
    }
    fn wall(&self) -> SystemTime {
        (**self).wall()
    }
    fn wall_coarse(&self) -> SystemTime {
        (**self).wall_coarse()
    }
    fn wall_coarse_unix_nanos(&self) -> Option<u64> {
        (**self).wall_coarse_unix_nanos()
    }
}

/// The default clock: [`Instant`] for monotonic time, [`SystemTime`] for wall time.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// Creates a clock whose monotonic origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[inline]
    fn wall_coarse(&self) -> SystemTime {
        match coarse_unix() {
            Some((s, n)) => UNIX_EPOCH + Duration::new(s, n),
            // before 1970, or an odd reading: the exact clock
            None => SystemTime::now(),
        }
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[inline]
    fn wall_coarse_unix_nanos(&self) -> Option<u64> {
        let (s, n) = coarse_unix()?;
        s.checked_mul(1_000_000_000)?.checked_add(u64::from(n))
    }
}

/// `CLOCK_REALTIME_COARSE` as (seconds, nanoseconds) since the epoch; `None` before it.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[inline]
fn coarse_unix() -> Option<(u64, u32)> {
    use rustix::time::{ClockId, clock_gettime};
    let t = clock_gettime(ClockId::RealtimeCoarse);
    match (u64::try_from(t.tv_sec), u32::try_from(t.tv_nsec)) {
        (Ok(s), Ok(n)) if n < 1_000_000_000 => Some((s, n)),
        _ => None,
    }
}

/// A clock that only moves when told to. Clones share the same time.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tower_shield::clock::{Clock, ManualClock};
///
/// let clock = ManualClock::at_unix(1_700_000_000);
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(clock.monotonic(), Duration::from_millis(1500));
/// assert_eq!(clock.wall(), UNIX_EPOCH + Duration::from_millis(1_700_000_001_500));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Debug)]
struct ManualInner {
    mono_nanos: AtomicU64,
    wall_nanos: AtomicI64,
}

impl ManualClock {
    /// A manual clock whose wall time starts at the given Unix time (seconds).
    pub fn at_unix(secs: i64) -> Self {
        Self {
            inner: Arc::new(ManualInner {
                mono_nanos: AtomicU64::new(0),
                wall_nanos: AtomicI64::new(secs.saturating_mul(1_000_000_000)),
            }),
        }
    }

    /// A manual clock starting at the current wall time.
    pub fn new() -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let clock = Self::at_unix(0);
        clock
            .inner
            .wall_nanos
            .store(now.as_nanos() as i64, Ordering::SeqCst);
        clock
    }

    /// Moves both monotonic and wall time forward.
    pub fn advance(&self, by: Duration) {
        let nanos = by.as_nanos().min(u64::MAX as u128) as u64;
        self.inner.mono_nanos.fetch_add(nanos, Ordering::SeqCst);
        self.inner
            .wall_nanos
            .fetch_add(nanos as i64, Ordering::SeqCst);
    }

    /// Sets the wall time (seconds since the Unix epoch) without touching monotonic time,
    /// as an NTP step would.
    pub fn set_wall_unix(&self, secs: i64) {
        self.inner
            .wall_nanos
            .store(secs.saturating_mul(1_000_000_000), Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn monotonic(&self) -> Duration {
        Duration::from_nanos(self.inner.mono_nanos.load(Ordering::SeqCst))
    }
    fn wall(&self) -> SystemTime {
        let n = self.inner.wall_nanos.load(Ordering::SeqCst);
        if n >= 0 {
            UNIX_EPOCH + Duration::from_nanos(n as u64)
        } else {
            UNIX_EPOCH - Duration::from_nanos(n.unsigned_abs())
        }
    }
}

/// A shared, type-erased clock.
pub type SharedClock = Arc<dyn Clock>;

/// The default shared clock ([`SystemClock`]).
pub fn system_clock() -> SharedClock {
    Arc::new(SystemClock::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_clones_share_time() {
        let a = ManualClock::at_unix(10);
        let b = a.clone();
        a.advance(Duration::from_secs(5));
        assert_eq!(b.monotonic(), Duration::from_secs(5));
        assert_eq!(b.wall(), UNIX_EPOCH + Duration::from_secs(15));
        b.set_wall_unix(3);
        assert_eq!(a.wall(), UNIX_EPOCH + Duration::from_secs(3));
        assert_eq!(a.monotonic(), Duration::from_secs(5));
    }

    #[test]
    fn coarse_wall_clock_is_the_wall_clock_within_a_few_milliseconds() {
        let c = SystemClock::new();
        for _ in 0..100 {
            let before = c.wall();
            let coarse = c.wall_coarse();
            let after = c.wall();
            // a coarse reading is the last tick: at most a few ms behind, never ahead
            assert!(coarse <= after, "{coarse:?} > {after:?}");
            let lag = before.duration_since(coarse).unwrap_or_default();
            assert!(
                lag < Duration::from_millis(50),
                "coarse clock {lag:?} behind"
            );
        }
        let fine = c.wall().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        let coarse = c.wall_coarse_unix_nanos().unwrap();
        assert!(coarse <= fine + 1_000_000 && fine - coarse.min(fine) < 50_000_000);
        let m = ManualClock::at_unix(1_700_000_000);
        assert_eq!(m.wall_coarse(), m.wall());
        assert_eq!(m.wall_coarse_unix_nanos(), Some(1_700_000_000_000_000_000));
        m.advance(Duration::from_nanos(1));
        assert_eq!(
            m.wall_coarse(),
            UNIX_EPOCH + Duration::new(1_700_000_000, 1)
        );
    }

    #[test]
    fn system_clock_is_monotonic() {
        let c = SystemClock::new();
        let t1 = c.monotonic();
        let t2 = c.monotonic();
        assert!(t2 >= t1);
    }
}
