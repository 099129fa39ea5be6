//! Job commands of the state machine: create (with its request id),
//! update, pause or resume, delete; and job listings. A child module of
//! `state`, so it shares `State`'s private fields.
//!
//! A change never fires retroactively: the next fire of a created, updated
//! or resumed job is computed from the command's time. Fires committed ahead
//! of their nominal time (`FireWindow`) that a pause or a schedule change
//! takes back are cancelled, each with the reason (`PAUSED_AHEAD`,
//! `RESCHEDULED_AHEAD`).

use std::ops::Bound;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{Changes, CommandResult, Response, State, MAX_PAGE_SIZE, MAX_SCAN_PER_PAGE};
use crate::error::Error;
use crate::scheduler::job::{intern_principal, Job, JobId, JobPatch, JobSpec, JobStatus};
use crate::scheduler::schedule::Schedule;

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

/// Why a run committed ahead was cancelled by a pause.
const PAUSED_AHEAD: &str = "cancelled: the job was paused before this fire's nominal time";
/// Why a run committed ahead was cancelled by a schedule change.
const RESCHEDULED_AHEAD: &str = "cancelled: the job's new schedule has no fire at this nominal time";

impl State {
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
                jobs.push(Job::clone(job));
            }
        }
        JobPage {
            jobs,
            next_page_token: None,
        }
    }

    /// `CreateJob`: a new job, or the first answer to a repeated request id.
    pub(super) fn create_job(
        &mut self,
        id: &str,
        spec: &JobSpec,
        request_id: Option<&str>,
        at_ms: i64,
        principal: &str,
    ) -> CommandResult {
        self.expire_requests(at_ms);
        if let Some(answer) = request_id.and_then(|rid| self.repeated_create(rid, id, spec, principal)) {
            return answer.map(Response::Job);
        }
        if self.jobs.contains_key(id) {
            return Err(Error::AlreadyExists(format!("job {id:?} already exists")));
        }
        self.check_dependency(id, &spec.schedule)?;
        let mut job = self.new_job(id, spec, at_ms, principal);
        job.next_fire_ms = self.next_fire_memo(spec, at_ms);
        if let Some(rid) = request_id {
            self.remember_request(rid, id, spec, at_ms);
        }
        Ok(Response::Job(self.put_job(job)))
    }

    /// `UpdateJob`: replaces the fields the patch names, at `expected_version`.
    pub(super) fn update_job(
        &mut self,
        id: &str,
        expected_version: u64,
        patch: &JobPatch,
        at_ms: i64,
        principal: &str,
        changes: &mut Changes,
    ) -> CommandResult {
        let job = self.job_at_version(id, Some(expected_version))?;
        let schedule_changed = patch.schedule.as_ref().is_some_and(|s| *s != job.spec.schedule);
        let resumed = job.spec.paused && patch.paused == Some(false);
        let paused = !job.spec.paused && patch.paused == Some(true);
        let mut updated = Job::clone(job);
        patch.clone().apply_to(&mut updated.spec);
        if schedule_changed {
            self.check_dependency(id, &updated.spec.schedule)?;
        }
        if paused {
            self.cancel_runs_ahead(id, at_ms, |_| false, PAUSED_AHEAD, changes);
        }
        if schedule_changed {
            // Fires of the old schedule committed ahead do not run;
            // a time both schedules share keeps its run.
            let new_spec = &updated.spec;
            let shared = |t: i64| next_fire(new_spec, t - 1) == Some(t);
            self.cancel_runs_ahead(id, at_ms, shared, RESCHEDULED_AHEAD, changes);
            // No second run for a time that has one (kept, skipped or cancelled).
            let taken: Vec<i64> = self
                .job_runs(id)
                .filter(|r| r.nominal_ms > at_ms)
                .map(|r| r.nominal_ms)
                .collect();
            updated.next_fire_ms = next_fire_without(&updated.spec, at_ms, &taken);
        } else if resumed {
            updated.next_fire_ms = next_fire_after_fired(&updated, at_ms);
        }
        self.store_change(updated, at_ms, principal)
    }

    /// `DeleteJob`: removes the job with its runs and counters.
    pub(super) fn delete_job(
        &mut self,
        id: &str,
        expected_version: Option<u64>,
        changes: &mut Changes,
    ) -> CommandResult {
        self.job_at_version(id, expected_version)?;
        self.check_no_dependents(id)?;
        self.remove_job(id, changes);
        Ok(Response::Deleted)
    }

    /// `ForceDeleteJob`: `DeleteJob` whatever runs after the job.
    pub(super) fn force_delete_job(
        &mut self,
        id: &str,
        expected_version: Option<u64>,
        changes: &mut Changes,
    ) -> CommandResult {
        self.job_at_version(id, expected_version)?;
        self.remove_job(id, changes);
        Ok(Response::Deleted)
    }

    /// `SetPaused`: pauses or resumes the job, whatever its version.
    pub(super) fn set_paused(
        &mut self,
        id: &str,
        paused: bool,
        at_ms: i64,
        principal: &str,
        changes: &mut Changes,
    ) -> CommandResult {
        let job = self.job_at_version(id, None)?;
        if job.spec.paused == paused {
            // Already in the requested state: nothing changes, the version stays.
            return Ok(Response::Job(job.clone()));
        }
        let mut updated = Job::clone(job);
        updated.spec.paused = paused;
        if paused {
            self.cancel_runs_ahead(id, at_ms, |_| false, PAUSED_AHEAD, changes);
        } else {
            // Paused time is not caught up: the next fire is after the resume.
            updated.next_fire_ms = next_fire_after_fired(&updated, at_ms);
        }
        self.store_change(updated, at_ms, principal)
    }

    /// Job `id` as a create at `at_ms` by `principal` makes it, before its
    /// first fire is computed.
    pub(super) fn new_job(&self, id: &str, spec: &JobSpec, at_ms: i64, principal: &str) -> Job {
        Job {
            id: id.to_string(),
            spec: spec.clone(),
            version: 1,
            created_at_ms: at_ms,
            updated_at_ms: at_ms,
            created_by: intern_principal(principal),
            updated_by: intern_principal(principal),
            last_fired_ms: None,
            next_fire_ms: None,
        }
    }

    /// [`next_fire`] with the schedule compiled once for all jobs that share it.
    fn next_fire_memo(&mut self, spec: &JobSpec, at_ms: i64) -> Option<i64> {
        let schedule = self.schedules.compile(&spec.schedule).ok()?;
        let after = DateTime::<Utc>::from_timestamp_millis(at_ms)?;
        schedule.next_after(after).map(|t| t.timestamp_millis())
    }

    /// The job `id`, if it exists and (when given) is at `expected_version`.
    fn job_at_version(&self, id: &str, expected_version: Option<u64>) -> Result<&Arc<Job>, Error> {
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

    /// Stores `job` as the job's next version, changed at `at_ms` by `principal`.
    fn store_change(&mut self, mut job: Job, at_ms: i64, principal: &str) -> CommandResult {
        job.version += 1;
        job.updated_at_ms = at_ms;
        job.updated_by = intern_principal(principal);
        Ok(Response::Job(self.put_job(job)))
    }

    /// Inserts or replaces a job, keeping the fire index right; returns the
    /// stored job.
    pub(super) fn put_job(&mut self, job: Job) -> Arc<Job> {
        if let Some(old) = self.job(&job.id).and_then(fire_entry) {
            self.fire_index.remove(&old);
        }
        if let Some(entry) = fire_entry(&job) {
            self.fire_index.insert(entry);
        }
        let id = job.id.clone();
        let old = self.jobs.get(&id).cloned();
        self.index_triggers(old.as_deref(), Some(&job));
        let policies_changed = self
            .jobs
            .get(&id)
            .is_some_and(|old| old.spec.policies != job.spec.policies);
        let job = Arc::new(job);
        self.jobs.insert(id.clone(), job.clone());
        if policies_changed {
            // The job's open runs have new deadlines: file them again.
            for run_id in self.runs_by_job.get(&id).cloned().unwrap_or_default() {
                if let Some(run) = self.runs.get(&run_id).cloned() {
                    self.refile_deadline(&run);
                }
            }
        }
        job
    }

    /// Removes a job with its runs and counters.
    fn remove_job(&mut self, id: &str, changes: &mut Changes) {
        if let Some(job) = self.jobs.remove(id) {
            self.index_triggers(Some(&job), None);
            if let Some(entry) = fire_entry(&job) {
                self.fire_index.remove(&entry);
            }
        }
        for run_id in self.runs_by_job.get(id).cloned().unwrap_or_default() {
            self.remove_run(run_id, changes);
        }
        self.counters.remove(id);
    }
}

