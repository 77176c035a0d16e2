//! Device Information Service (0x180A): the identification strings a bridge reads once while
//! pairing a device. Device state, not a health record: the normaliser produces no record.
//!
//! | characteristic | UUID | [`DeviceInfoField`] |
//! | --- | --- | --- |
//! | Manufacturer Name String | 0x2A29 | `Manufacturer` |
//! | Model Number String | 0x2A24 | `Model` |
//! | Serial Number String | 0x2A25 | `Serial` |
//!
//! Each value is a `utf8s` (GATT Specification Supplement, "Manufacturer Name String", "Model
//! Number String", "Serial Number String"; Device Information Service 1.1, §3): UTF-8 with no
//! length prefix and no terminator. Some devices pad the value with NULs anyway, so trailing NULs
//! are trimmed. Refused, because a pairing must never guess at an identity:
//! - an empty value (or only NULs): `Invalid`;
//! - a NUL before the end of the text: `Invalid`;
//! - invalid UTF-8: `Invalid`;
//! - more than [`MAX_LEN`] bytes: `Oversized` (the bridge's bound, chosen so that one value fits
//!   a 251-byte LE data PDU with its ATT header; no real device sends more).
//!
//! Other whitespace is kept as sent: two serials that differ only in padding stay different.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{at_most, uuid16, DecodeError, Reading};

/// Device Information Service.
pub const SERVICE: Uuid = uuid16(0x180A);
/// Serial Number String characteristic.
pub const SERIAL_NUMBER: Uuid = uuid16(0x2A25);
/// Manufacturer Name String characteristic.
pub const MANUFACTURER_NAME: Uuid = uuid16(0x2A29);
/// Model Number String characteristic.
pub const MODEL_NUMBER: Uuid = uuid16(0x2A24);

/// Decoder name and version of the Serial Number String, recorded in provenance.
pub const SERIAL_NUMBER_NAME: &str = "serial-number-string/1";
/// Decoder name and version of the Manufacturer Name String, recorded in provenance.
pub const MANUFACTURER_NAME_NAME: &str = "manufacturer-name-string/1";
/// Decoder name and version of the Model Number String, recorded in provenance.
pub const MODEL_NUMBER_NAME: &str = "model-number-string/1";

/// The longest value accepted, in bytes (before trimming trailing NULs).
pub const MAX_LEN: usize = 248;

/// Which Device Information string a [`Reading::DeviceInfo`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceInfoField {
    Serial,
    Manufacturer,
    Model,
}

impl DeviceInfoField {
    /// The characteristic that carries this field.
    pub const fn characteristic(self) -> Uuid {
        match self {
            DeviceInfoField::Serial => SERIAL_NUMBER,
            DeviceInfoField::Manufacturer => MANUFACTURER_NAME,
            DeviceInfoField::Model => MODEL_NUMBER,
        }
    }
}

/// Decodes a Serial Number String into one [`Reading::DeviceInfo`].
pub fn decode_serial_number(
    bytes: &[u8],
    _received_at: DateTime<Utc>,
) -> Result<Vec<Reading>, DecodeError> {
    decode_field(DeviceInfoField::Serial, bytes)
}

/// Decodes a Manufacturer Name String into one [`Reading::DeviceInfo`].
pub fn decode_manufacturer_name(
    bytes: &[u8],
    _received_at: DateTime<Utc>,
) -> Result<Vec<Reading>, DecodeError> {
    decode_field(DeviceInfoField::Manufacturer, bytes)
}

/// Decodes a Model Number String into one [`Reading::DeviceInfo`].
pub fn decode_model_number(
    bytes: &[u8],
    _received_at: DateTime<Utc>,
) -> Result<Vec<Reading>, DecodeError> {
    decode_field(DeviceInfoField::Model, bytes)
}

/// Decodes the value of `field`'s characteristic.
pub fn decode_field(field: DeviceInfoField, bytes: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    let value = parse_string(bytes)?;
    Ok(vec![Reading::DeviceInfo { field, value }])
}

