//! Attribution under change (issue #13): what arrives late follows what happened meanwhile.
//!
//! - A correction is a standing rule: records of a re-attributed or unlinked range that arrive
//!   after the correction (a bridge back from a week offline, a replayed batch) are treated as
//!   the correction treated the rows it found, and never reach the old person's companies.
//! - A band moved to another bridge: its old bridge may still deliver what it measured before
//!   the move; nothing measured after, and a bridge that never held the band delivers nothing.
//! - An erasure is a fence: what was measured before it is never stored again from a bridge,
//!   whatever consent the person gives later; data after a new pairing is.
//! - Records lacking storage consent are held where their owner sees them, and stored when
//!   the owner consents.
//!
//! Real gateway, embedded broker (or `PHR_TEST_MQTT_URL`), real SQLite file; bridges are
//! enrolled raw MQTT clients that seal their batches.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::{json, Value};

use phr_e2e::{call, grant_consent, minute_steps, send, step_counts, TestGateway};
use phr_schema::{PairingReport, Reason, RecordType};

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn minute(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::minutes(1)).expect("minute")
}

/// Every change the company `client` reads from the feed, following the cursor to the end.
fn sync_all(gw: &TestGateway, client: &str) -> anyhow::Result<Vec<Value>> {
    let token = gw.gateway.keys.issue(
        client,
        "system/Observation.rs",
        TimeDelta::hours(1),
        Utc::now(),
    )?;
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = gw.url("/api/v1/sync?limit=100");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (s, b) = call("GET", &url, Some(&token), None)?;
        anyhow::ensure!(s == 200, "{b}");
        out.extend(b["changes"].as_array().into_iter().flatten().cloned());
        cursor = b["next_cursor"].as_str().map(str::to_owned);
        if b["has_more"].as_bool() != Some(true) {
            return Ok(out);
        }
    }
}

