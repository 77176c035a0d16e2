//! `phr-bridge simulate`: simulated wearables feeding the real bridge pipeline.
//!
//! Each band produces GATT notification bytes ([`crate::sim`]); they go through the same
//! decoders and normaliser a real device's bytes take, into the durable outbox, and out
//! through the publisher. A per-device high-water mark in the outbox means a restarted bridge
//! resumes where it stopped: nothing generated twice on purpose, nothing skipped.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use phr_schema::Topics;

use crate::cumulative::DayZone;
use crate::identity::BridgeKey;
use crate::mqtt::MqttUrl;
use crate::outbox::{batches, Outbox};
use crate::publish::{self, blocking, PublisherConfig, Status};
use crate::sim::SimBand;
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct SimulateConfig {
    pub bridge_id: String,
    pub devices: usize,
    pub seed: u64,
    /// The bands' zone: their days, nights and daily totals follow its local time, DST
    /// included (a fixed offset only where one is asked for). Default: the bridge's,
    /// Asia/Tokyo.
    pub time_zone: DayZone,
    pub data_dir: PathBuf,
    pub mqtt: MqttUrl,
    pub topic_prefix: String,
    /// How much history a band holds when the bridge first meets it.
    pub history: TimeDelta,
    /// Stop generating at this instant (tests, benchmarks); `None` runs live.
    pub until: Option<DateTime<Utc>>,
    /// How often live data is generated.
    pub tick: Duration,
    /// Records per batch (60 minute-level records is an hour of steps).
    pub batch_records: usize,
    pub outbox_max_batches: usize,
    pub ack_timeout: Duration,
    pub max_inflight: usize,
    /// With `until`: return once everything generated has been acked.
    pub exit_when_drained: bool,
    /// The gateway's channel key (`phr-gateway bridges enrol` prints it): every message to
    /// and from the gateway is sealed with the key derived from it and this bridge's key.
    pub gateway_key: Option<ed25519_dalek::VerifyingKey>,
    /// The shortest time between two nearby reports (the bands, after each round); `None`:
    /// none are sent.
    pub nearby_interval: Option<Duration>,
    /// `(band, other)`: band number `band` is worn by the same person as band `other`
    /// ([`SimBand::worn_with`]); the demo's person wears two bands.
    pub worn_with: Vec<(usize, usize)>,
}

impl SimulateConfig {
    /// Defaults for `devices` bands under `bridge_id`, data kept in `data_dir`.
    pub fn new(bridge_id: &str, devices: usize, data_dir: PathBuf, mqtt: MqttUrl) -> Self {
        Self {
            bridge_id: bridge_id.to_owned(),
            devices,
            seed: 1,
            time_zone: DayZone::Iana(chrono_tz::Asia::Tokyo),
            data_dir,
            mqtt,
            topic_prefix: phr_schema::envelope::DEFAULT_PREFIX.to_owned(),
            history: TimeDelta::hours(24),
            until: None,
            tick: Duration::from_secs(60),
            batch_records: 60,
            outbox_max_batches: 100_000,
            ack_timeout: Duration::from_secs(10),
            max_inflight: 32,
            exit_when_drained: false,
            gateway_key: None,
            worn_with: Vec::new(),
            nearby_interval: Some(crate::nearby::DEFAULT_INTERVAL),
        }
    }

    /// The bands this configuration simulates.
    pub fn bands(&self) -> Vec<SimBand> {
        let id = |i: usize| SimBand::new(i, self.seed, self.time_zone).device_id;
        (0..self.devices)
            .map(|i| {
                let band = SimBand::new(i, self.seed, self.time_zone);
                match self.worn_with.iter().find(|(b, _)| *b == i) {
                    Some((_, other)) => band.worn_with(&id(*other)),
                    None => band,
                }
            })
            .collect()
    }
}

