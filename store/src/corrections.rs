//! Corrections and quarantine: changing whom records belong to, only ever as events.
//!
//! - **Re-attribution** (an operator): records of a device in a measured-time range move from
//!   one person to another, who must consent to their storage.
//! - **Unlinking** (the person, or an operator): records of a device in a range stop being
//!   the person's; they go to quarantine, attributed to nobody. Nothing is deleted.
//! - **Confirming quarantine** (a person who held the device): quarantined records of the
//!   device in a range become theirs, under their storage consent.
//!
//! What a person does themselves is confined to their own claim periods of the device
//! ([`claim_periods`]: their bindings, past or present): they confirm only quarantined records
//! whose whole measured interval lies in one, and unlink only their records that do. A band's
//! new owner cannot claim what was measured while the previous owner held it, nor the reverse,
//! nor what was measured while nobody held it. Records quarantined because a binding changed
//! inside their interval straddle two periods and stay quarantined. Erasure removes only the
//! quarantined records of the person's own periods. An operator's re-attribution moves the
//! named person's records only (never a third person's), whatever the bindings said: it exists
//! to fix them.
//!
//! Each is one transaction that moves the rows, appends a row to `corrections` (append-only:
//! who, why, old and new person, device, range, how many) and writes the disclosure log of
//! everyone affected. A correction also answers who must be told: every party the disclosure
//! log shows received those people's data of that range before.
//!
//! A correction stands for records that arrive after it: ingest reads the device's
//! corrections ([`standing`]) and applies them, in order, to what the bindings decided (see
//! [`crate::ingest`]). No correction gives a person records measured before their erasure
//! fence (refused, nothing moves).
//!
//! **Held records** live here too: records of a person without storage consent wait in
//! quarantine with `held_for` set ([`release_held`] stores them at a covering storage
//! consent's grant; [`Store::expire_held`] deletes them after the hold). Only that person sees
//! or confirms them; erasure deletes them with the rest.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, Transaction};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use phr_schema::RecordType;

use super::{audit, consent, Store, STORAGE_GRANTEE, STORAGE_PURPOSE};
use crate::ingest::{Binding, Rule, Standing, HELD_WITHOUT_CONSENT};
use crate::GranteeKind;
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
CREATE INDEX IF NOT EXISTS corrections_by_device ON corrections(device_id, seq);
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
    /// Records of the range the correction left as they were, and why (counts only).
    pub left: Vec<Left>,
}

/// Records of a range a person's correction did not touch because they lie outside the
/// person's claim periods: a count and a reason, never data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Left {
    /// `outside_your_bindings`: measured while someone else, or nobody, held the device;
    /// `spans_binding_change`: measured partly inside one of the person's periods.
    pub reason: String,
    pub records: u64,
}

/// Why a person's correction of a range was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the device was never bound to you")]
    NotYourDevice,
    #[error("the range lies outside your binding periods of this device")]
    OutsideYourBindings,
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
        left: Vec::new(),
    })
}

/// A span of measured time in which a person's claims on a device's records hold (the
/// rule ingest attributes by: [`Period::contains`]).
pub(crate) use crate::ingest::Period;

impl Period {
    /// SQL condition (on `start_ms`, `end_ms`) that a row's whole measured interval lies in
    /// the period, the rule ingest attributes by: a point measurement (start == end) must lie
    /// inside `[from, to)`, an interval may end at `to`. The bounds are integers from the
    /// store, inlined as literals.
    fn contains_sql(&self) -> String {
        format!(
            "(start_ms >= {f} AND (end_ms < {t} OR (end_ms = {t} AND end_ms > start_ms)))",
            f = self.from_ms,
            t = self.to_ms
        )
    }

    /// SQL condition that a row's measured interval overlaps the period at all.
    fn touches_sql(&self) -> String {
        format!(
            "(start_ms < {t} AND max(end_ms, start_ms + 1) > {f})",
            f = self.from_ms,
            t = self.to_ms
        )
    }

    fn overlaps(&self, from_ms: i64, to_ms: i64) -> bool {
        self.from_ms < to_ms && from_ms < self.to_ms
    }
}

/// One SQL condition: any of `periods`, by `each` (`FALSE` for none).
fn any_of(periods: &[Period], each: impl Fn(&Period) -> String) -> String {
    if periods.is_empty() {
        return "0".to_owned();
    }
    let parts: Vec<String> = periods.iter().map(each).collect();
    format!("({})", parts.join(" OR "))
}

