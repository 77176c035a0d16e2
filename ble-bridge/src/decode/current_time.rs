//! Current Time, characteristic 0x2A2B of the Current Time Service (0x1805): the device's own
//! wall clock, which the bridge compares with its receive time to learn the device clock's
//! offset. Device state, not a health record: the normaliser produces no record from it.
//!
//! Layout (GATT Specification Supplement, "Current Time", "Exact Time 256", "Day Date Time",
//! "Date Time", "Day of Week"; Current Time Service 1.1, §3.1), exactly 10 bytes, little-endian:
//!
//! | offset | size | field | range |
//! | --- | --- | --- | --- |
//! | 0 | u16 | year | 1582–9999; 0 = not known |
//! | 2 | u8 | month | 1–12; 0 = not known |
//! | 3 | u8 | day | 1–31; 0 = not known |
//! | 4 | u8 | hours | 0–23 |
//! | 5 | u8 | minutes | 0–59 |
//! | 6 | u8 | seconds | 0–59 |
//! | 7 | u8 | day of week | 1 = Monday … 7 = Sunday; 0 = not known |
//! | 8 | u8 | fractions256 | 1/256 s |
//! | 9 | u8 | adjust reason | bit 0 manual update, bit 1 external reference, bit 2 time zone change, bit 3 DST change |
//!
//! Bytes 0–6 are a Date Time, 0–7 a Day Date Time, 0–8 an Exact Time 256.
//!
//! The time is the device's *local* time with no offset attached (the offset lives in the
//! separate Local Time Information characteristic, 0x2A0F), hence a
//! [`chrono::NaiveDateTime`]. Rules:
//! - an unknown year, month or day, a field out of range, or a date that does not exist
//!   (31 April): `Invalid`; the reading is never guessed;
//! - a day of week above 7 is `Invalid`; a known day of week that disagrees with the date is
//!   ignored (the date wins: some clocks never set it);
//! - the adjust reason is not carried (the bridge re-reads the clock rather than tracking why it
//!   moved); its reserved bits 4–7 are ignored.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike, Utc};
use uuid::Uuid;

use super::{truncated, u16_le, uuid16, DecodeError, Reading};

/// Decoder name and version recorded in provenance.
pub const NAME: &str = "current-time/1";
/// Current Time Service.
pub const SERVICE: Uuid = uuid16(0x1805);
/// Current Time characteristic.
pub const CHARACTERISTIC: Uuid = uuid16(0x2A2B);
/// Size of a Current Time value.
pub const LEN: usize = 10;

/// Nanoseconds in 1/256 s (exact).
const NANOS_PER_FRACTION: u32 = 1_000_000_000 / 256;

/// Decodes one Current Time value into one [`Reading::DeviceClock`].
pub fn decode(bytes: &[u8], received_at: DateTime<Utc>) -> Result<Vec<Reading>, DecodeError> {
    let device_time = parse(bytes)?;
    Ok(vec![Reading::DeviceClock {
        device_time,
        received_at,
    }])
}

/// The device's local time in a Current Time value, with the rules of the module docs.
pub fn parse(bytes: &[u8]) -> Result<NaiveDateTime, DecodeError> {
    if bytes.len() > LEN {
        return Err(DecodeError::Oversized {
            max: LEN,
            got: bytes.len(),
        });
    }
    let year = u16_le(bytes, 0).ok_or(truncated(bytes, LEN))?;
    let &[_, _, month, day, hours, minutes, seconds, day_of_week, fractions, _adjust] = bytes
    else {
        return Err(truncated(bytes, LEN));
    };
    if year == 0 || month == 0 || day == 0 {
        return Err(DecodeError::Invalid("unknown date"));
    }
    if !(1582..=9999).contains(&year) {
        return Err(DecodeError::Invalid("year out of range"));
    }
    if hours > 23 || minutes > 59 || seconds > 59 {
        return Err(DecodeError::Invalid("time of day out of range"));
    }
    if day_of_week > 7 {
        return Err(DecodeError::Invalid("day of week out of range"));
    }
    let date = NaiveDate::from_ymd_opt(i32::from(year), u32::from(month), u32::from(day))
        .ok_or(DecodeError::Invalid("no such date"))?;
    date.and_hms_nano_opt(
        u32::from(hours),
        u32::from(minutes),
        u32::from(seconds),
        u32::from(fractions) * NANOS_PER_FRACTION,
    )
    .ok_or(DecodeError::Invalid("time of day out of range"))
}

