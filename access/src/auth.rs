//! Tokens: the gateway signs and verifies JWTs (RFC 7519) with an Ed25519 key it generates on
//! first start and keeps in the data dir (`keys/jwt-ed25519.pem`, PKCS#8 PEM, mode 0600; see
//! `load_or_create_key` for the older `.pk8` files).
//!
//! Verification follows RFC 8725: the algorithm is pinned (EdDSA only, so `none` and
//! HMAC-with-the-public-key confusion are refused), `typ` must be `at+jwt` (RFC 9068), `kid`
//! must name our key, and `iss`, `aud`, `exp`, `nbf` and `sub` are required and checked.
//!
//! Time: `exp` and `nbf` are checked against the time the caller passes (the gateway's
//! clock, [`crate::store::Clock`]) with [`LEEWAY_SECS`] of skew, by [`valid_at`], not against
//! the system clock jsonwebtoken would read: its own time checks are off, while `exp` stays a
//! claim it requires, so a token without one is still refused. Identity providers' tokens
//! ([`crate::idp`]) follow the same rule.

use std::path::Path;

use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Error, Result};

/// The JOSE `typ` of access tokens (RFC 9068).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Everything an owner may do with their own data (SMART v2: create, read, update, delete,
/// search, on every resource): what the demo's and the operator's owner tokens carry.
pub const OWNER_SCOPE: &str = "patient/*.cruds";

/// The file, in the keys dir, of the token signing key.
pub const KEY_FILE: &str = "jwt-ed25519.pem";
/// Where versions before the PEM file kept it (PKCS#8 v2 DER), still read.
pub const LEGACY_KEY_FILE: &str = "jwt-ed25519.pk8";

/// Base64url without padding (RFC 7515 §2).
pub fn b64url_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    /// Space-separated scopes, SMART v2 style (`patient/Observation.rs`).
    pub scope: String,
}

/// Why a token was refused. Deliberately coarse towards the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token")]
    Missing,
    #[error("the token is malformed, forged, expired or not for this service")]
    Invalid,
}

/// The signing key and the rules tokens must meet.
pub struct Keys {
    kid: String,
    public: [u8; 32],
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Loads the key from `dir`, generating it on first use.
    pub fn load_or_create(dir: &Path, issuer: &str, audience: &str) -> Result<Self> {
        let signing = load_or_create_key(dir, KEY_FILE, LEGACY_KEY_FILE, "token signing key")?;
        Self::from_signing_key(&signing, issuer, audience)
    }

    fn from_signing_key(signing: &SigningKey, issuer: &str, audience: &str) -> Result<Self> {
        let der = signing
            .to_pkcs8_der()
            .map_err(|e| Error::Key(e.to_string()))?;
        let public = signing.verifying_key().to_bytes();
        let kid = hex::encode(&public[..8]);
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        // Checked by `verify` against the time it is given (`valid_at`), not the system's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        Ok(Self {
            kid,
            public,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            decoding: DecodingKey::from_ed_der(&public),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// The raw Ed25519 public key (what a JWKS publishes as `x`).
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs an access token for `subject` with `scope`, valid for `ttl` from `now`.
    pub fn issue(
        &self,
        subject: &str,
        scope: &str,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
            aud: self.audience.clone(),
            exp: (now + ttl).timestamp(),
            nbf: now.timestamp(),
            iat: now.timestamp(),
            jti: Uuid::new_v4().to_string(),
            scope: scope.to_owned(),
        };
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| Error::Key(e.to_string()))
    }

    /// Signs any claims as a JWS of type `typ` with the gateway's key (consent receipts).
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        header.typ = Some(typ.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| Error::Key(e.to_string()))
    }

    /// Verifies a JWS of type `typ` signed by this gateway and returns its claims, without
    /// the access-token claim rules.
    pub fn verify_signed<T: serde::de::DeserializeOwned>(
        &self,
        typ: &str,
        token: &str,
    ) -> Result<T, TokenError> {
        self.check_header(token, typ)?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_aud = false;
        jsonwebtoken::decode::<T>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|_| TokenError::Invalid)
    }

    /// The header rules every token of ours meets (RFC 8725): the pinned algorithm, the
    /// expected `typ`, and our `kid`. Checked before the signature, so `none` and algorithm
    /// confusion never reach the verifier.
    fn check_header(&self, token: &str, typ: &str) -> Result<(), TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != Algorithm::EdDSA
            || header.typ.as_deref() != Some(typ)
            || header.kid.as_deref() != Some(self.kid.as_str())
        {
            return Err(TokenError::Invalid);
        }
        Ok(())
    }

    /// Verifies a compact JWS and returns its claims, if it is valid at `now` (the
    /// gateway's clock).
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, TokenError> {
        self.check_header(token, ACCESS_TOKEN_TYP)?;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|_| TokenError::Invalid)?;
        if !valid_at(claims.exp, Some(claims.nbf), now) {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }
}

