//! The owner's devices and pairing, under `/api/v1/me/devices`.
//!
//! 1. `POST /api/v1/me/devices/pairings` `{bridge_id, device_id}`: the gateway sends the
//!    bridge a one-time code (MQTT, `.../pairing/requests`); the bridge shows it and reports
//!    the device's address and serial number.
//! 2. `GET /api/v1/me/devices/pairings/{id}`: state, and what the bridge reported.
//! 3. `POST /api/v1/me/devices/pairings/{id}/confirm` `{code, serial_number?}`: with the code
//!    the bridge shows (and, if given, the serial printed on the device) the device is bound
//!    to the owner from now on. See [`crate::store::pairing`] for why this cannot bind the
//!    wrong person.
//! 4. `GET /api/v1/me/devices`: the owner's bindings with their validity intervals.

use actix_web::{web, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use uuid::Uuid;

use phr_schema::envelope::is_valid_id;

use super::error::ApiError;
use super::AppState;
use crate::auth::Principal;
use crate::store::pairing::Refusal;

pub const DEVICES: &str = "/api/v1/me/devices";
pub const PAIRINGS: &str = "/api/v1/me/devices/pairings";
pub const PAIRING: &str = "/api/v1/me/devices/pairings/{pairing_id}";
pub const CONFIRM: &str = "/api/v1/me/devices/pairings/{pairing_id}/confirm";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(DEVICES, web::get().to(list))
        .route(PAIRINGS, web::post().to(start))
        .route(PAIRING, web::get().to(show))
        .route(CONFIRM, web::post().to(confirm));
}

fn require(p: &Principal, perm: char) -> Result<(), ApiError> {
    if p.has_scope("patient", "Device", perm) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

async fn list(principal: Principal, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    require(&principal, 'r')?;
    let store = state.store.clone();
    let bindings = web::block(move || store.bindings_of(&principal.subject))
        .await
        .map_err(|_| ApiError::Internal)??;
    let devices = bindings;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "devices": devices })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartPairing {
    bridge_id: String,
    device_id: String,
}

async fn start(
    principal: Principal,
    state: web::Data<AppState>,
    body: Result<web::Json<StartPairing>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, 'c')?;
    let body = body
        .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?
        .into_inner();
    if !is_valid_id(&body.bridge_id) || !is_valid_id(&body.device_id) {
        return Err(ApiError::bad_request(
            "invalid_id",
            "`bridge_id` and `device_id` must be 1-64 characters of A-Z a-z 0-9 . _ : -",
        ));
    }
    let (store, mqtt, topics) = (
        state.store.clone(),
        state.mqtt.clone(),
        state.topics.clone(),
    );
    let person = principal.subject.clone();
    let pairing = web::block(move || {
        crate::pairing::start(
            &store,
            &mqtt,
            &topics,
            &person,
            &body.bridge_id,
            &body.device_id,
            Utc::now(),
        )
    })
    .await
    .map_err(|_| ApiError::Internal)?
    .map_err(|e| match e {
        crate::Error::Broker(_) => ApiError::Unavailable,
        e => e.into(),
    })?;
    Ok(HttpResponse::Created().json(serde_json::json!({
        "pairing": pairing,
        "next": "enter the code the bridge shows at POST /api/v1/me/devices/pairings/{pairing_id}/confirm",
    })))
}

async fn show(
    principal: Principal,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, 'r')?;
    let id = Uuid::parse_str(&path.into_inner()).map_err(|_| ApiError::NotFound)?;
    let store = state.store.clone();
    let pairing = web::block(move || store.pairing(&principal.subject, id))
        .await
        .map_err(|_| ApiError::Internal)??
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "pairing": pairing })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Confirm {
    code: String,
    serial_number: Option<String>,
}

async fn confirm(
    principal: Principal,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: Result<web::Json<Confirm>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, 'c')?;
    let id = Uuid::parse_str(&path.into_inner()).map_err(|_| ApiError::NotFound)?;
    let body = body
        .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?
        .into_inner();
    let store = state.store.clone();
    let result = web::block(move || {
        store.confirm_pairing(
            &principal.subject,
            id,
            &body.code,
            body.serial_number.as_deref(),
            Utc::now(),
        )
    })
    .await
    .map_err(|_| ApiError::Internal)??;
    match result {
        Ok(pairing) => Ok(HttpResponse::Ok().json(serde_json::json!({ "pairing": pairing }))),
        Err(Refusal::Unknown) => Err(ApiError::NotFound),
        Err(r) => Err(ApiError::bad_request(r.code(), r.to_string())),
    }
}
