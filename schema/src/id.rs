//! Record identity. A record is identified by its natural key (device, type, measured start,
//! measured end); `record_id` is a UUIDv5 of that key, so a resend of the same measurement is
//! the same record wherever it was decoded. Times enter the key as UTC milliseconds, so the
//! UTC offset a device reports does not change the identity.

use chrono::{DateTime, FixedOffset};
use uuid::Uuid;

use crate::record::{Record, RecordType};

/// Namespace for record ids (a fixed random UUID; changing it changes every id).
pub const RECORD_NAMESPACE: Uuid = Uuid::from_u128(0x5d8a_61c2_0b7e_4f4b_9a63_2f0c_8e51_d7a4);

/// The natural, time-ordered key the series store deduplicates on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    pub device_id: String,
    pub record_type: RecordType,
    pub start_ms: i64,
    pub end_ms: i64,
}

impl RecordKey {
    pub fn of(record: &Record) -> Self {
        let (start, end) = record.measured();
        Self {
            device_id: record.device_id.clone(),
            record_type: record.record_type(),
            start_ms: start.timestamp_millis(),
            end_ms: end.timestamp_millis(),
        }
    }

    pub fn record_id(&self) -> Uuid {
        let name = format!(
            "{}\n{}\n{}\n{}",
            self.device_id,
            self.record_type.as_str(),
            self.start_ms,
            self.end_ms
        );
        Uuid::new_v5(&RECORD_NAMESPACE, name.as_bytes())
    }
}

/// The `record_id` of a measurement.
pub fn record_id(
    device_id: &str,
    record_type: RecordType,
    start: DateTime<FixedOffset>,
    end: DateTime<FixedOffset>,
) -> Uuid {
    RecordKey {
        device_id: device_id.to_owned(),
        record_type,
        start_ms: start.timestamp_millis(),
        end_ms: end.timestamp_millis(),
    }
    .record_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    #[test]
    fn same_instant_in_another_offset_is_the_same_record() {
        let a = record_id(
            "d1",
            RecordType::StepCount,
            t("2026-01-01T09:00:00+09:00"),
            t("2026-01-01T09:01:00+09:00"),
        );
        let b = record_id(
            "d1",
            RecordType::StepCount,
            t("2026-01-01T00:00:00Z"),
            t("2026-01-01T00:01:00Z"),
        );
        assert_eq!(a, b);
        assert_eq!(a.get_version_num(), 5);
    }

    #[test]
    fn every_key_part_changes_the_id() {
        let s = t("2026-01-01T00:00:00Z");
        let e = t("2026-01-01T00:01:00Z");
        let base = record_id("d1", RecordType::StepCount, s, e);
        assert_ne!(base, record_id("d2", RecordType::StepCount, s, e));
        assert_ne!(base, record_id("d1", RecordType::HeartRate, s, e));
        assert_ne!(base, record_id("d1", RecordType::StepCount, e, e));
        assert_ne!(base, record_id("d1", RecordType::StepCount, s, s));
    }
}
