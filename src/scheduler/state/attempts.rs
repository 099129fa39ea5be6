//! Attempt commands of the state machine: starting attempts (each fenced by
//! the log index of the entry that started it), lease renewals, results,
//! retries with back-off, expiry of leases, time limits and start
//! deadlines, and cancellation. A child module of `state`, so it shares
//! `State`'s private fields; everything here is deterministic in the
//! command's time.
//!
//! A heartbeat or result carrying any token but the current attempt's is
//! refused, so a worker that lost its lease cannot overwrite a newer
//! attempt; a result repeated after it was recorded is acknowledged without
//! change, so workers may resend until they see a commit.

use super::{Changes, CommandResult, Response, State};
use crate::error::Error;
use crate::scheduler::firing::MAX_FIRE_AHEAD_MS;
use crate::scheduler::job::Overlap;
use crate::scheduler::run::{
    retry_delay_ms, AttemptOutcome, AttemptResult, Run, RunId, RunStatus, MAX_OUTPUT,
};

/// Why an attempt ended without success.
struct AttemptFailure {
    /// False when a retry cannot help.
    retryable: bool,
    /// Error kind, matched against `non_retryable_errors`.
    kind: String,
    /// Message recorded on the run.
    error: String,
    /// Terminal status when no retry is allowed.
    give_up: RunStatus,
}

/// The error for a run that does not exist (or no longer).
fn not_found(run_id: RunId) -> Error {
    Error::NotFound(format!("run {run_id} not found"))
}

impl State {
    /// `StartAttempt`: the dispatcher assigns a pending run to a node. It may
    /// do so up to [`MAX_FIRE_AHEAD_MS`] before the run may start
    /// (`not_before_ms`): the attempt then begins at that time.
    pub(super) fn start_attempt(
        &mut self,
        run_id: RunId,
        node: u64,
        attempt: u32,
        index: u64,
        at_ms: i64,
        changes: &mut Changes,
    ) -> CommandResult {
        self.start_attempt_for(run_id, node, attempt, None, index, at_ms, changes)
    }

