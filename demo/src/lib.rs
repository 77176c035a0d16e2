//! `phr-demo`: the whole pipeline on embedded defaults, in one process.
//!
//! A crate of its own so that the server does not build the bridge: the demo needs both, the
//! gateway (`phr-gateway`) needs neither the bridge nor Bluetooth.
//!
//! Starts the gateway with its embedded broker and SQLite store; registers a demo person who
//! consents to storage, to a demo PHR company reading steps and sleep, and to a demo
//! clinician (`dr-demo`) reading steps, sleep and heart rate for treatment; registers a
//! second demo person who consents to storage only; runs a simulated bridge in-process
//! (simulated GATT bytes → decoders → signed batches → outbox → MQTT); pairs each band to its
//! person through the real pairing flow (the bridge shows the code, the person confirms it);
//! confirms the history the bands held out of quarantine; and prints what to open and what to
//! try, with one-time dashboard sign-in links for the clinician and the demo person.
//!
//! # History
//! The demo person's bands hold `--history-hours` of history when the bridge first meets them
//! ([`DEFAULT_HISTORY_HOURS`], 30 days, is the intended default); the second person's band
//! holds [`SECOND_PERSON_HISTORY_HOURS`] (3 days, or less if `--history-hours` is less). All
//! of it goes the normal ingest path (bridge outbox, MQTT, group commit, quarantine, owner's
//! confirmation). The simulated bands send steps per minute (minutes with steps only), heart
//! rate every 5 minutes (the simulator's rate; minute-level heart rate would be 43,200
//! readings per band and month, five times the records, for no visible gain in daily charts)
//! and one sleep episode with stages a night: about 27,000 records for 30 days of two bands
//! plus 3 days of the third. The demo person wears both bands at once: the second measures
//! the first one's walks and nights with its own noise and hours off the wrist
//! ([`phr_bridge::sim::SimBand::worn_with`]), so the dashboards show the merged view (each
//! step and night counted once, [`phr_gateway::store::sources`]). On a 2-core machine (debug build) that takes about 2 s to seed,
//! and the demo is ready about 3 s after it starts; a restarted demo (same `--data-dir`)
//! resumes where it stopped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use phr_bridge::outbox::Outbox;
use phr_bridge::simulate::{self, SimulateConfig};
use phr_schema::RecordType;

