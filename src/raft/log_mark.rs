//! The log mark: what this node may have acknowledged, kept apart from the
//! log, so that a disk that loses synced data cannot make the node forget
//! a promise.
//!
//! Raft's safety rests on two promises a voter keeps across restarts: it
//! never votes twice in a term, and it never loses an entry it told a
//! leader it held (the leader counted that answer towards a commit). sled
//! checks each record's CRC when it recovers and drops the log from the
//! first bad one, so a damaged tail is never served — but the entries and
//! the vote in that tail are gone, and a node that restarts without them
//! would vote, by their absence, for a candidate that lacks a committed
//! entry: three nodes, a write committed by the leader and node A while
//! node B was cut off, A's disk loses the tail, the leader dies; A and B
//! elect B, and the acknowledged write is gone for good. A kill never does
//! this (the page cache survives it), nor does a power cut to a disk that
//! honours `fdatasync`; a disk that lies about it, a firmware bug, or bit
//! rot in the last written block does.
//!
//! So every time the log store makes appends durable it then records, in
//! the small file `raft-mark` beside sled's, the last log id it is about to
//! acknowledge and the current vote, and syncs that file too; the
//! acknowledgement waits for both. The mark is therefore never behind what
//! the node acknowledged, and (written after the log's own sync) never
//! ahead of what its log held durably. On start ([`crate::raft::log_store`]):
//! - a vote the mark holds that is newer than sled's is written back to
//!   sled (a lost vote is restored, so the node cannot vote twice);
//! - a log that ends before the mark's log id has *lost its tail*: the node
//!   still answers votes and pre-votes as if its log ended at the mark (a
//!   candidate whose log is behind the mark is refused), does not stand for
//!   election itself, and says so in its log and `/readyz` (503), until
//!   its leader's entries carry it past the mark. If no node holds what the lost tails held, the cluster waits
//!   for one that does (or for an operator's `--force-new-cluster`), rather
//!   than silently electing a leader without acknowledged writes.
//!
//! The file holds two copies (slots) of 128 bytes, written in turn, each
//! `"KMRK" | sequence: u64 | body length: u16 | body | crc32 of all before`,
//! the body being `(vote, acknowledged log id)` in the Kairos encoding
//! (`crate::codec`). A write torn by a power cut damages only the slot
//! being written, whose sync had not returned, so nothing it names was
//! acknowledged yet; the other slot holds the previous mark. A file whose
//! bytes are all zero (created but never written) counts as no mark; a
//! file with no valid slot is refused with an error naming it, since the
//! node could no longer tell what it promised. A data dir from before the
//! mark existed starts one from its log.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use openraft::{LogId, Vote};
use serde::{Deserialize, Serialize};

use super::NodeId;
use crate::codec;
use crate::error::{Error, Result};

/// The mark file's name, in the sled directory.
pub const MARK_FILE: &str = "raft-mark";
/// The size of one slot; the file holds two.
const SLOT: usize = 128;
/// What each slot starts with.
const MAGIC: &[u8; 4] = b"KMRK";
/// Magic, sequence, body length.
const HEADER: usize = 4 + 8 + 2;
/// The trailing crc32.
const CRC: usize = 4;

/// What the mark records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marked {
    /// The vote, as last saved.
    pub vote: Option<Vote<NodeId>>,
    /// The last log id the node acknowledged (or was about to).
    pub acked: Option<LogId<NodeId>>,
}

/// The mark file of one node, open for writing. Writes are serialized.
pub struct LogMark {
    path: PathBuf,
    file: File,
    /// The sequence number of the last slot written, and what it holds.
    last: Mutex<(u64, Marked)>,
}

impl LogMark {
    /// Opens the mark in `dir`, creating an empty one if there is none.
    /// Returns it and what it recorded (`None` for a new or never-written
    /// mark); a mark with no valid slot is an error naming the file.
    pub fn open(dir: &Path) -> Result<(LogMark, Option<Marked>)> {
        let path = dir.join(MARK_FILE);
        let io = |what: &str, e: std::io::Error| Error::internal(format!("{what} {}: {e}", path.display()));
        let created = !path.exists();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("open", e))?;
        if created {
            // Both slots exist from the start, so no later write ends the
            // file (a torn last write can then only damage its own slot).
            file.write_all_at(&[0u8; 2 * SLOT], 0)
                .and_then(|()| file.sync_all())
                .map_err(|e| io("create", e))?;
            if let Ok(dir) = File::open(dir) {
                dir.sync_all().map_err(|e| io("sync the directory of", e))?;
            }
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(|e| io("read", e))?;
        let recorded = read_slots(&bytes).ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "the log mark {} is damaged in both copies, so this node can no longer tell which \
                 votes and log entries it acknowledged; move its data dir aside and add it to the \
                 cluster again as a new node",
                path.display()
            ))
        })?;
        let last = recorded.unwrap_or((0, Marked::default()));
        let mark = LogMark {
            path,
            file,
            last: Mutex::new(last),
        };
        Ok((mark, recorded.map(|(_, marked)| marked)))
    }

    /// What the mark holds now.
    pub fn marked(&self) -> Marked {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    /// Records that the node acknowledges its log up to `acked` (kept if it
    /// is not above the mark's), durably on return. Blocking.
    pub fn record_acked(&self, acked: LogId<NodeId>) -> std::io::Result<()> {
        self.record(|marked| {
            if marked.acked < Some(acked) {
                marked.acked = Some(acked);
            }
        })
    }

    /// Records `vote` as the node's vote, durably on return. Blocking.
    pub fn record_vote(&self, vote: Vote<NodeId>) -> std::io::Result<()> {
        self.record(|marked| marked.vote = Some(vote))
    }

    /// Records exactly `marked` (an offline reset of the node's state, see
    /// `LogStore::reset_to_snapshot`), durably on return. Blocking.
    pub fn reset(&self, marked: Marked) -> std::io::Result<()> {
        self.record(|m| *m = marked)
    }

    fn record(&self, change: impl FnOnce(&mut Marked)) -> std::io::Result<()> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let mut marked = last.1;
        change(&mut marked);
        if marked == last.1 && last.0 > 0 {
            return Ok(());
        }
        let sequence = last.0 + 1;
        let slot = encode_slot(sequence, &marked).map_err(std::io::Error::other)?;
        self.file
            .write_all_at(&slot, (sequence % 2) * SLOT as u64)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| std::io::Error::new(e.kind(), format!("log mark {}: {e}", self.path.display())))?;
        *last = (sequence, marked);
        Ok(())
    }
}

