//! The vendor protocol of the "PHR reference band", the project's simulated wearable
//! ([`crate::sim`]). This module is its specification: we own the protocol, so the layout
//! below is normative, and a real band implementing it decodes the same way.
//!
//! # Service
//! Vendor service `7e4a0000-5048-5200-8000-00805f9b34fb` (`5048 52` is ASCII "PHR"), with two
//! notify characteristics. All integers are little-endian; times are unsigned 32-bit Unix
//! seconds (UTC), so the band's clock covers 1970–2106. The band reports UTC; its local
//! offset is configured on the bridge.
//!
//! # Minute activity, `7e4a0001-5048-5200-8000-00805f9b34fb`
//! 1 to 60 entries of 8 bytes each, nothing else (a history transfer packs many minutes into
//! one notification; 480 bytes fit one ATT value):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | u32 | start of the interval, Unix seconds |
//! | 4 | u16 | duration in seconds, at least 1 |
//! | 6 | u16 | steps counted in the interval |
//!
//! An empty payload or one that is not a whole number of entries is truncated; more than 60
//! entries is oversized; a zero duration is invalid.
//!
//! # Sleep summary, `7e4a0002-5048-5200-8000-00805f9b34fb`
//! One episode: a 10-byte header followed by exactly `n_stages` 9-byte stage entries.
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | u32 | episode start, Unix seconds |
//! | 4 | u32 | episode end, Unix seconds, after the start |
//! | 8 | u8 | flags: bit 0 main sleep; bits 1–7 reserved, sent as 0, ignored |
//! | 9 | u8 | `n_stages`, at most [`MAX_SLEEP_STAGES`] |
//! | 10 + 9i | u32 | stage start as an offset in seconds from the episode start |
//! | 14 + 9i | u32 | stage duration in seconds, at least 1 |
//! | 18 + 9i | u8 | stage: 0 awake, 1 light, 2 deep, 3 REM |
//!
//! Stages are in time order, do not overlap and lie inside the episode; gaps are allowed
//! (unscored time). The payload length must be exactly `10 + 9 × n_stages` and at most 512.
//!
//! ## History request `7e4a0003` (write)
//!
//! Either form:
//!
//! | offset | type | field |
//! | --- | --- | --- |
//! | 0 | u32 | send everything measured since this Unix second (version 1) |
//!
//! | offset | type | field |
//! | --- | --- | --- |
//! | 0 | u8 | which history: 1 minute activity, 2 sleep ([`HistoryKind`]) |
//! | 1 | u32 | send what of that kind was measured since this Unix second (version 2) |
//!
//! The band answers with the activity and sleep notifications above for what it stored,
//! then carries on live. The bridge writes one version-2 request per kind at every
//! connection, each with that kind's own high-water mark (live heart rate moves no mark of
//! steps or sleep), so nothing measured while the bridge was away is lost. A band that
//! refuses a 5-byte write gets one version-1 request from the earliest of the marks
//! (repeats are harmless: the gateway deduplicates by record id).
//!
//! # Steps today, `7e4a0004-5048-5200-8000-00805f9b34fb` (read, notify)
//! Exactly 4 bytes: u32, the steps counted since the band's local midnight (it resets to 0
//! there, and after a reboot). The band notifies it when the count changes; the value
//! carries no time of its own, so it is taken at the moment the bridge receives it. This is
//! how many consumer bands report steps; the bridge turns consecutive totals into interval
//! deltas ([`crate::cumulative`]). A band offering minute activity need not offer it.

use chrono::{DateTime, Duration, Utc};
use phr_schema::SleepStageKind;
use uuid::Uuid;

use super::{at_most, truncated, u16_le, u32_le, DecodeError, Reading, SleepReading};

/// Decoder name and version of the activity characteristic, recorded in provenance.
pub const ACTIVITY_NAME: &str = "phr-reference-band-activity/1";
/// Decoder name and version of the sleep characteristic, recorded in provenance.
pub const SLEEP_NAME: &str = "phr-reference-band-sleep/1";
/// The band's vendor service.
pub const SERVICE: Uuid = Uuid::from_u128(0x7e4a_0000_5048_5200_8000_0080_5f9b_34fb);
/// Minute activity characteristic.
pub const ACTIVITY: Uuid = Uuid::from_u128(0x7e4a_0001_5048_5200_8000_0080_5f9b_34fb);
/// Sleep summary characteristic.
pub const SLEEP: Uuid = Uuid::from_u128(0x7e4a_0002_5048_5200_8000_0080_5f9b_34fb);
/// History request (write).
pub const HISTORY: Uuid = Uuid::from_u128(0x7e4a_0003_5048_5200_8000_0080_5f9b_34fb);
/// Steps today (running daily total) characteristic.
pub const STEPS_TODAY: Uuid = Uuid::from_u128(0x7e4a_0004_5048_5200_8000_0080_5f9b_34fb);
/// Decoder name and version of the steps-today characteristic, recorded in provenance.
pub const STEPS_TODAY_NAME: &str = "phr-reference-band-steps-today/1";

