use chrono::TimeDelta;
use phr_schema::envelope::Rejection;
use phr_schema::record::{IntervalFrame, Provenance, StepCount};
use phr_schema::Body;

use super::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

fn batch(device: &str) -> Batch {
    Batch::new("bridge", device, Uuid::new_v4(), vec![])
}

/// One minute of `steps` from `device`, starting `minute` minutes after 09:00Z.
fn minute(device: &str, minute: i64, steps: i64) -> Record {
    let start = (t("2026-01-01T09:00:00Z") + TimeDelta::minutes(minute)).fixed_offset();
    let end = start + TimeDelta::minutes(1);
    Record::new(
        device,
        "bridge",
        end,
        Provenance::sensed("test/1"),
        Body::StepCount(StepCount {
            effective_time_frame: IntervalFrame::new(start, end),
            step_count: steps,
        }),
    )
}

fn steps_batch(device: &str, n: i64) -> Batch {
    let records = (0..n).map(|i| minute(device, i, 10 + i)).collect();
    Batch::new("bridge", device, Uuid::new_v4(), records)
}

fn rejection(index: usize, reason: Reason) -> Rejection {
    Rejection {
        index,
        record_id: None,
        reason,
        detail: None,
    }
}

fn ack(batch: &Batch, rejected: Vec<Rejection>, batch_error: Option<Reason>) -> Ack {
    Ack {
        batch_id: Some(batch.batch_id),
        stored: (batch.records.len() - rejected.len()) as u32,
        rejected,
        batch_error,
        ..Ack::default()
    }
}

fn open(dir: &tempfile::TempDir) -> Outbox {
    Outbox::open(&dir.path().join("outbox.sqlite"), 100).unwrap()
}

/// Record ids in the dead-letter table, by reading the file (not through the outbox's own
/// queries).
fn dead_ids(dir: &tempfile::TempDir) -> Vec<(String, String)> {
    let conn = Connection::open(dir.path().join("outbox.sqlite")).unwrap();
    let mut stmt = conn
        .prepare("SELECT record_id, reason FROM dead_letter ORDER BY record_id")
        .unwrap();
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    rows.map(|r| r.unwrap()).collect()
}

fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    v.sort();
    v
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

#[test]
fn marks_move_per_type_and_a_device_cursor_is_its_earliest() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = open(&dir);
    let (steps, live) = (t("2026-01-01T09:59:00Z"), t("2026-01-01T11:30:00Z"));
    let marks = [
        Mark {
            device_id: "band",
            record_type: RecordType::StepCount,
            until: steps,
        },
        Mark {
            device_id: "band",
            record_type: RecordType::HeartRate,
            until: live,
        },
    ];
    o.push_marked(&[], &marks, &[], Utc::now()).unwrap();
    assert_eq!(o.mark("band", RecordType::StepCount).unwrap(), Some(steps));
    assert_eq!(o.mark("band", RecordType::HeartRate).unwrap(), Some(live));
    assert_eq!(o.mark("band", RecordType::SleepEpisode).unwrap(), None);
    assert_eq!(o.cursor("band").unwrap(), Some(steps));
    assert_eq!(o.cursors().unwrap(), vec![("band".to_owned(), steps)]);
    // Heart rate moving on leaves the steps mark where it was.
    let later = [Mark {
        device_id: "band",
        record_type: RecordType::HeartRate,
        until: live + TimeDelta::hours(1),
    }];
    o.push_marked(&[], &later, &[], Utc::now()).unwrap();
    assert_eq!(o.mark("band", RecordType::StepCount).unwrap(), Some(steps));
}

