//! Other parties' reads of a person's data: `GET /api/v1/subjects/{person_id}/records`.
//! Clinicians (`user/Observation.rs`) and PHR companies (`system/Observation.rs`) see only
//! what the person consented to, clipped to the consented window, and every read is logged
//! (see [`crate::access`]).

use actix_web::{web, HttpResponse};

use super::error::ApiError;
use super::records::{self, RecordsQuery};
use super::AppState;
use crate::api::Caller;

pub const RECORDS: &str = "/api/v1/subjects/{person_id}/records";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(RECORDS, web::get().to(subject_records));
}

/// A person's records, as a clinician or a PHR company the person consented to.
#[utoipa::path(get, path = "/api/v1/subjects/{person_id}/records", tag = "companies",
    operation_id = "subject_records",
    params(("person_id" = String, Path, description = "The person whose records are read"), RecordsQuery),
    security(("bearer" = [])),
    description = "Scopes: `user/Observation.rs` (clinicians) or `system/Observation.rs` (PHR \
                   companies; a scope narrowed by `?code=` narrows the types). Only what the \
                   person consented to (types, measured-time window), clipped to the window, \
                   checked at every request; every read, allowed or refused, is written to the \
                   person's disclosure log.",
    responses(
        (status = 200, description = "A page of records (`format=record`) or of Open mHealth data points (`format=omh`)", body = super::me::doc::RecordsResponse),
        (status = 400, description = "Bad query: `invalid_query`, `invalid_type`, `invalid_time`, `invalid_range`, `span_too_large`, `invalid_limit`, `invalid_cursor`", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token does not allow this read, or the request lies wholly outside the consented window", body = super::openapi::ErrorBody),
        (status = 404, description = "No consent in force for this type (indistinguishable from an unknown person)", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn subject_records(
    Caller(principal): Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: Result<web::Query<RecordsQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    records::respond(principal, state, path.into_inner(), query).await
}
