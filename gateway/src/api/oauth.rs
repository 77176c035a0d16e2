//! OAuth client credentials over HTTP (the logic is [`crate::oauth`]):
//! - `POST /oauth/token`: a token for a PHR company (RFC 6749 §4.4; client authentication by
//!   `private_key_jwt`, `client_secret_basic` or `client_secret_post`).
//! - `GET /.well-known/jwks.json`: the gateway's token-signing key.
//! - `GET /.well-known/smart-configuration`: SMART discovery.
//! - `POST /api/v1/admin/clients`, `GET /api/v1/admin/clients`: operators (scope `phr:admin`)
//!   register and list clients. A generated secret is shown once, in the answer to `POST`;
//!   neither route ever shows a secret's hash.
//!
//! Token endpoint errors are RFC 6749 §5.2 bodies, `{"error", "error_description"}`, plus the
//! gateway's stable `code` (equal to `error`). Secrets and assertions are never logged.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::blocking;
use super::corrections::require_admin;
use super::error::ApiError;
use super::openapi::ErrorBody;
use super::AppState;
use crate::api::Caller;
use crate::oauth::{
    self, BasicCredentials, Failure, OAuthError, OAuthErrorCode, SmartConfiguration, TokenForm,
    TokenResponse,
};
use crate::store::clients::{Client, NewClient};
use crate::store::prelude::*;

pub const TOKEN: &str = oauth::TOKEN_PATH;
pub const JWKS: &str = oauth::JWKS_PATH;
pub const SMART_CONFIGURATION: &str = oauth::SMART_CONFIGURATION_PATH;
pub const ADMIN_CLIENTS: &str = "/api/v1/admin/clients";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(TOKEN, web::post().to(token))
        .route(JWKS, web::get().to(jwks))
        .route(SMART_CONFIGURATION, web::get().to(smart_configuration))
        .route(ADMIN_CLIENTS, web::post().to(create_client))
        .route(ADMIN_CLIENTS, web::get().to(list_clients));
}

/// A token endpoint error (RFC 6749 §5.2), with the gateway's stable `code` beside it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OAuthErrorBody {
    pub error: OAuthErrorCode,
    /// For the client's developers; may change.
    pub error_description: String,
    /// The same value as `error`, as every gateway error carries a stable `code`.
    #[schema(example = "invalid_client")]
    pub code: String,
}

fn no_store(res: &mut actix_web::HttpResponseBuilder) -> &mut actix_web::HttpResponseBuilder {
    res.insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
}

fn oauth_error(e: OAuthError, basic: bool) -> HttpResponse {
    let status = if e.code == OAuthErrorCode::InvalidClient {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::BAD_REQUEST
    };
    let mut res = HttpResponse::build(status);
    no_store(&mut res);
    if status == StatusCode::UNAUTHORIZED && basic {
        res.insert_header((
            header::WWW_AUTHENTICATE,
            "Basic realm=\"oauth\", charset=\"UTF-8\"",
        ));
    }
    res.json(OAuthErrorBody {
        error: e.code,
        error_description: e.description.to_owned(),
        code: e.code.as_str().to_owned(),
    })
}

/// A token for a PHR company (OAuth 2.0 client credentials, SMART Backend Services).
///
/// Authenticate the client with exactly one of: `private_key_jwt` (`client_assertion_type` =
/// `urn:ietf:params:oauth:client-assertion-type:jwt-bearer` and `client_assertion`, a JWT
/// signed with a registered key: `iss` = `sub` = client id, `aud` = this token endpoint URL,
/// `exp` at most 5 minutes ahead, a fresh `jti`; `alg` EdDSA, ES384, RS384 or ES256),
/// `client_secret_basic` (HTTP Basic) or `client_secret_post` (`client_id` and
/// `client_secret` in the body). `scope` must be a subset of the client's allowed scopes
/// (default: all of them).
#[utoipa::path(post, path = "/oauth/token", tag = "oauth",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The access token (`Cache-Control: no-store`)", body = TokenResponse,
            headers(("Cache-Control" = String, description = "no-store"), ("Pragma" = String, description = "no-cache"))),
        (status = 400, description = "`invalid_request`, `unsupported_grant_type`, `invalid_scope`", body = OAuthErrorBody,
            example = json!({"error": "invalid_scope", "error_description": "a requested scope is not among the scopes this client is allowed", "code": "invalid_scope"})),
        (status = 401, description = "`invalid_client`: unknown or disabled client, wrong secret, bad, expired or replayed assertion \
            (`WWW-Authenticate: Basic` when Basic was used). Every failure that depends on the client's registration (unknown, \
            disabled, no such secret or key, a signature that does not verify) gets the same answer, byte for byte, \
            `client authentication failed`, so it never tells a registered client id from an unknown one", body = OAuthErrorBody,
            example = json!({"error": "invalid_client", "error_description": "client authentication failed", "code": "invalid_client"})),
        (status = 429, description = "Too many requests (`rate_limited`)", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ))]
