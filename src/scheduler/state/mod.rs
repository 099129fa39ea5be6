//! The replicated state and the one function that changes it.
//!
//! [`State::apply`] takes a [`Request`] — a [`Command`] plus the leader's clock
//! reading and the caller's principal, both stamped *before* the entry entered
//! the Raft log — and returns a [`CommandResult`]. Every replica applies the same
//! log, so the function must be deterministic: no clock, no randomness, no hash
//! map iteration, no I/O. It also reports which runs it changed ([`Changes`]),
//! for run watchers.
//!
//! `apply` remembers write ids and hands each command to one method, found
//! by concept in the child modules:
//! - `jobs`: creating, updating, pausing and deleting jobs, and listing them;
//! - `requests`: what a create's `request_id` remembers for a day;
//! - `runs`: runs and their indexes — fires, triggers, backfills, overlap,
//!   history retention, and the dispatcher's queue;
//! - `attempts`: attempts of a run — starts with fencing tokens, leases,
//!   results, retries with back-off, expiry and cancellation;
//! - `workers`: job types registered by external workers, the external
//!   worker of each attempt, and the type globs of roles;
//! - `image`: the replicated content without its derived indexes (what a
//!   snapshot holds), for each format it was stored in.
//!
//! Invariants kept here:
//! - A job id names at most one job; `version` rises by one on every change.
//! - An update or delete that names a version other than the stored one changes
//!   nothing and fails with [`Error::Aborted`].
//! - A create carrying a `request_id` seen in the last 24 h returns the first
//!   result when the body is the same and fails with [`Error::AlreadyExists`]
//!   when it differs: a client retrying after a timeout never creates twice.
//! - `next_fire_ms` is computed from the time in the command, never
//!   retroactively: a schedule change or a resume fires only after its own time.
//! - A write carrying a `write_id` seen in the last [`WRITE_ID_TTL_MS`] is not
//!   applied again: it answers with the first result.
//! - The derived indexes (fire index, deadlines, the dispatcher's queue, runs
//!   by job and status) always equal what [`State::from_image`] rebuilds from
//!   the replicated content.
//!
//! IMPLEMENTATION CAVEATS: validation of field formats happens before proposing
//! (see `validate`), not here, so that a newer binary replaying an old log never
//! refuses what an older one accepted. Everything lives in memory; the storage
//! layer (`raft::state_machine`) makes it durable as snapshot plus log.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::audit::{AuditLog, SYSTEM_PRINCIPAL};
use super::command::{Command, CommandResult, Request, Response};
use super::job::{Job, JobId};
use super::run::{JobCounters, Run, RunId};
use super::schedule::ScheduleMemo;
use crate::error::Error;

mod attempts;
mod image;
mod integration;
mod jobs;
mod requests;
mod runs;
mod security;
mod workers;

pub use image::{
    Image, LegacyStateImage, SecurityImage, StateImage, V3StateImage, V4StateImage, V5StateImage,
};
pub use integration::{
    event_body_hash, trigger_matches, EventRecord, IntegrationImage, Join, Published, SinkDef, EVENT_TTL_MS,
    JOIN_TTL_MS,
};
pub use jobs::{next_fire, JobFilter, JobPage};
pub use requests::{body_hash, request_key, LegacyRequestRecord, RequestKey, RequestRecord};
pub use runs::{RunFilter, MAX_BACKFILL_RUNS, MAX_PENDING_RUNS};
pub use security::{AclState, RunTransition, EXEC_JOB_TYPE};
pub use workers::{ExternalAttempt, WorkersImage};

#[cfg(test)]
mod ahead_tests;
#[cfg(test)]
mod attempts_tests;
#[cfg(test)]
mod integration_tests;
#[cfg(test)]
mod runs_tests;
#[cfg(test)]
mod security_tests;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod workers_tests;

/// How long a create's `request_id` is remembered, ms (24 h).
pub const REQUEST_ID_TTL_MS: i64 = 24 * 3_600_000;
/// How long the result of a write with a `write_id` is remembered, ms: long
/// enough to outlast every retry of the node that routes it (a few seconds),
/// short enough that the records stay few.
pub const WRITE_ID_TTL_MS: i64 = 60_000;
/// Largest page a list returns.
pub const MAX_PAGE_SIZE: usize = 1_000;
/// Page size when the client names none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Most jobs one page may examine: a filter that matches little returns a
/// short (even empty) page with a continuation token instead of scanning
/// everything under the state lock.
pub const MAX_SCAN_PER_PAGE: usize = 50_000;

