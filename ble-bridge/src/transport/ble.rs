//! btleplug: the supervisor of device tasks and the scan (see the module above for what they
//! do). The only file that imports btleplug.

use std::collections::HashMap;
use std::time::Duration;

use btleplug::api::{
    Central, CentralEvent, CharPropFlags, Manager as _, Peripheral as _, ScanFilter, WriteType,
};
use btleplug::platform::{Adapter, Manager, Peripheral, PeripheralId};
use chrono::Utc;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{
    history_requests, supported_services, Event, HistoryMarks, Seen, TransportConfig,
    FIRST_HISTORY, READ_AT_CONNECT,
};
use crate::decode;
use crate::{Error, Result};

fn ble(e: btleplug::Error) -> Error {
    Error::Bluetooth(e.to_string())
}

/// The first Bluetooth adapter BlueZ offers.
pub async fn adapter() -> Result<Adapter> {
    let manager = Manager::new().await.map_err(|e| {
        Error::Bluetooth(format!(
            "cannot reach BlueZ over the D-Bus system bus ({e}); is bluetoothd running?"
        ))
    })?;
    manager
        .adapters()
        .await
        .map_err(ble)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Bluetooth("no Bluetooth adapter found".into()))
}

async fn seen(p: &Peripheral) -> Result<Seen> {
    let props = p.properties().await.map_err(ble)?;
    Ok(Seen {
        address: p.address().to_string(),
        name: props.as_ref().and_then(|p| p.local_name.clone()),
        rssi: props.as_ref().and_then(|p| p.rssi),
        services: props.map(|p| p.services).unwrap_or_default(),
    })
}

/// Scans for `duration` and lists what was seen.
pub async fn scan(duration: Duration) -> Result<Vec<Seen>> {
    let central = adapter().await?;
    central
        .start_scan(ScanFilter::default())
        .await
        .map_err(ble)?;
    tokio::time::sleep(duration).await;
    let mut out = Vec::new();
    for p in central.peripherals().await.map_err(ble)? {
        out.push(seen(&p).await?);
    }
    let _ = central.stop_scan().await;
    out.sort_by_key(|s| std::cmp::Reverse(s.rssi));
    Ok(out)
}

fn wanted(cfg: &TransportConfig, s: &Seen) -> bool {
    if cfg.allow.is_empty() {
        let supported = supported_services();
        s.services.iter().any(|u| supported.contains(u))
    } else {
        cfg.allow.iter().any(|a| a.eq_ignore_ascii_case(&s.address))
    }
}

/// One supervised device.
#[derive(Debug)]
struct Slot {
    task: Option<JoinHandle<Result<()>>>,
    stop: CancellationToken,
    failures: u32,
    next_attempt: tokio::time::Instant,
}

impl Slot {
    fn new(stop: CancellationToken) -> Self {
        Self {
            task: None,
            stop,
            failures: 0,
            next_attempt: tokio::time::Instant::now(),
        }
    }

    /// If the device task has ended (disconnected, failed or panicked), collects it and
    /// schedules the next attempt: the backoff doubles with each consecutive failure, from
    /// `backoff_min` up to `backoff_max`; a clean end retries after `backoff_min`. Returns the
    /// backoff when it did.
    fn reap(&mut self, cfg: &TransportConfig, stop: CancellationToken) -> Option<Duration> {
        if !self.task.as_ref().is_some_and(|t| t.is_finished()) {
            return None;
        }
        let failed = match self.task.take().and_then(|t| t.now_or_never()) {
            Some(Ok(Ok(()))) => false,
            Some(Ok(Err(e))) => {
                warn!(error = %e, "device task ended with an error");
                true
            }
            Some(Err(e)) if e.is_panic() => {
                error!("device task panicked; it will be restarted");
                true
            }
            _ => true,
        };
        self.failures = if failed { self.failures + 1 } else { 1 };
        let backoff = backoff(cfg, self.failures);
        self.next_attempt = tokio::time::Instant::now() + backoff;
        self.stop = stop;
        debug!(?backoff, "device will be retried");
        Some(backoff)
    }

    /// Whether a new device task should be started now.
    fn due(&self) -> bool {
        self.task.is_none() && tokio::time::Instant::now() >= self.next_attempt
    }
}

/// The wait before the next attempt after `failures` consecutive failures (at least 1).
fn backoff(cfg: &TransportConfig, failures: u32) -> Duration {
    let doublings = failures.clamp(1, 17) - 1;
    (cfg.backoff_min * 2u32.saturating_pow(doublings)).min(cfg.backoff_max)
}

