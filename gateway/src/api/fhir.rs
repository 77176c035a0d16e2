//! A FHIR R4 read API over the same data and the same consent rules as the JSON API:
//! - `GET /fhir/Observation?patient=...`: search, answered with a `searchset` `Bundle` of the
//!   Observations [`phr_schema::fhir::observations`] makes, read through
//!   [`crate::access::search_records`] (scope AND consent AND window, one disclosure-log
//!   entry per search, allowed or refused).
//! - `GET /fhir/metadata`: the `CapabilityStatement`, without a token.
//!
//! # Search parameters
//! - `patient` (required): the person's id, or `Patient/{id}`.
//! - `code`: a token, `http://loinc.org|55423-8` or `55423-8` (also `|55423-8`); several
//!   comma-separated are OR-ed. Supported: `55423-8` steps, `93832-4` sleep, `8867-4` heart
//!   rate. Without it, every type the caller may read.
//! - `date` (repeatable, AND-ed): on the measured start, with prefix `eq` (default), `ge`,
//!   `gt`, `le`, `lt`, and a value `YYYY`, `YYYY-MM`, `YYYY-MM-DD` (UTC days: the server's
//!   time zone, as FHIR says for values without one) or an RFC 3339 date-time with an offset
//!   (second precision, or millisecond with a fraction). A value stands for the range of its
//!   precision: `date=2026-06-01` is that whole UTC day, `date=gt2026-06-01` starts after it.
//! - `_count`: entries per page, 1-1000 (default 100); `_cursor`: from a `next` link, opaque.
//!
//! Entries are ordered by type (steps, sleep, heart rate), then by measured start. `total`
//! is given when the whole result is on this one page and omitted otherwise. Unknown
//! parameters are refused (400), not ignored, so a filter the server does not apply is never
//! mistaken for one it does.
//!
//! # Errors
//! Unlike the rest of the gateway (JSON `{"error": {...}}`), errors here are FHIR
//! `OperationOutcome` resources (`application/fhir+json`) with the same HTTP status: the
//! gateway's stable code in `issue[0].details.coding[0].code` (system `urn:phr:error-code`),
//! the FHIR issue type in `issue[0].code`, the message in `issue[0].diagnostics`.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use chrono::{DateTime, Datelike, NaiveDate};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use phr_schema::fhir;
use phr_schema::{Record, RecordType};

use super::blocking;
use super::cursor::Cursor;
use super::error::ApiError;
use super::AppState;
use crate::access::{self, Resume, Search};
use crate::api::Caller;

pub const OBSERVATION: &str = "/fhir/Observation";
pub const METADATA: &str = "/fhir/metadata";

/// The FHIR JSON media type every answer here carries.
pub const FHIR_JSON: &str = "application/fhir+json";
/// `Coding.system` of the gateway's stable error codes in an `OperationOutcome`.
pub const ERROR_CODE_SYSTEM: &str = "urn:phr:error-code";

/// Entries per page unless `_count` says otherwise, and the most a page may hold.
pub const DEFAULT_COUNT: usize = 100;
pub const MAX_COUNT: usize = 1000;

/// When this CapabilityStatement last changed (R4 `CapabilityStatement.date`).
const CAPABILITY_DATE: &str = "2026-11-27";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(METADATA, web::get().to(metadata))
        .route(OBSERVATION, web::get().to(search));
}

// ----- errors -----

/// An [`ApiError`] answered as a FHIR `OperationOutcome`, with the status, headers and stable
/// code the JSON API would give it.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct FhirApiError(#[from] pub ApiError);

impl From<crate::access::AccessError> for FhirApiError {
    fn from(e: crate::access::AccessError) -> Self {
        Self(e.into())
    }
}

