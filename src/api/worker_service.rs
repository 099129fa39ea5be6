//! `WorkerService`: external workers register job types, long-poll for
//! tasks, heartbeat them and report their results; operators list workers
//! and job types.
//!
//! - `RegisterWorker` checks the declared types (names, schemas) and the
//!   caller's `worker:connect` on each, proposes the types that are new or
//!   changed (a `Client` write, so it is authorized again at apply and
//!   audited), and registers the worker with this node
//!   ([`ExternalWorkers`]).
//! - `PollTask` waits (at most 60 s, and never past the server's shutdown)
//!   for a task the leader's dispatcher assigned to the worker. Only the
//!   principal that registered a worker may poll it.
//! - `HeartbeatTask` extends the attempt's lease through Raft
//!   (`Heartbeat`, fenced by the token's attempt) and tells the worker
//!   whether the run was cancelled. Heartbeats are authorized here and not
//!   audited (they would flood the log).
//! - `CompleteTask` is checked here, then committed with the other results
//!   this node received meanwhile ([`super::completions`]): one `Client`
//!   write of `FinishAttempts` per credential, authorized again at apply and
//!   audited; every run's transition is its own execution record, as every
//!   assignment's is (the run's transition to `queued` names the worker).
//!
//! Task tokens ([`super::task_token`]) verify on every node, so a worker
//! whose node died heartbeats and completes through another. Errors: a
//! token the cluster never issued → `INVALID_ARGUMENT`; an attempt that is
//! no longer current (lease expired, run ended, newer attempt) →
//! `FAILED_PRECONDITION`, and nothing changes.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::auth::Caller;
use super::convert::{duration_ms, ms_duration, ms_timestamp};
use super::task_token::TaskClaim;
use super::{to_status, Api};
use crate::actors::external::{
    self, ExternalPoolMsg, Registration, WorkerView, HEARTBEAT_INTERVAL, MAX_POLL_WAIT,
};
use crate::actors::worker::{superseded, WorkItem};
use crate::error::Error;
use crate::handlers::BUILTIN_TYPES;
use crate::proto as pb;
use crate::proto::worker_service_server::WorkerService;
use crate::raft::decode;
use crate::scheduler::acl::{Permission, Resource};
use crate::scheduler::job_type::{validate_type_spec, JobTypeDef, MAX_TYPES_PER_WORKER};
use crate::scheduler::run::{AttemptOutcome, AttemptResult, MAX_OUTPUT};
use crate::scheduler::{Command, Response as CommandResponse, State};

/// Most tasks one worker may run at once.
pub const MAX_CAPACITY: u32 = 4096;
/// Longest worker name, bytes.
const MAX_WORKER_NAME: usize = 256;
/// Largest heartbeat `details`, bytes.
const MAX_DETAILS: usize = 4 * 1024;
/// Longest failure kind, bytes.
const MAX_KIND: usize = 64;
/// How long a heartbeat or result waits for this node to apply its attempt's start.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `ListWorkers` waits for each node.
const LIST_TIMEOUT_MS: u64 = 1_000;

/// The failure kind of a `TaskFailure` that names none.
pub const DEFAULT_FAILURE_KIND: &str = "worker_error";

impl Api {
    /// The claim of a task token, or `INVALID_ARGUMENT`.
    fn verify_task_token(&self, token: &[u8]) -> Result<TaskClaim, Status> {
        self.task_tokens.verify(token).map_err(to_status)
    }

    /// Waits (bounded) until this node has applied the entry that started
    /// the token's attempt: a worker may answer through a node that has not
    /// applied it yet, which would otherwise take the attempt for stale.
    async fn caught_up_with(&self, claim: &TaskClaim) -> Result<(), Status> {
        if self.node.applied_index() >= claim.fencing {
            return Ok(());
        }
        match tokio::time::timeout(CATCH_UP_TIMEOUT, self.node.applied_reached(claim.fencing)).await {
            Ok(true) => Ok(()),
            _ => Err(Status::unavailable(format!(
                "node {} has not applied the attempt's start yet; try again or another node",
                self.node.id
            ))),
        }
    }

