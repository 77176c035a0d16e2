//! What a bridge reports it sees nearby: the wearables it could pair, so that an owner picks
//! one instead of typing its id.
//!
//! Topic `{prefix}/bridges/{bridge_id}/nearby` ([`crate::Topics::nearby`]), bridge to gateway,
//! QoS 1, not retained, sealed with the bridge–gateway channel key like every other message
//! (the topic bound as associated data). Inside the seal, one JSON [`NearbyReport`]: the
//! bridge's scan time and at most [`MAX_DEVICES`] devices, each with the id its records use,
//! a display name, the signal strength and the decoder that reads it.
//!
//! The bridge builds reports with [`NearbyReport::new`] (which keeps the strongest
//! [`MAX_DEVICES`] signals and cleans names); the gateway reads them with
//! [`NearbyReport::parse`], which refuses, with a named [`NearbyError`], anything a bridge
//! following this contract would never send. A report says nothing about whom a device
//! belongs to: the gateway decides what an owner may see of it.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::envelope::is_valid_id;

/// The report version this crate writes and accepts.
pub const NEARBY_VERSION: &str = "1.0";
/// Devices one report lists at most; a bridge that sees more keeps the strongest signals.
pub const MAX_DEVICES: usize = 32;
/// Characters of a display name at most (a BLE advertised name is at most 29 bytes, a GAP
/// device name 248: longer ones are cut).
pub const MAX_NAME_CHARS: usize = 32;
/// Bytes of a decoder name at most.
pub const MAX_DECODER_LEN: usize = 64;
/// The RSSI range BLE reports, in dBm (Core Specification: -127 to +20).
pub const RSSI_RANGE: std::ops::RangeInclusive<i16> = -127..=20;
/// Bytes of a report's JSON at most: 32 devices of the longest fields fit in well under this.
pub const MAX_REPORT_BYTES: usize = 16 * 1024;

/// One scan of a bridge: what it saw, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NearbyReport {
    pub schema_version: String,
    /// When the bridge scanned, by its clock.
    pub scanned_at: DateTime<FixedOffset>,
    /// Strongest signal first; ids unique.
    pub devices: Vec<NearbyDevice>,
}

/// One device a bridge sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NearbyDevice {
    /// The id the device's records carry (`device_id`), so the one a pairing names.
    pub device_id: String,
    /// The name it advertises, cleaned ([`sanitize_name`]); `None` if it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Received signal strength in dBm, if the radio gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rssi: Option<i16>,
    /// The decoder (device model or kind) that reads it, e.g. `heart_rate` or
    /// `phr-reference-band/1`.
    pub decoder: String,
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NearbyError {
    #[error("the report is larger than {MAX_REPORT_BYTES} bytes")]
    TooLarge,
    #[error("the report is not a nearby report: {0}")]
    Malformed(String),
    #[error("the report's schema_version is not one this gateway understands")]
    UnknownVersion,
    #[error("the report lists more than {MAX_DEVICES} devices")]
    TooManyDevices,
    #[error("device {index} has an invalid id")]
    InvalidDeviceId { index: usize },
    #[error("device {index} is listed twice")]
    DuplicateDevice { index: usize },
    #[error("device {index} has a name that is not a clean display name")]
    InvalidName { index: usize },
    #[error("device {index} has an RSSI outside -127..=20 dBm")]
    InvalidRssi { index: usize },
    #[error("device {index} has an invalid decoder name")]
    InvalidDecoder { index: usize },
}

impl NearbyError {
    /// A stable code for logs and counters.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Malformed(_) => "malformed",
            Self::UnknownVersion => "unknown_schema_version",
            Self::TooManyDevices => "too_many_devices",
            Self::InvalidDeviceId { .. } => "invalid_device_id",
            Self::DuplicateDevice { .. } => "duplicate_device",
            Self::InvalidName { .. } => "invalid_name",
            Self::InvalidRssi { .. } => "invalid_rssi",
            Self::InvalidDecoder { .. } => "invalid_decoder",
        }
    }
}

/// A display name fit to show: control and invisible formatting characters (bidirectional
/// overrides, zero-width marks) removed, runs of white space made one space, trimmed, cut to
/// [`MAX_NAME_CHARS`] characters; `None` if nothing is left. Idempotent. (HTML escaping is the
/// page's job; this keeps a name from rearranging or hiding the text around it.)
pub fn sanitize_name(raw: &str) -> Option<String> {
    let mut out = String::new();
    let mut space = false;
    for c in raw.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if c.is_control() || is_invisible_format(c) {
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(c);
    }
    let cut: String = out.chars().take(MAX_NAME_CHARS).collect();
    let cut = cut.trim_end().to_owned();
    (!cut.is_empty()).then_some(cut)
}

