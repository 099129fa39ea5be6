//! Nodes as local `kairos agent` processes on loopback, every peer link
//! through a [`Proxy`] of the harness.
//!
//! Node `i` listens on its own free ports (client gRPC, peer, HTTP, worker
//! network) and is started with `--dial-map` entries that send its
//! connections to each peer `j` — both the peer (Raft) port and the
//! worker-network port — to the proxies of the ordered pair `(i, j)`. The
//! proxies relay bytes, so the nodes' peer authentication (cluster secret or
//! TLS) runs end to end through them. The harness itself talks to the nodes
//! directly, so a partition separates nodes from each other, not from the
//! client; the webhook receiver is reached directly too.
//!
//! The nodes are started through [`kairos::launcher`], on ports from
//! [`kairos_testkit::free_port`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use kairos::launcher::{AgentSpec, Launch, NodeProcess};
use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;

use super::NodeId;
use crate::preload::{ClockFaults, Libraries, NodeFaults, SyncFaults};
use crate::proxy::{LinkControl, Proxy};
use crate::small_disk::SmallDisk;

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
    /// The fault libraries to preload into every node
    /// ([`crate::preload`]), those that were wanted and could be built.
    pub libraries: Libraries,
    /// Each node's data on a tmpfs of this many MiB ([`SmallDisk`], for
    /// `disk_full`); left out, with a warning, where mounting is refused.
    pub small_disk_mib: Option<u64>,
}

/// One node: how it starts, and its process while it runs.
struct Node {
    launch: Launch,
    process: Option<NodeProcess>,
    /// Its switches of the fault libraries preloaded into it.
    faults: NodeFaults,
    /// The filesystem its data lives on, when the harness mounted one.
    disk: Option<SmallDisk>,
}

/// The nodes, their proxies and the knobs of every link.
pub struct ProcessCluster {
    nodes: BTreeMap<NodeId, Node>,
    /// Raft and worker-network proxies of each ordered pair (from, to).
    links: BTreeMap<(NodeId, NodeId), [Arc<LinkControl>; 2]>,
    proxies: CancellationToken,
}

/// A loopback address for a node to bind, from below the ephemeral range
/// (see [`kairos_testkit::free_port`]): a kernel-chosen port could be taken
/// by an outgoing connection before the node binds it.
fn free_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], kairos_testkit::free_port()))
}

