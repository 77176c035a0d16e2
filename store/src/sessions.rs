//! Dashboard sign-in: one-time sign-in codes and web sessions.
//!
//! A sign-in code is handed out of band (`phr-gateway dashboard link`, the demo) as part of a
//! link. Opening the link does not sign in (a link someone else made must not sign a
//! browser into *their* account: login CSRF). It starts a sign-in bound to that browser
//! ([`Store::begin_signin`]: a random nonce for a pre-sign-in cookie and a form token, one
//! pending sign-in per code, the latest wins); only the confirmation that carries the code,
//! that nonce and that token exchanges the code for a session, once
//! ([`Store::complete_signin`]). A session is what the browser's cookie names; it carries
//! the CSRF token of the session's forms.
//!
//! Neither a code nor a session id is stored: only their SHA-256 (hex), so a copy of the
//! SQLite file does not sign anyone in. Both are 32 random bytes from the OS, base64url.
//! The CSRF token is stored as it is (pages must print it into forms); it is worthless
//! without the session cookie.
//!
//! Rows past their expiry are deleted whenever a code is issued or redeemed or a session
//! ended, so the tables hold only what may still be used (plus ended sessions until their
//! expiry).

use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::{params, OptionalExtension, Transaction};
use sha2::{Digest, Sha256};

use super::Store;
use crate::secret::same_secret;
use crate::{Error, Result};

/// Who is looking, from their session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees the patients who consented to them (grantee kind practitioner).
    Clinician,
    /// Sees their own data.
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Clinician => "clinician",
            Role::Owner => "owner",
        }
    }
}

/// An open session: who holds it, in which role (the dashboards' `Viewer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub subject: String,
    pub role: Role,
    /// The session's CSRF token; every state-changing form carries it.
    pub csrf: String,
}

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS signin_codes (
    code_hash TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('clinician', 'owner')),
    expires_at_ms INTEGER NOT NULL,
    used_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS signin_codes_by_expiry ON signin_codes(expires_at_ms);
