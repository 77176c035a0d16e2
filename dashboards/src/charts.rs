//! SVG charts, drawn by plotters' SVG backend into strings that pages embed inline.
//!
//! - [`steps`]: daily bars, the 7-day rolling mean as a line and the goal as a dashed line.
//! - [`sleep_stages`]: one stacked bar per night (deep, light, REM, awake), the main-sleep
//!   episode outlined, other episodes paler on top.
//! - [`hypnogram`]: the stages of one episode as a step line over stage levels.
//! - [`sleep_timing`]: bed to wake per night as a range on the local clock.
//! - [`resting_heart_rate`]: a line with points per day.
//! - [`sparkline`]: seven tiny bars, no text.
//!
//! Days without data are gaps: no bar, and lines break there. Colours are the Okabe-Ito
//! colour-blind-safe palette ([`okabe_ito`]); every axis names its unit.
//!
//! Text: plotters is built without its `ttf` and `ab_glyph` features, so it measures labels
//! with its built-in estimate (about 0.7 em per character) and the SVG backend writes them as
//! `<text font-family="sans-serif">`, which the browser sets in its own sans-serif font. No
//! font file is read at build or run time. Nothing here emits `style=` attributes or scripts
//! (the pages' Content-Security-Policy allows neither): colours are `fill`/`stroke`
//! attributes.

use chrono::{DateTime, FixedOffset, NaiveDate, TimeDelta, Timelike};
use chrono_tz::Tz;
use std::ops::Range;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use phr_schema::record::SleepStageKind;

/// The Okabe-Ito palette (Okabe & Ito 2008), distinguishable with every common colour
/// vision deficiency.
pub mod okabe_ito {
    use plotters::style::RGBColor;

    pub const ORANGE: RGBColor = RGBColor(0xE6, 0x9F, 0x00);
    pub const SKY_BLUE: RGBColor = RGBColor(0x56, 0xB4, 0xE9);
    pub const BLUISH_GREEN: RGBColor = RGBColor(0x00, 0x9E, 0x73);
    pub const YELLOW: RGBColor = RGBColor(0xF0, 0xE4, 0x42);
    pub const BLUE: RGBColor = RGBColor(0x00, 0x72, 0xB2);
    pub const VERMILLION: RGBColor = RGBColor(0xD5, 0x5E, 0x00);
    pub const REDDISH_PURPLE: RGBColor = RGBColor(0xCC, 0x79, 0xA7);
    pub const BLACK: RGBColor = RGBColor(0x00, 0x00, 0x00);
}

use okabe_ito as oi;

const GRID: RGBColor = RGBColor(0xD9, 0xD9, 0xD9);
const INK: RGBColor = RGBColor(0x1D, 0x1D, 0x1D);
/// Bars of nights whose episodes have no stages (asleep time only): neutral grey.
const UNSTAGED: RGBColor = RGBColor(0x9E, 0x9E, 0x9E);
const FONT: &str = "sans-serif";

/// Main charts' size in SVG user units (they scale down with the page).
pub const WIDTH: u32 = 760;
pub const HEIGHT: u32 = 300;