/// The periods in which `person` may claim, unlink or erase `device`'s records
/// ([`crate::ingest::claim_periods`]: their bindings of the device, the first holder's
/// reaching back to the beginning of time).
pub(crate) fn claim_periods(conn: &Connection, device: &str, person: &str) -> Result<Vec<Period>> {
    let mut stmt = conn.prepare_cached(
        "SELECT person_id, valid_from, valid_to FROM bindings WHERE device_id = ?1 ORDER BY valid_from",
    )?;
    let bindings = stmt
        .query_map([device], |r| {
            Ok(Binding {
                person_id: r.get(0)?,
                from_ms: r.get(1)?,
                to_ms: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(crate::ingest::claim_periods(&bindings, person))
}

/// `device`'s corrections as rules for records that arrive after them, in the order they
/// were made. An unlinking is confined to the person's claim periods when they did it
/// themselves (`by` is the person), as [`Store::unlink_own`] was.
pub(super) fn standing(conn: &Connection, device: &str) -> Result<Vec<Standing>> {
    let mut stmt = conn.prepare_cached(
        "SELECT kind, from_ms, to_ms, old_person, new_person, by FROM corrections
          WHERE device_id = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([device], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, String>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (kind, from_ms, to_ms, old, new, by) = row?;
        let rule = match (kind.as_str(), old, new) {
            ("reattribute", Some(from), Some(to)) => Rule::Reattribute { from, to },
            ("unlink", Some(person), _) => Rule::Unlink {
                confined: by == person,
                person,
            },
            ("confirm_quarantine", _, Some(person)) => Rule::Confirm { person },
            // The table's CHECK and the writers above make any other row impossible; one
            // would be a correction nobody can apply, so it is not guessed at.
            _ => continue,
        };
        out.push(Standing {
            from_ms,
            to_ms,
            rule,
        });
    }
    Ok(out)
}

/// Devices `person` was ever bound to.
fn devices_of(conn: &Connection, person: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT device_id FROM bindings WHERE person_id = ?1 ORDER BY device_id",
    )?;
    let rows = stmt.query_map([person], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Deletes the quarantined rows held for `person`'s consent, and those measured in their
/// claim periods of every device they were ever bound to (but not rows held for someone
/// else) (erasure); returns how many.
pub(super) fn erase_claimable_quarantine(tx: &Transaction<'_>, person: &str) -> Result<usize> {
    let mut n = tx.execute("DELETE FROM quarantine WHERE held_for = ?1", [person])?;
    for device in devices_of(tx, person)? {
        let periods = claim_periods(tx, &device, person)?;
        n += tx.execute(
            &format!(
                "DELETE FROM quarantine WHERE device_id = ?1 AND held_for IS NULL AND {}",
                any_of(&periods, Period::contains_sql)
            ),
            [&device],
        )?;
    }
    Ok(n)
}

/// Stores the quarantined row of this key as `person`'s and takes it out of quarantine;
/// returns how many rows were stored and how many left quarantine (the same, as a key lives
/// in one table only).
fn store_quarantined(
    tx: &Transaction<'_>,
    device: &str,
    kind: &str,
    start: i64,
    end: i64,
    person: &str,
    now: DateTime<Utc>,
) -> Result<(usize, usize)> {
    let stored = tx
        .prepare_cached(
            "INSERT INTO records (device_id, record_type, start_ms, end_ms, record_id, person_id,
                                  bridge_id, batch_id, stored_at_ms, body)
             SELECT device_id, record_type, start_ms, end_ms, record_id, ?5, bridge_id,
                    batch_id, ?6, body
               FROM quarantine
              WHERE device_id = ?1 AND record_type = ?2 AND start_ms = ?3 AND end_ms = ?4
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            device,
            kind,
            start,
            end,
            person,
            now.timestamp_millis()
        ])?;
    let left = tx
        .prepare_cached(
            "DELETE FROM quarantine WHERE device_id = ?1 AND record_type = ?2 AND start_ms = ?3 AND end_ms = ?4",
        )?
        .execute(params![device, kind, start, end])?;
    Ok((stored, left))
}

/// At a grant of a storage consent: stores the records held for its person that it covers
/// (their type and measured time), as theirs, and takes them out of quarantine, inside the
/// grant's transaction; one entry in the person's disclosure log counts them. Returns how
/// many rows were stored and how many left quarantine (the same, as a key lives in one
/// table only).
pub(super) fn release_held(
    tx: &Transaction<'_>,
    granted: &consent::Consent,
    now: DateTime<Utc>,
) -> Result<(usize, usize)> {
    let person = granted.person_id.as_str();
    let held: Vec<(String, String, i64, i64)> = tx
        .prepare_cached(
            "SELECT device_id, record_type, start_ms, end_ms FROM quarantine
              WHERE held_for = ?1 AND reason = ?2",
        )?
        .query_map(params![person, HELD_WITHOUT_CONSENT], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let (mut moved, mut left) = (0, 0);
    let mut types: Vec<&str> = Vec::new();
    for (device, kind, start, end) in &held {
        let Ok(t) = kind.parse::<RecordType>() else {
            continue;
        };
        if !granted.terms.covers(t, *start, *end) {
            continue;
        }
        let (stored, out) = store_quarantined(tx, device, kind, *start, *end, person, now)?;
        moved += stored;
        left += out;
        if !types.contains(&t.as_str()) {
            types.push(t.as_str());
        }
    }
    if moved > 0 {
        let mut e = audit::Entry::by_owner(
            person,
            audit::Action::Correction,
            "records held without your storage consent stored under this consent",
            moved as u64,
            now,
        );
        e.consent_id = Some(granted.consent_id);
        e.data_types = types.iter().map(|t| (*t).to_owned()).collect();
        audit::append(tx, &e)?;
    }
    Ok((moved, left))
}

/// Refuses to give `person` records measured before their erasure fence: `rows` (an SQL
/// table and condition, `?1..?n` bound by `params`) are the rows about to become theirs.
fn refuse_past_fence(
    tx: &Transaction<'_>,
    person: &str,
    rows: &str,
    params: impl rusqlite::Params,
) -> Result<()> {
    let Some(fence) = super::fence_of(tx, person)? else {
        return Ok(());
    };
    let before: i64 = tx.query_row(
        &format!("SELECT count(*) FROM {rows} AND start_ms < {fence}"),
        params,
        |r| r.get(0),
    )?;
    if before > 0 {
        return Err(Error::Conflict(
            "the person erased their data measured before some of these records; they are \
             not given to them again (only their own re-import of an export is)",
        ));
    }
    Ok(())
}

/// `person`'s claim periods of the range's device, or why they have none in the range.
fn confine(
    tx: &Transaction<'_>,
    range: &Range,
    person: &str,
) -> Result<std::result::Result<Vec<Period>, Refusal>> {
    let (f, t) = (range.from.timestamp_millis(), range.to.timestamp_millis());
    let periods = claim_periods(tx, &range.device_id, person)?;
    Ok(if periods.is_empty() {
        Err(Refusal::NotYourDevice)
    } else if !periods.iter().any(|p| p.overlaps(f, t)) {
        Err(Refusal::OutsideYourBindings)
    } else {
        Ok(periods)
    })
}

/// What is left in `table` of the range (of `person_filter`, if given) once the
/// contained rows have moved: those touching a period straddle its edge, the rest lie outside.
fn left_over(
    tx: &Transaction<'_>,
    table: &str,
    range: &Range,
    person_filter: Option<&str>,
    periods: &[Period],
) -> Result<Vec<Left>> {
    let (f, t) = (range.from.timestamp_millis(), range.to.timestamp_millis());
    let who = if person_filter.is_some() {
        " AND person_id = ?4"
    } else {
        ""
    };
    let sql = format!(
        "SELECT count(*), coalesce(sum({touches}), 0) FROM {table}
          WHERE device_id = ?1 AND start_ms >= ?2 AND start_ms < ?3{who}",
        touches = any_of(periods, Period::touches_sql)
    );
    let (all, spans): (i64, i64) = match person_filter {
        Some(p) => tx.query_row(&sql, params![range.device_id, f, t, p], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?,
        None => tx.query_row(&sql, params![range.device_id, f, t], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?,
    };
    Ok([
        ("outside_your_bindings", all - spans),
        ("spans_binding_change", spans),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(reason, n)| Left {
        reason: reason.to_owned(),
        records: n as u64,
    })
    .collect())
}

/// Moves `person`'s records of the range that also match `inside` (an SQL condition) into
/// quarantine as `unlinked`; returns how many.
fn unlink_rows(
    tx: &Transaction<'_>,
    range: &Range,
    person: &str,
    inside: &str,
    now: DateTime<Utc>,
) -> Result<(usize, usize)> {
    let (f, t) = (range.from.timestamp_millis(), range.to.timestamp_millis());
    let rows = format!(
        "records WHERE device_id = ?1 AND start_ms >= ?2 AND start_ms < ?3 AND person_id = ?4 AND {inside}"
    );
    let moved = tx.execute(
        &format!(
            "INSERT INTO quarantine (device_id, record_type, start_ms, end_ms, record_id, bridge_id, batch_id, reason, received_at_ms, body)
             SELECT device_id, record_type, start_ms, end_ms, record_id, bridge_id, batch_id, 'unlinked', ?5, body
               FROM {rows}
             ON CONFLICT DO NOTHING"
        ),
        params![range.device_id, f, t, person, now.timestamp_millis()],
    )?;
    let deleted = tx.execute(
        &format!("DELETE FROM {rows}"),
        params![range.device_id, f, t, person],
    )?;
    Ok((moved, deleted))
}

/// The records held for `person`'s storage consent in the range (and matching `inside`):
/// a correction treats them as theirs, as it would if they arrived now. Unlinking makes them
/// nobody's (`unlinked`); returns how many.
fn unlink_held(tx: &Transaction<'_>, range: &Range, person: &str, inside: &str) -> Result<usize> {
    let (f, t) = (range.from.timestamp_millis(), range.to.timestamp_millis());
    Ok(tx.execute(
        &format!(
            "UPDATE quarantine SET held_for = NULL, reason = 'unlinked'
              WHERE device_id = ?1 AND start_ms >= ?2 AND start_ms < ?3 AND held_for = ?4 AND {inside}"
        ),
        params![range.device_id, f, t, person],
    )?)
}

/// Re-attributing: the records held for `from`'s consent in the range become `to`'s: stored
/// under `to` where a storage consent of theirs covers them, held for `to` otherwise. Returns
/// (stored, left quarantine, held for `to`).
fn reattribute_held(
    tx: &Transaction<'_>,
    range: &Range,
    from: &str,
    to: &str,
    now: DateTime<Utc>,
) -> Result<(usize, usize, usize)> {
    let (f, t) = (range.from.timestamp_millis(), range.to.timestamp_millis());
    let held: Vec<(String, i64, i64)> = tx
        .prepare_cached(
            "SELECT record_type, start_ms, end_ms FROM quarantine
              WHERE device_id = ?1 AND start_ms >= ?2 AND start_ms < ?3 AND held_for = ?4",
        )?
        .query_map(params![range.device_id, f, t, from], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    if held.is_empty() {
        return Ok((0, 0, 0));
    }
    let consents: Vec<consent::Consent> =
        consent::in_force(tx, to, STORAGE_GRANTEE, GranteeKind::Gateway, now)?
            .into_iter()
            .filter(|c| c.terms.purpose == STORAGE_PURPOSE)
            .collect();
    let (mut stored, mut left, mut rehold) = (0, 0, 0);
    for (kind, start, end) in held {
        let covered = kind
            .parse::<RecordType>()
            .is_ok_and(|rt| consents.iter().any(|c| c.terms.covers(rt, start, end)));
        if covered {
            let (s, out) = store_quarantined(tx, &range.device_id, &kind, start, end, to, now)?;
            stored += s;
            left += out;
        } else {
            rehold += tx.execute(
                "UPDATE quarantine SET held_for = ?5
                  WHERE device_id = ?1 AND record_type = ?2 AND start_ms = ?3 AND end_ms = ?4",
                params![range.device_id, kind, start, end, to],
            )?;
        }
    }
    Ok((stored, left, rehold))
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
            refuse_past_fence(
                tx,
                to_person,
                "records WHERE device_id = ?1 AND start_ms >= ?2 AND start_ms < ?3 AND person_id = ?4",
                params![range.device_id, f, t, from_person],
            )?;
            refuse_past_fence(
                tx,
                to_person,
                "quarantine WHERE device_id = ?1 AND start_ms >= ?2 AND start_ms < ?3 AND held_for = ?4",
                params![range.device_id, f, t, from_person],
            )?;
            let n = tx.execute(
                "UPDATE records SET person_id = ?5 WHERE device_id = ?1 AND start_ms >= ?2 AND start_ms < ?3 AND person_id = ?4",
                params![range.device_id, f, t, from_person, to_person],
            )?;
            // What is held for the old person's consent is theirs too, as the rule would make
            // it if it arrived now.
            let (stored, left, held) = reattribute_held(tx, range, from_person, to_person, now)?;
            self.rows.records(super::added(stored));
            self.rows.quarantine(-super::added(left));
            record(tx, Kind::Reattribute, range, Some(from_person), Some(to_person), n + stored + held, why, by, now)
        })
    }

    /// An operator takes `person`'s records of the range away from them, into quarantine,
    /// whatever the bindings say (a person unlinks their own with [`Store::unlink_own`]).
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
            let (moved, n) = unlink_rows(tx, range, person, "1", now)?;
            self.rows.quarantine(super::added(moved));
            self.rows.records(-super::added(n));
            let held = unlink_held(tx, range, person, "1")?;
            record(
                tx,
                Kind::Unlink,
                range,
                Some(person),
                None,
                n + held,
                why,
                by,
                now,
            )
        })
    }

    /// `person` takes their own records of the range away from themselves, into quarantine:
    /// only those measured in their claim periods of the device. Refused for a device never
    /// bound to them and for a range wholly outside their periods.
    pub fn unlink_own(
        &self,
        range: &Range,
        person: &str,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<Correction, Refusal>> {
        let (f, t) = (range.from.timestamp_millis(), range.to.timestamp_millis());
        if t <= f {
            return Err(Error::Invalid("a correction needs a non-empty range"));
        }
        self.write(|tx| {
            let periods = match confine(tx, range, person)? {
                Ok(p) => p,
                Err(refusal) => return Ok(Err(refusal)),
            };
            let inside = any_of(&periods, Period::contains_sql);
            let (moved, n) = unlink_rows(tx, range, person, &inside, now)?;
            self.rows.quarantine(super::added(moved));
            self.rows.records(-super::added(n));
            let held = unlink_held(tx, range, person, &inside)?;
            let left = left_over(tx, "records", range, Some(person), &periods)?;
            let mut c = record(
                tx,
                Kind::Unlink,
                range,
                Some(person),
                None,
                n + held,
                why,
                person,
                now,
            )?;
            c.left = left;
            Ok(Ok(c))
        })
    }

    /// Quarantined records `person` may claim (measured in their claim periods of the
    /// devices they were ever bound to, or held for their storage consent), summarised per
    /// device.
    pub fn quarantine_of(&self, person: &str) -> Result<Vec<QuarantineSummary>> {
        self.read(|conn| {
            let mut out = Vec::new();
            let mut devices = devices_of(conn, person)?;
            let held: Vec<String> = conn
                .prepare_cached("SELECT DISTINCT device_id FROM quarantine WHERE held_for = ?1")?
                .query_map([person], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            devices.extend(held);
            devices.sort();
            devices.dedup();
            for device in devices {
                let periods = claim_periods(conn, &device, person)?;
                let sql = format!(
                    "SELECT count(*), min(start_ms), max(end_ms), group_concat(DISTINCT reason)
                       FROM quarantine WHERE device_id = ?1
                        AND (held_for = ?2 OR (held_for IS NULL AND {}))",
                    any_of(&periods, Period::contains_sql)
                );
                let (n, first, last, reasons): (i64, Option<i64>, Option<i64>, Option<String>) =
                    conn.query_row(&sql, params![device, person], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })?;
                if let (true, Some(first), Some(last)) = (n > 0, first, last) {
                    out.push(QuarantineSummary {
                        device_id: device,
                        records: n as u64,
                        first_start: ms(first),
                        last_end: ms(last),
                        reasons: reasons
                            .unwrap_or_default()
                            .split(',')
                            .map(str::to_owned)
                            .collect(),
                    });
                }
            }
            Ok(out)
        })
    }

    /// `person` takes quarantined records of the range as theirs: only those whose whole
    /// measured interval lies in one of their claim periods of the device, and only under
    /// their storage consent. The rest stay quarantined and are counted in `left`. Refused
    /// for a device never bound to them and for a range wholly outside their periods.
    pub fn confirm_quarantine(
        &self,
        range: &Range,
        person: &str,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<Correction, Refusal>> {
        let (f, t) = (range.from.timestamp_millis(), range.to.timestamp_millis());
        if t <= f {
            return Err(Error::Invalid("a correction needs a non-empty range"));
        }
        self.write(|tx| {
            let periods = match confine(tx, range, person)? {
                Ok(p) => p,
                Err(refusal) => return Ok(Err(refusal)),
            };
            // Never rows held for someone else's consent (a re-attribution gave them away).
            let rows = format!(
                "quarantine WHERE device_id = ?1 AND start_ms >= ?2 AND start_ms < ?3
                   AND (held_for IS NULL OR held_for = ?4) AND {}",
                any_of(&periods, Period::contains_sql)
            );
            refuse_past_fence(tx, person, &rows, params![range.device_id, f, t, person])?;
            let types: Vec<RecordType> = tx
                .prepare(&format!("SELECT DISTINCT record_type FROM {rows}"))?
                .query_map(params![range.device_id, f, t, person], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect();
            let (first, last): (Option<i64>, Option<i64>) = tx.query_row(
                &format!("SELECT min(start_ms), max(start_ms) FROM {rows}"),
                params![range.device_id, f, t, person],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if let (Some(first), Some(last)) = (first, last) {
                if !consents_to_storage(tx, person, &types, first, last.saturating_add(1), now)? {
                    return Err(Error::Conflict("no storage consent covers these records"));
                }
            }
            let moved = tx.execute(
                &format!(
                    "INSERT INTO records (device_id, record_type, start_ms, end_ms, record_id, person_id, bridge_id, batch_id, stored_at_ms, body)
                     SELECT device_id, record_type, start_ms, end_ms, record_id, ?4, bridge_id, batch_id, ?5, body
                       FROM {rows}
                     ON CONFLICT DO NOTHING"
                ),
                params![range.device_id, f, t, person, now.timestamp_millis()],
            )?;
            let n = tx.execute(&format!("DELETE FROM {rows}"), params![range.device_id, f, t, person])?;
            self.rows.records(super::added(moved));
            self.rows.quarantine(-super::added(n));
            let left = left_over(tx, "quarantine", range, None, &periods)?;
            let mut c = record(tx, Kind::ConfirmQuarantine, range, None, Some(person), n, why, person, now)?;
            c.left = left;
            Ok(Ok(c))
        })
    }

    /// Deletes records held for lack of storage consent longer than the hold
    /// (`[ingest] hold_without_consent_days`, or [`super::DEFAULT_HOLD_DAYS`] when holding is
    /// off, for what was held before), received before `now` minus the hold. Each person
    /// whose records expired gets one entry in their disclosure log, with the count. Returns
    /// how many rows were deleted.
    pub fn expire_held(&self, now: DateTime<Utc>) -> Result<usize> {
        let days = match self.hold_days.load(std::sync::atomic::Ordering::Relaxed) {
            d if d > 0 => d,
            _ => i64::from(super::DEFAULT_HOLD_DAYS),
        };
        let cutoff = now.timestamp_millis() - days * 86_400_000;
        self.write(|tx| {
            let people: Vec<(String, i64, String)> = tx
                .prepare_cached(
                    "SELECT held_for, count(*), group_concat(DISTINCT record_type) FROM quarantine
                      WHERE held_for IS NOT NULL AND received_at_ms < ?1 GROUP BY held_for",
                )?
                .query_map([cutoff], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            if people.is_empty() {
                return Ok(0);
            }
            let n = tx.execute(
                "DELETE FROM quarantine WHERE held_for IS NOT NULL AND received_at_ms < ?1",
                [cutoff],
            )?;
            self.rows.quarantine(-super::added(n));
            for (person, count, types) in people {
                let mut e = audit::Entry::by_owner(
                    &person,
                    audit::Action::Erasure,
                    &format!(
                        "records held without your storage consent deleted: held longer than {days} days"
                    ),
                    count as u64,
                    now,
                );
                e.actor = STORAGE_GRANTEE.to_owned();
                e.actor_kind = "gateway".into();
                e.data_types = types.split(',').map(str::to_owned).collect();
                audit::append(tx, &e)?;
            }
            Ok(n)
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

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: i64 = 1_700_000_000_000;

    fn t(minute: i64) -> DateTime<Utc> {
        ms(BASE + minute * 60_000)
    }

    /// Ana holds the band from minute 0, pairs it again at 50 (back to back), hands it to ben
    /// at 100; with quarantined step counts at the edges of those periods.
    fn handed_over() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        for who in ["ana", "ben"] {
            store.add_person(who, who, "UTC").unwrap();
            store.grant_storage_consent(who, &RecordType::ALL).unwrap();
        }
        store.add_device("band", "br", None).unwrap();
        store.bind("band", "ana", t(0)).unwrap();
        store.bind("band", "ana", t(50)).unwrap();
        store.bind("band", "ben", t(100)).unwrap();
        for (start, end) in [
            (-30, -29),
            (40, 60),
            (90, 110),
            (99, 100),
            (100, 100),
            (150, 151),
        ] {
            store
                .write(|tx| {
                    tx.execute(
                        "INSERT INTO quarantine (device_id, record_type, start_ms, end_ms, record_id, bridge_id, batch_id, reason, received_at_ms, body)
                         VALUES ('band', 'step-count', ?1, ?2, 'id', 'br', 'b', 'no_binding', 0, '{\"body\":{\"step_count\":5}}')",
                        params![t(start).timestamp_millis(), t(end).timestamp_millis()],
                    )?;
                    Ok(())
                })
                .unwrap();
        }
        (dir, store)
    }

    fn rows(store: &Store, table: &str, person: Option<&str>) -> Vec<(i64, i64)> {
        store
            .read(|c| {
                let sql = format!(
                    "SELECT start_ms, end_ms FROM {table} WHERE ?1 IS NULL OR person_id = ?1 ORDER BY start_ms, end_ms"
                );
                let sql = if table == "quarantine" {
                    sql.replace("?1 IS NULL OR person_id = ?1", "?1 IS NULL")
                } else {
                    sql
                };
                let mut stmt = c.prepare(&sql)?;
                let rows = stmt.query_map([person], |r| {
                    Ok((
                        (r.get::<_, i64>(0)? - BASE) / 60_000,
                        (r.get::<_, i64>(1)? - BASE) / 60_000,
                    ))
                })?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
            .unwrap()
    }

    fn all(device: &str) -> Range {
        Range {
            device_id: device.into(),
            from: t(-1000),
            to: t(1000),
        }
    }

    fn left(c: &Correction) -> Vec<(&str, u64)> {
        c.left
            .iter()
            .map(|l| (l.reason.as_str(), l.records))
            .collect()
    }

    /// One minute of steps of `band` through `br`, from minute `minute`.
    fn steps(minute: i64, count: i64) -> phr_schema::Record {
        use phr_schema::record::{IntervalFrame, Provenance, StepCount};
        let start = t(minute).fixed_offset();
        let end = t(minute + 1).fixed_offset();
        phr_schema::Record::new(
            "band",
            "br",
            end,
            Provenance::sensed("test/1"),
            phr_schema::Body::StepCount(StepCount {
                effective_time_frame: IntervalFrame::new(start, end),
                step_count: count,
            }),
        )
    }

    /// `records` through the whole ingest path (check, view, attribute, write) as one batch.
    fn ingest(store: &Store, records: Vec<phr_schema::Record>) -> phr_schema::Ack {
        let batch = phr_schema::Batch::new("br", "band", Uuid::new_v4(), records);
        let payload = serde_json::to_vec(&batch).unwrap();
        let checked = crate::ingest::check(
            &payload,
            "br",
            "band",
            Utc::now(),
            &phr_schema::Limits::default(),
        );
        store.ingest(vec![checked], Utc::now()).unwrap().remove(0)
    }

    fn logged(store: &Store, who: &str) -> Vec<(audit::Action, String, u64)> {
        store
            .disclosures(who, 0, 100)
            .unwrap()
            .into_iter()
            .map(|l| (l.entry.action, l.entry.actor, l.entry.records))
            .collect()
    }

    #[test]
    fn records_without_storage_consent_are_held_until_consent_or_the_end_of_the_hold() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.sqlite")).unwrap();
        s.add_person("ana", "ana", "UTC").unwrap();
        s.add_device("band", "br", None).unwrap();
        s.bind("band", "ana", t(0)).unwrap();
        let ack = ingest(&s, vec![steps(10, 1), steps(11, 2)]);
        assert_eq!((ack.stored, ack.quarantined, ack.rejected.len()), (0, 2, 0));
        let q = s.quarantine_of("ana").unwrap();
        assert_eq!(
            (q[0].records, q[0].reasons.clone()),
            (2, vec![HELD_WITHOUT_CONSENT.to_owned()])
        );
        assert_eq!(s.expire_held(Utc::now()).unwrap(), 0, "within the hold");

        // A consent that does not cover them releases nothing; one that does, all of them.
        s.grant_consent(
            "ana",
            consent::Terms::storage(&[RecordType::HeartRate]),
            "ana",
            Utc::now(),
        )
        .unwrap();
        assert_eq!(s.counts().unwrap(), (0, 2));
        let c = s
            .grant_consent(
                "ana",
                consent::Terms::storage(&[RecordType::StepCount]),
                "ana",
                Utc::now(),
            )
            .unwrap();
        assert_eq!(s.counts().unwrap(), (2, 0));
        assert_eq!(rows(&s, "records", Some("ana")), [(10, 11), (11, 12)]);
        let release = s.disclosures("ana", 0, 100).unwrap();
        let release = release.last().unwrap();
        assert_eq!(
            (
                release.entry.action,
                release.entry.records,
                release.entry.consent_id
            ),
            (audit::Action::Correction, 2, Some(c.consent_id))
        );
        assert_eq!(s.row_counts(), (2, 0), "the in-memory counts follow");

        // Held again after a withdrawal; gone after the hold, and the person is told.
        s.withdraw_storage_consent("ana").unwrap();
        assert_eq!(ingest(&s, vec![steps(12, 3)]).quarantined, 1);
        assert_eq!(
            s.expire_held(Utc::now() + chrono::TimeDelta::days(29))
                .unwrap(),
            0
        );
        assert_eq!(
            s.expire_held(Utc::now() + chrono::TimeDelta::days(31))
                .unwrap(),
            1
        );
        assert_eq!(s.counts().unwrap(), (2, 0));
        assert_eq!(
            logged(&s, "ana").last().unwrap(),
            &(audit::Action::Erasure, STORAGE_GRANTEE.to_owned(), 1)
        );

        // Holding off: rejected, as before.
        s.set_hold_without_consent_days(0);
        let ack = ingest(&s, vec![steps(13, 4)]);
        assert_eq!(
            (ack.quarantined, ack.rejected[0].reason),
            (0, phr_schema::Reason::NoStorageConsent)
        );
    }

    #[test]
    fn nothing_measured_before_a_persons_erasure_is_given_to_them_by_a_correction() {
        let (_d, s) = handed_over();
        let now = Utc::now();
        s.confirm_quarantine(&all("band"), "ana", "", now)
            .unwrap()
            .unwrap();
        s.erase_person("ben", "ben", now).unwrap();
        s.grant_storage_consent("ben", &RecordType::ALL).unwrap();
        // An operator cannot hand ben ana's records of before his erasure...
        let err = s
            .reattribute(&all("band"), "ana", "ben", "mix-up", "op", now)
            .unwrap_err();
        assert!(
            matches!(err, Error::Conflict(m) if m.contains("erased")),
            "{err}"
        );
        assert_eq!(rows(&s, "records", Some("ana")).len(), 3);
        // ... nor may ben take a quarantined record of his old period back.
        s.write(|tx| {
            tx.execute(
                "INSERT INTO quarantine (device_id, record_type, start_ms, end_ms, record_id, bridge_id, batch_id, reason, received_at_ms, body)
                 VALUES ('band', 'step-count', ?1, ?2, 'id', 'br', 'b', 'no_binding', 0, '{}')",
                params![t(120).timestamp_millis(), t(121).timestamp_millis()],
            )?;
            Ok(())
        })
        .unwrap();
        let err = s
            .confirm_quarantine(&all("band"), "ben", "", now)
            .unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err}");
        assert_eq!(rows(&s, "quarantine", None), [(90, 110), (120, 121)]);
        // And a late record of his old period is refused at ingest, not quarantined.
        let ack = ingest(&s, vec![steps(130, 5)]);
        assert_eq!(
            (ack.quarantined, ack.rejected[0].reason),
            (0, phr_schema::Reason::ErasedByPerson)
        );
    }

    #[test]
    fn claims_stop_at_the_edges_of_ones_own_bindings() {
        let (_d, s) = handed_over();
        let now = Utc::now();
        let ana = s
            .confirm_quarantine(&all("band"), "ana", "", now)
            .unwrap()
            .unwrap();
        // Her history before the first pairing, the record across her own re-pairing, and
        // the one ending exactly when she handed the band over.
        assert_eq!(
            rows(&s, "records", Some("ana")),
            [(-30, -29), (40, 60), (99, 100)]
        );
        assert_eq!(ana.records, 3);
        assert_eq!(
            left(&ana),
            [("outside_your_bindings", 2), ("spans_binding_change", 1)]
        );

        let ben = s
            .confirm_quarantine(&all("band"), "ben", "", now)
            .unwrap()
            .unwrap();
        assert_eq!(rows(&s, "records", Some("ben")), [(100, 100), (150, 151)]);
        assert_eq!(left(&ben), [("spans_binding_change", 1)]);
        assert_eq!(
            rows(&s, "quarantine", None),
            [(90, 110)],
            "the hand-over straddler is nobody's"
        );

        // Nothing left to take, and a range wholly before ben's binding is refused.
        let before = Range {
            device_id: "band".into(),
            from: t(0),
            to: t(100),
        };
        assert_eq!(
            s.confirm_quarantine(&before, "ben", "", now).unwrap(),
            Err(Refusal::OutsideYourBindings)
        );
        assert_eq!(
            s.confirm_quarantine(&all("other"), "ben", "", now).unwrap(),
            Err(Refusal::NotYourDevice)
        );
    }

    #[test]
    fn the_summary_shows_what_one_may_claim() {
        let (_d, s) = handed_over();
        let ben = s.quarantine_of("ben").unwrap();
        assert_eq!(ben.len(), 1);
        assert_eq!(
            (ben[0].records, ben[0].first_start, ben[0].last_end),
            (2, t(100), t(151))
        );
        let ana = s.quarantine_of("ana").unwrap();
        assert_eq!(
            (ana[0].records, ana[0].first_start, ana[0].last_end),
            (3, t(-30), t(100))
        );
        assert!(s.quarantine_of("cai").unwrap().is_empty());
    }

    #[test]
    fn erasure_takes_only_the_quarantine_of_ones_own_periods() {
        let (_d, s) = handed_over();
        let erased = s.erase_person("ben", "ben", Utc::now()).unwrap();
        assert_eq!((erased.quarantined, erased.bindings_closed), (2, 1));
        assert_eq!(
            rows(&s, "quarantine", None),
            [(-30, -29), (40, 60), (90, 110), (99, 100)]
        );
        let erased = s.erase_person("ana", "ana", Utc::now()).unwrap();
        assert_eq!((erased.quarantined, erased.bindings_closed), (3, 0));
        assert_eq!(rows(&s, "quarantine", None), [(90, 110)]);
    }

    #[test]
    fn a_gap_between_holders_is_in_nobodys_periods() {
        let (_d, s) = handed_over();
        s.write(|tx| {
            // Ben releases the band at 200; cai pairs it at 300.
            tx.execute(
                "UPDATE bindings SET valid_to = ?1 WHERE person_id = 'ben'",
                [t(200).timestamp_millis()],
            )?;
            Ok(())
        })
        .unwrap();
        s.add_person("cai", "cai", "UTC").unwrap();
        s.bind("band", "cai", t(300)).unwrap();
        let periods = |who: &str| s.read(|c| claim_periods(c, "band", who)).unwrap();
        let p = |from: i64, to: i64| Period {
            from_ms: from,
            to_ms: to,
        };
        let ms = |m: i64| t(m).timestamp_millis();
        assert_eq!(periods("ana"), [p(i64::MIN, ms(100))]);
        assert_eq!(periods("ben"), [p(ms(100), ms(200))]);
        assert_eq!(periods("cai"), [p(ms(300), i64::MAX)]);
        assert!(periods("dan").is_empty());
    }

    #[test]
    fn an_owner_unlinks_only_their_records_inside_their_periods() {
        let (_d, s) = handed_over();
        let now = Utc::now();
        s.confirm_quarantine(&all("band"), "ben", "", now)
            .unwrap()
            .unwrap();
        // An operator gave ben a record of ana's time.
        s.confirm_quarantine(&all("band"), "ana", "", now)
            .unwrap()
            .unwrap();
        let range = Range {
            device_id: "band".into(),
            from: t(99),
            to: t(100),
        };
        s.reattribute(&range, "ana", "ben", "ben wore it", "op", now)
            .unwrap();
        assert_eq!(
            rows(&s, "records", Some("ben")),
            [(99, 100), (100, 100), (150, 151)]
        );

        let c = s
            .unlink_own(&all("band"), "ben", "not mine", now)
            .unwrap()
            .unwrap();
        assert_eq!(c.records, 2);
        assert_eq!(left(&c), [("outside_your_bindings", 1)]);
        assert_eq!(rows(&s, "records", Some("ben")), [(99, 100)]);
        assert_eq!(rows(&s, "records", Some("ana")), [(-30, -29), (40, 60)]);
        let anas = Range {
            device_id: "band".into(),
            from: t(0),
            to: t(99),
        };
        assert_eq!(
            s.unlink_own(&anas, "ben", "not mine", now).unwrap(),
            Err(Refusal::OutsideYourBindings)
        );
        // The operator's own unlinking is not confined.
        let c = s.unlink(&all("band"), "ben", "wrong", "op", now).unwrap();
        assert_eq!(c.records, 1);
    }
}
