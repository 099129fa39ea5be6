//! `kairos run list|get|cancel|watch`, and the run views shared with `kairos job
//! trigger|backfill|describe`.
//!
//! NODE is the node of a run's current attempt; WORKER is the external
//! worker that ran the current (or last) attempt of a run whose job type a
//! worker registered (`-` otherwise). The tables show the first line of the error, cut to 60
//! characters; the one-run view (`run get`, `run cancel`, `job trigger`)
//! shows the whole error and the whole output, which an external worker may
//! make up to 64 KiB, as the cluster stored them.

use chrono::{DateTime, Utc};

use tonic::{Code, Status};

use super::client::{describe, fail, Client, ClientArgs, Output};
use super::output;
use crate::proto as pb;
use crate::proto::cluster_service_client::ClusterServiceClient;
use crate::proto::run_service_client::RunServiceClient;

/// `kairos run`.
#[derive(clap::Args, Debug)]
pub struct RunCommand {
    #[command(subcommand)]
    action: RunAction,
}

#[derive(clap::Subcommand, Debug)]
enum RunAction {
    /// List runs, oldest first (all pages unless --limit is given).
    List(List),
    /// Show a run.
    Get(Get),
    /// Cancel a run that has not finished.
    Cancel(Cancel),
    /// Follow run changes as the cluster applies them, resuming on another
    /// endpoint when one fails (until interrupted or --count events).
    Watch(Watch),
}

/// List runs, oldest first (all pages unless --limit is given).
#[derive(clap::Args, Debug)]
struct List {
    /// Only runs of this job.
    #[arg(long)]
    job: Option<String>,
    /// Only runs in this status.
    #[arg(long, value_enum)]
    status: Option<RunStatusArg>,
    /// Only runs with a nominal time at or after this (RFC 3339).
    #[arg(long)]
    after: Option<DateTime<Utc>>,
    /// Only runs with a nominal time before this (RFC 3339).
    #[arg(long)]
    before: Option<DateTime<Utc>>,
    /// Stop after this many runs.
    #[arg(long)]
    limit: Option<usize>,
}

/// Show a run.
#[derive(clap::Args, Debug)]
struct Get {
    /// Run id.
    id: u64,
}

/// Cancel a run that has not finished.
#[derive(clap::Args, Debug)]
struct Cancel {
    /// Run id.
    id: u64,
}

/// Follow run changes as the cluster applies them, resuming on another
/// endpoint when one fails (until interrupted or --count events).
#[derive(clap::Args, Debug)]
struct Watch {
    /// Only runs of this job.
    #[arg(long)]
    job: Option<String>,
    /// Start after this position (REVISION:RUN, as printed); default: now.
    #[arg(long, value_parser = parse_position)]
    after: Option<pb::WatchPosition>,
    /// Stop after this many run events.
    #[arg(long)]
    count: Option<usize>,
}

/// Parses `REVISION:RUN` (or a bare `REVISION`, meaning every run changed after it).
fn parse_position(s: &str) -> Result<pb::WatchPosition, String> {
    let number = |part: &str| {
        part.trim()
            .parse::<u64>()
            .map_err(|e| format!("{part:?} in {s:?}: {e} (expected REVISION:RUN)"))
    };
    match s.split_once(':') {
        Some((revision, run)) => Ok(pb::WatchPosition {
            revision: number(revision)?,
            run_id: number(run)?,
        }),
        None => Ok(pb::WatchPosition {
            revision: number(s)?,
            run_id: u64::MAX,
        }),
    }
}

/// How long to wait before trying the next endpoint after a broken watch.
const WATCH_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(300);

/// A start position the cluster's log has not reached when the watch begins.
struct Ahead {
    /// The position's revision.
    revision: u64,
    /// The cluster's commit index when the watch began.
    head: u64,
    /// When to give up waiting for the log to reach `revision` (`--timeout`).
    deadline: tokio::time::Instant,
}

/// Whether `after` is beyond the cluster's log (one status call; `None`
/// when it is not, or when no node answers: the watch then finds out).
async fn ahead_of_the_log(client: &Client, after: &pb::WatchPosition) -> Option<Ahead> {
    let status = client
        .send(&pb::ClusterStatusRequest::default(), |ch, r| async move {
            ClusterServiceClient::new(ch).status(r).await
        })
        .await
        .ok()?;
    let head = status.nodes.iter().map(|n| n.commit_index).max()?;
    (after.revision > head).then(|| Ahead {
        revision: after.revision,
        head,
        deadline: tokio::time::Instant::now() + client.timeout(),
    })
}

