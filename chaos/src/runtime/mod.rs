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
//! | clock, fsync, slow disk | the fault libraries, preloaded | the same libraries, in the image and preloaded |
//! | torn write, lost tail | the harness edits a killed node's files | the same: the node's dir is mounted at the same path |
//! | full disk | each node's data on a small tmpfs | the same tmpfs, mounted into the container |

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

    /// Node `id`'s `--data-dir`, as the harness reaches it.
    pub fn data_dir(&self, id: NodeId) -> std::path::PathBuf {
        delegate!(self, c => c.data_dir(id))
    }

    /// Whether the nodes run with the disk-fault library (a C compiler was
    /// there to build it).
    pub fn supports_disk_faults(&self) -> bool {
        self.ids().first().is_some_and(|&id| self.sync_faults(id).is_ok())
    }

    /// Node `id`'s fsyncs fail with EIO (`true`) or work again.
    pub fn set_sync_failing(&mut self, id: NodeId, failing: bool) -> Result<()> {
        self.sync_faults(id)?.set_failing(failing)
    }

    /// What a power cut does to stopped node `id`'s files: the bytes no
    /// sync covered are torn (with the disk-fault library).
    pub fn tear_unsynced(&mut self, id: NodeId, rng: &mut rand::rngs::StdRng) -> Result<crate::torn::Torn> {
        self.sync_faults(id)?.tear_unsynced(rng)
    }

    /// How far node `id`'s write log reaches now (with the disk-fault library).
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

    /// How node `id`'s process ended, if it is not running (a process the
    /// harness started that exited; a stopped container).
    pub fn exit_status(&self, id: NodeId) -> Option<std::process::ExitStatus> {
        delegate!(self, c => c.exit_status(id))
    }

    /// Node `id`'s resident memory in KiB, while it runs.
    pub fn rss_kib(&self, id: NodeId) -> Option<u64> {
        delegate!(self, c => c.rss_kib(id))
    }

    /// The length of node `id`'s log now.
    pub fn log_len(&self, id: NodeId) -> u64 {
        delegate!(self, c => c.log_len(id))
    }

    /// What node `id` logged since its log was `from` long.
    pub fn log_since(&self, id: NodeId, from: u64) -> String {
        delegate!(self, c => c.log_since(id, from))
    }

    /// Whether each node's data lives on a small filesystem the harness can
    /// fill (where mounting is allowed).
    pub fn supports_disk_full(&self) -> bool {
        self.ids()
            .first()
            .is_some_and(|&id| delegate!(self, c => c.small_disk(id)).is_some())
    }

    /// Fills node `id`'s filesystem to the last block, or frees it again.
    pub fn set_disk_full(&mut self, id: NodeId, full: bool) -> Result<()> {
        delegate!(self, c => c.small_disk(id))
            .context("the nodes' data is not on a filesystem of the harness")?
            .set_full(full)
    }

    /// Whether the nodes run with the clock-fault library (a C compiler was
    /// there to build it).
    pub fn supports_clock_faults(&self) -> bool {
        self.ids()
            .first()
            .is_some_and(|&id| delegate!(self, c => c.clock_faults(id)).is_some())
    }

    /// Node `id`'s wall clock reads `ms` off the real time (0: the real time).
    pub fn set_clock_offset(&mut self, id: NodeId, ms: i64) -> Result<()> {
        delegate!(self, c => c.clock_faults(id))
            .context("the nodes run without the clock-fault library")?
            .set_offset(ms)
    }

    fn sync_faults(&self, id: NodeId) -> Result<&crate::preload::SyncFaults> {
        delegate!(self, c => c.sync_faults(id)).context("the nodes run without the disk-fault library")
    }

    /// Cuts the links between the given pairs only (both directions).
    pub async fn cut_links(&mut self, pairs: &[(NodeId, NodeId)]) -> Result<()> {
        match self {
            Runtime::Process(c) => c.cut_links(pairs),
            Runtime::Docker(_) => anyhow::bail!("docker runtime: single links cannot be cut"),
        }
    }

    /// Delays every byte on the links between the given pairs only (both
    /// directions) by `delay_ms`.
    pub async fn slow_links(&mut self, pairs: &[(NodeId, NodeId)], delay_ms: u64) -> Result<()> {
        match self {
            Runtime::Process(c) => c.slow_links(pairs, delay_ms),
            Runtime::Docker(_) => anyhow::bail!("docker runtime: single links cannot be slowed"),
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
