//! OAuth 2.0 client credentials for PHR companies (RFC 6749 §4.4), as SMART App Launch v2
//! "Backend Services" describes them: a registered client authenticates at
//! `POST /oauth/token` and gets a short-lived access token for the `system/...` scopes it was
//! allowed, signed with the gateway's own key ([`Keys::issue`], `sub` = the client id).
//!
//! Client authentication, exactly one of:
//! - `private_key_jwt` (RFC 7523 §2.2, §3): a JWT the client signed with a key from the JWK
//!   Set it registered. `iss` and `sub` are the client id, `aud` is exactly this gateway's
//!   token endpoint URL, `exp` is required and at most five minutes ahead, `jti` is required
//!   and accepted once. `alg` must be one the key allows: `EdDSA` (OKP Ed25519), `ES384`
//!   (P-384), `RS384` (RSA, 2048 bits or more) or `ES256` (P-256); `none` and HMAC never are.
//!   The key is picked by `kid` when the header names one.
//! - `client_secret_basic` (RFC 6749 §2.3.1): HTTP Basic with the form-urlencoded id and
//!   secret.
//! - `client_secret_post`: `client_id` and `client_secret` in the body.
//!
//! Refusals follow RFC 6749 §5.2 (`invalid_client` and friends) with fixed descriptions that
//! never carry a secret, an assertion or a claim value. Nothing here logs either. What an
//! answer may say depends on what it reveals: a malformed request or assertion claims are
//! described (that tells nothing about who is registered); everything after the client
//! lookup (unknown, disabled, no secret or keys, wrong secret, unknown `kid`, bad signature)
//! is the one "client authentication failed", after the same work (a dummy hash for a
//! missing secret, a dummy-key verification for a missing client).
//!
//! Replay: an assertion is accepted until [`accepted_until`] (`exp` + 30 s, to the
//! millisecond) and its `jti` is remembered [`JTI_MARGIN_SECS`] longer, both from the same
//! `now`, so no purge forgets a `jti` whose assertion would still pass.

use chrono::{DateTime, TimeDelta, Utc};
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use phr_schema::RecordType;

pub use crate::auth::loinc_query_types;
use crate::auth::{Keys, Scope, ScopeContext};
use crate::store::clients::{self, NewClient};
use crate::store::Store;

/// The token endpoint, relative to the issuer URL.
pub const TOKEN_PATH: &str = "/oauth/token";
/// The gateway's token-signing keys as a JWK Set.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// SMART App Launch discovery (`.well-known/smart-configuration`).
pub const SMART_CONFIGURATION_PATH: &str = "/.well-known/smart-configuration";

/// Lifetime of the access tokens the token endpoint issues.
pub const ACCESS_TOKEN_TTL_SECS: i64 = 300;
/// How far ahead of now a client assertion's `exp` may be (SMART Backend Services).
pub const MAX_ASSERTION_LIFETIME_SECS: i64 = 300;
/// Clock skew tolerated between the client and the gateway on `exp`, `nbf` and `iat`.
pub const CLOCK_SKEW_SECS: i64 = 30;
/// How long an assertion's `jti` is remembered after the last instant the assertion is
/// accepted ([`accepted_until`]): the replay guard outlives the acceptance window by this
/// much, so no purge can ever forget a `jti` whose assertion would still pass.
pub const JTI_MARGIN_SECS: i64 = 60;

pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
/// RFC 7523 §2.2.
pub const CLIENT_ASSERTION_TYPE_JWT: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The client assertion algorithms accepted, the SMART-required ones first.
pub const SIGNING_ALGS: [Algorithm; 4] = [
    Algorithm::EdDSA,
    Algorithm::ES384,
    Algorithm::RS384,
    Algorithm::ES256,
];
pub const AUTH_METHODS: [&str; 3] = [
    "private_key_jwt",
    "client_secret_basic",
    "client_secret_post",
];

/// The most keys a client may register.
pub const MAX_JWKS_KEYS: usize = 10;
/// The most scopes a client may be allowed.
pub const MAX_SCOPES: usize = 50;
/// The smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;
/// JWK members only private or symmetric keys have (RFC 7518 §6).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

// ----- errors -----

/// The `error` values of RFC 6749 §5.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OAuthErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
}

impl OAuthErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
        }
    }
}

/// A refusal at the token endpoint: the RFC 6749 `error` and a fixed description written for
/// the client's developers (never a secret, an assertion or a claim's value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}: {description}", code.as_str())]
pub struct OAuthError {
    pub code: OAuthErrorCode,
    pub description: &'static str,
}

impl OAuthError {
    pub const fn new(code: OAuthErrorCode, description: &'static str) -> Self {
        Self { code, description }
    }
}

const fn invalid_request(d: &'static str) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidRequest, d)
}

const fn invalid_client(d: &'static str) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidClient, d)
}

const fn invalid_scope(d: &'static str) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidScope, d)
}

/// Said of every failed secret check and unknown or disabled client alike.
const AUTH_FAILED: &str = "client authentication failed";
/// Said of a replayed assertion.
pub const ASSERTION_USED: &str = "assertion already used";

/// Why a token request produced no token.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Refused(#[from] OAuthError),
    #[error(transparent)]
    Internal(#[from] crate::Error),
}

// ----- the token request -----

/// The token request's form parameters (`application/x-www-form-urlencoded`). Unknown
/// parameters are ignored (RFC 6749 §3.2); `Debug` never prints the secret or assertion.
#[derive(Default, Clone, Deserialize, ToSchema)]
pub struct TokenForm {
    /// Must be `client_credentials`.
    #[schema(example = "client_credentials")]
    pub grant_type: Option<String>,
    /// Space-separated scopes, a subset of the client's allowed scopes [default: all of them].
    #[schema(example = "system/Observation.rs")]
    pub scope: Option<String>,
    /// The client id (`client_secret_post`; optional with the other methods, and then must
    /// match).
    pub client_id: Option<String>,
    /// `client_secret_post` only.
    pub client_secret: Option<String>,
    /// `urn:ietf:params:oauth:client-assertion-type:jwt-bearer` (`private_key_jwt`).
    pub client_assertion_type: Option<String>,
    /// The signed client assertion (`private_key_jwt`).
    pub client_assertion: Option<String>,
}

impl std::fmt::Debug for TokenForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenForm")
            .field("grant_type", &self.grant_type)
            .field("scope", &self.scope)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| ".."))
            .field("client_assertion_type", &self.client_assertion_type)
            .field(
                "client_assertion",
                &self.client_assertion.as_ref().map(|_| ".."),
            )
            .finish()
    }
}

/// Credentials from an HTTP Basic `Authorization` header. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicCredentials {
    pub client_id: String,
    pub secret: String,
}

impl std::fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicCredentials")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Whether an `Authorization` header value uses the Basic scheme.
pub fn is_basic(header: &str) -> bool {
    header
        .trim_start()
        .get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("basic "))
}

/// Parses `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
pub fn parse_basic(header: &str) -> Option<BasicCredentials> {
    if !is_basic(header) {
        return None;
    }
    let encoded = header.trim_start()[6..].trim();
    let decoded = String::from_utf8(b64_decode(encoded)?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some(BasicCredentials {
        client_id: form_decode(id)?,
        secret: form_decode(secret)?,
    })
}

/// What the token endpoint answers on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// A JWT (RFC 9068 `at+jwt`) signed by the gateway; use as `Authorization: Bearer`.
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: String,
    /// Seconds until the token expires.
    #[schema(example = 300)]
    pub expires_in: i64,
    /// The scopes granted, space-separated, verbatim as registered.
    #[schema(example = "system/Observation.rs")]
    pub scope: String,
}

/// How a request authenticates its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAuth<'a> {
    Secret { client_id: &'a str, secret: &'a str },
    Assertion { assertion: &'a str },
}

