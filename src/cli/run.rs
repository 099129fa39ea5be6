//! `kairos run list|get|cancel`, and the run views shared with `kairos job
//! trigger|backfill|describe`.

use chrono::{DateTime, Utc};

use super::client::{describe, Client, ClientArgs};
use super::output;
use crate::proto as pb;
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
    List {
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
    },
    /// Show a run.
    Get {
        /// Run id.
        id: u64,
    },
    /// Cancel a run that has not finished.
    Cancel {
        /// Run id.
        id: u64,
    },
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

fn time(t: &Option<pbjson_types::Timestamp>) -> String {
    output::timestamp(t, chrono::SecondsFormat::Millis)
}

fn status_name(v: i32) -> String {
    pb::RunStatus::try_from(v)
        .map(|s| s.as_str_name().trim_start_matches("RUN_STATUS_").to_lowercase())
        .unwrap_or_else(|_| v.to_string())
}

/// Prints runs as a table.
pub fn print_runs(runs: &[pb::Run]) {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.job_id.clone(),
                time(&r.nominal_time),
                status_name(r.status),
                r.attempt.to_string(),
                if r.node_id == 0 {
                    "-".into()
                } else {
                    r.node_id.to_string()
                },
                r.error.lines().next().unwrap_or("").chars().take(60).collect(),
            ]
        })
        .collect();
    output::table(
        &["RUN", "JOB", "NOMINAL", "STATUS", "ATTEMPT", "NODE", "ERROR"],
        &rows,
    );
}

/// Prints one run as fields.
pub fn print_run(r: &pb::Run) {
    let cause = pb::RunCause::try_from(r.cause)
        .map(|c| c.as_str_name().trim_start_matches("RUN_CAUSE_").to_lowercase())
        .unwrap_or_default();
    output::fields(&[
        ("run", r.id.to_string()),
        ("job", r.job_id.clone()),
        ("nominal", time(&r.nominal_time)),
        ("cause", cause),
        ("status", status_name(r.status)),
        ("attempt", r.attempt.to_string()),
        (
            "node",
            if r.node_id == 0 {
                "-".into()
            } else {
                r.node_id.to_string()
            },
        ),
        ("started", time(&r.started_at)),
        ("finished", time(&r.finished_at)),
        ("not before", time(&r.not_before)),
        ("idempotency key", r.idempotency_key.clone()),
        (
            "error",
            if r.error.is_empty() {
                "-".into()
            } else {
                r.error.clone()
            },
        ),
        (
            "output",
            if r.output_tail.is_empty() {
                "-".into()
            } else {
                r.output_tail.clone()
            },
        ),
    ]);
}

/// Runs a `kairos run` command.
pub async fn run(cmd: RunCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(args)?;
    let fail = |s: tonic::Status| anyhow::anyhow!(describe(&s));
    match cmd.action {
        RunAction::List {
            job,
            status,
            after,
            before,
            limit,
        } => {
            let status = status.map_or(pb::RunStatus::Unspecified, |s| match s {
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
                job_id: job.unwrap_or_default(),
                status: status as i32,
                nominal_after: after.map(to_ts),
                nominal_before: before.map(to_ts),
                page_size: limit.map_or(1000, |l| l.min(1000) as u32),
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
                let full = limit.is_some_and(|l| all.runs.len() >= l);
                if full || all.next_page_token.is_empty() {
                    break;
                }
                req.page_token = all.next_page_token.clone();
            }
            if let Some(l) = limit {
                all.runs.truncate(l);
            }
            output::print(args.output, &all, |all| print_runs(&all.runs))
        }
        RunAction::Get { id } => {
            let req = pb::GetRunRequest { id, consistency: 0 };
            let run = client
                .send(
                    &req,
                    |ch, r| async move { RunServiceClient::new(ch).get_run(r).await },
                )
                .await
                .map_err(fail)?;
            output::print(args.output, &run, print_run)
        }
        RunAction::Cancel { id } => {
            let req = pb::CancelRunRequest { id };
            let run = client
                .send(&req, |ch, r| async move {
                    RunServiceClient::new(ch).cancel_run(r).await
                })
                .await
                .map_err(fail)?;
            output::print(args.output, &run, print_run)
        }
    }
}
