//! Running daily step totals to interval deltas.
//!
//! Many devices report "steps so far today" rather than steps per interval, and reset the total
//! at their local midnight. Differencing such totals naively loses steps at midnight, after a
//! reboot, or when readings arrive out of order, and can count steps twice; peer products are
//! known to drop steps exactly there. [`DailyCounter`] is the per-device state that turns
//! consecutive observations into [`StepDelta`]s. It is pure (the caller passes the time of each
//! observation) and serialisable, so the bridge persists it per device next to its outbox.
//!
//! # Whose midnight
//! The device's local day, decided in this order:
//! 1. **The band's own report** ([`DailyCounter::set_band_offset`]: Bluetooth Current Time
//!    Service, Local Time Information 0x2A0F, time zone plus DST offset) when it disagrees with
//!    the configured zone at the time of the report: the band resets at *its* midnight, so its
//!    offset wins, as a fixed offset until it reports again.
//! 2. **The configured IANA zone** ([`DayZone::Iana`], `time_zone = "America/New_York"` per
//!    device or for the bridge), with its DST transitions: a 23-hour spring-forward day and a
//!    25-hour fall-back day each have exactly one midnight. A band report that agrees with the
//!    zone confirms it, and the zone's rules then carry it across later transitions.
//! 3. A fixed offset ([`DayZone::Fixed`]) only for configurations that still say
//!    `utc_offset`; it cannot follow DST (for half the year a band that does is an hour off).
//!
//! A local midnight that does not exist (a zone that springs forward at 00:00) starts the day
//! at the first local time that does; one that exists twice starts it at the first.
//!
//! # Rules
//! Both the previous and the new observation are placed by the rule in force now. An
//! observation at exactly local midnight belongs to the day that just ended (a count "since
//! midnight" read at midnight covers no time of the new day).
//!
//! | situation | outcome |
//! | --- | --- |
//! | first observation | [`Observation::First`]: a baseline, no delta (nothing says when the steps counted so far were taken relative to any interval the bridge already published) |
//! | `at` not after the last observation | [`Observation::Stale`]: ignored, state unchanged |
//! | same local day, total grew | delta `total − last` over `[last at, at)` |
//! | same local day, total unchanged | [`Observation::Unchanged`]; later deltas start at `at` |
//! | same local day, total fell | counter reset (reboot): the new total is the steps since the reset, delta `total` over `[last at, at)`; steps between the last observation and the reset are unknowable and not invented |
//! | later local day | the device reset at its midnight: delta `total` over `[local midnight, at)`; steps between the last observation and midnight are unknowable and not invented |
//!
//! A zero total on a new day, or after a reset, gives [`Observation::Unchanged`]. Deltas never
//! overlap: each starts at or after the end of the previous one. If the rule places midnight
//! elsewhere than the device does, steps are counted twice (the device's new day, taken for
//! a reset, then taken whole at the bridge's midnight) or a whole day's total is emitted
//! again: hence the zone with DST, and the band's report winning.
//!
//! Saved states of the previous format (`{"utc_offset": seconds, "last": ...}`) still load,
//! as a fixed offset; the daemon then applies the configured zone.

use chrono::{DateTime, Duration, FixedOffset, LocalResult, NaiveDate, Offset, TimeZone, Utc};
use chrono_tz::{OffsetComponents, Tz};
use serde::{Deserialize, Serialize};

/// Steps counted over `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepDelta {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub steps: u32,
}

/// What one observation did, for callers that log or count the non-delta cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// The first observation: a baseline only.
    First,
    /// New steps since the previous observation.
    Delta(StepDelta),
    /// No new steps (same total, or a zero total after a midnight or a reset).
    Unchanged,
    /// Not after the previous observation: ignored, state unchanged.
    Stale,
}

impl Observation {
    /// The delta, if this observation produced one.
    pub fn delta(self) -> Option<StepDelta> {
        match self {
            Observation::Delta(d) => Some(d),
            _ => None,
        }
    }
}

/// The zone a device's days follow: an IANA zone (with DST), or a fixed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DayZone {
    Iana(Tz),
    Fixed(FixedOffset),
}

/// A zone that is neither an IANA name nor an offset like `+09:00`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IANA time zone (like America/New_York) nor a UTC offset (like +09:00)")]
pub struct UnknownZone(pub String);

impl std::str::FromStr for DayZone {
    type Err = UnknownZone;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.starts_with(['+', '-']) {
            return s
                .parse::<FixedOffset>()
                .map(DayZone::Fixed)
                .map_err(|_| UnknownZone(s.to_owned()));
        }
        s.parse::<Tz>()
            .map(DayZone::Iana)
            .map_err(|_| UnknownZone(s.to_owned()))
    }
}

