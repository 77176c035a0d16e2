//! The gateway's access core, below its routes and its dashboards: who the caller is
//! ([`auth`]: the gateway's own tokens; [`idp`]: trusted OpenID providers), what they may
//! read (this module: scope AND consent AND object, and the disclosure log), what they may
//! start (a [`pairing`] through a bridge's sealed [`channel`]) and a person's [`export`].
//! The API (`phr-gateway`) and the server-rendered dashboards (`phr-dashboards`) both stand on
//! it, so neither can read health data another way.
//!
//! # Layout
//! - this module: the data access layer (below).
//! - [`auth`]: the signing key, token issue and verification, the caller's [`auth::Principal`].
//! - [`idp`]: trusted OpenID providers: discovery, JWKS, token verification.
//! - [`config`]: the providers' configuration and the [`config::Secret`] wrapper.
//! - [`channel`]: the gateway's channel key and the enrolled bridges' channels.
//! - [`pairing`]: starting a pairing (a sealed request to the bridge over MQTT).
//! - [`export`]: a person's whole export, streamed (FHIR, Open mHealth, CSV).
//! - [`forwarded`]: the public origin of a request (behind a proxy or not).
//! - [`uri`]: percent-encoding of query values, form values and path segments.
//! - [`Error`]: the gateway's error type.
//!
//! # The data access layer
//!
//! Every read of health data goes through this module, so no handler
//! can forget a check: effective access is scope AND consent (checked now, at request time,
//! not when the token was issued) AND the object itself (this person's records, clipped to
//! the consented types and measured-time window). Every read by someone other than the
//! person, allowed or refused, writes one disclosure-log entry.
//!
//! The reads: [`read_records`] (one type, a page), [`search_records`] (several types, a page
//! across them, for FHIR search), [`read_daily_summary`] (per local day totals),
//! [`read_patient_view`] (the dashboards' aggregates of one person) and [`read_changes`] (a
//! page of the sync feed, logged per person it carries). All of them decide
//! access with the same `authorize` and log with the same `disclose`.
//!
//! Refusals do not say why beyond the status: 403 when the token's scopes do not allow the
//! kind of read at all or the request lies wholly outside the consented window, 404 when
//! there is no consent in force (indistinguishable from a person who does not exist).

/// Who sees which change of the sync feed: the consent rules every store backend applies
/// while it pages (they live with the store so its conformance suite can hold each backend
/// to them; this layer decides everything else).
pub use crate::store::visibility as feed;

pub mod auth;
pub mod channel;
pub mod config;
pub mod export;
pub mod forwarded;
pub mod idp;
pub mod pairing;
pub mod uri;

mod error;

pub use error::{Error, Result};
pub use phr_store as store;

/// What `DELETE /api/v1/me/data` needs in `confirm` (and the owner dashboard's erase form),
/// so no stray call erases anyone.
pub const ERASE_CONFIRMATION: &str = "erase-all-my-data";

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

use phr_schema::RecordType;

use crate::auth::Principal;
use crate::store::audit::{Action, Entry, Outcome};
use crate::store::changes::{FeedPage, Op};
use crate::store::rollup::{Episode, RestingHeartRate};
use crate::store::subjects::{self, DailySummary, DayWindow};
use crate::store::{Backend, Consent, GranteeKind, Page, PageKey, StoredRecord};

/// The sync feed's next page for `principal` (a company or a clinician): the changes after
/// `after` its consents let it see now, narrowed to the types its token allows, at most
/// `limit` ([`crate::store::visibility`] decides which), each person's records in it logged
/// as one disclosure. Forbidden for a token that reads no one else's observations.
pub fn read_changes(
    store: &dyn Backend,
    principal: &Principal,
    after: i64,
    limit: usize,
    now: DateTime<Utc>,
) -> Result<FeedPage, AccessError> {
    let kind = party_kind(principal).ok_or(AccessError::Forbidden)?;
    let types = principal.allowed_types();
    let page = store.feed(
        &principal.subject,
        kind,
        types.as_deref(),
        after,
        limit,
        now,
    )?;
    disclose_changes(store, principal, kind, &page, now)?;
    Ok(page)
}

