//! Hand-made batches through the real broker and gateway: duplicates, invalid records,
//! unbound devices, mismatched topics.

use chrono::{TimeDelta, Utc};
use uuid::Uuid;

use phr_e2e::{all_records, metric, TestGateway};
use phr_schema::{Batch, Reason, Record};

fn minute_steps(device: &str, bridge: &str, minutes_ago: i64, count: i64) -> Record {
    phr_e2e::minute_steps(
        device,
        bridge,
        Utc::now() - TimeDelta::minutes(minutes_ago),
        count,
    )
}

fn hour_of_steps(device: &str, bridge: &str) -> Vec<Record> {
    (0..60)
        .map(|i| minute_steps(device, bridge, 120 - i, 40 + i))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_batch_published_three_times_is_stored_once() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    gw.enrol(
        "dana",
        "br-dup",
        &["band-dup".into()],
        Utc::now() - TimeDelta::days(1),
    )?;
    let mut bridge = gw.raw_bridge("br-dup").await?;
    let batch = Batch::new(
        "br-dup",
        "band-dup",
        Uuid::new_v4(),
        hour_of_steps("band-dup", "br-dup"),
    );
    let payload = serde_json::to_vec(&batch)?;

    let mut acks = Vec::new();
    for _ in 0..3 {
        bridge.publish("band-dup", payload.clone()).await?;
        acks.push(bridge.next_ack().await?);
    }
    for a in &acks {
        assert_eq!(a.batch_id, Some(batch.batch_id));
        assert!(a.rejected.is_empty() && a.batch_error.is_none(), "{a:?}");
    }
    assert_eq!((acks[0].stored, acks[0].duplicate), (60, 0));
    assert_eq!((acks[1].stored, acks[1].duplicate), (0, 60));
    assert_eq!((acks[2].stored, acks[2].duplicate), (0, 60));

    let got = all_records(&gw.url(""), &gw.owner_token("dana"), "step-count", 1000)?;
    assert_eq!(got.len(), 60);
    assert_eq!(metric(&gw.url(""), "phr_series_records")?, 60.0);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_records_are_rejected_with_reasons_and_valid_ones_stored() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    gw.enrol(
        "erin",
        "br-bad",
        &["band-bad".into()],
        Utc::now() - TimeDelta::days(1),
    )?;
    let mut bridge = gw.raw_bridge("br-bad").await?;

    let good = minute_steps("band-bad", "br-bad", 30, 80);
    let negative = minute_steps("band-bad", "br-bad", 29, -5);
    let absurd = minute_steps("band-bad", "br-bad", 28, 5000);
    let future = minute_steps("band-bad", "br-bad", -60, 10);
    let mut forged_id = minute_steps("band-bad", "br-bad", 27, 10);
    forged_id.record_id = Uuid::new_v4();
    let other_device = minute_steps("someone-elses-band", "br-bad", 26, 10);
    let good2 = minute_steps("band-bad", "br-bad", 25, 90);
    let batch = Batch::new(
        "br-bad",
        "band-bad",
        Uuid::new_v4(),
        vec![
            good.clone(),
            negative,
            absurd,
            future,
            forged_id,
            other_device,
            good2.clone(),
        ],
    );
    // One more record that is not even JSON for a record.
    let mut json = serde_json::to_value(&batch)?;
    json["records"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"record_id": 7, "body": "steps"}));
    bridge
        .publish("band-bad", serde_json::to_vec(&json)?)
        .await?;
    let ack = bridge.next_ack().await?;

    assert_eq!((ack.stored, ack.duplicate, ack.quarantined), (2, 0, 0));
    let reasons: Vec<(usize, Reason)> = ack.rejected.iter().map(|r| (r.index, r.reason)).collect();
    assert_eq!(
        reasons,
        vec![
            (1, Reason::NegativeCount),
            (2, Reason::ImplausibleCount),
            (3, Reason::InFuture),
            (4, Reason::RecordIdMismatch),
            (5, Reason::DeviceMismatch),
            (7, Reason::MalformedRecord),
        ]
    );
    let mut got = all_records(&gw.url(""), &gw.owner_token("erin"), "step-count", 100)?;
    got.sort_by_key(|r| r.measured().0);
    assert_eq!(got, vec![good, good2]);
    assert_eq!(
        metric(
            &gw.url(""),
            "phr_records_rejected_total{reason=\"negative_count\"}"
        )?,
        1.0
    );

    // A broken envelope is answered too, and stores nothing.
    bridge
        .publish("band-bad", b"{\"batch_id\": \"not even".to_vec())
        .await?;
    let ack = bridge.next_ack().await?;
    assert_eq!(
        (ack.batch_id, ack.batch_error),
        (None, Some(Reason::MalformedBatch))
    );
    // A batch published on another device's topic is refused whole.
    let mismatched = Batch::new(
        "br-bad",
        "band-bad",
        Uuid::new_v4(),
        vec![minute_steps("band-bad", "br-bad", 20, 1)],
    );
    bridge
        .publish("band-other", serde_json::to_vec(&mismatched)?)
        .await?;
    let ack = bridge.next_ack().await?;
    assert_eq!(ack.batch_error, Some(Reason::TopicMismatch));
    assert_eq!(ack.stored, 0);
    assert_eq!(metric(&gw.url(""), "phr_series_records")?, 2.0);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_an_unbound_device_are_quarantined_not_attributed() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    // fay exists and consents, but this band was never bound to anyone.
    gw.enrol("fay", "br-q", &[], Utc::now() - TimeDelta::days(1))?;
    let base = gw.url("");
    assert_eq!(metric(&base, "phr_quarantine_records")?, 0.0);
    let mut bridge = gw.raw_bridge("br-q").await?;
    let batch = Batch::new(
        "br-q",
        "band-unbound",
        Uuid::new_v4(),
        hour_of_steps("band-unbound", "br-q"),
    );
    bridge
        .publish("band-unbound", serde_json::to_vec(&batch)?)
        .await?;
    let ack = bridge.next_ack().await?;
    assert_eq!((ack.stored, ack.quarantined), (0, 60));
    assert_eq!(metric(&base, "phr_quarantine_records")?, 60.0);
    assert_eq!(metric(&base, "phr_series_records")?, 0.0);
    assert!(all_records(&base, &gw.owner_token("fay"), "step-count", 100)?.is_empty());

    // Bound later: records measured before the binding stay quarantined.
    gw.gateway.store.add_device("band-unbound", "br-q", None)?;
    gw.gateway.store.bind("band-unbound", "fay", Utc::now())?;
    bridge
        .publish("band-unbound", serde_json::to_vec(&batch)?)
        .await?;
    let ack = bridge.next_ack().await?;
    assert_eq!((ack.stored, ack.quarantined, ack.duplicate), (0, 0, 60));
    assert!(all_records(&base, &gw.owner_token("fay"), "step-count", 100)?.is_empty());
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_storage_consent_nothing_is_stored_when_holding_is_off() -> anyhow::Result<()> {
    // (With the default hold, such records wait in quarantine for consent: attribution.rs.)
    let gw = TestGateway::start_configured(phr_e2e::external_broker(), |c| {
        c.ingest.hold_without_consent_days = 0;
    })
    .await?;
    gw.enrol(
        "gus",
        "br-c",
        &["band-c".into()],
        Utc::now() - TimeDelta::days(1),
    )?;
    gw.gateway.store.withdraw_storage_consent("gus")?;
    let mut bridge = gw.raw_bridge("br-c").await?;
    let batch = Batch::new(
        "br-c",
        "band-c",
        Uuid::new_v4(),
        hour_of_steps("band-c", "br-c"),
    );
    bridge
        .publish("band-c", serde_json::to_vec(&batch)?)
        .await?;
    let ack = bridge.next_ack().await?;
    assert_eq!(ack.stored, 0);
    assert_eq!(ack.rejected.len(), 60);
    assert!(ack
        .rejected
        .iter()
        .all(|r| r.reason == Reason::NoStorageConsent));
    assert_eq!(metric(&gw.url(""), "phr_series_records")?, 0.0);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_go_out_in_order_even_with_other_messages_in_between() -> anyhow::Result<()> {
    // MQTT 3.1.1 §4.6: PUBACKs in the order the PUBLISHes arrived. rumqttd drops a client
    // that breaks it, which once happened when pairing reports were acked out of band.
    let gw = TestGateway::start().await?;
    gw.enrol(
        "ida",
        "br-o",
        &["band-o".into()],
        Utc::now() - TimeDelta::days(1),
    )?;
    let mut bridge = gw.raw_bridge("br-o").await?;
    let mut sent = Vec::new();
    for i in 0..40i64 {
        let batch = Batch::new(
            "br-o",
            "band-o",
            Uuid::new_v4(),
            vec![minute_steps("band-o", "br-o", 300 - i, 10)],
        );
        bridge
            .publish("band-o", serde_json::to_vec(&batch)?)
            .await?;
        sent.push(batch.batch_id);
        if i % 10 == 5 {
            let report = serde_json::json!({"pairing_id": Uuid::new_v4(), "device_id": "band-o", "serial_number": "X"});
            bridge
                .publish_to(
                    gw.topics().pairing_reports("br-o"),
                    serde_json::to_vec(&report)?,
                )
                .await?;
            // A topic the records filter matches but no bridge may publish on: the embedded
            // broker closes the connection of a bridge that tries (attack_broker.rs); a
            // broker without such rules passes it to the gateway.
            if phr_e2e::external_broker().is_some() {
                bridge
                    .publish_to(
                        format!("{}/bridges/br o/devices/x/records", gw.topics().prefix()),
                        b"{}".to_vec(),
                    )
                    .await?;
            }
        }
    }
    let mut acked = Vec::new();
    for _ in 0..40 {
        acked.push(bridge.next_ack().await?.batch_id.unwrap());
    }
    // In the order sent, not merely the same set.
    assert_eq!(
        acked, sent,
        "acks out of the order the batches were sent in"
    );
    assert_eq!(metric(&gw.url(""), "phr_series_records")?, 40.0);
    if phr_e2e::external_broker().is_none() {
        assert_eq!(
            metric(&gw.url(""), "phr_mqtt_connects_total")?,
            1.0,
            "the broker never dropped the gateway"
        );
    }
    gw.stop().await;
    Ok(())
}
