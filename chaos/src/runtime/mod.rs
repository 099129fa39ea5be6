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

use anyhow::{Context, Result};

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

    /// Whether the nodes run with the disk-fault library (process mode,
    /// with a C compiler to build it).
    pub fn supports_disk_faults(&self) -> bool {
        match self {
            Runtime::Process(c) => c.ids().first().is_some_and(|&id| c.sync_faults(id).is_some()),
            Runtime::Docker(_) => false,
        }
    }

    /// Node `id`'s fsyncs fail with EIO (`true`) or work again.
    pub fn set_sync_failing(&mut self, id: NodeId, failing: bool) -> Result<()> {
        self.sync_faults(id)?.set_failing(failing)
    }

    /// What a power cut does to stopped node `id`'s files: the bytes no
    /// sync covered are torn (process mode, with the disk-fault library).
    pub fn tear_unsynced(&mut self, id: NodeId, rng: &mut rand::rngs::StdRng) -> Result<crate::torn::Torn> {
        self.sync_faults(id)?.tear_unsynced(rng)
    }

    /// How far node `id`'s write log reaches now (process mode, with the
    /// disk-fault library).
    pub fn write_log_len(&self, id: NodeId) -> Result<u64> {
        Ok(self.sync_faults(id)?.write_log_len())
    }

    /// What a disk that loses its last writes does to stopped node `id`:
    /// its log's writes since write-log byte `from` are lost.
    pub fn lose_writes_since(
        &mut self,
        id: NodeId,
        from: u64,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<crate::torn::Lost> {
        self.sync_faults(id)?.lose_since(from, rng)
    }

    /// Node `id`'s fsyncs take `ms` longer, or their own time again.
    pub fn set_sync_slow(&mut self, id: NodeId, ms: Option<u64>) -> Result<()> {
        self.sync_faults(id)?.set_slow(ms)
    }

    /// How node `id`'s process ended, if it exited by itself (process mode).
    pub fn exit_status(&self, id: NodeId) -> Option<std::process::ExitStatus> {
        match self {
            Runtime::Process(c) => c.exit_status(id),
            Runtime::Docker(_) => None,
        }
    }

    /// Node `id`'s resident memory in KiB (process mode, while it runs).
    pub fn rss_kib(&self, id: NodeId) -> Option<u64> {
        match self {
            Runtime::Process(c) => c.rss_kib(id),
            Runtime::Docker(_) => None,
        }
    }

    /// The length of node `id`'s log now (process mode; 0 in docker mode).
    pub fn log_len(&self, id: NodeId) -> u64 {
        match self {
            Runtime::Process(c) => c.log_len(id),
            Runtime::Docker(_) => 0,
        }
    }

    /// What node `id` logged since its log was `from` long (process mode).
    pub fn log_since(&self, id: NodeId, from: u64) -> String {
        match self {
            Runtime::Process(c) => c.log_since(id, from),
            Runtime::Docker(_) => String::new(),
        }
    }

    /// Whether each node's data lives on a small filesystem the harness can
    /// fill (process mode, where mounting is allowed).
    pub fn supports_disk_full(&self) -> bool {
        match self {
            Runtime::Process(c) => c.ids().first().is_some_and(|&id| c.small_disk(id).is_some()),
            Runtime::Docker(_) => false,
        }
    }

    /// Fills node `id`'s filesystem to the last block, or frees it again.
    pub fn set_disk_full(&mut self, id: NodeId, full: bool) -> Result<()> {
        match self {
            Runtime::Process(c) => c
                .small_disk(id)
                .context("the nodes' data is not on a filesystem of the harness")?
                .set_full(full),
            Runtime::Docker(_) => anyhow::bail!("docker runtime: the disk is not filled"),
        }
    }

    /// Whether the nodes run with the clock-fault library (process mode,
    /// with a C compiler to build it).
    pub fn supports_clock_faults(&self) -> bool {
        match self {
            Runtime::Process(c) => c.ids().first().is_some_and(|&id| c.clock_faults(id).is_some()),
            Runtime::Docker(_) => false,
        }
    }

    /// Node `id`'s wall clock reads `ms` off the real time (0: the real time).
    pub fn set_clock_offset(&mut self, id: NodeId, ms: i64) -> Result<()> {
        match self {
            Runtime::Process(c) => c
                .clock_faults(id)
                .context("the nodes run without the clock-fault library")?
                .set_offset(ms),
            Runtime::Docker(_) => anyhow::bail!("docker runtime: clock faults are not injected"),
        }
    }

    fn sync_faults(&self, id: NodeId) -> Result<&crate::preload::SyncFaults> {
        match self {
            Runtime::Process(c) => c
                .sync_faults(id)
                .context("the nodes run without the disk-fault library"),
            Runtime::Docker(_) => anyhow::bail!("docker runtime: disk faults are not injected"),
        }
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
