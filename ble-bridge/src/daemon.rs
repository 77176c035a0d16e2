//! `phr-bridge run`: the bridge as a daemon on a hub or a Raspberry Pi.
//!
//! The transport keeps the configured devices connected and hands over every value with the
//! time it arrived; the decoders turn bytes into readings, the normaliser into records. Each
//! device's records are batched (up to `batch_records`, or after `flush_after_ms`), signed
//! with the bridge's key and pushed to the durable outbox, which the publisher drains to the
//! gateway and empties only on the gateway's acks. While the gateway is unreachable the
//! bridge keeps measuring into the outbox (bounded; see [`crate::outbox`]). Device Information
//! (serial number) read at each connection feeds pairing.
//!
//! Records wait in memory at most `flush_after_ms` (1 s by default) before they are durable;
//! a crash in that second loses them unless the device still holds them (a band with a
//! history is asked again from each record type's own mark, which moves only with records of
//! that type, in the transaction that makes them durable). When the outbox refuses records (it is full: the gateway has been away for a
//! long time; or the disk fails) they stay in memory and are retried, up to [`MAX_PENDING`]
//! per device; beyond that the oldest are dropped and the log says how many.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use serde::Deserialize;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use phr_schema::{Record, RecordType, Topics};

use crate::cumulative::DayZone;
use crate::decode::{self, DeviceInfoField, Reading};
use crate::device_state::DeviceState;
use crate::identity::BridgeKey;
use crate::mqtt::MqttUrl;
use crate::normalise::normalise;
use crate::outbox::{batches, Mark, Outbox};
use crate::publish::{self, blocking, PublisherConfig, Status};
use crate::transport::{self, Event, TransportConfig};
use crate::{Error, Result};

/// The bridge's configuration file (TOML). Unknown keys are an error.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// This bridge's id: its topics, its pairing requests, its key's owner.
    pub bridge_id: String,
    /// Outbox, key and state.
    pub data_dir: PathBuf,
    pub mqtt_url: String,
    /// Static MQTT password, for a broker with a password file (Mosquitto, see
    /// `docs/mosquitto/`); unset, the bridge proves its id with its key (embedded broker).
    /// Better from the environment (`PHR_BRIDGE_MQTT_PASSWORD`) than in this file.
    pub mqtt_password: Option<crate::mqtt::MqttPassword>,
    /// With an `mqtts://` URL: the CA certificates (PEM) the broker's certificate must
    /// chain to.
    pub mqtt_ca_file: Option<PathBuf>,
    pub topic_prefix: String,
    /// The gateway's channel key, 64 hex characters (`phr-gateway bridges enrol` prints it).
    /// Required: every message to and from the gateway is sealed with it.
    pub gateway_key: String,
    /// The IANA time zone the devices' days follow (DST included), e.g. `America/New_York`,
    /// unless a device's own section says otherwise; unset: `Asia/Tokyo`. A band that reports
    /// its own time zone and DST offset (Local Time Information) wins over both.
    pub time_zone: Option<String>,
    /// Deprecated: a fixed UTC offset like `+09:00`, which cannot follow DST. Still read (as
    /// the bridge's zone) so old files work; not together with `time_zone`.
    pub utc_offset: Option<String>,
    /// Per device, by BLE address (case-insensitive): `[devices."C0:FF:EE:00:00:01"]`.
    pub devices: BTreeMap<String, DeviceConfig>,
    /// BLE addresses to connect to; empty means every device with a supported service.
    pub allow: Vec<String>,
    pub batch_records: usize,
    pub flush_after_ms: u64,
    pub outbox_max_batches: usize,
    /// Records the dead-letter table holds at most; at the bound refused batches stay
    /// pending in the outbox (see `ble-bridge/src/outbox.rs`).
    pub dead_letter_max_records: u64,
    /// The shortest time between two reports to the gateway of the devices in range (sent
    /// when the set changes, and unchanged every 5 minutes); 0: none are sent.
    pub nearby_interval_secs: u64,
}

/// One device's own settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The IANA zone (or offset) this device's days follow.
    pub time_zone: String,
}

