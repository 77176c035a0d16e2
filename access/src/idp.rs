//! Identity providers: the OpenID providers (`[[auth.providers]]`) the gateway trusts besides
//! its own key, for two things:
//!
//! - **Dashboard sign-in** (`phr_dashboards::oidc`): the authorization code flow with PKCE,
//!   `state` and `nonce`; this module builds the authorization request, redeems the code at
//!   the token endpoint and verifies the ID token ([`Provider::verify_id_token`]).
//! - **API access tokens** ([`Provider::verify_access_token`]): a bearer token whose `iss` is a
//!   provider with an `audience` is verified against that provider's keys and mapped to a
//!   [`Principal`]; what follows (scopes, consent, object checks, the disclosure log) is the
//!   same as for the gateway's own tokens.
//!
//! Rules (RFC 8725, OpenID Connect Core §3.1.3.7):
//! - Everything about a provider comes from its configuration and its discovery document
//!   (`{issuer}/.well-known/openid-configuration`, whose `issuer` must be the configured one
//!   exactly), over HTTPS only, trusting the web's roots plus the provider's `ca_file`. A
//!   token's own `jku`, `jwk`, `x5u` or `x5c` headers are never used.
//! - Keys are cached by `kid`. An unknown `kid` refetches the JWKS at most once per
//!   [`REFRESH_COOLDOWN`] (so random kids cannot make the gateway hammer the provider), and the
//!   whole set is refetched when older than [`KEYS_MAX_AGE`].
//! - The algorithm is the key's: its JWK `alg`, else the one its key type implies (RSA: RS256,
//!   EC P-256: ES256, P-384: ES384, Ed25519: EdDSA). Symmetric keys are never loaded, so `none`,
//!   `HS*` and algorithm confusion have nothing to verify against.
//! - Checked on every token: the signature, `iss` (exact), `aud`, `exp` and `nbf` (30 s leeway),
//!   `sub`. ID tokens also: `nonce`, `azp` when present or when there are several audiences,
//!   `iat`. Access tokens: `typ` absent, `JWT` or `at+jwt`.
//! - Time: `exp`, `nbf` and `iat` are read against the gateway's clock (given to
//!   [`Providers::from_config`]), by the gateway's own rule ([`crate::auth::valid_at`]), never
//!   the system clock jsonwebtoken would read; `exp` stays a claim jsonwebtoken requires. The
//!   key and discovery caches' pacing ([`REFRESH_COOLDOWN`], [`KEYS_MAX_AGE`]) stays on
//!   `Instant`: it paces requests to the provider, like a back-off, and must never run
//!   backwards.
//!
//! Claim mapping ([`ClaimMapping`]): a token is for one of three kinds of caller. An **owner**
//! acts as the person its `claims.person` claim names, a **clinician** as the practitioner
//! `claims.practitioner` names, a **company** as the client `claims.company` names. With
//! `claims.roles` set, the role must also be listed there (through `claims.role_map`); without
//! it, holding the id claim is enough, and a company's token must be a client-credentials
//! token (`sub` = the client). An API token's SMART scopes say which kind it is
//! (`patient/` owner, `user/` clinician, `system/` company) and must all be of one kind.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::auth::{Principal, Scope, ScopeContext};
use crate::config::{ClaimMapping, ProviderConfig, Secret};
use crate::store::SharedClock;
use crate::{Error, Result};

/// An unknown `kid` refetches a provider's keys at most this often.
pub const REFRESH_COOLDOWN: Duration = Duration::from_secs(30);
/// Keys older than this are refetched at the next use.
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// The most bytes read from a provider's answer (discovery, JWKS, token endpoint).
const MAX_RESPONSE_BYTES: u64 = 512 * 1024;
/// Tokens longer than this are not looked at.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Clock skew allowed on `exp`, `nbf` and `iat`: the gateway's own tokens'.
const LEEWAY_SECS: i64 = crate::auth::LEEWAY_SECS;
/// The path of the sign-in callback, under the gateway's public origin.
pub const CALLBACK_PATH: &str = "/dashboard/signin/oidc/callback";

/// Who a provider's token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Owner,
    Clinician,
    Company,
}

impl Kind {
    pub const ALL: [Self; 3] = [Self::Owner, Self::Clinician, Self::Company];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Clinician => "clinician",
            Self::Company => "company",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The SMART scope context this kind of caller acts in.
    fn context(self) -> ScopeContext {
        match self {
            Self::Owner => ScopeContext::Patient,
            Self::Clinician => ScopeContext::User,
            Self::Company => ScopeContext::System,
        }
    }
}

/// Why a provider's token or answer was not accepted. Logged; the caller sees only a coarse
/// refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdpError {
    #[error("the provider could not be reached or gave an unusable answer: {0}")]
    Unavailable(String),
    #[error("the token is malformed, forged, expired or not for us: {0}")]
    InvalidToken(String),
    #[error("the token's claims do not name a {0} (claim mapping)")]
    NotMapped(&'static str),
    #[error("the provider refused: {0}")]
    Refused(String),
}

/// The parts of a discovery document the gateway uses.
#[derive(Debug, Clone)]
pub struct Metadata {
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    pub end_session_endpoint: Option<String>,
    /// RFC 9207: the provider puts `iss` on its authorization responses.
    pub iss_parameter: bool,
}

struct CachedKey {
    key: DecodingKey,
    alg: Algorithm,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, Arc<CachedKey>>,
    fetched: Option<Instant>,
    /// The last fetch attempt, successful or not (the cooldown counts from it).
    tried: Option<Instant>,
}

