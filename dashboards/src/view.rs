//! The dashboards' view model: one read of a person's aggregates ([`PatientView`], made by
//! [`PatientView::read`] through `phr_access::read_patient_view`, which checks consent and
//! logs the disclosure) and
//! what the pages derive from it: the 7-day rolling mean, nights, weekly averages and the
//! triage [`Flags`]. Days without data are absent everywhere, never zeros. The aggregates
//! themselves are the store's (`phr_store::rollup`).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};

use phr_schema::fhir::StageMinutes;
use phr_schema::RecordType;

use crate::access::{self, AccessError, PatientRead, ViewQuery};
use crate::auth::Principal;
use crate::store::rollup::Episode;
use crate::store::subjects::SleepDay;
use crate::store::Backend;

/// The daily step goal drawn on the steps chart: 8,000 steps, one constant for everyone (the
/// person record has no goal of its own yet). Commonly cited as the count above which adults'
/// all-cause mortality stops falling steeply.
pub const STEP_GOAL: i64 = 8_000;

/// The rolling mean of daily steps covers this many days (the day and the 6 before it).
pub const ROLLING_DAYS: i64 = 7;

/// Flag: steps down by at least this much, recent against prior mean, in percent.
pub const STEPS_DOWN_PERCENT: f64 = 30.0;
/// The recent period of the steps flag: the last 7 complete days (today is not over).
pub const RECENT_DAYS: i64 = 7;
/// The prior period of the steps flag: the 28 days before the recent period.
pub const PRIOR_DAYS: i64 = 28;
/// No steps flag when the prior period has fewer days with data than this.
pub const MIN_PRIOR_DAYS: usize = 7;
/// Flag: mean sleep under this many hours over the last 7 nights (those with data).
pub const SHORT_SLEEP_HOURS: f64 = 6.0;
/// Nights the sleep flag and the panel's mean sleep look at: last night and the 6 before.
pub const SLEEP_NIGHTS: i64 = 7;
/// Flag: no data of any shown type for this many days (today included).
pub const NO_DATA_DAYS: i64 = 3;
/// The panel's "days with data" count covers this many days, today included.
pub const COVERAGE_DAYS: i64 = 14;
/// Days before the last day a view reads at least, so every flag can be computed.
pub const LOOKBACK_DAYS: i64 = RECENT_DAYS + PRIOR_DAYS;

/// One read of a person's aggregates for the dashboards, clipped to what the reader may see
/// (the access layer's [`PatientRead`], its fields readable through this), and what the
/// pages derive from it.
#[derive(Debug, Clone)]
pub struct PatientView(pub PatientRead);

impl std::ops::Deref for PatientView {
    type Target = PatientRead;

    fn deref(&self) -> &PatientRead {
        &self.0
    }
}

/// One night shown: the daily summary's sums and the main-sleep episode.
#[derive(Debug, Clone, PartialEq)]
pub struct Night {
    pub date: NaiveDate,
    pub sleep: SleepDay,
    /// The longest main-sleep episode of the night, if any is marked main.
    pub main: Option<Episode>,
    /// Stage minutes of the night's other counted episodes (naps), if staged.
    pub other_stages: Option<StageMinutes>,
}

/// Averages over one week (Monday to Sunday, local), over the days with data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Week {
    /// The Monday the week starts.
    pub monday: NaiveDate,
    /// The days of the week shown (the first and last week may be cut by the range).
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub step_days: usize,
    pub mean_steps: Option<f64>,
    pub sleep_nights: usize,
    pub mean_sleep_hours: Option<f64>,
    pub resting_days: usize,
    pub mean_resting_bpm: Option<f64>,
}

/// The steps trend of the last 7 complete days against the 28 before.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepsTrend {
    pub recent_mean: f64,
    pub recent_days: usize,
    pub prior_mean: f64,
    pub prior_days: usize,
    /// `100 * (recent - prior) / prior`.
    pub change_percent: f64,
}

/// What a clinician triages by, all over days with data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flags {
    /// The trend, when steps are shown and the prior period has 7 days with data or more
    /// and the recent one at least one.
    pub steps: Option<StepsTrend>,
    /// Steps down by 30% or more.
    pub steps_down: bool,
    /// Mean hours asleep over the last 7 nights that have sleep data.
    pub mean_sleep_hours: Option<f64>,
    /// Mean sleep under 6 hours.
    pub short_sleep: bool,
    /// Days since the last day with data (0: today has data); `None`: no data in the days
    /// read.
    pub days_since_data: Option<i64>,
    /// No data for 3 days or more (today included), or none at all in the days read.
    pub no_data: bool,
}

