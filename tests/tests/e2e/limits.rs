//! Request limits on a real gateway: per-caller rate limits (429, `Retry-After`, JSON error),
//! body size (413), query span (400), unknown routes (JSON 404).

use chrono::{TimeDelta, Utc};

use phr_e2e::{call, external_broker, TestGateway};
use phr_gateway::store::Clock;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_has_its_own_rate_limit_with_retry_after() -> anyhow::Result<()> {
    let gw = TestGateway::start_configured(external_broker(), |c| {
        c.http.requests_per_minute = 60;
        c.http.burst = 5;
    })
    .await?;
    let token = |sub: &str| {
        gw.gateway
            .keys
            .issue(
                sub,
                "system/Observation.rs",
                TimeDelta::hours(1),
                gw.clock.now(),
            )
            .expect("token")
    };
    let (acme, other) = (token("acme"), token("other-co"));
    let url = gw.url("/api/v1/sync");
    for i in 0..5 {
        let (s, b) = call("GET", &url, Some(&acme), None)?;
        assert_eq!(s, 200, "request {i}: {b}");
    }
    let resp = ureq::get(&url)
        .set("Authorization", &format!("Bearer {acme}"))
        .call();
    let Err(ureq::Error::Status(429, r)) = resp else {
        anyhow::bail!("the sixth request within the burst is limited");
    };
    let retry: u64 = r.header("Retry-After").unwrap_or_default().parse()?;
    assert!((1..=2).contains(&retry), "{retry}");
    let body: serde_json::Value = r.into_json()?;
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another company is not affected; probes are never limited.
    assert_eq!(call("GET", &url, Some(&other), None)?.0, 200);
    for _ in 0..20 {
        assert_eq!(call("GET", &gw.url("/healthz"), None, None)?.0, 200);
    }
    // After the wait (on the gateway's clock), acme may call again.
    gw.clock.advance(TimeDelta::seconds(i64::try_from(retry)?));
    assert_eq!(call("GET", &url, Some(&acme), None)?.0, 200);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_long_spans_and_unknown_routes_get_json_errors() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let ana = gw.owner_token("ana");
    gw.gateway.store.add_person("ana", "Ana", "Asia/Tokyo")?;
    let big = serde_json::json!({"grantee": "x".repeat(100 * 1024), "grantee_kind": "client",
                                 "purpose": "p", "data_types": ["step-count"]});
    let (s, b) = call(
        "POST",
        &gw.url("/api/v1/me/consents"),
        Some(&ana),
        Some(big),
    )?;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{b}"
    );
    let admin = gw
        .gateway
        .keys
        .issue("ops", "phr:admin", TimeDelta::hours(1), Utc::now())?;
    let big_client = serde_json::json!({"client_id": "big", "name": "x".repeat(100 * 1024),
                                        "scopes": ["system/Observation.rs"], "secret": true});
    let (s, b) = call(
        "POST",
        &gw.url("/api/v1/admin/clients"),
        Some(&admin),
        Some(big_client),
    )?;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "the admin API too: {b}"
    );
    let (s, b) = call(
        "GET",
        &gw.url(
            "/api/v1/me/records?type=step-count&from=2024-01-01T00:00:00Z&to=2025-06-01T00:00:00Z",
        ),
        Some(&ana),
        None,
    )?;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("span_too_large")),
        "{b}"
    );
    let (s, b) = call(
        "GET",
        &gw.url(
            "/api/v1/me/records?type=step-count&from=2024-01-01T00:00:00Z&to=2024-12-31T00:00:00Z",
        ),
        Some(&ana),
        None,
    )?;
    assert_eq!(s, 200, "a year is fine: {b}");
    let (s, b) = call("GET", &gw.url("/no/such/route"), None, None)?;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, b) = call(
        "POST",
        &gw.url("/api/v1/me/consents"),
        Some(&ana),
        Some(serde_json::json!([1, 2])),
    )?;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_body")),
        "{b}"
    );
    gw.stop().await;
    Ok(())
}
