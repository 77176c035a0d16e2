//! A real OpenID provider on loopback for the tests (issue #14): `tests/oidc/provider.mjs`, the
//! certified `oidc-provider` npm package, run with `node`. [`OidcProvider::start`] writes the
//! accounts and clients of an [`OidcConfig`] to a JSON file, makes a test CA and a server
//! certificate for 127.0.0.1 signed by it, starts the provider over HTTPS on a free port, reads
//! the one line it prints once listening (its issuer), and kills it on drop. The gateway trusts
//! it as a deployment trusts its identity provider: [`trusting`] gives the
//! `[[auth.providers]]` entry, with the test CA as `ca_file`.
//!
//! Rules:
//! - Every provider is a separate issuer with its own freshly generated RS256 key and its own
//!   CA, so "a token from another issuer" is a token from a second [`OidcProvider`].
//! - Nothing is mocked: the whole authorization code flow with PKCE runs over HTTPS
//!   against the provider ([`OidcProvider::authorize`] follows its redirects with a cookie jar
//!   up to the client's redirect URI; the provider's login step picks the account named by
//!   `login_hint` and consents automatically), then [`OidcProvider::exchange_code`] redeems the
//!   code at the token endpoint. The two steps are separate so tests can tamper in between
//!   (a wrong `state`, a replayed code, a wrong `code_verifier`).
//! - A refusal by the provider is a [`TokenError::Refused`] carrying the RFC 6749 error, never
//!   a panic, so refusal tests can assert on it.
//!
//! Environment: `PHR_TEST_NODE` overrides `node`. `tests/oidc/node_modules` must exist
//! (`npm ci` in `tests/oidc`; `.ci/run` does it).

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use rand::Rng;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use phr_gateway::config::{ClaimMapping, ProviderConfig, Secret};

use crate::{b64url, std_b64, Process};

/// The owner's subject at the provider; `phr_person` = [`OWNER_PERSON`].
pub const OWNER_SUB: &str = "owner-ana";
pub const OWNER_PERSON: &str = "ana";
/// The clinician's subject; `phr_practitioner` = the same id.
pub const CLINICIAN_SUB: &str = "dr-kim";
/// The confidential web client (authorization code + PKCE, `client_secret_basic`).
pub const WEB_CLIENT: &str = "phr-web";
/// The client for API tokens: code + PKCE for a person, client credentials for a service.
pub const API_CLIENT: &str = "phr-api-client";
/// The resource indicator (and `aud`) of access tokens for the PHR API.
pub const API_AUDIENCE: &str = "https://phr.test/api";
/// The scopes the API resource offers: SMART on FHIR scopes the gateway maps (one context per
/// token: `patient/` an owner, `user/` a clinician, `system/` a company), and two that mean
/// nothing to it.
pub const API_SCOPE: &str =
    "phr:read phr:write patient/*.cruds patient/*.rs user/*.rs system/*.rs patient/*.read";
/// What [`AuthRequest::new`] asks of the API: scopes that grant nothing at the gateway.
pub const PLAIN_API_SCOPE: &str = "phr:read phr:write";
/// The OIDC scope whose claims are `phr_person`, `phr_practitioner` and `roles`.
pub const PHR_SCOPE: &str = "phr";

/// How long the provider may take to print its issuer line (a guard against a hung start,
/// not an assertion).
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Redirects one authorization may take (auth → login → auth → consent → auth → client).
const MAX_REDIRECTS: usize = 10;

/// One account at the provider: its `sub` and the claims it releases.
#[derive(Debug, Clone)]
pub struct Account {
    pub sub: String,
    pub claims: Map<String, Value>,
}

/// One registered client.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub secret: String,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
}

/// Accounts, clients, the API resource and token lifetimes of one provider.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub accounts: Vec<Account>,
    pub clients: Vec<Client>,
    pub api_audience: String,
    pub api_scope: String,
    /// oidc-provider TTLs in seconds by model name (`AccessToken`, `AuthorizationCode`,
    /// `IdToken`, …); absent ones keep the package defaults.
    pub ttl: BTreeMap<String, u64>,
}

