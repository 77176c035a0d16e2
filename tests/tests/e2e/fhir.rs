//! Other parties' views against a real gateway: the people who consent to a company
//! (`GET /api/v1/subjects`), daily summaries in the person's time zone, FHIR R4 Observation
//! search (paged searchset Bundles, OperationOutcome errors) and the CapabilityStatement.

use std::collections::BTreeSet;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeDelta, TimeZone, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use phr_e2e::{call, grant_consent, minute_steps, night, send, TestGateway};
use phr_gateway::store::Clock;
use phr_schema::record::{HeartRate, PointFrame, Provenance, UnitValue, BEATS_PER_MINUTE};
use phr_schema::{Body, Record};

fn token(gw: &TestGateway, subject: &str, scope: &str) -> String {
    gw.gateway
        .keys
        .issue(subject, scope, TimeDelta::hours(1), gw.clock.now())
        .expect("token")
}

fn disclosures(gw: &TestGateway, person: &str) -> anyhow::Result<Vec<Value>> {
    let (s, b) = call(
        "GET",
        &gw.url("/api/v1/me/disclosures"),
        Some(&gw.owner_token(person)),
        None,
    )?;
    anyhow::ensure!(s == 200, "{b}");
    Ok(b["disclosures"].as_array().cloned().unwrap_or_default())
}

/// `GET` returning status, `Content-Type` and JSON body.
fn fhir_get(url: &str, token: Option<&str>) -> anyhow::Result<(u16, String, Value)> {
    let mut req = ureq::get(url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.into()),
    };
    let status = resp.status();
    let content_type = resp.header("Content-Type").unwrap_or_default().to_owned();
    let body: Value = serde_json::from_str(&resp.into_string()?)?;
    Ok((status, content_type, body))
}

