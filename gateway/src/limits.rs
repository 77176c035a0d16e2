//! Request limits: a token bucket per caller (the token's subject, so per PHR company, per
//! clinician and per person; the peer address for calls without a valid token), answered
//! with 429, a JSON error `rate_limited` and `Retry-After` in whole seconds. `/healthz` and
//! `/metrics` are not limited (probes and scrapers). Body sizes are bounded by the extractor
//! configs in `lib.rs` (413 `payload_too_large`), query spans by the read routes (400
//! `span_too_large`).
//!
//! Buckets refill by the gateway's clock (`AppState::clock`, so tests move time instead of
//! waiting). A clock that steps back refills nothing: the time since a bucket's last use
//! counts only when positive, and the bucket goes on from the new reading.

use crate::auth::Principal;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, ResponseError};

use crate::api::error::ApiError;
use crate::api::AppState;

/// Callers tracked at once; beyond this, full (idle) buckets are forgotten first.
const MAX_TRACKED: usize = 100_000;

/// Per-caller token buckets: `burst` requests at once, refilled at `per_minute`.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: DateTime<Utc>,
}

/// Seconds from `from` to `to`; none when `to` is earlier (a clock that stepped back).
fn elapsed_secs(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).to_std().map_or(0.0, |d| d.as_secs_f64())
}

impl RateLimiter {
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_minute.max(1)) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket at `now`; `Err(wait)` when it is empty.
    pub fn check(&self, key: &str, now: DateTime<Utc>) -> Result<(), Duration> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(()); // A poisoned limiter must not take the API down.
        };
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(key) {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| b.tokens + elapsed_secs(b.at, now) * rate < burst);
        }
        let b = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = elapsed_secs(b.at, now);
        b.tokens = (b.tokens + elapsed * self.per_second).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_second))
        }
    }
}

/// Seconds to put in `Retry-After` for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

/// The middleware: limits every route but the probes.
pub async fn rate_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let path = req.path();
    let exempt = path == crate::api::HEALTHZ || path == crate::api::METRICS;
    if !exempt {
        if let Some(state) = req.app_data::<web::Data<AppState>>() {
            let key = caller(&req, state);
            if let Err(wait) = state.limiter.check(&key, state.clock.now()) {
                let e = ApiError::RateLimited {
                    retry_after_secs: retry_after_secs(wait),
                };
                return Ok(req.into_response(e.error_response()));
            }
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// Whose bucket a request uses: the verified token's subject, else the peer address. The
/// verified claims are left in the request for the `Principal` extractor.
fn caller(req: &ServiceRequest, state: &AppState) -> String {
    // A provider's token is checked with cached keys only (no fetch on this path); one that
    // needs a fetch is counted by address and verified by the `Principal` extractor.
    let caller =
        crate::api::bearer_token(req.headers()).and_then(|t| match state.idp.for_access_token(t) {
            Some(provider) => provider.verify_access_token(t, false).ok(),
            None => state
                .keys
                .verify(t, state.clock.now())
                .ok()
                .map(Principal::from_claims),
        });
    if let Some(caller) = caller {
        let key = format!("sub:{}", caller.subject);
        req.extensions_mut()
            .insert(crate::api::VerifiedCaller(caller));
        return key;
    }
    let peer = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    format!("ip:{peer}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_the_rate() {
        let l = RateLimiter::new(60, 3); // one a second, three at once
        let t0: DateTime<Utc> = "2026-03-08T01:59:59Z".parse().unwrap();
        let ms = chrono::TimeDelta::milliseconds;
        for _ in 0..3 {
            assert_eq!(l.check("a", t0), Ok(()));
        }
        let wait = l.check("a", t0).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        assert_eq!(retry_after_secs(wait), 1);
        assert_eq!(l.check("b", t0), Ok(()), "callers do not share a bucket");
        assert!(l.check("a", t0 + ms(500)).is_err());
        assert_eq!(l.check("a", t0 + ms(1001)), Ok(()));
        // Idle for long: back to the burst, not beyond it.
        let later = t0 + chrono::TimeDelta::hours(1);
        for _ in 0..3 {
            assert_eq!(l.check("a", later), Ok(()));
        }
        assert!(l.check("a", later).is_err());
    }

    #[test]
    fn a_clock_stepping_back_refills_nothing() {
        let l = RateLimiter::new(60, 2); // one a second, two at once
        let t0: DateTime<Utc> = "2026-03-08T02:00:00Z".parse().unwrap();
        let s = chrono::TimeDelta::seconds;
        assert_eq!(l.check("a", t0), Ok(()));
        assert_eq!(l.check("a", t0), Ok(()));
        // An hour back: no refill, however far.
        assert!(l.check("a", t0 - s(3600)).is_err());
        // From there on, the time since that reading counts: the bucket does not stall for
        // the hour until the clock is back where it was.
        assert_eq!(
            l.check("a", t0 - s(3599)),
            Ok(()),
            "one second after the last reading"
        );
        assert!(l.check("a", t0 - s(3599)).is_err());
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