/// Decodes a steps-today value into one [`Reading::StepsToday`] at `received_at`.
pub fn decode_steps_today(
    bytes: &[u8],
    received_at: DateTime<Utc>,
) -> Result<Vec<Reading>, DecodeError> {
    at_most(bytes, 4)?;
    let total = u32_le(bytes, 0).ok_or(truncated(bytes, 4))?;
    Ok(vec![Reading::StepsToday {
        at: received_at,
        total,
    }])
}

/// The bytes of a steps-today value.
pub fn encode_steps_today(total: u32) -> Vec<u8> {
    total.to_le_bytes().to_vec()
}

/// The bytes of a history request for everything measured since `since` (clamped to the
/// protocol's u32 seconds).
pub fn encode_history_request(since: DateTime<Utc>) -> Vec<u8> {
    let secs = since.timestamp().clamp(0, i64::from(u32::MAX)) as u32;
    secs.to_le_bytes().to_vec()
}

/// The `since` of a version-1 history request (what a band reads from the write).
pub fn decode_history_request(bytes: &[u8]) -> Result<DateTime<Utc>, DecodeError> {
    let raw: [u8; 4] = bytes
        .try_into()
        .map_err(|_| DecodeError::Invalid("a history request is 4 bytes"))?;
    DateTime::from_timestamp(i64::from(u32::from_le_bytes(raw)), 0)
        .ok_or(DecodeError::Invalid("time out of range"))
}

/// The histories a band keeps, each asked for from its own mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HistoryKind {
    /// Minute activity: step-count records.
    Activity = 1,
    /// Sleep summaries: sleep-episode records.
    Sleep = 2,
}

impl HistoryKind {
    pub const ALL: [HistoryKind; 2] = [HistoryKind::Activity, HistoryKind::Sleep];

    /// The record type whose mark this history starts from.
    pub fn record_type(self) -> phr_schema::RecordType {
        match self {
            HistoryKind::Activity => phr_schema::RecordType::StepCount,
            HistoryKind::Sleep => phr_schema::RecordType::SleepEpisode,
        }
    }
}

/// The bytes of a version-2 history request: `kind` measured since `since`.
pub fn encode_history_request_for(kind: HistoryKind, since: DateTime<Utc>) -> Vec<u8> {
    let mut out = vec![kind as u8];
    out.extend(encode_history_request(since));
    out
}

/// What a band reads from a history request of either version: the kind (`None`: every
/// kind, version 1) and `since`.
pub fn decode_any_history_request(
    bytes: &[u8],
) -> Result<(Option<HistoryKind>, DateTime<Utc>), DecodeError> {
    match bytes {
        [kind, rest @ ..] if rest.len() == 4 => {
            let kind = match kind {
                1 => HistoryKind::Activity,
                2 => HistoryKind::Sleep,
                _ => return Err(DecodeError::Invalid("unknown history kind")),
            };
            Ok((Some(kind), decode_history_request(rest)?))
        }
        _ => Ok((None, decode_history_request(bytes)?)),
    }
}

/// Size of one activity entry.
pub const ACTIVITY_ENTRY_LEN: usize = 8;
/// Most activity entries in one notification.
pub const MAX_ACTIVITY_ENTRIES: usize = 60;
/// Size of the sleep header.
pub const SLEEP_HEADER_LEN: usize = 10;
/// Size of one sleep stage entry.
pub const SLEEP_STAGE_LEN: usize = 9;
/// The longest ATT attribute value.
pub const MAX_LEN: usize = 512;
/// Most stages one sleep summary can carry within [`MAX_LEN`].
pub const MAX_SLEEP_STAGES: usize = (MAX_LEN - SLEEP_HEADER_LEN) / SLEEP_STAGE_LEN;

const MAIN_SLEEP: u8 = 1 << 0;

