//! The cluster version: what every member of a cluster supports, so that
//! nodes of two releases can run side by side during a rolling upgrade.
//!
//! A node's own [`Version`] is the major.minor of its build
//! (`CARGO_PKG_VERSION`; patch releases change no format). The *cluster
//! version* is the lowest version among the cluster's members — voters
//! and learners both, since a learner applies the same log and could be
//! promoted — as etcd does it. It is recorded in the replicated state by
//! the command `SetClusterVersion`, and only what the recorded cluster
//! version allows is used: a [`Feature`] names the version it needs, and
//! node code asks [`ClusterVersion::supports`] (a `watch` channel fed by
//! the state machine, so asking costs a load).
//!
//! How it moves ([`maintain`]): the leader, when it becomes leader, when
//! the membership changes and every [`CHECK_INTERVAL`], asks every member
//! its version over the peer RPC `RaftService.NodeVersion`. A member from
//! before cluster versions (0.1) answers that RPC `UNIMPLEMENTED` and
//! counts as 0.1; a member that does not answer at all leaves the version
//! where it is (nothing is known of it). When the lowest answer is above
//! the recorded version the leader proposes `SetClusterVersion`. Nodes of
//! 0.1 cannot decode that command, which is why it is only proposed once
//! every member answered a higher version. The cluster version never goes
//! down.
//!
//! Compatibility with 0.1 while the cluster version is 0.1: every message
//! and stored value keeps the encoding 0.1 reads (format version 6,
//! [`crate::codec`]); the new command is a variant at the end of
//! `Command`, written only as above. The recorded version is kept in the
//! snapshot *after* the state image, as a [`SnapshotTrailer`], and only
//! once it is above 0.1: a snapshot of a cluster at 0.1 is byte for byte
//! what 0.1 writes (and 0.1 ignores bytes after the image anyway).
//!
//! A node too old for the recorded cluster version refuses to run with a
//! message naming both versions ([`too_old`]): at start if its own
//! snapshot says so, and when it applies a `SetClusterVersion` or installs
//! a snapshot above its own version — it then stops before applying it
//! (see `raft::state_machine`), so nothing is half applied.
//!
//! For tests only, a build with the `test-handlers` feature advertises the
//! version in the environment variable `KAIROS_TEST_ADVERTISE_VERSION`
//! (e.g. `0.3`) instead of its own, which is how refusal is tested without
//! a newer build.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A release line: major.minor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
}

impl Version {
    /// A version.
    pub const fn new(major: u16, minor: u16) -> Version {
        Version { major, minor }
    }

    /// The version of builds from before cluster versions: what a member that
    /// answers `NodeVersion` with `UNIMPLEMENTED` runs, and the cluster
    /// version of a cluster that never recorded one.
    pub const OLDEST: Version = Version::new(0, 1);

    /// Parses `MAJOR.MINOR` or `MAJOR.MINOR.PATCH[-PRE][+BUILD]` (all but
    /// major and minor ignored).
    pub fn parse(text: &str) -> Option<Version> {
        // A pre-release or build suffix (`-rc.1`, `+abc`) names no other line.
        let core = text.trim().split(['-', '+']).next()?;
        let mut parts = core.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        if let Some(patch) = parts.next() {
            patch.parse::<u32>().ok()?;
        }
        parts.next().is_none().then_some(Version { major, minor })
    }
}

