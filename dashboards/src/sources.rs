//! "Which device counts" on the owner's dashboard (issue #15): for steps, sleep and heart
//! rate, the owner's devices in the order that decides which one's data counts when two
//! measured the same time ([`crate::store::sources`]), how many of the last 30 local days
//! each counted on ([`Store::sources_view`]), and forms to change the order without
//! JavaScript.
//!
//! - The home page's section ([`section`]): per type the rule in force, the devices (ordered
//!   ones numbered, then those placed by the default rule), per device a "Move up" and a
//!   "Move down" form, each carrying the whole new order, and "Back to the default rule"
//!   (an empty order) while an order is set.
//! - `POST /dashboard/me/sources/{record_type}` (CSRF; `order`: device ids separated by
//!   commas, first counts first, empty for the default rule): sets the order through
//!   [`Store::set_source_order`], as `PUT /api/v1/me/sources/{record_type}` does (validated,
//!   written to the owner's disclosure log, for past days too), and goes back to the
//!   section. An order the store refuses (a device that is not theirs, one listed twice) is
//!   a 400 page saying why; nothing changes. An unknown type is the 404 page.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpResponse};
use maud::{html, Markup};
use serde::Deserialize;

use phr_schema::RecordType;

use super::owner::{blocking, either, owner_only};
use super::session::check_csrf;
use super::{not_found, respond, Viewer};
use crate::store::prelude::*;
use crate::store::source_view::{moved, Move, SourcesView, TypeSources, COUNTED_DAYS};
#[cfg(doc)]
use crate::store::Store;
use crate::DashboardState;

pub const ORDER: &str = "/dashboard/me/sources/{record_type}";

/// Where a change goes back to: the section on the home page.
pub const SECTION: &str = "/dashboard/me#sources-h";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(ORDER, web::post().to(set_order));
}

/// Record types' wire names are URL-safe, so they go into the path as they are.
pub fn order_path(t: RecordType) -> String {
    ORDER.replace("{record_type}", t.as_str())
}

fn label(t: RecordType) -> &'static str {
    match t {
        RecordType::StepCount => "Steps",
        RecordType::SleepEpisode => "Sleep",
        RecordType::HeartRate => "Heart rate",
    }
}

/// What a device counted on: days, or nights for sleep.
fn counted_unit(t: RecordType) -> &'static str {
    match t {
        RecordType::SleepEpisode => "Nights counted",
        _ => "Days counted",
    }
}

