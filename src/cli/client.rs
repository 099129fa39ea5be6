//! The client side of the CLI: which node to talk to, as whom, and how to print.
//!
//! Credentials: `--token` (or `KAIROS_TOKEN`), else the secret in
//! `--token-file` (or `KAIROS_TOKEN_FILE`), else — when talking to the
//! `kairos dev` endpoints (the default `--endpoints`) — the root token
//! `kairos dev` wrote to [`DEV_TOKEN_FILE`]. The secret travels as
//! `authorization: Bearer <secret>` on every call.
//!
//! [`Client::call`] tries the endpoints in order. A node that cannot be reached
//! (the connection failed, whatever status tonic gives that), or that answers
//! `UNAVAILABLE`, is skipped; if its answer names the leader
//! (`x-kairos-leader`), the leader is tried next. Every other status is final:
//! a validation error from one node would be the same from any other.
//!
//! TLS: with `--tls-ca` the client speaks TLS (https) and verifies each node's
//! certificate against that CA and the host of the endpoint's address; with
//! `--tls-cert` and `--tls-key` as well it presents a client certificate.
//! The files are read once, by [`Client::new`].

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use super::DEV_ENDPOINTS;
use crate::api::auth::AUTHORIZATION_HEADER;
use crate::api::{status_with_causes, LEADER_HEADER};

/// Where `kairos dev` writes the root token's secret (mode 0600), relative
/// to the directory it runs in.
pub const DEV_TOKEN_FILE: &str = "kairos-data/root.token";

/// Flags shared by every client command.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// Comma-separated gRPC addresses of cluster nodes.
    #[arg(long, env = "KAIROS_ENDPOINTS", default_value = DEV_ENDPOINTS, global = true)]
    pub endpoints: String,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// Give up on a request after this long (e.g. 10s, 1m).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,
    /// The secret of a token (`kairos acl token create` prints one).
    #[arg(long, env = "KAIROS_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding a token's secret (e.g. ./kairos-data/root.token).
    #[arg(long, env = "KAIROS_TOKEN_FILE", global = true)]
    pub token_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) that signs the nodes' API certificates: talk TLS and verify them.
    #[arg(long, env = "KAIROS_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) to present over TLS (with --tls-key and --tls-ca) [env: KAIROS_TLS_CERT=].
    // The variable is read by `client_tls`, not by clap: `kairos agent` has
    // a --tls-cert of its own (its server certificate) under the same id,
    // and clap would hand a global value taken from the environment to it.
    #[arg(long, global = true)]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert [env: KAIROS_TLS_KEY=].
    #[arg(long, global = true)]
    pub tls_key: Option<PathBuf>,
}

impl ClientArgs {
    /// The token secret to send, if any (see the module docs).
    pub fn secret(&self) -> anyhow::Result<Option<String>> {
        if let Some(token) = self.token.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
            return Ok(Some(token.to_string()));
        }
        let (path, given) = match &self.token_file {
            Some(path) => (path.clone(), true),
            None if self.endpoints == DEV_ENDPOINTS => (std::path::PathBuf::from(DEV_TOKEN_FILE), false),
            None => return Ok(None),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty())),
            Err(e) if given => anyhow::bail!("--token-file {}: {e}", path.display()),
            Err(_) => Ok(None),
        }
    }
}

/// The variables of the client certificate and key (see [`ClientArgs::tls_cert`]).
const TLS_CERT_ENV: &str = "KAIROS_TLS_CERT";
const TLS_KEY_ENV: &str = "KAIROS_TLS_KEY";

/// The client's TLS settings from `--tls-ca`, `--tls-cert` and `--tls-key`.
fn client_tls(args: &ClientArgs) -> anyhow::Result<Option<ClientTlsConfig>> {
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("--{flag} {}", path.display()))
    };
    let from_env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let cert = args.tls_cert.clone().or_else(|| from_env(TLS_CERT_ENV));
    let key = args.tls_key.clone().or_else(|| from_env(TLS_KEY_ENV));
    let identity = match (&cert, &key) {
        (Some(cert), Some(key)) => Some(Identity::from_pem(read("tls-cert", cert)?, read("tls-key", key)?)),
        (None, None) => None,
        (Some(_), None) => anyhow::bail!("--tls-key: required with --tls-cert"),
        (None, Some(_)) => anyhow::bail!("--tls-cert: required with --tls-key"),
    };
    let Some(ca) = &args.tls_ca else {
        anyhow::ensure!(
            identity.is_none(),
            "--tls-ca: required with --tls-cert (the CA that signs the nodes' certificates)"
        );
        return Ok(None);
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("tls-ca", ca)?));
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Ok(Some(tls))
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned, human-readable.
    Table,
    /// The protobuf JSON mapping (stable field names), pretty-printed.
    Json,
}

