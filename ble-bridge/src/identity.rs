//! The bridge's own identity: an Ed25519 key generated on first start and kept in its data
//! dir (`bridge-ed25519.pk8`, PKCS#8 DER, mode 0600). An operator enrols the bridge by
//! registering its public half at the gateway (`phr-bridge identity` prints it); the bridge
//! then proves itself when it connects (the MQTT password is a signature) and seals every
//! message with the channel key it shares with the gateway (`phr_schema::channel`).
//! No secret ever crosses the network.

use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signer, SigningKey};

use phr_schema::channel::{ChannelError, ChannelKey};

use crate::{Error, Result};

const KEY_FILE: &str = "bridge-ed25519.pk8";

#[derive(Debug)]
pub struct BridgeKey(SigningKey);

impl BridgeKey {
    /// Loads the key from `dir`, generating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let path = dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(der) => SigningKey::from_pkcs8_der(&der)
                .map(Self)
                .map_err(|_| Error::Io(format!("{} is not an Ed25519 PKCS#8 key", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
                let key = SigningKey::generate(&mut rand::rngs::OsRng);
                let der = key.to_pkcs8_der().map_err(|e| Error::Io(e.to_string()))?;
                write_private(&path, der.as_bytes())?;
                tracing::info!(path = %path.display(), "generated this bridge's signing key");
                Ok(Self(key))
            }
            Err(e) => Err(Error::Io(format!("{}: {e}", path.display()))),
        }
    }

    /// A fresh key that lives only in memory (tests, tools).
    pub fn generate() -> Self {
        Self(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// The key whose 32-byte secret seed is `seed` (tests and tools that need the same key
    /// again).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    /// The same key again (a second holder in one process: tests, tools).
    pub fn copy(&self) -> Self {
        Self(self.0.clone())
    }

    /// The public key as 64 hex characters.
    pub fn public_hex(&self) -> String {
        self.0
            .verifying_key()
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The MQTT password this bridge presents as `bridge_id` with `client_id`.
    pub fn connect_password(&self, bridge_id: &str, client_id: &str) -> String {
        let digest = phr_schema::envelope::connect_digest(bridge_id, client_id);
        self.0
            .sign(&digest)
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The channel this bridge shares with the gateway whose channel key is `gateway`.
    pub fn channel(&self, gateway: &ed25519_dalek::VerifyingKey) -> Result<ChannelKey> {
        ChannelKey::for_bridge(&self.0, gateway).map_err(|e: ChannelError| {
            Error::Io(format!("the configured gateway key is unusable: {e}"))
        })
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let io = |e: std::io::Error| Error::Io(format!("{}: {e}", path.display()));
    let mut file = options.open(path).map_err(io)?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_persists_and_signs_what_the_gateway_checks() {
        let dir = tempfile::tempdir().unwrap();
        let key = BridgeKey::load_or_create(dir.path()).unwrap();
        let again = BridgeKey::load_or_create(dir.path()).unwrap();
        assert_eq!(key.public_hex(), again.public_hex());
        assert_eq!(key.public_hex().len(), 64);
        let gateway = SigningKey::from_bytes(&[3; 32]);
        let ours = key.channel(&gateway.verifying_key()).unwrap();
        let public = phr_schema::channel::key_from_hex(&key.public_hex()).unwrap();
        let theirs = ChannelKey::for_gateway(&gateway, &public).unwrap();
        let sealed = ours.seal("t", b"batch", [1; 24]);
        assert_eq!(theirs.open("t", &sealed).unwrap(), b"batch");
    }
}
