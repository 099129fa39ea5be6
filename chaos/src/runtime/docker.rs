//! Kairos nodes as Docker containers on a network the harness creates.
//!
//! # Approach
//!
//! - **Image from the local binary.** The machine has a Docker daemon but no
//!   registry, so nothing is pulled. [`DockerCluster::create`] writes a root
//!   filesystem tarball holding the `kairos` binary as `/kairos`, the shared
//!   libraries `ldd` resolves for it (and the dynamic loader) at their host
//!   paths, and empty `/data` and `/tmp` directories, then turns it into an
//!   image with `docker import --change 'ENTRYPOINT ["/kairos"]'`. A static
//!   binary ("not a dynamic executable") gets no libraries. The tarball is
//!   written by a small ustar writer in this file; no `tar` program is needed.
//! - **Static IPs.** `docker run --ip` only works on a network with a
//!   user-configured subnet, so the network `kchaos-<run_id>` is created once
//!   to let Docker choose a free subnet, inspected, removed and created again
//!   with that subnet and gateway spelled out. Node `i` gets host part `10 + i`
//!   and listens on that address (`:7101` gRPC, `:7201` HTTP, `:7301` worker
//!   network); its `--initial-cluster` names every node's address. The host
//!   reaches these addresses directly over the Linux bridge, and the
//!   containers reach the host at the network's gateway
//!   ([`DockerCluster::webhook_host`]).
//! - **Data survives kill + start.** `--data-dir /data` lives in the
//!   container's own filesystem; `docker start` brings the same container back
//!   with the same arguments and the same data.
//! - **Partition by disconnect.** The nodes off the largest side are
//!   disconnected from the network (`docker network disconnect`) and
//!   reconnected with their own IP by [`DockerCluster::heal`]. Containers run
//!   with `--sysctl net.ipv4.ip_nonlocal_bind=1`, so a node (re)started while
//!   disconnected can still bind its address and runs isolated until healed,
//!   instead of exiting with "Cannot assign requested address".
//! - **Cleanup.** Everything is named `kchaos-<run_id>...` and the containers
//!   and the network carry the label `kairos-chaos=<run_id>`.
//!   [`DockerCluster::shutdown`] removes the containers, the network, the
//!   image and the work directory; if it was not called, `Drop` does the same
//!   synchronously.
//!
//! Every `docker` call runs under a timeout, and a failing call's error names
//! the command line and its stderr.
//!
//! # Not supported
//!
//! - Cutting single links (A–B cut while both still reach C): every node is on
//!   one network, a node is either on it or not.
//! - Slow or lossy links: there is no `tc` in a scratch image (nor a shell).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::NodeId;

/// Limit for an ordinary `docker` call.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);
/// Limit for `docker import` of a (possibly large, debug) binary.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(300);
/// Limit for `docker info` in [`docker_available`].
const AVAILABILITY_TIMEOUT: Duration = Duration::from_secs(5);
/// Limit for the synchronous calls ([`DockerCluster::is_running`], [`DockerCluster::log`]).
const QUICK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a synchronous call is polled for its exit.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

const GRPC_PORT: u16 = 7101;
const HTTP_PORT: u16 = 7201;
const CLUSTER_PORT: u16 = 7301;
/// Node `i` gets the host part `FIRST_HOST_OFFSET + i` in the network's subnet.
const FIRST_HOST_OFFSET: u32 = 10;
/// Label on every container and the network: `kairos-chaos=<run_id>`.
const LABEL_KEY: &str = "kairos-chaos";
/// Attempts at creating the network (another network may take the subnet in between).
const NETWORK_ATTEMPTS: usize = 3;
/// Lets a node bind its address while its container is disconnected.
const NONLOCAL_BIND_SYSCTL: &str = "net.ipv4.ip_nonlocal_bind=1";

/// What to run.
#[derive(Debug, Clone)]
pub struct DockerOptions {
    /// Number of nodes (3 or 5).
    pub nodes: u64,
    /// The `kairos` binary put into the image.
    pub kairos_bin: PathBuf,
    /// Unique per run; part of every name (`kchaos-<run_id>-...`). Letters, digits, `_`, `.`, `-`.
    pub run_id: String,
    /// `--cluster-cookie` of every node.
    pub cookie: String,
    /// Extra agent flags appended for every node.
    pub extra_args: Vec<String>,
    /// Extra environment variables of every container.
    pub extra_env: Vec<(String, String)>,
}