/// [`Version::OLDEST`]: the cluster version of a cluster that never recorded one.
impl Default for Version {
    fn default() -> Self {
        Version::OLDEST
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// This build's version: major.minor of `CARGO_PKG_VERSION`.
pub fn build_version() -> Version {
    Version::parse(env!("CARGO_PKG_VERSION")).expect("the package version is MAJOR.MINOR.PATCH")
}

/// The version this node advertises and supports: [`build_version`], or in
/// a `test-handlers` build the one in `KAIROS_TEST_ADVERTISE_VERSION`.
pub fn own() -> Version {
    #[cfg(feature = "test-handlers")]
    {
        static OVERRIDE: std::sync::OnceLock<Option<Version>> = std::sync::OnceLock::new();
        let advertised = OVERRIDE.get_or_init(|| {
            std::env::var("KAIROS_TEST_ADVERTISE_VERSION")
                .ok()
                .and_then(|v| Version::parse(&v))
        });
        if let Some(version) = advertised {
            return *version;
        }
    }
    build_version()
}

/// Something new that may be used only once every member supports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// A stopping leader asks an up-to-date follower to start an election
    /// at once (a peer RPC 0.1 does not serve).
    LeadershipTransfer,
}

impl Feature {
    /// The cluster version the feature needs.
    pub const fn since(self) -> Version {
        match self {
            Feature::LeadershipTransfer => Version::new(0, 2),
        }
    }
}

/// The message of a node that is too old for its cluster.
pub fn too_old(own: Version, cluster: Version) -> String {
    format!(
        "this node runs Kairos {own} but the cluster version is {cluster}: a node older than \
         its cluster's version cannot join it (the cluster already uses what {cluster} added); \
         run Kairos {cluster} or newer on this data directory"
    )
}

/// The recorded cluster version as this node applied it, and the refusal
/// to run when it is above this node's own version. Shared by the state
/// machine (which feeds it) and the node (which reads it); cheap to clone.
#[derive(Clone)]
pub struct ClusterVersion {
    applied: Arc<watch::Sender<Version>>,
    refusal: Arc<Mutex<Option<String>>>,
    refused: CancellationToken,
}

impl Default for ClusterVersion {
    fn default() -> Self {
        ClusterVersion {
            applied: Arc::new(watch::channel(Version::OLDEST).0),
            refusal: Arc::default(),
            refused: CancellationToken::new(),
        }
    }
}

impl ClusterVersion {
    /// The recorded cluster version this node has applied.
    pub fn current(&self) -> Version {
        *self.applied.borrow()
    }

    /// Whether the cluster version allows `feature`.
    pub fn supports(&self, feature: Feature) -> bool {
        self.current() >= feature.since()
    }

    /// The applied cluster version, changing as it is applied.
    pub fn subscribe(&self) -> watch::Receiver<Version> {
        self.applied.subscribe()
    }

    /// Records `version` as applied (the state machine's call).
    pub(crate) fn set_applied(&self, version: Version) {
        self.applied.send_if_modified(|applied| {
            let changed = *applied != version;
            *applied = version;
            changed
        });
    }

    /// Checks `cluster` against this node's own version: an error naming
    /// both (and the node told to stop) when it is too old.
    pub(crate) fn check(&self, cluster: Version) -> Result<(), String> {
        let own = own();
        if cluster <= own {
            return Ok(());
        }
        let message = too_old(own, cluster);
        tracing::error!("{message}");
        self.refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| message.clone());
        self.refused.cancel();
        Err(message)
    }

    /// Why this node refused to go on, if it did.
    pub fn refusal(&self) -> Option<String> {
        self.refusal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Cancelled when this node refuses to go on (see [`ClusterVersion::refusal`]).
    pub fn refused(&self) -> CancellationToken {
        self.refused.clone()
    }
}

/// The recorded cluster version in a snapshot, after the state image: the
/// marker `KCV`, a trailer version byte (1), then major and minor as u16
/// little-endian. Absent (nothing after the image) means [`Version::OLDEST`].
pub struct SnapshotTrailer;

impl SnapshotTrailer {
    const MARKER: [u8; 4] = [b'K', b'C', b'V', 1];
    /// Length of the trailer.
    pub const LEN: usize = 8;

    /// The trailer that records `version`: empty for [`Version::OLDEST`], so
    /// that such snapshots stay what 0.1 writes.
    pub fn encode(version: Version) -> Vec<u8> {
        if version <= Version::OLDEST {
            return Vec::new();
        }
        let mut bytes = Self::MARKER.to_vec();
        bytes.extend_from_slice(&version.major.to_le_bytes());
        bytes.extend_from_slice(&version.minor.to_le_bytes());
        bytes
    }

