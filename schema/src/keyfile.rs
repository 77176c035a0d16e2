//! Ed25519 key files, as the gateway (its token and channel keys) and the bridge (its
//! identity) keep them: loaded, or generated on first use, or migrated from the older format
//! (feature `keyfile`: the one part of this crate that touches the file system).
//!
//! The file is PKCS#8 v1 in PEM (`-----BEGIN PRIVATE KEY-----`, the private key without the
//! public one, RFC 8410 section 7): what OpenSSL 3 (`openssl pkey -in FILE`) and Python's
//! `cryptography` read, so an operator can inspect, back up and replace it with standard
//! tools. Versions before wrote a `legacy` file instead (PKCS#8 v2 DER with the public key,
//! which those tools refuse). A deployment that has only `legacy` keeps its key: it is read
//! and written once more as the PEM file, which is the key from then on. `legacy` is left in
//! place (an older binary started on the same data dir still finds the same key) and is not
//! read while the PEM file exists.
//!
//! A key file appears whole or not at all: it is written to a temporary file beside it (mode
//! 0600), synced, then linked into place, which fails if the file exists (a rename would
//! replace it). So two processes creating or migrating the same key at once end with one key
//! that both use: the one that loses reads the winner's file.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;

/// How a key was come by.
#[derive(Debug)]
pub enum Outcome {
    /// Read from the PEM file. `other_legacy`: a legacy file beside it holds another key (or
    /// none) and was not read; worth a warning, since a key put there by hand would otherwise
    /// be ignored without a word.
    Loaded { other_legacy: bool },
    /// Generated now and written to the PEM file.
    Created,
    /// Read from the legacy file and written to the PEM file, the file read from now on.
    Migrated,
    /// Read from the legacy file; the PEM file could not be written (`0`), so the legacy file
    /// stays the key (a data dir that cannot be written to keeps working).
    NotMigrated(Error),
}

