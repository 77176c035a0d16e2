//! Bulk-read benchmark (issue 17): how long a whole pull of stored records takes through the
//! gateway's read APIs, next to the storage floor and the HTTP floor measured in the same run.
//!
//! Seeding (not timed): a real in-process gateway ([`phr_e2e::TestGateway`], embedded broker,
//! temp data dir) with one person, one band and 30 days of minute-level `step-count` records
//! (43,200) ending two minutes ago. They go in through `Store::ingest`, what the gateway's
//! consumer calls for every MQTT batch: batches of one hour (60 records, the JSON a bridge
//! publishes), 64 batches per transaction. A company gets a consent to every type.
//!
//! Then, each measurement repeated (warm-up runs, then timed ones; median, p99 by nearest rank
//! (with fewer than 100 runs, the slowest), min .. max), over real HTTP on loopback with one
//! `ureq` agent (keep-alive), each response body read to its end. A whole pull's time is the
//! sum of its pages' (each from the request's start to its body's end and the cursor or `next`
//! link found in it; checks and counting run outside the clock):
//!
//! 1. The owner's pull: `GET /api/v1/me/records?type=step-count&limit=5000` with an owner
//!    token, following `next_cursor` to the end (9 pages); and one full page.
//! 2. A company's sync: `GET /api/v1/sync?limit=5000` (the largest `limit`) with a
//!    `system/Observation.rs` token, following `next_cursor` until 10,000 changes were read
//!    (2 pages; each page writes its disclosure-log entry); and one page.
//! 3. FHIR search paging: `GET /fhir/Observation?patient=...&code=http://loinc.org|55423-8&
//!    _count=1000` (the largest `_count`) as the same company, following the `next` links to
//!    the end (44 pages; one disclosure entry each); and one page.
//! 4. References: (a) the storage floor: the store's own page query (`Store::records`' SQL)
//!    on a bare rusqlite connection to the gateway's SQLite file, reading the same rows' stored
//!    JSON text in the same pages of 5,000; (b) the HTTP floor: a bare actix-web handler
//!    serving the owner pull's page bodies, pre-built (the same bytes in the same number of
//!    requests), fetched by the same client.
//!
//! Between timed runs, every pull is checked: it must return exactly the records stored, in
//! measured order (the sync: in commit order), once each (by `record_id`, or the Observation
//! `id`, which is the `record_id`); the run fails (non-zero exit) otherwise.
//!
//! Run: `cargo bench -p phr-e2e --bench reads` (about a minute) or
//! `cargo bench -p phr-e2e --bench reads -- --quick` (2 days, 2 repetitions, no verdict: a
//! smoke run). Results: `BENCHMARKS.md`.

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::{bail, ensure, Context};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use rusqlite::{params, Connection};
use serde_json::Value;
use uuid::Uuid;

use phr_e2e::{stats, TestGateway};
use phr_gateway::api::{fhir, records, sync};
use phr_gateway::ingest;
use phr_gateway::store::{Clock as _, GranteeKind, Terms};
use phr_schema::record::{IntervalFrame, Provenance, StepCount};
use phr_schema::{Batch, Body, Limits, Record, RecordType};

const PERSON: &str = "bench-person";
const COMPANY: &str = "bench-company";
const BRIDGE: &str = "bench-bridge";
const DEVICE: &str = "bench-band";
/// The consumer's `MAX_GROUP`: batches per ingest transaction.
const GROUP: usize = 64;
/// Changes a company's sync reads (issue 17: "a company's sync page of 10,000 changes").
const SYNC_CHANGES: usize = 10_000;
/// Issue 17's goal for each whole pull, p99.
const GOAL_MS: f64 = 50.0;

#[derive(Debug, Clone, Copy)]
struct Plan {
    days: i64,
    warmup: usize,
    reps: usize,
    /// Fewer runs for the FHIR pull (it is the slowest).
    fhir_reps: usize,
    quick: bool,
}

