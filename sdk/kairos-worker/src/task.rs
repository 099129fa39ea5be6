//! The handler's side of a task: what it receives ([`TaskContext`]), what it
//! returns (`Ok(output)` or a [`TaskError`]), and the trait it implements
//! ([`TaskHandler`]).
//!
//! A handler is told to stop through the context's cancellation token, for
//! one of three reasons ([`CancelReason`]). It should then return soon: its
//! result is still sent when the attempt is current (a cancelled run stays
//! cancelled whatever the result), and the worker's shutdown waits for it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::proto;

/// Runs tasks of the worker's job types.
///
/// Implemented for every `Fn(TaskContext) -> impl Future<Output =
/// Result<String, TaskError>>` closure that is `Send + Sync`, so a closure
/// returning an `async move` block is a handler.
pub trait TaskHandler: Send + Sync + 'static {
    /// Runs one task and returns its output (kept on the run, at most
    /// 64 KiB) or why it failed. Called concurrently, up to the worker's
    /// capacity, each call in its own tokio task; a panic counts as a
    /// retryable failure of kind `panic`.
    fn run(&self, task: TaskContext) -> impl Future<Output = Result<String, TaskError>> + Send;
}

impl<F, Fut> TaskHandler for F
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, TaskError>> + Send,
{
    fn run(&self, task: TaskContext) -> impl Future<Output = Result<String, TaskError>> + Send {
        self(task)
    }
}

/// Why a task's cancellation token fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// The run was cancelled (a heartbeat's answer said `cancel_requested`).
    /// The result is still recorded; the run stays cancelled.
    CancelRequested,
    /// The attempt is no longer current (a heartbeat was refused
    /// `FAILED_PRECONDITION` or `INVALID_ARGUMENT`): another attempt may be
    /// running elsewhere, and the result will be discarded.
    LeaseLost,
    /// The worker is shutting down (or stopping on an error).
    Shutdown,
}

/// A task's cancellation token and the reason it fired, shared by the
/// handler's context and the worker's heartbeat loop.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cancellation {
    token: CancellationToken,
    reason: Arc<OnceLock<CancelReason>>,
}

impl Cancellation {
    /// A cancellation that also fires when `parent` does (as
    /// [`CancelReason::Shutdown`]).
    pub(crate) fn child_of(parent: &CancellationToken) -> Self {
        Cancellation {
            token: parent.child_token(),
            reason: Arc::default(),
        }
    }

    /// Fires the token for `reason` (the first reason given wins).
    pub(crate) fn cancel(&self, reason: CancelReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Why the token fired; `None` while it has not.
    pub(crate) fn reason(&self) -> Option<CancelReason> {
        self.token
            .is_cancelled()
            .then(|| self.reason.get().copied().unwrap_or(CancelReason::Shutdown))
    }
}

/// One task (one attempt of one run) as the handler sees it.
#[derive(Debug)]
pub struct TaskContext {
    /// The job the run belongs to.
    pub job_id: String,
    /// The run.
    pub run_id: u64,
    /// The attempt of the run, 1 for the first.
    pub attempt: u32,
    /// The job's type (one the worker registered).
    pub job_type: String,
    /// The job's payload, as stored (JSON when the type has a schema).
    pub payload: Vec<u8>,
    /// The run's nominal (scheduled) time.
    pub nominal_time: Option<SystemTime>,
    /// The attempt is timed out at this time whatever its heartbeats.
    pub deadline: Option<SystemTime>,
    /// `job_id:nominal_time`: the same for every attempt of the run, for side
    /// effects that must happen once.
    pub idempotency_key: String,
    /// W3C trace context (`traceparent`, `tracestate`) of the run, if any.
    pub trace_context: HashMap<String, String>,
    /// The task's fencing token (the worker heartbeats and completes with it).
    pub task_token: Vec<u8>,
    /// The lease: the worker heartbeats every third of it.
    pub heartbeat_timeout: Option<Duration>,
    cancellation: Cancellation,
}

impl TaskContext {
    /// A context for `task` with a fresh cancellation token of its own: for
    /// testing a handler without a cluster ([`TaskContext::cancel_token`]
    /// cancels it).
    pub fn from_task(task: proto::Task) -> Self {
        TaskContext::new(task, Cancellation::default())
    }

