//! The data access layer. Every read of health data goes through [`read_records`], so no
//! handler can forget a check: effective access is scope AND consent (checked now, at request
//! time, not when the token was issued) AND the object itself (this person's records, clipped
//! to the consented types and measured-time window). Every read by someone other than the
//! person, allowed or refused, writes one disclosure-log entry.
//!
//! Refusals do not say why beyond the status: 403 when the token's scopes do not allow the
//! kind of read at all or the request lies wholly outside the consented window, 404 when
//! there is no consent in force (indistinguishable from a person who does not exist).

use chrono::{DateTime, Utc};

use phr_schema::RecordType;

use crate::auth::Principal;
use crate::store::audit::{Action, Entry, Outcome};
use crate::store::{GranteeKind, Page, PageKey, Store};
use crate::Error;

/// A read of one person's records of one type, measured start in `[from_ms, to_ms)`.
#[derive(Debug, Clone)]
pub struct Query {
    pub person_id: String,
    pub record_type: RecordType,
    pub from_ms: i64,
    pub to_ms: i64,
    pub after: Option<PageKey>,
    pub limit: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("the token does not allow this read")]
    Forbidden,
    #[error("the request lies outside the consented window")]
    OutsideWindow,
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Store(#[from] Error),
}

/// What kind of reader a token makes its subject, for observations of someone else.
pub fn party_kind(p: &Principal) -> Option<GranteeKind> {
    if p.has_scope("user", "Observation", 'r') {
        Some(GranteeKind::Practitioner)
    } else if p.has_scope("system", "Observation", 'r') {
        Some(GranteeKind::Client)
    } else {
        None
    }
}

/// Reads records as `principal`, enforcing scope, consent and window, and logging.
pub fn read_records(
    store: &Store,
    principal: &Principal,
    q: &Query,
    now: DateTime<Utc>,
) -> Result<Page, AccessError> {
    if principal.subject == q.person_id && principal.has_scope("patient", "Observation", 'r') {
        return Ok(store.records(
            &q.person_id,
            q.record_type,
            q.from_ms,
            q.to_ms,
            q.after.as_ref(),
            q.limit,
        )?);
    }
    let entry =
        |outcome, consent: Option<&crate::store::Consent>, from_ms: i64, to_ms: i64, records| {
            Entry {
                at: now,
                actor: principal.subject.clone(),
                actor_kind: party_kind(principal)
                    .map_or("unknown", GranteeKind::as_str)
                    .to_owned(),
                person_id: q.person_id.clone(),
                action: Action::Read,
                outcome,
                data_types: vec![q.record_type.as_str().to_owned()],
                window_from: (from_ms != i64::MIN)
                    .then(|| DateTime::from_timestamp_millis(from_ms))
                    .flatten(),
                window_to: (to_ms != i64::MAX)
                    .then(|| DateTime::from_timestamp_millis(to_ms))
                    .flatten(),
                purpose: consent.map_or_else(String::new, |c| c.terms.purpose.clone()),
                consent_id: consent.map(|c| c.consent_id),
                records,
            }
        };
    let Some(kind) = party_kind(principal) else {
        store.log_disclosure(&entry(Outcome::Denied, None, q.from_ms, q.to_ms, 0))?;
        return Err(AccessError::Forbidden);
    };
    let consents = store.consents_in_force(&q.person_id, &principal.subject, kind, now)?;
    let Some(consent) = consents
        .iter()
        .find(|c| c.terms.data_types.contains(&q.record_type))
    else {
        store.log_disclosure(&entry(Outcome::Denied, None, q.from_ms, q.to_ms, 0))?;
        return Err(AccessError::NotFound);
    };
    let (window_from, window_to) = consent.terms.window_ms();
    let (from_ms, to_ms) = (q.from_ms.max(window_from), q.to_ms.min(window_to));
    if from_ms >= to_ms {
        store.log_disclosure(&entry(
            Outcome::Denied,
            Some(consent),
            q.from_ms,
            q.to_ms,
            0,
        ))?;
        return Err(AccessError::OutsideWindow);
    }
    let page = store.records(
        &q.person_id,
        q.record_type,
        from_ms,
        to_ms,
        q.after.as_ref(),
        q.limit,
    )?;
    // Logged before anything is returned: no log entry, no data.
    store.log_disclosure(&entry(
        Outcome::Disclosed,
        Some(consent),
        from_ms,
        to_ms,
        page.records.len() as u64,
    ))?;
    Ok(page)
}
