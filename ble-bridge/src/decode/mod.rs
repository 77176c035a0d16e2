//! Sans-io GATT decoders: `(characteristic, bytes, received_at)` in, [`Reading`]s or a
//! [`DecodeError`] out. No btleplug, no clock, no I/O: the transport hands bytes in and the
//! normaliser turns readings into records.
//!
//! One file per device family, registered in one table ([`DECODERS`]); a vendor decoder is one
//! new module plus one table row. Standard Bluetooth profiles are shared by every device that
//! speaks them:
//! - [`heart_rate`]: Heart Rate Measurement (0x2A37, Heart Rate Service 0x180D).
//! - [`battery`]: Battery Level (0x2A19, Battery Service 0x180F).
//! - [`device_information`]: Serial Number, Manufacturer Name and Model Number strings (0x2A25,
//!   0x2A29, 0x2A24, Device Information Service 0x180A), read while pairing.
//! - [`current_time`]: Current Time (0x2A2B, Current Time Service 0x1805), the device's clock.
//! - [`local_time`]: Local Time Information (0x2A0F, Current Time Service 0x1805), the device's
//!   time zone and DST offset (its midnight).
//! - [`pams`]: Step Counter Activity Summary Data (0x2B40, Physical Activity Monitor Service
//!   0x183E), complete single-segment messages.
//! - [`pams_sleep`]: PAMS Sleep Activity Summary Data (0x2B42), complete single-segment
//!   messages.
//! - [`pams_session`]: PAMS Activity Current Session (0x2B44) and Physical Activity Session
//!   Descriptor (0x2B45), when sessions started and ended; also the Control Point (0x2B43)
//!   "Enquire Sessions" command, which is sent, not decoded.
//! - [`sim_band`]: the vendor protocol of the project's simulated "PHR reference band".
//!
//! Decoder names carry a version (`heart-rate-measurement/1`) and travel in every record's
//! provenance, so a decoder fix can be traced to the records it produced.

pub mod battery;
pub mod current_time;
pub mod device_information;
pub mod heart_rate;
pub mod local_time;
pub mod pams;
pub mod pams_session;
pub mod pams_sleep;
pub mod sim_band;

use chrono::{DateTime, NaiveDateTime, Utc};
use phr_schema::SleepStageKind;
use uuid::Uuid;

pub use device_information::DeviceInfoField;

/// What a decoder read from one notification, before normalisation into records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// Steps counted over `[start, end)`.
    Steps {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        steps: u32,
    },
    /// One sleep episode with its stages.
    Sleep(SleepReading),
    /// One heart-rate measurement at `at`.
    HeartRate {
        at: DateTime<Utc>,
        bpm: u16,
        /// Beat-to-beat intervals, converted to milliseconds (rounded).
        rr_intervals_ms: Vec<u16>,
        /// `None` when the sensor does not support contact detection.
        sensor_contact: Option<bool>,
        /// Cumulative energy expended since the last reset, in kilojoules.
        energy_expended_kj: Option<u16>,
    },
    /// Battery level of the device; device state, not a health record.
    Battery { at: DateTime<Utc>, percent: u8 },
    /// A Device Information string (serial, manufacturer, model); used by pairing, not a
    /// health record.
    DeviceInfo {
        field: DeviceInfoField,
        value: String,
    },
    /// The device's own local wall-clock time, read when the bridge received it at
    /// `received_at`; the bridge learns the device clock's offset from it. Not a health record.
    DeviceClock {
        device_time: NaiveDateTime,
        received_at: DateTime<Utc>,
    },
    /// The device's own time zone and DST offset (Local Time Information), in minutes east
    /// of UTC; `None` where the device says it does not know. Not a health record: it places
    /// the device's midnight ([`crate::cumulative`]).
    LocalTime {
        zone_minutes: Option<i16>,
        dst_minutes: Option<u16>,
        received_at: DateTime<Utc>,
    },
    /// A PAMS Step Counter Activity Summary ([`pams`]), timed relative to the start of session
    /// `session_id`. Becomes wall-clock steps only through the bridge's per-device session
    /// state (see the [`pams`] contract); the normaliser alone produces no record from it.
    PamsSteps {
        session_id: u16,
        sub_session_id: u16,
        /// Seconds since the start of the session.
        relative_seconds: u32,
        sequence: u32,
        /// Normal walking + intensity steps.
        steps: u32,
        /// Floor steps, reported apart: whether they overlap `steps` is not confirmed.
        floor_steps: Option<u32>,
    },
    /// A PAMS Sleep Activity Summary, timed relative to the start of its session; like
    /// [`Reading::PamsSteps`] it needs the bridge's session state to become a record.
    PamsSleep(PamsSleepSummary),
    /// When a PAMS session or sub-session started (and ended), from Activity Current Session
    /// (0x2B44) or a Physical Activity Session Descriptor (0x2B45): the anchor that turns the
    /// relative timestamps of PAMS summaries into wall-clock time. Not a health record.
    PamsSession(PamsSessionTiming),
    /// A running total of the steps taken since the device's local midnight, read at `at`;
    /// the bridge turns consecutive totals into interval deltas ([`crate::cumulative`]).
    StepsToday { at: DateTime<Utc>, total: u32 },
}

