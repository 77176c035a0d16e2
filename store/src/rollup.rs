//! The aggregates behind the dashboards: what one person's charts and the clinician's panel
//! are drawn from, read by query, never by loading the series. What the pages make of them
//! (the rolling mean, nights, weeks, the triage flags) is the dashboards' view model, in the
//! gateway (`phr_gateway::dashboard::view`).
//!
//! - Daily step totals and nightly sleep sums are the daily summary's own
//!   ([`Store::daily_steps`], [`Store::daily_sleep`] in [`super::subjects`]): the same local
//!   days (the person's IANA zone, DST handled), the same SQL, the same numbers the API's
//!   `summary/daily` returns.
//! - Sleep episodes one by one ([`Store::sleep_episodes`]): bed and wake times, the
//!   main-sleep flag, stage minutes and the stages themselves (for the hypnogram), selected
//!   with the daily summary's query.
//! - Resting heart rate per local day ([`Store::daily_resting_heart_rate`]), defined as the
//!   **lowest 5-minute mean** of the day: the day's heart-rate readings are averaged per
//!   5-minute clock interval and the smallest of those means is the day's resting rate
//!   (one SQL query, `MIN` over `AVG` per interval). Sleep counts: the lowest stretch of the
//!   day is usually during the night, as with most wearables' resting heart rate.
//! - When the gateway last stored a record ([`Store::last_stored`]).
//!
//! # The 5-minute rollup
//! Minute-level data is 1,440 step records and as many heart-rate readings a day; summing
//! their JSON bodies for 90 days takes most of a second. So steps and heart rate are also
//! kept summed per person, type, 5-minute clock interval and **device** (`series_slots`:
//! records, total, measured time, latest `stored_at_ms`), maintained by triggers on
//! `records` in the transaction that changes the series (insert, delete, re-attribution),
//! like the change feed: no write path can forget it. A step record longer than an interval
//! (15-minute counts, an hour) is spread over the intervals it covers in proportion to its
//! time in each. A store made before this rollup is backfilled once when opened.
//!
//! Local midnights fall on whole quarter hours in every zone in use today, so a local day is
//! a whole number of intervals and is read from the rollup alone; a day a consent's window
//! cuts is read from its records inside the window, spread the same way ([`slots`],
//! [`super::sources::spread`]). The merged view then takes one device per interval
//! ([`super::sources`]). The 5-minute means of the resting heart rate are the chosen
//! devices' intervals.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use chrono_tz::Tz;
use rusqlite::{params, Connection, OptionalExtension};

use phr_schema::fhir::{total_sleep_minutes, StageMinutes};
use phr_schema::record::SleepStageKind;
use phr_schema::{Body, Record, RecordType};

use super::subjects::DayWindow;
use super::Store;
use crate::{Error, Result};

/// The width of the clock intervals whose mean heart rate is taken (resting heart rate).
pub const RESTING_INTERVAL_MINUTES: i64 = 5;

/// One sleep episode, in the person's time zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    /// The night it belongs to: the local day it ends in (the day one wakes up).
    pub night: NaiveDate,
    /// Bed time: the episode's start.
    pub start: DateTime<FixedOffset>,
    /// Wake time: the episode's end.
    pub end: DateTime<FixedOffset>,
    pub main: bool,
    /// The same sleep as an episode of another device that counts (the night's merge,
    /// [`super::sources::merge_night`]): shown as such, counted nowhere, never a nap.
    pub duplicate: bool,
    /// The device that measured it.
    pub device_id: String,
    /// Minutes asleep, as the daily summary counts them.
    pub asleep_minutes: Option<f64>,
    /// Minutes per stage; `None` when the episode has no stages.
    pub stages: Option<StageMinutes>,
    /// The stages in order (the hypnogram).
    pub spans: Vec<StageSpan>,
}

impl Episode {
    /// Minutes in bed: the whole episode.
    pub fn in_bed_minutes(&self) -> f64 {
        (self.end - self.start).num_milliseconds() as f64 / 60_000.0
    }
}

/// One stage of an episode, in the person's time zone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageSpan {
    pub stage: SleepStageKind,
    pub start: DateTime<FixedOffset>,
    pub end: DateTime<FixedOffset>,
}

