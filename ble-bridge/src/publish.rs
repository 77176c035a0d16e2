//! The publisher: moves batches from the outbox to the broker and takes them out only when the
//! gateway's ack arrives.
//!
//! One task owns and polls the rumqttc `EventLoop` (publishing from the polling task deadlocks
//! rumqtt); it reports connection changes and forwards acks. The sender loop publishes up to
//! `max_inflight` unacked batches, resends every unacked batch after a reconnect or after
//! `ack_timeout`, and removes batches on ack. Resending is always safe: the gateway
//! deduplicates by record id and acks a duplicate like a first delivery.
//!
//! Every message is sealed with the channel key this bridge shares with the gateway
//! (`phr_schema::channel`): batches and pairing reports going out, acks and pairing requests
//! coming in. A message that does not open (forged by another client of the broker, or meant
//! for another bridge) is dropped with a warning: a forged ack deletes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use phr_schema::channel::ChannelKey;
use phr_schema::{Ack, PairingReport, PairingRequest, Topics};

use crate::identity::BridgeKey;
use crate::mqtt::MqttUrl;
use crate::outbox::{Outbox, Settlement};
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub mqtt: MqttUrl,
    pub bridge_id: String,
    pub topics: Topics,
    pub ack_timeout: Duration,
    pub max_inflight: usize,
    /// The devices this bridge can vouch for in a pairing, by device id (learnt at runtime).
    pub identities: Identities,
    /// This bridge's key: it signs the MQTT password and, with `gateway_key`, makes the
    /// channel key.
    pub key: std::sync::Arc<BridgeKey>,
    /// The gateway's channel key, as configured at enrolment.
    pub gateway_key: ed25519_dalek::VerifyingKey,
    /// The latest scan, reported on the nearby topic as [`crate::nearby::Pacer`] allows;
    /// `None`: this bridge reports nothing nearby.
    pub nearby: Option<crate::nearby::Latest>,
    /// The shortest time between two nearby reports.
    pub nearby_interval: Duration,
}

/// The identities of the devices a bridge knows, shared between who learns them (the
/// transport, reading Device Information) and who reports them (pairing).
pub type Identities = std::sync::Arc<std::sync::RwLock<HashMap<String, DeviceIdentity>>>;

/// What a bridge read from a device, reported when the owner pairs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub address: Option<String>,
    /// Device Information serial number (0x2A25).
    pub serial_number: Option<String>,
}

/// A pairing code the bridge has shown its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownCode {
    pub pairing_id: Uuid,
    pub device_id: String,
    pub code: String,
}

/// What the bridge reports about its link to the gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub connected: bool,
    pub outbox_batches: usize,
    pub batches_acked: u64,
    pub stored: u64,
    pub duplicate: u64,
    pub quarantined: u64,
    pub rejected: u64,
    /// Records the gateway refused, moved to the dead-letter table (since start).
    pub dead_lettered: u64,
    /// Records discarded because their person erased their data (since start).
    pub discarded_erased: u64,
    /// Records in the dead-letter table now, waiting for the operator.
    pub dead_letter_records: u64,
    /// Batches kept pending because the dead-letter table is full.
    pub held_for_dead_letter_space: usize,
    /// Pairing codes shown, newest last (at most the last 16).
    pub pairing_codes: Vec<ShownCode>,
    /// Nearby reports sent (since start).
    pub nearby_reports: u64,
}

/// Connection generation (bumped on every CONNACK) and whether it is up now.
type Link = (u64, bool);

