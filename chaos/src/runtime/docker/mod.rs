//! Kairos nodes as Docker containers on a network the harness creates.
//!
//! The runtime speaks to the Docker daemon through its Engine API
//! ([`bollard`]), over `DOCKER_HOST` or the local socket, with the API
//! version negotiated down to the daemon's. No `docker` program is needed.
//!
//! # Approach
//!
//! - **Image from the local binary** ([`image`]). The machine has a Docker
//!   daemon but no registry, so nothing is pulled. [`DockerCluster::create`]
//!   writes a root filesystem tarball (with the [`tar`] crate) holding the
//!   `kairos` binary as `/kairos`, the shared libraries `ldd` resolves for it
//!   (and the dynamic loader) at their host paths, and empty `/data` and
//!   `/tmp` directories, then streams it to the daemon's image import with
//!   the change `ENTRYPOINT ["/kairos"]`. A static binary ("not a dynamic
//!   executable") gets no libraries.
//! - **Static IPs** ([`network`]). A fixed container address only works on a
//!   network with a user-configured subnet, so the network `kchaos-<run_id>`
//!   is created once to let Docker choose a free subnet, inspected, removed
//!   and created again with that subnet and gateway spelled out. Node `i`
//!   gets host part `10 + i` and listens on that address (`:7101` client
//!   gRPC, `:7401` peers, `:7201` HTTP, `:7301` worker network); its
//!   `--initial-cluster` names every node's peer address. The host reaches these addresses directly over the
//!   Linux bridge, and the containers reach the host at the network's gateway
//!   ([`DockerCluster::webhook_host`]).
//! - **Data survives kill + start, and the harness can reach it**
//!   ([`container`]). Each node's directory on the host
//!   (`<data_root>/node-<id>`) is mounted into its container at the same
//!   path, and its `--data-dir` is in there (on the node's small
//!   filesystem in a round with `disk_full`, see [`crate::small_disk`]).
//!   Starting the container again brings back the same arguments and data.
//!   The paths being the same inside and out, the fault libraries'
//!   switches and write log ([`crate::preload`]) mean the same file to the
//!   node and to the harness, and a stopped node's files can be torn
//!   ([`crate::torn`]) from the host as in process mode.
//! - **Fault libraries in the image** ([`image`]). The libraries a round
//!   preloads are put into the image at their host paths, with what `ldd`
//!   resolves for them, and `LD_PRELOAD` names them in each container's
//!   environment: clock, fsync, slow-disk, torn-write and lost-tail faults
//!   work as in process mode.
//! - **Partition by disconnect.** The nodes off the largest side are
//!   disconnected from the network and reconnected with their own IP by
//!   [`DockerCluster::heal`]. Containers run with the sysctl
//!   `net.ipv4.ip_nonlocal_bind=1`, so a node (re)started while disconnected
//!   can still bind its address and runs isolated until healed, instead of
//!   exiting with "Cannot assign requested address".
//! - **Cleanup.** Everything is named `kchaos-<run_id>...` and the containers
//!   and the network carry the label `kairos-chaos=<run_id>`.
//!   [`DockerCluster::shutdown`] removes the containers, the network, the
//!   image and the work directory; if it was not called, `Drop` does the same
//!   synchronously. Something already gone counts as removed.
//!
//! Every request runs under a timeout, and a failing request's error names
//! the operation, the object and the daemon's answer.
//!
//! The synchronous operations (`Drop`, [`DockerCluster::is_running`],
//! [`DockerCluster::log`]) run their requests on a thread of their own with a
//! runtime and a connection of their own ([`blocking`]): the client's pooled
//! connections are driven by tasks of the runtime that opened them, which the
//! blocked caller may be holding up.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! - Cutting single links (A–B cut while both still reach C): every node is on
//!   one network, a node is either on it or not.
//! - Slow or lossy links: there is no `tc` in a scratch image (nor a shell).
//! - The daemon is found through `DOCKER_HOST` or the local socket only; the
//!   `docker` CLI's contexts are not read.
//! - The `kairos agent` arguments are assembled here ([`container`]), not by
//!   the product's own launcher.

mod container;
mod image;
mod network;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bollard::Docker;

use super::NodeId;
use crate::preload::{ClockFaults, Libraries, NodeFaults, SyncFaults};
use crate::small_disk::SmallDisk;