/// The resting heart rate of one local day.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestingHeartRate {
    pub date: NaiveDate,
    /// The lowest mean of the day's 5-minute intervals, in beats per minute.
    pub bpm: f64,
    /// Heart-rate readings of the day.
    pub readings: u64,
}

// ----- the 5-minute rollup -----

/// The width of a rollup interval; intervals are `start_ms / INTERVAL_MS`.
pub const INTERVAL_MS: i64 = 5 * 60_000;

/// The most intervals one record spans (ingest's longest interval, 24 h, plus one for a
/// record not aligned to the clock).
const MAX_SPAN: i64 = 24 * 12 + 1;

/// The value of record `R` (`NEW` or `OLD`): its `step_count`, or its heart rate in bpm.
fn value(r: &str) -> String {
    format!(
        "CASE {r}.record_type WHEN 'step-count' THEN json_extract({r}.body, '$.body.step_count')
              ELSE json_extract({r}.body, '$.body.heart_rate.value') END"
    )
}

/// How many intervals after its first one record `R` reaches: steps are spread over the
/// intervals they were measured in; a heart-rate reading (and a step record inside one
/// interval) stays in the interval it starts in.
fn span(r: &str) -> String {
    format!(
        "CASE WHEN {r}.record_type = 'step-count' AND {r}.end_ms > {r}.start_ms
              THEN min((({r}.end_ms - 1) / 300000) - ({r}.start_ms / 300000), {MAX_SPAN})
              ELSE 0 END"
    )
}

/// The measured time of record `R` in interval `S`, in ms (0 for heart rate).
fn overlap(r: &str, s: &str) -> String {
    format!(
        "CASE WHEN {r}.record_type = 'step-count' AND {r}.end_ms > {r}.start_ms
              THEN min({r}.end_ms, ({s} + 1) * 300000) - max({r}.start_ms, {s} * 300000)
              ELSE 0 END"
    )
}

/// Record `R`'s share of its value in interval `S`: in proportion to its measured time there.
fn share(r: &str, s: &str) -> String {
    format!(
        "CASE WHEN ({span}) = 0 THEN ({value}) * 1.0
              ELSE ({value}) * 1.0 * ({overlap}) / ({r}.end_ms - {r}.start_ms) END",
        span = span(r),
        value = value(r),
        overlap = overlap(r, s),
    )
}

/// Adds record `R` to the rollup, one row per interval it reaches.
fn add(r: &str) -> String {
    let s = format!("({r}.start_ms / 300000 + o.k)");
    format!(
        "INSERT INTO series_slots
            (person_id, record_type, slot, device_id, pieces, records, total, covered_ms,
             last_stored_ms)
         SELECT {r}.person_id, {r}.record_type, {s}, {r}.device_id, 1, o.k = 0, {share},
                {overlap}, {r}.stored_at_ms
           FROM rollup_offsets o WHERE o.k <= {span}
         ON CONFLICT (person_id, record_type, slot, device_id) DO UPDATE
            SET pieces = pieces + 1, records = records + excluded.records,
                total = total + excluded.total, covered_ms = covered_ms + excluded.covered_ms,
                last_stored_ms = max(last_stored_ms, excluded.last_stored_ms);",
        share = share(r, &s),
        overlap = overlap(r, &s),
        span = span(r),
    )
}

/// Takes record `R` out of the rollup.
fn remove(r: &str) -> String {
    let range = format!(
        "person_id = {r}.person_id AND record_type = {r}.record_type AND device_id = {r}.device_id
         AND slot >= {r}.start_ms / 300000 AND slot <= {r}.start_ms / 300000 + {span}",
        span = span(r)
    );
    format!(
        "UPDATE series_slots
            SET pieces = pieces - 1, records = records - (slot = {r}.start_ms / 300000),
                total = total - ({share}), covered_ms = covered_ms - ({overlap})
          WHERE {range};
         DELETE FROM series_slots WHERE {range} AND pieces <= 0;",
        share = share(r, "slot"),
        overlap = overlap(r, "slot"),
    )
}

