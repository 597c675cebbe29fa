//! The domain error every service returns. It names what went wrong, never how
//! to say it: `http::errors` maps it to status codes, JSON and HTML pages (once,
//! for every handler), the CLI prints its message.

use crate::lifecycle::SpawnError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request itself is wrong; the message says how.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    /// spawngate's store cannot be read or written (disk full, I/O errors): the
    /// operation did not happen; retry later. The detail is for operators.
    #[error("spawngate's state store is unavailable: {0}")]
    Storage(String),
    /// Something the operation needs (Docker, capacity) is not there right now.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What services return.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { .. } | StoreError::Contended { .. } => {
                Error::Conflict(e.to_string())
            }
            StoreError::Gone { what } => Error::NotFound(what),
            StoreError::NoFreePort { .. } => Error::Unavailable(e.to_string()),
            StoreError::Io(_) | StoreError::Locked { .. } | StoreError::Unavailable(_) => {
                Error::Storage(e.to_string())
            }
            StoreError::Corrupt { .. } => Error::Internal(e.to_string()),
        }
    }
}

impl From<SpawnError> for Error {
    fn from(e: SpawnError) -> Self {
        // Admins get the operator detail (once, when it is the message itself).
        let message = e.to_string();
        if message == e.detail() {
            Error::Unavailable(message)
        } else {
            Error::Unavailable(format!("{message}: {}", e.detail()))
        }
    }
}
