//! Readings to records: the one place where decoded values become `phr-schema` records.
//! Pure: the device's UTC offset and the receive time come in as arguments.
//!
//! Times are shown in the device's local offset (a record's identity uses UTC milliseconds, so
//! the offset never changes a `record_id`). Sleep summaries are derived from the stages:
//! - `total_sleep_time`: minutes of non-awake stages;
//! - `sleep_maintenance_efficiency_percentage`: total sleep / episode length × 100, to 0.1;
//! - `latency_to_sleep_onset`: minutes from the episode start to the first non-awake stage;
//! - `number_of_awakenings`: awake stages after the first non-awake stage.
//!
//! An episode without stages carries none of these; one without any non-awake stage has zero
//! sleep, zero awakenings and no latency.

use chrono::{DateTime, Duration, FixedOffset, Utc};
use phr_schema::record::{IntervalFrame, PointFrame, BEATS_PER_MINUTE, MINUTES, PERCENT};
use phr_schema::{
    Body, HeartRate, Provenance, Record, SleepEpisode, SleepStage, SleepStageKind, StepCount,
    TimeInterval, UnitValue,
};

use crate::decode::{Reading, SleepReading};

/// The record for one reading, or `None` for readings that are device state, not health data
/// (battery level, device information, device clock), and for PAMS step summaries, whose
/// session-relative times become wall-clock intervals only in the bridge's per-device state
/// (see [`crate::decode::pams`]).
pub fn normalise(
    reading: &Reading,
    decoder: &str,
    device_id: &str,
    bridge_id: &str,
    utc_offset: FixedOffset,
    received_at: DateTime<Utc>,
) -> Option<Record> {
    let local = |t: DateTime<Utc>| t.with_timezone(&utc_offset);
    let body = match reading {
        Reading::Steps { start, end, steps } => Body::StepCount(StepCount {
            effective_time_frame: IntervalFrame::new(local(*start), local(*end)),
            step_count: i64::from(*steps),
        }),
        Reading::Sleep(sleep) => Body::SleepEpisode(sleep_episode(sleep, local)),
        Reading::HeartRate { at, bpm, .. } => Body::HeartRate(HeartRate {
            effective_time_frame: PointFrame {
                date_time: local(*at),
            },
            heart_rate: UnitValue::new(f64::from(*bpm), BEATS_PER_MINUTE),
        }),
        Reading::Battery { .. }
        | Reading::DeviceInfo { .. }
        | Reading::DeviceClock { .. }
        | Reading::LocalTime { .. }
        | Reading::PamsSteps { .. }
        | Reading::PamsSleep(_)
        | Reading::PamsSession(_)
        | Reading::StepsToday { .. } => return None,
    };
    Some(Record::new(
        device_id,
        bridge_id,
        local(received_at),
        Provenance::sensed(decoder),
        body,
    ))
}