impl std::fmt::Display for DayZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DayZone::Iana(tz) => f.write_str(tz.name()),
            DayZone::Fixed(o) => write!(f, "{o}"),
        }
    }
}

impl Serialize for DayZone {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DayZone {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl DayZone {
    /// The offset from UTC in force at `at`.
    pub fn offset_at(&self, at: DateTime<Utc>) -> FixedOffset {
        match self {
            DayZone::Iana(tz) => tz.offset_from_utc_datetime(&at.naive_utc()).fix(),
            DayZone::Fixed(o) => *o,
        }
    }

    /// The standard (non-DST) offset at `at`.
    pub fn standard_offset_at(&self, at: DateTime<Utc>) -> FixedOffset {
        match self {
            DayZone::Iana(tz) => {
                let base = tz
                    .offset_from_utc_datetime(&at.naive_utc())
                    .base_utc_offset();
                i32::try_from(base.num_seconds())
                    .ok()
                    .and_then(FixedOffset::east_opt)
                    .unwrap_or_else(|| self.offset_at(at))
            }
            DayZone::Fixed(o) => *o,
        }
    }

    /// The first instant of local day `day`.
    fn start_of(&self, day: NaiveDate) -> DateTime<Utc> {
        let midnight = day.and_time(chrono::NaiveTime::MIN);
        match self {
            DayZone::Fixed(o) => (midnight - *o).and_utc(),
            DayZone::Iana(tz) => {
                // Midnight skipped by a transition: the day starts at the first local time
                // that exists (transitions are whole quarter hours, and shorter than a day).
                let mut local = midnight;
                for _ in 0..=96 {
                    match tz.from_local_datetime(&local) {
                        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                            return t.with_timezone(&Utc)
                        }
                        LocalResult::None => local += Duration::minutes(15),
                    }
                }
                // Unreachable for any real zone; the standard offset is the best guess left.
                let o = self.standard_offset_at((midnight - Duration::hours(12)).and_utc());
                (midnight - o).and_utc()
            }
        }
    }
}

/// What the band last said about its own offset, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BandOffset {
    /// Seconds east of UTC, DST included.
    pub offset_seconds: i32,
    pub reported_at: DateTime<Utc>,
}

/// Per-device state turning running daily totals into [`StepDelta`]s (rules in the module
/// docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SavedCounter")]
pub struct DailyCounter {
    zone: DayZone,
    band: Option<BandOffset>,
    last: Option<(DateTime<Utc>, u32)>,
}

/// Every saved format: the current one, and the previous one's fixed `utc_offset` (seconds).
#[derive(Deserialize)]
struct SavedCounter {
    #[serde(default)]
    zone: Option<DayZone>,
    #[serde(default)]
    utc_offset: Option<i32>,
    #[serde(default)]
    band: Option<BandOffset>,
    last: Option<(DateTime<Utc>, u32)>,
}

impl TryFrom<SavedCounter> for DailyCounter {
    type Error = String;

    fn try_from(s: SavedCounter) -> Result<Self, Self::Error> {
        let zone = match (s.zone, s.utc_offset) {
            (Some(z), _) => z,
            (None, Some(secs)) => {
                DayZone::Fixed(FixedOffset::east_opt(secs).ok_or("UTC offset out of range")?)
            }
            (None, None) => return Err("a saved counter needs a zone".into()),
        };
        if let Some(b) = s.band {
            FixedOffset::east_opt(b.offset_seconds).ok_or("band offset out of range")?;
        }
        Ok(DailyCounter {
            zone,
            band: s.band,
            last: s.last,
        })
    }
}

impl DailyCounter {
    /// A counter for a device whose day starts at midnight in `zone`.
    pub fn new(zone: DayZone) -> Self {
        DailyCounter {
            zone,
            band: None,
            last: None,
        }
    }

    /// The configured zone.
    pub fn zone(&self) -> DayZone {
        self.zone
    }

    /// What the band last reported about its offset.
    pub fn band_offset(&self) -> Option<BandOffset> {
        self.band
    }

    /// The last accepted observation: its time and total.
    pub fn last(&self) -> Option<(DateTime<Utc>, u32)> {
        self.last
    }

    /// Configures the device's zone (configuration changed, travel). Takes effect from the
    /// next observation; the last observation is kept.
    pub fn set_zone(&mut self, zone: DayZone) {
        self.zone = zone;
    }