/// Clock skew tolerated on `exp`, `nbf` and `iat` (seconds), for the gateway's tokens and
/// identity providers' alike.
pub const LEEWAY_SECS: i64 = 30;

/// Whether a token with this `exp` and `nbf` (seconds since the epoch) is valid at `now`,
/// allowing [`LEEWAY_SECS`] of skew either way: not expired before `now - leeway`, not valid
/// only after `now + leeway`. jsonwebtoken's rule, read from the gateway's clock.
pub fn valid_at(exp: i64, nbf: Option<i64>, now: DateTime<Utc>) -> bool {
    let now = now.timestamp();
    exp >= now.saturating_sub(LEEWAY_SECS)
        && nbf.is_none_or(|nbf| nbf <= now.saturating_add(LEEWAY_SECS))
}

/// Whether two secrets are equal in constant time: the store's comparison, the one every
/// secret check of the gateway and the store uses.
pub use crate::store::secret::same_secret;

/// `N` bytes from the OS's generator as `2 N` lowercase hex characters: the one generator of
/// hex secrets outside the store.
pub fn random_hex<const N: usize>() -> String
where
    rand::distributions::Standard: rand::distributions::Distribution<[u8; N]>,
{
    hex::encode(rand::Rng::gen::<[u8; N]>(&mut rand::rngs::OsRng))
}

/// An Ed25519 key kept in `dir` as `file` (mode 0600), generated on first use; `what` names
/// it in the log.
///
/// `file` is PKCS#8 v1 in PEM, which OpenSSL 3 and Python's `cryptography` read; a
/// deployment that has only `legacy` (PKCS#8 v2 DER, what versions before wrote) keeps its
/// key, written once more as `file` (`phr_schema::keyfile` has the rules, shared with the
/// bridge). A `legacy` holding another key than `file` is named in a warning, since a key put
/// there by hand would otherwise be silently ignored.
pub(crate) fn load_or_create_key(
    dir: &Path,
    file: &str,
    legacy: &str,
    what: &str,
) -> Result<SigningKey> {
    use phr_schema::keyfile::{self, Outcome};
    let (key, outcome) = keyfile::load_or_create(dir, file, legacy).map_err(key_file_error)?;
    let (path, legacy) = (dir.join(file), dir.join(legacy));
    match outcome {
        Outcome::Loaded { other_legacy: true } => tracing::warn!(
            path = %path.display(),
            ignored = %legacy.display(),
            "the {what} is read from the PEM file; the older file beside it holds \
             another key and is not read (delete it once the PEM file is the key \
             you want)"
        ),
        Outcome::Loaded {
            other_legacy: false,
        } => {}
        Outcome::Migrated => tracing::info!(
            path = %path.display(),
            from = %legacy.display(),
            "wrote the {what} as PKCS#8 PEM, the file read from now on; the older \
             file is kept for older versions and can be deleted"
        ),
        // A data dir that cannot be written to keeps working on the old file.
        Outcome::NotMigrated(e) => tracing::warn!(
            error = %key_file_error(e),
            from = %legacy.display(),
            "could not write the {what} as PKCS#8 PEM; reading the older file"
        ),
        Outcome::Created => {
            tracing::info!(path = %path.display(), "generated a new {what}")
        }
    }
    Ok(key)
}

