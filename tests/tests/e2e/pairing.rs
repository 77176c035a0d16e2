//! Pairing through the real bridge: the gateway sends a code, the bridge shows it and reports
//! the device, the owner confirms. And what binding means afterwards.

use std::time::Duration;

use chrono::{DurationRound, TimeDelta, Utc};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use phr_bridge::identity::BridgeKey;
use phr_bridge::publish::Status;
use phr_bridge::simulate::{self, SimulateConfig};
use phr_e2e::{
    any_port, binary, call, enrol_sim, gateway_channel_key, metric, minute_steps, send,
    spawn_gateway_env, step_counts, test_prefix, wait_for, FakeClock, TestGateway,
};
use phr_gateway::store::pairing::Refusal;
use phr_schema::Reason;

const BRIDGE: &str = "br-home";
const BAND: &str = "sim-band-0000";

// Pairing codes as specified (README, "pair a device"), not read from the code under test:
// six digits, valid for 5 minutes, 5 wrong tries.
const CODE_DIGITS: usize = 6;
const TTL: TimeDelta = TimeDelta::minutes(5);
const MAX_ATTEMPTS: i64 = 5;

/// A gateway and a running simulated bridge with one band, not yet paired to anyone.
struct Home {
    gw: TestGateway,
    bridge: CancellationToken,
    status: watch::Receiver<Status>,
}

async fn home() -> anyhow::Result<Home> {
    let gw = TestGateway::start().await?;
    let mut cfg = SimulateConfig::new(
        BRIDGE,
        1,
        gw.dir.path().join("bridge"),
        gw.gateway.mqtt.clone(),
    );
    cfg.topic_prefix = gw.topics().prefix().to_owned();
    gw.enrol_sim(&mut cfg)?;
    cfg.history = TimeDelta::minutes(30);
    cfg.tick = Duration::from_millis(500);
    let (tx, status) = watch::channel(Status::default());
    let bridge = CancellationToken::new();
    tokio::spawn(simulate::run(cfg, tx, bridge.clone()));
    let mut s = status.clone();
    tokio::time::timeout(Duration::from_secs(20), s.wait_for(|s| s.connected)).await??;
    Ok(Home { gw, bridge, status })
}

impl Home {
    /// The simulated bridge's key, loaded again (a test publishing as that bridge).
    fn key_copy(&self) -> anyhow::Result<BridgeKey> {
        Ok(BridgeKey::load_or_create(
            &self.gw.dir.path().join("bridge"),
        )?)
    }

    /// Starts a pairing as `owner` and returns its id and the code the bridge shows.
    async fn start(&self, owner: &str) -> anyhow::Result<(String, String)> {
        let (s, body) = call(
            "POST",
            &self.gw.url("/api/v1/me/devices/pairings"),
            Some(&self.gw.owner_token(owner)),
            Some(json!({"bridge_id": BRIDGE, "device_id": BAND})),
        )?;
        assert_eq!(s, 201, "{body}");
        let id = body["pairing"]["pairing_id"].as_str().unwrap().to_owned();
        let shown = id.clone();
        let status = self.status.clone();
        let code = wait_for(
            "the bridge to show the code",
            Duration::from_secs(10),
            || {
                status
                    .borrow()
                    .pairing_codes
                    .iter()
                    .find(|c| c.pairing_id.to_string() == shown)
                    .map(|c| c.code.clone())
            },
        )
        .await?;
        assert!(
            code.len() == CODE_DIGITS && code.bytes().all(|b| b.is_ascii_digit()),
            "{code:?} is not a {CODE_DIGITS}-digit code"
        );
        // The bridge also reported what the device is.
        let url = self.gw.url(&format!("/api/v1/me/devices/pairings/{id}"));
        let token = self.gw.owner_token(owner);
        wait_for("the bridge's report", Duration::from_secs(10), || {
            call("GET", &url, Some(&token), None)
                .ok()
                .filter(|(_, b)| b["pairing"]["reported_serial"].is_string())
        })
        .await?;
        Ok((id, code))
    }

