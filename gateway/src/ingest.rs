//! Ingest: from an MQTT message to a decision for every record, as a pure function.
//!
//! Two pure stages, no I/O:
//! - [`check`] reads the envelope and validates each record. It needs no registry, so the
//!   consumer runs it outside the store's write lock, while the previous group commits.
//! - [`attribute`] decides, with a [`DeviceView`] (the device's bridge, its bindings and its
//!   people's storage consents, read inside the same transaction that will write), whose each
//!   record is and whether it may be stored.
//!
//! The store applies the plan; the consumer acks only after the commit.
//!
//! Attribution is by construction, never by guess: a record belongs to the person whose
//! binding `[from, to)` covers its whole measured interval. A record no binding covers, or one
//! that straddles a change of binding, is quarantined and shown to nobody.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use phr_schema::validate::{parse_batch, parse_record, validate_record};
use phr_schema::{Ack, Limits, Reason, RecordKey, Rejection};

use crate::store::Terms;

/// One binding of a device to a person, `[from_ms, to_ms)`; `to_ms = None` is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub person_id: String,
    pub from_ms: i64,
    pub to_ms: Option<i64>,
}

impl Binding {
    fn covers(&self, start_ms: i64, end_ms: i64) -> bool {
        // A point measurement (start == end) must lie inside [from, to).
        let end_ok = match self.to_ms {
            None => true,
            Some(to) if start_ms == end_ms => end_ms < to,
            Some(to) => end_ms <= to,
        };
        self.from_ms <= start_ms && end_ok
    }

    fn touches(&self, start_ms: i64, end_ms: i64) -> bool {
        self.from_ms < end_ms.max(start_ms + 1) && self.to_ms.is_none_or(|to| start_ms < to)
    }
}

/// What the registry knows about one device, read inside the ingest transaction.
#[derive(Debug, Clone, Default)]
pub struct DeviceView {
    /// The bridge the device is registered through; `None` for an unknown device.
    pub bridge_id: Option<String>,
    pub bindings: Vec<Binding>,
    /// Storage consents in force of the people bound to the device.
    pub storage_consent: Vec<(String, Terms)>,
}

impl DeviceView {
    /// Whether `person` consents to storing this record (its type and measured time).
    fn consents(&self, person: &str, key: &RecordKey) -> bool {
        self.storage_consent.iter().any(|(p, terms)| {
            p == person && terms.covers(key.record_type, key.start_ms, key.end_ms)
        })
    }
}

/// Why a record was quarantined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuarantineReason {
    NoBinding,
    SpansBindingChange,
}

