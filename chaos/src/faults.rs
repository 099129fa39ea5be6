//! Fault injection, chosen by the seed.
//!
//! The schedule first goes once through every fault kind the runtime supports
//! (in a seeded order, so a short smoke run covers them all), then draws kinds
//! at random until the fault phase ends. Each fault is injected, held for a
//! seeded time, healed, and followed by a recovery pause in which the cluster
//! must elect a leader again. Every fault is recorded with the nodes it hit.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::client::Clients;
use crate::history::{Fault, FaultKind, LeadershipWatch};
use crate::runtime::{NodeId, Runtime};

/// Longest wait for a leader after a heal.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long after a follower-only fault heals the harness watches for a
/// needless election: twice the longest a returning node of the default
/// timing waits before it stands (lease 500 ms + timeout up to 500 ms).
const LEADERSHIP_WATCH: Duration = Duration::from_millis(2_000);

/// The largest offset of a skewed clock, ms (either way).
pub const MAX_CLOCK_OFFSET_MS: i64 = 120_000;

/// The largest jump of a jumping clock from the real time, ms (either way).
const MAX_CLOCK_JUMP_MS: i64 = 90_000;

/// How often a drifting clock's offset moves.
const CLOCK_STEP: Duration = Duration::from_millis(100);

/// How long a node whose fsync fails, or whose disk is full, may take to stop.
const STOP_ON_STORAGE_ERROR: Duration = Duration::from_secs(10);

/// What a fault that judges the cluster's answer itself did: the nodes it
/// hit, its detail, and what the cluster did wrong, if anything (which the
/// fault kind's checker reports, see `invariants::misbehaviour_of`).
pub struct Judged {
    pub nodes: Vec<NodeId>,
    pub detail: String,
    pub misbehaviour: Option<String>,
}

/// The kinds `runtime` can inject, among `wanted`.
pub fn supported(runtime: &Runtime, wanted: &[FaultKind]) -> Vec<FaultKind> {
    wanted
        .iter()
        .copied()
        .filter(|k| {
            runtime.supports_link_faults()
                || !matches!(
                    k,
                    FaultKind::Bridge | FaultKind::SlowLinks | FaultKind::LossyLinks
                )
        })
        .filter(|k| runtime.supports_disk_faults() || !k.needs_disk_library())
        .filter(|k| runtime.supports_clock_faults() || !k.needs_clock_library())
        .filter(|k| runtime.supports_disk_full() || *k != FaultKind::DiskFull)
        .collect()
}

/// Injects faults until `until`; returns them in order.
pub async fn run(
    runtime: &mut Runtime,
    clients: &Clients,
    kinds: &[FaultKind],
    rng: &mut StdRng,
    started: Instant,
    until: Instant,
) -> Result<Vec<Fault>> {
    let mut faults = Vec::new();
    if kinds.is_empty() {
        tokio::time::sleep_until(until.into()).await;
        return Ok(faults);
    }
    let mut first_pass = kinds.to_vec();
    first_pass.shuffle(rng);
    let mut next = first_pass.into_iter();
    while Instant::now() < until {
        let kind = next
            .next()
            .unwrap_or_else(|| kinds[rng.gen_range(0..kinds.len())]);
        let fault = inject(runtime, clients, kind, rng, started).await?;
        tracing::info!(kind = kind.name(), nodes = ?fault.nodes, detail = %fault.detail, "fault healed");
        faults.push(fault);
        // Recovery: the cluster must elect a leader again, then runs for a while.
        if clients.wait_leader(RECOVERY_TIMEOUT).await.is_none() {
            tracing::warn!("no leader {RECOVERY_TIMEOUT:?} after healing {}", kind.name());
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1_000..3_000))).await;
    }
    Ok(faults)
}

fn ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

async fn hold(rng: &mut StdRng, from_ms: u64, to_ms: u64) {
    tokio::time::sleep(Duration::from_millis(rng.gen_range(from_ms..to_ms))).await;
}

/// Makes node `victim`'s storage fail as `kind` says (`fsync_error`:
/// syncs fail with EIO; `disk_full`: its filesystem is full), or work again.
fn set_storage_failing(runtime: &mut Runtime, kind: FaultKind, victim: NodeId, failing: bool) -> Result<()> {
    match kind {
        FaultKind::FsyncError => runtime.set_sync_failing(victim, failing),
        _ => runtime.set_disk_full(victim, failing),
    }
}

