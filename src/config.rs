//! Agent configuration: flags, then `KAIROS_*` environment variables, then a
//! TOML file (`--config`), then defaults — the first one that sets a value wins.
//!
//! The TOML file uses the flag names in snake_case, e.g.
//!
//! ```toml
//! node_id = 1
//! data_dir = "/var/lib/kairos"
//! grpc_addr = "10.0.0.1:7101"
//! peer_addr = "10.0.0.1:7401"
//! initial_cluster = "1=10.0.0.1:7401,2=10.0.0.2:7401,3=10.0.0.3:7401"
//! cluster_cookie_file = "/etc/kairos/cookie"
//! ```
//!
//! Unknown keys in the file are an error, so a typo does not silently fall back
//! to a default.
//!
//! The cluster cookie is the one setting that never comes from a flag (a
//! command line is readable by every local user): it comes from
//! `KAIROS_CLUSTER_COOKIE`, the file named by `--cluster-cookie-file`, or the
//! `cluster_cookie` key of the `--config` file, and must be at least
//! [`MIN_SECRET_BYTES`] bytes long.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use crate::actors::limits::parse_type_limits;
use crate::actors::LeaderSettings;
use crate::dial::DialMap;
use crate::error::{Error, Result};
use crate::handlers::egress::{self, EgressPolicy};
use crate::handlers::Registry;
use crate::raft::{NodeId, RaftTuning};
use crate::tls::TlsFiles;
use crate::transport::secret::{ClusterSecret, MIN_SECRET_BYTES};

/// The variable the cluster cookie may come from.
pub const COOKIE_ENV: &str = "KAIROS_CLUSTER_COOKIE";

/// The variable the root token's secret may come from (instead of
/// `--bootstrap-token-file`).
pub const BOOTSTRAP_TOKEN_ENV: &str = "KAIROS_BOOTSTRAP_TOKEN";

/// The shortest root token secret the agent accepts, characters.
pub const MIN_BOOTSTRAP_TOKEN_CHARS: usize = 32;

/// The longest root token secret the agent accepts, characters.
pub const MAX_BOOTSTRAP_TOKEN_CHARS: usize = 1024;

/// Output format of the node's logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

