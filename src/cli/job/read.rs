//! `kairos job get|list|describe`: show jobs.
//!
//! `describe` (table output) also looks up the job's type when it is not a
//! built-in one, to say when no worker serves it, or when the cluster does
//! not know it at all — the two reasons a job's runs stay pending that its
//! own fields do not show. The lookup never fails the describe, and the
//! JSON output is the `JobDescription` alone.

use super::{consistency, get_job, owner, print_job, status_name, time};
use crate::cli::client::{fail, Client, Output};
use crate::cli::job_type::{describe_hint, lookup_type, type_needs_lookup};
use crate::cli::output;
use crate::proto as pb;
use crate::proto::job_service_client::JobServiceClient;
use crate::proto::run_service_client::RunServiceClient;

/// Show a job.
#[derive(clap::Args, Debug)]
pub struct Get {
    /// Job id.
    id: String,
    /// Read this node's possibly stale state instead of a linearizable read.
    #[arg(long)]
    stale: bool,
}

impl Get {
    /// Sends the request and prints the answer in `out`'s format.
    pub async fn run(self, client: &Client, out: Output) -> anyhow::Result<()> {
        let job = get_job(client, self.id, self.stale).await.map_err(fail)?;
        output::print(out, &job, print_job)
    }
}

/// `--status` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum StatusArg {
    Active,
    Paused,
    Completed,
}

/// List jobs (all pages unless --page-token or --limit is given).
#[derive(clap::Args, Debug)]
pub struct List {
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
}

impl List {
    /// Sends the request and prints the answer in `out`'s format.
    pub async fn run(self, client: &Client, out: Output) -> anyhow::Result<()> {
        let single_page = self.page_token.is_some() || self.limit.is_some();
        let status = self.status.map_or(pb::JobStatus::Unspecified, |s| match s {
            StatusArg::Active => pb::JobStatus::Active,
            StatusArg::Paused => pb::JobStatus::Paused,
            StatusArg::Completed => pb::JobStatus::Completed,
        });
        let mut req = pb::ListJobsRequest {
            page_size: self.limit.map_or(self.page_size, |l| l.min(1000) as u32),
            page_token: self.page_token.unwrap_or_default(),
            owner_service: self.owner.unwrap_or_default(),
            r#type: self.job_type.unwrap_or_default(),
            status: status as i32,
            consistency: consistency(self.stale),
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
        output::print(out, &all, print_jobs)
    }
}

/// Prints a page of jobs as a table, with its next page token.
fn print_jobs(all: &pb::ListJobsResponse) {
    let rows: Vec<Vec<String>> = all
        .jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                j.r#type.clone(),
                owner(j),
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
}

/// A job with its next fire times, counters and recent runs.
#[derive(clap::Args, Debug)]
pub struct Describe {
    /// Job id.
    id: String,
}

impl Describe {
    /// Sends the request and prints the answer in `out`'s format.
    pub async fn run(self, client: &Client, out: Output) -> anyhow::Result<()> {
        let req = pb::DescribeJobRequest {
            id: self.id,
            consistency: 0,
        };
        let description = client
            .send(&req, |ch, r| async move {
                RunServiceClient::new(ch).describe_job(r).await
            })
            .await
            .map_err(fail)?;
        let job_type = description.job.as_ref().map_or("", |j| j.r#type.as_str());
        let hint = if out == Output::Table && type_needs_lookup(job_type) {
            describe_hint(job_type, &lookup_type(client, job_type).await)
        } else {
            None
        };
        output::print(out, &description, |d| print_description(d, hint.as_deref()))
    }
}

/// Prints a job description: the job, the `hint` about its type (see
/// [`describe_hint`]), its counters, next fires and recent runs.
fn print_description(d: &pb::JobDescription, hint: Option<&str>) {
    if let Some(job) = &d.job {
        print_job(job);
    }
    if let Some(hint) = hint {
        output::outln!("{hint}");
    }
    if !d.blocked.is_empty() {
        output::outln!("{}", d.blocked);
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
    crate::cli::run::print_runs(&d.recent_runs);
}