impl OidcConfig {
    /// The PHR roles: the owner `owner-ana` (person `ana`) and the clinician `dr-kim`; the web
    /// client and the API client, both redirecting to `redirect_uri`.
    pub fn phr(redirect_uri: &str) -> Self {
        let account = |sub: &str, claims: Value| Account {
            sub: sub.to_owned(),
            claims: claims.as_object().cloned().unwrap_or_default(),
        };
        let client = |id: &str, grants: &[&str]| Client {
            id: id.to_owned(),
            secret: random_token(),
            redirect_uris: vec![redirect_uri.to_owned()],
            grant_types: grants.iter().map(|g| (*g).to_owned()).collect(),
        };
        Self {
            accounts: vec![
                account(
                    OWNER_SUB,
                    json!({"phr_person": OWNER_PERSON, "roles": ["owner"]}),
                ),
                account(
                    CLINICIAN_SUB,
                    json!({"phr_practitioner": CLINICIAN_SUB, "roles": ["clinician"]}),
                ),
            ],
            clients: vec![
                client(WEB_CLIENT, &["authorization_code"]),
                client(API_CLIENT, &["authorization_code", "client_credentials"]),
            ],
            api_audience: API_AUDIENCE.to_owned(),
            api_scope: API_SCOPE.to_owned(),
            ttl: BTreeMap::new(),
        }
    }

    /// Sets one lifetime (seconds), e.g. `("AccessToken", 2)` for expiry tests.
    pub fn with_ttl(mut self, model: &str, seconds: u64) -> Self {
        self.ttl.insert(model.to_owned(), seconds);
        self
    }

    pub fn client(&self, id: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.id == id)
    }

    fn to_json(&self, port: u16, tls: &TestCa) -> Value {
        let accounts: Vec<Value> = self
            .accounts
            .iter()
            .map(|a| json!({"sub": a.sub, "claims": a.claims}))
            .collect();
        let clients: Vec<Value> = self
            .clients
            .iter()
            .map(|c| {
                let code = c.grant_types.iter().any(|g| g == "authorization_code");
                json!({
                    "client_id": c.id,
                    "client_secret": c.secret,
                    "redirect_uris": if code { c.redirect_uris.clone() } else { Vec::new() },
                    "grant_types": c.grant_types,
                    "response_types": if code { vec!["code"] } else { Vec::new() },
                    "token_endpoint_auth_method": "client_secret_basic",
                })
            })
            .collect();
        json!({
            "port": port,
            "tls": {"cert": tls.cert_file, "key": tls.key_file},
            "accounts": accounts,
            "clients": clients,
            "api": {"audience": self.api_audience, "scope": self.api_scope},
            "ttl": self.ttl,
        })
    }
}

/// One authorization request (authorization code flow with PKCE, S256).
#[derive(Debug, Clone)]
pub struct AuthRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: String,
    /// The account to sign in as; the provider's login step refuses unknown ones.
    pub login_hint: Option<String>,
    /// Without a `login_hint` the provider serves its login form: the account to submit
    /// there, as a browser would (no JavaScript involved).
    pub form_account: Option<String>,
    pub state: String,
    pub nonce: String,
    /// Kept by the client; only its S256 challenge is sent.
    pub code_verifier: String,
    /// A resource indicator: with the API's, the access token is a JWT for the API.
    pub resource: Option<String>,
}

impl AuthRequest {
    /// `openid phr` plus the API scopes for the API resource, signing in as `account`, with
    /// fresh random `state`, `nonce` and code verifier.
    pub fn new(client: &Client, account: &str) -> Self {
        Self {
            client_id: client.id.clone(),
            redirect_uri: client.redirect_uris.first().cloned().unwrap_or_default(),
            scope: format!("openid {PHR_SCOPE} {PLAIN_API_SCOPE}"),
            login_hint: Some(account.to_owned()),
            form_account: None,
            state: random_token(),
            nonce: random_token(),
            code_verifier: random_token(),
            resource: Some(API_AUDIENCE.to_owned()),
        }
    }