/// The rollup and the triggers that keep it: per person, type, 5-minute interval and
/// **device** (the merged view picks one device per interval, [`super::sources`]). The rollup
/// of schema 6 (`series_5min`, summed over devices) is dropped and rebuilt from the series.
pub(super) fn schema() -> String {
    format!(
        "DROP TRIGGER IF EXISTS series_5min_stored;
DROP TRIGGER IF EXISTS series_5min_erased;
DROP TRIGGER IF EXISTS series_5min_moved;
DROP TABLE IF EXISTS series_5min;
CREATE TABLE IF NOT EXISTS rollup_offsets (k INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS series_slots (
    person_id TEXT NOT NULL,
    record_type TEXT NOT NULL,
    slot INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    -- Records reaching into the interval (a row goes when none is left).
    pieces INTEGER NOT NULL,
    -- Records starting in it.
    records INTEGER NOT NULL,
    -- Their values' shares in it (steps spread by measured time; heart rates summed).
    total REAL NOT NULL,
    -- Their measured time in it, ms (steps).
    covered_ms INTEGER NOT NULL,
    -- The latest stored_at_ms of a record added; not lowered when records leave.
    last_stored_ms INTEGER NOT NULL,
    PRIMARY KEY (person_id, record_type, slot, device_id)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS series_slots_stored AFTER INSERT ON records
    WHEN NEW.record_type IN ('step-count', 'heart-rate') BEGIN
    {add_new}
END;
CREATE TRIGGER IF NOT EXISTS series_slots_erased AFTER DELETE ON records
    WHEN OLD.record_type IN ('step-count', 'heart-rate') BEGIN
    {remove_old}
END;
CREATE TRIGGER IF NOT EXISTS series_slots_moved AFTER UPDATE OF person_id ON records
    WHEN OLD.person_id <> NEW.person_id AND NEW.record_type IN ('step-count', 'heart-rate') BEGIN
    {remove_old}
    {add_new}
END;
",
        add_new = add("NEW"),
        remove_old = remove("OLD"),
    )
}

/// Fills the interval offsets the triggers join, and an empty rollup from the series (a
/// store made before it, or before it was kept per device); a no-op once both hold anything.
pub(super) fn backfill(conn: &Connection) -> Result<()> {
    let offsets: i64 = conn.query_row("SELECT count(*) FROM rollup_offsets", [], |r| r.get(0))?;
    if offsets != MAX_SPAN + 1 {
        conn.execute("DELETE FROM rollup_offsets", [])?;
        let mut insert = conn.prepare("INSERT INTO rollup_offsets (k) VALUES (?1)")?;
        for k in 0..=MAX_SPAN {
            insert.execute([k])?;
        }
    }
    let empty: bool =
        conn.query_row("SELECT NOT EXISTS (SELECT 1 FROM series_slots)", [], |r| {
            r.get(0)
        })?;
    if empty {
        let add = add("r").replace(
            "FROM rollup_offsets o WHERE",
            "FROM records r JOIN rollup_offsets o
              WHERE r.record_type IN ('step-count', 'heart-rate') AND",
        );
        conn.execute_batch(&add)?;
    }
    Ok(())
}

/// A measured-time range split for the rollup: the whole intervals `[first, end)` in it, if
/// any, and the parts at its ends that are not whole intervals (`[from_ms, to_ms)` each,
/// read from the records).
pub type Slots = (Option<(i64, i64)>, Vec<(i64, i64)>);

/// `[from_ms, to_ms)` as whole rollup intervals and the parts at its ends (see [`Slots`]).
pub fn slots(from_ms: i64, to_ms: i64) -> Slots {
    if to_ms <= from_ms {
        return (None, Vec::new());
    }
    // Before 1970 integer division rounds the other way: no rollup there.
    if from_ms < 0 || to_ms > i64::MAX - INTERVAL_MS {
        return (None, vec![(from_ms, to_ms)]);
    }
    let first = (from_ms + INTERVAL_MS - 1) / INTERVAL_MS;
    let end = to_ms / INTERVAL_MS;
    if first >= end {
        return (None, vec![(from_ms, to_ms)]);
    }
    let mut rest = Vec::new();
    if first * INTERVAL_MS > from_ms {
        rest.push((from_ms, first * INTERVAL_MS));
    }
    if end * INTERVAL_MS < to_ms {
        rest.push((end * INTERVAL_MS, to_ms));
    }
    (Some((first, end)), rest)
}

impl Store {
    /// The sleep episodes of `person_id` ending in each of `days` and starting inside
    /// `window` (the records [`Store::daily_sleep`] sums), one by one, with times in `tz`.
    pub fn sleep_episodes(
        &self,
        person_id: &str,
        days: &[DayWindow],
        window: (i64, i64),
        tz: Tz,
    ) -> Result<Vec<Episode>> {
        let local = |t: DateTime<FixedOffset>| t.with_timezone(&tz).fixed_offset();
        let mut out = Vec::new();
        for row in self.sleep_rows(person_id, days, window)? {
            let (i, body) = (row.day, &row.body);
            let record: Record = serde_json::from_str(body)
                .map_err(|_| Error::Invalid("a stored record does not parse"))?;
            let Body::SleepEpisode(e) = &record.body else {
                continue;
            };
            let w = days
                .get(i)
                .ok_or(Error::Invalid("a day index out of range"))?;
            out.push(Episode {
                night: w.day.date,
                start: local(e.effective_time_frame.start()),
                end: local(e.effective_time_frame.end()),
                main: e.is_main_sleep,
                duplicate: !row.counted,
                device_id: row.device_id.clone(),
                asleep_minutes: total_sleep_minutes(e),
                stages: StageMinutes::of(e),
                spans: e
                    .stages
                    .iter()
                    .map(|s| StageSpan {
                        stage: s.stage,
                        start: local(s.time_interval.start_date_time),
                        end: local(s.time_interval.end_date_time),
                    })
                    .collect(),
            });
        }
        Ok(out)
    }

    /// The resting heart rate of `person_id` on each of `days` that has heart-rate readings
    /// starting in it (the lowest 5-minute mean, see the module's documentation), in day
    /// order; and how many readings were used.
    pub fn daily_resting_heart_rate(
        &self,
        person_id: &str,
        days: &[DayWindow],
    ) -> Result<(Vec<RestingHeartRate>, u64)> {
        let mut per_day: BTreeMap<usize, (f64, i64)> = BTreeMap::new();
        for (i, day) in self.merged_days(person_id, RecordType::HeartRate, days)? {
            let lowest = day
                .slots
                .iter()
                .filter(|(_, _, n)| *n > 0)
                .map(|(_, total, n)| total / *n as f64)
                .min_by(f64::total_cmp);
            if let Some(bpm) = lowest {
                per_day.insert(i, (bpm, day.records));
            }
        }
        let mut n = 0;
        let mut out = Vec::with_capacity(per_day.len());
        for (i, (bpm, readings)) in per_day {
            let w = days
                .get(i)
                .ok_or(Error::Invalid("a day index out of range"))?;
            out.push(RestingHeartRate {
                date: w.day.date,
                bpm,
                readings: readings as u64,
            });
            n += readings as u64;
        }
        Ok((out, n))
    }

    /// When the gateway last stored a record of `person_id` of `record_type` measured from
    /// `[from_ms, to_ms)`. Steps and heart rate are read from the rollup (whose latest time
    /// is not lowered when records are erased or moved away).
    pub fn last_stored(
        &self,
        person_id: &str,
        record_type: RecordType,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Option<DateTime<Utc>>> {
        let (whole, rest) = match record_type {
            RecordType::StepCount | RecordType::HeartRate => slots(from_ms, to_ms),
            RecordType::SleepEpisode => (None, vec![(from_ms, to_ms)]),
        };
        let ms: Option<i64> = self.read(|conn| {
            let mut latest: Option<i64> = None;
            if let Some((a, b)) = whole {
                let v: Option<i64> = conn
                    .prepare_cached(
                        "SELECT MAX(last_stored_ms) FROM series_slots
                          WHERE person_id = ?1 AND record_type = ?2 AND slot >= ?3 AND slot < ?4",
                    )?
                    .query_row(params![person_id, record_type.as_str(), a, b], |r| r.get(0))?;
                latest = latest.max(v);
            }
            for (a, b) in rest {
                let v: Option<i64> = conn
                    .prepare_cached(
                        "SELECT MAX(stored_at_ms) FROM records
                          WHERE person_id = ?1 AND record_type = ?2
                            AND start_ms >= ?3 AND start_ms < ?4",
                    )?
                    .query_row(params![person_id, record_type.as_str(), a, b], |r| r.get(0))?;
                latest = latest.max(v);
            }
            Ok(latest)
        })?;
        Ok(ms.and_then(DateTime::from_timestamp_millis))
    }

    /// The name `person_id` was registered with, if they are.
    pub fn display_name(&self, person_id: &str) -> Result<Option<String>> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT display_name FROM people WHERE person_id = ?1")?
                .query_row([person_id], |r| r.get(0))
                .optional()?)
        })
    }
}

