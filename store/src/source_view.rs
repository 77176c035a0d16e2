//! "Which device counts", as the owner sees it (issue #15): per type, their devices, their
//! order ([`super::sources`]'s explicit order, then the default rule) and how many of their
//! last [`COUNTED_DAYS`] local days each device counted on. Read by the owner's dashboard
//! (`phr_gateway::dashboard::sources`) and `GET /api/v1/me/sources` (`phr_gateway::api::sources`);
//! the order itself is changed only through [`Store::set_source_order`].
//!
//! Counted days: steps and heart rate, the days the merge ([`Store::merged_days`]) took at
//! least one 5-minute interval from the device; sleep, the nights one of its episodes
//! counted (not a duplicate, [`Store::sleep_episodes`]).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::Serialize;

use phr_schema::RecordType;

use super::subjects::{DayWindow, Zone};
use super::Store;
use crate::Result;

/// How many local days (today included) the counts cover.
pub const COUNTED_DAYS: i64 = 30;

/// The types a person orders devices for, in the order they are shown.
pub const TYPES: [RecordType; 3] = [
    RecordType::StepCount,
    RecordType::SleepEpisode,
    RecordType::HeartRate,
];

/// The default rule, in one plain sentence (the rule of [`super::sources`]).
pub const DEFAULT_RULE: &str = "each day, the device whose data covers more of that day \
    (steps: measured time; sleep: minutes in bed; heart rate: readings) comes first, then the \
    one paired to you most recently, then by device id";

/// The rule in force for an order: the owner's devices first, then the default rule.
pub fn rule_text(order: &[String]) -> String {
    if order.is_empty() {
        format!("By the default rule: {DEFAULT_RULE}.")
    } else {
        format!(
            "Your order first ({}), then the devices you have not ordered by the default \
             rule: {DEFAULT_RULE}.",
            order.join(", ")
        )
    }
}

/// One device of a type's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceDevice {
    pub device_id: String,
    /// Its place in the owner's order (1 first); `None`: placed by the default rule.
    pub rank: Option<usize>,
    /// Days (sleep: nights) of the counted range on which some of its data counted.
    pub days_counted: usize,
}

/// One type's devices and order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypeSources {
    #[serde(rename = "type")]
    pub record_type: RecordType,
    /// The owner's order (first counts first); empty: the default rule alone.
    pub order: Vec<String>,
    /// The rule in force, in words.
    pub rule: String,
    /// Every device of the person: the ordered ones in their order, then the others (most
    /// days counted first, then the latest paired).
    pub devices: Vec<SourceDevice>,
}

impl TypeSources {
    /// The device ids as listed (the order the forms move devices in).
    pub fn listed(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.device_id.clone()).collect()
    }
}

/// A person's devices and orders for some types, over their last [`COUNTED_DAYS`] days.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourcesView {
    /// The IANA zone the days are counted in.
    pub time_zone: String,
    /// The counted local days, `from..=to`.
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub types: Vec<TypeSources>,
}

/// Lists `sources` (latest paired first) for one type: the devices of `explicit` that are
/// still among them in that order, then the rest by days counted (most first), then in the
/// order of `sources`.
pub fn arrange(
    explicit: &[String],
    sources: &[String],
    counted: &BTreeMap<String, usize>,
) -> Vec<SourceDevice> {
    let days = |d: &str| counted.get(d).copied().unwrap_or(0);
    let mut out: Vec<SourceDevice> = Vec::new();
    for d in explicit {
        if sources.contains(d) && !out.iter().any(|o| &o.device_id == d) {
            out.push(SourceDevice {
                device_id: d.clone(),
                rank: Some(out.len() + 1),
                days_counted: days(d),
            });
        }
    }
    let mut rest: Vec<(usize, &String)> = sources
        .iter()
        .enumerate()
        .filter(|(_, d)| !explicit.contains(d))
        .collect();
    // Stable: equal counts keep the latest-paired-first order of `sources`.
    rest.sort_by_key(|(i, d)| (std::cmp::Reverse(days(d)), *i));
    let mut seen = BTreeSet::new();
    for (_, d) in rest {
        if seen.insert(d.clone()) {
            out.push(SourceDevice {
                device_id: d.clone(),
                rank: None,
                days_counted: days(d),
            });
        }
    }
    out
}

/// Which way a device moves in a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    Up,
    Down,
}

/// `listed` with the device at `index` moved one place; `None` when it cannot move that way.
/// The result is a whole order: every listed device gets a place in it.
pub fn moved(listed: &[String], index: usize, way: Move) -> Option<Vec<String>> {
    let other = match way {
        Move::Up => index.checked_sub(1)?,
        Move::Down => index.checked_add(1)?,
    };
    if index >= listed.len() || other >= listed.len() {
        return None;
    }
    let mut out = listed.to_vec();
    out.swap(index, other);
    Some(out)
}