    /// The S256 challenge of the verifier (RFC 7636 §4.2).
    pub fn code_challenge(&self) -> String {
        b64url(&Sha256::digest(self.code_verifier.as_bytes()))
    }
}

/// What came back on the client's redirect URI.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub code: String,
    /// The `state` as returned (a relying party must compare it with what it sent).
    pub state: Option<String>,
    /// RFC 9207 `iss`.
    pub iss: Option<String>,
    /// The whole redirect URL, for tests that replay it at a relying party.
    pub redirect: String,
}

/// A token endpoint success.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: String,
    pub id_token: Option<String>,
    pub token_type: String,
    pub scope: Option<String>,
    pub expires_in: Option<u64>,
    pub body: Value,
}

/// Why the token endpoint gave no tokens.
#[derive(Debug)]
pub enum TokenError {
    /// The provider refused: HTTP status and the RFC 6749 `error` / `error_description`.
    Refused {
        status: u16,
        error: String,
        description: Option<String>,
    },
    /// No usable answer (connection, unparsable body).
    Transport(anyhow::Error),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused {
                status,
                error,
                description,
            } => write!(
                f,
                "token endpoint refused ({status}): {error}: {}",
                description.as_deref().unwrap_or("")
            ),
            Self::Transport(e) => write!(f, "token endpoint unreachable: {e:#}"),
        }
    }
}

impl std::error::Error for TokenError {}

/// A running provider; dropping it kills the process.
pub struct OidcProvider {
    issuer: String,
    config: OidcConfig,
    tls: TestCa,
    /// HTTPS trusting only the test CA, no redirects followed (each is a step of the flow).
    agent: ureq::Agent,
    dir: tempfile::TempDir,
    _process: Process,
}

impl fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// The provider's test CA and its server certificate, written as PEM files.
struct TestCa {
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    ca_der: Vec<u8>,
    /// base64(SHA-256(server SubjectPublicKeyInfo)), what Chromium's
    /// `--ignore-certificate-errors-spki-list` takes.
    spki_sha256: String,
}

impl TestCa {
    /// A CA (`PHR test CA`) and a server certificate for 127.0.0.1 and localhost signed by it,
    /// written into `dir`.
    fn make(dir: &Path) -> Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "PHR test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "PHR test OpenID provider");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        let ca_file = dir.join("ca.pem");
        let cert_file = dir.join("cert.pem");
        let key_file = dir.join("key.pem");
        std::fs::write(&ca_file, ca.pem())?;
        std::fs::write(&cert_file, cert.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        Ok(Self {
            ca_file,
            cert_file,
            key_file,
            ca_der: ca.der().to_vec(),
            spki_sha256: std_b64(&Sha256::digest(key.public_key_der())),
        })
    }

    /// An HTTPS client trusting this CA only; redirects are not followed.
    fn agent(&self) -> Result<ureq::Agent> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(self.ca_der.clone()))?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(ureq::AgentBuilder::new()
            .tls_config(Arc::new(tls))
            .redirects(0)
            .timeout(Duration::from_secs(20))
            .build())
    }
}

/// The `[[auth.providers]]` entry that trusts `provider` as a deployment would: named `test`,
/// its issuer and test CA, the web client with its secret (dashboard sign-in), the `phr` scope
/// for the claims, the API's audience (access tokens), roles from the `roles` claim.
pub fn trusting(provider: &OidcProvider) -> ProviderConfig {
    let web = provider.client(WEB_CLIENT);
    ProviderConfig {
        name: "test".to_owned(),
        display_name: Some("Test provider".to_owned()),
        issuer: provider.issuer().to_owned(),
        ca_file: Some(provider.ca_file().to_owned()),
        client_id: web.map(|c| c.id.clone()),
        client_secret_file: None,
        client_secret: web.map(|c| Secret(c.secret.clone())),
        scopes: vec!["openid".to_owned(), PHR_SCOPE.to_owned()],
        redirect_uri: web.and_then(|c| c.redirect_uris.first().cloned()),
        audience: Some(API_AUDIENCE.to_owned()),
        claims: ClaimMapping {
            roles: Some("roles".to_owned()),
            ..ClaimMapping::default()
        },
    }
}

