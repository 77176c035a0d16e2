//! The HTTP API (actix-web). Route paths are constants here; each resource has its own
//! module with a `configure` function.
//!
//! # Layout
//! - [`error`]: the one mapping from errors to status and JSON body.
//! - [`me`]: the owner's own resources (`/api/v1/me/...`): records, consents, disclosures,
//!   erasure.
//! - [`corrections`]: quarantine confirmation, unlinking, operator re-attribution.
//! - [`devices`]: the owner's devices and pairing (`/api/v1/me/devices/...`).
//! - [`sources`]: which of the owner's devices counts when two measured the same time
//!   (`/api/v1/me/sources`).
//! - [`subjects`]: other parties' reads of a person's data (`/api/v1/subjects/...`).
//! - [`records`]: query parsing and output formats shared by both.
//! - [`cursor`]: the paging cursors' one codec (records, FHIR search, sync).
//! - [`export`]: the owner's export (FHIR R4, Open mHealth, CSV).
//! - [`summary`]: who consents to the caller (`/api/v1/subjects`), daily summaries.
//! - [`fhir`]: FHIR R4 Observation search and the CapabilityStatement (`/fhir/...`); its
//!   errors are `OperationOutcome` resources.
//! - [`oauth`]: the token endpoint, discovery, and operators' client registration.
//! - [`forwarded`]: the scheme and host a client reached us by (proxies' headers only from
//!   `http.trusted_proxies`).
//! - this file: app state, the bearer-token extractor, `/healthz`, `/metrics`, the dashboard.

pub mod corrections;
pub(crate) mod cursor;
pub mod devices;
pub mod error;
pub mod export;
pub mod fhir;
pub use crate::access::forwarded;
pub mod me;
pub mod oauth;
pub mod openapi;
pub mod records;
pub mod sources;
pub mod subjects;
pub mod summary;
pub mod sync;

use std::future::ready;
use std::sync::Arc;

use actix_web::{web, FromRequest, HttpMessage, HttpRequest, HttpResponse};

use crate::auth::{Keys, Principal};
use crate::metrics::Metrics;
use crate::store::prelude::*;
use error::ApiError;

/// Runs `f` on actix's blocking pool, where every store call runs (never on the async
/// workers): a task that panicked or was cancelled is [`ApiError::Internal`], and `f`'s own
/// error converts through `From`.
pub(crate) async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Send + 'static,
    ApiError: From<E>,
{
    web::block(f)
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(ApiError::from)
}

pub const HEALTHZ: &str = "/healthz";
pub const METRICS: &str = "/metrics";
pub const DASHBOARD: &str = "/dashboard";

/// What handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<dyn Backend>,
    pub keys: Arc<Keys>,
    /// Channels to enrolled bridges: pairing requests are sealed with them.
    pub channels: Arc<crate::channel::Channels>,
    pub metrics: Arc<Metrics>,
    /// The gateway's MQTT client, for messages to bridges (pairing requests).
    pub mqtt: rumqttc::AsyncClient,
    pub topics: phr_schema::Topics,
    /// Per-caller request rate limits.
    pub limiter: Arc<crate::limits::RateLimiter>,
    /// Exports running, per subject and overall (`[export]` limits).
    pub exports: Arc<export::ExportSlots>,
    /// The identity providers trusted for sign-in and API tokens (`[[auth.providers]]`).
    pub idp: Arc<crate::idp::Providers>,
    /// The gateway's public origin when the operator set one (`auth.issuer`); otherwise the
    /// request's (see [`forwarded`]).
    pub public_base: Option<String>,
    /// Where every handler reads the time (the gateway's one clock, see `crate::Options`).
    pub clock: crate::store::SharedClock,
}

/// Mounts every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(HEALTHZ, web::get().to(healthz))
        .route(METRICS, web::get().to(metrics))
        .route("/", web::get().to(home))
        .route(DASHBOARD, web::get().to(dashboard));
    me::configure(cfg);
    devices::configure(cfg);
    sources::configure(cfg);
    corrections::configure(cfg);
    export::configure(cfg);
    subjects::configure(cfg);
    summary::configure(cfg);
    fhir::configure(cfg);
    oauth::configure(cfg);
    openapi::configure(cfg);
    sync::configure(cfg);
    crate::dashboard::configure(cfg);
}

