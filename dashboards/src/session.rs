//! Sign-in for the dashboards, with no token ever in a URL that stays anywhere, and no link
//! able to sign a browser in without its user knowingly agreeing:
//!
//! 1. An operator (`phr-gateway dashboard link`) or the demo issues a one-time sign-in code
//!    ([`crate::store::sessions`]) and hands over the link `{base}/dashboard/signin?code=...`.
//! 2. `GET /dashboard/signin?code=...` signs nobody in. It shows a confirmation page naming
//!    the account and role ("Sign in as ana (owner)?") and sets the pre-sign-in cookie
//!    `phr_signin` (`HttpOnly; SameSite=Strict; Path=/dashboard/signin`, at most
//!    [`PRE_SIGNIN_TTL`], `Secure` over https): a nonce bound to that code in the store. A
//!    later opening of the same link (in any browser) replaces it.
//! 3. `POST /dashboard/signin` from that page's form (the code and the form's token) with the
//!    matching `phr_signin` cookie redeems the code (once), sets the session cookie
//!    `phr_session` (`HttpOnly; SameSite=Strict; Path=/dashboard`, `Secure` over https),
//!    forgets `phr_signin` and answers 303 to the role's home. A form sent from another site
//!    carries no `phr_signin` (SameSite=Strict), a form sent from another browser carries
//!    another one or none: both are refused with a 403 page, and the code stays usable by
//!    the browser that opened the link. This closes login CSRF: a link an attacker made for
//!    *their* account, opened in a victim's browser, signs it in only if the victim reads
//!    the attacker's account name and clicks to agree. Pages carry `frame-ancestors 'none'`,
//!    so the button cannot be clicked through a frame.
//! 4. Handlers take a [`Viewer`]: the extractor looks the cookie's session up at every
//!    request (expired or ended sessions are refused with an HTML 401 page).
//! 5. Every state-changing form carries the session's CSRF token in `csrf`, checked with
//!    [`check_csrf`] (constant time; 403 page when wrong).
//! 6. `POST /dashboard/signout` ends the session and expires the cookie.
//!
//! Sessions last [`SESSION_TTL`]; sign-in codes [`SIGNIN_CODE_TTL`] unless the issuer says
//! otherwise. Every answer of the sign-in route carries `Referrer-Policy: no-referrer` and
//! `Cache-Control: no-store` (the code is in the address and in the form).

use std::future::Future;
use std::pin::Pin;

use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use chrono::TimeDelta;
use maud::html;
use serde::Deserialize;

use super::{clinician, owner, respond, Role, Viewer};
use crate::store::prelude::*;
use crate::store::sessions::SignInOutcome;
use crate::DashboardState;

pub const SIGN_IN: &str = "/dashboard/signin";
pub const SIGN_OUT: &str = "/dashboard/signout";
/// Where the dashboards start (the static landing page).
pub const START: &str = "/dashboard";

/// The session cookie's name and path.
pub const COOKIE: &str = "phr_session";
pub const COOKIE_PATH: &str = "/dashboard";

/// How long a session lasts after sign-in.
pub const SESSION_TTL: TimeDelta = TimeDelta::hours(8);
/// How long a sign-in link is usable, by default.
pub const SIGNIN_CODE_TTL: TimeDelta = TimeDelta::minutes(15);
/// The pre-sign-in cookie: set when a sign-in link is opened, needed to confirm it.
pub const SIGNIN_COOKIE: &str = "phr_signin";
/// How long the confirmation page may be left open (never past the code's expiry).
pub const PRE_SIGNIN_TTL: TimeDelta = TimeDelta::minutes(10);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(SIGN_IN, web::get().to(sign_in_page))
        .route(SIGN_IN, web::post().to(sign_in))
        .route(SIGN_OUT, web::post().to(sign_out));
}

/// The sign-in link for `code` on the gateway at `base` (e.g. `http://127.0.0.1:8080`).
pub fn signin_url(base: &str, code: &str) -> String {
    // Codes are base64url: nothing in them needs escaping in a query.
    format!("{}{SIGN_IN}?code={code}", base.trim_end_matches('/'))
}

