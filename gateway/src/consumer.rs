//! The MQTT side of ingest: subscribe to every bridge's records, pairing reports and nearby
//! reports (each refused unread unless it opens with its bridge's channel key), check messages in
//! groups outside the store's lock, commit each group in one transaction (one fsync, many
//! batches) while the next group is being checked, and only after the commit publish each
//! batch's ack and PUBACK the message.
//!
//! One task owns the rumqttc event loop and only forwards; the worker never awaits the
//! client's request channel (`try_publish` / `try_ack`), so neither can wait for the other.
//! If an ack cannot be queued, the bridge times out and resends, and the resend is answered
//! as a duplicate: slower, never lost, never stored twice.

use std::sync::Arc;
use std::time::Instant;

use rumqttc::{AsyncClient, Event, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use phr_schema::mqtt::MqttUrl;
use phr_schema::{Limits, NearbyReport, PairingReport, Topics};

use crate::channel::Channels;
use crate::ingest;
use crate::metrics::Metrics;
use crate::store::nearby::Recorded;
use crate::store::prelude::*;
use crate::store::{RefusedBatch, SharedClock};

/// Largest number of messages committed in one transaction.
const MAX_GROUP: usize = 64;

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub mqtt: MqttUrl,
    pub topics: Topics,
    pub limits: Limits,
    /// User name and password towards the broker, if it asks for them.
    pub credentials: Option<(String, String)>,
    /// The channels of enrolled bridges: batches and reports open with them, acks are sealed.
    pub channels: Arc<Channels>,
    /// Where checks and commits read the time (the gateway's clock). The commit's duration
    /// for the metrics stays on `Instant`: it is a measurement, not a decision.
    pub clock: SharedClock,
}

