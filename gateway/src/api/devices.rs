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
//! 5. `DELETE /api/v1/me/devices/{device_id}/binding`: the owner ends their binding now
//!    (giving the band away); only then can someone else pair it.
//! 6. `GET /api/v1/me/bridges/{bridge_id}/nearby`: the bands a bridge last reported nearby,
//!    to pick the one to pair; never a band someone else holds
//!    ([`crate::store::nearby`]).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use phr_schema::envelope::is_valid_id;

use super::blocking;
use super::error::ApiError;
use super::AppState;
use crate::api::Caller;
use crate::auth::Principal;
use crate::store::pairing::{Refusal, StartRefusal};
use crate::store::prelude::*;
use actix_web::http::StatusCode;

pub const DEVICES: &str = "/api/v1/me/devices";
pub const PAIRINGS: &str = "/api/v1/me/devices/pairings";
pub const PAIRING: &str = "/api/v1/me/devices/pairings/{pairing_id}";
pub const CONFIRM: &str = "/api/v1/me/devices/pairings/{pairing_id}/confirm";
pub const BINDING: &str = "/api/v1/me/devices/{device_id}/binding";
pub const NEARBY: &str = "/api/v1/me/bridges/{bridge_id}/nearby";
pub const ADMIN_BINDING: &str = "/api/v1/admin/devices/{device_id}/binding";
pub const ADMIN_BRIDGES: &str = "/api/v1/admin/bridges";
pub const ADMIN_BRIDGE: &str = "/api/v1/admin/bridges/{bridge_id}";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(DEVICES, web::get().to(list))
        .route(PAIRINGS, web::post().to(start))
        .route(PAIRING, web::get().to(show))
        .route(CONFIRM, web::post().to(confirm))
        .route(BINDING, web::delete().to(release))
        .route(NEARBY, web::get().to(nearby))
        .route(ADMIN_BINDING, web::delete().to(operator_release))
        .route(ADMIN_BRIDGES, web::post().to(enrol))
        .route(ADMIN_BRIDGE, web::delete().to(revoke));
}

fn require(p: &Principal, perm: char) -> Result<(), ApiError> {
    if p.has_scope("patient", "Device", perm) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// The owner's device bindings with their validity intervals, oldest first.
#[utoipa::path(get, path = "/api/v1/me/devices", tag = "owner", operation_id = "list_devices",
    security(("bearer" = [])),
    description = "Scope: `patient/Device.r`. Every binding of a device to the owner, \
                   `[valid_from, valid_to)`; `valid_to` is null while the device is theirs.",
    responses(
        (status = 200, description = "The owner's bindings", body = doc::DeviceList),
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
    let bindings = blocking(move || store.bindings_of(&principal.subject)).await?;
    let devices = bindings;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "devices": devices })))
}

/// What to pair: a device, through the bridge that can reach it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartPairing {
    /// The bridge that shows the code (1-64 characters of `A-Z a-z 0-9 . _ : -`).
    bridge_id: String,
    /// The device to pair (1-64 characters of `A-Z a-z 0-9 . _ : -`).
    device_id: String,
}

