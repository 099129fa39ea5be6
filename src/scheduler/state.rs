//! The replicated state and the one function that changes it.
//!
//! [`State::apply`] takes a [`Request`] — a [`Command`] plus the leader's clock
//! reading and the caller's principal, both stamped *before* the entry entered
//! the Raft log — and returns a [`CommandResult`]. Every replica applies the same
//! log, so the function must be deterministic: no clock, no randomness, no hash
//! map iteration, no I/O. It also reports which keys it changed ([`Changes`]) so
//! the storage layer can persist exactly those.
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
//!
//! IMPLEMENTATION CAVEATS: validation of field formats happens before proposing
//! (see `validate`), not here, so that a newer binary replaying an old log never
//! refuses what an older one accepted. Everything lives in memory; the storage
//! layer (`raft::state_machine`) persists it and rebuilds it on start.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::job::{Job, JobId, JobPatch, JobSpec, JobStatus};
use super::schedule::Schedule;
use crate::error::Error;

/// How long a create's `request_id` is remembered, ms (24 h).
pub const REQUEST_ID_TTL_MS: i64 = 24 * 3_600_000;
/// Largest page a list returns.
pub const MAX_PAGE_SIZE: usize = 1_000;
/// Page size when the client names none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Most jobs one page may examine: a filter that matches little returns a
/// short (even empty) page with a continuation token instead of scanning
/// everything under the state lock.
pub const MAX_SCAN_PER_PAGE: usize = 50_000;

/// One entry of the Raft log: a command with its context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Leader wall-clock time when the command was proposed, Unix ms.
    pub at_ms: i64,
    /// Who asked (recorded as `created_by` / `updated_by`).
    pub principal: String,
    /// What to do.
    pub command: Command,
}

/// A change to the replicated state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Create a job; fails if the id exists.
    CreateJob {
        /// The new job's id.
        id: JobId,
        /// Its fields.
        spec: JobSpec,
        /// Idempotency key, if the client sent one.
        request_id: Option<String>,
    },
    /// Replace some fields of a job whose version is `expected_version`.
    UpdateJob {
        /// Which job.
        id: JobId,
        /// The version the client read; must equal the stored one.
        expected_version: u64,
        /// The fields to replace.
        patch: JobPatch,
    },
    /// Delete a job (only if its version matches, when one is given).
    DeleteJob {
        /// Which job.
        id: JobId,
        /// Delete only at this version.
        expected_version: Option<u64>,
    },
    /// Pause (`true`) or resume (`false`) a job, whatever its version.
    SetPaused {
        /// Which job.
        id: JobId,
        /// The new paused flag.
        paused: bool,
    },
}

impl Command {
    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::CreateJob { .. } => "create_job",
            Command::UpdateJob { .. } => "update_job",
            Command::DeleteJob { .. } => "delete_job",
            Command::SetPaused { .. } => "set_paused",
        }
    }
}

/// The successful outcome of a command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The job as it is after the command.
    Job(Box<Job>),
    /// The job was deleted.
    Deleted,
    /// A Raft-internal entry (blank or membership) that carries no command.
    Empty,
}

/// What applying a command yields on every replica.
pub type CommandResult = Result<Response, Error>;

/// Keys changed by applied commands, for the storage layer to persist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Jobs created, changed or deleted.
    pub jobs: BTreeSet<JobId>,
    /// Request-id records added or expired.
    pub requests: BTreeSet<String>,
}

/// What a `request_id` remembers: the first create's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// When the create was applied, Unix ms (for expiry).
    pub at_ms: i64,
    /// The job exactly as the first create returned it.
    pub job: Job,
}

/// Filters of a job listing; `None` matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs of this owner.
    pub owner_service: Option<String>,
    /// Only jobs of this type.
    pub job_type: Option<String>,
    /// Only jobs in this state.
    pub status: Option<JobStatus>,
}

