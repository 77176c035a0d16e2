//! One person's charts, as a clinician sees a consenting patient
//! (`/dashboard/clinician/patients/{person_id}`, see [`super::clinician`]) and as the owner
//! sees their own data (`GET /dashboard/me/charts`, here).
//!
//! Query: `days=30|90` (default 30), `night=YYYY-MM-DD` (the hypnogram's night, by the date
//! one woke up; default the latest staged main sleep), `print=1` (the one-page visit summary:
//! 30 days, flags, headline numbers, charts, weekly averages).
//!
//! The data comes from one [`crate::access::read_patient_view`] per request: the same consent and
//! window checks as the API, one disclosure-log entry per page view (none for the owner).
//! Each chart is an inline SVG ([`super::charts`]) in a `<figure>` with a caption and a data
//! table holding exactly the chart's numbers (`table#daily-steps`, `#night-stages`,
//! `#hypnogram`, `#sleep-timing`, `#resting-hr`, `#weekly`; one `tr[data-date]` per day or
//! night with data). Days without data have no row and no bar.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, NaiveDate, Utc};
use maud::{html, Markup, PreEscaped};
use serde::Deserialize;

use phr_schema::RecordType;

use super::charts::{self, thousands, ChartError, NightBar, Span, Timing};
use super::session::internal_error;
use super::{not_found, page, respond, Role, Viewer};
use crate::access::{AccessError, ViewQuery};
use crate::store::rollup::{Episode, StageSpan, RESTING_INTERVAL_MINUTES};
use crate::view::{
    Flags, Night, PatientView, MIN_PRIOR_DAYS, NO_DATA_DAYS, PRIOR_DAYS, RECENT_DAYS,
    SHORT_SLEEP_HOURS, SLEEP_NIGHTS, STEPS_DOWN_PERCENT, STEP_GOAL,
};
use crate::DashboardState;

/// The spans a page offers, in days.
pub const SPANS: [u32; 2] = [30, 90];
/// The visit summary's span.
pub const PRINT_DAYS: u32 = 30;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(super::owner::CHARTS, web::get().to(my_charts));
}

/// The query string of a patient page, as sent.
#[derive(Debug, Default, Deserialize)]
pub struct RawParams {
    days: Option<String>,
    night: Option<String>,
    print: Option<String>,
}

/// A patient page's parameters, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub days: u32,
    pub night: Option<NaiveDate>,
    pub print: bool,
}

impl Params {
    /// Checks `raw`; `Err` says what is wrong, for the 400 page.
    pub fn parse(raw: &RawParams) -> Result<Self, &'static str> {
        let days = match raw.days.as_deref() {
            None | Some("") => SPANS[0],
            Some(d) => d
                .parse()
                .ok()
                .filter(|d| SPANS.contains(d))
                .ok_or("days must be 30 or 90")?,
        };
        let night = match raw.night.as_deref() {
            None | Some("") => None,
            Some(n) => Some(
                NaiveDate::parse_from_str(n, "%Y-%m-%d")
                    .map_err(|_| "night must be a date YYYY-MM-DD")?,
            ),
        };
        let print = match raw.print.as_deref() {
            None | Some("") | Some("0") => false,
            Some("1") => true,
            Some(_) => return Err("print must be 1"),
        };
        Ok(Self {
            days: if print { PRINT_DAYS } else { days },
            night,
            print,
        })
    }
}

/// How a page links to itself.
#[derive(Debug, Clone)]
pub struct Options {
    /// The page's path, without query.
    pub base: String,
    pub print: bool,
    /// The owner looking at their own data (wording only).
    pub own: bool,
}

impl Options {
    fn href(&self, days: u32, night: Option<NaiveDate>, print: bool) -> String {
        let mut q = vec![format!("days={days}")];
        if let Some(n) = night {
            q.push(format!("night={n}"));
        }
        if print {
            q.push("print=1".into());
        }
        format!("{}?{}", self.base, q.join("&"))
    }
}

/// A path segment with everything but unreserved characters percent-encoded.
pub use crate::access::uri::encode as path_segment;

// ----- handlers -----

async fn my_charts(
    state: web::Data<DashboardState>,
    viewer: Viewer,
    query: Result<web::Query<RawParams>, actix_web::Error>,
) -> HttpResponse {
    if viewer.role != Role::Owner {
        return not_found(Some(&viewer));
    }
    let person = viewer.subject.clone();
    serve(
        state,
        viewer,
        person,
        query,
        super::owner::CHARTS.to_owned(),
        true,
    )
    .await
}