/// Where a role lands after sign-in.
pub fn home_of(role: Role) -> &'static str {
    match role {
        Role::Clinician => clinician::PANEL,
        Role::Owner => owner::HOME,
    }
}

/// The value of the session cookie the request carries, if any.
pub fn session_cookie(req: &HttpRequest) -> Option<String> {
    request_cookie(req, COOKIE)
}

/// The value of cookie `wanted` in the request, if any (and not empty). Each cookie of each
/// `Cookie` header is parsed on its own (RFC 6265 §5.4), so a malformed one, say another
/// application's on the same host, hides nothing else; the first `wanted` counts.
pub(super) fn request_cookie(req: &HttpRequest, wanted: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == wanted)
        .map(|c| c.value_trimmed().to_owned())
        .filter(|v| !v.is_empty())
}

fn secure(req: &HttpRequest) -> bool {
    crate::forwarded::origin(req).is_https()
}

/// The `Set-Cookie` value that stores session `id` for `max_age`.
pub(super) fn session_cookie_header(id: &str, max_age: TimeDelta, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path={COOKIE_PATH}; Max-Age={}{}",
        max_age.num_seconds().max(0),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value of the pre-sign-in cookie holding `nonce` for `max_age`.
fn signin_cookie_header(nonce: &str, max_age: TimeDelta, secure: bool) -> String {
    format!(
        "{SIGNIN_COOKIE}={nonce}; HttpOnly; SameSite=Strict; Path={SIGN_IN}; Max-Age={}{}",
        max_age.num_seconds().max(0),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that makes the browser forget the session cookie.
pub fn expired_cookie(req: &HttpRequest) -> String {
    session_cookie_header("", TimeDelta::zero(), secure(req))
}

/// Why a page needing a session could not be shown.
#[derive(Debug)]
pub enum SessionError {
    /// No cookie, or its session is unknown, expired or ended. `retry` is the page asked for,
    /// when it can be asked for again with a plain link (a GET).
    NotSignedIn { retry: Option<String> },
    /// The session store could not be read.
    Unavailable,
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotSignedIn { .. } => f.write_str("not signed in"),
            Self::Unavailable => f.write_str("sessions are unavailable"),
        }
    }
}

impl ResponseError for SessionError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::NotSignedIn { .. } => StatusCode::UNAUTHORIZED,
            Self::Unavailable => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::NotSignedIn { retry } => respond(
                StatusCode::UNAUTHORIZED,
                "Sign-in needed",
                None,
                html! {
                    h1 { "Sign-in needed" }
                    p {
                        "You are not signed in, or your session has ended or expired "
                        "(sessions last " (SESSION_TTL.num_hours()) " hours)."
                    }
                    p {
                        "Sign-in links work once. Ask for a new one; the "
                        a href=(START) { "dashboard start page" }
                        " explains how."
                    }
                    @if let Some(path) = retry {
                        p class="muted" {
                            "If you have just opened a sign-in link, "
                            a href=(path) { "continue to the page you asked for" } "."
                        }
                    }
                },
            ),
            Self::Unavailable => internal_error(None),
        }
    }
}

/// The HTML 500 page.
pub fn internal_error(viewer: Option<&Viewer>) -> HttpResponse {
    respond(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        viewer,
        html! {
            h1 { "Something went wrong" }
            p { "The gateway could not answer this request. Please try again in a moment." }
        },
    )
}

/// A signed-in person, from the session cookie. Without a valid session: [`SessionError`],
/// an HTML 401 page.
impl FromRequest for Viewer {
    type Error = SessionError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let state = req.app_data::<web::Data<DashboardState>>().cloned();
        let id = session_cookie(req);
        let retry = (req.method() == actix_web::http::Method::GET)
            .then(|| req.uri().path_and_query().map(|p| p.as_str().to_owned()))
            .flatten()
            .filter(|p| p.starts_with(COOKIE_PATH));
        Box::pin(async move {
            let state = state.ok_or(SessionError::Unavailable)?;
            let not_signed_in = || SessionError::NotSignedIn {
                retry: retry.clone(),
            };
            let id = id.ok_or_else(not_signed_in)?;
            let (store, now) = (state.store.clone(), state.clock.now());
            web::block(move || store.session(&id, now))
                .await
                .map_err(|_| SessionError::Unavailable)?
                .map_err(|e| {
                    tracing::error!(error = %e, "session lookup failed");
                    SessionError::Unavailable
                })?
                .map(Viewer::from)
                .ok_or_else(not_signed_in)
        })
    }
}