/// A file written by the previous bridge (schema 0: one `cursor` row per device).
#[test]
fn an_old_one_mark_outbox_is_migrated_to_a_mark_per_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    let old = batch("band");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE outbox (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 batch_id TEXT NOT NULL UNIQUE,
                 device_id TEXT NOT NULL,
                 records INTEGER NOT NULL,
                 payload BLOB NOT NULL,
                 created_at TEXT NOT NULL
             );
             CREATE TABLE cursor (device_id TEXT PRIMARY KEY, until TEXT NOT NULL);
             CREATE TABLE device_state (device_id TEXT PRIMARY KEY, state TEXT NOT NULL);
             INSERT INTO cursor VALUES ('band', '2026-01-01T10:00:00+00:00');
             INSERT INTO device_state VALUES ('band', '{}');",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO outbox (batch_id, device_id, records, payload, created_at)
             VALUES (?1, 'band', 0, ?2, '2026-01-01T10:00:00+00:00')",
            params![old.batch_id.to_string(), serde_json::to_vec(&old).unwrap()],
        )
        .unwrap();
    }
    let o = Outbox::open(&path, 10).unwrap();
    let mark = t("2026-01-01T10:00:00Z");
    for kind in RecordType::ALL {
        assert_eq!(o.mark("band", kind).unwrap(), Some(mark), "{kind}");
    }
    assert_eq!(o.pending(10).unwrap()[0].batch_id, old.batch_id);
    assert_eq!(o.states().unwrap().len(), 1);
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 1);
    drop(o);
    // Opening again changes nothing.
    let o = Outbox::open(&path, 10).unwrap();
    assert_eq!(o.marks().unwrap().len(), RecordType::ALL.len());
}

#[test]
fn a_newer_schema_is_refused_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA user_version = 7;")
        .unwrap();
    let err = Outbox::open(&path, 10).unwrap_err().to_string();
    assert!(err.contains("newer"), "{err}");
}

#[test]
fn rejected_records_are_dead_lettered_with_the_batch_removal_and_erased_ones_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = open(&dir);
    let b = steps_batch("band", 4);
    o.push(std::slice::from_ref(&b), &[], &[], Utc::now())
        .unwrap();
    let now = t("2026-01-02T00:00:00Z");
    let a = ack(
        &b,
        vec![
            rejection(1, Reason::ImplausibleCount),
            rejection(2, Reason::ErasedByPerson),
            // Named twice: kept once.
            rejection(1, Reason::ImplausibleCount),
        ],
        None,
    );
    let s = o.settle(std::slice::from_ref(&a), now).unwrap();
    assert_eq!(s.removed, vec![b.batch_id]);
    assert_eq!(s.dead_lettered, 1);
    assert_eq!(s.discarded_erased, 1);
    assert_eq!(o.depth().unwrap(), 0);
    assert_eq!(
        dead_ids(&dir),
        vec![(
            b.records[1].record_id.to_string(),
            "implausible_count".to_owned()
        )],
        "exactly the rejected record, by its index"
    );
    assert_eq!(
        o.discarded().unwrap(),
        vec![Discarded {
            device_id: "band".into(),
            cause: "erased_by_person".into(),
            records: 1
        }]
    );
    let groups = o.dead_letter_groups().unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(
        (groups[0].records, groups[0].measured_from.as_str()),
        (1, "2026-01-01T09:01:00+00:00")
    );
    // The same ack again (a resend answered twice) finds nothing to settle.
    assert_eq!(o.settle(&[a], now).unwrap(), Settlement::default());
    assert_eq!(o.dead_letter_depth().unwrap(), 1);
}

#[test]
fn a_batch_error_dead_letters_the_whole_batch_and_an_ack_of_all_stored_only_removes() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = open(&dir);
    let (refused, fine) = (steps_batch("band", 3), steps_batch("other", 2));
    o.push(&[refused.clone(), fine.clone()], &[], &[], Utc::now())
        .unwrap();
    let refused_ack = Ack {
        batch_id: Some(refused.batch_id),
        batch_error: Some(Reason::DeviceNotOnBridge),
        rejected: (0..3)
            .map(|i| rejection(i, Reason::DeviceNotOnBridge))
            .collect(),
        ..Ack::default()
    };
    let s = o
        .settle(&[refused_ack, ack(&fine, vec![], None)], Utc::now())
        .unwrap();
    assert_eq!(s.removed, vec![refused.batch_id, fine.batch_id]);
    assert_eq!(s.dead_lettered, 3);
    assert_eq!(
        sorted(dead_ids(&dir)),
        sorted(
            refused
                .records
                .iter()
                .map(|r| (r.record_id.to_string(), "device_not_on_bridge".to_owned()))
                .collect()
        )
    );
    let per_batch = o.dead_letter_batches().unwrap();
    assert_eq!(per_batch.len(), 1);
    assert_eq!(
        per_batch[0].batch_id.as_deref(),
        Some(refused.batch_id.to_string().as_str())
    );
}