impl Plan {
    fn from_args() -> Self {
        if std::env::args().any(|a| a == "--quick") {
            Self {
                days: 2,
                warmup: 1,
                reps: 2,
                fhir_reps: 1,
                quick: true,
            }
        } else {
            Self {
                days: 30,
                warmup: 2,
                reps: 20,
                fhir_reps: 10,
                quick: false,
            }
        }
    }
}

/// A small deterministic generator, so every run seeds the same numbers.
#[derive(Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Seeds `days` of minute-level steps ending two minutes before `now` through
/// `Store::ingest`; returns the record ids in measured order (also the commit order).
fn seed(gw: &TestGateway, days: i64, now: DateTime<Utc>) -> anyhow::Result<Vec<String>> {
    let store = &gw.gateway.store;
    let minutes = days * 24 * 60;
    let first = now - TimeDelta::minutes(minutes + 2);
    gw.enrol(
        PERSON,
        BRIDGE,
        &[DEVICE.to_owned()],
        first - TimeDelta::hours(1),
    )?;
    let mut rng = SplitMix(0x5eed);
    let mut ids = Vec::with_capacity(minutes as usize);
    let mut batches = Vec::new();
    for hour in 0..minutes / 60 {
        let mut batch = Vec::with_capacity(60);
        for m in 0..60 {
            let start = first + TimeDelta::minutes(hour * 60 + m);
            let end = start + TimeDelta::minutes(1);
            let count = match rng.next() % 100 {
                0..=59 => 0,
                60..=89 => (rng.next() % 120) as i64,
                _ => 120 + (rng.next() % 61) as i64,
            };
            let r = Record::new(
                DEVICE,
                BRIDGE,
                end.fixed_offset(),
                Provenance::sensed("bench/1"),
                Body::StepCount(StepCount {
                    effective_time_frame: IntervalFrame::new(
                        start.fixed_offset(),
                        end.fixed_offset(),
                    ),
                    step_count: count,
                }),
            );
            ids.push(r.record_id.to_string());
            batch.push(r);
        }
        let b = Batch::new(BRIDGE, DEVICE, Uuid::new_v4(), batch);
        batches.push(serde_json::to_vec(&b)?);
    }
    let limits = Limits::default();
    let mut stored = 0usize;
    for group in batches.chunks(GROUP) {
        let checked = group
            .iter()
            .map(|p| ingest::check(p, BRIDGE, DEVICE, now, &limits))
            .collect();
        let acks = store.ingest(checked, now)?;
        stored += acks.iter().map(|a| a.stored as usize).sum::<usize>();
    }
    ensure!(
        stored == ids.len(),
        "Store::ingest stored {stored} of {} records",
        ids.len()
    );
    store.grant_consent(
        PERSON,
        Terms {
            grantee: COMPANY.into(),
            grantee_kind: GranteeKind::Client,
            purpose: "bench".into(),
            data_types: RecordType::ALL.to_vec(),
            window_from: None,
            window_to: None,
            valid_until: None,
        },
        PERSON,
        now,
    )?;
    Ok(ids)
}

/// `GET url` with a bearer token; the whole body.
fn get(agent: &ureq::Agent, url: &str, token: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(s, r)) => {
            bail!("GET {url}: {s} {}", r.into_string().unwrap_or_default())
        }
        Err(e) => return Err(e).context(format!("GET {url}")),
    };
    let mut body = Vec::with_capacity(1 << 21);
    resp.into_reader().read_to_end(&mut body)?;
    Ok(body)
}

/// The string value of the last `"key":"..."` in a JSON body (no escapes in it), found
/// without parsing the body: the cursor or link that ends each page.
fn last_string(body: &[u8], key: &str) -> anyhow::Result<Option<String>> {
    let text = std::str::from_utf8(body)?;
    let needle = format!("\"{key}\":\"");
    Ok(text.rfind(&needle).and_then(|at| {
        let rest = &text[at + needle.len()..];
        rest.find('"').map(|end| rest[..end].to_owned())
    }))
}

