//! The embedded MQTT broker (rumqttd), so one binary runs the whole gateway, behind an
//! authorising front.
//!
//! rumqttd 0.20 authenticates a CONNECT (an auth handler) but has no topic authorisation at
//! all: any client it admits may subscribe to `#` and publish anywhere. So rumqttd listens
//! only on a private loopback port and admits only the gateway's per-start secret; the
//! public MQTT address is served by [`front`], which authenticates each CONNECT
//! ([`Access::identify`]), checks every PUBLISH topic, SUBSCRIBE filter and last will
//! against the topic rules (`phr_schema::Topics::bridge_may_publish` / `bridge_may_subscribe`),
//! and forwards the allowed frames to rumqttd with the secret in place of the client's
//! password. The gateway's own client connects to the private port directly.
//!
//! The front binds the public address itself, so port 0 works there and [`start_guarded`]
//! reports the port it got. rumqttd cannot report the port it bound, and a server thread that
//! fails to bind only logs. So [`start`] first checks that the address is free (naming it in
//! the error), then starts the broker on its own threads and waits until it answers, failing
//! if its server thread ends first; [`start_on_free_port`] picks a free loopback port for it
//! and, when another process takes that port before rumqttd binds it, tries a fresh one.

mod front;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tokio_util::sync::CancellationToken;

use phr_schema::mqtt::{MqttUrl, MAX_PACKET_BYTES};
use phr_schema::Topics;

use crate::store::prelude::*;
use crate::{Error, Result};

/// Who may connect to the embedded broker, and as whom ([`Identity`]). Checked by the front
/// on the public MQTT address; what each identity may publish and subscribe to is checked
/// there too, on every packet.
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
///
/// A bridge may publish only its own records and pairing reports and subscribe only to
/// exactly its own acks and pairing requests; a refused PUBLISH (or last will) closes the
/// connection, a refused SUBSCRIBE filter is answered with SUBACK failure (0x80).
///
/// An operator configures nothing for this: the secret is made at start, rumqttd's port is
/// private. What stays theirs: TLS on the public MQTT address (`mqtt.tls_cert_file`,
/// `mqtt.tls_key_file`), or else keeping it reachable only by bridges (README, security).
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

/// Who an admitted MQTT client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The gateway's own client: every topic.
    Gateway,
    /// A bridge: its own topics only.
    Bridge(String),
}

impl Identity {
    /// Whether this client may publish on `topic` (a PUBLISH or a last will).
    pub fn may_publish(&self, topics: &Topics, topic: &str) -> bool {
        match self {
            Self::Gateway => true,
            Self::Bridge(b) => topics.bridge_may_publish(b, topic),
        }
    }

    /// Whether this client may subscribe to `filter`.
    pub fn may_subscribe(&self, topics: &Topics, filter: &str) -> bool {
        match self {
            Self::Gateway => true,
            Self::Bridge(b) => topics.bridge_may_subscribe(b, filter),
        }
    }
}

impl Access {
    /// Who a client is, if it may connect (see [`Access`]).
    pub fn identify(&self, client_id: &str, user: &str, password: &str) -> Option<Identity> {
        if user == GATEWAY_USER {
            return crate::auth::same_secret(password, &self.gateway_secret)
                .then_some(Identity::Gateway);
        }
        if !phr_schema::envelope::is_valid_id(user) {
            return None;
        }
        let ok = match self.store.bridge_public_key(user) {
            Ok(None) => false,
            Ok(Some(key)) => {
                let digest = phr_schema::envelope::connect_digest(user, client_id);
                signed_by(&key, &digest, password)
            }
            Err(e) => {
                tracing::error!(error = %e, "could not check a bridge's credentials; refusing");
                false
            }
        };
        ok.then(|| Identity::Bridge(user.to_owned()))
    }

    /// Whether a client may connect.
    pub fn allows(&self, client_id: &str, user: &str, password: &str) -> bool {
        self.identify(client_id, user, password).is_some()
    }
}

/// Whether `signature` (128 hex characters) is `key`'s Ed25519 signature of `digest`.
fn signed_by(key: &ed25519_dalek::VerifyingKey, digest: &[u8; 32], signature: &str) -> bool {
    let mut bytes = [0u8; 64];
    if hex::decode_to_slice(signature, &mut bytes).is_err() {
        return false;
    }
    key.verify_strict(digest, &ed25519_dalek::Signature::from_bytes(&bytes))
        .is_ok()
}

/// The embedded broker's two addresses.
#[derive(Debug, Clone)]
pub struct Guarded {
    /// Where the front listens (the address bridges use): the port actually bound, also when
    /// port 0 was asked for.
    pub public: SocketAddr,
    /// rumqttd's private port, for the gateway's own client.
    pub private: MqttUrl,
}

/// Binds the public MQTT address (port 0 for any free port), naming it if it is taken.
pub fn bind_public(listen: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(listen).map_err(|e| Error::AddressInUse {
        addr: listen,
        what: "MQTT broker",
        source: e,
    })
}

