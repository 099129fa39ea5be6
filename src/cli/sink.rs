//! `kairos sink create|list|delete`: outbound webhooks receiving the
//! lifecycle stream (`actors::sinks` delivers them; `sink:admin` manages
//! them).
//!
//! Event kinds are named on the command line by the lowercase suffix of
//! their enum value (`job_created` for `LIFECYCLE_EVENT_KIND_JOB_CREATED`);
//! an unknown name is refused with the list of known ones ([`parse_kinds`]).
//!
//! `list` shows each sink's position (DELIVERED), how many lifecycle
//! positions it still has to examine (LAG), and the last delivery error.
//! Only the leader delivers, so only the leader knows that error: `list`
//! asks the cluster who leads (`ClusterService.Status`, which needs
//! `cluster:read`) and sends `ListSinks` there first; without that answer
//! it asks the endpoints in order, and LAST ERROR is then what the node
//! that answered knows (nothing, unless it leads).
//!
//! Turning kinds and listings into text is pure ([`parse_kinds`],
//! [`kind_names`], [`sink_rows`]), tested without a cluster.

use super::client::{fail, Client, ClientArgs};
use super::output;
use crate::proto as pb;
use crate::proto::cluster_service_client::ClusterServiceClient;
use crate::proto::event_service_client::EventServiceClient;

/// The prefix of every lifecycle event kind's enum value name.
const KIND_PREFIX: &str = "LIFECYCLE_EVENT_KIND_";

/// `kairos sink`.
#[derive(clap::Args, Debug)]
pub struct SinkCommand {
    #[command(subcommand)]
    action: SinkAction,
}

#[derive(clap::Subcommand, Debug)]
enum SinkAction {
    /// Create a sink: the leader POSTs every matching lifecycle event to URL, in order, at least once.
    Create {
        /// Its name: 1-64 characters of [a-z0-9_-].
        name: String,
        /// The http:// or https:// URL events are POSTed to.
        #[arg(long)]
        url: String,
        /// Only these kinds, comma-separated (job_created, job_updated, job_deleted, job_paused,
        /// job_resumed, run_changed, event_published, acl_changed); default: every kind.
        #[arg(long, value_delimiter = ',')]
        kinds: Vec<String>,
        /// Only events of jobs whose id matches this glob (events about no job then do not match).
        #[arg(long, default_value = "")]
        job: String,
        /// Deliver the events after this position (default, as 0: the newest position when created).
        #[arg(long, value_name = "POS")]
        start_after: Option<u64>,
    },
    /// Every sink with its position, lag and last delivery error.
    List,
    /// Delete a sink (delivery to it stops).
    Delete {
        /// Its name.
        name: String,
    },
}

/// The columns of `kairos sink list`.
pub const SINK_COLUMNS: [&str; 7] = ["NAME", "URL", "KINDS", "JOB", "DELIVERED", "LAG", "LAST ERROR"];

/// The command-line name of `kind`: its enum value name's lowercase suffix.
pub fn kind_name(kind: pb::LifecycleEventKind) -> String {
    kind.as_str_name()
        .strip_prefix(KIND_PREFIX)
        .unwrap_or(kind.as_str_name())
        .to_ascii_lowercase()
}

/// Every kind a sink or watch can name, in enum order.
pub fn known_kinds() -> Vec<pb::LifecycleEventKind> {
    (1..)
        .map_while(|n| pb::LifecycleEventKind::try_from(n).ok())
        .collect()
}

/// The kinds `names` name, as proto numbers (an empty name is ignored);
/// an unknown name is an error listing the known ones.
pub fn parse_kinds(names: &[String]) -> anyhow::Result<Vec<i32>> {
    let known = known_kinds();
    let mut kinds = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let Some(kind) = known.iter().find(|k| kind_name(**k) == name.to_ascii_lowercase()) else {
            let names: Vec<String> = known.iter().map(|k| kind_name(*k)).collect();
            anyhow::bail!(
                "--kinds: unknown event kind {name:?}; known kinds: {}",
                names.join(", ")
            );
        };
        if !kinds.contains(&(*kind as i32)) {
            kinds.push(*kind as i32);
        }
    }
    Ok(kinds)
}

/// The KINDS cell: the kinds' names, comma-separated, or `*` for every kind.
pub fn kind_names(kinds: &[i32]) -> String {
    if kinds.is_empty() {
        return "*".into();
    }
    kinds
        .iter()
        .map(|k| match pb::LifecycleEventKind::try_from(*k) {
            Ok(kind) => kind_name(kind),
            Err(_) => k.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The rows of `kairos sink list`, in [`SINK_COLUMNS`] order.
pub fn sink_rows(sinks: &[pb::Sink]) -> Vec<Vec<String>> {
    let or_dash = |text: &str| {
        if text.is_empty() {
            "-".to_string()
        } else {
            text.to_string()
        }
    };
    sinks
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.url.clone(),
                kind_names(&s.kinds),
                or_dash(&s.job),
                s.delivered_position.to_string(),
                s.lag.to_string(),
                or_dash(&s.last_error.replace(['\n', '\r'], " ")),
            ]
        })
        .collect()
}

