//! The store: everything the gateway keeps, behind the traits its backends implement, and
//! the SQLite backend (one file, WAL, `synchronous=FULL`) that is the embedded default.
//!
//! The SQLite backend holds the registry (people, bridges, devices, bindings), consents
//! ([`consent`]), the disclosure log ([`audit`]), the change feed ([`changes`]) and the
//! series (records, quarantine) in one file.
//!
//! The series is keyed by the natural, time-ordered key `(device_id, record_type, start_ms,
//! end_ms)` in a `WITHOUT ROWID` table: inserts land near each other and deduplication is the
//! primary key itself. `record_id` (a random-looking UUIDv5 of that key) is a plain column
//! with no index of its own; measured here, a unique index on it cuts inserts by 3-4x.
//!
//! Ingest runs in one `BEGIN IMMEDIATE` transaction per group of messages: the registry view
//! used to attribute records is read in the same transaction that writes them, and the acks
//! are released only after COMMIT returns.
//!
//! This crate knows nothing of HTTP, tokens or MQTT: who may read what is decided above it,
//! in the gateway's access layer. The two sets of rules a backend must apply inside its own
//! transactions, attribution ([`ingest`]) and the feed's visibility ([`visibility`]), are
//! pure functions kept here, beside the SQL, so every backend applies the same ones.
//!
//! # Layout
//! - [`traits`]: `Registry`, `Accounts`, `SeriesStore`, `ChangeFeed` (together `Backend`):
//!   what a backend provides.
//! - [`error`]: the store's error type.
//! - [`ingest`]: pure planning every backend applies: validate, attribute, consent-check.
//! - `lib.rs` (here): the SQLite [`Store`]: opening, the registry, ingest, erasure, reads.
//! - [`consent`], [`audit`], [`changes`]: consents, the disclosure log, the sync feed.
//! - [`visibility`]: who sees which change of the feed (pure consent rules, no SQL).
//! - [`corrections`]: re-attribution, unlinking, quarantine confirmation, held records.
//! - [`pairing`], [`pairing_view`], [`nearby`]: pairing a device and what the owner sees of it.
//! - [`sessions`], [`clients`]: dashboard sign-in and sessions; OAuth clients and `jti`s.
//! - [`subjects`]: people, local days (IANA zones, DST) and daily summaries.
//! - [`sources`], [`source_view`]: one device per interval (the merged view) and its ranking.
//! - [`rollup`]: the 5-minute rollup the dashboards and daily summaries read.
//! - [`clock`]: where the time comes from (the system's, or a test's that moves on demand).
//! - [`secret`]: random tokens and the constant-time comparison of secrets (the gateway's too).
//! - [`export`]: exports and the re-import of a person's own export.
//! - `conformance` (feature `conformance`): the tests every backend must pass.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use phr_schema::{Ack, Reason, RecordType};

use crate::ingest::{Binding, BridgePeriod, Checked, Decision, DeviceView, Rule};

pub mod audit;
pub mod changes;
pub mod clients;
pub mod clock;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod consent;
pub mod corrections;
pub mod error;
pub mod export;
pub mod ingest;
pub mod nearby;
pub mod pairing;
pub mod pairing_view;
pub mod rollup;
pub mod secret;
pub mod sessions;
pub mod source_view;
pub mod sources;
pub mod subjects;
pub mod traits;
pub mod visibility;

pub use clock::{Clock, ManualClock, OffsetClock, SharedClock, SystemClock};
pub use traits::{Accounts, Backend, ChangeFeed, Registry, SeriesStore};

/// The backend traits, to call a `dyn Backend`'s methods, and the [`Clock`] the time is read
/// from: `use phr_store::prelude::*;`.
pub mod prelude {
    pub use crate::clock::Clock;
    pub use crate::traits::{Accounts, Backend, ChangeFeed, Registry, SeriesStore};
}

