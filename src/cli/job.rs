//! `kairos job ...`: create, get, list, update, delete, pause and resume jobs.
//!
//! `update` is a read-modify-write: it reads the job, applies the flags given
//! (labels and policy flags are merged into the current values), and sends only
//! the changed fields with the version it read — or with `--version`, to fail
//! with ABORTED if someone else changed the job since you looked.

use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use pbjson_types::FieldMask;

use super::client::{describe, Client, ClientArgs};
use super::output;
use crate::api::convert::{ms_duration, ms_timestamp};
use crate::proto as pb;
use crate::proto::job_service_client::JobServiceClient;
use crate::proto::run_service_client::RunServiceClient;

/// `kairos job`.
#[derive(clap::Args, Debug)]
pub struct JobCommand {
    #[command(subcommand)]
    action: JobAction,
}

#[derive(clap::Subcommand, Debug)]
enum JobAction {
    /// Create a job.
    Create {
        /// Job id: letters, digits, '.', '_', '-'.
        id: String,
        #[command(flatten)]
        fields: JobFields,
        /// Idempotency key (default: a fresh one, so a retried call never creates twice).
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Show a job.
    Get {
        /// Job id.
        id: String,
        /// Read this node's possibly stale state instead of a linearizable read.
        #[arg(long)]
        stale: bool,
    },
    /// List jobs (all pages unless --page-token or --limit is given).
    List {
        /// Only jobs of this owner service.
        #[arg(long)]
        owner: Option<String>,
        /// Only jobs of this type.
        #[arg(long = "type")]
        job_type: Option<String>,
        /// Only jobs in this state.
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        /// Jobs per page.
        #[arg(long, default_value_t = 500)]
        page_size: u32,
        /// Start at this page (printed as `next page token` by a previous call).
        #[arg(long)]
        page_token: Option<String>,
        /// Stop after this many jobs.
        #[arg(long)]
        limit: Option<usize>,
        /// Read this node's possibly stale state.
        #[arg(long)]
        stale: bool,
    },
    /// Change fields of a job.
    Update {
        /// Job id.
        id: String,
        /// Expected current version (default: the version just read).
        #[arg(long)]
        version: Option<u64>,
        #[command(flatten)]
        fields: JobFields,
    },
    /// Delete a job.
    Delete {
        /// Job id.
        id: String,
        /// Delete only if the job is at this version.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Pause a job (it keeps its definition but does not fire).
    Pause {
        /// Job id.
        id: String,
    },
    /// Resume a paused job (paused time is not caught up).
    Resume {
        /// Job id.
        id: String,
    },
    /// Run a job now.
    Trigger {
        /// Job id.
        id: String,
    },
    /// Create runs for the job's fire times in [--start, --end).
    Backfill {
        /// Job id.
        id: String,
        /// Range start (RFC 3339), inclusive.
        #[arg(long)]
        start: DateTime<Utc>,
        /// Range end (RFC 3339), exclusive.
        #[arg(long)]
        end: DateTime<Utc>,
        /// Only list the fire times.
        #[arg(long)]
        dry_run: bool,
    },
    /// A job with its next fire times, counters and recent runs.
    Describe {
        /// Job id.
        id: String,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum StatusArg {
    Active,
    Paused,
    Completed,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum OverlapArg {
    Skip,
    BufferOne,
    BufferAll,
    CancelOther,
    AllowAll,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CatchupArg {
    Latest,
    All,
    None,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

/// The job fields settable by flags (create and update).
#[derive(clap::Args, Debug, Default)]
struct JobFields {
    /// Handler type (noop, sleep, http, exec).
    #[arg(long = "type")]
    job_type: Option<String>,
    /// Owner service.
    #[arg(long)]
    owner: Option<String>,
    /// Cron expression: 5 fields, 6 with seconds, @daily..., or "@every 30s".
    #[arg(long, conflicts_with_all = ["at", "every"])]
    schedule: Option<String>,
    /// IANA time zone of --schedule (default UTC).
    #[arg(long, requires = "schedule")]
    tz: Option<String>,
    /// One-shot fire time, RFC 3339.
    #[arg(long, conflicts_with = "every")]
    at: Option<DateTime<Utc>>,
    /// Fixed interval, aligned to the epoch (e.g. 30s, 5m).
    #[arg(long, value_parser = duration)]
    every: Option<Duration>,
    /// Offset of --every from the epoch alignment.
    #[arg(long, value_parser = duration, requires = "every")]
    phase: Option<Duration>,
    /// Handler payload as text.
    #[arg(long, conflicts_with = "payload_file")]
    payload: Option<String>,
    /// Handler payload read from a file.
    #[arg(long)]
    payload_file: Option<std::path::PathBuf>,
    /// Label key=value (repeatable).
    #[arg(long = "label", value_parser = label)]
    labels: Vec<(String, String)>,
    /// Free-form metadata as a JSON object.
    #[arg(long)]
    fields: Option<String>,
    /// Overlap policy.
    #[arg(long, value_enum)]
    overlap: Option<OverlapArg>,
    /// Catch-up policy.
    #[arg(long, value_enum)]
    catchup: Option<CatchupArg>,
    /// Catch-up window (e.g. 1h).
    #[arg(long, value_parser = duration)]
    catchup_window: Option<Duration>,
    /// Most fires caught up with --catchup all.
    #[arg(long)]
    max_catchup: Option<u32>,
    /// Attempts in total including the first.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Delay before the first retry.
    #[arg(long, value_parser = duration)]
    retry_initial: Option<Duration>,
    /// Longest delay between retries.
    #[arg(long, value_parser = duration)]
    retry_max: Option<Duration>,
    /// Attempt timeout.
    #[arg(long, value_parser = duration)]
    attempt_timeout: Option<Duration>,
    /// Create the job paused (update: true pauses, false resumes).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    paused: Option<bool>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl JobFields {
    /// Writes the given flags into `job`, returning the update-mask paths touched.
    fn apply(&self, job: &mut pb::ScheduledJob) -> anyhow::Result<Vec<String>> {
        let mut mask = Vec::new();
        if let Some(t) = &self.job_type {
            job.r#type = t.clone();
            mask.push("type");
        }
        if let Some(o) = &self.owner {
            job.owner_service = o.clone();
            mask.push("owner_service");
        }
        let kind = if let Some(expr) = &self.schedule {
            Some(pb::schedule_spec::Kind::Cron(pb::CronSchedule {
                expr: expr.clone(),
                timezone: self.tz.clone().unwrap_or_default(),
            }))
        } else if let Some(at) = self.at {
            Some(pb::schedule_spec::Kind::At(ms_timestamp(at.timestamp_millis())))
        } else {
            self.every.map(|every| {
                pb::schedule_spec::Kind::Every(pb::IntervalSchedule {
                    interval: Some(ms_duration(ms(every))),
                    phase: self.phase.map(|p| ms_duration(ms(p))),
                })
            })
        };
        if let Some(kind) = kind {
            job.schedule_spec = Some(pb::ScheduleSpec { kind: Some(kind) });
            mask.push("schedule_spec");
        }
        if let Some(text) = &self.payload {
            job.payload = text.clone().into_bytes();
            mask.push("payload");
        }
        if let Some(path) = &self.payload_file {
            job.payload =
                std::fs::read(path).with_context(|| format!("--payload-file {}", path.display()))?;
            mask.push("payload");
        }
        if !self.labels.is_empty() || self.fields.is_some() {
            let metadata = job.metadata.get_or_insert_with(Default::default);
            metadata.labels.extend(self.labels.iter().cloned());
            if let Some(fields) = &self.fields {
                metadata.fields = Some(serde_json::from_str(fields).context("--fields: not a JSON object")?);
            }
            mask.push("metadata");
        }
        if self.apply_policies(job) {
            mask.push("policies");
        }
        if let Some(paused) = self.paused {
            job.paused = paused;
            mask.push("paused");
        }
        Ok(mask.into_iter().map(str::to_string).collect())
    }

    /// Merges the policy flags into `job.policies`; true if any was given.
    fn apply_policies(&self, job: &mut pb::ScheduledJob) -> bool {
        let p = job.policies.get_or_insert_with(Default::default);
        let before = p.clone();
        if let Some(o) = self.overlap {
            p.overlap = match o {
                OverlapArg::Skip => pb::OverlapPolicy::Skip,
                OverlapArg::BufferOne => pb::OverlapPolicy::BufferOne,
                OverlapArg::BufferAll => pb::OverlapPolicy::BufferAll,
                OverlapArg::CancelOther => pb::OverlapPolicy::CancelOther,
                OverlapArg::AllowAll => pb::OverlapPolicy::AllowAll,
            } as i32;
        }
        if let Some(c) = self.catchup {
            p.catchup = match c {
                CatchupArg::Latest => pb::CatchupPolicy::Latest,
                CatchupArg::All => pb::CatchupPolicy::All,
                CatchupArg::None => pb::CatchupPolicy::None,
            } as i32;
        }
        if let Some(w) = self.catchup_window {
            p.catchup_window = Some(ms_duration(ms(w)));
        }
        if let Some(n) = self.max_catchup {
            p.max_catchup = n;
        }
        let retry_given =
            self.max_attempts.is_some() || self.retry_initial.is_some() || self.retry_max.is_some();
        if retry_given {
            let r = p.retry.get_or_insert_with(Default::default);
            if let Some(n) = self.max_attempts {
                r.max_attempts = n;
            }
            if let Some(d) = self.retry_initial {
                r.initial_interval = Some(ms_duration(ms(d)));
            }
            if let Some(d) = self.retry_max {
                r.max_interval = Some(ms_duration(ms(d)));
            }
        }
        if let Some(d) = self.attempt_timeout {
            p.timeouts.get_or_insert_with(Default::default).attempt_timeout = Some(ms_duration(ms(d)));
        }
        *p != before
    }
}

fn fresh_request_id() -> String {
    let now = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    format!("cli-{}-{now:x}", std::process::id())
}

fn time(t: &Option<pb::Timestamp>) -> String {
    output::timestamp(t, chrono::SecondsFormat::Secs)
}

fn status_name(v: i32) -> String {
    pb::JobStatus::try_from(v)
        .map(|s| s.as_str_name().trim_start_matches("JOB_STATUS_").to_lowercase())
        .unwrap_or_else(|_| v.to_string())
}

fn print_job(job: &pb::ScheduledJob) {
    let labels: Vec<String> = job
        .metadata
        .iter()
        .flat_map(|m| m.labels.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
    output::fields(&[
        ("id", job.id.clone()),
        ("type", job.r#type.clone()),
        (
            "owner",
            if job.owner_service.is_empty() {
                "-".into()
            } else {
                job.owner_service.clone()
            },
        ),
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

/// Runs a `kairos job` command.
pub async fn run(cmd: JobCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(args)?;
    let out = args.output;
    let fail = |s: tonic::Status| anyhow::anyhow!(describe(&s));
    let get = |id: String, stale: bool| {
        let consistency = if stale {
            pb::ReadConsistency::Stale
        } else {
            pb::ReadConsistency::Linearizable
        } as i32;
        let req = pb::GetJobRequest { id, consistency };
        let client = &client;
        async move {
            client
                .send(
                    &req,
                    |ch, r| async move { JobServiceClient::new(ch).get_job(r).await },
                )
                .await
        }
    };
    match cmd.action {
        JobAction::Create {
            id,
            fields,
            request_id,
        } => {
            let mut job = pb::ScheduledJob {
                id,
                ..Default::default()
            };
            fields.apply(&mut job)?;
            let req = pb::CreateJobRequest {
                job: Some(job),
                request_id: request_id.unwrap_or_else(fresh_request_id),
            };
            let created = client
                .send(&req, |ch, r| async move {
                    JobServiceClient::new(ch).create_job(r).await
                })
                .await
                .map_err(fail)?;
            output::print(out, &created, print_job)
        }
        JobAction::Get { id, stale } => {
            let job = get(id, stale).await.map_err(fail)?;
            output::print(out, &job, print_job)
        }
        JobAction::List {
            owner,
            job_type,
            status,
            page_size,
            page_token,
            limit,
            stale,
        } => {
            let single_page = page_token.is_some() || limit.is_some();
            let status = status.map_or(pb::JobStatus::Unspecified, |s| match s {
                StatusArg::Active => pb::JobStatus::Active,
                StatusArg::Paused => pb::JobStatus::Paused,
                StatusArg::Completed => pb::JobStatus::Completed,
            });
            let mut req = pb::ListJobsRequest {
                page_size: limit.map_or(page_size, |l| l.min(1000) as u32),
                page_token: page_token.unwrap_or_default(),
                owner_service: owner.unwrap_or_default(),
                r#type: job_type.unwrap_or_default(),
                status: status as i32,
                consistency: if stale {
                    pb::ReadConsistency::Stale
                } else {
                    pb::ReadConsistency::Linearizable
                } as i32,
            };
            let mut all = pb::ListJobsResponse::default();
            loop {
                let page = client
                    .send(&req, |ch, r| async move {
                        JobServiceClient::new(ch).list_jobs(r).await
                    })
                    .await
                    .map_err(fail)?;
                all.jobs.extend(page.jobs);
                all.next_page_token = page.next_page_token;
                if single_page || all.next_page_token.is_empty() {
                    break;
                }
                req.page_token = all.next_page_token.clone();
            }
            output::print(out, &all, |all| {
                let rows: Vec<Vec<String>> = all
                    .jobs
                    .iter()
                    .map(|j| {
                        vec![
                            j.id.clone(),
                            j.r#type.clone(),
                            if j.owner_service.is_empty() {
                                "-".into()
                            } else {
                                j.owner_service.clone()
                            },
                            j.schedule.clone(),
                            status_name(j.status),
                            time(&j.next_run),
                            j.version.to_string(),
                        ]
                    })
                    .collect();
                output::table(
                    &["ID", "TYPE", "OWNER", "SCHEDULE", "STATUS", "NEXT RUN", "VERSION"],
                    &rows,
                );
                if !all.next_page_token.is_empty() {
                    output::outln!("next page token: {}", all.next_page_token);
                }
            })
        }
        JobAction::Update { id, version, fields } => {
            let mut job = get(id, false).await.map_err(fail)?;
            if let Some(v) = version {
                job.version = v;
            }
            let mask = fields.apply(&mut job)?;
            if mask.is_empty() {
                bail!("nothing to update: give at least one field flag (see `kairos job update --help`)");
            }
            let req = pb::UpdateJobRequest {
                job: Some(job),
                update_mask: Some(FieldMask { paths: mask }),
            };
            let updated = client
                .send(&req, |ch, r| async move {
                    JobServiceClient::new(ch).update_job(r).await
                })
                .await
                .map_err(fail)?;
            output::print(out, &updated, print_job)
        }
        JobAction::Delete { id, version } => {
            let req = pb::DeleteJobRequest {
                id: id.clone(),
                version: version.unwrap_or(0),
            };
            let reply = client
                .send(&req, |ch, r| async move {
                    JobServiceClient::new(ch).delete_job(r).await
                })
                .await
                .map_err(fail)?;
            output::print(out, &reply, |_| output::outln!("deleted {id}"))
        }
        JobAction::Pause { id } => {
            let req = pb::PauseJobRequest { id };
            let job = client
                .send(&req, |ch, r| async move {
                    JobServiceClient::new(ch).pause_job(r).await
                })
                .await
                .map_err(fail)?;
            output::print(out, &job, print_job)
        }
        JobAction::Resume { id } => {
            let req = pb::ResumeJobRequest { id };
            let job = client
                .send(&req, |ch, r| async move {
                    JobServiceClient::new(ch).resume_job(r).await
                })
                .await
                .map_err(fail)?;
            output::print(out, &job, print_job)
        }
        JobAction::Trigger { id } => {
            let req = pb::TriggerJobRequest { id };
            let run = client
                .send(&req, |ch, r| async move {
                    RunServiceClient::new(ch).trigger_job(r).await
                })
                .await
                .map_err(fail)?;
            output::print(out, &run, super::run::print_run)
        }
        JobAction::Backfill {
            id,
            start,
            end,
            dry_run,
        } => {
            let req = pb::BackfillJobRequest {
                id,
                start: Some(ms_timestamp(start.timestamp_millis())),
                end: Some(ms_timestamp(end.timestamp_millis())),
                dry_run,
            };
            let reply = client
                .send(&req, |ch, r| async move {
                    RunServiceClient::new(ch).backfill_job(r).await
                })
                .await
                .map_err(fail)?;
            output::print(out, &reply, |r| {
                for t in &r.nominal_times {
                    output::outln!("{}", time(&Some(*t)));
                }
                if dry_run {
                    output::outln!("{} fire times (dry run: nothing created)", r.nominal_times.len());
                } else {
                    output::outln!(
                        "{} runs created, {} already present",
                        r.run_ids.len(),
                        r.already_present
                    );
                }
            })
        }
        JobAction::Describe { id } => {
            let req = pb::DescribeJobRequest { id, consistency: 0 };
            let d = client
                .send(&req, |ch, r| async move {
                    RunServiceClient::new(ch).describe_job(r).await
                })
                .await
                .map_err(fail)?;
            output::print(out, &d, |d| {
                if let Some(job) = &d.job {
                    print_job(job);
                }
                let c = d.counters.unwrap_or_default();
                output::outln!(
                    "counters: created {} succeeded {} failed {} timed_out {} cancelled {} skipped {} missed {} retries {}",
                    c.runs_created, c.succeeded, c.failed, c.timed_out, c.cancelled, c.skipped, c.missed, c.retries
                );
                let next: Vec<String> = d.next_fire_times.iter().map(|t| time(&Some(*t))).collect();
                output::outln!(
                    "next fires: {}",
                    if next.is_empty() {
                        "-".into()
                    } else {
                        next.join(", ")
                    }
                );
                output::outln!("recent runs:");
                super::run::print_runs(&d.recent_runs);
            })
        }
    }
}