impl Flags {
    /// How many flags are raised.
    pub fn count(&self) -> usize {
        [self.steps_down, self.short_sleep, self.no_data]
            .iter()
            .filter(|f| **f)
            .count()
    }
}

fn mean(values: impl IntoIterator<Item = f64>) -> Option<(f64, usize)> {
    let (sum, n) = values
        .into_iter()
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| (sum / n as f64, n))
}

fn days_before(date: NaiveDate, n: i64) -> NaiveDate {
    date.checked_sub_signed(TimeDelta::days(n))
        .unwrap_or(NaiveDate::MIN)
}

impl PatientView {
    /// Reads `q` as `principal` through the access layer (scope, consent and its window,
    /// one disclosure-log entry), with enough days before the first one shown for the
    /// rolling mean and every flag ([`PatientView::read_from`]).
    pub fn read(
        store: &dyn Backend,
        principal: &Principal,
        q: &ViewQuery,
        now: DateTime<Utc>,
    ) -> Result<Self, AccessError> {
        access::read_patient_view(store, principal, q, Self::lookback_days(q.days), now).map(Self)
    }

    /// How many days before the last day shown a view of `days` days reads from (`days`
    /// clamped as the access layer clamps it, to 1..=[`access::MAX_VIEW_DAYS`]).
    pub fn lookback_days(days: u32) -> u32 {
        let shown = days.clamp(1, access::MAX_VIEW_DAYS) - 1;
        (shown + ROLLING_DAYS as u32 - 1).max(LOOKBACK_DAYS as u32)
    }

    /// The first local day read: enough before the first day shown for the rolling mean and
    /// every flag.
    pub fn read_from(to: NaiveDate, days: u32) -> NaiveDate {
        days_before(to, i64::from(Self::lookback_days(days)))
    }

    /// The first day shown.
    pub fn from(&self) -> NaiveDate {
        days_before(self.to, i64::from(self.days.max(1)) - 1)
    }

    /// Every day shown, in order.
    pub fn dates(&self) -> Vec<NaiveDate> {
        self.from()
            .iter_days()
            .take_while(|d| *d <= self.to)
            .collect()
    }

    pub fn shows(&self, t: RecordType) -> bool {
        self.types.contains(&t)
    }

    /// Daily step totals of every day read that has steps.
    pub fn steps(&self) -> BTreeMap<NaiveDate, i64> {
        self.summary
            .days
            .iter()
            .filter_map(|d| d.steps.map(|s| (d.date, s.total)))
            .collect()
    }

    /// Days read whose totals a consent's window cuts.
    pub fn partial_days(&self) -> BTreeSet<NaiveDate> {
        self.summary
            .days
            .iter()
            .filter(|d| d.partial)
            .map(|d| d.date)
            .collect()
    }

    /// The 7-day rolling mean of daily steps on `date`: the mean over the days with data
    /// among `date` and the 6 days before it, defined only when `date` itself has data (a
    /// day without data breaks the line).
    pub fn rolling_mean(steps: &BTreeMap<NaiveDate, i64>, date: NaiveDate) -> Option<f64> {
        steps.get(&date)?;
        let first = days_before(date, ROLLING_DAYS - 1);
        mean(steps.range(first..=date).map(|(_, v)| *v as f64)).map(|(m, _)| m)
    }