#[test]
fn at_the_dead_letter_bound_the_batch_stays_pending_instead() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    let mut o = Outbox::open(&path, 10).unwrap().with_max_dead_records(2);
    let b = steps_batch("band", 3);
    o.push(std::slice::from_ref(&b), &[], &[], Utc::now())
        .unwrap();
    let a = Ack {
        batch_id: Some(b.batch_id),
        batch_error: Some(Reason::TopicMismatch),
        ..Ack::default()
    };
    let s = o.settle(std::slice::from_ref(&a), Utc::now()).unwrap();
    assert_eq!(s.held_for_space, vec![b.batch_id]);
    assert!(s.removed.is_empty());
    assert_eq!(o.depth().unwrap(), 1, "still pending, nothing dropped");
    assert_eq!(o.dead_letter_depth().unwrap(), 0);
    // With room (the operator raised the bound), the same ack settles it.
    let mut o = Outbox::open(&path, 10).unwrap().with_max_dead_records(3);
    let s = o.settle(&[a], Utc::now()).unwrap();
    assert_eq!((s.removed.len(), s.dead_lettered), (1, 3));
}

/// Crash safety without a crash: when writing the dead letters fails half-way, the
/// transaction rolls back and the batch is still pending (never both, never neither).
#[test]
fn a_failing_dead_letter_write_leaves_the_batch_pending() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = open(&dir);
    let b = steps_batch("band", 3);
    o.push(std::slice::from_ref(&b), &[], &[], Utc::now())
        .unwrap();
    // The second dead letter fails to insert (a disk error, as far as the outbox can tell).
    Connection::open(dir.path().join("outbox.sqlite"))
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER fail_second BEFORE INSERT ON dead_letter
             WHEN (SELECT count(*) FROM dead_letter) >= 1
             BEGIN SELECT RAISE(ABORT, 'injected'); END;",
        )
        .unwrap();
    let a = ack(
        &b,
        vec![
            rejection(0, Reason::NegativeCount),
            rejection(2, Reason::NegativeCount),
        ],
        None,
    );
    assert!(o.settle(&[a], Utc::now()).is_err());
    assert_eq!(o.depth().unwrap(), 1, "the batch is still pending");
    assert_eq!(o.dead_letter_depth().unwrap(), 0, "and nothing half-moved");
}

#[test]
fn replay_moves_dead_letters_back_as_new_batches_of_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = open(&dir);
    let (a, b) = (steps_batch("a", 5), steps_batch("b", 2));
    o.push(&[a.clone(), b.clone()], &[], &[], Utc::now())
        .unwrap();
    o.settle(
        &[
            ack(&a, vec![], Some(Reason::DeviceNotOnBridge)),
            ack(&b, vec![rejection(1, Reason::InFuture)], None),
        ],
        Utc::now(),
    )
    .unwrap();
    assert_eq!(o.dead_letter_depth().unwrap(), 6);
    // Only device a's.
    let only_a = DeadLetterFilter {
        device_id: Some("a".into()),
        reason: None,
    };
    let r = o.replay(&only_a, 2, Utc::now()).unwrap();
    assert_eq!(
        r,
        Replayed {
            records: 5,
            batches: 3
        }
    );
    assert_eq!(o.dead_letter_depth().unwrap(), 1);
    let mut ids: Vec<Uuid> = Vec::new();
    for p in o.pending(10).unwrap() {
        let batch: Batch = serde_json::from_slice(&p.payload).unwrap();
        assert_ne!(batch.batch_id, a.batch_id, "a new batch id");
        assert_eq!(
            (batch.device_id.as_str(), batch.bridge_id.as_str()),
            ("a", "bridge")
        );
        ids.extend(batch.records.iter().map(|r| r.record_id));
    }
    let want: Vec<Uuid> = a.records.iter().map(|r| r.record_id).collect();
    assert_eq!(ids, want, "the same records, in measured order");
    // A reason filter that matches nothing moves nothing.
    let none = DeadLetterFilter {
        device_id: None,
        reason: Some("negative_count".into()),
    };
    assert_eq!(
        o.replay(&none, 60, Utc::now()).unwrap(),
        Replayed::default()
    );
}

