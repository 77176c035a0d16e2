//! MQTT connection settings shared by the bridge and the gateway: broker URLs, the static
//! password, the largest packet; client options with feature `client` (rumqttc).

use std::fmt;
use std::str::FromStr;

/// Largest MQTT packet either side sends or accepts: a batch is at most 1 MiB of JSON
/// (`phr_schema::Limits::max_batch_bytes`) plus topic and headers.
pub const MAX_PACKET_BYTES: usize = 1024 * 1024 + 4096;

/// A broker address, `mqtt://host:port` (port defaults to 1883), and the static password
/// to present there, if the broker has a password file (an external Mosquitto). The password
/// never comes from the URL (URLs get logged); it is set from configuration or the
/// environment, and neither `Display` nor `Debug` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    pub host: String,
    pub port: u16,
    pub password: Option<MqttPassword>,
    /// `mqtts://`: TLS, verifying the broker against `ca_pem`.
    pub tls: bool,
    /// PEM certificates the broker's certificate must chain to (see [`MqttUrl::with_ca_file`]).
    pub ca_pem: Option<Vec<u8>>,
}

/// A static MQTT password. `Debug` redacts it; [`MqttPassword::expose`] is the one way out.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct MqttPassword(String);

impl MqttPassword {
    pub fn new(password: impl Into<String>) -> Self {
        Self(password.into())
    }

    /// The password itself, for the CONNECT packet and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for MqttPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MqttPassword(<redacted>)")
    }
}

impl FromStr for MqttPassword {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

impl MqttUrl {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            password: None,
            tls: false,
            ca_pem: None,
        }
    }

    /// The same broker, verified against the CA certificates (PEM) in `path`.
    pub fn with_ca_file(mut self, path: &std::path::Path) -> std::io::Result<Self> {
        self.ca_pem = Some(std::fs::read(path)?);
        Ok(self)
    }

    /// The same broker with `password` to present.
    pub fn with_password(mut self, password: Option<MqttPassword>) -> Self {
        self.password = password;
        self
    }

    /// Client options with the project's defaults: large packets, short keep-alive so a dead
    /// broker is noticed within seconds, a clean session (acks are re-requested by resending).
    #[cfg(feature = "client")]
    pub fn options(&self, client_id: &str) -> rumqttc::MqttOptions {
        let mut o = rumqttc::MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_keep_alive(std::time::Duration::from_secs(5))
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
            .set_clean_session(true);
        if self.tls {
            // Without a CA file nothing verifies, so the handshake fails (with an error,
            // not a fallback to plain TCP).
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Simple {
                    ca: self.ca_pem.clone().unwrap_or_default(),
                    alpn: None,
                    client_auth: None,
                },
            ));
        }
        o
    }
}

impl fmt::Display for MqttUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// Why an MQTT URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MqttUrlError {
    #[error("MQTT URL must start with mqtt:// or mqtts:// (TLS): {0:?}")]
    Scheme(String),
    #[error("MQTT URL has no host: {0:?}")]
    Host(String),
    #[error("MQTT URL has an invalid port: {0:?}")]
    Port(String),
}

impl FromStr for MqttUrl {
    type Err = MqttUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tls, rest) = match (s.strip_prefix("mqtt://"), s.strip_prefix("mqtts://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => return Err(MqttUrlError::Scheme(s.into())),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            // An IPv6 literal without a port ends in ']'.
            Some((h, p)) if !p.ends_with(']') => (
                h,
                p.parse::<u16>().map_err(|_| MqttUrlError::Port(s.into()))?,
            ),
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(MqttUrlError::Host(s.into()));
        }
        if port == 0 {
            return Err(MqttUrlError::Port(s.into()));
        }
        let mut url = Self::new(host, port);
        url.tls = tls;
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_and_port() {
        assert_eq!(
            "mqtt://127.0.0.1:1883".parse(),
            Ok(MqttUrl::new("127.0.0.1", 1883))
        );
        assert_eq!(
            "mqtt://broker.local".parse(),
            Ok(MqttUrl::new("broker.local", 1883))
        );
        assert_eq!("mqtt://[::1]:1884/".parse(), Ok(MqttUrl::new("::1", 1884)));
    }

    #[test]
    fn mqtts_is_tls_on_8883_by_default() {
        let url: MqttUrl = "mqtts://broker.local".parse().unwrap();
        assert!(url.tls);
        assert_eq!((url.host.as_str(), url.port), ("broker.local", 8883));
        assert_eq!(url.to_string(), "mqtts://broker.local:8883");
        assert!(!"mqtt://h:1".parse::<MqttUrl>().unwrap().tls);
    }

    #[test]
    fn the_password_never_shows_in_display_or_debug() {
        let url = MqttUrl::new("h", 1).with_password(Some(MqttPassword::new("hunter2-secret")));
        assert_eq!(url.to_string(), "mqtt://h:1");
        let debug = format!("{url:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
        assert_eq!(
            url.password.as_ref().map(MqttPassword::expose),
            Some("hunter2-secret")
        );
    }

    #[test]
    fn refuses_bad_urls() {
        assert!(matches!(
            "tcp://x:1".parse::<MqttUrl>(),
            Err(MqttUrlError::Scheme(_))
        ));
        assert!(matches!(
            "mqtt://:1883".parse::<MqttUrl>(),
            Err(MqttUrlError::Host(_))
        ));
        assert!(matches!(
            "mqtt://h:99999".parse::<MqttUrl>(),
            Err(MqttUrlError::Port(_))
        ));
        assert!(matches!(
            "mqtt://h:0".parse::<MqttUrl>(),
            Err(MqttUrlError::Port(_))
        ));
    }
}