/// `OperationOutcome` (R4), as this API writes it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationOutcome {
    /// Always `OperationOutcome`.
    #[schema(example = "OperationOutcome")]
    pub resource_type: String,
    /// One issue.
    pub issue: Vec<OutcomeIssue>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OutcomeIssue {
    /// `error` (or `fatal` for a server fault).
    pub severity: String,
    /// The FHIR issue type: `invalid`, `required`, `not-supported`, `code-invalid`, `login`,
    /// `forbidden`, `not-found`, `throttled`, `exception`, ...
    #[schema(example = "not-found")]
    pub code: String,
    pub details: OutcomeDetails,
    /// The message, for people.
    pub diagnostics: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OutcomeDetails {
    /// One coding: system `urn:phr:error-code`, `code` the gateway's stable error code (the
    /// same as `error.code` elsewhere in the API).
    pub coding: Vec<OutcomeCoding>,
    pub text: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OutcomeCoding {
    #[schema(example = "urn:phr:error-code")]
    pub system: String,
    #[schema(example = "not_found")]
    pub code: String,
}

/// The FHIR issue type (R4 `IssueType`) of a gateway error.
fn issue_type(code: &str, status: StatusCode) -> &'static str {
    match code {
        "patient_required" => return "required",
        "unknown_parameter" | "unsupported_prefix" | "unsupported_format" => {
            return "not-supported"
        }
        "unsupported_code" => return "code-invalid",
        _ => {}
    }
    match status.as_u16() {
        400 => "invalid",
        401 => "login",
        403 => "forbidden",
        404 => "not-found",
        409 => "conflict",
        413 => "too-long",
        429 => "throttled",
        503 => "transient",
        500..=599 => "exception",
        _ => "processing",
    }
}

/// The `OperationOutcome` of `e`.
pub fn operation_outcome(e: &ApiError) -> OperationOutcome {
    let status = e.status_code();
    let message = e.to_string();
    OperationOutcome {
        resource_type: "OperationOutcome".into(),
        issue: vec![OutcomeIssue {
            severity: if status.is_server_error() {
                "fatal"
            } else {
                "error"
            }
            .into(),
            code: issue_type(e.code(), status).into(),
            details: OutcomeDetails {
                coding: vec![OutcomeCoding {
                    system: ERROR_CODE_SYSTEM.into(),
                    code: e.code().into(),
                }],
                text: message.clone(),
            },
            diagnostics: message,
        }],
    }
}

impl ResponseError for FhirApiError {
    fn status_code(&self) -> StatusCode {
        self.0.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        // The JSON answer's headers (WWW-Authenticate, Retry-After, ...) with a FHIR body.
        let plain = self.0.error_response();
        let mut res = HttpResponse::build(plain.status());
        for (name, value) in plain.headers() {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                res.append_header((name.clone(), value.clone()));
            }
        }
        res.content_type(FHIR_JSON).json(operation_outcome(&self.0))
    }
}

// ----- search -----

/// A `searchset` Bundle (R4) as `GET /fhir/Observation` returns it (documentation only: it is
/// written by [`phr_schema::fhir::bundle`]).
#[derive(Debug, ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct SearchsetBundle {
    /// Always `Bundle`.
    #[schema(example = "Bundle")]
    pub resource_type: String,
    #[schema(format = "uuid")]
    pub id: String,
    /// Always `searchset`.
    #[schema(rename = "type", example = "searchset")]
    pub bundle_type: String,
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// Number of matches; present only when every match is on this page.
    pub total: Option<u64>,
    /// `self` (this search) and, when there are more, `next` (with an opaque `_cursor`).
    pub link: Vec<BundleLink>,
    pub entry: Vec<BundleEntry>,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct BundleLink {
    /// `self` or `next`.
    pub relation: String,
    pub url: String,
}

#[derive(Debug, ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct BundleEntry {
    /// `urn:uuid:{record_id}`.
    pub full_url: String,
    /// An Observation (steps `55423-8`, sleep `93832-4`, heart rate `8867-4`).
    pub resource: Object,
    /// `{"mode": "match"}`.
    pub search: Object,
}

/// Any JSON object (FHIR resources keep their own shape).
#[derive(Debug, ToSchema)]
#[schema(value_type = Object)]
#[allow(dead_code)]
pub struct Object(Value);