/// One disclosure entry per person whose records the page carries (an erasure notice
/// carries no health data and is not a disclosure).
fn disclose_changes(
    store: &dyn Backend,
    principal: &Principal,
    kind: GranteeKind,
    page: &FeedPage,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let mut per_person: std::collections::BTreeMap<&str, (u64, Vec<&'static str>, uuid::Uuid)> =
        std::collections::BTreeMap::new();
    for c in page.changes.iter().filter(|c| c.op == Op::Stored) {
        let e = per_person
            .entry(&c.person_id)
            .or_insert((0, Vec::new(), c.consent_id));
        e.0 += 1;
        if let Some((t, _)) = &c.record {
            if !e.1.contains(&t.as_str()) {
                e.1.push(t.as_str());
            }
        }
    }
    for (person, (records, types, consent_id)) in per_person {
        store.log_disclosure(&Entry {
            at: now,
            actor: principal.subject.clone(),
            actor_kind: kind.as_str().to_owned(),
            person_id: person.to_owned(),
            action: Action::Read,
            outcome: Outcome::Disclosed,
            data_types: types.into_iter().map(str::to_owned).collect(),
            window_from: None,
            window_to: None,
            purpose: "incremental sync".to_owned(),
            consent_id: Some(consent_id),
            records,
        })?;
    }
    Ok(())
}

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

impl From<crate::store::Error> for AccessError {
    fn from(e: crate::store::Error) -> Self {
        Self::Store(e.into())
    }
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

/// What a read asks for: some types of one person's data measured in `[from_ms, to_ms)`.
/// `all_required`: every type was named by the caller, so a type without consent refuses the
/// whole read (404); otherwise the types are "whatever is consented" and unconsented ones
/// are left out.
#[derive(Debug, Clone, Copy)]
struct Ask<'a> {
    person_id: &'a str,
    types: &'a [RecordType],
    from_ms: i64,
    to_ms: i64,
    all_required: bool,
}

/// One type the reader may read now: under which consent (none for the owner), the consent's
/// measured-time window, and the asked window clipped to it.
#[derive(Debug, Clone)]
struct Grant {
    record_type: RecordType,
    consent: Option<Consent>,
    window: (i64, i64),
    from_ms: i64,
    to_ms: i64,
}

/// The outcome of [`authorize`]: the types that may be read, in [`RecordType::ALL`] order.
#[derive(Debug, Clone)]
struct Granted {
    /// The person reading their own data: nothing is logged.
    owner: bool,
    grants: Vec<Grant>,
}

/// A disclosure-log entry of `principal` reading `person_id`.
#[allow(clippy::too_many_arguments)]
fn entry(
    principal: &Principal,
    person_id: &str,
    outcome: Outcome,
    types: &[RecordType],
    consents: &[&Consent],
    from_ms: i64,
    to_ms: i64,
    records: u64,
    now: DateTime<Utc>,
) -> Entry {
    let mut purposes: Vec<&str> = Vec::new();
    for c in consents {
        if !purposes.contains(&c.terms.purpose.as_str()) {
            purposes.push(&c.terms.purpose);
        }
    }
    Entry {
        at: now,
        actor: principal.subject.clone(),
        actor_kind: party_kind(principal)
            .map_or("unknown", GranteeKind::as_str)
            .to_owned(),
        person_id: person_id.to_owned(),
        action: Action::Read,
        outcome,
        data_types: types.iter().map(|t| t.as_str().to_owned()).collect(),
        window_from: (from_ms != i64::MIN)
            .then(|| DateTime::from_timestamp_millis(from_ms))
            .flatten(),
        window_to: (to_ms != i64::MAX)
            .then(|| DateTime::from_timestamp_millis(to_ms))
            .flatten(),
        purpose: purposes.join("; "),
        consent_id: consents.first().map(|c| c.consent_id),
        records,
    }
}

/// Decides whether `principal` may read what `ask` asks for, now. A refusal is logged here
/// (one `denied` entry) before it is returned; an allowed read is logged by the caller with
/// [`disclose`] once it knows how many records leave.
fn authorize(
    store: &dyn Backend,
    principal: &Principal,
    ask: &Ask<'_>,
    now: DateTime<Utc>,
) -> Result<Granted, AccessError> {
    let mut types: Vec<RecordType> = RecordType::ALL
        .into_iter()
        .filter(|t| ask.types.contains(t))
        .collect();
    // Scope first: a token narrowed to some types (`...Observation.rs?code=...`) reads only
    // those, whatever the consent says.
    let scoped = principal.allowed_types();
    let in_scope = |t: &RecordType| scoped.as_ref().is_none_or(|a| a.contains(t));
    let named_out_of_scope = ask.all_required && !types.iter().all(in_scope);
    types.retain(in_scope);
    let out_of_scope = named_out_of_scope || types.is_empty();
    if principal.subject == ask.person_id && principal.has_scope("patient", "Observation", 'r') {
        if out_of_scope {
            return Err(AccessError::Forbidden);
        }
        let grants = types
            .into_iter()
            .map(|record_type| Grant {
                record_type,
                consent: None,
                window: (i64::MIN, i64::MAX),
                from_ms: ask.from_ms,
                to_ms: ask.to_ms,
            })
            .collect();
        return Ok(Granted {
            owner: true,
            grants,
        });
    }
    let denied = |consents: &[&Consent]| {
        store.log_disclosure(&entry(
            principal,
            ask.person_id,
            Outcome::Denied,
            ask.types,
            consents,
            ask.from_ms,
            ask.to_ms,
            0,
            now,
        ))
    };
    let Some(kind) = party_kind(principal).filter(|_| !out_of_scope) else {
        denied(&[])?;
        return Err(AccessError::Forbidden);
    };
    let consents = store.consents_in_force(ask.person_id, &principal.subject, kind, now)?;
    // Newest consent naming the type decides, as it always has for a single type.
    let consent_for = |t: RecordType| consents.iter().find(|c| c.terms.data_types.contains(&t));
    if ask.all_required && types.iter().any(|&t| consent_for(t).is_none()) {
        denied(&[])?;
        return Err(AccessError::NotFound);
    }
    types.retain(|&t| consent_for(t).is_some());
    if types.is_empty() {
        denied(&[])?;
        return Err(AccessError::NotFound);
    }
    let mut grants = Vec::new();
    let mut outside: Vec<&Consent> = Vec::new();
    for t in types {
        let Some(consent) = consent_for(t) else {
            continue;
        };
        let window = consent.terms.window_ms();
        let (from_ms, to_ms) = (ask.from_ms.max(window.0), ask.to_ms.min(window.1));
        if from_ms >= to_ms {
            outside.push(consent);
            continue;
        }
        grants.push(Grant {
            record_type: t,
            consent: Some(consent.clone()),
            window,
            from_ms,
            to_ms,
        });
    }
    if grants.is_empty() {
        denied(&outside)?;
        return Err(AccessError::OutsideWindow);
    }
    Ok(Granted {
        owner: false,
        grants,
    })
}

/// Logs what an allowed read disclosed: the types, the consented window read (the span of
/// the clipped windows), the consent (the first type's, when several apply; every distinct
/// purpose is named) and the record count. The owner's own reads are not logged.
/// Logged before anything is returned: no log entry, no data.
fn disclose(
    store: &dyn Backend,
    principal: &Principal,
    person_id: &str,
    granted: &Granted,
    records: u64,
    now: DateTime<Utc>,
) -> Result<(), AccessError> {
    if granted.owner {
        return Ok(());
    }
    let types: Vec<RecordType> = granted.grants.iter().map(|g| g.record_type).collect();
    let mut consents: Vec<&Consent> = Vec::new();
    for c in granted.grants.iter().filter_map(|g| g.consent.as_ref()) {
        if !consents.iter().any(|k| k.consent_id == c.consent_id) {
            consents.push(c);
        }
    }
    let from_ms = granted.grants.iter().map(|g| g.from_ms).min();
    let to_ms = granted.grants.iter().map(|g| g.to_ms).max();
    store.log_disclosure(&entry(
        principal,
        person_id,
        Outcome::Disclosed,
        &types,
        &consents,
        from_ms.unwrap_or(i64::MIN),
        to_ms.unwrap_or(i64::MAX),
        records,
        now,
    ))?;
    Ok(())
}

/// Reads records as `principal`, enforcing scope, consent and window, and logging.
pub fn read_records(
    store: &dyn Backend,
    principal: &Principal,
    q: &Query,
    now: DateTime<Utc>,
) -> Result<Page, AccessError> {
    let ask = Ask {
        person_id: &q.person_id,
        types: &[q.record_type],
        from_ms: q.from_ms,
        to_ms: q.to_ms,
        all_required: true,
    };
    let granted = authorize(store, principal, &ask, now)?;
    let Some(g) = granted.grants.first() else {
        return Err(AccessError::NotFound);
    };
    let page = store.records(
        &q.person_id,
        q.record_type,
        g.from_ms,
        g.to_ms,
        q.after.as_ref(),
        q.limit,
    )?;
    disclose(
        store,
        principal,
        &q.person_id,
        &granted,
        page.records.len() as u64,
        now,
    )?;
    Ok(page)
}

/// A search across record types (FHIR `Observation` search): measured start in
/// `[from_ms, to_ms)`, `types` as named by the caller or `None` for every consented type.
/// Results come type by type in [`RecordType::ALL`] order, each in measured order.
#[derive(Debug, Clone)]
pub struct Search {
    pub person_id: String,
    pub types: Option<Vec<RecordType>>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub resume: Option<Resume>,
    pub limit: usize,
}

/// Where a search page starts: at `record_type`, after `after` if given (and every later
/// type from its start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub record_type: RecordType,
    pub after: Option<PageKey>,
}

