//! The replicated state and the one function that changes it.
//!
//! [`State::apply`] takes a [`Request`] — a [`Command`] plus the leader's clock
//! reading and the caller's principal, both stamped *before* the entry entered
//! the Raft log — and returns a [`CommandResult`]. Every replica applies the same
//! log, so the function must be deterministic: no clock, no randomness, no hash
//! map iteration, no I/O. It also reports which runs it changed ([`Changes`]),
//! for run watchers.
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
//! layer (`raft::state_machine`) makes it durable as snapshot plus log.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::firing::MAX_FIRE_AHEAD_MS;
use super::job::{intern_principal, Job, JobId, JobPatch, JobSpec, JobStatus};
use super::run::{AttemptOutcome, AttemptResult, JobCounters, Run, RunId};
use super::schedule::{Schedule, ScheduleMemo};
use crate::error::Error;

#[path = "state_runs.rs"]
mod runs;
pub use runs::{RunFilter, MAX_BACKFILL_RUNS, MAX_PENDING_RUNS};
#[path = "state_requests.rs"]
mod requests;
pub use requests::{body_hash, request_key, LegacyRequestRecord, RequestKey, RequestRecord};

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
    /// routes it (see [`WRITE_ID_TTL_MS`]): a second entry with the same id
    /// is not applied again but answers with the first one's result.
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
    /// the listed time and at most `until_ms` (proposed by the leader's timer
    /// up to [`MAX_FIRE_AHEAD_MS`] before the nominal times, so that runs are
    /// dispatched before they are due). Fires in `(at_ms, until_ms]` run on
    /// time under every catch-up policy. Last in the enum: the encoding of a
    /// variant is its position, and older logs hold the others.
    FireWindow {
        /// `(job id, the job's next_fire_ms as the timer saw it)`.
        fires: Vec<(JobId, i64)>,
        /// The latest nominal time this entry fires, Unix ms.
        until_ms: i64,
    },
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
}

/// What applying a command yields on every replica.
pub type CommandResult = Result<Response, Error>;

/// What applied commands changed that someone outside the state follows:
/// the runs, for `WatchRuns`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Runs created, changed or removed.
    pub runs: BTreeSet<RunId>,
    /// Log index of the entry being applied; stamped on every run it changes.
    pub index: u64,
}

/// What a `write_id` remembers: the first entry's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriteRecord {
    /// When it was applied, Unix ms (for expiry).
    pub at_ms: i64,
    /// Its result, returned again to a retry.
    pub result: CommandResult,
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

/// A map of replicated content. Persistent (structure-shared) so that a
/// [`StateImage`] of the whole state is taken in O(1) and encoded for a
/// snapshot on another thread while the state machine goes on applying:
/// mutations copy only the nodes the image still shares.
pub type Table<K, V> = imbl::OrdMap<K, V>;

/// The replicated content of a [`State`], without its derived indexes: what a
/// snapshot holds. Taking one ([`State::image`]) copies five map roots.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StateImage {
    jobs: Table<JobId, Arc<Job>>,
    requests: Table<RequestKey, RequestRecord>,
    writes: Table<String, WriteRecord>,
    runs: Table<RunId, Run>,
    next_run_id: RunId,
    counters: Table<JobId, JobCounters>,
}

/// A [`StateImage`] as versions before 2026-12-01 encoded it (snapshot
/// files `KSNAP001`): request records keyed by request id, holding the job
/// id and a copy of the created job. Read only to migrate it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LegacyStateImage {
    jobs: Table<JobId, Arc<Job>>,
    requests: Table<String, LegacyRequestRecord>,
    writes: Table<String, WriteRecord>,
    runs: Table<RunId, Run>,
    next_run_id: RunId,
    counters: Table<JobId, JobCounters>,
}

#[cfg(test)]
impl LegacyStateImage {
    /// An older version's image of `jobs` and create `requests` (tests of the migration).
    pub fn of(jobs: Vec<Job>, requests: Vec<(String, LegacyRequestRecord)>) -> LegacyStateImage {
        LegacyStateImage {
            jobs: jobs.into_iter().map(|j| (j.id.clone(), Arc::new(j))).collect(),
            requests: requests.into_iter().collect(),
            ..LegacyStateImage::default()
        }
    }
}

impl From<LegacyStateImage> for StateImage {
    fn from(legacy: LegacyStateImage) -> StateImage {
        let LegacyStateImage {
            jobs,
            requests,
            writes,
            runs,
            next_run_id,
            counters,
        } = legacy;
        let mut image = StateImage {
            jobs,
            requests: Table::default(),
            writes,
            runs,
            next_run_id,
            counters,
        };
        image.insert_legacy_requests(requests);
        image
    }
}

impl StateImage {
    /// Adds a job (building an image from stored records, one at a time, so
    /// that no intermediate list of every record is held).
    pub fn insert_job(&mut self, job: Job) {
        self.jobs.insert(job.id.clone(), Arc::new(job));
    }

