//! A cluster of real `kairos agent` processes on free loopback ports, each
//! with its own temporary data directory, started through
//! [`kairos::launcher`] and stopped (killed if need be) on drop.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kairos::launcher::{AgentSpec, HttpProbe, Launch, NodeProcess};
use kairos::proto as pb;
use std::sync::OnceLock;

use kairos::proto::acl_service_client::AclServiceClient;
use kairos::proto::audit_service_client::AuditServiceClient;
use kairos::proto::cluster_service_client::ClusterServiceClient;
use kairos::proto::job_service_client::JobServiceClient;
use kairos::proto::run_service_client::RunServiceClient;
use tempfile::TempDir;
use tokio::time::Instant;

use crate::{authed, free_port, kairos_bin, Authed, Bearer};

/// How long bootstrapping the ACL may wait for a leader.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`TestCluster::stop`] waits for a node to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// The cluster cookie of every node, unless a test gives one its own.
pub const TEST_COOKIE: &str = "kairos-test-cookie-0123456789abcdef";

/// `--http-allow` of every test node unless a test names its own: the
/// agent's default plus loopback, where the tests' webhooks listen.
pub const TEST_HTTP_ALLOW: &str = "public,loopback";

/// One node process.
pub struct TestNode {
    /// The node id.
    pub id: u64,
    /// Client API (gRPC) address (`127.0.0.1:port`).
    pub grpc: String,
    /// Peer address (`127.0.0.1:port`), what the membership holds.
    pub peer: String,
    /// HTTP address (`127.0.0.1:port`).
    pub http: String,
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// The node's log (stdout and stderr of every start, appended).
    pub log: PathBuf,
    /// The process, while started (and not killed or stopped by the harness).
    process: Option<NodeProcess>,
}

impl TestNode {
    /// Whether the harness started the node and has not killed or stopped it.
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// How the node's process ended, if the harness started it and it exited by itself.
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        self.process.as_ref().and_then(|p| p.process().exit_status())
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.process().pid())
    }

    fn new(id: u64, dir: &TempDir) -> TestNode {
        let data_dir = dir.path().join(format!("node-{id}"));
        std::fs::create_dir_all(&data_dir).unwrap();
        TestNode {
            id,
            grpc: format!("127.0.0.1:{}", free_port()),
            peer: format!("127.0.0.1:{}", free_port()),
            http: format!("127.0.0.1:{}", free_port()),
            log: dir.path().join(format!("node-{id}.log")),
            data_dir,
            process: None,
        }
    }
}

/// A cluster of node processes.
pub struct TestCluster {
    /// Holds every node's data directory and log.
    dir: TempDir,
    /// The nodes, node `id` at index `id - 1`.
    pub nodes: Vec<TestNode>,
    /// `--initial-cluster` of the nodes started with one.
    initial_cluster: BTreeMap<u64, String>,
    /// Extra flags of every node.
    extra_args: Vec<String>,
    /// Extra flags of single nodes: `(node id, flag)`.
    node_args: Vec<(u64, String)>,
    /// Extra environment variables of every node (they win over the kit's `RUST_LOG`).
    env: Vec<(String, String)>,
    /// Cookies of single nodes that do not use [`TEST_COOKIE`].
    node_cookies: BTreeMap<u64, String>,
    /// Whether nodes that are not given `--http-allow` get [`TEST_HTTP_ALLOW`]
    /// (else they run with the agent's default, which refuses loopback).
    allow_loopback_calls: bool,
    /// Asks the nodes' `/readyz`.
    probe: HttpProbe,
    /// The root token's secret, once the ACL is bootstrapped.
    root_token: OnceLock<String>,
}

impl TestCluster {
    /// Starts `n` nodes forming a new cluster. Nodes whose flags do not
    /// name `--http-allow` get `--http-allow=`[`TEST_HTTP_ALLOW`].
    pub fn start(n: u64, extra_args: &[&str]) -> TestCluster {
        Self::start_with_node_args(n, extra_args, &[])
    }

    /// Like [`TestCluster::start`], with extra flags for single nodes.
    pub fn start_with_node_args(n: u64, extra_args: &[&str], node_args: &[(u64, &str)]) -> TestCluster {
        Self::start_inner(n, extra_args, node_args, true, &[])
    }

    /// Like [`TestCluster::start`], with extra environment variables for every node.
    pub fn start_with_env(n: u64, extra_args: &[&str], env: &[(&str, &str)]) -> TestCluster {
        Self::start_inner(n, extra_args, &[], true, env)
    }