pub use consent::{Consent, ConsentStatus, GranteeKind, Terms, STORAGE_GRANTEE, STORAGE_PURPOSE};
pub use error::{Error, Result};

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
-- `public_key`: the bridge's Ed25519 key (hex), registered when an operator enrols the bridge;
-- only a bridge with a key may connect, and only messages sealed with its channel key count.
CREATE TABLE IF NOT EXISTS bridges (
    bridge_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    public_key TEXT
);
-- Batches refused as a whole, counted per bridge, minute, reason and the person whose device
-- they named ('' if none): a flood costs one row per minute, never one per message.
CREATE TABLE IF NOT EXISTS refused_batches (
    bridge_id TEXT NOT NULL,
    minute_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    person_id TEXT NOT NULL,
    batches INTEGER NOT NULL,
    PRIMARY KEY (minute_ms, bridge_id, reason, person_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    bridge_id TEXT NOT NULL REFERENCES bridges(bridge_id),
    model TEXT,
    serial_number TEXT,
    created_at TEXT NOT NULL
);
-- The bridges a device was held through, [from_ms, to_ms) of measured time; NULL to_ms is
-- open (its current bridge). A bridge may deliver the device's records measured before the
-- end of its latest period (see `ingest`). The first period starts at the beginning of time.
CREATE TABLE IF NOT EXISTS device_bridges (
    device_id TEXT NOT NULL REFERENCES devices(device_id),
    bridge_id TEXT NOT NULL,
    from_ms INTEGER NOT NULL,
    to_ms INTEGER
);
CREATE INDEX IF NOT EXISTS device_bridges_by_device ON device_bridges(device_id, from_ms);
-- A person's latest erasure: records measured before it are never stored again from a
-- bridge (only the person's explicit re-import passes).
CREATE TABLE IF NOT EXISTS erasure_fences (
    person_id TEXT PRIMARY KEY,
    fence_ms INTEGER NOT NULL
) WITHOUT ROWID;
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
    -- The person a record is held for (reason 'no_storage_consent'): theirs once they
    -- consent, deleted when the hold expires. NULL: attributed to nobody.
    held_for TEXT,
    PRIMARY KEY (device_id, record_type, start_ms, end_ms)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS quarantine_held ON quarantine(held_for, received_at_ms)
    WHERE held_for IS NOT NULL;
";

/// A stored record: its JSON as received and when the gateway stored it.
/// Refused batches of one bridge, reason and minute.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RefusedCount {
    pub bridge_id: String,
    pub minute: DateTime<Utc>,
    pub reason: String,
    pub batches: u64,
}

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
    /// Rows of the change feed that named the person's records, replaced by one
    /// `person_erased` row.
    pub feed_rows_removed: usize,
    /// Whether the deleted content is overwritten in the database file (zeroed pages, WAL
    /// emptied) by the time the erasure returned.
    pub overwritten: bool,
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
    /// Rows in the series and in quarantine, kept in memory for `/metrics`.
    rows: RowCounts,
    /// Reads and writes so far ([`Store::accesses`]).
    accesses: std::sync::atomic::AtomicU64,
    /// How long one sync page may examine changes ([`changes::PAGE_TIME_BUDGET`]).
    page_budget: std::sync::RwLock<std::time::Duration>,
    /// Days a record lacking storage consent is held for its person; 0: not held, rejected
    /// (`[ingest] hold_without_consent_days`).
    hold_days: AtomicI64,
}

/// How long records lacking storage consent are held unless configured otherwise.
pub const DEFAULT_HOLD_DAYS: u32 = 30;

/// Rows in `records` and `quarantine`, counted once when the store opens and then kept
/// exact by every write that adds or removes rows (ingest, corrections, import, erasure), so
/// that reading them (each `/metrics` scrape) costs no query. A write reports its changes
/// as pending; they count once its transaction has committed and are dropped if it fails.
/// Rows written by another process on the same file (`phr-gateway import` while the gateway
/// runs) show after the gateway's next start.
#[derive(Debug, Default)]
struct RowCounts {
    records: AtomicI64,
    quarantine: AtomicI64,
    // Only the writer (holding the writer lock) touches these.
    pending_records: AtomicI64,
    pending_quarantine: AtomicI64,
}

