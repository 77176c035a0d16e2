//! The MQTT contract between bridges and gateways.
//!
//! - Records: `{prefix}/bridges/{bridge_id}/devices/{device_id}/records`, QoS 1, one JSON
//!   [`Batch`] per message.
//!
//! Every payload on these topics is sealed with the bridge–gateway channel key
//! ([`crate::channel`]): the JSON below is what is inside the seal.
//! - Acks: `{prefix}/bridges/{bridge_id}/acks`, one JSON [`Ack`] per committed batch. A bridge
//!   deletes a batch from its outbox only on this ack, never on PUBACK: brokers lose QoS-1
//!   messages when they crash.
//! - Pairing: `{prefix}/bridges/{bridge_id}/pairing/requests` ([`PairingRequest`], gateway to
//!   bridge: show this code) and `.../pairing/reports` ([`PairingReport`], bridge to gateway:
//!   what the device is).
//! - Nearby: `{prefix}/bridges/{bridge_id}/nearby` ([`crate::nearby::NearbyReport`], bridge to
//!   gateway, QoS 1, not retained: the devices the bridge sees, so an owner can pick one to pair).
//!
//! The prefix defaults to `phr/v1`; deployments (and tests sharing one broker) may change it.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::record::Record;
use crate::validate::Reason;

/// The envelope version this crate writes and accepts.
pub const ENVELOPE_VERSION: &str = "1.0";
/// The default topic prefix.
pub const DEFAULT_PREFIX: &str = "phr/v1";

/// One batch of records from one device through one bridge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub schema_version: String,
    pub bridge_id: String,
    pub device_id: String,
    pub batch_id: Uuid,
    pub records: Vec<Record>,
}

impl Batch {
    pub fn new(bridge_id: &str, device_id: &str, batch_id: Uuid, records: Vec<Record>) -> Self {
        Self {
            schema_version: ENVELOPE_VERSION.to_owned(),
            bridge_id: bridge_id.to_owned(),
            device_id: device_id.to_owned(),
            batch_id,
            records,
        }
    }
}

/// What a bridge signs to connect to the embedded broker: SHA-256 of `phr-mqtt-connect-v1`,
/// its bridge id and its MQTT client id. The signature is the MQTT password, the bridge id
/// the user name.
pub fn connect_digest(bridge_id: &str, client_id: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(format!("phr-mqtt-connect-v1\n{bridge_id}\n{client_id}\n").as_bytes()).into()
}

/// A batch as the gateway first reads it: the envelope typed, each record left raw so that one
/// malformed record is rejected alone instead of failing the whole batch.
#[derive(Debug, Deserialize)]
pub struct RawBatch<'a> {
    pub schema_version: String,
    pub bridge_id: String,
    pub device_id: String,
    pub batch_id: Uuid,
    #[serde(borrow)]
    pub records: Vec<&'a RawValue>,
}

/// What happened to one record of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordOutcome {
    Stored,
    Duplicate,
    /// Valid, but no binding covers its measured time: kept apart, attributed to nobody.
    Quarantined,
    Rejected,
}

/// One rejected record: its position in the batch, its id if it had one, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_id: Option<Uuid>,
    pub reason: Reason,
    /// A short, data-free explanation (for malformed records: the parser's message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The gateway's answer to a batch, sent once the batch's effects are durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Ack {
    /// `None` only when the batch was too broken to read its id.
    pub batch_id: Option<Uuid>,
    pub stored: u32,
    pub duplicate: u32,
    pub quarantined: u32,
    pub rejected: Vec<Rejection>,
    /// Set when the whole batch was refused; then every record counts as rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_error: Option<Reason>,
    pub acked_at: Option<DateTime<FixedOffset>>,
}

/// Gateway → bridge: show the code of this pairing for this device, and report what the
/// device is. The request carries no code: the bridge computes it from the channel key
/// ([`crate::channel::ChannelKey::pairing_code`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingRequest {
    pub pairing_id: Uuid,
    pub device_id: String,
    pub expires_at: DateTime<FixedOffset>,
}

/// Bridge → gateway: the identity of the device a pairing names, as the bridge read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingReport {
    pub pairing_id: Uuid,
    pub device_id: String,
    /// BLE address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Device Information serial number (0x2A25), where the device has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
}