    /// Like [`TestCluster::start`], but a node not given `--http-allow` runs
    /// with the agent's default (`public`: loopback refused).
    pub fn start_with_agent_http_allow(n: u64, extra_args: &[&str]) -> TestCluster {
        Self::start_inner(n, extra_args, &[], false, &[])
    }

    /// `n` nodes ready to start (ports and empty data directories chosen,
    /// `--initial-cluster` naming all of them) of which none is started:
    /// for a test that prepares their data first (`kairos snapshot
    /// restore`), then starts each with [`TestCluster::spawn`].
    pub fn unstarted(n: u64, extra_args: &[&str]) -> TestCluster {
        Self::prepare(n, extra_args, &[], true, &[])
    }

    /// `--initial-cluster` of the nodes started with one: `1=127.0.0.1:port,...`.
    pub fn initial_cluster(&self) -> String {
        let members: Vec<String> = self
            .initial_cluster
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect();
        members.join(",")
    }

    /// Takes `secret` as the root token instead of bootstrapping the ACL
    /// (a cluster restored from a backup already has one).
    pub fn use_root_token(&self, secret: &str) {
        assert!(
            self.root_token.set(secret.to_string()).is_ok(),
            "the root token is already set"
        );
    }

    /// (Re)starts node `id` on its data directory with `--initial-cluster`
    /// and, for this start only, the extra flags `args`.
    pub fn spawn_with_args(&mut self, id: u64, args: &[&str]) {
        let mut launch = self.launch(id, true);
        launch.agent.extra_args.extend(args.iter().map(|a| a.to_string()));
        let node = &mut self.nodes[(id - 1) as usize];
        assert!(node.process.is_none(), "node {id} is already running");
        node.process = Some(launch.start().expect("start kairos agent"));
    }

    fn start_inner(
        n: u64,
        extra_args: &[&str],
        node_args: &[(u64, &str)],
        allow_loopback_calls: bool,
        env: &[(&str, &str)],
    ) -> TestCluster {
        let mut cluster = Self::prepare(n, extra_args, node_args, allow_loopback_calls, env);
        for id in 1..=n {
            cluster.spawn(id);
        }
        cluster
    }