fn provider_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// 32 random bytes, base64url: state, nonce, code verifier (43 characters, RFC 7636 §4.1),
/// client secrets.
pub fn random_token() -> String {
    b64url(&rand::rngs::OsRng.gen::<[u8; 32]>())
}

impl OidcProvider {
    /// Starts `node tests/oidc/provider.mjs` on a free loopback port.
    pub fn start(config: OidcConfig) -> Result<Self> {
        let dir = provider_dir();
        if !dir.join("node_modules").join("oidc-provider").is_dir() {
            bail!(
                "{} has no node_modules/oidc-provider: run npm ci in tests/oidc (.ci/run does)",
                dir.display()
            );
        }
        let node = std::env::var_os("PHR_TEST_NODE").unwrap_or_else(|| "node".into());
        let tmp = tempfile::tempdir()?;
        let tls = TestCa::make(tmp.path())?;
        let agent = tls.agent()?;
        let config_path = tmp.path().join("config.json");
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(&config.to_json(0, &tls))?,
        )?;
        let log_path = tmp.path().join("provider.log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = Command::new(&node)
            .arg(dir.join("provider.mjs"))
            .arg(&config_path)
            .current_dir(&dir)
            // Kept open: the provider exits when its stdin closes, so it cannot outlive a
            // harness that died without running drop.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                anyhow!(
                    "cannot start {:?} ({e}): install Node.js 20+ and run npm ci in tests/oidc (.ci/run does)",
                    node
                )
            })?;
        let stdout = child.stdout.take().context("provider stdout")?;
        let process = Process(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let mut reader = BufReader::new(stdout);
            let read = reader.read_line(&mut line).map(|_| line);
            let _ = tx.send(read);
            // Keep the pipe drained: anything more is noise, but a closed pipe would be an
            // EPIPE for the provider.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let line = match rx.recv_timeout(START_DEADLINE) {
            Ok(Ok(line)) if !line.trim().is_empty() => line,
            Ok(Ok(_)) => bail!("the OIDC provider exited before listening:\n{}", log_text()),
            Ok(Err(e)) => bail!("reading the OIDC provider's stdout: {e}\n{}", log_text()),
            Err(_) => bail!("the OIDC provider printed no issuer line:\n{}", log_text()),
        };
        let issuer = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["issuer"].as_str().map(str::to_owned))
            .with_context(|| {
                format!("the OIDC provider's first line is not {{\"issuer\":…}}: {line}")
            })?;
        Ok(Self {
            issuer,
            config,
            tls,
            agent,
            dir: tmp,
            _process: process,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// The test CA (PEM) that signed the provider's certificate: the gateway's `ca_file`.
    pub fn ca_file(&self) -> &Path {
        &self.tls.ca_file
    }

    /// base64(SHA-256) of the provider certificate's public key, for Chromium's
    /// `--ignore-certificate-errors-spki-list` (accepts this certificate and no other).
    pub fn spki_sha256(&self) -> &str {
        &self.tls.spki_sha256
    }

    /// A configured client by id (panics-free: `None` for an unknown id).
    pub fn client(&self, id: &str) -> Option<&Client> {
        self.config.client(id)
    }

    /// What the provider wrote to stderr so far (warnings, server errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("provider.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// `GET url` over HTTPS trusting the provider's test CA, as JSON.
    pub fn get_json(&self, url: &str) -> Result<Value> {
        self.agent
            .get(url)
            .call()
            .with_context(|| format!("GET {url}"))?
            .into_json()
            .with_context(|| format!("GET {url}: not JSON"))
    }

    /// `GET /.well-known/openid-configuration`.
    pub fn discovery(&self) -> Result<Value> {
        self.get_json(&self.url("/.well-known/openid-configuration"))
    }

    /// The provider's public keys, from the `jwks_uri` its discovery document names.
    pub fn jwks(&self) -> Result<JwkSet> {
        let discovery = self.discovery()?;
        let uri = discovery["jwks_uri"]
            .as_str()
            .context("discovery names no jwks_uri")?;
        Ok(serde_json::from_value(self.get_json(uri)?)?)
    }

    /// Checks a JWT as a relying party or resource server would: signature against this
    /// provider's JWKS (by `kid`), `iss` = this issuer, `aud` = `audience`, not expired.
    /// Returns the claims.
    pub fn verify_jwt(&self, token: &str, audience: &str) -> Result<Value> {
        let header = jsonwebtoken::decode_header(token).context("JWT header")?;
        let kid = header.kid.context("JWT without kid")?;
        let jwks = self.jwks()?;
        let jwk = jwks
            .find(&kid)
            .with_context(|| format!("kid {kid} is not in the provider's JWKS"))?;
        let key = DecodingKey::from_jwk(jwk)?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[audience]);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation)?;
        Ok(data.claims)
    }

    /// Runs the authorization request through login and consent, following the provider's
    /// redirects with a cookie jar, up to the client's redirect URI; returns what arrived there.
    /// Login is by `login_hint`, or else by posting `form_account` to the login form.
    /// An error redirect (`error=…`) or a refusal page is an `Err` with the provider's text.
    pub fn authorize(&self, req: &AuthRequest) -> Result<Authorized> {
        let mut query: Vec<(&str, String)> = vec![
            ("client_id", req.client_id.clone()),
            ("response_type", "code".to_owned()),
            ("scope", req.scope.clone()),
            ("redirect_uri", req.redirect_uri.clone()),
            ("state", req.state.clone()),
            ("nonce", req.nonce.clone()),
            ("code_challenge", req.code_challenge()),
            ("code_challenge_method", "S256".to_owned()),
        ];
        if let Some(hint) = &req.login_hint {
            query.push(("login_hint", hint.clone()));
        }
        if let Some(resource) = &req.resource {
            query.push(("resource", resource.clone()));
        }
        let url = format!("{}?{}", self.url("/auth"), form_urlencode(&query));
        self.run_authorization(url, &req.redirect_uri, req.form_account.as_deref())
    }

    /// Follows an authorization request someone else built (the gateway's redirect to the
    /// provider) as a browser would: the provider's login form, submitted as `account`, then
    /// its redirects up to the request's `redirect_uri`; returns what arrived there.
    pub fn follow(&self, url: &str, account: &str) -> Result<Authorized> {
        let query = url.split_once('?').map_or("", |(_, q)| q);
        let redirect_uri = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "redirect_uri")
            .map(|(_, v)| v.into_owned())
            .with_context(|| format!("no redirect_uri in {url}"))?;
        self.run_authorization(url.to_owned(), &redirect_uri, Some(account))
    }

    fn run_authorization(
        &self,
        mut url: String,
        redirect_uri: &str,
        form_account: Option<&str>,
    ) -> Result<Authorized> {
        let agent = &self.agent;
        // The login form's POST, once, when the request names no `login_hint`.
        let mut post: Option<[(&str, &str); 1]> = None;
        let mut form_posted = false;
        let mut jar = CookieJar::default();
        for _ in 0..MAX_REDIRECTS {
            let mut request = if post.is_some() {
                agent.post(&url)
            } else {
                agent.get(&url)
            };
            if let Some(cookies) = jar.header() {
                request = request.set("Cookie", &cookies);
            }
            let sent = match post.take() {
                Some(form) => request.send_form(&form),
                None => request.call(),
            };
            let resp = match sent {
                Ok(r) => r,
                Err(ureq::Error::Status(status, r)) => {
                    let body = r.into_string().unwrap_or_default();
                    bail!("{url}: {status}: {body}");
                }
                Err(e) => bail!("{url}: {e}\nprovider log:\n{}", self.log()),
            };
            for set in resp.all("set-cookie") {
                jar.set(set);
            }
            let status = resp.status();
            let Some(location) = resp.header("location").map(str::to_owned) else {
                let body = resp.into_string().unwrap_or_default();
                match (form_account, form_action(&body)) {
                    (Some(account), Some(action)) if !form_posted => {
                        url = self.url(&action);
                        post = Some([("account", account)]);
                        form_posted = true;
                        continue;
                    }
                    _ => bail!("{url}: {status} without a redirect: {body}"),
                }
            };
            let next = if location.starts_with('/') {
                self.url(&location)
            } else {
                location
            };
            if next.starts_with(redirect_uri) {
                return callback(&next);
            }
            url = next;
        }
        bail!("more than {MAX_REDIRECTS} redirects before reaching the client")
    }

    /// `POST /token` with `grant_type=authorization_code`, the client authenticating with
    /// HTTP Basic.
    pub fn exchange_code(
        &self,
        client: &Client,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<Tokens, TokenError> {
        self.token_request(
            client,
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", code_verifier),
            ],
        )
    }

    /// `POST /token` with `grant_type=client_credentials` for a resource (no person: a
    /// service's token).
    pub fn client_credentials(
        &self,
        client: &Client,
        resource: &str,
        scope: &str,
    ) -> Result<Tokens, TokenError> {
        self.token_request(
            client,
            &[
                ("grant_type", "client_credentials"),
                ("resource", resource),
                ("scope", scope),
            ],
        )
    }

    /// An access token for the PHR API with `scope` (SMART scopes), for `account` signing in
    /// at the API client: the whole code flow, as a PHR app would run it.
    pub fn api_token(&self, account: &str, scope: &str) -> Result<String> {
        let client = self.client(API_CLIENT).context("no API client")?.clone();
        let mut req = AuthRequest::new(&client, account);
        req.scope = format!("openid {PHR_SCOPE} {scope}");
        let authorized = self.authorize(&req)?;
        let tokens = self.exchange_code(
            &client,
            &authorized.code,
            &req.redirect_uri,
            &req.code_verifier,
        )?;
        Ok(tokens.access_token)
    }

    /// A service's access token for the PHR API (client credentials at the API client): no
    /// person, `sub` = `client_id` = [`API_CLIENT`].
    pub fn service_token(&self, scope: &str) -> Result<String> {
        let client = self.client(API_CLIENT).context("no API client")?.clone();
        Ok(self
            .client_credentials(&client, API_AUDIENCE, scope)?
            .access_token)
    }

    /// How many requests for `path` (e.g. `/jwks`) the provider served so far, from the
    /// request lines it writes to its log.
    pub fn requests_for(&self, path: &str) -> usize {
        self.log()
            .lines()
            .filter_map(|l| l.strip_prefix("oidc provider: request "))
            .filter(|l| {
                l.split(' ')
                    .nth(1)
                    .is_some_and(|p| p.split('?').next() == Some(path))
            })
            .count()
    }

    /// Signs `account` in at `client` with [`AuthRequest::new`] and redeems the code.
    pub fn sign_in(&self, client: &Client, account: &str) -> Result<(AuthRequest, Tokens)> {
        let req = AuthRequest::new(client, account);
        let authorized = self.authorize(&req)?;
        let tokens = self.exchange_code(
            client,
            &authorized.code,
            &req.redirect_uri,
            &req.code_verifier,
        )?;
        Ok((req, tokens))
    }

    /// Any token request, client authenticated with HTTP Basic (RFC 6749 §2.3.1: id and
    /// secret form-encoded first).
    pub fn token_request(
        &self,
        client: &Client,
        form: &[(&str, &str)],
    ) -> Result<Tokens, TokenError> {
        let credentials = format!(
            "{}:{}",
            crate::form_encode(&client.id),
            crate::form_encode(&client.secret)
        );
        let resp = match self
            .agent
            .post(&self.url("/token"))
            .set(
                "Authorization",
                &format!("Basic {}", std_b64(credentials.as_bytes())),
            )
            .send_form(form)
        {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(TokenError::Transport(e.into())),
        };
        let status = resp.status();
        let body: Value = resp
            .into_json()
            .map_err(|e| TokenError::Transport(e.into()))?;
        if status != 200 {
            return Err(TokenError::Refused {
                status,
                error: body["error"].as_str().unwrap_or_default().to_owned(),
                description: body["error_description"].as_str().map(str::to_owned),
            });
        }
        let text = |k: &str| body[k].as_str().map(str::to_owned);
        Ok(Tokens {
            access_token: text("access_token")
                .ok_or_else(|| TokenError::Transport(anyhow!("no access_token in {body}")))?,
            id_token: text("id_token"),
            token_type: text("token_type").unwrap_or_default(),
            scope: text("scope"),
            expires_in: body["expires_in"].as_u64(),
            body,
        })
    }
}