impl RowCounts {
    fn counted(conn: &Connection) -> Result<Self> {
        let (records, quarantine) = count_rows(conn)?;
        Ok(Self {
            records: AtomicI64::new(records as i64),
            quarantine: AtomicI64::new(quarantine as i64),
            ..Self::default()
        })
    }

    /// `n` rows added to (positive) or removed from (negative) `records` in the open write.
    fn records(&self, n: i64) {
        self.pending_records.fetch_add(n, Relaxed);
    }

    /// The same for `quarantine`.
    fn quarantine(&self, n: i64) {
        self.pending_quarantine.fetch_add(n, Relaxed);
    }

    fn commit(&self) {
        self.records
            .fetch_add(self.pending_records.swap(0, Relaxed), Relaxed);
        self.quarantine
            .fetch_add(self.pending_quarantine.swap(0, Relaxed), Relaxed);
    }

    fn discard(&self) {
        self.pending_records.store(0, Relaxed);
        self.pending_quarantine.store(0, Relaxed);
    }
}

/// `count(*)` of the series and of quarantine: full scans, for start-up and checks only.
fn count_rows(conn: &Connection) -> Result<(u64, u64)> {
    let records: i64 = conn.query_row("SELECT count(*) FROM records", [], |r| r.get(0))?;
    let quarantined: i64 = conn.query_row("SELECT count(*) FROM quarantine", [], |r| r.get(0))?;
    Ok((records as u64, quarantined as u64))
}

