//! The disclosure log: every read of a person's data by someone other than that person, every
//! refused attempt, every erasure. Append-only (triggers refuse UPDATE and DELETE) and
//! hash-chained: each row's `hash` is SHA-256 over its fields and the previous row's hash, so
//! an edited, inserted or deleted row breaks the chain, which [`Store::verify_audit`] finds.
//!
//! Rows hold who, whose data, which types and measured window, when, why (purpose), under
//! which consent, and how many records: never the data itself.
//!
//! Limit: someone who can write the SQLite file can rebuild the whole chain after an edit, or
//! cut its tail. Anchoring the head hash outside the file (a receipt to the owner, a periodic
//! publication) is what closes that; it is not done yet.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Store;
use crate::Result;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS disclosures (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    actor_kind TEXT NOT NULL,
    person_id TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    data_types TEXT NOT NULL,
    window_from_ms INTEGER,
    window_to_ms INTEGER,
    purpose TEXT NOT NULL,
    consent_id TEXT,
    records INTEGER NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS disclosures_by_person ON disclosures(person_id, seq);
CREATE TRIGGER IF NOT EXISTS disclosures_no_update BEFORE UPDATE ON disclosures
    BEGIN SELECT RAISE(ABORT, 'the disclosure log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS disclosures_no_delete BEFORE DELETE ON disclosures
    BEGIN SELECT RAISE(ABORT, 'the disclosure log is append-only'); END;
";

/// The hash the first row chains to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Read,
    Export,
    Erasure,
    /// A pairing confirmed or refused (the purpose says which device, or why not).
    Pairing,
    /// Records re-attributed or unlinked.
    Correction,
    /// A batch refused because its bridge does not own the device or did not sign it.
    RefusedBatch,
    /// Records imported from another gateway's export.
    Import,
    /// The person changed which of their devices counts first (see [`super::sources`]).
    SourcePriority,
}

/// Whether data left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Disclosed,
    /// Refused: no consent, outside its window, or not this party's to see.
    Denied,
    Done,
}

/// One entry to append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub actor_kind: String,
    pub person_id: String,
    pub action: Action,
    pub outcome: Outcome,
    pub data_types: Vec<String>,
    pub window_from: Option<DateTime<Utc>>,
    pub window_to: Option<DateTime<Utc>>,
    pub purpose: String,
    pub consent_id: Option<Uuid>,
    pub records: u64,
}

impl Entry {
    /// Something the person did to their own data (export, erasure, pairing, ...): actor and
    /// person are the same, no consent involved, no measured window.
    pub fn by_owner(
        person_id: &str,
        action: Action,
        purpose: &str,
        records: u64,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            at,
            actor: person_id.to_owned(),
            actor_kind: "owner".into(),
            person_id: person_id.to_owned(),
            action,
            outcome: Outcome::Done,
            data_types: Vec::new(),
            window_from: None,
            window_to: None,
            purpose: purpose.to_owned(),
            consent_id: None,
            records,
        }
    }
}

/// A logged entry with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logged {
    pub seq: i64,
    #[serde(flatten)]
    pub entry: Entry,
    pub hash: String,
}

fn s(v: &str) -> String {
    // Length-prefixed, so no field content can imitate a separator.
    format!("{}:{v}", v.len())
}

fn digest(seq: i64, at_ms: i64, e: &Entry, prev: &str) -> String {
    let opt = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let text = [
        seq.to_string(),
        at_ms.to_string(),
        s(&e.actor),
        s(&e.actor_kind),
        s(&e.person_id),
        s(action_str(e.action)),
        s(outcome_str(e.outcome)),
        s(&e.data_types.join(",")),
        opt(e.window_from.map(|t| t.timestamp_millis())),
        opt(e.window_to.map(|t| t.timestamp_millis())),
        s(&e.purpose),
        s(&e.consent_id.map(|c| c.to_string()).unwrap_or_default()),
        e.records.to_string(),
        prev.to_owned(),
    ]
    .join("|");
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn action_str(a: Action) -> &'static str {
    match a {
        Action::Read => "read",
        Action::Export => "export",
        Action::Erasure => "erasure",
        Action::Pairing => "pairing",
        Action::Correction => "correction",
        Action::RefusedBatch => "refused_batch",
        Action::Import => "import",
        Action::SourcePriority => "source_priority",
    }
}

fn outcome_str(o: Outcome) -> &'static str {
    match o {
        Outcome::Disclosed => "disclosed",
        Outcome::Denied => "denied",
        Outcome::Done => "done",
    }
}