/// What applied commands changed that someone outside the state follows:
/// the runs, for `WatchRuns`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Runs created, changed or removed.
    pub runs: BTreeSet<RunId>,
    /// Log index of the entry being applied; stamped on every run it changes.
    pub index: u64,
    /// Run status changes of the request being applied, not yet in the
    /// audit log (`apply` appends them at the end of each request).
    pub transitions: Vec<RunTransition>,
}

/// What a `write_id` remembers: the first entry's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriteRecord {
    /// When it was applied, Unix ms (for expiry).
    pub at_ms: i64,
    /// Its result, returned again to a retry.
    pub result: CommandResult,
}

/// `result` as its encoding keeps it: the runs it holds without the fields
/// kept apart from a run's encoding (its external worker and trigger), so
/// that a write record reads the same before and after a snapshot.
fn as_encoded(result: CommandResult) -> CommandResult {
    fn strip(run: &mut super::run::Run) {
        run.worker = None;
        run.trigger = None;
    }
    result.map(|response| match response {
        Response::Run(mut run) => {
            strip(&mut run);
            Response::Run(run)
        }
        Response::Started(mut runs) => {
            runs.iter_mut().for_each(strip);
            Response::Started(runs)
        }
        Response::Batch(results) => Response::Batch(results.into_iter().map(as_encoded).collect()),
        other => other,
    })
}

/// A map of replicated content. Persistent (structure-shared) so that a
/// [`StateImage`] of the whole state is taken in O(1) and encoded for a
/// snapshot on another thread while the state machine goes on applying:
/// mutations copy only the nodes the image still shares.
pub type Table<K, V> = imbl::OrdMap<K, V>;

/// The whole replicated state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// Every job, by id. Behind an `Arc` so that a map node copied after an
    /// image was taken copies pointers, not jobs, and so that the nodes,
    /// sized for 16 entries, waste pointers rather than whole jobs.
    jobs: Table<JobId, Arc<Job>>,
    /// Remembered create request ids, by key (see [`requests`]).
    requests: Table<RequestKey, RequestRecord>,
    /// `(at_ms, key)` of every record in `requests`, oldest first (derived).
    request_expiry: BTreeSet<(i64, RequestKey)>,
    /// Results of recent writes, by write id.
    writes: Table<String, WriteRecord>,
    /// `(at_ms, write_id)` of every record in `writes`, oldest first (derived).
    write_expiry: BTreeSet<(i64, String)>,
    /// Every run still kept, by id.
    runs: Table<RunId, Run>,
    /// The id the next run gets.
    next_run_id: RunId,
    /// Per-job counters (kept after history retention drops runs).
    counters: Table<JobId, JobCounters>,
    /// `(next_fire_ms, job id)` of every job that can fire (not paused) — the
    /// timer's earliest-next-fire index (derived).
    fire_index: BTreeSet<(i64, JobId)>,
    /// Run ids of each job (derived).
    runs_by_job: BTreeMap<JobId, BTreeSet<RunId>>,
    /// `(deadline_ms, run id)` of every run with a lease, time limit or start
    /// deadline the timer must enforce (derived).
    deadline_index: BTreeSet<(i64, RunId)>,
    /// The deadline each run is filed under in `deadline_index` (derived): a
    /// run's deadline depends on its job's policies, which can change or
    /// vanish before the run does, so removal uses what was filed.
    filed_deadline: BTreeMap<RunId, i64>,
    /// `(not_before_ms, run id)` of every pending run: the dispatcher's
    /// queue, in the order runs may start (derived).
    pending_order: BTreeSet<(i64, RunId)>,
    /// Pending run ids of each job, oldest first (derived).
    pending_by_job: BTreeMap<JobId, BTreeSet<RunId>>,
    /// Queued or running run ids of each job (derived).
    active_by_job: BTreeMap<JobId, BTreeSet<RunId>>,
    /// Succeeded run ids of each job, oldest first (derived): what history
    /// retention trims, without walking every kept run of the job.
    succeeded_by_job: BTreeMap<JobId, BTreeSet<RunId>>,
    /// Run ids of each job that ended any other way, oldest first (derived).
    ended_otherwise_by_job: BTreeMap<JobId, BTreeSet<RunId>>,
    /// Compiled schedules of recent fires (a memo, not state).
    schedules: ScheduleMemo,
    /// Roles, tokens and bindings.
    acl: AclState,
    /// Accessor id of each token by its secret's hash (derived).
    token_by_hash: BTreeMap<[u8; 32], String>,
    /// The audit log.
    audit: AuditLog,
    /// Registered job types, external attempts and role type globs.
    workers: WorkersImage,
    /// Published events, run triggers, dependency joins, sinks, role topic globs.
    integration: IntegrationImage,
    /// Indexes derived from the jobs and `integration`.
    index: integration::IntegrationIndex,
    /// The recorded cluster version (`crate::cluster_version`). Not part of
    /// the image: a snapshot carries it after the image, and only once it
    /// is above 0.1 (see `raft::state_machine`).
    cluster_version: crate::cluster_version::Version,
    /// How many audit entries this replica keeps: a local setting given at
    /// start (`--audit-retain`), not replicated; 0 means the default.
    audit_retain: u64,
    /// The deliberately broken build's setting: a local setting given at
    /// start, not replicated (see `crate::chaos_break`).
    #[cfg(feature = "chaos-break")]
    chaos_break: Option<crate::chaos_break::ChaosBreak>,
}

