//! Attacks on the broker, as an intruder with network access to it would try them: connect
//! without credentials, read other bridges' batches, pairing codes and acks through wildcard
//! subscriptions, forge acks, publish records or pairing reports on another bridge's topics.
//!
//! Against the embedded broker (the gateway in-process, and once the real `phr-gateway serve`
//! binary) and against a private Mosquitto configured with the shipped `docs/mosquitto/`
//! files (ignored by default: CI's `--ignored` step runs them).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{TimeDelta, Utc};
use rumqttc::{AsyncClient, Event, LastWill, Packet, QoS, SubscribeReasonCode};
use tokio::sync::mpsc;
use uuid::Uuid;

use phr_bridge::identity::BridgeKey;
use phr_bridge::mqtt::{MqttPassword, MqttUrl};
use phr_e2e::{
    any_port, binary, loopback, minute_steps, send, spawn_gateway, spawn_mosquitto_with,
    test_prefix, wait_for, RawBridge, TestGateway,
};
use phr_schema::channel::ChannelKey;
use phr_schema::{Batch, Topics};

const VICTIM: &str = "br-victim";
const BAND: &str = "band-victim";
const EVIL: &str = "br-evil";

/// What an intruder's connection saw, in order.
#[derive(Debug)]
enum Seen {
    SubAck(Vec<SubscribeReasonCode>),
    Message(String),
    Closed,
}

/// A raw MQTT client that never reconnects: it reports what it receives and when its
/// connection ends.
struct Intruder {
    client: AsyncClient,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Intruder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a connection attempt ended: admitted, or refused (with the broker's reason).
async fn intrude(
    broker: &MqttUrl,
    login: Option<(&str, &str)>,
    client_id: &str,
    will: Option<LastWill>,
) -> anyhow::Result<Result<Intruder, String>> {
    let mut options = broker.options(client_id);
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    if let Some(w) = will {
        options.set_last_will(w);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (tx, seen) = mpsc::unbounded_channel();
    let (conn_tx, mut conn_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let task = tokio::spawn(async move {
        let mut connected = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    let _ = conn_tx.send(Ok(()));
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    let _ = tx.send(Seen::SubAck(s.return_codes));
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Seen::Message(p.topic));
                }
                Ok(_) => {}
                Err(e) => {
                    if connected {
                        let _ = tx.send(Seen::Closed);
                    } else {
                        let _ = conn_tx.send(Err(e.to_string()));
                    }
                    return;
                }
            }
        }
    });
    let answer = tokio::time::timeout(Duration::from_secs(15), conn_rx.recv())
        .await
        .context("no answer to CONNECT")?
        .context("connection task ended")?;
    Ok(answer.map(|()| Intruder { client, seen, task }))
}

impl Intruder {
    async fn next(&mut self) -> anyhow::Result<Seen> {
        tokio::time::timeout(Duration::from_secs(15), self.seen.recv())
            .await
            .context("timed out waiting for the broker")?
            .context("connection task ended")
    }

    /// Subscribes to `filter` and returns the broker's answer (`None`: the connection closed).
    async fn subscribe(&mut self, filter: &str) -> anyhow::Result<Option<SubscribeReasonCode>> {
        self.client.subscribe(filter, QoS::AtLeastOnce).await?;
        match self.next().await? {
            Seen::SubAck(codes) if codes.len() == 1 => Ok(Some(codes[0])),
            Seen::SubAck(codes) => bail!("one filter, {} return codes", codes.len()),
            Seen::Closed => Ok(None),
            Seen::Message(topic) => bail!("received {topic} while subscribing to {filter}"),
        }
    }

    /// Subscribes to `filters` in one SUBSCRIBE and returns the broker's return codes.
    async fn subscribe_many(
        &mut self,
        filters: &[String],
    ) -> anyhow::Result<Vec<SubscribeReasonCode>> {
        self.client
            .subscribe_many(
                filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
            )
            .await?;
        match self.next().await? {
            Seen::SubAck(codes) => Ok(codes),
            other => bail!("{other:?} instead of a SUBACK"),
        }
    }

