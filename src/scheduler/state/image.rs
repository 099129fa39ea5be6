//! The image of the state: its replicated content without the derived
//! indexes, which is what a snapshot holds, and the formats it was stored in.
//!
//! Taking an image ([`State::image`]) copies six map roots, since the maps
//! are persistent ([`Table`]); [`State::from_image`] rebuilds the indexes.
//! The encoding of an image *is* the snapshot's data, so the field order and
//! types of [`Image`] are part of the storage format.
//!
//! One struct, [`Image`], defines the encoded image of every format; what
//! changed between formats is its type parameters, the table of create
//! request records and the security part:
//! - [`StateImage`] (format version 5, snapshot files `KSNAP005` on):
//!   request records under the hash of their request id
//!   ([`RequestRecord`]), then the ACL tables and the audit log
//!   ([`SecurityImage`]), then registered job types, external attempts and
//!   role type globs ([`WorkersImage`]), then (format version 6,
//!   `KSNAP006`, on) published events, run triggers, dependency joins,
//!   sinks and role topic globs ([`IntegrationImage`]);
//! - [`V5StateImage`] (format version 5): the same without the
//!   integration part, migrated with it empty;
//! - [`V4StateImage`] (format version 4): the same without the workers'
//!   part, migrated with it empty;
//! - [`V3StateImage`] (format versions 2 and 3): the same without the
//!   security part, which is `()` and so encodes as nothing. Read as such
//!   and migrated with an empty ACL and audit log;
//! - [`LegacyStateImage`] (format version 1, snapshot files `KSNAP001`,
//!   before 2026-12-01): records under the request id, holding the job id
//!   and a copy of the created job ([`LegacyRequestRecord`]), no security
//!   part. Read only to migrate it (`raft::legacy`), with `From`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::integration::IntegrationImage;
use super::jobs::fire_entry;
use super::requests::{request_key, LegacyRequestRecord, RequestKey, RequestRecord};
use super::security::AclState;
use super::workers::WorkersImage;
use super::{State, Table, WriteRecord};
use crate::scheduler::audit::AuditLog;
use crate::scheduler::job::{Job, JobId};
use crate::scheduler::run::{JobCounters, Run, RunId};

/// The replicated content of a [`State`], with the table of create request
/// records as `Requests` and the security part as `Security` (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Image<Requests, Security, Workers, Integration> {
    /// Every job, by id.
    jobs: Table<JobId, Arc<Job>>,
    /// Remembered create requests.
    requests: Requests,
    /// Results of recent writes, by write id.
    writes: Table<String, WriteRecord>,
    /// Every kept run, by id.
    runs: Table<RunId, Run>,
    /// The id the next run gets.
    next_run_id: RunId,
    /// Per-job counters.
    counters: Table<JobId, JobCounters>,
    /// Roles, tokens, bindings and the audit log (format version 4 on).
    security: Security,
    /// Job types, external attempts, role type globs (format version 5 on).
    workers: Workers,
    /// Events, run triggers, dependency joins, sinks, role topic globs
    /// (format version 6 on).
    integration: Integration,
}

/// The security part of an image (format version 4 on).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SecurityImage {
    /// Roles, tokens and bindings.
    acl: AclState,
    /// The audit log.
    audit: AuditLog,
}

/// The image as stored today: request records by key, the security part
/// and the workers' part.
pub type StateImage = Image<Table<RequestKey, RequestRecord>, SecurityImage, WorkersImage, IntegrationImage>;

/// The image of format version 5: no integration part.
pub type V5StateImage = Image<Table<RequestKey, RequestRecord>, SecurityImage, WorkersImage, ()>;

/// The image of format version 4: no workers' part.
pub type V4StateImage = Image<Table<RequestKey, RequestRecord>, SecurityImage, (), ()>;

/// The image of format versions 2 and 3: no security part.
pub type V3StateImage = Image<Table<RequestKey, RequestRecord>, (), (), ()>;

/// The image of format version 1: request records by request id, with
/// copies of jobs. Read only to migrate it.
pub type LegacyStateImage = Image<Table<String, LegacyRequestRecord>, (), (), ()>;

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

impl<Requests> Image<Requests, (), (), ()> {
    /// An image without a security part (format versions 1 to 3) as one of
    /// format version 4, with an empty ACL and audit log and no request
    /// records; its own request table apart, for the caller to migrate.
    fn with_empty_security(self) -> (V4StateImage, Requests) {
        let Image {
            jobs,
            requests,
            writes,
            runs,
            next_run_id,
            counters,
            security: (),
            workers: (),
            integration: (),
        } = self;
        let image = V4StateImage {
            jobs,
            requests: Table::default(),
            writes,
            runs,
            next_run_id,
            counters,
            security: SecurityImage::default(),
            workers: (),
            integration: (),
        };
        (image, requests)
    }
}

impl From<LegacyStateImage> for StateImage {
    fn from(legacy: LegacyStateImage) -> StateImage {
        let (v4, requests) = legacy.with_empty_security();
        let mut image = StateImage::from(v4);
        image.insert_legacy_requests(requests);
        image
    }
}

impl From<V3StateImage> for StateImage {
    fn from(v3: V3StateImage) -> StateImage {
        let (mut v4, requests) = v3.with_empty_security();
        v4.requests = requests;
        StateImage::from(v4)
    }
}

impl From<V4StateImage> for StateImage {
    /// Format version 4's image with an empty workers' part.
    fn from(v4: V4StateImage) -> StateImage {
        let Image {
            jobs,
            requests,
            writes,
            runs,
            next_run_id,
            counters,
            security,
            workers: (),
            integration: (),
        } = v4;
        StateImage::from(V5StateImage {
            jobs,
            requests,
            writes,
            runs,
            next_run_id,
            counters,
            security,
            workers: WorkersImage::default(),
            integration: (),
        })
    }
}

impl From<V5StateImage> for StateImage {
    /// Format version 5's image with an empty integration part.
    fn from(v5: V5StateImage) -> StateImage {
        let Image {
            jobs,
            requests,
            writes,
            runs,
            next_run_id,
            counters,
            security,
            workers,
            integration: (),
        } = v5;
        StateImage {
            jobs,
            requests,
            writes,
            runs,
            next_run_id,
            counters,
            security,
            workers,
            integration: IntegrationImage::default(),
        }
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

    /// Takes the security part (ACL and audit log), the workers' part and
    /// the integration part of `other`.
    pub fn set_security_and_workers_of(&mut self, other: &StateImage) {
        self.security = other.security.clone();
        self.workers = other.workers.clone();
        self.integration = other.integration.clone();
    }

    /// Sets the id the next run gets.
    pub fn set_next_run_id(&mut self, next_run_id: RunId) {
        self.next_run_id = next_run_id;
    }
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
            security: SecurityImage {
                acl: self.acl.clone(),
                audit: self.audit.clone(),
            },
            workers: self.workers.clone(),
            integration: self.integration.clone(),
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
            security: SecurityImage { acl, audit },
            workers,
            integration,
        } = image;
        let mut state = State {
            jobs,
            requests,
            writes,
            runs,
            next_run_id,
            counters,
            acl,
            audit,
            workers,
            integration,
            ..State::default()
        };
        state.restore_worker_fields();
        state.restore_integration();
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
    pub(super) fn rebuild_indexes(&mut self) {
        self.rebuild_security_indexes();
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
}