/// The fields of a PAMS Sleep Activity Summary the bridge uses (see `pams_sleep`).
/// Serialisable because the bridge holds summaries in its saved per-device state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct PamsSleepSummary {
    pub session_id: u16,
    pub sub_session_id: u16,
    /// Seconds since the start of the session.
    pub relative_seconds: u32,
    pub sequence: u32,
    pub total_sleep_seconds: Option<u32>,
    pub total_wake_seconds: Option<u32>,
    pub total_bed_seconds: Option<u32>,
    pub awakenings: Option<u16>,
    pub latency_seconds: Option<u16>,
    pub efficiency_percent: Option<u8>,
}

/// When a PAMS session (`sub_session_id: None`) or one of its sub-sessions started, and
/// ended if it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PamsSessionTiming {
    pub session_id: u16,
    pub sub_session_id: Option<u16>,
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
    /// Still running (the device is still measuring into it).
    pub running: bool,
}

/// A sleep episode `[start, end)` and its stages, each `(kind, start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SleepReading {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub is_main_sleep: bool,
    pub stages: Vec<(SleepStageKind, DateTime<Utc>, DateTime<Utc>)>,
    /// Totals the device reported itself (a summary without stages); where stages exist the
    /// normaliser derives the totals from them instead.
    pub reported: SleepTotals,
}

/// Sleep totals as a device reports them, each optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SleepTotals {
    pub total_sleep: Option<chrono::TimeDelta>,
    pub latency: Option<chrono::TimeDelta>,
    pub awakenings: Option<u16>,
    pub efficiency_percent: Option<u8>,
}

/// Why bytes from a device could not be decoded. Messages name sizes and rules, never values.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("payload truncated: needed {needed} bytes, got {got}")]
    Truncated { needed: usize, got: usize },
    #[error("payload too long: at most {max} bytes expected, got {got}")]
    Oversized { max: usize, got: usize },
    #[error("invalid payload: {0}")]
    Invalid(&'static str),
    #[error("no decoder for characteristic {0}")]
    UnknownCharacteristic(Uuid),
}

/// One row of the decoder table.
#[derive(Debug)]
pub struct Decoder {
    /// Name and version, recorded as the provenance of every record (`heart-rate-measurement/1`).
    pub name: &'static str,
    /// The GATT characteristic whose notifications this decoder reads.
    pub characteristic: Uuid,
    pub decode: DecodeFn,
}

/// A decoder function: the bytes of one notification and the time the bridge received it.
pub type DecodeFn = fn(&[u8], DateTime<Utc>) -> Result<Vec<Reading>, DecodeError>;

/// Every decoder the bridge knows, one row per characteristic.
pub static DECODERS: &[Decoder] = &[
    Decoder {
        name: heart_rate::NAME,
        characteristic: heart_rate::CHARACTERISTIC,
        decode: heart_rate::decode,
    },
    Decoder {
        name: battery::NAME,
        characteristic: battery::CHARACTERISTIC,
        decode: battery::decode,
    },
    Decoder {
        name: device_information::SERIAL_NUMBER_NAME,
        characteristic: device_information::SERIAL_NUMBER,
        decode: device_information::decode_serial_number,
    },
    Decoder {
        name: device_information::MANUFACTURER_NAME_NAME,
        characteristic: device_information::MANUFACTURER_NAME,
        decode: device_information::decode_manufacturer_name,
    },
    Decoder {
        name: device_information::MODEL_NUMBER_NAME,
        characteristic: device_information::MODEL_NUMBER,
        decode: device_information::decode_model_number,
    },
    Decoder {
        name: current_time::NAME,
        characteristic: current_time::CHARACTERISTIC,
        decode: current_time::decode,
    },
    Decoder {
        name: local_time::NAME,
        characteristic: local_time::CHARACTERISTIC,
        decode: local_time::decode,
    },
    Decoder {
        name: pams::NAME,
        characteristic: pams::STEP_COUNTER_ACTIVITY_SUMMARY,
        decode: pams::decode_step_counter_summary,
    },
    Decoder {
        name: pams_sleep::NAME,
        characteristic: pams_sleep::SLEEP_ACTIVITY_SUMMARY,
        decode: pams_sleep::decode_sleep_activity_summary,
    },
    Decoder {
        name: pams_session::ACTIVITY_CURRENT_SESSION_NAME,
        characteristic: pams_session::ACTIVITY_CURRENT_SESSION,
        decode: pams_session::decode_current_session,
    },
    Decoder {
        name: pams_session::SESSION_DESCRIPTOR_NAME,
        characteristic: pams_session::SESSION_DESCRIPTOR,
        decode: pams_session::decode_session_descriptor,
    },
    Decoder {
        name: sim_band::ACTIVITY_NAME,
        characteristic: sim_band::ACTIVITY,
        decode: sim_band::decode_activity,
    },
    Decoder {
        name: sim_band::SLEEP_NAME,
        characteristic: sim_band::SLEEP,
        decode: sim_band::decode_sleep,
    },
    Decoder {
        name: sim_band::STEPS_TODAY_NAME,
        characteristic: sim_band::STEPS_TODAY,
        decode: sim_band::decode_steps_today,
    },
];

