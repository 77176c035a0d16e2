//! The embedded MQTT broker (rumqttd), so one binary runs the whole gateway.
//!
//! rumqttd cannot report the port it bound, and a server thread that fails to bind only logs.
//! So [`start`] first checks that the address is free (naming it in the error), then starts
//! the broker on its own threads and waits until it accepts connections.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use phr_bridge::mqtt::MAX_PACKET_BYTES;

use crate::{Error, Result};

/// Who may connect to the embedded broker.
///
/// - The gateway's own client: user `phr-gateway` with a secret made fresh at every start.
/// - An enrolled bridge (its key registered by an operator): user = its bridge id,
///   password = its signature over bridge id and MQTT client id (see
///   `phr_schema::envelope::connect_digest`).
/// - Nobody else: anonymous clients, bridges that are not enrolled and malformed user names
///   are refused.
///
/// What a bridge sends only counts if it opens with that bridge's channel key
/// (`crate::channel`), whoever managed to publish it.
#[derive(Clone)]
pub struct Access {
    pub gateway_secret: String,
    pub store: std::sync::Arc<crate::Store>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").finish_non_exhaustive()
    }
}

/// The user name of the gateway's own MQTT client.
pub const GATEWAY_USER: &str = "phr-gateway";

impl Access {
    /// Whether a client may connect.
    pub fn allows(&self, client_id: &str, user: &str, password: &str) -> bool {
        if user == GATEWAY_USER {
            return password.len() == self.gateway_secret.len()
                && password
                    .bytes()
                    .zip(self.gateway_secret.bytes())
                    .fold(0u8, |a, (x, y)| a | (x ^ y))
                    == 0;
        }
        if !phr_schema::envelope::is_valid_id(user) {
            return false;
        }
        match self.store.bridge_public_key(user) {
            Ok(None) => false,
            Ok(Some(key)) => {
                let digest = phr_schema::envelope::connect_digest(user, client_id);
                signed_by(&key, &digest, password)
            }
            Err(e) => {
                tracing::error!(error = %e, "could not check a bridge's credentials; refusing");
                false
            }
        }
    }
}

/// Whether `signature` (128 hex characters) is `key`'s Ed25519 signature of `digest`.
fn signed_by(key: &ed25519_dalek::VerifyingKey, digest: &[u8; 32], signature: &str) -> bool {
    if signature.len() != 128 || !signature.is_ascii() {
        return false;
    }
    let mut bytes = [0u8; 64];
    for (i, b) in bytes.iter_mut().enumerate() {
        match u8::from_str_radix(&signature[2 * i..2 * i + 2], 16) {
            Ok(v) => *b = v,
            Err(_) => return false,
        }
    }
    key.verify_strict(digest, &ed25519_dalek::Signature::from_bytes(&bytes))
        .is_ok()
}

/// Starts rumqttd on `listen` (MQTT 3.1.1). It runs until the process ends. With `access`,
/// every connection is authenticated (see [`Access`]); without, anyone may connect.
///
/// With `metrics`, the broker's count of open MQTT connections is copied into
/// `phr_mqtt_connections` from rumqttd's router meters, which it pushes every
/// [`METER_PUSH_SECS`] while messages flow (an idle broker keeps the last value).
pub fn start(
    listen: SocketAddr,
    access: Option<Access>,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
) -> Result<()> {
    // Fails with the address in the error if something (a Mosquitto, say) holds the port.
    drop(TcpListener::bind(listen).map_err(|e| Error::AddressInUse {
        addr: listen,
        what: "MQTT broker",
        source: e,
    })?);
    let mut server = ServerSettings {
        name: "phr-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: MAX_PACKET_BYTES,
            max_inflight_count: 256,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    if let Some(access) = access.clone() {
        server.connections.set_auth_handler(
            move |client_id: String, user: String, password: String| {
                let access = access.clone();
                async move {
                    let ok = tokio::task::spawn_blocking(move || {
                        access.allows(&client_id, &user, &password)
                    })
                    .await
                    .unwrap_or(false);
                    if !ok {
                        tracing::warn!(
                            "refused an MQTT connection: unknown client or bad credentials"
                        );
                    }
                    ok
                }
            },
        );
    }
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 1_000,
            max_segment_size: 64 * 1024 * 1024,
            max_segment_count: 8,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("phr-v4".to_owned(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: metrics.is_some().then(meter_settings),
    };
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Some(metrics) = metrics {
                match broker.meters() {
                    Ok(link) => watch_connections(link, metrics),
                    Err(e) => tracing::warn!(error = %e, "no MQTT connection meter"),
                }
            }
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(|e| Error::Broker(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let probe = access
        .as_ref()
        .map(|a| (GATEWAY_USER, a.gateway_secret.as_str()));
    while !answers_mqtt(listen, probe) {
        if Instant::now() > deadline {
            return Err(Error::Broker(format!(
                "embedded broker did not start listening on {listen}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!(%listen, "embedded MQTT broker listening");
    Ok(())
}

/// How often rumqttd pushes its router meters (open connections, publishes), in seconds.
pub const METER_PUSH_SECS: u64 = 5;

fn meter_settings() -> HashMap<rumqttd::MetricType, rumqttd::MetricSettings> {
    // `MetricSettings` has no public constructor; its serde form is its documented config.
    let every = |secs: u64| -> rumqttd::MetricSettings {
        serde_json::from_value(serde_json::json!({ "push_interval": secs }))
            .expect("rumqttd's MetricSettings reads push_interval")
    };
    // rumqttd 0.20's timer unwraps both intervals whichever is configured, so both are set;
    // nobody listens to the alerts.
    HashMap::from([
        (rumqttd::MetricType::Meters, every(METER_PUSH_SECS)),
        (rumqttd::MetricType::Alerts, every(3600)),
    ])
}

/// Copies the router's open-connection count into the metrics, on a thread of its own.
fn watch_connections(
    link: rumqttd::meters::MetersLink,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) {
    let spawned = std::thread::Builder::new()
        .name("mqtt-meters".into())
        .spawn(move || loop {
            match link.recv() {
                Ok(meters) => {
                    for m in meters {
                        if let rumqttd::Meter::Router(_, r) = m {
                            metrics.set_mqtt_connections(r.total_connections as u64);
                        }
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no MQTT connection meter");
    }
}

/// Whether an MQTT 3.1.1 broker answers a CONNECT on `addr` with a CONNACK. A bare TCP probe
/// would do, but rumqttd logs every connection that closes before CONNECT as an error.
fn answers_mqtt(addr: SocketAddr, login: Option<(&str, &str)>) -> bool {
    use std::io::{Read, Write};
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4]; // protocol name, level 4 (3.1.1)
    body.push(if login.is_some() { 0xC2 } else { 0x02 }); // user + password flags, clean session
    body.extend_from_slice(&[0, 10]); // keep-alive 10 s
    let mut field = |v: &[u8]| {
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
    };
    field(b"probe");
    if let Some((user, password)) = login {
        field(user.as_bytes());
        field(password.as_bytes());
    }
    if body.len() > 127 {
        return false;
    }
    let mut connect = vec![0x10, body.len() as u8];
    connect.extend_from_slice(&body);
    const DISCONNECT: &[u8] = &[0xE0, 0];
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut connack = [0u8; 4];
    let ok =
        s.write_all(&connect).is_ok() && s.read_exact(&mut connack).is_ok() && connack[0] == 0x20;
    let _ = s.write_all(DISCONNECT);
    ok
}
