//! The nearby report: after each scan the bridge tells the gateway which wearables it sees
//! (`{prefix}/bridges/{bridge_id}/nearby`, see [`phr_schema::nearby`]), so that an owner
//! pairing a band picks it from a list instead of typing its id.
//!
//! Scans come often (the simulator after every round, the BLE transport every
//! [`SNAPSHOT_EVERY`]); what goes out is paced by [`Pacer`]: a report is sent when the set of
//! devices changed, at most once every `min_interval` (`nearby_interval_secs`, default
//! [`DEFAULT_INTERVAL`]), and the unchanged set again every [`REFRESH`] so the gateway's copy
//! does not go stale (it stops listing a report after ten minutes). The scanner only
//! replaces the latest scan in a [`Latest`] channel; the publisher, which owns the MQTT
//! client, seals and sends (QoS 1, not retained). Sans-io: the pacer takes the time.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;

use phr_schema::{NearbyDevice, NearbyReport};

use crate::sim::SimBand;
use crate::transport::Seen;

/// Shortest time between two reports unless configured otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// An unchanged set is sent again after this (the gateway shows reports up to ten minutes old).
pub const REFRESH: Duration = Duration::from_secs(5 * 60);
/// How often the BLE transport lists what it sees.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(10);
/// The decoder name simulated bands report (the reference band's vendor protocol).
pub const SIM_DECODER: &str = "phr-reference-band/1";

/// The latest scan, written by the scanner, read by the publisher.
pub type Latest = watch::Receiver<Option<NearbyReport>>;

/// Decides when a scan is worth a report.
#[derive(Debug, Clone)]
pub struct Pacer {
    min_interval: Duration,
    refresh: Duration,
    last: Option<(Instant, BTreeSet<String>)>,
}

impl Pacer {
    /// Reports at most once every `min_interval`; an unchanged set again after [`REFRESH`]
    /// (or `min_interval`, if longer).
    pub fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            refresh: REFRESH.max(min_interval),
            last: None,
        }
    }

    /// Whether `report` should be sent at `now`.
    pub fn due(&self, report: &NearbyReport, now: Instant) -> bool {
        let Some((at, ids)) = &self.last else {
            return true;
        };
        let since = now.saturating_duration_since(*at);
        let changed = report
            .device_ids()
            .into_iter()
            .ne(ids.iter().map(String::as_str));
        (changed && since >= self.min_interval) || since >= self.refresh
    }

    /// `report` went out at `now`.
    pub fn sent(&mut self, report: &NearbyReport, now: Instant) {
        let ids = report.device_ids().into_iter().map(str::to_owned).collect();
        self.last = Some((now, ids));
    }
}

/// What a bridge running simulated bands sees: each band, with its id, a name, a steady
/// signal per band, and the reference band's decoder.
pub fn simulated(bands: &[SimBand], at: DateTime<Utc>) -> NearbyReport {
    NearbyReport::new(
        at.fixed_offset(),
        bands.iter().enumerate().filter_map(|(i, b)| {
            let name = format!("PHR band {}", b.device_id.trim_start_matches("sim-band-"));
            let rssi = -45 - i16::try_from(i % 40).unwrap_or(0);
            NearbyDevice::new(&b.device_id, Some(&name), Some(rssi), SIM_DECODER)
        }),
    )
}

