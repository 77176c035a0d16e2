//! The whole API, driven from its own OpenAPI document by schemathesis (from PyPI) against a
//! real gateway with data in it: no 5xx, and every response matches the document (status,
//! content type, schema). `.ci/run` installs schemathesis into a virtualenv and points
//! `PHR_SCHEMATHESIS` at it.

use std::process::Command;

use chrono::{DurationRound, TimeDelta, Utc};
use serde_json::json;

use phr_e2e::{call, minute_steps, night, send, TestGateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs schemathesis (pip install schemathesis); .ci/run installs it and sets PHR_SCHEMATHESIS"]
async fn every_operation_answers_as_its_openapi_document_says() -> anyhow::Result<()> {
    let program = std::env::var("PHR_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let gw = TestGateway::start().await?;
    let now = Utc::now();
    gw.enrol("ana", "br-a", &["band-a".into()], now - TimeDelta::days(3))?;
    let t0 = (now - TimeDelta::hours(6)).duration_trunc(TimeDelta::minutes(1))?;
    let mut bridge = gw.raw_bridge("br-a").await?;
    let mut records: Vec<_> = (0..30)
        .map(|m| minute_steps("band-a", "br-a", t0 + TimeDelta::minutes(m), 50 + m))
        .collect();
    records.push(night("band-a", "br-a", now - TimeDelta::hours(30), 7));
    assert_eq!(send(&mut bridge, "band-a", records).await?.stored, 31);
    let ana = gw.owner_token("ana");
    let (s, b) = call(
        "POST",
        &gw.url("/api/v1/me/consents"),
        Some(&ana),
        Some(
            json!({"grantee": "ana", "grantee_kind": "client", "purpose": "self-audit",
                    "data_types": ["step-count", "sleep-episode"]}),
        ),
    )?;
    anyhow::ensure!(s == 201, "{b}");
    // One token for every operation: Ana as a person, as a company reading herself, and as
    // an operator, so the generated requests reach past authentication everywhere.
    let token = gw.gateway.keys.issue(
        "ana",
        "patient/*.cruds system/Observation.rs user/Observation.rs phr:admin",
        TimeDelta::hours(1),
        now,
    )?;
    let report = gw.dir.path().join("schemathesis");
    let out = Command::new(&program)
        .args(["run", &gw.url("/openapi.json")])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--max-examples", "25", "--workers", "1", "--seed", "1"])
        .args(["--phases", "examples,coverage,fuzzing", "--no-color"])
        .args(["--generation-database", "none"])
        .arg("--report-dir")
        .arg(&report)
        .env("NO_COLOR", "1")
        .output()
        .map_err(|e| anyhow::anyhow!("running {program}: {e} (pip install schemathesis)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(
        out.status.success(),
        "schemathesis found failures (see above)"
    );
    gw.stop().await;
    Ok(())
}