impl QuarantineReason {
    pub fn code(self) -> &'static str {
        match self {
            Self::NoBinding => "no_binding",
            Self::SpansBindingChange => "spans_binding_change",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Decision {
    Store { person_id: String },
    Quarantine(QuarantineReason),
}

/// A record that passed validation, reduced to what storing it needs.
#[derive(Debug, Clone)]
pub struct Valid {
    pub index: usize,
    pub key: RecordKey,
    pub record_id: Uuid,
    /// The record's JSON as received (validated, so it parses back to the same record).
    pub json: String,
}

/// One message after the checks that need no registry: envelope, topic, every record.
#[derive(Debug, Clone)]
pub struct Checked {
    pub bridge_id: String,
    pub device_id: String,
    pub batch_id: Option<Uuid>,
    /// How many records the batch held.
    pub total: usize,
    pub valid: Vec<Valid>,
    /// Rejections so far (and `batch_error` when the whole batch is refused).
    pub ack: Ack,
}

/// A valid record and what to do with it.
#[derive(Debug, Clone)]
pub struct Planned {
    pub valid: Valid,
    pub decision: Decision,
}

/// Everything ingest will do with one message.
#[derive(Debug, Clone)]
pub struct Plan {
    pub bridge_id: String,
    pub device_id: String,
    pub batch_id: Option<Uuid>,
    pub accepted: Vec<Planned>,
    /// The ack, with rejections filled in; stored / duplicate / quarantined counts are set by
    /// the store when it applies the plan.
    pub ack: Ack,
}

/// Stage 1, no registry needed (so it runs outside the store's write lock): reads the
/// envelope of a message received on the records topic of `topic_bridge` / `topic_device`
/// and validates every record.
pub fn check(
    payload: &[u8],
    topic_bridge: &str,
    topic_device: &str,
    now: DateTime<Utc>,
    limits: &Limits,
) -> Checked {
    let mut checked = Checked {
        bridge_id: topic_bridge.to_owned(),
        device_id: topic_device.to_owned(),
        batch_id: None,
        total: 0,
        valid: Vec::new(),
        ack: Ack::default(),
    };
    let batch = match parse_batch(payload, limits) {
        Ok(b) => b,
        Err((id, reason)) => {
            checked.batch_id = id;
            checked.ack.batch_id = id;
            checked.ack.batch_error = Some(reason);
            return checked;
        }
    };
    checked.batch_id = Some(batch.batch_id);
    checked.ack.batch_id = Some(batch.batch_id);
    checked.total = batch.records.len();
    if batch.bridge_id != topic_bridge || batch.device_id != topic_device {
        reject_all(&mut checked.ack, checked.total, Reason::TopicMismatch);
        return checked;
    }
    checked.valid.reserve(batch.records.len());
    for (index, raw) in batch.records.iter().enumerate() {
        let record = match parse_record(raw) {
            Ok(r) => r,
            Err(detail) => {
                checked.ack.rejected.push(Rejection {
                    index,
                    record_id: None,
                    reason: Reason::MalformedRecord,
                    detail: Some(detail),
                });
                continue;
            }
        };
        match validate_record(&record, topic_bridge, topic_device, now, limits) {
            Ok(key) => checked.valid.push(Valid {
                index,
                key,
                record_id: record.record_id,
                json: raw.get().to_owned(),
            }),
            Err(reason) => checked.ack.rejected.push(Rejection {
                index,
                record_id: Some(record.record_id),
                reason,
                detail: None,
            }),
        }
    }
    checked
}

/// Stage 2, given the registry's `view` of the device (read inside the write transaction):
/// is the device the topic's bridge's, whose is each valid record, and does that person
/// consent to its storage. (That the batch comes from the topic's bridge was settled before:
/// it opened with that bridge's channel key.)
pub fn attribute(checked: Checked, view: &DeviceView) -> Plan {
    let Checked {
        bridge_id,
        device_id,
        batch_id,
        total,
        valid,
        mut ack,
    } = checked;
    let mut plan = Plan {
        bridge_id,
        device_id,
        batch_id,
        accepted: Vec::new(),
        ack: Ack::default(),
    };
    let refused = if ack.batch_error.is_some() {
        None
    } else if view
        .bridge_id
        .as_deref()
        .is_some_and(|b| b != plan.bridge_id)
    {
        Some(Reason::DeviceNotOnBridge)
    } else {
        None
    };
    if let Some(reason) = refused {
        reject_all(&mut ack, total, reason);
        plan.ack = ack;
        return plan;
    }
    plan.accepted.reserve(valid.len());
    for v in valid {
        let decision = match owner(view, &v.key) {
            Ok(person_id) if view.consents(&person_id, &v.key) => Decision::Store { person_id },
            Ok(_) => {
                ack.rejected.push(Rejection {
                    index: v.index,
                    record_id: Some(v.record_id),
                    reason: Reason::NoStorageConsent,
                    detail: None,
                });
                continue;
            }
            Err(q) => Decision::Quarantine(q),
        };
        plan.accepted.push(Planned { valid: v, decision });
    }
    ack.rejected.sort_by_key(|r| r.index);
    plan.ack = ack;
    plan
}

/// Both stages at once, for callers that hold the view already.
pub fn plan(
    payload: &[u8],
    topic_bridge: &str,
    topic_device: &str,
    view: &DeviceView,
    now: DateTime<Utc>,
    limits: &Limits,
) -> Plan {
    attribute(
        check(payload, topic_bridge, topic_device, now, limits),
        view,
    )
}

/// Refuses the whole batch: every record rejected for `reason`.
fn reject_all(ack: &mut Ack, n: usize, reason: Reason) {
    ack.batch_error = Some(reason);
    ack.rejected = (0..n)
        .map(|index| Rejection {
            index,
            record_id: None,
            reason,
            detail: None,
        })
        .collect();
}

/// The person whose binding covers the whole measured interval.
fn owner(view: &DeviceView, key: &RecordKey) -> Result<String, QuarantineReason> {
    if let Some(b) = view
        .bindings
        .iter()
        .find(|b| b.covers(key.start_ms, key.end_ms))
    {
        return Ok(b.person_id.clone());
    }
    if view
        .bindings
        .iter()
        .any(|b| b.touches(key.start_ms, key.end_ms))
    {
        Err(QuarantineReason::SpansBindingChange)
    } else {
        Err(QuarantineReason::NoBinding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phr_schema::record::{IntervalFrame, Provenance, StepCount};
    use phr_schema::{Batch, Body, Record, RecordType};

    const HOUR: i64 = 3_600_000;

    fn steps_at(start_ms: i64, count: i64) -> Record {
        let s = DateTime::from_timestamp_millis(start_ms)
            .unwrap()
            .fixed_offset();
        Record::new(
            "dev",
            "br",
            s,
            Provenance::sensed("test/1"),
            Body::StepCount(StepCount {
                effective_time_frame: IntervalFrame::new(s, s + chrono::Duration::minutes(1)),
                step_count: count,
            }),
        )
    }

    fn view(bindings: Vec<Binding>) -> DeviceView {
        let people = bindings
            .iter()
            .map(|b| (b.person_id.clone(), Terms::storage(&RecordType::ALL)))
            .collect();
        DeviceView {
            bridge_id: Some("br".into()),
            bindings,
            storage_consent: people,
        }
    }

    fn run(records: Vec<Record>, v: DeviceView) -> Plan {
        let payload =
            serde_json::to_vec(&Batch::new("br", "dev", Uuid::new_v4(), records)).unwrap();
        plan(
            &payload,
            "br",
            "dev",
            &v,
            DateTime::from_timestamp_millis(100 * HOUR).unwrap(),
            &Limits::default(),
        )
    }

    fn person(p: &Planned) -> Option<&str> {
        match &p.decision {
            Decision::Store { person_id } => Some(person_id),
            Decision::Quarantine(_) => None,
        }
    }

    #[test]
    fn records_follow_the_binding_valid_at_their_measured_time() {
        let v = view(vec![
            Binding {
                person_id: "alice".into(),
                from_ms: 0,
                to_ms: Some(10 * HOUR),
            },
            Binding {
                person_id: "bob".into(),
                from_ms: 10 * HOUR,
                to_ms: None,
            },
        ]);
        let p = run(
            vec![
                steps_at(9 * HOUR, 5),
                steps_at(10 * HOUR, 6),
                steps_at(10 * HOUR - 30_000, 7),
            ],
            v,
        );
        assert_eq!(person(&p.accepted[0]), Some("alice"));
        assert_eq!(person(&p.accepted[1]), Some("bob"));
        // Straddles the hand-over: attributed to nobody.
        assert!(matches!(
            p.accepted[2].decision,
            Decision::Quarantine(QuarantineReason::SpansBindingChange)
        ));
    }

    #[test]
    fn unbound_and_unknown_devices_are_quarantined() {
        let p = run(vec![steps_at(HOUR, 5)], DeviceView::default());
        assert!(matches!(
            p.accepted[0].decision,
            Decision::Quarantine(QuarantineReason::NoBinding)
        ));
        let v = view(vec![Binding {
            person_id: "alice".into(),
            from_ms: 5 * HOUR,
            to_ms: None,
        }]);
        let p = run(vec![steps_at(HOUR, 5)], v);
        assert!(matches!(
            p.accepted[0].decision,
            Decision::Quarantine(QuarantineReason::NoBinding)
        ));
    }

    #[test]
    fn no_storage_consent_rejects_and_invalid_records_are_rejected_alone() {
        let mut v = view(vec![Binding {
            person_id: "alice".into(),
            from_ms: 0,
            to_ms: None,
        }]);
        v.storage_consent.clear();
        let p = run(vec![steps_at(HOUR, 5)], v);
        assert!(p.accepted.is_empty());
        assert_eq!(p.ack.rejected[0].reason, Reason::NoStorageConsent);

        let v = view(vec![Binding {
            person_id: "alice".into(),
            from_ms: 0,
            to_ms: None,
        }]);
        let p = run(
            vec![
                steps_at(HOUR, 5),
                steps_at(2 * HOUR, -1),
                steps_at(3 * HOUR, 8),
            ],
            v,
        );
        assert_eq!(p.accepted.len(), 2);
        assert_eq!(p.ack.rejected.len(), 1);
        assert_eq!(
            (p.ack.rejected[0].index, p.ack.rejected[0].reason),
            (1, Reason::NegativeCount)
        );
    }

    #[test]
    fn batch_level_refusals() {
        let v = view(vec![]);
        let payload = serde_json::to_vec(&Batch::new(
            "br",
            "dev",
            Uuid::new_v4(),
            vec![steps_at(HOUR, 1)],
        ))
        .unwrap();
        let now = DateTime::from_timestamp_millis(100 * HOUR).unwrap();
        let p = plan(&payload, "other-bridge", "dev", &v, now, &Limits::default());
        assert_eq!(p.ack.batch_error, Some(Reason::TopicMismatch));
        assert!(p.accepted.is_empty());
        let mut foreign = v.clone();
        foreign.bridge_id = Some("someone-else".into());
        let p = plan(&payload, "br", "dev", &foreign, now, &Limits::default());
        assert_eq!(p.ack.batch_error, Some(Reason::DeviceNotOnBridge));
        let p = plan(b"garbage", "br", "dev", &v, now, &Limits::default());
        assert_eq!(
            (p.batch_id, p.ack.batch_error),
            (None, Some(Reason::MalformedBatch))
        );
    }
}
