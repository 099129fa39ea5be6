//! `kairos job create|update|delete|pause|resume`: change a job.

use anyhow::bail;
use chrono::Utc;
use pbjson_types::FieldMask;

use super::fields::JobFields;
use super::{get_job, print_job};
use crate::cli::client::{fail, Client, Output};
use crate::cli::output;
use crate::proto as pb;
use crate::proto::job_service_client::JobServiceClient;

/// Create a job.
#[derive(clap::Args, Debug)]
pub struct Create {
    /// Job id: letters, digits, '.', '_', '-'.
    id: String,
    #[command(flatten)]
    fields: JobFields,
    /// Idempotency key (default: a fresh one, so a retried call never creates twice).
    #[arg(long)]
    request_id: Option<String>,
}

fn fresh_request_id() -> String {
    let now = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    format!("cli-{}-{now:x}", std::process::id())
}

impl Create {
    /// Sends the request and prints the answer in `out`'s format.
    pub async fn run(self, client: &Client, out: Output) -> anyhow::Result<()> {
        let mut job = pb::ScheduledJob {
            id: self.id,
            ..Default::default()
        };
        self.fields.apply(&mut job)?;
        let req = pb::CreateJobRequest {
            job: Some(job),
            request_id: self.request_id.unwrap_or_else(fresh_request_id),
        };
        let created = client
            .send(&req, |ch, r| async move {
                JobServiceClient::new(ch).create_job(r).await
            })
            .await
            .map_err(fail)?;
        output::print(out, &created, print_job)
    }
}

/// Change fields of a job.
#[derive(clap::Args, Debug)]
pub struct Update {
    /// Job id.
    id: String,
    /// Expected current version (default: the version just read).
    #[arg(long)]
    version: Option<u64>,
    #[command(flatten)]
    fields: JobFields,
}

impl Update {
    /// Sends the request and prints the answer in `out`'s format.
    pub async fn run(self, client: &Client, out: Output) -> anyhow::Result<()> {
        let mut job = get_job(client, self.id, false).await.map_err(fail)?;
        if let Some(v) = self.version {
            job.version = v;
        }
        let mask = self.fields.apply(&mut job)?;
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
}

/// Delete a job.
#[derive(clap::Args, Debug)]
pub struct Delete {
    /// Job id.
    id: String,
    /// Delete only if the job is at this version.
    #[arg(long)]
    version: Option<u64>,
    /// Delete even if other jobs run after this one (they stay, blocked).
    #[arg(long)]
    force: bool,
}

impl Delete {
    /// Sends the request and prints the answer in `out`'s format.
    pub async fn run(self, client: &Client, out: Output) -> anyhow::Result<()> {
        let req = pb::DeleteJobRequest {
            id: self.id.clone(),
            version: self.version.unwrap_or(0),
            force: self.force,
        };
        let reply = client
            .send(&req, |ch, r| async move {
                JobServiceClient::new(ch).delete_job(r).await
            })
            .await
            .map_err(fail)?;
        output::print(out, &reply, |_| output::outln!("deleted {}", self.id))
    }
}

/// Pause a job (it keeps its definition but does not fire).
#[derive(clap::Args, Debug)]
pub struct Pause {
    /// Job id.
    id: String,
}

impl Pause {
    /// Sends the request and prints the answer in `out`'s format.
    pub async fn run(self, client: &Client, out: Output) -> anyhow::Result<()> {
        set_paused(client, out, self.id, true).await
    }
}

/// Resume a paused job (paused time is not caught up).
#[derive(clap::Args, Debug)]
pub struct Resume {
    /// Job id.
    id: String,
}

impl Resume {
    /// Sends the request and prints the answer in `out`'s format.
    pub async fn run(self, client: &Client, out: Output) -> anyhow::Result<()> {
        set_paused(client, out, self.id, false).await
    }
}

/// Pauses or resumes job `id` and prints it as it now is.
async fn set_paused(client: &Client, out: Output, id: String, paused: bool) -> anyhow::Result<()> {
    let job = if paused {
        let req = pb::PauseJobRequest { id };
        client
            .send(&req, |ch, r| async move {
                JobServiceClient::new(ch).pause_job(r).await
            })
            .await
    } else {
        let req = pb::ResumeJobRequest { id };
        client
            .send(&req, |ch, r| async move {
                JobServiceClient::new(ch).resume_job(r).await
            })
            .await
    };
    output::print(out, &job.map_err(fail)?, print_job)
}