    /// Who may answer for the token's attempt (a heartbeat or a result),
    /// and the job type it is of: once this node has applied the attempt's
    /// start, the caller must authenticate, the attempt must still be
    /// current, and the caller must hold `worker:connect` on the type.
    async fn answering_worker(&self, caller: &Caller, claim: &TaskClaim) -> Result<(String, String), Status> {
        self.caught_up_with(claim).await?;
        let state = self.node.state.read();
        let subject = self.authenticate(caller, &state, &format!("run {}", claim.run_id))?;
        let job_type = Self::current_attempt_type(&state, claim)?;
        let on = Resource::JobType(job_type.clone());
        self.check(caller, &state, &subject, Permission::WorkerConnect, &on)?;
        Ok((subject.principal, job_type))
    }

    /// Refuses an answer for an attempt that is no longer current without
    /// proposing anything, and names the job type the caller needs
    /// `worker:connect` on.
    fn current_attempt_type(state: &State, claim: &TaskClaim) -> Result<String, Status> {
        let run = state.run(claim.run_id).ok_or_else(|| {
            Status::failed_precondition(format!(
                "run {} no longer exists (its job was deleted or its history trimmed): the attempt is no longer current",
                claim.run_id
            ))
        })?;
        if run.token != claim.fencing {
            return Err(Status::failed_precondition(format!(
                "attempt {} of run {} is no longer current: attempt {} replaced it",
                claim.attempt, claim.run_id, run.attempt
            )));
        }
        Ok(state
            .job(&run.job_id)
            .map(|j| j.spec.job_type.clone())
            .unwrap_or_default())
    }

    /// The task a worker gets for `item`.
    fn task(&self, worker_id: &str, item: WorkItem) -> pb::Task {
        let claim = TaskClaim {
            run_id: item.run_id,
            fencing: item.token,
            attempt: item.attempt,
            node: self.node.id,
            worker_id: worker_id.to_string(),
        };
        pb::Task {
            task_token: self.task_tokens.issue(&claim),
            job_id: item.job_id,
            run_id: item.run_id,
            attempt: item.attempt,
            nominal_time: Some(ms_timestamp(item.nominal_ms)),
            job_type: item.job_type,
            payload: item.payload,
            deadline: Some(ms_timestamp(
                item.begin_at_ms
                    .saturating_add(i64::try_from(item.attempt_timeout_ms).unwrap_or(i64::MAX)),
            )),
            trace_context: match item.trace_parent.is_empty() {
                true => Default::default(),
                false => [("traceparent".to_string(), item.trace_parent)].into(),
            },
            idempotency_key: item.idempotency_key,
            event_id: item.event_id,
            event_payload: item.event_payload,
            heartbeat_timeout: Some(ms_duration(item.heartbeat_timeout_ms)),
        }
    }

    /// The workers of every reachable node (with the nodes that did not answer).
    async fn all_workers(&self) -> (Vec<WorkerView>, Vec<u64>) {
        let mut workers = Vec::new();
        let mut unreachable = Vec::new();
        for id in self.node.members().into_keys() {
            if id == self.node.id {
                workers.extend(self.external.list(tokio::time::Instant::now()));
                continue;
            }
            let Some(pool) = ractor::pg::get_members(&external::group(id)).into_iter().next() else {
                unreachable.push(id);
                continue;
            };
            let pool: ractor::ActorRef<ExternalPoolMsg> = pool.into();
            match ractor::call_t!(pool, ExternalPoolMsg::List, LIST_TIMEOUT_MS)
                .map(|bytes| decode::<Vec<WorkerView>>(&bytes))
            {
                Ok(Ok(list)) => workers.extend(list),
                _ => unreachable.push(id),
            }
        }
        (workers, unreachable)
    }

