//! The owner's export (`GET /api/v1/me/export`) in every format, its round trip through the
//! real `phr-gateway import` into a fresh store, and who may export what.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
use serde_json::Value;

use phr_e2e::{all_records, binary, call, minute_steps, night, send, TestGateway};
use phr_schema::record::{PointFrame, BEATS_PER_MINUTE};
use phr_schema::{Body, HeartRate, Provenance, Record, RecordType, UnitValue};

/// Ana's band sent steps over two Tokyo days, a night of sleep and a heart rate; Ben's band
/// one step record.
struct World {
    gw: TestGateway,
    ana: String,
    /// Ana's records as sent.
    sent: Vec<Record>,
}

fn heart_rate(device: &str, bridge: &str, at: DateTime<Utc>, bpm: f64) -> Record {
    // A reading with milliseconds and a +09:00 offset, so the round trip shows both survive.
    let tokyo = FixedOffset::east_opt(9 * 3600).unwrap();
    let t = (at - TimeDelta::milliseconds(at.timestamp_subsec_millis().into())
        + TimeDelta::milliseconds(250))
    .with_timezone(&tokyo);
    Record::new(
        device,
        bridge,
        t + TimeDelta::seconds(1),
        Provenance::sensed("heart-rate-measurement/1"),
        Body::HeartRate(HeartRate {
            effective_time_frame: PointFrame { date_time: t },
            heart_rate: UnitValue::new(bpm, BEATS_PER_MINUTE),
        }),
    )
}

async fn world() -> anyhow::Result<World> {
    let gw = TestGateway::start().await?;
    let now = Utc::now();
    let from = now - TimeDelta::days(4);
    gw.enrol("ana", "br-ana", &["band-ana".into()], from)?;
    gw.enrol("ben", "br-ben", &["band-ben".into()], from)?;
    let mut bridge = gw.raw_bridge("br-ana").await?;
    let steps: Vec<Record> = [50, 49, 26, 2, 1]
        .iter()
        .enumerate()
        .map(|(i, h)| {
            minute_steps(
                "band-ana",
                "br-ana",
                now - TimeDelta::hours(*h),
                100 + i as i64,
            )
        })
        .collect();
    assert_eq!(
        send(&mut bridge, "band-ana", steps.clone()).await?.stored,
        5
    );
    let sleep = night("band-ana", "br-ana", now - TimeDelta::hours(40), 7);
    let heart = heart_rate("band-ana", "br-ana", now - TimeDelta::minutes(10), 71.5);
    let ack = send(&mut bridge, "band-ana", vec![sleep.clone(), heart.clone()]).await?;
    assert_eq!(ack.stored, 2, "{ack:?}");
    let mut ben = gw.raw_bridge("br-ben").await?;
    let bens = vec![minute_steps(
        "band-ben",
        "br-ben",
        now - TimeDelta::hours(3),
        7,
    )];
    assert_eq!(send(&mut ben, "band-ben", bens).await?.stored, 1);
    let ana = gw.owner_token("ana");
    let mut sent = steps;
    sent.extend([sleep, heart]);
    Ok(World { gw, ana, sent })
}

/// A raw GET: status, content type, content disposition and body text.
struct Download {
    status: u16,
    content_type: String,
    disposition: String,
    body: String,
}

fn download(url: &str, token: &str) -> anyhow::Result<Download> {
    let resp = match ureq::get(url)
        .set("Authorization", &format!("Bearer {token}"))
        .call()
    {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.into()),
    };
    Ok(Download {
        status: resp.status(),
        content_type: resp.header("content-type").unwrap_or_default().to_owned(),
        disposition: resp
            .header("content-disposition")
            .unwrap_or_default()
            .to_owned(),
        body: resp.into_string()?,
    })
}

fn export_url(gw: &TestGateway, format: &str) -> String {
    gw.url(&format!("/api/v1/me/export?format={format}"))
}

fn loinc(o: &Value) -> &str {
    o["code"]["coding"][0]["code"].as_str().unwrap()
}

/// The Tokyo days (Ana is registered in Asia/Tokyo) of the step records in `records`.
fn tokyo_days(records: &[Record]) -> BTreeMap<chrono::NaiveDate, i64> {
    let tokyo = FixedOffset::east_opt(9 * 3600).unwrap();
    let mut days = BTreeMap::new();
    for r in records {
        if let Body::StepCount(s) = &r.body {
            let day = s
                .effective_time_frame
                .start()
                .with_timezone(&tokyo)
                .date_naive();
            *days.entry(day).or_insert(0) += s.step_count;
        }
    }
    days
}

