//! What the owner's dashboard shows of pairing (`phr_gateway::dashboard::pairing`): the owner's
//! recent pairings, with tries used and why one was refused, and the enrolled bridges they
//! have used. Reads only: the rules live in [`super::pairing`].

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::Store;
use crate::Result;

/// One of the owner's pairings as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingSummary {
    pub pairing_id: uuid::Uuid,
    pub bridge_id: String,
    pub device_id: String,
    pub started_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// `pending`, `confirmed` or `refused` (a pending one past `expires_at` has expired).
    pub state: String,
    /// Wrong codes typed so far.
    pub attempts: i64,
    /// Why it was refused: a [`super::pairing::Refusal`] or
    /// [`super::pairing::StartRefusal`] code.
    pub refusal: Option<String>,
    /// Whether the bridge has reported the device (confirming needs it).
    pub reported: bool,
}

const COLUMNS: &str =
    "pairing_id, bridge_id, device_id, created_at_ms, expires_at_ms, state, attempts,
     refusal, reported_address IS NOT NULL OR reported_serial IS NOT NULL";

fn summary(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, PairingSummary)> {
    Ok((
        r.get::<_, String>(0)?,
        PairingSummary {
            pairing_id: uuid::Uuid::nil(),
            bridge_id: r.get(1)?,
            device_id: r.get(2)?,
            started_at: DateTime::from_timestamp_millis(r.get(3)?).unwrap_or_default(),
            expires_at: DateTime::from_timestamp_millis(r.get(4)?).unwrap_or_default(),
            state: r.get(5)?,
            attempts: r.get(6)?,
            refusal: r.get(7)?,
            reported: r.get(8)?,
        },
    ))
}

impl Store {
    /// `person_id`'s pairing `pairing_id`, if it is theirs.
    pub fn pairing_summary(
        &self,
        person_id: &str,
        pairing_id: uuid::Uuid,
    ) -> Result<Option<PairingSummary>> {
        self.read(|conn| {
            let row = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM pairings WHERE pairing_id = ?1 AND person_id = ?2"
                ))?
                .query_row(params![pairing_id.to_string(), person_id], summary)
                .optional()?;
            Ok(row.map(|(_, mut p)| {
                p.pairing_id = pairing_id;
                p
            }))
        })
    }

    /// `person_id`'s latest `limit` pairings, newest first.
    pub fn recent_pairings(&self, person_id: &str, limit: usize) -> Result<Vec<PairingSummary>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM pairings WHERE person_id = ?1
                  ORDER BY created_at_ms DESC, rowid DESC LIMIT ?2"
            ))?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![person_id, limit], summary)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, mut p) = row?;
                // Ids are written as UUIDs only; one that is not cannot be linked to.
                let Ok(id) = uuid::Uuid::parse_str(&id) else {
                    continue;
                };
                p.pairing_id = id;
                out.push(p);
            }
            Ok(out)
        })
    }

    /// The enrolled bridges `person_id` has paired through or whose devices are bound to
    /// them, by name: what the "Pair a band" form offers first.
    pub fn bridges_used_by(&self, person_id: &str) -> Result<Vec<String>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT bridge_id FROM bridges WHERE public_key IS NOT NULL AND bridge_id IN (
                     SELECT bridge_id FROM pairings WHERE person_id = ?1
                     UNION
                     SELECT d.bridge_id FROM devices d JOIN bindings b ON b.device_id = d.device_id
                      WHERE b.person_id = ?1)
                  ORDER BY bridge_id",
            )?;
            let rows = stmt.query_map([person_id], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<std::result::Result<_, _>>()?)
        })
    }
}