/// A chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("chart: {0}")]
pub struct ChartError(String);

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for ChartError {
    fn from(e: DrawingAreaErrorKind<E>) -> Self {
        Self(e.to_string())
    }
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// A linear axis over `[lo, hi)` whose ticks are exactly `ticks` (one label per day, per
/// hour, per stage), rather than plotters' automatic round numbers.
#[derive(Debug, Clone)]
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

fn axis(range: Range<f64>, ticks: Vec<f64>) -> Axis {
    Axis {
        lo: range.start,
        hi: range.end,
        ticks,
    }
}

impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let span = self.hi - self.lo;
        if span == 0.0 {
            return (limit.0 + limit.1) / 2;
        }
        let f = (v - self.lo) / span;
        limit.0 + (f64::from(limit.1 - limit.0) * f).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

/// Draws with `draw` on a white `size` canvas; returns the SVG with `role="img"` and
/// `label` as its accessible name.
fn render(
    size: (u32, u32),
    label: &str,
    draw: impl FnOnce(&Area<'_>) -> Result<(), ChartError>,
) -> Result<String, ChartError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    let named = format!(
        "<svg role=\"img\" aria-label=\"{}\" class=\"chart\" focusable=\"false\" ",
        escape_attr(label)
    );
    Ok(svg.replacen("<svg ", &named, 1))
}

fn escape_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Where dates get labels: about `max` of them, evenly spaced, the last day always.
fn date_ticks(n: usize, max: usize) -> Vec<f64> {
    if n == 0 {
        return Vec::new();
    }
    let step = n.div_ceil(max.max(1)).max(1);
    let mut ticks: Vec<f64> = (0..n).rev().step_by(step).map(|i| i as f64).collect();
    ticks.reverse();
    ticks
}

fn date_label(dates: &[NaiveDate], x: f64) -> String {
    let r = x.round();
    if (x - r).abs() > 1e-6 || r < 0.0 {
        return String::new();
    }
    dates
        .get(r as usize)
        .map(|d| d.format("%m-%d").to_string())
        .unwrap_or_default()
}

/// Evenly spaced y ticks from 0 (or `lo`) to about `hi`, at a round step.
fn nice_ticks(lo: f64, hi: f64, max: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-9);
    let raw = span / max.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// Splits `(index, value)` points into runs of consecutive indices: a missing day breaks
/// the line.
fn runs(points: impl IntoIterator<Item = (usize, f64)>) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut last: Option<usize> = None;
    for (i, v) in points {
        match (out.last_mut(), last) {
            (Some(run), Some(l)) if l + 1 == i => run.push((i as f64, v)),
            _ => out.push(vec![(i as f64, v)]),
        }
        last = Some(i);
    }
    out
}

/// Daily steps: one bar per day with data, the rolling mean (`rolling[i]`, a line broken at
/// days without it) and the goal as a dashed line. `steps` and `rolling` align with `dates`.
/// The frame every per-day chart shares: one column per date of `dates` (labelled by date,
/// no vertical grid), the value axis `y` labelled by `y_label`, both axes described.
fn daily_chart<'a, 'b>(
    plot: &'a Area<'b>,
    dates: &'a [NaiveDate],
    y: Axis,
    y_area: u32,
    y_label: &dyn Fn(&f64) -> String,
    (x_desc, y_desc): (&str, &str),
) -> Result<ChartContext<'a, SVGBackend<'b>, Cartesian2d<Axis, Axis>>, ChartError> {
    let n = dates.len();
    let mut chart = ChartBuilder::on(plot)
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(y_area)
        .build_cartesian_2d(axis(-0.5..n as f64 - 0.5, date_ticks(n, 10)), y)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(GRID)
        .x_label_formatter(&|x| date_label(dates, *x))
        .y_label_formatter(y_label)
        .x_desc(x_desc)
        .y_desc(y_desc)
        .axis_desc_style((FONT, 15))
        .label_style((FONT, 13))
        .draw()?;
    Ok(chart)
}

pub fn steps(
    label: &str,
    dates: &[NaiveDate],
    steps: &[Option<i64>],
    rolling: &[Option<f64>],
    goal: Option<i64>,
) -> Result<String, ChartError> {
    let n = dates.len();
    let top = steps
        .iter()
        .flatten()
        .map(|v| *v as f64)
        .chain(rolling.iter().flatten().copied())
        .chain(goal.map(|g| g as f64))
        .fold(1.0, f64::max)
        * 1.08;
    render((WIDTH, HEIGHT), label, |root| {
        let (plot, side) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
        let mut chart = daily_chart(
            &plot,
            dates,
            axis(0.0..top, nice_ticks(0.0, top, 6)),
            64,
            &|y| format!("{y:.0}"),
            ("local date (month-day)", "steps per day"),
        )?;
        chart.draw_series(steps.iter().enumerate().filter_map(|(i, v)| {
            let x = i as f64;
            v.map(|v| Rectangle::new([(x - 0.4, 0.0), (x + 0.4, v as f64)], oi::SKY_BLUE.filled()))
        }))?;
        let line = runs(
            rolling
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| (i, v))),
        );
        chart.draw_series(
            line.into_iter()
                .map(|run| PathElement::new(run, oi::VERMILLION.stroke_width(3))),
        )?;
        let mut items = vec![
            ("steps".to_owned(), Mark::Fill(oi::SKY_BLUE)),
            ("7-day mean".to_owned(), Mark::Line(oi::VERMILLION, 3)),
        ];
        if let Some(g) = goal {
            chart.draw_series(std::iter::once(DashedPathElement::new(
                vec![(-0.5, g as f64), (n as f64 - 0.5, g as f64)],
                6,
                4,
                oi::BLACK.stroke_width(1),
            )))?;
            items.push((format!("goal {}", thousands(g)), Mark::Dashed(oi::BLACK)));
        }
        legend(&side, &items)
    })
}

