//! Corrections and quarantine: whom records belong to changes only as an audited event, and
//! everyone who received the moved data is named for notification.

use chrono::{DurationRound, TimeDelta, Utc};
use serde_json::json;

use phr_e2e::{call, minute_steps, send, step_counts, TestGateway};

fn rfc(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reattribution_moves_the_range_and_names_who_must_be_told() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let now = Utc::now();
    gw.enrol("ana", "br-x", &["band-x".into()], now - TimeDelta::days(3))?;
    gw.enrol("ben", "br-x", &[], now - TimeDelta::days(3))?;
    gw.gateway.store.add_person("cai", "cai", "UTC")?;
    let t0 = (now - TimeDelta::hours(6)).duration_trunc(TimeDelta::minutes(1))?;
    let mut bridge = gw.raw_bridge("br-x").await?;
    let records = (0..6)
        .map(|h| minute_steps("band-x", "br-x", t0 + TimeDelta::hours(h), 10 + h))
        .collect();
    assert_eq!(send(&mut bridge, "band-x", records).await?.stored, 6);

    // A clinician read ana's steps before anyone noticed the mix-up.
    let body = json!({"grantee": "dr-ito", "grantee_kind": "practitioner", "purpose": "treatment", "data_types": ["step-count"]});
    assert_eq!(
        call(
            "POST",
            &gw.url("/api/v1/me/consents"),
            Some(&gw.owner_token("ana")),
            Some(body)
        )?
        .0,
        201
    );
    let ito = gw.gateway.keys.issue(
        "dr-ito",
        "user/Observation.rs",
        TimeDelta::hours(1),
        Utc::now(),
    )?;
    assert_eq!(
        call(
            "GET",
            &gw.url("/api/v1/subjects/ana/records?type=step-count"),
            Some(&ito),
            None
        )?
        .0,
        200
    );

    let admin =
        gw.gateway
            .keys
            .issue("operator-1", "phr:admin", TimeDelta::hours(1), Utc::now())?;
    let url = gw.url("/api/v1/admin/corrections");
    let correction = |to: &str| {
        json!({"kind": "reattribute", "device_id": "band-x", "from": rfc(t0 + TimeDelta::hours(2)),
        "to": rfc(t0 + TimeDelta::hours(4)), "from_person": "ana", "to_person": to, "why": "band worn by ben those hours"})
    };
    // Only operators correct, and never into someone who has not consented to storage.
    assert_eq!(
        call(
            "POST",
            &url,
            Some(&gw.owner_token("ana")),
            Some(correction("ben"))
        )?
        .0,
        403
    );
    let (s, b) = call("POST", &url, Some(&admin), Some(correction("cai")))?;
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("conflict")));

    let (s, b) = call("POST", &url, Some(&admin), Some(correction("ben")))?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["correction"]["records"], 2);
    let notify = b["correction"]["notify"].as_array().unwrap();
    assert_eq!(notify.len(), 1, "{notify:?}");
    assert_eq!(
        (notify[0]["actor"].as_str(), notify[0]["person_id"].as_str()),
        (Some("dr-ito"), Some("ana"))
    );

    assert_eq!(step_counts(&gw, "ana")?, [10, 11, 14, 15]);
    assert_eq!(step_counts(&gw, "ben")?, [12, 13]);
    for who in ["ana", "ben"] {
        let (_, list) = call(
            "GET",
            &gw.url("/api/v1/me/corrections"),
            Some(&gw.owner_token(who)),
            None,
        )?;
        let list = list["corrections"].as_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0]["kind"].as_str(), list[0]["by"].as_str()),
            (Some("reattribute"), Some("operator-1"))
        );
    }
    // The corrections table and the log cannot be edited by the application.
    let conn = rusqlite::Connection::open(gw.config.data_dir.join("phr.sqlite"))?;
    assert!(conn.execute("DELETE FROM corrections", []).is_err());
    assert_eq!(gw.gateway.store.verify_audit()?.broken, None);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_is_shown_only_to_the_device_owner_until_they_confirm_it() -> anyhow::Result<()>
{
    let gw = TestGateway::start().await?;
    gw.enrol("ana", "br-q", &[], Utc::now() - TimeDelta::days(1))?;
    gw.enrol("ben", "br-q", &[], Utc::now() - TimeDelta::days(1))?;
    let t0 = (Utc::now() - TimeDelta::hours(1)).duration_trunc(TimeDelta::minutes(1))?;
    let mut bridge = gw.raw_bridge("br-q").await?;
    let records = (0..3)
        .map(|m| minute_steps("band-q", "br-q", t0 + TimeDelta::minutes(m), 20 + m))
        .collect();
    assert_eq!(send(&mut bridge, "band-q", records).await?.quarantined, 3);

    let quarantine = |who: &str| -> anyhow::Result<serde_json::Value> {
        let (s, b) = call(
            "GET",
            &gw.url("/api/v1/me/quarantine"),
            Some(&gw.owner_token(who)),
            None,
        )?;
        assert_eq!(s, 200, "{b}");
        Ok(b["quarantine"].clone())
    };
    assert_eq!(
        quarantine("ana")?,
        json!([]),
        "nobody owns the band yet: nobody sees its quarantine"
    );
    gw.gateway.store.add_device("band-q", "br-q", None)?;
    gw.gateway.store.bind("band-q", "ana", Utc::now())?;
    let q = quarantine("ana")?;
    assert_eq!(
        (q[0]["device_id"].as_str(), q[0]["records"].as_u64()),
        (Some("band-q"), Some(3))
    );
    assert_eq!(q[0]["reasons"], json!(["no_binding"]));
    assert!(
        q[0].get("step_count").is_none() && !q.to_string().contains("\"body\""),
        "a summary, no values"
    );
    assert_eq!(quarantine("ben")?, json!([]));
    assert!(step_counts(&gw, "ana")?.is_empty());

    let range = json!({"device_id": "band-q", "from": rfc(t0 - TimeDelta::minutes(1)), "to": rfc(t0 + TimeDelta::minutes(10))});
    let confirm = gw.url("/api/v1/me/quarantine/confirm");
    assert_eq!(
        call(
            "POST",
            &confirm,
            Some(&gw.owner_token("ben")),
            Some(range.clone())
        )?
        .0,
        404
    );
    let (s, b) = call("POST", &confirm, Some(&gw.owner_token("ana")), Some(range))?;
    assert_eq!(
        (s, b["correction"]["records"].as_u64()),
        (200, Some(3)),
        "{b}"
    );
    assert_eq!(step_counts(&gw, "ana")?, [20, 21, 22]);
    assert_eq!(quarantine("ana")?, json!([]));

    // Ana says one minute was not hers: it leaves her records, into quarantine, not deleted.
    let unlink = json!({"device_id": "band-q", "from": rfc(t0 + TimeDelta::minutes(1)), "to": rfc(t0 + TimeDelta::minutes(2)),
                        "why": "my daughter wore it"});
    let (s, b) = call(
        "POST",
        &gw.url("/api/v1/me/corrections/unlink"),
        Some(&gw.owner_token("ana")),
        Some(unlink),
    )?;
    assert_eq!(
        (s, b["correction"]["records"].as_u64()),
        (200, Some(1)),
        "{b}"
    );
    assert_eq!(step_counts(&gw, "ana")?, [20, 22]);
    let q = quarantine("ana")?;
    assert_eq!(
        (q[0]["records"].as_u64(), q[0]["reasons"].clone()),
        (Some(1), json!(["unlinked"]))
    );
    gw.stop().await;
    Ok(())
}
