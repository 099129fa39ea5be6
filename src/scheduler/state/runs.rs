//! Run commands of the state machine: firing, triggering, backfilling, the
//! overlap policy, history retention, and the derived indexes of runs (by
//! job, by status, by deadline, and the dispatcher's queue). A child module
//! of `state`, so it shares `State`'s private fields; everything here is
//! deterministic in the command's time. What happens to a run's attempts
//! once it is dispatched is in `attempts`.
//!
//! Overlap policies are applied when a run is created (`skip`, `buffer_one`,
//! `cancel_other` decide there) and when it is dispatched: except under
//! `allow_all`, a job's oldest pending run may start only while no other run
//! of the job is queued or running, so `buffer_*` runs wait their turn.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use super::{Changes, CommandResult, Response, RunTransition, State, MAX_PAGE_SIZE, MAX_SCAN_PER_PAGE};
use crate::error::Error;
use crate::scheduler::firing::{plan_fires, MAX_FIRE_AHEAD_MS};
use crate::scheduler::job::{JobId, Overlap};
use crate::scheduler::run::RunTrigger;
use crate::scheduler::run::{JobCounters, Run, RunCause, RunId, RunStatus};
use crate::scheduler::schedule::Schedule;
use std::sync::Arc;

/// Most runs that may wait for dispatch cluster-wide; past it triggers and
/// backfills are refused with `ResourceExhausted` instead of growing the queue.
pub const MAX_PENDING_RUNS: usize = 100_000;
/// Most runs one backfill may create.
pub const MAX_BACKFILL_RUNS: usize = 10_000;

/// Filters of a run listing; `None` matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only runs of this job.
    pub job_id: Option<JobId>,
    /// Only runs in this status.
    pub status: Option<RunStatus>,
    /// Only runs with a nominal time at or after this, Unix ms.
    pub nominal_after: Option<i64>,
    /// Only runs with a nominal time before this, Unix ms.
    pub nominal_before: Option<i64>,
}

impl RunFilter {
    fn matches(&self, run: &Run) -> bool {
        self.job_id.as_ref().is_none_or(|j| *j == run.job_id)
            && self.status.is_none_or(|s| s == run.status)
            && self.nominal_after.is_none_or(|t| run.nominal_ms >= t)
            && self.nominal_before.is_none_or(|t| run.nominal_ms < t)
    }
}

impl State {
    /// The deadline the timer must enforce for `run`, if any.
    pub(super) fn deadline(&self, run: &Run) -> Option<i64> {
        let policies = &self.jobs.get(&run.job_id)?.spec.policies;
        match run.status {
            RunStatus::Pending if run.attempt == 0 && run.cause != RunCause::Backfill => Some(
                run.nominal_ms
                    .saturating_add(policies.timeouts.start_deadline_ms as i64),
            ),
            RunStatus::Queued | RunStatus::Running => {
                let started = run.started_at_ms.unwrap_or(run.lease_expires_ms);
                Some(
                    run.lease_expires_ms
                        .min(started.saturating_add(policies.timeouts.attempt_timeout_ms as i64)),
                )
            }
            _ => None,
        }
    }

    /// Adds `run` to the derived indexes.
    pub(super) fn index_run(&mut self, run: &Run) {
        self.runs_by_job
            .entry(run.job_id.clone())
            .or_default()
            .insert(run.id);
        self.file_deadline(run);
        if run.status == RunStatus::Pending {
            self.pending_order.insert((run.not_before_ms, run.id));
            self.pending_by_job
                .entry(run.job_id.clone())
                .or_default()
                .insert(run.id);
        } else if run.status.is_active() {
            self.active_by_job
                .entry(run.job_id.clone())
                .or_default()
                .insert(run.id);
        } else if run.status == RunStatus::Succeeded {
            self.succeeded_by_job
                .entry(run.job_id.clone())
                .or_default()
                .insert(run.id);
        } else {
            self.ended_otherwise_by_job
                .entry(run.job_id.clone())
                .or_default()
                .insert(run.id);
        }
    }

    /// Files `run` in the deadline index under its current deadline, if any.
    fn file_deadline(&mut self, run: &Run) {
        if let Some(deadline) = self.deadline(run) {
            self.deadline_index.insert((deadline, run.id));
            self.filed_deadline.insert(run.id, deadline);
        }
    }