/// A page of a [`Search`].
#[derive(Debug, Clone)]
pub struct SearchPage {
    pub records: Vec<(RecordType, StoredRecord)>,
    /// Where the next page starts; `None` when this page is the last.
    pub next: Option<Resume>,
}

fn type_index(t: RecordType) -> usize {
    RecordType::ALL.iter().position(|&k| k == t).unwrap_or(0)
}

/// Searches as `principal`: the same checks as [`read_records`] for every type searched,
/// and one disclosure-log entry for the whole page.
pub fn search_records(
    store: &dyn Backend,
    principal: &Principal,
    q: &Search,
    now: DateTime<Utc>,
) -> Result<SearchPage, AccessError> {
    let ask = Ask {
        person_id: &q.person_id,
        types: q.types.as_deref().unwrap_or(&RecordType::ALL),
        from_ms: q.from_ms,
        to_ms: q.to_ms,
        all_required: q.types.is_some(),
    };
    let granted = authorize(store, principal, &ask, now)?;
    let start = q.resume.as_ref().map_or(0, |r| type_index(r.record_type));
    let mut records = Vec::new();
    let mut next = None;
    for g in granted
        .grants
        .iter()
        .filter(|g| type_index(g.record_type) >= start)
    {
        let after = q
            .resume
            .as_ref()
            .filter(|r| r.record_type == g.record_type)
            .and_then(|r| r.after.clone());
        let room = q.limit.saturating_sub(records.len());
        if room == 0 {
            // The page is full: a next page only if this type still has something.
            let probe = store.records(
                &q.person_id,
                g.record_type,
                g.from_ms,
                g.to_ms,
                after.as_ref(),
                1,
            )?;
            if !probe.records.is_empty() {
                next = Some(Resume {
                    record_type: g.record_type,
                    after,
                });
                break;
            }
            continue;
        }
        let page = store.records(
            &q.person_id,
            g.record_type,
            g.from_ms,
            g.to_ms,
            after.as_ref(),
            room,
        )?;
        records.extend(page.records.into_iter().map(|r| (g.record_type, r)));
        if let Some(key) = page.next {
            next = Some(Resume {
                record_type: g.record_type,
                after: Some(key),
            });
            break;
        }
    }
    disclose(
        store,
        principal,
        &q.person_id,
        &granted,
        records.len() as u64,
        now,
    )?;
    Ok(SearchPage { records, next })
}