fn ids(records: &[Record]) -> BTreeSet<String> {
    records.iter().map(|r| r.record_id.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_has_every_record_and_each_export_is_logged() -> anyhow::Result<()> {
    let w = world().await?;
    let days = tokyo_days(&w.sent);
    assert!(
        days.len() >= 2,
        "steps over 50 hours span at least two days"
    );

    // fhir (the default): NDJSON, one Observation per record, then the daily totals.
    for url in [w.gw.url("/api/v1/me/export"), export_url(&w.gw, "fhir")] {
        let d = download(&url, &w.ana)?;
        assert_eq!(d.status, 200, "{}", d.body);
        assert_eq!(d.content_type, "application/fhir+ndjson");
        assert_eq!(
            d.disposition,
            "attachment; filename=\"phr-export-ana.ndjson\""
        );
        assert!(d.body.ends_with('\n'));
        let obs: Vec<Value> = d
            .body
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        assert_eq!(obs.len(), w.sent.len() + days.len());
        assert!(obs
            .iter()
            .all(|o| o["resourceType"] == "Observation"
                && o["subject"]["reference"] == "Patient/ana"));
        let count = |code: &str| obs.iter().filter(|o| loinc(o) == code).count();
        assert_eq!(
            (
                count("55423-8"),
                count("93832-4"),
                count("8867-4"),
                count("41950-7")
            ),
            (5, 1, 1, days.len())
        );
        let record_ids: BTreeSet<String> = obs
            .iter()
            .filter(|o| loinc(o) != "41950-7")
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(record_ids, ids(&w.sent));
        // Daily totals: Tokyo days, summed, after the records.
        let totals: Vec<(String, i64)> = obs
            .iter()
            .skip(w.sent.len())
            .map(|o| {
                assert_eq!(loinc(o), "41950-7");
                (
                    o["effectivePeriod"]["start"].as_str().unwrap().to_owned(),
                    o["valueQuantity"]["value"].as_i64().unwrap(),
                )
            })
            .collect();
        let expected: Vec<(String, i64)> = days
            .iter()
            .map(|(day, sum)| (format!("{day}T00:00:00+09:00"), *sum))
            .collect();
        assert_eq!(totals, expected);
    }

    // fhir-bundle: the same resources in one collection Bundle.
    let d = download(&export_url(&w.gw, "fhir-bundle"), &w.ana)?;
    assert_eq!(
        (d.status, d.content_type.as_str()),
        (200, "application/fhir+json")
    );
    assert_eq!(
        d.disposition,
        "attachment; filename=\"phr-export-ana.fhir.json\""
    );
    let b: Value = serde_json::from_str(&d.body)?;
    assert_eq!(
        (b["resourceType"].as_str(), b["type"].as_str()),
        (Some("Bundle"), Some("collection"))
    );
    let entries = b["entry"].as_array().unwrap();
    assert_eq!(entries.len(), w.sent.len() + days.len());
    assert!(entries.iter().all(|e| e["fullUrl"]
        == format!("urn:uuid:{}", e["resource"]["id"].as_str().unwrap())
        && e["resource"]["subject"]["reference"] == "Patient/ana"));

    // omh: one point per step and heart-rate record, the episode plus one per stage.
    let d = download(&export_url(&w.gw, "omh"), &w.ana)?;
    assert_eq!(
        (d.status, d.content_type.as_str()),
        (200, "application/json")
    );
    let points: Vec<Value> = serde_json::from_str(&d.body)?;
    assert_eq!(points.len(), 5 + 1 + 7 + 1);
    let schema = |name: &str| {
        points
            .iter()
            .filter(|p| p["header"]["schema_id"]["name"] == name)
            .count()
    };
    assert_eq!(
        (
            schema("step-count"),
            schema("sleep-episode"),
            schema("sleep-stage"),
            schema("heart-rate")
        ),
        (5, 1, 7, 1)
    );
    assert!(points.iter().all(|p| p["header"]["user_id"] == "ana"));

    // csv: the header and one row per record.
    let d = download(&export_url(&w.gw, "csv"), &w.ana)?;
    assert_eq!(
        (d.status, d.content_type.as_str()),
        (200, "text/csv; charset=utf-8")
    );
    assert_eq!(d.disposition, "attachment; filename=\"phr-export-ana.csv\"");
    let lines: Vec<&str> = d.body.strip_suffix("\r\n").unwrap().split("\r\n").collect();
    assert_eq!(lines.len(), w.sent.len() + 1);
    assert_eq!(lines[0], phr_schema::csv::HEADER);
    let csv_ids: BTreeSet<String> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap().to_owned())
        .collect();
    assert_eq!(csv_ids, ids(&w.sent));

    // The owner sees when exports happened: one `export` entry per download, no data.
    let (s, log) = call(
        "GET",
        &w.gw.url("/api/v1/me/disclosures"),
        Some(&w.ana),
        None,
    )?;
    assert_eq!(s, 200);
    let exports: Vec<&Value> = log["disclosures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "export")
        .collect();
    assert_eq!(exports.len(), 5);
    for e in exports {
        assert_eq!(
            (
                e["actor"].as_str(),
                e["actor_kind"].as_str(),
                e["outcome"].as_str(),
                e["records"].as_u64(),
                e["purpose"].as_str()
            ),
            (
                Some("ana"),
                Some("owner"),
                Some("done"),
                Some(w.sent.len() as u64),
                Some("export requested by the person")
            )
        );
    }
    assert_eq!(w.gw.gateway.store.verify_audit()?.broken, None);
    w.gw.stop().await;
    Ok(())
}

/// Runs `phr-gateway import`; returns exit code, stdout and stderr.
fn import(
    bin: &Path,
    data_dir: &Path,
    subject: &str,
    file: &Path,
    extra: &[&str],
) -> anyhow::Result<(i32, String, String)> {
    let out = Command::new(bin)
        .arg("import")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--subject", subject])
        .args(extra)
        .arg(file)
        .env("RUST_LOG", "off")
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Sorted by record id, with their JSON: `Record`'s `==` compares instants, the JSON also
/// the offsets and the text of every time.
fn canonical(mut records: Vec<Record>) -> Vec<(String, Value)> {
    records.sort_by_key(|r| r.record_id);
    records
        .into_iter()
        .map(|r| (r.record_id.to_string(), serde_json::to_value(r).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fhir_export_imports_into_a_fresh_gateway_as_the_same_records() -> anyhow::Result<()> {
    let w = world().await?;
    let base = w.gw.url("");
    let mut before = Vec::new();
    for t in RecordType::ALL {
        before.extend(all_records(&base, &w.ana, t.as_str(), 100)?);
    }
    assert_eq!(canonical(before.clone()), canonical(w.sent.clone()));

    let d = download(&export_url(&w.gw, "fhir"), &w.ana)?;
    assert_eq!(d.status, 200);
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("phr-export-ana.ndjson");
    std::fs::write(&file, &d.body)?;
    let fresh = tmp.path().join("fresh");
    let bin = binary("phr-gateway", "phr-gateway")?;

    // Without a storage consent of Ana's in the new gateway, nothing is stored.
    let (code, out, err) = import(&bin, &fresh, "ana", &file, &[])?;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!("0 stored, 0 duplicate, {} rejected", before.len())),
        "{out}"
    );
    assert!(err.contains("no_storage_consent"), "{err}");
    assert_eq!(
        phr_gateway::Store::open(&fresh.join("phr.sqlite"))?.counts()?,
        (0, 0)
    );

    let (code, out, err) = import(&bin, &fresh, "ana", &file, &["--grant-storage-consent"])?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("{} stored, 0 duplicate, 0 rejected", before.len())),
        "{out}"
    );
    // Again: nothing new.
    let (code, out, err) = import(&bin, &fresh, "ana", &file, &[])?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("0 stored, {} duplicate, 0 rejected", before.len())),
        "{out}"
    );

    let store = phr_gateway::Store::open(&fresh.join("phr.sqlite"))?;
    // The import is in Ana's log on the new gateway, once (the second import stored nothing).
    let imports: Vec<_> = store
        .disclosures("ana", 0, 100)?
        .into_iter()
        .filter(|e| e.entry.action == phr_gateway::store::audit::Action::Import)
        .collect();
    assert_eq!(imports.len(), 1);
    assert_eq!(imports[0].entry.records, before.len() as u64);
    let mut after = Vec::new();
    for t in RecordType::ALL {
        let page = store.records("ana", t, i64::MIN, i64::MAX, None, 10_000)?;
        assert!(page.next.is_none());
        for s in page.records {
            after.push(serde_json::from_str::<Record>(&s.json)?);
        }
    }
    assert_eq!(canonical(after), canonical(before));
    // Stored as Ana's only: no binding was made, Ben is nowhere.
    assert_eq!(store.counts()?, (w.sent.len() as u64, 0));
    drop(store);
    let ids = phr_e2e::stored_ids(&fresh)?;
    assert_eq!(ids.len(), w.sent.len());
    assert!(ids.iter().all(|(_, person)| person == "ana"));

    // A file with an unreadable line stores nothing, and says which line, not what is in it.
    let bad = tmp.path().join("bad.ndjson");
    std::fs::write(&bad, format!("{}{{\"secret\": 12345\n", d.body))?;
    let other = tmp.path().join("other");
    let (code, out, err) = import(&bin, &other, "ana", &bad, &["--grant-storage-consent"])?;
    assert_eq!(code, 1, "{out}{err}");
    let bad_line = d.body.lines().count() + 1;
    assert!(err.contains(&format!("line {bad_line}:")), "{err}");
    assert!(!err.contains("12345") && !out.contains("12345"), "{err}");
    assert!(out.contains("nothing was stored"), "{out}");
    assert!(!other.join("phr.sqlite").exists());
    w.gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_with_observation_read_exports_and_only_their_own() -> anyhow::Result<()> {
    let w = world().await?;
    let url = export_url(&w.gw, "fhir");
    let token = |scope: &str| {
        w.gw.gateway
            .keys
            .issue("ana", scope, TimeDelta::hours(1), Utc::now())
            .unwrap()
    };
    for scope in [
        "patient/Consent.cruds",
        "patient/Observation.s",
        "user/Observation.rs",
    ] {
        let (s, body) = call("GET", &url, Some(&token(scope)), None)?;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{scope}"
        );
    }
    assert_eq!(call("GET", &url, None, None)?.0, 401);
    let (s, body) = call("GET", &export_url(&w.gw, "xml"), Some(&w.ana), None)?;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("invalid_format"))
    );
    let (s, body) = call(
        "GET",
        &w.gw.url("/api/v1/me/export?format=csv&person=ana"),
        Some(&w.ana),
        None,
    )?;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );
    // `patient/Observation.r` alone is enough.
    assert_eq!(download(&url, &token("patient/Observation.r"))?.status, 200);

    // Ben's export: his one record and its day, nothing of Ana's.
    let ben = w.gw.owner_token("ben");
    let d = download(&url, &ben)?;
    assert_eq!(d.status, 200);
    assert_eq!(
        d.disposition,
        "attachment; filename=\"phr-export-ben.ndjson\""
    );
    let obs: Vec<Value> = d
        .body
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(obs.len(), 2);
    assert!(obs
        .iter()
        .all(|o| o["subject"]["reference"] == "Patient/ben"));
    assert!(obs.iter().all(|o| o["device"]["display"] != "band-ana"));
    let ana_ids = ids(&w.sent);
    assert!(!ana_ids.is_empty());
    assert!(obs
        .iter()
        .all(|o| !ana_ids.contains(o["id"].as_str().unwrap())));
    for format in ["fhir-bundle", "omh", "csv"] {
        let d = download(&export_url(&w.gw, format), &ben)?;
        assert_eq!(d.status, 200);
        assert!(!d.body.contains("band-ana"), "{format}");
        assert!(
            ana_ids.iter().all(|id| !d.body.contains(id.as_str())),
            "{format}"
        );
    }
    // Someone with no records at all gets a well-formed, empty export.
    let nobody = w.gw.owner_token("carol");
    let d = download(&export_url(&w.gw, "omh"), &nobody)?;
    assert_eq!((d.status, d.body.as_str()), (200, "[]"));
    w.gw.stop().await;
    Ok(())
}

