//! Corrections and quarantine (see [`crate::store::corrections`]):
//! - `GET /api/v1/me/quarantine`: quarantined records of the devices I own now, summarised.
//! - `POST /api/v1/me/quarantine/confirm` `{device_id, from, to, why?}`: they are mine.
//! - `POST /api/v1/me/corrections/unlink` `{device_id, from, to, why}`: these are not mine.
//! - `GET /api/v1/me/corrections`: corrections that concern me.
//! - `POST /api/v1/admin/corrections` `{kind, device_id, from, to, from_person, to_person?, why}`:
//!   an operator (scope `phr:admin`) re-attributes or unlinks a range.
//!
//! Each answer lists, under `notify`, every party that had received the corrected data.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::error::ApiError;
use super::AppState;
use crate::auth::Principal;
use crate::store::corrections::{Kind, Range};

pub const QUARANTINE: &str = "/api/v1/me/quarantine";
pub const CONFIRM_QUARANTINE: &str = "/api/v1/me/quarantine/confirm";
pub const UNLINK: &str = "/api/v1/me/corrections/unlink";
pub const MY_CORRECTIONS: &str = "/api/v1/me/corrections";
pub const ADMIN_CORRECTIONS: &str = "/api/v1/admin/corrections";
/// The operator scope.
pub const ADMIN_SCOPE: &str = "phr:admin";

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeBody {
    device_id: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
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

fn body<T>(b: Result<web::Json<T>, actix_web::Error>) -> Result<T, ApiError> {
    b.map(web::Json::into_inner)
        .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))
}

async fn quarantine(
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, "Device", 'r')?;
    let store = state.store.clone();
    let q = web::block(move || store.quarantine_of(&principal.subject, Utc::now()))
        .await
        .map_err(|_| ApiError::Internal)??;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "quarantine": q })))
}

async fn confirm(
    principal: Principal,
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
    let c =
        web::block(move || store.confirm_quarantine(&range, &principal.subject, &why, Utc::now()))
            .await
            .map_err(|_| ApiError::Internal)??
            .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "correction": c })))
}

async fn unlink(
    principal: Principal,
    state: web::Data<AppState>,
    b: Result<web::Json<RangeBody>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, "Observation", 'd')?;
    let (range, why) = body(b)?.split()?;
    if why.trim().is_empty() {
        return Err(ApiError::bad_request("invalid_why", "say why in `why`"));
    }
    let store = state.store.clone();
    let c = web::block(move || {
        store.unlink(
            &range,
            &principal.subject,
            &why,
            &principal.subject,
            Utc::now(),
        )
    })
    .await
    .map_err(|_| ApiError::Internal)??;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "correction": c })))
}

async fn mine(principal: Principal, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    require(&principal, "Observation", 'r')?;
    let store = state.store.clone();
    let list = web::block(move || store.corrections_of(&principal.subject))
        .await
        .map_err(|_| ApiError::Internal)??;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "corrections": list })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminCorrection {
    kind: Kind,
    device_id: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    from_person: String,
    to_person: Option<String>,
    why: String,
}

async fn admin(
    principal: Principal,
    state: web::Data<AppState>,
    b: Result<web::Json<AdminCorrection>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    if !principal.scopes.iter().any(|s| s == ADMIN_SCOPE) {
        return Err(ApiError::Forbidden);
    }
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
    let by = principal.subject.clone();
    let c = match (b.kind, b.to_person) {
        (Kind::Reattribute, Some(to)) => {
            web::block(move || store.reattribute(&range, &b.from_person, &to, &why, &by, Utc::now())).await
        }
        (Kind::Unlink, None) => web::block(move || store.unlink(&range, &b.from_person, &why, &by, Utc::now())).await,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_correction",
                "`reattribute` needs `to_person`; `unlink` takes none; quarantine is confirmed by the device's owner",
            ))
        }
    }
    .map_err(|_| ApiError::Internal)??;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "correction": c })))
}
