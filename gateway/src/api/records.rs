//! Reading records, shared by the owner's `/api/v1/me/records` and other parties'
//! `/api/v1/subjects/{person_id}/records`. Access itself is decided in [`crate::access`].
//!
//! Query: `type` (required), `from` / `to` (RFC 3339; bound the measured start), `limit`
//! (1..=5000, default 500), `cursor` (from the previous page), `format` (`record` | `omh`).

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use phr_schema::{Record, RecordType};

use super::blocking;
use super::cursor::Cursor;
use super::error::ApiError;
use super::AppState;
use crate::access;
use crate::auth::Principal;
use crate::store::{PageKey, StoredRecord};

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
        Format::Record => Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(records_body(&page.records, next_cursor.as_deref()))),
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

/// A page of records, `{"records":[...],"next_cursor":...}`, with each record's stored JSON
/// spliced in as it is (the store keeps it as `serde_json` wrote it: compact, valid), neither
/// parsed nor re-serialised. The bytes are those `serde_json` wrote for the page as a struct
/// of `RawValue`s before (the test below checks it).
fn records_body(records: &[StoredRecord], next_cursor: Option<&str>) -> String {
    let cursor = serde_json::to_string(&next_cursor).unwrap_or_else(|_| "null".into());
    let len = records.iter().map(|r| r.json.len() + 1).sum::<usize>() + cursor.len() + 32;
    let mut body = String::with_capacity(len);
    body.push_str("{\"records\":[");
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&r.json);
    }
    body.push_str("],\"next_cursor\":");
    body.push_str(&cursor);
    body.push('}');
    body
}

/// A page of records as it was written before [`records_body`] spliced it: the reference
/// the splice is checked against.
#[cfg(test)]
#[derive(Debug, serde::Serialize)]
struct RecordsPage {
    records: Vec<Box<serde_json::value::RawValue>>,
    next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use phr_schema::record::{IntervalFrame, Provenance, StepCount};
    use phr_schema::Body;
    use serde_json::value::RawValue;

    fn stored(minute: i64, steps: i64) -> StoredRecord {
        let start = DateTime::from_timestamp(1_780_000_000 + minute * 60, 0)
            .expect("time")
            .fixed_offset();
        let end = start + TimeDelta::minutes(1);
        let record = Record::new(
            "band-1",
            "bridge-1",
            end,
            Provenance::sensed("test/1"),
            Body::StepCount(StepCount {
                effective_time_frame: IntervalFrame::new(start, end),
                step_count: steps,
            }),
        );
        StoredRecord {
            json: serde_json::to_string(&record).expect("json"),
            stored_at_ms: 0,
        }
    }

    /// What the handler wrote before the splice: `HttpResponse::json` of a [`RecordsPage`].
    fn serialised(records: &[StoredRecord], next_cursor: Option<&str>) -> String {
        let page = RecordsPage {
            records: records
                .iter()
                .map(|r| RawValue::from_string(r.json.clone()).expect("raw"))
                .collect(),
            next_cursor: next_cursor.map(str::to_owned),
        };
        serde_json::to_string(&page).expect("json")
    }

    #[test]
    fn the_spliced_page_is_byte_for_byte_the_serialised_one() {
        let many: Vec<StoredRecord> = (0..50).map(|m| stored(m, m * 7 % 181)).collect();
        let key = PageKey {
            start_ms: 1_780_000_000_000,
            device_id: "band-1".into(),
            end_ms: 1_780_000_060_000,
        };
        let cursor = key.encode();
        for (records, next) in [
            (&many[..0], None),
            (&many[..1], None),
            (&many[..], None),
            (&many[..], Some(cursor.as_str())),
            (&many[..0], Some("a\"quote\\and\u{1}control")),
        ] {
            assert_eq!(records_body(records, next), serialised(records, next));
        }
    }
}