    pub(crate) fn new(task: proto::Task, cancellation: Cancellation) -> Self {
        let time = |t: Option<prost_types::Timestamp>| t.and_then(|t| SystemTime::try_from(t).ok());
        TaskContext {
            job_id: task.job_id,
            run_id: task.run_id,
            attempt: task.attempt,
            job_type: task.job_type,
            payload: task.payload,
            nominal_time: time(task.nominal_time),
            deadline: time(task.deadline),
            idempotency_key: task.idempotency_key,
            trace_context: task.trace_context,
            task_token: task.task_token,
            heartbeat_timeout: task.heartbeat_timeout.and_then(|d| Duration::try_from(d).ok()),
            cancellation,
        }
    }

    /// Completes when the task should stop: the run was cancelled, the lease
    /// was lost, or the worker is shutting down ([`TaskContext::cancel_reason`]
    /// says which).
    pub async fn cancelled(&self) {
        self.cancellation.token.cancelled().await;
    }

    /// Whether the task should stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.token.is_cancelled()
    }

    /// Why the task should stop; `None` while it need not.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        self.cancellation.reason()
    }

    /// The task's cancellation token itself, to hand to code that takes one
    /// (cancelling it from the handler only stops the handler's own work).
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancellation.token
    }
}

/// Why a task failed, as recorded on the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TaskError {
    /// Kept on the run as its error (at most 64 KiB).
    pub message: String,
    /// No retry can help: the run fails now whatever its retry policy.
    pub non_retryable: bool,
    /// Matched against the job's `non_retryable_errors`; empty: the
    /// cluster's default, `worker_error`.
    pub kind: String,
    /// Output so far, kept on the run (at most 64 KiB).
    pub output: String,
}

impl TaskError {
    /// A retryable failure: the run's retry policy decides.
    pub fn new(message: impl Into<String>) -> Self {
        TaskError {
            message: message.into(),
            ..TaskError::default()
        }
    }

    /// A failure no retry can help (bad input, say): the run fails now.
    pub fn non_retryable(message: impl Into<String>) -> Self {
        TaskError {
            non_retryable: true,
            ..TaskError::new(message)
        }
    }

    /// The failure of a handler that stopped because its token fired: kind
    /// `cancelled`, retryable.
    pub fn cancelled(message: impl Into<String>) -> Self {
        TaskError::new(message).with_kind("cancelled")
    }

    /// With this kind (matched against the job's `non_retryable_errors`).
    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = kind.into();
        self
    }

    /// With this output so far.
    pub fn with_output(mut self, output: impl Into<String>) -> Self {
        self.output = output.into();
        self
    }
}

impl From<TaskError> for proto::TaskFailure {
    fn from(error: TaskError) -> Self {
        proto::TaskFailure {
            message: error.message,
            non_retryable: error.non_retryable,
            kind: error.kind,
            output: error.output,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_converts_times_and_reports_why_it_was_cancelled() {
        let task = proto::Task {
            run_id: 7,
            nominal_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            heartbeat_timeout: Some(prost_types::Duration { seconds: 3, nanos: 0 }),
            ..proto::Task::default()
        };
        let parent = CancellationToken::new();
        let context = TaskContext::new(task, Cancellation::child_of(&parent));
        assert_eq!(
            context.nominal_time,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(context.heartbeat_timeout, Some(Duration::from_secs(3)));
        assert_eq!(context.cancel_reason(), None);
        parent.cancel();
        assert_eq!(context.cancel_reason(), Some(CancelReason::Shutdown));

        let cancellation = Cancellation::default();
        let context = TaskContext::new(proto::Task::default(), cancellation.clone());
        cancellation.cancel(CancelReason::LeaseLost);
        cancellation.cancel(CancelReason::CancelRequested);
        assert!(context.is_cancelled());
        assert_eq!(context.cancel_reason(), Some(CancelReason::LeaseLost));
    }

    #[test]
    fn task_error_constructors() {
        let error = TaskError::non_retryable("bad input")
            .with_kind("validation")
            .with_output("half");
        assert_eq!(error.to_string(), "bad input");
        let failure = proto::TaskFailure::from(error);
        assert!(failure.non_retryable);
        assert_eq!(
            (failure.kind.as_str(), failure.output.as_str()),
            ("validation", "half")
        );
        assert_eq!(TaskError::cancelled("stop").kind, "cancelled");
        assert!(!TaskError::new("x").non_retryable);
    }
}