/// One trusted provider.
pub struct Provider {
    config: ProviderConfig,
    client_secret: Option<Secret>,
    agent: ureq::Agent,
    /// The discovery document once read, and when reading it last failed (retried only after
    /// [`REFRESH_COOLDOWN`], so a provider that is down is not asked at every request).
    metadata: Mutex<(Option<Metadata>, Option<Instant>)>,
    keys: RwLock<KeyCache>,
    /// Held while fetching keys, so concurrent refreshes make one request.
    fetching: Mutex<()>,
    /// Where token times are checked against (the gateway's clock).
    clock: SharedClock,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.config.name)
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

/// Every configured provider.
#[derive(Debug, Default)]
pub struct Providers {
    list: Vec<Arc<Provider>>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name != "callback"
}

fn is_https(url: &str) -> bool {
    url.len() > "https://".len() && url[..8].eq_ignore_ascii_case("https://")
}

impl Providers {
    /// Checks the configuration and prepares each provider (nothing is fetched yet: a
    /// provider that is down does not stop the gateway). Tokens are checked at `clock`'s time.
    pub fn from_config(configs: &[ProviderConfig], clock: SharedClock) -> Result<Self> {
        let mut list = Vec::new();
        for c in configs {
            let bad = |why: &str| Error::Config(format!("auth.providers {:?}: {why}", c.name));
            if !valid_name(&c.name) {
                return Err(bad(
                    "the name must be 1-32 of a-z, 0-9 and -, not \"callback\"",
                ));
            }
            if list.iter().any(|p: &Arc<Provider>| p.config.name == c.name) {
                return Err(bad("two providers have this name"));
            }
            if list
                .iter()
                .any(|p: &Arc<Provider>| p.config.issuer == c.issuer)
            {
                return Err(bad("two providers have this issuer"));
            }
            if !is_https(&c.issuer) {
                return Err(bad("the issuer must be an https:// URL"));
            }
            if c.client_id.is_some() && !c.scopes.iter().any(|s| s == "openid") {
                return Err(bad("scopes must include openid"));
            }
            if c.client_id.is_none() && c.audience.is_none() {
                return Err(bad(
                    "set client_id (dashboard sign-in), audience (API tokens) or both",
                ));
            }
            if let Some(uri) = &c.redirect_uri {
                if !uri.starts_with("http://") && !is_https(uri) {
                    return Err(bad("redirect_uri must be an http(s) URL"));
                }
            }
            for (from, to) in &c.claims.role_map {
                if Kind::parse(to).is_none() {
                    return Err(bad(&format!(
                        "claims.role_map maps {from:?} to {to:?}, not owner, clinician or company"
                    )));
                }
            }
            let client_secret = match (&c.client_secret, &c.client_secret_file) {
                (Some(s), _) => Some(s.clone()),
                (None, Some(path)) => {
                    let s = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
                    let s = s.trim();
                    if s.is_empty() {
                        return Err(bad("client_secret_file is empty"));
                    }
                    Some(Secret(s.to_owned()))
                }
                (None, None) => None,
            };
            let agent = agent(c.ca_file.as_deref()).map_err(|e| bad(&e))?;
            list.push(Arc::new(Provider {
                config: c.clone(),
                client_secret,
                agent,
                metadata: Mutex::new((None, None)),
                keys: RwLock::new(KeyCache::default()),
                fetching: Mutex::new(()),
                clock: clock.clone(),
            }));
        }
        Ok(Self { list })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.list.iter()
    }

    /// The provider named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Provider>> {
        self.list.iter().find(|p| p.config.name == name)
    }

    /// The provider whose access tokens `token` claims to be (its unverified `iss`), if that
    /// provider is trusted for the API (has an `audience`). `None`: not a provider's token
    /// (the gateway's own, or nobody's).
    pub fn for_access_token(&self, token: &str) -> Option<&Arc<Provider>> {
        let iss = unverified_issuer(token)?;
        self.list
            .iter()
            .find(|p| p.config.audience.is_some() && p.config.issuer == iss)
    }
}

/// The HTTPS client for one provider: rustls (ring) trusting the web's roots and `ca_file`,
/// HTTPS only, no redirects, short timeouts.
fn agent(ca_file: Option<&Path>) -> std::result::Result<ureq::Agent, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|c| c.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("ca_file {}: no certificate", path.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(ureq::AgentBuilder::new()
        .tls_config(Arc::new(tls))
        .https_only(true)
        .redirects(0)
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build())
}

/// A JWT's payload, decoded but not verified: only to pick the keys to verify it with.
fn unverified_payload(token: &str) -> Option<Map<String, Value>> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn unverified_issuer(token: &str) -> Option<String> {
    unverified_payload(token)?
        .get("iss")?
        .as_str()
        .map(str::to_owned)
}

/// The algorithm a JWK is for; `None` for keys that are not signature keys we accept
/// (symmetric keys, encryption keys, unknown types).
fn key_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => Algorithm::EdDSA,
            _ => return None,
        },
        _ => return None,
    };
    let Some(named) = jwk.common.key_algorithm else {
        return Some(implied);
    };
    let alg = match named {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    };
    // The named algorithm must fit the key type.
    let family = |a: Algorithm| match a {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => 1,
        Algorithm::ES256 | Algorithm::ES384 => 2,
        Algorithm::EdDSA => 3,
        _ => 0,
    };
    (family(alg) == family(implied) && (family(alg) != 2 || alg == implied)).then_some(alg)
}

/// The signature keys of a JWKS document, by `kid`. Keys without a `kid`, of a kind we do not
/// verify with, or that do not parse are left out (one odd key does not spoil the set).
fn parse_jwks(doc: &Value) -> HashMap<String, Arc<CachedKey>> {
    let mut out = HashMap::new();
    for raw in doc["keys"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
            continue;
        };
        let (Some(kid), Some(alg)) = (jwk.common.key_id.clone(), key_algorithm(&jwk)) else {
            continue;
        };
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            out.insert(kid, Arc::new(CachedKey { key, alg }));
        }
    }
    out
}

