//! The owner's export of everything stored about them: `GET /api/v1/me/export?format=...`.
//!
//! | `format` | content type | content |
//! | --- | --- | --- |
//! | `fhir` (default) | `application/fhir+ndjson` | one FHIR R4 Observation per record, then one `41950-7` daily step total per local day |
//! | `fhir-bundle` | `application/fhir+json` | the same resources in one `collection` Bundle |
//! | `omh` | `application/json` | a JSON array of Open mHealth data points (a sleep episode gives its episode point plus one `phr:sleep-stage:1.0` point per stage, whose JSON Schema is served unauthenticated at [`SLEEP_STAGE_SCHEMA`]), `user_id` set |
//! | `csv` | `text/csv; charset=utf-8` | [`phr_schema::csv::HEADER`] and one row per record |
//!
//! Records come type by type (step-count, sleep-episode, heart-rate), each in measured order.
//! Observations name the owner as `Patient/<person_id>`; `issued` and the Open mHealth
//! `creation_date_time` are when the gateway stored the record; daily totals are issued at
//! export time. The `fhir` file is what `phr-gateway import` reads.
//!
//! Needs `patient/Observation` read (`r`). Only the token's own subject is exported. An
//! export is a disclosure to the person themself, so it is not a disclosure to anyone else,
//! but the log keeps one `export` entry per export (how many records, when) for the owner.
//!
//! Daily step totals (`41950-7`) are the merged view's ([`crate::store::sources`]): each step
//! counted once across the person's devices, per local day of their registered zone (DST
//! included: a 23- or 25-hour day's period says so). The per-record Observations keep every
//! device's records, each with the offset its device reported, so a recipient can merge
//! differently. (`issued` is written with the offset of `Asia/Tokyo` for people there, UTC
//! otherwise.)
//!
//! Size: the body is streamed. A producer reads the person's records in pages of
//! [`PAGE_RECORDS`] (keyset pagination on `(start_ms, device_id, end_ms)` per type, each page
//! its own short read on the blocking pool), turns each page into bytes and hands them to the
//! response through a channel of [`CHANNEL_CHUNKS`] chunks; it waits while the channel is
//! full, so a slow client holds at most that many pages in memory, whatever the history.
//! What stays in memory besides: one daily step total per local day, written at the end.
//! Pages are separate reads, not one snapshot: a record stored while an export runs may
//! or may not be in it (it is in the next one); none is ever written twice or out of order.
//!
//! Concurrency: at most `export.per_subject` exports per subject (default 2) and
//! `export.total` overall ([`ExportSlots`]); more get 429 `too_many_exports` with
//! `Retry-After`. A slot is held until the response body is dropped (done or disconnected).
//!
//! Failure mid-stream: the first page is read before answering, so an early failure is a
//! plain 500. A failure after that (a store error, a record that does not parse, the
//! disclosure-log entry that cannot be written) ends the body with an error: the server
//! closes the connection without the chunked encoding's last chunk, so a client sees an
//! incomplete transfer, never a truncated file that looks complete. The disclosure-log
//! entry is written after the last record and before the format's closing bytes (the
//! Bundle's or array's end): an export that was not logged is never complete either.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, FixedOffset, NaiveDate, Offset, Utc};
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use phr_schema::{Body, Record, RecordType};

use super::blocking;
use super::error::ApiError;
use super::AppState;
use crate::auth::Principal;
use crate::store::prelude::*;
use crate::store::subjects::{DayWindow, Zone};
use crate::store::{Backend, PageKey};
use crate::Error;

pub const EXPORT: &str = "/api/v1/me/export";
/// The JSON Schema of `phr:sleep-stage:1.0` points' bodies (the project's own schema next to
/// the Open mHealth ones an `omh` export uses), for anyone who receives such points.
pub const SLEEP_STAGE_SCHEMA: &str = "/schemas/phr/sleep-stage-1.0.json";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(EXPORT, web::get().to(export))
        .route(SLEEP_STAGE_SCHEMA, web::get().to(sleep_stage_schema));
}

/// The JSON Schema (draft-04, like the Open mHealth schemas it refers to) of the body of a
/// `phr:sleep-stage:1.0` data point: one stage of a sleep episode, as `omh` exports and
/// `format=omh` reads carry them. No token needed; the same bytes for everyone.
#[utoipa::path(get, path = "/schemas/phr/sleep-stage-1.0.json", tag = "export",
    responses(
        (status = 200, description = "The JSON Schema document", content_type = "application/schema+json", body = Object),
        (status = 429, description = "Too many requests (`rate_limited`)", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn sleep_stage_schema() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/schema+json")
        .insert_header((header::CACHE_CONTROL, "public, max-age=86400"))
        .body(phr_schema::omh::SLEEP_STAGE_SCHEMA)
}

/// The export formats, by their `format` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Fhir,
    FhirBundle,
    Omh,
    Csv,
}