// ----- one person's view -----

/// A person with known data around the 2026 spring DST change in New York, shared by the
/// dashboard tests (aggregates here, pages in `crate::dashboard`).
#[cfg(any(test, feature = "fixture"))]
// Test data: a failure to build it is a failed test.
#[allow(clippy::unwrap_used)]
pub mod fixture {
    use chrono::{DateTime, FixedOffset, NaiveDate, TimeDelta, Utc};
    use phr_schema::record::{
        HeartRate, IntervalFrame, PointFrame, Provenance, SleepEpisode, SleepStage, SleepStageKind,
        StepCount, TimeInterval, UnitValue, BEATS_PER_MINUTE,
    };
    use phr_schema::{Body, Record, RecordType};
    use std::collections::BTreeMap;

    use crate::{GranteeKind, Store, Terms};

    pub const NIA: &str = "nia";
    pub const ANN: &str = "ann";
    pub const ZED: &str = "zed";
    pub const DOCTOR: &str = "dr-who";

    pub fn at(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    pub fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    /// The "now" of the tests: 2026-03-10, 14:00 in New York.
    pub fn now() -> DateTime<Utc> {
        "2026-03-10T18:00:00Z".parse().unwrap()
    }

    /// Half an hour of steps from `start` (the 23:30 ones end at midnight: a record across
    /// midnight would count towards both days, in proportion, see `sources`).
    fn steps(start: DateTime<FixedOffset>, count: i64) -> Record {
        let e = start + TimeDelta::minutes(30);
        Record::new(
            "band",
            "br",
            e,
            Provenance::sensed("test/1"),
            Body::StepCount(StepCount {
                effective_time_frame: IntervalFrame::new(start, e),
                step_count: count,
            }),
        )
    }

    /// An episode from `start` made of `stages` (kind, minutes), back to back.
    pub fn sleep(start: &str, stages: &[(SleepStageKind, i64)], main: bool) -> Record {
        let s = at(start);
        let mut t = s;
        let stages: Vec<SleepStage> = stages
            .iter()
            .map(|(kind, m)| {
                let from = t;
                t += TimeDelta::minutes(*m);
                SleepStage {
                    stage: *kind,
                    time_interval: TimeInterval {
                        start_date_time: from,
                        end_date_time: t,
                    },
                }
            })
            .collect();
        Record::new(
            "band",
            "br",
            t,
            Provenance::sensed("test/1"),
            Body::SleepEpisode(SleepEpisode {
                effective_time_frame: IntervalFrame::new(s, t),
                is_main_sleep: main,
                latency_to_sleep_onset: None,
                total_sleep_time: None,
                number_of_awakenings: None,
                sleep_maintenance_efficiency_percentage: None,
                stages,
            }),
        )
    }

    fn heart(t: &str, bpm: f64) -> Record {
        Record::new(
            "band",
            "br",
            at(t),
            Provenance::sensed("test/1"),
            Body::HeartRate(HeartRate {
                effective_time_frame: PointFrame { date_time: at(t) },
                heart_rate: UnitValue::new(bpm, BEATS_PER_MINUTE),
            }),
        )
    }

    use SleepStageKind::{Awake, Deep, Light, Rem};
    /// A night: 15 awake, 180 light, 60 deep, 45 REM: 285 min asleep, 300 in bed.
    pub const NIGHT: [(SleepStageKind, i64); 4] =
        [(Awake, 15), (Light, 180), (Deep, 60), (Rem, 45)];

    /// What Nia's steps add up to per local day.
    pub fn nia_steps() -> BTreeMap<NaiveDate, i64> {
        let mut m = BTreeMap::new();
        for d in day("2026-02-01")
            .iter_days()
            .take_while(|d| *d <= day("2026-03-02"))
        {
            m.insert(d, 10_000);
        }
        for d in [
            "2026-03-03",
            "2026-03-04",
            "2026-03-06",
            "2026-03-07",
            "2026-03-08",
            "2026-03-09",
        ] {
            m.insert(day(d), 5_000);
        }
        m.insert(day("2026-03-10"), 1_234);
        m
    }

    /// Nia (America/New_York): 10,000 steps a day in February, 5,000 a day in March (none on
    /// March 5th), 1,234 so far on the 10th; nights of 4 h 45 min asleep ending March 4th to
    /// 10th (one across the DST change of the 8th), a nap on the 9th; heart rate on the 8th
    /// and 9th. Ann: 8,000 steps every day. Both consent to the doctor: Nia to steps and
    /// heart rate from February 6th, Ann to steps. Zed consents to no one.
    pub fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("phr.sqlite")).unwrap();
        store.add_person(NIA, "Nia", "America/New_York").unwrap();
        store.add_person(ANN, "Ann", "America/New_York").unwrap();
        for p in [NIA, ANN] {
            store.grant_storage_consent(p, &RecordType::ALL).unwrap();
        }
        let mut nia = Vec::new();
        for d in day("2026-02-01")
            .iter_days()
            .take_while(|d| *d <= day("2026-03-02"))
        {
            nia.push(steps(at(&format!("{d}T08:00:00-05:00")), 6_000));
            nia.push(steps(at(&format!("{d}T23:30:00-05:00")), 4_000));
        }
        for d in ["2026-03-03", "2026-03-04", "2026-03-06", "2026-03-07"] {
            nia.push(steps(at(&format!("{d}T08:00:00-05:00")), 3_000));
            nia.push(steps(at(&format!("{d}T20:00:00-05:00")), 2_000));
        }
        // The 23-hour day: 00:30 EST and 23:30 EDT both count towards it.
        nia.push(steps(at("2026-03-08T00:30:00-05:00"), 3_000));
        nia.push(steps(at("2026-03-08T23:30:00-04:00"), 2_000));
        // 00:10 EDT on the 9th is the 9th (it would be the 8th in EST).
        nia.push(steps(at("2026-03-09T00:10:00-04:00"), 1_000));
        nia.push(steps(at("2026-03-09T12:00:00-04:00"), 4_000));
        nia.push(steps(at("2026-03-10T09:00:00-04:00"), 1_234));
        // Nights ending on the 4th to the 7th, from 23:55 the evening before.
        for d in ["03", "04", "05", "06"] {
            nia.push(sleep(&format!("2026-03-{d}T23:55:00-05:00"), &NIGHT, true));
        }
        // Across the change: 00:30 EST to 06:30 EDT is 300 minutes.
        nia.push(sleep("2026-03-08T00:30:00-05:00", &NIGHT, true));
        nia.push(sleep("2026-03-08T23:50:00-04:00", &NIGHT, true));
        nia.push(sleep("2026-03-09T14:00:00-04:00", &[(Light, 40)], false));
        nia.push(sleep("2026-03-09T23:40:00-04:00", &NIGHT, true));
        // Heart rate: on the 9th the 10:00 interval averages 62, 14:00 holds 58 alone.
        nia.push(heart("2026-03-09T10:00:00-04:00", 60.0));
        nia.push(heart("2026-03-09T10:01:00-04:00", 62.0));
        nia.push(heart("2026-03-09T10:02:00-04:00", 64.0));
        nia.push(heart("2026-03-09T14:00:00-04:00", 58.0));
        nia.push(heart("2026-03-08T01:58:00-05:00", 50.0));
        nia.push(heart("2026-03-08T03:01:00-04:00", 70.0));
        let report = store.import_records(NIA, &nia, Utc::now()).unwrap();
        assert_eq!(report.stored as usize, nia.len(), "{report:?}");
        let ann: Vec<Record> = day("2026-02-01")
            .iter_days()
            .take_while(|d| *d <= day("2026-03-10"))
            .map(|d| steps(at(&format!("{d}T09:00:00-05:00")), 8_000))
            .collect();
        store.import_records(ANN, &ann, Utc::now()).unwrap();
        let consent = |person: &str, types: Vec<RecordType>, from: Option<&str>| {
            store
                .grant_consent(
                    person,
                    Terms {
                        grantee: DOCTOR.into(),
                        grantee_kind: GranteeKind::Practitioner,
                        purpose: "care".into(),
                        data_types: types,
                        window_from: from.map(|f| at(f).to_utc()),
                        window_to: None,
                        valid_until: None,
                    },
                    person,
                    Utc::now(),
                )
                .unwrap();
        };
        consent(
            NIA,
            vec![RecordType::StepCount, RecordType::HeartRate],
            Some("2026-02-06T00:00:00-05:00"),
        );
        consent(ANN, vec![RecordType::StepCount], None);
        // Zed has data and consents to no one.
        store.add_person(ZED, "Zed", "Europe/Paris").unwrap();
        store.grant_storage_consent(ZED, &RecordType::ALL).unwrap();
        let zed = [steps(at("2026-03-09T09:00:00+01:00"), 100)];
        store.import_records(ZED, &zed, Utc::now()).unwrap();
        (dir, store)
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{self, day, ANN, NIA};
    use super::*;
    use crate::subjects::DailySummary;

