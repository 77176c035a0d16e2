//! What a store backend provides: [`Registry`], [`Accounts`], [`SeriesStore`] and
//! [`ChangeFeed`], together a [`Backend`]. The gateway holds its store as
//! `Arc<dyn Backend>`; the SQLite [`Store`] is the embedded one, and `conformance`
//! is the suite every backend must pass.
//!
//! Each method's contract is written on the SQLite backend's method of the same name (for
//! example [`Store::ingest`]): that is where it was first written and where the tests that
//! pin it live. The traits are declared from one list below, which also writes the SQLite
//! backend's implementation (a call to its inherent method), so a method cannot be added to
//! one and forgotten in the other.
//!
//! Methods take `&self` and block: callers on an async runtime run them on a blocking
//! thread (`spawn_blocking`, actix's `web::block`).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use ed25519_dalek::VerifyingKey;
use uuid::Uuid;

use phr_schema::{Ack, NearbyReport, PairingReport, Record, RecordType};

use crate::audit::{Entry, Logged, Verification};
use crate::changes::FeedPage;
use crate::clients::{Client, ClientSecret, NewClient};
use crate::corrections::{Correction, QuarantineSummary, Range, Refusal as CorrectionRefusal};
use crate::export::ImportReport;
use crate::ingest::Checked;
use crate::nearby::{NearbyView, Recorded};
use crate::pairing::{BindingInterval, Pairing, Refusal, StartRefusal};
use crate::pairing_view::PairingSummary;
use crate::rollup::{Episode, RestingHeartRate};
use crate::sessions::{NewSession, OidcPending, PendingSignIn, Role, Session, SignInOutcome};
use crate::source_view::SourcesView;
use crate::sources::{MergedDay, Ranking, SlotRow};
use crate::subjects::{DailySummary, DayWindow, Subject};
use crate::{
    Consent, Erasure, GranteeKind, Page, PageKey, RefusedBatch, RefusedCount, Result, Store,
    StoredRecord, Terms,
};

