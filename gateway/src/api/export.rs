//! `GET /api/v1/me/export`: the owner's export of everything stored about them, streamed
//! (formats, paging, limits and failure mid-stream: [`phr_access::export`], which the owner's
//! dashboard answers its downloads with too), and the `phr:sleep-stage:1.0` JSON Schema.

pub use phr_access::export::*;

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use super::AppState;
use crate::api::Caller;
use crate::auth::Principal;

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
    Caller(principal): Caller,
    state: web::Data<AppState>,
    query: Result<web::Query<ExportQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, "Observation", 'r')?;
    let q = query
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?
        .into_inner();
    let format: Format = q.format.as_deref().unwrap_or("fhir").parse()?;
    Ok(download(
        state.store.clone(),
        &state.exports,
        principal.subject,
        format,
        state.clock.now(),
    )
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_format_is_invalid_format() {
        let e: ApiError = "xml".parse::<Format>().unwrap_err().into();
        assert_eq!(e.code(), "invalid_format");
    }
}
