//! Physical Activity Monitor Service (PAMS, 0x183E): Step Counter Activity Summary Data
//! (0x2B40). Only this characteristic, and only complete single-segment messages, are decoded;
//! see "Not implemented" below.
//!
//! # Sources, and how far each was confirmed
//! - Bluetooth SIG, *Physical Activity Monitor Service 1.0* (2020-12-15, with mandatory erratum
//!   23224), <https://www.bluetooth.com/specifications/specs/physical-activity-monitor-service-1-0>:
//!   the normative definition. Its field tables could not be read while writing this module, so
//!   the layout below is cross-checked from two independent public implementations instead.
//! - Cypress/Infineon PSoC PAMS server example (`pamScasd.h`, `pamScasd.c`): packed struct
//!   `Header u8, Flags u8, SessionID u16, SubSessionID u16, RelativeTimestamp u32,
//!   SequenceNumber u32, NormalWalkingSteps u24, IntensitySteps u24, FloorSteps u24,
//!   Distance u24, WornDuration u24`, with `ALWAYS_PRESENT_SCASD_FIELD_LENGTH = 14`.
//! - `bluetooth-sig` Python library, `step_counter_activity_summary_data.py` (later revision):
//!   the same 14-byte fixed part and the flag bits 0–4 in the field order above. An earlier
//!   revision of the same file used an unrelated layout (u16 flags, step count, distance,
//!   calories); it disagrees with every other source and is not followed.
//! - The segmentation header (bit 0 first segment, bit 1 last segment, bits 2–7 rolling segment
//!   counter) is the one the SIG uses for every segmented characteristic (GSS "Blood Pressure
//!   Record", the Generic Health Sensor and Authorization Control services); public PAMS code
//!   disagrees on it (the Cypress example writes `0x80 + n − 1`, the Python tests use `0xC0`
//!   for a complete message). A header that this module does not read as "first and last" is
//!   refused, never guessed at, so a device using another convention fails loudly.
//!
//! # Layout (complete message), little-endian
//! | offset | size | field | present when |
//! | --- | --- | --- | --- |
//! | 0 | u8 | segmentation header; bits 0 and 1 both set | always |
//! | 1 | u8 | flags | always |
//! | 2 | u16 | session id | always |
//! | 4 | u16 | sub-session id | always |
//! | 6 | u32 | relative timestamp, seconds since the session start | always |
//! | 10 | u32 | sequence number | always |
//! | 14… | u24 | normal walking steps | flags bit 0 |
//! | | u24 | intensity steps | flags bit 1 |
//! | | u24 | floor steps | flags bit 2 |
//! | | u24 | distance (unit not confirmed) | flags bit 3 |
//! | | u24 | worn duration (unit not confirmed) | flags bit 4 |
//!
//! Rules: a header without both segment bits is `Invalid("segmented PAMS messages are not
//! supported yet")`; flags bits 5–7 set is `Invalid` (they could announce fields this module does
//! not know, so nothing after them could be trusted); the value must be exactly as long as the
//! flags say (`Truncated` / `Oversized`); a step field at the uint24 maximum is `Invalid`
//! (SIG formats often use it for "not known"; unconfirmed for PAMS, so refused rather than
//! recorded as 16 777 215 steps).
//!
//! # What the decoder reports, and the bridge's contract
//! One [`Reading::PamsSteps`] per message that carries normal walking or intensity steps
//! (a message with neither, say distance only, yields no reading). `steps` is normal walking +
//! intensity steps, read as disjoint categories (as in the Activity Goal characteristic, which
//! sets separate durations for each); floor steps are reported on their own and not added,
//! because whether they overlap the other two could not be confirmed. Distance and worn
//! duration are checked for length but not reported (their units could not be confirmed).
//!
//! The timestamp is relative to the start of the session `session_id`, which the device
//! publishes in Activity Current Session (0x2B44) and its Session Descriptors (0x2B45), both
//! decoded in [`super::pams_session`]. Turning a reading into a wall-clock interval is the
//! bridge's per-device state ([`crate::device_state`]): it anchors the session's start, treats
//! `(session_id, sub_session_id, sequence)` as the identity of a summary (a repeated
//! indication is the same summary) and derives intervals from consecutive summaries of one
//! sub-session. The normaliser alone produces no record from a PAMS reading.
//!
//! # Not implemented
//! - Multi-segment messages (reassembly needs per-connection state: a segment buffer per
//!   characteristic and the rolling counter to detect a lost segment).
//! - General Activity Summary Data (0x2B3D): in the public layouts (Cypress `pamGasd.h`) it
//!   carries energy, MET, distance, speed, cadence, floors, elevation and activity levels but
//!   no step count, and none of the product's record types (steps, sleep, heart rate) comes
//!   from it; it is left undecoded rather than decoded into nothing.
//! - Sleep Activity Instantaneous Data (0x2B41): sleep stages over time; no two public sources
//!   agree on its layout. Sleep comes from the summary ([`super::pams_sleep`]).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{at_most, truncated, u16_le, u32_le, uuid16, DecodeError, Reading};

