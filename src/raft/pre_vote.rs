//! Elections with a pre-vote: a node that was paused, cut off or restarted
//! rejoins without unseating a healthy leader.
//!
//! openraft 0.9 starts an election on its own timer: a follower that has
//! not heard from a leader for the leader lease plus a random election
//! timeout raises its term and asks for votes. The other voters refuse
//! while they still hear from the leader (openraft's leader lease), but the
//! higher term is already out: the leader meets it in the rejected
//! `AppendEntries` answers of that node and steps down, and the cluster
//! holds an election it did not need. A follower stopped with SIGSTOP for
//! four seconds and continued deposed a healthy leader that way (term 51 to
//! 53); one that flaps would churn the cluster for as long as it flaps.
//!
//! Kairos therefore turns openraft's own election timer off
//! (`Config::enable_elect = false`) and runs the Raft thesis's pre-vote
//! (§9.6) in front of it, as the task [`stand_when_leader_lost`]:
//!
//! 1. **Wait.** A voter that is not the leader waits until it has heard
//!    nothing from a leader for the same time openraft would have waited
//!    ([`ElectionTiming::quiet_needed`]: the lease plus a random election
//!    timeout once it knew a leader, the election timeout alone otherwise),
//!    counted from its vote's last change or touch (every `AppendEntries`
//!    of the leader touches it), from the node's start, and from its own
//!    last attempt, whichever is latest.
//! 2. **Ask.** It sends `RaftService.PreVote` to every other voter, naming
//!    the term it would stand in and its last log id, and changes nothing.
//!    A voter agrees ([`answer`]) unless it is the leader, it has heard
//!    from a leader within the lease, or its log is longer.
//! 3. **Stand.** With a majority (its own agreement included) it starts a
//!    real election (`Raft::trigger().elect()`); otherwise it waits another
//!    random election timeout and asks again. Its term has not moved, so
//!    when it hears from the leader again it simply follows. In a joint
//!    membership (a change between its two steps) the majority is counted
//!    in each of its configs, as the real election counts it
//!    ([`majority_in_every`]): a pre-vote won over the union of the voters
//!    alone let a node stand again and again in elections it could not
//!    win, refreshing every vote it touched, and so kept the one node that
//!    could win from passing its own pre-vote.
//!
//! The pre-vote is advice only: the real election still needs a higher
//! term, a log at least as long, and the voters' lease, so a wrong answer
//! can cost an election, never safety. That is why a peer that does not
//! know `PreVote` (a 0.1 node during a rolling upgrade answers
//! UNIMPLEMENTED) counts as agreeing: the real vote decides, as before.
//! Peers that do not answer within the minimum election timeout count as
//! refusing. A one-voter cluster stands at once. A stopping leader's
//! handover (`crate::raft::handover`) starts its election directly, with
//! no pre-vote, since the leader itself asked for it; the stopping leader
//! itself no longer stands (the node reports itself a non-voter to this
//! task once its handover began), or it could win back the leadership it
//! is handing over when the target's election fails.
//!
//! The timing is that of openraft, so an unplanned failover takes as long
//! as before (the lease and 250–500 ms by default) plus one round trip.
//!
//! A node that keeps losing its pre-votes (the rest of the cluster is down
//! or cut off) keeps its vote for the last leader, so openraft still names
//! that leader; the task therefore reports the silence
//! ([`ElectionHost::set_leader_silent`]) and `/readyz` turns 503 with it,
//! as it did when the node's own election cleared the leader.

use std::time::Duration;

use openraft::{LogId, ServerState};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::NodeId;

/// The timers of an election, as openraft's configuration sets them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectionTiming {
    /// How long a voter keeps to the leader it heard from last: it refuses
    /// to help unseat it for that long (openraft: `election_timeout_max`).
    pub lease: Duration,
    /// The random election timeout is drawn from `[timeout_min, timeout_max)`.
    pub timeout_min: Duration,
    pub timeout_max: Duration,
}

