//! Paging cursors, the one codec behind every paged route. A cursor is opaque to clients;
//! each kind keeps the form it has always had on the wire, so a cursor a client holds keeps
//! working:
//! - a position in a person's records ([`PageKey`]: `/api/v1/me/records`,
//!   `/api/v1/subjects/{person_id}/records`, and after the type index in FHIR `_cursor`): hex
//!   of `start_ms:end_ms:device_id`;
//! - a position in the change feed ([`FeedSeq`], `/api/v1/sync`): `s1.` and the sequence number
//!   in hex.
//!
//! Decoding answers `None` for anything this gateway did not issue; each route words its own
//! `invalid_cursor` refusal.

use crate::store::PageKey;

/// A paging position that travels to the client and back.
pub(crate) trait Cursor: Sized {
    fn encode(&self) -> String;
    fn decode(s: &str) -> Option<Self>;
}

/// Longest record cursor accepted (hex characters): far above any device id, short enough
/// that nobody makes the gateway decode a large one.
const MAX_RECORD_CURSOR: usize = 512;

impl Cursor for PageKey {
    fn encode(&self) -> String {
        hex::encode(format!(
            "{}:{}:{}",
            self.start_ms, self.end_ms, self.device_id
        ))
    }

    fn decode(s: &str) -> Option<Self> {
        if s.len() > MAX_RECORD_CURSOR {
            return None;
        }
        let text = String::from_utf8(hex::decode(s).ok()?).ok()?;
        let mut parts = text.splitn(3, ':');
        let start_ms = parts.next()?.parse().ok()?;
        let end_ms = parts.next()?.parse().ok()?;
        let device_id = parts.next()?.to_owned();
        Some(PageKey {
            start_ms,
            device_id,
            end_ms,
        })
    }
}

/// A position in the change feed: the sequence number of the last change examined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FeedSeq(pub(crate) i64);

const FEED_PREFIX: &str = "s1.";

impl Cursor for FeedSeq {
    fn encode(&self) -> String {
        format!("{FEED_PREFIX}{:x}", self.0)
    }

    fn decode(s: &str) -> Option<Self> {
        s.strip_prefix(FEED_PREFIX)
            .filter(|h| !h.is_empty() && h.len() <= 16)
            .and_then(|h| i64::from_str_radix(h, 16).ok())
            .filter(|s| *s >= 0)
            .map(FeedSeq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let k = PageKey {
            start_ms: -5,
            device_id: "AA:BB:cc".into(),
            end_ms: 1_700_000_000_000,
        };
        assert_eq!(PageKey::decode(&k.encode()).unwrap(), k);
        for bad in ["", "0", "zz", "3a3a", &"ab".repeat(300)] {
            assert!(PageKey::decode(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        for seq in [0, 1, 255, i64::MAX] {
            assert_eq!(FeedSeq::decode(&FeedSeq(seq).encode()), Some(FeedSeq(seq)));
        }
        for bad in [
            "",
            "s1.",
            "s1.-1",
            "s1.zz",
            "x.10",
            "s1.10000000000000000",
            "10",
        ] {
            assert_eq!(FeedSeq::decode(bad), None, "{bad}");
        }
    }
}