/// The leader's client address, if a node says who leads.
async fn leader_addr(client: &Client) -> Option<String> {
    let status = client
        .send(&pb::ClusterStatusRequest::default(), |ch, r| async move {
            ClusterServiceClient::new(ch).status(r).await
        })
        .await
        .ok()?;
    status
        .nodes
        .iter()
        .find(|n| n.id == status.leader_id && status.leader_id != 0)
        .map(|n| n.grpc_addr.clone())
        .filter(|a| !a.is_empty())
}

/// Runs a `kairos sink` command.
pub async fn run(cmd: SinkCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(args)?;
    let out = args.output;
    match cmd.action {
        SinkAction::Create {
            name,
            url,
            kinds,
            job,
            start_after,
        } => {
            let sink = pb::Sink {
                name,
                url,
                kinds: parse_kinds(&kinds)?,
                job,
                start_after: start_after.unwrap_or(0),
                ..pb::Sink::default()
            };
            let created = client
                .send(&pb::CreateSinkRequest { sink: Some(sink) }, |ch, r| async move {
                    EventServiceClient::new(ch).create_sink(r).await
                })
                .await
                .map_err(fail)?;
            output::print(out, &created, |s| {
                output::table(&SINK_COLUMNS, &sink_rows(std::slice::from_ref(s)))
            })
        }
        SinkAction::List => {
            // The leader first: it delivers, so it knows the last errors.
            let client = match leader_addr(&client).await {
                Some(leader) => Client::new(&ClientArgs {
                    endpoints: format!("{leader},{}", args.endpoints),
                    ..args.clone()
                })?,
                None => client,
            };
            let list = client
                .send(&pb::ListSinksRequest {}, |ch, r| async move {
                    EventServiceClient::new(ch).list_sinks(r).await
                })
                .await
                .map_err(fail)?;
            output::print(out, &list, |l| output::table(&SINK_COLUMNS, &sink_rows(&l.sinks)))
        }
        SinkAction::Delete { name } => {
            client
                .send(
                    &pb::DeleteSinkRequest { name: name.clone() },
                    |ch, r| async move { EventServiceClient::new(ch).delete_sink(r).await },
                )
                .await
                .map_err(fail)?;
            output::print(out, &serde_json::json!({ "deleted": name }), |_| {
                output::outln!("sink {name} deleted")
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_kind_has_a_lowercase_name_that_parses_back() {
        let known = known_kinds();
        assert_eq!(known.len(), 8, "{known:?}");
        let all: Vec<String> = known.iter().map(|k| kind_name(*k)).collect();
        assert_eq!(
            all,
            [
                "job_created",
                "job_updated",
                "job_deleted",
                "job_paused",
                "job_resumed",
                "run_changed",
                "event_published",
                "acl_changed"
            ]
        );
        let parsed = parse_kinds(&all).unwrap();
        assert_eq!(parsed, (1..=8).collect::<Vec<i32>>());
    }

    #[test]
    fn kinds_parse_in_the_order_given_without_repeats() {
        let parsed = parse_kinds(&names(&["run_changed", " JOB_CREATED", "run_changed", ""])).unwrap();
        assert_eq!(
            parsed,
            [
                pb::LifecycleEventKind::RunChanged as i32,
                pb::LifecycleEventKind::JobCreated as i32
            ]
        );
        assert!(parse_kinds(&[]).unwrap().is_empty());
    }

    #[test]
    fn an_unknown_kind_is_refused_naming_the_known_ones() {
        let err = parse_kinds(&names(&["job_created", "run_started"]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--kinds: unknown event kind \"run_started\"; known kinds: job_created, job_updated, \
             job_deleted, job_paused, job_resumed, run_changed, event_published, acl_changed"
        );
        // The unspecified kind is not a kind to ask for.
        assert!(parse_kinds(&names(&["unspecified"])).is_err());
    }

    #[test]
    fn each_sink_is_a_row() {
        let sinks = [
            pb::Sink {
                name: "audit-lake".into(),
                url: "https://lake.example/hook".into(),
                kinds: vec![],
                delivered_position: 1042,
                lag: 0,
                ..pb::Sink::default()
            },
            pb::Sink {
                name: "ci".into(),
                url: "http://10.0.0.7:8080/k".into(),
                kinds: vec![1, 6],
                job: "ci-*".into(),
                delivered_position: 17,
                lag: 30,
                last_error: "position 18: HTTP 503 Service Unavailable:\nbusy".into(),
                ..pb::Sink::default()
            },
        ];
        assert_eq!(
            output::table_lines(&SINK_COLUMNS, &sink_rows(&sinks)),
            [
                "NAME        URL                        KINDS                    JOB   DELIVERED  LAG  LAST ERROR",
                "audit-lake  https://lake.example/hook  *                        -     1042       0    -",
                "ci          http://10.0.0.7:8080/k     job_created,run_changed  ci-*  17         30   position 18: HTTP 503 Service Unavailable: busy",
            ]
        );
    }
}
