//! Incremental sync (`GET /api/v1/sync`) for a PHR company, against a real gateway and broker:
//! the company pages through the feed while a bridge backfills out of order, an operator
//! moves records to another person, people grant and withdraw consent and one erases their
//! data. At the end the company holds exactly what it may see; nothing came twice, nothing
//! was missed, and what was erased was reported as erased.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::{json, Value};

use phr_e2e::{call, grant_consent, minute_steps, night, send, TestGateway};

const COMPANY: &str = "acme-phr";

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn company_token(gw: &TestGateway) -> String {
    gw.gateway
        .keys
        .issue(
            COMPANY,
            "system/Observation.rs",
            TimeDelta::hours(1),
            Utc::now(),
        )
        .expect("token")
}

/// What the company has built from the feed, checking every change against it.
#[derive(Debug, Default)]
struct Replica {
    /// (person, record_id) → steps.
    held: BTreeMap<(String, String), i64>,
    /// Tombstones received for records the company held.
    erased: BTreeSet<(String, String)>,
    /// Tombstones for records it never received (allowed, counted).
    unknown_erasures: usize,
    /// `person_erased` notices received.
    people_erased: usize,
    cursor: Option<String>,
    pages: usize,
}

impl Replica {
    /// One page; returns whether the gateway said there may be more.
    fn page(&mut self, gw: &TestGateway, token: &str, limit: usize) -> anyhow::Result<bool> {
        let mut url = gw.url(&format!("/api/v1/sync?limit={limit}"));
        if let Some(c) = &self.cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (s, b) = call("GET", &url, Some(token), None)?;
        anyhow::ensure!(s == 200, "{b}");
        self.pages += 1;
        for c in b["changes"].as_array().into_iter().flatten() {
            let key = (
                c["person_id"].as_str().unwrap_or_default().to_owned(),
                c["record_id"].as_str().unwrap_or_default().to_owned(),
            );
            if c["op"] == "person_erased" {
                // Names no record: drop everything held of that person.
                anyhow::ensure!(
                    c.get("record_id").is_none() && c.get("record").is_none(),
                    "{c}"
                );
                let gone: Vec<_> = self
                    .held
                    .keys()
                    .filter(|(p, _)| *p == key.0)
                    .cloned()
                    .collect();
                for k in gone {
                    self.held.remove(&k);
                    self.erased.insert(k);
                }
                self.people_erased += 1;
                continue;
            }
            anyhow::ensure!(
                c["record_type"] == "step-count",
                "only consented types: {c}"
            );
            match c["op"].as_str() {
                Some("stored") => {
                    let steps = c["record"]["body"]["step_count"]
                        .as_i64()
                        .ok_or_else(|| anyhow::anyhow!("no record: {c}"))?;
                    anyhow::ensure!(
                        self.held.insert(key.clone(), steps).is_none(),
                        "delivered twice: {key:?}"
                    );
                }
                Some("erased") => {
                    if self.held.remove(&key).is_some() {
                        self.erased.insert(key);
                    } else {
                        self.unknown_erasures += 1;
                    }
                }
                other => anyhow::bail!("unknown op {other:?}"),
            }
        }
        let next = b["next_cursor"].as_str().unwrap_or_default().to_owned();
        anyhow::ensure!(!next.is_empty(), "a cursor on every page");
        self.cursor = Some(next);
        Ok(b["has_more"].as_bool() == Some(true))
    }

    fn drain(&mut self, gw: &TestGateway, token: &str, limit: usize) -> anyhow::Result<()> {
        while self.page(gw, token, limit)? {}
        Ok(())
    }

    fn of(&self, person: &str) -> BTreeMap<String, i64> {
        self.held
            .iter()
            .filter(|((p, _), _)| p == person)
            .map(|((_, id), n)| (id.clone(), *n))
            .collect()
    }
}

