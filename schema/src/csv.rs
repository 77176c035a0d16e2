//! CSV output: one row per record, RFC 4180 (CRLF line ends; a field containing a comma, a
//! double quote, CR or LF is quoted, inner quotes doubled).
//!
//! Columns are fixed ([`HEADER`]); a column that does not apply to a record's type is empty.
//! Times are RFC 3339 exactly as in the record's JSON (offset kept). `value`/`unit` are the
//! step count (`steps`), the heart rate (its unit, `beats/min`) or the total sleep time (`min`);
//! the sleep columns use the same rules as [`crate::fhir`]: total sleep time as sent when in
//! minutes, else summed from the non-awake stages; per-stage sums empty when the episode has
//! no stages.

use chrono::{DateTime, FixedOffset};
use serde_json::{json, Value};

use crate::fhir::{total_sleep_minutes, StageMinutes};
use crate::record::{Body, Record, MINUTES};

/// The header row, without its line end.
pub const HEADER: &str = "record_id,type,device_id,bridge_id,start,end,value,unit,is_main_sleep,\
total_sleep_min,deep_min,light_min,rem_min,awake_min,source_created_at,decoder";

/// The header and one row per record, each line ending in CRLF.
pub fn rows(records: &[Record]) -> String {
    let mut out = String::with_capacity(HEADER.len() + 2 + records.len() * 160);
    out.push_str(HEADER);
    out.push_str("\r\n");
    for record in records {
        let (start, end) = record.measured();
        let mut value = String::new();
        let mut unit = String::new();
        let mut main = String::new();
        let mut total = String::new();
        let mut stages = [String::new(), String::new(), String::new(), String::new()];
        match &record.body {
            Body::StepCount(s) => {
                value = s.step_count.to_string();
                unit = "steps".into();
            }
            Body::HeartRate(h) => {
                value = h.heart_rate.value.to_string();
                unit = h.heart_rate.unit.clone();
            }
            Body::SleepEpisode(s) => {
                main = s.is_main_sleep.to_string();
                if let Some(t) = total_sleep_minutes(s) {
                    total = t.to_string();
                    value = total.clone();
                    unit = MINUTES.into();
                }
                if let Some(m) = StageMinutes::of(s) {
                    stages = [m.deep, m.light, m.rem, m.awake].map(|v| v.to_string());
                }
            }
        }
        let [deep, light, rem, awake] = &stages;
        let fields: [&str; 16] = [
            &record.record_id.to_string(),
            record.record_type().as_str(),
            &record.device_id,
            &record.bridge_id,
            &time(start),
            &time(end),
            &value,
            &unit,
            &main,
            &total,
            deep,
            light,
            rem,
            awake,
            &time(record.source_created_at),
            &record.provenance.decoder,
        ];
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_field(&mut out, field);
        }
        out.push_str("\r\n");
    }
    out
}

fn push_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

