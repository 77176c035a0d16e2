//! One person, several devices: which device's data counts for each stretch of time (issue
//! #15). Raw records keep every source (record reads, sync and exports are unchanged); what
//! aggregates (daily summaries, FHIR daily totals, dashboards, flags) reads the **merged
//! view** decided here.
//!
//! # The rule
//! - Time is cut into the rollup's 5-minute clock intervals ([`super::rollup`]). In each
//!   interval of a day, the data of **one device** counts: the first in that day's order
//!   that has data in the interval. The others' data in that interval does not add to any
//!   total. A record longer than an interval (a band that stores 15-minute counts) is spread
//!   over the intervals it covers in proportion to the time it covers in each, so a
//!   minute-level band and a 15-minute one are compared interval by interval.
//! - **The order of a day**: first the devices the owner ordered for that type
//!   ([`Store::set_source_order`], for past days too), in their order; then the others by the
//!   default rule: the device whose data covers more of that day (steps: measured time;
//!   heart rate: readings; sleep: minutes in bed), then the one paired to the person most
//!   recently, then the device id (so the choice is stable).
//! - **Sleep**: per night, episodes are taken in the night's device order, each device's
//!   longest first; an episode overlapping one already taken is a **duplicate** of it (the
//!   same night seen by a second device) and counts nowhere, not as a nap; an episode
//!   overlapping nothing taken counts (a true nap, or a night only one device saw).
//! - Heart rate: the resting rate is the lowest 5-minute mean of the intervals' chosen
//!   devices.
//!
//! The order is a person's own setting, changed only by them, and each change is written to
//! their disclosure log ([`super::audit::Action::SourcePriority`]).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use rusqlite::params;

use phr_schema::RecordType;

use super::{audit, Store};
use crate::{Error, Result};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS source_order (
    person_id TEXT NOT NULL,
    record_type TEXT NOT NULL,
    rank INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    PRIMARY KEY (person_id, record_type, rank),
    UNIQUE (person_id, record_type, device_id)
) WITHOUT ROWID;
";

/// At most this many devices in one person's order for one type.
pub const MAX_ORDERED: usize = 32;

/// One device's data in one 5-minute interval (from the rollup, or from the records at the
/// ends of a range the rollup does not cover whole).
#[derive(Debug, Clone, PartialEq)]
pub struct SlotRow {
    pub slot: i64,
    pub device_id: String,
    /// The interval's share of the device's values (steps; heart rate: the sum of readings).
    pub total: f64,
    /// Records starting in the interval (steps), readings in it (heart rate).
    pub records: i64,
    /// Measured time of the device's records in the interval, in milliseconds (steps).
    pub covered_ms: i64,
}

/// How a day's devices are ordered: the owner's explicit order, then the default rule.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ranking {
    /// The owner's order for the type (first counts first).
    pub explicit: Vec<String>,
    /// When each device was last paired to the person (ms), for the default rule's tie-break.
    pub paired_ms: HashMap<String, i64>,
}

impl Ranking {
    /// The order of the devices in `weight` (device → how much of the day its data covers):
    /// the explicit ones present first, then by weight, latest pairing, id.
    pub fn order(&self, weight: &BTreeMap<String, f64>) -> Vec<String> {
        let mut out: Vec<String> = self
            .explicit
            .iter()
            .filter(|d| weight.contains_key(*d))
            .cloned()
            .collect();
        let mut rest: Vec<(&String, f64)> = weight
            .iter()
            .filter(|(d, _)| !self.explicit.contains(d))
            .map(|(d, w)| (d, *w))
            .collect();
        rest.sort_by(|(a, wa), (b, wb)| {
            wb.total_cmp(wa)
                .then_with(|| {
                    let pa = self.paired_ms.get(*a).copied().unwrap_or(i64::MIN);
                    let pb = self.paired_ms.get(*b).copied().unwrap_or(i64::MIN);
                    pb.cmp(&pa)
                })
                .then_with(|| a.cmp(b))
        });
        out.extend(rest.into_iter().map(|(d, _)| d.clone()));
        out
    }
}

/// One day merged: what counts and from which device.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergedDay {
    /// Sum of the chosen devices' interval totals.
    pub total: f64,
    /// Records (or readings) in the chosen intervals.
    pub records: i64,
    /// The chosen intervals, each with its total and record count, in slot order.
    pub slots: Vec<(i64, f64, i64)>,
    /// Intervals counted per device.
    pub counted: BTreeMap<String, usize>,
    /// The day's order.
    pub order: Vec<String>,
}

