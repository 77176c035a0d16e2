//! Simulated wearables: "PHR reference bands" that produce the notifications a real band
//! would send (the [`crate::decode::sim_band`] protocol plus the standard Heart Rate
//! Measurement), for demos, load tests and end-to-end tests without Bluetooth hardware.
//!
//! # Determinism
//! Everything is a pure function of `(seed, device_id, time)`. The randomness of a minute, a
//! 15-minute activity block, a local day or a night is derived from a hash of the seed, the
//! device id and that unit's index, never from the requested window, so generating `[a, b)`
//! then `[b, c)` yields exactly what generating `[a, c)` yields, notification for
//! notification, for any `a <= b <= c`.
//!
//! # Whose local time
//! A band lives in a [`DayZone`]: an IANA zone with its DST transitions (`phr-bridge simulate
//! --time-zone America/New_York`; the default is the bridge's, Asia/Tokyo), or a fixed offset.
//! Its days and nights, its walking hours and its daily step total all follow the local wall
//! clock, so a 23-hour spring-forward day and a 25-hour fall-back day each have one midnight,
//! and the daily total resets there, where the bridge's [`crate::cumulative`] rules expect it.
//! A local time that a transition skips counts as the first time after the gap, one that
//! repeats as the first of the two; in a fall-back hour the repeated local minutes walk
//! alike (their randomness is keyed by local time), which is harmless for simulated data.
//!
//! # What a band does
//! - **Sleep**: one main sleep a night, in the band's local time: bedtime 23:00 ± 45 min, wake
//!   06:30 ± 45 min; a few minutes awake before sleep onset, then ~90-minute cycles of light,
//!   deep (mostly early in the night), light and REM (longer towards the morning), with
//!   occasional brief awakenings between cycles. Sent as one sleep summary at the wake time.
//! - **Steps**: per whole UTC minute, zero while asleep and at night (local 23:00–06:00).
//!   During the day each 15-minute block may hold one walking burst (2–12 minutes at 60–130
//!   steps/min), more likely at commute, lunch and evening hours and scaled by a per-day
//!   activity level; other awake minutes are mostly idle (0) with some pottering (3–40).
//!   Only minutes with steps are sent. A UTC hour's minutes travel in one activity
//!   notification, stamped with the end of its last minute with steps (the band's history
//!   transfer; a simplification that keeps notifications independent of the window).
//! - **Heart rate**: every 5 minutes on the UTC clock, a Heart Rate Measurement with sensor
//!   contact and two RR-intervals: 55–70 bpm asleep (lowest in deep sleep), 65–110 awake,
//!   rising with the cadence of the minute just ended.
//!
//! - **Steps today** ([`SimBand::daily_totals`]): on every whole UTC hour, the running total of
//!   the band's local day so far, as the vendor steps-today characteristic carries it; at
//!   exactly local midnight it still shows the day that just ended (the bridge's rule too).
//!   Not part of [`SimBand::notifications`]: the minute activity already carries those steps,
//!   and a bridge that took both would count each step twice.
//!
//! A notification belongs to a window `[from, to)` when its `at` does. The band's clock is
//! the protocol's u32 Unix seconds, so simulate times between 1970 and 2106.

use chrono::{DateTime, FixedOffset, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use phr_schema::{Record, SleepStageKind};
use uuid::Uuid;

use crate::cumulative::DayZone;
use crate::decode::{self, heart_rate, sim_band, DecodeError, Reading, SleepReading};
use crate::normalise::normalise;

const MINUTES_PER_DAY: i64 = 24 * 60;
/// Length of an activity block in minutes; at most one walking burst starts in each.
const BLOCK: i64 = 15;
/// Minutes between heart-rate notifications.
const HEART_RATE_EVERY: i64 = 5;
/// Chance, per local hour, that an activity block holds a walking burst (before the day's
/// activity level). Zero at night.
const WALK_PROBABILITY: [f64; 24] = [
    0.0, 0.0, 0.0, 0.0, 0.0, 0.0, // 00–05
    0.15, 0.45, 0.45, 0.15, 0.15, 0.15, // 06–11
    0.40, 0.15, 0.15, 0.15, 0.15, 0.45, // 12–17
    0.45, 0.12, 0.12, 0.12, 0.12, 0.0, // 18–23
];
/// Chance that an awake daytime minute outside a burst has a few steps.
const POTTER_PROBABILITY: f64 = 0.08;

// Streams of randomness, so that e.g. a minute's and a night's draws never coincide.
const TAG_NIGHT: u64 = 1;
const TAG_DAY: u64 = 2;
const TAG_BLOCK: u64 = 3;
const TAG_MINUTE: u64 = 4;
const TAG_HEART: u64 = 5;
const TAG_WORN: u64 = 6;
const TAG_SCALE: u64 = 7;
/// A second band's chance, per local hour, of not being worn (off to charge, in a drawer).
const NOT_WORN_PROBABILITY: f64 = 0.12;

/// One simulated band.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimBand {
    pub device_id: String,
    pub seed: u64,
    /// The wearer's zone: days, nights and the daily total follow its local time.
    pub zone: DayZone,
    /// The id of another band the same person wears ([`SimBand::worn_with`]): this one then
    /// measures that person's walking and nights, with its own noise and hours not worn.
    pub worn_with: Option<String>,
}

