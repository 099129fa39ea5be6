//! The `damaged_snapshot` fault: a node's stored snapshot is damaged after
//! it was written, as a disk that rots a sector or loses a block leaves
//! it, and the node must take the state back from its peers.
//!
//! 1. A follower that holds a snapshot (its status reports a snapshot
//!    index) is the victim; the leader's commit index is noted. Without
//!    such a follower within [`SNAPSHOT_WAIT`] the fault does nothing and
//!    says so.
//! 2. The victim is killed, and its `sled/kairos-snapshot` is either cut
//!    short at a random byte or has one random byte after the magic
//!    changed. (The magic's version digits are left alone: a file of a
//!    version this build does not know is refused as a newer build's, not
//!    treated as damage.)
//! 3. It is started again 0.3–1.5 s later.
//!
//! What the node must do (`kairos::raft::open_storage_for_node`): notice
//! the damage by checksum, set the file aside, drop the log built on it,
//! and take a snapshot and entries from the leader, without voting for a
//! candidate that lacks what it acknowledged. Within [`RECOVERED_WITHIN`]
//! it must be running and have applied at least the commit index noted in
//! step 1. A node that exits instead, or does not catch up, is the fault's
//! misbehaviour (checker `damaged_snapshot_recovered`); that its state then
//! equals the others', `replica_digest` judges.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;

use crate::client::Clients;
use crate::faults::Judged;
use crate::runtime::{NodeId, Runtime};

/// How long the fault waits for a follower to hold a snapshot.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(10);

/// How long the victim has to come back with the leader's state.
const RECOVERED_WITHIN: Duration = Duration::from_secs(30);

/// The snapshot file's magic (`KSNAP` and three version digits): not changed.
const MAGIC_LEN: u64 = 8;

