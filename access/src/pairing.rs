//! Starting a pairing: the store checks who may (limits, enrolment, nobody else's open
//! binding) and keeps the code hashed; the bridge is sent a sealed request and computes the
//! same code from its channel key. Shared by the API (`POST /api/v1/me/devices/pairings`) and
//! the demo.

use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, QoS};
use uuid::Uuid;

use phr_schema::{PairingRequest, Topics};

use crate::channel::Channels;
use crate::store::pairing::{Pairing, StartRefusal};
use crate::store::Backend;
use crate::{Error, Result};

/// What a pairing needs from the running gateway.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub store: &'a dyn Backend,
    pub channels: &'a Channels,
    pub mqtt: &'a AsyncClient,
    pub topics: &'a Topics,
}

/// Starts `person_id`'s pairing of `device_id` through `bridge_id`.
pub fn start(
    cx: Context<'_>,
    person_id: &str,
    bridge_id: &str,
    device_id: &str,
    now: DateTime<Utc>,
) -> Result<std::result::Result<Pairing, StartRefusal>> {
    let pairing_id = Uuid::new_v4();
    // The code only the bridge's key holder can compute. A bridge that is not enrolled has no
    // channel; the store refuses it (and logs the attempt) with a code nobody can match.
    let channel = cx.channels.channel(bridge_id)?;
    let code = channel
        .as_ref()
        .map(|c| c.pairing_code(&pairing_id, device_id))
        .unwrap_or_default();
    let pairing = match cx
        .store
        .start_pairing(person_id, bridge_id, device_id, pairing_id, &code, now)?
    {
        Ok(p) => p,
        Err(refusal) => {
            tracing::info!(
                bridge_id,
                device_id,
                reason = refusal.code(),
                "pairing refused"
            );
            return Ok(Err(refusal));
        }
    };
    let request = PairingRequest {
        pairing_id: pairing.pairing_id,
        device_id: pairing.device_id.clone(),
        expires_at: pairing.expires_at.fixed_offset(),
    };
    let topic = cx.topics.pairing_requests(bridge_id);
    let body = serde_json::to_vec(&request).map_err(|e| Error::Broker(e.to_string()))?;
    // The store refused a bridge without a channel above, so there is one here.
    let sealed = channel
        .ok_or(Error::Conflict("the bridge is not enrolled"))?
        .seal(&topic, &body, crate::channel::nonce());
    cx.mqtt
        .try_publish(topic, QoS::AtLeastOnce, false, sealed)
        .map_err(|_| Error::Broker("could not queue the pairing request; try again".into()))?;
    tracing::info!(bridge_id, device_id, "pairing started");
    Ok(Ok(pairing))
}