impl JobFilter {
    fn matches(&self, job: &Job) -> bool {
        self.owner_service
            .as_ref()
            .is_none_or(|o| *o == job.spec.owner_service)
            && self.job_type.as_ref().is_none_or(|t| *t == job.spec.job_type)
            && self.status.is_none_or(|s| s == job.status())
    }
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq)]
pub struct JobPage {
    /// The jobs, in id order.
    pub jobs: Vec<Job>,
    /// Where the next page starts; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// The whole replicated state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Every job, by id.
    jobs: BTreeMap<JobId, Job>,
    /// Remembered create request ids, by request id.
    requests: BTreeMap<String, RequestRecord>,
    /// `(at_ms, request_id)` of every record in `requests`, oldest first (derived).
    #[serde(skip)]
    request_expiry: BTreeSet<(i64, String)>,
}

impl State {
    /// Rebuilds a state from stored jobs and request records.
    pub fn from_parts(
        jobs: impl IntoIterator<Item = Job>,
        requests: impl IntoIterator<Item = (String, RequestRecord)>,
    ) -> State {
        let mut state = State {
            jobs: jobs.into_iter().map(|j| (j.id.clone(), j)).collect(),
            requests: requests.into_iter().collect(),
            request_expiry: BTreeSet::new(),
        };
        state.rebuild_indexes();
        state
    }

    /// Recomputes the derived indexes (after deserializing).
    pub fn rebuild_indexes(&mut self) {
        self.request_expiry = self
            .requests
            .iter()
            .map(|(id, r)| (r.at_ms, id.clone()))
            .collect();
    }

