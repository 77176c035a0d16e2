//! Pairing: how a device comes to be bound to a person. The owner starts a pairing for a
//! bridge and a device; the gateway sends the bridge a one-time code, which the bridge shows
//! (prints) and answers with the device's identity (BLE address, Device Information serial
//! number); the owner confirms with the code, and only then is a binding created, from that
//! moment on, closing whoever's binding was open.
//!
//! Why this makes the wrong person impossible rather than unlikely: a pairing belongs to the
//! owner who started it (no one else can confirm it), and the code proves that owner can see
//! the bridge. Someone who learns the code (it crosses MQTT) cannot use it without being that
//! owner; someone who starts a pairing for another's device never sees the code.
//!
//! Codes are stored hashed; a pairing allows [`MAX_ATTEMPTS`] wrong codes, expires after
//! [`TTL`], and is used once. Every refusal and every confirmation is written to the
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
    reported_bridge_key TEXT,
    finished_at_ms INTEGER
);
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
    #[error("the bridge answered with a key other than the one it registered before")]
    BridgeKeyMismatch,
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
            Self::BridgeKeyMismatch => "bridge_key_mismatch",
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
    bridge_key: Option<String>,
}

fn hash(pairing_id: Uuid, code: &str) -> String {
    Sha256::digest(format!("{pairing_id}:{code}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Equal-length strings compared without an early exit.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A fresh six-digit code.
pub fn new_code() -> String {
    use rand::Rng;
    format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000))
}

fn pairing_entry(person: &str, what: &str, now: DateTime<Utc>) -> audit::Entry {
    audit::Entry::by_owner(person, audit::Action::Pairing, what, 0, now)
}

impl Store {
    /// Starts a pairing of `device_id` through `bridge_id` for `person_id` with `code`.
    pub fn start_pairing(
        &self,
        person_id: &str,
        bridge_id: &str,
        device_id: &str,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<Pairing> {
        let pairing_id = Uuid::new_v4();
        let expires_at = now + TTL;
        self.write(|tx| {
            super::insert_person(tx, person_id, person_id, "UTC", now)?;
            tx.execute(
                "INSERT INTO pairings (pairing_id, person_id, bridge_id, device_id, code_hash, created_at_ms, expires_at_ms, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending')",
                params![pairing_id.to_string(), person_id, bridge_id, device_id, hash(pairing_id, code), now.timestamp_millis(), expires_at.timestamp_millis()],
            )?;
            Ok(())
        })?;
        Ok(Pairing {
            pairing_id,
            bridge_id: bridge_id.to_owned(),
            device_id: device_id.to_owned(),
            expires_at,
            state: "pending".into(),
            reported_address: None,
            reported_serial: None,
        })
    }

    /// What a bridge reported for a pairing it was asked about. Only the first report
    /// counts, and only if the bridge and device are the ones the pairing names and it is
    /// still pending: a later report cannot swap the identity or the key the owner confirms.
    pub fn report_pairing(
        &self,
        pairing_id: Uuid,
        bridge_id: &str,
        report: &PairingReport,
    ) -> Result<bool> {
        if report
            .bridge_key
            .as_deref()
            .is_some_and(|k| super::parse_key(k).is_none())
        {
            return Ok(false);
        }
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE pairings SET reported_address = ?4, reported_serial = ?5, reported_bridge_key = ?6
                  WHERE pairing_id = ?1 AND bridge_id = ?2 AND device_id = ?3 AND state = 'pending'
                    AND reported_address IS NULL AND reported_serial IS NULL AND reported_bridge_key IS NULL",
                params![
                    pairing_id.to_string(),
                    bridge_id,
                    report.device_id,
                    report.address,
                    report.serial_number,
                    report.bridge_key
                ],
            )?;
            Ok(n == 1)
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
    /// bound to the person from `now`, closing the previous binding at that moment.
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
                    "SELECT bridge_id, device_id, code_hash, expires_at_ms, state, attempts, reported_address, reported_serial,
                            reported_bridge_key
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
                            bridge_key: r.get(8)?,
                        })
                    },
                )
                .optional()?;
            let refuse = |tx: &rusqlite::Transaction<'_>, why: Refusal, finish: bool| -> Result<std::result::Result<Pairing, Refusal>> {
                if finish {
                    tx.execute(
                        "UPDATE pairings SET state = 'refused', finished_at_ms = ?2 WHERE pairing_id = ?1",
                        params![pairing_id.to_string(), now_ms],
                    )?;
                }
                let mut e = pairing_entry(person_id, &format!("pairing refused: {}", why.code()), now);
                e.outcome = audit::Outcome::Denied;
                audit::append(tx, &e)?;
                Ok(Err(why))
            };
            let Some(Row { bridge, device, code_hash, expires_at_ms, state, attempts, address, serial: reported_serial, bridge_key }) = row else {
                return refuse(tx, Refusal::Unknown, false);
            };
            if state != "pending" {
                return refuse(tx, Refusal::Used, false);
            }
            if now_ms >= expires_at_ms {
                return refuse(tx, Refusal::Expired, true);
            }
            if !same(&hash(pairing_id, code.trim()), &code_hash) {
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
            // Register the device through this bridge (a device re-paired through another
            // bridge moves there), then close the open binding and open the new one.
            // The bridge's key: registered at its first confirmed pairing, and from then on
            // the only key a pairing through that bridge may present.
            let registered: Option<Option<String>> = tx
                .query_row("SELECT public_key FROM bridges WHERE bridge_id = ?1", [&bridge], |r| r.get(0))
                .optional()?;
            if let (Some(Some(old)), Some(new)) = (&registered, &bridge_key) {
                if old != new {
                    return refuse(tx, Refusal::BridgeKeyMismatch, true);
                }
            }
            tx.execute(
                "INSERT INTO bridges (bridge_id, created_at, public_key) VALUES (?1, ?2, ?3)
                 ON CONFLICT(bridge_id) DO UPDATE SET public_key = coalesce(bridges.public_key, excluded.public_key)",
                params![bridge, now.to_rfc3339(), bridge_key],
            )?;
            tx.execute(
                "INSERT INTO devices (device_id, bridge_id, serial_number, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(device_id) DO UPDATE SET bridge_id = excluded.bridge_id, serial_number = excluded.serial_number",
                params![device, bridge, reported_serial, now.to_rfc3339()],
            )?;
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
