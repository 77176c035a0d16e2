//! The change feed behind incremental sync (`GET /api/v1/sync`).
//!
//! Every change to the series is appended to `changes` by triggers on the `records` table, in
//! the transaction that made it, so no code path (ingest, correction, quarantine confirmation,
//! import, erasure) can forget one: an insert is `stored`, a delete `erased`, a move from one
//! person to another both. `seq` is assigned in commit order (one writer), so a cursor that
//! is the last `seq` a reader examined never skips and never repeats.
//!
//! Who sees a change is decided at read time by the access layer
//! ([`crate::visibility`]), from the reader's consent history: for each consent, where in
//! the feed it was granted and withdrawn (`consent_feed`) and which positions the reader read
//! through while it was in force (`consent_reads`, written after each page). Records stored
//! before a grant that the reader did not receive are copied in at the grant as catch-up
//! rows addressed to that consent (`audience`).
//!
//! An erased person leaves no record-level trace here: their erasure replaces every row that
//! named them with one `person_erased` row (no record ids, types or times), which tells the
//! readers who held their data to drop all of it. Rows are never rewritten; only that
//! compaction deletes them, and the `person_erased` row it leaves keeps `seq` growing.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use uuid::Uuid;

use phr_schema::RecordType;

use super::consent::{self, Consent, GranteeKind};
use super::Store;
use crate::visibility::{self as rules, Grant};
use crate::Result;

pub(super) const SCHEMA: &str = "
-- `seq` is the rowid: rows are appended in commit order. An erasure deletes the rows naming
-- its person after appending its `person_erased` row, which therefore stays the highest:
-- `seq` never goes back, so a cursor never skips a later row.
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY,
    op TEXT NOT NULL CHECK (op IN ('stored', 'erased', 'person_erased')),
    person_id TEXT NOT NULL,
    record_type TEXT NOT NULL,
    device_id TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    record_id TEXT NOT NULL,
    -- NULL: for every reader the consents allow; else only for this consent (a catch-up).
    audience TEXT
);
-- Finds a record's rows (catch-up at a grant) and a person's rows (erasure).
CREATE INDEX IF NOT EXISTS changes_by_person ON changes(person_id, record_type, start_ms);
CREATE TRIGGER IF NOT EXISTS changes_never_rewritten BEFORE UPDATE ON changes
    BEGIN SELECT RAISE(ABORT, 'the change feed is never rewritten'); END;