/// Starts pairing a device: the bridge is sent a one-time code to show.
#[utoipa::path(post, path = "/api/v1/me/devices/pairings", tag = "owner",
    operation_id = "start_pairing",
    request_body = StartPairing,
    security(("bearer" = [])),
    description = "Scope: `patient/Device.c`. The gateway sends the bridge a sealed pairing \
                   request over MQTT; the bridge shows the pairing's code (computed from the key \
                   it shares with the gateway: the code never crosses the network) and reports \
                   the device's address and serial number. Confirm with that code at \
                   `POST /api/v1/me/devices/pairings/{pairing_id}/confirm` before `expires_at`. \
                   Refused when the bridge is not enrolled, when the device is bound to someone \
                   else (its owner releases it first; the attempt is written to their \
                   disclosure log), and beyond 5 pairings per account or per device and 20 per \
                   bridge in 15 minutes; each pairing that ran out of wrong codes doubles the \
                   wait for that account and device. Every refusal is logged.",
    responses(
        (status = 201, description = "The pending pairing", body = doc::PairingStarted),
        (status = 400, description = "`invalid_body` or `invalid_id`", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks `patient/Device.c`", body = super::openapi::ErrorBody),
        (status = 409, description = "`bridge_not_enrolled` or `device_bound_to_another`", body = super::openapi::ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited, or `too_many_pairings`; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
        (status = 503, description = "The request could not be queued for the bridge; try again", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn start(
    Caller(principal): Caller,
    state: web::Data<AppState>,
    body: Result<web::Json<StartPairing>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, 'c')?;
    let body = body
        .map_err(|e| ApiError::from_body_error(&e))?
        .into_inner();
    if !is_valid_id(&body.bridge_id) || !is_valid_id(&body.device_id) {
        return Err(ApiError::bad_request(
            "invalid_id",
            "`bridge_id` and `device_id` must be 1-64 characters of A-Z a-z 0-9 . _ : -",
        ));
    }
    let state = state.clone();
    let now = state.clock.now();
    let person = principal.subject.clone();
    let started = blocking(move || {
        let cx = crate::pairing::Context {
            store: &state.store,
            channels: &state.channels,
            mqtt: &state.mqtt,
            topics: &state.topics,
        };
        crate::pairing::start(cx, &person, &body.bridge_id, &body.device_id, now).map_err(|e| {
            match e {
                crate::Error::Broker(_) => ApiError::Unavailable,
                e => e.into(),
            }
        })
    })
    .await?;
    let pairing = started.map_err(|r| match r {
        StartRefusal::TooMany { retry_after_secs } => ApiError::Refused {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: r.code(),
            message: r.to_string(),
            retry_after_secs: Some(retry_after_secs),
        },
        r => ApiError::refused(StatusCode::CONFLICT, r.code(), r.to_string()),
    })?;
    Ok(HttpResponse::Created().json(serde_json::json!({
        "pairing": pairing,
        "next": "enter the code the bridge shows at POST /api/v1/me/devices/pairings/{pairing_id}/confirm",
    })))
}

/// One of the owner's pairings: its state, and what the bridge reported.
#[utoipa::path(get, path = "/api/v1/me/devices/pairings/{pairing_id}", tag = "owner",
    operation_id = "show_pairing",
    params(("pairing_id" = String, Path, description = "The pairing's id (a UUID)")),
    security(("bearer" = [])),
    description = "Scope: `patient/Device.r`. `reported_address` and `reported_serial` are \
                   null until the bridge has reported the device.",
    responses(
        (status = 200, description = "The pairing", body = doc::PairingOnly),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks `patient/Device.r`", body = super::openapi::ErrorBody),
        (status = 404, description = "No such pairing of the owner's (or not a UUID)", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn show(
    Caller(principal): Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, 'r')?;
    let id = Uuid::parse_str(&path.into_inner()).map_err(|_| ApiError::NotFound)?;
    let store = state.store.clone();
    let pairing = blocking(move || store.pairing(&principal.subject, id))
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "pairing": pairing })))
}

/// The bands a bridge last reported nearby, as the owner may see them.
#[utoipa::path(get, path = "/api/v1/me/bridges/{bridge_id}/nearby", tag = "owner",
    operation_id = "nearby_devices",
    params(("bridge_id" = String, Path, description = "The bridge (1-64 characters of `A-Z a-z 0-9 . _ : -`)")),
    security(("bearer" = [])),
    description = "Scope: `patient/Device.r`. The devices the bridge saw in its latest report \
                   (sent when what it sees changes, at most every 30 s by default), strongest \
                   signal first, to pick the `device_id` of `POST /api/v1/me/devices/pairings`. \
                   A device someone else holds a binding of is never listed; the owner's own are \
                   marked `yours`. A report older than 10 minutes is `stale` and lists no devices. \
                   `observed_at` is the earlier of the bridge's scan time and the report's arrival.",
    responses(
        (status = 200, description = "The bridge's latest report, filtered for the owner", body = doc::Nearby),
        (status = 400, description = "`invalid_id`", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks `patient/Device.r`", body = super::openapi::ErrorBody),
        (status = 404, description = "The bridge has not reported (or is not enrolled)", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn nearby(
    Caller(principal): Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, 'r')?;
    let bridge = path.into_inner();
    if !is_valid_id(&bridge) {
        return Err(ApiError::bad_request(
            "invalid_id",
            "`bridge_id` must be 1-64 characters of A-Z a-z 0-9 . _ : -",
        ));
    }
    let store = state.store.clone();
    let now = state.clock.now();
    let view = blocking(move || store.nearby_for_owner(&principal.subject, &bridge, now))
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(view))
}

/// The code the bridge shows, and optionally the serial number printed on the device.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfirmPairing {
    /// The one-time code the bridge shows.
    code: String,
    /// If given, must equal the serial number the bridge read from the device.
    serial_number: Option<String>,
}

