//! Validation: total, pure, and explicit about why. Every rejection is a [`Reason`] with a
//! stable snake_case code that travels in acks and API errors. The caller passes `now`.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::{RawBatch, ENVELOPE_VERSION};
use crate::id::RecordKey;
use crate::record::{
    Body, HeartRate, Record, SleepEpisode, StepCount, TimeInterval, BEATS_PER_MINUTE, MINUTES,
    PERCENT,
};

/// Why a record or a batch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    // Batch level.
    #[error("the batch is not a valid JSON envelope")]
    MalformedBatch,
    #[error("the batch's schema_version is not one this gateway understands")]
    UnknownSchemaVersion,
    #[error("the batch exceeds the size limit")]
    BatchTooLarge,
    #[error("the batch's bridge or device does not match its topic")]
    TopicMismatch,
    // Record level: shape and identity.
    #[error("the record is not valid JSON for its type")]
    MalformedRecord,
    #[error("the record's device or bridge differs from its batch")]
    DeviceMismatch,
    #[error("record_id is not the UUIDv5 of (device, type, start, end)")]
    RecordIdMismatch,
    // Record level: time.
    #[error("the interval ends before it starts")]
    EndBeforeStart,
    #[error("the interval has zero length")]
    ZeroLengthInterval,
    #[error("the interval is longer than the limit for its type")]
    IntervalTooLong,
    #[error("the record lies too far in the future")]
    InFuture,
    // Record level: values.
    #[error("the count is negative")]
    NegativeCount,
    #[error("the count is implausible for its interval")]
    ImplausibleCount,
    #[error("the heart rate is outside the plausible range")]
    ImplausibleHeartRate,
    #[error("the unit is not the one the schema requires")]
    InvalidUnit,
    #[error("a percentage or duration is outside its possible range")]
    ImplausibleValue,
    #[error("a sleep stage lies outside its episode")]
    StageOutsideEpisode,
    #[error("sleep stages overlap")]
    StagesOverlap,
    // Gateway decisions about who may have the record.
    /// Measured while the device was held through another bridge (a bridge delivers only
    /// what was measured while the device was paired through it).
    #[error("the record was measured while the device was held through another bridge")]
    DeviceNotOnBridge,
    /// Used by `phr-gateway import`; ingest holds such records for the person instead.
    #[error("the person this record belongs to has not consented to its storage")]
    NoStorageConsent,
    /// Measured before its person erased their data: never stored again. Final: a bridge
    /// discards such records (counted), it does not keep or replay them.
    #[error("the person this record belongs to erased their data measured before it")]
    ErasedByPerson,
}

impl Reason {
    /// The stable code (`negative_count`, ...), the same string as in JSON.
    pub fn code(self) -> &'static str {
        match self {
            Self::MalformedBatch => "malformed_batch",
            Self::UnknownSchemaVersion => "unknown_schema_version",
            Self::BatchTooLarge => "batch_too_large",
            Self::TopicMismatch => "topic_mismatch",
            Self::MalformedRecord => "malformed_record",
            Self::DeviceMismatch => "device_mismatch",
            Self::RecordIdMismatch => "record_id_mismatch",
            Self::EndBeforeStart => "end_before_start",
            Self::ZeroLengthInterval => "zero_length_interval",
            Self::IntervalTooLong => "interval_too_long",
            Self::InFuture => "in_future",
            Self::NegativeCount => "negative_count",
            Self::ImplausibleCount => "implausible_count",
            Self::ImplausibleHeartRate => "implausible_heart_rate",
            Self::InvalidUnit => "invalid_unit",
            Self::ImplausibleValue => "implausible_value",
            Self::StageOutsideEpisode => "stage_outside_episode",
            Self::StagesOverlap => "stages_overlap",
            Self::DeviceNotOnBridge => "device_not_on_bridge",
            Self::NoStorageConsent => "no_storage_consent",
            Self::ErasedByPerson => "erased_by_person",
        }
    }
}

/// Bounds of plausibility and size. Defaults are the product's; tests may tighten them.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_batch_bytes: usize,
    pub max_batch_records: usize,
    /// How far past `now` a measured end or creation time may lie (device clocks drift).
    pub max_future: Duration,
    /// Longest interval of one step-count or sleep-episode record.
    pub max_interval: Duration,
    /// Sustained cadence above this is not walking or running (elite sprinters reach ~250).
    pub max_steps_per_minute: i64,
    pub heart_rate_bpm: std::ops::RangeInclusive<f64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch_bytes: 1024 * 1024,
            max_batch_records: 1000,
            max_future: Duration::minutes(10),
            max_interval: Duration::hours(24),
            max_steps_per_minute: 300,
            heart_rate_bpm: 20.0..=300.0,
        }
    }
}

/// Reads a batch envelope, leaving records raw. On failure returns the batch id if it could be
/// read, so the bridge can still be told.
pub fn parse_batch<'a>(
    payload: &'a [u8],
    limits: &Limits,
) -> Result<RawBatch<'a>, (Option<Uuid>, Reason)> {
    if payload.len() > limits.max_batch_bytes {
        return Err((None, Reason::BatchTooLarge));
    }
    let batch: RawBatch<'a> = match serde_json::from_slice(payload) {
        Ok(b) => b,
        Err(_) => return Err((batch_id_of(payload), Reason::MalformedBatch)),
    };
    if batch.schema_version != ENVELOPE_VERSION {
        return Err((Some(batch.batch_id), Reason::UnknownSchemaVersion));
    }
    if batch.records.len() > limits.max_batch_records {
        return Err((Some(batch.batch_id), Reason::BatchTooLarge));
    }
    Ok(batch)
}