    /// Removes `run` from the deadline index, under the deadline it was filed with.
    fn unfile_deadline(&mut self, run_id: RunId) {
        if let Some(deadline) = self.filed_deadline.remove(&run_id) {
            self.deadline_index.remove(&(deadline, run_id));
        }
    }

    /// Files `run` again (its job's policies changed).
    pub(super) fn refile_deadline(&mut self, run: &Run) {
        self.unfile_deadline(run.id);
        self.file_deadline(run);
    }

    fn unindex_run(&mut self, run: &Run) {
        self.unfile_deadline(run.id);
        self.pending_order.remove(&(run.not_before_ms, run.id));
        for by_job in [
            &mut self.runs_by_job,
            &mut self.pending_by_job,
            &mut self.active_by_job,
            &mut self.succeeded_by_job,
            &mut self.ended_otherwise_by_job,
        ] {
            if let Some(ids) = by_job.get_mut(&run.job_id) {
                ids.remove(&run.id);
                if ids.is_empty() {
                    by_job.remove(&run.job_id);
                }
            }
        }
    }

    /// Inserts or replaces a run, keeping the indexes right.
    pub(super) fn put_run(&mut self, mut run: Run, changes: &mut Changes) {
        run.revision = changes.index;
        let old = self.runs.get(&run.id).cloned();
        if let Some(transition) = RunTransition::of(old.as_ref(), &run) {
            changes.transitions.push(transition);
        }
        if let Some(old) = old {
            self.unindex_run(&old);
        }
        self.index_run(&run);
        changes.runs.insert(run.id);
        self.runs.insert(run.id, run);
    }

    pub(super) fn remove_run(&mut self, run_id: RunId, changes: &mut Changes) {
        if let Some(run) = self.runs.remove(&run_id) {
            self.forget_external(run_id);
            self.set_run_trigger(run_id, None);
            self.unindex_run(&run);
            changes.runs.insert(run_id);
        }
    }

    pub(super) fn count(&mut self, job_id: &str, f: impl FnOnce(&mut JobCounters)) {
        match self.counters.get_mut(job_id) {
            Some(counters) => f(counters),
            None => {
                let mut counters = JobCounters::default();
                f(&mut counters);
                self.counters.insert(job_id.to_string(), counters);
            }
        }
    }

    /// Creates a run of `job_id` for `nominal_ms`, applying the overlap policy.
    pub(super) fn create_run(
        &mut self,
        job_id: &str,
        nominal_ms: i64,
        cause: RunCause,
        at_ms: i64,
        changes: &mut Changes,
    ) -> RunId {
        self.create_run_with(job_id, nominal_ms, cause, None, at_ms, changes)
    }

    /// [`State::create_run`] of a run an event or an upstream run created.
    pub(super) fn create_run_with(
        &mut self,
        job_id: &str,
        nominal_ms: i64,
        cause: RunCause,
        trigger: Option<RunTrigger>,
        at_ms: i64,
        changes: &mut Changes,
    ) -> RunId {
        let overlap = self
            .jobs
            .get(job_id)
            .map_or(Overlap::Skip, |j| j.spec.policies.overlap);
        let open: Vec<Run> = self.open_runs(job_id).cloned().collect();
        let waiting = open.iter().any(|r| r.status == RunStatus::Pending);
        let skip = match overlap {
            _ if cause == RunCause::Backfill => false,
            Overlap::Skip => !open.is_empty(),
            Overlap::BufferOne => waiting,
            Overlap::BufferAll | Overlap::AllowAll | Overlap::CancelOther => false,
        };
        if overlap == Overlap::CancelOther && cause != RunCause::Backfill {
            for run in open {
                self.finish(
                    run,
                    RunStatus::Cancelled,
                    "cancelled by a newer fire (overlap: cancel_other)",
                    at_ms,
                    changes,
                );
            }
        }
        let id = self.next_run_id;
        self.next_run_id += 1;
        let mut run = Run {
            id,
            job_id: job_id.to_string(),
            nominal_ms,
            cause,
            status: RunStatus::Pending,
            attempt: 0,
            token: 0,
            node: None,
            not_before_ms: nominal_ms,
            lease_expires_ms: 0,
            started_at_ms: None,
            finished_at_ms: None,
            error: String::new(),
            output_tail: String::new(),
            revision: 0,
            worker: None,
            trigger: trigger.map(Arc::new),
        };
        self.set_run_trigger(id, run.trigger.clone());
        self.count(job_id, |c| c.runs_created += 1);
        if skip {
            run.status = RunStatus::Skipped;
            run.finished_at_ms = Some(at_ms);
            run.error = format!("skipped: a run of the job is still open (overlap: {overlap:?})");
            self.count(job_id, |c| c.skipped += 1);
            self.put_run(run, changes);
            self.retain_history(job_id, changes);
        } else {
            self.put_run(run, changes);
        }
        id
    }