macro_rules! agent_settings {
    ($( $(#[cfg($cfg:meta)])? $(#[doc = $doc:literal])* $field:ident : $ty:ty, env = $env:literal $([$($extra:tt)*])?; )*) => {
        /// `kairos agent` flags. Every flag can also come from the environment
        /// variable named in its help, or from the `--config` file.
        #[derive(clap::Args, Clone, Debug, Default)]
        pub struct AgentArgs {
            /// TOML file with the same settings (snake_case keys).
            #[arg(long, env = "KAIROS_CONFIG")]
            pub config: Option<PathBuf>,
            $( $(#[cfg($cfg)])? $(#[doc = $doc])* #[arg(long, env = $env $(, $($extra)*)?)] pub $field: Option<$ty>, )*
            /// Refused: a secret on a command line is readable by every local
            /// user. Kept (hidden) to say so instead of "unknown argument".
            #[arg(long = "cluster-cookie", hide = true)]
            pub cluster_cookie_flag: Option<String>,
            /// The cluster cookie from [`COOKIE_ENV`] or the `--config`
            /// file's `cluster_cookie` (never a flag; see the module doc).
            #[arg(skip)]
            pub cluster_cookie: Option<String>,
            /// Recovery from a lost majority: before starting, make this node's data a one-node cluster
            /// of itself holding everything its log holds, then run normally (see README "Disaster
            /// recovery"). A flag or KAIROS_FORCE_NEW_CLUSTER only, never a config file key.
            #[arg(long, env = "KAIROS_FORCE_NEW_CLUSTER", num_args = 0..=1, default_missing_value = "true")]
            pub force_new_cluster: Option<bool>,
            /// The root token's secret from [`BOOTSTRAP_TOKEN_ENV`] (never a
            /// flag, never the `--config` file; see `--bootstrap-token-file`).
            #[arg(skip)]
            pub bootstrap_token: Option<String>,
            /// Deliberately break this node (the chaos suite's test of its
            /// checkers; see `crate::chaos_break`). A flag only: no variable, no file key.
            #[cfg(feature = "chaos-break")]
            #[arg(long, hide = true, value_enum)]
            pub unsafe_chaos_break: Option<crate::chaos_break::ChaosBreak>,
        }

        /// The settings a `--config` file may hold.
        #[derive(Deserialize, Debug, Default)]
        #[serde(deny_unknown_fields)]
        struct FileSettings {
            $( $(#[cfg($cfg)])? $field: Option<$ty>, )*
            cluster_cookie: Option<String>,
        }

        impl AgentArgs {
            /// Fills every setting not given as a flag or variable from the file.
            fn merge(mut self, file: FileSettings) -> AgentArgs {
                $( $(#[cfg($cfg)])? if self.$field.is_none() { self.$field = file.$field; } )*
                if self.cluster_cookie.is_none() { self.cluster_cookie = file.cluster_cookie; }
                self
            }
        }
    };
}

agent_settings! {
    /// Unique, never reused id of this node (positive integer).
    node_id: NodeId, env = "KAIROS_NODE_ID";
    /// Take the node id from this host's name instead of --node-id: `NAME-<n>` (a StatefulSet pod, e.g. `kairos-0`) is node n+1.
    node_id_from_hostname: bool, env = "KAIROS_NODE_ID_FROM_HOSTNAME" [num_args = 0..=1, default_missing_value = "true"];
    /// Directory of this node's log and state (default ./kairos-data/node-<id>).
    data_dir: PathBuf, env = "KAIROS_DATA_DIR";
    /// gRPC listen address for clients: jobs, runs, cluster (default 127.0.0.1:7101).
    grpc_addr: String, env = "KAIROS_GRPC_ADDR";
    /// Listen address for other nodes only: Raft, forwarded writes, probes (default 127.0.0.1:7401).
    peer_addr: String, env = "KAIROS_PEER_ADDR";
    /// HTTP listen address for /livez, /readyz, /metrics (default 127.0.0.1:7201).
    http_addr: String, env = "KAIROS_HTTP_ADDR";
    /// Worker-cluster (ractor_cluster) listen address (default 127.0.0.1:7301).
    cluster_addr: String, env = "KAIROS_CLUSTER_ADDR";
    /// Peer address other nodes reach this node at (default: its --initial-cluster entry, else --peer-addr).
    advertise_addr: String, env = "KAIROS_ADVERTISE_ADDR";
    /// Client API address clients are sent to (leader hints, cluster status) (default --grpc-addr; when that listens on 0.0.0.0 or ::, the host of the advertised peer address with --grpc-addr's port).
    advertise_client_addr: String, env = "KAIROS_ADVERTISE_CLIENT_ADDR";
    /// Members of a new cluster, `id=host:port,...` (peer addresses); same on every node.
    initial_cluster: String, env = "KAIROS_INITIAL_CLUSTER";
    /// File holding the cluster cookie, the shared secret of peers and the worker network
    /// (at least 16 bytes; or set KAIROS_CLUSTER_COOKIE; one of them is required).
    cluster_cookie_file: PathBuf, env = "KAIROS_CLUSTER_COOKIE_FILE";
    /// File holding the root token's secret (32 to 1024 visible ASCII characters; or set KAIROS_BOOTSTRAP_TOKEN): the leader bootstraps the ACL with it once, if nobody has.
    bootstrap_token_file: PathBuf, env = "KAIROS_BOOTSTRAP_TOKEN_FILE";
    /// This node's certificate (PEM) for mutual TLS between nodes; with --peer-tls-key and --peer-tls-ca.
    peer_tls_cert: PathBuf, env = "KAIROS_PEER_TLS_CERT";
    /// Private key (PEM) of --peer-tls-cert.
    peer_tls_key: PathBuf, env = "KAIROS_PEER_TLS_KEY";
    /// CA certificates (PEM) that sign every node's peer certificate.
    peer_tls_ca: PathBuf, env = "KAIROS_PEER_TLS_CA";
    /// Serve the client API over TLS with this certificate (PEM); with --tls-key.
    tls_cert: PathBuf, env = "KAIROS_API_TLS_CERT";
    /// Private key (PEM) of --tls-cert.
    tls_key: PathBuf, env = "KAIROS_API_TLS_KEY";
    /// Ask API clients for a certificate (optional for them) and verify it against these CAs (PEM).
    tls_client_ca: PathBuf, env = "KAIROS_API_TLS_CLIENT_CA";
    /// Worker actors on this node (default 4 x CPU cores).
    workers: usize, env = "KAIROS_WORKERS";
    /// Enable the `exec` job type on this node (runs programs; off by default).
    allow_exec: bool, env = "KAIROS_ALLOW_EXEC" [num_args = 0..=1, default_missing_value = "true"];
    /// Destinations the `http` job type may call, comma-separated: CIDR blocks (`10.0.0.0/8`), IPs, host names, `*.example.com`, `public` (every address but loopback, link-local, unspecified, multicast, broadcast and this node's listeners) and `loopback` (default `public`).
    http_allow: String, env = "KAIROS_HTTP_ALLOW";
    /// Cluster-wide limits per job type, enforced by the leader (give every node the same):
    /// `TYPE:concurrency=N,rate=R,burst=B;...`, e.g. `http:concurrency=20,rate=50`.
    type_limits: String, env = "KAIROS_TYPE_LIMITS";
    #[cfg(feature = "test-handlers")]
    /// Register test-only job types (`panic`); for the project's own tests.
    test_handlers: bool, env = "KAIROS_TEST_HANDLERS" [hide = true, num_args = 0..=1, default_missing_value = "true"];
    /// Rewrite peer addresses when dialing, `from=to,...` (a test harness's proxies).
    dial_map: String, env = "KAIROS_DIAL_MAP" [hide = true];
    /// Log output: text or json.
    log_format: LogFormat, env = "KAIROS_LOG_FORMAT";
    /// Raft leader heartbeat period in ms (default 50).
    heartbeat_ms: u64, env = "KAIROS_HEARTBEAT_MS";
    /// Raft minimum election timeout in ms (default 250; the maximum is twice it).
    election_timeout_ms: u64, env = "KAIROS_ELECTION_TIMEOUT_MS";
    /// Build a snapshot after this many applied changes (each request, fire, start, result or expiry of an entry), and not before a quarter as many as the state holds jobs and runs; node N waits 20 % × (N mod 3) longer, so the nodes do not build at once (default 10000).
    snapshot_logs: u64, env = "KAIROS_SNAPSHOT_LOGS";
    /// Log entries kept behind a snapshot for slow followers (default 1000).
    snapshot_keep_logs: u64, env = "KAIROS_SNAPSHOT_KEEP_LOGS";
    /// Turn authentication and authorization off: every caller may do anything, as `anonymous` (logged as a warning at start, shown in `kairos cluster status`). Calls are still audited. For trying Kairos out only.
    insecure_disable_auth: bool, env = "KAIROS_INSECURE_DISABLE_AUTH" [num_args = 0..=1, default_missing_value = "true"];
    /// Record allowed reads in the audit log too (refused calls and every write always are).
    audit_reads: bool, env = "KAIROS_AUDIT_READS" [num_args = 0..=1, default_missing_value = "true"];
    /// Audit entries this node keeps; older ones are dropped, the newest dropped one's hash kept as the chain's anchor (default 1000000).
    audit_retain: u64, env = "KAIROS_AUDIT_RETAIN";
    /// Export traces over OTLP/gRPC to this collector, e.g. `http://127.0.0.1:4317` (default: off, no spans made).
    otlp_endpoint: String, env = "OTEL_EXPORTER_OTLP_ENDPOINT";
    /// Share of the traces starting on this node that are exported, 0 to 1; a call carrying a sampled `traceparent` is always traced (default 1).
    trace_sampling: f64, env = "OTEL_TRACES_SAMPLER_ARG";
    /// `service.name` of the exported spans (default `kairos`).
    trace_service_name: String, env = "OTEL_SERVICE_NAME";
    /// Commit and dispatch fires up to this many ms before their nominal time, so handlers begin on time (default 100, at most 1000; 0 fires at the nominal time). Give every node the same.
    fire_ahead_ms: u64, env = "KAIROS_FIRE_AHEAD_MS";
    /// Watch streams (`WatchRuns`, `WatchEvents`, REST `:watch`) this node serves at once; one more is refused with RESOURCE_EXHAUSTED (default 1024).
    max_watches: usize, env = "KAIROS_MAX_WATCHES";
    /// Client calls (gRPC and REST, not counting watches, workers and health checks) this node serves at once; one more is refused at once with RESOURCE_EXHAUSTED (default 1024).
    max_requests: usize, env = "KAIROS_MAX_REQUESTS";
    /// Jobs that get a `job` label of their own in /metrics: the N oldest (by creation time, then id); every other job is counted under `job="_other"` (default 1000; 0 puts every job there).
    metrics_job_limit: usize, env = "KAIROS_METRICS_JOB_LIMIT";
    /// On SIGTERM, how long a leader tries to hand leadership over before it stops anyway (default 2000; 0 stops at once, without a handover).
    handover_timeout_ms: u64, env = "KAIROS_HANDOVER_TIMEOUT_MS";
}

/// A node's complete, validated configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Client API (gRPC) listen address.
    pub grpc_addr: SocketAddr,
    /// Peer listen address.
    pub peer_addr: SocketAddr,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// Worker-cluster listen address (used by the scheduling engine).
    pub cluster_addr: SocketAddr,
    /// Peer address other nodes reach this node at.
    pub advertise_addr: String,
    /// Client API address clients are sent to.
    pub advertise_client_addr: String,
    /// Members of a new cluster (id → peer address); empty to wait to be added.
    pub initial_cluster: BTreeMap<NodeId, String>,
    /// The cluster cookie: authenticates peers (without peer TLS) and the worker network.
    pub cluster_secret: ClusterSecret,
    /// The root token to bootstrap the ACL with, when given
    /// (`--bootstrap-token-file`, [`BOOTSTRAP_TOKEN_ENV`]).
    pub bootstrap_token: Option<BootstrapToken>,
    /// Peer mutual TLS files, when configured.
    pub peer_tls: Option<TlsFiles>,
    /// Client API TLS, when configured.
    pub api_tls: Option<ApiTlsFiles>,
    /// Worker actors on this node.
    pub workers: usize,
    /// Whether the `exec` handler is enabled.
    pub allow_exec: bool,
    /// Where the `http` job type may call (`--http-allow`).
    pub http_allow: Arc<EgressPolicy>,
    /// What the leader-only actors need: type limits and the fire look-ahead.
    pub leader: LeaderSettings,
    /// Whether test-only job types are registered.
    #[cfg(feature = "test-handlers")]
    pub test_handlers: bool,
    /// Peer address rewrites (see [`crate::dial`]).
    pub dial_map: DialMap,
    /// Log format.
    pub log_format: LogFormat,
    /// Raft timing and compaction.
    pub tuning: RaftTuning,
    /// How callers are checked.
    pub auth: crate::api::auth::AuthSettings,
    /// Audit entries kept (`--audit-retain`).
    pub audit_retain: u64,
    /// Trace export (`--otlp-endpoint`), when configured.
    pub traces: Option<crate::telemetry::TraceSettings>,
    /// Jobs with a `job` label of their own in `/metrics` (`--metrics-job-limit`).
    pub metrics_job_limit: usize,
    /// Watch streams served at once (`--max-watches`).
    pub max_watches: usize,
    /// Client calls served at once (`--max-requests`).
    pub max_requests: usize,
    /// How long a stopping leader tries to hand over (`--handover-timeout-ms`).
    pub handover_timeout: std::time::Duration,
    /// The deliberately broken build's setting (`--unsafe-chaos-break`).
    #[cfg(feature = "chaos-break")]
    pub chaos_break: Option<crate::chaos_break::ChaosBreak>,
    /// `--force-new-cluster` (see `crate::backup::force`).
    pub force_new_cluster: bool,
}

/// The client API's TLS files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiTlsFiles {
    /// `--tls-cert`.
    pub cert: PathBuf,
    /// `--tls-key`.
    pub key: PathBuf,
    /// `--tls-client-ca`: ask for (optional) client certificates signed by it.
    pub client_ca: Option<PathBuf>,
}

/// A root token secret given to the agent, and where it came from. `Debug`
/// shows only the source.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    secret: String,
    source: String,
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BootstrapToken(from {})", self.source)
    }
}

impl BootstrapToken {
    /// A root token secret from `value`, checked (naming `source`): 32 to
    /// 1024 visible ASCII characters, since it travels as an HTTP header.
    pub fn new(value: String, source: &str) -> Result<BootstrapToken> {
        let chars = value.chars().count();
        if !(MIN_BOOTSTRAP_TOKEN_CHARS..=MAX_BOOTSTRAP_TOKEN_CHARS).contains(&chars) {
            return Err(Error::InvalidArgument(format!(
                "{source}: the root token is {chars} characters long; it must have \
                 {MIN_BOOTSTRAP_TOKEN_CHARS} to {MAX_BOOTSTRAP_TOKEN_CHARS} (e.g. `openssl rand -hex 32`)"
            )));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidArgument(format!(
                "{source}: the root token may hold only visible ASCII characters \
                 (no spaces or control characters): it is sent as an `authorization` header"
            )));
        }
        Ok(BootstrapToken {
            secret: value,
            source: source.to_string(),
        })
    }

    /// The secret.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Where it came from: `--bootstrap-token-file FILE` or [`BOOTSTRAP_TOKEN_ENV`].
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// The root token from [`BOOTSTRAP_TOKEN_ENV`] (already in `value`; empty
/// counts as unset) or `--bootstrap-token-file` (one trailing newline
/// dropped); at most one of them; none is fine.
fn bootstrap_token(value: Option<String>, file: Option<&std::path::Path>) -> Result<Option<BootstrapToken>> {
    match (value.filter(|v| !v.is_empty()), file) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(Error::InvalidArgument(format!(
            "--bootstrap-token-file: the root token is also set in {BOOTSTRAP_TOKEN_ENV}; give one"
        ))),
        (Some(value), None) => BootstrapToken::new(value, BOOTSTRAP_TOKEN_ENV).map(Some),
        (None, Some(path)) => {
            let source = format!("--bootstrap-token-file {}", path.display());
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::InvalidArgument(format!("{source}: {e}")))?;
            warn_if_readable_by_others(path, "the root token file");
            let value = text
                .strip_suffix("\r\n")
                .or_else(|| text.strip_suffix('\n'))
                .unwrap_or(&text);
            BootstrapToken::new(value.to_string(), &source).map(Some)
        }
    }
}

/// Logs a warning when the secret file at `path` is readable by group or others.
fn warn_if_readable_by_others(path: &std::path::Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %path.display(), "{what} is readable by other users; make it 0600");
        }
    }
}