/// `kairos run watch`: prints each event as a line (or one JSON object per
/// line), remembers its position, and on a broken stream resumes from it on
/// the next endpoint. Gives up after every endpoint failed three times in a
/// row, and, when started after a position the log has not reached, if
/// the log does not reach it within `--timeout` (the first event, a
/// progress notice at the start position, says it did).
async fn watch(
    client: &Client,
    output: Output,
    job: Option<String>,
    mut after: Option<pb::WatchPosition>,
    count: Option<usize>,
) -> anyhow::Result<()> {
    let mut ahead = match &after {
        Some(position) => ahead_of_the_log(client, position).await,
        None => None,
    };
    if let Some(a) = &ahead {
        output::errln(&format!(
            "watch: waiting for the log to reach revision {} (the cluster has committed up to {}); giving up after {}",
            a.revision,
            a.head,
            humantime::format_duration(client.timeout())
        ));
    }
    let endpoints = client.endpoints();
    let mut printed = 0usize;
    let mut failures = 0usize;
    let mut next = 0usize;
    if output == Output::Table {
        output::outln!(
            "{:<14} {:<8} {:<20} {:<24} {:<10} {:<7} {:<5} {:<10} ERROR",
            "POSITION",
            "RUN",
            "JOB",
            "NOMINAL",
            "STATUS",
            "ATTEMPT",
            "NODE",
            "WORKER"
        );
    }
    loop {
        if count.is_some_and(|c| printed >= c) {
            return Ok(());
        }
        let addr = &endpoints[next % endpoints.len()];
        next += 1;
        let request = pb::WatchRunsRequest {
            job_id: job.clone().unwrap_or_default(),
            after,
        };
        let outcome = match RunServiceClient::new(client.channel(addr)?)
            .watch_runs(client.stream_request(request))
            .await
        {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    let message = match &ahead {
                        Some(a) => match tokio::time::timeout_at(a.deadline, stream.message()).await {
                            Ok(message) => message,
                            Err(_) => anyhow::bail!(
                                "watch: the log did not reach revision {} within {} (the cluster had committed up to {}): \
                                 start after a position this cluster printed",
                                a.revision,
                                humantime::format_duration(client.timeout()),
                                a.head
                            ),
                        },
                        None => stream.message().await,
                    };
                    match message {
                        Ok(Some(event)) => {
                            ahead = None;
                            failures = 0;
                            after = event.position.or(after);
                            if let Some(run) = &event.run {
                                print_event(output, &event, run)?;
                                printed += 1;
                                if count.is_some_and(|c| printed >= c) {
                                    return Ok(());
                                }
                            }
                        }
                        Ok(None) => break Status::unavailable("the server ended the stream"),
                        Err(status) => break status,
                    }
                }
            }
            Err(status) => status,
        };
        // Errors about the request itself will not go away elsewhere.
        if matches!(
            outcome.code(),
            Code::InvalidArgument | Code::NotFound | Code::PermissionDenied | Code::Unauthenticated
        ) {
            anyhow::bail!(describe(&outcome));
        }
        failures += 1;
        if failures >= 3 * endpoints.len() {
            anyhow::bail!("watch: no endpoint answered; last error {}", describe(&outcome));
        }
        output::errln(&format!("watch: {addr}: {}; resuming", describe(&outcome)));
        tokio::time::sleep(WATCH_RETRY_DELAY).await;
    }
}

