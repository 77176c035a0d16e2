//! Sign-in for the dashboards (to be built): one-time sign-in links, session cookies, CSRF.

use std::future::{ready, Ready};

use actix_web::{web, FromRequest, HttpRequest};

use super::Viewer;

pub const SIGN_IN: &str = "/dashboard/signin";
pub const SIGN_OUT: &str = "/dashboard/signout";

pub fn configure(_cfg: &mut web::ServiceConfig) {}

impl FromRequest for Viewer {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(_req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(Err(actix_web::error::ErrorUnauthorized("not signed in")))
    }
}
