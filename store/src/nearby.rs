//! The devices each bridge reports nearby ([`phr_schema::nearby`]): the latest report of each
//! enrolled bridge, one row per bridge, replaced by the next. What the owner's pairing page
//! lists when they pick a bridge.
//!
//! The privacy rule lives here, in the only read an owner's page or token can reach
//! ([`Store::nearby_for_owner`]), so that no handler can forget it: an owner sees a device
//! only if nobody else holds a binding of it that has not ended; a device bound to someone
//! else is left out entirely (not even "taken": that a given person's band is near a given
//! bridge is theirs to tell). Their own bands are marked as already theirs. Bindings are read
//! at request time, so a band paired after the report is hidden at once. Any owner may ask
//! about any enrolled bridge: what they learn is which unbound bands are near it, and that the
//! bridge is enrolled, which starting a pairing there tells them anyway.
//!
//! Bounded: a row per enrolled bridge (only reports that opened with an enrolled bridge's
//! channel key are recorded, and a revoked bridge's row goes with its enrolment), each of at
//! most [`phr_schema::nearby::MAX_DEVICES`] devices. A report is as old as the earlier of the
//! bridge's scan time and its arrival, so neither a bridge clock running ahead nor a replayed
//! or late-delivered report looks fresh; past [`STALE_AFTER`] its devices are not listed.
//! A report is refused if it was scanned more than [`MAX_AHEAD`] after it arrived, and
//! ignored if it is not newer than the stored one (a replay, or one overtaken by a later scan).

use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use phr_schema::{NearbyDevice, NearbyReport};

use super::Store;
use crate::{Error, Result};

/// Past this age a report's devices are no longer listed.
pub const STALE_AFTER: TimeDelta = TimeDelta::minutes(10);
/// How far a report's scan time may lie after its arrival (clock skew) before it is refused.
pub const MAX_AHEAD: TimeDelta = TimeDelta::minutes(10);

pub(super) const SCHEMA: &str = "
-- The latest nearby report of each enrolled bridge: `devices` is the report's JSON list
-- (at most 32 entries), `observed_at_ms` the earlier of its scan time and its arrival.
CREATE TABLE IF NOT EXISTS nearby_reports (
    bridge_id TEXT PRIMARY KEY,
    scanned_at_ms INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    observed_at_ms INTEGER NOT NULL,
    devices TEXT NOT NULL
) WITHOUT ROWID;
";

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// It is now the bridge's latest.
    Stored,
    /// The bridge is not (or no longer) enrolled: nothing kept.
    NotEnrolled,
    /// Not newer than the stored report: a replay, or overtaken by a later scan; ignored.
    NotNewer,
    /// Scanned more than [`MAX_AHEAD`] after it arrived: refused.
    InFuture,
}

/// What an owner may see of a bridge's latest report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NearbyView {
    pub bridge_id: String,
    /// The earlier of the bridge's scan and the report's arrival.
    pub observed_at: DateTime<Utc>,
    /// Older than [`STALE_AFTER`]: `devices` is empty.
    pub stale: bool,
    /// Devices nobody else holds, strongest signal first.
    pub devices: Vec<NearbyEntry>,
}

/// One device of a bridge's report, as its viewer may see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NearbyEntry {
    pub device_id: String,
    pub name: Option<String>,
    pub rssi: Option<i16>,
    pub decoder: String,
    /// The viewer holds a binding of it already.
    pub yours: bool,
}