/// Room to the right of the plotting area for the legend, so it never covers data.
const LEGEND_WIDTH: u32 = 170;

/// How a legend entry is drawn.
#[derive(Debug, Clone, Copy)]
enum Mark {
    Fill(RGBColor),
    Line(RGBColor, u32),
    Dashed(RGBColor),
    Outline,
    Dot(RGBColor),
}

/// The legend, one entry per line, on `area` (the strip right of the plot).
fn legend(area: &Area<'_>, items: &[(String, Mark)]) -> Result<(), ChartError> {
    let font = (FONT, 13)
        .into_font()
        .color(&INK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (k, (text, mark)) in items.iter().enumerate() {
        let y = 22 + 20 * k as i32;
        let (x0, x1) = (6, 20);
        let swatch = [(x0, y - 6), (x1, y + 6)];
        match *mark {
            Mark::Fill(c) => area.draw(&Rectangle::new(swatch, c.filled()))?,
            Mark::Line(c, w) => {
                area.draw(&PathElement::new(vec![(x0, y), (x1, y)], c.stroke_width(w)))?
            }
            Mark::Dashed(c) => area.draw(&DashedPathElement::new(
                vec![(x0, y), (x1, y)],
                4,
                3,
                c.stroke_width(1),
            ))?,
            Mark::Outline => area.draw(&Rectangle::new(swatch, oi::BLACK.stroke_width(2)))?,
            Mark::Dot(c) => area.draw(&Circle::new(((x0 + x1) / 2, y), 4, c.filled()))?,
        }
        area.draw(&Text::new(text.clone(), (x1 + 8, y), font.clone()))?;
    }
    Ok(())
}

/// `12345` as `12,345`.
pub fn thousands(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Stage minutes of a bar segment, as `[deep, light, rem, awake]`.
pub type Stages = [f64; 4];

/// The stages from the bottom of a bar up, with their names and colours.
pub const STAGES: [(SleepStageKind, &str, RGBColor); 4] = [
    (SleepStageKind::Deep, "deep", oi::BLUE),
    (SleepStageKind::Light, "light", oi::SKY_BLUE),
    (SleepStageKind::Rem, "REM", oi::REDDISH_PURPLE),
    (SleepStageKind::Awake, "awake", oi::ORANGE),
];

/// One night's bar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NightBar {
    /// Stage minutes of the main-sleep episode (outlined), if the night has a staged one.
    pub main: Option<Stages>,
    /// Stage minutes of the night's other episodes, drawn paler on top.
    pub other: Option<Stages>,
    /// Minutes asleep when no episode of the night has stages (a grey bar).
    pub unstaged_asleep: Option<f64>,
}

/// Nightly sleep: one stacked bar of stage durations per night, in hours. `nights` aligns
/// with `dates` (`None`: no sleep data that night).
pub fn sleep_stages(
    label: &str,
    dates: &[NaiveDate],
    nights: &[Option<NightBar>],
) -> Result<String, ChartError> {
    let hours = |s: &Stages| s.iter().sum::<f64>() / 60.0;
    let top = nights
        .iter()
        .flatten()
        .map(|b| {
            b.main.as_ref().map_or(0.0, hours)
                + b.other.as_ref().map_or(0.0, hours)
                + b.unstaged_asleep.unwrap_or(0.0) / 60.0
        })
        .fold(8.0, f64::max)
        * 1.08;
    // Each stage's rectangles, main episode then others, stacked from 0.
    let mut segments: Vec<Vec<Rectangle<(f64, f64)>>> = (0..8).map(|_| Vec::new()).collect();
    let mut outlines = Vec::new();
    let mut unstaged = Vec::new();
    for (i, bar) in nights.iter().enumerate() {
        let Some(bar) = bar else { continue };
        let x = i as f64;
        let mut y = 0.0;
        for (part, stages) in [bar.main, bar.other].iter().enumerate() {
            let Some(stages) = stages else { continue };
            let bottom = y;
            for (k, (_, _, colour)) in STAGES.iter().enumerate() {
                let h = stages[k] / 60.0;
                if h <= 0.0 {
                    continue;
                }
                let style = if part == 0 {
                    colour.filled()
                } else {
                    colour.mix(0.4).filled()
                };
                segments[part * 4 + k]
                    .push(Rectangle::new([(x - 0.4, y), (x + 0.4, y + h)], style));
                y += h;
            }
            if part == 0 && y > bottom {
                outlines.push(Rectangle::new(
                    [(x - 0.4, bottom), (x + 0.4, y)],
                    oi::BLACK.stroke_width(2),
                ));
            }
        }
        if let (None, None, Some(m)) = (bar.main, bar.other, bar.unstaged_asleep) {
            unstaged.push(Rectangle::new(
                [(x - 0.4, 0.0), (x + 0.4, m / 60.0)],
                UNSTAGED.filled(),
            ));
        }
    }
    render((WIDTH, HEIGHT), label, |root| {
        let (plot, side) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
        let mut chart = daily_chart(
            &plot,
            dates,
            axis(0.0..top, nice_ticks(0.0, top, 6)),
            56,
            &|y| format!("{y}"),
            ("night (local date of waking, month-day)", "hours"),
        )?;
        for part in segments {
            chart.draw_series(part)?;
        }
        chart.draw_series(outlines)?;
        // Awake on top of the legend, as in the bars.
        let mut items: Vec<(String, Mark)> = STAGES
            .iter()
            .rev()
            .map(|(_, name, colour)| (name.to_string(), Mark::Fill(*colour)))
            .collect();
        items.push(("main sleep".into(), Mark::Outline));
        if !unstaged.is_empty() {
            chart.draw_series(unstaged)?;
            items.push(("asleep, no stages".into(), Mark::Fill(UNSTAGED)));
        }
        legend(&side, &items)
    })
}

/// The level of a stage in the hypnogram (awake on top, deep at the bottom).
fn level(stage: SleepStageKind) -> f64 {
    match stage {
        SleepStageKind::Deep => 0.0,
        SleepStageKind::Light => 1.0,
        SleepStageKind::Rem => 2.0,
        SleepStageKind::Awake => 3.0,
    }
}

fn stage_colour(stage: SleepStageKind) -> RGBColor {
    STAGES
        .iter()
        .find(|(s, _, _)| *s == stage)
        .map_or(oi::BLACK, |(_, _, c)| *c)
}

/// One stage of a hypnogram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub stage: SleepStageKind,
    pub start: DateTime<FixedOffset>,
    pub end: DateTime<FixedOffset>,
}

