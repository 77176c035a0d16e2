//! Open mHealth output: each record as data points with a header 1.2.
//!
//! - `step-count` → `omh:step-count:2.0`, `heart-rate` → `omh:heart-rate:2.0`.
//! - `sleep-episode` → one `omh:sleep-episode:1.1` point, plus one `phr:sleep-stage:1.0` point
//!   per stage. The Open mHealth sleep-episode schema has no stage field, so stages are points
//!   of this project's own namespaced schema: `effective_time_frame` (a `time_interval`),
//!   `sleep_stage` (`awake` | `light` | `deep` | `rem`) and `sleep_episode_id` (the episode's
//!   header id). Its JSON Schema is [`SLEEP_STAGE_SCHEMA`] (`schema/json/phr/`), which the
//!   gateway serves at `/schemas/phr/sleep-stage-1.0.json`.
//!
//! Header facts (openmhealth/schemas `header-1.2.json`): `id`, `creation_date_time` and
//! `schema_id` are required; `source_name`, `source_creation_date_time` and `modality` sit in
//! `acquisition_provenance`.

use chrono::{DateTime, FixedOffset};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::record::{Body, Modality, Record};

/// Namespace of this project's own schemas.
pub const PHR_NAMESPACE: &str = "phr";

/// The JSON Schema of a `phr:sleep-stage:1.0` body, in draft-04 like the Open mHealth schemas
/// it refers to by their URLs (`time-frame` for the interval).
pub const SLEEP_STAGE_SCHEMA: &str = include_str!("../json/phr/sleep-stage-1.0.json");

