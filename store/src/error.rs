//! The store's error: what a caller can act on (a conflict, invalid input, a store from
//! another version) apart from the backend failing.

/// An error of the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SQLite backend failed (I/O, a full disk, a corrupt file, a busy timeout).
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The store cannot be opened as configured (a missing file, another schema version).
    #[error("configuration: {0}")]
    Config(String),
    /// The change conflicts with what is stored (an existing key, another bridge key).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// The input breaks a rule of the store (an empty range, an unknown device).
    #[error("invalid: {0}")]
    Invalid(&'static str),
    /// A lock was poisoned by a panic in another thread.
    #[error("a store lock was poisoned")]
    Poisoned,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
