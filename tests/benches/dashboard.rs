//! Dashboard benchmark: how long one patient page takes over minute-level data, next to the
//! SQL it is made of, measured in the same run on the same store.
//!
//! Seeding (not timed): one person in America/New_York with 96 days (the 90 shown plus the
//! days before that the 7-day mean and the flags need) of one band's data, ending two minutes
//! ago: a `step-count` record for every minute (138,240), a `heart-rate` record for every
//! minute (138,240) and one staged main-sleep episode per night (96). They go in through
//! `Store::ingest`, what the gateway's consumer calls for every MQTT batch: batches of one
//! hour (60 steps + 60 heart rates, the JSON a bridge publishes), 64 batches per transaction.
//! A clinician gets a consent to every type.
//!
//! Then, each measurement repeated (3 warm-up runs, then 30 timed; median and p95):
//!
//! 1. The clinician's patient page, 90 days: [`access::read_patient_view`] (consent check,
//!    the aggregate queries, one disclosure-log entry: a write and its fsync) and
//!    [`patient::render`] (HTML, five SVG charts, the data tables), to a `String`. This is
//!    everything the handler does but the HTTP framing.
//! 2. The same for the owner (no disclosure entry), 3. for 30 days, 4. the printable visit
//!    summary, 5. the clinician's panel with this one patient.
//! 6. The read alone, 7. the rendering alone (from the read's result).
//! 8. Reference: the daily step-sum SQL alone, as `Store::daily_steps` runs it (the same
//!    statement on a bare rusqlite connection to the same file, 96 local days), and 9.
//!    `Store::daily_steps` itself.
//!
//! The run checks that the page's `table#daily-steps` holds exactly the seeded daily totals.
//!
//! Run: `cargo bench -p phr-e2e --bench dashboard` (about a minute) or
//! `cargo bench -p phr-e2e --bench dashboard -- --quick` (14 days, 5 repetitions: a smoke
//! run). Results: `BENCHMARKS.md`.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use rusqlite::{params, Connection};
use uuid::Uuid;

use phr_e2e::stats;
use phr_gateway::access::ViewQuery;
use phr_gateway::auth::Principal;
use phr_gateway::dashboard::view::PatientView;
use phr_gateway::dashboard::{clinician, patient};
use phr_gateway::ingest;
use phr_gateway::store::rollup::slots;
use phr_gateway::store::subjects::{DailySummary, DayWindow, Zone};
use phr_gateway::store::{GranteeKind, Terms};
use phr_gateway::Store;
use phr_schema::record::{
    HeartRate, IntervalFrame, PointFrame, Provenance, SleepEpisode, SleepStage, SleepStageKind,
    StepCount, TimeInterval, UnitValue, BEATS_PER_MINUTE,
};
use phr_schema::{Batch, Body, Limits, Record, RecordType};

const PERSON: &str = "bench-person";
const ZONE: &str = "America/New_York";
const CLINICIAN: &str = "bench-clinician";
const BRIDGE: &str = "bench-bridge";
const DEVICE: &str = "bench-band";
/// The consumer's `MAX_GROUP`: batches per ingest transaction.
const GROUP: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Days shown on the big page.
    days: u32,
    /// Days seeded (shown + the 6 before them the rolling mean needs).
    seeded: i64,
    warmup: usize,
    reps: usize,
}

impl Plan {
    fn from_args() -> Self {
        if std::env::args().any(|a| a == "--quick") {
            Self {
                days: 30,
                seeded: 36,
                warmup: 1,
                reps: 5,
            }
        } else {
            Self {
                days: 90,
                seeded: 96,
                warmup: 3,
                reps: 30,
            }
        }
    }
}

/// A small deterministic generator, so every run seeds the same numbers.
#[derive(Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn record(at: DateTime<Utc>, body: Body) -> Record {
    Record::new(
        DEVICE,
        BRIDGE,
        at.fixed_offset(),
        Provenance::sensed("bench/1"),
        body,
    )
}