    fn prepare(
        n: u64,
        extra_args: &[&str],
        node_args: &[(u64, &str)],
        allow_loopback_calls: bool,
        env: &[(&str, &str)],
    ) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<TestNode> = (1..=n).map(|id| TestNode::new(id, &dir)).collect();
        let initial_cluster = nodes.iter().map(|n| (n.id, n.peer.clone())).collect();
        TestCluster {
            dir,
            nodes,
            initial_cluster,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            node_args: node_args.iter().map(|(id, a)| (*id, a.to_string())).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            node_cookies: BTreeMap::new(),
            allow_loopback_calls,
            probe: HttpProbe::new().expect("an HTTP client"),
            root_token: OnceLock::new(),
        }
    }

    pub fn node(&self, id: u64) -> &TestNode {
        &self.nodes[(id - 1) as usize]
    }

    /// (Re)starts node `id` on its data directory, with `--initial-cluster`.
    pub fn spawn(&mut self, id: u64) {
        self.spawn_with(id, true);
    }

    /// Adds a node process that is not in `--initial-cluster` (to be added with
    /// `cluster add-node`) and returns its id.
    pub fn spawn_new_node(&mut self) -> u64 {
        self.spawn_new_node_with(&[], None)
    }

    /// Like [`TestCluster::spawn_new_node`], with extra flags for the new
    /// node and, if given, a cookie of its own instead of [`TEST_COOKIE`].
    pub fn spawn_new_node_with(&mut self, args: &[&str], cookie: Option<&str>) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        self.nodes.push(TestNode::new(id, &self.dir));
        self.node_args.extend(args.iter().map(|a| (id, a.to_string())));
        if let Some(cookie) = cookie {
            self.node_cookies.insert(id, cookie.to_string());
        }
        self.spawn_with(id, false);
        id
    }

    /// The directory holding the nodes' data and logs (e.g. for test certificates).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// (Re)starts node `id`, with or without `--initial-cluster`. Every start
    /// gets a fresh worker-network port.
    pub fn spawn_with(&mut self, id: u64, initial_cluster: bool) {
        let launch = self.launch(id, initial_cluster);
        let node = &mut self.nodes[(id - 1) as usize];
        assert!(node.process.is_none(), "node {id} is already running");
        node.process = Some(launch.start().expect("start kairos agent"));
    }

    /// How node `id` is started.
    fn launch(&self, id: u64, initial_cluster: bool) -> Launch {
        let node = self.node(id);
        let addr = |a: &str| -> SocketAddr { a.parse().expect("a loopback ip:port") };
        let mut extra_args = self.extra_args.clone();
        extra_args.extend(
            self.node_args
                .iter()
                .filter(|(n, _)| *n == id)
                .map(|(_, a)| a.clone()),
        );
        let names_http_allow = extra_args
            .iter()
            .any(|a| a == "--http-allow" || a.starts_with("--http-allow="));
        if self.allow_loopback_calls && !names_http_allow {
            extra_args.push(format!("--http-allow={TEST_HTTP_ALLOW}"));
        }
        Launch {
            binary: kairos_bin(),
            agent: AgentSpec {
                id,
                data_dir: node.data_dir.clone(),
                grpc_addr: addr(&node.grpc),
                peer_addr: addr(&node.peer),
                http_addr: addr(&node.http),
                cluster_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
                initial_cluster: match initial_cluster {
                    true => self.initial_cluster.clone(),
                    false => BTreeMap::new(),
                },
                cookie: self
                    .node_cookies
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| TEST_COOKIE.to_string()),
                extra_args,
            },
            env: std::iter::once(("RUST_LOG".to_string(), "info,openraft=warn".to_string()))
                .chain(self.env.iter().cloned())
                .collect(),
            log: node.log.clone(),
        }
    }

    /// Replaces the extra environment variables every node gets from its next start on.
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    }

    /// kill -9 node `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(process) = self.nodes[(id - 1) as usize].process.take() {
            process.process().kill();
        }
    }

    /// SIGTERM node `id` without waiting (it keeps running while it stops);
    /// [`TestCluster::stop`] then waits for it to exit.
    pub fn request_stop(&self, id: u64) {
        if let Some(process) = &self.nodes[(id - 1) as usize].process {
            process
                .process()
                .request_stop()
                .unwrap_or_else(|e| panic!("SIGTERM node {id}: {e}"));
        }
    }

    /// SIGTERM node `id` and wait for it to exit cleanly.
    pub fn stop(&mut self, id: u64) {
        if let Some(process) = self.nodes[(id - 1) as usize].process.take() {
            let stopped = process.process().terminate(STOP_GRACE);
            assert!(
                !stopped.forced,
                "node {id} did not stop within {STOP_GRACE:?} of SIGTERM"
            );
            assert!(
                stopped.status.success(),
                "node {id} exited with {} after SIGTERM",
                stopped.status
            );
        }
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.id)
            .collect()
    }

    /// Bootstraps the cluster's ACL (once; later calls return at once)
    /// and returns the root token's secret.
    pub async fn bootstrap(&self) -> &str {
        if let Some(token) = self.root_token.get() {
            return token;
        }
        let endpoints: Vec<SocketAddr> = self
            .running()
            .iter()
            .map(|id| self.node(*id).grpc.parse().expect("a loopback ip:port"))
            .collect();
        let token = kairos::launcher::bootstrap_root_token(&endpoints, BOOTSTRAP_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("bootstrap the ACL: {e}"));
        self.root_token.get_or_init(|| token.secret)
    }

    /// The root token's secret (after [`TestCluster::wait_ready`],
    /// [`TestCluster::wait_leader`] or [`TestCluster::bootstrap`]).
    pub fn token(&self) -> &str {
        self.root_token
            .get()
            .expect("the ACL is bootstrapped by wait_ready, wait_leader or bootstrap")
    }

    /// A channel to node `id` carrying the root token.
    pub fn channel(&self, id: u64) -> Authed {
        authed(&self.node(id).grpc, Bearer::new(self.token()))
    }

    /// A channel to node `id` carrying `bearer`.
    pub fn channel_as(&self, id: u64, bearer: Bearer) -> Authed {
        authed(&self.node(id).grpc, bearer)
    }

    /// `kairos` with `--endpoints` of every node and the root token in
    /// `KAIROS_TOKEN`, ready for its arguments.
    pub fn cli(&self) -> std::process::Command {
        let endpoints: Vec<&str> = self.nodes.iter().map(|n| n.grpc.as_str()).collect();
        let mut command = std::process::Command::new(kairos_bin());
        command
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .env("KAIROS_TOKEN", self.token());
        command
    }

    /// Waits until every running node answers `/readyz` with 200, then
    /// bootstraps the ACL if that was not done yet.
    pub async fn wait_ready(&self, timeout: Duration) {
        self.wait_ready_only(timeout).await;
        self.bootstrap().await;
    }

    /// Waits until every running node answers `/readyz` with 200, without
    /// bootstrapping: for clusters the kit's plain-text clients cannot
    /// reach (an API served over TLS), which a test bootstraps itself.
    pub async fn wait_ready_only(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let process = node.process.as_ref().expect("running");
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(e) = process.wait_ready(&self.probe, left).await {
                panic!(
                    "node {} not ready in {timeout:?} ({e}); log:\n{}",
                    node.id,
                    self.log(node.id)
                );
            }
        }
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log).unwrap_or_default()
    }

    /// A `JobService` client of node `id` with the root token.
    pub async fn jobs(&self, id: u64) -> JobServiceClient<Authed> {
        JobServiceClient::new(self.channel(id))
    }

    /// A `RunService` client of node `id` with the root token.
    pub async fn runs(&self, id: u64) -> RunServiceClient<Authed> {
        RunServiceClient::new(self.channel(id))
    }

    /// A `ClusterService` client of node `id` with the root token.
    pub async fn cluster_client(&self, id: u64) -> ClusterServiceClient<Authed> {
        ClusterServiceClient::new(self.channel(id))
    }

    /// An `AclService` client of node `id` with the root token.
    pub fn acl(&self, id: u64) -> AclServiceClient<Authed> {
        AclServiceClient::new(self.channel(id))
    }

    /// An `AuditService` client of node `id` with the root token.
    pub fn audit(&self, id: u64) -> AuditServiceClient<Authed> {
        AuditServiceClient::new(self.channel(id))
    }

    /// Cluster status as node `id` sees it.
    pub async fn status(&self, id: u64) -> pb::ClusterStatus {
        self.cluster_client(id)
            .await
            .status(pb::ClusterStatusRequest::default())
            .await
            .unwrap()
            .into_inner()
    }

    /// Waits until node `id` has applied the cluster version `expected`
    /// ("MAJOR.MINOR") and returns its answer to `ClusterService.Version`.
    pub async fn wait_cluster_version(
        &self,
        id: u64,
        expected: &str,
        timeout: Duration,
    ) -> pb::ClusterVersion {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self
                .cluster_client(id)
                .await
                .version(pb::ClusterVersionRequest {})
                .await
                .map(|a| a.into_inner());
            if let Ok(answer) = &answer {
                if answer.cluster_version == expected {
                    return answer.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {id}: cluster version {answer:?} after {timeout:?}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running node agrees on one leader that is running,
    /// and returns it (bootstrapping the ACL first if that was not done yet).
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        self.bootstrap().await;
        loop {
            let mut seen = BTreeSet::new();
            for id in self.running() {
                let mut client = ClusterServiceClient::new(self.channel(id));
                match client.status(pb::ClusterStatusRequest::default()).await {
                    Ok(s) => seen.insert(s.into_inner().leader_id),
                    Err(_) => seen.insert(0),
                };
            }
            if seen.len() == 1 {
                let leader = *seen.first().unwrap();
                if leader != 0 && self.running().contains(&leader) {
                    return leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {timeout:?} (saw {seen:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// All job ids node `id` returns, paging through a listing at `consistency`.
    pub async fn list_ids(&self, id: u64, consistency: pb::ReadConsistency) -> BTreeSet<String> {
        let mut client = self.jobs(id).await;
        let mut ids = BTreeSet::new();
        let mut token = String::new();
        loop {
            let page = client
                .list_jobs(pb::ListJobsRequest {
                    page_size: 1000,
                    page_token: token.clone(),
                    consistency: consistency as i32,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            ids.extend(page.jobs.into_iter().map(|j| j.id));
            if page.next_page_token.is_empty() {
                return ids;
            }
            token = page.next_page_token;
        }
    }
}

impl Drop for TestCluster {
    /// Stops every node; when the test is failing, keeps the nodes' logs
    /// and data (the path is printed) instead of deleting them.
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(process) = node.process.take() {
                process.process().kill();
            }
        }
        if std::thread::panicking() {
            let placeholder = tempfile::tempdir().unwrap();
            let kept = std::mem::replace(&mut self.dir, placeholder).keep();
            eprintln!("test failed: node logs and data kept in {}", kept.display());
        }
    }
}