fn print_event(output: Output, event: &pb::RunEvent, run: &pb::Run) -> anyhow::Result<()> {
    match output {
        Output::Json => output::outln!("{}", serde_json::to_string(event)?),
        Output::Table => {
            let position = event
                .position
                .map(|p| format!("{}:{}", p.revision, p.run_id))
                .unwrap_or_default();
            output::outln!(
                "{position:<14} {:<8} {:<20} {:<24} {:<10} {:<7} {:<5} {:<10} {}",
                run.id,
                run.job_id,
                time(&run.nominal_time),
                status_name(run.status),
                run.attempt,
                node(run),
                worker(run),
                error_summary(run),
            );
        }
    }
    // A watch is often piped; show each event as it comes.
    use std::io::Write;
    std::io::stdout().flush()?;
    Ok(())
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum RunStatusArg {
    Pending,
    Queued,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Skipped,
}

fn time(t: &Option<pb::Timestamp>) -> String {
    output::timestamp(t, chrono::SecondsFormat::Millis)
}

fn status_name(v: i32) -> String {
    pb::RunStatus::try_from(v)
        .map(|s| s.as_str_name().trim_start_matches("RUN_STATUS_").to_lowercase())
        .unwrap_or_else(|_| v.to_string())
}

/// The NODE cell: the node of the current attempt, `-` for none.
fn node(run: &pb::Run) -> String {
    if run.node_id == 0 {
        "-".into()
    } else {
        run.node_id.to_string()
    }
}

/// The WORKER cell: the external worker of the current (or last) attempt,
/// `-` for none.
fn worker(run: &pb::Run) -> String {
    if run.worker_id.is_empty() {
        "-".into()
    } else {
        run.worker_id.clone()
    }
}

/// The ERROR cell: the error's first line, at most 60 characters.
fn error_summary(run: &pb::Run) -> String {
    run.error.lines().next().unwrap_or("").chars().take(60).collect()
}

/// The columns of a run table (`run list`, `job describe`'s recent runs).
pub const RUN_COLUMNS: [&str; 8] = [
    "RUN", "JOB", "NOMINAL", "STATUS", "ATTEMPT", "NODE", "WORKER", "ERROR",
];

/// The rows of a run table, in [`RUN_COLUMNS`] order.
pub fn run_rows(runs: &[pb::Run]) -> Vec<Vec<String>> {
    runs.iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.job_id.clone(),
                time(&r.nominal_time),
                status_name(r.status),
                r.attempt.to_string(),
                node(r),
                worker(r),
                error_summary(r),
            ]
        })
        .collect()
}

/// Prints runs as a table.
pub fn print_runs(runs: &[pb::Run]) {
    output::table(&RUN_COLUMNS, &run_rows(runs));
}

/// The fields of the one-run view: `worker` only when an external worker
/// ran an attempt; the error and the output whole (`-` when empty).
pub fn run_fields(r: &pb::Run) -> Vec<(&'static str, String)> {
    let cause = pb::RunCause::try_from(r.cause)
        .map(|c| c.as_str_name().trim_start_matches("RUN_CAUSE_").to_lowercase())
        .unwrap_or_default();
    let or_dash = |text: &str| {
        if text.is_empty() {
            "-".to_string()
        } else {
            text.to_string()
        }
    };
    let mut fields = vec![
        ("run", r.id.to_string()),
        ("job", r.job_id.clone()),
        ("nominal", time(&r.nominal_time)),
        ("cause", cause),
        ("status", status_name(r.status)),
        ("attempt", r.attempt.to_string()),
        ("node", node(r)),
    ];
    if !r.worker_id.is_empty() {
        fields.push(("worker", r.worker_id.clone()));
    }
    fields.extend([
        ("started", time(&r.started_at)),
        ("finished", time(&r.finished_at)),
        ("not before", time(&r.not_before)),
        ("idempotency key", r.idempotency_key.clone()),
        ("error", or_dash(&r.error)),
        ("output", or_dash(&r.output_tail)),
    ]);
    fields
}

/// Prints one run as fields.
pub fn print_run(r: &pb::Run) {
    output::fields(&run_fields(r));
}

/// Runs a `kairos run` command.
pub async fn run(cmd: RunCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(args)?;
    match cmd.action {
        RunAction::List(list) => list.run(&client, args.output).await,
        RunAction::Get(get) => get.run(&client, args.output).await,
        RunAction::Cancel(cancel) => cancel.run(&client, args.output).await,
        RunAction::Watch(Watch { job, after, count }) => watch(&client, args.output, job, after, count).await,
    }
}

