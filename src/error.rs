//! The one error type of Kairos.
//!
//! Every fallible operation below the API returns [`Error`]. The variant decides
//! whose fault it is: the first five are the client's (bad input, missing or
//! conflicting state), [`Error::Unavailable`] means "try again, possibly
//! elsewhere", and [`Error::Internal`] is the node's own failure. The mapping to
//! gRPC status codes lives in `api/` and nowhere else.
//!
//! `Error` is serializable because the replicated state machine returns it as part
//! of a command's result: a stale-version update is refused identically on every
//! replica, and the refusal travels back to the node that proposed it.

use serde::{Deserialize, Serialize};

/// What went wrong, classified by who can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// The request itself is malformed; the message names the field and the problem.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named job (or run) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The id (or request id) is already taken by something else.
    #[error("{0}")]
    AlreadyExists(String),
    /// Optimistic concurrency failed: the stored version moved on.
    #[error("{0}")]
    Aborted(String),
    /// A bound was reached (e.g. the queue of runs waiting for a worker).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The cluster is not in a state that allows the operation (e.g. membership change in progress).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The node or cluster cannot serve right now (no leader, shutting down, unreachable
    /// leader). `leader` is the leader's address when known: between nodes its peer
    /// address, and once the error leaves the node for a client (`Node::write`,
    /// `Node::read_barrier`) its client API address, so clients can go there.
    #[error("{message}")]
    Unavailable {
        /// Human-readable reason.
        message: String,
        /// Address of the current leader, if this node knows it (see above).
        leader: Option<String>,
    },
    /// A bug or a local I/O failure on this node.
    #[error("internal error: {0}")]
    Internal(String),
    /// No credential, or one that is unknown, revoked or expired.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid credential without the permission (or outside its roles'
    /// scope); the message names the permission.
    #[error("{0}")]
    PermissionDenied(String),
}

impl Error {
    /// Shorthand for [`Error::Unavailable`] without a leader hint.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::Unavailable {
            message: message.into(),
            leader: None,
        }
    }

    /// The gRPC status code number of this error (as in `google.rpc.Code`),
    /// for audit entries, which record outcomes as numbers.
    pub fn code(&self) -> u32 {
        match self {
            Error::InvalidArgument(_) => 3,
            Error::NotFound(_) => 5,
            Error::AlreadyExists(_) => 6,
            Error::PermissionDenied(_) => 7,
            Error::ResourceExhausted(_) => 8,
            Error::FailedPrecondition(_) => 9,
            Error::Aborted(_) => 10,
            Error::Internal(_) => 13,
            Error::Unavailable { .. } => 14,
            Error::Unauthenticated(_) => 16,
        }
    }

    /// Shorthand for [`Error::Internal`] from anything printable.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        Error::Internal(err.to_string())
    }
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
