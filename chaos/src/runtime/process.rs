//! Nodes as local `kairos agent` processes on loopback, every peer link
//! through a [`Proxy`] of the harness.
//!
//! Node `i` listens on its own free ports (gRPC, HTTP, worker network) and is
//! started with `--dial-map` entries that send its connections to each peer
//! `j` — both the Raft gRPC port and the worker-network port — to the proxies
//! of the ordered pair `(i, j)`. The harness itself talks to the nodes
//! directly, so a partition separates nodes from each other, not from the
//! client; the webhook receiver is reached directly too.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use super::NodeId;
use crate::proxy::{LinkControl, Proxy};

/// How to start the nodes.
pub struct ProcessOptions {
    pub nodes: u64,
    pub kairos_bin: PathBuf,
    /// Each node's data and log go to `<data_root>/node-<id>`.
    pub data_root: PathBuf,
    pub cookie: String,
    pub extra_args: Vec<String>,
    pub extra_env: Vec<(String, String)>,
    pub seed: u64,
}

struct NodeProcess {
    grpc: SocketAddr,
    http: SocketAddr,
    cluster: SocketAddr,
    data_dir: PathBuf,
    dial_map: String,
    child: Option<Child>,
}

/// The nodes, their proxies and the knobs of every link.
pub struct ProcessCluster {
    options: ProcessOptions,
    nodes: BTreeMap<NodeId, NodeProcess>,
    /// Raft and worker-network proxies of each ordered pair (from, to).
    links: BTreeMap<(NodeId, NodeId), [Arc<LinkControl>; 2]>,
    initial_cluster: String,
    proxies: CancellationToken,
}

/// A loopback address for a node to bind, from below the ephemeral range
/// (see [`kairos::ports`]): a kernel-chosen port could be taken by an
/// outgoing connection before the node binds it.
fn free_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], kairos::ports::free_loopback_port()))
}

impl ProcessCluster {
    /// Picks ports and starts every proxy; nodes start with [`ProcessCluster::start_all`].
    pub async fn create(options: ProcessOptions) -> Result<ProcessCluster> {
        let mut nodes = BTreeMap::new();
        for id in 1..=options.nodes {
            let data_dir = options.data_root.join(format!("node-{id}"));
            std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
            nodes.insert(
                id,
                NodeProcess {
                    grpc: free_port(),
                    http: free_port(),
                    cluster: free_port(),
                    data_dir,
                    dial_map: String::new(),
                    child: None,
                },
            );
        }
        let proxies = CancellationToken::new();
        let mut links = BTreeMap::new();
        let mut dial_maps: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
        for &from in nodes.keys() {
            for (&to, target) in &nodes {
                if from == to {
                    continue;
                }
                let seed = options.seed ^ (from << 32) ^ (to << 16);
                let raft = Proxy::start(target.grpc, seed, proxies.clone()).await?;
                let cluster = Proxy::start(target.cluster, seed ^ 1, proxies.clone()).await?;
                let map = dial_maps.entry(from).or_default();
                map.push(format!("{}={}", target.grpc, raft.listen));
                map.push(format!("{}={}", target.cluster, cluster.listen));
                links.insert((from, to), [raft.control, cluster.control]);
            }
        }
        for (id, node) in nodes.iter_mut() {
            node.dial_map = dial_maps.remove(id).unwrap_or_default().join(",");
        }
        let initial_cluster = nodes
            .iter()
            .map(|(id, n)| format!("{id}={}", n.grpc))
            .collect::<Vec<_>>()
            .join(",");
        Ok(ProcessCluster {
            options,
            nodes,
            links,
            initial_cluster,
            proxies,
        })
    }

    /// Starts every node.
    pub async fn start_all(&mut self) -> Result<()> {
        for id in self.ids() {
            self.start(id).await?;
        }
        Ok(())
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn client_addr(&self, id: NodeId) -> String {
        self.nodes[&id].grpc.to_string()
    }

    pub fn is_running(&mut self, id: NodeId) -> bool {
        let node = self.nodes.get_mut(&id).expect("known node");
        match node.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub async fn start(&mut self, id: NodeId) -> Result<()> {
        if self.is_running(id) {
            return Ok(());
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        let log = File::options()
            .create(true)
            .append(true)
            .open(node.data_dir.join("agent.log"))
            .context("opening the node log")?;
        let mut command = Command::new(&self.options.kairos_bin);
        command
            .arg("agent")
            .args(["--node-id", &id.to_string()])
            .arg("--data-dir")
            .arg(node.data_dir.join("data"))
            .args(["--grpc-addr", &node.grpc.to_string()])
            .args(["--http-addr", &node.http.to_string()])
            .args(["--cluster-addr", &node.cluster.to_string()])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--cluster-cookie", &self.options.cookie])
            .args(["--dial-map", &node.dial_map])
            .args(&self.options.extra_args)
            .envs(self.options.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.options.kairos_bin.display()))?;
        node.child = Some(child);
        Ok(())
    }

    pub async fn kill(&mut self, id: NodeId) -> Result<()> {
        let node = self.nodes.get_mut(&id).expect("known node");
        if let Some(mut child) = node.child.take() {
            // A stopped process dies of SIGKILL too.
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    fn signal(&mut self, id: NodeId, signal: Signal) -> Result<()> {
        let node = self.nodes.get(&id).expect("known node");
        if let Some(child) = &node.child {
            kill(Pid::from_raw(child.id() as i32), signal)
                .with_context(|| format!("{signal} to node {id}"))?;
        }
        Ok(())
    }

    pub async fn pause(&mut self, id: NodeId) -> Result<()> {
        self.signal(id, Signal::SIGSTOP)
    }

    pub async fn resume(&mut self, id: NodeId) -> Result<()> {
        self.signal(id, Signal::SIGCONT)
    }

    /// Cuts every link between nodes on different sides.
    pub async fn partition(&mut self, sides: &[Vec<NodeId>]) -> Result<()> {
        let side_of = |id: NodeId| sides.iter().position(|s| s.contains(&id));
        for (&(from, to), controls) in &self.links {
            if side_of(from) != side_of(to) {
                controls.iter().for_each(|c| c.set_cut(true));
            }
        }
        Ok(())
    }

    pub fn cut_links(&mut self, pairs: &[(NodeId, NodeId)]) -> Result<()> {
        for &(a, b) in pairs {
            for key in [(a, b), (b, a)] {
                if let Some(controls) = self.links.get(&key) {
                    controls.iter().for_each(|c| c.set_cut(true));
                }
            }
        }
        Ok(())
    }

    pub fn degrade_links(&mut self, delay_ms: u64, break_per_mille: u32) -> Result<()> {
        for controls in self.links.values() {
            controls
                .iter()
                .for_each(|c| c.set_degraded(delay_ms, break_per_mille));
        }
        Ok(())
    }

    pub async fn heal(&mut self) -> Result<()> {
        for controls in self.links.values() {
            controls.iter().for_each(|c| c.heal());
        }
        Ok(())
    }

    /// Stops every node (SIGCONT first, so a paused node can die) and the proxies.
    pub async fn shutdown(&mut self) {
        for id in self.ids() {
            let _ = self.resume(id).await;
            let _ = self.kill(id).await;
        }
        self.proxies.cancel();
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.proxies.cancel();
    }
}
