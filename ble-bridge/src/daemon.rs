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
//! a crash in that second loses them unless the device still holds them (history sync, not
//! built yet). When the outbox refuses records (it is full: the gateway has been away for a
//! long time; or the disk fails) they stay in memory and are retried, up to [`MAX_PENDING`]
//! per device; beyond that the oldest are dropped and the log says how many.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{FixedOffset, Utc};
use serde::Deserialize;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use phr_schema::{Record, Topics};

use crate::decode::{self, DeviceInfoField, Reading};
use crate::device_state::DeviceState;
use crate::identity::BridgeKey;
use crate::mqtt::MqttUrl;
use crate::normalise::normalise;
use crate::outbox::{batches, Outbox};
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
    /// The UTC offset the devices' clocks and days follow, e.g. `+09:00`.
    pub utc_offset: String,
    /// BLE addresses to connect to; empty means every device with a supported service.
    pub allow: Vec<String>,
    pub batch_records: usize,
    pub flush_after_ms: u64,
    pub outbox_max_batches: usize,
}

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
            utc_offset: "+09:00".into(),
            allow: Vec::new(),
            batch_records: 60,
            flush_after_ms: 1000,
            outbox_max_batches: 100_000,
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
        self.offset()?;
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

    pub fn offset(&self) -> Result<FixedOffset> {
        self.utc_offset.parse().map_err(|_| {
            Error::Io(format!(
                "utc_offset {:?} is not like +09:00",
                self.utc_offset
            ))
        })
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
    let offset = cfg.offset()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| Error::Io(format!("{}: {e}", cfg.data_dir.display())))?;
    let outbox = Arc::new(Mutex::new(Outbox::open(
        &cfg.data_dir.join("outbox.sqlite"),
        cfg.outbox_max_batches,
    )?));
    let key = Arc::new(BridgeKey::load_or_create(&cfg.data_dir)?);
    let identities: publish::Identities = Arc::new(RwLock::new(HashMap::new()));
    let wake = Arc::new(Notify::new());
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
        },
        outbox.clone(),
        wake.clone(),
        status.clone(),
        shutdown.child_token(),
    ));
    // History marks: the end of the latest durable measurement per device, on disk in the
    // outbox's cursor table, so a restarted bridge asks devices for the right history.
    let marks: transport::HistoryMarks = Default::default();
    {
        let known = blocking(&outbox, |o| o.cursors()).await?;
        if let Ok(mut m) = marks.write() {
            m.extend(known);
        }
    }
    // Decoding state per device (PAMS sessions, running daily totals), saved with the records
    // it produced.
    let mut states: HashMap<String, DeviceState> = HashMap::new();
    for (device, json) in blocking(&outbox, |o| o.states()).await? {
        match DeviceState::from_json(&json, offset) {
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
                Some(Event::Value { address, characteristic, bytes, received_at }) => {
                    match decode::decode(characteristic, &bytes, received_at) {
                        Ok((decoder, readings)) => {
                            let p = pending.entry(address.clone()).or_default();
                            let state = states.entry(address.clone()).or_insert_with(|| DeviceState::new(offset));
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
            // The mark only moves forward: late or out-of-order data must not move it back.
            let previous = marks.read().ok().and_then(|m| m.get(device).copied());
            let newest = records
                .iter()
                .map(|r| r.measured().1.with_timezone(&Utc))
                .max();
            let mark = newest.into_iter().chain(previous).max();
            let cursors: Vec<_> = mark.map(|m| (device.clone(), m)).into_iter().collect();
            // The state that produced these records, saved with them.
            let saved: Vec<_> = states
                .get(device)
                .map(|s| (device.clone(), s.to_json()))
                .into_iter()
                .collect();
            match blocking(&outbox, move |o| o.push(&b, &cursors, &saved, Utc::now())).await {
                Ok(()) => {
                    p.since = None;
                    if let (Some(m), Ok(mut marks)) = (mark, marks.write()) {
                        marks.insert(device.clone(), m);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_mistakes_are_named() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bridge.example.toml");
        let cfg = BridgeConfig::from_file(&path).unwrap();
        assert_eq!(cfg.gateway_key().unwrap().as_bytes().len(), 32);
        assert_eq!(
            BridgeConfig {
                gateway_key: String::new(),
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
            utc_offset: "JST".into(),
            ..Default::default()
        })
        .contains("utc_offset"));
    }
}
