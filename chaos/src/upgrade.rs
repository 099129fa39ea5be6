//! The rolling upgrade scenario (`kairos-chaos upgrade`): the fault phase
//! of a round replaced by an upgrade of every node from one build to
//! another, under the same live workload and judged by the same checkers.
//!
//! The cluster starts on the old build. One node at a time is stopped as an
//! operator would (SIGTERM, [`STOP_GRACE`]), left down for [`DOWN`], started
//! again on the same data directory, and waited for: it must answer as a follower or leader and
//! have applied what the leader had committed when it came back
//! ([`CATCH_UP_TIMEOUT`]). The steps, with `L` the leader at the start and
//! `F1`, `F2` the followers:
//!
//! 1. `F1` and `F2` to the new build. The cluster version must still be the
//!    old one (`L` runs the old build) — asked through `kairos cluster
//!    version`'s RPC on an upgraded node.
//! 2. `L` restarted on the old build: leadership moves to a new node, so the
//!    old nodes now follow a leader of the new build (entries, snapshots
//!    and forwarded writes of the new build reach old nodes).
//! 3. The downgrade: an upgraded follower back to the old build, while the
//!    cluster version is still the old one; then to the new build again.
//! 4. `L`, the last old node, to the new build.
//! 5. The cluster version must reach the new build's within
//!    [`VERSION_TIMEOUT`].
//!
//! Each step is recorded in the history as a fault of kind `upgrade` (the
//! timeline shows it); a step whose expectation fails (a node that does
//! not come back, a cluster version that moves too early or never) is a
//! violation of the pseudo-invariant `rolling_upgrade`. The nodes run
//! with small snapshot thresholds so that snapshots are written, sent and
//! installed across builds too.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::client::{role, Clients};
use crate::history::{Fault, FaultKind, Role};
use crate::report::Violation;
use crate::runtime::process::ProcessCluster;
use crate::runtime::{NodeId, Runtime};
use kairos::proto as pb;

/// How long a stopping node may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// How long a restarted node may take to answer and catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the cluster version may take to move once every node runs the new build.
const VERSION_TIMEOUT: Duration = Duration::from_secs(60);
/// The name violations of this scenario go under.
pub const INVARIANT: &str = "rolling_upgrade";
/// Agent flags of the upgrade round: snapshots every few hundred changes,
/// few entries kept behind them, so restarted nodes install snapshots.
pub const AGENT_ARGS: [&str; 4] = ["--snapshot-logs", "300", "--snapshot-keep-logs", "10"];
/// How long a node stays stopped (its binary being replaced): long enough
/// for the others to build a snapshot and purge the log it would need.
const DOWN: Duration = Duration::from_secs(3);

/// The two builds and their versions.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub old_bin: PathBuf,
    pub new_bin: PathBuf,
    /// major.minor of each, as `kairos --version` prints it.
    pub old_version: String,
    pub new_version: String,
}

/// major.minor of the build at `bin` (`kairos --version` prints `kairos X.Y.Z`).
pub fn build_version(bin: &std::path::Path) -> Result<String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let full = text
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("{} --version printed {text:?}", bin.display()))?;
    let mut parts = full.split('.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => Ok(format!("{major}.{minor}")),
        _ => anyhow::bail!("{} --version printed {text:?}", bin.display()),
    }
}

/// What the upgrade phase did: its steps, and what went wrong.
pub struct Outcome {
    pub steps: Vec<Fault>,
    pub violations: Vec<Violation>,
}

/// Runs the steps of the module docs, spread over the time until `until`
/// (each step waits for its share, then for the node); returns after the
/// last step and the version check, whatever the time.
pub async fn run(
    runtime: &mut Runtime,
    clients: &Clients,
    plan: &Plan,
    started: Instant,
    until: Instant,
) -> Result<Outcome> {
    let Runtime::Process(cluster) = runtime else {
        anyhow::bail!("the upgrade scenario runs in process mode only");
    };
    let mut run = Upgrade {
        cluster,
        clients,
        plan,
        started,
        steps: Vec::new(),
        violations: Vec::new(),
    };
    let leader = clients
        .wait_leader(Duration::from_secs(30))
        .await
        .context("no leader before the upgrade")?;
    let followers: Vec<NodeId> = clients.ids().into_iter().filter(|&id| id != leader).collect();
    let (f1, f2) = (followers[0], followers[1]);
    // Seven steps; each starts after its share of the time.
    let share = until.saturating_duration_since(Instant::now()) / 8;
    let (new, old) = (plan.new_bin.clone(), plan.old_bin.clone());

    tokio::time::sleep(share).await;
    run.restart(f1, &new, "upgrade").await?;
    tokio::time::sleep(share).await;
    run.restart(f2, &new, "upgrade").await?;
    run.expect_version(
        f1,
        &plan.old_version,
        "two of three nodes upgraded, the leader still old",
    )
    .await;
    tokio::time::sleep(share).await;
    run.restart(
        leader,
        &old,
        "restart on the old build (leadership moves to a new node)",
    )
    .await?;
    tokio::time::sleep(share).await;
    // The downgrade: an upgraded node that does not lead now.
    let now_leader = clients.leader().await;
    let back = if now_leader == Some(f2) { f1 } else { f2 };
    let upgraded = if back == f1 { f2 } else { f1 };
    run.restart(back, &old, "downgrade while the cluster version is the old one")
        .await?;
    run.expect_version(upgraded, &plan.old_version, "after the downgrade")
        .await;
    tokio::time::sleep(share).await;
    run.restart(back, &new, "upgrade again").await?;
    tokio::time::sleep(share).await;
    run.restart(leader, &new, "upgrade (the first leader, last)")
        .await?;
    run.wait_version(&plan.new_version).await;
    Ok(Outcome {
        steps: run.steps,
        violations: run.violations,
    })
}

