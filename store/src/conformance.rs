//! The conformance suite: what every backend must do, written against the traits alone
//! ([`Backend`]), so the same cases run on SQLite here and on each backend added later.
//!
//! Each case takes a fresh, empty backend and panics on the first broken promise, naming
//! it. Run the whole suite for a backend with [`conformance_tests!`](crate::conformance_tests),
//! which writes one `#[test]` per case:
//!
//! ```ignore
//! phr_store::conformance_tests!(|| {
//!     let dir = tempfile::tempdir().unwrap();
//!     let store = phr_store::Store::open(&dir.path().join("phr.sqlite")).unwrap();
//!     (dir, Box::new(store) as Box<dyn phr_store::Backend>)
//! });
//! ```
//!
//! The cases pin the promises the product exists for: a record is stored once, for the
//! person whose binding covers it, only with their storage consent; an erasure removes it
//! and fences it from coming back; a reader of the sync feed sees exactly what its consent
//! covers, once; one-time secrets work once. Expected values are written out here from the
//! rules in the docs ([`crate::ingest`], [`crate::visibility`]), not computed by the code
//! under test. The SQLite backend's own tests go further into each module.

use std::collections::HashSet;

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use phr_schema::record::{IntervalFrame, Provenance, StepCount};
use phr_schema::{Ack, Batch, Body, Limits, Reason, Record, RecordType};

use crate::audit::{Action, Entry};
use crate::changes::Op;
use crate::corrections::Range;
use crate::sessions::Role;
use crate::{Backend, GranteeKind, StoredRecord, Terms};

/// The names of the cases, in the order [`conformance_tests!`](crate::conformance_tests)
/// runs them.
pub const CASES: &[&str] = &[
    "a_record_is_stored_once_for_the_bound_person",
    "records_outside_every_binding_are_quarantined_for_nobody",
    "a_bridge_that_never_held_the_device_is_refused",
    "without_storage_consent_records_are_held_and_released_by_consent",
    "pages_of_records_cover_the_range_once_in_order",
    "an_erasure_removes_the_records_and_fences_them_out",
    "the_feed_shows_a_reader_what_its_consent_covers_once",
    "a_withdrawn_consent_ends_the_feed_at_once",
    "a_reattribution_moves_records_and_the_feed_follows",
    "the_disclosure_log_keeps_entries_in_order_and_verifies",
    "one_time_secrets_work_once",
    "a_bridge_key_does_not_change_silently",
];

/// One `#[test]` per case of the suite for the backend `$open` makes: `$open` is called
/// once per case and returns `(guard, Box<dyn Backend>)`; the guard (a temporary directory,
/// a database handle) lives until the case ends.
#[macro_export]
macro_rules! conformance_tests {
    ($open:expr) => {
        $crate::conformance_tests!(@cases $open;
            a_record_is_stored_once_for_the_bound_person,
            records_outside_every_binding_are_quarantined_for_nobody,
            a_bridge_that_never_held_the_device_is_refused,
            without_storage_consent_records_are_held_and_released_by_consent,
            pages_of_records_cover_the_range_once_in_order,
            an_erasure_removes_the_records_and_fences_them_out,
            the_feed_shows_a_reader_what_its_consent_covers_once,
            a_withdrawn_consent_ends_the_feed_at_once,
            a_reattribution_moves_records_and_the_feed_follows,
            the_disclosure_log_keeps_entries_in_order_and_verifies,
            one_time_secrets_work_once,
            a_bridge_key_does_not_change_silently
        );
    };
    (@cases $open:expr; $($case:ident),* $(,)?) => {$(
        #[test]
        fn $case() {
            let (_guard, backend) = ($open)();
            $crate::conformance::$case(&*backend);
        }
    )*};
}

const BRIDGE: &str = "br-1";
const BAND: &str = "band-1";
const ANN: &str = "ann";
const BOB: &str = "bob";
const ACME: &str = "acme";

/// Two days ago, on a whole hour: every record of the cases is measured after it.
fn base() -> DateTime<Utc> {
    let t = (Utc::now() - TimeDelta::days(2)).timestamp();
    DateTime::from_timestamp(t - t.rem_euclid(3600), 0).expect("a time in range")
}

fn minute(m: i64) -> DateTime<Utc> {
    base() + TimeDelta::minutes(m)
}

