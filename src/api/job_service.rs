//! `JobService`: create, read, list, update, delete, pause and resume jobs.
//!
//! Writes are validated here, then proposed through [`Node::write`] (which
//! forwards to the leader); their result is the state machine's. Reads go
//! through [`Api::read`]: the read barrier, then this node's applied state.

use tonic::{Request, Response, Status};

use super::convert::{job_to_pb, patch_from_pb, spec_from_pb, status_filter};
use super::read::page_size;
use super::{principal, to_status, Api};
use crate::error::Error;
use crate::node::Node;
use crate::proto as pb;
use crate::proto::job_service_server::JobService;
use crate::scheduler::validate::{validate_id, validate_patch, validate_request_id, validate_spec};
use crate::scheduler::{Command, JobFilter, Response as CommandResponse};

fn job_reply(response: CommandResponse) -> Result<Response<pb::ScheduledJob>, Status> {
    match response {
        CommandResponse::Job(job) => Ok(Response::new(job_to_pb(&job))),
        other => Err(Status::internal(format!(
            "unexpected state machine reply {other:?}"
        ))),
    }
}

async fn write(node: &Node, principal: &str, command: Command) -> Result<CommandResponse, Status> {
    let name = command.name();
    let result = node.write(principal, command).await;
    if let Err(e) = &result {
        tracing::debug!(command = name, error = %e, "write refused");
    }
    result.map_err(to_status)
}

/// `NOT_FOUND` for job `id`.
pub(super) fn job_not_found(id: &str) -> Status {
    to_status(Error::NotFound(format!("job {id:?} not found")))
}

pub(super) fn required_id(id: &str) -> Result<(), Status> {
    validate_id(id).map_err(to_status)
}

impl Api {
    /// Checks the job type and payload an update leaves the job with.
    fn validate_handler_patch(&self, id: &str, patch: &crate::scheduler::JobPatch) -> Result<(), Status> {
        if patch.job_type.is_none() && patch.payload.is_none() {
            return Ok(());
        }
        let (job_type, payload) = {
            let state = self.node.state.read();
            let current = state.job(id);
            let job_type = patch
                .job_type
                .clone()
                .or_else(|| current.map(|j| j.spec.job_type.clone()));
            let payload = patch
                .payload
                .clone()
                .or_else(|| current.map(|j| j.spec.payload.clone()));
            (job_type.unwrap_or_default(), payload.unwrap_or_default())
        };
        self.registry
            .validate(&job_type, &payload)
            .map_err(Status::invalid_argument)
    }

    async fn set_paused(
        &self,
        method: &str,
        principal: &str,
        id: String,
        paused: bool,
    ) -> Result<Response<pb::ScheduledJob>, Status> {
        self.observed(method, async {
            required_id(&id)?;
            job_reply(write(&self.node, principal, Command::SetPaused { id, paused }).await?)
        })
        .await
    }
}

#[tonic::async_trait]
impl JobService for Api {
    async fn create_job(
        &self,
        request: Request<pb::CreateJobRequest>,
    ) -> Result<Response<pb::ScheduledJob>, Status> {
        self.observed("CreateJob", async {
            let principal = principal(&request);
            let req = request.into_inner();
            let job = req.job.ok_or_else(|| Status::invalid_argument("job: required"))?;
            required_id(&job.id)?;
            validate_request_id(&req.request_id).map_err(to_status)?;
            let spec = spec_from_pb(&job).map_err(to_status)?;
            validate_spec(&spec).map_err(to_status)?;
            self.check_create_at(&spec, &req.request_id)?;
            self.registry
                .validate(&spec.job_type, &spec.payload)
                .map_err(Status::invalid_argument)?;
            let request_id = (!req.request_id.is_empty()).then_some(req.request_id);
            let command = Command::CreateJob {
                id: job.id,
                spec,
                request_id,
            };
            job_reply(write(&self.node, &principal, command).await?)
        })
        .await
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::ScheduledJob>, Status> {
        self.observed("GetJob", async {
            let req = request.into_inner();
            required_id(&req.id)?;
            self.read(req.consistency, |state| {
                let job = state.job(&req.id).ok_or_else(|| job_not_found(&req.id))?;
                Ok(Response::new(job_to_pb(job)))
            })
            .await
        })
        .await
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        self.observed("ListJobs", async {
            let req = request.into_inner();
            let filter = JobFilter {
                owner_service: (!req.owner_service.is_empty()).then_some(req.owner_service),
                job_type: (!req.r#type.is_empty()).then_some(req.r#type),
                status: status_filter(req.status).map_err(to_status)?,
            };
            let token = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
            self.read(req.consistency, |state| {
                let page = state.list(&filter, token, page_size(req.page_size));
                Ok(Response::new(pb::ListJobsResponse {
                    jobs: page.jobs.iter().map(job_to_pb).collect(),
                    next_page_token: page.next_page_token.unwrap_or_default(),
                }))
            })
            .await
        })
        .await
    }

    async fn update_job(
        &self,
        request: Request<pb::UpdateJobRequest>,
    ) -> Result<Response<pb::ScheduledJob>, Status> {
        self.observed("UpdateJob", async {
            let principal = principal(&request);
            let req = request.into_inner();
            let job = req.job.ok_or_else(|| Status::invalid_argument("job: required"))?;
            required_id(&job.id)?;
            if job.version == 0 {
                return Err(Status::invalid_argument(
                    "job.version: required (the version you read) for optimistic concurrency",
                ));
            }
            let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
            let patch = patch_from_pb(&job, &mask).map_err(to_status)?;
            validate_patch(&patch).map_err(to_status)?;
            self.check_update_at(&job.id, &patch)?;
            self.validate_handler_patch(&job.id, &patch)?;
            let command = Command::UpdateJob {
                id: job.id,
                expected_version: job.version,
                patch,
            };
            job_reply(write(&self.node, &principal, command).await?)
        })
        .await
    }

    async fn delete_job(
        &self,
        request: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::DeleteJobResponse>, Status> {
        self.observed("DeleteJob", async {
            let principal = principal(&request);
            let req = request.into_inner();
            required_id(&req.id)?;
            let command = Command::DeleteJob {
                id: req.id,
                expected_version: (req.version != 0).then_some(req.version),
            };
            write(&self.node, &principal, command).await?;
            Ok(Response::new(pb::DeleteJobResponse {}))
        })
        .await
    }

    async fn pause_job(
        &self,
        request: Request<pb::PauseJobRequest>,
    ) -> Result<Response<pb::ScheduledJob>, Status> {
        let principal = principal(&request);
        self.set_paused("PauseJob", &principal, request.into_inner().id, true)
            .await
    }

    async fn resume_job(
        &self,
        request: Request<pb::ResumeJobRequest>,
    ) -> Result<Response<pb::ScheduledJob>, Status> {
        let principal = principal(&request);
        self.set_paused("ResumeJob", &principal, request.into_inner().id, false)
            .await
    }
}
