//! Ingest: from an MQTT message to a decision for every record, as a pure function.
//!
//! Two pure stages, no I/O:
//! - [`check`] reads the envelope and validates each record. It needs no registry, so the
//!   consumer runs it outside the store's write lock, while the previous group commits.
//! - [`attribute`] decides, with a [`DeviceView`] (read inside the same transaction that will
//!   write), whose each record is and what becomes of it.
//!
//! The store applies the plan; the consumer acks only after the commit.
//!
//! The rules [`attribute`] applies to each valid record, in this order:
//! 1. **Delivering bridge.** A bridge may deliver a device's records measured (start) before
//!    the end of its latest period holding the device ([`BridgePeriod`]; an open period: any
//!    time). So the device's current bridge delivers its whole history, its old bridge the
//!    backlog measured before the move; anything else is rejected `device_not_on_bridge`,
//!    record by record. A batch is refused as a whole (`batch_error`) only when every record
//!    is refused so: always from a bridge that never held the device. An unknown device's
//!    records may come through any bridge (they are quarantined: nobody holds it).
//! 2. **Binding.** A record belongs to the person whose binding `[from, to)` covers its whole
//!    measured interval, never by guess. A record no binding covers, or one that straddles a
//!    change of binding, is quarantined and shown to nobody.
//! 3. **Standing corrections**, in the order they were made ([`Standing`]): what a correction
//!    did to the rows it found, it does to records of its range that arrive later (a bridge
//!    back from a week offline, a replayed batch). Re-attributed: to the new person; unlinked:
//!    quarantined as `unlinked`; a confirmed quarantine: the confirming person's.
//! 4. **Erasure fence.** A record that would be a person's (or would be quarantined inside
//!    their claim periods) and was measured before their latest erasure is rejected
//!    `erased_by_person`: never stored again from a bridge (only their explicit re-import
//!    passes).
//! 5. **Storage consent.** Without the person's storage consent covering it, a record is
//!    held in quarantine for them (`no_storage_consent`, until they consent or the hold
//!    expires), or rejected `no_storage_consent` where holding is off.
//!
//! A record's key lives in at most one of `records` and `quarantine`: one already in either
//! is a duplicate (the store applies this rule when it writes).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use phr_schema::validate::{parse_batch, parse_record, validate_record};
use phr_schema::{Ack, Limits, Reason, RecordKey, Rejection};

use crate::Terms;

/// One binding of a device to a person, `[from_ms, to_ms)`; `to_ms = None` is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub person_id: String,
    pub from_ms: i64,
    pub to_ms: Option<i64>,
}

impl Binding {
    fn covers(&self, start_ms: i64, end_ms: i64) -> bool {
        Period {
            from_ms: self.from_ms,
            to_ms: self.to_ms.unwrap_or(i64::MAX),
        }
        .contains(start_ms, end_ms)
    }

    fn touches(&self, start_ms: i64, end_ms: i64) -> bool {
        self.from_ms < end_ms.max(start_ms + 1) && self.to_ms.is_none_or(|to| start_ms < to)
    }
}

/// A span of measured time `[from_ms, to_ms)`; `i64::MIN` / `i64::MAX` for unbounded ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl Period {
    /// Whether a record measured over `[start_ms, end_ms]` lies wholly inside: a point
    /// measurement (start == end) must lie inside `[from, to)`, an interval may end at `to`.
    pub fn contains(&self, start_ms: i64, end_ms: i64) -> bool {
        let end_ok = if start_ms == end_ms {
            end_ms < self.to_ms
        } else {
            end_ms <= self.to_ms
        };
        self.from_ms <= start_ms && end_ok
    }
}

/// The periods in which `person` may claim a device's records: their bindings of the device
/// (`bindings` in `from_ms` order), past and present, back-to-back ones (a re-pairing)
/// merged. The device's first holder also holds the time before its first binding: records
/// a band measured before it was ever paired are its first owner's history. Time while the
/// device was someone else's, or between two holders, is in nobody's periods.
pub fn claim_periods(bindings: &[Binding], person: &str) -> Vec<Period> {
    let mut periods: Vec<Period> = Vec::new();
    for (i, b) in bindings.iter().enumerate() {
        if b.person_id != person {
            continue;
        }
        let from_ms = if i == 0 { i64::MIN } else { b.from_ms };
        let to_ms = b.to_ms.unwrap_or(i64::MAX);
        match periods.last_mut() {
            Some(last) if last.to_ms >= from_ms => last.to_ms = last.to_ms.max(to_ms),
            _ => periods.push(Period { from_ms, to_ms }),
        }
    }
    periods
}