    /// The nights read that have sleep data, in order.
    pub fn nights(&self) -> Vec<Night> {
        self.summary
            .days
            .iter()
            .filter_map(|d| {
                let sleep = d.sleep?;
                // A second device's copy of the night counts neither as the main episode nor
                // as another one.
                let of_night: Vec<&Episode> = self
                    .episodes
                    .iter()
                    .filter(|e| e.night == d.date && !e.duplicate)
                    .collect();
                let main = of_night
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.main)
                    .max_by(|(_, a), (_, b)| a.in_bed_minutes().total_cmp(&b.in_bed_minutes()))
                    .map(|(i, _)| i);
                let mut other: Option<StageMinutes> = None;
                for (i, e) in of_night.iter().enumerate() {
                    if main == Some(i) {
                        continue;
                    }
                    if let Some(m) = e.stages {
                        let o = other.get_or_insert(StageMinutes {
                            deep: 0.0,
                            light: 0.0,
                            rem: 0.0,
                            awake: 0.0,
                        });
                        o.deep += m.deep;
                        o.light += m.light;
                        o.rem += m.rem;
                        o.awake += m.awake;
                    }
                }
                Some(Night {
                    date: d.date,
                    sleep,
                    main: main.and_then(|i| of_night.get(i)).map(|e| (*e).clone()),
                    other_stages: other,
                })
            })
            .collect()
    }

    /// The main episode whose hypnogram is shown: the night asked for, else the latest
    /// night shown with a staged main episode.
    pub fn hypnogram(&self) -> Option<Episode> {
        let from = self.from();
        let nights = self.nights();
        let staged = |n: &&Night| n.main.as_ref().is_some_and(|m| !m.spans.is_empty());
        match self.night {
            Some(date) => nights
                .iter()
                .find(|n| n.date == date)
                .and_then(|n| n.main.clone()),
            None => nights
                .iter()
                .rev()
                .filter(|n| n.date >= from)
                .find(staged)
                .and_then(|n| n.main.clone()),
        }
    }

    /// Every day read with data of any shown type.
    pub fn days_with_data(&self) -> BTreeSet<NaiveDate> {
        let mut days: BTreeSet<NaiveDate> = self
            .summary
            .days
            .iter()
            .filter(|d| d.steps.is_some() || d.sleep.is_some())
            .map(|d| d.date)
            .collect();
        days.extend(self.resting.iter().map(|r| r.date));
        days
    }

    /// How many of the last `n` days (today included) have data.
    pub fn coverage(&self, n: i64) -> usize {
        let first = days_before(self.to, n - 1);
        self.days_with_data().range(first..=self.to).count()
    }

    /// Steps of the last 7 complete days, oldest first, `None` on days without data (the
    /// panel's sparkline).
    pub fn recent_steps(&self) -> Vec<(NaiveDate, Option<i64>)> {
        let steps = self.steps();
        (1..=RECENT_DAYS)
            .rev()
            .map(|k| {
                let d = days_before(self.to, k);
                (d, steps.get(&d).copied())
            })
            .collect()
    }

    /// Mean hours asleep over the last 7 nights (last night included) that have data.
    pub fn mean_sleep_hours(&self) -> Option<f64> {
        let first = days_before(self.to, SLEEP_NIGHTS - 1);
        mean(
            self.summary
                .days
                .iter()
                .filter(|d| d.date >= first && d.date <= self.to)
                .filter_map(|d| d.sleep.and_then(|s| s.total_minutes))
                .map(|m| m / 60.0),
        )
        .map(|(m, _)| m)
    }

    /// The triage flags as of `to`.
    pub fn flags(&self) -> Flags {
        let steps = self.steps();
        let trend = || {
            let recent = mean(
                steps
                    .range(days_before(self.to, RECENT_DAYS)..=days_before(self.to, 1))
                    .map(|(_, v)| *v as f64),
            )?;
            let prior = mean(
                steps
                    .range(
                        days_before(self.to, RECENT_DAYS + PRIOR_DAYS)
                            ..=days_before(self.to, RECENT_DAYS + 1),
                    )
                    .map(|(_, v)| *v as f64),
            )?;
            (prior.1 >= MIN_PRIOR_DAYS && prior.0 > 0.0).then(|| StepsTrend {
                recent_mean: recent.0,
                recent_days: recent.1,
                prior_mean: prior.0,
                prior_days: prior.1,
                change_percent: 100.0 * (recent.0 - prior.0) / prior.0,
            })
        };
        let steps = if self.shows(RecordType::StepCount) {
            trend()
        } else {
            None
        };
        let sleep = if self.shows(RecordType::SleepEpisode) {
            self.mean_sleep_hours()
        } else {
            None
        };
        let since = self
            .days_with_data()
            .range(..=self.to)
            .next_back()
            .map(|d| (self.to - *d).num_days());
        Flags {
            steps,
            steps_down: steps.is_some_and(|t| t.change_percent <= -STEPS_DOWN_PERCENT),
            mean_sleep_hours: sleep,
            short_sleep: sleep.is_some_and(|h| h < SHORT_SLEEP_HOURS),
            days_since_data: since,
            no_data: since.is_none_or(|d| d >= NO_DATA_DAYS),
        }
    }

    /// Averages per week (Monday to Sunday) over the days shown.
    pub fn weeks(&self) -> Vec<Week> {
        let steps = self.steps();
        let nights = self.nights();
        let from = self.from();
        let mut out = Vec::new();
        let mut monday = days_before(from, i64::from(from.weekday().num_days_from_monday()));
        while monday <= self.to {
            let sunday = monday + TimeDelta::days(6);
            let (a, b) = (monday.max(from), sunday.min(self.to));
            let s = mean(steps.range(a..=b).map(|(_, v)| *v as f64));
            let n = mean(
                nights
                    .iter()
                    .filter(|n| n.date >= a && n.date <= b)
                    .filter_map(|n| n.sleep.total_minutes)
                    .map(|m| m / 60.0),
            );
            let r = mean(
                self.resting
                    .iter()
                    .filter(|r| r.date >= a && r.date <= b)
                    .map(|r| r.bpm),
            );
            out.push(Week {
                monday,
                from: a,
                to: b,
                step_days: s.map_or(0, |s| s.1),
                mean_steps: s.map(|s| s.0),
                sleep_nights: n.map_or(0, |n| n.1),
                mean_sleep_hours: n.map(|n| n.0),
                resting_days: r.map_or(0, |r| r.1),
                mean_resting_bpm: r.map(|r| r.0),
            });
            monday += TimeDelta::days(7);
        }
        out
    }
}