    /// Publishes on `topic` and waits for the connection to be closed by the broker.
    async fn publish_and_expect_close(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
    ) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await?;
        loop {
            match self.next().await {
                Ok(Seen::Closed) => return Ok(()),
                Ok(Seen::Message(t)) => bail!("received {t} after publishing on {topic}"),
                Ok(Seen::SubAck(_)) => {}
                Err(e) => {
                    return Err(e.context(format!(
                        "publishing on {topic} did not close the connection"
                    )))
                }
            }
        }
    }

    /// Publishes a batch of `bridge` (sealed with its `channel`) on its own records topic and
    /// returns every topic it received until its own ack came: a barrier after which
    /// anything another bridge's traffic could have sent it has been sent.
    async fn round_trip(
        &mut self,
        topics: &Topics,
        bridge: &str,
        device: &str,
        channel: &ChannelKey,
    ) -> anyhow::Result<Vec<String>> {
        let batch = Batch::new(
            bridge,
            device,
            Uuid::new_v4(),
            vec![minute_steps(device, bridge, ago(30), 5)],
        );
        let topic = topics.records(bridge, device);
        let sealed = channel.seal(&topic, &serde_json::to_vec(&batch)?, rand::random());
        self.client
            .publish(topic, QoS::AtLeastOnce, false, sealed)
            .await?;
        let own_acks = topics.acks(bridge);
        let mut seen = Vec::new();
        loop {
            match self.next().await? {
                Seen::Message(t) if t == own_acks => return Ok(seen),
                Seen::Message(t) => seen.push(t),
                Seen::SubAck(_) => {}
                Seen::Closed => bail!("the broker closed a bridge's connection on its own topic"),
            }
        }
    }
}

/// A labelled sample from `/metrics`, e.g. `phr_mqtt_refused_total{what="connect"}`; 0 if
/// the gateway does not expose it.
fn labelled_metric(base: &str, sample: &str) -> anyhow::Result<f64> {
    let text = ureq::get(&format!("{base}/metrics"))
        .call()?
        .into_string()?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
        .map(|v| v.trim().parse::<f64>())
        .transpose()?
        .unwrap_or(0.0))
}

/// `minutes` minutes ago (a measured time the gateway accepts).
fn ago(minutes: i64) -> chrono::DateTime<Utc> {
    Utc::now() - TimeDelta::minutes(minutes)
}

fn client_id(tag: &str) -> String {
    format!("{tag}-{}", &Uuid::new_v4().simple().to_string()[..8])
}

/// A gateway with two registered bridges: the victim (one band, bound to `vic` with storage
/// consent) and the attacker's own, legitimately enrolled one.
async fn two_bridges() -> anyhow::Result<(TestGateway, BridgeKey, BridgeKey)> {
    let gw = TestGateway::start_with(None).await?;
    let victim = BridgeKey::load_or_create(&gw.dir.path().join("victim"))?;
    let evil = BridgeKey::load_or_create(&gw.dir.path().join("evil"))?;
    gw.gateway
        .store
        .register_bridge_key(VICTIM, &victim.public_hex())?;
    gw.gateway
        .store
        .register_bridge_key(EVIL, &evil.public_hex())?;
    gw.enrol(
        "vic",
        VICTIM,
        &[BAND.to_owned()],
        Utc::now() - TimeDelta::days(1),
    )?;
    Ok((gw, victim, evil))
}

