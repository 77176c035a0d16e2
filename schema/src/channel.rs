//! The bridge–gateway channel: what keeps the broker an untrusted transport.
//!
//! Each bridge and each gateway has one long-term Ed25519 key. A bridge is *enrolled* when
//! the gateway's operator registers the bridge's public key, and the bridge is configured with
//! the gateway's public key; from those two keys both sides derive the same pairwise
//! [`ChannelKey`] (X25519 of the Ed25519 keys in Montgomery form, then HKDF-SHA256 over both
//! public keys). Every message between them on MQTT is sealed with it
//! (XChaCha20-Poly1305, the topic as associated data):
//!
//! - batches and pairing reports (bridge → gateway): nobody else on the broker can read the
//!   health data, and only the holder of the bridge's key (or the gateway) can produce a
//!   message that opens, so the gateway knows which bridge sent it;
//! - acks and pairing requests (gateway → bridge): a forged ack opens nowhere and deletes
//!   nothing from the bridge's outbox;
//! - pairing codes never cross the network at all: the bridge computes the code it shows from
//!   the channel key ([`ChannelKey::pairing_code`]), so the code an owner types proves they
//!   saw *this* bridge, and a report or code from any other key cannot match.
//!
//! Binding the topic into the seal stops a sealed message being replayed as another kind of
//! message or for another bridge; replaying the same message on the same topic changes
//! nothing (records are idempotent, a second ack names a batch already gone, a pairing request
//! names a pairing already shown or finished).
//!
//! Using one key for Ed25519 signatures and X25519 agreement is what libsodium and age do;
//! its joint security is analysed in "On using the same key pair for Ed25519 and an X25519
//! based KEM" (Thormarker, 2021). It keeps enrolment to one public key per party.
//!
//! Wire format of a sealed message: `0x01` (version), 24-byte nonce, ciphertext with the
//! 16-byte tag. Anything else (a plain JSON payload starts with `{`) is [`ChannelError::NotSealed`].

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{SigningKey, VerifyingKey};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The version byte of a sealed message.
pub const SEAL_VERSION: u8 = 1;
/// Bytes a seal adds to a message: version, nonce, tag.
pub const SEAL_OVERHEAD: usize = 1 + 24 + 16;

/// Why a message could not be opened, or a channel not set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("the peer's key is of low order")]
    LowOrderKey,
    #[error("the message is not sealed for this channel")]
    NotSealed,
    #[error("the message did not open: wrong key, wrong topic, or altered")]
    Forged,
}

/// The key a bridge and a gateway share. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct ChannelKey([u8; 32]);

impl std::fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelKey(..)")
    }
}

impl ChannelKey {
    /// The bridge's side: its own key and the gateway's public key.
    pub fn for_bridge(bridge: &SigningKey, gateway: &VerifyingKey) -> Result<Self, ChannelError> {
        Self::derive(bridge, gateway, &bridge.verifying_key(), gateway)
    }

    /// The gateway's side: its own key and the enrolled bridge's public key.
    pub fn for_gateway(gateway: &SigningKey, bridge: &VerifyingKey) -> Result<Self, ChannelError> {
        Self::derive(gateway, bridge, bridge, &gateway.verifying_key())
    }

    fn derive(
        own: &SigningKey,
        peer: &VerifyingKey,
        bridge: &VerifyingKey,
        gateway: &VerifyingKey,
    ) -> Result<Self, ChannelError> {
        let shared = (peer.to_montgomery() * own.to_scalar()).to_bytes();
        if shared == [0u8; 32] {
            return Err(ChannelError::LowOrderKey);
        }
        let mut info = Vec::with_capacity(64);
        info.extend_from_slice(bridge.as_bytes());
        info.extend_from_slice(gateway.as_bytes());
        let mut key = [0u8; 32];
        Hkdf::<Sha256>::new(Some(b"phr-channel-v1"), &shared)
            .expand(&info, &mut key)
            .map_err(|_| ChannelError::LowOrderKey)?;
        Ok(Self(key))
    }

    /// Seals `plaintext` for `topic` with a fresh random `nonce` (callers pass 24 bytes from
    /// the OS's generator; this crate does no I/O).
    pub fn seal(&self, topic: &str, plaintext: &[u8], nonce: [u8; 24]) -> Vec<u8> {
        let aad = aad(topic);
        let sealed = XChaCha20Poly1305::new((&self.0).into())
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .unwrap_or_default(); // encryption fails only beyond 256 GiB
        let mut out = Vec::with_capacity(1 + 24 + sealed.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a message sealed for `topic` with this key.
    pub fn open(&self, topic: &str, sealed: &[u8]) -> Result<Vec<u8>, ChannelError> {
        if sealed.len() < SEAL_OVERHEAD || sealed[0] != SEAL_VERSION {
            return Err(ChannelError::NotSealed);
        }
        let aad = aad(topic);
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&sealed[1..25]);
        XChaCha20Poly1305::new((&self.0).into())
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &sealed[25..],
                    aad: &aad,
                },
            )
            .map_err(|_| ChannelError::Forged)
    }

    /// The six-digit code the bridge shows for a pairing: HMAC-SHA256 under the channel key
    /// of the pairing id and device id. Only the bridge's key holder (and the gateway) can
    /// compute it; nothing about it crosses the network.
    pub fn pairing_code(&self, pairing_id: &uuid::Uuid, device_id: &str) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(format!("phr-pairing-code-v1\n{pairing_id}\n{device_id}\n").as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&tag[..8]);
        // 2^64 mod 10^6 is 551,616: the bias towards small codes is below 10^-13.
        format!("{:06}", u64::from_be_bytes(first) % 1_000_000)
    }
}

