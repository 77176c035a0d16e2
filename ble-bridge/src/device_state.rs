//! Per-device state between the decoders and the normaliser.
//!
//! Most readings stand alone (a heart rate at an instant, steps over an interval). Two kinds
//! mean something only against what came before, and become plain interval readings here:
//!
//! - **Running daily step totals** ([`Reading::StepsToday`]): turned into interval deltas by
//!   [`DailyCounter`] (midnight rollover, counter resets and the device's zone; rules in
//!   [`crate::cumulative`]). The device's own Local Time Information ([`Reading::LocalTime`])
//!   is given to the counter: where it disagrees with the configured zone the band's
//!   midnight wins. A report whose DST offset is unknown counts as agreeing when its
//!   standard offset is the zone's (the zone then supplies DST), else as the band's standard
//!   offset; one whose time zone is unknown is ignored.
//! - **PAMS summaries** ([`Reading::PamsSteps`], [`Reading::PamsSleep`]): timed in seconds since
//!   the start of their session. The session's start comes from Activity Current Session or a
//!   Session Descriptor ([`Reading::PamsSession`]); summaries that arrive before it are held
//!   (at most [`MAX_HELD`], oldest dropped with a count) and released when it comes.
//!
//! # PAMS rules
//! A PAMS step summary is read as the running total of its sub-session (a summary sums the
//! sub-session so far). Per `(session, sub-session)`:
//!
//! | summary | outcome |
//! | --- | --- |
//! | same sequence number as the last one | a repeated indication: ignored |
//! | not later than the last one (relative time) | late; the later total already includes it: ignored |
//! | total grew | `total − last` over `[last summary, this summary)` |
//! | total fell | the device restarted its count: `total` over `[last summary, this summary)` |
//! | first of the sub-session | `total` over `[sub-session start, this summary)`; the session start when the sub-session's is unknown |
//!
//! A sleep summary is one episode ending at the summary's time and starting `total bed time`
//! before it (else at the sub-session start, else `total sleep + total wake` before it); a
//! summary seen before (same session, sub-session and sequence) is ignored. Episodes of 3 h
//! or more are marked main sleep: PAMS does not say, and this is the bridge's rule.
//! A session start that changes for the same session id (the device renumbered its sessions,
//! e.g. after a reset) starts that session afresh.
//!
//! The whole state is serialisable; the daemon saves it in the outbox database in the same
//! transaction as the records it produced, so a restart neither loses nor repeats steps.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::cumulative::{DailyCounter, DayZone};
use crate::decode::{PamsSessionTiming, PamsSleepSummary, Reading, SleepReading, SleepTotals};

/// PAMS summaries held per device while their session's start is unknown.
pub const MAX_HELD: usize = 1024;
/// Sleep summaries remembered per device to recognise repeats.
const MAX_SEEN_SLEEP: usize = 4096;
/// Sessions remembered per device; the oldest (by start) are forgotten beyond this.
const MAX_SESSIONS: usize = 256;
/// Episodes at least this long are main sleep.
const MAIN_SLEEP: TimeDelta = TimeDelta::hours(3);

