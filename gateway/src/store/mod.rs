//! The embedded store: one SQLite file (WAL, `synchronous=FULL`) holding the registry
//! (people, bridges, devices, bindings), consents ([`consent`]), the disclosure log
//! ([`audit`]) and the series (records, quarantine).
//!
//! The series is keyed by the natural, time-ordered key `(device_id, record_type, start_ms,
//! end_ms)` in a `WITHOUT ROWID` table: inserts land near each other and deduplication is the
//! primary key itself. `record_id` (a random-looking UUIDv5 of that key) is a plain column
//! with no index of its own; measured here, a unique index on it cuts inserts by 3-4x.
//!
//! Ingest runs in one `BEGIN IMMEDIATE` transaction per group of messages: the registry view
//! used to attribute records is read in the same transaction that writes them, and the acks
//! are released only after COMMIT returns.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use phr_schema::{Ack, Reason, RecordType};

use crate::ingest::{self, Binding, Checked, Decision, DeviceView};

pub mod audit;
pub mod changes;
pub mod clients;
pub mod consent;
pub mod corrections;
pub mod dashboard;
pub mod export;
pub mod pairing;
pub mod sessions;
pub mod subjects;

use crate::{Error, Result};
pub use consent::{Consent, ConsentStatus, GranteeKind, Terms, STORAGE_GRANTEE, STORAGE_PURPOSE};

/// The series: one row per record, keyed by its natural, time-ordered key. Public so the
/// ingest benchmark measures the very table the gateway writes.
pub const SERIES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    device_id TEXT NOT NULL,
    record_type TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    record_id TEXT NOT NULL,
    person_id TEXT NOT NULL,
    bridge_id TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    stored_at_ms INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (device_id, record_type, start_ms, end_ms)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_by_person ON records(person_id, record_type, start_ms);
";

const REGISTRY_AND_QUARANTINE: &str = "
CREATE TABLE IF NOT EXISTS people (
    person_id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    time_zone TEXT NOT NULL,
    created_at TEXT NOT NULL
);
-- `public_key`: the Ed25519 key (hex) the bridge registered at its first confirmed pairing;
-- once set, only batches signed by it are accepted on the bridge's topics.
CREATE TABLE IF NOT EXISTS bridges (
    bridge_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    public_key TEXT
);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    bridge_id TEXT NOT NULL REFERENCES bridges(bridge_id),
    model TEXT,
    serial_number TEXT,
    created_at TEXT NOT NULL
);
-- A device is bound to one person for [valid_from, valid_to); NULL valid_to is open.
CREATE TABLE IF NOT EXISTS bindings (
    binding_id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices(device_id),
    person_id TEXT NOT NULL REFERENCES people(person_id),
    valid_from INTEGER NOT NULL,
    valid_to INTEGER,
    created_at TEXT NOT NULL,
    CHECK (valid_to IS NULL OR valid_to > valid_from)
);
CREATE INDEX IF NOT EXISTS bindings_by_device ON bindings(device_id, valid_from);
CREATE TABLE IF NOT EXISTS quarantine (
    device_id TEXT NOT NULL,
    record_type TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    record_id TEXT NOT NULL,
    bridge_id TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (device_id, record_type, start_ms, end_ms)
) WITHOUT ROWID;
";

/// A stored record: its JSON as received and when the gateway stored it.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub json: String,
    pub stored_at_ms: i64,
}

/// A page of one person's records.
#[derive(Debug, Clone)]
pub struct Page {
    pub records: Vec<StoredRecord>,
    /// The key after which the next page starts.
    pub next: Option<PageKey>,
}

/// What an erasure removed or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Erasure {
    pub records: usize,
    pub quarantined: usize,
    pub bindings_closed: usize,
    pub consents_withdrawn: usize,
}

/// A position in a person's records: `(start_ms, device_id, end_ms)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageKey {
    pub start_ms: i64,
    pub device_id: String,
    pub end_ms: i64,
}

#[derive(Debug)]
pub struct Store {
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    path: std::path::PathBuf,
    read_only: bool,
    /// The IANA time zone of people registered without one (`people.default_time_zone`).
    default_time_zone: std::sync::RwLock<String>,
}

/// The time zone of people registered without one, unless configured otherwise.
pub const DEFAULT_TIME_ZONE: &str = "Asia/Tokyo";

/// Version of the tables below, kept in SQLite's `user_version`. Development versions before
/// the first release are not migrated: a data dir from one is refused with a clear error.
const SCHEMA_VERSION: i64 = 4;

