//! Refusing a one-shot time (`schedule_spec.at`) that has already passed.
//!
//! The state machine stores a job whose only fire time is not after the
//! create's time as complete at once, with no run and no missed fire counted:
//! to the client, a typo in a date would look like a job that ran. The API
//! therefore refuses such a time with `INVALID_ARGUMENT`
//! ([`validate_at_ahead`]), before proposing, by the clock of the node that
//! takes the request. The replicated core keeps reading no clock and applies
//! commands exactly as before.
//!
//! Two requests pass although their time has passed, because they change
//! nothing the check protects:
//! - a create that repeats one this node has applied (same `request_id`):
//!   a repeat gets the state machine's answer whenever it comes, which is
//!   the promise of a request id (a client retrying after a timeout must
//!   learn that its job exists, not that it was refused);
//! - an update that re-sends the job's stored schedule (an update without a
//!   mask sends every field).
//!
//! IMPLEMENTATION CAVEATS: an `at` still ahead when checked but passed when
//! the leader stamps the create (the milliseconds of forwarding and commit,
//! or the skew between the two nodes' clocks) is stored as a completed job
//! without a run, as before; the reply says so (status `COMPLETED`, no next
//! run). Looking up a request id scans the remembered creates, but only for a
//! request about to be refused.

use chrono::Utc;
use tonic::Status;

use super::{to_status, Api};
use crate::scheduler::state::request_key;
use crate::scheduler::validate::validate_at_ahead;
use crate::scheduler::{JobPatch, JobSpec};

impl Api {
    /// Refuses a create whose one-shot time has passed, unless it repeats a
    /// create this node has applied.
    pub(super) fn check_create_at(&self, spec: &JobSpec, request_id: &str) -> Result<(), Status> {
        let Err(refused) = validate_at_ahead(&spec.schedule, Utc::now().timestamp_millis()) else {
            return Ok(());
        };
        let key = request_key(request_id);
        let repeat = !request_id.is_empty()
            && self
                .node
                .state
                .read()
                .requests_iter()
                .any(|(remembered, _)| *remembered == key);
        if repeat {
            Ok(())
        } else {
            Err(to_status(refused))
        }
    }

    /// Refuses an update that sets a one-shot time that has passed, unless
    /// it is job `id`'s stored schedule.
    pub(super) fn check_update_at(&self, id: &str, patch: &JobPatch) -> Result<(), Status> {
        let Some(schedule) = &patch.schedule else {
            return Ok(());
        };
        let Err(refused) = validate_at_ahead(schedule, Utc::now().timestamp_millis()) else {
            return Ok(());
        };
        let unchanged = self
            .node
            .state
            .read()
            .job(id)
            .is_some_and(|job| job.spec.schedule == *schedule);
        if unchanged {
            Ok(())
        } else {
            Err(to_status(refused))
        }
    }
}
