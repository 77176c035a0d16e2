//! The Bluetooth LE transport: what it reports ([`Event`], [`Seen`]), what it asks devices for
//! and how it is configured, in plain types that build without Bluetooth (the nearby report
//! and the simulated bridge use them); and, with feature `ble`, the transport itself
//! ([`run`], [`scan`]): the only module that imports btleplug, in `ble.rs`.
//!
//! # Layout
//! - this file: the transport's events and configuration, the history it asks for.
//! - `ble.rs` (feature `ble`): btleplug (which reaches BlueZ over the D-Bus system bus;
//!   `DBUS_SYSTEM_BUS_ADDRESS` chooses the bus, which is how the tests use an emulated BlueZ).
//!   [`run`] is a supervisor: it scans continuously, starts one task per wanted device, and
//!   keeps it alive. A device task connects, discovers services, reads the characteristics
//!   that identify the device (Device Information serial number, battery), subscribes to
//!   every characteristic a decoder knows, and forwards each value as an [`Event`] with the
//!   time it arrived. When the device disconnects (walks out of range) or the task fails or
//!   panics, the supervisor starts it again after a backoff that grows to `backoff_max`; a
//!   device that comes back is re-discovered and its services discovered again. Nothing here
//!   decodes: bytes go out as they came in.

#[cfg(feature = "ble")]
mod ble;

#[cfg(feature = "ble")]
pub use ble::{adapter, run, scan};

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::decode::sim_band::HistoryKind;
use crate::decode::{self, uuid16};
use phr_schema::RecordType;

/// Device Information: Serial Number String, read at every connection (pairing uses it).
pub const SERIAL_NUMBER: Uuid = uuid16(0x2A25);
/// Battery Level, read at every connection.
pub const BATTERY_LEVEL: Uuid = uuid16(0x2A19);

/// Characteristics read at every connection, where the device has them: the serial number
/// (pairing), the battery, the running PAMS session (the anchor of PAMS summaries' times),
/// the device's Local Time Information (its midnight; read before the step total it places)
/// and the running daily step total (a baseline for the next one).
pub const READ_AT_CONNECT: [Uuid; 5] = [
    SERIAL_NUMBER,
    BATTERY_LEVEL,
    decode::pams_session::ACTIVITY_CURRENT_SESSION,
    decode::local_time::CHARACTERISTIC,
    decode::sim_band::STEPS_TODAY,
];

/// Services that make a device worth connecting to.
pub fn supported_services() -> Vec<Uuid> {
    vec![
        decode::heart_rate::SERVICE,
        decode::battery::SERVICE,
        decode::sim_band::SERVICE,
        uuid16(0x183E), // Physical Activity Monitor
    ]
}

/// A device seen while scanning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub address: String,
    pub name: Option<String>,
    pub rssi: Option<i16>,
    pub services: Vec<Uuid>,
}

impl Seen {
    /// Names of the decoders that can read this device's advertised services.
    pub fn decoders(&self) -> Vec<&'static str> {
        let supported = supported_services();
        let mut names: Vec<&'static str> = self
            .services
            .iter()
            .filter(|s| supported.contains(s))
            .map(|s| match *s {
                s if s == decode::heart_rate::SERVICE => decode::heart_rate::NAME,
                s if s == decode::battery::SERVICE => decode::battery::NAME,
                s if s == decode::sim_band::SERVICE => "phr-reference-band/1",
                _ => "pams",
            })
            .collect();
        names.dedup();
        names
    }

    /// The decoder that reads most of this device, for the nearby report: the reference
    /// band's protocol, else PAMS, else Heart Rate, else Battery; `None` if none can.
    pub fn primary_decoder(&self) -> Option<&'static str> {
        let names = self.decoders();
        [
            "phr-reference-band/1",
            "pams",
            decode::heart_rate::NAME,
            decode::battery::NAME,
        ]
        .into_iter()
        .find(|n| names.contains(n))
    }
}

/// What the transport reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Connected {
        address: String,
    },
    Disconnected {
        address: String,
    },
    /// A characteristic's value, notified or read, with the time it arrived.
    Value {
        address: String,
        characteristic: Uuid,
        bytes: Vec<u8>,
        received_at: DateTime<Utc>,
    },
    /// What the scan sees now (every [`crate::nearby::SNAPSHOT_EVERY`]): the wanted devices
    /// BlueZ knows, strongest first.
    Nearby {
        seen: Vec<Seen>,
        at: DateTime<Utc>,
    },
}

/// Per device (by address) and record type, the end of the latest measurement of that type
/// already durable: the bridge asks a device for each history from its own type's mark at
/// every connection.
pub type HistoryMarks = std::sync::Arc<
    std::sync::RwLock<HashMap<String, std::collections::BTreeMap<RecordType, DateTime<Utc>>>>,
>;

/// The history requests for a device whose marks are `marks`, one per kind the band keeps,
/// each from its own type's mark (`default` where a type has none yet).
pub fn history_requests(
    marks: Option<&std::collections::BTreeMap<RecordType, DateTime<Utc>>>,
    default: DateTime<Utc>,
) -> Vec<(HistoryKind, DateTime<Utc>)> {
    HistoryKind::ALL
        .into_iter()
        .map(|kind| {
            let since = marks
                .and_then(|m| m.get(&kind.record_type()).copied())
                .unwrap_or(default);
            (kind, since)
        })
        .collect()
}

/// How far back a device is asked for history when the bridge has nothing of it yet.
pub const FIRST_HISTORY: chrono::TimeDelta = chrono::TimeDelta::days(7);

#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Addresses to connect to; empty means every device advertising a supported service.
    pub allow: Vec<String>,
    pub history: HistoryMarks,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            history: HistoryMarks::default(),
            connect_timeout: Duration::from_secs(20),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue #13, problem 4: live heart rate after a disconnect has moved only the
    /// heart-rate mark; steps and sleep are asked for from their own marks.
    #[test]
    fn each_history_is_asked_for_from_its_own_mark() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let default = t("2026-01-01T00:00:00Z");
        let marks = std::collections::BTreeMap::from([
            (RecordType::StepCount, t("2026-01-08T09:59:00Z")),
            (RecordType::HeartRate, t("2026-01-08T11:30:00Z")),
        ]);
        assert_eq!(
            history_requests(Some(&marks), default),
            vec![
                (HistoryKind::Activity, t("2026-01-08T09:59:00Z")),
                (HistoryKind::Sleep, default),
            ]
        );
        assert_eq!(
            history_requests(None, default),
            vec![
                (HistoryKind::Activity, default),
                (HistoryKind::Sleep, default)
            ]
        );
    }
}
