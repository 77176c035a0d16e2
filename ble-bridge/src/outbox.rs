//! The durable outbox: batches wait here, on disk, until the gateway's application-level ack
//! for them arrives. A PUBACK is not enough (a broker that crashes loses QoS-1 messages), so
//! only an ack ([`Outbox::settle`]) takes a batch out.
//!
//! SQLite in WAL mode with `synchronous=FULL`: a batch returned from [`Outbox::push`] survives
//! a power cut. Batches leave in the order they entered (`seq`). Several processes may open
//! the same file at once (the daemon, and the operator's `phr-bridge status` or
//! `dead-letter replay`): every write is one `BEGIN IMMEDIATE` transaction and a busy file is
//! waited for (`busy_timeout`), so a replay while the daemon runs is safe.
//!
//! # Bounds
//! At most `max_batches` batches. At the bound [`Outbox::push`] refuses with
//! [`Error::OutboxFull`] and the producer holds its data and retries (back-pressure); nothing
//! already in the outbox is ever evicted, because dropping measurements silently is worse
//! than pausing.
//!
//! # What an ack does ([`Outbox::settle`])
//! In ONE transaction with the batch's removal (so a crash leaves either the batch pending or
//! its records settled, never both and never neither):
//!
//! | the gateway said | the records |
//! | --- | --- |
//! | stored, duplicate, quarantined (held for the person, e.g. until consent) | leave: durable at the gateway |
//! | rejected `erased_by_person` | discarded: the person asked for their data to be gone (counted per device in `discarded`, logged) |
//! | rejected for any other reason, or a `batch_error` (then every record) | moved to the **dead-letter** table with reason, batch id, device and time |
//!
//! Dead letters wait for the operator: `phr-bridge dead-letter list | replay | drop`.
//! [`Outbox::replay`] moves them back into the outbox as new batches (the same records, so
//! the same record ids: the gateway deduplicates, a replay never stores anything twice);
//! [`Outbox::drop_dead_letters`] discards them (counted, like erasures).
//!
//! The dead-letter table is bounded by records (`max_dead_records`). A settlement that would
//! pass the bound is not made: the batch stays pending in the outbox (it is resent and
//! refused again until the operator replays or drops dead letters) and
//! [`Settlement::held_for_space`] says so. Nothing is ever dropped to make room.
//!
//! # History marks
//! Per device and record type, the end of the latest measurement made durable here
//! (`marks`), moved in the same transaction as the batches: the bridge asks a device for each
//! type's history from that type's own mark. (Schema version 1; a version-0 file's one mark
//! per device becomes the mark of every type when it is opened.)

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use uuid::Uuid;

use phr_schema::{Ack, Batch, Reason, Record, RecordType};

use crate::{Error, Result};

/// The schema this code writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

/// Records the dead-letter table holds at most unless configured otherwise: about a year of
/// one band's minute steps and heart rate, a few hundred MB.
pub const DEFAULT_MAX_DEAD_RECORDS: u64 = 500_000;

/// Groups one device's records, in measured order, into batches. (They are sealed with the
/// channel key when published, not here: the outbox outlives a change of the gateway's key.)
pub fn batches(
    bridge_id: &str,
    device_id: &str,
    mut records: Vec<Record>,
    size: usize,
) -> Vec<Batch> {
    records.sort_by_key(|r| r.measured().0);
    records
        .chunks(size.max(1))
        .map(|c| Batch::new(bridge_id, device_id, Uuid::new_v4(), c.to_vec()))
        .collect()
}

/// A batch waiting for its ack.
#[derive(Debug, Clone)]
pub struct Pending {
    pub seq: i64,
    pub batch_id: Uuid,
    pub device_id: String,
    pub payload: Vec<u8>,
}

/// A history mark: data of `record_type` from `device_id` is durable up to `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark<'a> {
    pub device_id: &'a str,
    pub record_type: RecordType,
    pub until: DateTime<Utc>,
}