/// One night `[start, start + 8 h)`: 90-minute cycles of light, deep, light and REM with a
/// few minutes awake between them.
fn night(start: DateTime<Utc>) -> Record {
    let s = start.fixed_offset();
    let mut stages = Vec::new();
    let mut t = s;
    let cycle = [
        (SleepStageKind::Light, 35),
        (SleepStageKind::Deep, 25),
        (SleepStageKind::Light, 10),
        (SleepStageKind::Rem, 15),
        (SleepStageKind::Awake, 5),
    ];
    while t < s + TimeDelta::hours(8) {
        for (kind, minutes) in cycle {
            let end = (t + TimeDelta::minutes(minutes)).min(s + TimeDelta::hours(8));
            if end > t {
                stages.push(SleepStage {
                    stage: kind,
                    time_interval: TimeInterval {
                        start_date_time: t,
                        end_date_time: end,
                    },
                });
            }
            t = end;
        }
    }
    let end = s + TimeDelta::hours(8);
    record(
        end.to_utc(),
        Body::SleepEpisode(SleepEpisode {
            effective_time_frame: IntervalFrame::new(s, end),
            is_main_sleep: true,
            latency_to_sleep_onset: None,
            total_sleep_time: None,
            number_of_awakenings: None,
            sleep_maintenance_efficiency_percentage: None,
            stages,
        }),
    )
}

/// What was seeded: the steps of each minute (`(start_ms, steps)`, for the check), how many
/// records, and the seconds `Store::ingest` took.
#[derive(Debug, Default)]
struct Seeded {
    steps: Vec<(i64, i64)>,
    records: usize,
    ingest_secs: f64,
}

/// The batches a bridge would publish (payloads), and what they hold.
fn workload(first: DateTime<Utc>, minutes: i64) -> anyhow::Result<(Vec<Vec<u8>>, Seeded)> {
    let mut rng = SplitMix(0x5eed);
    let mut batches = Vec::new();
    let mut steps = Vec::with_capacity(minutes as usize);
    let mut records = 0;
    for hour in 0..minutes / 60 {
        let mut batch = Vec::with_capacity(120);
        for m in 0..60 {
            let start = first + TimeDelta::minutes(hour * 60 + m);
            let end = start + TimeDelta::minutes(1);
            let r = rng.next() % 100;
            let count = match r {
                0..=59 => 0,
                60..=89 => (rng.next() % 120) as i64,
                _ => 120 + (rng.next() % 61) as i64,
            };
            steps.push((start.timestamp_millis(), count));
            batch.push(record(
                end,
                Body::StepCount(StepCount {
                    effective_time_frame: IntervalFrame::new(
                        start.fixed_offset(),
                        end.fixed_offset(),
                    ),
                    step_count: count,
                }),
            ));
            let bpm = 52.0 + (rng.next() % 60) as f64 + (rng.next() % 10) as f64 / 10.0;
            batch.push(record(
                start,
                Body::HeartRate(HeartRate {
                    effective_time_frame: PointFrame {
                        date_time: start.fixed_offset(),
                    },
                    heart_rate: UnitValue::new(bpm, BEATS_PER_MINUTE),
                }),
            ));
        }
        records += batch.len();
        let b = Batch::new(BRIDGE, DEVICE, Uuid::new_v4(), batch);
        batches.push(serde_json::to_vec(&b)?);
    }
    // A night ending every day, from 04:00 UTC (23:00 or midnight in New York).
    let mut start = first.duration_trunc(TimeDelta::days(1))? + TimeDelta::hours(4);
    while start + TimeDelta::hours(8) < first + TimeDelta::minutes(minutes) {
        if start >= first {
            let b = Batch::new(BRIDGE, DEVICE, Uuid::new_v4(), vec![night(start)]);
            batches.push(serde_json::to_vec(&b)?);
            records += 1;
        }
        start += TimeDelta::days(1);
    }
    Ok((
        batches,
        Seeded {
            steps,
            records,
            ingest_secs: 0.0,
        },
    ))
}

/// Seeds `days` days ending now through `Store::ingest`.
fn seed(store: &Store, days: i64, now: DateTime<Utc>) -> anyhow::Result<Seeded> {
    let zone = Zone::resolve(Some(ZONE));
    let today = now.with_timezone(&zone.tz).date_naive();
    let first_day = today - TimeDelta::days(days - 1);
    let first = zone.day(first_day).context("first day")?.start.to_utc();
    // The last minute ends two minutes before now: nothing lies in the future.
    let minutes = ((now - first).num_minutes() - 2) / 60 * 60;
    store.add_person(PERSON, "Bench Person", ZONE)?;
    store.grant_storage_consent(PERSON, &RecordType::ALL)?;
    store.add_device(DEVICE, BRIDGE, Some("phr-reference-band"))?;
    store.bind(DEVICE, PERSON, first - TimeDelta::hours(1))?;
    let (batches, mut seeded) = workload(first, minutes)?;
    let records = seeded.records;
    let limits = Limits::default();
    let mut stored = 0u64;
    let started = Instant::now();
    for group in batches.chunks(GROUP) {
        let checked = group
            .iter()
            .map(|p| ingest::check(p, BRIDGE, DEVICE, now, &limits))
            .collect();
        let acks = store.ingest(checked, now)?;
        stored += acks.iter().map(|a| u64::from(a.stored)).sum::<u64>();
    }
    let secs = started.elapsed().as_secs_f64();
    ensure!(
        stored as usize == records,
        "Store::ingest stored {stored} of {records} records"
    );
    store.grant_consent(
        PERSON,
        Terms {
            grantee: CLINICIAN.into(),
            grantee_kind: GranteeKind::Practitioner,
            purpose: "care".into(),
            data_types: RecordType::ALL.to_vec(),
            window_from: None,
            window_to: None,
            valid_until: None,
        },
        PERSON,
        now,
    )?;
    seeded.ingest_secs = secs;
    Ok(seeded)
}