    /// The version recorded by the bytes after a snapshot's image.
    pub fn decode(rest: &[u8]) -> Result<Version, String> {
        if rest.is_empty() {
            return Ok(Version::OLDEST);
        }
        match rest {
            [m0, m1, m2, m3, a0, a1, i0, i1, ..] if [*m0, *m1, *m2, *m3] == Self::MARKER => Ok(Version {
                major: u16::from_le_bytes([*a0, *a1]),
                minor: u16::from_le_bytes([*i0, *i1]),
            }),
            _ => Err(format!(
                "{} unknown bytes after the snapshot's state (not a cluster version record)",
                rest.len()
            )),
        }
    }
}

/// How often the leader asks every member its version.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(3);
/// How long one member may take to answer.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// What each member answered, by node id: its version, or why it is unknown.
pub type MemberVersions = std::collections::BTreeMap<u64, Result<Version, String>>;

/// The cluster version the members' answers allow: the lowest of them, or
/// `None` when a member's version is unknown.
pub fn lowest(members: &MemberVersions) -> Option<Version> {
    members
        .values()
        .map(|v| v.as_ref().ok().copied())
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .min()
}

/// The leader's task: asks the members' versions when this node becomes
/// leader, when the membership changes and every [`CHECK_INTERVAL`], and
/// proposes `SetClusterVersion` when the lowest is above the recorded one.
pub async fn maintain(node: Arc<crate::node::Node>, stopping: CancellationToken) {
    let mut metrics = node.raft.metrics();
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = (None, None);
    loop {
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = tick.tick() => {}
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                let m = metrics.borrow_and_update();
                let now = (m.current_leader, m.membership_config.log_id().map(|id| id.index));
                if now == seen {
                    continue;
                }
                seen = now;
            }
        }
        if node.raft.metrics().borrow().current_leader != Some(node.id) {
            continue;
        }
        let recorded = node.cluster_version().current();
        let members = node.member_versions().await;
        let Some(lowest) = lowest(&members) else {
            continue;
        };
        if lowest <= recorded {
            continue;
        }
        let command = crate::scheduler::Command::SetClusterVersion { version: lowest };
        match node.propose_local(PRINCIPAL, command).await {
            Ok(_) => tracing::info!(from = %recorded, to = %lowest, "cluster version raised"),
            Err(e) => tracing::warn!(to = %lowest, "raising the cluster version failed: {e}"),
        }
    }
}

/// Who proposes `SetClusterVersion`, as audit entries name it.
const PRINCIPAL: &str = "kairos-cluster-version";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_compare_and_print() {
        assert_eq!(Version::parse("0.2.0"), Some(Version::new(0, 2)));
        assert_eq!(Version::parse("1.10"), Some(Version::new(1, 10)));
        assert_eq!(Version::parse("0.3.1-rc.1"), Some(Version::new(0, 3)));
        assert_eq!(Version::parse("0"), None);
        assert_eq!(Version::parse("0.x"), None);
        assert_eq!(Version::parse("0.1.0.0"), None);
        assert!(Version::new(0, 10) > Version::new(0, 9));
        assert!(Version::new(1, 0) > Version::new(0, 99));
        assert_eq!(Version::new(0, 2).to_string(), "0.2");
        assert_eq!(build_version().to_string(), {
            let v = env!("CARGO_PKG_VERSION");
            v.rsplit_once('.').unwrap().0.to_string()
        });
    }

    #[test]
    fn the_cluster_version_is_the_lowest_member_and_unknown_with_any_member_unknown() {
        let mut members = MemberVersions::new();
        members.insert(1, Ok(Version::new(0, 2)));
        members.insert(2, Ok(Version::OLDEST));
        members.insert(3, Ok(Version::new(0, 3)));
        assert_eq!(lowest(&members), Some(Version::OLDEST));
        members.insert(2, Ok(Version::new(0, 2)));
        assert_eq!(lowest(&members), Some(Version::new(0, 2)));
        members.insert(4, Err("unreachable".into()));
        assert_eq!(lowest(&members), None);
    }

    #[test]
    fn features_are_gated_by_the_applied_version_and_too_new_a_version_is_refused() {
        let cluster = ClusterVersion::default();
        assert!(!cluster.supports(Feature::LeadershipTransfer));
        assert!(cluster.check(own()).is_ok());
        cluster.set_applied(Version::new(0, 2));
        assert!(cluster.supports(Feature::LeadershipTransfer));
        assert!(cluster.refusal().is_none() && !cluster.refused().is_cancelled());

        let newer = Version::new(own().major, own().minor + 1);
        let err = cluster.check(newer).unwrap_err();
        assert!(
            err.contains(&format!("runs Kairos {}", own()))
                && err.contains(&format!("cluster version is {newer}")),
            "{err}"
        );
        assert_eq!(cluster.refusal(), Some(err));
        assert!(cluster.refused().is_cancelled());
    }

    #[test]
    fn the_snapshot_trailer_is_empty_at_the_oldest_version_and_round_trips() {
        assert!(SnapshotTrailer::encode(Version::OLDEST).is_empty());
        assert_eq!(SnapshotTrailer::decode(&[]).unwrap(), Version::OLDEST);
        let bytes = SnapshotTrailer::encode(Version::new(0, 2));
        assert_eq!(bytes.len(), SnapshotTrailer::LEN);
        assert_eq!(SnapshotTrailer::decode(&bytes).unwrap(), Version::new(0, 2));
        assert!(SnapshotTrailer::decode(&[1, 2, 3]).is_err());
    }
}
