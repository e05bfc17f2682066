//! Quota windows: calendar periods in a time zone (with a billing anchor), and rolling
//! windows.
//!
//! A calendar window resets at a wall-clock boundary of its zone: the hour, local midnight,
//! Monday, the month's anchor day, January 1st. Boundaries are computed on the local
//! calendar and converted back to absolute time with the zone's rules, so a day in a zone
//! with daylight saving time lasts 23 or 25 hours on the change days, and a boundary that
//! falls into a skipped local hour (spring forward) moves to the first instant after the
//! gap. A billing anchor on a day the month does not have (the 31st in a 30-day month, the
//! 29th–31st in February) resets on the month's last day instead.
//!
//! A rolling window counts the units of the last `length`, in `buckets` sub-intervals:
//! usage leaves the window one bucket at a time (granularity `length / buckets`).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{
    DateTime, Datelike, FixedOffset, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone,
    Timelike, Utc,
};

use crate::error::ConfigError;

/// The time zone a calendar window follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Zone {
    /// Coordinated Universal Time (the default).
    #[default]
    Utc,
    /// A fixed offset from UTC (no daylight saving time).
    Fixed(FixedOffset),
    /// An IANA time zone (`Europe/Berlin`), with its daylight saving rules.
    Iana(chrono_tz::Tz),
}

impl Zone {
    /// Parses `"UTC"`, a fixed offset (`"+02:00"`, `"-05:30"`) or an IANA name
    /// (`"America/New_York"`).
    ///
    /// ```
    /// use tower_shield::quota::Zone;
    /// assert_eq!(Zone::parse("UTC").unwrap(), Zone::Utc);
    /// assert!(matches!(Zone::parse("+05:30").unwrap(), Zone::Fixed(_)));
    /// assert!(matches!(Zone::parse("Europe/Berlin").unwrap(), Zone::Iana(_)));
    /// assert!(Zone::parse("Mars/Olympus").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("utc") || s == "Z" {
            return Ok(Zone::Utc);
        }
        if let Some(rest) = s.strip_prefix(['+', '-']) {
            let sign = if s.starts_with('-') { -1 } else { 1 };
            let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
            let (h, m): (i32, i32) = match (h.parse(), m.parse()) {
                (Ok(h), Ok(m)) if (0..=23).contains(&h) && (0..=59).contains(&m) => (h, m),
                _ => return Err(format!("invalid UTC offset {s:?} (expected +HH:MM)")),
            };
            return FixedOffset::east_opt(sign * (h * 3600 + m * 60))
                .map(Zone::Fixed)
                .ok_or_else(|| format!("invalid UTC offset {s:?}"));
        }
        s.parse::<chrono_tz::Tz>()
            .map(Zone::Iana)
            .map_err(|_| format!("unknown time zone {s:?} (use UTC, +HH:MM or an IANA name)"))
    }

    fn local(&self, t: DateTime<Utc>) -> NaiveDateTime {
        match self {
            Zone::Utc => t.naive_utc(),
            Zone::Fixed(o) => t.with_timezone(o).naive_local(),
            Zone::Iana(tz) => t.with_timezone(tz).naive_local(),
        }
    }

    fn resolve(&self, n: NaiveDateTime) -> Option<DateTime<Utc>> {
        let r = match self {
            Zone::Utc => return Some(Utc.from_utc_datetime(&n)),
            Zone::Fixed(o) => o.from_local_datetime(&n).map(|d| d.with_timezone(&Utc)),
            Zone::Iana(tz) => tz.from_local_datetime(&n).map(|d| d.with_timezone(&Utc)),
        };
        match r {
            LocalResult::Single(d) => Some(d),
            // a repeated local time (autumn): the boundary is its first occurrence
            LocalResult::Ambiguous(a, b) => Some(a.min(b)),
            LocalResult::None => None,
        }
    }

    /// The instant of a local time; a local time skipped by a DST gap maps to the first
    /// instant after the gap.
    fn instant_of(&self, n: NaiveDateTime) -> DateTime<Utc> {
        if let Some(d) = self.resolve(n) {
            return d;
        }
        // gaps are multiples of 15 minutes and shorter than a day
        let mut probe = n;
        for _ in 0..(24 * 4) {
            probe += chrono::Duration::minutes(15);
            if let Some(d) = self.resolve(probe) {
                // the first valid quarter after the gap; walk back minute by minute in case
                // the gap ended between quarters
                let mut best = d;
                let mut m = probe;
                for _ in 0..15 {
                    m -= chrono::Duration::minutes(1);
                    match self.resolve(m) {
                        Some(e) if e < best => best = e,
                        _ => break,
                    }
                }
                return best;
            }
        }
        Utc.from_utc_datetime(&n)
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Zone::Utc => f.write_str("UTC"),
            Zone::Fixed(o) => write!(f, "{o}"),
            Zone::Iana(tz) => f.write_str(tz.name()),
        }
    }
}