-- A sign-in link opened in a browser and not confirmed yet: the hash of the nonce that
-- browser's pre-sign-in cookie holds, and the token its confirmation form carries.
CREATE TABLE IF NOT EXISTS signin_pending (
    code_hash TEXT PRIMARY KEY,
    nonce_hash TEXT NOT NULL,
    form_token TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS signin_pending_by_expiry ON signin_pending(expires_at_ms);
CREATE TABLE IF NOT EXISTS web_sessions (
    id_hash TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('clinician', 'owner')),
    csrf TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    ended_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS web_sessions_by_expiry ON web_sessions(expires_at_ms);
CREATE INDEX IF NOT EXISTS web_sessions_by_subject ON web_sessions(subject);
-- A sign-in at an OpenID provider under way: the hash of the id the browser's `phr_oidc`
-- cookie holds, and what the callback must find (state, nonce, PKCE verifier). One use.
CREATE TABLE IF NOT EXISTS oidc_pending (
    id_hash TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('clinician', 'owner')),
    state TEXT NOT NULL,
    nonce TEXT NOT NULL,
    verifier TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS oidc_pending_by_expiry ON oidc_pending(expires_at_ms);
";

/// Sign-ins at identity providers that may be under way at once; more are refused until
/// some finish or lapse, so an unauthenticated flood costs a bounded table.
pub const MAX_OIDC_PENDING: i64 = 10_000;

/// A sign-in at an OpenID provider, as started: what the browser keeps (`id`, in the
/// `phr_oidc` cookie) and what goes to the provider (`state`, `nonce`, the challenge of
/// `verifier`).
#[derive(Clone, PartialEq, Eq)]
pub struct OidcPending {
    pub id: String,
    pub provider: String,
    pub role: Role,
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    pub redirect_uri: String,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for OidcPending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcPending")
            .field("provider", &self.provider)
            .field("role", &self.role)
            .field("redirect_uri", &self.redirect_uri)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Longer inputs are not codes or session ids this store handed out (those are 43
/// characters); they are refused before hashing.
const MAX_SECRET_LEN: usize = 128;

/// A session just opened by redeeming a sign-in code. `id` goes into the cookie and nowhere
/// else (it is not stored here, only its hash).
#[derive(Clone, PartialEq, Eq)]
pub struct NewSession {
    pub id: String,
    pub subject: String,
    pub role: Role,
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for NewSession {
    // Never print the secrets (logs, panics).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSession")
            .field("id", &"<redacted>")
            .field("subject", &self.subject)
            .field("role", &self.role)
            .field("csrf", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl NewSession {
    /// The session as handlers see it.
    pub fn session(&self) -> Session {
        Session {
            subject: self.subject.clone(),
            role: self.role,
            csrf: self.csrf.clone(),
        }
    }
}

/// A sign-in link just opened: what the confirmation page shows and the browser keeps.
/// `nonce` goes into the pre-sign-in cookie and nowhere else (only its hash is stored).
#[derive(Clone, PartialEq, Eq)]
pub struct PendingSignIn {
    pub nonce: String,
    /// The token the confirmation form carries.
    pub form_token: String,
    /// Whom the code signs in, and as what: shown to the person before they agree.
    pub subject: String,
    pub role: Role,
    /// When the pending sign-in (and so the pre-sign-in cookie) lapses.
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for PendingSignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSignIn")
            .field("nonce", &"<redacted>")
            .field("form_token", &"<redacted>")
            .field("subject", &self.subject)
            .field("role", &self.role)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What confirming a sign-in came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInOutcome {
    /// Signed in: the code is used up.
    SignedIn(NewSession),
    /// The code is unknown, used or expired.
    InvalidCode,
    /// The code is good but this sign-in was not started in this browser (no or another
    /// pre-sign-in nonce, or another form token): nothing changed, the code is still usable
    /// by the browser that opened the link.
    NotThisBrowser,
}

/// 32 random bytes from the OS, base64url without padding (43 characters).
fn random_secret() -> String {
    crate::secret::random_token()
}

/// SHA-256 of `secret`, hex.
fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn role_from_db(s: &str) -> rusqlite::Result<Role> {
    match s {
        "clinician" => Ok(Role::Clinician),
        "owner" => Ok(Role::Owner),
        _ => Err(rusqlite::Error::InvalidColumnType(
            0,
            "role".into(),
            rusqlite::types::Type::Text,
        )),
    }
}

/// Deletes codes and sessions that can no longer be used.
fn purge(tx: &Transaction<'_>, now_ms: i64) -> Result<()> {
    tx.prepare_cached("DELETE FROM signin_codes WHERE expires_at_ms <= ?1")?
        .execute([now_ms])?;
    tx.prepare_cached("DELETE FROM web_sessions WHERE expires_at_ms <= ?1")?
        .execute([now_ms])?;
    tx.prepare_cached("DELETE FROM signin_pending WHERE expires_at_ms <= ?1")?
        .execute([now_ms])?;
    tx.prepare_cached("DELETE FROM oidc_pending WHERE expires_at_ms <= ?1")?
        .execute([now_ms])?;
    Ok(())
}

/// The subject, role and expiry of an unused, unexpired code.
fn usable_code(
    tx: &Transaction<'_>,
    code_hash: &str,
    now_ms: i64,
) -> Result<Option<(String, Role, i64)>> {
    Ok(tx
        .prepare_cached(
            "SELECT subject, role, expires_at_ms FROM signin_codes
              WHERE code_hash = ?1 AND used_at_ms IS NULL AND expires_at_ms > ?2",
        )?
        .query_row(params![code_hash, now_ms], |r| {
            Ok((
                r.get::<_, String>(0)?,
                role_from_db(&r.get::<_, String>(1)?)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .optional()?)
}

/// Marks the code used and opens its session, in the caller's transaction; `None` when the
/// code is not usable (any more).
fn redeem(
    tx: &Transaction<'_>,
    code_hash: &str,
    session_ttl: TimeDelta,
    now: DateTime<Utc>,
) -> Result<Option<NewSession>> {
    let now_ms = now.timestamp_millis();
    let Some((subject, role, _)) = usable_code(tx, code_hash, now_ms)? else {
        return Ok(None);
    };
    let marked = tx
        .prepare_cached(
            "UPDATE signin_codes SET used_at_ms = ?2
              WHERE code_hash = ?1 AND used_at_ms IS NULL",
        )?
        .execute(params![code_hash, now_ms])?;
    if marked != 1 {
        return Ok(None);
    }
    tx.prepare_cached("DELETE FROM signin_pending WHERE code_hash = ?1")?
        .execute([code_hash])?;
    insert_session(tx, subject, role, session_ttl, now).map(Some)
}

/// Opens a session for `subject` as `role` in the caller's transaction.
fn insert_session(
    tx: &Transaction<'_>,
    subject: String,
    role: Role,
    session_ttl: TimeDelta,
    now: DateTime<Utc>,
) -> Result<NewSession> {
    let now_ms = now.timestamp_millis();
    let session = NewSession {
        id: random_secret(),
        subject,
        role,
        csrf: random_secret(),
        expires_at: now + session_ttl,
    };
    tx.prepare_cached(
        "INSERT INTO web_sessions
             (id_hash, subject, role, csrf, created_at_ms, expires_at_ms, ended_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)",
    )?
    .execute(params![
        hash(&session.id),
        session.subject,
        session.role.as_str(),
        session.csrf,
        now_ms,
        session.expires_at.timestamp_millis(),
    ])?;
    Ok(session)
}

impl Store {
    /// A new one-time sign-in code for `subject` acting as `role`, usable until `now + ttl`.
    /// Only its hash is kept; the code itself is returned once, here.
    pub fn issue_signin_code(
        &self,
        subject: &str,
        role: Role,
        ttl: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<String> {
        if !phr_schema::envelope::is_valid_id(subject) {
            return Err(Error::Invalid(
                "a subject is 1-64 characters of A-Z a-z 0-9 . _ : -",
            ));
        }
        if ttl <= TimeDelta::zero() {
            return Err(Error::Invalid("a sign-in code must live a while"));
        }
        let code = random_secret();
        let (now_ms, expires_ms) = (now.timestamp_millis(), (now + ttl).timestamp_millis());
        self.write(|tx| {
            purge(tx, now_ms)?;
            tx.prepare_cached(
                "INSERT INTO signin_codes (code_hash, subject, role, expires_at_ms, used_at_ms)
                 VALUES (?1, ?2, ?3, ?4, NULL)",
            )?
            .execute(params![hash(&code), subject, role.as_str(), expires_ms])?;
            Ok(())
        })?;
        Ok(code)
    }

    /// Exchanges a sign-in code for a new session lasting `session_ttl`, without the
    /// browser binding of [`Store::complete_signin`] (which the dashboards use; this is for
    /// tools and tests). The code is marked used in the same transaction, so it opens at
    /// most one session. An unknown, used or
    /// expired code is `None` (all alike).
    pub fn redeem_signin_code(
        &self,
        code: &str,
        session_ttl: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<Option<NewSession>> {
        if code.is_empty() || code.len() > MAX_SECRET_LEN || session_ttl <= TimeDelta::zero() {
            return Ok(None);
        }
        let now_ms = now.timestamp_millis();
        let code_hash = hash(code);
        self.write(|tx| {
            let session = redeem(tx, &code_hash, session_ttl, now)?;
            purge(tx, now_ms)?;
            Ok(session)
        })
    }

    /// Starts signing in with `code` in one browser, without using the code up: returns
    /// whom the code is for and a fresh nonce (for that browser's pre-sign-in cookie) and
    /// form token, valid for `ttl` or until the code expires, whichever is sooner. Only the
    /// latest start per code counts (a code has one pending sign-in). An unknown, used or
    /// expired code is `None`, and stores nothing.
    pub fn begin_signin(
        &self,
        code: &str,
        ttl: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<Option<PendingSignIn>> {
        if code.is_empty() || code.len() > MAX_SECRET_LEN || ttl <= TimeDelta::zero() {
            return Ok(None);
        }
        let now_ms = now.timestamp_millis();
        let code_hash = hash(code);
        self.write(|tx| {
            let Some((subject, role, code_expires_ms)) = usable_code(tx, &code_hash, now_ms)?
            else {
                return Ok(None);
            };
            let expires_ms = code_expires_ms.min((now + ttl).timestamp_millis());
            let pending = PendingSignIn {
                nonce: random_secret(),
                form_token: random_secret(),
                subject,
                role,
                expires_at: DateTime::from_timestamp_millis(expires_ms).unwrap_or(now + ttl),
            };
            tx.prepare_cached(
                "INSERT INTO signin_pending (code_hash, nonce_hash, form_token, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (code_hash) DO UPDATE SET nonce_hash = excluded.nonce_hash,
                     form_token = excluded.form_token, expires_at_ms = excluded.expires_at_ms",
            )?
            .execute(params![
                code_hash,
                hash(&pending.nonce),
                pending.form_token,
                expires_ms
            ])?;
            purge(tx, now_ms)?;
            Ok(Some(pending))
        })
    }

    /// Completes a sign-in started by [`Store::begin_signin`]: with the code, the nonce of
    /// the browser's pre-sign-in cookie and the form token, all three matching the code's
    /// pending sign-in, the code is used up for a new session lasting `session_ttl`.
    /// Anything else changes nothing (the code stays usable by the right browser).
    pub fn complete_signin(
        &self,
        code: &str,
        nonce: &str,
        form_token: &str,
        session_ttl: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<SignInOutcome> {
        if code.is_empty() || code.len() > MAX_SECRET_LEN || session_ttl <= TimeDelta::zero() {
            return Ok(SignInOutcome::InvalidCode);
        }
        if nonce.is_empty() || nonce.len() > MAX_SECRET_LEN || form_token.len() > MAX_SECRET_LEN {
            return Ok(SignInOutcome::NotThisBrowser);
        }
        let now_ms = now.timestamp_millis();
        let code_hash = hash(code);
        self.write(|tx| {
            if usable_code(tx, &code_hash, now_ms)?.is_none() {
                return Ok(SignInOutcome::InvalidCode);
            }
            let pending = tx
                .prepare_cached(
                    "SELECT nonce_hash, form_token FROM signin_pending
                      WHERE code_hash = ?1 AND expires_at_ms > ?2",
                )?
                .query_row(params![code_hash, now_ms], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .optional()?;
            let bound = pending.is_some_and(|(nonce_hash, token)| {
                // Both compared in full, whatever the first says.
                same_secret(&nonce_hash, hash(nonce)) & same_secret(&token, form_token)
            });
            if !bound {
                return Ok(SignInOutcome::NotThisBrowser);
            }
            let outcome = match redeem(tx, &code_hash, session_ttl, now)? {
                Some(session) => SignInOutcome::SignedIn(session),
                None => SignInOutcome::InvalidCode,
            };
            purge(tx, now_ms)?;
            Ok(outcome)
        })
    }

    /// How many sessions of `subject` are open (neither expired nor ended) at `now`.
    pub fn open_sessions_of(&self, subject: &str, now: DateTime<Utc>) -> Result<usize> {
        self.read(|conn| {
            let n: i64 = conn
                .prepare_cached(
                    "SELECT count(*) FROM web_sessions
                      WHERE subject = ?1 AND ended_at_ms IS NULL AND expires_at_ms > ?2",
                )?
                .query_row(params![subject, now.timestamp_millis()], |r| r.get(0))?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
    }

    /// The signed-in person of session `id`, if it has neither expired nor ended at `now`.
    pub fn session(&self, id: &str, now: DateTime<Utc>) -> Result<Option<Session>> {
        if id.is_empty() || id.len() > MAX_SECRET_LEN {
            return Ok(None);
        }
        let id_hash = hash(id);
        self.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT subject, role, csrf FROM web_sessions
                      WHERE id_hash = ?1 AND ended_at_ms IS NULL AND expires_at_ms > ?2",
                )?
                .query_row(params![id_hash, now.timestamp_millis()], |r| {
                    Ok(Session {
                        subject: r.get(0)?,
                        role: role_from_db(&r.get::<_, String>(1)?)?,
                        csrf: r.get(2)?,
                    })
                })
                .optional()?)
        })
    }

    /// Ends session `id` (sign-out). `false` when there was no such session in use.
    pub fn end_session(&self, id: &str, now: DateTime<Utc>) -> Result<bool> {
        if id.is_empty() || id.len() > MAX_SECRET_LEN {
            return Ok(false);
        }
        let now_ms = now.timestamp_millis();
        let id_hash = hash(id);
        self.write(|tx| {
            let ended = tx
                .prepare_cached(
                    "UPDATE web_sessions SET ended_at_ms = ?2
                      WHERE id_hash = ?1 AND ended_at_ms IS NULL AND expires_at_ms > ?2",
                )?
                .execute(params![id_hash, now_ms])?;
            purge(tx, now_ms)?;
            Ok(ended == 1)
        })
    }

    /// Starts a sign-in at identity provider `provider` for `role`, lapsing at `now + ttl`:
    /// fresh `state`, `nonce`, PKCE verifier and cookie id. `None` when
    /// [`MAX_OIDC_PENDING`] sign-ins are under way already.
    pub fn begin_oidc_signin(
        &self,
        provider: &str,
        role: Role,
        redirect_uri: &str,
        ttl: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<Option<OidcPending>> {
        let now_ms = now.timestamp_millis();
        let pending = OidcPending {
            id: random_secret(),
            provider: provider.to_owned(),
            role,
            state: random_secret(),
            nonce: random_secret(),
            verifier: random_secret(),
            redirect_uri: redirect_uri.to_owned(),
            expires_at: now + ttl,
        };
        self.write(|tx| {
            tx.prepare_cached("DELETE FROM oidc_pending WHERE expires_at_ms <= ?1")?
                .execute([now_ms])?;
            let open: i64 = tx
                .prepare_cached("SELECT count(*) FROM oidc_pending")?
                .query_row([], |r| r.get(0))?;
            if open >= MAX_OIDC_PENDING {
                return Ok(None);
            }
            tx.prepare_cached(
                "INSERT INTO oidc_pending
                     (id_hash, provider, role, state, nonce, verifier, redirect_uri, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                hash(&pending.id),
                pending.provider,
                pending.role.as_str(),
                pending.state,
                pending.nonce,
                pending.verifier,
                pending.redirect_uri,
                pending.expires_at.timestamp_millis(),
            ])?;
            Ok(Some(pending.clone()))
        })
    }

    /// The unexpired sign-in whose cookie holds `id`, removed whatever comes of it: a
    /// callback is answered once (a replayed one finds nothing).
    pub fn take_oidc_signin(&self, id: &str, now: DateTime<Utc>) -> Result<Option<OidcPending>> {
        if id.is_empty() || id.len() > MAX_SECRET_LEN {
            return Ok(None);
        }
        let now_ms = now.timestamp_millis();
        let id_hash = hash(id);
        self.write(|tx| {
            let found = tx
                .prepare_cached(
                    "SELECT provider, role, state, nonce, verifier, redirect_uri, expires_at_ms
                       FROM oidc_pending WHERE id_hash = ?1 AND expires_at_ms > ?2",
                )?
                .query_row(params![id_hash, now_ms], |r| {
                    Ok(OidcPending {
                        id: id.to_owned(),
                        provider: r.get(0)?,
                        role: role_from_db(&r.get::<_, String>(1)?)?,
                        state: r.get(2)?,
                        nonce: r.get(3)?,
                        verifier: r.get(4)?,
                        redirect_uri: r.get(5)?,
                        expires_at: DateTime::from_timestamp_millis(r.get(6)?).unwrap_or(now),
                    })
                })
                .optional()?;
            tx.prepare_cached("DELETE FROM oidc_pending WHERE id_hash = ?1")?
                .execute([&id_hash])?;
            Ok(found)
        })
    }

    /// Opens a session for `subject` as `role` (a sign-in an identity provider vouched for).
    pub fn open_session(
        &self,
        subject: &str,
        role: Role,
        session_ttl: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<NewSession> {
        let now_ms = now.timestamp_millis();
        self.write(|tx| {
            let session = insert_session(tx, subject.to_owned(), role, session_ttl, now)?;
            purge(tx, now_ms)?;
            Ok(session)
        })
    }

    /// Ends every session of `subject` (after an erasure, say) and voids their unused
    /// sign-in codes; returns how many sessions were ended.
    pub fn end_sessions_of(&self, subject: &str, now: DateTime<Utc>) -> Result<usize> {
        let now_ms = now.timestamp_millis();
        self.write(|tx| {
            let ended = tx
                .prepare_cached(
                    "UPDATE web_sessions SET ended_at_ms = ?2
                      WHERE subject = ?1 AND ended_at_ms IS NULL AND expires_at_ms > ?2",
                )?
                .execute(params![subject, now_ms])?;
            tx.prepare_cached(
                "UPDATE signin_codes SET used_at_ms = ?2 WHERE subject = ?1 AND used_at_ms IS NULL",
            )?
            .execute(params![subject, now_ms])?;
            purge(tx, now_ms)?;
            Ok(ended)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        (dir, store)
    }

    fn count(store: &Store, table: &str) -> i64 {
        store
            .read(|c| Ok(c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?))
            .unwrap()
    }

    const TTL: TimeDelta = TimeDelta::minutes(15);
    const SESSION: TimeDelta = TimeDelta::hours(8);

    #[test]
    fn a_code_opens_one_session_once() {
        let (_d, s) = store();
        let now = Utc::now();
        let code = s.issue_signin_code("ana", Role::Owner, TTL, now).unwrap();
        assert_eq!(code.len(), 43);
        assert!(code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        // Only the hash is stored.
        let stored: String = s
            .read(|c| Ok(c.query_row("SELECT code_hash FROM signin_codes", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(stored, hash(&code));
        assert_ne!(stored, code);

        let new = s
            .redeem_signin_code(&code, SESSION, now + TimeDelta::minutes(1))
            .unwrap()
            .expect("a fresh code opens a session");
        assert_eq!((new.subject.as_str(), new.role), ("ana", Role::Owner));
        assert_eq!(new.expires_at, now + TimeDelta::minutes(1) + SESSION);
        assert_ne!(new.id, new.csrf);
        assert!(!format!("{new:?}").contains(&new.id), "Debug hides the id");

        // Single use, even a moment later.
        assert_eq!(
            s.redeem_signin_code(&code, SESSION, now + TimeDelta::minutes(2))
                .unwrap(),
            None
        );
        // The session reads back as the viewer, with its CSRF token.
        let v = s
            .session(&new.id, now + TimeDelta::hours(1))
            .unwrap()
            .unwrap();
        assert_eq!(v, new.session());
        // Unknown codes and sessions are nothing.
        assert_eq!(s.redeem_signin_code("nope", SESSION, now).unwrap(), None);
        assert_eq!(s.redeem_signin_code("", SESSION, now).unwrap(), None);
        assert_eq!(
            s.session(&code, now).unwrap(),
            None,
            "a code is no session id"
        );
        assert_eq!(s.session(&"x".repeat(500), now).unwrap(), None);
    }

    #[test]
    fn codes_and_sessions_expire() {
        let (_d, s) = store();
        let now = Utc::now();
        let code = s
            .issue_signin_code("dr-kim", Role::Clinician, TTL, now)
            .unwrap();
        assert_eq!(
            s.redeem_signin_code(&code, SESSION, now + TTL).unwrap(),
            None
        );

        let code = s
            .issue_signin_code("dr-kim", Role::Clinician, TTL, now)
            .unwrap();
        let new = s
            .redeem_signin_code(&code, SESSION, now + TTL - TimeDelta::milliseconds(1))
            .unwrap()
            .unwrap();
        assert_eq!(new.role, Role::Clinician);
        let at = now + TTL - TimeDelta::milliseconds(1);
        assert!(s
            .session(&new.id, at + SESSION - TimeDelta::milliseconds(1))
            .unwrap()
            .is_some());
        assert_eq!(s.session(&new.id, at + SESSION).unwrap(), None);
        assert!(
            !s.end_session(&new.id, at + SESSION).unwrap(),
            "already expired"
        );

        // Expired rows are purged by the next write.
        s.issue_signin_code(
            "ana",
            Role::Owner,
            TTL,
            at + SESSION + TimeDelta::seconds(1),
        )
        .unwrap();
        assert_eq!(count(&s, "web_sessions"), 0);
        assert_eq!(count(&s, "signin_codes"), 1);
    }

    #[test]
    fn ended_sessions_are_over() {
        let (_d, s) = store();
        let now = Utc::now();
        let open = |subject: &str| {
            let code = s.issue_signin_code(subject, Role::Owner, TTL, now).unwrap();
            s.redeem_signin_code(&code, SESSION, now).unwrap().unwrap()
        };
        let (a, b) = (open("ana"), open("ana"));
        let other = open("ben");
        assert!(s.end_session(&a.id, now).unwrap());
        assert!(
            !s.end_session(&a.id, now).unwrap(),
            "ending twice is nothing"
        );
        assert_eq!(s.session(&a.id, now).unwrap(), None);
        assert!(
            s.session(&b.id, now).unwrap().is_some(),
            "only that session"
        );

        // Ending all of a person's sessions also voids their unused codes.
        let pending = s.issue_signin_code("ana", Role::Owner, TTL, now).unwrap();
        assert_eq!(s.end_sessions_of("ana", now).unwrap(), 1);
        assert_eq!(s.session(&b.id, now).unwrap(), None);
        assert_eq!(s.redeem_signin_code(&pending, SESSION, now).unwrap(), None);
        assert!(s.session(&other.id, now).unwrap().is_some());
    }

    #[test]
    fn a_link_signs_in_only_the_browser_that_opened_it() {
        let (_d, s) = store();
        // Whole milliseconds, as the store keeps times.
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
        let code = s
            .issue_signin_code("mallory", Role::Owner, TTL, now)
            .unwrap();
        let minute = TimeDelta::minutes(1);
        // Opening the link opens no session and uses nothing up.
        let a = s
            .begin_signin(&code, TimeDelta::minutes(10), now)
            .unwrap()
            .unwrap();
        assert_eq!((a.subject.as_str(), a.role), ("mallory", Role::Owner));
        assert_eq!(a.expires_at, now + TimeDelta::minutes(10));
        assert!(!format!("{a:?}").contains(&a.nonce));
        assert_eq!(s.open_sessions_of("mallory", now).unwrap(), 0);
        // Only the nonce's hash is stored.
        let stored: String = s
            .read(|c| Ok(c.query_row("SELECT nonce_hash FROM signin_pending", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(stored, hash(&a.nonce));
        // Without the browser's nonce, or with the wrong form token: refused, nothing used.
        for (nonce, token) in [
            ("", a.form_token.as_str()),
            ("forged", a.form_token.as_str()),
            (a.form_token.as_str(), a.form_token.as_str()),
            (a.nonce.as_str(), ""),
            (a.nonce.as_str(), "forged"),
        ] {
            assert_eq!(
                s.complete_signin(&code, nonce, token, SESSION, now + minute)
                    .unwrap(),
                SignInOutcome::NotThisBrowser,
                "{nonce:?} {token:?}"
            );
        }
        assert_eq!(s.open_sessions_of("mallory", now).unwrap(), 0);
        // A later opening elsewhere replaces the pending sign-in: the first browser's nonce
        // no longer works, the second's does, once.
        let b = s
            .begin_signin(&code, TimeDelta::minutes(10), now + minute)
            .unwrap()
            .unwrap();
        assert_eq!(
            s.complete_signin(&code, &a.nonce, &a.form_token, SESSION, now + minute)
                .unwrap(),
            SignInOutcome::NotThisBrowser
        );
        let SignInOutcome::SignedIn(new) = s
            .complete_signin(&code, &b.nonce, &b.form_token, SESSION, now + minute)
            .unwrap()
        else {
            panic!("the browser that opened the link last signs in");
        };
        assert_eq!((new.subject.as_str(), new.role), ("mallory", Role::Owner));
        assert_eq!(s.open_sessions_of("mallory", now + minute).unwrap(), 1);
        assert_eq!(count(&s, "signin_pending"), 0, "done with");
        // Once.
        assert_eq!(
            s.complete_signin(&code, &b.nonce, &b.form_token, SESSION, now + minute)
                .unwrap(),
            SignInOutcome::InvalidCode
        );
        assert_eq!(s.begin_signin(&code, TTL, now + minute).unwrap(), None);
        assert_eq!(s.begin_signin("made-up", TTL, now).unwrap(), None);
        assert_eq!(count(&s, "signin_pending"), 0, "bad links store nothing");

        // A pending sign-in lapses with its ttl, and never outlives the code.
        let code = s.issue_signin_code("ana", Role::Owner, TTL, now).unwrap();
        let p = s.begin_signin(&code, minute, now).unwrap().unwrap();
        assert_eq!(
            s.complete_signin(&code, &p.nonce, &p.form_token, SESSION, now + minute)
                .unwrap(),
            SignInOutcome::NotThisBrowser
        );
        let p = s
            .begin_signin(&code, TimeDelta::hours(1), now + TTL - minute)
            .unwrap()
            .unwrap();
        assert_eq!(p.expires_at, now + TTL);
        assert_eq!(
            s.complete_signin(&code, &p.nonce, &p.form_token, SESSION, now + TTL)
                .unwrap(),
            SignInOutcome::InvalidCode
        );
    }

    #[test]
    fn bad_input_is_refused() {
        let (_d, s) = store();
        let now = Utc::now();
        assert!(s.issue_signin_code("", Role::Owner, TTL, now).is_err());
        assert!(s.issue_signin_code("a b", Role::Owner, TTL, now).is_err());
        assert!(s
            .issue_signin_code("ana", Role::Owner, TimeDelta::zero(), now)
            .is_err());
        let code = s.issue_signin_code("ana", Role::Owner, TTL, now).unwrap();
        assert_eq!(
            s.redeem_signin_code(&code, TimeDelta::zero(), now).unwrap(),
            None
        );
        // A refused redemption does not use the code up.
        assert!(s.redeem_signin_code(&code, SESSION, now).unwrap().is_some());
    }
}
