//! `kairos worker list`: the external workers connected to the cluster.
//!
//! A worker registers with one node and polls that node, so no single node
//! knows every worker: `ListWorkers` asks every reachable node and names the
//! ones that did not answer (`unreachable_nodes`). Their workers are missing
//! from the list, and the table says so in a footer line rather than let an
//! unreachable node pass for a node without workers.
//!
//! LAST SEEN is the worker's last poll or heartbeat as an age on the local
//! clock ([`output::age`]); a worker silent for three heartbeat intervals is
//! dropped by its node, so a large age here means it is about to go.
//!
//! Turning the response into text is pure ([`worker_rows`],
//! [`unreachable_footer`]), with the time passed in, so that it can be
//! tested without a cluster or a clock.

use chrono::{DateTime, Utc};

use super::client::{fail, Client, ClientArgs};
use super::output;
use crate::proto as pb;
use crate::proto::worker_service_client::WorkerServiceClient;

/// `kairos worker`.
#[derive(clap::Args, Debug)]
pub struct WorkerCommand {
    #[command(subcommand)]
    action: WorkerAction,
}

#[derive(clap::Subcommand, Debug)]
enum WorkerAction {
    /// The external workers connected to every reachable node.
    List,
}

/// The columns of `kairos worker list`.
pub const WORKER_COLUMNS: [&str; 8] = [
    "WORKER",
    "NAME",
    "NODE",
    "TYPES",
    "CAPACITY",
    "IN FLIGHT",
    "LAST SEEN",
    "PRINCIPAL",
];

/// Runs a `kairos worker` command.
pub async fn run(cmd: WorkerCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(args)?;
    match cmd.action {
        WorkerAction::List => {
            let list = client
                .send(&pb::ListWorkersRequest {}, |ch, r| async move {
                    WorkerServiceClient::new(ch).list_workers(r).await
                })
                .await
                .map_err(fail)?;
            output::print(args.output, &list, |l| {
                output::table(&WORKER_COLUMNS, &worker_rows(l, Utc::now()));
                if let Some(footer) = unreachable_footer(l) {
                    output::outln!("{footer}");
                }
            })
        }
    }
}

/// The rows of `kairos worker list`, in [`WORKER_COLUMNS`] order, with
/// LAST SEEN as an age at `now`.
pub fn worker_rows(list: &pb::ListWorkersResponse, now: DateTime<Utc>) -> Vec<Vec<String>> {
    let or_dash = |text: &str| {
        if text.is_empty() {
            "-".to_string()
        } else {
            text.to_string()
        }
    };
    list.workers
        .iter()
        .map(|w| {
            vec![
                w.worker_id.clone(),
                or_dash(&w.worker_name),
                w.node_id.to_string(),
                or_dash(&w.job_types.join(",")),
                w.capacity.to_string(),
                w.in_flight.to_string(),
                output::age(&w.last_seen, now),
                or_dash(&w.principal),
            ]
        })
        .collect()
}

/// The line under the table naming the nodes that did not answer, if any.
pub fn unreachable_footer(list: &pb::ListWorkersResponse) -> Option<String> {
    if list.unreachable_nodes.is_empty() {
        return None;
    }
    let nodes: Vec<String> = list.unreachable_nodes.iter().map(u64::to_string).collect();
    let (noun, their) = if nodes.len() == 1 {
        ("node", "its")
    } else {
        ("nodes", "their")
    };
    Some(format!(
        "unreachable {noun}: {} ({their} workers are not listed)",
        nodes.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::convert::ms_timestamp;

    const NOW_MS: i64 = 1_800_000_000_000;

    fn now() -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_millis(NOW_MS).expect("in range")
    }

    fn worker(id: &str, node_id: u64, types: &[&str], last_seen_ms_ago: i64) -> pb::Worker {
        pb::Worker {
            worker_id: id.into(),
            worker_name: format!("host-a/{node_id}"),
            node_id,
            job_types: types.iter().map(|t| t.to_string()).collect(),
            capacity: 8,
            in_flight: 3,
            last_seen: Some(ms_timestamp(NOW_MS - last_seen_ms_ago)),
            principal: "billing-worker".into(),
            registered_at: Some(ms_timestamp(NOW_MS - 3_600_000)),
        }
    }

    #[test]
    fn each_worker_is_a_row_with_its_types_joined_and_its_age() {
        let list = pb::ListWorkersResponse {
            workers: vec![
                worker("n1-w1", 1, &["billing.charge", "billing.refund"], 2_400),
                worker("n3-w12", 3, &[], 185_000),
            ],
            unreachable_nodes: vec![],
        };
        assert_eq!(
            output::table_lines(&WORKER_COLUMNS, &worker_rows(&list, now())),
            [
                "WORKER  NAME      NODE  TYPES                          CAPACITY  IN FLIGHT  LAST SEEN  PRINCIPAL",
                "n1-w1   host-a/1  1     billing.charge,billing.refund  8         3          2s ago     billing-worker",
                "n3-w12  host-a/3  3     -                              8         3          3m ago     billing-worker",
            ]
        );
        assert_eq!(unreachable_footer(&list), None);
    }

    #[test]
    fn the_footer_names_the_nodes_that_did_not_answer() {
        let mut list = pb::ListWorkersResponse {
            workers: vec![],
            unreachable_nodes: vec![2],
        };
        assert_eq!(
            unreachable_footer(&list).as_deref(),
            Some("unreachable node: 2 (its workers are not listed)")
        );
        list.unreachable_nodes.push(5);
        assert_eq!(
            unreachable_footer(&list).as_deref(),
            Some("unreachable nodes: 2, 5 (their workers are not listed)")
        );
    }
}
