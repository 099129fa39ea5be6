//! Commands: what a Raft log entry asks of the state machine, and what
//! applying it answers.
//!
//! A [`Request`] is one entry of the log: a [`Command`] with the leader's
//! clock reading, the caller's principal and an optional write id, all
//! stamped before the entry entered the log, so that every replica applies
//! exactly the same thing. [`crate::scheduler::State::apply`] turns it into
//! a [`CommandResult`]: a [`Response`] or an [`Error`], which travel back to
//! the node that proposed the entry.
//!
//! These types are replicated and stored: their encoding is part of the
//! log's format (see `crate::codec`). A new command is a new variant at the
//! end of the enum.
//!
//! IMPLEMENTATION CAVEATS: a command carries no validation of its own; the
//! API checks inputs before proposing (`scheduler::validate`), and `apply`
//! re-checks only what depends on the state.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::acl::{Binding, Credential, Role, Token};
use super::audit::AuditRecord;
use super::job::{Job, JobId, JobPatch, JobSpec};
use super::job_type::JobTypeDef;
use super::run::{AttemptOutcome, AttemptResult, Run, RunId};
use super::state::{Published, SinkDef};
use crate::error::Error;

/// One entry of the Raft log: a command with its context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Leader wall-clock time when the command was proposed, Unix ms.
    pub at_ms: i64,
    /// Who asked (recorded as `created_by` / `updated_by`).
    pub principal: String,
    /// What to do.
    pub command: Command,
    /// Identifies a client write across the retries of the node that
    /// routes it (see [`WRITE_ID_TTL_MS`](super::state::WRITE_ID_TTL_MS)):
    /// a second entry with the same id is not applied again but answers
    /// with the first one's result.
    pub write_id: Option<String>,
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
    /// Fire every listed job whose next fire is the listed time (proposed by
    /// the leader's timer, one entry per tick).
    FireBatch {
        /// `(job id, the job's next_fire_ms as the timer saw it)`.
        fires: Vec<(JobId, i64)>,
    },
    /// Run a job now (nominal time = the command's time).
    TriggerJob {
        /// Which job.
        id: JobId,
    },
    /// Create runs for the job's fire times in `[start_ms, end_ms)`.
    Backfill {
        /// Which job.
        id: JobId,
        /// Range start, inclusive, Unix ms.
        start_ms: i64,
        /// Range end, exclusive, Unix ms.
        end_ms: i64,
    },
    /// Start attempt `attempt` of a pending run on `node`; the entry's log
    /// index becomes the attempt's fencing token.
    StartAttempt {
        /// Which run.
        run_id: RunId,
        /// Executing node.
        node: u64,
        /// Must be the run's attempt count plus one.
        attempt: u32,
    },
    /// `StartAttempt` for many runs in one entry (one dispatcher tick). The
    /// entry's log index is the fencing token of every attempt it starts:
    /// tokens only need to differ between attempts of the same run.
    StartAttempts {
        /// `(run id, node, attempt)` for each run to start.
        starts: Vec<(RunId, u64, u32)>,
    },
    /// A worker's lease renewal for the attempt with fencing token `token`.
    Heartbeat {
        /// Which run.
        run_id: RunId,
        /// The attempt's fencing token.
        token: u64,
    },
    /// A worker's result for the attempt with fencing token `token`.
    FinishAttempt {
        /// Which run.
        run_id: RunId,
        /// The attempt's fencing token.
        token: u64,
        /// Success or failure.
        outcome: AttemptOutcome,
        /// Last output of the handler (truncated to 4 KiB).
        output_tail: String,
    },
    /// `FinishAttempt` for many attempts in one entry (one flush of a node's
    /// result reporter). Each result is applied on its own: a stale or
    /// repeated one does not hold back the others.
    FinishAttempts {
        /// The results, in the order the node reported them.
        results: Vec<AttemptResult>,
    },
    /// Time out attempts whose lease or time limit expired and runs that
    /// missed their start deadline (each is re-checked against the command time).
    ExpireRuns {
        /// Candidate runs, as the leader's timer saw them.
        run_ids: Vec<RunId>,
    },
    /// Cancel a run that has not finished.
    CancelRun {
        /// Which run.
        run_id: RunId,
    },
    /// Several requests in one entry: the leader's write batcher
    /// (`raft::batcher`) packs every write that arrived while the previous
    /// entries were in flight, so they share one Raft entry and one fsync.
    /// Each request is applied on its own, in order, with its own time,
    /// principal and write id, and has its own result; a batch inside a
    /// batch is refused.
    Batch {
        /// The requests, in arrival order.
        requests: Vec<Request>,
    },
    /// `FireBatch` ahead of time: every listed job fires if its next fire is
    /// the listed time and at most `until_ms` (proposed by the leader's
    /// timer up to [`MAX_FIRE_AHEAD_MS`](super::MAX_FIRE_AHEAD_MS) before
    /// the nominal times, so that runs are dispatched before they are due). Fires in `(at_ms, until_ms]` run on
    /// time under every catch-up policy. Last in the enum: the encoding of a
    /// variant is its position (see `crate::codec`), so a new command goes
    /// at the end, with a new format version.
    FireWindow {
        /// `(job id, the job's next_fire_ms as the timer saw it)`.
        fires: Vec<(JobId, i64)>,
        /// The latest nominal time this entry fires, Unix ms.
        until_ms: i64,
    },
    /// A client's write: `command` on behalf of the caller `call` describes.
    /// `apply` resolves the caller's credential against the ACL at this
    /// entry, checks the permission the command needs, applies it only if
    /// allowed, and appends the call's audit entry either way (format
    /// version 4 on).
    Client {
        /// Who called, how, and through which node.
        call: CallContext,
        /// What they asked for (a job, run or ACL command; never a batch or
        /// an internal command).
        command: Box<Command>,
    },
    /// Create the root token, once per cluster (`acl bootstrap`).
    AclBootstrap {
        /// The token, holding the role `root`.
        token: Token,
    },
    /// Create a role; fails if the name is taken.
    CreateRole {
        /// The role.
        role: Role,
    },
    /// Delete a role (tokens and bindings naming it lose it).
    DeleteRole {
        /// Its name.
        name: String,
    },
    /// Create a token; fails if the accessor id is taken.
    CreateToken {
        /// The token (its secret's hash only).
        token: Token,
    },
    /// Revoke a token: it fails on every node from this entry on.
    RevokeToken {
        /// Its accessor id.
        accessor_id: String,
    },
    /// Bind a certificate subject to a role.
    CreateBinding {
        /// The binding.
        binding: Binding,
    },
    /// Remove a binding.
    DeleteBinding {
        /// The binding.
        binding: Binding,
    },
    /// Audit records a node made outside a write: denials it decided before
    /// proposing (coalesced beyond a rate), allowed reads with
    /// `--audit-reads`, membership changes.
    RecordAudit {
        /// The records, in the order the node made them.
        records: Vec<AuditRecord>,
    },
    /// Register (or replace) the job types an external worker declares
    /// (format version 5 on).
    RegisterJobTypes {
        /// The types (`registered_by` and `updated_ms` are set at apply).
        types: Vec<JobTypeDef>,
    },
    /// `StartAttempts` naming, for each attempt, the external worker it is
    /// assigned to, if any (the dispatcher's entry from format version 5 on).
    AssignAttempts {
        /// One per attempt to start.
        starts: Vec<Assignment>,
    },
    /// Create a role, limited to some job types for `worker:connect`
    /// (`CreateRole` of format version 4 cannot carry type globs).
    CreateRoleScoped {
        /// The role (its `types` are the next field).
        role: Role,
        /// Job type globs; empty: any type.
        types: Vec<String>,
    },
    /// Record a published event and create the runs it triggers (format
    /// version 6 on, as every command below).
    PublishEvent {
        /// Its topic.
        topic: String,
        /// Its attributes.
        attributes: BTreeMap<String, String>,
        /// Its payload, handed to the runs.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        /// The publisher's idempotency key; empty: none.
        idempotency_key: String,
    },
    /// `DeleteJob` even when other jobs run after it (they stay, blocked).
    ForceDeleteJob {
        /// Which job.
        id: JobId,
        /// Delete only at this version.
        expected_version: Option<u64>,
    },
    /// Register a sink; fails if the name is taken.
    CreateSink {
        /// The sink (`created_*` are set at apply; `delivered` 0 means the
        /// newest position).
        sink: SinkDef,
    },
    /// Remove a sink.
    DeleteSink {
        /// Its name.
        name: String,
    },
    /// The leader's delivery progress: the sink's receiver acknowledged
    /// every event up to `position`.
    AckSink {
        /// The sink.
        name: String,
        /// The position acknowledged.
        position: u64,
    },
    /// Create a role limited to some job types and event topics.
    CreateRoleWithScopes {
        /// The role.
        role: Role,
        /// Job type globs; empty: any type.
        types: Vec<String>,
        /// Topic globs; empty: any topic.
        topics: Vec<String>,
    },
    /// Record the cluster version (`crate::cluster_version`): proposed by
    /// the leader only once every member supports `version`, since nodes of
    /// 0.1 cannot decode this command. Never lowers the recorded version.
    SetClusterVersion {
        /// The lowest version among the members.
        version: crate::cluster_version::Version,
    },
}

