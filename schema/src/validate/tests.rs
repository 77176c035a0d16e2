use chrono::{DateTime, Duration, FixedOffset, Utc};
use proptest::prelude::*;

use super::*;
use crate::envelope::Batch;
use crate::record::{IntervalFrame, PointFrame, Provenance, SleepStage, SleepStageKind, UnitValue};

const BRIDGE: &str = "bridge-1";
const DEVICE: &str = "band-1";

fn t(s: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(s).unwrap()
}

fn now() -> DateTime<Utc> {
    t("2026-06-01T12:00:00Z").with_timezone(&Utc)
}

fn record(body: Body) -> Record {
    Record::new(
        DEVICE,
        BRIDGE,
        t("2026-06-01T11:00:00Z"),
        Provenance::sensed("test/1"),
        body,
    )
}

fn steps(start: &str, end: &str, count: i64) -> Record {
    record(Body::StepCount(StepCount {
        effective_time_frame: IntervalFrame::new(t(start), t(end)),
        step_count: count,
    }))
}

fn sleep(stages: &[(SleepStageKind, &str, &str)]) -> Record {
    record(Body::SleepEpisode(SleepEpisode {
        effective_time_frame: IntervalFrame::new(
            t("2026-06-01T00:00:00+09:00"),
            t("2026-06-01T07:00:00+09:00"),
        ),
        is_main_sleep: true,
        latency_to_sleep_onset: Some(UnitValue::new(12.0, MINUTES)),
        total_sleep_time: Some(UnitValue::new(390.0, MINUTES)),
        number_of_awakenings: Some(2),
        sleep_maintenance_efficiency_percentage: Some(UnitValue::new(92.8, PERCENT)),
        stages: stages
            .iter()
            .map(|(k, s, e)| SleepStage {
                stage: *k,
                time_interval: TimeInterval {
                    start_date_time: t(s),
                    end_date_time: t(e),
                },
            })
            .collect(),
    }))
}

fn heart(bpm: f64, unit: &str) -> Record {
    record(Body::HeartRate(HeartRate {
        effective_time_frame: PointFrame {
            date_time: t("2026-06-01T11:30:00Z"),
        },
        heart_rate: UnitValue::new(bpm, unit),
    }))
}

fn check(r: &Record) -> Result<RecordKey, Reason> {
    validate_record(r, BRIDGE, DEVICE, now(), &Limits::default())
}

#[test]
fn valid_records_pass_and_return_their_key() {
    let r = steps("2026-06-01T10:00:00Z", "2026-06-01T10:01:00Z", 120);
    let key = check(&r).unwrap();
    assert_eq!(key.record_id(), r.record_id);
    assert_eq!(key.start_ms, t("2026-06-01T10:00:00Z").timestamp_millis());
    check(&sleep(&[
        (
            SleepStageKind::Light,
            "2026-06-01T00:00:00+09:00",
            "2026-06-01T01:00:00+09:00",
        ),
        (
            SleepStageKind::Deep,
            "2026-06-01T01:00:00+09:00",
            "2026-06-01T02:30:00+09:00",
        ),
        (
            SleepStageKind::Rem,
            "2026-06-01T02:30:00+09:00",
            "2026-06-01T07:00:00+09:00",
        ),
    ]))
    .unwrap();
    check(&heart(64.0, BEATS_PER_MINUTE)).unwrap();
}

#[test]
fn negative_count() {
    assert_eq!(
        check(&steps("2026-06-01T10:00:00Z", "2026-06-01T10:01:00Z", -1)),
        Err(Reason::NegativeCount)
    );
}

#[test]
fn absurd_count() {
    // 301 steps in one minute is over the cadence limit; 300 is not.
    assert_eq!(
        check(&steps("2026-06-01T10:00:00Z", "2026-06-01T10:01:00Z", 301)),
        Err(Reason::ImplausibleCount)
    );
    assert!(check(&steps("2026-06-01T10:00:00Z", "2026-06-01T10:01:00Z", 300)).is_ok());
    assert_eq!(
        check(&steps(
            "2026-06-01T10:00:00Z",
            "2026-06-01T11:00:00Z",
            i64::MAX
        )),
        Err(Reason::ImplausibleCount)
    );
}

#[test]
fn end_before_start_and_zero_length() {
    assert_eq!(
        check(&steps("2026-06-01T10:01:00Z", "2026-06-01T10:00:00Z", 1)),
        Err(Reason::EndBeforeStart)
    );
    assert_eq!(
        check(&steps("2026-06-01T10:00:00Z", "2026-06-01T10:00:00Z", 1)),
        Err(Reason::ZeroLengthInterval)
    );
}

