//! What other parties see of the people who consent to them: who they are
//! ([`Store::subjects`], `GET /api/v1/subjects`) and daily totals per local day
//! ([`Store::daily_steps`], [`Store::daily_sleep`], for `GET /api/v1/subjects/{id}/summary/daily`
//! through `phr_gateway::access::read_daily_summary`).
//!
//! # Local days
//! A day is the person's calendar day in their registered IANA time zone (`people.time_zone`),
//! from local midnight to the next local midnight, so it lasts 23 or 25 hours across a DST
//! change ([`Zone::day`]). Where midnight itself does not exist (a zone that springs forward
//! at 00:00) the day starts at the first local minute that does; where it exists twice, at the
//! first. A name the time zone database does not know falls back to UTC, and the summary says
//! so ([`TimeZoneUsed::fallback`]).
//!
//! # Which day a record counts towards
//! - Steps: the day they were measured in. A record spanning midnight counts towards both
//!   days in proportion to its time in each (the rollup spreads records over its 5-minute
//!   intervals, [`super::rollup`]).
//! - Sleep: the day an episode *ends* in, the day one wakes up: Monday night's sleep, woken
//!   from on Tuesday, is Tuesday's.
//!
//! Steps are read per device and 5-minute interval from the rollup (`series_slots`, kept by
//! triggers on the series, see [`super::rollup`]), the day boundaries going in as one JSON
//! array; a day a consent's window cuts is read from its records inside the window. Then
//! one device's data counts per interval ([`super::sources`]): a person wearing two bands
//! walks each step once. Sleep episodes are selected per day with an index range scan and
//! summed here with the FHIR mapping's own rules (total sleep time, stage minutes), each
//! night's duplicates (the same sleep seen by a second device) left out. Raw records, their
//! reads and exports keep every device's records.

use chrono::{DateTime, FixedOffset, LocalResult, NaiveDate, NaiveTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use rusqlite::params;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use phr_schema::fhir::{total_sleep_minutes, StageMinutes};
use phr_schema::record::SleepEpisode;
use phr_schema::{Body, Limits, Record, RecordType};

use super::{consent, ConsentStatus, GranteeKind, Store};
use crate::{Error, Result};

/// A person who consents to the caller, with each consent in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Subject {
    pub person_id: String,
    /// Consents in force now, oldest first.
    pub consents: Vec<SubjectConsent>,
}

/// One consent in force, as the grantee needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SubjectConsent {
    #[schema(value_type = String, format = "uuid")]
    pub consent_id: Uuid,
    /// `step-count`, `sleep-episode`, `heart-rate`.
    #[schema(value_type = Vec<String>, example = json!(["step-count", "sleep-episode"]))]
    pub data_types: Vec<RecordType>,
    pub window: ConsentWindow,
    /// When the consent lapses by itself; `null` until withdrawn.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub valid_until: Option<DateTime<Utc>>,
    pub purpose: String,
}

/// The measured-time window a consent covers, `[from, to)`; `null` is open on that side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ConsentWindow {
    #[schema(value_type = Option<String>, format = DateTime)]
    pub from: Option<DateTime<Utc>>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub to: Option<DateTime<Utc>>,
}

impl Store {
    /// The people with at least one consent to `grantee` (as `kind`) in force at `now`, by
    /// person id, each with those consents. Withdrawn and expired consents are left out, so
    /// a person whose last one ended is not listed.
    pub fn subjects(
        &self,
        grantee: &str,
        kind: GranteeKind,
        now: DateTime<Utc>,
    ) -> Result<Vec<Subject>> {
        let consents = self.read(|conn| consent::of_grantee(conn, grantee, kind, now))?;
        let mut people: std::collections::BTreeMap<String, Vec<SubjectConsent>> =
            std::collections::BTreeMap::new();
        for c in consents
            .into_iter()
            .filter(|c| c.status == ConsentStatus::Granted)
        {
            people.entry(c.person_id).or_default().push(SubjectConsent {
                consent_id: c.consent_id,
                data_types: c.terms.data_types,
                window: ConsentWindow {
                    from: c.terms.window_from,
                    to: c.terms.window_to,
                },
                valid_until: c.terms.valid_until,
                purpose: c.terms.purpose,
            });
        }
        Ok(people
            .into_iter()
            .map(|(person_id, consents)| Subject {
                person_id,
                consents,
            })
            .collect())
    }
}

// ----- local days -----