/// A search as understood: what is read, and the parameters to write back in links.
#[derive(Debug, Clone, PartialEq)]
struct Params {
    patient: String,
    types: Option<Vec<RecordType>>,
    from_ms: i64,
    to_ms: i64,
    count: usize,
    resume: Option<Resume>,
    /// The parameters as given (less `_cursor`), for `self` and `next`.
    echo: Vec<(String, String)>,
    cursor: Option<String>,
}

fn bad(code: &'static str, message: impl Into<String>) -> FhirApiError {
    FhirApiError(ApiError::bad_request(code, message))
}

/// `patient`: an id or `Patient/{id}`.
fn parse_patient(v: &str) -> Result<String, FhirApiError> {
    let id = v.strip_prefix("Patient/").unwrap_or(v);
    if id.is_empty() || id.contains('/') {
        return Err(bad(
            "invalid_patient",
            "`patient` must be a patient id or `Patient/{id}`",
        ));
    }
    Ok(id.to_owned())
}

/// `code`: comma-separated tokens `[system|]code`, the system LOINC or empty.
fn parse_code(v: &str) -> Result<Vec<RecordType>, FhirApiError> {
    let unsupported = || {
        bad(
            "unsupported_code",
            format!(
                "`code` must name {}, optionally as `{}|code`",
                RecordType::ALL
                    .iter()
                    .map(|t| format!("{} ({t})", t.loinc().code))
                    .collect::<Vec<_>>()
                    .join(", "),
                fhir::LOINC_SYSTEM
            ),
        )
    };
    crate::auth::loinc_types(v, crate::auth::LoincSystem::Optional).ok_or_else(unsupported)
}

/// The range `[lo, hi)` in ms a `date` value stands for, at its precision.
fn date_range(v: &str) -> Option<(i64, i64)> {
    let day_ms = |d: NaiveDate| {
        d.and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_millis())
    };
    if let Some((_, time)) = v.split_once('T') {
        let ms = DateTime::parse_from_rfc3339(v).ok()?.timestamp_millis();
        let precision = if time.contains('.') { 1 } else { 1000 };
        return Some((ms, ms.checked_add(precision)?));
    }
    let (start, end) = match v.len() {
        4 => {
            let y: i32 = v.parse().ok()?;
            (
                NaiveDate::from_ymd_opt(y, 1, 1)?,
                NaiveDate::from_ymd_opt(y.checked_add(1)?, 1, 1)?,
            )
        }
        7 => {
            let d = NaiveDate::parse_from_str(&format!("{v}-01"), "%Y-%m-%d").ok()?;
            let next = if d.month() == 12 {
                NaiveDate::from_ymd_opt(d.year().checked_add(1)?, 1, 1)?
            } else {
                NaiveDate::from_ymd_opt(d.year(), d.month() + 1, 1)?
            };
            (d, next)
        }
        10 => {
            let d = NaiveDate::parse_from_str(v, "%Y-%m-%d").ok()?;
            (d, d.succ_opt()?)
        }
        _ => return None,
    };
    Some((day_ms(start)?, day_ms(end)?))
}

/// One `date` parameter as the window `[from, to)` of measured starts it admits.
fn parse_date(v: &str) -> Result<(i64, i64), FhirApiError> {
    // A `+` of an offset sent unencoded arrives as a space.
    let v = v.replace(' ', "+");
    let (prefix, value) = match v.get(..2) {
        Some(p) if p.bytes().all(|b| b.is_ascii_lowercase()) => (p, &v[2..]),
        _ => ("eq", v.as_str()),
    };
    let (lo, hi) = date_range(value).ok_or_else(|| {
        bad(
            "invalid_date",
            "`date` must be [prefix]YYYY, YYYY-MM, YYYY-MM-DD or an RFC 3339 date-time with an offset",
        )
    })?;
    match prefix {
        "eq" => Ok((lo, hi)),
        "ge" => Ok((lo, i64::MAX)),
        "gt" => Ok((hi, i64::MAX)),
        "lt" => Ok((i64::MIN, lo)),
        "le" => Ok((i64::MIN, hi)),
        _ => Err(bad(
            "unsupported_prefix",
            "`date` prefixes supported: eq, ge, gt, le, lt",
        )),
    }
}

