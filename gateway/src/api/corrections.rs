//! Corrections and quarantine (see [`crate::store::corrections`]):
//! - `GET /api/v1/me/quarantine`: quarantined records I may claim, summarised.
//! - `POST /api/v1/me/quarantine/confirm` `{device_id, from, to, why?}`: they are mine.
//! - `POST /api/v1/me/corrections/unlink` `{device_id, from, to, why}`: these are not mine.
//!
//! An owner's confirmation and unlinking are confined to their own binding periods of the
//! device (past or present); what lies outside is left as it was and counted under `left`.
//! - `GET /api/v1/me/corrections`: corrections that concern me.
//! - `POST /api/v1/admin/corrections` `{kind, device_id, from, to, from_person, to_person?, why}`:
//!   an operator (scope `phr:admin`) re-attributes or unlinks a range.
//!
//! Each answer lists, under `notify`, every party that had received the corrected data.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::ToSchema;

use super::blocking;
use super::error::ApiError;
use super::AppState;
use crate::api::Caller;
use crate::auth::Principal;
use crate::store::corrections::{Kind, Range, Refusal};
use crate::store::prelude::*;

pub const QUARANTINE: &str = "/api/v1/me/quarantine";
pub const CONFIRM_QUARANTINE: &str = "/api/v1/me/quarantine/confirm";
pub const UNLINK: &str = "/api/v1/me/corrections/unlink";
pub const MY_CORRECTIONS: &str = "/api/v1/me/corrections";
pub const ADMIN_CORRECTIONS: &str = "/api/v1/admin/corrections";
/// The operator scope.
pub const ADMIN_SCOPE: &str = "phr:admin";

/// 403 unless the token carries [`ADMIN_SCOPE`] (operators' routes).
pub(super) fn require_admin(p: &Principal) -> Result<(), ApiError> {
    p.scopes
        .iter()
        .any(|s| s == ADMIN_SCOPE)
        .then_some(())
        .ok_or(ApiError::Forbidden)
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(QUARANTINE, web::get().to(quarantine))
        .route(CONFIRM_QUARANTINE, web::post().to(confirm))
        .route(UNLINK, web::post().to(unlink))
        .route(MY_CORRECTIONS, web::get().to(mine))
        .route(ADMIN_CORRECTIONS, web::post().to(admin));
}

fn require(p: &Principal, resource: &str, perm: char) -> Result<(), ApiError> {
    p.has_scope("patient", resource, perm)
        .then_some(())
        .ok_or(ApiError::Forbidden)
}

/// A device's records measured (start) in `[from, to)`, and why.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RangeBody {
    device_id: String,
    /// Earliest measured start, inclusive.
    #[schema(value_type = String, format = DateTime)]
    from: DateTime<Utc>,
    /// Latest measured start, exclusive; after `from`.
    #[schema(value_type = String, format = DateTime)]
    to: DateTime<Utc>,
    /// Why, in words (at most 500 characters; required to unlink).
    why: Option<String>,
}

impl RangeBody {
    fn split(self) -> Result<(Range, String), ApiError> {
        if self.to <= self.from {
            return Err(ApiError::bad_request(
                "invalid_range",
                "`to` must be after `from`",
            ));
        }
        let why = self.why.unwrap_or_default();
        if why.len() > 500 {
            return Err(ApiError::bad_request(
                "invalid_why",
                "`why` is at most 500 characters",
            ));
        }
        Ok((
            Range {
                device_id: self.device_id,
                from: self.from,
                to: self.to,
            },
            why,
        ))
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::NotYourDevice => Self::NotFound,
            Refusal::OutsideYourBindings => Self::OutsideBindings,
        }
    }
}

fn body<T>(b: Result<web::Json<T>, actix_web::Error>) -> Result<T, ApiError> {
    b.map(web::Json::into_inner)
        .map_err(|e| ApiError::from_body_error(&e))
}

/// Quarantined records of the devices the owner has now, summarised per device (no values).
#[utoipa::path(get, path = "/api/v1/me/quarantine", tag = "owner", operation_id = "my_quarantine",
    security(("bearer" = [])),
    description = "Scope: `patient/Device.r`. Records the gateway could not attribute to \
                   anyone (or that were unlinked) that the owner may claim: of any device \
                   they were ever bound to, measured wholly inside one of their binding \
                   periods (for a device's first owner, also before its first binding). \
                   Nothing measured while the device was someone else's or nobody's. Take \
                   them with `POST /api/v1/me/quarantine/confirm`. Also the owner's records \
                   held for lack of their storage consent (reason `no_storage_consent`): \
                   stored as theirs when they grant a storage consent covering them, deleted \
                   after the gateway's hold (30 days by default).",
    responses(
        (status = 200, description = "One summary per device with quarantined records", body = doc::QuarantineList),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks `patient/Device.r`", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn quarantine(
    Caller(principal): Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, "Device", 'r')?;
    let store = state.store.clone();
    let q = blocking(move || store.quarantine_of(&principal.subject)).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "quarantine": q })))
}