/// A one-minute step count of `device` measured at minute `m` (1 to 100 steps).
fn steps(device: &str, m: i64) -> Record {
    let (start, end) = (minute(m).fixed_offset(), minute(m + 1).fixed_offset());
    Record::new(
        device,
        BRIDGE,
        end,
        Provenance::sensed("conformance/1"),
        Body::StepCount(StepCount {
            effective_time_frame: IntervalFrame::new(start, end),
            step_count: m.rem_euclid(100) + 1,
        }),
    )
}

/// Sends `records` as one batch from `bridge`, through the whole ingest path.
fn send(b: &dyn Backend, bridge: &str, records: Vec<Record>) -> Ack {
    let batch = Batch::new(bridge, BAND, Uuid::new_v4(), records);
    let payload = serde_json::to_vec(&batch).expect("a batch serialises");
    let checked = crate::ingest::check(&payload, bridge, BAND, Utc::now(), &Limits::default());
    let mut acks = b.ingest(vec![checked], Utc::now()).expect("ingest");
    assert_eq!(acks.len(), 1, "one ack per message");
    acks.remove(0)
}

/// Ann, with storage consent for everything and her band bound from minute 0.
fn ann_with_band(b: &dyn Backend) {
    b.add_person(ANN, "Ann", "UTC").expect("add person");
    b.grant_storage_consent(ANN, &RecordType::ALL)
        .expect("storage consent");
    b.add_device(BAND, BRIDGE, None).expect("add device");
    b.bind(BAND, ANN, minute(0)).expect("bind");
}

/// The record ids stored for `person` (step counts of minutes 0 to 1,000).
fn stored_ids(b: &dyn Backend, person: &str) -> Vec<String> {
    let page = b
        .records(
            person,
            RecordType::StepCount,
            minute(-1_000).timestamp_millis(),
            minute(1_000).timestamp_millis(),
            None,
            10_000,
        )
        .expect("records");
    page.records.iter().map(id_of).collect()
}

/// The `record_id` of a stored record, read from its JSON.
fn id_of(r: &StoredRecord) -> String {
    serde_json::from_str::<Record>(&r.json)
        .expect("a stored record parses")
        .record_id
        .to_string()
}

fn ids(records: &[Record]) -> Vec<String> {
    records.iter().map(|r| r.record_id.to_string()).collect()
}

fn acme_terms(types: &[RecordType]) -> Terms {
    Terms {
        grantee: ACME.into(),
        grantee_kind: GranteeKind::Client,
        purpose: "research".into(),
        data_types: types.to_vec(),
        window_from: None,
        window_to: None,
        valid_until: None,
    }
}

/// Reads the whole feed of `ACME` from `after`, page by page (3 changes a page); returns
/// the changes and the last position.
fn read_feed(b: &dyn Backend, after: i64) -> (Vec<(Op, String, Option<String>)>, i64) {
    let (mut out, mut cursor) = (Vec::new(), after);
    for _ in 0..1_000 {
        let page = b
            .feed(ACME, GranteeKind::Client, None, cursor, 3, Utc::now())
            .expect("feed");
        assert!(page.last_seq >= cursor, "the cursor never goes back");
        cursor = page.last_seq;
        out.extend(
            page.changes
                .into_iter()
                .map(|c| (c.op, c.person_id, c.record.map(|(_, id)| id))),
        );
        if !page.more {
            return (out, cursor);
        }
    }
    panic!("the feed never ended");
}

/// A bound, consented record is stored for its person; the same batch again stores nothing
/// more and says so (duplicates, not errors).
pub fn a_record_is_stored_once_for_the_bound_person(b: &dyn Backend) {
    ann_with_band(b);
    let records: Vec<Record> = (0..5).map(|m| steps(BAND, m)).collect();
    let ack = send(b, BRIDGE, records.clone());
    assert_eq!((ack.stored, ack.duplicate, ack.quarantined), (5, 0, 0));
    assert!(ack.rejected.is_empty() && ack.batch_error.is_none());
    assert!(ack.acked_at.is_some(), "an ack says when it was committed");
    let again = send(b, BRIDGE, records.clone());
    assert_eq!(
        (again.stored, again.duplicate, again.quarantined),
        (0, 5, 0)
    );
    assert_eq!(stored_ids(b, ANN), ids(&records));
    assert_eq!(b.counts().expect("counts"), (5, 0));
}