/// `--node-id`, or with `--node-id-from-hostname` the id [`node_id_from_host_name`]
/// reads from the name `host_name` gives; exactly one of them.
fn node_id(
    given: Option<NodeId>,
    from_hostname: bool,
    host_name: impl FnOnce() -> Result<String>,
) -> Result<NodeId> {
    let node_id = match (given, from_hostname) {
        (Some(_), true) => {
            return Err(Error::InvalidArgument(
                "--node-id-from-hostname: --node-id is also given; give one".into(),
            ))
        }
        (None, true) => node_id_from_host_name(&host_name()?)?,
        (Some(id), false) => id,
        (None, false) => {
            return Err(Error::InvalidArgument(
                "--node-id: required (or --node-id-from-hostname)".into(),
            ))
        }
    };
    if node_id == 0 {
        return Err(Error::InvalidArgument(
            "--node-id: must be a positive integer".into(),
        ));
    }
    Ok(node_id)
}

/// The node id a host name stands for: its first label (the part before
/// the first `.`) ends in `-<n>`, a StatefulSet pod's ordinal, and the
/// node is `n + 1` (ids start at 1, ordinals at 0): `kairos-0` is node 1,
/// `kairos-2.kairos-peers.prod.svc.cluster.local` node 3.
pub fn node_id_from_host_name(host: &str) -> Result<NodeId> {
    let bad = || {
        Error::InvalidArgument(format!(
            "--node-id-from-hostname: host name {host:?} does not end in -<ordinal> \
             (a StatefulSet pod's name: kairos-0 is node 1, kairos-1 node 2)"
        ))
    };
    let label = host.trim().split('.').next().unwrap_or_default();
    let (name, ordinal) = label.rsplit_once('-').ok_or_else(bad)?;
    if name.is_empty() || ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    ordinal
        .parse::<NodeId>()
        .ok()
        .and_then(|n| n.checked_add(1))
        .ok_or_else(bad)
}