/// Why a key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{} is not an Ed25519 private key in PKCS#8 PEM", .0.display())]
    NotPem(PathBuf),
    #[error("{} is not an Ed25519 PKCS#8 key", .0.display())]
    NotDer(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding the key: {0}")]
    Encode(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// The key kept in `dir` as `file` (PEM), read from `legacy` (DER) when only that exists,
/// generated when neither does; see the module for the formats.
pub fn load_or_create(
    dir: &Path,
    file: &str,
    legacy: &str,
) -> Result<(SigningKey, Outcome), Error> {
    let path = dir.join(file);
    let legacy = dir.join(legacy);
    if let Some(key) = read_pem(&path)? {
        let other_legacy = match std::fs::read(&legacy) {
            Ok(der) => from_der(&der).is_none_or(|old| old.to_bytes() != key.to_bytes()),
            Err(_) => false,
        };
        return Ok((key, Outcome::Loaded { other_legacy }));
    }
    match std::fs::read(&legacy) {
        Ok(der) => {
            let key = from_der(&der).ok_or_else(|| Error::NotDer(legacy.clone()))?;
            match write_new(&path, &key) {
                Ok(true) => Ok((key, Outcome::Migrated)),
                // Another process migrated it first: the same key, from the same file.
                Ok(false) => Ok((
                    key,
                    Outcome::Loaded {
                        other_legacy: false,
                    },
                )),
                Err(e) => Ok((key, Outcome::NotMigrated(e))),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            if write_new(&path, &key)? {
                return Ok((key, Outcome::Created));
            }
            // Another process created one first: that one is the key, for both.
            let key = read_pem(&path)?.ok_or_else(|| Error::NotPem(path.clone()))?;
            Ok((
                key,
                Outcome::Loaded {
                    other_legacy: false,
                },
            ))
        }
        Err(e) => Err(io(&legacy)(e)),
    }
}

/// The key in the PEM file at `path`; `None` if there is no such file.
fn read_pem(path: &Path) -> Result<Option<SigningKey>, Error> {
    match std::fs::read_to_string(path) {
        Ok(pem) => SigningKey::from_pkcs8_pem(&pem)
            .map(Some)
            .map_err(|_| Error::NotPem(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// An Ed25519 key from PKCS#8 DER (what versions before the PEM file wrote).
fn from_der(der: &[u8]) -> Option<SigningKey> {
    SigningKey::from_pkcs8_der(der).ok()
}

/// `key` as PKCS#8 v1 PEM: the private key alone (RFC 8410 section 7), as `openssl genpkey
/// -algorithm ed25519` writes it.
pub fn to_pem(key: &SigningKey) -> Result<String, Error> {
    use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, KeypairBytes};
    let v1 = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    v1.to_pkcs8_pem(LineEnding::LF)
        .map(|pem| pem.to_string())
        .map_err(|e| Error::Encode(e.to_string()))
}

/// Writes `key` as a new PEM file at `path` (mode 0600), whole or not at all. `Ok(false)`: a
/// file was there already (left as it is).
pub fn write_new(path: &Path, key: &SigningKey) -> Result<bool, Error> {
    let pem = to_pem(key)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}-{:016x}.tmp",
        path.file_name()
            .map_or_else(Default::default, |n| n.to_string_lossy()),
        std::process::id(),
        rand::random::<u64>(),
    ));
    let written = write_private(&tmp, pem.as_bytes()).and_then(|()| {
        // A hard link, unlike a rename, never replaces a file another process put there.
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io(path)(e)),
        }
    });
    let _ = std::fs::remove_file(&tmp);
    if written? {
        // The new name is durable too, not only the file's content.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        return Ok(true);
    }
    Ok(false)
}

/// A new file at `path` holding `bytes`, readable by its owner only, synced.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "k.pem";
    const LEGACY: &str = "k.pk8";

    fn public(key: &SigningKey) -> [u8; 32] {
        key.verifying_key().to_bytes()
    }

    /// Many threads, each loading the key of one fresh dir at once (through their own
    /// `load_or_create`, as separate processes would): every one ends with the same key, the
    /// one in the file, which is whole PEM; no temporary file is left behind.
    fn racers_agree(dir: &Path, racers: usize) -> Vec<Outcome> {
        let barrier = std::sync::Barrier::new(racers);
        let results: Vec<(SigningKey, Outcome)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..racers)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        load_or_create(dir, FILE, LEGACY).expect("a key for every racer")
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("no racer panics"))
                .collect()
        });
        let on_disk = read_pem(&dir.join(FILE))
            .expect("whole PEM")
            .expect("the key file");
        assert!(!results.is_empty());
        for (key, _) in &results {
            assert_eq!(
                public(key),
                public(&on_disk),
                "every racer uses the file's key"
            );
        }
        let names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| n == FILE || n == LEGACY),
            "only the key files remain: {names:?}"
        );
        results.into_iter().map(|(_, o)| o).collect()
    }

    #[test]
    fn racing_creators_end_with_one_key_that_all_use() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let outcomes = racers_agree(dir.path(), 8);
            let created = outcomes
                .iter()
                .filter(|o| matches!(o, Outcome::Created))
                .count();
            assert_eq!(created, 1, "exactly one racer made the key: {outcomes:?}");
        }
    }

    #[test]
    fn racing_migrations_end_with_the_legacy_key_in_the_pem_file() {
        let old = SigningKey::from_bytes(&[7; 32]);
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let der = old.to_pkcs8_der().unwrap();
            std::fs::write(dir.path().join(LEGACY), der.as_bytes()).unwrap();
            let outcomes = racers_agree(dir.path(), 8);
            let migrated = outcomes
                .iter()
                .filter(|o| matches!(o, Outcome::Migrated))
                .count();
            assert_eq!(
                migrated, 1,
                "exactly one racer wrote the PEM file: {outcomes:?}"
            );
            let pem = read_pem(&dir.path().join(FILE)).unwrap().unwrap();
            assert_eq!(public(&pem), public(&old), "the legacy key, migrated");
        }
    }

    #[test]
    fn the_file_is_owner_only_and_an_existing_one_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let first = SigningKey::from_bytes(&[1; 32]);
        assert!(write_new(&path, &first).unwrap());
        assert!(!write_new(&path, &SigningKey::from_bytes(&[2; 32])).unwrap());
        let (key, outcome) = load_or_create(dir.path(), FILE, LEGACY).unwrap();
        assert_eq!(public(&key), public(&first));
        assert!(
            matches!(
                outcome,
                Outcome::Loaded {
                    other_legacy: false
                }
            ),
            "{outcome:?}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