pub(crate) async fn token(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: Result<web::Form<TokenForm>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let basic_used = authorization.as_deref().is_some_and(oauth::is_basic);
    let basic: Option<BasicCredentials> = match authorization.as_deref() {
        Some(h) if basic_used => match oauth::parse_basic(h) {
            Some(b) => Some(b),
            None => {
                return Ok(oauth_error(
                    OAuthError::new(OAuthErrorCode::InvalidClient, "malformed Basic credentials"),
                    true,
                ))
            }
        },
        _ => None,
    };
    let Ok(form) = form.map(web::Form::into_inner) else {
        return Ok(oauth_error(
            OAuthError::new(
                OAuthErrorCode::InvalidRequest,
                "the body must be application/x-www-form-urlencoded, each parameter at most once",
            ),
            basic_used,
        ));
    };
    let (store, keys) = (state.store.clone(), state.keys.clone());
    let now = state.clock.now();
    // The endpoint answers its refusals itself, so the outcome comes back whole.
    let result = blocking(move || {
        Ok::<_, ApiError>(oauth::issue_token(
            &store,
            &keys,
            &form,
            basic.as_ref(),
            now,
        ))
    })
    .await?;
    match result {
        Ok(t) => Ok(no_store(&mut HttpResponse::Ok()).json(t)),
        Err(Failure::Refused(e)) => {
            tracing::info!(
                error = e.code.as_str(),
                reason = e.description,
                "token request refused"
            );
            Ok(oauth_error(e, basic_used))
        }
        Err(Failure::Internal(e)) => Err(e.into()),
    }
}

/// The gateway's token-signing public key as a JWK Set (Ed25519, `EdDSA`).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "oauth",
    responses(
        (status = 200, description = "JWK Set", body = Object,
            example = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "d75a980182b10ab7", "alg": "EdDSA", "use": "sig"}]})),
        (status = 429, description = "Too many requests (`rate_limited`)", body = ErrorBody),
    ))]
pub(crate) async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .json(oauth::gateway_jwks(&state.keys))
}

/// SMART App Launch discovery: token endpoint, authentication methods and algorithms,
/// scopes. URLs are absolute from the configured issuer.
#[utoipa::path(get, path = "/.well-known/smart-configuration", tag = "oauth",
    responses(
        (status = 200, description = "SMART configuration", body = SmartConfiguration),
        (status = 429, description = "Too many requests (`rate_limited`)", body = ErrorBody),
    ))]
pub(crate) async fn smart_configuration(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(oauth::smart_configuration(state.keys.issuer()))
}

/// A client to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewClientBody {
    /// 1-64 characters of `A-Z a-z 0-9 . _ : -`.
    #[schema(example = "acme-phr", pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    pub client_id: String,
    #[schema(example = "ACME PHR", min_length = 1, max_length = 200)]
    pub name: String,
    /// SMART v2 `system/` scopes, optionally narrowed by LOINC code.
    #[schema(example = json!(["system/Observation.rs?code=http://loinc.org|55423-8"]), min_items = 1, max_items = 50)]
    pub scopes: Vec<String>,
    /// The client's public keys (JWK Set) for `private_key_jwt`.
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<serde_json::Value>,
    /// Generate a secret (shown once in the answer) for `client_secret_basic`/`_post`.
    #[serde(default)]
    pub secret: bool,
}

/// A registered client as operators see it: never its secret or the secret's hash.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ClientView {
    pub client_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// `private_key_jwt`, `client_secret_basic`, `client_secret_post`.
    pub token_endpoint_auth_methods: Vec<String>,
    /// The registered public keys (JWK Set).
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<serde_json::Value>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub disabled_at: Option<DateTime<Utc>>,
}

impl From<Client> for ClientView {
    fn from(c: Client) -> Self {
        Self {
            token_endpoint_auth_methods: c.auth_methods().into_iter().map(Into::into).collect(),
            client_id: c.client_id,
            name: c.name,
            scopes: c.allowed_scopes,
            jwks: c.jwks,
            created_at: c.created_at,
            disabled_at: c.disabled_at,
        }
    }
}