/// Checks a form's CSRF token against the session's; a mismatch is the HTML 403 page.
// The refusal is a whole page; it is built only on the rare failure.
#[allow(clippy::result_large_err)]
pub fn check_csrf(viewer: &Viewer, form_csrf: &str) -> Result<(), HttpResponse> {
    if !viewer.csrf.is_empty() && crate::auth::same_secret(&viewer.csrf, form_csrf) {
        Ok(())
    } else {
        Err(respond(
            StatusCode::FORBIDDEN,
            "Form expired",
            Some(viewer),
            html! {
                h1 { "This form cannot be sent" }
                p {
                    "The form did not come from your current session (it may be from an "
                    "older page, or from another site). Nothing was changed."
                }
                p { a href=(home_of(viewer.role)) { "Back to your dashboard" } }
            },
        ))
    }
}

/// The body of a form that only carries the CSRF token (and whatever else, ignored).
#[derive(Debug, Default, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

#[derive(Debug, Deserialize)]
struct SignInQuery {
    code: Option<String>,
}

/// The confirmation form: the code and the form token of the pending sign-in.
#[derive(Debug, Default, Deserialize)]
struct SignInForm {
    #[serde(default)]
    code: String,
    #[serde(default)]
    csrf: String,
}

fn bad_link(status: StatusCode, why: &str) -> HttpResponse {
    respond(
        status,
        "Sign-in link not valid",
        None,
        html! {
            h1 { "This sign-in link is not valid" }
            p { (why) }
            p {
                "Sign-in links work once and only for a short while. Ask for a new one; the "
                a href=(START) { "dashboard start page" }
                " explains how."
            }
        },
    )
}

const NO_CODE: &str = "The link has no sign-in code in it; it may have been cut short when copied.";
const USED_OR_EXPIRED: &str = "The link is invalid, has been used already, or has expired.";

/// `GET /dashboard/signin?code=...`: signs nobody in. Shows whom the link signs in, as
/// what, and a button to agree; sets the pre-sign-in cookie that the agreeing form needs.
async fn sign_in_page(
    req: HttpRequest,
    state: web::Data<DashboardState>,
    query: Result<web::Query<SignInQuery>, actix_web::Error>,
) -> HttpResponse {
    let code = query.ok().and_then(|q| q.into_inner().code);
    let Some(code) = code.filter(|c| !c.is_empty()) else {
        // No link code: the identity providers to sign in with, if any are configured.
        return match super::oidc::choices(&state) {
            Some(choices) => respond(
                StatusCode::OK,
                "Sign in",
                None,
                html! {
                    h1 { "Sign in" }
                    (choices)
                    p class="muted" {
                        "Operators can also hand out one-time sign-in links; the "
                        a href=(START) { "dashboard start page" } " explains how."
                    }
                },
            ),
            None => bad_link(StatusCode::BAD_REQUEST, NO_CODE),
        };
    };
    let previous = session_cookie(&req);
    let (store, clock) = (state.store.clone(), state.clock.clone());
    let form_code = code.clone();
    let begun = web::block(move || {
        let now = clock.now();
        let pending = store.begin_signin(&code, PRE_SIGNIN_TTL, now)?;
        let current = match (&pending, previous) {
            (Some(_), Some(id)) => store.session(&id, now)?,
            _ => None,
        };
        Ok::<_, crate::Error>((pending, current, now))
    })
    .await;
    let (pending, current, now) = match begun {
        Ok(Ok((Some(p), current, now))) => (p, current, now),
        Ok(Ok((None, _, _))) => return bad_link(StatusCode::UNAUTHORIZED, USED_OR_EXPIRED),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "sign-in failed");
            return internal_error(None);
        }
        Err(_) => return internal_error(None),
    };
    let role = pending.role.as_str();
    let mut res = respond(
        StatusCode::OK,
        "Sign in?",
        None,
        html! {
            h1 { "Sign in as " (pending.subject) " (" (role) ")?" }
            p {
                "This link signs this browser in to the dashboard of "
                strong { (pending.subject) } ", as " (role) "."
            }
            @if let Some(v) = &current {
                p {
                    "This browser is signed in as " (v.subject) " (" (v.role.as_str()) ") now; "
                    "signing in ends that session."
                }
            }
            p {
                "Only go on if you asked for this link and " (pending.subject) " is you. "
                "A link someone else sent you signs you in to their account: what you then "
                "see and do would be theirs."
            }
            form method="post" action=(SIGN_IN) {
                input type="hidden" name="code" value=(form_code);
                input type="hidden" name="csrf" value=(pending.form_token);
                button type="submit" { "Sign in as " (pending.subject) }
            }
            p { a href=(START) { "Cancel" } }
        },
    );
    let cookie = signin_cookie_header(&pending.nonce, pending.expires_at - now, secure(&req));
    match header::HeaderValue::from_str(&cookie) {
        Ok(v) => {
            res.headers_mut().insert(header::SET_COOKIE, v);
            res
        }
        Err(_) => internal_error(None),
    }
}

