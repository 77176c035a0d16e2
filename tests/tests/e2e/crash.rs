//! Crashes and restarts mid-stream: nothing acknowledged is lost, nothing is stored twice.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::TimeDelta;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use phr_bridge::mqtt::MqttUrl;
use phr_bridge::publish::Status;
use phr_bridge::simulate;
use phr_e2e::{
    any_port, binary, enrol, enrol_sim, external_broker, gateway_channel_key, spawn_gateway,
    spawn_mosquitto, stored_ids, test_prefix, wait_for, TestGateway,
};

use super::{expected, sim_config, sim_until};

/// Waits until the bridge has had at least one batch acked, but not all.
async fn first_acks(rx: &mut watch::Receiver<Status>) -> anyhow::Result<u64> {
    let s = tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|s| s.stored > 0)).await??;
    Ok(s.stored)
}

fn assert_exactly(
    data_dir: &std::path::Path,
    want: &std::collections::BTreeMap<uuid::Uuid, phr_schema::Record>,
    person: &str,
) -> anyhow::Result<()> {
    assert!(!want.is_empty(), "the bridge generates records");
    let rows = stored_ids(data_dir)?;
    let ids: BTreeSet<String> = rows.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids.len(), rows.len(), "a record id is stored twice");
    let want_ids: BTreeSet<String> = want.keys().map(|u| u.to_string()).collect();
    assert_eq!(
        ids.len(),
        want_ids.len(),
        "stored {} of {} records",
        ids.len(),
        want_ids.len()
    );
    assert_eq!(ids, want_ids);
    assert!(
        rows.iter().all(|(_, p)| p == person),
        "every record attributed to {person}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_mid_stream_loses_nothing_and_stores_nothing_twice() -> anyhow::Result<()> {
    phr_e2e::init_tracing();
    let bin = binary("phr-gateway", "phr-gateway")?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("gateway");
    std::fs::create_dir_all(&data)?;
    let external = external_broker();
    // The embedded broker's port is known once the gateway has started (below).
    let broker = external
        .clone()
        .unwrap_or_else(|| MqttUrl::new("127.0.0.1", 0));
    let prefix = test_prefix();
    let until = sim_until();
    let mut cfg = sim_config(
        "bridge-k",
        3,
        dir.path().join("bridge"),
        &broker,
        &prefix,
        until,
        72,
    );
    cfg.batch_records = 5; // many small batches, so the kill lands mid-stream
    cfg.max_inflight = 8;
    let bands: Vec<String> = cfg.bands().into_iter().map(|b| b.device_id).collect();
    {
        let store = phr_gateway::Store::open(&data.join("phr.sqlite"))?;
        enrol(
            &store,
            "kim",
            "bridge-k",
            &bands,
            until - TimeDelta::days(5),
        )?;
        enrol_sim(&store, gateway_channel_key(&data)?, &mut cfg)?;
    }
    let want = expected(&cfg);

    let mut gateway = spawn_gateway(
        &bin,
        &data,
        any_port(),
        any_port(),
        external.as_ref(),
        &prefix,
    )
    .await?;
    let (http, mqtt) = (gateway.http, gateway.mqtt);
    if external.is_none() {
        cfg.mqtt = gateway.broker.clone();
    }
    wait_for("the gateway's API", Duration::from_secs(20), || {
        ureq::get(&format!("http://{http}/healthz")).call().ok()
    })
    .await?;
    let (tx, mut rx) = watch::channel(Status::default());
    let bridge = tokio::spawn(simulate::run(cfg, tx, CancellationToken::new()));

    let acked_before_kill = first_acks(&mut rx).await?;
    gateway.kill();
    assert!(
        (acked_before_kill as usize) < want.len(),
        "the kill must land mid-stream"
    );
    // With the embedded broker, the bridge loses its connection with the gateway; wait until
    // it knows (an external broker stays up: the bridge just gets no acks).
    if external.is_none() {
        wait_for(
            "the bridge to notice the gateway is gone",
            Duration::from_secs(20),
            || (!rx.borrow().connected).then_some(()),
        )
        .await?;
    }

    // On the same addresses: the bridge holds the broker's.
    let _gateway = spawn_gateway(&bin, &data, http, mqtt, external.as_ref(), &prefix).await?;
    tokio::time::timeout(Duration::from_secs(180), bridge).await???;
    assert_exactly(&data, &want, "kim")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a mosquitto binary; .ci/run installs it and runs ignored tests"]
async fn broker_restart_mid_stream_both_sides_reconnect_and_nothing_is_lost() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let mut mosquitto = spawn_mosquitto(dir.path())?;
    let url = mosquitto.url();

    let gw = TestGateway::start_with(Some(url.clone())).await?;
    let until = sim_until();
    let mut cfg = sim_config(
        "bridge-r",
        3,
        dir.path().join("bridge"),
        &url,
        gw.topics().prefix(),
        until,
        72,
    );
    cfg.batch_records = 5;
    cfg.max_inflight = 8;
    let bands: Vec<String> = cfg.bands().into_iter().map(|b| b.device_id).collect();
    gw.enrol("rin", "bridge-r", &bands, until - TimeDelta::days(5))?;
    gw.enrol_sim(&mut cfg)?;
    let want = expected(&cfg);

    let (tx, mut rx) = watch::channel(Status::default());
    let bridge = tokio::spawn(simulate::run(cfg, tx, CancellationToken::new()));
    let acked_before = first_acks(&mut rx).await?;
    mosquitto.kill();
    assert!(
        (acked_before as usize) < want.len(),
        "the restart must land mid-stream"
    );
    wait_for(
        "the bridge to notice the broker is gone",
        Duration::from_secs(20),
        || (!rx.borrow().connected).then_some(()),
    )
    .await?;
    mosquitto.restart()?;

    tokio::time::timeout(Duration::from_secs(180), bridge).await???;
    assert_exactly(&gw.config.data_dir, &want, "rin")?;
    // The gateway's side reconnected too (its first session, then the one after the restart).
    let connects = phr_e2e::metric(&gw.url(""), "phr_mqtt_connects_total")?;
    assert!(
        connects >= 2.0,
        "the gateway reconnected: {connects} connects"
    );
    gw.stop().await;
    Ok(())
}
