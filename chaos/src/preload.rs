//! The fault libraries preloaded into every node of the process runtime,
//! built by the test kit with the system C compiler (`kairos_testkit`'s
//! `preload` module):
//!
//! - the disk-fault library (`tests/testkit/disk_faults.c`): a node's
//!   `fdatasync`/`fsync` fail with EIO while its `fail-sync` file exists,
//!   and are slowed by the milliseconds in its `slow-sync` file while that
//!   exists, and it logs which bytes of the node's files no sync covered
//!   yet, for `torn_write` ([`SyncFaults`], [`crate::torn`]);
//! - the clock-fault library (`tests/testkit/clock_faults.c`): a node's
//!   wall clock is off by the milliseconds in its `clock-offset-ms` file,
//!   its monotonic clock untouched ([`ClockFaults`]).
//!
//! Each is built only when a fault kind of the round needs it. Without a C
//! compiler those faults are not available and the harness says so.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The libraries of a round, where built.
#[derive(Clone, Debug, Default)]
pub struct Libraries {
    pub disk: Option<PathBuf>,
    pub clock: Option<PathBuf>,
}

impl Libraries {
    /// Builds the wanted libraries into `dir`; one that fails to build is
    /// left out with a warning naming the faults that go with it.
    pub fn build(dir: &Path, disk: bool, clock: bool) -> Libraries {
        let built = |wanted: bool, faults: &str, build: fn(&Path) -> Result<PathBuf, String>| {
            wanted.then(|| build(dir)).and_then(|built| {
                built
                    .map_err(|e| tracing::warn!("{faults} not injected: {e}"))
                    .ok()
            })
        };
        Libraries {
            disk: built(
                disk,
                "disk faults (fsync_error, slow_disk)",
                kairos_testkit::build_disk_fault_library,
            ),
            clock: built(
                clock,
                "clock faults (clock_skew, clock_jump)",
                kairos_testkit::build_clock_fault_library,
            ),
        }
    }

    /// The switches of a node whose files live in `node_dir`, and the
    /// environment that preloads the libraries with them.
    pub fn for_node(&self, node_dir: &Path) -> (NodeFaults, Vec<(String, String)>) {
        let mut env = Vec::new();
        let mut preload = Vec::new();
        let sync = self.disk.as_ref().map(|library| {
            let faults = SyncFaults::in_dir(node_dir);
            preload.push(library.display().to_string());
            env.extend(faults.env());
            faults
        });
        let clock = self.clock.as_ref().map(|library| {
            let faults = ClockFaults::in_dir(node_dir);
            preload.push(library.display().to_string());
            env.extend(faults.env());
            faults
        });
        if !preload.is_empty() {
            env.push(("LD_PRELOAD".into(), preload.join(" ")));
        }
        (NodeFaults { sync, clock }, env)
    }
}

/// One node's switches of the libraries it runs with.
#[derive(Clone, Debug, Default)]
pub struct NodeFaults {
    pub sync: Option<SyncFaults>,
    pub clock: Option<ClockFaults>,
}

/// One node's switches of the disk-fault library.
#[derive(Clone, Debug)]
pub struct SyncFaults {
    fail: PathBuf,
    slow: PathBuf,
    /// The library's log of writes and syncs (see [`crate::torn`]).
    write_log: PathBuf,
    /// Whose files' writes are logged: everything under the node's dir.
    tracked_under: PathBuf,
}

impl SyncFaults {
    /// The switches of a node whose files live in `node_dir`.
    pub fn in_dir(node_dir: &Path) -> SyncFaults {
        // The library compares the paths the kernel gives (absolute, no
        // symbolic links).
        let tracked_under = std::fs::canonicalize(node_dir).unwrap_or_else(|_| node_dir.to_path_buf());
        SyncFaults {
            fail: node_dir.join("fail-sync"),
            slow: node_dir.join("slow-sync"),
            write_log: node_dir.join("unsynced-writes.log"),
            tracked_under,
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("KAIROS_TEST_FAIL_SYNC_IF".into(), self.fail.display().to_string()),
            ("KAIROS_TEST_SLOW_SYNC_IF".into(), self.slow.display().to_string()),
            (
                "KAIROS_TEST_WRITE_LOG".into(),
                self.write_log.display().to_string(),
            ),
            (
                "KAIROS_TEST_WRITE_LOG_UNDER".into(),
                format!("{}/", self.tracked_under.display()),
            ),
        ]
    }

    /// What a power cut does to the node (stopped: killed by the caller):
    /// tears the bytes no sync covered (see [`crate::torn`]), and starts the
    /// next process's log afresh.
    pub fn tear_unsynced(&self, rng: &mut rand::rngs::StdRng) -> Result<crate::torn::Torn> {
        crate::torn::tear(&self.write_log, rng)
    }

    /// How far the library's write log reaches now (bytes), for
    /// [`SyncFaults::lose_since`].
    pub fn write_log_len(&self) -> u64 {
        std::fs::metadata(&self.write_log).map_or(0, |m| m.len())
    }

    /// What a disk that loses its last writes does to the node (stopped:
    /// killed by the caller): its log's writes since `from` (a
    /// [`SyncFaults::write_log_len`]) are lost (see [`crate::torn::lose_since`]).
    pub fn lose_since(&self, from: u64, rng: &mut rand::rngs::StdRng) -> Result<crate::torn::Lost> {
        crate::torn::lose_since(&self.write_log, from, rng)
    }

    /// Syncs fail with EIO (`true`) or work again.
    pub fn set_failing(&self, failing: bool) -> Result<()> {
        switch(&self.fail, failing.then(String::new))
    }

    /// Syncs take `ms` longer, or (`None`) their own time again.
    pub fn set_slow(&self, ms: Option<u64>) -> Result<()> {
        switch(&self.slow, ms.map(|ms| ms.to_string()))
    }
}

/// One node's switch of the clock-fault library.
#[derive(Clone, Debug)]
pub struct ClockFaults {
    offset: PathBuf,
}

impl ClockFaults {
    /// The switch of a node whose files live in `node_dir`.
    pub fn in_dir(node_dir: &Path) -> ClockFaults {
        ClockFaults {
            offset: node_dir.join("clock-offset-ms"),
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![(
            "KAIROS_TEST_CLOCK_OFFSET_FILE".into(),
            self.offset.display().to_string(),
        )]
    }

    /// The node's wall clock reads `ms` ahead of the real time (behind when
    /// negative) within 20 ms; 0 is the real time. Written by rename, so
    /// the node never reads a half-written offset.
    pub fn set_offset(&self, ms: i64) -> Result<()> {
        let staged = self.offset.with_extension("new");
        std::fs::write(&staged, ms.to_string()).with_context(|| format!("writing {}", staged.display()))?;
        std::fs::rename(&staged, &self.offset)
            .with_context(|| format!("renaming to {}", self.offset.display()))
    }
}

fn switch(path: &Path, content: Option<String>) -> Result<()> {
    match content {
        Some(content) => std::fs::write(path, content).with_context(|| format!("writing {}", path.display())),
        None => match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        },
    }
}