/// A calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// Resets every hour on the hour (local).
    Hour,
    /// Resets at local midnight (or the anchor time).
    Day,
    /// Resets on Monday at local midnight (or the anchor time).
    Week,
    /// Resets on the anchor day of the month (default the 1st) at the anchor time.
    Month,
    /// Resets on January 1st at the anchor time.
    Year,
}

impl Period {
    /// A nominal length in seconds, used for the `w` parameter of `RateLimit-Policy` (which
    /// has no calendar notion: a month is 30 days there).
    pub fn nominal_secs(&self) -> u64 {
        match self {
            Period::Hour => 3600,
            Period::Day => 86_400,
            Period::Week => 604_800,
            Period::Month => 2_592_000,
            Period::Year => 31_536_000,
        }
    }

    /// Parses `hour`, `day`, `week`, `month`, `year` (also `hourly`, `daily`, ...).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "hour" | "hourly" => Period::Hour,
            "day" | "daily" => Period::Day,
            "week" | "weekly" => Period::Week,
            "month" | "monthly" => Period::Month,
            "year" | "yearly" | "annual" => Period::Year,
            _ => return None,
        })
    }
}

/// The current window: where it started, where it ends, and its label (used in store keys:
/// `2026-11`, `2026-11-22`, `2026-11-22T13`, or a rolling bucket number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Start of the window (inclusive).
    pub start: SystemTime,
    /// End of the window (exclusive): the real reset time.
    pub end: SystemTime,
    /// Label of the window, unique per window of this quota.
    pub label: String,
}

impl Span {
    /// Time left until the reset, from `now`.
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.end.duration_since(now).unwrap_or_default()
    }
}

/// A quota window: a calendar period in a zone, or a rolling duration.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tower_shield::quota::{Window, Zone};
///
/// // a billing month resetting on the 31st (or the month's last day) at 00:00 in New York
/// let w = Window::month().anchor_day(31).unwrap().zone(Zone::parse("America/New_York").unwrap());
/// // 2026-04-15T12:00:00Z
/// let span = w.span(UNIX_EPOCH + Duration::from_secs(1_776_254_400));
/// assert_eq!(span.label, "2026-03-31");
/// // resets 2026-04-30T00:00 New York time (EDT, UTC-4)
/// assert_eq!(span.end, UNIX_EPOCH + Duration::from_secs(1_777_521_600));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Calendar {
        period: Period,
        zone: Zone,
        anchor_day: u32,
        anchor_time: NaiveTime,
    },
    Rolling {
        length: Duration,
        buckets: u32,
    },
}

fn days_in_month(y: i32, m: u32) -> u32 {
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let first_next = NaiveDate::from_ymd_opt(ny, nm, 1).expect("valid date");
    first_next.pred_opt().expect("valid date").day()
}

fn shift_month(y: i32, m: u32, delta: i32) -> (i32, u32) {
    let idx = y * 12 + (m as i32 - 1) + delta;
    (idx.div_euclid(12), (idx.rem_euclid(12) + 1) as u32)
}

fn to_chrono(t: SystemTime) -> DateTime<Utc> {
    DateTime::<Utc>::from(t)
}

fn to_system(t: DateTime<Utc>) -> SystemTime {
    SystemTime::from(t)
}

impl Window {
    /// A calendar window of `period`, in UTC, anchored at the period's natural start.
    pub fn calendar(period: Period) -> Self {
        Self {
            kind: Kind::Calendar {
                period,
                zone: Zone::Utc,
                anchor_day: 1,
                anchor_time: NaiveTime::MIN,
            },
        }
    }
    /// Calendar hours.
    pub fn hour() -> Self {
        Self::calendar(Period::Hour)
    }
    /// Calendar days.
    pub fn day() -> Self {
        Self::calendar(Period::Day)
    }
    /// Calendar weeks (Monday to Sunday).
    pub fn week() -> Self {
        Self::calendar(Period::Week)
    }
    /// Calendar months.
    pub fn month() -> Self {
        Self::calendar(Period::Month)
    }
    /// Calendar years.
    pub fn year() -> Self {
        Self::calendar(Period::Year)
    }

