//! HL7 FHIR R4 output: each record as an `Observation`, daily step totals, `Bundle` and NDJSON
//! wrappers, and the inverse mapping so that an export re-imports into a fresh gateway as the
//! same records.
//!
//! # Mapping
//! | record | `Observation.code` (LOINC) | `effective[x]` | `value[x]` | `category` |
//! | --- | --- | --- | --- | --- |
//! | `step-count` | `55423-8` Number of steps in unspecified time Pedometer | `effectivePeriod` | `valueQuantity` `{steps}` | `activity` |
//! | `heart-rate` | `8867-4` Heart rate | `effectiveDateTime` | `valueQuantity` `/min` | `vital-signs` |
//! | `sleep-episode` | `93832-4` Sleep duration | `effectivePeriod` (the episode) | `valueQuantity` `min` | `activity` |
//! | daily total | `41950-7` Number of steps in 24 hour Measured | `effectivePeriod` (a local day) | `valueQuantity` `/d` | `activity` |
//!
//! Heart rate additionally claims the FHIR vital-signs heart-rate profile
//! (`http://hl7.org/fhir/StructureDefinition/heartrate`): LOINC `8867-4`, UCUM `/min`,
//! category `vital-signs`, a subject and an `effectiveDateTime`.
//!
//! A sleep episode with stages carries one `component` per stage *kind* (not per stage), each a
//! `valueQuantity` in minutes summed from the stages: `93831-6` Deep sleep duration, `93830-8`
//! Light sleep duration, `93829-0` REM sleep duration and `93828-2` Nighttime awakening
//! duration. Without stages there are no components. The `valueQuantity` is the episode's
//! `total_sleep_time` when given in minutes, else the sum of the non-awake stages; with neither
//! it is absent and `dataAbsentReason` is `unknown` (R4 invariant obs-6: never both). No
//! component repeats `Observation.code` (obs-7).
//!
//! # What every record Observation carries
//! `id` = `record_id`; `identifier` `urn:ietf:rfc:3986` / `urn:uuid:<record_id>`; `status`
//! `final`; `subject` = the caller's patient reference; `issued` = the caller's time;
//! `device.display` and `device.identifier` (`urn:phr:device-id`) = `device_id`.
//!
//! # Extensions (this project's own, URN-named; R4 `Extension.url` is a `uri`)
//! - `urn:phr:provenance`, a complex extension (R4 ext-1: sub-extensions, no value of its own)
//!   with `bridge-id` (`valueString`), `decoder` (`valueString`), `modality` (`valueCode`
//!   `sensed` | `self-reported`) and `source-created-at` (`valueDateTime`). Chosen over `note`
//!   (free text, not meant to be machine-read) and `meta.source` (a single URI): it keeps each
//!   fact typed and separately addressable, and R4 receivers that do not know it may ignore it.
//! - `urn:phr:sleep-episode` on sleep Observations: `valueString` holding the compact JSON of
//!   the record's whole sleep-episode body (`effective_time_frame`, `is_main_sleep`, latency,
//!   `total_sleep_time` as sent or absent, awakenings, efficiency and the full `stages` list with
//!   their intervals). This is the lossless carrier: stage intervals cannot be rebuilt from the
//!   per-kind sums, and the Open mHealth fields (`is_main_sleep`, latency, efficiency) have no
//!   LOINC code confirmed in the sources below. One component per stage would misuse
//!   `component` (it is for facets measured together, not a time series), so the stage list
//!   travels as data in an extension instead. On import the carrier is authoritative for the
//!   episode's fields and must agree with `effectivePeriod`.
//!
//! # Import
//! [`record_from_observation`] accepts the three record Observations above (not daily totals),
//! rebuilds the record with [`Record::new`] and refuses it unless the recomputed `record_id`
//! equals `Observation.id`: a resource edited into another device or interval cannot be
//! imported under the old identity. Errors name the element, never its value.
//!
//! # Sources
//! - LOINC `93832-4`, `93831-6`, `93830-8`, `93829-0` and displays: HL7 Personal Health Records
//!   IG (1.0.0-ballot2), ValueSet `pcd-sleep-observation-code`
//!   (<https://hl7.org/fhir/uv/phr/2025May/ValueSet-pcd-sleep-observation-code.html>), and the
//!   same ValueSet in the MITRE Standard Patient Health Record IG.
//! - LOINC `93828-2` "Nighttime awakening duration": not in that ValueSet; corroborated by
//!   several independent public FHIR/OMOP mappings (found with the `code` search), same LOINC
//!   release block as the stage codes. Treat as verified against a terminology server before
//!   relying on it clinically; it is isolated in [`AWAKE_DURATION`].
//! - LOINC `55423-8` "Number of steps in unspecified time Pedometer": India ABDM FHIR IG ValueSet
//!   `PhysicalActivity`; LOINC `41950-7` "Number of steps in 24 hour Measured" and UCUM `/d`:
//!   HL7 Lithuania vital-signs IG `number-of-steps` profile and a Taiwanese daily-steps profile.
//! - Heart rate `8867-4`, UCUM `/min`, profile URL: FHIR R4 heart-rate profile
//!   (<https://hl7.org/fhir/r4/heartrate.html>).
//! - Observation invariants obs-6/obs-7 and the `effective[x]` / `value[x]` choices: FHIR R4
//!   Observation StructureDefinition (<https://hl7.org/fhir/R4/observation.profile.xml.html>);
//!   Extension url and ext-1: <https://hl7.org/fhir/r4/extensibility-definitions.html>.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeZone};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::record::{
    Body, HeartRate, IntervalFrame, Modality, PointFrame, Provenance, Record, RecordType,
    SleepEpisode, SleepStageKind, StepCount, UnitValue, BEATS_PER_MINUTE, MINUTES,
};