/// A string value at a dotted `path` of `claims` (`realm_access.roles`), or a plain claim
/// whose name contains dots.
fn claim_at<'c>(claims: &'c Map<String, Value>, path: &str) -> Option<&'c Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut v = claims.get(parts.next()?)?;
    for part in parts {
        v = v.as_object()?.get(part)?;
    }
    Some(v)
}

/// An id claim's value, if it is a valid id.
fn id_claim(claims: &Map<String, Value>, path: &str) -> Option<String> {
    claim_at(claims, path)?
        .as_str()
        .filter(|s| phr_schema::envelope::is_valid_id(s))
        .map(str::to_owned)
}

impl Provider {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// The label of its sign-in button.
    pub fn display_name(&self) -> &str {
        self.config
            .display_name
            .as_deref()
            .unwrap_or(&self.config.name)
    }

    /// Whether the dashboards can sign in through it.
    pub fn signs_in(&self) -> bool {
        self.config.client_id.is_some()
    }

    fn get_json(&self, url: &str) -> std::result::Result<Value, IdpError> {
        if !is_https(url) {
            return Err(IdpError::Unavailable(format!("{url} is not https")));
        }
        let resp = self
            .agent
            .get(url)
            .set("Accept", "application/json")
            .call()
            .map_err(|e| IdpError::Unavailable(format!("GET {url}: {e}")))?;
        read_json(resp).map_err(|e| IdpError::Unavailable(format!("GET {url}: {e}")))
    }

    /// The discovery document's endpoints, fetched once (a failure is retried at the next
    /// use). Blocking.
    pub fn metadata(&self) -> std::result::Result<Metadata, IdpError> {
        let mut cached = self
            .metadata
            .lock()
            .map_err(|_| IdpError::Unavailable("poisoned".into()))?;
        if let Some(m) = cached.0.as_ref() {
            return Ok(m.clone());
        }
        if cached.1.is_some_and(|t| t.elapsed() < REFRESH_COOLDOWN) {
            return Err(IdpError::Unavailable(
                "discovery failed moments ago; not asking again yet".into(),
            ));
        }
        let read = self.discover();
        match &read {
            Ok(m) => cached.0 = Some(m.clone()),
            Err(e) => {
                tracing::warn!(provider = %self.config.name, error = %e, "discovery failed");
                cached.1 = Some(Instant::now());
            }
        }
        read
    }