/// Daily totals of one person over the local days `from..=to` (their registered time zone),
/// of `types` as named, or `None` for whichever of steps and sleep is consented.
#[derive(Debug, Clone)]
pub struct DailyQuery {
    pub person_id: String,
    pub types: Option<Vec<RecordType>>,
    pub from: NaiveDate,
    pub to: NaiveDate,
}

/// The types a daily summary covers.
pub const SUMMARY_TYPES: [RecordType; 2] = [RecordType::StepCount, RecordType::SleepEpisode];

/// Reads daily totals as `principal`: the same checks as [`read_records`] (asked window: the
/// local days requested), each type clipped to its consent, one disclosure-log entry.
///
/// Steps count towards the local day their record starts in; a sleep episode towards the
/// local day it ends in. Under a consent, only records inside its window count: steps whose
/// start lies in it, sleep episodes that start and end in it. A day cut by the window is
/// marked `partial`.
pub fn read_daily_summary(
    store: &dyn Backend,
    principal: &Principal,
    q: &DailyQuery,
    now: DateTime<Utc>,
) -> Result<DailySummary, AccessError> {
    let registered = store.person_time_zone(&q.person_id)?;
    let zone = subjects::Zone::resolve(registered.as_deref());
    let days = zone.days(q.from, q.to);
    let (Some(first), Some(last)) = (days.first(), days.last()) else {
        return Err(Error::Invalid("no local days in that range").into());
    };
    let ask = Ask {
        person_id: &q.person_id,
        types: q.types.as_deref().unwrap_or(&SUMMARY_TYPES),
        from_ms: first.start_ms,
        to_ms: last.end_ms,
        all_required: q.types.is_some(),
    };
    let granted = authorize(store, principal, &ask, now)?;
    let windows = granted
        .grants
        .iter()
        .map(|g| (g.record_type, g.window))
        .collect::<Vec<_>>();
    let clipped = |window: (i64, i64)| -> Vec<DayWindow> {
        days.iter().filter_map(|d| d.clip(window)).collect()
    };
    let mut summary = DailySummary::new(&q.person_id, &zone, q.from, q.to);
    for (t, window) in windows {
        let records = match t {
            RecordType::StepCount => {
                store.daily_steps(&q.person_id, &clipped(window), &mut summary)?
            }
            RecordType::SleepEpisode => {
                store.daily_sleep(&q.person_id, &clipped(window), window, &mut summary)?
            }
            RecordType::HeartRate => continue,
        };
        summary.types.push(t);
        summary.records += records;
    }
    disclose(
        store,
        principal,
        &q.person_id,
        &granted,
        summary.records,
        now,
    )?;
    Ok(summary)
}