/// `POST /dashboard/signin` (the confirmation form, with the pre-sign-in cookie): the code
/// for a session cookie, then off to the role's home. Without the cookie of the browser
/// that opened the link, or with another form token: a 403 page, and nothing changes.
async fn sign_in(
    req: HttpRequest,
    state: web::Data<DashboardState>,
    form: Result<web::Form<SignInForm>, actix_web::Error>,
) -> HttpResponse {
    let form = form.map(web::Form::into_inner).unwrap_or_default();
    if form.code.is_empty() {
        return bad_link(StatusCode::BAD_REQUEST, NO_CODE);
    }
    let nonce = request_cookie(&req, SIGNIN_COOKIE).unwrap_or_default();
    let previous = session_cookie(&req);
    let (store, clock) = (state.store.clone(), state.clock.clone());
    let completed = web::block(move || {
        let now = clock.now();
        let outcome = store.complete_signin(&form.code, &nonce, &form.csrf, SESSION_TTL, now)?;
        // A new sign-in replaces the session this browser had (a refused one leaves it be).
        if let (SignInOutcome::SignedIn(_), Some(old)) = (&outcome, previous) {
            store.end_session(&old, now)?;
        }
        Ok::<_, crate::Error>(outcome)
    })
    .await;
    let session = match completed {
        Ok(Ok(SignInOutcome::SignedIn(s))) => s,
        Ok(Ok(SignInOutcome::InvalidCode)) => {
            return bad_link(StatusCode::UNAUTHORIZED, USED_OR_EXPIRED)
        }
        Ok(Ok(SignInOutcome::NotThisBrowser)) => return not_this_browser(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "sign-in failed");
            return internal_error(None);
        }
        Err(_) => return internal_error(None),
    };
    let secure = secure(&req);
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, home_of(session.role)))
        .append_header((
            header::SET_COOKIE,
            session_cookie_header(&session.id, SESSION_TTL, secure),
        ))
        .append_header((
            header::SET_COOKIE,
            signin_cookie_header("", TimeDelta::zero(), secure),
        ))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("Content-Security-Policy", super::CSP))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .finish()
}

/// The 403 page of a confirmation that did not come from the page the link opened in this
/// browser (another site's form, another browser).
fn not_this_browser() -> HttpResponse {
    respond(
        StatusCode::FORBIDDEN,
        "Sign-in not confirmed",
        None,
        html! {
            h1 { "This sign-in cannot be confirmed here" }
            p {
                "Signing in needs the confirmation page that the sign-in link opens, in this "
                "browser, within " (PRE_SIGNIN_TTL.num_minutes()) " minutes. "
                "Nobody was signed in and nothing was changed."
            }
            p {
                "If you asked for a sign-in link, open it again in this browser. The "
                a href=(START) { "dashboard start page" }
                " explains how to get one."
            }
        },
    )
}

