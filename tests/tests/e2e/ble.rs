//! The real `phr-bridge run` against an emulated BlueZ on a private D-Bus (no Bluetooth
//! hardware here): the bridge discovers the band through btleplug, the owner pairs it with the
//! code the bridge prints, and what the band notifies reaches the API exactly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Timelike, Utc};
use serde_json::json;

use phr_bridge::decode::pams::{encode_step_counter_summary, StepCounterSummary};
use phr_bridge::decode::pams_session::{
    encode_current_session, encode_session_descriptor, CurrentSession, SessionDescriptor,
    SessionTime,
};
use phr_bridge::decode::pams_sleep::{encode_sleep_activity_summary, SleepActivitySummary};
use phr_bridge::decode::{heart_rate, local_time, sim_band};
use phr_e2e::bluez::{uuids, EmulatedBand, PrivateBluez};
use phr_e2e::{
    any_port, binary, call, spawn_gateway, test_prefix, wait_for, FakeClock, Process,
    SpawnedGateway, TestGateway,
};

const BAND: &str = "C0:FF:EE:00:00:01";
const BRIDGE: &str = "br-ble";

/// The bridge binary with its stdout collected, as a person at the hub would read it, and
/// its log (stderr, plain text) after it in the same list, for tests that wait on what the
/// bridge says it did.
fn start_bridge(
    gw: &TestGateway,
    bluez: &PrivateBluez,
) -> anyhow::Result<(Process, Arc<Mutex<Vec<String>>>)> {
    spawn_bridge(
        &gw.dir.path().join("ble-bridge"),
        &gw.gateway.mqtt.to_string(),
        gw.topics().prefix(),
        bluez,
        &gw.config.data_dir,
    )
}

fn spawn_bridge(
    dir: &std::path::Path,
    mqtt: &str,
    prefix: &str,
    bluez: &PrivateBluez,
    gateway_data: &std::path::Path,
) -> anyhow::Result<(Process, Arc<Mutex<Vec<String>>>)> {
    spawn_bridge_with(dir, mqtt, prefix, bluez, gateway_data, "")
}

/// As [`spawn_bridge`], with `extra` TOML lines in the bridge's configuration. The bridge is
/// enrolled first at the gateway whose data dir is `gateway_data`, as an operator would with
/// `phr-bridge identity` and `phr-gateway bridges enrol`.
fn spawn_bridge_with(
    dir: &std::path::Path,
    mqtt: &str,
    prefix: &str,
    bluez: &PrivateBluez,
    gateway_data: &std::path::Path,
    extra: &str,
) -> anyhow::Result<(Process, Arc<Mutex<Vec<String>>>)> {
    spawn_bridge_env(dir, mqtt, prefix, bluez, gateway_data, extra, &[])
}

/// As [`spawn_bridge_with`], with extra environment variables for the bridge process.
fn spawn_bridge_env(
    dir: &std::path::Path,
    mqtt: &str,
    prefix: &str,
    bluez: &PrivateBluez,
    gateway_data: &std::path::Path,
    extra: &str,
    env: &[(String, String)],
) -> anyhow::Result<(Process, Arc<Mutex<Vec<String>>>)> {
    std::fs::create_dir_all(dir)?;
    let key = phr_bridge::identity::BridgeKey::load_or_create(dir)?;
    phr_gateway::Store::open(&gateway_data.join("phr.sqlite"))?
        .register_bridge_key(BRIDGE, &key.public_hex())?;
    let gateway_key = phr_schema::channel::key_to_hex(&phr_e2e::gateway_channel_key(gateway_data)?);
    let config = dir.join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            "bridge_id = \"{BRIDGE}\"\ndata_dir = \"{}\"\nmqtt_url = \"{}\"\ntopic_prefix = \"{}\"\ngateway_key = \"{gateway_key}\"\nflush_after_ms = 100\n{extra}\n",
            dir.display(),
            mqtt,
            prefix
        ),
    )?;
    let mut child = Command::new(binary("phr-bridge", "phr-bridge")?)
        .args(["run", "--config"])
        .arg(&config)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bluez.system_bus_address())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take().expect("piped");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().expect("lines").push(line);
        }
    });
    let log = child.stderr.take().expect("piped");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            sink.lock().expect("lines").push(line);
        }
    });
    Ok((Process(child), lines))
}

