//! The owner's own resources, under `/api/v1/me/`: records, consents (with signed receipts),
//! the disclosure log, and erasure. The token's subject is the person; SMART v2 `patient/`
//! scopes decide which of these the token may use.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use phr_schema::envelope::is_valid_id;
use phr_schema::RecordType;

use super::blocking;
use super::error::ApiError;
use super::records::{self, RecordsQuery};
use super::AppState;
use crate::api::Caller;
use crate::auth::Principal;
use crate::store::audit::Logged;
use crate::store::prelude::*;
use crate::store::{Consent, GranteeKind, Terms, STORAGE_GRANTEE, STORAGE_PURPOSE};

pub const RECORDS: &str = "/api/v1/me/records";
pub const CONSENTS: &str = "/api/v1/me/consents";
pub const CONSENT: &str = "/api/v1/me/consents/{consent_id}";
pub const DISCLOSURES: &str = "/api/v1/me/disclosures";
pub const DATA: &str = "/api/v1/me/data";

/// The JOSE `typ` of consent receipts.
pub const RECEIPT_TYP: &str = "phr-consent-receipt+jwt";
pub use crate::access::ERASE_CONFIRMATION;

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

/// The owner's own records of one type, a page at a time.
#[utoipa::path(get, path = "/api/v1/me/records", tag = "owner", operation_id = "own_records",
    params(RecordsQuery),
    security(("bearer" = [])),
    description = "Scope: `patient/Observation.rs` (read or search). Records whose measured \
                   start lies in `[from, to)`, in measured order; keep calling with \
                   `next_cursor` until it is null. `format=omh` answers Open mHealth data \
                   points instead of records.",
    responses(
        (status = 200, description = "A page of records (`format=record`) or of Open mHealth data points (`format=omh`)", body = doc::RecordsResponse),
        (status = 400, description = "Bad query: `invalid_query`, `invalid_type`, `invalid_time`, `invalid_range`, `span_too_large`, `invalid_limit`, `invalid_cursor`", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks `patient/Observation.rs`", body = super::openapi::ErrorBody),
        (status = 404, description = "Not readable as the owner and no consent covers the type (a token that is also a company's or clinician's)", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn own_records(
    Caller(principal): Caller,
    state: web::Data<AppState>,
    query: Result<web::Query<RecordsQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, "Observation", &['r', 's'])?;
    let person = principal.subject.clone();
    records::respond(principal, state, person, query).await
}

/// Every consent the owner ever gave, as it stands now, oldest first.
#[utoipa::path(get, path = "/api/v1/me/consents", tag = "owner", operation_id = "list_consents",
    security(("bearer" = [])),
    description = "Scope: `patient/Consent.rs` (read or search). Withdrawn and expired \
                   consents are listed too, with their `status`.",
    responses(
        (status = 200, description = "The owner's consents", body = doc::ConsentList),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks `patient/Consent.rs`", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn list_consents(
    Caller(principal): Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, "Consent", &['r', 's'])?;
    let store = state.store.clone();
    let now = state.clock.now();
    let consents = blocking(move || store.consents(&principal.subject, now)).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "consents": consents })))
}

/// A new consent, as the owner states it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewConsent {
    /// Who may read: a PHR company's OAuth client id, a clinician's id, or `phr-gateway`
    /// (with `grantee_kind` `gateway` and purpose `storage`: consent to store). 1-64
    /// characters of `A-Z a-z 0-9 . _ : -`.
    grantee: String,
    #[schema(value_type = doc::GranteeKind)]
    grantee_kind: GranteeKind,
    /// Why, in words (1-200 characters).
    purpose: String,
    /// At least one of `step-count`, `sleep-episode`, `heart-rate`.
    #[schema(value_type = Vec<doc::RecordType>)]
    data_types: Vec<String>,
    /// Start of the measured-time window covered (inclusive); absent for unbounded.
    #[schema(value_type = Option<String>, format = DateTime)]
    window_from: Option<DateTime<Utc>>,
    /// End of the measured-time window covered (exclusive); after `window_from`.
    #[schema(value_type = Option<String>, format = DateTime)]
    window_to: Option<DateTime<Utc>>,
    /// When the consent lapses by itself (in the future); absent for until withdrawn.
    #[schema(value_type = Option<String>, format = DateTime)]
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