/// One whole pull: the page bodies and each page's milliseconds.
#[derive(Debug, Default)]
struct Pull {
    pages: Vec<Vec<u8>>,
    page_ms: Vec<f64>,
}

impl Pull {
    fn bytes(&self) -> usize {
        self.pages.iter().map(Vec::len).sum()
    }
}

/// The owner's pull through `/api/v1/me/records`, following `next_cursor` to the end.
fn owner_pull(agent: &ureq::Agent, gw: &TestGateway, token: &str) -> anyhow::Result<Pull> {
    let mut pull = Pull::default();
    let mut cursor: Option<String> = None;
    loop {
        let started = Instant::now();
        let mut url = gw.url(&format!(
            "/api/v1/me/records?type=step-count&limit={}",
            records::MAX_LIMIT
        ));
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let body = get(agent, &url, Some(token))?;
        cursor = last_string(&body, "next_cursor")?;
        pull.page_ms.push(started.elapsed().as_secs_f64() * 1e3);
        pull.pages.push(body);
        if cursor.is_none() {
            return Ok(pull);
        }
    }
}

/// A company's sync through `/api/v1/sync` from the start, until `changes` were read.
fn sync_pull(
    agent: &ureq::Agent,
    gw: &TestGateway,
    token: &str,
    changes: usize,
) -> anyhow::Result<Pull> {
    let mut pull = Pull::default();
    let mut cursor: Option<String> = None;
    let mut read = 0;
    while read < changes {
        let started = Instant::now();
        let mut url = gw.url(&format!(
            "/api/v1/sync?limit={}",
            sync::MAX_LIMIT.min(changes - read)
        ));
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let body = get(agent, &url, Some(token))?;
        cursor = last_string(&body, "next_cursor")?;
        pull.page_ms.push(started.elapsed().as_secs_f64() * 1e3);
        // Counted after the page's clock stopped.
        let n = serde_json::from_slice::<Value>(&body)?["changes"]
            .as_array()
            .map_or(0, Vec::len);
        ensure!(n > 0, "a sync page without changes after {read}");
        read += n;
        pull.pages.push(body);
    }
    Ok(pull)
}

/// A FHIR search as the company, following the `next` links to the end.
fn fhir_pull(agent: &ureq::Agent, gw: &TestGateway, token: &str) -> anyhow::Result<Pull> {
    let mut pull = Pull::default();
    let mut url = Some(gw.url(&format!(
        "/fhir/Observation?patient={PERSON}&code=http://loinc.org%7C55423-8&_count={}",
        fhir::MAX_COUNT
    )));
    while let Some(u) = url {
        let started = Instant::now();
        let body = get(agent, &u, Some(token))?;
        let text = std::str::from_utf8(&body)?;
        url = text.rfind("\"relation\":\"next\"").and_then(|at| {
            let rest = &text[at..];
            let u = rest.find("\"url\":\"")? + 7;
            rest[u..].find('"').map(|end| rest[u..u + end].to_owned())
        });
        pull.page_ms.push(started.elapsed().as_secs_f64() * 1e3);
        pull.pages.push(body);
    }
    Ok(pull)
}

/// The record ids a pull returned, in order, read from `array` of each page (`field` of each
/// item, itself at `path`).
fn ids_of(pull: &Pull, array: &str, path: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for page in &pull.pages {
        let v: Value = serde_json::from_slice(page).context("a page that is not JSON")?;
        for item in v[array].as_array().context("no array in a page")? {
            let mut x = item;
            for p in path {
                x = &x[*p];
            }
            out.push(x.as_str().context("no id")?.to_owned());
        }
    }
    Ok(out)
}