/// The time zone a person's days are counted in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    pub tz: Tz,
    /// The name registered for the person, if any.
    pub registered: Option<String>,
    /// Whether the registered name was unknown (or missing) and UTC is used instead.
    pub fallback: bool,
}

impl Zone {
    /// The zone named `name`, or UTC (with `fallback` set) when the name is missing or not in
    /// the time zone database.
    pub fn resolve(name: Option<&str>) -> Self {
        match name.map(|n| n.trim().parse::<Tz>()) {
            Some(Ok(tz)) => Self {
                tz,
                registered: name.map(str::to_owned),
                fallback: false,
            },
            _ => Self {
                tz: Tz::UTC,
                registered: name.map(str::to_owned),
                fallback: true,
            },
        }
    }

    /// The local day `date`: from its first local minute to the next day's.
    pub fn day(&self, date: NaiveDate) -> Option<LocalDay> {
        let start = day_start(self.tz, date)?;
        let end = day_start(self.tz, date.succ_opt()?)?;
        Some(LocalDay {
            date,
            start: start.with_timezone(&self.tz).fixed_offset(),
            end: end.with_timezone(&self.tz).fixed_offset(),
            start_ms: start.timestamp_millis(),
            end_ms: end.timestamp_millis(),
        })
    }

    /// The local days `from..=to`, in order (empty when `to < from`).
    pub fn days(&self, from: NaiveDate, to: NaiveDate) -> Vec<LocalDay> {
        from.iter_days()
            .take_while(|d| *d <= to)
            .map_while(|d| self.day(d))
            .collect()
    }
}

/// The first instant of local day `date` in `tz`, as UTC.
fn day_start(tz: Tz, date: NaiveDate) -> Option<DateTime<Utc>> {
    let midnight = date.and_time(NaiveTime::MIN);
    // Midnight may fall in a gap (clocks jump from 23:59 to 01:00): the day then starts at
    // the first minute that exists. A day a zone skipped entirely ends up zero hours long.
    (0..=24 * 60).find_map(
        |m| match tz.from_local_datetime(&(midnight + TimeDelta::minutes(m))) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(earliest, _) => Some(earliest.with_timezone(&Utc)),
            LocalResult::None => None,
        },
    )
}

/// One local calendar day and its bounds `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDay {
    pub date: NaiveDate,
    /// Local midnight, with the offset in force then.
    pub start: DateTime<FixedOffset>,
    pub end: DateTime<FixedOffset>,
    pub start_ms: i64,
    pub end_ms: i64,
}

impl LocalDay {
    /// How long the day is (23, 24 or 25 hours, mostly).
    pub fn length(&self) -> TimeDelta {
        TimeDelta::milliseconds(self.end_ms - self.start_ms)
    }

    /// The part of this day inside the measured-time window `[from, to)`; `None` if nothing.
    pub fn clip(&self, (from, to): (i64, i64)) -> Option<DayWindow> {
        let (from_ms, to_ms) = (self.start_ms.max(from), self.end_ms.min(to));
        (from_ms < to_ms).then(|| DayWindow {
            day: self.clone(),
            from_ms,
            to_ms,
            partial: from_ms != self.start_ms || to_ms != self.end_ms,
        })
    }
}

/// The part of a local day that may be read: `[from_ms, to_ms)`, `partial` when a consent's
/// window cuts the day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayWindow {
    pub day: LocalDay,
    pub from_ms: i64,
    pub to_ms: i64,
    pub partial: bool,
}

// ----- daily summaries -----

/// The time zone a summary's days were counted in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct TimeZoneUsed {
    /// The IANA name used: the person's, or `UTC` when falling back.
    #[schema(example = "Asia/Tokyo")]
    pub name: String,
    /// The name registered for the person (`null` when none is).
    pub registered: Option<String>,
    /// `true` when the registered name is not a known IANA zone and days are UTC days.
    pub fallback: bool,
}

/// Daily totals of one person over a range of their local days. Days without any data are
/// absent, never zeros.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DailySummary {
    pub person_id: String,
    pub time_zone: TimeZoneUsed,
    /// The first local day asked for.
    #[schema(value_type = String, format = Date)]
    pub from: NaiveDate,
    /// The last local day asked for (inclusive).
    #[schema(value_type = String, format = Date)]
    pub to: NaiveDate,
    /// The types summed (those asked for, or every consented one of steps and sleep).
    #[schema(value_type = Vec<String>, example = json!(["step-count", "sleep-episode"]))]
    pub types: Vec<RecordType>,
    /// Days with data, in order.
    pub days: Vec<DaySummary>,
    /// How many records the totals were made from.
    pub records: u64,
}

