//! Corrections and quarantine: changing whom records belong to, only ever as events.
//!
//! - **Re-attribution** (an operator): records of a device in a measured-time range move from
//!   one person to another, who must consent to their storage.
//! - **Unlinking** (the person, or an operator): records of a device in a range stop being
//!   the person's; they go to quarantine, attributed to nobody. Nothing is deleted.
//! - **Confirming quarantine** (the device's current owner): quarantined records of their
//!   device in a range become theirs, under their storage consent.
//!
//! Each is one transaction that moves the rows, appends a row to `corrections` (append-only:
//! who, why, old and new person, device, range, how many) and writes the disclosure log of
//! everyone affected. A correction also answers who must be told: every party the disclosure
//! log shows received those people's data of that range before.

use chrono::{DateTime, Utc};
use rusqlite::{params, Transaction};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use phr_schema::RecordType;

use super::{audit, consent, Store, STORAGE_GRANTEE, STORAGE_PURPOSE};
use crate::store::GranteeKind;
use crate::{Error, Result};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS corrections (
    seq INTEGER PRIMARY KEY,
    correction_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('reattribute', 'unlink', 'confirm_quarantine')),
    device_id TEXT NOT NULL,
    from_ms INTEGER NOT NULL,
    to_ms INTEGER NOT NULL,
    old_person TEXT,
    new_person TEXT,
    records INTEGER NOT NULL,
    why TEXT NOT NULL,
    by TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS corrections_no_update BEFORE UPDATE ON corrections
    BEGIN SELECT RAISE(ABORT, 'corrections are append-only'); END;
CREATE TRIGGER IF NOT EXISTS corrections_no_delete BEFORE DELETE ON corrections
    BEGIN SELECT RAISE(ABORT, 'corrections are append-only'); END;
";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Reattribute,
    Unlink,
    ConfirmQuarantine,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Reattribute => "reattribute",
            Self::Unlink => "unlink",
            Self::ConfirmQuarantine => "confirm_quarantine",
        }
    }
}

/// What to correct: `device_id`'s records measured (start) in `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub device_id: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// A party that received data a correction changed, and must be told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub actor: String,
    pub actor_kind: String,
    /// Whose data they received.
    pub person_id: String,
    /// How many logged disclosures overlap the corrected range.
    pub disclosures: u64,
}

/// The outcome of a correction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Correction {
    pub correction_id: Uuid,
    pub kind: Kind,
    pub device_id: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub old_person: Option<String>,
    pub new_person: Option<String>,
    pub records: u64,
    pub why: String,
    pub by: String,
    pub at: DateTime<Utc>,
    /// Who must be told (from the disclosure log).
    pub notify: Vec<Recipient>,
}

/// Quarantined records of one device, summarised (no values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineSummary {
    pub device_id: String,
    pub records: u64,
    pub first_start: DateTime<Utc>,
    pub last_end: DateTime<Utc>,
    pub reasons: Vec<String>,
}

fn ms(t: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t).unwrap_or_default()
}

