//! The BLE bridge: turns what wearables send over GATT into normalised records and delivers
//! them to the gateway over MQTT without losing or duplicating any.
//!
//! # Layout
//! - [`decode`]: sans-io GATT decoders, one module per device family, one registry table.
//! - [`identity`]: the bridge's signing key (its credential towards the gateway).
//! - [`normalise`]: decoded readings to `phr_schema::Record`s (ids, units, offsets).
//! - [`device_state`]: per-device state between decoders and normaliser (PAMS sessions, totals).
//! - [`sim`]: simulated wearables that emit the bytes real GATT characteristics would carry.
//! - [`outbox`]: the durable on-disk queue; batches leave it only on the gateway's ack, what the
//!   gateway refused goes to its dead-letter table; per-type history marks.
//! - [`publish`]: the MQTT publisher (rumqttc): resend until acked; nearby reports paced.
//! - [`nearby`]: what the bridge sees nearby, and when a scan is worth a report.
//! - [`cumulative`]: running daily step totals to interval deltas in the device's IANA zone.
//! - [`daemon`]: `phr-bridge run`, real devices through the same pipeline (feature `ble`).
//! - [`simulate`]: `phr-bridge simulate`, simulated bands through the whole pipeline.
//! - [`transport`]: what the Bluetooth LE transport reports and how it is configured; with
//!   feature `ble` (on by default) the transport itself, through btleplug (the only module
//!   that imports it).
//! - [`mqtt`]: broker URLs and client options shared with the gateway (`phr_schema::mqtt`).

pub mod cumulative;
#[cfg(feature = "ble")]
pub mod daemon;
pub mod decode;
pub mod device_state;
pub mod identity;
pub mod nearby;
pub mod normalise;
pub mod outbox;
pub mod publish;
pub mod sim;
pub mod simulate;
pub mod transport;

pub use phr_schema::mqtt;

/// Errors of the bridge library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("outbox storage: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("encoding a batch: {0}")]
    Json(#[from] serde_json::Error),
    #[error("outbox is full ({depth} of {max} batches); holding new data until the gateway acks")]
    OutboxFull { depth: usize, max: usize },
    #[error("outbox data is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("decoding a GATT payload: {0}")]
    Decode(#[from] decode::DecodeError),
    #[error("{0}")]
    Io(String),
    #[error("Bluetooth: {0}")]
    Bluetooth(String),
    #[error("a bridge task stopped unexpectedly")]
    Poisoned,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