/// One slot holding `marked` as write number `sequence`.
fn encode_slot(sequence: u64, marked: &Marked) -> Result<[u8; SLOT]> {
    let body = codec::encode(marked)?;
    if HEADER + body.len() + CRC > SLOT {
        return Err(Error::internal(format!("log mark body of {} bytes", body.len())));
    }
    let mut slot = [0u8; SLOT];
    slot[..4].copy_from_slice(MAGIC);
    slot[4..12].copy_from_slice(&sequence.to_le_bytes());
    slot[12..HEADER].copy_from_slice(&(body.len() as u16).to_le_bytes());
    let end = HEADER + body.len();
    slot[HEADER..end].copy_from_slice(&body);
    let crc = crc32fast::hash(&slot[..end]);
    slot[end..end + CRC].copy_from_slice(&crc.to_le_bytes());
    Ok(slot)
}

/// The slot's sequence number and content, if it is whole.
fn decode_slot(slot: &[u8]) -> Option<(u64, Marked)> {
    if slot.len() < HEADER + CRC || &slot[..4] != MAGIC {
        return None;
    }
    let sequence = u64::from_le_bytes(slot[4..12].try_into().ok()?);
    let length = u16::from_le_bytes(slot[12..HEADER].try_into().ok()?) as usize;
    let end = HEADER + length;
    let crc = slot.get(end..end + CRC)?;
    if crc32fast::hash(&slot[..end]).to_le_bytes() != crc {
        return None;
    }
    let marked = codec::decode(&slot[HEADER..end]).ok()?;
    Some((sequence, marked))
}

/// The newest whole slot of the file's `bytes`: `Some(None)` when the file
/// was never written (empty or all zero), `None` when no slot is whole.
fn read_slots(bytes: &[u8]) -> Option<Option<(u64, Marked)>> {
    if bytes.iter().all(|&b| b == 0) {
        return Some(None);
    }
    let newest = bytes
        .chunks(SLOT)
        .take(2)
        .filter_map(decode_slot)
        .max_by_key(|(seq, _)| *seq)?;
    Some(Some(newest))
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    #[test]
    fn a_new_mark_is_empty_and_keeps_what_it_records_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let (mark, recorded) = LogMark::open(dir.path()).unwrap();
        assert_eq!(recorded, None);
        mark.record_vote(Vote::new(3, 2)).unwrap();
        mark.record_acked(log_id(3, 10)).unwrap();
        mark.record_acked(log_id(2, 40)).unwrap();
        drop(mark);
        let (mark, recorded) = LogMark::open(dir.path()).unwrap();
        let expected = Marked {
            vote: Some(Vote::new(3, 2)),
            acked: Some(log_id(3, 10)),
        };
        assert_eq!(recorded, Some(expected), "the acked log id never goes back");
        assert_eq!(mark.marked(), expected);
        assert_eq!(
            std::fs::metadata(dir.path().join(MARK_FILE)).unwrap().len(),
            2 * SLOT as u64
        );
    }

    #[test]
    fn a_torn_slot_leaves_the_previous_mark() {
        let dir = tempfile::tempdir().unwrap();
        let (mark, _) = LogMark::open(dir.path()).unwrap();
        for index in 1..=5 {
            mark.record_acked(log_id(1, index)).unwrap();
        }
        drop(mark);
        // Write 5 went to slot 1; tear it from its 20th byte on.
        let path = dir.path().join(MARK_FILE);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xA5; SLOT - 20], SLOT as u64 + 20).unwrap();
        let (mark, recorded) = LogMark::open(dir.path()).unwrap();
        assert_eq!(recorded.unwrap().acked, Some(log_id(1, 4)));
        // The next write goes after the newest whole one, into the torn slot.
        mark.record_acked(log_id(1, 6)).unwrap();
        drop(mark);
        let (_, recorded) = LogMark::open(dir.path()).unwrap();
        assert_eq!(recorded.unwrap().acked, Some(log_id(1, 6)));
    }

    #[test]
    fn a_mark_damaged_in_both_slots_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (mark, _) = LogMark::open(dir.path()).unwrap();
        mark.record_acked(log_id(1, 1)).unwrap();
        mark.record_acked(log_id(1, 2)).unwrap();
        drop(mark);
        let path = dir.path().join(MARK_FILE);
        std::fs::write(&path, [0x5Au8; 2 * SLOT]).unwrap();
        let error = LogMark::open(dir.path()).err().expect("refused").to_string();
        assert!(
            error.contains("raft-mark") && error.contains("damaged"),
            "{error}"
        );
    }
}