/// A hypnogram: the stages of one episode as a step line over the stage levels, each stage
/// also shaded in its colour. The time axis is the local clock in `tz`.
pub fn hypnogram(label: &str, spans: &[Span], tz: Tz) -> Result<String, ChartError> {
    let Some(origin) = spans.iter().map(|s| s.start).min() else {
        return render((WIDTH, 220), label, |_| Ok(()));
    };
    let end = spans.iter().map(|s| s.end).max().unwrap_or(origin);
    let minutes = |t: DateTime<FixedOffset>| (t - origin).num_milliseconds() as f64 / 60_000.0;
    let span_minutes = minutes(end).max(1.0);
    // A tick on each full local hour (every second one past 12 hours).
    let local_origin = origin.with_timezone(&tz);
    let first_hour = local_origin
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .map_or(origin, |t| t.fixed_offset())
        + TimeDelta::hours(1);
    let every = if span_minutes > 12.0 * 60.0 { 2 } else { 1 };
    let ticks: Vec<f64> = (0..)
        .map(|h| minutes(first_hour + TimeDelta::hours(h * every)))
        .take_while(|m| *m <= span_minutes)
        .collect();
    let clock = move |x: &f64| {
        (origin + TimeDelta::milliseconds((x * 60_000.0).round() as i64))
            .with_timezone(&tz)
            .format("%H:%M")
            .to_string()
    };
    render((WIDTH, 220), label, |root| {
        let (plot, _) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
        let mut chart = ChartBuilder::on(&plot)
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(
                axis(0.0..span_minutes, ticks),
                axis(-0.5..3.5, vec![0.0, 1.0, 2.0, 3.0]),
            )?;
        chart
            .configure_mesh()
            .bold_line_style(GRID)
            .x_label_formatter(&clock)
            .y_label_formatter(&|y| {
                match y.round() as i64 {
                    0 => "deep",
                    1 => "light",
                    2 => "REM",
                    3 => "awake",
                    _ => "",
                }
                .to_owned()
            })
            .x_desc(format!("local time ({}, hours:minutes)", tz.name()))
            .y_desc("sleep stage")
            .axis_desc_style((FONT, 15))
            .label_style((FONT, 13))
            .draw()?;
        chart.draw_series(spans.iter().map(|s| {
            let y = level(s.stage);
            Rectangle::new(
                [(minutes(s.start), y - 0.3), (minutes(s.end), y + 0.3)],
                stage_colour(s.stage).mix(0.6).filled(),
            )
        }))?;
        // The step line, broken where the record leaves time uncovered.
        let mut paths: Vec<Vec<(f64, f64)>> = Vec::new();
        let mut previous_end: Option<DateTime<FixedOffset>> = None;
        for s in spans {
            let y = level(s.stage);
            match (paths.last_mut(), previous_end) {
                (Some(path), Some(e)) if e == s.start => {
                    path.push((minutes(s.start), y));
                    path.push((minutes(s.end), y));
                }
                _ => paths.push(vec![(minutes(s.start), y), (minutes(s.end), y)]),
            }
            previous_end = Some(s.end);
        }
        chart.draw_series(
            paths
                .into_iter()
                .map(|p| PathElement::new(p, oi::BLACK.stroke_width(2))),
        )?;
        Ok(())
    })
}