/// One local day's totals. `steps` and `sleep` are absent when the day has none of them.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DaySummary {
    #[schema(value_type = String, format = Date)]
    pub date: NaiveDate,
    /// Local midnight, with the UTC offset in force then.
    #[schema(value_type = String, format = DateTime)]
    pub start: DateTime<FixedOffset>,
    /// The next local midnight.
    #[schema(value_type = String, format = DateTime)]
    pub end: DateTime<FixedOffset>,
    /// The day's length: 24, or 23 / 25 across a DST change.
    pub hours: f64,
    /// `true` when a consent's window cuts the day, so its totals cover only part of it.
    pub partial: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<StepsDay>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sleep: Option<SleepDay>,
}

/// Steps of records starting on the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct StepsDay {
    pub total: i64,
    pub records: u64,
}

/// Sleep episodes ending on the day (the night before, for main sleep).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct SleepDay {
    pub episodes: u64,
    /// Minutes asleep: each episode's total sleep time as sent (in minutes), else the sum of
    /// its non-awake stages. `null` when no episode says.
    pub total_minutes: Option<f64>,
    /// Minutes in bed: the episodes' whole durations.
    pub in_bed_minutes: f64,
    /// Asleep over in bed, in percent (one decimal), over the episodes whose sleep time is
    /// known. `null` when none is.
    pub efficiency_percent: Option<f64>,
    /// Minutes per stage, summed over the episodes that have stages; `null` when none does.
    pub stages: Option<StageTotals>,
}

/// Minutes per sleep stage.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, ToSchema)]
pub struct StageTotals {
    pub awake: f64,
    pub light: f64,
    pub deep: f64,
    pub rem: f64,
}

impl DailySummary {
    /// An empty summary of `from..=to` counted in `zone`.
    pub fn new(person_id: &str, zone: &Zone, from: NaiveDate, to: NaiveDate) -> Self {
        Self {
            person_id: person_id.to_owned(),
            time_zone: TimeZoneUsed {
                name: zone.tz.name().to_owned(),
                registered: zone.registered.clone(),
                fallback: zone.fallback,
            },
            from,
            to,
            types: Vec::new(),
            days: Vec::new(),
            records: 0,
        }
    }

    /// The entry of `w`'s day, made when missing (days stay in date order).
    fn day(&mut self, w: &DayWindow) -> &mut DaySummary {
        let i = match self.days.binary_search_by_key(&w.day.date, |d| d.date) {
            Ok(i) => i,
            Err(i) => {
                self.days.insert(
                    i,
                    DaySummary {
                        date: w.day.date,
                        start: w.day.start,
                        end: w.day.end,
                        hours: w.day.length().num_milliseconds() as f64 / 3_600_000.0,
                        partial: false,
                        steps: None,
                        sleep: None,
                    },
                );
                i
            }
        };
        let day = &mut self.days[i];
        day.partial |= w.partial;
        day
    }
}

/// Rounds to one decimal.
fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// The day windows as the JSON array the queries read: `[[from_ms, to_ms, lo_ms], ...]`.
fn day_bounds(days: &[DayWindow], lo: impl Fn(&DayWindow) -> i64) -> String {
    let bounds: Vec<[i64; 3]> = days.iter().map(|d| [d.from_ms, d.to_ms, lo(d)]).collect();
    serde_json::Value::from(
        bounds
            .iter()
            .map(|b| serde_json::Value::from(b.to_vec()))
            .collect::<Vec<_>>(),
    )
    .to_string()
}

impl Store {
    /// Adds to `summary` the steps of `person_id` in each of `days`, merged across their
    /// devices (one device per 5-minute interval, [`super::sources`]); returns how many
    /// records were summed. Whole 5-minute intervals come from the rollup
    /// ([`super::rollup`]), the ends of a day a consent's window cuts mid-interval from the
    /// records themselves.
    pub fn daily_steps(
        &self,
        person_id: &str,
        days: &[DayWindow],
        summary: &mut DailySummary,
    ) -> Result<u64> {
        let per_day: std::collections::BTreeMap<usize, (i64, i64)> = self
            .merged_days(person_id, RecordType::StepCount, days)?
            .into_iter()
            .map(|(i, d)| (i, (d.total.round() as i64, d.records)))
            .collect();
        let mut n = 0;
        for (i, (total, records)) in per_day {
            let w = days
                .get(i)
                .ok_or(Error::Invalid("a day index out of range"))?;
            summary.day(w).steps = Some(StepsDay {
                total,
                records: records as u64,
            });
            n += records as u64;
        }
        Ok(n)
    }