impl ElectionTiming {
    /// The timing of `config` (a validated openraft configuration).
    pub fn of(config: &openraft::Config) -> ElectionTiming {
        ElectionTiming {
            lease: Duration::from_millis(config.election_timeout_max),
            timeout_min: Duration::from_millis(config.election_timeout_min),
            timeout_max: Duration::from_millis(config.election_timeout_max),
        }
    }

    /// The election timeout `random` (any value, e.g. `rand::random()`)
    /// picks from `[timeout_min, timeout_max)`, to the millisecond.
    pub fn draw(&self, random: u64) -> Duration {
        let span = self.timeout_max.saturating_sub(self.timeout_min).as_millis() as u64;
        if span == 0 {
            return self.timeout_min;
        }
        self.timeout_min + Duration::from_millis(random % span)
    }

    /// How long a voter in `view` must have heard nothing from a leader
    /// before it asks for a pre-vote, given its drawn `timeout`.
    pub fn quiet_needed(&self, view: &ElectionView, timeout: Duration) -> Duration {
        if view.vote_committed {
            self.lease + timeout
        } else {
            timeout
        }
    }
}

/// What a node knows of itself that matters to an election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionView {
    /// Its Raft role.
    pub state: ServerState,
    /// Whether it is a voter.
    pub voter: bool,
    /// The other voters and their peer addresses.
    pub other_voters: Vec<(NodeId, String)>,
    /// The voter sets of its membership: one, or two while the membership
    /// is joint (every decision then needs a majority of each).
    pub configs: Vec<std::collections::BTreeSet<NodeId>>,
    /// The term of its vote.
    pub term: u64,
    /// Its vote is for a leader that won (it knows a leader of that term).
    pub vote_committed: bool,
    /// The leader its committed vote is for.
    pub leader: Option<NodeId>,
    /// Time since its vote last changed or was touched by a leader's
    /// message; `None` if never since the node started.
    pub since_vote_touched: Option<Duration>,
}

/// What the election task does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Look again after this long.
    Wait(Duration),
    /// Ask the other voters for a pre-vote now.
    AskPreVote,
    /// Start an election now, with no pre-vote (the only voter).
    Stand,
}

/// The deterministic core of [`stand_when_leader_lost`]: what a node in
/// `view` does, `quiet` being how long it has heard nothing from a leader
/// (see the module notes) and `timeout` its drawn election timeout.
pub fn next_step(timing: &ElectionTiming, view: &ElectionView, quiet: Duration, timeout: Duration) -> Next {
    if !view.voter || view.state == ServerState::Leader || view.state == ServerState::Shutdown {
        return Next::Wait(timeout);
    }
    if view.other_voters.is_empty() {
        return match view.state {
            ServerState::Candidate => Next::Wait(timeout),
            _ => Next::Stand,
        };
    }
    let needed = timing.quiet_needed(view, timeout);
    if quiet >= needed {
        Next::AskPreVote
    } else {
        Next::Wait(needed - quiet)
    }
}

/// Whether a node in `view` that heard from its leader `heard` ago has
/// lost it: a follower whose vote names a leader that has been silent for
/// longer than the lease and the longest election timeout.
pub fn leader_silent(timing: &ElectionTiming, view: &ElectionView, heard: Duration) -> bool {
    view.voter
        && view.state == ServerState::Follower
        && view.vote_committed
        && heard >= timing.lease + timing.timeout_max
}

/// A pre-vote request: would the receiver vote for `candidate` in `term`?
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    /// The term the candidate would stand in (its own term plus one).
    pub term: u64,
    /// The last log id of the candidate.
    pub last_log_id: Option<LogId<NodeId>>,
}

/// The answer to a [`PreVoteRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteResponse {
    pub granted: bool,
    /// The receiver's own term.
    pub term: u64,
    /// Why it refused (empty when granted), for the candidate's log.
    pub reason: String,
}

