//! Connection-scale benchmark (issue 17): resident memory of the gateway holding many idle
//! bridge connections plus a few sending ones, and of a bridge process with 10 bands.
//!
//! One run:
//!
//! 1. **Gateway**: enrols `idle + SENDERS` bridges (a generated Ed25519 key each, registered
//!    in the store as `phr-gateway bridges enrol` does), a person with storage consent and
//!    one bound band per sending bridge, then starts the real `phr-gateway serve` binary
//!    (embedded broker, temp data dir, port 0) as its own process. Its `VmRSS` and `VmHWM`
//!    (`/proc/<pid>/status`) are read before any client, with every idle bridge connected,
//!    and while `SENDERS` bridges publish sealed batches of 60 step records at a steady rate
//!    (RSS sampled every second, the highest reported).
//! 2. **Idle clients** are a minimal hand-written MQTT 3.1.1 client on tokio sockets: CONNECT
//!    as the bridge (its signed password, keep-alive 60 s, clean session), SUBSCRIBE to its
//!    ack topic as a bridge does, then a PINGREQ every 50 s. The senders are the harness's `RawBridge` (rumqttc).
//! 3. **References**, in the same run and with the same idle clients: a private Mosquitto
//!    (`spawn_mosquitto`) and a bare rumqttd with the gateway's broker settings
//!    (`phr_gateway::broker::start_on_free_port`, in a helper process: this bench binary with
//!    `--rumqttd-helper`).
//! 4. **Bridge**: `phr-bridge simulate --devices 10` against the gateway (24 h of history to
//!    backfill, then live); its `VmHWM` after `BRIDGE_SECS`.
//!
//! File descriptors: the gateway needs about three per client (the client's socket, the
//! front's socket to rumqttd, rumqttd's side of it). The bench raises its own limit with
//! `prlimit --pid` (we run as root) before it starts anything, so every process it spawns
//! inherits 65,536.
//!
//! Run: `cargo bench -p phr-e2e --bench connections` (10,000 idle + 100 sending) or
//! `cargo bench -p phr-e2e --bench connections -- --quick` (200 idle, a few seconds, no
//! verdict); `--idle N` overrides the idle count. Exits non-zero if a connection fails or
//! drops, or if the senders' records are not all acked as stored. Results: `BENCHMARKS.md`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use chrono::{DurationRound, TimeDelta, Utc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use phr_bridge::identity::BridgeKey;
use phr_bridge::mqtt::MqttUrl;
use phr_bridge::simulate::SimulateConfig;
use phr_e2e::{any_port, binary, spawn_gateway, spawn_mosquitto, thousands, Process, RawBridge};
use phr_schema::{Batch, RecordType, Topics};

/// Sending bridges (one band each).
const SENDERS: usize = 100;
const BATCH_RECORDS: usize = 60;
const PERSON_ID: &str = "bench-person";
const PREFIX: &str = "phr-bench-conns/v1";
/// The idle clients' keep-alive, as a bridge would connect, and how often they ping.
const KEEP_ALIVE_SECS: u16 = 60;
const PING_EVERY: Duration = Duration::from_secs(50);
/// Handshakes in progress at once.
const CONNECTING: usize = 64;
/// The file-descriptor limit set for this process (and so inherited by what it spawns).
const NOFILE: u32 = 65_536;
/// Goals (issue 17).
const GATEWAY_GOAL_MB: f64 = 150.0;
const BRIDGE_GOAL_MB: f64 = 20.0;

#[derive(Debug, Clone, Copy)]
struct Plan {
    idle: usize,
    senders: usize,
    /// Seconds between two batches of one sender.
    interval: Duration,
    /// Batches each sender publishes.
    batches: usize,
    /// How long the 10-band bridge runs before its memory is read.
    bridge_secs: u64,
    quick: bool,
}