    /// Adds to `summary` the sleep episodes of `person_id` ending in each of `days` and lying
    /// inside the measured-time window `window` (start at or after its start); returns how
    /// many episodes were summed. Episodes that overlap one the night's merge took first (the
    /// same night reported by a second device, [`super::sources::merge_night`]) are not
    /// added again: a night is counted once, naps apart from it still count.
    pub fn daily_sleep(
        &self,
        person_id: &str,
        days: &[DayWindow],
        window: (i64, i64),
        summary: &mut DailySummary,
    ) -> Result<u64> {
        let rows = self.sleep_rows(person_id, days, window)?;
        let mut by_day: std::collections::BTreeMap<usize, Vec<(i64, i64, SleepEpisode)>> =
            std::collections::BTreeMap::new();
        for row in rows.into_iter().filter(|r| r.counted) {
            let record: Record = serde_json::from_str(&row.body)
                .map_err(|_| Error::Invalid("a stored record does not parse"))?;
            if let Body::SleepEpisode(episode) = record.body {
                by_day
                    .entry(row.day)
                    .or_default()
                    .push((row.start_ms, row.end_ms, episode));
            }
        }
        let mut n = 0;
        for (day, episodes) in by_day {
            let mut totals = Totals::default();
            for (start_ms, end_ms, episode) in &episodes {
                totals.add(
                    total_sleep_minutes(episode),
                    StageMinutes::of(episode),
                    (end_ms - start_ms) as f64 / 60_000.0,
                );
                n += 1;
            }
            put_sleep(summary, days, day, &totals)?;
        }
        Ok(n)
    }
}

/// One sleep episode read for a day's summary or the dashboards.
#[derive(Debug, Clone)]
pub(super) struct SleepRow {
    /// The index of its day in the days asked for.
    pub day: usize,
    pub body: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub device_id: String,
    /// Whether it counts; `false`: a duplicate of an episode of another device that does.
    pub counted: bool,
}

impl Store {
    /// The sleep episodes of `person_id` ending in each of `days` and starting at or after
    /// the start of `window`, in day, then measured order, each marked counted or a
    /// duplicate by the night's merge ([`super::sources::merge_night`]). Shared by
    /// [`Store::daily_sleep`] and the dashboards' per-episode reads.
    pub(super) fn sleep_rows(
        &self,
        person_id: &str,
        days: &[DayWindow],
        window: (i64, i64),
    ) -> Result<Vec<SleepRow>> {
        if days.is_empty() {
            return Ok(Vec::new());
        }
        // No episode is longer than ingest's interval limit, so its start lies at most that
        // long before its end: the lower bound that keeps the scan on the index.
        let longest = Limits::default().max_interval.num_milliseconds();
        let bounds = day_bounds(days, |d| d.from_ms.saturating_sub(longest).max(window.0));
        let mut rows = self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "WITH days(i, s, e, lo) AS (
                     SELECT CAST(key AS INTEGER), json_extract(value, '$[0]'),
                            json_extract(value, '$[1]'), json_extract(value, '$[2]')
                       FROM json_each(?2))
                 SELECT days.i, r.body, r.start_ms, r.end_ms, r.device_id
                   FROM days CROSS JOIN records r
                  WHERE r.person_id = ?1 AND r.record_type = 'sleep-episode'
                    AND r.start_ms >= days.lo AND r.start_ms < days.e
                    AND r.end_ms >= days.s AND r.end_ms < days.e
                  ORDER BY days.i, r.start_ms, r.device_id, r.end_ms",
            )?;
            let rows = stmt.query_map(params![person_id, bounds], |r| {
                Ok(SleepRow {
                    day: r.get::<_, i64>(0)? as usize,
                    body: r.get(1)?,
                    start_ms: r.get(2)?,
                    end_ms: r.get(3)?,
                    device_id: r.get(4)?,
                    counted: true,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })?;
        if rows.is_empty() {
            return Ok(rows);
        }
        // One night at a time: the merge decides which episodes count.
        let ranking = self.ranking(person_id, RecordType::SleepEpisode)?;
        let mut at = 0;
        while at < rows.len() {
            let day = rows[at].day;
            let end = rows[at..]
                .iter()
                .position(|r| r.day != day)
                .map_or(rows.len(), |n| at + n);
            let night: Vec<super::sources::NightEpisode> = rows[at..end]
                .iter()
                .map(|r| super::sources::NightEpisode {
                    device_id: r.device_id.clone(),
                    start_ms: r.start_ms,
                    end_ms: r.end_ms,
                })
                .collect();
            let (counts, _) = super::sources::merge_night(&night, &ranking);
            for (r, counted) in rows[at..end].iter_mut().zip(counts) {
                r.counted = counted;
            }
            at = end;
        }
        Ok(rows)
    }
}