    /// A job type as `ListJobTypes` shows it.
    fn job_type_pb(def: &JobTypeDef, workers: &[WorkerView], unreachable_nodes: &[u64]) -> pb::JobType {
        pb::JobType {
            name: def.name.clone(),
            description: def.description.clone(),
            payload_schema: def.payload_schema.clone(),
            builtin: false,
            workers: serving(workers, &def.name),
            registered_by: def.registered_by.clone(),
            updated_at: Some(ms_timestamp(def.updated_ms)),
            unreachable_nodes: unreachable_nodes.to_vec(),
        }
    }

    /// The built-in types this build knows (and the test ones this node runs).
    pub(super) fn builtin_types_pb(&self) -> Vec<pb::JobType> {
        let mut names: Vec<(String, String)> = BUILTIN_TYPES
            .iter()
            .map(|(name, about)| (name.to_string(), about.to_string()))
            .collect();
        for name in self.registry.names() {
            if !names.iter().any(|(n, _)| n == name) {
                names.push((name.to_string(), "built in (test)".into()));
            }
        }
        names
            .into_iter()
            .map(|(name, description)| pb::JobType {
                name,
                description,
                builtin: true,
                ..pb::JobType::default()
            })
            .collect()
    }

    /// Checks that the caller may read job types (`job:read` or `worker:connect`).
    fn may_read_types(&self, caller: &Caller, state: &State) -> Result<(), Status> {
        let subject = self.authenticate(caller, state, "job types")?;
        if subject.holds(Permission::JobRead) || subject.holds(Permission::WorkerConnect) {
            return Ok(());
        }
        self.check(caller, state, &subject, Permission::JobRead, &Resource::Cluster)
    }
}

/// The ids of the workers serving `job_type`.
fn serving(workers: &[WorkerView], job_type: &str) -> Vec<String> {
    workers
        .iter()
        .filter(|w| w.job_types.iter().any(|t| t == job_type))
        .map(|w| w.worker_id.clone())
        .collect()
}

/// When the attempt `claim` names was assigned, Unix ms, as this node's
/// replica knows it (`None` when the attempt is no longer current).
fn attempt_assigned_ms(node: &crate::node::Node, claim: &TaskClaim) -> Option<i64> {
    let state = node.state.read();
    let run = state.run(claim.run_id).filter(|run| run.token == claim.fencing)?;
    run.started_at_ms
}

/// A random worker id on node `node`: `<node>-<16 hex digits>`.
fn new_worker_id(node: u64) -> String {
    format!("{node}-{:016x}", rand::random::<u64>())
}