/// Asserts an OperationOutcome with `status`, FHIR issue type `issue` and stable `code`.
fn outcome(
    url: &str,
    token: Option<&str>,
    status: u16,
    issue: &str,
    code: &str,
) -> anyhow::Result<()> {
    let (s, ct, body) = fhir_get(url, token)?;
    assert_eq!(s, status, "{url}: {body}");
    assert!(ct.starts_with("application/fhir+json"), "{ct}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert_eq!(body["issue"][0]["code"], issue, "{body}");
    assert_eq!(
        body["issue"][0]["details"]["coding"][0]["code"], code,
        "{body}"
    );
    assert!(body.get("entry").is_none());
    Ok(())
}

const TOKYO: i32 = 9 * 3600;

/// `day` at `h:m` in Tokyo.
fn tokyo(day: NaiveDate, h: u32, m: u32) -> DateTime<Utc> {
    FixedOffset::east_opt(TOKYO)
        .unwrap()
        .from_local_datetime(&day.and_time(NaiveTime::from_hms_opt(h, m, 0).unwrap()))
        .unwrap()
        .with_timezone(&Utc)
}

fn heart(device: &str, bridge: &str, at: DateTime<Utc>, bpm: f64) -> Record {
    let at = at.fixed_offset();
    Record::new(
        device,
        bridge,
        at,
        Provenance::sensed("test/1"),
        Body::HeartRate(HeartRate {
            effective_time_frame: PointFrame { date_time: at },
            heart_rate: UnitValue::new(bpm, BEATS_PER_MINUTE),
        }),
    )
}

/// Ana (Asia/Tokyo) has steps and a night's sleep ending on Tokyo day A, nothing on day B,
/// and steps and a night (begun late on B) ending on day C; and heart rates. Acme (a company)
/// may read her steps and sleep, not her heart rate.
struct World {
    gw: TestGateway,
    acme: String,
    day_a: NaiveDate,
    day_c: NaiveDate,
    steps: Vec<Record>,
    sleep: Vec<Record>,
}

async fn world() -> anyhow::Result<World> {
    let gw = TestGateway::start().await?;
    let now = Utc::now();
    gw.enrol(
        "ana",
        "br-ana",
        &["band-ana".into()],
        now - TimeDelta::days(6),
    )?;
    let today = now
        .with_timezone(&FixedOffset::east_opt(TOKYO).unwrap())
        .date_naive();
    let (day_a, day_b, day_c) = (
        today - TimeDelta::days(4),
        today - TimeDelta::days(3),
        today - TimeDelta::days(2),
    );
    let step = |t, n| minute_steps("band-ana", "br-ana", t, n);
    let steps = vec![
        step(tokyo(day_a, 8, 0), 100),
        step(tokyo(day_a, 12, 30), 250),
        // 23:59-00:00: counts towards the day it starts in.
        step(tokyo(day_a, 23, 59), 7),
        step(tokyo(day_c, 0, 0), 11),
        step(tokyo(day_c, 9, 15), 300),
    ];
    let sleep = vec![
        // 23:00 the evening before A to 06:00 on A: A's night.
        night(
            "band-ana",
            "br-ana",
            tokyo(day_a - TimeDelta::days(1), 23, 0),
            7,
        ),
        // 23:30 on B to 05:30 on C: C's night, though it began on B.
        night("band-ana", "br-ana", tokyo(day_b, 23, 30), 6),
    ];
    let hearts = vec![
        heart("band-ana", "br-ana", tokyo(day_a, 9, 0), 61.0),
        heart("band-ana", "br-ana", tokyo(day_c, 9, 0), 64.0),
    ];
    let mut bridge = gw.raw_bridge("br-ana").await?;
    let mut all = steps.clone();
    all.extend(sleep.iter().cloned());
    all.extend(hearts);
    let ack = send(&mut bridge, "band-ana", all).await?;
    assert_eq!((ack.stored, ack.rejected.len()), (9, 0), "{ack:?}");
    grant_consent(
        &gw,
        "ana",
        json!({"grantee": "acme", "grantee_kind": "client", "purpose": "wellness programme",
               "data_types": ["step-count", "sleep-episode"]}),
    )?;
    let acme = token(&gw, "acme", "system/Observation.rs");
    Ok(World {
        gw,
        acme,
        day_a,
        day_c,
        steps,
        sleep,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_lists_exactly_the_people_consenting_now() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let acme = token(&gw, "acme", "system/Observation.rs");
    let list = |t: &str| -> anyhow::Result<Vec<String>> {
        let (s, b) = call("GET", &gw.url("/api/v1/subjects"), Some(t), None)?;
        anyhow::ensure!(s == 200, "{b}");
        Ok(b["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["person_id"].as_str().unwrap().to_owned())
            .collect())
    };
    assert!(list(&acme)?.is_empty());

    let (from, to) = ("2026-01-01T00:00:00Z", "2026-07-01T00:00:00Z");
    let ana_1 = grant_consent(
        &gw,
        "ana",
        json!({"grantee": "acme", "grantee_kind": "client", "purpose": "wellness programme",
               "data_types": ["step-count", "sleep-episode"]}),
    )?;
    let ana_2 = grant_consent(
        &gw,
        "ana",
        json!({"grantee": "acme", "grantee_kind": "client", "purpose": "research",
               "data_types": ["heart-rate"], "window_from": from, "window_to": to,
               "valid_until": "2099-01-01T00:00:00Z"}),
    )?;
    let ben = grant_consent(
        &gw,
        "ben",
        json!({"grantee": "acme", "grantee_kind": "client", "purpose": "coaching",
               "data_types": ["step-count"]}),
    )?;
    // Cy consents to a clinician who happens to be called acme: not to the company.
    grant_consent(
        &gw,
        "cy",
        json!({"grantee": "acme", "grantee_kind": "practitioner", "purpose": "treatment",
               "data_types": ["step-count"]}),
    )?;
    // Dee's consent lapses by itself in ten minutes (of the gateway's clock).
    let lapse = gw.clock.now() + TimeDelta::minutes(10);
    grant_consent(
        &gw,
        "dee",
        json!({"grantee": "acme", "grantee_kind": "client", "purpose": "trial",
               "data_types": ["step-count"],
               "valid_until": lapse.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)}),
    )?;
    // Eve consents to another company only.
    grant_consent(
        &gw,
        "eve",
        json!({"grantee": "globex", "grantee_kind": "client", "purpose": "x",
               "data_types": ["step-count"]}),
    )?;

    let (s, body) = call("GET", &gw.url("/api/v1/subjects"), Some(&acme), None)?;
    assert_eq!(s, 200, "{body}");
    let subjects = body["subjects"].as_array().unwrap();
    let people: Vec<&str> = subjects
        .iter()
        .map(|p| p["person_id"].as_str().unwrap())
        .collect();
    assert_eq!(people, ["ana", "ben", "dee"]);
    let ana = &subjects[0]["consents"];
    assert_eq!(ana.as_array().unwrap().len(), 2, "one entry per person");
    assert_eq!(
        ana[0],
        json!({"consent_id": ana_1, "data_types": ["step-count", "sleep-episode"],
               "window": {"from": null, "to": null}, "valid_until": null,
               "purpose": "wellness programme"})
    );
    assert_eq!(ana[1]["consent_id"], ana_2.as_str());
    assert_eq!(ana[1]["purpose"], "research");
    assert_eq!(ana[1]["data_types"], json!(["heart-rate"]));
    let window = &ana[1]["window"];
    assert_eq!(
        (
            window["from"].as_str().unwrap().parse::<DateTime<Utc>>()?,
            window["to"].as_str().unwrap().parse::<DateTime<Utc>>()?,
        ),
        (from.parse()?, to.parse()?)
    );
    assert!(ana[1]["valid_until"]
        .as_str()
        .unwrap()
        .starts_with("2099-01-01"));

    // The clinician acme sees Cy only; a clinician without consents sees nobody.
    let dr_acme = token(&gw, "acme", "user/Observation.rs");
    assert_eq!(list(&dr_acme)?, ["cy"]);
    assert!(list(&token(&gw, "dr-ito", "user/Observation.rs"))?.is_empty());
    // No party kind: refused.
    for t in [gw.owner_token("ana"), token(&gw, "acme", "openid")] {
        let (s, b) = call("GET", &gw.url("/api/v1/subjects"), Some(&t), None)?;
        assert_eq!((s, b["error"]["code"].as_str()), (403, Some("forbidden")));
    }
    assert_eq!(call("GET", &gw.url("/api/v1/subjects"), None, None)?.0, 401);

    // Expiry and withdrawal take effect on the next request: the clock moves past the lapse.
    assert_eq!(list(&acme)?, ["ana", "ben", "dee"], "in force until then");
    gw.clock
        .advance(lapse - gw.clock.now() + TimeDelta::milliseconds(200));
    assert_eq!(list(&acme)?, ["ana", "ben"]);
    let (s, _) = call(
        "DELETE",
        &gw.url(&format!("/api/v1/me/consents/{ben}")),
        Some(&gw.owner_token("ben")),
        None,
    )?;
    assert_eq!(s, 200);
    assert_eq!(list(&acme)?, ["ana"]);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_summary_sums_what_was_sent_per_local_day() -> anyhow::Result<()> {
    let w = world().await?;
    let url = |from: NaiveDate, to: NaiveDate, extra: &str| {
        w.gw.url(&format!(
            "/api/v1/subjects/ana/summary/daily?from={from}&to={to}{extra}"
        ))
    };
    let before = disclosures(&w.gw, "ana")?.len();
    let (s, body) = call("GET", &url(w.day_a, w.day_c, ""), Some(&w.acme), None)?;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["time_zone"],
        json!({"name": "Asia/Tokyo", "registered": "Asia/Tokyo", "fallback": false})
    );
    assert_eq!(body["types"], json!(["step-count", "sleep-episode"]));
    let days = body["days"].as_array().unwrap();
    let dates: Vec<&str> = days.iter().map(|d| d["date"].as_str().unwrap()).collect();
    let (a, c) = (w.day_a.to_string(), w.day_c.to_string());
    assert_eq!(
        dates,
        [a.as_str(), c.as_str()],
        "the gap day is absent: {body}"
    );

    // Steps: the sums of what was sent, by the Tokyo day each record starts in.
    let total = |day: NaiveDate| -> i64 {
        w.steps
            .iter()
            .filter_map(|r| match &r.body {
                Body::StepCount(s) => Some(s),
                _ => None,
            })
            .filter(|s| {
                s.effective_time_frame
                    .start()
                    .with_timezone(&FixedOffset::east_opt(TOKYO).unwrap())
                    .date_naive()
                    == day
            })
            .map(|s| s.step_count)
            .sum()
    };
    assert_eq!(total(w.day_a), 357);
    assert_eq!(
        days[0]["steps"],
        json!({"total": total(w.day_a), "records": 3})
    );
    assert_eq!(
        days[1]["steps"],
        json!({"total": total(w.day_c), "records": 2})
    );
    // Sleep: the night counts towards the day one wakes up.
    assert_eq!(
        days[0]["sleep"],
        json!({"episodes": 1, "total_minutes": 420.0, "in_bed_minutes": 420.0,
               "efficiency_percent": 100.0,
               "stages": {"awake": 0.0, "light": 240.0, "deep": 180.0, "rem": 0.0}})
    );
    assert_eq!(days[1]["sleep"]["total_minutes"], 360.0);
    assert_eq!(days[1]["sleep"]["stages"]["deep"], 180.0);
    assert_eq!(days[0]["start"], format!("{a}T00:00:00+09:00"));
    assert_eq!(
        (days[0]["hours"].as_f64(), days[0]["partial"].as_bool()),
        (Some(24.0), Some(false))
    );
    assert_eq!(body["records"], w.steps.len() + w.sleep.len());

    // One disclosure entry for the read.
    let log = disclosures(&w.gw, "ana")?;
    assert_eq!(log.len(), before + 1);
    let last = log.last().unwrap();
    assert_eq!(
        (
            last["actor"].as_str(),
            last["outcome"].as_str(),
            last["records"].as_u64()
        ),
        (Some("acme"), Some("disclosed"), Some(7))
    );
    assert_eq!(last["data_types"], json!(["step-count", "sleep-episode"]));

    // One type; the person themselves; refusals.
    let (s, body) = call(
        "GET",
        &url(w.day_a, w.day_c, "&type=step-count"),
        Some(&w.acme),
        None,
    )?;
    assert_eq!(s, 200);
    let days = body["days"].as_array().unwrap();
    assert!(!days.is_empty(), "{body}");
    assert!(days.iter().all(|d| d.get("sleep").is_none()));
    let (s, mine) = call(
        "GET",
        &url(w.day_a, w.day_c, ""),
        Some(&w.gw.owner_token("ana")),
        None,
    )?;
    assert_eq!(s, 200);
    assert_eq!(mine["days"].as_array().unwrap().len(), 2);
    let (s, b) = call(
        "GET",
        &url(w.day_a, w.day_a + TimeDelta::days(366), ""),
        Some(&w.acme),
        None,
    )?;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("span_too_large"))
    );
    let (s, _) = call(
        "GET",
        &url(w.day_a, w.day_a + TimeDelta::days(365), ""),
        Some(&w.acme),
        None,
    )?;
    assert_eq!(s, 200, "366 days inclusive is allowed");
    let (s, b) = call(
        "GET",
        &url(w.day_a, w.day_c, "&type=heart-rate"),
        Some(&w.acme),
        None,
    )?;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_type"))
    );
    let ito = token(&w.gw, "dr-ito", "user/Observation.rs");
    let (s, b) = call("GET", &url(w.day_a, w.day_c, ""), Some(&ito), None)?;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")));
    assert_eq!(
        disclosures(&w.gw, "ana")?.last().unwrap()["outcome"],
        "denied"
    );

    // A time zone the database does not know: UTC days, and the answer says so.
    w.gw.gateway
        .store
        .add_person("zed", "Zed", "Mars/Olympus_Mons")?;
    let (s, b) = call(
        "GET",
        &w.gw
            .url("/api/v1/subjects/zed/summary/daily?from=2026-01-01&to=2026-01-31"),
        Some(&w.gw.owner_token("zed")),
        None,
    )?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["time_zone"],
        json!({"name": "UTC", "registered": "Mars/Olympus_Mons", "fallback": true})
    );
    assert_eq!(b["days"], json!([]), "no data, no days (never zeros)");
    w.gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_pages_through_exactly_the_consented_records() -> anyhow::Result<()> {
    let w = world().await?;
    let before = disclosures(&w.gw, "ana")?.len();
    let mut url = w.gw.url("/fhir/Observation?patient=ana&_count=2");
    let mut ids: Vec<String> = Vec::new();
    let mut pages = Vec::new();
    loop {
        let (s, ct, bundle) = fhir_get(&url, Some(&w.acme))?;
        assert_eq!(s, 200, "{bundle}");
        assert_eq!(ct, "application/fhir+json");
        assert_eq!(
            (bundle["resourceType"].as_str(), bundle["type"].as_str()),
            (Some("Bundle"), Some("searchset"))
        );
        let links = bundle["link"].as_array().unwrap();
        assert_eq!(links[0]["relation"], "self");
        for e in bundle["entry"].as_array().unwrap() {
            let id = e["resource"]["id"].as_str().unwrap().to_owned();
            assert_eq!(e["fullUrl"], format!("urn:uuid:{id}"));
            assert_eq!(e["search"]["mode"], "match");
            assert_eq!(e["resource"]["resourceType"], "Observation");
            assert_eq!(e["resource"]["subject"]["reference"], "Patient/ana");
            ids.push(id);
        }
        pages.push(bundle["entry"].as_array().unwrap().len());
        match links.iter().find(|l| l["relation"] == "next") {
            Some(next) => {
                assert!(bundle.get("total").is_none(), "a partial page has no total");
                url = next["url"].as_str().unwrap().to_owned();
                assert!(url.contains("_cursor="), "{url}");
            }
            None => break,
        }
    }
    assert_eq!(pages, [2, 2, 2, 1]);
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no record twice");
    let expected: BTreeSet<String> = w
        .steps
        .iter()
        .chain(&w.sleep)
        .map(|r| r.record_id.to_string())
        .collect();
    assert_eq!(
        ids.iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "exactly the consented records: steps and sleep, no heart rate"
    );
    // One disclosure entry per search (page), each counting what it disclosed.
    let log = disclosures(&w.gw, "ana")?;
    let new: Vec<&Value> = log[before..].iter().collect();
    assert_eq!(new.len(), 4);
    for (e, n) in new.iter().zip(&pages) {
        assert_eq!(
            (
                e["actor"].as_str(),
                e["outcome"].as_str(),
                e["records"].as_u64()
            ),
            (Some("acme"), Some("disclosed"), Some(*n as u64))
        );
    }

    // By code, with or without the system; all on one page, so `total` is given.
    for code in ["http://loinc.org%7C93832-4", "93832-4"] {
        let (s, _, b) = fhir_get(
            &w.gw.url(&format!(
                "/fhir/Observation?patient=Patient/ana&code={code}"
            )),
            Some(&w.acme),
        )?;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["total"], 2);
        let got: BTreeSet<String> = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
            .collect();
        let sleep: BTreeSet<String> = w.sleep.iter().map(|r| r.record_id.to_string()).collect();
        assert_eq!(got, sleep);
        // A self link and no next one.
        let relations: Vec<&str> = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["relation"].as_str())
            .collect();
        assert_eq!(relations, ["self"], "{b}");
    }
    // By date: steps measured from day C (Tokyo) on.
    let c0 = tokyo(w.day_c, 0, 0).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (s, _, b) = fhir_get(
        &w.gw.url(&format!(
            "/fhir/Observation?patient=ana&code=55423-8&date=ge{c0}"
        )),
        Some(&w.acme),
    )?;
    assert_eq!((s, b["total"].as_u64()), (200, Some(2)), "{b}");
    let (s, _, b) = fhir_get(
        &w.gw.url(&format!(
            "/fhir/Observation?patient=ana&code=55423-8&date=lt{c0}"
        )),
        Some(&w.acme),
    )?;
    assert_eq!((s, b["total"].as_u64()), (200, Some(3)), "{b}");

    // Refusals: OperationOutcome with status, FHIR issue type and stable code, and logged.
    let denied_before = disclosures(&w.gw, "ana")?.len();
    outcome(
        &w.gw.url("/fhir/Observation?patient=ana&code=8867-4"),
        Some(&w.acme),
        404,
        "not-found",
        "not_found",
    )?;
    let log = disclosures(&w.gw, "ana")?;
    assert_eq!(log.len(), denied_before + 1);
    assert_eq!(
        (
            log.last().unwrap()["actor"].as_str(),
            log.last().unwrap()["outcome"].as_str()
        ),
        (Some("acme"), Some("denied"))
    );
    w.gw.gateway.store.add_person("cy", "Cy", "Asia/Tokyo")?;
    outcome(
        &w.gw.url("/fhir/Observation?patient=cy"),
        Some(&w.acme),
        404,
        "not-found",
        "not_found",
    )?;
    assert_eq!(
        disclosures(&w.gw, "cy")?.last().unwrap()["outcome"],
        "denied",
        "the refusal is in Cy's log"
    );
    outcome(
        &w.gw.url("/fhir/Observation?patient=nobody-at-all"),
        Some(&w.acme),
        404,
        "not-found",
        "not_found",
    )?;
    outcome(
        &w.gw.url("/fhir/Observation?code=55423-8"),
        Some(&w.acme),
        400,
        "required",
        "patient_required",
    )?;
    outcome(
        &w.gw.url("/fhir/Observation?patient=ana&code=41950-7"),
        Some(&w.acme),
        400,
        "code-invalid",
        "unsupported_code",
    )?;
    outcome(
        &w.gw.url("/fhir/Observation?patient=ana&category=activity"),
        Some(&w.acme),
        400,
        "not-supported",
        "unknown_parameter",
    )?;
    outcome(
        &w.gw.url("/fhir/Observation?patient=ana"),
        None,
        401,
        "login",
        "unauthorized",
    )?;
    outcome(
        &w.gw.url("/fhir/Observation?patient=ana"),
        Some(&token(&w.gw, "acme", "openid")),
        403,
        "forbidden",
        "forbidden",
    )?;
    // The person herself reads everything of hers, heart rate included.
    let (s, _, b) = fhir_get(
        &w.gw.url("/fhir/Observation?patient=ana"),
        Some(&w.gw.owner_token("ana")),
    )?;
    assert_eq!((s, b["total"].as_u64()), (200, Some(9)));
    w.gw.stop().await;
    Ok(())
}