/// What one device has told the bridge so far that later readings depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    counter: DailyCounter,
    #[serde(default)]
    pams: Pams,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Pams {
    /// Session id → start.
    sessions: BTreeMap<u16, DateTime<Utc>>,
    /// (session, sub-session) → start.
    #[serde(with = "pairs")]
    sub_sessions: BTreeMap<(u16, u16), DateTime<Utc>>,
    /// (session, sub-session) → the last step summary used.
    #[serde(with = "pairs")]
    last_steps: BTreeMap<(u16, u16), LastSteps>,
    /// (session, sub-session, sequence) of sleep summaries already turned into episodes.
    seen_sleep: BTreeSet<(u16, u16, u32)>,
    /// Summaries waiting for their session's start, oldest first.
    held: VecDeque<Held>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct LastSteps {
    relative_seconds: u32,
    sequence: u32,
    total: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Held {
    Steps {
        session_id: u16,
        sub_session_id: u16,
        relative_seconds: u32,
        sequence: u32,
        steps: u32,
    },
    Sleep(PamsSleepSummary),
}

impl Held {
    fn session_id(&self) -> u16 {
        match self {
            Held::Steps { session_id, .. } => *session_id,
            Held::Sleep(s) => s.session_id,
        }
    }
}

/// What [`DeviceState::process`] did with a reading, beyond its output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Effects {
    /// Summaries dropped because too many were waiting for their session's start.
    pub dropped: usize,
    /// Summaries held until their session's start is known.
    pub held: usize,
    /// Repeated or late summaries ignored.
    pub ignored: usize,
}

impl DeviceState {
    /// A device whose days follow `zone`.
    pub fn new(zone: DayZone) -> Self {
        Self {
            counter: DailyCounter::new(zone),
            pams: Pams::default(),
        }
    }

    /// Restores a saved state with the zone configured now; `None` if it cannot be read (the
    /// caller starts afresh). What the band reported about its offset is kept.
    pub fn from_json(json: &str, zone: DayZone) -> Option<Self> {
        let mut state: Self = serde_json::from_str(json).ok()?;
        state.counter.set_zone(zone);
        Some(state)
    }

    /// The device's offset from UTC at `at` (the band's report or the configured zone).
    pub fn offset_at(&self, at: DateTime<Utc>) -> FixedOffset {
        self.counter.offset_at(at)
    }

    /// The running-total counter (its zone, the band's report).
    pub fn counter(&self) -> &DailyCounter {
        &self.counter
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Turns one reading into the readings it stands for: stateless readings pass through
    /// unchanged; stateful ones update the state and yield zero or more interval readings.
    pub fn process(&mut self, reading: Reading) -> (Vec<Reading>, Effects) {
        let mut fx = Effects::default();
        let out = match reading {
            Reading::StepsToday { at, total } => self
                .counter
                .observe(at, total)
                .map(|d| Reading::Steps {
                    start: d.start,
                    end: d.end,
                    steps: d.steps,
                })
                .into_iter()
                .collect(),
            Reading::PamsSteps {
                session_id,
                sub_session_id,
                relative_seconds,
                sequence,
                steps,
                ..
            } => self.pams.summary(
                Held::Steps {
                    session_id,
                    sub_session_id,
                    relative_seconds,
                    sequence,
                    steps,
                },
                &mut fx,
            ),
            Reading::PamsSleep(s) => self.pams.summary(Held::Sleep(s), &mut fx),
            Reading::LocalTime {
                zone_minutes,
                dst_minutes,
                received_at,
            } => {
                self.local_time(zone_minutes, dst_minutes, received_at);
                Vec::new()
            }
            Reading::PamsSession(t) => self.pams.session(t, &mut fx),
            other => vec![other],
        };
        (out, fx)
    }
}

impl DeviceState {
    fn local_time(&mut self, zone: Option<i16>, dst: Option<u16>, at: DateTime<Utc>) {
        let Some(zone) = zone else { return };
        let seconds = |minutes: i32| FixedOffset::east_opt(minutes * 60);
        let offset = match dst {
            Some(dst) => seconds(i32::from(zone) + i32::from(dst)),
            None => {
                let configured = self.counter.zone();
                match seconds(i32::from(zone)) {
                    Some(standard) if configured.standard_offset_at(at) == standard => {
                        Some(configured.offset_at(at))
                    }
                    other => other,
                }
            }
        };
        if let Some(offset) = offset {
            self.counter.set_band_offset(offset, at);
        }
    }
}

impl Pams {
    fn session(&mut self, t: PamsSessionTiming, fx: &mut Effects) -> Vec<Reading> {
        match t.sub_session_id {
            Some(sub) => {
                self.sub_sessions.insert((t.session_id, sub), t.start);
                Vec::new()
            }
            None => {
                let previous = self.sessions.insert(t.session_id, t.start);
                if previous.is_some_and(|p| p != t.start) {
                    // The same id for a new session: forget the old one's progress.
                    self.forget(t.session_id);
                    self.sessions.insert(t.session_id, t.start);
                }
                while self.sessions.len() > MAX_SESSIONS {
                    let oldest = self.sessions.iter().min_by_key(|(_, start)| **start);
                    let Some((&id, _)) = oldest else { break };
                    self.forget(id);
                }
                let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
                    .into_iter()
                    .partition(|h| h.session_id() == t.session_id);
                self.held = waiting.into();
                ready
                    .into_iter()
                    .flat_map(|h| self.summary(h, fx))
                    .collect()
            }
        }
    }

    fn forget(&mut self, session_id: u16) {
        self.sessions.remove(&session_id);
        self.sub_sessions.retain(|(s, _), _| *s != session_id);
        self.last_steps.retain(|(s, _), _| *s != session_id);
        self.seen_sleep.retain(|(s, _, _)| *s != session_id);
    }

    fn summary(&mut self, h: Held, fx: &mut Effects) -> Vec<Reading> {
        let Some(&session_start) = self.sessions.get(&h.session_id()) else {
            self.held.push_back(h);
            fx.held += 1;
            while self.held.len() > MAX_HELD {
                self.held.pop_front();
                fx.dropped += 1;
            }
            return Vec::new();
        };
        let at = |relative: u32| session_start + TimeDelta::seconds(i64::from(relative));
        match h {
            Held::Steps {
                session_id,
                sub_session_id,
                relative_seconds,
                sequence,
                steps,
            } => {
                let key = (session_id, sub_session_id);
                let last = self.last_steps.get(&key).copied();
                if let Some(l) = last {
                    if l.sequence == sequence || relative_seconds <= l.relative_seconds {
                        fx.ignored += 1;
                        return Vec::new();
                    }
                }
                self.last_steps.insert(
                    key,
                    LastSteps {
                        relative_seconds,
                        sequence,
                        total: steps,
                    },
                );
                let end = at(relative_seconds);
                let (start, delta) = match last {
                    Some(l) if steps >= l.total => (at(l.relative_seconds), steps - l.total),
                    Some(l) => (at(l.relative_seconds), steps),
                    None => (
                        self.sub_sessions
                            .get(&key)
                            .copied()
                            .filter(|s| *s >= session_start)
                            .unwrap_or(session_start),
                        steps,
                    ),
                };
                if delta == 0 || start >= end {
                    return Vec::new();
                }
                vec![Reading::Steps {
                    start,
                    end,
                    steps: delta,
                }]
            }
            Held::Sleep(s) => {
                let key = (s.session_id, s.sub_session_id, s.sequence);
                if !self.seen_sleep.insert(key) {
                    fx.ignored += 1;
                    return Vec::new();
                }
                while self.seen_sleep.len() > MAX_SEEN_SLEEP {
                    self.seen_sleep.pop_first();
                }
                let end = at(s.relative_seconds);
                let secs = |v: u32| TimeDelta::seconds(i64::from(v));
                let start = match (s.total_bed_seconds, s.total_sleep_seconds) {
                    (Some(bed), _) => end - secs(bed),
                    (None, sleep) => match self.sub_sessions.get(&(s.session_id, s.sub_session_id))
                    {
                        Some(&sub) if sub < end => sub,
                        _ => end - secs(sleep.unwrap_or(0) + s.total_wake_seconds.unwrap_or(0)),
                    },
                };
                if start >= end {
                    return Vec::new();
                }
                vec![Reading::Sleep(SleepReading {
                    start,
                    end,
                    is_main_sleep: end - start >= MAIN_SLEEP,
                    stages: Vec::new(),
                    reported: SleepTotals {
                        total_sleep: s.total_sleep_seconds.map(secs),
                        latency: s.latency_seconds.map(|l| secs(u32::from(l))),
                        awakenings: s.awakenings,
                        efficiency_percent: s.efficiency_percent,
                    },
                })]
            }
        }
    }
}

/// Serde for maps whose keys JSON cannot hold (tuples): a list of pairs.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        ser: S,
    ) -> Result<S::Ok, S::Error> {
        ser.collect_seq(map.iter())
    }

    pub(super) fn deserialize<'de, K, V, D>(de: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(de)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests;
