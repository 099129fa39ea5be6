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
//! The test `tests/durability.rs` runs a node's log store under `strace` and
//! checks that every acknowledged append is preceded by an `fdatasync` of the
//! data file.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};

/// The node's sled database and a handle to fsync it.
#[derive(Clone)]
pub struct Disk {
    /// The sled database shared by the log store and the state machine.
    pub db: sled::Db,
    /// sled's data file (`<dir>/db`), opened for `fdatasync`.
    data_file: Arc<File>,
}

impl Disk {
    /// Opens or creates the database in `dir`.
    pub fn open(dir: &Path) -> Result<Disk> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::internal(format!("create {}: {e}", dir.display())))?;
        let db = sled::Config::new()
            .path(dir)
            // Large segments keep values up to ~2 MiB inline (blob files are not fsynced).
            .segment_size(8 << 20)
            // We flush ourselves before every acknowledgement; the background flusher
            // only bounds what a crash loses of the unsynced state machine tables.
            .flush_every_ms(Some(1_000))
            .open()
            .map_err(|e| Error::internal(format!("open sled at {}: {e}", dir.display())))?;
        let data_path = dir.join("db");
        let data_file = File::open(&data_path)
            .map_err(|e| Error::internal(format!("open {}: {e}", data_path.display())))?;
        Ok(Disk {
            db,
            data_file: Arc::new(data_file),
        })
    }

    /// Makes every write issued so far durable: sled flush, then `fdatasync`.
    /// Blocking; call from a blocking context.
    pub fn sync(&self) -> std::io::Result<()> {
        self.db.flush().map_err(std::io::Error::other)?;
        self.data_file.sync_data()
    }

    /// [`Disk::sync`] on the blocking thread pool.
    pub async fn sync_async(&self) -> std::io::Result<()> {
        let disk = self.clone();
        tokio::task::spawn_blocking(move || disk.sync())
            .await
            .map_err(std::io::Error::other)?
    }
}
