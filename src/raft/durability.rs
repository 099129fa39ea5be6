//! The disk barrier under Raft: sled plus a real `fdatasync`.
//!
//! sled 0.34 writes its log with `pwrite` and, on `flush`, calls
//! `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)`. That pushes the pages to
//! the device queue but does not flush the device cache nor the file's metadata,
//! so it survives a process crash but not a power cut. Raft may acknowledge an
//! append or a vote only once it is durable, so [`Disk::sync`] follows sled's
//! flush with `fdatasync` on sled's data file. Linux applies `fdatasync` to the
//! inode, so a separate read-only descriptor of the same file is enough.
//!
//! Every sync is timed into [`RaftStats::log_fsync_seconds`]
//! (`kairos_raft_log_fsync_seconds`).
//!
//! **A failed sync poisons the disk for the life of the process.** After an
//! `fsync` reports EIO the kernel may have dropped the dirty pages, so a later
//! sync that succeeds proves nothing about them (PostgreSQL's "fsyncgate").
//! The first failure is therefore kept: every later [`Disk::sync`] fails with
//! it, and [`Disk::failure`] tells whoever watches (the node, which stops the
//! process; see `stop_on_storage_failure` in `crate::node`). sled's own
//! background flusher only logs the failures of its periodic `fsync`, so the
//! log store also syncs a disk that had no append for [`IDLE_SYNC`] (see
//! `crate::raft::log_store`): a node with nothing to write still finds a
//! failing disk within about a second.
//!
//! The test `tests/durability.rs` runs a node's log store under `strace` and
//! checks that every acknowledged append is preceded by an `fdatasync` of the
//! data file.
//!
//! sled takes an exclusive `flock` on its data file and releases it only when
//! its last background thread exits, which can be a moment after the last
//! `Db` handle is dropped (spacejam/sled#1234). Reopening a database in the
//! same process (tests, an in-process restart) can therefore meet our own
//! lock; [`Disk::open`] waits for it for a bounded time ([`LOCK_WAIT`]) and
//! then reports the lock clearly. Any other error is returned at once.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::stats::RaftStats;
use crate::error::{Error, Result};

/// How long [`Disk::open`] waits for sled's lock on the data file to be released.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// A disk with no append for this long is synced anyway, to find out whether
/// it still works (see the module notes).
pub const IDLE_SYNC: Duration = Duration::from_secs(1);

/// The node's sled database and a handle to fsync it.
#[derive(Clone)]
pub struct Disk {
    /// The sled database shared by the log store and the state machine.
    pub db: sled::Db,
    /// sled's data file (`<dir>/db`), opened for `fdatasync`.
    data_file: Arc<File>,
    /// The directory holding the database (and the snapshot file).
    dir: Arc<Path>,
    /// Where syncs (and, through the state machine, snapshots) are measured.
    stats: RaftStats,
    /// The first sync failure, once there was one (see the module notes).
    failure: Arc<watch::Sender<Option<Arc<str>>>>,
}

impl Disk {
    /// Opens or creates the database in `dir`.
    pub fn open(dir: &Path) -> Result<Disk> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::internal(format!("create {}: {e}", dir.display())))?;
        let config = sled_config(dir);
        let db = open_waiting_for_lock(|| config.open(), LOCK_WAIT, Instant::now, std::thread::sleep)
            .map_err(|e| {
                let held = if is_lock_contention(&e) {
                    format!(" (still locked after {LOCK_WAIT:?}: is another kairos using this data dir?)")
                } else {
                    String::new()
                };
                Error::internal(format!("open sled at {}: {e}{held}", dir.display()))
            })?;
        let data_path = dir.join("db");
        let data_file = File::open(&data_path)
            .map_err(|e| Error::internal(format!("open {}: {e}", data_path.display())))?;
        Ok(Disk {
            db,
            data_file: Arc::new(data_file),
            dir: dir.into(),
            stats: RaftStats::default(),
            failure: Arc::new(watch::Sender::new(None)),
        })
    }

    /// This disk, recording into `stats` (see [`crate::raft::stats`]).
    pub fn with_stats(self, stats: RaftStats) -> Disk {
        Disk { stats, ..self }
    }

    /// Where this disk's syncs and the snapshots stored beside it are measured.
    pub fn stats(&self) -> &RaftStats {
        &self.stats
    }

    /// The directory the database lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes every write issued so far durable: sled flush, then `fdatasync`.
    /// Once a sync failed, every later one fails with that first error
    /// (see the module notes). Blocking; call from a blocking context.
    pub fn sync(&self) -> std::io::Result<()> {
        if let Some(first) = self.failure.borrow().clone() {
            return Err(std::io::Error::other(format!(
                "the disk failed earlier and is not trusted again in this process: {first}"
            )));
        }
        let started = Instant::now();
        let synced = self
            .db
            .flush()
            .map_err(std::io::Error::other)
            .and_then(|_| self.sync_data());
        match &synced {
            Ok(()) => self
                .stats
                .log_fsync_seconds
                .observe(started.elapsed().as_secs_f64()),
            Err(e) => self.poison(format!("sync of {} failed: {e}", self.dir.display())),
        }
        synced
    }

    /// Records a failure to make something durable on this disk (a failed
    /// sync, here or of a file beside sled's: see `crate::raft::log_mark`):
    /// the first one is kept and every later [`Disk::sync`] fails with it.
    pub fn poison(&self, reason: String) {
        let reason: Arc<str> = reason.into();
        self.failure.send_if_modified(|first| match first {
            None => {
                *first = Some(reason);
                true
            }
            Some(_) => false,
        });
    }

    /// `fdatasync` of sled's data file (skipped by the broken build
    /// `NoFdatasync`, see `crate::chaos_break`).
    fn sync_data(&self) -> std::io::Result<()> {
        #[cfg(feature = "chaos-break")]
        if crate::chaos_break::process_runs(crate::chaos_break::ChaosBreak::NoFdatasync) {
            return Ok(());
        }
        self.data_file.sync_data()
    }

    /// The first sync failure of this disk: `None` while every sync worked;
    /// changes once, when one fails.
    pub fn failure(&self) -> watch::Receiver<Option<Arc<str>>> {
        self.failure.subscribe()
    }

    /// [`Disk::sync`] on the blocking thread pool.
    pub async fn sync_async(&self) -> std::io::Result<()> {
        let disk = self.clone();
        tokio::task::spawn_blocking(move || disk.sync())
            .await
            .map_err(std::io::Error::other)?
    }
}