    /// The owner lets the gateway store their data (pairing alone does not).
    fn consent_to_storage(&self, owner: &str) -> anyhow::Result<()> {
        let body = json!({"grantee": "phr-gateway", "grantee_kind": "gateway", "purpose": "storage",
                          "data_types": ["step-count", "sleep-episode", "heart-rate"]});
        let (s, b) = call(
            "POST",
            &self.gw.url("/api/v1/me/consents"),
            Some(&self.gw.owner_token(owner)),
            Some(body),
        )?;
        assert_eq!(s, 201, "{b}");
        Ok(())
    }

    fn confirm(&self, owner: &str, id: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        call(
            "POST",
            &self
                .gw
                .url(&format!("/api/v1/me/devices/pairings/{id}/confirm")),
            Some(&self.gw.owner_token(owner)),
            Some(body),
        )
    }

    async fn stop(self) {
        self.bridge.cancel();
        self.gw.stop().await;
    }
}

fn devices(h: &Home, owner: &str) -> anyhow::Result<Vec<Value>> {
    let (s, body) = call(
        "GET",
        &h.gw.url("/api/v1/me/devices"),
        Some(&h.gw.owner_token(owner)),
        None,
    )?;
    assert_eq!(s, 200, "{body}");
    Ok(body["devices"].as_array().cloned().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_who_started_it_with_the_code_the_bridge_shows_can_pair(
) -> anyhow::Result<()> {
    let h = home().await?;
    let (id, code) = h.start("ana").await?;
    assert_eq!(code.len(), 6);
    let (_, shown) = call(
        "GET",
        &h.gw.url(&format!("/api/v1/me/devices/pairings/{id}")),
        Some(&h.gw.owner_token("ana")),
        None,
    )?;
    assert_eq!(shown["pairing"]["reported_serial"], "PHR-SIM-BAND-0000");
    assert!(shown["pairing"]["reported_address"]
        .as_str()
        .unwrap()
        .starts_with("02:50:"));
    assert!(
        shown["pairing"].get("code").is_none(),
        "the API never shows the code"
    );

    // Someone else, even with the right code, cannot confirm ana's pairing.
    let (s, _) = h.confirm("ben", &id, json!({"code": code}))?;
    assert_eq!(s, 404);
    // A wrong code is refused, and a wrong serial ends the pairing; neither binds anything.
    let (s, body) = h.confirm("ana", &id, json!({"code": "000000x"}))?;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("wrong_code"))
    );
    assert!(devices(&h, "ana")?.is_empty());

    let (s, body) = h.confirm(
        "ana",
        &id,
        json!({"code": code, "serial_number": "PHR-SIM-BAND-0000"}),
    )?;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["pairing"]["state"], "confirmed");
    let bound = devices(&h, "ana")?;
    assert_eq!(bound.len(), 1);
    assert_eq!(
        (
            bound[0]["device_id"].as_str(),
            bound[0]["valid_to"].is_null()
        ),
        (Some(BAND), true)
    );
    assert!(devices(&h, "ben")?.is_empty());
    // A code works once.
    let (s, body) = h.confirm("ana", &id, json!({"code": code}))?;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("pairing_used"))
    );

    // The bridge's history was flowing while its pairing report arrived: the gateway acked
    // them in order and kept its one MQTT session (a broker drops clients that do not).
    assert_eq!(metric(&h.gw.url(""), "phr_mqtt_connects_total")?, 1.0);

    // Refusals and the pairing are in ana's log.
    let (_, log) = call(
        "GET",
        &h.gw.url("/api/v1/me/disclosures"),
        Some(&h.gw.owner_token("ana")),
        None,
    )?;
    let pairing: Vec<_> = log["disclosures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "pairing")
        .collect();
    assert_eq!(
        pairing
            .iter()
            .map(|e| e["outcome"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["done", "denied", "done", "denied"]
    );
    // The start through the API is a step of its own in the log.
    assert!(
        pairing.iter().any(|e| e["purpose"]
            .as_str()
            .unwrap_or_default()
            .starts_with("started pairing of device")),
        "{pairing:?}"
    );

    // From now on the band's data is ana's, once she lets the gateway store it.
    // The embedded broker now knows the bridge's key: only the bridge itself may connect
    // under its id.
    if phr_e2e::external_broker().is_none() {
        let mqtt = &h.gw.gateway.mqtt;
        assert!(
            !phr_e2e::can_connect(mqtt, Some((BRIDGE, ""))).await,
            "no password"
        );
        assert!(
            !phr_e2e::can_connect(mqtt, Some((BRIDGE, &"ab".repeat(64)))).await,
            "a forged password"
        );
        assert!(!phr_e2e::can_connect(mqtt, None).await, "anonymous");
        assert!(
            !phr_e2e::can_connect(mqtt, Some(("phr-gateway", "guess"))).await,
            "posing as the gateway"
        );
        assert!(
            !phr_e2e::can_connect(mqtt, Some(("a-new-bridge", ""))).await,
            "a bridge nobody enrolled"
        );
    }
    let mut raw = h.gw.raw_bridge_with(BRIDGE, h.key_copy()?).await?;
    let at = |m| minute_steps(BAND, BRIDGE, Utc::now() + TimeDelta::minutes(m), 40 + m);
    // Before she consents, her records are held for her (in quarantine, where she sees them),
    // and stored when she consents.
    let ack = send(&mut raw, BAND, vec![at(1)]).await?;
    assert_eq!((ack.quarantined, ack.rejected.len()), (1, 0), "{ack:?}");
    h.consent_to_storage("ana")?;
    assert!(step_counts(&h.gw, "ana")?.contains(&41));
    let ack = send(&mut raw, BAND, vec![at(2)]).await?;
    assert_eq!(ack.stored, 1);
    // Only what opens with the bridge's channel key counts: a batch in clear, or one sealed
    // by another key, on the bridge's own topic for its own device, is refused unread and
    // never acked. (The genuine batch after them is acked once they were processed: the
    // gateway handles one connection's messages in order.)
    let topic = h.gw.topics().records(BRIDGE, BAND);
    let batch = |m| {
        serde_json::to_vec(&phr_schema::Batch::new(
            BRIDGE,
            BAND,
            uuid::Uuid::new_v4(),
            vec![at(m)],
        ))
    };
    raw.publish_to(topic.clone(), batch(3)?).await?;
    let impostor = BridgeKey::generate().channel(&h.gw.gateway.channels.public_key())?;
    raw.publish_to(topic.clone(), impostor.seal(&topic, &batch(4)?, [9; 24]))
        .await?;
    let ack = send(&mut raw, BAND, vec![at(5)]).await?;
    assert_eq!(ack.stored, 1, "only the genuine batch got an ack");
    assert_eq!(
        metric(&h.gw.url(""), "phr_batches_refused_unread_total")?,
        2.0
    );
    let (_, mine) = call(
        "GET",
        &h.gw.url("/api/v1/me/records?type=step-count"),
        Some(&h.gw.owner_token("ana")),
        None,
    )?;
    assert!(mine["records"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["body"]["step_count"] == 42));
    let counts: Vec<i64> = step_counts(&h.gw, "ana")?;
    assert!(!counts.contains(&43) && !counts.contains(&44), "{counts:?}");
    assert!(counts.contains(&45), "{counts:?}");
    h.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_serial_too_many_attempts_and_expiry_end_a_pairing() -> anyhow::Result<()> {
    let h = home().await?;
    let (id, code) = h.start("ana").await?;
    let (s, body) = h.confirm(
        "ana",
        &id,
        json!({"code": code, "serial_number": "SOMEONE-ELSES"}),
    )?;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("serial_mismatch"))
    );
    let (s, body) = h.confirm("ana", &id, json!({"code": code}))?;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("pairing_used"))
    );

    let (id, code) = h.start("ana").await?;
    let id2: uuid::Uuid = id.parse()?;
    let later = Utc::now() + TTL + TimeDelta::seconds(1);
    assert_eq!(
        h.gw.gateway
            .store
            .confirm_pairing("ana", id2, &code, None, later)?,
        Err(Refusal::Expired)
    );

    let (id, code) = h.start("ana").await?;
    for _ in 0..MAX_ATTEMPTS {
        let (s, body) = h.confirm("ana", &id, json!({"code": "999999999"}))?;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (400, Some("wrong_code"))
        );
    }
    let (s, body) = h.confirm("ana", &id, json!({"code": code}))?;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("pairing_used")),
        "guessing ends the pairing"
    );
    // ... and makes the next pairing of that device wait, whoever starts it.
    for who in ["ana", "mallory"] {
        let (s, body) = call(
            "POST",
            &h.gw.url("/api/v1/me/devices/pairings"),
            Some(&h.gw.owner_token(who)),
            Some(json!({"bridge_id": BRIDGE, "device_id": BAND})),
        )?;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (429, Some("too_many_pairings")),
            "{who}: {body}"
        );
    }
    assert!(devices(&h, "ana")?.is_empty());
    h.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_released_and_paired_by_a_new_owner_splits_its_records() -> anyhow::Result<()> {
    let h = home().await?;
    // Ana has had the band for two hours.
    let (id, code) = h.start("ana").await?;
    let two_hours_ago = Utc::now() - TimeDelta::hours(2);
    h.gw.gateway
        .store
        .confirm_pairing("ana", id.parse()?, &code, None, two_hours_ago)?
        .map_err(|r| anyhow::anyhow!("{r}"))?;
    // Ben cannot pair it while it is hers ...
    let (s, body) = call(
        "POST",
        &h.gw.url("/api/v1/me/devices/pairings"),
        Some(&h.gw.owner_token("ben")),
        Some(json!({"bridge_id": BRIDGE, "device_id": BAND})),
    )?;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (409, Some("device_bound_to_another")),
        "{body}"
    );
    // ... until she gives it away, and then he pairs it.
    let (s, body) = call(
        "DELETE",
        &h.gw.url(&format!("/api/v1/me/devices/{BAND}/binding")),
        Some(&h.gw.owner_token("ana")),
        None,
    )?;
    assert_eq!(s, 200, "{body}");
    let (id, code) = h.start("ben").await?;
    let (s, body) = h.confirm("ben", &id, json!({"code": code}))?;
    assert_eq!(s, 200, "{body}");
    let moved_at: chrono::DateTime<Utc> = devices(&h, "ben")?[0]["valid_from"]
        .as_str()
        .unwrap()
        .parse()?;
    let ana_until: chrono::DateTime<Utc> = devices(&h, "ana")?[0]["valid_to"]
        .as_str()
        .unwrap()
        .parse()?;
    assert!(ana_until <= moved_at, "{ana_until} {moved_at}");

    h.consent_to_storage("ana")?;
    h.consent_to_storage("ben")?;
    let mut raw = h.gw.raw_bridge_with(BRIDGE, h.key_copy()?).await?;
    let after = (moved_at + TimeDelta::minutes(1)).duration_trunc(TimeDelta::minutes(1))?;
    // Minutes the simulated band never sent (it sends whole hours of activity once they are
    // over, from the hour holding 30 minutes before it started): a key the gateway holds
    // already would be a duplicate, wherever it is.
    let records = vec![
        minute_steps(BAND, BRIDGE, ana_until - TimeDelta::minutes(100), 1),
        minute_steps(BAND, BRIDGE, ana_until - TimeDelta::minutes(95), 2),
        minute_steps(BAND, BRIDGE, after, 3),
    ];
    let ack = send(&mut raw, BAND, records).await?;
    assert_eq!((ack.stored, ack.quarantined), (3, 0), "{ack:?}");
    let counts = |who: &str| step_counts(&h.gw, who);
    assert_eq!(
        counts("ana")?,
        [1, 2],
        "yesterday's steps stay with yesterday's owner"
    );
    assert_eq!(counts("ben")?, [3]);
    // A minute that straddles the hand-over belongs to neither.
    let straddling = ana_until.duration_trunc(TimeDelta::minutes(1))?;
    if straddling != ana_until {
        let ack = send(
            &mut raw,
            BAND,
            vec![minute_steps(BAND, BRIDGE, straddling, 4)],
        )
        .await?;
        assert_eq!((ack.stored, ack.quarantined), (0, 1));
    }

    // Another (enrolled) bridge cannot publish for this band: nothing is stored, however
    // often it tries ...
    let mut evil = h.gw.raw_bridge("br-evil").await?;
    for n in 0..20 {
        let ack = send(
            &mut evil,
            BAND,
            vec![minute_steps(BAND, "br-evil", Utc::now(), 100 + n)],
        )
        .await?;
        assert_eq!(
            (ack.stored, ack.batch_error),
            (0, Some(Reason::DeviceNotOnBridge))
        );
    }
    assert_eq!(counts("ben")?, [3]);
    // ... and ben, who owns the band now, sees the attempts in his log, counted per minute
    // rather than one entry each (a flood of refused batches does not flood his log).
    let (_, log) = call(
        "GET",
        &h.gw.url("/api/v1/me/disclosures"),
        Some(&h.gw.owner_token("ben")),
        None,
    )?;
    let attempts: Vec<_> = log["disclosures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "refused_batch")
        .collect();
    assert!(
        (1..=2).contains(&attempts.len()),
        "one entry per minute, 20 attempts: {log}"
    );
    assert_eq!(
        (
            attempts[0]["actor"].as_str(),
            attempts[0]["outcome"].as_str()
        ),
        (Some("br-evil"), Some("denied"))
    );
    let counted: u64 =
        h.gw.gateway
            .store
            .refused_batches(Utc::now() - TimeDelta::hours(1), 100)?
            .iter()
            .filter(|r| r.bridge_id == "br-evil" && r.reason == "device_not_on_bridge")
            .map(|r| r.batches)
            .sum();
    assert_eq!(counted, 20);
    h.stop().await;
    Ok(())
}

