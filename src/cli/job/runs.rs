//! `kairos job trigger|backfill`: make runs of a job.

use chrono::{DateTime, Utc};

use super::time;
use crate::api::convert::ms_timestamp;
use crate::cli::client::{fail, Client, Output};
use crate::cli::output;
use crate::proto as pb;
use crate::proto::run_service_client::RunServiceClient;

/// Run a job now.
#[derive(clap::Args, Debug)]
pub struct Trigger {
    /// Job id.
    id: String,
}

impl Trigger {
    /// Sends the request and prints the answer in `out`'s format.
    pub async fn run(self, client: &Client, out: Output) -> anyhow::Result<()> {
        let req = pb::TriggerJobRequest { id: self.id };
        let run = client
            .send(&req, |ch, r| async move {
                RunServiceClient::new(ch).trigger_job(r).await
            })
            .await
            .map_err(fail)?;
        output::print(out, &run, crate::cli::run::print_run)
    }
}

/// Create runs for the job's fire times in [--start, --end).
#[derive(clap::Args, Debug)]
pub struct Backfill {
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
}

impl Backfill {
    /// Sends the request and prints the answer in `out`'s format.
    pub async fn run(self, client: &Client, out: Output) -> anyhow::Result<()> {
        let req = pb::BackfillJobRequest {
            id: self.id,
            start: Some(ms_timestamp(self.start.timestamp_millis())),
            end: Some(ms_timestamp(self.end.timestamp_millis())),
            dry_run: self.dry_run,
        };
        let reply = client
            .send(&req, |ch, r| async move {
                RunServiceClient::new(ch).backfill_job(r).await
            })
            .await
            .map_err(fail)?;
        output::print(out, &reply, |r| print_backfill(r, self.dry_run))
    }
}

/// Prints the fire times of a backfill and what it created.
fn print_backfill(r: &pb::BackfillJobResponse, dry_run: bool) {
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
}
