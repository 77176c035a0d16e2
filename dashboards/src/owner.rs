//! The owner's dashboard, `/dashboard/me`: what the owner API offers, as pages and forms.
//!
//! - `GET /dashboard/me`: a link to my charts, my devices (bindings with their validity
//!   intervals, a Release link for each open one), "Which device counts" (see
//!   [`super::sources`]), "Pair a band" (see [`super::pairing`]), my consents (each in force with a Withdraw button), my disclosure log (the
//!   latest [`DISCLOSURES_SHOWN`] entries, newest first), export links, and the erasure form.
//! - `GET /dashboard/me/consents/{id}/withdraw`: the confirmation page;
//!   `POST` (CSRF) withdraws through [`Store::withdraw_consent`](crate::store::Store::withdraw_consent), as `DELETE
//!   /api/v1/me/consents/{id}` does, and goes back to `/dashboard/me`.
//! - `GET /dashboard/me/export?format=fhir|fhir-bundle|omh|csv`: the download of `GET
//!   /api/v1/me/export` ([`crate::export::download`]), attached.
//! - `POST /dashboard/me/erase` (CSRF, and `confirm` typed as `erase-all-my-data`): erases
//!   through [`Store::erase_person`](crate::store::Store::erase_person) as `DELETE /api/v1/me/data` does, then ends the owner's
//!   sessions and confirms.
//!
//! Only owner sessions see these pages; a clinician's session gets the 404 page.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use maud::{html, Markup};
use serde::Deserialize;
use uuid::Uuid;

use super::session::{self, check_csrf, internal_error, CsrfForm};
use super::{not_found, page, respond, Role, Viewer};
use super::{pairing, sources};
use crate::access::ERASE_CONFIRMATION;
use crate::export::{self, Format};
use crate::store::audit::{Action, Logged, Outcome};
use crate::store::pairing::BindingInterval;
use crate::store::pairing_view::PairingSummary;
use crate::store::prelude::*;
use crate::store::source_view::{SourcesView, TYPES};
use crate::store::subjects::Zone;
use crate::store::{Consent, ConsentStatus, GranteeKind};
use crate::DashboardState;

pub const HOME: &str = "/dashboard/me";
/// The owner's charts (built in [`super::charts`]'s pages); linked from home.
pub const CHARTS: &str = "/dashboard/me/charts";
pub const WITHDRAW: &str = "/dashboard/me/consents/{consent_id}/withdraw";
pub const EXPORT: &str = "/dashboard/me/export";
pub const ERASE: &str = "/dashboard/me/erase";

/// How many disclosure-log entries the home page shows.
pub const DISCLOSURES_SHOWN: usize = 200;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(HOME, web::get().to(home))
        .route(WITHDRAW, web::get().to(confirm_withdraw))
        .route(WITHDRAW, web::post().to(withdraw))
        .route(EXPORT, web::get().to(download))
        .route(ERASE, web::post().to(erase));
}

fn withdraw_path(id: Uuid) -> String {
    WITHDRAW.replace("{consent_id}", &id.to_string())
}

/// Only owners have a `/dashboard/me`; for anyone else it does not exist.
#[allow(clippy::result_large_err)] // as `check_csrf`: the refusal is a page
pub(super) fn owner_only(v: &Viewer) -> Result<(), HttpResponse> {
    if v.role == Role::Owner {
        Ok(())
    } else {
        Err(not_found(Some(v)))
    }
}

/// A store call off the async workers; failures are the HTML 500 page.
pub(super) async fn blocking<T: Send + 'static>(
    viewer: &Viewer,
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> Result<T, HttpResponse> {
    match web::block(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "owner dashboard: store call failed");
            Err(internal_error(Some(viewer)))
        }
        Err(_) => Err(internal_error(Some(viewer))),
    }
}

pub(super) fn either(r: Result<HttpResponse, HttpResponse>) -> HttpResponse {
    r.unwrap_or_else(|e| e)
}

// ----- formatting -----

pub(super) fn when(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string()
}

fn window(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>, tz: Tz) -> String {
    match (from, to) {
        (None, None) => "any time".into(),
        (Some(f), None) => format!("from {}", when(f, tz)),
        (None, Some(t)) => format!("before {}", when(t, tz)),
        (Some(f), Some(t)) => format!("{} to {}", when(f, tz), when(t, tz)),
    }
}

