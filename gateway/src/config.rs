//! Gateway configuration: one struct, nested sections, defaults in code. Layering: defaults <
//! TOML file (`--config`) < environment (`PHR_...`) < command line; the last two are applied
//! by `main.rs` through clap. Unknown keys are an error, so a typo never silently falls back
//! to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use phr_schema::mqtt::MqttUrl;
use phr_schema::Limits;

pub use phr_access::config::{ClaimMapping, ProviderConfig, Secret};

use crate::{Error, Result};

/// Where the gateway writes the issuer it runs with (under the keys directory).
pub const ISSUER_FILE: &str = "issuer";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the SQLite store and the signing key live.
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub mqtt: MqttConfig,
    pub auth: AuthConfig,
    pub ingest: IngestConfig,
    pub people: PeopleConfig,
    pub metrics: MetricsConfig,
    pub export: ExportConfig,
}

/// Who may scrape `/metrics`, and where. The defaults (no token, served on the public HTTP
/// port) suit the demo on loopback; an operator exposing the gateway sets `listen` to an
/// address only the monitoring network reaches, or a token, or both.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` on this address only (its own listener); the public HTTP port then
    /// answers 404 for it. Unset: served on `http.listen`.
    pub listen: Option<SocketAddr>,
    /// A file holding the bearer token scrapers must send (`Authorization: Bearer ...`;
    /// surrounding whitespace ignored). Without a token file or `PHR_METRICS_TOKEN`, no token
    /// is asked for.
    pub token_file: Option<PathBuf>,
    /// The token itself, from the environment (`PHR_METRICS_TOKEN`, set by `main.rs`); never
    /// read from the TOML file. Wins over `token_file`.
    #[serde(skip)]
    pub token: Option<Secret>,
}

impl MetricsConfig {
    /// The bearer token scrapers must present, if one is configured: `token`, else the
    /// trimmed content of `token_file`. An empty token is a configuration error.
    pub fn bearer_token(&self) -> Result<Option<Secret>> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => t.0.trim().to_owned(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| Error::io(path, e))?
                .trim()
                .to_owned(),
            (None, None) => return Ok(None),
        };
        if token.is_empty() {
            return Err(Error::Config(
                "the metrics token (metrics.token_file or PHR_METRICS_TOKEN) is empty".into(),
            ));
        }
        Ok(Some(Secret(token)))
    }
}

/// Limits on concurrent exports (`GET /api/v1/me/export` and the dashboard's downloads).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// Exports one subject may have running at once; more get 429 `too_many_exports`.
    pub per_subject: usize,
    /// Exports running at once across all subjects.
    pub total: usize,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            per_subject: 2,
            total: 8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeopleConfig {
    /// The IANA time zone (e.g. `Asia/Tokyo`) of people registered without one: their days
    /// and nights in summaries and dashboards.
    pub default_time_zone: String,
}

