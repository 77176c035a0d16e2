//! The durable outbox: batches wait here, on disk, until the gateway's application-level ack
//! for them arrives. A PUBACK is not enough (a broker that crashes loses QoS-1 messages), so
//! only [`Outbox::remove`] after an ack takes a batch out.
//!
//! SQLite in WAL mode with `synchronous=FULL`: a batch returned from [`Outbox::push`] survives
//! a power cut. Batches leave in the order they entered (`seq`).
//!
//! Bound: at most `max_batches` batches. At the bound [`Outbox::push`] refuses with
//! [`Error::OutboxFull`] and the producer holds its data and retries (back-pressure); nothing
//! already in the outbox is ever evicted, because dropping measurements silently is worse
//! than pausing.

use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use phr_schema::{Batch, Record};

use crate::{Error, Result};

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

#[derive(Debug)]
pub struct Outbox {
    conn: Connection,
    max_batches: usize,
}

impl Outbox {
    pub fn open(path: &Path, max_batches: usize) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS outbox (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 batch_id TEXT NOT NULL UNIQUE,
                 device_id TEXT NOT NULL,
                 records INTEGER NOT NULL,
                 payload BLOB NOT NULL,
                 created_at TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS cursor (
                 device_id TEXT PRIMARY KEY,
                 until TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS device_state (
                 device_id TEXT PRIMARY KEY,
                 state TEXT NOT NULL
             );",
        )?;
        Ok(Self { conn, max_batches })
    }

    /// Stores batches and, in the same transaction, moves each device's high-water mark and
    /// saves each device's decoding state (`states`: device id and state as JSON), so a crash
    /// leaves either all or none: no measurement is skipped, lost or counted twice.
    pub fn push(
        &mut self,
        batches: &[Batch],
        cursors: &[(String, DateTime<Utc>)],
        states: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let depth = self.depth()?;
        if depth + batches.len() > self.max_batches {
            return Err(Error::OutboxFull {
                depth,
                max: self.max_batches,
            });
        }
        let tx = self.conn.transaction()?;
        {
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
            let mut cursor = tx.prepare_cached(
                "INSERT INTO cursor (device_id, until) VALUES (?1, ?2)
                 ON CONFLICT(device_id) DO UPDATE SET until = excluded.until",
            )?;
            for (device, until) in cursors {
                cursor.execute(params![device, until.to_rfc3339()])?;
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

    /// Removes acked batches in one transaction; returns those that were here (an ack for a
    /// batch already removed, or another bridge instance's, changes nothing).
    pub fn remove(&mut self, batch_ids: &[Uuid]) -> Result<Vec<Uuid>> {
        let tx = self.conn.transaction()?;
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

    /// Number of batches waiting.
    pub fn depth(&self) -> Result<usize> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?;
        Ok(n as usize)
    }

    /// Number of records in waiting batches.
    pub fn depth_records(&self) -> Result<u64> {
        let n: i64 =
            self.conn
                .query_row("SELECT coalesce(sum(records), 0) FROM outbox", [], |r| {
                    r.get(0)
                })?;
        Ok(n as u64)
    }

    /// Every device's high-water mark, by device id.
    pub fn cursors(&self) -> Result<Vec<(String, DateTime<Utc>)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT device_id, until FROM cursor ORDER BY device_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (device, until) = row?;
            let until = DateTime::parse_from_rfc3339(&until)
                .map_err(|_| Error::Corrupt("cursor time"))?
                .with_timezone(&Utc);
            out.push((device, until));
        }
        Ok(out)
    }

    /// Every device's saved decoding state (JSON), by device id.
    pub fn states(&self) -> Result<Vec<(String, String)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT device_id, state FROM device_state ORDER BY device_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How far data of `device_id` has been put into the outbox.
    pub fn cursor(&self, device_id: &str) -> Result<Option<DateTime<Utc>>> {
        let until: Option<String> = self
            .conn
            .query_row(
                "SELECT until FROM cursor WHERE device_id = ?1",
                [device_id],
                |r| r.get(0),
            )
            .optional()?;
        until
            .map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| Error::Corrupt("cursor time"))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(device: &str) -> Batch {
        Batch::new("bridge", device, Uuid::new_v4(), vec![])
    }

    #[test]
    fn batches_survive_reopen_and_leave_in_order_only_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.sqlite");
        let now = Utc::now();
        let (a, b) = (batch("d1"), batch("d2"));
        {
            let mut o = Outbox::open(&path, 10).unwrap();
            let state = vec![("d1".to_owned(), r#"{"v":1}"#.to_owned())];
            o.push(&[a.clone(), b.clone()], &[("d1".into(), now)], &state, now)
                .unwrap();
        }
        let mut o = Outbox::open(&path, 10).unwrap();
        assert_eq!(o.depth().unwrap(), 2);
        let p = o.pending(10).unwrap();
        assert_eq!(
            p.iter().map(|p| p.batch_id).collect::<Vec<_>>(),
            vec![a.batch_id, b.batch_id]
        );
        let decoded: Batch = serde_json::from_slice(&p[0].payload).unwrap();
        assert_eq!(decoded, a);
        assert_eq!(
            o.cursor("d1").unwrap().map(|t| t.timestamp()),
            Some(now.timestamp())
        );
        assert_eq!(o.cursor("d2").unwrap(), None);
        assert_eq!(
            o.states().unwrap(),
            vec![("d1".to_owned(), r#"{"v":1}"#.to_owned())],
            "device state saved with its batches"
        );
        assert_eq!(o.remove(&[a.batch_id]).unwrap(), vec![a.batch_id]);
        assert!(
            o.remove(&[a.batch_id]).unwrap().is_empty(),
            "a second ack is harmless"
        );
        assert_eq!(o.depth().unwrap(), 1);
    }

    #[test]
    fn full_outbox_refuses_without_evicting() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(&dir.path().join("o.sqlite"), 2).unwrap();
        let now = Utc::now();
        o.push(&[batch("d"), batch("d")], &[], &[], now).unwrap();
        let err = o
            .push(
                &[batch("d")],
                &[("d".into(), now)],
                &[("d".into(), "{}".into())],
                now,
            )
            .unwrap_err();
        assert!(
            matches!(err, Error::OutboxFull { depth: 2, max: 2 }),
            "{err}"
        );
        assert_eq!(o.depth().unwrap(), 2);
        assert_eq!(
            o.cursor("d").unwrap(),
            None,
            "a refused push moves no cursor"
        );
        assert!(
            o.states().unwrap().is_empty(),
            "a refused push saves no state"
        );
    }
}