/// Topic names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn records(&self, bridge_id: &str, device_id: &str) -> String {
        format!(
            "{}/bridges/{bridge_id}/devices/{device_id}/records",
            self.prefix
        )
    }

    /// The filter a gateway subscribes to.
    pub fn records_filter(&self) -> String {
        format!("{}/bridges/+/devices/+/records", self.prefix)
    }

    pub fn acks(&self, bridge_id: &str) -> String {
        format!("{}/bridges/{bridge_id}/acks", self.prefix)
    }

    /// Where the gateway sends a bridge its pairing requests.
    pub fn pairing_requests(&self, bridge_id: &str) -> String {
        format!("{}/bridges/{bridge_id}/pairing/requests", self.prefix)
    }

    /// Where a bridge reports the devices it was asked about.
    pub fn pairing_reports(&self, bridge_id: &str) -> String {
        format!("{}/bridges/{bridge_id}/pairing/reports", self.prefix)
    }

    /// The filter a gateway subscribes to for pairing reports.
    pub fn pairing_reports_filter(&self) -> String {
        format!("{}/bridges/+/pairing/reports", self.prefix)
    }

    /// Where a bridge reports the devices it sees nearby.
    pub fn nearby(&self, bridge_id: &str) -> String {
        format!("{}/bridges/{bridge_id}/nearby", self.prefix)
    }

    /// The filter a gateway subscribes to for nearby reports.
    pub fn nearby_filter(&self) -> String {
        format!("{}/bridges/+/nearby", self.prefix)
    }

    /// The bridge of a nearby topic.
    pub fn parse_nearby<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let bridge = topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("/bridges/")?
            .strip_suffix("/nearby")?;
        is_valid_id(bridge).then_some(bridge)
    }

    /// The bridge of a pairing-reports topic.
    pub fn parse_pairing_reports<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let bridge = topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("/bridges/")?
            .strip_suffix("/pairing/reports")?;
        is_valid_id(bridge).then_some(bridge)
    }

    /// `(bridge_id, device_id)` of a records topic, or `None` if the topic is not one.
    pub fn parse_records<'t>(&self, topic: &'t str) -> Option<(&'t str, &'t str)> {
        let rest = topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("/bridges/")?;
        let mut parts = rest.split('/');
        let bridge = parts.next()?;
        let devices = parts.next()?;
        let device = parts.next()?;
        let records = parts.next()?;
        if devices != "devices" || records != "records" || parts.next().is_some() {
            return None;
        }
        (is_valid_id(bridge) && is_valid_id(device)).then_some((bridge, device))
    }
}

/// Who may publish and subscribe to what, as a broker must enforce it (the embedded broker's
/// front in the gateway does; the shipped Mosquitto ACL in `docs/mosquitto/` says the same).
///
/// A bridge `b` may publish only its own records (`{prefix}/bridges/{b}/devices/{d}/records`,
/// `d` a valid device id), its own pairing reports and its own nearby reports, and subscribe
/// only to exactly its own acks and pairing requests: no wildcards, nothing of another
/// bridge, nothing outside the prefix. The gateway's own client may do anything; that is decided by the caller, not here.
impl Topics {
    /// Whether bridge `bridge` may publish on `topic`.
    pub fn bridge_may_publish(&self, bridge: &str, topic: &str) -> bool {
        is_valid_id(bridge)
            && (self.parse_records(topic).is_some_and(|(b, _)| b == bridge)
                || topic == self.pairing_reports(bridge)
                || topic == self.nearby(bridge))
    }

    /// Whether bridge `bridge` may subscribe to `filter` (compared exactly: a filter with a
    /// wildcard never equals one of the bridge's own topics, whose ids exclude `+` and `#`).
    pub fn bridge_may_subscribe(&self, bridge: &str, filter: &str) -> bool {
        is_valid_id(bridge)
            && (filter == self.acks(bridge) || filter == self.pairing_requests(bridge))
    }
}

