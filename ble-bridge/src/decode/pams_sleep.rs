//! Physical Activity Monitor Service (PAMS, 0x183E): Sleep Activity Summary Data (0x2B42).
//! Only complete single-segment messages are decoded, as in [`super::pams`].
//!
//! # Sources, and how far each was confirmed
//! - Bluetooth SIG, *Physical Activity Monitor Service 1.0*: the normative definition. Its field
//!   tables could not be read while writing this module; the layout below is cross-checked from
//!   three independent public implementations, which agree on field order and sizes:
//! - Cypress/Infineon PSoC PAMS server example (`pamSasd.h`): packed struct `Header u8,
//!   Flags[3], SessionID u16, SubSessionID u16, RelativeTimestamp u32, SequenceNumber u32`, then
//!   the optional fields in the order of the table below, with
//!   `ALWAYS_PRESENT_SASD_FIELD_LENGTH = 16`.
//! - Philips "haraldlib" Android client (`HBPhysicalActivityMonitorSasd.java`): the same layout
//!   after stripping the segmentation header.
//! - `bluetooth-sig` Python library (`sleep_activity_summary_data.py`): the flag bits of the
//!   specification's Table 3.20 (bits 0–19 as below, bits 20–23 reserved).
//! - The segmentation header is handled exactly as in [`super::pams`] (see its sources).
//!
//! # Layout (complete message), little-endian
//! | offset | size | field | present when |
//! | --- | --- | --- | --- |
//! | 0 | u8 | segmentation header; bits 0 and 1 both set | always |
//! | 1 | u24 | flags | always |
//! | 4 | u16 | session id | always |
//! | 6 | u16 | sub-session id | always |
//! | 8 | u32 | relative timestamp, seconds since the session start | always |
//! | 12 | u32 | sequence number | always |
//! | 16… | u24 | total sleep time | flags bit 0 |
//! | | u24 | total wake time | flags bit 1 |
//! | | u24 | total bed time | flags bit 2 |
//! | | u16 | number of awakenings | flags bit 3 |
//! | | u16 | sleep latency | flags bit 4 |
//! | | u8 | sleep efficiency | flags bit 5 |
//! | | u16 | snooze time | flags bit 6 |
//! | | u16 | number of toss-and-turn events | flags bit 7 |
//! | | u24 | time of awakening after alarm | flags bit 8 |
//! | | u24 | minimum, maximum, average visible light level | flags bits 9, 10, 11 |
//! | | u24 | minimum, maximum, average UV light level | flags bits 12, 13, 14 |
//! | | u24 | minimum, maximum, average IR light level | flags bits 15, 16, 17 |
//! | | u8 | average sleeping heart rate | flags bit 18 |
//! | | u24 | worn duration | flags bit 19 |
//!
//! # Units: an assumption
//! No source confirms the units. The bridge reads every duration (total sleep, wake and bed
//! time, sleep latency, snooze time, time of awakening after alarm, worn duration) as seconds,
//! sleep efficiency as a percentage and the average sleeping heart rate as beats per minute;
//! light levels are kept raw. A device that uses other units (minutes, say) is caught only by
//! the sanity rules below, and only when its values happen to break them.
//!
//! # Rules
//! - Longer than 512 bytes (the longest ATT value): `Oversized`, before anything else.
//! - A header without both segment bits: `Invalid("segmented PAMS messages are not supported
//!   yet")`.
//! - Flags bits 20–23 set: `Invalid` (they could announce fields this module does not know).
//! - The value must be exactly as long as the flags say (`Truncated` / `Oversized`).
//! - A uint24 duration at its maximum (0xFFFFFF, possibly "not known"): `Invalid`. The uint16
//!   durations (latency, snooze) and the light levels pass through at their maximum.
//! - Sleep efficiency above 100: `Invalid`.
//! - Total sleep time longer than total bed time, when both are present: `Invalid`.
//!
//! # What the decoder reports
//! One [`Reading::PamsSleep`] per message that carries total sleep time or total bed time,
//! with the fields [`PamsSleepSummary`] has; a message with neither yields no reading. Like
//! [`Reading::PamsSteps`] it is timed relative to the start of its session, and becomes a
//! record only through the bridge's per-device session state (see [`super::pams`] and
//! [`super::pams_session`]).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::pams::{FIRST_SEGMENT, LAST_SEGMENT};
use super::{truncated, uuid16, DecodeError, PamsSleepSummary, Reading};