/// Takes a device's quarantined records of a range as the owner's.
#[utoipa::path(post, path = "/api/v1/me/quarantine/confirm", tag = "owner",
    operation_id = "confirm_quarantine",
    request_body = RangeBody,
    security(("bearer" = [])),
    description = "Scope: `patient/Device.c`. Takes only the quarantined records of the range \
                   whose whole measured interval lies inside one of the owner's binding \
                   periods of the device, past or present (for the device's first owner, \
                   also before its first binding), under their storage consent. Records \
                   measured while someone else or nobody held the device, and records \
                   quarantined because a binding changed inside their interval (they \
                   straddle two people), stay quarantined: `left` counts them by reason \
                   (`outside_your_bindings`, `spans_binding_change`). `notify` lists every \
                   party that had received the corrected data.",
    responses(
        (status = 200, description = "The correction", body = doc::CorrectionResult),
        (status = 400, description = "`invalid_body`, `invalid_range` or `invalid_why`", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`: the token lacks `patient/Device.c`; `outside_your_bindings`: the range lies wholly outside the owner's binding periods of the device (nothing changed)", body = super::openapi::ErrorBody),
        (status = 404, description = "The device was never bound to the owner", body = super::openapi::ErrorBody),
        (status = 409, description = "No storage consent of the owner's covers these records, or some were measured before the owner erased their data (nothing changed)", body = super::openapi::ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn confirm(
    Caller(principal): Caller,
    state: web::Data<AppState>,
    b: Result<web::Json<RangeBody>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, "Device", 'c')?;
    let (range, why) = body(b)?.split()?;
    let why = if why.is_empty() {
        "confirmed by the device's owner".to_owned()
    } else {
        why
    };
    let store = state.store.clone();
    let now = state.clock.now();
    let c =
        blocking(move || store.confirm_quarantine(&range, &principal.subject, &why, now)).await??;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "correction": c })))
}

/// Says a range of a device's records is not the owner's: they go to quarantine.
#[utoipa::path(post, path = "/api/v1/me/corrections/unlink", tag = "owner",
    operation_id = "unlink",
    request_body = RangeBody,
    security(("bearer" = [])),
    description = "Scope: `patient/Observation.d`. `why` is required. The owner's records of \
                   the device measured in `[from, to)` and wholly inside one of their binding \
                   periods of it leave their data for quarantine (where only the owner may \
                   confirm them back). Their records outside those periods (an operator's \
                   re-attribution) stay and are counted under `left`. `notify` lists every \
                   party that had received them.",
    responses(
        (status = 200, description = "The correction", body = doc::CorrectionResult),
        (status = 400, description = "`invalid_body`, `invalid_range` or `invalid_why`", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`: the token lacks `patient/Observation.d`; `outside_your_bindings`: the range lies wholly outside the owner's binding periods of the device (nothing changed)", body = super::openapi::ErrorBody),
        (status = 404, description = "The device was never bound to the owner", body = super::openapi::ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn unlink(
    Caller(principal): Caller,
    state: web::Data<AppState>,
    b: Result<web::Json<RangeBody>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, "Observation", 'd')?;
    let (range, why) = body(b)?.split()?;
    if why.trim().is_empty() {
        return Err(ApiError::bad_request("invalid_why", "say why in `why`"));
    }
    let store = state.store.clone();
    let now = state.clock.now();
    let c = blocking(move || store.unlink_own(&range, &principal.subject, &why, now)).await??;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "correction": c })))
}

/// Corrections that concern the owner (as old or new owner of the records), oldest first.
#[utoipa::path(get, path = "/api/v1/me/corrections", tag = "owner",
    operation_id = "my_corrections",
    security(("bearer" = [])),
    description = "Scope: `patient/Observation.r`.",
    responses(
        (status = 200, description = "The corrections", body = doc::CorrectionList),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks `patient/Observation.r`", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn mine(
    Caller(principal): Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, "Observation", 'r')?;
    let store = state.store.clone();
    let list = blocking(move || store.corrections_of(&principal.subject)).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "corrections": list })))
}

/// An operator's correction of a device's records measured (start) in `[from, to)`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminCorrection {
    /// `reattribute` (needs `to_person`) or `unlink` (takes none); `confirm_quarantine` is
    /// refused here (the device's owner confirms quarantine).
    #[schema(value_type = doc::CorrectionKind)]
    kind: Kind,
    device_id: String,
    /// Earliest measured start, inclusive.
    #[schema(value_type = String, format = DateTime)]
    from: DateTime<Utc>,
    /// Latest measured start, exclusive; after `from`.
    #[schema(value_type = String, format = DateTime)]
    to: DateTime<Utc>,
    /// Whose records they are now.
    from_person: String,
    /// Whose they become (`reattribute` only); they need a storage consent covering them.
    to_person: Option<String>,
    /// Why, in words (1-500 characters).
    why: String,
}