impl ProcessCluster {
    /// Picks ports and starts every proxy; nodes start with [`ProcessCluster::start_all`].
    pub async fn create(options: ProcessOptions) -> Result<ProcessCluster> {
        let mut specs = BTreeMap::new();
        let mut disks =
            crate::small_disk::mount_each(&options.data_root, options.nodes, options.small_disk_mib);
        for id in 1..=options.nodes {
            let node_dir = options.data_root.join(format!("node-{id}"));
            std::fs::create_dir_all(&node_dir).with_context(|| format!("creating {}", node_dir.display()))?;
            let data_dir = match disks.get(&id) {
                Some(disk) => disk.data_dir(),
                None => node_dir.join("data"),
            };
            let spec = AgentSpec {
                id,
                data_dir,
                grpc_addr: free_port(),
                peer_addr: free_port(),
                http_addr: free_port(),
                cluster_addr: free_port(),
                initial_cluster: BTreeMap::new(),
                cookie: options.cookie.clone(),
                extra_args: options.extra_args.clone(),
            };
            specs.insert(id, (spec, node_dir.join("agent.log"), node_dir));
        }
        let initial_cluster: BTreeMap<NodeId, String> = specs
            .iter()
            .map(|(id, (spec, _, _))| (*id, spec.peer_addr.to_string()))
            .collect();
        let proxies = CancellationToken::new();
        let mut links = BTreeMap::new();
        let mut dial_maps: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
        for &from in specs.keys() {
            for (&to, (target, _, _)) in &specs {
                if from == to {
                    continue;
                }
                let seed = options.seed ^ (from << 32) ^ (to << 16);
                let raft = Proxy::start(target.peer_addr, seed, proxies.clone()).await?;
                let cluster = Proxy::start(target.cluster_addr, seed ^ 1, proxies.clone()).await?;
                let map = dial_maps.entry(from).or_default();
                map.push(format!("{}={}", target.peer_addr, raft.listen));
                map.push(format!("{}={}", target.cluster_addr, cluster.listen));
                links.insert((from, to), [raft.control, cluster.control]);
            }
        }
        let mut nodes = BTreeMap::new();
        for (id, (mut agent, log, node_dir)) in specs {
            agent.initial_cluster = initial_cluster.clone();
            let dial_map = dial_maps.remove(&id).unwrap_or_default().join(",");
            agent.extra_args.extend(["--dial-map".to_string(), dial_map]);
            let mut env = options.extra_env.clone();
            let (faults, preload) = options.libraries.for_node(&node_dir);
            env.extend(preload);
            let launch = Launch {
                binary: options.kairos_bin.clone(),
                agent,
                env,
                log,
            };
            nodes.insert(
                id,
                Node {
                    launch,
                    process: None,
                    faults,
                    disk: disks.remove(&id),
                },
            );
        }
        Ok(ProcessCluster {
            nodes,
            links,
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
        self.nodes[&id].launch.agent.grpc_addr.to_string()
    }

    /// The process of node `id`, while the harness has it started.
    fn process(&self, id: NodeId) -> Option<&NodeProcess> {
        self.nodes.get(&id).expect("known node").process.as_ref()
    }

    pub fn is_running(&mut self, id: NodeId) -> bool {
        self.process(id).is_some_and(|p| p.process().is_running())
    }

    pub async fn start(&mut self, id: NodeId) -> Result<()> {
        if self.is_running(id) {
            return Ok(());
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        node.process = Some(node.launch.start()?);
        Ok(())
    }

    /// Stops node `id` as an operator would (SIGTERM, waiting up to
    /// `grace` for it to exit, then SIGKILL); returns whether it had to be killed.
    pub async fn stop(&mut self, id: NodeId, grace: std::time::Duration) -> Result<bool> {
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(process) = node.process.take() else {
            return Ok(false);
        };
        Ok(process.process().terminate_async(grace).await.forced)
    }

    /// Runs node `id` on `binary` from its next start (a rolling upgrade).
    pub fn set_binary(&mut self, id: NodeId, binary: &std::path::Path) {
        self.nodes.get_mut(&id).expect("known node").launch.binary = binary.to_path_buf();
    }

    /// Node `id`'s resident memory in KiB (`VmRSS`), while it runs.
    pub fn rss_kib(&self, id: NodeId) -> Option<u64> {
        let pid = self.process(id)?.process().pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// How node `id`'s process ended, if the harness started it and it exited.
    pub fn exit_status(&self, id: NodeId) -> Option<std::process::ExitStatus> {
        self.process(id).and_then(|p| p.process().exit_status())
    }

    pub async fn kill(&mut self, id: NodeId) -> Result<()> {
        let node = self.nodes.get_mut(&id).expect("known node");
        if let Some(process) = node.process.take() {
            // A stopped process dies of SIGKILL too.
            process.process().kill();
        }
        Ok(())
    }

    fn signal(&mut self, id: NodeId, signal: Signal) -> Result<()> {
        if let Some(process) = self.process(id) {
            process
                .process()
                .signal(signal)
                .with_context(|| format!("{signal} to node {id}"))?;
        }
        Ok(())
    }

    pub async fn pause(&mut self, id: NodeId) -> Result<()> {
        self.signal(id, Signal::SIGSTOP)
    }

    /// Node `id`'s switches of the disk-fault library, if it is preloaded.
    pub fn sync_faults(&self, id: NodeId) -> Option<&SyncFaults> {
        self.nodes.get(&id).expect("known node").faults.sync.as_ref()
    }

    /// The length of node `id`'s log file now (where a later read starts).
    pub fn log_len(&self, id: NodeId) -> u64 {
        let log = &self.nodes.get(&id).expect("known node").launch.log;
        std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
    }

    /// What node `id` logged after the first `from` bytes of its log file
    /// (empty if the file cannot be read).
    pub fn log_since(&self, id: NodeId, from: u64) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let log = &self.nodes.get(&id).expect("known node").launch.log;
        let mut bytes = Vec::new();
        let read = std::fs::File::open(log).and_then(|mut file| {
            file.seek(SeekFrom::Start(from))
                .and_then(|_| file.read_to_end(&mut bytes))
        });
        match read {
            Ok(_) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => String::new(),
        }
    }

    /// Node `id`'s `--data-dir`.
    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.nodes
            .get(&id)
            .expect("known node")
            .launch
            .agent
            .data_dir
            .clone()
    }

    /// Node `id`'s filesystem, if the harness mounted one for it.
    pub fn small_disk(&self, id: NodeId) -> Option<&SmallDisk> {
        self.nodes.get(&id).expect("known node").disk.as_ref()
    }

    /// Node `id`'s switch of the clock-fault library, if it is preloaded.
    pub fn clock_faults(&self, id: NodeId) -> Option<&ClockFaults> {
        self.nodes.get(&id).expect("known node").faults.clock.as_ref()
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

    /// The controls of every link between the given pairs, both directions.
    fn links_between<'a>(
        &'a self,
        pairs: &'a [(NodeId, NodeId)],
    ) -> impl Iterator<Item = &'a Arc<LinkControl>> {
        pairs
            .iter()
            .flat_map(|&(a, b)| [(a, b), (b, a)])
            .filter_map(|key| self.links.get(&key))
            .flatten()
    }

    pub fn cut_links(&mut self, pairs: &[(NodeId, NodeId)]) -> Result<()> {
        self.links_between(pairs).for_each(|c| c.set_cut(true));
        Ok(())
    }

    pub fn slow_links(&mut self, pairs: &[(NodeId, NodeId)], delay_ms: u64) -> Result<()> {
        self.links_between(pairs)
            .for_each(|c| c.set_degraded(delay_ms, 0));
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

    /// Stops every node (kill -9 ends a paused one too) and the proxies,
    /// and unmounts the nodes' filesystems.
    pub async fn shutdown(&mut self) {
        for id in self.ids() {
            let _ = self.kill(id).await;
        }
        for node in self.nodes.values_mut() {
            node.disk.take();
        }
        self.proxies.cancel();
    }
}

impl Drop for ProcessCluster {
    /// Every node process is killed as its handle drops; the proxies stop here.
    fn drop(&mut self) {
        self.proxies.cancel();
    }
}