/// The parts of an R4 CapabilityStatement a client relies on.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CapabilityStatement {
    resource_type: String,
    status: String,
    kind: String,
    fhir_version: String,
    format: Vec<String>,
    date: String,
    rest: Vec<Rest>,
}

#[derive(Debug, Deserialize)]
struct Rest {
    mode: String,
    security: Security,
    resource: Vec<Resource>,
}

#[derive(Debug, Deserialize)]
struct Security {
    service: Vec<Value>,
    extension: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Resource {
    #[serde(rename = "type")]
    kind: String,
    interaction: Vec<Value>,
    search_param: Vec<SearchParam>,
}

#[derive(Debug, Deserialize)]
struct SearchParam {
    name: String,
    #[serde(rename = "type")]
    kind: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_a_capability_statement() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let (s, ct, body) = fhir_get(&gw.url("/fhir/metadata"), None)?;
    assert_eq!(s, 200, "no token needed: {body}");
    assert_eq!(ct, "application/fhir+json");
    let c: CapabilityStatement = serde_json::from_value(body.clone())?;
    assert_eq!(
        (c.resource_type.as_str(), c.status.as_str(), c.kind.as_str()),
        ("CapabilityStatement", "active", "instance")
    );
    assert_eq!(c.fhir_version, "4.0.1");
    assert!(c.format.iter().any(|f| f == "json"));
    assert!(c.date.parse::<NaiveDate>().is_ok());
    let rest = &c.rest[0];
    assert_eq!(rest.mode, "server");
    assert_eq!(
        rest.security.service[0]["coding"][0]["code"],
        "SMART-on-FHIR"
    );
    let token_uri = rest.security.extension[0]["extension"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["url"] == "token")
        .and_then(|e| e["valueUri"].as_str())
        .unwrap();
    assert_eq!(token_uri, gw.url("/oauth/token"));
    let obs = rest
        .resource
        .iter()
        .find(|r| r.kind == "Observation")
        .unwrap();
    assert_eq!(obs.interaction[0]["code"], "search-type");
    let params: Vec<(&str, &str)> = obs
        .search_param
        .iter()
        .map(|p| (p.name.as_str(), p.kind.as_str()))
        .collect();
    assert_eq!(
        params,
        [
            ("patient", "reference"),
            ("code", "token"),
            ("date", "date"),
            ("_count", "number")
        ]
    );
    // The OpenAPI document lists the new operations.
    let (s, doc) = call("GET", &gw.url("/openapi.json"), None, None)?;
    assert_eq!(s, 200);
    for path in [
        "/api/v1/subjects",
        "/api/v1/subjects/{person_id}/summary/daily",
        "/fhir/Observation",
        "/fhir/metadata",
    ] {
        assert!(doc["paths"][path]["get"].is_object(), "{path}");
    }
    gw.stop().await;
    Ok(())
}
