//! Reading records, shared by the owner's `/api/v1/me/records` and other parties'
//! `/api/v1/subjects/{person_id}/records`. Access itself is decided in [`crate::access`].
//!
//! Query: `type` (required), `from` / `to` (RFC 3339; bound the measured start), `limit`
//! (1..=5000, default 500), `cursor` (from the previous page), `format` (`record` | `omh`).

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use phr_schema::{Record, RecordType};

use super::blocking;
use super::cursor::Cursor;
use super::error::ApiError;
use super::AppState;
use crate::access;
use crate::auth::Principal;
use crate::store::PageKey;

/// Records per page unless `limit` says otherwise, and the most a page may hold.
pub const DEFAULT_LIMIT: usize = 500;
pub const MAX_LIMIT: usize = 5000;

/// The query of a records read. Unknown parameters are refused (400 `invalid_query`).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct RecordsQuery {
    /// The record type: `step-count`, `sleep-episode` or `heart-rate`.
    #[serde(rename = "type")]
    #[param(pattern = "^(step-count|sleep-episode|heart-rate)$")]
    record_type: String,
    /// Earliest measured start, inclusive: an RFC 3339 date-time with an offset.
    #[param(format = DateTime)]
    from: Option<String>,
    /// Latest measured start, exclusive: an RFC 3339 date-time with an offset; after `from`,
    /// and at most 366 days after it when both are given.
    #[param(format = DateTime)]
    to: Option<String>,
    /// `next_cursor` of the previous page; absent for the first page.
    cursor: Option<String>,
    /// Records per page, 1 to 5000 (default 500).
    #[param(minimum = 1, maximum = 5000)]
    limit: Option<usize>,
    /// `record` (default): the gateway's records; `omh`: Open mHealth data points.
    #[serde(default)]
    #[param(value_type = Option<String>, pattern = "^(record|omh)$")]
    format: Format,
}

/// How records are written: as the gateway's records (default), or as Open mHealth data
/// points (`omh`; a sleep episode gives its episode point plus one point per stage).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Record,
    Omh,
}

fn parse_time(name: &'static str, v: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    v.map(|s| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                ApiError::bad_request(
                    "invalid_time",
                    format!("`{name}` must be an RFC 3339 date-time with an offset"),
                )
            })
    })
    .transpose()
}

/// The longest measured-time span one request may name with both `from` and `to` (a read
/// without bounds is paged instead).
pub const MAX_SPAN_DAYS: i64 = 366;

/// 400 `span_too_large` when `[from_ms, to_ms)`, both given, is longer than
/// [`MAX_SPAN_DAYS`].
pub(crate) fn check_span(from_ms: i64, to_ms: i64) -> Result<(), ApiError> {
    let bounded = from_ms != i64::MIN && to_ms != i64::MAX;
    if bounded && to_ms.saturating_sub(from_ms) > MAX_SPAN_DAYS * 86_400_000 {
        return Err(ApiError::bad_request(
            "span_too_large",
            format!(
                "`from` to `to` may span at most {MAX_SPAN_DAYS} days; page through longer ranges"
            ),
        ));
    }
    Ok(())
}

/// Reads `person_id`'s records as `principal` (through the access layer) and writes the
/// page in the requested format.
pub(super) async fn respond(
    principal: Principal,
    state: web::Data<AppState>,
    person_id: String,
    query: Result<web::Query<RecordsQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let q = query
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?
        .into_inner();
    let record_type: RecordType =
        q.record_type
            .parse()
            .map_err(|e: phr_schema::record::UnknownRecordType| {
                ApiError::bad_request("invalid_type", e.to_string())
            })?;
    let from = parse_time("from", q.from.as_deref())?.map_or(i64::MIN, |t| t.timestamp_millis());
    let to = parse_time("to", q.to.as_deref())?.map_or(i64::MAX, |t| t.timestamp_millis());
    if to <= from {
        return Err(ApiError::bad_request(
            "invalid_range",
            "`to` must be after `from`",
        ));
    }
    check_span(from, to)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("`limit` must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let after = q
        .cursor
        .as_deref()
        .map(|c| {
            PageKey::decode(c).ok_or_else(|| {
                ApiError::bad_request("invalid_cursor", "`cursor` is not one this API returned")
            })
        })
        .transpose()?;
    let store = state.store.clone();
    let now = state.clock.now();
    let query = access::Query {
        person_id,
        record_type,
        from_ms: from,
        to_ms: to,
        after,
        limit,
    };
    let page = blocking(move || access::read_records(&store, &principal, &query, now)).await?;
    let next_cursor = page.next.as_ref().map(PageKey::encode);
    match q.format {
        Format::Record => {
            let records = page
                .records
                .into_iter()
                .map(|r| RawValue::from_string(r.json))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| ApiError::Internal)?;
            Ok(HttpResponse::Ok().json(RecordsPage {
                records,
                next_cursor,
            }))
        }
        Format::Omh => {
            let mut data_points = Vec::with_capacity(page.records.len());
            for stored in page.records {
                let record: Record =
                    serde_json::from_str(&stored.json).map_err(|_| ApiError::Internal)?;
                let created = DateTime::from_timestamp_millis(stored.stored_at_ms)
                    .ok_or(ApiError::Internal)?;
                data_points.extend(phr_schema::omh::data_points(
                    &record,
                    created.fixed_offset(),
                    None,
                ));
            }
            Ok(HttpResponse::Ok()
                .json(serde_json::json!({"data_points": data_points, "next_cursor": next_cursor})))
        }
    }
}

/// A page of records, written straight from the stored JSON.
#[derive(Debug, serde::Serialize)]
struct RecordsPage {
    records: Vec<Box<RawValue>>,
    next_cursor: Option<String>,
}