struct Upgrade<'a> {
    cluster: &'a mut ProcessCluster,
    clients: &'a Clients,
    plan: &'a Plan,
    started: Instant,
    steps: Vec<Fault>,
    violations: Vec<Violation>,
}

impl Upgrade<'_> {
    fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Stops `id` gracefully, starts it on `bin`, waits until it caught up.
    async fn restart(&mut self, id: NodeId, bin: &std::path::Path, what: &str) -> Result<()> {
        let version = if bin == self.plan.new_bin {
            &self.plan.new_version
        } else {
            &self.plan.old_version
        };
        let detail = format!("{what}: SIGTERM, start on {version} ({})", bin.display());
        tracing::info!(node = id, "{detail}");
        let start_ms = self.ms();
        let forced = self.cluster.stop(id, STOP_GRACE).await?;
        if forced {
            self.violations.push(
                Violation::new(
                    INVARIANT,
                    format!("node {id} did not stop within {STOP_GRACE:?} of SIGTERM"),
                )
                .nodes(vec![id]),
            );
        }
        self.cluster.set_binary(id, bin);
        tokio::time::sleep(DOWN).await;
        self.cluster.start(id).await?;
        if let Err(e) = self.wait_caught_up(id).await {
            let exit = self
                .cluster
                .exit_status(id)
                .map_or(String::new(), |s| format!(" (it exited: {s})"));
            self.violations.push(
                Violation::new(INVARIANT, format!("node {id} after \"{what}\": {e}{exit}")).nodes(vec![id]),
            );
        }
        self.steps.push(Fault {
            kind: FaultKind::Upgrade,
            nodes: vec![id],
            start_ms,
            end_ms: self.ms(),
            detail,
            leadership: None,
            misbehaviour: None,
        });
        Ok(())
    }

    /// Waits until `id` answers as follower or leader and has applied what
    /// the leader had committed when `id` first answered.
    async fn wait_caught_up(&self, id: NodeId) -> Result<()> {
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        let mut target = None;
        loop {
            anyhow::ensure!(
                Instant::now() < deadline,
                "not caught up within {CATCH_UP_TIMEOUT:?} (target index {target:?})"
            );
            let status = self.clients.local_status(id, false, Duration::from_secs(1)).await;
            if let Some(status) = status.filter(|s| matches!(role(s), Role::Follower | Role::Leader)) {
                if target.is_none() {
                    target = self.leader_commit().await;
                }
                if let Some(target) = target {
                    if status.applied_index >= target {
                        return Ok(());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The leader's commit index, if a leader answers.
    async fn leader_commit(&self) -> Option<u64> {
        let leader = self.clients.leader().await?;
        let status = self
            .clients
            .local_status(leader, false, Duration::from_secs(1))
            .await?;
        Some(status.commit_index)
    }

    /// `kairos cluster version` as node `id` answers it.
    async fn version(&self, id: NodeId) -> Result<pb::ClusterVersion> {
        let mut request = tonic::Request::new(pb::ClusterVersionRequest {});
        request.set_timeout(Duration::from_secs(5));
        Ok(self.clients.cluster(id).version(request).await?.into_inner())
    }

    /// Records a violation unless node `id` reports cluster version `expected`.
    async fn expect_version(&mut self, id: NodeId, expected: &str, when: &str) {
        match self.version(id).await {
            Ok(v) if v.cluster_version == expected => {
                tracing::info!(node = id, version = %v.cluster_version, members = ?member_versions(&v), "cluster version {when}")
            }
            Ok(v) => self.violations.push(Violation::new(
                INVARIANT,
                format!(
                    "{when}: cluster version {} (members {:?}), expected {expected}",
                    v.cluster_version,
                    member_versions(&v)
                ),
            )),
            Err(e) => self.violations.push(Violation::new(
                INVARIANT,
                format!("{when}: cluster version of node {id}: {e}"),
            )),
        }
    }

    /// Waits until every node reports cluster version `expected`.
    async fn wait_version(&mut self, expected: &str) {
        let deadline = Instant::now() + VERSION_TIMEOUT;
        for id in self.clients.ids() {
            loop {
                let last = match self.version(id).await {
                    Ok(v) if v.cluster_version == expected => break,
                    Ok(v) => format!(
                        "node {id}: {} (members {:?})",
                        v.cluster_version,
                        member_versions(&v)
                    ),
                    Err(e) => format!("node {id}: {e}"),
                };
                if Instant::now() >= deadline {
                    self.violations.push(Violation::new(
                        INVARIANT,
                        format!("every node runs {expected}, but after {VERSION_TIMEOUT:?} the cluster version is {last}"),
                    ));
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        tracing::info!("cluster version {expected} on every node");
    }
}

fn member_versions(v: &pb::ClusterVersion) -> Vec<String> {
    v.members
        .iter()
        .map(|m| match m.version.is_empty() {
            true => format!("{}=? ({})", m.id, m.error),
            false => format!("{}={}", m.id, m.version),
        })
        .collect()
}
