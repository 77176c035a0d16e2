//! OAuth clients (PHR companies) and the replay guard for their client assertions.
//!
//! A client authenticates at `POST /oauth/token` (see `phr_gateway::oauth`) with a secret, a
//! signed assertion (RFC 7523) verified against the public keys it registered, or either.
//! Secrets are generated here, shown once and never stored: only a salted SHA-256 of each is
//! kept (a generated 256-bit secret needs no slow hash), compared in constant time.
//!
//! `client_assertion_jtis` remembers every assertion `jti` until a minute past the last
//! instant the assertion is accepted (`crate::oauth::accepted_until`): the insert is the check, so two concurrent uses of one `jti` cannot both pass. Expired rows are
//! purged whenever a new one is remembered.

use chrono::{DateTime, Utc};
use rand::RngCore;
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};

use super::Store;
use crate::{Error, Result};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    -- Space-separated SMART v2 `system/...` scopes, verbatim.
    allowed_scopes TEXT NOT NULL,
    -- `sha256$<salt hex>$<SHA-256(salt || secret) hex>`; the secret itself is never stored.
    secret_hash TEXT,
    -- The client's public keys, a JWK Set (JSON).
    jwks TEXT,
    created_at TEXT NOT NULL,
    disabled_at TEXT,
    CHECK (secret_hash IS NOT NULL OR jwks IS NOT NULL)
);
CREATE TABLE IF NOT EXISTS client_assertion_jtis (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (client_id, jti)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS client_assertion_jtis_by_expiry ON client_assertion_jtis(expires_at_ms);
";

/// A client to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClient {
    pub client_id: String,
    pub name: String,
    /// SMART v2 `system/...` scopes, kept verbatim.
    pub allowed_scopes: Vec<String>,
    /// The client's public keys as a JWK Set, for `private_key_jwt`.
    pub jwks: Option<serde_json::Value>,
    /// Generate a secret (for `client_secret_basic` / `client_secret_post`).
    pub secret: bool,
}

/// A generated client secret. It exists only in the answer to the registration; `Debug`
/// does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(String);

impl ClientSecret {
    /// The secret, to hand to the client once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

/// The stored, salted hash of a secret.
#[derive(Clone, PartialEq, Eq)]
struct SecretHash(String);

impl std::fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

const HASH_SCHEME: &str = "sha256";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn salted_digest(salt_hex: &str, secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt_hex.as_bytes());
    h.update(secret.as_bytes());
    hex(&h.finalize())
}

impl SecretHash {
    fn new(secret: &str) -> Self {
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let salt = hex(&salt);
        let digest = salted_digest(&salt, secret);
        Self(format!("{HASH_SCHEME}${salt}${digest}"))
    }

    fn matches(&self, secret: &str) -> bool {
        let mut parts = self.0.splitn(3, '$');
        let (Some(HASH_SCHEME), Some(salt), Some(digest)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        crate::secret::same_secret(salted_digest(salt, secret), digest)
    }
}

/// A registered client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub client_id: String,
    pub name: String,
    pub allowed_scopes: Vec<String>,
    /// The registered public keys (a JWK Set), if the client uses `private_key_jwt`.
    pub jwks: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
    secret_hash: Option<SecretHash>,
}

impl Client {
    pub fn has_secret(&self) -> bool {
        self.secret_hash.is_some()
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled_at.is_some()
    }

    /// Whether `secret` is this client's secret (constant time in the secret's content).
    /// A client without a secret spends the same work on the check as one with.
    pub fn verify_secret(&self, secret: &str) -> bool {
        match &self.secret_hash {
            Some(h) => h.matches(secret),
            None => {
                verify_no_secret(secret);
                false
            }
        }
    }

    /// The token endpoint authentication methods this client can use.
    pub fn auth_methods(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if self.jwks.is_some() {
            m.push("private_key_jwt");
        }
        if self.has_secret() {
            m.extend(["client_secret_basic", "client_secret_post"]);
        }
        m
    }
}

/// Spends the time a secret check takes, for a client that does not exist or has no
/// secret, so the answer's timing does not tell which.
pub fn verify_no_secret(secret: &str) {
    // A salt and digest of the real lengths, so the digest and the comparison run in full.
    const DUMMY: &str = "sha256$00000000000000000000000000000000$\
                         0000000000000000000000000000000000000000000000000000000000000000";
    let _ = SecretHash(DUMMY.to_owned()).matches(secret);
}