    /// Adds a create request record under its key.
    pub fn insert_request(&mut self, key: RequestKey, record: RequestRecord) {
        self.requests.insert(key, record);
    }

    /// Adds the create request records of an older version, once every job
    /// is in (a record without a copy of its job refers to the stored one).
    pub fn insert_legacy_requests(
        &mut self,
        records: impl IntoIterator<Item = (String, LegacyRequestRecord)>,
    ) {
        for (request_id, record) in records {
            if let Some(migrated) = record.migrate(&self.jobs) {
                self.requests.insert(request_key(&request_id), migrated);
            }
        }
    }

    /// Adds a write record.
    pub fn insert_write(&mut self, write_id: String, record: WriteRecord) {
        self.writes.insert(write_id, record);
    }

    /// Adds a run.
    pub fn insert_run(&mut self, run: Run) {
        self.runs.insert(run.id, run);
    }

    /// Adds a job's counters.
    pub fn insert_counters(&mut self, job_id: JobId, counters: JobCounters) {
        self.counters.insert(job_id, counters);
    }

    /// Sets the id the next run gets.
    pub fn set_next_run_id(&mut self, next_run_id: RunId) {
        self.next_run_id = next_run_id;
    }
}

/// The whole replicated state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// Every job, by id. Behind an `Arc` so that a map node copied after an
    /// image was taken copies pointers, not jobs, and so that the nodes,
    /// sized for 16 entries, waste pointers rather than whole jobs.
    jobs: Table<JobId, Arc<Job>>,
    /// Remembered create request ids, by key (see `state_requests.rs`).
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
}

impl State {
    /// The replicated content, sharing its maps with this state: O(1), and
    /// later changes to the state do not show in it.
    pub fn image(&self) -> StateImage {
        StateImage {
            jobs: self.jobs.clone(),
            requests: self.requests.clone(),
            writes: self.writes.clone(),
            runs: self.runs.clone(),
            next_run_id: self.next_run_id,
            counters: self.counters.clone(),
        }
    }

    /// Rebuilds a state (with its derived indexes) from its replicated content.
    pub fn from_image(image: StateImage) -> State {
        let StateImage {
            jobs,
            requests,
            writes,
            runs,
            next_run_id,
            counters,
        } = image;
        let mut state = State {
            jobs,
            requests,
            writes,
            runs,
            next_run_id,
            counters,
            ..State::default()
        };
        state.rebuild_indexes();
        state
    }

    /// A hash of the replicated content (not the derived indexes): replicas
    /// that applied the same entries have the same digest. For checkers; it
    /// encodes the whole state, so it costs as much as a snapshot.
    pub fn digest(&self) -> u64 {
        use std::hash::Hasher;
        let bytes = postcard::to_stdvec(&self.image()).expect("encoding the state cannot fail");
        // `DefaultHasher::new` has fixed keys: the same bytes hash the same
        // in every process of a build.
        let mut hasher = std::hash::DefaultHasher::new();
        hasher.write(&bytes);
        hasher.finish()
    }

    /// Recomputes the derived indexes from the replicated content.
    fn rebuild_indexes(&mut self) {
        self.request_expiry = self.requests.iter().map(|(key, r)| (r.at_ms, *key)).collect();
        self.write_expiry = self.writes.iter().map(|(id, w)| (w.at_ms, id.clone())).collect();
        self.fire_index = self.jobs().filter_map(fire_entry).collect();
        self.runs_by_job.clear();
        self.deadline_index.clear();
        self.filed_deadline.clear();
        self.pending_order.clear();
        self.pending_by_job.clear();
        self.active_by_job.clear();
        self.succeeded_by_job.clear();
        self.ended_otherwise_by_job.clear();
        // A second handle on the persistent map (O(1)), not a copy of every run.
        let runs = self.runs.clone();
        for run in runs.values() {
            self.index_run(run);
        }
    }