/// A LOINC code with its display name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoincCode {
    pub code: &'static str,
    pub display: &'static str,
}

pub const STEPS: LoincCode = LoincCode {
    code: "55423-8",
    display: "Number of steps in unspecified time Pedometer",
};
pub const STEPS_24H: LoincCode = LoincCode {
    code: "41950-7",
    display: "Number of steps in 24 hour Measured",
};
pub const HEART_RATE: LoincCode = LoincCode {
    code: "8867-4",
    display: "Heart rate",
};
pub const SLEEP_DURATION: LoincCode = LoincCode {
    code: "93832-4",
    display: "Sleep duration",
};
pub const DEEP_SLEEP: LoincCode = LoincCode {
    code: "93831-6",
    display: "Deep sleep duration",
};
pub const LIGHT_SLEEP: LoincCode = LoincCode {
    code: "93830-8",
    display: "Light sleep duration",
};
pub const REM_SLEEP: LoincCode = LoincCode {
    code: "93829-0",
    display: "REM sleep duration",
};
pub const AWAKE_DURATION: LoincCode = LoincCode {
    code: "93828-2",
    display: "Nighttime awakening duration",
};

pub const LOINC_SYSTEM: &str = "http://loinc.org";
pub const UCUM_SYSTEM: &str = "http://unitsofmeasure.org";
pub const OBSERVATION_CATEGORY_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/observation-category";
pub const DATA_ABSENT_REASON_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/data-absent-reason";
pub const HEART_RATE_PROFILE: &str = "http://hl7.org/fhir/StructureDefinition/heartrate";
/// `Identifier.system` for a URI value (`urn:uuid:...`).
pub const URI_IDENTIFIER_SYSTEM: &str = "urn:ietf:rfc:3986";
pub const DEVICE_ID_SYSTEM: &str = "urn:phr:device-id";
pub const PROVENANCE_EXTENSION: &str = "urn:phr:provenance";
pub const SLEEP_EPISODE_EXTENSION: &str = "urn:phr:sleep-episode";

/// Namespace of daily-total Observation ids (a fixed random UUID; changing it changes every id).
pub const DAILY_STEPS_NAMESPACE: Uuid = Uuid::from_u128(0x8c3e_0f6b_52d4_4a87_b1e9_6d20_47a5_c913);