/// Decodes one activity notification into one [`Reading::Steps`] per entry.
pub fn decode_activity(
    bytes: &[u8],
    _received_at: DateTime<Utc>,
) -> Result<Vec<Reading>, DecodeError> {
    let max = MAX_ACTIVITY_ENTRIES * ACTIVITY_ENTRY_LEN;
    if bytes.len() > max {
        return Err(DecodeError::Oversized {
            max,
            got: bytes.len(),
        });
    }
    if bytes.is_empty() || !bytes.len().is_multiple_of(ACTIVITY_ENTRY_LEN) {
        return Err(DecodeError::Truncated {
            needed: bytes.len().div_ceil(ACTIVITY_ENTRY_LEN).max(1) * ACTIVITY_ENTRY_LEN,
            got: bytes.len(),
        });
    }
    bytes
        .chunks_exact(ACTIVITY_ENTRY_LEN)
        .map(|entry| {
            let field = DecodeError::Invalid("activity entry is malformed");
            let start = u32_le(entry, 0).ok_or(field.clone())?;
            let duration = u16_le(entry, 4).ok_or(field.clone())?;
            let steps = u16_le(entry, 6).ok_or(field)?;
            if duration == 0 {
                return Err(DecodeError::Invalid("activity entry has zero duration"));
            }
            let start = unix(start);
            Ok(Reading::Steps {
                start,
                end: start + Duration::seconds(i64::from(duration)),
                steps: u32::from(steps),
            })
        })
        .collect()
}

/// Decodes one sleep summary into one [`Reading::Sleep`].
pub fn decode_sleep(
    bytes: &[u8],
    _received_at: DateTime<Utc>,
) -> Result<Vec<Reading>, DecodeError> {
    at_most(bytes, MAX_LEN)?;
    let truncated = |needed: usize| truncated(bytes, needed);
    let (Some(start), Some(end), Some(&flags), Some(&n)) = (
        u32_le(bytes, 0),
        u32_le(bytes, 4),
        bytes.get(8),
        bytes.get(9),
    ) else {
        return Err(truncated(SLEEP_HEADER_LEN));
    };
    let expected = SLEEP_HEADER_LEN + usize::from(n) * SLEEP_STAGE_LEN;
    if bytes.len() < expected {
        return Err(truncated(expected));
    }
    if bytes.len() > expected {
        return Err(DecodeError::Oversized {
            max: expected,
            got: bytes.len(),
        });
    }
    if end <= start {
        return Err(DecodeError::Invalid(
            "sleep episode does not end after it starts",
        ));
    }
    let length = end - start;
    let mut stages = Vec::with_capacity(usize::from(n));
    let mut previous_end = 0u64;
    for entry in bytes[SLEEP_HEADER_LEN..].chunks_exact(SLEEP_STAGE_LEN) {
        let field = DecodeError::Invalid("sleep stage entry is malformed");
        let offset = u32_le(entry, 0).ok_or(field.clone())?;
        let duration = u32_le(entry, 4).ok_or(field.clone())?;
        let kind = match entry.get(8).ok_or(field)? {
            0 => SleepStageKind::Awake,
            1 => SleepStageKind::Light,
            2 => SleepStageKind::Deep,
            3 => SleepStageKind::Rem,
            _ => return Err(DecodeError::Invalid("unknown sleep stage code")),
        };
        if duration == 0 {
            return Err(DecodeError::Invalid("sleep stage has zero duration"));
        }
        let stage_end = u64::from(offset) + u64::from(duration);
        if stage_end > u64::from(length) {
            return Err(DecodeError::Invalid("sleep stage lies outside its episode"));
        }
        if u64::from(offset) < previous_end {
            return Err(DecodeError::Invalid(
                "sleep stages are out of order or overlap",
            ));
        }
        previous_end = stage_end;
        // Both fit in u32 because stage_end <= length.
        let stage_start = u64::from(start) + u64::from(offset);
        stages.push((
            kind,
            unix_u64(stage_start),
            unix_u64(u64::from(start) + stage_end),
        ));
    }
    Ok(vec![Reading::Sleep(SleepReading {
        start: unix(start),
        end: unix(end),
        is_main_sleep: flags & MAIN_SLEEP != 0,
        stages,
        reported: Default::default(),
    })])
}