/// What [`Outbox::settle`] did with a set of acks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settlement {
    /// Batches taken out of the outbox (their acks count).
    pub removed: Vec<Uuid>,
    /// Records moved to the dead-letter table.
    pub dead_lettered: u64,
    /// Records discarded because their person erased their data (`erased_by_person`).
    pub discarded_erased: u64,
    /// Batches left pending because the dead-letter table is full.
    pub held_for_space: Vec<Uuid>,
    /// Batches left pending because their stored payload could not be read back.
    pub unreadable: Vec<Uuid>,
    /// Rejections naming a record index the batch does not have (ignored).
    pub unknown_indexes: u64,
}

/// Dead-lettered records of one device for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterGroup {
    pub device_id: String,
    pub reason: String,
    /// Set when the group is per batch ([`Outbox::dead_letter_batches`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    pub records: u64,
    /// Earliest measured start and latest measured end (RFC 3339, UTC).
    pub measured_from: String,
    pub measured_to: String,
    /// When the first and the last of them were dead-lettered.
    pub first_at: String,
    pub last_at: String,
}

/// Which dead letters an operator command applies to; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    pub device_id: Option<String>,
    /// A [`Reason`] code (`device_not_on_bridge`, ...).
    pub reason: Option<String>,
}

/// What [`Outbox::replay`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    pub records: u64,
    pub batches: usize,
}

/// Records discarded for good, per device and cause (erasure, operator's drop).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Discarded {
    pub device_id: String,
    /// `erased_by_person`, or `operator_drop:<reason>`.
    pub cause: String,
    pub records: u64,
}

#[derive(Debug)]
pub struct Outbox {
    conn: Connection,
    max_batches: usize,
    max_dead_records: u64,
}