    /// Number of stored jobs.
    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    /// A job by id.
    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.get(id)
    }

    /// Every job, in id order.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    /// Every remembered request id with its record.
    pub fn requests_iter(&self) -> impl Iterator<Item = (&String, &RequestRecord)> {
        self.requests.iter()
    }

    /// A request-id record by id.
    pub fn request(&self, request_id: &str) -> Option<&RequestRecord> {
        self.requests.get(request_id)
    }

    /// Jobs in id order, starting after `page_token`, filtered, at most
    /// `page_size`; a page stops early after [`MAX_SCAN_PER_PAGE`] jobs examined.
    pub fn list(&self, filter: &JobFilter, page_token: Option<&str>, page_size: usize) -> JobPage {
        let page_size = page_size.clamp(1, MAX_PAGE_SIZE);
        let start = match page_token {
            Some(token) => Bound::Excluded(token.to_string()),
            None => Bound::Unbounded,
        };
        let mut jobs = Vec::new();
        let mut last_seen = None;
        for (scanned, (id, job)) in self.jobs.range((start, Bound::Unbounded)).enumerate() {
            if jobs.len() == page_size || scanned == MAX_SCAN_PER_PAGE {
                return JobPage {
                    jobs,
                    next_page_token: last_seen,
                };
            }
            last_seen = Some(id.clone());
            if filter.matches(job) {
                jobs.push(job.clone());
            }
        }
        JobPage {
            jobs,
            next_page_token: None,
        }
    }

    /// Applies one command; the result is the same on every replica.
    pub fn apply(&mut self, request: &Request, changes: &mut Changes) -> CommandResult {
        let at_ms = request.at_ms;
        let principal = request.principal.as_str();
        match &request.command {
            Command::CreateJob { id, spec, request_id } => {
                self.expire_requests(at_ms, changes);
                self.create(id, spec, request_id.as_deref(), at_ms, principal, changes)
            }
            Command::UpdateJob {
                id,
                expected_version,
                patch,
            } => {
                let job = self.job_at_version(id, Some(*expected_version))?;
                let schedule_changed = patch.schedule.as_ref().is_some_and(|s| *s != job.spec.schedule);
                let resumed = job.spec.paused && patch.paused == Some(false);
                let mut updated = job.clone();
                patch.clone().apply_to(&mut updated.spec);
                if schedule_changed || resumed {
                    updated.next_fire_ms = next_fire(&updated.spec, at_ms);
                }
                self.store_change(updated, at_ms, principal, changes)
            }
            Command::DeleteJob { id, expected_version } => {
                self.job_at_version(id, *expected_version)?;
                self.jobs.remove(id);
                changes.jobs.insert(id.clone());
                Ok(Response::Deleted)
            }
            Command::SetPaused { id, paused } => {
                let job = self.job_at_version(id, None)?;
                if job.spec.paused == *paused {
                    // Already in the requested state: nothing changes, the version stays.
                    return Ok(Response::Job(Box::new(job.clone())));
                }
                let mut updated = job.clone();
                updated.spec.paused = *paused;
                if !*paused {
                    // Paused time is not caught up: the next fire is after the resume.
                    updated.next_fire_ms = next_fire(&updated.spec, at_ms);
                }
                self.store_change(updated, at_ms, principal, changes)
            }
        }
    }

    fn create(
        &mut self,
        id: &str,
        spec: &JobSpec,
        request_id: Option<&str>,
        at_ms: i64,
        principal: &str,
        changes: &mut Changes,
    ) -> CommandResult {
        if let Some(rid) = request_id {
            if let Some(record) = self.requests.get(rid) {
                return if record.job.id == id && record.job.spec == *spec {
                    Ok(Response::Job(Box::new(record.job.clone())))
                } else {
                    Err(Error::AlreadyExists(format!(
                        "request_id {rid:?} was already used for a different create request"
                    )))
                };
            }
        }
        if self.jobs.contains_key(id) {
            return Err(Error::AlreadyExists(format!("job {id:?} already exists")));
        }
        let job = Job {
            id: id.to_string(),
            spec: spec.clone(),
            version: 1,
            created_at_ms: at_ms,
            updated_at_ms: at_ms,
            created_by: principal.to_string(),
            updated_by: principal.to_string(),
            last_fired_ms: None,
            next_fire_ms: next_fire(spec, at_ms),
        };
        if let Some(rid) = request_id {
            self.requests.insert(
                rid.to_string(),
                RequestRecord {
                    at_ms,
                    job: job.clone(),
                },
            );
            self.request_expiry.insert((at_ms, rid.to_string()));
            changes.requests.insert(rid.to_string());
        }
        self.jobs.insert(job.id.clone(), job.clone());
        changes.jobs.insert(job.id.clone());
        Ok(Response::Job(Box::new(job)))
    }

    /// The job `id`, if it exists and (when given) is at `expected_version`.
    fn job_at_version(&self, id: &str, expected_version: Option<u64>) -> Result<&Job, Error> {
        let job = self
            .jobs
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("job {id:?} not found")))?;
        match expected_version {
            Some(v) if v != job.version => Err(Error::Aborted(format!(
                "job {id:?} is at version {}, not {v}: read it again and retry",
                job.version
            ))),
            _ => Ok(job),
        }
    }

    fn store_change(
        &mut self,
        mut job: Job,
        at_ms: i64,
        principal: &str,
        changes: &mut Changes,
    ) -> CommandResult {
        job.version += 1;
        job.updated_at_ms = at_ms;
        job.updated_by = principal.to_string();
        changes.jobs.insert(job.id.clone());
        self.jobs.insert(job.id.clone(), job.clone());
        Ok(Response::Job(Box::new(job)))
    }

    /// Forgets request ids older than [`REQUEST_ID_TTL_MS`] at time `at_ms`.
    fn expire_requests(&mut self, at_ms: i64, changes: &mut Changes) {
        let cutoff = at_ms.saturating_sub(REQUEST_ID_TTL_MS);
        while let Some((t, _)) = self.request_expiry.first() {
            if *t >= cutoff {
                break;
            }
            let (_, rid) = self.request_expiry.pop_first().expect("first exists");
            self.requests.remove(&rid);
            changes.requests.insert(rid);
        }
    }
}

/// The first fire of `spec` strictly after `at_ms`, or `None` if there is none
/// (or the schedule no longer compiles, which validation prevents).
pub fn next_fire(spec: &JobSpec, at_ms: i64) -> Option<i64> {
    let schedule = Schedule::compile(&spec.schedule).ok()?;
    let after = DateTime::<Utc>::from_timestamp_millis(at_ms)?;
    schedule.next_after(after).map(|t| t.timestamp_millis())
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