pub use phr_gateway::auth::OWNER_SCOPE;
use phr_gateway::dashboard::session::{signin_url, SIGNIN_CODE_TTL};
use phr_gateway::dashboard::Role;
use phr_gateway::store::clients::NewClient;
use phr_gateway::store::corrections::Range;
use phr_gateway::store::{GranteeKind, Terms, STORAGE_GRANTEE};
use phr_gateway::Config;

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Gateway(#[from] phr_gateway::Error),
    #[error("bridge: {0}")]
    Bridge(#[from] phr_bridge::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} for the {what}: {source}")]
    AddressInUse {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error("MQTT broker: {0}")]
    Broker(String),
    #[error("conflict: {0}")]
    Conflict(&'static str),
    #[error("a demo task stopped unexpectedly")]
    Poisoned,
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// The store's errors are the gateway's (conflict, invalid, configuration, backend).
impl From<phr_gateway::store::Error> for Error {
    fn from(e: phr_gateway::store::Error) -> Self {
        Self::Gateway(e.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub const DEMO_PERSON: &str = "demo-person";
/// A second person, with their own band, who has not consented to the clinician (nor to the
/// company): the clinician must not see them.
pub const DEMO_PERSON_2: &str = "demo-person-2";
/// The demo clinician (a token subject / dashboard sign-in of role clinician).
pub const DEMO_CLINICIAN: &str = "dr-demo";
pub const DEMO_BRIDGE: &str = "demo-bridge";
/// History the demo person's bands hold at first start: 30 days.
pub const DEFAULT_HISTORY_HOURS: i64 = 30 * 24;
/// History the second person's band holds at first start: 3 days.
pub const SECOND_PERSON_HISTORY_HOURS: i64 = 3 * 24;
/// How long seeding the history may take before the demo gives up.
const SEED_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The simulated bridge's outbox, in its data directory (see `phr_bridge::simulate::run`).
const BRIDGE_OUTBOX: &str = "outbox.sqlite";
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

/// Pairs `band` to `person` the way an owner would: start, read the code the bridge shows,
/// confirm with it and the serial number the bridge read. Skipped if already paired.
async fn pair(
    gateway: &phr_gateway::Gateway,
    status: &mut watch::Receiver<phr_bridge::publish::Status>,
    person: &'static str,
    band: &str,
) -> Result<()> {
    let store = gateway.store.clone();
    let device = band.to_owned();
    let paired = blocking(move || {
        Ok(store
            .bindings_of(person)?
            .iter()
            .any(|b| b.device_id == device && b.valid_to.is_none()))
    })
    .await?;
    if paired {
        return Ok(());
    }
    let cx = phr_gateway::pairing::Context {
        store: &gateway.store,
        channels: &gateway.channels,
        mqtt: &gateway.client,
        topics: &gateway.topics,
    };
    let pairing = phr_gateway::pairing::start(cx, person, DEMO_BRIDGE, band, Utc::now())?
        .map_err(|_| Error::Conflict("the demo could not start a pairing"))?;
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
        let reported = blocking(move || Ok(store.pairing(person, id)?))
            .await?
            .and_then(|p| p.reported_serial);
        if let Some(serial) = reported {
            let store = gateway.store.clone();
            let result = blocking(move || {
                Ok(store.confirm_pairing(person, id, &code, Some(&serial), Utc::now())?)
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

/// `hours` as days when whole days, else as hours.
fn span(hours: i64) -> String {
    match (hours % 24, hours / 24) {
        (0, 1) => "1 day".into(),
        (0, d) => format!("{d} days"),
        _ => format!("{hours} h"),
    }
}

/// `t` truncated to the whole minute (the simulated bands' clock).
fn minute(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::minutes(1)).unwrap_or(t)
}

/// Waits until the bridge has generated every band's history up to `until` and the gateway
/// has acked all of it (the outbox is empty): then none of the history is still on its way,
/// and what the owners confirm out of quarantine is all of it. (An empty outbox alone is not
/// enough: the bridge generates a long history in steps, and may be between two.)
async fn history_in(
    outbox: &Path,
    bands: Vec<String>,
    until: DateTime<Utc>,
    bridge: &JoinHandle<phr_bridge::Result<()>>,
) -> Result<()> {
    let path = outbox.to_owned();
    let outbox =
        blocking(move || Ok(Arc::new(Mutex::new(Outbox::open(&path, usize::MAX)?)))).await?;
    let deadline = tokio::time::Instant::now() + SEED_TIMEOUT;
    loop {
        let (outbox, bands) = (outbox.clone(), bands.clone());
        let done = blocking(move || {
            let o = outbox.lock().map_err(|_| Error::Poisoned)?;
            for b in &bands {
                if o.cursor(b)?.is_none_or(|c| c < until) {
                    return Ok(false);
                }
            }
            Ok(o.depth()? == 0)
        })
        .await?;
        if done {
            return Ok(());
        }
        if bridge.is_finished() {
            return Err(Error::Broker(
                "the demo bridge stopped while handing over the history".into(),
            ));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Broker(format!(
                "the bands' history did not arrive within {} minutes",
                SEED_TIMEOUT.as_secs() / 60
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
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
    let mut gateway = phr_gateway::start(&config, http, shutdown.clone()).await?;

    if !gateway.wait_subscribed(Duration::from_secs(10)).await {
        return Err(Error::Broker(
            "the gateway could not subscribe to the embedded broker".into(),
        ));
    }
    if opts.history_hours <= 0 {
        return Err(Error::Config("--history-hours must be at least 1".into()));
    }
    // One bridge: the demo person's bands, then the second person's band (the last one).
    let mut sim = SimulateConfig::new(
        DEMO_BRIDGE,
        opts.devices + 1,
        opts.data_dir.join("bridge"),
        gateway.mqtt.clone(),
    );
    sim.history = TimeDelta::hours(opts.history_hours);
    // The demo person wears all their bands at once: the others measure the first one's
    // walks and nights, with their own noise and hours off the wrist. Their totals are the
    // merged view's (each step counted once), not the sum of the bands.
    sim.worn_with = (1..opts.devices).map(|i| (i, 0)).collect();
    // The operator's enrolment, done by the demo: the bridge's key registered here, the
    // gateway's channel key configured there.
    sim.gateway_key = Some(gateway.channels.public_key());
    {
        let (dir, store) = (sim.data_dir.clone(), gateway.store.clone());
        blocking(move || {
            let key = phr_bridge::identity::BridgeKey::load_or_create(&dir)?;
            Ok(store.register_bridge_key(DEMO_BRIDGE, &key.public_hex())?)
        })
        .await?;
    }
    let mut bands: Vec<String> = sim.bands().into_iter().map(|b| b.device_id).collect();
    let second_band = bands.pop().ok_or(Error::Poisoned)?;
    let outbox_path = sim.data_dir.join(BRIDGE_OUTBOX);
    let seeding_from = Utc::now();
    {
        // The second person's band met the bridge only a few days ago: its history starts
        // there (the bridge's per-band high-water mark, as a band it had just read would
        // leave it). Only on the first start; afterwards the bridge resumes by itself.
        let (dir, path, band) = (
            sim.data_dir.clone(),
            outbox_path.clone(),
            second_band.clone(),
        );
        let since = minute(
            seeding_from - TimeDelta::hours(SECOND_PERSON_HISTORY_HOURS.min(opts.history_hours)),
        );
        blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            let mut outbox = Outbox::open(&path, usize::MAX)?;
            if outbox.cursor(&band)?.is_none() {
                outbox.push(&[], &[(band, since)], &[], Utc::now())?;
            }
            Ok(())
        })
        .await?;
    }
    let store = gateway.store.clone();
    blocking(move || {
        let now = Utc::now();
        for (person, name) in [
            (DEMO_PERSON, "Demo Person"),
            (DEMO_PERSON_2, "Second Demo Person"),
        ] {
            store.add_person(person, name, "Asia/Tokyo")?;
            // Each lets the gateway store their data (as `POST /api/v1/me/consents` would).
            if store
                .consents_in_force(person, STORAGE_GRANTEE, GranteeKind::Gateway, now)?
                .is_empty()
            {
                store.grant_consent(person, Terms::storage(&RecordType::ALL), person, now)?;
            }
        }
        // The demo person lets a PHR company read steps and sleep for a wellness programme,
        // and their clinician read steps, sleep and heart rate for treatment. The second
        // person consents to neither.
        let grants = [
            (
                DEMO_COMPANY,
                GranteeKind::Client,
                "wellness programme",
                vec![RecordType::StepCount, RecordType::SleepEpisode],
            ),
            (
                DEMO_CLINICIAN,
                GranteeKind::Practitioner,
                "treatment",
                vec![
                    RecordType::StepCount,
                    RecordType::SleepEpisode,
                    RecordType::HeartRate,
                ],
            ),
        ];
        for (grantee, kind, purpose, data_types) in grants {
            if store
                .consents_in_force(DEMO_PERSON, grantee, kind, now)?
                .is_empty()
            {
                let terms = Terms {
                    grantee: grantee.into(),
                    grantee_kind: kind,
                    purpose: purpose.into(),
                    data_types,
                    window_from: None,
                    window_to: None,
                    valid_until: None,
                };
                store.grant_consent(DEMO_PERSON, terms, DEMO_PERSON, now)?;
            }
        }
        Ok(())
    })
    .await?;

    // The bridge starts: its bands hand over the history they hold, quarantined until paired.
    let (status_tx, mut status) = watch::channel(phr_bridge::publish::Status::default());
    let mut bridge = tokio::spawn(simulate::run(sim, status_tx, shutdown.clone()));
    wait(&mut status, "the demo bridge to connect", |s| s.connected).await?;
    for band in &bands {
        pair(&gateway, &mut status, DEMO_PERSON, band).await?;
    }
    pair(&gateway, &mut status, DEMO_PERSON_2, &second_band).await?;
    // Once the history is in, each owner confirms it as theirs (their band held it).
    let all_bands: Vec<String> = bands.iter().chain([&second_band]).cloned().collect();
    history_in(&outbox_path, all_bands, minute(seeding_from), &bridge).await?;
    let seeded_in = (Utc::now() - seeding_from).as_seconds_f64();
    let store = gateway.store.clone();
    let second = second_band.clone();
    let (confirmed, confirmed_2) = blocking(move || {
        let now = Utc::now();
        let confirm = |device_id: String, person: &str| -> Result<u64> {
            let range = Range {
                device_id,
                from: DateTime::UNIX_EPOCH,
                to: now,
            };
            Ok(store
                .confirm_quarantine(&range, person, "history the band held before pairing", now)?
                .map_or(0, |c| c.records))
        };
        let mut n = 0;
        for device_id in bands {
            n += confirm(device_id, DEMO_PERSON)?;
        }
        Ok((n, confirm(second, DEMO_PERSON_2)?))
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

    // One-time dashboard sign-in links for the clinician and the demo person.
    let store = gateway.store.clone();
    let (clinician_code, owner_code) = blocking(move || {
        let now = Utc::now();
        Ok((
            store.issue_signin_code(DEMO_CLINICIAN, Role::Clinician, SIGNIN_CODE_TTL, now)?,
            store.issue_signin_code(DEMO_PERSON, Role::Owner, SIGNIN_CODE_TTL, now)?,
        ))
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
    println!();
    println!("PHR gateway demo is running.");
    println!("  data dir:      {}", opts.data_dir.display());
    println!("  MQTT broker:   {} (embedded)", gateway.mqtt);
    println!("  dashboard:     {base}/dashboard");
    println!("  metrics:       {base}/metrics");
    println!(
        "  demo person:   {DEMO_PERSON}: {} band(s) paired through {DEMO_BRIDGE}, {confirmed} records of history confirmed ({} of history, seeded in {seeded_in:.1} s)",
        opts.devices,
        span(opts.history_hours)
    );
    println!(
        "  second person: {DEMO_PERSON_2}: 1 band paired through {DEMO_BRIDGE}, {confirmed_2} records of history confirmed ({}); no consent to {DEMO_CLINICIAN} or {DEMO_COMPANY}",
        span(SECOND_PERSON_HISTORY_HOURS.min(opts.history_hours))
    );
    println!(
        "  clinician:     {DEMO_CLINICIAN}: {DEMO_PERSON} consented to steps, sleep and heart rate for treatment; {DEMO_PERSON_2} did not"
    );
    println!();
    // Each token and secret once, into shell variables the lines below use.
    println!(
        "Paste into a shell: the owner's token (valid {}h, scope {OWNER_SCOPE}), the company's ({DEMO_COMPANY}, consented to steps and sleep) and its client secret (shown once; a new one at every demo start):",
        ttl.num_hours()
    );
    println!("  OWNER_TOKEN={token}");
    println!("  COMPANY_TOKEN={company}");
    println!("  CLIENT_SECRET={}", secret.expose());
    println!();
    let owner = "-H \"Authorization: Bearer $OWNER_TOKEN\"";
    println!("Try, as the owner:");
    println!("  curl -s {owner} \"{base}/api/v1/me/records?type=step-count&limit=5\"");
    println!("  curl -s {owner} \"{base}/api/v1/me/devices\"");
    println!("  curl -s {owner} \"{base}/api/v1/me/consents\"");
    println!("  curl -s {owner} \"{base}/api/v1/me/disclosures\"");
    println!("  curl -s {owner} \"{base}/api/v1/me/export?format=fhir\"");
    let company = "-H \"Authorization: Bearer $COMPANY_TOKEN\"";
    println!("As the company (every read lands in the owner's disclosure log):");
    println!(
        "  curl -s {company} \"{base}/api/v1/subjects/{DEMO_PERSON}/records?type=sleep-episode&limit=1\""
    );
    println!("  curl -s {company} \"{base}/api/v1/subjects/{DEMO_PERSON}/records?type=heart-rate\"   # not consented: 404");
    println!();
    println!("As the company, through OAuth 2.0 client credentials and incremental sync:");
    println!("  client id:     {DEMO_COMPANY}");
    println!(
        "  TOKEN=$(curl -s -u {DEMO_COMPANY}:$CLIENT_SECRET -d grant_type=client_credentials -d scope=system/Observation.rs {base}/oauth/token | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')"
    );
    println!("  curl -s -H \"Authorization: Bearer $TOKEN\" \"{base}/api/v1/subjects\"");
    println!("  curl -s -H \"Authorization: Bearer $TOKEN\" \"{base}/api/v1/sync?limit=5\"");
    println!("API documentation: {base}/docs (OpenAPI: {base}/openapi.json)");
    println!();
    println!(
        "Sign in to the dashboards (one-time links: each works once, within {} minutes; the page names the account, press its button to sign in):",
        SIGNIN_CODE_TTL.num_minutes()
    );
    println!(
        "  clinician sign-in: {}",
        signin_url(&base, &clinician_code)
    );
    println!("  owner sign-in: {}", signin_url(&base, &owner_code));
    println!(
        "  new links: cargo run -p phr-gateway -- dashboard link --data-dir {} --subject {DEMO_PERSON_2} --role owner",
        opts.data_dir.display()
    );
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