    /// Records the band's own report of its offset (DST included) at `at`; see the module
    /// docs for when it wins over the configured zone.
    pub fn set_band_offset(&mut self, offset: FixedOffset, at: DateTime<Utc>) {
        self.band = Some(BandOffset {
            offset_seconds: offset.local_minus_utc(),
            reported_at: at,
        });
    }

    /// The band's offset when it overrides the zone: it disagreed with the zone when reported.
    fn band_rule(&self) -> Option<FixedOffset> {
        let b = self.band?;
        let offset = FixedOffset::east_opt(b.offset_seconds)?;
        (self.zone.offset_at(b.reported_at) != offset).then_some(offset)
    }

    /// The device's offset at `at`, by the rule in force now (module docs).
    pub fn offset_at(&self, at: DateTime<Utc>) -> FixedOffset {
        self.band_rule().unwrap_or_else(|| self.zone.offset_at(at))
    }

    /// Records that the device's total for its current day was `total_today` at `at`; returns
    /// the steps since the previous observation, if any. Stale observations return `None`
    /// too; use [`DailyCounter::observe_outcome`] to tell them apart.
    pub fn observe(&mut self, at: DateTime<Utc>, total_today: u32) -> Option<StepDelta> {
        self.observe_outcome(at, total_today).delta()
    }

    /// As [`DailyCounter::observe`], saying what happened.
    pub fn observe_outcome(&mut self, at: DateTime<Utc>, total_today: u32) -> Observation {
        let Some((last_at, last_total)) = self.last else {
            self.last = Some((at, total_today));
            return Observation::First;
        };
        if at <= last_at {
            return Observation::Stale;
        }
        self.last = Some((at, total_today));
        let (start, steps) = if self.local_day(at) > self.local_day(last_at) {
            // The device reset at its midnight; never start before the previous observation.
            (self.midnight_before(at).max(last_at), total_today)
        } else if total_today < last_total {
            (last_at, total_today)
        } else {
            (last_at, total_today - last_total)
        };
        if steps == 0 {
            return Observation::Unchanged;
        }
        Observation::Delta(StepDelta {
            start,
            end: at,
            steps,
        })
    }

    /// The local day an observation at `at` counts for: an observation at exactly midnight
    /// belongs to the day that just ended.
    fn local_day(&self, at: DateTime<Utc>) -> NaiveDate {
        let before = at - Duration::nanoseconds(1);
        before.with_timezone(&self.offset_at(before)).date_naive()
    }

