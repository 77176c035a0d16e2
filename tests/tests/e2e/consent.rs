//! The right person, and only with consent: consents and receipts, the access matrix for
//! other parties, the disclosure log and its hash chain, erasure, and forged tokens.

use std::process::Command;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::{json, Value};

use phr_e2e::{b64url, binary, call, minute_steps, night, send, TestGateway};
use phr_gateway::api::me::{Receipt, ERASE_CONFIRMATION, RECEIPT_TYP};

/// Ana's band: 6 hours of steps (one record an hour) and last night's sleep, all stored.
struct World {
    gw: TestGateway,
    ana: String,
    t0: DateTime<Utc>,
}

async fn world() -> anyhow::Result<World> {
    let gw = TestGateway::start().await?;
    let now = Utc::now();
    gw.enrol(
        "ana",
        "br-ana",
        &["band-ana".into()],
        now - TimeDelta::days(3),
    )?;
    gw.enrol(
        "ben",
        "br-ben",
        &["band-ben".into()],
        now - TimeDelta::days(3),
    )?;
    let t0 = (now - TimeDelta::hours(6)).duration_trunc(TimeDelta::minutes(1))?;
    let mut bridge = gw.raw_bridge("br-ana").await?;
    let steps = (0..6)
        .map(|h| minute_steps("band-ana", "br-ana", t0 + TimeDelta::hours(h), 100 + h))
        .collect();
    assert_eq!(send(&mut bridge, "band-ana", steps).await?.stored, 6);
    let sleep = night("band-ana", "br-ana", now - TimeDelta::hours(30), 7);
    assert_eq!(send(&mut bridge, "band-ana", vec![sleep]).await?.stored, 1);
    let mut ben = gw.raw_bridge("br-ben").await?;
    let steps = vec![minute_steps("band-ben", "br-ben", t0, 5)];
    assert_eq!(send(&mut ben, "band-ben", steps).await?.stored, 1);
    let ana = gw.owner_token("ana");
    Ok(World { gw, ana, t0 })
}

fn token(gw: &TestGateway, subject: &str, scope: &str) -> String {
    gw.gateway
        .keys
        .issue(subject, scope, TimeDelta::hours(1), Utc::now())
        .expect("token")
}

fn disclosures(w: &World) -> anyhow::Result<Vec<Value>> {
    let (s, body) = call(
        "GET",
        &w.gw.url("/api/v1/me/disclosures"),
        Some(&w.ana),
        None,
    )?;
    assert_eq!(s, 200, "{body}");
    Ok(body["disclosures"].as_array().cloned().unwrap_or_default())
}