/// Best effort: the `batch_id` of an envelope that failed to parse as a whole.
fn batch_id_of(payload: &[u8]) -> Option<Uuid> {
    #[derive(Deserialize)]
    struct IdOnly {
        batch_id: Uuid,
    }
    serde_json::from_slice::<IdOnly>(payload)
        .ok()
        .map(|b| b.batch_id)
}

/// Parses one raw record; the error is the parser's message, which names fields, not values.
pub fn parse_record(raw: &serde_json::value::RawValue) -> Result<Record, String> {
    serde_json::from_str(raw.get()).map_err(|e| {
        // serde_json messages quote offending values for some errors; keep only the category
        // and position so no health value leaks into acks or logs.
        let msg = e.to_string();
        match msg.find(": ") {
            Some(i) if e.is_data() => format!("{} ({})", &msg[..i], position(&e)),
            _ => format!("{:?} error ({})", e.classify(), position(&e)),
        }
    })
}

fn position(e: &serde_json::Error) -> String {
    format!("line {} column {}", e.line(), e.column())
}

/// Checks one record of a batch from `bridge_id` / `device_id`; returns its natural key.
pub fn validate_record(
    record: &Record,
    bridge_id: &str,
    device_id: &str,
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<RecordKey, Reason> {
    if record.device_id != device_id || record.bridge_id != bridge_id {
        return Err(Reason::DeviceMismatch);
    }
    let key = RecordKey::of(record);
    if key.record_id() != record.record_id {
        return Err(Reason::RecordIdMismatch);
    }
    let latest = now + limits.max_future;
    let (_, end) = record.measured();
    if end > latest || record.source_created_at > latest {
        return Err(Reason::InFuture);
    }
    match &record.body {
        Body::StepCount(s) => validate_steps(s, limits)?,
        Body::SleepEpisode(s) => validate_sleep(s, limits)?,
        Body::HeartRate(h) => validate_heart_rate(h, limits)?,
    }
    Ok(key)
}

fn validate_interval(i: &TimeInterval, limits: &Limits) -> Result<Duration, Reason> {
    let length = i.end_date_time - i.start_date_time;
    if length < Duration::zero() {
        Err(Reason::EndBeforeStart)
    } else if length.is_zero() {
        Err(Reason::ZeroLengthInterval)
    } else if length > limits.max_interval {
        Err(Reason::IntervalTooLong)
    } else {
        Ok(length)
    }
}

fn validate_steps(s: &StepCount, limits: &Limits) -> Result<(), Reason> {
    let length = validate_interval(&s.effective_time_frame.time_interval, limits)?;
    if s.step_count < 0 {
        return Err(Reason::NegativeCount);
    }
    // Cadence over the interval, rounded up to whole minutes so short intervals are not
    // judged harsher than a minute.
    let minutes = (length.num_seconds() + 59) / 60;
    if s.step_count > limits.max_steps_per_minute.saturating_mul(minutes.max(1)) {
        return Err(Reason::ImplausibleCount);
    }
    Ok(())
}

fn validate_sleep(s: &SleepEpisode, limits: &Limits) -> Result<(), Reason> {
    let episode = s.effective_time_frame.time_interval;
    let length = validate_interval(&episode, limits)?;
    for d in [&s.latency_to_sleep_onset, &s.total_sleep_time]
        .into_iter()
        .flatten()
    {
        if d.unit != MINUTES {
            return Err(Reason::InvalidUnit);
        }
        if !(d.value >= 0.0 && d.value <= length.num_seconds() as f64 / 60.0) {
            return Err(Reason::ImplausibleValue);
        }
    }
    if let Some(e) = &s.sleep_maintenance_efficiency_percentage {
        if e.unit != PERCENT {
            return Err(Reason::InvalidUnit);
        }
        if !(0.0..=100.0).contains(&e.value) {
            return Err(Reason::ImplausibleValue);
        }
    }
    if s.number_of_awakenings.is_some_and(|n| n < 0) {
        return Err(Reason::NegativeCount);
    }
    let mut stages: Vec<&TimeInterval> = Vec::with_capacity(s.stages.len());
    for stage in &s.stages {
        validate_interval(&stage.time_interval, limits)?;
        let i = &stage.time_interval;
        if i.start_date_time < episode.start_date_time || i.end_date_time > episode.end_date_time {
            return Err(Reason::StageOutsideEpisode);
        }
        stages.push(i);
    }
    stages.sort_by_key(|i| i.start_date_time);
    if stages
        .windows(2)
        .any(|w| w[1].start_date_time < w[0].end_date_time)
    {
        return Err(Reason::StagesOverlap);
    }
    Ok(())
}

fn validate_heart_rate(h: &HeartRate, limits: &Limits) -> Result<(), Reason> {
    if h.heart_rate.unit != BEATS_PER_MINUTE {
        return Err(Reason::InvalidUnit);
    }
    if !limits.heart_rate_bpm.contains(&h.heart_rate.value) {
        return Err(Reason::ImplausibleHeartRate);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