/// Answers a patient page: parameters, the read, the page; 404 (the same page as for an
/// unknown address) when the viewer has no consent of this person in force.
pub(crate) async fn serve(
    state: web::Data<DashboardState>,
    viewer: Viewer,
    person_id: String,
    query: Result<web::Query<RawParams>, actix_web::Error>,
    base: String,
    own: bool,
) -> HttpResponse {
    let Ok(raw) = query.map(|q| q.into_inner()) else {
        return bad_request(&viewer, "the query string could not be read");
    };
    let params = match Params::parse(&raw) {
        Ok(p) => p,
        Err(why) => return bad_request(&viewer, why),
    };
    let opts = Options {
        base,
        print: params.print,
        own,
    };
    let q = ViewQuery {
        person_id,
        days: params.days,
        to: None,
        night: params.night,
    };
    let principal = super::principal(&viewer);
    let (store, now) = (state.store.clone(), state.clock.now());
    let read = web::block(move || {
        let view = PatientView::read(&store, &principal, &q, now)?;
        let body = render(&view, &opts);
        Ok::<_, AccessError>((title(&view, &opts), body))
    })
    .await;
    match read {
        Ok(Ok((title, body))) => page(&title, Some(&viewer), body),
        Ok(Err(AccessError::NotFound | AccessError::Forbidden)) => not_found(Some(&viewer)),
        Ok(Err(AccessError::OutsideWindow)) => respond(
            StatusCode::FORBIDDEN,
            "Outside the consented window",
            Some(&viewer),
            html! {
                h1 { "Outside the consented window" }
                p { "The consent in force covers none of these days." }
            },
        ),
        Ok(Err(AccessError::Store(e))) => {
            tracing::error!(error = %e, "patient page: store call failed");
            internal_error(Some(&viewer))
        }
        Err(_) => internal_error(Some(&viewer)),
    }
}

fn bad_request(viewer: &Viewer, why: &str) -> HttpResponse {
    respond(
        StatusCode::BAD_REQUEST,
        "Bad request",
        Some(viewer),
        html! { h1 { "Bad request" } p { (why) } },
    )
}

// ----- formatting -----

fn title(view: &PatientView, opts: &Options) -> String {
    match (opts.own, opts.print) {
        (true, _) => "My charts".to_owned(),
        (false, true) => format!("Visit summary: {}", view.display_name),
        (false, false) => view.display_name.clone(),
    }
}

/// Minutes as `7 h 05 min`.
pub fn hours_minutes(minutes: f64) -> String {
    let m = minutes.round() as i64;
    format!("{} h {:02} min", m / 60, m % 60)
}

/// A number of minutes as stored: whole when whole, else one decimal.
fn minutes_cell(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.1}")
    }
}

fn when(t: DateTime<Utc>, view: &PatientView) -> String {
    t.with_timezone(&view.tz)
        .format("%Y-%m-%d %H:%M %Z")
        .to_string()
}

/// Hours from the local midnight that starts `night` to `t`, by the wall clock (so 23:00 the
/// evening before is -1 whatever the DST change between).
fn clock_hours(night: NaiveDate, t: DateTime<chrono::FixedOffset>) -> f64 {
    let midnight = night.and_time(chrono::NaiveTime::MIN);
    (t.naive_local() - midnight).num_seconds() as f64 / 3600.0
}

fn stages_of(m: &phr_schema::fhir::StageMinutes) -> charts::Stages {
    [m.deep, m.light, m.rem, m.awake]
}

/// A chart, or a note where it could not be drawn (the table still has the numbers).
fn svg(chart: Result<String, ChartError>) -> Markup {
    match chart {
        Ok(s) => PreEscaped(s),
        Err(e) => {
            tracing::warn!(error = %e, "chart not drawn");
            html! {
                p class="muted" { "(The chart could not be drawn; the table has its data.)" }
            }
        }
    }
}

fn not_shared(what: &str, own: bool) -> Markup {
    html! {
        p class="muted not-shared" {
            @if own { "No " (what) " records." } @else { (what) " is not shared with you." }
        }
    }
}

/// The flags as list items; `short` for the panel (the details in a tooltip).
pub fn flag_items(f: &Flags, short: bool) -> Markup {
    let steps = f.steps.filter(|_| f.steps_down).map(|t| {
        (
            format!("Steps down {:.0}%", -t.change_percent),
            format!(
                "Steps down {:.0}%: {}/day over the last {RECENT_DAYS} complete days against \
                 {}/day over the {PRIOR_DAYS} days before",
                -t.change_percent,
                round_thousands(t.recent_mean),
                round_thousands(t.prior_mean)
            ),
        )
    });
    let sleep = f.mean_sleep_hours.filter(|_| f.short_sleep).map(|h| {
        (
            format!("Sleep {}", hours_minutes(h * 60.0)),
            format!(
                "Mean sleep {} over the last {SLEEP_NIGHTS} nights with data \
                 (under {SHORT_SLEEP_HOURS} h)",
                hours_minutes(h * 60.0)
            ),
        )
    });
    let silent = f.no_data.then(|| match f.days_since_data {
        Some(d) => (format!("No data {d} days"), format!("No data for {d} days")),
        None => ("No data".to_owned(), "No data in the days read".to_owned()),
    });
    html! {
        @for (kind, text) in [("steps-down", steps), ("short-sleep", sleep), ("no-data", silent)] {
            @if let Some((brief, full)) = text {
                @if short {
                    li class="flag" data-flag=(kind) title=(full) { (brief) }
                } @else {
                    li class="flag" data-flag=(kind) { (full) }
                }
            }
        }
    }
}