/// Why an Observation could not be turned back into a record. Names the element, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FhirError {
    #[error("not a FHIR Observation resource")]
    NotAnObservation,
    #[error("the observation's code is not a step-count, heart-rate or sleep-episode LOINC code")]
    UnsupportedCode,
    #[error("required element `{0}` is missing")]
    Missing(&'static str),
    #[error("element `{0}` has the wrong type or format")]
    Invalid(&'static str),
    #[error("element `{0}` disagrees with the lossless record carrier")]
    Inconsistent(&'static str),
    #[error("Observation.id is not the record_id of its device, type and measured times")]
    RecordIdMismatch,
}

/// The Observations of one record (one per record for every current type).
pub fn observations(
    record: &Record,
    patient_ref: &str,
    issued: DateTime<FixedOffset>,
) -> Vec<Value> {
    let mut obs = common(record, patient_ref, issued);
    let mut extensions = vec![provenance_extension(record)];
    match &record.body {
        Body::StepCount(s) => {
            obs.insert("category".into(), category("activity", "Activity"));
            obs.insert("code".into(), concept(RecordType::StepCount.loinc()));
            obs.insert("effectivePeriod".into(), period(&s.effective_time_frame));
            obs.insert(
                "valueQuantity".into(),
                json!({"value": s.step_count, "unit": "steps", "system": UCUM_SYSTEM, "code": "{steps}"}),
            );
        }
        Body::HeartRate(h) => {
            obs.insert("meta".into(), json!({"profile": [HEART_RATE_PROFILE]}));
            obs.insert("category".into(), category("vital-signs", "Vital Signs"));
            obs.insert("code".into(), concept(RecordType::HeartRate.loinc()));
            obs.insert(
                "effectiveDateTime".into(),
                json!(h.effective_time_frame.date_time),
            );
            let quantity = if h.heart_rate.unit == BEATS_PER_MINUTE {
                json!({"value": h.heart_rate.value, "unit": "beats/minute", "system": UCUM_SYSTEM, "code": "/min"})
            } else {
                // Never claim a UCUM code for a unit we did not convert; validation rejects
                // such records, this only keeps unvalidated input honest.
                json!({"value": h.heart_rate.value, "unit": h.heart_rate.unit})
            };
            obs.insert("valueQuantity".into(), quantity);
        }
        Body::SleepEpisode(s) => {
            obs.insert("category".into(), category("activity", "Activity"));
            obs.insert("code".into(), concept(RecordType::SleepEpisode.loinc()));
            obs.insert("effectivePeriod".into(), period(&s.effective_time_frame));
            match total_sleep_minutes(s) {
                Some(min) => {
                    obs.insert("valueQuantity".into(), minutes(min));
                }
                None => {
                    obs.insert(
                        "dataAbsentReason".into(),
                        json!({"coding": [{"system": DATA_ABSENT_REASON_SYSTEM, "code": "unknown", "display": "Unknown"}]}),
                    );
                }
            }
            if let Some(m) = StageMinutes::of(s) {
                obs.insert(
                    "component".into(),
                    json!([
                        {"code": concept(DEEP_SLEEP), "valueQuantity": minutes(m.deep)},
                        {"code": concept(LIGHT_SLEEP), "valueQuantity": minutes(m.light)},
                        {"code": concept(REM_SLEEP), "valueQuantity": minutes(m.rem)},
                        {"code": concept(AWAKE_DURATION), "valueQuantity": minutes(m.awake)},
                    ]),
                );
            }
            extensions.push(json!({
                "url": SLEEP_EPISODE_EXTENSION,
                "valueString": json!(s).to_string(),
            }));
        }
    }
    obs.insert("extension".into(), Value::Array(extensions));
    vec![Value::Object(obs)]
}

/// One `41950-7` Observation per local calendar day (in `tz_offset`) that has step-count
/// records, summing those whose interval starts in that day; ordered by day. The period is the
/// local day `[00:00, next 00:00)`. Ids are UUIDv5 of `"{patient_ref}\n{YYYY-MM-DD}"` under
/// [`DAILY_STEPS_NAMESPACE`], so a re-export of the same day replaces, not duplicates.
pub fn daily_step_totals(
    records: &[Record],
    tz_offset: FixedOffset,
    patient_ref: &str,
    issued: DateTime<FixedOffset>,
) -> Vec<Value> {
    let mut days: BTreeMap<NaiveDate, i64> = BTreeMap::new();
    for record in records {
        if let Body::StepCount(s) = &record.body {
            let day = s
                .effective_time_frame
                .start()
                .with_timezone(&tz_offset)
                .date_naive();
            let total = days.entry(day).or_insert(0);
            *total = total.saturating_add(s.step_count);
        }
    }
    days.into_iter()
        .filter_map(|(day, steps)| {
            let start = local_midnight(tz_offset, day)?;
            let end = local_midnight(tz_offset, day.succ_opt()?)?;
            Some(daily_step_total(
                day,
                (start, end),
                steps,
                patient_ref,
                issued,
            ))
        })
        .collect()
}

/// The `41950-7` Observation of local day `day` whose bounds are `period` (local midnights,
/// each with the offset in force then: 23 or 25 hours on a DST change), with `steps`
/// counted that day (by whatever rule the caller applies: the gateway's merged view counts
/// each step once across a person's devices). Its id is [`daily_step_totals`]'.
pub fn daily_step_total(
    day: NaiveDate,
    period: (DateTime<FixedOffset>, DateTime<FixedOffset>),
    steps: i64,
    patient_ref: &str,
    issued: DateTime<FixedOffset>,
) -> Value {
    let id = Uuid::new_v5(
        &DAILY_STEPS_NAMESPACE,
        format!("{patient_ref}\n{day}").as_bytes(),
    );
    json!({
        "resourceType": "Observation",
        "id": id,
        "identifier": [{"system": URI_IDENTIFIER_SYSTEM, "value": format!("urn:uuid:{id}")}],
        "status": "final",
        "category": category("activity", "Activity"),
        "code": concept(STEPS_24H),
        "subject": {"reference": patient_ref},
        "effectivePeriod": {"start": period.0, "end": period.1},
        "issued": issued,
        "valueQuantity": {"value": steps, "unit": "steps/day", "system": UCUM_SYSTEM, "code": "/d"},
    })
}

/// A `Bundle` of `bundle_type` (`collection`, `searchset`, ...). Each entry's `fullUrl` is
/// `urn:uuid:<resource id>` when the id is a UUID (all ids this module makes are); a
/// `searchset` also gets `total` and `search.mode` `match`.
pub fn bundle(
    resources: Vec<Value>,
    bundle_type: &str,
    id: Uuid,
    timestamp: DateTime<FixedOffset>,
) -> Value {
    let searchset = bundle_type == "searchset";
    let total = resources.len();
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|resource| {
            let mut entry = Map::new();
            if let Some(rid) = resource
                .get("id")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok())
            {
                entry.insert("fullUrl".into(), json!(format!("urn:uuid:{rid}")));
            }
            entry.insert("resource".into(), resource);
            if searchset {
                entry.insert("search".into(), json!({"mode": "match"}));
            }
            Value::Object(entry)
        })
        .collect();
    let mut b = Map::new();
    b.insert("resourceType".into(), json!("Bundle"));
    b.insert("id".into(), json!(id));
    b.insert("type".into(), json!(bundle_type));
    b.insert("timestamp".into(), json!(timestamp));
    if searchset {
        b.insert("total".into(), json!(total));
    }
    b.insert("entry".into(), Value::Array(entries));
    Value::Object(b)
}

/// FHIR bulk-data NDJSON: one compact resource per line, each line ending in `\n`.
pub fn ndjson(resources: &[Value]) -> String {
    let mut out = String::new();
    for r in resources {
        out.push_str(&r.to_string());
        out.push('\n');
    }
    out
}