/// How node `own_id` in `view`, whose last log id is `own_last_log_id`,
/// answers `request`. Changes nothing: a pre-vote is only a question.
pub fn answer(
    timing: &ElectionTiming,
    own_id: NodeId,
    view: &ElectionView,
    own_last_log_id: Option<&LogId<NodeId>>,
    request: &PreVoteRequest,
) -> PreVoteResponse {
    let refuse = |reason: String| PreVoteResponse {
        granted: false,
        term: view.term,
        reason,
    };
    if view.state == ServerState::Leader {
        return refuse(format!("node {own_id} leads term {}", view.term));
    }
    if request.term <= view.term {
        return refuse(format!(
            "term {} is not above this node's term {}",
            request.term, view.term
        ));
    }
    if view.vote_committed {
        if let Some(heard) = view.since_vote_touched.filter(|&d| d < timing.lease) {
            return refuse(format!(
                "node {own_id} heard from leader {} of term {} {} ms ago",
                view.leader.map_or("?".to_string(), |l| l.to_string()),
                view.term,
                heard.as_millis()
            ));
        }
    }
    if request.last_log_id.as_ref() < own_last_log_id {
        return refuse(format!(
            "the candidate's log ends at {:?}, node {own_id}'s at {:?}",
            request.last_log_id, own_last_log_id
        ));
    }
    PreVoteResponse {
        granted: true,
        term: view.term,
        reason: String::new(),
    }
}

/// What [`stand_when_leader_lost`] needs of the node it runs for.
pub trait ElectionHost: Send + Sync + 'static {
    /// This node's id.
    fn id(&self) -> NodeId;
    /// This node's election view, or `None` once Raft has stopped. A
    /// `since_vote_touched` of `None` is taken as "since the node started".
    fn view(&self) -> impl std::future::Future<Output = Option<ElectionView>> + Send;
    /// This node's last log id.
    fn last_log_id(&self) -> Option<LogId<NodeId>>;
    /// Asks voter `id` at `addr`; `Ok(None)` when the peer does not know
    /// `PreVote` (counted as agreeing, see the module notes).
    fn ask(
        &self,
        id: NodeId,
        addr: &str,
        request: &PreVoteRequest,
        timeout: Duration,
    ) -> impl std::future::Future<Output = crate::error::Result<Option<PreVoteResponse>>> + Send;
    /// Starts a real election.
    fn stand(&self) -> impl std::future::Future<Output = crate::error::Result<()>> + Send;
    /// Counts a pre-vote round: won (`true`, an election follows) or not.
    fn count_round(&self, won: bool);
    /// Whether this node, a voter, has heard nothing from a leader for
    /// longer than its election timeout: its vote still names the old
    /// leader (no term was raised), but that leader is gone for all it
    /// knows, which `/readyz` must say.
    fn set_leader_silent(&self, silent: bool);
}