fn client_auth<'a>(
    form: &'a TokenForm,
    basic: Option<&'a BasicCredentials>,
) -> Result<ClientAuth<'a>, OAuthError> {
    let jwt = form.client_assertion.is_some() || form.client_assertion_type.is_some();
    let used = [basic.is_some(), form.client_secret.is_some(), jwt]
        .into_iter()
        .filter(|u| *u)
        .count();
    if used > 1 {
        return Err(invalid_request(
            "use exactly one client authentication method",
        ));
    }
    if let Some(b) = basic {
        if form
            .client_id
            .as_deref()
            .is_some_and(|id| id != b.client_id)
        {
            return Err(invalid_request(
                "client_id does not match the Basic credentials",
            ));
        }
        return Ok(ClientAuth::Secret {
            client_id: &b.client_id,
            secret: &b.secret,
        });
    }
    if let Some(secret) = &form.client_secret {
        let client_id = form
            .client_id
            .as_deref()
            .ok_or(invalid_request("client_secret_post needs client_id"))?;
        return Ok(ClientAuth::Secret { client_id, secret });
    }
    if jwt {
        if form.client_assertion_type.as_deref() != Some(CLIENT_ASSERTION_TYPE_JWT) {
            return Err(invalid_request(
                "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ));
        }
        let assertion = form
            .client_assertion
            .as_deref()
            .ok_or(invalid_request("client_assertion is required"))?;
        return Ok(ClientAuth::Assertion { assertion });
    }
    Err(invalid_client(
        "client authentication is required: private_key_jwt, client_secret_basic or client_secret_post",
    ))
}

/// The token endpoint URL for `issuer` (what client assertions must name as `aud`).
pub fn token_endpoint(issuer: &str) -> String {
    format!("{}{TOKEN_PATH}", issuer.trim_end_matches('/'))
}

/// Serves a token request: checks the grant, authenticates the client, remembers the
/// assertion's `jti`, grants the scopes and issues the token. Blocking (store access).
pub fn issue_token(
    store: &Store,
    keys: &Keys,
    form: &TokenForm,
    basic: Option<&BasicCredentials>,
    now: DateTime<Utc>,
) -> Result<TokenResponse, Failure> {
    match form.grant_type.as_deref() {
        None => return Err(invalid_request("grant_type is required").into()),
        Some(GRANT_CLIENT_CREDENTIALS) => {}
        Some(_) => {
            return Err(OAuthError::new(
                OAuthErrorCode::UnsupportedGrantType,
                "only grant_type=client_credentials is supported",
            )
            .into())
        }
    }
    let auth = client_auth(form, basic)?;
    let method = match auth {
        ClientAuth::Secret { .. } if basic.is_some() => "client_secret_basic",
        ClientAuth::Secret { .. } => "client_secret_post",
        ClientAuth::Assertion { .. } => "private_key_jwt",
    };
    let client = match auth {
        ClientAuth::Secret { client_id, secret } => {
            let client = store.client(client_id)?.filter(|c| !c.is_disabled());
            match client {
                Some(c) if c.verify_secret(secret) => c,
                Some(_) => return Err(invalid_client(AUTH_FAILED).into()),
                None => {
                    clients::verify_no_secret(secret);
                    return Err(invalid_client(AUTH_FAILED).into());
                }
            }
        }
        ClientAuth::Assertion { assertion } => {
            // What does not depend on a registration is checked first, for every client id
            // alike; from the lookup on, every failure is the one `AUTH_FAILED`, so the
            // answer never tells a registered client id from an unknown one.
            let endpoint = token_endpoint(keys.issuer());
            let checked = check_assertion(assertion, &endpoint, now)?;
            if form
                .client_id
                .as_deref()
                .is_some_and(|id| id != checked.client_id)
            {
                return Err(invalid_client("client_id does not match the assertion's iss").into());
            }
            let client = store
                .client(&checked.client_id)?
                .filter(|c| !c.is_disabled());
            let jwks = client
                .as_ref()
                .and_then(|c| c.jwks.as_ref())
                .and_then(|j| check_jwks(j).ok());
            let (Some(client), Some(jwks)) = (client, jwks) else {
                // As much work as a real check: one signature verification.
                verify_signature_with_dummy(assertion, keys);
                return Err(invalid_client(AUTH_FAILED).into());
            };
            if !verify_signature(assertion, &jwks) {
                return Err(invalid_client(AUTH_FAILED).into());
            }
            if !store.remember_jti(
                &checked.client_id,
                &checked.jti,
                checked.remember_until,
                now,
            )? {
                return Err(invalid_client(ASSERTION_USED).into());
            }
            client
        }
    };
    let scopes = grant_scopes(form.scope.as_deref(), &client.allowed_scopes)?;
    let scope = scopes.join(" ");
    let access_token = keys.issue(
        &client.client_id,
        &scope,
        TimeDelta::seconds(ACCESS_TOKEN_TTL_SECS),
        now,
    )?;
    tracing::info!(client_id = %client.client_id, method, scope = %scope, "token issued");
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer".into(),
        expires_in: ACCESS_TOKEN_TTL_SECS,
        scope,
    })
}

/// The scopes to grant: the requested ones (space-separated, duplicates dropped), each of
/// which must be one of the client's allowed scopes verbatim; all of those when none are
/// requested.
pub fn grant_scopes(
    requested: Option<&str>,
    allowed: &[String],
) -> Result<Vec<String>, OAuthError> {
    let requested: Vec<&str> = requested.map_or_else(Vec::new, |r| r.split_whitespace().collect());
    if requested.is_empty() {
        return if allowed.is_empty() {
            Err(invalid_scope("this client is allowed no scopes"))
        } else {
            Ok(allowed.to_vec())
        };
    }
    let mut out: Vec<String> = Vec::new();
    for s in requested {
        if !allowed.iter().any(|a| a == s) {
            return Err(invalid_scope(
                "a requested scope is not among the scopes this client is allowed",
            ));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    Ok(out)
}

// ----- client assertions -----

/// What a checked assertion yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    pub client_id: String,
    pub jti: String,
    /// Until when its `jti` must be remembered: past the last instant the assertion is
    /// accepted ([`accepted_until`]) by [`JTI_MARGIN_SECS`].
    pub remember_until: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
    jti: Option<String>,
}

/// The algorithm a registered key is for: from its type and curve, which its `alg` (if
/// given) must agree with; `None` for keys that may not sign assertions (`use` other than
/// `sig`, symmetric keys, unsupported curves or algorithms).
pub fn key_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => Algorithm::ES384,
        AlgorithmParameters::RSA(_) => Algorithm::RS384,
        _ => return None,
    };
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    match jwk.common.key_algorithm {
        None => Some(by_type),
        Some(declared) if declared == KeyAlgorithm::from(by_type) => Some(by_type),
        Some(_) => None,
    }
}

