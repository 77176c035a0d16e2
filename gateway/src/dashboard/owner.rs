//! The owner's dashboard (to be built).

use actix_web::web;

pub const HOME: &str = "/dashboard/me";

pub fn configure(_cfg: &mut web::ServiceConfig) {}
