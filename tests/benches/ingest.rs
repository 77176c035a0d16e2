//! Ingest benchmark: how close the gateway gets to the raw speed of its parts.
//!
//! One run measures, on the same payloads (batches of 60 minute-level `step-count` records,
//! the JSON a bridge publishes), with the same sizes:
//!
//! 1. **Broker**: QoS-1 publish to subscribe through the embedded rumqttd broker
//!    (`phr_gateway::broker::start`), and through the local Mosquitto on 127.0.0.1:1883 if
//!    one answers. One publisher, one subscriber; messages/s until the subscriber has all.
//! 2. **Store**: inserting the same rows into SQLite with the gateway's schema and pragmas
//!    (WAL, `synchronous=FULL`), one transaction per group: one batch per transaction and 64
//!    (the consumer's `MAX_GROUP`). Measured three ways: `Store::ingest` (parse, validate,
//!    attribute, consent check and insert; what the consumer calls), a bare rusqlite INSERT
//!    into an identical `records` table (the floor), and `ingest::plan` alone (CPU only).
//! 3. **Gateway end to end**: a real gateway (`phr_gateway::start`, embedded broker, temp data
//!    dir), a bound person with storage consent; a publisher sends every batch with QoS 1 to
//!    the records topics and a subscriber counts the acks, which the gateway sends only after
//!    the SQLite commit. Records/s from the first publish to the last ack, then the store is
//!    checked to hold exactly the records sent. Variant 3b keeps at most 32 batches unacked,
//!    as the bridge's publisher does (`max_inflight`).
//!
//! Run: `cargo bench -p phr-e2e --bench ingest` (about 105k records, 3 repetitions, median
//! reported) or `cargo bench -p phr-e2e --bench ingest -- --quick` (a smoke run of a few
//! seconds). Results and analysis: `BENCHMARKS.md` at the repository root.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use chrono::{DateTime, DurationRound, FixedOffset, TimeDelta, Utc};
use rumqttc::{AsyncClient, Event, Outgoing, Packet, Publish, QoS};
use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use phr_bridge::mqtt::MqttUrl;
use phr_bridge::publish::Status;
use phr_bridge::simulate::SimulateConfig;
use phr_gateway::ingest::{self, Binding, DeviceView};
use phr_gateway::{Config, Store};
use phr_schema::record::{IntervalFrame, Provenance, StepCount};
use phr_schema::{Ack, Batch, Body, Limits, Record, RecordType, Topics};

/// Records per batch: an hour of minute-level steps, as the bridge batches them.
const BATCH_RECORDS: usize = 60;
/// The consumer's `MAX_GROUP` (gateway/src/consumer.rs): batches per ingest transaction.
const MAX_GROUP: usize = 64;
/// The bridge publisher's default `max_inflight` (unacked batches), for variant 3b.
const BRIDGE_WINDOW: usize = 32;
const BRIDGE_ID: &str = "bench-bridge";

/// The bench bridge's key (made once per run).
fn bench_key() -> &'static phr_bridge::identity::BridgeKey {
    static KEY: std::sync::OnceLock<phr_bridge::identity::BridgeKey> = std::sync::OnceLock::new();
    KEY.get_or_init(phr_bridge::identity::BridgeKey::generate)
}
const PERSON_ID: &str = "bench-person";
/// Give up on a stage when nothing has arrived for this long (a lost message, a dead peer).
const STALL: Duration = Duration::from_secs(15);

/// What one run does: `devices` bands, `hours` batches each, `reps` repetitions per stage.
#[derive(Debug, Clone, Copy)]
struct Plan {
    devices: usize,
    hours: usize,
    reps: usize,
}

impl Plan {
    fn from_args() -> Self {
        // `cargo bench` passes `--bench`; anything but `--quick` is ignored.
        if std::env::args().any(|a| a == "--quick") {
            Self {
                devices: 16,
                hours: 8,
                reps: 1,
            }
        } else {
            // 16 x 110 batches = 1760 batches = 105,600 records over the last ~4.6 days.
            Self {
                devices: 16,
                hours: 110,
                reps: 3,
            }
        }
    }
}

/// One batch as published, plus its rows as the store keeps them (for the bare insert).
#[derive(Debug)]
struct BenchBatch {
    device_id: String,
    batch_id: Uuid,
    payload: Vec<u8>,
    rows: Vec<Row>,
}

