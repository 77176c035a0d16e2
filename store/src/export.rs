//! Reading and writing a person's records in bulk: the owner's export
//! ([`Store::export_records`], logged as an `export` entry of the disclosure log) and the
//! operator's import of such an export into another gateway ([`Store::import_records`],
//! [`read_fhir_ndjson`]).
//!
//! Export reads every record of the person in one read transaction (a consistent snapshot),
//! type by type in [`RecordType::ALL`] order and, within a type, in measured order
//! (`start_ms, device_id, end_ms`, the order of the `records_by_person` index), handing each
//! row to the caller as it is read: nothing holds all rows at once.
//!
//! Import stores records as the given person's, in one transaction: the person, bridges and
//! devices are registered when missing; no binding is created (the data was attributed by the
//! gateway it was exported from). A record whose natural key is already stored *for another
//! person* is refused, never re-attributed or counted as a duplicate; one whose key is in
//! quarantine is refused too (a key lives in one table only; the device's owner confirms it).
//!
//! Import is the explicit re-import by (or for) the person, so it passes their erasure fence:
//! records measured before their last erasure, which ingest refuses `erased_by_person` from
//! any bridge, are stored when the person's own export is imported again.

use std::io::BufRead;

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use serde_json::Value;

use phr_schema::envelope::is_valid_id;
use phr_schema::fhir::{self, FhirError};
use phr_schema::validate::validate_record;
use phr_schema::{Limits, Reason, Record, RecordType};

use super::{audit, Store, StoredRecord};
use crate::Result;

/// What the disclosure log says an export was for.
pub const EXPORT_PURPOSE: &str = "export requested by the person";

/// The outcome of [`Store::import_records`]. `rejected` holds the index (in the slice given)
/// of each refused record and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    pub stored: u64,
    pub duplicate: u64,
    pub rejected: Vec<(usize, ImportRefusal)>,
}

/// Why one imported record was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum ImportRefusal {
    #[error("{0}")]
    Invalid(Reason),
    #[error("a record with the same device, type and measured times is stored for another person")]
    OtherPerson,
    #[error("a record with the same device, type and measured times is in quarantine; its owner confirms it")]
    Quarantined,
}

impl ImportRefusal {
    /// A stable code: the validation reason's, `stored_for_another_person` or `quarantined`.
    pub fn code(self) -> &'static str {
        match self {
            Self::Invalid(r) => r.code(),
            Self::OtherPerson => "stored_for_another_person",
            Self::Quarantined => "quarantined",
        }
    }
}