/// Encodes minute activity entries `(start, duration_s, steps)` (used by the simulator and
/// tests). Callers send at most [`MAX_ACTIVITY_ENTRIES`] per notification; times outside the
/// band's clock range saturate.
pub fn encode_activity(entries: &[(DateTime<Utc>, u16, u16)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ACTIVITY_ENTRY_LEN);
    for &(start, duration_s, steps) in entries {
        out.extend_from_slice(&seconds(start).to_le_bytes());
        out.extend_from_slice(&duration_s.to_le_bytes());
        out.extend_from_slice(&steps.to_le_bytes());
    }
    out
}

/// Encodes one sleep summary (used by the simulator and tests). Callers keep to
/// [`MAX_SLEEP_STAGES`] stages in time order inside the episode; stages beyond 255 cannot be
/// counted by the header and are not written, and times outside the band's clock saturate.
pub fn encode_sleep(sleep: &SleepReading) -> Vec<u8> {
    let stages = &sleep.stages[..sleep.stages.len().min(usize::from(u8::MAX))];
    let start = seconds(sleep.start);
    let mut out = Vec::with_capacity(SLEEP_HEADER_LEN + stages.len() * SLEEP_STAGE_LEN);
    out.extend_from_slice(&start.to_le_bytes());
    out.extend_from_slice(&seconds(sleep.end).to_le_bytes());
    out.push(if sleep.is_main_sleep { MAIN_SLEEP } else { 0 });
    out.push(stages.len() as u8);
    for &(kind, stage_start, stage_end) in stages {
        let offset = seconds(stage_start).saturating_sub(start);
        let duration = seconds(stage_end).saturating_sub(seconds(stage_start));
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&duration.to_le_bytes());
        out.push(match kind {
            SleepStageKind::Awake => 0,
            SleepStageKind::Light => 1,
            SleepStageKind::Deep => 2,
            SleepStageKind::Rem => 3,
        });
    }
    out
}

/// Unix seconds as the band's u32 clock, saturating outside 1970–2106.
fn seconds(t: DateTime<Utc>) -> u32 {
    let s = t.timestamp();
    u32::try_from(s).unwrap_or(if s < 0 { 0 } else { u32::MAX })
}

fn unix(seconds: u32) -> DateTime<Utc> {
    unix_u64(u64::from(seconds))
}

