//! The export as a cheap path: streamed page by page (same bytes as the in-memory export it
//! replaced), at most two at once per subject, and never a truncated file that looks whole.

use std::io::Read;

use chrono::{TimeDelta, Utc};
use serde_json::Value;

use phr_e2e::{minute_steps, TestGateway};
use phr_gateway::api::export::{write_export, Format};

/// Minute step records: more than loopback socket buffers and the export's channel hold,
/// so an export whose body nobody reads stays open.
const RECORDS: i64 = 24_000;

/// `person` with `RECORDS` minute step records (imported, which stores like ingest).
fn world(gw: &TestGateway, person: &str) -> anyhow::Result<()> {
    gw.enrol(person, "br-x", &[], Utc::now() - TimeDelta::days(40))?;
    let start = Utc::now() - TimeDelta::days(20);
    let records: Vec<_> = (0..RECORDS)
        .map(|m| minute_steps("band-x", "br-x", start + TimeDelta::minutes(m), m % 97))
        .collect();
    let report = gw
        .gateway
        .store
        .import_records(person, &records, Utc::now())?;
    anyhow::ensure!(report.stored == RECORDS as u64, "{report:?}");
    Ok(())
}

fn open_export(gw: &TestGateway, person: &str, format: &str) -> anyhow::Result<ureq::Response> {
    let url = gw.url(&format!("/api/v1/me/export?format={format}"));
    Ok(
        match ureq::get(&url)
            .set(
                "Authorization",
                &format!("Bearer {}", gw.owner_token(person)),
            )
            .call()
        {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(e.into()),
        },
    )
}

fn body(resp: ureq::Response) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    resp.into_reader().read_to_end(&mut out)?;
    Ok(out)
}

/// The parts of an export that depend on when it ran (a Bundle's id and timestamp, the
/// daily totals' `issued`) blanked.
fn timeless(format: Format, bytes: &[u8]) -> anyhow::Result<String> {
    let blank_total = |o: &mut Value| {
        if o["code"]["coding"][0]["code"] == "41950-7" {
            o["issued"] = Value::Null;
        }
    };
    Ok(match format {
        Format::Fhir => {
            let mut out = String::new();
            for line in std::str::from_utf8(bytes)?.lines() {
                let mut o: Value = serde_json::from_str(line)?;
                blank_total(&mut o);
                out.push_str(&o.to_string());
                out.push('\n');
            }
            out
        }
        Format::FhirBundle => {
            let mut b: Value = serde_json::from_slice(bytes)?;
            b["id"] = Value::Null;
            b["timestamp"] = Value::Null;
            for e in b["entry"].as_array_mut().into_iter().flatten() {
                blank_total(&mut e["resource"]);
            }
            b.to_string()
        }
        Format::Omh | Format::Csv => String::from_utf8(bytes.to_vec())?,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_export_streams_the_same_bytes_as_the_in_memory_export() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    world(&gw, "ana")?;
    for format in Format::ALL {
        let resp = open_export(&gw, "ana", format.as_str())?;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.header("transfer-encoding"),
            Some("chunked"),
            "{format:?} streamed, not built whole"
        );
        assert!(resp.header("content-length").is_none());
        let streamed = body(resp)?;
        let oracle = write_export(&gw.gateway.store, "ana", format, Utc::now())?;
        assert!(oracle.len() > 1_000_000, "{format:?}: a large export");
        if matches!(format, Format::Omh | Format::Csv) {
            assert!(streamed == oracle, "{format:?}: the bytes differ");
        } else {
            assert_eq!(
                timeless(format, &streamed)?,
                timeless(format, &oracle)?,
                "{format:?}"
            );
        }
    }
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_concurrent_export_of_one_subject_is_refused_while_two_stream() -> anyhow::Result<()>
{
    let gw = TestGateway::start().await?;
    world(&gw, "ana")?;
    gw.enrol("ben", "br-y", &[], Utc::now() - TimeDelta::days(1))?;
    // Two exports whose bodies nobody reads yet: their headers came, so they hold slots.
    let first = open_export(&gw, "ana", "fhir")?;
    let second = open_export(&gw, "ana", "fhir")?;
    assert_eq!((first.status(), second.status()), (200, 200));

    let third = open_export(&gw, "ana", "csv")?;
    assert_eq!(third.status(), 429);
    let retry: u64 = third.header("retry-after").unwrap_or_default().parse()?;
    assert!(retry > 0);
    let err: Value = third.into_json()?;
    assert_eq!(err["error"]["code"], "too_many_exports");
    // Per subject: Ben is not held up by Ana's exports.
    let ben = open_export(&gw, "ben", "csv")?;
    assert_eq!(ben.status(), 200);
    assert_eq!(
        body(ben)?,
        body_of_empty_csv(),
        "Ben has no records: the header alone"
    );

    // Both held exports are whole, and once one is read to its end a new one may start.
    let first = body(first)?;
    let expected_lines = RECORDS as usize;
    let lines = first.iter().filter(|b| **b == b'\n').count();
    assert!(
        lines > expected_lines,
        "{lines} lines: records and daily totals"
    );
    let again = phr_e2e::wait_for(
        "a freed export slot",
        std::time::Duration::from_secs(10),
        || {
            let r = open_export(&gw, "ana", "csv").ok()?;
            (r.status() == 200).then_some(r)
        },
    )
    .await?;
    let csv = body(again)?;
    assert_eq!(
        csv.iter().filter(|b| **b == b'\n').count(),
        expected_lines + 1,
        "header and one row per record"
    );
    assert_eq!(
        timeless(Format::Fhir, &body(second)?)?,
        timeless(Format::Fhir, &first)?,
        "the second held export is whole too"
    );
    gw.stop().await;
    Ok(())
}

fn body_of_empty_csv() -> Vec<u8> {
    let mut v = phr_schema::csv::HEADER.as_bytes().to_vec();
    v.extend_from_slice(b"\r\n");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_mid_stream_never_looks_like_a_complete_file() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    world(&gw, "ana")?;
    // The last record in export order becomes unreadable: the failure comes pages after the
    // response began.
    let db = rusqlite::Connection::open(gw.config.store_path())?;
    let changed = db.execute(
        "UPDATE records SET body = 'not json' WHERE person_id = 'ana' AND start_ms =
           (SELECT max(start_ms) FROM records WHERE person_id = 'ana')",
        [],
    )?;
    assert_eq!(changed, 1);
    let before = exports_logged(&gw)?;
    for format in Format::ALL {
        let resp = open_export(&gw, "ana", format.as_str())?;
        let status = resp.status();
        let read = body(resp);
        assert!(
            status != 200 || read.is_err(),
            "{format:?}: a 200 whose body reads as complete ({} bytes)",
            read.map(|b| b.len()).unwrap_or_default()
        );
    }
    assert_eq!(
        exports_logged(&gw)?,
        before,
        "a failed export is not logged as done"
    );
    gw.stop().await;
    Ok(())
}

fn exports_logged(gw: &TestGateway) -> anyhow::Result<usize> {
    Ok(gw
        .gateway
        .store
        .disclosures("ana", 0, 10_000)?
        .into_iter()
        .filter(|l| l.entry.action == phr_gateway::store::audit::Action::Export)
        .count())
}
