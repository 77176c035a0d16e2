//! Signing in to the dashboards through an OpenID provider (`[[auth.providers]]` with a
//! `client_id`): the authorization code flow with PKCE (S256), `state` and `nonce`
//! (OpenID Connect Core §3.1, RFC 7636, RFC 9700).
//!
//! 1. `GET /dashboard/signin` (no code) lists the providers, each with "as owner" and "as
//!    clinician".
//! 2. `GET /dashboard/signin/oidc/{provider}?as=owner|clinician` starts: the store keeps a
//!    pending sign-in (random `state`, `nonce`, PKCE verifier; [`PENDING_TTL`]) under the hash
//!    of a random id that goes into the cookie `phr_oidc` (`HttpOnly; SameSite=Lax;
//!    Path=/dashboard/signin/oidc`; Lax, because the provider's redirect back is a cross-site
//!    navigation), then 303 to the provider's authorization endpoint (from its discovery
//!    document).
//! 3. `GET /dashboard/signin/oidc/callback?code=...&state=...[&iss=...]` finishes, once: the
//!    pending sign-in of this browser's cookie is taken (removed, whatever follows), the
//!    `state` must be its own, the RFC 9207 `iss` (required when the provider announces it)
//!    must be the provider's, the code is redeemed at the token endpoint with the verifier
//!    (the client authenticating with its secret when it has one), and the ID token is
//!    verified ([`crate::idp::Provider::verify_id_token`]: keys from the provider's JWKS,
//!    `iss`, `aud`, `azp`, `exp`, `iat`, `nonce`). Its claims must name a person (owner) or a
//!    practitioner (clinician) under the provider's claim mapping, with the role when roles are
//!    mapped. Then a dashboard session opens as for a one-time link ([`super::session`]).
//!
//! The session cookie is `SameSite=Strict`, which a browser does not send on a navigation that
//! came from another site: the callback therefore answers with a short page that moves on to
//! the dashboard by itself (`<meta http-equiv="refresh">`, a same-site navigation; no
//! JavaScript) and a link.
//!
//! Every refusal is an HTML page saying what went wrong in words a person can act on, and a
//! log line for the operator; nothing is signed in. A callback without this browser's cookie
//! (a link forged elsewhere, another browser), with another `state`, replayed, or carrying a
//! code the provider refuses or an ID token that does not verify changes nothing.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::TimeDelta;
use maud::html;
use serde::Deserialize;

use super::session::{self, home_of, internal_error, SESSION_TTL};
use super::{respond, Role};
use crate::idp::{IdpError, Kind, Provider, CALLBACK_PATH};
use crate::store::prelude::*;
use crate::DashboardState;

/// Where a sign-in through a provider starts (`{provider}` is its name).
pub const START: &str = "/dashboard/signin/oidc/{provider}";
pub const CALLBACK: &str = CALLBACK_PATH;
/// The pending sign-in cookie's name and path.
pub const COOKIE: &str = "phr_oidc";
const COOKIE_PATH: &str = "/dashboard/signin/oidc";
/// How long a sign-in at the provider may take.
pub const PENDING_TTL: TimeDelta = TimeDelta::minutes(10);

pub fn configure(cfg: &mut web::ServiceConfig) {
    // The callback first: `callback` is no provider name (the config refuses it).
    cfg.route(CALLBACK, web::get().to(callback))
        .route(START, web::get().to(start));
}

/// The sign-in choices of the configured providers (for `GET /dashboard/signin`), if any.
pub fn choices(state: &DashboardState) -> Option<maud::Markup> {
    let providers: Vec<_> = state.idp.iter().filter(|p| p.signs_in()).collect();
    if providers.is_empty() {
        return None;
    }
    Some(html! {
        h2 { "Sign in with your identity provider" }
        ul class="signin-providers" {
            @for p in &providers {
                @let path = START.replace("{provider}", p.name());
                li {
                    strong { (p.display_name()) } ": "
                    a href={ (path) "?as=owner" } { "as a person (my data)" }
                    " · "
                    a href={ (path) "?as=clinician" } { "as a clinician (patients)" }
                }
            }
        }
    })
}

fn cookie_header(id: &str, max_age: TimeDelta, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Lax; Path={COOKIE_PATH}; Max-Age={}{}",
        max_age.num_seconds().max(0),
        if secure { "; Secure" } else { "" }
    )
}

fn refused(status: StatusCode, title: &str, why: &str) -> HttpResponse {
    respond(
        status,
        title,
        None,
        html! {
            h1 { (title) }
            p { (why) }
            p { "Nobody was signed in. " a href=(session::SIGN_IN) { "Start again" } "." }
        },
    )
}

#[derive(Debug, Deserialize)]
struct StartQuery {
    #[serde(rename = "as")]
    role: Option<String>,
}