/// What the BLE transport sees: each device it can read, by the id its records carry (its
/// address), with its advertised name, signal and the decoder that reads it.
pub fn from_seen(seen: &[Seen], at: DateTime<Utc>) -> NearbyReport {
    NearbyReport::new(
        at.fixed_offset(),
        seen.iter().filter_map(|s| {
            let decoder = s.primary_decoder()?;
            NearbyDevice::new(&s.address, s.name.as_deref(), s.rssi, decoder)
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cumulative::DayZone;

    fn report(ids: &[&str]) -> NearbyReport {
        NearbyReport::new(
            Utc::now().fixed_offset(),
            ids.iter()
                .map(|id| NearbyDevice::new(id, None, Some(-50), "pams").unwrap()),
        )
    }

    #[test]
    fn the_first_scan_goes_out_then_only_changes_and_refreshes_paced() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut p = Pacer::new(s(30));
        let a = report(&["band-1", "band-2"]);
        assert!(p.due(&a, t0));
        p.sent(&a, t0);
        // The same set: not before the refresh.
        assert!(!p.due(&a, t0 + s(31)));
        assert!(!p.due(&a, t0 + REFRESH - s(1)));
        assert!(p.due(&a, t0 + REFRESH));
        // Another set (order does not matter, membership does): not within 30 s.
        let reordered = report(&["band-2", "band-1"]);
        assert!(!p.due(&reordered, t0 + s(31)));
        let b = report(&["band-1"]);
        assert!(!p.due(&b, t0 + s(29)));
        assert!(p.due(&b, t0 + s(30)));
        p.sent(&b, t0 + s(30));
        assert!(!p.due(&a, t0 + s(59)));
        assert!(p.due(&a, t0 + s(60)));
        // An empty scan after a full one is a change too.
        assert!(p.due(&report(&[]), t0 + s(60)));
    }

    #[test]
    fn ble_devices_are_reported_by_address_with_their_decoder() {
        let hr = crate::decode::heart_rate::SERVICE;
        let seen = [
            Seen {
                address: "C0:FF:EE:00:00:01".into(),
                name: Some("HR \u{202E}strap\n".into()),
                rssi: Some(-70),
                services: vec![hr],
            },
            Seen {
                address: "C0:FF:EE:00:00:02".into(),
                name: None,
                rssi: Some(-40),
                services: vec![hr, crate::decode::sim_band::SERVICE],
            },
            // Nothing the bridge can read: not offered for pairing.
            Seen {
                address: "C0:FF:EE:00:00:03".into(),
                name: Some("Speaker".into()),
                rssi: Some(-30),
                services: vec![],
            },
        ];
        let r = from_seen(&seen, Utc::now());
        assert_eq!(r.check(), Ok(()));
        let got: Vec<(&str, Option<&str>, &str)> = r
            .devices
            .iter()
            .map(|d| (d.device_id.as_str(), d.name.as_deref(), d.decoder.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("C0:FF:EE:00:00:02", None, SIM_DECODER),
                (
                    "C0:FF:EE:00:00:01",
                    Some("HR strap"),
                    "heart-rate-measurement/1"
                ),
            ]
        );
    }

    #[test]
    fn a_long_interval_stretches_the_refresh() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Duration::from_secs(600));
        let a = report(&["band-1"]);
        p.sent(&a, t0);
        assert!(!p.due(&a, t0 + REFRESH));
        assert!(p.due(&a, t0 + Duration::from_secs(600)));
    }

    #[test]
    fn simulated_bands_are_reported_with_their_ids() {
        let bands: Vec<SimBand> = (0..3)
            .map(|i| SimBand::new(i, 1, DayZone::Iana(chrono_tz::Asia::Tokyo)))
            .collect();
        let r = simulated(&bands, Utc::now());
        assert_eq!(r.check(), Ok(()));
        let ids: Vec<&str> = r.devices.iter().map(|d| d.device_id.as_str()).collect();
        assert_eq!(ids, ["sim-band-0000", "sim-band-0001", "sim-band-0002"]);
        assert_eq!(r.devices[1].name.as_deref(), Some("PHR band 0001"));
        assert!(r.devices.iter().all(|d| d.decoder == SIM_DECODER));
        // A large fleet is cut to the report's bound.
        let many: Vec<SimBand> = (0..50)
            .map(|i| SimBand::new(i, 1, DayZone::Iana(chrono_tz::Asia::Tokyo)))
            .collect();
        assert_eq!(simulated(&many, Utc::now()).devices.len(), 32);
    }
}