/// The code's lifetime at the API, on the real gateway binary whose wall clock the test sets
/// (libfaketime: the binary always reads the system clock): a pairing started at T answers
/// `expires_at` T + 5 min; its code is accepted at T + 5 min − 1 s, and another pairing's,
/// started at the same T, is refused at T + 5 min + 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs libfaketime; .ci/run installs it and runs ignored tests"]
async fn a_code_is_accepted_a_second_before_it_expires_and_refused_after() -> anyhow::Result<()> {
    phr_e2e::init_tracing();
    let bin = binary("phr-gateway", "phr-gateway")?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("gateway");
    std::fs::create_dir_all(&data)?;
    let prefix = test_prefix();
    let t0 = Utc::now().duration_trunc(TimeDelta::seconds(1))?;
    let clock = FakeClock::new(&dir.path().join("clock"), t0)?;

    // Two bands at one simulated bridge, enrolled as an operator would. (Its broker, the
    // gateway's embedded one, is known once the gateway has started.)
    let placeholder = phr_bridge::mqtt::MqttUrl::new("127.0.0.1", 0);
    let mut cfg = SimulateConfig::new(BRIDGE, 2, dir.path().join("bridge"), placeholder);
    cfg.topic_prefix = prefix.clone();
    cfg.history = TimeDelta::minutes(30);
    cfg.tick = Duration::from_millis(500);
    {
        let store = phr_gateway::Store::open(&data.join("phr.sqlite"))?;
        enrol_sim(&store, gateway_channel_key(&data)?, &mut cfg)?;
    }
    let bands: Vec<String> = cfg.bands().into_iter().map(|b| b.device_id).collect();
    let gateway = spawn_gateway_env(
        &bin,
        &data,
        any_port(),
        any_port(),
        None,
        &prefix,
        &clock.env(),
    )
    .await?;
    cfg.mqtt = gateway.broker.clone();
    let base = gateway.base();
    wait_for("the gateway's API", Duration::from_secs(20), || {
        ureq::get(&format!("{base}/healthz")).call().ok()
    })
    .await?;
    // A token of the gateway's own key, issued at the gateway's time.
    let keys = phr_gateway::auth::Keys::load_or_create(&data.join("keys"), &base, "phr-api")?;
    let ana = keys.issue("ana", phr_e2e::OWNER_SCOPE, TimeDelta::hours(1), t0)?;
    let (tx, status) = watch::channel(Status::default());
    let bridge = CancellationToken::new();
    tokio::spawn(simulate::run(cfg, tx, bridge.clone()));
    let mut s = status.clone();
    tokio::time::timeout(Duration::from_secs(20), s.wait_for(|s| s.connected)).await??;

    // Both pairings start at T: the gateway's clock stands still there.
    let mut started = Vec::new();
    for band in &bands {
        let (s, body) = call(
            "POST",
            &format!("{base}/api/v1/me/devices/pairings"),
            Some(&ana),
            Some(json!({"bridge_id": BRIDGE, "device_id": band})),
        )?;
        assert_eq!(s, 201, "{body}");
        let expires: chrono::DateTime<Utc> =
            body["pairing"]["expires_at"].as_str().unwrap().parse()?;
        assert_eq!(expires, t0 + TTL, "{body}");
        let id = body["pairing"]["pairing_id"].as_str().unwrap().to_owned();
        let shown = id.clone();
        let code = wait_for(
            "the bridge to show the code",
            Duration::from_secs(20),
            || {
                status
                    .borrow()
                    .pairing_codes
                    .iter()
                    .find(|c| c.pairing_id.to_string() == shown)
                    .map(|c| c.code.clone())
            },
        )
        .await?;
        let url = format!("{base}/api/v1/me/devices/pairings/{id}");
        wait_for("the bridge's report", Duration::from_secs(20), || {
            call("GET", &url, Some(&ana), None)
                .ok()
                .filter(|(_, b)| b["pairing"]["reported_serial"].is_string())
        })
        .await?;
        started.push((url, code));
    }
    let confirm = |(url, code): &(String, String)| {
        call(
            "POST",
            &format!("{url}/confirm"),
            Some(&ana),
            Some(json!({"code": code})),
        )
    };

    // T + TTL − 1 s: the first code still works; the band is Ana's from that moment.
    let last_second = t0 + TTL - TimeDelta::seconds(1);
    clock.set(last_second)?;
    let (s, body) = confirm(&started[0])?;
    assert_eq!(s, 200, "a second before expiry: {body}");
    let (s, body) = call(
        "GET",
        &format!("{base}/api/v1/me/devices"),
        Some(&ana),
        None,
    )?;
    assert_eq!(s, 200, "{body}");
    let devices = body["devices"].as_array().cloned().unwrap_or_default();
    assert_eq!(devices.len(), 1, "{body}");
    assert_eq!(devices[0]["device_id"], bands[0].as_str());
    let from: chrono::DateTime<Utc> = devices[0]["valid_from"].as_str().unwrap().parse()?;
    assert_eq!(from, last_second);

    // T + TTL + 1 s: the second code, right as it was shown, is refused for good.
    clock.set(t0 + TTL + TimeDelta::seconds(1))?;
    let (s, body) = confirm(&started[1])?;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("pairing_expired")),
        "{body}"
    );
    let (s, body) = confirm(&started[1])?;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("pairing_used")),
        "{body}"
    );
    bridge.cancel();
    Ok(())
}