/// The redirect URI of `provider` for a request: configured, or the gateway's public origin
/// (`auth.issuer`, else the request's) + the callback path.
fn redirect_uri(req: &HttpRequest, state: &DashboardState, provider: &Provider) -> String {
    if let Some(uri) = &provider.config().redirect_uri {
        return uri.clone();
    }
    let base = state
        .public_base
        .clone()
        .unwrap_or_else(|| crate::forwarded::origin(req).base_url());
    format!("{}{CALLBACK}", base.trim_end_matches('/'))
}

/// `GET /dashboard/signin/oidc/{provider}?as=owner|clinician`.
async fn start(
    req: HttpRequest,
    state: web::Data<DashboardState>,
    name: web::Path<String>,
    query: Result<web::Query<StartQuery>, actix_web::Error>,
) -> HttpResponse {
    let Some(provider) = state.idp.by_name(&name).filter(|p| p.signs_in()).cloned() else {
        return refused(
            StatusCode::NOT_FOUND,
            "Unknown identity provider",
            "This gateway does not sign in through that identity provider.",
        );
    };
    let role = match query.ok().and_then(|q| q.into_inner().role).as_deref() {
        Some("owner") => Role::Owner,
        Some("clinician") => Role::Clinician,
        _ => {
            return refused(
                StatusCode::BAD_REQUEST,
                "Sign in as whom?",
                "Choose whether you sign in as a person (your own data) or as a clinician.",
            )
        }
    };
    let redirect = redirect_uri(&req, &state, &provider);
    let (store, now) = (state.store.clone(), state.clock.now());
    let begun = web::block(move || {
        let Some(pending) =
            store.begin_oidc_signin(provider.name(), role, &redirect, PENDING_TTL, now)?
        else {
            return Ok(Err(None));
        };
        Ok::<_, crate::Error>(
            provider
                .authorization_url(
                    &pending.redirect_uri,
                    &pending.state,
                    &pending.nonce,
                    &pending.verifier,
                )
                .map(|url| (pending, url))
                .map_err(Some),
        )
    })
    .await;
    let (pending, url) = match begun {
        Ok(Ok(Ok(started))) => started,
        Ok(Ok(Err(None))) => {
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many sign-ins under way",
                "Too many sign-ins are under way right now. Please try again in a few minutes.",
            )
        }
        Ok(Ok(Err(Some(e)))) => {
            tracing::warn!(provider = %name, error = %e, "cannot start a sign-in");
            return refused(
                StatusCode::BAD_GATEWAY,
                "Identity provider unavailable",
                "The identity provider cannot be reached right now. Please try again later.",
            );
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot start a sign-in");
            return internal_error(None);
        }
        Err(_) => return internal_error(None),
    };
    let secure = crate::forwarded::origin(&req).is_https();
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, url))
        .insert_header((
            header::SET_COOKIE,
            cookie_header(&pending.id, PENDING_TTL, secure),
        ))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .finish()
}

#[derive(Debug, Default, Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

/// Why a callback did not sign anyone in (logged; the page says it in plain words).
#[derive(Debug)]
enum Failure {
    NotStarted,
    Provider(String),
    State,
    Issuer,
    NoCode,
    Idp(IdpError),
    Store(crate::store::Error),
}

