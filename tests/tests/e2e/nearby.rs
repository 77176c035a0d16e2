//! The bands a bridge reports nearby, end to end: a simulated bridge (the real pipeline and
//! publisher) reports its bands over the embedded broker; the owner's pairing page lists the
//! free ones and their own, never one bound to someone else, and pairing one from the list
//! works; the API says the same. Reports on another bridge's topic, sealed with the wrong
//! key, unsealed, from a bridge that is not enrolled, or replayed change nothing and are
//! counted as refused.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use phr_bridge::publish::Status;
use phr_bridge::simulate::{self, SimulateConfig};
use phr_e2e::{wait_for, TestGateway};
use phr_gateway::dashboard::pairing;
use phr_schema::{NearbyDevice, NearbyReport};
use rumqttc::QoS;

use crate::dashboard_pairing::Browser;

const BRIDGE: &str = "br-hall";
/// Three simulated bands: 0000 free, 0001 bo's, 0002 ana's.
const FREE: &str = "sim-band-0000";
const BOS: &str = "sim-band-0001";
const ANAS: &str = "sim-band-0002";

/// The ids offered as radio buttons on a nearby page.
fn offered(body: &str) -> Vec<String> {
    body.split("name=\"device_pick\" value=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pairing_page_lists_the_bands_a_bridge_reports_but_never_one_bound_to_someone_else(
) -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let since = Utc::now() - TimeDelta::days(1);
    gw.enrol("ana", BRIDGE, &[ANAS.to_owned()], since)?;
    gw.enrol("bo", BRIDGE, &[BOS.to_owned()], since)?;

    let mut cfg = SimulateConfig::new(
        BRIDGE,
        3,
        gw.dir.path().join("bridge"),
        gw.gateway.mqtt.clone(),
    );
    cfg.topic_prefix = gw.topics().prefix().to_owned();
    gw.enrol_sim(&mut cfg)?;
    cfg.history = TimeDelta::minutes(30);
    cfg.tick = Duration::from_millis(300);
    let (tx, status) = watch::channel(Status::default());
    let stop_bridge = CancellationToken::new();
    let bridge = tokio::spawn(simulate::run(cfg, tx, stop_bridge.clone()));
    let store = gw.gateway.store.clone();
    wait_for(
        "the bridge's nearby report",
        Duration::from_secs(20),
        || {
            store
                .nearby_for_owner("ana", BRIDGE, Utc::now())
                .ok()
                .flatten()
        },
    )
    .await?;
    assert!(status.borrow().nearby_reports >= 1);

    // Ana picks the bridge and asks what is near it.
    let ana = Browser::sign_in(&gw, "ana")?;
    let csrf = ana.csrf()?;
    let home = ana.get(phr_gateway::dashboard::owner::HOME)?;
    assert!(
        home.body.contains("Show bands near this bridge"),
        "{}",
        home.body
    );
    assert!(!home.body.contains("do not list nearby"), "{}", home.body);
    let page = ana.post(pairing::NEARBY, &[("csrf", &csrf), ("bridge_pick", BRIDGE)])?;
    assert_eq!(page.status, 200, "{}", page.body);
    let mut shown = offered(&page.body);
    shown.sort();
    assert_eq!(shown, [FREE, ANAS], "{}", page.body);
    assert!(page.body.contains("PHR band 0000"), "{}", page.body);
    assert!(page.body.contains("already yours"), "{}", page.body);
    assert!(page.body.contains("dBm"), "{}", page.body);
    assert!(
        page.body.contains("less than a minute ago"),
        "{}",
        page.body
    );
    // Bo's band is not there at all: not its id, not its name.
    assert!(!page.body.contains(BOS), "{}", page.body);
    assert!(!page.body.contains("PHR band 0001"), "{}", page.body);
    // Typed, the bridge id goes the same way.
    let typed = ana.post(
        pairing::NEARBY,
        &[
            ("csrf", &csrf),
            ("bridge_pick", "br-other"),
            ("bridge", BRIDGE),
        ],
    )?;
    assert_eq!(offered(&typed.body).len(), 2, "{}", typed.body);
    // Without the session's CSRF token: refused.
    let forged = ana.post(pairing::NEARBY, &[("csrf", "forged"), ("bridge", BRIDGE)])?;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(!forged.body.contains(FREE));
    // A bridge that never reported (or is not enrolled): no list, the typed id still works.
    let other = ana.post(
        pairing::NEARBY,
        &[("csrf", &csrf), ("bridge", "br-nowhere")],
    )?;
    assert_eq!(other.status, 200, "{}", other.body);
    assert!(
        other.body.contains("has not reported any bands"),
        "{}",
        other.body
    );
    assert!(offered(&other.body).is_empty());

    // The API for owners says the same.
    let (code, body) = phr_e2e::get_json(
        &gw.url(&format!("/api/v1/me/bridges/{BRIDGE}/nearby")),
        Some(&gw.owner_token("ana")),
    )?;
    assert_eq!(code, 200, "{body}");
    let ids: Vec<(&str, bool)> = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["device_id"].as_str().unwrap(),
                d["yours"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(ids.len(), 2, "{body}");
    assert!(
        ids.contains(&(FREE, false)) && ids.contains(&(ANAS, true)),
        "{body}"
    );
    assert!(!body.to_string().contains(BOS), "{body}");
    let (code, _) = phr_e2e::get_json(
        &gw.url("/api/v1/me/bridges/br-nowhere/nearby"),
        Some(&gw.owner_token("ana")),
    )?;
    assert_eq!(code, 404);

    // Ana pairs the free band from the list: the bridge shows the code, she types it.
    let started = ana.post(
        pairing::PAIRINGS,
        &[
            ("csrf", &csrf),
            ("bridge", BRIDGE),
            ("device_pick", FREE),
            ("device", ""),
        ],
    )?;
    assert_eq!(started.status, 303, "{}", started.body);
    let to = started.location.unwrap_or_default();
    let id = to.rsplit('/').next().unwrap_or_default().to_owned();
    let code = wait_for("the bridge to show a code", Duration::from_secs(15), || {
        status
            .borrow()
            .pairing_codes
            .iter()
            .find(|c| c.device_id == FREE)
            .map(|c| c.code.clone())
    })
    .await?;
    let confirm = pairing::CONFIRM.replace("{pairing_id}", &id);
    let store = gw.gateway.store.clone();
    let done = wait_for("the pairing confirmed", Duration::from_secs(15), || {
        // The bridge's report of the band may arrive just after its code is shown.
        let a = ana
            .post(&confirm, &[("csrf", &csrf), ("code", &code)])
            .ok()?;
        (a.status == 200).then_some(a)
    })
    .await?;
    assert!(done.body.contains("is yours from now on"), "{}", done.body);
    assert!(store
        .bindings_of("ana")?
        .iter()
        .any(|b| b.device_id == FREE && b.valid_to.is_none()));

    // Now both are ana's; bo sees his own band and nothing of ana's.
    let page = ana.post(pairing::NEARBY, &[("csrf", &csrf), ("bridge", BRIDGE)])?;
    let mut shown = offered(&page.body);
    shown.sort();
    assert_eq!(shown, [FREE, ANAS], "{}", page.body);
    assert_eq!(
        page.body.matches("already yours").count(),
        2,
        "{}",
        page.body
    );
    let bo = Browser::sign_in(&gw, "bo")?;
    let bo_csrf = bo.csrf()?;
    let page = bo.post(pairing::NEARBY, &[("csrf", &bo_csrf), ("bridge", BRIDGE)])?;
    assert_eq!(offered(&page.body), [BOS], "{}", page.body);
    assert!(
        !page.body.contains(FREE) && !page.body.contains(ANAS),
        "{}",
        page.body
    );

    stop_bridge.cancel();
    bridge.await??;
    gw.stop().await;
    Ok(())
}

fn report(ids: &[&str]) -> NearbyReport {
    NearbyReport::new(
        Utc::now().fixed_offset(),
        ids.iter()
            .filter_map(|id| NearbyDevice::new(id, Some("A band"), Some(-50), "pams")),
    )
}

fn listed(gw: &TestGateway, bridge: &str) -> Option<Vec<String>> {
    gw.gateway
        .store
        .nearby_for_owner("ana", bridge, Utc::now())
        .ok()
        .flatten()
        .map(|v| v.devices.into_iter().map(|d| d.device_id).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_on_another_bridges_topic_under_the_wrong_key_or_replayed_change_nothing(
) -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let t = gw.topics();
    let hall = gw.raw_bridge(BRIDGE).await?;
    let evil = gw.raw_bridge("br-evil").await?;
    let topic = t.nearby(BRIDGE);

    // The hall's genuine report.
    let first = hall.seal(&topic, serde_json::to_vec(&report(&["band-1"]))?);
    hall.publish_to(topic.clone(), first.clone()).await?;
    wait_for("the hall's report", Duration::from_secs(10), || {
        listed(&gw, BRIDGE).filter(|l| l == &["band-1"])
    })
    .await?;

    // Another enrolled bridge publishing on the hall's topic: the embedded broker's front
    // refuses it and closes its connection; nothing reaches the gateway. (The test
    // Mosquitto of external mode has no ACL: there the report reaches the gateway, which
    // refuses it unread, one refusal more below.)
    let planted = evil.seal(&topic, serde_json::to_vec(&report(&["band-evil"]))?);
    evil.publish_to(topic.clone(), planted.clone()).await?;
    let external = u64::from(phr_e2e::external_broker().is_some());
    if external == 0 {
        wait_for(
            "the front to refuse the publish",
            Duration::from_secs(10),
            || {
                let text = ureq::get(&gw.url("/metrics"))
                    .call()
                    .ok()?
                    .into_string()
                    .ok()?;
                text.lines()
                    .find_map(|l| l.strip_prefix("phr_mqtt_refused_total{what=\"publish\"} "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|v| *v >= 1.0)
            },
        )
        .await?;
    }

    // What the broker alone could not stop (a misconfigured external broker): the gateway's
    // own client delivers on the hall's topic a report sealed with the other bridge's key,
    // an unsealed one, one sealed for another topic, garbage sealed right, and the hall's
    // first report again (a replay); and a report of a bridge that is not enrolled.
    let wrong_topic = hall.seal(
        &t.nearby("br-evil"),
        serde_json::to_vec(&report(&["band-x"]))?,
    );
    let garbage = hall.seal(
        &topic,
        b"{\"schema_version\":\"1.0\",\"devices\":7}".to_vec(),
    );
    let second = hall.seal(&topic, serde_json::to_vec(&report(&["band-2"]))?);
    let client = gw.gateway.client.clone();
    for (to, payload) in [
        (topic.clone(), planted),
        (topic.clone(), serde_json::to_vec(&report(&["band-plain"]))?),
        (topic.clone(), wrong_topic),
        (topic.clone(), garbage),
        (topic.clone(), second),
        (topic.clone(), first),
        (
            t.nearby("br-stranger"),
            serde_json::to_vec(&report(&["band-s"]))?,
        ),
    ] {
        client.publish(to, QoS::AtLeastOnce, false, payload).await?;
    }
    // Five refused (wrong key, plain, wrong topic, stranger: unread; garbage: invalid); the
    // second report stored; the replay ignored.
    wait_for("the refusals counted", Duration::from_secs(10), || {
        phr_e2e::metric(&gw.url(""), "phr_batches_refused_unread_total")
            .ok()
            .filter(|n| *n >= 5.0 + external as f64)
    })
    .await?;
    wait_for("the second report", Duration::from_secs(10), || {
        listed(&gw, BRIDGE).filter(|l| l == &["band-2"])
    })
    .await?;
    assert_eq!(
        phr_e2e::metric(&gw.url(""), "phr_batches_refused_unread_total")?,
        5.0 + external as f64
    );
    assert_eq!(listed(&gw, BRIDGE), Some(vec!["band-2".to_owned()]));
    assert_eq!(
        listed(&gw, "br-evil"),
        None,
        "nothing recorded for the attacker"
    );
    assert_eq!(listed(&gw, "br-stranger"), None);
    let refused = gw
        .gateway
        .store
        .refused_batches(Utc::now() - TimeDelta::minutes(5), 100)?;
    let count = |bridge: &str, reason: &str| -> u64 {
        refused
            .iter()
            .filter(|r| r.bridge_id == bridge && r.reason == reason)
            .map(|r| r.batches)
            .sum()
    };
    assert_eq!(
        count(BRIDGE, "not_sealed_by_bridge"),
        3 + external,
        "{refused:?}"
    );
    assert_eq!(count(BRIDGE, "invalid_report"), 1, "{refused:?}");
    assert_eq!(count("*", "bridge_not_enrolled"), 1, "{refused:?}");
    gw.stop().await;
    Ok(())
}