/// One node's container.
#[derive(Debug, Clone)]
struct Node {
    id: NodeId,
    ip: Ipv4Addr,
    container: String,
}

/// The nodes of one run, each in its own container.
pub struct DockerCluster {
    opts: DockerOptions,
    image: String,
    network: String,
    gateway: Ipv4Addr,
    nodes: Vec<Node>,
    /// Holds the rootfs tarball while the image is built.
    work_dir: Option<PathBuf>,
    /// Set before the command that may create the thing runs; cleared by cleanup.
    image_may_exist: bool,
    network_may_exist: bool,
    containers_may_exist: bool,
}

/// Whether a Docker daemon answers (`docker info` within 5 s).
pub async fn docker_available() -> bool {
    let args = ["info", "--format", "{{.ServerVersion}}"];
    match run_command("docker", &args, AVAILABILITY_TIMEOUT).await {
        Ok(version) => !version.trim().is_empty(),
        Err(_) => false,
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
            image: image_tag(&run_id),
            network: format!("kchaos-{run_id}"),
            gateway: Ipv4Addr::UNSPECIFIED,
            nodes: Vec::new(),
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
        cluster.build_image(&work_dir).await?;
        cluster.create_network().await?;
        Ok(cluster)
    }

    /// `docker run` (detached) every node.
    pub async fn start_all(&mut self) -> Result<()> {
        self.containers_may_exist = true;
        for node in self.nodes.clone() {
            let args = self.run_args(&node);
            run_docker(&as_strs(&args), DOCKER_TIMEOUT)
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
        format!("{}:{GRPC_PORT}", self.expect_node(id).ip)
    }

    /// Whether the node's container is running (paused counts as running).
    /// False if Docker cannot tell.
    pub fn is_running(&mut self, id: NodeId) -> bool {
        let Some(node) = self.node(id) else {
            return false;
        };
        let args = [
            "inspect",
            "--format",
            "{{.State.Running}}",
            node.container.as_str(),
        ];
        match run_blocking("docker", &args, QUICK_TIMEOUT) {
            Ok(output) => output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "true",
            Err(_) => false,
        }
    }

    /// Starts the node's container again (same container, same data).
    pub async fn start(&mut self, id: NodeId) -> Result<()> {
        let container = self.container_of(id)?;
        run_docker(&["start", &container], DOCKER_TIMEOUT).await.map(drop)
    }

    /// `docker kill -s KILL` (also of a paused node); a stopped node is left as it is.
    pub async fn kill(&mut self, id: NodeId) -> Result<()> {
        let container = self.container_of(id)?;
        match run_docker(&["kill", "--signal", "KILL", &container], DOCKER_TIMEOUT).await {
            Ok(_) => Ok(()),
            Err(err) if format!("{err:#}").contains("is not running") => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Freezes the node (`docker pause`).
    pub async fn pause(&mut self, id: NodeId) -> Result<()> {
        let container = self.container_of(id)?;
        run_docker(&["pause", &container], DOCKER_TIMEOUT).await.map(drop)
    }

    /// Unfreezes the node (`docker unpause`).
    pub async fn resume(&mut self, id: NodeId) -> Result<()> {
        let container = self.container_of(id)?;
        run_docker(&["unpause", &container], DOCKER_TIMEOUT)
            .await
            .map(drop)
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
        for node in self.nodes.clone() {
            match (kept.contains(&node.id), attached.contains(&node.id)) {
                (true, false) => self.connect(&node).await?,
                (false, true) => self.disconnect(&node).await?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Reconnects every disconnected node with its own IP. Idempotent.
    pub async fn heal(&mut self) -> Result<()> {
        let attached = self.attached_nodes().await?;
        for node in self.nodes.clone() {
            if !attached.contains(&node.id) {
                self.connect(&node).await?;
            }
        }
        Ok(())
    }

    /// Removes every container, the network, the image and the work directory.
    /// Best effort (failures are printed), never panics; safe to call twice.
    pub async fn shutdown(&mut self) {
        for args in self.take_cleanup_commands() {
            if let Err(err) = run_docker(&as_strs(&args), DOCKER_TIMEOUT).await {
                eprintln!("docker runtime cleanup: {err:#}");
            }
        }
        self.remove_work_dir();
    }

    /// The node's `docker logs` (stdout and stderr, interleaved); empty on error.
    pub fn log(&self, id: NodeId) -> String {
        let Some(node) = self.node(id) else {
            return String::new();
        };
        match run_blocking_merged("docker", &["logs", node.container.as_str()], QUICK_TIMEOUT) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => String::new(),
        }
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

    /// Writes the rootfs tarball and `docker import`s it; removes the tarball afterwards.
    async fn build_image(&mut self, work_dir: &Path) -> Result<()> {
        let binary = self.opts.kairos_bin.clone();
        let libraries = shared_libraries(&binary).await?;
        let tarball = work_dir.join("rootfs.tar");
        let entries = rootfs_entries(&binary, &libraries);
        let target = tarball.clone();
        tokio::task::spawn_blocking(move || write_rootfs_tarball(&target, &entries))
            .await
            .context("rootfs tarball writer panicked")?
            .with_context(|| format!("writing {}", tarball.display()))?;
        self.image_may_exist = true;
        let tarball_arg = tarball.to_string_lossy().into_owned();
        let result = run_docker(
            &[
                "import",
                "--change",
                r#"ENTRYPOINT ["/kairos"]"#,
                &tarball_arg,
                &self.image,
            ],
            IMPORT_TIMEOUT,
        )
        .await;
        let _ = std::fs::remove_file(&tarball);
        result.map(drop)
    }

    /// Creates the network with a subnet Docker chose, then fixes the node addresses.
    async fn create_network(&mut self) -> Result<()> {
        let label = self.label();
        let mut last_error = None;
        for _ in 0..NETWORK_ATTEMPTS {
            self.network_may_exist = true;
            match create_network_with_fixed_subnet(&self.network, &label).await {
                Ok((subnet, gateway)) => {
                    self.gateway = gateway;
                    self.nodes = plan_nodes(&self.opts.run_id, self.opts.nodes, subnet, gateway)?;
                    return Ok(());
                }
                Err(err) => {
                    let _ = run_docker(&["network", "rm", &self.network], DOCKER_TIMEOUT).await;
                    last_error = Some(err);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("network {} not created", self.network)))
    }

    fn label(&self) -> String {
        format!("{LABEL_KEY}={}", self.opts.run_id)
    }

    /// `docker run` arguments of one node.
    fn run_args(&self, node: &Node) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--detach".into(),
            "--name".into(),
            node.container.clone(),
            "--label".into(),
            self.label(),
            "--network".into(),
            self.network.clone(),
            "--ip".into(),
            node.ip.to_string(),
            "--sysctl".into(),
            NONLOCAL_BIND_SYSCTL.into(),
        ];
        for (key, value) in &self.opts.extra_env {
            args.push("--env".into());
            args.push(format!("{key}={value}"));
        }
        args.push(self.image.clone());
        args.extend(self.agent_args(node));
        args
    }

    /// The `kairos agent` arguments of one node.
    fn agent_args(&self, node: &Node) -> Vec<String> {
        let ip = node.ip;
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--node-id".into(),
            node.id.to_string(),
            "--data-dir".into(),
            "/data".into(),
            "--grpc-addr".into(),
            format!("{ip}:{GRPC_PORT}"),
            "--http-addr".into(),
            format!("{ip}:{HTTP_PORT}"),
            "--cluster-addr".into(),
            format!("{ip}:{CLUSTER_PORT}"),
            "--initial-cluster".into(),
            self.initial_cluster(),
            "--cluster-cookie".into(),
            self.opts.cookie.clone(),
        ];
        args.extend(self.opts.extra_args.iter().cloned());
        args
    }

    /// `1=<ip1>:7101,2=<ip2>:7101,...`
    fn initial_cluster(&self) -> String {
        let members: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}={}:{GRPC_PORT}", n.id, n.ip))
            .collect();
        members.join(",")
    }

    /// The nodes whose containers are connected to the network (running or not).
    async fn attached_nodes(&self) -> Result<BTreeSet<NodeId>> {
        let mut args = vec!["inspect"];
        args.extend(self.nodes.iter().map(|n| n.container.as_str()));
        let json = run_docker(&args, DOCKER_TIMEOUT).await?;
        let attached_containers = containers_attached_to(&json, &self.network)?;
        Ok(self
            .nodes
            .iter()
            .filter(|n| attached_containers.contains(&n.container))
            .map(|n| n.id)
            .collect())
    }

    async fn connect(&self, node: &Node) -> Result<()> {
        let ip = node.ip.to_string();
        run_docker(
            &["network", "connect", "--ip", &ip, &self.network, &node.container],
            DOCKER_TIMEOUT,
        )
        .await
        .map(drop)
    }

    async fn disconnect(&self, node: &Node) -> Result<()> {
        run_docker(
            &["network", "disconnect", &self.network, &node.container],
            DOCKER_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// The `docker` calls that remove what may exist, in order; forgets them,
    /// so a second cleanup does nothing.
    fn take_cleanup_commands(&mut self) -> Vec<Vec<String>> {
        let mut commands = Vec::new();
        if std::mem::take(&mut self.containers_may_exist) {
            let mut rm = vec!["rm".to_string(), "--force".to_string()];
            rm.extend((1..=self.opts.nodes).map(|id| container_name(&self.opts.run_id, id)));
            commands.push(rm);
        }
        if std::mem::take(&mut self.network_may_exist) {
            commands.push(vec!["network".into(), "rm".into(), self.network.clone()]);
        }
        if std::mem::take(&mut self.image_may_exist) {
            commands.push(vec!["rmi".into(), self.image.clone()]);
        }
        commands
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
        for args in self.take_cleanup_commands() {
            let output = run_blocking("docker", &as_strs(&args), DOCKER_TIMEOUT);
            if let Err(err) = output.and_then(|o| check_success("docker", &as_strs(&args), o)) {
                eprintln!("docker runtime cleanup: {err:#}");
            }
        }
        self.remove_work_dir();
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

// ---------------------------------------------------------------------------
// Network and addresses

/// An IPv4 subnet such as 172.18.0.0/16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Subnet {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Subnet {
    fn parse(text: &str) -> Result<Subnet> {
        let (address, prefix) = text
            .split_once('/')
            .ok_or_else(|| anyhow!("subnet {text:?} has no prefix length"))?;
        let address: Ipv4Addr = address.parse().with_context(|| format!("subnet {text:?}"))?;
        let prefix_len: u8 = prefix.parse().with_context(|| format!("subnet {text:?}"))?;
        if prefix_len > 32 {
            bail!("subnet {text:?}: prefix length above 32");
        }
        let mask = if prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - prefix_len)
        };
        Ok(Subnet {
            network: Ipv4Addr::from(u32::from(address) & mask),
            prefix_len,
        })
    }

    /// The address with host part `host`; an error if the subnet has no such
    /// usable address (the network and broadcast addresses are not usable).
    fn host(&self, host: u32) -> Result<Ipv4Addr> {
        let host_bits = 32 - u32::from(self.prefix_len);
        let size: u64 = 1u64 << host_bits;
        if host == 0 || u64::from(host) >= size.saturating_sub(1) {
            bail!("subnet {self} has no usable host {host}");
        }
        Ok(Ipv4Addr::from(u32::from(self.network) + host))
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Node `i` at host part `10 + i`, named `kchaos-<run_id>-n<i>`.
fn plan_nodes(run_id: &str, count: u64, subnet: Subnet, gateway: Ipv4Addr) -> Result<Vec<Node>> {
    (1..=count)
        .map(|id| {
            let host = u32::try_from(id)
                .ok()
                .and_then(|id| id.checked_add(FIRST_HOST_OFFSET))
                .ok_or_else(|| anyhow!("node id {id} too large"))?;
            let ip = subnet.host(host)?;
            if ip == gateway {
                bail!("node {id}'s address {ip} is the gateway of {subnet}");
            }
            Ok(Node {
                id,
                ip,
                container: container_name(run_id, id),
            })
        })
        .collect()
}

/// Creates `name` letting Docker pick a free subnet, reads it back, and
/// creates the network again with that subnet and gateway given explicitly
/// (which `docker run --ip` requires).
async fn create_network_with_fixed_subnet(name: &str, label: &str) -> Result<(Subnet, Ipv4Addr)> {
    run_docker(&["network", "create", "--label", label, name], DOCKER_TIMEOUT).await?;
    let inspect = run_docker(&["network", "inspect", name], DOCKER_TIMEOUT).await?;
    let (subnet, gateway) = network_ipv4_config(&inspect)?;
    run_docker(&["network", "rm", name], DOCKER_TIMEOUT).await?;
    let subnet_arg = subnet.to_string();
    let gateway_arg = gateway.to_string();
    let args = [
        "network",
        "create",
        "--label",
        label,
        "--subnet",
        &subnet_arg,
        "--gateway",
        &gateway_arg,
        name,
    ];
    run_docker(&args, DOCKER_TIMEOUT).await?;
    Ok((subnet, gateway))
}

/// The first IPv4 subnet of a `docker network inspect` answer and its gateway
/// (the subnet's first host if Docker names none).
fn network_ipv4_config(inspect_json: &str) -> Result<(Subnet, Ipv4Addr)> {
    let parsed: Value = serde_json::from_str(inspect_json).context("parsing docker network inspect")?;
    let configs = parsed
        .get(0)
        .and_then(|n| n.pointer("/IPAM/Config"))
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("docker network inspect: no IPAM.Config in {inspect_json}"))?;
    for config in configs {
        let Some(Ok(subnet)) = config.get("Subnet").and_then(Value::as_str).map(Subnet::parse) else {
            continue;
        };
        let gateway = match config
            .get("Gateway")
            .and_then(Value::as_str)
            .filter(|g| !g.is_empty())
        {
            Some(gateway) => gateway.parse().with_context(|| format!("gateway {gateway:?}"))?,
            None => subnet.host(1)?,
        };
        return Ok((subnet, gateway));
    }
    bail!("docker network inspect: no IPv4 subnet in {inspect_json}")
}

/// Names (without the leading `/`) of the containers in a `docker inspect`
/// answer that are connected to `network`.
fn containers_attached_to(inspect_json: &str, network: &str) -> Result<BTreeSet<String>> {
    let parsed: Value = serde_json::from_str(inspect_json).context("parsing docker inspect")?;
    let containers = parsed
        .as_array()
        .ok_or_else(|| anyhow!("docker inspect: not a list"))?;
    Ok(containers
        .iter()
        .filter(|c| {
            c.pointer("/NetworkSettings/Networks")
                .and_then(|n| n.get(network))
                .is_some()
        })
        .filter_map(|c| c.get("Name").and_then(Value::as_str))
        .map(|name| name.trim_start_matches('/').to_string())
        .collect())
}

// ---------------------------------------------------------------------------
// The root filesystem

/// A file or directory of the image, at `path` (relative, no leading `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum RootfsEntry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        source: PathBuf,
    },
}

/// The shared libraries (and loader) `ldd` resolves for `binary`; none for a static binary.
async fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let binary_arg = binary.to_string_lossy().into_owned();
    let output = run_command_output("ldd", &[&binary_arg], DOCKER_TIMEOUT).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if is_static_ldd_answer(&stdout) || is_static_ldd_answer(&stderr) {
        return Ok(Vec::new());
    }
    check_success("ldd", &[&binary_arg], output.clone())?;
    parse_ldd(&stdout)
}

fn is_static_ldd_answer(text: &str) -> bool {
    text.contains("not a dynamic executable") || text.contains("statically linked")
}

/// Absolute paths in `ldd` output: `name => /path (0x..)` and `/path (0x..)`
/// lines; the vDSO (no path) is skipped; `=> not found` is an error.
fn parse_ldd(output: &str) -> Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, resolved)) if resolved.trim().starts_with("not found") => {
                bail!("ldd: {} not found", name.trim())
            }
            Some((_, resolved)) => resolved.trim(),
            None => line,
        };
        let path = target.split(" (").next().unwrap_or_default().trim();
        if path.starts_with('/') && !libraries.iter().any(|l: &PathBuf| l == Path::new(path)) {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// `/kairos`, the libraries at their own paths, the directories above them, `/data` and `/tmp`.
fn rootfs_entries(binary: &Path, libraries: &[PathBuf]) -> Vec<RootfsEntry> {
    let mut dirs: BTreeSet<String> = ["data".to_string()].into_iter().collect();
    let mut files = vec![RootfsEntry::File {
        path: "kairos".into(),
        mode: 0o755,
        source: binary.into(),
    }];
    for library in libraries {
        let inside = library.to_string_lossy().trim_start_matches('/').to_string();
        for ancestor in Path::new(&inside).ancestors().skip(1) {
            let ancestor = ancestor.to_string_lossy();
            if !ancestor.is_empty() {
                dirs.insert(ancestor.into_owned());
            }
        }
        files.push(RootfsEntry::File {
            path: inside,
            mode: 0o755,
            source: library.clone(),
        });
    }
    // Parents sort before their children.
    let mut entries: Vec<RootfsEntry> = dirs
        .into_iter()
        .map(|path| RootfsEntry::Dir { path, mode: 0o755 })
        .collect();
    entries.push(RootfsEntry::Dir {
        path: "tmp".into(),
        mode: 0o1777,
    });
    entries.extend(files);
    entries
}

fn write_rootfs_tarball(target: &Path, entries: &[RootfsEntry]) -> Result<()> {
    let file = std::fs::File::create(target)?;
    let mut tar = TarWriter::new(io::BufWriter::new(file));
    for entry in entries {
        match entry {
            RootfsEntry::Dir { path, mode } => tar.add_dir(path, *mode)?,
            RootfsEntry::File { path, mode, source } => tar
                .add_file(path, *mode, source)
                .with_context(|| format!("adding {} as /{path}", source.display()))?,
        }
    }
    tar.finish()?.flush()?;
    Ok(())
}

/// Writes a ustar archive (regular files and directories, root-owned).
struct TarWriter<W: Write> {
    out: W,
    mtime: u64,
}

const TAR_BLOCK: usize = 512;

impl<W: Write> TarWriter<W> {
    fn new(out: W) -> Self {
        let mtime = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        TarWriter { out, mtime }
    }

    fn add_dir(&mut self, path: &str, mode: u32) -> Result<()> {
        let header = tar_header(&format!("{path}/"), mode, 0, self.mtime, b'5')?;
        self.out.write_all(&header)?;
        Ok(())
    }

    /// Copies `source` (following symlinks) in as a regular file.
    fn add_file(&mut self, path: &str, mode: u32, source: &Path) -> Result<()> {
        let mut file = std::fs::File::open(source)?;
        let size = file.metadata()?.len();
        self.out
            .write_all(&tar_header(path, mode, size, self.mtime, b'0')?)?;
        let copied = io::copy(&mut (&mut file).take(size), &mut self.out)?;
        if copied != size {
            bail!(
                "{} shrank while copying ({copied} of {size} bytes)",
                source.display()
            );
        }
        self.write_padding(size)?;
        Ok(())
    }

    /// The two zero blocks that end an archive.
    fn finish(mut self) -> Result<W> {
        self.out.write_all(&[0u8; 2 * TAR_BLOCK])?;
        Ok(self.out)
    }

    fn write_padding(&mut self, size: u64) -> Result<()> {
        let rest = (size % TAR_BLOCK as u64) as usize;
        if rest != 0 {
            self.out.write_all(&vec![0u8; TAR_BLOCK - rest])?;
        }
        Ok(())
    }
}

/// A ustar header block; `kind` b'0' is a regular file, b'5' a directory.
fn tar_header(path: &str, mode: u32, size: u64, mtime: u64, kind: u8) -> Result<[u8; TAR_BLOCK]> {
    if path.len() >= 100 {
        bail!("tar path {path:?} is too long (ustar names end at 99 bytes here)");
    }
    let mut header = [0u8; TAR_BLOCK];
    header[..path.len()].copy_from_slice(path.as_bytes());
    put_octal(&mut header[100..108], u64::from(mode))?;
    put_octal(&mut header[108..116], 0)?; // uid
    put_octal(&mut header[116..124], 0)?; // gid
    put_octal(&mut header[124..136], size)?;
    put_octal(&mut header[136..148], mtime)?;
    header[156] = kind;
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[265..269].copy_from_slice(b"root");
    header[297..301].copy_from_slice(b"root");
    // The checksum is computed with its own field as spaces.
    header[148..156].copy_from_slice(b"        ");
    let checksum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    let digits = format!("{checksum:06o}\0 ");
    header[148..156].copy_from_slice(digits.as_bytes());
    Ok(header)
}

/// Zero-padded octal digits filling `field` but its last byte (NUL).
fn put_octal(field: &mut [u8], value: u64) -> Result<()> {
    let width = field.len() - 1;
    let digits = format!("{value:0width$o}");
    if digits.len() > width {
        bail!("{value} does not fit a {width}-digit tar field");
    }
    field[..width].copy_from_slice(digits.as_bytes());
    field[width] = 0;
    Ok(())
}

// ---------------------------------------------------------------------------
// Running commands

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `program arg ...` for error messages; arguments with spaces or quotes are single-quoted.
fn command_line(program: &str, args: &[&str]) -> String {
    let quote = |arg: &str| {
        if !arg.is_empty() && !arg.contains(|c: char| c.is_whitespace() || "'\"\\$`".contains(c)) {
            arg.to_string()
        } else {
            format!("'{}'", arg.replace('\'', r"'\''"))
        }
    };
    std::iter::once(program)
        .chain(args.iter().copied())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

/// An error naming the command line and its stderr unless `output` is a success.
fn check_success(program: &str, args: &[&str], output: Output) -> Result<Output> {
    if output.status.success() {
        return Ok(output);
    }
    bail!(
        "`{}` failed ({}): {}",
        command_line(program, args),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

/// Runs `program` to completion within `limit`, whatever its exit status.
async fn run_command_output(program: &str, args: &[&str], limit: Duration) -> Result<Output> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args.iter().map(OsStr::new))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match tokio::time::timeout(limit, command.output()).await {
        Ok(output) => output.with_context(|| format!("running `{}`", command_line(program, args))),
        Err(_) => bail!(
            "`{}` did not finish within {limit:?}",
            command_line(program, args)
        ),
    }
}

/// Runs `program` within `limit`; its stdout, or an error unless it succeeded.
async fn run_command(program: &str, args: &[&str], limit: Duration) -> Result<String> {
    let output = check_success(program, args, run_command_output(program, args, limit).await?)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

async fn run_docker(args: &[&str], limit: Duration) -> Result<String> {
    run_command("docker", args, limit).await
}

/// Like [`run_command_output`], for synchronous callers (`Drop`, `is_running`):
/// std::process, polled until `limit`, then killed.
fn run_blocking(program: &str, args: &[&str], limit: Duration) -> Result<Output> {
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running `{}`", command_line(program, args)))?;
    let stdout = drain_in_thread(child.stdout.take());
    let stderr = drain_in_thread(child.stderr.take());
    let status = wait_within(&mut child, limit)
        .with_context(|| format!("`{}` did not finish", command_line(program, args)))?;
    let collect = |reader: std::thread::JoinHandle<Vec<u8>>| reader.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

/// Runs `program` within `limit` with stdout and stderr on one pipe, so their
/// lines stay in order; the bytes, or an error unless it succeeded.
fn run_blocking_merged(program: &str, args: &[&str], limit: Duration) -> Result<Vec<u8>> {
    let (reader, writer) = io::pipe()?;
    let mut child = {
        let mut command = std::process::Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(writer.try_clone()?)
            .stderr(writer);
        command
            .spawn()
            .with_context(|| format!("running `{}`", command_line(program, args)))?
        // `command` drops here with our copies of the pipe's write end, so the
        // reader sees the end once the child exits.
    };
    let output = drain_in_thread(Some(reader));
    let status = wait_within(&mut child, limit)
        .with_context(|| format!("`{}` did not finish", command_line(program, args)))?;
    let bytes = output.join().unwrap_or_default();
    if !status.success() {
        bail!("`{}` failed ({status})", command_line(program, args));
    }
    Ok(bytes)
}

/// Reads `source` to its end on a thread (so a full pipe cannot block the child).
fn drain_in_thread<R: Read + Send + 'static>(source: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut source) = source {
            let _ = source.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// Waits for `child` until `limit`; kills it after that.
fn wait_within(child: &mut std::process::Child, limit: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("killed after {limit:?}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_resolved_paths_and_the_loader() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f55)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f54)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f55)\n";
        let libraries = parse_ldd(output).expect("parses");
        let expected: Vec<PathBuf> = [
            "/lib/x86_64-linux-gnu/libgcc_s.so.1",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(libraries, expected);
    }

    #[test]
    fn ldd_missing_library_is_an_error() {
        let error = parse_ldd("\tlibfoo.so.1 => not found\n").expect_err("missing library");
        assert!(error.to_string().contains("libfoo.so.1"), "{error}");
    }

    #[test]
    fn static_binaries_are_recognised() {
        assert!(is_static_ldd_answer("\tnot a dynamic executable\n"));
        assert!(is_static_ldd_answer("\tstatically linked\n"));
        assert!(!is_static_ldd_answer("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n"));
    }

    #[test]
    fn rootfs_has_data_tmp_and_parent_directories_first() {
        let libraries = [
            PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
            PathBuf::from("/lib64/ld.so"),
        ];
        let entries = rootfs_entries(Path::new("/bin/kairos"), &libraries);
        let paths: Vec<&str> = entries
            .iter()
            .map(|e| match e {
                RootfsEntry::Dir { path, .. } | RootfsEntry::File { path, .. } => path.as_str(),
            })
            .collect();
        assert_eq!(
            paths,
            [
                "data",
                "lib",
                "lib/x86_64-linux-gnu",
                "lib64",
                "tmp",
                "kairos",
                "lib/x86_64-linux-gnu/libc.so.6",
                "lib64/ld.so"
            ]
        );
    }

    #[test]
    fn tar_header_fields_and_checksum() {
        let header = tar_header("kairos", 0o755, 1234, 0, b'0').expect("header");
        assert_eq!(&header[0..7], b"kairos\0");
        assert_eq!(&header[100..108], b"0000755\0");
        assert_eq!(&header[124..136], b"00000002322\0");
        let stored = std::str::from_utf8(&header[148..154]).expect("ascii");
        let mut blank = header;
        blank[148..156].copy_from_slice(b"        ");
        let sum: u32 = blank.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(u32::from_str_radix(stored, 8).expect("octal"), sum);
    }

    #[test]
    fn tar_archive_is_padded_to_blocks() {
        let dir = std::env::temp_dir().join(format!("kchaos-tar-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let source = dir.join("file");
        std::fs::write(&source, b"hello").expect("write");
        let mut tar = TarWriter::new(Vec::new());
        tar.add_dir("data", 0o755).expect("dir entry");
        tar.add_file("file", 0o644, &source).expect("file entry");
        let bytes = tar.finish().expect("finish");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(bytes.len(), 512 + 512 + 512 + 1024);
        assert_eq!(&bytes[1024..1029], b"hello");
    }

    #[test]
    fn subnet_hosts() {
        let subnet = Subnet::parse("172.18.0.0/16").expect("subnet");
        assert_eq!(subnet.host(11).expect("host"), Ipv4Addr::new(172, 18, 0, 11));
        assert_eq!(
            Subnet::parse("10.0.0.77/24").expect("subnet").to_string(),
            "10.0.0.0/24"
        );
        let small = Subnet::parse("10.0.0.0/29").expect("subnet");
        assert!(small.host(7).is_err(), "broadcast");
        assert!(small.host(11).is_err(), "outside");
    }

    #[test]
    fn network_inspect_gives_subnet_and_gateway() {
        let json = r#"[{"Name":"x","IPAM":{"Config":[{"Subnet":"fd00::/64"},
            {"Subnet":"172.19.0.0/16","Gateway":"172.19.0.1"}]}}]"#;
        let (subnet, gateway) = network_ipv4_config(json).expect("config");
        assert_eq!(subnet.to_string(), "172.19.0.0/16");
        assert_eq!(gateway, Ipv4Addr::new(172, 19, 0, 1));
    }

    #[test]
    fn attached_containers_from_inspect() {
        let json = r#"[{"Name":"/a","NetworkSettings":{"Networks":{"net":{}}}},
            {"Name":"/b","NetworkSettings":{"Networks":{}}}]"#;
        let attached = containers_attached_to(json, "net").expect("parses");
        assert_eq!(attached.into_iter().collect::<Vec<_>>(), ["a"]);
    }

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
    fn command_lines_quote_what_needs_it() {
        assert_eq!(
            command_line("docker", &["import", "--change", r#"ENTRYPOINT ["/kairos"]"#, ""]),
            r#"docker import --change 'ENTRYPOINT ["/kairos"]' ''"#
        );
    }
}