fn check(what: &str, got: &[String], want: &[String]) -> anyhow::Result<()> {
    if got != want {
        let first = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        bail!(
            "{what}: {} records returned, {} expected; first difference at #{first}",
            got.len(),
            want.len()
        );
    }
    Ok(())
}

/// Times `reps` runs of `f` after `warmup` untimed ones; each run's pages go to `check`
/// (outside the clock). Returns the whole runs' milliseconds (the sum of their pages': each
/// request from its start to the body's end and the cursor found) and every page's.
fn time(
    warmup: usize,
    reps: usize,
    mut f: impl FnMut() -> anyhow::Result<Pull>,
    mut check: impl FnMut(&Pull) -> anyhow::Result<()>,
) -> anyhow::Result<(Vec<f64>, Vec<f64>, Pull)> {
    let mut last = Pull::default();
    for _ in 0..warmup {
        last = f()?;
        check(&last)?;
    }
    let (mut whole, mut pages) = (Vec::with_capacity(reps), Vec::new());
    for _ in 0..reps {
        let pull = f()?;
        whole.push(pull.page_ms.iter().sum());
        check(&pull)?;
        pages.extend(pull.page_ms.iter().copied());
        last = pull;
    }
    Ok((whole, pages, last))
}

/// The storage floor: the store's page query on a bare connection, all pages.
fn sql_pull(conn: &Connection, page: usize) -> anyhow::Result<(Vec<f64>, usize, usize)> {
    let mut stmt = conn.prepare_cached(
        "SELECT start_ms, device_id, end_ms, body, stored_at_ms FROM records
         WHERE person_id = ?1 AND record_type = ?2 AND start_ms >= ?3 AND start_ms < ?4
           AND (start_ms, device_id, end_ms) > (?5, ?6, ?7)
         ORDER BY start_ms, device_id, end_ms
         LIMIT ?8",
    )?;
    let mut after = (i64::MIN, String::new(), i64::MIN);
    let (mut page_ms, mut rows_read, mut bytes) = (Vec::new(), 0, 0);
    loop {
        let started = Instant::now();
        // As `Store::records`: the index range starts at the cursor's start.
        let mut rows = stmt.query(params![
            PERSON,
            "step-count",
            after.0,
            i64::MAX,
            after.0,
            after.1,
            after.2,
            (page + 1) as i64
        ])?;
        let mut n = 0;
        let mut more = false;
        let mut texts = Vec::with_capacity(page);
        while let Some(row) = rows.next()? {
            if n == page {
                more = true;
                break;
            }
            after = (row.get(0)?, row.get(1)?, row.get(2)?);
            let body: String = row.get(3)?;
            let _stored: i64 = row.get(4)?;
            texts.push(body);
            n += 1;
        }
        drop(rows);
        page_ms.push(started.elapsed().as_secs_f64() * 1e3);
        rows_read += n;
        bytes += texts.iter().map(String::len).sum::<usize>();
        std::hint::black_box(texts);
        if !more {
            return Ok((page_ms, rows_read, bytes));
        }
    }
}

/// A bare actix-web server answering `GET /floor/{i}` with the `i`th pre-built body.
fn floor_server(
    runtime: &tokio::runtime::Runtime,
    bodies: Vec<Vec<u8>>,
) -> anyhow::Result<(String, actix_web::dev::ServerHandle)> {
    let bodies: Arc<Vec<web::Bytes>> = Arc::new(bodies.into_iter().map(web::Bytes::from).collect());
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = {
        let _guard = runtime.enter();
        HttpServer::new(move || {
            let bodies = bodies.clone();
            App::new().route(
                "/floor/{i}",
                web::get().to(move |i: web::Path<usize>| {
                    let bodies = bodies.clone();
                    async move {
                        match bodies.get(i.into_inner()) {
                            Some(b) => HttpResponse::Ok()
                                .content_type("application/json")
                                .body(b.clone()),
                            None => HttpResponse::NotFound().finish(),
                        }
                    }
                }),
            )
        })
        // As the gateway's server (gateway/src/lib.rs).
        .workers(2)
        .listen(listener)?
        .run()
    };
    let handle = server.handle();
    runtime.spawn(server);
    Ok((base, handle))
}

