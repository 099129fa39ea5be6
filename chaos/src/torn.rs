//! What a power cut does to a node's files, for the `torn_write` fault.
//!
//! The disk-fault library (`tests/testkit/disk_faults.c`) logs every
//! `pwrite` to a file under the node's directory before making it
//! (`W <offset> <length> <path>`) and every `fsync`/`fdatasync` before
//! asking it (`S <path>`). After the node was killed, the writes logged
//! after the last sync of their file are exactly the bytes the disk may
//! not hold after a power cut: the page cache still has them (a kill is
//! not a power cut), so [`tear`] does to them what the cut would. Each
//! such write, with even odds, is kept whole (it reached the platter) or
//! torn at a random byte: from there to its end it is random garbage, or,
//! when it ends the file, with even odds the file is cut short there
//! instead. A byte some sync covered is never touched, so a node that
//! acknowledged only what it had synced loses nothing it acknowledged: it
//! must find the torn tail by its checksums (sled checks each log record's
//! CRC on recovery and stops the log at the first bad one), never serve it,
//! and catch up from its peers.
//!
//! Only `pwrite`s are logged: sled writes its log that way. Kairos's own
//! snapshot file is written to a temporary name, synced and renamed, so a
//! power cut leaves the old snapshot or the new one, never a torn one.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::Rng;

/// What [`tear`] did to one node's files.
#[derive(Clone, Copy, Debug, Default)]
pub struct Torn {
    /// Writes no sync had covered.
    pub unsynced: usize,
    /// Of those, the ones torn (garbage from a byte on) or cut short.
    pub torn: usize,
    pub cut_short: usize,
    /// Bytes changed or cut off.
    pub bytes: u64,
}

impl std::fmt::Display for Torn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} unsynced writes, {} torn, {} cut short, {} bytes",
            self.unsynced, self.torn, self.cut_short, self.bytes
        )
    }
}

/// The writes of `log` (the library's format) that no later sync of their
/// file covered, by file: `(offset, length)` in the order they were made.
fn unsynced_writes(log: &str) -> BTreeMap<PathBuf, Vec<(u64, u64)>> {
    let mut unsynced: BTreeMap<PathBuf, Vec<(u64, u64)>> = BTreeMap::new();
    for line in log.lines() {
        if let Some(path) = line.strip_prefix("S ") {
            unsynced.remove(Path::new(path));
        } else if let Some(write) = line.strip_prefix("W ") {
            let mut fields = write.splitn(3, ' ');
            let (Some(offset), Some(length), Some(path)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let (Ok(offset), Ok(length)) = (offset.parse(), length.parse()) else {
                continue;
            };
            unsynced.entry(path.into()).or_default().push((offset, length));
        }
    }
    unsynced
}

/// Tears the writes `write_log` names that no sync covered (see the module
/// notes), then removes the log so the node's next process starts a new
/// one. No log (the node wrote nothing since it started): nothing to tear.
pub fn tear(write_log: &Path, rng: &mut StdRng) -> Result<Torn> {
    let log = match std::fs::read_to_string(write_log) {
        Ok(log) => log,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Torn::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", write_log.display())),
    };
    let mut torn = Torn::default();
    for (path, writes) in unsynced_writes(&log) {
        // A file renamed or removed since: what it held is elsewhere or gone.
        let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) else {
            continue;
        };
        let mut length = file.metadata()?.len();
        for (offset, count) in writes {
            torn.unsynced += 1;
            let end = (offset + count).min(length);
            if offset >= end || rng.gen_bool(0.5) {
                continue;
            }
            let cut = rng.gen_range(offset..end);
            if end == length && rng.gen_bool(0.5) {
                file.set_len(cut)
                    .with_context(|| format!("cutting {} short", path.display()))?;
                length = cut;
                torn.cut_short += 1;
            } else {
                let garbage: Vec<u8> = (cut..end).map(|_| rng.gen()).collect();
                file.write_all_at(&garbage, cut)
                    .with_context(|| format!("tearing {}", path.display()))?;
                torn.torn += 1;
            }
            torn.bytes += end - cut;
        }
    }
    std::fs::remove_file(write_log).with_context(|| format!("removing {}", write_log.display()))?;
    Ok(torn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn only_writes_after_the_last_sync_of_their_file_are_unsynced() {
        let log = "W 0 10 /d/db\nW 10 5 /d/conf\nS /d/db\nW 20 4 /d/db\nW 30 4 /d/db\nW 1 2 /d/a b\n";
        let unsynced = unsynced_writes(log);
        assert_eq!(unsynced[Path::new("/d/db")], vec![(20, 4), (30, 4)]);
        assert_eq!(unsynced[Path::new("/d/conf")], vec![(10, 5)]);
        assert_eq!(
            unsynced[Path::new("/d/a b")],
            vec![(1, 2)],
            "a path may hold spaces"
        );
    }

    #[test]
    fn synced_bytes_are_never_touched() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("db");
        let synced = vec![7u8; 100];
        std::fs::write(&data, [synced.clone(), vec![9u8; 50]].concat()).unwrap();
        let log = dir.path().join("writes.log");
        for seed in 0..20 {
            std::fs::write(
                &log,
                format!("W 0 100 {p}\nS {p}\nW 100 50 {p}\n", p = data.display()),
            )
            .unwrap();
            let torn = tear(&log, &mut StdRng::seed_from_u64(seed)).unwrap();
            assert_eq!(torn.unsynced, 1);
            let now = std::fs::read(&data).unwrap();
            assert_eq!(&now[..100], &synced[..], "seed {seed}: a synced byte changed");
            assert!(!log.exists(), "the log is started afresh");
        }
    }
}
