//! The clinician's dashboard.
//!
//! - `GET /dashboard/clinician?sort=flags|name|last_sync`: the panel, one row per person
//!   with a consent to this clinician in force now (grantee kind practitioner, grantee = the
//!   session's subject), and only them: last sync, days with data in the last 14, a sparkline
//!   of the last 7 complete days' steps, mean sleep over the last 7 nights, and the triage
//!   flags ([`crate::view::Flags`]). `flags` (the default) puts the most flagged
//!   first; `name` sorts by name; `last_sync` puts the longest silent first.
//! - `GET /dashboard/clinician/patients/{person_id}?days=30|90&night=YYYY-MM-DD&print=1`: one
//!   patient's charts ([`super::patient`]); without a consent in force, the same 404 page as
//!   an unknown address.
//!
//! Each row of the panel is one [`crate::access::read_patient_view`], so each is checked against the
//! consent as it stands now and writes one disclosure-log entry the person sees. Other roles
//! get the 404 page.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, NaiveDate, Utc};
use maud::{html, Markup, PreEscaped};
use serde::Deserialize;

use super::charts::{self, thousands};
use super::patient::{self, flag_items, hours_minutes, path_segment, RawParams};
use super::session::internal_error;
use super::{not_found, page, respond, Role, Viewer};
use crate::access::{AccessError, ViewQuery};
use crate::auth::Principal;
use crate::store::prelude::*;
use crate::store::GranteeKind;
use crate::view::{Flags, PatientView, COVERAGE_DAYS, RECENT_DAYS, SLEEP_NIGHTS};
use crate::DashboardState;

pub const PANEL: &str = "/dashboard/clinician";
pub const PATIENT: &str = "/dashboard/clinician/patients/{person_id}";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(PANEL, web::get().to(panel))
        .route(PATIENT, web::get().to(patient_page));
}

/// The page of `person_id`.
pub fn patient_path(person_id: &str) -> String {
    PATIENT.replace("{person_id}", &path_segment(person_id))
}

/// The panel's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// Most flags first, then by name.
    #[default]
    Flags,
    /// By name, then person id.
    Name,
    /// The longest silent (oldest last sync, never first), then by name.
    LastSync,
}

impl Sort {
    pub const ALL: [Sort; 3] = [Sort::Flags, Sort::Name, Sort::LastSync];

    pub fn parse(v: Option<&str>) -> Option<Self> {
        match v {
            None | Some("") | Some("flags") => Some(Self::Flags),
            Some("name") => Some(Self::Name),
            Some("last_sync") => Some(Self::LastSync),
            Some(_) => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flags => "flags",
            Self::Name => "name",
            Self::LastSync => "last_sync",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Flags => "flags",
            Self::Name => "name",
            Self::LastSync => "last sync",
        }
    }
}

/// One person on the panel.
#[derive(Debug, Clone)]
pub struct PanelRow {
    pub person_id: String,
    pub display_name: String,
    /// `None` when the consent's window covers none of the days the panel reads.
    pub view: Option<PatientView>,
    pub flags: Option<Flags>,
}

impl PanelRow {
    fn flag_count(&self) -> usize {
        self.flags.map_or(0, |f| f.count())
    }

    fn last_sync(&self) -> Option<DateTime<Utc>> {
        self.view.as_ref().and_then(|v| v.last_sync)
    }
}

/// The panel of `principal` (a clinician) at `now`: one read per consenting person.
pub fn panel_rows(
    store: &dyn Backend,
    principal: &Principal,
    now: DateTime<Utc>,
) -> Result<Vec<PanelRow>, AccessError> {
    let mut rows = Vec::new();
    for s in store.subjects(&principal.subject, GranteeKind::Practitioner, now)? {
        let q = ViewQuery {
            person_id: s.person_id.clone(),
            days: COVERAGE_DAYS as u32,
            to: None,
            night: None,
        };
        match PatientView::read(store, principal, &q, now) {
            Ok(view) => rows.push(PanelRow {
                person_id: s.person_id,
                display_name: view.display_name.clone(),
                flags: Some(view.flags()),
                view: Some(view),
            }),
            // The consent ended between the two reads, or covers none of the types.
            Err(AccessError::NotFound | AccessError::Forbidden) => {}
            Err(AccessError::OutsideWindow) => rows.push(PanelRow {
                display_name: store
                    .display_name(&s.person_id)?
                    .unwrap_or_else(|| s.person_id.clone()),
                person_id: s.person_id,
                view: None,
                flags: None,
            }),
            Err(e) => return Err(e),
        }
    }
    Ok(rows)
}