/// Runs until `shutdown`; errors only if the outbox fails.
pub async fn run(
    cfg: PublisherConfig,
    outbox: Arc<Mutex<Outbox>>,
    wake: Arc<Notify>,
    status: watch::Sender<Status>,
    shutdown: CancellationToken,
) -> Result<()> {
    let channel = Arc::new(cfg.key.channel(&cfg.gateway_key)?);
    let client_id = format!(
        "phr-bridge-{}-{}",
        cfg.bridge_id,
        &Uuid::new_v4().simple().to_string()[..8]
    );
    let mut options = cfg.mqtt.options(&client_id);
    // User name = bridge id, password = the static one configured for a broker with a
    // password file (Mosquitto), else the bridge's signature over its ids, which the
    // embedded broker checks against the bridge's registered key.
    let password = match &cfg.mqtt.password {
        Some(p) => p.expose().to_owned(),
        None => cfg.key.connect_password(&cfg.bridge_id, &client_id),
    };
    options.set_credentials(cfg.bridge_id.clone(), password);
    let (client, eventloop) = AsyncClient::new(options, 256);
    let (link_tx, mut link_rx) = watch::channel::<Link>((0, false));
    let (ack_tx, mut ack_rx) = mpsc::channel::<Ack>(4096);
    let (pair_tx, mut pair_rx) = mpsc::channel::<PairingRequest>(64);
    let topics = Incoming {
        acks: cfg.topics.acks(&cfg.bridge_id),
        pairing: cfg.topics.pairing_requests(&cfg.bridge_id),
        channel: channel.clone(),
    };
    let poller = tokio::spawn(poll(
        eventloop,
        client.clone(),
        topics,
        link_tx,
        ack_tx,
        pair_tx,
        shutdown.clone(),
    ));

    let mut inflight: HashMap<Uuid, Instant> = HashMap::new();
    let mut generation = 0;
    let mut last_depth_log = Instant::now();
    let mut last_dead_read: Option<Instant> = None;
    let mut pacer = crate::nearby::Pacer::new(cfg.nearby_interval);
    let nearby_topic = cfg.topics.nearby(&cfg.bridge_id);
    loop {
        let (gen, connected) = *link_rx.borrow_and_update();
        if gen != generation {
            // A new session: anything unacked may have been lost with the old one.
            inflight.clear();
            generation = gen;
        }
        if connected {
            inflight.retain(|_, sent| sent.elapsed() < cfg.ack_timeout);
            let room = cfg.max_inflight.saturating_sub(inflight.len());
            if room > 0 {
                let want = cfg.max_inflight + inflight.len();
                let mut pending = blocking(&outbox, move |o| o.pending(want)).await?;
                pending.retain(|p| !inflight.contains_key(&p.batch_id));
                pending.truncate(room);
                for p in pending {
                    let topic = cfg.topics.records(&cfg.bridge_id, &p.device_id);
                    debug!(batch_id = %p.batch_id, device_id = %p.device_id, "publishing batch");
                    let sealed = channel.seal(&topic, &p.payload, nonce());
                    if client
                        .publish(topic, QoS::AtLeastOnce, false, sealed)
                        .await
                        .is_err()
                    {
                        break; // event loop gone: shutting down
                    }
                    inflight.insert(p.batch_id, Instant::now());
                }
            }
            if let Some(latest) = &cfg.nearby {
                report_nearby(
                    &client,
                    &channel,
                    &nearby_topic,
                    latest,
                    &mut pacer,
                    &status,
                );
            }
        }
        let depth = blocking(&outbox, |o| o.depth()).await?;
        // The dead-letter depth also changes under the operator's replay and drop (another
        // process): re-read now and then, not every turn (it counts a table).
        let dead = if last_dead_read.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
            last_dead_read = Some(Instant::now());
            Some(blocking(&outbox, |o| o.dead_letter_depth()).await?)
        } else {
            None
        };
        status.send_modify(|s| {
            s.connected = connected;
            s.outbox_batches = depth;
            if let Some(d) = dead {
                s.dead_letter_records = d;
            }
        });
        if depth > 0 && last_depth_log.elapsed() > Duration::from_secs(30) {
            info!(
                outbox_batches = depth,
                connected, "outbox waiting for gateway acks"
            );
            last_depth_log = Instant::now();
        }

        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(first) = ack_rx.recv() => {
                let mut acks = vec![first];
                while let Ok(more) = ack_rx.try_recv() {
                    acks.push(more);
                }
                let ids: Vec<Uuid> = acks.iter().filter_map(|a| a.batch_id).collect();
                let settled = {
                    let acks = acks.clone();
                    blocking(&outbox, move |o| o.settle(&acks, chrono::Utc::now())).await?
                };
                for id in &ids {
                    // A batch held for dead-letter space stays in flight: it is resent after
                    // the ack timeout, not at once.
                    if !settled.held_for_space.contains(id) {
                        inflight.remove(id);
                    }
                }
                let removed = &settled.removed;
                // Only acks of batches this bridge still held count: others' batches on the
                // same topic, or a second ack for one already removed, change nothing.
                acks.retain(|a| a.batch_id.is_some_and(|id| removed.contains(&id)));
                let dead_depth = blocking(&outbox, |o| o.dead_letter_depth()).await?;
                status.send_modify(|s| {
                    s.batches_acked += removed.len() as u64;
                    s.dead_lettered += settled.dead_lettered;
                    s.discarded_erased += settled.discarded_erased;
                    s.dead_letter_records = dead_depth;
                    s.held_for_dead_letter_space = settled.held_for_space.len();
                    for a in &acks {
                        s.stored += u64::from(a.stored);
                        s.duplicate += u64::from(a.duplicate);
                        s.quarantined += u64::from(a.quarantined);
                        s.rejected += a.rejected.len() as u64;
                    }
                });
                log_settlement(&acks, &settled);
            }
            Some(request) = pair_rx.recv() => show_code(&cfg, &channel, &client, &status, request),
            _ = wake.notified() => {}
            _ = link_rx.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    let _ = client.try_disconnect();
    poller.abort();
    Ok(())
}