/// The last instant at which an assertion expiring at `exp` (seconds, possibly fractional)
/// is accepted: `exp` plus the clock skew tolerated, to the millisecond. The acceptance
/// check and the `jti` memory both derive from this one instant and the same `now`.
pub fn accepted_until(exp: f64) -> DateTime<Utc> {
    let exp_ms = (exp * 1000.0).floor();
    let ms = if exp_ms.is_finite() {
        // Saturating: out-of-range values are refused elsewhere (the five-minute bound).
        (exp_ms as i64).saturating_add(CLOCK_SKEW_SECS * 1000)
    } else {
        0
    };
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Checks everything about a client assertion (RFC 7523 §3) that does not depend on the
/// client's registration, on its claims as they stand (the signature is checked after, by
/// [`verify_signature`], over these same bytes): the header `alg` is one we accept, `iss` =
/// `sub` (the client id), `aud` = the token endpoint, `exp` present, accepted at `now`
/// (until [`accepted_until`]) and at most five minutes ahead, `nbf`/`iat` not in the future,
/// `jti` present. These refusals may be specific: they tell nothing about who is registered.
pub fn check_assertion(
    assertion: &str,
    token_endpoint: &str,
    now: DateTime<Utc>,
) -> Result<VerifiedAssertion, OAuthError> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| {
        invalid_client("the client assertion is not a signed JWT with a supported alg")
    })?;
    if !SIGNING_ALGS.contains(&header.alg) {
        return Err(invalid_client(
            "the client assertion's alg must be EdDSA, ES384, RS384 or ES256",
        ));
    }
    let claims: AssertionClaims =
        jsonwebtoken::dangerous::insecure_decode_claims::<AssertionClaims>(assertion)
            .map_err(|_| invalid_client("the client assertion's claims are malformed"))?;
    let client_id = match (&claims.iss, &claims.sub) {
        (Some(iss), Some(sub)) if iss == sub && !iss.is_empty() => iss.clone(),
        _ => {
            return Err(invalid_client(
                "the client assertion's iss and sub must both be the client_id",
            ))
        }
    };
    let aud_ok = match &claims.aud {
        Some(Audience::One(a)) => a == token_endpoint,
        Some(Audience::Many(a)) => a.len() == 1 && a[0] == token_endpoint,
        None => false,
    };
    if !aud_ok {
        return Err(invalid_client(
            "the client assertion's aud must be this gateway's token endpoint URL",
        ));
    }
    let now_s = now.timestamp();
    let exp = claims
        .exp
        .ok_or(invalid_client("the client assertion needs exp"))?;
    let until = accepted_until(exp);
    if now > until {
        return Err(invalid_client("the client assertion has expired"));
    }
    if exp > (now_s + MAX_ASSERTION_LIFETIME_SECS + CLOCK_SKEW_SECS) as f64 {
        return Err(invalid_client(
            "the client assertion's exp must be at most 5 minutes ahead",
        ));
    }
    if claims
        .nbf
        .is_some_and(|nbf| nbf > (now_s + CLOCK_SKEW_SECS) as f64)
    {
        return Err(invalid_client(
            "the client assertion is not valid yet (nbf)",
        ));
    }
    if claims
        .iat
        .is_some_and(|iat| iat > (now_s + CLOCK_SKEW_SECS) as f64)
    {
        return Err(invalid_client(
            "the client assertion was issued in the future (iat)",
        ));
    }
    let jti = claims
        .jti
        .filter(|j| !j.is_empty() && j.len() <= 255)
        .ok_or(invalid_client(
            "the client assertion needs a jti (1 to 255 characters)",
        ))?;
    Ok(VerifiedAssertion {
        client_id,
        jti,
        remember_until: until + TimeDelta::seconds(JTI_MARGIN_SECS),
    })
}

/// Whether the assertion's signature verifies with one of the client's keys: the one its
/// header's `kid` names (if it names one) or any, of the type its `alg` needs.
pub fn verify_signature(assertion: &str, jwks: &JwkSet) -> bool {
    let Ok(header) = jsonwebtoken::decode_header(assertion) else {
        return false;
    };
    if !SIGNING_ALGS.contains(&header.alg) {
        return false;
    }
    let named: Vec<&Jwk> = match header.kid.as_deref() {
        Some(kid) => jwks.find(kid).into_iter().collect(),
        None => jwks.keys.iter().collect(),
    };
    let mut validation = Validation::new(header.alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    named
        .into_iter()
        .filter(|k| key_algorithm(k) == Some(header.alg))
        .filter_map(|k| DecodingKey::from_jwk(k).ok())
        .any(|key| jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation).is_ok())
}

/// Public keys nobody holds the private half of (generated once, the private halves
/// discarded): what an assertion naming an unknown, disabled or keyless client is verified
/// against, so refusing it costs about what refusing a registered client's does.
const DUMMY_EC_P256: (&str, &str) = (
    "spyNxW_HqjDZd9-_T7WPRAjYbAkl_oWDczC_G-vZhjY",
    "jcx4QHV2YJ6qHkyIpsNatZ3o8LEw8SIY2YbRtVWeI6o",
);
const DUMMY_EC_P384: (&str, &str) = (
    "aZekP0eDJoESwxfX5elohO1VAJJ7fc4-5JOcZVJIMLoTKm32jdx_VJQp6z0OPgN6",
    "aBAArPHcaZrHlKq_-RXrN5DeYKo5kB8j9jBgcYgHs6xn2NXjP37jDTzZNsGhSK3V",
);
const DUMMY_RSA_N: &str = "30UGMekKJQa2KMQ505dKxzpuN7kCQn17G-WuKZqgA8Z6td49y2sLbPqUzyBpkBIBFNBl0W7PVDwcTm_TuCgW2RRrO-iuE6PwfPrH-9diYQXYqVGAT8WTHcwm1nwd3lSgmeHLKv1c7wye9A2VNGKKKW0gmtX-BBzo4Sg3wE4Z8oMeJzBzOeTa-r3RBwEEB2xAgHBx2MM1etvYFTNUuvcymjr-PmFApYm6l3OsssuqMzRUze1H7_M7D78jFqUgFNKlu5mhU6kdzZSpNhkVDUScxZNcm8bGFzdJDZwB-T1LtB1iDoq3Fa6dLrhef1N1iw8KHubsOK6EPg5cUbgYPLEAYQ";

/// The dummy key set: one key per accepted algorithm (Ed25519 being the gateway's own
/// token key, whose private half never signs assertions of a client).
fn dummy_jwks(keys: &Keys) -> JwkSet {
    let x = b64url_encode(&keys.public_key());
    let set = serde_json::json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "x": x},
        {"kty": "EC", "crv": "P-256", "x": DUMMY_EC_P256.0, "y": DUMMY_EC_P256.1},
        {"kty": "EC", "crv": "P-384", "x": DUMMY_EC_P384.0, "y": DUMMY_EC_P384.1},
        {"kty": "RSA", "n": DUMMY_RSA_N, "e": "AQAB"},
    ]});
    serde_json::from_value(set).unwrap_or(JwkSet { keys: Vec::new() })
}

/// One signature verification whose outcome is thrown away (see [`dummy_jwks`]).
fn verify_signature_with_dummy(assertion: &str, keys: &Keys) {
    let _ = verify_signature(assertion, &dummy_jwks(keys));
}

/// Verifies a client assertion of `client_id` against its registered keys: the claims
/// ([`check_assertion`]), that they name `client_id`, then the signature
/// ([`verify_signature`]). Every failure that depends on the keys is the one
/// "client authentication failed". The `jti`'s single use is the caller's to enforce (the
/// store).
pub fn verify_assertion(
    assertion: &str,
    client_id: &str,
    jwks: &JwkSet,
    token_endpoint: &str,
    now: DateTime<Utc>,
) -> Result<VerifiedAssertion, OAuthError> {
    let checked = check_assertion(assertion, token_endpoint, now)?;
    if checked.client_id != client_id || !verify_signature(assertion, jwks) {
        return Err(invalid_client(AUTH_FAILED));
    }
    Ok(checked)
}

// ----- registration checks -----

/// Why a client registration was refused: a stable code and a fixed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub code: &'static str,
    pub message: &'static str,
}

const fn invalid(code: &'static str, message: &'static str) -> Invalid {
    Invalid { code, message }
}

const INVALID_JWKS_KEY: Invalid = invalid(
    "invalid_jwks",
    "each key must be a public OKP Ed25519, EC P-256 or P-384, or RSA (2048 bits or more) \
     signing key, with alg EdDSA, ES256, ES384 or RS384 (matching the key) if alg is given",
);

/// Checks a client before it is registered: id, name, scopes, credentials, keys.
pub fn check_new_client(c: &NewClient) -> Result<(), Invalid> {
    if !phr_schema::envelope::is_valid_id(&c.client_id) {
        return Err(invalid(
            "invalid_client_id",
            "client_id must be 1-64 characters of A-Z a-z 0-9 . _ : -",
        ));
    }
    if c.name.trim().is_empty()
        || c.name.chars().count() > 200
        || c.name.chars().any(char::is_control)
    {
        return Err(invalid(
            "invalid_name",
            "name must be 1-200 characters without control characters",
        ));
    }
    if c.allowed_scopes.is_empty()
        || c.allowed_scopes.len() > MAX_SCOPES
        || !c.allowed_scopes.iter().all(|s| is_valid_system_scope(s))
    {
        return Err(invalid(
            "invalid_scope",
            "scopes must be 1-50 SMART v2 system scopes, e.g. system/Observation.rs or \
             system/Observation.rs?code=http://loinc.org|55423-8",
        ));
    }
    if !c.secret && c.jwks.is_none() {
        return Err(invalid(
            "invalid_credentials",
            "a client needs a secret, a jwks, or both",
        ));
    }
    if let Some(j) = &c.jwks {
        check_jwks(j)?;
    }
    Ok(())
}