/// Confirms a pairing with the bridge's code: the device is bound to the owner from now on.
#[utoipa::path(post, path = "/api/v1/me/devices/pairings/{pairing_id}/confirm", tag = "owner",
    operation_id = "confirm_pairing",
    params(("pairing_id" = String, Path, description = "The pairing's id (a UUID)")),
    request_body = ConfirmPairing,
    security(("bearer" = [])),
    description = "Scope: `patient/Device.c`. On success the device is registered through \
                   the pairing's bridge and bound to the owner from now, closing its previous \
                   binding. Every refusal is logged; too many wrong codes, an expired pairing, \
                   a serial mismatch or the device bound to someone else meanwhile end the pairing.",
    responses(
        (status = 200, description = "The pairing, confirmed", body = doc::PairingOnly),
        (status = 400, description = "`invalid_body`, or refused: `pairing_expired`, `pairing_used`, `wrong_code`, `device_not_reported`, `serial_mismatch`, `device_bound_to_another`", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks `patient/Device.c`", body = super::openapi::ErrorBody),
        (status = 404, description = "No such pairing of the owner's (or not a UUID)", body = super::openapi::ErrorBody),
        (status = 409, description = "The device has a binding starting at or after now", body = super::openapi::ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn confirm(
    Caller(principal): Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: Result<web::Json<ConfirmPairing>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, 'c')?;
    let id = Uuid::parse_str(&path.into_inner()).map_err(|_| ApiError::NotFound)?;
    let body = body
        .map_err(|e| ApiError::from_body_error(&e))?
        .into_inner();
    let store = state.store.clone();
    let now = state.clock.now();
    let result = blocking(move || {
        store.confirm_pairing(
            &principal.subject,
            id,
            &body.code,
            body.serial_number.as_deref(),
            now,
        )
    })
    .await?;
    match result {
        Ok(pairing) => Ok(HttpResponse::Ok().json(serde_json::json!({ "pairing": pairing }))),
        Err(Refusal::Unknown) => Err(ApiError::NotFound),
        Err(r) => Err(ApiError::bad_request(r.code(), r.to_string())),
    }
}

/// Ends the owner's binding of a device now.
#[utoipa::path(delete, path = "/api/v1/me/devices/{device_id}/binding", tag = "owner",
    operation_id = "release_device",
    params(("device_id" = String, Path, description = "The device whose binding to end")),
    security(("bearer" = [])),
    description = "Scope: `patient/Device.d`. Ends the owner's open binding of the device at \
                   once (giving the band away): records measured from now on belong to nobody \
                   (they are quarantined) until someone pairs the device. Earlier records stay \
                   the owner's. Written to the owner's disclosure log.",
    responses(
        (status = 200, description = "The binding ended; `valid_to` is when", body = doc::Released),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks `patient/Device.d`", body = super::openapi::ErrorBody),
        (status = 404, description = "The owner holds no open binding of that device", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn release(
    Caller(principal): Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, 'd')?;
    let device = path.into_inner();
    if !is_valid_id(&device) {
        return Err(ApiError::NotFound);
    }
    let store = state.store.clone();
    let now = state.clock.now();
    let id = device.clone();
    let released = blocking(move || store.release_binding(&principal.subject, &id, now)).await?;
    if released {
        Ok(HttpResponse::Ok().json(serde_json::json!({
            "device_id": device,
            "valid_to": now,
        })))
    } else {
        Err(ApiError::NotFound)
    }
}

/// Why an operator ends a binding, for the former owner's log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct ReleaseReason {
    /// Shown in the former owner's disclosure log (at most 200 characters).
    reason: String,
}

/// An operator ends whoever's binding of a device (a transfer to a new owner).
#[utoipa::path(delete, path = "/api/v1/admin/devices/{device_id}/binding", tag = "admin",
    operation_id = "operator_release_device",
    params(("device_id" = String, Path, description = "The device whose binding to end"), ReleaseReason),
    security(("bearer" = [])),
    description = "Scope: `phr:admin`. Ends the open binding of the device now, whoever holds \
                   it, so that its new owner can pair it; written to the former owner's \
                   disclosure log with the reason.",
    responses(
        (status = 200, description = "The binding ended", body = doc::OperatorReleased),
        (status = 400, description = "`invalid_query`: no reason, or one over 200 characters", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks `phr:admin`", body = super::openapi::ErrorBody),
        (status = 404, description = "Nobody holds an open binding of that device", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn operator_release(
    Caller(principal): Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<ReleaseReason>,
) -> Result<HttpResponse, ApiError> {
    super::corrections::require_admin(&principal)?;
    let device = path.into_inner();
    let reason = query.into_inner().reason;
    if reason.trim().is_empty() || reason.chars().count() > 200 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`reason` must be 1-200 characters",
        ));
    }
    if !is_valid_id(&device) {
        return Err(ApiError::NotFound);
    }
    let store = state.store.clone();
    let now = state.clock.now();
    let id = device.clone();
    let owner = blocking(move || store.operator_release(&id, &principal.subject, &reason, now))
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "device_id": device,
        "former_owner": owner,
        "valid_to": now,
    })))
}