/// The days a device counted on, by device: days of the merge where it counted at least one
/// interval.
fn days_of_merge(days: &BTreeMap<usize, super::sources::MergedDay>) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
    for day in days.values() {
        for (device, intervals) in &day.counted {
            if *intervals > 0 {
                *out.entry(device.clone()).or_default() += 1;
            }
        }
    }
    out
}

/// The nights a device counted on: distinct nights with one of its episodes not a duplicate.
fn nights_counted(episodes: &[crate::rollup::Episode]) -> BTreeMap<String, usize> {
    let nights: BTreeSet<(&str, NaiveDate)> = episodes
        .iter()
        .filter(|e| !e.duplicate)
        .map(|e| (e.device_id.as_str(), e.night))
        .collect();
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
    for (device, _) in nights {
        *out.entry(device.to_owned()).or_default() += 1;
    }
    out
}

impl Store {
    /// `person_id`'s devices and order for each of `types`, with the days each counted on
    /// over their last [`COUNTED_DAYS`] local days up to `now`.
    pub fn sources_view(
        &self,
        person_id: &str,
        types: &[RecordType],
        now: DateTime<Utc>,
    ) -> Result<SourcesView> {
        let zone = Zone::resolve(self.person_time_zone(person_id)?.as_deref());
        let to = now.with_timezone(&zone.tz).date_naive();
        let from = to - TimeDelta::days(COUNTED_DAYS - 1);
        let days: Vec<DayWindow> = zone
            .days(from, to)
            .iter()
            .filter_map(|d| d.clip((i64::MIN, i64::MAX)))
            .collect();
        let sources = self.sources_of(person_id)?;
        let mut out = Vec::new();
        for &t in types {
            let counted = if sources.is_empty() {
                BTreeMap::new()
            } else if t == RecordType::SleepEpisode {
                nights_counted(&self.sleep_episodes(
                    person_id,
                    &days,
                    (i64::MIN, i64::MAX),
                    zone.tz,
                )?)
            } else {
                days_of_merge(&self.merged_days(person_id, t, &days)?)
            };
            let order = self.source_order(person_id, t)?;
            out.push(TypeSources {
                record_type: t,
                rule: rule_text(&order),
                devices: arrange(&order, &sources, &counted),
                order,
            });
        }
        Ok(SourcesView {
            time_zone: zone.tz.name().to_owned(),
            from,
            to,
            types: out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn ordered_devices_first_then_the_most_counted_then_the_latest_paired() {
        // Latest paired first: d, c, b, a.
        let sources = ids(&["d", "c", "b", "a"]);
        let counted = BTreeMap::from([("a".into(), 3), ("c".into(), 3), ("d".into(), 1)]);
        let listed = arrange(&ids(&["b"]), &sources, &counted);
        let got: Vec<(&str, Option<usize>, usize)> = listed
            .iter()
            .map(|d| (d.device_id.as_str(), d.rank, d.days_counted))
            .collect();
        // b (ordered) first; c and a counted 3 days each, c paired later; d 1 day.
        assert_eq!(
            got,
            vec![
                ("b", Some(1), 0),
                ("c", None, 3),
                ("a", None, 3),
                ("d", None, 1)
            ]
        );
    }

    #[test]
    fn an_ordered_device_no_longer_among_the_sources_is_not_listed() {
        let listed = arrange(&ids(&["gone", "a"]), &ids(&["a", "b"]), &BTreeMap::new());
        let got: Vec<(&str, Option<usize>)> = listed
            .iter()
            .map(|d| (d.device_id.as_str(), d.rank))
            .collect();
        assert_eq!(got, vec![("a", Some(1)), ("b", None)]);
    }

    #[test]
    fn moves_swap_neighbours_and_refuse_the_ends() {
        let l = ids(&["a", "b", "c"]);
        assert_eq!(moved(&l, 1, Move::Up), Some(ids(&["b", "a", "c"])));
        assert_eq!(moved(&l, 1, Move::Down), Some(ids(&["a", "c", "b"])));
        assert_eq!(moved(&l, 2, Move::Up), Some(ids(&["a", "c", "b"])));
        assert_eq!(moved(&l, 0, Move::Up), None);
        assert_eq!(moved(&l, 2, Move::Down), None);
        assert_eq!(moved(&l, 7, Move::Up), None);
        assert_eq!(moved(&l, usize::MAX, Move::Down), None);
        assert_eq!(moved(&[], 0, Move::Down), None);
    }

    #[test]
    fn the_rule_in_words_names_the_owners_order() {
        assert!(rule_text(&[]).starts_with("By the default rule: each day, the device"));
        let t = rule_text(&ids(&["band-b", "band-a"]));
        assert!(
            t.starts_with("Your order first (band-b, band-a), then"),
            "{t}"
        );
        assert!(t.contains("paired to you most recently"), "{t}");
    }
}

/// The view on a real store: two bands over the same days, counted days read back.
#[cfg(test)]
mod stored {
    use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
    use phr_schema::record::{IntervalFrame, Provenance, SleepEpisode, StepCount};
    use phr_schema::{Body, Record, RecordType};

    use super::TYPES;
    use crate::Store;

    const PIA: &str = "pia";

    fn at(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    fn steps(device: &str, start: DateTime<FixedOffset>, count: i64) -> Record {
        let end = start + TimeDelta::minutes(1);
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

    fn night(device: &str, start: DateTime<FixedOffset>, minutes: i64) -> Record {
        let end = start + TimeDelta::minutes(minutes);
        Record::new(
            device,
            "br",
            end,
            Provenance::sensed("test/1"),
            Body::SleepEpisode(SleepEpisode {
                effective_time_frame: IntervalFrame::new(start, end),
                is_main_sleep: true,
                latency_to_sleep_onset: None,
                total_sleep_time: None,
                number_of_awakenings: None,
                sleep_maintenance_efficiency_percentage: None,
                stages: Vec::new(),
            }),
        )
    }

    #[test]
    fn counted_days_follow_the_merge_and_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("phr.sqlite")).unwrap();
        store.add_person(PIA, "Pia", "Asia/Tokyo").unwrap();
        store.grant_storage_consent(PIA, &RecordType::ALL).unwrap();
        for (d, from) in [
            ("a", "2026-11-01T00:00:00+09:00"),
            ("b", "2026-11-02T00:00:00+09:00"),
        ] {
            store.add_device(d, "br", None).unwrap();
            store.bind(d, PIA, at(from).with_timezone(&Utc)).unwrap();
        }
        // Nov 18: both bands 10:00-10:10 (a 100 a minute, b 90); Nov 19: a alone 10:00-10:05;
        // Nov 20: b alone. Nights ending Nov 19 (both bands, a longer) and Nov 20 (a alone).
        let mut records = Vec::new();
        for m in 0..10 {
            let t = at("2026-11-18T10:00:00+09:00") + TimeDelta::minutes(m);
            records.push(steps("a", t, 100));
            records.push(steps("b", t, 90));
        }
        for m in 0..5 {
            records.push(steps(
                "a",
                at("2026-11-19T10:00:00+09:00") + TimeDelta::minutes(m),
                50,
            ));
            records.push(steps(
                "b",
                at("2026-11-20T10:00:00+09:00") + TimeDelta::minutes(m),
                50,
            ));
        }
        records.push(night("a", at("2026-11-18T23:00:00+09:00"), 480));
        records.push(night("b", at("2026-11-18T23:10:00+09:00"), 460));
        records.push(night("a", at("2026-11-19T23:00:00+09:00"), 420));
        let report = store.import_records(PIA, &records, Utc::now()).unwrap();
        assert_eq!(report.stored as usize, records.len());

        let now = at("2026-11-20T20:00:00+09:00").with_timezone(&Utc);
        let counted = |store: &Store, t: RecordType| -> Vec<(String, Option<usize>, usize)> {
            let v = store.sources_view(PIA, &[t], now).unwrap();
            assert_eq!(v.to.to_string(), "2026-11-20");
            assert_eq!(v.from.to_string(), "2026-10-22");
            v.types[0]
                .devices
                .iter()
                .map(|d| (d.device_id.clone(), d.rank, d.days_counted))
                .collect()
        };
        let s = |d: &str, r: Option<usize>, n: usize| (d.to_owned(), r, n);
        // Nov 18 both cover 10 minutes: b, paired later, counts; Nov 19 a, Nov 20 b.
        assert_eq!(
            counted(&store, RecordType::StepCount),
            vec![s("b", None, 2), s("a", None, 1)]
        );
        // a's night is longer: a counts both nights, b's is its duplicate.
        assert_eq!(
            counted(&store, RecordType::SleepEpisode),
            vec![s("a", None, 2), s("b", None, 0)]
        );
        // No heart rate: both listed, nothing counted.
        assert_eq!(
            counted(&store, RecordType::HeartRate),
            vec![s("b", None, 0), s("a", None, 0)]
        );

        store
            .set_source_order(PIA, RecordType::StepCount, &["a".into()], now)
            .unwrap();
        store
            .set_source_order(PIA, RecordType::SleepEpisode, &["b".into()], now)
            .unwrap();
        // a first: Nov 18 and 19 are a's, Nov 20 still b's (a has nothing then).
        assert_eq!(
            counted(&store, RecordType::StepCount),
            vec![s("a", Some(1), 2), s("b", None, 1)]
        );
        // b first: b's night counts, a's that night is its duplicate; a's second night counts.
        assert_eq!(
            counted(&store, RecordType::SleepEpisode),
            vec![s("b", Some(1), 1), s("a", None, 1)]
        );
        let all = store.sources_view(PIA, &TYPES, now).unwrap();
        assert_eq!(all.time_zone, "Asia/Tokyo");
        assert_eq!(all.types.len(), 3);
        assert_eq!(all.types[0].order, vec!["a"]);
        assert!(all.types[2].order.is_empty());
    }
}
