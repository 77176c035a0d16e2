//! The change feed behind incremental sync (`GET /api/v1/sync`).
//!
//! Every change to the series is appended to `changes` by triggers on the `records` table, in
//! the transaction that made it, so no code path (ingest, correction, quarantine confirmation,
//! import, erasure) can forget one: an insert is `stored`, a delete `erased`, a move from one
//! person to another both. `seq` is assigned in commit order (one writer), so a cursor that
//! is the last `seq` a reader examined never skips and never repeats.
//!
//! Who sees a change is decided at read time against the reader's consents, with two marks
//! per consent kept in `consent_feed`: the last `seq` when it was granted and when it was
//! withdrawn.
//! - `stored`: the consent is in force now, was granted before the change (`from < seq`),
//!   and covers the record's type and measured start. A withdrawn consent ends the flow at
//!   once, for changes not yet read too.
//! - `erased`: the consent was in force when the change happened (`from < seq <= to`), so a
//!   reader learns of erasures of what it may have received, even when the erasure itself
//!   withdrew the consent.
//! - Records stored before a consent was granted (late consent, or a window reaching into the
//!   past) are copied into the feed at the grant, as `stored` changes addressed to that
//!   consent only (`audience`), minus what another consent of the same grantee already
//!   covers. Records stored after the grant come through the shared changes.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use uuid::Uuid;

use phr_schema::RecordType;

use super::consent::{self, Consent, ConsentStatus, GranteeKind};
use super::Store;
use crate::Result;

pub(super) const SCHEMA: &str = "
-- `seq` is the rowid: rows are only ever appended (never deleted), so it only grows, without
-- AUTOINCREMENT's extra write per row.
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY,
    op TEXT NOT NULL CHECK (op IN ('stored', 'erased')),
    person_id TEXT NOT NULL,
    record_type TEXT NOT NULL,
    device_id TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    record_id TEXT NOT NULL,
    -- NULL: for every reader the consents allow; else only for this consent (a backfill).
    audience TEXT
);
CREATE TRIGGER IF NOT EXISTS changes_append_only BEFORE DELETE ON changes
    BEGIN SELECT RAISE(ABORT, 'the change feed is append-only'); END;