/// Measured before the binding began: shown to nobody, counted as quarantined.
pub fn records_outside_every_binding_are_quarantined_for_nobody(b: &dyn Backend) {
    ann_with_band(b);
    let ack = send(b, BRIDGE, vec![steps(BAND, -10), steps(BAND, 10)]);
    assert_eq!((ack.stored, ack.quarantined), (1, 1), "{ack:?}");
    assert_eq!(stored_ids(b, ANN), ids(&[steps(BAND, 10)]));
    assert_eq!(b.counts().expect("counts"), (1, 1));
}

/// A bridge that never held the device delivers nothing of it, and the refusal is counted
/// against the device's owner.
pub fn a_bridge_that_never_held_the_device_is_refused(b: &dyn Backend) {
    ann_with_band(b);
    let ack = send(b, "br-intruder", vec![steps(BAND, 1)]);
    assert_eq!(ack.stored, 0);
    assert_eq!(ack.batch_error, Some(Reason::DeviceNotOnBridge));
    assert!(stored_ids(b, ANN).is_empty());
    let refused = b
        .refused_batches(Utc::now() - TimeDelta::hours(1), 10)
        .expect("refused batches");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(
        (refused[0].bridge_id.as_str(), refused[0].batches),
        ("br-intruder", 1)
    );
}

/// Without storage consent a record is held for its person; consenting stores it, and
/// nothing is stored twice.
pub fn without_storage_consent_records_are_held_and_released_by_consent(b: &dyn Backend) {
    b.add_person(BOB, "Bob", "UTC").expect("add person");
    b.add_device(BAND, BRIDGE, None).expect("add device");
    b.bind(BAND, BOB, minute(0)).expect("bind");
    let records = vec![steps(BAND, 1), steps(BAND, 2)];
    let ack = send(b, BRIDGE, records.clone());
    assert_eq!((ack.stored, ack.quarantined), (0, 2));
    assert!(stored_ids(b, BOB).is_empty());
    let held = b.quarantine_of(BOB).expect("quarantine");
    assert_eq!(held.iter().map(|q| q.records).sum::<u64>(), 2);
    b.grant_storage_consent(BOB, &RecordType::ALL)
        .expect("storage consent");
    assert_eq!(stored_ids(b, BOB), ids(&records));
    let again = send(b, BRIDGE, records.clone());
    assert_eq!((again.stored, again.duplicate), (0, 2));
    assert_eq!(b.counts().expect("counts"), (2, 0));
}

/// Pages of 7 over 20 records: every record once, in measured order, and a last page
/// without a next key.
pub fn pages_of_records_cover_the_range_once_in_order(b: &dyn Backend) {
    ann_with_band(b);
    let records: Vec<Record> = (0..20).rev().map(|m| steps(BAND, m)).collect();
    assert_eq!(send(b, BRIDGE, records).stored, 20);
    let (from, to) = (minute(0).timestamp_millis(), minute(20).timestamp_millis());
    let (mut seen, mut after, mut pages) = (Vec::new(), None, 0);
    loop {
        let page = b
            .records(ANN, RecordType::StepCount, from, to, after.as_ref(), 7)
            .expect("records");
        pages += 1;
        assert!(page.records.len() <= 7);
        seen.extend(page.records.iter().map(id_of));
        match page.next {
            Some(k) => after = Some(k),
            None => break,
        }
        assert!(pages < 10, "paging never ends");
    }
    let expected: Vec<Record> = (0..20).map(|m| steps(BAND, m)).collect();
    assert_eq!(seen, ids(&expected), "each record once, in measured order");
    assert_eq!(pages, 3);
}