/// The same text serde writes into the record's JSON.
fn time(t: DateTime<FixedOffset>) -> String {
    match json!(t) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::*;

    fn t(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    fn lines(csv: &str) -> Vec<&str> {
        assert!(csv.ends_with("\r\n"));
        csv.strip_suffix("\r\n").unwrap().split("\r\n").collect()
    }

    #[test]
    fn header_has_the_sixteen_columns_in_order() {
        let cols: Vec<&str> = HEADER.split(',').collect();
        assert_eq!(
            cols,
            [
                "record_id",
                "type",
                "device_id",
                "bridge_id",
                "start",
                "end",
                "value",
                "unit",
                "is_main_sleep",
                "total_sleep_min",
                "deep_min",
                "light_min",
                "rem_min",
                "awake_min",
                "source_created_at",
                "decoder"
            ]
        );
        assert_eq!(rows(&[]), format!("{HEADER}\r\n"));
    }

    #[test]
    fn fields_with_commas_quotes_and_newlines_are_quoted() {
        let r = Record::new(
            "band, \"blue\"",
            "bridge\n1",
            t("2026-06-01T10:01:00+09:00"),
            Provenance::sensed("sim-band/1"),
            Body::StepCount(StepCount {
                effective_time_frame: IntervalFrame::new(
                    t("2026-06-01T10:00:00+09:00"),
                    t("2026-06-01T10:01:00+09:00"),
                ),
                step_count: 87,
            }),
        );
        let csv = rows(std::slice::from_ref(&r));
        let expected = format!(
            "{HEADER}\r\n{},step-count,\"band, \"\"blue\"\"\",\"bridge\n1\",\
2026-06-01T10:00:00+09:00,2026-06-01T10:01:00+09:00,87,steps,,,,,,,\
2026-06-01T10:01:00+09:00,sim-band/1\r\n",
            r.record_id
        );
        assert_eq!(csv, expected);
    }

    #[test]
    fn one_row_per_type_with_its_values() {
        let stage = |kind, s: &str, e: &str| SleepStage {
            stage: kind,
            time_interval: TimeInterval {
                start_date_time: t(s),
                end_date_time: t(e),
            },
        };
        let steps = Record::new(
            "d1",
            "b1",
            t("2026-06-01T10:01:00Z"),
            Provenance::sensed("pams/1"),
            Body::StepCount(StepCount {
                effective_time_frame: IntervalFrame::new(
                    t("2026-06-01T10:00:00Z"),
                    t("2026-06-01T10:01:00Z"),
                ),
                step_count: 120,
            }),
        );
        let heart = Record::new(
            "d1",
            "b1",
            t("2026-06-01T10:00:02Z"),
            Provenance::sensed("heart-rate-measurement/1"),
            Body::HeartRate(HeartRate {
                effective_time_frame: PointFrame {
                    date_time: t("2026-06-01T10:00:00.500Z"),
                },
                heart_rate: UnitValue::new(64.5, BEATS_PER_MINUTE),
            }),
        );
        let sleep = Record::new(
            "d1",
            "b1",
            t("2026-06-01T07:00:00+09:00"),
            Provenance::sensed("vendor-x/3"),
            Body::SleepEpisode(SleepEpisode {
                effective_time_frame: IntervalFrame::new(
                    t("2026-06-01T00:00:00+09:00"),
                    t("2026-06-01T07:00:00+09:00"),
                ),
                is_main_sleep: true,
                latency_to_sleep_onset: None,
                total_sleep_time: None,
                number_of_awakenings: None,
                sleep_maintenance_efficiency_percentage: None,
                stages: vec![
                    stage(
                        SleepStageKind::Deep,
                        "2026-06-01T00:00:00+09:00",
                        "2026-06-01T01:00:00+09:00",
                    ),
                    stage(
                        SleepStageKind::Awake,
                        "2026-06-01T01:00:00+09:00",
                        "2026-06-01T01:15:00+09:00",
                    ),
                    stage(
                        SleepStageKind::Light,
                        "2026-06-01T01:15:00+09:00",
                        "2026-06-01T05:00:00+09:00",
                    ),
                    stage(
                        SleepStageKind::Rem,
                        "2026-06-01T05:00:00+09:00",
                        "2026-06-01T07:00:00+09:00",
                    ),
                ],
            }),
        );
        let csv = rows(&[steps.clone(), heart.clone(), sleep.clone()]);
        let l = lines(&csv);
        assert_eq!(l.len(), 4);
        assert_eq!(l[0], HEADER);
        let cells = |i: usize| l[i].split(',').collect::<Vec<_>>();
        assert!(l.iter().all(|line| line.split(',').count() == 16));

        let s = cells(1);
        assert_eq!(s[0], steps.record_id.to_string());
        assert_eq!(
            &s[1..8],
            [
                "step-count",
                "d1",
                "b1",
                "2026-06-01T10:00:00Z",
                "2026-06-01T10:01:00Z",
                "120",
                "steps"
            ]
        );
        assert!(s[8..14].iter().all(|c| c.is_empty()));
        assert_eq!(&s[14..], ["2026-06-01T10:01:00Z", "pams/1"]);

        let h = cells(2);
        assert_eq!(h[1], "heart-rate");
        assert_eq!(h[4], "2026-06-01T10:00:00.500Z");
        assert_eq!(h[4], h[5], "a point in time has start == end");
        assert_eq!(&h[6..8], ["64.5", "beats/min"]);
        assert!(h[8..14].iter().all(|c| c.is_empty()));
        assert_eq!(h[15], "heart-rate-measurement/1");

        let z = cells(3);
        assert_eq!(z[1], "sleep-episode");
        assert_eq!(
            &z[4..6],
            ["2026-06-01T00:00:00+09:00", "2026-06-01T07:00:00+09:00"]
        );
        // Total sleep time absent: computed from the non-awake stages (60 + 225 + 120).
        assert_eq!(
            &z[6..14],
            ["405", "min", "true", "405", "60", "225", "120", "15"]
        );
        assert_eq!(&z[14..], ["2026-06-01T07:00:00+09:00", "vendor-x/3"]);

        // Times are the record's own JSON text.
        assert_eq!(json!(heart.source_created_at), json!(h[14]));
    }
}