impl Store {
    /// The person's IANA time zone name as registered (`None` for an unknown person).
    pub fn person_time_zone(&self, person_id: &str) -> Result<Option<String>> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT time_zone FROM people WHERE person_id = ?1")?
                .query_row([person_id], |r| r.get(0))
                .optional()?)
        })
    }

    /// Hands every stored record of `person_id` to `each` (order: see the module docs), then
    /// appends one `export` entry (actor: the person, outcome `done`, the record count) to the
    /// disclosure log. Returns the count. If `each` fails, the export stops, nothing is logged
    /// and its error is returned.
    pub fn export_records<E: From<crate::Error>>(
        &self,
        person_id: &str,
        now: DateTime<Utc>,
        mut each: impl FnMut(StoredRecord) -> Result<(), E>,
    ) -> Result<u64, E> {
        // The first error of `each`: the export stops there and nothing is logged.
        let mut failed: Option<E> = None;
        let count = self.read(|conn| {
            // One snapshot for all three types, so the count and the data agree.
            let tx = conn.unchecked_transaction()?;
            let mut stmt = tx.prepare_cached(
                "SELECT body, stored_at_ms FROM records
                 WHERE person_id = ?1 AND record_type = ?2
                 ORDER BY start_ms, device_id, end_ms",
            )?;
            let mut count = 0u64;
            'types: for t in RecordType::ALL {
                let mut rows = stmt.query(params![person_id, t.as_str()])?;
                while let Some(row) = rows.next()? {
                    let stored = StoredRecord {
                        json: row.get(0)?,
                        stored_at_ms: row.get(1)?,
                    };
                    if let Err(e) = each(stored) {
                        failed = Some(e);
                        break 'types;
                    }
                    count += 1;
                }
            }
            drop(stmt);
            tx.finish()?;
            Ok(count)
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        self.log_export(person_id, count, now)?;
        Ok(count)
    }

    /// Appends the `export` entry of an export of `count` records to the disclosure log
    /// (actor: the person, outcome `done`).
    pub fn log_export(&self, person_id: &str, count: u64, now: DateTime<Utc>) -> Result<()> {
        self.write(|tx| {
            let mut entry = audit::Entry::by_owner(
                person_id,
                audit::Action::Export,
                EXPORT_PURPOSE,
                count,
                now,
            );
            entry.data_types = RecordType::ALL
                .iter()
                .map(|t| t.as_str().to_owned())
                .collect();
            audit::append(tx, &entry)
        })?;
        Ok(())
    }

    /// Stores `records` as `person_id`'s, in one transaction. Each record is validated as
    /// ingest would (its own bridge and device, `now`, default [`Limits`]) and, as ingest
    /// does, stored only under the person's storage consent in force; a valid record
    /// already stored for this person is a duplicate, one stored for anyone else is refused.
    /// Registers the person (time zone `UTC`), bridges and devices when missing; a device
    /// already registered keeps its registration. Creates no binding.
    pub fn import_records(
        &self,
        person_id: &str,
        records: &[Record],
        now: DateTime<Utc>,
    ) -> Result<ImportReport> {
        let limits = Limits::default();
        let now_ms = now.timestamp_millis();
        let now_text = now.to_rfc3339();
        self.write(|tx| {
            super::insert_person(tx, person_id, person_id, "UTC", now)?;
            let mut bridge = tx.prepare_cached(
                "INSERT INTO bridges (bridge_id, created_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            )?;
            let mut device = tx.prepare_cached(
                "INSERT INTO devices (device_id, bridge_id, model, created_at)
                 VALUES (?1, ?2, NULL, ?3) ON CONFLICT DO NOTHING",
            )?;
            let mut bridge_period = tx.prepare_cached(
                "INSERT INTO device_bridges (device_id, bridge_id, from_ms, to_ms)
                 VALUES (?1, ?2, -9223372036854775808, NULL)",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO records (device_id, record_type, start_ms, end_ms, record_id,
                                      person_id, bridge_id, batch_id, stored_at_ms, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, '', ?8, ?9)
                 ON CONFLICT DO NOTHING",
            )?;
            let mut quarantined = tx.prepare_cached(
                "SELECT count(*) FROM quarantine
                 WHERE device_id = ?1 AND record_type = ?2 AND start_ms = ?3 AND end_ms = ?4",
            )?;
            let mut owner = tx.prepare_cached(
                "SELECT person_id FROM records
                 WHERE device_id = ?1 AND record_type = ?2 AND start_ms = ?3 AND end_ms = ?4",
            )?;
            let storage: Vec<_> = super::consent::in_force(
                tx,
                person_id,
                super::STORAGE_GRANTEE,
                super::GranteeKind::Gateway,
                now,
            )?
            .into_iter()
            .filter(|c| c.terms.purpose == super::STORAGE_PURPOSE)
            .collect();
            let mut report = ImportReport::default();
            for (i, record) in records.iter().enumerate() {
                let key = match validate_record(
                    record,
                    &record.bridge_id,
                    &record.device_id,
                    now,
                    &limits,
                ) {
                    Ok(k) => k,
                    Err(reason) => {
                        report.rejected.push((i, ImportRefusal::Invalid(reason)));
                        continue;
                    }
                };
                if !storage.iter().any(|c| c.terms.covers(key.record_type, key.start_ms, key.end_ms)) {
                    report.rejected.push((i, ImportRefusal::Invalid(Reason::NoStorageConsent)));
                    continue;
                }
                bridge.execute(params![record.bridge_id, now_text])?;
                if device.execute(params![record.device_id, record.bridge_id, now_text])? == 1 {
                    // A device first seen here: held through that bridge, as ingest reads it.
                    bridge_period.execute(params![record.device_id, record.bridge_id])?;
                }
                // A key lives in one of `records` and `quarantine` only.
                let in_quarantine: i64 = quarantined.query_row(
                    params![key.device_id, key.record_type.as_str(), key.start_ms, key.end_ms],
                    |r| r.get(0),
                )?;
                if in_quarantine > 0 {
                    report.rejected.push((i, ImportRefusal::Quarantined));
                    continue;
                }
                let json = serde_json::to_string(record)
                    .map_err(|_| crate::Error::Invalid("a record that cannot be serialised"))?;
                let kind = key.record_type.as_str();
                let changed = insert.execute(params![
                    key.device_id,
                    kind,
                    key.start_ms,
                    key.end_ms,
                    record.record_id.to_string(),
                    person_id,
                    record.bridge_id,
                    now_ms,
                    json
                ])?;
                if changed > 0 {
                    report.stored += 1;
                    self.rows.records(1);
                    continue;
                }
                let stored_for: String = owner
                    .query_row(
                        params![key.device_id, kind, key.start_ms, key.end_ms],
                        |r| r.get(0),
                    )?;
                if stored_for == person_id {
                    report.duplicate += 1;
                } else {
                    report.rejected.push((i, ImportRefusal::OtherPerson));
                }
            }
            if report.stored > 0 {
                let what = format!("{} records imported from an export", report.stored);
                audit::append(tx, &audit::Entry::by_owner(person_id, audit::Action::Import, &what, report.stored, now))?;
            }
            Ok(report)
        })
    }
}

