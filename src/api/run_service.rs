//! `RunService`: trigger, backfill and describe jobs; list, get and cancel runs.
//!
//! Like `JobService`, writes go through [`crate::node::Node::write`] and reads
//! through [`Api::read`] (the read barrier first). A backfill's dry run only
//! reads.

use chrono::{DateTime, Utc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{counters_to_pb, ms_timestamp, run_status_filter, run_to_pb, timestamp_ms};
use super::job_service::{job_resource, job_view, required_id};
use super::read::page_size;
use super::watch::{watch_runs, Position, PositionReached, Reader};
use super::{to_status, Api};
use crate::error::Error;
use crate::proto as pb;
use crate::proto::run_service_server::RunService;
use crate::scheduler::acl::{Permission, Resource, Subject};
use crate::scheduler::{Command, Job, Response as CommandResponse, Run, RunFilter, RunId, Schedule, State};

/// Fire times shown by `DescribeJob`.
const DESCRIBE_NEXT_FIRES: usize = 10;
/// Runs shown by `DescribeJob`.
const DESCRIBE_RECENT_RUNS: usize = 10;

fn required_time(t: Option<pb::Timestamp>, field: &str) -> Result<i64, Status> {
    t.map(|t| timestamp_ms(&t))
        .ok_or_else(|| Status::invalid_argument(format!("{field}: required")))
}

/// The run a state machine reply carries.
/// The resource a run is, for permission checks: its job (owner as stored now).
fn run_resource(state: &State, run: &Run) -> Resource {
    let owner = state
        .job(&run.job_id)
        .map_or("", |j| j.spec.owner_service.as_str());
    Resource::job(&run.job_id, owner)
}

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
fn describe(state: &State, subject: &Subject, job: &Job) -> Result<Response<pb::JobDescription>, Status> {
    let id = job.id.as_str();
    let mut recent: Vec<pb::Run> = state.job_runs(id).map(run_to_pb).collect();
    recent.reverse();
    recent.truncate(DESCRIBE_RECENT_RUNS);
    Ok(Response::new(pb::JobDescription {
        job: Some(job_view(Some(subject), job)),
        next_fire_times: next_fire_times(job),
        recent_runs: recent,
        counters: Some(counters_to_pb(&state.counters(id).cloned().unwrap_or_default())),
        blocked: state.blocked_reason(job).unwrap_or_default(),
    }))
}

impl Api {
    /// The reply to a write that returns a run.
    fn run_reply(reply: CommandResponse) -> Result<Response<pb::Run>, Status> {
        match reply {
            CommandResponse::Run(run) => Ok(Response::new(run_to_pb(&run))),
            other => Err(Status::internal(format!(
                "unexpected state machine reply {other:?}"
            ))),
        }
    }
}

#[tonic::async_trait]
impl RunService for Api {
    async fn trigger_job(
        &self,
        request: Request<pb::TriggerJobRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let caller = self.caller(&request, "TriggerJob").await;
        self.observed(caller.method, async {
            let id = request.into_inner().id;
            let command = required_id(&id).map(|_| Command::TriggerJob { id: id.clone() });
            Self::run_reply(self.client_write(&caller, &id, "", command).await?)
        })
        .await
    }

    async fn backfill_job(
        &self,
        request: Request<pb::BackfillJobRequest>,
    ) -> Result<Response<pb::BackfillJobResponse>, Status> {
        let caller = self.caller(&request, "BackfillJob").await;
        self.observed(caller.method, async {
            let req = request.into_inner();
            required_id(&req.id)?;
            let start_ms = required_time(req.start, "start")?;
            let end_ms = required_time(req.end, "end")?;
            // Validate and list the times here, so a bad range never reaches the log.
            let times = self
                .read(pb::ReadConsistency::Linearizable as i32, |state| {
                    let resource = state
                        .job(&req.id)
                        .map_or_else(|| Resource::job(&req.id, ""), job_resource);
                    self.authorize(&caller, state, Permission::JobTrigger, &resource)?;
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
                id: req.id.clone(),
                start_ms,
                end_ms,
            };
            match self.client_write(&caller, &req.id, "", Ok(command)).await? {
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
        let caller = self.caller(&request, "DescribeJob").await;
        self.observed(caller.method, async {
            let req = request.into_inner();
            required_id(&req.id)?;
            self.read(req.consistency, |state| {
                let (subject, job) = self.readable_job(&caller, state, &req.id)?;
                describe(state, &subject, job)
            })
            .await
        })
        .await
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let caller = self.caller(&request, "ListRuns").await;
        self.observed(caller.method, async {
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
                let subject = self.authenticate(&caller, state, filter.job_id.as_deref().unwrap_or(""))?;
                if !subject.holds(Permission::RunRead) {
                    self.check(&caller, state, &subject, Permission::RunRead, &Resource::Cluster)?;
                }
                let (runs, next) = state.list_runs(&filter, after, page_size(req.page_size));
                Ok(Response::new(pb::ListRunsResponse {
                    runs: runs
                        .iter()
                        .filter(|run| subject.allows(Permission::RunRead, &run_resource(state, run)))
                        .map(run_to_pb)
                        .collect(),
                    next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
                }))
            })
            .await
        })
        .await
    }

    async fn get_run(&self, request: Request<pb::GetRunRequest>) -> Result<Response<pb::Run>, Status> {
        let caller = self.caller(&request, "GetRun").await;
        self.observed(caller.method, async {
            let req = request.into_inner();
            self.read(req.consistency, |state| {
                let run = state.run(req.id);
                let resource = run.map_or_else(|| Resource::job("", ""), |r| run_resource(state, r));
                self.authorize(&caller, state, Permission::RunRead, &resource)?;
                let run =
                    run.ok_or_else(|| to_status(Error::NotFound(format!("run {} not found", req.id))))?;
                Ok(Response::new(run_to_pb(run)))
            })
            .await
        })
        .await
    }

    async fn cancel_run(&self, request: Request<pb::CancelRunRequest>) -> Result<Response<pb::Run>, Status> {
        let caller = self.caller(&request, "CancelRun").await;
        self.observed(caller.method, async {
            let run_id = request.into_inner().id;
            let resource = format!("run {run_id}");
            Self::run_reply(
                self.client_write(&caller, &resource, "", Ok(Command::CancelRun { run_id }))
                    .await?,
            )
        })
        .await
    }

    type WatchRunsStream = ReceiverStream<Result<pb::RunEvent, Status>>;

    async fn watch_runs(
        &self,
        request: Request<pb::WatchRunsRequest>,
    ) -> Result<Response<Self::WatchRunsStream>, Status> {
        let caller = self.caller(&request, "WatchRuns").await;
        self.observed(caller.method, async {
            let req = request.into_inner();
            {
                let state = self.node.state.read();
                let subject = self.authenticate(&caller, &state, &req.job_id)?;
                if !subject.holds(Permission::RunRead) {
                    self.check(&caller, &state, &subject, Permission::RunRead, &Resource::Cluster)?;
                }
            }
            let slot = self.watches.take()?;
            let job = (!req.job_id.is_empty()).then_some(req.job_id);
            let after = req.after.map(Position::from_pb);
            let ahead = after
                .filter(|p| p.revision > self.node.applied_index())
                .map(|p| -> PositionReached { Box::pin(self.node.applied_reached(p.revision)) });
            let reader = Reader {
                credential: caller.credential.clone(),
            };
            Ok(Response::new(watch_runs(
                self.node.state.clone(),
                reader,
                job,
                after,
                ahead,
                slot,
                self.shutdown.clone(),
            )))
        })
        .await
    }
}