#[test]
fn interval_too_long() {
    assert_eq!(
        check(&steps("2026-05-30T10:00:00Z", "2026-05-31T10:00:01Z", 1)),
        Err(Reason::IntervalTooLong)
    );
}

#[test]
fn future_timestamps_beyond_ten_minutes() {
    // now is 12:00Z: ending at 12:10 is tolerated clock drift, 12:11 is not.
    assert!(check(&steps("2026-06-01T12:09:00Z", "2026-06-01T12:10:00Z", 1)).is_ok());
    assert_eq!(
        check(&steps("2026-06-01T12:10:00Z", "2026-06-01T12:11:00Z", 1)),
        Err(Reason::InFuture)
    );
    let mut r = steps("2026-06-01T10:00:00Z", "2026-06-01T10:01:00Z", 1);
    r.source_created_at = t("2026-06-02T00:00:00Z");
    assert_eq!(check(&r), Err(Reason::InFuture));
}

#[test]
fn stage_outside_episode() {
    let r = sleep(&[(
        SleepStageKind::Light,
        "2026-05-31T23:59:00+09:00",
        "2026-06-01T01:00:00+09:00",
    )]);
    assert_eq!(check(&r), Err(Reason::StageOutsideEpisode));
    let r = sleep(&[(
        SleepStageKind::Light,
        "2026-06-01T06:00:00+09:00",
        "2026-06-01T07:00:01+09:00",
    )]);
    assert_eq!(check(&r), Err(Reason::StageOutsideEpisode));
}

#[test]
fn stages_overlap_in_any_order() {
    let r = sleep(&[
        (
            SleepStageKind::Deep,
            "2026-06-01T01:00:00+09:00",
            "2026-06-01T02:00:00+09:00",
        ),
        (
            SleepStageKind::Light,
            "2026-06-01T00:00:00+09:00",
            "2026-06-01T01:00:01+09:00",
        ),
    ]);
    assert_eq!(check(&r), Err(Reason::StagesOverlap));
}

#[test]
fn stage_with_reversed_interval() {
    let r = sleep(&[(
        SleepStageKind::Rem,
        "2026-06-01T02:00:00+09:00",
        "2026-06-01T01:00:00+09:00",
    )]);
    assert_eq!(check(&r), Err(Reason::EndBeforeStart));
}

#[test]
fn sleep_values_out_of_range() {
    let mut r = sleep(&[]);
    let Body::SleepEpisode(s) = &mut r.body else {
        unreachable!()
    };
    s.sleep_maintenance_efficiency_percentage = Some(UnitValue::new(101.0, PERCENT));
    assert_eq!(check(&r), Err(Reason::ImplausibleValue));
    let Body::SleepEpisode(s) = &mut r.body else {
        unreachable!()
    };
    s.sleep_maintenance_efficiency_percentage = None;
    s.total_sleep_time = Some(UnitValue::new(421.0, MINUTES)); // episode is 420 min
    assert_eq!(check(&r), Err(Reason::ImplausibleValue));
    let Body::SleepEpisode(s) = &mut r.body else {
        unreachable!()
    };
    s.total_sleep_time = Some(UnitValue::new(300.0, "h"));
    assert_eq!(check(&r), Err(Reason::InvalidUnit));
    let Body::SleepEpisode(s) = &mut r.body else {
        unreachable!()
    };
    s.total_sleep_time = None;
    s.number_of_awakenings = Some(-3);
    assert_eq!(check(&r), Err(Reason::NegativeCount));
}

#[test]
fn heart_rate_range_and_unit() {
    assert_eq!(
        check(&heart(19.0, BEATS_PER_MINUTE)),
        Err(Reason::ImplausibleHeartRate)
    );
    assert_eq!(
        check(&heart(301.0, BEATS_PER_MINUTE)),
        Err(Reason::ImplausibleHeartRate)
    );
    assert_eq!(
        check(&heart(f64::NAN, BEATS_PER_MINUTE)),
        Err(Reason::ImplausibleHeartRate)
    );
    assert_eq!(check(&heart(60.0, "bpm")), Err(Reason::InvalidUnit));
}

#[test]
fn record_id_and_device_must_match() {
    let mut r = steps("2026-06-01T10:00:00Z", "2026-06-01T10:01:00Z", 1);
    r.record_id = uuid::Uuid::new_v4();
    assert_eq!(check(&r), Err(Reason::RecordIdMismatch));
    let r = steps("2026-06-01T10:00:00Z", "2026-06-01T10:01:00Z", 1);
    assert_eq!(
        validate_record(&r, BRIDGE, "other", now(), &Limits::default()),
        Err(Reason::DeviceMismatch)
    );
    assert_eq!(
        validate_record(&r, "other", DEVICE, now(), &Limits::default()),
        Err(Reason::DeviceMismatch)
    );
}