/// The record a step-count, heart-rate or sleep-episode Observation from [`observations`]
/// stands for. `bridge_id_fallback` is used only when the provenance extension has no
/// `bridge-id`.
pub fn record_from_observation(obs: &Value, bridge_id_fallback: &str) -> Result<Record, FhirError> {
    let obs = obs.as_object().ok_or(FhirError::NotAnObservation)?;
    if obs.get("resourceType").and_then(Value::as_str) != Some("Observation") {
        return Err(FhirError::NotAnObservation);
    }
    let code = loinc_code(obs)?;
    let id = obs
        .get("id")
        .ok_or(FhirError::Missing("id"))?
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or(FhirError::Invalid("id"))?;
    let device_id = device_id(obs)?;
    let (bridge_id, provenance, source_created_at) = provenance(obs, bridge_id_fallback)?;
    let body = match RecordType::from_loinc(code) {
        Some(RecordType::StepCount) => {
            let frame = effective_period(obs)?;
            let value = value_quantity(obs)?
                .get("value")
                .ok_or(FhirError::Missing("valueQuantity.value"))?;
            let step_count = value
                .as_i64()
                .ok_or(FhirError::Invalid("valueQuantity.value"))?;
            Body::StepCount(StepCount {
                effective_time_frame: frame,
                step_count,
            })
        }
        Some(RecordType::HeartRate) => {
            let date_time = time(
                obs.get("effectiveDateTime")
                    .ok_or(FhirError::Missing("effectiveDateTime"))?,
                "effectiveDateTime",
            )?;
            let q = value_quantity(obs)?;
            let value = q
                .get("value")
                .ok_or(FhirError::Missing("valueQuantity.value"))?
                .as_f64()
                .ok_or(FhirError::Invalid("valueQuantity.value"))?;
            let unit = match (q.get("code").and_then(Value::as_str), q.get("unit")) {
                (Some("/min"), _) => BEATS_PER_MINUTE.to_owned(),
                (Some(_), _) => return Err(FhirError::Invalid("valueQuantity.code")),
                (None, Some(u)) => u
                    .as_str()
                    .ok_or(FhirError::Invalid("valueQuantity.unit"))?
                    .to_owned(),
                (None, None) => return Err(FhirError::Missing("valueQuantity.code")),
            };
            Body::HeartRate(HeartRate {
                effective_time_frame: PointFrame { date_time },
                heart_rate: UnitValue { value, unit },
            })
        }
        _ => {
            // The sleep episode: loinc_code admits only the three types' codes.
            let frame = effective_period(obs)?;
            let carrier = extension(obs, SLEEP_EPISODE_EXTENSION)
                .ok_or(FhirError::Missing("extension[urn:phr:sleep-episode]"))?
                .get("valueString")
                .and_then(Value::as_str)
                .ok_or(FhirError::Invalid("extension[urn:phr:sleep-episode]"))?;
            let episode: SleepEpisode = serde_json::from_str(carrier)
                .map_err(|_| FhirError::Invalid("extension[urn:phr:sleep-episode]"))?;
            if episode.effective_time_frame != frame {
                return Err(FhirError::Inconsistent("effectivePeriod"));
            }
            Body::SleepEpisode(episode)
        }
    };
    let record = Record::new(&device_id, &bridge_id, source_created_at, provenance, body);
    if record.record_id != id {
        return Err(FhirError::RecordIdMismatch);
    }
    Ok(record)
}

/// Per-kind stage durations of an episode, in minutes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageMinutes {
    pub deep: f64,
    pub light: f64,
    pub rem: f64,
    pub awake: f64,
}

impl StageMinutes {
    /// `None` when the episode has no stages (sums of nothing are unknown, not zero).
    pub fn of(episode: &SleepEpisode) -> Option<Self> {
        if episode.stages.is_empty() {
            return None;
        }
        // Sum in milliseconds and divide once, so whole-minute stages give whole minutes.
        let mut ms = [0i64; 4];
        for stage in &episode.stages {
            let i = match stage.stage {
                SleepStageKind::Deep => 0,
                SleepStageKind::Light => 1,
                SleepStageKind::Rem => 2,
                SleepStageKind::Awake => 3,
            };
            let d = stage.time_interval.end_date_time - stage.time_interval.start_date_time;
            ms[i] = ms[i].saturating_add(d.num_milliseconds());
        }
        let min = |v: i64| v as f64 / 60_000.0;
        Some(Self {
            deep: min(ms[0]),
            light: min(ms[1]),
            rem: min(ms[2]),
            awake: min(ms[3]),
        })
    }

    /// Minutes in the non-awake stages.
    pub fn asleep(&self) -> f64 {
        self.deep + self.light + self.rem
    }
}

/// Total sleep time in minutes: as sent when in minutes, else summed from non-awake stages.
pub fn total_sleep_minutes(episode: &SleepEpisode) -> Option<f64> {
    match &episode.total_sleep_time {
        Some(t) if t.unit == MINUTES => Some(t.value),
        _ => StageMinutes::of(episode).map(|m| m.asleep()),
    }
}

fn common(record: &Record, patient_ref: &str, issued: DateTime<FixedOffset>) -> Map<String, Value> {
    let mut obs = Map::new();
    obs.insert("resourceType".into(), json!("Observation"));
    obs.insert("id".into(), json!(record.record_id));
    obs.insert(
        "identifier".into(),
        json!([{"system": URI_IDENTIFIER_SYSTEM, "value": format!("urn:uuid:{}", record.record_id)}]),
    );
    obs.insert("status".into(), json!("final"));
    obs.insert("subject".into(), json!({"reference": patient_ref}));
    obs.insert("issued".into(), json!(issued));
    obs.insert(
        "device".into(),
        json!({
            "display": record.device_id,
            "identifier": {"system": DEVICE_ID_SYSTEM, "value": record.device_id},
        }),
    );
    obs
}

fn provenance_extension(record: &Record) -> Value {
    json!({
        "url": PROVENANCE_EXTENSION,
        "extension": [
            {"url": "bridge-id", "valueString": record.bridge_id},
            {"url": "decoder", "valueString": record.provenance.decoder},
            {"url": "modality", "valueCode": modality_code(record.provenance.modality)},
            {"url": "source-created-at", "valueDateTime": record.source_created_at},
        ],
    })
}

fn modality_code(m: Modality) -> &'static str {
    match m {
        Modality::Sensed => "sensed",
        Modality::SelfReported => "self-reported",
    }
}

fn concept(c: LoincCode) -> Value {
    json!({"coding": [{"system": LOINC_SYSTEM, "code": c.code, "display": c.display}], "text": c.display})
}

fn category(code: &str, display: &str) -> Value {
    json!([{"coding": [{"system": OBSERVATION_CATEGORY_SYSTEM, "code": code, "display": display}]}])
}

fn period(frame: &IntervalFrame) -> Value {
    json!({"start": frame.start(), "end": frame.end()})
}

fn minutes(value: f64) -> Value {
    json!({"value": value, "unit": "min", "system": UCUM_SYSTEM, "code": "min"})
}