/// Sends the latest scan on the nearby topic if the pacer says it is due (QoS 1, not
/// retained: an old list must not greet a gateway that subscribes later).
fn report_nearby(
    client: &AsyncClient,
    channel: &ChannelKey,
    topic: &str,
    latest: &crate::nearby::Latest,
    pacer: &mut crate::nearby::Pacer,
    status: &watch::Sender<Status>,
) {
    let now = Instant::now();
    let body = {
        let scan = latest.borrow();
        let Some(report) = scan.as_ref().filter(|r| pacer.due(r, now)) else {
            return;
        };
        match serde_json::to_vec(report) {
            Ok(body) => {
                pacer.sent(report, now);
                body
            }
            Err(e) => {
                warn!(error = %e, "could not encode a nearby report");
                return;
            }
        }
    };
    let sealed = channel.seal(topic, &body, nonce());
    if client
        .try_publish(topic, QoS::AtLeastOnce, false, sealed)
        .is_err()
    {
        // Sent with the next change or refresh.
        debug!("could not queue a nearby report");
        return;
    }
    status.send_modify(|s| s.nearby_reports += 1);
}

/// One line per refused batch (never per record, never a value): what was kept for the
/// operator, what was discarded at the person's request, and what could not be settled.
fn log_settlement(acks: &[Ack], settled: &Settlement) {
    for a in acks
        .iter()
        .filter(|a| a.batch_error.is_some() || !a.rejected.is_empty())
    {
        let reasons: std::collections::BTreeSet<&str> =
            a.rejected.iter().map(|r| r.reason.code()).collect();
        let erased = a
            .rejected
            .iter()
            .filter(|r| r.reason == phr_schema::Reason::ErasedByPerson)
            .count();
        if erased > 0 {
            info!(batch_id = ?a.batch_id, discarded = erased, "records measured before their person's erasure discarded, as the person asked");
        }
        warn!(batch_id = ?a.batch_id, batch_error = ?a.batch_error.map(|r| r.code()), ?reasons, "gateway refused records; kept in the dead-letter table (phr-bridge dead-letter list)");
    }
    if !settled.held_for_space.is_empty() {
        tracing::error!(
            batches = settled.held_for_space.len(),
            "dead-letter table full: refused batches stay in the outbox until the operator replays or drops dead letters"
        );
    }
    if !settled.unreadable.is_empty() {
        tracing::error!(
            batches = settled.unreadable.len(),
            "refused batches whose stored payload cannot be read back stay in the outbox"
        );
    }
    if settled.unknown_indexes > 0 {
        warn!(
            rejections = settled.unknown_indexes,
            "rejections named records a batch does not have; ignored"
        );
    }
}