/// `GET /dashboard/signin/oidc/callback`.
async fn callback(
    req: HttpRequest,
    state: web::Data<DashboardState>,
    query: Result<web::Query<CallbackQuery>, actix_web::Error>,
) -> HttpResponse {
    let query = query.map(web::Query::into_inner).unwrap_or_default();
    let cookie_id = session::request_cookie(&req, COOKIE).unwrap_or_default();
    let previous = session::session_cookie(&req);
    let store = state.store.clone();
    let (idp, clock) = (state.idp.clone(), state.clock.clone());
    let finished = web::block(move || {
        let now = clock.now();
        let pending = match store.take_oidc_signin(&cookie_id, now) {
            Ok(Some(p)) => p,
            Ok(None) => return Err(Failure::NotStarted),
            Err(e) => return Err(Failure::Store(e)),
        };
        let provider = idp
            .by_name(&pending.provider)
            .ok_or_else(|| Failure::Provider(pending.provider.clone()))?;
        if let Some(error) = query.error {
            return Err(Failure::Idp(IdpError::Refused(error)));
        }
        let sent = query.state.unwrap_or_default();
        if !crate::auth::same_secret(&sent, &pending.state) {
            return Err(Failure::State);
        }
        match &query.iss {
            Some(iss) if iss != provider.issuer() => return Err(Failure::Issuer),
            None if provider.metadata().is_ok_and(|m| m.iss_parameter) => {
                return Err(Failure::Issuer)
            }
            _ => {}
        }
        let code = query
            .code
            .filter(|c| !c.is_empty())
            .ok_or(Failure::NoCode)?;
        let claims = provider
            .redeem_code(
                &code,
                &pending.verifier,
                &pending.redirect_uri,
                &pending.nonce,
            )
            .map_err(Failure::Idp)?;
        let kind = match pending.role {
            Role::Owner => Kind::Owner,
            Role::Clinician => Kind::Clinician,
        };
        let subject = provider.identity(&claims, kind).map_err(Failure::Idp)?;
        let session = store
            .open_session(&subject, pending.role, SESSION_TTL, now)
            .map_err(Failure::Store)?;
        if let Some(old) = previous {
            store.end_session(&old, now).map_err(Failure::Store)?;
        }
        tracing::info!(provider = %provider.name(), subject = %subject, role = pending.role.as_str(), "signed in through an identity provider");
        Ok(session)
    })
    .await;
    let secure = crate::forwarded::origin(&req).is_https();
    let failure = match finished {
        Ok(Ok(session)) => return signed_in(&session, secure),
        Ok(Err(f)) => f,
        Err(_) => return internal_error(None),
    };
    tracing::warn!(failure = ?failure, "an identity provider sign-in was refused");
    let mut page = match failure {
        Failure::NotStarted => refused(
            StatusCode::BAD_REQUEST,
            "Sign-in not started here",
            "This sign-in was not started in this browser, took longer than 10 minutes, or \
             has been completed already.",
        ),
        Failure::Provider(name) => {
            tracing::warn!(provider = %name, "a pending sign-in names a provider no longer configured");
            refused(
                StatusCode::BAD_REQUEST,
                "Sign-in answer not valid",
                "The identity provider of this sign-in is no longer configured here.",
            )
        }
        Failure::State | Failure::Issuer => refused(
            StatusCode::BAD_REQUEST,
            "Sign-in answer not valid",
            "The identity provider's answer does not belong to the sign-in this browser \
             started.",
        ),
        Failure::NoCode => refused(
            StatusCode::BAD_REQUEST,
            "Sign-in answer not valid",
            "The identity provider's answer has no authorization code.",
        ),
        Failure::Idp(IdpError::NotMapped(kind)) => refused(
            StatusCode::FORBIDDEN,
            "No account here",
            &format!(
                "The identity provider signed you in, but does not name you as a {kind} of \
                 this gateway. If you meant to sign in as someone else, sign out at the \
                 identity provider first (it remembers who signed in last in this browser); \
                 otherwise ask the operator of this gateway to check your account."
            ),
        ),
        Failure::Idp(IdpError::Unavailable(_)) => refused(
            StatusCode::BAD_GATEWAY,
            "Identity provider unavailable",
            "The identity provider cannot be reached right now. Please try again later.",
        ),
        Failure::Idp(IdpError::Refused(_) | IdpError::InvalidToken(_)) => refused(
            StatusCode::UNAUTHORIZED,
            "Sign-in refused",
            "The identity provider did not confirm this sign-in, or its answer could not be \
             verified.",
        ),
        Failure::Store(e) => {
            tracing::error!(error = %e, "an identity provider sign-in could not be stored");
            internal_error(None)
        }
    };
    if let Ok(v) = header::HeaderValue::from_str(&cookie_header("", TimeDelta::zero(), secure)) {
        page.headers_mut().insert(header::SET_COOKIE, v);
    }
    page
}

/// The session cookie, the pending cookie forgotten, and a page that moves on to the role's
/// home (a same-site navigation, so the `SameSite=Strict` session cookie goes with it).
fn signed_in(session: &crate::store::sessions::NewSession, secure: bool) -> HttpResponse {
    let home = home_of(session.role);
    let markup = html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content={ "0;url=" (home) };
                title { "Signed in · PHR" }
                link rel="stylesheet" href=(super::STYLE);
            }
            body {
                main {
                    h1 { "Signed in as " (session.subject) " (" (session.role.as_str()) ")" }
                    p { a href=(home) { "Continue to your dashboard" } }
                }
            }
        }
    };
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .append_header((
            header::SET_COOKIE,
            session::session_cookie_header(&session.id, SESSION_TTL, secure),
        ))
        .append_header((
            header::SET_COOKIE,
            cookie_header("", TimeDelta::zero(), secure),
        ))
        .insert_header(("Content-Security-Policy", super::CSP))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(markup.into_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pending_cookie_is_lax_and_scoped_to_the_flow() {
        assert_eq!(
            cookie_header("abc", PENDING_TTL, false),
            "phr_oidc=abc; HttpOnly; SameSite=Lax; Path=/dashboard/signin/oidc; Max-Age=600"
        );
        assert!(cookie_header("abc", PENDING_TTL, true).ends_with("; Secure"));
        assert!(CALLBACK.starts_with(COOKIE_PATH));
    }
}
