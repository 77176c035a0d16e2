//! `phr-gateway demo`: the whole pipeline on embedded defaults, in one process.
//!
//! Starts the gateway with its embedded broker and SQLite store, registers a demo person with
//! storage consent, binds simulated bands to them through a demo bridge, runs that bridge
//! in-process (simulated GATT bytes → decoders → outbox → MQTT), and prints what to open.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use phr_bridge::simulate::{self, SimulateConfig};
use phr_schema::RecordType;

use crate::{Config, Error, Result};

pub const DEMO_PERSON: &str = "demo-person";
pub const DEMO_BRIDGE: &str = "demo-bridge";
/// Everything an owner may do with their own data (SMART v2: create, read, update, delete,
/// search, on every resource).
pub const OWNER_SCOPE: &str = "patient/*.cruds";

/// An address flag: the default may move to a free port; an explicit one may not.
#[derive(Debug, Clone, Copy)]
pub struct AddrFlag {
    pub flag: &'static str,
    pub addr: SocketAddr,
    pub explicit: bool,
}

impl AddrFlag {
    /// Binds the address; a taken default falls back to a free port on the same host.
    pub fn bind(&self, what: &'static str) -> Result<TcpListener> {
        match TcpListener::bind(self.addr) {
            Ok(l) => Ok(l),
            Err(e) if self.explicit => Err(Error::Config(format!(
                "port {} given with {} is not available ({e}); choose another port for the {what}",
                self.addr.port(),
                self.flag
            ))),
            Err(_) => {
                let l = TcpListener::bind(SocketAddr::new(self.addr.ip(), 0)).map_err(|e| {
                    Error::AddressInUse {
                        addr: self.addr,
                        what,
                        source: e,
                    }
                })?;
                let got = l.local_addr().map_err(|e| Error::Config(e.to_string()))?;
                eprintln!(
                    "note: {} (default for {}) is taken; the {what} uses {} instead",
                    self.addr, self.flag, got
                );
                Ok(l)
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub data_dir: PathBuf,
    pub http: AddrFlag,
    pub mqtt: AddrFlag,
    pub devices: usize,
    pub history_hours: i64,
}

/// Runs the demo until `shutdown`.
pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> Result<()> {
    let http = opts.http.bind("HTTP API")?;
    let mqtt_addr = {
        // rumqttd binds by itself: find a usable port, release it, hand it over.
        let probe = opts.mqtt.bind("embedded MQTT broker")?;
        probe
            .local_addr()
            .map_err(|e| Error::Config(e.to_string()))?
    };
    let mut config = Config {
        data_dir: opts.data_dir.clone(),
        ..Config::default()
    };
    config.mqtt.listen = mqtt_addr;
    config.http.listen = http
        .local_addr()
        .map_err(|e| Error::Config(e.to_string()))?;
    let mut gateway = crate::start(&config, http, shutdown.clone()).await?;

    let sim = SimulateConfig::new(
        DEMO_BRIDGE,
        opts.devices,
        opts.data_dir.join("bridge"),
        gateway.mqtt.clone(),
    );
    let store = gateway.store.clone();
    let bind_from = Utc::now() - TimeDelta::hours(opts.history_hours) - TimeDelta::days(1);
    let devices: Vec<String> = sim.bands().into_iter().map(|b| b.device_id).collect();
    tokio::task::spawn_blocking(move || -> Result<()> {
        store.add_person(DEMO_PERSON, "Demo Person", "Asia/Tokyo")?;
        store.grant_storage_consent(DEMO_PERSON, &RecordType::ALL)?;
        for d in &devices {
            store.add_device(d, DEMO_BRIDGE, Some("PHR reference band (simulated)"))?;
            match store.bind(d, DEMO_PERSON, bind_from) {
                Ok(()) | Err(Error::Conflict(_)) => {} // already bound by an earlier demo run
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await
    .map_err(|_| Error::Poisoned)??;
    if !gateway.wait_subscribed(Duration::from_secs(10)).await {
        return Err(Error::Broker(
            "the gateway could not subscribe to the embedded broker".into(),
        ));
    }

    let ttl = TimeDelta::hours(12);
    let token = gateway
        .keys
        .issue(DEMO_PERSON, OWNER_SCOPE, ttl, Utc::now())?;
    let base = format!("http://{}", gateway.http_addr);
    println!();
    println!("PHR gateway demo is running.");
    println!("  data dir:      {}", opts.data_dir.display());
    println!("  MQTT broker:   {} (embedded)", gateway.mqtt);
    println!("  dashboard:     {base}/dashboard");
    println!("  metrics:       {base}/metrics");
    println!(
        "  demo person:   {DEMO_PERSON}, {} simulated band(s), {}h of history",
        opts.devices, opts.history_hours
    );
    println!(
        "  owner token (valid {}h, scope {OWNER_SCOPE}):",
        ttl.num_hours()
    );
    println!("    {token}");
    println!();
    println!("Try:");
    println!("  curl -s -H \"Authorization: Bearer {token}\" \"{base}/api/v1/me/records?type=step-count&limit=5\"");
    println!();
    println!("Press Ctrl-C to stop.");

    let (status_tx, mut status) = watch::channel(Default::default());
    let mut bridge = tokio::spawn(simulate::run(sim, status_tx, shutdown.clone()));
    let mut last = Default::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = &mut bridge => {
                r.map_err(|_| Error::Poisoned)??;
                break;
            }
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                let s: phr_bridge::publish::Status = status.borrow_and_update().clone();
                if s != last {
                    tracing::info!(outbox_batches = s.outbox_batches, stored = s.stored, duplicate = s.duplicate,
                        quarantined = s.quarantined, rejected = s.rejected, "demo bridge progress");
                    last = s;
                }
            }
        }
    }
    gateway.stopped().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_explicit_port_is_an_error_naming_port_and_flag() {
        let holder = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = holder.local_addr().unwrap();
        let err = AddrFlag {
            flag: "--http",
            addr,
            explicit: true,
        }
        .bind("HTTP API")
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&addr.port().to_string()) && err.contains("--http"),
            "{err}"
        );
    }

    #[test]
    fn a_taken_default_port_falls_back_to_a_free_one() {
        let holder = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = holder.local_addr().unwrap();
        let l = AddrFlag {
            flag: "--mqtt",
            addr,
            explicit: false,
        }
        .bind("broker")
        .unwrap();
        let got = l.local_addr().unwrap();
        assert_ne!(got.port(), addr.port());
        assert_eq!(got.ip(), addr.ip());
    }
}