impl Format {
    pub const ALL: [Format; 4] = [Self::Fhir, Self::FhirBundle, Self::Omh, Self::Csv];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fhir => "fhir",
            Self::FhirBundle => "fhir-bundle",
            Self::Omh => "omh",
            Self::Csv => "csv",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Fhir => "application/fhir+ndjson",
            Self::FhirBundle => "application/fhir+json",
            Self::Omh => "application/json",
            Self::Csv => "text/csv; charset=utf-8",
        }
    }

    /// The file name extension of the download.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Fhir => "ndjson",
            Self::FhirBundle => "fhir.json",
            Self::Omh => "omh.json",
            Self::Csv => "csv",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = ApiError;

    fn from_str(s: &str) -> Result<Self, ApiError> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_format",
                    "`format` must be one of fhir, fhir-bundle, omh, csv",
                )
            })
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ExportQuery {
    /// `fhir` (default, FHIR R4 NDJSON), `fhir-bundle` (one FHIR `collection` Bundle), `omh`
    /// (a JSON array of Open mHealth data points) or `csv`.
    #[param(value_type = Option<ExportFormat>, inline)]
    format: Option<String>,
}

/// The export formats, for the OpenAPI document.
#[derive(Debug, ToSchema)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)]
pub(crate) enum ExportFormat {
    Fhir,
    FhirBundle,
    Omh,
    Csv,
}

fn require(p: &Principal, resource: &str, perm: char) -> Result<(), ApiError> {
    if p.has_scope("patient", resource, perm) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// Everything stored about the owner, as one download.
#[utoipa::path(get, path = "/api/v1/me/export", tag = "export", operation_id = "export",
    params(ExportQuery),
    security(("bearer" = [])),
    description = "Scope: `patient/Observation.r`. Only the token's own subject is exported, \
                   as an attachment (`Content-Disposition`, `Cache-Control: no-store`). The \
                   content type follows `format`: `fhir` (default) `application/fhir+ndjson`, \
                   one FHIR R4 Observation per line (per record, then one `41950-7` daily step \
                   total per local day; empty when nothing is stored); `fhir-bundle` \
                   `application/fhir+json`, the same resources in one `collection` Bundle; \
                   `omh` `application/json`, an array of Open mHealth data points; `csv` \
                   `text/csv; charset=utf-8`, a header row and one row per record. Daily \
                   totals split days at local midnight for `Asia/Tokyo` and at UTC midnight \
                   for every other zone. The export is logged for the owner.",
    responses(
        (status = 200, description = "The export, in the content type of its `format`", content(
            (String = "application/fhir+ndjson"),
            (Object = "application/fhir+json"),
            (Vec<Object> = "application/json"),
            (String = "text/csv"),
        )),
        (status = 400, description = "`invalid_format` or `invalid_query`", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks `patient/Observation.r`", body = super::openapi::ErrorBody),
        (status = 429, description = "`rate_limited`, or `too_many_exports` (the caller already has `export.per_subject` exports running, or the gateway `export.total`); see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error before the body began; a failure while the body streams closes the connection before the transfer completes", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn export(
    principal: Principal,
    state: web::Data<AppState>,
    query: Result<web::Query<ExportQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, "Observation", 'r')?;
    let q = query
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?
        .into_inner();
    let format: Format = q.format.as_deref().unwrap_or("fhir").parse()?;
    download(&state, principal.subject, format).await
}

/// Records read per page of an export.
pub const PAGE_RECORDS: usize = 500;

/// Pages an export may have written ahead of what the client has taken.
pub const CHANNEL_CHUNKS: usize = 4;

/// What `Retry-After` says when an export is refused for concurrency.
pub const EXPORT_RETRY_AFTER_SECS: u64 = 10;

/// `person`'s whole export in `format` as a download: the response of `GET
/// /api/v1/me/export` (the owner's dashboard answers its downloads with this too). Streamed;
/// 429 `too_many_exports` when the person (or everyone) has too many running.
pub async fn download(
    state: &AppState,
    person: String,
    format: Format,
) -> Result<HttpResponse, ApiError> {
    let permit = state
        .exports
        .try_acquire(&person)
        .ok_or(ApiError::TooManyExports {
            retry_after_secs: EXPORT_RETRY_AFTER_SECS,
        })?;
    let filename = format!("phr-export-{}.{}", file_safe(&person), format.extension());
    let store = state.store.clone();
    let now = state.clock.now();
    let (producer, first) = blocking(move || -> crate::Result<_> {
        let mut producer = Producer::new(store, &person, format, now)?;
        let first = producer.next_chunk();
        Ok((producer, first))
    })
    .await?;
    let first = first?;
    let rx = spawn_producer(producer);
    Ok(HttpResponse::Ok()
        .content_type(format.content_type())
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{filename}\""),
        ))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(ExportBody {
            first: first.map(Bytes::from),
            rx,
            _permit: permit,
        }))
}

