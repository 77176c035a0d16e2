//! The API refuses what it must, with stable JSON error codes and no health data.

use chrono::{TimeDelta, Utc};

use phr_e2e::{get_json, TestGateway};
use phr_gateway::store::Clock;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_queries_are_checked() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let url = gw.url("/api/v1/me/records?type=step-count");
    let (s, body) = get_json(&gw.url("/healthz"), None)?;
    assert_eq!((s, body["status"].as_str()), (200, Some("ok")));

    let (s, body) = get_json(&url, None)?;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (s, _) = get_json(&url, Some("not.a.token"))?;
    assert_eq!(s, 401);

    // Signed by another gateway's key.
    let other = TestGateway::start_with(None).await?;
    let foreign = other.owner_token("alice");
    assert_eq!(get_json(&url, Some(&foreign))?.0, 401);
    // Expired.
    let expired = gw.gateway.keys.issue(
        "alice",
        "patient/Observation.rs",
        TimeDelta::seconds(1),
        Utc::now() - TimeDelta::hours(2),
    )?;
    assert_eq!(get_json(&url, Some(&expired))?.0, 401);
    // Valid, but without a scope to read observations.
    let no_scope = gw
        .gateway
        .keys
        .issue("alice", "openid", TimeDelta::hours(1), Utc::now())?;
    let (s, body) = get_json(&url, Some(&no_scope))?;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );

    let token = gw.owner_token("alice");
    for (query, code) in [
        ("type=steps", "invalid_type"),
        ("type=step-count&from=yesterday", "invalid_time"),
        (
            "type=step-count&from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            "invalid_range",
        ),
        ("type=step-count&limit=0", "invalid_limit"),
        ("type=step-count&cursor=zz", "invalid_cursor"),
        ("type=step-count&person=bob", "invalid_query"),
        ("", "invalid_query"),
    ] {
        let (s, body) = get_json(
            &gw.url(&format!("/api/v1/me/records?{query}")),
            Some(&token),
        )?;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (400, Some(code)),
            "{query}: {body}"
        );
    }
    let (s, body) = get_json(&url, Some(&token))?;
    assert_eq!(s, 200);
    assert_eq!(
        body,
        serde_json::json!({"records": [], "next_cursor": null})
    );
    other.stop().await;
    gw.stop().await;
    Ok(())
}

/// The gateway's own tokens live by the gateway's clock, not the system's: a token that is
/// valid on the system clock is refused once the gateway's clock is past its `exp` and the
/// 30 s leeway; one issued for the clock's future is refused until the clock gets there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_live_by_the_gateways_clock() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let url = gw.url("/api/v1/me/records?type=step-count");
    let issue = |ttl: TimeDelta, at| {
        gw.gateway
            .keys
            .issue("alice", "patient/Observation.rs", ttl, at)
    };
    let minute = issue(TimeDelta::minutes(1), Utc::now())?;
    let tomorrow = issue(TimeDelta::hours(1), gw.clock.now() + TimeDelta::days(1))?;
    assert_eq!(get_json(&url, Some(&minute))?.0, 200);
    assert_eq!(get_json(&url, Some(&tomorrow))?.0, 401, "not valid yet");
    gw.clock.advance(TimeDelta::seconds(60 + 31));
    assert_eq!(
        get_json(&url, Some(&minute))?.0,
        401,
        "expired on the gateway's clock"
    );
    gw.clock.advance(TimeDelta::days(1));
    assert_eq!(
        get_json(&url, Some(&tomorrow))?.0,
        200,
        "valid on the gateway's clock"
    );
    gw.stop().await;
    Ok(())
}