    /// Inserts or replaces a job, keeping the fire index right; returns the
    /// stored job.
    fn put_job(&mut self, job: Job) -> Arc<Job> {
        if let Some(old) = self.job(&job.id).and_then(fire_entry) {
            self.fire_index.remove(&old);
        }
        if let Some(entry) = fire_entry(&job) {
            self.fire_index.insert(entry);
        }
        let id = job.id.clone();
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
        if let Some(entry) = self.jobs.remove(id).and_then(|job| fire_entry(&job)) {
            self.fire_index.remove(&entry);
        }
        for run_id in self.runs_by_job.get(id).cloned().unwrap_or_default() {
            self.remove_run(run_id, changes);
        }
        self.counters.remove(id);
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

    /// Applies one command, the entry at log index `index`; the result is the
    /// same on every replica.
    pub fn apply(&mut self, index: u64, request: &Request, changes: &mut Changes) -> CommandResult {
        changes.index = index;
        self.expire_writes(request.at_ms);
        let Some(write_id) = &request.write_id else {
            return self.apply_command(index, request, changes);
        };
        // A retry of a write that was applied already: its first result.
        if let Some(record) = self.writes.get(write_id) {
            return record.result.clone();
        }
        let result = self.apply_command(index, request, changes);
        let record = WriteRecord {
            at_ms: request.at_ms,
            result: result.clone(),
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

    fn apply_command(&mut self, index: u64, request: &Request, changes: &mut Changes) -> CommandResult {
        let at_ms = request.at_ms;
        let principal = request.principal.as_str();
        match &request.command {
            Command::CreateJob { id, spec, request_id } => {
                self.expire_requests(at_ms);
                self.create(id, spec, request_id.as_deref(), at_ms, principal)
            }
            Command::UpdateJob {
                id,
                expected_version,
                patch,
            } => {
                let job = self.job_at_version(id, Some(*expected_version))?;
                let schedule_changed = patch.schedule.as_ref().is_some_and(|s| *s != job.spec.schedule);
                let resumed = job.spec.paused && patch.paused == Some(false);
                let paused = !job.spec.paused && patch.paused == Some(true);
                let mut updated = Job::clone(job);
                patch.clone().apply_to(&mut updated.spec);
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
            Command::DeleteJob { id, expected_version } => {
                self.job_at_version(id, *expected_version)?;
                self.remove_job(id, changes);
                Ok(Response::Deleted)
            }
            Command::SetPaused { id, paused } => {
                let job = self.job_at_version(id, None)?;
                if job.spec.paused == *paused {
                    // Already in the requested state: nothing changes, the version stays.
                    return Ok(Response::Job(job.clone()));
                }
                let mut updated = Job::clone(job);
                updated.spec.paused = *paused;
                if *paused {
                    self.cancel_runs_ahead(id, at_ms, |_| false, PAUSED_AHEAD, changes);
                } else {
                    // Paused time is not caught up: the next fire is after the resume.
                    updated.next_fire_ms = next_fire_after_fired(&updated, at_ms);
                }
                self.store_change(updated, at_ms, principal)
            }
            Command::FireBatch { fires } => Ok(self.fire_batch(fires, at_ms, at_ms, changes)),
            Command::FireWindow { fires, until_ms } => {
                if *until_ms > at_ms.saturating_add(MAX_FIRE_AHEAD_MS) {
                    return Err(Error::InvalidArgument(format!(
                        "fire window: until {until_ms} is more than {MAX_FIRE_AHEAD_MS} ms after the entry's time {at_ms}"
                    )));
                }
                Ok(self.fire_batch(fires, at_ms, (*until_ms).max(at_ms), changes))
            }
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
            Command::Batch { requests } => Ok(Response::Batch(
                requests
                    .iter()
                    .map(|request| match request.command {
                        Command::Batch { .. } => {
                            Err(Error::InvalidArgument("a batch cannot contain a batch".into()))
                        }
                        _ => self.apply(index, request, changes),
                    })
                    .collect(),
            )),
        }
    }

    fn create(
        &mut self,
        id: &str,
        spec: &JobSpec,
        request_id: Option<&str>,
        at_ms: i64,
        principal: &str,
    ) -> CommandResult {
        if let Some(answer) = request_id.and_then(|rid| self.repeated_create(rid, id, spec, principal)) {
            return answer.map(Response::Job);
        }
        if self.jobs.contains_key(id) {
            return Err(Error::AlreadyExists(format!("job {id:?} already exists")));
        }
        let mut job = self.new_job(id, spec, at_ms, principal);
        job.next_fire_ms = self.next_fire_memo(spec, at_ms);
        if let Some(rid) = request_id {
            self.remember_request(rid, id, spec, at_ms);
        }
        Ok(Response::Job(self.put_job(job)))
    }

    /// Job `id` as a create at `at_ms` by `principal` makes it, before its
    /// first fire is computed.
    fn new_job(&self, id: &str, spec: &JobSpec, at_ms: i64, principal: &str) -> Job {
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

    fn store_change(&mut self, mut job: Job, at_ms: i64, principal: &str) -> CommandResult {
        job.version += 1;
        job.updated_at_ms = at_ms;
        job.updated_by = intern_principal(principal);
        Ok(Response::Job(self.put_job(job)))
    }
}

/// The fire-index entry of a job, if it can fire.
fn fire_entry(job: &Job) -> Option<(i64, JobId)> {
    if job.spec.paused {
        return None;
    }
    job.next_fire_ms.map(|t| (t, job.id.clone()))
}

/// Why a run committed ahead was cancelled by a pause.
const PAUSED_AHEAD: &str = "cancelled: the job was paused before this fire's nominal time";
/// Why a run committed ahead was cancelled by a schedule change.
const RESCHEDULED_AHEAD: &str = "cancelled: the job's new schedule has no fire at this nominal time";

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

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