/// Decoder name and version recorded in provenance.
pub const NAME: &str = "pams-sleep-activity-summary/1";
/// Sleep Activity Summary Data characteristic (Physical Activity Monitor Service, 0x183E).
pub const SLEEP_ACTIVITY_SUMMARY: Uuid = uuid16(0x2B42);

/// Header, flags, session, sub-session, relative timestamp, sequence number.
pub const FIXED_LEN: usize = 16;
/// A complete message with every optional field.
pub const MAX_LEN: usize = FIXED_LEN + FIELD_SIZES_SUM;

const TOTAL_SLEEP: u32 = 1 << 0;
const TOTAL_WAKE: u32 = 1 << 1;
const TOTAL_BED: u32 = 1 << 2;
const AWAKENINGS: u32 = 1 << 3;
const LATENCY: u32 = 1 << 4;
const EFFICIENCY: u32 = 1 << 5;
const SNOOZE: u32 = 1 << 6;
const TOSS_TURN: u32 = 1 << 7;
const AWAKENING_AFTER_ALARM: u32 = 1 << 8;
const VISIBLE_MIN: u32 = 1 << 9;
const VISIBLE_MAX: u32 = 1 << 10;
const VISIBLE_AVG: u32 = 1 << 11;
const UV_MIN: u32 = 1 << 12;
const UV_MAX: u32 = 1 << 13;
const UV_AVG: u32 = 1 << 14;
const IR_MIN: u32 = 1 << 15;
const IR_MAX: u32 = 1 << 16;
const IR_AVG: u32 = 1 << 17;
const HEART_RATE: u32 = 1 << 18;
const WORN_DURATION: u32 = 1 << 19;
const KNOWN_FLAGS: u32 = (1 << 20) - 1;

/// Size in bytes of the optional field announced by flag bit `i`, in flag order.
const FIELD_SIZES: [usize; 20] = [3, 3, 3, 2, 2, 1, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 1, 3];
const FIELD_SIZES_SUM: usize = 52;
const U24_MAX: u32 = 0xFF_FFFF;

/// The fields of one complete Sleep Activity Summary Data message. Units as the module docs
/// assume them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SleepActivitySummary {
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
    pub snooze_seconds: Option<u16>,
    pub toss_turn_events: Option<u16>,
    pub awakening_after_alarm_seconds: Option<u32>,
    /// Raw; unit not confirmed.
    pub visible_light_min: Option<u32>,
    /// Raw; unit not confirmed.
    pub visible_light_max: Option<u32>,
    /// Raw; unit not confirmed.
    pub visible_light_avg: Option<u32>,
    /// Raw; unit not confirmed.
    pub uv_light_min: Option<u32>,
    /// Raw; unit not confirmed.
    pub uv_light_max: Option<u32>,
    /// Raw; unit not confirmed.
    pub uv_light_avg: Option<u32>,
    /// Raw; unit not confirmed.
    pub ir_light_min: Option<u32>,
    /// Raw; unit not confirmed.
    pub ir_light_max: Option<u32>,
    /// Raw; unit not confirmed.
    pub ir_light_avg: Option<u32>,
    /// Beats per minute (assumed).
    pub average_sleeping_heart_rate: Option<u8>,
    pub worn_duration_seconds: Option<u32>,
}

impl SleepActivitySummary {
    /// The reading the decoder reports for this summary, if it carries total sleep or total
    /// bed time.
    pub fn reading(&self) -> Option<Reading> {
        if self.total_sleep_seconds.is_none() && self.total_bed_seconds.is_none() {
            return None;
        }
        Some(Reading::PamsSleep(PamsSleepSummary {
            session_id: self.session_id,
            sub_session_id: self.sub_session_id,
            relative_seconds: self.relative_seconds,
            sequence: self.sequence,
            total_sleep_seconds: self.total_sleep_seconds,
            total_wake_seconds: self.total_wake_seconds,
            total_bed_seconds: self.total_bed_seconds,
            awakenings: self.awakenings,
            latency_seconds: self.latency_seconds,
            efficiency_percent: self.efficiency_percent,
        }))
    }
}