/// Whether `s` is a SMART v2 `system/` scope this gateway can honour:
/// `system/{Resource|*}.{perms}` ([`Scope::parse`]) with SMART v2 perms (an in-order
/// subset of `cruds`; registration takes no v1 `read`/`write`), optionally
/// narrowed on Observation by LOINC code (`?code=http://loinc.org|55423-8[,...]`) to codes of
/// the record types the gateway holds.
pub fn is_valid_system_scope(s: &str) -> bool {
    let Some(scope) = Scope::parse(s) else {
        return false;
    };
    let query_ok = match scope.query {
        None => true,
        Some(q) => scope.resource == Some("Observation") && loinc_query_types(q).is_some(),
    };
    scope.context == ScopeContext::System && !scope.v1 && query_ok
}

/// Checks a client's JWK Set and parses it: 1 to [`MAX_JWKS_KEYS`] public signing keys of a
/// supported type (see [`key_algorithm`]), well-formed, RSA of 2048 bits or more, `kid`s
/// unique. Private key members are refused outright.
pub fn check_jwks(v: &serde_json::Value) -> Result<JwkSet, Invalid> {
    let keys = v
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .filter(|_| v.as_object().is_some())
        .ok_or(invalid(
            "invalid_jwks",
            "jwks must be a JWK Set: {\"keys\": [...]}",
        ))?;
    if keys.is_empty() || keys.len() > MAX_JWKS_KEYS {
        return Err(invalid("invalid_jwks", "jwks must hold 1 to 10 keys"));
    }
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        let obj = k
            .as_object()
            .ok_or(invalid("invalid_jwks", "each key must be a JSON object"))?;
        if PRIVATE_MEMBERS.iter().any(|m| obj.contains_key(*m)) {
            return Err(invalid(
                "invalid_jwks",
                "jwks must hold public keys only (no d, p, q, dp, dq, qi, oth or k)",
            ));
        }
        let jwk: Jwk = serde_json::from_value(k.clone()).map_err(|_| INVALID_JWKS_KEY)?;
        let alg = key_algorithm(&jwk).ok_or(INVALID_JWKS_KEY)?;
        let len = |s: &str| b64_decode(s).map(|b| b.len());
        let material_ok = match &jwk.algorithm {
            AlgorithmParameters::OctetKeyPair(p) => len(&p.x) == Some(32),
            AlgorithmParameters::EllipticCurve(p) => {
                let want = if alg == Algorithm::ES384 { 48 } else { 32 };
                len(&p.x) == Some(want) && len(&p.y) == Some(want)
            }
            AlgorithmParameters::RSA(p) => {
                let n = b64_decode(&p.n).unwrap_or_default();
                let significant = n.iter().skip_while(|b| **b == 0).count();
                significant >= MIN_RSA_MODULUS_BYTES
                    && len(&p.e).is_some_and(|l| (1..=8).contains(&l))
            }
            _ => false,
        };
        if !material_ok || DecodingKey::from_jwk(&jwk).is_err() {
            return Err(INVALID_JWKS_KEY);
        }
        if let Some(kid) = &jwk.common.key_id {
            if out
                .iter()
                .any(|o: &Jwk| o.common.key_id.as_deref() == Some(kid.as_str()))
            {
                return Err(invalid("invalid_jwks", "key ids (kid) must be unique"));
            }
        }
        out.push(jwk);
    }
    Ok(JwkSet { keys: out })
}

// ----- discovery -----

/// The gateway's token-signing public key as a JWK Set (what resource servers verify
/// access tokens with).
pub fn gateway_jwks(keys: &Keys) -> serde_json::Value {
    serde_json::json!({"keys": [{
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url_encode(&keys.public_key()),
        "kid": keys.kid(),
        "alg": "EdDSA",
        "use": "sig",
    }]})
}

/// `/.well-known/smart-configuration` (SMART App Launch v2, Backend Services).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SmartConfiguration {
    pub issuer: String,
    pub jwks_uri: String,
    pub token_endpoint: String,
    pub grant_types_supported: Vec<String>,
    pub token_endpoint_auth_methods_supported: Vec<String>,
    pub token_endpoint_auth_signing_alg_values_supported: Vec<String>,
    pub scopes_supported: Vec<String>,
    pub capabilities: Vec<String>,
    pub response_types_supported: Vec<String>,
}

/// The discovery document, every URL absolute from the issuer.
pub fn smart_configuration(issuer: &str) -> SmartConfiguration {
    let base = issuer.trim_end_matches('/');
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
    let mut scopes = vec!["system/Observation.rs".to_owned()];
    scopes.extend(RecordType::ALL.iter().map(|t| {
        format!(
            "system/Observation.rs?code={}|{}",
            phr_schema::fhir::LOINC_SYSTEM,
            t.loinc().code
        )
    }));
    SmartConfiguration {
        issuer: issuer.to_owned(),
        jwks_uri: format!("{base}{JWKS_PATH}"),
        token_endpoint: token_endpoint(issuer),
        grant_types_supported: strings(&[GRANT_CLIENT_CREDENTIALS]),
        token_endpoint_auth_methods_supported: strings(&AUTH_METHODS),
        token_endpoint_auth_signing_alg_values_supported: strings(&[
            "EdDSA", "ES384", "RS384", "ES256",
        ]),
        scopes_supported: scopes,
        capabilities: strings(&[
            "client-confidential-asymmetric",
            "client-confidential-symmetric",
        ]),
        response_types_supported: Vec::new(),
    }
}

// ----- encodings -----

/// Base64url without padding (RFC 7515 §2).
pub fn b64url_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64 in either alphabet (standard or URL-safe, even mixed), padded or not, as
/// clients send it in Basic credentials and JWKs.
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine as _;
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    let standard = s.trim_end_matches('=').replace('-', "+").replace('_', "/");
    LENIENT.decode(standard).ok()
}

