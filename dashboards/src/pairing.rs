//! Pairing and releasing bands from the owner's dashboard: the JSON API's pairing flow
//! (the gateway's `/api/v1/me/devices` routes) as pages and forms, without JavaScript. The rules are the
//! store's ([`crate::store::pairing`]); these handlers only call them.
//!
//! - The home page's "Pair a band" section ([`section`]): a start form (the bridge from a
//!   list of enrolled bridges the owner has used, or typed; the device typed) with a second
//!   button that shows the bands near that bridge, and the owner's latest [`PAIRINGS_SHOWN`]
//!   pairings with their expiry, tries used and why one was refused.
//! - `POST /dashboard/me/pairings/nearby` (CSRF): the bands the chosen bridge last reported
//!   nearby ([`Store::nearby_for_owner`](crate::store::Store::nearby_for_owner): never a band someone else holds; the owner's own
//!   marked "already yours"), each with its name, id, signal and the report's age, as radio
//!   buttons of a start form for that bridge, which also takes a typed band id. A report
//!   older than ten minutes lists nothing and says so.
//! - `POST /dashboard/me/pairings` (CSRF): starts through [`phr_access::pairing::start`], as `POST
//!   /api/v1/me/devices/pairings` does, logs the start in the owner's disclosure log, and
//!   goes to the pairing's page; a refusal is a page saying why (and, for too many pairings,
//!   how long to wait).
//! - `GET /dashboard/me/pairings/{id}`: the pending pairing (device, bridge, expiry in the
//!   owner's zone, tries left) with the form for the code the bridge shows, or its outcome.
//! - `POST /dashboard/me/pairings/{id}/confirm` (CSRF): confirms through
//!   [`Store::confirm_pairing`](crate::store::Store::confirm_pairing); the outcome is a page (paired; wrong code with tries left;
//!   expired; refused with the reason).
//! - `GET /dashboard/me/devices/{device_id}/release`: the confirmation page; `POST` (CSRF)
//!   ends the owner's binding now through [`Store::release_binding`](crate::store::Store::release_binding), as `DELETE
//!   /api/v1/me/devices/{device_id}/binding` does, and goes back to `/dashboard/me`.
//!
//! A pairing, a device or a binding that is not the owner's is the 404 page, the same as
//! one that does not exist. Every start, refusal, confirmation and release is written to the
//! owner's disclosure log (the store writes all but a successful start, logged here).

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use maud::{html, Markup};
use serde::Deserialize;
use uuid::Uuid;

use phr_schema::envelope::is_valid_id;

use super::owner::{blocking, either, owner_only, time_zone, when, HOME};
use super::session::{check_csrf, internal_error, CsrfForm};
use super::{not_found, page, respond, Viewer};
use crate::store::nearby::NearbyView;
use crate::store::pairing::{BindingInterval, Refusal, StartRefusal, MAX_ATTEMPTS};
use crate::store::pairing_view::PairingSummary;
use crate::store::prelude::*;
use crate::DashboardState;

pub const PAIRINGS: &str = "/dashboard/me/pairings";
pub const NEARBY: &str = "/dashboard/me/pairings/nearby";
pub const PAIRING: &str = "/dashboard/me/pairings/{pairing_id}";
pub const CONFIRM: &str = "/dashboard/me/pairings/{pairing_id}/confirm";
pub const RELEASE: &str = "/dashboard/me/devices/{device_id}/release";

/// How many of the owner's pairings the home page lists.
pub const PAIRINGS_SHOWN: usize = 20;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(PAIRINGS, web::post().to(start))
        .route(NEARBY, web::post().to(nearby))
        .route(PAIRING, web::get().to(show))
        .route(CONFIRM, web::post().to(confirm))
        .route(RELEASE, web::get().to(confirm_release))
        .route(RELEASE, web::post().to(release));
}

pub fn pairing_path(id: Uuid) -> String {
    PAIRING.replace("{pairing_id}", &id.to_string())
}

fn confirm_path(id: Uuid) -> String {
    CONFIRM.replace("{pairing_id}", &id.to_string())
}

/// Device ids are URL-safe (`A-Z a-z 0-9 . _ : -`), so they go into the path as they are.
pub fn release_path(device_id: &str) -> String {
    RELEASE.replace("{device_id}", device_id)
}