fn grantee_kind(k: GranteeKind) -> &'static str {
    match k {
        GranteeKind::Gateway => "this gateway (storage)",
        GranteeKind::Client => "PHR company",
        GranteeKind::Practitioner => "clinician",
    }
}

fn action(a: Action) -> &'static str {
    match a {
        Action::Read => "read",
        Action::Export => "export",
        Action::Erasure => "erasure",
        Action::Pairing => "pairing",
        Action::Correction => "correction",
        Action::RefusedBatch => "refused batch",
        Action::Import => "import",
        Action::SourcePriority => "device order",
    }
}

fn outcome(o: Outcome) -> Markup {
    match o {
        Outcome::Disclosed => html! { "disclosed" },
        Outcome::Denied => html! { span class="flag" { "denied" } },
        Outcome::Done => html! { "done" },
    }
}

fn status(c: &Consent, tz: Tz) -> Markup {
    match c.status {
        ConsentStatus::Granted => html! { span class="status status-granted" { "in force" } },
        ConsentStatus::Expired => html! { span class="status status-ended" { "expired" } },
        ConsentStatus::Withdrawn => html! {
            span class="status status-ended" { "withdrawn" }
            @if let Some(at) = c.withdrawn_at { " " (when(at, tz)) }
        },
    }
}

fn format_label(f: Format) -> &'static str {
    match f {
        Format::Fhir => "FHIR R4, one resource per line (NDJSON); another gateway imports this",
        Format::FhirBundle => "FHIR R4, one Bundle (JSON)",
        Format::Omh => "Open mHealth data points (JSON)",
        Format::Csv => "CSV, for spreadsheets",
    }
}

fn types(t: &[String]) -> String {
    if t.is_empty() {
        "—".into()
    } else {
        t.join(", ")
    }
}

// ----- home -----

/// What the home page shows.
struct Home {
    tz: Tz,
    bindings: Vec<BindingInterval>,
    consents: Vec<Consent>,
    /// Newest first.
    disclosures: Vec<Logged>,
    /// Enrolled bridges the owner has used, and their latest pairings (newest first).
    bridges: Vec<String>,
    pairings: Vec<PairingSummary>,
    /// Which device counts, per type.
    sources: SourcesView,
}

pub(super) fn time_zone(store: &dyn Backend, person: &str) -> crate::Result<Tz> {
    Ok(Zone::resolve(store.person_time_zone(person)?.as_deref()).tz)
}

/// The latest `n` disclosure-log entries of `person`, newest first.
fn latest_disclosures(store: &dyn Backend, person: &str, n: usize) -> crate::Result<Vec<Logged>> {
    const PAGE: usize = 5000;
    let mut kept: std::collections::VecDeque<Logged> = std::collections::VecDeque::new();
    let mut after = 0;
    loop {
        let rows = store.disclosures(person, after, PAGE)?;
        let full = rows.len() == PAGE;
        for row in rows {
            after = row.seq;
            if kept.len() == n {
                kept.pop_front();
            }
            kept.push_back(row);
        }
        if !full {
            break;
        }
    }
    Ok(kept.into_iter().rev().collect())
}

async fn home(state: web::Data<DashboardState>, viewer: Viewer) -> HttpResponse {
    either(home_page(state, viewer).await)
}

