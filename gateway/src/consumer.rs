//! The MQTT side of ingest: subscribe to every bridge's records topic, check messages in
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

use chrono::Utc;
use rumqttc::{AsyncClient, Event, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use phr_bridge::mqtt::MqttUrl;
use phr_schema::{Limits, PairingReport, Topics};

use crate::ingest;
use crate::metrics::Metrics;
use crate::store::Store;

/// Largest number of messages committed in one transaction.
const MAX_GROUP: usize = 64;

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub mqtt: MqttUrl,
    pub topics: Topics,
    pub limits: Limits,
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
    AsyncClient::new(options, 10_000)
}

/// Runs until `shutdown`. `connected` reports whether the subscription is live.
pub async fn run(
    cfg: ConsumerConfig,
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    connected: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let (work_tx, work_rx) = mpsc::channel::<Publish>(1024);
    let worker = tokio::spawn(work(
        cfg.clone(),
        client.clone(),
        store.clone(),
        metrics,
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
                for f in [filter.clone(), cfg.topics.pairing_reports_filter()] {
                    if let Err(e) = client.try_subscribe(f, QoS::AtLeastOnce) {
                        error!(error = %e, "could not request a subscription");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                subacks += 1;
                if subacks.is_multiple_of(2) {
                    info!(broker = %cfg.mqtt, %filter, "subscribed to bridge records and pairing reports");
                    connected.send_replace(true);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p)))
                if cfg.topics.parse_pairing_reports(&p.topic).is_some() =>
            {
                tokio::spawn(pairing_report(
                    cfg.topics.clone(),
                    client.clone(),
                    store.clone(),
                    p,
                ));
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

/// A group of messages checked and ready to commit, with the publishes to PUBACK after.
type Checked = (Vec<ingest::Checked>, Vec<Publish>);

/// Stage 1: groups messages and checks them (parse, validate) off the async workers, while
/// stage 2 commits the previous group. The hand-over channel holds one group, so at most
/// one group waits checked while another commits.
async fn work(
    cfg: ConsumerConfig,
    client: AsyncClient,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Publish>,
) {
    let (checked_tx, checked_rx) = mpsc::channel::<Checked>(1);
    let committer = tokio::spawn(commit(
        cfg.clone(),
        client.clone(),
        store,
        metrics.clone(),
        checked_rx,
    ));
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        metrics.received(group.len());
        let topics = cfg.topics.clone();
        let limits = cfg.limits.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let now = Utc::now();
            let mut checked = Vec::with_capacity(group.len());
            let mut ours = Vec::with_capacity(group.len());
            let mut foreign = Vec::new();
            for p in group {
                match topics.parse_records(&p.topic) {
                    Some((bridge, device)) => {
                        checked.push(ingest::check(&p.payload, bridge, device, now, &limits));
                        ours.push(p);
                    }
                    None => foreign.push(p),
                }
            }
            (checked, ours, foreign)
        })
        .await;
        let Ok((checked, ours, foreign)) = checked else {
            error!("checking a group of batches panicked; batches not acked");
            continue;
        };
        for p in foreign {
            // The subscription filter guarantees the shape, not the id alphabet: drop such
            // messages from the broker, visibly.
            warn!(
                topic_len = p.topic.len(),
                "ignoring message on an invalid records topic"
            );
            let _ = client.try_ack(&p);
        }
        if !checked.is_empty() && checked_tx.send((checked, ours)).await.is_err() {
            break;
        }
    }
    drop(checked_tx);
    let _ = committer.await;
}

/// Stage 2: one transaction per group, then the acks and PUBACKs.
async fn commit(
    cfg: ConsumerConfig,
    client: AsyncClient,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Checked>,
) {
    while let Some((checked, publishes)) = rx.recv().await {
        let started = Instant::now();
        let store = store.clone();
        let result = tokio::task::spawn_blocking(move || {
            let route: Vec<String> = checked.iter().map(|c| c.bridge_id.clone()).collect();
            store.ingest(checked, Utc::now()).map(|acks| (acks, route))
        })
        .await;
        let (acks, bridges) = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                // Not acked: the bridges resend and nothing is lost.
                error!(error = %e, batches = publishes.len(), "ingest transaction failed; batches not acked");
                metrics.store_error();
                continue;
            }
            Err(e) => {
                error!(error = %e, "ingest task panicked; batches not acked");
                metrics.store_error();
                continue;
            }
        };
        metrics.committed(&acks, started.elapsed());
        for ((ack, bridge), p) in acks.iter().zip(&bridges).zip(&publishes) {
            debug!(bridge_id = %bridge, batch_id = ?ack.batch_id, stored = ack.stored,
                   duplicate = ack.duplicate, quarantined = ack.quarantined,
                   rejected = ack.rejected.len(), "batch committed");
            match serde_json::to_vec(ack) {
                Ok(body) => {
                    if client
                        .try_publish(cfg.topics.acks(bridge), QoS::AtLeastOnce, false, body)
                        .is_err()
                    {
                        warn!(bridge_id = %bridge, "ack queue full; the bridge will resend");
                    }
                }
                Err(e) => error!(error = %e, "could not encode an ack"),
            }
            let _ = client.try_ack(p);
        }
    }
}

/// A bridge's report of the device a pairing names: recorded if it matches the pairing.
async fn pairing_report(topics: Topics, client: AsyncClient, store: Arc<Store>, p: Publish) {
    let bridge = topics.parse_pairing_reports(&p.topic).map(str::to_owned);
    match (bridge, serde_json::from_slice::<PairingReport>(&p.payload)) {
        (Some(bridge), Ok(r)) => {
            let result = tokio::task::spawn_blocking(move || {
                store.report_pairing(r.pairing_id, &bridge, &r)
            })
            .await;
            match result {
                Ok(Ok(true)) => info!("bridge reported the device of a pairing"),
                Ok(Ok(false)) => warn!(
                    "pairing report does not match a pending pairing of that bridge and device"
                ),
                Ok(Err(e)) => error!(error = %e, "could not record a pairing report"),
                Err(e) => error!(error = %e, "pairing report task failed"),
            }
        }
        _ => warn!("unreadable pairing report"),
    }
    let _ = client.try_ack(&p);
}
