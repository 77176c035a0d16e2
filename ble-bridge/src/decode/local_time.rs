//! Local Time Information, characteristic 0x2A0F of the Current Time Service (0x1805): the
//! device's time zone and DST offset. Device state, not a health record: the bridge uses it
//! to place the device's midnight (a band that reports it wins over the configured zone; see
//! [`crate::cumulative`]).
//!
//! Layout (GATT Specification Supplement, "Local Time Information", "Time Zone", "DST
//! Offset"; Current Time Service 1.1, §3.2), exactly 2 bytes:
//!
//! | offset | size | field | values |
//! | --- | --- | --- | --- |
//! | 0 | s8 | time zone: the standard offset from UTC in 15-minute steps | −48 … +56; −128 = not known |
//! | 1 | u8 | DST offset | 0 standard time, 2 +0.5 h, 4 +1 h (daylight), 8 +2 h (double daylight); 255 = not known |
//!
//! Rules: a time zone outside −48 … +56 (other than −128) and a DST value other than those
//! listed are `Invalid`; "not known" values decode to `None`, never to a guess.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{at_most, truncated, uuid16, DecodeError, Reading};

/// Decoder name and version recorded in provenance.
pub const NAME: &str = "local-time-information/1";
/// Local Time Information characteristic.
pub const CHARACTERISTIC: Uuid = uuid16(0x2A0F);

/// Decodes one Local Time Information value into one [`Reading::LocalTime`].
pub fn decode(bytes: &[u8], received_at: DateTime<Utc>) -> Result<Vec<Reading>, DecodeError> {
    at_most(bytes, 2)?;
    let &[zone, dst] = bytes else {
        return Err(truncated(bytes, 2));
    };
    let zone = zone as i8;
    let zone_minutes = match zone {
        -128 => None,
        -48..=56 => Some(i16::from(zone) * 15),
        _ => return Err(DecodeError::Invalid("time zone out of range")),
    };
    let dst_minutes = match dst {
        0 => Some(0),
        2 => Some(30),
        4 => Some(60),
        8 => Some(120),
        255 => None,
        _ => return Err(DecodeError::Invalid("reserved DST offset")),
    };
    Ok(vec![Reading::LocalTime {
        zone_minutes,
        dst_minutes,
        received_at,
    }])
}

/// Encodes a Local Time Information value (emulator and tests); `None`s encode as "not
/// known". Returns `None` for values the format cannot carry.
pub fn encode(zone_minutes: Option<i16>, dst_minutes: Option<u16>) -> Option<Vec<u8>> {
    let zone = match zone_minutes {
        None => -128i8,
        Some(m) if m % 15 == 0 && (-720..=840).contains(&m) => i8::try_from(m / 15).ok()?,
        Some(_) => return None,
    };
    let dst = match dst_minutes {
        None => 255,
        Some(0) => 0,
        Some(30) => 2,
        Some(60) => 4,
        Some(120) => 8,
        Some(_) => return None,
    };
    Some(vec![zone as u8, dst])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_hex as hex;
    use proptest::prelude::*;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_782_864_000, 0).unwrap()
    }

    fn reading(zone: Option<i16>, dst: Option<u16>) -> Vec<Reading> {
        vec![Reading::LocalTime {
            zone_minutes: zone,
            dst_minutes: dst,
            received_at: at(),
        }]
    }

    #[test]
    fn fixtures() {
        let cases: &[(&str, Option<i16>, Option<u16>)] = &[
            // New York in summer: -5 h = -20 quarter hours (0xEC), daylight (+1 h).
            ("ec 04", Some(-300), Some(60)),
            // Tokyo: +9 h = 36 (0x24), standard time.
            ("24 00", Some(540), Some(0)),
            // Kolkata +5:30 = 22 (0x16).
            ("16 00", Some(330), Some(0)),
            // Lord Howe's half-hour DST; bounds of the range.
            ("2a 02", Some(630), Some(30)),
            ("d0 08", Some(-720), Some(120)),
            ("38 00", Some(840), Some(0)),
            // Not known.
            ("80 ff", None, None),
            ("24 ff", Some(540), None),
        ];
        for &(bytes, zone, dst) in cases {
            assert_eq!(decode(&hex(bytes), at()), Ok(reading(zone, dst)), "{bytes}");
            assert_eq!(encode(zone, dst), Some(hex(bytes)), "{bytes}");
        }
    }

    #[test]
    fn out_of_range_and_wrong_lengths_are_refused() {
        for (bytes, why) in [
            ("39 00", "time zone out of range"),
            ("cf 00", "time zone out of range"),
            ("24 01", "reserved DST offset"),
            ("24 03", "reserved DST offset"),
            ("24 fe", "reserved DST offset"),
        ] {
            assert_eq!(
                decode(&hex(bytes), at()),
                Err(DecodeError::Invalid(why)),
                "{bytes}"
            );
        }
        assert_eq!(
            decode(&[0x24], at()),
            Err(DecodeError::Truncated { needed: 2, got: 1 })
        );
        assert_eq!(
            decode(&[0x24, 0, 0], at()),
            Err(DecodeError::Oversized { max: 2, got: 3 })
        );
        assert_eq!(encode(Some(10), Some(0)), None);
        assert_eq!(encode(Some(0), Some(45)), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4)) {
            let _ = decode(&bytes, at());
        }
    }
}
