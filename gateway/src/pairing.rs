//! Starting a pairing: a fresh code, stored hashed, and sent to the bridge to show. Shared by
//! the API (`POST /api/v1/me/devices/pairings`) and the demo.

use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, QoS};

use phr_schema::{PairingRequest, Topics};

use crate::store::pairing::{new_code, Pairing};
use crate::store::Store;
use crate::{Error, Result};

/// Starts `person_id`'s pairing of `device_id` through `bridge_id`.
pub fn start(
    store: &Store,
    mqtt: &AsyncClient,
    topics: &Topics,
    person_id: &str,
    bridge_id: &str,
    device_id: &str,
    now: DateTime<Utc>,
) -> Result<Pairing> {
    let code = new_code();
    let pairing = store.start_pairing(person_id, bridge_id, device_id, &code, now)?;
    let request = PairingRequest {
        pairing_id: pairing.pairing_id,
        device_id: pairing.device_id.clone(),
        code,
        expires_at: pairing.expires_at.fixed_offset(),
    };
    let payload = serde_json::to_vec(&request).map_err(|e| Error::Broker(e.to_string()))?;
    mqtt.try_publish(
        topics.pairing_requests(bridge_id),
        QoS::AtLeastOnce,
        false,
        payload,
    )
    .map_err(|_| Error::Broker("could not queue the pairing request; try again".into()))?;
    tracing::info!(bridge_id, device_id, "pairing started");
    Ok(pairing)
}