/// The filters an intruder tries: everything, the prefix, every bridge's acks, pairing
/// requests, records and nearby reports, and the victim's own topics.
fn snooping_filters(t: &Topics) -> Vec<String> {
    let p = t.prefix();
    vec![
        "#".into(),
        "+/#".into(),
        "$SYS/#".into(),
        format!("{p}/#"),
        format!("{p}/bridges/+/acks"),
        format!("{p}/bridges/+/pairing/requests"),
        format!("{p}/bridges/+/devices/+/records"),
        format!("{p}/bridges/+/nearby"),
        t.acks(VICTIM),
        t.pairing_requests(VICTIM),
        t.records(VICTIM, BAND),
        t.pairing_reports(VICTIM),
        t.nearby(VICTIM),
        format!("{}/#", t.acks(EVIL)),
        format!("{p}/bridges/{EVIL}/+"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_unproven_bridges_are_refused_at_connect() -> anyhow::Result<()> {
    let (gw, victim, _evil) = two_bridges().await?;
    let mqtt = gw.gateway.mqtt.clone();
    let cid = client_id("x");
    let replayed = victim.connect_password(VICTIM, "another-client-id");
    type Attempt<'a> = (&'a str, Option<(&'a str, &'a str)>, &'a str);
    let attempts: Vec<Attempt> = vec![
        ("anonymous", None, &cid),
        (
            "a user name that is no bridge id",
            Some(("intruder/#", "secret")),
            &cid,
        ),
        (
            "the gateway's user name, guessed",
            Some(("phr-gateway", "guess")),
            &cid,
        ),
        ("a registered bridge, no proof", Some((VICTIM, "")), &cid),
        ("a registered bridge, garbage", Some((VICTIM, "ab12")), &cid),
        (
            "a registered bridge, a proof made for another client id",
            Some((VICTIM, &replayed)),
            &cid,
        ),
        // rumqttd 0.20 refuses such ids after registering a last-will slot for them, and
        // panics (poisoning its lock: nobody connects any more) when the id comes again.
        (
            "a client id rumqttd cannot take",
            Some(("br-new", "x")),
            "a/b",
        ),
        ("the same client id again", Some(("br-new", "x")), "a/b"),
    ];
    for (what, login, id) in &attempts {
        assert!(
            intrude(&mqtt, *login, id, None).await?.is_err(),
            "{what}: admitted"
        );
    }
    // The same registered bridge with its proof for this client id is admitted, so the
    // refusals above are about the credentials, not a broken broker (and the broker is
    // still up).
    let proof = victim.connect_password(VICTIM, &cid);
    assert!(intrude(&mqtt, Some((VICTIM, &proof)), &cid, None)
        .await?
        .is_ok());
    let refused = labelled_metric(&gw.url(""), "phr_mqtt_refused_total{what=\"connect\"}")?;
    assert_eq!(refused, attempts.len() as f64, "every refusal is counted");
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_reads_nothing_of_another_bridges_traffic() -> anyhow::Result<()> {
    let (gw, victim_key, evil_key) = two_bridges().await?;
    let t = gw.topics();
    let mqtt = gw.gateway.mqtt.clone();
    let mut victim = gw.raw_bridge_with(VICTIM, victim_key.copy()).await?;

    // The attacker's own, enrolled bridge; and a made-up user with a made-up password (a
    // bridge id nobody registered: refused outright now that enrolment is required; were it
    // admitted, it would be a bridge like any other and get no more than its own topics).
    let evil_id = client_id("evil");
    let evil_proof = evil_key.connect_password(EVIL, &evil_id);
    let evil_channel = evil_key.channel(&gw.gateway.channels.public_key())?;
    let mut snoopers = Vec::new();
    for (user, password, cid) in [
        (EVIL, evil_proof.as_str(), evil_id.as_str()),
        ("made-up-user", "made-up-password", "made-up"),
    ] {
        let Ok(mut s) = intrude(&mqtt, Some((user, password)), cid, None).await? else {
            continue; // refused outright: nothing to read
        };
        for filter in snooping_filters(&t) {
            let answer = s.subscribe(&filter).await?;
            assert_eq!(
                answer,
                Some(SubscribeReasonCode::Failure),
                "{user} subscribing to {filter}"
            );
        }
        // One SUBSCRIBE mixing its own topics with others': only the others are refused.
        let granted = SubscribeReasonCode::Success(QoS::AtLeastOnce);
        assert_eq!(
            s.subscribe_many(&[
                t.acks(user),
                "#".into(),
                t.pairing_requests(user),
                t.acks(VICTIM)
            ])
            .await?,
            vec![
                granted,
                SubscribeReasonCode::Failure,
                granted,
                SubscribeReasonCode::Failure
            ],
            "{user} may read its own acks and pairing requests"
        );
        snoopers.push((user, s));
    }
    assert!(!snoopers.is_empty(), "the enrolled attacker is admitted");

    let refused_subs = labelled_metric(&gw.url(""), "phr_mqtt_refused_total{what=\"subscribe\"}")?;
    assert_eq!(
        refused_subs,
        ((snooping_filters(&t).len() + 2) * snoopers.len()) as f64
    );

    // One fixed start: rounds a minute apart must not land on the same minute when the
    // clock crosses a minute between them.
    let start = ago(60);
    for round in 0..3 {
        // The victim's traffic: a batch (health data), its ack, a nearby report (which bands
        // are near it), and a pairing request with a one-time code from the gateway.
        let ack = send(
            &mut victim,
            BAND,
            vec![minute_steps(
                BAND,
                VICTIM,
                start - TimeDelta::minutes(round),
                100,
            )],
        )
        .await?;
        assert_eq!(ack.stored, 1, "{ack:?}");
        let nearby = phr_schema::NearbyReport::new(
            Utc::now().fixed_offset(),
            phr_schema::NearbyDevice::new(BAND, Some("Victim's band"), Some(-50), "pams"),
        );
        let topic = t.nearby(VICTIM);
        victim
            .publish_to(
                topic.clone(),
                victim.seal(&topic, serde_json::to_vec(&nearby)?),
            )
            .await?;
        let request = serde_json::json!({
            "pairing_id": Uuid::new_v4(), "device_id": BAND, "code": "123456",
            "expires_at": Utc::now().to_rfc3339(),
        });
        gw.gateway
            .client
            .publish(
                t.pairing_requests(VICTIM),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&request)?,
            )
            .await?;
        for (user, s) in &mut snoopers {
            let seen = s
                .round_trip(&t, user, "band-of-my-own", &evil_channel)
                .await?;
            assert!(seen.is_empty(), "{user} read {seen:?}");
        }
    }
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_acks_and_publishes_on_foreign_topics_close_the_connection() -> anyhow::Result<()> {
    let (gw, victim_key, evil_key) = two_bridges().await?;
    let t = gw.topics();
    let mqtt = gw.gateway.mqtt.clone();
    let mut victim = gw.raw_bridge_with(VICTIM, victim_key.copy()).await?;
    let forged_batch = Uuid::new_v4();
    let forged_ack = serde_json::to_vec(&phr_schema::Ack {
        batch_id: Some(forged_batch),
        stored: 1,
        ..Default::default()
    })?;
    let foreign_batch = Batch::new(
        VICTIM,
        BAND,
        Uuid::new_v4(),
        vec![minute_steps(BAND, VICTIM, ago(50), 999)],
    );
    let report = serde_json::json!({
        "pairing_id": Uuid::new_v4(), "device_id": BAND, "serial_number": "EVIL",
    });
    let attacks: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "a forged ack to the victim",
            t.acks(VICTIM),
            forged_ack.clone(),
        ),
        (
            "records on the victim's topic",
            t.records(VICTIM, BAND),
            serde_json::to_vec(&foreign_batch)?,
        ),
        (
            "a pairing report as the victim",
            t.pairing_reports(VICTIM),
            serde_json::to_vec(&report)?,
        ),
        (
            "a nearby report as the victim",
            t.nearby(VICTIM),
            serde_json::to_vec(&phr_schema::NearbyReport::new(
                Utc::now().fixed_offset(),
                phr_schema::NearbyDevice::new("band-evil", Some("Pick me"), Some(-30), "pams"),
            ))?,
        ),
        (
            "a pairing request (only the gateway sends them)",
            t.pairing_requests(VICTIM),
            b"{}".to_vec(),
        ),
        (
            "an ack on its own topic (only the gateway acks)",
            t.acks(EVIL),
            forged_ack.clone(),
        ),
        (
            "outside the prefix",
            "$SYS/broker/x".to_owned(),
            b"x".to_vec(),
        ),
    ];
    for (what, topic, payload) in attacks.iter().cloned() {
        let cid = client_id("evil");
        let proof = evil_key.connect_password(EVIL, &cid);
        let Ok(mut evil) = intrude(&mqtt, Some((EVIL, &proof)), &cid, None).await? else {
            bail!("the enrolled attacker was refused at connect");
        };
        evil.publish_and_expect_close(&topic, payload)
            .await
            .with_context(|| what.to_owned())?;
    }
    let refused = labelled_metric(&gw.url(""), "phr_mqtt_refused_total{what=\"publish\"}")?;
    assert_eq!(refused, attacks.len() as f64);

    // A last will is a publish too: one on the victim's ack topic is refused at connect.
    let cid = client_id("evil");
    let proof = evil_key.connect_password(EVIL, &cid);
    let will = LastWill::new(t.acks(VICTIM), forged_ack, QoS::AtLeastOnce, false);
    assert!(
        intrude(&mqtt, Some((EVIL, &proof)), &cid, Some(will))
            .await?
            .is_err(),
        "a will on another bridge's topic"
    );

    // Nothing reached the victim or the store: its next ack is for its own next batch, and
    // the gateway received exactly that one batch.
    let ack = send(
        &mut victim,
        BAND,
        vec![minute_steps(BAND, VICTIM, ago(40), 7)],
    )
    .await?;
    assert_ne!(
        ack.batch_id,
        Some(forged_batch),
        "the forged ack reached the victim"
    );
    assert_eq!(ack.stored, 1, "{ack:?}");
    assert_eq!(
        phr_e2e::metric(&gw.url(""), "phr_batches_received_total")?,
        1.0
    );
    assert_eq!(phr_e2e::metric(&gw.url(""), "phr_series_records")?, 1.0);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_binary_enforces_the_same_rules() -> anyhow::Result<()> {
    phr_e2e::init_tracing();
    let bin = binary("phr-gateway", "phr-gateway")?;
    let dir = tempfile::tempdir()?;
    let prefix = test_prefix();
    // Both bridges enrolled in the binary's store before it starts, as an operator would.
    let data = dir.path().join("gw");
    std::fs::create_dir_all(&data)?;
    let (victim_key, evil_key) = (BridgeKey::generate(), BridgeKey::generate());
    {
        let store = phr_gateway::Store::open(&data.join("phr.sqlite"))?;
        store.register_bridge_key(VICTIM, &victim_key.public_hex())?;
        store.register_bridge_key(EVIL, &evil_key.public_hex())?;
    }
    let channel = victim_key.channel(&phr_e2e::gateway_channel_key(&data)?)?;
    let gateway = spawn_gateway(&bin, &data, any_port(), any_port(), None, &prefix).await?;
    let http = gateway.http;
    wait_for("the gateway's API", Duration::from_secs(30), || {
        ureq::get(&format!("http://{http}/healthz")).call().ok()
    })
    .await?;
    let mqtt = MqttUrl::new("127.0.0.1", gateway.mqtt.port());
    let t = Topics::new(&prefix);

    assert!(
        intrude(&mqtt, None, &client_id("anon"), None)
            .await?
            .is_err(),
        "anonymous"
    );
    assert!(
        intrude(&mqtt, Some((EVIL, "x")), &client_id("evil"), None)
            .await?
            .is_err(),
        "an enrolled bridge's id without its proof"
    );
    assert!(
        intrude(&mqtt, Some(("br-nobody", "x")), &client_id("nobody"), None)
            .await?
            .is_err(),
        "a bridge nobody enrolled"
    );
    let mut victim =
        RawBridge::connect_as(&mqtt, t.clone(), VICTIM, victim_key, Some(channel)).await?;
    let evil_id = client_id("evil");
    let evil_proof = evil_key.connect_password(EVIL, &evil_id);
    let Ok(mut evil) = intrude(&mqtt, Some((EVIL, &evil_proof)), &evil_id, None).await? else {
        bail!("the enrolled attacker was refused at connect");
    };
    for filter in [
        "#".to_owned(),
        format!("{prefix}/bridges/+/acks"),
        t.acks(VICTIM),
    ] {
        assert_eq!(
            evil.subscribe(&filter).await?,
            Some(SubscribeReasonCode::Failure),
            "{filter}"
        );
    }
    assert_eq!(
        evil.subscribe(&t.acks(EVIL)).await?,
        Some(SubscribeReasonCode::Success(QoS::AtLeastOnce))
    );
    let ack = phr_e2e::send(
        &mut victim,
        BAND,
        vec![minute_steps(BAND, VICTIM, ago(30), 1)],
    )
    .await?;
    assert_eq!(ack.quarantined, 1, "{ack:?}");
    let evil_channel = evil_key.channel(&phr_e2e::gateway_channel_key(&data)?)?;
    let seen = evil
        .round_trip(&t, EVIL, "band-of-my-own", &evil_channel)
        .await?;
    assert!(seen.is_empty(), "read {seen:?}");

    let forged = Uuid::new_v4();
    let forged_ack = serde_json::to_vec(&phr_schema::Ack {
        batch_id: Some(forged),
        ..Default::default()
    })?;
    evil.publish_and_expect_close(&t.acks(VICTIM), forged_ack)
        .await?;
    let ack = phr_e2e::send(
        &mut victim,
        BAND,
        vec![minute_steps(BAND, VICTIM, ago(20), 1)],
    )
    .await?;
    assert_ne!(
        ack.batch_id,
        Some(forged),
        "the forged ack reached the victim"
    );
    Ok(())
}

/// The shipped Mosquitto files, with the default prefix replaced by the test's and the file
/// paths pointing into `dir`; `users` are written to the password file with
/// `mosquitto_passwd`.
fn shipped_mosquitto_config(
    dir: &Path,
    prefix: &str,
    users: &[(&str, &str)],
) -> anyhow::Result<String> {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/mosquitto");
    let acl = std::fs::read_to_string(docs.join("acl"))?.replace("phr/v1/", &format!("{prefix}/"));
    let acl_path = dir.join("acl");
    std::fs::write(&acl_path, acl)?;
    let passwords = dir.join("passwords");
    std::fs::write(&passwords, "")?;
    for (user, password) in users {
        let status = std::process::Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(&passwords)
            .arg(user)
            .arg(password)
            .status()
            .context("mosquitto_passwd (package mosquitto)")?;
        anyhow::ensure!(status.success(), "mosquitto_passwd failed for {user}");
    }
    let conf = std::fs::read_to_string(docs.join("mosquitto.conf"))?
        .replace(
            "/etc/mosquitto/phr-passwords",
            &passwords.display().to_string(),
        )
        .replace("/etc/mosquitto/phr-acl", &acl_path.display().to_string());
    // The fragment's listener is the operator's; the test's own comes first.
    Ok(conf
        .lines()
        .filter(|l| !l.trim_start().starts_with("listener"))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a mosquitto binary; .ci/run installs it and runs ignored tests"]
async fn mosquitto_with_the_shipped_acl_holds_the_same_boundaries() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let prefix = test_prefix();
    let t = Topics::new(&prefix);
    let users = [
        ("phr-gateway", "gw-secret"),
        (VICTIM, "victim-pw"),
        (EVIL, "evil-pw"),
    ];
    let conf = shipped_mosquitto_config(dir.path(), &prefix, &users)?;
    let mosquitto = spawn_mosquitto_with(dir.path(), &conf)?;
    let url = mosquitto.url();

    // Strangers are refused.
    for (what, login) in [
        ("anonymous", None),
        ("made-up user", Some(("made-up-user", "made-up-password"))),
        ("a bridge with a wrong password", Some((VICTIM, "guess"))),
        (
            "the gateway with a wrong password",
            Some(("phr-gateway", "guess")),
        ),
    ] {
        assert!(
            intrude(&url, login, &client_id("x"), None).await?.is_err(),
            "{what}: admitted"
        );
    }

    // The gateway with its credentials, and the victim bridge with its password, work end
    // to end.
    let gw = TestGateway::start_configured(Some(url.clone()), |c| {
        c.mqtt.topic_prefix = prefix.clone();
        c.mqtt.password = Some(MqttPassword::new("gw-secret"));
    })
    .await?;
    gw.enrol(
        "vic",
        VICTIM,
        &[BAND.to_owned()],
        Utc::now() - TimeDelta::days(1),
    )?;
    // Both bridges enrolled at the gateway: the broker's ACL and the channel both hold.
    let (victim_key, evil_key) = (BridgeKey::generate(), BridgeKey::generate());
    gw.gateway
        .store
        .register_bridge_key(VICTIM, &victim_key.public_hex())?;
    gw.gateway
        .store
        .register_bridge_key(EVIL, &evil_key.public_hex())?;
    let victim_channel = victim_key.channel(&gw.gateway.channels.public_key())?;
    let evil_channel = evil_key.channel(&gw.gateway.channels.public_key())?;
    let mut victim = RawBridge::open(
        &url,
        t.clone(),
        VICTIM,
        &client_id("v"),
        "victim-pw",
        victim_key,
        Some(victim_channel),
    )
    .await?;

    // The attacker's bridge may read its own acks and nothing else.
    let Ok(mut evil) = intrude(&url, Some((EVIL, "evil-pw")), &client_id("evil"), None).await?
    else {
        bail!("the attacker's own bridge was refused");
    };
    for filter in snooping_filters(&t) {
        // Mosquitto may grant a subscription and then deliver nothing the ACL forbids.
        evil.subscribe(&filter)
            .await?
            .context("connection closed")?;
    }
    assert_eq!(
        evil.subscribe(&t.acks(EVIL)).await?,
        Some(SubscribeReasonCode::Success(QoS::AtLeastOnce))
    );
    // Forged traffic on the victim's topics: Mosquitto drops it silently.
    let forged = Uuid::new_v4();
    let forged_ack = serde_json::to_vec(&phr_schema::Ack {
        batch_id: Some(forged),
        ..Default::default()
    })?;
    for topic in [
        t.acks(VICTIM),
        t.records(VICTIM, BAND),
        t.pairing_requests(VICTIM),
        t.nearby(VICTIM),
    ] {
        evil.client
            .publish(topic, QoS::AtLeastOnce, false, forged_ack.clone())
            .await?;
    }
    // One fixed start: rounds a minute apart must not land on the same minute when the
    // clock crosses a minute between them.
    let start = ago(60);
    for round in 0..3 {
        let ack = phr_e2e::send(
            &mut victim,
            BAND,
            vec![minute_steps(
                BAND,
                VICTIM,
                start - TimeDelta::minutes(round),
                100,
            )],
        )
        .await?;
        assert_ne!(
            ack.batch_id,
            Some(forged),
            "the forged ack reached the victim"
        );
        assert_eq!(ack.stored, 1, "{ack:?}");
        let seen = evil
            .round_trip(&t, EVIL, "band-of-my-own", &evil_channel)
            .await?;
        assert!(seen.is_empty(), "the attacker read {seen:?}");
    }
    assert_eq!(
        phr_e2e::step_counts(&gw, "vic")?,
        vec![100, 100, 100],
        "only the victim's own batches are stored"
    );
    // The victim's nearby report passes the ACL and reaches the gateway; the attacker's
    // forged one on the same topic did not.
    let nearby = phr_schema::NearbyReport::new(
        Utc::now().fixed_offset(),
        phr_schema::NearbyDevice::new("band-near", None, Some(-50), "pams"),
    );
    let topic = t.nearby(VICTIM);
    victim
        .publish_to(
            topic.clone(),
            victim.seal(&topic, serde_json::to_vec(&nearby)?),
        )
        .await?;
    let store = gw.gateway.store.clone();
    let seen = wait_for(
        "the victim's nearby report",
        Duration::from_secs(10),
        || {
            store
                .nearby_for_owner("vic", VICTIM, Utc::now())
                .ok()
                .flatten()
        },
    )
    .await?;
    let ids: Vec<&str> = seen.devices.iter().map(|d| d.device_id.as_str()).collect();
    assert_eq!(ids, ["band-near"]);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a mosquitto binary; .ci/run installs it and runs ignored tests"]
async fn a_real_bridge_with_its_mqtt_password_delivers_through_mosquitto() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let prefix = test_prefix();
    let users = [("phr-gateway", "gw-secret"), ("br-sim", "sim-pw")];
    let conf = shipped_mosquitto_config(dir.path(), &prefix, &users)?;
    let mosquitto = spawn_mosquitto_with(dir.path(), &conf)?;
    let url = mosquitto.url();
    let gw = TestGateway::start_configured(Some(url.clone()), |c| {
        c.mqtt.topic_prefix = prefix.clone();
        c.mqtt.password = Some(MqttPassword::new("gw-secret"));
    })
    .await?;
    let until = super::sim_until();
    let mut broker = url.clone();
    broker.password = Some(MqttPassword::new("sim-pw"));
    let mut cfg = super::sim_config(
        "br-sim",
        1,
        dir.path().join("bridge"),
        &broker,
        &prefix,
        until,
        1,
    );
    let bands: Vec<String> = cfg.bands().into_iter().map(|b| b.device_id).collect();
    gw.enrol("sam", "br-sim", &bands, until - TimeDelta::days(1))?;
    gw.enrol_sim(&mut cfg)?;
    let want = super::expected(&cfg);
    let status = super::run_bridge(cfg, Duration::from_secs(60)).await?;
    assert_eq!(status.stored as usize, want.len(), "{status:?}");
    assert!(!want.is_empty());
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_garbage_and_oversized_connects_are_dropped() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let gw = TestGateway::start_with(None).await?;
    let addr = loopback(gw.gateway.mqtt.port);
    /// Reads until the server closes the connection (or resets it); fails after 30 s.
    async fn closed(s: &mut tokio::net::TcpStream) -> anyhow::Result<()> {
        let mut buf = [0u8; 64];
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .context("the connection stayed open")
    }
    // Something that is not MQTT.
    let mut garbage = tokio::net::TcpStream::connect(addr).await?;
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    // A CONNECT that claims to be far larger than any CONNECT (remaining length 2 MiB).
    let mut huge = tokio::net::TcpStream::connect(addr).await?;
    huge.write_all(&[0x10, 0x80, 0x80, 0x80, 0x01]).await?;
    // A client that never sends its CONNECT.
    let mut silent = tokio::net::TcpStream::connect(addr).await?;
    for s in [&mut garbage, &mut huge, &mut silent] {
        closed(s).await?;
    }
    let refused = labelled_metric(&gw.url(""), "phr_mqtt_refused_total{what=\"connect\"}")?;
    assert_eq!(refused, 3.0);
    gw.stop().await;
    Ok(())
}

/// A private CA and a broker certificate it signed for 127.0.0.1 (PEM files in `dir`, made
/// with the `openssl` command): `(ca.pem, broker.pem, broker.key)`.
fn test_certificates(dir: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let ext = p("ext.cnf");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let runs: Vec<Vec<std::ffi::OsString>> = vec![
        [
            &["req", "-x509"][..],
            &ec[..],
            &["-days", "2", "-subj", "/CN=phr-test-ca", "-keyout"],
        ]
        .concat()
        .into_iter()
        .map(Into::into)
        .chain([p("ca.key").into(), "-out".into(), p("ca.pem").into()])
        .collect(),
        [
            &["req"][..],
            &ec[..],
            &["-subj", "/CN=localhost", "-keyout"],
        ]
        .concat()
        .into_iter()
        .map(Into::into)
        .chain([
            p("broker.key").into(),
            "-out".into(),
            p("broker.csr").into(),
        ])
        .collect(),
        ["x509", "-req", "-days", "2", "-in"]
            .into_iter()
            .map(Into::into)
            .chain([
                p("broker.csr").into(),
                "-CA".into(),
                p("ca.pem").into(),
                "-CAkey".into(),
                p("ca.key").into(),
                "-CAcreateserial".into(),
                "-extfile".into(),
                ext.clone().into(),
                "-out".into(),
                p("broker.pem").into(),
            ])
            .collect(),
    ];
    for args in runs {
        let out = std::process::Command::new("openssl")
            .args(&args)
            .output()
            .context("the openssl command (package openssl)")?;
        anyhow::ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((p("ca.pem"), p("broker.pem"), p("broker.key")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_at_the_embedded_broker() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let (ca, cert, key) = test_certificates(certs.path(), "right")?;
    let (other_ca, _, _) = test_certificates(certs.path(), "other")?;
    let gw = TestGateway::start_configured(None, |c| {
        c.mqtt.tls_cert_file = Some(cert.clone());
        c.mqtt.tls_key_file = Some(key.clone());
    })
    .await?;
    assert!(gw.gateway.mqtt.tls, "the gateway advertises mqtts://");
    let port = gw.gateway.mqtt.port;
    gw.enrol(
        "tia",
        "br-tls",
        &["band-tls".to_owned()],
        Utc::now() - TimeDelta::days(1),
    )?;

    // A bridge that trusts the broker's CA delivers over TLS.
    let mut url: MqttUrl = format!("mqtts://127.0.0.1:{port}").parse()?;
    url = url.with_ca_file(&ca)?;
    let key = BridgeKey::generate();
    gw.gateway
        .store
        .register_bridge_key("br-tls", &key.public_hex())?;
    let channel = key.channel(&gw.gateway.channels.public_key())?;
    let mut bridge = RawBridge::connect_as(&url, gw.topics(), "br-tls", key, Some(channel)).await?;
    let ack = phr_e2e::send(
        &mut bridge,
        "band-tls",
        vec![minute_steps("band-tls", "br-tls", ago(10), 42)],
    )
    .await?;
    assert_eq!(ack.stored, 1, "{ack:?}");
    assert_eq!(phr_e2e::step_counts(&gw, "tia")?, vec![42]);

    // Plain MQTT on the TLS port, and TLS verified against another CA, get nowhere.
    let plain = MqttUrl::new("127.0.0.1", port);
    assert!(
        !phr_e2e::can_connect(&plain, Some(("br-tls", ""))).await,
        "plain MQTT"
    );
    let wrong = format!("mqtts://127.0.0.1:{port}")
        .parse::<MqttUrl>()?
        .with_ca_file(&other_ca)?;
    assert!(
        !phr_e2e::can_connect(&wrong, Some(("br-tls", ""))).await,
        "another CA"
    );
    gw.stop().await;
    Ok(())
}