impl State {
    /// Breaks this replica as `chaos_break` says (the chaos suite's broken
    /// build); `None` keeps it whole.
    #[cfg(feature = "chaos-break")]
    pub fn set_chaos_break(&mut self, chaos_break: Option<crate::chaos_break::ChaosBreak>) {
        self.chaos_break = chaos_break;
    }

    /// Applies one command, the entry at log index `index`; the result is the
    /// same on every replica.
    pub fn apply(&mut self, index: u64, request: &Request, changes: &mut Changes) -> CommandResult {
        changes.index = index;
        self.expire_writes(request.at_ms);
        let Some(write_id) = &request.write_id else {
            return self.apply_request(index, request, changes);
        };
        // A retry of a write that was applied already: its first result.
        if let Some(record) = self.writes.get(write_id) {
            return record.result.clone();
        }
        let result = self.apply_request(index, request, changes);
        let record = WriteRecord {
            at_ms: request.at_ms,
            result: as_encoded(result.clone()),
        };
        self.writes.insert(write_id.clone(), record);
        self.write_expiry.insert((request.at_ms, write_id.clone()));
        result
    }

    /// Forgets write records older than [`WRITE_ID_TTL_MS`] at time `at_ms`.
    fn expire_writes(&mut self, at_ms: i64) {
        let cutoff = at_ms.saturating_sub(WRITE_ID_TTL_MS);
        while self.write_expiry.first().is_some_and(|(t, _)| *t < cutoff) {
            let (_, id) = self.write_expiry.pop_first().expect("first exists");
            self.writes.remove(&id);
        }
    }

    /// Hands the command to the method that applies it.
    /// Applies one request and appends the audit entries of what it did:
    /// a client's call is recorded by `apply_client`; the run transitions
    /// of the cluster's own commands are attributed to the system.
    fn apply_request(&mut self, index: u64, request: &Request, changes: &mut Changes) -> CommandResult {
        let at_ms = request.at_ms;
        let result = match &request.command {
            Command::Client { call, command } => {
                return self.apply_client(index, at_ms, call, command, changes)
            }
            Command::Batch { requests } => Ok(self.apply_batch(index, requests, changes)),
            command => self.apply_command(index, at_ms, &request.principal, command, changes),
        };
        self.audit_transitions(SYSTEM_PRINCIPAL, at_ms, changes);
        result
    }