/// How much of a day a device's rows cover, for the default rule: measured time when the
/// rows have it (steps), else the records (heart rate).
fn weights(rows: &[SlotRow]) -> BTreeMap<String, f64> {
    let mut w: BTreeMap<String, f64> = BTreeMap::new();
    for r in rows {
        let v = if r.covered_ms > 0 {
            r.covered_ms as f64
        } else {
            r.records as f64
        };
        *w.entry(r.device_id.clone()).or_default() += v;
    }
    w
}

/// Merges one day's rows: per interval, the first device in the day's order with data there.
pub fn merge_day(rows: &[SlotRow], ranking: &Ranking) -> MergedDay {
    let order = ranking.order(&weights(rows));
    let rank = |d: &str| order.iter().position(|o| o == d).unwrap_or(usize::MAX);
    let mut best: BTreeMap<i64, &SlotRow> = BTreeMap::new();
    for r in rows {
        match best.get(&r.slot) {
            Some(b) if rank(&b.device_id) <= rank(&r.device_id) => {}
            _ => {
                best.insert(r.slot, r);
            }
        }
    }
    let mut day = MergedDay {
        order: order.clone(),
        ..MergedDay::default()
    };
    for (slot, r) in best {
        day.total += r.total;
        day.records += r.records;
        day.slots.push((slot, r.total, r.records));
        *day.counted.entry(r.device_id.clone()).or_default() += 1;
    }
    day
}

/// One sleep episode of a night, for [`merge_night`].
#[derive(Debug, Clone, PartialEq)]
pub struct NightEpisode {
    pub device_id: String,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// For each episode of one night (in the given order), whether it counts (`true`) or is a
/// duplicate of one that does (`false`), and the night's device order.
pub fn merge_night(episodes: &[NightEpisode], ranking: &Ranking) -> (Vec<bool>, Vec<String>) {
    let mut weight: BTreeMap<String, f64> = BTreeMap::new();
    for e in episodes {
        *weight.entry(e.device_id.clone()).or_default() += (e.end_ms - e.start_ms) as f64;
    }
    let order = ranking.order(&weight);
    let rank = |d: &str| order.iter().position(|o| o == d).unwrap_or(usize::MAX);
    let mut idx: Vec<usize> = (0..episodes.len()).collect();
    // The night's order, each device's longest first; ties by start, then position.
    idx.sort_by_key(|&i| {
        let e = &episodes[i];
        (
            rank(&e.device_id),
            std::cmp::Reverse(e.end_ms - e.start_ms),
            e.start_ms,
            i,
        )
    });
    let mut counts = vec![false; episodes.len()];
    let mut taken: Vec<(i64, i64)> = Vec::new();
    for i in idx {
        let e = &episodes[i];
        if taken.iter().any(|(s, t)| e.start_ms < *t && *s < e.end_ms) {
            continue;
        }
        taken.push((e.start_ms, e.end_ms));
        counts[i] = true;
    }
    (counts, order)
}

/// One record's pieces in the rollup's intervals, as the rollup's triggers make them: a step
/// record longer than zero is spread over the intervals it was measured in, in proportion to
/// its time in each (`records` 1 in its first interval only); anything else stays whole in
/// the interval it starts in.
pub fn spread(record_type: RecordType, start_ms: i64, end_ms: i64, value: f64) -> Vec<SlotRow> {
    let interval = crate::rollup::INTERVAL_MS;
    let first = start_ms.div_euclid(interval);
    let piece = |slot, total, records, covered_ms| SlotRow {
        slot,
        device_id: String::new(),
        total,
        records,
        covered_ms,
    };
    if record_type != RecordType::StepCount || end_ms <= start_ms {
        return vec![piece(first, value, 1, 0)];
    }
    let last = (end_ms - 1).div_euclid(interval);
    if last == first {
        return vec![piece(first, value, 1, end_ms - start_ms)];
    }
    (first..=last)
        .map(|k| {
            let covered = end_ms.min((k + 1) * interval) - start_ms.max(k * interval);
            piece(
                k,
                value * covered as f64 / (end_ms - start_ms) as f64,
                i64::from(k == first),
                covered,
            )
        })
        .collect()
}

impl Store {
    /// The ranking inputs for `person_id` and `record_type`: the owner's order and when each
    /// device was last paired to them.
    pub fn ranking(&self, person_id: &str, record_type: RecordType) -> Result<Ranking> {
        self.read(|conn| {
            let explicit = conn
                .prepare_cached(
                    "SELECT device_id FROM source_order
                      WHERE person_id = ?1 AND record_type = ?2 ORDER BY rank",
                )?
                .query_map(params![person_id, record_type.as_str()], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            let paired_ms = conn
                .prepare_cached(
                    "SELECT device_id, MAX(valid_from) FROM bindings
                      WHERE person_id = ?1 GROUP BY device_id",
                )?
                .query_map([person_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<HashMap<String, i64>>>()?;
            Ok(Ranking {
                explicit,
                paired_ms,
            })
        })
    }

    /// The owner's order for `record_type` (empty: the default rule alone).
    pub fn source_order(&self, person_id: &str, record_type: RecordType) -> Result<Vec<String>> {
        Ok(self.ranking(person_id, record_type)?.explicit)
    }

    /// The devices that ever measured for `person_id` (bound to them at some time), in the
    /// order of their latest pairing, latest first.
    pub fn sources_of(&self, person_id: &str) -> Result<Vec<String>> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT device_id FROM bindings WHERE person_id = ?1
                      GROUP BY device_id ORDER BY MAX(valid_from) DESC, device_id",
                )?
                .query_map([person_id], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?)
        })
    }