/// Limit for an ordinary request to the daemon.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);
/// Limit for importing the image of a (possibly large, debug) binary.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(300);
/// Limit for connecting and asking the daemon's version in [`docker_available`].
const AVAILABILITY_TIMEOUT: Duration = Duration::from_secs(5);
/// Limit for the synchronous calls ([`DockerCluster::is_running`], [`DockerCluster::log`]).
const QUICK_TIMEOUT: Duration = Duration::from_secs(10);
/// Label on every container and the network: `kairos-chaos=<run_id>`.
const LABEL_KEY: &str = "kairos-chaos";

/// What to run.
#[derive(Debug, Clone)]
pub struct DockerOptions {
    /// Number of nodes (3 or 5).
    pub nodes: u64,
    /// The `kairos` binary put into the image.
    pub kairos_bin: PathBuf,
    /// Unique per run; part of every name (`kchaos-<run_id>-...`). Letters, digits, `_`, `.`, `-`.
    pub run_id: String,
    /// The cluster cookie of every node (in its environment).
    pub cookie: String,
    /// Extra agent flags appended for every node.
    pub extra_args: Vec<String>,
    /// Extra environment variables of every container.
    pub extra_env: Vec<(String, String)>,
    /// The host directory of the nodes' files: node `id`'s are under
    /// `node-<id>/`, which its container mounts at the same path.
    pub data_root: PathBuf,
    /// The fault libraries preloaded into every node.
    pub libraries: Libraries,
    /// Each node's data on a tmpfs of this many MiB ([`SmallDisk`], for
    /// `disk_full`), where the harness may mount.
    pub small_disk_mib: Option<u64>,
}

/// One node's files on the host.
#[derive(Debug)]
struct NodeFiles {
    /// `<data_root>/node-<id>`, absolute; mounted into the container at the same path.
    dir: PathBuf,
    /// The node's `--data-dir`, under `dir`.
    data_dir: PathBuf,
    /// Its switches of the preloaded fault libraries.
    faults: NodeFaults,
    /// The environment that preloads them.
    preload_env: Vec<(String, String)>,
    /// Its small filesystem, in a round with `disk_full`.
    disk: Option<SmallDisk>,
}

/// One node's container.
#[derive(Debug, Clone)]
struct Node {
    /// The node's Raft id (1..=N).
    id: NodeId,
    /// Its fixed address on the run's network.
    ip: Ipv4Addr,
    /// Its container's name, `kchaos-<run_id>-n<id>`.
    container: String,
}

/// The nodes of one run, each in its own container.
pub struct DockerCluster {
    /// What the caller asked for.
    opts: DockerOptions,
    /// The daemon connection every asynchronous operation uses.
    docker: Docker,
    /// `kchaos-<run_id>-image:latest`, built from `opts.kairos_bin`.
    image: String,
    /// `kchaos-<run_id>`, the network of every node.
    network: String,
    /// The network's gateway: the host, as the containers see it.
    gateway: Ipv4Addr,
    /// Ascending by id; planned once the network's subnet is known.
    nodes: Vec<Node>,
    /// Each node's files on the host. Dropped (small disks unmounted)
    /// after the containers are removed.
    files: BTreeMap<NodeId, NodeFiles>,
    /// Holds the rootfs tarball while the image is built.
    work_dir: Option<PathBuf>,
    /// Set before the request that may create the image; cleared by cleanup.
    image_may_exist: bool,
    /// Set before the request that may create the network; cleared by cleanup.
    network_may_exist: bool,
    /// Set before the first container is created; cleared by cleanup.
    containers_may_exist: bool,
}

/// Whether a Docker daemon answers (its version within 5 s).
pub async fn docker_available() -> bool {
    let ask = async { connect().await?.version().await.map_err(anyhow::Error::from) };
    match tokio::time::timeout(AVAILABILITY_TIMEOUT, ask).await {
        Ok(Ok(version)) => version.version.is_some_and(|v| !v.trim().is_empty()),
        _ => false,
    }
}