impl List {
    /// Fetches the pages (up to `--limit` runs) and prints them.
    async fn run(self, client: &Client, out: Output) -> anyhow::Result<()> {
        let status = self.status.map_or(pb::RunStatus::Unspecified, |s| match s {
            RunStatusArg::Pending => pb::RunStatus::Pending,
            RunStatusArg::Queued => pb::RunStatus::Queued,
            RunStatusArg::Running => pb::RunStatus::Running,
            RunStatusArg::Succeeded => pb::RunStatus::Succeeded,
            RunStatusArg::Failed => pb::RunStatus::Failed,
            RunStatusArg::TimedOut => pb::RunStatus::TimedOut,
            RunStatusArg::Cancelled => pb::RunStatus::Cancelled,
            RunStatusArg::Skipped => pb::RunStatus::Skipped,
        });
        let to_ts = |t: DateTime<Utc>| crate::api::convert::ms_timestamp(t.timestamp_millis());
        let mut req = pb::ListRunsRequest {
            job_id: self.job.unwrap_or_default(),
            status: status as i32,
            nominal_after: self.after.map(to_ts),
            nominal_before: self.before.map(to_ts),
            page_size: self.limit.map_or(1000, |l| l.min(1000) as u32),
            ..Default::default()
        };
        let mut all = pb::ListRunsResponse::default();
        loop {
            let page = client
                .send(&req, |ch, r| async move {
                    RunServiceClient::new(ch).list_runs(r).await
                })
                .await
                .map_err(fail)?;
            all.runs.extend(page.runs);
            all.next_page_token = page.next_page_token;
            let full = self.limit.is_some_and(|l| all.runs.len() >= l);
            if full || all.next_page_token.is_empty() {
                break;
            }
            req.page_token = all.next_page_token.clone();
        }
        if let Some(l) = self.limit {
            all.runs.truncate(l);
        }
        output::print(out, &all, |all| print_runs(&all.runs))
    }
}

impl Get {
    /// Reads the run and prints it.
    async fn run(self, client: &Client, out: Output) -> anyhow::Result<()> {
        let req = pb::GetRunRequest {
            id: self.id,
            consistency: 0,
        };
        let run = client
            .send(
                &req,
                |ch, r| async move { RunServiceClient::new(ch).get_run(r).await },
            )
            .await
            .map_err(fail)?;
        output::print(out, &run, print_run)
    }
}

impl Cancel {
    /// Cancels the run and prints it as it now is.
    async fn run(self, client: &Client, out: Output) -> anyhow::Result<()> {
        let req = pb::CancelRunRequest { id: self.id };
        let run = client
            .send(&req, |ch, r| async move {
                RunServiceClient::new(ch).cancel_run(r).await
            })
            .await
            .map_err(fail)?;
        output::print(out, &run, print_run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(worker_id: &str, error: &str, output_tail: &str) -> pb::Run {
        pb::Run {
            id: 7,
            job_id: "charge".into(),
            status: pb::RunStatus::Failed as i32,
            attempt: 2,
            worker_id: worker_id.into(),
            error: error.into(),
            output_tail: output_tail.into(),
            ..Default::default()
        }
    }

    fn field<'a>(fields: &'a [(&str, String)], key: &str) -> Option<&'a str> {
        fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_one_run_view_names_the_worker_only_when_one_ran_it() {
        let by_worker = run_fields(&run_with("n1-w3", "", ""));
        assert_eq!(field(&by_worker, "worker"), Some("n1-w3"));
        let keys: Vec<&str> = by_worker.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys[5..8], ["attempt", "node", "worker"]);
        assert_eq!(field(&run_fields(&run_with("", "", "")), "worker"), None);
    }

    #[test]
    fn the_one_run_view_keeps_the_whole_error_and_output() {
        let output_tail = "line\n".repeat(64 * 1024 / 5);
        let error = "card declined\ncode 51".to_string();
        let fields = run_fields(&run_with("n1-w3", &error, &output_tail));
        assert_eq!(field(&fields, "error"), Some(error.as_str()));
        assert_eq!(field(&fields, "output"), Some(output_tail.as_str()));
        let empty = run_fields(&run_with("", "", ""));
        assert_eq!(
            (field(&empty, "error"), field(&empty, "output")),
            (Some("-"), Some("-"))
        );
    }

    #[test]
    fn a_run_table_has_a_worker_column_and_the_errors_first_line() {
        let long_error = format!("{}\nsecond line", "x".repeat(80));
        let rows = run_rows(&[run_with("n1-w3", &long_error, ""), run_with("", "", "")]);
        assert_eq!(rows[0][5..], ["-", "n1-w3", &"x".repeat(60)]);
        assert_eq!(rows[1][5..], ["-", "-", ""]);
        assert_eq!(rows.iter().map(Vec::len).max(), Some(RUN_COLUMNS.len()));
    }
}
