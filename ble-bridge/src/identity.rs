//! The bridge's own identity: an Ed25519 key generated on first start and kept in its data
//! dir (`bridge-ed25519.pem`, PKCS#8 PEM, mode 0600). An operator enrols the bridge by
//! registering its public half at the gateway (`phr-bridge identity` prints it); the bridge
//! then proves itself when it connects (the MQTT password is a signature) and seals every
//! message with the channel key it shares with the gateway (`phr_schema::channel`).
//! No secret ever crosses the network.

use std::path::Path;

use ed25519_dalek::{Signer, SigningKey};

use phr_schema::channel::{ChannelError, ChannelKey};

use crate::{Error, Result};

/// The key file in the bridge's data dir: PKCS#8 v1 PEM (`-----BEGIN PRIVATE KEY-----`, the
/// private key without the public one), which OpenSSL 3 (`openssl pkey -in FILE`) and
/// Python's `cryptography` read, so an operator can inspect, back up and replace it with
/// standard tools.
pub const KEY_FILE: &str = "bridge-ed25519.pem";
/// Where versions before the PEM file kept the key: PKCS#8 v2 DER (with the public key),
/// which those tools refuse. Read when [`KEY_FILE`] does not exist, and then written once
/// more as [`KEY_FILE`], the key from then on. It is left in place (an older binary started
/// on the same data dir still finds the same key) and not read while [`KEY_FILE`] exists.
pub const LEGACY_KEY_FILE: &str = "bridge-ed25519.pk8";

#[derive(Debug)]
pub struct BridgeKey(SigningKey);

impl BridgeKey {
    /// Loads the key from `dir`, generating it on first use (see [`KEY_FILE`] and
    /// [`LEGACY_KEY_FILE`]).
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        use phr_schema::keyfile::{self, Outcome};
        let (key, outcome) = keyfile::load_or_create(dir, KEY_FILE, LEGACY_KEY_FILE)
            .map_err(|e| Error::Io(e.to_string()))?;
        let (path, legacy) = (dir.join(KEY_FILE), dir.join(LEGACY_KEY_FILE));
        match outcome {
            // A key put there by hand would otherwise be ignored without a word.
            Outcome::Loaded { other_legacy: true } => tracing::warn!(
                path = %path.display(),
                ignored = %legacy.display(),
                "this bridge's key is read from the PEM file; the older file \
                 beside it holds another key and is not read (delete it once the \
                 PEM file is the key you want)"
            ),
            Outcome::Loaded {
                other_legacy: false,
            } => {}
            Outcome::Migrated => tracing::info!(
                path = %path.display(),
                from = %legacy.display(),
                "wrote this bridge's key as PKCS#8 PEM, the file read from now on; \
                 the older file is kept for older versions and can be deleted"
            ),
            // A data dir that cannot be written keeps working on the old file.
            Outcome::NotMigrated(e) => tracing::warn!(
                error = %e,
                from = %legacy.display(),
                "could not write this bridge's key as PKCS#8 PEM; reading the older file"
            ),
            Outcome::Created => {
                tracing::info!(path = %path.display(), "generated this bridge's signing key")
            }
        }
        Ok(Self(key))
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
        hex::encode(self.0.verifying_key().to_bytes())
    }

    /// The MQTT password this bridge presents as `bridge_id` with `client_id`.
    pub fn connect_password(&self, bridge_id: &str, client_id: &str) -> String {
        let digest = phr_schema::envelope::connect_digest(bridge_id, client_id);
        hex::encode(self.0.sign(&digest).to_bytes())
    }

    /// The channel this bridge shares with the gateway whose channel key is `gateway`.
    pub fn channel(&self, gateway: &ed25519_dalek::VerifyingKey) -> Result<ChannelKey> {
        ChannelKey::for_bridge(&self.0, gateway).map_err(|e: ChannelError| {
            Error::Io(format!("the configured gateway key is unusable: {e}"))
        })
    }
}

/// Writes `key` to a new file at `path` as PKCS#8 v1 PEM (tests replace a key as an operator
/// would).
#[cfg(test)]
fn write_key(path: &Path, key: &SigningKey) -> Result<()> {
    match phr_schema::keyfile::write_new(path, key) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::Io(format!("{}: exists", path.display()))),
        Err(e) => Err(Error::Io(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::EncodePrivateKey;

    /// `openssl pkey -in FILE -noout -text`: must name the key ED25519; its `pub:` as hex.
    fn openssl_public_hex(file: &Path) -> String {
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-noout", "-text", "-in"])
            .arg(file)
            .output()
            .expect("openssl is installed (apt-get install -y openssl; .ci/run does this)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "openssl refused {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.starts_with("ED25519 Private-Key:"), "{text}");
        text.split("pub:")
            .nth(1)
            .expect("a pub: section")
            .chars()
            .filter(char::is_ascii_hexdigit)
            .collect::<String>()
            .to_ascii_lowercase()
    }

    #[test]
    fn the_key_file_is_pkcs8_v1_pem_that_openssl_reads_as_our_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = BridgeKey::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        assert!(KEY_FILE.ends_with(".pem"));
        let pem = std::fs::read_to_string(&path).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        assert_eq!(openssl_public_hex(&path), key.public_hex());
        assert!(!dir.path().join(LEGACY_KEY_FILE).exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn an_older_pk8_key_is_still_the_key_and_gets_a_pem_file() {
        let dir = tempfile::tempdir().unwrap();
        // What versions before the PEM file wrote: PKCS#8 v2 DER, with the public key.
        let old = SigningKey::from_bytes(&[5; 32]);
        let der = old.to_pkcs8_der().unwrap();
        std::fs::write(dir.path().join(LEGACY_KEY_FILE), der.as_bytes()).unwrap();
        let expected = BridgeKey::from_seed(&[5; 32]).public_hex();
        assert_eq!(
            BridgeKey::load_or_create(dir.path()).unwrap().public_hex(),
            expected
        );
        let pem = dir.path().join(KEY_FILE);
        assert_eq!(openssl_public_hex(&pem), expected, "migrated");
        assert_eq!(
            std::fs::read(dir.path().join(LEGACY_KEY_FILE)).unwrap(),
            der.as_bytes(),
            "the old file stays for older versions"
        );
        assert_eq!(
            BridgeKey::load_or_create(dir.path()).unwrap().public_hex(),
            expected
        );
        // An operator's replaced PEM file wins over the old file.
        std::fs::remove_file(&pem).unwrap();
        write_key(&pem, &SigningKey::from_bytes(&[6; 32])).unwrap();
        assert_eq!(
            BridgeKey::load_or_create(dir.path()).unwrap().public_hex(),
            BridgeKey::from_seed(&[6; 32]).public_hex()
        );
        // Garbage is an error naming the file, never a new key.
        std::fs::write(&pem, "not a key").unwrap();
        let e = BridgeKey::load_or_create(dir.path()).unwrap_err();
        assert!(e.to_string().contains(KEY_FILE), "{e}");
    }

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
