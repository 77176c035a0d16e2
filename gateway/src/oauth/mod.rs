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
//!
//! # Layout
//! - this module: the token request ([`issue_token`]), its errors, and the base64 codecs.
//! - [`client_auth`]: which client authentication a request uses; HTTP Basic credentials.
//! - [`assertions`]: RFC 7523 `private_key_jwt` assertions: claims, keys, signatures.
//! - [`registration`]: the checks a new client passes (scopes, JWK Set).
//! - [`scopes`]: which `system/` scopes a client may hold, and which a token gets.
//! - [`discovery`]: the gateway's JWK Set and `/.well-known/smart-configuration`.

mod assertions;
mod client_auth;
mod discovery;
mod registration;
mod scopes;
#[cfg(test)]
mod test_keys;

pub use assertions::*;
pub use client_auth::*;
pub use discovery::*;
pub use registration::*;
pub use scopes::*;

use chrono::{DateTime, TimeDelta, Utc};
use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Keys;
use crate::store::clients;
use crate::store::prelude::*;

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

impl From<crate::store::Error> for Failure {
    fn from(e: crate::store::Error) -> Self {
        Self::Internal(e.into())
    }
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

/// The token endpoint URL for `issuer` (what client assertions must name as `aud`).
pub fn token_endpoint(issuer: &str) -> String {
    format!("{}{TOKEN_PATH}", issuer.trim_end_matches('/'))
}

/// Serves a token request: checks the grant, authenticates the client, remembers the
/// assertion's `jti`, grants the scopes and issues the token. Blocking (store access).
pub fn issue_token(
    store: &dyn Backend,
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

// ----- encodings -----

pub use crate::auth::b64url_encode;

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

#[cfg(test)]
mod tests {
    use super::test_keys::{self, *};
    use super::*;
    use crate::auth::Principal;
    use crate::store::clients::NewClient;
    use phr_schema::RecordType;
    use serde_json::json;

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
            sign(&s.ed, &test_keys::claims(now)),
            Some("system/Observation.rs?code=http://loinc.org|55423-8"),
        );
        let t = issue_token(&s.store, &s.keys, &form, None, now).unwrap();
        assert_eq!((t.token_type.as_str(), t.expires_in), ("Bearer", 300));
        assert_eq!(
            t.scope,
            "system/Observation.rs?code=http://loinc.org|55423-8"
        );
        let claims = s.keys.verify(&t.access_token, now).unwrap();
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
            &jwt_form(sign(&s.ed, &test_keys::claims(now)), None),
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
            &jwt_form(
                sign(&s.ed, &test_keys::claims(now)),
                Some("system/Patient.r"),
            ),
            None,
            now,
        ));
        assert_eq!(e.code, OAuthErrorCode::InvalidScope);
        // A client_id that is not the assertion's.
        let mut form = jwt_form(sign(&s.ed, &test_keys::claims(now)), None);
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
            &jwt_form(sign(&s.ed, &test_keys::claims(now)), None),
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
        let mut c = test_keys::claims(t0);
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
        let mut c2 = test_keys::claims(t0);
        c2["exp"] = json!(exp);
        let form2 = jwt_form(sign(&s.ed, &c2), None);
        issue_token(&s.store, &s.keys, &form2, None, at(-1)).unwrap();
        let e = refusal(issue_token(&s.store, &s.keys, &form2, None, at(30_000)));
        assert_eq!(e.description, ASSERTION_USED);
        // A fractional exp: accepted until exp + 30 s to the millisecond, no later.
        let mut c3 = test_keys::claims(t0);
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
            let mut c = test_keys::claims(now);
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
}