/// A period in which a device was held through a bridge, `[from_ms, to_ms)`; `to_ms = None`
/// is open (the device's current bridge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgePeriod {
    pub bridge_id: String,
    pub from_ms: i64,
    pub to_ms: Option<i64>,
}

/// A correction of a device's records measured (start) in `[from_ms, to_ms)`, kept as a rule
/// for records of that range that arrive after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub from_ms: i64,
    pub to_ms: i64,
    pub rule: Rule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// `from`'s records became `to`'s.
    Reattribute { from: String, to: String },
    /// `person`'s records went to quarantine; `confined` when the person did it themselves
    /// (then only records wholly inside their claim periods moved).
    Unlink { person: String, confined: bool },
    /// `person` took quarantined records wholly inside their claim periods as theirs.
    Confirm { person: String },
}

impl Standing {
    fn in_range(&self, start_ms: i64) -> bool {
        self.from_ms <= start_ms && start_ms < self.to_ms
    }
}

/// What to do with a record of a person who has no storage consent covering it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WithoutConsent {
    /// Keep it in quarantine for the person until they consent (or the hold expires).
    #[default]
    Hold,
    /// Reject it `no_storage_consent` (`[ingest] hold_without_consent_days = 0`).
    Reject,
}

/// What the registry knows about one device, read inside the ingest transaction.
#[derive(Debug, Clone, Default)]
pub struct DeviceView {
    /// The bridge the device is registered through now; `None` for an unknown device.
    pub bridge_id: Option<String>,
    /// The bridges the device was held through, in `from_ms` order.
    pub bridge_periods: Vec<BridgePeriod>,
    pub bindings: Vec<Binding>,
    /// Storage consents in force of the people bound to the device or given its records by
    /// a correction.
    pub storage_consent: Vec<(String, Terms)>,
    /// The device's corrections, in the order they were made.
    pub corrections: Vec<Standing>,
    /// The latest erasure of each person concerned: `(person, fence_ms)`.
    pub fences: Vec<(String, i64)>,
    pub without_consent: WithoutConsent,
}

impl DeviceView {
    /// Whether `person` consents to storing this record (its type and measured time).
    fn consents(&self, person: &str, key: &RecordKey) -> bool {
        self.storage_consent.iter().any(|(p, terms)| {
            p == person && terms.covers(key.record_type, key.start_ms, key.end_ms)
        })
    }

    /// Until when (exclusive, measured start) `bridge` may deliver this device's records:
    /// `Some(None)` any time, `Some(Some(t))` before `t`, `None` never (it never held it).
    fn delivers_until(&self, bridge: &str) -> Option<Option<i64>> {
        if self.bridge_id.is_none() && self.bridge_periods.is_empty() {
            return Some(None); // an unknown device: nobody holds it
        }
        if self.bridge_id.as_deref() == Some(bridge) {
            return Some(None);
        }
        self.bridge_periods
            .iter()
            .filter(|p| p.bridge_id == bridge)
            .max_by_key(|p| p.from_ms)
            .map(|p| p.to_ms)
    }

    /// The fence of `person`, if they ever erased their data.
    fn fence(&self, person: &str) -> Option<i64> {
        self.fences
            .iter()
            .filter(|(p, _)| p == person)
            .map(|(_, f)| *f)
            .max()
    }

    fn in_claim_periods(&self, person: &str, key: &RecordKey) -> bool {
        claim_periods(&self.bindings, person)
            .iter()
            .any(|p| p.contains(key.start_ms, key.end_ms))
    }
}

/// Why a record was quarantined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuarantineReason {
    NoBinding,
    SpansBindingChange,
    /// Its range was unlinked from the person the binding gave it to.
    Unlinked,
}

impl QuarantineReason {
    pub fn code(self) -> &'static str {
        match self {
            Self::NoBinding => "no_binding",
            Self::SpansBindingChange => "spans_binding_change",
            Self::Unlinked => "unlinked",
        }
    }
}

