//! Which device counts (issue #15), end to end: one person with two bands that both sent the
//! same half hour of a past day, with different counts, through an enrolled bridge. Her
//! daily summary counts that half hour once (the default rule's band, totals computed here
//! by hand); she moves the other band up on her dashboard (a real form post with the
//! session's CSRF token) and the same past day's total becomes the other band's; the change
//! is in her disclosure log. A post without the token, or naming someone else's band,
//! changes nothing. The API does the same (`GET`/`PUT /api/v1/me/sources`), refuses a bad
//! order with 400 `invalid_order`, and a clinician's or a company's token cannot change it.

use chrono::{FixedOffset, NaiveDate, TimeDelta, Utc};
use serde_json::{json, Value};

use phr_e2e::{call, minute_steps, send, TestGateway};
use phr_gateway::dashboard::{owner, sources};
use phr_gateway::store::audit::Action;
use phr_schema::RecordType;

use crate::dashboard_pairing::Browser;

const BRIDGE: &str = "br-home";
const BAND_A: &str = "band-a";
const BAND_B: &str = "band-b";
const BOS: &str = "band-bo";
/// Per minute, over the same 30 minutes.
const A_STEPS: i64 = 100;
const B_STEPS: i64 = 80;
const MINUTES: i64 = 30;

/// Ana's step total of `day` from her daily summary (`None`: no steps that day).
fn total(gw: &TestGateway, day: NaiveDate) -> anyhow::Result<Option<i64>> {
    let (s, b) = call(
        "GET",
        &gw.url(&format!(
            "/api/v1/subjects/ana/summary/daily?from={day}&to={day}&type=step-count"
        )),
        Some(&gw.owner_token("ana")),
        None,
    )?;
    anyhow::ensure!(s == 200, "summary answered {s}: {b}");
    Ok(b["days"]
        .as_array()
        .and_then(|d| d.first())
        .and_then(|d| d["steps"]["total"].as_i64()))
}

/// The device-order entries of `person`'s disclosure log, oldest first (their purposes).
fn order_changes(gw: &TestGateway, person: &str) -> Vec<String> {
    gw.gateway
        .store
        .disclosures(person, 0, 10_000)
        .unwrap()
        .into_iter()
        .filter(|l| l.entry.action == Action::SourcePriority)
        .map(|l| l.entry.purpose)
        .collect()
}

fn steps_order(gw: &TestGateway) -> Vec<String> {
    gw.gateway
        .store
        .source_order("ana", RecordType::StepCount)
        .unwrap()
}

