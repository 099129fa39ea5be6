//! Starting `kairos agent` processes: the one launcher behind `kairos dev`,
//! the test harness (`kairos-testkit`) and the chaos harness's process runtime.
//!
//! Once the nodes are ready, [`bootstrap_root_token`] creates the cluster's
//! root token (`acl bootstrap`).
//!
//! Three steps, each usable alone:
//!
//! 1. [`AgentSpec`] describes one node — id, data directory, client gRPC,
//!    peer, HTTP and worker-network addresses, the initial cluster of peer
//!    addresses (or none, for a node that waits to be added), the cookie and
//!    any extra flags — and [`AgentSpec::agent_args`] turns it into the
//!    `kairos agent` command line, [`AgentSpec::agent_env`] into its
//!    environment (the cookie). The Docker runtime of the chaos harness uses
//!    only this step.
//! 2. [`Launch`] adds where the binary is, the environment and the log file;
//!    [`Launch::start`] starts the process (stdin closed, stdout and stderr
//!    appended to the log) and can be called again to restart the node on
//!    the same data.
//! 3. [`NodeProcess`] is the running node: its [`ChildProcess`] (pid, kill -9,
//!    SIGTERM with a bounded wait, SIGSTOP/SIGCONT, exit status, awaitable
//!    exit) and [`NodeProcess::wait_ready`], which awaits `/readyz` answering
//!    200 and fails early when the process exits first.
//!
//! # Invariants
//!
//! * The command line is a function of the [`AgentSpec`] alone, so every
//!   launcher tells a node the same thing in the same words.
//! * The cookie is never on the command line (every local user can read a
//!   process's arguments): it travels in the environment,
//!   `KAIROS_CLUSTER_COOKIE`, which only the user and root can read.
//! * A [`NodeProcess`] never outlives its owner: dropping it kills the node.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! * Readiness is polled (`/readyz` every [`READY_POLL`]); the node offers no
//!   push notification of becoming ready.
//! * Ports are the caller's business: a launcher that picks free ports does
//!   so before the node binds them (see `kairos-testkit`'s port picker).

mod bootstrap;
mod probe;
mod process;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

pub use bootstrap::bootstrap_root_token;
pub use probe::HttpProbe;
pub use process::{ChildProcess, Stopped};

use crate::error::{Error, Result};
use crate::raft::NodeId;

/// How often [`NodeProcess::wait_ready`] asks `/readyz`.
pub const READY_POLL: Duration = Duration::from_millis(50);