impl Plan {
    fn from_args() -> anyhow::Result<Self> {
        let args: Vec<String> = std::env::args().collect();
        let quick = args.iter().any(|a| a == "--quick");
        let mut plan = if quick {
            Self {
                idle: 200,
                senders: 20,
                interval: Duration::from_secs(1),
                batches: 5,
                bridge_secs: 8,
                quick,
            }
        } else {
            // 100 x 30 batches of 60 = 180,000 records over 60 s: 3,000 records/s, about a
            // tenth of what the gateway ingests at most (BENCHMARKS.md).
            Self {
                idle: 10_000,
                senders: SENDERS,
                interval: Duration::from_secs(2),
                batches: 30,
                bridge_secs: 60,
                quick,
            }
        };
        if let Some(i) = args.iter().position(|a| a == "--idle") {
            plan.idle = args
                .get(i + 1)
                .and_then(|n| n.parse().ok())
                .context("--idle takes a number")?;
        }
        Ok(plan)
    }
}

// ----- processes and /proc -----

/// `VmRSS` and `VmHWM` of `pid`, in kB.
#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    rss_kb: u64,
    hwm_kb: u64,
}

fn mem(pid: u32) -> anyhow::Result<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .with_context(|| format!("{name} in /proc/{pid}/status"))
    };
    Ok(Mem {
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:")?,
    })
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// The soft file-descriptor limit of `pid` (from `/proc/<pid>/limits`).
fn nofile(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .unwrap_or_else(|| "?".into())
}

/// Raises `pid`'s file-descriptor limit (soft and hard) with `prlimit` (util-linux; raising
/// the hard limit needs root or CAP_SYS_RESOURCE). The workspace forbids `unsafe`, so no
/// `setrlimit` here.
fn raise_nofile(pid: u32) -> anyhow::Result<()> {
    let status = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={NOFILE}:{NOFILE}"),
        ])
        .status()
        .context("running prlimit (util-linux) to raise the file-descriptor limit")?;
    ensure!(
        status.success(),
        "prlimit --pid {pid} --nofile={NOFILE}:{NOFILE} failed ({status}); run as root"
    );
    Ok(())
}

/// The reference: a bare rumqttd with the gateway's settings, in this binary as a helper
/// process. Prints its port, then runs until stdin closes.
fn rumqttd_helper() -> anyhow::Result<()> {
    let addr = phr_gateway::broker::start_on_free_port(None, None)?;
    println!("{}", addr.port());
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line)? > 0 {}
    Ok(())
}

fn spawn_rumqttd_helper() -> anyhow::Result<(Process, SocketAddr)> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--rumqttd-helper")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .env("RUST_LOG", "off")
        .spawn()?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let process = Process(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port: u16 = line.trim().parse().context("the rumqttd helper's port")?;
    Ok((process, SocketAddr::from(([127, 0, 0, 1], port))))
}

// ----- the idle clients: MQTT 3.1.1 by hand -----

fn put_str(buf: &mut Vec<u8>, s: &str) {
    let n = u16::try_from(s.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&n.to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// A packet: fixed header `first`, remaining length, `body`.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn connect_packet(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, "MQTT");
    body.push(4); // 3.1.1
    body.push(0x80 | 0x40 | 0x02); // user name, password, clean session
    body.extend_from_slice(&KEEP_ALIVE_SECS.to_be_bytes());
    put_str(&mut body, client_id);
    put_str(&mut body, user);
    put_str(&mut body, password);
    packet(0x10, &body)
}

fn subscribe_packet(pkid: u16, filter: &str) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    put_str(&mut body, filter);
    body.push(1); // QoS 1
    packet(0x82, &body)
}

/// One idle bridge: who it is and what it says.
#[derive(Debug)]
struct IdleBridge {
    bridge_id: String,
    client_id: String,
    password: String,
}

/// What the idle clients have done so far.
#[derive(Debug, Default)]
struct IdleState {
    connected: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl IdleState {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut e) = self.first_error.lock() {
            e.get_or_insert(what);
        }
    }
}

