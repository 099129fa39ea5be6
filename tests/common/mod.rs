//! Test harness: real `kairos agent` processes on free loopback ports, each with
//! its own temporary data directory, stopped (killed if need be) on drop.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kairos::proto as pb;
use kairos::proto::cluster_service_client::ClusterServiceClient;
use kairos::proto::job_service_client::JobServiceClient;
use tempfile::TempDir;
use tokio::time::Instant;
use tonic::transport::Channel;

/// Path of the binary under test.
pub const KAIROS: &str = env!("CARGO_BIN_EXE_kairos");

/// A free loopback port for a node to bind later (see [`kairos::ports`]).
pub fn free_port() -> u16 {
    kairos::ports::free_loopback_port()
}

/// One node process.
pub struct TestNode {
    pub id: u64,
    pub grpc: String,
    pub http: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl TestNode {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while running.
    #[allow(dead_code)] // used by the load tool, not by every test binary
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A cluster of node processes.
pub struct TestCluster {
    _dir: TempDir,
    pub nodes: Vec<TestNode>,
    initial_cluster: String,
    extra_args: Vec<String>,
    /// Extra flags of single nodes: `(node id, flag)`.
    node_args: Vec<(u64, String)>,
}

impl TestCluster {
    /// Starts `n` nodes forming a new cluster.
    pub fn start(n: u64, extra_args: &[&str]) -> TestCluster {
        Self::start_with_node_args(n, extra_args, &[])
    }

    /// Like [`TestCluster::start`], with extra flags for single nodes.
    pub fn start_with_node_args(n: u64, extra_args: &[&str], node_args: &[(u64, &str)]) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<TestNode> = (1..=n)
            .map(|id| {
                let data_dir = dir.path().join(format!("node-{id}"));
                std::fs::create_dir_all(&data_dir).unwrap();
                TestNode {
                    id,
                    grpc: format!("127.0.0.1:{}", free_port()),
                    http: format!("127.0.0.1:{}", free_port()),
                    log: dir.path().join(format!("node-{id}.log")),
                    data_dir,
                    child: None,
                }
            })
            .collect();
        let initial_cluster = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.grpc))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = TestCluster {
            _dir: dir,
            nodes,
            initial_cluster,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            node_args: node_args.iter().map(|(id, a)| (*id, a.to_string())).collect(),
        };
        for id in 1..=n {
            cluster.spawn(id);
        }
        cluster
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
        let id = self.nodes.len() as u64 + 1;
        let data_dir = self._dir.path().join(format!("node-{id}"));
        std::fs::create_dir_all(&data_dir).unwrap();
        self.nodes.push(TestNode {
            id,
            grpc: format!("127.0.0.1:{}", free_port()),
            http: format!("127.0.0.1:{}", free_port()),
            log: self._dir.path().join(format!("node-{id}.log")),
            data_dir,
            child: None,
        });
        self.spawn_with(id, false);
        id
    }

    /// (Re)starts node `id`, with or without `--initial-cluster`.
    pub fn spawn_with(&mut self, id: u64, initial_cluster: bool) {
        let initial = if initial_cluster {
            format!("--initial-cluster={}", self.initial_cluster)
        } else {
            String::new()
        };
        let mut extra = self.extra_args.clone();
        extra.extend(
            self.node_args
                .iter()
                .filter(|(n, _)| *n == id)
                .map(|(_, a)| a.clone()),
        );
        let node = &mut self.nodes[(id - 1) as usize];
        assert!(node.child.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let child = Command::new(KAIROS)
            .arg("agent")
            .arg(format!("--node-id={id}"))
            .arg(format!("--data-dir={}", node.data_dir.display()))
            .arg(format!("--grpc-addr={}", node.grpc))
            .arg(format!("--http-addr={}", node.http))
            .arg(format!("--cluster-addr=127.0.0.1:{}", free_port()))
            .arg("--cluster-cookie=kairos-test")
            .args((!initial.is_empty()).then_some(initial))
            .args(&extra)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start kairos agent");
        node.child = Some(child);
    }

    /// kill -9 node `id`.
    pub fn kill(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        if let Some(mut child) = node.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM node `id` and wait for it to exit cleanly.
    pub fn stop(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        if let Some(mut child) = node.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "node {id} exited with {status} after SIGTERM");
                    break;
                }
                if std::time::Instant::now() > deadline {
                    child.kill().unwrap();
                    panic!("node {id} did not stop within 15 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.id)
            .collect()
    }

    /// Waits until every running node answers `/readyz` with 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for id in self.running() {
            let node = self.node(id);
            loop {
                if let Ok((200, _)) = kairos::http::fetch(&node.http, "/readyz").await {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {id} not ready in {timeout:?}; log:\n{}",
                    self.log(id)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log).unwrap_or_default()
    }

    pub async fn jobs(&self, id: u64) -> JobServiceClient<Channel> {
        JobServiceClient::connect(format!("http://{}", self.node(id).grpc))
            .await
            .unwrap()
    }

    pub async fn cluster_client(&self, id: u64) -> ClusterServiceClient<Channel> {
        ClusterServiceClient::connect(format!("http://{}", self.node(id).grpc))
            .await
            .unwrap()
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

    /// Waits until every running node agrees on one leader that is running, and returns it.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut seen = BTreeSet::new();
            for id in self.running() {
                match ClusterServiceClient::connect(format!("http://{}", self.node(id).grpc)).await {
                    Ok(mut c) => match c.status(pb::ClusterStatusRequest::default()).await {
                        Ok(s) => seen.insert(s.into_inner().leader_id),
                        Err(_) => seen.insert(0),
                    },
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
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            let placeholder = tempfile::tempdir().unwrap();
            let kept = std::mem::replace(&mut self._dir, placeholder).keep();
            eprintln!("test failed: node logs and data kept in {}", kept.display());
        }
    }
}

/// A minimal valid job message.
pub fn job(id: &str) -> pb::ScheduledJob {
    pb::ScheduledJob {
        id: id.to_string(),
        r#type: "noop".into(),
        owner_service: "tests".into(),
        schedule: "*/5 * * * *".into(),
        payload: b"{}".to_vec(),
        ..Default::default()
    }
}

/// Creates `id` through node `via` with a request id, retrying while the
/// cluster is unavailable (a retried create with the same request id is
/// idempotent). Returns whether the write was acknowledged.
pub async fn create(cluster: &TestCluster, via: u64, id: &str) -> bool {
    let request = pb::CreateJobRequest {
        job: Some(job(id)),
        request_id: format!("req-{id}"),
    };
    for _ in 0..20 {
        let Ok(mut client) = JobServiceClient::connect(format!("http://{}", cluster.node(via).grpc)).await
        else {
            return false;
        };
        match client.create_job(request.clone()).await {
            Ok(reply) => {
                assert_eq!(reply.into_inner().id, id);
                return true;
            }
            Err(s) if s.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => panic!("create {id} via node {via}: {s:?}"),
        }
    }
    false
}

/// One request received by the [`recorder`].
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The `Idempotency-Key` header (`job_id:nominal_time`).
    pub key: String,
    /// The `X-Kairos-Attempt` header.
    pub attempt: u32,
    /// Receive time minus the `X-Kairos-Nominal-Time` header, ms.
    pub lateness_ms: i64,
}

/// Every request a recorder received.
pub type Deliveries = Arc<Mutex<Vec<Delivery>>>;

/// A recording webhook on a free loopback port: returns its URL.
pub async fn recorder() -> (String, Deliveries) {
    let deliveries: Deliveries = Arc::default();
    let seen = deliveries.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let seen = seen.clone();
        async move {
            let received = chrono::Utc::now();
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let nominal = chrono::DateTime::parse_from_rfc3339(&header("x-kairos-nominal-time"))
                .map(|t| t.timestamp_millis())
                .unwrap_or(0);
            seen.lock().unwrap().push(Delivery {
                key: header("idempotency-key"),
                attempt: header("x-kairos-attempt").parse().unwrap_or(0),
                lateness_ms: received.timestamp_millis() - nominal,
            });
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, deliveries)
}
