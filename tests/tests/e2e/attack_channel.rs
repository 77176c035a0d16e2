//! Attacks on the bridge–gateway channel and on pairing, as an outsider on the broker and as
//! an account holder would try them (issue 12, items 2 and 3). Each passes only because of
//! the channel (sealed payloads, codes from the channel key) or the pairing rules (nobody
//! else's open binding, limits, back-off); each asserts the genuine path too, so it can fail.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use ed25519_dalek::SigningKey;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use phr_bridge::identity::BridgeKey;
use phr_bridge::outbox::Outbox;
use phr_bridge::publish::Status;
use phr_bridge::simulate::{self, SimulateConfig};
use phr_e2e::{call, wait_for, TestGateway};
use phr_gateway::store::pairing::{Refusal, StartRefusal};
use phr_schema::channel::ChannelKey;
use phr_schema::{Ack, PairingReport, PairingRequest, Topics};

// The pairing limits as specified (README, "pair a device"), not read from the code under
// test: 5 wrong codes per pairing; at most 5 pairings per account and per device and 20 per
// bridge in 15 minutes.
const MAX_ATTEMPTS: i64 = 5;
const PER_PERSON: i64 = 5;
const PER_DEVICE: i64 = 5;
const PER_BRIDGE: i64 = 20;
const WINDOW: TimeDelta = TimeDelta::minutes(15);

/// A bare broker (no gateway behind it, no access control), so nothing but the test answers
/// a bridge. A port taken before rumqttd binds it is retried.
fn bare_broker() -> anyhow::Result<phr_bridge::mqtt::MqttUrl> {
    let addr = phr_gateway::broker::start_on_free_port(None, None)?;
    Ok(phr_bridge::mqtt::MqttUrl::new("127.0.0.1", addr.port()))
}

/// A plain MQTT client publishing as anyone (what an outsider on the broker can do).
async fn outsider(url: &phr_bridge::mqtt::MqttUrl) -> anyhow::Result<AsyncClient> {
    let id = format!(
        "outsider-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let (client, mut eventloop) = AsyncClient::new(url.options(&id), 64);
    let (tx, mut connected) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = tx.send(());
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), connected.recv()).await?;
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_ack_deletes_nothing_from_a_bridges_outbox() -> anyhow::Result<()> {
    phr_e2e::init_tracing();
    let url = bare_broker()?;
    let dir = tempfile::tempdir()?;
    let gateway = SigningKey::from_bytes(&[42; 32]);
    let topics = Topics::new(&phr_e2e::test_prefix());
    let mut cfg = SimulateConfig::new("br-victim", 1, dir.path().join("bridge"), url.clone());
    cfg.topic_prefix = topics.prefix().to_owned();
    cfg.history = TimeDelta::hours(3);
    cfg.tick = Duration::from_millis(200);
    cfg.batch_records = 5;
    cfg.until = Some(Utc::now());
    cfg.gateway_key = Some(gateway.verifying_key());
    let (tx, status) = watch::channel(Status::default());
    let stop = CancellationToken::new();
    tokio::spawn(simulate::run(cfg, tx, stop.clone()));
    let mut s = status.clone();
    tokio::time::timeout(
        Duration::from_secs(20),
        s.wait_for(|s| s.connected && s.outbox_batches >= 2),
    )
    .await??;
    let outbox = Outbox::open(&dir.path().join("bridge/outbox.sqlite"), usize::MAX)?;
    let held = outbox.pending(usize::MAX)?;
    assert!(held.len() >= 2, "{} batches", held.len());
    let depth = held.len();

    // An outsider acks every batch: in clear, and sealed with a key of its own.
    let ack = |id| Ack {
        batch_id: Some(id),
        stored: 60,
        ..Ack::default()
    };
    let topic = topics.acks("br-victim");
    let attacker = outsider(&url).await?;
    let bridge_key = BridgeKey::load_or_create(&dir.path().join("bridge"))?;
    let bridge_public = phr_schema::channel::key_from_hex(&bridge_key.public_hex()).unwrap();
    let wrong = ChannelKey::for_gateway(&SigningKey::from_bytes(&[7; 32]), &bridge_public)?;
    for p in &held {
        let body = serde_json::to_vec(&ack(p.batch_id))?;
        attacker
            .publish(&topic, QoS::AtLeastOnce, false, body.clone())
            .await?;
        attacker
            .publish(
                &topic,
                QoS::AtLeastOnce,
                false,
                wrong.seal(&topic, &body, [1; 24]),
            )
            .await?;
    }
    // The gateway's genuine ack of the first batch, sent after the forgeries on the same
    // connection: once it has taken effect, so would have the forgeries.
    let genuine = ChannelKey::for_gateway(&gateway, &bridge_public)?;
    let body = serde_json::to_vec(&ack(held[0].batch_id))?;
    attacker
        .publish(
            &topic,
            QoS::AtLeastOnce,
            false,
            genuine.seal(&topic, &body, [2; 24]),
        )
        .await?;
    let mut s = status.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        s.wait_for(|s| s.batches_acked == 1),
    )
    .await??;
    let left: Vec<_> = outbox
        .pending(usize::MAX)?
        .into_iter()
        .map(|p| p.batch_id)
        .collect();
    assert_eq!(
        left.len(),
        depth - 1,
        "only the genuine ack removed a batch"
    );
    assert!(!left.contains(&held[0].batch_id));
    assert!(held[1..].iter().all(|p| left.contains(&p.batch_id)));
    stop.cancel();
    Ok(())
}