/// The zone devices follow when nothing else is configured (the bridge's historic +09:00).
pub const DEFAULT_TIME_ZONE: &str = "Asia/Tokyo";

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            bridge_id: "bridge".into(),
            data_dir: PathBuf::from("phr-bridge-data"),
            mqtt_url: "mqtt://127.0.0.1:1883".into(),
            mqtt_password: None,
            mqtt_ca_file: None,
            topic_prefix: phr_schema::envelope::DEFAULT_PREFIX.into(),
            gateway_key: String::new(),
            time_zone: None,
            utc_offset: None,
            devices: BTreeMap::new(),
            allow: Vec::new(),
            batch_records: 60,
            flush_after_ms: 1000,
            outbox_max_batches: 100_000,
            dead_letter_max_records: crate::outbox::DEFAULT_MAX_DEAD_RECORDS,
            nearby_interval_secs: crate::nearby::DEFAULT_INTERVAL.as_secs(),
        }
    }
}

impl BridgeConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        let cfg: Self =
            toml::from_str(&text).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Catches what serde cannot: ids, URLs, offsets.
    pub fn check(&self) -> Result<()> {
        if !phr_schema::envelope::is_valid_id(&self.bridge_id) {
            return Err(Error::Io(
                "bridge_id must be 1-64 characters of A-Z a-z 0-9 . _ : -".into(),
            ));
        }
        self.mqtt()?;
        self.zone()?;
        for address in self.devices.keys() {
            self.zone_for(address)?;
        }
        self.gateway_key()?;
        if self.batch_records == 0 {
            return Err(Error::Io("batch_records must be at least 1".into()));
        }
        Ok(())
    }

    pub fn mqtt(&self) -> Result<MqttUrl> {
        let url = self
            .mqtt_url
            .parse::<MqttUrl>()
            .map(|u| u.with_password(self.mqtt_password.clone()))
            .map_err(|e: crate::mqtt::MqttUrlError| Error::Io(e.to_string()))?;
        match &self.mqtt_ca_file {
            Some(path) => url
                .with_ca_file(path)
                .map_err(|e| Error::Io(format!("mqtt_ca_file {}: {e}", path.display()))),
            None => Ok(url),
        }
    }

    /// The gateway's channel key.
    pub fn gateway_key(&self) -> Result<ed25519_dalek::VerifyingKey> {
        phr_schema::channel::key_from_hex(&self.gateway_key).ok_or_else(|| {
            Error::Io(
                "gateway_key must be the 64 hex characters `phr-gateway bridges enrol` prints"
                    .into(),
            )
        })
    }

    /// The bridge's zone: `time_zone`, else the deprecated `utc_offset`, else
    /// [`DEFAULT_TIME_ZONE`].
    pub fn zone(&self) -> Result<DayZone> {
        match (&self.time_zone, &self.utc_offset) {
            (Some(_), Some(_)) => Err(Error::Io(
                "time_zone and utc_offset both set; keep time_zone (utc_offset cannot follow DST)"
                    .into(),
            )),
            (Some(zone), None) => zone
                .parse()
                .map_err(|e: crate::cumulative::UnknownZone| Error::Io(format!("time_zone: {e}"))),
            (None, Some(offset)) => match offset.parse::<FixedOffset>() {
                Ok(o) => Ok(DayZone::Fixed(o)),
                Err(_) => Err(Error::Io(format!(
                    "utc_offset {offset:?} is not like +09:00 (better: time_zone = \"Asia/Tokyo\")"
                ))),
            },
            (None, None) => DEFAULT_TIME_ZONE
                .parse()
                .map_err(|e: crate::cumulative::UnknownZone| Error::Io(e.to_string())),
        }
    }

    /// The zone of the device at `address`: its own section's, else the bridge's.
    pub fn zone_for(&self, address: &str) -> Result<DayZone> {
        let own = self
            .devices
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(address));
        match own {
            Some((a, d)) => d
                .time_zone
                .parse()
                .map_err(|e: crate::cumulative::UnknownZone| {
                    Error::Io(format!("devices.{a:?}.time_zone: {e}"))
                }),
            None => self.zone(),
        }
    }
}

/// Records of one device held in memory while the outbox refuses them (full, or failing);
/// beyond this the oldest are dropped, with an error in the log.
pub const MAX_PENDING: usize = 10_000;

/// Records of one device waiting to be batched.
#[derive(Debug, Default)]
struct Pending {
    records: Vec<Record>,
    since: Option<Instant>,
}