/// Declares each trait, implements it for the SQLite [`Store`] by calling the inherent
/// method of the same name, and for `Arc` of any implementation.
macro_rules! backend_traits {
    ($(
        $(#[$doc:meta])*
        trait $name:ident {
            $( fn $f:ident(&self $(, $a:ident: $t:ty)* $(,)?) -> $r:ty; )*
        }
    )*) => {$(
        $(#[$doc])*
        pub trait $name: Send + Sync {
            $( fn $f(&self $(, $a: $t)*) -> $r; )*
        }

        impl $name for Store {
            $( fn $f(&self $(, $a: $t)*) -> $r { Store::$f(self $(, $a)*) } )*
        }

        /// A shared backend is one (so `&Arc<dyn Backend>` passes where `&dyn Backend` is
        /// asked for).
        impl<B: $name + ?Sized> $name for std::sync::Arc<B> {
            $( fn $f(&self $(, $a: $t)*) -> $r { (**self).$f($($a),*) } )*
        }
    )*};
}

backend_traits! {
    /// Who is who and who may have what: people, bridges and their keys, devices, bindings
    /// and pairing, consents, the device ranking, and the disclosure log.
    trait Registry {
        fn add_person(&self, person_id: &str, display_name: &str, time_zone: &str) -> Result<()>;
        fn ensure_person(&self, person_id: &str) -> Result<()>;
        fn set_default_time_zone(&self, zone: &str) -> Result<()>;
        fn person_time_zone(&self, person_id: &str) -> Result<Option<String>>;
        fn display_name(&self, person_id: &str) -> Result<Option<String>>;
        fn bridge_public_key(&self, bridge_id: &str) -> Result<Option<VerifyingKey>>;
        fn register_bridge_key(&self, bridge_id: &str, public_key_hex: &str) -> Result<()>;
        fn revoke_bridge(&self, bridge_id: &str) -> Result<bool>;
        fn add_device(&self, device_id: &str, bridge_id: &str, model: Option<&str>) -> Result<()>;
        fn bind(&self, device_id: &str, person_id: &str, from: DateTime<Utc>) -> Result<()>;
        fn bindings_of(&self, person_id: &str) -> Result<Vec<BindingInterval>>;
        fn count_refused(&self, refused: &[(String, RefusedBatch)], now: DateTime<Utc>) -> Result<()>;
        fn refused_batches(&self, since: DateTime<Utc>, limit: usize) -> Result<Vec<RefusedCount>>;
        fn start_pairing(&self, person_id: &str, bridge_id: &str, device_id: &str, pairing_id: Uuid, code: &str, now: DateTime<Utc>) -> Result<std::result::Result<Pairing, StartRefusal>>;
        fn report_pairing(&self, pairing_id: Uuid, bridge_id: &str, report: &PairingReport) -> Result<bool>;
        fn confirm_pairing(&self, person_id: &str, pairing_id: Uuid, code: &str, serial: Option<&str>, now: DateTime<Utc>) -> Result<std::result::Result<Pairing, Refusal>>;
        fn pairing(&self, person_id: &str, pairing_id: Uuid) -> Result<Option<Pairing>>;
        fn pairing_summary(&self, person_id: &str, pairing_id: uuid::Uuid) -> Result<Option<PairingSummary>>;
        fn recent_pairings(&self, person_id: &str, limit: usize) -> Result<Vec<PairingSummary>>;
        fn bridges_used_by(&self, person_id: &str) -> Result<Vec<String>>;
        fn release_binding(&self, person_id: &str, device_id: &str, now: DateTime<Utc>) -> Result<bool>;
        fn operator_release(&self, device_id: &str, operator: &str, why: &str, now: DateTime<Utc>) -> Result<Option<String>>;
        fn record_nearby(&self, bridge_id: &str, report: &NearbyReport, now: DateTime<Utc>) -> Result<Recorded>;
        fn nearby_for_owner(&self, person_id: &str, bridge_id: &str, now: DateTime<Utc>) -> Result<Option<NearbyView>>;
        fn grant_consent(&self, person_id: &str, terms: Terms, by: &str, now: DateTime<Utc>) -> Result<Consent>;
        fn withdraw_consent(&self, person_id: &str, consent_id: Uuid, by: &str, now: DateTime<Utc>) -> Result<Option<Consent>>;
        fn consents(&self, person_id: &str, now: DateTime<Utc>) -> Result<Vec<Consent>>;
        fn consents_in_force(&self, person_id: &str, grantee: &str, kind: GranteeKind, now: DateTime<Utc>) -> Result<Vec<Consent>>;
        fn consent_event_count(&self, person_id: &str) -> Result<u64>;
        fn grant_storage_consent(&self, person_id: &str, types: &[RecordType]) -> Result<Consent>;
        fn withdraw_storage_consent(&self, person_id: &str) -> Result<()>;
        fn subjects(&self, grantee: &str, kind: GranteeKind, now: DateTime<Utc>) -> Result<Vec<Subject>>;
        fn ranking(&self, person_id: &str, record_type: RecordType) -> Result<Ranking>;
        fn source_order(&self, person_id: &str, record_type: RecordType) -> Result<Vec<String>>;
        fn sources_of(&self, person_id: &str) -> Result<Vec<String>>;
        fn set_source_order(&self, person_id: &str, record_type: RecordType, devices: &[String], now: DateTime<Utc>) -> Result<()>;
        fn log_disclosure(&self, e: &Entry) -> Result<Logged>;
        fn disclosures(&self, person_id: &str, after_seq: i64, limit: usize) -> Result<Vec<Logged>>;
        fn verify_audit(&self) -> Result<Verification>;
        fn log_export(&self, person_id: &str, count: u64, now: DateTime<Utc>) -> Result<()>;
    }

    /// Dashboard sign-in (one-time codes, OIDC state, sessions) and OAuth clients with the
    /// `jti`s of the assertions they used.
    trait Accounts {
        fn issue_signin_code(&self, subject: &str, role: Role, ttl: TimeDelta, now: DateTime<Utc>) -> Result<String>;
        fn redeem_signin_code(&self, code: &str, session_ttl: TimeDelta, now: DateTime<Utc>) -> Result<Option<NewSession>>;
        fn begin_signin(&self, code: &str, ttl: TimeDelta, now: DateTime<Utc>) -> Result<Option<PendingSignIn>>;
        fn complete_signin(&self, code: &str, nonce: &str, form_token: &str, session_ttl: TimeDelta, now: DateTime<Utc>) -> Result<SignInOutcome>;
        fn open_sessions_of(&self, subject: &str, now: DateTime<Utc>) -> Result<usize>;
        fn session(&self, id: &str, now: DateTime<Utc>) -> Result<Option<Session>>;
        fn end_session(&self, id: &str, now: DateTime<Utc>) -> Result<bool>;
        fn begin_oidc_signin(&self, provider: &str, role: Role, redirect_uri: &str, ttl: TimeDelta, now: DateTime<Utc>) -> Result<Option<OidcPending>>;
        fn take_oidc_signin(&self, id: &str, now: DateTime<Utc>) -> Result<Option<OidcPending>>;
        fn open_session(&self, subject: &str, role: Role, session_ttl: TimeDelta, now: DateTime<Utc>) -> Result<NewSession>;
        fn end_sessions_of(&self, subject: &str, now: DateTime<Utc>) -> Result<usize>;
        fn add_client(&self, c: &NewClient) -> Result<Option<ClientSecret>>;
        fn client(&self, client_id: &str) -> Result<Option<Client>>;
        fn list_clients(&self) -> Result<Vec<Client>>;
        fn rotate_client_secret(&self, client_id: &str) -> Result<Option<ClientSecret>>;
        fn disable_client(&self, client_id: &str, now: DateTime<Utc>) -> Result<bool>;
        fn remember_jti(&self, client_id: &str, jti: &str, expires_at: DateTime<Utc>, now: DateTime<Utc>) -> Result<bool>;
    }

    /// The series: the ingest transaction (attribution, consent, series write and change-feed
    /// entry commit together), reads, daily aggregates, corrections, erasure, export and
    /// import.
    trait SeriesStore {
        fn set_hold_without_consent_days(&self, days: u32) -> ();
        fn ingest(&self, checked: Vec<Checked>, now: DateTime<Utc>) -> Result<Vec<Ack>>;
        fn records(&self, person_id: &str, record_type: RecordType, from_ms: i64, to_ms: i64, after: Option<&PageKey>, limit: usize) -> Result<Page>;
        fn export_records(&self, person_id: &str, now: DateTime<Utc>, each: &mut dyn FnMut(StoredRecord) -> Result<()>) -> Result<u64>;
        fn import_records(&self, person_id: &str, records: &[Record], now: DateTime<Utc>) -> Result<ImportReport>;
        fn erase_person(&self, person_id: &str, by: &str, now: DateTime<Utc>) -> Result<Erasure>;
        fn reattribute(&self, range: &Range, from_person: &str, to_person: &str, why: &str, by: &str, now: DateTime<Utc>) -> Result<Correction>;
        fn unlink(&self, range: &Range, person: &str, why: &str, by: &str, now: DateTime<Utc>) -> Result<Correction>;
        fn unlink_own(&self, range: &Range, person: &str, why: &str, now: DateTime<Utc>) -> Result<std::result::Result<Correction, CorrectionRefusal>>;
        fn quarantine_of(&self, person: &str) -> Result<Vec<QuarantineSummary>>;
        fn confirm_quarantine(&self, range: &Range, person: &str, why: &str, now: DateTime<Utc>) -> Result<std::result::Result<Correction, CorrectionRefusal>>;
        fn expire_held(&self, now: DateTime<Utc>) -> Result<usize>;
        fn corrections_of(&self, person: &str) -> Result<Vec<serde_json::Value>>;
        fn daily_steps(&self, person_id: &str, days: &[DayWindow], summary: &mut DailySummary) -> Result<u64>;
        fn daily_sleep(&self, person_id: &str, days: &[DayWindow], window: (i64, i64), summary: &mut DailySummary) -> Result<u64>;
        fn sleep_episodes(&self, person_id: &str, days: &[DayWindow], window: (i64, i64), tz: Tz) -> Result<Vec<Episode>>;
        fn daily_resting_heart_rate(&self, person_id: &str, days: &[DayWindow]) -> Result<(Vec<RestingHeartRate>, u64)>;
        fn last_stored(&self, person_id: &str, record_type: RecordType, from_ms: i64, to_ms: i64) -> Result<Option<DateTime<Utc>>>;
        fn slot_rows(&self, person_id: &str, record_type: RecordType, days: &[DayWindow]) -> Result<BTreeMap<usize, Vec<SlotRow>>>;
        fn merged_days(&self, person_id: &str, record_type: RecordType, days: &[DayWindow]) -> Result<BTreeMap<usize, MergedDay>>;
        fn sources_view(&self, person_id: &str, types: &[RecordType], now: DateTime<Utc>) -> Result<SourcesView>;
        fn counts(&self) -> Result<(u64, u64)>;
        fn row_counts(&self) -> (u64, u64);
        fn accesses(&self) -> u64;
    }

    /// The sync feed: the changes a reader may see, in commit order, by the rules of
    /// [`crate::visibility`].
    trait ChangeFeed {
        fn feed(&self, grantee: &str, kind: GranteeKind, types: Option<&[RecordType]>, after: i64, limit: usize, now: DateTime<Utc>) -> Result<FeedPage>;
        fn page_time_budget(&self) -> Duration;
        fn set_page_time_budget(&self, budget: Duration) -> ();
    }
}

/// A whole backend: what the gateway holds.
pub trait Backend: Registry + Accounts + SeriesStore + ChangeFeed + std::fmt::Debug {}

impl<T: Registry + Accounts + SeriesStore + ChangeFeed + std::fmt::Debug> Backend for T {}