/// The fire-index entry of a job, if it can fire.
pub(super) fn fire_entry(job: &Job) -> Option<(i64, JobId)> {
    if job.spec.paused {
        return None;
    }
    job.next_fire_ms.map(|t| (t, job.id.clone()))
}

/// The next fire of `job` after `at_ms` and after its last fire: a fire
/// committed ahead of `at_ms` is never fired a second time.
fn next_fire_after_fired(job: &Job, at_ms: i64) -> Option<i64> {
    next_fire(&job.spec, at_ms.max(job.last_fired_ms.unwrap_or(i64::MIN)))
}

/// The first fire of `spec` after `at_ms` that is not one of `taken` (fires
/// that already have a run).
fn next_fire_without(spec: &JobSpec, at_ms: i64, taken: &[i64]) -> Option<i64> {
    let mut next = next_fire(spec, at_ms);
    while let Some(t) = next.filter(|t| taken.contains(t)) {
        next = next_fire(spec, t);
    }
    next
}

/// The first fire of `spec` strictly after `at_ms`, or `None` if there is none
/// (or the schedule no longer compiles, which validation prevents).
pub fn next_fire(spec: &JobSpec, at_ms: i64) -> Option<i64> {
    let schedule = Schedule::compile(&spec.schedule).ok()?;
    let after = DateTime::<Utc>::from_timestamp_millis(at_ms)?;
    schedule.next_after(after).map(|t| t.timestamp_millis())
}