fn values(gw: &TestGateway, who: &str, kind: &str, field: &str) -> anyhow::Result<Vec<f64>> {
    let (s, b) = call(
        "GET",
        &gw.url(&format!("/api/v1/me/records?type={kind}")),
        Some(&gw.owner_token(who)),
        None,
    )?;
    anyhow::ensure!(s == 200, "{b}");
    Ok(b["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| match field {
            "heart_rate" => r["body"]["heart_rate"]["value"].as_f64().unwrap(),
            _ => r["body"]["step_count"].as_f64().unwrap(),
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dbus-daemon and python3-dbus/python3-gi for the emulated BlueZ; .ci/run installs them"]
async fn the_real_bridge_pairs_an_emulated_band_and_delivers_what_it_sends() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let band = EmulatedBand::new(BAND, "PHR Band 01");
    let serial = band.serial.clone();
    let bluez = PrivateBluez::start(&[band])?;
    let (_bridge, stdout) = start_bridge(&gw, &bluez)?;
    // The bridge found the band, connected and subscribed, through btleplug and D-Bus.
    bluez
        .wait_notifying(BAND, uuids::HEART_RATE_MEASUREMENT, Duration::from_secs(60))
        .await?;
    bluez
        .wait_notifying(BAND, uuids::VENDOR_ACTIVITY, Duration::from_secs(10))
        .await?;

    // The owner consents to storage and pairs the band with the code the bridge prints.
    let ana = gw.owner_token("ana");
    consent_to_storage(
        &gw.url(""),
        &ana,
        &["step-count", "sleep-episode", "heart-rate"],
    )?;
    let (s, b) = call(
        "POST",
        &gw.url("/api/v1/me/devices/pairings"),
        Some(&ana),
        Some(json!({"bridge_id": BRIDGE, "device_id": BAND})),
    )?;
    assert_eq!(s, 201, "{b}");
    let id = b["pairing"]["pairing_id"].as_str().unwrap().to_owned();
    let code = wait_for(
        "the bridge to print the code",
        Duration::from_secs(20),
        || {
            let lines = stdout.lock().ok()?;
            lines.iter().find_map(|l| {
                l.strip_prefix(&format!("PAIRING CODE for device {BAND}: "))
                    .map(|r| r[..6].to_owned())
            })
        },
    )
    .await?;
    let url = gw.url(&format!("/api/v1/me/devices/pairings/{id}"));
    wait_for("the bridge's report", Duration::from_secs(20), || {
        call("GET", &url, Some(&ana), None)
            .ok()
            .filter(|(_, b)| b["pairing"]["reported_serial"].is_string())
    })
    .await?;
    let (s, b) = call(
        "POST",
        &format!("{url}/confirm"),
        Some(&ana),
        Some(json!({"code": code, "serial_number": serial})),
    )?;
    assert_eq!(
        s, 200,
        "the serial the bridge read over GATT matches the label: {b}"
    );

    // The band measures: heart rate, and two minutes of steps in its vendor protocol.
    let start = (Utc::now() + TimeDelta::seconds(2)).with_timezone(&Utc);
    for bpm in [61u16, 62, 63] {
        assert!(bluez.notify(
            BAND,
            uuids::HEART_RATE_MEASUREMENT,
            &heart_rate::encode(bpm, Some(true), None, &[])
        )?);
    }
    let activity =
        sim_band::encode_activity(&[(start, 60, 101), (start + TimeDelta::seconds(60), 60, 102)]);
    assert!(bluez.notify(BAND, uuids::VENDOR_ACTIVITY, &activity)?);
    let hr = wait_for("three heart rates", Duration::from_secs(30), || {
        values(&gw, "ana", "heart-rate", "heart_rate")
            .ok()
            .filter(|v| v.len() == 3)
    })
    .await?;
    let mut hr = hr;
    hr.sort_by(f64::total_cmp);
    assert_eq!(hr, [61.0, 62.0, 63.0]);
    let steps = wait_for("two minutes of steps", Duration::from_secs(30), || {
        values(&gw, "ana", "step-count", "step_count")
            .ok()
            .filter(|v| v.len() == 2)
    })
    .await?;
    assert_eq!(steps, [101.0, 102.0]);

    // The band walks out of range and comes back: the bridge reconnects by itself.
    bluez.set_present(BAND, false)?;
    bluez
        .wait_connected(BAND, false, Duration::from_secs(20))
        .await?;
    bluez.set_present(BAND, true)?;
    bluez
        .wait_notifying(BAND, uuids::HEART_RATE_MEASUREMENT, Duration::from_secs(60))
        .await?;
    assert!(bluez.notify(
        BAND,
        uuids::HEART_RATE_MEASUREMENT,
        &heart_rate::encode(64, Some(true), None, &[])
    )?);
    wait_for(
        "the heart rate sent after the reconnect",
        Duration::from_secs(30),
        || {
            values(&gw, "ana", "heart-rate", "heart_rate")
                .ok()
                .filter(|v| v.contains(&64.0))
        },
    )
    .await?;
    // Everything the band sent, and nothing else, is stored.
    let sent = bluez.sent()?;
    assert_eq!(
        sent.iter()
            .filter(|n| n.uuid == uuids::HEART_RATE_MEASUREMENT)
            .count(),
        4
    );
    assert_eq!(values(&gw, "ana", "heart-rate", "heart_rate")?.len(), 4);
    gw.stop().await;
    Ok(())
}

/// Pairs `band` to `who` through `base` (a gateway's URL) with the code the bridge printed.
async fn pair(
    base: &str,
    token: &str,
    band: &str,
    serial: &str,
    stdout: &Arc<Mutex<Vec<String>>>,
) -> anyhow::Result<()> {
    let (s, b) = call(
        "POST",
        &format!("{base}/api/v1/me/devices/pairings"),
        Some(token),
        Some(json!({"bridge_id": BRIDGE, "device_id": band})),
    )?;
    anyhow::ensure!(s == 201, "{b}");
    let id = b["pairing"]["pairing_id"].as_str().unwrap().to_owned();
    let prefix = format!("PAIRING CODE for device {band}: ");
    let code = wait_for(
        "the bridge to print the code",
        Duration::from_secs(20),
        || {
            let lines = stdout.lock().ok()?;
            lines
                .iter()
                .rev()
                .find_map(|l| l.strip_prefix(&prefix).map(|r| r[..6].to_owned()))
        },
    )
    .await?;
    let url = format!("{base}/api/v1/me/devices/pairings/{id}");
    wait_for("the bridge's report", Duration::from_secs(20), || {
        call("GET", &url, Some(token), None)
            .ok()
            .filter(|(_, b)| b["pairing"]["reported_serial"].is_string())
    })
    .await?;
    let (s, b) = call(
        "POST",
        &format!("{url}/confirm"),
        Some(token),
        Some(json!({"code": code, "serial_number": serial})),
    )?;
    anyhow::ensure!(s == 200, "{b}");
    Ok(())
}

/// Records waiting in the outbox, as `phr-bridge status --json` reports them.
fn outbox_records(dir: &std::path::Path) -> anyhow::Result<u64> {
    let status = phr_e2e::bridge_status(&binary("phr-bridge", "phr-bridge")?, dir)?;
    status["outbox_records"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no outbox_records in {status}"))
}

/// `phr-bridge status`'s first line: batches and records waiting.
fn outbox_line(dir: &std::path::Path) -> anyhow::Result<String> {
    let out = phr_e2e::bridge_cli(
        &binary("phr-bridge", "phr-bridge")?,
        [
            std::ffi::OsStr::new("status"),
            "--data-dir".as_ref(),
            dir.as_os_str(),
        ],
        "off",
    )?;
    Ok(out.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dbus-daemon and python3-dbus/python3-gi for the emulated BlueZ; .ci/run installs them"]
async fn two_bands_keep_measuring_while_the_gateway_is_down_and_the_outbox_drains(
) -> anyhow::Result<()> {
    phr_e2e::init_tracing();
    let (a, b) = (
        EmulatedBand::new("C0:FF:EE:00:00:0A", "Band A"),
        EmulatedBand::new("C0:FF:EE:00:00:0B", "Band B"),
    );
    let bluez = PrivateBluez::start(&[a.clone(), b.clone()])?;
    // `phr-bridge scan` sees both, with the decoder that reads them.
    let out = Command::new(binary("phr-bridge", "phr-bridge")?)
        .args(["scan", "--seconds", "2"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", bluez.system_bus_address())
        .env("RUST_LOG", "off")
        .output()?;
    let scan = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{scan}");
    for band in [&a, &b] {
        let line = scan
            .lines()
            .find(|l| l.starts_with(&band.address))
            .unwrap_or_default();
        assert!(
            line.contains(&band.name)
                && line.contains("dBm")
                && line.contains("heart-rate-measurement/1"),
            "{scan}"
        );
    }

    // A gateway as a separate process, so it can go down and come back on the same ports.
    let dir = tempfile::tempdir()?;
    let mut gateway = GatewayProcess::start(dir.path()).await?;
    let (base, prefix, mqtt) = (gateway.base.clone(), gateway.prefix.clone(), gateway.mqtt);
    let token = gateway.token("kai")?;
    consent_to_storage(&base, &token, &["heart-rate", "step-count"])?;

    let bridge_dir = dir.path().join("bridge");
    let (_bridge, stdout) = spawn_bridge(
        &bridge_dir,
        &format!("mqtt://{mqtt}"),
        &prefix,
        &bluez,
        &gateway.data,
    )?;
    for band in [&a, &b] {
        bluez
            .wait_notifying(
                &band.address,
                uuids::HEART_RATE_MEASUREMENT,
                Duration::from_secs(60),
            )
            .await?;
        pair(&base, &token, &band.address, &band.serial, &stdout).await?;
    }
    let heart_rates = |who: &str| -> anyhow::Result<Vec<(String, f64)>> {
        let (s, body) = call(
            "GET",
            &format!("{base}/api/v1/me/records?type=heart-rate"),
            Some(who),
            None,
        )?;
        anyhow::ensure!(s == 200, "{body}");
        Ok(body["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["device_id"].as_str().unwrap().to_owned(),
                    r["body"]["heart_rate"]["value"].as_f64().unwrap(),
                )
            })
            .collect())
    };
    let notify = |band: &EmulatedBand, bpm: u16| {
        bluez.notify(
            &band.address,
            uuids::HEART_RATE_MEASUREMENT,
            &heart_rate::encode(bpm, Some(true), None, &[]),
        )
    };
    assert!(notify(&a, 70)? && notify(&b, 80)?);
    wait_for("both bands' first values", Duration::from_secs(30), || {
        heart_rates(&token).ok().filter(|v| v.len() == 2)
    })
    .await?;

    // The gateway (and its embedded broker) goes down; the bands keep measuring.
    gateway.kill();
    for bpm in 71..76 {
        assert!(notify(&a, bpm)?);
        assert!(notify(&b, bpm + 10)?);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waiting = wait_for(
        "the outbox to hold the new values",
        Duration::from_secs(10),
        || {
            outbox_line(&bridge_dir)
                .ok()
                .filter(|l| !l.starts_with("outbox: 0 batches"))
        },
    )
    .await?;
    assert!(waiting.contains("records waiting"), "{waiting}");

    // It comes back: the bridge reconnects (its key is the paired one) and drains in order.
    gateway.restart().await?;
    let all = wait_for("all twelve values", Duration::from_secs(60), || {
        heart_rates(&token).ok().filter(|v| v.len() == 12)
    })
    .await?;
    let of = |band: &EmulatedBand| -> Vec<f64> {
        all.iter()
            .filter(|(d, _)| *d == band.address)
            .map(|(_, v)| *v)
            .collect()
    };
    assert_eq!(of(&a), [70.0, 71.0, 72.0, 73.0, 74.0, 75.0]);
    assert_eq!(of(&b), [80.0, 81.0, 82.0, 83.0, 84.0, 85.0]);
    wait_for("the outbox to be empty", Duration::from_secs(20), || {
        outbox_line(&bridge_dir)
            .ok()
            .filter(|l| l.starts_with("outbox: 0 batches"))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dbus-daemon and python3-dbus/python3-gi for the emulated BlueZ; .ci/run installs them"]
async fn what_the_band_measured_while_the_bridge_was_away_is_fetched_on_reconnect(
) -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let band = EmulatedBand::new(BAND, "PHR Band 01");
    let bluez = PrivateBluez::start(std::slice::from_ref(&band))?;
    let (bridge, stdout) = start_bridge(&gw, &bluez)?;
    bluez
        .wait_notifying(BAND, uuids::VENDOR_ACTIVITY, Duration::from_secs(60))
        .await?;
    let ana = gw.owner_token("ana");
    consent_to_storage(&gw.url(""), &ana, &["step-count"])?;
    pair(&gw.url(""), &ana, BAND, &band.serial, &stdout).await?;

    // One minute live.
    let t = Utc::now() + TimeDelta::seconds(2);
    let minute = |i: i64, steps: u16| (t + TimeDelta::seconds(60 * i), 60u16, steps);
    assert!(bluez.notify(
        BAND,
        uuids::VENDOR_ACTIVITY,
        &sim_band::encode_activity(&[minute(0, 90)])
    )?);
    wait_for("the live minute", Duration::from_secs(30), || {
        values(&gw, "ana", "step-count", "step_count")
            .ok()
            .filter(|v| v.len() == 1)
    })
    .await?;

    // The band walks away and the bridge restarts; the band keeps counting by itself.
    bluez.set_present(BAND, false)?;
    bluez
        .wait_connected(BAND, false, Duration::from_secs(20))
        .await?;
    drop(bridge);
    let stored_in_band = [minute(1, 91), minute(2, 92)];
    let writes_before = bluez.status()?.writes.len();
    let (_bridge, _stdout) = start_bridge(&gw, &bluez)?;
    bluez.set_present(BAND, true)?;

    // On reconnecting, the bridge asks for the activity history since the end of the last
    // minute it made durable, read back from its disk after the restart.
    let request = bluez
        .wait_until("a history request", Duration::from_secs(60), |s| {
            s.writes
                .iter()
                .skip(writes_before)
                .any(|w| w.uuid == uuids::VENDOR_HISTORY)
        })
        .await?
        .writes
        .into_iter()
        .skip(writes_before)
        .find(|w| w.uuid == uuids::VENDOR_HISTORY)
        .expect("found above");
    let (kind, since) = sim_band::decode_any_history_request(&request.bytes())?;
    assert_eq!(kind, Some(sim_band::HistoryKind::Activity));
    assert_eq!(
        since.timestamp(),
        (t + TimeDelta::seconds(60)).timestamp(),
        "the end of the live minute"
    );

    // The band (this test, playing its firmware) answers with what it stored since then.
    let history: Vec<_> = stored_in_band
        .into_iter()
        .filter(|(start, _, _)| *start >= since)
        .collect();
    assert_eq!(history.len(), 2);
    bluez
        .wait_notifying(BAND, uuids::VENDOR_ACTIVITY, Duration::from_secs(20))
        .await?;
    assert!(bluez.notify(
        BAND,
        uuids::VENDOR_ACTIVITY,
        &sim_band::encode_activity(&history)
    )?);
    let steps = wait_for(
        "the minutes measured while away",
        Duration::from_secs(30),
        || {
            values(&gw, "ana", "step-count", "step_count")
                .ok()
                .filter(|v| v.len() == 3)
        },
    )
    .await?;
    assert_eq!(steps, [90.0, 91.0, 92.0]);
    gw.stop().await;
    Ok(())
}

/// Issue #13, problem 4: the history mark is per record type. Live heart rate after the
/// last delivered minute used to move the device's one mark to "now", so the minutes the band
/// stored before it walked away were never asked for again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dbus-daemon and python3-dbus/python3-gi for the emulated BlueZ; .ci/run installs them"]
async fn live_heart_rate_does_not_move_the_steps_mark_and_stored_minutes_are_fetched(
) -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let band = EmulatedBand::new(BAND, "PHR Band 01");
    let bluez = PrivateBluez::start(std::slice::from_ref(&band))?;
    let (bridge, stdout) = start_bridge(&gw, &bluez)?;
    bluez
        .wait_notifying(BAND, uuids::HEART_RATE_MEASUREMENT, Duration::from_secs(60))
        .await?;
    bluez
        .wait_notifying(BAND, uuids::VENDOR_ACTIVITY, Duration::from_secs(10))
        .await?;
    let ana = gw.owner_token("ana");
    consent_to_storage(&gw.url(""), &ana, &["step-count", "heart-rate"])?;
    pair(&gw.url(""), &ana, BAND, &band.serial, &stdout).await?;

    // Five seconds of steps arrive (the vendor protocol times intervals in seconds); the
    // band holds the ten seconds after them. (After the pairing: earlier data has no owner.)
    let t = Utc::now().duration_trunc(TimeDelta::seconds(1))? + TimeDelta::seconds(1);
    let minute = |i: i64, steps: u16| (t + TimeDelta::seconds(5 * i), 5u16, steps);
    assert!(bluez.notify(
        BAND,
        uuids::VENDOR_ACTIVITY,
        &sim_band::encode_activity(&[minute(0, 9)])
    )?);
    wait_for("the first steps", Duration::from_secs(30), || {
        values(&gw, "ana", "step-count", "step_count")
            .ok()
            .filter(|v| v.len() == 1)
    })
    .await?;
    // Until the band's stored intervals have ended (a condition on the clock, not a delay).
    wait_for(
        "the stored intervals to end",
        Duration::from_secs(30),
        || (Utc::now() > t + TimeDelta::seconds(16)).then_some(()),
    )
    .await?;
    // Live heart rate, measured now: later than any step interval.
    assert!(bluez.notify(
        BAND,
        uuids::HEART_RATE_MEASUREMENT,
        &heart_rate::encode(66, Some(true), None, &[])
    )?);
    wait_for("the heart rate", Duration::from_secs(30), || {
        values(&gw, "ana", "heart-rate", "heart_rate")
            .ok()
            .filter(|v| v.len() == 1)
    })
    .await?;

    // The band walks away; the bridge restarts (its marks come back from disk).
    bluez.set_present(BAND, false)?;
    bluez
        .wait_connected(BAND, false, Duration::from_secs(20))
        .await?;
    drop(bridge);
    let writes_before = bluez.status()?.writes.len();
    let (_bridge, _stdout) = start_bridge(&gw, &bluez)?;
    bluez.set_present(BAND, true)?;

    // Steps are asked for from the end of the last minute, not from the heart rate.
    let requests: Vec<_> = bluez
        .wait_until("both history requests", Duration::from_secs(60), |s| {
            s.writes
                .iter()
                .skip(writes_before)
                .filter(|w| w.uuid == uuids::VENDOR_HISTORY)
                .count()
                >= 2
        })
        .await?
        .writes
        .into_iter()
        .skip(writes_before)
        .filter(|w| w.uuid == uuids::VENDOR_HISTORY)
        .map(|w| sim_band::decode_any_history_request(&w.bytes()))
        .collect::<Result<_, _>>()?;
    let since = requests
        .iter()
        .find(|(kind, _)| *kind == Some(sim_band::HistoryKind::Activity))
        .map(|(_, since)| *since)
        .expect("an activity history request");
    assert_eq!(
        since,
        t + TimeDelta::seconds(5),
        "the end of the steps delivered"
    );
    assert!(requests
        .iter()
        .any(|(kind, _)| *kind == Some(sim_band::HistoryKind::Sleep)));

    // The band answers with what it stored since then, and all of it arrives.
    let stored_in_band = [minute(1, 10), minute(2, 11)];
    let history: Vec<_> = stored_in_band
        .into_iter()
        .filter(|(start, _, _)| *start >= since)
        .collect();
    assert_eq!(history.len(), 2);
    bluez
        .wait_notifying(BAND, uuids::VENDOR_ACTIVITY, Duration::from_secs(20))
        .await?;
    assert!(bluez.notify(
        BAND,
        uuids::VENDOR_ACTIVITY,
        &sim_band::encode_activity(&history)
    )?);
    let steps = wait_for(
        "the steps stored before the disconnect",
        Duration::from_secs(30),
        || {
            values(&gw, "ana", "step-count", "step_count")
                .ok()
                .filter(|v| v.len() == 3)
        },
    )
    .await?;
    assert_eq!(steps, [9.0, 10.0, 11.0]);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto, dbus-daemon and python3-dbus/python3-gi; .ci/run installs them"]
async fn the_bridge_rides_out_refused_connects_and_a_broker_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut mosquitto = phr_e2e::spawn_mosquitto(dir.path())?;
    let gw = TestGateway::start_with(Some(mosquitto.url())).await?;
    let band = EmulatedBand::new(BAND, "PHR Band 01");
    let bluez = PrivateBluez::start(std::slice::from_ref(&band))?;
    // The band's first two connections fail: the bridge's device task fails, and is retried
    // with backoff until it connects.
    bluez.fail_connects(BAND, 2)?;
    let (_bridge, stdout) = start_bridge(&gw, &bluez)?;
    bluez
        .wait_notifying(BAND, uuids::HEART_RATE_MEASUREMENT, Duration::from_secs(60))
        .await?;
    assert!(bluez.status()?.band(BAND).is_some_and(|b| b.connects >= 1));

    let ana = gw.owner_token("ana");
    consent_to_storage(&gw.url(""), &ana, &["heart-rate"])?;
    pair(&gw.url(""), &ana, BAND, &band.serial, &stdout).await?;
    let hr = |bpm: u16| {
        bluez.notify(
            BAND,
            uuids::HEART_RATE_MEASUREMENT,
            &heart_rate::encode(bpm, Some(true), None, &[]),
        )
    };
    assert!(hr(70)?);
    wait_for("the first value", Duration::from_secs(30), || {
        values(&gw, "ana", "heart-rate", "heart_rate")
            .ok()
            .filter(|v| v.len() == 1)
    })
    .await?;

    // The broker goes down mid-stream; the band keeps measuring; the broker comes back.
    mosquitto.kill();
    assert!(hr(71)? && hr(72)?);
    // Both wait in the bridge's outbox (durable, unacked) before the broker comes back.
    let bridge_dir = gw.dir.path().join("ble-bridge");
    wait_for(
        "the two values measured while the broker is down in the outbox",
        Duration::from_secs(20),
        || outbox_records(&bridge_dir).ok().filter(|n| *n >= 2),
    )
    .await?;
    mosquitto.restart()?;
    let all = wait_for(
        "the values measured while the broker was down",
        Duration::from_secs(60),
        || {
            values(&gw, "ana", "heart-rate", "heart_rate")
                .ok()
                .filter(|v| v.len() == 3)
        },
    )
    .await?;
    assert_eq!(all, [70.0, 71.0, 72.0]);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dbus-daemon and python3-dbus/python3-gi for the emulated BlueZ; .ci/run installs them"]
async fn a_full_outbox_holds_new_records_until_the_gateway_returns() -> anyhow::Result<()> {
    let band = EmulatedBand::new(BAND, "PHR Band 01");
    let bluez = PrivateBluez::start(std::slice::from_ref(&band))?;
    let dir = tempfile::tempdir()?;
    let mut gateway = GatewayProcess::start(dir.path()).await?;
    let (base, prefix, mqtt) = (gateway.base.clone(), gateway.prefix.clone(), gateway.mqtt);
    let token = gateway.token("lea")?;
    consent_to_storage(&base, &token, &["heart-rate"])?;
    // An outbox of two batches: the bound is reached after two flushes.
    let bridge_dir = dir.path().join("bridge");
    let (_bridge, stdout) = spawn_bridge_with(
        &bridge_dir,
        &format!("mqtt://{mqtt}"),
        &prefix,
        &bluez,
        &gateway.data,
        "outbox_max_batches = 2",
    )?;
    bluez
        .wait_notifying(BAND, uuids::HEART_RATE_MEASUREMENT, Duration::from_secs(60))
        .await?;
    pair(&base, &token, BAND, &band.serial, &stdout).await?;

    gateway.kill();
    // Eight values, flushed one by one (sent 200 ms apart, the bridge flushes after 100 ms):
    // two fill the outbox, six wait in memory.
    for bpm in 60..68u16 {
        assert!(bluez.notify(
            BAND,
            uuids::HEART_RATE_MEASUREMENT,
            &heart_rate::encode(bpm, Some(true), None, &[])
        )?);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Once the bridge says it holds the six the full outbox refused, the outbox still holds
    // two batches: the bound holds.
    wait_for(
        "the bridge to hold the six values the full outbox refused",
        Duration::from_secs(20),
        || {
            let lines = stdout.lock().ok()?;
            lines
                .iter()
                .any(|l| l.contains("could not queue records") && l.contains("held=6"))
                .then_some(())
        },
    )
    .await?;
    let line = outbox_line(&bridge_dir)?;
    assert!(
        line.starts_with("outbox: 2 batches"),
        "the bound holds: {line}"
    );
    gateway.restart().await?;
    let hr = wait_for("all eight values", Duration::from_secs(60), || {
        let (s, b) = call(
            "GET",
            &format!("{base}/api/v1/me/records?type=heart-rate"),
            Some(&token),
            None,
        )
        .ok()?;
        let v: Vec<f64> = b["records"]
            .as_array()?
            .iter()
            .filter_map(|r| r["body"]["heart_rate"]["value"].as_f64())
            .collect();
        (s == 200 && v.len() == 8).then_some(v)
    })
    .await?;
    assert_eq!(
        hr,
        (60..68).map(f64::from).collect::<Vec<_>>(),
        "nothing lost, nothing twice"
    );
    Ok(())
}

/// The person lets the gateway at `base` store these data types.
fn consent_to_storage(base: &str, token: &str, types: &[&str]) -> anyhow::Result<()> {
    let body = json!({"grantee": "phr-gateway", "grantee_kind": "gateway", "purpose": "storage", "data_types": types});
    let (s, b) = call(
        "POST",
        &format!("{base}/api/v1/me/consents"),
        Some(token),
        Some(body),
    )?;
    anyhow::ensure!(s == 201, "{b}");
    Ok(())
}

/// The real `phr-gateway` binary with its embedded broker, on ports that stay the same across
/// a kill and a restart (picked by the gateway at its first start).
struct GatewayProcess {
    bin: std::path::PathBuf,
    data: std::path::PathBuf,
    http: std::net::SocketAddr,
    mqtt: std::net::SocketAddr,
    prefix: String,
    base: String,
    process: SpawnedGateway,
}

impl GatewayProcess {
    async fn start(dir: &std::path::Path) -> anyhow::Result<Self> {
        let (bin, data) = (binary("phr-gateway", "phr-gateway")?, dir.join("gateway"));
        let prefix = test_prefix();
        let process = spawn_gateway(&bin, &data, any_port(), any_port(), None, &prefix).await?;
        let (http, mqtt) = (process.http, process.mqtt);
        let base = process.base();
        wait_for("the gateway", Duration::from_secs(20), || {
            ureq::get(&format!("{base}/healthz")).call().ok()
        })
        .await?;
        Ok(Self {
            bin,
            data,
            http,
            mqtt,
            prefix,
            base,
            process,
        })
    }

    /// An owner token signed with the gateway's own key (read from its data dir).
    fn token(&self, person: &str) -> anyhow::Result<String> {
        let keys = phr_gateway::auth::Keys::load_or_create(
            &self.data.join("keys"),
            &format!("http://{}", self.http),
            "phr-api",
        )?;
        Ok(keys.issue(
            person,
            phr_e2e::OWNER_SCOPE,
            TimeDelta::hours(1),
            Utc::now(),
        )?)
    }

    fn kill(&mut self) {
        self.process.kill();
    }

    async fn restart(&mut self) -> anyhow::Result<()> {
        self.process = spawn_gateway(
            &self.bin,
            &self.data,
            self.http,
            self.mqtt,
            None,
            &self.prefix,
        )
        .await?;
        Ok(())
    }
}

/// A record's measured interval and its body.
type Measured = (DateTime<Utc>, DateTime<Utc>, serde_json::Value);

/// Every record of `kind` `who` can read, in time order.
fn intervals(gw: &TestGateway, who: &str, kind: &str) -> anyhow::Result<Vec<Measured>> {
    let (s, b) = call(
        "GET",
        &gw.url(&format!("/api/v1/me/records?type={kind}")),
        Some(&gw.owner_token(who)),
        None,
    )?;
    anyhow::ensure!(s == 200, "{b}");
    let time = |v: &serde_json::Value| -> anyhow::Result<DateTime<Utc>> {
        Ok(DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default())?.with_timezone(&Utc))
    };
    let mut out = Vec::new();
    for r in b["records"].as_array().into_iter().flatten() {
        let frame = &r["body"]["effective_time_frame"]["time_interval"];
        out.push((
            time(&frame["start_date_time"])?,
            time(&frame["end_date_time"])?,
            r["body"].clone(),
        ));
    }
    out.sort_by_key(|(start, end, _)| (*start, *end));
    Ok(out)
}

/// A UTC offset under which it is about noon now, so no local midnight falls inside a test.
fn noon_offset() -> String {
    let hours = (12 - Utc::now().hour() as i32).rem_euclid(24);
    let hours = if hours > 12 { hours - 24 } else { hours };
    format!("{}{:02}:00", if hours < 0 { '-' } else { '+' }, hours.abs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dbus-daemon and python3-dbus/python3-gi for the emulated BlueZ; .ci/run installs them"]
async fn pams_summaries_are_timed_by_their_session_and_daily_totals_become_deltas(
) -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let now = Utc::now().duration_trunc(TimeDelta::seconds(1))?;
    let s1 = now - TimeDelta::hours(10);
    let at = |t| SessionTime {
        at: t,
        offset_minutes: 0,
    };
    let mut band = EmulatedBand::new(BAND, "PAMS Band");
    band.pams_current_session = encode_current_session(&CurrentSession {
        running: true,
        session_id: 1,
        session_start: at(s1),
        sub_session_id: 1,
        sub_session_start: at(s1),
    });
    band.steps_today = 1000;
    let serial = band.serial.clone();
    let bluez = PrivateBluez::start(&[band])?;
    let started = Utc::now();
    let (_bridge, stdout) = spawn_bridge_with(
        &gw.dir.path().join("ble-bridge"),
        &gw.gateway.mqtt.to_string(),
        gw.topics().prefix(),
        &bluez,
        &gw.config.data_dir,
        &format!("utc_offset = \"{}\"", noon_offset()),
    )?;
    for uuid in [
        uuids::PAMS_STEP_COUNTER_SUMMARY,
        uuids::PAMS_SLEEP_SUMMARY,
        uuids::PAMS_SESSION_DESCRIPTOR,
        uuids::VENDOR_STEPS_TODAY,
    ] {
        bluez
            .wait_notifying(BAND, uuid, Duration::from_secs(60))
            .await?;
    }
    // At connect the bridge asked for the device's sessions through the control point.
    wait_for("Enquire Sessions", Duration::from_secs(10), || {
        let writes = bluez.status().ok()?.writes;
        writes
            .iter()
            .any(|w| w.uuid == uuids::PAMS_CONTROL_POINT && w.bytes() == [0x01])
            .then_some(())
    })
    .await?;
    let ana = gw.owner_token("ana");
    consent_to_storage(
        &gw.url(""),
        &ana,
        &["step-count", "sleep-episode", "heart-rate"],
    )?;
    pair(&gw.url(""), &ana, BAND, &serial, &stdout).await?;

    // The band, playing PAMS firmware: running totals of sub-session 1 of session 1 (the one
    // read at connect), one indication repeated; a night's summary; a summary of session 2
    // before the descriptor that says when session 2 started; a new daily total.
    let steps = |session_id, sub_session_id, relative_seconds, sequence, n| {
        encode_step_counter_summary(&StepCounterSummary {
            session_id,
            sub_session_id,
            relative_seconds,
            sequence,
            normal_walking_steps: Some(n),
            ..Default::default()
        })
        .expect("fits")
    };
    let s2 = now - TimeDelta::hours(1);
    let night = SleepActivitySummary {
        session_id: 1,
        sub_session_id: 2,
        relative_seconds: 9 * 3600,
        sequence: 3,
        total_sleep_seconds: Some(6 * 3600 + 1800),
        total_wake_seconds: Some(1800),
        total_bed_seconds: Some(7 * 3600),
        awakenings: Some(2),
        latency_seconds: Some(900),
        efficiency_percent: Some(92),
        ..Default::default()
    };
    let descriptor = SessionDescriptor {
        session_id: 2,
        sub_session_id: None,
        start: at(s2),
        end: None,
        deleted: false,
    };
    let sends: Vec<(&str, Vec<u8>)> = vec![
        (uuids::PAMS_STEP_COUNTER_SUMMARY, steps(1, 1, 3600, 1, 400)),
        (uuids::PAMS_STEP_COUNTER_SUMMARY, steps(1, 1, 5400, 2, 650)),
        (uuids::PAMS_STEP_COUNTER_SUMMARY, steps(1, 1, 5400, 2, 650)),
        (
            uuids::PAMS_SLEEP_SUMMARY,
            encode_sleep_activity_summary(&night).expect("fits"),
        ),
        (uuids::PAMS_STEP_COUNTER_SUMMARY, steps(2, 0, 600, 1, 30)),
        (
            uuids::PAMS_SESSION_DESCRIPTOR,
            encode_session_descriptor(&descriptor).expect("fits"),
        ),
        (
            uuids::VENDOR_STEPS_TODAY,
            sim_band::encode_steps_today(1250),
        ),
    ];
    for (uuid, bytes) in &sends {
        assert!(bluez.notify(BAND, uuid, bytes)?, "{uuid} subscribed");
    }

    // All of it was measured before the pairing: quarantined until Ana confirms it is hers.
    let quarantined = || -> Option<u64> {
        let (_, b) = call("GET", &gw.url("/api/v1/me/quarantine"), Some(&ana), None).ok()?;
        Some(
            b["quarantine"]
                .as_array()?
                .iter()
                .filter_map(|q| q["records"].as_u64())
                .sum(),
        )
    };
    wait_for(
        "five records in quarantine",
        Duration::from_secs(30),
        || quarantined().filter(|n| *n == 5),
    )
    .await?;
    let range = json!({"device_id": BAND, "from": (s1 - TimeDelta::minutes(1)).to_rfc3339(),
                       "to": (Utc::now() + TimeDelta::minutes(1)).to_rfc3339()});
    let (s, b) = call(
        "POST",
        &gw.url("/api/v1/me/quarantine/confirm"),
        Some(&ana),
        Some(range),
    )?;
    assert_eq!(
        (s, b["correction"]["records"].as_u64()),
        (200, Some(5)),
        "{b}"
    );

    let got = intervals(&gw, "ana", "step-count")?;
    let h = TimeDelta::hours;
    let plain: Vec<_> = got
        .iter()
        .map(|(a, b, body)| (*a, *b, body["step_count"].as_i64().unwrap_or(-1)))
        .collect();
    assert_eq!(plain.len(), 4, "{plain:?}");
    assert_eq!(
        plain[..3],
        [
            (s1, s1 + h(1), 400),
            (s1 + h(1), s1 + TimeDelta::minutes(90), 250),
            (s2, s2 + TimeDelta::minutes(10), 30),
        ],
        "PAMS totals as deltas, timed by their session; the repeat not counted"
    );
    let (from, to, today) = plain[3];
    assert_eq!(today, 250, "1250 - the 1000 read at connect");
    assert!(
        started <= from && from < to && to <= Utc::now(),
        "{from} {to}"
    );

    let sleep = intervals(&gw, "ana", "sleep-episode")?;
    assert_eq!(sleep.len(), 1);
    let (from, to, body) = &sleep[0];
    assert_eq!((*from, *to), (s1 + h(2), s1 + h(9)));
    assert_eq!(body["total_sleep_time"]["value"].as_f64(), Some(390.0));
    assert_eq!(body["latency_to_sleep_onset"]["value"].as_f64(), Some(15.0));
    assert_eq!(body["number_of_awakenings"].as_i64(), Some(2));
    assert_eq!(
        body["sleep_maintenance_efficiency_percentage"]["value"].as_f64(),
        Some(92.0)
    );
    assert_eq!(body["is_main_sleep"], json!(true));
    gw.stop().await;
    Ok(())
}

/// Records of `token`'s devices waiting in quarantine.
fn quarantined(gw: &TestGateway, token: &str) -> Option<u64> {
    let (_, b) = call("GET", &gw.url("/api/v1/me/quarantine"), Some(token), None).ok()?;
    Some(
        b["quarantine"]
            .as_array()?
            .iter()
            .filter_map(|q| q["records"].as_u64())
            .sum(),
    )
}

/// Issue #13, problem 5, through btleplug and the real daemon: a band whose day is not the
/// bridge's. The bridge is configured for Asia/Tokyo; band "told" says over Local Time
/// Information that it keeps New York summer time (UTC−5, DST +1 h = UTC−4), band "silent"
/// says nothing. Both walk the same day and reset their steps-today total at 00:00 EDT
/// (04:00Z). The bridge's clock is the test's (libfaketime), so the totals arrive on both
/// sides of the band's midnight and of Tokyo's (15:00Z).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dbus-daemon, python3-dbus/python3-gi and libfaketime; .ci/run installs them"]
async fn a_band_that_reports_its_zone_has_its_steps_counted_once_across_its_own_midnight(
) -> anyhow::Result<()> {
    const TOLD: &str = "C0:FF:EE:00:00:0A";
    const SILENT: &str = "C0:FF:EE:00:00:0B";
    let gw = TestGateway::start().await?;
    let mut told = EmulatedBand::new(TOLD, "Band in New York");
    told.local_time = local_time::encode(Some(-5 * 60), Some(60));
    assert_eq!(
        told.local_time,
        Some(vec![0xEC, 0x04]),
        "−20 quarters, DST code 4"
    );
    told.steps_today = 9_000;
    let mut silent = EmulatedBand::new(SILENT, "Band without a zone");
    silent.steps_today = 9_000;
    let (told_serial, silent_serial) = (told.serial.clone(), silent.serial.clone());
    let bluez = PrivateBluez::start(&[told, silent])?;

    // A day two days back: everything lies in the gateway's past.
    let day = (Utc::now() - TimeDelta::days(2)).date_naive();
    let utc = |h, m| {
        day.and_hms_opt(h, m, 0)
            .expect("a valid time of day")
            .and_utc()
    };
    let band_midnight = utc(4, 0); // 00:00 EDT
    let tokyo_midnight = utc(15, 0); // 00:00 JST
                                     // When the bridge receives each total, and the total the bands show then: read at
                                     // connect; then 20 min before and 10 min after the bands' midnight (they reset there
                                     // and walked nothing between 03:50Z and 04:00Z); then around Tokyo's midnight, where
                                     // the bands do not reset.
    let at = [
        utc(3, 30),
        utc(3, 50),
        utc(4, 10),
        utc(4, 30),
        utc(14, 50),
        utc(16, 0),
    ];
    let totals: [u32; 6] = [9_000, 9_400, 150, 500, 5_000, 5_200];
    let walked = (9_400 - 9_000) + 5_200;

    let dir = gw.dir.path().join("ble-bridge");
    // The bridge's wall clock is the test's (libfaketime).
    let clock = FakeClock::new(&dir, at[0])?;
    let (_bridge, stdout) = spawn_bridge_env(
        &dir,
        &gw.gateway.mqtt.to_string(),
        gw.topics().prefix(),
        &bluez,
        &gw.config.data_dir,
        "time_zone = \"Asia/Tokyo\"",
        &clock.env(),
    )?;
    // Subscribed to steps today: the reads at connect (Local Time Information first, then
    // the total, a baseline) are done, stamped at[0].
    for band in [TOLD, SILENT] {
        bluez
            .wait_notifying(band, uuids::VENDOR_STEPS_TODAY, Duration::from_secs(60))
            .await?;
    }
    let (ana, bob) = (gw.owner_token("ana"), gw.owner_token("bob"));
    for token in [&ana, &bob] {
        consent_to_storage(&gw.url(""), token, &["step-count", "heart-rate"])?;
    }
    pair(&gw.url(""), &ana, TOLD, &told_serial, &stdout).await?;
    pair(&gw.url(""), &bob, SILENT, &silent_serial, &stdout).await?;

    // A heart rate through each band, once stored (quarantined: measured before the
    // pairing), shows the bridge has taken in everything sent before it, the echoes of the
    // reads at connect included, all at at[0]; only then does its clock move.
    for band in [TOLD, SILENT] {
        assert!(bluez.notify(
            band,
            uuids::HEART_RATE_MEASUREMENT,
            &heart_rate::encode(70, Some(true), None, &[])
        )?);
    }
    for token in [&ana, &bob] {
        wait_for("a heart rate per band", Duration::from_secs(30), || {
            quarantined(&gw, token).filter(|n| *n >= 1)
        })
        .await?;
    }
    // Each later total gives each band one step record (checked below); wait for it before
    // moving the clock again.
    for (k, (&when, &total)) in at.iter().zip(&totals).enumerate().skip(1) {
        clock.set(when)?;
        for band in [TOLD, SILENT] {
            assert!(bluez.notify(
                band,
                uuids::VENDOR_STEPS_TODAY,
                &sim_band::encode_steps_today(total)
            )?);
        }
        for token in [&ana, &bob] {
            wait_for(
                &format!("the step record of total {k}"),
                Duration::from_secs(30),
                || quarantined(&gw, token).filter(|n| *n > k as u64),
            )
            .await?;
        }
    }
    for (token, band) in [(&ana, TOLD), (&bob, SILENT)] {
        let range = json!({"device_id": band, "from": (at[0] - TimeDelta::hours(1)).to_rfc3339(),
                           "to": (Utc::now() + TimeDelta::minutes(1)).to_rfc3339()});
        let (s, b) = call(
            "POST",
            &gw.url("/api/v1/me/quarantine/confirm"),
            Some(token),
            Some(range),
        )?;
        assert_eq!(
            (s, b["correction"]["records"].as_u64()),
            (200, Some(6)),
            "{band}: a heart rate and five step records: {b}"
        );
    }
    /// A step record's interval and count.
    type Steps = (DateTime<Utc>, DateTime<Utc>, i64);
    let steps = |who: &str| -> anyhow::Result<Vec<Steps>> {
        Ok(intervals(&gw, who, "step-count")?
            .into_iter()
            .map(|(a, b, body)| (a, b, body["step_count"].as_i64().unwrap_or(-1)))
            .collect())
    };

    // The band that told its zone: its reset is its midnight; Tokyo's midnight is nothing
    // to it.
    let told = steps("ana")?;
    assert_eq!(
        told,
        [
            (at[0], at[1], 400),
            (band_midnight, at[2], 150),
            (at[2], at[3], 350),
            (at[3], at[4], 4_500),
            (at[4], at[5], 200),
        ],
        "deltas placed by the band's own midnight"
    );
    assert_eq!(
        told.iter().map(|s| s.2).sum::<i64>(),
        walked,
        "every step once"
    );
    assert!(
        told.iter()
            .all(|&(from, to, _)| !(from < band_midnight && band_midnight < to)),
        "no delta spans the band's midnight: {told:?}"
    );

    // The same day from the band that did not: by the configured zone its midnight reset
    // looks like a reboot (a delta across its midnight), and at Tokyo's midnight the whole
    // day's total is taken as new: 5,000 steps counted twice.
    let silent = steps("bob")?;
    assert_eq!(
        silent,
        [
            (at[0], at[1], 400),
            (at[1], at[2], 150),
            (at[2], at[3], 350),
            (at[3], at[4], 4_500),
            (tokyo_midnight, at[5], 5_200),
        ],
        "deltas placed by Tokyo's midnight"
    );
    assert_eq!(silent.iter().map(|s| s.2).sum::<i64>(), walked + 5_000);
    gw.stop().await;
    Ok(())
}