/// The store's test person (known data across the 2026 spring DST change in New York) and
/// the principals that read them, shared by the dashboards' tests.
#[cfg(test)]
pub(crate) mod fixture {
    pub(crate) use crate::store::rollup::fixture::*;

    use crate::auth::Principal;

    pub(crate) fn principal(subject: &str, scope: &str) -> Principal {
        Principal {
            subject: subject.into(),
            scopes: scope.split_whitespace().map(Into::into).collect(),
        }
    }

    pub(crate) fn owner(subject: &str) -> Principal {
        principal(subject, "patient/*.cruds")
    }

    pub(crate) fn doctor() -> Principal {
        principal(DOCTOR, "user/Observation.rs")
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{self, day, doctor, owner, principal, ANN, DOCTOR, NIA};
    use super::*;
    use crate::store::audit::Outcome;

    fn view(store: &crate::store::Store, who: &Principal, person: &str, to: &str) -> PatientView {
        let q = ViewQuery {
            person_id: person.into(),
            days: 30,
            to: Some(day(to)),
            night: None,
        };
        PatientView::read(store, who, &q, fixture::now()).unwrap()
    }

    #[test]
    fn a_view_reads_enough_days_for_its_means_and_flags_and_no_more() {
        // The flags look back 35 days; a 90-day chart's first rolling mean needs 6 more.
        assert_eq!(PatientView::lookback_days(1), 35);
        assert_eq!(PatientView::lookback_days(30), 35);
        assert_eq!(PatientView::lookback_days(90), 95);
        // Clamped as the access layer clamps the days shown: never more, never an overflow.
        assert_eq!(PatientView::lookback_days(0), 35);
        assert_eq!(PatientView::lookback_days(u32::MAX), 366 + 5);
        assert_eq!(
            PatientView::read_from(day("2026-03-10"), 30),
            day("2026-02-03")
        );
    }

    #[test]
    fn daily_steps_follow_local_days_across_dst_and_leave_gaps() {
        let (_dir, store) = fixture::store();
        let v = view(&store, &owner(NIA), NIA, "2026-03-10");
        assert_eq!(v.tz.name(), "America/New_York");
        assert_eq!(v.from(), day("2026-02-09"));
        assert_eq!(v.dates().len(), 30);
        // Read: 35 days before the 10th, for the flags.
        assert_eq!(v.summary.from, day("2026-02-03"));
        let expected: BTreeMap<NaiveDate, i64> = fixture::nia_steps()
            .into_iter()
            .filter(|(d, _)| *d >= day("2026-02-03"))
            .collect();
        assert_eq!(v.steps(), expected);
        assert!(
            !v.steps().contains_key(&day("2026-03-05")),
            "a gap, not a zero"
        );
        let dst = v
            .summary
            .days
            .iter()
            .find(|d| d.date == day("2026-03-08"))
            .unwrap();
        assert_eq!(dst.hours, 23.0);
        assert_eq!(dst.steps.unwrap().records, 2);
        assert_eq!(v.types, RecordType::ALL);
    }

    #[test]
    fn rolling_mean_is_over_days_with_data_and_breaks_at_gaps() {
        let steps = fixture::nia_steps();
        // 02-28 .. 03-06 with data: three days of 10,000, three of 5,000 (none on the 5th).
        assert_eq!(
            PatientView::rolling_mean(&steps, day("2026-03-06")),
            Some(7_500.0)
        );
        assert_eq!(PatientView::rolling_mean(&steps, day("2026-03-05")), None);
        assert_eq!(
            PatientView::rolling_mean(&steps, day("2026-02-20")),
            Some(10_000.0)
        );
    }

    #[test]
    fn nights_episodes_hypnogram_and_resting_heart_rate() {
        let (_dir, store) = fixture::store();
        let v = view(&store, &owner(NIA), NIA, "2026-03-10");
        let nights = v.nights();
        let dates: Vec<String> = nights.iter().map(|n| n.date.to_string()).collect();
        assert_eq!(
            dates,
            [
                "2026-03-04",
                "2026-03-05",
                "2026-03-06",
                "2026-03-07",
                "2026-03-08",
                "2026-03-09",
                "2026-03-10"
            ]
        );
        let n9 = &nights[5];
        assert_eq!(n9.sleep.episodes, 2);
        assert_eq!(n9.sleep.total_minutes, Some(285.0 + 40.0));
        let main = n9.main.as_ref().unwrap();
        assert_eq!(main.start.to_rfc3339(), "2026-03-08T23:50:00-04:00");
        assert_eq!(main.end.to_rfc3339(), "2026-03-09T04:50:00-04:00");
        let other = n9.other_stages.unwrap();
        assert_eq!((other.light, other.deep), (40.0, 0.0));
        // The night across the change: bed in EST, wake in EDT, 300 minutes in bed.
        let n8 = nights[4].main.as_ref().unwrap();
        assert_eq!(n8.start.to_rfc3339(), "2026-03-08T00:30:00-05:00");
        assert_eq!(n8.end.to_rfc3339(), "2026-03-08T06:30:00-04:00");
        assert_eq!(n8.in_bed_minutes(), 300.0);
        // Its stages are shown on the local clock too.
        let q = ViewQuery {
            person_id: NIA.into(),
            days: 30,
            to: Some(day("2026-03-10")),
            night: Some(day("2026-03-08")),
        };
        let asked = PatientView::read(&store, &owner(NIA), &q, fixture::now()).unwrap();
        let hyp = asked.hypnogram().unwrap();
        assert_eq!(hyp.night, day("2026-03-08"));
        let kinds: Vec<&str> = hyp.spans.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(kinds, ["awake", "light", "deep", "rem"]);
        assert_eq!(hyp.spans[1].start.to_rfc3339(), "2026-03-08T00:45:00-05:00");
        assert_eq!(hyp.spans[1].end.to_rfc3339(), "2026-03-08T04:45:00-04:00");
        // Without a night asked for: the latest.
        assert_eq!(v.hypnogram().unwrap().night, day("2026-03-10"));
        // Resting heart rate: the lowest 5-minute mean of the day.
        let rest: Vec<(String, f64, u64)> = v
            .resting
            .iter()
            .map(|r| (r.date.to_string(), r.bpm, r.readings))
            .collect();
        assert_eq!(
            rest,
            [
                ("2026-03-08".to_owned(), 50.0, 2),
                ("2026-03-09".to_owned(), 58.0, 4)
            ]
        );
        assert!(v.last_sync.is_some());
        // Weeks: Monday 2026-02-09 .. Sunday 03-15, the last one cut at the 10th.
        let weeks = v.weeks();
        assert_eq!(weeks.len(), 5);
        assert_eq!(weeks[0].monday, day("2026-02-09"));
        assert_eq!(weeks[0].mean_steps, Some(10_000.0));
        let last = weeks[4];
        assert_eq!((last.from, last.to), (day("2026-03-09"), day("2026-03-10")));
        assert_eq!(last.step_days, 2);
        assert_eq!(last.mean_steps, Some((5_000.0 + 1_234.0) / 2.0));
        assert_eq!(last.mean_resting_bpm, Some(58.0));
    }

    #[test]
    fn flags() {
        let (_dir, store) = fixture::store();
        let v = view(&store, &owner(NIA), NIA, "2026-03-10");
        let f = v.flags();
        let t = f.steps.unwrap();
        assert_eq!((t.recent_days, t.prior_days), (6, 28));
        assert_eq!((t.recent_mean, t.prior_mean), (5_000.0, 10_000.0));
        assert_eq!(t.change_percent, -50.0);
        assert!(f.steps_down);
        let h = (285.0 * 7.0 + 40.0) / 7.0 / 60.0;
        assert!((f.mean_sleep_hours.unwrap() - h).abs() < 1e-9);
        assert!(f.short_sleep);
        assert_eq!(f.days_since_data, Some(0));
        assert!(!f.no_data);
        assert_eq!(f.count(), 2);
        assert_eq!(v.coverage(14), 14);
        // Four days later: nothing since the 10th.
        let later = view(&store, &owner(NIA), NIA, "2026-03-14").flags();
        assert_eq!(later.days_since_data, Some(4));
        assert!(later.no_data);
        assert_eq!(later.count(), 3);
        // Two days later: not yet.
        assert!(!view(&store, &owner(NIA), NIA, "2026-03-12").flags().no_data);
        // Early February: too few days before to compare, no steps flag.
        let early = view(&store, &owner(NIA), NIA, "2026-02-12").flags();
        assert_eq!(early.steps, None);
        assert!(!early.steps_down);
        // Ann walks 8,000 every day: nothing.
        let ann = view(&store, &owner(ANN), ANN, "2026-03-10").flags();
        assert_eq!(ann.steps.unwrap().change_percent, 0.0);
        assert_eq!(ann.count(), 0);
    }

    #[test]
    fn a_clinician_sees_consented_types_and_window_and_each_view_is_logged_once() {
        let (_dir, store) = fixture::store();
        let before = store.disclosures(NIA, 0, 1000).unwrap().len();
        let v = view(&store, &doctor(), NIA, "2026-03-10");
        assert_eq!(v.types, [RecordType::StepCount, RecordType::HeartRate]);
        assert!(v.episodes.is_empty() && v.nights().is_empty());
        assert_eq!(v.steps().keys().next(), Some(&day("2026-02-06")));
        // Steps from February 6th (25 x 2 + 6 x 2 + 1) and 6 heart-rate readings.
        assert_eq!(v.records, 63 + 6);
        // Sleep is not shared: no sleep flag, whatever the nights were.
        assert_eq!(v.flags().mean_sleep_hours, None);
        let log = store.disclosures(NIA, 0, 1000).unwrap();
        assert_eq!(log.len(), before + 1);
        let e = &log.last().unwrap().entry;
        assert_eq!(e.outcome, Outcome::Disclosed);
        assert_eq!(e.actor, DOCTOR);
        assert_eq!(e.purpose, "care");
        assert_eq!(e.data_types, ["step-count", "heart-rate"]);
        assert_eq!(e.records, 69);
        assert_eq!(
            e.window_from.unwrap().to_rfc3339(),
            "2026-02-06T05:00:00+00:00"
        );
        // The steps trend is over what the window lets through: 25 days before.
        assert_eq!(v.flags().steps.unwrap().prior_days, 25);
        assert!(v.flags().steps_down);
        // The owner's own views are not logged.
        let n = log.len();
        view(&store, &owner(NIA), NIA, "2026-03-10");
        assert_eq!(store.disclosures(NIA, 0, 1000).unwrap().len(), n);
        // Someone without consent: 404 (and a denied entry), as for nobody at all.
        let stranger = principal("dr-no", "user/Observation.rs");
        let q = ViewQuery {
            person_id: NIA.into(),
            days: 30,
            to: Some(day("2026-03-10")),
            night: None,
        };
        let err = PatientView::read(&store, &stranger, &q, fixture::now()).unwrap_err();
        assert!(matches!(err, AccessError::NotFound), "{err:?}");
        let last = store.disclosures(NIA, 0, 1000).unwrap().pop().unwrap();
        assert_eq!(last.entry.outcome, Outcome::Denied);
        let q = ViewQuery {
            person_id: "nobody".into(),
            ..q
        };
        let err = PatientView::read(&store, &doctor(), &q, fixture::now()).unwrap_err();
        assert!(matches!(err, AccessError::NotFound), "{err:?}");
        // Days wholly before the window: refused as outside it.
        let err = PatientView::read(
            &store,
            &doctor(),
            &ViewQuery {
                person_id: NIA.into(),
                days: 30,
                to: Some(day("2026-01-10")),
                night: None,
            },
            fixture::now(),
        )
        .unwrap_err();
        assert!(matches!(err, AccessError::OutsideWindow), "{err:?}");
    }
}