/// The decoder registered for `characteristic`, if any.
pub fn decoder_for(characteristic: Uuid) -> Option<&'static Decoder> {
    DECODERS.iter().find(|d| d.characteristic == characteristic)
}

/// Decodes one notification; returns the decoder's name (for provenance) with the readings.
pub fn decode(
    characteristic: Uuid,
    bytes: &[u8],
    received_at: DateTime<Utc>,
) -> Result<(&'static str, Vec<Reading>), DecodeError> {
    let decoder =
        decoder_for(characteristic).ok_or(DecodeError::UnknownCharacteristic(characteristic))?;
    let readings = (decoder.decode)(bytes, received_at)?;
    Ok((decoder.name, readings))
}

/// A 16-bit SIG-assigned UUID on the Bluetooth base UUID `0000xxxx-0000-1000-8000-00805f9b34fb`.
pub const fn uuid16(short: u16) -> Uuid {
    Uuid::from_u128(((short as u128) << 96) | 0x0000_0000_0000_1000_8000_0080_5f9b_34fb)
}

/// Refuses a payload longer than `max` bytes.
fn at_most(bytes: &[u8], max: usize) -> Result<(), DecodeError> {
    if bytes.len() > max {
        Err(DecodeError::Oversized {
            max,
            got: bytes.len(),
        })
    } else {
        Ok(())
    }
}

/// `Truncated` for a payload that needed `needed` bytes.
fn truncated(bytes: &[u8], needed: usize) -> DecodeError {
    DecodeError::Truncated {
        needed,
        got: bytes.len(),
    }
}

/// Little-endian u16 at `at`; callers check the length first.
fn u16_le(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at + 2)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

