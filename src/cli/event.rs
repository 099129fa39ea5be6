//! `kairos event publish` and `kairos event watch`: publishing events that
//! trigger jobs, and following the cluster's lifecycle stream.
//!
//! `watch` prints one line per event (`-o json`: one JSON object per line,
//! the protobuf JSON mapping) and, when the stream breaks (the node stops,
//! a network error), resumes on the next endpoint after the last position
//! it printed, so nothing is lost or printed twice. `--after POS` resumes
//! an earlier watch; without it the watch starts at the newest position.

use std::collections::BTreeMap;

use anyhow::Context;

use super::client::{fail, Client, ClientArgs, Output};
use super::output;
use super::sink::{kind_name, parse_kinds};
use crate::proto as pb;
use crate::proto::event_service_client::EventServiceClient;

/// `kairos event`.
#[derive(clap::Args, Debug)]
pub struct EventCommand {
    #[command(subcommand)]
    action: EventAction,
}

#[derive(clap::Subcommand, Debug)]
enum EventAction {
    /// Publish an event: every job whose --on-event trigger matches gets a run.
    Publish(Publish),
    /// Follow lifecycle events (jobs, runs, published events, ACL changes).
    Watch(Watch),
}

/// `kairos event publish`.
#[derive(clap::Args, Debug)]
struct Publish {
    /// The topic, e.g. orders.created.
    topic: String,
    /// An attribute key=value (repeatable).
    #[arg(long = "attr", value_parser = key_value)]
    attributes: Vec<(String, String)>,
    /// The payload handed to the runs (JSON or any text).
    #[arg(long, default_value = "")]
    payload: String,
    /// A repeat with the same key within 24 h returns the first answer.
    #[arg(long, default_value = "")]
    idempotency_key: String,
}

/// `kairos event watch`.
#[derive(clap::Args, Debug)]
struct Watch {
    /// Only these kinds (comma-separated): job_created, job_updated,
    /// job_deleted, job_paused, job_resumed, run_changed, event_published,
    /// acl_changed.
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<String>,
    /// Only events of jobs whose id matches this glob.
    #[arg(long, default_value = "")]
    job: String,
    /// Only events of jobs whose owner matches this glob.
    #[arg(long, default_value = "")]
    owner: String,
    /// Resume after this position (default: from the newest).
    #[arg(long)]
    after: Option<u64>,
    /// Stop after this many events (default: run until interrupted).
    #[arg(long)]
    count: Option<u64>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

/// The CLI name of a kind number (`progress` for a progress notice).
fn kind_label(kind: i32) -> String {
    match pb::LifecycleEventKind::try_from(kind) {
        Ok(pb::LifecycleEventKind::Unspecified) | Err(_) => "progress".into(),
        Ok(kind) => kind_name(kind),
    }
}

/// Runs a `kairos event` command.
pub async fn run(cmd: EventCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(args)?;
    match cmd.action {
        EventAction::Publish(p) => {
            let req = pb::PublishEventRequest {
                topic: p.topic,
                attributes: p
                    .attributes
                    .into_iter()
                    .collect::<BTreeMap<_, _>>()
                    .into_iter()
                    .collect(),
                payload: p.payload.into_bytes(),
                idempotency_key: p.idempotency_key,
            };
            let reply = client
                .send(&req, |ch, r| async move {
                    EventServiceClient::new(ch).publish_event(r).await
                })
                .await
                .map_err(fail)?;
            output::print(args.output, &reply, |r| {
                output::outln!(
                    "event {} created {} run(s){}",
                    r.event_id,
                    r.runs_created,
                    if r.duplicate {
                        " (a repeat of an earlier publish: nothing new created)"
                    } else {
                        ""
                    }
                );
            })
        }
        EventAction::Watch(w) => watch(&client, args.output, w).await,
    }
}

/// Follows the stream, resuming on the next endpoint when it breaks.
async fn watch(client: &Client, out: Output, w: Watch) -> anyhow::Result<()> {
    let kinds = parse_kinds(&w.kinds)?;
    let mut after = w.after;
    let mut printed = 0u64;
    let mut failures = 0u32;
    loop {
        let req = pb::WatchEventsRequest {
            after: after.unwrap_or(0),
            kinds: kinds.clone(),
            job: w.job.clone(),
            owner: w.owner.clone(),
            from_now: after.is_none(),
        };
        let stream = client
            .send(&req, |ch, r| async move {
                EventServiceClient::new(ch).watch_events(r).await
            })
            .await;
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) if failures < 5 && e.code() == tonic::Code::Unavailable => {
                failures += 1;
                continue;
            }
            Err(e) => return Err(fail(e)),
        };
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    failures = 0;
                    after = Some(event.position);
                    if event.kind == pb::LifecycleEventKind::Unspecified as i32 {
                        continue; // a progress notice: where the stream starts
                    }
                    print_event(out, &event)?;
                    printed += 1;
                    if w.count.is_some_and(|c| printed >= c) {
                        return Ok(());
                    }
                }
                Ok(None) => break,
                Err(e) if e.code() == tonic::Code::Unavailable && failures < 5 => {
                    failures += 1;
                    break;
                }
                Err(e) => return Err(fail(e)),
            }
        }
    }
}

/// One line per event.
fn print_event(out: Output, event: &pb::LifecycleEvent) -> anyhow::Result<()> {
    if out == Output::Json {
        let line = serde_json::to_string(event).context("encoding the event as JSON")?;
        output::outln!("{line}");
        return Ok(());
    }
    output::outln!("{}", event_line(event));
    Ok(())
}

/// The text form of an event: position, time, kind, then what it is about.
pub fn event_line(e: &pb::LifecycleEvent) -> String {
    let time = e
        .time
        .map(|t| crate::api::convert::timestamp_ms(&t))
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    let mut line = format!("{} {time} {}", e.position, kind_label(e.kind));
    if !e.job_id.is_empty() {
        line.push_str(&format!(" job={}", e.job_id));
    }
    if e.run_id != 0 || e.kind == pb::LifecycleEventKind::RunChanged as i32 {
        let status = pb::RunStatus::try_from(e.run_status)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("RUN_STATUS_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        line.push_str(&format!(" run={} status={status}", e.run_id));
    }
    if !e.event_id.is_empty() {
        line.push_str(&format!(" event={} topic={}", e.event_id, e.topic));
    }
    if e.job_id.is_empty() && e.event_id.is_empty() {
        line.push_str(&format!(" {} {}", e.method, e.resource));
    }
    line.push_str(&format!(" by {}", e.principal));
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_notice_is_labelled_as_such() {
        assert_eq!(kind_label(0), "progress");
        assert_eq!(
            kind_label(pb::LifecycleEventKind::JobCreated as i32),
            "job_created"
        );
    }

    #[test]
    fn an_event_line_names_what_changed() {
        let e = pb::LifecycleEvent {
            position: 42,
            kind: pb::LifecycleEventKind::RunChanged as i32,
            job_id: "nightly".into(),
            run_id: 7,
            run_status: pb::RunStatus::Succeeded as i32,
            principal: "kairos".into(),
            ..Default::default()
        };
        let line = event_line(&e);
        assert!(line.starts_with("42 "), "{line}");
        assert!(
            line.contains("run_changed job=nightly run=7 status=succeeded by kairos"),
            "{line}"
        );
    }
}