fn check_version(conn: &Connection, path: &Path) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let empty: bool = conn.query_row(
        "SELECT count(*) = 0 FROM sqlite_master WHERE type = 'table'",
        [],
        |r| r.get(0),
    )?;
    if empty || version == SCHEMA_VERSION {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{} was created by a development version (schema {version}, this is {SCHEMA_VERSION}); \
             move it aside to start a new store",
            path.display()
        )))
    }
}

/// Every connection's settings: WAL, and a commit is durable when it returns.
pub const PRAGMAS: &str = "PRAGMA journal_mode=WAL;
PRAGMA synchronous=FULL;
PRAGMA foreign_keys=ON;
PRAGMA busy_timeout=10000;";

fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.execute_batch(PRAGMAS)?;
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = open_connection(path)?;
        check_version(&conn, path)?;
        conn.execute_batch(SERIES_SCHEMA)?;
        conn.execute_batch(changes::SCHEMA)?;
        conn.execute_batch(dashboard::SCHEMA)?;
        dashboard::backfill(&conn)?;
        conn.execute_batch(REGISTRY_AND_QUARANTINE)?;
        conn.execute_batch(consent::SCHEMA)?;
        conn.execute_batch(audit::SCHEMA)?;
        conn.execute_batch(pairing::SCHEMA)?;
        conn.execute_batch(corrections::SCHEMA)?;
        conn.execute_batch(clients::SCHEMA)?;
        conn.execute_batch(sessions::SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(Self {
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            path: path.to_owned(),
            read_only: false,
            default_time_zone: std::sync::RwLock::new(DEFAULT_TIME_ZONE.to_owned()),
        })
    }

    /// Opens an existing store read-only, creating and changing nothing (for `audit verify`
    /// and other inspections).
    pub fn open_read_only(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Config(format!("no store at {}", path.display())));
        }
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        check_version(&conn, path)?;
        let reader = Connection::open_with_flags(path, flags)?;
        Ok(Self {
            writer: Mutex::new(conn),
            readers: Mutex::new(vec![reader]),
            path: path.to_owned(),
            read_only: true,
            default_time_zone: std::sync::RwLock::new(DEFAULT_TIME_ZONE.to_owned()),
        })
    }

    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.writer.lock().map_err(|_| Error::Poisoned)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = match self.readers.lock().map_err(|_| Error::Poisoned)?.pop() {
            Some(c) => c,
            None if self.read_only => {
                Connection::open_with_flags(&self.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?
            }
            None => open_connection(&self.path)?,
        };
        let out = f(&conn);
        if let Ok(mut pool) = self.readers.lock() {
            if pool.len() < 8 {
                pool.push(conn);
            }
        }
        out
    }

    // ----- registry -----

    pub fn add_person(&self, person_id: &str, display_name: &str, time_zone: &str) -> Result<()> {
        self.write(|tx| insert_person(tx, person_id, display_name, time_zone, Utc::now()))
    }

    /// The key `bridge_id` registered at pairing, if any.
    pub fn bridge_public_key(&self, bridge_id: &str) -> Result<Option<VerifyingKey>> {
        self.read(|conn| bridge_key(conn, bridge_id))
    }

    /// Enrols `bridge_id` with its Ed25519 public key (64 hex characters): from then on the
    /// bridge authenticates with that key. Re-enrolling with the same key changes nothing; a
    /// different key is refused (`Error::Conflict`): a bridge's identity does not change
    /// silently (an operator revokes the bridge first).
    pub fn register_bridge_key(&self, bridge_id: &str, public_key_hex: &str) -> Result<()> {
        if parse_key(public_key_hex).is_none() {
            return Err(Error::Invalid(
                "a bridge key is 64 hex characters of an Ed25519 public key",
            ));
        }
        let key = public_key_hex.to_ascii_lowercase();
        self.write(|tx| {
            let existing: Option<Option<String>> = tx
                .query_row("SELECT public_key FROM bridges WHERE bridge_id = ?1", [bridge_id], |r| r.get(0))
                .optional()?;
            match existing {
                Some(Some(old)) if old.eq_ignore_ascii_case(&key) => Ok(()),
                Some(Some(_)) => Err(Error::Conflict("the bridge is enrolled with another key")),
                Some(None) => {
                    tx.execute("UPDATE bridges SET public_key = ?2 WHERE bridge_id = ?1", params![bridge_id, key])?;
                    Ok(())
                }
                None => {
                    tx.execute(
                        "INSERT INTO bridges (bridge_id, created_at, public_key) VALUES (?1, ?2, ?3)",
                        params![bridge_id, Utc::now().to_rfc3339(), key],
                    )?;
                    Ok(())
                }
            }
        })
    }

    /// Makes sure `person_id` exists (a token's subject granting a consent, say).
    pub fn ensure_person(&self, person_id: &str) -> Result<()> {
        let zone = self
            .default_time_zone
            .read()
            .map_err(|_| Error::Poisoned)?
            .clone();
        self.add_person(person_id, person_id, &zone)
    }

    /// Sets the time zone given to people registered without one (the gateway's
    /// `people.default_time_zone`).
    pub fn set_default_time_zone(&self, zone: &str) -> Result<()> {
        *self
            .default_time_zone
            .write()
            .map_err(|_| Error::Poisoned)? = zone.to_owned();
        Ok(())
    }

    /// Registers a device as reached through `bridge_id` (and the bridge, if new).
    pub fn add_device(&self, device_id: &str, bridge_id: &str, model: Option<&str>) -> Result<()> {
        self.write(|tx| {
            let now = Utc::now().to_rfc3339();
            tx.execute(
                "INSERT INTO bridges (bridge_id, created_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![bridge_id, now],
            )?;
            let existing: Option<String> = tx
                .query_row("SELECT bridge_id FROM devices WHERE device_id = ?1", [device_id], |r| r.get(0))
                .optional()?;
            match existing {
                Some(b) if b != bridge_id => Err(Error::Conflict("device is registered through another bridge")),
                Some(_) => Ok(()),
                None => {
                    tx.execute(
                        "INSERT INTO devices (device_id, bridge_id, model, created_at) VALUES (?1, ?2, ?3, ?4)",
                        params![device_id, bridge_id, model, now],
                    )?;
                    Ok(())
                }
            }
        })
    }

    /// Binds a device to a person from `from` on, closing the binding open at that moment.
    /// Later records are attributed to the new person; earlier ones stay with the old.
    pub fn bind(&self, device_id: &str, person_id: &str, from: DateTime<Utc>) -> Result<()> {
        self.write(|tx| bind_in(tx, device_id, person_id, from))
    }

    // ----- ingest -----

    /// Attributes and applies checked messages in one transaction; returns one ack per
    /// message, in order. The registry is read inside the same transaction, once per device.
    /// Nothing is acked unless the whole group committed.
    pub fn ingest(&self, checked: Vec<Checked>, now: DateTime<Utc>) -> Result<Vec<Ack>> {
        let now_ms = now.timestamp_millis();
        self.write(|tx| {
            let mut views: HashMap<String, DeviceView> = HashMap::new();
            let mut keys: HashMap<String, Option<VerifyingKey>> = HashMap::new();
            let mut acks = Vec::with_capacity(checked.len());
            let mut insert = tx.prepare_cached(
                "INSERT INTO records (device_id, record_type, start_ms, end_ms, record_id,
                                      person_id, bridge_id, batch_id, stored_at_ms, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT DO NOTHING",
            )?;
            let mut quarantine = tx.prepare_cached(
                "INSERT INTO quarantine (device_id, record_type, start_ms, end_ms, record_id,
                                         bridge_id, batch_id, reason, received_at_ms, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT DO NOTHING",
            )?;
            for c in checked {
                let view = match views.get(&c.device_id) {
                    Some(v) => v,
                    None => {
                        let v = device_view(tx, &c.device_id)?;
                        views.entry(c.device_id.clone()).or_insert(v)
                    }
                };
                let key = match keys.get(&c.bridge_id) {
                    Some(k) => k,
                    None => {
                        let k = bridge_key(tx, &c.bridge_id)?;
                        keys.entry(c.bridge_id.clone()).or_insert(k)
                    }
                };
                let mut plan = ingest::attribute(c, view, key.as_ref());
                if let Some(reason @ (Reason::DeviceNotOnBridge | Reason::BadSignature)) =
                    plan.ack.batch_error
                {
                    audit_refused_batch(tx, &plan, view, reason, now)?;
                }
                let batch_id = plan.batch_id.map(|b| b.to_string()).unwrap_or_default();
                for p in &plan.accepted {
                    let (k, v) = (&p.valid.key, &p.valid);
                    let (device, kind, id) = (
                        &k.device_id,
                        k.record_type.as_str(),
                        v.record_id.to_string(),
                    );
                    let changed = match &p.decision {
                        Decision::Store { person_id } => insert.execute(params![
                            device,
                            kind,
                            k.start_ms,
                            k.end_ms,
                            id,
                            person_id,
                            plan.bridge_id,
                            batch_id,
                            now_ms,
                            v.json
                        ])?,
                        Decision::Quarantine(reason) => quarantine.execute(params![
                            device,
                            kind,
                            k.start_ms,
                            k.end_ms,
                            id,
                            plan.bridge_id,
                            batch_id,
                            reason.code(),
                            now_ms,
                            v.json
                        ])?,
                    };
                    match (&p.decision, changed) {
                        (_, 0) => plan.ack.duplicate += 1,
                        (Decision::Store { .. }, _) => plan.ack.stored += 1,
                        (Decision::Quarantine(_), _) => plan.ack.quarantined += 1,
                    }
                }
                plan.ack.acked_at = Some(now.fixed_offset());
                acks.push(plan.ack);
            }
            Ok(acks)
        })
    }

    // ----- erasure -----

    /// Erases everything the gateway holds of `person_id`: their records, the quarantined
    /// records of devices ever bound to them, their consents (withdrawn) and bindings (closed
    /// now). The disclosure log keeps that an erasure happened and how much, not the data.
    pub fn erase_person(&self, person_id: &str, by: &str, now: DateTime<Utc>) -> Result<Erasure> {
        let now_ms = now.timestamp_millis();
        self.write(|tx| {
            let records = tx.execute("DELETE FROM records WHERE person_id = ?1", [person_id])?;
            let quarantined = tx.execute(
                "DELETE FROM quarantine WHERE device_id IN
                     (SELECT device_id FROM bindings WHERE person_id = ?1)",
                [person_id],
            )?;
            let bindings_closed = tx.execute(
                "UPDATE bindings SET valid_to = ?2
                  WHERE person_id = ?1 AND valid_from < ?2 AND (valid_to IS NULL OR valid_to > ?2)",
                params![person_id, now_ms],
            )?;
            let consents_withdrawn = consent::withdraw_all(tx, person_id, by, now)?;
            let mut entry = audit::Entry::by_owner(
                person_id,
                audit::Action::Erasure,
                "erasure requested by the person",
                (records + quarantined) as u64,
                now,
            );
            entry.actor = by.to_owned();
            entry.data_types = RecordType::ALL
                .iter()
                .map(|t| t.as_str().to_owned())
                .collect();
            audit::append(tx, &entry)?;
            Ok(Erasure {
                records,
                quarantined,
                bindings_closed,
                consents_withdrawn,
            })
        })
    }

    // ----- reads -----

    /// One person's records of one type whose measured start lies in `[from_ms, to_ms)`,
    /// in measured order, after `after` if given.
    pub fn records(
        &self,
        person_id: &str,
        record_type: RecordType,
        from_ms: i64,
        to_ms: i64,
        after: Option<&PageKey>,
        limit: usize,
    ) -> Result<Page> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT start_ms, device_id, end_ms, body, stored_at_ms FROM records
                 WHERE person_id = ?1 AND record_type = ?2 AND start_ms >= ?3 AND start_ms < ?4
                   AND (start_ms, device_id, end_ms) > (?5, ?6, ?7)
                 ORDER BY start_ms, device_id, end_ms
                 LIMIT ?8",
            )?;
            let (a_start, a_dev, a_end) = match after {
                Some(k) => (k.start_ms, k.device_id.as_str(), k.end_ms),
                None => (i64::MIN, "", i64::MIN),
            };
            let mut rows = stmt.query(params![
                person_id,
                record_type.as_str(),
                from_ms,
                to_ms,
                a_start,
                a_dev,
                a_end,
                (limit + 1) as i64
            ])?;
            let mut records = Vec::new();
            let mut last = None;
            let mut more = false;
            while let Some(row) = rows.next()? {
                if records.len() == limit {
                    more = true;
                    break;
                }
                last = Some(PageKey {
                    start_ms: row.get(0)?,
                    device_id: row.get(1)?,
                    end_ms: row.get(2)?,
                });
                records.push(StoredRecord {
                    json: row.get(3)?,
                    stored_at_ms: row.get(4)?,
                });
            }
            Ok(Page {
                records,
                next: if more { last } else { None },
            })
        })
    }

    /// Rows in the series and in quarantine.
    pub fn counts(&self) -> Result<(u64, u64)> {
        self.read(|conn| {
            let records: i64 = conn.query_row("SELECT count(*) FROM records", [], |r| r.get(0))?;
            let quarantined: i64 =
                conn.query_row("SELECT count(*) FROM quarantine", [], |r| r.get(0))?;
            Ok((records as u64, quarantined as u64))
        })
    }
}

