//! The dashboards: server-rendered HTML (maud) with SVG charts (plotters), no JavaScript, no
//! external assets; every view of health data goes through the same data access layer as the
//! API (`phr_access`) and lands in the person's disclosure log. The gateway mounts them
//! ([`configure`]) with a [`DashboardState`] beside its own.
//!
//! This crate's folder also holds what is not Rust: `assets/` (the stylesheet, compiled in),
//! `index.html` (the gateway's `/dashboard` landing page) and `grafana/` (the operators'
//! Grafana dashboard of the gateway's metrics).
//!
//! # Layout
//! - [`session`]: one-time sign-in links exchanged for an HttpOnly, SameSite=Strict session
//!   cookie; CSRF tokens for forms; sign-out; the [`Viewer`] extractor.
//! - [`oidc`]: sign-in through an OpenID provider (code flow with PKCE), ending in the same
//!   kind of session.
//! - [`clinician`]: `/dashboard/clinician` (the panel of consenting patients) and
//!   `/dashboard/clinician/patients/{person_id}` (one patient, printable visit summary).
//! - [`owner`]: `/dashboard/me`: my charts, devices, consents (withdraw), disclosures,
//!   export and erasure.
//! - [`pairing`]: pairing a band (start, the bridge's code, confirm) and releasing one, from
//!   `/dashboard/me`.
//! - [`sources`]: "Which device counts" on `/dashboard/me`: per type the owner's devices in
//!   the order that decides whose data counts, and forms to change it.
//! - [`patient`]: one person's charts (steps, sleep stages, hypnogram, sleep timing, resting
//!   heart rate, weekly averages), shared by the clinician's patient page and the owner's
//!   `/dashboard/me/charts`.
//! - [`charts`]: SVG charts with a data table alternative each.
//! - [`view`]: the view model: one read of a person's aggregates and what the pages derive
//!   from it (rolling mean, nights, weeks, triage flags).
//!
//! Every page carries a strict Content-Security-Policy (`default-src 'none'`; styles and
//! images from this origin only; forms post to this origin only).

pub mod charts;
pub mod clinician;
pub mod oidc;
pub mod owner;
pub mod pairing;
pub mod patient;
pub mod session;
pub mod sources;
pub mod view;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use maud::{html, Markup, DOCTYPE};

use std::sync::Arc;

use phr_access::channel::Channels;
use phr_access::export::ExportSlots;
use phr_access::idp::Providers;
use phr_store::Backend;

// The layers below, under the names the pages use.
use phr_access::{self as access, auth, export, forwarded, idp, Error, Result};
use phr_store as store;

use crate::auth::Principal;

/// What the dashboards need from the running gateway (which builds it from the same parts as
/// its API's state).
#[derive(Clone)]
pub struct DashboardState {
    pub store: Arc<dyn Backend>,
    /// The identity providers offered for sign-in.
    pub idp: Arc<Providers>,
    /// Channels to enrolled bridges and the MQTT client: pairing requests are sealed and sent.
    pub channels: Arc<Channels>,
    pub mqtt: rumqttc::AsyncClient,
    pub topics: phr_schema::Topics,
    /// Exports running (the owner's downloads share the API's limits).
    pub exports: Arc<ExportSlots>,
    /// The gateway's public origin when the operator set one (`auth.issuer`); otherwise the
    /// request's.
    pub public_base: Option<String>,
    /// Where every decision about time reads it (the gateway's clock).
    pub clock: phr_store::SharedClock,
}

impl std::fmt::Debug for DashboardState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardState")
            .field("public_base", &self.public_base)
            .finish_non_exhaustive()
    }
}

pub const STYLE: &str = "/dashboard/assets/style.css";

/// The Content-Security-Policy of every dashboard page: nothing runs, nothing loads from
/// elsewhere, forms go nowhere else.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub use crate::store::sessions::Role;

/// A signed-in person, as handlers receive it (see [`session`] for how).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    pub subject: String,
    pub role: Role,
    /// The session's CSRF token; every state-changing form carries it.
    pub csrf: String,
}

impl From<crate::store::sessions::Session> for Viewer {
    fn from(s: crate::store::sessions::Session) -> Self {
        Self {
            subject: s.subject,
            role: s.role,
            csrf: s.csrf,
        }
    }
}

/// The scopes a session of `role` acts with (the same the API would need).
pub fn role_scopes(role: Role) -> &'static str {
    match role {
        Role::Clinician => "user/Observation.rs",
        Role::Owner => "patient/*.cruds",
    }
}

/// The principal the data access layer checks for `viewer`, with its role's scopes.
pub fn principal(viewer: &Viewer) -> Principal {
    Principal {
        subject: viewer.subject.clone(),
        scopes: role_scopes(viewer.role)
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(STYLE, web::get().to(style));
    session::configure(cfg);
    oidc::configure(cfg);
    clinician::configure(cfg);
    owner::configure(cfg);
    pairing::configure(cfg);
    sources::configure(cfg);
    patient::configure(cfg);
}

async fn style() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header(("Cache-Control", "max-age=3600"))
        .body(include_str!("../assets/style.css"))
}

/// A whole page: the layout around `body`, with the security headers.
pub fn page(title: &str, viewer: Option<&Viewer>, body: Markup) -> HttpResponse {
    respond(StatusCode::OK, title, viewer, body)
}

/// A page with another status (404, 403, 400 pages are HTML too).
pub fn respond(
    status: StatusCode,
    title: &str,
    viewer: Option<&Viewer>,
    body: Markup,
) -> HttpResponse {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · PHR" }
                link rel="stylesheet" href=(STYLE);
            }
            body {
                header class="top" {
                    span class="brand" { "PHR lifelog" }
                    @if let Some(v) = viewer {
                        nav {
                            @match v.role {
                                Role::Clinician => a href=(clinician::PANEL) { "Patients" },
                                Role::Owner => a href=(owner::HOME) { "My data" },
                            }
                            span class="who" { (v.subject) " (" (v.role.as_str()) ")" }
                            form method="post" action=(session::SIGN_OUT) class="inline" {
                                input type="hidden" name="csrf" value=(v.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    };
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", CSP))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("Cache-Control", "no-store"))
        .body(markup.into_string())
}

/// The HTML 404: unknown pages and patients without consent look the same.
pub fn not_found(viewer: Option<&Viewer>) -> HttpResponse {
    respond(
        StatusCode::NOT_FOUND,
        "Not found",
        viewer,
        html! { h1 { "Not found" } p { "There is nothing here for you." } },
    )
}