/// One GATT notification as the transport would hand it to the decoders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub characteristic: Uuid,
    pub bytes: Vec<u8>,
    /// When the band sends it (the bridge's receive time).
    pub at: DateTime<Utc>,
}

/// A night's sleep in UTC minute indices: `[bed, wake)`, stages `(kind, start, end)`.
#[derive(Debug, Clone)]
struct Night {
    bed: i64,
    wake: i64,
    stages: Vec<(SleepStageKind, i64, i64)>,
}

impl Night {
    fn contains(&self, minute: i64) -> bool {
        (self.bed..self.wake).contains(&minute)
    }

    fn stage_at(&self, minute: i64) -> Option<SleepStageKind> {
        if !self.contains(minute) {
            return None;
        }
        let stage = self
            .stages
            .iter()
            .find(|(_, start, end)| (*start..*end).contains(&minute));
        // The generator leaves no gaps; light sleep is the neutral answer if it ever did.
        Some(stage.map_or(SleepStageKind::Light, |s| s.0))
    }
}

impl SimBand {
    /// Band number `index` of a fleet: `device_id` is `sim-band-{index:04}` (`sim-band-0001`).
    pub fn new(index: usize, seed: u64, zone: DayZone) -> Self {
        Self {
            device_id: format!("sim-band-{index:04}"),
            seed,
            zone,
            worn_with: None,
        }
    }

    /// The same person wears this band and `other` (a watch and a ring, a new band and the
    /// old one): both see the same nights and walks. This one counts each walking minute
    /// with its own noise (its own cadence jitter and a per-day scale of 0.88 to 1.06), its
    /// own pottering minutes, and is not worn for about one hour in eight (none sent then).
    pub fn worn_with(mut self, other: &str) -> Self {
        self.worn_with = Some(other.to_owned());
        self
    }

    /// Every notification the band sends at a time in `[from, to)`, in time order (ties:
    /// activity, heart rate, sleep).
    /// What the band tells a bridge about itself: a locally administered BLE address and a
    /// Device Information serial number, both derived from its id.
    pub fn identity(&self) -> crate::publish::DeviceIdentity {
        let n = self.device_id.bytes().fold(0u32, |acc, b| {
            acc.wrapping_mul(31).wrapping_add(u32::from(b))
        });
        let [a, b, c, d] = n.to_be_bytes();
        crate::publish::DeviceIdentity {
            address: Some(format!("02:50:{a:02X}:{b:02X}:{c:02X}:{d:02X}")),
            serial_number: Some(format!("PHR-{}", self.device_id.to_uppercase())),
        }
    }

