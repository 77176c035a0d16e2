//! Harness for end-to-end tests: real gateways (in-process or as the real binary), real
//! brokers (embedded rumqttd, or Mosquitto), real SQLite files, and a raw MQTT client for
//! publishing hand-made batches.
//!
//! Environment:
//! - `PHR_TEST_MQTT_URL=mqtt://127.0.0.1:1883` runs the suite against that external broker
//!   instead of the embedded one. Every test uses its own topic prefix, so tests sharing one
//!   broker never see each other's messages.

pub mod bluez;
pub mod browser;
pub mod oidc;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, TimeDelta, Utc};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use phr_bridge::identity::BridgeKey;
use phr_bridge::mqtt::MqttUrl;
use phr_gateway::store::{Clock, OffsetClock};
use phr_gateway::{Config, Gateway};
use phr_schema::channel::ChannelKey;
use phr_schema::{Ack, RecordType, Topics};

pub use phr_gateway::auth::OWNER_SCOPE;

/// How many fresh ports [`on_free_port`] tries.
pub const PORT_TRIES: usize = 5;

/// Starts a server that must be told its port (Mosquitto; a binary given an explicit port,
/// as a user gives one): `start` is given a loopback port that was free a moment ago and returns
/// `Ok(Some(_))` once the server answers there, or `Ok(None)` when the port was taken in
/// between (the server could not bind it), and then a fresh port is tried, up to
/// [`PORT_TRIES`] times. Whatever we bind ourselves is bound to port 0 and read back instead.
pub fn on_free_port<T>(
    what: &str,
    mut start: impl FnMut(u16) -> Result<Option<T>>,
) -> Result<(T, u16)> {
    let mut taken = Vec::new();
    for _ in 0..PORT_TRIES {
        // Free a moment ago: another process may take it before the server binds it.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .context("a free port")?;
        if let Some(started) = start(port)? {
            return Ok((started, port));
        }
        taken.push(port);
    }
    bail!("{what}: every port tried was taken before it could bind it: {taken:?}")
}