/// Starts `producer` on this worker; its chunks arrive on the returned channel, which holds
/// at most [`CHANNEL_CHUNKS`] (the producer waits while it is full).
fn spawn_producer(producer: Producer) -> tokio::sync::mpsc::Receiver<Result<Bytes, ExportFailed>> {
    let (tx, rx) = tokio::sync::mpsc::channel(CHANNEL_CHUNKS);
    actix_web::rt::spawn(produce(producer, tx));
    rx
}

/// Runs `producer` page by page off the async workers, sending each chunk when the channel
/// has room; stops when the client is gone.
async fn produce(
    mut producer: Producer,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, ExportFailed>>,
) {
    loop {
        let step = web::block(move || {
            let chunk = producer.next_chunk();
            (producer, chunk)
        })
        .await;
        let Ok((p, chunk)) = step else {
            let _ = tx.send(Err(ExportFailed)).await;
            return;
        };
        producer = p;
        let sent = match chunk {
            // An empty chunk would end a chunked body early (its encoding is the last chunk).
            Ok(Some(bytes)) if bytes.is_empty() => continue,
            Ok(Some(bytes)) => tx.send(Ok(Bytes::from(bytes))).await,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "export failed mid-stream; the connection is closed");
                let _ = tx.send(Err(ExportFailed)).await;
                return;
            }
        };
        if sent.is_err() {
            // The client went away: stop reading.
            return;
        }
    }
}

/// An export that failed after its response began (the body ends with this error, so the
/// connection is closed without completing the transfer).
#[derive(Debug, thiserror::Error)]
#[error("the export failed mid-stream")]
pub struct ExportFailed;

/// The response body: the first chunk, then what the producer sends. Holds the export's
/// slot until dropped.
struct ExportBody {
    first: Option<Bytes>,
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, ExportFailed>>,
    _permit: ExportPermit,
}

impl MessageBody for ExportBody {
    type Error = ExportFailed;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        if let Some(b) = self.first.take().filter(|b| !b.is_empty()) {
            return Poll::Ready(Some(Ok(b)));
        }
        // Never an empty chunk: in chunked encoding that is the end of the body.
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(b))) if b.is_empty() => continue,
                other => return other,
            }
        }
    }
}

/// Running exports per subject and overall, with their limits.
#[derive(Debug)]
pub struct ExportSlots {
    per_subject: usize,
    total: usize,
    running: Mutex<HashMap<String, usize>>,
}

impl ExportSlots {
    pub fn new(per_subject: usize, total: usize) -> Arc<Self> {
        Arc::new(Self {
            per_subject,
            total,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one export of `subject`, if neither limit is reached.
    pub fn try_acquire(self: &Arc<Self>, subject: &str) -> Option<ExportPermit> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = running.values().sum();
        let mine = running.get(subject).copied().unwrap_or(0);
        if mine >= self.per_subject || total >= self.total {
            return None;
        }
        *running.entry(subject.to_owned()).or_default() += 1;
        Some(ExportPermit {
            slots: self.clone(),
            subject: subject.to_owned(),
        })
    }

    /// Exports of `subject` running now.
    pub fn running(&self, subject: &str) -> usize {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.get(subject).copied().unwrap_or(0)
    }
}

/// One running export; frees its slot when dropped.
#[derive(Debug)]
pub struct ExportPermit {
    slots: Arc<ExportSlots>,
    subject: String,
}

impl Drop for ExportPermit {
    fn drop(&mut self) {
        let mut running = self.slots.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = running.get_mut(&self.subject) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.subject);
            }
        }
    }
}