/// Runs the bridge until `shutdown`.
pub async fn run(
    cfg: BridgeConfig,
    status: watch::Sender<Status>,
    shutdown: CancellationToken,
) -> Result<()> {
    cfg.check()?;
    if cfg.utc_offset.is_some() {
        warn!("utc_offset is deprecated: a fixed offset cannot follow DST; set time_zone (an IANA zone such as America/New_York)");
    }
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| Error::Io(format!("{}: {e}", cfg.data_dir.display())))?;
    let outbox = Arc::new(Mutex::new(
        Outbox::open(&cfg.data_dir.join("outbox.sqlite"), cfg.outbox_max_batches)?
            .with_max_dead_records(cfg.dead_letter_max_records),
    ));
    let key = Arc::new(BridgeKey::load_or_create(&cfg.data_dir)?);
    let identities: publish::Identities = Arc::new(RwLock::new(HashMap::new()));
    let wake = Arc::new(Notify::new());
    let (nearby_tx, nearby_rx) = watch::channel(None);
    let publisher = tokio::spawn(publish::run(
        PublisherConfig {
            mqtt: cfg.mqtt()?,
            bridge_id: cfg.bridge_id.clone(),
            topics: Topics::new(&cfg.topic_prefix),
            ack_timeout: Duration::from_secs(10),
            max_inflight: 32,
            identities: identities.clone(),
            key: key.clone(),
            gateway_key: cfg.gateway_key()?,
            nearby: (cfg.nearby_interval_secs > 0).then_some(nearby_rx),
            nearby_interval: Duration::from_secs(cfg.nearby_interval_secs),
        },
        outbox.clone(),
        wake.clone(),
        status.clone(),
        shutdown.child_token(),
    ));
    // History marks: per device and record type, the end of the latest durable measurement
    // of that type, on disk in the outbox's marks table, so a restarted bridge asks devices
    // for each history from the right place (live heart rate moves no steps mark).
    let marks: transport::HistoryMarks = Default::default();
    {
        let known = blocking(&outbox, |o| o.marks()).await?;
        if let Ok(mut m) = marks.write() {
            for (device, kind, until) in known {
                m.entry(device).or_default().insert(kind, until);
            }
        }
    }
    // Decoding state per device (PAMS sessions, running daily totals), saved with the records
    // it produced.
    let mut states: HashMap<String, DeviceState> = HashMap::new();
    for (device, json) in blocking(&outbox, |o| o.states()).await? {
        match DeviceState::from_json(&json, cfg.zone_for(&device)?) {
            Some(s) => {
                states.insert(device, s);
            }
            None => warn!(device_id = %device, "saved decoding state unreadable; starting afresh"),
        }
    }
    let (tx, mut events) = mpsc::channel::<Event>(4096);
    let transport_config = TransportConfig {
        allow: cfg.allow.clone(),
        history: marks.clone(),
        ..TransportConfig::default()
    };
    let transport = tokio::spawn(transport::run(transport_config, tx, shutdown.child_token()));
    info!(bridge_id = %cfg.bridge_id, broker = %cfg.mqtt_url, "bridge running");

    let flush_after = Duration::from_millis(cfg.flush_after_ms);
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            e = events.recv() => match e {
                None => break Err(Error::Bluetooth("the transport stopped".into())),
                Some(Event::Connected { address }) => {
                    if let Ok(mut ids) = identities.write() {
                        ids.entry(address.clone()).or_default().address = Some(address.clone());
                    }
                }
                Some(Event::Disconnected { .. }) => {}
                Some(Event::Nearby { seen, at }) => {
                    nearby_tx.send_replace(Some(crate::nearby::from_seen(&seen, at)));
                }
                Some(Event::Value { address, characteristic, bytes, received_at }) => {
                    match decode::decode(characteristic, &bytes, received_at) {
                        Ok((decoder, readings)) => {
                            let p = pending.entry(address.clone()).or_default();
                            let state = match states.entry(address.clone()) {
                                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                                std::collections::hash_map::Entry::Vacant(e) => e.insert(DeviceState::new(cfg.zone_for(&address)?)),
                            };
                            for r in readings {
                                if let Reading::DeviceInfo { field: DeviceInfoField::Serial, value } = &r {
                                    if let Ok(mut ids) = identities.write() {
                                        ids.entry(address.clone()).or_default().serial_number = Some(value.clone());
                                    }
                                }
                                let (readings, fx) = state.process(r);
                                if fx.dropped > 0 {
                                    tracing::error!(device_id = %address, dropped = fx.dropped, "PAMS summaries dropped: their session's start never came");
                                }
                                if fx.held > 0 {
                                    info!(device_id = %address, held = fx.held, "PAMS summary held until its session's start is known");
                                }
                                for r in &readings {
                                    let offset = state.offset_at(received_at);
                                    if let Some(record) = normalise(r, decoder, &address, &cfg.bridge_id, offset, received_at) {
                                        p.records.push(record);
                                        p.since.get_or_insert_with(Instant::now);
                                    }
                                }
                            }
                        }
                        Err(e) => warn!(%address, %characteristic, error = %e, "could not decode a value; dropped"),
                    }
                }
            },
            _ = tick.tick() => {}
        }
        // Flush devices whose batch is full or old enough.
        for (device, p) in pending.iter_mut() {
            let full = p.records.len() >= cfg.batch_records;
            let old = p.since.is_some_and(|s| s.elapsed() >= flush_after);
            if !(full || old) || p.records.is_empty() {
                continue;
            }
            let records = std::mem::take(&mut p.records);
            let b = batches(&cfg.bridge_id, device, records.clone(), cfg.batch_records);
            // Each type's mark moves only with records of that type, and only forward.
            let previous = marks
                .read()
                .ok()
                .and_then(|m| m.get(device).cloned())
                .unwrap_or_default();
            let moved = advance_marks(&previous, &records);
            // The state that produced these records, saved with them.
            let saved: Vec<_> = states
                .get(device)
                .map(|s| (device.clone(), s.to_json()))
                .into_iter()
                .collect();
            let (owned_device, to_save) = (device.clone(), moved.clone());
            let pushed = blocking(&outbox, move |o| {
                let marks: Vec<Mark<'_>> = to_save
                    .iter()
                    .map(|(kind, until)| Mark {
                        device_id: &owned_device,
                        record_type: *kind,
                        until: *until,
                    })
                    .collect();
                o.push_marked(&b, &marks, &saved, Utc::now())
            })
            .await;
            match pushed {
                Ok(()) => {
                    p.since = None;
                    if let Ok(mut marks) = marks.write() {
                        marks.entry(device.clone()).or_default().extend(moved);
                    }
                    wake.notify_one();
                }
                Err(e) => {
                    // Keep them and retry; shed only the oldest beyond the cap, loudly.
                    p.records = records;
                    let excess = p.records.len().saturating_sub(MAX_PENDING);
                    if excess > 0 {
                        p.records.drain(..excess);
                        tracing::error!(device_id = %device, dropped = excess, "outbox unavailable for too long; dropped the oldest records held in memory");
                    }
                    warn!(device_id = %device, error = %e, held = p.records.len(), "could not queue records; holding them and retrying");
                }
            }
        }
    };
    shutdown.cancel();
    let _ = transport.await;
    let _ = publisher.await;
    result
}

