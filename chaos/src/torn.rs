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
    for line in log.lines().filter_map(Logged::parse) {
        match line {
            Logged::Sync(path) => {
                unsynced.remove(path);
            }
            Logged::Write { path, offset, length } => {
                unsynced.entry(path.into()).or_default().push((offset, length));
            }
        }
    }
    unsynced
}

/// One line of the library's write log.
enum Logged<'a> {
    /// `W <offset> <length> <path>`: a `pwrite` about to be made.
    Write {
        path: &'a Path,
        offset: u64,
        length: u64,
    },
    /// `S <path>`: a sync about to be asked.
    Sync(&'a Path),
}

impl Logged<'_> {
    /// The line's meaning, or `None` for a line cut short by the kill.
    fn parse(line: &str) -> Option<Logged<'_>> {
        if let Some(path) = line.strip_prefix("S ") {
            return Some(Logged::Sync(Path::new(path)));
        }
        let mut fields = line.strip_prefix("W ")?.splitn(3, ' ');
        let offset = fields.next()?.parse().ok()?;
        let length = fields.next()?.parse().ok()?;
        let path = Path::new(fields.next()?);
        Some(Logged::Write { path, offset, length })
    }
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

/// The name of sled's data file, the only file [`lose_since`] damages.
const SLED_DATA_FILE: &str = "db";

/// What [`lose_since`] did to one node's log.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lost {
    /// Writes to sled's data file since the mark, synced or not.
    pub writes: usize,
    /// Of those, the ones some later sync had covered.
    pub synced: usize,
    /// Bytes overwritten with garbage.
    pub bytes: u64,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} writes to the log lost ({} of them synced), {} bytes",
            self.writes, self.synced, self.bytes
        )
    }
}

/// What a disk that loses its last writes does to the node's log (the
/// `lost_tail` fault; the node was killed): every write to sled's data
/// file logged after byte `from` of `write_log`, synced or not, becomes
/// random garbage — a lying disk, a lost cache, a bad last block. sled
/// finds the first bad record by its CRC and ends the log there, losing
/// entries the node acknowledged; the node must find out from its log mark
/// (`src/raft/log_mark.rs` of the kairos crate) and must not vote by the
/// shorter log. Other files (the mark among them) are left whole. The
/// write log is removed, so the next process starts a new one.
pub fn lose_since(write_log: &Path, from: u64, rng: &mut StdRng) -> Result<Lost> {
    let log = match std::fs::read(write_log) {
        Ok(log) => log,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lost::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", write_log.display())),
    };
    let recent = String::from_utf8_lossy(log.get(from as usize..).unwrap_or_default()).into_owned();
    let mut lost = Lost::default();
    // Each write to sled's data file since `from`, and whether a later
    // sync of that file covered it.
    let mut writes: Vec<(&Path, u64, u64, bool)> = Vec::new();
    for line in recent.lines().filter_map(Logged::parse) {
        match line {
            Logged::Sync(synced) => {
                for (path, _, _, covered) in &mut writes {
                    *covered |= *path == synced;
                }
            }
            Logged::Write { path, offset, length } => {
                if path.file_name().is_some_and(|name| name == SLED_DATA_FILE) {
                    writes.push((path, offset, length, false));
                }
            }
        }
    }
    lost.synced = writes.iter().filter(|(_, _, _, covered)| *covered).count();
    for (path, offset, length, _) in &writes {
        let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) else {
            continue;
        };
        let end = (offset + length).min(file.metadata()?.len());
        if *offset >= end {
            continue;
        }
        let garbage: Vec<u8> = (*offset..end).map(|_| rng.gen()).collect();
        file.write_all_at(&garbage, *offset)
            .with_context(|| format!("damaging {}", path.display()))?;
        lost.writes += 1;
        lost.bytes += end - offset;
    }
    std::fs::remove_file(write_log).with_context(|| format!("removing {}", write_log.display()))?;
    Ok(lost)
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
    fn a_lost_tail_damages_only_the_log_written_since_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let (data, mark) = (dir.path().join("db"), dir.path().join("raft-mark"));
        std::fs::write(&data, vec![7u8; 300]).unwrap();
        std::fs::write(&mark, vec![1u8; 64]).unwrap();
        let log = dir.path().join("writes.log");
        let before = format!("W 0 100 {d}\nS {d}\n", d = data.display());
        let after = format!(
            "W 100 100 {d}\nW 0 64 {m}\nS {d}\nS {m}\nW 200 50 {d}\n",
            d = data.display(),
            m = mark.display()
        );
        std::fs::write(&log, format!("{before}{after}")).unwrap();
        let lost = lose_since(&log, before.len() as u64, &mut StdRng::seed_from_u64(1)).unwrap();
        assert_eq!((lost.writes, lost.synced, lost.bytes), (2, 1, 150));
        let now = std::fs::read(&data).unwrap();
        assert_eq!(&now[..100], &[7u8; 100][..], "written before the mark");
        assert_ne!(&now[100..200], &[7u8; 100][..], "synced after the mark: lost");
        assert_eq!(&now[250..], &[7u8; 50][..], "never written");
        assert_eq!(
            std::fs::read(&mark).unwrap(),
            vec![1u8; 64],
            "the mark file is whole"
        );
        assert!(!log.exists());
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