/// The `order` values of the forms in the steps part of the home page.
fn steps_forms(home: &str) -> Vec<String> {
    let start = home.find("id=\"sources-step-count\"").unwrap_or(home.len());
    let end = home
        .find("id=\"sources-sleep-episode\"")
        .unwrap_or(home.len());
    home.get(start..end)
        .unwrap_or_default()
        .split("name=\"order\" value=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_owned)
        .collect()
}

fn token(gw: &TestGateway, subject: &str, scope: &str) -> String {
    gw.gateway
        .keys
        .issue(subject, scope, TimeDelta::hours(1), Utc::now())
        .expect("token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bands_over_the_same_minutes_count_once_and_the_owner_chooses_which(
) -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let store = gw.gateway.store.clone();
    let since = Utc::now() - TimeDelta::days(10);
    // Band a first, band b an hour later: by the default rule, with equal coverage, the one
    // paired later (b) counts.
    gw.enrol("ana", BRIDGE, &[BAND_A.to_owned()], since)?;
    store.add_device(BAND_B, BRIDGE, None)?;
    store.bind(BAND_B, "ana", since + TimeDelta::hours(1))?;
    gw.enrol("bo", BRIDGE, &[BOS.to_owned()], since)?;

    // Two days ago in Tokyo (Ana's zone, no DST), 10:00 to 10:30: both bands, every minute.
    let tokyo = FixedOffset::east_opt(9 * 3600).unwrap();
    let day = Utc::now().with_timezone(&tokyo).date_naive() - TimeDelta::days(2);
    let start = day
        .and_hms_opt(10, 0, 0)
        .unwrap()
        .and_local_timezone(tokyo)
        .unwrap()
        .with_timezone(&Utc);
    let mut raw = gw.raw_bridge(BRIDGE).await?;
    for (band, count) in [(BAND_A, A_STEPS), (BAND_B, B_STEPS)] {
        let records: Vec<_> = (0..MINUTES)
            .map(|m| minute_steps(band, BRIDGE, start + TimeDelta::minutes(m), count))
            .collect();
        let ack = send(&mut raw, band, records).await?;
        assert_eq!(ack.stored as i64, MINUTES, "{ack:?}");
    }
    // Counted once, band b's: 30 × 80, not 30 × 100 + 30 × 80.
    assert_eq!(total(&gw, day)?, Some(2_400));

    // Her dashboard: b listed first (it counted that day), a's Move up puts a first.
    let ana = Browser::sign_in(&gw, "ana")?;
    let home = ana.get(owner::HOME)?;
    assert_eq!(home.status, 200, "{}", home.body);
    assert!(home.body.contains("Which device counts"), "{}", home.body);
    assert!(home.body.contains("past days too"), "{}", home.body);
    assert!(
        home.body.contains("By the default rule: each day"),
        "{}",
        home.body
    );
    // b's Move down and a's Move up both carry "a, then b"; no reset without an order.
    assert_eq!(
        steps_forms(&home.body),
        ["band-a,band-b", "band-a,band-b"],
        "{}",
        home.body
    );
    let csrf = ana.csrf()?;
    let path = sources::order_path(RecordType::StepCount);

    // Without the session's token, or with Bo's band: refused, nothing changes.
    let forged = ana.post(&path, &[("order", "band-a,band-b")])?;
    assert_eq!(forged.status, 403, "{}", forged.body);
    let forged = ana.post(&path, &[("csrf", "not-the-token"), ("order", "band-a")])?;
    assert_eq!(forged.status, 403, "{}", forged.body);
    let theirs = ana.post(&path, &[("csrf", &csrf), ("order", "band-bo,band-a")])?;
    assert_eq!(theirs.status, 400, "{}", theirs.body);
    assert!(theirs.body.contains("not one of yours"), "{}", theirs.body);
    let twice = ana.post(&path, &[("csrf", &csrf), ("order", "band-a,band-a")])?;
    assert_eq!(twice.status, 400, "{}", twice.body);
    let unknown = ana.post(
        "/dashboard/me/sources/blood-pressure",
        &[("csrf", &csrf), ("order", "band-a")],
    )?;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert!(steps_order(&gw).is_empty());
    assert!(order_changes(&gw, "ana").is_empty());
    assert_eq!(total(&gw, day)?, Some(2_400));

    // The move: a first. The past day is now band a's: 30 × 100.
    let moved = ana.post(&path, &[("csrf", &csrf), ("order", "band-a,band-b")])?;
    assert_eq!(moved.status, 303, "{}", moved.body);
    assert_eq!(moved.location.as_deref(), Some(sources::SECTION));
    assert_eq!(steps_order(&gw), [BAND_A, BAND_B]);
    assert_eq!(total(&gw, day)?, Some(3_000));
    assert_eq!(
        order_changes(&gw, "ana"),
        ["step-count sources in order: band-a, band-b"]
    );
    let home = ana.get(owner::HOME)?;
    assert!(
        home.body.contains("Your order first (band-a, band-b)"),
        "{}",
        home.body
    );
    // Her log on the page says so too.
    assert!(home.body.contains("device order"), "{}", home.body);
    assert!(
        home.body
            .contains("step-count sources in order: band-a, band-b"),
        "{}",
        home.body
    );
    // Now: a's Move down, b's Move up (both "b, a"), and back to the default rule.
    assert_eq!(
        steps_forms(&home.body),
        ["band-b,band-a", "band-b,band-a", ""],
        "{}",
        home.body
    );
    // Bo's order is his own: untouched.
    assert!(order_changes(&gw, "bo").is_empty());

    // The API.
    let ana_token = gw.owner_token("ana");
    let (s, b) = call("GET", &gw.url("/api/v1/me/sources"), Some(&ana_token), None)?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["time_zone"], "Asia/Tokyo");
    let steps = b["types"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["type"] == "step-count"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(steps["order"], json!([BAND_A, BAND_B]), "{b}");
    assert_eq!(
        steps["devices"],
        json!([
            {"device_id": BAND_A, "rank": 1, "days_counted": 1},
            {"device_id": BAND_B, "rank": 2, "days_counted": 0},
        ]),
        "{b}"
    );
    let types: Vec<&str> = b["types"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["type"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(types, ["step-count", "sleep-episode", "heart-rate"]);

    let put =
        |who: &str, path: &str, body: Value| call("PUT", &gw.url(path), Some(who), Some(body));
    let (s, b) = put(
        &ana_token,
        "/api/v1/me/sources/step-count",
        json!({"order": [BAND_B]}),
    )?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["type"], "step-count");
    assert_eq!(b["order"], json!([BAND_B]));
    assert_eq!(b["devices"][0]["device_id"], BAND_B, "{b}");
    assert_eq!(b["devices"][0]["days_counted"], 1, "{b}");
    assert!(b["rule"]
        .as_str()
        .unwrap_or_default()
        .starts_with("Your order first (band-b)"));
    assert_eq!(total(&gw, day)?, Some(2_400));

    // Bad orders: 400 invalid_order, nothing changes.
    for bad in [json!([BOS]), json!([BAND_A, BAND_A]), json!(["nobody's"])] {
        let (s, b) = put(
            &ana_token,
            "/api/v1/me/sources/step-count",
            json!({ "order": bad }),
        )?;
        assert_eq!(s, 400, "{bad}: {b}");
        assert_eq!(b["error"]["code"], "invalid_order", "{b}");
    }
    let (s, b) = put(
        &ana_token,
        "/api/v1/me/sources/step-count",
        json!({"order": [BAND_A], "extra": 1}),
    )?;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["code"], "invalid_body", "{b}");
    let (s, _) = put(
        &ana_token,
        "/api/v1/me/sources/blood-pressure",
        json!({"order": []}),
    )?;
    assert_eq!(s, 404);
    // Bo cannot order Ana's band for himself either.
    let (s, b) = put(
        &gw.owner_token("bo"),
        "/api/v1/me/sources/step-count",
        json!({"order": [BAND_A]}),
    )?;
    assert_eq!(s, 400, "{b}");
    assert_eq!(steps_order(&gw), [BAND_B]);

    // A clinician's or a company's token: 403, read or write.
    for (who, scope) in [
        ("dr-ito", "user/Observation.rs"),
        ("acme", "system/Observation.rs"),
    ] {
        let t = token(&gw, who, scope);
        let (s, b) = put(&t, "/api/v1/me/sources/step-count", json!({"order": []}))?;
        assert_eq!(s, 403, "{who}: {b}");
        let (s, _) = call("GET", &gw.url("/api/v1/me/sources"), Some(&t), None)?;
        assert_eq!(s, 403, "{who}");
    }
    // A read-only owner token may look, not change.
    let read_only = token(&gw, "ana", "patient/Device.r");
    let (s, _) = call("GET", &gw.url("/api/v1/me/sources"), Some(&read_only), None)?;
    assert_eq!(s, 200);
    let (s, _) = put(
        &read_only,
        "/api/v1/me/sources/step-count",
        json!({"order": []}),
    )?;
    assert_eq!(s, 403);
    assert_eq!(steps_order(&gw), [BAND_B]);

    // Back to the default rule: still b (paired later), and the log has all three changes.
    let (s, b) = put(
        &ana_token,
        "/api/v1/me/sources/step-count",
        json!({"order": []}),
    )?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["order"], json!([]));
    assert_eq!(total(&gw, day)?, Some(2_400));
    assert_eq!(
        order_changes(&gw, "ana"),
        [
            "step-count sources in order: band-a, band-b",
            "step-count sources in order: band-b",
            "step-count sources: back to the default order",
        ]
    );
    gw.stop().await;
    Ok(())
}