/// This host's name (`uname -n`).
fn host_name() -> Result<String> {
    let name = nix::sys::utsname::uname()
        .map_err(|e| Error::InvalidArgument(format!("--node-id-from-hostname: uname: {e}")))?
        .nodename()
        .to_string_lossy()
        .into_owned();
    Ok(name)
}

/// The address others reach a listener on `listen` at: `listen` itself,
/// or, when it listens on every interface (`0.0.0.0`, `::`), the host of
/// `advertised` (another address of the node others are told) with
/// `listen`'s port — unless that host is itself unspecified.
fn reachable_addr(listen: SocketAddr, advertised: &str) -> String {
    if !listen.ip().is_unspecified() {
        return listen.to_string();
    }
    match advertised.rsplit_once(':') {
        Some((host, _)) if !host.is_empty() && !is_unspecified_host(host) => {
            format!("{host}:{}", listen.port())
        }
        _ => listen.to_string(),
    }
}

/// Whether `host` (an address's host part, maybe `[...]`) is `0.0.0.0` or `::`.
fn is_unspecified_host(host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
}

/// The cluster cookie from the environment (already in `cookie`), the
/// `--config` file (likewise) or `--cluster-cookie-file`; exactly one.
fn cluster_secret(
    cookie: Option<String>,
    file: Option<&std::path::Path>,
    flag: Option<&str>,
) -> Result<ClusterSecret> {
    if flag.is_some() {
        return Err(Error::InvalidArgument(format!(
            "--cluster-cookie: a secret on the command line is readable by every local user; \
             put it in a file (mode 0600) named by --cluster-cookie-file, or in {COOKIE_ENV}"
        )));
    }
    match (cookie.filter(|c| !c.is_empty()), file) {
        (Some(_), Some(_)) => Err(Error::InvalidArgument(format!(
            "--cluster-cookie-file: the cluster cookie is also set ({COOKIE_ENV} or the config file's \
             cluster_cookie); give one"
        ))),
        (Some(cookie), None) => ClusterSecret::new(cookie, COOKIE_ENV),
        (None, Some(path)) => ClusterSecret::from_file(path),
        (None, None) => Err(Error::InvalidArgument(format!(
            "--cluster-cookie-file: required, or {COOKIE_ENV} (the cluster's shared secret, \
             at least {MIN_SECRET_BYTES} bytes)"
        ))),
    }
}

/// `--peer-tls-*`: all three, or none.
fn peer_tls(cert: Option<PathBuf>, key: Option<PathBuf>, ca: Option<PathBuf>) -> Result<Option<TlsFiles>> {
    match (cert, key, ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles { cert, key, ca })),
        (cert, key, ca) => {
            let missing: Vec<&str> = [
                ("--peer-tls-cert", cert.is_none()),
                ("--peer-tls-key", key.is_none()),
                ("--peer-tls-ca", ca.is_none()),
            ]
            .into_iter()
            .filter_map(|(flag, missing)| missing.then_some(flag))
            .collect();
            Err(Error::InvalidArgument(format!(
                "{}: required with the other --peer-tls-* flags (peer TLS takes a certificate, its key and the CA)",
                missing.join(", ")
            )))
        }
    }
}

/// `--tls-cert`, `--tls-key` (both or neither) and `--tls-client-ca` (only with them).
fn api_tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<ApiTlsFiles>> {
    match (cert, key, client_ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), client_ca) => Ok(Some(ApiTlsFiles { cert, key, client_ca })),
        (None, _, Some(_)) => Err(Error::InvalidArgument(
            "--tls-client-ca: needs --tls-cert and --tls-key (client certificates are asked for over TLS)"
                .into(),
        )),
        (Some(_), None, _) => Err(Error::InvalidArgument(
            "--tls-key: required with --tls-cert".into(),
        )),
        (None, Some(_), _) => Err(Error::InvalidArgument(
            "--tls-cert: required with --tls-key".into(),
        )),
    }
}

fn socket_addr(flag: &str, value: &str) -> Result<SocketAddr> {
    value
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("--{flag}: {value:?} is not an ip:port address ({e})")))
}

/// Parses `1=127.0.0.1:7101,2=127.0.0.1:7102`.
pub fn parse_initial_cluster(value: &str) -> Result<BTreeMap<NodeId, String>> {
    let mut members = BTreeMap::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || Error::InvalidArgument(format!("--initial-cluster: {part:?} is not id=host:port"));
        let (id, addr) = part.split_once('=').ok_or_else(bad)?;
        let id: NodeId = id.trim().parse().map_err(|_| bad())?;
        let addr = addr.trim();
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if id == 0 || !port_ok {
            return Err(bad());
        }
        if members.insert(id, addr.to_string()).is_some() {
            return Err(Error::InvalidArgument(format!(
                "--initial-cluster: node id {id} appears twice"
            )));
        }
    }
    Ok(members)
}

/// `--workers`, defaulting to four per CPU core.
fn workers(given: Option<usize>) -> Result<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = given.unwrap_or(4 * cores);
    if workers == 0 || workers > 10_000 {
        return Err(Error::InvalidArgument(format!(
            "--workers: {workers} is not in 1..=10000"
        )));
    }
    Ok(workers)
}

/// `--http-allow` (default `public`) for a node listening on `listeners`
/// and advertised at `advertise_addr` (its address is the node's own too
/// when it is an IP address).
fn http_allow(
    given: Option<&str>,
    listeners: &[SocketAddr],
    advertise_addr: &str,
) -> Result<Arc<EgressPolicy>> {
    let mut own = listeners.to_vec();
    own.extend(advertise_addr.parse::<SocketAddr>().ok());
    EgressPolicy::parse(given.unwrap_or(egress::DEFAULT_ALLOW), &own)
        .map(Arc::new)
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", egress::FLAG)))
}

/// `--type-limits` (of known job types) and `--fire-ahead-ms`.
fn leader_settings(type_limits: Option<&str>, fire_ahead_ms: Option<u64>) -> Result<LeaderSettings> {
    let type_limits = parse_type_limits(type_limits.unwrap_or(""))?;
    // A type that is not built in may be one external workers register
    // later; its name must at least be a valid type name.
    let registry = Registry::builtin(true);
    for job_type in type_limits.keys().filter(|t| !registry.is_builtin(t)) {
        crate::scheduler::job_type::validate_type_name(job_type, |_| false)
            .map_err(|e| Error::InvalidArgument(format!("--type-limits: {e}")))?;
    }
    let fire_ahead_ms = fire_ahead_ms.unwrap_or(LeaderSettings::default().fire_ahead.as_millis() as u64);
    if fire_ahead_ms > crate::scheduler::MAX_FIRE_AHEAD_MS as u64 {
        return Err(Error::InvalidArgument(format!(
            "--fire-ahead-ms: {fire_ahead_ms} is not in 0..={}",
            crate::scheduler::MAX_FIRE_AHEAD_MS
        )));
    }
    Ok(LeaderSettings {
        type_limits,
        fire_ahead: std::time::Duration::from_millis(fire_ahead_ms),
        #[cfg(feature = "chaos-break")]
        chaos_break: None,
    })
}

