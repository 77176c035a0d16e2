//! Running daily step totals to interval deltas.
//!
//! Many devices report "steps so far today" rather than steps per interval, and reset the total
//! at their local midnight. Differencing such totals naively loses steps at midnight, after a
//! reboot, or when readings arrive out of order, and can count steps twice; peer products are
//! known to drop steps exactly there. [`DailyCounter`] is the per-device state that turns
//! consecutive observations into [`StepDelta`]s. It is pure (the caller passes the time of each
//! observation) and serialisable, so the bridge persists it per device next to its outbox.
//!
//! # Rules
//! Days are the device's local days in its UTC offset ([`DailyCounter::set_offset`] follows a
//! DST change or travel). Both the previous and the new observation are placed in the *current*
//! offset. An observation at exactly local midnight belongs to the day that just ended (a count
//! "since midnight" read at midnight covers no time of the new day).
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
//! overlap: each starts at or after the end of the previous one, so no step is counted twice.
//! If the configured offset is not the one the device uses for its day boundary, midnight
//! rollovers are misplaced (a late-evening rollover looks like a counter reset, which still
//! counts nothing twice, but its interval is wider than it should be).

use chrono::{DateTime, Duration, FixedOffset, NaiveDate, Utc};
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

/// Per-device state turning running daily totals into [`StepDelta`]s (rules in the module
/// docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyCounter {
    #[serde(with = "offset_seconds")]
    utc_offset: FixedOffset,
    last: Option<(DateTime<Utc>, u32)>,
}

impl DailyCounter {
    /// A counter for a device whose day starts at midnight in `utc_offset`.
    pub fn new(utc_offset: FixedOffset) -> Self {
        DailyCounter {
            utc_offset,
            last: None,
        }
    }

    /// The offset that defines the device's local day.
    pub fn utc_offset(&self) -> FixedOffset {
        self.utc_offset
    }

    /// The last accepted observation: its time and total.
    pub fn last(&self) -> Option<(DateTime<Utc>, u32)> {
        self.last
    }

    /// Moves the device's day boundary to midnight in `utc_offset` (DST change, travel). Takes
    /// effect from the next observation; the last observation is kept.
    pub fn set_offset(&mut self, utc_offset: FixedOffset) {
        self.utc_offset = utc_offset;
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
        (at - Duration::nanoseconds(1))
            .with_timezone(&self.utc_offset)
            .date_naive()
    }

    /// The start of the local day of `at`, as a UTC instant (strictly before `at`).
    fn midnight_before(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        let day = self.local_day(at);
        let local_midnight = day.and_time(chrono::NaiveTime::MIN);
        // A fixed offset maps every local time to exactly one instant.
        (local_midnight - self.utc_offset).and_utc()
    }
}

/// `FixedOffset` has no serde support in chrono: persisted as seconds east of UTC.
mod offset_seconds {
    use chrono::FixedOffset;
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        offset: &FixedOffset,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_i32(offset.local_minus_utc())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<FixedOffset, D::Error> {
        let seconds = i32::deserialize(deserializer)?;
        FixedOffset::east_opt(seconds).ok_or_else(|| D::Error::custom("UTC offset out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn offset(hours: i32) -> FixedOffset {
        FixedOffset::east_opt(hours * 3600).unwrap()
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
        c.set_offset(offset(-5));
        assert_eq!(c.utc_offset(), offset(-5));
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
        c.set_offset(offset(9));
        assert_eq!(
            c.observe(t("2026-01-02T00:30:00+09:00"), 20), // 15:30Z, 2 Jan in Tokyo
            delta("2026-01-02T00:00:00+09:00", "2026-01-02T00:30:00+09:00", 20)
        );
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut c = DailyCounter::new(FixedOffset::east_opt(5 * 3600 + 1800).unwrap());
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"utc_offset":19800,"last":null}"#);
        c.observe(t("2026-01-01T10:00:00Z"), 42);
        let json = serde_json::to_string(&c).unwrap();
        let back: DailyCounter = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        assert!(
            serde_json::from_str::<DailyCounter>(r#"{"utc_offset":90000,"last":null}"#).is_err()
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
    }
}
