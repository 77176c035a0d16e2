//! Consents: append-only events. A grant creates a consent (`consent_id`); a withdrawal is a
//! second row naming the same `consent_id`; a re-grant is a new consent. So grant, withdraw
//! and re-grant leave three rows, and no row is ever updated or deleted (triggers refuse it).
//!
//! A consent says: this person lets this grantee (the gateway itself, for storage; a PHR
//! company by client id; a clinician) use these data types, for this purpose, for data
//! measured in this window, until this time. It is in force while it has no withdrawal row
//! and `valid_until` has not passed; it is checked at every use, not when a token is issued.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use phr_schema::RecordType;

use super::Store;
use crate::{Error, Result};

/// The grantee of the gateway's own storage consent.
pub const STORAGE_GRANTEE: &str = "phr-gateway";
/// The purpose of a storage consent.
pub const STORAGE_PURPOSE: &str = "storage";

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS consent_events (
    seq INTEGER PRIMARY KEY,
    consent_id TEXT NOT NULL,
    person_id TEXT NOT NULL REFERENCES people(person_id),
    event TEXT NOT NULL CHECK (event IN ('granted', 'withdrawn')),
    grantee TEXT NOT NULL,
    grantee_kind TEXT NOT NULL CHECK (grantee_kind IN ('gateway', 'client', 'practitioner')),
    purpose TEXT NOT NULL,
    data_types TEXT NOT NULL,
    window_from_ms INTEGER,
    window_to_ms INTEGER,
    valid_until_ms INTEGER,
    recorded_at_ms INTEGER NOT NULL,
    recorded_by TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS consent_events_by_grantee
    ON consent_events(person_id, grantee, grantee_kind, consent_id);
CREATE UNIQUE INDEX IF NOT EXISTS consent_events_once
    ON consent_events(consent_id, event);
CREATE TRIGGER IF NOT EXISTS consent_events_no_update BEFORE UPDATE ON consent_events
    BEGIN SELECT RAISE(ABORT, 'consent events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS consent_events_no_delete BEFORE DELETE ON consent_events
    BEGIN SELECT RAISE(ABORT, 'consent events are append-only'); END;
";

/// Who a consent is given to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GranteeKind {
    /// The gateway itself: consent to store.
    Gateway,
    /// A PHR company, by OAuth client id.
    Client,
    /// A clinician.
    Practitioner,
}

impl GranteeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Client => "client",
            Self::Practitioner => "practitioner",
        }
    }

    fn parse(s: &str) -> rusqlite::Result<Self> {
        match s {
            "gateway" => Ok(Self::Gateway),
            "client" => Ok(Self::Client),
            "practitioner" => Ok(Self::Practitioner),
            _ => Err(rusqlite::Error::InvalidColumnType(
                0,
                "grantee_kind".into(),
                rusqlite::types::Type::Text,
            )),
        }
    }
}

/// What a person agrees to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    pub grantee: String,
    pub grantee_kind: GranteeKind,
    pub purpose: String,
    pub data_types: Vec<RecordType>,
    /// The measured-time window covered, `[from, to)`; `None` is unbounded on that side.
    pub window_from: Option<DateTime<Utc>>,
    pub window_to: Option<DateTime<Utc>>,
    /// When the consent lapses by itself; `None` until withdrawn.
    pub valid_until: Option<DateTime<Utc>>,
}

impl Terms {
    /// The gateway's storage consent for `types`, any measured time, until withdrawn.
    pub fn storage(types: &[RecordType]) -> Self {
        Self {
            grantee: STORAGE_GRANTEE.into(),
            grantee_kind: GranteeKind::Gateway,
            purpose: STORAGE_PURPOSE.into(),
            data_types: types.to_vec(),
            window_from: None,
            window_to: None,
            valid_until: None,
        }
    }

    /// Whether these terms cover `record_type` measured over `[start_ms, end_ms]`.
    pub fn covers(&self, record_type: RecordType, start_ms: i64, end_ms: i64) -> bool {
        self.data_types.contains(&record_type)
            && self
                .window_from
                .is_none_or(|f| f.timestamp_millis() <= start_ms)
            && self.window_to.is_none_or(|t| {
                let to = t.timestamp_millis();
                if start_ms == end_ms {
                    end_ms < to
                } else {
                    end_ms <= to
                }
            })
    }

