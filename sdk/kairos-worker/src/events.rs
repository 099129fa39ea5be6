//! What a worker tells an observer ([`crate::Worker::with_events`]).

use std::time::SystemTime;

/// One step of a worker's life, in the order it happened (per task).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerEvent {
    /// A node accepted a registration (the first, or a new one after the
    /// node forgot the worker or became unreachable).
    Registered {
        /// Names the registration in `PollTask`.
        worker_id: String,
        /// The node holding it.
        node_id: u64,
        /// The endpoint that answered, as configured (with its scheme).
        endpoint: String,
    },
    /// A poll returned a task; its handler starts next.
    TaskReceived {
        /// The job the run belongs to.
        job_id: String,
        /// The run.
        run_id: u64,
        /// The attempt of the run (1 for the first).
        attempt: u32,
        /// The run's nominal (scheduled) time.
        nominal_time: Option<SystemTime>,
        /// The task's fencing token.
        task_token: Vec<u8>,
    },
    /// A heartbeat's answer said the run was cancelled; the handler's token
    /// has been cancelled. Sent once per task.
    CancelRequested {
        /// The run.
        run_id: u64,
        /// The attempt.
        attempt: u32,
    },
    /// The task is over for this worker: `Ok` when `CompleteTask` recorded
    /// the result, else the code that ended it (`FAILED_PRECONDITION`: the
    /// attempt was no longer current and the result was discarded, whether
    /// a heartbeat or `CompleteTask` said so).
    TaskCompleted {
        /// The run.
        run_id: u64,
        /// The attempt.
        attempt: u32,
        /// What became of the result.
        outcome: Result<(), tonic::Code>,
    },
}
