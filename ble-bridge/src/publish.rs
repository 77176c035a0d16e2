//! The publisher: moves batches from the outbox to the broker and takes them out only when the
//! gateway's ack arrives.
//!
//! One task owns and polls the rumqttc `EventLoop` (publishing from the polling task deadlocks
//! rumqtt); it reports connection changes and forwards acks. The sender loop publishes up to
//! `max_inflight` unacked batches, resends every unacked batch after a reconnect or after
//! `ack_timeout`, and removes batches on ack. Resending is always safe: the gateway
//! deduplicates by record id and acks a duplicate like a first delivery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use phr_schema::{Ack, Topics};

use crate::mqtt::MqttUrl;
use crate::outbox::Outbox;
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub mqtt: MqttUrl,
    pub bridge_id: String,
    pub topics: Topics,
    pub ack_timeout: Duration,
    pub max_inflight: usize,
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
    let client_id = format!(
        "phr-bridge-{}-{}",
        cfg.bridge_id,
        &Uuid::new_v4().simple().to_string()[..8]
    );
    let (client, eventloop) = AsyncClient::new(cfg.mqtt.options(&client_id), 256);
    let (link_tx, mut link_rx) = watch::channel::<Link>((0, false));
    let (ack_tx, mut ack_rx) = mpsc::channel::<Ack>(4096);
    let ack_topic = cfg.topics.acks(&cfg.bridge_id);
    let poller = tokio::spawn(poll(
        eventloop,
        client.clone(),
        ack_topic,
        link_tx,
        ack_tx,
        shutdown.clone(),
    ));

    let mut inflight: HashMap<Uuid, Instant> = HashMap::new();
    let mut generation = 0;
    let mut last_depth_log = Instant::now();
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
                    if client
                        .publish(topic, QoS::AtLeastOnce, false, p.payload)
                        .await
                        .is_err()
                    {
                        break; // event loop gone: shutting down
                    }
                    inflight.insert(p.batch_id, Instant::now());
                }
            }
        }
        let depth = blocking(&outbox, |o| o.depth()).await?;
        status.send_modify(|s| {
            s.connected = connected;
            s.outbox_batches = depth;
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
                for id in &ids {
                    inflight.remove(id);
                }
                let removed = blocking(&outbox, move |o| o.remove(&ids)).await?;
                status.send_modify(|s| {
                    s.batches_acked += removed as u64;
                    for a in &acks {
                        s.stored += u64::from(a.stored);
                        s.duplicate += u64::from(a.duplicate);
                        s.quarantined += u64::from(a.quarantined);
                        s.rejected += a.rejected.len() as u64;
                    }
                });
                for a in acks.iter().filter(|a| a.batch_error.is_some() || !a.rejected.is_empty()) {
                    let reasons: Vec<&str> = a.rejected.iter().map(|r| r.reason.code()).collect();
                    warn!(batch_id = ?a.batch_id, batch_error = ?a.batch_error.map(|r| r.code()), ?reasons, "gateway rejected records");
                }
            }
            _ = wake.notified() => {}
            _ = link_rx.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    let _ = client.try_disconnect();
    poller.abort();
    Ok(())
}

/// Owns the event loop. Never awaits the client's request channel: a full channel would
/// wait for this very loop.
async fn poll(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    ack_topic: String,
    link: watch::Sender<Link>,
    acks: mpsc::Sender<Ack>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                if client
                    .try_subscribe(ack_topic.clone(), QoS::AtLeastOnce)
                    .is_err()
                {
                    warn!("could not request the ack subscription");
                }
                info!(topic = %ack_topic, "connected to broker");
                link.send_modify(|l| *l = (l.0 + 1, true));
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == ack_topic => {
                match serde_json::from_slice::<Ack>(&p.payload) {
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