fn sleep_episode(
    sleep: &SleepReading,
    local: impl Fn(DateTime<Utc>) -> DateTime<FixedOffset>,
) -> SleepEpisode {
    let mut stages = sleep.stages.clone();
    stages.sort_by_key(|&(_, start, _)| start);
    let minutes = |d: Duration| d.num_milliseconds() as f64 / 60_000.0;

    let (total_sleep_time, efficiency, latency, awakenings);
    if !stages.is_empty() {
        let asleep: Duration = stages
            .iter()
            .filter(|(kind, _, _)| *kind != SleepStageKind::Awake)
            .map(|&(_, start, end)| end - start)
            .sum();
        total_sleep_time = Some(UnitValue::new(minutes(asleep), MINUTES));
        let episode = sleep.end - sleep.start;
        efficiency = (episode > Duration::zero()).then(|| {
            let percent = asleep.num_milliseconds() as f64 / episode.num_milliseconds() as f64;
            UnitValue::new((percent * 1000.0).round() / 10.0, PERCENT)
        });
        let onset = stages
            .iter()
            .position(|(kind, _, _)| *kind != SleepStageKind::Awake);
        latency = onset.map(|i| UnitValue::new(minutes(stages[i].1 - sleep.start), MINUTES));
        let after_onset = onset.map_or(&[][..], |i| &stages[i..]);
        awakenings = Some(
            after_onset
                .iter()
                .filter(|(kind, _, _)| *kind == SleepStageKind::Awake)
                .count() as i64,
        );
    } else {
        // No stages: what the device reported itself, if anything.
        let r = &sleep.reported;
        total_sleep_time = r.total_sleep.map(|d| UnitValue::new(minutes(d), MINUTES));
        latency = r.latency.map(|d| UnitValue::new(minutes(d), MINUTES));
        awakenings = r.awakenings.map(i64::from);
        efficiency = r
            .efficiency_percent
            .map(|p| UnitValue::new(f64::from(p), PERCENT));
    }

    SleepEpisode {
        effective_time_frame: IntervalFrame::new(local(sleep.start), local(sleep.end)),
        is_main_sleep: sleep.is_main_sleep,
        latency_to_sleep_onset: latency,
        total_sleep_time,
        number_of_awakenings: awakenings,
        sleep_maintenance_efficiency_percentage: efficiency,
        stages: stages
            .iter()
            .map(|&(stage, start, end)| SleepStage {
                stage,
                time_interval: TimeInterval {
                    start_date_time: local(start),
                    end_date_time: local(end),
                },
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phr_schema::validate::validate_record;
    use phr_schema::{Limits, Modality, RecordType};

    const JST: i32 = 9 * 3600;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn jst() -> FixedOffset {
        FixedOffset::east_opt(JST).unwrap()
    }

    fn run(reading: &Reading, at: DateTime<Utc>) -> Option<Record> {
        normalise(reading, "test-decoder/1", "dev-1", "bridge-1", jst(), at)
    }

    fn assert_valid(r: &Record, now: DateTime<Utc>) {
        validate_record(r, "bridge-1", "dev-1", now, &Limits::default())
            .unwrap_or_else(|reason| panic!("{reason}: {r:?}"));
    }

    #[test]
    fn steps_become_a_step_count_in_local_time() {
        let at = t("2026-01-01T00:02:00Z");
        let reading = Reading::Steps {
            start: t("2026-01-01T00:00:00Z"),
            end: t("2026-01-01T00:01:00Z"),
            steps: 95,
        };
        let r = run(&reading, at).unwrap();
        assert_eq!(r.device_id, "dev-1");
        assert_eq!(r.bridge_id, "bridge-1");
        assert_eq!(r.provenance.decoder, "test-decoder/1");
        assert_eq!(r.provenance.modality, Modality::Sensed);
        assert_eq!(
            r.source_created_at.to_rfc3339(),
            "2026-01-01T09:02:00+09:00"
        );
        let Body::StepCount(s) = &r.body else {
            panic!("not steps: {r:?}")
        };
        assert_eq!(s.step_count, 95);
        assert_eq!(
            s.effective_time_frame.start().to_rfc3339(),
            "2026-01-01T09:00:00+09:00"
        );
        assert_eq!(
            s.effective_time_frame.end().to_rfc3339(),
            "2026-01-01T09:01:00+09:00"
        );
        assert_eq!(
            r.record_id,
            phr_schema::record_id(
                "dev-1",
                RecordType::StepCount,
                s.effective_time_frame.start(),
                s.effective_time_frame.end()
            )
        );
        assert_valid(&r, at);
    }

    #[test]
    fn the_offset_does_not_change_identity() {
        let reading = Reading::Steps {
            start: t("2026-01-01T00:00:00Z"),
            end: t("2026-01-01T00:01:00Z"),
            steps: 1,
        };
        let at = t("2026-01-01T00:01:00Z");
        let a = run(&reading, at).unwrap();
        let b = normalise(
            &reading,
            "x/1",
            "dev-1",
            "bridge-1",
            FixedOffset::east_opt(0).unwrap(),
            at,
        )
        .unwrap();
        assert_eq!(a.record_id, b.record_id);
    }

    #[test]
    fn heart_rate_is_beats_per_minute_at_a_point() {
        let at = t("2026-01-01T00:05:00Z");
        let reading = Reading::HeartRate {
            at,
            bpm: 64,
            rr_intervals_ms: vec![938],
            sensor_contact: Some(true),
            energy_expended_kj: None,
        };
        let r = run(&reading, at).unwrap();
        let Body::HeartRate(h) = &r.body else {
            panic!("not heart rate: {r:?}")
        };
        assert_eq!(h.heart_rate, UnitValue::new(64.0, "beats/min"));
        assert_eq!(
            h.effective_time_frame.date_time.to_rfc3339(),
            "2026-01-01T09:05:00+09:00"
        );
        assert_valid(&r, at);
    }

    #[test]
    fn battery_is_not_a_record() {
        let at = t("2026-01-01T00:05:00Z");
        assert_eq!(run(&Reading::Battery { at, percent: 80 }, at), None);
    }

    #[test]
    fn device_state_and_session_relative_steps_are_not_records() {
        let at = t("2026-01-01T00:05:00Z");
        let readings = [
            Reading::DeviceInfo {
                field: crate::decode::DeviceInfoField::Serial,
                value: "SN-1".to_owned(),
            },
            Reading::DeviceClock {
                device_time: at.naive_utc(),
                received_at: at,
            },
            Reading::PamsSteps {
                session_id: 1,
                sub_session_id: 0,
                relative_seconds: 60,
                sequence: 1,
                steps: 90,
                floor_steps: None,
            },
        ];
        for reading in &readings {
            assert_eq!(run(reading, at), None, "{reading:?}");
        }
    }

    fn stage(
        kind: SleepStageKind,
        from: &str,
        to: &str,
    ) -> (SleepStageKind, DateTime<Utc>, DateTime<Utc>) {
        (kind, t(from), t(to))
    }

    #[test]
    fn sleep_summary_is_derived_from_stages() {
        use SleepStageKind::*;
        // 8 h in bed: 20 min to fall asleep, two awakenings (10 + 5 min) and a final 15 min
        // awake; 7 h 30 min asleep minus the awakenings.
        let sleep = SleepReading {
            start: t("2026-01-01T14:00:00Z"),
            end: t("2026-01-01T22:00:00Z"),
            is_main_sleep: true,
            stages: vec![
                // Given out of order: the normaliser sorts.
                stage(Light, "2026-01-01T14:20:00Z", "2026-01-01T15:00:00Z"),
                stage(Awake, "2026-01-01T14:00:00Z", "2026-01-01T14:20:00Z"),
                stage(Deep, "2026-01-01T15:00:00Z", "2026-01-01T16:00:00Z"),
                stage(Awake, "2026-01-01T16:00:00Z", "2026-01-01T16:10:00Z"),
                stage(Rem, "2026-01-01T16:10:00Z", "2026-01-01T18:00:00Z"),
                stage(Awake, "2026-01-01T18:00:00Z", "2026-01-01T18:05:00Z"),
                stage(Light, "2026-01-01T18:05:00Z", "2026-01-01T21:45:00Z"),
                stage(Awake, "2026-01-01T21:45:00Z", "2026-01-01T22:00:00Z"),
            ],
            reported: Default::default(),
        };
        let at = t("2026-01-01T22:00:00Z");
        let r = run(&Reading::Sleep(sleep), at).unwrap();
        let Body::SleepEpisode(s) = &r.body else {
            panic!("not sleep: {r:?}")
        };
        assert!(s.is_main_sleep);
        let asleep = 40.0 + 60.0 + 110.0 + 220.0;
        assert_eq!(s.total_sleep_time, Some(UnitValue::new(asleep, "min")));
        // 430 / 480 = 89.583 %.
        assert_eq!(
            s.sleep_maintenance_efficiency_percentage,
            Some(UnitValue::new(89.6, "%"))
        );
        assert_eq!(s.latency_to_sleep_onset, Some(UnitValue::new(20.0, "min")));
        assert_eq!(s.number_of_awakenings, Some(3));
        assert_eq!(s.stages.len(), 8);
        assert_eq!(s.stages[0].stage, Awake);
        assert_eq!(
            s.stages[0].time_interval.start_date_time.to_rfc3339(),
            "2026-01-01T23:00:00+09:00"
        );
        assert_eq!(
            s.effective_time_frame.end().to_rfc3339(),
            "2026-01-02T07:00:00+09:00"
        );
        assert_valid(&r, at);
    }

    #[test]
    fn sleep_without_stages_or_without_sleep() {
        let start = t("2026-01-01T14:00:00Z");
        let end = t("2026-01-01T15:00:00Z");
        let bare = SleepReading {
            start,
            end,
            is_main_sleep: false,
            stages: vec![],
            reported: Default::default(),
        };
        let r = run(&Reading::Sleep(bare.clone()), end).unwrap();
        let Body::SleepEpisode(s) = &r.body else {
            panic!("not sleep")
        };
        assert_eq!(
            (
                &s.total_sleep_time,
                &s.sleep_maintenance_efficiency_percentage,
                &s.latency_to_sleep_onset,
                s.number_of_awakenings
            ),
            (&None, &None, &None, None)
        );
        assert_valid(&r, end);

        let restless = SleepReading {
            stages: vec![(SleepStageKind::Awake, start, end)],
            ..bare
        };
        let r = run(&Reading::Sleep(restless), end).unwrap();
        let Body::SleepEpisode(s) = &r.body else {
            panic!("not sleep")
        };
        assert_eq!(s.total_sleep_time, Some(UnitValue::new(0.0, "min")));
        assert_eq!(
            s.sleep_maintenance_efficiency_percentage,
            Some(UnitValue::new(0.0, "%"))
        );
        assert_eq!(s.latency_to_sleep_onset, None);
        assert_eq!(s.number_of_awakenings, Some(0));
        assert_valid(&r, end);
    }
}