/// One attempt the dispatcher starts: on a node's worker pool, or for an
/// external worker connected to that node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Which run.
    pub run_id: RunId,
    /// The node whose pool runs it, or that holds the external worker.
    pub node: u64,
    /// Must be the run's attempt count plus one.
    pub attempt: u32,
    /// The external worker's id; `None` for the node's own pool.
    pub worker: Option<String>,
}

/// Who made a client call and how, as the receiving node verified it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallContext {
    /// The credential the node verified.
    pub credential: Credential,
    /// The caller's address.
    pub source: String,
    /// The node that received the call.
    pub node: u64,
    /// The RPC, e.g. `CreateJob`.
    pub method: String,
    /// What it is about, e.g. the job id.
    pub resource: String,
    /// The client's request id, if any.
    pub request_id: String,
    /// The W3C trace id, if the call carried one.
    pub trace_id: String,
}

impl Request {
    /// How many changes the request stands for: one, or each fire, start,
    /// result or expiry it lists, or the sum over a batch. What the snapshot
    /// policy counts, since a restart replays the log behind the snapshot
    /// and applying an entry costs about this much.
    pub fn weight(&self) -> u64 {
        match &self.command {
            Command::Batch { requests } => requests.iter().map(Request::weight).sum(),
            Command::FireBatch { fires } | Command::FireWindow { fires, .. } => fires.len().max(1) as u64,
            Command::StartAttempts { starts } => starts.len().max(1) as u64,
            Command::FinishAttempts { results } => results.len().max(1) as u64,
            Command::ExpireRuns { run_ids } => run_ids.len().max(1) as u64,
            Command::RecordAudit { records } => records.len().max(1) as u64,
            Command::AssignAttempts { starts } => starts.len().max(1) as u64,
            _ => 1,
        }
    }
}