/// The answer to a registration.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedClient {
    pub client: ClientView,
    /// The generated secret when one was asked for. Shown this once: the gateway keeps only
    /// a salted hash.
    pub client_secret: Option<String>,
}

/// The registered clients.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ClientList {
    pub clients: Vec<ClientView>,
}

/// Registers an OAuth client (a PHR company). Operators only (`phr:admin`).
#[utoipa::path(post, path = "/api/v1/admin/clients", tag = "admin",
    request_body = NewClientBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Registered; `client_secret` is shown this once (`Cache-Control: no-store`)", body = CreatedClient),
        (status = 400, description = "`invalid_body`, `invalid_client_id`, `invalid_name`, `invalid_scope`, `invalid_jwks`, `invalid_credentials`", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "The token lacks `phr:admin`", body = ErrorBody),
        (status = 409, description = "A client with this `client_id` exists", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 429, description = "Too many requests (`rate_limited`)", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ))]
pub(crate) async fn create_client(
    Caller(principal): Caller,
    state: web::Data<AppState>,
    body: Result<web::Json<NewClientBody>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&principal)?;
    let b = body
        .map(web::Json::into_inner)
        .map_err(|e| ApiError::from_body_error(&e))?;
    let new = NewClient {
        client_id: b.client_id,
        name: b.name,
        allowed_scopes: b.scopes,
        jwks: b.jwks,
        secret: b.secret,
    };
    oauth::check_new_client(&new).map_err(|e| ApiError::bad_request(e.code, e.message))?;
    let store = state.store.clone();
    let (secret, client) = blocking(move || {
        let secret = store.add_client(&new)?;
        let client = store
            .client(&new.client_id)?
            .ok_or(crate::Error::Conflict("the client vanished"))?;
        Ok::<_, crate::Error>((secret, client))
    })
    .await?;
    tracing::info!(client_id = %client.client_id, by = %principal.subject, "client registered");
    Ok(no_store(&mut HttpResponse::Created()).json(CreatedClient {
        client: client.into(),
        client_secret: secret.map(|s| s.expose().to_owned()),
    }))
}

/// The registered OAuth clients, without secrets. Operators only (`phr:admin`).
#[utoipa::path(get, path = "/api/v1/admin/clients", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every registered client, by id", body = ClientList),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "The token lacks `phr:admin`", body = ErrorBody),
        (status = 429, description = "Too many requests (`rate_limited`)", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ))]
pub(crate) async fn list_clients(
    Caller(principal): Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&principal)?;
    let store = state.store.clone();
    let clients = blocking(move || store.list_clients()).await?;
    Ok(HttpResponse::Ok().json(ClientList {
        clients: clients.into_iter().map(Into::into).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::OpenApi;

    #[test]
    fn every_route_here_is_documented_with_its_errors() {
        let doc = serde_json::to_value(super::super::openapi::ApiDoc::openapi()).unwrap();
        for (path, method, statuses, secured) in [
            (
                TOKEN,
                "post",
                &["200", "400", "401", "429", "500"][..],
                false,
            ),
            (JWKS, "get", &["200", "429"][..], false),
            (SMART_CONFIGURATION, "get", &["200", "429"][..], false),
            (
                ADMIN_CLIENTS,
                "post",
                &["201", "400", "401", "403", "409", "429", "500"][..],
                true,
            ),
            (
                ADMIN_CLIENTS,
                "get",
                &["200", "401", "403", "429", "500"][..],
                true,
            ),
        ] {
            let op = &doc["paths"][path][method];
            assert!(op.is_object(), "{method} {path} is not documented");
            for s in statuses {
                assert!(op["responses"][s].is_object(), "{method} {path}: no {s}");
            }
            assert_eq!(
                op["security"][0]["bearer"].is_array(),
                secured,
                "{method} {path}"
            );
        }
        let form = &doc["paths"][TOKEN]["post"]["requestBody"]["content"];
        assert!(form["application/x-www-form-urlencoded"]["schema"].is_object());
        let schemas = &doc["components"]["schemas"];
        for s in [
            "OAuthErrorBody",
            "TokenResponse",
            "TokenForm",
            "SmartConfiguration",
            "ClientView",
        ] {
            assert!(schemas[s].is_object(), "schema {s}");
        }
    }
}