/// Checks a registration's fields (not its permissions).
fn validate_registration(
    req: &pb::RegisterWorkerRequest,
    builtin: impl Fn(&str) -> bool,
) -> Result<(), Error> {
    if req.capacity == 0 || req.capacity > MAX_CAPACITY {
        return Err(Error::InvalidArgument(format!(
            "capacity: {} is not between 1 and {MAX_CAPACITY}",
            req.capacity
        )));
    }
    if req.worker_name.len() > MAX_WORKER_NAME {
        return Err(Error::InvalidArgument(format!(
            "worker_name: longer than {MAX_WORKER_NAME} bytes"
        )));
    }
    if req.job_types.is_empty() {
        return Err(Error::InvalidArgument(
            "job_types: at least one is required".into(),
        ));
    }
    if req.job_types.len() > MAX_TYPES_PER_WORKER {
        return Err(Error::InvalidArgument(format!(
            "job_types: {} types, at most {MAX_TYPES_PER_WORKER}",
            req.job_types.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for spec in &req.job_types {
        if !seen.insert(spec.name.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "job_types: {:?} is declared twice",
                spec.name
            )));
        }
        validate_type_spec(&spec.name, &spec.description, &spec.payload_schema, &builtin)?;
    }
    Ok(())
}

/// The outcome a `CompleteTask` reports, with its output; sizes checked.
fn outcome_of(result: Option<pb::complete_task_request::Result>) -> Result<(AttemptOutcome, String), Error> {
    let too_long =
        |field: &str| Error::InvalidArgument(format!("{field}: longer than {MAX_OUTPUT} bytes (64 KiB)"));
    match result {
        None => Err(Error::InvalidArgument(
            "result: success or failure is required".into(),
        )),
        Some(pb::complete_task_request::Result::Success(success)) => {
            if success.output.len() > MAX_OUTPUT {
                return Err(too_long("success.output"));
            }
            Ok((AttemptOutcome::Succeeded, success.output))
        }
        Some(pb::complete_task_request::Result::Failure(failure)) => {
            if failure.message.len() > MAX_OUTPUT {
                return Err(too_long("failure.message"));
            }
            if failure.output.len() > MAX_OUTPUT {
                return Err(too_long("failure.output"));
            }
            if failure.kind.len() > MAX_KIND {
                return Err(Error::InvalidArgument(format!(
                    "failure.kind: longer than {MAX_KIND} bytes"
                )));
            }
            let kind = if failure.kind.is_empty() {
                DEFAULT_FAILURE_KIND.to_string()
            } else {
                failure.kind
            };
            let outcome = AttemptOutcome::Failed {
                kind,
                message: failure.message,
                retryable: !failure.non_retryable,
            };
            Ok((outcome, failure.output))
        }
    }
}

/// A stale attempt's error as the worker gets it: `FAILED_PRECONDITION`.
fn stale(status: Status) -> Status {
    match status.code() {
        tonic::Code::NotFound => {
            Status::failed_precondition(format!("{}: the attempt is no longer current", status.message()))
        }
        _ => status,
    }
}

#[tonic::async_trait]
impl WorkerService for Api {
    async fn register_worker(
        &self,
        request: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let caller = self.caller(&request, "RegisterWorker").await;
        self.observed(caller.method, async {
            let req = request.into_inner();
            let resource = format!(
                "worker {}",
                req.job_types
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let (principal, changed) = {
                let state = self.node.state.read();
                let subject = self.authenticate(&caller, &state, &resource)?;
                validate_registration(&req, |name| self.registry.is_builtin(name)).map_err(to_status)?;
                for spec in &req.job_types {
                    self.check(
                        &caller,
                        &state,
                        &subject,
                        Permission::WorkerConnect,
                        &Resource::JobType(spec.name.clone()),
                    )?;
                }
                let changed: Vec<JobTypeDef> = req
                    .job_types
                    .iter()
                    .filter(|spec| {
                        state.job_type(&spec.name).is_none_or(|stored| {
                            stored.description != spec.description
                                || stored.payload_schema != spec.payload_schema
                        })
                    })
                    .map(|spec| JobTypeDef {
                        name: spec.name.clone(),
                        description: spec.description.clone(),
                        payload_schema: spec.payload_schema.clone(),
                        registered_by: String::new(),
                        updated_ms: 0,
                    })
                    .collect();
                (subject.principal, changed)
            };
            if !changed.is_empty() {
                let command = Command::RegisterJobTypes { types: changed };
                self.client_write(&caller, &resource, "", Ok(command)).await?;
            }
            let worker_id = new_worker_id(self.node.id);
            let name = if req.worker_name.is_empty() {
                format!("{principal}@{}", caller.source)
            } else {
                req.worker_name
            };
            let registration = Registration {
                name,
                principal,
                job_types: req.job_types.into_iter().map(|t| t.name).collect(),
                capacity: req.capacity,
            };
            self.external.register(
                worker_id.clone(),
                registration,
                tokio::time::Instant::now(),
                chrono::Utc::now().timestamp_millis(),
            );
            tracing::info!(worker = %worker_id, node = self.node.id, "external worker registered");
            Ok(Response::new(pb::RegisterWorkerResponse {
                worker_id,
                heartbeat_interval: Some(ms_duration(HEARTBEAT_INTERVAL.as_millis() as u64)),
                node_id: self.node.id,
            }))
        })
        .await
    }

    async fn poll_task(
        &self,
        request: Request<pb::PollTaskRequest>,
    ) -> Result<Response<pb::PollTaskResponse>, Status> {
        let caller = self.caller(&request, "PollTask").await;
        self.observed(caller.method, async {
            let req = request.into_inner();
            let wait = match &req.wait {
                Some(wait) => Duration::from_millis(duration_ms(wait, "wait").map_err(to_status)?),
                None => MAX_POLL_WAIT,
            }
            .min(MAX_POLL_WAIT);
            {
                let state = self.node.state.read();
                let resource = format!("worker {}", req.worker_id);
                // Authenticated first: whether a worker id exists is not
                // told to a caller without a credential.
                let subject = self.authenticate(&caller, &state, &resource)?;
                let (owner, registered) = self.external.describe(&req.worker_id).map_err(to_status)?;
                if subject.principal != owner {
                    return Err(self.refused(
                        &caller,
                        &state,
                        &resource,
                        "",
                        Error::PermissionDenied(format!(
                            "{} cannot poll worker {:?}: {owner} registered it",
                            subject.principal, req.worker_id
                        )),
                    ));
                }
                if let Some(extra) = req.job_types.iter().find(|t| !registered.contains(t)) {
                    return Err(Status::invalid_argument(format!(
                        "job_types: worker {:?} did not register {extra:?}",
                        req.worker_id
                    )));
                }
                let polled = if req.job_types.is_empty() {
                    &registered
                } else {
                    &req.job_types
                };
                for job_type in polled {
                    self.check(
                        &caller,
                        &state,
                        &subject,
                        Permission::WorkerConnect,
                        &Resource::JobType(job_type.clone()),
                    )?;
                }
            }
            let deadline = tokio::time::Instant::now() + wait;
            let item = loop {
                let opened = self
                    .external
                    .open_poll(&req.worker_id, req.job_types.clone(), tokio::time::Instant::now())
                    .map_err(to_status)?;
                let item = match opened {
                    Ok(item) => item,
                    Err(receiver) => {
                        tokio::select! {
                            item = receiver => match item {
                                Ok(item) => item,
                                Err(_) => break None,
                            },
                            _ = tokio::time::sleep_until(deadline) => break None,
                            _ = self.shutdown.cancelled() => break None,
                        }
                    }
                };
                // A task this node's replica already knows is moot (its run
                // was cancelled within the look-ahead, deleted, or given to
                // a newer attempt) is not handed out.
                match superseded(&self.node, &item) {
                    None => break Some(item),
                    Some(why) => tracing::info!(
                        run = item.run_id,
                        token = item.token,
                        "task not handed out: {why}"
                    ),
                }
            };
            self.external.touch(&req.worker_id, tokio::time::Instant::now());
            if let Some(item) = item.as_ref().filter(|item| item.attempt == 1) {
                let lateness_ms = chrono::Utc::now()
                    .timestamp_millis()
                    .saturating_sub(item.nominal_ms)
                    .max(0);
                self.metrics.observe_fire_lateness(
                    &self.node.state,
                    &item.job_id,
                    Duration::from_millis(lateness_ms as u64),
                );
            }
            Ok(Response::new(pb::PollTaskResponse {
                task: item.map(|item| self.task(&req.worker_id, item)),
            }))
        })
        .await
    }

    async fn heartbeat_task(
        &self,
        request: Request<pb::HeartbeatTaskRequest>,
    ) -> Result<Response<pb::HeartbeatTaskResponse>, Status> {
        let caller = self.caller(&request, "HeartbeatTask").await;
        self.observed(caller.method, async {
            let req = request.into_inner();
            let claim = self.verify_task_token(&req.task_token)?;
            if req.details.len() > MAX_DETAILS {
                return Err(Status::invalid_argument(format!(
                    "details: longer than {MAX_DETAILS} bytes"
                )));
            }
            let (principal, _) = self.answering_worker(&caller, &claim).await?;
            if claim.node == self.node.id {
                self.external.touch(&claim.worker_id, tokio::time::Instant::now());
            }
            if !req.details.is_empty() {
                tracing::debug!(run = claim.run_id, attempt = claim.attempt, details = %String::from_utf8_lossy(&req.details), "task heartbeat");
            }
            let command = Command::Heartbeat {
                run_id: claim.run_id,
                token: claim.fencing,
            };
            match self.node.write_fenced(&principal, command).await {
                Ok(CommandResponse::Lease { cancelled }) => Ok(Response::new(pb::HeartbeatTaskResponse {
                    cancel_requested: cancelled,
                })),
                Ok(other) => Err(Status::internal(format!("unexpected state machine reply {other:?}"))),
                Err(e) => Err(stale(to_status(e))),
            }
        })
        .await
    }

    async fn complete_task(
        &self,
        request: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CompleteTaskResponse>, Status> {
        let caller = self.caller(&request, "CompleteTask").await;
        self.observed(caller.method, async {
            let req = request.into_inner();
            let claim = self.verify_task_token(&req.task_token)?;
            let (outcome, output) = outcome_of(req.result).map_err(to_status)?;
            let (principal, job_type) = self.answering_worker(&caller, &claim).await?;
            let label = outcome.label();
            let result = AttemptResult {
                run_id: claim.run_id,
                token: claim.fencing,
                outcome,
                output_tail: output,
            };
            let call = caller.context(self.node.id, format!("run {}", claim.run_id), String::new());
            let assigned_ms = attempt_assigned_ms(&self.node, &claim);
            self.completions.complete(call, principal, result).await?;
            self.metrics.observe_attempt(&job_type, &label);
            if let Some(assigned_ms) = assigned_ms {
                let elapsed_ms = chrono::Utc::now().timestamp_millis().saturating_sub(assigned_ms);
                self.metrics
                    .observe_attempt_duration(&job_type, Duration::from_millis(elapsed_ms.max(0) as u64));
            }
            Ok(Response::new(pb::CompleteTaskResponse {}))
        })
        .await
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let caller = self.caller(&request, "ListWorkers").await;
        self.observed(caller.method, async {
            {
                let state = self.node.state.read();
                self.authorize(&caller, &state, Permission::ClusterRead, &Resource::Cluster)?;
            }
            let (workers, unreachable_nodes) = self.all_workers().await;
            let now_ms = chrono::Utc::now().timestamp_millis();
            let in_flight = {
                let state = self.node.state.read();
                let mut counts = std::collections::BTreeMap::<String, u32>::new();
                for run in state.active_runs() {
                    if let Some(worker) = &run.worker {
                        *counts.entry(worker.clone()).or_default() += 1;
                    }
                }
                counts
            };
            let workers = workers
                .into_iter()
                .map(|w| pb::Worker {
                    in_flight: in_flight.get(&w.worker_id).copied().unwrap_or(0),
                    last_seen: Some(ms_timestamp(now_ms.saturating_sub(w.silent_ms as i64))),
                    registered_at: Some(ms_timestamp(w.registered_ms)),
                    worker_id: w.worker_id,
                    worker_name: w.name,
                    node_id: w.node,
                    job_types: w.job_types,
                    capacity: w.capacity,
                    principal: w.principal,
                })
                .collect();
            Ok(Response::new(pb::ListWorkersResponse {
                workers,
                unreachable_nodes,
            }))
        })
        .await
    }

    async fn list_job_types(
        &self,
        request: Request<pb::ListJobTypesRequest>,
    ) -> Result<Response<pb::ListJobTypesResponse>, Status> {
        let caller = self.caller(&request, "ListJobTypes").await;
        self.observed(caller.method, async {
            let (workers, unreachable) = self.all_workers().await;
            let external: Vec<pb::JobType> = self
                .read(pb::ReadConsistency::Linearizable as i32, |state| {
                    self.may_read_types(&caller, state)?;
                    Ok(state
                        .job_types()
                        .map(|def| Self::job_type_pb(def, &workers, &unreachable))
                        .collect())
                })
                .await?;
            let mut job_types = self.builtin_types_pb();
            job_types.extend(external);
            Ok(Response::new(pb::ListJobTypesResponse { job_types }))
        })
        .await
    }

    async fn get_job_type(
        &self,
        request: Request<pb::GetJobTypeRequest>,
    ) -> Result<Response<pb::JobType>, Status> {
        let caller = self.caller(&request, "GetJobType").await;
        self.observed(caller.method, async {
            let name = request.into_inner().name;
            let (workers, unreachable) = self.all_workers().await;
            let builtin = self.builtin_types_pb().into_iter().find(|t| t.name == name);
            self.read(pb::ReadConsistency::Linearizable as i32, |state| {
                self.may_read_types(&caller, state)?;
                if let Some(builtin) = builtin {
                    return Ok(Response::new(builtin));
                }
                state
                    .job_type(&name)
                    .map(|def| Response::new(Self::job_type_pb(def, &workers, &unreachable)))
                    .ok_or_else(|| {
                        Status::not_found(format!("job type {name:?} not found: no worker registered it"))
                    })
            })
            .await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, schema: &str) -> pb::JobTypeSpec {
        pb::JobTypeSpec {
            name: name.into(),
            description: String::new(),
            payload_schema: schema.into(),
        }
    }

    #[test]
    fn registrations_are_checked_field_by_field() {
        let builtin = |n: &str| n == "http";
        let good = pb::RegisterWorkerRequest {
            worker_name: "w".into(),
            job_types: vec![spec("billing.charge", r#"{"type":"object"}"#)],
            capacity: 4,
        };
        assert!(validate_registration(&good, builtin).is_ok());
        let cases = [
            (
                pb::RegisterWorkerRequest {
                    capacity: 0,
                    ..good.clone()
                },
                "capacity",
            ),
            (
                pb::RegisterWorkerRequest {
                    capacity: 5000,
                    ..good.clone()
                },
                "capacity",
            ),
            (
                pb::RegisterWorkerRequest {
                    job_types: vec![],
                    ..good.clone()
                },
                "at least one",
            ),
            (
                pb::RegisterWorkerRequest {
                    job_types: vec![spec("a", ""), spec("a", "")],
                    ..good.clone()
                },
                "declared twice",
            ),
            (
                pb::RegisterWorkerRequest {
                    job_types: vec![spec("http", "")],
                    ..good.clone()
                },
                "built-in",
            ),
            (
                pb::RegisterWorkerRequest {
                    job_types: vec![spec("a", "{nope")],
                    ..good.clone()
                },
                "payload_schema",
            ),
        ];
        for (request, says) in cases {
            let error = validate_registration(&request, builtin).unwrap_err().to_string();
            assert!(error.contains(says), "{error}");
        }
    }

    #[test]
    fn results_are_checked_and_default_their_kind() {
        use pb::complete_task_request::Result as R;
        assert!(outcome_of(None)
            .unwrap_err()
            .to_string()
            .contains("success or failure"));
        let (outcome, output) =
            outcome_of(Some(R::Success(pb::TaskSuccess { output: "ok".into() }))).unwrap();
        assert_eq!((outcome, output.as_str()), (AttemptOutcome::Succeeded, "ok"));
        let failure = pb::TaskFailure {
            message: "boom".into(),
            non_retryable: true,
            kind: String::new(),
            output: String::new(),
        };
        let (outcome, _) = outcome_of(Some(R::Failure(failure))).unwrap();
        assert_eq!(
            outcome,
            AttemptOutcome::Failed {
                kind: DEFAULT_FAILURE_KIND.into(),
                message: "boom".into(),
                retryable: false
            }
        );
        let big = "x".repeat(MAX_OUTPUT + 1);
        let error = outcome_of(Some(R::Success(pb::TaskSuccess { output: big }))).unwrap_err();
        assert!(error.to_string().contains("64 KiB"), "{error}");
    }
}