fn local_midnight(tz: FixedOffset, day: NaiveDate) -> Option<DateTime<FixedOffset>> {
    tz.from_local_datetime(&day.and_time(NaiveTime::MIN))
        .single()
}

fn loinc_code(obs: &Map<String, Value>) -> Result<&'static str, FhirError> {
    let codings = obs
        .get("code")
        .ok_or(FhirError::Missing("code"))?
        .get("coding")
        .and_then(Value::as_array)
        .ok_or(FhirError::Missing("code.coding"))?;
    codings
        .iter()
        .filter(|c| c.get("system").and_then(Value::as_str) == Some(LOINC_SYSTEM))
        .filter_map(|c| c.get("code").and_then(Value::as_str))
        .find_map(|code| RecordType::from_loinc(code).map(|t| t.loinc().code))
        .ok_or(FhirError::UnsupportedCode)
}

fn device_id(obs: &Map<String, Value>) -> Result<String, FhirError> {
    let ident = obs
        .get("device")
        .ok_or(FhirError::Missing("device"))?
        .get("identifier")
        .ok_or(FhirError::Missing("device.identifier"))?;
    if ident.get("system").and_then(Value::as_str) != Some(DEVICE_ID_SYSTEM) {
        return Err(FhirError::Invalid("device.identifier.system"));
    }
    ident
        .get("value")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or(FhirError::Invalid("device.identifier.value"))
}

fn extension<'a>(obs: &'a Map<String, Value>, url: &str) -> Option<&'a Value> {
    find_by_url(obs.get("extension")?, url)
}

fn find_by_url<'a>(extensions: &'a Value, url: &str) -> Option<&'a Value> {
    extensions
        .as_array()?
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(url))
}

fn provenance(
    obs: &Map<String, Value>,
    bridge_id_fallback: &str,
) -> Result<(String, Provenance, DateTime<FixedOffset>), FhirError> {
    const EXT: &str = "extension[urn:phr:provenance]";
    let subs = extension(obs, PROVENANCE_EXTENSION)
        .ok_or(FhirError::Missing(EXT))?
        .get("extension")
        .ok_or(FhirError::Invalid(EXT))?;
    let sub = |name: &str, key: &str| find_by_url(subs, name).map(|e| e.get(key));
    let bridge_id = match sub("bridge-id", "valueString") {
        None => bridge_id_fallback.to_owned(),
        Some(v) => v
            .and_then(Value::as_str)
            .ok_or(FhirError::Invalid("provenance bridge-id"))?
            .to_owned(),
    };
    let decoder = sub("decoder", "valueString")
        .ok_or(FhirError::Missing("provenance decoder"))?
        .and_then(Value::as_str)
        .ok_or(FhirError::Invalid("provenance decoder"))?
        .to_owned();
    let modality = match sub("modality", "valueCode")
        .ok_or(FhirError::Missing("provenance modality"))?
        .and_then(Value::as_str)
    {
        Some("sensed") => Modality::Sensed,
        Some("self-reported") => Modality::SelfReported,
        _ => return Err(FhirError::Invalid("provenance modality")),
    };
    let created = sub("source-created-at", "valueDateTime")
        .ok_or(FhirError::Missing("provenance source-created-at"))?
        .ok_or(FhirError::Invalid("provenance source-created-at"))?;
    let created = time(created, "provenance source-created-at")?;
    Ok((bridge_id, Provenance { decoder, modality }, created))
}

fn effective_period(obs: &Map<String, Value>) -> Result<IntervalFrame, FhirError> {
    let p = obs
        .get("effectivePeriod")
        .ok_or(FhirError::Missing("effectivePeriod"))?;
    let start = time(
        p.get("start")
            .ok_or(FhirError::Missing("effectivePeriod.start"))?,
        "effectivePeriod.start",
    )?;
    let end = time(
        p.get("end")
            .ok_or(FhirError::Missing("effectivePeriod.end"))?,
        "effectivePeriod.end",
    )?;
    Ok(IntervalFrame::new(start, end))
}

fn value_quantity(obs: &Map<String, Value>) -> Result<&Map<String, Value>, FhirError> {
    obs.get("valueQuantity")
        .ok_or(FhirError::Missing("valueQuantity"))?
        .as_object()
        .ok_or(FhirError::Invalid("valueQuantity"))
}