/// What the company may read of `person`'s steps through the range API (the access layer).
fn readable(gw: &TestGateway, token: &str, person: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    let mut cursor = None::<String>;
    loop {
        let mut url = gw.url(&format!(
            "/api/v1/subjects/{person}/records?type=step-count&limit=50"
        ));
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (s, b) = call("GET", &url, Some(token), None)?;
        if s == 404 {
            return Ok(out);
        }
        anyhow::ensure!(s == 200, "{b}");
        for r in b["records"].as_array().into_iter().flatten() {
            out.insert(
                r["record_id"].as_str().unwrap_or_default().to_owned(),
                r["body"]["step_count"].as_i64().unwrap_or(-1),
            );
        }
        match b["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(out),
        }
    }
}

fn steps_consent() -> Value {
    json!({"grantee": COMPANY, "grantee_kind": "client", "purpose": "wellness programme",
           "data_types": ["step-count"]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_company_syncing_through_backfill_corrections_and_erasure_ends_with_exactly_what_it_may_see(
) -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let now = Utc::now();
    let since = now - TimeDelta::days(2);
    gw.enrol("ana", "br-a", &["band-a".into()], since)?;
    gw.enrol("ben", "br-b", &["band-b".into()], since)?;
    let t0 = (now - TimeDelta::hours(20)).duration_trunc(TimeDelta::minutes(1))?;
    let minute = |m: i64| t0 + TimeDelta::minutes(m);
    let mut a = gw.raw_bridge("br-a").await?;
    let mut b = gw.raw_bridge("br-b").await?;
    let token = company_token(&gw);
    let mut replica = Replica::default();

    // Stored before any consent: nothing to see yet.
    let early: Vec<_> = (0..10)
        .map(|m| minute_steps("band-a", "br-a", minute(m), 10 + m))
        .collect();
    assert_eq!(send(&mut a, "band-a", early).await?.stored, 10);
    assert_eq!(
        send(
            &mut b,
            "band-b",
            vec![minute_steps("band-b", "br-b", minute(0), 7)]
        )
        .await?
        .stored,
        1
    );
    replica.drain(&gw, &token, 4)?;
    assert!(replica.held.is_empty(), "no consent, no data");

    // Ana consents later than she measured: her earlier minutes come through the feed.
    grant_consent(&gw, "ana", steps_consent())?;
    assert!(replica.page(&gw, &token, 4)?, "a partial first page");
    // While the company is mid-way, the bridge backfills out of order (newest first), and
    // sleep (not consented) and Ben's steps (no consent) arrive too.
    for chunk in [(40..45), (30..35), (20..25)] {
        let recs = chunk
            .map(|m| minute_steps("band-a", "br-a", minute(m), 100 + m))
            .collect();
        assert_eq!(send(&mut a, "band-a", recs).await?.stored, 5);
        replica.page(&gw, &token, 3)?;
    }
    assert_eq!(
        send(
            &mut a,
            "band-a",
            vec![night("band-a", "br-a", t0 - TimeDelta::hours(9), 7)]
        )
        .await?
        .stored,
        1
    );
    assert_eq!(
        send(
            &mut b,
            "band-b",
            vec![minute_steps("band-b", "br-b", minute(1), 8)]
        )
        .await?
        .stored,
        1
    );
    // The same batch again changes nothing.
    let again = (20..25)
        .map(|m| minute_steps("band-a", "br-a", minute(m), 100 + m))
        .collect();
    assert_eq!(send(&mut a, "band-a", again).await?.duplicate, 5);
    replica.page(&gw, &token, 5)?;

    // A second, overlapping consent of Ana to the same company (steps of the last day)
    // repeats nothing the first already lets it see.
    let mut narrower = steps_consent();
    narrower["window_from"] = json!(rfc(now - TimeDelta::days(1)));
    grant_consent(&gw, "ana", narrower)?;
    replica.drain(&gw, &token, 3)?;
    assert_eq!(replica.of("ana").len(), 25);

    // An operator finds minutes 2..4 were Ben's (he wore Ana's band) and moves them.
    let admin = gw
        .gateway
        .keys
        .issue("ops", "phr:admin", TimeDelta::hours(1), Utc::now())?;
    let (s, body) = call(
        "POST",
        &gw.url("/api/v1/admin/corrections"),
        Some(&admin),
        Some(
            json!({"kind": "reattribute", "device_id": "band-a", "from": rfc(minute(2)), "to": rfc(minute(4)),
                    "from_person": "ana", "to_person": "ben", "why": "worn by ben"}),
        ),
    )?;
    assert_eq!(
        (s, body["correction"]["records"].as_u64()),
        (200, Some(2)),
        "{body}"
    );
    replica.drain(&gw, &token, 6)?;
    assert_eq!(
        replica.of("ana"),
        readable(&gw, &token, "ana")?,
        "Ana's, corrected"
    );
    assert_eq!(replica.of("ana").len(), 23);
    assert!(replica.of("ben").is_empty(), "Ben has not consented");

    // Ben consents: his own minutes and the two moved to him arrive, once.
    grant_consent(&gw, "ben", steps_consent())?;
    replica.drain(&gw, &token, 2)?;
    let ben = readable(&gw, &token, "ben")?;
    assert_eq!(ben.len(), 4);
    assert_eq!(replica.of("ben"), ben);

    // Ana erases her data: the company is told once to drop everything of hers (the feed
    // keeps no record-level trace of her).
    let held_of_ana: BTreeSet<_> = replica.of("ana").into_keys().collect();
    let (s, body) = call(
        "DELETE",
        &gw.url("/api/v1/me/data?confirm=erase-all-my-data"),
        Some(&gw.owner_token("ana")),
        None,
    )?;
    assert_eq!(s, 200, "{body}");
    replica.drain(&gw, &token, 7)?;
    assert_eq!(replica.people_erased, 1);
    assert!(replica.of("ana").is_empty());
    let erased_ana: BTreeSet<_> = replica
        .erased
        .iter()
        .filter(|(p, _)| p == "ana")
        .map(|(_, id)| id.clone())
        .collect();
    assert!(
        held_of_ana.is_subset(&erased_ana),
        "every record held was reported erased"
    );
    assert_eq!(replica.of("ben"), readable(&gw, &token, "ben")?);

    // Ben withdraws: records stored just before, not yet synced, never reach the company.
    let id = grant_consent(
        &gw,
        "ben",
        json!({"grantee": "someone-else", "grantee_kind": "client",
                                        "purpose": "x", "data_types": ["step-count"]}),
    )?;
    assert!(!id.is_empty());
    let recs = (50..53)
        .map(|m| minute_steps("band-b", "br-b", minute(m), 9))
        .collect();
    assert_eq!(send(&mut b, "band-b", recs).await?.stored, 3);
    let (_, list) = call(
        "GET",
        &gw.url("/api/v1/me/consents"),
        Some(&gw.owner_token("ben")),
        None,
    )?;
    for c in list["consents"].as_array().into_iter().flatten() {
        if c["grantee"] == COMPANY && c["status"] == "granted" {
            let id = c["consent_id"].as_str().unwrap_or_default();
            let (s, _) = call(
                "DELETE",
                &gw.url(&format!("/api/v1/me/consents/{id}")),
                Some(&gw.owner_token("ben")),
                None,
            )?;
            assert_eq!(s, 200);
        }
    }
    let before = replica.of("ben");
    replica.drain(&gw, &token, 10)?;
    assert_eq!(replica.of("ben"), before, "nothing after the withdrawal");
    assert!(replica.pages > 10);

    // The company's reads were logged for the people they concern.
    let (_, log) = call(
        "GET",
        &gw.url("/api/v1/me/disclosures"),
        Some(&gw.owner_token("ben")),
        None,
    )?;
    assert!(log["disclosures"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|d| d["actor"] == COMPANY && d["purpose"] == "incremental sync"));
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_refuses_bad_cursors_limits_and_tokens() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let token = company_token(&gw);
    for (q, code) in [
        ("cursor=abc", "invalid_cursor"),
        ("limit=0", "invalid_limit"),
        ("limit=5001", "invalid_limit"),
        ("since=1", "invalid_query"),
    ] {
        let (s, b) = call(
            "GET",
            &gw.url(&format!("/api/v1/sync?{q}")),
            Some(&token),
            None,
        )?;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (400, Some(code)),
            "{q}: {b}"
        );
    }
    let (s, _) = call("GET", &gw.url("/api/v1/sync"), None, None)?;
    assert_eq!(s, 401);
    let (s, b) = call(
        "GET",
        &gw.url("/api/v1/sync"),
        Some(&gw.owner_token("ana")),
        None,
    )?;
    assert_eq!((s, b["error"]["code"].as_str()), (403, Some("forbidden")));
    let (s, b) = call("GET", &gw.url("/api/v1/sync"), Some(&token), None)?;
    assert_eq!((s, b["changes"].as_array().map(Vec::len)), (200, Some(0)));
    gw.stop().await;
    Ok(())
}

fn withdraw(gw: &TestGateway, person: &str, consent_id: &str) -> anyhow::Result<()> {
    let (s, b) = call(
        "DELETE",
        &gw.url(&format!("/api/v1/me/consents/{consent_id}")),
        Some(&gw.owner_token(person)),
        None,
    )?;
    anyhow::ensure!(s == 200, "{b}");
    Ok(())
}

/// The issue's consent edit, both ways, through the API: the company synced to the end, 30
/// records arrive, the owner replaces the consent with a broader one (grant the new, withdraw
/// the old; then withdraw, then grant). The company receives the 30 exactly once and never
/// again what it already had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_edit_in_either_order_neither_drops_nor_repeats_records() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let now = Utc::now();
    gw.enrol("ana", "br-a", &["band-a".into()], now - TimeDelta::days(2))?;
    let t0 = (now - TimeDelta::hours(20)).duration_trunc(TimeDelta::minutes(1))?;
    let minute = |m: i64| t0 + TimeDelta::minutes(m);
    let mut a = gw.raw_bridge("br-a").await?;
    let token = company_token(&gw);
    let mut replica = Replica::default();
    let broader = json!({"grantee": COMPANY, "grantee_kind": "client", "purpose": "wellness programme",
                         "data_types": ["step-count", "sleep-episode", "heart-rate"]});

    let first = grant_consent(&gw, "ana", steps_consent())?;
    let recs = (0..10)
        .map(|m| minute_steps("band-a", "br-a", minute(m), 10 + m))
        .collect();
    assert_eq!(send(&mut a, "band-a", recs).await?.stored, 10);
    replica.drain(&gw, &token, 4)?;
    assert_eq!(replica.held.len(), 10);

    // Grant the new, then withdraw the old.
    let recs = (10..40)
        .map(|m| minute_steps("band-a", "br-a", minute(m), 10))
        .collect();
    assert_eq!(send(&mut a, "band-a", recs).await?.stored, 30);
    let second = grant_consent(&gw, "ana", broader.clone())?;
    withdraw(&gw, "ana", &first)?;
    replica.drain(&gw, &token, 7)?;
    assert_eq!(
        replica.held.len(),
        40,
        "the 30 arrived (the replica refuses a repeat)"
    );

    // Withdraw, then grant: nothing repeated; what arrived between comes once.
    let recs = (40..45)
        .map(|m| minute_steps("band-a", "br-a", minute(m), 10))
        .collect();
    assert_eq!(send(&mut a, "band-a", recs).await?.stored, 5);
    withdraw(&gw, "ana", &second)?;
    replica.drain(&gw, &token, 7)?;
    assert_eq!(replica.held.len(), 40, "nothing while no consent holds");
    grant_consent(&gw, "ana", broader)?;
    replica.drain(&gw, &token, 7)?;
    assert_eq!(replica.held.len(), 45);
    assert_eq!(replica.of("ana"), readable(&gw, &token, "ana")?);
    gw.stop().await;
    Ok(())
}