/// Orders `rows` by `sort`.
pub fn sort_rows(rows: &mut [PanelRow], sort: Sort) {
    let by_name = |a: &PanelRow, b: &PanelRow| {
        a.display_name
            .to_lowercase()
            .cmp(&b.display_name.to_lowercase())
            .then_with(|| a.person_id.cmp(&b.person_id))
    };
    match sort {
        Sort::Flags => rows.sort_by(|a, b| {
            b.flag_count()
                .cmp(&a.flag_count())
                .then_with(|| by_name(a, b))
        }),
        Sort::Name => rows.sort_by(by_name),
        Sort::LastSync => rows.sort_by(|a, b| {
            a.last_sync()
                .cmp(&b.last_sync())
                .then_with(|| by_name(a, b))
        }),
    }
}

#[derive(Debug, Deserialize)]
struct PanelParams {
    sort: Option<String>,
}

async fn panel(
    state: web::Data<DashboardState>,
    viewer: Viewer,
    query: Result<web::Query<PanelParams>, actix_web::Error>,
) -> HttpResponse {
    if viewer.role != Role::Clinician {
        return not_found(Some(&viewer));
    }
    let sort = match query {
        Ok(q) => Sort::parse(q.sort.as_deref()),
        Err(_) => None,
    };
    let Some(sort) = sort else {
        return respond(
            StatusCode::BAD_REQUEST,
            "Bad request",
            Some(&viewer),
            html! { h1 { "Bad request" } p { "sort must be flags, name or last_sync" } },
        );
    };
    let principal = super::principal(&viewer);
    let (store, now) = (state.store.clone(), state.clock.now());
    let rows = web::block(move || {
        let mut rows = panel_rows(&store, &principal, now)?;
        sort_rows(&mut rows, sort);
        Ok::<_, AccessError>(render_panel(&rows, sort))
    })
    .await;
    match rows {
        Ok(Ok(body)) => page("Patients", Some(&viewer), body),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "clinician panel: read failed");
            internal_error(Some(&viewer))
        }
        Err(_) => internal_error(Some(&viewer)),
    }
}

async fn patient_page(
    state: web::Data<DashboardState>,
    viewer: Viewer,
    path: web::Path<String>,
    query: Result<web::Query<RawParams>, actix_web::Error>,
) -> HttpResponse {
    if viewer.role != Role::Clinician {
        return not_found(Some(&viewer));
    }
    let person_id = path.into_inner();
    let base = patient_path(&person_id);
    patient::serve(state, viewer, person_id, query, base, false).await
}

fn sparkline(view: &PatientView) -> Markup {
    let recent = view.recent_steps();
    let values: Vec<Option<i64>> = recent.iter().map(|(_, v)| *v).collect();
    let text: Vec<String> = recent
        .iter()
        .map(|(d, v)| {
            format!(
                "{}: {}",
                d.format("%m-%d"),
                v.map_or("no data".into(), thousands)
            )
        })
        .collect();
    let label = format!("Daily steps, last {RECENT_DAYS} days: {}", text.join(", "));
    match charts::sparkline(&label, &values) {
        Ok(svg) => PreEscaped(svg),
        Err(_) => html! { span class="muted" { "–" } },
    }
}

fn when(t: DateTime<Utc>, v: &PatientView) -> String {
    t.with_timezone(&v.tz)
        .format("%Y-%m-%d %H:%M %Z")
        .to_string()
}

fn mean_steps(recent: &[(NaiveDate, Option<i64>)]) -> Option<i64> {
    let v: Vec<i64> = recent.iter().filter_map(|(_, s)| *s).collect();
    (!v.is_empty()).then(|| (v.iter().sum::<i64>() as f64 / v.len() as f64).round() as i64)
}

