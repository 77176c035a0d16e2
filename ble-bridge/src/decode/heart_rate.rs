//! Heart Rate Measurement, characteristic 0x2A37 of the Heart Rate Service (0x180D).
//!
//! Layout (Bluetooth Heart Rate Service 1.0, §3.1 / GATT Specification Supplement, "Heart Rate
//! Measurement"), all multi-byte fields little-endian:
//!
//! | field | size | present when |
//! | --- | --- | --- |
//! | flags | u8 | always |
//! | heart rate (bpm) | u8, or u16 if flags bit 0 | always |
//! | energy expended (kJ) | u16 | flags bit 3 |
//! | RR-intervals (1/1024 s) | u16 each, to the end | flags bit 4 |
//!
//! Flags: bit 0 value format (0 = uint8, 1 = uint16); bits 1–2 sensor contact status (bit 2 =
//! contact detection supported, bit 1 = contact detected; bit 1 means nothing without bit 2);
//! bit 3 energy expended present; bit 4 RR-intervals present; bits 5–7 reserved, ignored.
//!
//! The value is one measurement at the time the bridge received it: the characteristic carries
//! no timestamp. Bytes after the last field when no RR-intervals are flagged are refused rather
//! than guessed at.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{at_most, truncated, u16_le, uuid16, DecodeError, Reading};

/// Decoder name and version recorded in provenance.
pub const NAME: &str = "heart-rate-measurement/1";
/// Heart Rate Service.
pub const SERVICE: Uuid = uuid16(0x180D);
/// Heart Rate Measurement characteristic.
pub const CHARACTERISTIC: Uuid = uuid16(0x2A37);
/// The longest attribute value ATT allows (Core Specification, Vol 3, Part F, §3.2.9).
pub const MAX_LEN: usize = 512;

const FORMAT_U16: u8 = 1 << 0;
const CONTACT_DETECTED: u8 = 1 << 1;
const CONTACT_SUPPORTED: u8 = 1 << 2;
const ENERGY_PRESENT: u8 = 1 << 3;
const RR_PRESENT: u8 = 1 << 4;

/// Decodes one Heart Rate Measurement notification into one [`Reading::HeartRate`].
pub fn decode(bytes: &[u8], received_at: DateTime<Utc>) -> Result<Vec<Reading>, DecodeError> {
    at_most(bytes, MAX_LEN)?;
    let truncated = |needed: usize| truncated(bytes, needed);
    let flags = *bytes.first().ok_or(truncated(1))?;
    let (bpm, mut at) = if flags & FORMAT_U16 != 0 {
        (u16_le(bytes, 1).ok_or(truncated(3))?, 3)
    } else {
        (u16::from(*bytes.get(1).ok_or(truncated(2))?), 2)
    };
    let sensor_contact = (flags & CONTACT_SUPPORTED != 0).then_some(flags & CONTACT_DETECTED != 0);
    let energy_expended_kj = if flags & ENERGY_PRESENT != 0 {
        let kj = u16_le(bytes, at).ok_or(truncated(at + 2))?;
        at += 2;
        Some(kj)
    } else {
        None
    };
    let rest = &bytes[at..];
    let rr_intervals_ms = if flags & RR_PRESENT != 0 {
        if !rest.len().is_multiple_of(2) {
            return Err(truncated(bytes.len() + 1));
        }
        rest.chunks_exact(2)
            .map(|c| rr_to_ms(u16::from_le_bytes([c[0], c[1]])))
            .collect()
    } else {
        if !rest.is_empty() {
            return Err(DecodeError::Invalid(
                "bytes after the heart rate measurement without RR-intervals flagged",
            ));
        }
        Vec::new()
    };
    Ok(vec![Reading::HeartRate {
        at: received_at,
        bpm,
        rr_intervals_ms,
        sensor_contact,
        energy_expended_kj,
    }])
}

/// Encodes a measurement the way a sensor would (used by the simulator and tests): uint8
/// format when `bpm <= 255`. RR-intervals are given in milliseconds and sent in 1/1024 s,
/// saturating at the field's maximum (about 64 s).
pub fn encode(
    bpm: u16,
    sensor_contact: Option<bool>,
    energy_kj: Option<u16>,
    rr_ms: &[u16],
) -> Vec<u8> {
    let mut flags = 0u8;
    let mut out = Vec::with_capacity(5 + 2 * rr_ms.len());
    out.push(0);
    match u8::try_from(bpm) {
        Ok(b) => out.push(b),
        Err(_) => {
            flags |= FORMAT_U16;
            out.extend_from_slice(&bpm.to_le_bytes());
        }
    }
    match sensor_contact {
        None => {}
        Some(false) => flags |= CONTACT_SUPPORTED,
        Some(true) => flags |= CONTACT_SUPPORTED | CONTACT_DETECTED,
    }
    if let Some(kj) = energy_kj {
        flags |= ENERGY_PRESENT;
        out.extend_from_slice(&kj.to_le_bytes());
    }
    if !rr_ms.is_empty() {
        flags |= RR_PRESENT;
        for &ms in rr_ms {
            out.extend_from_slice(&ms_to_rr(ms).to_le_bytes());
        }
    }
    out[0] = flags;
    out
}