fn grant(w: &World, body: Value) -> anyhow::Result<Value> {
    let (s, body) = call(
        "POST",
        &w.gw.url("/api/v1/me/consents"),
        Some(&w.ana),
        Some(body),
    )?;
    assert_eq!(s, 201, "{body}");
    Ok(body)
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_withdraw_regrant_leaves_three_events_and_signed_receipts() -> anyhow::Result<()> {
    let w = world().await?;
    let events_before = w.gw.gateway.store.consent_event_count("ana")?;
    let consent = json!({"grantee": "dr-ito", "grantee_kind": "practitioner", "purpose": "treatment",
                         "data_types": ["step-count", "sleep-episode"]});
    let first = grant(&w, consent.clone())?;
    let id = first["consent"]["consent_id"].as_str().unwrap().to_owned();
    assert_eq!(first["consent"]["status"], "granted");
    let receipt: Receipt =
        w.gw.gateway
            .keys
            .verify_signed(RECEIPT_TYP, first["receipt"].as_str().unwrap())?;
    assert_eq!(
        (receipt.sub.as_str(), receipt.consent.consent_id.to_string()),
        ("ana", id.clone())
    );
    assert_eq!(receipt.consent.terms.grantee, "dr-ito");
    // A receipt edited by anyone but the gateway does not verify.
    let forged = first["receipt"].as_str().unwrap().replacen('.', ".e", 1);
    assert!(w
        .gw
        .gateway
        .keys
        .verify_signed::<Receipt>(RECEIPT_TYP, &forged)
        .is_err());

    let (s, body) = call(
        "DELETE",
        &w.gw.url(&format!("/api/v1/me/consents/{id}")),
        Some(&w.ana),
        None,
    )?;
    assert_eq!(
        (s, body["consent"]["status"].as_str()),
        (200, Some("withdrawn"))
    );
    let second = grant(&w, consent)?;
    assert_ne!(second["consent"]["consent_id"].as_str(), Some(id.as_str()));
    assert_eq!(
        w.gw.gateway.store.consent_event_count("ana")? - events_before,
        3
    );

    let (_, list) = call("GET", &w.gw.url("/api/v1/me/consents"), Some(&w.ana), None)?;
    let statuses: Vec<_> = list["consents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["grantee"] == "dr-ito")
        .map(|c| c["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["withdrawn", "granted"]);

    // Ben cannot withdraw Ana's consent: answered like an unknown id.
    let ben = w.gw.owner_token("ben");
    let other = second["consent"]["consent_id"].as_str().unwrap();
    assert_eq!(
        call(
            "DELETE",
            &w.gw.url(&format!("/api/v1/me/consents/{other}")),
            Some(&ben),
            None
        )?
        .0,
        404
    );
    assert_eq!(
        call(
            "DELETE",
            &w.gw.url("/api/v1/me/consents/not-a-uuid"),
            Some(&w.ana),
            None
        )?
        .0,
        404
    );

    for (bad, code) in [
        (
            json!({"grantee": "dr-ito", "grantee_kind": "practitioner", "purpose": "x", "data_types": []}),
            "invalid_type",
        ),
        (
            json!({"grantee": "dr-ito", "grantee_kind": "practitioner", "purpose": "x", "data_types": ["blood"]}),
            "invalid_type",
        ),
        (
            json!({"grantee": "a/b", "grantee_kind": "client", "purpose": "x", "data_types": ["step-count"]}),
            "invalid_grantee",
        ),
        (
            json!({"grantee": "acme", "grantee_kind": "gateway", "purpose": "storage", "data_types": ["step-count"]}),
            "invalid_grantee",
        ),
        (
            json!({"grantee": "acme", "grantee_kind": "client", "purpose": "", "data_types": ["step-count"]}),
            "invalid_purpose",
        ),
        (
            json!({"grantee": "acme", "grantee_kind": "client", "purpose": "x", "data_types": ["step-count"],
                "window_from": "2026-02-01T00:00:00Z", "window_to": "2026-01-01T00:00:00Z"}),
            "invalid_range",
        ),
        (
            json!({"grantee": "acme", "grantee_kind": "client", "purpose": "x", "data_types": ["step-count"],
                "valid_until": "2020-01-01T00:00:00Z"}),
            "invalid_valid_until",
        ),
        (
            json!({"grantee": "acme", "grantee_kind": "client", "purpose": "x", "data_types": ["step-count"], "extra": 1}),
            "invalid_body",
        ),
    ] {
        let (s, body) = call(
            "POST",
            &w.gw.url("/api/v1/me/consents"),
            Some(&w.ana),
            Some(bad.clone()),
        )?;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (400, Some(code)),
            "{bad}"
        );
    }
    // A token without Consent scopes cannot touch consents.
    let read_only = token(&w.gw, "ana", "patient/Observation.rs");
    assert_eq!(
        call(
            "GET",
            &w.gw.url("/api/v1/me/consents"),
            Some(&read_only),
            None
        )?
        .0,
        403
    );
    w.gw.stop().await;
    Ok(())
}

/// Asserts a refusal: the status, an error body without health data, one new denied entry.
fn refused(w: &World, url: &str, token: &str, status: u16) -> anyhow::Result<()> {
    let before = disclosures(w)?.len();
    let (s, body) = call("GET", url, Some(token), None)?;
    assert_eq!(s, status, "{url}: {body}");
    assert!(
        body.get("records").is_none() && body.get("data_points").is_none(),
        "{body}"
    );
    assert_eq!(
        body.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["error".to_owned()])
    );
    let after = disclosures(w)?;
    assert_eq!(after.len(), before + 1, "one audit entry per refusal");
    assert_eq!(after.last().unwrap()["outcome"], "denied");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_parties_see_only_what_was_consented_and_every_look_is_logged() -> anyhow::Result<()>
{
    let w = world().await?;
    let steps_url = w.gw.url("/api/v1/subjects/ana/records?type=step-count");
    let sleep_url = w.gw.url("/api/v1/subjects/ana/records?type=sleep-episode");

    // Owner B reading A: a patient token is no token for someone else's data.
    let ben = w.gw.owner_token("ben");
    refused(&w, &steps_url, &ben, 403)?;
    // B's own records endpoint never shows A's data.
    let (_, body) = call(
        "GET",
        &w.gw.url("/api/v1/me/records?type=step-count"),
        Some(&ben),
        None,
    )?;
    assert_eq!(body["records"].as_array().map(Vec::len), Some(1));

    // A company without consent.
    let acme = token(&w.gw, "acme", "system/Observation.rs");
    refused(&w, &steps_url, &acme, 404)?;

    // A company with consent for steps, asking for sleep.
    grant(
        &w,
        json!({"grantee": "acme", "grantee_kind": "client", "purpose": "wellness programme",
                     "data_types": ["step-count"]}),
    )?;
    refused(&w, &sleep_url, &acme, 404)?;
    let (s, body) = call("GET", &steps_url, Some(&acme), None)?;
    assert_eq!(
        (s, body["records"].as_array().map(Vec::len)),
        (200, Some(6))
    );

    // A clinician consented for hours 2..4 of the six: outside gets 403, overlapping is clipped.
    let ito = token(&w.gw, "dr-ito", "user/Observation.rs");
    let (from, to) = (w.t0 + TimeDelta::hours(2), w.t0 + TimeDelta::hours(4));
    let c = grant(
        &w,
        json!({"grantee": "dr-ito", "grantee_kind": "practitioner", "purpose": "treatment",
                             "data_types": ["step-count"], "window_from": rfc(from), "window_to": rfc(to)}),
    )?;
    let consent_id = c["consent"]["consent_id"].as_str().unwrap().to_owned();
    let outside = format!(
        "{steps_url}&from={}&to={}",
        rfc(w.t0 - TimeDelta::days(1)),
        rfc(w.t0)
    );
    refused(&w, &outside, &ito, 403)?;
    let (s, body) = call("GET", &steps_url, Some(&ito), None)?;
    assert_eq!(s, 200);
    let starts: Vec<DateTime<Utc>> = body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["body"]["effective_time_frame"]["time_interval"]["start_date_time"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(starts.len(), 2, "hours 2 and 3 only");
    assert!(starts.iter().all(|t| *t >= from && *t < to));
    // The owner sees that read: who, which consent, how many records.
    let log = disclosures(&w)?;
    let last = log.last().unwrap();
    assert_eq!(
        (last["actor"].as_str(), last["outcome"].as_str()),
        (Some("dr-ito"), Some("disclosed"))
    );
    assert_eq!(
        (last["consent_id"].as_str(), last["records"].as_u64()),
        (Some(consent_id.as_str()), Some(2))
    );
    assert_eq!(last["purpose"], "treatment");

    // Withdrawn, with the clinician's token still valid: refused on the very next request.
    let (s, _) = call(
        "DELETE",
        &w.gw.url(&format!("/api/v1/me/consents/{consent_id}")),
        Some(&w.ana),
        None,
    )?;
    assert_eq!(s, 200);
    refused(&w, &steps_url, &ito, 404)?;
    // Withdrawal is not erasure: the data is still Ana's and still there.
    let (_, mine) = call(
        "GET",
        &w.gw.url("/api/v1/me/records?type=step-count"),
        Some(&w.ana),
        None,
    )?;
    assert_eq!(mine["records"].as_array().map(Vec::len), Some(6));

    // The log is intact after all of this.
    let v = w.gw.gateway.store.verify_audit()?;
    assert_eq!(v.broken, None);
    assert!(v.rows >= 7);
    w.gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_removes_the_data_keeps_the_fact_and_closes_everything() -> anyhow::Result<()> {
    let w = world().await?;
    grant(
        &w,
        json!({"grantee": "acme", "grantee_kind": "client", "purpose": "research", "data_types": ["step-count"]}),
    )?;
    let url = w.gw.url("/api/v1/me/data");
    let (s, body) = call("DELETE", &url, Some(&w.ana), None)?;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("confirmation_required"))
    );
    let (s, body) = call(
        "DELETE",
        &format!("{url}?confirm={ERASE_CONFIRMATION}"),
        Some(&w.ana),
        None,
    )?;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["erased"]["records"], 7);
    assert_eq!(body["erased"]["bindings_closed"], 1);

    for t in ["step-count", "sleep-episode"] {
        let (_, mine) = call(
            "GET",
            &w.gw.url(&format!("/api/v1/me/records?type={t}")),
            Some(&w.ana),
            None,
        )?;
        assert_eq!(mine["records"], json!([]));
    }
    let (_, list) = call("GET", &w.gw.url("/api/v1/me/consents"), Some(&w.ana), None)?;
    let consents = list["consents"].as_array().unwrap();
    // Her storage consent and the one to acme: both listed, both withdrawn.
    assert_eq!(consents.len(), 2, "{list}");
    assert!(
        consents.iter().all(|c| c["status"] == "withdrawn"),
        "{list}"
    );
    let acme = token(&w.gw, "acme", "system/Observation.rs");
    assert_eq!(
        call(
            "GET",
            &w.gw.url("/api/v1/subjects/ana/records?type=step-count"),
            Some(&acme),
            None
        )?
        .0,
        404
    );
    // Ben's data is untouched.
    let (_, bens) = call(
        "GET",
        &w.gw.url("/api/v1/me/records?type=step-count"),
        Some(&w.gw.owner_token("ben")),
        None,
    )?;
    assert_eq!(bens["records"].as_array().map(Vec::len), Some(1));
    // The log keeps that it happened, not what was erased.
    let log = disclosures(&w)?;
    let erasure = log
        .iter()
        .find(|e| e["action"] == "erasure")
        .expect("an erasure entry");
    assert_eq!(
        (erasure["records"].as_u64(), erasure["outcome"].as_str()),
        (Some(7), Some("done"))
    );
    // Late data her band measured before the erasure is never stored again (her erasure
    // fences it off); data measured after it belongs to nobody (the binding is closed).
    let mut bridge = w.gw.raw_bridge("br-ana").await?;
    let late = minute_steps("band-ana", "br-ana", Utc::now() - TimeDelta::minutes(30), 9);
    let ack = send(&mut bridge, "band-ana", vec![late]).await?;
    assert_eq!((ack.stored, ack.quarantined, ack.rejected.len()), (0, 0, 1));
    assert_eq!(ack.rejected[0].reason, phr_schema::Reason::ErasedByPerson);
    let after = minute_steps("band-ana", "br-ana", Utc::now() + TimeDelta::minutes(1), 9);
    let ack = send(&mut bridge, "band-ana", vec![after]).await?;
    assert_eq!((ack.stored, ack.quarantined), (0, 1));
    w.gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_detects_edited_and_deleted_rows() -> anyhow::Result<()> {
    let w = world().await?;
    let acme = token(&w.gw, "acme", "system/Observation.rs");
    for _ in 0..3 {
        call(
            "GET",
            &w.gw.url("/api/v1/subjects/ana/records?type=step-count"),
            Some(&acme),
            None,
        )?;
    }
    let data_dir = w.gw.config.data_dir.clone();
    let _dir = w.gw.stop().await;
    let bin = binary("phr-gateway", "phr-gateway")?;
    let verify = || -> anyhow::Result<(i32, String)> {
        let out = Command::new(&bin)
            .args(["audit", "verify", "--data-dir"])
            .arg(&data_dir)
            .env("RUST_LOG", "off")
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.code().unwrap_or(-1), text))
    };
    let (code, out) = verify()?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 entries"), "{out}");

    let conn = rusqlite::Connection::open(data_dir.join("phr.sqlite"))?;
    // The application cannot edit the log: triggers refuse.
    assert!(conn
        .execute("UPDATE disclosures SET records = 0 WHERE seq = 2", [])
        .is_err());
    assert!(conn
        .execute("DELETE FROM disclosures WHERE seq = 2", [])
        .is_err());
    // Someone with the file can drop the triggers; the chain still gives them away.
    conn.execute_batch("DROP TRIGGER disclosures_no_update; DROP TRIGGER disclosures_no_delete;")?;
    conn.execute("UPDATE disclosures SET actor = 'nobody' WHERE seq = 2", [])?;
    let (code, out) = verify()?;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("entry 2"), "{out}");
    conn.execute("UPDATE disclosures SET actor = 'acme' WHERE seq = 2", [])?;
    assert_eq!(verify()?.0, 0, "restoring the row restores the chain");
    conn.execute("DELETE FROM disclosures WHERE seq = 2", [])?;
    let (code, out) = verify()?;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("entry 3"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_misissued_tokens_are_all_401() -> anyhow::Result<()> {
    let w = world().await?;
    let keys = &w.gw.gateway.keys;
    let url = w.gw.url("/api/v1/me/records?type=step-count");
    let now = Utc::now().timestamp();
    let claims = |aud: &str, iss: &str, exp: i64, nbf: i64| json!({"iss": iss, "sub": "ana", "aud": aud, "exp": exp, "nbf": nbf, "iat": now, "jti": "x", "scope": "patient/*.rs"});
    let issuer = keys.issuer().to_owned();
    let good = claims("phr-api", &issuer, now + 3600, now - 10);
    let jws = |header: Value, claims: &Value, sign: &dyn Fn(&[u8]) -> Vec<u8>| {
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = sign(input.as_bytes());
        format!("{input}.{}", b64url(&sig))
    };
    let kid = keys.kid().to_owned();
    // Signed with the gateway's own key, so each refusal below is about one thing.
    let sign_ours = |typ: &str, c: &Value| -> String { keys.sign(typ, c).expect("sign") };
    // Our key, right claims, right typ: accepted.
    assert_eq!(
        call("GET", &url, Some(&sign_ours("at+jwt", &good)), None)?.0,
        200
    );

    let other = TestGateway::start_with(None).await?;
    let hs256_with_public_key = {
        let secret = keys.public_key();
        jsonwebtoken::encode(
            &jsonwebtoken::Header {
                alg: jsonwebtoken::Algorithm::HS256,
                kid: Some(kid.clone()),
                typ: Some("at+jwt".into()),
                ..Default::default()
            },
            &good,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )?
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            jws(
                json!({"alg": "none", "typ": "at+jwt", "kid": kid}),
                &good,
                &|_| Vec::new(),
            ),
        ),
        (
            "wrong key",
            other
                .gateway
                .keys
                .issue("ana", "patient/*.rs", TimeDelta::hours(1), Utc::now())?,
        ),
        ("HS256 with the public key as secret", hs256_with_public_key),
        (
            "wrong aud",
            sign_ours(
                "at+jwt",
                &claims("someone-else", &issuer, now + 3600, now - 10),
            ),
        ),
        (
            "wrong iss",
            sign_ours("at+jwt", &claims("phr-api", "evil", now + 3600, now - 10)),
        ),
        (
            "expired",
            sign_ours(
                "at+jwt",
                &claims("phr-api", &issuer, now - 3600, now - 7200),
            ),
        ),
        (
            "not yet valid",
            sign_ours(
                "at+jwt",
                &claims("phr-api", &issuer, now + 7200, now + 3600),
            ),
        ),
        ("wrong typ", sign_ours("JWT", &good)),
        (
            "consent receipt used as a token",
            sign_ours(RECEIPT_TYP, &good),
        ),
        ("unknown kid", {
            let t = sign_ours("at+jwt", &good);
            let (_, rest) = t.split_once('.').unwrap();
            format!(
                "{}.{rest}",
                b64url(
                    json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "0000000000000000"})
                        .to_string()
                        .as_bytes()
                )
            )
        }),
    ];
    for (name, t) in cases {
        let (s, body) = call("GET", &url, Some(&t), None)?;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{name}"
        );
    }
    other.stop().await;
    w.gw.stop().await;
    Ok(())
}