/// The quarantine reason of records held for a person without storage consent.
pub const HELD_WITHOUT_CONSENT: &str = "no_storage_consent";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Store {
        person_id: String,
    },
    Quarantine(QuarantineReason),
    /// `person_id`'s, but they have no storage consent covering it: held in quarantine
    /// (reason [`HELD_WITHOUT_CONSENT`]) until they consent.
    Hold {
        person_id: String,
    },
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
/// may the topic's bridge deliver each valid record, whose is it, and what becomes of it (the
/// rules of the module docs). (That the batch comes from the topic's bridge was settled
/// before: it opened with that bridge's channel key.)
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
    if ack.batch_error.is_some() {
        plan.ack = ack;
        return plan;
    }
    let Some(until) = view.delivers_until(&plan.bridge_id) else {
        // A bridge that never held the device: nothing it sends about it counts.
        reject_all(&mut ack, total, Reason::DeviceNotOnBridge);
        plan.ack = ack;
        return plan;
    };
    plan.accepted.reserve(valid.len());
    let mut not_on_bridge = 0;
    for v in valid {
        let reject = |ack: &mut Ack, reason| {
            ack.rejected.push(Rejection {
                index: v.index,
                record_id: Some(v.record_id),
                reason,
                detail: None,
            })
        };
        if until.is_some_and(|t| v.key.start_ms >= t) {
            not_on_bridge += 1;
            reject(&mut ack, Reason::DeviceNotOnBridge);
            continue;
        }
        let decision = match decide(view, &v.key) {
            Ok(d) => d,
            Err(reason) => {
                reject(&mut ack, reason);
                continue;
            }
        };
        plan.accepted.push(Planned { valid: v, decision });
    }
    if total > 0 && not_on_bridge == total {
        ack.batch_error = Some(Reason::DeviceNotOnBridge);
    }
    ack.rejected.sort_by_key(|r| r.index);
    plan.ack = ack;
    plan
}

/// Rules 2 to 5 of the module docs for one record the bridge may deliver.
fn decide(view: &DeviceView, key: &RecordKey) -> Result<Decision, Reason> {
    let whose = view
        .corrections
        .iter()
        .fold(owner(view, key), |whose, c| correct(view, key, c, whose));
    match whose {
        Ok(person_id) => {
            if view.fence(&person_id).is_some_and(|f| key.start_ms < f) {
                Err(Reason::ErasedByPerson)
            } else if view.consents(&person_id, key) {
                Ok(Decision::Store { person_id })
            } else if view.without_consent == WithoutConsent::Hold {
                Ok(Decision::Hold { person_id })
            } else {
                Err(Reason::NoStorageConsent)
            }
        }
        Err(q) => {
            // Quarantined rows of a person's claim periods went with their erasure; a late
            // one measured before it does not come back.
            let erased = view
                .fences
                .iter()
                .any(|(person, fence)| key.start_ms < *fence && view.in_claim_periods(person, key));
            if erased {
                Err(Reason::ErasedByPerson)
            } else {
                Ok(Decision::Quarantine(q))
            }
        }
    }
}

