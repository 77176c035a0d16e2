//! Export of the owner's data: `GET /api/v1/me/export?format=fhir|omh|csv`.

use actix_web::web;

pub fn configure(_cfg: &mut web::ServiceConfig) {}
