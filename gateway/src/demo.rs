//! `phr-gateway demo`: the whole pipeline on embedded defaults, in one process.
//!
//! Starts the gateway with its embedded broker and SQLite store; registers a demo person who
//! consents to storage and to a demo PHR company reading steps and sleep; runs a simulated
//! bridge in-process (simulated GATT bytes → decoders → signed batches → outbox → MQTT); pairs
//! each band to the person through the real pairing flow (the bridge shows the code, the
//! person confirms it); confirms the history the bands held out of quarantine; and prints
//! what to open and what to try.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use phr_bridge::simulate::{self, SimulateConfig};
use phr_schema::RecordType;

use crate::store::clients::NewClient;
use crate::store::corrections::Range;
use crate::store::{GranteeKind, Terms, STORAGE_GRANTEE};
use crate::{Config, Error, Result};

pub const DEMO_PERSON: &str = "demo-person";
pub const DEMO_BRIDGE: &str = "demo-bridge";
/// Everything an owner may do with their own data (SMART v2: create, read, update, delete,
/// search, on every resource).
pub const OWNER_SCOPE: &str = "patient/*.cruds";
/// The demo PHR company (an OAuth client id).
pub const DEMO_COMPANY: &str = "demo-phr-co";

/// Runs a store call off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Error::Poisoned)?
}

/// Waits, up to a minute, until the bridge's status satisfies `done`.
async fn wait(
    status: &mut watch::Receiver<phr_bridge::publish::Status>,
    what: &str,
    done: impl FnMut(&phr_bridge::publish::Status) -> bool,
) -> Result<()> {
    match tokio::time::timeout(Duration::from_secs(60), status.wait_for(done)).await {
        Ok(Ok(_)) => Ok(()),
        _ => Err(Error::Broker(format!("timed out waiting for {what}"))),
    }
}