/// `_cursor`: `{type index}` or `{type index}.{records cursor}`.
fn encode_resume(r: &Resume) -> String {
    let i = RecordType::ALL
        .iter()
        .position(|&t| t == r.record_type)
        .unwrap_or(0);
    match &r.after {
        Some(k) => format!("{i}.{}", k.encode()),
        None => i.to_string(),
    }
}

fn decode_resume(s: &str) -> Result<Resume, FhirApiError> {
    let invalid = || bad("invalid_cursor", "`_cursor` is not one this API returned");
    let (i, key) = match s.split_once('.') {
        Some((i, key)) => (i, Some(key)),
        None => (s, None),
    };
    let record_type = i
        .parse::<usize>()
        .ok()
        .and_then(|i| RecordType::ALL.get(i).copied())
        .ok_or_else(invalid)?;
    let after = key
        .map(|k| crate::store::PageKey::decode(k).ok_or_else(invalid))
        .transpose()?;
    Ok(Resume { record_type, after })
}

fn parse_params(pairs: Vec<(String, String)>) -> Result<Params, FhirApiError> {
    let mut patient = None;
    let mut code = None;
    let mut count = None;
    let mut cursor = None;
    let (mut from_ms, mut to_ms) = (i64::MIN, i64::MAX);
    let mut echo = Vec::new();
    let once = |slot: &Option<String>, name: &str| {
        if slot.is_some() {
            Err(bad(
                "repeated_parameter",
                format!("`{name}` may be given once"),
            ))
        } else {
            Ok(())
        }
    };
    for (name, value) in pairs {
        match name.as_str() {
            "patient" => {
                once(&patient, "patient")?;
                patient = Some(value.clone());
            }
            "code" => {
                once(&code, "code")?;
                code = Some(value.clone());
            }
            "date" => {
                let (f, t) = parse_date(&value)?;
                (from_ms, to_ms) = (from_ms.max(f), to_ms.min(t));
            }
            "_count" => {
                once(&count, "_count")?;
                count = Some(value.clone());
            }
            "_cursor" => {
                once(&cursor, "_cursor")?;
                cursor = Some(value);
                continue;
            }
            "_format" => {
                if !matches!(
                    value.as_str(),
                    "json" | "application/json" | "application/fhir+json"
                ) {
                    return Err(bad("unsupported_format", "only JSON is served"));
                }
            }
            other => {
                return Err(bad(
                    "unknown_parameter",
                    format!(
                        "unknown search parameter `{}`; supported: patient, code, date, _count",
                        other.chars().take(64).collect::<String>()
                    ),
                ))
            }
        }
        echo.push((name, value));
    }
    let patient = parse_patient(
        patient
            .as_deref()
            .ok_or_else(|| bad("patient_required", "`patient` is required"))?,
    )?;
    let types = code.as_deref().map(parse_code).transpose()?;
    if from_ms >= to_ms {
        return Err(bad(
            "invalid_date",
            "the `date` parameters together admit no time",
        ));
    }
    let count = match count {
        None => DEFAULT_COUNT,
        Some(c) => c
            .parse::<usize>()
            .ok()
            .filter(|c| (1..=MAX_COUNT).contains(c))
            .ok_or_else(|| {
                bad(
                    "invalid_count",
                    format!("`_count` must be between 1 and {MAX_COUNT}"),
                )
            })?,
    };
    let resume = cursor.as_deref().map(decode_resume).transpose()?;
    Ok(Params {
        patient,
        types,
        from_ms,
        to_ms,
        count,
        resume,
        echo,
        cursor,
    })
}