/// Starts the embedded broker as the gateway runs it: the front on `public` (the address
/// bridges use, bound by the caller: [`bind_public`]) and rumqttd on a private loopback port
/// that admits only `access.gateway_secret`. Both run until `shutdown` (the front) or the end
/// of the process (rumqttd).
pub async fn start_guarded(
    public: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    access: Access,
    topics: Topics,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
) -> Result<Guarded> {
    let unusable = |addr, e| Error::AddressInUse {
        addr,
        what: "MQTT broker",
        source: e,
    };
    let bound = public
        .local_addr()
        .map_err(|e| unusable(SocketAddr::from(([0, 0, 0, 0], 0)), e))?;
    let unusable = |e| unusable(bound, e);
    public.set_nonblocking(true).map_err(unusable)?;
    let public = tokio::net::TcpListener::from_std(public).map_err(unusable)?;
    let secret = access.gateway_secret.clone();
    let meters = metrics.clone();
    let private =
        tokio::task::spawn_blocking(move || start_on_free_port(Some(secret), Some(meters)))
            .await
            .map_err(|_| Error::Poisoned)??;
    let front = front::Front::new(access, topics, private, metrics, tls);
    tokio::spawn(front::run(public, Arc::new(front), shutdown));
    tracing::info!(listen = %bound, "MQTT front listening (embedded broker)");
    Ok(Guarded {
        public: bound,
        private: MqttUrl::new(private.ip().to_string(), private.port()),
    })
}

/// How many free ports [`start_on_free_port`] tries before giving up.
pub const FREE_PORT_TRIES: usize = 5;

/// [`start`] on a loopback port that was free a moment ago; returns the address. rumqttd binds
/// the port itself, so another process can take it in between: then rumqttd's server ends
/// ([`start`] fails with [`Error::AddressInUse`]) and a fresh port is tried, up to
/// [`FREE_PORT_TRIES`] times.
pub fn start_on_free_port(
    secret: Option<String>,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
) -> Result<SocketAddr> {
    let mut tries = 0;
    loop {
        tries += 1;
        let addr = free_loopback_addr()?;
        match start(addr, secret.clone(), metrics.clone()) {
            Ok(()) => return Ok(addr),
            Err(Error::AddressInUse { source, .. }) if tries < FREE_PORT_TRIES => {
                tracing::debug!(%addr, error = %source, "port taken before the broker bound it; trying another");
            }
            Err(e) => return Err(e),
        }
    }
}

/// The TLS side of the front: the certificate chain and private key in PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Config(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!("{}: no certificate", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Config(format!("{}: {e}", key.display())))?;
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Config(format!("MQTT TLS certificate and key: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A loopback address with a port that was free a moment ago (rumqttd binds it itself).
fn free_loopback_addr() -> Result<SocketAddr> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    TcpListener::bind(any)
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::AddressInUse {
            addr: any,
            what: "embedded MQTT broker (private port)",
            source: e,
        })
}

/// Starts rumqttd on `listen` (MQTT 3.1.1). It runs until the process ends. With `secret`,
/// only clients presenting it as their password are admitted (the front and the gateway's
/// own client, see [`start_guarded`]); without, anyone may connect and use any topic, which
/// only benchmarks do.
///
/// With `metrics`, the broker's count of open MQTT connections is copied into
/// `phr_mqtt_connections` from rumqttd's router meters, which it pushes every
/// [`METER_PUSH_SECS`] while messages flow (an idle broker keeps the last value).
pub fn start(
    listen: SocketAddr,
    secret: Option<String>,
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
    if let Some(secret) = secret.clone() {
        server.connections.set_auth_handler(
            move |_client_id: String, _user: String, password: String| {
                let ok = crate::auth::same_secret(&password, &secret);
                async move {
                    if !ok {
                        tracing::warn!("refused a connection to the private MQTT port");
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
    // `Broker::start` returns only when its server thread has ended, which before the broker
    // answers means it could not bind `listen` (taken since the check above).
    let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ended_here = ended.clone();
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
            let result = broker.start();
            ended_here.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Err(e) = result {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(|e| Error::Broker(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let probe = secret.as_deref().map(|s| (GATEWAY_USER, s));
    let taken = || Error::AddressInUse {
        addr: listen,
        what: "MQTT broker",
        source: std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "the broker's server ended before it answered (port taken)",
        ),
    };
    loop {
        let answered = answers_mqtt(listen, probe);
        if answered {
            // Whatever answered may be another process on the port, and our server's failed
            // bind would end its thread moments later: give it those moments.
            std::thread::sleep(Duration::from_millis(50));
        }
        if ended.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(taken());
        }
        if answered {
            break;
        }
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
///
/// After the CONNACK the probe just closes the socket, without a DISCONNECT: rumqttd 0.20
/// removes a connection on its DISCONNECT and then again when the socket closes, and the
/// second removal is logged as `ERROR no-connection id 0 is already gone` (or, when the
/// router drops the link first, `ERROR router-drop`). A close alone is its clean path (an
/// INFO `disconnected`, below the default filter). The probe sets no will, so closing
/// without DISCONNECT publishes nothing.
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
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut connack = [0u8; 4];
    // Dropping `s` closes it (see above for why there is no DISCONNECT).
    // Accepted (return code 0): with a fresh secret, only our own rumqttd accepts it.
    s.write_all(&connect).is_ok()
        && s.read_exact(&mut connack).is_ok()
        && connack[0] == 0x20
        && connack[3] == 0
}
