//! Battery Level, characteristic 0x2A19 of the Battery Service (0x180F): one byte, the
//! remaining charge in percent, 0–100 (GATT Specification Supplement, "Battery Level").
//! Device state, not a health record: the normaliser produces no record from it.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{uuid16, DecodeError, Reading};

/// Decoder name and version recorded in provenance.
pub const NAME: &str = "battery-level/1";
/// Battery Service.
pub const SERVICE: Uuid = uuid16(0x180F);
/// Battery Level characteristic.
pub const CHARACTERISTIC: Uuid = uuid16(0x2A19);

/// Decodes one Battery Level value into one [`Reading::Battery`].
pub fn decode(bytes: &[u8], received_at: DateTime<Utc>) -> Result<Vec<Reading>, DecodeError> {
    match *bytes {
        [] => Err(DecodeError::Truncated { needed: 1, got: 0 }),
        [percent] if percent <= 100 => Ok(vec![Reading::Battery {
            at: received_at,
            percent,
        }]),
        [_] => Err(DecodeError::Invalid("battery level above 100%")),
        _ => Err(DecodeError::Oversized {
            max: 1,
            got: bytes.len(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600, 0).unwrap()
    }

    #[test]
    fn levels_from_empty_to_full() {
        for (byte, percent) in [(0x00, 0), (0x37, 55), (0x64, 100)] {
            assert_eq!(
                decode(&[byte], at()),
                Ok(vec![Reading::Battery { at: at(), percent }])
            );
        }
    }

    #[test]
    fn out_of_range_and_wrong_lengths_are_refused() {
        assert_eq!(
            decode(&[0x65], at()),
            Err(DecodeError::Invalid("battery level above 100%"))
        );
        assert!(matches!(
            decode(&[0xff], at()),
            Err(DecodeError::Invalid(_))
        ));
        assert_eq!(
            decode(&[], at()),
            Err(DecodeError::Truncated { needed: 1, got: 0 })
        );
        assert_eq!(
            decode(&[0x32, 0x00], at()),
            Err(DecodeError::Oversized { max: 1, got: 2 })
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..8)) {
            let _ = decode(&bytes, at());
        }
    }
}
