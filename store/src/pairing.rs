//! Pairing: how a device comes to be bound to a person. The owner starts a pairing for a
//! device at an enrolled bridge; the gateway sends the bridge a sealed pairing request, the
//! bridge shows the pairing's code (which it computes from its channel key: it never crosses
//! the network) and answers with a sealed report of the device's identity (BLE address,
//! Device Information serial number); the owner confirms with the code, and only then is a
//! binding created, from that moment on.
//!
//! Why this makes the wrong person impossible rather than unlikely:
//! - a pairing belongs to the owner who started it: no one else can confirm it;
//! - the code proves presence at the bridge: only the holder of the bridge's enrolled key can
//!   compute it, and a report that did not open with that key never reaches a pairing;
//! - a device bound to someone else cannot be paired by another account at all: its owner
//!   releases it first (`DELETE /api/v1/me/devices/{device_id}/binding`), or an operator
//!   does; the attempt is refused and written to the owner's disclosure log;
//! - guessing is bounded: a pairing allows [`MAX_ATTEMPTS`] wrong codes and expires after
//!   [`TTL`]; an account, a device and a bridge may start only so many pairings per
//!   [`WINDOW`] ([`PER_PERSON`], [`PER_DEVICE`], [`PER_BRIDGE`]), and each pairing that ran
//!   out of tries doubles the wait before the next one for that account and that device.
//!
//! Codes are stored hashed. Every refusal and every confirmation is written to the
//! disclosure log.

use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use phr_schema::PairingReport;

use super::{audit, Store};
use crate::{Error, Result};

/// How long a code is valid.
pub const TTL: TimeDelta = TimeDelta::minutes(5);
/// Wrong codes a pairing tolerates before it is refused for good.
pub const MAX_ATTEMPTS: i64 = 5;
/// The window of the start limits below.
pub const WINDOW: TimeDelta = TimeDelta::minutes(15);
/// Pairings one account may start per [`WINDOW`] (refused ones count).
pub const PER_PERSON: i64 = 5;
/// Pairings of one device per [`WINDOW`], whoever starts them.
pub const PER_DEVICE: i64 = 5;
/// Pairings through one bridge per [`WINDOW`].
pub const PER_BRIDGE: i64 = 20;
/// How far back pairings that ran out of tries count towards the back-off.
pub const BACKOFF_MEMORY: TimeDelta = TimeDelta::hours(24);

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pairings (
    pairing_id TEXT PRIMARY KEY,
    person_id TEXT NOT NULL,
    bridge_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'confirmed', 'refused')),
    attempts INTEGER NOT NULL DEFAULT 0,
    reported_address TEXT,
    reported_serial TEXT,
    -- Why a refused pairing was refused (a `Refusal` or `StartRefusal` code).
    refusal TEXT,
    finished_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS pairings_by_person ON pairings (person_id, created_at_ms);
CREATE INDEX IF NOT EXISTS pairings_by_device ON pairings (device_id, created_at_ms);
CREATE INDEX IF NOT EXISTS pairings_by_bridge ON pairings (bridge_id, created_at_ms);
";

/// A pairing as the owner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pairing {
    pub pairing_id: Uuid,
    pub bridge_id: String,
    pub device_id: String,
    pub expires_at: DateTime<Utc>,
    pub state: String,
    /// What the bridge reported about the device, once it has.
    pub reported_address: Option<String>,
    pub reported_serial: Option<String>,
}

/// Why a confirmation was refused. Each is audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no such pairing")]
    Unknown,
    #[error("the pairing has expired")]
    Expired,
    #[error("the pairing was already used or refused")]
    Used,
    #[error("wrong code")]
    WrongCode,
    #[error("the bridge has not reported the device yet")]
    NotReported,
    #[error("the serial number does not match what the bridge read")]
    SerialMismatch,
    #[error("the device was bound to someone else meanwhile")]
    DeviceBound,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Self::Unknown => "unknown_pairing",
            Self::Expired => "pairing_expired",
            Self::Used => "pairing_used",
            Self::WrongCode => "wrong_code",
            Self::NotReported => "device_not_reported",
            Self::SerialMismatch => "serial_mismatch",
            Self::DeviceBound => "device_bound_to_another",
        }
    }
}