// ----- the page -----

/// What the sections of one page share: the days shown and the chart data aligned with them.
struct Page<'a> {
    view: &'a PatientView,
    opts: &'a Options,
    /// Every day shown, in order.
    dates: Vec<NaiveDate>,
    /// `"YYYY-MM-DD to YYYY-MM-DD"`.
    period: String,
    nights: Vec<Night>,
}

impl Page<'_> {
    fn shown(&self, d: NaiveDate) -> bool {
        d >= self.view.from() && d <= self.view.to
    }

    fn night(&self, d: NaiveDate) -> Option<&Night> {
        self.nights.iter().find(|n| n.date == d)
    }

    fn episodes(&self, d: NaiveDate) -> impl Iterator<Item = &Episode> {
        self.view.episodes.iter().filter(move |e| e.night == d)
    }
}

/// The page body of `view`.
pub fn render(view: &PatientView, opts: &Options) -> Markup {
    let page = Page {
        view,
        opts,
        dates: view.dates(),
        period: format!("{} to {}", view.from(), view.to),
        nights: view.nights(),
    };
    let flags = view.flags();
    html! {
        div class={ "patient" @if opts.print { " visit-summary" } } {
            (head(&page))
            section class="triage" aria-labelledby="flags-h" {
                h2 id="flags-h" { "Flags" }
                @if flags.count() == 0 {
                    p class="muted" id="flags" { "None." }
                } @else {
                    ul class="flags" id="flags" { (flag_items(&flags, false)) }
                }
            }
            (headline(&page, &flags))
            div class="charts" {
                @if view.shows(RecordType::StepCount) {
                    (steps_section(&page))
                } @else {
                    (not_shared("Steps", opts.own))
                }
                @if view.shows(RecordType::SleepEpisode) {
                    (sleep_section(&page))
                } @else {
                    (not_shared("Sleep", opts.own))
                }
                @if view.shows(RecordType::HeartRate) {
                    (heart_section(&page))
                } @else {
                    (not_shared("Heart rate", opts.own))
                }
            }
            (weekly_section(view))
            (definitions(view, opts))
        }
    }
}

fn head(page: &Page<'_>) -> Markup {
    let (view, opts) = (page.view, page.opts);
    let zone = &view.summary.time_zone;
    html! {
        header class="patient-head" {
            h1 {
                @if opts.print { "Visit summary: " }
                @if opts.own && !opts.print { "My charts" } @else { (view.display_name) }
            }
            p class="muted" {
                "Person " code { (view.person_id) } " · " (page.period)
                " (" (view.days) " days) · days and nights in " (zone.name)
                @if zone.fallback { " (no known time zone registered; UTC used)" }
                " · last sync: "
                @match view.last_sync { Some(t) => (when(t, view)), None => "never" }
            }
            @if opts.print {
                p class="no-print" {
                    "Print with your browser (Ctrl+P or ⌘P); the summary fits one page. "
                    a href=(opts.href(SPANS[0], view.night, false)) { "Back to the full view" }
                }
            } @else {
                nav class="spans" aria-label="Period" {
                    @for d in SPANS {
                        @if d == view.days {
                            span class="current" aria-current="page" { (d) " days" }
                        } @else {
                            a href=(opts.href(d, view.night, false)) { (d) " days" }
                        }
                    }
                    a href=(opts.href(PRINT_DAYS, None, true)) { "Printable visit summary" }
                }
            }
        }
    }
}