/// A new random secret: 32 bytes from the OS, base64url without padding (43 characters,
/// safe in forms, headers and shells).
fn generate_secret() -> ClientSecret {
    ClientSecret(crate::secret::random_token())
}

fn parse_time(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| t.with_timezone(&Utc))
}

const SELECT_CLIENTS: &str =
    "SELECT client_id, name, allowed_scopes, secret_hash, jwks, created_at, disabled_at FROM clients";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Client> {
    let scopes: String = r.get(2)?;
    let jwks: Option<String> = r.get(4)?;
    Ok(Client {
        client_id: r.get(0)?,
        name: r.get(1)?,
        allowed_scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        secret_hash: r.get::<_, Option<String>>(3)?.map(SecretHash),
        jwks: jwks.and_then(|j| serde_json::from_str(&j).ok()),
        created_at: parse_time(r.get(5)?).unwrap_or_default(),
        disabled_at: parse_time(r.get(6)?),
    })
}

impl Store {
    /// Registers a client. Its callers check it first (id, name, scopes, keys: the OAuth
    /// rules, `phr_gateway::oauth::check_new_client`). Returns the generated secret when one
    /// was asked for: the only time it exists outside the client.
    pub fn add_client(&self, c: &NewClient) -> Result<Option<ClientSecret>> {
        let secret = c.secret.then(generate_secret);
        let hash = secret.as_ref().map(|s| SecretHash::new(s.expose()).0);
        let jwks = c.jwks.as_ref().map(serde_json::Value::to_string);
        let now = Utc::now().to_rfc3339();
        self.write(|tx| {
            let n = tx.execute(
                "INSERT INTO clients (client_id, name, allowed_scopes, secret_hash, jwks, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                params![c.client_id, c.name, c.allowed_scopes.join(" "), hash, jwks, now],
            )?;
            if n == 0 {
                return Err(Error::Conflict("a client with this client_id exists"));
            }
            Ok(())
        })?;
        Ok(secret)
    }