/// One episode on the sleep-timing chart, in hours from the local midnight that starts the
/// night's date (bed at 23:00 the evening before is -1.0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub bed_hours: f64,
    pub wake_hours: f64,
    pub main: bool,
}

fn clock_hours(h: f64) -> String {
    let whole = h.round() as i64;
    format!("{:02}:00", whole.rem_euclid(24))
}

/// Sleep timing: per night, a bar from bed to wake on the local clock (earlier on top).
/// `nights` aligns with `dates`.
pub fn sleep_timing(
    label: &str,
    dates: &[NaiveDate],
    nights: &[Vec<Timing>],
) -> Result<String, ChartError> {
    let all = nights.iter().flatten();
    let lo = all
        .clone()
        .map(|t| t.bed_hours)
        .fold(-2.0, f64::min)
        .floor()
        .max(-24.0)
        - 1.0;
    let hi = all
        .map(|t| t.wake_hours)
        .fold(8.0, f64::max)
        .ceil()
        .min(48.0)
        + 1.0;
    // Plotted as -hours so that earlier times sit higher up; a tick every 1-6 hours.
    let step = [1.0, 2.0, 3.0, 4.0, 6.0]
        .into_iter()
        .find(|s| (hi - lo) / s <= 8.0)
        .unwrap_or(12.0);
    let ticks: Vec<f64> = ((lo / step).ceil() as i64..=(hi / step).floor() as i64)
        .map(|k| -(k as f64 * step))
        .collect();
    let bars = |main: bool| {
        nights
            .iter()
            .enumerate()
            .flat_map(move |(i, ts)| {
                ts.iter().filter(move |t| t.main == main).map(move |t| {
                    let x = i as f64;
                    let colour = if main { oi::BLUE } else { oi::ORANGE };
                    Rectangle::new(
                        [(x - 0.3, -t.bed_hours), (x + 0.3, -t.wake_hours)],
                        colour.filled(),
                    )
                })
            })
            .collect::<Vec<_>>()
    };
    render((WIDTH, HEIGHT), label, |root| {
        let (plot, side) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
        let mut chart = daily_chart(
            &plot,
            dates,
            axis(-hi..-lo, ticks),
            64,
            &|y| clock_hours(-*y),
            (
                "night (local date of waking, month-day)",
                "local clock time (hours)",
            ),
        )?;
        chart.draw_series(bars(true))?;
        let mut items = vec![("main sleep".to_owned(), Mark::Fill(oi::BLUE))];
        let others = bars(false);
        if !others.is_empty() {
            chart.draw_series(others)?;
            items.push(("other episodes".into(), Mark::Fill(oi::ORANGE)));
        }
        legend(&side, &items)
    })
}