/// Decoder name and version recorded in provenance.
pub const NAME: &str = "pams-step-counter-activity-summary/1";
/// Physical Activity Monitor Service.
pub const SERVICE: Uuid = uuid16(0x183E);
/// Step Counter Activity Summary Data characteristic.
pub const STEP_COUNTER_ACTIVITY_SUMMARY: Uuid = uuid16(0x2B40);

/// Header, flags, session, sub-session, relative timestamp, sequence number.
pub const FIXED_LEN: usize = 14;
/// A complete message with every optional field.
pub const MAX_LEN: usize = FIXED_LEN + 5 * 3;

/// Segmentation header: first segment.
pub const FIRST_SEGMENT: u8 = 1 << 0;
/// Segmentation header: last segment.
pub const LAST_SEGMENT: u8 = 1 << 1;

const NORMAL_WALKING_STEPS: u8 = 1 << 0;
const INTENSITY_STEPS: u8 = 1 << 1;
const FLOOR_STEPS: u8 = 1 << 2;
const DISTANCE: u8 = 1 << 3;
const WORN_DURATION: u8 = 1 << 4;
const KNOWN_FLAGS: u8 = 0b1_1111;
const U24_MAX: u32 = 0xFF_FFFF;
/// The longest ATT attribute value; longer input is refused before anything else.
const ATT_MAX_LEN: usize = 512;

/// The fields of one complete Step Counter Activity Summary Data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepCounterSummary {
    pub session_id: u16,
    pub sub_session_id: u16,
    /// Seconds since the start of the session.
    pub relative_seconds: u32,
    pub sequence: u32,
    pub normal_walking_steps: Option<u32>,
    pub intensity_steps: Option<u32>,
    pub floor_steps: Option<u32>,
    /// Raw value; the unit could not be confirmed.
    pub distance: Option<u32>,
    /// Raw value; the unit could not be confirmed.
    pub worn_duration: Option<u32>,
}

impl StepCounterSummary {
    /// Normal walking + intensity steps, or `None` when the message carries neither.
    pub fn steps(&self) -> Option<u32> {
        match (self.normal_walking_steps, self.intensity_steps) {
            (None, None) => None,
            // Both are uint24, so the sum fits.
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        }
    }

    /// The reading the decoder reports for this summary, if it carries steps.
    pub fn reading(&self) -> Option<Reading> {
        Some(Reading::PamsSteps {
            session_id: self.session_id,
            sub_session_id: self.sub_session_id,
            relative_seconds: self.relative_seconds,
            sequence: self.sequence,
            steps: self.steps()?,
            floor_steps: self.floor_steps,
        })
    }
}