/// Decodes one Sleep Activity Summary Data message into at most one [`Reading::PamsSleep`].
pub fn decode_sleep_activity_summary(
    bytes: &[u8],
    _received_at: DateTime<Utc>,
) -> Result<Vec<Reading>, DecodeError> {
    Ok(parse_sleep_activity_summary(bytes)?
        .reading()
        .into_iter()
        .collect())
}

/// The optional fields of a message whose length was checked against its flags.
struct Fields<'a> {
    bytes: &'a [u8],
    flags: u32,
    at: usize,
}

impl Fields<'_> {
    /// The field announced by `bit`, `size` bytes little-endian, if the flags announce it.
    fn take(&mut self, bit: u32, size: usize) -> Result<Option<u32>, DecodeError> {
        if self.flags & bit == 0 {
            return Ok(None);
        }
        let b = self
            .bytes
            .get(self.at..self.at + size)
            .ok_or(truncated(self.bytes, self.at + size))?;
        self.at += size;
        let mut le = [0u8; 4];
        le[..size].copy_from_slice(b);
        Ok(Some(u32::from_le_bytes(le)))
    }

    fn u8(&mut self, bit: u32) -> Result<Option<u8>, DecodeError> {
        Ok(self.take(bit, 1)?.map(|v| v.to_le_bytes()[0]))
    }

    fn u16(&mut self, bit: u32) -> Result<Option<u16>, DecodeError> {
        Ok(self.take(bit, 2)?.map(|v| {
            let b = v.to_le_bytes();
            u16::from_le_bytes([b[0], b[1]])
        }))
    }

    fn u24(&mut self, bit: u32) -> Result<Option<u32>, DecodeError> {
        self.take(bit, 3)
    }
}

/// The length a complete message with `flags` (known bits only) must have.
fn expected_len(flags: u32) -> usize {
    FIXED_LEN
        + FIELD_SIZES
            .iter()
            .enumerate()
            .filter(|(i, _)| flags & (1 << i) != 0)
            .map(|(_, size)| size)
            .sum::<usize>()
}

/// Parses one complete Sleep Activity Summary Data message with the rules of the module docs.
pub fn parse_sleep_activity_summary(bytes: &[u8]) -> Result<SleepActivitySummary, DecodeError> {
    let p = super::pams::parse_prefix(bytes, 3, KNOWN_FLAGS, expected_len)?;
    let (flags, session_id, sub_session_id, relative_seconds, sequence) = (
        p.flags,
        p.session_id,
        p.sub_session_id,
        p.relative_seconds,
        p.sequence,
    );
    let mut f = Fields {
        bytes,
        flags,
        at: FIXED_LEN,
    };
    let summary = SleepActivitySummary {
        session_id,
        sub_session_id,
        relative_seconds,
        sequence,
        total_sleep_seconds: f.u24(TOTAL_SLEEP)?,
        total_wake_seconds: f.u24(TOTAL_WAKE)?,
        total_bed_seconds: f.u24(TOTAL_BED)?,
        awakenings: f.u16(AWAKENINGS)?,
        latency_seconds: f.u16(LATENCY)?,
        efficiency_percent: f.u8(EFFICIENCY)?,
        snooze_seconds: f.u16(SNOOZE)?,
        toss_turn_events: f.u16(TOSS_TURN)?,
        awakening_after_alarm_seconds: f.u24(AWAKENING_AFTER_ALARM)?,
        visible_light_min: f.u24(VISIBLE_MIN)?,
        visible_light_max: f.u24(VISIBLE_MAX)?,
        visible_light_avg: f.u24(VISIBLE_AVG)?,
        uv_light_min: f.u24(UV_MIN)?,
        uv_light_max: f.u24(UV_MAX)?,
        uv_light_avg: f.u24(UV_AVG)?,
        ir_light_min: f.u24(IR_MIN)?,
        ir_light_max: f.u24(IR_MAX)?,
        ir_light_avg: f.u24(IR_AVG)?,
        average_sleeping_heart_rate: f.u8(HEART_RATE)?,
        worn_duration_seconds: f.u24(WORN_DURATION)?,
    };
    let durations = [
        summary.total_sleep_seconds,
        summary.total_wake_seconds,
        summary.total_bed_seconds,
        summary.awakening_after_alarm_seconds,
        summary.worn_duration_seconds,
    ];
    if durations.contains(&Some(U24_MAX)) {
        return Err(DecodeError::Invalid(
            "duration at the uint24 maximum (possibly \"not known\")",
        ));
    }
    if summary.efficiency_percent.is_some_and(|e| e > 100) {
        return Err(DecodeError::Invalid("sleep efficiency above 100%"));
    }
    if let (Some(sleep), Some(bed)) = (summary.total_sleep_seconds, summary.total_bed_seconds) {
        if sleep > bed {
            return Err(DecodeError::Invalid(
                "total sleep time longer than total bed time",
            ));
        }
    }
    Ok(summary)
}