    fn discover(&self) -> std::result::Result<Metadata, IdpError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let doc = self.get_json(&url)?;
        if doc["issuer"].as_str() != Some(self.config.issuer.as_str()) {
            return Err(IdpError::Unavailable(format!(
                "the discovery document names issuer {}, not {}",
                doc["issuer"], self.config.issuer
            )));
        }
        let endpoint = |k: &str| {
            doc[k]
                .as_str()
                .filter(|u| is_https(u))
                .map(str::to_owned)
                .ok_or_else(|| IdpError::Unavailable(format!("discovery: no https {k}")))
        };
        Ok(Metadata {
            authorization_endpoint: endpoint("authorization_endpoint")?,
            token_endpoint: endpoint("token_endpoint")?,
            jwks_uri: endpoint("jwks_uri")?,
            end_session_endpoint: endpoint("end_session_endpoint").ok(),
            iss_parameter: doc["authorization_response_iss_parameter_supported"]
                .as_bool()
                .unwrap_or(false),
        })
    }

    /// The key for `kid`, from the cache or, if `may_fetch`, from a refetch of the JWKS
    /// (unknown kid: at most once per [`REFRESH_COOLDOWN`]; keys older than
    /// [`KEYS_MAX_AGE`]). Blocking when it fetches.
    fn key(&self, kid: &str, may_fetch: bool) -> std::result::Result<Arc<CachedKey>, IdpError> {
        let (found, stale, may_try) = {
            let cache = self
                .keys
                .read()
                .map_err(|_| IdpError::Unavailable("poisoned".into()))?;
            let now = Instant::now();
            (
                cache.keys.get(kid).cloned(),
                cache.fetched.is_none_or(|t| now - t > KEYS_MAX_AGE),
                cache.tried.is_none_or(|t| now - t > REFRESH_COOLDOWN),
            )
        };
        match found {
            Some(k) if !stale || !may_fetch => return Ok(k),
            _ if !may_fetch || !may_try => {
                return found.ok_or_else(|| IdpError::InvalidToken(format!("unknown kid {kid}")))
            }
            _ => {}
        }
        let _one_at_a_time = self
            .fetching
            .lock()
            .map_err(|_| IdpError::Unavailable("poisoned".into()))?;
        // Another request may have refreshed while this one waited.
        {
            let cache = self
                .keys
                .read()
                .map_err(|_| IdpError::Unavailable("poisoned".into()))?;
            if cache
                .tried
                .is_some_and(|t| Instant::now() - t <= REFRESH_COOLDOWN)
            {
                return cache
                    .keys
                    .get(kid)
                    .cloned()
                    .ok_or_else(|| IdpError::InvalidToken(format!("unknown kid {kid}")));
            }
        }
        let fetched = self
            .metadata()
            .and_then(|m| self.get_json(&m.jwks_uri))
            .map(|doc| parse_jwks(&doc));
        let mut cache = self
            .keys
            .write()
            .map_err(|_| IdpError::Unavailable("poisoned".into()))?;
        cache.tried = Some(Instant::now());
        match fetched {
            Ok(keys) => {
                tracing::info!(provider = %self.config.name, keys = keys.len(), "fetched the provider's keys");
                cache.keys = keys;
                cache.fetched = cache.tried;
            }
            Err(e) => {
                tracing::warn!(provider = %self.config.name, error = %e, "could not fetch the provider's keys");
                if found.is_none() {
                    return Err(e);
                }
            }
        }
        cache
            .keys
            .get(kid)
            .cloned()
            .or(found)
            .ok_or_else(|| IdpError::InvalidToken(format!("unknown kid {kid}")))
    }

    /// Verifies `token`'s signature and registered claims against this provider: the key by
    /// `kid`, the key's algorithm, `iss`, `aud` = `audience`, `exp`, `nbf`, `sub`; returns
    /// the claims. `typ_ok` judges the header's `typ`.
    fn verify(
        &self,
        token: &str,
        audience: &str,
        typ_ok: fn(Option<&str>) -> bool,
        may_fetch: bool,
    ) -> std::result::Result<Map<String, Value>, IdpError> {
        let invalid = |why: &str| IdpError::InvalidToken(why.to_owned());
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid("too long"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("bad header"))?;
        if !typ_ok(header.typ.as_deref()) {
            return Err(invalid("wrong typ"));
        }
        let kid = header.kid.as_deref().ok_or_else(|| invalid("no kid"))?;
        let key = self.key(kid, may_fetch)?;
        if header.alg != key.alg {
            return Err(invalid("the header's alg is not the key's"));
        }
        let mut v = Validation::new(key.alg);
        v.set_issuer(&[&self.config.issuer]);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Checked below against the gateway's clock, not the system's.
        v.validate_exp = false;
        v.validate_nbf = false;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &v)
            .map(|d| d.claims)
            .map_err(|e| IdpError::InvalidToken(e.to_string()))?;
        // jsonwebtoken required `exp` as a NumericDate; `nbf` is optional but, present, must be
        // one.
        let exp = claims
            .get("exp")
            .and_then(numeric_date)
            .ok_or_else(|| invalid("no exp"))?;
        let nbf = match claims.get("nbf") {
            None => None,
            Some(v) => Some(numeric_date(v).ok_or_else(|| invalid("nbf is not a date"))?),
        };
        if !crate::auth::valid_at(exp, nbf, self.clock.now()) {
            return Err(invalid("expired or not valid yet"));
        }
        Ok(claims)
    }

    /// Verifies an API access token and maps it to the caller it is for. Blocking when the
    /// keys must be fetched; with `may_fetch` false only cached keys are used.
    pub fn verify_access_token(
        &self,
        token: &str,
        may_fetch: bool,
    ) -> std::result::Result<Principal, IdpError> {
        let audience = self
            .config
            .audience
            .as_deref()
            .ok_or_else(|| IdpError::InvalidToken("not trusted for the API".into()))?;
        let claims = self.verify(token, audience, access_typ, may_fetch)?;
        let scopes: Vec<String> = match claims.get("scope") {
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        let smart: Vec<Scope<'_>> = scopes.iter().filter_map(|s| Scope::parse(s)).collect();
        let Some(first) = smart.first() else {
            return Err(IdpError::NotMapped("caller: the token has no SMART scope"));
        };
        if smart.iter().any(|s| s.context != first.context) {
            return Err(IdpError::NotMapped(
                "single kind of caller: scopes of several contexts",
            ));
        }
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.context() == first.context)
            .ok_or(IdpError::NotMapped("caller"))?;
        let subject = identity(&self.config.claims, &claims, kind)?;
        Ok(Principal {
            subject,
            // Only the SMART scopes: anything else grants nothing anyway.
            scopes: scopes
                .iter()
                .filter(|s| Scope::parse(s).is_some())
                .cloned()
                .collect(),
        })
    }

    /// The authorization request URL for a sign-in (code flow, PKCE S256). Blocking (discovery).
    pub fn authorization_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        verifier: &str,
    ) -> std::result::Result<String, IdpError> {
        use sha2::Digest as _;
        let client_id = self
            .config
            .client_id
            .as_deref()
            .ok_or_else(|| IdpError::Refused("no client_id for sign-in".into()))?;
        let m = self.metadata()?;
        let challenge = crate::auth::b64url_encode(&sha2::Sha256::digest(verifier.as_bytes()));
        let scope = self.config.scopes.join(" ");
        let params = [
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", redirect_uri),
            ("scope", scope.as_str()),
            ("state", state),
            ("nonce", nonce),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        let query = params
            .iter()
            .map(|(k, v)| format!("{k}={}", crate::uri::encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let sep = if m.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        Ok(format!("{}{sep}{query}", m.authorization_endpoint))
    }

    /// Redeems an authorization code at the token endpoint and returns the verified ID
    /// token's claims. Blocking.
    pub fn redeem_code(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
        nonce: &str,
    ) -> std::result::Result<Map<String, Value>, IdpError> {
        let client_id = self
            .config
            .client_id
            .as_deref()
            .ok_or_else(|| IdpError::Refused("no client_id for sign-in".into()))?;
        let m = self.metadata()?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let mut req = self.agent.post(&m.token_endpoint);
        match &self.client_secret {
            Some(secret) => {
                // RFC 6749 §2.3.1: id and secret form-encoded, then Basic.
                let pair = format!(
                    "{}:{}",
                    crate::uri::encode(client_id),
                    crate::uri::encode(&secret.0)
                );
                let basic = base64::engine::general_purpose::STANDARD.encode(pair);
                req = req.set("Authorization", &format!("Basic {basic}"));
            }
            None => form.push(("client_id", client_id)),
        }
        let answer = match req.set("Accept", "application/json").send_form(&form) {
            Ok(r) => read_json(r).map_err(IdpError::Unavailable)?,
            Err(ureq::Error::Status(status, r)) => {
                let body = read_json(r).unwrap_or_default();
                return Err(IdpError::Refused(format!(
                    "token endpoint {status}: {}",
                    body["error"].as_str().unwrap_or("no error code")
                )));
            }
            Err(e) => return Err(IdpError::Unavailable(format!("token endpoint: {e}"))),
        };
        let id_token = answer["id_token"]
            .as_str()
            .ok_or_else(|| IdpError::Refused("no id_token in the token response".into()))?;
        self.verify_id_token(id_token, nonce)
    }

    /// Verifies an ID token (OpenID Connect Core §3.1.3.7) for this gateway's client and the
    /// sign-in's `nonce`; returns its claims. Blocking when the keys must be fetched.
    pub fn verify_id_token(
        &self,
        id_token: &str,
        nonce: &str,
    ) -> std::result::Result<Map<String, Value>, IdpError> {
        let client_id = self
            .config
            .client_id
            .as_deref()
            .ok_or_else(|| IdpError::Refused("no client_id for sign-in".into()))?;
        let claims = self.verify(id_token, client_id, id_typ, true)?;
        let invalid = |why: &str| IdpError::InvalidToken(why.to_owned());
        let several = claims["aud"].as_array().is_some_and(|a| a.len() > 1);
        match claims.get("azp").and_then(Value::as_str) {
            Some(azp) if azp != client_id => return Err(invalid("azp is another client")),
            None if several => return Err(invalid("several audiences and no azp")),
            _ => {}
        }
        let iat = claims
            .get("iat")
            .and_then(Value::as_i64)
            .ok_or_else(|| invalid("no iat"))?;
        if iat > self.clock.now().timestamp() + LEEWAY_SECS {
            return Err(invalid("issued in the future"));
        }
        let sent = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
        if nonce.is_empty() || !crate::auth::same_secret(sent, nonce) {
            return Err(invalid("nonce does not match"));
        }
        Ok(claims)
    }

    /// The id `claims` name for `kind`, under this provider's mapping.
    pub fn identity(
        &self,
        claims: &Map<String, Value>,
        kind: Kind,
    ) -> std::result::Result<String, IdpError> {
        identity(&self.config.claims, claims, kind)
    }
}

/// A JWT NumericDate as jsonwebtoken reads one: a non-negative integer, or a finite
/// non-negative number rounded to the second.
fn numeric_date(v: &Value) -> Option<i64> {
    if let Some(n) = v.as_u64() {
        return Some(i64::try_from(n).unwrap_or(i64::MAX));
    }
    let f = v.as_f64()?;
    (f.is_finite() && f >= 0.0).then(|| f.round() as i64)
}

fn access_typ(typ: Option<&str>) -> bool {
    match typ {
        None => true,
        Some(t) => {
            let t = t.strip_prefix("application/").unwrap_or(t);
            t.eq_ignore_ascii_case("jwt") || t.eq_ignore_ascii_case("at+jwt")
        }
    }
}

fn id_typ(typ: Option<&str>) -> bool {
    typ.is_none_or(|t| t.eq_ignore_ascii_case("jwt"))
}

/// The id a token's `claims` name for a caller of `kind`, under `mapping`: the kind's id claim
/// (a valid id), the role when roles are mapped, and for a company, `sub` equal to the client.
pub fn identity(
    mapping: &ClaimMapping,
    claims: &Map<String, Value>,
    kind: Kind,
) -> std::result::Result<String, IdpError> {
    let not_mapped = || IdpError::NotMapped(kind.as_str());
    let id = match kind {
        Kind::Owner => id_claim(claims, &mapping.person),
        Kind::Clinician => id_claim(claims, &mapping.practitioner),
        // Without roles mapped, only a client-credentials token (RFC 9068 §2.2: `sub` is the
        // client) is a company's; with roles mapped, the company role says so (Keycloak's
        // service accounts have a `sub` of their own).
        Kind::Company => id_claim(claims, &mapping.company).filter(|c| {
            mapping.roles.is_some() || claims.get("sub").and_then(Value::as_str) == Some(c)
        }),
    }
    .ok_or_else(not_mapped)?;
    if let Some(path) = &mapping.roles {
        let listed: Vec<&str> = match claim_at(claims, path) {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(s)) => s.split_whitespace().collect(),
            _ => Vec::new(),
        };
        let holds = listed.iter().any(|r| {
            let mapped = if mapping.role_map.is_empty() {
                Some(*r)
            } else {
                mapping.role_map.get(*r).map(String::as_str)
            };
            mapped == Some(kind.as_str())
        });
        if !holds {
            return Err(not_mapped());
        }
    }
    Ok(id)
}

/// A JSON answer, at most [`MAX_RESPONSE_BYTES`].
fn read_json(resp: ureq::Response) -> std::result::Result<Value, String> {
    use std::io::Read as _;
    let mut body = Vec::new();
    resp.into_reader()
        .take(MAX_RESPONSE_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| e.to_string())?;
    if body.len() as u64 > MAX_RESPONSE_BYTES {
        return Err("the answer is too large".into());
    }
    serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ManualClock, SystemClock};
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const ISSUER: &str = "https://idp.test/realms/phr";
    const AUDIENCE: &str = "https://phr.test/api";
    const CLIENT: &str = "phr-web";

    fn config() -> ProviderConfig {
        ProviderConfig {
            name: "test".into(),
            display_name: None,
            issuer: ISSUER.into(),
            ca_file: None,
            client_id: Some(CLIENT.into()),
            client_secret_file: None,
            client_secret: Some(Secret("s".into())),
            scopes: vec!["openid".into(), "phr".into()],
            redirect_uri: None,
            audience: Some(AUDIENCE.into()),
            claims: ClaimMapping {
                roles: Some("roles".into()),
                ..ClaimMapping::default()
            },
        }
    }

    /// An Ed25519 signing key and its public JWK under `kid`.
    fn ed_key(kid: &str) -> (EncodingKey, Value) {
        let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let der = signing.to_pkcs8_der().unwrap();
        let x = crate::auth::b64url_encode(&signing.verifying_key().to_bytes());
        (
            EncodingKey::from_ed_der(der.as_bytes()),
            json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig"}),
        )
    }

    /// A provider whose key cache holds `jwks` (fetched "now"), so nothing is fetched.
    fn provider_with(config: ProviderConfig, jwks: &[Value]) -> Arc<Provider> {
        provider_at(config, jwks, SystemClock::shared())
    }

    /// [`provider_with`], checking token times at `clock`'s.
    fn provider_at(config: ProviderConfig, jwks: &[Value], clock: SharedClock) -> Arc<Provider> {
        let providers = Providers::from_config(&[config], clock).unwrap();
        let p = providers.list[0].clone();
        {
            let mut cache = p.keys.write().unwrap();
            cache.keys = parse_jwks(&json!({ "keys": jwks }));
            cache.fetched = Some(Instant::now());
            cache.tried = Some(Instant::now());
        }
        p
    }

    fn sign(key: &EncodingKey, kid: &str, typ: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.into());
        header.typ = typ.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn access(sub: &str, scope: &str, extra: Value) -> Value {
        let mut c = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": now() + 300, "iat": now(),
            "scope": scope,
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    #[test]
    fn the_configuration_is_checked() {
        let refused = |c: ProviderConfig| {
            Providers::from_config(&[c], SystemClock::shared())
                .unwrap_err()
                .to_string()
        };
        assert!(Providers::from_config(&[config()], SystemClock::shared()).is_ok());
        let mut c = config();
        c.issuer = "http://idp.test".into();
        assert!(refused(c).contains("https"));
        for name in ["", "Test", "a b", "callback", &"x".repeat(33)] {
            let mut c = config();
            c.name = name.into();
            assert!(refused(c).contains("name"), "{name:?}");
        }
        let mut c = config();
        c.scopes = vec!["phr".into()];
        assert!(refused(c).contains("openid"));
        let mut c = config();
        c.claims.role_map.insert("doctor".into(), "admin".into());
        assert!(refused(c).contains("role_map"));
        let mut c = config();
        c.client_id = None;
        c.audience = None;
        assert!(refused(c).contains("client_id"));
        let twice =
            Providers::from_config(&[config(), config()], SystemClock::shared()).unwrap_err();
        assert!(twice.to_string().contains("two providers"), "{twice}");
    }

    #[test]
    fn keys_carry_their_own_algorithm_and_symmetric_or_encryption_keys_are_never_loaded() {
        let jwk = |v: Value| serde_json::from_value::<Jwk>(v).unwrap();
        let rsa = json!({"kty": "RSA", "n": "sXch", "e": "AQAB", "kid": "r"});
        assert_eq!(key_algorithm(&jwk(rsa.clone())), Some(Algorithm::RS256));
        let mut ps = rsa.clone();
        ps["alg"] = json!("PS256");
        assert_eq!(key_algorithm(&jwk(ps)), Some(Algorithm::PS256));
        let mut hs = rsa.clone();
        hs["alg"] = json!("HS256");
        assert_eq!(key_algorithm(&jwk(hs)), None, "an RSA key named HS256");
        let mut es = rsa.clone();
        es["alg"] = json!("ES256");
        assert_eq!(key_algorithm(&jwk(es)), None, "an RSA key named ES256");
        let mut enc = rsa;
        enc["use"] = json!("enc");
        assert_eq!(key_algorithm(&jwk(enc)), None);
        let oct = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "o"});
        assert_eq!(key_algorithm(&jwk(oct.clone())), None);
        let (_, ed) = ed_key("e");
        assert_eq!(key_algorithm(&jwk(ed.clone())), Some(Algorithm::EdDSA));
        // The set keeps what it can use, by kid.
        let set = parse_jwks(
            &json!({"keys": [oct, ed, {"kty": "weird"}, {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}]}),
        );
        assert_eq!(set.keys().collect::<Vec<_>>(), vec!["e"]);
    }

    #[test]
    fn an_owner_token_maps_to_its_person_with_its_smart_scopes() {
        let (key, jwk) = ed_key("k1");
        let p = provider_with(config(), &[jwk]);
        let claims = access(
            "owner-ana",
            "openid patient/*.rs phr:read",
            json!({"phr_person": "ana", "roles": ["owner"]}),
        );
        for typ in [
            None,
            Some("JWT"),
            Some("at+jwt"),
            Some("application/at+jwt"),
        ] {
            let principal = p
                .verify_access_token(&sign(&key, "k1", typ, &claims), false)
                .unwrap();
            assert_eq!(principal.subject, "ana");
            assert_eq!(principal.scopes, vec!["patient/*.rs".to_owned()]);
        }
        let refused = |c: &Value| p.verify_access_token(&sign(&key, "k1", None, c), false);
        assert!(
            p.verify_access_token(&sign(&key, "k1", Some("id+jwt"), &claims), false)
                .is_err(),
            "another typ"
        );
        // Registered claims.
        for (k, v) in [
            ("iss", json!("https://other.test")),
            ("aud", json!(CLIENT)),
            ("exp", json!(now() - 120)),
            ("nbf", json!(now() + 120)),
        ] {
            let mut c = claims.clone();
            c[k] = v;
            assert!(matches!(refused(&c), Err(IdpError::InvalidToken(_))), "{k}");
        }
        let mut c = claims.clone();
        c.as_object_mut().unwrap().remove("sub");
        assert!(refused(&c).is_err(), "no sub");
    }

    #[test]
    fn mapping_refuses_mixed_contexts_missing_claims_and_roles_not_held() {
        let (key, jwk) = ed_key("k1");
        let p = provider_with(config(), &[jwk]);
        let check = |scope: &str, extra: Value| {
            p.verify_access_token(&sign(&key, "k1", None, &access("s-1", scope, extra)), false)
        };
        let owner = json!({"phr_person": "ana", "roles": ["owner"]});
        assert!(matches!(
            check("patient/*.rs user/Observation.rs", owner.clone()),
            Err(IdpError::NotMapped(_))
        ));
        assert!(
            check("phr:read openid", owner.clone()).is_err(),
            "no SMART scope"
        );
        // An owner asking a clinician's scope: no practitioner claim, no role.
        assert!(check("user/Observation.rs", owner.clone()).is_err());
        // The role must be held.
        assert!(check(
            "patient/*.rs",
            json!({"phr_person": "ana", "roles": ["clinician"]})
        )
        .is_err());
        assert!(check("patient/*.rs", json!({"phr_person": "ana"})).is_err());
        // The id must be an id.
        assert!(check(
            "patient/*.rs",
            json!({"phr_person": "ana/../bo", "roles": ["owner"]})
        )
        .is_err());
        assert!(check("patient/*.rs", json!({"phr_person": 7, "roles": ["owner"]})).is_err());
        // A clinician.
        let kim = check(
            "user/Observation.rs",
            json!({"phr_practitioner": "dr-kim", "roles": "clinician other"}),
        )
        .unwrap();
        assert_eq!(kim.subject, "dr-kim");
        // A company: client-credentials tokens name the client as sub.
        let acme = p
            .verify_access_token(
                &sign(
                    &key,
                    "k1",
                    None,
                    &access(
                        "acme",
                        "system/Observation.rs",
                        json!({"client_id": "acme", "roles": ["company"]}),
                    ),
                ),
                false,
            )
            .unwrap();
        assert_eq!(acme.subject, "acme");
        // A person's token with system scopes is not the company's: the role is not held.
        assert!(check(
            "system/Observation.rs",
            json!({"client_id": "acme", "phr_person": "ana", "roles": ["owner"]})
        )
        .is_err());
        // Without roles mapped, only a token whose sub is the client (client credentials).
        let plain = ClaimMapping::default();
        let cc = json!({"sub": "acme", "client_id": "acme"});
        let users = json!({"sub": "u-1", "client_id": "acme", "phr_person": "ana"});
        assert_eq!(
            identity(&plain, cc.as_object().unwrap(), Kind::Company).unwrap(),
            "acme"
        );
        assert!(identity(&plain, users.as_object().unwrap(), Kind::Company).is_err());
    }

    #[test]
    fn role_maps_and_nested_role_claims() {
        let mut mapping = ClaimMapping {
            roles: Some("realm_access.roles".into()),
            ..ClaimMapping::default()
        };
        let claims =
            json!({"sub": "x", "phr_person": "ana", "realm_access": {"roles": ["phr-user"]}});
        let claims = claims.as_object().unwrap();
        assert!(identity(&mapping, claims, Kind::Owner).is_err());
        mapping.role_map.insert("phr-user".into(), "owner".into());
        assert_eq!(identity(&mapping, claims, Kind::Owner).unwrap(), "ana");
        assert!(identity(&mapping, claims, Kind::Clinician).is_err());
        // Without roles mapped, the id claim is enough.
        let plain = ClaimMapping::default();
        assert_eq!(identity(&plain, claims, Kind::Owner).unwrap(), "ana");
    }

    #[test]
    fn unknown_kids_and_another_keys_signature_are_refused_without_fetching() {
        let (key, jwk) = ed_key("k1");
        let (attacker, _) = ed_key("k1");
        let p = provider_with(config(), &[jwk]);
        let claims = access(
            "owner-ana",
            "patient/*.rs",
            json!({"phr_person": "ana", "roles": ["owner"]}),
        );
        assert!(p
            .verify_access_token(&sign(&key, "k1", None, &claims), false)
            .is_ok());
        // The trusted kid, another key: the signature fails.
        assert!(p
            .verify_access_token(&sign(&attacker, "k1", None, &claims), false)
            .is_err());
        // An unknown kid: refused from the cache (the cooldown has not passed, so even a
        // fetch-allowed check does not fetch: the issuer's host does not exist).
        let unknown = sign(&attacker, "k2", None, &claims);
        assert!(matches!(
            p.verify_access_token(&unknown, true),
            Err(IdpError::InvalidToken(_))
        ));
        // A header pointing at the attacker's key is not looked at.
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("k2".into());
        header.jku = Some("https://attacker.test/jwks".into());
        let jku = jsonwebtoken::encode(&header, &claims, &attacker).unwrap();
        assert!(p.verify_access_token(&jku, false).is_err());
        // alg none, and HS256 with the public key as secret.
        let mut none = sign(&key, "k1", None, &claims);
        none.truncate(none.rfind('.').unwrap() + 1);
        assert!(p.verify_access_token(&none, false).is_err());
        let mut hs = Header::new(Algorithm::HS256);
        hs.kid = Some("k1".into());
        let x = p.keys.read().unwrap().keys.len();
        assert_eq!(x, 1);
        let hs = jsonwebtoken::encode(&hs, &claims, &EncodingKey::from_secret(b"x")).unwrap();
        assert!(p.verify_access_token(&hs, false).is_err());
    }

    #[test]
    fn id_tokens_need_this_client_and_the_sign_ins_nonce() {
        let (key, jwk) = ed_key("k1");
        let p = provider_with(config(), &[jwk]);
        let id = |extra: Value| {
            let mut c = json!({
                "iss": ISSUER, "aud": CLIENT, "sub": "owner-ana", "exp": now() + 300,
                "iat": now(), "nonce": "n-1", "phr_person": "ana", "roles": ["owner"],
            });
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            sign(&key, "k1", None, &c)
        };
        let claims = p.verify_id_token(&id(json!({})), "n-1").unwrap();
        assert_eq!(p.identity(&claims, Kind::Owner).unwrap(), "ana");
        assert!(p.verify_id_token(&id(json!({})), "n-2").is_err(), "nonce");
        assert!(p.verify_id_token(&id(json!({})), "").is_err());
        assert!(p
            .verify_id_token(&id(json!({"nonce": null})), "n-1")
            .is_err());
        assert!(p
            .verify_id_token(&id(json!({"aud": "other"})), "n-1")
            .is_err());
        assert!(
            p.verify_id_token(&id(json!({"aud": [CLIENT, "other"]})), "n-1")
                .is_err(),
            "several audiences, no azp"
        );
        assert!(p
            .verify_id_token(&id(json!({"aud": [CLIENT, "other"], "azp": CLIENT})), "n-1")
            .is_ok());
        assert!(p
            .verify_id_token(&id(json!({"azp": "other"})), "n-1")
            .is_err());
        assert!(p.verify_id_token(&id(json!({"iat": null})), "n-1").is_err());
        assert!(p
            .verify_id_token(&id(json!({"iat": now() + 600})), "n-1")
            .is_err());
        assert!(p
            .verify_id_token(&id(json!({"exp": now() - 60})), "n-1")
            .is_err());
        // An access token is no ID token (audience).
        let at = sign(
            &key,
            "k1",
            Some("at+jwt"),
            &access("owner-ana", "patient/*.rs", json!({"nonce": "n-1"})),
        );
        assert!(p.verify_id_token(&at, "n-1").is_err());
    }

    /// A provider's token lives from `nbf` to `exp` on the gateway's clock (30 s of skew),
    /// never without `exp`; an ID token issued after the clock's now (plus skew) is refused.
    #[test]
    fn token_times_are_read_on_the_gateways_clock() {
        let (key, jwk) = ed_key("k1");
        // Years before the system's time: only a check against the clock accepts these.
        let t0: chrono::DateTime<chrono::Utc> = "2020-02-29T12:00:00Z".parse().unwrap();
        let t = t0.timestamp();
        let clock = Arc::new(ManualClock::new(t0));
        let p = provider_at(config(), &[jwk], clock.clone());
        let at = |secs: i64| clock.set(t0 + chrono::TimeDelta::seconds(secs));
        // `changes` applied to an owner's token from t0 to t0 + 60 s (a null removes a claim).
        let token = |changes: Value| {
            let mut c = access(
                "s-1",
                "patient/*.rs",
                json!({"phr_person": "ana", "roles": ["owner"], "exp": t + 60, "iat": t, "nbf": t}),
            );
            for (k, v) in changes.as_object().unwrap() {
                match v {
                    Value::Null => c.as_object_mut().unwrap().remove(k),
                    v => c.as_object_mut().unwrap().insert(k.clone(), v.clone()),
                };
            }
            sign(&key, "k1", None, &c)
        };
        let valid = token(json!({}));
        for (secs, ok, why) in [
            (0, true, "when issued"),
            (90, true, "exp plus the leeway"),
            (91, false, "expired"),
            (3600, false, "long expired"),
            (-30, true, "nbf minus the leeway"),
            (-31, false, "not valid yet"),
        ] {
            at(secs);
            assert_eq!(
                p.verify_access_token(&valid, false).is_ok(),
                ok,
                "{why} (clock at t0 + {secs} s)"
            );
        }
        at(0);
        assert!(
            p.verify_access_token(&token(json!({"nbf": null})), false)
                .is_ok(),
            "nbf is optional"
        );
        for (why, changes) in [
            ("no exp", json!({"exp": null})),
            ("exp not a date", json!({"exp": "tomorrow"})),
            ("exp negative", json!({"exp": -1})),
            ("nbf not a date", json!({"nbf": "soon"})),
        ] {
            assert!(
                matches!(
                    p.verify_access_token(&token(changes), false),
                    Err(IdpError::InvalidToken(_))
                ),
                "{why}"
            );
        }
        // ID tokens: the same window, and `iat` no later than the clock's now plus the skew.
        let id = |iat: i64| {
            let c = json!({
                "iss": ISSUER, "aud": CLIENT, "sub": "owner-ana", "exp": t + 300, "iat": iat,
                "nonce": "n-1", "phr_person": "ana", "roles": ["owner"],
            });
            sign(&key, "k1", None, &c)
        };
        assert!(p.verify_id_token(&id(t + 30), "n-1").is_ok());
        assert!(
            p.verify_id_token(&id(t + 31), "n-1").is_err(),
            "issued in the future"
        );
        at(331);
        assert!(p.verify_id_token(&id(t), "n-1").is_err(), "expired");
    }

    #[test]
    fn the_issuer_is_read_only_to_route_and_only_providers_trusted_for_the_api_are_routed() {
        let (key, jwk) = ed_key("k1");
        let _p = provider_with(config(), &[jwk]);
        let providers = Providers::from_config(&[config()], SystemClock::shared()).unwrap();
        let token = sign(&key, "k1", None, &access("a", "patient/*.rs", json!({})));
        assert!(providers.for_access_token(&token).is_some());
        let mut c = config();
        c.audience = None;
        let sign_in_only = Providers::from_config(&[c], SystemClock::shared()).unwrap();
        assert!(sign_in_only.for_access_token(&token).is_none());
        assert!(providers.for_access_token("a.b").is_none());
        assert!(providers.for_access_token("x.!!!.y").is_none());
        assert!(providers.for_access_token(&"a.".repeat(10_000)).is_none());
    }
}
