//! End-to-end tests across real parts: simulated bands → bridge pipeline (decoders, outbox,
//! rumqttc) → broker (embedded rumqttd, or Mosquitto with `PHR_TEST_MQTT_URL`) → gateway →
//! SQLite → HTTP API. One test binary, so linking happens once.

// Test code: a failed unwrap is a failed test with a location, which is what we want.
#![allow(clippy::unwrap_used)]

mod api;
mod attack_auth;
mod attack_broker;
mod attack_channel;
mod attack_moves;
mod attribution;
mod batches;
mod ble;
mod bridge_kill;
mod browser;
mod consent;
mod corrections;
mod crash;
mod dashboard_pairing;
mod dashboard_session;
mod dead_letter;
mod demo;
mod export;
mod export_stream;
mod fhir;
mod forwarded;
mod limits;
mod metrics_scrape;
mod nearby;
mod oauth;
mod oidc_api;
mod oidc_browser;
mod oidc_provider;
mod oidc_signin;
mod openapi;
mod operators;
mod pairing;
mod pipeline;
mod sources;
mod sync;
mod tls;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use phr_bridge::mqtt::MqttUrl;
use phr_bridge::publish::Status;
use phr_bridge::simulate::{self, SimulateConfig};
use phr_schema::Record;

/// A fixed, minute-aligned end of simulated data in the recent past.
fn sim_until() -> DateTime<Utc> {
    (Utc::now() - TimeDelta::minutes(5))
        .duration_trunc(TimeDelta::minutes(1))
        .expect("minute")
}

fn sim_config(
    bridge: &str,
    devices: usize,
    dir: PathBuf,
    broker: &MqttUrl,
    prefix: &str,
    until: DateTime<Utc>,
    hours: i64,
) -> SimulateConfig {
    let mut cfg = SimulateConfig::new(bridge, devices, dir, broker.clone());
    cfg.topic_prefix = prefix.to_owned();
    cfg.until = Some(until);
    cfg.history = TimeDelta::hours(hours);
    cfg.exit_when_drained = true;
    cfg.tick = Duration::from_millis(200);
    cfg.ack_timeout = Duration::from_secs(3);
    cfg
}

/// Runs a simulated bridge until the gateway has acked all it generated.
async fn run_bridge(cfg: SimulateConfig, timeout: Duration) -> anyhow::Result<Status> {
    let (tx, rx) = watch::channel(Status::default());
    tokio::time::timeout(timeout, simulate::run(cfg, tx, CancellationToken::new()))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "bridge did not drain within {timeout:?}; last status {:?}",
                *rx.borrow()
            )
        })??;
    let status = rx.borrow().clone();
    Ok(status)
}

/// What the bands of `cfg` generate for its window, by record id: the expected content.
fn expected(cfg: &SimulateConfig) -> BTreeMap<uuid::Uuid, Record> {
    let until = cfg.until.expect("a fixed window");
    cfg.bands()
        .iter()
        .flat_map(|b| {
            b.records(&cfg.bridge_id, until - cfg.history, until)
                .expect("simulated bytes decode")
        })
        .map(|r| (r.record_id, r))
        .collect()
}
