//! `/metrics` is an unauthenticated path by default, so a scrape must cost nothing but
//! memory: no store query per scrape, whatever the series holds. Optionally it needs a
//! token, or lives on its own listener so the public port does not serve it at all.

use chrono::{DurationRound, TimeDelta, Utc};
use serde_json::json;

use phr_e2e::{call, metric, minute_steps, send, TestGateway};

fn rfc(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The two gauges as `/metrics` shows them at `base`, and as `count(*)` finds them.
fn gauges_match(gw: &TestGateway, base: &str, what: &str) -> anyhow::Result<(u64, u64)> {
    let shown = (
        metric(base, "phr_series_records")? as u64,
        metric(base, "phr_quarantine_records")? as u64,
    );
    let counted = gw.gateway.store.counts()?;
    assert_eq!(shown, counted, "after {what}: /metrics vs count(*)");
    Ok(shown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_run_no_store_query_and_the_gauges_follow_every_write() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let base = gw.url("");
    gw.enrol(
        "ana",
        "br-m",
        &["band-a".into()],
        Utc::now() - TimeDelta::days(1),
    )?;
    let t0 = (Utc::now() - TimeDelta::hours(2)).duration_trunc(TimeDelta::minutes(1))?;
    let minutes = |device: &str, n: i64| {
        (0..n)
            .map(|m| minute_steps(device, "br-m", t0 + TimeDelta::minutes(m), 10 + m))
            .collect::<Vec<_>>()
    };
    let mut bridge = gw.raw_bridge("br-m").await?;
    assert_eq!(
        send(&mut bridge, "band-a", minutes("band-a", 30))
            .await?
            .stored,
        30
    );
    let q = send(&mut bridge, "band-q", minutes("band-q", 20)).await?;
    assert_eq!(q.quarantined, 20);
    // A resend is a duplicate: the gauges must not count it again.
    assert_eq!(
        send(&mut bridge, "band-q", minutes("band-q", 20))
            .await?
            .duplicate,
        20
    );
    assert_eq!(gauges_match(&gw, &base, "ingest")?, (30, 20));

    // The attack: scrape as often as one likes. Not one store access.
    let before = gw.gateway.store.accesses();
    for _ in 0..50 {
        let resp = ureq::get(&format!("{base}/metrics")).call()?;
        assert_eq!(resp.status(), 200);
        assert!(resp.into_string()?.contains("phr_series_records 30\n"));
    }
    assert_eq!(
        gw.gateway.store.accesses(),
        before,
        "a scrape touched the store"
    );

    // Every other write that adds or removes rows keeps the gauges exact.
    let ana = gw.owner_token("ana");
    gw.gateway.store.add_device("band-q", "br-m", None)?;
    gw.gateway
        .store
        .bind("band-q", "ana", t0 - TimeDelta::minutes(1))?;
    let range =
        json!({"device_id": "band-q", "from": rfc(t0), "to": rfc(t0 + TimeDelta::minutes(5))});
    let (s, b) = call(
        "POST",
        &gw.url("/api/v1/me/quarantine/confirm"),
        Some(&ana),
        Some(range),
    )?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(gauges_match(&gw, &base, "a confirmation")?, (35, 15));
    let unlink = json!({"device_id": "band-a", "from": rfc(t0), "to": rfc(t0 + TimeDelta::minutes(3)), "why": "not mine"});
    let (s, b) = call(
        "POST",
        &gw.url("/api/v1/me/corrections/unlink"),
        Some(&ana),
        Some(unlink),
    )?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(gauges_match(&gw, &base, "an unlink")?, (32, 18));
    gw.enrol("cai", "br-i", &[], Utc::now() - TimeDelta::days(1))?;
    let imported = gw
        .gateway
        .store
        .import_records("cai", &minutes("band-i", 7), Utc::now())?;
    assert_eq!(imported.stored, 7);
    assert_eq!(gauges_match(&gw, &base, "an import")?, (39, 18));
    let (s, b) = call(
        "DELETE",
        &gw.url("/api/v1/me/data?confirm=erase-all-my-data"),
        Some(&ana),
        None,
    )?;
    assert_eq!(s, 200, "{b}");
    let (series, _) = gauges_match(&gw, &base, "an erasure")?;
    assert_eq!(series, 7, "only cai's imported records are left");
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_is_required_to_scrape() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, "s3cret-scraper-token\n")?;
    let gw = TestGateway::start_configured(phr_e2e::external_broker(), |c| {
        c.metrics.token_file = Some(token_file.clone());
    })
    .await?;
    let url = gw.url("/metrics");
    let scrape = |auth: Option<&str>| -> anyhow::Result<u16> {
        let mut req = ureq::get(&url);
        if let Some(a) = auth {
            req = req.set("Authorization", a);
        }
        Ok(match req.call() {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(s, _)) => s,
            Err(e) => return Err(e.into()),
        })
    };
    assert_eq!(scrape(None)?, 401, "no token");
    assert_eq!(scrape(Some("Bearer wrong"))?, 401, "wrong token");
    assert_eq!(scrape(Some("Bearer s3cret-scraper-toke"))?, 401, "a prefix");
    assert_eq!(
        scrape(Some("Bearer s3cret-scraper-token-and-more"))?,
        401,
        "longer"
    );
    assert_eq!(
        scrape(Some(&format!("Bearer {}", gw.owner_token("ana"))))?,
        401,
        "a user's token"
    );
    assert_eq!(scrape(Some("Bearer s3cret-scraper-token"))?, 200);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_their_own_listener_are_not_served_on_the_public_port() -> anyhow::Result<()> {
    let gw = TestGateway::start_configured(phr_e2e::external_broker(), |c| {
        c.metrics.listen = Some(phr_e2e::loopback(0));
    })
    .await?;
    let own = gw
        .gateway
        .metrics_addr
        .expect("a metrics listener was configured");
    assert_ne!(own, gw.gateway.http_addr);
    let text = ureq::get(&format!("http://{own}/metrics"))
        .call()?
        .into_string()?;
    assert!(text.contains("# TYPE phr_series_records gauge"), "{text}");
    match ureq::get(&gw.url("/metrics")).call() {
        Err(ureq::Error::Status(404, r)) => {
            let body: serde_json::Value = r.into_json()?;
            assert_eq!(body["error"]["code"], "not_found");
        }
        other => panic!("the public port served /metrics: {other:?}"),
    }
    // The metrics listener serves nothing else.
    assert!(matches!(
        ureq::get(&format!("http://{own}/api/v1/me/records")).call(),
        Err(ureq::Error::Status(404, _))
    ));
    gw.stop().await;
    Ok(())
}