/// What one node is told on its `kairos agent` command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentSpec {
    /// `--node-id`.
    pub id: NodeId,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--grpc-addr`: clients.
    pub grpc_addr: SocketAddr,
    /// `--peer-addr`: other nodes only.
    pub peer_addr: SocketAddr,
    /// `--http-addr`: `/livez`, `/readyz`, `/metrics`.
    pub http_addr: SocketAddr,
    /// `--cluster-addr`: the worker network.
    pub cluster_addr: SocketAddr,
    /// `--initial-cluster` (id → peer address); empty for a node that waits to be added.
    pub initial_cluster: BTreeMap<NodeId, String>,
    /// The cluster cookie, passed as `KAIROS_CLUSTER_COOKIE` (at least 16 bytes).
    pub cookie: String,
    /// Any further flags, appended as given.
    pub extra_args: Vec<String>,
}

impl AgentSpec {
    /// The argument list of `kairos agent` for this node, `agent` first.
    pub fn agent_args(&self) -> Vec<String> {
        let mut args = vec![
            "agent".to_string(),
            format!("--node-id={}", self.id),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--grpc-addr={}", self.grpc_addr),
            format!("--peer-addr={}", self.peer_addr),
            format!("--http-addr={}", self.http_addr),
            format!("--cluster-addr={}", self.cluster_addr),
        ];
        if !self.initial_cluster.is_empty() {
            let members: Vec<String> = self
                .initial_cluster
                .iter()
                .map(|(id, addr)| format!("{id}={addr}"))
                .collect();
            args.push(format!("--initial-cluster={}", members.join(",")));
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// The environment `kairos agent` needs besides its arguments: the cookie.
    pub fn agent_env(&self) -> Vec<(String, String)> {
        vec![(crate::config::COOKIE_ENV.to_string(), self.cookie.clone())]
    }
}

/// How to start one node process.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The `kairos` binary.
    pub binary: PathBuf,
    /// The node's command line.
    pub agent: AgentSpec,
    /// Extra environment variables of the process (besides [`AgentSpec::agent_env`]).
    pub env: Vec<(String, String)>,
    /// The file stdout and stderr are appended to.
    pub log: PathBuf,
}

impl Launch {
    /// Starts the node (again, on the same data directory, if it ran before).
    pub fn start(&self) -> std::io::Result<NodeProcess> {
        let context = |e: std::io::Error, what: String| std::io::Error::new(e.kind(), format!("{what}: {e}"));
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| context(e, format!("opening {}", self.log.display())))?;
        let mut command = Command::new(&self.binary);
        command
            .args(self.agent.agent_args())
            .envs(self.agent.agent_env())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = ChildProcess::spawn(&mut command).map_err(|e| {
            context(
                e,
                format!("starting node {} ({})", self.agent.id, self.binary.display()),
            )
        })?;
        Ok(NodeProcess {
            id: self.agent.id,
            http_addr: self.agent.http_addr,
            log: self.log.clone(),
            child,
        })
    }
}

/// A started node process; killed when dropped.
pub struct NodeProcess {
    /// The node's id, for messages.
    id: NodeId,
    /// Where `/readyz` answers.
    http_addr: SocketAddr,
    /// The node's log, named in messages.
    log: PathBuf,
    /// The process itself.
    child: ChildProcess,
}

impl NodeProcess {
    /// The process: pid, signals, exit.
    pub fn process(&self) -> &ChildProcess {
        &self.child
    }

    /// Awaits `/readyz` answering 200, for at most `timeout`; fails at once
    /// if the process exits first.
    pub async fn wait_ready(&self, probe: &HttpProbe, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let addr = self.http_addr.to_string();
        loop {
            let last = match probe.get(&addr, "/readyz").await {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("{code} {}", body.trim()),
                Err(e) => e.to_string(),
            };
            if let Some(status) = self.child.exit_status() {
                return Err(Error::unavailable(format!(
                    "node {} exited ({status}) before it was ready; see {}",
                    self.id,
                    self.log.display()
                )));
            }
            if Instant::now() >= deadline {
                return Err(Error::unavailable(format!(
                    "node {} is not ready after {timeout:?} (last answer: {last}); see {}",
                    self.id,
                    self.log.display()
                )));
            }
            tokio::select! {
                _ = tokio::time::sleep(READY_POLL) => {}
                _ = self.child.exited() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(initial_cluster: &[(NodeId, &str)]) -> AgentSpec {
        AgentSpec {
            id: 2,
            data_dir: PathBuf::from("/tmp/kairos/node-2"),
            grpc_addr: "127.0.0.1:7102".parse().unwrap(),
            peer_addr: "127.0.0.1:7402".parse().unwrap(),
            http_addr: "127.0.0.1:7202".parse().unwrap(),
            cluster_addr: "127.0.0.1:7302".parse().unwrap(),
            initial_cluster: initial_cluster
                .iter()
                .map(|(id, a)| (*id, a.to_string()))
                .collect(),
            cookie: "a-test-cookie-of-32-bytes-length".into(),
            extra_args: vec!["--workers".into(), "4".into()],
        }
    }

    #[test]
    fn the_command_line_names_every_setting_and_the_extra_flags_last() {
        let args = spec(&[(1, "127.0.0.1:7401"), (2, "127.0.0.1:7402")]).agent_args();
        assert_eq!(
            args,
            [
                "agent",
                "--node-id=2",
                "--data-dir=/tmp/kairos/node-2",
                "--grpc-addr=127.0.0.1:7102",
                "--peer-addr=127.0.0.1:7402",
                "--http-addr=127.0.0.1:7202",
                "--cluster-addr=127.0.0.1:7302",
                "--initial-cluster=1=127.0.0.1:7401,2=127.0.0.1:7402",
                "--workers",
                "4",
            ]
        );
        let joining = spec(&[]).agent_args();
        assert!(
            !joining.iter().any(|a| a.starts_with("--initial-cluster")),
            "{joining:?}"
        );
        assert!(
            !args.iter().any(|a| a.contains("a-test-cookie")),
            "the cookie is never an argument: {args:?}"
        );
        assert_eq!(
            spec(&[]).agent_env(),
            [(
                "KAIROS_CLUSTER_COOKIE".to_string(),
                "a-test-cookie-of-32-bytes-length".to_string()
            )]
        );
    }

    #[test]
    fn the_command_line_is_what_the_agent_parses() {
        use clap::Parser;
        let spec = spec(&[(1, "127.0.0.1:7401"), (2, "127.0.0.1:7402")]);
        let cli =
            crate::cli::Cli::try_parse_from(std::iter::once("kairos".to_string()).chain(spec.agent_args()))
                .unwrap();
        let crate::cli::Command::Agent(args) = cli.command else {
            panic!("not an agent command");
        };
        let mut args = *args;
        // What the launcher puts in the environment.
        args.cluster_cookie = Some(spec.cookie.clone());
        let config = crate::config::AgentConfig::resolve(args).unwrap();
        assert_eq!(config.node_id, 2);
        assert_eq!(config.data_dir, spec.data_dir);
        assert_eq!(config.grpc_addr, spec.grpc_addr);
        assert_eq!(config.peer_addr, spec.peer_addr);
        assert_eq!(config.advertise_addr, "127.0.0.1:7402");
        assert_eq!(config.http_addr, spec.http_addr);
        assert_eq!(config.cluster_addr, spec.cluster_addr);
        assert_eq!(config.initial_cluster, spec.initial_cluster);
        assert_eq!(config.cluster_secret.as_bytes(), spec.cookie.as_bytes());
        assert_eq!(config.workers, 4);
    }

    /// Serves `/readyz`: 503 for the first `not_ready` requests, then 200.
    async fn readyz_server(not_ready: usize) -> SocketAddr {
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let app = axum::Router::new().route(
            "/readyz",
            axum::routing::get(move || {
                let n = asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    if n < not_ready {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: no leader\n",
                        )
                    } else {
                        (axum::http::StatusCode::OK, "ready\n")
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// A node whose process is `sleep 30`, probed at `http_addr`.
    fn sleeping_node(http_addr: SocketAddr, log: PathBuf) -> NodeProcess {
        NodeProcess {
            id: 2,
            http_addr,
            log,
            child: ChildProcess::spawn(Command::new("sleep").arg("30")).unwrap(),
        }
    }

    #[tokio::test]
    async fn wait_ready_waits_for_200_and_gives_up_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let probe = HttpProbe::new().unwrap();
        let node = sleeping_node(readyz_server(3).await, dir.path().join("agent.log"));
        node.wait_ready(&probe, Duration::from_secs(30)).await.unwrap();
        assert!(node.process().is_running());

        let never = sleeping_node(readyz_server(usize::MAX).await, dir.path().join("agent.log"));
        let err = never
            .wait_ready(&probe, Duration::from_millis(200))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("node 2 is not ready after 200ms (last answer: 503 not ready: no leader)"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn wait_ready_fails_at_once_when_the_process_exits() {
        let dir = tempfile::tempdir().unwrap();
        let mut agent = spec(&[]);
        agent.http_addr = readyz_server(usize::MAX).await;
        let launch = Launch {
            // Ignores the agent's arguments and exits 1.
            binary: PathBuf::from("false"),
            agent,
            env: Vec::new(),
            log: dir.path().join("agent.log"),
        };
        let node = launch.start().unwrap();
        let started = Instant::now();
        let err = node
            .wait_ready(&HttpProbe::new().unwrap(), Duration::from_secs(60))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "node 2 exited (exit status: 1) before it was ready; see {}",
                launch.log.display()
            )
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not early: {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_missing_binary_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let launch = Launch {
            binary: dir.path().join("gone"),
            agent: spec(&[]),
            env: Vec::new(),
            log: dir.path().join("agent.log"),
        };
        let err = launch.start().err().expect("no such binary").to_string();
        assert!(
            err.starts_with(&format!("starting node 2 ({}): ", launch.binary.display())),
            "{err}"
        );
    }
}