/// Every value passed here is below 2^33 seconds (year ~2242), well inside chrono's range.
fn unix_u64(seconds: u64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds as i64, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_today_is_four_bytes_taken_when_received() {
        let at = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        assert_eq!(
            decode_steps_today(&crate::decode::test_hex("39 30 00 00"), at),
            Ok(vec![Reading::StepsToday { at, total: 12345 }])
        );
        assert_eq!(
            encode_steps_today(12345),
            crate::decode::test_hex("39 30 00 00")
        );
        for n in 0..4 {
            assert_eq!(
                decode_steps_today(&[0; 4][..n], at),
                Err(DecodeError::Truncated { needed: 4, got: n })
            );
        }
        assert_eq!(
            decode_steps_today(&[0; 5], at),
            Err(DecodeError::Oversized { max: 4, got: 5 })
        );
    }
    use crate::decode::test_hex as hex;
    use proptest::prelude::*;

    fn t(s: u32) -> DateTime<Utc> {
        unix(s)
    }

    // 2026-01-01T00:00:00Z = 1 767 225 600 = 0x6955_B900.
    const T0: u32 = 1_767_225_600;

    #[test]
    fn activity_fixture() {
        let bytes = hex("00 b9 55 69 3c 00 5a 00  3c b9 55 69 3c 00 00 00");
        assert_eq!(
            decode_activity(&bytes, t(0)).unwrap(),
            vec![
                Reading::Steps {
                    start: t(T0),
                    end: t(T0 + 60),
                    steps: 90
                },
                Reading::Steps {
                    start: t(T0 + 60),
                    end: t(T0 + 120),
                    steps: 0
                },
            ]
        );
        assert_eq!(
            encode_activity(&[(t(T0), 60, 90), (t(T0 + 60), 60, 0)]),
            bytes
        );
    }

    #[test]
    fn activity_refuses_bad_lengths_and_zero_durations() {
        assert_eq!(
            decode_activity(&[], t(0)),
            Err(DecodeError::Truncated { needed: 8, got: 0 })
        );
        assert_eq!(
            decode_activity(&hex("00 b9 55 69 3c 00 5a"), t(0)),
            Err(DecodeError::Truncated { needed: 8, got: 7 })
        );
        assert_eq!(
            decode_activity(&[0; 9], t(0)),
            Err(DecodeError::Truncated { needed: 16, got: 9 })
        );
        assert_eq!(
            decode_activity(&[0; 488], t(0)),
            Err(DecodeError::Oversized { max: 480, got: 488 })
        );
        let full = encode_activity(&vec![(t(T0), 60, 1); 60]);
        assert_eq!(decode_activity(&full, t(0)).unwrap().len(), 60);
        assert_eq!(
            decode_activity(&hex("00 b9 55 69 00 00 5a 00"), t(0)),
            Err(DecodeError::Invalid("activity entry has zero duration"))
        );
    }

    fn night() -> SleepReading {
        SleepReading {
            start: t(T0),
            end: t(T0 + 3600),
            is_main_sleep: true,
            stages: vec![
                (SleepStageKind::Awake, t(T0), t(T0 + 600)),
                (SleepStageKind::Light, t(T0 + 600), t(T0 + 1800)),
                (SleepStageKind::Deep, t(T0 + 1800), t(T0 + 2400)),
                (SleepStageKind::Rem, t(T0 + 2700), t(T0 + 3600)),
            ],
            reported: Default::default(),
        }
    }

    const NIGHT: &str = "00 b9 55 69  10 c7 55 69  01  04
                         00 00 00 00  58 02 00 00  00
                         58 02 00 00  b0 04 00 00  01
                         08 07 00 00  58 02 00 00  02
                         8c 0a 00 00  84 03 00 00  03";

    #[test]
    fn sleep_fixture() {
        let bytes = hex(NIGHT);
        assert_eq!(bytes.len(), 10 + 4 * 9);
        assert_eq!(
            decode_sleep(&bytes, t(0)).unwrap(),
            vec![Reading::Sleep(night())]
        );
        assert_eq!(encode_sleep(&night()), bytes);
        // A nap: flags 0, no stages.
        let nap = hex("00 b9 55 69 08 c0 55 69 00 00");
        assert_eq!(
            decode_sleep(&nap, t(0)).unwrap(),
            vec![Reading::Sleep(SleepReading {
                start: t(T0),
                end: t(T0 + 1800),
                is_main_sleep: false,
                stages: vec![],
                reported: Default::default(),
            })]
        );
        // Reserved flag bits are ignored.
        let mut flagged = nap.clone();
        flagged[8] = 0xfe;
        assert_eq!(decode_sleep(&flagged, t(0)), decode_sleep(&nap, t(0)));
    }

    #[test]
    fn sleep_refuses_bad_lengths() {
        let bytes = hex(NIGHT);
        assert_eq!(
            decode_sleep(&[], t(0)),
            Err(DecodeError::Truncated { needed: 10, got: 0 })
        );
        assert_eq!(
            decode_sleep(&bytes[..9], t(0)),
            Err(DecodeError::Truncated { needed: 10, got: 9 })
        );
        assert_eq!(
            decode_sleep(&bytes[..45], t(0)),
            Err(DecodeError::Truncated {
                needed: 46,
                got: 45
            })
        );
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            decode_sleep(&long, t(0)),
            Err(DecodeError::Oversized { max: 46, got: 47 })
        );
        assert_eq!(
            decode_sleep(&[0; 513], t(0)),
            Err(DecodeError::Oversized { max: 512, got: 513 })
        );
    }

    #[test]
    fn sleep_refuses_bad_values() {
        let invalid = |mutate: &dyn Fn(&mut Vec<u8>), why: &'static str| {
            let mut bytes = hex(NIGHT);
            mutate(&mut bytes);
            assert_eq!(decode_sleep(&bytes, t(0)), Err(DecodeError::Invalid(why)));
        };
        invalid(&|b| b[45] = 4, "unknown sleep stage code");
        invalid(
            &|b| b[4..8].copy_from_slice(&T0.to_le_bytes()),
            "sleep episode does not end after it starts",
        );
        invalid(
            &|b| b[14..18].copy_from_slice(&0u32.to_le_bytes()),
            "sleep stage has zero duration",
        );
        // Last stage runs one second past the episode end.
        invalid(
            &|b| b[41..45].copy_from_slice(&901u32.to_le_bytes()),
            "sleep stage lies outside its episode",
        );
        // Second stage starts inside the first.
        invalid(
            &|b| b[19..23].copy_from_slice(&599u32.to_le_bytes()),
            "sleep stages are out of order or overlap",
        );
        // A huge offset cannot overflow.
        invalid(
            &|b| b[37..41].copy_from_slice(&u32::MAX.to_le_bytes()),
            "sleep stage lies outside its episode",
        );
    }

    #[test]
    fn max_stages_fit_one_notification() {
        assert_eq!(MAX_SLEEP_STAGES, 55);
        let stages = (0..MAX_SLEEP_STAGES as u32)
            .map(|i| (SleepStageKind::Light, t(T0 + i * 60), t(T0 + i * 60 + 60)))
            .collect();
        let sleep = SleepReading {
            start: t(T0),
            end: t(T0 + 4 * 3600),
            is_main_sleep: true,
            stages,
            reported: Default::default(),
        };
        let bytes = encode_sleep(&sleep);
        assert!(bytes.len() <= MAX_LEN);
        assert_eq!(
            decode_sleep(&bytes, t(0)).unwrap(),
            vec![Reading::Sleep(sleep)]
        );
    }

    fn kind() -> impl Strategy<Value = SleepStageKind> {
        prop_oneof![
            Just(SleepStageKind::Awake),
            Just(SleepStageKind::Light),
            Just(SleepStageKind::Deep),
            Just(SleepStageKind::Rem),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_activity(&bytes, t(0));
            let _ = decode_sleep(&bytes, t(0));
        }

        #[test]
        fn sleep_shaped_bytes_never_panic(
            header in prop::collection::vec(any::<u8>(), 9),
            n in 0u8..=56,
            body in prop::collection::vec(any::<u8>(), 0..520),
        ) {
            let mut bytes = header;
            bytes.push(n);
            bytes.extend(body.iter().take(usize::from(n) * SLEEP_STAGE_LEN));
            let _ = decode_sleep(&bytes, t(0));
        }

        #[test]
        fn activity_round_trips(
            entries in prop::collection::vec((any::<u32>(), 1u16.., any::<u16>()), 1..=60),
        ) {
            let entries: Vec<_> = entries.into_iter().map(|(s, d, n)| (t(s), d, n)).collect();
            let want: Vec<_> = entries
                .iter()
                .map(|&(start, d, steps)| Reading::Steps {
                    start,
                    end: start + Duration::seconds(i64::from(d)),
                    steps: u32::from(steps),
                })
                .collect();
            prop_assert_eq!(decode_activity(&encode_activity(&entries), t(0)).unwrap(), want);
        }

        #[test]
        fn sleep_round_trips(
            start in 0u32..=u32::MAX / 2,
            main in any::<bool>(),
            stages in prop::collection::vec((kind(), 0u32..3600, 1u32..7200), 0..=MAX_SLEEP_STAGES),
            tail in 1u32..3600,
        ) {
            let mut at = start;
            let stages: Vec<_> = stages
                .into_iter()
                .map(|(k, gap, d)| {
                    let s = at + gap;
                    at = s + d;
                    (k, t(s), t(at))
                })
                .collect();
            let sleep = SleepReading {
                start: t(start),
                end: t(at + tail),
                is_main_sleep: main,
                stages,
                reported: Default::default(),
            };
            let bytes = encode_sleep(&sleep);
            prop_assert!(bytes.len() <= MAX_LEN);
            prop_assert_eq!(decode_sleep(&bytes, t(0)).unwrap(), vec![Reading::Sleep(sleep)]);
        }
    }

    #[test]
    fn per_kind_history_requests_round_trip() {
        let since = t(T0);
        let bytes = encode_history_request_for(HistoryKind::Sleep, since);
        assert_eq!(bytes, hex("02 00 b9 55 69"));
        assert_eq!(
            decode_any_history_request(&bytes).unwrap(),
            (Some(HistoryKind::Sleep), since)
        );
        assert_eq!(
            decode_any_history_request(&encode_history_request(since)).unwrap(),
            (None, since)
        );
        assert!(decode_any_history_request(&hex("03 00 b9 55 69")).is_err());
        assert!(decode_any_history_request(&hex("01 00 b9")).is_err());
    }

    #[test]
    fn history_requests_round_trip_and_refuse_other_lengths() {
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(
            encode_history_request(t),
            1_800_000_000u32.to_le_bytes().to_vec()
        );
        assert_eq!(
            decode_history_request(&encode_history_request(t)).unwrap(),
            t
        );
        assert!(decode_history_request(&[1, 2, 3]).is_err());
        assert_eq!(
            encode_history_request(DateTime::from_timestamp(-5, 0).unwrap()),
            vec![0, 0, 0, 0]
        );
    }
}