impl DockerCluster {
    /// Builds the image from `opts.kairos_bin` and creates the network; starts no node.
    /// A network of the same name (a leftover of the same run id) is replaced.
    /// On error, whatever was made is removed again.
    pub async fn create(opts: DockerOptions) -> Result<DockerCluster> {
        validate_options(&opts)?;
        let run_id = opts.run_id.clone();
        let work_dir = std::env::temp_dir().join(format!("kchaos-{run_id}-{}", std::process::id()));
        let mut cluster = DockerCluster {
            docker: connect().await?,
            image: image_tag(&run_id),
            network: format!("kchaos-{run_id}"),
            gateway: Ipv4Addr::UNSPECIFIED,
            nodes: Vec::new(),
            files: BTreeMap::new(),
            work_dir: None,
            image_may_exist: false,
            network_may_exist: false,
            containers_may_exist: false,
            opts,
        };
        // From here on an error drops `cluster`, and Drop removes what was made.
        std::fs::create_dir_all(&work_dir)
            .with_context(|| format!("creating work directory {}", work_dir.display()))?;
        cluster.work_dir = Some(work_dir.clone());
        cluster.image_may_exist = true;
        cluster.files = node_files(&cluster.opts)?;
        let preloads: Vec<PathBuf> = [&cluster.opts.libraries.disk, &cluster.opts.libraries.clock]
            .into_iter()
            .flatten()
            .map(|library| std::fs::canonicalize(library).unwrap_or_else(|_| library.clone()))
            .collect();
        let importer = cluster.docker.clone().with_timeout(IMPORT_TIMEOUT);
        let binary = &cluster.opts.kairos_bin;
        image::build(&importer, binary, &preloads, &work_dir, &cluster.image).await?;
        cluster.create_network().await?;
        Ok(cluster)
    }

    /// Creates and starts (detached) every node's container.
    pub async fn start_all(&mut self) -> Result<()> {
        self.containers_may_exist = true;
        for node in &self.nodes {
            let files = &self.files[&node.id];
            let agent = container::agent_spec(
                node,
                &self.nodes,
                &files.data_dir,
                &self.opts.cookie,
                &self.opts.extra_args,
            );
            let mut env = agent.agent_env();
            env.extend(self.opts.extra_env.iter().cloned());
            env.extend(files.preload_env.iter().cloned());
            let spec = container::Spec {
                image: &self.image,
                network: &self.network,
                label: (LABEL_KEY, &self.opts.run_id),
                env: &env,
                args: agent.agent_args(),
                shared_dir: &files.dir,
            };
            container::run(&self.docker, node, spec)
                .await
                .with_context(|| format!("starting node {}", node.id))?;
        }
        Ok(())
    }

    /// The IPv4 address at which the containers reach the host: the network's gateway.
    pub fn webhook_host(&self) -> String {
        self.gateway.to_string()
    }

    /// Node ids, ascending (1..=N).
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// `<container ip>:7101`, reachable from the host.
    ///
    /// Panics if `id` is not a node of this cluster.
    pub fn client_addr(&self, id: NodeId) -> String {
        format!("{}:{}", self.expect_node(id).ip, container::GRPC_PORT)
    }

    /// Whether the node's container is running (paused counts as running).
    /// False if Docker cannot tell.
    pub fn is_running(&mut self, id: NodeId) -> bool {
        let Some(name) = self.node(id).map(|n| n.container.clone()) else {
            return false;
        };
        blocking(QUICK_TIMEOUT, move |docker| async move {
            container::is_running(&docker, &name).await
        })
        .unwrap_or(false)
    }

    /// Starts the node's container again (same container, same data).
    pub async fn start(&mut self, id: NodeId) -> Result<()> {
        container::start(&self.docker, &self.container_of(id)?).await
    }

    /// Kills the node's process with SIGKILL (also of a paused node); a
    /// stopped node is left as it is.
    pub async fn kill(&mut self, id: NodeId) -> Result<()> {
        container::kill(&self.docker, &self.container_of(id)?).await
    }

    /// Freezes the node (Docker's pause: the cgroup freezer).
    pub async fn pause(&mut self, id: NodeId) -> Result<()> {
        container::pause(&self.docker, &self.container_of(id)?).await
    }

    /// Unfreezes the node.
    pub async fn resume(&mut self, id: NodeId) -> Result<()> {
        container::unpause(&self.docker, &self.container_of(id)?).await
    }