impl Default for PeopleConfig {
    fn default() -> Self {
        Self {
            default_time_zone: crate::store::DEFAULT_TIME_ZONE.to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Requests a caller (a token's subject, else an address) may make per minute...
    pub requests_per_minute: u32,
    /// ...and at once, after being idle.
    pub burst: u32,
    /// Reverse proxies (addresses or CIDR blocks, `"127.0.0.1/32"`, `"10.0.0.0/8"`,
    /// `"::1"`) whose `Forwarded` / `X-Forwarded-Host` / `X-Forwarded-Proto` headers are
    /// believed. Empty (the default): never; the scheme is the listener's and the host the
    /// request's `Host`.
    pub trusted_proxies: Vec<crate::api::forwarded::IpNet>,
    /// Serve HTTPS on `listen` with this certificate chain (PEM, leaf first)...
    pub tls_cert: Option<PathBuf>,
    /// ...and this private key (PEM: PKCS#8, PKCS#1 or SEC1). Both or neither.
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// External broker (`mqtt://host:port`). When unset, the embedded broker runs on `listen`.
    pub url: Option<String>,
    /// Address of the embedded broker.
    pub listen: SocketAddr,
    /// Topic prefix shared with the bridges.
    pub topic_prefix: String,
    /// With an external broker: the password of the gateway's user (`phr-gateway`) there
    /// (see `docs/mosquitto/`). Better from the environment (`PHR_MQTT_PASSWORD`).
    pub password: Option<phr_schema::mqtt::MqttPassword>,
    /// With an external `mqtts://` broker: the CA certificates (PEM) its certificate must
    /// chain to.
    pub ca_file: Option<PathBuf>,
    /// MQTT over TLS at the embedded broker: its certificate chain and private key (PEM
    /// files). With both set, `listen` speaks TLS only (bridges use `mqtts://`).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The gateway's public base URL: the `iss` of its tokens, the base of its discovery
    /// document and token endpoint (`{issuer}/oauth/token`, the `aud` of client assertions).
    /// Empty: `http://{http.listen}`.
    pub issuer: String,
    pub audience: String,
    /// Lifetime of tokens the gateway issues, in seconds.
    pub token_ttl_secs: i64,
    /// Identity providers (OpenID Connect) the gateway trusts besides its own key: for
    /// dashboard sign-in and for API access tokens (`[[auth.providers]]`). See
    /// [`crate::idp`].
    pub providers: Vec<ProviderConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    pub max_batch_bytes: usize,
    pub max_batch_records: usize,
    /// How far in the future a measurement may end (device clock drift), in seconds.
    pub max_future_secs: i64,
    /// Days a record whose person has no storage consent covering it is held in quarantine,
    /// where the person sees it, until they consent (then it is stored) or the days pass
    /// (then it is deleted). 0: not held; such records are rejected `no_storage_consent`.
    pub hold_without_consent_days: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("phr-data"),
            http: HttpConfig::default(),
            mqtt: MqttConfig::default(),
            auth: AuthConfig::default(),
            ingest: IngestConfig::default(),
            people: PeopleConfig::default(),
            metrics: MetricsConfig::default(),
            export: ExportConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            requests_per_minute: 600,
            burst: 120,
            trusted_proxies: Vec::new(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            topic_prefix: phr_schema::envelope::DEFAULT_PREFIX.to_owned(),
            password: None,
            ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: "phr-api".into(),
            token_ttl_secs: 3600,
            providers: Vec::new(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            max_batch_bytes: l.max_batch_bytes,
            max_batch_records: l.max_batch_records,
            max_future_secs: l.max_future.num_seconds(),
            hold_without_consent_days: crate::store::DEFAULT_HOLD_DAYS,
        }
    }
}

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// The configured default time zone, checked against the IANA database.
    pub fn default_time_zone(&self) -> Result<&str> {
        let z = self.people.default_time_zone.as_str();
        z.parse::<chrono_tz::Tz>().map(|_| z).map_err(|_| {
            Error::Config(format!(
                "people.default_time_zone {z:?} is not an IANA time zone (like Asia/Tokyo)"
            ))
        })
    }

    /// The external broker, if one is configured.
    pub fn external_broker(&self) -> Result<Option<MqttUrl>> {
        self.mqtt
            .url
            .as_deref()
            .map(|u| {
                let url = u
                    .parse::<MqttUrl>()
                    .map(|u| u.with_password(self.mqtt.password.clone()))
                    .map_err(|e: phr_schema::mqtt::MqttUrlError| Error::Config(e.to_string()))?;
                match &self.mqtt.ca_file {
                    Some(path) => url.with_ca_file(path).map_err(|e| Error::io(path, e)),
                    None => Ok(url),
                }
            })
            .transpose()
    }

    /// The embedded broker's TLS certificate and key files, if TLS is configured (both or
    /// neither).
    pub fn mqtt_tls(&self) -> Result<Option<(&Path, &Path)>> {
        match (&self.mqtt.tls_cert_file, &self.mqtt.tls_key_file) {
            (Some(c), Some(k)) => Ok(Some((c, k))),
            (None, None) => Ok(None),
            _ => Err(Error::Config(
                "mqtt.tls_cert_file and mqtt.tls_key_file go together".into(),
            )),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_batch_bytes: self.ingest.max_batch_bytes,
            max_batch_records: self.ingest.max_batch_records,
            max_future: chrono::Duration::seconds(self.ingest.max_future_secs),
            ..Limits::default()
        }
    }

    /// The scheme of the API listener: `https` when it has a certificate.
    pub fn http_scheme(&self) -> &'static str {
        if self.http.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The TLS configuration of the API listener, from `http.tls_cert` and `http.tls_key`
    /// (`None`: plain HTTP). rustls with the ring provider, TLS 1.2 and 1.3.
    pub fn http_tls(&self) -> Result<Option<rustls::ServerConfig>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (cert, key) = match (&self.http.tls_cert, &self.http.tls_key) {
            (None, None) => return Ok(None),
            (Some(c), Some(k)) => (c, k),
            _ => {
                return Err(Error::Config(
                    "http.tls_cert and http.tls_key go together".into(),
                ))
            }
        };
        let bad = |path: &Path, e: &dyn std::fmt::Display| {
            Error::Config(format!("{}: {e}", path.display()))
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| bad(cert, &e))?;
        if chain.is_empty() {
            return Err(bad(cert, &"no certificate in the file"));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| Error::Config(format!("TLS certificate and key: {e}")))?;
        Ok(Some(config))
    }

    /// The issuer URL: `auth.issuer`, or `{http|https}://{http.listen}` when that is empty.
    pub fn issuer(&self) -> String {
        if self.auth.issuer.is_empty() {
            format!("{}://{}", self.http_scheme(), self.http.listen)
        } else {
            self.auth.issuer.trim_end_matches('/').to_owned()
        }
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("phr.sqlite")
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.data_dir.join("keys")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_unknown_keys_fail() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway.example.toml");
        let c = Config::from_file(&path).unwrap();
        assert_eq!(c.mqtt.topic_prefix, "phr/v1");
        assert!(c.external_broker().unwrap().is_none());
        assert!(toml::from_str::<Config>("[mqtt]\nlisten_addr = \"127.0.0.1:1\"").is_err());
        assert!(toml::from_str::<Config>("datadir = \"x\"").is_err());
        assert_eq!(c.default_time_zone().unwrap(), "Asia/Tokyo");
        assert_eq!(c, Config::default(), "the example shows the defaults");
        let c: Config = toml::from_str(
            "[http]\ntrusted_proxies = [\"127.0.0.1/32\", \"::1\"]\n[metrics]\nlisten = \"127.0.0.1:9464\"\ntoken_file = \"/t\"",
        )
        .unwrap();
        assert_eq!(c.http.trusted_proxies.len(), 2);
        assert!(c.metrics.listen.is_some() && c.metrics.token_file.is_some());
        assert!(toml::from_str::<Config>("[http]\ntrusted_proxies = [\"10.0.0.0/40\"]").is_err());
        assert!(
            toml::from_str::<Config>("[metrics]\ntoken = \"in-the-file\"").is_err(),
            "secrets never in the file"
        );
        let mut bad = Config::default();
        bad.people.default_time_zone = "Mars/Olympus".into();
        assert!(bad
            .default_time_zone()
            .unwrap_err()
            .to_string()
            .contains("IANA"));
    }

    /// The README's Keycloak example is a configuration the gateway accepts.
    #[test]
    fn the_readmes_identity_provider_example_parses() {
        let readme = include_str!("../../README.md");
        let at = readme.find("A Keycloak realm").expect("the example");
        let block = &readme[at..];
        let start = block.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let end = block[start..].find("```").expect("its end");
        let c: Config = toml::from_str(&block[start..start + end]).expect("the example parses");
        let p = &c.auth.providers[0];
        assert_eq!(p.claims.roles.as_deref(), Some("realm_access.roles"));
        assert_eq!(
            p.claims.role_map.get("phr-owner").map(String::as_str),
            Some("owner")
        );
        let mut checked = p.clone();
        checked.client_secret_file = None;
        checked.client_secret = Some(Secret("s".into()));
        crate::idp::Providers::from_config(&[checked], crate::store::SystemClock::shared())
            .expect("and is valid");
    }

    #[test]
    fn external_broker_url_is_checked() {
        let mut c = Config::default();
        c.mqtt.url = Some("mqtt://127.0.0.1:1884".into());
        assert_eq!(
            c.external_broker().unwrap(),
            Some(MqttUrl::new("127.0.0.1", 1884))
        );
        c.mqtt.url = Some("http://x".into());
        assert!(c.external_broker().is_err());
    }

    #[test]
    fn mqtt_tls_needs_both_certificate_and_key() {
        let mut c = Config::default();
        assert!(c.mqtt_tls().unwrap().is_none());
        c.mqtt.tls_cert_file = Some("cert.pem".into());
        assert!(c.mqtt_tls().is_err());
        c.mqtt.tls_key_file = Some("key.pem".into());
        assert!(c.mqtt_tls().unwrap().is_some());
    }
}
