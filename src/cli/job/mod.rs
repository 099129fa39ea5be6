//! `kairos job ...`: create, get, list, update, delete, pause and resume jobs,
//! and trigger, backfill and describe them.
//!
//! Each subcommand is its own clap struct with its own `run` (as mini-redis's
//! `cmd/`): [`write`] holds the commands that change a job, [`read`] the
//! ones that show jobs, [`runs`] the ones that make or show runs of a job;
//! [`fields`] is the set of job flags that create and update share.
//!
//! `update` is a read-modify-write: it reads the job, applies the flags given
//! (labels and policy flags are merged into the current values), and sends only
//! the changed fields with the version it read — or with `--version`, to fail
//! with ABORTED if someone else changed the job since you looked.

mod fields;
mod read;
mod runs;
mod write;

use super::client::{Client, ClientArgs};
use super::output;
use crate::proto as pb;
use crate::proto::job_service_client::JobServiceClient;

/// `kairos job`.
#[derive(clap::Args, Debug)]
pub struct JobCommand {
    #[command(subcommand)]
    action: JobAction,
}

#[derive(clap::Subcommand, Debug)]
enum JobAction {
    /// Create a job.
    Create(write::Create),
    /// Show a job.
    Get(read::Get),
    /// List jobs (all pages unless --page-token or --limit is given).
    List(read::List),
    /// Change fields of a job.
    Update(write::Update),
    /// Delete a job.
    Delete(write::Delete),
    /// Pause a job (it keeps its definition but does not fire).
    Pause(write::Pause),
    /// Resume a paused job (paused time is not caught up).
    Resume(write::Resume),
    /// Run a job now.
    Trigger(runs::Trigger),
    /// Create runs for the job's fire times in [--start, --end).
    Backfill(runs::Backfill),
    /// A job with its next fire times, counters and recent runs.
    Describe(read::Describe),
}

/// Runs a `kairos job` command.
pub async fn run(cmd: JobCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(args)?;
    let out = args.output;
    match cmd.action {
        JobAction::Create(create) => create.run(&client, out).await,
        JobAction::Get(get) => get.run(&client, out).await,
        JobAction::List(list) => list.run(&client, out).await,
        JobAction::Update(update) => update.run(&client, out).await,
        JobAction::Delete(delete) => delete.run(&client, out).await,
        JobAction::Pause(pause) => pause.run(&client, out).await,
        JobAction::Resume(resume) => resume.run(&client, out).await,
        JobAction::Trigger(trigger) => trigger.run(&client, out).await,
        JobAction::Backfill(backfill) => backfill.run(&client, out).await,
        JobAction::Describe(describe) => describe.run(&client, out).await,
    }
}

/// The `ReadConsistency` of a read: linearizable unless `--stale`.
fn consistency(stale: bool) -> i32 {
    if stale {
        pb::ReadConsistency::Stale as i32
    } else {
        pb::ReadConsistency::Linearizable as i32
    }
}

/// Reads job `id` (for `get`, and for `update`'s read-modify-write).
async fn get_job(client: &Client, id: String, stale: bool) -> Result<pb::ScheduledJob, tonic::Status> {
    let req = pb::GetJobRequest {
        id,
        consistency: consistency(stale),
    };
    client
        .send(
            &req,
            |ch, r| async move { JobServiceClient::new(ch).get_job(r).await },
        )
        .await
}

fn time(t: &Option<pb::Timestamp>) -> String {
    output::timestamp(t, chrono::SecondsFormat::Secs)
}

fn status_name(v: i32) -> String {
    pb::JobStatus::try_from(v)
        .map(|s| s.as_str_name().trim_start_matches("JOB_STATUS_").to_lowercase())
        .unwrap_or_else(|_| v.to_string())
}

/// `-` for an empty owner.
fn owner(job: &pb::ScheduledJob) -> String {
    if job.owner_service.is_empty() {
        "-".into()
    } else {
        job.owner_service.clone()
    }
}

/// Prints one job as fields.
fn print_job(job: &pb::ScheduledJob) {
    let labels: Vec<String> = job
        .metadata
        .iter()
        .flat_map(|m| m.labels.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
    output::fields(&[
        ("id", job.id.clone()),
        ("type", job.r#type.clone()),
        ("owner", owner(job)),
        ("schedule", job.schedule.clone()),
        ("status", status_name(job.status)),
        ("next run", time(&job.next_run)),
        ("last run", time(&job.last_run)),
        ("version", job.version.to_string()),
        ("payload", format!("{} bytes", job.payload.len())),
        (
            "labels",
            if labels.is_empty() {
                "-".into()
            } else {
                labels.join(",")
            },
        ),
        (
            "created",
            format!("{} by {}", time(&job.created_at), job.created_by),
        ),
        (
            "updated",
            format!("{} by {}", time(&job.updated_at), job.updated_by),
        ),
    ]);
}