fn aad(topic: &str) -> Vec<u8> {
    let mut aad = b"phr-channel-v1\n".to_vec();
    aad.extend_from_slice(topic.as_bytes());
    aad
}

/// A public key as 64 lowercase hex characters.
pub fn key_to_hex(key: &VerifyingKey) -> String {
    hex::encode(key.as_bytes())
}

/// An Ed25519 public key from 64 hex characters (either case).
pub fn key_from_hex(s: &str) -> Option<VerifyingKey> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(s, &mut bytes).ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn pair() -> (ChannelKey, ChannelKey) {
        let (b, g) = (key(1), key(2));
        (
            ChannelKey::for_bridge(&b, &g.verifying_key()).unwrap(),
            ChannelKey::for_gateway(&g, &b.verifying_key()).unwrap(),
        )
    }

    #[test]
    fn both_sides_derive_the_same_key_and_open_each_others_messages() {
        let (bridge, gateway) = pair();
        let sealed = bridge.seal("t/records", b"{\"a\":1}", [7; 24]);
        assert_eq!(sealed.len(), 7 + SEAL_OVERHEAD);
        assert_eq!(gateway.open("t/records", &sealed).unwrap(), b"{\"a\":1}");
        let back = gateway.seal("t/acks", b"ok", [8; 24]);
        assert_eq!(bridge.open("t/acks", &back).unwrap(), b"ok");
        assert_eq!(
            bridge.pairing_code(&uuid::Uuid::nil(), "d"),
            gateway.pairing_code(&uuid::Uuid::nil(), "d")
        );
    }

    #[test]
    fn ciphertext_does_not_contain_the_plaintext() {
        let (bridge, _) = pair();
        let secret = b"step_count 12345 heart_rate 61";
        let sealed = bridge.seal("t", secret, [9; 24]);
        assert!(!sealed.windows(8).any(|w| secret.windows(8).any(|s| s == w)));
    }

    #[test]
    fn another_topic_another_key_or_any_flipped_bit_does_not_open() {
        let (bridge, gateway) = pair();
        let sealed = bridge.seal("t/b1/records", b"payload", [3; 24]);
        assert_eq!(
            gateway.open("t/b2/records", &sealed),
            Err(ChannelError::Forged)
        );
        let other = ChannelKey::for_gateway(&key(2), &key(3).verifying_key()).unwrap();
        assert_eq!(
            other.open("t/b1/records", &sealed),
            Err(ChannelError::Forged)
        );
        for i in 1..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(gateway.open("t/b1/records", &bad).is_err(), "bit {i}");
        }
        assert_eq!(
            gateway.open("t/b1/records", b"{\"plain\":true}"),
            Err(ChannelError::NotSealed)
        );
        assert_eq!(gateway.open("t", &[]), Err(ChannelError::NotSealed));
    }

    #[test]
    fn pairing_codes_are_six_digits_and_depend_on_key_pairing_and_device() {
        let (bridge, _) = pair();
        let other = ChannelKey::for_bridge(&key(4), &key(2).verifying_key()).unwrap();
        let id = uuid::Uuid::from_u128(42);
        let code = bridge.pairing_code(&id, "band-1");
        assert_eq!(code.len(), 6);
        assert!(code.bytes().all(|b| b.is_ascii_digit()));
        assert_ne!(code, other.pairing_code(&id, "band-1"));
        assert_ne!(
            code,
            bridge.pairing_code(&uuid::Uuid::from_u128(43), "band-1")
        );
        assert_ne!(code, bridge.pairing_code(&id, "band-2"));
    }

    #[test]
    fn a_low_order_peer_key_is_refused() {
        // The Edwards identity (y = 1) maps to the Montgomery point u = 0.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let peer = VerifyingKey::from_bytes(&identity).unwrap();
        assert_eq!(
            ChannelKey::for_gateway(&key(2), &peer).unwrap_err(),
            ChannelError::LowOrderKey
        );
    }

    #[test]
    fn hex_round_trips_and_refuses_junk() {
        let k = key(5).verifying_key();
        assert_eq!(key_from_hex(&key_to_hex(&k)), Some(k));
        assert_eq!(key_from_hex(&key_to_hex(&k).to_uppercase()), Some(k));
        for bad in ["", "zz", &"0".repeat(63), &"é".repeat(32)] {
            assert_eq!(key_from_hex(bad), None, "{bad}");
        }
    }
}