/// Encodes a Current Time value the way a device would (used by the emulator and tests): the
/// day of week is derived from the date, sub-second precision is truncated to 1/256 s.
///
/// Returns `None` for years outside 1582–9999, which the format cannot carry.
pub fn encode(time: NaiveDateTime, adjust_reason: u8) -> Option<Vec<u8>> {
    let year = u16::try_from(time.year())
        .ok()
        .filter(|y| (1582..=9999).contains(y))?;
    let mut out = Vec::with_capacity(LEN);
    out.extend_from_slice(&year.to_le_bytes());
    // Each of these is below 256 by construction (month ≤ 12 … fractions < 256).
    for part in [
        time.month(),
        time.day(),
        time.hour(),
        time.minute(),
        time.second(),
        time.weekday().number_from_monday(),
        time.nanosecond().min(999_999_999) / NANOS_PER_FRACTION,
    ] {
        out.push(u8::try_from(part).ok()?);
    }
    out.push(adjust_reason);
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

    fn naive(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").unwrap()
    }

    #[test]
    fn fixtures() {
        let cases: &[(&str, &str)] = &[
            // 2026-01-01 (a Thursday) 09:30:15, no fraction, no adjust reason.
            ("ea 07 01 01 09 1e 0f 04 00 00", "2026-01-01T09:30:15"),
            // 128/256 s = 0.5 s; manual + time zone adjust reasons.
            ("ea 07 01 01 09 1e 0f 04 80 05", "2026-01-01T09:30:15.5"),
            // 1/256 s, day of week unknown, reserved adjust bits ignored.
            (
                "ea 07 0c 1f 17 3b 3b 00 01 f0",
                "2026-12-31T23:59:59.00390625",
            ),
            // Leap day, with a day of week that disagrees (ignored: the date wins).
            ("e8 07 02 1d 00 00 00 01 00 00", "2024-02-29T00:00:00"),
            // Bounds of the year range.
            ("2e 06 0a 0f 00 00 00 00 00 00", "1582-10-15T00:00:00"),
            (
                "0f 27 0c 1f 17 3b 3b 05 ff 00",
                "9999-12-31T23:59:59.99609375",
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                decode(&hex(bytes), at()),
                Ok(vec![Reading::DeviceClock {
                    device_time: naive(want),
                    received_at: at()
                }]),
                "{bytes}"
            );
        }
    }

    #[test]
    fn unknown_and_impossible_dates_are_refused() {
        let cases: &[(&str, &str)] = &[
            ("00 00 01 01 09 1e 0f 04 00 00", "unknown date"),
            ("ea 07 00 01 09 1e 0f 04 00 00", "unknown date"),
            ("ea 07 01 00 09 1e 0f 04 00 00", "unknown date"),
            ("00 00 00 00 00 00 00 00 00 00", "unknown date"),
            ("2d 06 01 01 00 00 00 00 00 00", "year out of range"),
            ("10 27 01 01 00 00 00 00 00 00", "year out of range"),
            ("ea 07 0d 01 00 00 00 00 00 00", "no such date"),
            ("ea 07 04 1f 00 00 00 00 00 00", "no such date"),
            ("e9 07 02 1d 00 00 00 00 00 00", "no such date"),
            ("ea 07 01 01 18 00 00 00 00 00", "time of day out of range"),
            ("ea 07 01 01 00 3c 00 00 00 00", "time of day out of range"),
            ("ea 07 01 01 00 00 3c 00 00 00", "time of day out of range"),
            ("ea 07 01 01 00 00 00 08 00 00", "day of week out of range"),
        ];
        for &(bytes, why) in cases {
            assert_eq!(
                decode(&hex(bytes), at()),
                Err(DecodeError::Invalid(why)),
                "{bytes}"
            );
        }
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let full = hex("ea 07 01 01 09 1e 0f 04 00 00");
        for len in 0..LEN {
            assert_eq!(
                decode(&full[..len], at()),
                Err(DecodeError::Truncated {
                    needed: 10,
                    got: len
                }),
                "{len}"
            );
        }
        let mut long = full.clone();
        long.push(0);
        assert_eq!(
            decode(&long, at()),
            Err(DecodeError::Oversized { max: 10, got: 11 })
        );
    }

    #[test]
    fn encode_derives_the_day_of_week() {
        assert_eq!(
            encode(naive("2026-01-01T09:30:15.5"), 0x05),
            Some(hex("ea 07 01 01 09 1e 0f 04 80 05"))
        );
        // 2026-01-04 is a Sunday.
        assert_eq!(encode(naive("2026-01-04T00:00:00"), 0).unwrap()[7], 7);
        assert_eq!(encode(naive("1581-12-31T00:00:00"), 0), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..16)) {
            let _ = decode(&bytes, at());
        }

        #[test]
        fn encode_then_decode_round_trips(
            days in 0i64..3_000_000,
            secs in 0u32..86_400,
            fraction in any::<u8>(),
            adjust in any::<u8>(),
        ) {
            let date = NaiveDate::from_ymd_opt(1582, 10, 15).unwrap() + chrono::Days::new(days as u64);
            prop_assume!(date.year() <= 9999);
            let time = date
                .and_hms_nano_opt(secs / 3600, secs / 60 % 60, secs % 60, u32::from(fraction) * NANOS_PER_FRACTION)
                .unwrap();
            let bytes = encode(time, adjust).unwrap();
            prop_assert_eq!(bytes.len(), LEN);
            prop_assert_eq!(parse(&bytes), Ok(time));
        }
    }
}
