//! `RunService`: trigger, backfill and describe jobs; list, get and cancel runs.
//!
//! Like `JobService`, writes go through [`crate::node::Node::write`] and reads
//! through [`Api::read`] (the read barrier first). A backfill's dry run only
//! reads.

use chrono::{DateTime, Utc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{counters_to_pb, job_to_pb, ms_timestamp, run_status_filter, run_to_pb, timestamp_ms};
use super::job_service::{job_not_found, required_id};
use super::read::page_size;
use super::watch::{watch_runs, Position, PositionReached};
use super::{principal, to_status, Api};
use crate::error::Error;
use crate::proto as pb;
use crate::proto::run_service_server::RunService;
use crate::scheduler::{Command, Job, Response as CommandResponse, RunFilter, RunId, Schedule, State};

/// Fire times shown by `DescribeJob`.
const DESCRIBE_NEXT_FIRES: usize = 10;
/// Runs shown by `DescribeJob`.
const DESCRIBE_RECENT_RUNS: usize = 10;

fn required_time(t: Option<pb::Timestamp>, field: &str) -> Result<i64, Status> {
    t.map(|t| timestamp_ms(&t))
        .ok_or_else(|| Status::invalid_argument(format!("{field}: required")))
}

/// The run a state machine reply carries.
fn run_reply(reply: CommandResponse) -> Result<Response<pb::Run>, Status> {
    match reply {
        CommandResponse::Run(run) => Ok(Response::new(run_to_pb(&run))),
        other => Err(Status::internal(format!(
            "unexpected state machine reply {other:?}"
        ))),
    }
}

/// `run_id` as stored, or `NOT_FOUND`.
fn stored_run(state: &State, run_id: RunId) -> Result<Response<pb::Run>, Status> {
    let run = state
        .run(run_id)
        .ok_or_else(|| to_status(Error::NotFound(format!("run {run_id} not found"))))?;
    Ok(Response::new(run_to_pb(run)))
}

/// The next fire times `DescribeJob` shows for `job` (none while paused).
fn next_fire_times(job: &Job) -> Vec<pb::Timestamp> {
    match (
        job.spec.paused,
        job.next_fire_ms,
        Schedule::compile(&job.spec.schedule),
    ) {
        (false, Some(next), Ok(schedule)) => {
            let first = DateTime::<Utc>::from_timestamp_millis(next);
            let rest = first
                .map(|f| schedule.upcoming(f, DESCRIBE_NEXT_FIRES - 1))
                .unwrap_or_default();
            first
                .into_iter()
                .chain(rest)
                .map(|t| ms_timestamp(t.timestamp_millis()))
                .collect()
        }
        _ => vec![],
    }
}

/// `DescribeJob`'s answer for job `id`, from `state`.
fn describe(state: &State, id: &str) -> Result<Response<pb::JobDescription>, Status> {
    let job = state.job(id).ok_or_else(|| job_not_found(id))?;
    let mut recent: Vec<pb::Run> = state.job_runs(id).map(run_to_pb).collect();
    recent.reverse();
    recent.truncate(DESCRIBE_RECENT_RUNS);
    Ok(Response::new(pb::JobDescription {
        job: Some(job_to_pb(job)),
        next_fire_times: next_fire_times(job),
        recent_runs: recent,
        counters: Some(counters_to_pb(&state.counters(id).cloned().unwrap_or_default())),
    }))
}

#[tonic::async_trait]
impl RunService for Api {
    async fn trigger_job(
        &self,
        request: Request<pb::TriggerJobRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        self.observed("TriggerJob", async {
            let principal = principal(&request);
            let id = request.into_inner().id;
            required_id(&id)?;
            run_reply(
                self.node
                    .write(&principal, Command::TriggerJob { id })
                    .await
                    .map_err(to_status)?,
            )
        })
        .await
    }

    async fn backfill_job(
        &self,
        request: Request<pb::BackfillJobRequest>,
    ) -> Result<Response<pb::BackfillJobResponse>, Status> {
        self.observed("BackfillJob", async {
            let principal = principal(&request);
            let req = request.into_inner();
            required_id(&req.id)?;
            let start_ms = required_time(req.start, "start")?;
            let end_ms = required_time(req.end, "end")?;
            // Validate and list the times here, so a bad range never reaches the log.
            let times = self
                .read(pb::ReadConsistency::Linearizable as i32, |state| {
                    state.backfill_times(&req.id, start_ms, end_ms).map_err(to_status)
                })
                .await?;
            let nominal_times = times.iter().map(|t| ms_timestamp(*t)).collect();
            if req.dry_run {
                return Ok(Response::new(pb::BackfillJobResponse {
                    nominal_times,
                    run_ids: vec![],
                    already_present: 0,
                }));
            }
            let command = Command::Backfill {
                id: req.id,
                start_ms,
                end_ms,
            };
            match self.node.write(&principal, command).await.map_err(to_status)? {
                CommandResponse::Fired { created, refused } => Ok(Response::new(pb::BackfillJobResponse {
                    nominal_times,
                    run_ids: created,
                    already_present: refused,
                })),
                other => Err(Status::internal(format!(
                    "unexpected state machine reply {other:?}"
                ))),
            }
        })
        .await
    }

    async fn describe_job(
        &self,
        request: Request<pb::DescribeJobRequest>,
    ) -> Result<Response<pb::JobDescription>, Status> {
        self.observed("DescribeJob", async {
            let req = request.into_inner();
            required_id(&req.id)?;
            self.read(req.consistency, |state| describe(state, &req.id)).await
        })
        .await
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        self.observed("ListRuns", async {
            let req = request.into_inner();
            let filter = RunFilter {
                job_id: (!req.job_id.is_empty()).then_some(req.job_id),
                status: run_status_filter(req.status).map_err(to_status)?,
                nominal_after: req.nominal_after.map(|t| timestamp_ms(&t)),
                nominal_before: req.nominal_before.map(|t| timestamp_ms(&t)),
            };
            let after = match req.page_token.as_str() {
                "" => None,
                token => Some(
                    token
                        .parse::<RunId>()
                        .map_err(|_| Status::invalid_argument("page_token: not a token from ListRuns"))?,
                ),
            };
            self.read(req.consistency, |state| {
                let (runs, next) = state.list_runs(&filter, after, page_size(req.page_size));
                Ok(Response::new(pb::ListRunsResponse {
                    runs: runs.iter().map(run_to_pb).collect(),
                    next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
                }))
            })
            .await
        })
        .await
    }

    async fn get_run(&self, request: Request<pb::GetRunRequest>) -> Result<Response<pb::Run>, Status> {
        self.observed("GetRun", async {
            let req = request.into_inner();
            self.read(req.consistency, |state| stored_run(state, req.id))
                .await
        })
        .await
    }

    async fn cancel_run(&self, request: Request<pb::CancelRunRequest>) -> Result<Response<pb::Run>, Status> {
        self.observed("CancelRun", async {
            let principal = principal(&request);
            let run_id = request.into_inner().id;
            run_reply(
                self.node
                    .write(&principal, Command::CancelRun { run_id })
                    .await
                    .map_err(to_status)?,
            )
        })
        .await
    }

    type WatchRunsStream = ReceiverStream<Result<pb::RunEvent, Status>>;

    async fn watch_runs(
        &self,
        request: Request<pb::WatchRunsRequest>,
    ) -> Result<Response<Self::WatchRunsStream>, Status> {
        self.observed("WatchRuns", async {
            let req = request.into_inner();
            let job = (!req.job_id.is_empty()).then_some(req.job_id);
            let after = req.after.map(Position::from_pb);
            let ahead = after
                .filter(|p| p.revision > self.node.applied_index())
                .map(|p| -> PositionReached { Box::pin(self.node.applied_reached(p.revision)) });
            Ok(Response::new(watch_runs(
                self.node.state.clone(),
                job,
                after,
                ahead,
                self.shutdown.clone(),
            )))
        })
        .await
    }
}