/// A connection-less client of a Kairos cluster.
pub struct Client {
    endpoints: Vec<String>,
    timeout: Duration,
    /// `Bearer <secret>`, when a token was given.
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// TLS settings, with `--tls-ca`.
    tls: Option<ClientTlsConfig>,
}

impl Client {
    /// A client for the given flags.
    pub fn new(args: &ClientArgs) -> anyhow::Result<Client> {
        let endpoints: Vec<String> = args
            .endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            anyhow::bail!("--endpoints: no address given");
        }
        let authorization = match args.secret()? {
            Some(secret) => Some(
                format!("Bearer {secret}")
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--token: not a valid token secret"))?,
            ),
            None => None,
        };
        Ok(Client {
            endpoints,
            timeout: args.timeout,
            authorization,
            tls: client_tls(args)?,
        })
    }

    /// Wraps a message in a request carrying the credential and deadline.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = self.stream_request(message);
        request.set_timeout(self.timeout);
        request
    }

    /// A request for a long-lived stream: the credential, but no deadline.
    pub fn stream_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = &self.authorization {
            request.metadata_mut().insert(AUTHORIZATION_HEADER, value.clone());
        }
        request
    }

    /// How long a request may take (`--timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The addresses given with `--endpoints`, in order.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// A lazily connecting channel to `addr`: https with `--tls-ca`, else http.
    pub fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let bad = |e: &dyn std::fmt::Display| Status::invalid_argument(format!("--endpoints: {addr:?}: {e}"));
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| bad(&e))?
            .connect_timeout(Duration::from_secs(2));
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|e| bad(&e))?;
        }
        Ok(endpoint.connect_lazy())
    }

    /// `status` from a failed call to `addr` as `UNAVAILABLE`, with the
    /// connection's errors and, when plain text may have met a TLS listener,
    /// a hint.
    fn unreachable(&self, addr: &str, status: &Status) -> Status {
        let mut message = format!("{addr}: {}", status_with_causes(status));
        if self.tls.is_none() && is_transport_failure(status) {
            message.push_str(" (if the node serves TLS, give --tls-ca)");
        }
        Status::unavailable(message)
    }

    /// Sends `message` through `rpc` (a generated client method wrapped in a
    /// closure) to the first endpoint that gives a definite answer.
    pub async fn send<M, T, F, Fut>(&self, message: &M, rpc: F) -> Result<T, Status>
    where
        M: Clone,
        F: Fn(Channel, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call(|channel| rpc(channel, self.request(message.clone())))
            .await
    }

    /// Calls `f` against the endpoints until one gives a definite answer.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut queue: Vec<String> = self.endpoints.clone();
        let mut tried = Vec::new();
        let mut last_error = Status::unavailable("no endpoint answered");
        while let Some(addr) = (!queue.is_empty()).then(|| queue.remove(0)) {
            if tried.contains(&addr) {
                continue;
            }
            tried.push(addr.clone());
            match f(self.channel(&addr)?).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) if status.code() == Code::Unavailable || is_transport_failure(&status) => {
                    if let Some(leader) = status.metadata().get(LEADER_HEADER).and_then(|v| v.to_str().ok()) {
                        queue.insert(0, leader.to_string());
                    }
                    last_error = self.unreachable(&addr, &status);
                }
                Err(status) => return Err(status),
            }
        }
        Err(last_error)
    }
}

/// Whether `status` comes from the connection (tonic attaches the error
/// under it) rather than from a node's answer (decoded from the reply).
fn is_transport_failure(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// One line describing a failed call: the status code and message.
pub fn describe(status: &Status) -> String {
    let message = status.message().lines().next().unwrap_or("").to_string();
    format!("{:?}: {message}", status.code())
}

/// A failed call as the CLI's error: [`describe`]'s one line.
pub fn fail(status: Status) -> anyhow::Error {
    anyhow::anyhow!(describe(&status))
}
