//! Fault injection, chosen by the seed.
//!
//! The schedule first goes once through every fault kind the runtime supports
//! (in a seeded order, so a short smoke run covers them all), then draws kinds
//! at random until the fault phase ends. Each fault is injected, held for a
//! seeded time, healed, and followed by a recovery pause in which the cluster
//! must elect a leader again. Every fault is recorded with the nodes it hit.

use std::time::{Duration, Instant};

use anyhow::Result;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::client::Clients;
use crate::history::{Fault, FaultKind};
use crate::runtime::{NodeId, Runtime};

/// Longest wait for a leader after a heal.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

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
    let (nodes, detail) = match kind {
        FaultKind::KillLeader | FaultKind::KillFollower => {
            let leader = leader_or_any(clients, rng).await;
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
    Ok(Fault {
        kind,
        nodes,
        start_ms,
        end_ms: ms(started),
        detail,
    })
}