/// A bridge to enrol: its id and its Ed25519 public key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Enrol {
    /// 1-64 characters of `A-Z a-z 0-9 . _ : -`.
    bridge_id: String,
    /// 64 hex characters (`phr-bridge identity` prints them).
    public_key: String,
}

/// Enrols a bridge: registers its key, answers the gateway key to configure on it.
#[utoipa::path(post, path = "/api/v1/admin/bridges", tag = "admin",
    operation_id = "enrol_bridge",
    request_body = Enrol,
    security(("bearer" = [])),
    description = "Scope: `phr:admin`. Registers the bridge's Ed25519 public key: from then on \
                   it may connect to the embedded broker and what it seals with the key it \
                   shares with the gateway counts. The answer's `gateway_key` goes into the \
                   bridge's configuration. The same key again changes nothing; another key for \
                   an enrolled bridge is refused (409).",
    responses(
        (status = 201, description = "Enrolled", body = doc::Enrolled),
        (status = 400, description = "`invalid_body`, `invalid_id` or `invalid` (not a key)", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks `phr:admin`", body = super::openapi::ErrorBody),
        (status = 409, description = "The bridge is enrolled with another key", body = super::openapi::ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn enrol(
    Caller(principal): Caller,
    state: web::Data<AppState>,
    body: Result<web::Json<Enrol>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    super::corrections::require_admin(&principal)?;
    let body = body
        .map_err(|e| ApiError::from_body_error(&e))?
        .into_inner();
    if !is_valid_id(&body.bridge_id) {
        return Err(ApiError::bad_request(
            "invalid_id",
            "`bridge_id` must be 1-64 characters of A-Z a-z 0-9 . _ : -",
        ));
    }
    let store = state.store.clone();
    let (id, key) = (body.bridge_id.clone(), body.public_key.trim().to_owned());
    blocking(move || store.register_bridge_key(&id, &key)).await?;
    state.channels.forget(&body.bridge_id);
    Ok(HttpResponse::Created().json(serde_json::json!({
        "bridge_id": body.bridge_id,
        "gateway_key": state.channels.public_hex(),
    })))
}

/// Revokes a bridge's enrolment (lost or compromised).
#[utoipa::path(delete, path = "/api/v1/admin/bridges/{bridge_id}", tag = "admin",
    operation_id = "revoke_bridge",
    params(("bridge_id" = String, Path, description = "The bridge whose enrolment to revoke")),
    security(("bearer" = [])),
    description = "Scope: `phr:admin`. From now on the bridge cannot connect to the embedded \
                   broker, nothing it seals is read (its batches are refused unread and \
                   counted), and nothing is sent to it. Its devices and their bindings stay; \
                   enrol it again with a new key to resume.",
    responses(
        (status = 200, description = "Revoked", body = doc::Revoked),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks `phr:admin`", body = super::openapi::ErrorBody),
        (status = 404, description = "No enrolled bridge with that id", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn revoke(
    Caller(principal): Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    super::corrections::require_admin(&principal)?;
    let bridge = path.into_inner();
    if !is_valid_id(&bridge) {
        return Err(ApiError::NotFound);
    }
    let store = state.store.clone();
    let id = bridge.clone();
    let revoked = blocking(move || store.revoke_bridge(&id)).await?;
    state.channels.forget(&bridge);
    if !revoked {
        return Err(ApiError::NotFound);
    }
    tracing::warn!(bridge_id = %bridge, operator = %principal.subject, "bridge enrolment revoked");
    Ok(HttpResponse::Ok().json(serde_json::json!({ "bridge_id": bridge, "revoked": true })))
}

/// The JSON these handlers write, for the OpenAPI document only.
#[allow(dead_code)]
pub(crate) mod doc {
    use utoipa::ToSchema;

    /// A device's binding to the owner, `[valid_from, valid_to)`.
    #[derive(Debug, ToSchema)]
    pub(crate) struct DeviceBinding {
        device_id: String,
        #[schema(format = DateTime)]
        valid_from: String,
        /// Null while the binding is open.
        #[schema(format = DateTime)]
        valid_to: Option<String>,
    }

    #[derive(Debug, ToSchema)]
    pub(crate) struct DeviceList {
        devices: Vec<DeviceBinding>,
    }

    /// A pairing as the owner sees it.
    #[derive(Debug, ToSchema)]
    pub(crate) struct Pairing {
        /// A UUID.
        pairing_id: String,
        bridge_id: String,
        device_id: String,
        #[schema(format = DateTime)]
        expires_at: String,
        /// `pending`, `confirmed` or `refused`.
        state: String,
        /// What the bridge reported about the device; null until it has.
        reported_address: Option<String>,
        reported_serial: Option<String>,
    }

    /// A device a bridge reported nearby.
    #[derive(Debug, ToSchema)]
    pub(crate) struct NearbyDevice {
        device_id: String,
        /// Its advertised name, cleaned (at most 32 characters); null if none.
        name: Option<String>,
        /// Signal strength in dBm; null if the bridge had none.
        rssi: Option<i16>,
        /// The decoder that reads it (model or kind).
        decoder: String,
        /// The owner holds a binding of it already.
        yours: bool,
    }

    /// A bridge's latest nearby report, as the owner may see it.
    #[derive(Debug, ToSchema)]
    pub(crate) struct Nearby {
        bridge_id: String,
        #[schema(format = DateTime)]
        observed_at: String,
        /// Older than 10 minutes: `devices` is empty.
        stale: bool,
        devices: Vec<NearbyDevice>,
    }

    #[derive(Debug, ToSchema)]
    pub(crate) struct PairingStarted {
        pairing: Pairing,
        /// What to do next, in words.
        next: String,
    }

    /// A revoked enrolment.
    #[derive(Debug, ToSchema)]
    pub(crate) struct Revoked {
        bridge_id: String,
        revoked: bool,
    }

    /// A binding an operator ended.
    #[derive(Debug, ToSchema)]
    pub(crate) struct OperatorReleased {
        device_id: String,
        former_owner: String,
        #[schema(format = DateTime)]
        valid_to: String,
    }

    /// An enrolled bridge and the key to configure on it.
    #[derive(Debug, ToSchema)]
    pub(crate) struct Enrolled {
        bridge_id: String,
        /// The gateway's channel key (64 hex characters): the bridge's `gateway_key`.
        gateway_key: String,
    }

    /// A binding the owner ended.
    #[derive(Debug, ToSchema)]
    pub(crate) struct Released {
        device_id: String,
        #[schema(format = DateTime)]
        valid_to: String,
    }

    #[derive(Debug, ToSchema)]
    pub(crate) struct PairingOnly {
        pairing: Pairing,
    }
}