/// A dashboard's view of one person: `days` local days ending `to` (their registered time
/// zone), and the hypnogram of `night`.
#[derive(Debug, Clone)]
pub struct ViewQuery {
    pub person_id: String,
    /// Days the charts show, ending `to` (at most [`MAX_VIEW_DAYS`]).
    pub days: u32,
    /// The last local day shown; `None`: the person's today at `now`.
    pub to: Option<NaiveDate>,
    /// The night (the local day one wakes up) whose hypnogram is wanted; `None`: the latest
    /// night shown that has a staged main-sleep episode.
    pub night: Option<NaiveDate>,
}

/// What [`read_patient_view`] read of one person: the aggregates a dashboard is drawn from
/// (the dashboards' view model derives the rest).
#[derive(Debug, Clone)]
pub struct PatientRead {
    pub person_id: String,
    pub display_name: String,
    /// The zone days are counted in (the summary's `time_zone` says which and whether it
    /// fell back to UTC).
    pub tz: chrono_tz::Tz,
    /// The last local day shown ("today" for flags).
    pub to: NaiveDate,
    /// How many days the charts show, ending `to`.
    pub days: u32,
    /// The types the reader may see, in [`RecordType::ALL`] order.
    pub types: Vec<RecordType>,
    /// Steps and sleep per local day over every day read (`lookback_days` before `to` on).
    pub summary: DailySummary,
    /// The sleep episodes of the nights read, in night then start order.
    pub episodes: Vec<Episode>,
    /// Resting heart rate per day read, in day order.
    pub resting: Vec<RestingHeartRate>,
    /// When the gateway last stored a record the reader may see (of the days read).
    pub last_sync: Option<DateTime<Utc>>,
    /// The night asked for (its hypnogram); `None`: the latest with a staged main episode.
    pub night: Option<NaiveDate>,
    /// How many records the aggregates were made from.
    pub records: u64,
}

/// The most days one dashboard view shows.
pub const MAX_VIEW_DAYS: u32 = 366;