/// Subscribes as `bridge` (proving `key`) to `topic`, forwarding payloads.
async fn listen_as(
    gw: &TestGateway,
    bridge: &str,
    key: &BridgeKey,
    topic: String,
) -> anyhow::Result<mpsc::UnboundedReceiver<Vec<u8>>> {
    let id = format!("listen-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut options = gw.gateway.mqtt.options(&id);
    options.set_credentials(bridge, key.connect_password(bridge, &id));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p.payload.to_vec());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready.recv()).await?;
    Ok(rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_codes_never_cross_the_broker_and_only_the_bridges_own_report_counts(
) -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let (bridge, band) = ("br-pair", "band-pair");
    let raw = gw.raw_bridge(bridge).await?;
    let channel = raw.key.channel(&gw.gateway.channels.public_key())?;
    let mut requests =
        listen_as(&gw, bridge, &raw.key, gw.topics().pairing_requests(bridge)).await?;

    let (s, body) = call(
        "POST",
        &gw.url("/api/v1/me/devices/pairings"),
        Some(&gw.owner_token("ana")),
        Some(json!({"bridge_id": bridge, "device_id": band})),
    )?;
    assert_eq!(s, 201, "{body}");
    let id: uuid::Uuid = body["pairing"]["pairing_id"].as_str().unwrap().parse()?;
    let code = channel.pairing_code(&id, band);

    // What crosses the broker: no JSON, no code; it opens only with the bridge's channel.
    let wire = tokio::time::timeout(Duration::from_secs(10), requests.recv())
        .await?
        .unwrap();
    assert!(serde_json::from_slice::<serde_json::Value>(&wire).is_err());
    assert!(!wire.windows(6).any(|w| w == code.as_bytes()));
    let topic = gw.topics().pairing_requests(bridge);
    let request: PairingRequest = serde_json::from_slice(&channel.open(&topic, &wire)?)?;
    assert_eq!((request.pairing_id, request.device_id.as_str()), (id, band));

    // Reports racing the bridge's own: in clear, and sealed by another key. Then the real one.
    let reports = gw.topics().pairing_reports(bridge);
    let report = |serial: &str| {
        serde_json::to_vec(&PairingReport {
            pairing_id: id,
            device_id: band.into(),
            address: Some("02:00:00:00:00:01".into()),
            serial_number: Some(serial.into()),
        })
    };
    raw.publish_to(reports.clone(), report("FORGED-CLEAR")?)
        .await?;
    let impostor = BridgeKey::generate().channel(&gw.gateway.channels.public_key())?;
    raw.publish_to(
        reports.clone(),
        impostor.seal(&reports, &report("FORGED-SEALED")?, [3; 24]),
    )
    .await?;
    raw.publish_to(
        reports.clone(),
        channel.seal(&reports, &report("REAL-1")?, [4; 24]),
    )
    .await?;
    let url = gw.url(&format!("/api/v1/me/devices/pairings/{id}"));
    let token = gw.owner_token("ana");
    let shown = wait_for("the bridge's report", Duration::from_secs(10), || {
        call("GET", &url, Some(&token), None)
            .ok()
            .and_then(|(_, b)| b["pairing"]["reported_serial"].as_str().map(str::to_owned))
    })
    .await?;
    assert_eq!(
        shown, "REAL-1",
        "the first report that opened with the bridge's key"
    );

    // A code computed from any other key does not match; the bridge's does.
    let confirm = |code: &str| {
        call(
            "POST",
            &gw.url(&format!("/api/v1/me/devices/pairings/{id}/confirm")),
            Some(&gw.owner_token("ana")),
            Some(json!({"code": code})),
        )
    };
    let other = impostor.pairing_code(&id, band);
    if other != code {
        let (s, b) = confirm(&other)?;
        assert_eq!((s, b["error"]["code"].as_str()), (400, Some("wrong_code")));
    }
    let (s, b) = confirm(&code)?;
    assert_eq!(s, 200, "{b}");
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_pairs_a_band_someone_else_holds_and_the_owner_is_told() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let (bridge, band) = ("br-ana", "band-ana");
    gw.enrol(
        "ana",
        bridge,
        &[band.to_owned()],
        Utc::now() - TimeDelta::days(1),
    )?;
    let _raw = gw.raw_bridge(bridge).await?;
    let start = |who: &str, bridge: &str, device: &str| {
        call(
            "POST",
            &gw.url("/api/v1/me/devices/pairings"),
            Some(&gw.owner_token(who)),
            Some(json!({"bridge_id": bridge, "device_id": device})),
        )
    };
    let log = |who: &str| -> anyhow::Result<Vec<serde_json::Value>> {
        let (_, b) = call(
            "GET",
            &gw.url("/api/v1/me/disclosures"),
            Some(&gw.owner_token(who)),
            None,
        )?;
        Ok(b["disclosures"].as_array().cloned().unwrap_or_default())
    };
    let before = log("ana")?.len();
    let (s, b) = start("mallory", bridge, band)?;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("device_bound_to_another"))
    );
    let ana = log("ana")?;
    assert_eq!(ana.len(), before + 1);
    let told = ana.last().unwrap();
    assert_eq!(
        (
            told["actor"].as_str(),
            told["outcome"].as_str(),
            told["action"].as_str()
        ),
        (Some("mallory"), Some("denied"), Some("pairing"))
    );
    assert!(log("mallory")?
        .iter()
        .any(|e| e["outcome"] == "denied" && e["action"] == "pairing"));
    // Trying again and again: refused, and past the device's limit the owner's log stops
    // growing (the limit bounds the noise an attacker can make there).
    for _ in 0..(PER_DEVICE + 3) {
        let (s, _) = start("mallory", bridge, band)?;
        assert!(s == 409 || s == 429, "{s}");
    }
    assert!(log("ana")?.len() <= before + PER_DEVICE as usize);
    // Nor can another account end her binding to make room: only the holder releases.
    let release = |who: &str| {
        call(
            "DELETE",
            &gw.url(&format!("/api/v1/me/devices/{band}/binding")),
            Some(&gw.owner_token(who)),
            None,
        )
    };
    let (s, _) = release("mallory")?;
    assert_eq!(s, 404, "mallory holds no binding of it");
    let (_, devices) = call(
        "GET",
        &gw.url("/api/v1/me/devices"),
        Some(&gw.owner_token("ana")),
        None,
    )?;
    assert!(devices["devices"][0]["valid_to"].is_null(), "still ana's");
    // Her own release ends it once; a repeat finds nothing to end.
    let (s, _) = release("ana")?;
    assert_eq!(s, 200);
    let (s, _) = release("ana")?;
    assert_eq!(s, 404);

    // A bridge nobody enrolled has no channel: nothing to pair through.
    let (s, b) = start("ben", "br-nobody", "band-x")?;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("bridge_not_enrolled"))
    );
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_starts_are_limited_and_guessing_backs_off() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let store = &gw.gateway.store;
    for b in ["br-l1", "br-l2"] {
        store.register_bridge_key(b, &BridgeKey::generate().public_hex())?;
    }
    let t0 = Utc::now();
    let start = |who: &str, bridge: &str, device: &str, at| {
        store.start_pairing(who, bridge, device, uuid::Uuid::new_v4(), "123456", at)
    };
    let too_many = |r: Result<_, StartRefusal>| match r {
        Err(StartRefusal::TooMany { retry_after_secs }) => Some(retry_after_secs),
        _ => None,
    };
    // Per account: PER_PERSON starts in the window, whatever the devices.
    for i in 0..PER_PERSON {
        assert!(start("mallory", "br-l1", &format!("d-{i}"), t0)?.is_ok());
    }
    let wait = too_many(start("mallory", "br-l1", "d-x", t0)?).expect("limited");
    assert!(wait > 0 && wait <= WINDOW.num_seconds() as u64, "{wait}");
    assert!(start(
        "mallory",
        "br-l1",
        "d-x",
        t0 + WINDOW + TimeDelta::seconds(1)
    )?
    .is_ok());

    // Per device: PER_DEVICE starts by anyone.
    for i in 0..PER_DEVICE {
        assert!(start(&format!("p-{i}"), "br-l2", "d-shared", t0)?.is_ok());
    }
    assert!(too_many(start("p-late", "br-l2", "d-shared", t0)?).is_some());

    // Per bridge: PER_BRIDGE starts through it (br-l2 has PER_DEVICE already).
    for i in PER_DEVICE..PER_BRIDGE {
        assert!(start(&format!("q-{i}"), "br-l2", &format!("e-{i}"), t0)?.is_ok());
    }
    assert!(too_many(start("q-late", "br-l2", "e-late", t0)?).is_some());

    // Guessing: a pairing that runs out of tries makes the next start of that device wait
    // 2 minutes, then 4, ... (the back-off doubles per exhausted pairing in 24 h).
    let t1 = t0 + TimeDelta::hours(1);
    let mut at = t1;
    for round in 1..=2u32 {
        let p = start("guesser", "br-l1", "d-guess", at)?.expect("started");
        for _ in 0..MAX_ATTEMPTS {
            assert_eq!(
                store.confirm_pairing("guesser", p.pairing_id, "000000", None, at)?,
                Err(Refusal::WrongCode)
            );
        }
        let backoff = TimeDelta::minutes(1 << round);
        assert!(too_many(start(
            "someone",
            "br-l1",
            "d-guess",
            at + backoff - TimeDelta::seconds(1)
        )?)
        .is_some());
        at += backoff + TimeDelta::seconds(1);
        assert!(
            start("someone", "br-l1", "d-guess", at)?.is_ok(),
            "round {round}"
        );
    }
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_nobody_enrolled_cannot_connect_to_the_embedded_broker() -> anyhow::Result<()> {
    if phr_e2e::external_broker().is_some() {
        return Ok(()); // the external broker's own rules apply there (docs/mosquitto)
    }
    let gw = TestGateway::start().await?;
    let key = BridgeKey::generate();
    let connect = gw.raw_bridge_with("br-unenrolled", BridgeKey::from_seed(&[9; 32]));
    assert!(
        tokio::time::timeout(Duration::from_secs(20), connect)
            .await
            .map_or(true, |r| r.is_err()),
        "an unenrolled bridge got a session"
    );
    // Once enrolled, its key gets in.
    gw.gateway
        .store
        .register_bridge_key("br-unenrolled", &key.public_hex())?;
    let raw = gw.raw_bridge_with("br-unenrolled", key).await;
    assert!(raw.is_ok(), "{raw:?}");
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_enrol_bridges_and_transfer_bands_and_nobody_else_can() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let admin =
        gw.gateway
            .keys
            .issue("operator-1", "phr:admin", TimeDelta::hours(1), Utc::now())?;
    let owner = gw.owner_token("mallory");
    let key = BridgeKey::generate();
    let enrol = |token: &str, key: &str| {
        call(
            "POST",
            &gw.url("/api/v1/admin/bridges"),
            Some(token),
            Some(json!({"bridge_id": "br-new", "public_key": key})),
        )
    };
    // An owner's token enrols nothing.
    let (s, _) = enrol(&owner, &key.public_hex())?;
    assert_eq!(s, 403);
    let (s, b) = enrol(&admin, "not-a-key")?;
    assert_eq!(s, 400, "{b}");
    let (s, b) = enrol(&admin, &key.public_hex())?;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["gateway_key"], gw.gateway.channels.public_hex());
    // Another key for the same bridge is refused: a bridge's identity does not change quietly.
    let (s, _) = enrol(&admin, &BridgeKey::generate().public_hex())?;
    assert_eq!(s, 409);
    assert!(gw.raw_bridge_with("br-new", key).await.is_ok());

    // A transfer: ana holds the band; an operator ends her binding; her log says so.
    gw.enrol(
        "ana",
        "br-new",
        &["band-t".into()],
        Utc::now() - TimeDelta::days(1),
    )?;
    let url = |reason: &str| {
        gw.url(&format!(
            "/api/v1/admin/devices/band-t/binding?reason={reason}"
        ))
    };
    let (s, _) = call("DELETE", &url("sold"), Some(&owner), None)?;
    assert_eq!(s, 403, "only operators");
    let (s, b) = call("DELETE", &url("sold"), Some(&admin), None)?;
    assert_eq!((s, b["former_owner"].as_str()), (200, Some("ana")), "{b}");
    let (s, _) = call("DELETE", &url("again"), Some(&admin), None)?;
    assert_eq!(s, 404, "nobody holds it any more");
    let (_, log) = call(
        "GET",
        &gw.url("/api/v1/me/disclosures"),
        Some(&gw.owner_token("ana")),
        None,
    )?;
    assert!(log["disclosures"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["actor"] == "operator-1" && e["purpose"].as_str().unwrap().contains("sold")));
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_bridge_is_heard_no_more() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let admin =
        gw.gateway
            .keys
            .issue("operator-1", "phr:admin", TimeDelta::hours(1), Utc::now())?;
    gw.enrol(
        "ana",
        "br-lost",
        &["band-l".into()],
        Utc::now() - TimeDelta::days(1),
    )?;
    let mut lost = gw.raw_bridge("br-lost").await?;
    let at = |m| {
        phr_e2e::minute_steps(
            "band-l",
            "br-lost",
            Utc::now() - TimeDelta::minutes(m),
            10 + m,
        )
    };
    let ack = phr_e2e::send(&mut lost, "band-l", vec![at(3)]).await?;
    assert_eq!(ack.stored, 1);

    let url = gw.url("/api/v1/admin/bridges/br-lost");
    let (s, _) = call("DELETE", &url, Some(&gw.owner_token("ana")), None)?;
    assert_eq!(s, 403, "owners revoke nothing");
    let (s, b) = call("DELETE", &url, Some(&admin), None)?;
    assert_eq!((s, b["revoked"].as_bool()), (200, Some(true)), "{b}");
    let (s, _) = call("DELETE", &url, Some(&admin), None)?;
    assert_eq!(s, 404, "revoked already");

    // Its open session still delivers bytes, but nothing it seals is read any more.
    let batch = phr_schema::Batch::new("br-lost", "band-l", uuid::Uuid::new_v4(), vec![at(2)]);
    lost.publish("band-l", serde_json::to_vec(&batch)?).await?;
    wait_for("the batch refused unread", Duration::from_secs(10), || {
        phr_e2e::metric(&gw.url(""), "phr_batches_refused_unread_total")
            .ok()
            .filter(|n| *n >= 1.0)
    })
    .await?;
    assert_eq!(phr_e2e::step_counts(&gw, "ana")?, vec![13]);
    // A new connection with its key is refused (embedded broker).
    if phr_e2e::external_broker().is_none() {
        let again = BridgeKey::from_seed(&{
            use sha2::Digest;
            sha2::Sha256::digest(format!("{}\nbr-lost", gw.dir.path().display())).into()
        });
        let connect = gw.raw_bridge_with("br-lost", again);
        assert!(
            tokio::time::timeout(Duration::from_secs(20), connect)
                .await
                .map_or(true, |r| r.is_err()),
            "a revoked bridge got a session"
        );
    }
    gw.stop().await;
    Ok(())
}