/// An erasure removes the person's records, tells a reader that held consent, and fences
/// what was measured before it: the bridge's replay is rejected, not stored again.
pub fn an_erasure_removes_the_records_and_fences_them_out(b: &dyn Backend) {
    ann_with_band(b);
    let records = vec![steps(BAND, 1), steps(BAND, 2)];
    assert_eq!(send(b, BRIDGE, records.clone()).stored, 2);
    b.grant_consent(ANN, acme_terms(&[RecordType::StepCount]), ANN, Utc::now())
        .expect("consent");
    let (_, cursor) = read_feed(b, 0);
    let erasure = b.erase_person(ANN, ANN, Utc::now()).expect("erase");
    assert_eq!(erasure.records, 2);
    assert!(stored_ids(b, ANN).is_empty());
    assert_eq!(b.counts().expect("counts"), (0, 0));
    let replay = send(b, BRIDGE, records);
    assert_eq!(replay.stored + replay.quarantined + replay.duplicate, 0);
    let reasons: HashSet<Reason> = replay.rejected.iter().map(|r| r.reason).collect();
    assert_eq!(reasons, HashSet::from([Reason::ErasedByPerson]));
    let (after, _) = read_feed(b, cursor);
    assert_eq!(after, [(Op::PersonErased, ANN.to_owned(), None)]);
    assert!(b
        .consents(ANN, Utc::now())
        .expect("consents")
        .iter()
        .all(|c| { c.status != crate::ConsentStatus::Granted }));
}

/// A company with consent to Ann's steps sees each of her step records once, including
/// those stored before it consented; nothing of Bob, who did not consent.
pub fn the_feed_shows_a_reader_what_its_consent_covers_once(b: &dyn Backend) {
    ann_with_band(b);
    assert_eq!(
        send(b, BRIDGE, (0..4).map(|m| steps(BAND, m)).collect()).stored,
        4
    );
    b.add_person(BOB, "Bob", "UTC").expect("add person");
    b.grant_storage_consent(BOB, &RecordType::ALL)
        .expect("storage consent");
    b.add_device("band-2", BRIDGE, None).expect("add device");
    b.bind("band-2", BOB, minute(0)).expect("bind");
    let bob = b.import_records(BOB, &[steps("band-2", 1)], Utc::now());
    assert_eq!(bob.expect("import").stored, 1);

    let (nothing, _) = read_feed(b, 0);
    assert!(nothing.is_empty(), "no consent, no changes: {nothing:?}");
    b.grant_consent(ANN, acme_terms(&[RecordType::StepCount]), ANN, Utc::now())
        .expect("consent");
    let later = vec![steps(BAND, 4), steps(BAND, 5)];
    assert_eq!(send(b, BRIDGE, later).stored, 2);
    let (changes, cursor) = read_feed(b, 0);
    let expected: HashSet<String> = ids(&(0..6).map(|m| steps(BAND, m)).collect::<Vec<_>>())
        .into_iter()
        .collect();
    let seen: Vec<String> = changes
        .iter()
        .map(|(op, person, id)| {
            assert_eq!((*op, person.as_str()), (Op::Stored, ANN));
            id.clone().expect("a stored change names its record")
        })
        .collect();
    assert_eq!(seen.len(), 6, "each record once: {seen:?}");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), expected);
    let (again, _) = read_feed(b, cursor);
    assert!(again.is_empty(), "read through, nothing repeats: {again:?}");
}

/// After withdrawal, changes not yet read are not shown either.
pub fn a_withdrawn_consent_ends_the_feed_at_once(b: &dyn Backend) {
    ann_with_band(b);
    let consent = b
        .grant_consent(ANN, acme_terms(&[RecordType::StepCount]), ANN, Utc::now())
        .expect("consent");
    assert_eq!(send(b, BRIDGE, vec![steps(BAND, 1)]).stored, 1);
    let (first, cursor) = read_feed(b, 0);
    assert_eq!(first.len(), 1);
    assert_eq!(send(b, BRIDGE, vec![steps(BAND, 2)]).stored, 1);
    let withdrawn = b
        .withdraw_consent(ANN, consent.consent_id, ANN, Utc::now())
        .expect("withdraw");
    assert!(withdrawn.is_some());
    let (after, _) = read_feed(b, cursor);
    assert!(after.is_empty(), "{after:?}");
    assert!(b
        .consents_in_force(ANN, ACME, GranteeKind::Client, Utc::now())
        .expect("consents")
        .is_empty());
}