/// `POST /dashboard/signout` (form with `csrf`): ends the session, forgets the cookie, back to
/// the start page. Without a session there is nothing to end; the cookie is forgotten anyway.
async fn sign_out(
    req: HttpRequest,
    state: web::Data<DashboardState>,
    viewer: Option<Viewer>,
    form: Result<web::Form<CsrfForm>, actix_web::Error>,
) -> HttpResponse {
    if let Some(v) = &viewer {
        let form = form.map(web::Form::into_inner).unwrap_or_default();
        if let Err(refused) = check_csrf(v, &form.csrf) {
            return refused;
        }
        if let Some(id) = session_cookie(&req) {
            let (store, now) = (state.store.clone(), state.clock.now());
            match web::block(move || store.end_session(&id, now)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "sign-out failed");
                    return internal_error(Some(v));
                }
                Err(_) => return internal_error(Some(v)),
            }
        }
    }
    signed_out_redirect(&req)
}

/// 303 to the start page, with the cookie expired.
pub fn signed_out_redirect(req: &HttpRequest) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, START))
        .insert_header((header::SET_COOKIE, expired_cookie(req)))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn the_session_cookie_is_found_among_others_and_malformed_ones() {
        let with = |headers: &[&str]| {
            let mut req = TestRequest::default();
            for h in headers {
                req = req.append_header((header::COOKIE, *h));
            }
            session_cookie(&req.to_http_request())
        };
        assert_eq!(with(&[]), None);
        assert_eq!(with(&["phr_session=abc"]), Some("abc".into()));
        // Other cookies around it, spaces, a quoted value, a second header.
        assert_eq!(
            with(&["theme=dark;  phr_session=\"abc\" ; lang=ja"]),
            Some("abc".into())
        );
        assert_eq!(with(&["theme=dark", "phr_session=abc"]), Some("abc".into()));
        // Another application's malformed cookie hides nothing; the first one counts.
        assert_eq!(
            with(&["=nameless; junk; phr_session=abc; phr_session=xyz"]),
            Some("abc".into())
        );
        // A name is matched exactly; an empty value is no cookie.
        assert_eq!(with(&["xphr_session=abc; phr_sessionx=abc"]), None);
        assert_eq!(with(&["phr_session="]), None);
    }

    #[test]
    fn cookie_header_has_the_flags() {
        let c = session_cookie_header("abc", SESSION_TTL, false);
        assert_eq!(
            c,
            "phr_session=abc; HttpOnly; SameSite=Strict; Path=/dashboard; Max-Age=28800"
        );
        assert!(session_cookie_header("abc", SESSION_TTL, true).ends_with("; Secure"));
        let req = TestRequest::default().to_http_request();
        assert!(expired_cookie(&req).contains("Max-Age=0"));
        assert_eq!(
            signin_cookie_header("n", TimeDelta::minutes(10), false),
            "phr_signin=n; HttpOnly; SameSite=Strict; Path=/dashboard/signin; Max-Age=600"
        );
        assert!(signin_cookie_header("n", PRE_SIGNIN_TTL, true).ends_with("; Secure"));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let req = TestRequest::default()
            .insert_header((header::COOKIE, "a=1; phr_session=xyz; b=2"))
            .to_http_request();
        assert_eq!(session_cookie(&req).as_deref(), Some("xyz"));
        let req = TestRequest::default()
            .insert_header((header::COOKIE, "phr_sessionx=1; b=2"))
            .to_http_request();
        assert_eq!(session_cookie(&req), None);
        let req = TestRequest::default().to_http_request();
        assert_eq!(session_cookie(&req), None);
    }

    #[test]
    fn csrf_must_match_exactly() {
        let v = Viewer {
            subject: "ana".into(),
            role: Role::Owner,
            csrf: "token-123".into(),
        };
        assert!(check_csrf(&v, "token-123").is_ok());
        for wrong in ["", "token-12", "token-1234", "token-124"] {
            let r = check_csrf(&v, wrong).unwrap_err();
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
        }
        let empty = Viewer {
            csrf: String::new(),
            ..v
        };
        assert!(check_csrf(&empty, "").is_err(), "no token is never a match");
    }

    #[test]
    fn links_and_homes() {
        assert_eq!(
            signin_url("http://127.0.0.1:8080/", "abc"),
            "http://127.0.0.1:8080/dashboard/signin?code=abc"
        );
        assert_eq!(home_of(Role::Owner), "/dashboard/me");
        assert_eq!(home_of(Role::Clinician), clinician::PANEL);
    }
}