fn batch_json(records: Vec<Record>) -> Vec<u8> {
    serde_json::to_vec(&Batch::new(BRIDGE, DEVICE, uuid::Uuid::new_v4(), records)).unwrap()
}

#[test]
fn batch_round_trips_and_keeps_records_raw() {
    let r = steps("2026-06-01T10:00:00Z", "2026-06-01T10:01:00Z", 10);
    let bytes = batch_json(vec![r.clone()]);
    let raw = parse_batch(&bytes, &Limits::default()).unwrap();
    assert_eq!(raw.records.len(), 1);
    assert_eq!(parse_record(raw.records[0]).unwrap(), r);
}

#[test]
fn unknown_schema_version_keeps_the_batch_id() {
    let mut b = Batch::new(BRIDGE, DEVICE, uuid::Uuid::new_v4(), vec![]);
    b.schema_version = "9.9".into();
    let bytes = serde_json::to_vec(&b).unwrap();
    assert_eq!(
        parse_batch(&bytes, &Limits::default()).unwrap_err(),
        (Some(b.batch_id), Reason::UnknownSchemaVersion)
    );
}

#[test]
fn oversized_batches_by_bytes_and_by_count() {
    let limits = Limits {
        max_batch_records: 2,
        ..Limits::default()
    };
    let r = steps("2026-06-01T10:00:00Z", "2026-06-01T10:01:00Z", 10);
    let bytes = batch_json(vec![r.clone(), r.clone(), r]);
    assert_eq!(
        parse_batch(&bytes, &limits).unwrap_err().1,
        Reason::BatchTooLarge
    );
    let limits = Limits {
        max_batch_bytes: bytes.len() - 1,
        ..Limits::default()
    };
    assert_eq!(
        parse_batch(&bytes, &limits).unwrap_err(),
        (None, Reason::BatchTooLarge)
    );
}

#[test]
fn malformed_batch_and_record() {
    assert_eq!(
        parse_batch(b"{not json", &Limits::default()).unwrap_err(),
        (None, Reason::MalformedBatch)
    );
    let id = uuid::Uuid::new_v4();
    let half = format!(r#"{{"batch_id":"{id}","records":7}}"#);
    assert_eq!(
        parse_batch(half.as_bytes(), &Limits::default()).unwrap_err(),
        (Some(id), Reason::MalformedBatch)
    );
    let raw = serde_json::value::RawValue::from_string(
        r#"{"record_id":"x","body":{"type":"step-count","step_count":"secret-value"}}"#.into(),
    )
    .unwrap();
    let err = parse_record(&raw).unwrap_err();
    assert!(!err.contains("secret-value"), "{err}");
}

#[test]
fn reason_codes_match_their_json() {
    for r in [
        Reason::MalformedBatch,
        Reason::StagesOverlap,
        Reason::InFuture,
        Reason::RecordIdMismatch,
    ] {
        assert_eq!(
            serde_json::to_value(r).unwrap(),
            serde_json::Value::String(r.code().into())
        );
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(batch) = parse_batch(&bytes, &Limits::default()) {
            for raw in batch.records {
                let _ = parse_record(raw);
            }
        }
    }

    #[test]
    fn arbitrary_step_records_never_panic(
        start in -10_000_000_000i64..10_000_000_000,
        len in -100_000i64..200_000,
        count in any::<i64>(),
        offset_h in -12i32..=14,
    ) {
        let tz = FixedOffset::east_opt(offset_h * 3600).unwrap();
        let s = DateTime::from_timestamp(start, 0).unwrap().with_timezone(&tz);
        let e = s + Duration::seconds(len);
        let r = record(Body::StepCount(StepCount { effective_time_frame: IntervalFrame::new(s, e), step_count: count }));
        let _ = check(&r);
        // A record that serialises must parse back to itself.
        let json = serde_json::to_string(&r).unwrap();
        let raw = serde_json::value::RawValue::from_string(json).unwrap();
        prop_assert_eq!(parse_record(&raw).unwrap(), r);
    }

    #[test]
    fn mutated_valid_batches_never_panic(idx in 0usize..600, byte in any::<u8>()) {
        let mut bytes = batch_json(vec![sleep(&[(SleepStageKind::Light, "2026-06-01T00:00:00+09:00", "2026-06-01T01:00:00+09:00")]), heart(70.0, BEATS_PER_MINUTE)]);
        let i = idx % bytes.len();
        bytes[i] = byte;
        if let Ok(batch) = parse_batch(&bytes, &Limits::default()) {
            for raw in batch.records {
                if let Ok(r) = parse_record(raw) {
                    let _ = check(&r);
                }
            }
        }
    }
}