/// Records re-attributed from Ann to Bob are Bob's; Ann's reader is told they are gone.
pub fn a_reattribution_moves_records_and_the_feed_follows(b: &dyn Backend) {
    ann_with_band(b);
    b.add_person(BOB, "Bob", "UTC").expect("add person");
    b.grant_storage_consent(BOB, &RecordType::ALL)
        .expect("storage consent");
    let records: Vec<Record> = (0..3).map(|m| steps(BAND, m)).collect();
    assert_eq!(send(b, BRIDGE, records.clone()).stored, 3);
    b.grant_consent(ANN, acme_terms(&[RecordType::StepCount]), ANN, Utc::now())
        .expect("consent");
    let (_, cursor) = read_feed(b, 0);
    let range = Range {
        device_id: BAND.into(),
        from: minute(0),
        to: minute(2),
    };
    let c = b
        .reattribute(&range, ANN, BOB, "worn by Bob", "operator", Utc::now())
        .expect("reattribute");
    assert_eq!(c.records, 2);
    assert_eq!(stored_ids(b, BOB), ids(&records[..2]));
    assert_eq!(stored_ids(b, ANN), ids(&records[2..]));
    let (after, _) = read_feed(b, cursor);
    let erased: HashSet<String> = after
        .iter()
        .map(|(op, person, id)| {
            assert_eq!((*op, person.as_str()), (Op::Erased, ANN));
            id.clone().expect("an erased change names its record")
        })
        .collect();
    assert_eq!(erased, ids(&records[..2]).into_iter().collect());
}

/// Entries come back in the order written, after a position; the chain verifies.
pub fn the_disclosure_log_keeps_entries_in_order_and_verifies(b: &dyn Backend) {
    b.add_person(ANN, "Ann", "UTC").expect("add person");
    let purposes = ["first", "second", "third"];
    for p in purposes {
        b.log_disclosure(&Entry::by_owner(ANN, Action::Export, p, 1, Utc::now()))
            .expect("log");
    }
    let log = b.disclosures(ANN, 0, 100).expect("disclosures");
    let read: Vec<&str> = log.iter().map(|l| l.entry.purpose.as_str()).collect();
    assert_eq!(read, purposes);
    let rest = b.disclosures(ANN, log[0].seq, 100).expect("disclosures");
    assert_eq!(rest.len(), 2);
    assert!(b.disclosures(BOB, 0, 100).expect("disclosures").is_empty());
    let v = b.verify_audit().expect("verify");
    assert_eq!((v.rows, v.broken), (3, None));
}

/// A sign-in code opens one session; an assertion's `jti` is accepted once.
pub fn one_time_secrets_work_once(b: &dyn Backend) {
    let now = Utc::now();
    let code = b
        .issue_signin_code(ANN, Role::Owner, TimeDelta::minutes(5), now)
        .expect("code");
    let first = b
        .redeem_signin_code(&code, TimeDelta::hours(1), now)
        .expect("redeem");
    let session = first.expect("a fresh code opens a session");
    assert_eq!((session.subject.as_str(), session.role), (ANN, Role::Owner));
    let second = b
        .redeem_signin_code(&code, TimeDelta::hours(1), now)
        .expect("redeem");
    assert!(second.is_none(), "a used code opens nothing");
    let until = now + TimeDelta::minutes(5);
    assert!(b.remember_jti(ACME, "jti-1", until, now).expect("jti"));
    assert!(!b.remember_jti(ACME, "jti-1", until, now).expect("jti"));
    assert!(b.remember_jti("other", "jti-1", until, now).expect("jti"));
}

/// The same key again changes nothing; another key is a conflict until revoked.
pub fn a_bridge_key_does_not_change_silently(b: &dyn Backend) {
    let key = |seed: u8| ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
    let hex = |k: ed25519_dalek::VerifyingKey| {
        k.as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let (k1, k2) = (hex(key(1)), hex(key(2)));
    b.register_bridge_key(BRIDGE, &k1).expect("enrol");
    b.register_bridge_key(BRIDGE, &k1).expect("same key again");
    assert!(matches!(
        b.register_bridge_key(BRIDGE, &k2),
        Err(crate::Error::Conflict(_))
    ));
    let enrolled = b.bridge_public_key(BRIDGE).expect("key").expect("enrolled");
    assert_eq!(enrolled, key(1));
    assert!(b.revoke_bridge(BRIDGE).expect("revoke"));
    assert!(b.bridge_public_key(BRIDGE).expect("key").is_none());
    b.register_bridge_key(BRIDGE, &k2).expect("enrol anew");
}