CREATE TABLE IF NOT EXISTS consent_feed (
    consent_id TEXT NOT NULL,
    event TEXT NOT NULL CHECK (event IN ('granted', 'withdrawn')),
    seq INTEGER NOT NULL,
    PRIMARY KEY (consent_id, event)
) WITHOUT ROWID;
-- The positions `(from_seq, to_seq]` a reader read through while the consent was in force:
-- where the reader stood at the grant and when the consent ended (NULL while in force).
CREATE TABLE IF NOT EXISTS consent_reads (
    consent_id TEXT PRIMARY KEY,
    from_seq INTEGER NOT NULL,
    to_seq INTEGER
) WITHOUT ROWID;
-- The furthest position each reader has read through.
CREATE TABLE IF NOT EXISTS feed_readers (
    grantee TEXT NOT NULL,
    grantee_kind TEXT NOT NULL,
    read_to INTEGER NOT NULL,
    PRIMARY KEY (grantee, grantee_kind)
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

/// The furthest position `grantee` has read through (0 if it never read).
fn reader_at(conn: &Connection, grantee: &str, kind: GranteeKind) -> Result<i64> {
    Ok(conn
        .prepare_cached(
            "SELECT read_to FROM feed_readers WHERE grantee = ?1 AND grantee_kind = ?2",
        )?
        .query_row(params![grantee, kind.as_str()], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Each consent with its feed marks. A consent's read marks are the reader's position when
/// it was granted and when it ended (withdrawn, or seen expired by a read); while it is in
/// force (or ended unseen since the reader last read), the reader's position now (`at`).
fn with_marks(conn: &Connection, consents: Vec<Consent>, at: i64) -> Result<Vec<Grant>> {
    let mut mark =
        conn.prepare_cached("SELECT seq FROM consent_feed WHERE consent_id = ?1 AND event = ?2")?;
    let mut read =
        conn.prepare_cached("SELECT from_seq, to_seq FROM consent_reads WHERE consent_id = ?1")?;
    let mut out = Vec::with_capacity(consents.len());
    for c in consents {
        let id = c.consent_id.to_string();
        let granted: Option<i64> = mark
            .query_row(params![id, "granted"], |r| r.get(0))
            .optional()?;
        // The gateway's own storage consents have no marks: they are not readers.
        let Some(granted_at) = granted else { continue };
        let withdrawn_at = mark
            .query_row(params![id, "withdrawn"], |r| r.get(0))
            .optional()?;
        let read = read
            .query_row([&id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
            })
            .optional()?
            .map(|(from, to)| (from, to.unwrap_or(at)));
        out.push(Grant {
            consent: c,
            granted_at,
            withdrawn_at,
            read,
        });
    }
    Ok(out)
}

/// At a grant to a reader (not the gateway's storage consent): marks where the consent's
/// feed starts, and copies in, as catch-up rows for it, the records already stored that it
/// covers and the reader neither received nor will still pass ([`rules::needs_catch_up`]).
pub(super) fn on_grant(tx: &Transaction<'_>, c: &Consent, now: DateTime<Utc>) -> Result<()> {
    if c.terms.grantee_kind == GranteeKind::Gateway {
        return Ok(());
    }
    let from = last_seq(tx)?;
    tx.execute(
        "INSERT INTO consent_feed (consent_id, event, seq) VALUES (?1, 'granted', ?2)",
        params![c.consent_id.to_string(), from],
    )?;
    let at = reader_at(tx, &c.terms.grantee, c.terms.grantee_kind)?;
    tx.execute(
        "INSERT INTO consent_reads (consent_id, from_seq, to_seq) VALUES (?1, ?2, NULL)",
        params![c.consent_id.to_string(), at],
    )?;
    let others: Vec<Grant> = with_marks(
        tx,
        consent::of_person_to(
            tx,
            &c.person_id,
            &c.terms.grantee,
            c.terms.grantee_kind,
            now,
        )?
        .into_iter()
        .filter(|o| o.consent_id != c.consent_id)
        .collect(),
        at,
    )?;
    let audiences: HashSet<String> = others
        .iter()
        .map(|g| g.consent.consent_id.to_string())
        .collect();
    let (wf, wt) = c.terms.window_ms();
    let mut select = tx.prepare_cached(
        "SELECT device_id, start_ms, end_ms, record_id FROM records
          WHERE person_id = ?1 AND record_type = ?2 AND start_ms >= ?3 AND start_ms < ?4
          ORDER BY start_ms, device_id, end_ms",
    )?;
    let mut rows_of = tx.prepare_cached(
        "SELECT seq, audience FROM changes
          WHERE person_id = ?1 AND record_type = ?2 AND start_ms = ?3 AND device_id = ?4
            AND end_ms = ?5 AND op = 'stored'",
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO changes (op, person_id, record_type, device_id, start_ms, end_ms, record_id, audience)
         VALUES ('stored', ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for t in &c.terms.data_types {
        let records = select
            .query_map(params![c.person_id, t.as_str(), wf, wt], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for (device, start, end, id) in records {
            let mut stored_seq = 0;
            let mut earlier = Vec::new();
            let mut rows = rows_of.query(params![c.person_id, t.as_str(), start, device, end])?;
            while let Some(r) = rows.next()? {
                let seq: i64 = r.get(0)?;
                match r.get::<_, Option<String>>(1)? {
                    None => stored_seq = stored_seq.max(seq),
                    Some(a) if audiences.contains(&a) => earlier.push(seq),
                    Some(_) => {}
                }
            }
            // Catch-up rows from before the record's latest `stored` row were of an earlier
            // version of it (it moved away and back).
            earlier.retain(|s| *s > stored_seq);
            if rules::needs_catch_up(&others, *t, start, stored_seq, &earlier, at) {
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
    }
    Ok(())
}

/// At a withdrawal: marks where the consent's feed ends, and how far its reader had read
/// (unless a read already saw it expired).
pub(super) fn on_withdraw(tx: &Connection, c: &Consent) -> Result<()> {
    let to = last_seq(tx)?;
    tx.execute(
        "INSERT OR IGNORE INTO consent_feed (consent_id, event, seq) VALUES (?1, 'withdrawn', ?2)",
        params![c.consent_id.to_string(), to],
    )?;
    let at = reader_at(tx, &c.terms.grantee, c.terms.grantee_kind)?;
    end_reads(tx, c.consent_id, at)
}

/// A consent ended: the reader read under it up to `at`, and no further.
fn end_reads(conn: &Connection, consent_id: Uuid, at: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE consent_reads SET to_seq = ?2 WHERE consent_id = ?1 AND to_seq IS NULL",
    )?
    .execute(params![consent_id.to_string(), at])?;
    Ok(())
}

/// At an erasure, before anything of the person is deleted: appends the `person_erased`
/// row that stands for all of them.
pub(super) fn person_erased(tx: &Transaction<'_>, person_id: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO changes (op, person_id, record_type, device_id, start_ms, end_ms, record_id)
         VALUES ('person_erased', ?1, '', '', 0, 0, '')",
        [person_id],
    )?;
    Ok(())
}

/// At the end of an erasure: deletes every row that names one of the person's records
/// (including the `erased` rows the erasure itself just wrote); their `person_erased` rows
/// stay. Returns how many went.
pub(super) fn forget_person(tx: &Transaction<'_>, person_id: &str) -> Result<usize> {
    Ok(tx.execute(
        "DELETE FROM changes WHERE person_id = ?1 AND op <> 'person_erased'",
        [person_id],
    )?)
}

/// One change a reader may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    pub op: Op,
    pub person_id: String,
    /// The record's type and id (`None` for `person_erased`).
    pub record: Option<(RecordType, String)>,
    /// The record as stored (`stored` only).
    pub json: Option<String>,
    /// The consent that lets the reader see it.
    pub consent_id: Uuid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Stored,
    Erased,
    PersonErased,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Stored => "stored",
            Op::Erased => "erased",
            Op::PersonErased => "person_erased",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "stored" => Some(Op::Stored),
            "erased" => Some(Op::Erased),
            "person_erased" => Some(Op::PersonErased),
            _ => None,
        }
    }
}

/// A page of the feed.
#[derive(Debug, Clone)]
pub struct FeedPage {
    pub changes: Vec<Change>,
    /// The last `seq` examined: the next page starts after it.
    pub last_seq: i64,
    /// Whether the feed may hold more right now: the page is full, or the time budget ran
    /// out. The only end signal; a page is never empty while this is false unless the feed
    /// holds nothing more for the reader.
    pub more: bool,
}

/// A page's scan: the feed in `seq` order from the cursor, rows of the reader's people. The
/// `+` keeps SQLite on the rowid range: with `changes_by_person` it would otherwise gather
/// every later row of those people and sort them before returning the first.
const FEED_SCAN: &str =
    "SELECT seq, op, person_id, record_type, device_id, start_ms, end_ms, record_id, audience
       FROM changes
      WHERE seq > ?1 AND +person_id IN (SELECT value FROM json_each(?2))
      ORDER BY seq";

/// How long one page may spend examining changes the reader may not see (a reader with few
/// people among many). When it runs out the page ends, possibly empty, with `more` set and
/// the cursor past what was examined; it is checked every [`BUDGET_CHECK_EVERY`] rows.
pub const PAGE_TIME_BUDGET: Duration = Duration::from_secs(2);
const BUDGET_CHECK_EVERY: usize = 1024;

impl Store {
    /// The changes after `after` that `grantee` (of `kind`) may see now, at most `limit`,
    /// by the access layer's rules ([`crate::visibility`]). `types` narrows further (a
    /// token scoped to some types), `None` is every type. Then remembers how far the reader
    /// read under each of its consents in force (those the read was not narrowed for), which
    /// later grants need to know what it already has.
    pub fn feed(
        &self,
        grantee: &str,
        kind: GranteeKind,
        types: Option<&[RecordType]>,
        after: i64,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<FeedPage> {
        let (page, expired) = self.read(|conn| {
            let tx = conn.unchecked_transaction()?;
            let at = reader_at(&tx, grantee, kind)?;
            let mut grants: HashMap<String, Vec<Grant>> = HashMap::new();
            for g in with_marks(&tx, consent::of_grantee(&tx, grantee, kind, now)?, at)? {
                grants
                    .entry(g.consent.person_id.clone())
                    .or_default()
                    .push(g);
            }
            // Expired since the reader last read: their reads end where it stood then.
            let expired: Vec<(Uuid, i64)> = grants
                .values()
                .flatten()
                .filter(|g| g.consent.status == consent::ConsentStatus::Expired)
                .filter(|g| g.read.is_some_and(|(_, to)| to == at))
                .map(|g| (g.consent.consent_id, at))
                .collect();
            let people: Vec<&str> = grants.keys().map(String::as_str).collect();
            let people_json = serde_json::Value::from(people).to_string();
            let mut scan = tx.prepare_cached(FEED_SCAN)?;
            let mut body = tx.prepare_cached(
                "SELECT body FROM records WHERE device_id = ?1 AND record_type = ?2
                    AND start_ms = ?3 AND end_ms = ?4 AND person_id = ?5",
            )?;
            let mut rows = scan.query(params![after, people_json])?;
            let mut page = FeedPage {
                changes: Vec::new(),
                last_seq: after,
                more: false,
            };
            // Records delivered by this page, so a catch-up row after the record's own
            // `stored` row does not repeat it.
            let mut sent: HashSet<(String, String)> = HashSet::new();
            let started = Instant::now();
            let budget = self.page_time_budget();
            let mut examined = 0usize;
            while let Some(r) = rows.next()? {
                if page.changes.len() == limit {
                    page.more = true;
                    break;
                }
                examined += 1;
                if examined.is_multiple_of(BUDGET_CHECK_EVERY) && started.elapsed() > budget {
                    page.more = true;
                    break;
                }
                let seq: i64 = r.get(0)?;
                page.last_seq = seq;
                let Some(op) = Op::parse(&r.get::<_, String>(1)?) else {
                    continue;
                };
                let person: String = r.get(2)?;
                let Some(mine) = grants.get(&person) else {
                    continue;
                };
                if op == Op::PersonErased {
                    if let Some(consent_id) = rules::person_erased(mine, seq) {
                        page.changes.push(Change {
                            seq,
                            op,
                            person_id: person,
                            record: None,
                            json: None,
                            consent_id,
                        });
                    }
                    continue;
                }
                let Ok(record_type) = r.get::<_, String>(3)?.parse::<RecordType>() else {
                    continue;
                };
                if types.is_some_and(|t| !t.contains(&record_type)) {
                    continue;
                }
                let start_ms: i64 = r.get(5)?;
                let record_id: String = r.get(7)?;
                let audience: Option<String> = r.get(8)?;
                if let Some(a) = &audience {
                    // A catch-up row: only for the reader whose consent it was made for.
                    if !mine.iter().any(|g| g.consent.consent_id.to_string() == *a) {
                        continue;
                    }
                }
                let (consent_id, json) = match op {
                    Op::Stored => {
                        let Some(consent_id) = rules::stored(mine, record_type, start_ms) else {
                            continue;
                        };
                        if sent.contains(&(person.clone(), record_id.clone())) {
                            continue;
                        }
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
                        sent.insert((person.clone(), record_id.clone()));
                        (consent_id, Some(json))
                    }
                    Op::Erased => {
                        let Some(consent_id) = rules::erased(mine, record_type, start_ms, seq)
                        else {
                            continue;
                        };
                        // Delivered and erased in the same page: the erasure must follow.
                        sent.remove(&(person.clone(), record_id.clone()));
                        (consent_id, None)
                    }
                    Op::PersonErased => continue,
                };
                page.changes.push(Change {
                    seq,
                    op,
                    person_id: person,
                    record: Some((record_type, record_id)),
                    json,
                    consent_id,
                });
            }
            Ok((page, expired))
        })?;
        if page.last_seq > after || !expired.is_empty() {
            self.note_read(grantee, kind, &expired, page.last_seq)?;
        }
        Ok(page)
    }

    /// How long one page may spend examining changes ([`PAGE_TIME_BUDGET`] unless set).
    pub fn page_time_budget(&self) -> Duration {
        self.page_budget
            .read()
            .map(|d| *d)
            .unwrap_or(PAGE_TIME_BUDGET)
    }

    /// Sets how long one page may spend examining changes (tests and operators tuning a
    /// gateway whose readers hold few of many people).
    pub fn set_page_time_budget(&self, budget: Duration) {
        if let Ok(mut d) = self.page_budget.write() {
            *d = budget;
        }
    }

    /// Remembers that `grantee` read through `to`, and where the reads under `expired`
    /// (consents it saw expired for the first time) ended. A separate write after the page's
    /// read: a grant committed between the two sees the reader one page behind and may copy
    /// a record of that page into its catch-up, which the reader then receives a second time
    /// (at-least-once in that race, never lost).
    fn note_read(
        &self,
        grantee: &str,
        kind: GranteeKind,
        expired: &[(Uuid, i64)],
        to: i64,
    ) -> Result<()> {
        self.write(|tx| {
            for (consent_id, at) in expired {
                end_reads(tx, *consent_id, *at)?;
            }
            tx.execute(
                "INSERT INTO feed_readers (grantee, grantee_kind, read_to) VALUES (?1, ?2, ?3)
                 ON CONFLICT (grantee, grantee_kind) DO UPDATE SET read_to = max(read_to, excluded.read_to)",
                params![grantee, kind.as_str(), to],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::{FixedOffset, TimeDelta};
    use phr_schema::record::{IntervalFrame, Provenance, StepCount};
    use phr_schema::{Body, Record};

    use super::*;
    use crate::corrections::Range;
    use crate::Terms;

    const ACME: &str = "acme";

    fn at(minute: i64) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2026-01-05T10:00:00+09:00").unwrap()
            + TimeDelta::minutes(minute)
    }

    fn steps(device: &str, minute: i64) -> Record {
        let (start, end) = (at(minute), at(minute + 1));
        Record::new(
            device,
            "br-1",
            end,
            Provenance::sensed("test/1"),
            Body::StepCount(StepCount {
                effective_time_frame: IntervalFrame::new(start, end),
                step_count: 10 + minute % 100,
            }),
        )
    }

    /// Ann stores steps of minutes `from..to` of her band (imported: the path matters not,
    /// the feed is written by the series' triggers).
    fn store_minutes(store: &Store, person: &str, from: i64, to: i64) -> Vec<String> {
        let records: Vec<Record> = (from..to)
            .map(|m| steps(&format!("{person}-band"), m))
            .collect();
        let report = store.import_records(person, &records, Utc::now()).unwrap();
        assert_eq!(
            report.stored as usize,
            records.len(),
            "{:?}",
            report.rejected.first()
        );
        records.iter().map(|r| r.record_id.to_string()).collect()
    }

    fn open(people: &[&str]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("phr.sqlite")).unwrap();
        for p in people {
            store.add_person(p, p, "UTC").unwrap();
            store.grant_storage_consent(p, &RecordType::ALL).unwrap();
        }
        (dir, store)
    }

    fn grant(
        store: &Store,
        person: &str,
        types: &[RecordType],
        until: Option<DateTime<Utc>>,
    ) -> Uuid {
        grant_to(store, ACME, person, types, until)
    }

    fn grant_to(
        store: &Store,
        grantee: &str,
        person: &str,
        types: &[RecordType],
        until: Option<DateTime<Utc>>,
    ) -> Uuid {
        let terms = Terms {
            grantee: grantee.into(),
            grantee_kind: GranteeKind::Client,
            purpose: "research".into(),
            data_types: types.to_vec(),
            window_from: None,
            window_to: None,
            valid_until: until,
        };
        store
            .grant_consent(person, terms, person, Utc::now())
            .unwrap()
            .consent_id
    }

    /// A company's replica: pages of `limit` until `has_more` is false.
    #[derive(Default)]
    struct Replica {
        /// The company reading (`ACME` if unset).
        reader: Option<&'static str>,
        cursor: i64,
        held: HashSet<(String, String)>,
        stored: usize,
        erased: usize,
        person_erased: usize,
    }

    impl Replica {
        fn sync(&mut self, store: &Store, now: DateTime<Utc>) {
            loop {
                let page = store
                    .feed(
                        self.reader.unwrap_or(ACME),
                        GranteeKind::Client,
                        None,
                        self.cursor,
                        7,
                        now,
                    )
                    .unwrap();
                for c in &page.changes {
                    match (c.op, &c.record) {
                        (Op::Stored, Some((_, id))) => {
                            assert!(
                                self.held.insert((c.person_id.clone(), id.clone())),
                                "{id} delivered twice"
                            );
                            self.stored += 1;
                        }
                        (Op::Erased, Some((_, id))) => {
                            self.held.remove(&(c.person_id.clone(), id.clone()));
                            self.erased += 1;
                        }
                        (Op::PersonErased, None) => {
                            self.held.retain(|(p, _)| *p != c.person_id);
                            self.person_erased += 1;
                        }
                        other => panic!("malformed change {other:?}"),
                    }
                }
                self.cursor = page.last_seq;
                if !page.more {
                    return;
                }
            }
        }

        fn take(&mut self) -> (usize, usize, usize) {
            let out = (self.stored, self.erased, self.person_erased);
            (self.stored, self.erased, self.person_erased) = (0, 0, 0);
            out
        }
    }

    #[test]
    fn a_consent_edit_grant_new_then_withdraw_old_delivers_what_arrived_meanwhile() {
        let (_d, store) = open(&["ann"]);
        let old = grant(&store, "ann", &[RecordType::StepCount], None);
        store_minutes(&store, "ann", 0, 10);
        let mut acme = Replica::default();
        acme.sync(&store, Utc::now());
        assert_eq!(acme.take(), (10, 0, 0));
        store_minutes(&store, "ann", 10, 40);
        grant(&store, "ann", &RecordType::ALL, None);
        store
            .withdraw_consent("ann", old, "ann", Utc::now())
            .unwrap();
        acme.sync(&store, Utc::now());
        assert_eq!(acme.take(), (30, 0, 0), "the 30 stored meanwhile, once");
        assert_eq!(acme.held.len(), 40);
    }

    #[test]
    fn a_consent_edit_withdraw_old_then_grant_new_repeats_nothing_and_loses_nothing() {
        let (_d, store) = open(&["ann"]);
        let old = grant(&store, "ann", &[RecordType::StepCount], None);
        store_minutes(&store, "ann", 0, 10);
        let mut acme = Replica::default();
        acme.sync(&store, Utc::now());
        assert_eq!(acme.take(), (10, 0, 0));
        // Stored while the old consent held, not read before it was withdrawn.
        store_minutes(&store, "ann", 10, 13);
        store
            .withdraw_consent("ann", old, "ann", Utc::now())
            .unwrap();
        // Stored while nothing held, and passed by the company meanwhile (it saw nothing).
        store_minutes(&store, "ann", 13, 18);
        acme.sync(&store, Utc::now());
        assert_eq!(acme.take(), (0, 0, 0));
        grant(&store, "ann", &RecordType::ALL, None);
        acme.sync(&store, Utc::now());
        assert_eq!(
            acme.take(),
            (8, 0, 0),
            "the 3 not read and the 5 passed, once; not the 10 again"
        );
        assert_eq!(acme.held.len(), 18);
    }

    #[test]
    fn a_late_consent_delivers_what_was_stored_before_once() {
        let (_d, store) = open(&["ann"]);
        store_minutes(&store, "ann", 0, 10);
        let mut acme = Replica::default();
        acme.sync(&store, Utc::now());
        assert_eq!(acme.take(), (0, 0, 0));
        grant(&store, "ann", &[RecordType::StepCount], None);
        // A second consent covering the same, before the company reads: still once.
        grant(&store, "ann", &RecordType::ALL, None);
        store_minutes(&store, "ann", 10, 12);
        acme.sync(&store, Utc::now());
        assert_eq!(acme.take(), (12, 0, 0));
    }

    #[test]
    fn another_companys_catch_up_and_an_unrelated_erasure_reach_no_one_else() {
        let (_d, store) = open(&["ann", "bob", "cy"]);
        grant_to(&store, "beta", "ann", &[RecordType::StepCount], None);
        grant(&store, "bob", &[RecordType::StepCount], None);
        store_minutes(&store, "ann", 0, 10);
        store_minutes(&store, "bob", 0, 3);
        store_minutes(&store, "cy", 0, 3);
        let mut beta = Replica {
            reader: Some("beta"),
            ..Replica::default()
        };
        beta.sync(&store, Utc::now());
        assert_eq!(beta.take(), (10, 0, 0));
        // Acme reads past ann's records (it sees bob's); ann lets it see hers later: catch-up
        // rows addressed to acme's consent, which beta (with a consent covering them too)
        // must not receive again.
        let mut acme = Replica::default();
        acme.sync(&store, Utc::now());
        assert_eq!(acme.take(), (3, 0, 0));
        grant(&store, "ann", &[RecordType::StepCount], None);
        // Cy, who never consented to either company, erases everything.
        store.erase_person("cy", "cy", Utc::now()).unwrap();
        beta.sync(&store, Utc::now());
        assert_eq!(beta.take(), (0, 0, 0));
        acme.sync(&store, Utc::now());
        assert_eq!(acme.take(), (10, 0, 0));
    }

    #[test]
    fn an_expired_consent_gets_no_more_erasure_notices() {
        let (_d, store) = open(&["ann"]);
        let now = Utc::now();
        grant(
            &store,
            "ann",
            &[RecordType::StepCount],
            Some(now + TimeDelta::hours(1)),
        );
        store_minutes(&store, "ann", 0, 10);
        let mut acme = Replica::default();
        acme.sync(&store, now);
        assert_eq!(acme.take(), (10, 0, 0));
        let range = Range {
            device_id: "ann-band".into(),
            from: at(0).to_utc(),
            to: at(5).to_utc(),
        };
        store.unlink(&range, "ann", "not mine", "op", now).unwrap();
        // While in force, the company learns of it.
        let mut peek = Replica {
            cursor: acme.cursor,
            ..Replica::default()
        };
        peek.sync(&store, now);
        assert_eq!(peek.take(), (0, 5, 0));
        // After it expired: nothing, ever.
        acme.sync(&store, now + TimeDelta::hours(2));
        assert_eq!(acme.take(), (0, 0, 0));
    }

    #[test]
    fn a_renewal_after_expiry_delivers_what_arrived_meanwhile_once() {
        let (_d, store) = open(&["ann"]);
        let now = Utc::now();
        grant(
            &store,
            "ann",
            &[RecordType::StepCount],
            Some(now + TimeDelta::hours(1)),
        );
        store_minutes(&store, "ann", 0, 10);
        let mut acme = Replica::default();
        acme.sync(&store, now);
        assert_eq!(acme.take(), (10, 0, 0));
        // Arrives while the consent is lapsing; the company reads past it after expiry.
        store_minutes(&store, "ann", 10, 15);
        let later = now + TimeDelta::hours(2);
        acme.sync(&store, later);
        assert_eq!(acme.take(), (0, 0, 0));
        grant(&store, "ann", &[RecordType::StepCount], None);
        acme.sync(&store, later);
        assert_eq!(
            acme.take(),
            (5, 0, 0),
            "the 5 it passed while lapsed; not the 10 again"
        );
    }

    /// Every occurrence of `needle` in the database file and its WAL.
    fn occurrences(dir: &std::path::Path, needle: &str) -> usize {
        ["phr.sqlite", "phr.sqlite-wal"]
            .iter()
            .filter_map(|f| std::fs::read(dir.join(f)).ok())
            .map(|bytes| {
                bytes
                    .windows(needle.len())
                    .filter(|w| *w == needle.as_bytes())
                    .count()
            })
            .sum()
    }

    #[test]
    fn an_erasure_leaves_no_record_level_trace_in_the_feed_nor_in_the_file() {
        let (dir, store) = open(&["ann", "bob"]);
        grant(&store, "ann", &RecordType::ALL, None);
        grant(&store, "bob", &RecordType::ALL, None);
        let ann = store_minutes(&store, "ann", 0, 50);
        let bob = store_minutes(&store, "bob", 0, 5);
        let mut acme = Replica::default();
        acme.sync(&store, Utc::now());
        assert_eq!(acme.take(), (55, 0, 0));
        // The check can see: the records are in the file now (as record ids).
        assert!(occurrences(dir.path(), &ann[7]) > 0);

        let erasure = store.erase_person("ann", "ann", Utc::now()).unwrap();
        assert_eq!(erasure.records, 50);
        assert!(erasure.feed_rows_removed >= 100, "{erasure:?}");
        assert!(erasure.overwritten);
        let named: i64 = store
            .read(|c| {
                Ok(c.query_row(
                    "SELECT count(*) FROM changes WHERE person_id = 'ann' AND (op <> 'person_erased' OR record_id <> '' OR start_ms <> 0)",
                    [],
                    |r| r.get(0),
                )?)
            })
            .unwrap();
        assert_eq!(named, 0);
        for id in &ann {
            assert_eq!(
                occurrences(dir.path(), id),
                0,
                "{id} still readable in the file"
            );
        }
        assert!(occurrences(dir.path(), &bob[0]) > 0);
        // The company is told once to drop everything of ann; bob's stay.
        acme.sync(&store, Utc::now());
        assert_eq!(acme.take(), (0, 0, 1));
        assert_eq!(acme.held.len(), 5);
    }

    #[test]
    fn a_page_is_never_empty_while_visible_changes_remain() {
        let (_d, store) = open(&["ann", "bob"]);
        grant(&store, "ann", &[RecordType::StepCount], None);
        grant(&store, "bob", &[RecordType::SleepEpisode], None);
        // Far more changes the company may not see (bob's steps) than one page used to
        // examine, then one of ann's.
        for chunk in 0..25 {
            store_minutes(&store, "bob", chunk * 1000, (chunk + 1) * 1000);
        }
        store_minutes(&store, "ann", 0, 1);
        // No time limit: the test is about the count of rows examined, not about speed.
        store.set_page_time_budget(Duration::from_secs(3600));
        let page = store
            .feed(ACME, GranteeKind::Client, None, 0, 10, Utc::now())
            .unwrap();
        assert_eq!((page.changes.len(), page.more), (1, false));
    }

    #[test]
    fn a_page_scans_the_feed_in_order_without_sorting_it() {
        let (_d, store) = open(&["ann"]);
        let plan: Vec<String> = store
            .read(|c| {
                let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {FEED_SCAN}"))?;
                let rows = stmt.query_map(params![0, "[\"ann\"]"], |r| r.get::<_, String>(3))?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .unwrap();
        assert!(
            plan.iter().any(|l| l.contains("INTEGER PRIMARY KEY")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|l| l.contains("TEMP B-TREE")), "{plan:?}");
    }

    #[test]
    fn a_page_out_of_time_ends_early_with_has_more_and_the_cursor_moved_on() {
        let (_d, store) = open(&["ann", "bob"]);
        grant(&store, "ann", &[RecordType::StepCount], None);
        grant(&store, "bob", &[RecordType::SleepEpisode], None);
        for chunk in 0..3 {
            store_minutes(&store, "bob", chunk * 1000, (chunk + 1) * 1000);
        }
        store_minutes(&store, "ann", 0, 1);
        store.set_page_time_budget(Duration::ZERO);
        let mut cursor = 0;
        let mut pages = 0;
        let mut delivered = 0;
        loop {
            let page = store
                .feed(ACME, GranteeKind::Client, None, cursor, 10, Utc::now())
                .unwrap();
            pages += 1;
            delivered += page.changes.len();
            assert!(
                page.last_seq > cursor || !page.more,
                "no progress at {cursor}"
            );
            cursor = page.last_seq;
            if !page.more {
                break;
            }
        }
        // One budget check per 1024 rows examined: the 3,000 invisible rows take 3 pages.
        assert_eq!((delivered, pages), (1, 3));
    }
}