async fn home_page(
    state: web::Data<DashboardState>,
    v: Viewer,
) -> Result<HttpResponse, HttpResponse> {
    owner_only(&v)?;
    let (store, person, clock) = (state.store.clone(), v.subject.clone(), state.clock.clone());
    let data = blocking(&v, move || {
        let now = clock.now();
        Ok(Home {
            tz: time_zone(&store, &person)?,
            bindings: store.bindings_of(&person)?,
            consents: store.consents(&person, now)?,
            disclosures: latest_disclosures(&store, &person, DISCLOSURES_SHOWN)?,
            bridges: store.bridges_used_by(&person)?,
            pairings: store.recent_pairings(&person, pairing::PAIRINGS_SHOWN)?,
            sources: store.sources_view(&person, &TYPES, now)?,
        })
    })
    .await?;
    let tz = data.tz;
    let body = html! {
        h1 { "My data" }
        p class="muted" { "Times are shown in " (tz.name()) "." }

        section aria-labelledby="charts-h" {
            h2 id="charts-h" { "My charts" }
            p { a href=(CHARTS) { "My charts" } ": steps, sleep and heart rate over time." }
        }

        section aria-labelledby="devices-h" {
            h2 id="devices-h" { "My devices" }
            @if data.bindings.is_empty() {
                p { "No device is bound to you." }
            } @else {
                table {
                    caption { "Devices bound to me, and when each was mine" }
                    thead { tr {
                        th scope="col" { "Device" }
                        th scope="col" { "Mine from" }
                        th scope="col" { "Mine until" }
                        th scope="col" { "Action" }
                    } }
                    tbody {
                        @for b in &data.bindings {
                            tr {
                                td { code { (b.device_id) } }
                                td { (when(b.valid_from, tz)) }
                                td {
                                    @match b.valid_to {
                                        Some(t) => (when(t, tz)),
                                        None => "now (still bound)",
                                    }
                                }
                                td { (pairing::release_link(b)) }
                            }
                        }
                    }
                }
            }
        }

        (sources::section(&v, &data.sources))

        (pairing::section(&v, tz, &data.bridges, &data.pairings, state.clock.now()))

        section aria-labelledby="consents-h" {
            h2 id="consents-h" { "My consents" }
            @if data.consents.is_empty() {
                p { "You have given no consents." }
            } @else {
                table {
                    caption { "Who may use which of my data, and why" }
                    thead { tr {
                        th scope="col" { "Grantee" }
                        th scope="col" { "Kind" }
                        th scope="col" { "Purpose" }
                        th scope="col" { "Data types" }
                        th scope="col" { "Measured window" }
                        th scope="col" { "Valid until" }
                        th scope="col" { "Status" }
                        th scope="col" { "Action" }
                    } }
                    tbody {
                        @for c in &data.consents {
                            @let t = &c.terms;
                            tr {
                                td { (t.grantee) }
                                td { (grantee_kind(t.grantee_kind)) }
                                td { (t.purpose) }
                                td { (t.data_types.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", ")) }
                                td { (window(t.window_from, t.window_to, tz)) }
                                td {
                                    @match t.valid_until {
                                        Some(u) => (when(u, tz)),
                                        None => "until withdrawn",
                                    }
                                }
                                td { (status(c, tz)) }
                                td {
                                    @if c.status == ConsentStatus::Granted {
                                        a class="button" href=(withdraw_path(c.consent_id))
                                            aria-label={ "Withdraw consent to " (t.grantee) " for " (t.purpose) } {
                                            "Withdraw"
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }

        section aria-labelledby="disclosures-h" {
            h2 id="disclosures-h" { "Who saw my data" }
            @if data.disclosures.is_empty() {
                p { "Nobody has read your data, and nothing has been done with it." }
            } @else {
                table class="log" {
                    caption {
                        "My disclosure log: who read, or tried to read, my data, when and why; "
                        "the latest " (data.disclosures.len()) " entries, newest first"
                    }
                    thead { tr {
                        th scope="col" { "When" }
                        th scope="col" { "Who" }
                        th scope="col" { "As" }
                        th scope="col" { "What" }
                        th scope="col" { "Outcome" }
                        th scope="col" { "Data types" }
                        th scope="col" { "Measured window" }
                        th scope="col" { "Purpose" }
                        th scope="col" class="num" { "Records" }
                    } }
                    tbody {
                        @for d in &data.disclosures {
                            @let e = &d.entry;
                            tr {
                                td class="when" { (when(e.at, tz)) }
                                td { (e.actor) }
                                td { (e.actor_kind) }
                                td { (action(e.action)) }
                                td { (outcome(e.outcome)) }
                                td { (types(&e.data_types)) }
                                td {
                                    @if e.window_from.is_none() && e.window_to.is_none() {
                                        "—"
                                    } @else {
                                        (window(e.window_from, e.window_to, tz))
                                    }
                                }
                                td { (e.purpose) }
                                td class="num" { (e.records) }
                            }
                        }
                    }
                }
            }
        }

        section aria-labelledby="export-h" {
            h2 id="export-h" { "Download my data" }
            p { "Everything stored about you, as one file. Each download is noted in your log." }
            ul {
                @for f in Format::ALL {
                    li { a href={ (EXPORT) "?format=" (f.as_str()) } download { (format_label(f)) } }
                }
            }
        }

        section aria-labelledby="erase-h" class="danger-zone" {
            h2 id="erase-h" { "Erase all my data" }
            p {
                "This deletes every record stored about you, closes your device bindings and "
                "withdraws every consent. It cannot be undone. Your log keeps that an erasure "
                "happened, not your data. You will be signed out."
            }
            form method="post" action=(ERASE) {
                input type="hidden" name="csrf" value=(v.csrf);
                p {
                    label for="erase-confirm" {
                        "To confirm, type " code { (ERASE_CONFIRMATION) }
                    }
                    " "
                    input type="text" id="erase-confirm" name="confirm" required
                        autocomplete="off" spellcheck="false";
                }
                button type="submit" class="danger" { "Erase all my data" }
            }
        }
    };
    Ok(page("My data", Some(&v), body))
}

// ----- consents -----

async fn find_consent(
    state: &web::Data<DashboardState>,
    v: &Viewer,
    id: &str,
) -> Result<(Consent, Tz), HttpResponse> {
    let Ok(id) = Uuid::parse_str(id) else {
        return Err(not_found(Some(v)));
    };
    let (store, person, now) = (state.store.clone(), v.subject.clone(), state.clock.now());
    let (consents, tz) = blocking(v, move || {
        Ok((store.consents(&person, now)?, time_zone(&store, &person)?))
    })
    .await?;
    consents
        .into_iter()
        .find(|c| c.consent_id == id)
        .map(|c| (c, tz))
        .ok_or_else(|| not_found(Some(v)))
}

async fn confirm_withdraw(
    state: web::Data<DashboardState>,
    viewer: Viewer,
    path: web::Path<String>,
) -> HttpResponse {
    either(confirm_withdraw_page(state, viewer, path.into_inner()).await)
}

async fn confirm_withdraw_page(
    state: web::Data<DashboardState>,
    v: Viewer,
    id: String,
) -> Result<HttpResponse, HttpResponse> {
    owner_only(&v)?;
    let (c, tz) = find_consent(&state, &v, &id).await?;
    let t = &c.terms;
    let body = html! {
        h1 { "Withdraw a consent" }
        dl class="facts" {
            dt { "Grantee" } dd { (t.grantee) " (" (grantee_kind(t.grantee_kind)) ")" }
            dt { "Purpose" } dd { (t.purpose) }
            dt { "Data types" } dd { (t.data_types.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", ")) }
            dt { "Measured window" } dd { (window(t.window_from, t.window_to, tz)) }
            dt { "Granted" } dd { (when(c.granted_at, tz)) }
            dt { "Status" } dd { (status(&c, tz)) }
        }
        @if c.status == ConsentStatus::Granted {
            p {
                "From the moment you withdraw, " (t.grantee) " can read nothing more under this "
                "consent. What it has already read is not taken back."
                @if t.grantee_kind == GranteeKind::Gateway {
                    " This is your consent to store: new data from your devices will no longer "
                    "be stored (nothing stored so far is erased)."
                }
            }
            form method="post" action=(withdraw_path(c.consent_id)) {
                input type="hidden" name="csrf" value=(v.csrf);
                button type="submit" class="danger" { "Withdraw this consent" }
                " "
                a href=(HOME) { "Cancel" }
            }
        } @else {
            p { "This consent is no longer in force; there is nothing to withdraw." }
            p { a href=(HOME) { "Back to my data" } }
        }
    };
    Ok(page("Withdraw a consent", Some(&v), body))
}

async fn withdraw(
    state: web::Data<DashboardState>,
    viewer: Viewer,
    path: web::Path<String>,
    form: Result<web::Form<CsrfForm>, actix_web::Error>,
) -> HttpResponse {
    let form = form.map(web::Form::into_inner).unwrap_or_default();
    either(withdraw_now(state, viewer, path.into_inner(), form).await)
}

async fn withdraw_now(
    state: web::Data<DashboardState>,
    v: Viewer,
    id: String,
    form: CsrfForm,
) -> Result<HttpResponse, HttpResponse> {
    owner_only(&v)?;
    check_csrf(&v, &form.csrf)?;
    let Ok(id) = Uuid::parse_str(&id) else {
        return Err(not_found(Some(&v)));
    };
    let (store, person, now) = (state.store.clone(), v.subject.clone(), state.clock.now());
    let withdrawn = blocking(&v, move || {
        Ok(store.withdraw_consent(&person, id, &person, now)?)
    })
    .await?;
    if withdrawn.is_none() {
        return Err(not_found(Some(&v)));
    }
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, HOME))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}

// ----- export -----

#[derive(Debug, Deserialize)]
struct ExportQuery {
    format: Option<String>,
}

async fn download(
    state: web::Data<DashboardState>,
    viewer: Viewer,
    query: Result<web::Query<ExportQuery>, actix_web::Error>,
) -> HttpResponse {
    either(download_now(state, viewer, query).await)
}

async fn download_now(
    state: web::Data<DashboardState>,
    v: Viewer,
    query: Result<web::Query<ExportQuery>, actix_web::Error>,
) -> Result<HttpResponse, HttpResponse> {
    owner_only(&v)?;
    let name = query.ok().and_then(|q| q.into_inner().format);
    let Ok(format) = name.as_deref().unwrap_or("fhir").parse::<Format>() else {
        return Err(respond(
            StatusCode::BAD_REQUEST,
            "Unknown format",
            Some(&v),
            html! {
                h1 { "Unknown format" }
                p { "Downloads come as fhir, fhir-bundle, omh or csv." }
                p { a href=(HOME) { "Back to my data" } }
            },
        ));
    };
    let mut resp = export::download(
        state.store.clone(),
        &state.exports,
        v.subject.clone(),
        format,
        state.clock.now(),
    )
    .await
    .map_err(|e| match e {
        export::ExportError::Busy { retry_after_secs } => {
            let mut page = respond(
                StatusCode::TOO_MANY_REQUESTS,
                "Downloads running",
                Some(&v),
                html! {
                    h1 { "Your other downloads are still running" }
                    p { "Wait for one to finish, then try again." }
                    p { a href=(HOME) { "Back to my data" } }
                },
            );
            if let Ok(v) = header::HeaderValue::from_str(&retry_after_secs.to_string()) {
                page.headers_mut().insert(header::RETRY_AFTER, v);
            }
            page
        }
        e => {
            tracing::error!(error = %e, "owner dashboard: export failed");
            internal_error(Some(&v))
        }
    })?;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(super::CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    Ok(resp)
}

// ----- erasure -----

#[derive(Debug, Default, Deserialize)]
struct EraseForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
}

async fn erase(
    req: HttpRequest,
    state: web::Data<DashboardState>,
    viewer: Viewer,
    form: Result<web::Form<EraseForm>, actix_web::Error>,
) -> HttpResponse {
    let form = form.map(web::Form::into_inner).unwrap_or_default();
    either(erase_now(req, state, viewer, form).await)
}

async fn erase_now(
    req: HttpRequest,
    state: web::Data<DashboardState>,
    v: Viewer,
    form: EraseForm,
) -> Result<HttpResponse, HttpResponse> {
    owner_only(&v)?;
    check_csrf(&v, &form.csrf)?;
    if form.confirm.trim() != ERASE_CONFIRMATION {
        return Err(respond(
            StatusCode::BAD_REQUEST,
            "Nothing erased",
            Some(&v),
            html! {
                h1 { "Nothing was erased" }
                p {
                    "Erasure cannot be undone, so it needs the words "
                    code { (ERASE_CONFIRMATION) } " typed exactly."
                }
                p { a href={ (HOME) "#erase-h" } { "Back to my data" } }
            },
        ));
    }
    let (store, person, clock) = (state.store.clone(), v.subject.clone(), state.clock.clone());
    let erased = blocking(&v, move || {
        let now = clock.now();
        let erased = store.erase_person(&person, &person, now)?;
        // Every session of the person ends with their data, this one included.
        store.end_sessions_of(&person, now)?;
        Ok(erased)
    })
    .await?;
    let mut resp = respond(
        StatusCode::OK,
        "Data erased",
        None,
        html! {
            h1 { "Your data has been erased" }
            table {
                caption { "What was erased or closed" }
                tbody {
                    tr { th scope="row" { "Records" } td class="num" { (erased.records) } }
                    tr { th scope="row" { "Quarantined records of your devices" } td class="num" { (erased.quarantined) } }
                    tr { th scope="row" { "Device bindings closed" } td class="num" { (erased.bindings_closed) } }
                    tr { th scope="row" { "Consents withdrawn" } td class="num" { (erased.consents_withdrawn) } }
                }
            }
            p { "You have been signed out. " a href=(session::START) { "Dashboard start page" } }
        },
    );
    if let Ok(cookie) = header::HeaderValue::from_str(&session::expired_cookie(&req)) {
        resp.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(resp)
}