/// Records/s and µs per record at `ms` for `n` records.
fn rate(n: usize, ms: f64) -> (f64, f64) {
    (n as f64 / (ms / 1e3), ms * 1e3 / n as f64)
}

fn main() -> anyhow::Result<()> {
    let plan = Plan::from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let gw = runtime.block_on(TestGateway::start_with(None))?;
    let now = gw.clock.now().duration_trunc(TimeDelta::minutes(1))?;
    eprintln!(
        "seeding {} days of minute-level steps through Store::ingest...",
        plan.days
    );
    let started = Instant::now();
    let ids = seed(&gw, plan.days, now)?;
    let n = ids.len();
    eprintln!(
        "seeded {n} records in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let sync_n = SYNC_CHANGES.min(n);

    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let owner = gw.owner_token(PERSON);
    let company = gw
        .gateway
        .keys
        .issue(
            COMPANY,
            "system/Observation.rs",
            TimeDelta::hours(1),
            gw.clock.now(),
        )
        .context("company token")?;

    // (1) The owner's pull.
    eprintln!("(1) owner pulls...");
    let (owner_ms, owner_pages, owner_last) = time(
        plan.warmup,
        plan.reps,
        || owner_pull(&agent, &gw, &owner),
        |p| check("owner pull", &ids_of(p, "records", &["record_id"])?, &ids),
    )?;
    // (2) A company's sync of the first 10,000 changes (commit order = measured order here).
    eprintln!("(2) company syncs...");
    let (sync_ms, sync_pages, sync_last) = time(
        plan.warmup,
        plan.reps,
        || sync_pull(&agent, &gw, &company, sync_n),
        |p| {
            let ops = ids_of(p, "changes", &["op"])?;
            ensure!(
                ops.iter().all(|o| o == "stored"),
                "a sync change that is not `stored`"
            );
            check(
                "company sync",
                &ids_of(p, "changes", &["record_id"])?,
                &ids[..sync_n],
            )?;
            // The record carried is the one named.
            check(
                "company sync (records)",
                &ids_of(p, "changes", &["record", "record_id"])?,
                &ids[..sync_n],
            )
        },
    )?;
    // (3) FHIR search paging.
    eprintln!("(3) FHIR searches...");
    let (fhir_ms, fhir_pages, fhir_last) = time(
        plan.warmup,
        plan.fhir_reps,
        || fhir_pull(&agent, &gw, &company),
        |p| {
            check(
                "FHIR search",
                &ids_of(p, "entry", &["resource", "id"])?,
                &ids,
            )
        },
    )?;

    // (4a) The storage floor.
    eprintln!("(4) references...");
    let bare = Connection::open(gw.config.data_dir.join("phr.sqlite"))?;
    bare.execute_batch(phr_gateway::store::PRAGMAS)?;
    for _ in 0..plan.warmup {
        std::hint::black_box(sql_pull(&bare, records::MAX_LIMIT)?);
    }
    let (mut sql_ms, mut sql_pages, mut sql_bytes) = (Vec::new(), Vec::new(), 0);
    for _ in 0..plan.reps {
        let (pages, rows, bytes) = sql_pull(&bare, records::MAX_LIMIT)?;
        sql_ms.push(pages.iter().sum());
        ensure!(rows == n, "the bare SELECT read {rows} rows of {n}");
        sql_pages.extend(pages);
        sql_bytes = bytes;
    }
    // (4b) The HTTP floor: the owner pull's bodies from a bare handler.
    let owner_bytes = owner_last.bytes();
    let owner_page_count = owner_last.pages.len();
    let first_page_bytes = owner_last.pages[0].len();
    let (floor_base, floor_handle) = floor_server(&runtime, owner_last.pages)?;
    let floor_pull = || -> anyhow::Result<Pull> {
        let mut pull = Pull::default();
        for i in 0..owner_page_count {
            let started = Instant::now();
            let body = get(&agent, &format!("{floor_base}/floor/{i}"), None)?;
            pull.page_ms.push(started.elapsed().as_secs_f64() * 1e3);
            pull.pages.push(body);
        }
        Ok(pull)
    };
    let (floor_ms, floor_pages, _) = time(plan.warmup, plan.reps, floor_pull, |p| {
        ensure!(
            p.bytes() == owner_bytes,
            "the HTTP floor served other bytes"
        );
        Ok(())
    })?;
    runtime.block_on(floor_handle.stop(true));

    // Only full pages count as "one page".
    let full = |ms: &[f64], pages_per_pull: usize, last_short: bool| -> Vec<f64> {
        ms.chunks(pages_per_pull)
            .flat_map(|c| if last_short { &c[..c.len() - 1] } else { c })
            .copied()
            .collect()
    };
    let owner_short = n % records::MAX_LIMIT != 0 && owner_page_count > 1;
    let owner_page_ms = full(&owner_pages, owner_page_count, owner_short);
    let sql_page_ms = full(&sql_pages, owner_page_count, owner_short);
    let floor_page_ms = full(&floor_pages, owner_page_count, owner_short);
    let fhir_count = fhir_last.pages.len();
    let fhir_short = n % fhir::MAX_COUNT != 0 && fhir_count > 1;
    let fhir_page_ms = full(&fhir_pages, fhir_count, fhir_short);
    let sync_count = sync_last.pages.len();

    println!("\n| machine | |\n| --- | --- |");
    for (k, v) in phr_e2e::machine() {
        println!("| {k} | {v} |");
    }
    let page_size = records::MAX_LIMIT.min(n);
    println!(
        "\n{n} `step-count` records seeded ({} days of minute-level steps, one person, one \
         device); owner pull {owner_page_count} pages of up to {} ({:.2} MB in all, a full page \
         {:.2} MB); sync {sync_count} pages of up to {} ({:.2} MB); FHIR {fhir_count} pages of up \
         to {} ({:.2} MB); the records' stored JSON text {:.2} MB. {} timed runs per row ({} for \
         FHIR) after {} warm-up runs; p99 by nearest rank (the slowest run below 100 runs).\n",
        plan.days,
        records::MAX_LIMIT,
        owner_bytes as f64 / 1e6,
        first_page_bytes as f64 / 1e6,
        sync::MAX_LIMIT,
        sync_last.bytes() as f64 / 1e6,
        fhir::MAX_COUNT,
        fhir_last.bytes() as f64 / 1e6,
        sql_bytes as f64 / 1e6,
        plan.reps,
        plan.fhir_reps,
        plan.warmup,
    );
    println!(
        "| measurement | records | median ms | p99 ms | min .. max ms | records/s | µs/record |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let row = |what: &str, records: usize, ms: &[f64]| -> f64 {
        if ms.is_empty() {
            println!("| {what} | {records} | — | — | — | — | — |");
            return f64::NAN;
        }
        let (median, p99, min, max) = stats(ms, 0.99);
        let (per_s, us) = rate(records, median);
        println!(
            "| {what} | {records} | {median:.1} | {p99:.1} | {min:.1} .. {max:.1} | {per_s:.0} | {us:.2} |"
        );
        median
    };
    let m1 = row(
        &format!("(1) owner pull, `/api/v1/me/records`, {owner_page_count} pages"),
        n,
        &owner_ms,
    );
    let m1p = row("(1p) owner, one full page", page_size, &owner_page_ms);
    let m2 = row(
        &format!("(2) company sync, `/api/v1/sync`, {sync_count} pages"),
        sync_n,
        &sync_ms,
    );
    let sync_page = sync::MAX_LIMIT.min(sync_n);
    let sync_full: Vec<f64> = if sync_n % sync_page == 0 {
        sync_pages.clone()
    } else {
        Vec::new()
    };
    row("(2p) company sync, one full page", sync_page, &sync_full);
    let m3 = row(
        &format!("(3) FHIR search, `/fhir/Observation`, {fhir_count} pages"),
        n,
        &fhir_ms,
    );
    row(
        "(3p) FHIR search, one full page",
        fhir::MAX_COUNT.min(n),
        &fhir_page_ms,
    );
    let m4a = row(
        &format!("(4a) reference: the store's page SQL, bare rusqlite, {owner_page_count} pages"),
        n,
        &sql_ms,
    );
    let m4ap = row(
        "(4a p) reference: SQL, one full page",
        page_size,
        &sql_page_ms,
    );
    let m4b = row(
        &format!(
            "(4b) reference: HTTP floor, bare actix-web, the owner pull's {owner_page_count} bodies"
        ),
        n,
        &floor_ms,
    );
    let m4bp = row(
        "(4b p) reference: HTTP floor, one full page",
        page_size,
        &floor_page_ms,
    );

    // Page by page: each page's median, the owner API next to the bare SQL.
    println!(
        "\n| owner pull, page # | records before it | (1) API median ms | (4a) SQL median ms |\n\
         | --- | --- | --- | --- |"
    );
    for i in 0..owner_page_count {
        let nth = |ms: &[f64]| -> Vec<f64> { ms.chunks(owner_page_count).map(|c| c[i]).collect() };
        println!(
            "| {} | {} | {:.1} | {:.1} |",
            i + 1,
            i * records::MAX_LIMIT,
            stats(&nth(&owner_pages), 0.99).0,
            stats(&nth(&sql_pages), 0.99).0
        );
    }

    println!("\n| ratio (of medians) | value |\n| --- | --- |");
    println!("| (1) owner pull / (4a) SQL | {:.1} |", m1 / m4a);
    println!("| (1) owner pull / (4b) HTTP floor | {:.1} |", m1 / m4b);
    println!(
        "| (1) owner pull / ((4a) + (4b)) | {:.1} |",
        m1 / (m4a + m4b)
    );
    println!(
        "| (1p) owner page / ((4a p) + (4b p)) | {:.1} |",
        m1p / (m4ap + m4bp)
    );
    println!(
        "| (2) sync, per record / (1) owner, per record | {:.1} |",
        (m2 / sync_n as f64) / (m1 / n as f64)
    );
    println!(
        "| (3) FHIR / (1) owner pull (same records) | {:.1} |",
        m3 / m1
    );

    println!("\n| goal (issue 17) | p99 ms | goal ms | verdict |\n| --- | --- | --- | --- |");
    let verdict = |ms: &[f64], records: usize, full: usize| -> (f64, String) {
        let p99 = stats(ms, 0.99).1;
        let v = if plan.quick {
            "not judged (smoke run)".to_owned()
        } else if records < full {
            format!("not judged ({records} records, not {full})")
        } else if p99 < GOAL_MS {
            "MET".to_owned()
        } else {
            format!("NOT MET ({:.0}x the goal)", p99 / GOAL_MS)
        };
        (p99, v)
    };
    for (what, ms, records, full) in [
        ("43,200 records through the owner API", &owner_ms, n, 43_200),
        (
            "a company's sync of 10,000 changes",
            &sync_ms,
            sync_n,
            10_000,
        ),
        ("FHIR paging, the same 43,200 records", &fhir_ms, n, 43_200),
    ] {
        let (p99, v) = verdict(ms, records, full);
        println!("| {what} | {p99:.1} | {GOAL_MS:.0} | {v} |");
    }
    runtime.block_on(gw.stop());
    Ok(())
}