// ----- pure rules of the forms -----

/// The bridge (or band) a form names: the typed one if any, else the one picked.
fn chosen<'a>(picked: &'a str, typed: &'a str) -> &'a str {
    match typed.trim() {
        "" => picked.trim(),
        t => t,
    }
}

/// The plain words for a refusal code the store wrote (a [`Refusal`] or [`StartRefusal`]):
/// their own messages, so the page and the API say the same.
fn reason(code: &str) -> String {
    let confirm = [
        Refusal::Unknown,
        Refusal::Expired,
        Refusal::Used,
        Refusal::WrongCode,
        Refusal::NotReported,
        Refusal::SerialMismatch,
        Refusal::DeviceBound,
    ];
    let start = [
        StartRefusal::BridgeNotEnrolled,
        StartRefusal::DeviceBound,
        StartRefusal::TooMany {
            retry_after_secs: 0,
        },
    ];
    if code == Refusal::WrongCode.code() {
        return "too many wrong codes".into();
    }
    confirm
        .iter()
        .find(|r| r.code() == code)
        .map(ToString::to_string)
        .or_else(|| {
            start
                .iter()
                .find(|r| r.code() == code)
                .map(|r| r.to_string())
        })
        .unwrap_or_else(|| code.to_owned())
}

/// Why `p` was refused: a start refused at once (it never had a code: it "expires" when it
/// started) is worded as a start refusal, since both kinds share some codes.
fn reason_of(p: &PairingSummary, code: &str) -> String {
    if p.expires_at == p.started_at && code == StartRefusal::DeviceBound.code() {
        StartRefusal::DeviceBound.to_string()
    } else {
        reason(code)
    }
}

/// How long ago, in words.
fn ago(secs: i64) -> String {
    match secs.max(0) {
        0..=59 => "less than a minute ago".into(),
        60..=119 => "1 minute ago".into(),
        s => format!("{} minutes ago", s / 60),
    }
}

/// A signal strength in words (BLE RSSI in dBm).
fn signal(rssi: Option<i16>) -> String {
    match rssi {
        None => "unknown".into(),
        Some(r) if r >= -60 => format!("strong ({r} dBm)"),
        Some(r) if r >= -80 => format!("fair ({r} dBm)"),
        Some(r) => format!("weak ({r} dBm)"),
    }
}

/// A wait in words, rounded up to whole minutes.
fn wait(secs: u64) -> String {
    match secs.div_ceil(60) {
        0 | 1 => "about a minute".into(),
        m => format!("{m} minutes"),
    }
}

fn tries_left(attempts: i64) -> i64 {
    (MAX_ATTEMPTS - attempts).max(0)
}

/// What a pairing is, in words, at `now`.
fn state_of(p: &PairingSummary, now: DateTime<Utc>) -> Markup {
    match (p.state.as_str(), p.refusal.as_deref()) {
        ("pending", _) if now >= p.expires_at => {
            html! { span class="status status-ended" { "expired" } }
        }
        ("pending", _) => html! { span class="status" { "waiting for the code" } },
        ("confirmed", _) => html! { span class="status status-granted" { "paired" } },
        (_, Some(why)) => html! { span class="flag" { "refused" } " " (reason_of(p, why)) },
        (other, None) => html! { (other) },
    }
}

// ----- the home page's section -----

