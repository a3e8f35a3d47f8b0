//! The error of a start that fails: every variant is one line for the operator. Below
//! both the server (`state`, `app`) and the operator tools (`admin`) that open stores.

/// Errors that stop `kie serve` from starting, each one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] crate::store::OpenError),
    #[error("cannot open storage: {0}")]
    Blobs(#[from] crate::blobs::BlobError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("{0}")]
    Other(String),
}