    /// The client `client_id`, if registered (disabled ones too).
    pub fn client(&self, client_id: &str) -> Result<Option<Client>> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    &format!("{SELECT_CLIENTS} WHERE client_id = ?1"),
                    [client_id],
                    from_row,
                )
                .optional()?)
        })
    }

    /// Every registered client, by id.
    pub fn list_clients(&self) -> Result<Vec<Client>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!("{SELECT_CLIENTS} ORDER BY client_id"))?;
            let rows = stmt.query_map([], from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Gives `client_id` a new secret (the old one stops working); `None` if there is no such
    /// client. Like at registration, the secret exists only in this answer.
    pub fn rotate_client_secret(&self, client_id: &str) -> Result<Option<ClientSecret>> {
        let secret = generate_secret();
        let hash = SecretHash::new(secret.expose()).0;
        let changed = self.write(|tx| {
            Ok(tx.execute(
                "UPDATE clients SET secret_hash = ?2 WHERE client_id = ?1",
                params![client_id, hash],
            )?)
        })?;
        Ok((changed == 1).then_some(secret))
    }

    /// Disables a client: it gets no more tokens. Returns whether it was enabled.
    pub fn disable_client(&self, client_id: &str, now: DateTime<Utc>) -> Result<bool> {
        self.write(|tx| {
            Ok(tx.execute(
                "UPDATE clients SET disabled_at = ?2 WHERE client_id = ?1 AND disabled_at IS NULL",
                params![client_id, now.to_rfc3339()],
            )? == 1)
        })
    }

    /// Remembers that `client_id` used assertion `jti`, until `expires_at`. Returns whether
    /// the `jti` was fresh: `false` means a replay. The insert itself is the check (the
    /// primary key refuses a second row), so concurrent uses of one `jti` cannot both pass.
    /// Rows that expired before `now` are purged first.
    pub fn remember_jti(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM client_assertion_jtis WHERE expires_at_ms < ?1",
                [now.timestamp_millis()],
            )?;
            let n = tx.execute(
                "INSERT INTO client_assertion_jtis (client_id, jti, expires_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
                params![client_id, jti, expires_at.timestamp_millis()],
            )?;
            Ok(n == 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use serde_json::json;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("phr.sqlite")).unwrap();
        (dir, s)
    }

    fn ed_jwks() -> serde_json::Value {
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1",
                         "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]})
    }

    fn new(id: &str, secret: bool, jwks: Option<serde_json::Value>) -> NewClient {
        NewClient {
            client_id: id.into(),
            name: "Example PHR Co".into(),
            allowed_scopes: vec![
                "system/Observation.rs".into(),
                "system/Observation.rs?code=http://loinc.org|55423-8".into(),
            ],
            jwks,
            secret,
        }
    }

    #[test]
    fn clients_are_stored_without_their_secret() {
        let (dir, s) = store();
        let secret = s.add_client(&new("co-1", true, None)).unwrap().unwrap();
        assert_eq!(secret.expose().len(), 43);
        assert!(!format!("{secret:?}").contains(secret.expose()));
        assert_eq!(
            s.add_client(&new("co-2", false, Some(ed_jwks()))).unwrap(),
            None
        );

        let c = s.client("co-1").unwrap().unwrap();
        assert!(c.has_secret() && c.verify_secret(secret.expose()));
        assert!(!c.verify_secret("wrong"));
        assert!(!c.verify_secret(""));
        assert!(!format!("{c:?}").contains(secret.expose()));
        assert_eq!(c.allowed_scopes.len(), 2);
        assert_eq!(
            c.auth_methods(),
            ["client_secret_basic", "client_secret_post"]
        );
        let k = s.client("co-2").unwrap().unwrap();
        assert_eq!(k.jwks, Some(ed_jwks()));
        assert!(!k.has_secret() && !k.verify_secret(""));
        assert_eq!(k.auth_methods(), ["private_key_jwt"]);
        assert_eq!(s.client("nobody").unwrap(), None);
        let ids: Vec<_> = s
            .list_clients()
            .unwrap()
            .into_iter()
            .map(|c| c.client_id)
            .collect();
        assert_eq!(ids, ["co-1", "co-2"]);

        // Nowhere in the file.
        drop(s);
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(!bytes
                .windows(secret.expose().len())
                .any(|w| w == secret.expose().as_bytes()));
        }
    }

    #[test]
    fn duplicates_are_refused() {
        let (_d, s) = store();
        s.add_client(&new("co-1", true, None)).unwrap();
        assert!(matches!(
            s.add_client(&new("co-1", true, None)),
            Err(Error::Conflict(_))
        ));
        assert_eq!(s.list_clients().unwrap().len(), 1);
    }

    #[test]
    fn disabled_clients_say_so() {
        let (_d, s) = store();
        s.add_client(&new("co-1", true, None)).unwrap();
        assert!(s.disable_client("co-1", Utc::now()).unwrap());
        assert!(!s.disable_client("co-1", Utc::now()).unwrap());
        assert!(!s.disable_client("nobody", Utc::now()).unwrap());
        assert!(s.client("co-1").unwrap().unwrap().is_disabled());
    }

    #[test]
    fn a_jti_is_fresh_once_until_it_expires() {
        let (_d, s) = store();
        let now = Utc::now();
        let exp = now + TimeDelta::minutes(5);
        assert!(s.remember_jti("co-1", "j1", exp, now).unwrap());
        assert!(!s.remember_jti("co-1", "j1", exp, now).unwrap());
        // Another client's jti space is its own.
        assert!(s.remember_jti("co-2", "j1", exp, now).unwrap());
        // Once expired, the row is purged and the assertion itself would be refused anyway.
        let later = exp + TimeDelta::seconds(1);
        assert!(s
            .remember_jti("co-1", "j1", later + TimeDelta::minutes(5), later)
            .unwrap());
    }

    #[test]
    fn concurrent_uses_of_one_jti_pass_once() {
        let (_d, s) = store();
        let s = std::sync::Arc::new(s);
        let now = Utc::now();
        let fresh: usize = (0..8)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    s.remember_jti("co-1", "same", now + TimeDelta::minutes(5), now)
                        .unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| usize::from(t.join().unwrap()))
            .sum();
        assert_eq!(fresh, 1);
    }
}