    /// Keeps the largest side on the network (of equally large sides, the one
    /// listed first) and disconnects every other node, including nodes on no
    /// side. Nodes of the kept side that an earlier partition disconnected are
    /// reconnected, so a partition replaces the previous one.
    pub async fn partition(&mut self, sides: &[Vec<NodeId>]) -> Result<()> {
        for id in sides.iter().flatten() {
            self.container_of(*id)?;
        }
        let kept: BTreeSet<NodeId> = largest_side(sides)
            .ok_or_else(|| anyhow!("partition without sides"))?
            .iter()
            .copied()
            .collect();
        let attached = self.attached_nodes().await?;
        for node in &self.nodes {
            match (kept.contains(&node.id), attached.contains(&node.id)) {
                (true, false) => network::connect(&self.docker, &self.network, node).await?,
                (false, true) => network::disconnect(&self.docker, &self.network, node).await?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Reconnects every disconnected node with its own IP. Idempotent.
    pub async fn heal(&mut self) -> Result<()> {
        let attached = self.attached_nodes().await?;
        for node in &self.nodes {
            if !attached.contains(&node.id) {
                network::connect(&self.docker, &self.network, node).await?;
            }
        }
        Ok(())
    }

    /// Removes every container, the network, the image and the work
    /// directory, and unmounts the small disks (the nodes' data stays).
    /// Best effort (failures are printed), never panics; safe to call twice.
    pub async fn shutdown(&mut self) {
        for leftover in self.take_leftovers() {
            leftover.remove(&self.docker).await;
        }
        self.files.clear();
        self.remove_work_dir();
    }

    /// Node `id`'s switches of the disk-fault library, if it is preloaded.
    pub fn sync_faults(&self, id: NodeId) -> Option<&SyncFaults> {
        self.files.get(&id)?.faults.sync.as_ref()
    }

    /// Node `id`'s switch of the clock-fault library, if it is preloaded.
    pub fn clock_faults(&self, id: NodeId) -> Option<&ClockFaults> {
        self.files.get(&id)?.faults.clock.as_ref()
    }

    /// Node `id`'s `--data-dir` (the same path inside its container).
    ///
    /// Panics if `id` is not a node of this cluster.
    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.files[&id].data_dir.clone()
    }

    /// Node `id`'s filesystem, if the harness mounted one for it.
    pub fn small_disk(&self, id: NodeId) -> Option<&SmallDisk> {
        self.files.get(&id)?.disk.as_ref()
    }

    /// How node `id`'s container ended, if it stopped (killed, or exited by
    /// itself): its exit code, or the signal that ended it (Docker reports
    /// 128 + the signal).
    pub fn exit_status(&self, id: NodeId) -> Option<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        let name = self.node(id)?.container.clone();
        let state = blocking(QUICK_TIMEOUT, move |docker| async move {
            container::state(&docker, &name).await
        })
        .ok()?;
        if state.running.unwrap_or(true) {
            return None;
        }
        let code = state.exit_code.unwrap_or(0).clamp(0, 255) as i32;
        Some(match code {
            129..=159 => std::process::ExitStatus::from_raw(code - 128),
            code => std::process::ExitStatus::from_raw(code << 8),
        })
    }

    /// Node `id`'s resident memory in KiB (`VmRSS` of its container's
    /// process, read from the host's `/proc`), while it runs.
    pub fn rss_kib(&self, id: NodeId) -> Option<u64> {
        let name = self.node(id)?.container.clone();
        let state = blocking(QUICK_TIMEOUT, move |docker| async move {
            container::state(&docker, &name).await
        })
        .ok()?;
        let pid = state.pid.filter(|&pid| pid > 0)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// The length of node `id`'s log now (where a later read starts).
    pub fn log_len(&self, id: NodeId) -> u64 {
        self.log(id).len() as u64
    }

    /// What node `id` logged after the first `from` bytes of its log.
    pub fn log_since(&self, id: NodeId, from: u64) -> String {
        let log = self.log(id);
        log.get(from as usize..).unwrap_or_default().to_string()
    }

    /// The node's log (stdout and stderr, interleaved as written); empty on error.
    pub fn log(&self, id: NodeId) -> String {
        let Some(name) = self.node(id).map(|n| n.container.clone()) else {
            return String::new();
        };
        blocking(QUICK_TIMEOUT, move |docker| async move {
            container::logs(&docker, &name).await
        })
        .unwrap_or_default()
    }

    fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    fn expect_node(&self, id: NodeId) -> &Node {
        match self.node(id) {
            Some(node) => node,
            None => panic!("docker runtime: no node {id} (nodes are {:?})", self.ids()),
        }
    }

    fn container_of(&self, id: NodeId) -> Result<String> {
        self.node(id)
            .map(|n| n.container.clone())
            .ok_or_else(|| anyhow!("docker runtime: no node {id} (nodes are {:?})", self.ids()))
    }

    /// Creates the network with a subnet Docker chose, then fixes the node addresses.
    async fn create_network(&mut self) -> Result<()> {
        self.network_may_exist = true;
        let (subnet, gateway) =
            network::create_with_fixed_subnet(&self.docker, &self.network, (LABEL_KEY, &self.opts.run_id))
                .await?;
        self.gateway = gateway;
        self.nodes = network::plan_nodes(&self.opts.run_id, self.opts.nodes, subnet, gateway)?;
        Ok(())
    }

    /// The nodes whose containers are connected to the network (running or not).
    async fn attached_nodes(&self) -> Result<BTreeSet<NodeId>> {
        let mut attached = BTreeSet::new();
        for node in &self.nodes {
            if network::is_attached(&self.docker, &self.network, &node.container).await? {
                attached.insert(node.id);
            }
        }
        Ok(attached)
    }

    /// What may exist, in the order it must be removed; forgets it, so a
    /// second cleanup does nothing.
    fn take_leftovers(&mut self) -> Vec<Leftover> {
        let mut leftovers = Vec::new();
        if std::mem::take(&mut self.containers_may_exist) {
            let names = (1..=self.opts.nodes).map(|id| container_name(&self.opts.run_id, id));
            leftovers.extend(names.map(Leftover::Container));
        }
        if std::mem::take(&mut self.network_may_exist) {
            leftovers.push(Leftover::Network(self.network.clone()));
        }
        if std::mem::take(&mut self.image_may_exist) {
            leftovers.push(Leftover::Image(self.image.clone()));
        }
        leftovers
    }

    fn remove_work_dir(&mut self) {
        if let Some(dir) = self.work_dir.take() {
            if let Err(err) = std::fs::remove_dir_all(&dir) {
                if err.kind() != io::ErrorKind::NotFound {
                    eprintln!("docker runtime cleanup: removing {}: {err}", dir.display());
                }
            }
        }
    }
}

impl Drop for DockerCluster {
    /// Same cleanup as [`DockerCluster::shutdown`], synchronously, if it was not done.
    fn drop(&mut self) {
        let leftovers = self.take_leftovers();
        if !leftovers.is_empty() {
            let limit = DOCKER_TIMEOUT.saturating_mul(leftovers.len() as u32);
            let cleanup = blocking(limit, move |docker| async move {
                for leftover in leftovers {
                    leftover.remove(&docker).await;
                }
                Ok(())
            });
            if let Err(err) = cleanup {
                eprintln!("docker runtime cleanup: {err:#}");
            }
        }
        self.remove_work_dir();
    }
}

/// Something of a run's that the daemon may still hold.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Leftover {
    /// A node's container, by name (removed by force, running or not).
    Container(String),
    /// The run's network, by name.
    Network(String),
    /// The run's image, by tag.
    Image(String),
}

impl Leftover {
    /// Removes it; prints a failure instead of returning it (cleanup goes on).
    async fn remove(self, docker: &Docker) {
        let result = match &self {
            Leftover::Container(name) => container::remove(docker, name).await,
            Leftover::Network(name) => network::remove(docker, name).await,
            Leftover::Image(tag) => image::remove(docker, tag).await,
        };
        if let Err(err) = result {
            eprintln!("docker runtime cleanup: {err:#}");
        }
    }
}

/// Each node's directory under `opts.data_root` (made absolute: it is
/// mounted at the same path inside the container), its data dir (on a small
/// filesystem when asked for), and its switches of the fault libraries.
fn node_files(opts: &DockerOptions) -> Result<BTreeMap<NodeId, NodeFiles>> {
    std::fs::create_dir_all(&opts.data_root)
        .with_context(|| format!("creating {}", opts.data_root.display()))?;
    let data_root = std::fs::canonicalize(&opts.data_root)
        .with_context(|| format!("resolving {}", opts.data_root.display()))?;
    let mut disks = crate::small_disk::mount_each(&data_root, opts.nodes, opts.small_disk_mib);
    let mut files = BTreeMap::new();
    for id in 1..=opts.nodes {
        let dir = data_root.join(format!("node-{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let disk = disks.remove(&id);
        let data_dir = disk
            .as_ref()
            .map_or_else(|| dir.join("data"), SmallDisk::data_dir);
        let (faults, preload_env) = opts.libraries.for_node(&dir);
        files.insert(
            id,
            NodeFiles {
                dir,
                data_dir,
                faults,
                preload_env,
                disk,
            },
        );
    }
    Ok(files)
}

// ---------------------------------------------------------------------------
// The daemon connection

/// Connects to the daemon (`DOCKER_HOST`, or the local socket) and settles on
/// the highest API version both sides speak.
async fn connect() -> Result<Docker> {
    let docker = Docker::connect_with_defaults()
        .context("connecting to the Docker daemon")?
        .with_timeout(DOCKER_TIMEOUT);
    docker
        .negotiate_version()
        .await
        .context("asking the Docker daemon for its API version")
}

/// Runs `work` with a connection of its own on a thread of its own, within
/// `limit`, for synchronous callers (see the module documentation).
fn blocking<T, F, Fut>(limit: Duration, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Docker) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a runtime for a synchronous Docker call")?;
        runtime.block_on(async move {
            let call = async { work(connect().await?).await };
            tokio::time::timeout(limit, call)
                .await
                .map_err(|_| anyhow!("the Docker daemon did not answer within {limit:?}"))?
        })
    });
    thread
        .join()
        .map_err(|_| anyhow!("a synchronous Docker call panicked"))?
}

