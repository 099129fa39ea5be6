//! The external workers' part of the state: the job types workers
//! registered, the external worker of each run's attempt (with whether a
//! client asked to cancel it), and the job type globs of roles. A child
//! module of `state`, like the others; deterministic in the command's time.
//!
//! Which workers are connected is not replicated: each node knows the
//! workers polling it (`actors::external`), and the leader's dispatcher asks
//! the nodes. What is replicated is what must survive a failover: an
//! attempt started for worker `w` names `w` in its run, so a new leader
//! counts it in `w`'s load, a retry goes elsewhere, and a cancellation waits
//! for the worker to confirm (see [`State::cancel_run`]).
//!
//! Stored apart from the records they extend ([`WorkersImage`], format
//! version 5 on): a run's worker and a role's type globs are fields of
//! [`Run`] and [`Role`] in memory but not in their encodings, whose layouts
//! format version 4 fixed; [`State::from_image`] puts them back.

use serde::{Deserialize, Serialize};

use super::{Changes, CommandResult, Response, State, Table};
use crate::scheduler::acl::{Role, ROOT_ROLE};
use crate::scheduler::command::Assignment;
use crate::scheduler::job_type::JobTypeDef;
use crate::scheduler::run::{Run, RunId, RunStatus};

/// What the state knows of an attempt given to an external worker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalAttempt {
    /// The worker's id (as `RegisterWorker` answered it).
    pub worker_id: String,
    /// A client cancelled the run while this attempt was running: the
    /// worker is told at its next heartbeat, and the run ends cancelled
    /// when it completes or its lease runs out.
    pub cancel_requested: bool,
    /// The worker's result was recorded (so a repeat of it is acknowledged).
    pub completed: bool,
}

/// The external workers' part of a state image (format version 5 on).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkersImage {
    /// Registered job types, by name.
    pub(super) job_types: Table<String, JobTypeDef>,
    /// The external attempt of each kept run that had one, by run.
    pub(super) external: Table<RunId, ExternalAttempt>,
    /// Type globs of each role that has some, by role name.
    pub(super) role_types: Table<String, Vec<String>>,
}

impl State {
    /// A registered (external) job type.
    pub fn job_type(&self, name: &str) -> Option<&JobTypeDef> {
        self.workers.job_types.get(name)
    }

    /// Every registered job type, by name.
    pub fn job_types(&self) -> impl Iterator<Item = &JobTypeDef> {
        self.workers.job_types.values()
    }

    /// The external attempt of a run, if its current or last attempt was one.
    pub fn external_attempt(&self, run_id: RunId) -> Option<&ExternalAttempt> {
        self.workers.external.get(&run_id)
    }

    /// `RegisterJobTypes`: stores each type as `principal` declared it now.
    pub(super) fn register_job_types(
        &mut self,
        types: &[JobTypeDef],
        at_ms: i64,
        principal: &str,
    ) -> CommandResult {
        let mut stored = Vec::with_capacity(types.len());
        for def in types {
            let def = JobTypeDef {
                registered_by: principal.to_string(),
                updated_ms: at_ms,
                ..def.clone()
            };
            self.workers.job_types.insert(def.name.clone(), def.clone());
            stored.push(def);
        }
        Ok(Response::JobTypes(stored))
    }

    /// `AssignAttempts`: [`State::start_attempt`] for each, recording the
    /// external worker of those that have one.
    pub(super) fn assign_attempts(
        &mut self,
        starts: &[Assignment],
        index: u64,
        at_ms: i64,
        changes: &mut Changes,
    ) -> Response {
        let mut started = Vec::new();
        for start in starts {
            let result = self.start_attempt_for(
                start.run_id,
                start.node,
                start.attempt,
                start.worker.as_deref(),
                index,
                at_ms,
                changes,
            );
            if let Ok(Response::Run(run)) = result {
                if run.status == RunStatus::Queued {
                    started.push(*run);
                }
            }
        }
        Response::Started(started)
    }

    /// Records (or clears) the external worker of the attempt `run` starts
    /// now; `run` is the run about to be stored.
    pub(super) fn set_attempt_worker(&mut self, run: &mut Run, worker: Option<&str>) {
        run.worker = worker.map(str::to_string);
        match worker {
            Some(worker_id) => {
                let attempt = ExternalAttempt {
                    worker_id: worker_id.to_string(),
                    ..ExternalAttempt::default()
                };
                self.workers.external.insert(run.id, attempt);
            }
            None => {
                self.workers.external.remove(&run.id);
            }
        }
    }

    /// Changes the external attempt of run `run_id`, if it has one.
    pub(super) fn update_external(&mut self, run_id: RunId, f: impl FnOnce(&mut ExternalAttempt)) {
        if let Some(attempt) = self.workers.external.get_mut(&run_id) {
            f(attempt);
        }
    }

    /// Forgets the external attempt of a run that is removed.
    pub(super) fn forget_external(&mut self, run_id: RunId) {
        self.workers.external.remove(&run_id);
    }

    /// `CreateRoleScoped`: `CreateRole` with type globs.
    pub(super) fn create_role_scoped(
        &mut self,
        role: &Role,
        types: &[String],
        at_ms: i64,
        principal: &str,
    ) -> CommandResult {
        let mut role = role.clone();
        role.types = types.to_vec();
        let created = self.create_role(&role, at_ms, principal)?;
        if !types.is_empty() {
            self.workers.role_types.insert(role.name.clone(), types.to_vec());
        }
        Ok(created)
    }

    /// Forgets the type globs of a deleted role.
    pub(super) fn forget_role_types(&mut self, name: &str) {
        self.workers.role_types.remove(name);
    }

    /// Puts the fields kept apart back into the runs and roles they belong
    /// to (after rebuilding a state from an image).
    pub(super) fn restore_worker_fields(&mut self) {
        for (run_id, attempt) in self.workers.external.clone().iter() {
            if let Some(run) = self.runs.get_mut(run_id) {
                run.worker = Some(attempt.worker_id.clone());
            }
        }
        for (name, types) in self.workers.role_types.clone().iter() {
            if name == ROOT_ROLE {
                continue;
            }
            if let Some(role) = self.acl.roles.get_mut(name) {
                role.types = types.clone();
            }
        }
    }
}