#[test]
fn replay_into_a_full_outbox_moves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    let mut o = Outbox::open(&path, 1).unwrap();
    let a = steps_batch("a", 2);
    o.push(std::slice::from_ref(&a), &[], &[], Utc::now())
        .unwrap();
    o.settle(&[ack(&a, vec![], Some(Reason::TopicMismatch))], Utc::now())
        .unwrap();
    o.push(&[batch("a")], &[], &[], Utc::now()).unwrap();
    let err = o
        .replay(&DeadLetterFilter::default(), 60, Utc::now())
        .unwrap_err();
    assert!(matches!(err, Error::OutboxFull { .. }), "{err}");
    assert_eq!(o.dead_letter_depth().unwrap(), 2);
    assert_eq!(o.depth().unwrap(), 1);
}

/// The operator's CLI and the daemon each have the file open: a replay by one is seen by the
/// other, and neither fails for the other's lock.
#[test]
fn a_replay_from_another_connection_reaches_the_running_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = open(&dir);
    let a = steps_batch("a", 3);
    daemon
        .push(std::slice::from_ref(&a), &[], &[], Utc::now())
        .unwrap();
    daemon
        .settle(
            &[ack(&a, vec![], Some(Reason::DeviceNotOnBridge))],
            Utc::now(),
        )
        .unwrap();
    let mut cli = open(&dir);
    assert_eq!(cli.dead_letter_depth().unwrap(), 3);
    let r = cli
        .replay(&DeadLetterFilter::default(), 60, Utc::now())
        .unwrap();
    assert_eq!(r.records, 3);
    daemon.push(&[batch("b")], &[], &[], Utc::now()).unwrap();
    assert_eq!(daemon.depth().unwrap(), 2);
    assert_eq!(daemon.dead_letter_depth().unwrap(), 0);
}

#[test]
fn drop_discards_for_good_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = open(&dir);
    let a = steps_batch("a", 3);
    o.push(std::slice::from_ref(&a), &[], &[], Utc::now())
        .unwrap();
    o.settle(
        &[ack(
            &a,
            vec![
                rejection(0, Reason::NegativeCount),
                rejection(1, Reason::InFuture),
            ],
            None,
        )],
        Utc::now(),
    )
    .unwrap();
    let filter = DeadLetterFilter {
        device_id: Some("a".into()),
        reason: Some("negative_count".into()),
    };
    assert_eq!(o.drop_dead_letters(&filter).unwrap(), 1);
    assert_eq!(
        dead_ids(&dir),
        vec![(a.records[1].record_id.to_string(), "in_future".to_owned())]
    );
    assert_eq!(
        o.discarded().unwrap(),
        vec![Discarded {
            device_id: "a".into(),
            cause: "operator_drop:negative_count".into(),
            records: 1
        }]
    );
}

#[test]
fn the_status_report_shows_dead_letters_marks_discards_and_held_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    let mut o = Outbox::open(&path, 10).unwrap().with_max_dead_records(2);
    let (a, big) = (steps_batch("a", 2), steps_batch("a", 3));
    o.push(
        &[a.clone(), big.clone()],
        &[("a".into(), t("2026-01-01T10:00:00Z"))],
        &[],
        Utc::now(),
    )
    .unwrap();
    o.settle(
        &[
            ack(
                &a,
                vec![
                    rejection(0, Reason::InFuture),
                    rejection(1, Reason::ErasedByPerson),
                ],
                None,
            ),
            ack(&big, vec![], Some(Reason::TopicMismatch)),
        ],
        Utc::now(),
    )
    .unwrap();
    // Another process (the operator's CLI) reads the same file.
    let report = StatusReport::read(&Outbox::open(&path, 10).unwrap()).unwrap();
    assert_eq!(report.outbox_batches, 1);
    assert_eq!(report.held_for_dead_letter_space, 1);
    assert_eq!(report.dead_letter_records, 1);
    assert_eq!(report.marks["a"].len(), RecordType::ALL.len());
    assert_eq!(report.discarded.len(), 1);
    let text = report.text();
    for want in [
        "1 refused batches held",
        "in_future",
        "erased_by_person",
        "step-count",
    ] {
        assert!(text.contains(want), "{want} in\n{text}");
    }
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["dead_letters"][0]["reason"], "in_future");
}
