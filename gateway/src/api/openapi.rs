//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations and
//! the response types' schemas: `GET /openapi.json` serves it, `GET /docs` renders it for
//! people. Every route is listed in [`ApiDoc`]; `every_route_is_documented` checks that every
//! route the router mounts (but the dashboard's HTML pages) is documented, and nothing else.

use actix_web::{web, HttpResponse};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

pub const OPENAPI: &str = "/openapi.json";
pub const DOCS: &str = "/docs";

/// Every error body: `{"error": {"code": "...", "message": "..."}}`. `code` is stable and
/// machine-readable; `message` is for people and may change.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Documentation only: errors are written by `ApiError`.
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Stable code, e.g. `unauthorized`, `forbidden`, `not_found`, `invalid_time`,
    /// `rate_limited`.
    pub code: String,
    pub message: String,
}

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "PHR lifelog gateway API",
        description = "Steps, sleep and heart rate from wearables, bound to the right person, \
                       disclosed only under that person's consent. Every error is JSON with a \
                       stable `code`, except under `/fhir`, where errors are FHIR \
                       `OperationOutcome` resources (`application/fhir+json`, same status) \
                       with the stable code in `issue[0].details.coding[0].code` and the FHIR \
                       issue type in `issue[0].code`. Scopes are SMART v2 style: `patient/...` for a person's \
                       own data, `user/Observation.rs` for clinicians, `system/Observation.rs` \
                       for PHR companies (client credentials at `POST /oauth/token`), \
                       `phr:admin` for operators."
    ),
    paths(super::healthz, super::metrics, super::sync::sync,
        super::summary::subjects, super::summary::daily, super::fhir::search, super::fhir::metadata,
        super::oauth::token, super::oauth::jwks, super::oauth::smart_configuration,
        super::oauth::create_client, super::oauth::list_clients,
        super::me::own_records, super::me::list_consents, super::me::grant_consent,
        super::me::withdraw_consent, super::me::disclosures, super::me::erase,
        super::devices::list, super::devices::start, super::devices::show,
        super::devices::confirm, super::devices::release, super::devices::operator_release,
        super::devices::enrol, super::devices::revoke, super::devices::nearby,
        super::sources::list, super::sources::set,
        super::corrections::quarantine, super::corrections::confirm,
        super::corrections::unlink, super::corrections::mine, super::corrections::admin,
        super::export::export, super::export::sleep_stage_schema, super::subjects::subject_records,
        super::home, super::dashboard, openapi_json, docs),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth),
    tags(
        (name = "operations", description = "Health, metrics, this document, the dashboard"),
        (name = "owner", description = "A person's own data (`patient/...` scopes): records, consents, disclosures, erasure, devices and pairing, quarantine and corrections"),
        (name = "export", description = "The owner's export of everything stored about them (FHIR R4, Open mHealth, CSV), and the JSON Schema of the project's own Open mHealth data type (`phr:sleep-stage:1.0`)"),
        (name = "fhir", description = "FHIR R4: Observation search (searchset Bundles) and the CapabilityStatement; errors are OperationOutcome resources"),
        (name = "companies", description = "PHR companies and clinicians: who consents, incremental sync"),
        (name = "oauth", description = "Client credentials for PHR companies (SMART Backend Services): token endpoint, discovery"),
        (name = "admin", description = "Operators (`phr:admin`)"),
    )
)]
pub struct ApiDoc;

/// Declares the bearer-token scheme every protected operation names as `bearer`.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT access token: the gateway's own (`/oauth/token`, or \
                         `phr-gateway token issue`), or one of a trusted identity provider \
                         (`[[auth.providers]]` with an `audience`) whose SMART scopes and \
                         claims map it to an owner, a clinician or a company.",
                    ))
                    .build(),
            ),
        );
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(OPENAPI, web::get().to(openapi_json))
        .route(DOCS, web::get().to(docs));
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub(crate) async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

/// A plain HTML page listing every operation with its parameters, scopes and responses,
/// rendered on the server from the same document (no scripts, no CDN).
#[utoipa::path(get, path = "/docs", tag = "operations",
    responses((status = 200, description = "This document as an HTML page", content_type = "text/html", body = String)))]