/// `{base}/fhir/Observation?` with `params` and, if given, `_cursor`.
fn search_url(base: &str, params: &[(String, String)], cursor: Option<&str>) -> String {
    let mut query: Vec<String> = params
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                crate::access::uri::encode(k),
                crate::access::uri::encode(v)
            )
        })
        .collect();
    if let Some(c) = cursor {
        query.push(format!("_cursor={}", crate::access::uri::encode(c)));
    }
    format!("{base}{OBSERVATION}?{}", query.join("&"))
}

/// The scheme and host the client reached us by, for absolute links (forwarded headers
/// only from trusted proxies).
fn base_url(req: &HttpRequest) -> String {
    super::forwarded::origin(req).base_url()
}

/// Searches a person's Observations (FHIR R4 search, type level). The caller sees exactly
/// what `GET /api/v1/subjects/{id}/records` would show: for a company or clinician only the
/// consented types (all of them when `code` is absent; a `code` naming an unconsented type
/// is 404), measured start inside the consented window; for the person themselves
/// (`patient/Observation.rs`), everything. One disclosure-log entry per search.
///
/// Errors are FHIR `OperationOutcome` resources, not the gateway's JSON error body: the
/// stable code is in `issue[0].details.coding[0].code`, the FHIR issue type in
/// `issue[0].code`.
#[utoipa::path(get, path = "/fhir/Observation", tag = "fhir",
    security(("bearer" = [])),
    params(
        ("patient" = String, Query, description = "Required. The person: an id or `Patient/{id}`"),
        ("code" = Option<String>, Query, description = "Token(s), comma-separated (OR): `http://loinc.org|55423-8` or `55423-8` steps, `93832-4` sleep, `8867-4` heart rate. Default: every type the caller may read"),
        ("date" = Option<Vec<String>>, Query, description = "Repeatable (AND), on the measured start: prefix `eq` (default) `ge` `gt` `le` `lt`, value `YYYY`, `YYYY-MM`, `YYYY-MM-DD` (UTC days) or an RFC 3339 date-time with offset; a value stands for the range of its precision", example = "ge2026-06-01"),
        ("_count" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "Entries per page, 1-1000, default 100"),
        ("_cursor" = Option<String>, Query, description = "Opaque; from a `next` link"),
    ),
    responses(
        (status = 200, description = "A searchset Bundle; `link` `next` while there is more", content_type = "application/fhir+json", body = SearchsetBundle),
        (status = 400, description = "Bad or missing parameter (`patient_required` / issue `required`, `unknown_parameter` / `not-supported`, `unsupported_code` / `code-invalid`, `invalid_date`, `unsupported_prefix`, `invalid_count`, `invalid_cursor`, `repeated_parameter`, `invalid_patient` / `invalid`)", content_type = "application/fhir+json", body = OperationOutcome),
        (status = 401, description = "No valid bearer token (`unauthorized` / `login`)", content_type = "application/fhir+json", body = OperationOutcome),
        (status = 403, description = "The token allows no such read, or the search lies wholly outside the consented window (`forbidden`, `outside_consented_window` / `forbidden`)", content_type = "application/fhir+json", body = OperationOutcome),
        (status = 404, description = "No consent in force for this patient (and code) (`not_found` / `not-found`), as for a patient who does not exist", content_type = "application/fhir+json", body = OperationOutcome),
    ))]