/// The panel page body.
pub fn render_panel(rows: &[PanelRow], sort: Sort) -> Markup {
    html! {
        h1 { "Patients" }
        p class="muted" {
            "The people whose consent to you is in force now. Each row's data is read under that "
            "consent and recorded in the person's disclosure log."
        }
        nav class="sort" aria-label="Sort" {
            "Sort by: "
            @for s in Sort::ALL {
                @if s == sort {
                    span class="current" aria-current="true" { (s.label()) }
                } @else {
                    a href={ (PANEL) "?sort=" (s.as_str()) } { (s.label()) }
                }
                " "
            }
        }
        @if rows.is_empty() {
            p id="no-patients" { "No one has a consent to you in force." }
        } @else {
            table id="panel" class="panel" {
                thead { tr {
                    th scope="col" { "Patient" }
                    th scope="col" { "Last sync" }
                    th scope="col" class="num" { "Days with data (last " (COVERAGE_DAYS) ")" }
                    th scope="col" { "Steps, last " (RECENT_DAYS) " days" }
                    th scope="col" class="num" { "Mean sleep (last " (SLEEP_NIGHTS) " nights)" }
                    th scope="col" { "Flags" }
                } }
                tbody {
                    @for r in rows {
                        tr data-person=(r.person_id) data-flags=(r.flag_count()) {
                            th scope="row" {
                                a href=(patient_path(&r.person_id)) { (r.display_name) }
                                @if r.display_name != r.person_id {
                                    br; span class="muted" { (r.person_id) }
                                }
                            }
                            @match &r.view {
                                Some(v) => {
                                    td class="last-sync" {
                                        @match v.last_sync {
                                            Some(t) => (when(t, v)),
                                            None => "never",
                                        }
                                    }
                                    td class="num coverage" { (v.coverage(COVERAGE_DAYS)) }
                                    td class="spark" {
                                        (sparkline(v))
                                        " "
                                        span class="spark-mean" {
                                            @match mean_steps(&v.recent_steps()) {
                                                Some(m) => { (thousands(m)) "/day" },
                                                None => "no data",
                                            }
                                        }
                                    }
                                    td class="num sleep" {
                                        @match r.flags.and_then(|f| f.mean_sleep_hours) {
                                            Some(h) => (hours_minutes(h * 60.0)),
                                            None => "–",
                                        }
                                    }
                                    td class="flags" {
                                        @if let Some(f) = &r.flags {
                                            @if f.count() == 0 { span class="muted" { "none" } }
                                            @else { ul class="flags" { (flag_items(f, true)) } }
                                        }
                                    }
                                },
                                None => {
                                    td colspan="5" class="muted" {
                                        "The consent covers none of the last days."
                                    }
                                },
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patient::tests::table;
    use crate::view::fixture::{self, doctor, ANN, NIA, ZED};

    #[test]
    fn the_panel_lists_consenting_patients_only_with_flags_first() {
        let (_dir, store) = fixture::store();
        let before = store.disclosures(NIA, 0, 1000).unwrap().len();
        let mut rows = panel_rows(&store, &doctor(), fixture::now()).unwrap();
        let ids: Vec<&str> = rows.iter().map(|r| r.person_id.as_str()).collect();
        assert_eq!(ids, [ANN, NIA], "Zed consents to no one");
        // One disclosure entry per row.
        assert_eq!(store.disclosures(NIA, 0, 1000).unwrap().len(), before + 1);
        sort_rows(&mut rows, Sort::Flags);
        assert_eq!(rows[0].person_id, NIA);
        assert_eq!(
            rows[0].flags.unwrap().count(),
            1,
            "steps down; sleep is not shared"
        );
        sort_rows(&mut rows, Sort::Name);
        assert_eq!(rows[0].person_id, ANN);
        let html = render_panel(&rows, Sort::Name).into_string();
        assert!(!html.to_lowercase().contains("style="));
        let panel = table(&html, "panel");
        assert!(panel.contains("data-person=\"nia\" data-flags=\"1\""));
        assert!(panel.contains("data-person=\"ann\" data-flags=\"0\""));
        assert!(!panel.contains(ZED));
        assert!(panel.contains("href=\"/dashboard/clinician/patients/nia\""));
        // Days with data in the last 14 and the sparkline of the last 7 complete days.
        assert!(panel.contains("<td class=\"num coverage\">14</td>"));
        assert_eq!(panel.matches("<svg").count(), 2);
        assert!(panel.contains(
            "aria-label=\"Daily steps, last 7 days: 03-03: 5,000, 03-04: 5,000, 03-05: no data,"
        ));
        // Another clinician sees no one.
        let other = fixture::principal("dr-no", "user/Observation.rs");
        assert!(panel_rows(&store, &other, fixture::now())
            .unwrap()
            .is_empty());
        assert_eq!(Sort::parse(Some("last_sync")), Some(Sort::LastSync));
        assert_eq!(Sort::parse(Some("bogus")), None);
    }
}
