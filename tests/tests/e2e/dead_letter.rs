//! Issue #13, problems 3 and 7 (the bridge's side): a bridge never deletes what the gateway
//! refused. Against a real gateway, real SQLite files and the real `phr-bridge` binary for
//! the operator's commands: refused records land in the bridge's dead-letter table (exactly
//! the refused ones), `phr-bridge status` shows them, `dead-letter replay` puts them back and,
//! once the cause is fixed, they are stored exactly once; what stays invalid is refused again
//! and is discarded only by the operator's `dead-letter drop --yes`.
//!
//! The refusal whose cause an operator can fix here is the gateway's batch size limit
//! (`ingest.max_batch_records`, a `batch_too_large` batch error): it stands in for any refusal
//! that depends on state (a device held through another bridge, a limit, a clock) and is
//! emitted by today's gateway whatever the binding rules become.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use phr_bridge::outbox::Outbox;
use phr_e2e::{any_port, binary, stored_ids, TestGateway};
use phr_schema::record::{HeartRate, PointFrame, Provenance, BEATS_PER_MINUTE};
use phr_schema::{Batch, Body, Record, UnitValue};

use super::{expected, run_bridge, sim_config, sim_until};

const BRIDGE: &str = "br-dead";

/// The gateway stopped and started again on the same data dir, with `configure` applied (the
/// operator fixing its configuration). The broker moves to a new port.
async fn restart(
    gw: TestGateway,
    configure: impl FnOnce(&mut phr_gateway::Config),
) -> anyhow::Result<TestGateway> {
    let TestGateway {
        gateway,
        mut config,
        shutdown,
        dir,
        clock,
    } = gw;
    shutdown.cancel();
    gateway.stopped().await;
    if config.mqtt.url.is_none() {
        config.mqtt.listen = any_port();
    }
    configure(&mut config);
    let shutdown = CancellationToken::new();
    let http = TcpListener::bind("127.0.0.1:0")?;
    let mut gateway = phr_e2e::start_in_process(&config, http, &clock, shutdown.clone()).await?;
    anyhow::ensure!(
        gateway.wait_subscribed(Duration::from_secs(10)).await,
        "restarted gateway did not subscribe"
    );
    Ok(TestGateway {
        gateway,
        config,
        shutdown,
        dir,
        clock,
    })
}

/// A heart rate of `bpm` at `at`.
fn heart_rate(device: &str, at: DateTime<Utc>, bpm: f64) -> Record {
    let at = at.fixed_offset();
    Record::new(
        device,
        BRIDGE,
        at,
        Provenance::sensed("test/1"),
        Body::HeartRate(HeartRate {
            effective_time_frame: PointFrame { date_time: at },
            heart_rate: UnitValue::new(bpm, BEATS_PER_MINUTE),
        }),
    )
}

