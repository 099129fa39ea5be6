//! Where the nodes run: as local processes behind the harness's TCP proxies
//! ([`process`]), or as Docker containers on a network the harness creates
//! ([`docker`]). Both offer the same operations; the fault injector only
//! speaks to [`Runtime`].
//!
//! | operation | process | docker |
//! |---|---|---|
//! | kill -9, start | SIGKILL, spawn again on the data dir | `docker kill -s KILL`, `docker start` |
//! | pause, resume | SIGSTOP, SIGCONT | `docker pause`, `docker unpause` |
//! | partition | cut the proxies between the sides | disconnect the smaller side from the network |
//! | cut single links (bridge) | cut two proxies | not possible (one network) |
//! | slow or lossy links | proxy delay / connection breaks | not possible (no `tc` in a scratch image) |

pub mod docker;
pub mod process;

use anyhow::Result;

/// A node id.
pub type NodeId = u64;

/// The nodes of one chaos run, wherever they run.
pub enum Runtime {
    /// Local processes (boxed: the variants differ in size, and there is one
    /// runtime per chaos run).
    Process(Box<process::ProcessCluster>),
    /// Docker containers.
    Docker(Box<docker::DockerCluster>),
}

macro_rules! delegate {
    ($self:ident, $c:ident => $e:expr) => {
        match $self {
            Runtime::Process($c) => $e,
            Runtime::Docker($c) => $e,
        }
    };
}

impl Runtime {
    /// "process" or "docker".
    pub fn name(&self) -> &'static str {
        match self {
            Runtime::Process(_) => "process",
            Runtime::Docker(_) => "docker",
        }
    }

    /// Node ids, ascending.
    pub fn ids(&self) -> Vec<NodeId> {
        delegate!(self, c => c.ids())
    }

    /// The gRPC address (host:port) the harness uses to reach node `id`.
    pub fn client_addr(&self, id: NodeId) -> String {
        delegate!(self, c => c.client_addr(id))
    }

    /// Whether the node's process (container) is running (paused counts as running).
    pub fn is_running(&mut self, id: NodeId) -> bool {
        delegate!(self, c => c.is_running(id))
    }

    /// Starts node `id` (again) on its data.
    pub async fn start(&mut self, id: NodeId) -> Result<()> {
        delegate!(self, c => c.start(id).await)
    }

    /// kill -9.
    pub async fn kill(&mut self, id: NodeId) -> Result<()> {
        delegate!(self, c => c.kill(id).await)
    }

    /// Freezes the node (SIGSTOP / docker pause).
    pub async fn pause(&mut self, id: NodeId) -> Result<()> {
        delegate!(self, c => c.pause(id).await)
    }

    /// Unfreezes the node.
    pub async fn resume(&mut self, id: NodeId) -> Result<()> {
        delegate!(self, c => c.resume(id).await)
    }

    /// Nodes on different sides cannot talk to each other.
    pub async fn partition(&mut self, sides: &[Vec<NodeId>]) -> Result<()> {
        delegate!(self, c => c.partition(sides).await)
    }

    /// Whether single links can be cut, slowed and broken (process mode).
    pub fn supports_link_faults(&self) -> bool {
        matches!(self, Runtime::Process(_))
    }

    /// Cuts the links between the given pairs only (both directions).
    pub async fn cut_links(&mut self, pairs: &[(NodeId, NodeId)]) -> Result<()> {
        match self {
            Runtime::Process(c) => c.cut_links(pairs),
            Runtime::Docker(_) => anyhow::bail!("docker runtime: single links cannot be cut"),
        }
    }

    /// Delays every byte on every peer link by `delay_ms`, and breaks each
    /// link's connections with probability `break_per_mille` per chunk.
    pub async fn degrade_links(&mut self, delay_ms: u64, break_per_mille: u32) -> Result<()> {
        match self {
            Runtime::Process(c) => c.degrade_links(delay_ms, break_per_mille),
            Runtime::Docker(_) => anyhow::bail!("docker runtime: links cannot be slowed"),
        }
    }

    /// Restores every link (no cut, no delay, no loss); paused nodes stay paused.
    pub async fn heal(&mut self) -> Result<()> {
        delegate!(self, c => c.heal().await)
    }

    /// Stops every node and removes everything the runtime made.
    pub async fn shutdown(&mut self) {
        delegate!(self, c => c.shutdown().await)
    }
}