/// The owner's quarantine summary (`GET /api/v1/me/quarantine`).
fn quarantine(gw: &TestGateway, who: &str) -> anyhow::Result<Value> {
    let (s, b) = call(
        "GET",
        &gw.url("/api/v1/me/quarantine"),
        Some(&gw.owner_token(who)),
        None,
    )?;
    anyhow::ensure!(s == 200, "{b}");
    Ok(b["quarantine"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_records_of_a_reattributed_range_go_to_the_new_person_and_not_to_the_old_ones_companies(
) -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let now = Utc::now();
    gw.enrol("ana", "br-x", &["band-x".into()], now - TimeDelta::days(3))?;
    gw.enrol("ben", "br-x", &[], now - TimeDelta::days(3))?;
    // Ana shares her steps with a company.
    grant_consent(
        &gw,
        "ana",
        json!({"grantee": "acme-phr", "grantee_kind": "client", "purpose": "wellness programme",
               "data_types": ["step-count"]}),
    )?;
    let t0 = minute(now - TimeDelta::hours(10));
    let at = |h: i64, n: i64| minute_steps("band-x", "br-x", t0 + TimeDelta::hours(h), n);
    let mut bridge = gw.raw_bridge("br-x").await?;
    let ack = send(&mut bridge, "band-x", vec![at(0, 10), at(2, 12)]).await?;
    assert_eq!(ack.stored, 2, "{ack:?}");

    // Ben wore the band from hour 2 to hour 6: an operator moves that range to him.
    let admin =
        gw.gateway
            .keys
            .issue("operator-1", "phr:admin", TimeDelta::hours(1), Utc::now())?;
    let (s, b) = call(
        "POST",
        &gw.url("/api/v1/admin/corrections"),
        Some(&admin),
        Some(
            json!({"kind": "reattribute", "device_id": "band-x", "from": rfc(t0 + TimeDelta::hours(2)),
                    "to": rfc(t0 + TimeDelta::hours(6)), "from_person": "ana", "to_person": "ben",
                    "why": "ben wore the band those hours"}),
        ),
    )?;
    assert_eq!(
        (s, b["correction"]["records"].as_u64()),
        (200, Some(1)),
        "{b}"
    );

    // The bridge comes back from days offline with the rest of those hours, and one after.
    let late = at(4, 14);
    let late_id = late.record_id.to_string();
    let ack = send(&mut bridge, "band-x", vec![late, at(7, 17)]).await?;
    assert_eq!((ack.stored, ack.quarantined), (2, 0), "{ack:?}");
    assert_eq!(step_counts(&gw, "ben")?, [12, 14]);
    assert_eq!(step_counts(&gw, "ana")?, [10, 17]);

    // Ana's company never saw the late record (it is ben's, and ben shares nothing with it).
    let changes = sync_all(&gw, "acme-phr")?;
    assert!(!changes.is_empty(), "the company reads ana's feed");
    assert!(
        !changes.iter().any(|c| c["record_id"] == late_id.as_str()),
        "{changes:?}"
    );
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_batch_of_an_unlinked_range_does_not_come_back_to_the_owner(
) -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    gw.enrol(
        "ana",
        "br-u",
        &["band-u".into()],
        Utc::now() - TimeDelta::days(1),
    )?;
    let t0 = minute(Utc::now() - TimeDelta::hours(2));
    let at = |m: i64, n: i64| minute_steps("band-u", "br-u", t0 + TimeDelta::minutes(m), n);
    let batch = vec![at(0, 20), at(1, 21), at(2, 22)];
    let mut bridge = gw.raw_bridge("br-u").await?;
    assert_eq!(send(&mut bridge, "band-u", batch.clone()).await?.stored, 3);

    // Ana: minutes 0 to 10 were not hers.
    let (s, b) = call(
        "POST",
        &gw.url("/api/v1/me/corrections/unlink"),
        Some(&gw.owner_token("ana")),
        Some(
            json!({"device_id": "band-u", "from": rfc(t0), "to": rfc(t0 + TimeDelta::minutes(10)),
                    "why": "my daughter wore it"}),
        ),
    )?;
    assert_eq!(
        (s, b["correction"]["records"].as_u64()),
        (200, Some(3)),
        "{b}"
    );
    assert!(step_counts(&gw, "ana")?.is_empty());

    // The bridge replays the batch (its ack was lost), with one minute it had not sent yet.
    let mut replay = batch;
    replay.push(at(5, 25));
    let ack = send(&mut bridge, "band-u", replay).await?;
    assert_eq!(
        (ack.stored, ack.duplicate, ack.quarantined),
        (0, 3, 1),
        "{ack:?}"
    );
    assert!(step_counts(&gw, "ana")?.is_empty());
    let q = quarantine(&gw, "ana")?;
    assert_eq!(
        (q[0]["records"].as_u64(), q[0]["reasons"].clone()),
        (Some(4), json!(["unlinked"])),
        "{q}"
    );
    assert_eq!(
        gw.gateway.store.counts()?,
        (0, 4),
        "each key in one table once"
    );
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_band_moved_to_another_bridge_keeps_what_its_old_bridge_measured_before_the_move(
) -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let store = gw.gateway.store.clone();
    gw.enrol(
        "ana",
        "br-old",
        &["band-m".into()],
        Utc::now() - TimeDelta::days(2),
    )?;
    let mut old = gw.raw_bridge("br-old").await?;
    let mut new = gw.raw_bridge("br-new").await?;
    let mut never = gw.raw_bridge("br-never").await?;

    // Ana pairs the band at a new bridge (the old one was offline with a day of backlog).
    let moved = Utc::now();
    let id = uuid::Uuid::new_v4();
    store
        .start_pairing("ana", "br-new", "band-m", id, "123456", moved)?
        .expect("started");
    let report = PairingReport {
        pairing_id: id,
        device_id: "band-m".into(),
        address: Some("AA:BB:CC:DD:EE:FF".into()),
        serial_number: Some("SN-1".into()),
    };
    assert!(store.report_pairing(id, "br-new", &report)?);
    store
        .confirm_pairing("ana", id, "123456", None, moved)?
        .expect("confirmed");

    // The old bridge delivers its backlog, measured before the move: kept.
    let before = minute(moved - TimeDelta::minutes(30));
    let ack = send(
        &mut old,
        "band-m",
        vec![minute_steps("band-m", "br-old", before, 30)],
    )
    .await?;
    assert_eq!((ack.stored, ack.batch_error), (1, None), "{ack:?}");
    // Measured after the move, from the old bridge: refused per record, the rest kept.
    let after = minute(moved + TimeDelta::minutes(2));
    let ack = send(
        &mut old,
        "band-m",
        vec![
            minute_steps("band-m", "br-old", before + TimeDelta::minutes(1), 31),
            minute_steps("band-m", "br-old", after, 32),
        ],
    )
    .await?;
    assert_eq!((ack.stored, ack.batch_error), (1, None), "{ack:?}");
    assert_eq!(
        ack.rejected
            .iter()
            .map(|r| (r.index, r.reason))
            .collect::<Vec<_>>(),
        [(1, Reason::DeviceNotOnBridge)]
    );
    // Only after the move: the whole batch is refused, as before.
    let ack = send(
        &mut old,
        "band-m",
        vec![minute_steps("band-m", "br-old", after, 32)],
    )
    .await?;
    assert_eq!(ack.batch_error, Some(Reason::DeviceNotOnBridge), "{ack:?}");
    // The new bridge syncs what the band stored before the move, and what it measures now.
    let ack = send(
        &mut new,
        "band-m",
        vec![
            minute_steps("band-m", "br-new", before - TimeDelta::minutes(5), 25),
            minute_steps("band-m", "br-new", after, 33),
        ],
    )
    .await?;
    assert_eq!(ack.stored, 2, "{ack:?}");
    // A bridge that never held the band delivers nothing, of any time.
    let ack = send(
        &mut never,
        "band-m",
        vec![minute_steps(
            "band-m",
            "br-never",
            before - TimeDelta::minutes(9),
            99,
        )],
    )
    .await?;
    assert_eq!(
        (ack.stored, ack.batch_error),
        (0, Some(Reason::DeviceNotOnBridge))
    );
    assert_eq!(step_counts(&gw, "ana")?, [25, 30, 31, 33]);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_band_measured_before_its_owners_erasure_is_never_stored_again_from_a_bridge(
) -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let store = gw.gateway.store.clone();
    gw.enrol(
        "ana",
        "br-e",
        &["band-e".into()],
        Utc::now() - TimeDelta::days(1),
    )?;
    let mut bridge = gw.raw_bridge("br-e").await?;
    let measured = minute(Utc::now() - TimeDelta::hours(2));
    let stored = minute_steps("band-e", "br-e", measured, 40);
    assert_eq!(send(&mut bridge, "band-e", vec![stored]).await?.stored, 1);

    let (s, b) = call(
        "DELETE",
        &gw.url("/api/v1/me/data?confirm=erase-all-my-data"),
        Some(&gw.owner_token("ana")),
        None,
    )?;
    assert_eq!(s, 200, "{b}");
    // Later she consents to storage again and pairs the band again.
    store.grant_storage_consent("ana", &RecordType::ALL)?;
    let paired = Utc::now() + TimeDelta::milliseconds(5);
    store.bind("band-e", "ana", paired)?;

    // The bridge's backlog, measured before the erasure (one record she had, one she never
    // had): nothing is stored, each is refused as erased.
    let backlog = vec![
        minute_steps("band-e", "br-e", measured, 40),
        minute_steps("band-e", "br-e", measured + TimeDelta::minutes(1), 41),
    ];
    let ack = send(&mut bridge, "band-e", backlog.clone()).await?;
    assert_eq!((ack.stored, ack.quarantined), (0, 0), "{ack:?}");
    assert_eq!(
        ack.rejected.iter().map(|r| r.reason).collect::<Vec<_>>(),
        [Reason::ErasedByPerson, Reason::ErasedByPerson]
    );
    assert!(step_counts(&gw, "ana")?.is_empty());
    assert_eq!(quarantine(&gw, "ana")?, json!([]));

    // What the band measures after the new pairing is hers.
    let after = minute_steps("band-e", "br-e", minute(paired + TimeDelta::minutes(1)), 50);
    assert_eq!(send(&mut bridge, "band-e", vec![after]).await?.stored, 1);
    assert_eq!(step_counts(&gw, "ana")?, [50]);

    // Her own explicit re-import of her export passes the fence.
    let report = store.import_records("ana", &backlog[..1], Utc::now())?;
    assert_eq!((report.stored, report.rejected.len()), (1, 0));
    assert_eq!(step_counts(&gw, "ana")?, [40, 50]);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_without_storage_consent_are_held_for_their_owner_until_they_consent(
) -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let now = Utc::now();
    gw.enrol("gus", "br-h", &["band-h".into()], now - TimeDelta::days(1))?;
    gw.enrol("ben", "br-h", &[], now - TimeDelta::days(1))?;
    gw.gateway.store.withdraw_storage_consent("gus")?;
    let t0 = minute(now - TimeDelta::hours(1));
    let batch: Vec<_> = (0..3)
        .map(|m| minute_steps("band-h", "br-h", t0 + TimeDelta::minutes(m), 60 + m))
        .collect();
    let mut bridge = gw.raw_bridge("br-h").await?;
    let ack = send(&mut bridge, "band-h", batch.clone()).await?;
    // Held, durable here: the bridge may let them go.
    assert_eq!(
        (ack.stored, ack.quarantined, ack.rejected.len()),
        (0, 3, 0),
        "{ack:?}"
    );
    let q = quarantine(&gw, "gus")?;
    assert_eq!(
        (q[0]["records"].as_u64(), q[0]["reasons"].clone()),
        (Some(3), json!(["no_storage_consent"])),
        "{q}"
    );
    assert_eq!(quarantine(&gw, "ben")?, json!([]));
    assert!(step_counts(&gw, "gus")?.is_empty());
    // A replay while held is a duplicate, not a second copy.
    let ack = send(&mut bridge, "band-h", batch.clone()).await?;
    assert_eq!((ack.duplicate, ack.quarantined), (3, 0), "{ack:?}");

    // Gus consents to storing his steps: they are his, in the grant's transaction.
    grant_consent(
        &gw,
        "gus",
        json!({"grantee": "phr-gateway", "grantee_kind": "gateway", "purpose": "storage",
               "data_types": ["step-count"]}),
    )?;
    assert_eq!(step_counts(&gw, "gus")?, [60, 61, 62]);
    assert_eq!(quarantine(&gw, "gus")?, json!([]));
    assert_eq!(gw.gateway.store.counts()?, (3, 0));
    let (_, log) = call(
        "GET",
        &gw.url("/api/v1/me/disclosures"),
        Some(&gw.owner_token("gus")),
        None,
    )?;
    assert!(
        log["disclosures"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["records"] == 3 && e["purpose"].as_str().is_some_and(|p| p.contains("held"))),
        "{log}"
    );
    let ack = send(&mut bridge, "band-h", batch).await?;
    assert_eq!((ack.duplicate, ack.stored), (3, 0), "{ack:?}");
    gw.stop().await;
    Ok(())
}