/// The code (or the error) on the client's redirect URI.
fn callback(url: &str) -> Result<Authorized> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let query = query.split('#').next().unwrap_or_default();
    let params: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    if let Some(error) = params.get("error") {
        bail!(
            "the provider redirected with error {error}: {}",
            params.get("error_description").map_or("", String::as_str)
        );
    }
    let code = params
        .get("code")
        .with_context(|| format!("no code on the redirect: {url}"))?;
    Ok(Authorized {
        code: code.clone(),
        state: params.get("state").cloned(),
        iss: params.get("iss").cloned(),
        redirect: url.to_owned(),
    })
}

/// Cookies by name; the provider's cookies are all for its own origin, so paths are ignored
/// (a later cookie of the same name replaces an earlier one, an emptied one is removed).
#[derive(Debug, Default)]
struct CookieJar(BTreeMap<String, String>);

impl CookieJar {
    fn set(&mut self, header: &str) {
        let pair = header.split(';').next().unwrap_or_default();
        let Some((name, value)) = pair.split_once('=') else {
            return;
        };
        let name = name.trim().to_owned();
        if value.is_empty() {
            self.0.remove(&name);
        } else {
            self.0.insert(name, value.trim().to_owned());
        }
    }

    fn header(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| {
            self.0
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

/// The `action` of the provider's login form (its own relative path).
fn form_action(html: &str) -> Option<String> {
    let start = html.find("<form")?;
    let rest = &html[start..];
    let at = rest.find("action=\"")? + "action=\"".len();
    let action = &rest[at..];
    let action = &action[..action.find('"')?];
    action.starts_with('/').then(|| action.to_owned())
}

fn form_urlencode(pairs: &[(&str, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callback_yields_code_state_and_issuer_or_the_error() {
        let ok =
            callback("http://x/cb?code=abc&state=s%2B1&iss=http%3A%2F%2F127.0.0.1%3A5").unwrap();
        assert_eq!(ok.code, "abc");
        assert_eq!(ok.state.as_deref(), Some("s+1"));
        assert_eq!(ok.iss.as_deref(), Some("http://127.0.0.1:5"));
        let err = callback("http://x/cb?error=access_denied&state=s").unwrap_err();
        assert!(err.to_string().contains("access_denied"), "{err}");
    }

    #[test]
    fn the_login_forms_action_is_found() {
        let html = "<h1>Sign in</h1>\n<form method=\"post\" action=\"/interaction/u-1/login\">";
        assert_eq!(form_action(html).as_deref(), Some("/interaction/u-1/login"));
        assert_eq!(form_action("<p>no form</p>"), None);
        // Only the provider's own paths: a form posting elsewhere is not followed.
        assert_eq!(form_action("<form action=\"http://evil/x\">"), None);
    }

    #[test]
    fn the_cookie_jar_replaces_and_drops_emptied_cookies() {
        let mut jar = CookieJar::default();
        jar.set("_interaction=a; path=/interaction/1; httponly");
        jar.set("_session=s; path=/");
        jar.set("_interaction=b; path=/interaction/2");
        assert_eq!(jar.header().as_deref(), Some("_interaction=b; _session=s"));
        jar.set("_interaction=; expires=Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(jar.header().as_deref(), Some("_session=s"));
    }

    #[test]
    fn the_pkce_challenge_is_rfc_7636s_example() {
        // RFC 7636 Appendix B.
        let req = AuthRequest {
            code_verifier: "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".to_owned(),
            ..AuthRequest::new(&OidcConfig::phr("http://x/cb").clients[0], OWNER_SUB)
        };
        assert_eq!(
            req.code_challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
