//! Other parties' overviews, for PHR companies (`system/Observation.rs`) and clinicians
//! (`user/Observation.rs`), under the same consent rules as every read:
//! - `GET /api/v1/subjects`: the people who consent to the caller now, with those consents.
//! - `GET /api/v1/subjects/{person_id}/summary/daily`: totals per local day of the person
//!   (steps; sleep minutes, efficiency and stages), read through
//!   [`crate::access::read_daily_summary`]. The person may read their own with
//!   `patient/Observation.rs`.

use actix_web::{web, HttpResponse};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use phr_schema::RecordType;

use super::blocking;
use super::error::ApiError;
use super::openapi::ErrorBody;
use super::AppState;
use crate::access::{self, DailyQuery, SUMMARY_TYPES};
use crate::api::Caller;
use crate::store::prelude::*;
use crate::store::subjects::{DailySummary, Subject};

pub const SUBJECTS: &str = "/api/v1/subjects";
pub const DAILY: &str = "/api/v1/subjects/{person_id}/summary/daily";

/// The most local days one summary request may span.
pub const MAX_DAYS: i64 = 366;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(SUBJECTS, web::get().to(subjects))
        .route(DAILY, web::get().to(daily));
}

/// `GET /api/v1/subjects`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubjectList {
    /// By person id; only people with a consent to the caller in force now.
    pub subjects: Vec<Subject>,
}

/// The people who consent to the caller now (grantee = the token's subject, as a company
/// with `system/Observation.rs` or a clinician with `user/Observation.rs`), each with every
/// consent of theirs in force. A withdrawn or expired consent drops out on the next request;
/// a person with none left is not listed. No health data is returned, so nothing is written
/// to the disclosure log.
#[utoipa::path(get, path = "/api/v1/subjects", tag = "companies",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The people consenting to the caller", body = SubjectList),
        (status = 401, description = "No valid bearer token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "The token is neither a company's (`system/Observation.rs`) nor a clinician's (`user/Observation.rs`) (`forbidden`)", body = ErrorBody),
    ))]
pub(crate) async fn subjects(
    Caller(principal): Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let kind = access::party_kind(&principal).ok_or(ApiError::Forbidden)?;
    let store = state.store.clone();
    let now = state.clock.now();
    let subjects = blocking(move || store.subjects(&principal.subject, kind, now)).await?;
    Ok(HttpResponse::Ok().json(SubjectList { subjects }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DailyParams {
    from: String,
    to: String,
    #[serde(rename = "type")]
    record_type: Option<String>,
}

fn parse_date(name: &str, v: &str) -> Result<NaiveDate, ApiError> {
    NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| {
        ApiError::bad_request(
            "invalid_date",
            format!("`{name}` must be a date YYYY-MM-DD"),
        )
    })
}

/// `type`: one of `step-count`, `sleep-episode`, or both comma-separated; absent is every
/// consented one of the two.
fn parse_types(v: Option<&str>) -> Result<Option<Vec<RecordType>>, ApiError> {
    let Some(v) = v else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "invalid_type",
            "`type` must be step-count, sleep-episode, or both comma-separated",
        )
    };
    let mut types = Vec::new();
    for name in v.split(',') {
        let t: RecordType = name.trim().parse().map_err(|_| bad())?;
        if !SUMMARY_TYPES.contains(&t) {
            return Err(bad());
        }
        if !types.contains(&t) {
            types.push(t);
        }
    }
    Ok(Some(types))
}

/// Totals per local day of the person, in their registered IANA time zone (DST handled: a
/// day is 23 or 25 hours long across a change; an unknown zone name falls back to UTC and
/// `time_zone.fallback` says so). `from` and `to` are local dates, both included, at most 366
/// days.
///
/// Steps: the sum of the step records *starting* on the day (a record spanning midnight
/// counts towards the day it starts in). Sleep: the episodes *ending* on the day, i.e. a
/// night counts towards the day one wakes up; total minutes asleep, minutes in bed,
/// efficiency (asleep / in bed, %) and minutes per stage (awake, light, deep, REM). Days
/// without any data are absent from `days`, never zeros.
///
/// Consent: as for records, each type only under a consent in force, and only records inside
/// its measured-time window (a day the window cuts is `partial`). A type named in `type`
/// without consent is 404; without `type`, unconsented types are left out. One
/// disclosure-log entry per request, allowed or refused.
#[utoipa::path(get, path = "/api/v1/subjects/{person_id}/summary/daily", tag = "companies",
    security(("bearer" = [])),
    params(
        ("person_id" = String, Path, description = "The person whose days are summed"),
        ("from" = String, Query, format = Date, description = "First local day, `YYYY-MM-DD` (included)", example = "2026-06-01"),
        ("to" = String, Query, format = Date, description = "Last local day, `YYYY-MM-DD` (included); `from`..=`to` spans at most 366 days", example = "2026-06-07"),
        ("type" = Option<String>, Query, description = "`step-count`, `sleep-episode`, or both comma-separated; default: whichever of the two is consented"),
    ),
    responses(
        (status = 200, description = "Totals per local day; days without data absent", body = DailySummary),
        (status = 400, description = "Bad parameters: `invalid_date`, `invalid_range` (`to` before `from`), `span_too_large` (more than 366 days), `invalid_type`, `invalid_query`", body = ErrorBody),
        (status = 401, description = "No valid bearer token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "The token allows no such read (`forbidden`), or the days lie wholly outside the consented window (`outside_consented_window`)", body = ErrorBody),
        (status = 404, description = "No consent in force for this person and type (`not_found`), as for a person who does not exist", body = ErrorBody),
    ))]
pub(crate) async fn daily(
    Caller(principal): Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: Result<web::Query<DailyParams>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let q = query
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?
        .into_inner();
    let from = parse_date("from", &q.from)?;
    let to = parse_date("to", &q.to)?;
    if to < from {
        return Err(ApiError::bad_request(
            "invalid_range",
            "`to` must not be before `from`",
        ));
    }
    if (to - from).num_days() + 1 > MAX_DAYS {
        return Err(ApiError::bad_request(
            "span_too_large",
            format!("at most {MAX_DAYS} days per request"),
        ));
    }
    let types = parse_types(q.record_type.as_deref())?;
    let query = DailyQuery {
        person_id: path.into_inner(),
        types,
        from,
        to,
    };
    let store = state.store.clone();
    let now = state.clock.now();
    let summary: DailySummary =
        blocking(move || access::read_daily_summary(&store, &principal, &query, now)).await?;
    Ok(HttpResponse::Ok().json(summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_and_heart_rate_is_refused() {
        assert_eq!(parse_types(None).unwrap(), None);
        assert_eq!(
            parse_types(Some("sleep-episode")).unwrap(),
            Some(vec![RecordType::SleepEpisode])
        );
        assert_eq!(
            parse_types(Some("step-count,sleep-episode,step-count")).unwrap(),
            Some(vec![RecordType::StepCount, RecordType::SleepEpisode])
        );
        for bad in ["heart-rate", "", "steps"] {
            assert_eq!(parse_types(Some(bad)).unwrap_err().code(), "invalid_type");
        }
        assert!(parse_date("from", "2026-02-30").is_err());
        assert_eq!(
            parse_date("from", "2026-02-28").unwrap(),
            NaiveDate::from_ymd_opt(2026, 2, 28).unwrap()
        );
    }
}