fn time(v: &Value, field: &'static str) -> Result<DateTime<FixedOffset>, FhirError> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .ok_or(FhirError::Invalid(field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{SleepStage, TimeInterval, PERCENT};
    use proptest::prelude::*;

    const PATIENT: &str = "Patient/demo-person";

    fn t(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    fn issued() -> DateTime<FixedOffset> {
        t("2026-06-02T08:00:00+09:00")
    }

    fn steps(start: &str, end: &str, n: i64) -> Record {
        Record::new(
            "band-1",
            "bridge-1",
            t(end),
            Provenance::sensed("sim-band/1"),
            Body::StepCount(StepCount {
                effective_time_frame: IntervalFrame::new(t(start), t(end)),
                step_count: n,
            }),
        )
    }

    fn heart() -> Record {
        Record::new(
            "hrm-7",
            "bridge-1",
            t("2026-06-01T10:00:01+09:00"),
            Provenance::sensed("heart-rate-measurement/1"),
            Body::HeartRate(HeartRate {
                effective_time_frame: PointFrame {
                    date_time: t("2026-06-01T10:00:00.250+09:00"),
                },
                heart_rate: UnitValue::new(72.5, BEATS_PER_MINUTE),
            }),
        )
    }

    fn stage(kind: SleepStageKind, start: &str, end: &str) -> SleepStage {
        SleepStage {
            stage: kind,
            time_interval: TimeInterval {
                start_date_time: t(start),
                end_date_time: t(end),
            },
        }
    }

    fn sleep(total: Option<f64>) -> Record {
        Record::new(
            "band-1",
            "bridge-2",
            t("2026-06-01T07:05:00+09:00"),
            Provenance {
                decoder: "vendor-x/3".into(),
                modality: Modality::Sensed,
            },
            Body::SleepEpisode(SleepEpisode {
                effective_time_frame: IntervalFrame::new(
                    t("2026-05-31T23:00:00+09:00"),
                    t("2026-06-01T07:00:00+09:00"),
                ),
                is_main_sleep: true,
                latency_to_sleep_onset: Some(UnitValue::new(12.0, MINUTES)),
                total_sleep_time: total.map(|v| UnitValue::new(v, MINUTES)),
                number_of_awakenings: Some(2),
                sleep_maintenance_efficiency_percentage: Some(UnitValue::new(91.5, PERCENT)),
                stages: vec![
                    stage(
                        SleepStageKind::Light,
                        "2026-05-31T23:00:00+09:00",
                        "2026-06-01T00:30:00+09:00",
                    ),
                    stage(
                        SleepStageKind::Deep,
                        "2026-06-01T00:30:00+09:00",
                        "2026-06-01T02:00:00+09:00",
                    ),
                    stage(
                        SleepStageKind::Awake,
                        "2026-06-01T02:00:00+09:00",
                        "2026-06-01T02:20:00+09:00",
                    ),
                    stage(
                        SleepStageKind::Rem,
                        "2026-06-01T02:20:00+09:00",
                        "2026-06-01T03:40:00+09:00",
                    ),
                    stage(
                        SleepStageKind::Light,
                        "2026-06-01T03:40:00+09:00",
                        "2026-06-01T07:00:00+09:00",
                    ),
                ],
            }),
        )
    }

    fn one(r: &Record) -> Value {
        let mut v = observations(r, PATIENT, issued());
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    fn assert_common(o: &Value, r: &Record) {
        assert_eq!(o["resourceType"], json!("Observation"));
        assert_eq!(o["id"], json!(r.record_id.to_string()));
        assert_eq!(o["status"], json!("final"));
        assert_eq!(o["subject"], json!({"reference": PATIENT}));
        assert_eq!(o["issued"], json!("2026-06-02T08:00:00+09:00"));
        assert_eq!(
            o["identifier"],
            json!([{"system": "urn:ietf:rfc:3986", "value": format!("urn:uuid:{}", r.record_id)}])
        );
        assert_eq!(
            o["device"],
            json!({"display": r.device_id, "identifier": {"system": "urn:phr:device-id", "value": r.device_id}})
        );
        let prov = o["extension"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["url"] == json!("urn:phr:provenance"))
            .unwrap();
        assert!(
            prov.get("valueString").is_none(),
            "ext-1: value or extensions, not both"
        );
        assert_eq!(
            prov["extension"][0],
            json!({"url": "bridge-id", "valueString": r.bridge_id})
        );
        assert_eq!(
            prov["extension"][1],
            json!({"url": "decoder", "valueString": r.provenance.decoder})
        );
        assert_eq!(
            prov["extension"][2],
            json!({"url": "modality", "valueCode": "sensed"})
        );
        assert_eq!(
            prov["extension"][3],
            json!({"url": "source-created-at", "valueDateTime": r.source_created_at})
        );
    }

    fn loinc(o: &Value) -> (&str, &str) {
        let c = &o["code"]["coding"][0];
        assert_eq!(c["system"], json!("http://loinc.org"));
        (c["code"].as_str().unwrap(), c["display"].as_str().unwrap())
    }

    fn category_code(o: &Value) -> &str {
        let c = &o["category"][0]["coding"][0];
        assert_eq!(
            c["system"],
            json!("http://terminology.hl7.org/CodeSystem/observation-category")
        );
        c["code"].as_str().unwrap()
    }

    #[test]
    fn step_count_observation() {
        let r = steps("2026-06-01T10:00:00+09:00", "2026-06-01T10:01:00+09:00", 87);
        let o = one(&r);
        assert_common(&o, &r);
        assert_eq!(
            loinc(&o),
            ("55423-8", "Number of steps in unspecified time Pedometer")
        );
        assert_eq!(category_code(&o), "activity");
        assert_eq!(
            o["valueQuantity"],
            json!({"value": 87, "unit": "steps", "system": "http://unitsofmeasure.org", "code": "{steps}"})
        );
        assert_eq!(
            o["effectivePeriod"],
            json!({"start": "2026-06-01T10:00:00+09:00", "end": "2026-06-01T10:01:00+09:00"})
        );
        assert!(o.get("effectiveDateTime").is_none());
        assert!(o.get("meta").is_none());
    }

    #[test]
    fn heart_rate_observation_follows_vital_signs_profile() {
        let r = heart();
        let o = one(&r);
        assert_common(&o, &r);
        assert_eq!(loinc(&o), ("8867-4", "Heart rate"));
        assert_eq!(category_code(&o), "vital-signs");
        assert_eq!(
            o["meta"]["profile"],
            json!(["http://hl7.org/fhir/StructureDefinition/heartrate"])
        );
        assert_eq!(
            o["effectiveDateTime"],
            json!("2026-06-01T10:00:00.250+09:00")
        );
        assert!(o.get("effectivePeriod").is_none());
        assert_eq!(
            o["valueQuantity"],
            json!({"value": 72.5, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"})
        );
    }

    #[test]
    fn sleep_observation_has_duration_components_and_carrier() {
        let r = sleep(Some(440.0));
        let o = one(&r);
        assert_common(&o, &r);
        assert_eq!(loinc(&o), ("93832-4", "Sleep duration"));
        assert_eq!(
            o["valueQuantity"],
            json!({"value": 440.0, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"})
        );
        assert!(o.get("dataAbsentReason").is_none());
        assert_eq!(
            o["effectivePeriod"],
            json!({"start": "2026-05-31T23:00:00+09:00", "end": "2026-06-01T07:00:00+09:00"})
        );
        let comps = o["component"].as_array().unwrap();
        let got: Vec<(&str, &str, f64)> = comps
            .iter()
            .map(|c| {
                assert_eq!(c["code"]["coding"][0]["system"], json!("http://loinc.org"));
                assert_eq!(c["valueQuantity"]["code"], json!("min"));
                assert_eq!(c["valueQuantity"]["unit"], json!("min"));
                assert_eq!(
                    c["valueQuantity"]["system"],
                    json!("http://unitsofmeasure.org")
                );
                (
                    c["code"]["coding"][0]["code"].as_str().unwrap(),
                    c["code"]["coding"][0]["display"].as_str().unwrap(),
                    c["valueQuantity"]["value"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("93831-6", "Deep sleep duration", 90.0),
                ("93830-8", "Light sleep duration", 290.0),
                ("93829-0", "REM sleep duration", 80.0),
                ("93828-2", "Nighttime awakening duration", 20.0),
            ]
        );
        // obs-7: no component repeats Observation.code.
        assert!(got.iter().all(|(code, _, _)| *code != "93832-4"));
        let carrier = o["extension"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["url"] == json!("urn:phr:sleep-episode"))
            .unwrap();
        let s: SleepEpisode =
            serde_json::from_str(carrier["valueString"].as_str().unwrap()).unwrap();
        assert_eq!(Body::SleepEpisode(s), r.body);
    }

    #[test]
    fn sleep_total_is_computed_from_non_awake_stages_when_absent() {
        let o = one(&sleep(None));
        assert_eq!(o["valueQuantity"]["value"], json!(460.0));
    }

    #[test]
    fn sleep_without_total_or_stages_says_data_absent() {
        let mut r = sleep(None);
        if let Body::SleepEpisode(s) = &mut r.body {
            s.stages.clear();
        }
        let o = one(&r);
        assert!(o.get("valueQuantity").is_none(), "obs-6");
        assert!(o.get("component").is_none());
        assert_eq!(
            o["dataAbsentReason"]["coding"][0],
            json!({"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "unknown", "display": "Unknown"})
        );
        assert_eq!(record_from_observation(&o, "x").unwrap(), r);
    }

    #[test]
    fn round_trips_are_exact() {
        let records = [
            steps("2026-06-01T10:00:00+09:00", "2026-06-01T10:01:00+09:00", 87),
            heart(),
            sleep(Some(440.0)),
            sleep(None),
        ];
        for r in records {
            let back = record_from_observation(&one(&r), "other-bridge").unwrap();
            assert_eq!(back, r);
            // Byte-identical JSON too: offsets and units survive, not just instants.
            assert_eq!(json!(back), json!(r));
        }
    }

    #[test]
    fn missing_bridge_id_uses_the_fallback() {
        let r = steps("2026-06-01T10:00:00+09:00", "2026-06-01T10:01:00+09:00", 5);
        let mut o = one(&r);
        let subs = o["extension"][0]["extension"].as_array_mut().unwrap();
        subs.retain(|e| e["url"] != json!("bridge-id"));
        let back = record_from_observation(&o, "fallback-bridge").unwrap();
        assert_eq!(back.bridge_id, "fallback-bridge");
        assert_eq!(back.record_id, r.record_id);
    }

    #[test]
    fn typed_errors_for_malformed_observations() {
        let r = steps("2026-06-01T10:00:00+09:00", "2026-06-01T10:01:00+09:00", 87);
        let good = one(&r);
        let err = |f: &dyn Fn(&mut Value)| {
            let mut o = good.clone();
            f(&mut o);
            record_from_observation(&o, "b").unwrap_err()
        };
        assert_eq!(
            record_from_observation(&json!([1]), "b").unwrap_err(),
            FhirError::NotAnObservation
        );
        assert_eq!(
            err(&|o| o["resourceType"] = json!("Patient")),
            FhirError::NotAnObservation
        );
        assert_eq!(
            err(&|o| o["code"]["coding"][0]["code"] = json!("41950-7")),
            FhirError::UnsupportedCode
        );
        assert_eq!(
            err(&|o| {
                o.as_object_mut().unwrap().remove("code");
            }),
            FhirError::Missing("code")
        );
        assert_eq!(err(&|o| o["id"] = json!("nope")), FhirError::Invalid("id"));
        assert_eq!(
            err(&|o| o["id"] = json!(Uuid::nil())),
            FhirError::RecordIdMismatch
        );
        assert_eq!(
            err(&|o| o["device"]["identifier"]["value"] = json!("band-2")),
            FhirError::RecordIdMismatch
        );
        assert_eq!(
            err(&|o| o["effectivePeriod"]["start"] = json!("yesterday")),
            FhirError::Invalid("effectivePeriod.start")
        );
        assert_eq!(
            err(&|o| o["valueQuantity"]["value"] = json!(8.5)),
            FhirError::Invalid("valueQuantity.value")
        );
        assert_eq!(
            err(&|o| {
                o.as_object_mut().unwrap().remove("extension");
            }),
            FhirError::Missing("extension[urn:phr:provenance]")
        );
        assert_eq!(
            err(&|o| o["extension"][0]["extension"][2]["valueCode"] = json!("guessed")),
            FhirError::Invalid("provenance modality")
        );
        // Sleep: carrier missing, unreadable, or disagreeing with effectivePeriod.
        let s = one(&sleep(Some(440.0)));
        let serr = |f: &dyn Fn(&mut Value)| {
            let mut o = s.clone();
            f(&mut o);
            record_from_observation(&o, "b").unwrap_err()
        };
        assert_eq!(
            serr(&|o| {
                o["extension"].as_array_mut().unwrap().pop();
            }),
            FhirError::Missing("extension[urn:phr:sleep-episode]")
        );
        assert_eq!(
            serr(&|o| o["extension"][1]["valueString"] = json!("{")),
            FhirError::Invalid("extension[urn:phr:sleep-episode]")
        );
        assert_eq!(
            serr(&|o| o["effectivePeriod"]["end"] = json!("2026-06-01T08:00:00+09:00")),
            FhirError::Inconsistent("effectivePeriod")
        );
    }

    #[test]
    fn daily_totals_split_at_local_midnight() {
        let tz = FixedOffset::east_opt(9 * 3600).unwrap();
        let records = vec![
            steps("2026-06-01T23:59:00+09:00", "2026-06-02T00:00:00+09:00", 10),
            steps("2026-06-01T12:00:00+09:00", "2026-06-01T12:01:00+09:00", 5),
            // 00:00 local on the 2nd, written in UTC: belongs to the 2nd.
            steps("2026-06-01T15:00:00Z", "2026-06-01T15:01:00Z", 7),
            heart(),
        ];
        let days = daily_step_totals(&records, tz, PATIENT, issued());
        assert_eq!(days.len(), 2);
        assert_eq!(
            loinc(&days[0]),
            ("41950-7", "Number of steps in 24 hour Measured")
        );
        assert_eq!(category_code(&days[0]), "activity");
        assert_eq!(days[0]["valueQuantity"]["value"], json!(15));
        assert_eq!(days[0]["valueQuantity"]["code"], json!("/d"));
        assert_eq!(
            days[0]["valueQuantity"]["system"],
            json!("http://unitsofmeasure.org")
        );
        assert_eq!(
            days[0]["effectivePeriod"],
            json!({"start": "2026-06-01T00:00:00+09:00", "end": "2026-06-02T00:00:00+09:00"})
        );
        assert_eq!(days[1]["valueQuantity"]["value"], json!(7));
        assert_eq!(
            days[1]["effectivePeriod"],
            json!({"start": "2026-06-02T00:00:00+09:00", "end": "2026-06-03T00:00:00+09:00"})
        );
        assert_eq!(days[0]["subject"], json!({"reference": PATIENT}));
        assert_eq!(days[0]["status"], json!("final"));
        // Deterministic ids: same patient and day, same id; other patient, other id.
        let again = daily_step_totals(&records, tz, PATIENT, issued());
        assert_eq!(days[0]["id"], again[0]["id"]);
        assert_ne!(days[0]["id"], days[1]["id"]);
        let other = daily_step_totals(&records, tz, "Patient/other", issued());
        assert_ne!(days[0]["id"], other[0]["id"]);
        let id = Uuid::parse_str(days[0]["id"].as_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 5);
        assert_eq!(
            days[0]["identifier"][0]["value"],
            json!(format!("urn:uuid:{id}"))
        );
    }

    #[test]
    fn bundle_and_ndjson_shapes() {
        let r1 = steps("2026-06-01T10:00:00+09:00", "2026-06-01T10:01:00+09:00", 1);
        let r2 = heart();
        let mut res = observations(&r1, PATIENT, issued());
        res.extend(observations(&r2, PATIENT, issued()));
        let id = Uuid::from_u128(42);
        let b = bundle(res.clone(), "collection", id, issued());
        assert_eq!(b["resourceType"], json!("Bundle"));
        assert_eq!(b["type"], json!("collection"));
        assert_eq!(b["id"], json!(id.to_string()));
        assert_eq!(b["timestamp"], json!("2026-06-02T08:00:00+09:00"));
        assert!(b.get("total").is_none());
        let entries = b["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0]["fullUrl"],
            json!(format!("urn:uuid:{}", r1.record_id))
        );
        assert_eq!(entries[1]["resource"], res[1]);
        assert!(entries[0].get("search").is_none());

        let s = bundle(res.clone(), "searchset", id, issued());
        assert_eq!(s["total"], json!(2));
        assert_eq!(s["entry"][1]["search"], json!({"mode": "match"}));

        let nd = ndjson(&res);
        assert!(nd.ends_with('\n'));
        let lines: Vec<&str> = nd.lines().collect();
        assert_eq!(lines.len(), 2);
        for (line, r) in lines.iter().zip(&res) {
            assert!(!line.contains('\n'));
            assert!(!line.contains(": "), "compact");
            assert_eq!(&serde_json::from_str::<Value>(line).unwrap(), r);
        }
        assert_eq!(ndjson(&[]), "");
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-zA-Z0-9:/.+-]{0,12}".prop_map(Value::String),
            Just(json!("Observation")),
            Just(json!("55423-8")),
            Just(json!("93832-4")),
            Just(json!("http://loinc.org")),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("resourceType".to_owned()),
                        Just("code".to_owned()),
                        Just("coding".to_owned()),
                        Just("system".to_owned()),
                        Just("extension".to_owned()),
                        Just("url".to_owned()),
                        Just("valueQuantity".to_owned()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_json_never_panics(v in arb_json()) {
            let _ = record_from_observation(&v, "b");
        }

        #[test]
        fn dropping_any_top_level_element_is_an_error_or_the_same_record(
            which in 0usize..64,
            kind in 0usize..3,
        ) {
            let r = match kind {
                0 => steps("2026-06-01T10:00:00+09:00", "2026-06-01T10:01:00+09:00", 3),
                1 => heart(),
                _ => sleep(Some(440.0)),
            };
            let mut o = one(&r);
            let map = o.as_object_mut().unwrap();
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = &keys[which % keys.len()];
            map.remove(key);
            if let Ok(back) = record_from_observation(&o, "b") {
                // Only elements the import does not read may go missing silently.
                prop_assert_eq!(back, r);
            }
        }
    }
}