/// Reads what a dashboard shows of one person as `principal`: daily step totals, nightly
/// sleep (sums and episodes), daily resting heart rate and the last sync, with the same
/// checks as [`read_records`]: scope, consent in force now and its window, every type that
/// is consented (unconsented ones are left out, not refused; no consent for any type is 404,
/// as for a person who does not exist). The days read start `lookback_days` before `to` (at
/// least the `days` shown, at most `2 * MAX_VIEW_DAYS`: a view reads more for its rolling
/// means and flags); under a
/// consent, only records inside its window count, as in [`read_daily_summary`].
///
/// Exactly one disclosure-log entry per call (per page view): the types shown, the window
/// read, the consent's purpose and the number of records the aggregates were made from. The
/// person reading their own data is not logged.
pub fn read_patient_view(
    store: &dyn Backend,
    principal: &Principal,
    q: &ViewQuery,
    lookback_days: u32,
    now: DateTime<Utc>,
) -> Result<PatientRead, AccessError> {
    let registered = store.person_time_zone(&q.person_id)?;
    let zone = subjects::Zone::resolve(registered.as_deref());
    let days_shown = q.days.clamp(1, MAX_VIEW_DAYS);
    let to =
        q.to.unwrap_or_else(|| now.with_timezone(&zone.tz).date_naive());
    // At least the days shown, at most two years back (a view's means and flags need weeks).
    let back = lookback_days.clamp(days_shown - 1, 2 * MAX_VIEW_DAYS);
    let back = TimeDelta::days(i64::from(back));
    let from = to.checked_sub_signed(back).unwrap_or(NaiveDate::MIN);
    let days = zone.days(from, to);
    let (Some(first), Some(last)) = (days.first(), days.last()) else {
        return Err(Error::Invalid("no local days in that range").into());
    };
    let ask = Ask {
        person_id: &q.person_id,
        types: &RecordType::ALL,
        from_ms: first.start_ms,
        to_ms: last.end_ms,
        all_required: false,
    };
    let granted = authorize(store, principal, &ask, now)?;
    let mut summary = DailySummary::new(&q.person_id, &zone, from, to);
    let mut episodes = Vec::new();
    let mut resting = Vec::new();
    let mut last_sync: Option<DateTime<Utc>> = None;
    let mut records = 0;
    for g in &granted.grants {
        let clipped: Vec<DayWindow> = days.iter().filter_map(|d| d.clip(g.window)).collect();
        match g.record_type {
            RecordType::StepCount => {
                records += store.daily_steps(&q.person_id, &clipped, &mut summary)?;
            }
            RecordType::SleepEpisode => {
                records += store.daily_sleep(&q.person_id, &clipped, g.window, &mut summary)?;
                episodes = store.sleep_episodes(&q.person_id, &clipped, g.window, zone.tz)?;
            }
            RecordType::HeartRate => {
                let (rows, n) = store.daily_resting_heart_rate(&q.person_id, &clipped)?;
                resting = rows;
                records += n;
            }
        }
        summary.types.push(g.record_type);
        let stored = store.last_stored(&q.person_id, g.record_type, g.from_ms, g.to_ms)?;
        last_sync = last_sync.max(stored);
    }
    summary.records = records;
    disclose(store, principal, &q.person_id, &granted, records, now)?;
    let display_name = store
        .display_name(&q.person_id)?
        .unwrap_or_else(|| q.person_id.clone());
    Ok(PatientRead {
        person_id: q.person_id.clone(),
        display_name,
        tz: zone.tz,
        to,
        days: days_shown,
        types: summary.types.clone(),
        summary,
        episodes,
        resting,
        last_sync,
        night: q.night,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::audit::Logged;
    use crate::store::Terms;
    use chrono::{DateTime, FixedOffset, TimeDelta};
    use phr_schema::record::{
        HeartRate, IntervalFrame, PointFrame, Provenance, SleepEpisode, SleepStage, SleepStageKind,
        StepCount, TimeInterval, UnitValue,
    };
    use phr_schema::{Body, Record};

    fn t(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    fn steps(start: &str, count: i64) -> Record {
        let s = t(start);
        let e = s + TimeDelta::minutes(1);
        Record::new(
            "band",
            "br",
            e,
            Provenance::sensed("test/1"),
            Body::StepCount(StepCount {
                effective_time_frame: IntervalFrame::new(s, e),
                step_count: count,
            }),
        )
    }

    /// `[start, start + 30 min awake + 4 h light + 2 h deep)`.
    fn sleep(start: &str) -> Record {
        let s = t(start);
        let stage = |kind, from: i64, to: i64| SleepStage {
            stage: kind,
            time_interval: TimeInterval {
                start_date_time: s + TimeDelta::minutes(from),
                end_date_time: s + TimeDelta::minutes(to),
            },
        };
        let e = s + TimeDelta::minutes(390);
        Record::new(
            "band",
            "br",
            e,
            Provenance::sensed("test/1"),
            Body::SleepEpisode(SleepEpisode {
                effective_time_frame: IntervalFrame::new(s, e),
                is_main_sleep: true,
                latency_to_sleep_onset: None,
                total_sleep_time: None,
                number_of_awakenings: None,
                sleep_maintenance_efficiency_percentage: None,
                stages: vec![
                    stage(SleepStageKind::Awake, 0, 30),
                    stage(SleepStageKind::Light, 30, 270),
                    stage(SleepStageKind::Deep, 270, 390),
                ],
            }),
        )
    }

    fn heart(at: &str) -> Record {
        Record::new(
            "band",
            "br",
            t(at),
            Provenance::sensed("test/1"),
            Body::HeartRate(HeartRate {
                effective_time_frame: PointFrame { date_time: t(at) },
                heart_rate: UnitValue::new(60.0, phr_schema::record::BEATS_PER_MINUTE),
            }),
        )
    }

    fn principal(subject: &str, scope: &str) -> Principal {
        Principal {
            subject: subject.into(),
            scopes: scope.split_whitespace().map(Into::into).collect(),
        }
    }

    /// Ana (Asia/Tokyo): 3 step records, 2 nights, 2 heart rates; Acme (a company) may read
    /// her steps and heart rate.
    fn store() -> (tempfile::TempDir, crate::store::Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("phr.sqlite")).unwrap();
        store.add_person("ana", "Ana", "Asia/Tokyo").unwrap();
        store
            .grant_storage_consent("ana", &RecordType::ALL)
            .unwrap();
        let records = [
            steps("2026-06-01T08:00:00+09:00", 10),
            steps("2026-06-01T23:59:00+09:00", 20),
            steps("2026-06-03T00:00:00+09:00", 40),
            sleep("2026-05-31T23:00:00+09:00"),
            sleep("2026-06-02T23:30:00+09:00"),
            heart("2026-06-01T09:00:00+09:00"),
            heart("2026-06-02T09:00:00+09:00"),
        ];
        let report = store.import_records("ana", &records, Utc::now()).unwrap();
        assert_eq!(report.stored, 7, "{report:?}");
        store
            .grant_consent(
                "ana",
                Terms {
                    grantee: "acme".into(),
                    grantee_kind: GranteeKind::Client,
                    purpose: "wellness".into(),
                    data_types: vec![RecordType::StepCount, RecordType::HeartRate],
                    window_from: None,
                    window_to: None,
                    valid_until: None,
                },
                "ana",
                Utc::now(),
            )
            .unwrap();
        (dir, store)
    }

    fn log(store: &dyn Backend) -> Vec<Logged> {
        store.disclosures("ana", 0, 1000).unwrap()
    }

    fn search(types: Option<Vec<RecordType>>, limit: usize) -> Search {
        Search {
            person_id: "ana".into(),
            types,
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            resume: None,
            limit,
        }
    }

    /// Every page of `q`, following `next`.
    fn pages(store: &dyn Backend, who: &Principal, mut q: Search) -> Vec<SearchPage> {
        let mut out = Vec::new();
        loop {
            let page = search_records(store, who, &q, Utc::now()).unwrap();
            let next = page.next.clone();
            out.push(page);
            match next {
                Some(r) => q.resume = Some(r),
                None => return out,
            }
        }
    }

    #[test]
    fn search_pages_across_types_without_repeats_gaps_or_empty_pages() {
        let (_dir, store) = store();
        let acme = principal("acme", "system/Observation.rs");
        for limit in 1..=6 {
            let before = log(&store).len();
            let pages = pages(&store, &acme, search(None, limit));
            assert_eq!(pages.len(), 5_usize.div_ceil(limit), "limit {limit}");
            let got: Vec<(RecordType, String)> = pages
                .iter()
                .flat_map(|p| p.records.iter().map(|(t, r)| (*t, r.json.clone())))
                .collect();
            assert_eq!(got.len(), 5, "limit {limit}");
            // A set: a record repeated on any later page, adjacent or not, shrinks it.
            let unique: std::collections::HashSet<&(RecordType, String)> = got.iter().collect();
            assert_eq!(unique.len(), 5, "limit {limit}: a record came twice");
            // Steps first, then heart rate; sleep is not consented.
            let kinds: Vec<RecordType> = got.iter().map(|(t, _)| *t).collect();
            assert_eq!(kinds[..3], [RecordType::StepCount; 3]);
            assert_eq!(kinds[3..], [RecordType::HeartRate; 2]);
            assert!(pages.iter().all(|p| !p.records.is_empty()));
            // One disclosure entry per page, counting what it held.
            let entries = log(&store);
            assert_eq!(entries.len() - before, pages.len());
            for (e, p) in entries[before..].iter().zip(&pages) {
                assert_eq!(e.entry.outcome, Outcome::Disclosed);
                assert_eq!(e.entry.records, p.records.len() as u64);
                assert_eq!(e.entry.data_types, ["step-count", "heart-rate"]);
                assert_eq!(e.entry.purpose, "wellness");
            }
        }
    }

    #[test]
    fn search_refusals_scope_narrowing_and_the_owner() {
        let (_dir, store) = store();
        let acme = principal("acme", "system/Observation.rs");
        let err = search_records(
            &store,
            &acme,
            &search(Some(vec![RecordType::SleepEpisode]), 10),
            Utc::now(),
        )
        .unwrap_err();
        assert!(matches!(err, AccessError::NotFound), "{err:?}");
        let last = log(&store).pop().unwrap();
        assert_eq!(last.entry.outcome, Outcome::Denied);
        // Someone without consent: 404, logged.
        let other = principal("globex", "system/Observation.rs");
        let err = search_records(&store, &other, &search(None, 10), Utc::now()).unwrap_err();
        assert!(matches!(err, AccessError::NotFound));
        // A token narrowed to heart rate sees heart rate only, and is refused steps by scope.
        let narrow = principal("acme", "system/Observation.rs?code=http://loinc.org|8867-4");
        let page = search_records(&store, &narrow, &search(None, 10), Utc::now()).unwrap();
        assert!(page
            .records
            .iter()
            .all(|(t, _)| *t == RecordType::HeartRate));
        assert_eq!(page.records.len(), 2);
        let err = search_records(
            &store,
            &narrow,
            &search(Some(vec![RecordType::StepCount]), 10),
            Utc::now(),
        )
        .unwrap_err();
        assert!(matches!(err, AccessError::Forbidden));
        // The owner reads everything and is not logged.
        let before = log(&store).len();
        let ana = principal("ana", "patient/Observation.rs");
        let all: usize = pages(&store, &ana, search(None, 3))
            .iter()
            .map(|p| p.records.len())
            .sum();
        assert_eq!(all, 7);
        assert_eq!(log(&store).len(), before);
    }

    #[test]
    fn daily_summary_counts_local_days_and_respects_consent() {
        let (_dir, store) = store();
        let day = |s: &str| s.parse::<NaiveDate>().unwrap();
        let q = |types| DailyQuery {
            person_id: "ana".into(),
            types,
            from: day("2026-06-01"),
            to: day("2026-06-03"),
        };
        let ana = principal("ana", "patient/Observation.rs");
        let s = read_daily_summary(&store, &ana, &q(None), Utc::now()).unwrap();
        assert_eq!(s.time_zone.name, "Asia/Tokyo");
        let dates: Vec<String> = s.days.iter().map(|d| d.date.to_string()).collect();
        assert_eq!(dates, ["2026-06-01", "2026-06-03"], "the 2nd has neither");
        let first = &s.days[0];
        // 23:59 counts towards the day it starts in.
        assert_eq!(first.steps.unwrap().total, 30);
        // The night of May 31st counts towards June 1st, the day it ends.
        let night = first.sleep.unwrap();
        assert_eq!(night.episodes, 1);
        assert_eq!(night.total_minutes, Some(360.0));
        assert_eq!(night.in_bed_minutes, 390.0);
        assert_eq!(night.efficiency_percent, Some(92.3));
        let stages = night.stages.unwrap();
        assert_eq!(
            (stages.awake, stages.light, stages.deep, stages.rem),
            (30.0, 240.0, 120.0, 0.0)
        );
        assert_eq!(first.start.to_rfc3339(), "2026-06-01T00:00:00+09:00");
        let third = &s.days[1];
        assert_eq!(third.steps.unwrap().total, 40);
        assert_eq!(third.sleep.unwrap().episodes, 1);
        assert_eq!(s.records, 3 + 2);

        // Acme: steps only (sleep is not consented), one disclosure entry.
        let acme = principal("acme", "system/Observation.rs");
        let before = log(&store).len();
        let s = read_daily_summary(&store, &acme, &q(None), Utc::now()).unwrap();
        assert_eq!(s.types, [RecordType::StepCount]);
        assert!(!s.days.is_empty());
        assert!(s.days.iter().all(|d| d.sleep.is_none()));
        assert_eq!(log(&store).len(), before + 1);
        let err = read_daily_summary(
            &store,
            &acme,
            &q(Some(vec![RecordType::SleepEpisode])),
            Utc::now(),
        )
        .unwrap_err();
        assert!(matches!(err, AccessError::NotFound));
        assert_eq!(log(&store).len(), before + 2);
    }
}