impl AgentConfig {
    /// Resolves flags, environment, file and defaults into a configuration.
    pub fn resolve(mut args: AgentArgs) -> Result<AgentConfig> {
        if args.cluster_cookie.is_none() {
            args.cluster_cookie = std::env::var(COOKIE_ENV).ok();
        }
        if args.bootstrap_token.is_none() {
            args.bootstrap_token = std::env::var(BOOTSTRAP_TOKEN_ENV).ok();
        }
        let args = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::InvalidArgument(format!("--config {}: {e}", path.display())))?;
                if text
                    .parse::<toml::Table>()
                    .is_ok_and(|t| t.contains_key("force_new_cluster"))
                {
                    return Err(Error::InvalidArgument(format!(
                        "--config {}: force_new_cluster is not a config file setting (a file would \
                         force again at every start): give --force-new-cluster or \
                         KAIROS_FORCE_NEW_CLUSTER for the one start that needs it",
                        path.display()
                    )));
                }
                let file: FileSettings = toml::from_str(&text)
                    .map_err(|e| Error::InvalidArgument(format!("--config {}: {e}", path.display())))?;
                args.clone().merge(file)
            }
            None => args,
        };
        let node_id = node_id(
            args.node_id,
            args.node_id_from_hostname.unwrap_or(false),
            host_name,
        )?;
        let grpc_addr = socket_addr("grpc-addr", args.grpc_addr.as_deref().unwrap_or("127.0.0.1:7101"))?;
        let peer_addr = socket_addr("peer-addr", args.peer_addr.as_deref().unwrap_or("127.0.0.1:7401"))?;
        if peer_addr == grpc_addr {
            return Err(Error::InvalidArgument(format!(
                "--peer-addr: {peer_addr} is also --grpc-addr; peers and clients need separate listeners"
            )));
        }
        let initial_cluster = parse_initial_cluster(args.initial_cluster.as_deref().unwrap_or(""))?;
        let advertise_addr = args
            .advertise_addr
            .clone()
            .or_else(|| initial_cluster.get(&node_id).cloned())
            .unwrap_or_else(|| peer_addr.to_string());
        let advertise_client_addr = args
            .advertise_client_addr
            .clone()
            .unwrap_or_else(|| reachable_addr(grpc_addr, &advertise_addr));
        let cluster_secret = cluster_secret(
            args.cluster_cookie.clone(),
            args.cluster_cookie_file.as_deref(),
            args.cluster_cookie_flag.as_deref(),
        )?;
        let bootstrap_token =
            bootstrap_token(args.bootstrap_token.clone(), args.bootstrap_token_file.as_deref())?;
        let peer_tls = peer_tls(
            args.peer_tls_cert.clone(),
            args.peer_tls_key.clone(),
            args.peer_tls_ca.clone(),
        )?;
        let api_tls = api_tls(
            args.tls_cert.clone(),
            args.tls_key.clone(),
            args.tls_client_ca.clone(),
        )?;
        let workers = workers(args.workers)?;
        #[allow(unused_mut)] // set below only with the chaos-break feature
        let mut leader = leader_settings(args.type_limits.as_deref(), args.fire_ahead_ms)?;
        #[cfg(feature = "chaos-break")]
        {
            leader.chaos_break = args.unsafe_chaos_break;
        }
        let defaults = RaftTuning::default();
        let http_addr = socket_addr("http-addr", args.http_addr.as_deref().unwrap_or("127.0.0.1:7201"))?;
        let cluster_addr = socket_addr(
            "cluster-addr",
            args.cluster_addr.as_deref().unwrap_or("127.0.0.1:7301"),
        )?;
        let http_allow = http_allow(
            args.http_allow.as_deref(),
            &[grpc_addr, peer_addr, http_addr, cluster_addr],
            &advertise_addr,
        )?;
        Ok(AgentConfig {
            node_id,
            data_dir: args
                .data_dir
                .unwrap_or_else(|| PathBuf::from(format!("kairos-data/node-{node_id}"))),
            grpc_addr,
            peer_addr,
            http_addr,
            cluster_addr,
            advertise_addr,
            advertise_client_addr,
            initial_cluster,
            cluster_secret,
            bootstrap_token,
            peer_tls,
            api_tls,
            workers,
            allow_exec: args.allow_exec.unwrap_or(false),
            http_allow,
            leader,
            #[cfg(feature = "test-handlers")]
            test_handlers: args.test_handlers.unwrap_or(false),
            dial_map: DialMap::parse(args.dial_map.as_deref().unwrap_or(""))?,
            log_format: args.log_format.unwrap_or_default(),
            tuning: RaftTuning {
                heartbeat_ms: args.heartbeat_ms.unwrap_or(defaults.heartbeat_ms),
                election_timeout_ms: args.election_timeout_ms.unwrap_or(defaults.election_timeout_ms),
                snapshot_logs: args.snapshot_logs.unwrap_or(defaults.snapshot_logs),
                snapshot_keep_logs: args.snapshot_keep_logs.unwrap_or(defaults.snapshot_keep_logs),
            },
            auth: crate::api::auth::AuthSettings {
                disabled: args.insecure_disable_auth.unwrap_or(false),
                audit_reads: args.audit_reads.unwrap_or(false),
            },
            audit_retain: match args.audit_retain {
                Some(0) => {
                    return Err(Error::InvalidArgument(
                        "--audit-retain: must be at least 1".into(),
                    ))
                }
                Some(n) => n,
                None => crate::scheduler::audit::DEFAULT_RETAIN,
            },
            traces: trace_settings(args.otlp_endpoint, args.trace_sampling, args.trace_service_name)?,
            metrics_job_limit: args
                .metrics_job_limit
                .unwrap_or(crate::metrics::jobs::DEFAULT_JOB_LIMIT),
            max_watches: match args.max_watches {
                Some(0) => return Err(Error::InvalidArgument("--max-watches: must be at least 1".into())),
                Some(n) => n,
                None => crate::api::limits::DEFAULT_MAX_WATCHES,
            },
            max_requests: match args.max_requests {
                Some(0) => {
                    return Err(Error::InvalidArgument(
                        "--max-requests: must be at least 1".into(),
                    ))
                }
                #[cfg(feature = "chaos-break")]
                _ if args.unsafe_chaos_break == Some(crate::chaos_break::ChaosBreak::NoRequestLimit) => {
                    tokio::sync::Semaphore::MAX_PERMITS
                }
                Some(n) => n,
                None => crate::api::limits::DEFAULT_MAX_REQUESTS,
            },
            handover_timeout: args
                .handover_timeout_ms
                .map(std::time::Duration::from_millis)
                .unwrap_or(crate::cli::agent::HANDOVER_TIMEOUT),
            #[cfg(feature = "chaos-break")]
            chaos_break: args.unsafe_chaos_break,
            force_new_cluster: args.force_new_cluster.unwrap_or(false),
        })
    }

    /// The address others reach this node's HTTP endpoints at: `--http-addr`,
    /// or, when that listens on every interface (`0.0.0.0`, `::`), the host
    /// of the advertised client address with the HTTP port.
    pub fn advertised_http_addr(&self) -> String {
        reachable_addr(self.http_addr, &self.advertise_client_addr)
    }

    /// The address other nodes reach this node's worker network at (what
    /// its status reports say): `--cluster-addr`, or, when that listens on
    /// every interface, the host of the advertised peer address with the
    /// worker network's port.
    pub fn advertised_cluster_addr(&self) -> String {
        reachable_addr(self.cluster_addr, &self.advertise_addr)
    }
}