pub(crate) async fn search(
    req: HttpRequest,
    caller: Result<Caller, ApiError>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, FhirApiError> {
    let Caller(principal) = caller?;
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|e| bad("invalid_query", e.to_string()))?
        .into_inner();
    let p = parse_params(pairs)?;
    let search = Search {
        person_id: p.patient.clone(),
        types: p.types.clone(),
        from_ms: p.from_ms,
        to_ms: p.to_ms,
        resume: p.resume.clone(),
        limit: p.count,
    };
    let store = state.store.clone();
    let now = state.clock.now();
    let page = blocking(move || access::search_records(&store, &principal, &search, now)).await?;
    let patient_ref = format!("Patient/{}", p.patient);
    let mut resources = Vec::with_capacity(page.records.len());
    for (_, stored) in &page.records {
        let record: Record = serde_json::from_str(&stored.json).map_err(|_| ApiError::Internal)?;
        let issued = DateTime::from_timestamp_millis(stored.stored_at_ms)
            .ok_or(ApiError::Internal)?
            .fixed_offset();
        resources.extend(fhir::observations(&record, &patient_ref, issued));
    }
    let base = base_url(&req);
    let mut links = vec![json!({
        "relation": "self",
        "url": search_url(&base, &p.echo, p.cursor.as_deref()),
    })];
    if let Some(next) = &page.next {
        links.push(json!({
            "relation": "next",
            "url": search_url(&base, &p.echo, Some(&encode_resume(next))),
        }));
    }
    let complete = p.cursor.is_none() && page.next.is_none();
    let mut bundle = fhir::bundle(resources, "searchset", Uuid::new_v4(), now.fixed_offset());
    if let Some(b) = bundle.as_object_mut() {
        if !complete {
            b.remove("total");
        }
        b.insert("link".into(), Value::Array(links));
    }
    Ok(HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(bundle.to_string()))
}

// ----- capabilities -----

/// The server's `CapabilityStatement` (FHIR R4 4.0.1): Observation search with `patient`,
/// `code`, `date` and `_count`, JSON only, secured by SMART on FHIR (token endpoint
/// `/oauth/token`). No token needed.
#[utoipa::path(get, path = "/fhir/metadata", tag = "fhir",
    responses(
        (status = 200, description = "A CapabilityStatement resource", content_type = "application/fhir+json", body = Object),
    ))]
pub(crate) async fn metadata(req: HttpRequest) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .json(capability_statement(&base_url(&req)))
}

