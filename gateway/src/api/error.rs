//! Every API error in one place: an HTTP status and a stable JSON body
//! `{"error": {"code": "...", "message": "..."}}`. Bodies never carry health data or internals.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("the token does not grant this access")]
    Forbidden,
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("the request lies outside the consented measured-time window")]
    OutsideWindow,
    #[error("the range lies outside your binding periods of this device")]
    OutsideBindings,
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(&'static str),
    #[error("internal error")]
    Internal,
    #[error("temporarily unavailable; try again")]
    Unavailable,
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("the request body is larger than {max} bytes")]
    PayloadTooLarge { max: usize },
    /// A refusal with its own status (409, 429, ...) and stable code; with
    /// `retry_after_secs`, a Retry-After header too.
    #[error("{message}")]
    Refused {
        status: StatusCode,
        code: &'static str,
        message: String,
        retry_after_secs: Option<u64>,
    },
    #[error("too many exports running; retry after {retry_after_secs} s")]
    TooManyExports { retry_after_secs: u64 },
}

impl ApiError {
    /// A refusal with `status` and a stable `code`.
    pub fn refused(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::Refused {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// A JSON body that could not be read: too large (413) or malformed (400 `invalid_body`).
    pub fn from_body_error(e: &actix_web::Error) -> Self {
        if e.as_response_error().status_code() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge {
                max: super::MAX_BODY_BYTES,
            }
        } else {
            Self::bad_request("invalid_body", e.to_string())
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::BadRequest { code, .. } => code,
            Self::OutsideWindow => "outside_consented_window",
            Self::OutsideBindings => "outside_your_bindings",
            Self::NotFound => "not_found",
            Self::Conflict(_) => "conflict",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
            Self::RateLimited { .. } => "rate_limited",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::Refused { code, .. } => code,
            Self::TooManyExports { .. } => "too_many_exports",
        }
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        match e {
            // Fixed texts written for callers; they never carry data.
            crate::Error::Conflict(msg) => Self::Conflict(msg),
            crate::Error::Invalid(msg) => Self::bad_request("invalid", msg),
            e => {
                tracing::error!(error = %e, "request failed");
                Self::Internal
            }
        }
    }
}

/// A store error maps as the gateway's own would (conflict, invalid input, internal).
impl From<crate::store::Error> for ApiError {
    fn from(e: crate::store::Error) -> Self {
        crate::Error::from(e).into()
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::OutsideWindow | Self::OutsideBindings => StatusCode::FORBIDDEN,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited { .. } | Self::TooManyExports { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Refused { status, .. } => *status,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if matches!(self, Self::Unauthorized) {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\""));
        }
        if let Self::RateLimited { retry_after_secs }
        | Self::TooManyExports { retry_after_secs }
        | Self::Refused {
            retry_after_secs: Some(retry_after_secs),
            ..
        } = self
        {
            res.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
        }
        res.json(json!({"error": {"code": self.code(), "message": self.to_string()}}))
    }
}

impl From<crate::access::AccessError> for ApiError {
    fn from(e: crate::access::AccessError) -> Self {
        use crate::access::AccessError;
        match e {
            AccessError::Forbidden => Self::Forbidden,
            AccessError::OutsideWindow => Self::OutsideWindow,
            AccessError::NotFound => Self::NotFound,
            AccessError::Store(e) => e.into(),
        }
    }
}

impl From<crate::api::export::UnknownFormat> for ApiError {
    fn from(e: crate::api::export::UnknownFormat) -> Self {
        Self::bad_request("invalid_format", e.to_string())
    }
}

impl From<crate::api::export::ExportError> for ApiError {
    fn from(e: crate::api::export::ExportError) -> Self {
        use crate::api::export::ExportError;
        match e {
            ExportError::Busy { retry_after_secs } => Self::TooManyExports { retry_after_secs },
            ExportError::Failed(e) => e.into(),
        }
    }
}
