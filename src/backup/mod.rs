//! Backups of a cluster's replicated state, and the two offline ways of
//! seeding a node's data directory from a state: restoring a backup, and
//! forcing a surviving node into a new one-node cluster.
//!
//! - **Save** (`kairos snapshot save FILE`, the client RPC
//!   `ClusterService.SaveSnapshot`, `crate::api::snapshot_save`): the
//!   leader confirms its leadership with a quorum and waits until it has
//!   applied everything committed before the call (the read barrier of a
//!   linearizable read), then takes an image of its state together with
//!   the log id and membership it is at ([`crate::raft::state_machine::StateHandle::read_at`]:
//!   an O(1) copy of persistent maps, consistent because both change only
//!   under the state's write lock). The image is encoded on a blocking
//!   thread straight into 1 MiB chunks of the stream, two in flight at
//!   most, so a large state costs bounded memory beyond the image's shared
//!   maps. The CLI writes `FILE.tmp`, fsyncs it, checks it as `inspect`
//!   does, and renames it over `FILE`. The call needs `cluster:admin` and
//!   is recorded in the audit log with its outcome (after the stream ends,
//!   so a backup does not hold its own record).
//! - **The file** ([`file`]): a format of its own, not the node's
//!   `KSNAP` snapshot file: a magic and format version, a JSON header
//!   (what it is, where it was taken, counts), the state in the encoding of
//!   snapshots (postcard of `StateImage`, whose format version the header
//!   states), its length, and a SHA-256 of everything before it.
//! - **Inspect** (`kairos snapshot inspect FILE`): the header and counts,
//!   after checking the checksum and lengths.
//! - **Restore** ([`restore`], `kairos snapshot restore`): offline, into an
//!   empty data directory: the state becomes the node's stored snapshot at
//!   the backup's log id, with the membership given by `--initial-cluster`,
//!   an empty log starting after it and a vote in the backup's last term.
//!   Run once per node of the new cluster with the same file; the nodes then
//!   start with `kairos agent`, see initialised Raft storage (so they do not
//!   initialise a cluster) and elect a leader among the restored members.
//! - **Force a new cluster** ([`force`], `kairos agent --force-new-cluster`):
//!   on one surviving node's data, replay its whole log, and rewrite its
//!   storage the same way with the membership `{this node}` and a term
//!   above any it has seen.
//!
//! Why the term matters: openraft orders log ids by `(term, node)` and then
//! index, so entries a new leader appends after the snapshot must carry a
//! term not lower than the snapshot's. A stored vote at the snapshot's term
//! makes the first election win the term after it.

pub mod file;
pub mod force;
pub mod restore;

use openraft::{BasicNode, LogId, Membership, StoredMembership};
use std::collections::{BTreeMap, BTreeSet};

use crate::raft::snapshot_file::Meta;
use crate::raft::NodeId;

/// The snapshot meta of a node whose state is taken at `last`, with the
/// membership `members` (id → peer address, every one a voter).
pub(crate) fn meta_with_members(
    last: LogId<NodeId>,
    members: &BTreeMap<NodeId, String>,
    snapshot_id: String,
) -> Meta {
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let nodes: BTreeMap<NodeId, BasicNode> = members
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(addr)))
        .collect();
    Meta {
        last_log_id: Some(last),
        last_membership: StoredMembership::new(Some(last), Membership::new(vec![voters], nodes)),
        snapshot_id,
    }
}