/// Appends `e` inside the caller's transaction.
pub(super) fn append(conn: &Connection, e: &Entry) -> Result<Logged> {
    let (last_seq, prev): (i64, String) = conn
        .query_row(
            "SELECT seq, hash FROM disclosures ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .or_else(|err| match err {
            rusqlite::Error::QueryReturnedNoRows => Ok((0, GENESIS.to_owned())),
            other => Err(other),
        })?;
    let seq = last_seq + 1;
    let at_ms = e.at.timestamp_millis();
    let hash = digest(seq, at_ms, e, &prev);
    conn.prepare_cached(
        "INSERT INTO disclosures (seq, at_ms, actor, actor_kind, person_id, action, outcome, data_types,
             window_from_ms, window_to_ms, purpose, consent_id, records, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        seq,
        at_ms,
        e.actor,
        e.actor_kind,
        e.person_id,
        action_str(e.action),
        outcome_str(e.outcome),
        e.data_types.join(","),
        e.window_from.map(|t| t.timestamp_millis()),
        e.window_to.map(|t| t.timestamp_millis()),
        e.purpose,
        e.consent_id.map(|c| c.to_string()),
        e.records as i64,
        prev,
        hash,
    ])?;
    Ok(Logged {
        seq,
        entry: e.clone(),
        hash,
    })
}

/// The result of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub rows: u64,
    /// The first row that does not fit, and why.
    pub broken: Option<(i64, &'static str)>,
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, i64, Entry, String, String)> {
    let ms = |v: Option<i64>| v.and_then(DateTime::from_timestamp_millis);
    let action = match r.get::<_, String>(5)?.as_str() {
        "read" => Action::Read,
        "export" => Action::Export,
        "pairing" => Action::Pairing,
        "correction" => Action::Correction,
        "refused_batch" => Action::RefusedBatch,
        "import" => Action::Import,
        "source_priority" => Action::SourcePriority,
        _ => Action::Erasure,
    };
    let outcome = match r.get::<_, String>(6)?.as_str() {
        "disclosed" => Outcome::Disclosed,
        "denied" => Outcome::Denied,
        _ => Outcome::Done,
    };
    let types: String = r.get(7)?;
    let at_ms: i64 = r.get(1)?;
    let consent: Option<String> = r.get(11)?;
    Ok((
        r.get(0)?,
        at_ms,
        Entry {
            at: ms(Some(at_ms)).unwrap_or_default(),
            actor: r.get(2)?,
            actor_kind: r.get(3)?,
            person_id: r.get(4)?,
            action,
            outcome,
            data_types: if types.is_empty() {
                Vec::new()
            } else {
                types.split(',').map(str::to_owned).collect()
            },
            window_from: ms(r.get(8)?),
            window_to: ms(r.get(9)?),
            purpose: r.get(10)?,
            consent_id: consent.and_then(|c| Uuid::parse_str(&c).ok()),
            records: r.get::<_, i64>(12)? as u64,
        },
        r.get(13)?,
        r.get(14)?,
    ))
}

const SELECT: &str = "SELECT seq, at_ms, actor, actor_kind, person_id, action, outcome, data_types,
    window_from_ms, window_to_ms, purpose, consent_id, records, prev_hash, hash FROM disclosures";

impl Store {
    /// Appends one entry to the disclosure log.
    pub fn log_disclosure(&self, e: &Entry) -> Result<Logged> {
        self.write(|tx| append(tx, e))
    }

    /// `person_id`'s entries after `after_seq`, oldest first, at most `limit`.
    pub fn disclosures(
        &self,
        person_id: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<Logged>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "{SELECT} WHERE person_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![person_id, after_seq, limit as i64], read_row)?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, _, entry, _, hash) = row?;
                out.push(Logged { seq, entry, hash });
            }
            Ok(out)
        })
    }

    /// Walks the whole chain: sequence without gaps, each `prev_hash` the previous `hash`,
    /// each `hash` recomputed from the row.
    pub fn verify_audit(&self) -> Result<Verification> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!("{SELECT} ORDER BY seq"))?;
            let mut rows = stmt.query([])?;
            let (mut expected_seq, mut prev, mut n) = (1i64, GENESIS.to_owned(), 0u64);
            while let Some(row) = rows.next()? {
                let (seq, at_ms, entry, prev_hash, hash) = read_row(row)?;
                n += 1;
                let broken = if seq != expected_seq {
                    Some("a row is missing before this one")
                } else if prev_hash != prev {
                    Some("does not chain to the row before it")
                } else if digest(seq, at_ms, &entry, &prev_hash) != hash {
                    Some("its content does not match its hash")
                } else {
                    None
                };
                if let Some(why) = broken {
                    return Ok(Verification {
                        rows: n,
                        broken: Some((seq, why)),
                    });
                }
                expected_seq = seq + 1;
                prev = hash;
            }
            Ok(Verification {
                rows: n,
                broken: None,
            })
        })
    }
}