/// Trace export settings: none without an endpoint (an empty one
/// included, so `OTEL_EXPORTER_OTLP_ENDPOINT=` turns export off).
fn trace_settings(
    endpoint: Option<String>,
    sampling: Option<f64>,
    service_name: Option<String>,
) -> Result<Option<crate::telemetry::TraceSettings>> {
    let sampling = sampling.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sampling) {
        return Err(Error::InvalidArgument(format!(
            "--trace-sampling: {sampling} is not between 0 and 1"
        )));
    }
    let Some(endpoint) = endpoint.filter(|e| !e.trim().is_empty()) else {
        return Ok(None);
    };
    match endpoint.parse::<http::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
        _ => {
            return Err(Error::InvalidArgument(format!(
                "--otlp-endpoint: {endpoint:?} is not an http:// or https:// URL of an OTLP/gRPC collector"
            )))
        }
    }
    let service_name = service_name
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "kairos".to_string());
    Ok(Some(crate::telemetry::TraceSettings {
        endpoint,
        sampling,
        service_name,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_COOKIE: &str = "a-test-cookie-of-32-bytes-length";

    #[test]
    fn trace_settings_need_an_endpoint_and_a_sampling_between_0_and_1() {
        assert_eq!(trace_settings(None, Some(0.5), None).unwrap(), None);
        assert_eq!(trace_settings(Some(" ".into()), None, None).unwrap(), None);
        let on = trace_settings(Some("http://127.0.0.1:4317".into()), None, None)
            .unwrap()
            .unwrap();
        assert_eq!((on.sampling, on.service_name.as_str()), (1.0, "kairos"));
        let named = trace_settings(
            Some("https://otel.example:4317".into()),
            Some(0.01),
            Some("sched".into()),
        )
        .unwrap()
        .unwrap();
        assert_eq!((named.sampling, named.service_name.as_str()), (0.01, "sched"));
        for bad in ["127.0.0.1:4317", "grpc://x:1", "http://"] {
            let err = trace_settings(Some(bad.into()), None, None)
                .unwrap_err()
                .to_string();
            assert!(err.contains("--otlp-endpoint"), "{bad}: {err}");
        }
        let err = trace_settings(Some("http://x:1".into()), Some(1.5), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--trace-sampling"), "{err}");
    }

    #[test]
    fn initial_cluster_parses_and_refuses_garbage() {
        let m = parse_initial_cluster("1=127.0.0.1:7101, 2=127.0.0.1:7102,3=localhost:7103").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[&3], "localhost:7103");
        for bad in [
            "1",
            "x=127.0.0.1:1",
            "0=127.0.0.1:1",
            "1=127.0.0.1",
            "1=a:1,1=b:2",
        ] {
            let err = parse_initial_cluster(bad).unwrap_err().to_string();
            assert!(err.starts_with("--initial-cluster"), "{bad}: {err}");
        }
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kairos.toml");
        std::fs::write(
            &path,
            "node_id = 2\ngrpc_addr = \"127.0.0.1:9102\"\nhttp_addr = \"127.0.0.1:9202\"\n",
        )
        .unwrap();
        let args = AgentArgs {
            config: Some(path),
            http_addr: Some("127.0.0.1:9999".into()),
            cluster_cookie: Some(TEST_COOKIE.into()),
            ..Default::default()
        };
        let c = AgentConfig::resolve(args).unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:9102");
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:9999");
        assert_eq!(c.data_dir, PathBuf::from("kairos-data/node-2"));
        assert_eq!(c.advertise_addr, "127.0.0.1:7401");
        assert_eq!(c.advertise_client_addr, "127.0.0.1:9102");
    }

    #[test]
    fn the_metrics_job_limit_comes_from_the_file_or_defaults_to_a_thousand() {
        let resolve = |file: &str| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("kairos.toml");
            std::fs::write(&path, format!("node_id = 1\n{file}")).unwrap();
            AgentConfig::resolve(AgentArgs {
                config: Some(path),
                cluster_cookie: Some(TEST_COOKIE.into()),
                ..Default::default()
            })
            .unwrap()
            .metrics_job_limit
        };
        assert_eq!(resolve(""), 1000);
        assert_eq!(resolve("metrics_job_limit = 2\n"), 2);
        assert_eq!(resolve("metrics_job_limit = 0\n"), 0);
    }

    #[test]
    fn the_advertised_http_address_takes_the_client_host_when_listening_everywhere() {
        let resolve = |http: &str, client: Option<&str>| {
            AgentConfig::resolve(AgentArgs {
                node_id: Some(1),
                http_addr: Some(http.into()),
                advertise_client_addr: client.map(Into::into),
                cluster_cookie: Some(TEST_COOKIE.into()),
                ..Default::default()
            })
            .unwrap()
            .advertised_http_addr()
        };
        assert_eq!(resolve("127.0.0.1:9201", Some("10.0.0.4:7101")), "127.0.0.1:9201");
        assert_eq!(resolve("0.0.0.0:9201", Some("10.0.0.4:7101")), "10.0.0.4:9201");
        assert_eq!(resolve("[::]:9201", Some("[fd00::4]:7101")), "[fd00::4]:9201");
        assert_eq!(
            resolve("0.0.0.0:9201", Some("kairos-2.internal:7101")),
            "kairos-2.internal:9201"
        );
        // Without an advertised client address it is --grpc-addr's default host.
        assert_eq!(resolve("0.0.0.0:9201", None), "127.0.0.1:9201");
    }

    #[test]
    fn the_cluster_cookie_is_required_long_enough_and_never_a_flag() {
        let err = cluster_secret(None, None, None).unwrap_err().to_string();
        assert!(
            err.starts_with("--cluster-cookie-file: required, or KAIROS_CLUSTER_COOKIE"),
            "{err}"
        );
        let err = cluster_secret(Some("short".into()), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "KAIROS_CLUSTER_COOKIE: the cluster cookie is 5 bytes long; it must have at least 16"
            ),
            "{err}"
        );
        let err = cluster_secret(None, None, Some(TEST_COOKIE))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--cluster-cookie: a secret on the command line"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cookie");
        std::fs::write(&file, format!("{TEST_COOKIE}\n")).unwrap();
        let from_file = cluster_secret(None, Some(&file), None).unwrap();
        assert_eq!(from_file.as_bytes(), TEST_COOKIE.as_bytes());
        let err = cluster_secret(Some(TEST_COOKIE.into()), Some(&file), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("give one"), "{err}");
    }

    #[test]
    fn force_new_cluster_is_a_flag_or_variable_never_a_file_key() {
        use clap::Parser;
        let args = |extra: &[&str]| {
            let cli = crate::cli::Cli::try_parse_from(["kairos", "agent", "--node-id=1"].iter().chain(extra))
                .unwrap();
            let crate::cli::Command::Agent(mut args) = cli.command else {
                panic!("not an agent command");
            };
            args.cluster_cookie = Some(TEST_COOKIE.into());
            *args
        };
        assert!(!AgentConfig::resolve(args(&[])).unwrap().force_new_cluster);
        assert!(
            AgentConfig::resolve(args(&["--force-new-cluster"]))
                .unwrap()
                .force_new_cluster
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kairos.toml");
        std::fs::write(&path, "force_new_cluster = true\n").unwrap();
        let config = format!("--config={}", path.display());
        let err = AgentConfig::resolve(args(&[&config])).unwrap_err().to_string();
        assert!(
            err.contains("force_new_cluster is not a config file setting"),
            "{err}"
        );
    }

    #[test]
    fn the_cookie_flag_is_refused_on_the_command_line() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "kairos",
            "agent",
            "--node-id=1",
            "--cluster-cookie=0123456789abcdef",
        ])
        .unwrap();
        let crate::cli::Command::Agent(args) = cli.command else {
            panic!("not an agent command");
        };
        let err = AgentConfig::resolve(*args).unwrap_err().to_string();
        assert!(
            err.starts_with("--cluster-cookie: a secret on the command line"),
            "{err}"
        );
    }

    #[test]
    fn tls_flags_come_in_sets() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(peer_tls(None, None, None).unwrap(), None);
        assert!(peer_tls(p("c"), p("k"), p("ca")).unwrap().is_some());
        let err = peer_tls(p("c"), None, None).unwrap_err().to_string();
        assert!(
            err.starts_with("--peer-tls-key, --peer-tls-ca: required with the other"),
            "{err}"
        );
        assert!(api_tls(p("c"), p("k"), None).unwrap().is_some());
        assert!(api_tls(p("c"), p("k"), p("ca"))
            .unwrap()
            .unwrap()
            .client_ca
            .is_some());
        let err = api_tls(None, None, p("ca")).unwrap_err().to_string();
        assert!(err.starts_with("--tls-client-ca: needs --tls-cert"), "{err}");
        let err = api_tls(p("c"), None, None).unwrap_err().to_string();
        assert!(err.starts_with("--tls-key: required"), "{err}");
    }

    #[test]
    fn peers_and_clients_get_separate_listeners_and_addresses() {
        let args = AgentArgs {
            node_id: Some(1),
            cluster_cookie: Some(TEST_COOKIE.into()),
            grpc_addr: Some("127.0.0.1:9101".into()),
            peer_addr: Some("127.0.0.1:9401".into()),
            ..Default::default()
        };
        let c = AgentConfig::resolve(args.clone()).unwrap();
        assert_eq!(
            c.advertise_addr, "127.0.0.1:9401",
            "peers are told the peer address"
        );
        assert_eq!(c.advertise_client_addr, "127.0.0.1:9101");
        let same = AgentArgs {
            peer_addr: Some("127.0.0.1:9101".into()),
            ..args
        };
        let err = AgentConfig::resolve(same).unwrap_err().to_string();
        assert!(
            err.starts_with("--peer-addr: 127.0.0.1:9101 is also --grpc-addr"),
            "{err}"
        );
    }

    #[test]
    fn type_limits_name_known_job_types() {
        let args = |limits: &str| AgentArgs {
            node_id: Some(1),
            cluster_cookie: Some(TEST_COOKIE.into()),
            type_limits: Some(limits.into()),
            ..Default::default()
        };
        let config = AgentConfig::resolve(args("http:concurrency=3;exec:rate=1")).unwrap();
        assert_eq!(config.leader.type_limits["http"].concurrency, Some(3));
        // An external worker's type may be limited before any worker registers it.
        let config = AgentConfig::resolve(args("billing.charge:concurrency=3")).unwrap();
        assert_eq!(config.leader.type_limits["billing.charge"].concurrency, Some(3));
        let err = AgentConfig::resolve(args("Billing Charge:concurrency=3"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--type-limits: job type \"Billing Charge\""),
            "{err}"
        );
    }

    #[test]
    fn http_allow_defaults_to_public_and_knows_the_nodes_listeners() {
        let args = |http_allow: Option<&str>| AgentArgs {
            node_id: Some(1),
            cluster_cookie: Some("sixteen-bytes-or-more".into()),
            grpc_addr: Some("192.0.2.1:7101".into()),
            advertise_addr: Some("198.51.100.1:7101".into()),
            http_allow: http_allow.map(String::from),
            ..Default::default()
        };
        let config = AgentConfig::resolve(args(None)).unwrap();
        assert_eq!(config.http_allow.to_string(), "public");
        let refused = |ip: &str| config.http_allow.check_ip(ip.parse().unwrap()).is_err();
        assert!(refused("127.0.0.1") && refused("169.254.169.254"));
        assert!(
            refused("192.0.2.1") && refused("198.51.100.1"),
            "the node's own addresses"
        );
        assert!(!refused("192.0.2.2"));
        let config = AgentConfig::resolve(args(Some("public,loopback"))).unwrap();
        assert!(config.http_allow.check_ip("127.0.0.1".parse().unwrap()).is_ok());
        let err = AgentConfig::resolve(args(Some("public,10.0.0.1/8")))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--http-allow: \"10.0.0.1/8\" has host bits set (did you mean 10.0.0.0/8?)"
        );
    }

    #[test]
    fn a_statefulset_pod_name_gives_its_ordinal_plus_one() {
        for (host, id) in [
            ("kairos-0", 1),
            ("kairos-2", 3),
            ("my-kairos-10", 11),
            ("kairos-4.kairos-peers.prod.svc.cluster.local", 5),
            ("kairos-0\n", 1),
        ] {
            assert_eq!(node_id_from_host_name(host).unwrap(), id, "{host}");
        }
        for bad in [
            "kairos",
            "kairos-",
            "-3",
            "kairos-x",
            "kairos-1a",
            "kairos-+1",
            "kairos.1",
            "kairos-18446744073709551615",
            "",
        ] {
            let err = node_id_from_host_name(bad).unwrap_err().to_string();
            assert!(
                err.starts_with("--node-id-from-hostname: host name") && err.contains("-<ordinal>"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_node_id_comes_from_the_flag_or_the_host_name_not_both() {
        let pod = || Ok("kairos-1".to_string());
        assert_eq!(node_id(None, true, pod).unwrap(), 2);
        assert_eq!(node_id(Some(7), false, pod).unwrap(), 7);
        let err = node_id(Some(7), true, pod).unwrap_err().to_string();
        assert!(err.contains("give one"), "{err}");
        let err = node_id(None, false, pod).unwrap_err().to_string();
        assert!(err.starts_with("--node-id: required"), "{err}");
        let err = node_id(Some(0), false, pod).unwrap_err().to_string();
        assert!(err.contains("positive"), "{err}");
        // The host name is asked for only with the flag.
        let unused = || -> Result<String> { panic!("host name read without --node-id-from-hostname") };
        assert_eq!(node_id(Some(3), false, unused).unwrap(), 3);
        // This machine's name is read (whatever it is, the error names it).
        match node_id(None, true, host_name) {
            Ok(id) => assert!(id > 0),
            Err(e) => assert!(e.to_string().contains("host name"), "{e}"),
        }
    }

    /// Compose and Kubernetes: listeners on every interface, peers named by
    /// host name in --initial-cluster; every address the node advertises
    /// takes its own entry's host.
    #[test]
    fn a_node_listening_everywhere_advertises_the_host_of_its_initial_cluster_entry() {
        let args = AgentArgs {
            node_id: Some(2),
            cluster_cookie: Some(TEST_COOKIE.into()),
            grpc_addr: Some("0.0.0.0:7101".into()),
            peer_addr: Some("0.0.0.0:7401".into()),
            http_addr: Some("0.0.0.0:7201".into()),
            cluster_addr: Some("0.0.0.0:7301".into()),
            initial_cluster: Some(
                "1=kairos-0.kairos-peers.prod.svc.cluster.local:7401,\
                 2=kairos-1.kairos-peers.prod.svc.cluster.local:7401,\
                 3=kairos-2.kairos-peers.prod.svc.cluster.local:7401"
                    .into(),
            ),
            ..Default::default()
        };
        let c = AgentConfig::resolve(args.clone()).unwrap();
        let host = "kairos-1.kairos-peers.prod.svc.cluster.local";
        assert_eq!(
            c.initial_cluster[&1],
            "kairos-0.kairos-peers.prod.svc.cluster.local:7401"
        );
        assert_eq!(c.advertise_addr, format!("{host}:7401"));
        assert_eq!(c.advertise_client_addr, format!("{host}:7101"));
        assert_eq!(c.advertised_http_addr(), format!("{host}:7201"));
        assert_eq!(c.advertised_cluster_addr(), format!("{host}:7301"));
        // Given addresses win; specific listeners are advertised as they are.
        let c = AgentConfig::resolve(AgentArgs {
            advertise_client_addr: Some("kairos.example.com:443".into()),
            cluster_addr: Some("10.1.2.3:7301".into()),
            ..args.clone()
        })
        .unwrap();
        assert_eq!(c.advertise_client_addr, "kairos.example.com:443");
        assert_eq!(c.advertised_http_addr(), "kairos.example.com:7201");
        assert_eq!(c.advertised_cluster_addr(), "10.1.2.3:7301");
        // Nothing better known: the listen address itself.
        let c = AgentConfig::resolve(AgentArgs {
            initial_cluster: None,
            ..args
        })
        .unwrap();
        assert_eq!(c.advertise_addr, "0.0.0.0:7401");
        assert_eq!(c.advertise_client_addr, "0.0.0.0:7101");
        assert_eq!(c.advertised_cluster_addr(), "0.0.0.0:7301");
    }

    #[test]
    fn reachable_addresses_keep_ipv6_brackets() {
        let listen: SocketAddr = "[::]:7301".parse().unwrap();
        assert_eq!(reachable_addr(listen, "[fd00::2]:7401"), "[fd00::2]:7301");
        assert_eq!(reachable_addr(listen, "[::]:7401"), "[::]:7301");
        assert_eq!(
            reachable_addr("127.0.0.1:1".parse().unwrap(), "x:2"),
            "127.0.0.1:1"
        );
    }

    #[test]
    fn the_root_token_comes_from_the_variable_or_a_file_and_is_checked() {
        const SECRET: &str = "0123456789abcdef0123456789abcdef";
        assert_eq!(bootstrap_token(None, None).unwrap(), None);
        assert_eq!(bootstrap_token(Some(String::new()), None).unwrap(), None);
        let token = bootstrap_token(Some(SECRET.into()), None).unwrap().unwrap();
        assert_eq!((token.secret(), token.source()), (SECRET, BOOTSTRAP_TOKEN_ENV));
        assert_eq!(
            format!("{token:?}"),
            "BootstrapToken(from KAIROS_BOOTSTRAP_TOKEN)"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("root-token");
        std::fs::write(&file, format!("{SECRET}\n")).unwrap();
        let token = bootstrap_token(None, Some(&file)).unwrap().unwrap();
        assert_eq!(token.secret(), SECRET, "one trailing newline dropped");
        assert!(token.source().starts_with("--bootstrap-token-file "));
        let err = bootstrap_token(Some(SECRET.into()), Some(&file))
            .unwrap_err()
            .to_string();
        assert!(err.contains("give one"), "{err}");
        let err = bootstrap_token(None, Some(&dir.path().join("missing")))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--bootstrap-token-file "), "{err}");

        let err = bootstrap_token(Some("CHANGE-ME".into()), None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "KAIROS_BOOTSTRAP_TOKEN: the root token is 9 characters long; it must have 32 to 1024 \
             (e.g. `openssl rand -hex 32`)"
        );
        assert!(bootstrap_token(Some("x".repeat(1025)), None).is_err());
        assert!(bootstrap_token(Some("x".repeat(1024)), None).is_ok());
        for bad in [
            format!("{SECRET} x"),
            format!("{SECRET}\u{e9}"),
            format!("{SECRET}\t"),
        ] {
            let err = bootstrap_token(Some(bad.clone()), None).unwrap_err().to_string();
            assert!(err.contains("visible ASCII"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_node_id_and_root_token_file_come_from_the_config_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("root-token");
        std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
        let path = dir.path().join("kairos.toml");
        std::fs::write(
            &path,
            format!(
                "node_id_from_hostname = true\nbootstrap_token_file = {:?}\n",
                token.display().to_string()
            ),
        )
        .unwrap();
        let resolved = AgentConfig::resolve(AgentArgs {
            config: Some(path),
            cluster_cookie: Some(TEST_COOKIE.into()),
            ..Default::default()
        });
        // This machine's host name decides the outcome; either way the file was read.
        match resolved {
            Ok(c) => assert!(c.bootstrap_token.is_some() && c.node_id > 0),
            Err(e) => assert!(e.to_string().starts_with("--node-id-from-hostname"), "{e}"),
        }
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kairos.toml");
        std::fs::write(&path, "node_id = 1\ngrpc_adr = \"x\"\n").unwrap();
        let err = AgentConfig::resolve(AgentArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("grpc_adr"), "{err}");
    }
}
