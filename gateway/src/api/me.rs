//! The owner's own resources, under `/api/v1/me/`: records, consents (with signed receipts),
//! the disclosure log, and erasure. The token's subject is the person; SMART v2 `patient/`
//! scopes decide which of these the token may use.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use phr_schema::envelope::is_valid_id;
use phr_schema::RecordType;

use super::error::ApiError;
use super::records::{self, RecordsQuery};
use super::AppState;
use crate::auth::Principal;
use crate::store::audit::Logged;
use crate::store::{Consent, GranteeKind, Terms, STORAGE_GRANTEE, STORAGE_PURPOSE};

pub const RECORDS: &str = "/api/v1/me/records";
pub const CONSENTS: &str = "/api/v1/me/consents";
pub const CONSENT: &str = "/api/v1/me/consents/{consent_id}";
pub const DISCLOSURES: &str = "/api/v1/me/disclosures";
pub const DATA: &str = "/api/v1/me/data";

/// The JOSE `typ` of consent receipts.
pub const RECEIPT_TYP: &str = "phr-consent-receipt+jwt";
/// What `DELETE /api/v1/me/data` needs in `confirm`, so no stray call erases anyone.
pub const ERASE_CONFIRMATION: &str = "erase-all-my-data";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(RECORDS, web::get().to(own_records))
        .route(CONSENTS, web::get().to(list_consents))
        .route(CONSENTS, web::post().to(grant_consent))
        .route(CONSENT, web::delete().to(withdraw_consent))
        .route(DISCLOSURES, web::get().to(disclosures))
        .route(DATA, web::delete().to(erase));
}

fn require(p: &Principal, resource: &str, perms: &[char]) -> Result<(), ApiError> {
    if perms
        .iter()
        .any(|&perm| p.has_scope("patient", resource, perm))
    {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

async fn own_records(
    principal: Principal,
    state: web::Data<AppState>,
    query: Result<web::Query<RecordsQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, "Observation", &['r', 's'])?;
    let person = principal.subject.clone();
    records::respond(principal, state, person, query).await
}

async fn list_consents(
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, "Consent", &['r', 's'])?;
    let store = state.store.clone();
    let consents = web::block(move || store.consents(&principal.subject, Utc::now()))
        .await
        .map_err(|_| ApiError::Internal)??;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "consents": consents })))
}

/// A new consent, as the owner states it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewConsent {
    grantee: String,
    grantee_kind: GranteeKind,
    purpose: String,
    data_types: Vec<String>,
    window_from: Option<DateTime<Utc>>,
    window_to: Option<DateTime<Utc>>,
    valid_until: Option<DateTime<Utc>>,
}

impl NewConsent {
    fn into_terms(self, now: DateTime<Utc>) -> Result<Terms, ApiError> {
        let bad = |code, msg: &str| Err(ApiError::bad_request(code, msg.to_owned()));
        if !is_valid_id(&self.grantee) {
            return bad(
                "invalid_grantee",
                "`grantee` must be 1-64 characters of A-Z a-z 0-9 . _ : -",
            );
        }
        let storage = self.grantee_kind == GranteeKind::Gateway;
        if storage != (self.grantee == STORAGE_GRANTEE)
            || (storage && self.purpose != STORAGE_PURPOSE)
        {
            return bad(
                "invalid_grantee",
                "the gateway itself is grantee `phr-gateway` with purpose `storage`, and only it",
            );
        }
        if self.purpose.trim().is_empty() || self.purpose.len() > 200 {
            return bad("invalid_purpose", "`purpose` must be 1-200 characters");
        }
        let mut data_types = Vec::new();
        for t in &self.data_types {
            let t: RecordType = t.parse().map_err(|_| {
                ApiError::bad_request("invalid_type", format!("unknown data type {t:?}"))
            })?;
            if !data_types.contains(&t) {
                data_types.push(t);
            }
        }
        if data_types.is_empty() {
            return bad(
                "invalid_type",
                "`data_types` must name at least one of step-count, sleep-episode, heart-rate",
            );
        }
        if let (Some(f), Some(t)) = (self.window_from, self.window_to) {
            if t <= f {
                return bad("invalid_range", "`window_to` must be after `window_from`");
            }
        }
        if self.valid_until.is_some_and(|u| u <= now) {
            return bad("invalid_valid_until", "`valid_until` must be in the future");
        }
        Ok(Terms {
            grantee: self.grantee,
            grantee_kind: self.grantee_kind,
            purpose: self.purpose,
            data_types,
            window_from: self.window_from,
            window_to: self.window_to,
            valid_until: self.valid_until,
        })
    }
}

