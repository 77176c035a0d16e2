//! Incremental sync for PHR companies and clinicians: `GET /api/v1/sync?cursor=&limit=`.
//!
//! Every record the caller may see that was stored, corrected or erased since the cursor,
//! across all the people who consent to it, in commit order (see [`crate::access::feed`]
//! for the visibility rules, consent edits included). The cursor is opaque; it never skips and
//! never repeats a change. `has_more` is the only end signal: a page is full, or holds
//! everything visible up to now; it is short (even empty) with `has_more` true only when the
//! time one request may spend examining changes ran out
//! ([`crate::store::changes::PAGE_TIME_BUDGET`]). Keep calling while `has_more`; afterwards,
//! call again later with the last `next_cursor` to get what arrived since. Each person whose records a page carries gets
//! one disclosure-log entry, written before the page is returned.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use super::blocking;
use super::cursor::{Cursor, FeedSeq};
use super::error::ApiError;
use super::AppState;
use crate::access::{self, party_kind};
use crate::api::Caller;
use crate::store::changes::FeedPage;

pub const SYNC: &str = "/api/v1/sync";
pub const DEFAULT_LIMIT: usize = 500;
pub const MAX_LIMIT: usize = 5000;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(SYNC, web::get().to(sync));
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct SyncQuery {
    /// `next_cursor` of the previous page; absent to start from the beginning.
    cursor: Option<String>,
    /// Changes per page, 1 to 5000 (default 500).
    limit: Option<usize>,
}

/// One change: a record stored (or moved to this person), a record erased (or moved away),
/// or the person erased everything (`person_erased`: drop all you hold of them; it names no
/// record).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SyncChange {
    /// `stored`, `erased` or `person_erased`.
    op: &'static str,
    person_id: String,
    /// Absent for `person_erased`.
    #[serde(skip_serializing_if = "Option::is_none")]
    record_type: Option<&'static str>,
    /// Absent for `person_erased`.
    #[serde(skip_serializing_if = "Option::is_none")]
    record_id: Option<String>,
    /// The record (`stored` only), as `GET /api/v1/subjects/{id}/records` returns it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    record: Option<Box<RawValue>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SyncPage {
    changes: Vec<SyncChange>,
    /// Where the next call starts; opaque.
    next_cursor: String,
    /// Call again now: there may be more. The only end signal: a page is short or empty with
    /// `has_more` true only when the gateway's time budget for one page ran out.
    has_more: bool,
}

/// The changes since the cursor that the caller may see.
#[utoipa::path(get, path = "/api/v1/sync", tag = "companies", params(SyncQuery),
    security(("bearer" = [])),
    description = "Scopes: `system/Observation.rs` (PHR companies) or `user/Observation.rs` \
                   (clinicians); a type-narrowed scope narrows the feed (keep one cursor per scope).\n\n\
                   Keep calling while `has_more` is true: it is the only end signal. A page is \
                   never short while visible changes remain, except when one request's time \
                   budget (2 s) ran out; the cursor has then moved past what was examined.\n\n\
                   Visibility is decided at read time from each person's consent history: a \
                   `stored` change is delivered when a consent in force now covers its type and \
                   measured start and the caller has not received that record under an earlier \
                   consent. Editing a consent (grant the new one and withdraw the old, in either \
                   order), renewing it after expiry or granting one late neither drops nor \
                   repeats a record; a withdrawal or expiry stops the flow at once, for changes \
                   not yet read too. `erased` (a record deleted or moved away by a correction) is \
                   sent while the caller holds a consent of that person and could have seen the \
                   record; `person_erased` (the person erased everything; it names no record) \
                   means: drop everything you hold of them.",
    responses(
        (status = 200, description = "A page of changes", body = SyncPage),
        (status = 400, description = "Bad cursor or limit", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token is not a company's or a clinician's", body = super::openapi::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn sync(
    Caller(principal): Caller,
    state: web::Data<AppState>,
    query: Result<web::Query<SyncQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let q = query
        .map_err(|_| ApiError::bad_request("invalid_query", "allowed parameters: cursor, limit"))?
        .into_inner();
    let after = match q.cursor.as_deref() {
        None => 0,
        Some(c) => {
            FeedSeq::decode(c)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_cursor",
                        "`cursor` is not one this gateway issued",
                    )
                })?
                .0
        }
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("`limit` must be 1..={MAX_LIMIT}"),
        ));
    }
    if party_kind(&principal).is_none() {
        return Err(ApiError::Forbidden);
    }
    let store = state.store.clone();
    let now = state.clock.now();
    let page = blocking(move || -> Result<FeedPage, ApiError> {
        Ok(access::read_changes(&store, &principal, after, limit, now)?)
    })
    .await?;
    let changes = page
        .changes
        .into_iter()
        .map(|c| SyncChange {
            op: c.op.as_str(),
            person_id: c.person_id,
            record_type: c.record.as_ref().map(|(t, _)| t.as_str()),
            record_id: c.record.map(|(_, id)| id),
            record: c.json.and_then(|j| RawValue::from_string(j).ok()),
        })
        .collect();
    Ok(HttpResponse::Ok().json(SyncPage {
        changes,
        next_cursor: FeedSeq(page.last_seq).encode(),
        has_more: page.more,
    }))
}
