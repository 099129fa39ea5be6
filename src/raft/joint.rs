//! Leaving a joint membership that a leader inherited.
//!
//! openraft changes the membership in two steps: from the old voters to a
//! joint configuration of old and new, then, once that is committed, to
//! the new voters alone. Both steps are driven by the one
//! `change_membership` call on the leader that was asked (`AddNode`,
//! `RemoveNode`). If that leader dies between the steps, the joint
//! configuration is committed and stays: openraft 0.9's next leader does
//! not finish it. Every election and every commit then needs a majority
//! of both configurations. The cluster still works, but it tolerates fewer
//! failures than its voter count says (after node 1 was added back to
//! {2, 3}, losing node 3 stops the cluster), and an `AddNode` asked again
//! sees node 1 among the voters already and does nothing. A chaos round
//! found a cluster in that state after a node was lost for good.
//!
//! So the leader finishes what it inherited: [`JointWatch`] tells when this
//! node has led with the same joint configuration for [`JOINT_GRACE`]
//! (long past the few milliseconds a live change takes between its steps,
//! so it does not race the leader's own second step), and
//! [`finish_inherited_joint_configs`] then asks openraft for the second
//! configuration of the pair, which openraft reaches in one step from the
//! joint one. The target is the configuration the interrupted change was
//! heading to; removed voters are not kept as learners, as `RemoveNode`
//! does not keep them.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::{ChangeMembers, LogId, ServerState};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{NodeId, Raft};

/// How long a leader lets a joint configuration stand before it finishes
/// it itself.
pub const JOINT_GRACE: Duration = Duration::from_secs(2);

/// How often the leader looks again while a joint configuration stands.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// What this node has seen of a joint configuration while leading.
#[derive(Debug, Default)]
pub struct JointWatch {
    /// The joint configuration's log id, and since when this node has led
    /// with it.
    seen: Option<(Option<LogId<NodeId>>, Instant)>,
}

impl JointWatch {
    /// Given whether this node leads and its effective membership (`configs`
    /// stored at `log_id`) at `now`: the voters to change to, once it has
    /// led with the same joint configuration for `grace`. Anything else
    /// (not leading, a uniform membership, another joint one) starts the
    /// count again.
    pub fn observe(
        &mut self,
        leading: bool,
        log_id: Option<LogId<NodeId>>,
        configs: &[BTreeSet<NodeId>],
        now: Instant,
        grace: Duration,
    ) -> Option<BTreeSet<NodeId>> {
        if !leading || configs.len() < 2 {
            self.seen = None;
            return None;
        }
        let since = match self.seen {
            Some((seen, since)) if seen == log_id => since,
            _ => {
                self.seen = Some((log_id, now));
                now
            }
        };
        (now.duration_since(since) >= grace).then(|| configs.last().cloned().unwrap_or_default())
    }
}

/// While this node leads, finishes a joint membership that stands for
/// [`JOINT_GRACE`] (see the module notes). Ends when `stopping` is
/// cancelled or Raft stops.
pub async fn finish_inherited_joint_configs(raft: Raft, id: NodeId, stopping: CancellationToken) {
    let mut metrics = raft.metrics();
    let mut watch = JointWatch::default();
    loop {
        let target = {
            let m = metrics.borrow_and_update();
            let membership = m.membership_config.membership();
            watch.observe(
                m.state == ServerState::Leader,
                *m.membership_config.log_id(),
                membership.get_joint_config(),
                Instant::now(),
                JOINT_GRACE,
            )
        };
        if let Some(voters) = target {
            tracing::warn!(
                node = id,
                ?voters,
                "the membership stayed joint (a change whose leader died between its two \
                 steps): finishing it"
            );
            match raft
                .change_membership(ChangeMembers::ReplaceAllVoters(voters), false)
                .await
            {
                Ok(_) => tracing::info!(node = id, "joint membership finished"),
                Err(e) => tracing::warn!(node = id, "finishing the joint membership: {e}"),
            }
            watch = JointWatch::default();
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            _ = stopping.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn at(index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(3, 3), index))
    }

    #[test]
    fn a_leader_finishes_a_joint_configuration_after_the_grace_and_only_then() {
        let grace = Duration::from_secs(2);
        let start = Instant::now();
        let joint: Vec<BTreeSet<NodeId>> = vec![[2, 3].into(), [1, 2, 3].into()];
        let mut watch = JointWatch::default();
        assert_eq!(watch.observe(true, at(3805), &joint, start, grace), None);
        let early = start + Duration::from_millis(1_999);
        assert_eq!(watch.observe(true, at(3805), &joint, early, grace), None);
        let due = start + grace;
        assert_eq!(
            watch.observe(true, at(3805), &joint, due, grace),
            Some([1, 2, 3].into()),
            "heads for the second configuration"
        );
    }

    #[test]
    fn the_count_starts_again_off_the_lead_or_for_another_configuration() {
        let grace = Duration::from_secs(2);
        let start = Instant::now();
        let joint: Vec<BTreeSet<NodeId>> = vec![[1, 2, 3].into(), [2, 3].into()];
        let uniform: Vec<BTreeSet<NodeId>> = vec![[2, 3].into()];
        let mut watch = JointWatch::default();
        watch.observe(true, at(10), &joint, start, grace);
        // Not leading for a while: the count starts again when it leads.
        assert_eq!(watch.observe(false, at(10), &joint, start + grace, grace), None);
        assert_eq!(watch.observe(true, at(10), &joint, start + grace, grace), None);
        // Another joint configuration starts its own count.
        let later = start + grace * 2;
        assert_eq!(watch.observe(true, at(11), &joint, later, grace), None);
        assert_eq!(
            watch.observe(true, at(11), &joint, later + grace, grace),
            Some([2, 3].into()),
            "a removal cut short ends without the removed voter"
        );
        // A uniform membership needs nothing.
        assert_eq!(
            watch.observe(true, at(12), &uniform, later + grace * 3, grace),
            None
        );
    }
}