/// The gateway's error for a key file, worded as before the helper was shared.
fn key_file_error(e: phr_schema::keyfile::Error) -> Error {
    use phr_schema::keyfile::Error as K;
    match e {
        K::Io { path, source } => Error::io(&path, source),
        e @ (K::NotPem(_) | K::NotDer(_) | K::Encode(_)) => Error::Key(e.to_string()),
    }
}

/// Writes `key` to a new file at `path` as PKCS#8 v1 PEM (tests replace a key as an operator
/// would).
#[cfg(test)]
fn write_key(path: &Path, key: &SigningKey) -> Result<()> {
    match phr_schema::keyfile::write_new(path, key) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::io(
            path,
            std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        )),
        Err(e) => Err(key_file_error(e)),
    }
}

/// An authenticated caller, as handlers receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub scopes: Vec<String>,
}

impl Principal {
    pub fn from_claims(c: Claims) -> Self {
        Self {
            subject: c.sub,
            scopes: c.scope.split_whitespace().map(str::to_owned).collect(),
        }
    }

    /// Whether one of the caller's scopes grants `perm` (one of `c r u d s`) on `resource`
    /// in `context` (`patient`, `user` or `system`), as [`Scope::grants`] decides. A SMART v2
    /// granular scope may narrow it with a query (`?code=...`), which
    /// [`Principal::allowed_types`] reads.
    pub fn has_scope(&self, context: &str, resource: &str, perm: char) -> bool {
        self.scopes
            .iter()
            .filter_map(|s| Scope::parse(s))
            .any(|s| s.grants(context, resource, perm))
    }

    /// The record types the caller's `Observation` read scopes are narrowed to by LOINC code
    /// (`system/Observation.rs?code=http://loinc.org|55423-8`); `None` when a read scope is
    /// not narrowed (every type), or there is none.
    pub fn allowed_types(&self) -> Option<Vec<phr_schema::RecordType>> {
        let mut types = Vec::new();
        for s in self.scopes.iter().filter_map(|s| Scope::parse(s)) {
            let reads = ScopeContext::ALL
                .iter()
                .any(|ctx| s.grants(ctx.as_str(), "Observation", 'r'));
            if !reads {
                continue;
            }
            let query = s.query?;
            // A query the one parser refuses narrows its scope to nothing, never to everything.
            for t in loinc_query_types(query).unwrap_or_default() {
                if !types.contains(&t) {
                    types.push(t);
                }
            }
        }
        Some(types)
    }

    /// Whether the caller may read their own observations: SMART v2 `patient/Observation.rs`
    /// (or `.r`, or the `patient/*` wildcard).
    pub fn may_read_own_observations(&self) -> bool {
        self.has_scope("patient", "Observation", 'r')
    }
}

/// The launch context a SMART scope is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeContext {
    Patient,
    User,
    System,
}

impl ScopeContext {
    pub const ALL: [Self; 3] = [Self::Patient, Self::User, Self::System];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Patient => "patient",
            Self::User => "user",
            Self::System => "system",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// A set of SMART v2 permissions, a subset of `c r u d s` (one bit each, in that order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permissions(u8);

impl Permissions {
    /// The letters in their one allowed order.
    pub const LETTERS: [char; 5] = ['c', 'r', 'u', 'd', 's'];

    fn bit(perm: char) -> Option<u8> {
        Self::LETTERS
            .iter()
            .position(|&l| l == perm)
            .map(|i| 1 << i)
    }

