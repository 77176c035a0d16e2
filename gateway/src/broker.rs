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

/// Starts rumqttd on `listen` (MQTT 3.1.1). It runs until the process ends.
pub fn start(listen: SocketAddr) -> Result<()> {
    // Fails with the address in the error if something (a Mosquitto, say) holds the port.
    drop(TcpListener::bind(listen).map_err(|e| Error::AddressInUse {
        addr: listen,
        what: "MQTT broker",
        source: e,
    })?);
    let server = ServerSettings {
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
        metrics: None,
    };
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(|e| Error::Broker(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answers_mqtt(listen) {
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

/// Whether an MQTT 3.1.1 broker answers a CONNECT on `addr` with a CONNACK. A bare TCP probe
/// would do, but rumqttd logs every connection that closes before CONNECT as an error.
fn answers_mqtt(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    const CONNECT: &[u8] = &[
        0x10, 17, // CONNECT, remaining length
        0, 4, b'M', b'Q', b'T', b'T', 4, // protocol name and level 4 (3.1.1)
        0x02, 0, 10, // clean session, keep-alive 10 s
        0, 5, b'p', b'r', b'o', b'b', b'e', // client id
    ];
    const DISCONNECT: &[u8] = &[0xE0, 0];
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut connack = [0u8; 4];
    let ok =
        s.write_all(CONNECT).is_ok() && s.read_exact(&mut connack).is_ok() && connack[0] == 0x20;
    let _ = s.write_all(DISCONNECT);
    ok
}