/// Resting heart rate per day: a line (broken at days without readings) with a point per
/// day. `bpm` aligns with `dates`.
pub fn resting_heart_rate(
    label: &str,
    dates: &[NaiveDate],
    bpm: &[Option<f64>],
) -> Result<String, ChartError> {
    let values = || bpm.iter().flatten().copied();
    let lo = (values().fold(f64::INFINITY, f64::min) - 5.0).floor();
    let hi = (values().fold(f64::NEG_INFINITY, f64::max) + 5.0).ceil();
    let (lo, hi) = if lo.is_finite() && hi.is_finite() {
        (lo.max(0.0), hi)
    } else {
        (40.0, 100.0)
    };
    render((WIDTH, 260), label, |root| {
        let (plot, side) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
        let mut chart = daily_chart(
            &plot,
            dates,
            axis(lo..hi, nice_ticks(lo, hi, 5)),
            56,
            &|y| format!("{y:.0}"),
            ("local date (month-day)", "resting heart rate (bpm)"),
        )?;
        let points: Vec<(usize, f64)> = bpm
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i, v)))
            .collect();
        chart.draw_series(
            runs(points.iter().copied())
                .into_iter()
                .map(|run| PathElement::new(run, oi::BLUISH_GREEN.stroke_width(2))),
        )?;
        chart.draw_series(
            points
                .iter()
                .map(|(i, v)| Circle::new((*i as f64, *v), 3, oi::BLUISH_GREEN.filled())),
        )?;
        legend(
            &side,
            &[("resting HR".to_owned(), Mark::Dot(oi::BLUISH_GREEN))],
        )
    })
}

/// Sparkline size.
pub const SPARK: (u32, u32) = (112, 28);