/// `Store::ingest` rows/s into a fresh store, with the rollup's triggers or without them;
/// and how many records.
fn ingest_rate(days: i64, rollup: bool, now: DateTime<Utc>) -> anyhow::Result<(f64, usize)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("phr.sqlite");
    let store = Store::open(&path)?;
    if !rollup {
        Connection::open(&path)?.execute_batch(
            "DROP TRIGGER series_slots_stored; DROP TRIGGER series_slots_erased;
             DROP TRIGGER series_slots_moved;",
        )?;
    }
    let seeded = seed(&store, days, now)?;
    Ok((seeded.records as f64 / seeded.ingest_secs, seeded.records))
}

fn principal(subject: &str, scope: &str) -> Principal {
    Principal {
        subject: subject.into(),
        scopes: vec![scope.into()],
    }
}

/// Milliseconds of `reps` timed runs of `f`, after `warmup` untimed ones.
fn time(plan: Plan, mut f: impl FnMut() -> anyhow::Result<usize>) -> anyhow::Result<Vec<f64>> {
    for _ in 0..plan.warmup {
        std::hint::black_box(f()?);
    }
    let mut out = Vec::with_capacity(plan.reps);
    for _ in 0..plan.reps {
        let started = Instant::now();
        std::hint::black_box(f()?);
        out.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

fn page(store: &Store, who: &Principal, days: u32, print: bool) -> anyhow::Result<String> {
    let q = ViewQuery {
        person_id: PERSON.into(),
        days,
        to: None,
        night: None,
    };
    let view = PatientView::read(store, who, &q, Utc::now())?;
    Ok(render(&view, print))
}

fn render(view: &PatientView, print: bool) -> String {
    let opts = patient::Options {
        base: clinician::patient_path(PERSON),
        print,
        own: false,
    };
    patient::render(view, &opts).into_string()
}

/// `data-date` → steps of the page's `table#daily-steps`.
fn table_steps(html: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    let start = html
        .find("<table id=\"daily-steps\"")
        .context("no table#daily-steps")?;
    let end = start + html[start..].find("</table>").context("table end")?;
    let mut out = BTreeMap::new();
    for chunk in html[start..end].split("<tr data-date=\"").skip(1) {
        let date = chunk.get(..10).context("date")?.to_owned();
        let cell = chunk
            .split("<td class=\"num steps\">")
            .nth(1)
            .and_then(|c| c.split("</td>").next())
            .context("steps cell")?;
        out.insert(date, cell.parse()?);
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let plan = Plan::from_args();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("phr.sqlite");
    let store = Store::open(&path)?;
    let now = Utc::now().duration_trunc(TimeDelta::minutes(1))?;
    eprintln!(
        "seeding {} days of minute-level data through Store::ingest...",
        plan.seeded
    );
    let started = Instant::now();
    let Seeded {
        steps,
        records,
        ingest_secs,
    } = seed(&store, plan.seeded, now)?;
    eprintln!(
        "seeded {records} records in {:.1} s ({:.1} s in Store::ingest)",
        started.elapsed().as_secs_f64(),
        ingest_secs
    );

    let doctor = principal(CLINICIAN, "user/Observation.rs");
    let owner = principal(PERSON, "patient/*.cruds");

    // The page holds exactly the seeded daily totals.
    let html = page(&store, &doctor, plan.days, false)?;
    let zone = Zone::resolve(Some(ZONE));
    let today = Utc::now().with_timezone(&zone.tz).date_naive();
    let days = zone.days(today - TimeDelta::days(i64::from(plan.days) - 1), today);
    let mut expected = BTreeMap::new();
    for d in &days {
        let total: i64 = steps
            .iter()
            .filter(|(t, _)| *t >= d.start_ms && *t < d.end_ms)
            .map(|(_, s)| s)
            .sum();
        if steps.iter().any(|(t, _)| *t >= d.start_ms && *t < d.end_ms) {
            expected.insert(d.date.to_string(), total);
        }
    }
    let got = table_steps(&html)?;
    if got != expected {
        bail!(
            "table#daily-steps differs from the seeded totals ({} vs {} days)",
            got.len(),
            expected.len()
        );
    }
    let svgs = html.matches("<svg").count();
    ensure!(svgs == 5, "{svgs} charts on the page");
    eprintln!(
        "page checked: {} days with steps, {} bytes of HTML, {svgs} charts",
        got.len(),
        html.len()
    );

    // The references: the daily step sums alone, on a bare connection to the same file, as
    // the gateway queries them (the 5-minute rollup) and straight from the records.
    let read_days = zone.days(PatientView::read_from(today, plan.days), today);
    let windows: Vec<DayWindow> = read_days
        .iter()
        .filter_map(|d| d.clip((i64::MIN, i64::MAX)))
        .collect();
    let mut slot_bounds = Vec::new();
    for (i, w) in windows.iter().enumerate() {
        let (whole, rest) = slots(w.from_ms, w.to_ms);
        ensure!(
            rest.is_empty(),
            "a local day that is not whole 5-minute intervals"
        );
        if let Some((a, b)) = whole {
            slot_bounds.push([i as i64, a, b]);
        }
    }
    let slot_bounds = serde_json::to_string(&slot_bounds)?;
    let record_bounds = serde_json::to_string(
        &windows
            .iter()
            .enumerate()
            .map(|(i, w)| [i as i64, w.from_ms, w.to_ms])
            .collect::<Vec<_>>(),
    )?;
    let bare = Connection::open(&path)?;
    bare.execute_batch(phr_gateway::store::PRAGMAS)?;
    let rollup_sql = "WITH d(i, a, b) AS (
                          SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
                                 json_extract(value, '$[2]')
                            FROM json_each(?2))
                      SELECT d.i, CAST(round(SUM(s.total)) AS INTEGER), SUM(s.records)
                        FROM d CROSS JOIN series_slots s
                       WHERE s.person_id = ?1 AND s.record_type = 'step-count'
                         AND s.slot >= d.a AND s.slot < d.b
                       GROUP BY d.i";
    let records_sql = "WITH d(i, s, e) AS (
                           SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
                                  json_extract(value, '$[2]')
                             FROM json_each(?2))
                       SELECT d.i, SUM(json_extract(r.body, '$.body.step_count')), COUNT(*)
                         FROM d CROSS JOIN records r
                        WHERE r.person_id = ?1 AND r.record_type = 'step-count'
                          AND r.start_ms >= d.s AND r.start_ms < d.e
                        GROUP BY d.i";
    let sums = |sql: &str, bounds: &str| -> anyhow::Result<Vec<(i64, i64)>> {
        let mut stmt = bare.prepare_cached(sql)?;
        let rows = stmt
            .query_map(params![PERSON, bounds], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    };
    ensure!(
        sums(rollup_sql, &slot_bounds)? == sums(records_sql, &record_bounds)?,
        "the rollup's daily sums differ from the records'"
    );

    let before = store.disclosures(PERSON, 0, 1_000_000)?.len();
    let mut rows: Vec<(&str, Vec<f64>)> = Vec::new();
    let label = |s: &str| s.replace("{d}", &plan.days.to_string());
    let l1 = label("(1) patient page, clinician, {d} days (read + render)");
    rows.push((
        &l1,
        time(plan, || Ok(page(&store, &doctor, plan.days, false)?.len()))?,
    ));
    let l2 = label("(2) patient page, owner, {d} days");
    rows.push((
        &l2,
        time(plan, || Ok(page(&store, &owner, plan.days, false)?.len()))?,
    ));
    rows.push((
        "(3) patient page, clinician, 30 days",
        time(plan, || Ok(page(&store, &doctor, 30, false)?.len()))?,
    ));
    rows.push((
        "(4) visit summary (print=1), clinician",
        time(plan, || Ok(page(&store, &doctor, 30, true)?.len()))?,
    ));
    rows.push((
        "(5) clinician panel, 1 patient",
        time(plan, || {
            let mut r = clinician::panel_rows(&store, &doctor, Utc::now())?;
            clinician::sort_rows(&mut r, clinician::Sort::Flags);
            Ok(clinician::render_panel(&r, clinician::Sort::Flags)
                .into_string()
                .len())
        })?,
    ));
    let q = ViewQuery {
        person_id: PERSON.into(),
        days: plan.days,
        to: None,
        night: None,
    };
    let l6 = label("(6) `read_patient_view` only, clinician, {d} days");
    rows.push((
        &l6,
        time(plan, || {
            Ok(PatientView::read(&store, &doctor, &q, Utc::now())?.records as usize)
        })?,
    ));
    let view = PatientView::read(&store, &doctor, &q, Utc::now())?;
    let l7 = label("(7) `patient::render` only, {d} days (HTML + 5 SVG charts)");
    rows.push((&l7, time(plan, || Ok(render(&view, false).len()))?));
    let n = read_days.len();
    let l8 =
        format!("(8) reference: the daily step-sum SQL alone (rollup), bare rusqlite, {n} days");
    rows.push((
        &l8,
        time(plan, || Ok(sums(rollup_sql, &slot_bounds)?.len()))?,
    ));
    let l9 = format!(
        "(9) reference: `Store::daily_steps` (the same query and its bookkeeping), {n} days"
    );
    rows.push((
        &l9,
        time(plan, || {
            let mut s = DailySummary::new(PERSON, &zone, read_days[0].date, read_days[n - 1].date);
            Ok(store.daily_steps(PERSON, &windows, &mut s)? as usize)
        })?,
    ));
    let l10 = format!(
        "(10) reference: the same daily sums from the records' JSON bodies (no rollup), {n} days"
    );
    rows.push((
        &l10,
        time(plan, || Ok(sums(records_sql, &record_bounds)?.len()))?,
    ));
    let after = store.disclosures(PERSON, 0, 1_000_000)?.len();

    println!("\n| machine | |\n| --- | --- |");
    for (k, v) in phr_e2e::machine() {
        println!("| {k} | {v} |");
    }
    println!(
        "\n{records} records seeded ({} days of minute-level steps and heart rate, \
         a night per day); \
         {} timed runs per row after {} warm-up runs.\n",
        plan.seeded, plan.reps, plan.warmup
    );
    println!("| measurement | median ms | p95 ms | min .. max ms |");
    println!("| --- | --- | --- | --- |");
    let mut medians = Vec::new();
    for (what, ms) in &rows {
        let (median, p95, min, max) = stats(ms, 0.95);
        medians.push(median);
        println!("| {what} | {median:.1} | {p95:.1} | {min:.1} .. {max:.1} |");
    }
    println!("\n| ratio (of medians) | value |\n| --- | --- |");
    println!(
        "| (1) page / (8) step-sum SQL (rollup) | {:.1} |",
        medians[0] / medians[7]
    );
    println!(
        "| (1) page / (10) step sums from the records | {:.2} |",
        medians[0] / medians[9]
    );
    println!(
        "| (10) from the records / (8) rollup | {:.0} |",
        medians[9] / medians[7]
    );
    println!("| (6) read / (1) page | {:.2} |", medians[5] / medians[0]);
    println!("| (7) render / (1) page | {:.2} |", medians[6] / medians[0]);

    // What the rollup costs at ingest: `Store::ingest` into fresh stores with and without
    // its triggers, alternately.
    let ingest_days = if plan.reps < 30 { 2 } else { 10 };
    let (mut with, mut without, mut n) = (Vec::new(), Vec::new(), 0);
    for _ in 0..3 {
        let (rate, records) = ingest_rate(ingest_days, true, now)?;
        with.push(rate);
        without.push(ingest_rate(ingest_days, false, now)?.0);
        n = records;
    }
    let (w, wo) = (stats(&with, 0.95).0, stats(&without, 0.95).0);
    println!(
        "\n| `Store::ingest`, {n} records ({ingest_days} days), 64 batches per tx \
         | rows/s (median of 3) |\n| --- | --- |"
    );
    println!("| with the rollup's triggers | {w:.0} |");
    println!("| without them | {wo:.0} |");
    println!("| ratio | {:.2} |", w / wo);
    let (_, p95, _, _) = stats(&rows[0].1, 0.95);
    println!();
    let verdict = if plan.reps < 30 {
        "not judged (smoke run)"
    } else if p95 < 500.0 {
        "MET"
    } else {
        "NOT MET"
    };
    println!(
        "target: the {}-day patient page in well under 500 ms: {verdict} \
         (median {:.0} ms, p95 {p95:.0} ms)",
        plan.days, medians[0]
    );
    // Each clinician view wrote one entry; the owner's none.
    let clinician_views = (plan.warmup + plan.reps) * 5 + 1;
    println!(
        "disclosure-log entries written by the timed runs: {} (clinician views: {clinician_views})",
        after - before
    );
    ensure!(
        after - before == clinician_views,
        "expected one disclosure entry per clinician view"
    );
    Ok(())
}