/// The text of one `utf8s` value, trailing NULs trimmed, with the rules of the module docs.
pub fn parse_string(bytes: &[u8]) -> Result<String, DecodeError> {
    at_most(bytes, MAX_LEN)?;
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let text = &bytes[..end];
    if text.is_empty() {
        return Err(DecodeError::Invalid("empty device information string"));
    }
    if text.contains(&0) {
        return Err(DecodeError::Invalid(
            "NUL inside a device information string",
        ));
    }
    std::str::from_utf8(text)
        .map(str::to_owned)
        .map_err(|_| DecodeError::Invalid("device information string is not UTF-8"))
}

/// Encodes a string the way a device would (used by the emulator and tests): its UTF-8 bytes,
/// unterminated.
pub fn encode(value: &str) -> Vec<u8> {
    value.as_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600, 0).unwrap()
    }

    fn info(field: DeviceInfoField, value: &str) -> Vec<Reading> {
        vec![Reading::DeviceInfo {
            field,
            value: value.to_owned(),
        }]
    }

    #[test]
    fn each_characteristic_names_its_field() {
        use DeviceInfoField::*;
        assert_eq!(
            decode_serial_number(b"SN-0042", at()),
            Ok(info(Serial, "SN-0042"))
        );
        assert_eq!(
            decode_manufacturer_name(b"PHR Devices", at()),
            Ok(info(Manufacturer, "PHR Devices"))
        );
        assert_eq!(
            decode_model_number(b"Band 2", at()),
            Ok(info(Model, "Band 2"))
        );
        assert_eq!(Serial.characteristic(), uuid16(0x2A25));
        assert_eq!(Manufacturer.characteristic(), uuid16(0x2A29));
        assert_eq!(Model.characteristic(), uuid16(0x2A24));
    }

    #[test]
    fn trailing_nuls_are_trimmed_and_text_is_kept_as_sent() {
        assert_eq!(parse_string(b"ABC123\0\0\0"), Ok("ABC123".to_owned()));
        assert_eq!(parse_string(b" padded  "), Ok(" padded  ".to_owned()));
        // Multi-byte UTF-8: "歩数計-7" (pedometer).
        let jp = "歩数計-7";
        assert_eq!(parse_string(jp.as_bytes()), Ok(jp.to_owned()));
        assert_eq!(parse_string(&encode(jp)), Ok(jp.to_owned()));
    }

    #[test]
    fn bad_values_are_refused() {
        assert_eq!(
            parse_string(b""),
            Err(DecodeError::Invalid("empty device information string"))
        );
        assert_eq!(
            parse_string(b"\0\0"),
            Err(DecodeError::Invalid("empty device information string"))
        );
        assert_eq!(
            parse_string(b"AB\0CD\0"),
            Err(DecodeError::Invalid(
                "NUL inside a device information string"
            ))
        );
        // A lone continuation byte, and a truncated three-byte sequence.
        assert_eq!(
            parse_string(&[b'A', 0x80]),
            Err(DecodeError::Invalid(
                "device information string is not UTF-8"
            ))
        );
        assert_eq!(
            parse_string(&"歩".as_bytes()[..2]),
            Err(DecodeError::Invalid(
                "device information string is not UTF-8"
            ))
        );
        let long = vec![b'x'; MAX_LEN + 1];
        assert_eq!(
            parse_string(&long),
            Err(DecodeError::Oversized { max: 248, got: 249 })
        );
        assert_eq!(parse_string(&long[..MAX_LEN]).map(|s| s.len()), Ok(248));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_serial_number(&bytes, at());
        }

        #[test]
        fn strings_round_trip(value in "[^\u{0}]{1,60}") {
            prop_assume!(value.len() <= MAX_LEN);
            prop_assert_eq!(parse_string(&encode(&value)), Ok(value));
        }
    }
}