/// A day's sleep episodes summed.
#[derive(Debug, Default)]
struct Totals {
    episodes: u64,
    asleep: Option<f64>,
    in_bed: f64,
    /// In-bed minutes of the episodes whose sleep time is known.
    in_bed_known: f64,
    stages: Option<StageTotals>,
}

impl Totals {
    fn add(&mut self, asleep: Option<f64>, stages: Option<StageMinutes>, in_bed: f64) {
        self.episodes += 1;
        self.in_bed += in_bed;
        if let Some(a) = asleep {
            self.asleep = Some(self.asleep.unwrap_or(0.0) + a);
            self.in_bed_known += in_bed;
        }
        if let Some(m) = stages {
            let s = self.stages.get_or_insert_with(StageTotals::default);
            s.awake += m.awake;
            s.light += m.light;
            s.deep += m.deep;
            s.rem += m.rem;
        }
    }
}

fn put_sleep(summary: &mut DailySummary, days: &[DayWindow], i: usize, t: &Totals) -> Result<()> {
    let w = days
        .get(i)
        .ok_or(Error::Invalid("a day index out of range"))?;
    summary.day(w).sleep = Some(SleepDay {
        episodes: t.episodes,
        total_minutes: t.asleep,
        in_bed_minutes: t.in_bed,
        efficiency_percent: t
            .asleep
            .filter(|_| t.in_bed_known > 0.0)
            .map(|a| round1(100.0 * a / t.in_bed_known)),
        stages: t.stages,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn tokyo_days_start_at_15_utc() {
        let z = Zone::resolve(Some("Asia/Tokyo"));
        assert!(!z.fallback);
        let d = z.day(date("2026-06-01")).unwrap();
        assert_eq!(d.start.to_rfc3339(), "2026-06-01T00:00:00+09:00");
        assert_eq!(d.start_ms, utc("2026-05-31T15:00:00Z").timestamp_millis());
        assert_eq!(d.end_ms, utc("2026-06-01T15:00:00Z").timestamp_millis());
        assert_eq!(d.length(), TimeDelta::hours(24));
    }

    #[test]
    fn new_york_has_a_23_and_a_25_hour_day() {
        let z = Zone::resolve(Some("America/New_York"));
        // 2026-03-08: 02:00 EST becomes 03:00 EDT.
        let spring = z.day(date("2026-03-08")).unwrap();
        assert_eq!(spring.length(), TimeDelta::hours(23));
        assert_eq!(spring.start.to_rfc3339(), "2026-03-08T00:00:00-05:00");
        assert_eq!(spring.end.to_rfc3339(), "2026-03-09T00:00:00-04:00");
        assert_eq!(
            spring.start_ms,
            utc("2026-03-08T05:00:00Z").timestamp_millis()
        );
        assert_eq!(
            spring.end_ms,
            utc("2026-03-09T04:00:00Z").timestamp_millis()
        );
        // 2026-11-01: 02:00 EDT becomes 01:00 EST.
        let autumn = z.day(date("2026-11-01")).unwrap();
        assert_eq!(autumn.length(), TimeDelta::hours(25));
        assert_eq!(autumn.start.to_rfc3339(), "2026-11-01T00:00:00-04:00");
        assert_eq!(autumn.end.to_rfc3339(), "2026-11-02T00:00:00-05:00");
        // The days around them are ordinary and the days tile time with no gap or overlap.
        let days = z.days(date("2026-03-06"), date("2026-03-10"));
        assert_eq!(days.len(), 5);
        let hours: Vec<i64> = days.iter().map(|d| d.length().num_hours()).collect();
        assert_eq!(hours, [24, 24, 23, 24, 24]);
        assert!(days.windows(2).all(|w| w[0].end_ms == w[1].start_ms));
        let days = z.days(date("2026-10-31"), date("2026-11-02"));
        let hours: Vec<i64> = days.iter().map(|d| d.length().num_hours()).collect();
        assert_eq!(hours, [24, 25, 24]);
    }

    #[test]
    fn a_day_whose_midnight_is_skipped_starts_at_the_first_minute_that_exists() {
        // São Paulo sprang forward at midnight: 2018-11-04 00:00 -03 became 01:00 -02.
        let z = Zone::resolve(Some("America/Sao_Paulo"));
        let d = z.day(date("2018-11-04")).unwrap();
        assert_eq!(d.start.to_rfc3339(), "2018-11-04T01:00:00-02:00");
        assert_eq!(d.start_ms, utc("2018-11-04T03:00:00Z").timestamp_millis());
        assert_eq!(d.length(), TimeDelta::hours(23));
        let before = z.day(date("2018-11-03")).unwrap();
        assert_eq!(before.end_ms, d.start_ms);
    }

    #[test]
    fn unknown_or_missing_zones_fall_back_to_utc() {
        for name in [Some("Mars/Olympus_Mons"), Some(""), None] {
            let z = Zone::resolve(name);
            assert!(z.fallback, "{name:?}");
            assert_eq!(z.tz, Tz::UTC);
            let d = z.day(date("2026-03-08")).unwrap();
            assert_eq!(d.start_ms, utc("2026-03-08T00:00:00Z").timestamp_millis());
            assert_eq!(d.length(), TimeDelta::hours(24));
        }
        let s = DailySummary::new(
            "a",
            &Zone::resolve(Some("Mars/Olympus_Mons")),
            date("2026-01-01"),
            date("2026-01-01"),
        );
        assert_eq!(s.time_zone.name, "UTC");
        assert_eq!(s.time_zone.registered.as_deref(), Some("Mars/Olympus_Mons"));
        assert!(Zone::resolve(Some("UTC"))
            .days(date("2026-01-02"), date("2026-01-01"))
            .is_empty());
    }

    /// The same night from a band and a watch counts once (the longer); a nap that day,
    /// apart from the night, still counts.
    #[test]
    fn a_night_from_two_devices_counts_once_and_a_nap_still_counts() {
        use crate::rollup::fixture::{sleep, NIGHT};
        use phr_schema::record::SleepStageKind::Light;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("phr.sqlite")).unwrap();
        store.add_person("nia", "Nia", "UTC").unwrap();
        store
            .grant_storage_consent("nia", &RecordType::ALL)
            .unwrap();
        let band = sleep("2026-03-04T23:00:00Z", &NIGHT, true); // 300 min in bed, 285 asleep
        let mut watch = sleep("2026-03-04T23:30:00Z", &[(Light, 240)], true);
        watch.device_id = "watch".into();
        watch = phr_schema::Record::new(
            &watch.device_id,
            &watch.bridge_id,
            watch.source_created_at,
            watch.provenance.clone(),
            watch.body.clone(),
        );
        let nap = sleep("2026-03-05T13:00:00Z", &[(Light, 40)], false);
        let report = store
            .import_records("nia", &[band, watch, nap], Utc::now())
            .unwrap();
        assert_eq!(report.stored, 3, "{report:?}");
        let zone = Zone::resolve(Some("UTC"));
        let days: Vec<DayWindow> = zone
            .days(date("2026-03-05"), date("2026-03-05"))
            .iter()
            .filter_map(|d| d.clip((i64::MIN, i64::MAX)))
            .collect();
        let mut summary = DailySummary::new("nia", &zone, date("2026-03-05"), date("2026-03-05"));
        let n = store
            .daily_sleep("nia", &days, (i64::MIN, i64::MAX), &mut summary)
            .unwrap();
        assert_eq!(
            n, 2,
            "the band's night and the nap; the watch's overlapping night is not added"
        );
        let sleep = summary.days[0].sleep.expect("sleep on the 5th");
        assert_eq!(sleep.total_minutes, Some(285.0 + 40.0));
        assert_eq!(sleep.in_bed_minutes, 300.0 + 40.0);
    }

    #[test]
    fn clipping_marks_partial_days() {
        let z = Zone::resolve(Some("UTC"));
        let d = z.day(date("2026-01-01")).unwrap();
        let whole = d.clip((i64::MIN, i64::MAX)).unwrap();
        assert!(!whole.partial);
        let noon = utc("2026-01-01T12:00:00Z").timestamp_millis();
        let half = d.clip((noon, i64::MAX)).unwrap();
        assert!(half.partial);
        assert_eq!((half.from_ms, half.to_ms), (noon, d.end_ms));
        assert_eq!(d.clip((d.end_ms, i64::MAX)), None);
    }
}
