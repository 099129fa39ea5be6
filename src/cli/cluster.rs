//! `kairos cluster status|version|add-node|remove-node`.

use super::client::{fail, Client, ClientArgs};
use super::output;
use crate::proto as pb;
use crate::proto::cluster_service_client::ClusterServiceClient;

/// `kairos cluster`.
#[derive(clap::Args, Debug)]
pub struct ClusterCommand {
    #[command(subcommand)]
    action: ClusterAction,
}

#[derive(clap::Subcommand, Debug)]
enum ClusterAction {
    /// Every member's role, term and log indexes.
    Status,
    /// The cluster version (what every member supports, as the cluster
    /// recorded it) and the version each member advertises.
    Version,
    /// Add a running node (started without --initial-cluster): learner, then voter.
    AddNode {
        /// The new node's --node-id.
        #[arg(long)]
        node_id: u64,
        /// The new node's peer address (its --peer-addr), e.g. 10.0.0.4:7401.
        #[arg(long)]
        addr: String,
    },
    /// Remove a node from the cluster.
    RemoveNode {
        /// The node's id.
        #[arg(long)]
        node_id: u64,
    },
}

fn print_status(status: &pb::ClusterStatus) {
    let leader = if status.leader_id == 0 {
        "none".to_string()
    } else {
        status.leader_id.to_string()
    };
    output::outln!(
        "leader: {leader}   term: {}   cluster version: {}   (answered by node {})",
        status.term,
        status.cluster_version,
        status.answered_by
    );
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|n| {
            let role = pb::NodeRole::try_from(n.role)
                .map(|r| r.as_str_name().trim_start_matches("NODE_ROLE_").to_lowercase())
                .unwrap_or_default();
            let unreachable = n.role == pb::NodeRole::Unreachable as i32;
            let num = |v: u64| {
                if unreachable {
                    "-".to_string()
                } else {
                    v.to_string()
                }
            };
            vec![
                n.id.to_string(),
                if n.grpc_addr.is_empty() {
                    "?".to_string()
                } else {
                    n.grpc_addr.clone()
                },
                n.peer_addr.clone(),
                role,
                if n.voter { "voter" } else { "learner" }.to_string(),
                num(n.term),
                num(n.commit_index),
                num(n.applied_index),
                num(n.last_log_index),
                num(n.snapshot_index),
                if unreachable {
                    "-".into()
                } else if n.auth_disabled {
                    "OFF".into()
                } else {
                    "on".into()
                },
            ]
        })
        .collect();
    output::table(
        &[
            "ID",
            "ADDRESS",
            "PEER ADDRESS",
            "ROLE",
            "MEMBER",
            "TERM",
            "COMMIT",
            "APPLIED",
            "LAST LOG",
            "SNAPSHOT",
            "AUTH",
        ],
        &rows,
    );
    if let [old, new] = status.voter_sets.as_slice() {
        let ids = |set: &pb::VoterSet| {
            let ids: Vec<String> = set.ids.iter().map(u64::to_string).collect();
            format!("{{{}}}", ids.join(", "))
        };
        output::outln!(
            "membership: joint {} -> {} (a change between its two steps: elections and commits need a majority of each; \
             the leader finishes a joint membership that stands for 2 s)",
            ids(old),
            ids(new)
        );
    }
    let insecure: Vec<String> = status
        .nodes
        .iter()
        .filter(|n| n.auth_disabled)
        .map(|n| n.id.to_string())
        .collect();
    if !insecure.is_empty() {
        output::outln!(
            "warning: node(s) {} run with --insecure-disable-auth: anyone who reaches them may do anything",
            insecure.join(", ")
        );
    }
}

fn print_version(version: &pb::ClusterVersion) {
    output::outln!(
        "cluster version: {}   (answered by node {})",
        version.cluster_version,
        version.answered_by
    );
    let rows: Vec<Vec<String>> = version
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                if m.voter { "voter" } else { "learner" }.to_string(),
                if m.version.is_empty() {
                    "?".to_string()
                } else {
                    m.version.clone()
                },
                m.error.clone(),
            ]
        })
        .collect();
    output::table(&["ID", "MEMBER", "VERSION", "ERROR"], &rows);
}

/// Runs a `kairos cluster` command.
pub async fn run(cmd: ClusterCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(args)?;
    let status = match cmd.action {
        ClusterAction::Version => {
            let version = client
                .send(&pb::ClusterVersionRequest::default(), |ch, r| async move {
                    ClusterServiceClient::new(ch).version(r).await
                })
                .await
                .map_err(fail)?;
            return output::print(args.output, &version, print_version);
        }
        ClusterAction::Status => {
            client
                .send(&pb::ClusterStatusRequest::default(), |ch, r| async move {
                    ClusterServiceClient::new(ch).status(r).await
                })
                .await
        }
        ClusterAction::AddNode { node_id, addr } => {
            let req = pb::AddNodeRequest {
                node_id,
                peer_addr: addr,
            };
            client
                .send(&req, |ch, r| async move {
                    ClusterServiceClient::new(ch).add_node(r).await
                })
                .await
        }
        ClusterAction::RemoveNode { node_id } => {
            client
                .send(&pb::RemoveNodeRequest { node_id }, |ch, r| async move {
                    ClusterServiceClient::new(ch).remove_node(r).await
                })
                .await
        }
    }
    .map_err(fail)?;
    output::print(args.output, &status, print_status)
}