/// The gateway's MQTT client and the event loop [`run`] will own. The client is shared with
/// the API, which sends pairing requests through it.
pub fn connect(cfg: &ConsumerConfig) -> (AsyncClient, rumqttc::EventLoop) {
    let client_id = format!(
        "phr-gateway-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut options = cfg.mqtt.options(&client_id);
    options.set_manual_acks(true).set_inflight(1000);
    if let Some((user, password)) = &cfg.credentials {
        options.set_credentials(user.clone(), password.clone());
    }
    AsyncClient::new(options, 10_000)
}

/// Runs until `shutdown`. `connected` reports whether the subscription is live.
pub async fn run(
    cfg: ConsumerConfig,
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    store: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    connected: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let (work_tx, work_rx) = mpsc::channel::<Publish>(1024);
    let worker = tokio::spawn(work(
        cfg.clone(),
        client.clone(),
        store.clone(),
        metrics.clone(),
        work_rx,
    ));

    let filter = cfg.topics.records_filter();
    let mut backoff = std::time::Duration::from_millis(100);
    let mut subacks = 0u64;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = std::time::Duration::from_millis(100);
                metrics.mqtt_connected();
                for f in [
                    filter.clone(),
                    cfg.topics.pairing_reports_filter(),
                    cfg.topics.nearby_filter(),
                ] {
                    if let Err(e) = client.try_subscribe(f, QoS::AtLeastOnce) {
                        error!(error = %e, "could not request a subscription");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                subacks += 1;
                if subacks.is_multiple_of(3) {
                    info!(broker = %cfg.mqtt, %filter, "subscribed to bridge records, pairing and nearby reports");
                    connected.send_replace(true);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // Back-pressure: while the store is busy, stop reading from the broker.
                if work_tx.send(p).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                if *connected.borrow() {
                    warn!(error = %e, broker = %cfg.mqtt, "lost broker connection; retrying");
                } else {
                    debug!(error = %e, "broker not reachable; retrying");
                }
                connected.send_replace(false);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
    let _ = client.try_disconnect();
    drop(work_tx);
    let _ = worker.await;
}

/// What one received message is, decided in the check stage.
#[derive(Debug)]
enum Item {
    /// A records batch that opened with its bridge's channel key: its index among the
    /// group's checked batches.
    Batch(usize),
    /// A records batch refused unread: no ack (there is nobody proven to tell), counted.
    Refused(String, RefusedBatch),
    /// A bridge's pairing report; `None` if it did not open or parse.
    Pairing(String, Option<PairingReport>),
    /// A bridge's nearby report, or why it does not count (refused unread if it did not
    /// open; counted with refused batches either way).
    Nearby(String, Result<NearbyReport, RefusedBatch>),
    /// Not a topic this gateway serves.
    Foreign,
}

/// Opens a message from `bridge` on `topic`: `Err` says why it does not count.
fn open(
    channels: &Channels,
    bridge: &str,
    topic: &str,
    payload: &[u8],
) -> Result<Vec<u8>, RefusedBatch> {
    match channels.channel(bridge) {
        Ok(Some(c)) => c.open(topic, payload).map_err(|_| RefusedBatch::NotSealed),
        Ok(None) => Err(RefusedBatch::NotEnrolled),
        Err(e) => {
            error!(error = %e, "could not read a bridge's enrolment; refusing its message");
            Err(RefusedBatch::NotEnrolled)
        }
    }
}

/// A group of messages checked and ready to commit, with every message of the group in the
/// order received: PUBACKs must go out in that order (MQTT 3.1.1 §4.6; rumqttd drops a
/// client that acks out of order).
type Group = (Vec<ingest::Checked>, Vec<(Publish, Item)>);

/// Stage 1: groups messages and checks them (parse, validate) off the async workers, while
/// stage 2 commits the previous group. The hand-over channel holds one group, so at most
/// one group waits checked while another commits.
async fn work(
    cfg: ConsumerConfig,
    client: AsyncClient,
    store: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Publish>,
) {
    let (group_tx, group_rx) = mpsc::channel::<Group>(1);
    let committer = tokio::spawn(commit(
        cfg.clone(),
        client,
        store,
        metrics.clone(),
        group_rx,
    ));
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let topics = cfg.topics.clone();
        let limits = cfg.limits.clone();
        let channels = cfg.channels.clone();
        let clock = cfg.clock.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let now = clock.now();
            let mut checked = Vec::with_capacity(group.len());
            let mut items = Vec::with_capacity(group.len());
            for p in group {
                let item = if let Some((bridge, device)) = topics.parse_records(&p.topic) {
                    match open(&channels, bridge, &p.topic, &p.payload) {
                        Ok(batch) => {
                            checked.push(ingest::check(&batch, bridge, device, now, &limits));
                            Item::Batch(checked.len() - 1)
                        }
                        Err(why) => Item::Refused(bridge.to_owned(), why),
                    }
                } else if let Some(bridge) = topics.parse_pairing_reports(&p.topic) {
                    let report = open(&channels, bridge, &p.topic, &p.payload)
                        .ok()
                        .and_then(|r| serde_json::from_slice(&r).ok());
                    Item::Pairing(bridge.to_owned(), report)
                } else if let Some(bridge) = topics.parse_nearby(&p.topic) {
                    let report = open(&channels, bridge, &p.topic, &p.payload).and_then(|r| {
                        NearbyReport::parse(&r).map_err(|e| {
                            debug!(bridge_id = %bridge, reason = e.code(), "invalid nearby report");
                            RefusedBatch::InvalidReport
                        })
                    });
                    Item::Nearby(bridge.to_owned(), report)
                } else {
                    Item::Foreign
                };
                items.push((p, item));
            }
            (checked, items)
        })
        .await;
        let Ok(group) = checked else {
            error!("checking a group of messages panicked; not acked");
            continue;
        };
        metrics.received(group.0.len());
        if group_tx.send(group).await.is_err() {
            break;
        }
    }
    drop(group_tx);
    let _ = committer.await;
}

/// Stage 2: one transaction per group, pairing reports recorded, then the acks and PUBACKs
/// in the order the messages arrived.
async fn commit(
    cfg: ConsumerConfig,
    client: AsyncClient,
    store: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Group>,
) {
    let channels = cfg.channels.clone();
    while let Some((checked, items)) = rx.recv().await {
        let started = Instant::now();
        let store = store.clone();
        let reports: Vec<(String, PairingReport)> = items
            .iter()
            .filter_map(|(_, i)| match i {
                Item::Pairing(bridge, Some(r)) => Some((bridge.clone(), r.clone())),
                _ => None,
            })
            .collect();
        let mut refused: Vec<(String, RefusedBatch)> = items
            .iter()
            .filter_map(|(_, i)| match i {
                Item::Refused(bridge, why) | Item::Nearby(bridge, Err(why)) => {
                    Some((bridge.clone(), *why))
                }
                _ => None,
            })
            .collect();
        let nearby: Vec<(String, NearbyReport)> = items
            .iter()
            .filter_map(|(_, i)| match i {
                Item::Nearby(bridge, Ok(r)) => Some((bridge.clone(), r.clone())),
                _ => None,
            })
            .collect();
        let batches = checked.len();
        let clock = cfg.clock.clone();
        let result = tokio::task::spawn_blocking(move || -> crate::Result<_> {
            let now = clock.now();
            let route: Vec<String> = checked.iter().map(|c| c.bridge_id.clone()).collect();
            let acks = if checked.is_empty() {
                Vec::new()
            } else {
                store.ingest(checked, now)?
            };
            let mut recorded = Vec::with_capacity(reports.len());
            for (bridge, r) in &reports {
                recorded.push(store.report_pairing(r.pairing_id, bridge, r)?);
            }
            let mut seen_nearby = Vec::with_capacity(nearby.len());
            for (bridge, r) in &nearby {
                let outcome = store.record_nearby(bridge, r, now)?;
                match outcome {
                    // Enrolment revoked since the report opened.
                    Recorded::NotEnrolled => {
                        refused.push((bridge.clone(), RefusedBatch::NotEnrolled))
                    }
                    Recorded::InFuture => {
                        refused.push((bridge.clone(), RefusedBatch::InvalidReport))
                    }
                    Recorded::Stored | Recorded::NotNewer => {}
                }
                seen_nearby.push(outcome);
            }
            store.count_refused(&refused, now)?;
            Ok((acks, route, recorded, seen_nearby))
        })
        .await;
        let (acks, bridges, recorded, seen_nearby) = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                // Not acked: the bridges resend and nothing is lost. (A broker that insists on
                // in-order PUBACKs may drop the connection at the next ack; the resends cover
                // that too.)
                error!(error = %e, messages = items.len(), "ingest transaction failed; not acked");
                metrics.store_error();
                continue;
            }
            Err(e) => {
                error!(error = %e, "ingest task panicked; not acked");
                metrics.store_error();
                continue;
            }
        };
        if batches > 0 {
            metrics.committed(&acks, started.elapsed());
        }
        let mut recorded = recorded.into_iter();
        let mut seen_nearby = seen_nearby.into_iter();
        for (p, item) in &items {
            match item {
                Item::Batch(i) => {
                    let (ack, bridge) = (&acks[*i], &bridges[*i]);
                    debug!(bridge_id = %bridge, batch_id = ?ack.batch_id, stored = ack.stored,
                           duplicate = ack.duplicate, quarantined = ack.quarantined,
                           rejected = ack.rejected.len(), "batch committed");
                    let topic = cfg.topics.acks(bridge);
                    let sealed = serde_json::to_vec(ack)
                        .map_err(|e| e.to_string())
                        .and_then(|body| channels.seal(bridge, &topic, &body).map_err(|e| e.to_string()));
                    match sealed {
                        Ok(Some(body)) => {
                            if client.try_publish(topic, QoS::AtLeastOnce, false, body).is_err() {
                                warn!(bridge_id = %bridge, "ack queue full; the bridge will resend");
                            }
                        }
                        // Enrolment revoked between opening and acking: nobody to tell.
                        Ok(None) => warn!(bridge_id = %bridge, "no channel to ack a batch on"),
                        Err(e) => error!(error = %e, "could not seal an ack"),
                    }
                }
                Item::Refused(bridge, why) => {
                    metrics.refused_batch();
                    debug!(bridge_id = %bridge, reason = why.code(), "batch refused unread");
                }
                Item::Pairing(_, Some(_)) => match recorded.next() {
                    Some(true) => info!("bridge reported the device of a pairing"),
                    _ => warn!("pairing report does not match a pending, unreported pairing of that bridge and device"),
                },
                Item::Pairing(_, None) => warn!("unreadable pairing report"),
                Item::Nearby(bridge, Ok(_)) => match seen_nearby.next() {
                    Some(Recorded::Stored) => debug!(bridge_id = %bridge, "nearby report recorded"),
                    Some(Recorded::NotNewer) => debug!(bridge_id = %bridge, "nearby report not newer than the stored one; ignored"),
                    Some(Recorded::InFuture) => {
                        metrics.refused_batch();
                        warn!(bridge_id = %bridge, "nearby report scanned too far in the future (bridge clock?); refused");
                    }
                    Some(Recorded::NotEnrolled) | None => metrics.refused_batch(),
                },
                Item::Nearby(bridge, Err(why)) => {
                    metrics.refused_batch();
                    debug!(bridge_id = %bridge, reason = why.code(), "nearby report refused");
                }
                // The subscription filters guarantee the shape, not the id alphabet: drop
                // such messages from the broker, visibly.
                Item::Foreign => warn!(topic_len = p.topic.len(), "ignoring a message on an invalid topic"),
            }
            let _ = client.try_ack(p);
        }
    }
}