/// Parties that received `person`'s data overlapping `[from_ms, to_ms)`.
fn recipients(
    tx: &Transaction<'_>,
    person: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<Recipient>> {
    let mut stmt = tx.prepare_cached(
        "SELECT actor, actor_kind, count(*) FROM disclosures
          WHERE person_id = ?1 AND outcome = 'disclosed' AND action IN ('read', 'export')
            AND coalesce(window_from_ms, -9223372036854775808) < ?3
            AND coalesce(window_to_ms, 9223372036854775807) > ?2
          GROUP BY actor, actor_kind ORDER BY actor",
    )?;
    let rows = stmt.query_map(params![person, from_ms, to_ms], |r| {
        Ok(Recipient {
            actor: r.get(0)?,
            actor_kind: r.get(1)?,
            person_id: person.to_owned(),
            disclosures: r.get::<_, i64>(2)? as u64,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Whether `person` has storage consent in force for every record type in the range.
fn consents_to_storage(
    tx: &Transaction<'_>,
    person: &str,
    types: &[RecordType],
    from_ms: i64,
    to_ms: i64,
    now: DateTime<Utc>,
) -> Result<bool> {
    let grants = consent::in_force(tx, person, STORAGE_GRANTEE, GranteeKind::Gateway, now)?;
    Ok(types.iter().all(|t| {
        grants.iter().any(|c| {
            c.terms.purpose == STORAGE_PURPOSE
                && c.terms
                    .covers(*t, from_ms, to_ms.saturating_sub(1).max(from_ms))
        })
    }))
}

fn types_in(
    tx: &Transaction<'_>,
    table: &str,
    device: &str,
    person: Option<&str>,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<RecordType>> {
    let sql = format!(
        "SELECT DISTINCT record_type FROM {table} WHERE device_id = ?1 AND start_ms >= ?2 AND start_ms < ?3{}",
        if person.is_some() { " AND person_id = ?4" } else { "" }
    );
    let mut stmt = tx.prepare(&sql)?;
    let parse = |r: &rusqlite::Row<'_>| r.get::<_, String>(0);
    let names: Vec<String> = match person {
        Some(p) => stmt
            .query_map(params![device, from_ms, to_ms, p], parse)?
            .collect::<rusqlite::Result<_>>()?,
        None => stmt
            .query_map(params![device, from_ms, to_ms], parse)?
            .collect::<rusqlite::Result<_>>()?,
    };
    Ok(names.iter().filter_map(|n| n.parse().ok()).collect())
}

#[allow(clippy::too_many_arguments)]
fn record(
    tx: &Transaction<'_>,
    kind: Kind,
    range: &Range,
    old_person: Option<&str>,
    new_person: Option<&str>,
    records: usize,
    why: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Correction> {
    let (from_ms, to_ms) = (range.from.timestamp_millis(), range.to.timestamp_millis());
    let id = Uuid::new_v4();
    tx.execute(
        "INSERT INTO corrections (correction_id, kind, device_id, from_ms, to_ms, old_person, new_person, records, why, by, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![id.to_string(), kind.as_str(), range.device_id, from_ms, to_ms, old_person, new_person, records as i64, why, by, now.timestamp_millis()],
    )?;
    let mut notify = Vec::new();
    for person in [old_person, new_person].into_iter().flatten() {
        notify.extend(recipients(tx, person, from_ms, to_ms)?);
        audit::append(
            tx,
            &audit::Entry {
                at: now,
                actor: by.to_owned(),
                actor_kind: if by == person {
                    "owner".into()
                } else {
                    "operator".into()
                },
                person_id: person.to_owned(),
                action: audit::Action::Correction,
                outcome: audit::Outcome::Done,
                data_types: Vec::new(),
                window_from: Some(range.from),
                window_to: Some(range.to),
                purpose: format!("{} of device {}: {why}", kind.as_str(), range.device_id),
                consent_id: None,
                records: records as u64,
            },
        )?;
    }
    Ok(Correction {
        correction_id: id,
        kind,
        device_id: range.device_id.clone(),
        from: range.from,
        to: range.to,
        old_person: old_person.map(str::to_owned),
        new_person: new_person.map(str::to_owned),
        records: records as u64,
        why: why.to_owned(),
        by: by.to_owned(),
        at: now,
        notify,
    })
}

impl Store {
    /// Moves `from_person`'s records of the range to `to_person`, who must have storage
    /// consent covering them.
    pub fn reattribute(
        &self,
        range: &Range,
        from_person: &str,
        to_person: &str,
        why: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Correction> {
        let (f, t) = (range.from.timestamp_millis(), range.to.timestamp_millis());
        if t <= f || from_person == to_person {
            return Err(Error::Invalid(
                "a correction needs a non-empty range and two different people",
            ));
        }
        self.write(|tx| {
            let types = types_in(tx, "records", &range.device_id, Some(from_person), f, t)?;
            if !consents_to_storage(tx, to_person, &types, f, t, now)? {
                return Err(Error::Conflict("the new person has no storage consent covering these records"));
            }
            let n = tx.execute(
                "UPDATE records SET person_id = ?5 WHERE device_id = ?1 AND start_ms >= ?2 AND start_ms < ?3 AND person_id = ?4",
                params![range.device_id, f, t, from_person, to_person],
            )?;
            record(tx, Kind::Reattribute, range, Some(from_person), Some(to_person), n, why, by, now)
        })
    }

    /// Takes `person`'s records of the range away from them, into quarantine.
    pub fn unlink(
        &self,
        range: &Range,
        person: &str,
        why: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Correction> {
        let (f, t) = (range.from.timestamp_millis(), range.to.timestamp_millis());
        if t <= f {
            return Err(Error::Invalid("a correction needs a non-empty range"));
        }
        self.write(|tx| {
            let moved = tx.execute(
                "INSERT INTO quarantine (device_id, record_type, start_ms, end_ms, record_id, bridge_id, batch_id, reason, received_at_ms, body)
                 SELECT device_id, record_type, start_ms, end_ms, record_id, bridge_id, batch_id, 'unlinked', ?5, body
                   FROM records WHERE device_id = ?1 AND start_ms >= ?2 AND start_ms < ?3 AND person_id = ?4
                 ON CONFLICT DO NOTHING",
                params![range.device_id, f, t, person, now.timestamp_millis()],
            )?;
            let n = tx.execute(
                "DELETE FROM records WHERE device_id = ?1 AND start_ms >= ?2 AND start_ms < ?3 AND person_id = ?4",
                params![range.device_id, f, t, person],
            )?;
            self.rows.quarantine(super::added(moved));
            self.rows.records(-super::added(n));
            record(tx, Kind::Unlink, range, Some(person), None, n, why, by, now)
        })
    }

    /// The current owner of a device: the person whose binding is open now.
    fn current_owner(
        tx: &Transaction<'_>,
        device_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>> {
        let now_ms = now.timestamp_millis();
        let mut stmt = tx.prepare_cached(
            "SELECT person_id FROM bindings WHERE device_id = ?1 AND valid_from <= ?2 AND (valid_to IS NULL OR valid_to > ?2)",
        )?;
        let owner = stmt
            .query_map(params![device_id, now_ms], |r| r.get::<_, String>(0))?
            .next()
            .transpose()?;
        Ok(owner)
    }

    /// Quarantined records of the devices `person` owns now, summarised per device.
    pub fn quarantine_of(
        &self,
        person: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<QuarantineSummary>> {
        let now_ms = now.timestamp_millis();
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT q.device_id, count(*), min(q.start_ms), max(q.end_ms), group_concat(DISTINCT q.reason)
                   FROM quarantine q
                  WHERE q.device_id IN (SELECT device_id FROM bindings
                                         WHERE person_id = ?1 AND valid_from <= ?2 AND (valid_to IS NULL OR valid_to > ?2))
                  GROUP BY q.device_id ORDER BY q.device_id",
            )?;
            let rows = stmt.query_map(params![person, now_ms], |r| {
                let reasons: String = r.get(4)?;
                Ok(QuarantineSummary {
                    device_id: r.get(0)?,
                    records: r.get::<_, i64>(1)? as u64,
                    first_start: ms(r.get(2)?),
                    last_end: ms(r.get(3)?),
                    reasons: reasons.split(',').map(str::to_owned).collect(),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// The device's current owner takes its quarantined records of the range as theirs.
    /// Only the current owner may, and only under their storage consent.
    pub fn confirm_quarantine(
        &self,
        range: &Range,
        person: &str,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Correction>> {
        let (f, t) = (range.from.timestamp_millis(), range.to.timestamp_millis());
        if t <= f {
            return Err(Error::Invalid("a correction needs a non-empty range"));
        }
        self.write(|tx| {
            if Self::current_owner(tx, &range.device_id, now)?.as_deref() != Some(person) {
                return Ok(None);
            }
            let types = types_in(tx, "quarantine", &range.device_id, None, f, t)?;
            if !consents_to_storage(tx, person, &types, f, t, now)? {
                return Err(Error::Conflict("no storage consent covers these records"));
            }
            let moved = tx.execute(
                "INSERT INTO records (device_id, record_type, start_ms, end_ms, record_id, person_id, bridge_id, batch_id, stored_at_ms, body)
                 SELECT device_id, record_type, start_ms, end_ms, record_id, ?4, bridge_id, batch_id, ?5, body
                   FROM quarantine WHERE device_id = ?1 AND start_ms >= ?2 AND start_ms < ?3
                 ON CONFLICT DO NOTHING",
                params![range.device_id, f, t, person, now.timestamp_millis()],
            )?;
            let n = tx.execute(
                "DELETE FROM quarantine WHERE device_id = ?1 AND start_ms >= ?2 AND start_ms < ?3",
                params![range.device_id, f, t],
            )?;
            self.rows.records(super::added(moved));
            self.rows.quarantine(-super::added(n));
            record(tx, Kind::ConfirmQuarantine, range, None, Some(person), n, why, person, now).map(Some)
        })
    }

    /// Corrections that concern `person` (as old or new owner), oldest first.
    pub fn corrections_of(&self, person: &str) -> Result<Vec<serde_json::Value>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT correction_id, kind, device_id, from_ms, to_ms, old_person, new_person, records, why, by, at_ms
                   FROM corrections WHERE old_person = ?1 OR new_person = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map([person], |r| {
                Ok(serde_json::json!({
                    "correction_id": r.get::<_, String>(0)?, "kind": r.get::<_, String>(1)?,
                    "device_id": r.get::<_, String>(2)?, "from": ms(r.get(3)?), "to": ms(r.get(4)?),
                    "old_person": r.get::<_, Option<String>>(5)?, "new_person": r.get::<_, Option<String>>(6)?,
                    "records": r.get::<_, i64>(7)?, "why": r.get::<_, String>(8)?, "by": r.get::<_, String>(9)?,
                    "at": ms(r.get(10)?),
                }))
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }
}
