//! Other parties' reads of a person's data: `GET /api/v1/subjects/{person_id}/records`.
//! Clinicians (`user/Observation.rs`) and PHR companies (`system/Observation.rs`) see only
//! what the person consented to, clipped to the consented window, and every read is logged
//! (see [`crate::access`]).

use actix_web::{web, HttpResponse};

use super::error::ApiError;
use super::records::{self, RecordsQuery};
use super::AppState;
use crate::auth::Principal;

pub const RECORDS: &str = "/api/v1/subjects/{person_id}/records";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(RECORDS, web::get().to(subject_records));
}

async fn subject_records(
    principal: Principal,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: Result<web::Query<RecordsQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    records::respond(principal, state, path.into_inner(), query).await
}