/// Shows a pairing code for a device this bridge knows, and reports what the device is.
fn show_code(
    cfg: &PublisherConfig,
    channel: &ChannelKey,
    client: &AsyncClient,
    status: &watch::Sender<Status>,
    request: PairingRequest,
) {
    let identity = cfg
        .identities
        .read()
        .ok()
        .and_then(|m| m.get(&request.device_id).cloned());
    let Some(identity) = identity else {
        warn!(device_id = %request.device_id, "pairing request for a device this bridge does not know");
        return;
    };
    if request.expires_at.with_timezone(&chrono::Utc) <= chrono::Utc::now() {
        warn!(pairing_id = %request.pairing_id, "ignoring an expired pairing request");
        return;
    }
    if status
        .borrow()
        .pairing_codes
        .iter()
        .any(|c| c.pairing_id == request.pairing_id)
    {
        debug!(pairing_id = %request.pairing_id, "pairing request seen before");
        return;
    }
    // Computed from the channel key: only this bridge (and the gateway) can know it, and it
    // is meant to be seen by the person standing at the bridge.
    let code = channel.pairing_code(&request.pairing_id, &request.device_id);
    println!(
        "PAIRING CODE for device {}: {} (valid until {})",
        request.device_id, code, request.expires_at
    );
    info!(device_id = %request.device_id, pairing_id = %request.pairing_id, "pairing code shown");
    let report = PairingReport {
        pairing_id: request.pairing_id,
        device_id: request.device_id.clone(),
        address: identity.address.clone(),
        serial_number: identity.serial_number.clone(),
    };
    let topic = cfg.topics.pairing_reports(&cfg.bridge_id);
    match serde_json::to_vec(&report) {
        Ok(body) => {
            let sealed = channel.seal(&topic, &body, nonce());
            if client
                .try_publish(topic, QoS::AtLeastOnce, false, sealed)
                .is_err()
            {
                warn!("could not queue the pairing report; start the pairing again");
            }
        }
        Err(e) => warn!(error = %e, "could not encode a pairing report"),
    }
    status.send_modify(|s| {
        s.pairing_codes.push(ShownCode {
            pairing_id: request.pairing_id,
            device_id: request.device_id,
            code,
        });
        let excess = s.pairing_codes.len().saturating_sub(16);
        s.pairing_codes.drain(..excess);
    });
}

/// The topics a bridge subscribes to, and the channel key what arrives on them must open with.
#[derive(Debug)]
struct Incoming {
    acks: String,
    pairing: String,
    channel: Arc<ChannelKey>,
}

/// Owns the event loop. Never awaits the client's request channel: a full channel would
/// wait for this very loop.
async fn poll(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    topics: Incoming,
    link: watch::Sender<Link>,
    acks: mpsc::Sender<Ack>,
    pairing: mpsc::Sender<PairingRequest>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut awaiting_subacks = 0u32;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                awaiting_subacks = 0;
                for t in [&topics.acks, &topics.pairing] {
                    if client.try_subscribe(t.clone(), QoS::AtLeastOnce).is_err() {
                        warn!(topic = %t, "could not request a subscription");
                    } else {
                        awaiting_subacks += 1;
                    }
                }
            }
            // Connected means subscribed: an ack or a pairing request sent before the
            // subscription is live would be lost.
            Ok(Event::Incoming(Packet::SubAck(_))) if awaiting_subacks > 0 => {
                awaiting_subacks -= 1;
                if awaiting_subacks == 0 {
                    info!(topic = %topics.acks, "connected to broker");
                    link.send_modify(|l| *l = (l.0 + 1, true));
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topics.pairing => {
                let Ok(plain) = topics.channel.open(&p.topic, &p.payload) else {
                    warn!("dropped a pairing request that is not sealed by the gateway");
                    continue;
                };
                match serde_json::from_slice::<PairingRequest>(&plain) {
                    Ok(request) => {
                        if pairing.try_send(request).is_err() {
                            warn!("too many pairing requests at once; one was dropped");
                        }
                    }
                    Err(e) => warn!(error = %e, "unreadable pairing request"),
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topics.acks => {
                let Ok(plain) = topics.channel.open(&p.topic, &p.payload) else {
                    warn!("dropped an ack that is not sealed by the gateway");
                    continue;
                };
                match serde_json::from_slice::<Ack>(&plain) {
                    // A dropped ack only costs a resend, which the gateway answers again.
                    Ok(ack) => {
                        if acks.try_send(ack).is_err() {
                            debug!("ack queue full; the batch will be resent");
                        }
                    }
                    Err(e) => warn!(error = %e, "unreadable ack from gateway"),
                }
            }
            Ok(_) => {}
            Err(e) => {
                if link.borrow().1 {
                    warn!(error = %e, "lost broker connection; retrying");
                } else {
                    debug!(error = %e, "broker not reachable; retrying");
                }
                link.send_modify(|l| l.1 = false);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// 24 bytes from the OS's generator, for a seal.
fn nonce() -> [u8; 24] {
    rand::Rng::gen(&mut rand::rngs::OsRng)
}

/// Runs an outbox call off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    outbox: &Arc<Mutex<Outbox>>,
    f: impl FnOnce(&mut Outbox) -> Result<T> + Send + 'static,
) -> Result<T> {
    let outbox = outbox.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = outbox.lock().map_err(|_| Error::Poisoned)?;
        f(&mut guard)
    })
    .await
    .map_err(|_| Error::Poisoned)?
}