/// The order a form carries: device ids separated by commas (ids never hold a comma).
fn parse_order(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The store's refusal of an order, in the owner's words.
fn refusal(msg: &str) -> &str {
    match msg {
        "not a device of this person" => "it names a device that is not one of yours",
        "a device is listed twice" => "it lists a device twice",
        "too many devices in the order" => "it lists too many devices",
        other => other,
    }
}

// ----- the home page's section -----

/// One small form: set `t`'s order to `order`, with a button.
fn order_form(v: &Viewer, t: RecordType, order: &[String], button: Markup, aria: &str) -> Markup {
    html! {
        form method="post" action=(order_path(t)) class="inline" {
            input type="hidden" name="csrf" value=(v.csrf);
            input type="hidden" name="order" value=(order.join(","));
            button type="submit" aria-label=(aria) { (button) }
        }
    }
}

fn type_table(v: &Viewer, t: &TypeSources) -> Markup {
    let rt = t.record_type;
    let listed = t.listed();
    let id = format!("sources-{}", rt.as_str());
    html! {
        h3 id=(id) { (label(rt)) }
        p class="rule" { (t.rule) }
        table class="sources" {
            caption {
                (label(rt)) ": my devices, the first counting first; "
                (counted_unit(rt).to_lowercase()) " in the last " (COUNTED_DAYS) " days"
            }
            thead { tr {
                th scope="col" { "Place" }
                th scope="col" { "Device" }
                th scope="col" class="num" { (counted_unit(rt)) }
                th scope="col" { "Change" }
            } }
            tbody {
                @for (i, d) in t.devices.iter().enumerate() {
                    tr {
                        td {
                            @match d.rank {
                                Some(r) => (r),
                                None => span class="muted" { "by the default rule" },
                            }
                        }
                        td { code { (d.device_id) } }
                        td class="num" { (d.days_counted) }
                        td {
                            @if let Some(order) = moved(&listed, i, Move::Up) {
                                (order_form(v, rt, &order, html! { "Move up" },
                                    &format!("Move {} up for {}", d.device_id, label(rt).to_lowercase())))
                            }
                            " "
                            @if let Some(order) = moved(&listed, i, Move::Down) {
                                (order_form(v, rt, &order, html! { "Move down" },
                                    &format!("Move {} down for {}", d.device_id, label(rt).to_lowercase())))
                            }
                        }
                    }
                }
            }
        }
        @if !t.order.is_empty() {
            (order_form(v, rt, &[], html! { "Back to the default rule" },
                &format!("Back to the default rule for {}", label(rt).to_lowercase())))
        }
    }
}

/// The "Which device counts" section of `/dashboard/me`.
pub fn section(v: &Viewer, view: &SourcesView) -> Markup {
    let any = view.types.iter().any(|t| !t.devices.is_empty());
    html! {
        section aria-labelledby="sources-h" {
            h2 id="sources-h" { "Which device counts" }
            p {
                "When two of your devices measure the same time, only one of them counts, so "
                "every step and every night is counted once: in each 5-minute stretch of a day, "
                "the first device in the order below that has data there; for sleep, the first "
                "device's sleep, the same night seen by another device being left out."
            }
            p {
                "The order applies to every day, past days too: changing it changes your past "
                "daily totals. Moving a device puts every listed device in your order. Each "
                "change is written to your disclosure log."
            }
            @if any {
                p class="muted" {
                    "Days counted from " (view.from) " to " (view.to) " (" (view.time_zone) ")."
                }
                @for t in &view.types { (type_table(v, t)) }
            } @else {
                p { "None of your devices has measured anything yet." }
            }
        }
    }
}

// ----- the change -----

#[derive(Debug, Default, Deserialize)]
struct OrderForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    order: String,
}

async fn set_order(
    state: web::Data<DashboardState>,
    viewer: Viewer,
    path: web::Path<String>,
    form: Result<web::Form<OrderForm>, actix_web::Error>,
) -> HttpResponse {
    let form = form.map(web::Form::into_inner).unwrap_or_default();
    either(set_order_now(state, viewer, path.into_inner(), form).await)
}