/// The marks that `records` move: per record type, the latest measured end among them, where
/// it is past that type's `previous` mark (late or out-of-order data moves nothing back, and
/// one type never moves another's).
pub fn advance_marks(
    previous: &BTreeMap<RecordType, DateTime<Utc>>,
    records: &[Record],
) -> BTreeMap<RecordType, DateTime<Utc>> {
    let mut out: BTreeMap<RecordType, DateTime<Utc>> = BTreeMap::new();
    for r in records {
        let end = r.measured().1.with_timezone(&Utc);
        let kind = r.record_type();
        if previous.get(&kind).is_some_and(|p| *p >= end) {
            continue;
        }
        out.entry(kind)
            .and_modify(|m| *m = (*m).max(end))
            .or_insert(end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_mistakes_are_named() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bridge.example.toml");
        let cfg = BridgeConfig::from_file(&path).unwrap();
        assert_eq!(cfg.gateway_key().unwrap().as_bytes().len(), 32);
        // The example shows the defaults (its time_zone is the default zone, written out;
        // its device section is an example of one).
        assert_eq!(cfg.zone().unwrap(), BridgeConfig::default().zone().unwrap());
        assert_eq!(
            cfg.zone_for("C0:FF:EE:00:00:01").unwrap().to_string(),
            "America/New_York"
        );
        assert_eq!(
            BridgeConfig {
                gateway_key: String::new(),
                time_zone: None,
                devices: BTreeMap::new(),
                ..cfg
            },
            BridgeConfig::default()
        );
        assert!(
            toml::from_str::<BridgeConfig>("bridgeid = \"x\"").is_err(),
            "unknown keys are refused"
        );
        let bad = |c: BridgeConfig| c.check().unwrap_err().to_string();
        assert!(bad(BridgeConfig {
            bridge_id: "a/b".into(),
            ..Default::default()
        })
        .contains("bridge_id"));
        assert!(bad(BridgeConfig {
            mqtt_url: "http://x".into(),
            ..Default::default()
        })
        .contains("mqtt://"));
        assert!(bad(BridgeConfig {
            utc_offset: Some("JST".into()),
            ..Default::default()
        })
        .contains("utc_offset"));
        assert!(bad(BridgeConfig {
            time_zone: Some("America/Nowhere".into()),
            ..Default::default()
        })
        .contains("time_zone"));
        assert!(bad(BridgeConfig {
            time_zone: Some("Europe/Berlin".into()),
            utc_offset: Some("+01:00".into()),
            ..Default::default()
        })
        .contains("both"));
        let mut devices = BTreeMap::new();
        devices.insert(
            "C0:FF:EE:00:00:01".to_owned(),
            DeviceConfig {
                time_zone: "Mars/Base".into(),
            },
        );
        assert!(bad(BridgeConfig {
            devices,
            ..Default::default()
        })
        .contains("devices"));
    }

    #[test]
    fn zones_come_from_the_device_then_the_bridge_then_the_default() {
        let cfg: BridgeConfig = toml::from_str(
            r#"
            time_zone = "America/New_York"
            [devices."c0:ff:ee:00:00:01"]
            time_zone = "Europe/Berlin"
            "#,
        )
        .unwrap();
        assert_eq!(
            cfg.zone_for("C0:FF:EE:00:00:01").unwrap().to_string(),
            "Europe/Berlin"
        );
        assert_eq!(
            cfg.zone_for("C0:FF:EE:00:00:02").unwrap().to_string(),
            "America/New_York"
        );
        assert_eq!(
            BridgeConfig::default().zone().unwrap().to_string(),
            "Asia/Tokyo"
        );
        // A file of the previous bridge still reads, as a fixed offset.
        let old: BridgeConfig = toml::from_str(r#"utc_offset = "-05:00""#).unwrap();
        assert_eq!(old.zone().unwrap().to_string(), "-05:00");
        assert!(toml::from_str::<BridgeConfig>("[devices.x]\ntimezone = \"UTC\"").is_err());
    }

    fn record(kind: RecordType, end: &str) -> Record {
        use phr_schema::record::{HeartRate, IntervalFrame, PointFrame, Provenance, StepCount};
        let end = DateTime::parse_from_rfc3339(end).unwrap();
        let body = match kind {
            RecordType::HeartRate => phr_schema::Body::HeartRate(HeartRate {
                effective_time_frame: PointFrame { date_time: end },
                heart_rate: phr_schema::UnitValue::new(70.0, phr_schema::record::BEATS_PER_MINUTE),
            }),
            _ => phr_schema::Body::StepCount(StepCount {
                effective_time_frame: IntervalFrame::new(end - chrono::TimeDelta::minutes(1), end),
                step_count: 10,
            }),
        };
        Record::new("band", "bridge", end, Provenance::sensed("test/1"), body)
    }

    /// Issue #13, problem 4: live heart rate moves the heart-rate mark only.
    #[test]
    fn each_type_moves_only_its_own_mark_and_only_forward() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let previous = BTreeMap::from([(RecordType::StepCount, t("2026-01-01T10:00:00Z"))]);
        let live = [record(RecordType::HeartRate, "2026-01-01T11:30:00Z")];
        assert_eq!(
            advance_marks(&previous, &live),
            BTreeMap::from([(RecordType::HeartRate, t("2026-01-01T11:30:00Z"))])
        );
        let mixed = [
            record(RecordType::StepCount, "2026-01-01T09:00:00Z"), // late: moves nothing back
            record(RecordType::StepCount, "2026-01-01T10:05:00Z"),
            record(RecordType::StepCount, "2026-01-01T10:03:00Z"),
        ];
        assert_eq!(
            advance_marks(&previous, &mixed),
            BTreeMap::from([(RecordType::StepCount, t("2026-01-01T10:05:00Z"))])
        );
        assert!(advance_marks(&previous, &mixed[..1]).is_empty());
    }
}