    pub fn notifications(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Notification> {
        if to <= from {
            return Vec::new();
        }
        let (from_min, to_min) = (minute_of(from), minute_of(to));
        // Activity hours start up to an hour before `from`; keep a margin on both sides.
        let nights = self.nights(from_min - 2 * 60, to_min + 2 * 60);
        let in_window = |at: DateTime<Utc>| from <= at && at < to;
        let mut out = Vec::new();

        for hour in from_min.div_euclid(60) - 1..=to_min.div_euclid(60) {
            let entries: Vec<(DateTime<Utc>, u16, u16)> = (hour * 60..hour * 60 + 60)
                .filter_map(|m| {
                    let steps = self.steps(m, &nights);
                    Some((minute_time(m)?, 60, steps)).filter(|_| steps > 0)
                })
                .collect();
            let Some(&(last, _, _)) = entries.last() else {
                continue;
            };
            let at = last + chrono::Duration::minutes(1);
            if in_window(at) {
                out.push(Notification {
                    characteristic: sim_band::ACTIVITY,
                    bytes: sim_band::encode_activity(&entries),
                    at,
                });
            }
        }

        let first = from_min.div_euclid(HEART_RATE_EVERY);
        let last = to_min.div_euclid(HEART_RATE_EVERY);
        for k in first..=last {
            let minute = k * HEART_RATE_EVERY;
            let Some(at) = minute_time(minute).filter(|&at| in_window(at)) else {
                continue;
            };
            let (bpm, rr) = self.heart_rate(minute, &nights);
            out.push(Notification {
                characteristic: heart_rate::CHARACTERISTIC,
                bytes: heart_rate::encode(bpm, Some(true), None, &rr),
                at,
            });
        }

        for night in &nights {
            let (Some(start), Some(end)) = (minute_time(night.bed), minute_time(night.wake)) else {
                continue;
            };
            if !in_window(end) {
                continue;
            }
            let stages = night
                .stages
                .iter()
                .filter_map(|&(kind, s, e)| Some((kind, minute_time(s)?, minute_time(e)?)))
                .collect();
            let sleep = SleepReading {
                start,
                end,
                is_main_sleep: true,
                stages,
                reported: Default::default(),
            };
            out.push(Notification {
                characteristic: sim_band::SLEEP,
                bytes: sim_band::encode_sleep(&sleep),
                at: end,
            });
        }

        let rank = |c: Uuid| match c {
            c if c == sim_band::ACTIVITY => 0,
            c if c == heart_rate::CHARACTERISTIC => 1,
            _ => 2,
        };
        out.sort_by_key(|n| (n.at, rank(n.characteristic)));
        out
    }

    /// The records a bridge makes of [`Self::notifications`], through the same decoders and
    /// normaliser real devices go through. A decode error here is a bug in the simulator or a
    /// decoder, so it is returned rather than skipped.
    pub fn records(
        &self,
        bridge_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Record>, DecodeError> {
        let mut records = Vec::new();
        for n in self.notifications(from, to) {
            let (decoder, readings) = decode::decode(n.characteristic, &n.bytes, n.at)?;
            records.extend(readings.iter().filter_map(|r: &Reading| {
                normalise(
                    r,
                    decoder,
                    &self.device_id,
                    bridge_id,
                    self.zone.offset_at(n.at),
                    n.at,
                )
            }));
        }
        Ok(records)
    }

    /// The band's steps-today total at `at`: the steps of the whole minutes ended by `at`
    /// since the start of the local day `at` belongs to (at exactly local midnight, the day
    /// that just ended: the total before the reset).
    pub fn steps_today(&self, at: DateTime<Utc>) -> u32 {
        let end = minute_of(at);
        let last = minute_of(at - chrono::Duration::nanoseconds(1));
        let day = self.local_minute(last).div_euclid(MINUTES_PER_DAY);
        let start = self.utc_minute(day * MINUTES_PER_DAY);
        let nights = self.nights(start, end);
        (start..end)
            .map(|m| u32::from(self.steps(m, &nights)))
            .sum()
    }

    /// The band's steps-today notifications at times in `[from, to)`: one on every whole
    /// UTC quarter hour (every local midnight of every real zone is one), carrying
    /// [`Self::steps_today`].
    pub fn daily_totals(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Notification> {
        const QUARTER: i64 = 15 * 60;
        let first = from.timestamp().div_euclid(QUARTER)
            + i64::from(
                from.timestamp().rem_euclid(QUARTER) != 0 || from.timestamp_subsec_nanos() != 0,
            );
        (first..)
            .map_while(|q| {
                DateTime::from_timestamp(q.checked_mul(QUARTER)?, 0).filter(|at| *at < to)
            })
            .map(|at| Notification {
                characteristic: sim_band::STEPS_TODAY,
                bytes: sim_band::encode_steps_today(self.steps_today(at)),
                at,
            })
            .collect()
    }

    fn rng(&self, stream: u64, index: i64) -> SplitMix {
        SplitMix::new(&[self.seed, fnv1a(&self.device_id), stream, index as u64])
    }

    /// The randomness of the wearer's body (nights, the day's activity, walks): the other
    /// band's when this one is worn with it.
    fn body_rng(&self, stream: u64, index: i64) -> SplitMix {
        let body = self.worn_with.as_deref().unwrap_or(&self.device_id);
        SplitMix::new(&[self.seed, fnv1a(body), stream, index as u64])
    }

    /// The local wall-clock minute (minutes since 1970-01-01T00:00 local) of UTC minute `m`.
    fn local_minute(&self, m: i64) -> i64 {
        let offset = minute_time(m).map_or(0, |t| self.zone.offset_at(t).local_minus_utc());
        m + i64::from(offset).div_euclid(60)
    }

    /// The UTC minute at which the local wall clock shows `local` (minutes since
    /// 1970-01-01T00:00 local): the first of two in a fall-back hour; for a time a
    /// spring-forward gap skips, the same distance past the gap's start (02:30 → 03:30).
    fn utc_minute(&self, local: i64) -> i64 {
        let fixed = |o: FixedOffset| local - i64::from(o.local_minus_utc()).div_euclid(60);
        match self.zone {
            DayZone::Fixed(o) => fixed(o),
            DayZone::Iana(tz) => {
                let Some(naive) = minute_time(local).map(|t| t.naive_utc()) else {
                    return local;
                };
                match tz.from_local_datetime(&naive) {
                    LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => minute_of(t.to_utc()),
                    // In a gap: the offset in force before it (a day earlier is before any
                    // real zone's gap starts and after its previous transition).
                    LocalResult::None => fixed(before_gap(tz, naive)),
                }
            }
        }
    }

    /// The nights that can touch the UTC minutes `[lo, hi]`.
    fn nights(&self, lo: i64, hi: i64) -> Vec<Night> {
        let first = self.local_minute(lo).div_euclid(MINUTES_PER_DAY) - 1;
        let last = self.local_minute(hi).div_euclid(MINUTES_PER_DAY) + 1;
        (first..=last).map(|day| self.night(day)).collect()
    }

    /// The night ending on local day `day` (days since 1970-01-01 in local time).
    fn night(&self, day: i64) -> Night {
        let mut rng = self.body_rng(TAG_NIGHT, day);
        let midnight = day * MINUTES_PER_DAY;
        let bed = self.utc_minute(midnight - 60 + rng.range(-45, 45));
        let wake = self.utc_minute(midnight + 6 * 60 + 30 + rng.range(-45, 45));
        Night {
            bed,
            wake,
            stages: sleep_stages(&mut rng, bed, wake),
        }
    }

    /// Steps in UTC minute `m`.
    fn steps(&self, m: i64, nights: &[Night]) -> u16 {
        if nights.iter().any(|n| n.contains(m)) {
            return 0;
        }
        let local = self.local_minute(m);
        let hour = local.rem_euclid(MINUTES_PER_DAY) / 60;
        let p = WALK_PROBABILITY[hour as usize];
        if p == 0.0 {
            return 0;
        }
        let day = local.div_euclid(MINUTES_PER_DAY);
        let day_level = 0.5 + 0.7 * self.body_rng(TAG_DAY, day).unit();
        let mut block = self.body_rng(TAG_BLOCK, local.div_euclid(BLOCK));
        let walking = block.unit() < p * day_level;
        let start = block.range(0, BLOCK - 1);
        let length = block.range(2, 12);
        let cadence = block.range(60, 130);
        let within = local.rem_euclid(BLOCK);
        let mut minute = self.rng(TAG_MINUTE, m);
        if self.worn_with.is_some() {
            if self.rng(TAG_WORN, local.div_euclid(60)).unit() < NOT_WORN_PROBABILITY {
                return 0;
            }
            if walking && (start..start + length).contains(&within) {
                let scale = 0.88 + 0.18 * self.rng(TAG_SCALE, day).unit();
                let counted = (cadence + minute.range(-6, 6)) as f64 * scale;
                return (counted.round() as i64).clamp(50, 130) as u16;
            }
        } else if walking && (start..start + length).contains(&within) {
            return (cadence + minute.range(-6, 6)).clamp(60, 130) as u16;
        }
        if minute.unit() < POTTER_PROBABILITY {
            return minute.range(3, 40) as u16;
        }
        0
    }

    /// Heart rate sent at UTC minute `at`, from the state of the minute just ended, with two
    /// RR-intervals in milliseconds.
    fn heart_rate(&self, at: i64, nights: &[Night]) -> (u16, [u16; 2]) {
        let mut rng = self.rng(TAG_HEART, at);
        let previous = at - 1;
        let asleep = nights.iter().find_map(|n| n.stage_at(previous));
        let bpm = match asleep {
            Some(SleepStageKind::Deep) => rng.range(55, 60),
            Some(SleepStageKind::Light) => rng.range(57, 65),
            Some(SleepStageKind::Rem) => rng.range(60, 70),
            Some(SleepStageKind::Awake) => rng.range(62, 70),
            None => match i64::from(self.steps(previous, nights)) {
                0 => rng.range(65, 82),
                s if s < 60 => rng.range(72, 88),
                s => (90 + (s - 60) * 20 / 70 + rng.range(-3, 3)).clamp(65, 110),
            },
        };
        let beat = 60_000 / bpm;
        let rr = [beat + rng.range(-25, 25), beat + rng.range(-25, 25)];
        (bpm as u16, rr.map(|ms| ms as u16))
    }
}

/// Stages of a night in UTC minutes, covering `[bed, wake)` without gaps or overlaps.
fn sleep_stages(rng: &mut SplitMix, bed: i64, wake: i64) -> Vec<(SleepStageKind, i64, i64)> {
    use SleepStageKind::{Awake, Deep, Light, Rem};
    let mut night = Stages {
        stages: Vec::new(),
        now: bed,
        wake,
    };
    night.push(Awake, rng.range(4, 25));
    let mut cycle = 0;
    while night.now < wake {
        let length = rng.range(80, 110);
        let deep = match cycle {
            0 => rng.range(25, 45),
            1 => rng.range(15, 30),
            2 => rng.range(5, 15),
            _ => rng.range(0, 8),
        };
        let rem = match cycle {
            0 => rng.range(8, 15),
            1 => rng.range(15, 25),
            2 => rng.range(20, 32),
            _ => rng.range(25, 40),
        };
        let light = (length - deep - rem).max(10);
        let first_light = light * 3 / 5;
        night.push(Light, first_light);
        night.push(Deep, deep);
        night.push(Light, light - first_light);
        night.push(Rem, rem);
        if rng.unit() < 0.2 + 0.08 * f64::from(cycle) {
            night.push(Awake, rng.range(1, 6));
        }
        cycle += 1;
    }
    let mut stages = night.stages;
    // At most ~36 stages fit a 9-hour night of >= 80-minute cycles; keep the protocol's
    // limit anyway, stretching the last kept stage to the wake time.
    if stages.len() > sim_band::MAX_SLEEP_STAGES {
        stages.truncate(sim_band::MAX_SLEEP_STAGES);
        if let Some(last) = stages.last_mut() {
            last.2 = wake;
        }
    }
    stages
}

/// Stages under construction: appends clip at the wake time and merge with a preceding
/// stage of the same kind.
struct Stages {
    stages: Vec<(SleepStageKind, i64, i64)>,
    now: i64,
    wake: i64,
}

impl Stages {
    fn push(&mut self, kind: SleepStageKind, minutes: i64) {
        let end = (self.now + minutes).min(self.wake);
        if end <= self.now {
            return;
        }
        match self.stages.last_mut() {
            Some((k, _, e)) if *k == kind && *e == self.now => *e = end,
            _ => self.stages.push((kind, self.now, end)),
        }
        self.now = end;
    }
}

/// The offset a zone had just before a spring-forward gap that `local` falls in: the one in
/// force a day earlier (real zones do not change offset twice within a day).
fn before_gap(tz: chrono_tz::Tz, local: NaiveDateTime) -> FixedOffset {
    tz.offset_from_utc_datetime(&(local - chrono::Duration::days(1)))
        .fix()
}

/// The whole UTC minute containing `t`, as minutes since the Unix epoch.
fn minute_of(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(60)
}

fn minute_time(minute: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(minute.checked_mul(60)?, 0)
}

/// FNV-1a, so a device id feeds the hash without depending on std's randomised hasher.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64 (Steele, Lea and Flood 2014): a tiny deterministic generator, plenty for
/// simulated data and stable across platforms and releases.
#[derive(Debug, Clone)]
struct SplitMix(u64);

impl SplitMix {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    fn new(parts: &[u64]) -> Self {
        Self(
            parts
                .iter()
                .fold(0, |h, &p| mix(h ^ p).wrapping_add(Self::GAMMA)),
        )
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(Self::GAMMA);
        mix(self.0)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi]` (the modulo bias is irrelevant at these ranges).
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        let span = (hi - lo + 1) as u64;
        lo + (self.next_u64() % span) as i64
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use phr_schema::validate::validate_record;
    use phr_schema::{Body, Limits};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const BRIDGE: &str = "bridge-test";

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn jst() -> DayZone {
        DayZone::Iana(chrono_tz::Asia::Tokyo)
    }

    fn new_york() -> DayZone {
        DayZone::Iana(chrono_tz::America::New_York)
    }

    /// `t` on the wall clock of `zone` (whatever offset a record was written with).
    fn local(zone: DayZone, t: DateTime<FixedOffset>) -> DateTime<FixedOffset> {
        t.with_timezone(&zone.offset_at(t.to_utc()))
    }

    fn band(index: usize) -> SimBand {
        SimBand::new(index, 42, jst())
    }

    #[test]
    fn device_ids_follow_the_fleet_index() {
        assert_eq!(band(1).device_id, "sim-band-0001");
        assert_eq!(band(1234).device_id, "sim-band-1234");
        assert!(phr_schema::envelope::is_valid_id(&band(7).device_id));
    }

    #[test]
    fn deterministic_per_seed_and_device() {
        let (a, b) = (t("2026-01-01T00:00:00Z"), t("2026-01-02T00:00:00Z"));
        let one = band(1).notifications(a, b);
        assert!(!one.is_empty());
        assert_eq!(one, band(1).notifications(a, b));
        assert_ne!(one, band(2).notifications(a, b));
        assert_ne!(one, SimBand::new(1, 43, jst()).notifications(a, b));
        assert!(band(1).notifications(b, a).is_empty());
        assert!(band(1).notifications(a, a).is_empty());
    }

    #[test]
    fn a_band_worn_with_another_sees_the_same_walks_and_nights_with_noise_and_gaps() {
        let first = band(0);
        let second = band(1).worn_with(&first.device_id);
        let (a, b) = (t("2026-03-01T00:00:00Z"), t("2026-03-08T00:00:00Z"));
        let (lo, hi) = (minute_of(a), minute_of(b));
        let nights = first.nights(lo, hi);
        let second_nights = second.nights(lo, hi);
        assert_eq!(
            nights.iter().map(|n| (n.bed, n.wake)).collect::<Vec<_>>(),
            second_nights
                .iter()
                .map(|n| (n.bed, n.wake))
                .collect::<Vec<_>>(),
            "the same nights"
        );
        let (mut totals, mut walked_alone, mut gaps) = ([0i64; 2], 0, 0);
        for m in lo..hi {
            let (x, y) = (first.steps(m, &nights), second.steps(m, &second_nights));
            totals[0] += i64::from(x);
            totals[1] += i64::from(y);
            // The second band walks only when the wearer does (its pottering stays under 50).
            if y >= 50 {
                assert!(
                    x >= 60,
                    "minute {m}: {y} walking on the second band, {x} on the first"
                );
            }
            if y >= 50 && x != y {
                walked_alone += 1;
            }
            if x >= 60 && y == 0 {
                gaps += 1;
            }
        }
        assert!(
            walked_alone > 0,
            "the second band's counts have their own noise"
        );
        assert!(gaps > 0, "the second band is not always worn");
        let ratio = totals[1] as f64 / totals[0] as f64;
        assert!((0.6..1.1).contains(&ratio), "{totals:?}");
        // Unpaired, the same band is someone else entirely.
        assert_ne!(
            band(1)
                .nights(lo, hi)
                .iter()
                .map(|n| n.bed)
                .collect::<Vec<_>>(),
            nights.iter().map(|n| n.bed).collect::<Vec<_>>()
        );
    }

    #[test]
    fn splitting_the_window_changes_nothing() {
        let s = band(3);
        let (a, c) = (t("2026-03-01T00:00:00Z"), t("2026-03-04T00:00:00Z"));
        let whole = s.notifications(a, c);
        for b in [
            "2026-03-01T00:00:00Z",
            "2026-03-01T21:00:00Z",
            "2026-03-01T21:37:00Z",
            "2026-03-01T21:37:29.5Z",
            "2026-03-02T06:55:01Z",
            "2026-03-04T00:00:00Z",
        ] {
            let b = t(b);
            let mut parts = s.notifications(a, b);
            parts.extend(s.notifications(b, c));
            assert_eq!(parts, whole, "split at {b}");
        }
        let mut records = s.records(BRIDGE, a, t("2026-03-02T13:13:13Z")).unwrap();
        records.extend(s.records(BRIDGE, t("2026-03-02T13:13:13Z"), c).unwrap());
        assert_eq!(records, s.records(BRIDGE, a, c).unwrap());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn any_split_of_any_window_is_invariant(
            start in 0i64..(200 * 24 * 3600),
            first in 0i64..(36 * 3600),
            second in 0i64..(36 * 3600),
            seed in any::<u64>(),
            offset_quarters in -48i32..=56,
        ) {
            let s = SimBand::new(9, seed, DayZone::Fixed(FixedOffset::east_opt(offset_quarters * 900).unwrap()));
            let a = t("2025-06-01T00:00:00Z") + Duration::seconds(start);
            let b = a + Duration::seconds(first);
            let c = b + Duration::seconds(second);
            let mut parts = s.notifications(a, b);
            parts.extend(s.notifications(b, c));
            prop_assert_eq!(parts, s.notifications(a, c));
        }
    }

    /// Two weeks of six bands in three time zones: Tokyo and UTC in February, New York
    /// across its spring-forward (8 March 2026) and its fall-back (1 November 2026) days.
    fn fortnight() -> Vec<(SimBand, DateTime<Utc>, Vec<Record>)> {
        let february = t("2026-02-15T00:00:00Z");
        let utc = DayZone::Fixed(FixedOffset::east_opt(0).unwrap());
        [
            (band(1), february),
            (band(2), february),
            (SimBand::new(3, 7, utc), february),
            (SimBand::new(4, 7, utc), february),
            (SimBand::new(5, 7, new_york()), t("2026-03-15T00:00:00Z")),
            (SimBand::new(6, 7, new_york()), t("2026-11-08T00:00:00Z")),
        ]
        .into_iter()
        .map(|(s, to)| {
            let records = s.records(BRIDGE, to - Duration::days(14), to).unwrap();
            (s, to, records)
        })
        .collect()
    }

    #[test]
    fn every_record_is_valid() {
        for (s, to, records) in fortnight() {
            assert!(!records.is_empty());
            for r in &records {
                validate_record(r, BRIDGE, &s.device_id, to, &Limits::default())
                    .unwrap_or_else(|reason| panic!("{reason}: {r:?}"));
                assert_eq!(
                    r.source_created_at.offset(),
                    &s.zone.offset_at(r.source_created_at.to_utc())
                );
            }
        }
    }

    fn sleeps(records: &[Record]) -> Vec<&phr_schema::SleepEpisode> {
        records
            .iter()
            .filter_map(|r| match &r.body {
                Body::SleepEpisode(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_plausible_main_sleep_a_night_in_local_time() {
        for (s, _, records) in fortnight() {
            let nights = sleeps(&records);
            assert_eq!(nights.len(), 14, "{}", s.device_id);
            for n in nights {
                assert!(n.is_main_sleep);
                let (start, end) = (n.effective_time_frame.start(), n.effective_time_frame.end());
                // Read on the local wall clock of each instant: a night can span a transition.
                let (start, end) = (local(s.zone, start), local(s.zone, end));
                let hours = (end - start).num_minutes() as f64 / 60.0;
                assert!((6.0..=9.0).contains(&hours), "{hours} h");
                let bed = start.time().format("%H:%M").to_string();
                assert!(
                    bed.as_str() >= "22:15" || bed.as_str() <= "00:00",
                    "bed {bed}"
                );
                let wake = end.time().format("%H:%M").to_string();
                assert!(("05:45"..="07:15").contains(&wake.as_str()), "wake {wake}");
                let total = n.total_sleep_time.as_ref().unwrap().value;
                assert!(total >= 0.8 * 60.0 * hours, "{total} min of {hours} h");
                let efficiency = n.sleep_maintenance_efficiency_percentage.as_ref().unwrap();
                assert!((80.0..=99.0).contains(&efficiency.value), "{efficiency:?}");
                let latency = n.latency_to_sleep_onset.as_ref().unwrap().value;
                assert!((4.0..=25.0).contains(&latency));
                assert!(n.number_of_awakenings.unwrap() <= 8);
            }
        }
    }

    #[test]
    fn stages_lie_inside_their_episode_without_overlap_and_cycle() {
        for (_, _, records) in fortnight() {
            for n in sleeps(&records) {
                let (start, end) = (n.effective_time_frame.start(), n.effective_time_frame.end());
                let mut cursor = start;
                let mut minutes: BTreeMap<&str, i64> = BTreeMap::new();
                for stage in &n.stages {
                    let i = stage.time_interval;
                    assert!(i.start_date_time >= cursor, "overlap");
                    assert!(i.end_date_time > i.start_date_time);
                    assert!(i.end_date_time <= end, "outside");
                    cursor = i.end_date_time;
                    *minutes.entry(stage.stage.as_str()).or_default() +=
                        (i.end_date_time - i.start_date_time).num_minutes();
                }
                assert_eq!(cursor, end, "stages cover the night");
                let total = (end - start).num_minutes() as f64;
                let share = |k: &str| minutes.get(k).copied().unwrap_or(0) as f64 / total;
                // Adult proportions: light about half, deep and REM each roughly a fifth.
                assert!((0.35..=0.70).contains(&share("light")), "{minutes:?}");
                assert!((0.07..=0.30).contains(&share("deep")), "{minutes:?}");
                assert!((0.12..=0.38).contains(&share("rem")), "{minutes:?}");
                assert!(share("awake") <= 0.12, "{minutes:?}");
            }
        }
    }

    #[test]
    fn no_steps_while_asleep_or_at_night() {
        for (s, _, records) in fortnight() {
            let nights: Vec<_> = sleeps(&records)
                .iter()
                .map(|n| (n.effective_time_frame.start(), n.effective_time_frame.end()))
                .collect();
            for r in &records {
                let Body::StepCount(steps) = &r.body else {
                    continue;
                };
                let (start, end) = (
                    steps.effective_time_frame.start(),
                    steps.effective_time_frame.end(),
                );
                assert!(steps.step_count > 0, "only minutes with steps are sent");
                assert_eq!(end - start, Duration::minutes(1));
                assert_eq!(start.timestamp() % 60, 0, "whole UTC minutes");
                for &(bed, wake) in &nights {
                    assert!(
                        end <= bed || start >= wake,
                        "{} walks in its sleep",
                        s.device_id
                    );
                }
                let hour = local(s.zone, start).time().format("%H").to_string();
                assert!(
                    ("06".."23").contains(&hour.as_str()),
                    "steps at {hour}h local"
                );
            }
        }
    }

    #[test]
    fn daily_steps_are_plausible() {
        for (s, to, records) in fortnight() {
            let from = to - Duration::days(14);
            let mut days: BTreeMap<chrono::NaiveDate, i64> = BTreeMap::new();
            for r in &records {
                if let Body::StepCount(steps) = &r.body {
                    let day = local(s.zone, steps.effective_time_frame.start()).date_naive();
                    *days.entry(day).or_default() += steps.step_count;
                }
            }
            // Only local days wholly inside the (UTC) window count.
            let midnight = |day: chrono::NaiveDate| {
                let index = (day - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days();
                minute_time(s.utc_minute(index * MINUTES_PER_DAY)).unwrap()
            };
            let whole = |day: &chrono::NaiveDate| {
                midnight(*day) >= from && day.succ_opt().is_some_and(|next| midnight(next) <= to)
            };
            let full: Vec<i64> = days
                .iter()
                .filter(|(day, _)| whole(day))
                .map(|(_, steps)| *steps)
                .collect();
            assert!(full.len() >= 13, "{days:?}");
            for total in &full {
                assert!(
                    (2_000..=20_000).contains(total),
                    "{}: {days:?}",
                    s.device_id
                );
            }
            let mean = full.iter().sum::<i64>() / full.len() as i64;
            assert!((5_000..=14_000).contains(&mean), "mean {mean}");
            let (lo, hi) = (full.iter().min().unwrap(), full.iter().max().unwrap());
            assert!(hi - lo > 1_000, "days vary: {days:?}");
        }
    }

    #[test]
    fn heart_rate_every_five_minutes_lower_asleep() {
        for (s, to, records) in fortnight() {
            // The last evening's night ends after the window: look a day further.
            let around = s
                .records(BRIDGE, to - Duration::days(15), to + Duration::days(1))
                .unwrap();
            let nights: Vec<_> = sleeps(&around)
                .iter()
                .map(|n| (n.effective_time_frame.start(), n.effective_time_frame.end()))
                .collect();
            let mut count = 0;
            for r in &records {
                let Body::HeartRate(h) = &r.body else {
                    continue;
                };
                count += 1;
                let at = h.effective_time_frame.date_time;
                assert_eq!(at.timestamp() % 300, 0);
                let bpm = h.heart_rate.value;
                let asleep = nights.iter().any(|&(bed, wake)| at > bed && at <= wake);
                if asleep {
                    assert!((55.0..=70.0).contains(&bpm), "{bpm} asleep");
                } else {
                    assert!((65.0..=110.0).contains(&bpm), "{bpm} awake");
                }
            }
            assert_eq!(count, 14 * 288);
        }
    }

    #[test]
    fn notifications_decode_and_fit_the_protocol() {
        let s = band(5);
        let (from, to) = (t("2026-01-01T00:00:00Z"), t("2026-01-08T00:00:00Z"));
        let all = s.notifications(from, to);
        assert!(all.len() > 1, "a week of notifications");
        assert!(all.windows(2).all(|w| w[0].at <= w[1].at), "time ordered");
        for n in &all {
            assert!(from <= n.at && n.at < to);
            assert!(n.bytes.len() <= 512);
            let (_, readings) = decode::decode(n.characteristic, &n.bytes, n.at).unwrap();
            if n.characteristic == sim_band::ACTIVITY {
                assert!((1..=60).contains(&readings.len()));
                let Some(Reading::Steps { end, .. }) = readings.last() else {
                    panic!("activity without steps")
                };
                assert_eq!(*end, n.at, "stamped with the end of its last minute");
            }
        }
        for c in [
            sim_band::ACTIVITY,
            sim_band::SLEEP,
            heart_rate::CHARACTERISTIC,
        ] {
            assert!(all.iter().any(|n| n.characteristic == c), "{c}");
        }
    }

    /// Steps the band walked in whole minutes inside `[from, to)`, from its minute activity
    /// (the decoders and normaliser, not [`SimBand::steps_today`]).
    fn walked(s: &SimBand, from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
        // An hour's minutes are sent at the end of its last one: look wider, then clip.
        s.records(BRIDGE, from - Duration::hours(2), to + Duration::hours(2))
            .unwrap()
            .iter()
            .filter_map(|r| match &r.body {
                Body::StepCount(c) => Some(c),
                _ => None,
            })
            .filter(|c| {
                let (a, b) = (c.effective_time_frame.start(), c.effective_time_frame.end());
                from <= a && b <= to
            })
            .map(|c| c.step_count)
            .sum()
    }

    /// Feeds a band's daily totals through the bridge's running-total rules for a device in
    /// New York; returns the steps counted and the window they cover.
    fn counted_in_new_york(
        s: &SimBand,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> (i64, DateTime<Utc>, DateTime<Utc>) {
        let totals = s.daily_totals(from, to);
        let (first, last) = (totals[0].at, totals[totals.len() - 1].at);
        let mut counter = crate::cumulative::DailyCounter::new(new_york());
        let mut counted = 0;
        for n in &totals {
            let (_, readings) = decode::decode(n.characteristic, &n.bytes, n.at).unwrap();
            let [Reading::StepsToday { at, total }] = readings[..] else {
                panic!("one steps-today reading: {readings:?}")
            };
            if let Some(d) = counter.observe(at, total) {
                assert!(first <= d.start && d.end <= last);
                counted += i64::from(d.steps);
            }
        }
        (counted, first, last)
    }

    #[test]
    fn daily_totals_of_a_band_in_new_york_count_every_step_once_across_dst() {
        // (window, the 23- or 25-hour local day inside it as UTC instants, where a band that
        // kept EST all year resets after New York's midnight already passed)
        let cases = [
            (
                ("2026-03-07T12:00:00Z", "2026-03-09T12:00:00Z"),
                ("2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z", 23),
                "2026-03-09T05:00:00Z",
            ),
            (
                ("2026-10-31T12:00:00Z", "2026-11-02T12:00:00Z"),
                ("2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z", 25),
                "2026-11-01T05:00:00Z",
            ),
        ];
        for ((from, to), (day_start, day_end, hours), est_reset) in cases {
            let (from, to) = (t(from), t(to));
            let band = SimBand::new(7, 3, new_york());
            // Quarter-hourly, time ordered, inside the window.
            let totals = band.daily_totals(from, to);
            assert_eq!(totals.len() as i64, (to - from).num_minutes() / 15);
            assert!(totals
                .windows(2)
                .all(|w| w[1].at - w[0].at == Duration::minutes(15)));

            // The local day is 23 or 25 hours long, and its total is reset only at its ends.
            let (day_start, day_end) = (t(day_start), t(day_end));
            assert_eq!(day_end - day_start, Duration::hours(hours));
            let day_total = i64::from(band.steps_today(day_end));
            assert!(day_total > 1_000, "a day of walking: {day_total}");
            assert_eq!(
                day_total,
                walked(&band, day_start, day_end),
                "at midnight: the whole day"
            );
            assert_eq!(
                band.steps_today(day_start + Duration::minutes(1)),
                0,
                "reset, asleep"
            );

            let (counted, first, last) = counted_in_new_york(&band, from, to);
            assert_eq!(counted, walked(&band, first, last), "every step once");

            // A band that kept EST all year resets an hour after New York's summer midnight:
            // the bridge takes its unreset total at 01:00 EDT for the new day's, and counts
            // that whole day again.
            let est = SimBand::new(
                7,
                3,
                DayZone::Fixed(FixedOffset::west_opt(5 * 3600).unwrap()),
            );
            let again = i64::from(est.steps_today(t(est_reset)));
            assert!(again > 1_000, "{again}");
            let (counted, first, last) = counted_in_new_york(&est, from, to);
            assert_eq!(counted, walked(&est, first, last) + again);
        }
    }

    #[test]
    fn daily_totals_split_like_everything_else() {
        let s = SimBand::new(2, 9, new_york());
        let (a, b, c) = (
            t("2026-03-07T00:00:00Z"),
            t("2026-03-08T07:07:07Z"),
            t("2026-03-10T00:00:00Z"),
        );
        let mut parts = s.daily_totals(a, b);
        parts.extend(s.daily_totals(b, c));
        assert_eq!(parts, s.daily_totals(a, c));
        assert!(s.daily_totals(b, a).is_empty());
    }

    #[test]
    fn rng_is_stable_across_releases() {
        // Pinned so that a change of generator, which would change every simulated data set
        // (and the records tests compare against), is a deliberate one.
        // SplitMix64's published reference output: state 0, first value.
        assert_eq!(SplitMix(0).next_u64(), 0xe220_a839_7b1d_cdaf);
        // Seeding, the raw sequence, `range` and `unit`: literals taken once from this
        // generator, so any change to how it seeds, steps or maps shows here.
        let mut r = SplitMix::new(&[1, 2, 3]);
        assert_eq!(
            [r.next_u64(), r.next_u64(), r.next_u64()],
            [
                0x75ab_c9f4_d4a9_2726,
                0xd6c5_b01f_661c_3235,
                0xe16a_0c42_0295_f654
            ]
        );
        let ranged: Vec<i64> = (0..8).map(|_| r.range(-3, 3)).collect();
        assert_eq!(ranged, [-1, 0, 1, -1, 2, -2, 3, -1]);
        assert_eq!(
            [r.unit(), r.unit()],
            [0.8900078942786097, 0.5118532601746265]
        );
        assert_eq!(SplitMix::new(&[1, 2, 4]).next_u64(), 0x9dc4_0f35_5085_d214);
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        for _ in 0..1000 {
            let x = r.range(-3, 3);
            assert!((-3..=3).contains(&x));
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
