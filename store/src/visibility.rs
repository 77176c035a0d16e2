//! Who sees which change of the sync feed: a pure function of the reader's consent history.
//!
//! This is access policy, kept beside the store rather than in it: no SQL here, and every
//! backend's feed read applies these functions, so the conformance suite holds each backend
//! to the same rules. The gateway's access layer re-exports it as `access::feed`.
//!
//! The feed ([`crate::changes`]) is one sequence of changes in commit order; a position
//! in it is a `seq`. A reader (a company or a clinician) holds, per person, a history of
//! consents, each a [`Grant`]: its terms and status now, the position at which it was
//! granted, and the positions the reader read through while it was in force (its *read
//! marks*, written after each page). From that history alone:
//!
//! - **`stored`** (a record stored or moved to the person): visible iff some consent of the
//!   person in force *now* covers its type and measured start. The reader has not passed the
//!   row before (it lies after its cursor), so it is new to it whenever it was stored and
//!   whichever consent was in force then: a consent edit (grant the new one, withdraw the
//!   old, in either order) neither drops it nor repeats it.
//! - **catch-up** (`stored` rows addressed to one consent, written at its grant for records
//!   stored before): written only for records the reader neither received already (it
//!   passed their `stored` row while a consent covering them was in force: [`delivered`])
//!   nor will still receive (their row lies beyond where the reader has read); read with the
//!   same rule as `stored`.
//! - **`erased`** (a record erased or moved away): visible iff the reader could have seen
//!   the record (a consent covering it was granted before the change) and still holds a
//!   consent of that person in force now. An expired or withdrawn relation gets no more
//!   notices.
//! - **`person_erased`** (the person erased everything: the feed keeps no record-level trace
//!   of them, only this): visible iff the reader held a consent of that person, granted
//!   before, that was in force when the erasure withdrew it.
//!
//! Withdrawal and expiry end the flow at once, for changes not yet read too.

use uuid::Uuid;

use phr_schema::RecordType;

use crate::{Consent, ConsentStatus};

/// One consent of the reader, with where it stands in the feed.
#[derive(Debug, Clone)]
pub struct Grant {
    pub consent: Consent,
    /// The last position before the consent was granted: changes after it are its own.
    pub granted_at: i64,
    /// The last position before it was withdrawn, if it was.
    pub withdrawn_at: Option<i64>,
    /// Positions `(from, to]` the reader read through while the consent was in force.
    pub read: Option<(i64, i64)>,
}

impl Grant {
    fn in_force(&self) -> bool {
        self.consent.status == ConsentStatus::Granted
    }

    /// Whether the consent covers a record of `record_type` measured from `start_ms`: the
    /// data access layer's rule (the measured start inside the window).
    pub fn covers(&self, record_type: RecordType, start_ms: i64) -> bool {
        let (from, to) = self.consent.terms.window_ms();
        self.consent.terms.data_types.contains(&record_type) && from <= start_ms && start_ms < to
    }