/// Decodes one Step Counter Activity Summary Data message into at most one
/// [`Reading::PamsSteps`].
pub fn decode_step_counter_summary(
    bytes: &[u8],
    _received_at: DateTime<Utc>,
) -> Result<Vec<Reading>, DecodeError> {
    Ok(parse_step_counter_summary(bytes)?
        .reading()
        .into_iter()
        .collect())
}

/// Parses one complete Step Counter Activity Summary Data message with the rules of the
/// module docs.
pub fn parse_step_counter_summary(bytes: &[u8]) -> Result<StepCounterSummary, DecodeError> {
    let p = parse_prefix(bytes, 1, u32::from(KNOWN_FLAGS), |flags| {
        FIXED_LEN + 3 * flags.count_ones() as usize
    })?;
    let (flags, session_id, sub_session_id, relative_seconds, sequence) = (
        p.flags as u8,
        p.session_id,
        p.sub_session_id,
        p.relative_seconds,
        p.sequence,
    );
    let mut at = FIXED_LEN;
    let mut field = |bit: u8| {
        (flags & bit != 0).then(|| {
            let b = &bytes[at..at + 3];
            at += 3;
            u32::from_le_bytes([b[0], b[1], b[2], 0])
        })
    };
    let summary = StepCounterSummary {
        session_id,
        sub_session_id,
        relative_seconds,
        sequence,
        normal_walking_steps: field(NORMAL_WALKING_STEPS),
        intensity_steps: field(INTENSITY_STEPS),
        floor_steps: field(FLOOR_STEPS),
        distance: field(DISTANCE),
        worn_duration: field(WORN_DURATION),
    };
    let steps = [
        summary.normal_walking_steps,
        summary.intensity_steps,
        summary.floor_steps,
    ];
    if steps.contains(&Some(U24_MAX)) {
        return Err(DecodeError::Invalid(
            "step count at the uint24 maximum (possibly \"not known\")",
        ));
    }
    Ok(summary)
}

/// What every PAMS summary message starts with, after its segmentation header and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Prefix {
    pub(super) flags: u32,
    pub(super) session_id: u16,
    pub(super) sub_session_id: u16,
    pub(super) relative_seconds: u32,
    pub(super) sequence: u32,
}

/// Checks and reads the part PAMS summary characteristics share: at most [`ATT_MAX_LEN`]
/// bytes; a segmentation header with both segment bits (else `Invalid`); `flags_len` bytes of
/// little-endian flags with no bit outside `known_flags`; session, sub-session, relative
/// timestamp and sequence number; and a total length of exactly `expected_len(flags)`.
pub(super) fn parse_prefix(
    bytes: &[u8],
    flags_len: usize,
    known_flags: u32,
    expected_len: impl Fn(u32) -> usize,
) -> Result<Prefix, DecodeError> {
    let fixed_len = 1 + flags_len + 12;
    at_most(bytes, ATT_MAX_LEN)?;
    let header = *bytes.first().ok_or(truncated(bytes, fixed_len))?;
    if header & (FIRST_SEGMENT | LAST_SEGMENT) != FIRST_SEGMENT | LAST_SEGMENT {
        return Err(DecodeError::Invalid(
            "segmented PAMS messages are not supported yet",
        ));
    }
    let raw_flags = bytes
        .get(1..1 + flags_len)
        .ok_or(truncated(bytes, fixed_len))?;
    let flags = raw_flags
        .iter()
        .rev()
        .fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
    let at = 1 + flags_len;
    let (Some(session_id), Some(sub_session_id), Some(relative_seconds), Some(sequence)) = (
        u16_le(bytes, at),
        u16_le(bytes, at + 2),
        u32_le(bytes, at + 4),
        u32_le(bytes, at + 8),
    ) else {
        return Err(truncated(bytes, fixed_len));
    };
    if flags & !known_flags != 0 {
        return Err(DecodeError::Invalid("reserved PAMS flag bits set"));
    }
    let expected = expected_len(flags);
    if bytes.len() < expected {
        return Err(truncated(bytes, expected));
    }
    if bytes.len() > expected {
        return Err(DecodeError::Oversized {
            max: expected,
            got: bytes.len(),
        });
    }
    Ok(Prefix {
        flags,
        session_id,
        sub_session_id,
        relative_seconds,
        sequence,
    })
}