    /// Sets `person_id`'s order for `record_type` (first counts first; empty: back to the
    /// default rule). Every device must be one that was ever bound to them, each once, at
    /// most [`MAX_ORDERED`]. The change is written to their disclosure log; it applies to
    /// every day, past ones too (the merge is made when read).
    pub fn set_source_order(
        &self,
        person_id: &str,
        record_type: RecordType,
        devices: &[String],
        now: DateTime<Utc>,
    ) -> Result<()> {
        if devices.len() > MAX_ORDERED {
            return Err(Error::Invalid("too many devices in the order"));
        }
        for (i, d) in devices.iter().enumerate() {
            if devices[..i].contains(d) {
                return Err(Error::Invalid("a device is listed twice"));
            }
        }
        let known = self.sources_of(person_id)?;
        if let Some(unknown) = devices.iter().find(|d| !known.contains(d)) {
            let _ = unknown;
            return Err(Error::Invalid("not a device of this person"));
        }
        self.write(|tx| {
            tx.execute(
                "DELETE FROM source_order WHERE person_id = ?1 AND record_type = ?2",
                params![person_id, record_type.as_str()],
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO source_order (person_id, record_type, rank, device_id)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (rank, d) in devices.iter().enumerate() {
                insert.execute(params![person_id, record_type.as_str(), rank as i64, d])?;
            }
            let what = if devices.is_empty() {
                format!(
                    "{} sources: back to the default order",
                    record_type.as_str()
                )
            } else {
                format!(
                    "{} sources in order: {}",
                    record_type.as_str(),
                    devices.join(", ")
                )
            };
            let mut entry =
                audit::Entry::by_owner(person_id, audit::Action::SourcePriority, &what, 0, now);
            entry.data_types = vec![record_type.as_str().to_owned()];
            audit::append(tx, &entry)?;
            Ok(())
        })
    }
}

impl Store {
    /// Every device's rows of `person_id`'s `record_type` (steps or heart rate) per day of
    /// `days` (by index). Whole days come from the rollup. A day a consent's window cuts is
    /// read from its records starting inside the window, spread the way the rollup spreads
    /// them ([`spread`]), so nothing measured from before the window counts.
    pub fn slot_rows(
        &self,
        person_id: &str,
        record_type: RecordType,
        days: &[super::subjects::DayWindow],
    ) -> Result<BTreeMap<usize, Vec<SlotRow>>> {
        let bounds = |partial: bool| -> Option<String> {
            let v: Vec<serde_json::Value> = days
                .iter()
                .enumerate()
                .filter(|(_, d)| d.partial == partial && d.to_ms > d.from_ms)
                .map(|(i, d)| {
                    if partial {
                        serde_json::json!([i, d.from_ms, d.to_ms])
                    } else {
                        // Whole days start and end on interval bounds (local midnights are
                        // whole quarter hours in every zone in use).
                        serde_json::json!([
                            i,
                            d.from_ms.div_euclid(crate::rollup::INTERVAL_MS),
                            d.to_ms.div_euclid(crate::rollup::INTERVAL_MS)
                        ])
                    }
                })
                .collect();
            (!v.is_empty()).then(|| serde_json::Value::from(v).to_string())
        };
        let (whole, cut) = (bounds(false), bounds(true));
        let mut out: BTreeMap<usize, Vec<SlotRow>> = BTreeMap::new();
        self.read(|conn| {
            if let Some(whole) = &whole {
                let mut stmt = conn.prepare_cached(
                    "WITH d(i, a, b) AS (
                         SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
                                json_extract(value, '$[2]')
                           FROM json_each(?2))
                     SELECT d.i, s.slot, s.device_id, s.total, s.records, s.covered_ms
                       FROM d CROSS JOIN series_slots s
                      WHERE s.person_id = ?1 AND s.record_type = ?3
                        AND s.slot >= d.a AND s.slot < d.b",
                )?;
                let mut rows = stmt.query(params![person_id, whole, record_type.as_str()])?;
                while let Some(r) = rows.next()? {
                    out.entry(r.get::<_, i64>(0)? as usize)
                        .or_default()
                        .push(SlotRow {
                            slot: r.get(1)?,
                            device_id: r.get(2)?,
                            total: r.get(3)?,
                            records: r.get(4)?,
                            covered_ms: r.get(5)?,
                        });
                }
            }
            if let Some(cut) = &cut {
                let mut stmt = conn.prepare_cached(
                    "WITH d(i, s, e) AS (
                         SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
                                json_extract(value, '$[2]')
                           FROM json_each(?2))
                     SELECT d.i, r.device_id, r.start_ms, r.end_ms,
                            CASE r.record_type
                                WHEN 'step-count' THEN json_extract(r.body, '$.body.step_count')
                                ELSE json_extract(r.body, '$.body.heart_rate.value') END
                       FROM d CROSS JOIN records r
                      WHERE r.person_id = ?1 AND r.record_type = ?3
                        AND r.start_ms >= d.s AND r.start_ms < d.e",
                )?;
                let mut rows = stmt.query(params![person_id, cut, record_type.as_str()])?;
                let mut sums: BTreeMap<(usize, i64, String), SlotRow> = BTreeMap::new();
                while let Some(r) = rows.next()? {
                    let i = r.get::<_, i64>(0)? as usize;
                    let device: String = r.get(1)?;
                    let value: f64 = r.get(4)?;
                    for piece in spread(record_type, r.get(2)?, r.get(3)?, value) {
                        let e = sums
                            .entry((i, piece.slot, device.clone()))
                            .or_insert_with(|| SlotRow {
                                slot: piece.slot,
                                device_id: device.clone(),
                                total: 0.0,
                                records: 0,
                                covered_ms: 0,
                            });
                        e.total += piece.total;
                        e.records += piece.records;
                        e.covered_ms += piece.covered_ms;
                    }
                }
                for ((i, _, _), row) in sums {
                    out.entry(i).or_default().push(row);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// `person_id`'s `record_type` merged per day of `days` (by index, days with data only).
    pub fn merged_days(
        &self,
        person_id: &str,
        record_type: RecordType,
        days: &[super::subjects::DayWindow],
    ) -> Result<BTreeMap<usize, MergedDay>> {
        let rows = self.slot_rows(person_id, record_type, days)?;
        if rows.is_empty() {
            return Ok(BTreeMap::new());
        }
        let ranking = self.ranking(person_id, record_type)?;
        Ok(rows
            .into_iter()
            .map(|(i, rows)| (i, merge_day(&rows, &ranking)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(slot: i64, device: &str, total: f64, covered_min: i64) -> SlotRow {
        SlotRow {
            slot,
            device_id: device.to_owned(),
            total,
            records: covered_min,
            covered_ms: covered_min * 60_000,
        }
    }

    #[test]
    fn each_interval_counts_one_device_the_densest_first_by_default() {
        // A covers intervals 0..4 fully; B covers 2..6 (2 and 3 overlap A's).
        let mut rows = Vec::new();
        for s in 0..4 {
            rows.push(row(s, "a", 100.0, 5));
        }
        for s in 2..6 {
            rows.push(row(s, "b", 90.0, 5));
        }
        let day = merge_day(&rows, &Ranking::default());
        // Equal weight (20 minutes each): the tie goes by pairing (none), then id: a first.
        assert_eq!(day.order, vec!["a", "b"]);
        assert_eq!(day.total, 4.0 * 100.0 + 2.0 * 90.0);
        assert_eq!(day.counted["a"], 4);
        assert_eq!(day.counted["b"], 2);

        // B paired more recently wins the tie.
        let recent_b = Ranking {
            explicit: vec![],
            paired_ms: HashMap::from([("a".into(), 1), ("b".into(), 2)]),
        };
        assert_eq!(merge_day(&rows, &recent_b).total, 2.0 * 100.0 + 4.0 * 90.0);

        // B denser: first, whatever the pairing.
        rows.push(row(6, "b", 90.0, 5));
        assert_eq!(merge_day(&rows, &Ranking::default()).order, vec!["b", "a"]);
    }

    #[test]
    fn the_owners_order_comes_before_the_default_rule() {
        let rows = vec![
            row(0, "a", 100.0, 5),
            row(1, "a", 100.0, 5),
            row(1, "b", 7.0, 1),
            row(2, "c", 3.0, 1),
        ];
        let ranking = Ranking {
            explicit: vec!["b".into(), "gone".into()],
            paired_ms: HashMap::new(),
        };
        let day = merge_day(&rows, &ranking);
        assert_eq!(day.order, vec!["b", "a", "c"]);
        // Interval 1 is b's (7), 0 is a's, 2 is c's (nobody else there).
        assert_eq!(day.total, 100.0 + 7.0 + 3.0);
    }

    #[test]
    fn a_nights_duplicates_are_the_overlapping_episodes_of_lower_devices() {
        let ep = |d: &str, s: i64, e: i64| NightEpisode {
            device_id: d.to_owned(),
            start_ms: s,
            end_ms: e,
        };
        // a: 23:00-07:00 and a nap 14:00-14:30; b: 23:10-06:50 (the same night) and a nap
        // 16:00-16:20 nobody else saw; c: a 14:05-14:25 nap, inside a's.
        let h = 3_600_000;
        let episodes = vec![
            ep("b", 23 * h + h / 6, 30 * h + 5 * h / 6),
            ep("a", 23 * h, 31 * h),
            ep("a", 38 * h, 38 * h + h / 2),
            ep("b", 40 * h, 40 * h + h / 3),
            ep("c", 38 * h + h / 12, 38 * h + 5 * h / 12),
        ];
        let (counts, order) = merge_night(&episodes, &Ranking::default());
        assert_eq!(order, vec!["a", "b", "c"]);
        assert_eq!(counts, vec![false, true, true, true, false]);
        // The owner puts b first: b's night counts, a's is its duplicate; a's nap still
        // counts (b has none then), c's stays a duplicate of a's nap.
        let b_first = Ranking {
            explicit: vec!["b".into()],
            paired_ms: HashMap::new(),
        };
        let (counts, _) = merge_night(&episodes, &b_first);
        assert_eq!(counts, vec![true, false, true, true, false]);
    }
}

/// The merge on a real store: records imported for one person from several devices, the
/// daily summary read back and compared with a merge computed by hand in each test.
#[cfg(test)]
mod merged {
    use chrono::{DateTime, FixedOffset, NaiveDate, TimeDelta, Utc};
    use phr_schema::record::{IntervalFrame, Provenance, SleepEpisode, StepCount};
    use phr_schema::{Body, Record, RecordType};

    use crate::subjects::{DailySummary, Zone};
    use crate::Store;

    const PIA: &str = "pia";

    fn at(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn open(tz: &str) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("phr.sqlite")).unwrap();
        store.add_person(PIA, "Pia", tz).unwrap();
        store.grant_storage_consent(PIA, &RecordType::ALL).unwrap();
        (dir, store)
    }

    /// Binds `device` to Pia from `from` (the default rule's tie-break: latest pairing first).
    fn pair(store: &Store, device: &str, from: &str) {
        store.add_device(device, "br", None).unwrap();
        store
            .bind(device, PIA, at(from).with_timezone(&Utc))
            .unwrap();
    }

    fn steps(device: &str, start: DateTime<FixedOffset>, minutes: i64, count: i64) -> Record {
        let end = start + TimeDelta::minutes(minutes);
        Record::new(
            device,
            "br",
            end,
            Provenance::sensed("test/1"),
            Body::StepCount(StepCount {
                effective_time_frame: IntervalFrame::new(start, end),
                step_count: count,
            }),
        )
    }

    /// `n` back-to-back records of `minutes` each from `start`, `count` steps each.
    fn run(device: &str, start: &str, n: i64, minutes: i64, count: i64) -> Vec<Record> {
        let start = at(start);
        (0..n)
            .map(|i| {
                steps(
                    device,
                    start + TimeDelta::minutes(i * minutes),
                    minutes,
                    count,
                )
            })
            .collect()
    }

    fn import(store: &Store, records: Vec<Record>) {
        let report = store.import_records(PIA, &records, Utc::now()).unwrap();
        assert_eq!(report.stored as usize, records.len(), "{report:?}");
    }

    /// Pia's step total of local day `day` in `tz`.
    fn total(store: &Store, tz: &str, day: &str) -> Option<i64> {
        let zone = Zone::resolve(Some(tz));
        let days: Vec<_> = zone
            .days(date(day), date(day))
            .iter()
            .filter_map(|d| d.clip((i64::MIN, i64::MAX)))
            .collect();
        let mut s = DailySummary::new(PIA, &zone, date(day), date(day));
        store.daily_steps(PIA, &days, &mut s).unwrap();
        s.days.first().and_then(|d| d.steps).map(|s| s.total)
    }

    const TOKYO: &str = "Asia/Tokyo";

    #[test]
    fn two_bands_over_the_same_hour_count_it_once_the_later_paired_one_by_default() {
        let (_dir, store) = open(TOKYO);
        pair(&store, "a", "2026-11-01T00:00:00+09:00");
        pair(&store, "b", "2026-11-02T00:00:00+09:00");
        import(&store, run("a", "2026-11-20T10:00:00+09:00", 60, 1, 100));
        import(&store, run("b", "2026-11-20T10:00:00+09:00", 60, 1, 90));
        // Same coverage: the later paired (b) counts. Not 6,000 + 5,400.
        assert_eq!(total(&store, TOKYO, "2026-11-20"), Some(60 * 90));
        // Pia puts a first; the past day follows.
        let now = Utc::now();
        store
            .set_source_order(PIA, RecordType::StepCount, &["a".into()], now)
            .unwrap();
        assert_eq!(total(&store, TOKYO, "2026-11-20"), Some(60 * 100));
        // Her log says so.
        let log = store.disclosures(PIA, 0, 100).unwrap();
        assert!(
            log.iter()
                .any(|e| e.entry.action == crate::audit::Action::SourcePriority
                    && e.entry.purpose.contains("a")),
            "{log:?}"
        );
        // Devices she never had cannot be ordered; nothing changes.
        assert!(store
            .set_source_order(PIA, RecordType::StepCount, &["zz".into()], now)
            .is_err());
        assert!(store
            .set_source_order(PIA, RecordType::StepCount, &["a".into(), "a".into()], now)
            .is_err());
        assert_eq!(
            store.source_order(PIA, RecordType::StepCount).unwrap(),
            vec!["a"]
        );
    }

    #[test]
    fn partly_overlapping_bands_add_only_the_time_the_first_did_not_cover() {
        let (_dir, store) = open(TOKYO);
        pair(&store, "a", "2026-11-01T00:00:00+09:00");
        pair(&store, "b", "2026-11-01T00:00:00+09:00");
        // a: 10:00-11:00 at 100 a minute; b: 10:30-12:00 at 80.
        import(&store, run("a", "2026-11-20T10:00:00+09:00", 60, 1, 100));
        import(&store, run("b", "2026-11-20T10:30:00+09:00", 90, 1, 80));
        // b covers more of the day (90 min): all of b, and a's 10:00-10:30.
        assert_eq!(total(&store, TOKYO, "2026-11-20"), Some(90 * 80 + 30 * 100));
        store
            .set_source_order(
                PIA,
                RecordType::StepCount,
                &["a".into(), "b".into()],
                Utc::now(),
            )
            .unwrap();
        // a first: all of a, and b's 11:00-12:00.
        assert_eq!(total(&store, TOKYO, "2026-11-20"), Some(60 * 100 + 60 * 80));
    }

    #[test]
    fn minute_and_quarter_hour_bands_are_compared_interval_by_interval() {
        let (_dir, store) = open(TOKYO);
        pair(&store, "watch", "2026-11-01T00:00:00+09:00");
        pair(&store, "ring", "2026-11-01T00:00:00+09:00");
        // The watch: minutes 10:00-11:00 at 100; the ring: quarter hours 10:00-12:00 at 1,200.
        import(
            &store,
            run("watch", "2026-11-20T10:00:00+09:00", 60, 1, 100),
        );
        import(
            &store,
            run("ring", "2026-11-20T10:00:00+09:00", 8, 15, 1_200),
        );
        // The ring covers more: its 9,600 alone.
        assert_eq!(total(&store, TOKYO, "2026-11-20"), Some(8 * 1_200));
        store
            .set_source_order(PIA, RecordType::StepCount, &["watch".into()], Utc::now())
            .unwrap();
        // The watch's hour, and the ring's 11:00-12:00.
        assert_eq!(total(&store, TOKYO, "2026-11-20"), Some(6_000 + 4 * 1_200));

        // A ring quarter hour the watch covers only two thirds of: 10:00-10:10 of the watch
        // (1,000), then the ring's last 5 minutes of its 10:00-10:15 record (a third of 1,500).
        let (_dir, store) = open(TOKYO);
        pair(&store, "watch", "2026-11-01T00:00:00+09:00");
        pair(&store, "ring", "2026-11-01T00:00:00+09:00");
        import(
            &store,
            run("watch", "2026-11-20T10:00:00+09:00", 10, 1, 100),
        );
        import(
            &store,
            run("ring", "2026-11-20T10:00:00+09:00", 1, 15, 1_500),
        );
        store
            .set_source_order(PIA, RecordType::StepCount, &["watch".into()], Utc::now())
            .unwrap();
        assert_eq!(total(&store, TOKYO, "2026-11-20"), Some(1_000 + 500));
    }

    #[test]
    fn a_band_replacing_another_mid_day_adds_to_it() {
        let (_dir, store) = open(TOKYO);
        pair(&store, "old", "2026-11-01T00:00:00+09:00");
        import(&store, run("old", "2026-11-20T08:00:00+09:00", 240, 1, 50));
        let noon = at("2026-11-20T12:00:00+09:00").with_timezone(&Utc);
        assert!(store.release_binding(PIA, "old", noon).unwrap());
        pair(&store, "new", "2026-11-20T12:00:00+09:00");
        import(&store, run("new", "2026-11-20T12:00:00+09:00", 240, 1, 60));
        // (What the old band measures after the release is nobody's: quarantined at ingest,
        // never Pia's, e2e `attribution`.)
        assert_eq!(
            total(&store, TOKYO, "2026-11-20"),
            Some(240 * 50 + 240 * 60)
        );
    }

    #[test]
    fn the_merge_follows_local_days_across_a_dst_change() {
        const NY: &str = "America/New_York";
        let (_dir, store) = open(NY);
        pair(&store, "a", "2026-03-01T00:00:00-05:00");
        pair(&store, "b", "2026-03-02T00:00:00-05:00");
        // March 8th has 23 hours: 02:00 EST jumps to 03:00 EDT. a: 00:00 EST to 04:00 EDT
        // (180 minutes) at 10; b: 01:00 EST to 05:00 EDT (180 minutes) at 20.
        import(&store, run("a", "2026-03-08T00:00:00-05:00", 180, 1, 10));
        import(&store, run("b", "2026-03-08T01:00:00-05:00", 180, 1, 20));
        // Equal coverage, b paired later: all of b, a's first hour.
        assert_eq!(total(&store, NY, "2026-03-08"), Some(180 * 20 + 60 * 10));
        assert_eq!(total(&store, NY, "2026-03-07"), None);
        assert_eq!(total(&store, NY, "2026-03-09"), None);
    }

    fn beat(device: &str, t: &str, bpm: f64) -> Record {
        use phr_schema::record::{HeartRate, PointFrame, UnitValue, BEATS_PER_MINUTE};
        Record::new(
            device,
            "br",
            at(t),
            Provenance::sensed("test/1"),
            Body::HeartRate(HeartRate {
                effective_time_frame: PointFrame { date_time: at(t) },
                heart_rate: UnitValue::new(bpm, BEATS_PER_MINUTE),
            }),
        )
    }

    #[test]
    fn the_resting_heart_rate_is_one_devices_per_interval() {
        let (_dir, store) = open(TOKYO);
        pair(&store, "a", "2026-11-01T00:00:00+09:00");
        pair(&store, "b", "2026-11-02T00:00:00+09:00");
        // The same two 5-minute intervals, a reads 60 and 64, b 50 and 70.
        import(
            &store,
            vec![
                beat("a", "2026-11-20T03:00:00+09:00", 60.0),
                beat("b", "2026-11-20T03:01:00+09:00", 50.0),
                beat("a", "2026-11-20T03:05:00+09:00", 64.0),
                beat("b", "2026-11-20T03:06:00+09:00", 70.0),
            ],
        );
        let zone = Zone::resolve(Some(TOKYO));
        let days: Vec<_> = zone
            .days(date("2026-11-20"), date("2026-11-20"))
            .iter()
            .filter_map(|d| d.clip((i64::MIN, i64::MAX)))
            .collect();
        let resting = |store: &Store| {
            let (rows, _) = store.daily_resting_heart_rate(PIA, &days).unwrap();
            rows.first().map(|r| r.bpm)
        };
        // b (paired later) in both intervals: the lower of its two, not a mix of devices
        // (mixed, the first interval's mean would be 55).
        assert_eq!(resting(&store), Some(50.0));
        store
            .set_source_order(PIA, RecordType::HeartRate, &["a".into()], Utc::now())
            .unwrap();
        assert_eq!(resting(&store), Some(60.0));
    }

    fn night(device: &str, start: &str, minutes: i64, main: bool) -> Record {
        let s = at(start);
        let e = s + TimeDelta::minutes(minutes);
        Record::new(
            device,
            "br",
            e,
            Provenance::sensed("test/1"),
            Body::SleepEpisode(SleepEpisode {
                effective_time_frame: IntervalFrame::new(s, e),
                is_main_sleep: main,
                latency_to_sleep_onset: None,
                total_sleep_time: None,
                number_of_awakenings: None,
                sleep_maintenance_efficiency_percentage: None,
                stages: Vec::new(),
            }),
        )
    }

    #[test]
    fn a_night_two_bands_saw_counts_once_and_a_nap_only_one_saw_counts() {
        let (_dir, store) = open(TOKYO);
        pair(&store, "a", "2026-11-01T00:00:00+09:00");
        pair(&store, "b", "2026-11-02T00:00:00+09:00");
        import(
            &store,
            vec![
                night("a", "2026-11-19T23:00:00+09:00", 480, true),
                night("b", "2026-11-19T23:10:00+09:00", 460, true),
                // b's nap that a did not see.
                night("b", "2026-11-20T14:00:00+09:00", 30, false),
            ],
        );
        let zone = Zone::resolve(Some(TOKYO));
        let days: Vec<_> = zone
            .days(date("2026-11-20"), date("2026-11-20"))
            .iter()
            .filter_map(|d| d.clip((i64::MIN, i64::MAX)))
            .collect();
        let mut s = DailySummary::new(PIA, &zone, date("2026-11-20"), date("2026-11-20"));
        let n = store
            .daily_sleep(PIA, &days, (i64::MIN, i64::MAX), &mut s)
            .unwrap();
        let sleep = s.days[0].sleep.unwrap();
        // b's episodes cover more of the night (460 + 30 minutes in bed, a's 480): b's night
        // and b's nap count, a's night is b's duplicate.
        assert_eq!(n, 2);
        assert_eq!(sleep.in_bed_minutes, 460.0 + 30.0);
        // a first: a's night, b's nap (a has none then); b's night is a's duplicate.
        store
            .set_source_order(PIA, RecordType::SleepEpisode, &["a".into()], Utc::now())
            .unwrap();
        let mut s = DailySummary::new(PIA, &zone, date("2026-11-20"), date("2026-11-20"));
        store
            .daily_sleep(PIA, &days, (i64::MIN, i64::MAX), &mut s)
            .unwrap();
        assert_eq!(s.days[0].sleep.unwrap().in_bed_minutes, 480.0 + 30.0);
        let episodes = store
            .sleep_episodes(PIA, &days, (i64::MIN, i64::MAX), zone.tz)
            .unwrap();
        let duplicates: Vec<_> = episodes
            .iter()
            .filter(|e| e.duplicate)
            .map(|e| e.device_id.as_str())
            .collect();
        assert_eq!(duplicates, vec!["b"]);
        assert_eq!(episodes.len(), 3);
    }
}
