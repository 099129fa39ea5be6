//! The deterministic core of Kairos: jobs, schedules, validation and the state
//! machine.
//!
//! Nothing in this module does I/O, spawns tasks or reads a clock. Time arrives
//! inside each [`Request`], stamped by the Raft leader when it proposed the
//! command, so every replica applying the same log reaches the same state. That
//! makes the core unit-testable with plain table tests and keeps the
//! replication layer (`crate::raft`) free of scheduling logic.
//!
//! - [`job`]: the job record, its spec, policies and partial updates.
//! - [`schedule`]: cron / one-shot / interval schedules and their fire times.
//! - [`validate`]: input checks done before a command is proposed.
//! - [`job_type`]: job types registered by external workers, and payload schemas.
//! - [`run`]: runs, attempt outcomes, counters and retry back-off.
//! - [`firing`]: which due fires run under the catch-up policy.
//! - [`acl`]: permissions, roles, tokens and bindings, and the authorization check.
//! - [`audit`]: the hash-chained audit log.
//! - [`command`]: the entries of the log (`Request`, `Command`) and their results.
//! - [`state`]: the replicated state and `State::apply`, one child module per concept.

pub mod acl;
pub mod audit;
pub mod command;
pub mod firing;
pub mod job;
pub mod job_type;
pub mod run;
pub mod schedule;
pub mod state;
pub mod validate;

pub use command::{Assignment, CallContext, Command, CommandResult, Request, Response};
pub use firing::MAX_FIRE_AHEAD_MS;
pub use job::{Job, JobId, JobPatch, JobSpec, JobStatus};
pub use run::{Run, RunId, RunStatus};
pub use schedule::{Schedule, ScheduleSpec};
pub use state::{Changes, JobFilter, JobPage, RequestRecord, RunFilter, State, WriteRecord};