/// An export in progress: which type and key it has reached, and the format's writer.
/// Each [`Producer::next_chunk`] reads one page.
pub struct Producer {
    store: Arc<dyn Backend>,
    person_id: String,
    now: DateTime<Utc>,
    writer: Writer,
    /// Index into [`phr_schema::RecordType::ALL`]; past the end when the records are done.
    record_type: usize,
    after: Option<PageKey>,
    count: u64,
    done: bool,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("record_type", &self.record_type)
            .field("count", &self.count)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Producer {
    pub fn new(
        store: Arc<dyn Backend>,
        person_id: &str,
        format: Format,
        now: DateTime<Utc>,
    ) -> crate::Result<Self> {
        let time_zone = store.person_time_zone(person_id)?;
        let offset = utc_offset(time_zone.as_deref());
        let zone = Zone::resolve(time_zone.as_deref());
        Ok(Self {
            writer: Writer::new(format, person_id, offset, zone, now),
            store,
            person_id: person_id.to_owned(),
            now,
            record_type: 0,
            after: None,
            count: 0,
            done: false,
        })
    }

    /// The bytes of the next page of records (the format's opening with the first, its
    /// closing with the last, after the export is logged), or `None` when all is written.
    pub fn next_chunk(&mut self) -> crate::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        match phr_schema::RecordType::ALL.get(self.record_type) {
            Some(&t) => {
                let page = self.store.records(
                    &self.person_id,
                    t,
                    i64::MIN,
                    i64::MAX,
                    self.after.as_ref(),
                    PAGE_RECORDS,
                )?;
                for stored in page.records {
                    let record: Record = serde_json::from_str(&stored.json)
                        .map_err(|_| Error::Invalid("a stored record does not parse"))?;
                    let stored_at = DateTime::from_timestamp_millis(stored.stored_at_ms)
                        .ok_or(Error::Invalid("a stored record's time is out of range"))?
                        .fixed_offset();
                    self.writer.record(record, stored_at)?;
                    self.count += 1;
                }
                match page.next {
                    Some(key) => self.after = Some(key),
                    None => {
                        self.record_type += 1;
                        self.after = None;
                    }
                }
            }
            None => {
                self.writer.finish_records(&self.store)?;
                self.store
                    .log_export(&self.person_id, self.count, self.now)?;
                self.writer.close();
                self.done = true;
            }
        }
        Ok(Some(self.writer.take()))
    }

