//! Why [`crate::Worker::run`] returns early.

/// A reason the worker cannot go on. Transient trouble (a node down, a
/// dropped registration) is handled inside the worker and never surfaces
/// here.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The configuration is unusable (no endpoint, a capacity out of range,
    /// a token that cannot travel in a header...).
    #[error("worker configuration: {0}")]
    Config(String),
    /// An endpoint cannot be turned into a channel (a malformed address, or
    /// TLS settings tonic refuses).
    #[error("endpoint {endpoint:?}: {message}")]
    Endpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// What is wrong with it.
        message: String,
    },
    /// A node refused the worker in a way retrying cannot fix:
    /// `UNAUTHENTICATED` or `PERMISSION_DENIED` (the token), `INVALID_ARGUMENT`
    /// (a job type's name or schema), `UNIMPLEMENTED` (no worker service).
    #[error("{endpoint} refused the worker: {code:?}: {message}")]
    Rejected {
        /// The node's endpoint.
        endpoint: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
}