/// Unicode format characters that change how surrounding text shows (Cf category members
/// seen in spoofing: bidi embeddings, overrides and isolates, zero-width characters, BOM).
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// A decoder name: 1 to [`MAX_DECODER_LEN`] bytes of `A-Z a-z 0-9 . _ : - /`.
fn is_valid_decoder(name: &str) -> bool {
    (1..=MAX_DECODER_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-' | b'/'))
}

impl NearbyDevice {
    /// A device as the bridge saw it; `None` if its id cannot be a device id or its decoder
    /// name is not one. The name is cleaned, an RSSI outside the BLE range dropped.
    pub fn new(
        device_id: &str,
        name: Option<&str>,
        rssi: Option<i16>,
        decoder: &str,
    ) -> Option<Self> {
        (is_valid_id(device_id) && is_valid_decoder(decoder)).then(|| Self {
            device_id: device_id.to_owned(),
            name: name.and_then(sanitize_name),
            rssi: rssi.filter(|r| RSSI_RANGE.contains(r)),
            decoder: decoder.to_owned(),
        })
    }
}

impl NearbyReport {
    /// The report of a scan at `scanned_at`: one entry per device id (its strongest sighting),
    /// strongest signal first (no RSSI last, then by id), the first [`MAX_DEVICES`] kept.
    pub fn new(
        scanned_at: DateTime<FixedOffset>,
        devices: impl IntoIterator<Item = NearbyDevice>,
    ) -> Self {
        let mut devices: Vec<NearbyDevice> = devices.into_iter().collect();
        devices.sort_by(|a, b| {
            b.rssi
                .cmp(&a.rssi)
                .then_with(|| a.device_id.cmp(&b.device_id))
        });
        let mut seen = std::collections::HashSet::new();
        devices.retain(|d| seen.insert(d.device_id.clone()));
        devices.truncate(MAX_DEVICES);
        Self {
            schema_version: NEARBY_VERSION.to_owned(),
            scanned_at,
            devices,
        }
    }

    /// The device ids, sorted: what "the set of devices changed" compares.
    pub fn device_ids(&self) -> std::collections::BTreeSet<&str> {
        self.devices.iter().map(|d| d.device_id.as_str()).collect()
    }

    /// Reads a report as the gateway receives it (after opening the seal), refusing what a
    /// bridge following the contract never sends.
    pub fn parse(json: &[u8]) -> Result<Self, NearbyError> {
        if json.len() > MAX_REPORT_BYTES {
            return Err(NearbyError::TooLarge);
        }
        let report: Self =
            serde_json::from_slice(json).map_err(|e| NearbyError::Malformed(e.to_string()))?;
        report.check()?;
        Ok(report)
    }

    /// Whether this report is one [`NearbyReport::new`] could have made.
    pub fn check(&self) -> Result<(), NearbyError> {
        if self.schema_version != NEARBY_VERSION {
            return Err(NearbyError::UnknownVersion);
        }
        if self.devices.len() > MAX_DEVICES {
            return Err(NearbyError::TooManyDevices);
        }
        let mut seen = std::collections::HashSet::new();
        for (index, d) in self.devices.iter().enumerate() {
            if !is_valid_id(&d.device_id) {
                return Err(NearbyError::InvalidDeviceId { index });
            }
            if !seen.insert(d.device_id.as_str()) {
                return Err(NearbyError::DuplicateDevice { index });
            }
            if let Some(name) = &d.name {
                if sanitize_name(name).as_deref() != Some(name.as_str()) {
                    return Err(NearbyError::InvalidName { index });
                }
            }
            if d.rssi.is_some_and(|r| !RSSI_RANGE.contains(&r)) {
                return Err(NearbyError::InvalidRssi { index });
            }
            if !is_valid_decoder(&d.decoder) {
                return Err(NearbyError::InvalidDecoder { index });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelKey;
    use ed25519_dalek::SigningKey;

    fn at() -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2026-03-01T09:00:00+09:00").unwrap()
    }

    fn dev(id: &str, rssi: Option<i16>) -> NearbyDevice {
        NearbyDevice::new(id, Some("Band"), rssi, "phr-reference-band/1").unwrap()
    }

    #[test]
    fn names_are_cleaned_and_bounded() {
        assert_eq!(
            sanitize_name("  Ana's   band\t2 ").as_deref(),
            Some("Ana's band 2")
        );
        // Controls, bidi overrides and zero-width characters go.
        assert_eq!(
            sanitize_name("a\u{0}b\u{1b}[31mc\u{202E}d\u{200B}e\u{FEFF}").as_deref(),
            Some("ab[31mcde")
        );
        assert_eq!(sanitize_name("line\nbreak").as_deref(), Some("line break"));
        assert_eq!(sanitize_name(" \u{202E}\t"), None);
        assert_eq!(sanitize_name(""), None);
        // Cut at 32 characters, not bytes (no split UTF-8), trailing space dropped.
        let long = "é".repeat(40);
        assert_eq!(sanitize_name(&long).unwrap().chars().count(), 32);
        let spaced = format!("{} b", "a".repeat(31));
        assert_eq!(sanitize_name(&spaced).unwrap(), "a".repeat(31));
        // Markup is kept as text: escaping is the page's job.
        assert_eq!(
            sanitize_name("<script>x</script>").as_deref(),
            Some("<script>x</script>")
        );
        for s in ["  Ana's   band ", "a\u{202E}b", &"é".repeat(40), "x\u{1b}y"] {
            let once = sanitize_name(s);
            assert_eq!(once.as_deref().and_then(sanitize_name), once, "{s:?}");
        }
    }

    #[test]
    fn a_device_needs_a_valid_id_and_decoder() {
        assert!(NearbyDevice::new("AA:BB:CC:DD:EE:FF", None, Some(-60), "heart_rate").is_some());
        assert!(NearbyDevice::new("a/b", None, None, "heart_rate").is_none());
        assert!(NearbyDevice::new("", None, None, "heart_rate").is_none());
        assert!(NearbyDevice::new("band", None, None, "").is_none());
        assert!(NearbyDevice::new("band", None, None, "a b").is_none());
        assert!(NearbyDevice::new("band", None, None, &"d".repeat(65)).is_none());
        let d = NearbyDevice::new("band", Some("\u{7}"), Some(99), "pams").unwrap();
        assert_eq!((d.name, d.rssi), (None, None));
        let d = NearbyDevice::new("band", None, Some(-127), "pams").unwrap();
        assert_eq!(d.rssi, Some(-127));
    }

    #[test]
    fn a_report_keeps_the_32_strongest_once_each() {
        let mut devices: Vec<NearbyDevice> = (0..40)
            .map(|i| dev(&format!("band-{i:02}"), Some(-100 + i as i16)))
            .collect();
        devices.push(dev("band-39", Some(-120))); // a weaker second sighting
        devices.push(dev("no-rssi", None));
        let r = NearbyReport::new(at(), devices);
        assert_eq!(r.devices.len(), 32);
        assert_eq!(r.devices[0].device_id, "band-39");
        assert_eq!(r.devices[0].rssi, Some(-61));
        assert_eq!(r.devices[31].device_id, "band-08");
        assert!(r.devices.windows(2).all(|w| w[0].rssi >= w[1].rssi));
        assert!(!r.devices.iter().any(|d| d.device_id == "no-rssi"));
        assert_eq!(r.device_ids().len(), 32);
        assert_eq!(r.check(), Ok(()));
    }

    #[test]
    fn round_trips_through_json_and_a_seal() {
        let r = NearbyReport::new(
            at(),
            [
                NearbyDevice::new(
                    "sim-band-0000",
                    Some("PHR band 0"),
                    Some(-48),
                    "phr-reference-band/1",
                )
                .unwrap(),
                NearbyDevice::new("AA:BB:CC:DD:EE:FF", None, None, "heart_rate").unwrap(),
            ],
        );
        let json = serde_json::to_vec(&r).unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"schema_version\":\"1.0\""), "{text}");
        assert!(
            text.contains("\"scanned_at\":\"2026-03-01T09:00:00+09:00\""),
            "{text}"
        );
        assert_eq!(NearbyReport::parse(&json).unwrap(), r);

        let (b, g) = (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
        );
        let bridge = ChannelKey::for_bridge(&b, &g.verifying_key()).unwrap();
        let gateway = ChannelKey::for_gateway(&g, &b.verifying_key()).unwrap();
        let topic = crate::Topics::default().nearby("br-1");
        let sealed = bridge.seal(&topic, &json, [5; 24]);
        let opened = gateway.open(&topic, &sealed).unwrap();
        assert_eq!(NearbyReport::parse(&opened).unwrap(), r);
        // Tampered, on another bridge's topic, or with another key: it does not open.
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(gateway.open(&topic, &bad).is_err());
        assert!(gateway
            .open(&crate::Topics::default().nearby("br-2"), &sealed)
            .is_err());
        let other =
            ChannelKey::for_gateway(&g, &SigningKey::from_bytes(&[3; 32]).verifying_key()).unwrap();
        assert!(other.open(&topic, &sealed).is_err());
    }

    #[test]
    fn parse_refuses_what_no_bridge_sends() {
        let good = NearbyReport::new(at(), [dev("band-1", Some(-50))]);
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = serde_json::to_value(&good).unwrap();
            f(&mut v);
            NearbyReport::parse(&serde_json::to_vec(&v).unwrap())
        };
        assert_eq!(with(&|_| {}), Ok(good.clone()));
        assert_eq!(
            with(&|v| v["schema_version"] = "2.0".into()),
            Err(NearbyError::UnknownVersion)
        );
        assert_eq!(
            with(&|v| v["devices"][0]["device_id"] = "a/b".into()),
            Err(NearbyError::InvalidDeviceId { index: 0 })
        );
        assert_eq!(
            with(&|v| v["devices"][0]["name"] = "a\u{202E}b".into()),
            Err(NearbyError::InvalidName { index: 0 })
        );
        assert_eq!(
            with(&|v| v["devices"][0]["name"] = "x".repeat(33).into()),
            Err(NearbyError::InvalidName { index: 0 })
        );
        assert_eq!(
            with(&|v| v["devices"][0]["rssi"] = 21.into()),
            Err(NearbyError::InvalidRssi { index: 0 })
        );
        assert_eq!(
            with(&|v| v["devices"][0]["decoder"] = "".into()),
            Err(NearbyError::InvalidDecoder { index: 0 })
        );
        assert_eq!(
            with(&|v| {
                let d = v["devices"][0].clone();
                v["devices"].as_array_mut().unwrap().push(d);
            }),
            Err(NearbyError::DuplicateDevice { index: 1 })
        );
        assert_eq!(
            with(&|v| {
                v["devices"] = (0..33)
                    .map(|i| serde_json::to_value(dev(&format!("b{i}"), None)).unwrap())
                    .collect();
            }),
            Err(NearbyError::TooManyDevices)
        );
        assert!(matches!(
            NearbyReport::parse(b"{\"devices\":[]}"),
            Err(NearbyError::Malformed(_))
        ));
        assert!(matches!(
            NearbyReport::parse(b""),
            Err(NearbyError::Malformed(_))
        ));
        assert_eq!(
            NearbyReport::parse(&vec![b' '; MAX_REPORT_BYTES + 1]),
            Err(NearbyError::TooLarge)
        );
        // Out-of-range numbers are a parse error, not a wrap-around.
        assert!(with(&|v| v["devices"][0]["rssi"] = 70_000.into()).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = NearbyReport::parse(&bytes);
        }

        #[test]
        fn arbitrary_names_clean_idempotently(name in "\\PC{0,80}") {
            let once = sanitize_name(&name);
            proptest::prop_assert_eq!(once.as_deref().and_then(sanitize_name), once.clone());
            if let Some(n) = once {
                proptest::prop_assert!(n.chars().count() <= MAX_NAME_CHARS);
                proptest::prop_assert!(!n.chars().any(|c| c.is_control() || is_invisible_format(c)));
            }
        }
    }

    #[test]
    fn the_largest_report_fits_the_size_bound() {
        let devices = (0..MAX_DEVICES).map(|i| {
            NearbyDevice::new(
                &format!("{i:02}{}", "x".repeat(62)),
                Some(&"\u{10FFFF}".repeat(MAX_NAME_CHARS)),
                Some(-127),
                &"d".repeat(MAX_DECODER_LEN),
            )
            .unwrap()
        });
        let r = NearbyReport::new(at(), devices);
        assert_eq!(r.devices.len(), MAX_DEVICES);
        let json = serde_json::to_vec(&r).unwrap();
        assert!(json.len() <= MAX_REPORT_BYTES, "{}", json.len());
        assert_eq!(NearbyReport::parse(&json).unwrap(), r);
    }
}