/// 1/1024 s to milliseconds, rounded to nearest.
fn rr_to_ms(rr: u16) -> u16 {
    // rr * 1000 / 1024 <= 63 999, so the result always fits.
    ((u32::from(rr) * 1000 + 512) / 1024) as u16
}

/// Milliseconds to 1/1024 s, rounded to nearest, saturating.
fn ms_to_rr(ms: u16) -> u16 {
    let rr = (u32::from(ms) * 1024 + 500) / 1000;
    u16::try_from(rr).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_hex as hex;
    use proptest::prelude::*;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600, 0).unwrap()
    }

    fn hr(
        bpm: u16,
        sensor_contact: Option<bool>,
        energy_expended_kj: Option<u16>,
        rr: &[u16],
    ) -> Vec<Reading> {
        vec![Reading::HeartRate {
            at: at(),
            bpm,
            rr_intervals_ms: rr.to_vec(),
            sensor_contact,
            energy_expended_kj,
        }]
    }

    #[test]
    fn fixtures_cover_every_flag() {
        let cases: &[(&str, Vec<Reading>)] = &[
            // uint8, no contact support, nothing else.
            ("00 48", hr(72, None, None, &[])),
            // uint16 value.
            ("01 2c 01", hr(300, None, None, &[])),
            ("01 48 00", hr(72, None, None, &[])),
            // Contact detected without "supported" means nothing.
            ("02 48", hr(72, None, None, &[])),
            // Supported, not detected.
            ("04 48", hr(72, Some(false), None, &[])),
            // Supported and detected.
            ("06 48", hr(72, Some(true), None, &[])),
            // Energy expended 10 000 kJ.
            ("08 48 10 27", hr(72, None, Some(10_000), &[])),
            // One RR-interval of 1024/1024 s, then two.
            ("10 48 00 04", hr(72, None, None, &[1000])),
            ("10 48 00 04 00 02", hr(72, None, None, &[1000, 500])),
            // RR flagged but none fit this notification: allowed by the spec.
            ("10 48", hr(72, None, None, &[])),
            // 819/1024 s = 799.8 ms, rounded.
            ("10 48 33 03", hr(72, None, None, &[800])),
            // Everything at once, uint16 value.
            (
                "1f 2c 01 34 12 00 04",
                hr(300, Some(true), Some(0x1234), &[1000]),
            ),
            (
                "1d 48 00 00 00 ff ff",
                hr(72, Some(false), Some(0), &[63_999]),
            ),
            // uint8 with energy and RR, contact detected.
            ("1e 3c e8 03 00 04", hr(60, Some(true), Some(1000), &[1000])),
            // Reserved bits are ignored.
            ("e0 48", hr(72, None, None, &[])),
        ];
        for (bytes, want) in cases {
            assert_eq!(&decode(&hex(bytes), at()).unwrap(), want, "{bytes}");
        }
    }

    #[test]
    fn truncated_payloads_are_refused() {
        let cases: &[(&str, usize, usize)] = &[
            ("", 1, 0),
            ("00", 2, 1),
            ("01 48", 3, 2),
            ("08 48", 4, 2),
            ("08 48 10", 4, 3),
            ("09 2c 01 10", 5, 4),
            ("10 48 00", 4, 3),
            ("10 48 00 04 00", 6, 5),
        ];
        for &(bytes, needed, got) in cases {
            assert_eq!(
                decode(&hex(bytes), at()),
                Err(DecodeError::Truncated { needed, got }),
                "{bytes}"
            );
        }
    }

    #[test]
    fn oversized_and_trailing_payloads_are_refused() {
        let mut big = vec![0x10, 72];
        big.resize(514, 0);
        assert_eq!(
            decode(&big, at()),
            Err(DecodeError::Oversized { max: 512, got: 514 })
        );
        big.truncate(512);
        assert!(decode(&big, at()).is_ok(), "512 bytes is the ATT maximum");
        assert!(matches!(
            decode(&hex("00 48 00"), at()),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn encode_picks_the_smallest_format() {
        assert_eq!(encode(72, None, None, &[]), hex("00 48"));
        assert_eq!(encode(255, None, None, &[]), hex("00 ff"));
        assert_eq!(encode(256, None, None, &[]), hex("01 00 01"));
        assert_eq!(
            encode(300, Some(true), Some(0x1234), &[1000]),
            hex("1f 2c 01 34 12 00 04")
        );
        assert_eq!(encode(60, Some(false), None, &[]), hex("04 3c"));
        // Above ~64 s the field saturates.
        assert_eq!(encode(30, None, None, &[65_000]), hex("10 1e ff ff"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&bytes, at());
        }

        #[test]
        fn encode_then_decode_round_trips(
            bpm in any::<u16>(),
            contact in prop::option::of(any::<bool>()),
            energy in prop::option::of(any::<u16>()),
            rr in prop::collection::vec(0u16..=63_999, 0..200),
        ) {
            let bytes = encode(bpm, contact, energy, &rr);
            prop_assert!(bytes.len() <= MAX_LEN);
            prop_assert_eq!(decode(&bytes, at()).unwrap(), hr(bpm, contact, energy, &rr));
        }
    }
}