/// The Open mHealth schemas the stage schema refers to, offline (`tests/omh/README.md`).
struct OmhOffline;

impl jsonschema::Retrieve for OmhOffline {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let name = uri
            .as_str()
            .strip_prefix("https://w3id.org/openmhealth/schemas/omh/")
            .filter(|n| !n.contains('/'))
            .ok_or_else(|| format!("not an Open mHealth schema this test has: {uri}"))?;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("omh").join(name);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// A validator of `phr:sleep-stage:1.0` bodies from `schema` (draft-04, formats checked).
fn sleep_stage_validator(schema: &Value) -> anyhow::Result<jsonschema::Validator> {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(true)
        .with_retriever(OmhOffline)
        .build(schema)
        .map_err(|e| anyhow::anyhow!("the sleep-stage schema does not build: {e}"))
}

#[tokio::test]
async fn every_exported_sleep_stage_point_meets_its_published_schema() -> anyhow::Result<()> {
    let w = world().await?;

    // Published without a token, as the file in the repository.
    let resp = ureq::get(&w.gw.url("/schemas/phr/sleep-stage-1.0.json")).call()?;
    assert_eq!(
        (resp.status(), resp.header("content-type")),
        (200, Some("application/schema+json"))
    );
    let served = resp.into_string()?;
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schema/json/phr/sleep-stage-1.0.json"
    ))?;
    assert_eq!(served, shipped);
    let schema: Value = serde_json::from_str(&served)?;
    assert_eq!(
        schema["$schema"], "http://json-schema.org/draft-04/schema#",
        "the draft the Open mHealth schemas use"
    );
    let validator = sleep_stage_validator(&schema)?;

    let d = download(&export_url(&w.gw, "omh"), &w.ana)?;
    assert_eq!(d.status, 200);
    let points: Vec<Value> = serde_json::from_str(&d.body)?;
    let stage_id = serde_json::json!({"namespace": "phr", "name": "sleep-stage", "version": "1.0"});
    let stages: Vec<&Value> = points
        .iter()
        .filter(|p| p["header"]["schema_id"] == stage_id)
        .collect();
    // The night `world` sends has 7 hourly stages.
    assert_eq!(stages.len(), 7);
    let episodes: BTreeSet<&str> = points
        .iter()
        .filter(|p| p["header"]["schema_id"]["name"] == "sleep-episode")
        .filter_map(|p| p["header"]["id"].as_str())
        .collect();
    assert_eq!(episodes.len(), 1);
    for p in &stages {
        let errors: Vec<String> = validator
            .iter_errors(&p["body"])
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:#?} in {:#}", p["body"]);
        // What the schema says in words: the episode is the export's sleep-episode point.
        let episode = p["body"]["sleep_episode_id"].as_str().unwrap();
        assert!(episodes.contains(episode), "{episode}");
    }

    // The validator holds the shape, the Open mHealth parts included: each drift fails.
    let body = stages[0]["body"].clone();
    let drifted = |f: &dyn Fn(&mut Value)| {
        let mut b = body.clone();
        f(&mut b);
        b
    };
    let drifts = [
        (
            "stage renamed",
            drifted(&|b| {
                let s = b["sleep_stage"].take();
                b.as_object_mut().unwrap().remove("sleep_stage");
                b["stage"] = s;
            }),
        ),
        (
            "unknown stage",
            drifted(&|b| b["sleep_stage"] = "REM".into()),
        ),
        (
            "episode id missing",
            drifted(&|b| {
                b.as_object_mut().unwrap().remove("sleep_episode_id");
            }),
        ),
        (
            "episode id not a uuid",
            drifted(&|b| b["sleep_episode_id"] = "ep-1".into()),
        ),
        (
            "a field the schema does not have",
            drifted(&|b| b["device_id"] = "band-ana".into()),
        ),
        (
            "interval not in a time frame",
            drifted(&|b| {
                let ti = b["effective_time_frame"]["time_interval"].take();
                b["effective_time_frame"] = ti;
            }),
        ),
        (
            "start, end and duration together",
            drifted(&|b| {
                b["effective_time_frame"]["time_interval"]["duration"] =
                    serde_json::json!({"value": 3600, "unit": "sec"});
            }),
        ),
        (
            "a date-time without offset",
            drifted(&|b| {
                b["effective_time_frame"]["time_interval"]["end_date_time"] =
                    "2026-06-01 07:00".into();
            }),
        ),
        (
            "a point in time instead of an interval",
            drifted(&|b| {
                let start = b["effective_time_frame"]["time_interval"]["start_date_time"].take();
                b["effective_time_frame"] = serde_json::json!({"date_time": start});
            }),
        ),
    ];
    for (what, b) in &drifts {
        assert!(!validator.is_valid(b), "{what} passed: {b:#}");
    }
    Ok(())
}