/// Registers a person inside the caller's transaction; an existing one is left as it is.
fn insert_person(
    tx: &Transaction<'_>,
    person_id: &str,
    display_name: &str,
    time_zone: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO people (person_id, display_name, time_zone, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(person_id) DO NOTHING",
    )?
    .execute(params![person_id, display_name, time_zone, now.to_rfc3339()])?;
    Ok(())
}

/// Binds `device_id` to `person_id` from `from` on, inside the caller's transaction: closes
/// the binding open at that moment. Refuses a `from` at or before the start of an existing
/// binding, so history is never rewritten here (corrections do that, as events).
fn bind_in(
    tx: &Transaction<'_>,
    device_id: &str,
    person_id: &str,
    from: DateTime<Utc>,
) -> Result<()> {
    let from_ms = from.timestamp_millis();
    let later: i64 = tx.query_row(
        "SELECT count(*) FROM bindings WHERE device_id = ?1 AND valid_from >= ?2",
        params![device_id, from_ms],
        |r| r.get(0),
    )?;
    if later > 0 {
        return Err(Error::Conflict(
            "a binding of this device starts at or after that time",
        ));
    }
    tx.execute(
        "UPDATE bindings SET valid_to = ?2 WHERE device_id = ?1 AND valid_to IS NULL",
        params![device_id, from_ms],
    )?;
    tx.execute(
        "INSERT INTO bindings (device_id, person_id, valid_from, valid_to, created_at)
         VALUES (?1, ?2, ?3, NULL, ?4)",
        params![device_id, person_id, from_ms, Utc::now().to_rfc3339()],
    )?;
    Ok(())
}