/// Longest wait for one status call.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// Damages a follower's snapshot while it is down and judges whether it
/// came back with the leader's state.
pub async fn damage_and_restart(
    runtime: &mut Runtime,
    clients: &Clients,
    rng: &mut StdRng,
) -> anyhow::Result<Judged> {
    let Some((victim, leader, snapshot_index)) = follower_with_snapshot(clients, rng).await else {
        return Ok(Judged {
            nodes: Vec::new(),
            detail: format!("no follower held a snapshot within {SNAPSHOT_WAIT:?}: nothing damaged"),
            misbehaviour: None,
        });
    };
    let committed = clients
        .local_status(leader, false, STATUS_TIMEOUT)
        .await
        .map_or(0, |status| status.commit_index);
    let log_from = runtime.log_len(victim);
    runtime.kill(victim).await?;
    let file = runtime.data_dir(victim).join("sled").join("kairos-snapshot");
    let damage = damage(&file, rng)?;
    tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1_500))).await;
    runtime.start(victim).await?;
    let detail = format!("node {victim}: snapshot at index {snapshot_index}, {damage}");

    let started = Instant::now();
    let misbehaviour = loop {
        if let Some(status) = runtime.exit_status(victim) {
            let log = runtime.log_since(victim, log_from);
            break Some(format!(
                "exited ({status}) after its snapshot was damaged instead of taking the state \
                 from its peers; its last error: {}",
                last_error(&log)
            ));
        }
        let applied = clients
            .local_status(victim, false, STATUS_TIMEOUT)
            .await
            .map(|status| status.applied_index);
        if applied.is_some_and(|applied| applied >= committed) {
            break None;
        }
        if started.elapsed() >= RECOVERED_WITHIN {
            break Some(format!(
                "had not applied the leader's commit index {committed} {} s after its restart \
                 (applied: {})",
                RECOVERED_WITHIN.as_secs(),
                applied.map_or("no answer".to_string(), |a| a.to_string())
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let detail = match misbehaviour {
        None => format!(
            "{detail}; back at the leader's commit index {committed} in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
        Some(_) => detail,
    };
    Ok(Judged {
        nodes: vec![victim],
        detail,
        misbehaviour,
    })
}

/// A random follower of the current leader that holds a snapshot, with the
/// leader and its snapshot index; waits up to [`SNAPSHOT_WAIT`] for one.
async fn follower_with_snapshot(clients: &Clients, rng: &mut StdRng) -> Option<(NodeId, NodeId, u64)> {
    let deadline = Instant::now() + SNAPSHOT_WAIT;
    while Instant::now() < deadline {
        if let Some(leader) = clients.leader().await {
            let mut holding = Vec::new();
            for id in clients.ids().into_iter().filter(|&id| id != leader) {
                if let Some(status) = clients.local_status(id, false, STATUS_TIMEOUT).await {
                    if status.snapshot_index > 0 {
                        holding.push((id, status.snapshot_index));
                    }
                }
            }
            if !holding.is_empty() {
                let (victim, index) = holding[rng.gen_range(0..holding.len())];
                return Some((victim, leader, index));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// Cuts `file` short at a random byte, or changes one random byte after
/// its magic; says which.
fn damage(file: &Path, rng: &mut StdRng) -> anyhow::Result<String> {
    use anyhow::Context;
    let mut handle = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .with_context(|| format!("opening {}", file.display()))?;
    let len = handle.metadata()?.len();
    if rng.gen_bool(0.5) || len <= MAGIC_LEN {
        let at = rng.gen_range(0..len.max(1));
        handle.set_len(at)?;
        return Ok(format!("{len} bytes, cut at byte {at}"));
    }
    let at = rng.gen_range(MAGIC_LEN..len);
    let mut byte = [0u8];
    handle.seek(SeekFrom::Start(at))?;
    handle.read_exact(&mut byte)?;
    let flip = rng.gen_range(1..=255u8);
    handle.seek(SeekFrom::Start(at))?;
    handle.write_all(&[byte[0] ^ flip])?;
    Ok(format!("{len} bytes, byte {at} changed (xor {flip:#04x})"))
}

/// The last line of `log` that reports an error, or its last line.
fn last_error(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let line = lines
        .iter()
        .rev()
        .find(|l| l.contains("ERROR") || l.contains("Error:"))
        .or(lines.last())
        .copied()
        .unwrap_or("(nothing logged)");
    line.chars().take(400).collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn damage_cuts_or_changes_a_byte_but_never_the_magic() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kairos-snapshot");
        let original: Vec<u8> = b"KSNAP006"
            .iter()
            .copied()
            .chain((0..200u8).map(|i| i ^ 0x55))
            .collect();
        let (mut cut, mut changed) = (0, 0);
        for seed in 0..64 {
            std::fs::write(&file, &original).unwrap();
            let said = damage(&file, &mut StdRng::seed_from_u64(seed)).unwrap();
            let now = std::fs::read(&file).unwrap();
            if now.len() < original.len() {
                cut += 1;
                assert!(said.contains("cut at byte"), "{said}");
                assert_eq!(now[..], original[..now.len()], "{said}");
            } else {
                changed += 1;
                assert!(said.contains("changed"), "{said}");
                let differ: Vec<usize> = (0..now.len()).filter(|&i| now[i] != original[i]).collect();
                assert_eq!(differ.len(), 1, "{said}");
                assert!(differ[0] >= MAGIC_LEN as usize, "{said}");
            }
        }
        assert!(
            cut > 0 && changed > 0,
            "both kinds of damage: {cut} cut, {changed} changed"
        );
    }

    #[test]
    fn the_last_error_is_found_in_the_node_log() {
        let log = "INFO started\nERROR kairos: the snapshot is damaged\nINFO bye\n";
        assert_eq!(last_error(log), "ERROR kairos: the snapshot is damaged");
        assert_eq!(last_error("INFO a\nINFO b\n"), "INFO b");
        assert_eq!(last_error(""), "(nothing logged)");
    }
}