/// The CapabilityStatement, with absolute URLs under `base`.
pub fn capability_statement(base: &str) -> Value {
    let param = |name: &str, kind: &str, doc: &str| json!({"name": name, "type": kind, "documentation": doc});
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": CAPABILITY_DATE,
        "publisher": "PHR lifelog gateway",
        "kind": "instance",
        "software": {"name": "phr-gateway", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {
            "description": "PHR lifelog gateway: steps, sleep and heart rate from wearables, disclosed under the person's consent",
            "url": format!("{base}/fhir"),
        },
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "documentation": "Read-only. Companies use system/Observation.rs tokens (client credentials), clinicians user/Observation.rs, the person patient/Observation.rs; every search is checked against the person's consents at request time and logged.",
            "security": {
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": format!("{base}/oauth/token")}],
                }],
                "service": [{
                    "coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                        "display": "SMART-on-FHIR",
                    }],
                    "text": "OAuth2 bearer tokens, SMART on FHIR scopes",
                }],
                "description": "Bearer access tokens from the token endpoint; SMART v2 scopes system/Observation.rs, user/Observation.rs, patient/Observation.rs.",
            },
            "resource": [{
                "type": "Observation",
                "interaction": [{
                    "code": "search-type",
                    "documentation": "GET /fhir/Observation?patient=...; searchset Bundle, paged with link next",
                }],
                "searchParam": [
                    param("patient", "reference", "Required: the person's id or Patient/{id}"),
                    param("code", "token", "LOINC 55423-8 (steps), 93832-4 (sleep), 8867-4 (heart rate), with or without http://loinc.org|; comma-separated OR"),
                    param("date", "date", "Measured start; prefixes eq ge gt le lt; repeatable (AND)"),
                    param("_count", "number", "Entries per page, 1-1000, default 100"),
                ],
            }],
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn ms(s: &str) -> i64 {
        s.parse::<DateTime<Utc>>().unwrap().timestamp_millis()
    }

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn code_of(r: Result<Params, FhirApiError>) -> &'static str {
        r.unwrap_err().0.code()
    }

    #[test]
    fn codes_with_or_without_the_loinc_system() {
        use RecordType::*;
        assert_eq!(parse_code("http://loinc.org|55423-8").unwrap(), [StepCount]);
        assert_eq!(parse_code("55423-8").unwrap(), [StepCount]);
        assert_eq!(parse_code("|93832-4").unwrap(), [SleepEpisode]);
        assert_eq!(
            parse_code("8867-4,http://loinc.org|55423-8,8867-4").unwrap(),
            [HeartRate, StepCount]
        );
        for bad in [
            "41950-7",
            "http://snomed.info/sct|55423-8",
            "",
            "step-count",
        ] {
            assert_eq!(
                parse_code(bad).unwrap_err().0.code(),
                "unsupported_code",
                "{bad}"
            );
        }
    }

    #[test]
    fn dates_by_precision_and_prefix() {
        let day = (ms("2026-06-01T00:00:00Z"), ms("2026-06-02T00:00:00Z"));
        assert_eq!(parse_date("2026-06-01").unwrap(), day);
        assert_eq!(parse_date("eq2026-06-01").unwrap(), day);
        assert_eq!(parse_date("ge2026-06-01").unwrap(), (day.0, i64::MAX));
        assert_eq!(parse_date("gt2026-06-01").unwrap(), (day.1, i64::MAX));
        assert_eq!(parse_date("lt2026-06-01").unwrap(), (i64::MIN, day.0));
        assert_eq!(parse_date("le2026-06-01").unwrap(), (i64::MIN, day.1));
        assert_eq!(
            parse_date("2026-12").unwrap(),
            (ms("2026-12-01T00:00:00Z"), ms("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            parse_date("2026").unwrap(),
            (ms("2026-01-01T00:00:00Z"), ms("2027-01-01T00:00:00Z"))
        );
        let t = ms("2026-06-01T01:00:00Z");
        assert_eq!(
            parse_date("ge2026-06-01T10:00:00+09:00").unwrap(),
            (t, i64::MAX)
        );
        // An unencoded `+` arrives as a space.
        assert_eq!(
            parse_date("ge2026-06-01T10:00:00 09:00").unwrap(),
            (t, i64::MAX)
        );
        assert_eq!(
            parse_date("2026-06-01T01:00:00.250Z").unwrap(),
            (t + 250, t + 251)
        );
        assert_eq!(parse_date("2026-06-01T01:00:00Z").unwrap(), (t, t + 1000));
        for bad in [
            "yesterday",
            "2026-6-1",
            "2026-06-01T10:00:00",
            "ge",
            "2026-13",
        ] {
            assert_eq!(
                parse_date(bad).unwrap_err().0.code(),
                "invalid_date",
                "{bad}"
            );
        }
        assert_eq!(
            parse_date("ne2026-06-01").unwrap_err().0.code(),
            "unsupported_prefix"
        );
    }

    #[test]
    fn parameters_parse_and_refusals_have_codes() {
        let p = parse_params(pairs(&[
            ("patient", "Patient/ana"),
            ("code", "55423-8"),
            ("date", "ge2026-06-01"),
            ("date", "lt2026-06-03"),
            ("_count", "2"),
        ]))
        .unwrap();
        assert_eq!(p.patient, "ana");
        assert_eq!(p.types, Some(vec![RecordType::StepCount]));
        assert_eq!(
            (p.from_ms, p.to_ms),
            (ms("2026-06-01T00:00:00Z"), ms("2026-06-03T00:00:00Z"))
        );
        assert_eq!((p.count, p.resume.clone()), (2, None));
        assert_eq!(
            search_url("http://gw", &p.echo, Some("1")),
            "http://gw/fhir/Observation?patient=Patient%2Fana&code=55423-8&date=ge2026-06-01&date=lt2026-06-03&_count=2&_cursor=1"
        );
        let defaults = parse_params(pairs(&[("patient", "ana")])).unwrap();
        assert_eq!(defaults.types, None);
        assert_eq!(defaults.count, DEFAULT_COUNT);
        assert_eq!((defaults.from_ms, defaults.to_ms), (i64::MIN, i64::MAX));

        assert_eq!(code_of(parse_params(pairs(&[]))), "patient_required");
        assert_eq!(
            code_of(parse_params(pairs(&[("patient", "a"), ("category", "x")]))),
            "unknown_parameter"
        );
        assert_eq!(
            code_of(parse_params(pairs(&[("patient", "a"), ("patient", "b")]))),
            "repeated_parameter"
        );
        assert_eq!(
            code_of(parse_params(pairs(&[("patient", "a"), ("_count", "0")]))),
            "invalid_count"
        );
        assert_eq!(
            code_of(parse_params(pairs(&[("patient", "a"), ("_cursor", "9")]))),
            "invalid_cursor"
        );
        assert_eq!(
            code_of(parse_params(pairs(&[
                ("patient", "a"),
                ("date", "ge2026-06-02"),
                ("date", "lt2026-06-01")
            ]))),
            "invalid_date"
        );
        assert_eq!(
            code_of(parse_params(pairs(&[("patient", "Patient/")]))),
            "invalid_patient"
        );
    }

    #[test]
    fn cursors_round_trip() {
        for r in [
            Resume {
                record_type: RecordType::SleepEpisode,
                after: None,
            },
            Resume {
                record_type: RecordType::HeartRate,
                after: Some(crate::store::PageKey {
                    start_ms: 5,
                    device_id: "band:1".into(),
                    end_ms: 6,
                }),
            },
        ] {
            assert_eq!(decode_resume(&encode_resume(&r)).unwrap(), r);
        }
        for bad in ["", "x", "3", "0.zz", "0."] {
            assert!(decode_resume(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_are_operation_outcomes_with_stable_codes() {
        type Case = (fn() -> ApiError, u16, &'static str, &'static str);
        let cases: [Case; 6] = [
            (|| ApiError::NotFound, 404, "not-found", "not_found"),
            (|| ApiError::Unauthorized, 401, "login", "unauthorized"),
            (|| ApiError::Forbidden, 403, "forbidden", "forbidden"),
            (
                || ApiError::OutsideWindow,
                403,
                "forbidden",
                "outside_consented_window",
            ),
            (
                || ApiError::bad_request("patient_required", "x"),
                400,
                "required",
                "patient_required",
            ),
            (|| ApiError::Internal, 500, "exception", "internal"),
        ];
        for (make, status, issue, code) in cases {
            let res = FhirApiError(make()).error_response();
            assert_eq!(res.status().as_u16(), status);
            assert_eq!(res.headers().get(header::CONTENT_TYPE).unwrap(), FHIR_JSON);
            let v = serde_json::to_value(operation_outcome(&make())).unwrap();
            assert_eq!(v["resourceType"], "OperationOutcome");
            assert_eq!(v["issue"][0]["code"], issue);
            assert_eq!(v["issue"][0]["details"]["coding"][0]["code"], code);
            assert_eq!(
                v["issue"][0]["details"]["coding"][0]["system"],
                ERROR_CODE_SYSTEM
            );
        }
        let res = FhirApiError(ApiError::Unauthorized).error_response();
        assert!(res.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    #[test]
    fn the_capability_statement_names_search_and_smart() {
        let c = capability_statement("https://gw.example");
        assert_eq!(c["resourceType"], "CapabilityStatement");
        assert_eq!(
            (c["status"].as_str(), c["kind"].as_str()),
            (Some("active"), Some("instance"))
        );
        assert_eq!(c["fhirVersion"], "4.0.1");
        let rest = &c["rest"][0];
        assert_eq!(rest["mode"], "server");
        assert_eq!(
            rest["security"]["service"][0]["coding"][0]["code"],
            "SMART-on-FHIR"
        );
        assert_eq!(
            rest["security"]["extension"][0]["extension"][0]["valueUri"],
            "https://gw.example/oauth/token"
        );
        let obs = &rest["resource"][0];
        assert_eq!(obs["type"], "Observation");
        assert_eq!(obs["interaction"][0]["code"], "search-type");
        let names: Vec<&str> = obs["searchParam"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["patient", "code", "date", "_count"]);
    }
}