/// Starts elections for `host` when it has lost its leader, after a won
/// pre-vote (see the module notes). Ends when `stopping` is cancelled or
/// Raft stops.
pub async fn stand_when_leader_lost<H: ElectionHost>(
    host: std::sync::Arc<H>,
    timing: ElectionTiming,
    stopping: CancellationToken,
) {
    let started = Instant::now();
    let mut last_attempt: Option<Instant> = None;
    let mut timeout = timing.draw(rand::random());
    loop {
        let Some(view) = host.view().await else { return };
        let now = Instant::now();
        let since_start = now - started;
        // Since a leader was last heard (or the node started), and since
        // this node's own last attempt, whichever is shorter.
        let heard = view.since_vote_touched.unwrap_or(since_start).min(since_start);
        let quiet = last_attempt.map_or(heard, |at| heard.min(now - at));
        host.set_leader_silent(leader_silent(&timing, &view, heard));
        let wait = match next_step(&timing, &view, quiet, timeout) {
            Next::Wait(wait) => wait,
            Next::Stand => {
                last_attempt = Some(now);
                timeout = timing.draw(rand::random());
                if let Err(e) = host.stand().await {
                    tracing::info!(node = host.id(), "start an election: {e}");
                }
                timeout
            }
            Next::AskPreVote => {
                last_attempt = Some(now);
                timeout = timing.draw(rand::random());
                let won = pre_vote_round(host.as_ref(), &timing, &view).await;
                host.count_round(won);
                if won {
                    if let Err(e) = host.stand().await {
                        tracing::info!(node = host.id(), "start an election: {e}");
                    }
                }
                timeout
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopping.cancelled() => return,
        }
    }
}

/// Asks every other voter; `true` once a majority of voters (this node
/// included) agrees, `false` when that can no longer happen or the askers
/// time out.
async fn pre_vote_round<H: ElectionHost>(host: &H, timing: &ElectionTiming, view: &ElectionView) -> bool {
    use futures::stream::{FuturesUnordered, StreamExt};
    let request = PreVoteRequest {
        candidate: host.id(),
        term: view.term + 1,
        last_log_id: host.last_log_id(),
    };
    let voters = view.other_voters.len() + 1;
    let mut agreed = std::collections::BTreeSet::from([host.id()]);
    let mut refusals = Vec::new();
    let mut asks: FuturesUnordered<_> = view
        .other_voters
        .iter()
        .map(|(id, addr)| {
            let request = &request;
            async move { (*id, host.ask(*id, addr, request, timing.timeout_min).await) }
        })
        .collect();
    while !majority_in_every(&view.configs, &agreed) {
        let Some((id, outcome)) = asks.next().await else {
            break;
        };
        match outcome {
            Ok(None) => {
                agreed.insert(id);
            }
            Ok(Some(response)) if response.granted => {
                agreed.insert(id);
            }
            Ok(Some(response)) => refusals.push(format!("node {id}: {}", response.reason)),
            Err(e) => refusals.push(format!("node {id}: {e}")),
        }
    }
    if majority_in_every(&view.configs, &agreed) {
        tracing::info!(
            node = host.id(),
            term = request.term,
            agreed = agreed.len(),
            voters,
            "pre-vote won: standing for election"
        );
        true
    } else {
        tracing::debug!(node = host.id(), term = request.term, ?refusals, "pre-vote lost");
        false
    }
}

/// Whether `agreed` holds a majority of every voter set in `configs` (of
/// the one set of a uniform membership, of both of a joint one). No
/// configs at all is no majority.
pub fn majority_in_every(
    configs: &[std::collections::BTreeSet<NodeId>],
    agreed: &std::collections::BTreeSet<NodeId>,
) -> bool {
    !configs.is_empty()
        && configs
            .iter()
            .all(|config| config.intersection(agreed).count() > config.len() / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn timing() -> ElectionTiming {
        ElectionTiming {
            lease: Duration::from_millis(500),
            timeout_min: Duration::from_millis(250),
            timeout_max: Duration::from_millis(500),
        }
    }

    fn follower(since_ms: Option<u64>) -> ElectionView {
        ElectionView {
            state: ServerState::Follower,
            voter: true,
            other_voters: vec![(2, "b".into()), (3, "c".into())],
            configs: vec![[1, 2, 3].into()],
            term: 7,
            vote_committed: true,
            leader: Some(2),
            since_vote_touched: since_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn a_joint_membership_needs_a_majority_of_each_config() {
        let uniform = vec![[1, 2, 3].into()];
        assert!(majority_in_every(&uniform, &[1, 2].into()));
        assert!(!majority_in_every(&uniform, &[1].into()));
        // Node 1 added back while {2, 3} voted, cut between the two steps.
        let joint = vec![[2, 3].into(), [1, 2, 3].into()];
        assert!(
            !majority_in_every(&joint, &[1, 2].into()),
            "2 of 3 overall, 1 of the old pair"
        );
        assert!(majority_in_every(&joint, &[2, 3].into()));
        assert!(majority_in_every(&joint, &[1, 2, 3].into()));
        assert!(!majority_in_every(&[], &[1].into()));
    }

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn ask(term: u64, last: Option<LogId<NodeId>>) -> PreVoteRequest {
        PreVoteRequest {
            candidate: 3,
            term,
            last_log_id: last,
        }
    }

    #[test]
    fn a_follower_asks_only_after_the_lease_and_its_timeout() {
        let t = timing();
        let timeout = Duration::from_millis(300);
        let view = follower(Some(0));
        assert_eq!(
            next_step(&t, &view, Duration::from_millis(700), timeout),
            Next::Wait(Duration::from_millis(100))
        );
        assert_eq!(
            next_step(&t, &view, Duration::from_millis(800), timeout),
            Next::AskPreVote
        );
        // Without a leader it knew of (an uncommitted vote), the timeout alone.
        let candidate = ElectionView {
            state: ServerState::Candidate,
            vote_committed: false,
            ..view
        };
        assert_eq!(
            next_step(&t, &candidate, Duration::from_millis(300), timeout),
            Next::AskPreVote
        );
    }

    #[test]
    fn timeouts_are_drawn_from_the_range() {
        let t = timing();
        assert_eq!(t.draw(0), Duration::from_millis(250));
        assert_eq!(t.draw(249), Duration::from_millis(499));
        assert_eq!(t.draw(250), Duration::from_millis(250));
    }

    #[test]
    fn leaders_learners_and_lone_voters() {
        let t = timing();
        let timeout = Duration::from_millis(300);
        let long = Duration::from_secs(10);
        let leader = ElectionView {
            state: ServerState::Leader,
            ..follower(None)
        };
        assert_eq!(next_step(&t, &leader, long, timeout), Next::Wait(timeout));
        let learner = ElectionView {
            voter: false,
            state: ServerState::Learner,
            ..follower(None)
        };
        assert_eq!(next_step(&t, &learner, long, timeout), Next::Wait(timeout));
        let alone = ElectionView {
            other_voters: vec![],
            ..follower(None)
        };
        assert_eq!(next_step(&t, &alone, Duration::ZERO, timeout), Next::Stand);
        let standing = ElectionView {
            state: ServerState::Candidate,
            ..alone
        };
        assert_eq!(next_step(&t, &standing, long, timeout), Next::Wait(timeout));
    }

    #[test]
    fn a_follower_whose_leader_is_silent_past_the_longest_wait_has_lost_it() {
        let t = timing();
        let view = follower(Some(0));
        assert!(!leader_silent(&t, &view, Duration::from_millis(999)));
        assert!(leader_silent(&t, &view, Duration::from_millis(1_000)));
        let leader = ElectionView {
            state: ServerState::Leader,
            ..follower(None)
        };
        assert!(!leader_silent(&t, &leader, Duration::from_secs(10)));
    }

    #[test]
    fn a_voter_that_hears_its_leader_refuses() {
        let t = timing();
        let view = follower(Some(120));
        let answer = answer(&t, 1, &view, Some(&log_id(7, 40)), &ask(8, Some(log_id(7, 40))));
        assert!(!answer.granted);
        assert!(
            answer.reason.contains("heard from leader 2 of term 7 120 ms ago"),
            "{}",
            answer.reason
        );
    }

    #[test]
    fn a_voter_whose_leader_went_quiet_agrees_to_an_up_to_date_candidate() {
        let t = timing();
        let view = follower(Some(600));
        let yes = answer(&t, 1, &view, Some(&log_id(7, 40)), &ask(8, Some(log_id(7, 40))));
        assert!(yes.granted, "{}", yes.reason);
        assert_eq!(yes.term, 7);
        // A candidate with a shorter log, or one of an older term, is refused.
        let behind = answer(&t, 1, &view, Some(&log_id(7, 40)), &ask(8, Some(log_id(7, 39))));
        assert!(
            !behind.granted && behind.reason.contains("log ends at"),
            "{}",
            behind.reason
        );
        let older = answer(&t, 1, &view, Some(&log_id(7, 40)), &ask(7, Some(log_id(7, 40))));
        assert!(
            !older.granted && older.reason.contains("not above"),
            "{}",
            older.reason
        );
        // Never having heard from a leader since its start is no lease.
        let fresh = ElectionView {
            vote_committed: false,
            ..follower(None)
        };
        assert!(answer(&t, 1, &fresh, None, &ask(8, None)).granted);
    }

    #[test]
    fn the_leader_refuses() {
        let leader = ElectionView {
            state: ServerState::Leader,
            ..follower(Some(5_000))
        };
        let answer = answer(&timing(), 1, &leader, None, &ask(8, None));
        assert!(!answer.granted && answer.reason.contains("leads term 7"));
    }
}