/// Record ids in the bridge's dead-letter table, with their reasons, read from the file.
fn dead_letters(outbox: &Path) -> anyhow::Result<BTreeSet<(Uuid, String)>> {
    let conn =
        rusqlite::Connection::open_with_flags(outbox, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare("SELECT record_id, reason FROM dead_letter")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = BTreeSet::new();
    for row in rows {
        let (id, reason) = row?;
        out.insert((Uuid::parse_str(&id)?, reason));
    }
    Ok(out)
}

/// Record ids stored at the gateway, each once (the set would hide a second copy).
fn stored(gw: &TestGateway) -> anyhow::Result<Vec<Uuid>> {
    let mut ids: Vec<Uuid> = stored_ids(&gw.config.data_dir)?
        .into_iter()
        .map(|(id, _)| Uuid::parse_str(&id))
        .collect::<Result<_, _>>()?;
    ids.sort();
    Ok(ids)
}

/// Runs the real `phr-bridge` binary; returns its stdout, failing on a non-zero exit.
fn cli(args: &[&str]) -> anyhow::Result<String> {
    phr_e2e::bridge_cli(&binary("phr-bridge", "phr-bridge")?, args, "warn")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_records_are_kept_replayed_after_the_fix_and_stored_exactly_once(
) -> anyhow::Result<()> {
    // The operator set the batch limit too low: most of the bridge's batches (60 records)
    // are refused whole.
    let gw = TestGateway::start_configured(phr_e2e::external_broker(), |c| {
        c.ingest.max_batch_records = 10;
    })
    .await?;
    let until = sim_until();
    let bridge_dir = gw.dir.path().join("bridge");
    let mut cfg = sim_config(
        BRIDGE,
        1,
        bridge_dir.clone(),
        &gw.gateway.mqtt,
        gw.topics().prefix(),
        until,
        4,
    );
    let band = cfg.bands()[0].device_id.clone();
    gw.enrol(
        "ana",
        BRIDGE,
        std::slice::from_ref(&band),
        until - TimeDelta::days(1),
    )?;
    gw.enrol_sim(&mut cfg)?;
    let generated: BTreeSet<Uuid> = expected(&cfg).into_keys().collect();

    // Also waiting in the outbox: one batch with a heart rate no gateway accepts (400 bpm)
    // beside a valid one, at seconds the simulated band never uses.
    let odd = (until - TimeDelta::hours(1)).duration_trunc(TimeDelta::minutes(5))?
        + TimeDelta::seconds(150);
    let (fine, impossible) = (
        heart_rate(&band, odd, 71.0),
        heart_rate(&band, odd + TimeDelta::seconds(10), 400.0),
    );
    std::fs::create_dir_all(&bridge_dir)?;
    let outbox_path = bridge_dir.join("outbox.sqlite");
    Outbox::open(&outbox_path, usize::MAX)?.push(
        &[Batch::new(
            BRIDGE,
            &band,
            Uuid::new_v4(),
            vec![fine.clone(), impossible.clone()],
        )],
        &[],
        &[],
        Utc::now(),
    )?;

    // The bridge drains its outbox: every batch is answered and leaves it.
    let status = run_bridge(cfg.clone(), Duration::from_secs(90)).await?;
    assert!(status.dead_lettered > 0, "{status:?}");
    assert_eq!(Outbox::open(&outbox_path, usize::MAX)?.depth()?, 0);
    let first = stored(&gw)?;
    let dead = dead_letters(&outbox_path)?;
    let dead_ids: BTreeSet<Uuid> = dead.iter().map(|(id, _)| *id).collect();
    assert_eq!(dead.len(), dead_ids.len(), "each record dead-lettered once");
    assert_eq!(status.dead_lettered as usize, dead.len());
    // Nothing lost: everything is either stored or kept, never both.
    let first_set: BTreeSet<Uuid> = first.iter().copied().collect();
    assert!(first_set.is_disjoint(&dead_ids));
    let mut all = generated.clone();
    all.insert(fine.record_id);
    all.insert(impossible.record_id);
    assert_eq!(
        first_set.union(&dead_ids).copied().collect::<BTreeSet<_>>(),
        all
    );
    assert!(
        first_set.contains(&fine.record_id),
        "its valid neighbour is stored"
    );
    assert!(dead.contains(&(impossible.record_id, "implausible_heart_rate".to_owned())));
    let too_large = dead
        .iter()
        .filter(|(_, reason)| reason == "batch_too_large")
        .count();
    assert_eq!(too_large + 1, dead.len(), "{dead:?}");
    assert!(too_large > 10, "whole batches were refused: {too_large}");

    // The operator sees them.
    let data_dir = bridge_dir.to_str().expect("utf-8 path");
    let report: serde_json::Value =
        serde_json::from_str(&cli(&["status", "--json", "--data-dir", data_dir])?)?;
    assert_eq!(report["dead_letter_records"], dead.len());
    let listed = cli(&["dead-letter", "list", "--data-dir", data_dir])?;
    assert!(
        listed.contains("batch_too_large") && listed.contains(&band),
        "{listed}"
    );

    // The operator fixes the limit, and replays while nothing else runs.
    let gw = restart(gw, |c| c.ingest.max_batch_records = 1000).await?;
    let replayed = cli(&["dead-letter", "replay", "--data-dir", data_dir])?;
    assert!(
        replayed.contains(&format!("replayed {} records", dead.len())),
        "{replayed}"
    );
    cfg.mqtt = gw.gateway.mqtt.clone();
    let status = run_bridge(cfg.clone(), Duration::from_secs(90)).await?;
    assert_eq!(status.duplicate, 0, "{status:?}");
    let second = stored(&gw)?;
    let mut want: Vec<Uuid> = generated.iter().copied().collect();
    want.push(fine.record_id);
    want.sort();
    assert_eq!(second, want, "every record stored, exactly once");
    // What stays invalid was refused again, and is still kept.
    assert_eq!(
        dead_letters(&outbox_path)?,
        BTreeSet::from([(impossible.record_id, "implausible_heart_rate".to_owned())])
    );

    // Replaying what the gateway already holds (the same record, a new batch id) stores
    // nothing twice.
    Outbox::open(&outbox_path, usize::MAX)?.push(
        &[Batch::new(
            BRIDGE,
            &band,
            Uuid::new_v4(),
            vec![fine.clone()],
        )],
        &[],
        &[],
        Utc::now(),
    )?;
    let status = run_bridge(cfg, Duration::from_secs(60)).await?;
    assert_eq!((status.duplicate, status.stored), (1, 0), "{status:?}");
    assert_eq!(stored(&gw)?, want);

    // Discarded only by the operator, with confirmation, and counted.
    let refused = Command::new(binary("phr-bridge", "phr-bridge")?)
        .args(["dead-letter", "drop", "--data-dir", data_dir])
        .args(["--device", &band, "--reason", "implausible_heart_rate"])
        .output()?;
    assert!(!refused.status.success(), "no --yes, no drop");
    assert_eq!(dead_letters(&outbox_path)?.len(), 1);
    let dropped = cli(&[
        "dead-letter",
        "drop",
        "--data-dir",
        data_dir,
        "--device",
        &band,
        "--reason",
        "implausible_heart_rate",
        "--yes",
    ])?;
    assert!(dropped.contains("dropped 1 records"), "{dropped}");
    assert!(dead_letters(&outbox_path)?.is_empty());
    let report: serde_json::Value =
        serde_json::from_str(&cli(&["status", "--json", "--data-dir", data_dir])?)?;
    assert_eq!(report["dead_letter_records"], 0);
    assert_eq!(
        report["discarded"][0]["cause"],
        "operator_drop:implausible_heart_rate"
    );
    gw.stop().await;
    Ok(())
}