    /// Applies one command on behalf of `principal` (already authorized).
    fn apply_command(
        &mut self,
        index: u64,
        at_ms: i64,
        principal: &str,
        command: &Command,
        changes: &mut Changes,
    ) -> CommandResult {
        match command {
            Command::CreateJob { id, spec, request_id } => {
                self.create_job(id, spec, request_id.as_deref(), at_ms, principal)
            }
            Command::UpdateJob {
                id,
                expected_version,
                patch,
            } => self.update_job(id, *expected_version, patch, at_ms, principal, changes),
            Command::DeleteJob { id, expected_version } => self.delete_job(id, *expected_version, changes),
            Command::SetPaused { id, paused } => self.set_paused(id, *paused, at_ms, principal, changes),
            Command::FireBatch { fires } => Ok(self.fire_batch(fires, at_ms, at_ms, changes)),
            Command::FireWindow { fires, until_ms } => self.fire_window(fires, *until_ms, at_ms, changes),
            Command::TriggerJob { id } => self.trigger(id, at_ms, changes),
            Command::Backfill { id, start_ms, end_ms } => {
                self.backfill(id, *start_ms, *end_ms, at_ms, changes)
            }
            Command::StartAttempt {
                run_id,
                node,
                attempt,
            } => self.start_attempt(*run_id, *node, *attempt, index, at_ms, changes),
            Command::StartAttempts { starts } => Ok(self.start_attempts(starts, index, at_ms, changes)),
            Command::Heartbeat { run_id, token } => self.heartbeat(*run_id, *token, at_ms, changes),
            Command::FinishAttempt {
                run_id,
                token,
                outcome,
                output_tail,
            } => self.finish_attempt(*run_id, *token, outcome, output_tail, at_ms, changes),
            Command::FinishAttempts { results } => Ok(self.finish_attempts(results, at_ms, changes)),
            Command::ExpireRuns { run_ids } => Ok(self.expire_runs(run_ids, at_ms, changes)),
            Command::CancelRun { run_id } => self.cancel_run(*run_id, at_ms, changes),
            Command::Batch { .. } | Command::Client { .. } => Err(Error::InvalidArgument(format!(
                "a {} cannot be nested",
                command.name()
            ))),
            Command::AclBootstrap { token } => self.acl_bootstrap(token, at_ms, principal),
            Command::CreateRole { role } => self.create_role(role, at_ms, principal),
            Command::DeleteRole { name } => self.delete_role(name),
            Command::CreateToken { token } => self.create_token(token, at_ms, principal),
            Command::RevokeToken { accessor_id } => self.revoke_token(accessor_id),
            Command::CreateBinding { binding } => self.create_binding(binding),
            Command::DeleteBinding { binding } => self.delete_binding(binding),
            Command::RecordAudit { records } => self.record_audit(records, at_ms),
            Command::RegisterJobTypes { types } => self.register_job_types(types, at_ms, principal),
            Command::AssignAttempts { starts } => Ok(self.assign_attempts(starts, index, at_ms, changes)),
            Command::CreateRoleScoped { role, types } => {
                self.create_role_scoped(role, types, at_ms, principal)
            }
            Command::PublishEvent {
                topic,
                attributes,
                payload,
                idempotency_key,
            } => self.publish_event(
                topic,
                attributes,
                payload,
                idempotency_key,
                at_ms,
                principal,
                changes,
            ),
            Command::ForceDeleteJob { id, expected_version } => {
                self.force_delete_job(id, *expected_version, changes)
            }
            Command::CreateSink { sink } => self.create_sink(sink, at_ms, principal),
            Command::DeleteSink { name } => self.delete_sink(name),
            Command::AckSink { name, position } => self.ack_sink(name, *position),
            Command::CreateRoleWithScopes { role, types, topics } => {
                self.create_role_with_scopes(role, types, topics, at_ms, principal)
            }
            Command::SetClusterVersion { version } => {
                self.cluster_version = self.cluster_version.max(*version);
                Ok(Response::Empty)
            }
        }
    }

    /// `Batch`: each request applied on its own, in order; a batch inside a
    /// batch is refused.
    fn apply_batch(&mut self, index: u64, requests: &[Request], changes: &mut Changes) -> Response {
        let results = requests
            .iter()
            .map(|request| match request.command {
                Command::Batch { .. } => Err(Error::InvalidArgument("a batch cannot contain a batch".into())),
                _ => self.apply(index, request, changes),
            })
            .collect();
        Response::Batch(results)
    }

    /// The recorded cluster version (0.1 when none was recorded).
    pub fn cluster_version(&self) -> crate::cluster_version::Version {
        self.cluster_version
    }

    /// Sets the recorded cluster version: from a snapshot's trailer, which
    /// the image does not hold.
    pub fn set_cluster_version(&mut self, version: crate::cluster_version::Version) {
        self.cluster_version = version;
    }

    /// The next run id, as stored.
    pub fn next_run_id(&self) -> RunId {
        self.next_run_id
    }

    /// A job's counters (`None` before its first run, or once it is deleted).
    pub fn counters(&self, job_id: &str) -> Option<&JobCounters> {
        self.counters.get(job_id)
    }

    /// Every job's counters, by job id.
    pub fn counters_iter(&self) -> impl Iterator<Item = (&JobId, &JobCounters)> {
        self.counters.iter()
    }