impl Command {
    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::CreateJob { .. } => "create_job",
            Command::UpdateJob { .. } => "update_job",
            Command::DeleteJob { .. } => "delete_job",
            Command::SetPaused { .. } => "set_paused",
            Command::FireBatch { .. } => "fire_batch",
            Command::TriggerJob { .. } => "trigger_job",
            Command::Backfill { .. } => "backfill",
            Command::StartAttempt { .. } => "start_attempt",
            Command::StartAttempts { .. } => "start_attempts",
            Command::Heartbeat { .. } => "heartbeat",
            Command::FinishAttempt { .. } => "finish_attempt",
            Command::FinishAttempts { .. } => "finish_attempts",
            Command::ExpireRuns { .. } => "expire_runs",
            Command::CancelRun { .. } => "cancel_run",
            Command::Batch { .. } => "batch",
            Command::FireWindow { .. } => "fire_window",
            Command::Client { .. } => "client",
            Command::AclBootstrap { .. } => "acl_bootstrap",
            Command::CreateRole { .. } => "create_role",
            Command::DeleteRole { .. } => "delete_role",
            Command::CreateToken { .. } => "create_token",
            Command::RevokeToken { .. } => "revoke_token",
            Command::CreateBinding { .. } => "create_binding",
            Command::DeleteBinding { .. } => "delete_binding",
            Command::RecordAudit { .. } => "record_audit",
            Command::RegisterJobTypes { .. } => "register_job_types",
            Command::AssignAttempts { .. } => "assign_attempts",
            Command::CreateRoleScoped { .. } => "create_role_scoped",
            Command::PublishEvent { .. } => "publish_event",
            Command::ForceDeleteJob { .. } => "force_delete_job",
            Command::CreateSink { .. } => "create_sink",
            Command::DeleteSink { .. } => "delete_sink",
            Command::AckSink { .. } => "ack_sink",
            Command::CreateRoleWithScopes { .. } => "create_role_with_scopes",
            Command::SetClusterVersion { .. } => "set_cluster_version",
        }
    }
}

/// The successful outcome of a command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The job as it is after the command (shared with the job table and
    /// with the write record that remembers this result).
    Job(Arc<Job>),
    /// The job was deleted.
    Deleted,
    /// A run as it is after the command.
    Run(Box<Run>),
    /// Runs created by a fire batch, trigger or backfill, and fires refused as
    /// duplicates or stale.
    Fired {
        /// New runs, in creation order.
        created: Vec<RunId>,
        /// Listed fires that did not match a job's next fire (already fired, paused, deleted).
        refused: u32,
    },
    /// The attempts a `StartAttempts` entry started (runs now queued).
    Started(Vec<Run>),
    /// What became of each result of a `FinishAttempts` entry.
    Finished {
        /// Results recorded now or acknowledged as repeats.
        recorded: u32,
        /// Results refused, with why (stale fencing token, run gone, ...).
        refused: Vec<(RunId, String)>,
    },
    /// A heartbeat was accepted; `cancelled` tells the worker to stop.
    Lease {
        /// The run was cancelled: abort the attempt.
        cancelled: bool,
    },
    /// A Raft-internal entry (blank or membership) that carries no command.
    Empty,
    /// The result of each request of a `Batch`, in its order.
    Batch(Vec<CommandResult>),
    /// A role as stored.
    Role(Role),
    /// A token as stored (never its secret).
    Token(Token),
    /// A binding as stored.
    Binding(Binding),
    /// Audit records appended; the chain's head sequence number after them.
    Audited(u64),
    /// Job types as registered.
    JobTypes(Vec<JobTypeDef>),
    /// What a publish created (format version 6 on, as below).
    Published(Published),
    /// A sink as stored.
    Sink(Box<SinkDef>),
}

/// What applying a command yields on every replica.
pub type CommandResult = Result<Response, Error>;
