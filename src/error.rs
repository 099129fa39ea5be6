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
}

impl Error {
    /// Shorthand for [`Error::Unavailable`] without a leader hint.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::Unavailable {
            message: message.into(),
            leader: None,
        }
    }

    /// Shorthand for [`Error::Internal`] from anything printable.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        Error::Internal(err.to_string())
    }
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