/// Runs the simulated bridge until `shutdown`, or until drained when so configured.
/// Progress (outbox depth, acks) is published through `status` while it runs.
pub async fn run(
    cfg: SimulateConfig,
    status: watch::Sender<Status>,
    shutdown: CancellationToken,
) -> Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| Error::Io(format!("creating {}: {e}", cfg.data_dir.display())))?;
    let outbox = Arc::new(Mutex::new(Outbox::open(
        &cfg.data_dir.join("outbox.sqlite"),
        cfg.outbox_max_batches,
    )?));
    let key = Arc::new(BridgeKey::load_or_create(&cfg.data_dir)?);
    let gateway_key = cfg.gateway_key.ok_or_else(|| {
        Error::Io(format!(
            "no gateway key: enrol this bridge (public key {}) at the gateway with \
             `phr-gateway bridges enrol`, then pass the key it prints as --gateway-key",
            key.public_hex()
        ))
    })?;
    let wake = Arc::new(Notify::new());
    let publisher_stop = shutdown.child_token();
    // Every round "scans" the bands: they are all in range, always.
    let (nearby_tx, nearby_rx) = watch::channel(None);
    let publisher = tokio::spawn(publish::run(
        PublisherConfig {
            mqtt: cfg.mqtt.clone(),
            bridge_id: cfg.bridge_id.clone(),
            topics: Topics::new(&cfg.topic_prefix),
            ack_timeout: cfg.ack_timeout,
            max_inflight: cfg.max_inflight,
            identities: std::sync::Arc::new(std::sync::RwLock::new(
                cfg.bands()
                    .iter()
                    .map(|b| (b.device_id.clone(), b.identity()))
                    .collect(),
            )),
            key: key.clone(),
            gateway_key,
            nearby: cfg.nearby_interval.map(|_| nearby_rx),
            nearby_interval: cfg
                .nearby_interval
                .unwrap_or(crate::nearby::DEFAULT_INTERVAL),
        },
        outbox.clone(),
        wake.clone(),
        status.clone(),
        publisher_stop.clone(),
    ));
    let bands = cfg.bands();
    info!(bridge_id = %cfg.bridge_id, devices = bands.len(), broker = %cfg.mqtt, "simulated bridge started");
    let mut status_rx = status.subscribe();
    let result = 'run: loop {
        let now = Utc::now()
            .duration_trunc(TimeDelta::minutes(1))
            .unwrap_or_else(|_| Utc::now());
        let end = cfg.until.map_or(now, |u| u.min(now));
        let (mut done, mut full) = (true, false);
        for band in &bands {
            match generate(&cfg, band, &outbox, end).await {
                Ok(complete) => done &= complete,
                Err(Error::OutboxFull { depth, max }) => {
                    warn!(device_id = %band.device_id, depth, max, "outbox full; holding new data until the gateway acks");
                    (done, full) = (false, true);
                }
                Err(e) => break 'run Err(e),
            }
        }
        wake.notify_one();
        nearby_tx.send_replace(Some(crate::nearby::simulated(&bands, Utc::now())));
        if done && cfg.until.is_some() && cfg.exit_when_drained {
            // Ask the outbox itself: a status snapshot may predate the last push.
            loop {
                if blocking(&outbox, |o| o.depth()).await? == 0 {
                    break 'run Ok(());
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break 'run Ok(()),
                    _ = status_rx.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
        // Caught up: wait for the next tick. Catching up on history: go on at once, unless
        // the outbox is full, then give the publisher time to drain it.
        let pause = if done {
            cfg.tick
        } else if full {
            Duration::from_millis(500)
        } else {
            Duration::ZERO
        };
        tokio::select! {
            _ = shutdown.cancelled() => break 'run Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
    };
    publisher_stop.cancel();
    match publisher.await {
        Ok(r) => r?,
        Err(_) => return Err(Error::Poisoned),
    }
    result
}

/// Moves one band's data up to `end` into the outbox; `true` when the band is caught up.
async fn generate(
    cfg: &SimulateConfig,
    band: &SimBand,
    outbox: &Arc<Mutex<Outbox>>,
    end: DateTime<Utc>,
) -> Result<bool> {
    let device = band.device_id.clone();
    let cursor = blocking(outbox, move |o| o.cursor(&device)).await?;
    let from = cursor.unwrap_or(end - cfg.history);
    if from >= end {
        return Ok(true);
    }
    // At most six hours per step so a long backfill shows progress and bounds memory.
    let to = end.min(from + TimeDelta::hours(6));
    let records = band.records(&cfg.bridge_id, from, to)?;
    let count = records.len();
    let batches = batches(&cfg.bridge_id, &band.device_id, records, cfg.batch_records);
    let cursor = vec![(band.device_id.clone(), to)];
    blocking(outbox, move |o| o.push(&batches, &cursor, &[], Utc::now())).await?;
    tracing::debug!(device_id = %band.device_id, %from, %to, records = count, "generated");
    Ok(to >= end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_live_in_the_bridges_default_zone() {
        let cfg = SimulateConfig::new(
            "b",
            2,
            PathBuf::from("unused"),
            "mqtt://127.0.0.1:1883".parse().unwrap(),
        );
        let default: DayZone = crate::daemon::DEFAULT_TIME_ZONE.parse().unwrap();
        assert_eq!(cfg.time_zone, default);
        assert_eq!(cfg.bands().len(), 2);
        assert!(cfg.bands().iter().all(|b| b.zone == default));
    }
}