/// A FHIR NDJSON export read back: the records with their 1-based line numbers, how many
/// derived daily totals were skipped, and the lines that could not be read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FhirImport {
    pub records: Vec<(usize, Record)>,
    pub skipped_daily_totals: usize,
    pub failures: Vec<LineFailure>,
}

/// One unreadable line: its 1-based number and why (element names, never values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineFailure {
    pub line: usize,
    pub reason: LineError,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not valid UTF-8 text")]
    NotText,
    #[error("not a JSON value")]
    NotJson,
    #[error("`subject.reference` is missing")]
    NoSubject,
    #[error("`subject.reference` differs from the file's first resource (one person per file)")]
    OtherSubject,
    #[error("the device or bridge id is missing or not 1-64 characters of A-Z a-z 0-9 . _ : -")]
    InvalidId,
    #[error(transparent)]
    Fhir(#[from] FhirError),
}

/// Reads an export in the `fhir` format (NDJSON, one Observation per line). Blank lines are
/// ignored; a record without a valid device or bridge id is a failure; daily step totals (`41950-7`) are derived data and skipped. Every resource must
/// name the same `subject.reference`: a file mixing people cannot be imported as one person.
pub fn read_fhir_ndjson(input: impl BufRead) -> std::io::Result<FhirImport> {
    let mut out = FhirImport::default();
    let mut subject: Option<String> = None;
    for (i, line) in input.split(b'\n').enumerate() {
        let line_no = i + 1;
        let bytes = line?;
        let fail = |out: &mut FhirImport, reason| {
            out.failures.push(LineFailure {
                line: line_no,
                reason,
            })
        };
        let Ok(text) = std::str::from_utf8(&bytes) else {
            fail(&mut out, LineError::NotText);
            continue;
        };
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            fail(&mut out, LineError::NotJson);
            continue;
        };
        if v.get("resourceType").and_then(Value::as_str) == Some("Observation") {
            match v
                .get("subject")
                .and_then(|s| s.get("reference"))
                .and_then(Value::as_str)
            {
                None => {
                    fail(&mut out, LineError::NoSubject);
                    continue;
                }
                Some(s) => match &subject {
                    None => subject = Some(s.to_owned()),
                    Some(first) if first != s => {
                        fail(&mut out, LineError::OtherSubject);
                        continue;
                    }
                    Some(_) => {}
                },
            }
        }
        if is_daily_total(&v) {
            out.skipped_daily_totals += 1;
            continue;
        }
        match fhir::record_from_observation(&v, "") {
            Ok(r) if !(is_valid_id(&r.device_id) && is_valid_id(&r.bridge_id)) => {
                fail(&mut out, LineError::InvalidId)
            }
            Ok(r) => out.records.push((line_no, r)),
            Err(e) => fail(&mut out, LineError::Fhir(e)),
        }
    }
    Ok(out)
}