/// Whether `err` is the daemon answering with HTTP status `code`.
fn is_status(err: &bollard::errors::Error, code: u16) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == code
    )
}

/// `Ok` for a success or for the daemon's 404 (the thing is not there).
fn ignore_not_found(result: Result<(), bollard::errors::Error>) -> Result<(), bollard::errors::Error> {
    match result {
        Err(err) if is_status(&err, 404) => Ok(()),
        other => other,
    }
}

// ---------------------------------------------------------------------------
// Names and options

fn validate_options(opts: &DockerOptions) -> Result<()> {
    let id = &opts.run_id;
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if id.is_empty() || !id.chars().all(valid_char) {
        bail!("run id {id:?}: use letters, digits, '_', '.', '-' (it is part of Docker names)");
    }
    if opts.nodes == 0 {
        bail!("a cluster needs at least one node");
    }
    if !opts.kairos_bin.is_file() {
        bail!("kairos binary {} is not a file", opts.kairos_bin.display());
    }
    Ok(())
}

fn container_name(run_id: &str, id: NodeId) -> String {
    format!("kchaos-{run_id}-n{id}")
}

/// `kchaos-<run_id>-image:latest`, lowercased; other characters than `[a-z0-9]`
/// become `-` (image names are stricter than container names).
fn image_tag(run_id: &str) -> String {
    let repository: String = run_id
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("kchaos-{repository}-image:latest")
}