/// One standing correction applied to where the record stands so far.
fn correct(
    view: &DeviceView,
    key: &RecordKey,
    c: &Standing,
    whose: Result<String, QuarantineReason>,
) -> Result<String, QuarantineReason> {
    if !c.in_range(key.start_ms) {
        return whose;
    }
    match (&c.rule, whose) {
        (Rule::Reattribute { from, to }, Ok(p)) if p == *from => Ok(to.clone()),
        (Rule::Unlink { person, confined }, Ok(p))
            if p == *person && (!confined || view.in_claim_periods(person, key)) =>
        {
            Err(QuarantineReason::Unlinked)
        }
        (Rule::Confirm { person }, Err(_)) if view.in_claim_periods(person, key) => {
            Ok(person.clone())
        }
        (_, whose) => whose,
    }
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
            ..DeviceView::default()
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
            Decision::Quarantine(_) | Decision::Hold { .. } => None,
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
    fn without_storage_consent_records_are_held_or_rejected_and_invalid_ones_rejected_alone() {
        let mut v = view(vec![Binding {
            person_id: "alice".into(),
            from_ms: 0,
            to_ms: None,
        }]);
        v.storage_consent.clear();
        let p = run(vec![steps_at(HOUR, 5)], v.clone());
        assert!(p.ack.rejected.is_empty());
        assert_eq!(
            p.accepted[0].decision,
            Decision::Hold {
                person_id: "alice".into()
            }
        );
        v.without_consent = WithoutConsent::Reject;
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

    fn decisions(p: &Plan) -> Vec<(usize, Decision)> {
        p.accepted
            .iter()
            .map(|a| (a.valid.index, a.decision.clone()))
            .collect()
    }

    fn store(who: &str) -> Decision {
        Decision::Store {
            person_id: who.into(),
        }
    }

    fn rejected(p: &Plan) -> Vec<(usize, Reason)> {
        p.ack.rejected.iter().map(|r| (r.index, r.reason)).collect()
    }

    /// Alice holds the device until hour 10, bob from then on.
    fn handed_over() -> DeviceView {
        view(vec![
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
        ])
    }

    #[test]
    fn corrections_stand_for_records_that_arrive_later_in_the_order_they_were_made() {
        let mut v = handed_over();
        v.storage_consent
            .push(("cy".into(), Terms::storage(&RecordType::ALL)));
        v.corrections = vec![
            // Hours 2-4 were cy's, not alice's.
            Standing {
                from_ms: 2 * HOUR,
                to_ms: 4 * HOUR,
                rule: Rule::Reattribute {
                    from: "alice".into(),
                    to: "cy".into(),
                },
            },
            // Bob says hours 11-13 were not his; then takes hour 12 back.
            Standing {
                from_ms: 11 * HOUR,
                to_ms: 13 * HOUR,
                rule: Rule::Unlink {
                    person: "bob".into(),
                    confined: true,
                },
            },
            Standing {
                from_ms: 12 * HOUR,
                to_ms: 13 * HOUR,
                rule: Rule::Confirm {
                    person: "bob".into(),
                },
            },
            // A re-attribution naming bob as the source moves only what is bob's at that
            // point: not what another rule quarantined, not alice's.
            Standing {
                from_ms: 0,
                to_ms: 20 * HOUR,
                rule: Rule::Reattribute {
                    from: "nobody".into(),
                    to: "cy".into(),
                },
            },
        ];
        let p = run(
            vec![
                steps_at(HOUR, 1),
                steps_at(3 * HOUR, 3),
                steps_at(11 * HOUR, 11),
                steps_at(12 * HOUR, 12),
                steps_at(14 * HOUR, 14),
            ],
            v,
        );
        assert_eq!(
            decisions(&p),
            [
                (0, store("alice")),
                (1, store("cy")),
                (2, Decision::Quarantine(QuarantineReason::Unlinked)),
                (3, store("bob")),
                (4, store("bob")),
            ]
        );
    }

    #[test]
    fn an_owners_unlink_and_confirm_stay_inside_their_claim_periods() {
        let mut v = handed_over();
        v.corrections = vec![
            // Alice confirms "everything", which is only her own time: not bob's, and not a
            // record straddling the hand-over.
            Standing {
                from_ms: 0,
                to_ms: 100 * HOUR,
                rule: Rule::Confirm {
                    person: "alice".into(),
                },
            },
            // An operator's unlink is not confined; bob's own would be.
            Standing {
                from_ms: 0,
                to_ms: 100 * HOUR,
                rule: Rule::Unlink {
                    person: "bob".into(),
                    confined: false,
                },
            },
        ];
        let p = run(
            vec![
                steps_at(10 * HOUR - 30_000, 1),
                steps_at(11 * HOUR, 2),
                steps_at(5 * HOUR, 3),
            ],
            v,
        );
        assert_eq!(
            decisions(&p),
            [
                (
                    0,
                    Decision::Quarantine(QuarantineReason::SpansBindingChange)
                ),
                (1, Decision::Quarantine(QuarantineReason::Unlinked)),
                (2, store("alice")),
            ]
        );
    }

    #[test]
    fn an_erasure_fences_off_what_was_measured_before_it() {
        let mut v = handed_over();
        // Bob erased at hour 20 and paired again at hour 30; alice never erased.
        v.bindings[1].to_ms = Some(20 * HOUR);
        v.bindings.push(Binding {
            person_id: "bob".into(),
            from_ms: 30 * HOUR,
            to_ms: None,
        });
        v.fences = vec![("bob".into(), 20 * HOUR)];
        let p = run(
            vec![
                steps_at(HOUR, 1),
                steps_at(15 * HOUR, 2),
                steps_at(25 * HOUR, 3),
                steps_at(31 * HOUR, 4),
            ],
            v.clone(),
        );
        assert_eq!(rejected(&p), [(1, Reason::ErasedByPerson)]);
        assert_eq!(
            decisions(&p),
            [
                (0, store("alice")),
                (2, Decision::Quarantine(QuarantineReason::NoBinding)),
                (3, store("bob")),
            ]
        );
        // Given to bob by a correction, or held for his consent: fenced off all the same.
        v.corrections = vec![Standing {
            from_ms: 0,
            to_ms: 2 * HOUR,
            rule: Rule::Reattribute {
                from: "alice".into(),
                to: "bob".into(),
            },
        }];
        v.storage_consent.retain(|(p, _)| p != "bob");
        let p = run(vec![steps_at(HOUR, 1), steps_at(19 * HOUR, 2)], v.clone());
        assert_eq!(
            rejected(&p),
            [(0, Reason::ErasedByPerson), (1, Reason::ErasedByPerson)]
        );
        // A record unlinked from bob before the fence does not come back into quarantine.
        v.corrections = vec![Standing {
            from_ms: 10 * HOUR,
            to_ms: 20 * HOUR,
            rule: Rule::Unlink {
                person: "bob".into(),
                confined: true,
            },
        }];
        let p = run(vec![steps_at(12 * HOUR, 1)], v);
        assert_eq!(rejected(&p), [(0, Reason::ErasedByPerson)]);
    }

    #[test]
    fn a_bridge_delivers_what_was_measured_before_the_end_of_its_period() {
        // The device moved from "old" to "br" at hour 10.
        let mut v = view(vec![Binding {
            person_id: "alice".into(),
            from_ms: 0,
            to_ms: None,
        }]);
        v.bridge_periods = vec![
            BridgePeriod {
                bridge_id: "old".into(),
                from_ms: i64::MIN,
                to_ms: Some(10 * HOUR),
            },
            BridgePeriod {
                bridge_id: "br".into(),
                from_ms: 10 * HOUR,
                to_ms: None,
            },
        ];
        let now = DateTime::from_timestamp_millis(100 * HOUR).unwrap();
        let send = |bridge: &str, starts: &[i64]| {
            let records = starts.iter().map(|h| {
                let mut r = steps_at(h * HOUR, 1);
                r.bridge_id = bridge.into();
                r
            });
            let batch = Batch::new(bridge, "dev", Uuid::new_v4(), records.collect());
            let payload = serde_json::to_vec(&batch).unwrap();
            plan(&payload, bridge, "dev", &v, now, &Limits::default())
        };
        // The current bridge: the whole history.
        let p = send("br", &[1, 50]);
        assert_eq!((p.accepted.len(), p.ack.batch_error), (2, None));
        // The old one: its backlog, not what was measured after the move.
        let p = send("old", &[1, 9, 10, 11]);
        assert_eq!(p.accepted.len(), 2);
        assert_eq!(
            (rejected(&p), p.ack.batch_error),
            (
                vec![
                    (2, Reason::DeviceNotOnBridge),
                    (3, Reason::DeviceNotOnBridge)
                ],
                None
            )
        );
        let p = send("old", &[11]);
        assert_eq!(p.ack.batch_error, Some(Reason::DeviceNotOnBridge));
        // One that never held it: nothing, of any time.
        let p = send("stranger", &[1]);
        assert_eq!(
            (p.accepted.len(), p.ack.batch_error),
            (0, Some(Reason::DeviceNotOnBridge))
        );
    }

    #[test]
    fn claim_periods_merge_back_to_back_bindings_and_give_the_first_holder_the_past() {
        let b = |who: &str, from: i64, to: Option<i64>| Binding {
            person_id: who.into(),
            from_ms: from,
            to_ms: to,
        };
        let bindings = [
            b("ana", 0, Some(50)),
            b("ana", 50, Some(100)),
            b("ben", 100, Some(200)),
            b("cai", 300, None),
        ];
        let p = |from_ms, to_ms| Period { from_ms, to_ms };
        assert_eq!(claim_periods(&bindings, "ana"), [p(i64::MIN, 100)]);
        assert_eq!(claim_periods(&bindings, "ben"), [p(100, 200)]);
        assert_eq!(claim_periods(&bindings, "cai"), [p(300, i64::MAX)]);
        assert!(claim_periods(&bindings, "dan").is_empty());
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