/// A tiny bar chart of a few days' values, no text (the page states the numbers next to
/// it). `None` days are gaps.
pub fn sparkline(label: &str, values: &[Option<i64>]) -> Result<String, ChartError> {
    let n = values.len().max(1);
    let top = values.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
    render(SPARK, label, |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(2)
            .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..top)?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(-0.5, 0.0), (n as f64 - 0.5, 0.0)],
            GRID.stroke_width(1),
        )))?;
        chart.draw_series(values.iter().enumerate().filter_map(|(i, v)| {
            let x = i as f64;
            v.map(|v| Rectangle::new([(x - 0.38, 0.0), (x + 0.38, v as f64)], oi::BLUE.filled()))
        }))?;
        Ok(())
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A filled `<rect>` of an SVG: position and size in SVG units, fill and opacity.
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) struct Rect {
        pub(crate) x: f64,
        pub(crate) y: f64,
        pub(crate) width: f64,
        pub(crate) height: f64,
        pub(crate) fill: String,
        pub(crate) opacity: String,
    }

    impl Rect {
        pub(crate) fn bottom(&self) -> f64 {
            self.y + self.height
        }

        pub(crate) fn centre(&self) -> f64 {
            self.x + self.width / 2.0
        }
    }

    /// Every `<rect>` of `svg` left of the legend strip (the plotted data, and the plot's
    /// white background), in document order.
    pub(crate) fn plotted_rects(svg: &str) -> Vec<Rect> {
        let attr = |tag: &str, name: &str| -> Option<String> {
            let key = format!(" {name}=\"");
            let start = tag.find(&key)? + key.len();
            Some(tag[start..].split('"').next()?.to_owned())
        };
        svg.split("<rect")
            .skip(1)
            .filter_map(|rest| {
                let tag = &rest[..rest.find("/>")?];
                let num = |name| attr(tag, name)?.parse::<f64>().ok();
                Some(Rect {
                    x: num("x")?,
                    y: num("y")?,
                    width: num("width")?,
                    height: num("height")?,
                    fill: attr(tag, "fill")?,
                    opacity: attr(tag, "opacity").unwrap_or_else(|| "1".into()),
                })
            })
            .filter(|r| r.x < f64::from(WIDTH - LEGEND_WIDTH))
            .collect()
    }

    /// Checks that `bars` have heights proportional to `values` (to a pixel of rounding),
    /// pairing them in order.
    pub(crate) fn assert_heights_proportional(bars: &[Rect], values: &[f64]) {
        assert_eq!(bars.len(), values.len(), "{bars:?}");
        assert!(!bars.is_empty());
        let (tallest, largest) = bars
            .iter()
            .zip(values)
            .map(|(b, v)| (b.height, *v))
            .fold((0.0, 0.0), |a: (f64, f64), b| if b.1 > a.1 { b } else { a });
        assert!(largest > 0.0 && tallest > 10.0, "{bars:?}");
        let per_unit = tallest / largest;
        for (b, v) in bars.iter().zip(values) {
            assert!(
                (b.height - v * per_unit).abs() <= 1.5,
                "a bar of {v} is {} high; {} expected from the tallest ({largest} is {tallest})",
                b.height,
                v * per_unit
            );
        }
    }

    /// Checks that `bars` stand on one baseline.
    pub(crate) fn assert_one_baseline(bars: &[Rect]) {
        for b in bars {
            assert!(
                (b.bottom() - bars[0].bottom()).abs() <= 1.0,
                "one baseline: {bars:?}"
            );
        }
    }

    fn dates(n: usize) -> Vec<NaiveDate> {
        let first = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        first.iter_days().take(n).collect()
    }

    /// Well-formed enough for a browser: one root, balanced tags, no script, no inline style.
    fn check(svg: &str, units: &[&str]) {
        assert!(
            svg.starts_with("<svg role=\"img\" aria-label="),
            "{}",
            &svg[..80]
        );
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        let lower = svg.to_lowercase();
        assert!(!lower.contains("<script"));
        assert!(!lower.contains("style="));
        assert!(!lower.contains("javascript:"));
        for u in units {
            assert!(svg.contains(u), "missing {u:?}");
        }
    }

    #[test]
    fn steps_chart_has_bars_for_days_with_data_and_a_broken_mean() {
        let d = dates(10);
        let steps: Vec<Option<i64>> = (0..10)
            .map(|i| (i != 4).then_some(1000 * (i + 1)))
            .collect();
        let rolling: Vec<Option<f64>> = steps.iter().map(|s| s.map(|v| v as f64)).collect();
        let svg = super::steps("Steps", &d, &steps, &rolling, Some(8000)).unwrap();
        check(
            &svg,
            &["steps per day", "local date", "goal 8,000", "03-10"],
        );
        // 9 bars (plus the legend's swatch) in sky blue.
        assert_eq!(svg.matches("fill=\"#56B4E9\"").count(), 9 + 1);
        // Each as high as its day's steps, at its day's place: days 0-3 and 5-9, one column
        // per day, none for day 4.
        let bars: Vec<Rect> = plotted_rects(&svg)
            .into_iter()
            .filter(|r| r.fill == "#56B4E9")
            .collect();
        let values: Vec<f64> = steps.iter().flatten().map(|v| *v as f64).collect();
        assert_heights_proportional(&bars, &values);
        assert_one_baseline(&bars);
        let days: Vec<f64> = (0..10).filter(|i| *i != 4).map(f64::from).collect();
        let column = (bars[8].centre() - bars[0].centre()) / 9.0;
        assert!(column > 20.0, "{bars:?}");
        for (b, day) in bars.iter().zip(&days) {
            assert!(
                (b.centre() - bars[0].centre() - day * column).abs() <= 1.0,
                "day {day} drawn at {}: {bars:?}",
                b.centre()
            );
        }
        // Two runs of the mean line (days 0-3 and 5-9) plus the legend's sample.
        assert_eq!(svg.matches("stroke=\"#D55E00\"").count(), 2 + 1);
        assert!(svg.contains("stroke=\"#000000\""));
    }

    #[test]
    fn sleep_charts_name_their_units_and_mark_main_sleep() {
        let d = dates(3);
        let bar = NightBar {
            main: Some([60.0, 240.0, 90.0, 30.0]),
            other: Some([0.0, 30.0, 0.0, 0.0]),
            unstaged_asleep: None,
        };
        let svg = sleep_stages("Sleep", &d, &[Some(bar), None, Some(bar)]).unwrap();
        check(
            &svg,
            &["hours", "night", "deep", "REM", "awake", "main sleep"],
        );
        for c in ["#0072B2", "#56B4E9", "#CC79A7", "#E69F00"] {
            assert!(svg.contains(c), "{c}");
        }
        // Each night's main episode: deep, light, REM, awake stacked from the bottom in
        // that order, each as high as its minutes; the other episode's light paler on top.
        let segments = plotted_rects(&svg);
        for night in [0, 2] {
            let column: Vec<&Rect> = {
                let xs: Vec<f64> = segments
                    .iter()
                    .filter(|r| r.fill == "#0072B2")
                    .map(|r| r.x)
                    .collect();
                assert_eq!(xs.len(), 2, "one deep segment per night with data");
                let x = xs[night / 2];
                segments
                    .iter()
                    .filter(|r| r.x == x && r.fill != "#FFFFFF")
                    .collect()
            };
            let main: Vec<Rect> = ["#0072B2", "#56B4E9", "#CC79A7", "#E69F00"]
                .iter()
                .map(|c| {
                    let found: Vec<&&Rect> = column
                        .iter()
                        .filter(|r| r.fill == *c && r.opacity == "1")
                        .collect();
                    assert_eq!(found.len(), 1, "{c} in night {night}: {column:?}");
                    (*found[0]).clone()
                })
                .collect();
            let mut all = main.clone();
            let paler: Vec<Rect> = column
                .iter()
                .filter(|r| r.opacity != "1")
                .map(|r| (*r).clone())
                .collect();
            assert_eq!(paler.len(), 1, "{column:?}");
            all.push(paler[0].clone());
            // Minutes: main [deep 60, light 240, REM 90, awake 30], then the other's light 30.
            assert_heights_proportional(&all, &[60.0, 240.0, 90.0, 30.0, 30.0]);
            for pair in all.windows(2) {
                let (below, above) = (&pair[0], &pair[1]);
                assert!(
                    (above.bottom() - below.y).abs() <= 1.0,
                    "stacked without gap or overlap: {below:?} then {above:?}"
                );
            }
        }
        let t = Timing {
            bed_hours: -1.5,
            wake_hours: 6.75,
            main: true,
        };
        let svg = sleep_timing("Timing", &d, &[vec![t], vec![], vec![t]]).unwrap();
        check(&svg, &["local clock time (hours)", "22:00", "06:00"]);
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap();
        let spans = [
            Span {
                stage: SleepStageKind::Light,
                start: at("2026-03-08T01:00:00-05:00"),
                end: at("2026-03-08T01:50:00-05:00"),
            },
            Span {
                stage: SleepStageKind::Deep,
                start: at("2026-03-08T01:50:00-05:00"),
                end: at("2026-03-08T03:30:00-04:00"),
            },
            Span {
                stage: SleepStageKind::Awake,
                start: at("2026-03-08T04:00:00-04:00"),
                end: at("2026-03-08T04:10:00-04:00"),
            },
        ];
        let svg = hypnogram("Hypnogram", &spans, "America/New_York".parse().unwrap()).unwrap();
        // 02:00 does not exist that night: the local clock jumps from 01:59 to 03:00.
        check(
            &svg,
            &[
                "sleep stage",
                "local time (America/New_York",
                "03:00",
                "04:00",
            ],
        );
        assert!(!svg.contains(">\n02:00"));
    }

    #[test]
    fn heart_rate_and_sparkline() {
        let d = dates(5);
        let svg = resting_heart_rate("RHR", &d, &[Some(58.0), Some(57.5), None, Some(60.0), None])
            .unwrap();
        check(&svg, &["bpm", "local date"]);
        let svg = sparkline("Steps, last 7 days", &[Some(1), None, Some(3)]).unwrap();
        check(&svg, &[]);
        assert!(!svg.contains("<text"));
        assert_eq!(svg.matches("fill=\"#0072B2\"").count(), 2);
        let bars: Vec<Rect> = plotted_rects(&svg)
            .into_iter()
            .filter(|r| r.fill == "#0072B2")
            .collect();
        assert_heights_proportional(&bars, &[1.0, 3.0]);
        assert_one_baseline(&bars);
        assert!(bars[0].centre() < bars[1].centre());
        // Labels are attribute-escaped.
        let svg = sparkline("a \"quoted\" <name>", &[]).unwrap();
        assert!(svg.contains("aria-label=\"a &quot;quoted&quot; &lt;name&gt;\""));
    }

    #[test]
    fn ticks_and_numbers() {
        assert_eq!(thousands(8000), "8,000");
        assert_eq!(thousands(123_456_789), "123,456,789");
        assert_eq!(thousands(-1234), "-1,234");
        assert_eq!(thousands(12), "12");
        assert_eq!(
            nice_ticks(0.0, 10_400.0, 6),
            [0.0, 2000.0, 4000.0, 6000.0, 8000.0, 10000.0]
        );
        // About ten labels over 30 days: every third day, ending on the last.
        assert_eq!(
            date_ticks(30, 10),
            [2.0, 5.0, 8.0, 11.0, 14.0, 17.0, 20.0, 23.0, 26.0, 29.0]
        );
        assert_eq!(date_ticks(7, 10), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(date_ticks(0, 10), Vec::<f64>::new());
        assert_eq!(clock_hours(-1.0), "23:00");
        assert_eq!(clock_hours(26.0), "02:00");
    }
}
