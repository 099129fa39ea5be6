//! Create idempotency: what a create's `request_id` remembers for 24 h, and
//! how a repeat of the create is answered. A child module of `state`.
//!
//! A record is two numbers under a 128-bit hash of the request id: when the
//! create was applied and a 64-bit hash of its body (job id and spec). A
//! repeat with the same request id is answered only if its body hashes the
//! same, else it fails with `AlreadyExists`; the answer is
//!
//! - the stored job, while it is still the version that create made (same
//!   id, version 1, created at the record's time): only its fire times have
//!   moved on;
//! - otherwise (updated, paused, deleted since) the version the create made,
//!   rebuilt from the repeat's own body, which is the original one, and the
//!   record's time: version 1, created and updated then, by the stored job's
//!   creator (or the repeat's caller once the job is gone), next fire from
//!   then.
//!
//! Records used to keep the request id, the job id and, once the job moved
//! on, a copy of the created version, with two derived indexes of strings:
//! ≈ 470 bytes per create for a day (`cargo bench --bench state_memory --
//! requests` against `-- state`); now ≈ 60. Hashes are xxh3 over fixed
//! inputs, so every replica and every later version computes the same ones.
//! A 128-bit key makes two request ids sharing a record as unlikely as a
//! random 128-bit collision (≈ 10⁻²⁷ among a million records), and a repeat
//! with another body passes the 64-bit body check with a chance of 2⁻⁶⁴.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{State, Table, REQUEST_ID_TTL_MS};
use crate::error::Error;
use crate::scheduler::job::{Job, JobId, JobSpec};

/// The key of a request id's record: its xxh3-128 hash.
pub type RequestKey = u128;

/// What a `request_id` remembers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// When the create was applied, Unix ms (for expiry, and the created
    /// version's times).
    pub at_ms: i64,
    /// [`body_hash`] of the create.
    pub body_hash: u64,
}

/// The key of request id `request_id`.
pub fn request_key(request_id: &str) -> RequestKey {
    xxhash_rust::xxh3::xxh3_128(request_id.as_bytes())
}

/// The hash of a create's body: its job id and spec, as encoded in the log
/// (the unframed body, the same in format versions 1 to 3). Records keep
/// only this hash, so a format version that changes the spec's layout must
/// keep hashing this one, or older records stop matching.
pub fn body_hash(id: &str, spec: &JobSpec) -> u64 {
    let bytes = postcard::to_allocvec(&(id, spec)).expect("encoding a spec cannot fail");
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// A request record as versions before 2026-12-01 stored it (snapshots
/// `KSNAP001` and the sled tables): read for migration only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LegacyRequestRecord {
    /// When the create was applied, Unix ms.
    pub at_ms: i64,
    /// The created job's id.
    pub job_id: JobId,
    /// The created version once the job moved on; `None` while it had not.
    pub created: Option<Arc<Job>>,
}

impl LegacyRequestRecord {
    /// Today's record, given the stored jobs (the created version is the
    /// stored job while the record holds no copy); `None` when neither
    /// exists, which older versions never left behind.
    pub fn migrate(&self, jobs: &Table<JobId, Arc<Job>>) -> Option<RequestRecord> {
        let created = self.created.as_ref().or_else(|| jobs.get(&self.job_id))?;
        Some(RequestRecord {
            at_ms: self.at_ms,
            body_hash: body_hash(&created.id, &created.spec),
        })
    }
}

impl State {
    /// The answer to a create of `id` with `spec` that repeats request id
    /// `rid`, or `None` when `rid` is not remembered.
    pub(super) fn repeated_create(
        &self,
        rid: &str,
        id: &str,
        spec: &JobSpec,
        principal: &str,
    ) -> Option<Result<Arc<Job>, Error>> {
        let record = self.requests.get(&request_key(rid))?;
        if record.body_hash != body_hash(id, spec) {
            return Some(Err(Error::AlreadyExists(format!(
                "request_id {rid:?} was already used for a different create request"
            ))));
        }
        let stored = self.jobs.get(id);
        if let Some(job) = stored.filter(|j| j.version == 1 && j.created_at_ms == record.at_ms) {
            return Some(Ok(job.clone()));
        }
        let creator = stored.map_or(principal, |j| &*j.created_by);
        let mut created = self.new_job(id, spec, record.at_ms, creator);
        created.next_fire_ms = super::next_fire(spec, record.at_ms);
        Some(Ok(Arc::new(created)))
    }

    /// Remembers that request id `rid` created `id` with `spec` at `at_ms`.
    pub(super) fn remember_request(&mut self, rid: &str, id: &str, spec: &JobSpec, at_ms: i64) {
        let key = request_key(rid);
        let record = RequestRecord {
            at_ms,
            body_hash: body_hash(id, spec),
        };
        if let Some(old) = self.requests.insert(key, record) {
            self.request_expiry.remove(&(old.at_ms, key));
        }
        self.request_expiry.insert((at_ms, key));
    }

    /// Forgets request ids older than [`REQUEST_ID_TTL_MS`] at time `at_ms`.
    pub(super) fn expire_requests(&mut self, at_ms: i64) {
        let cutoff = at_ms.saturating_sub(REQUEST_ID_TTL_MS);
        while self.request_expiry.first().is_some_and(|(t, _)| *t < cutoff) {
            let (_, key) = self.request_expiry.pop_first().expect("first exists");
            self.requests.remove(&key);
        }
    }

    /// The record of request id `request_id`, if remembered.
    pub fn request(&self, request_id: &str) -> Option<&RequestRecord> {
        self.requests.get(&request_key(request_id))
    }
}