async fn set_order_now(
    state: web::Data<DashboardState>,
    v: Viewer,
    record_type: String,
    form: OrderForm,
) -> Result<HttpResponse, HttpResponse> {
    owner_only(&v)?;
    check_csrf(&v, &form.csrf)?;
    let Ok(t) = record_type.parse::<RecordType>() else {
        return Err(not_found(Some(&v)));
    };
    let order = parse_order(&form.order);
    let (store, person, now) = (state.store.clone(), v.subject.clone(), state.clock.now());
    let result = blocking(&v, move || {
        match store.set_source_order(&person, t, &order, now) {
            Ok(()) => Ok(Ok(())),
            Err(crate::store::Error::Invalid(why)) => Ok(Err(why)),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    match result {
        Ok(()) => Ok(HttpResponse::SeeOther()
            .insert_header((header::LOCATION, SECTION))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish()),
        Err(why) => Err(respond(
            StatusCode::BAD_REQUEST,
            "Order not changed",
            Some(&v),
            html! {
                h1 { "The order was not changed" }
                p class="refusal" {
                    "The new order for " (label(t).to_lowercase()) " was refused: "
                    (refusal(why)) "."
                }
                p { "Nothing was changed." }
                p { a href=(SECTION) { "Back to my data" } }
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;
    use crate::store::source_view::{arrange, rule_text, SourceDevice};

    fn viewer() -> Viewer {
        Viewer {
            subject: "ana".into(),
            role: crate::Role::Owner,
            csrf: "tok".into(),
        }
    }

    fn view(order: &[&str], devices: Vec<SourceDevice>) -> SourcesView {
        let order: Vec<String> = order.iter().map(|s| (*s).to_owned()).collect();
        SourcesView {
            time_zone: "Asia/Tokyo".into(),
            from: NaiveDate::from_ymd_opt(2026, 10, 22).unwrap(),
            to: NaiveDate::from_ymd_opt(2026, 11, 20).unwrap(),
            types: vec![TypeSources {
                record_type: RecordType::StepCount,
                rule: rule_text(&order),
                order,
                devices,
            }],
        }
    }

    /// The hidden `order` values of the forms in `html`, in document order.
    fn orders(html: &str) -> Vec<String> {
        html.split("name=\"order\" value=\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn each_device_moves_by_a_form_carrying_the_whole_new_order() {
        let sources = vec!["c".to_owned(), "b".to_owned(), "a".to_owned()];
        let counted = [("a".to_owned(), 4), ("c".to_owned(), 2)].into();
        let devices = arrange(&["b".to_owned()], &sources, &counted);
        let html = section(&viewer(), &view(&["b"], devices)).into_string();
        // Listed b (ordered), a (4 days), c (2 days). Forms in order: b down; a up, a down;
        // c up; then back to the default rule.
        assert_eq!(orders(&html), vec!["a,b,c", "a,b,c", "b,c,a", "b,c,a", ""]);
        assert!(html.contains("Back to the default rule"), "{html}");
        assert!(html.contains("by the default rule"), "{html}");
        assert!(html.contains("Your order first (b), then"), "{html}");
        assert!(html.contains("past days too"), "{html}");
        assert!(html.contains("disclosure log"), "{html}");
        assert_eq!(html.matches("name=\"csrf\" value=\"tok\"").count(), 5);
        assert!(html.contains("action=\"/dashboard/me/sources/step-count\""));
    }

    #[test]
    fn without_an_order_there_is_nothing_to_reset() {
        let sources = vec!["a".to_owned(), "b".to_owned()];
        let devices = arrange(&[], &sources, &Default::default());
        let html = section(&viewer(), &view(&[], devices)).into_string();
        assert_eq!(orders(&html), vec!["b,a", "b,a"]);
        assert!(!html.contains("Back to the default rule"), "{html}");
        assert!(html.contains("By the default rule: each day"), "{html}");

        let html = section(&viewer(), &view(&[], Vec::new())).into_string();
        assert!(html.contains("None of your devices has measured"), "{html}");
        assert!(orders(&html).is_empty());
    }

    #[test]
    fn device_ids_are_text_never_markup() {
        let devices = vec![SourceDevice {
            device_id: "<b>x\"".into(),
            rank: Some(1),
            days_counted: 1,
        }];
        let html = section(&viewer(), &view(&["<b>x\""], devices)).into_string();
        assert!(!html.contains("<b>x"), "{html}");
        assert!(html.contains("&lt;b&gt;x&quot;"), "{html}");
    }

    #[test]
    fn orders_from_a_form() {
        assert_eq!(parse_order(""), Vec::<String>::new());
        assert_eq!(parse_order(" , "), Vec::<String>::new());
        assert_eq!(parse_order("b, a,,c"), vec!["b", "a", "c"]);
        assert_eq!(
            refusal("not a device of this person"),
            "it names a device that is not one of yours"
        );
        assert_eq!(refusal("something else"), "something else");
        assert_eq!(
            order_path(RecordType::HeartRate),
            "/dashboard/me/sources/heart-rate"
        );
    }
}