    /// Records written so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// The subject as a file name part: anything but `A-Z a-z 0-9 . _ -` becomes `_`.
fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The UTC offset used for local days of a person registered in `time_zone` (see the
/// module docs: only `Asia/Tokyo` is known; everything else is UTC).
pub fn utc_offset(time_zone: Option<&str>) -> FixedOffset {
    let utc = Utc.fix();
    match time_zone {
        Some("Asia/Tokyo") => FixedOffset::east_opt(9 * 3600).unwrap_or(utc),
        _ => utc,
    }
}

/// Writes `person_id`'s whole export in `format` into memory at once (and logs it, through
/// the store): the export as it was before it streamed, kept as the oracle the streamed
/// export is tested against. The API never calls it.
pub fn write_export(
    store: &dyn Backend,
    person_id: &str,
    format: Format,
    now: DateTime<Utc>,
) -> crate::Result<Vec<u8>> {
    let time_zone = store.person_time_zone(person_id)?;
    let offset = utc_offset(time_zone.as_deref());
    let zone = Zone::resolve(time_zone.as_deref());
    let mut w = Writer::new(format, person_id, offset, zone, now);
    let mut all = Vec::new();
    store.export_records(person_id, now, &mut |stored| {
        all.push(stored);
        Ok(())
    })?;
    for stored in all {
        let record: Record = serde_json::from_str(&stored.json)
            .map_err(|_| Error::Invalid("a stored record does not parse"))?;
        let stored_at = DateTime::from_timestamp_millis(stored.stored_at_ms)
            .ok_or(Error::Invalid("a stored record's time is out of range"))?
            .fixed_offset();
        w.record(record, stored_at)?;
    }
    w.finish(store)
}

/// Appends one format's output record by record.
struct Writer {
    format: Format,
    person_id: String,
    patient_ref: String,
    issued: DateTime<FixedOffset>,
    out: Vec<u8>,
    /// Whether a JSON array element has been written (for the separators).
    wrote_element: bool,
    /// Bundle text after the entries.
    bundle_tail: String,
    /// The person's zone: the local days of the daily totals.
    zone: Zone,
    /// The local days with step records, totalled at the end from the merged view.
    step_days: BTreeSet<NaiveDate>,
    /// CSV rows are written in chunks.
    csv_pending: Vec<Record>,
}

const CSV_CHUNK: usize = 1024;

impl Writer {
    fn new(
        format: Format,
        person_id: &str,
        offset: FixedOffset,
        zone: Zone,
        now: DateTime<Utc>,
    ) -> Self {
        let issued = now.with_timezone(&offset);
        let mut w = Self {
            format,
            person_id: person_id.to_owned(),
            patient_ref: format!("Patient/{person_id}"),
            issued,
            out: Vec::new(),
            wrote_element: false,
            bundle_tail: String::new(),
            zone,
            step_days: BTreeSet::new(),
            csv_pending: Vec::new(),
        };
        match format {
            Format::Fhir => {}
            Format::FhirBundle => {
                // The envelope exactly as `fhir::bundle` writes it, cut where the entries go.
                let empty =
                    phr_schema::fhir::bundle(Vec::new(), "collection", Uuid::new_v4(), issued)
                        .to_string();
                const EMPTY_ENTRIES: &str = "\"entry\":[]";
                let (head, tail) = empty.split_once(EMPTY_ENTRIES).unwrap_or((&empty, "}"));
                w.out.extend_from_slice(head.as_bytes());
                w.out.extend_from_slice(b"\"entry\":[");
                w.bundle_tail = format!("]{tail}");
            }
            Format::Omh => w.out.push(b'['),
            Format::Csv => {
                w.out.extend_from_slice(phr_schema::csv::HEADER.as_bytes());
                w.out.extend_from_slice(b"\r\n");
            }
        }
        w
    }

    fn json(&mut self, v: &Value) -> crate::Result<()> {
        serde_json::to_writer(&mut self.out, v)
            .map_err(|_| Error::Invalid("an export resource cannot be written"))
    }

    fn element(&mut self, v: &Value) -> crate::Result<()> {
        if self.wrote_element {
            self.out.push(b',');
        }
        self.wrote_element = true;
        self.json(v)
    }

    fn resource(&mut self, resource: Value) -> crate::Result<()> {
        match self.format {
            Format::Fhir => {
                self.json(&resource)?;
                self.out.push(b'\n');
                Ok(())
            }
            _ => {
                // One entry exactly as `fhir::bundle` makes it.
                let mut b = phr_schema::fhir::bundle(
                    vec![resource],
                    "collection",
                    Uuid::nil(),
                    self.issued,
                );
                let entry = b
                    .get_mut("entry")
                    .and_then(|e| e.as_array_mut())
                    .and_then(|e| e.pop())
                    .ok_or(Error::Invalid("a bundle without its entry"))?;
                self.element(&entry)
            }
        }
    }

    fn record(&mut self, record: Record, stored_at: DateTime<FixedOffset>) -> crate::Result<()> {
        match self.format {
            Format::Fhir | Format::FhirBundle => {
                for obs in phr_schema::fhir::observations(&record, &self.patient_ref, stored_at) {
                    self.resource(obs)?;
                }
                if let Body::StepCount(s) = &record.body {
                    let start = s.effective_time_frame.start().with_timezone(&Utc);
                    self.step_days
                        .insert(start.with_timezone(&self.zone.tz).date_naive());
                }
                Ok(())
            }
            Format::Omh => {
                for point in phr_schema::omh::data_points(&record, stored_at, Some(&self.person_id))
                {
                    self.element(&point)?;
                }
                Ok(())
            }
            Format::Csv => {
                self.csv_pending.push(record);
                if self.csv_pending.len() >= CSV_CHUNK {
                    self.flush_csv();
                }
                Ok(())
            }
        }
    }

    /// The daily totals of the days with step records: the merged view's (each step once
    /// across the person's devices, [`crate::store::sources`]), in the person's zone.
    fn daily_totals(&self, store: &dyn Backend) -> crate::Result<Vec<Value>> {
        let (Some(first), Some(last)) = (self.step_days.first(), self.step_days.last()) else {
            return Ok(Vec::new());
        };
        let days: Vec<DayWindow> = self
            .zone
            .days(*first, *last)
            .iter()
            .filter(|d| self.step_days.contains(&d.date))
            .filter_map(|d| d.clip((i64::MIN, i64::MAX)))
            .collect();
        let merged = store.merged_days(&self.person_id, RecordType::StepCount, &days)?;
        Ok(merged
            .into_iter()
            .filter_map(|(i, m)| {
                let d = &days.get(i)?.day;
                Some(phr_schema::fhir::daily_step_total(
                    d.date,
                    (d.start, d.end),
                    m.total.round() as i64,
                    &self.patient_ref,
                    self.issued,
                ))
            })
            .collect())
    }

    fn flush_csv(&mut self) {
        if self.csv_pending.is_empty() {
            return;
        }
        let rows = phr_schema::csv::rows(&self.csv_pending);
        // `rows` starts every chunk with the header line, written once already.
        let body = rows
            .get(phr_schema::csv::HEADER.len() + 2..)
            .unwrap_or_default();
        self.out.extend_from_slice(body.as_bytes());
        self.csv_pending.clear();
    }

    fn finish(mut self, store: &dyn Backend) -> crate::Result<Vec<u8>> {
        self.finish_records(store)?;
        self.close();
        Ok(self.out)
    }

    /// Writes what waits for the end of the records (daily totals, pending CSV rows).
    fn finish_records(&mut self, store: &dyn Backend) -> crate::Result<()> {
        match self.format {
            Format::Fhir | Format::FhirBundle => {
                for total in self.daily_totals(store)? {
                    self.resource(total)?;
                }
            }
            Format::Omh => {}
            Format::Csv => self.flush_csv(),
        }
        Ok(())
    }

    /// The format's closing bytes (the Bundle's or the array's end).
    fn close(&mut self) {
        match self.format {
            Format::FhirBundle => {
                let tail = std::mem::take(&mut self.bundle_tail);
                self.out.extend_from_slice(tail.as_bytes());
            }
            Format::Omh => self.out.push(b']'),
            Format::Fhir | Format::Csv => {}
        }
    }

    /// The bytes written since the last call.
    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_unknown_is_invalid_format() {
        for f in Format::ALL {
            assert_eq!(f.as_str().parse::<Format>().unwrap(), f);
        }
        let e = "xml".parse::<Format>().unwrap_err();
        assert_eq!(e.code(), "invalid_format");
    }

    #[test]
    fn only_tokyo_is_known() {
        assert_eq!(utc_offset(Some("Asia/Tokyo")).local_minus_utc(), 9 * 3600);
        for z in [None, Some("UTC"), Some("Europe/Berlin")] {
            assert_eq!(utc_offset(z).local_minus_utc(), 0);
        }
    }

    #[test]
    fn file_names_are_safe() {
        assert_eq!(file_safe("ana"), "ana");
        assert_eq!(file_safe("a:b\"c/d"), "a_b_c_d");
    }

    fn minute(i: i64) -> Record {
        use phr_schema::record::{IntervalFrame, Provenance, StepCount};
        // 14:00Z is 23:00 in Tokyo: later minutes fall on the next local day.
        let start = DateTime::parse_from_rfc3339("2026-01-05T14:00:00Z").unwrap()
            + chrono::TimeDelta::minutes(i);
        let end = start + chrono::TimeDelta::minutes(1);
        Record::new(
            "band-1",
            "br-1",
            end,
            Provenance::sensed("test/1"),
            Body::StepCount(StepCount {
                effective_time_frame: IntervalFrame::new(start, end),
                step_count: i.rem_euclid(50),
            }),
        )
    }

    fn written(
        format: Format,
        records: &[Record],
        offset: FixedOffset,
        now: DateTime<Utc>,
    ) -> Vec<u8> {
        // The daily totals come from the store's merged view: the records are stored first.
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.sqlite")).unwrap();
        store.add_person("ana", "Ana", "Asia/Tokyo").unwrap();
        store
            .grant_storage_consent("ana", &phr_schema::RecordType::ALL)
            .unwrap();
        store.import_records("ana", records, Utc::now()).unwrap();
        let zone = Zone::resolve(Some("Asia/Tokyo"));
        let mut w = Writer::new(format, "ana", offset, zone, now);
        for r in records {
            w.record(r.clone(), now.fixed_offset()).unwrap();
        }
        w.finish(&store).unwrap()
    }

    /// Everything `producer` writes, chunk by chunk.
    fn chunks(mut producer: Producer) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(c) = producer.next_chunk().unwrap() {
            out.push(c);
        }
        out
    }

    /// The bundle with its random id blanked.
    fn without_id(bytes: &[u8]) -> Value {
        let mut v: Value = serde_json::from_slice(bytes).unwrap();
        assert!(v["id"].is_string());
        v["id"] = Value::Null;
        v
    }

    #[test]
    fn the_streamed_export_is_the_in_memory_one_page_by_page() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Store::open(&dir.path().join("s.sqlite")).unwrap());
        store.add_person("ana", "Ana", "Asia/Tokyo").unwrap();
        store
            .grant_storage_consent("ana", &phr_schema::RecordType::ALL)
            .unwrap();
        let n = PAGE_RECORDS as i64 * 3 + 17;
        let records: Vec<Record> = (0..n).map(minute).collect();
        assert_eq!(
            store
                .import_records("ana", &records, Utc::now())
                .unwrap()
                .stored,
            n as u64
        );
        let now = Utc::now();
        for format in Format::ALL {
            let oracle = write_export(&store, "ana", format, now).unwrap();
            let producer = Producer::new(store.clone(), "ana", format, now).unwrap();
            let parts = chunks(producer);
            // One chunk per page of each type (the last page of a type may be short or
            // empty), plus the closing chunk: memory per chunk is bounded by the page size.
            assert!(parts.len() >= 4 + 2, "{format:?}: {} chunks", parts.len());
            let streamed = parts.concat();
            if format == Format::FhirBundle {
                assert_eq!(without_id(&streamed), without_id(&oracle));
            } else {
                assert_eq!(
                    String::from_utf8(streamed).unwrap(),
                    String::from_utf8(oracle).unwrap(),
                    "{format:?}"
                );
            }
            if format == Format::Fhir {
                // One Observation per step record: no chunk but the last holds more than a page.
                let (last, pages) = parts.split_last().unwrap();
                for p in pages {
                    assert!(p.iter().filter(|b| **b == b'\n').count() <= PAGE_RECORDS);
                }
                assert!(!last.is_empty(), "the daily totals come last");
            }
        }
        // Each streamed export was logged once, as the in-memory one is.
        let logged = store
            .disclosures("ana", 0, 100)
            .unwrap()
            .into_iter()
            .filter(|l| l.entry.action == crate::store::audit::Action::Export)
            .count();
        assert_eq!(logged, 2 * Format::ALL.len());
    }

    #[actix_web::test]
    async fn the_producer_stops_reading_when_the_channel_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Store::open(&dir.path().join("s.sqlite")).unwrap());
        store.add_person("ana", "Ana", "Asia/Tokyo").unwrap();
        store
            .grant_storage_consent("ana", &phr_schema::RecordType::ALL)
            .unwrap();
        let pages = 4 * CHANNEL_CHUNKS;
        let records: Vec<Record> = (0..(PAGE_RECORDS * pages) as i64).map(minute).collect();
        store.import_records("ana", &records, Utc::now()).unwrap();
        let now = Utc::now();
        let producer = Producer::new(store.clone(), "ana", Format::Omh, now).unwrap();
        let base = store.accesses();
        let mut rx = spawn_producer(producer);
        assert_eq!(rx.max_capacity(), CHANNEL_CHUNKS, "the channel is bounded");
        // Nobody reads: the producer fills the channel, then waits.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while rx.len() < CHANNEL_CHUNKS {
            assert!(
                std::time::Instant::now() < deadline,
                "the channel never filled"
            );
            actix_web::rt::task::yield_now().await;
        }
        // One store read per page: the pages in the channel plus the one waiting to be sent.
        let read = store.accesses() - base;
        assert!(
            read <= CHANNEL_CHUNKS as u64 + 1,
            "{read} pages read with {CHANNEL_CHUNKS} chunks waiting"
        );
        // Taking the chunks lets it go on to the end, and the bytes are the export's.
        let mut streamed = Vec::new();
        while let Some(chunk) = rx.recv().await {
            streamed.extend_from_slice(&chunk.unwrap());
        }
        let oracle = write_export(&store, "ana", Format::Omh, now).unwrap();
        assert_eq!(streamed, oracle);
    }

    #[test]
    fn export_slots_limit_per_subject_and_overall_and_free_on_drop() {
        let slots = ExportSlots::new(2, 3);
        let a1 = slots.try_acquire("ana").unwrap();
        let a2 = slots.try_acquire("ana").unwrap();
        assert!(slots.try_acquire("ana").is_none(), "a third for ana");
        let b1 = slots.try_acquire("ben").unwrap();
        assert!(slots.try_acquire("ben").is_none(), "the overall cap");
        assert!(slots.try_acquire("cai").is_none(), "the overall cap");
        drop(a1);
        assert_eq!(slots.running("ana"), 1);
        let c1 = slots.try_acquire("cai").unwrap();
        drop((a2, b1, c1));
        assert_eq!(
            (
                slots.running("ana"),
                slots.running("ben"),
                slots.running("cai")
            ),
            (0, 0, 0)
        );
        assert!(
            slots.running.lock().unwrap().is_empty(),
            "no entries left behind"
        );
    }

    #[test]
    fn the_daily_totals_count_each_step_once_across_devices() {
        use phr_schema::record::{IntervalFrame, Provenance, StepCount};
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.sqlite")).unwrap();
        store.add_person("ana", "Ana", "Asia/Tokyo").unwrap();
        store
            .grant_storage_consent("ana", &phr_schema::RecordType::ALL)
            .unwrap();
        // Two bands over the same 10:00-10:30 (Tokyo), 100 and 90 a minute; the second also
        // 10:30-10:40 alone. The first covers less (30 minutes against 40): the second's
        // 40 minutes count, the first's not at all.
        let minute = |device: &str, i: i64, n: i64| {
            let start = DateTime::parse_from_rfc3339("2026-01-05T10:00:00+09:00").unwrap()
                + chrono::TimeDelta::minutes(i);
            let end = start + chrono::TimeDelta::minutes(1);
            Record::new(
                device,
                "br-1",
                end,
                Provenance::sensed("test/1"),
                Body::StepCount(StepCount {
                    effective_time_frame: IntervalFrame::new(start, end),
                    step_count: n,
                }),
            )
        };
        let mut records: Vec<Record> = (0..30).map(|i| minute("band-1", i, 100)).collect();
        records.extend((0..40).map(|i| minute("band-2", i, 90)));
        store.import_records("ana", &records, Utc::now()).unwrap();
        let out = write_export(&store, "ana", Format::Fhir, Utc::now()).unwrap();
        let all: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect();
        let coded = |code: &str| -> Vec<Value> {
            all.iter()
                .filter(|o| o["code"]["coding"][0]["code"] == code)
                .cloned()
                .collect()
        };
        let totals = coded("41950-7");
        assert_eq!(totals.len(), 1, "{totals:?}");
        assert_eq!(totals[0]["valueQuantity"]["value"], 40 * 90);
        assert_eq!(
            totals[0]["effectivePeriod"]["start"],
            "2026-01-05T00:00:00+09:00"
        );
        // Every record of both bands is still there, one Observation each.
        assert_eq!(coded("55423-8").len(), 70);
    }

    #[test]
    fn writers_match_the_schema_mappings() {
        use phr_schema::{csv, fhir, omh};
        let now = Utc::now();
        let tokyo = utc_offset(Some("Asia/Tokyo"));
        let records: Vec<Record> = (0..CSV_CHUNK as i64 + 90).map(minute).collect();
        let stored = now.fixed_offset();
        let mut resources: Vec<Value> = records
            .iter()
            .flat_map(|r| fhir::observations(r, "Patient/ana", stored))
            .collect();
        let totals =
            fhir::daily_step_totals(&records, tokyo, "Patient/ana", now.with_timezone(&tokyo));
        assert_eq!(totals.len(), 2, "the records span two Tokyo days");
        resources.extend(totals);

        let nd = written(Format::Fhir, &records, tokyo, now);
        assert_eq!(String::from_utf8(nd).unwrap(), fhir::ndjson(&resources));

        let b: Value =
            serde_json::from_slice(&written(Format::FhirBundle, &records, tokyo, now)).unwrap();
        let id = Uuid::parse_str(b["id"].as_str().unwrap()).unwrap();
        assert_eq!(
            b,
            fhir::bundle(resources, "collection", id, now.with_timezone(&tokyo))
        );

        let points: Value =
            serde_json::from_slice(&written(Format::Omh, &records, tokyo, now)).unwrap();
        let expected: Vec<Value> = records
            .iter()
            .flat_map(|r| omh::data_points(r, stored, Some("ana")))
            .collect();
        assert_eq!(points, Value::Array(expected));

        let text = written(Format::Csv, &records, tokyo, now);
        assert_eq!(String::from_utf8(text).unwrap(), csv::rows(&records));

        // Nothing stored: still well-formed.
        assert_eq!(written(Format::Omh, &[], tokyo, now), b"[]");
        let empty: Value =
            serde_json::from_slice(&written(Format::FhirBundle, &[], tokyo, now)).unwrap();
        assert_eq!(empty["entry"], serde_json::json!([]));
        assert!(written(Format::Fhir, &[], tokyo, now).is_empty());
    }
}