/// The largest request body any route accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A body that could not be read: too large (413 `payload_too_large`) or malformed (400
/// `invalid_body`), as JSON like every other error.
pub fn body_error(message: &str, status: actix_web::http::StatusCode) -> actix_web::Error {
    if status == actix_web::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge {
            max: MAX_BODY_BYTES,
        }
        .into()
    } else {
        ApiError::bad_request("invalid_body", message.to_owned()).into()
    }
}

/// Any path or method no route serves: a JSON 404 like every other error.
pub async fn not_found() -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::NotFound)
}

/// Liveness: the process answers HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The gateway is up", body = Object, example = json!({"status": "ok"}))))]
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Prometheus text-format metrics (ingest, acks, rejections by reason, quarantine, API
/// latency, MQTT connections). Every value comes from memory: a scrape runs no query.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    description = "Needs `Authorization: Bearer <metrics token>` when the operator configured \
                   one (`metrics.token_file` or `PHR_METRICS_TOKEN`). With `metrics.listen` \
                   set, served only on that address: the public port answers 404.",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain", body = String),
        (status = 401, description = "A metrics token is configured and the request lacks it", body = openapi::ErrorBody),
        (status = 404, description = "Metrics are served on their own listener (`metrics.listen`)", body = openapi::ErrorBody),
    ))]
pub(crate) async fn metrics(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if let Some(scrape) = req.app_data::<web::Data<crate::metrics::Scrape>>() {
        scrape.check(req.headers())?;
    }
    let (series, quarantine) = state.store.row_counts();
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render(series, quarantine)))
}

/// The start page (the dashboard).
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "HTML", content_type = "text/html", body = String)))]
pub(crate) async fn home() -> HttpResponse {
    dashboard().await
}

/// The dashboard page.
#[utoipa::path(get, path = "/dashboard", tag = "operations",
    responses((status = 200, description = "HTML", content_type = "text/html", body = String)))]
pub(crate) async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", crate::dashboard::CSP))
        .body(include_str!("../../../dashboards/index.html"))
}

/// The bearer token of a request's `Authorization` header, if it has a non-empty one.
pub fn bearer_token(headers: &actix_web::http::header::HeaderMap) -> Option<&str> {
    headers
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The caller already verified for this request (by the rate limiter, which keys on the
/// token's subject), kept in the request's extensions so the signature is checked once.
#[derive(Debug, Clone)]
pub struct VerifiedCaller(pub Principal);

/// The verified caller, as handlers take it: the [`Principal`] of a valid bearer token.
/// Handlers that take a `Caller` cannot run without one.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self, ApiError>>>>;

    /// The gateway's own token, or an access token of a trusted identity provider
    /// ([`crate::idp`]); the provider's keys may need fetching, off the async threads.
    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            return Box::pin(ready(Err(ApiError::Internal)));
        };
        if let Some(VerifiedCaller(p)) = req.extensions().get::<VerifiedCaller>() {
            return Box::pin(ready(Ok(Caller(p.clone()))));
        }
        let Some(token) = bearer_token(req.headers()) else {
            return Box::pin(ready(Err(ApiError::Unauthorized)));
        };
        let Some(provider) = state.idp.for_access_token(token).cloned() else {
            return Box::pin(ready(
                state
                    .keys
                    .verify(token, state.clock.now())
                    .map(|c| Caller(Principal::from_claims(c)))
                    .map_err(|_| ApiError::Unauthorized),
            ));
        };
        let token = token.to_owned();
        Box::pin(async move {
            let name = provider.name().to_owned();
            match web::block(move || provider.verify_access_token(&token, true)).await {
                Ok(Ok(p)) => Ok(Caller(p)),
                Ok(Err(e)) => {
                    tracing::info!(provider = %name, error = %e, "refused a provider's access token");
                    Err(ApiError::Unauthorized)
                }
                Err(_) => Err(ApiError::Internal),
            }
        })
    }
}
