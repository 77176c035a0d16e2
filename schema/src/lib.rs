//! The PHR lifelog schema: what a record is, how it is identified, when it is valid, how it
//! travels over MQTT and how it looks as Open mHealth. Pure data and functions: no I/O (but
//! [`keyfile`], behind its feature), no clock (callers pass `now`), no tokio.
//!
//! # Layout
//! - [`record`]: the normalised record (`step-count`, `sleep-episode`, `heart-rate`) as it
//!   travels from bridge to gateway and back out of the API.
//! - [`id`]: the natural key of a record and its deterministic UUIDv5 `record_id`.
//! - [`validate`]: total validation of records and batches, each rejection a named [`Reason`].
//! - [`envelope`]: the MQTT contract: topics, the batch envelope, the gateway's ack.
//! - [`nearby`]: a bridge's report of the devices it sees, bounded and cleaned.
//! - [`channel`]: the bridge–gateway channel key: sealed MQTT payloads, pairing codes.
//! - [`mqtt`]: broker URLs, the static password and the packet limit both sides use.
//! - [`keyfile`] (feature `keyfile`): Ed25519 key files (PKCS#8 v1 PEM, mode 0600): load,
//!   create or migrate the older `.pk8`, written whole or not at all.
//! - [`omh`]: Open mHealth (IEEE 1752.1 family) data points, header 1.2.
//! - [`fhir`]: HL7 FHIR R4 `Observation`s (LOINC), daily step totals, `Bundle`, NDJSON, and back.
//! - [`csv`]: RFC 4180 CSV, one row per record.

pub mod channel;
pub mod csv;
pub mod envelope;
pub mod fhir;
pub mod id;
#[cfg(feature = "keyfile")]
pub mod keyfile;
pub mod mqtt;
pub mod nearby;
pub mod omh;
pub mod record;
pub mod validate;

pub use envelope::{
    Ack, Batch, PairingReport, PairingRequest, RecordOutcome, Rejection, Topics, ENVELOPE_VERSION,
};
pub use id::{record_id, RecordKey};
pub use nearby::{NearbyDevice, NearbyError, NearbyReport};
pub use record::{
    Body, HeartRate, Modality, Provenance, Record, RecordType, SleepEpisode, SleepStage,
    SleepStageKind, StepCount, TimeInterval, UnitValue,
};
pub use validate::{Limits, Reason};