/// A row count from `execute`, as a change to add.
fn added(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The time zone of people registered without one, unless configured otherwise.
pub const DEFAULT_TIME_ZONE: &str = "Asia/Tokyo";

/// Version of the tables below, kept in SQLite's `user_version`. Development versions before
/// the first release are not migrated: a data dir from one is refused with a clear error.
const SCHEMA_VERSION: i64 = 6;

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

/// Every connection's settings: WAL, a commit is durable when it returns, and deleted content
/// is overwritten with zeros rather than left in free space (`secure_delete`: an erasure must
/// not stay readable in the file; [`Store::erase_person`] also empties the WAL afterwards).
pub const PRAGMAS: &str = "PRAGMA journal_mode=WAL;
PRAGMA synchronous=FULL;
PRAGMA secure_delete=ON;
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
        conn.execute_batch(&rollup::schema())?;
        rollup::backfill(&conn)?;
        conn.execute_batch(REGISTRY_AND_QUARANTINE)?;
        conn.execute_batch(consent::SCHEMA)?;
        conn.execute_batch(audit::SCHEMA)?;
        conn.execute_batch(pairing::SCHEMA)?;
        conn.execute_batch(corrections::SCHEMA)?;
        conn.execute_batch(clients::SCHEMA)?;
        conn.execute_batch(sessions::SCHEMA)?;
        // A new table only, created where missing: stores of this schema version gain it
        // on their next start, as `oidc_pending` did.
        conn.execute_batch(nearby::SCHEMA)?;
        conn.execute_batch(sources::SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        let rows = RowCounts::counted(&conn)?;
        Ok(Self {
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            path: path.to_owned(),
            read_only: false,
            default_time_zone: std::sync::RwLock::new(DEFAULT_TIME_ZONE.to_owned()),
            rows,
            accesses: Default::default(),
            page_budget: std::sync::RwLock::new(changes::PAGE_TIME_BUDGET),
            hold_days: AtomicI64::new(DEFAULT_HOLD_DAYS.into()),
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
        let rows = RowCounts::counted(&conn)?;
        Ok(Self {
            writer: Mutex::new(conn),
            readers: Mutex::new(vec![reader]),
            path: path.to_owned(),
            read_only: true,
            default_time_zone: std::sync::RwLock::new(DEFAULT_TIME_ZONE.to_owned()),
            rows,
            accesses: Default::default(),
            page_budget: std::sync::RwLock::new(changes::PAGE_TIME_BUDGET),
            hold_days: AtomicI64::new(DEFAULT_HOLD_DAYS.into()),
        })
    }

    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        self.accesses.fetch_add(1, Relaxed);
        let mut conn = self.writer.lock().map_err(|_| Error::Poisoned)?;
        self.rows.discard();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx).and_then(|out| {
            tx.commit()?;
            Ok(out)
        });
        match out {
            Ok(_) => self.rows.commit(),
            Err(_) => self.rows.discard(),
        }
        out
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.accesses.fetch_add(1, Relaxed);
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
        if phr_schema::channel::key_from_hex(public_key_hex).is_none() {
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

    /// Revokes `bridge_id`'s enrolment (a lost or compromised bridge): it can no longer
    /// connect to the embedded broker, nothing it seals opens any more, and nothing is sent to
    /// it; its devices and their bindings stay. `false` if it was not enrolled. Enrolling it
    /// again (with a new key) is allowed afterwards. Its latest nearby report is deleted.
    pub fn revoke_bridge(&self, bridge_id: &str) -> Result<bool> {
        self.write(|tx| {
            // What it reported nearby goes with it.
            tx.execute("DELETE FROM nearby_reports WHERE bridge_id = ?1", [bridge_id])?;
            Ok(tx.execute(
                "UPDATE bridges SET public_key = NULL WHERE bridge_id = ?1 AND public_key IS NOT NULL",
                [bridge_id],
            )? == 1)
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

    /// Sets how many days records lacking storage consent are held for their person (0:
    /// they are rejected `no_storage_consent` instead).
    pub fn set_hold_without_consent_days(&self, days: u32) {
        self.hold_days.store(days.into(), Relaxed);
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
                    open_bridge_period(tx, device_id, bridge_id, i64::MIN)
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

    /// Counts batches that were refused before they could be read (their bridge is not
    /// enrolled, or they did not open with its channel key): one row per bridge, reason and
    /// minute, whatever the flood.
    pub fn count_refused(
        &self,
        refused: &[(String, RefusedBatch)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        if refused.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            for (bridge, why) in refused {
                let bridge = if *why == RefusedBatch::NotEnrolled {
                    "*"
                } else {
                    bridge.as_str()
                };
                refused_batch(tx, bridge, *why, "", now)?;
            }
            Ok(())
        })
    }

    /// Refused batches per bridge, reason and minute since `since`, newest first (at most
    /// `limit` rows): what an operator looks at when a bridge misbehaves.
    pub fn refused_batches(&self, since: DateTime<Utc>, limit: usize) -> Result<Vec<RefusedCount>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT bridge_id, minute_ms, reason, sum(batches) FROM refused_batches
                  WHERE minute_ms >= ?1 GROUP BY bridge_id, minute_ms, reason
                  ORDER BY minute_ms DESC, bridge_id, reason LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![since.timestamp_millis(), limit as i64], |r| {
                Ok(RefusedCount {
                    bridge_id: r.get(0)?,
                    minute: DateTime::from_timestamp_millis(r.get(1)?).unwrap_or_default(),
                    reason: r.get(2)?,
                    batches: r.get::<_, i64>(3)? as u64,
                })
            })?;
            Ok(rows.collect::<std::result::Result<_, _>>()?)
        })
    }

    /// Attributes and applies checked messages in one transaction; returns one ack per
    /// message, in order. The registry is read inside the same transaction, once per device.
    /// Nothing is acked unless the whole group committed.
    pub fn ingest(&self, checked: Vec<Checked>, now: DateTime<Utc>) -> Result<Vec<Ack>> {
        let now_ms = now.timestamp_millis();
        let without_consent = if self.hold_days.load(Relaxed) > 0 {
            ingest::WithoutConsent::Hold
        } else {
            ingest::WithoutConsent::Reject
        };
        self.write(|tx| {
            let mut views: HashMap<String, DeviceView> = HashMap::new();
            let mut acks = Vec::with_capacity(checked.len());
            // A key lives in at most one of `records` and `quarantine`: already in either,
            // a record is a duplicate (so a replay never stores what was unlinked, nor holds
            // again what was confirmed).
            let mut insert = tx.prepare_cached(
                "INSERT INTO records (device_id, record_type, start_ms, end_ms, record_id,
                                      person_id, bridge_id, batch_id, stored_at_ms, body)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10
                  WHERE NOT EXISTS (SELECT 1 FROM quarantine WHERE device_id = ?1
                                       AND record_type = ?2 AND start_ms = ?3 AND end_ms = ?4)
                 ON CONFLICT DO NOTHING",
            )?;
            let mut quarantine = tx.prepare_cached(
                "INSERT INTO quarantine (device_id, record_type, start_ms, end_ms, record_id,
                                         bridge_id, batch_id, reason, received_at_ms, body, held_for)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11
                  WHERE NOT EXISTS (SELECT 1 FROM records WHERE device_id = ?1
                                       AND record_type = ?2 AND start_ms = ?3 AND end_ms = ?4)
                 ON CONFLICT DO NOTHING",
            )?;
            for c in checked {
                let view = match views.get(&c.device_id) {
                    Some(v) => v,
                    None => {
                        let v = device_view(tx, &c.device_id, without_consent, now)?;
                        views.entry(c.device_id.clone()).or_insert(v)
                    }
                };
                let mut plan = ingest::attribute(c, view);
                if plan.ack.batch_error == Some(Reason::DeviceNotOnBridge) {
                    let owner = current_owner(view, now_ms);
                    refused_batch(
                        tx,
                        &plan.bridge_id,
                        RefusedBatch::DeviceNotOnBridge,
                        &owner,
                        now,
                    )?;
                }
                let batch_id = plan.batch_id.map(|b| b.to_string()).unwrap_or_default();
                for p in &plan.accepted {
                    let (k, v) = (&p.valid.key, &p.valid);
                    let (device, kind, id) = (
                        &k.device_id,
                        k.record_type.as_str(),
                        v.record_id.to_string(),
                    );
                    let mut quarantined = |reason: &str, held_for: Option<&str>| {
                        quarantine.execute(params![
                            device,
                            kind,
                            k.start_ms,
                            k.end_ms,
                            id,
                            plan.bridge_id,
                            batch_id,
                            reason,
                            now_ms,
                            v.json,
                            held_for
                        ])
                    };
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
                        Decision::Quarantine(q) => quarantined(q.code(), None)?,
                        Decision::Hold { person_id } => {
                            quarantined(ingest::HELD_WITHOUT_CONSENT, Some(person_id))?
                        }
                    };
                    match (&p.decision, changed) {
                        (_, 0) => plan.ack.duplicate += 1,
                        (Decision::Store { .. }, _) => {
                            plan.ack.stored += 1;
                            self.rows.records(1);
                        }
                        (Decision::Quarantine(_) | Decision::Hold { .. }, _) => {
                            plan.ack.quarantined += 1;
                            self.rows.quarantine(1);
                        }
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
    /// records measured in their binding periods of each device they held (see
    /// [`corrections::claim_periods`]; not another holder's, nor the gaps) or held for their
    /// consent, their consents (withdrawn) and bindings (closed
    /// now). The disclosure log keeps that an erasure happened and how much, not the data.
    /// `now` becomes the person's erasure fence: what was measured before it is never stored
    /// again from a bridge (see [`ingest`]); `phr-gateway import` of their export still is.
    pub fn erase_person(&self, person_id: &str, by: &str, now: DateTime<Utc>) -> Result<Erasure> {
        let now_ms = now.timestamp_millis();
        let mut erasure = self.write(|tx| {
            // First, so it is the feed's highest row and every consent the erasure withdraws
            // was in force at it (see `access::feed::person_erased`).
            changes::person_erased(tx, person_id)?;
            fence(tx, person_id, now_ms)?;
            let records = tx.execute("DELETE FROM records WHERE person_id = ?1", [person_id])?;
            // Only what was measured in the person's own binding periods: never rows measured
            // while the device was someone else's, or nobody's.
            let quarantined = corrections::erase_claimable_quarantine(tx, person_id)?;
            self.rows.records(-added(records));
            self.rows.quarantine(-added(quarantined));
            let bindings_closed = tx.execute(
                "UPDATE bindings SET valid_to = ?2
                  WHERE person_id = ?1 AND valid_from < ?2 AND (valid_to IS NULL OR valid_to > ?2)",
                params![person_id, now_ms],
            )? + tx.execute(
                // Starting now (a pairing confirmed this very millisecond): it covers nothing
                // yet, and a binding cannot be closed at its own start.
                "DELETE FROM bindings WHERE person_id = ?1 AND valid_from >= ?2",
                params![person_id, now_ms],
            )?;
            let consents_withdrawn = consent::withdraw_all(tx, person_id, by, now)?;
            // Last: the rows above named each erased record; none may stay.
            let feed_rows_removed = changes::forget_person(tx, person_id)?;
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
                feed_rows_removed,
                overwritten: false,
            })
        })?;
        erasure.overwritten = self.overwrite_freed()?;
        Ok(erasure)
    }

    /// After an erasure: the deleted rows were zeroed in their pages (`secure_delete`), but
    /// the WAL still holds the pages as they were before. Copies the WAL into the database
    /// and truncates it to nothing. `false` if a reader held an old snapshot so the WAL
    /// could not be emptied now (it is at the next checkpoint; the erasure itself holds).
    fn overwrite_freed(&self) -> Result<bool> {
        let conn = self.writer.lock().map_err(|_| Error::Poisoned)?;
        let (busy, _, _): (i64, i64, i64) =
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        Ok(busy == 0)
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
            // The index range starts at the cursor: SQLite bounds the range by `start_ms >= ?3`
            // only (the row-value comparison is a filter), so with `from_ms` there each page
            // would walk every record before it again (quadratic over a pull).
            let range_from = from_ms.max(a_start);
            let mut rows = stmt.query(params![
                person_id,
                record_type.as_str(),
                range_from,
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

    /// Rows in the series and in quarantine, counted now (two full scans: for checks and
    /// tools; `/metrics` reads [`Store::row_counts`]).
    pub fn counts(&self) -> Result<(u64, u64)> {
        self.read(count_rows)
    }

    /// How many reads and writes the store has served since it opened: lets a test show
    /// that a path (a `/metrics` scrape) does not touch the store at all.
    pub fn accesses(&self) -> u64 {
        self.accesses.load(Relaxed)
    }

    /// Rows in the series and in quarantine as of the last committed write, from memory (no
    /// query; see [`RowCounts`]).
    pub fn row_counts(&self) -> (u64, u64) {
        let get = |a: &AtomicI64| u64::try_from(a.load(Relaxed)).unwrap_or(0);
        (get(&self.rows.records), get(&self.rows.quarantine))
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

/// Who holds the device's open binding at `now_ms` ('' if nobody).
fn current_owner(view: &DeviceView, now_ms: i64) -> String {
    view.bindings
        .iter()
        .find(|b| b.from_ms <= now_ms && b.to_ms.is_none_or(|t| t > now_ms))
        .map(|b| b.person_id.clone())
        .unwrap_or_default()
}

/// Counts a refused batch in its bridge's and minute's row of `refused_batches`; the first of
/// a minute for a person (the current owner of the device it named) also goes into that
/// person's disclosure log. So a flood costs one row per bridge, reason and minute, and at
/// most one log entry per person, bridge, reason and minute: never one per message.
pub(crate) fn refused_batch(
    tx: &Transaction<'_>,
    bridge_id: &str,
    why: RefusedBatch,
    person_id: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let minute_ms = now.timestamp_millis().div_euclid(60_000) * 60_000;
    let first = tx
        .prepare_cached(
            "INSERT INTO refused_batches (bridge_id, minute_ms, reason, person_id, batches)
             VALUES (?1, ?2, ?3, ?4, 1) ON CONFLICT DO NOTHING",
        )?
        .execute(params![bridge_id, minute_ms, why.code(), person_id])?
        == 1;
    if !first {
        tx.prepare_cached(
            "UPDATE refused_batches SET batches = batches + 1
              WHERE bridge_id = ?1 AND minute_ms = ?2 AND reason = ?3 AND person_id = ?4",
        )?
        .execute(params![bridge_id, minute_ms, why.code(), person_id])?;
        return Ok(());
    }
    if person_id.is_empty() {
        return Ok(());
    }
    audit::append(
        tx,
        &audit::Entry {
            at: now,
            actor: bridge_id.to_owned(),
            actor_kind: "bridge".into(),
            person_id: person_id.to_owned(),
            action: audit::Action::RefusedBatch,
            outcome: audit::Outcome::Denied,
            data_types: Vec::new(),
            window_from: None,
            window_to: None,
            purpose: format!(
                "batches naming your device refused this minute: {} (counted per minute)",
                why.code()
            ),
            consent_id: None,
            records: 0,
        },
    )?;
    Ok(())
}

/// Why a batch was refused as a whole, as counted in `refused_batches`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedBatch {
    /// Its topic names a bridge that is not enrolled (counted under the bridge id `*`, so
    /// made-up ids cost no rows).
    NotEnrolled,
    /// It did not open with its bridge's channel key: forged, altered or not sealed.
    NotSealed,
    /// An enrolled bridge sent records of a device registered through another bridge.
    DeviceNotOnBridge,
    /// A report (nearby devices) opened but is not one a bridge following the contract
    /// sends: malformed, out of bounds, or scanned too far in the future.
    InvalidReport,
}

impl RefusedBatch {
    pub fn code(self) -> &'static str {
        match self {
            Self::NotEnrolled => "bridge_not_enrolled",
            Self::NotSealed => "not_sealed_by_bridge",
            Self::DeviceNotOnBridge => "device_not_on_bridge",
            Self::InvalidReport => "invalid_report",
        }
    }
}

/// The key `bridge_id` registered at pairing, if any.
pub(crate) fn bridge_key(conn: &Connection, bridge_id: &str) -> Result<Option<VerifyingKey>> {
    let hex: Option<String> = conn
        .prepare_cached("SELECT public_key FROM bridges WHERE bridge_id = ?1")?
        .query_row([bridge_id], |r| r.get(0))
        .optional()?
        .flatten();
    hex.map(|h| {
        phr_schema::channel::key_from_hex(&h)
            .ok_or(Error::Invalid("a stored bridge key is malformed"))
    })
    .transpose()
}

/// Records `person_id`'s erasure fence at `fence_ms` (the latest erasure wins).
fn fence(tx: &Transaction<'_>, person_id: &str, fence_ms: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO erasure_fences (person_id, fence_ms) VALUES (?1, ?2)
         ON CONFLICT(person_id) DO UPDATE SET fence_ms = max(fence_ms, excluded.fence_ms)",
        params![person_id, fence_ms],
    )?;
    Ok(())
}

/// `person_id`'s erasure fence, if they ever erased their data.
pub(crate) fn fence_of(conn: &Connection, person_id: &str) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT fence_ms FROM erasure_fences WHERE person_id = ?1")?
        .query_row([person_id], |r| r.get(0))
        .optional()?)
}

/// Opens a period of `device_id` held through `bridge_id` from `from_ms` on.
fn open_bridge_period(
    tx: &Transaction<'_>,
    device_id: &str,
    bridge_id: &str,
    from_ms: i64,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO device_bridges (device_id, bridge_id, from_ms, to_ms) VALUES (?1, ?2, ?3, NULL)",
    )?
    .execute(params![device_id, bridge_id, from_ms])?;
    Ok(())
}

/// Registers `device_id` as reached through `bridge_id` from `now` on (a confirmed
/// pairing), inside the caller's transaction. A new device gets one open period through the
/// bridge from the beginning of time; a device moving from another bridge closes that
/// bridge's period at `now` (it may still deliver what was measured before) and opens one
/// here. Pairing again through the same bridge changes no period.
pub(crate) fn register_device_at(
    tx: &Transaction<'_>,
    device_id: &str,
    bridge_id: &str,
    serial: Option<&str>,
    now: DateTime<Utc>,
) -> Result<()> {
    let now_ms = now.timestamp_millis();
    let current: Option<String> = tx
        .query_row(
            "SELECT bridge_id FROM devices WHERE device_id = ?1",
            [device_id],
            |r| r.get(0),
        )
        .optional()?;
    tx.execute(
        "INSERT INTO devices (device_id, bridge_id, serial_number, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(device_id) DO UPDATE SET bridge_id = excluded.bridge_id, serial_number = excluded.serial_number",
        params![device_id, bridge_id, serial, now.to_rfc3339()],
    )?;
    match current {
        None => open_bridge_period(tx, device_id, bridge_id, i64::MIN),
        Some(b) if b == bridge_id => Ok(()),
        Some(_) => {
            tx.execute(
                "UPDATE device_bridges SET to_ms = ?2 WHERE device_id = ?1 AND to_ms IS NULL",
                params![device_id, now_ms],
            )?;
            open_bridge_period(tx, device_id, bridge_id, now_ms)
        }
    }
}

/// The registry's view of one device, read inside the ingest transaction: one query each
/// for the device, its bindings, bridge periods, corrections and the fences of the people
/// concerned, plus the storage consents of those people in force at `now` (the ingest's).
fn device_view(
    tx: &Transaction<'_>,
    device_id: &str,
    without_consent: ingest::WithoutConsent,
    now: DateTime<Utc>,
) -> Result<DeviceView> {
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
    let bridge_periods = tx
        .prepare_cached(
            "SELECT bridge_id, from_ms, to_ms FROM device_bridges WHERE device_id = ?1 ORDER BY from_ms",
        )?
        .query_map([device_id], |r| {
            Ok(BridgePeriod {
                bridge_id: r.get(0)?,
                from_ms: r.get(1)?,
                to_ms: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let corrections = corrections::standing(tx, device_id)?;
    let fences = tx
        .prepare_cached(
            "SELECT person_id, fence_ms FROM erasure_fences WHERE person_id IN (
                 SELECT person_id FROM bindings WHERE device_id = ?1
                 UNION SELECT new_person FROM corrections WHERE device_id = ?1)",
        )?
        .query_map([device_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(String, i64)>>>()?;
    let mut storage_consent: Vec<(String, consent::Terms)> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    // Everyone a record of the device may go to: its holders and the people corrections
    // gave its records to.
    let given = corrections.iter().filter_map(|c| match &c.rule {
        Rule::Reattribute { to, .. } => Some(to.as_str()),
        Rule::Unlink { .. } | Rule::Confirm { .. } => None,
    });
    for person in bindings.iter().map(|b| b.person_id.as_str()).chain(given) {
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
        bridge_periods,
        bindings,
        storage_consent,
        corrections,
        fences,
        without_consent,
    })
}

/// The SQLite backend against the conformance suite, each case on a new file.
#[cfg(test)]
mod sqlite_conformance {
    crate::conformance_tests!(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = crate::Store::open(&dir.path().join("phr.sqlite")).expect("open");
        (dir, Box::new(store) as Box<dyn crate::Backend>)
    });
}