    /// Moves `run` to a terminal status; returns it as it ended. History
    /// retention may drop it at once (an old run ending after newer ones
    /// did), so the returned run is the only copy a caller can count on.
    pub(super) fn finish(
        &mut self,
        mut run: Run,
        status: RunStatus,
        error: &str,
        at_ms: i64,
        changes: &mut Changes,
    ) -> Run {
        let job_id = run.job_id.clone();
        run.status = status;
        run.finished_at_ms = Some(at_ms);
        if !error.is_empty() {
            run.error = error.to_string();
        }
        self.count(&job_id, |c| match status {
            RunStatus::Succeeded => c.succeeded += 1,
            RunStatus::Failed => c.failed += 1,
            RunStatus::TimedOut => c.timed_out += 1,
            RunStatus::Cancelled => c.cancelled += 1,
            _ => {}
        });
        let run_id = run.id;
        self.put_run(run, changes);
        let ended = self.runs[&run_id].clone();
        self.retain_history(&job_id, changes);
        ended
    }

    /// Drops the oldest finished runs of a job beyond its history limits.
    fn retain_history(&mut self, job_id: &str, changes: &mut Changes) {
        let Some(limits) = self.jobs.get(job_id).map(|j| j.spec.policies.history.clone()) else {
            return;
        };
        let oldest_beyond = |ids: Option<&BTreeSet<RunId>>, keep: u32| -> Vec<RunId> {
            let Some(ids) = ids else { return Vec::new() };
            let excess = ids.len().saturating_sub(keep as usize);
            ids.iter().take(excess).copied().collect()
        };
        let mut doomed = oldest_beyond(self.succeeded_by_job.get(job_id), limits.keep_succeeded);
        doomed.extend(oldest_beyond(
            self.ended_otherwise_by_job.get(job_id),
            limits.keep_failed,
        ));
        for id in doomed {
            self.remove_run(id, changes);
        }
    }

    /// `FireWindow`: [`State::fire_batch`] up to `until_ms`, which may be at
    /// most [`MAX_FIRE_AHEAD_MS`] after the entry's time.
    pub(super) fn fire_window(
        &mut self,
        fires: &[(JobId, i64)],
        until_ms: i64,
        at_ms: i64,
        changes: &mut Changes,
    ) -> CommandResult {
        if until_ms > at_ms.saturating_add(MAX_FIRE_AHEAD_MS) {
            return Err(Error::InvalidArgument(format!(
                "fire window: until {until_ms} is more than {MAX_FIRE_AHEAD_MS} ms after the entry's time {at_ms}"
            )));
        }
        Ok(self.fire_batch(fires, at_ms, until_ms.max(at_ms), changes))
    }