/// Decodes one `application/x-www-form-urlencoded` value (`+` is a space, `%XX` a byte).
fn form_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{json, Value};

    const ISSUER: &str = "https://gw.test";
    const CLIENT: &str = "phr-co";

    // Test-only keys, generated with openssl for these tests: P-384 and P-256 (PKCS#8 DER)
    // and RSA 2048 (PKCS#1 DER), base64.
    const P384_PKCS8: &str = "MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDD5U465tk4Wdwun9VosFBPPZxyMFyUuyP/VmmHYJWyiNTudMu/IXlgCra0eXLEfn7ehZANiAAT/UA/z5vMWOndF0jzF6IO8t822up0YczLUA7RqF0724yDX7a3H4Ry0eABYIGKpkpHEj7nNvebG1wAtGHZ8FYkWjg4tTZEWIe9IR15jItqV5wJHYfDjOXFDBhVe69C+gFk=";
    const P256_PKCS8: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQguhpPqzD6A2bVAtPW0WAQ9i+flqEVOXoTtC2GeW898GOhRANCAAR8j46lsSZBAtmN1nDq5ITyn3fGgKnWsojkczdd5P5B+fFHHNbOE+j8tzQv2KTpVZg8jIp/a0Fdaq84R3zbL5xb";
    const RSA2048_PKCS1: &str = "MIIEoQIBAAKCAQEAmBpe+yjhi0r+X8e/grmygNJG4kzSTG4MJ3FRNymTdl01/rQeUS6fuD97ux/HQPQToFHL485rZ9mGRB+5n3dr6v8erCnTNr/K4R1L4ChFHRCByoMzrUzYwhozUK/aKVaiRL8xPQuqCNj2i6SqES607fCNc+qnlP//j1sRwPDwcecaROYexRZ7+LNgQjepBD3wcMaGxrpC0xy9V68NXgoBrQ4p+/WJXpn2DSliBHz+vjzMKTYgHNGB+RqBzdDBNuVcUkYKb+UoHoasPWPJw/jAl0MRRoPmz4qhWDyubfF6oYZraYH2+1OEC9ptWVFF7UbJVCz9BiYSl9xZHgZz4CP2mQIDAQABAoH/FNxsnD7GPo1f5DTWgRdouV7IWghoJL4Pl1lIrdZbRsQso6XXnxHiZEZQsgQbiM0NckTiI7G6Jdl2yag66aQiDIq4HAEuveHJDfqE31X768etIeBq/SDiYNk3FBLRZ0vP2Swm6f+TGaOLuymFDUgFT7l1dDeeUphYAt+XHfu0xbFhGp07xDAce1pJbGC5HHiAupnGjln7f7ApyGuvXHSmbJzpAe2tVCSYPqTCoSvaBPdAsXzZxIBTsgaq+hIMUvK3f7FpBIhD0oKWIlR3nopPTgyO04IZVjIb2vtw5coOr5g3YI4yuWPwe3uTF2Fpa3yzZMxRx422zeabtLONB7jxAoGBAMlhNRTwodKq6NyXVDxbr8rjxDICRPbJvGhotMSzfq2tWLVUGkX/sC/Qlbp8MTMRosd+ljH2ova+ie2t0aekNgkfhCUzdfCtXX5fVr70GPNIP5dQ6xDYMCgwmGTy3neyUK6NT2Rjw5Xxgd+WHgLxgJJsfHxFzXF4mfoLu1c4l9R7AoGBAMFbozyGCp3we/+hLoI06hMVKmZB6UUG6uXAmBZotV9n6up1/scqwdOc3Vb1WhwbTLFHQGt6TKO3/bouDk9nxoVoenUeEZyNiQjD7R0BPKxpj9GNazRC+g93Lkcd2dIaQPtyHV2D4PchzMwB6E1ZrQf57OxWVdc4wCx4itwud0b7AoGAfHMzb7Zp+xwd/j0TFJ4A3Jy3ocQfRHhVlBypIipfLgvDl4PbHMkv48y+y1l2uj264BiNz2DBQ0VrTdQujbCAqFCuxKKxz0QEVFWs8SM+zBIpImUib+16jUvC0hf5ffVXwReZKcwxkdeHUFqgP2dp8pNStyYYGXjTh2B6rSNPSUMCgYA9GVzikiSmtcgpBeCxalERCJ4mQ+uXUVFGmm40no+5fxffULvaaatn1+ilQtBfk0zPtAkqLTIshcZaX5VMCCnWHCad/YtpIdxMdcTmZm6quIymlf5rPELSQkHQXSFoX71q9ytKUpLy5K5XRL8IOi8QFyyDneBwKtGm+8w9OT2dowKBgQCPUs2p4yCyvC7S4NPPEHM5ay8Lqfsg6tm3NNZXveFsbfsDdkELd59hjtSAy4tz9EpriVyGaWkmVMguwunLUfSrfMUjB97feMDf6WjbrZheplSItAAyIAiBr8Ble4VwTvQsoSmurIygxFpg3DgWUISpy6fmluYa4+tAzh6Obk5dTQ==";

    struct TestKey {
        key: EncodingKey,
        alg: Algorithm,
        kid: &'static str,
        jwk: Value,
    }

    fn ed_key(kid: &'static str) -> (TestKey, [u8; 32]) {
        let sk = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let der = sk.to_pkcs8_der().unwrap();
        let public = sk.verifying_key().to_bytes();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(&public),
                         "kid": kid, "alg": "EdDSA", "use": "sig"});
        let key = EncodingKey::from_ed_der(der.as_bytes());
        (
            TestKey {
                key,
                alg: Algorithm::EdDSA,
                kid,
                jwk,
            },
            public,
        )
    }

    fn fixed_key(der_b64: &str, alg: Algorithm, kid: &'static str) -> TestKey {
        let der = b64_decode(der_b64).unwrap();
        let key = if alg == Algorithm::RS384 {
            EncodingKey::from_rsa_der(&der)
        } else {
            EncodingKey::from_ec_der(&der)
        };
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, alg).unwrap()).unwrap();
        jwk["kid"] = kid.into();
        TestKey { key, alg, kid, jwk }
    }

    fn jwks(keys: &[&TestKey]) -> JwkSet {
        check_jwks(&json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}))
            .unwrap()
    }

    fn claims(now: DateTime<Utc>) -> Value {
        let t = now.timestamp();
        json!({"iss": CLIENT, "sub": CLIENT, "aud": token_endpoint(ISSUER), "exp": t + 240,
               "iat": t, "jti": uuid::Uuid::new_v4().to_string()})
    }

    fn sign_with(k: &TestKey, kid: Option<&str>, claims: &Value) -> String {
        let mut h = Header::new(k.alg);
        h.kid = kid.map(str::to_owned);
        h.typ = Some("JWT".into());
        jsonwebtoken::encode(&h, claims, &k.key).unwrap()
    }

    fn sign(k: &TestKey, claims: &Value) -> String {
        sign_with(k, Some(k.kid), claims)
    }

    fn verify(
        assertion: &str,
        set: &JwkSet,
        now: DateTime<Utc>,
    ) -> Result<VerifiedAssertion, OAuthError> {
        verify_assertion(assertion, CLIENT, set, &token_endpoint(ISSUER), now)
    }

    fn refused(r: Result<VerifiedAssertion, OAuthError>) -> &'static str {
        let e = r.expect_err("refused");
        assert_eq!(e.code, OAuthErrorCode::InvalidClient);
        e.description
    }

    #[test]
    fn every_supported_algorithm_verifies() {
        let now = Utc::now();
        let (ed, _) = ed_key("ed");
        let es384 = fixed_key(P384_PKCS8, Algorithm::ES384, "es384");
        let es256 = fixed_key(P256_PKCS8, Algorithm::ES256, "es256");
        let rs384 = fixed_key(RSA2048_PKCS1, Algorithm::RS384, "rs384");
        let set = jwks(&[&ed, &es384, &es256, &rs384]);
        for k in [&ed, &es384, &es256, &rs384] {
            let c = claims(now);
            let v = verify(&sign(k, &c), &set, now).unwrap_or_else(|e| panic!("{:?}: {e}", k.alg));
            assert_eq!(v.client_id, CLIENT);
            assert_eq!(v.jti, c["jti"].as_str().unwrap());
            assert_eq!(
                v.remember_until.timestamp(),
                c["exp"].as_i64().unwrap() + 30 + 60,
                "exp + 30 s of skew + a minute of margin"
            );
            // Without a kid, every key of the right type is tried.
            assert!(verify(&sign_with(k, None, &claims(now)), &set, now).is_ok());
        }
        // An array aud holding exactly the endpoint is accepted too.
        let mut c = claims(now);
        c["aud"] = json!([token_endpoint(ISSUER)]);
        assert!(verify(&sign(&ed, &c), &set, now).is_ok());
    }

    #[test]
    fn claims_are_checked() {
        let now = Utc::now();
        let t = now.timestamp();
        let (ed, _) = ed_key("ed");
        let set = jwks(&[&ed]);
        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = claims(now);
            f(&mut c);
            verify(&sign(&ed, &c), &set, now)
        };
        for (why, f) in [
            (
                "wrong aud",
                &(|c: &mut Value| c["aud"] = json!("https://gw.test/other")) as &dyn Fn(&mut Value),
            ),
            ("aud with a trailing slash", &|c| {
                c["aud"] = json!("https://gw.test/oauth/token/")
            }),
            ("aud array of two", &|c| {
                c["aud"] = json!([token_endpoint(ISSUER), "https://else"])
            }),
            ("no aud", &|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            ("wrong iss", &|c| c["iss"] = json!("other-co")),
            ("wrong sub", &|c| c["sub"] = json!("other-co")),
            ("no sub", &|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
            ("no exp", &|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            ("expired", &|c| c["exp"] = json!(t - 120)),
            ("exp 10 min ahead", &|c| c["exp"] = json!(t + 600)),
            ("exp 6 min ahead", &|c| c["exp"] = json!(t + 360)),
            ("no jti", &|c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
            ("empty jti", &|c| c["jti"] = json!("")),
            ("jti not a string", &|c| c["jti"] = json!(7)),
            ("nbf ahead", &|c| c["nbf"] = json!(t + 120)),
            ("iat ahead", &|c| c["iat"] = json!(t + 120)),
        ] {
            assert!(with(f).is_err(), "{why} was accepted");
        }
        assert!(refused(with(&|c| c["aud"] = json!("x"))).contains("aud"));
        assert!(refused(with(&|c| c["exp"] = json!(t - 120))).contains("expired"));
        assert!(refused(with(&|c| c["exp"] = json!(t + 600))).contains("5 minutes"));
        assert!(refused(with(&|c| c["iss"] = json!("x"))).contains("iss and sub"));
        assert!(refused(with(&|c| {
            c.as_object_mut().unwrap().remove("jti");
        }))
        .contains("jti"));
        // Within the clock skew tolerated, and exactly five minutes ahead, are fine.
        assert!(with(&|c| c["exp"] = json!(t - 10)).is_ok());
        assert!(with(&|c| c["exp"] = json!(t + 300)).is_ok());
        assert!(with(&|c| c["nbf"] = json!(t - 10)).is_ok());
    }

    #[test]
    fn none_hmac_unknown_kids_and_foreign_keys_are_refused() {
        let now = Utc::now();
        let (ed, public) = ed_key("ed");
        let es384 = fixed_key(P384_PKCS8, Algorithm::ES384, "es384");
        let set = jwks(&[&ed, &es384]);
        let c = claims(now);

        // alg none: no signature at all.
        let none = format!(
            "{}.{}.",
            b64url_encode(br#"{"alg":"none","typ":"JWT","kid":"ed"}"#),
            b64url_encode(c.to_string().as_bytes())
        );
        assert!(refused(verify(&none, &set, now)).contains("alg"));
        // HS256 keyed with the public key (raw, and as the JWK's x): algorithm confusion.
        for secret in [
            public.to_vec(),
            ed.jwk["x"].as_str().unwrap().as_bytes().to_vec(),
        ] {
            let hmac = TestKey {
                key: EncodingKey::from_secret(&secret),
                alg: Algorithm::HS256,
                kid: "ed",
                jwk: Value::Null,
            };
            assert!(refused(verify(&sign(&hmac, &c), &set, now)).contains("alg"));
            assert!(refused(verify(&sign_with(&hmac, None, &c), &set, now)).contains("alg"));
        }
        // Whatever depends on the registered keys is the one uniform refusal (it must not
        // tell which keys, or whether any, are registered):
        // a kid the client never registered,
        let (stranger, _) = ed_key("stranger");
        assert_eq!(
            refused(verify(&sign(&stranger, &c), &set, now)),
            AUTH_FAILED
        );
        // the kid of a registered key, signed by another,
        assert_eq!(
            refused(verify(&sign_with(&stranger, Some("ed"), &c), &set, now)),
            AUTH_FAILED
        );
        assert_eq!(
            refused(verify(&sign_with(&stranger, None, &c), &set, now)),
            AUTH_FAILED
        );
        // a kid whose key is of another type than the header's alg,
        assert_eq!(
            refused(verify(&sign_with(&ed, Some("es384"), &c), &set, now)),
            AUTH_FAILED
        );
        // an ES256 signature where only an ES384 key is registered,
        let es256 = fixed_key(P256_PKCS8, Algorithm::ES256, "es256");
        assert_eq!(
            refused(verify(&sign_with(&es256, None, &c), &jwks(&[&es384]), now)),
            AUTH_FAILED
        );
        // and tampered claims.
        let good = sign(&ed, &c);
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let mut forged = c.clone();
        forged["exp"] = json!(now.timestamp() + 200);
        parts[1] = b64url_encode(forged.to_string().as_bytes());
        assert_eq!(refused(verify(&parts.join("."), &set, now)), AUTH_FAILED);
        assert!(verify(&good, &set, now).is_ok());
        assert!(refused(verify("not-a-jwt", &set, now)).contains("JWT"));
    }

    #[test]
    fn the_dummy_keys_are_one_valid_key_per_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::load_or_create(dir.path(), ISSUER, "phr-api").unwrap();
        let set = dummy_jwks(&keys);
        let algs: Vec<_> = set.keys.iter().map(key_algorithm).collect();
        assert_eq!(
            algs,
            [
                Some(Algorithm::EdDSA),
                Some(Algorithm::ES256),
                Some(Algorithm::ES384),
                Some(Algorithm::RS384)
            ]
        );
        check_jwks(&serde_json::to_value(&set).unwrap()).unwrap();
        // Each is really used: a made-up signature of each alg is refused, not skipped.
        let (ed, _) = ed_key("x");
        assert!(!verify_signature(&sign(&ed, &claims(Utc::now())), &set));
    }

    #[test]
    fn jwks_are_checked_at_registration() {
        let (ed, _) = ed_key("ed");
        let es384 = fixed_key(P384_PKCS8, Algorithm::ES384, "es384");
        let rs384 = fixed_key(RSA2048_PKCS1, Algorithm::RS384, "rs");
        assert_eq!(
            check_jwks(&json!({"keys": [ed.jwk, es384.jwk, rs384.jwk]}))
                .unwrap()
                .keys
                .len(),
            3
        );
        let mut no_alg = ed.jwk.clone();
        no_alg.as_object_mut().unwrap().remove("alg");
        assert!(check_jwks(&json!({"keys": [no_alg]})).is_ok());
        let with = |f: &dyn Fn(&mut Value)| {
            let mut k = ed.jwk.clone();
            f(&mut k);
            check_jwks(&json!({"keys": [k]}))
        };
        for (why, bad) in [
            ("not a set", json!([ed.jwk])),
            ("empty", json!({"keys": []})),
            (
                "eleven keys",
                json!({"keys": vec![no_alg_key(&ed.jwk); 11]}),
            ),
            ("duplicate kids", json!({"keys": [ed.jwk, ed.jwk]})),
            (
                "hmac",
                json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]}),
            ),
            (
                "small rsa",
                json!({"keys": [{"kty": "RSA", "n": b64url_encode(&[0xab; 128]), "e": "AQAB"}]}),
            ),
            (
                "rsa pss",
                json!({"keys": [{"kty": "RSA", "alg": "PS256", "n": rs384.jwk["n"], "e": "AQAB"}]}),
            ),
            (
                "p-521",
                json!({"keys": [{"kty": "EC", "crv": "P-521", "x": es384.jwk["x"], "y": es384.jwk["y"]}]}),
            ),
            (
                "p-256 named P-384",
                json!({"keys": [{"kty": "EC", "crv": "P-384",
                "x": b64url_encode(&[1; 32]), "y": b64url_encode(&[1; 32])}]}),
            ),
        ] {
            assert!(check_jwks(&bad).is_err(), "{why} was accepted");
        }
        for (why, f) in [
            (
                "private",
                &(|k: &mut Value| k["d"] = json!("AAAA")) as &dyn Fn(&mut Value),
            ),
            ("enc use", &|k| k["use"] = json!("enc")),
            ("mismatched alg", &|k| k["alg"] = json!("ES256")),
            ("short x", &|k| k["x"] = json!("AAAA")),
            ("not base64", &|k| k["x"] = json!("!!!")),
            ("other curve", &|k| k["crv"] = json!("X25519")),
        ] {
            assert!(with(f).is_err(), "{why} was accepted");
        }
    }

    fn no_alg_key(jwk: &Value) -> Value {
        let mut k = jwk.clone();
        k.as_object_mut().unwrap().remove("kid");
        k
    }

    #[test]
    fn system_scopes_only() {
        for ok in [
            "system/Observation.rs",
            "system/Observation.r",
            "system/*.rs",
            "system/Patient.cruds",
            "system/Observation.rs?code=http://loinc.org|55423-8",
            "system/Observation.rs?code=http://loinc.org|93832-4,http://loinc.org|8867-4",
        ] {
            assert!(is_valid_system_scope(ok), "{ok}");
        }
        for bad in [
            "",
            "patient/Observation.rs",
            "user/Observation.rs",
            "system/Observation",
            "system/Observation.",
            "system/Observation.sr",
            "system/Observation.rr",
            "system/Observation.read",
            "system/observation.rs",
            "system/Observation.rs?code=http://loinc.org|1234-5",
            "system/Observation.rs?code=http://snomed.info/sct|55423-8",
            "system/Observation.rs?category=vital-signs",
            "system/Patient.rs?code=http://loinc.org|55423-8",
            "system/Observation.rs system/Patient.rs",
            "phr:admin",
            "openid",
        ] {
            assert!(!is_valid_system_scope(bad), "{bad}");
        }
        assert_eq!(
            loinc_query_types("code=http://loinc.org|93832-4,http://loinc.org|8867-4"),
            Some(vec![RecordType::SleepEpisode, RecordType::HeartRate])
        );
    }

    #[test]
    fn requested_scopes_must_be_allowed() {
        let allowed = vec![
            "system/Observation.rs?code=http://loinc.org|55423-8".to_owned(),
            "system/Patient.r".to_owned(),
        ];
        assert_eq!(grant_scopes(None, &allowed).unwrap(), allowed);
        assert_eq!(grant_scopes(Some("  "), &allowed).unwrap(), allowed);
        assert_eq!(
            grant_scopes(Some("system/Patient.r system/Patient.r"), &allowed).unwrap(),
            ["system/Patient.r"]
        );
        for bad in [
            "system/Observation.rs",
            "system/*.rs",
            "patient/Observation.rs",
        ] {
            assert_eq!(
                grant_scopes(Some(bad), &allowed).unwrap_err().code,
                OAuthErrorCode::InvalidScope
            );
        }
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let header = |s: &str| format!("Basic {}", b64url_encode(s.as_bytes()));
        let b = parse_basic(&header("co%3A1:s%2Bx+y")).unwrap();
        assert_eq!((b.client_id.as_str(), b.secret.as_str()), ("co:1", "s+x y"));
        assert!(!format!("{b:?}").contains("s+x"));
        let std_b64 = "basic cGhyLWNvOnNlY3JldA==";
        assert_eq!(parse_basic(std_b64).unwrap().client_id, "phr-co");
        assert!(is_basic("Basic x") && !is_basic("Bearer x") && !is_basic("Bas"));
        assert_eq!(parse_basic(&header("no-colon")), None);
        assert_eq!(parse_basic(&header("a:%zz")), None);
        assert_eq!(parse_basic("Basic ***"), None);
        assert_eq!(b64_decode("AQAB"), Some(vec![1, 0, 1]));
        assert_eq!(b64url_encode(&[0xfb, 0xff]), "-_8");
        assert_eq!(b64_decode("-_8"), Some(vec![0xfb, 0xff]));
    }

    mod token_endpoint {
        use super::*;
        use crate::auth::Principal;

        struct Setup {
            _dir: tempfile::TempDir,
            store: Store,
            keys: Keys,
            ed: TestKey,
            secret: String,
        }

        fn setup() -> Setup {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("phr.sqlite")).unwrap();
            let keys = Keys::load_or_create(&dir.path().join("keys"), ISSUER, "phr-api").unwrap();
            let (ed, _) = ed_key("ed");
            store
                .add_client(&NewClient {
                    client_id: CLIENT.into(),
                    name: "PHR Co".into(),
                    allowed_scopes: vec![
                        "system/Observation.rs?code=http://loinc.org|55423-8".into(),
                        "system/Observation.rs".into(),
                    ],
                    jwks: Some(json!({"keys": [ed.jwk]})),
                    secret: false,
                })
                .unwrap();
            let secret = store
                .add_client(&NewClient {
                    client_id: "secret-co".into(),
                    name: "Secret Co".into(),
                    allowed_scopes: vec!["system/Observation.rs".into()],
                    jwks: None,
                    secret: true,
                })
                .unwrap()
                .unwrap()
                .expose()
                .to_owned();
            Setup {
                _dir: dir,
                store,
                keys,
                ed,
                secret,
            }
        }

        fn jwt_form(assertion: String, scope: Option<&str>) -> TokenForm {
            TokenForm {
                grant_type: Some(GRANT_CLIENT_CREDENTIALS.into()),
                scope: scope.map(Into::into),
                client_assertion_type: Some(CLIENT_ASSERTION_TYPE_JWT.into()),
                client_assertion: Some(assertion),
                ..TokenForm::default()
            }
        }

        fn refusal(r: Result<TokenResponse, Failure>) -> OAuthError {
            match r {
                Err(Failure::Refused(e)) => e,
                other => panic!("expected a refusal, got {other:?}"),
            }
        }

        #[test]
        fn private_key_jwt_gets_a_token_once_per_jti() {
            let s = setup();
            let now = Utc::now();
            let form = jwt_form(
                sign(&s.ed, &claims(now)),
                Some("system/Observation.rs?code=http://loinc.org|55423-8"),
            );
            let t = issue_token(&s.store, &s.keys, &form, None, now).unwrap();
            assert_eq!((t.token_type.as_str(), t.expires_in), ("Bearer", 300));
            assert_eq!(
                t.scope,
                "system/Observation.rs?code=http://loinc.org|55423-8"
            );
            let claims = s.keys.verify(&t.access_token).unwrap();
            assert_eq!(
                (claims.sub.as_str(), claims.exp - claims.iat),
                (CLIENT, 300)
            );
            let p = Principal::from_claims(claims);
            assert!(p.has_scope("system", "Observation", 'r'));
            assert_eq!(p.allowed_types(), Some(vec![RecordType::StepCount]));

            let again = refusal(issue_token(&s.store, &s.keys, &form, None, now));
            assert_eq!(
                (again.code, again.description),
                (OAuthErrorCode::InvalidClient, ASSERTION_USED)
            );

            // Default scope: everything the client is allowed.
            let t = issue_token(
                &s.store,
                &s.keys,
                &jwt_form(sign(&s.ed, &super::claims(now)), None),
                None,
                now,
            )
            .unwrap();
            assert_eq!(
                t.scope,
                "system/Observation.rs?code=http://loinc.org|55423-8 system/Observation.rs"
            );
            // A scope the client was not allowed burns nothing but gets nothing.
            let e = refusal(issue_token(
                &s.store,
                &s.keys,
                &jwt_form(sign(&s.ed, &super::claims(now)), Some("system/Patient.r")),
                None,
                now,
            ));
            assert_eq!(e.code, OAuthErrorCode::InvalidScope);
            // A client_id that is not the assertion's.
            let mut form = jwt_form(sign(&s.ed, &super::claims(now)), None);
            form.client_id = Some("secret-co".into());
            assert_eq!(
                refusal(issue_token(&s.store, &s.keys, &form, None, now)).code,
                OAuthErrorCode::InvalidClient
            );
            // Disabled: no more tokens.
            s.store.disable_client(CLIENT, now).unwrap();
            let e = refusal(issue_token(
                &s.store,
                &s.keys,
                &jwt_form(sign(&s.ed, &super::claims(now)), None),
                None,
                now,
            ));
            assert_eq!(e.code, OAuthErrorCode::InvalidClient);
        }

        /// An assertion is accepted until exactly `exp` + 30 s; its `jti` must be refused as
        /// a replay at every instant up to then, and remembered past it. Time is injected:
        /// the first use and each replay get their own `now`.
        #[test]
        fn a_jti_is_remembered_for_the_whole_acceptance_window() {
            let s = setup();
            let t0 = DateTime::from_timestamp(1_900_000_000, 0).unwrap();
            let exp = t0.timestamp() + 120;
            let mut c = super::claims(t0);
            c["exp"] = json!(exp);
            let form = jwt_form(sign(&s.ed, &c), None);
            issue_token(&s.store, &s.keys, &form, None, t0).unwrap();
            let at = |ms: i64| DateTime::from_timestamp_millis(exp * 1000 + ms).unwrap();
            // The last accepted instant is exp + 30 s exactly; a millisecond later it is
            // expired.
            assert_eq!(
                accepted_until(exp as f64),
                at(30_000),
                "the acceptance window"
            );
            for ms in [0, 29_000, 29_999, 30_000] {
                let e = refusal(issue_token(&s.store, &s.keys, &form, None, at(ms)));
                assert_eq!(
                    (e.code, e.description),
                    (OAuthErrorCode::InvalidClient, ASSERTION_USED),
                    "replayed at exp + {ms} ms"
                );
            }
            for ms in [30_001, 30_500, 30_999, 31_000, 60_000] {
                let e = refusal(issue_token(&s.store, &s.keys, &form, None, at(ms)));
                assert_eq!(
                    (e.code, e.description),
                    (
                        OAuthErrorCode::InvalidClient,
                        "the client assertion has expired"
                    ),
                    "replayed at exp + {ms} ms"
                );
            }
            // Another client's token request at the boundary purges nothing still needed:
            // the jti is still remembered at the last accepted instant.
            let mut c2 = super::claims(t0);
            c2["exp"] = json!(exp);
            let form2 = jwt_form(sign(&s.ed, &c2), None);
            issue_token(&s.store, &s.keys, &form2, None, at(-1)).unwrap();
            let e = refusal(issue_token(&s.store, &s.keys, &form2, None, at(30_000)));
            assert_eq!(e.description, ASSERTION_USED);
            // A fractional exp: accepted until exp + 30 s to the millisecond, no later.
            let mut c3 = super::claims(t0);
            c3["exp"] = json!(exp as f64 + 0.25);
            let form3 = jwt_form(sign(&s.ed, &c3), None);
            issue_token(&s.store, &s.keys, &form3, None, at(30_250)).unwrap();
            let e = refusal(issue_token(&s.store, &s.keys, &form3, None, at(30_250)));
            assert_eq!(e.description, ASSERTION_USED);
            let e = refusal(issue_token(&s.store, &s.keys, &form3, None, at(30_251)));
            assert_eq!(e.description, "the client assertion has expired");
        }

        /// Unknown, disabled, keyless and wrongly-keyed clients get the same refusal, by
        /// secret and by assertion.
        #[test]
        fn refusals_do_not_tell_registered_clients_from_unknown_ones() {
            let s = setup();
            let now = Utc::now();
            s.store
                .add_client(&NewClient {
                    client_id: "gone-co".into(),
                    name: "Gone Co".into(),
                    allowed_scopes: vec!["system/Observation.rs".into()],
                    jwks: Some(json!({"keys": [s.ed.jwk]})),
                    secret: true,
                })
                .unwrap();
            s.store.disable_client("gone-co", now).unwrap();
            let (stranger, _) = ed_key("ed");
            let assertion_for = |client: &str, key: &TestKey| {
                let mut c = super::claims(now);
                c["iss"] = json!(client);
                c["sub"] = json!(client);
                sign(key, &c)
            };
            let mut refusals = Vec::new();
            // private_key_jwt: unknown id, known id signed by a stranger's key, a disabled
            // client with its right key, a client with no keys (secret only).
            for (client, key) in [
                ("nobody-co", &s.ed),
                (CLIENT, &stranger),
                ("gone-co", &s.ed),
                ("secret-co", &s.ed),
            ] {
                let form = jwt_form(assertion_for(client, key), None);
                refusals.push((
                    client,
                    refusal(issue_token(&s.store, &s.keys, &form, None, now)),
                ));
            }
            // client_secret_post: unknown, wrong secret, disabled, no secret registered.
            for client in ["nobody-co", "secret-co", "gone-co", CLIENT] {
                let form = TokenForm {
                    grant_type: Some(GRANT_CLIENT_CREDENTIALS.into()),
                    client_id: Some(client.into()),
                    client_secret: Some("wrong".into()),
                    ..TokenForm::default()
                };
                refusals.push((
                    client,
                    refusal(issue_token(&s.store, &s.keys, &form, None, now)),
                ));
            }
            for (client, e) in &refusals {
                assert_eq!(
                    (e.code, e.description),
                    (
                        OAuthErrorCode::InvalidClient,
                        "client authentication failed"
                    ),
                    "{client}"
                );
            }
        }

        #[test]
        fn secrets_by_basic_or_post() {
            let s = setup();
            let now = Utc::now();
            let basic = BasicCredentials {
                client_id: "secret-co".into(),
                secret: s.secret.clone(),
            };
            let form = TokenForm {
                grant_type: Some("client_credentials".into()),
                ..TokenForm::default()
            };
            let t = issue_token(&s.store, &s.keys, &form, Some(&basic), now).unwrap();
            assert_eq!(t.scope, "system/Observation.rs");
            let post = TokenForm {
                client_id: Some("secret-co".into()),
                client_secret: Some(s.secret.clone()),
                ..form.clone()
            };
            assert!(issue_token(&s.store, &s.keys, &post, None, now).is_ok());

            let wrong = BasicCredentials {
                secret: "wrong".into(),
                ..basic.clone()
            };
            let unknown = BasicCredentials {
                client_id: "nobody".into(),
                ..basic.clone()
            };
            // A JWT client has no secret.
            let jwt_client = BasicCredentials {
                client_id: CLIENT.into(),
                ..basic.clone()
            };
            for b in [&wrong, &unknown, &jwt_client] {
                let e = refusal(issue_token(&s.store, &s.keys, &form, Some(b), now));
                assert_eq!(
                    (e.code, e.description),
                    (OAuthErrorCode::InvalidClient, AUTH_FAILED)
                );
            }
            let cases: [(TokenForm, Option<&BasicCredentials>, OAuthErrorCode); 6] = [
                (
                    TokenForm {
                        grant_type: Some("password".into()),
                        ..post.clone()
                    },
                    None,
                    OAuthErrorCode::UnsupportedGrantType,
                ),
                (
                    TokenForm {
                        grant_type: None,
                        ..post.clone()
                    },
                    None,
                    OAuthErrorCode::InvalidRequest,
                ),
                (post.clone(), Some(&basic), OAuthErrorCode::InvalidRequest),
                (
                    TokenForm {
                        client_id: None,
                        ..post.clone()
                    },
                    None,
                    OAuthErrorCode::InvalidRequest,
                ),
                (form.clone(), None, OAuthErrorCode::InvalidClient),
                (
                    TokenForm {
                        scope: Some("system/Patient.r".into()),
                        ..post.clone()
                    },
                    None,
                    OAuthErrorCode::InvalidScope,
                ),
            ];
            for (f, b, code) in cases {
                assert_eq!(
                    refusal(issue_token(&s.store, &s.keys, &f, b, now)).code,
                    code,
                    "{f:?}"
                );
            }
            let mut typo = jwt_form("x.y.z".into(), None);
            typo.client_assertion_type = Some("urn:other".into());
            assert_eq!(
                refusal(issue_token(&s.store, &s.keys, &typo, None, now)).code,
                OAuthErrorCode::InvalidRequest
            );
            assert!(!format!("{post:?}").contains(&s.secret));
        }

        #[test]
        fn discovery_documents() {
            let s = setup();
            let c = smart_configuration("https://gw.test/");
            assert_eq!(c.token_endpoint, "https://gw.test/oauth/token");
            assert_eq!(c.jwks_uri, "https://gw.test/.well-known/jwks.json");
            assert!(!c.scopes_supported.is_empty());
            assert!(c.scopes_supported.iter().all(|s| is_valid_system_scope(s)));
            let jwks = gateway_jwks(&s.keys);
            assert_eq!(jwks["keys"][0]["kid"], s.keys.kid());
            let x = b64_decode(jwks["keys"][0]["x"].as_str().unwrap()).unwrap();
            assert_eq!(x, s.keys.public_key());
            // A token the gateway issued verifies with the published key.
            let set: JwkSet = serde_json::from_value(jwks).unwrap();
            let token = s
                .keys
                .issue("a", "", TimeDelta::minutes(1), Utc::now())
                .unwrap();
            let mut v = Validation::new(Algorithm::EdDSA);
            v.validate_aud = false;
            assert!(jsonwebtoken::decode::<Value>(
                &token,
                &DecodingKey::from_jwk(&set.keys[0]).unwrap(),
                &v
            )
            .is_ok());
        }
    }
}
