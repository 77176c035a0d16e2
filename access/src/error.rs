//! The gateway's error type: what the access layer, the API and the server report. The
//! store's conflicts, invalid input and configuration errors become the gateway's own (the
//! API maps them to 409, 400 and start-up errors); its backend failures stay the store's.

use std::net::SocketAddr;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Store(phr_store::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} for the {what}: {source}")]
    AddressInUse {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error("signing key: {0}")]
    Key(String),
    #[error("MQTT broker: {0}")]
    Broker(String),
    #[error("conflict: {0}")]
    Conflict(&'static str),
    #[error("invalid: {0}")]
    Invalid(&'static str),
    #[error("a gateway task stopped unexpectedly")]
    Poisoned,
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

impl From<phr_store::Error> for Error {
    fn from(e: phr_store::Error) -> Self {
        match e {
            phr_store::Error::Conflict(m) => Self::Conflict(m),
            phr_store::Error::Invalid(m) => Self::Invalid(m),
            phr_store::Error::Config(m) => Self::Config(m),
            phr_store::Error::Poisoned => Self::Poisoned,
            e @ phr_store::Error::Sqlite(_) => Self::Store(e),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