/// Little-endian u32 at `at`; callers check the length first.
fn u32_le(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Test fixtures written as spaced hex bytes (`"16 48 00"`), as specifications print them.
#[cfg(test)]
pub(crate) fn test_hex(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).expect("hex bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid16_uses_the_bluetooth_base_uuid() {
        assert_eq!(
            uuid16(0x2A37).to_string(),
            "00002a37-0000-1000-8000-00805f9b34fb"
        );
        assert_eq!(
            uuid16(0x180D).to_string(),
            "0000180d-0000-1000-8000-00805f9b34fb"
        );
    }

    #[test]
    fn table_has_one_row_per_characteristic_and_unique_names() {
        for (i, a) in DECODERS.iter().enumerate() {
            for b in &DECODERS[i + 1..] {
                assert_ne!(
                    a.characteristic, b.characteristic,
                    "{} / {}",
                    a.name, b.name
                );
                assert_ne!(a.name, b.name);
            }
            assert!(a.name.contains('/'), "{} has no version", a.name);
            assert_eq!(decoder_for(a.characteristic).map(|d| d.name), Some(a.name));
        }
    }

    #[test]
    fn decode_dispatches_and_names_the_decoder() {
        let at = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        let (name, readings) = decode(uuid16(0x2A37), &[0x00, 72], at).unwrap();
        assert_eq!(name, "heart-rate-measurement/1");
        assert!(matches!(readings[..], [Reading::HeartRate { bpm: 72, .. }]));
        let (name, readings) = decode(uuid16(0x2A19), &[55], at).unwrap();
        assert_eq!(name, "battery-level/1");
        assert_eq!(readings, vec![Reading::Battery { at, percent: 55 }]);
        let (name, readings) = decode(uuid16(0x2A25), b"SN-1\0", at).unwrap();
        assert_eq!(name, "serial-number-string/1");
        assert_eq!(
            readings,
            vec![Reading::DeviceInfo {
                field: DeviceInfoField::Serial,
                value: "SN-1".to_owned()
            }]
        );
        let (name, _) = decode(uuid16(0x2A29), b"PHR", at).unwrap();
        assert_eq!(name, "manufacturer-name-string/1");
        let (name, _) = decode(uuid16(0x2A24), b"B1", at).unwrap();
        assert_eq!(name, "model-number-string/1");
        let clock = [0xea, 0x07, 1, 1, 9, 0, 0, 4, 0, 0];
        let (name, readings) = decode(uuid16(0x2A2B), &clock, at).unwrap();
        assert_eq!(name, "current-time/1");
        assert!(
            matches!(readings[..], [Reading::DeviceClock { received_at, .. }] if received_at == at)
        );
        let summary = pams::StepCounterSummary {
            normal_walking_steps: Some(12),
            ..Default::default()
        };
        let bytes = pams::encode_step_counter_summary(&summary).unwrap();
        let (name, readings) = decode(uuid16(0x2B40), &bytes, at).unwrap();
        assert_eq!(name, "pams-step-counter-activity-summary/1");
        assert!(matches!(
            readings[..],
            [Reading::PamsSteps { steps: 12, .. }]
        ));
        let sleep = pams_sleep::SleepActivitySummary {
            total_sleep_seconds: Some(25_200),
            ..Default::default()
        };
        let bytes = pams_sleep::encode_sleep_activity_summary(&sleep).unwrap();
        let (name, readings) = decode(uuid16(0x2B42), &bytes, at).unwrap();
        assert_eq!(name, "pams-sleep-activity-summary/1");
        assert!(matches!(
            readings[..],
            [Reading::PamsSleep(PamsSleepSummary {
                total_sleep_seconds: Some(25_200),
                ..
            })]
        ));
        let start = pams_session::SessionTime {
            at,
            offset_minutes: 0,
        };
        let current = pams_session::CurrentSession {
            running: true,
            session_id: 4,
            session_start: start,
            sub_session_id: 5,
            sub_session_start: start,
        };
        let bytes = pams_session::encode_current_session(&current).unwrap();
        let (name, readings) = decode(uuid16(0x2B44), &bytes, at).unwrap();
        assert_eq!(name, "pams-activity-current-session/1");
        assert!(matches!(
            readings[..],
            [
                Reading::PamsSession(PamsSessionTiming {
                    session_id: 4,
                    sub_session_id: None,
                    ..
                }),
                Reading::PamsSession(PamsSessionTiming {
                    sub_session_id: Some(5),
                    ..
                })
            ]
        ));
        let descriptor = pams_session::SessionDescriptor {
            session_id: 4,
            sub_session_id: None,
            start,
            end: None,
            deleted: false,
        };
        let bytes = pams_session::encode_session_descriptor(&descriptor).unwrap();
        let (name, readings) = decode(uuid16(0x2B45), &bytes, at).unwrap();
        assert_eq!(name, "pams-session-descriptor/1");
        assert_eq!(
            readings,
            vec![Reading::PamsSession(PamsSessionTiming {
                session_id: 4,
                sub_session_id: None,
                start: at,
                end: None,
                running: true,
            })]
        );
    }

    #[test]
    fn unknown_characteristic_is_a_typed_error() {
        let at = DateTime::from_timestamp(0, 0).unwrap();
        let unknown = uuid16(0x2A98);
        assert_eq!(
            decode(unknown, &[1, 2, 3], at),
            Err(DecodeError::UnknownCharacteristic(unknown))
        );
        assert!(decoder_for(unknown).is_none());
    }

    #[test]
    fn error_messages_are_clear() {
        assert_eq!(
            DecodeError::Truncated { needed: 4, got: 3 }.to_string(),
            "payload truncated: needed 4 bytes, got 3"
        );
        assert_eq!(
            DecodeError::Oversized { max: 512, got: 513 }.to_string(),
            "payload too long: at most 512 bytes expected, got 513"
        );
        assert_eq!(
            DecodeError::Invalid("battery level above 100%").to_string(),
            "invalid payload: battery level above 100%"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]
        /// Every registered decoder, any bytes: a reading or a typed error, never a panic; and
        /// whatever decodes normalises without panicking either.
        #[test]
        fn no_decoder_panics_on_any_bytes(
            which in 0usize..64,
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            secs in 0i64..4_000_000_000,
        ) {
            let d = &DECODERS[which % DECODERS.len()];
            let at = DateTime::from_timestamp(secs, 0).expect("in range");
            if let Ok((name, readings)) = decode(d.characteristic, &bytes, at) {
                let offset = chrono::FixedOffset::east_opt(9 * 3600).expect("valid");
                for r in &readings {
                    let _ = crate::normalise::normalise(r, name, "dev", "br", offset, at);
                }
            }
        }
    }
}