/// A batch for a device, refused because its bridge does not own the device or did not sign
/// it: an attempt on someone's data stream, logged where the device's owner sees it (or with
/// no person, for a device nobody owns).
fn audit_refused_batch(
    tx: &Transaction<'_>,
    plan: &ingest::Plan,
    view: &DeviceView,
    reason: Reason,
    now: DateTime<Utc>,
) -> Result<()> {
    let now_ms = now.timestamp_millis();
    let owner = view
        .bindings
        .iter()
        .find(|b| b.from_ms <= now_ms && b.to_ms.is_none_or(|t| t > now_ms))
        .map(|b| b.person_id.clone())
        .unwrap_or_default();
    audit::append(
        tx,
        &audit::Entry {
            at: now,
            actor: plan.bridge_id.clone(),
            actor_kind: "bridge".into(),
            person_id: owner,
            action: audit::Action::RefusedBatch,
            outcome: audit::Outcome::Denied,
            data_types: Vec::new(),
            window_from: None,
            window_to: None,
            purpose: format!(
                "batch for device {} refused: {}",
                plan.device_id,
                reason.code()
            ),
            consent_id: None,
            records: plan.ack.rejected.len() as u64,
        },
    )?;
    Ok(())
}

/// The key `bridge_id` registered at pairing, if any.
pub(crate) fn bridge_key(conn: &Connection, bridge_id: &str) -> Result<Option<VerifyingKey>> {
    let hex: Option<String> = conn
        .prepare_cached("SELECT public_key FROM bridges WHERE bridge_id = ?1")?
        .query_row([bridge_id], |r| r.get(0))
        .optional()?
        .flatten();
    hex.map(|h| parse_key(&h).ok_or(Error::Invalid("a stored bridge key is malformed")))
        .transpose()
}