CREATE TABLE IF NOT EXISTS consent_feed (
    consent_id TEXT NOT NULL,
    event TEXT NOT NULL CHECK (event IN ('granted', 'withdrawn')),
    seq INTEGER NOT NULL,
    PRIMARY KEY (consent_id, event)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS records_stored AFTER INSERT ON records BEGIN
    INSERT INTO changes (op, person_id, record_type, device_id, start_ms, end_ms, record_id)
    VALUES ('stored', NEW.person_id, NEW.record_type, NEW.device_id, NEW.start_ms, NEW.end_ms,
            NEW.record_id);
END;
CREATE TRIGGER IF NOT EXISTS records_erased AFTER DELETE ON records BEGIN
    INSERT INTO changes (op, person_id, record_type, device_id, start_ms, end_ms, record_id)
    VALUES ('erased', OLD.person_id, OLD.record_type, OLD.device_id, OLD.start_ms, OLD.end_ms,
            OLD.record_id);
END;
CREATE TRIGGER IF NOT EXISTS records_moved AFTER UPDATE OF person_id ON records
    WHEN OLD.person_id <> NEW.person_id BEGIN
    INSERT INTO changes (op, person_id, record_type, device_id, start_ms, end_ms, record_id)
    VALUES ('erased', OLD.person_id, OLD.record_type, OLD.device_id, OLD.start_ms, OLD.end_ms,
            OLD.record_id);
    INSERT INTO changes (op, person_id, record_type, device_id, start_ms, end_ms, record_id)
    VALUES ('stored', NEW.person_id, NEW.record_type, NEW.device_id, NEW.start_ms, NEW.end_ms,
            NEW.record_id);
END;
";

fn last_seq(conn: &Connection) -> Result<i64> {
    Ok(
        conn.query_row("SELECT coalesce(max(seq), 0) FROM changes", [], |r| {
            r.get(0)
        })?,
    )
}

/// Whether `terms` let a reader see a record of `record_type` whose measured start is
/// `start_ms`: the rule of the data access layer (start inside the window).
fn allows(c: &Consent, record_type: RecordType, start_ms: i64) -> bool {
    let (from, to) = c.terms.window_ms();
    c.terms.data_types.contains(&record_type) && from <= start_ms && start_ms < to
}

/// At a grant to a reader (not the gateway's storage consent): marks where the consent's
/// feed starts, and copies in what is already stored and the consent covers, minus what
/// another consent of the same grantee in force already lets it see.
pub(super) fn on_grant(tx: &Transaction<'_>, c: &Consent, now: DateTime<Utc>) -> Result<()> {
    if c.terms.grantee_kind == GranteeKind::Gateway {
        return Ok(());
    }
    let from = last_seq(tx)?;
    tx.execute(
        "INSERT INTO consent_feed (consent_id, event, seq) VALUES (?1, 'granted', ?2)",
        params![c.consent_id.to_string(), from],
    )?;
    let others: Vec<Consent> = consent::in_force(
        tx,
        &c.person_id,
        &c.terms.grantee,
        c.terms.grantee_kind,
        now,
    )?
    .into_iter()
    .filter(|o| o.consent_id != c.consent_id)
    .collect();
    let (wf, wt) = c.terms.window_ms();
    let mut select = tx.prepare_cached(
        "SELECT device_id, start_ms, end_ms, record_id FROM records
          WHERE person_id = ?1 AND record_type = ?2 AND start_ms >= ?3 AND start_ms < ?4
          ORDER BY start_ms, device_id, end_ms",
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO changes (op, person_id, record_type, device_id, start_ms, end_ms, record_id, audience)
         VALUES ('stored', ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for t in &c.terms.data_types {
        let rows = select
            .query_map(params![c.person_id, t.as_str(), wf, wt], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for (device, start, end, id) in rows {
            if others.iter().any(|o| allows(o, *t, start)) {
                continue;
            }
            insert.execute(params![
                c.person_id,
                t.as_str(),
                device,
                start,
                end,
                id,
                c.consent_id.to_string()
            ])?;
        }
    }
    Ok(())
}

/// At a withdrawal: marks where the consent's feed ends.
pub(super) fn on_withdraw(tx: &Connection, consent_id: Uuid) -> Result<()> {
    let to = last_seq(tx)?;
    tx.execute(
        "INSERT OR IGNORE INTO consent_feed (consent_id, event, seq) VALUES (?1, 'withdrawn', ?2)",
        params![consent_id.to_string(), to],
    )?;
    Ok(())
}

/// One change a reader may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    pub op: Op,
    pub person_id: String,
    pub record_type: RecordType,
    pub record_id: String,
    /// The record as stored (`stored` only).
    pub json: Option<String>,
    /// The consent that lets the reader see it.
    pub consent_id: Uuid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Stored,
    Erased,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Stored => "stored",
            Op::Erased => "erased",
        }
    }
}

/// A page of the feed.
#[derive(Debug, Clone)]
pub struct FeedPage {
    pub changes: Vec<Change>,
    /// The last `seq` examined: the next page starts after it.
    pub last_seq: i64,
    /// Whether the feed may hold more right now.
    pub more: bool,
}

/// A reader's consent with its feed marks.
#[derive(Debug)]
struct Marked {
    consent: Consent,
    from: i64,
    to: Option<i64>,
}

/// The most changes examined for one page, so a reader with few people among many does not
/// make one request scan the whole feed; the cursor still moves past what was examined.
const MAX_EXAMINED: usize = 20_000;

impl Store {
    /// The changes after `after` that `grantee` (of `kind`) may see now, at most `limit`.
    /// `types` narrows further (a token scoped to some types), `None` is every type.
    pub fn feed(
        &self,
        grantee: &str,
        kind: GranteeKind,
        types: Option<&[RecordType]>,
        after: i64,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<FeedPage> {
        self.read(|conn| {
            let tx = conn.unchecked_transaction()?;
            let consents = consent::of_grantee(&tx, grantee, kind, now)?;
            let mut marked: HashMap<String, Vec<Marked>> = HashMap::new();
            {
                let mut mark = tx.prepare_cached(
                    "SELECT seq FROM consent_feed WHERE consent_id = ?1 AND event = ?2",
                )?;
                for c in consents {
                    let id = c.consent_id.to_string();
                    let from: Option<i64> = mark
                        .query_row(params![id, "granted"], |r| r.get(0))
                        .optional()?;
                    let Some(from) = from else { continue };
                    let to: Option<i64> = mark
                        .query_row(params![id, "withdrawn"], |r| r.get(0))
                        .optional()?;
                    marked.entry(c.person_id.clone()).or_default().push(Marked {
                        consent: c,
                        from,
                        to,
                    });
                }
            }
            let people: Vec<&str> = marked.keys().map(String::as_str).collect();
            let people_json = serde_json::Value::from(people).to_string();
            let mut scan = tx.prepare_cached(
                "SELECT seq, op, person_id, record_type, device_id, start_ms, end_ms, record_id, audience
                   FROM changes
                  WHERE seq > ?1 AND person_id IN (SELECT value FROM json_each(?2))
                  ORDER BY seq LIMIT ?3",
            )?;
            let mut body = tx.prepare_cached(
                "SELECT body FROM records WHERE device_id = ?1 AND record_type = ?2
                    AND start_ms = ?3 AND end_ms = ?4 AND person_id = ?5",
            )?;
            let mut rows = scan.query(params![after, people_json, MAX_EXAMINED as i64])?;
            let mut page = FeedPage {
                changes: Vec::new(),
                last_seq: after,
                more: false,
            };
            let mut examined = 0;
            while let Some(r) = rows.next()? {
                if page.changes.len() == limit {
                    page.more = true;
                    break;
                }
                examined += 1;
                let seq: i64 = r.get(0)?;
                page.last_seq = seq;
                let op = if r.get::<_, String>(1)? == "stored" {
                    Op::Stored
                } else {
                    Op::Erased
                };
                let person: String = r.get(2)?;
                let Ok(record_type) = r.get::<_, String>(3)?.parse::<RecordType>() else {
                    continue;
                };
                if types.is_some_and(|t| !t.contains(&record_type)) {
                    continue;
                }
                let start_ms: i64 = r.get(5)?;
                let audience: Option<String> = r.get(8)?;
                let Some(candidates) = marked.get(&person) else {
                    continue;
                };
                let visible = candidates.iter().find(|m| {
                    let in_force = m.consent.status == ConsentStatus::Granted;
                    match (&audience, op) {
                        (Some(a), _) => *a == m.consent.consent_id.to_string() && in_force,
                        (None, Op::Stored) => {
                            in_force && m.from < seq && allows(&m.consent, record_type, start_ms)
                        }
                        (None, Op::Erased) => {
                            m.from < seq
                                && m.to.is_none_or(|to| seq <= to)
                                && allows(&m.consent, record_type, start_ms)
                        }
                    }
                });
                let Some(m) = visible else { continue };
                let json = match op {
                    Op::Stored => {
                        let device: String = r.get(4)?;
                        let end_ms: i64 = r.get(6)?;
                        let json: Option<String> = body
                            .query_row(
                                params![device, record_type.as_str(), start_ms, end_ms, person],
                                |r| r.get(0),
                            )
                            .optional()?;
                        // Gone since: a later change in the feed says where.
                        let Some(json) = json else { continue };
                        Some(json)
                    }
                    Op::Erased => None,
                };
                page.changes.push(Change {
                    seq,
                    op,
                    person_id: person,
                    record_type,
                    record_id: r.get(7)?,
                    json,
                    consent_id: m.consent.consent_id,
                });
            }
            if examined == MAX_EXAMINED {
                page.more = true;
            }
            Ok(page)
        })
    }
}