/// Bridge and device ids appear in topics: 1 to 64 characters of `A-Z a-z 0-9 . _ : -`, so
/// never a topic separator or wildcard.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_topic_round_trips() {
        let t = Topics::default();
        let topic = t.records("bridge-1", "AA:BB:CC:DD:EE:FF");
        assert_eq!(
            topic,
            "phr/v1/bridges/bridge-1/devices/AA:BB:CC:DD:EE:FF/records"
        );
        assert_eq!(
            t.parse_records(&topic),
            Some(("bridge-1", "AA:BB:CC:DD:EE:FF"))
        );
    }

    #[test]
    fn foreign_or_malformed_topics_are_not_records_topics() {
        let t = Topics::new("phr/v1/");
        for bad in [
            "phr/v1/bridges/b/devices/d/acks",
            "phr/v1/bridges/b/devices/d/records/x",
            "phr/v2/bridges/b/devices/d/records",
            "phr/v1/bridges//devices/d/records",
            "phr/v1/bridges/b/devices/d+/records",
            "phr/v1/bridges/b",
        ] {
            assert_eq!(t.parse_records(bad), None, "{bad}");
        }
    }

    #[test]
    fn pairing_topics_round_trip() {
        let t = Topics::default();
        assert_eq!(
            t.parse_pairing_reports(&t.pairing_reports("br-1")),
            Some("br-1")
        );
        assert_eq!(t.parse_pairing_reports(&t.pairing_requests("br-1")), None);
        assert_eq!(
            t.parse_pairing_reports("phr/v1/bridges/a/b/pairing/reports"),
            None
        );
    }

    #[test]
    fn nearby_topics_round_trip() {
        let t = Topics::new("phr/v1/");
        assert_eq!(t.nearby("br-1"), "phr/v1/bridges/br-1/nearby");
        assert_eq!(t.nearby_filter(), "phr/v1/bridges/+/nearby");
        assert_eq!(t.parse_nearby("phr/v1/bridges/br-1/nearby"), Some("br-1"));
        for bad in [
            "phr/v1/bridges/a/b/nearby",
            "phr/v1/bridges//nearby",
            "phr/v1/bridges/+/nearby",
            "phr/v1/bridges/br-1/nearby/",
            "phr/v2/bridges/br-1/nearby",
            "phr/v1/bridges/br-1/pairing/reports",
        ] {
            assert_eq!(t.parse_nearby(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_bridge_publishes_only_its_own_records_and_reports() {
        let t = Topics::new("phr/v1");
        for ok in [
            "phr/v1/bridges/br-a/devices/AA:BB:CC:DD:EE:FF/records",
            "phr/v1/bridges/br-a/devices/band-1/records",
            "phr/v1/bridges/br-a/pairing/reports",
            "phr/v1/bridges/br-a/nearby",
        ] {
            assert!(t.bridge_may_publish("br-a", ok), "{ok}");
        }
        for bad in [
            // Another bridge's topics.
            "phr/v1/bridges/br-b/devices/band-1/records",
            "phr/v1/bridges/br-b/pairing/reports",
            "phr/v1/bridges/br-a2/pairing/reports",
            "phr/v1/bridges/br/devices/band-1/records",
            "phr/v1/bridges/br-b/nearby",
            "phr/v1/bridges/br-a2/nearby",
            "phr/v1/bridges/+/nearby",
            "phr/v1/bridges/br-a/nearby/",
            "phr/v1/bridges/br-a/nearby/x",
            "phr/v1/bridges/br-a/devices/band-1/nearby",
            "phr/v2/bridges/br-a/nearby",
            // What only the gateway sends.
            "phr/v1/bridges/br-a/acks",
            "phr/v1/bridges/br-a/pairing/requests",
            // Wildcards (not valid in a PUBLISH, and never one of its own topics).
            "phr/v1/bridges/+/devices/band-1/records",
            "phr/v1/bridges/br-a/devices/+/records",
            "phr/v1/bridges/br-a/devices/#",
            "phr/v1/bridges/br-a/pairing/#",
            "#",
            "$SYS/broker/clients",
            // Prefix confusion, extra or missing levels, trailing and doubled slashes.
            "phr/v2/bridges/br-a/pairing/reports",
            "phr/v1x/bridges/br-a/pairing/reports",
            "x/phr/v1/bridges/br-a/pairing/reports",
            "/phr/v1/bridges/br-a/pairing/reports",
            "phr/v1/bridges/br-a/pairing/reports/",
            "phr/v1/bridges/br-a/devices/band-1/records/",
            "phr/v1/bridges/br-a/devices/band-1/records/x",
            "phr/v1/bridges/br-a/devices//records",
            "phr/v1//bridges/br-a/pairing/reports",
            "phr/v1/bridges/br-a/devices/a/b/records",
            "",
        ] {
            assert!(!t.bridge_may_publish("br-a", bad), "{bad}");
        }
        // A bridge id that is not an id (a user name with a wildcard or separator) gets
        // nothing, even on a topic spelled with it.
        for bad_id in ["+", "#", "br/a", ""] {
            let topic = format!("phr/v1/bridges/{bad_id}/pairing/reports");
            assert!(!t.bridge_may_publish(bad_id, &topic), "{bad_id}");
        }
    }

    #[test]
    fn a_bridge_subscribes_only_to_exactly_its_own_acks_and_requests() {
        let t = Topics::new("phr/v1/");
        assert!(t.bridge_may_subscribe("br-a", "phr/v1/bridges/br-a/acks"));
        assert!(t.bridge_may_subscribe("br-a", "phr/v1/bridges/br-a/pairing/requests"));
        for bad in [
            "#",
            "+",
            "$SYS/#",
            "phr/#",
            "phr/v1/#",
            "phr/v1/bridges/#",
            "phr/v1/bridges/+/acks",
            "phr/v1/bridges/+/pairing/requests",
            "phr/v1/bridges/br-a/#",
            "phr/v1/bridges/br-a/+",
            "phr/v1/bridges/br-a/pairing/+",
            "phr/v1/bridges/br-b/acks",
            "phr/v1/bridges/br-b/pairing/requests",
            "phr/v1/bridges/br-a/devices/+/records",
            "phr/v1/bridges/br-a/devices/band-1/records",
            "phr/v1/bridges/br-a/pairing/reports",
            "phr/v1/bridges/br-a/nearby",
            "phr/v1/bridges/+/nearby",
            "phr/v1/bridges/br-a/acks/",
            "phr/v1/bridges/br-a/acks/#",
            "phr/v1//bridges/br-a/acks",
            "phr/v2/bridges/br-a/acks",
            "phr/v1x/bridges/br-a/acks",
            "",
        ] {
            assert!(!t.bridge_may_subscribe("br-a", bad), "{bad}");
        }
        assert!(!t.bridge_may_subscribe("+", "phr/v1/bridges/+/acks"));
        assert!(!t.bridge_may_subscribe("#", "phr/v1/bridges/#/acks"));
    }

    #[test]
    fn ids_exclude_wildcards_and_separators() {
        assert!(is_valid_id("sim-band-0001"));
        for bad in ["", "a/b", "a+b", "#", &"x".repeat(65), "é"] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }
}