/// An Ed25519 public key from 64 hex characters.
pub fn parse_key(hex: &str) -> Option<VerifyingKey> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    VerifyingKey::from_bytes(&bytes).ok()
}

/// The registry's view of one device, read inside the ingest transaction.
fn device_view(tx: &Transaction<'_>, device_id: &str) -> Result<DeviceView> {
    let bridge_id: Option<String> = tx
        .prepare_cached("SELECT bridge_id FROM devices WHERE device_id = ?1")?
        .query_row([device_id], |r| r.get(0))
        .optional()?;
    let mut stmt = tx.prepare_cached(
        "SELECT person_id, valid_from, valid_to FROM bindings WHERE device_id = ?1 ORDER BY valid_from",
    )?;
    let bindings = stmt
        .query_map([device_id], |r| {
            Ok(Binding {
                person_id: r.get(0)?,
                from_ms: r.get(1)?,
                to_ms: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut storage_consent: Vec<(String, consent::Terms)> = Vec::new();
    let now = Utc::now();
    let mut seen: Vec<&str> = Vec::new();
    for person in bindings.iter().map(|b| b.person_id.as_str()) {
        if seen.contains(&person) {
            continue;
        }
        seen.push(person);
        for c in consent::in_force(tx, person, STORAGE_GRANTEE, GranteeKind::Gateway, now)? {
            if c.terms.purpose == STORAGE_PURPOSE {
                storage_consent.push((person.to_owned(), c.terms));
            }
        }
    }
    Ok(DeviceView {
        bridge_id,
        bindings,
        storage_consent,
    })
}