/// The "Pair a band" section of `/dashboard/me`.
pub fn section(
    v: &Viewer,
    tz: Tz,
    bridges: &[String],
    pairings: &[PairingSummary],
    now: DateTime<Utc>,
) -> Markup {
    html! {
        section aria-labelledby="pair-h" {
            h2 id="pair-h" { "Pair a band" }
            p {
                "Stand at the bridge with the band nearby. Choose the bridge and see the bands "
                "it reports nearby, or type the band's id (printed on it, or shown by the "
                "bridge) and start; the bridge shows a code; type that code on the next page."
            }
            form method="post" action=(PAIRINGS) {
                input type="hidden" name="csrf" value=(v.csrf);
                @if !bridges.is_empty() {
                    p {
                        label for="pair-bridge-pick" { "Bridge" }
                        " "
                        select id="pair-bridge-pick" name="bridge_pick" {
                            @for b in bridges { option value=(b) { (b) } }
                        }
                    }
                }
                p {
                    label for="pair-bridge" {
                        @if bridges.is_empty() { "Bridge id" } @else { "or another bridge's id" }
                    }
                    " "
                    input type="text" id="pair-bridge" name="bridge" maxlength="64"
                        autocomplete="off" spellcheck="false" required[bridges.is_empty()];
                }
                p {
                    label for="pair-device" { "Band (device id)" }
                    " "
                    input type="text" id="pair-device" name="device" maxlength="64" required
                        autocomplete="off" spellcheck="false";
                }
                button type="submit" { "Start pairing" }
                " "
                button type="submit" id="pair-nearby" formaction=(NEARBY) formnovalidate {
                    "Show bands near this bridge"
                }
            }
            @if !pairings.is_empty() {
                table {
                    caption { "My latest pairings, newest first" }
                    thead { tr {
                        th scope="col" { "Band" }
                        th scope="col" { "Bridge" }
                        th scope="col" { "Started" }
                        th scope="col" { "Code valid until" }
                        th scope="col" { "State" }
                        th scope="col" class="num" { "Wrong codes" }
                    } }
                    tbody {
                        @for p in pairings {
                            tr {
                                td {
                                    @if p.state == "pending" && now < p.expires_at {
                                        a href=(pairing_path(p.pairing_id)) { code { (p.device_id) } }
                                    } @else {
                                        code { (p.device_id) }
                                    }
                                }
                                td { code { (p.bridge_id) } }
                                td { (when(p.started_at, tz)) }
                                td { (when(p.expires_at, tz)) }
                                td { (state_of(p, now)) }
                                td class="num" { (p.attempts) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The Release link of a binding row on the home page (open bindings only).
pub fn release_link(b: &BindingInterval) -> Markup {
    html! {
        @if b.valid_to.is_none() {
            a class="button" href=(release_path(&b.device_id))
                aria-label={ "Release band " (b.device_id) } { "Release" }
        }
    }
}

// ----- start -----

#[derive(Debug, Default, Deserialize)]
struct StartForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    bridge_pick: String,
    #[serde(default)]
    bridge: String,
    #[serde(default)]
    device_pick: String,
    #[serde(default)]
    device: String,
}

async fn start(
    state: web::Data<DashboardState>,
    viewer: Viewer,
    form: Result<web::Form<StartForm>, actix_web::Error>,
) -> HttpResponse {
    let form = form.map(web::Form::into_inner).unwrap_or_default();
    either(start_now(state, viewer, form).await)
}

fn back_home() -> Markup {
    html! { p { a href={ (HOME) "#pair-h" } { "Back to my data" } } }
}

async fn start_now(
    state: web::Data<DashboardState>,
    v: Viewer,
    form: StartForm,
) -> Result<HttpResponse, HttpResponse> {
    owner_only(&v)?;
    check_csrf(&v, &form.csrf)?;
    let bridge = chosen(&form.bridge_pick, &form.bridge).to_owned();
    let device = chosen(&form.device_pick, &form.device).to_owned();
    if !is_valid_id(&bridge) || !is_valid_id(&device) {
        return Err(respond(
            StatusCode::BAD_REQUEST,
            "Nothing started",
            Some(&v),
            html! {
                h1 { "No pairing was started" }
                p {
                    "A bridge id and a band id are each 1 to 64 letters, digits or "
                    code { ". _ : -" } "."
                }
                (back_home())
            },
        ));
    }
    let (st, person) = (state.clone(), v.subject.clone());
    let started = web::block(move || {
        let cx = phr_access::pairing::Context {
            store: &st.store,
            channels: &st.channels,
            mqtt: &st.mqtt,
            topics: &st.topics,
        };
        let now = st.clock.now();
        // The store logs the start, refusals and confirmations in the owner's log.
        let started = phr_access::pairing::start(cx, &person, &bridge, &device, now)?;
        Ok::<_, crate::Error>(started)
    })
    .await
    .map_err(|_| internal_error(Some(&v)))?;
    let started = match started {
        Ok(s) => s,
        Err(crate::Error::Broker(_)) => {
            return Err(respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "Bridge not reached",
                Some(&v),
                html! {
                    h1 { "The bridge could not be sent the pairing" }
                    p { "Nothing was paired. Try again in a moment." }
                    (back_home())
                },
            ))
        }
        Err(e) => {
            tracing::error!(error = %e, "owner dashboard: pairing start failed");
            return Err(internal_error(Some(&v)));
        }
    };
    match started {
        Ok(p) => Ok(HttpResponse::SeeOther()
            .insert_header((header::LOCATION, pairing_path(p.pairing_id)))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish()),
        Err(r) => {
            let status = match r {
                StartRefusal::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::CONFLICT,
            };
            let mut resp = respond(
                status,
                "Pairing refused",
                Some(&v),
                html! {
                    h1 { "The pairing was refused" }
                    p class="refusal" { (r.to_string()) "." }
                    @if let StartRefusal::TooMany { retry_after_secs } = r {
                        p { "You can start another pairing in " (wait(retry_after_secs)) "." }
                    }
                    @if r == StartRefusal::DeviceBound {
                        p { "Its owner was told that someone tried to pair it." }
                    }
                    p { "This refusal is in your disclosure log." }
                    (back_home())
                },
            );
            if let StartRefusal::TooMany { retry_after_secs } = r {
                if let Ok(h) = header::HeaderValue::from_str(&retry_after_secs.to_string()) {
                    resp.headers_mut().insert(header::RETRY_AFTER, h);
                }
            }
            Err(resp)
        }
    }
}

// ----- the bands near a bridge -----

async fn nearby(
    state: web::Data<DashboardState>,
    viewer: Viewer,
    form: Result<web::Form<StartForm>, actix_web::Error>,
) -> HttpResponse {
    let form = form.map(web::Form::into_inner).unwrap_or_default();
    either(nearby_page(state, viewer, form).await)
}

/// What `person` may see near `bridge`, and their zone.
fn nearby_of(
    store: &dyn Backend,
    person: &str,
    bridge: &str,
    now: DateTime<Utc>,
) -> crate::Result<(Option<NearbyView>, Tz)> {
    Ok((
        store.nearby_for_owner(person, bridge, now)?,
        time_zone(store, person)?,
    ))
}

async fn nearby_page(
    state: web::Data<DashboardState>,
    v: Viewer,
    form: StartForm,
) -> Result<HttpResponse, HttpResponse> {
    owner_only(&v)?;
    check_csrf(&v, &form.csrf)?;
    let bridge = chosen(&form.bridge_pick, &form.bridge).to_owned();
    if !is_valid_id(&bridge) {
        return Err(respond(
            StatusCode::BAD_REQUEST,
            "No bridge",
            Some(&v),
            html! {
                h1 { "Which bridge?" }
                p {
                    "Pick a bridge or type its id: 1 to 64 letters, digits or "
                    code { ". _ : -" } "."
                }
                (back_home())
            },
        ));
    }
    let (store, person, b) = (state.store.clone(), v.subject.clone(), bridge.clone());
    let now = state.clock.now();
    let (view, tz) = blocking(&v, move || nearby_of(&store, &person, &b, now)).await?;
    Ok(page(
        "Bands near a bridge",
        Some(&v),
        nearby_body(&v, &bridge, view.as_ref(), tz, now),
    ))
}

/// The bands `view` lists as choices of a start form for `bridge`, and a typed id.
fn nearby_body(
    v: &Viewer,
    bridge: &str,
    view: Option<&NearbyView>,
    tz: Tz,
    now: DateTime<Utc>,
) -> Markup {
    let devices = view.map(|n| n.devices.as_slice()).unwrap_or_default();
    html! {
        h1 { "Bands near bridge " code { (bridge) } }
        @match view {
            // Not enrolled or never reported: the same words, as starting a pairing there
            // would say whether it is enrolled.
            None => p id="nearby-none" {
                "This bridge has not reported any bands nearby. Check the bridge id, or type "
                "the band's id below."
            },
            Some(n) if n.stale => p id="nearby-stale" {
                "The bridge last reported " (ago((now - n.observed_at).num_seconds()))
                " (at " (when(n.observed_at, tz)) "): its list is out of date and not shown. "
                "Is the bridge running? You can type the band's id below."
            },
            Some(n) => p id="nearby-age" class="muted" {
                "Reported by the bridge " (ago((now - n.observed_at).num_seconds())) ". "
                "Only bands nobody else has paired are listed."
            },
        }
        form method="post" action=(PAIRINGS) {
            input type="hidden" name="csrf" value=(v.csrf);
            input type="hidden" name="bridge" value=(bridge);
            @if view.is_some_and(|n| !n.stale) {
                @if devices.is_empty() {
                    p id="nearby-empty" { "No band that you could pair is near this bridge now." }
                } @else {
                    fieldset id="nearby-list" {
                        legend { "Bands near the bridge, strongest signal first" }
                        @for (i, d) in devices.iter().enumerate() {
                            p class="nearby-band" {
                                input type="radio" name="device_pick" value=(d.device_id)
                                    id={ "nearby-" (i) } checked[i == 0];
                                " "
                                label for={ "nearby-" (i) } {
                                    @if let Some(name) = &d.name { strong { (name) } " " }
                                    code { (d.device_id) }
                                    " · signal " (signal(d.rssi))
                                    " · " span class="muted" { (d.decoder) }
                                    @if d.yours { " " span class="status status-granted" { "already yours" } }
                                }
                            }
                        }
                    }
                }
            }
            p {
                label for="pair-device" {
                    @if devices.is_empty() { "Band (device id)" } @else { "or type a band's id" }
                }
                " "
                input type="text" id="pair-device" name="device" maxlength="64"
                    autocomplete="off" spellcheck="false" required[devices.is_empty()];
            }
            button type="submit" { "Start pairing" }
            " "
            a href={ (HOME) "#pair-h" } { "Cancel" }
        }
    }
}

// ----- one pairing -----

/// The owner's pairing `id` and their zone; the 404 page for anyone else's.
async fn find_pairing(
    state: &web::Data<DashboardState>,
    v: &Viewer,
    id: &str,
) -> Result<(PairingSummary, Tz), HttpResponse> {
    let Ok(id) = Uuid::parse_str(id) else {
        return Err(not_found(Some(v)));
    };
    let (store, person) = (state.store.clone(), v.subject.clone());
    let (p, tz) = blocking(v, move || {
        Ok((
            store.pairing_summary(&person, id)?,
            time_zone(&store, &person)?,
        ))
    })
    .await?;
    p.map(|p| (p, tz)).ok_or_else(|| not_found(Some(v)))
}

/// The facts of a pairing and, while it can be confirmed, the code form.
fn pairing_body(v: &Viewer, p: &PairingSummary, tz: Tz, now: DateTime<Utc>) -> Markup {
    let open = p.state == "pending" && now < p.expires_at;
    html! {
        dl class="facts" {
            dt { "Band" } dd { code { (p.device_id) } }
            dt { "Bridge" } dd { code { (p.bridge_id) } }
            dt { "Started" } dd { (when(p.started_at, tz)) }
            dt { "Code valid until" } dd { (when(p.expires_at, tz)) }
            dt { "State" } dd { (state_of(p, now)) }
            @if p.state == "pending" {
                dt { "Tries left" } dd { (tries_left(p.attempts)) " of " (MAX_ATTEMPTS) }
            }
        }
        @if open {
            form method="post" action=(confirm_path(p.pairing_id)) {
                input type="hidden" name="csrf" value=(v.csrf);
                p {
                    label for="pair-code" { "Type the code the bridge shows" }
                    " "
                    input type="text" id="pair-code" name="code" required inputmode="numeric"
                        autocomplete="one-time-code" spellcheck="false" maxlength="16";
                }
                button type="submit" { "Confirm pairing" }
                " "
                a href=(HOME) { "Cancel" }
            }
        } @else if p.state == "pending" {
            p { "The code has expired. Start a new pairing." }
            (back_home())
        } @else {
            (back_home())
        }
    }
}

async fn show(
    state: web::Data<DashboardState>,
    viewer: Viewer,
    path: web::Path<String>,
) -> HttpResponse {
    either(show_page(state, viewer, path.into_inner()).await)
}

async fn show_page(
    state: web::Data<DashboardState>,
    v: Viewer,
    id: String,
) -> Result<HttpResponse, HttpResponse> {
    owner_only(&v)?;
    let (p, tz) = find_pairing(&state, &v, &id).await?;
    let body = html! {
        h1 { "Pairing band " code { (p.device_id) } }
        (pairing_body(&v, &p, tz, state.clock.now()))
    };
    Ok(page("Pairing", Some(&v), body))
}

#[derive(Debug, Default, Deserialize)]
struct ConfirmForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    code: String,
}

async fn confirm(
    state: web::Data<DashboardState>,
    viewer: Viewer,
    path: web::Path<String>,
    form: Result<web::Form<ConfirmForm>, actix_web::Error>,
) -> HttpResponse {
    let form = form.map(web::Form::into_inner).unwrap_or_default();
    either(confirm_now(state, viewer, path.into_inner(), form).await)
}

async fn confirm_now(
    state: web::Data<DashboardState>,
    v: Viewer,
    id: String,
    form: ConfirmForm,
) -> Result<HttpResponse, HttpResponse> {
    owner_only(&v)?;
    check_csrf(&v, &form.csrf)?;
    let Ok(id) = Uuid::parse_str(&id) else {
        return Err(not_found(Some(&v)));
    };
    let (store, person, clock) = (state.store.clone(), v.subject.clone(), state.clock.clone());
    let (result, after, tz) = blocking(&v, move || {
        let result = store.confirm_pairing(&person, id, &form.code, None, clock.now())?;
        Ok((
            result,
            store.pairing_summary(&person, id)?,
            time_zone(&store, &person)?,
        ))
    })
    .await?;
    // Someone else's pairing is refused as unknown (and logged in the caller's own log).
    let Some(p) = after else {
        return Err(not_found(Some(&v)));
    };
    let now = state.clock.now();
    match result {
        Ok(_) => Ok(page(
            "Paired",
            Some(&v),
            html! {
                h1 { "Paired" }
                p class="outcome" {
                    "Band " code { (p.device_id) } " is yours from now on, through bridge "
                    code { (p.bridge_id) } "."
                }
                p { "Its data is stored only as far as your consents allow." }
                (back_home())
            },
        )),
        Err(Refusal::Unknown) => Err(not_found(Some(&v))),
        Err(r) => {
            let headline = match r {
                Refusal::WrongCode if p.state == "pending" => html! {
                    "Wrong code. " (tries_left(p.attempts)) " tries left."
                },
                Refusal::WrongCode => html! {
                    "Wrong code, and no tries are left: this pairing is refused. "
                    "Each pairing that runs out of tries doubles the wait before the next one."
                },
                Refusal::Expired => html! { "The code has expired. Start a new pairing." },
                Refusal::NotReported => html! {
                    "The bridge has not reported the band yet. Wait a moment and type the code again."
                },
                r => html! { "Refused: " (r.to_string()) "." },
            };
            Err(respond(
                StatusCode::BAD_REQUEST,
                "Pairing not confirmed",
                Some(&v),
                html! {
                    h1 { "Not paired" }
                    p class="refusal" { (headline) }
                    (pairing_body(&v, &p, tz, now))
                },
            ))
        }
    }
}

// ----- release -----

/// The owner's open binding of `device`; the 404 page if they hold none.
async fn open_binding(
    state: &web::Data<DashboardState>,
    v: &Viewer,
    device: &str,
) -> Result<(BindingInterval, Tz), HttpResponse> {
    if !is_valid_id(device) {
        return Err(not_found(Some(v)));
    }
    let (store, person) = (state.store.clone(), v.subject.clone());
    let (bindings, tz) = blocking(v, move || {
        Ok((store.bindings_of(&person)?, time_zone(&store, &person)?))
    })
    .await?;
    bindings
        .into_iter()
        .find(|b| b.device_id == device && b.valid_to.is_none())
        .map(|b| (b, tz))
        .ok_or_else(|| not_found(Some(v)))
}

async fn confirm_release(
    state: web::Data<DashboardState>,
    viewer: Viewer,
    path: web::Path<String>,
) -> HttpResponse {
    either(confirm_release_page(state, viewer, path.into_inner()).await)
}

async fn confirm_release_page(
    state: web::Data<DashboardState>,
    v: Viewer,
    device: String,
) -> Result<HttpResponse, HttpResponse> {
    owner_only(&v)?;
    let (b, tz) = open_binding(&state, &v, &device).await?;
    let body = html! {
        h1 { "Release band " code { (b.device_id) } }
        dl class="facts" {
            dt { "Band" } dd { code { (b.device_id) } }
            dt { "Mine from" } dd { (when(b.valid_from, tz)) }
        }
        p {
            "From the moment you release it, the band is no longer yours: what it measures "
            "from then on belongs to nobody (it is held apart) until someone pairs it. What it "
            "measured before stays yours. Release a band you give away or no longer wear."
        }
        form method="post" action=(release_path(&b.device_id)) {
            input type="hidden" name="csrf" value=(v.csrf);
            button type="submit" class="danger" { "Release this band" }
            " "
            a href=(HOME) { "Cancel" }
        }
    };
    Ok(page("Release a band", Some(&v), body))
}

async fn release(
    state: web::Data<DashboardState>,
    viewer: Viewer,
    path: web::Path<String>,
    form: Result<web::Form<CsrfForm>, actix_web::Error>,
) -> HttpResponse {
    let form = form.map(web::Form::into_inner).unwrap_or_default();
    either(release_now(state, viewer, path.into_inner(), form).await)
}

async fn release_now(
    state: web::Data<DashboardState>,
    v: Viewer,
    device: String,
    form: CsrfForm,
) -> Result<HttpResponse, HttpResponse> {
    owner_only(&v)?;
    check_csrf(&v, &form.csrf)?;
    if !is_valid_id(&device) {
        return Err(not_found(Some(&v)));
    }
    let (store, person, now) = (state.store.clone(), v.subject.clone(), state.clock.now());
    let released = blocking(
        &v,
        move || Ok(store.release_binding(&person, &device, now)?),
    )
    .await?;
    if !released {
        return Err(not_found(Some(&v)));
    }
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, HOME))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typed_bridge_or_band_wins_over_the_picked_one() {
        assert_eq!(chosen("br-a", "  br-b "), "br-b");
        assert_eq!(chosen(" br-a ", "   "), "br-a");
        assert_eq!(chosen("", ""), "");
    }

    #[test]
    fn ages_and_signals_in_words() {
        assert_eq!(ago(-5), "less than a minute ago");
        assert_eq!(ago(59), "less than a minute ago");
        assert_eq!(ago(60), "1 minute ago");
        assert_eq!(ago(610), "10 minutes ago");
        assert_eq!(signal(None), "unknown");
        assert_eq!(signal(Some(-45)), "strong (-45 dBm)");
        assert_eq!(signal(Some(-75)), "fair (-75 dBm)");
        assert_eq!(signal(Some(-90)), "weak (-90 dBm)");
    }

    fn viewer() -> Viewer {
        Viewer {
            subject: "ana".into(),
            role: crate::Role::Owner,
            csrf: "tok".into(),
        }
    }

    /// Names and ids from a bridge are text, never markup.
    #[test]
    fn the_list_escapes_what_the_bridge_reported() {
        let now = Utc::now();
        let view = NearbyView {
            bridge_id: "br".into(),
            observed_at: now,
            stale: false,
            devices: vec![crate::store::nearby::NearbyEntry {
                device_id: "band-1".into(),
                name: Some("<img src=x onerror=alert(1)>".into()),
                rssi: Some(-50),
                decoder: "pams".into(),
                yours: true,
            }],
        };
        let html = nearby_body(&viewer(), "br", Some(&view), chrono_tz::UTC, now).into_string();
        assert!(!html.contains("<img"), "{html}");
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{html}"
        );
        assert!(html.contains("value=\"band-1\""), "{html}");
        assert!(html.contains("already yours"), "{html}");
        assert!(html.contains("name=\"csrf\" value=\"tok\""), "{html}");
    }

    #[test]
    fn refusals_read_as_the_api_words_them() {
        assert_eq!(
            reason("device_bound_to_another"),
            "the device was bound to someone else meanwhile"
        );
        assert_eq!(
            reason("bridge_not_enrolled"),
            "the bridge is not enrolled with this gateway"
        );
        assert_eq!(reason("wrong_code"), "too many wrong codes");
        assert_eq!(reason("something_new"), "something_new");
        assert_eq!(wait(1), "about a minute");
        assert_eq!(wait(61), "2 minutes");
    }
}