/// How Kairos configures sled.
fn sled_config(dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(dir)
        // Large segments keep values up to ~2 MiB inline (blob files are not fsynced).
        .segment_size(8 << 20)
        // We flush ourselves before every acknowledgement; the background
        // flusher only writes what was not (the committed-index hint).
        .flush_every_ms(Some(1_000))
        // sled holds only the Raft log and vote (the state lives in memory
        // and in the snapshot file), and replication reads recent entries:
        // 16 MiB is plenty, and at a million jobs every MiB is a byte per job.
        .cache_capacity(16 << 20)
}

/// True when sled refused to open because the data file's `flock` is held.
/// sled 0.34 reports it as an `ErrorKind::Other` I/O error whose message
/// starts with "could not acquire lock" (src/config.rs), its only signal.
fn is_lock_contention(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock"))
}

/// Calls `open` until it succeeds, fails with anything but lock contention, or
/// `wait` has passed (then the last contention error is returned). Time and
/// sleeping are passed in so the loop is tested without a real lock.
fn open_waiting_for_lock<T>(
    mut open: impl FnMut() -> sled::Result<T>,
    wait: Duration,
    now: impl Fn() -> Instant,
    sleep: impl Fn(Duration),
) -> sled::Result<T> {
    let deadline = now() + wait;
    let mut pause = Duration::from_millis(5);
    loop {
        match open() {
            Err(e) if is_lock_contention(&e) && now() < deadline => {
                sleep(pause.min(deadline.saturating_duration_since(now())));
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn locked() -> sled::Error {
        sled::Error::Io(std::io::Error::other(
            "could not acquire lock on \"db\": WouldBlock",
        ))
    }

    /// A clock that only moves when the loop sleeps.
    struct FakeTime {
        start: Instant,
        elapsed: Cell<Duration>,
    }

    impl FakeTime {
        fn new() -> FakeTime {
            FakeTime {
                start: Instant::now(),
                elapsed: Cell::new(Duration::ZERO),
            }
        }
        fn now(&self) -> Instant {
            self.start + self.elapsed.get()
        }
        fn sleep(&self, d: Duration) {
            self.elapsed.set(self.elapsed.get() + d);
        }
    }

    #[test]
    fn waits_out_a_lock_that_is_released() {
        let time = FakeTime::new();
        let attempts = Cell::new(0);
        let opened = open_waiting_for_lock(
            || {
                attempts.set(attempts.get() + 1);
                if attempts.get() < 4 {
                    Err(locked())
                } else {
                    Ok("db")
                }
            },
            Duration::from_secs(5),
            || time.now(),
            |d| time.sleep(d),
        );
        assert_eq!(opened.unwrap(), "db");
        assert_eq!(attempts.get(), 4);
        assert!(time.elapsed.get() < Duration::from_secs(1), "backs off from 5 ms");
    }

    #[test]
    fn gives_up_on_a_held_lock_at_the_deadline() {
        let time = FakeTime::new();
        let opened: sled::Result<()> = open_waiting_for_lock(
            || Err(locked()),
            Duration::from_secs(5),
            || time.now(),
            |d| time.sleep(d),
        );
        assert!(is_lock_contention(&opened.unwrap_err()));
        assert_eq!(
            time.elapsed.get(),
            Duration::from_secs(5),
            "waits exactly the bound"
        );
    }

    #[test]
    fn other_errors_are_not_retried() {
        let time = FakeTime::new();
        let attempts = Cell::new(0);
        let opened: sled::Result<()> = open_waiting_for_lock(
            || {
                attempts.set(attempts.get() + 1);
                Err(sled::Error::Unsupported("bad format".into()))
            },
            Duration::from_secs(5),
            || time.now(),
            |d| time.sleep(d),
        );
        assert!(matches!(opened, Err(sled::Error::Unsupported(_))));
        assert_eq!(attempts.get(), 1);
        assert_eq!(time.elapsed.get(), Duration::ZERO);
    }

    #[test]
    fn a_data_dir_in_use_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Disk::open(dir.path()).unwrap();
        // The real open waits LOCK_WAIT; exercise the same path with a short bound.
        let config = sled_config(dir.path());
        let second = open_waiting_for_lock(
            || config.open(),
            Duration::from_millis(50),
            Instant::now,
            std::thread::sleep,
        );
        let error = second.unwrap_err();
        assert!(is_lock_contention(&error), "{error:?}");
    }
}