/// Runs until `shutdown`: keeps every wanted device connected and forwards its values.
pub async fn run(
    cfg: TransportConfig,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
) -> Result<()> {
    let central = adapter().await?;
    let mut central_events = central.events().await.map_err(ble)?;
    central
        .start_scan(ScanFilter::default())
        .await
        .map_err(ble)?;
    let adapter_info = central.adapter_info().await.unwrap_or_default();
    info!(adapter = %adapter_info, "scanning for devices");
    let mut slots: HashMap<PeripheralId, Slot> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut snapshot = tokio::time::interval(crate::nearby::SNAPSHOT_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = snapshot.tick() => {
                let mut seen_now = Vec::new();
                for p in central.peripherals().await.map_err(ble)? {
                    if let Ok(s) = seen(&p).await {
                        if wanted(&cfg, &s) {
                            seen_now.push(s);
                        }
                    }
                }
                seen_now.sort_by_key(|s| std::cmp::Reverse(s.rssi));
                // A full channel: this snapshot is skipped, the next one comes.
                let _ = events.try_send(Event::Nearby { seen: seen_now, at: Utc::now() });
            }
            e = central_events.next() => {
                let Some(e) = e else { return Err(Error::Bluetooth("BlueZ event stream ended".into())) };
                match e {
                    CentralEvent::DeviceDiscovered(id) | CentralEvent::DeviceUpdated(id) => {
                        if let Some(slot) = slots.get_mut(&id) {
                            // Back in range: try again now instead of waiting out the backoff.
                            if slot.task.is_none() {
                                slot.next_attempt = tokio::time::Instant::now();
                            }
                            continue;
                        }
                        let Ok(p) = central.peripheral(&id).await else { continue };
                        let Ok(s) = seen(&p).await else { continue };
                        if wanted(&cfg, &s) {
                            info!(address = %s.address, name = ?s.name, rssi = ?s.rssi, "found a supported device");
                            slots.insert(id, Slot::new(shutdown.child_token()));
                        }
                    }
                    CentralEvent::DeviceDisconnected(id) => {
                        if let Some(slot) = slots.get_mut(&id) {
                            // The task notices through its token; the tick restarts it later.
                            slot.stop.cancel();
                        }
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                for (id, slot) in slots.iter_mut() {
                    slot.reap(&cfg, shutdown.child_token());
                    if slot.due() {
                        match central.peripheral(id).await {
                            Ok(p) => {
                                slot.task = Some(tokio::spawn(device(p, cfg.clone(), events.clone(), slot.stop.clone())));
                            }
                            Err(_) => slot.next_attempt = tokio::time::Instant::now() + cfg.backoff_max,
                        }
                    }
                }
            }
        }
    }
    for slot in slots.values() {
        slot.stop.cancel();
    }
    for slot in slots.values_mut() {
        if let Some(t) = slot.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
    let _ = central.stop_scan().await;
    Ok(())
}

/// One connection to one device, until it drops or `stop`.
async fn device(
    p: Peripheral,
    cfg: TransportConfig,
    events: mpsc::Sender<Event>,
    stop: CancellationToken,
) -> Result<()> {
    let address = p.address().to_string();
    tokio::time::timeout(cfg.connect_timeout, p.connect())
        .await
        .map_err(|_| Error::Bluetooth(format!("connecting to {address} timed out")))?
        .map_err(ble)?;
    p.discover_services().await.map_err(ble)?;
    info!(%address, services = p.services().len(), "connected");
    let _ = events
        .send(Event::Connected {
            address: address.clone(),
        })
        .await;
    let result = serve(&p, &address, &cfg.history, &events, &stop).await;
    let _ = p.disconnect().await;
    let _ = events
        .send(Event::Disconnected {
            address: address.clone(),
        })
        .await;
    info!(%address, "disconnected");
    result
}

async fn serve(
    p: &Peripheral,
    address: &str,
    history: &HistoryMarks,
    events: &mpsc::Sender<Event>,
    stop: &CancellationToken,
) -> Result<()> {
    let mut notifications = p.notifications().await.map_err(ble)?;
    for c in p.characteristics() {
        if READ_AT_CONNECT.contains(&c.uuid) && c.properties.contains(CharPropFlags::READ) {
            match p.read(&c).await {
                Ok(bytes) => {
                    let e = Event::Value {
                        address: address.to_owned(),
                        characteristic: c.uuid,
                        bytes,
                        received_at: Utc::now(),
                    };
                    if events.send(e).await.is_err() {
                        return Ok(());
                    }
                }
                Err(e) => warn!(%address, characteristic = %c.uuid, error = %e, "read failed"),
            }
        }
        let notifies = c
            .properties
            .intersects(CharPropFlags::NOTIFY | CharPropFlags::INDICATE);
        // The PAMS control point answers by indication, which must be on before writing it.
        let control = c.uuid == decode::pams_session::CONTROL_POINT;
        if notifies && (control || decode::decoder_for(c.uuid).is_some()) {
            p.subscribe(&c).await.map_err(ble)?;
            debug!(%address, characteristic = %c.uuid, "subscribed");
        }
    }
    // A PAMS device lists its sessions (Session Descriptors), so summaries of sessions that
    // started before this connection can be timed.
    if let Some(c) = p
        .characteristics()
        .into_iter()
        .find(|c| c.uuid == decode::pams_session::CONTROL_POINT)
    {
        let request = decode::pams_session::encode_enquire_sessions();
        match p.write(&c, &request, WriteType::WithResponse).await {
            Ok(()) => info!(%address, "asked the device for its PAMS sessions"),
            Err(e) => warn!(%address, error = %e, "PAMS Enquire Sessions refused"),
        }
    }
    // Ask for what the device measured while the bridge was away.
    if let Some(c) = p
        .characteristics()
        .into_iter()
        .find(|c| c.uuid == decode::sim_band::HISTORY)
    {
        let marks = history.read().ok().and_then(|m| m.get(address).cloned());
        let requests = history_requests(marks.as_ref(), Utc::now() - FIRST_HISTORY);
        let mut refused = false;
        for &(kind, since) in &requests {
            let request = decode::sim_band::encode_history_request_for(kind, since);
            match p.write(&c, &request, WriteType::WithResponse).await {
                Ok(()) => info!(%address, ?kind, %since, "requested history"),
                Err(e) => {
                    warn!(%address, error = %e, "per-kind history request refused; asking for everything from the earliest mark");
                    refused = true;
                    break;
                }
            }
        }
        if refused {
            let since = requests.iter().map(|r| r.1).min().unwrap_or_else(Utc::now);
            let request = decode::sim_band::encode_history_request(since);
            p.write(&c, &request, WriteType::WithResponse)
                .await
                .map_err(ble)?;
            info!(%address, %since, "requested history");
        }
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            n = notifications.next() => {
                let Some(n) = n else { return Ok(()) };
                if decode::decoder_for(n.uuid).is_none() {
                    // A control point's response: nothing to decode into data.
                    debug!(%address, characteristic = %n.uuid, bytes = n.value.len(), "value without a decoder");
                    continue;
                }
                let e = Event::Value { address: address.to_owned(), characteristic: n.uuid, bytes: n.value, received_at: Utc::now() };
                if events.send(e).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TransportConfig {
        TransportConfig {
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            ..TransportConfig::default()
        }
    }

    async fn finished(slot: &Slot) {
        while !slot.task.as_ref().is_some_and(|t| t.is_finished()) {
            tokio::task::yield_now().await;
        }
    }

    /// Fault injection: real tokio tasks that panic or fail stand in for device tasks (a
    /// device task panics only on a bug, so none can be provoked through BlueZ); the
    /// supervisor's slot collects each, keeps running, and schedules a restart with a backoff
    /// that grows and is capped, and resets after a clean run.
    #[tokio::test]
    async fn a_panicking_or_failing_device_task_is_restarted_with_backoff() {
        let cfg = cfg();
        let mut slot = Slot::new(CancellationToken::new());
        assert!(slot.due(), "a new device is tried at once");
        assert_eq!(
            slot.reap(&cfg, CancellationToken::new()),
            None,
            "nothing to reap"
        );

        let mut waits = Vec::new();
        for i in 0..9 {
            slot.task = Some(tokio::spawn(async move {
                if i % 2 == 0 {
                    panic!("injected fault in a device task");
                }
                Err(Error::Bluetooth("injected failure".into()))
            }));
            assert!(!slot.due(), "a running task is not started twice");
            finished(&slot).await;
            let cancelled = slot.stop.clone();
            cancelled.cancel();
            waits.push(slot.reap(&cfg, CancellationToken::new()).expect("reaped"));
            assert!(slot.task.is_none());
            assert!(
                !slot.stop.is_cancelled(),
                "a fresh stop token for the restart"
            );
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        assert_eq!(slot.failures, 9);

        // A clean end (the device walked away) retries soon and forgets the failures.
        slot.task = Some(tokio::spawn(async { Ok(()) }));
        finished(&slot).await;
        assert_eq!(
            slot.reap(&cfg, CancellationToken::new()),
            Some(Duration::from_millis(500))
        );
        assert_eq!(slot.failures, 1);
        assert!(!slot.due(), "not before the backoff");
        slot.next_attempt = tokio::time::Instant::now();
        assert!(slot.due());
    }

    #[test]
    fn backoff_never_overflows() {
        let cfg = cfg();
        assert_eq!(backoff(&cfg, 0), Duration::from_millis(500));
        assert_eq!(backoff(&cfg, u32::MAX), Duration::from_secs(60));
    }
}
