//! A full disk, for real: in a round with `disk_full`, the harness mounts a
//! size-limited tmpfs for each node's data directory, and the fault fills
//! it with a file of zeros until the filesystem answers ENOSPC; the heal
//! deletes that file. The node meets the full disk as it would on any
//! host: its next write of the Raft log fails.
//!
//! Mounting needs the right to mount (root with CAP_SYS_ADMIN, as on the CI
//! machines); without it the harness warns and leaves `disk_full` out. A
//! disk is unmounted (lazily, so a process still exiting cannot hold it)
//! when the harness drops it, at the end of the round.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

/// Each node's small filesystem, at `data_root/node-<id>/disk`, when `mib`
/// asks for them and the harness may mount: all or none (a refused mount
/// leaves `disk_full` out with a warning). Both runtimes keep node `id`'s
/// data on the one it gets.
pub fn mount_each(data_root: &Path, nodes: u64, mib: Option<u64>) -> BTreeMap<u64, SmallDisk> {
    let Some(mib) = mib else {
        return BTreeMap::new();
    };
    let mut disks = BTreeMap::new();
    for id in 1..=nodes {
        let mount = data_root.join(format!("node-{id}")).join("disk");
        match SmallDisk::mount(&mount, mib) {
            Ok(disk) => {
                disks.insert(id, disk);
            }
            Err(e) => {
                tracing::warn!("disk_full not injected: {e:#}");
                return BTreeMap::new();
            }
        }
    }
    disks
}

/// One node's size-limited filesystem.
#[derive(Debug)]
pub struct SmallDisk {
    mount: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `mib` MiB at `path` (created if missing).
    pub fn mount(path: &Path, mib: u64) -> Result<SmallDisk> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "kairos-chaos"])
            .arg(path)
            .output()
            .context("running mount")?;
        anyhow::ensure!(
            output.status.success(),
            "mount -t tmpfs -o size={mib}m at {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(SmallDisk {
            mount: path.to_path_buf(),
        })
    }

    /// Where the node keeps its data on this filesystem.
    pub fn data_dir(&self) -> PathBuf {
        self.mount.join("data")
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }

    /// Fills the filesystem to the last block (`true`), or frees what the
    /// filler took (`false`).
    pub fn set_full(&self, full: bool) -> Result<()> {
        let filler = self.filler();
        if !full {
            return match std::fs::remove_file(&filler) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing {}", filler.display()))
                }
                _ => Ok(()),
            };
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&filler)
            .with_context(|| format!("creating {}", filler.display()))?;
        // Big pieces first, then single blocks for the tail.
        for piece in [1 << 20, 4096] {
            let zeros = vec![0u8; piece];
            loop {
                match file.write_all(&zeros) {
                    Ok(()) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                    Err(e) => return Err(e).with_context(|| format!("filling {}", filler.display())),
                }
            }
        }
        Ok(())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}