    /// Whether it was in force when it was withdrawn (not already expired by then).
    fn in_force_when_withdrawn(&self) -> bool {
        match (self.consent.withdrawn_at, self.consent.terms.valid_until) {
            (Some(w), Some(until)) => w < until,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// The consent in force now that lets the reader see a `stored` change of a record of
/// `record_type` measured from `start_ms`, if any.
pub fn stored(grants: &[Grant], record_type: RecordType, start_ms: i64) -> Option<Uuid> {
    grants
        .iter()
        .find(|g| g.in_force() && g.covers(record_type, start_ms))
        .map(|g| g.consent.consent_id)
}

/// The consent that lets the reader see the `erased` change at `seq` of such a record: one
/// in force now, provided a consent covering the record was granted before the change.
pub fn erased(grants: &[Grant], record_type: RecordType, start_ms: i64, seq: i64) -> Option<Uuid> {
    let could_see = grants
        .iter()
        .any(|g| g.granted_at < seq && g.covers(record_type, start_ms));
    if !could_see {
        return None;
    }
    grants
        .iter()
        .find(|g| g.in_force())
        .map(|g| g.consent.consent_id)
}

/// The consent that lets the reader learn of the person's erasure at `seq`: one granted
/// before it that was in force when the erasure withdrew it (or is in force now).
pub fn person_erased(grants: &[Grant], seq: i64) -> Option<Uuid> {
    grants
        .iter()
        .find(|g| {
            g.granted_at < seq
                && (g.in_force()
                    || (g.withdrawn_at.is_some_and(|w| w >= seq) && g.in_force_when_withdrawn()))
        })
        .map(|g| g.consent.consent_id)
}

/// Whether the reader already received the record whose `stored` row is at `stored_seq`: it
/// read through that position while a consent covering the record was in force.
pub fn delivered(
    grants: &[Grant],
    record_type: RecordType,
    start_ms: i64,
    stored_seq: i64,
) -> bool {
    grants.iter().any(|g| {
        g.covers(record_type, start_ms)
            && g.read
                .is_some_and(|(from, to)| from < stored_seq && stored_seq <= to)
    })
}

/// At the grant of a consent covering a record stored before: whether the record needs a
/// catch-up row. Not if the reader received it already ([`delivered`], through its `stored`
/// row or an earlier catch-up row at `earlier`), nor if it will still pass one of those rows
/// (they lie beyond `reader_at`, the furthest position it has read), where the same rule
/// shows it. `others` are the reader's other consents of the same person.
pub fn needs_catch_up(
    others: &[Grant],
    record_type: RecordType,
    start_ms: i64,
    stored_seq: i64,
    earlier: &[i64],
    reader_at: i64,
) -> bool {
    std::iter::once(stored_seq)
        .chain(earlier.iter().copied())
        .all(|at| at <= reader_at && !delivered(others, record_type, start_ms, at))
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeZone, Utc};

    use super::*;
    use crate::{GranteeKind, Terms};

    const STEPS: RecordType = RecordType::StepCount;
    const SLEEP: RecordType = RecordType::SleepEpisode;

    fn t(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, h, 0, 0).unwrap()
    }

    fn grant(types: &[RecordType], status: ConsentStatus, granted_at: i64) -> Grant {
        Grant {
            consent: Consent {
                consent_id: Uuid::new_v4(),
                person_id: "ann".into(),
                terms: Terms {
                    grantee: "acme".into(),
                    grantee_kind: GranteeKind::Client,
                    purpose: "research".into(),
                    data_types: types.to_vec(),
                    window_from: None,
                    window_to: None,
                    valid_until: None,
                },
                status,
                granted_at: t(1),
                withdrawn_at: (status == ConsentStatus::Withdrawn).then(|| t(5)),
            },
            granted_at,
            withdrawn_at: (status == ConsentStatus::Withdrawn).then_some(50),
            read: None,
        }
    }

    #[test]
    fn a_stored_change_is_visible_under_any_consent_in_force_now_whenever_it_was_granted() {
        // Granted after the change (a replacement): still visible, the reader has not
        // passed it.
        let g = grant(&[STEPS, SLEEP], ConsentStatus::Granted, 100);
        assert_eq!(
            stored(std::slice::from_ref(&g), STEPS, 0),
            Some(g.consent.consent_id)
        );
        // Withdrawn: nothing, for changes not yet read too.
        let w = grant(&[STEPS], ConsentStatus::Withdrawn, 1);
        assert_eq!(stored(std::slice::from_ref(&w), STEPS, 0), None);
        // The withdrawn one and its replacement in force: the replacement.
        assert_eq!(
            stored(&[w, g.clone()], STEPS, 0),
            Some(g.consent.consent_id)
        );
        // Not a type it covers.
        let only_sleep = grant(&[SLEEP], ConsentStatus::Granted, 1);
        assert_eq!(stored(&[only_sleep], STEPS, 0), None);
    }

    #[test]
    fn an_expired_consent_gets_no_more_erasure_notices() {
        let mut g = grant(&[STEPS], ConsentStatus::Expired, 1);
        g.consent.terms.valid_until = Some(t(2));
        assert_eq!(erased(&[g.clone()], STEPS, 0, 10), None);
        // While it was in force, the notice came.
        g.consent.status = ConsentStatus::Granted;
        assert_eq!(
            erased(&[g.clone()], STEPS, 0, 10),
            Some(g.consent.consent_id)
        );
        // A notice of a change from before the grant: the reader never saw that record.
        assert_eq!(erased(&[g], STEPS, 0, 1), None);
    }

    #[test]
    fn an_erasure_notice_reaches_a_reader_holding_any_consent_of_the_person() {
        // The record was seen under a withdrawn steps consent; a sleep consent is in force.
        let old = grant(&[STEPS], ConsentStatus::Withdrawn, 1);
        let now = grant(&[SLEEP], ConsentStatus::Granted, 60);
        assert_eq!(
            erased(&[old.clone(), now.clone()], STEPS, 0, 70),
            Some(now.consent.consent_id)
        );
        assert_eq!(erased(&[old], STEPS, 0, 70), None);
    }

    #[test]
    fn a_person_erasure_reaches_those_whose_consent_it_withdrew() {
        let mut g = grant(&[STEPS], ConsentStatus::Withdrawn, 1);
        g.withdrawn_at = Some(50);
        assert_eq!(person_erased(&[g.clone()], 50), Some(g.consent.consent_id));
        // Withdrawn before the erasure: not told.
        assert_eq!(person_erased(&[g.clone()], 51), None);
        // Expired before the erasure withdrew it: not told.
        g.consent.terms.valid_until = Some(t(3));
        assert_eq!(person_erased(&[g], 50), None);
    }

    #[test]
    fn delivered_means_read_through_while_a_covering_consent_was_in_force() {
        let mut g = grant(&[STEPS], ConsentStatus::Withdrawn, 10);
        g.read = Some((10, 40));
        assert!(delivered(&[g.clone()], STEPS, 0, 30));
        // Passed before the consent (or never read under it): not delivered.
        assert!(!delivered(&[g.clone()], STEPS, 0, 5));
        assert!(!delivered(&[g.clone()], STEPS, 0, 41));
        assert!(!delivered(&[g], SLEEP, 0, 30));
    }

    #[test]
    fn catch_up_only_for_what_the_reader_passed_without_receiving() {
        let mut old = grant(&[STEPS], ConsentStatus::Withdrawn, 10);
        old.read = Some((10, 40));
        // Received under the old consent: no catch-up (the re-grant does not repeat it).
        assert!(!needs_catch_up(&[old.clone()], STEPS, 0, 30, &[], 60));
        // Stored after the reader's last read while the old one was in force, and passed
        // since (while nothing was in force): catch-up.
        assert!(needs_catch_up(&[old.clone()], STEPS, 0, 45, &[], 60));
        // Not passed yet: its own row will show it.
        assert!(!needs_catch_up(&[old.clone()], STEPS, 0, 70, &[], 60));
        // An earlier catch-up row received: none again; one not passed yet: none either.
        assert!(!needs_catch_up(&[old.clone()], STEPS, 0, 5, &[35], 60));
        assert!(!needs_catch_up(&[old.clone()], STEPS, 0, 5, &[65], 60));
        assert!(needs_catch_up(&[old], STEPS, 0, 5, &[45], 60));
    }
}