    /// (person, type, interval, device, records starting there, total in micro-units,
    /// measured ms)
    type Rows = Vec<(String, String, i64, String, i64, i64, i64)>;

    /// The rollup as stored, and as the records say it should be (spread here, in Rust,
    /// independently of the triggers' SQL).
    fn rollup_and_records(store: &Store) -> (Rows, Rows) {
        let micro = |v: f64| (v * 1e6).round() as i64;
        store
            .read(|conn| {
                let mut stmt = conn.prepare(
                    "SELECT person_id, record_type, slot, device_id, records, total, covered_ms
                       FROM series_slots ORDER BY 1, 2, 3, 4",
                )?;
                let rollup = stmt
                    .query_map([], |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            micro(r.get(5)?),
                            r.get(6)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Rows>>()?;
                let mut stmt = conn.prepare(
                    "SELECT person_id, record_type, device_id, start_ms, end_ms,
                            CASE record_type WHEN 'step-count'
                                 THEN json_extract(body, '$.body.step_count')
                                 ELSE json_extract(body, '$.body.heart_rate.value') END
                       FROM records WHERE record_type IN ('step-count', 'heart-rate')",
                )?;
                type Key = (String, String, i64, String);
                let mut sums: BTreeMap<Key, (i64, f64, i64)> = BTreeMap::new();
                let records = stmt.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, f64>(5)?,
                    ))
                })?;
                for r in records {
                    let (person, kind, device, start, end, v) = r?;
                    let first = start / INTERVAL_MS;
                    let spread = kind == "step-count" && end > start;
                    let last = if spread {
                        (end - 1) / INTERVAL_MS
                    } else {
                        first
                    };
                    for k in first..=last {
                        let (share, covered) = if spread {
                            let o = end.min((k + 1) * INTERVAL_MS) - start.max(k * INTERVAL_MS);
                            if first == last {
                                (v, o)
                            } else {
                                (v * o as f64 / (end - start) as f64, o)
                            }
                        } else {
                            (v, 0)
                        };
                        let e = sums
                            .entry((person.clone(), kind.clone(), k, device.clone()))
                            .or_default();
                        e.0 += i64::from(k == first);
                        e.1 += share;
                        e.2 += covered;
                    }
                }
                let expected = sums
                    .into_iter()
                    .map(|((p, t, k, d), (n, total, covered))| {
                        (p, t, k, d, n, micro(total), covered)
                    })
                    .collect();
                Ok((rollup, expected))
            })
            .unwrap()
    }

    #[test]
    fn the_rollup_follows_inserts_moves_erasures_and_is_backfilled() {
        let (_dir, store) = fixture::store();
        let (rollup, records) = rollup_and_records(&store);
        assert!(rollup.len() > 100);
        assert_eq!(rollup, records);
        // A re-attribution (as corrections do) moves the sums with the records.
        store
            .write(|tx| {
                Ok(tx.execute(
                    "UPDATE records SET person_id = 'zed'
                      WHERE person_id = 'nia' AND start_ms < ?1",
                    [fixture::at("2026-03-09T10:01:30-04:00").timestamp_millis()],
                )?)
            })
            .unwrap();
        let (rollup, records) = rollup_and_records(&store);
        assert_eq!(rollup, records);
        store.erase_person(ANN, ANN, fixture::now()).unwrap();
        let (rollup, records) = rollup_and_records(&store);
        assert_eq!(rollup, records);
        assert!(!rollup.iter().any(|r| r.0 == ANN));
        // Emptied, it is rebuilt from the records when the store is opened.
        store
            .write(|tx| Ok(tx.execute("DELETE FROM series_slots", [])?))
            .unwrap();
        store.read(backfill).unwrap();
        let (rollup, records) = rollup_and_records(&store);
        assert_eq!(rollup, records);
    }

    #[test]
    fn windows_cutting_an_interval_read_its_ends_from_the_records() {
        assert_eq!(slots(0, 600_000), (Some((0, 2)), vec![]));
        assert_eq!(
            slots(150_000, 1_000_000),
            (Some((1, 3)), vec![(150_000, 300_000), (900_000, 1_000_000)])
        );
        assert_eq!(slots(10, 20), (None, vec![(10, 20)]));
        assert_eq!(slots(-600_000, 0), (None, vec![(-600_000, 0)]));
        assert_eq!(slots(5, 5), (None, vec![]));

        let (_dir, store) = fixture::store();
        let zone = crate::subjects::Zone::resolve(Some("America/New_York"));
        let days = zone.days(day("2026-02-06"), day("2026-03-10"));
        // From 08:02:30 on Feb 6th: its 08:00 hour of steps is out, 23:30 is in.
        let from = fixture::at("2026-02-06T08:02:30-05:00").timestamp_millis();
        let clipped: Vec<DayWindow> = days
            .iter()
            .filter_map(|d| d.clip((from, i64::MAX)))
            .collect();
        let mut s = DailySummary::new(NIA, &zone, day("2026-02-06"), day("2026-03-10"));
        let n = store.daily_steps(NIA, &clipped, &mut s).unwrap();
        let first = &s.days[0];
        assert_eq!((first.date, first.partial), (day("2026-02-06"), true));
        assert_eq!(first.steps.unwrap().total, 4_000);
        assert_eq!(s.days[1].steps.unwrap().total, 10_000);
        assert_eq!(n, 1 + 24 * 2 + 6 * 2 + 1);
        // Heart rate from 10:02 on March 9th: 10:02 alone (64) and 14:00 (58).
        let from = fixture::at("2026-03-09T10:02:00-04:00").timestamp_millis();
        let clipped: Vec<DayWindow> = days
            .iter()
            .filter_map(|d| d.clip((from, i64::MAX)))
            .collect();
        let (rest, n) = store.daily_resting_heart_rate(NIA, &clipped).unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            (rest[0].date, rest[0].bpm, rest[0].readings),
            (day("2026-03-09"), 58.0, 2)
        );
        let from = fixture::at("2026-03-09T10:00:30-04:00").timestamp_millis();
        let to = fixture::at("2026-03-09T10:02:30-04:00").timestamp_millis();
        let clipped: Vec<DayWindow> = days.iter().filter_map(|d| d.clip((from, to))).collect();
        let (rest, n) = store.daily_resting_heart_rate(NIA, &clipped).unwrap();
        assert_eq!((n, rest[0].bpm), (2, 63.0));
        assert!(store
            .last_stored(NIA, RecordType::HeartRate, from, to)
            .unwrap()
            .is_some());
        assert!(store
            .last_stored(NIA, RecordType::HeartRate, 0, from - 2 * 86_400_000)
            .unwrap()
            .is_none());
    }
}
