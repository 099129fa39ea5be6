//! What a worker needs to know: where the cluster is, who it is, what it
//! serves and at what pace. [`WorkerConfig`] is a plain struct with a
//! [`Default`]; [`WorkerConfig::validate`] checks it (and [`crate::Worker::run`]
//! calls it first).

use std::fmt;
use std::time::Duration;

use crate::error::WorkerError;

/// The longest wait `PollTask` honours; the node cuts longer ones to this.
pub(crate) const MAX_POLL_WAIT: Duration = Duration::from_secs(60);

/// The most tasks one registration may run at once (the protocol's bound).
pub(crate) const MAX_CAPACITY: u32 = 4096;

/// How a worker reaches the cluster and what it serves.
#[derive(Clone)]
pub struct WorkerConfig {
    /// gRPC addresses of cluster nodes, tried in order: `http://host:port`,
    /// `https://host:port`, or `host:port` (https with [`WorkerConfig::tls`],
    /// else http).
    pub endpoints: Vec<String>,
    /// The secret of a token holding `worker:connect` on the job types
    /// served; sent as `authorization: Bearer <secret>` on every call.
    pub token: Option<String>,
    /// TLS settings; `None`: plain text.
    pub tls: Option<TlsConfig>,
    /// Shown in `kairos worker list` (e.g. host/pid); need not be unique.
    pub worker_name: String,
    /// The job types served, registered (with their schemas) on every
    /// registration.
    pub job_types: Vec<JobTypeSpec>,
    /// Most tasks run at once (1 to 4096): the number of poll loops.
    pub capacity: u32,
    /// Longest wait of one `PollTask` (at most 60 s; cut to the cluster's
    /// heartbeat interval).
    pub poll_wait: Duration,
    /// Longest wait for a node's answer to any other call (and beyond
    /// `poll_wait` for a poll) before the node counts as unreachable.
    pub call_timeout: Duration,
    /// After shutdown, how long running handlers get to return and their
    /// results to be sent.
    pub shutdown_grace: Duration,
}

impl Default for WorkerConfig {
    /// No endpoints and no job types (fill both in); no token, no TLS; the
    /// name `kairos-worker/<pid>`; capacity 4; 30 s polls; 10 s call timeout
    /// and shutdown grace.
    fn default() -> Self {
        WorkerConfig {
            endpoints: Vec::new(),
            token: None,
            tls: None,
            worker_name: format!("kairos-worker/{}", std::process::id()),
            job_types: Vec::new(),
            capacity: 4,
            poll_wait: Duration::from_secs(30),
            call_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for WorkerConfig {
    /// Everything but the token's secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("endpoints", &self.endpoints)
            .field("token", &self.token.as_ref().map(|_| "<secret>"))
            .field("tls", &self.tls)
            .field("worker_name", &self.worker_name)
            .field("job_types", &self.job_types)
            .field("capacity", &self.capacity)
            .field("poll_wait", &self.poll_wait)
            .field("call_timeout", &self.call_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish()
    }
}

impl WorkerConfig {
    /// Checks what the worker can check before talking to the cluster: some
    /// endpoints and job types, a capacity in 1..=4096, non-zero waits. (Job
    /// type names and schemas are checked by the cluster, which refuses bad
    /// ones with `INVALID_ARGUMENT`.)
    pub fn validate(&self) -> Result<(), WorkerError> {
        let bad = |what: String| Err(WorkerError::Config(what));
        if self.endpoints.iter().all(|e| e.trim().is_empty()) {
            return bad("no endpoint given".into());
        }
        if self.job_types.is_empty() {
            return bad("no job type given".into());
        }
        if let Some(spec) = self.job_types.iter().find(|t| t.name.trim().is_empty()) {
            return bad(format!("a job type has an empty name ({spec:?})"));
        }
        if !(1..=MAX_CAPACITY).contains(&self.capacity) {
            return bad(format!("capacity {} is not in 1..={MAX_CAPACITY}", self.capacity));
        }
        if self.poll_wait.is_zero() || self.call_timeout.is_zero() {
            return bad("poll_wait and call_timeout must be more than zero".into());
        }
        if let Some(tls) = &self.tls {
            if tls.client_cert_pem.is_some() != tls.client_key_pem.is_some() {
                return bad("TLS: a client certificate needs its key, and a key its certificate".into());
            }
        }
        Ok(())
    }
}

/// TLS towards the nodes: the CA that signs their certificates and,
/// optionally, a client certificate to present.
#[derive(Clone, Default)]
pub struct TlsConfig {
    /// PEM of the CA certificate that signs the nodes' API certificates.
    pub ca_pem: Vec<u8>,
    /// PEM of the worker's client certificate (with `client_key_pem`).
    pub client_cert_pem: Option<Vec<u8>>,
    /// PEM of the private key of `client_cert_pem`.
    pub client_key_pem: Option<Vec<u8>>,
}

impl fmt::Debug for TlsConfig {
    /// Sizes only: never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("client_cert", &self.client_cert_pem.is_some())
            .field("client_key", &self.client_key_pem.as_ref().map(|_| "<secret>"))
            .finish()
    }
}

/// A job type the worker serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobTypeSpec {
    /// `[a-z0-9][a-z0-9._-]*`, at most 64 bytes; not a built-in type's name.
    pub name: String,
    /// Shown by `kairos type list` and `get`.
    pub description: String,
    /// A JSON Schema document every job payload of this type must satisfy;
    /// empty: any payload.
    pub payload_schema: String,
}

impl JobTypeSpec {
    /// A type with no description and no schema.
    pub fn new(name: impl Into<String>) -> Self {
        JobTypeSpec {
            name: name.into(),
            ..JobTypeSpec::default()
        }
    }

    /// With this description.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// With this payload JSON Schema (as text).
    pub fn with_payload_schema(mut self, schema: impl Into<String>) -> Self {
        self.payload_schema = schema.into();
        self
    }
}

impl From<&JobTypeSpec> for crate::proto::JobTypeSpec {
    fn from(spec: &JobTypeSpec) -> Self {
        crate::proto::JobTypeSpec {
            name: spec.name.clone(),
            description: spec.description.clone(),
            payload_schema: spec.payload_schema.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> WorkerConfig {
        WorkerConfig {
            endpoints: vec!["http://127.0.0.1:1".into()],
            job_types: vec![JobTypeSpec::new("a")],
            ..WorkerConfig::default()
        }
    }

    #[test]
    fn validate_names_what_is_missing() {
        assert!(valid().validate().is_ok());
        type Change = fn(&mut WorkerConfig);
        let cases: [(&str, Change); 5] = [
            ("no endpoint", |c| c.endpoints = vec![" ".into()]),
            ("no job type", |c| c.job_types.clear()),
            ("capacity 0", |c| c.capacity = 0),
            ("capacity 4097", |c| c.capacity = 4097),
            ("poll_wait", |c| c.poll_wait = Duration::ZERO),
        ];
        for (what, change) in cases {
            let mut config = valid();
            change(&mut config);
            let error = config.validate().expect_err(what).to_string();
            assert!(
                error.contains(what.split(' ').next().unwrap_or(what)),
                "{what}: {error}"
            );
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let config = WorkerConfig {
            token: Some("hunter2".into()),
            tls: Some(TlsConfig {
                ca_pem: b"ca".to_vec(),
                client_cert_pem: Some(b"cert".to_vec()),
                client_key_pem: Some(b"private-key".to_vec()),
            }),
            ..valid()
        };
        let text = format!("{config:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("private-key"),
            "{text}"
        );
    }
}
