//! The real `phr-bridge simulate` process killed (SIGKILL) while batches wait in its outbox for
//! a gateway that is down; after both restart, every record the bands generated is stored at
//! the gateway exactly once: none lost, none twice.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::TimeDelta;

use phr_bridge::mqtt::MqttUrl;
use phr_bridge::simulate::SimulateConfig;
use phr_e2e::{
    any_port, binary, bridge_status as status, enrol, enrol_sim, external_broker,
    gateway_channel_key, spawn_gateway, stored_ids, test_prefix, wait_for, Process,
};

use super::{expected, sim_config, sim_until};

const BRIDGE: &str = "bridge-kill";
const ZONE: &str = "Asia/Tokyo";

/// Starts `phr-bridge simulate` as `cfg` describes it (the same bands, window and broker),
/// exiting once the gateway has acked everything; its log goes to `log`.
fn spawn_bridge(bin: &Path, cfg: &SimulateConfig, log: &Path) -> anyhow::Result<Process> {
    let gateway_key = cfg
        .gateway_key
        .as_ref()
        .map(phr_schema::channel::key_to_hex)
        .ok_or_else(|| anyhow::anyhow!("the bridge is not enrolled"))?;
    let until = cfg.until.ok_or_else(|| anyhow::anyhow!("a fixed window"))?;
    let child = Command::new(bin)
        .arg("simulate")
        .args(["--bridge-id", &cfg.bridge_id])
        .args(["--devices", &cfg.devices.to_string()])
        .args(["--seed", &cfg.seed.to_string()])
        .args(["--time-zone", ZONE])
        .args(["--history-hours", &cfg.history.num_hours().to_string()])
        .args(["--until", &until.to_rfc3339()])
        .arg("--exit-when-drained")
        .args(["--mqtt-url", &cfg.mqtt.to_string()])
        .args(["--topic-prefix", &cfg.topic_prefix])
        .arg("--data-dir")
        .arg(&cfg.data_dir)
        .args(["--gateway-key", &gateway_key])
        .args(["--nearby-interval-secs", "0"])
        .env("RUST_LOG", "info,rumqttc=warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    Ok(Process(child))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_killed_with_batches_in_its_outbox_loses_nothing_and_stores_nothing_twice(
) -> anyhow::Result<()> {
    phr_e2e::init_tracing();
    let gateway_bin = binary("phr-gateway", "phr-gateway")?;
    let bridge_bin = binary("phr-bridge", "phr-bridge")?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("gateway");
    std::fs::create_dir_all(&data)?;
    let external = external_broker();
    let prefix = test_prefix();
    // The gateway's addresses, as bound at a first start; it is then down until the end of
    // the bridge's first run, and comes back on the same addresses (the bridge holds them).
    let (http, mqtt) = {
        let mut first = spawn_gateway(
            &gateway_bin,
            &data,
            any_port(),
            any_port(),
            external.as_ref(),
            &prefix,
        )
        .await?;
        first.kill();
        (first.http, first.mqtt)
    };
    let broker = external
        .clone()
        .unwrap_or_else(|| MqttUrl::new("127.0.0.1", mqtt.port()));
    let until = sim_until();
    let mut cfg = sim_config(
        BRIDGE,
        3,
        dir.path().join("bridge"),
        &broker,
        &prefix,
        until,
        48,
    );
    assert_eq!(
        cfg.time_zone,
        ZONE.parse()?,
        "the bands' zone, as the CLI is told"
    );
    let bands: Vec<String> = cfg.bands().into_iter().map(|b| b.device_id).collect();
    {
        let store = phr_gateway::Store::open(&data.join("phr.sqlite"))?;
        enrol(&store, "kai", BRIDGE, &bands, until - TimeDelta::days(5))?;
        enrol_sim(&store, gateway_channel_key(&data)?, &mut cfg)?;
    }
    let want: BTreeSet<String> = expected(&cfg).keys().map(|u| u.to_string()).collect();
    assert!(!want.is_empty());

    // The gateway is down (with the embedded broker, so is the broker; an external broker is
    // up but nobody acks): batches pile up in the outbox.
    let mut bridge = spawn_bridge(&bridge_bin, &cfg, &dir.path().join("bridge-1.log"))?;
    wait_for(
        "batches waiting in the bridge's outbox",
        Duration::from_secs(60),
        || {
            status(&bridge_bin, &cfg.data_dir)
                .ok()
                .filter(|s| s["outbox_batches"].as_u64().is_some_and(|n| n > 0))
        },
    )
    .await?;
    assert!(
        bridge.0.try_wait()?.is_none(),
        "the bridge is still running when killed"
    );
    bridge.kill();
    let pending = status(&bridge_bin, &cfg.data_dir)?;
    let (batches, records) = (
        pending["outbox_batches"].as_u64().unwrap_or_default(),
        pending["outbox_records"].as_u64().unwrap_or_default(),
    );
    assert!(
        batches > 0 && records > 0,
        "batches pending at the kill: {pending}"
    );
    assert!(records as usize <= want.len(), "{pending}");

    // Both come back: the gateway, then the same bridge (same data dir, same arguments),
    // which exits once the gateway has acked everything.
    let _gateway =
        spawn_gateway(&gateway_bin, &data, http, mqtt, external.as_ref(), &prefix).await?;
    wait_for("the gateway's API", Duration::from_secs(20), || {
        ureq::get(&format!("http://{http}/healthz")).call().ok()
    })
    .await?;
    let log = dir.path().join("bridge-2.log");
    let mut bridge = spawn_bridge(&bridge_bin, &cfg, &log)?;
    let exit = wait_for(
        "the restarted bridge to drain its outbox and exit",
        Duration::from_secs(180),
        || bridge.0.try_wait().ok().flatten(),
    )
    .await;
    let exit = match exit {
        Ok(e) => e,
        Err(e) => anyhow::bail!(
            "{e:#}\nbridge log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ),
    };
    assert!(
        exit.success(),
        "{exit}\nbridge log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let after = status(&bridge_bin, &cfg.data_dir)?;
    assert_eq!(
        (
            after["outbox_batches"].as_u64(),
            after["outbox_records"].as_u64()
        ),
        (Some(0), Some(0)),
        "{after}"
    );

    // Exactly the generated records, each once, all Kai's.
    let rows = stored_ids(&data)?;
    let ids: BTreeSet<String> = rows.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids.len(), rows.len(), "a record id is stored twice");
    let lost = want.difference(&ids).count();
    let foreign = ids.difference(&want).count();
    assert_eq!(
        (lost, foreign),
        (0, 0),
        "records lost, records not generated ({} stored of {})",
        ids.len(),
        want.len()
    );
    assert!(rows.iter().all(|(_, person)| person == "kai"));
    Ok(())
}