    /// The measured-time window as milliseconds, unbounded sides as the extremes.
    pub fn window_ms(&self) -> (i64, i64) {
        (
            self.window_from.map_or(i64::MIN, |t| t.timestamp_millis()),
            self.window_to.map_or(i64::MAX, |t| t.timestamp_millis()),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsentStatus {
    Granted,
    Withdrawn,
    Expired,
}

/// A consent as it stands now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    pub consent_id: Uuid,
    pub person_id: String,
    #[serde(flatten)]
    pub terms: Terms,
    pub status: ConsentStatus,
    pub granted_at: DateTime<Utc>,
    pub withdrawn_at: Option<DateTime<Utc>>,
}

impl Consent {
    fn in_force(&self) -> bool {
        self.status == ConsentStatus::Granted
    }
}

const SELECT_CONSENTS: &str = "
SELECT g.consent_id, g.person_id, g.grantee, g.grantee_kind, g.purpose, g.data_types,
       g.window_from_ms, g.window_to_ms, g.valid_until_ms, g.recorded_at_ms,
       (SELECT w.recorded_at_ms FROM consent_events w
         WHERE w.consent_id = g.consent_id AND w.event = 'withdrawn')
  FROM consent_events g
 WHERE g.event = 'granted'";

fn from_row(r: &Row<'_>, now: DateTime<Utc>) -> rusqlite::Result<Consent> {
    let ms = |v: Option<i64>| v.and_then(DateTime::from_timestamp_millis);
    let id: String = r.get(0)?;
    let types: String = r.get(5)?;
    let withdrawn_at = ms(r.get(10)?);
    let terms = Terms {
        grantee: r.get(2)?,
        grantee_kind: GranteeKind::parse(&r.get::<_, String>(3)?)?,
        purpose: r.get(4)?,
        data_types: types.split(',').filter_map(|t| t.parse().ok()).collect(),
        window_from: ms(r.get(6)?),
        window_to: ms(r.get(7)?),
        valid_until: ms(r.get(8)?),
    };
    let status = if withdrawn_at.is_some() {
        ConsentStatus::Withdrawn
    } else if terms.valid_until.is_some_and(|u| u <= now) {
        ConsentStatus::Expired
    } else {
        ConsentStatus::Granted
    };
    Ok(Consent {
        consent_id: Uuid::parse_str(&id).map_err(|_| {
            rusqlite::Error::InvalidColumnType(0, "consent_id".into(), rusqlite::types::Type::Text)
        })?,
        person_id: r.get(1)?,
        terms,
        status,
        granted_at: ms(r.get(9)?).unwrap_or_default(),
        withdrawn_at,
    })
}

/// Consents of `person_id` to `grantee` that are in force at `now`, newest first.
pub(super) fn in_force(
    conn: &Connection,
    person_id: &str,
    grantee: &str,
    kind: GranteeKind,
    now: DateTime<Utc>,
) -> Result<Vec<Consent>> {
    let mut all = of_person_to(conn, person_id, grantee, kind, now)?;
    all.retain(Consent::in_force);
    Ok(all)
}

/// Every consent `person_id` ever gave `grantee`, as it stands at `now`, newest first.
pub(super) fn of_person_to(
    conn: &Connection,
    person_id: &str,
    grantee: &str,
    kind: GranteeKind,
    now: DateTime<Utc>,
) -> Result<Vec<Consent>> {
    let mut stmt = conn.prepare_cached(&format!(
        "{SELECT_CONSENTS} AND g.person_id = ?1 AND g.grantee = ?2 AND g.grantee_kind = ?3 ORDER BY g.seq DESC"
    ))?;
    let rows = stmt.query_map(params![person_id, grantee, kind.as_str()], |r| {
        from_row(r, now)
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Every consent ever given to `grantee` (of `kind`), by anyone, as it stands at `now`.
pub(super) fn of_grantee(
    conn: &Connection,
    grantee: &str,
    kind: GranteeKind,
    now: DateTime<Utc>,
) -> Result<Vec<Consent>> {
    let mut stmt = conn.prepare_cached(&format!(
        "{SELECT_CONSENTS} AND g.grantee = ?1 AND g.grantee_kind = ?2 ORDER BY g.seq"
    ))?;
    let rows = stmt.query_map(params![grantee, kind.as_str()], |r| from_row(r, now))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

fn append(conn: &Connection, event: &str, c: &Consent, at: DateTime<Utc>, by: &str) -> Result<()> {
    let ms = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_millis());
    let types = c
        .terms
        .data_types
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(",");
    conn.prepare_cached(
        "INSERT INTO consent_events (consent_id, person_id, event, grantee, grantee_kind, purpose,
             data_types, window_from_ms, window_to_ms, valid_until_ms, recorded_at_ms, recorded_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        c.consent_id.to_string(),
        c.person_id,
        event,
        c.terms.grantee,
        c.terms.grantee_kind.as_str(),
        c.terms.purpose,
        types,
        ms(c.terms.window_from),
        ms(c.terms.window_to),
        ms(c.terms.valid_until),
        at.timestamp_millis(),
        by,
    ])?;
    Ok(())
}

/// Appends a withdrawal for every consent of `person_id` in force (used by erasure).
pub(super) fn withdraw_all(
    conn: &Connection,
    person_id: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<usize> {
    let mut stmt = conn.prepare_cached(&format!("{SELECT_CONSENTS} AND g.person_id = ?1"))?;
    let all = stmt
        .query_map([person_id], |r| from_row(r, now))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut n = 0;
    for c in all.iter().filter(|c| c.status != ConsentStatus::Withdrawn) {
        append(conn, "withdrawn", c, now, by)?;
        super::changes::on_withdraw(conn, c)?;
        n += 1;
    }
    Ok(n)
}

impl Store {
    /// Records a new consent of `person_id` on `terms`; `by` is who recorded it.
    pub fn grant_consent(
        &self,
        person_id: &str,
        terms: Terms,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Consent> {
        if terms.data_types.is_empty() {
            return Err(Error::Invalid("a consent names at least one data type"));
        }
        let consent = Consent {
            consent_id: Uuid::new_v4(),
            person_id: person_id.to_owned(),
            terms,
            status: ConsentStatus::Granted,
            granted_at: DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now),
            withdrawn_at: None,
        };
        self.write(|tx| {
            append(tx, "granted", &consent, now, by)?;
            super::changes::on_grant(tx, &consent, now)?;
            // Records held for the person's storage consent become theirs now, in this
            // transaction.
            if consent.terms.grantee_kind == GranteeKind::Gateway
                && consent.terms.grantee == STORAGE_GRANTEE
                && consent.terms.purpose == STORAGE_PURPOSE
            {
                let (stored, left) = super::corrections::release_held(tx, &consent, now)?;
                self.rows.records(super::added(stored));
                self.rows.quarantine(-super::added(left));
            }
            Ok(())
        })?;
        Ok(consent)
    }

    /// Withdraws one of `person_id`'s consents. `None` if they have no such consent (another
    /// person's consent id is answered exactly like an unknown one).
    pub fn withdraw_consent(
        &self,
        person_id: &str,
        consent_id: Uuid,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Consent>> {
        self.write(|tx| {
            let mut stmt = tx.prepare_cached(&format!(
                "{SELECT_CONSENTS} AND g.consent_id = ?1 AND g.person_id = ?2"
            ))?;
            let Some(mut c) = stmt
                .query_row(params![consent_id.to_string(), person_id], |r| {
                    from_row(r, now)
                })
                .optional()?
            else {
                return Ok(None);
            };
            if c.status != ConsentStatus::Withdrawn {
                append(tx, "withdrawn", &c, now, by)?;
                super::changes::on_withdraw(tx, &c)?;
                c.status = ConsentStatus::Withdrawn;
                c.withdrawn_at = Some(now);
            }
            Ok(Some(c))
        })
    }

    /// Every consent `person_id` ever gave, as it stands now, oldest first.
    pub fn consents(&self, person_id: &str, now: DateTime<Utc>) -> Result<Vec<Consent>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "{SELECT_CONSENTS} AND g.person_id = ?1 ORDER BY g.seq"
            ))?;
            let rows = stmt.query_map([person_id], |r| from_row(r, now))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// The consents of `person_id` to `grantee` in force at `now`, newest first.
    pub fn consents_in_force(
        &self,
        person_id: &str,
        grantee: &str,
        kind: GranteeKind,
        now: DateTime<Utc>,
    ) -> Result<Vec<Consent>> {
        self.read(|conn| in_force(conn, person_id, grantee, kind, now))
    }

    /// Number of consent events (grants and withdrawals) of `person_id`.
    pub fn consent_event_count(&self, person_id: &str) -> Result<u64> {
        self.read(|conn| {
            let n: i64 = conn.query_row(
                "SELECT count(*) FROM consent_events WHERE person_id = ?1",
                [person_id],
                |r| r.get(0),
            )?;
            Ok(n as u64)
        })
    }

    /// Shorthand: storage consent for `types`, recorded by the gateway itself.
    pub fn grant_storage_consent(&self, person_id: &str, types: &[RecordType]) -> Result<Consent> {
        self.grant_consent(
            person_id,
            Terms::storage(types),
            STORAGE_GRANTEE,
            Utc::now(),
        )
    }

    /// Shorthand: withdraw every storage consent of `person_id` (nothing stored is erased).
    pub fn withdraw_storage_consent(&self, person_id: &str) -> Result<()> {
        let now = Utc::now();
        for c in self.consents_in_force(person_id, STORAGE_GRANTEE, GranteeKind::Gateway, now)? {
            self.withdraw_consent(person_id, c.consent_id, person_id, now)?;
        }
        Ok(())
    }
}
