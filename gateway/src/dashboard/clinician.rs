//! The clinician's dashboard (to be built).

use actix_web::web;

pub const PANEL: &str = "/dashboard/clinician";

pub fn configure(_cfg: &mut web::ServiceConfig) {}