/// A loopback address with port 0, for listeners that report the port they got.
pub fn any_port() -> SocketAddr {
    loopback(0)
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A unique topic prefix for one test.
pub fn test_prefix() -> String {
    format!(
        "phr-test-{}/v1",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The external broker the suite was asked to use, if any.
pub fn external_broker() -> Option<MqttUrl> {
    std::env::var("PHR_TEST_MQTT_URL")
        .ok()
        .map(|u| u.parse().expect("PHR_TEST_MQTT_URL is an mqtt:// URL"))
}

/// Polls `f` until it returns `Some`, failing after `timeout` with `what`.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs for tests, once (`RUST_LOG` to see them).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A gateway started in this process on port 0, with its own data dir and topic prefix.
#[derive(Debug)]
pub struct TestGateway {
    pub gateway: Gateway,
    pub config: Config,
    pub shutdown: CancellationToken,
    pub dir: tempfile::TempDir,
    /// The gateway's clock: the system's time plus what the test moved it forward by
    /// (`clock.advance(...)`), so a test waits for no deadline (a token's or consent's
    /// expiry, a rate limit's refill) in real time.
    pub clock: Arc<OffsetClock>,
}

impl TestGateway {
    /// Embedded broker unless `PHR_TEST_MQTT_URL` names an external one.
    pub async fn start() -> Result<Self> {
        Self::start_with(external_broker()).await
    }

    pub async fn start_with(external: Option<MqttUrl>) -> Result<Self> {
        Self::start_configured(external, |_| {}).await
    }

    /// As [`TestGateway::start_with`], with `configure` applied to the configuration last.
    /// Rate limits are off unless `configure` sets them (tests make many calls at once).
    pub async fn start_configured(
        external: Option<MqttUrl>,
        configure: impl FnOnce(&mut Config),
    ) -> Result<Self> {
        Self::start_on(TcpListener::bind("127.0.0.1:0")?, external, configure).await
    }

    /// As [`TestGateway::start_configured`], serving HTTP on `http` (bound by the caller, so
    /// its address can go into another party's configuration first: an identity provider's
    /// redirect URI).
    pub async fn start_on(
        http: TcpListener,
        external: Option<MqttUrl>,
        configure: impl FnOnce(&mut Config),
    ) -> Result<Self> {
        init_tracing();
        let dir = tempfile::tempdir()?;
        let mut config = Config {
            data_dir: dir.path().join("gateway"),
            ..Config::default()
        };
        config.http.requests_per_minute = u32::MAX;
        config.http.burst = u32::MAX;
        config.mqtt.topic_prefix = test_prefix();
        match external {
            Some(url) => config.mqtt.url = Some(url.to_string()),
            None => config.mqtt.listen = any_port(),
        }
        configure(&mut config);
        let shutdown = CancellationToken::new();
        let clock = Arc::new(OffsetClock::new());
        let mut gateway = start_in_process(&config, http, &clock, shutdown.clone()).await?;
        if !gateway.wait_subscribed(Duration::from_secs(10)).await {
            bail!("gateway did not subscribe to {}", gateway.mqtt);
        }
        if config.mqtt.url.is_none() {
            // The port the broker got, so a restart with this config binds the same one.
            config.mqtt.listen = mqtt_addr(&gateway.mqtt)?;
        }
        Ok(Self {
            gateway,
            config,
            shutdown,
            dir,
            clock,
        })
    }

    pub fn topics(&self) -> Topics {
        Topics::new(&self.config.mqtt.topic_prefix)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.http_addr)
    }

    /// Registers `person` with storage consent and binds `devices` (through `bridge`) to
    /// them from `from` on.
    pub fn enrol(
        &self,
        person: &str,
        bridge: &str,
        devices: &[String],
        from: DateTime<Utc>,
    ) -> Result<()> {
        enrol(&self.gateway.store, person, bridge, devices, from)
    }

    pub fn owner_token(&self, person: &str) -> String {
        self.gateway
            .keys
            .issue(person, OWNER_SCOPE, TimeDelta::hours(1), self.clock.now())
            .expect("token")
    }

    /// Stops the gateway; returns its directory so a test can still look at the files.
    pub async fn stop(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        self.gateway.stopped().await;
        self.dir
    }
}

/// Starts a gateway in this process ([`phr_gateway::start_with`]) on `http`, reading the time
/// from `clock` (a restart passes the same clock: the time it was moved to stays).
pub async fn start_in_process(
    config: &Config,
    http: TcpListener,
    clock: &Arc<OffsetClock>,
    shutdown: CancellationToken,
) -> Result<Gateway> {
    let options = phr_gateway::Options {
        mqtt: None,
        clock: clock.clone(),
    };
    Ok(phr_gateway::start_with(config, http, options, shutdown).await?)
}

/// Registers `person` with storage consent and binds `devices` to them from `from` on.
pub fn enrol(
    store: &phr_gateway::Store,
    person: &str,
    bridge: &str,
    devices: &[String],
    from: DateTime<Utc>,
) -> Result<()> {
    store.add_person(person, person, "Asia/Tokyo")?;
    store.grant_storage_consent(person, &RecordType::ALL)?;
    for d in devices {
        store.add_device(d, bridge, None)?;
        store.bind(d, person, from)?;
    }
    Ok(())
}

/// `person` grants the consent `body` describes (`POST /api/v1/me/consents`); returns its id.
pub fn grant_consent(gw: &TestGateway, person: &str, body: serde_json::Value) -> Result<String> {
    let (s, b) = call(
        "POST",
        &gw.url("/api/v1/me/consents"),
        Some(&gw.owner_token(person)),
        Some(body),
    )?;
    anyhow::ensure!(s == 201, "{b}");
    Ok(b["consent"]["consent_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// `GET` with an optional bearer token; returns status and parsed JSON body.
pub fn get_json(url: &str, token: Option<&str>) -> Result<(u16, serde_json::Value)> {
    let mut req = ureq::get(url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e).context(format!("GET {url}")),
    };
    let status = resp.status();
    let body: serde_json::Value = resp.into_json().context("JSON body")?;
    Ok((status, body))
}

/// Every record of `record_type` the owner can read, following `next_cursor` to the end.
pub fn all_records(
    base: &str,
    token: &str,
    record_type: &str,
    page: usize,
) -> Result<Vec<phr_schema::Record>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/api/v1/me/records?type={record_type}&limit={page}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = get_json(&url, Some(token))?;
        if status != 200 {
            bail!("GET {url}: {status} {body}");
        }
        for r in body["records"].as_array().context("records array")? {
            out.push(
                serde_json::from_value(r.clone()).context("a record as the schema defines it")?,
            );
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(out),
        }
    }
}

/// The step counts of `who`'s records, in measured order, read through the owner API.
pub fn step_counts(gw: &TestGateway, who: &str) -> Result<Vec<i64>> {
    let url = gw.url("/api/v1/me/records?type=step-count&limit=5000");
    let (s, b) = get_json(&url, Some(&gw.owner_token(who)))?;
    anyhow::ensure!(s == 200, "{b}");
    b["records"]
        .as_array()
        .context("records")?
        .iter()
        .map(|r| r["body"]["step_count"].as_i64().context("step_count"))
        .collect()
}

/// The value of an unlabelled Prometheus sample from `/metrics`.
pub fn metric(base: &str, name: &str) -> Result<f64> {
    let text = ureq::get(&format!("{base}/metrics"))
        .call()?
        .into_string()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .context(format!("metric {name}"))?
        .trim()
        .parse()
        .context("metric value")
}

/// A raw MQTT client standing in for a bridge: publishes whatever bytes a test wants and
/// collects the gateway's acks for `bridge`. Made by [`TestGateway::raw_bridge`], it is an
/// enrolled bridge: it proves its key at connect, seals what [`RawBridge::publish`] sends and
/// opens the acks; [`RawBridge::publish_to`] sends bytes as they are (an attacker's view).
#[derive(Debug)]
pub struct RawBridge {
    client: AsyncClient,
    acks: mpsc::UnboundedReceiver<Ack>,
    topics: Topics,
    pub bridge: String,
    /// The key this bridge proves itself with.
    pub key: std::sync::Arc<BridgeKey>,
    channel: Option<ChannelKey>,
    task: tokio::task::JoinHandle<()>,
}

impl TestGateway {
    /// Enrols `bridge` and connects as it. Its key is the same for every connection to this
    /// gateway as `bridge` (derived from the gateway's dir and the bridge id), so a test may
    /// connect as one bridge several times.
    pub async fn raw_bridge(&self, bridge: &str) -> Result<RawBridge> {
        use sha2::Digest;
        let seed = sha2::Sha256::digest(format!("{}\n{bridge}", self.dir.path().display()));
        let key = BridgeKey::from_seed(&seed.into());
        self.gateway
            .store
            .register_bridge_key(bridge, &key.public_hex())?;
        self.raw_bridge_with(bridge, key).await
    }

    /// Connects as `bridge` with `key` (enrolled or not: a test's choice).
    pub async fn raw_bridge_with(&self, bridge: &str, key: BridgeKey) -> Result<RawBridge> {
        let channel = key.channel(&self.gateway.channels.public_key())?;
        RawBridge::connect_as(
            &self.gateway.mqtt,
            self.topics(),
            bridge,
            key,
            Some(channel),
        )
        .await
    }

    /// Enrols the simulated bridge `cfg` describes here (as an operator would): its key,
    /// made in its data dir, is registered, and it is given this gateway's channel key.
    pub fn enrol_sim(&self, cfg: &mut phr_bridge::simulate::SimulateConfig) -> Result<()> {
        enrol_sim(&self.gateway.store, self.gateway.channels.public_key(), cfg)
    }
}

/// Enrols the simulated bridge `cfg` describes at the gateway with `store` and channel key
/// `gateway_key`.
pub fn enrol_sim(
    store: &phr_gateway::Store,
    gateway_key: ed25519_dalek::VerifyingKey,
    cfg: &mut phr_bridge::simulate::SimulateConfig,
) -> Result<()> {
    let key = BridgeKey::load_or_create(&cfg.data_dir)?;
    store.register_bridge_key(&cfg.bridge_id, &key.public_hex())?;
    cfg.gateway_key = Some(gateway_key);
    Ok(())
}

/// The channel key of the gateway whose data dir is `data_dir` (made now if it is not there
/// yet, as the gateway would at its first start).
pub fn gateway_channel_key(data_dir: &Path) -> Result<ed25519_dalek::VerifyingKey> {
    Ok(phr_gateway::channel::load_or_create(&data_dir.join("keys"))?.verifying_key())
}

impl RawBridge {
    /// Connects as `bridge` with `key`'s connect password; with `channel`, publishes sealed
    /// and opens acks.
    pub async fn connect_as(
        broker: &MqttUrl,
        topics: Topics,
        bridge: &str,
        key: BridgeKey,
        channel: Option<ChannelKey>,
    ) -> Result<Self> {
        let id = format!("raw-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let password = key.connect_password(bridge, &id);
        Self::open(broker, topics, bridge, &id, &password, key, channel).await
    }

    /// Connects as `bridge` with MQTT client id `client_id` and a static `password` (as a
    /// bridge does towards a Mosquitto with a password file); publishes in clear.
    pub async fn connect_with(
        broker: &MqttUrl,
        topics: Topics,
        bridge: &str,
        client_id: &str,
        password: &str,
    ) -> Result<Self> {
        Self::open(
            broker,
            topics,
            bridge,
            client_id,
            password,
            BridgeKey::generate(),
            None,
        )
        .await
    }

    /// Connects as `bridge` with `client_id` and `password` as given, holding `key` and, if
    /// given, sealing with `channel` (a bridge with a static password towards Mosquitto).
    pub async fn open(
        broker: &MqttUrl,
        topics: Topics,
        bridge: &str,
        client_id: &str,
        password: &str,
        key: BridgeKey,
        channel: Option<ChannelKey>,
    ) -> Result<Self> {
        let mut options = broker.options(client_id);
        options.set_credentials(bridge, password);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, acks) = mpsc::unbounded_channel();
        let (ready_tx, mut ready) = mpsc::unbounded_channel();
        let ack_topic = topics.acks(bridge);
        let sub = client.clone();
        let opener = channel.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub.try_subscribe(ack_topic.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == ack_topic => {
                        let plain = match &opener {
                            Some(c) => c.open(&p.topic, &p.payload).ok(),
                            None => Some(p.payload.to_vec()),
                        };
                        if let Some(a) = plain.and_then(|b| serde_json::from_slice(&b).ok()) {
                            let _ = tx.send(a);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready.recv())
            .await
            .context("ack subscription")?;
        Ok(Self {
            client,
            acks,
            topics,
            bridge: bridge.to_owned(),
            key: std::sync::Arc::new(key),
            channel,
            task,
        })
    }

    /// Publishes `payload` on the records topic of `device`, sealed if this bridge has a
    /// channel.
    pub async fn publish(&self, device: &str, payload: Vec<u8>) -> Result<()> {
        let topic = self.topics.records(&self.bridge, device);
        let payload = self.seal(&topic, payload);
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await?;
        Ok(())
    }

    /// Seals `payload` for `topic` with this bridge's channel (as it is if it has none).
    pub fn seal(&self, topic: &str, payload: Vec<u8>) -> Vec<u8> {
        match &self.channel {
            Some(c) => c.seal(topic, &payload, rand::random::<[u8; 24]>()),
            None => payload,
        }
    }

    /// Publishes anything on any topic (QoS 1), as it is.
    pub async fn publish_to(&self, topic: String, payload: Vec<u8>) -> Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await?;
        Ok(())
    }

    pub async fn next_ack(&mut self) -> Result<Ack> {
        tokio::time::timeout(Duration::from_secs(15), self.acks.recv())
            .await
            .context("timed out waiting for an ack")?
            .context("ack channel closed")
    }

    /// Whether an ack arrives within `wait` (for tests that expect none).
    pub async fn ack_within(&mut self, wait: Duration) -> Option<Ack> {
        tokio::time::timeout(wait, self.acks.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for RawBridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Path of a workspace binary, built first if a plain `cargo test` has not built it.
pub fn binary(package: &str, name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe.parent().and_then(Path::parent).context("target dir")?;
    let path = profile_dir.join(name);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "-p", package, "--bin", name]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    // Always build: a stale binary would test old code.
    let status = cmd.status().context("running cargo build")?;
    if !status.success() || !path.exists() {
        bail!("could not build {name}");
    }
    Ok(path)
}

/// Runs the `phr-bridge` binary at `bin` with `args` (its log at level `log`); returns its
/// stdout, failing on a non-zero exit with what it wrote to stderr.
pub fn bridge_cli<S: AsRef<std::ffi::OsStr>>(
    bin: &Path,
    args: impl IntoIterator<Item = S>,
    log: &str,
) -> Result<String> {
    let args: Vec<S> = args.into_iter().collect();
    let out = Command::new(bin)
        .args(&args)
        .env("RUST_LOG", log)
        .output()?;
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    anyhow::ensure!(
        out.status.success(),
        "phr-bridge {shown:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// `phr-bridge status --json` for the bridge whose data dir is `dir` (`bin`: the binary).
pub fn bridge_status(bin: &Path, dir: &Path) -> Result<serde_json::Value> {
    let out = bridge_cli(
        bin,
        [
            std::ffi::OsStr::new("status"),
            "--json".as_ref(),
            "--data-dir".as_ref(),
            dir.as_os_str(),
        ],
        "off",
    )?;
    Ok(serde_json::from_str(&out)?)
}

/// A child process killed on drop.
#[derive(Debug)]
pub struct Process(pub Child);

impl Process {
    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The socket address of a broker URL (an IP address, or a name resolved here).
pub fn mqtt_addr(url: &MqttUrl) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let url = url.to_string();
    let host_port = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| format!("no socket address for {url}"))
}

/// The addresses a gateway reports in its `gateway started` log line: the HTTP listener and
/// the broker it consumes from (its MQTT front, with the embedded broker), as bound.
pub fn started_line(line: &str) -> Option<(SocketAddr, MqttUrl)> {
    let line = strip_ansi(line);
    if !line.contains("gateway started") {
        return None;
    }
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    Some((
        field("http_addr")?.parse().ok()?,
        field("broker")?.parse().ok()?,
    ))
}

/// `line` without terminal colour codes (CSI sequences), should a process log in colour.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters, then one final byte in @..~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A `phr-gateway serve` process and the addresses it bound, read from its log.
#[derive(Debug)]
pub struct SpawnedGateway {
    pub process: Process,
    /// The HTTP API.
    pub http: SocketAddr,
    /// The MQTT address bridges use: the embedded broker's front, or the external broker.
    pub mqtt: SocketAddr,
    /// The same, as a broker URL.
    pub broker: MqttUrl,
}

impl SpawnedGateway {
    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// `http://host:port`.
    pub fn base(&self) -> String {
        format!("http://{}", self.http)
    }
}

/// Starts the real `phr-gateway serve` binary and waits until it has started (its API and
/// broker listening). `http` and `mqtt_listen` may have port 0 (see [`any_port`]); the
/// addresses bound are read from the gateway's log. A restart passes the addresses the first
/// start got, as clients hold them.
pub async fn spawn_gateway(
    bin: &Path,
    data_dir: &Path,
    http: SocketAddr,
    mqtt_listen: SocketAddr,
    external: Option<&MqttUrl>,
    prefix: &str,
) -> Result<SpawnedGateway> {
    spawn_gateway_env(bin, data_dir, http, mqtt_listen, external, prefix, &[]).await
}

/// As [`spawn_gateway`], with extra environment variables for the gateway process (e.g. a
/// [`FakeClock`]'s).
pub async fn spawn_gateway_env(
    bin: &Path,
    data_dir: &Path,
    http: SocketAddr,
    mqtt_listen: SocketAddr,
    external: Option<&MqttUrl>,
    prefix: &str,
    env: &[(String, String)],
) -> Result<SpawnedGateway> {
    use std::io::{BufRead, BufReader};
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--http")
        .arg(http.to_string())
        .arg("--mqtt-listen")
        .arg(mqtt_listen.to_string())
        .arg("--topic-prefix")
        .arg(prefix)
        // Warnings as before, and the one line that names the addresses bound.
        .env("RUST_LOG", "warn,phr_gateway=info")
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(url) = external {
        cmd.arg("--mqtt-url").arg(url.to_string());
    }
    let mut child = cmd.spawn().context("starting phr-gateway")?;
    let stderr = child.stderr.take().context("piped stderr")?;
    let mut process = Process(child);
    let (tx, rx) = std::sync::mpsc::channel();
    // Passes the log on as before (warnings and errors), keeping the start line for us.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addrs) = started_line(&line) {
                let _ = tx.send(Ok(addrs));
            } else {
                if !line.contains(" INFO ") {
                    eprintln!("{line}");
                }
                // Kept for the error if it never starts.
                let _ = tx.send(Err(line));
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut said = Vec::new();
    let (http, broker) = loop {
        match rx.try_recv() {
            Ok(Ok(addrs)) => break addrs,
            Ok(Err(line)) => said.push(line),
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                if let Some(exit) = process.0.try_wait()? {
                    // Its last lines may still be on their way.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    said.extend(rx.try_iter().filter_map(Result::err));
                    bail!(
                        "phr-gateway exited ({exit}) before it started:\n{}",
                        said.join("\n")
                    );
                }
                if Instant::now() > deadline {
                    bail!(
                        "phr-gateway did not start within 60 s:\n{}",
                        said.join("\n")
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                bail!(
                    "phr-gateway closed its log before it started:\n{}",
                    said.join("\n")
                )
            }
        }
    };
    Ok(SpawnedGateway {
        process,
        http,
        mqtt: mqtt_addr(&broker)?,
        broker,
    })
}

/// A child process's wall clock, set by the test: libfaketime (Debian's `libfaketime`),
/// preloaded into the process, reads a frozen instant from a file at every clock read, so the
/// times the process stamps on what it receives (or checks expiries against) are the test's to
/// choose. The monotonic clock (tokio's timers, timeouts) is left alone. `PHR_LIBFAKETIME`
/// overrides the library's path.
#[derive(Debug)]
pub struct FakeClock {
    file: PathBuf,
    lib: PathBuf,
}

impl FakeClock {
    pub fn new(dir: &Path, at: DateTime<Utc>) -> Result<Self> {
        let lib = match std::env::var_os("PHR_LIBFAKETIME") {
            Some(p) => PathBuf::from(p),
            // Debian puts it under the multiarch directory; the MT build is for threaded
            // programs.
            None => std::fs::read_dir("/usr/lib")?
                .filter_map(Result::ok)
                .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
                .find(|p| p.is_file())
                .context("libfaketime is not installed (apt-get install -y libfaketime)")?,
        };
        std::fs::create_dir_all(dir)?;
        let clock = Self {
            file: dir.join("clock"),
            lib,
        };
        clock.set(at)?;
        Ok(clock)
    }

    /// From now on the process's clock reads `at` (whole seconds), standing still.
    pub fn set(&self, at: DateTime<Utc>) -> Result<()> {
        // Renamed into place: the process never reads half a timestamp.
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", at.format("%Y-%m-%d %H:%M:%S")))?;
        std::fs::rename(&tmp, &self.file)?;
        Ok(())
    }

    /// The environment that gives a process this clock.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("LD_PRELOAD", self.lib.display().to_string()),
            ("FAKETIME_TIMESTAMP_FILE", self.file.display().to_string()),
            // Re-read the file at every clock read, so a `set` takes effect at once.
            ("FAKETIME_NO_CACHE", "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
            // The file's timestamp is read in the process's local zone.
            ("TZ", "UTC".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// A private Mosquitto (in-memory, loopback only) on a port of its own.
#[derive(Debug)]
pub struct Mosquitto {
    pub process: Process,
    pub port: u16,
    dir: PathBuf,
    conf: String,
}

impl Mosquitto {
    pub fn url(&self) -> MqttUrl {
        MqttUrl::new("127.0.0.1", self.port)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port (its clients hold that address), after a kill.
    pub fn restart(&mut self) -> Result<()> {
        self.process = start_mosquitto(&self.dir, self.port, &self.conf)?
            .with_context(|| format!("port {} was taken while mosquitto was down", self.port))?;
        Ok(())
    }
}

/// Starts a private Mosquitto (in-memory, anonymous, loopback only), waiting until it listens.
pub fn spawn_mosquitto(dir: &Path) -> Result<Mosquitto> {
    spawn_mosquitto_with(dir, "allow_anonymous true\n")
}

/// Starts a private Mosquitto (in-memory, loopback only) with `conf` appended to its
/// configuration (e.g. the shipped `docs/mosquitto/` fragment: passwords and ACL), waiting
/// until it listens. Mosquitto must be told its port: a taken one is retried
/// ([`on_free_port`]).
pub fn spawn_mosquitto_with(dir: &Path, conf: &str) -> Result<Mosquitto> {
    let (process, port) = on_free_port("mosquitto", |port| start_mosquitto(dir, port, conf))?;
    Ok(Mosquitto {
        process,
        port,
        dir: dir.to_owned(),
        conf: conf.to_owned(),
    })
}

/// Mosquitto on `port`, once it says it is running; `None` if the port is taken.
fn start_mosquitto(dir: &Path, port: u16, conf: &str) -> Result<Option<Process>> {
    let path = dir.join(format!("mosquitto-{port}.conf"));
    // Its log on stderr, into a file we open (it drops root's rights before writing its own).
    std::fs::write(
        &path,
        format!("listener {port} 127.0.0.1\npersistence false\nlog_dest stderr\n{conf}"),
    )?;
    let log = dir.join(format!("mosquitto-{port}.log"));
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("mosquitto is not installed (apt-get install -y mosquitto; .ci/run does this)")?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting mosquitto")?;
    let mut process = Process(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    loop {
        // "running" comes after every listener is open.
        if read().contains(" running") {
            return Ok(Some(process));
        }
        if let Some(exit) = process.0.try_wait()? {
            let said = read();
            if said.contains("Address already in use") {
                return Ok(None);
            }
            bail!("mosquitto exited ({exit}):\n{said}");
        }
        if Instant::now() > deadline {
            bail!("mosquitto did not start within 10 s:\n{}", read());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens a gateway's SQLite file read-only and returns `(record_id, person_id)` of every
/// stored record.
pub fn stored_ids(data_dir: &Path) -> Result<Vec<(String, String)>> {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("phr.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let mut stmt = conn.prepare("SELECT record_id, person_id FROM records")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One minute of steps starting at `start` (truncated to the minute).
pub fn minute_steps(
    device: &str,
    bridge: &str,
    start: DateTime<Utc>,
    count: i64,
) -> phr_schema::Record {
    use chrono::DurationRound;
    use phr_schema::record::{IntervalFrame, Provenance, StepCount};
    let start = start
        .duration_trunc(TimeDelta::minutes(1))
        .expect("minute")
        .fixed_offset();
    phr_schema::Record::new(
        device,
        bridge,
        start + TimeDelta::minutes(1),
        Provenance::sensed("test/1"),
        phr_schema::Body::StepCount(StepCount {
            effective_time_frame: IntervalFrame::new(start, start + TimeDelta::minutes(1)),
            step_count: count,
        }),
    )
}

/// A night of sleep `[start, start + hours)` with alternating light and deep hours.
pub fn night(device: &str, bridge: &str, start: DateTime<Utc>, hours: i64) -> phr_schema::Record {
    use phr_schema::record::{
        IntervalFrame, Provenance, SleepEpisode, SleepStage, SleepStageKind, TimeInterval,
    };
    let s = start.fixed_offset();
    let stages = (0..hours)
        .map(|h| SleepStage {
            stage: if h % 2 == 0 {
                SleepStageKind::Light
            } else {
                SleepStageKind::Deep
            },
            time_interval: TimeInterval {
                start_date_time: s + TimeDelta::hours(h),
                end_date_time: s + TimeDelta::hours(h + 1),
            },
        })
        .collect();
    phr_schema::Record::new(
        device,
        bridge,
        s + TimeDelta::hours(hours),
        Provenance::sensed("test/1"),
        phr_schema::Body::SleepEpisode(SleepEpisode {
            effective_time_frame: IntervalFrame::new(s, s + TimeDelta::hours(hours)),
            is_main_sleep: true,
            latency_to_sleep_onset: None,
            total_sleep_time: None,
            number_of_awakenings: None,
            sleep_maintenance_efficiency_percentage: None,
            stages,
        }),
    )
}

/// Publishes `records` of one device as one batch (sealed by an enrolled bridge) and returns
/// the gateway's ack.
pub async fn send(
    bridge: &mut RawBridge,
    device: &str,
    records: Vec<phr_schema::Record>,
) -> Result<Ack> {
    let batch = phr_schema::Batch::new(&bridge.bridge, device, uuid::Uuid::new_v4(), records);
    bridge.publish(device, serde_json::to_vec(&batch)?).await?;
    bridge.next_ack().await
}

/// A request with a method, optional bearer token and optional JSON body; returns status and
/// JSON body (`Null` when the body is empty).
pub fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> Result<(u16, serde_json::Value)> {
    let mut req = ureq::request(method, url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let resp = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e).context(format!("{method} {url}")),
    };
    let status = resp.status();
    let text = resp.into_string()?;
    let body = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).context("JSON body")?
    };
    Ok((status, body))
}

/// Base64url without padding (RFC 7515), for hand-made tokens in attack tests.
pub fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Standard, padded base64 (RFC 7617 Basic credentials).
pub fn std_b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Whether the broker accepts a connection with these credentials (`None`: anonymous).
pub async fn can_connect(broker: &MqttUrl, credentials: Option<(&str, &str)>) -> bool {
    let id = format!("probe-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut options = broker.options(&id);
    if let Some((user, password)) = credentials {
        options.set_credentials(user, password);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 8);
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    return a.code == rumqttc::ConnectReturnCode::Success
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    let _ = client.try_disconnect();
    answer
}

/// A benchmark's figures: the median, the `q` quantile (nearest rank), the minimum and the
/// maximum of `values` (not empty).
pub fn stats(values: &[f64], q: f64) -> (f64, f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (median, rank(q), v[0], v[v.len() - 1])
}

/// `n` with a comma between each group of three digits (`1,234,567`), as benchmark reports
/// print counts and rates.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The machine a benchmark ran on, as rows for its report: cores, CPU, kernel, compiler,
/// SQLite and the temp dir (where the benchmarks' stores live).
pub fn machine() -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".into(), |s| s.trim().to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    vec![
        ("nproc".into(), nproc.to_string()),
        ("cpu".into(), cpu),
        ("kernel".into(), kernel),
        ("rustc".into(), rustc),
        ("sqlite".into(), rusqlite::version().to_owned()),
        (
            "temp dir".into(),
            std::env::temp_dir().display().to_string(),
        ),
    ]
}

/// A response of any status, redirects not followed.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub set_cookies: Vec<String>,
    pub location: Option<String>,
    pub body: String,
}

impl Page {
    /// The value a `Set-Cookie` of this answer gives cookie `name`, if any.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies.iter().find_map(|c| {
            let first = c.split(';').next()?;
            let (n, v) = first.split_once('=')?;
            (n == name).then(|| v.to_owned())
        })
    }

    pub fn set_cookie_line(&self, name: &str) -> Option<&str> {
        self.set_cookies
            .iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .map(String::as_str)
    }

    /// The value of the hidden form field `name`.
    pub fn field(&self, name: &str) -> Option<String> {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self.body.find(&marker)? + marker.len();
        self.body[start..].split('"').next().map(str::to_owned)
    }
}

/// One request from a browser whose cookie jar holds `cookies` (`name=value` pairs),
/// redirects not followed.
pub fn browse(
    method: &str,
    url: &str,
    cookies: &[(&str, &str)],
    form: Option<&[(&str, &str)]>,
) -> anyhow::Result<Page> {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let mut req = agent.request(method, url);
    if !cookies.is_empty() {
        let jar: Vec<String> = cookies.iter().map(|(n, v)| format!("{n}={v}")).collect();
        req = req.set("Cookie", &jar.join("; "));
    }
    let resp = match form {
        Some(f) => req.send_form(f),
        None => req.call(),
    };
    let resp = match resp {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.into()),
    };
    Ok(Page {
        status: resp.status(),
        set_cookies: resp
            .all("Set-Cookie")
            .into_iter()
            .map(str::to_owned)
            .collect(),
        location: resp.header("Location").map(str::to_owned),
        body: resp.into_string()?,
    })
}

/// `application/x-www-form-urlencoded` for one value (RFC 6749 Appendix B).
pub fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_line_gives_the_addresses_bound() {
        let plain = "2026-12-03T15:04:13.334265Z  INFO phr_gateway: gateway started \
                     http_addr=127.0.0.1:34331 broker=mqtt://127.0.0.1:41193 data_dir=/tmp/x/gateway";
        let (http, broker) = started_line(plain).expect("parsed");
        assert_eq!(http, "127.0.0.1:34331".parse::<SocketAddr>().unwrap());
        assert_eq!(broker.to_string(), "mqtt://127.0.0.1:41193");
        assert_eq!(mqtt_addr(&broker).unwrap().port(), 41193);
        // The same line as a terminal shows it (fields in italics, `=` dimmed).
        let colour = "\u{1b}[2m2026-12-03T15:04:13.334265Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \
                      \u{1b}[2mphr_gateway\u{1b}[0m\u{1b}[2m:\u{1b}[0m gateway started \
                      \u{1b}[3mhttp_addr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:34331 \
                      \u{1b}[3mbroker\u{1b}[0m\u{1b}[2m=\u{1b}[0mmqtt://127.0.0.1:41193";
        assert_eq!(started_line(colour).map(|(h, _)| h), Some(http));
        assert_eq!(started_line("INFO phr_gateway: metrics served"), None);
    }
}
