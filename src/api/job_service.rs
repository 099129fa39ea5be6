//! `JobService`: create, read, list, update, delete, pause and resume jobs.
//!
//! Writes are validated here, then go through [`Api::client_write`]: the
//! caller is authenticated and authorized (`job:write`, and `job:exec` for
//! `exec` jobs, on the job's owner and id), and the command is proposed as
//! theirs; its result is the state machine's. Reads go through
//! [`Api::read`] (the read barrier) and need `job:read` on each job they
//! return; a list returns only the jobs the caller may read. Secret payload
//! values read as `<redacted>` without `job:secrets`
//! ([`crate::handlers::secrets`]), and an update that writes `<redacted>`
//! back keeps the stored value.

use tonic::{Request, Response, Status};

use super::auth::Caller;
use super::convert::{job_to_pb, patch_from_pb, spec_from_pb, status_filter};
use super::read::page_size;
use super::{to_status, Api};
use crate::error::Error;
use crate::handlers::secrets;
use crate::proto as pb;
use crate::proto::job_service_server::JobService;
use crate::scheduler::acl::{AclTables, Permission, Resource, Subject};
use crate::scheduler::job_type::validate_payload;
use crate::scheduler::validate::{validate_id, validate_patch, validate_request_id, validate_spec};
use crate::scheduler::{Command, Job, JobFilter, JobPatch, Response as CommandResponse, State};

/// `NOT_FOUND` for job `id`.
pub(super) fn job_not_found(id: &str) -> Status {
    to_status(Error::NotFound(format!("job {id:?} not found")))
}

pub(super) fn required_id(id: &str) -> Result<(), Status> {
    validate_id(id).map_err(to_status)
}

/// The resource a stored job is, for permission checks.
pub(super) fn job_resource(job: &Job) -> Resource {
    Resource::job(&job.id, &job.spec.owner_service)
}

/// `job` as `subject` may see it: secret values redacted without `job:secrets`.
pub(super) fn job_view(subject: Option<&Subject>, job: &Job) -> pb::ScheduledJob {
    let mut pb = job_to_pb(job);
    if !subject.is_some_and(|s| s.allows(Permission::JobSecrets, &job_resource(job))) {
        pb.payload = secrets::redact(&job.spec.job_type, &pb.payload);
    }
    pb
}

impl Api {
    /// Checks the job type and payload an update leaves the job with.
    fn validate_handler_patch(&self, id: &str, patch: &JobPatch) -> Result<(), Status> {
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
        self.validate_payload(&job_type, &payload)
    }

    /// Checks a job's payload for its type: a built-in handler's own
    /// check, or the JSON Schema an external worker registered the type
    /// with. A type neither knows is refused.
    fn validate_payload(&self, job_type: &str, payload: &[u8]) -> Result<(), Status> {
        let state = self.node.state.read();
        self.registry
            .validate_with_external(job_type, payload, |name| {
                state.job_type(name).map(|def| validate_payload(def, payload))
            })
            .map_err(Status::invalid_argument)
    }

    /// Puts back the stored secret values an update wrote as `<redacted>`.
    fn restore_secrets(&self, id: &str, patch: &mut JobPatch) {
        let Some(payload) = &patch.payload else { return };
        let state = self.node.state.read();
        let Some(stored) = state.job(id) else { return };
        let job_type = patch.job_type.as_deref().unwrap_or(&stored.spec.job_type);
        patch.payload = Some(secrets::restore(job_type, payload, &stored.spec.payload));
    }

    /// The reply to a write that returns a job, as the caller may see it.
    fn job_reply(
        &self,
        caller: &Caller,
        response: CommandResponse,
    ) -> Result<Response<pb::ScheduledJob>, Status> {
        match response {
            CommandResponse::Job(job) => {
                let state = self.node.state.read();
                let subject = state
                    .resolve(&caller.credential, chrono::Utc::now().timestamp_millis())
                    .ok();
                Ok(Response::new(job_view(subject.as_ref(), &job)))
            }
            other => Err(Status::internal(format!(
                "unexpected state machine reply {other:?}"
            ))),
        }
    }

    async fn set_paused(
        &self,
        caller: Caller,
        id: String,
        paused: bool,
    ) -> Result<Response<pb::ScheduledJob>, Status> {
        self.observed(caller.method, async {
            let command = required_id(&id).map(|_| Command::SetPaused {
                id: id.clone(),
                paused,
            });
            let reply = self.client_write(&caller, &id, "", command).await?;
            self.job_reply(&caller, reply)
        })
        .await
    }

    /// A job by id for a reader: `NOT_FOUND`, or `PERMISSION_DENIED` without
    /// `job:read` on it (a job that does not exist is checked by its id).
    pub(super) fn readable_job<'s>(
        &self,
        caller: &Caller,
        state: &'s State,
        id: &str,
    ) -> Result<(Subject, &'s Job), Status> {
        let resource = state.job(id).map_or_else(|| Resource::job(id, ""), job_resource);
        let subject = self.authorize(caller, state, Permission::JobRead, &resource)?;
        let job = state.job(id).ok_or_else(|| job_not_found(id))?;
        Ok((subject, job))
    }
}

