//! The gateway's end of the bridge channel (see [`phr_schema::channel`]): its own Ed25519 key
//! (`keys/channel-ed25519.pem`, made on first start; bridges are configured with its public
//! half) and the pairwise keys of enrolled bridges, derived once and cached.
//!
//! A bridge without an enrolled key has no channel: nothing it sends opens, and nothing is
//! sent to it. A revoked enrolment takes effect at once through this process
//! ([`Channels::forget`], the admin API) and within [`CACHE_TTL`] when another process (the
//! CLI) revoked it in the store.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use ed25519_dalek::{SigningKey, VerifyingKey};
use phr_schema::channel::{ChannelError, ChannelKey};

use crate::store::prelude::*;
use crate::{Error, Result};

/// How long a derived channel is used before the enrolment is read again.
pub const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// The file, in the keys dir, of the gateway's channel key (PKCS#8 PEM).
pub const KEY_FILE: &str = "channel-ed25519.pem";
/// Where versions before the PEM file kept it (PKCS#8 v2 DER), still read (see
/// `auth::load_or_create_key`).
pub const LEGACY_KEY_FILE: &str = "channel-ed25519.pk8";

/// The gateway's channel key and the channels of enrolled bridges.
pub struct Channels {
    key: SigningKey,
    store: Arc<dyn Backend>,
    /// bridge id → the channel key and when it was derived; read again from the store after
    /// [`CACHE_TTL`], dropped at once by [`Channels::forget`].
    cache: RwLock<HashMap<String, (ChannelKey, std::time::Instant)>>,
}

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channels")
            .field("public_key", &self.public_hex())
            .finish_non_exhaustive()
    }
}

impl Channels {
    /// Loads the gateway's channel key from `keys_dir`, generating it on first use.
    pub fn load_or_create(keys_dir: &Path, store: Arc<dyn Backend>) -> Result<Self> {
        Ok(Self::new(load_or_create(keys_dir)?, store))
    }

    pub fn new(key: SigningKey, store: Arc<dyn Backend>) -> Self {
        Self {
            key,
            store,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// The public key bridges are configured with (`gateway_key`).
    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// [`Channels::public_key`] as 64 hex characters.
    pub fn public_hex(&self) -> String {
        phr_schema::channel::key_to_hex(&self.public_key())
    }

    /// The channel of `bridge_id`, or `None` if the bridge is not enrolled.
    pub fn channel(&self, bridge_id: &str) -> Result<Option<ChannelKey>> {
        if let Some((k, at)) = self
            .cache
            .read()
            .map_err(|_| Error::Poisoned)?
            .get(bridge_id)
        {
            if at.elapsed() < CACHE_TTL {
                return Ok(Some(k.clone()));
            }
        }
        let Some(bridge_key) = self.store.bridge_public_key(bridge_id)? else {
            self.forget(bridge_id);
            return Ok(None);
        };
        let channel = match ChannelKey::for_gateway(&self.key, &bridge_key) {
            Ok(c) => c,
            Err(ChannelError::LowOrderKey) => {
                tracing::warn!(bridge_id, "an enrolled bridge key is unusable (low order)");
                return Ok(None);
            }
            Err(_) => return Ok(None),
        };
        let mut cache = self.cache.write().map_err(|_| Error::Poisoned)?;
        // Bounded: one entry per enrolled bridge that has sent something. A deployment of
        // many more bridges than memory allows would swap this for an LRU.
        cache.insert(
            bridge_id.to_owned(),
            (channel.clone(), std::time::Instant::now()),
        );
        Ok(Some(channel))
    }

    /// Drops a bridge's cached channel (after its enrolment was revoked or replaced).
    pub fn forget(&self, bridge_id: &str) {
        if let Ok(mut cache) = self.cache.write() {
            cache.remove(bridge_id);
        }
    }

    /// Seals `plaintext` for `bridge_id` on `topic`; `None` if the bridge is not enrolled.
    pub fn seal(&self, bridge_id: &str, topic: &str, plaintext: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .channel(bridge_id)?
            .map(|c| c.seal(topic, plaintext, nonce())))
    }
}

/// The gateway's channel key from `keys_dir`, generated on first use.
pub fn load_or_create(keys_dir: &Path) -> Result<SigningKey> {
    crate::auth::load_or_create_key(keys_dir, KEY_FILE, LEGACY_KEY_FILE, "bridge channel key")
}

/// 24 bytes from the OS's generator.
pub fn nonce() -> [u8; 24] {
    rand::Rng::gen(&mut rand::rngs::OsRng)
}