    /// Every kept run, by id.
    pub fn runs(&self) -> impl Iterator<Item = &Run> {
        self.runs.values()
    }

    /// Every kept run, the most recently created first.
    pub fn runs_newest_first(&self) -> impl Iterator<Item = &Run> {
        self.runs.values().rev()
    }

    /// A run by id.
    pub fn run(&self, id: RunId) -> Option<&Run> {
        self.runs.get(&id)
    }

    /// Runs queued or running (on any node), by job.
    pub fn active_runs(&self) -> impl Iterator<Item = &Run> {
        self.active_by_job
            .values()
            .flatten()
            .filter_map(|id| self.runs.get(id))
    }

    /// Number of runs waiting to be dispatched.
    pub fn pending_count(&self) -> usize {
        self.pending_order.len()
    }

    /// How many runs of each job wait to be dispatched, for the jobs that
    /// have any (from the dispatch index: no pass over the runs).
    pub fn pending_counts(&self) -> impl Iterator<Item = (&JobId, usize)> {
        self.pending_by_job.iter().map(|(job, runs)| (job, runs.len()))
    }

    /// The earliest time a run waiting to be dispatched may start (its
    /// `not_before_ms`, the nominal time for a first attempt), Unix ms.
    pub fn oldest_pending_due_ms(&self) -> Option<i64> {
        self.pending_order.first().map(|(due, _)| *due)
    }

    /// When the job last succeeded as far as its kept runs tell: the latest
    /// `finished_at_ms` of its kept succeeded runs (history retention keeps
    /// the newest `keep_succeeded` of them), Unix ms.
    pub fn last_success_ms(&self, job_id: &str) -> Option<i64> {
        self.succeeded_by_job
            .get(job_id)?
            .iter()
            .filter_map(|id| self.runs.get(id)?.finished_at_ms)
            .max()
    }

    /// The runs of a job that have not finished (pending, queued or
    /// running), oldest first: from the dispatch indexes, without walking
    /// the job's kept history.
    pub fn open_runs(&self, job_id: &str) -> impl Iterator<Item = &Run> {
        let pending = self.pending_by_job.get(job_id).into_iter().flatten();
        let active = self.active_by_job.get(job_id).into_iter().flatten();
        let mut ids: Vec<RunId> = pending.chain(active).copied().collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|id| self.runs.get(&id))
    }

    /// The runs of a job, oldest first.
    pub fn job_runs(&self, job_id: &str) -> impl Iterator<Item = &Run> {
        self.runs_by_job
            .get(job_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.runs.get(id))
    }

    /// The earliest next fire of any job that can fire.
    pub fn earliest_fire(&self) -> Option<i64> {
        self.fire_index.first().map(|(t, _)| *t)
    }

    /// Jobs due at `at_ms` with the next fire the timer should name, at most `limit`.
    pub fn due_fires(&self, at_ms: i64, limit: usize) -> Vec<(JobId, i64)> {
        self.fire_index
            .iter()
            .take_while(|(t, _)| *t <= at_ms)
            .take(limit)
            .map(|(t, id)| (id.clone(), *t))
            .collect()
    }

    /// The earliest lease, time limit or start deadline the timer must enforce.
    pub fn earliest_deadline(&self) -> Option<i64> {
        self.deadline_index.first().map(|(t, _)| *t)
    }

    /// Runs whose deadline passed at `at_ms`, at most `limit`.
    pub fn expired_runs(&self, at_ms: i64, limit: usize) -> Vec<RunId> {
        self.deadline_index
            .iter()
            .take_while(|(t, _)| *t <= at_ms)
            .take(limit)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Number of stored jobs.
    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    /// Number of kept runs.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// A job by id.
    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.get(id).map(Arc::as_ref)
    }

    /// Every job, in id order.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values().map(Arc::as_ref)
    }

    /// Every remembered create request, by key, with its record.
    pub fn requests_iter(&self) -> impl Iterator<Item = (&RequestKey, &RequestRecord)> {
        self.requests.iter()
    }

    /// A write record by write id.
    pub fn write_record(&self, write_id: &str) -> Option<&WriteRecord> {
        self.writes.get(write_id)
    }

    /// Every write record.
    pub fn writes_iter(&self) -> impl Iterator<Item = (&String, &WriteRecord)> {
        self.writes.iter()
    }
}