#[tonic::async_trait]
impl JobService for Api {
    async fn create_job(
        &self,
        request: Request<pb::CreateJobRequest>,
    ) -> Result<Response<pb::ScheduledJob>, Status> {
        let caller = self.caller(&request, "CreateJob").await;
        self.observed(caller.method, async {
            let req = request.into_inner();
            let id = req.job.as_ref().map(|j| j.id.clone()).unwrap_or_default();
            let command = (|| {
                let job = req
                    .job
                    .as_ref()
                    .ok_or_else(|| Status::invalid_argument("job: required"))?;
                required_id(&job.id)?;
                validate_request_id(&req.request_id).map_err(to_status)?;
                let spec = spec_from_pb(job).map_err(to_status)?;
                validate_spec(&spec).map_err(to_status)?;
                self.check_create_at(&spec, &req.request_id)?;
                self.validate_payload(&spec.job_type, &spec.payload)?;
                Ok(Command::CreateJob {
                    id: job.id.clone(),
                    spec,
                    request_id: (!req.request_id.is_empty()).then(|| req.request_id.clone()),
                })
            })();
            let reply = self.client_write(&caller, &id, &req.request_id, command).await?;
            self.job_reply(&caller, reply)
        })
        .await
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::ScheduledJob>, Status> {
        let caller = self.caller(&request, "GetJob").await;
        self.observed(caller.method, async {
            let req = request.into_inner();
            required_id(&req.id)?;
            self.read(req.consistency, |state| {
                let (subject, job) = self.readable_job(&caller, state, &req.id)?;
                Ok(Response::new(job_view(Some(&subject), job)))
            })
            .await
        })
        .await
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = self.caller(&request, "ListJobs").await;
        self.observed(caller.method, async {
            let req = request.into_inner();
            let filter = JobFilter {
                owner_service: (!req.owner_service.is_empty()).then_some(req.owner_service),
                job_type: (!req.r#type.is_empty()).then_some(req.r#type),
                status: status_filter(req.status).map_err(to_status)?,
            };
            let token = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
            self.read(req.consistency, |state| {
                let subject = self.authenticate(&caller, state, "")?;
                if !subject.holds(Permission::JobRead) {
                    self.check(&caller, state, &subject, Permission::JobRead, &Resource::Cluster)?;
                }
                let page = state.list(&filter, token, page_size(req.page_size));
                Ok(Response::new(pb::ListJobsResponse {
                    jobs: page
                        .jobs
                        .iter()
                        .filter(|job| subject.allows(Permission::JobRead, &job_resource(job)))
                        .map(|job| job_view(Some(&subject), job))
                        .collect(),
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
        let caller = self.caller(&request, "UpdateJob").await;
        self.observed(caller.method, async {
            let req = request.into_inner();
            let id = req.job.as_ref().map(|j| j.id.clone()).unwrap_or_default();
            // The patch is completed and checked against this node's copy of
            // the job (redacted secrets restored, the payload validated for
            // the job's type), so that copy must hold every write acknowledged
            // before this call: a follower that had not yet applied the
            // create it forwarded would see no job, check the payload against
            // no type and store the redaction marker as the secret.
            self.node
                .read_barrier(crate::node::Consistency::Linearizable)
                .await
                .map_err(to_status)?;
            let command = (|| {
                let job = req
                    .job
                    .as_ref()
                    .ok_or_else(|| Status::invalid_argument("job: required"))?;
                required_id(&job.id)?;
                if job.version == 0 {
                    return Err(Status::invalid_argument(
                        "job.version: required (the version you read) for optimistic concurrency",
                    ));
                }
                let mask = req.update_mask.clone().map(|m| m.paths).unwrap_or_default();
                let mut patch = patch_from_pb(job, &mask).map_err(to_status)?;
                self.restore_secrets(&job.id, &mut patch);
                validate_patch(&patch).map_err(to_status)?;
                self.check_update_at(&job.id, &patch)?;
                self.validate_handler_patch(&job.id, &patch)?;
                Ok(Command::UpdateJob {
                    id: job.id.clone(),
                    expected_version: job.version,
                    patch,
                })
            })();
            let reply = self.client_write(&caller, &id, "", command).await?;
            self.job_reply(&caller, reply)
        })
        .await
    }

    async fn delete_job(
        &self,
        request: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::DeleteJobResponse>, Status> {
        let caller = self.caller(&request, "DeleteJob").await;
        self.observed(caller.method, async {
            let req = request.into_inner();
            let command = required_id(&req.id).map(|_| Command::DeleteJob {
                id: req.id.clone(),
                expected_version: (req.version != 0).then_some(req.version),
            });
            self.client_write(&caller, &req.id, "", command).await?;
            Ok(Response::new(pb::DeleteJobResponse {}))
        })
        .await
    }

    async fn pause_job(
        &self,
        request: Request<pb::PauseJobRequest>,
    ) -> Result<Response<pb::ScheduledJob>, Status> {
        let caller = self.caller(&request, "PauseJob").await;
        self.set_paused(caller, request.into_inner().id, true).await
    }

    async fn resume_job(
        &self,
        request: Request<pb::ResumeJobRequest>,
    ) -> Result<Response<pb::ScheduledJob>, Status> {
        let caller = self.caller(&request, "ResumeJob").await;
        self.set_paused(caller, request.into_inner().id, false).await
    }
}