/// The first of the largest sides.
fn largest_side(sides: &[Vec<NodeId>]) -> Option<&Vec<NodeId>> {
    // max_by_key returns the last maximum; iterate reversed to get the first.
    sides.iter().rev().max_by_key(|side| side.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_side_prefers_the_first_of_equals() {
        assert_eq!(largest_side(&[vec![1, 2], vec![3]]), Some(&vec![1, 2]));
        assert_eq!(largest_side(&[vec![1], vec![2, 3]]), Some(&vec![2, 3]));
        assert_eq!(
            largest_side(&[vec![1, 2], vec![3, 4], vec![5]]),
            Some(&vec![1, 2])
        );
        assert_eq!(largest_side(&[]), None);
    }

    #[test]
    fn image_tags_are_valid_references() {
        assert_eq!(image_tag("Run_1.x"), "kchaos-run-1-x-image:latest");
    }

    #[test]
    fn leftovers_are_removed_containers_first_and_only_once() {
        let mut cluster = DockerCluster {
            opts: DockerOptions {
                nodes: 2,
                kairos_bin: PathBuf::from("/nonexistent"),
                run_id: "r".into(),
                cookie: String::new(),
                extra_args: Vec::new(),
                extra_env: Vec::new(),
                data_root: PathBuf::from("/nonexistent"),
                libraries: Libraries::default(),
                small_disk_mib: None,
            },
            docker: Docker::connect_with_defaults().expect("a client (no request is sent)"),
            image: image_tag("r"),
            network: "kchaos-r".into(),
            gateway: Ipv4Addr::UNSPECIFIED,
            nodes: Vec::new(),
            files: BTreeMap::new(),
            work_dir: None,
            image_may_exist: true,
            network_may_exist: true,
            containers_may_exist: true,
        };
        assert_eq!(
            cluster.take_leftovers(),
            [
                Leftover::Container("kchaos-r-n1".into()),
                Leftover::Container("kchaos-r-n2".into()),
                Leftover::Network("kchaos-r".into()),
                Leftover::Image("kchaos-r-image:latest".into()),
            ]
        );
        assert_eq!(cluster.take_leftovers(), []);
    }
}