/// Encodes a summary as one complete single-segment message (rolling counter 0), the way a
/// device would (used by the emulator and tests). `None` if a value does not fit its uint24.
pub fn encode_step_counter_summary(summary: &StepCounterSummary) -> Option<Vec<u8>> {
    encode_with_counter(summary, 0)
}

/// As [`encode_step_counter_summary`] with the rolling segment counter `counter` (0–63) in the
/// header. `None` if the counter or a value does not fit.
pub fn encode_with_counter(summary: &StepCounterSummary, counter: u8) -> Option<Vec<u8>> {
    if counter > 63 {
        return None;
    }
    let optional = [
        (NORMAL_WALKING_STEPS, summary.normal_walking_steps),
        (INTENSITY_STEPS, summary.intensity_steps),
        (FLOOR_STEPS, summary.floor_steps),
        (DISTANCE, summary.distance),
        (WORN_DURATION, summary.worn_duration),
    ];
    let mut out = Vec::with_capacity(MAX_LEN);
    out.push(FIRST_SEGMENT | LAST_SEGMENT | (counter << 2));
    out.push(0);
    out.extend_from_slice(&summary.session_id.to_le_bytes());
    out.extend_from_slice(&summary.sub_session_id.to_le_bytes());
    out.extend_from_slice(&summary.relative_seconds.to_le_bytes());
    out.extend_from_slice(&summary.sequence.to_le_bytes());
    for (bit, value) in optional {
        if let Some(v) = value {
            if v > U24_MAX {
                return None;
            }
            out[1] |= bit;
            out.extend_from_slice(&v.to_le_bytes()[..3]);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_hex as hex;
    use proptest::prelude::*;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600, 0).unwrap()
    }

    /// Session 0x0102, sub-session 3, 3600 s into the session, sequence 7.
    const FIXED: &str = "0201 0300 100e0000 07000000";

    fn base() -> StepCounterSummary {
        StepCounterSummary {
            session_id: 0x0102,
            sub_session_id: 3,
            relative_seconds: 3600,
            sequence: 7,
            ..StepCounterSummary::default()
        }
    }

    fn spaced(s: &str) -> Vec<u8> {
        let digits: String = s.split_whitespace().collect();
        hex(&digits
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(" "))
    }

    #[test]
    fn hand_written_fixtures() {
        // Header 03 (first + last, counter 0), flags 01: 1000 normal walking steps.
        let bytes = spaced(&format!("03 01 {FIXED} e80300"));
        let want = StepCounterSummary {
            normal_walking_steps: Some(1000),
            ..base()
        };
        assert_eq!(parse_step_counter_summary(&bytes), Ok(want));
        assert_eq!(
            decode_step_counter_summary(&bytes, at()),
            Ok(vec![Reading::PamsSteps {
                session_id: 0x0102,
                sub_session_id: 3,
                relative_seconds: 3600,
                sequence: 7,
                steps: 1000,
                floor_steps: None,
            }])
        );

        // Counter 5 (header 0x17), everything present: 1000 + 200 steps, 30 floor steps,
        // distance 0x012345, worn duration 0x00abcd.
        let bytes = spaced(&format!("17 1f {FIXED} e80300 c80000 1e0000 452301 cdab00"));
        let summary = parse_step_counter_summary(&bytes).unwrap();
        assert_eq!(
            summary,
            StepCounterSummary {
                normal_walking_steps: Some(1000),
                intensity_steps: Some(200),
                floor_steps: Some(30),
                distance: Some(0x01_2345),
                worn_duration: Some(0xab_cd),
                ..base()
            }
        );
        assert_eq!(summary.steps(), Some(1200));
        assert_eq!(
            decode_step_counter_summary(&bytes, at()),
            Ok(vec![Reading::PamsSteps {
                session_id: 0x0102,
                sub_session_id: 3,
                relative_seconds: 3600,
                sequence: 7,
                steps: 1200,
                floor_steps: Some(30),
            }])
        );

        // Intensity steps only (flags 02).
        let bytes = spaced(&format!("03 02 {FIXED} 640000"));
        assert_eq!(
            parse_step_counter_summary(&bytes).unwrap().steps(),
            Some(100)
        );

        // No step fields: a valid message that yields no reading.
        let bytes = spaced(&format!("03 00 {FIXED}"));
        assert_eq!(parse_step_counter_summary(&bytes), Ok(base()));
        assert_eq!(decode_step_counter_summary(&bytes, at()), Ok(vec![]));
        let bytes = spaced(&format!("03 1c {FIXED} 010000 020000 030000"));
        assert_eq!(decode_step_counter_summary(&bytes, at()), Ok(vec![]));
    }

    #[test]
    fn every_flag_combination() {
        for flags in 0u8..32 {
            let pick = |bit: u8, v: u32| (flags & bit != 0).then_some(v);
            let summary = StepCounterSummary {
                normal_walking_steps: pick(NORMAL_WALKING_STEPS, 0x01_0203),
                intensity_steps: pick(INTENSITY_STEPS, 0x04_0506),
                floor_steps: pick(FLOOR_STEPS, 0x07_0809),
                distance: pick(DISTANCE, 0x0a_0b0c),
                worn_duration: pick(WORN_DURATION, 0xfe_fefe),
                ..base()
            };
            let bytes = encode_step_counter_summary(&summary).unwrap();
            assert_eq!(bytes[0], 0x03);
            assert_eq!(bytes[1], flags);
            assert_eq!(bytes.len(), FIXED_LEN + 3 * flags.count_ones() as usize);
            // The optional fields follow in flag order, little-endian.
            let tails: [&[u8]; 5] = [
                &[0x03, 0x02, 0x01],
                &[0x06, 0x05, 0x04],
                &[0x09, 0x08, 0x07],
                &[0x0c, 0x0b, 0x0a],
                &[0xfe, 0xfe, 0xfe],
            ];
            let want_tail: Vec<u8> = (0..5)
                .filter(|i| flags & (1 << i) != 0)
                .flat_map(|i| tails[i].iter().copied())
                .collect();
            assert_eq!(&bytes[FIXED_LEN..], &want_tail[..], "flags {flags:#04x}");
            assert_eq!(
                parse_step_counter_summary(&bytes),
                Ok(summary),
                "{flags:#04x}"
            );
            let readings = decode_step_counter_summary(&bytes, at()).unwrap();
            let steps = match (summary.normal_walking_steps, summary.intensity_steps) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
            };
            assert_eq!(readings.len(), usize::from(steps.is_some()), "{flags:#04x}");
        }
    }

    #[test]
    fn segmented_messages_are_refused() {
        let complete = encode_step_counter_summary(&StepCounterSummary {
            normal_walking_steps: Some(5),
            ..base()
        })
        .unwrap();
        // First only, last only, middle (counter 1), and the 0xC0 / 0x80 conventions of other
        // public implementations.
        for header in [0x01, 0x02, 0x04, 0x00, 0xc0, 0x80] {
            let mut bytes = complete.clone();
            bytes[0] = header;
            assert_eq!(
                parse_step_counter_summary(&bytes),
                Err(DecodeError::Invalid(
                    "segmented PAMS messages are not supported yet"
                )),
                "{header:#04x}"
            );
            // Also when the segment is short.
            assert_eq!(
                parse_step_counter_summary(&bytes[..3]),
                Err(DecodeError::Invalid(
                    "segmented PAMS messages are not supported yet"
                ))
            );
        }
        // Any rolling counter is accepted on a complete message.
        for counter in [1, 42, 63] {
            let bytes = encode_with_counter(
                &StepCounterSummary {
                    normal_walking_steps: Some(5),
                    ..base()
                },
                counter,
            )
            .unwrap();
            assert_eq!(bytes[0] >> 2, counter);
            assert!(parse_step_counter_summary(&bytes).is_ok());
        }
        assert_eq!(encode_with_counter(&base(), 64), None);
    }

    #[test]
    fn wrong_lengths_and_reserved_bits_are_refused() {
        assert_eq!(
            parse_step_counter_summary(&[]),
            Err(DecodeError::Truncated { needed: 14, got: 0 })
        );
        let full = spaced(&format!("03 03 {FIXED} e80300 c80000"));
        for len in 1..FIXED_LEN {
            assert_eq!(
                parse_step_counter_summary(&full[..len]),
                Err(DecodeError::Truncated {
                    needed: 14,
                    got: len
                }),
                "{len}"
            );
        }
        for len in FIXED_LEN..full.len() {
            assert_eq!(
                parse_step_counter_summary(&full[..len]),
                Err(DecodeError::Truncated {
                    needed: 20,
                    got: len
                }),
                "{len}"
            );
        }
        let mut long = full.clone();
        long.push(0);
        assert_eq!(
            parse_step_counter_summary(&long),
            Err(DecodeError::Oversized { max: 20, got: 21 })
        );
        let mut huge = full.clone();
        huge.resize(513, 0);
        assert_eq!(
            parse_step_counter_summary(&huge),
            Err(DecodeError::Oversized { max: 512, got: 513 })
        );
        for reserved in [0x20, 0x40, 0x80] {
            let mut bytes = spaced(&format!("03 01 {FIXED} e80300"));
            bytes[1] |= reserved;
            assert_eq!(
                parse_step_counter_summary(&bytes),
                Err(DecodeError::Invalid("reserved PAMS flag bits set"))
            );
        }
    }

    #[test]
    fn steps_at_the_uint24_maximum_are_refused() {
        for flags in ["01", "02", "04"] {
            let bytes = spaced(&format!("03 {flags} {FIXED} ffffff"));
            assert!(
                matches!(
                    parse_step_counter_summary(&bytes),
                    Err(DecodeError::Invalid(_))
                ),
                "{flags}"
            );
        }
        // Distance and worn duration are not step counts: their maximum passes through.
        let bytes = spaced(&format!("03 18 {FIXED} ffffff ffffff"));
        assert!(parse_step_counter_summary(&bytes).is_ok());
        assert_eq!(
            encode_step_counter_summary(&StepCounterSummary {
                floor_steps: Some(0x100_0000),
                ..base()
            }),
            None
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_step_counter_summary(&bytes, at());
        }

        #[test]
        fn complete_headers_with_arbitrary_bodies_never_panic(
            counter in 0u8..64,
            body in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut bytes = vec![0x03 | (counter << 2)];
            bytes.extend(body);
            let _ = decode_step_counter_summary(&bytes, at());
        }

        #[test]
        fn encode_then_parse_round_trips(
            session_id in any::<u16>(),
            sub_session_id in any::<u16>(),
            relative_seconds in any::<u32>(),
            sequence in any::<u32>(),
            normal in prop::option::of(0u32..U24_MAX),
            intensity in prop::option::of(0u32..U24_MAX),
            floor in prop::option::of(0u32..U24_MAX),
            distance in prop::option::of(0u32..=U24_MAX),
            worn in prop::option::of(0u32..=U24_MAX),
        ) {
            let summary = StepCounterSummary {
                session_id,
                sub_session_id,
                relative_seconds,
                sequence,
                normal_walking_steps: normal,
                intensity_steps: intensity,
                floor_steps: floor,
                distance,
                worn_duration: worn,
            };
            let bytes = encode_step_counter_summary(&summary).unwrap();
            prop_assert!(bytes.len() <= MAX_LEN);
            prop_assert_eq!(parse_step_counter_summary(&bytes), Ok(summary));
        }
    }
}