/// The data points of one record. `creation_date_time` is when the gateway stored it;
/// `user_id` is set only for output to a party entitled to know whose data it is.
pub fn data_points(
    record: &Record,
    creation_date_time: DateTime<FixedOffset>,
    user_id: Option<&str>,
) -> Vec<Value> {
    let (name, version) = record.record_type().omh_schema();
    let header = |id: Uuid, namespace: &str, name: &str, version: &str| {
        let mut h = Map::new();
        h.insert("id".into(), json!(id));
        h.insert("creation_date_time".into(), json!(creation_date_time));
        h.insert(
            "schema_id".into(),
            json!({"namespace": namespace, "name": name, "version": version}),
        );
        h.insert(
            "acquisition_provenance".into(),
            json!({
                "source_name": format!("phr-bridge/{}", record.provenance.decoder),
                "source_creation_date_time": record.source_created_at,
                "modality": match record.provenance.modality {
                    Modality::Sensed => "sensed",
                    Modality::SelfReported => "self-reported",
                },
            }),
        );
        if let Some(user) = user_id {
            h.insert("user_id".into(), json!(user));
        }
        Value::Object(h)
    };
    let main = header(record.record_id, "omh", name, version);
    match &record.body {
        Body::StepCount(s) => vec![json!({
            "header": main,
            "body": {
                "effective_time_frame": s.effective_time_frame,
                "step_count": s.step_count,
            },
        })],
        Body::HeartRate(h) => vec![json!({
            "header": main,
            "body": {
                "effective_time_frame": h.effective_time_frame,
                "heart_rate": h.heart_rate,
            },
        })],
        Body::SleepEpisode(s) => {
            let mut body = Map::new();
            body.insert("effective_time_frame".into(), json!(s.effective_time_frame));
            body.insert("is_main_sleep".into(), json!(s.is_main_sleep));
            if let Some(v) = &s.latency_to_sleep_onset {
                body.insert("latency_to_sleep_onset".into(), json!(v));
            }
            if let Some(v) = &s.total_sleep_time {
                body.insert("total_sleep_time".into(), json!(v));
            }
            if let Some(v) = s.number_of_awakenings {
                body.insert("number_of_awakenings".into(), json!(v));
            }
            if let Some(v) = &s.sleep_maintenance_efficiency_percentage {
                body.insert("sleep_maintenance_efficiency_percentage".into(), json!(v));
            }
            let mut points = vec![json!({"header": main, "body": body})];
            for (i, stage) in s.stages.iter().enumerate() {
                let id = Uuid::new_v5(&record.record_id, format!("stage/{i}").as_bytes());
                points.push(json!({
                    "header": header(id, PHR_NAMESPACE, "sleep-stage", "1.0"),
                    "body": {
                        "effective_time_frame": {"time_interval": stage.time_interval},
                        "sleep_stage": stage.stage.as_str(),
                        "sleep_episode_id": record.record_id,
                    },
                }));
            }
            points
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::*;

    fn t(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    #[test]
    fn step_count_point_has_required_header_and_body() {
        let r = Record::new(
            "d",
            "b",
            t("2026-06-01T10:02:00+09:00"),
            Provenance::sensed("sim-band/1"),
            Body::StepCount(StepCount {
                effective_time_frame: IntervalFrame::new(
                    t("2026-06-01T10:00:00+09:00"),
                    t("2026-06-01T10:01:00+09:00"),
                ),
                step_count: 87,
            }),
        );
        let p = &data_points(&r, t("2026-06-01T10:03:00+09:00"), None)[0];
        let h = &p["header"];
        assert_eq!(h["id"], json!(r.record_id));
        assert_eq!(
            h["schema_id"],
            json!({"namespace":"omh","name":"step-count","version":"2.0"})
        );
        assert_eq!(h["creation_date_time"], json!("2026-06-01T10:03:00+09:00"));
        assert_eq!(h["acquisition_provenance"]["modality"], json!("sensed"));
        assert_eq!(
            h["acquisition_provenance"]["source_creation_date_time"],
            json!("2026-06-01T10:02:00+09:00")
        );
        assert!(h.get("user_id").is_none());
        assert!(
            h.get("source_name").is_none(),
            "source_name belongs in acquisition_provenance"
        );
        assert_eq!(p["body"]["step_count"], json!(87));
        let ti = &p["body"]["effective_time_frame"]["time_interval"];
        assert_eq!(
            ti,
            &json!({"start_date_time":"2026-06-01T10:00:00+09:00","end_date_time":"2026-06-01T10:01:00+09:00"})
        );
    }

    #[test]
    fn the_sleep_stage_schema_is_draft_04_and_names_every_stage() {
        let schema: Value = serde_json::from_str(SLEEP_STAGE_SCHEMA).unwrap();
        assert_eq!(
            schema["$schema"],
            json!("http://json-schema.org/draft-04/schema#")
        );
        let listed: std::collections::BTreeSet<&str> = schema["properties"]["sleep_stage"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let ours: std::collections::BTreeSet<&str> = [
            SleepStageKind::Awake,
            SleepStageKind::Light,
            SleepStageKind::Deep,
            SleepStageKind::Rem,
        ]
        .iter()
        .map(|k| k.as_str())
        .collect();
        assert_eq!(listed, ours);
    }

    #[test]
    fn sleep_stages_become_their_own_points() {
        let r = Record::new(
            "d",
            "b",
            t("2026-06-01T07:00:00Z"),
            Provenance::sensed("sim-band/1"),
            Body::SleepEpisode(SleepEpisode {
                effective_time_frame: IntervalFrame::new(
                    t("2026-06-01T00:00:00Z"),
                    t("2026-06-01T07:00:00Z"),
                ),
                is_main_sleep: true,
                latency_to_sleep_onset: None,
                total_sleep_time: Some(UnitValue::new(400.0, MINUTES)),
                number_of_awakenings: None,
                sleep_maintenance_efficiency_percentage: Some(UnitValue::new(95.2, PERCENT)),
                stages: vec![
                    SleepStage {
                        stage: SleepStageKind::Deep,
                        time_interval: TimeInterval {
                            start_date_time: t("2026-06-01T00:00:00Z"),
                            end_date_time: t("2026-06-01T01:00:00Z"),
                        },
                    },
                    SleepStage {
                        stage: SleepStageKind::Rem,
                        time_interval: TimeInterval {
                            start_date_time: t("2026-06-01T01:00:00Z"),
                            end_date_time: t("2026-06-01T07:00:00Z"),
                        },
                    },
                ],
            }),
        );
        let points = data_points(&r, t("2026-06-01T08:00:00Z"), Some("person-1"));
        assert_eq!(points.len(), 3);
        let episode = &points[0]["body"];
        assert!(
            episode.get("stages").is_none(),
            "sleep-episode 1.1 has no stage field"
        );
        assert_eq!(
            episode["total_sleep_time"],
            json!({"value": 400.0, "unit": "min"})
        );
        assert_eq!(
            episode["sleep_maintenance_efficiency_percentage"]["unit"],
            json!("%")
        );
        assert_eq!(points[0]["header"]["user_id"], json!("person-1"));
        assert_eq!(
            points[2]["header"]["schema_id"],
            json!({"namespace":"phr","name":"sleep-stage","version":"1.0"})
        );
        assert_eq!(points[2]["body"]["sleep_stage"], json!("rem"));
        assert_eq!(points[2]["body"]["sleep_episode_id"], json!(r.record_id));
        assert_ne!(points[1]["header"]["id"], points[2]["header"]["id"]);
    }
}