    /// `FireBatch` / `FireWindow`: each listed job fires if its next fire is
    /// the listed one and not after `until_ms` (`at_ms <= until_ms`).
    pub(super) fn fire_batch(
        &mut self,
        fires: &[(JobId, i64)],
        at_ms: i64,
        until_ms: i64,
        changes: &mut Changes,
    ) -> Response {
        let mut created = Vec::new();
        let mut refused = 0;
        let unique: BTreeSet<&(JobId, i64)> = fires.iter().collect();
        refused += (fires.len() - unique.len()) as u32;
        for (job_id, expected) in unique {
            let Some(job) = self.job(job_id).cloned() else {
                refused += 1;
                continue;
            };
            if job.spec.paused || job.next_fire_ms != Some(*expected) || *expected > until_ms {
                #[cfg(feature = "chaos-break")]
                if self.chaos_break.is_some_and(|b| b.reruns_fires())
                    && job.last_fired_ms.is_some_and(|l| *expected <= l)
                {
                    // The deliberately broken build: run a fire that already happened again.
                    created.push(self.create_run(job_id, *expected, RunCause::Schedule, at_ms, changes));
                    continue;
                }
                refused += 1;
                continue;
            }
            let Ok(schedule) = self.schedules.compile(&job.spec.schedule) else {
                refused += 1;
                continue;
            };
            let plan = plan_fires(&schedule, *expected, &job.spec.policies, at_ms, until_ms);
            let mut job = job;
            job.last_fired_ms = plan.last_due.max(job.last_fired_ms);
            job.next_fire_ms = plan.next_fire;
            self.put_job(job);
            if plan.missed > 0 {
                self.count(job_id, |c| c.missed += plan.missed);
            }
            for nominal in plan.run {
                created.push(self.create_run(job_id, nominal, RunCause::Schedule, at_ms, changes));
            }
        }
        Response::Fired { created, refused }
    }

    /// Takes back the fires of `job_id` that were committed ahead of `at_ms`
    /// and have not begun — scheduled first attempts whose nominal time is
    /// after `at_ms`, pending or queued to begin later — except those whose
    /// nominal time `keep` accepts: each is cancelled with `why` (a worker
    /// waiting to begin one checks its replica first and does not run it).
    pub(super) fn cancel_runs_ahead(
        &mut self,
        job_id: &str,
        at_ms: i64,
        keep: impl Fn(i64) -> bool,
        why: &str,
        changes: &mut Changes,
    ) {
        let ahead: Vec<Run> = self
            .open_runs(job_id)
            .filter(|r| r.cause == RunCause::Schedule && r.nominal_ms > at_ms && !keep(r.nominal_ms))
            .filter(|r| match r.status {
                RunStatus::Pending => r.attempt == 0,
                RunStatus::Queued => r.attempt == 1 && r.started_at_ms.is_some_and(|t| t > at_ms),
                _ => false,
            })
            .cloned()
            .collect();
        for run in ahead {
            self.finish(run, RunStatus::Cancelled, why, at_ms, changes);
        }
    }

    /// `TriggerJob`: one run now.
    pub(super) fn trigger(&mut self, id: &str, at_ms: i64, changes: &mut Changes) -> CommandResult {
        if !self.jobs.contains_key(id) {
            return Err(Error::NotFound(format!("job {id:?} not found")));
        }
        if self.pending_count() >= MAX_PENDING_RUNS {
            return Err(Error::ResourceExhausted(format!(
                "{MAX_PENDING_RUNS} runs are already waiting for a worker; try again later"
            )));
        }
        // The run's nominal time is the trigger's, moved on by a millisecond
        // while it names another run of the job or a fire of its schedule, so
        // that its idempotency key (job, nominal time) is its own.
        let spec = self.jobs[id].spec.clone();
        let taken: BTreeSet<i64> = self.job_runs(id).map(|r| r.nominal_ms).collect();
        let mut nominal = at_ms;
        while taken.contains(&nominal) || super::next_fire(&spec, nominal - 1) == Some(nominal) {
            nominal += 1;
        }
        let run_id = self.create_run(id, nominal, RunCause::Trigger, at_ms, changes);
        Ok(Response::Run(Box::new(
            self.runs.get(&run_id).cloned().expect("just created"),
        )))
    }