fn headline(page: &Page<'_>, flags: &Flags) -> Markup {
    let view = page.view;
    let recent: Vec<i64> = view.recent_steps().iter().filter_map(|(_, s)| *s).collect();
    let recent_mean = (!recent.is_empty()).then(|| mean_i64(&recent));
    let resting: Vec<f64> = view
        .resting
        .iter()
        .filter(|r| (view.to - r.date).num_days() < RECENT_DAYS)
        .map(|r| r.bpm)
        .collect();
    let or_none = |v: Option<String>, none: &str| v.unwrap_or_else(|| none.to_owned());
    html! {
        section class="headline" aria-labelledby="headline-h" {
            h2 id="headline-h" { "At a glance" }
            dl class="headline" {
                @if view.shows(RecordType::StepCount) {
                    div {
                        dt { "Steps/day, last " (RECENT_DAYS) " complete days" }
                        dd { (or_none(recent_mean.map(round_thousands), "no data")) }
                    }
                    div {
                        dt { "Steps/day, " (PRIOR_DAYS) " days before" }
                        dd {
                            (or_none(flags.steps.map(|t| round_thousands(t.prior_mean)),
                                "too few days"))
                        }
                    }
                }
                @if view.shows(RecordType::SleepEpisode) {
                    div {
                        dt { "Sleep/night, last " (SLEEP_NIGHTS) " nights" }
                        dd {
                            (or_none(flags.mean_sleep_hours.map(|h| hours_minutes(h * 60.0)),
                                "no data"))
                        }
                    }
                }
                @if view.shows(RecordType::HeartRate) {
                    div {
                        dt { "Resting heart rate, last " (RECENT_DAYS) " days" }
                        dd {
                            @if resting.is_empty() { "no data" } @else {
                                (format!("{:.0}", mean_f64(&resting)))
                                " bpm"
                            }
                        }
                    }
                }
                div {
                    dt { "Days with data, last 14" }
                    dd { (view.coverage(14)) " of 14" }
                }
            }
        }
    }
}