    /// [`State::start_attempt`] on `node`'s pool (`worker` = `None`) or for
    /// the external worker `worker` connected to `node`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_attempt_for(
        &mut self,
        run_id: RunId,
        node: u64,
        attempt: u32,
        worker: Option<&str>,
        index: u64,
        at_ms: i64,
        changes: &mut Changes,
    ) -> CommandResult {
        let run = self.runs.get(&run_id).cloned().ok_or_else(|| not_found(run_id))?;
        if run.status != RunStatus::Pending || run.attempt + 1 != attempt {
            return Err(Error::FailedPrecondition(format!(
                "run {run_id} is {:?} at attempt {}; cannot start attempt {attempt}",
                run.status, run.attempt
            )));
        }
        let Some(policies) = self.jobs.get(&run.job_id).map(|j| j.spec.policies.clone()) else {
            return Err(Error::NotFound(format!(
                "job {:?} of run {run_id} not found",
                run.job_id
            )));
        };
        if self.deadline(&run).is_some_and(|d| at_ms > d) {
            self.finish(
                run.clone(),
                RunStatus::TimedOut,
                "start deadline exceeded before dispatch",
                at_ms,
                changes,
            );
            return Ok(Response::Run(Box::new(
                self.runs.get(&run_id).cloned().unwrap_or(run),
            )));
        }
        let overlap_blocks = policies.overlap != Overlap::AllowAll
            && self
                .active_by_job
                .get(&run.job_id)
                .is_some_and(|ids| ids.iter().any(|&id| id != run_id));
        if overlap_blocks {
            return Err(Error::FailedPrecondition(format!(
                "another run of job {:?} is still running",
                run.job_id
            )));
        }
        if run.not_before_ms > at_ms.saturating_add(MAX_FIRE_AHEAD_MS) {
            return Err(Error::FailedPrecondition(format!(
                "run {run_id} may not start before {}, more than {MAX_FIRE_AHEAD_MS} ms after {at_ms}",
                run.not_before_ms
            )));
        }
        // An attempt started ahead begins when the run is due: its worker
        // waits until then, and its lease and time limit count from then.
        let begins = at_ms.max(run.not_before_ms);
        let mut run = run;
        run.attempt = attempt;
        run.status = RunStatus::Queued;
        run.token = index;
        run.node = Some(node);
        run.started_at_ms = Some(begins);
        run.lease_expires_ms = begins.saturating_add(policies.timeouts.heartbeat_timeout_ms as i64);
        self.set_attempt_worker(&mut run, worker);
        self.put_run(run.clone(), changes);
        Ok(Response::Run(Box::new(run)))
    }

    /// `StartAttempts`: starts each listed attempt that can start; the others
    /// (no longer pending, past their deadline, blocked by overlap) are left out.
    pub(super) fn start_attempts(
        &mut self,
        starts: &[(RunId, u64, u32)],
        index: u64,
        at_ms: i64,
        changes: &mut Changes,
    ) -> Response {
        let mut started = Vec::new();
        for &(run_id, node, attempt) in starts {
            if let Ok(Response::Run(run)) = self.start_attempt(run_id, node, attempt, index, at_ms, changes) {
                if run.status == RunStatus::Queued {
                    started.push(*run);
                }
            }
        }
        Response::Started(started)
    }

    /// Checks `token` against the run's current attempt.
    fn fenced(&self, run_id: RunId, token: u64) -> Result<Run, Error> {
        let run = self.runs.get(&run_id).cloned().ok_or_else(|| not_found(run_id))?;
        if run.token != token {
            return Err(Error::FailedPrecondition(format!(
                "stale fencing token {token} for run {run_id}: the current attempt's token is {}",
                run.token
            )));
        }
        Ok(run)
    }

    /// `Heartbeat`: extends the lease of the fenced attempt.
    pub(super) fn heartbeat(
        &mut self,
        run_id: RunId,
        token: u64,
        at_ms: i64,
        changes: &mut Changes,
    ) -> CommandResult {
        let mut run = self.fenced(run_id, token)?;
        let cancel_requested = self.external_attempt(run_id).is_some_and(|a| a.cancel_requested);
        if run.status == RunStatus::Cancelled || (cancel_requested && run.status.is_active()) {
            return Ok(Response::Lease { cancelled: true });
        }
        if !run.status.is_active() {
            return Err(Error::FailedPrecondition(format!(
                "run {run_id} is {:?}; no lease to extend",
                run.status
            )));
        }
        let timeout = self
            .jobs
            .get(&run.job_id)
            .map_or(0, |j| j.spec.policies.timeouts.heartbeat_timeout_ms);
        run.status = RunStatus::Running;
        run.lease_expires_ms = at_ms.saturating_add(timeout as i64);
        self.put_run(run, changes);
        Ok(Response::Lease { cancelled: false })
    }

    /// `FinishAttempts`: [`State::finish_attempt`] for each result.
    pub(super) fn finish_attempts(
        &mut self,
        results: &[AttemptResult],
        at_ms: i64,
        changes: &mut Changes,
    ) -> Response {
        let mut recorded = 0;
        let mut refused = Vec::new();
        for result in results {
            match self.finish_attempt(
                result.run_id,
                result.token,
                &result.outcome,
                &result.output_tail,
                at_ms,
                changes,
            ) {
                Ok(_) => recorded += 1,
                Err(e) => refused.push((result.run_id, e.to_string())),
            }
        }
        Response::Finished { recorded, refused }
    }

    /// `FinishAttempt`: records the fenced attempt's result. A repeat of an
    /// already recorded result is acknowledged without change, so workers can
    /// resend until they see a commit; a result for a run that ended some
    /// other way (timed out, cancelled, skipped) is refused.
    ///
    /// An external attempt whose run a client cancelled meanwhile ends the
    /// run cancelled, keeping the worker's output and message.
    pub(super) fn finish_attempt(
        &mut self,
        run_id: RunId,
        token: u64,
        outcome: &AttemptOutcome,
        output_tail: &str,
        at_ms: i64,
        changes: &mut Changes,
    ) -> CommandResult {
        let mut run = self.fenced(run_id, token)?;
        let external = self.external_attempt(run_id).cloned();
        if run.status.is_terminal() {
            let recorded = matches!(run.status, RunStatus::Succeeded | RunStatus::Failed)
                || external.as_ref().is_some_and(|a| a.completed);
            if recorded {
                return Ok(Response::Run(Box::new(run)));
            }
            return Err(Error::FailedPrecondition(format!(
                "run {run_id} already ended {:?} without this result: the attempt is no longer current",
                run.status
            )));
        }
        if !run.status.is_active() {
            return Err(Error::FailedPrecondition(format!(
                "run {run_id} is {:?}; no attempt is running (its lease expired)",
                run.status
            )));
        }
        run.output_tail = tail(output_tail);
        if external.is_some() {
            self.update_external(run_id, |a| a.completed = true);
        }
        if external.is_some_and(|a| a.cancel_requested) {
            let error = match outcome {
                AttemptOutcome::Failed { message, .. } => format!(
                    "cancelled by a client; the worker stopped (attempt {}: {message})",
                    run.attempt
                ),
                AttemptOutcome::Succeeded => "cancelled by a client; the worker finished anyway".to_string(),
            };
            let ended = self.finish(run, RunStatus::Cancelled, &error, at_ms, changes);
            return Ok(Response::Run(Box::new(ended)));
        }
        // The run as this result left it: history retention may already have
        // dropped it from the state (an old run finishing after newer ones).
        let recorded = match outcome {
            AttemptOutcome::Succeeded => self.finish(run, RunStatus::Succeeded, "", at_ms, changes),
            AttemptOutcome::Failed {
                kind,
                message,
                retryable,
            } => {
                let error = format!("attempt {}: {message}", run.attempt);
                run.token = token;
                let failure = AttemptFailure {
                    retryable: *retryable,
                    kind: kind.clone(),
                    error,
                    give_up: RunStatus::Failed,
                };
                self.retry_or(run, failure, at_ms, changes)
            }
        };
        Ok(Response::Run(Box::new(recorded)))
    }

    /// `ExpireRuns`: times out what is really past its deadline at `at_ms`.
    pub(super) fn expire_runs(&mut self, run_ids: &[RunId], at_ms: i64, changes: &mut Changes) -> Response {
        let mut expired = Vec::new();
        for &run_id in run_ids {
            let Some(run) = self.runs.get(&run_id).cloned() else {
                continue;
            };
            let Some(deadline) = self.deadline(&run) else {
                continue;
            };
            if at_ms < deadline {
                continue;
            }
            expired.push(run_id);
            let cancel_requested = self.external_attempt(run_id).is_some_and(|a| a.cancel_requested);
            if cancel_requested && run.status.is_active() {
                self.finish(
                    run,
                    RunStatus::Cancelled,
                    "cancelled by a client; the worker did not confirm before its lease ran out",
                    at_ms,
                    changes,
                );
            } else if run.status == RunStatus::Pending {
                self.finish(
                    run,
                    RunStatus::TimedOut,
                    "start deadline exceeded before dispatch",
                    at_ms,
                    changes,
                );
            } else {
                let why = if at_ms >= run.lease_expires_ms {
                    "lease expired (no heartbeat)"
                } else {
                    "attempt timeout"
                };
                let error = format!("attempt {} on node {}: {why}", run.attempt, run.node.unwrap_or(0));
                let failure = AttemptFailure {
                    retryable: true,
                    kind: "timeout".into(),
                    error,
                    give_up: RunStatus::TimedOut,
                };
                self.retry_or(run, failure, at_ms, changes);
            }
        }
        Response::Fired {
            created: expired,
            refused: 0,
        }
    }

    /// `CancelRun`. A run waiting or running on a node's pool ends
    /// cancelled at once (the worker stops at its next heartbeat). A run an
    /// external worker is running is marked: the worker is told at its next
    /// heartbeat, and the run ends cancelled when the worker completes or
    /// its lease runs out (the run keeps its slot until then).
    pub(super) fn cancel_run(&mut self, run_id: RunId, at_ms: i64, changes: &mut Changes) -> CommandResult {
        let run = self.runs.get(&run_id).cloned().ok_or_else(|| not_found(run_id))?;
        if run.status.is_terminal() {
            return Err(Error::FailedPrecondition(format!(
                "run {run_id} already finished ({:?})",
                run.status
            )));
        }
        if run.status.is_active() && self.external_attempt(run_id).is_some() {
            self.update_external(run_id, |a| a.cancel_requested = true);
            let mut run = run;
            run.error = "cancel requested by a client; waiting for the worker".into();
            self.put_run(run.clone(), changes);
            return Ok(Response::Run(Box::new(self.runs[&run_id].clone())));
        }
        // Returned as cancelled even when history retention dropped it at once.
        let cancelled = self.finish(run, RunStatus::Cancelled, "cancelled by a client", at_ms, changes);
        Ok(Response::Run(Box::new(cancelled)))
    }

    /// Retries `run` after a failed attempt if the policy allows, else ends it
    /// with `failure.give_up`; returns the run as it is then.
    fn retry_or(&mut self, mut run: Run, failure: AttemptFailure, at_ms: i64, changes: &mut Changes) -> Run {
        let AttemptFailure {
            retryable,
            kind,
            error,
            give_up,
        } = failure;
        let policy = self
            .jobs
            .get(&run.job_id)
            .map(|j| j.spec.policies.retry.clone())
            .unwrap_or_default();
        let allowed =
            retryable && !policy.non_retryable_errors.contains(&kind) && run.attempt < policy.max_attempts;
        if allowed {
            let job_id = run.job_id.clone();
            run.status = RunStatus::Pending;
            run.node = None;
            let delay = retry_delay_ms(&policy, run.attempt, run.id);
            run.not_before_ms = at_ms.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
            run.error = error;
            self.count(&job_id, |c| c.retries += 1);
            let run_id = run.id;
            self.put_run(run, changes);
            self.runs[&run_id].clone()
        } else {
            self.finish(run, give_up, &error, at_ms, changes)
        }
    }
}

/// The last [`MAX_OUTPUT`] bytes of `output`, cut at a character boundary.
fn tail(output: &str) -> String {
    if output.len() <= MAX_OUTPUT {
        return output.to_string();
    }
    let mut start = output.len() - MAX_OUTPUT;
    while !output.is_char_boundary(start) {
        start += 1;
    }
    output[start..].to_string()
}