pub(crate) async fn docs() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'",
        ))
        .body(render_docs(&ApiDoc::openapi()))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn render_docs(doc: &utoipa::openapi::OpenApi) -> String {
    let json = serde_json::to_value(doc).unwrap_or_default();
    let mut html = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>PHR gateway API</title>\
         <style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}\
         code{background:#f2f2f2;padding:0 .2em}h2{border-top:1px solid #ccc;padding-top:1rem}\
         .m{font-weight:bold;text-transform:uppercase}</style></head><body>",
    );
    html.push_str(&format!(
        "<h1>{}</h1><p>{}</p><p>Machine-readable: <a href=\"{OPENAPI}\"><code>{OPENAPI}</code></a></p>",
        esc(json["info"]["title"].as_str().unwrap_or_default()),
        esc(json["info"]["description"].as_str().unwrap_or_default())
    ));
    if let Some(paths) = json["paths"].as_object() {
        for (path, item) in paths {
            let Some(ops) = item.as_object() else {
                continue;
            };
            for (method, op) in ops {
                html.push_str(&format!(
                    "<h2><span class=\"m\">{}</span> <code>{}</code></h2><p>{}</p>",
                    esc(method),
                    esc(path),
                    esc(op["summary"].as_str().unwrap_or_default())
                ));
                if let Some(d) = op["description"].as_str() {
                    html.push_str(&format!("<p>{}</p>", esc(d)));
                }
                if let Some(params) = op["parameters"].as_array() {
                    html.push_str("<p>Parameters:</p><ul>");
                    for p in params {
                        html.push_str(&format!(
                            "<li><code>{}</code> ({}{}) {}</li>",
                            esc(p["name"].as_str().unwrap_or_default()),
                            esc(p["in"].as_str().unwrap_or_default()),
                            if p["required"].as_bool() == Some(true) {
                                ", required"
                            } else {
                                ""
                            },
                            esc(p["description"].as_str().unwrap_or_default())
                        ));
                    }
                    html.push_str("</ul>");
                }
                if let Some(responses) = op["responses"].as_object() {
                    html.push_str("<p>Responses:</p><ul>");
                    for (status, r) in responses {
                        html.push_str(&format!(
                            "<li><code>{}</code> {}</li>",
                            esc(status),
                            esc(r["description"].as_str().unwrap_or_default())
                        ));
                    }
                    html.push_str("</ul>");
                }
            }
        }
    }
    html.push_str("</body></html>");
    html
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_document_is_openapi_3_and_renders() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        assert!(doc["paths"][super::super::HEALTHZ]["get"].is_object());
        let html = render_docs(&ApiDoc::openapi());
        assert!(html.contains("/healthz"));
        assert!(!html.contains("<script"));
    }

    /// `{name}` segments of a route pattern filled in, so that a request reaches that route.
    fn concrete(pattern: &str) -> String {
        let mut out = String::new();
        let mut in_var = false;
        for c in pattern.chars() {
            match c {
                '{' => {
                    in_var = true;
                    out.push_str("x1");
                }
                '}' => in_var = false,
                c if !in_var => out.push(c),
                _ => {}
            }
        }
        out
    }

    /// The routes `configure` mounts, as (path pattern, lower-case method), read from the
    /// router itself. The paths come from the app's resource map; each method is then tried
    /// against an app whose fallback answers 418, so a method no route serves is told apart
    /// from whatever a handler answers (without the app's state, an error at the latest).
    async fn routes(configure: fn(&mut web::ServiceConfig)) -> BTreeSet<(String, String)> {
        use actix_web::http::{Method, StatusCode};
        use actix_web::{test, App, HttpRequest};

        let fallback = |req: HttpRequest| async move {
            // The resource map has no public iterator; its `Debug` lists every resource's
            // `patterns`. Each pattern found is checked against the map's own matcher, so a
            // change of that format fails here rather than finding no routes.
            let map = req.resource_map();
            let dump = format!("{map:?}");
            let paths: BTreeSet<String> = dump
                .split("patterns: Single(\"")
                .skip(1)
                .filter_map(|rest| {
                    rest.find("\")")
                        .map(|end| rest[..end].replace("\\\\", "\\"))
                })
                .filter(|p| !p.is_empty())
                .collect();
            for p in &paths {
                assert_eq!(
                    map.match_pattern(&concrete(p)).as_deref(),
                    Some(p.as_str()),
                    "{p} read from the resource map"
                );
            }
            HttpResponse::ImATeapot().json(paths)
        };
        let app = test::init_service(
            App::new()
                .configure(configure)
                .default_service(web::to(fallback)),
        )
        .await;
        let listing = test::TestRequest::get()
            .uri("/no-such-route/listing")
            .to_request();
        let listing = test::call_service(&app, listing).await;
        assert_eq!(listing.status(), StatusCode::IM_A_TEAPOT);
        let paths: Vec<String> = test::read_body_json(listing).await;
        let mut out = BTreeSet::new();
        for path in paths {
            for method in [
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ] {
                let req = test::TestRequest::default()
                    .method(method.clone())
                    .uri(&concrete(&path))
                    .to_request();
                let status = test::call_service(&app, req).await.status();
                if status != StatusCode::IM_A_TEAPOT && status != StatusCode::METHOD_NOT_ALLOWED {
                    out.insert((path.clone(), method.as_str().to_lowercase()));
                }
            }
        }
        out
    }

    /// Every route the gateway mounts, except the dashboard's HTML pages (not part of the
    /// JSON API), is a documented operation with a summary and a success response; and every
    /// documented operation is a route. The routes come from the router, not from a list: a
    /// route added without documentation fails here.
    #[actix_web::test]
    async fn every_route_is_documented() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let all = routes(super::super::configure).await;
        let pages = routes(crate::dashboard::configure).await;
        assert!(!pages.is_empty() && pages.is_subset(&all));
        let api: BTreeSet<(String, String)> = all.difference(&pages).cloned().collect();
        for (path, method) in &api {
            let op = &doc["paths"][path][method];
            assert!(op.is_object(), "{method} {path} is not documented");
            assert!(op["summary"].is_string(), "{method} {path} has no summary");
            assert!(
                op["responses"]["200"].is_object() || op["responses"]["201"].is_object(),
                "{method} {path} documents no success"
            );
        }
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .map(move |method| (path.clone(), method.clone()))
            })
            .collect();
        assert_eq!(api, documented, "routes and documented operations differ");
        // The router's view includes what a hand-kept list would: a spot check.
        for (path, method) in [
            (super::super::HEALTHZ, "get"),
            (super::super::me::CONSENTS, "post"),
            (super::super::sources::SOURCE, "put"),
            (super::super::devices::BINDING, "delete"),
        ] {
            assert!(
                api.contains(&(path.to_owned(), method.to_owned())),
                "{method} {path}"
            );
        }
    }
}