impl Outbox {
    pub fn open(path: &Path, max_batches: usize) -> Result<Self> {
        let mut conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             PRAGMA busy_timeout=5000;",
        )?;
        migrate(&mut conn)?;
        Ok(Self {
            conn,
            max_batches,
            max_dead_records: DEFAULT_MAX_DEAD_RECORDS,
        })
    }

    /// Sets the dead-letter bound (records).
    pub fn with_max_dead_records(mut self, max: u64) -> Self {
        self.max_dead_records = max;
        self
    }

    fn write(&mut self) -> Result<rusqlite::Transaction<'_>> {
        // IMMEDIATE: take the write lock first, so another process's writer makes this one
        // wait (busy_timeout) instead of failing on a read-to-write upgrade.
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// Stores batches and, in the same transaction, moves each device's marks and saves each
    /// device's decoding state (`states`: device id and state as JSON), so a crash leaves
    /// either all or none: no measurement is skipped, lost or counted twice. A `(device,
    /// until)` in `cursors` sets the mark of every record type of that device (the simulator
    /// and the demo generate every type up to one instant); see [`Outbox::push_marked`] for
    /// marks per type.
    pub fn push(
        &mut self,
        batches: &[Batch],
        cursors: &[(String, DateTime<Utc>)],
        states: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let marks: Vec<Mark<'_>> = cursors
            .iter()
            .flat_map(|(device, until)| {
                RecordType::ALL.into_iter().map(move |record_type| Mark {
                    device_id: device,
                    record_type,
                    until: *until,
                })
            })
            .collect();
        self.push_marked(batches, &marks, states, now)
    }

    /// As [`Outbox::push`], with one mark per device and record type.
    pub fn push_marked(
        &mut self,
        batches: &[Batch],
        marks: &[Mark<'_>],
        states: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let max = self.max_batches;
        let tx = self.write()?;
        let depth = count(&tx, "SELECT count(*) FROM outbox")? as usize;
        if depth + batches.len() > max {
            return Err(Error::OutboxFull { depth, max });
        }
        insert_batches(&tx, batches, now)?;
        {
            let mut mark = tx.prepare_cached(
                "INSERT INTO marks (device_id, record_type, until) VALUES (?1, ?2, ?3)
                 ON CONFLICT(device_id, record_type) DO UPDATE SET until = excluded.until",
            )?;
            for m in marks {
                mark.execute(params![
                    m.device_id,
                    m.record_type.as_str(),
                    m.until.to_rfc3339()
                ])?;
            }
            let mut state = tx.prepare_cached(
                "INSERT INTO device_state (device_id, state) VALUES (?1, ?2)
                 ON CONFLICT(device_id) DO UPDATE SET state = excluded.state",
            )?;
            for (device, json) in states {
                state.execute(params![device, json])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Up to `limit` batches in the order they were pushed.
    pub fn pending(&self, limit: usize) -> Result<Vec<Pending>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, batch_id, device_id, payload FROM outbox ORDER BY seq LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get(2)?,
                r.get(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, id, device_id, payload) = row?;
            let batch_id = Uuid::parse_str(&id).map_err(|_| Error::Corrupt("batch id"))?;
            out.push(Pending {
                seq,
                batch_id,
                device_id,
                payload,
            });
        }
        Ok(out)
    }

    /// Removes batches in one transaction, whatever their acks said; returns those that were
    /// here. The publisher settles acks with [`Outbox::settle`] instead, which keeps what the
    /// gateway refused.
    pub fn remove(&mut self, batch_ids: &[Uuid]) -> Result<Vec<Uuid>> {
        let tx = self.write()?;
        let mut removed = Vec::new();
        {
            let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE batch_id = ?1")?;
            for id in batch_ids {
                if delete.execute([id.to_string()])? > 0 {
                    removed.push(*id);
                }
            }
        }
        tx.commit()?;
        Ok(removed)
    }

    /// Applies the gateway's acks (rules in the module docs), all in one transaction. An ack
    /// for a batch that is not here (another bridge instance's, or one already settled)
    /// changes nothing.
    pub fn settle(&mut self, acks: &[Ack], now: DateTime<Utc>) -> Result<Settlement> {
        let max_dead = self.max_dead_records;
        let tx = self.write()?;
        let mut out = Settlement::default();
        let mut dead_depth = count(&tx, "SELECT count(*) FROM dead_letter")?;
        for ack in acks {
            let Some(batch_id) = ack.batch_id else {
                continue;
            };
            let payload: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT payload FROM outbox WHERE batch_id = ?1",
                    [batch_id.to_string()],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(payload) = payload else {
                continue;
            };
            let refused = refused(ack);
            let mut dead_count = 0u64;
            let mut erased = 0u64;
            if !refused.is_empty() || ack.batch_error.is_some() {
                let Ok(batch) = serde_json::from_slice::<Batch>(&payload) else {
                    out.unreadable.push(batch_id);
                    continue;
                };
                let mut dead = Vec::new();
                let all: Vec<(usize, Reason, Option<&str>)>;
                let refused = match ack.batch_error {
                    Some(reason) => {
                        all = (0..batch.records.len())
                            .map(|i| (i, reason, None))
                            .collect();
                        &all
                    }
                    None => &refused,
                };
                for &(index, reason, detail) in refused {
                    let Some(record) = batch.records.get(index) else {
                        out.unknown_indexes += 1;
                        continue;
                    };
                    if reason == Reason::ErasedByPerson {
                        erased += 1;
                    } else {
                        dead.push((index, reason, detail, record));
                    }
                }
                if !dead.is_empty() && dead_depth + dead.len() as u64 > max_dead {
                    // Marked, so that `phr-bridge status` can say why it is still here.
                    tx.execute(
                        "UPDATE outbox SET held = 'dead_letter_full' WHERE batch_id = ?1",
                        [batch_id.to_string()],
                    )?;
                    out.held_for_space.push(batch_id);
                    continue;
                }
                let mut insert = tx.prepare_cached(
                    "INSERT INTO dead_letter (batch_id, bridge_id, device_id, record_index,
                         record_id, record_type, measured_start, measured_end, reason, detail,
                         dead_at, record)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )?;
                for &(index, reason, detail, record) in &dead {
                    let (start, end) = record.measured();
                    insert.execute(params![
                        batch_id.to_string(),
                        batch.bridge_id,
                        batch.device_id,
                        index as i64,
                        record.record_id.to_string(),
                        record.record_type().as_str(),
                        start.with_timezone(&Utc).to_rfc3339(),
                        end.with_timezone(&Utc).to_rfc3339(),
                        reason.code(),
                        detail,
                        now.to_rfc3339(),
                        serde_json::to_string(record)?,
                    ])?;
                }
                if erased > 0 {
                    add_discarded(&tx, &batch.device_id, Reason::ErasedByPerson.code(), erased)?;
                }
                dead_count = dead.len() as u64;
            }
            tx.execute(
                "DELETE FROM outbox WHERE batch_id = ?1",
                [batch_id.to_string()],
            )?;
            dead_depth += dead_count;
            out.dead_lettered += dead_count;
            out.discarded_erased += erased;
            out.removed.push(batch_id);
        }
        tx.commit()?;
        Ok(out)
    }

    /// Dead letters per device and reason, with counts and measured ranges.
    pub fn dead_letter_groups(&self) -> Result<Vec<DeadLetterGroup>> {
        self.groups(
            "SELECT device_id, reason, NULL, count(*), min(measured_start), max(measured_end),
                    min(dead_at), max(dead_at)
             FROM dead_letter GROUP BY device_id, reason ORDER BY device_id, reason",
        )
    }

    /// Dead letters per refused batch (and reason), oldest first.
    pub fn dead_letter_batches(&self) -> Result<Vec<DeadLetterGroup>> {
        self.groups(
            "SELECT device_id, reason, batch_id, count(*), min(measured_start),
                    max(measured_end), min(dead_at), max(dead_at)
             FROM dead_letter GROUP BY batch_id, device_id, reason ORDER BY min(id)",
        )
    }

    fn groups(&self, sql: &str) -> Result<Vec<DeadLetterGroup>> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| {
            Ok(DeadLetterGroup {
                device_id: r.get(0)?,
                reason: r.get(1)?,
                batch_id: r.get(2)?,
                records: r.get::<_, i64>(3)? as u64,
                measured_from: r.get(4)?,
                measured_to: r.get(5)?,
                first_at: r.get(6)?,
                last_at: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records in the dead-letter table.
    pub fn dead_letter_depth(&self) -> Result<u64> {
        count(&self.conn, "SELECT count(*) FROM dead_letter")
    }

    /// The dead-letter bound, in records.
    pub fn max_dead_records(&self) -> u64 {
        self.max_dead_records
    }

    /// Moves the dead letters `filter` matches back into the outbox, as new batches of at
    /// most `batch_records` records per device (measured order), in one transaction. Refuses
    /// with [`Error::OutboxFull`], moving nothing, when the outbox has no room for them.
    pub fn replay(
        &mut self,
        filter: &DeadLetterFilter,
        batch_records: usize,
        now: DateTime<Utc>,
    ) -> Result<Replayed> {
        let max = self.max_batches;
        let tx = self.write()?;
        // (bridge, device) -> (dead-letter row ids, records)
        let mut by_device: BTreeMap<(String, String), (Vec<i64>, Vec<Record>)> = BTreeMap::new();
        {
            let mut stmt = tx.prepare(
                "SELECT id, bridge_id, device_id, record FROM dead_letter
                 WHERE (?1 IS NULL OR device_id = ?1) AND (?2 IS NULL OR reason = ?2)
                 ORDER BY id",
            )?;
            let rows = stmt.query_map(params![filter.device_id, filter.reason], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            for row in rows {
                let (id, bridge, device, json) = row?;
                let record: Record = serde_json::from_str(&json)
                    .map_err(|_| Error::Corrupt("dead-lettered record"))?;
                let entry = by_device.entry((bridge, device)).or_default();
                entry.0.push(id);
                entry.1.push(record);
            }
        }
        let mut out = Replayed::default();
        let mut new = Vec::new();
        let mut ids = Vec::new();
        for ((bridge, device), (rows, records)) in by_device {
            out.records += records.len() as u64;
            new.extend(batches(&bridge, &device, records, batch_records));
            ids.extend(rows);
        }
        let depth = count(&tx, "SELECT count(*) FROM outbox")? as usize;
        if depth + new.len() > max {
            return Err(Error::OutboxFull { depth, max });
        }
        insert_batches(&tx, &new, now)?;
        {
            let mut delete = tx.prepare_cached("DELETE FROM dead_letter WHERE id = ?1")?;
            for id in ids {
                delete.execute([id])?;
            }
        }
        tx.commit()?;
        out.batches = new.len();
        Ok(out)
    }

    /// Discards the dead letters `filter` matches, for good; counts them as discarded by the
    /// operator (`operator_drop:<reason>`). Returns how many.
    pub fn drop_dead_letters(&mut self, filter: &DeadLetterFilter) -> Result<u64> {
        let tx = self.write()?;
        let groups: Vec<(String, String, i64)> = {
            let mut stmt = tx.prepare(
                "SELECT device_id, reason, count(*) FROM dead_letter
                 WHERE (?1 IS NULL OR device_id = ?1) AND (?2 IS NULL OR reason = ?2)
                 GROUP BY device_id, reason",
            )?;
            let rows = stmt.query_map(params![filter.device_id, filter.reason], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut total = 0u64;
        for (device, reason, n) in groups {
            add_discarded(&tx, &device, &format!("operator_drop:{reason}"), n as u64)?;
            total += n as u64;
        }
        tx.execute(
            "DELETE FROM dead_letter
             WHERE (?1 IS NULL OR device_id = ?1) AND (?2 IS NULL OR reason = ?2)",
            params![filter.device_id, filter.reason],
        )?;
        tx.commit()?;
        Ok(total)
    }

    /// Records discarded for good, per device and cause.
    pub fn discarded(&self) -> Result<Vec<Discarded>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT device_id, cause, records FROM discarded ORDER BY device_id, cause",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Discarded {
                device_id: r.get(0)?,
                cause: r.get(1)?,
                records: r.get::<_, i64>(2)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Number of batches waiting.
    pub fn depth(&self) -> Result<usize> {
        Ok(count(&self.conn, "SELECT count(*) FROM outbox")? as usize)
    }

    /// Number of records in waiting batches.
    pub fn depth_records(&self) -> Result<u64> {
        count(&self.conn, "SELECT coalesce(sum(records), 0) FROM outbox")
    }

    /// Every mark, by device and record type.
    pub fn marks(&self) -> Result<Vec<(String, RecordType, DateTime<Utc>)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT device_id, record_type, until FROM marks ORDER BY device_id, record_type",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (device, kind, until) = row?;
            let kind = kind
                .parse::<RecordType>()
                .map_err(|_| Error::Corrupt("mark record type"))?;
            out.push((device, kind, parse_time(&until)?));
        }
        Ok(out)
    }

    /// Every device's earliest mark (from there on, every type's history is still wanted).
    pub fn cursors(&self) -> Result<Vec<(String, DateTime<Utc>)>> {
        let mut out: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        for (device, _, until) in self.marks()? {
            out.entry(device)
                .and_modify(|t| *t = (*t).min(until))
                .or_insert(until);
        }
        Ok(out.into_iter().collect())
    }

    /// Every device's saved decoding state (JSON), by device id.
    pub fn states(&self) -> Result<Vec<(String, String)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT device_id, state FROM device_state ORDER BY device_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How far every type of data of `device_id` has been put into the outbox: its earliest
    /// mark.
    pub fn cursor(&self, device_id: &str) -> Result<Option<DateTime<Utc>>> {
        let until: Option<String> = self.conn.query_row(
            "SELECT min(until) FROM marks WHERE device_id = ?1",
            [device_id],
            |r| r.get(0),
        )?;
        until.as_deref().map(parse_time).transpose()
    }

    /// How far data of `record_type` from `device_id` has been put into the outbox.
    pub fn mark(&self, device_id: &str, record_type: RecordType) -> Result<Option<DateTime<Utc>>> {
        let until: Option<String> = self
            .conn
            .query_row(
                "SELECT until FROM marks WHERE device_id = ?1 AND record_type = ?2",
                [device_id, record_type.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        until.as_deref().map(parse_time).transpose()
    }
}

/// What `phr-bridge status` shows: the outbox, the marks, the dead letters and what was
/// discarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    pub outbox_batches: usize,
    pub outbox_records: u64,
    /// Batches kept pending because the dead-letter table was full when their ack came.
    pub held_for_dead_letter_space: u64,
    /// Device → record type → RFC 3339 mark.
    pub marks: BTreeMap<String, BTreeMap<String, String>>,
    pub dead_letter_records: u64,
    pub dead_letters: Vec<DeadLetterGroup>,
    pub discarded: Vec<Discarded>,
}

impl StatusReport {
    pub fn read(outbox: &Outbox) -> Result<Self> {
        let mut marks: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (device, kind, until) in outbox.marks()? {
            marks
                .entry(device)
                .or_default()
                .insert(kind.as_str().to_owned(), until.to_rfc3339());
        }
        Ok(Self {
            outbox_batches: outbox.depth()?,
            outbox_records: outbox.depth_records()?,
            held_for_dead_letter_space: count(
                &outbox.conn,
                "SELECT count(*) FROM outbox WHERE held = 'dead_letter_full'",
            )?,
            marks,
            dead_letter_records: outbox.dead_letter_depth()?,
            dead_letters: outbox.dead_letter_groups()?,
            discarded: outbox.discarded()?,
        })
    }

    /// The report as lines of text.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "outbox: {} batches, {} records waiting for the gateway",
            self.outbox_batches, self.outbox_records
        );
        if self.held_for_dead_letter_space > 0 {
            let _ = writeln!(
                out,
                "  {} refused batches held in the outbox: the dead-letter table is full \
                 (phr-bridge dead-letter replay or drop)",
                self.held_for_dead_letter_space
            );
        }
        for (device, kinds) in &self.marks {
            for (kind, until) in kinds {
                let _ = writeln!(out, "  {device:<24} {kind:<14} data up to {until}");
            }
        }
        let _ = writeln!(
            out,
            "dead letters: {} records refused by the gateway, kept (phr-bridge dead-letter list)",
            self.dead_letter_records
        );
        for g in &self.dead_letters {
            let _ = writeln!(
                out,
                "  {:<24} {:<24} {:>7} records  measured {} .. {}",
                g.device_id, g.reason, g.records, g.measured_from, g.measured_to
            );
        }
        for d in &self.discarded {
            let _ = writeln!(
                out,
                "discarded: {:<24} {:<32} {:>7} records",
                d.device_id, d.cause, d.records
            );
        }
        out
    }
}

/// The refused records of an ack: `(index, reason, detail)`, one per index (the first
/// named), in index order.
fn refused(ack: &Ack) -> Vec<(usize, Reason, Option<&str>)> {
    let mut by_index: BTreeMap<usize, (Reason, Option<&str>)> = BTreeMap::new();
    for r in &ack.rejected {
        by_index
            .entry(r.index)
            .or_insert((r.reason, r.detail.as_deref()));
    }
    by_index
        .into_iter()
        .map(|(i, (reason, detail))| (i, reason, detail))
        .collect()
}

fn insert_batches(
    tx: &rusqlite::Transaction<'_>,
    batches: &[Batch],
    now: DateTime<Utc>,
) -> Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO outbox (batch_id, device_id, records, payload, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for batch in batches {
        let payload = serde_json::to_vec(batch)?;
        insert.execute(params![
            batch.batch_id.to_string(),
            batch.device_id,
            batch.records.len() as i64,
            payload,
            now.to_rfc3339(),
        ])?;
    }
    Ok(())
}

fn add_discarded(tx: &rusqlite::Transaction<'_>, device: &str, cause: &str, n: u64) -> Result<()> {
    tx.execute(
        "INSERT INTO discarded (device_id, cause, records) VALUES (?1, ?2, ?3)
         ON CONFLICT(device_id, cause) DO UPDATE SET records = records + excluded.records",
        params![device, cause, n as i64],
    )?;
    Ok(())
}

fn count(conn: &Connection, sql: &str) -> Result<u64> {
    let n: i64 = conn.query_row(sql, [], |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

fn parse_time(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| Error::Corrupt("mark time"))
}

/// Creates the tables, and brings a file of an older schema to [`SCHEMA_VERSION`] in one
/// transaction (two processes opening an old file at once: the second finds it done).
fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(Error::Io(format!(
            "the outbox was written by a newer phr-bridge (schema {version}; this one knows {SCHEMA_VERSION})"
        )));
    }
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS outbox (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             batch_id TEXT NOT NULL UNIQUE,
             device_id TEXT NOT NULL,
             records INTEGER NOT NULL,
             payload BLOB NOT NULL,
             created_at TEXT NOT NULL,
             held TEXT
         );
         CREATE TABLE IF NOT EXISTS marks (
             device_id TEXT NOT NULL,
             record_type TEXT NOT NULL,
             until TEXT NOT NULL,
             PRIMARY KEY (device_id, record_type)
         );
         CREATE TABLE IF NOT EXISTS device_state (
             device_id TEXT PRIMARY KEY,
             state TEXT NOT NULL
         );
         CREATE TABLE IF NOT EXISTS dead_letter (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             batch_id TEXT NOT NULL,
             bridge_id TEXT NOT NULL,
             device_id TEXT NOT NULL,
             record_index INTEGER NOT NULL,
             record_id TEXT NOT NULL,
             record_type TEXT NOT NULL,
             measured_start TEXT NOT NULL,
             measured_end TEXT NOT NULL,
             reason TEXT NOT NULL,
             detail TEXT,
             dead_at TEXT NOT NULL,
             record TEXT NOT NULL
         );
         CREATE INDEX IF NOT EXISTS dead_letter_device_reason
             ON dead_letter (device_id, reason);
         CREATE TABLE IF NOT EXISTS discarded (
             device_id TEXT NOT NULL,
             cause TEXT NOT NULL,
             records INTEGER NOT NULL,
             PRIMARY KEY (device_id, cause)
         );",
    )?;
    if version < 1 {
        let has_held: bool = tx.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('outbox') WHERE name = 'held'",
            [],
            |r| r.get(0),
        )?;
        if !has_held {
            tx.execute_batch("ALTER TABLE outbox ADD COLUMN held TEXT;")?;
        }
        // Version 0 had one mark per device (`cursor`), moved by whichever type came last:
        // it becomes the mark of every type (the best known; a type that was behind it had
        // already lost its history to the old rule).
        let old: bool = tx.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'cursor'",
            [],
            |r| r.get(0),
        )?;
        if old {
            for kind in RecordType::ALL {
                tx.execute(
                    "INSERT OR IGNORE INTO marks (device_id, record_type, until)
                     SELECT device_id, ?1, until FROM cursor",
                    [kind.as_str()],
                )?;
            }
            tx.execute_batch("DROP TABLE cursor;")?;
        }
    }
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests;
