//! The normalised record. Field names and units follow Open mHealth (`omh:step-count:2.0`,
//! `omh:sleep-episode:1.1`, `omh:heart-rate:2.0`) so the mapping out is a re-shaping, not a
//! conversion. A record never names a person: the gateway attributes it from the device
//! binding valid at its measured time.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The kinds of record the gateway accepts, with their stable wire names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordType {
    StepCount,
    SleepEpisode,
    HeartRate,
}

impl RecordType {
    pub const ALL: [RecordType; 3] = [Self::StepCount, Self::SleepEpisode, Self::HeartRate];

    /// The wire and API name (`step-count`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StepCount => "step-count",
            Self::SleepEpisode => "sleep-episode",
            Self::HeartRate => "heart-rate",
        }
    }

    /// The LOINC code of this type's FHIR Observation: the one table from type to code, read
    /// by FHIR export and import, FHIR search and SMART scopes narrowed by `code`.
    pub fn loinc(self) -> crate::fhir::LoincCode {
        match self {
            Self::StepCount => crate::fhir::STEPS,
            Self::SleepEpisode => crate::fhir::SLEEP_DURATION,
            Self::HeartRate => crate::fhir::HEART_RATE,
        }
    }

    /// The type whose Observation carries the LOINC `code` (see [`RecordType::loinc`]).
    pub fn from_loinc(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.loinc().code == code)
    }

    /// The Open mHealth schema this type maps to: (name, version).
    pub fn omh_schema(self) -> (&'static str, &'static str) {
        match self {
            Self::StepCount => ("step-count", "2.0"),
            Self::SleepEpisode => ("sleep-episode", "1.1"),
            Self::HeartRate => ("heart-rate", "2.0"),
        }
    }
}

impl std::str::FromStr for RecordType {
    type Err = UnknownRecordType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or(UnknownRecordType)
    }
}

impl std::fmt::Display for RecordType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of [`RecordType::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown record type (expected step-count, sleep-episode or heart-rate)")]
pub struct UnknownRecordType;

/// One normalised measurement, as sent by a bridge and as returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// UUIDv5 of the natural key; see [`crate::id`]. The gateway recomputes and checks it.
    pub record_id: Uuid,
    pub device_id: String,
    pub bridge_id: String,
    /// When the device (or the bridge, for devices without a clock) produced the data.
    pub source_created_at: DateTime<FixedOffset>,
    pub provenance: Provenance,
    pub body: Body,
}

impl Record {
    /// A record with its `record_id` derived from the natural key.
    pub fn new(
        device_id: &str,
        bridge_id: &str,
        source_created_at: DateTime<FixedOffset>,
        provenance: Provenance,
        body: Body,
    ) -> Self {
        let mut record = Self {
            record_id: Uuid::nil(),
            device_id: device_id.to_owned(),
            bridge_id: bridge_id.to_owned(),
            source_created_at,
            provenance,
            body,
        };
        record.record_id = crate::id::RecordKey::of(&record).record_id();
        record
    }

    pub fn record_type(&self) -> RecordType {
        self.body.record_type()
    }

    /// The measured time as `[start, end]`; a point in time has `start == end`.
    pub fn measured(&self) -> (DateTime<FixedOffset>, DateTime<FixedOffset>) {
        match &self.body {
            Body::StepCount(s) => (s.effective_time_frame.start(), s.effective_time_frame.end()),
            Body::SleepEpisode(s) => (s.effective_time_frame.start(), s.effective_time_frame.end()),
            Body::HeartRate(h) => (
                h.effective_time_frame.date_time,
                h.effective_time_frame.date_time,
            ),
        }
    }
}

/// How the data was obtained: which decoder turned bytes into this record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// Decoder name and version, e.g. `heart-rate-measurement/1`.
    pub decoder: String,
    pub modality: Modality,
}

impl Provenance {
    pub fn sensed(decoder: &str) -> Self {
        Self {
            decoder: decoder.to_owned(),
            modality: Modality::Sensed,
        }
    }
}

/// Open mHealth header 1.2 `acquisition_provenance.modality`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Modality {
    Sensed,
    SelfReported,
}

/// The measurement itself, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Body {
    StepCount(StepCount),
    SleepEpisode(SleepEpisode),
    HeartRate(HeartRate),
}

impl Body {
    pub fn record_type(&self) -> RecordType {
        match self {
            Self::StepCount(_) => RecordType::StepCount,
            Self::SleepEpisode(_) => RecordType::SleepEpisode,
            Self::HeartRate(_) => RecordType::HeartRate,
        }
    }
}

/// An interval with a start and an end, the one `time_interval` form records use
/// (Open mHealth forbids start, end and duration together; we always send start + end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeInterval {
    pub start_date_time: DateTime<FixedOffset>,
    pub end_date_time: DateTime<FixedOffset>,
}

/// `effective_time_frame` holding a `time_interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntervalFrame {
    pub time_interval: TimeInterval,
}

impl IntervalFrame {
    pub fn new(start: DateTime<FixedOffset>, end: DateTime<FixedOffset>) -> Self {
        Self {
            time_interval: TimeInterval {
                start_date_time: start,
                end_date_time: end,
            },
        }
    }
    pub fn start(&self) -> DateTime<FixedOffset> {
        self.time_interval.start_date_time
    }
    pub fn end(&self) -> DateTime<FixedOffset> {
        self.time_interval.end_date_time
    }
}

/// `effective_time_frame` holding a single `date_time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointFrame {
    pub date_time: DateTime<FixedOffset>,
}

/// Open mHealth `unit-value`: a number with an explicit unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitValue {
    pub value: f64,
    pub unit: String,
}

impl UnitValue {
    pub fn new(value: f64, unit: &str) -> Self {
        Self {
            value,
            unit: unit.to_owned(),
        }
    }
}

/// `omh:step-count:2.0`: steps over an interval. Signed so that a negative count reaches
/// validation and gets its own reason instead of a generic parse error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepCount {
    pub effective_time_frame: IntervalFrame,
    pub step_count: i64,
}

/// `omh:sleep-episode:1.1` plus the stages, which the Open mHealth schema does not have:
/// they leave the gateway as `phr:sleep-stage:1.0` data points (see [`crate::omh`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepEpisode {
    pub effective_time_frame: IntervalFrame,
    pub is_main_sleep: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_to_sleep_onset: Option<UnitValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_sleep_time: Option<UnitValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_of_awakenings: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_maintenance_efficiency_percentage: Option<UnitValue>,
    #[serde(default)]
    pub stages: Vec<SleepStage>,
}

/// One stage of a sleep episode, with its own interval inside the episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepStage {
    pub stage: SleepStageKind,
    pub time_interval: TimeInterval,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SleepStageKind {
    Awake,
    Light,
    Deep,
    Rem,
}

impl SleepStageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Awake => "awake",
            Self::Light => "light",
            Self::Deep => "deep",
            Self::Rem => "rem",
        }
    }
}

/// `omh:heart-rate:2.0`: beats per minute at a point in time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartRate {
    pub effective_time_frame: PointFrame,
    pub heart_rate: UnitValue,
}

/// The unit `omh:heart-rate:2.0` allows.
pub const BEATS_PER_MINUTE: &str = "beats/min";
/// Open mHealth duration unit for minutes.
pub const MINUTES: &str = "min";
/// Open mHealth percentage unit.
pub const PERCENT: &str = "%";