    /// Parses the permission part of a scope: SMART v2 letters, a non-empty subsequence of
    /// `cruds` in that order (no repeats, no other letters); or SMART v1 `read` (= `rs`),
    /// `write` (= `cud`) and `*` (= `cruds`), mapped explicitly. Anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => return Some(Self::from_letters("rs")),
            "write" => return Some(Self::from_letters("cud")),
            "*" => return Some(Self::from_letters("cruds")),
            "" => return None,
            _ => {}
        }
        let mut bits = 0u8;
        for perm in s.chars() {
            let bit = Self::bit(perm)?;
            // Strictly increasing: a repeat or a letter out of order is refused.
            if bits >= bit {
                return None;
            }
            bits |= bit;
        }
        Some(Self(bits))
    }

    fn from_letters(letters: &str) -> Self {
        Self(letters.chars().filter_map(Self::bit).fold(0, |a, b| a | b))
    }

    /// Whether `perm` is granted; any character but `c r u d s` never is.
    pub fn contains(self, perm: char) -> bool {
        Self::bit(perm).is_some_and(|b| self.0 & b != 0)
    }
}

/// How a LOINC token in a `code` list names its code system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoincSystem {
    /// `http://loinc.org|{code}` only, as in SMART scopes.
    Required,
    /// Also `{code}` and `|{code}`, as the FHIR search parameter `code` allows.
    Optional,
}

/// The record types a comma-separated list of LOINC tokens names, in order, repeats dropped;
/// `None` if any token names another system or a code no record type has
/// ([`phr_schema::RecordType::from_loinc`]). The one parser of `code` lists: SMART scopes
/// narrowed by `?code=` (token checks, client registration) and FHIR search.
pub fn loinc_types(list: &str, system: LoincSystem) -> Option<Vec<phr_schema::RecordType>> {
    use phr_schema::fhir::LOINC_SYSTEM;
    let mut types = Vec::new();
    for token in list.split(',') {
        let code = match (token.split_once('|'), system) {
            (Some((LOINC_SYSTEM, code)), _) => code,
            (Some(("", code)), LoincSystem::Optional) => code,
            (None, LoincSystem::Optional) => token,
            _ => return None,
        };
        let t = phr_schema::RecordType::from_loinc(code)?;
        if !types.contains(&t) {
            types.push(t);
        }
    }
    Some(types)
}

/// The record types a SMART granular query `code=http://loinc.org|{code}[,...]` names, if
/// it is exactly that and every code is one the gateway maps to a record type.
pub fn loinc_query_types(query: &str) -> Option<Vec<phr_schema::RecordType>> {
    loinc_types(query.strip_prefix("code=")?, LoincSystem::Required)
}

/// One SMART scope, parsed exactly: `{context}/{resource}.{permissions}[?{query}]` with the
/// context `patient`, `user` or `system`, the resource `*` or a FHIR resource type name
/// (`Observation`: an ASCII capital, then letters and digits), and [`Permissions`]. The one
/// parser every scope check goes through: a scope it refuses grants nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope<'a> {
    pub context: ScopeContext,
    /// `None` for the `*` wildcard (every resource).
    pub resource: Option<&'a str>,
    pub permissions: Permissions,
    /// Whether the permissions were written SMART v1 style (`read`, `write`, `*`).
    pub v1: bool,
    /// A SMART v2 granular query after `?` (non-empty), e.g. `code=http://loinc.org|8867-4`.
    pub query: Option<&'a str>,
}

impl<'a> Scope<'a> {
    /// The most characters of a scope worth looking at.
    pub const MAX_LEN: usize = 512;

    pub fn parse(s: &'a str) -> Option<Self> {
        if s.is_empty()
            || s.len() > Self::MAX_LEN
            || s.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return None;
        }
        let (base, query) = match s.split_once('?') {
            Some((_, "")) => return None,
            Some((b, q)) => (b, Some(q)),
            None => (s, None),
        };
        let (context, rest) = base.split_once('/')?;
        let context = ScopeContext::parse(context)?;
        let (resource, perms) = rest.split_once('.')?;
        let resource = match resource {
            "*" => None,
            r if is_resource_name(r) => Some(r),
            _ => return None,
        };
        let permissions = Permissions::parse(perms)?;
        Some(Self {
            context,
            resource,
            permissions,
            v1: matches!(perms, "read" | "write" | "*"),
            query,
        })
    }

    /// Whether this scope grants `perm` on `resource` in `context`: the context is the
    /// same, the resource is the same (exactly) or the scope's is `*`, and `perm` is one of
    /// its permissions.
    pub fn grants(&self, context: &str, resource: &str, perm: char) -> bool {
        self.context.as_str() == context
            && self.resource.is_none_or(|r| r == resource)
            && self.permissions.contains(perm)
    }
}