/// Waits up to [`STOP_ON_STORAGE_ERROR`] for node `victim` to exit; how it
/// exited, or `None` if it is still running.
async fn await_exit(runtime: &Runtime, victim: NodeId) -> Option<ExitStatus> {
    let deadline = tokio::time::Instant::now() + STOP_ON_STORAGE_ERROR;
    loop {
        if let Some(status) = runtime.exit_status(victim) {
            return Some(status);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the victim of a storage fault (`fault`) did, from how it exited
/// (`None`: still running): the fault's detail, and what it did wrong, if
/// anything. `must_stop`: one of its syncs or writes failed, so it had to
/// exit, and with a failure status.
fn judge_storage_stop(fault: &str, status: Option<ExitStatus>, must_stop: bool) -> (String, Option<String>) {
    match status {
        Some(status) => (
            format!("{fault}; the node exited ({status})"),
            (must_stop && status.success())
                .then(|| format!("exited with {status} (success) after its storage failed")),
        ),
        None if must_stop => (
            format!("{fault}; the node did not stop"),
            Some(format!(
                "still running {} s after its storage started failing",
                STOP_ON_STORAGE_ERROR.as_secs()
            )),
        ),
        None => (
            format!("{fault}; no write of the node failed (it wrote into space its files had), it ran on"),
            None,
        ),
    }
}

/// The node whose clock a clock fault moves: the leader (whose clock fires
/// jobs and stamps every entry) two times in three, else any node.
async fn clock_victim(clients: &Clients, ids: &[NodeId], rng: &mut StdRng) -> NodeId {
    match rng.gen_bool(2.0 / 3.0) {
        true => leader_or_any(clients, rng).await,
        false => ids[rng.gen_range(0..ids.len())],
    }
}

/// A clock offset in `range` ms, ahead or behind by the seed.
fn offset(rng: &mut StdRng, range: std::ops::Range<i64>) -> i64 {
    let magnitude = rng.gen_range(range);
    match rng.gen_bool(0.5) {
        true => magnitude,
        false => -magnitude,
    }
}

/// `+90.5 s` / `-12.0 s`.
fn signed_s(ms: i64) -> String {
    format!("{:+.1} s", ms as f64 / 1000.0)
}

/// The current leader, or a seeded node when none is known.
async fn leader_or_any(clients: &Clients, rng: &mut StdRng) -> NodeId {
    match clients.leader().await {
        Some(leader) => leader,
        None => {
            let ids = clients.ids();
            ids[rng.gen_range(0..ids.len())]
        }
    }
}

/// Injects one fault of `kind`, holds it, heals it.
async fn inject(
    runtime: &mut Runtime,
    clients: &Clients,
    kind: FaultKind,
    rng: &mut StdRng,
    started: Instant,
) -> Result<Fault> {
    let ids = runtime.ids();
    let majority = ids.len() / 2 + 1;
    let start_ms = ms(started);
    let mut misbehaviour = None;
    // Faults that touch only followers must leave the leader in place, and
    // so must a clock fault on any node: Raft times itself by the monotonic
    // clock, which a clock fault leaves true. An overload must not starve
    // the heartbeats, nor may a slow disk: the log syncs off Raft's loop.
    let watched = matches!(
        kind,
        FaultKind::FlappingFollower
            | FaultKind::KillFollower
            | FaultKind::ClockSkew
            | FaultKind::ClockJump
            | FaultKind::Overload
            | FaultKind::SlowDisk
    );
    let before = match watched {
        true => clients.leadership().await,
        false => None,
    };
    let (nodes, detail) = match kind {
        FaultKind::KillLeader | FaultKind::KillFollower => {
            let leader = match before {
                Some((leader, _)) => leader,
                None => leader_or_any(clients, rng).await,
            };
            let victim = if kind == FaultKind::KillLeader {
                leader
            } else {
                let followers: Vec<NodeId> = ids.iter().copied().filter(|&id| id != leader).collect();
                followers[rng.gen_range(0..followers.len())]
            };
            runtime.kill(victim).await?;
            hold(rng, 1_000, 4_000).await;
            runtime.start(victim).await?;
            (vec![victim], "kill -9, restart".to_string())
        }
        FaultKind::KillMajority => {
            let mut victims = ids.clone();
            victims.shuffle(rng);
            victims.truncate(majority);
            for &victim in &victims {
                runtime.kill(victim).await?;
                hold(rng, 300, 1_500).await;
            }
            hold(rng, 500, 2_000).await;
            for &victim in &victims {
                runtime.start(victim).await?;
                hold(rng, 300, 1_500).await;
            }
            (victims, "kill -9 in sequence, restart in sequence".to_string())
        }
        FaultKind::PauseLeader => {
            let leader = leader_or_any(clients, rng).await;
            runtime.pause(leader).await?;
            // Longer than the election timeout (250-500 ms by default), and
            // than the heartbeat timeout of the runs it holds (3 s), sometimes.
            hold(rng, 1_500, 4_500).await;
            runtime.resume(leader).await?;
            (vec![leader], "SIGSTOP, SIGCONT".to_string())
        }
        FaultKind::IsolateLeader => {
            let leader = leader_or_any(clients, rng).await;
            let rest: Vec<NodeId> = ids.iter().copied().filter(|&id| id != leader).collect();
            runtime.partition(&[vec![leader], rest.clone()]).await?;
            hold(rng, 1_500, 5_000).await;
            runtime.heal().await?;
            (vec![leader], format!("{{{leader}}} | {rest:?}"))
        }
        FaultKind::PartitionMinority => {
            let mut shuffled = ids.clone();
            shuffled.shuffle(rng);
            let minority: Vec<NodeId> = shuffled[majority..].to_vec();
            let majority_side: Vec<NodeId> = shuffled[..majority].to_vec();
            runtime
                .partition(&[majority_side.clone(), minority.clone()])
                .await?;
            hold(rng, 1_500, 5_000).await;
            runtime.heal().await?;
            (minority.clone(), format!("{majority_side:?} | {minority:?}"))
        }
        FaultKind::Bridge => {
            // The bridge sees everyone; the others are split in two groups
            // that cannot see each other.
            let mut shuffled = ids.clone();
            shuffled.shuffle(rng);
            let bridge = shuffled[0];
            let (left, right) = shuffled[1..].split_at((ids.len() - 1) / 2);
            let pairs: Vec<(NodeId, NodeId)> = left
                .iter()
                .flat_map(|&a| right.iter().map(move |&b| (a, b)))
                .collect();
            runtime.cut_links(&pairs).await?;
            hold(rng, 1_500, 5_000).await;
            runtime.heal().await?;
            (vec![bridge], format!("bridge {bridge}: {left:?} x {right:?}"))
        }
        FaultKind::SlowLinks => {
            let delay = rng.gen_range(20..150);
            runtime.degrade_links(delay, 0).await?;
            hold(rng, 2_000, 5_000).await;
            runtime.heal().await?;
            (ids.clone(), format!("delay {delay} ms"))
        }
        FaultKind::LossyLinks => {
            let per_mille = rng.gen_range(5..50);
            runtime.degrade_links(0, per_mille).await?;
            hold(rng, 2_000, 5_000).await;
            runtime.heal().await?;
            (ids.clone(), format!("break {per_mille}/1000 chunks"))
        }
        FaultKind::Upgrade => anyhow::bail!("an upgrade is a step of the upgrade scenario, not a fault"),
        FaultKind::FlappingFollower => {
            let leader = match before {
                Some((leader, _)) => leader,
                None => leader_or_any(clients, rng).await,
            };
            let followers: Vec<NodeId> = ids.iter().copied().filter(|&id| id != leader).collect();
            let victim = followers[rng.gen_range(0..followers.len())];
            let flaps = rng.gen_range(2..=4);
            for flap in 0..flaps {
                runtime.pause(victim).await?;
                // Longer than the lease plus the election timeout (up to
                // 1 s by default): the node's timer is overdue when it returns.
                hold(rng, 1_200, 2_500).await;
                runtime.resume(victim).await?;
                if flap + 1 < flaps {
                    hold(rng, 200, 1_000).await;
                }
            }
            (vec![victim], format!("SIGSTOP, SIGCONT x{flaps}"))
        }
        FaultKind::FsyncError | FaultKind::DiskFull => {
            // Any node: a follower meets it at its next append, a leader at its own.
            let victim = ids[rng.gen_range(0..ids.len())];
            let fault = match kind {
                FaultKind::FsyncError => "fdatasync EIO",
                _ => "disk full (ENOSPC)",
            };
            let log_from = runtime.log_len(victim);
            set_storage_failing(runtime, kind, victim, true)?;
            let status = await_exit(runtime, victim).await;
            // A failed fsync always counts. A full disk fails only the
            // writes that need new space: a node whose store had room
            // inside its files (sled reuses freed segments) wrote nothing
            // that failed, and is right to go on; one that met ENOSPC must
            // have stopped.
            let must_stop = kind == FaultKind::FsyncError
                || runtime
                    .log_since(victim, log_from)
                    .contains("No space left on device");
            let (detail, wrong) = judge_storage_stop(fault, status, must_stop);
            misbehaviour = wrong;
            // The disk is healthy again; the node is started on its data.
            set_storage_failing(runtime, kind, victim, false)?;
            runtime.kill(victim).await?;
            hold(rng, 300, 1_500).await;
            runtime.start(victim).await?;
            (vec![victim], detail)
        }
        FaultKind::SlowDisk => {
            let victim = leader_or_any(clients, rng).await;
            // From a busy disk (tens of ms) to one that stalls (over a second,
            // longer than an election timeout).
            let delay = rng.gen_range(50..1_500);
            runtime.set_sync_slow(victim, Some(delay))?;
            hold(rng, 2_000, 5_000).await;
            runtime.set_sync_slow(victim, None)?;
            (vec![victim], format!("fdatasync +{delay} ms"))
        }
        FaultKind::ClockSkew => {
            let victim = clock_victim(clients, &ids, rng).await;
            let hold_ms = rng.gen_range(3_000..6_000);
            let detail = if rng.gen_bool(0.5) {
                let offset_ms = offset(rng, 20_000..MAX_CLOCK_OFFSET_MS);
                runtime.set_clock_offset(victim, offset_ms)?;
                tokio::time::sleep(Duration::from_millis(hold_ms)).await;
                format!("wall clock {}", signed_s(offset_ms))
            } else {
                // A clock running at `rate`: the offset grows (or shrinks)
                // by (rate - 1) of the real time, moved every 100 ms.
                let rate = [0.5, 0.75, 1.5, 2.0][rng.gen_range(0..4)];
                let from = tokio::time::Instant::now();
                let until = from + Duration::from_millis(hold_ms);
                let mut tick = tokio::time::interval(CLOCK_STEP);
                while tokio::time::Instant::now() < until {
                    tick.tick().await;
                    let elapsed = from.elapsed().as_millis() as f64;
                    runtime.set_clock_offset(victim, ((rate - 1.0) * elapsed) as i64)?;
                }
                format!("wall clock at x{rate} for {:.1} s", hold_ms as f64 / 1000.0)
            };
            // The node's clock is set right in one step.
            runtime.set_clock_offset(victim, 0)?;
            (vec![victim], format!("{detail}, then stepped back"))
        }
        FaultKind::ClockJump => {
            let victim = clock_victim(clients, &ids, rng).await;
            let jumps = rng.gen_range(2..=4);
            let mut offsets = Vec::new();
            for jump in 0..jumps {
                // Forward and back in turn, from where the clock is.
                let magnitude = rng.gen_range(10_000..MAX_CLOCK_JUMP_MS);
                let offset_ms = if jump % 2 == 0 { magnitude } else { -magnitude };
                runtime.set_clock_offset(victim, offset_ms)?;
                offsets.push(signed_s(offset_ms));
                hold(rng, 1_000, 3_000).await;
            }
            runtime.set_clock_offset(victim, 0)?;
            (
                vec![victim],
                format!("wall clock jumps {}, then back to 0", offsets.join(", ")),
            )
        }
        FaultKind::TornWrite => {
            // One node loses power, or the whole cluster does, at a moment
            // 1-3 s into the fault while the workload writes.
            let victims = match rng.gen_bool(0.5) {
                true => vec![ids[rng.gen_range(0..ids.len())]],
                false => ids.clone(),
            };
            hold(rng, 1_000, 3_000).await;
            for &victim in &victims {
                runtime.kill(victim).await?;
            }
            let mut torn = Vec::new();
            for &victim in &victims {
                torn.push(format!("{victim}: {}", runtime.tear_unsynced(victim, rng)?));
            }
            hold(rng, 300, 1_500).await;
            for &victim in &victims {
                runtime.start(victim).await?;
            }
            (victims, format!("power cut; {}", torn.join("; ")))
        }
        FaultKind::LostTail => {
            // Leader L and follower A acknowledge writes while follower B
            // is cut off; A's disk then loses what it wrote since, and L
            // dies with it. A and B alone must not elect a leader without
            // the writes (B lacks them, A lost them): the cluster waits
            // for L, whose log holds them.
            let leader = leader_or_any(clients, rng).await;
            let mut followers: Vec<NodeId> = ids.iter().copied().filter(|&id| id != leader).collect();
            followers.shuffle(rng);
            let victim = followers[0];
            // The leader's side is a bare majority, the victim in it.
            let cut_off: Vec<NodeId> = followers[majority - 1..].to_vec();
            let served: Vec<NodeId> = ids.iter().copied().filter(|id| !cut_off.contains(id)).collect();
            runtime.partition(&[served, cut_off.clone()]).await?;
            let from = runtime.write_log_len(victim)?;
            hold(rng, 1_500, 3_000).await;
            runtime.kill(leader).await?;
            runtime.kill(victim).await?;
            let lost = runtime.lose_writes_since(victim, from, rng)?;
            runtime.heal().await?;
            runtime.start(victim).await?;
            // Long enough for the two to elect a leader if they would.
            hold(rng, 2_500, 4_000).await;
            runtime.start(leader).await?;
            (
                vec![victim, leader],
                format!("{cut_off:?} cut off; node {victim}: {lost}; leader {leader} killed, back after the others"),
            )
        }
        FaultKind::DamagedSnapshot => {
            let damaged = crate::damaged_snapshot::damage_and_restart(runtime, clients, rng).await?;
            misbehaviour = damaged.misbehaviour;
            (damaged.nodes, damaged.detail)
        }
        FaultKind::MembershipChange => {
            let change = crate::membership::remove_and_add_back(runtime, clients, rng).await?;
            misbehaviour = change.misbehaviour;
            (change.nodes, change.detail)
        }
        FaultKind::Overload => {
            let flood = crate::overload::flood(runtime, clients, rng).await;
            misbehaviour = flood.misbehaviour;
            (ids.clone(), flood.detail)
        }
        FaultKind::FullRestart => {
            for &id in &ids {
                runtime.kill(id).await?;
            }
            hold(rng, 300, 1_500).await;
            for &id in &ids {
                runtime.start(id).await?;
            }
            (ids.clone(), "kill -9 all, start all".to_string())
        }
    };
    let end_ms = ms(started);
    let leadership = match before {
        Some(before) => {
            tokio::time::sleep(LEADERSHIP_WATCH).await;
            let after = match clients.leadership().await {
                Some(after) => Some(after),
                None => {
                    clients.wait_leader(RECOVERY_TIMEOUT).await;
                    clients.leadership().await
                }
            };
            Some(LeadershipWatch {
                before,
                after,
                after_ms: ms(started),
            })
        }
        None => None,
    };
    Ok(Fault {
        kind,
        nodes,
        start_ms,
        end_ms,
        detail,
        leadership,
        misbehaviour,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn a_storage_fault_victim_must_exit_with_a_failure_only_when_its_storage_failed() {
        let failed = Some(ExitStatus::from_raw(1 << 8));
        let succeeded = Some(ExitStatus::from_raw(0));
        assert_eq!(judge_storage_stop("f", failed, true).1, None);
        assert!(judge_storage_stop("f", succeeded, true)
            .1
            .unwrap()
            .contains("(success)"));
        assert!(judge_storage_stop("f", None, true)
            .1
            .unwrap()
            .starts_with("still running"));
        // A full disk that failed no write: running on is right.
        let (detail, wrong) = judge_storage_stop("f", None, false);
        assert_eq!(wrong, None);
        assert!(detail.contains("ran on"), "{detail}");
        assert_eq!(judge_storage_stop("f", succeeded, false).1, None);
    }
}