/// A `41950-7` daily step total Observation (derived at export time, not a record).
fn is_daily_total(v: &Value) -> bool {
    v.get("resourceType").and_then(Value::as_str) == Some("Observation")
        && v.get("code")
            .and_then(|c| c.get("coding"))
            .and_then(Value::as_array)
            .is_some_and(|codings| {
                codings.iter().any(|c| {
                    c.get("system").and_then(Value::as_str) == Some(fhir::LOINC_SYSTEM)
                        && c.get("code").and_then(Value::as_str) == Some(fhir::STEPS_24H.code)
                })
            })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, FixedOffset, TimeDelta};
    use phr_schema::record::{IntervalFrame, Provenance, StepCount};
    use phr_schema::Body;

    fn steps(device: &str, minute: i64, count: i64) -> Record {
        let start: DateTime<FixedOffset> =
            DateTime::parse_from_rfc3339("2026-01-05T10:00:00+09:00").unwrap()
                + TimeDelta::minutes(minute);
        let end = start + TimeDelta::minutes(1);
        Record::new(
            device,
            "br-1",
            end,
            Provenance::sensed("test/1"),
            Body::StepCount(StepCount {
                effective_time_frame: IntervalFrame::new(start, end),
                step_count: count,
            }),
        )
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("phr.sqlite")).unwrap();
        (dir, store)
    }

    #[test]
    fn import_counts_duplicates_and_refuses_other_peoples_keys() {
        let (_dir, store) = store();
        let now = Utc::now();
        let a = [steps("d1", 0, 10), steps("d1", 1, 11)];
        // No storage consent: nothing stored.
        let r = store.import_records("ana", &a, now).unwrap();
        assert_eq!((r.stored, r.rejected.len()), (0, 2));
        assert_eq!(
            r.rejected[0].1,
            ImportRefusal::Invalid(Reason::NoStorageConsent)
        );
        for who in ["ana", "ben"] {
            store.ensure_person(who).unwrap();
            store.grant_storage_consent(who, &RecordType::ALL).unwrap();
        }
        let r = store.import_records("ana", &a, now).unwrap();
        assert_eq!((r.stored, r.duplicate, r.rejected.len()), (2, 0, 0));
        let r = store.import_records("ana", &a, now).unwrap();
        assert_eq!((r.stored, r.duplicate, r.rejected.len()), (0, 2, 0));
        // Ben's file claims one of Ana's records: refused, still Ana's.
        let r = store
            .import_records("ben", &[steps("d1", 1, 11), steps("d1", 2, 5)], now)
            .unwrap();
        assert_eq!((r.stored, r.duplicate), (1, 0));
        assert_eq!(r.rejected, vec![(0, ImportRefusal::OtherPerson)]);
        // Invalid records are refused with the validation reason.
        let mut bad = steps("d1", 3, 5);
        bad.record_id = uuid::Uuid::nil();
        let r = store
            .import_records("ana", &[bad, steps("d1", 4, -1)], now)
            .unwrap();
        assert_eq!(
            r.rejected,
            vec![
                (0, ImportRefusal::Invalid(Reason::RecordIdMismatch)),
                (1, ImportRefusal::Invalid(Reason::NegativeCount)),
            ]
        );
        let mut seen = Vec::new();
        let n = store
            .export_records::<crate::Error>("ana", now, |s| {
                seen.push(serde_json::from_str::<Record>(&s.json).unwrap());
                Ok(())
            })
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(seen, a);
        let log = store.disclosures("ana", 0, 10).unwrap();
        let actions: Vec<_> = log
            .iter()
            .map(|l| (l.entry.action, l.entry.records))
            .collect();
        assert_eq!(
            actions,
            [(audit::Action::Import, 2), (audit::Action::Export, 2)]
        );
        assert_eq!(
            store.person_time_zone("ana").unwrap().as_deref(),
            Some("UTC")
        );
        assert_eq!(store.person_time_zone("nobody").unwrap(), None);
    }

    #[test]
    fn ndjson_reader_skips_totals_and_names_bad_lines() {
        let now = Utc::now().fixed_offset();
        let r = steps("d1", 0, 10);
        let mut obs = fhir::observations(&r, "Patient/ana", now);
        obs.extend(fhir::daily_step_totals(
            std::slice::from_ref(&r),
            FixedOffset::east_opt(0).unwrap(),
            "Patient/ana",
            now,
        ));
        let mut other = fhir::observations(&steps("d1", 1, 3), "Patient/ben", now);
        let mut text = fhir::ndjson(&obs);
        text.push_str("\n{not json\n");
        text.push_str(&fhir::ndjson(&other));
        other[0]["id"] = serde_json::json!(uuid::Uuid::nil());
        other[0]["subject"]["reference"] = serde_json::json!("Patient/ana");
        text.push_str(&fhir::ndjson(&other));
        let got = read_fhir_ndjson(text.as_bytes()).unwrap();
        assert_eq!(got.records, vec![(1, r)]);
        assert_eq!(got.skipped_daily_totals, 1);
        assert_eq!(
            got.failures,
            vec![
                LineFailure {
                    line: 4,
                    reason: LineError::NotJson
                },
                LineFailure {
                    line: 5,
                    reason: LineError::OtherSubject
                },
                LineFailure {
                    line: 6,
                    reason: LineError::Fhir(FhirError::RecordIdMismatch)
                },
            ]
        );
    }
}