/// Why a pairing could not be started. Each is audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StartRefusal {
    #[error("the bridge is not enrolled with this gateway")]
    BridgeNotEnrolled,
    #[error("the device is bound to someone else; its owner releases it first")]
    DeviceBound,
    #[error("too many pairings started; try again later")]
    TooMany {
        /// Seconds until a new start can succeed.
        retry_after_secs: u64,
    },
}

impl StartRefusal {
    pub fn code(self) -> &'static str {
        match self {
            Self::BridgeNotEnrolled => "bridge_not_enrolled",
            Self::DeviceBound => "device_bound_to_another",
            Self::TooMany { .. } => "too_many_pairings",
        }
    }
}

/// A device's binding to the owner, `[valid_from, valid_to)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingInterval {
    pub device_id: String,
    pub valid_from: DateTime<Utc>,
    pub valid_to: Option<DateTime<Utc>>,
}

/// A pairing row as confirmation reads it.
#[derive(Debug)]
struct Row {
    bridge: String,
    device: String,
    code_hash: String,
    expires_at_ms: i64,
    state: String,
    attempts: i64,
    address: Option<String>,
    serial: Option<String>,
}

fn hash(pairing_id: Uuid, code: &str) -> String {
    Sha256::digest(format!("{pairing_id}:{code}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh six-digit code.
pub fn new_code() -> String {
    use rand::Rng;
    format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000))
}

fn pairing_entry(person: &str, what: &str, now: DateTime<Utc>) -> audit::Entry {
    audit::Entry::by_owner(person, audit::Action::Pairing, what, 0, now)
}

/// The open binding of `device_id` at `now_ms`: its person.
fn open_binding(
    tx: &rusqlite::Transaction<'_>,
    device_id: &str,
    now_ms: i64,
) -> Result<Option<String>> {
    Ok(tx
        .prepare_cached(
            "SELECT person_id FROM bindings
              WHERE device_id = ?1 AND valid_from <= ?2 AND (valid_to IS NULL OR valid_to > ?2)",
        )?
        .query_row(params![device_id, now_ms], |r| r.get(0))
        .optional()?)
}

/// How long until a new pairing may start, if a limit is reached now.
fn wait_for_limits(
    tx: &rusqlite::Transaction<'_>,
    person_id: &str,
    bridge_id: &str,
    device_id: &str,
    now_ms: i64,
) -> Result<Option<u64>> {
    let window_from = now_ms - WINDOW.num_milliseconds();
    let mut waits = Vec::new();
    for (column, value, limit) in [
        ("person_id", person_id, PER_PERSON),
        ("device_id", device_id, PER_DEVICE),
        ("bridge_id", bridge_id, PER_BRIDGE),
    ] {
        // The oldest start in the window that keeps the count at the limit: when it leaves
        // the window, there is room again.
        let sql = format!(
            "SELECT created_at_ms FROM pairings WHERE {column} = ?1 AND created_at_ms > ?2
              ORDER BY created_at_ms DESC LIMIT 1 OFFSET ?3"
        );
        let blocking: Option<i64> = tx
            .prepare_cached(&sql)?
            .query_row(params![value, window_from, limit - 1], |r| r.get(0))
            .optional()?;
        if let Some(at) = blocking {
            waits.push(at + WINDOW.num_milliseconds() - now_ms);
        }
    }
    // Back-off: pairings of this account or this device that ran out of tries.
    let since = now_ms - BACKOFF_MEMORY.num_milliseconds();
    let failures: Vec<i64> = tx
        .prepare_cached(
            "SELECT finished_at_ms FROM pairings
              WHERE (person_id = ?1 OR device_id = ?2) AND refusal = 'wrong_code' AND finished_at_ms > ?3
              ORDER BY finished_at_ms DESC",
        )?
        .query_map(params![person_id, device_id, since], |r| r.get(0))?
        .collect::<std::result::Result<_, _>>()?;
    if let Some(last) = failures.first() {
        let minutes = 1i64 << failures.len().min(10);
        waits.push(last + minutes * 60_000 - now_ms);
    }
    Ok(waits
        .into_iter()
        .filter(|w| *w > 0)
        .max()
        .map(|ms| u64::try_from((ms + 999) / 1000).unwrap_or(1)))
}

/// Closes the open binding of `device_id` at `now_ms`; one that starts at `now_ms` (paired
/// this very millisecond) covers nothing yet and is removed, as a binding cannot end at its
/// own start.
fn close_open_binding(tx: &rusqlite::Transaction<'_>, device_id: &str, now_ms: i64) -> Result<()> {
    tx.execute(
        "DELETE FROM bindings WHERE device_id = ?1 AND valid_to IS NULL AND valid_from = ?2",
        params![device_id, now_ms],
    )?;
    tx.execute(
        "UPDATE bindings SET valid_to = ?2 WHERE device_id = ?1 AND valid_to IS NULL AND valid_from < ?2",
        params![device_id, now_ms],
    )?;
    Ok(())
}

impl Store {
    /// Starts a pairing of `device_id` through `bridge_id` for `person_id`, whose code (the
    /// one the bridge will compute) is `code`. Refused, and audited, when the bridge is not
    /// enrolled, when someone else holds an open binding of the device (then also written to
    /// that person's log), or when a start limit or the back-off says wait.
    pub fn start_pairing(
        &self,
        person_id: &str,
        bridge_id: &str,
        device_id: &str,
        pairing_id: Uuid,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<Pairing, StartRefusal>> {
        let now_ms = now.timestamp_millis();
        let expires_at = now + TTL;
        let zone = self
            .default_time_zone
            .read()
            .map_err(|_| Error::Poisoned)?
            .clone();
        self.write(|tx| {
            super::insert_person(tx, person_id, person_id, &zone, now)?;
            let refuse = |tx: &rusqlite::Transaction<'_>, why: StartRefusal, record: bool| {
                if record {
                    // Refused starts count towards the limits like any other.
                    tx.execute(
                        "INSERT INTO pairings (pairing_id, person_id, bridge_id, device_id, code_hash, created_at_ms,
                                               expires_at_ms, state, refusal, finished_at_ms)
                         VALUES (?1, ?2, ?3, ?4, '', ?5, ?5, 'refused', ?6, ?5)",
                        params![pairing_id.to_string(), person_id, bridge_id, device_id, now_ms, why.code()],
                    )?;
                }
                let mut e = pairing_entry(
                    person_id,
                    &format!("pairing of device {device_id} through bridge {bridge_id} refused: {}", why.code()),
                    now,
                );
                e.outcome = audit::Outcome::Denied;
                audit::append(tx, &e)?;
                Ok(Err(why))
            };
            if let Some(secs) = wait_for_limits(tx, person_id, bridge_id, device_id, now_ms)? {
                return refuse(tx, StartRefusal::TooMany { retry_after_secs: secs }, false);
            }
            let enrolled: Option<Option<String>> = tx
                .query_row("SELECT public_key FROM bridges WHERE bridge_id = ?1", [bridge_id], |r| r.get(0))
                .optional()?;
            if !matches!(enrolled, Some(Some(_))) {
                return refuse(tx, StartRefusal::BridgeNotEnrolled, true);
            }
            if let Some(owner) = open_binding(tx, device_id, now_ms)? {
                if owner != person_id {
                    // The owner learns that someone tried; the limits above bound how often.
                    let mut e = audit::Entry::by_owner(
                        &owner,
                        audit::Action::Pairing,
                        &format!("someone else tried to pair your device {device_id} through bridge {bridge_id}: refused"),
                        0,
                        now,
                    );
                    e.actor = person_id.to_owned();
                    e.actor_kind = "owner".into();
                    e.outcome = audit::Outcome::Denied;
                    audit::append(tx, &e)?;
                    return refuse(tx, StartRefusal::DeviceBound, true);
                }
            }
            tx.execute(
                "INSERT INTO pairings (pairing_id, person_id, bridge_id, device_id, code_hash, created_at_ms, expires_at_ms, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending')",
                params![pairing_id.to_string(), person_id, bridge_id, device_id, hash(pairing_id, code), now_ms, expires_at.timestamp_millis()],
            )?;
            // Every step in the owner's log, whichever way they started (API or dashboard).
            audit::append(
                tx,
                &pairing_entry(
                    person_id,
                    &format!("started pairing of device {device_id} through bridge {bridge_id}"),
                    now,
                ),
            )?;
            Ok(Ok(Pairing {
                pairing_id,
                bridge_id: bridge_id.to_owned(),
                device_id: device_id.to_owned(),
                expires_at,
                state: "pending".into(),
                reported_address: None,
                reported_serial: None,
            }))
        })
    }

    /// What a bridge reported for a pairing it was asked about (the report opened with that
    /// bridge's channel key). Only the first report counts, and only if the bridge and device
    /// are the ones the pairing names and it is still pending: a later report cannot swap
    /// the identity the owner confirms.
    pub fn report_pairing(
        &self,
        pairing_id: Uuid,
        bridge_id: &str,
        report: &PairingReport,
    ) -> Result<bool> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE pairings SET reported_address = ?4, reported_serial = ?5
                  WHERE pairing_id = ?1 AND bridge_id = ?2 AND device_id = ?3 AND state = 'pending'
                    AND reported_address IS NULL AND reported_serial IS NULL",
                params![
                    pairing_id.to_string(),
                    bridge_id,
                    report.device_id,
                    report.address,
                    report.serial_number,
                ],
            )?;
            Ok(n == 1)
        })
    }

    /// Ends `person_id`'s open binding of `device_id` at `now` (giving a band away, say):
    /// records measured from then on belong to nobody until someone pairs it. `false` if the
    /// person holds no open binding of it. Audited.
    pub fn release_binding(
        &self,
        person_id: &str,
        device_id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let now_ms = now.timestamp_millis();
        self.write(|tx| {
            if open_binding(tx, device_id, now_ms)?.as_deref() != Some(person_id) {
                return Ok(false);
            }
            close_open_binding(tx, device_id, now_ms)?;
            audit::append(
                tx,
                &pairing_entry(person_id, &format!("released device {device_id}"), now),
            )?;
            Ok(true)
        })
    }

    /// An operator ends whoever's open binding of `device_id` at `now` (a transfer: the new
    /// owner then pairs it). Returns the person whose binding ended, if any; written to
    /// their log.
    pub fn operator_release(
        &self,
        device_id: &str,
        operator: &str,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>> {
        let now_ms = now.timestamp_millis();
        self.write(|tx| {
            let Some(owner) = open_binding(tx, device_id, now_ms)? else {
                return Ok(None);
            };
            close_open_binding(tx, device_id, now_ms)?;
            let mut e = audit::Entry::by_owner(
                &owner,
                audit::Action::Pairing,
                &format!("an operator ended your binding of device {device_id}: {why}"),
                0,
                now,
            );
            e.actor = operator.to_owned();
            e.actor_kind = "operator".into();
            audit::append(tx, &e)?;
            Ok(Some(owner))
        })
    }

    /// `person_id`'s pairing, if it is theirs.
    pub fn pairing(&self, person_id: &str, pairing_id: Uuid) -> Result<Option<Pairing>> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT bridge_id, device_id, expires_at_ms, state, reported_address, reported_serial
                       FROM pairings WHERE pairing_id = ?1 AND person_id = ?2",
                    params![pairing_id.to_string(), person_id],
                    |r| {
                        Ok(Pairing {
                            pairing_id,
                            bridge_id: r.get(0)?,
                            device_id: r.get(1)?,
                            expires_at: DateTime::from_timestamp_millis(r.get(2)?).unwrap_or_default(),
                            state: r.get(3)?,
                            reported_address: r.get(4)?,
                            reported_serial: r.get(5)?,
                        })
                    },
                )
                .optional()?)
        })
    }

    /// Confirms `person_id`'s pairing with `code` (and, if given, the serial number printed on
    /// the device). On success the device is registered through the pairing's bridge and
    /// bound to the person from `now`, closing the previous binding at that moment. A device
    /// that was held through another bridge moves here: that bridge's period ends `now` (it
    /// may still deliver the backlog it measured before), this bridge's starts.
    pub fn confirm_pairing(
        &self,
        person_id: &str,
        pairing_id: Uuid,
        code: &str,
        serial: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<Pairing, Refusal>> {
        let now_ms = now.timestamp_millis();
        self.write(|tx| {
            let row: Option<Row> = tx
                .query_row(
                    "SELECT bridge_id, device_id, code_hash, expires_at_ms, state, attempts, reported_address, reported_serial
                       FROM pairings WHERE pairing_id = ?1 AND person_id = ?2",
                    params![pairing_id.to_string(), person_id],
                    |r| {
                        Ok(Row {
                            bridge: r.get(0)?,
                            device: r.get(1)?,
                            code_hash: r.get(2)?,
                            expires_at_ms: r.get(3)?,
                            state: r.get(4)?,
                            attempts: r.get(5)?,
                            address: r.get(6)?,
                            serial: r.get(7)?,
                        })
                    },
                )
                .optional()?;
            let refuse = |tx: &rusqlite::Transaction<'_>, why: Refusal, finish: bool| -> Result<std::result::Result<Pairing, Refusal>> {
                if finish {
                    tx.execute(
                        "UPDATE pairings SET state = 'refused', refusal = ?3, finished_at_ms = ?2 WHERE pairing_id = ?1",
                        params![pairing_id.to_string(), now_ms, why.code()],
                    )?;
                }
                let mut e = pairing_entry(person_id, &format!("pairing refused: {}", why.code()), now);
                e.outcome = audit::Outcome::Denied;
                audit::append(tx, &e)?;
                Ok(Err(why))
            };
            let Some(Row { bridge, device, code_hash, expires_at_ms, state, attempts, address, serial: reported_serial }) = row else {
                return refuse(tx, Refusal::Unknown, false);
            };
            if state != "pending" {
                return refuse(tx, Refusal::Used, false);
            }
            if now_ms >= expires_at_ms {
                return refuse(tx, Refusal::Expired, true);
            }
            if !crate::secret::same_secret(hash(pairing_id, code.trim()), &code_hash) {
                tx.execute("UPDATE pairings SET attempts = attempts + 1 WHERE pairing_id = ?1", [pairing_id.to_string()])?;
                return refuse(tx, Refusal::WrongCode, attempts + 1 >= MAX_ATTEMPTS);
            }
            if address.is_none() && reported_serial.is_none() {
                return refuse(tx, Refusal::NotReported, false);
            }
            if let Some(given) = serial {
                if reported_serial.as_deref() != Some(given.trim()) {
                    return refuse(tx, Refusal::SerialMismatch, true);
                }
            }
            // Someone else may have paired it since this pairing started.
            if open_binding(tx, &device, now_ms)?.is_some_and(|owner| owner != person_id) {
                return refuse(tx, Refusal::DeviceBound, true);
            }
            // Register the device through this bridge (a device re-paired through another
            // bridge moves there; its old bridge keeps delivering what it measured before
            // now), then close the open binding and open the new one.
            super::register_device_at(tx, &device, &bridge, reported_serial.as_deref(), now)?;
            super::bind_in(tx, &device, person_id, now)?;
            tx.execute(
                "UPDATE pairings SET state = 'confirmed', finished_at_ms = ?2 WHERE pairing_id = ?1",
                params![pairing_id.to_string(), now_ms],
            )?;
            audit::append(tx, &pairing_entry(person_id, &format!("paired device {device} through bridge {bridge}"), now))?;
            Ok(Ok(Pairing {
                pairing_id,
                bridge_id: bridge,
                device_id: device,
                expires_at: DateTime::from_timestamp_millis(expires_at_ms).unwrap_or_default(),
                state: "confirmed".into(),
                reported_address: address,
                reported_serial,
            }))
        })
    }

    /// The owner's bindings, oldest first.
    pub fn bindings_of(&self, person_id: &str) -> Result<Vec<BindingInterval>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT device_id, valid_from, valid_to FROM bindings WHERE person_id = ?1 ORDER BY valid_from",
            )?;
            let rows = stmt.query_map([person_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, Option<i64>>(2)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (device_id, from, to) = row?;
                out.push(BindingInterval {
                    device_id,
                    valid_from: DateTime::from_timestamp_millis(from).ok_or(Error::Invalid("binding time"))?,
                    valid_to: to.and_then(DateTime::from_timestamp_millis),
                });
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binding_released_at_the_instant_it_started_ends_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        store.add_person("ana", "ana", "UTC").unwrap();
        store.add_device("band", "br", None).unwrap();
        let now = Utc::now();
        store.bind("band", "ana", now).unwrap();
        assert!(store.release_binding("ana", "band", now).unwrap());
        let open: i64 = store
            .read(|c| Ok(c.query_row("SELECT count(*) FROM bindings", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(open, 0);
        assert!(!store.release_binding("ana", "band", now).unwrap());
    }
}
