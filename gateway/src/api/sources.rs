//! Which device counts, under `/api/v1/me/sources` (issue #15): when two of the owner's
//! devices measured the same time, the order decides whose data counts
//! ([`crate::store::sources`]).
//!
//! - `GET /api/v1/me/sources` (`patient/Device.r`): per type (steps, sleep, heart rate) the
//!   owner's order, the rule in force in words, and every device of theirs in that order
//!   with the days it counted on over their last 30 local days
//!   ([`crate::store::source_view`]).
//! - `PUT /api/v1/me/sources/{record_type}` (`patient/Device.u`) `{"order": [...]}`: sets the
//!   order through [`crate::store::Store::set_source_order`] (for past days too; written to
//!   the owner's disclosure log); an empty list goes back to the default rule. A device that
//!   is not the owner's, one listed twice, or more than 32 are 400 `invalid_order`, and
//!   nothing changes.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;

use phr_schema::RecordType;

use super::blocking;
use super::error::ApiError;
use super::AppState;
use crate::api::Caller;
use crate::auth::Principal;
use crate::store::prelude::*;
use crate::store::source_view::TYPES;

pub const SOURCES: &str = "/api/v1/me/sources";
pub const SOURCE: &str = "/api/v1/me/sources/{record_type}";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(SOURCES, web::get().to(list))
        .route(SOURCE, web::put().to(set));
}

fn require(p: &Principal, perm: char) -> Result<(), ApiError> {
    if p.has_scope("patient", "Device", perm) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// The owner's devices and order for each type.
#[utoipa::path(get, path = "/api/v1/me/sources", tag = "owner", operation_id = "list_sources",
    security(("bearer" = [])),
    description = "Scope: `patient/Device.r`. When two of the owner's devices measured the \
                   same time, one counts: in each 5-minute interval of a day, the first device \
                   of that day's order with data there (sleep: per night, an episode \
                   overlapping one of a device earlier in the order is a duplicate and counts \
                   nowhere). The order is the owner's `order` for the type, then the default \
                   rule: the device whose data covers more of that day first, then the latest \
                   paired, then the device id. Per type: `order`, `rule` (in words) and every \
                   device of the owner's, ordered ones first (`rank` from 1), with \
                   `days_counted` over the last 30 local days `from..=to` (sleep: nights).",
    responses(
        (status = 200, description = "The owner's sources", body = doc::Sources),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks `patient/Device.r`", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn list(
    Caller(principal): Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, 'r')?;
    let store = state.store.clone();
    let now = state.clock.now();
    let view = blocking(move || store.sources_view(&principal.subject, &TYPES, now)).await?;
    Ok(HttpResponse::Ok().json(view))
}

/// A new order for one type.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetOrder {
    /// The owner's device ids, the first counting first (at most 32, each once); empty: the
    /// default rule alone.
    order: Vec<String>,
}

/// Sets the owner's device order for one type.
#[utoipa::path(put, path = "/api/v1/me/sources/{record_type}", tag = "owner",
    operation_id = "set_sources",
    params(("record_type" = String, Path, description = "`step-count`, `sleep-episode` or `heart-rate`")),
    request_body = SetOrder,
    security(("bearer" = [])),
    description = "Scope: `patient/Device.u`. The order applies to every day, past ones too \
                   (daily totals are merged when read), and the change is written to the \
                   owner's disclosure log. Devices not in the order follow by the default \
                   rule. Answers the type's new state, as `GET /api/v1/me/sources` lists it.",
    responses(
        (status = 200, description = "The type's new state", body = doc::TypeSources),
        (status = 400, description = "`invalid_body`, or `invalid_order`: a device that is not the owner's, one listed twice, more than 32", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks `patient/Device.u`", body = super::openapi::ErrorBody),
        (status = 404, description = "Not a record type", body = super::openapi::ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn set(
    Caller(principal): Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: Result<web::Json<SetOrder>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, 'u')?;
    let t: RecordType = path.parse().map_err(|_| ApiError::NotFound)?;
    let body = body
        .map_err(|e| ApiError::from_body_error(&e))?
        .into_inner();
    let store = state.store.clone();
    let now = state.clock.now();
    let view = blocking(move || {
        match store.set_source_order(&principal.subject, t, &body.order, now) {
            Ok(()) => {}
            Err(crate::store::Error::Invalid(why)) => {
                return Ok(Err(ApiError::bad_request("invalid_order", why)))
            }
            Err(e) => return Err(e),
        }
        Ok(Ok(store.sources_view(&principal.subject, &[t], now)?))
    })
    .await??;
    let state = view.types.into_iter().next().ok_or(ApiError::Internal)?;
    Ok(HttpResponse::Ok().json(state))
}

/// The JSON these handlers write, for the OpenAPI document only.
#[allow(dead_code)]
pub(crate) mod doc {
    use utoipa::ToSchema;

    /// One device of a type's list.
    #[derive(Debug, ToSchema)]
    pub(crate) struct SourceDevice {
        device_id: String,
        /// Its place in the owner's order (1 first); null: placed by the default rule.
        rank: Option<u32>,
        /// Days (sleep: nights) of the last 30 local days on which some of its data counted.
        days_counted: u32,
    }

    /// One type's order and devices.
    #[derive(Debug, ToSchema)]
    pub(crate) struct TypeSources {
        /// `step-count`, `sleep-episode` or `heart-rate`.
        #[schema(rename = "type")]
        record_type: String,
        /// The owner's order, first counts first; empty: the default rule alone.
        order: Vec<String>,
        /// The rule in force, in words.
        rule: String,
        /// Every device of the owner's: the ordered ones in order, then the others (most
        /// days counted first, then the latest paired).
        devices: Vec<SourceDevice>,
    }

    /// The owner's sources, per type.
    #[derive(Debug, ToSchema)]
    pub(crate) struct Sources {
        /// The IANA zone the days are counted in.
        time_zone: String,
        /// The first and last counted local day (30 days, today included).
        #[schema(format = Date)]
        from: String,
        #[schema(format = Date)]
        to: String,
        types: Vec<TypeSources>,
    }
}