    /// The start of the local day of `at`, as a UTC instant (strictly before `at`).
    fn midnight_before(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        let day = self.local_day(at);
        match self.band_rule() {
            Some(o) => DayZone::Fixed(o).start_of(day),
            None => self.zone.start_of(day),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn offset(hours: i32) -> DayZone {
        DayZone::Fixed(FixedOffset::east_opt(hours * 3600).unwrap())
    }

    fn delta(start: &str, end: &str, steps: u32) -> Option<StepDelta> {
        Some(StepDelta {
            start: t(start),
            end: t(end),
            steps,
        })
    }

    #[test]
    fn increments_become_deltas() {
        let mut c = DailyCounter::new(offset(9));
        assert_eq!(
            c.observe_outcome(t("2026-01-01T10:00:00+09:00"), 500),
            Observation::First
        );
        assert_eq!(
            c.observe(t("2026-01-01T10:15:00+09:00"), 620),
            delta(
                "2026-01-01T10:00:00+09:00",
                "2026-01-01T10:15:00+09:00",
                120
            )
        );
        // Unchanged: no delta, and the next delta starts at the unchanged observation.
        assert_eq!(
            c.observe_outcome(t("2026-01-01T10:30:00+09:00"), 620),
            Observation::Unchanged
        );
        assert_eq!(
            c.observe(t("2026-01-01T10:45:00+09:00"), 700),
            delta("2026-01-01T10:30:00+09:00", "2026-01-01T10:45:00+09:00", 80)
        );
        assert_eq!(c.last(), Some((t("2026-01-01T10:45:00+09:00"), 700)));
    }

    #[test]
    fn midnight_rollover_in_plus_nine() {
        let mut c = DailyCounter::new(offset(9));
        c.observe(t("2026-01-01T23:50:00+09:00"), 9_000);
        // 15:10Z on 1 January is already 2 January in Japan: the total restarted at JST
        // midnight (15:00Z); the steps between 23:50 and midnight are not invented.
        assert_eq!(
            c.observe(t("2026-01-02T00:10:00+09:00"), 40),
            delta("2026-01-02T00:00:00+09:00", "2026-01-02T00:10:00+09:00", 40)
        );
        assert_eq!(
            c.observe(t("2026-01-02T00:20:00+09:00"), 100),
            delta("2026-01-02T00:10:00+09:00", "2026-01-02T00:20:00+09:00", 60)
        );
        // Several days later: the interval still starts at that day's midnight.
        assert_eq!(
            c.observe(t("2026-01-05T08:00:00+09:00"), 2_000),
            delta(
                "2026-01-05T00:00:00+09:00",
                "2026-01-05T08:00:00+09:00",
                2_000
            )
        );
    }

    #[test]
    fn midnight_rollover_in_minus_five() {
        let mut c = DailyCounter::new(offset(-5));
        c.observe(t("2026-03-01T22:00:00-05:00"), 12_000);
        // 04:30Z on 2 March is still 1 March in New York: same day, a plain delta.
        assert_eq!(
            c.observe(t("2026-03-01T23:30:00-05:00"), 12_300),
            delta(
                "2026-03-01T22:00:00-05:00",
                "2026-03-01T23:30:00-05:00",
                300
            )
        );
        assert_eq!(
            c.observe(t("2026-03-02T00:45:00-05:00"), 150),
            delta(
                "2026-03-02T00:00:00-05:00",
                "2026-03-02T00:45:00-05:00",
                150
            )
        );
        // A zero total just after midnight: nothing to report, but it is the new baseline.
        let mut c = DailyCounter::new(offset(-5));
        c.observe(t("2026-03-01T23:00:00-05:00"), 5_000);
        assert_eq!(
            c.observe_outcome(t("2026-03-02T00:05:00-05:00"), 0),
            Observation::Unchanged
        );
        assert_eq!(
            c.observe(t("2026-03-02T00:20:00-05:00"), 30),
            delta("2026-03-02T00:05:00-05:00", "2026-03-02T00:20:00-05:00", 30)
        );
    }

    #[test]
    fn an_observation_at_midnight_belongs_to_the_day_that_ended() {
        let mut c = DailyCounter::new(offset(9));
        c.observe(t("2026-01-01T23:00:00+09:00"), 8_000);
        // The device has not reset yet at 00:00:00 exactly: still the old day.
        assert_eq!(
            c.observe(t("2026-01-02T00:00:00+09:00"), 8_100),
            delta(
                "2026-01-01T23:00:00+09:00",
                "2026-01-02T00:00:00+09:00",
                100
            )
        );
        assert_eq!(
            c.observe(t("2026-01-02T00:01:00+09:00"), 5),
            delta("2026-01-02T00:00:00+09:00", "2026-01-02T00:01:00+09:00", 5)
        );
    }

    #[test]
    fn a_lower_total_within_the_day_is_a_counter_reset() {
        let mut c = DailyCounter::new(offset(9));
        c.observe(t("2026-01-01T12:00:00+09:00"), 4_000);
        // Rebooted somewhere in between; 250 steps since the reboot.
        assert_eq!(
            c.observe(t("2026-01-01T12:30:00+09:00"), 250),
            delta(
                "2026-01-01T12:00:00+09:00",
                "2026-01-01T12:30:00+09:00",
                250
            )
        );
        assert_eq!(
            c.observe(t("2026-01-01T12:45:00+09:00"), 300),
            delta("2026-01-01T12:30:00+09:00", "2026-01-01T12:45:00+09:00", 50)
        );
        // A reset to zero reports nothing.
        assert_eq!(
            c.observe_outcome(t("2026-01-01T13:00:00+09:00"), 0),
            Observation::Unchanged
        );
    }

    #[test]
    fn out_of_order_observations_are_ignored_and_reported() {
        let mut c = DailyCounter::new(offset(9));
        c.observe(t("2026-01-01T10:00:00+09:00"), 100);
        c.observe(t("2026-01-01T10:10:00+09:00"), 200);
        let before = c.clone();
        for at in ["2026-01-01T10:10:00+09:00", "2026-01-01T10:05:00+09:00"] {
            assert_eq!(c.observe_outcome(t(at), 150), Observation::Stale);
            assert_eq!(c.observe(t(at), 150), None);
        }
        assert_eq!(c, before);
        assert_eq!(
            c.observe(t("2026-01-01T10:20:00+09:00"), 260),
            delta("2026-01-01T10:10:00+09:00", "2026-01-01T10:20:00+09:00", 60)
        );
    }

    #[test]
    fn offset_changes_move_the_day_boundary() {
        // Flying Tokyo -> New York: last seen 20:00 JST on 1 January (11:00Z).
        let mut c = DailyCounter::new(offset(9));
        c.observe(t("2026-01-01T20:00:00+09:00"), 10_000);
        c.set_zone(offset(-5));
        assert_eq!(c.zone(), offset(-5));
        // 23:00Z = 18:00 New York on 1 January: the same local day in the new offset, so the
        // total is differenced, not taken whole (no double count if the device did not reset).
        assert_eq!(
            c.observe(t("2026-01-01T18:00:00-05:00"), 10_400),
            delta(
                "2026-01-01T20:00:00+09:00",
                "2026-01-01T18:00:00-05:00",
                400
            )
        );
        // Midnight is now New York midnight.
        assert_eq!(
            c.observe(t("2026-01-02T01:00:00-05:00"), 70),
            delta("2026-01-02T00:00:00-05:00", "2026-01-02T01:00:00-05:00", 70)
        );

        // Flying east: 23:00 in Tokyo when last seen, so the next Tokyo day starts at 15:00Z
        // and the device's total restarted there.
        let mut c = DailyCounter::new(offset(-5));
        c.observe(t("2026-01-01T09:00:00-05:00"), 3_000); // 14:00Z
        c.set_zone(offset(9));
        assert_eq!(
            c.observe(t("2026-01-02T00:30:00+09:00"), 20), // 15:30Z, 2 Jan in Tokyo
            delta("2026-01-02T00:00:00+09:00", "2026-01-02T00:30:00+09:00", 20)
        );
    }

    #[test]
    fn state_round_trips_through_json_and_old_states_load() {
        let mut c = DailyCounter::new("Asia/Kolkata".parse().unwrap());
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"zone":"Asia/Kolkata","band":null,"last":null}"#);
        c.observe(t("2026-01-01T10:00:00Z"), 42);
        c.set_band_offset(
            FixedOffset::east_opt(19_800).unwrap(),
            t("2026-01-01T10:00:00Z"),
        );
        let json = serde_json::to_string(&c).unwrap();
        let back: DailyCounter = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        // The previous format: a fixed offset in seconds.
        let old: DailyCounter =
            serde_json::from_str(r#"{"utc_offset":19800,"last":["2026-01-01T10:00:00Z",42]}"#)
                .unwrap();
        assert_eq!(old.zone(), "+05:30".parse().unwrap());
        assert_eq!(old.last(), Some((t("2026-01-01T10:00:00Z"), 42)));
        for bad in [
            r#"{"utc_offset":90000,"last":null}"#,
            r#"{"zone":"Mars/Olympus_Mons","last":null}"#,
            r#"{"last":null}"#,
        ] {
            assert!(serde_json::from_str::<DailyCounter>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn zones_parse_from_names_and_offsets() {
        assert_eq!(
            "America/New_York".parse::<DayZone>().unwrap().to_string(),
            "America/New_York"
        );
        assert_eq!("-05:00".parse::<DayZone>().unwrap(), offset(-5));
        assert_eq!("+09:00".parse::<DayZone>().unwrap().to_string(), "+09:00");
        for bad in ["JST", "+25:00", "", "America/Nowhere"] {
            assert!(bad.parse::<DayZone>().is_err(), "{bad}");
        }
    }

    // ---- DST (issue #13, problem 5) ----
    //
    // Oracles pinned from the published transition dates, not computed by the code under
    // test: America/New_York 2026 springs forward on Sunday 8 March (02:00 EST -> 03:00 EDT)
    // and falls back on Sunday 1 November (02:00 EDT -> 01:00 EST); Europe/Berlin (EU rule)
    // on Sunday 29 March (02:00 CET -> 03:00 CEST) and Sunday 25 October (03:00 CEST ->
    // 02:00 CET). Each list is the band's local midnights, in UTC, around one transition.

    /// New York, spring: 8 March has 23 hours.
    const NY_SPRING: [&str; 3] = [
        "2026-03-08T05:00:00Z",
        "2026-03-09T04:00:00Z",
        "2026-03-10T04:00:00Z",
    ];
    /// New York, autumn: 1 November has 25 hours.
    const NY_FALL: [&str; 3] = [
        "2026-11-01T04:00:00Z",
        "2026-11-02T05:00:00Z",
        "2026-11-03T05:00:00Z",
    ];
    /// Berlin, spring: 29 March has 23 hours.
    const BERLIN_SPRING: [&str; 3] = [
        "2026-03-28T23:00:00Z",
        "2026-03-29T22:00:00Z",
        "2026-03-30T22:00:00Z",
    ];
    /// Berlin, autumn: 25 October has 25 hours.
    const BERLIN_FALL: [&str; 3] = [
        "2026-10-24T22:00:00Z",
        "2026-10-25T23:00:00Z",
        "2026-10-26T23:00:00Z",
    ];

    /// A band that takes `steps[i]` steps at `start + i` minutes (counted at the end of the
    /// minute) and resets its total at each of `midnights` (an observation exactly at a
    /// midnight still reads the ending day's total). Returns its total at `at`.
    struct Band {
        start: DateTime<Utc>,
        /// `prefix[i]`: steps of the first `i` minutes.
        prefix: Vec<u64>,
        midnights: Vec<DateTime<Utc>>,
    }

    impl Band {
        /// Steps of the minutes that ended at or before `at`.
        fn new(start: DateTime<Utc>, steps: &[u32], midnights: Vec<DateTime<Utc>>) -> Self {
            let mut prefix = vec![0u64];
            for s in steps {
                prefix.push(prefix[prefix.len() - 1] + u64::from(*s));
            }
            Band {
                start,
                prefix,
                midnights,
            }
        }

        fn cumulative(&self, at: DateTime<Utc>) -> u64 {
            let whole = (at - self.start)
                .num_minutes()
                .clamp(0, self.prefix.len() as i64 - 1);
            self.prefix[whole as usize]
        }

        fn total_at(&self, at: DateTime<Utc>) -> u32 {
            let since = self.midnights.iter().copied().filter(|m| *m < at).max();
            let before = since.map_or(0, |m| self.cumulative(m));
            u32::try_from(self.cumulative(at) - before).unwrap()
        }

        /// Steps taken in `(from, to]`.
        fn taken(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
            self.cumulative(to) - self.cumulative(from)
        }
    }

    /// Feeds the band's totals at `times` to `c`; checks deltas never overlap; returns them.
    fn run(c: &mut DailyCounter, band: &Band, times: &[DateTime<Utc>]) -> Vec<StepDelta> {
        let mut out: Vec<StepDelta> = Vec::new();
        for &at in times {
            if let Some(d) = c.observe(at, band.total_at(at)) {
                assert!(d.start < d.end);
                if let Some(prev) = out.last() {
                    assert!(d.start >= prev.end, "overlap: {d:?} after {prev:?}");
                }
                out.push(d);
            }
        }
        out
    }

    /// Every 10 minutes across the three days around a transition, the midnights included
    /// (the band notifies its final total there): every step after the first observation
    /// is counted exactly once, and each day's steps land in that day.
    fn every_step_once_across(zone: &str, midnights: [&str; 3]) {
        let midnights: Vec<_> = midnights.iter().map(|m| t(m)).collect();
        let start = midnights[0] - Duration::hours(2);
        let end = midnights[2] + Duration::hours(2);
        let minutes = (end - start).num_minutes();
        // A steady 7 steps a minute, more in the hour after each midnight (night owls).
        let steps: Vec<u32> = (0..minutes)
            .map(|i| {
                let at = start + Duration::minutes(i);
                if midnights
                    .iter()
                    .any(|m| at >= *m && at < *m + Duration::hours(1))
                {
                    11
                } else {
                    7
                }
            })
            .collect();
        let band = Band::new(start, &steps, midnights.clone());
        let times: Vec<_> = (0..=minutes / 10)
            .map(|i| start + Duration::minutes(10 * i))
            .collect();
        let mut c = DailyCounter::new(zone.parse().unwrap());
        let deltas = run(&mut c, &band, &times);
        let counted: u64 = deltas.iter().map(|d| u64::from(d.steps)).sum();
        assert_eq!(
            counted,
            band.taken(times[0], *times.last().unwrap()),
            "{zone}"
        );
        // No day's total emitted twice: each band day's deltas add up to its steps.
        for w in midnights.windows(2) {
            let in_day: u64 = deltas
                .iter()
                .filter(|d| d.start >= w[0] && d.end <= w[1])
                .map(|d| u64::from(d.steps))
                .sum();
            assert_eq!(in_day, band.taken(w[0], w[1]), "{zone} day from {}", w[0]);
        }
        assert!(
            deltas
                .iter()
                .all(|d| !midnights.iter().any(|m| d.start < *m && d.end > *m)),
            "no delta spans a band midnight"
        );
    }

    #[test]
    fn spring_forward_23_hour_day_in_new_york() {
        every_step_once_across("America/New_York", NY_SPRING);
    }

    #[test]
    fn fall_back_25_hour_day_in_new_york() {
        every_step_once_across("America/New_York", NY_FALL);
    }

    #[test]
    fn spring_forward_23_hour_day_in_berlin() {
        every_step_once_across("Europe/Berlin", BERLIN_SPRING);
    }

    #[test]
    fn fall_back_25_hour_day_in_berlin() {
        every_step_once_across("Europe/Berlin", BERLIN_FALL);
    }

    /// The worked case of the issue: the bridge was configured `-05:00`; in July the band
    /// resets at 00:00 EDT (04:00Z). The old fixed offset took the reset for a reboot, then
    /// at 05:00Z took the whole new-day total again: 300 of 1200 steps counted twice.
    fn worked_case(c: &mut DailyCounter) -> (u64, u64) {
        let first = t("2026-07-02T02:00:00Z");
        let reset = t("2026-07-02T04:00:00Z");
        let band = Band::new(first - Duration::hours(20), &[5; 26 * 60], vec![reset]);
        let times: Vec<_> = (0..=24)
            .map(|i| first + Duration::minutes(10 * i))
            .collect();
        let deltas = run(c, &band, &times);
        let counted = deltas.iter().map(|d| u64::from(d.steps)).sum();
        (counted, band.taken(times[0], times[24]))
    }

    #[test]
    fn worked_case_with_the_zone_configured() {
        let (counted, taken) =
            worked_case(&mut DailyCounter::new("America/New_York".parse().unwrap()));
        assert_eq!(taken, 1_200);
        assert_eq!(counted, taken);
    }

    #[test]
    fn worked_case_with_minus_five_configured_and_the_band_reporting_edt() {
        let mut c = DailyCounter::new(offset(-5));
        // Local Time Information read at connection: -05:00 standard, +1 h DST.
        c.set_band_offset(
            FixedOffset::west_opt(4 * 3600).unwrap(),
            t("2026-07-01T12:00:00Z"),
        );
        assert_eq!(
            c.offset_at(t("2026-07-02T04:00:00Z")),
            FixedOffset::west_opt(4 * 3600).unwrap()
        );
        let (counted, taken) = worked_case(&mut c);
        assert_eq!(
            counted, taken,
            "the band's report wins over the configured offset"
        );
    }

    /// The other direction: configured -04:00 in January while the band is on EST. At 23:30
    /// EST the bridge believed a new day had begun and took the day's whole total again.
    #[test]
    fn a_whole_day_is_not_emitted_twice_in_winter() {
        let mut c = DailyCounter::new("America/New_York".parse().unwrap());
        c.observe(t("2026-01-14T23:00:00-05:00"), 9_000);
        assert_eq!(
            c.observe(t("2026-01-14T23:30:00-05:00"), 9_040),
            delta("2026-01-14T23:00:00-05:00", "2026-01-14T23:30:00-05:00", 40)
        );
        assert_eq!(
            c.observe(t("2026-01-15T00:30:00-05:00"), 25),
            delta("2026-01-15T00:00:00-05:00", "2026-01-15T00:30:00-05:00", 25)
        );
    }

    #[test]
    fn a_band_that_agrees_with_the_zone_leaves_the_zone_in_charge_across_transitions() {
        let mut c = DailyCounter::new("America/New_York".parse().unwrap());
        // Reported EDT in October (agrees); after the fall-back the zone's EST applies.
        c.set_band_offset(
            FixedOffset::west_opt(4 * 3600).unwrap(),
            t("2026-10-20T12:00:00Z"),
        );
        assert_eq!(
            c.offset_at(t("2026-11-05T12:00:00Z")),
            FixedOffset::west_opt(5 * 3600).unwrap()
        );
        // A band on another zone (it says +09:00) wins wherever the zone is.
        c.set_band_offset(
            FixedOffset::east_opt(9 * 3600).unwrap(),
            t("2026-11-05T12:00:00Z"),
        );
        assert_eq!(
            c.offset_at(t("2026-07-01T12:00:00Z")),
            FixedOffset::east_opt(9 * 3600).unwrap()
        );
    }

    #[test]
    fn a_midnight_skipped_by_a_transition_starts_the_day_at_the_first_real_time() {
        // America/Santiago sprang forward at 24:00 on 2 September 2023 (no 3 September
        // 00:00-00:59): the day began at 01:00 -03:00 = 04:00Z.
        let zone: DayZone = "America/Santiago".parse().unwrap();
        assert_eq!(
            zone.start_of(NaiveDate::from_ymd_opt(2023, 9, 3).unwrap()),
            t("2023-09-03T04:00:00Z")
        );
    }

    /// Times within one JST day (2026-01-01), as sorted unique offsets in seconds.
    fn one_day_series() -> impl Strategy<Value = Vec<(u32, u32)>> {
        prop::collection::btree_map(0u32..86_400, 0u32..5_000, 1..60).prop_map(|m| {
            let mut total = 0;
            m.into_iter()
                .map(|(second, increment)| {
                    total += increment;
                    (second, total)
                })
                .collect()
        })
    }

    fn jst_day_start() -> DateTime<Utc> {
        t("2026-01-01T00:00:00+09:00")
    }

    /// Random minutes of steps and random observation times over the two band days around
    /// one of the four transitions (from two hours before the first midnight to before the
    /// band's fourth), plus the band's final total at each of its midnights.
    fn dst_case() -> impl Strategy<Value = (usize, Vec<u32>, Vec<i64>)> {
        (0usize..4).prop_flat_map(|which| {
            let minutes = 52 * 60;
            (
                Just(which),
                prop::collection::vec(prop_oneof![3 => Just(0u32), 2 => 1u32..200], minutes),
                prop::collection::btree_set(0i64..minutes as i64, 1..200)
                    .prop_map(|s| s.into_iter().collect::<Vec<_>>()),
            )
        })
    }

    proptest! {
        #[test]
        fn within_one_day_the_deltas_sum_to_the_growth(series in one_day_series()) {
            let mut c = DailyCounter::new(offset(9));
            let day = jst_day_start();
            let mut sum = 0u64;
            let mut previous_end = None;
            for &(second, total) in &series {
                // Strictly inside the day: second 0 would be midnight, the previous day.
                let at = day + Duration::seconds(i64::from(second) + 1);
                if let Some(d) = c.observe(at, total) {
                    prop_assert!(d.start < d.end);
                    prop_assert!(d.steps > 0);
                    if let Some(end) = previous_end {
                        prop_assert!(d.start >= end);
                    }
                    previous_end = Some(d.end);
                    sum += u64::from(d.steps);
                }
            }
            let first = series.first().unwrap().1;
            let last = series.last().unwrap().1;
            prop_assert_eq!(sum, u64::from(last - first));
        }

        #[test]
        fn arbitrary_sequences_never_overlap_or_exceed_the_totals(
            observations in prop::collection::vec((0i64..400_000, 0u32..20_000), 1..80),
            offset_hours in -12i32..=14,
        ) {
            let mut c = DailyCounter::new(offset(offset_hours));
            let base = jst_day_start();
            let mut accepted: Option<DateTime<Utc>> = None;
            let mut previous_end: Option<DateTime<Utc>> = None;
            for &(second, total) in &observations {
                let at = base + Duration::seconds(second);
                let outcome = c.observe_outcome(at, total);
                if accepted.is_some_and(|last| at <= last) {
                    prop_assert_eq!(outcome, Observation::Stale);
                    continue;
                }
                accepted = Some(at);
                if let Observation::Delta(d) = outcome {
                    prop_assert!(d.start < d.end);
                    prop_assert_eq!(d.end, at);
                    prop_assert!(d.steps > 0 && d.steps <= total);
                    if let Some(end) = previous_end {
                        prop_assert!(d.start >= end, "overlap: {:?} before {:?}", d.start, end);
                    }
                    previous_end = Some(d.end);
                }
            }
        }

        #[test]
        fn across_a_dst_boundary_deltas_never_overlap_and_sum_to_the_counted_steps(
            (which, steps, minutes) in dst_case()
        ) {
            let (zone, midnights) = [
                ("America/New_York", NY_SPRING),
                ("America/New_York", NY_FALL),
                ("Europe/Berlin", BERLIN_SPRING),
                ("Europe/Berlin", BERLIN_FALL),
            ][which];
            let midnights: Vec<_> = midnights.iter().map(|m| t(m)).collect();
            let start = midnights[0] - Duration::hours(2);
            let band = Band::new(start, &steps, midnights.clone());
            let mut times: Vec<_> = minutes.iter().map(|m| start + Duration::minutes(*m)).collect();
            let first = times[0];
            times.extend(midnights.iter().copied().filter(|m| *m > first));
            times.sort();
            times.dedup();
            let mut c = DailyCounter::new(zone.parse().unwrap());
            let mut counted = 0u64;
            let mut previous: Option<StepDelta> = None;
            for &at in &times {
                if let Some(d) = c.observe(at, band.total_at(at)) {
                    prop_assert!(d.start < d.end);
                    if let Some(p) = previous {
                        prop_assert!(d.start >= p.end, "overlap: {:?} after {:?}", d, p);
                    }
                    prop_assert!(!midnights.iter().any(|m| d.start < *m && d.end > *m));
                    previous = Some(d);
                    counted += u64::from(d.steps);
                }
            }
            prop_assert_eq!(counted, band.taken(times[0], *times.last().unwrap()));
        }
    }
}