/// An operator re-attributes a range of a device's records to another person, or unlinks it.
#[utoipa::path(post, path = "/api/v1/admin/corrections", tag = "admin",
    operation_id = "admin_correction",
    request_body = AdminCorrection,
    security(("bearer" = [])),
    description = "Scope: `phr:admin`. Moves (or unlinks) only `from_person`'s records of the \
                   device measured in `[from, to)`, whatever the bindings say (a correction \
                   fixes a wrong linkage); no other person's records are touched. Audited in \
                   the disclosure log of both people, by the operator. `notify` lists every \
                   party that had received the corrected data. The correction stands: records \
                   of the range that arrive later are re-attributed (or unlinked) at ingest too.",
    responses(
        (status = 200, description = "The correction", body = doc::CorrectionResult),
        (status = 400, description = "`invalid_body`, `invalid_why`, `invalid_range`, `invalid_correction`, or `invalid` (the same person on both sides)", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks `phr:admin`", body = super::openapi::ErrorBody),
        (status = 409, description = "`to_person` has no storage consent covering these records, or erased their data after some of them were measured (nothing changed)", body = super::openapi::ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn admin(
    Caller(principal): Caller,
    state: web::Data<AppState>,
    b: Result<web::Json<AdminCorrection>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&principal)?;
    let b = body(b)?;
    if b.why.trim().is_empty() {
        return Err(ApiError::bad_request("invalid_why", "say why in `why`"));
    }
    let (range, why) = RangeBody {
        device_id: b.device_id,
        from: b.from,
        to: b.to,
        why: Some(b.why),
    }
    .split()?;
    let store = state.store.clone();
    let now = state.clock.now();
    let by = principal.subject.clone();
    let c = match (b.kind, b.to_person) {
        (Kind::Reattribute, Some(to)) => {
            blocking(move || store.reattribute(&range, &b.from_person, &to, &why, &by, now)).await
        }
        (Kind::Unlink, None) => blocking(move || store.unlink(&range, &b.from_person, &why, &by, now)).await,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_correction",
                "`reattribute` needs `to_person`; `unlink` takes none; quarantine is confirmed by the device's owner",
            ))
        }
    }?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "correction": c })))
}

/// The JSON these handlers write, for the OpenAPI document only.
#[allow(dead_code)]
pub(crate) mod doc {
    use utoipa::ToSchema;

    #[derive(Debug, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub(crate) enum CorrectionKind {
        Reattribute,
        Unlink,
        ConfirmQuarantine,
    }

    /// A party that received data a correction changed, and must be told.
    #[derive(Debug, ToSchema)]
    pub(crate) struct Recipient {
        actor: String,
        actor_kind: String,
        /// Whose data they received.
        person_id: String,
        /// How many logged disclosures overlap the corrected range.
        disclosures: u64,
    }

    /// The outcome of a correction.
    #[derive(Debug, ToSchema)]
    pub(crate) struct Correction {
        /// A UUID.
        correction_id: String,
        kind: CorrectionKind,
        device_id: String,
        #[schema(format = DateTime)]
        from: String,
        #[schema(format = DateTime)]
        to: String,
        /// Whose the records were; null for quarantine.
        old_person: Option<String>,
        /// Whose they are now; null for quarantine.
        new_person: Option<String>,
        /// How many records moved.
        records: u64,
        why: String,
        by: String,
        #[schema(format = DateTime)]
        at: String,
        /// Who must be told (from the disclosure log).
        notify: Vec<Recipient>,
        /// Records of the range an owner's correction left untouched, by reason (counts
        /// only); empty for an operator's.
        left: Vec<Left>,
    }

    /// Records a correction left as they were, and why.
    #[derive(Debug, ToSchema)]
    pub(crate) struct Left {
        /// `outside_your_bindings` (measured while someone else or nobody held the device)
        /// or `spans_binding_change` (measured partly inside one of the owner's periods).
        reason: String,
        records: u64,
    }

    #[derive(Debug, ToSchema)]
    pub(crate) struct CorrectionResult {
        correction: Correction,
    }

    /// A past correction (without `notify`).
    #[derive(Debug, ToSchema)]
    pub(crate) struct CorrectionSummary {
        /// A UUID.
        correction_id: String,
        kind: CorrectionKind,
        device_id: String,
        #[schema(format = DateTime)]
        from: String,
        #[schema(format = DateTime)]
        to: String,
        old_person: Option<String>,
        new_person: Option<String>,
        records: i64,
        why: String,
        by: String,
        #[schema(format = DateTime)]
        at: String,
    }

    #[derive(Debug, ToSchema)]
    pub(crate) struct CorrectionList {
        corrections: Vec<CorrectionSummary>,
    }

    /// Quarantined records of one device, summarised (no values).
    #[derive(Debug, ToSchema)]
    pub(crate) struct QuarantineSummary {
        device_id: String,
        records: u64,
        /// Earliest measured start.
        #[schema(format = DateTime)]
        first_start: String,
        /// Latest measured end.
        #[schema(format = DateTime)]
        last_end: String,
        /// Why they are quarantined: `no_binding`, `spans_binding_change`, `unlinked`,
        /// `no_storage_consent` (held for the owner until they consent).
        reasons: Vec<String>,
    }

    #[derive(Debug, ToSchema)]
    pub(crate) struct QuarantineList {
        quarantine: Vec<QuarantineSummary>,
    }
}