/// Grants a consent and answers it with a receipt signed by the gateway.
#[utoipa::path(post, path = "/api/v1/me/consents", tag = "owner", operation_id = "grant_consent",
    request_body = NewConsent,
    security(("bearer" = [])),
    description = "Scope: `patient/Consent.c`. The receipt is a compact JWS (`typ` \
                   `phr-consent-receipt+jwt`) whose claims carry the consent as recorded; it \
                   verifies with the gateway's published keys.",
    responses(
        (status = 201, description = "The consent as recorded, and its signed receipt", body = doc::GrantedConsent),
        (status = 400, description = "Bad body: `invalid_body`, `invalid_grantee`, `invalid_purpose`, `invalid_type`, `invalid_range`, `invalid_valid_until`", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks `patient/Consent.c`", body = super::openapi::ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn grant_consent(
    Caller(principal): Caller,
    state: web::Data<AppState>,
    body: Result<web::Json<NewConsent>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, "Consent", &['c'])?;
    let body = body
        .map_err(|e| ApiError::from_body_error(&e))?
        .into_inner();
    let now = state.clock.now();
    let terms = body.into_terms(now)?;
    let store = state.store.clone();
    let person = principal.subject.clone();
    let consent = blocking(move || {
        store.ensure_person(&person)?;
        store.grant_consent(&person, terms, &person, now)
    })
    .await?;
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

/// Withdraws one of the owner's consents (idempotent).
#[utoipa::path(delete, path = "/api/v1/me/consents/{consent_id}", tag = "owner",
    operation_id = "withdraw_consent",
    params(("consent_id" = String, Path, description = "The consent's id (a UUID)")),
    security(("bearer" = [])),
    description = "Scope: `patient/Consent.u` or `patient/Consent.d`. From now on the \
                   grantee reads nothing more under it. Withdrawing a withdrawn consent \
                   answers it unchanged.",
    responses(
        (status = 200, description = "The consent, withdrawn", body = doc::ConsentOnly),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks `patient/Consent.u` or `.d`", body = super::openapi::ErrorBody),
        (status = 404, description = "No such consent of the owner's (or not a UUID)", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn withdraw_consent(
    Caller(principal): Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require(&principal, "Consent", &['u', 'd'])?;
    let id = Uuid::parse_str(&path.into_inner()).map_err(|_| ApiError::NotFound)?;
    let store = state.store.clone();
    let now = state.clock.now();
    let consent =
        blocking(move || store.withdraw_consent(&principal.subject, id, &principal.subject, now))
            .await?
            .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "consent": consent })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DisclosuresQuery {
    /// Only entries with a larger `seq` (the previous page's `next_after`); absent to start
    /// from the oldest.
    after: Option<i64>,
    /// Entries per page, 1 to 5000 (default 500).
    #[param(minimum = 1, maximum = 5000)]
    limit: Option<usize>,
}

/// Who read my data, who was refused, and when it was erased: oldest first, `after` a `seq`.
#[utoipa::path(get, path = "/api/v1/me/disclosures", tag = "owner", operation_id = "disclosures",
    params(DisclosuresQuery),
    security(("bearer" = [])),
    description = "Scope: `patient/AuditEvent.rs` (read or search). The owner's entries of \
                   the hash-chained disclosure log: reads (disclosed or denied), exports, \
                   erasures, pairings, corrections, imports. `next_after` is set when the page \
                   is full; pass it as `after` for the next page.",
    responses(
        (status = 200, description = "A page of disclosure-log entries", body = doc::DisclosurePage),
        (status = 400, description = "Bad query: `invalid_query`, `invalid_limit`", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks `patient/AuditEvent.rs`", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn disclosures(
    Caller(principal): Caller,
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
        blocking(move || store.disclosures(&principal.subject, q.after.unwrap_or(0), limit))
            .await?;
    let next_after = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.seq))
        .flatten();
    Ok(HttpResponse::Ok()
        .json(serde_json::json!({ "disclosures": rows, "next_after": next_after })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EraseQuery {
    /// Must be `erase-all-my-data`: erasure cannot be undone.
    confirm: Option<String>,
}

/// Erases all of the owner's data, closes their bindings and withdraws their consents.
#[utoipa::path(delete, path = "/api/v1/me/data", tag = "owner", operation_id = "erase_my_data",
    params(EraseQuery),
    security(("bearer" = [])),
    description = "Scope: `patient/Observation.d`. Needs `?confirm=erase-all-my-data`. Erases \
                   the owner's records and the quarantined records measured wholly inside \
                   their own binding periods of each device they held (never rows measured \
                   while the device was someone else's or nobody's, nor anyone else's \
                   records), closes their device bindings now and withdraws every consent. \
                   The disclosure log keeps that an erasure happened and how much, not the \
                   data.",
    responses(
        (status = 200, description = "What was erased or closed", body = doc::ErasureResult),
        (status = 400, description = "`confirmation_required` without the confirmation, or `invalid_query`", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token lacks `patient/Observation.d`", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
        (status = 500, description = "Internal error", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn erase(
    Caller(principal): Caller,
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
    let now = state.clock.now();
    let erased =
        blocking(move || store.erase_person(&principal.subject, &principal.subject, now)).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "erased": erased })))
}

/// The JSON these handlers write, for the OpenAPI document only (the handlers serialize the
/// store's types; these describe them).
#[allow(dead_code)]
pub(crate) mod doc {
    use utoipa::ToSchema;

    /// A record type's wire name.
    #[derive(Debug, ToSchema)]
    #[serde(rename_all = "kebab-case")]
    pub(crate) enum RecordType {
        StepCount,
        SleepEpisode,
        HeartRate,
    }

    /// Who a consent is given to: the gateway itself (consent to store), a PHR company (by
    /// OAuth client id), or a clinician.
    #[derive(Debug, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub(crate) enum GranteeKind {
        Gateway,
        Client,
        Practitioner,
    }

    #[derive(Debug, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub(crate) enum ConsentStatus {
        Granted,
        Withdrawn,
        Expired,
    }

    /// A page of records as the gateway stores them (`format=record`).
    #[derive(Debug, ToSchema)]
    pub(crate) struct RecordsPage {
        /// Records (step-count, sleep-episode or heart-rate), in measured order.
        #[schema(value_type = Vec<Object>)]
        records: Vec<()>,
        /// Pass as `cursor` for the next page; null on the last page.
        next_cursor: Option<String>,
    }

    /// A page as Open mHealth data points (`format=omh`).
    #[derive(Debug, ToSchema)]
    pub(crate) struct DataPointsPage {
        /// Open mHealth data points (header and body); a sleep episode gives its episode
        /// point plus one point per stage.
        #[schema(value_type = Vec<Object>)]
        data_points: Vec<()>,
        /// Pass as `cursor` for the next page; null on the last page.
        next_cursor: Option<String>,
    }

    /// A page of records, in the requested `format`.
    #[derive(Debug, ToSchema)]
    #[serde(untagged)]
    pub(crate) enum RecordsResponse {
        Records(RecordsPage),
        DataPoints(DataPointsPage),
    }

    /// A consent as it stands now.
    #[derive(Debug, ToSchema)]
    pub(crate) struct Consent {
        /// A UUID.
        consent_id: String,
        person_id: String,
        grantee: String,
        grantee_kind: GranteeKind,
        purpose: String,
        data_types: Vec<RecordType>,
        /// The measured-time window covered, `[window_from, window_to)`; null is unbounded.
        #[schema(format = DateTime)]
        window_from: Option<String>,
        #[schema(format = DateTime)]
        window_to: Option<String>,
        /// When the consent lapses by itself; null until withdrawn.
        #[schema(format = DateTime)]
        valid_until: Option<String>,
        status: ConsentStatus,
        #[schema(format = DateTime)]
        granted_at: String,
        #[schema(format = DateTime)]
        withdrawn_at: Option<String>,
    }

    #[derive(Debug, ToSchema)]
    pub(crate) struct ConsentList {
        consents: Vec<Consent>,
    }

    #[derive(Debug, ToSchema)]
    pub(crate) struct GrantedConsent {
        consent: Consent,
        /// Compact JWS (`typ` `phr-consent-receipt+jwt`) signed by the gateway; its claims
        /// are `iss`, `sub`, `iat`, `jti` (the consent id) and `consent`.
        receipt: String,
    }

    #[derive(Debug, ToSchema)]
    pub(crate) struct ConsentOnly {
        consent: Consent,
    }

    #[derive(Debug, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub(crate) enum DisclosureAction {
        Read,
        Export,
        Erasure,
        Pairing,
        Correction,
        RefusedBatch,
        Import,
    }

    /// Whether data left: `disclosed`, `denied` (refused) or `done` (the owner's own act).
    #[derive(Debug, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub(crate) enum DisclosureOutcome {
        Disclosed,
        Denied,
        Done,
    }

    /// One entry of the disclosure log, with its place in the hash chain.
    #[derive(Debug, ToSchema)]
    pub(crate) struct Disclosure {
        seq: i64,
        #[schema(format = DateTime)]
        at: String,
        /// Who acted: a client id, a clinician, or the person.
        actor: String,
        /// `client`, `practitioner`, `owner`, ...
        actor_kind: String,
        person_id: String,
        action: DisclosureAction,
        outcome: DisclosureOutcome,
        data_types: Vec<String>,
        /// The measured-time window read; null when none.
        #[schema(format = DateTime)]
        window_from: Option<String>,
        #[schema(format = DateTime)]
        window_to: Option<String>,
        purpose: String,
        /// The consent the read was under (a UUID); null when none.
        consent_id: Option<String>,
        /// How many records.
        records: u64,
        /// This entry's hash in the chain (hex SHA-256).
        hash: String,
    }

    #[derive(Debug, ToSchema)]
    pub(crate) struct DisclosurePage {
        disclosures: Vec<Disclosure>,
        /// Pass as `after` for the next page; null when this page was not full.
        next_after: Option<i64>,
    }

    /// What an erasure removed or closed.
    #[derive(Debug, ToSchema)]
    pub(crate) struct Erasure {
        records: u64,
        quarantined: u64,
        bindings_closed: u64,
        consents_withdrawn: u64,
        /// Rows of the sync feed that named the erased records, replaced by one
        /// `person_erased` notice to the companies and clinicians that held the data.
        feed_rows_removed: u64,
        /// Whether the deleted content was overwritten in the database file (zeroed pages,
        /// write-ahead log emptied) before the answer; `false` only when a long read held the
        /// log, which is then emptied at its next checkpoint.
        overwritten: bool,
    }

    #[derive(Debug, ToSchema)]
    pub(crate) struct ErasureResult {
        erased: Erasure,
    }
}