    /// The fire times of job `id` in `[start_ms, end_ms)`, for a backfill.
    pub fn backfill_times(&self, id: &str, start_ms: i64, end_ms: i64) -> Result<Vec<i64>, Error> {
        let job = self
            .jobs
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("job {id:?} not found")))?;
        if start_ms >= end_ms {
            return Err(Error::InvalidArgument(
                "backfill: start must be before end".into(),
            ));
        }
        let schedule =
            Schedule::compile(&job.spec.schedule).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let mut times = Vec::new();
        // The first fire at or after `start_ms` is the first after the
        // millisecond before it; a start before chrono's first instant
        // starts there (`start_ms - 1` overflowed for i64::MIN).
        let (first, last) = (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC);
        let before_start = start_ms
            .saturating_sub(1)
            .clamp(first.timestamp_millis(), last.timestamp_millis());
        let mut cursor = DateTime::<Utc>::from_timestamp_millis(before_start);
        while let Some(t) = cursor
            .and_then(|c| schedule.next_after(c))
            .filter(|t| t.timestamp_millis() < end_ms)
        {
            if times.len() == MAX_BACKFILL_RUNS {
                return Err(Error::InvalidArgument(format!(
                    "backfill: the range holds more than {MAX_BACKFILL_RUNS} fire times; split it"
                )));
            }
            times.push(t.timestamp_millis());
            cursor = Some(t);
        }
        Ok(times)
    }

    /// `Backfill`: one run per fire time in the range not already run.
    pub(super) fn backfill(
        &mut self,
        id: &str,
        start_ms: i64,
        end_ms: i64,
        at_ms: i64,
        changes: &mut Changes,
    ) -> CommandResult {
        let times = self.backfill_times(id, start_ms, end_ms)?;
        if self.pending_count() + times.len() > MAX_PENDING_RUNS {
            return Err(Error::ResourceExhausted(format!(
                "a backfill of {} runs would exceed the queue bound",
                times.len()
            )));
        }
        let existing: BTreeSet<i64> = self.job_runs(id).map(|r| r.nominal_ms).collect();
        let mut created = Vec::new();
        let mut refused = 0;
        for nominal in times {
            if existing.contains(&nominal) {
                refused += 1;
            } else {
                created.push(self.create_run(id, nominal, RunCause::Backfill, at_ms, changes));
            }
        }
        Ok(Response::Fired { created, refused })
    }

    /// Pending runs that may start now, at most `limit`, in the order they
    /// became ready (`not_before`, then id). Except under `allow_all`, a job
    /// offers only its oldest pending run, and only while none of its runs is
    /// queued or running, so a job's runs start one at a time in creation order.
    ///
    /// Walks the pending index only as far as `at_ms` and `limit` require:
    /// the cost follows the queue, not the number of jobs or kept runs.
    pub fn dispatchable_runs(&self, at_ms: i64, limit: usize) -> Vec<&Run> {
        let mut out = Vec::new();
        for &(not_before, run_id) in &self.pending_order {
            if out.len() >= limit || not_before > at_ms {
                break;
            }
            let Some(run) = self.runs.get(&run_id) else {
                continue;
            };
            let allow_all = self
                .jobs
                .get(&run.job_id)
                .is_some_and(|j| j.spec.policies.overlap == Overlap::AllowAll);
            let its_turn = allow_all
                || (!self.active_by_job.contains_key(&run.job_id)
                    && self.pending_by_job.get(&run.job_id).and_then(|ids| ids.first()) == Some(&run_id));
            if its_turn {
                out.push(run);
            }
        }
        out
    }

    /// Runs in id (creation) order after `after`, filtered, at most
    /// `page_size`, and the token of the next page. Like job listings, a page
    /// stops early after examining [`MAX_SCAN_PER_PAGE`] runs.
    pub fn list_runs(
        &self,
        filter: &RunFilter,
        after: Option<RunId>,
        page_size: usize,
    ) -> (Vec<Run>, Option<RunId>) {
        let page_size = page_size.clamp(1, MAX_PAGE_SIZE);
        let start = after.map_or(0, |a| a.saturating_add(1));
        let ids: Box<dyn Iterator<Item = RunId> + '_> = match &filter.job_id {
            Some(job) => Box::new(
                self.runs_by_job
                    .get(job)
                    .into_iter()
                    .flat_map(move |ids| ids.range(start..).copied()),
            ),
            None => Box::new(self.runs.range(start..).map(|(id, _)| *id)),
        };
        let mut runs = Vec::new();
        let mut last_seen = None;
        for (scanned, id) in ids.enumerate() {
            if runs.len() == page_size || scanned == MAX_SCAN_PER_PAGE {
                return (runs, last_seen);
            }
            last_seen = Some(id);
            if let Some(run) = self.runs.get(&id).filter(|r| filter.matches(r)) {
                runs.push(run.clone());
            }
        }
        (runs, None)
    }
}