fn mean_f64(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn mean_i64(v: &[i64]) -> f64 {
    v.iter().sum::<i64>() as f64 / v.len() as f64
}

fn round_thousands(v: f64) -> String {
    thousands(v.round() as i64)
}

/// A `<details>` with the data table of a chart.
fn data_table(id: &str, head: Markup, rows: Markup) -> Markup {
    html! {
        details {
            summary { "Data table" }
            table id=(id) class="data" {
                thead { tr { (head) } }
                tbody { (rows) }
            }
        }
    }
}

fn steps_section(page: &Page<'_>) -> Markup {
    let view = page.view;
    let steps = view.steps();
    let partial = view.partial_days();
    let values: Vec<Option<i64>> = page.dates.iter().map(|d| steps.get(d).copied()).collect();
    let rolling: Vec<Option<f64>> = page
        .dates
        .iter()
        .map(|d| PatientView::rolling_mean(&steps, *d))
        .collect();
    let goal = thousands(STEP_GOAL);
    let label = format!(
        "Daily steps, {}, with the 7-day mean and the goal of {goal} steps",
        page.period
    );
    let rows = html! {
        @for (d, (s, r)) in page.dates.iter().zip(values.iter().zip(&rolling)) {
            @if let Some(s) = s {
                tr data-date=(d) {
                    th scope="row" { (d) @if partial.contains(d) { " (part of the day)" } }
                    td class="num steps" { (s) }
                    td class="num mean" { @if let Some(r) = r { (format!("{r:.0}")) } }
                }
            }
        }
    };
    html! {
        section id="steps" aria-labelledby="steps-h" {
            h2 id="steps-h" { "Daily steps" }
            figure {
                figcaption {
                    "Steps per local day (bars), the 7-day rolling mean over the days with "
                    "data (line, broken by days without data) and the goal of " (goal)
                    " steps (dashed). Days without data have no bar."
                }
                (svg(charts::steps(&label, &page.dates, &values, &rolling, Some(STEP_GOAL))))
                (data_table("daily-steps", html! {
                    th scope="col" { "Date" }
                    th scope="col" class="num" { "Steps" }
                    th scope="col" class="num" { "7-day mean" }
                }, rows))
            }
        }
    }
}

fn night_bar(n: &Night) -> NightBar {
    let main = n
        .main
        .as_ref()
        .and_then(|m| m.stages.as_ref())
        .map(stages_of);
    let other = n.other_stages.as_ref().map(stages_of);
    NightBar {
        main,
        other,
        unstaged_asleep: n
            .sleep
            .total_minutes
            .filter(|_| main.is_none() && other.is_none()),
    }
}

fn sleep_section(page: &Page<'_>) -> Markup {
    let (view, opts) = (page.view, page.opts);
    let bars: Vec<Option<NightBar>> = page
        .dates
        .iter()
        .map(|d| page.night(*d).map(night_bar))
        .collect();
    let timings: Vec<Vec<(Timing, &Episode)>> = page
        .dates
        .iter()
        .map(|d| {
            let main = page.night(*d).and_then(|n| n.main.as_ref());
            page.episodes(*d)
                .map(|e| {
                    let t = Timing {
                        bed_hours: clock_hours(*d, e.start),
                        wake_hours: clock_hours(*d, e.end),
                        main: main == Some(e),
                    };
                    (t, e)
                })
                .collect()
        })
        .collect();
    // A second device's copy of a night is listed below, not drawn over the night.
    let timing_bars: Vec<Vec<Timing>> = timings
        .iter()
        .map(|ts| {
            ts.iter()
                .filter(|(_, e)| !e.duplicate)
                .map(|(t, _)| *t)
                .collect()
        })
        .collect();
    let stage_rows = html! {
        @for n in page.nights.iter().filter(|n| page.shown(n.date)) {
            tr data-date=(n.date) {
                th scope="row" {
                    @if opts.print { (n.date) } @else {
                        a href={ (opts.href(view.days, Some(n.date), false)) "#hypnogram-h" } {
                            (n.date)
                        }
                    }
                }
                @match n.sleep.stages {
                    Some(s) => {
                        td class="num deep" { (minutes_cell(s.deep)) }
                        td class="num light" { (minutes_cell(s.light)) }
                        td class="num rem" { (minutes_cell(s.rem)) }
                        td class="num awake" { (minutes_cell(s.awake)) }
                    },
                    None => { td {} td {} td {} td {} },
                }
                td class="num asleep" {
                    @if let Some(a) = n.sleep.total_minutes { (minutes_cell(a)) }
                }
                td class="num in-bed" { (minutes_cell(n.sleep.in_bed_minutes)) }
                td class="num episodes" { (n.sleep.episodes) }
                td class="main" {
                    @if let Some(m) = &n.main {
                        (m.start.format("%H:%M")) "–" (m.end.format("%H:%M"))
                    } @else { "none marked" }
                }
            }
        }
    };
    let timing_rows = html! {
        @for (d, ts) in page.dates.iter().zip(&timings) {
            @for (t, e) in ts {
                tr data-date=(d) {
                    th scope="row" { (d) }
                    td class="bed" { (e.start.format("%Y-%m-%d %H:%M")) }
                    td class="wake" { (e.end.format("%Y-%m-%d %H:%M")) }
                    td class="main" {
                        @if e.duplicate {
                            "duplicate (" code { (e.device_id) } "), not counted"
                        } @else if t.main { "yes" } @else { "no" }
                    }
                }
            }
        }
    };
    let period = &page.period;
    html! {
        section id="sleep" aria-labelledby="sleep-h" {
            h2 id="sleep-h" { "Sleep" }
            figure {
                figcaption {
                    "Hours per stage each night (deep, light, REM, awake), the night counted on "
                    "the day one wakes up. The main-sleep episode is outlined; other episodes "
                    "are paler, on top."
                }
                (svg(charts::sleep_stages(
                    &format!("Sleep stages per night, {period}"), &page.dates, &bars)))
                (data_table("night-stages", html! {
                    th scope="col" { "Night" }
                    th scope="col" class="num" { "Deep (min)" }
                    th scope="col" class="num" { "Light (min)" }
                    th scope="col" class="num" { "REM (min)" }
                    th scope="col" class="num" { "Awake (min)" }
                    th scope="col" class="num" { "Asleep (min)" }
                    th scope="col" class="num" { "In bed (min)" }
                    th scope="col" class="num" { "Episodes" }
                    th scope="col" { "Main sleep" }
                }, stage_rows))
            }
            @if !opts.print {
                (hypnogram_figure(view, view.hypnogram().as_ref(), opts))
            }
            figure {
                figcaption {
                    "Sleep timing: each episode from bed (its start) to waking (its end) on the "
                    "local clock, the main-sleep episode in blue."
                }
                (svg(charts::sleep_timing(
                    &format!("Bed and wake times per night, {period}"), &page.dates, &timing_bars)))
                (data_table("sleep-timing", html! {
                    th scope="col" { "Night" }
                    th scope="col" { "Bed" }
                    th scope="col" { "Wake" }
                    th scope="col" { "Main sleep" }
                }, timing_rows))
            }
        }
    }
}

fn heart_section(page: &Page<'_>) -> Markup {
    let view = page.view;
    let resting: Vec<_> = view.resting.iter().filter(|r| page.shown(r.date)).collect();
    let bpm: Vec<Option<f64>> = page
        .dates
        .iter()
        .map(|d| view.resting.iter().find(|r| r.date == *d).map(|r| r.bpm))
        .collect();
    let rows = html! {
        @for r in &resting {
            tr data-date=(r.date) {
                th scope="row" { (r.date) }
                td class="num bpm" { (format!("{:.1}", r.bpm)) }
                td class="num readings" { (r.readings) }
            }
        }
    };
    let label = format!("Resting heart rate per day, {}", page.period);
    html! {
        section id="heart" aria-labelledby="heart-h" {
            h2 id="heart-h" { "Resting heart rate" }
            @if resting.is_empty() {
                p class="muted" { "No heart-rate records in these days." }
            } @else {
                figure {
                    figcaption {
                        "Resting heart rate per local day: the lowest mean over the day's "
                        (RESTING_INTERVAL_MINUTES) "-minute clock intervals, in beats per minute."
                    }
                    (svg(charts::resting_heart_rate(&label, &page.dates, &bpm)))
                    (data_table("resting-hr", html! {
                        th scope="col" { "Date" }
                        th scope="col" class="num" { "Resting heart rate (bpm)" }
                        th scope="col" class="num" { "Readings" }
                    }, rows))
                }
            }
        }
    }
}

fn weekly_section(view: &PatientView) -> Markup {
    let steps = view.shows(RecordType::StepCount);
    let sleep = view.shows(RecordType::SleepEpisode);
    let heart = view.shows(RecordType::HeartRate);
    let dash = |v: Option<String>| v.unwrap_or_else(|| "–".to_owned());
    html! {
        section id="weekly" aria-labelledby="weekly-h" {
            h2 id="weekly-h" { "Weekly averages" }
            table id="weekly" class="data" {
                caption { "Monday to Sunday, over the days with data" }
                thead { tr {
                    th scope="col" { "Week" }
                    @if steps {
                        th scope="col" class="num" { "Steps/day" }
                        th scope="col" class="num" { "Days" }
                    }
                    @if sleep {
                        th scope="col" class="num" { "Sleep/night" }
                        th scope="col" class="num" { "Nights" }
                    }
                    @if heart { th scope="col" class="num" { "Resting HR (bpm)" } }
                } }
                tbody {
                    @for w in view.weeks() {
                        tr data-week=(w.monday) {
                            th scope="row" { (w.from) " – " (w.to) }
                            @if steps {
                                td class="num" { (dash(w.mean_steps.map(round_thousands))) }
                                td class="num" { (w.step_days) }
                            }
                            @if sleep {
                                td class="num" {
                                    (dash(w.mean_sleep_hours.map(|h| hours_minutes(h * 60.0))))
                                }
                                td class="num" { (w.sleep_nights) }
                            }
                            @if heart {
                                td class="num" {
                                    (dash(w.mean_resting_bpm.map(|b| format!("{b:.0}"))))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn definitions(view: &PatientView, opts: &Options) -> Markup {
    let zone = &view.summary.time_zone.name;
    html! {
        section class="definitions muted" aria-labelledby="defs-h" {
            h2 id="defs-h" { "How these are counted" }
            ul {
                li {
                    "Days are local calendar days in " (zone) " (23 or 25 hours long across a "
                    "DST change). Steps count towards the day their record starts; a night "
                    "towards the day one wakes up."
                }
                li {
                    "Days without data are left out: no bar, no row, no zero; the 7-day mean "
                    "is over the days with data and breaks where a day has none."
                }
                li {
                    "Flags: steps down " (STEPS_DOWN_PERCENT) "% or more (mean of the last "
                    (RECENT_DAYS) " complete days against the " (PRIOR_DAYS) " days before, "
                    "only with at least " (MIN_PRIOR_DAYS) " days of data before); mean sleep "
                    "under " (SHORT_SLEEP_HOURS) " h over the last " (SLEEP_NIGHTS)
                    " nights with data; no data for " (NO_DATA_DAYS) " days or more."
                }
                li {
                    "Resting heart rate: the lowest mean over the day's "
                    (RESTING_INTERVAL_MINUTES) "-minute clock intervals."
                }
                @if !opts.own { li { "This view is recorded in the person's disclosure log." } }
            }
        }
    }
}

fn hypnogram_figure(view: &PatientView, hyp: Option<&Episode>, opts: &Options) -> Markup {
    let night = hyp.map(|e| e.night).or(view.night);
    html! {
        section class="hypnogram" aria-labelledby="hypnogram-h" {
            h3 id="hypnogram-h" {
                "Hypnogram"
                @if let Some(n) = night { ", night to " (n) }
            }
            form method="get" action=(opts.base) class="night-picker" {
                input type="hidden" name="days" value=(view.days);
                label for="night" { "Night (date of waking)" }
                " "
                input type="date" id="night" name="night" min=(view.from()) max=(view.to)
                    value=[night.map(|n| n.to_string())];
                " "
                button type="submit" { "Show" }
            }
            figure {
                @match hyp {
                    Some(e) if !e.spans.is_empty() => { (hypnogram(view, e)) },
                    Some(_) => {
                        figcaption { "The main-sleep episode of this night has no stages." }
                    },
                    None => {
                        figcaption {
                            @if view.night.is_some() { "No main-sleep episode ends on that day." }
                            @else { "No night with sleep stages in these days." }
                        }
                    },
                }
            }
        }
    }
}

fn hypnogram(view: &PatientView, e: &Episode) -> Markup {
    let spans: Vec<Span> = e
        .spans
        .iter()
        .map(|s| Span {
            stage: s.stage,
            start: s.start,
            end: s.end,
        })
        .collect();
    let label = format!("Sleep stages through the night to {}", e.night);
    let minutes = |s: &StageSpan| (s.end - s.start).num_milliseconds() as f64 / 60_000.0;
    html! {
        figcaption {
            "The stages of the main-sleep episode, " (e.start.format("%Y-%m-%d %H:%M"))
            " to " (e.end.format("%Y-%m-%d %H:%M")) " local time."
        }
        (svg(charts::hypnogram(&label, &spans, view.tz)))
        (data_table("hypnogram", html! {
            th scope="col" { "Stage" }
            th scope="col" { "From" }
            th scope="col" { "To" }
            th scope="col" class="num" { "Minutes" }
        }, html! {
            @for s in &e.spans {
                tr data-stage=(s.stage.as_str()) {
                    th scope="row" { (s.stage.as_str()) }
                    td { (s.start.format("%H:%M")) }
                    td { (s.end.format("%H:%M")) }
                    td class="num" { (minutes_cell(minutes(s))) }
                }
            }
        }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::view::fixture::{self, day, doctor, owner, NIA};

    /// The HTML of the table `id` (maud writes no newlines, so plain slicing will do).
    pub(crate) fn table<'a>(html: &'a str, id: &str) -> &'a str {
        let start = html
            .find(&format!("<table id=\"{id}\""))
            .unwrap_or_else(|| panic!("no table#{id}"));
        let end = html[start..].find("</table>").unwrap() + start;
        &html[start..end]
    }

    /// `(data-date, cell texts)` of every row with a date.
    pub(crate) fn rows(table: &str) -> Vec<(String, Vec<String>)> {
        table
            .split("<tr data-date=\"")
            .skip(1)
            .map(|chunk| {
                let date = chunk[..10].to_owned();
                let cells = chunk
                    .split("<td")
                    .skip(1)
                    .map(|c| {
                        let text = &c[c.find('>').unwrap() + 1..c.find("</td>").unwrap()];
                        text.to_owned()
                    })
                    .collect();
                (date, cells)
            })
            .collect()
    }

    fn view(store: &crate::store::Store, who: &crate::auth::Principal, days: u32) -> PatientView {
        let q = ViewQuery {
            person_id: NIA.into(),
            days,
            to: Some(day("2026-03-10")),
            night: None,
        };
        PatientView::read(store, who, &q, fixture::now()).unwrap()
    }

    fn page(view: &PatientView, print: bool, own: bool) -> String {
        render(
            view,
            &Options {
                base: "/x".into(),
                print,
                own,
            },
        )
        .into_string()
    }

    fn clean(html: &str) {
        let lower = html.to_lowercase();
        assert!(!lower.contains("<script"));
        assert!(!lower.contains("style="), "inline styles break the CSP");
        assert!(!lower.contains("javascript:"));
    }

    #[test]
    fn tables_carry_exactly_the_daily_totals_and_leave_gaps_out() {
        let (_dir, store) = fixture::store();
        for days in SPANS {
            let v = view(&store, &owner(NIA), days);
            let html = page(&v, false, true);
            clean(&html);
            let got: BTreeMap<String, i64> = rows(table(&html, "daily-steps"))
                .into_iter()
                .map(|(d, cells)| (d, cells[0].parse().unwrap()))
                .collect();
            let want: BTreeMap<String, i64> = fixture::nia_steps()
                .into_iter()
                .filter(|(d, _)| *d >= v.from())
                .map(|(d, s)| (d.to_string(), s))
                .collect();
            assert_eq!(got, want, "{days} days");
            assert!(!got.contains_key("2026-03-05"));
            assert_eq!(
                html.matches("<svg").count(),
                5,
                "steps, stages, hypnogram, timing, heart"
            );
        }
        let v = view(&store, &owner(NIA), 30);
        let html = page(&v, false, true);
        // The steps chart draws the table's numbers: one bar per row, as high as its steps,
        // in the column of its date.
        let steps = rows(table(&html, "daily-steps"));
        let section = &html[html.find("<section id=\"steps\"").unwrap()..];
        let chart = &section[..section.find("</svg>").unwrap()];
        let bars: Vec<charts::tests::Rect> = charts::tests::plotted_rects(chart)
            .into_iter()
            .filter(|r| r.fill == "#56B4E9")
            .collect();
        let values: Vec<f64> = steps.iter().map(|(_, c)| c[0].parse().unwrap()).collect();
        charts::tests::assert_heights_proportional(&bars, &values);
        charts::tests::assert_one_baseline(&bars);
        let first = day(&steps[0].0);
        let last = day(&steps[steps.len() - 1].0);
        let column =
            (bars[bars.len() - 1].centre() - bars[0].centre()) / (last - first).num_days() as f64;
        for ((d, _), b) in steps.iter().zip(&bars) {
            let offset = (day(d) - first).num_days() as f64 * column;
            assert!(
                (b.centre() - bars[0].centre() - offset).abs() <= 1.0,
                "{d} drawn at {}",
                b.centre()
            );
        }
        // The rolling mean on the 6th: over 02-28 .. 03-06 with data.
        let sixth = steps.iter().find(|(d, _)| d == "2026-03-06").unwrap();
        assert_eq!(sixth.1[1], "7500");
        // Nights: stage minutes of every episode ending that day.
        let nights = rows(table(&html, "night-stages"));
        assert_eq!(nights.len(), 7);
        let ninth = &nights.iter().find(|(d, _)| d == "2026-03-09").unwrap().1;
        assert_eq!(ninth[..7], ["60", "220", "45", "15", "325", "340", "2"]);
        assert_eq!(ninth[7], "23:50–04:50");
        let eighth = &nights.iter().find(|(d, _)| d == "2026-03-08").unwrap().1;
        assert_eq!(eighth[7], "00:30–06:30", "bed in EST, wake in EDT");
        let timing = rows(table(&html, "sleep-timing"));
        assert_eq!(timing.len(), 8, "7 main episodes and a nap");
        let rest = rows(table(&html, "resting-hr"));
        assert_eq!(
            rest,
            [
                (
                    "2026-03-08".to_owned(),
                    vec!["50.0".to_owned(), "2".to_owned()]
                ),
                (
                    "2026-03-09".to_owned(),
                    vec!["58.0".to_owned(), "4".to_owned()]
                )
            ]
        );
        // The hypnogram of the latest night, on the local clock.
        let hyp = table(&html, "hypnogram");
        assert!(hyp.contains("<td>23:40</td>"), "{hyp}");
        assert!(html.contains("local time (America/New_York"));
        // Flags and headline.
        assert!(html.contains("data-flag=\"steps-down\""));
        assert!(html.contains("data-flag=\"short-sleep\""));
        assert!(!html.contains("data-flag=\"no-data\""));
        assert!(html.contains("Okabe") || html.contains("#56B4E9"));
    }

    #[test]
    fn a_clinician_sees_only_consented_types_and_the_print_summary_is_30_days() {
        let (_dir, store) = fixture::store();
        let v = view(&store, &doctor(), 90);
        let html = page(&v, false, false);
        clean(&html);
        assert!(html.contains("Sleep is not shared with you."));
        assert!(!html.contains("id=\"night-stages\""));
        assert!(!html.contains("id=\"hypnogram\""));
        let steps = rows(table(&html, "daily-steps"));
        assert_eq!(
            steps.first().unwrap().0,
            "2026-02-06",
            "the consent's window starts"
        );
        assert!(html.contains("recorded in the person's disclosure log"));

        let raw = RawParams {
            days: Some("90".into()),
            night: None,
            print: Some("1".into()),
        };
        let p = Params::parse(&raw).unwrap();
        assert_eq!((p.days, p.print), (30, true));
        let v = view(&store, &owner(NIA), p.days);
        let html = page(&v, true, false);
        clean(&html);
        assert!(html.contains("visit-summary"));
        assert!(html.contains("Visit summary: "));
        assert!(!html.contains("night-picker"), "no form in print");
        assert_eq!(
            rows(table(&html, "daily-steps")).len(),
            29,
            "30 days, one gap"
        );
        assert!(html.contains("id=\"weekly\""));
    }

    #[test]
    fn parameters() {
        let p = |days: Option<&str>, night: Option<&str>, print: Option<&str>| {
            Params::parse(&RawParams {
                days: days.map(Into::into),
                night: night.map(Into::into),
                print: print.map(Into::into),
            })
        };
        assert_eq!(p(None, None, None).unwrap().days, 30);
        assert_eq!(p(Some("90"), None, None).unwrap().days, 90);
        assert!(p(Some("7"), None, None).is_err());
        assert!(p(Some("x"), None, None).is_err());
        assert_eq!(
            p(None, Some("2026-03-08"), None).unwrap().night,
            Some(day("2026-03-08"))
        );
        assert!(p(None, Some("2026-02-30"), None).is_err());
        assert!(p(None, None, Some("yes")).is_err());
        assert_eq!(path_segment("a b/ü"), "a%20b%2F%C3%BC");
        assert_eq!(hours_minutes(285.0), "4 h 45 min");
        assert_eq!(minutes_cell(240.0), "240");
        assert_eq!(minutes_cell(0.5), "0.5");
    }
}