/// Who, if anyone, holds `device_id` at `now_ms` as far as the nearby list is concerned:
/// every person with a binding of it that has not ended (an open one, or one starting later).
fn holders(conn: &rusqlite::Connection, device_id: &str, now_ms: i64) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT person_id FROM bindings
          WHERE device_id = ?1 AND (valid_to IS NULL OR valid_to > ?2)",
    )?;
    let rows = stmt.query_map(params![device_id, now_ms], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

impl Store {
    /// Keeps `report` as `bridge_id`'s latest, if the bridge is enrolled and the report is
    /// newer than the one stored (see the module's rules). `now` is its arrival.
    pub fn record_nearby(
        &self,
        bridge_id: &str,
        report: &NearbyReport,
        now: DateTime<Utc>,
    ) -> Result<Recorded> {
        let scanned = report.scanned_at.to_utc();
        if scanned > now + MAX_AHEAD {
            return Ok(Recorded::InFuture);
        }
        let (scanned_ms, now_ms) = (scanned.timestamp_millis(), now.timestamp_millis());
        let devices =
            serde_json::to_string(&report.devices).map_err(|_| Error::Invalid("nearby report"))?;
        self.write(|tx| {
            let enrolled: bool = tx
                .prepare_cached(
                    "SELECT count(*) > 0 FROM bridges WHERE bridge_id = ?1 AND public_key IS NOT NULL",
                )?
                .query_row([bridge_id], |r| r.get(0))?;
            if !enrolled {
                return Ok(Recorded::NotEnrolled);
            }
            // Newer scans replace; so does anything once the stored report is stale (a bridge
            // whose clock was set back is not silenced for long).
            let n = tx
                .prepare_cached(
                    "INSERT INTO nearby_reports (bridge_id, scanned_at_ms, received_at_ms, observed_at_ms, devices)
                     VALUES (?1, ?2, ?3, min(?2, ?3), ?4)
                     ON CONFLICT (bridge_id) DO UPDATE SET
                         scanned_at_ms = excluded.scanned_at_ms,
                         received_at_ms = excluded.received_at_ms,
                         observed_at_ms = excluded.observed_at_ms,
                         devices = excluded.devices
                      WHERE excluded.scanned_at_ms > nearby_reports.scanned_at_ms
                         OR nearby_reports.received_at_ms <= ?5",
                )?
                .execute(params![
                    bridge_id,
                    scanned_ms,
                    now_ms,
                    devices,
                    now_ms - STALE_AFTER.num_milliseconds()
                ])?;
            Ok(if n == 1 {
                Recorded::Stored
            } else {
                Recorded::NotNewer
            })
        })
    }

    /// What `person_id` may see of `bridge_id`'s latest report at `now`: `None` if the bridge
    /// is not enrolled or has not reported. Devices anyone else holds are left out; the
    /// person's own are marked.
    pub fn nearby_for_owner(
        &self,
        person_id: &str,
        bridge_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<NearbyView>> {
        let now_ms = now.timestamp_millis();
        self.read(|conn| {
            let row: Option<(i64, String)> = conn
                .prepare_cached(
                    "SELECT n.observed_at_ms, n.devices FROM nearby_reports n
                       JOIN bridges b ON b.bridge_id = n.bridge_id AND b.public_key IS NOT NULL
                      WHERE n.bridge_id = ?1",
                )?
                .query_row([bridge_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((observed_ms, json)) = row else {
                return Ok(None);
            };
            let observed_at = DateTime::from_timestamp_millis(observed_ms)
                .ok_or(Error::Invalid("nearby time"))?;
            let stale = now_ms - observed_ms > STALE_AFTER.num_milliseconds();
            let mut devices = Vec::new();
            if !stale {
                let reported: Vec<NearbyDevice> = serde_json::from_str(&json)
                    .map_err(|_| Error::Invalid("stored nearby report"))?;
                for d in reported {
                    let holders = holders(conn, &d.device_id, now_ms)?;
                    if holders.iter().any(|p| p != person_id) {
                        continue;
                    }
                    devices.push(NearbyEntry {
                        yours: !holders.is_empty(),
                        device_id: d.device_id,
                        name: d.name,
                        rssi: d.rssi,
                        decoder: d.decoder,
                    });
                }
            }
            Ok(Some(NearbyView {
                bridge_id: bridge_id.to_owned(),
                observed_at,
                stale,
                devices,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE: &str = "br-hall";

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
        store
            .register_bridge_key(BRIDGE, &phr_schema::channel::key_to_hex(&key))
            .unwrap();
        (dir, store)
    }

    fn report(at: DateTime<Utc>, ids: &[&str]) -> NearbyReport {
        NearbyReport::new(
            at.fixed_offset(),
            ids.iter().enumerate().map(|(i, id)| {
                NearbyDevice::new(
                    id,
                    Some(&format!("Band {id}")),
                    Some(-40 - i as i16),
                    "pams",
                )
                .unwrap()
            }),
        )
    }

    fn ids(v: &NearbyView) -> Vec<(&str, bool)> {
        v.devices
            .iter()
            .map(|d| (d.device_id.as_str(), d.yours))
            .collect()
    }

    /// The leak test: a band bound to someone else never shows, not even as taken; the
    /// owner's own band shows as theirs; a free band shows to anyone.
    #[test]
    fn an_owner_never_sees_a_band_someone_else_holds() {
        let (_dir, store) = store();
        let now = Utc::now();
        for p in ["ana", "ben"] {
            store.add_person(p, p, "UTC").unwrap();
        }
        for d in ["band-ana", "band-ben", "band-free", "band-later"] {
            store.add_device(d, BRIDGE, None).unwrap();
        }
        store
            .bind("band-ana", "ana", now - TimeDelta::hours(1))
            .unwrap();
        store
            .bind("band-ben", "ben", now - TimeDelta::hours(1))
            .unwrap();
        // Ben's binding that starts later still makes the band his.
        store
            .bind("band-later", "ben", now + TimeDelta::hours(1))
            .unwrap();
        let r = report(now, &["band-ben", "band-ana", "band-free", "band-later"]);
        assert_eq!(
            store.record_nearby(BRIDGE, &r, now).unwrap(),
            Recorded::Stored
        );

        let ana = store.nearby_for_owner("ana", BRIDGE, now).unwrap().unwrap();
        assert_eq!(ids(&ana), [("band-ana", true), ("band-free", false)]);
        let ben = store.nearby_for_owner("ben", BRIDGE, now).unwrap().unwrap();
        assert_eq!(
            ids(&ben),
            [
                ("band-ben", true),
                ("band-free", false),
                ("band-later", true)
            ]
        );
        let cai = store.nearby_for_owner("cai", BRIDGE, now).unwrap().unwrap();
        assert_eq!(ids(&cai), [("band-free", false)]);
        // Nothing of the hidden bands anywhere in what the others get.
        let text = format!("{ana:?}{cai:?}");
        assert!(
            !text.contains("band-ben") && !text.contains("band-later"),
            "{text}"
        );

        // Ben releases his band: from then on it is free for anyone to see.
        assert!(store
            .release_binding("ben", "band-ben", now + TimeDelta::seconds(1))
            .unwrap());
        let ana = store
            .nearby_for_owner("ana", BRIDGE, now + TimeDelta::seconds(2))
            .unwrap()
            .unwrap();
        assert_eq!(
            ids(&ana),
            [
                ("band-ben", false),
                ("band-ana", true),
                ("band-free", false)
            ]
        );
    }

    #[test]
    fn the_latest_report_replaces_and_an_older_or_replayed_one_does_not() {
        let (_dir, store) = store();
        let t0 = Utc::now();
        let first = report(t0, &["band-1", "band-2"]);
        assert_eq!(
            store.record_nearby(BRIDGE, &first, t0).unwrap(),
            Recorded::Stored
        );
        let later = t0 + TimeDelta::seconds(30);
        let second = report(later, &["band-3"]);
        assert_eq!(
            store.record_nearby(BRIDGE, &second, later).unwrap(),
            Recorded::Stored
        );
        let v = store
            .nearby_for_owner("ana", BRIDGE, later)
            .unwrap()
            .unwrap();
        assert_eq!(ids(&v), [("band-3", false)]);
        // The first report replayed: ignored.
        assert_eq!(
            store
                .record_nearby(BRIDGE, &first, later + TimeDelta::seconds(1))
                .unwrap(),
            Recorded::NotNewer
        );
        assert_eq!(
            store
                .record_nearby(BRIDGE, &second, later + TimeDelta::seconds(1))
                .unwrap(),
            Recorded::NotNewer
        );
        let v = store
            .nearby_for_owner("ana", BRIDGE, later)
            .unwrap()
            .unwrap();
        assert_eq!(ids(&v), [("band-3", false)]);
        // One row per bridge, however many reports.
        let rows: i64 = store
            .read(|c| Ok(c.query_row("SELECT count(*) FROM nearby_reports", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(rows, 1);
    }

    #[test]
    fn an_old_report_is_stale_and_lists_nothing() {
        let (_dir, store) = store();
        let t0 = Utc::now();
        store
            .record_nearby(BRIDGE, &report(t0, &["band-1"]), t0)
            .unwrap();
        let fresh = store
            .nearby_for_owner("ana", BRIDGE, t0 + STALE_AFTER)
            .unwrap()
            .unwrap();
        assert!(!fresh.stale);
        assert_eq!(fresh.devices.len(), 1);
        let old = store
            .nearby_for_owner("ana", BRIDGE, t0 + STALE_AFTER + TimeDelta::seconds(1))
            .unwrap()
            .unwrap();
        assert!(old.stale);
        assert!(old.devices.is_empty());
        assert_eq!(old.observed_at.timestamp_millis(), t0.timestamp_millis());

        // A report scanned long before it arrived (delivered late, or replayed) is as old as
        // its scan; one scanned a little ahead of its arrival is as old as its arrival.
        let t1 = t0 + TimeDelta::hours(1);
        let late = report(t1 - TimeDelta::minutes(20), &["band-2"]);
        assert_eq!(
            store.record_nearby(BRIDGE, &late, t1).unwrap(),
            Recorded::Stored
        );
        assert!(
            store
                .nearby_for_owner("ana", BRIDGE, t1)
                .unwrap()
                .unwrap()
                .stale
        );
        let ahead = report(t1 + TimeDelta::minutes(5), &["band-3"]);
        assert_eq!(
            store.record_nearby(BRIDGE, &ahead, t1).unwrap(),
            Recorded::Stored
        );
        let v = store.nearby_for_owner("ana", BRIDGE, t1).unwrap().unwrap();
        assert_eq!(v.observed_at.timestamp_millis(), t1.timestamp_millis());
        assert_eq!(ids(&v), [("band-3", false)]);
        // Too far ahead: refused, the stored one stays.
        let far = report(t1 + MAX_AHEAD + TimeDelta::seconds(1), &["band-4"]);
        assert_eq!(
            store.record_nearby(BRIDGE, &far, t1).unwrap(),
            Recorded::InFuture
        );
        let v = store.nearby_for_owner("ana", BRIDGE, t1).unwrap().unwrap();
        assert_eq!(ids(&v), [("band-3", false)]);
        // Once the stored report is stale, even an earlier scan replaces it (a bridge whose
        // clock was set back), but it is as old as its scan.
        let t2 = t1 + STALE_AFTER + TimeDelta::seconds(1);
        let back = report(t2 - TimeDelta::seconds(5), &["band-5"]);
        assert_eq!(
            store.record_nearby(BRIDGE, &back, t2).unwrap(),
            Recorded::Stored
        );
        let v = store.nearby_for_owner("ana", BRIDGE, t2).unwrap().unwrap();
        assert_eq!(ids(&v), [("band-5", false)]);
    }

    #[test]
    fn only_enrolled_bridges_have_a_list() {
        let (_dir, store) = store();
        let now = Utc::now();
        assert_eq!(
            store
                .record_nearby("br-stranger", &report(now, &["band-1"]), now)
                .unwrap(),
            Recorded::NotEnrolled
        );
        assert_eq!(
            store.nearby_for_owner("ana", "br-stranger", now).unwrap(),
            None
        );
        assert_eq!(store.nearby_for_owner("ana", BRIDGE, now).unwrap(), None);
        store
            .record_nearby(BRIDGE, &report(now, &["band-1"]), now)
            .unwrap();
        assert!(store
            .nearby_for_owner("ana", BRIDGE, now)
            .unwrap()
            .is_some());
        // A revoked bridge's list goes with its enrolment.
        assert!(store.revoke_bridge(BRIDGE).unwrap());
        assert_eq!(store.nearby_for_owner("ana", BRIDGE, now).unwrap(), None);
        let rows: i64 = store
            .read(|c| Ok(c.query_row("SELECT count(*) FROM nearby_reports", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(rows, 0);
    }
}