#[derive(Debug)]
struct Row {
    start_ms: i64,
    end_ms: i64,
    record_id: String,
    body: String,
}

/// The payloads every stage uses, interleaved across devices as a bridge's outbox drains.
#[derive(Debug)]
struct Workload {
    devices: Vec<String>,
    batches: Vec<BenchBatch>,
    records: usize,
    payload_bytes: usize,
    /// Start of the earliest record; bindings start before it.
    first: DateTime<Utc>,
}

impl Workload {
    fn new(plan: Plan) -> anyhow::Result<Self> {
        let offset = FixedOffset::east_opt(9 * 3600).context("+09:00")?;
        let now = Utc::now().duration_trunc(TimeDelta::minutes(1))?;
        // The last record ends two minutes ago: never in the future, however long the run.
        let first = now - TimeDelta::minutes(2 + (plan.hours * BATCH_RECORDS) as i64);
        let devices: Vec<String> = (0..plan.devices)
            .map(|i| format!("bench-band-{i:04}"))
            .collect();
        let mut batches = Vec::with_capacity(plan.devices * plan.hours);
        let mut rng = SplitMix(0x5eed);
        for hour in 0..plan.hours {
            for device in &devices {
                let records: Vec<Record> = (0..BATCH_RECORDS)
                    .map(|m| {
                        let start = first + TimeDelta::minutes((hour * BATCH_RECORDS + m) as i64);
                        let end = start + TimeDelta::minutes(1);
                        // Mostly idle minutes, some walking, an occasional run; at most 180.
                        let r = rng.next() % 100;
                        let steps = match r {
                            0..=59 => 0,
                            60..=89 => (rng.next() % 120) as i64,
                            _ => 120 + (rng.next() % 61) as i64,
                        };
                        Record::new(
                            device,
                            BRIDGE_ID,
                            end.with_timezone(&offset),
                            Provenance::sensed("phr-reference-band-activity/1"),
                            Body::StepCount(StepCount {
                                effective_time_frame: IntervalFrame::new(
                                    start.with_timezone(&offset),
                                    end.with_timezone(&offset),
                                ),
                                step_count: steps,
                            }),
                        )
                    })
                    .collect();
                let rows = records
                    .iter()
                    .map(|r| {
                        let (s, e) = r.measured();
                        Ok(Row {
                            start_ms: s.timestamp_millis(),
                            end_ms: e.timestamp_millis(),
                            record_id: r.record_id.to_string(),
                            body: serde_json::to_string(r)?,
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let batch = Batch::new(BRIDGE_ID, device, Uuid::new_v4(), records);
                batches.push(BenchBatch {
                    device_id: device.clone(),
                    batch_id: batch.batch_id,
                    payload: serde_json::to_vec(&batch)?,
                    rows,
                });
            }
        }
        let payload_bytes = batches.iter().map(|b| b.payload.len()).sum();
        Ok(Self {
            devices,
            records: batches.len() * BATCH_RECORDS,
            batches,
            payload_bytes,
            first,
        })
    }

    /// `(topic, payload)` for every batch, built before a timer starts.
    fn messages(&self, topics: &Topics) -> Vec<(String, Vec<u8>)> {
        self.batches
            .iter()
            .map(|b| (topics.records(BRIDGE_ID, &b.device_id), b.payload.clone()))
            .collect()
    }

    /// A person with storage consent for steps, every device bound to them, the bridge
    /// enrolled.
    fn register(&self, store: &Store) -> anyhow::Result<()> {
        store.register_bridge_key(BRIDGE_ID, &bench_key().public_hex())?;
        store.add_person(PERSON_ID, "Bench Person", "Asia/Tokyo")?;
        store.grant_storage_consent(PERSON_ID, &[RecordType::StepCount])?;
        for d in &self.devices {
            store.add_device(d, BRIDGE_ID, Some("phr-reference-band"))?;
            store.bind(d, PERSON_ID, self.first - TimeDelta::hours(1))?;
        }
        Ok(())
    }
}

/// A small deterministic generator, so every run sends the same step counts.
#[derive(Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `items` done in `secs`.
#[derive(Debug, Clone, Copy)]
struct Measured {
    items: u64,
    secs: f64,
}

impl Measured {
    fn rate(self) -> f64 {
        self.items as f64 / self.secs
    }
}

/// The median rate of repeated measurements, and the spread.
#[derive(Debug, Clone, Copy)]
struct Summary {
    median: f64,
    min: f64,
    max: f64,
}

impl Summary {
    fn of(runs: &[Measured]) -> Self {
        let mut rates: Vec<f64> = runs.iter().map(|m| m.rate()).collect();
        rates.sort_by(f64::total_cmp);
        let median = rates.get(rates.len() / 2).copied().unwrap_or(f64::NAN);
        Self {
            median,
            min: rates.first().copied().unwrap_or(f64::NAN),
            max: rates.last().copied().unwrap_or(f64::NAN),
        }
    }
}

// ----- MQTT helpers -----

/// Counts events in a polling task; records the instant the count reaches `target`.
#[derive(Debug)]
struct Progress {
    target: u64,
    count: AtomicU64,
    done_at: Mutex<Option<Instant>>,
}

impl Progress {
    fn new(target: u64) -> Arc<Self> {
        Arc::new(Self {
            target,
            count: AtomicU64::new(0),
            done_at: Mutex::new(None),
        })
    }

    fn bump(&self) {
        if self.count.fetch_add(1, Ordering::SeqCst) + 1 == self.target {
            if let Ok(mut d) = self.done_at.lock() {
                *d = Some(Instant::now());
            }
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// The instant the target was reached, or `None` if progress stalled for `STALL`.
    async fn wait(&self) -> Option<Instant> {
        let mut last = (self.count(), Instant::now());
        loop {
            if let Some(at) = self.done_at.lock().ok().and_then(|d| *d) {
                return Some(at);
            }
            let c = self.count();
            if c != last.0 {
                last = (c, Instant::now());
            } else if last.1.elapsed() > STALL {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Connects a client whose event loop a spawned task owns (publishing from the polling task
/// deadlocks rumqttc); `on_publish` sees every incoming message. With `filter`, subscribes at
/// QoS 1 and returns once the SUBACK is in.
async fn connect(
    url: &MqttUrl,
    name: &str,
    filter: Option<String>,
    mut on_publish: impl FnMut(&Publish) + Send + 'static,
) -> anyhow::Result<(AsyncClient, JoinHandle<()>)> {
    let id = format!("{name}-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let mut options = url.options(&id);
    // The gateway's embedded broker admits enrolled bridges only: the bench's bridge proves
    // its enrolled key (a bare broker ignores the credentials).
    options.set_credentials(BRIDGE_ID, bench_key().connect_password(BRIDGE_ID, &id));
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let (ready_tx, mut ready) = watch::channel(false);
    let sub = client.clone();
    let label = name.to_owned();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => match &filter {
                    Some(f) => {
                        let _ = sub.try_subscribe(f.clone(), QoS::AtLeastOnce);
                    }
                    None => {
                        ready_tx.send_replace(true);
                    }
                },
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    ready_tx.send_replace(true);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => on_publish(&p),
                // Our own DISCONNECT went out: stop polling quietly.
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("  ({label}: MQTT connection error: {e}; retrying)");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    let connected = tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r))
        .await
        .is_ok_and(|r| r.is_ok());
    if !connected {
        task.abort();
        bail!("{name}: no connection to {url} within 10 s");
    }
    Ok((client, task))
}

/// Publishes every message at QoS 1, each first taking a permit from `window` if given.
async fn publish_all(
    client: &AsyncClient,
    messages: Vec<(String, Vec<u8>)>,
    window: Option<&Semaphore>,
) -> anyhow::Result<()> {
    for (topic, payload) in messages {
        if let Some(w) = window {
            w.acquire().await?.forget();
        }
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await?;
    }
    Ok(())
}

// ----- 1. broker -----

/// Messages/s through the broker at `url`, publisher to subscriber, QoS 1; `None` if
/// messages stopped arriving before all were in (reported with the count).
async fn broker_rate(url: &MqttUrl, w: &Workload) -> anyhow::Result<Result<Measured, u64>> {
    // A fresh prefix per run: a shared broker (Mosquitto) may carry other traffic.
    let topics = Topics::new(&format!("phr-bench/{}", Uuid::new_v4().simple()));
    let progress = Progress::new(w.batches.len() as u64);
    let p = progress.clone();
    let (sub, sub_task) = connect(url, "bench-sub", Some(topics.records_filter()), move |_| {
        p.bump()
    })
    .await?;
    let (publisher, pub_task) = connect(url, "bench-pub", None, |_| {}).await?;
    let messages = w.messages(&topics);
    let started = Instant::now();
    publish_all(&publisher, messages, None).await?;
    let done = progress.wait().await;
    let _ = publisher.disconnect().await;
    let _ = sub.disconnect().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    pub_task.abort();
    sub_task.abort();
    Ok(match done {
        Some(at) => Ok(Measured {
            items: w.batches.len() as u64,
            secs: (at - started).as_secs_f64(),
        }),
        None => Err(progress.count()),
    })
}

// ----- 2. store -----

/// `Store::ingest` (what the consumer calls) over every batch, `group` batches per
/// transaction, in a fresh store. Counts rows.
fn store_ingest(w: &Workload, group: usize) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("phr.sqlite"))?;
    w.register(&store)?;
    let limits = Limits::default();
    let mut stored = 0u64;
    let started = Instant::now();
    for chunk in w.batches.chunks(group) {
        // The consumer's two stages, here one after the other: check, then attribute + insert.
        let now = Utc::now();
        let checked = chunk
            .iter()
            .map(|b| ingest::check(&b.payload, BRIDGE_ID, &b.device_id, now, &limits))
            .collect();
        let acks = store.ingest(checked, now)?;
        stored += acks.iter().map(|a| u64::from(a.stored)).sum::<u64>();
    }
    let secs = started.elapsed().as_secs_f64();
    ensure!(
        stored == w.records as u64,
        "Store::ingest stored {stored} of {} records",
        w.records
    );
    ensure!(
        store.counts()? == (w.records as u64, 0),
        "store holds {:?}",
        store.counts()?
    );
    Ok(Measured {
        items: stored,
        secs,
    })
}

/// The floor: the same rows (already parsed) into the same table with the same pragmas and
/// statement, `group` batches per `BEGIN IMMEDIATE` transaction.
fn bare_insert(w: &Workload, group: usize) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let mut conn = Connection::open(dir.path().join("bare.sqlite"))?;
    conn.execute_batch(phr_gateway::store::PRAGMAS)?;
    conn.execute_batch(phr_gateway::store::SERIES_SCHEMA)?;
    let mut stored = 0u64;
    let started = Instant::now();
    for chunk in w.batches.chunks(group) {
        let now_ms = Utc::now().timestamp_millis();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO records (device_id, record_type, start_ms, end_ms, record_id, person_id,
                                      bridge_id, batch_id, stored_at_ms, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT DO NOTHING",
            )?;
            for b in chunk {
                let batch_id = b.batch_id.to_string();
                for r in &b.rows {
                    stored += insert.execute(params![
                        b.device_id,
                        RecordType::StepCount.as_str(),
                        r.start_ms,
                        r.end_ms,
                        r.record_id,
                        PERSON_ID,
                        BRIDGE_ID,
                        batch_id,
                        now_ms,
                        r.body
                    ])? as u64;
                }
            }
        }
        tx.commit()?;
    }
    let secs = started.elapsed().as_secs_f64();
    ensure!(
        stored == w.records as u64,
        "bare insert stored {stored} of {} rows",
        w.records
    );
    Ok(Measured {
        items: stored,
        secs,
    })
}

/// `ingest::plan` alone: envelope and record parsing, validation, attribution. No SQLite.
fn plan_only(w: &Workload) -> anyhow::Result<Measured> {
    let view = DeviceView {
        bridge_id: Some(BRIDGE_ID.to_owned()),
        bindings: vec![Binding {
            person_id: PERSON_ID.to_owned(),
            from_ms: (w.first - TimeDelta::hours(1)).timestamp_millis(),
            to_ms: None,
        }],
        storage_consent: vec![(
            PERSON_ID.to_owned(),
            phr_gateway::store::Terms::storage(&[RecordType::StepCount]),
        )],
        ..DeviceView::default()
    };
    let limits = Limits::default();
    let now = Utc::now();
    let mut accepted = 0u64;
    let started = Instant::now();
    for b in &w.batches {
        let plan = ingest::plan(&b.payload, BRIDGE_ID, &b.device_id, &view, now, &limits);
        accepted += std::hint::black_box(plan).accepted.len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    ensure!(
        accepted == w.records as u64,
        "plan accepted {accepted} of {} records",
        w.records
    );
    Ok(Measured {
        items: accepted,
        secs,
    })
}

// ----- 3. gateway end to end -----

/// What one end-to-end run saw.
#[derive(Debug, Clone, Copy)]
struct E2e {
    measured: Measured,
    /// Ingest transactions the gateway committed, and the seconds spent inside them.
    commits: u64,
    commit_secs: f64,
}

/// Acks seen by the bench's bridge-side subscriber.
#[derive(Debug, Default)]
struct AckTotals {
    stored: AtomicU64,
    other: AtomicU64,
}

/// A gateway with its embedded broker on free loopback ports and its data in `dir`.
async fn start_gateway(
    dir: &std::path::Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<phr_gateway::Gateway> {
    let mut config = Config {
        data_dir: dir.join("gateway"),
        ..Config::default()
    };
    // Port 0: the broker's front reports the port it bound (`Gateway::mqtt`).
    config.mqtt.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let http = TcpListener::bind("127.0.0.1:0")?;
    Ok(phr_gateway::start(&config, http, shutdown.clone()).await?)
}

/// A real gateway on a free port; every batch published (at most `window` unacked, if
/// given); records/s from the first publish to the last ack; then the store is checked.
async fn gateway_e2e(w: &Workload, window: Option<usize>) -> anyhow::Result<E2e> {
    let dir = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();
    let mut gateway = start_gateway(dir.path(), &shutdown).await?;
    w.register(&gateway.store)?;
    ensure!(
        gateway.wait_subscribed(Duration::from_secs(10)).await,
        "gateway did not subscribe"
    );

    let topics = Topics::default();
    let progress = Progress::new(w.batches.len() as u64);
    let totals = Arc::new(AckTotals::default());
    let permits = Arc::new(Semaphore::new(window.unwrap_or(0)));
    let (p, t, s) = (progress.clone(), totals.clone(), permits.clone());
    // Batches are sealed by the bridge before they leave it: done here before the clock
    // starts, so what is timed is the gateway's side (which opens every one).
    let channel = bench_key().channel(&gateway.channels.public_key())?;
    let opener = channel.clone();
    let (acks, ack_task) = connect(
        &gateway.mqtt,
        "bench-acks",
        Some(topics.acks(BRIDGE_ID)),
        move |m| {
            let plain = opener.open(&m.topic, &m.payload).unwrap_or_default();
            match serde_json::from_slice::<Ack>(&plain) {
                Ok(a) => {
                    t.stored.fetch_add(u64::from(a.stored), Ordering::SeqCst);
                    let other =
                        u64::from(a.duplicate) + u64::from(a.quarantined) + a.rejected.len() as u64;
                    t.other
                        .fetch_add(other + u64::from(a.batch_error.is_some()), Ordering::SeqCst);
                }
                Err(_) => {
                    t.other.fetch_add(1, Ordering::SeqCst);
                }
            }
            s.add_permits(1);
            p.bump();
        },
    )
    .await?;
    let (publisher, pub_task) = connect(&gateway.mqtt, "bench-bridge", None, |_| {}).await?;
    let messages: Vec<(String, Vec<u8>)> = w
        .messages(&topics)
        .into_iter()
        .map(|(topic, payload)| {
            let sealed = channel.seal(&topic, &payload, rand::random());
            (topic, sealed)
        })
        .collect();

    let started = Instant::now();
    publish_all(&publisher, messages, window.map(|_| &*permits)).await?;
    let done = progress.wait().await;

    let _ = publisher.disconnect().await;
    let _ = acks.disconnect().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    pub_task.abort();
    ack_task.abort();
    let (stored, other) = (
        totals.stored.load(Ordering::SeqCst),
        totals.other.load(Ordering::SeqCst),
    );
    let counts = gateway.store.counts()?;
    let metrics = gateway.metrics.render(counts.0, counts.1);
    shutdown.cancel();
    gateway.stopped().await;

    let Some(done) = done else {
        bail!(
            "only {} of {} batches acked (gateway stalled)",
            progress.count(),
            w.batches.len()
        );
    };
    ensure!(
        stored == w.records as u64 && other == 0,
        "acks report {stored} stored and {other} duplicate/quarantined/rejected; expected {} stored",
        w.records
    );
    ensure!(
        counts == (w.records as u64, 0),
        "store holds {} records and {} quarantined; {} were published",
        counts.0,
        counts.1,
        w.records
    );
    let metric = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    Ok(E2e {
        measured: Measured {
            items: stored,
            secs: (done - started).as_secs_f64(),
        },
        commits: metric("phr_store_commits_total") as u64,
        commit_secs: metric("phr_store_commit_seconds_sum"),
    })
}

/// The real bridge pipeline (`phr_bridge::simulate::run`: simulated bands, GATT decoders,
/// normaliser, durable outbox, publisher waiting for acks) backfilling `hours` of history of
/// `devices` bands into a real gateway, until drained. Different payloads from the stages
/// above (steps, heart rate every 5 minutes, sleep episodes), so reported on its own.
async fn bridge_e2e(devices: usize, hours: usize) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();
    let mut gateway = start_gateway(dir.path(), &shutdown).await?;
    let bridge_id = "bench-sim-bridge";
    let mut cfg = SimulateConfig::new(
        bridge_id,
        devices,
        dir.path().join("bridge"),
        gateway.mqtt.clone(),
    );
    let now = Utc::now();
    cfg.history = TimeDelta::hours(hours as i64);
    cfg.until = Some(now);
    cfg.exit_when_drained = true;
    let store = gateway.store.clone();
    phr_e2e::enrol_sim(&store, gateway.channels.public_key(), &mut cfg)?;
    store.add_person(PERSON_ID, "Bench Person", "Asia/Tokyo")?;
    store.grant_storage_consent(PERSON_ID, &RecordType::ALL)?;
    for band in cfg.bands() {
        store.add_device(&band.device_id, bridge_id, Some("phr-reference-band"))?;
        // Sleep episodes reported at wake-up start the evening before the history window.
        store.bind(
            &band.device_id,
            PERSON_ID,
            now - cfg.history - TimeDelta::days(2),
        )?;
    }
    ensure!(
        gateway.wait_subscribed(Duration::from_secs(10)).await,
        "gateway did not subscribe"
    );
    let (status_tx, status) = watch::channel(Status::default());
    let started = Instant::now();
    let run = phr_bridge::simulate::run(cfg, status_tx, shutdown.child_token());
    let result = tokio::time::timeout(Duration::from_secs(300), run).await;
    let secs = started.elapsed().as_secs_f64();
    let status = status.borrow().clone();
    let counts = store.counts()?;
    shutdown.cancel();
    gateway.stopped().await;
    match result {
        Ok(r) => r?,
        Err(_) => bail!("the simulated bridge did not drain within 300 s: {status:?}"),
    }
    ensure!(
        status.rejected == 0 && status.quarantined == 0 && status.duplicate == 0,
        "bridge saw rejections, quarantine or duplicates: {status:?}"
    );
    ensure!(
        counts == (status.stored, 0) && status.stored > 0,
        "store holds {counts:?}; the bridge was told {} stored",
        status.stored
    );
    eprintln!(
        "  real bridge pipeline: {} records in {} batches, {secs:.1} s",
        status.stored, status.batches_acked
    );
    Ok(Measured {
        items: status.stored,
        secs,
    })
}

// ----- report -----

fn fmt_rate(r: f64) -> String {
    if !r.is_finite() {
        return "-".into();
    }
    phr_e2e::thousands(r.round() as u64)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rumqttd=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let plan = Plan::from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let w = Workload::new(plan)?;
    println!(
        "ingest benchmark: {} batches x {BATCH_RECORDS} step records = {} records from {} devices \
         ({:.1} KB per batch, {:.1} days up to now), {} repetition(s), median reported",
        w.batches.len(),
        w.records,
        w.devices.len(),
        w.payload_bytes as f64 / w.batches.len() as f64 / 1024.0,
        (plan.hours * BATCH_RECORDS) as f64 / 1440.0,
        plan.reps
    );
    let per_batch = BATCH_RECORDS as f64;

    // 1. Broker.
    // rumqttd binds by itself: a taken port is retried.
    let embedded = phr_gateway::broker::start_on_free_port(None, None)?;
    let embedded = MqttUrl::new("127.0.0.1", embedded.port());
    let mosquitto = MqttUrl::new("127.0.0.1", 1883);
    let mosquitto_up = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:1883".parse()?,
        Duration::from_millis(300),
    )
    .is_ok();
    let mut rumqttd_runs = Vec::new();
    let mut mosquitto_runs = Vec::new();
    let mut mosquitto_note =
        (!mosquitto_up).then(|| "not reachable on 127.0.0.1:1883; skipped".to_owned());
    for rep in 0..plan.reps {
        eprintln!("[rep {}] broker: rumqttd", rep + 1);
        match runtime.block_on(broker_rate(&embedded, &w))? {
            Ok(m) => rumqttd_runs.push(m),
            Err(n) => bail!(
                "embedded broker delivered only {n} of {} messages",
                w.batches.len()
            ),
        }
        if mosquitto_note.is_none() {
            eprintln!("[rep {}] broker: mosquitto", rep + 1);
            match runtime.block_on(broker_rate(&mosquitto, &w)) {
                Ok(Ok(m)) => mosquitto_runs.push(m),
                Ok(Err(n)) => {
                    mosquitto_note = Some(format!(
                        "delivered only {n} of {} messages; skipped",
                        w.batches.len()
                    ))
                }
                Err(e) => mosquitto_note = Some(format!("failed ({e:#}); skipped")),
            }
        }
    }

    // 2. Store.
    let mut store = [Vec::new(), Vec::new()];
    let mut bare = [Vec::new(), Vec::new()];
    let mut plans = Vec::new();
    for rep in 0..plan.reps {
        for (i, group) in [1, MAX_GROUP].into_iter().enumerate() {
            eprintln!(
                "[rep {}] store: Store::ingest and bare insert, {group} batch(es) per transaction",
                rep + 1
            );
            store[i].push(store_ingest(&w, group)?);
            bare[i].push(bare_insert(&w, group)?);
        }
        plans.push(plan_only(&w)?);
    }

    // 3. Gateway end to end.
    let mut e2e = Vec::new();
    let mut e2e_window = Vec::new();
    let mut bridge_runs = Vec::new();
    for rep in 0..plan.reps {
        eprintln!("[rep {}] gateway end to end: open loop", rep + 1);
        e2e.push(runtime.block_on(gateway_e2e(&w, None))?);
        eprintln!(
            "[rep {}] gateway end to end: {BRIDGE_WINDOW} batches in flight",
            rep + 1
        );
        e2e_window.push(runtime.block_on(gateway_e2e(&w, Some(BRIDGE_WINDOW)))?);
    }
    // Bridge-bound and slow (see BENCHMARKS.md): once is enough to show where it stands.
    eprintln!("gateway end to end: real bridge pipeline");
    bridge_runs.push(runtime.block_on(bridge_e2e(plan.devices, plan.hours))?);

    // Report (Markdown, to paste into BENCHMARKS.md).
    let s1 = Summary::of(&rumqttd_runs);
    let s1m = (!mosquitto_runs.is_empty()).then(|| Summary::of(&mosquitto_runs));
    let s2 = [Summary::of(&store[0]), Summary::of(&store[1])];
    let s2b = [Summary::of(&bare[0]), Summary::of(&bare[1])];
    let s3 = Summary::of(&e2e.iter().map(|e| e.measured).collect::<Vec<_>>());
    let s3w = Summary::of(&e2e_window.iter().map(|e| e.measured).collect::<Vec<_>>());
    let s3c = Summary::of(&bridge_runs);

    println!("\n| machine | |\n| --- | --- |");
    for (k, v) in phr_e2e::machine() {
        println!("| {k} | {v} |");
    }
    println!("\n| measurement | rate (median) | records/s (median) | records/s (min .. max) |");
    println!("| --- | --- | --- | --- |");
    let mut rows: Vec<(&str, &str, Summary, f64)> = vec![(
        "(1) broker QoS-1 pub/sub, rumqttd (embedded)",
        "msg/s",
        s1,
        per_batch,
    )];
    match (s1m, &mosquitto_note) {
        (Some(s), None) => rows.push((
            "(1') broker QoS-1 pub/sub, Mosquitto",
            "msg/s",
            s,
            per_batch,
        )),
        (_, note) => println!(
            "| (1') broker QoS-1 pub/sub, Mosquitto | {} | - | - |",
            note.as_deref().unwrap_or("skipped")
        ),
    }
    rows.extend([
        (
            "(2) `Store::ingest`, 64 batches per tx",
            "rows/s",
            s2[1],
            1.0,
        ),
        ("(2) `Store::ingest`, 1 batch per tx", "rows/s", s2[0], 1.0),
        (
            "(2) bare rusqlite INSERT, 64 batches per tx",
            "rows/s",
            s2b[1],
            1.0,
        ),
        (
            "(2) bare rusqlite INSERT, 1 batch per tx",
            "rows/s",
            s2b[0],
            1.0,
        ),
        (
            "(2) `ingest::plan` only, no SQLite",
            "rows/s",
            Summary::of(&plans),
            1.0,
        ),
        (
            "(3) gateway e2e, all batches published at once",
            "rows/s",
            s3,
            1.0,
        ),
        (
            "(3b) gateway e2e, 32 batches unacked at most",
            "rows/s",
            s3w,
            1.0,
        ),
        (
            "(3c) gateway e2e, real bridge pipeline (own data, 1 run)",
            "rows/s",
            s3c,
            1.0,
        ),
    ]);
    for (what, unit, s, per) in rows {
        println!(
            "| {what} | {} {unit} | {} | {} .. {} |",
            fmt_rate(s.median),
            fmt_rate(s.median * per),
            fmt_rate(s.min * per),
            fmt_rate(s.max * per)
        );
    }

    println!("\n| ratio (of medians) | value |\n| --- | --- |");
    let mut ratios = vec![
        (
            "(3) / (2) `Store::ingest` 64 per tx",
            s3.median / s2[1].median,
        ),
        (
            "(3) / (2) `Store::ingest` 1 per tx",
            s3.median / s2[0].median,
        ),
        ("(3) / (2) bare INSERT 64 per tx", s3.median / s2b[1].median),
        ("(3) / (1) rumqttd", s3.median / (s1.median * per_batch)),
    ];
    if let Some(m) = s1m {
        ratios.push(("(3) / (1') Mosquitto", s3.median / (m.median * per_batch)));
    }
    ratios.extend([
        (
            "(3b) / (2) `Store::ingest` 64 per tx",
            s3w.median / s2[1].median,
        ),
        (
            "(3c) / (2) `Store::ingest` 64 per tx",
            s3c.median / s2[1].median,
        ),
        (
            "(2) `Store::ingest` / bare INSERT, 64 per tx",
            s2[1].median / s2b[1].median,
        ),
    ]);
    for (what, v) in ratios {
        println!("| {what} | {v:.2} |");
    }

    println!();
    let verdict = if plan.reps == 1 {
        // A smoke run is too short for a verdict; only the full run's numbers go in
        // BENCHMARKS.md.
        "not judged (smoke run)"
    } else if s3.median >= 0.7 * s2[1].median {
        "MET"
    } else {
        "NOT MET"
    };
    println!(
        "target (3) >= 0.7 x (2) `Store::ingest` 64 per tx: {verdict} ({} vs {})",
        fmt_rate(s3.median),
        fmt_rate(0.7 * s2[1].median)
    );
    // Per-row cost at group g is c + F / (60 g): the 1-per-tx vs 64-per-tx difference of the
    // bare insert isolates F, the fixed cost of one commit (mostly the WAL fsync).
    let commit_ms = (1.0 / s2b[0].median - 1.0 / s2b[1].median) * per_batch * 64.0 / 63.0 * 1e3;
    println!("fixed cost of one commit (bare insert, 1 vs 64 per tx): {commit_ms:.2} ms");
    for (name, runs) in [("(3)", &e2e), ("(3b)", &e2e_window)] {
        let commits: u64 = runs.iter().map(|e| e.commits).sum();
        let commit_secs: f64 = runs.iter().map(|e| e.commit_secs).sum();
        let wall: f64 = runs.iter().map(|e| e.measured.secs).sum();
        let batches = (w.batches.len() * runs.len()) as f64;
        println!(
            "{name}: {:.1} batches per ingest transaction on average; \
             {:.0}% of the wall time inside ingest transactions",
            batches / commits.max(1) as f64,
            100.0 * commit_secs / wall
        );
    }
    Ok(())
}