/// CONNECT, CONNACK, SUBSCRIBE, SUBACK; the stream once subscribed.
async fn handshake(addr: SocketAddr, b: &IdleBridge, ack_topic: &str) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(&connect_packet(&b.client_id, &b.bridge_id, &b.password))
        .await?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await.context("no CONNACK")?;
    ensure!(
        connack[0] == 0x20 && connack[3] == 0,
        "CONNACK {connack:02x?}"
    );
    s.write_all(&subscribe_packet(1, ack_topic)).await?;
    let mut suback = [0u8; 5];
    s.read_exact(&mut suback).await.context("no SUBACK")?;
    ensure!(
        suback[0] == 0x90 && suback[4] != 0x80,
        "SUBACK {suback:02x?}"
    );
    Ok(s)
}

/// Opens every idle connection (at most [`CONNECTING`] handshakes at once) and keeps each
/// alive until `stop`; returns once all are connected or have failed (or after 10 minutes).
async fn open_idle(
    addr: SocketAddr,
    topics: &Topics,
    bridges: &Arc<Vec<IdleBridge>>,
    stop: &CancellationToken,
) -> anyhow::Result<(Arc<IdleState>, Vec<JoinHandle<()>>)> {
    let state = Arc::new(IdleState::default());
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(bridges.len());
    for i in 0..bridges.len() {
        let (state, gate, bridges, stop) =
            (state.clone(), gate.clone(), bridges.clone(), stop.clone());
        let ack_topic = topics.acks(&bridges[i].bridge_id);
        tasks.push(tokio::spawn(async move {
            let b = &bridges[i];
            let Ok(permit) = gate.acquire().await else {
                return;
            };
            let shaken =
                tokio::time::timeout(Duration::from_secs(60), handshake(addr, b, &ack_topic)).await;
            drop(permit);
            let mut s = match shaken {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return state.fail(format!("{}: {e:#}", b.bridge_id)),
                Err(_) => return state.fail(format!("{}: no answer within 60 s", b.bridge_id)),
            };
            state.connected.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 64];
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(PING_EVERY) => {
                        if s.write_all(&[0xc0, 0x00]).await.is_err() {
                            state.dropped.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                    r = s.read(&mut buf) => {
                        // A PINGRESP (or anything else) is fine; end of stream is not.
                        if !matches!(r, Ok(n) if n > 0) {
                            state.dropped.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            }
        }));
    }
    let n = bridges.len() as u64;
    let mut last = 0;
    loop {
        let (c, f) = (
            state.connected.load(Ordering::SeqCst),
            state.failed.load(Ordering::SeqCst),
        );
        if c + f >= n || started.elapsed() > Duration::from_secs(600) {
            break;
        }
        if c / 1000 != last / 1000 {
            eprintln!("  {c} of {n} connected");
        }
        last = c;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "  {} of {n} connected in {:.1} s",
        state.connected.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64()
    );
    Ok((state, tasks))
}

fn check_idle(state: &IdleState, n: usize, what: &str) -> anyhow::Result<()> {
    let (c, f, d) = (
        state.connected.load(Ordering::SeqCst),
        state.failed.load(Ordering::SeqCst),
        state.dropped.load(Ordering::SeqCst),
    );
    if c != n as u64 || d != 0 {
        let first = state.first_error.lock().ok().and_then(|e| e.clone());
        bail!(
            "{what}: {c} of {n} idle connections up, {f} failed, {d} dropped; first failure: {}",
            first.as_deref().unwrap_or("none (timed out)")
        );
    }
    Ok(())
}

// ----- the sending bridges -----

/// One sending bridge's sealed batches, in order.
struct Sender {
    /// Which sender (its key's seed).
    index: usize,
    bridge_id: String,
    key: BridgeKey,
    device_id: String,
    messages: Vec<(String, Vec<u8>)>,
}

fn build_senders(
    plan: Plan,
    topics: &Topics,
    gateway_key: &ed25519_dalek::VerifyingKey,
    first: chrono::DateTime<Utc>,
) -> anyhow::Result<Vec<Sender>> {
    (0..plan.senders)
        .map(|i| {
            let bridge_id = format!("bench-send-{i:03}");
            let device_id = format!("bench-send-band-{i:03}");
            let key = BridgeKey::from_seed(&seed(1, i));
            let channel = key.channel(gateway_key)?;
            let topic = topics.records(&bridge_id, &device_id);
            let messages = (0..plan.batches)
                .map(|b| {
                    let records = (0..BATCH_RECORDS)
                        .map(|m| {
                            let start = first + TimeDelta::minutes((b * BATCH_RECORDS + m) as i64);
                            phr_e2e::minute_steps(
                                &device_id,
                                &bridge_id,
                                start,
                                ((i * 7 + b * 3 + m) % 120) as i64,
                            )
                        })
                        .collect();
                    let batch = Batch::new(&bridge_id, &device_id, Uuid::new_v4(), records);
                    let payload = serde_json::to_vec(&batch)?;
                    Ok((
                        topic.clone(),
                        channel.seal(&topic, &payload, rand::random()),
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(Sender {
                index: i,
                bridge_id,
                key,
                device_id,
                messages,
            })
        })
        .collect()
}

/// What the senders' acks said so far: batches acked, records stored, anything else (a
/// duplicate, a refusal, a batch error).
#[derive(Debug, Default)]
struct Acked {
    batches: u64,
    stored: u64,
    other: u64,
}

impl Acked {
    /// Counts the acks that have arrived at `bridges` (without waiting for more).
    async fn drain(&mut self, bridges: &mut [RawBridge]) {
        for b in bridges {
            while let Some(a) = b.ack_within(Duration::ZERO).await {
                self.batches += 1;
                self.stored += u64::from(a.stored);
                self.other += u64::from(a.duplicate)
                    + u64::from(a.quarantined)
                    + a.rejected.len() as u64
                    + u64::from(a.batch_error.is_some());
            }
        }
    }
}

fn seed(kind: u8, i: usize) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[0] = kind;
    s[1..9].copy_from_slice(&(i as u64).to_be_bytes());
    s[31] = 0x17;
    s
}

// ----- report -----

#[derive(Debug, Default)]
struct Report {
    rows: Vec<(String, String, Mem, String)>,
}

impl Report {
    fn row(&mut self, what: &str, connections: String, m: Mem, note: String) {
        eprintln!(
            "  {what}: VmRSS {:.1} MB, VmHWM {:.1} MB",
            mb(m.rss_kb),
            mb(m.hwm_kb)
        );
        self.rows.push((what.to_owned(), connections, m, note));
    }
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--rumqttd-helper") {
        return rumqttd_helper();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rumqttd=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let plan = Plan::from_args()?;
    if let Err(e) = raise_nofile(std::process::id()) {
        // A smoke run needs about 3 x 220 descriptors in the gateway: the default 1,024 will
        // do. A full run checks the gateway's limit before it connects anyone.
        eprintln!(
            "(could not raise the file-descriptor limit: {e:#}; going on with the limit inherited)"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "connections benchmark: {} idle bridges + {} sending ({} batches of {BATCH_RECORDS} \
         step records each, one every {} s); file-descriptor limit {}",
        thousands(plan.idle as u64),
        plan.senders,
        plan.batches,
        plan.interval.as_secs(),
        nofile(std::process::id()),
    );
    let mut report = Report::default();
    let verdict = runtime.block_on(run(plan, &mut report))?;

    println!("\n| machine | |\n| --- | --- |");
    for (k, v) in phr_e2e::machine() {
        println!("| {k} | {v} |");
    }
    println!("\n| process | MQTT connections | VmRSS MB | VmHWM MB | note |");
    println!("| --- | --- | --- | --- | --- |");
    for (what, conns, m, note) in &report.rows {
        println!(
            "| {what} | {conns} | {:.1} | {:.1} | {note} |",
            mb(m.rss_kb),
            mb(m.hwm_kb)
        );
    }
    println!();
    for line in verdict {
        println!("{line}");
    }
    Ok(())
}

/// Every stage; returns the summary lines (per-connection cost, goals).
async fn run(plan: Plan, report: &mut Report) -> anyhow::Result<Vec<String>> {
    let gateway_bin = binary("phr-gateway", "phr-gateway")?;
    let bridge_bin = binary("phr-bridge", "phr-bridge")?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("gateway");
    std::fs::create_dir_all(&data)?;
    let topics = Topics::new(PREFIX);
    let gateway_key = phr_e2e::gateway_channel_key(&data)?;

    // Enrolment, in the store the gateway will open (as the operator CLI writes it).
    let started = Instant::now();
    let idle: Arc<Vec<IdleBridge>> = Arc::new(
        (0..plan.idle)
            .map(|i| {
                let bridge_id = format!("bench-idle-{i:05}");
                let client_id = format!("idle-{i}");
                let key = BridgeKey::from_seed(&seed(0, i));
                IdleBridge {
                    password: key.connect_password(&bridge_id, &client_id),
                    bridge_id,
                    client_id,
                }
            })
            .collect(),
    );
    let now = Utc::now().duration_trunc(TimeDelta::minutes(1))?;
    let first = now - TimeDelta::minutes(2 + (plan.batches * BATCH_RECORDS) as i64);
    let senders = build_senders(plan, &topics, &gateway_key, first)?;
    let mut sim = SimulateConfig::new(
        "bench-sim-bridge",
        10,
        dir.path().join("bridge"),
        MqttUrl::new("127.0.0.1", 1),
    );
    {
        let config = phr_gateway::Config {
            data_dir: data.clone(),
            ..phr_gateway::Config::default()
        };
        let store = phr_gateway::Store::open(&config.store_path())?;
        for i in 0..plan.idle {
            let key = BridgeKey::from_seed(&seed(0, i));
            store.register_bridge_key(&idle[i].bridge_id, &key.public_hex())?;
        }
        store.add_person(PERSON_ID, "Bench Person", "Asia/Tokyo")?;
        store.grant_storage_consent(PERSON_ID, &RecordType::ALL)?;
        for s in &senders {
            store.register_bridge_key(&s.bridge_id, &s.key.public_hex())?;
            store.add_device(&s.device_id, &s.bridge_id, Some("phr-reference-band"))?;
            store.bind(&s.device_id, PERSON_ID, first - TimeDelta::hours(1))?;
        }
        phr_e2e::enrol_sim(&store, gateway_key, &mut sim)?;
        for band in sim.bands() {
            store.add_device(&band.device_id, &sim.bridge_id, Some("phr-reference-band"))?;
            store.bind(&band.device_id, PERSON_ID, now - TimeDelta::days(3))?;
        }
    }
    eprintln!(
        "enrolled {} bridges in {:.1} s",
        plan.idle + plan.senders + 1,
        started.elapsed().as_secs_f64()
    );

    // 1. The gateway.
    let mut gw = spawn_gateway(&gateway_bin, &data, any_port(), any_port(), None, PREFIX).await?;
    let pid = gw.process.0.id();
    // Inherited already; said again for a gateway started some other way.
    if let Err(e) = raise_nofile(pid) {
        eprintln!("(gateway: {e:#})");
    }
    let limit = nofile(pid);
    eprintln!("gateway pid {pid}, file-descriptor limit {limit}");
    // About three descriptors per client in the gateway; without enough, accepts fail and
    // clients time out one by one: say so at once instead.
    let need = 3 * (plan.idle + plan.senders + 1) + 512;
    if limit.parse::<usize>().is_ok_and(|l| l < need) {
        bail!(
            "the gateway's file-descriptor limit is {limit}, {} clients need about {need} \
             (3 per client): run as root with CAP_SYS_RESOURCE so that prlimit can raise it, \
             or pass a smaller --idle",
            plan.idle + plan.senders + 1
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = mem(pid)?;
    report.row(
        "gateway, before any client",
        "0".into(),
        before,
        String::new(),
    );
    let stop = CancellationToken::new();
    eprintln!("gateway: opening {} idle connections", plan.idle);
    let (state, idle_tasks) = open_idle(gw.mqtt, &topics, &idle, &stop).await?;
    check_idle(&state, plan.idle, "gateway")?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_mem = mem(pid)?;
    report.row(
        "gateway, idle bridges",
        thousands(plan.idle as u64),
        idle_mem,
        String::new(),
    );

    eprintln!("gateway: {} sending bridges", plan.senders);
    // The harness's bridge client: keep-alive 60 s (rumqttc's default), subscribed to its
    // acks, which it opens with its channel.
    let mut acked = Acked::default();
    let mut clients = Vec::new();
    for s in &senders {
        let key = BridgeKey::from_seed(&seed(1, s.index));
        let channel = key.channel(&gateway_key)?;
        let bridge =
            RawBridge::connect_as(&gw.broker, topics.clone(), &s.bridge_id, key, Some(channel))
                .await
                .with_context(|| format!("sending bridge {}", s.bridge_id))?;
        clients.push(bridge);
    }
    // The 10-band bridge runs alongside.
    let bridge_log = dir.path().join("bridge.log");
    let mut bridge = Process(
        Command::new(&bridge_bin)
            .arg("simulate")
            .args(["--bridge-id", &sim.bridge_id])
            .args(["--devices", "10"])
            .args(["--time-zone", "Asia/Tokyo"])
            .args(["--history-hours", "24"])
            .args(["--mqtt-url", &gw.broker.to_string()])
            .args(["--topic-prefix", PREFIX])
            .arg("--data-dir")
            .arg(&sim.data_dir)
            .args([
                "--gateway-key",
                &phr_schema::channel::key_to_hex(&gateway_key),
            ])
            .args(["--nearby-interval-secs", "0"])
            .env("RUST_LOG", "warn,rumqttc=off")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&bridge_log)?)
            .spawn()
            .context("starting phr-bridge simulate")?,
    );
    let bridge_started = Instant::now();
    let bridge_pid = bridge.0.id();

    let send_started = Instant::now();
    let mut peak = Mem::default();
    let mut tick = tokio::time::interval(plan.interval);
    let mut sample = tokio::time::interval(Duration::from_secs(1));
    let mut next = 0;
    while next < plan.batches {
        tokio::select! {
            _ = tick.tick() => {
                for (bridge, s) in clients.iter().zip(&senders) {
                    let (topic, payload) = s.messages[next].clone();
                    bridge.publish_to(topic, payload).await?;
                }
                next += 1;
            }
            _ = sample.tick() => {
                let m = mem(pid)?;
                peak.rss_kb = peak.rss_kb.max(m.rss_kb);
            }
        }
    }
    // Every ack in (stalling for 30 s at most).
    let want = (plan.senders * plan.batches) as u64;
    acked.drain(&mut clients).await;
    let mut last = (acked.batches, Instant::now());
    while acked.batches < want {
        let c = acked.batches;
        if c != last.0 {
            last = (c, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            break;
        }
        let m = mem(pid)?;
        peak.rss_kb = peak.rss_kb.max(m.rss_kb);
        tokio::time::sleep(Duration::from_millis(200)).await;
        acked.drain(&mut clients).await;
    }
    let send_secs = send_started.elapsed().as_secs_f64();
    let sending = mem(pid)?;
    peak.rss_kb = peak.rss_kb.max(sending.rss_kb);
    peak.hwm_kb = sending.hwm_kb;
    report.row(
        "gateway, idle + sending bridges (RSS: highest sampled)",
        format!("{} + {} + 1", thousands(plan.idle as u64), plan.senders),
        peak,
        format!("goal < {GATEWAY_GOAL_MB:.0} MB (10,000 idle + 100 sending)"),
    );
    // The bridge: the rest of its time, then its memory.
    let rest = Duration::from_secs(plan.bridge_secs).saturating_sub(bridge_started.elapsed());
    tokio::time::sleep(rest).await;
    if let Some(exit) = bridge.0.try_wait()? {
        bail!(
            "phr-bridge simulate exited early ({exit}):\n{}",
            std::fs::read_to_string(&bridge_log).unwrap_or_default()
        );
    }
    let bridge_mem = mem(bridge_pid)?;
    bridge.kill();
    report.row(
        "bridge, `phr-bridge simulate --devices 10`",
        "1".into(),
        bridge_mem,
        format!(
            "after {} s (24 h backfill, then live); goal < {BRIDGE_GOAL_MB:.0} MB",
            plan.bridge_secs
        ),
    );
    let Acked {
        batches,
        stored,
        other,
    } = acked;
    // Idle connections must all still be up.
    check_idle(&state, plan.idle, "gateway (after sending)")?;
    stop.cancel();
    drop(clients);
    for t in idle_tasks {
        let _ = t.await;
    }
    gw.kill();
    ensure!(
        batches == want && stored == want * BATCH_RECORDS as u64 && other == 0,
        "senders: {batches} of {want} batches acked, {stored} records stored, {other} \
         duplicate/quarantined/rejected; expected {} stored",
        want * BATCH_RECORDS as u64
    );
    eprintln!("senders: {batches} batches, {stored} records acked as stored in {send_secs:.1} s");

    // 2. References: the same idle clients.
    let mut references = Vec::new();
    {
        let mosquitto = spawn_mosquitto(dir.path())?;
        let pid = mosquitto.process.0.id();
        if let Err(e) = raise_nofile(pid) {
            eprintln!("(mosquitto: {e:#})");
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
        references.push((
            "Mosquitto (private, in memory)",
            pid,
            addr,
            mosquitto.process,
        ));
    }
    {
        let (process, addr) = spawn_rumqttd_helper()?;
        let pid = process.0.id();
        references.push(("bare rumqttd, the gateway's settings", pid, addr, process));
    }
    let mut per_conn = vec![(
        "gateway",
        (idle_mem.rss_kb.saturating_sub(before.rss_kb)) as f64 / plan.idle.max(1) as f64,
    )];
    for (name, pid, addr, mut process) in references {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = mem(pid)?;
        report.row(
            &format!("{name}, before any client"),
            "0".into(),
            before,
            String::new(),
        );
        eprintln!("{name}: opening {} idle connections", plan.idle);
        let stop = CancellationToken::new();
        let (state, tasks) = open_idle(addr, &topics, &idle, &stop).await?;
        check_idle(&state, plan.idle, name)?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let m = mem(pid)?;
        report.row(
            &format!("{name}, idle bridges"),
            thousands(plan.idle as u64),
            m,
            "reference".into(),
        );
        per_conn.push((
            name,
            (m.rss_kb.saturating_sub(before.rss_kb)) as f64 / plan.idle.max(1) as f64,
        ));
        stop.cancel();
        for t in tasks {
            let _ = t.await;
        }
        process.kill();
    }

    let mut lines = vec![format!(
        "senders: {batches} batches = {stored} records published and acked as stored in \
         {send_secs:.1} s ({:.0} records/s)",
        stored as f64 / send_secs
    )];
    for (name, kb) in per_conn {
        lines.push(format!(
            "{name}: {kb:.1} kB of RSS per idle connection (idle minus before, over {})",
            thousands(plan.idle as u64)
        ));
    }
    let judge = |ok: bool| {
        if plan.quick {
            "not judged (smoke run)"
        } else if ok {
            "MET"
        } else {
            "NOT MET"
        }
    };
    let gateway_mb = mb(peak.rss_kb.max(peak.hwm_kb));
    lines.push(format!(
        "goal gateway < {GATEWAY_GOAL_MB:.0} MB with 10,000 idle + 100 sending: {} \
         (VmHWM {gateway_mb:.1} MB with {} idle + {} sending)",
        judge(gateway_mb < GATEWAY_GOAL_MB && plan.idle >= 10_000 && plan.senders >= SENDERS),
        thousands(plan.idle as u64),
        plan.senders
    ));
    lines.push(format!(
        "goal bridge with 10 bands < {BRIDGE_GOAL_MB:.0} MB: {} (VmHWM {:.1} MB)",
        judge(mb(bridge_mem.hwm_kb) < BRIDGE_GOAL_MB),
        mb(bridge_mem.hwm_kb)
    ));
    Ok(lines)
}