/// The claims of a consent receipt: the consent as recorded, signed by the gateway.
#[derive(Debug, Serialize, Deserialize)]
pub struct Receipt {
    pub iss: String,
    pub sub: String,
    pub iat: i64,
    pub jti: Uuid,
    pub consent: Consent,
}

async fn grant_consent(
    principal: Principal,
    state: web::Data<AppState>,
    body: Result<web::Json<NewConsent>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, "Consent", &['c'])?;
    let body = body
        .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?
        .into_inner();
    let now = Utc::now();
    let terms = body.into_terms(now)?;
    let store = state.store.clone();
    let person = principal.subject.clone();
    let consent = web::block(move || {
        store.ensure_person(&person)?;
        store.grant_consent(&person, terms, &person, now)
    })
    .await
    .map_err(|_| ApiError::Internal)??;
    let receipt = Receipt {
        iss: state.keys.issuer().to_owned(),
        sub: consent.person_id.clone(),
        iat: now.timestamp(),
        jti: consent.consent_id,
        consent: consent.clone(),
    };
    let receipt = state.keys.sign(RECEIPT_TYP, &receipt)?;
    Ok(HttpResponse::Created().json(serde_json::json!({ "consent": consent, "receipt": receipt })))
}

async fn withdraw_consent(
    principal: Principal,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, "Consent", &['u', 'd'])?;
    let id = Uuid::parse_str(&path.into_inner()).map_err(|_| ApiError::NotFound)?;
    let store = state.store.clone();
    let consent = web::block(move || {
        store.withdraw_consent(&principal.subject, id, &principal.subject, Utc::now())
    })
    .await
    .map_err(|_| ApiError::Internal)??
    .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "consent": consent })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisclosuresQuery {
    after: Option<i64>,
    limit: Option<usize>,
}

/// Who read my data, who was refused, and when it was erased: oldest first, `after` a `seq`.
async fn disclosures(
    principal: Principal,
    state: web::Data<AppState>,
    query: Result<web::Query<DisclosuresQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, "AuditEvent", &['r', 's'])?;
    let q = query
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?
        .into_inner();
    let limit = q.limit.unwrap_or(records::DEFAULT_LIMIT);
    if !(1..=records::MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("`limit` must be between 1 and {}", records::MAX_LIMIT),
        ));
    }
    let store = state.store.clone();
    let rows: Vec<Logged> =
        web::block(move || store.disclosures(&principal.subject, q.after.unwrap_or(0), limit))
            .await
            .map_err(|_| ApiError::Internal)??;
    let next_after = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.seq))
        .flatten();
    Ok(HttpResponse::Ok()
        .json(serde_json::json!({ "disclosures": rows, "next_after": next_after })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EraseQuery {
    confirm: Option<String>,
}

/// Erases all of the owner's data (records, quarantined records of their devices), closes
/// their bindings and withdraws their consents. Needs `?confirm=erase-all-my-data`.
async fn erase(
    principal: Principal,
    state: web::Data<AppState>,
    query: Result<web::Query<EraseQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, "Observation", &['d'])?;
    let q = query
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?
        .into_inner();
    if q.confirm.as_deref() != Some(ERASE_CONFIRMATION) {
        return Err(ApiError::bad_request(
            "confirmation_required",
            format!(
                "erasure cannot be undone; repeat the request with ?confirm={ERASE_CONFIRMATION}"
            ),
        ));
    }
    let store = state.store.clone();
    let erased =
        web::block(move || store.erase_person(&principal.subject, &principal.subject, Utc::now()))
            .await
            .map_err(|_| ApiError::Internal)??;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "erased": erased })))
}