    /// A rolling window of `length`, counted in `buckets` sub-intervals (1 to 1000; usage
    /// leaves the window with a granularity of `length / buckets`).
    pub fn rolling(length: Duration, buckets: u32) -> Result<Self, ConfigError> {
        if !(1..=1000).contains(&buckets) {
            return Err(ConfigError::invalid(
                "quota.window.buckets",
                "must be between 1 and 1000",
            ));
        }
        let bucket = length.as_millis() / u128::from(buckets);
        if bucket == 0 || !length.as_millis().is_multiple_of(u128::from(buckets)) {
            return Err(ConfigError::invalid(
                "quota.window.length",
                "must be a positive number of milliseconds divisible by the bucket count",
            ));
        }
        Ok(Self {
            kind: Kind::Rolling { length, buckets },
        })
    }

    /// Sets the time zone of a calendar window (no effect on a rolling window).
    pub fn zone(mut self, z: Zone) -> Self {
        if let Kind::Calendar { zone, .. } = &mut self.kind {
            *zone = z;
        }
        self
    }

    /// Sets the billing anchor day of a monthly window (1–31; a day the month lacks means
    /// the month's last day).
    pub fn anchor_day(mut self, day: u32) -> Result<Self, ConfigError> {
        if !(1..=31).contains(&day) {
            return Err(ConfigError::invalid(
                "quota.window.anchor_day",
                "must be between 1 and 31",
            ));
        }
        if let Kind::Calendar { anchor_day, .. } = &mut self.kind {
            *anchor_day = day;
        }
        Ok(self)
    }

    /// Sets the local time of day at which a day, week, month or year window resets.
    pub fn anchor_time(mut self, hour: u32, minute: u32) -> Result<Self, ConfigError> {
        let t = NaiveTime::from_hms_opt(hour, minute, 0).ok_or_else(|| {
            ConfigError::invalid(
                "quota.window.anchor_time",
                "expected HH:MM (00:00 to 23:59)",
            )
        })?;
        if let Kind::Calendar { anchor_time, .. } = &mut self.kind {
            *anchor_time = t;
        }
        Ok(self)
    }

    /// Whether this is a rolling window.
    pub fn is_rolling(&self) -> bool {
        matches!(self.kind, Kind::Rolling { .. })
    }

    /// Nominal window length in seconds (for `RateLimit-Policy`'s `w`).
    pub fn nominal_secs(&self) -> u64 {
        match self.kind {
            Kind::Calendar { period, .. } => period.nominal_secs(),
            Kind::Rolling { length, .. } => length.as_secs().max(1),
        }
    }

    /// For a rolling window: `(bucket length, bucket count)`.
    pub(crate) fn rolling_parts(&self) -> Option<(Duration, u32)> {
        match self.kind {
            Kind::Rolling { length, buckets } => Some((length / buckets, buckets)),
            Kind::Calendar { .. } => None,
        }
    }

    /// The window containing `now`. For a rolling window, the span of the current bucket
    /// (its label is the bucket number; `end` is when that bucket's units leave the
    /// window).
    pub fn span(&self, now: SystemTime) -> Span {
        match self.kind {
            Kind::Rolling { length, buckets } => {
                let b = (length / buckets).as_millis() as i128;
                let ms = match now.duration_since(UNIX_EPOCH) {
                    Ok(d) => d.as_millis() as i128,
                    Err(e) => -(e.duration().as_millis() as i128),
                };
                let idx = ms.div_euclid(b);
                let start = from_millis(idx * b);
                Span {
                    start,
                    end: start + length,
                    label: format!("r{idx}"),
                }
            }
            Kind::Calendar {
                period,
                zone,
                anchor_day,
                anchor_time,
            } => calendar_span(period, zone, anchor_day, anchor_time, to_chrono(now)),
        }
    }
}

fn from_millis(ms: i128) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs() as u64)
    }
}