/// Pairs `band` to the demo person the way an owner would: start, read the code the bridge
/// shows, confirm with it and the serial number the bridge read. Skipped if already paired.
async fn pair(
    gateway: &crate::Gateway,
    status: &mut watch::Receiver<phr_bridge::publish::Status>,
    band: &str,
) -> Result<()> {
    let store = gateway.store.clone();
    let device = band.to_owned();
    let paired = blocking(move || {
        Ok(store
            .bindings_of(DEMO_PERSON)?
            .iter()
            .any(|b| b.device_id == device && b.valid_to.is_none()))
    })
    .await?;
    if paired {
        return Ok(());
    }
    let pairing = crate::pairing::start(
        &gateway.store,
        &gateway.client,
        &gateway.topics,
        DEMO_PERSON,
        DEMO_BRIDGE,
        band,
        Utc::now(),
    )?;
    let id = pairing.pairing_id;
    wait(status, "the bridge to show the pairing code", |s| {
        s.pairing_codes.iter().any(|c| c.pairing_id == id)
    })
    .await?;
    let code = status
        .borrow()
        .pairing_codes
        .iter()
        .find(|c| c.pairing_id == id)
        .map(|c| c.code.clone())
        .unwrap_or_default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let store = gateway.store.clone();
        let reported = blocking(move || store.pairing(DEMO_PERSON, id))
            .await?
            .and_then(|p| p.reported_serial);
        if let Some(serial) = reported {
            let store = gateway.store.clone();
            let result = blocking(move || {
                store.confirm_pairing(DEMO_PERSON, id, &code, Some(&serial), Utc::now())
            })
            .await?;
            return result
                .map(|_| ())
                .map_err(|r| Error::Broker(format!("pairing {band} failed: {r}")));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Broker(format!("the bridge did not report {band}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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

    if !gateway.wait_subscribed(Duration::from_secs(10)).await {
        return Err(Error::Broker(
            "the gateway could not subscribe to the embedded broker".into(),
        ));
    }
    let sim = SimulateConfig::new(
        DEMO_BRIDGE,
        opts.devices,
        opts.data_dir.join("bridge"),
        gateway.mqtt.clone(),
    );
    let bands: Vec<String> = sim.bands().into_iter().map(|b| b.device_id).collect();
    let store = gateway.store.clone();
    blocking(move || {
        store.add_person(DEMO_PERSON, "Demo Person", "Asia/Tokyo")?;
        // The person lets the gateway store their data (as `POST /api/v1/me/consents` would).
        let now = Utc::now();
        if store
            .consents_in_force(DEMO_PERSON, STORAGE_GRANTEE, GranteeKind::Gateway, now)?
            .is_empty()
        {
            store.grant_consent(
                DEMO_PERSON,
                Terms::storage(&RecordType::ALL),
                DEMO_PERSON,
                now,
            )?;
        }
        // And a PHR company may read steps and sleep for a wellness programme.
        if store
            .consents_in_force(DEMO_PERSON, DEMO_COMPANY, GranteeKind::Client, now)?
            .is_empty()
        {
            let terms = Terms {
                grantee: DEMO_COMPANY.into(),
                grantee_kind: GranteeKind::Client,
                purpose: "wellness programme".into(),
                data_types: vec![RecordType::StepCount, RecordType::SleepEpisode],
                window_from: None,
                window_to: None,
                valid_until: None,
            };
            store.grant_consent(DEMO_PERSON, terms, DEMO_PERSON, now)?;
        }
        Ok(())
    })
    .await?;

    // The bridge starts: its bands hand over the history they hold, quarantined until paired.
    let (status_tx, mut status) = watch::channel(phr_bridge::publish::Status::default());
    let mut bridge = tokio::spawn(simulate::run(sim, status_tx, shutdown.clone()));
    wait(&mut status, "the demo bridge to connect", |s| s.connected).await?;
    for band in &bands {
        pair(&gateway, &mut status, band).await?;
    }
    // Once the history is in, the owner confirms it as theirs (their band held it).
    wait(&mut status, "the bands' history to arrive", |s| {
        s.outbox_batches == 0 && s.batches_acked > 0
    })
    .await?;
    let store = gateway.store.clone();
    let confirmed = blocking(move || {
        let mut n = 0;
        let now = Utc::now();
        for device_id in bands {
            let range = Range {
                device_id,
                from: DateTime::UNIX_EPOCH,
                to: now,
            };
            if let Some(c) = store.confirm_quarantine(
                &range,
                DEMO_PERSON,
                "history the band held before pairing",
                now,
            )? {
                n += c.records;
            }
        }
        Ok(n)
    })
    .await?;

    // The company is a registered OAuth client with a secret (a new one at every start: the
    // gateway keeps only its hash).
    let store = gateway.store.clone();
    let secret = blocking(move || {
        let rotated = store.rotate_client_secret(DEMO_COMPANY)?;
        let secret = match rotated {
            Some(s) => Some(s),
            None => store.add_client(&NewClient {
                client_id: DEMO_COMPANY.into(),
                name: "Demo PHR company".into(),
                allowed_scopes: vec!["system/Observation.rs".into()],
                jwks: None,
                secret: true,
            })?,
        };
        secret.ok_or_else(|| Error::Config("the demo client got no secret".into()))
    })
    .await?;

    let ttl = TimeDelta::hours(12);
    let token = gateway
        .keys
        .issue(DEMO_PERSON, OWNER_SCOPE, ttl, Utc::now())?;
    let company = gateway
        .keys
        .issue(DEMO_COMPANY, "system/Observation.rs", ttl, Utc::now())?;
    let base = format!("http://{}", gateway.http_addr);
    let auth = |t: &str| format!("-H \"Authorization: Bearer {t}\"");
    println!();
    println!("PHR gateway demo is running.");
    println!("  data dir:      {}", opts.data_dir.display());
    println!("  MQTT broker:   {} (embedded)", gateway.mqtt);
    println!("  dashboard:     {base}/dashboard");
    println!("  metrics:       {base}/metrics");
    println!(
        "  demo person:   {DEMO_PERSON}: {} band(s) paired through {DEMO_BRIDGE}, {confirmed} records of history confirmed",
        opts.devices
    );
    println!(
        "  owner token (valid {}h, scope {OWNER_SCOPE}):",
        ttl.num_hours()
    );
    println!("    {token}");
    println!("  company token ({DEMO_COMPANY}, consented to steps and sleep):");
    println!("    {company}");
    println!();
    println!("Try, as the owner:");
    println!(
        "  curl -s {} \"{base}/api/v1/me/records?type=step-count&limit=5\"",
        auth(&token)
    );
    println!("  curl -s {} \"{base}/api/v1/me/devices\"", auth(&token));
    println!("  curl -s {} \"{base}/api/v1/me/consents\"", auth(&token));
    println!(
        "  curl -s {} \"{base}/api/v1/me/disclosures\"",
        auth(&token)
    );
    println!(
        "  curl -s {} \"{base}/api/v1/me/export?format=fhir\"",
        auth(&token)
    );
    println!("As the company (every read lands in the owner's disclosure log):");
    println!(
        "  curl -s {} \"{base}/api/v1/subjects/{DEMO_PERSON}/records?type=sleep-episode&limit=1\"",
        auth(&company)
    );
    println!("  curl -s {} \"{base}/api/v1/subjects/{DEMO_PERSON}/records?type=heart-rate\"   # not consented: 404", auth(&company));
    println!();
    println!("As the company, through OAuth 2.0 client credentials and incremental sync:");
    println!("  client id:     {DEMO_COMPANY}");
    println!(
        "  client secret: {}   (shown once; a new one at every demo start)",
        secret.expose()
    );
    println!(
        "  TOKEN=$(curl -s -u {DEMO_COMPANY}:{} -d grant_type=client_credentials -d scope=system/Observation.rs {base}/oauth/token | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')",
        secret.expose()
    );
    println!("  curl -s -H \"Authorization: Bearer $TOKEN\" \"{base}/api/v1/subjects\"");
    println!("  curl -s -H \"Authorization: Bearer $TOKEN\" \"{base}/api/v1/sync?limit=5\"");
    println!("API documentation: {base}/docs (OpenAPI: {base}/openapi.json)");
    println!();
    println!("Press Ctrl-C to stop.");

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