/// Encodes a summary as one complete single-segment message (header 0x03), the way a device
/// would (used by the emulator and tests). The sanity rules are not applied, so tests can build
/// messages the parser refuses. `None` if a value does not fit its uint24.
pub fn encode_sleep_activity_summary(summary: &SleepActivitySummary) -> Option<Vec<u8>> {
    let s = summary;
    let wide = |v: Option<u16>| v.map(u32::from);
    let byte = |v: Option<u8>| v.map(u32::from);
    // (flag, value, size) in flag order.
    let optional = [
        (TOTAL_SLEEP, s.total_sleep_seconds, 3),
        (TOTAL_WAKE, s.total_wake_seconds, 3),
        (TOTAL_BED, s.total_bed_seconds, 3),
        (AWAKENINGS, wide(s.awakenings), 2),
        (LATENCY, wide(s.latency_seconds), 2),
        (EFFICIENCY, byte(s.efficiency_percent), 1),
        (SNOOZE, wide(s.snooze_seconds), 2),
        (TOSS_TURN, wide(s.toss_turn_events), 2),
        (AWAKENING_AFTER_ALARM, s.awakening_after_alarm_seconds, 3),
        (VISIBLE_MIN, s.visible_light_min, 3),
        (VISIBLE_MAX, s.visible_light_max, 3),
        (VISIBLE_AVG, s.visible_light_avg, 3),
        (UV_MIN, s.uv_light_min, 3),
        (UV_MAX, s.uv_light_max, 3),
        (UV_AVG, s.uv_light_avg, 3),
        (IR_MIN, s.ir_light_min, 3),
        (IR_MAX, s.ir_light_max, 3),
        (IR_AVG, s.ir_light_avg, 3),
        (HEART_RATE, byte(s.average_sleeping_heart_rate), 1),
        (WORN_DURATION, s.worn_duration_seconds, 3),
    ];
    let mut flags = 0u32;
    let mut tail = Vec::with_capacity(FIELD_SIZES_SUM);
    for (bit, value, size) in optional {
        if let Some(v) = value {
            if v > U24_MAX {
                return None;
            }
            flags |= bit;
            tail.extend_from_slice(&v.to_le_bytes()[..size]);
        }
    }
    let mut out = Vec::with_capacity(FIXED_LEN + tail.len());
    out.push(FIRST_SEGMENT | LAST_SEGMENT);
    out.extend_from_slice(&flags.to_le_bytes()[..3]);
    out.extend_from_slice(&s.session_id.to_le_bytes());
    out.extend_from_slice(&s.sub_session_id.to_le_bytes());
    out.extend_from_slice(&s.relative_seconds.to_le_bytes());
    out.extend_from_slice(&s.sequence.to_le_bytes());
    out.extend(tail);
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
    const FIXED: &str = "02 01 03 00 10 0e 00 00 07 00 00 00";

    fn base() -> SleepActivitySummary {
        SleepActivitySummary {
            session_id: 0x0102,
            sub_session_id: 3,
            relative_seconds: 3600,
            sequence: 7,
            ..SleepActivitySummary::default()
        }
    }

    /// A message with every field present and plausible values.
    fn everything() -> SleepActivitySummary {
        SleepActivitySummary {
            total_sleep_seconds: Some(25_200),
            total_wake_seconds: Some(1_800),
            total_bed_seconds: Some(27_000),
            awakenings: Some(3),
            latency_seconds: Some(900),
            efficiency_percent: Some(93),
            snooze_seconds: Some(300),
            toss_turn_events: Some(41),
            awakening_after_alarm_seconds: Some(120),
            visible_light_min: Some(1),
            visible_light_max: Some(2),
            visible_light_avg: Some(3),
            uv_light_min: Some(4),
            uv_light_max: Some(5),
            uv_light_avg: Some(6),
            ir_light_min: Some(7),
            ir_light_max: Some(8),
            ir_light_avg: Some(9),
            average_sleeping_heart_rate: Some(54),
            worn_duration_seconds: Some(30_000),
            ..base()
        }
    }

    fn message(flags: &str, tail: &str) -> Vec<u8> {
        hex(&format!("03 {flags} {FIXED} {tail}"))
    }

    #[test]
    fn hand_written_fixtures() {
        // Flags 3f 00 00: total sleep 25200 s (7 h), wake 1800 s, bed 27000 s, 3 awakenings,
        // latency 900 s, efficiency 93 %.
        let bytes = message("3f 00 00", "70 62 00 08 07 00 78 69 00 03 00 84 03 5d");
        let want = SleepActivitySummary {
            total_sleep_seconds: Some(25_200),
            total_wake_seconds: Some(1_800),
            total_bed_seconds: Some(27_000),
            awakenings: Some(3),
            latency_seconds: Some(900),
            efficiency_percent: Some(93),
            ..base()
        };
        assert_eq!(parse_sleep_activity_summary(&bytes), Ok(want));
        assert_eq!(
            decode_sleep_activity_summary(&bytes, at()),
            Ok(vec![Reading::PamsSleep(PamsSleepSummary {
                session_id: 0x0102,
                sub_session_id: 3,
                relative_seconds: 3600,
                sequence: 7,
                total_sleep_seconds: Some(25_200),
                total_wake_seconds: Some(1_800),
                total_bed_seconds: Some(27_000),
                awakenings: Some(3),
                latency_seconds: Some(900),
                efficiency_percent: Some(93),
            })])
        );

        // Every field (flags ff ff 0f): the values of `everything()` in flag order.
        let bytes = message(
            "ff ff 0f",
            "70 62 00  08 07 00  78 69 00  03 00  84 03  5d  2c 01  29 00  78 00 00 \
             01 00 00  02 00 00  03 00 00  04 00 00  05 00 00  06 00 00 \
             07 00 00  08 00 00  09 00 00  36  30 75 00",
        );
        assert_eq!(bytes.len(), MAX_LEN);
        assert_eq!(parse_sleep_activity_summary(&bytes), Ok(everything()));
        assert_eq!(encode_sleep_activity_summary(&everything()), Some(bytes));

        // Total bed time only (flags 04 00 00): a reading with no sleep total.
        let bytes = message("04 00 00", "78 69 00");
        assert_eq!(
            decode_sleep_activity_summary(&bytes, at()),
            Ok(vec![Reading::PamsSleep(PamsSleepSummary {
                session_id: 0x0102,
                sub_session_id: 3,
                relative_seconds: 3600,
                sequence: 7,
                total_bed_seconds: Some(27_000),
                ..PamsSleepSummary::default()
            })])
        );

        // Worn duration and heart rate only (flags 00 00 0c): valid, but no reading.
        let bytes = message("00 00 0c", "36 30 75 00");
        assert_eq!(
            parse_sleep_activity_summary(&bytes),
            Ok(SleepActivitySummary {
                average_sleeping_heart_rate: Some(54),
                worn_duration_seconds: Some(30_000),
                ..base()
            })
        );
        assert_eq!(decode_sleep_activity_summary(&bytes, at()), Ok(vec![]));

        // No optional fields at all.
        let bytes = message("00 00 00", "");
        assert_eq!(parse_sleep_activity_summary(&bytes), Ok(base()));
        assert_eq!(decode_sleep_activity_summary(&bytes, at()), Ok(vec![]));
    }

    #[test]
    fn every_combination_of_the_first_six_flags() {
        // Each field's bytes as they must appear, in flag order.
        let tails: [&[u8]; 6] = [
            &[0x03, 0x02, 0x01],
            &[0x06, 0x05, 0x04],
            &[0x09, 0x08, 0x07],
            &[0x0b, 0x0a],
            &[0x0d, 0x0c],
            &[0x64],
        ];
        for flags in 0u32..64 {
            let pick = |bit: u32, v: u32| (flags & bit != 0).then_some(v);
            let summary = SleepActivitySummary {
                total_sleep_seconds: pick(TOTAL_SLEEP, 0x01_0203),
                total_wake_seconds: pick(TOTAL_WAKE, 0x04_0506),
                total_bed_seconds: pick(TOTAL_BED, 0x07_0809),
                awakenings: (flags & AWAKENINGS != 0).then_some(0x0a0b),
                latency_seconds: (flags & LATENCY != 0).then_some(0x0c0d),
                efficiency_percent: (flags & EFFICIENCY != 0).then_some(100),
                ..base()
            };
            let bytes = encode_sleep_activity_summary(&summary).unwrap();
            assert_eq!(bytes[0], 0x03);
            assert_eq!(&bytes[1..4], &[flags as u8, 0, 0]);
            let want_tail: Vec<u8> = (0..6)
                .filter(|i| flags & (1 << i) != 0)
                .flat_map(|i| tails[i].iter().copied())
                .collect();
            assert_eq!(&bytes[FIXED_LEN..], &want_tail[..], "flags {flags:#04x}");
            assert_eq!(bytes.len(), expected_len(flags));
            assert_eq!(
                parse_sleep_activity_summary(&bytes),
                Ok(summary),
                "{flags:#04x}"
            );
            let readings = decode_sleep_activity_summary(&bytes, at()).unwrap();
            let carries_totals = flags & (TOTAL_SLEEP | TOTAL_BED) != 0;
            assert_eq!(readings.len(), usize::from(carries_totals), "{flags:#04x}");
            if let [Reading::PamsSleep(r)] = &readings[..] {
                assert_eq!(r.total_sleep_seconds, summary.total_sleep_seconds);
                assert_eq!(r.total_wake_seconds, summary.total_wake_seconds);
                assert_eq!(r.total_bed_seconds, summary.total_bed_seconds);
                assert_eq!(r.awakenings, summary.awakenings);
                assert_eq!(r.latency_seconds, summary.latency_seconds);
                assert_eq!(r.efficiency_percent, summary.efficiency_percent);
            }
        }
    }

    #[test]
    fn all_twenty_fields_and_each_alone() {
        let bytes = encode_sleep_activity_summary(&everything()).unwrap();
        assert_eq!(&bytes[1..4], &[0xff, 0xff, 0x0f]);
        assert_eq!(bytes.len(), MAX_LEN);
        assert_eq!(parse_sleep_activity_summary(&bytes), Ok(everything()));
        // Each flag alone announces exactly its field's size.
        for (i, size) in FIELD_SIZES.iter().enumerate() {
            let flags = 1u32 << i;
            let mut bytes = hex(&format!("03 00 00 00 {FIXED}"));
            bytes[1..4].copy_from_slice(&flags.to_le_bytes()[..3]);
            bytes.extend(vec![0x01; *size]);
            assert!(parse_sleep_activity_summary(&bytes).is_ok(), "bit {i}");
            bytes.pop();
            assert_eq!(
                parse_sleep_activity_summary(&bytes),
                Err(DecodeError::Truncated {
                    needed: FIXED_LEN + size,
                    got: FIXED_LEN + size - 1
                }),
                "bit {i}"
            );
        }
        assert_eq!(FIELD_SIZES.iter().sum::<usize>(), FIELD_SIZES_SUM);
    }

    #[test]
    fn segmented_messages_are_refused() {
        let complete = encode_sleep_activity_summary(&everything()).unwrap();
        for header in [0x01, 0x02, 0x04, 0x00, 0xc0, 0x80] {
            let mut bytes = complete.clone();
            bytes[0] = header;
            for len in [bytes.len(), 3, 1] {
                assert_eq!(
                    parse_sleep_activity_summary(&bytes[..len]),
                    Err(DecodeError::Invalid(
                        "segmented PAMS messages are not supported yet"
                    )),
                    "{header:#04x} {len}"
                );
            }
        }
        // Any rolling counter is accepted on a complete message.
        for counter in [1u8, 42, 63] {
            let mut bytes = complete.clone();
            bytes[0] = 0x03 | (counter << 2);
            assert_eq!(parse_sleep_activity_summary(&bytes), Ok(everything()));
        }
    }

    #[test]
    fn wrong_lengths_and_reserved_bits_are_refused() {
        assert_eq!(
            parse_sleep_activity_summary(&[]),
            Err(DecodeError::Truncated { needed: 16, got: 0 })
        );
        let full = encode_sleep_activity_summary(&everything()).unwrap();
        for len in 1..FIXED_LEN {
            assert_eq!(
                parse_sleep_activity_summary(&full[..len]),
                Err(DecodeError::Truncated {
                    needed: 16,
                    got: len
                }),
                "{len}"
            );
        }
        for len in FIXED_LEN..full.len() {
            assert_eq!(
                parse_sleep_activity_summary(&full[..len]),
                Err(DecodeError::Truncated {
                    needed: MAX_LEN,
                    got: len
                }),
                "{len}"
            );
        }
        let mut long = full.clone();
        long.push(0);
        assert_eq!(
            parse_sleep_activity_summary(&long),
            Err(DecodeError::Oversized {
                max: MAX_LEN,
                got: MAX_LEN + 1
            })
        );
        let short = message("01 00 00", "70 62 00 00");
        assert_eq!(
            parse_sleep_activity_summary(&short),
            Err(DecodeError::Oversized { max: 19, got: 20 })
        );
        // Longer than any ATT value: refused before the header is looked at.
        let mut huge = full.clone();
        huge.resize(513, 0);
        assert_eq!(
            parse_sleep_activity_summary(&huge),
            Err(DecodeError::Oversized { max: 512, got: 513 })
        );
        huge[0] = 0x00;
        assert_eq!(
            parse_sleep_activity_summary(&huge),
            Err(DecodeError::Oversized { max: 512, got: 513 })
        );
        for reserved in [0x10, 0x20, 0x40, 0x80] {
            let mut bytes = message("01 00 00", "70 62 00");
            bytes[3] |= reserved;
            assert_eq!(
                parse_sleep_activity_summary(&bytes),
                Err(DecodeError::Invalid("reserved PAMS flag bits set")),
                "{reserved:#04x}"
            );
        }
    }

    #[test]
    fn sanity_rules() {
        let invalid = |s: &SleepActivitySummary| {
            matches!(
                parse_sleep_activity_summary(&encode_sleep_activity_summary(s).unwrap()),
                Err(DecodeError::Invalid(_))
            )
        };
        // uint24 durations at their maximum.
        let at_max = [
            SleepActivitySummary {
                total_sleep_seconds: Some(U24_MAX),
                ..base()
            },
            SleepActivitySummary {
                total_wake_seconds: Some(U24_MAX),
                ..base()
            },
            SleepActivitySummary {
                total_bed_seconds: Some(U24_MAX),
                ..base()
            },
            SleepActivitySummary {
                awakening_after_alarm_seconds: Some(U24_MAX),
                ..base()
            },
            SleepActivitySummary {
                worn_duration_seconds: Some(U24_MAX),
                ..base()
            },
        ];
        for s in &at_max {
            assert!(invalid(s), "{s:?}");
        }
        assert_eq!(
            parse_sleep_activity_summary(&message("02 00 00", "ff ff ff")),
            Err(DecodeError::Invalid(
                "duration at the uint24 maximum (possibly \"not known\")"
            ))
        );
        // One below the maximum passes; so do the uint16 durations and light levels at theirs.
        assert!(!invalid(&SleepActivitySummary {
            total_wake_seconds: Some(U24_MAX - 1),
            latency_seconds: Some(u16::MAX),
            snooze_seconds: Some(u16::MAX),
            visible_light_max: Some(U24_MAX),
            uv_light_avg: Some(U24_MAX),
            ir_light_min: Some(U24_MAX),
            ..base()
        }));

        // Sleep efficiency: 100 % passes, 101 % does not.
        assert!(parse_sleep_activity_summary(&message("20 00 00", "64")).is_ok());
        for e in ["65", "ff"] {
            assert_eq!(
                parse_sleep_activity_summary(&message("20 00 00", e)),
                Err(DecodeError::Invalid("sleep efficiency above 100%")),
                "{e}"
            );
        }

        // Total sleep time against total bed time (flags 05 00 00: sleep, bed).
        assert!(parse_sleep_activity_summary(&message("05 00 00", "10 0e 00 10 0e 00")).is_ok());
        assert_eq!(
            parse_sleep_activity_summary(&message("05 00 00", "11 0e 00 10 0e 00")),
            Err(DecodeError::Invalid(
                "total sleep time longer than total bed time"
            ))
        );
        // Either alone is not compared with anything.
        assert!(parse_sleep_activity_summary(&message("01 00 00", "00 00 10")).is_ok());

        // Values that do not fit are not encoded.
        assert_eq!(
            encode_sleep_activity_summary(&SleepActivitySummary {
                worn_duration_seconds: Some(U24_MAX + 1),
                ..base()
            }),
            None
        );
        assert_eq!(
            encode_sleep_activity_summary(&SleepActivitySummary {
                ir_light_avg: Some(u32::MAX),
                ..base()
            }),
            None
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_sleep_activity_summary(&bytes, at());
        }

        #[test]
        fn complete_headers_with_known_flags_never_panic(
            counter in 0u8..64,
            flags in 0u32..=KNOWN_FLAGS,
            body in prop::collection::vec(any::<u8>(), 0..80),
        ) {
            let mut bytes = vec![0x03 | (counter << 2)];
            bytes.extend_from_slice(&flags.to_le_bytes()[..3]);
            bytes.extend(body);
            let _ = decode_sleep_activity_summary(&bytes, at());
        }

        #[test]
        fn encode_then_parse_round_trips(summary in valid_summary()) {
            let bytes = encode_sleep_activity_summary(&summary).unwrap();
            prop_assert!(bytes.len() <= MAX_LEN);
            prop_assert_eq!(parse_sleep_activity_summary(&bytes), Ok(summary));
            let readings = decode_sleep_activity_summary(&bytes, at()).unwrap();
            prop_assert_eq!(readings, summary.reading().into_iter().collect::<Vec<_>>());
        }
    }

    /// Summaries the parser accepts: durations below the uint24 maximum, efficiency at most
    /// 100 %, sleep no longer than bed time.
    fn valid_summary() -> impl Strategy<Value = SleepActivitySummary> {
        let duration = || prop::option::of(0u32..U24_MAX);
        let raw24 = || prop::option::of(0u32..=U24_MAX);
        let fixed = (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>());
        let sleep = (
            duration(),
            duration(),
            duration(),
            prop::option::of(any::<u16>()),
            prop::option::of(any::<u16>()),
            prop::option::of(0u8..=100),
            prop::option::of(any::<u16>()),
            prop::option::of(any::<u16>()),
            duration(),
        );
        let light = prop::array::uniform9(raw24());
        let rest = (prop::option::of(any::<u8>()), duration());
        (fixed, sleep, light, rest).prop_map(
            |(
                (session_id, sub_session_id, relative_seconds, sequence),
                (sleep, wake, bed, awakenings, latency, efficiency, snooze, toss, alarm),
                light,
                (heart_rate, worn),
            )| {
                let (sleep, bed) = match (sleep, bed) {
                    (Some(s), Some(b)) if s > b => (Some(b), Some(s)),
                    other => other,
                };
                SleepActivitySummary {
                    session_id,
                    sub_session_id,
                    relative_seconds,
                    sequence,
                    total_sleep_seconds: sleep,
                    total_wake_seconds: wake,
                    total_bed_seconds: bed,
                    awakenings,
                    latency_seconds: latency,
                    efficiency_percent: efficiency,
                    snooze_seconds: snooze,
                    toss_turn_events: toss,
                    awakening_after_alarm_seconds: alarm,
                    visible_light_min: light[0],
                    visible_light_max: light[1],
                    visible_light_avg: light[2],
                    uv_light_min: light[3],
                    uv_light_max: light[4],
                    uv_light_avg: light[5],
                    ir_light_min: light[6],
                    ir_light_max: light[7],
                    ir_light_avg: light[8],
                    average_sleeping_heart_rate: heart_rate,
                    worn_duration_seconds: worn,
                }
            },
        )
    }
}