fn calendar_span(
    period: Period,
    zone: Zone,
    anchor_day: u32,
    anchor_time: NaiveTime,
    now: DateTime<Utc>,
) -> Span {
    let local = zone.local(now);
    let (start, end, label) = match period {
        Period::Hour => {
            let into = chrono::Duration::seconds(i64::from(local.minute() * 60 + local.second()))
                + chrono::Duration::nanoseconds(i64::from(local.nanosecond() % 1_000_000_000));
            let start = now - into;
            let label = (local - into).format("%Y-%m-%dT%H").to_string();
            (start, start + chrono::Duration::hours(1), label)
        }
        Period::Day => {
            let at = |d: NaiveDate| zone.instant_of(d.and_time(anchor_time));
            let mut day = local.date();
            if now < at(day) {
                day = day.pred_opt().unwrap_or(day);
            }
            let next = day.succ_opt().unwrap_or(day);
            (at(day), at(next), day.format("%Y-%m-%d").to_string())
        }
        Period::Week => {
            let at = |d: NaiveDate| zone.instant_of(d.and_time(anchor_time));
            let today = local.date();
            let mut monday =
                today - chrono::Duration::days(i64::from(today.weekday().num_days_from_monday()));
            if now < at(monday) {
                monday -= chrono::Duration::days(7);
            }
            let next = monday + chrono::Duration::days(7);
            (
                at(monday),
                at(next),
                format!("w{}", monday.format("%Y-%m-%d")),
            )
        }
        Period::Month => {
            let point = |y: i32, m: u32| {
                let d = anchor_day.min(days_in_month(y, m));
                let date = NaiveDate::from_ymd_opt(y, m, d).expect("valid date");
                (date, zone.instant_of(date.and_time(anchor_time)))
            };
            let (mut y, mut m) = (local.year(), local.month());
            if now < point(y, m).1 {
                (y, m) = shift_month(y, m, -1);
            }
            let (date, start) = point(y, m);
            let (ny, nm) = shift_month(y, m, 1);
            let (_, end) = point(ny, nm);
            let label = if anchor_day == 1 && anchor_time == NaiveTime::MIN {
                date.format("%Y-%m").to_string()
            } else {
                date.format("%Y-%m-%d").to_string()
            };
            (start, end, label)
        }
        Period::Year => {
            let point = |y: i32| {
                zone.instant_of(
                    NaiveDate::from_ymd_opt(y, 1, 1)
                        .expect("valid date")
                        .and_time(anchor_time),
                )
            };
            let mut y = local.year();
            if now < point(y) {
                y -= 1;
            }
            (point(y), point(y + 1), format!("{y}"))
        }
    };
    Span {
        start: to_system(start),
        end: to_system(end),
        label,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        to_system(DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc))
    }
    fn iso(t: SystemTime) -> String {
        to_chrono(t).format("%Y-%m-%dT%H:%M:%SZ").to_string()
    }
    fn span(w: Window, now: &str) -> (String, String, String) {
        let s = w.span(at(now));
        (iso(s.start), iso(s.end), s.label)
    }
    fn tz(name: &str) -> Zone {
        Zone::parse(name).unwrap()
    }

    #[test]
    fn jan_31_to_feb_1_changes_day_and_month() {
        let d = Window::day();
        assert_eq!(
            span(d, "2026-01-31T23:59:59Z"),
            (
                "2026-01-31T00:00:00Z".into(),
                "2026-02-01T00:00:00Z".into(),
                "2026-01-31".into()
            )
        );
        assert_eq!(span(d, "2026-02-01T00:00:00Z").2, "2026-02-01");
        let m = Window::month();
        assert_eq!(
            span(m, "2026-01-31T23:59:59Z"),
            (
                "2026-01-01T00:00:00Z".into(),
                "2026-02-01T00:00:00Z".into(),
                "2026-01".into()
            )
        );
        assert_eq!(
            span(m, "2026-02-01T00:00:00Z"),
            (
                "2026-02-01T00:00:00Z".into(),
                "2026-03-01T00:00:00Z".into(),
                "2026-02".into()
            )
        );
    }

    #[test]
    fn february_in_leap_and_non_leap_years() {
        let d = Window::day();
        // non-leap: Feb 28 is followed by Mar 1
        assert_eq!(span(d, "2026-02-28T12:00:00Z").1, "2026-03-01T00:00:00Z");
        // leap: Feb 28 is followed by Feb 29, then Mar 1
        assert_eq!(span(d, "2028-02-28T12:00:00Z").1, "2028-02-29T00:00:00Z");
        assert_eq!(
            span(d, "2028-02-29T12:00:00Z"),
            (
                "2028-02-29T00:00:00Z".into(),
                "2028-03-01T00:00:00Z".into(),
                "2028-02-29".into()
            )
        );
        // the month of February is 28 or 29 days long
        let m = Window::month();
        assert_eq!(span(m, "2026-02-10T00:00:00Z").1, "2026-03-01T00:00:00Z");
        assert_eq!(span(m, "2028-02-29T23:59:59Z").1, "2028-03-01T00:00:00Z");
        // a billing anchor on the 30th falls on Feb 28 / Feb 29
        let a = Window::month().anchor_day(30).unwrap();
        assert_eq!(
            span(a, "2026-02-27T00:00:00Z"),
            (
                "2026-01-30T00:00:00Z".into(),
                "2026-02-28T00:00:00Z".into(),
                "2026-01-30".into()
            )
        );
        assert_eq!(
            span(a, "2028-02-28T12:00:00Z"),
            (
                "2028-01-30T00:00:00Z".into(),
                "2028-02-29T00:00:00Z".into(),
                "2028-01-30".into()
            )
        );
        assert_eq!(span(a, "2028-02-29T00:00:00Z").1, "2028-03-30T00:00:00Z");
    }

    #[test]
    fn dec_31_to_jan_1_changes_year() {
        for w in [Window::day(), Window::month(), Window::year()] {
            let before = w.span(at("2026-12-31T23:59:59Z"));
            let after = w.span(at("2027-01-01T00:00:00Z"));
            assert_eq!(iso(before.end), "2027-01-01T00:00:00Z");
            assert_eq!(before.end, after.start);
            assert_ne!(before.label, after.label);
        }
        assert_eq!(span(Window::year(), "2026-12-31T23:59:59Z").2, "2026");
        assert_eq!(span(Window::month(), "2027-01-01T00:00:00Z").2, "2027-01");
        // the ISO week spanning the new year starts on Monday Dec 28
        assert_eq!(
            span(Window::week(), "2027-01-01T10:00:00Z"),
            (
                "2026-12-28T00:00:00Z".into(),
                "2027-01-04T00:00:00Z".into(),
                "w2026-12-28".into()
            )
        );
    }

    #[test]
    fn anchor_on_the_31st_clamps_to_the_last_day_of_short_months() {
        let w = Window::month().anchor_day(31).unwrap();
        // April has 30 days: the April period starts on the 30th and the March one on the 31st
        assert_eq!(
            span(w, "2026-04-15T00:00:00Z"),
            (
                "2026-03-31T00:00:00Z".into(),
                "2026-04-30T00:00:00Z".into(),
                "2026-03-31".into()
            )
        );
        assert_eq!(
            span(w, "2026-04-30T00:00:00Z"),
            (
                "2026-04-30T00:00:00Z".into(),
                "2026-05-31T00:00:00Z".into(),
                "2026-04-30".into()
            )
        );
        // "resets on the 15th at 00:00"
        let b = Window::month().anchor_day(15).unwrap();
        assert_eq!(
            span(b, "2026-11-14T23:59:59Z"),
            (
                "2026-10-15T00:00:00Z".into(),
                "2026-11-15T00:00:00Z".into(),
                "2026-10-15".into()
            )
        );
        assert_eq!(span(b, "2026-12-20T00:00:00Z").1, "2027-01-15T00:00:00Z");
    }

    #[test]
    fn dst_days_last_23_and_25_hours_in_new_york() {
        let w = Window::day().zone(tz("America/New_York"));
        // spring forward: 2026-03-08, local midnight is EST (-5), next midnight EDT (-4)
        let s = w.span(at("2026-03-08T12:00:00Z"));
        assert_eq!(iso(s.start), "2026-03-08T05:00:00Z");
        assert_eq!(iso(s.end), "2026-03-09T04:00:00Z");
        assert_eq!(s.end.duration_since(s.start).unwrap().as_secs(), 23 * 3600);
        assert_eq!(s.label, "2026-03-08");
        // fall back: 2026-11-01 lasts 25 hours
        let s = w.span(at("2026-11-01T12:00:00Z"));
        assert_eq!(iso(s.start), "2026-11-01T04:00:00Z");
        assert_eq!(iso(s.end), "2026-11-02T05:00:00Z");
        assert_eq!(s.end.duration_since(s.start).unwrap().as_secs(), 25 * 3600);
        // just before local midnight of Nov 1 (still Oct 31 locally)
        assert_eq!(span(w, "2026-11-01T03:59:59Z").2, "2026-10-31");
        // a month in Berlin: November starts at 23:00Z on Oct 31 (CET, +1)
        let m = Window::month().zone(tz("Europe/Berlin"));
        assert_eq!(
            span(m, "2026-10-31T23:30:00Z"),
            (
                "2026-10-31T23:00:00Z".into(),
                "2026-11-30T23:00:00Z".into(),
                "2026-11".into()
            )
        );
        // and October started at 22:00Z on Sep 30 (CEST, +2): 31 days plus one hour
        let s = m.span(at("2026-10-15T00:00:00Z"));
        assert_eq!(iso(s.start), "2026-09-30T22:00:00Z");
        assert_eq!(iso(s.end), "2026-10-31T23:00:00Z");
    }

    #[test]
    fn hour_windows_follow_the_local_clock_through_dst() {
        let w = Window::hour().zone(tz("Europe/Berlin"));
        // 2026-03-29 01:59:59Z = 03:59:59 CEST (02:00 local skipped)
        assert_eq!(
            span(w, "2026-03-29T01:30:00Z"),
            (
                "2026-03-29T01:00:00Z".into(),
                "2026-03-29T02:00:00Z".into(),
                "2026-03-29T03".into()
            )
        );
        assert_eq!(span(w, "2026-03-29T00:30:00Z").2, "2026-03-29T01");
        // India: half-hour offset
        let w = Window::hour().zone(tz("Asia/Kolkata"));
        assert_eq!(span(w, "2026-01-01T00:10:00Z").0, "2025-12-31T23:30:00Z");
    }

    #[test]
    fn anchor_time_in_a_dst_gap_moves_after_the_gap() {
        // Berlin skips 02:00-03:00 on 2026-03-29; a 02:30 reset happens at 03:00 CEST
        let w = Window::day()
            .anchor_time(2, 30)
            .unwrap()
            .zone(tz("Europe/Berlin"));
        let s = w.span(at("2026-03-29T12:00:00Z"));
        assert_eq!(iso(s.start), "2026-03-29T01:00:00Z");
        assert_eq!(iso(s.end), "2026-03-30T00:30:00Z");
        // the 2026-03-28 day ends where the 29th starts
        assert_eq!(iso(w.span(at("2026-03-29T00:59:59Z")).end), iso(s.start));
    }

    #[test]
    fn fixed_offset_days() {
        let w = Window::day().zone(tz("+05:30"));
        assert_eq!(
            span(w, "2026-06-01T18:29:59Z"),
            (
                "2026-05-31T18:30:00Z".into(),
                "2026-06-01T18:30:00Z".into(),
                "2026-06-01".into()
            )
        );
        assert_eq!(span(w, "2026-06-01T18:30:00Z").2, "2026-06-02");
        let w = Window::day().zone(tz("-08:00"));
        assert_eq!(span(w, "2026-06-01T07:59:59Z").2, "2026-05-31");
    }

    #[test]
    fn rolling_windows_use_buckets() {
        let w = Window::rolling(Duration::from_secs(3600), 60).unwrap();
        let s = w.span(UNIX_EPOCH + Duration::from_secs(7_230));
        assert_eq!(s.start, UNIX_EPOCH + Duration::from_secs(7_200));
        assert_eq!(s.end, UNIX_EPOCH + Duration::from_secs(7_200 + 3600));
        assert_eq!(s.label, "r120");
        assert_eq!(w.nominal_secs(), 3600);
        assert!(Window::rolling(Duration::from_secs(10), 0).is_err());
        assert!(Window::rolling(Duration::from_millis(10), 3).is_err());
    }

    #[test]
    fn invalid_anchors_are_errors() {
        assert!(Window::month().anchor_day(0).is_err());
        assert!(Window::month().anchor_day(32).is_err());
        assert!(Window::day().anchor_time(24, 0).is_err());
        assert!(Zone::parse("+25:00").is_err());
    }
}