/// A FHIR resource type name: an ASCII capital letter, then ASCII letters and digits, at
/// most 64 characters.
fn is_resource_name(r: &str) -> bool {
    r.len() <= 64
        && r.starts_with(|c: char| c.is_ascii_uppercase())
        && r.chars().all(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (tempfile::TempDir, Keys) {
        let dir = tempfile::tempdir().unwrap();
        let k = Keys::load_or_create(dir.path(), "https://gw.test", "phr-api").unwrap();
        (dir, k)
    }

    /// What OpenSSL makes of a key file: `openssl pkey -in FILE -noout -text`, which must
    /// name the key ED25519; its `pub:` bytes.
    fn openssl_public_key(file: &Path) -> [u8; 32] {
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
        let hex: String = text
            .split("pub:")
            .nth(1)
            .expect("a pub: section")
            .chars()
            .filter(char::is_ascii_hexdigit)
            .collect();
        let bytes = hex::decode(hex).unwrap();
        bytes.try_into().expect("32 bytes of public key")
    }

    #[test]
    fn key_files_are_pkcs8_v1_pem_that_openssl_reads_as_our_keys() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::load_or_create(dir.path(), "iss", "aud").unwrap();
        let channel = crate::channel::load_or_create(dir.path()).unwrap();
        for (file, public) in [
            (KEY_FILE, keys.public_key()),
            (crate::channel::KEY_FILE, channel.verifying_key().to_bytes()),
        ] {
            let path = dir.path().join(file);
            assert!(file.ends_with(".pem"), "{file}");
            let pem = std::fs::read_to_string(&path).unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
            // PKCS#8 v1 (RFC 8410 section 7): version 0, the 32-byte seed and no public key,
            // 48 bytes of DER in all.
            let der = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                pem.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .unwrap();
            assert_eq!(
                (der.len(), &der[..5]),
                (48, &[0x30, 0x2e, 0x02, 0x01, 0x00][..])
            );
            assert_eq!(openssl_public_key(&path), public, "{file}");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{file}");
            }
        }
        assert!(!dir.path().join(LEGACY_KEY_FILE).exists());
    }

    #[test]
    fn an_older_pk8_key_is_still_the_key_and_gets_a_pem_file() {
        let dir = tempfile::tempdir().unwrap();
        // What versions before the PEM file wrote: PKCS#8 v2 DER, with the public key.
        let old = SigningKey::from_bytes(&[7; 32]);
        let der = old.to_pkcs8_der().unwrap();
        std::fs::write(dir.path().join(LEGACY_KEY_FILE), der.as_bytes()).unwrap();
        let keys = Keys::load_or_create(dir.path(), "iss", "aud").unwrap();
        assert_eq!(keys.public_key(), old.verifying_key().to_bytes());
        let pem = dir.path().join(KEY_FILE);
        assert_eq!(
            openssl_public_key(&pem),
            old.verifying_key().to_bytes(),
            "migrated"
        );
        // The old file stays as it was (an older binary on this data dir finds the same key).
        assert_eq!(
            std::fs::read(dir.path().join(LEGACY_KEY_FILE)).unwrap(),
            der.as_bytes()
        );
        // From now on the PEM file is the key: a token signed before verifies after.
        let token = keys
            .issue("a", "", chrono::Duration::hours(1), Utc::now())
            .unwrap();
        let again = Keys::load_or_create(dir.path(), "iss", "aud").unwrap();
        assert!(again.verify(&token, Utc::now()).is_ok());
        // An operator's replaced PEM file wins over the old file.
        std::fs::remove_file(&pem).unwrap();
        let new = SigningKey::from_bytes(&[9; 32]);
        write_key(&pem, &new).unwrap();
        let replaced = Keys::load_or_create(dir.path(), "iss", "aud").unwrap();
        assert_eq!(replaced.public_key(), new.verifying_key().to_bytes());
        // Garbage in either file is an error naming the file, never a new key.
        std::fs::write(
            &pem,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = Keys::load_or_create(dir.path(), "iss", "aud").unwrap_err();
        assert!(e.to_string().contains(KEY_FILE), "{e}");
        std::fs::remove_file(&pem).unwrap();
        std::fs::write(dir.path().join(LEGACY_KEY_FILE), b"not a key").unwrap();
        let e = Keys::load_or_create(dir.path(), "iss", "aud").unwrap_err();
        assert!(e.to_string().contains(LEGACY_KEY_FILE), "{e}");
        assert!(!pem.exists());
    }

    #[test]
    fn issued_tokens_verify_and_the_key_persists() {
        let (dir, k) = keys();
        let token = k
            .issue(
                "alice",
                "patient/Observation.rs",
                chrono::Duration::hours(1),
                Utc::now(),
            )
            .unwrap();
        let claims = k.verify(&token, Utc::now()).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.aud.as_str()),
            ("alice", "phr-api")
        );
        let again = Keys::load_or_create(dir.path(), "https://gw.test", "phr-api").unwrap();
        assert_eq!(again.kid(), k.kid());
        assert!(again.verify(&token, Utc::now()).is_ok());
    }

    #[test]
    fn expired_future_foreign_and_tampered_tokens_are_refused() {
        let (_d, k) = keys();
        let now = Utc::now();
        let expired = k
            .issue(
                "a",
                "",
                chrono::Duration::seconds(1),
                now - chrono::Duration::hours(1),
            )
            .unwrap();
        assert_eq!(k.verify(&expired, Utc::now()), Err(TokenError::Invalid));
        let not_yet = k
            .issue(
                "a",
                "",
                chrono::Duration::hours(2),
                now + chrono::Duration::hours(1),
            )
            .unwrap();
        assert_eq!(k.verify(&not_yet, Utc::now()), Err(TokenError::Invalid));
        let (_d2, other) = keys();
        let foreign = other
            .issue("a", "", chrono::Duration::hours(1), now)
            .unwrap();
        assert_eq!(k.verify(&foreign, Utc::now()), Err(TokenError::Invalid));
        let good = k.issue("a", "", chrono::Duration::hours(1), now).unwrap();
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged_claims = format!("{}x", parts[1]);
        parts[1] = &forged_claims;
        assert_eq!(
            k.verify(&parts.join("."), Utc::now()),
            Err(TokenError::Invalid)
        );
    }

    /// Time is the clock's, not the system's: a token lives from `nbf` to `exp` on the
    /// clock it is verified at, with 30 s of skew either side, and one without `exp` never
    /// does.
    #[test]
    fn validity_is_decided_by_the_clock_with_its_leeway() {
        use crate::store::{Clock, ManualClock};
        let (_d, k) = keys();
        // Years before the system's time: only a check against the clock accepts it.
        let t0: DateTime<Utc> = "2020-02-29T12:00:00Z".parse().unwrap();
        let clock = ManualClock::new(t0);
        let token = k.issue("a", "", chrono::Duration::seconds(60), t0).unwrap();
        let at = |secs: i64| {
            clock.set(t0 + chrono::Duration::seconds(secs));
            k.verify(&token, clock.now())
        };
        assert!(at(0).is_ok(), "valid when issued");
        assert!(
            at(60 + 30).is_ok(),
            "exp plus the leeway is the last second"
        );
        assert_eq!(at(60 + 31), Err(TokenError::Invalid), "expired");
        assert_eq!(at(3600), Err(TokenError::Invalid), "long expired");
        assert!(at(-30).is_ok(), "nbf minus the leeway is the first second");
        assert_eq!(at(-31), Err(TokenError::Invalid), "not valid yet (nbf)");
        // Expired on the system's clock, valid on a clock that says so, and the reverse.
        assert!(k.verify(&token, Utc::now()).is_err());
        let fresh = k
            .issue("a", "", chrono::Duration::seconds(60), Utc::now())
            .unwrap();
        assert!(k.verify(&fresh, Utc::now()).is_ok());
        assert_eq!(
            k.verify(&fresh, Utc::now() + chrono::Duration::seconds(91)),
            Err(TokenError::Invalid)
        );
        // Without exp (or nbf), refused at any time.
        for missing in ["exp", "nbf"] {
            let mut claims = serde_json::json!({
                "iss": "https://gw.test", "sub": "a", "aud": "phr-api",
                "exp": t0.timestamp() + 60, "nbf": t0.timestamp(), "iat": t0.timestamp(),
                "jti": "x", "scope": "patient/*.rs"});
            claims.as_object_mut().unwrap().remove(missing);
            let token = k.sign(ACCESS_TOKEN_TYP, &claims).unwrap();
            for secs in [0, 30, -30] {
                clock.set(t0 + chrono::Duration::seconds(secs));
                assert_eq!(
                    k.verify(&token, clock.now()),
                    Err(TokenError::Invalid),
                    "no {missing}"
                );
            }
        }
    }

    #[test]
    fn wrong_audience_or_issuer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let k = Keys::load_or_create(dir.path(), "iss-a", "aud-a").unwrap();
        let token = k
            .issue("a", "", chrono::Duration::hours(1), Utc::now())
            .unwrap();
        let other_aud = Keys::load_or_create(dir.path(), "iss-a", "aud-b").unwrap();
        assert_eq!(
            other_aud.verify(&token, Utc::now()),
            Err(TokenError::Invalid)
        );
        let other_iss = Keys::load_or_create(dir.path(), "iss-b", "aud-a").unwrap();
        assert_eq!(
            other_iss.verify(&token, Utc::now()),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn alg_none_and_hmac_confusion_are_refused() {
        let (_d, k) = keys();
        let b64 = |s: &str| b64url_encode(s.as_bytes());
        let exp = Utc::now().timestamp() + 3600;
        let claims = format!(
            r#"{{"iss":"https://gw.test","sub":"a","aud":"phr-api","exp":{exp},"nbf":0,"iat":0,"jti":"x","scope":"patient/*.rs"}}"#
        );
        let none = format!(
            "{}.{}.",
            b64(&format!(
                r#"{{"alg":"none","typ":"at+jwt","kid":"{}"}}"#,
                k.kid()
            )),
            b64(&claims)
        );
        assert_eq!(k.verify(&none, Utc::now()), Err(TokenError::Invalid));
        let hs = jsonwebtoken::encode(
            &Header {
                alg: Algorithm::HS256,
                kid: Some(k.kid().into()),
                typ: Some("at+jwt".into()),
                ..Header::default()
            },
            &serde_json::from_str::<Claims>(&claims).unwrap(),
            &EncodingKey::from_secret(b"public key bytes"),
        )
        .unwrap();
        assert_eq!(k.verify(&hs, Utc::now()), Err(TokenError::Invalid));
    }

    /// Every (context, resource, letter) a scope grants, among the contexts, a few resources
    /// and every letter (plus some that are no permission).
    fn granted(scope: &str) -> std::collections::BTreeSet<(&'static str, &'static str, char)> {
        let p = Principal {
            subject: "a".into(),
            scopes: vec![scope.to_owned()],
        };
        let mut out = std::collections::BTreeSet::new();
        for ctx in ["patient", "user", "system", "Patient", "*"] {
            for res in ["Observation", "Device", "Consent", "observation", "*"] {
                for perm in ['c', 'r', 'u', 'd', 's', 'e', 'a', 'w', 'i', 't', '*'] {
                    if p.has_scope(ctx, res, perm) {
                        out.insert((ctx, res, perm));
                    }
                }
            }
        }
        out
    }

    /// The expected grant set: `ctx` x `resources` x the letters of `perms`, written out
    /// here from the SMART specification, not from the parser.
    fn set(
        ctx: &'static str,
        resources: &[&'static str],
        perms: &str,
    ) -> std::collections::BTreeSet<(&'static str, &'static str, char)> {
        resources
            .iter()
            .flat_map(|r| perms.chars().map(move |p| (ctx, *r, p)))
            .collect()
    }

    #[test]
    fn scopes_grant_exactly_their_permissions() {
        // `*` as a resource grants every resource (the probe's own `*` included).
        const ALL: [&str; 5] = ["Observation", "Device", "Consent", "observation", "*"];
        let none = std::collections::BTreeSet::new();
        for (scope, want) in [
            // SMART v2 letters, in order, each once.
            ("patient/*.cruds", set("patient", &ALL, "cruds")),
            (
                "patient/Observation.rs",
                set("patient", &["Observation"], "rs"),
            ),
            (
                "patient/Observation.r",
                set("patient", &["Observation"], "r"),
            ),
            ("user/Observation.rs", set("user", &["Observation"], "rs")),
            ("system/Device.cud", set("system", &["Device"], "cud")),
            ("patient/Consent.d", set("patient", &["Consent"], "d")),
            ("patient/*.rd", set("patient", &ALL, "rd")),
            (
                "system/Observation.rs?code=http://loinc.org|55423-8",
                set("system", &["Observation"], "rs"),
            ),
            // SMART v1, mapped explicitly: read = rs, write = cud, * = cruds.
            ("patient/*.read", set("patient", &ALL, "rs")),
            ("patient/*.write", set("patient", &ALL, "cud")),
            (
                "patient/Observation.*",
                set("patient", &["Observation"], "cruds"),
            ),
            ("user/Consent.read", set("user", &["Consent"], "rs")),
            // Wrong order, repeats, unknown letters, empty: nothing.
            ("patient/*.sr", none.clone()),
            ("patient/*.rr", none.clone()),
            ("patient/*.crudss", none.clone()),
            ("patient/*.rsx", none.clone()),
            ("patient/*.ra", none.clone()),
            ("patient/*.", none.clone()),
            ("patient/*.Read", none.clone()),
            ("patient/*.reads", none.clone()),
            ("patient/*.read?", none.clone()),
            // Context and resource exactly.
            ("Patient/*.rs", none.clone()),
            ("patients/*.rs", none.clone()),
            ("launch/*.rs", none.clone()),
            ("*/*.rs", none.clone()),
            ("patient/observation.rs", none.clone()),
            ("patient/Observation*.rs", none.clone()),
            ("patient/Obs-ervation.rs", none.clone()),
            ("patient/.rs", none.clone()),
            ("patient/*", none.clone()),
            ("patient*.rs", none.clone()),
            ("patient/Observation.rs/x", none.clone()),
            // Not resource scopes at all.
            ("phr:admin", none.clone()),
            ("openid", none.clone()),
            ("", none.clone()),
        ] {
            assert_eq!(granted(scope), want, "{scope}");
        }
        // The parts, for the two shapes.
        let v2 = Scope::parse("system/Observation.rs?code=http://loinc.org|8867-4").unwrap();
        assert_eq!(
            (v2.context, v2.resource, v2.v1, v2.query),
            (
                ScopeContext::System,
                Some("Observation"),
                false,
                Some("code=http://loinc.org|8867-4")
            )
        );
        let v1 = Scope::parse("patient/*.write").unwrap();
        assert_eq!(
            (v1.context, v1.resource, v1.v1),
            (ScopeContext::Patient, None, true)
        );
    }

    #[test]
    fn owner_scope_check() {
        let p = |s: &str| Principal {
            subject: "a".into(),
            scopes: s.split_whitespace().map(Into::into).collect(),
        };
        assert!(p("patient/Observation.rs").may_read_own_observations());
        assert!(p("openid patient/*.r").may_read_own_observations());
        assert!(!p("patient/Observation.c").may_read_own_observations());
        assert!(!p("user/Observation.rs system/*.rs").may_read_own_observations());
        assert!(!p("").may_read_own_observations());
    }
}
