//! The security part of the state: the ACL tables, client writes checked
//! against them, and the audit log every write and run transition is
//! appended to.
//!
//! - `Client { call, command }` ([`State::apply_client`]): resolves the
//!   caller's credential at this entry, checks the permission the command
//!   needs on what it touches ([`State::required_permissions`]), applies it
//!   when allowed, and appends one `Call` audit entry with the outcome — a
//!   refused write is recorded too, and nothing is changed without a record.
//! - ACL commands (`AclBootstrap`, roles, tokens, bindings) change the
//!   tables; each is also recorded as an `Acl` entry.
//! - Run transitions: `put_run` notes every status change in
//!   [`Changes::transitions`]; at the end of each request [`State::apply`]
//!   turns them into `Execution` entries, attributed to the caller for
//!   runs a client's call moved (trigger, backfill, cancel) and to
//!   [`SYSTEM_PRINCIPAL`] otherwise.
//!
//! Invariants: the root token can be created once (`bootstrapped` never goes
//! back); a token's secret hash maps to one accessor (derived index
//! `token_by_hash`); every applied `Client` entry appends exactly one `Call`
//! entry, and every run status change one `Execution` entry.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Changes, State, Table};
use crate::error::Error;
use crate::scheduler::acl::{
    AclTables, Binding, Credential, Permission, Resource, Role, Subject, Token, ROOT_ROLE,
};
use crate::scheduler::audit::{AuditKind, AuditRecord, DEFAULT_RETAIN};
use crate::scheduler::command::{CallContext, Command, CommandResult, Response};
use crate::scheduler::run::{Run, RunId, RunStatus};

/// The job type whose jobs need `job:exec` to create or change.
pub const EXEC_JOB_TYPE: &str = "exec";

/// The replicated ACL tables.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AclState {
    /// Roles by name (the built-in root is not stored).
    pub roles: Table<String, Role>,
    /// Tokens by accessor id.
    pub tokens: Table<String, Token>,
    /// Certificate subject bindings.
    pub bindings: Table<Binding, ()>,
    /// `acl bootstrap` has run.
    pub bootstrapped: bool,
}

/// A run's status change, noted by `put_run` for the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunTransition {
    /// The run.
    pub run_id: RunId,
    /// Its job.
    pub job_id: String,
    /// The status it has now.
    pub to: RunStatus,
    /// The status it had (`None`: created).
    pub from: Option<RunStatus>,
    /// The node of its attempt, if any.
    pub node: Option<u64>,
    /// The external worker of its attempt, if any.
    pub worker: Option<String>,
    /// Its attempt number.
    pub attempt: u32,
    /// Its error, if it ended or was retried after one.
    pub error: String,
    /// Its nominal time.
    pub nominal_ms: i64,
    /// What created it, if an event or an upstream run did.
    pub trigger: Option<std::sync::Arc<crate::scheduler::run::RunTrigger>>,
}

impl RunTransition {
    /// The transition of `run` from `before`, if its status changed.
    pub fn of(before: Option<&Run>, run: &Run) -> Option<RunTransition> {
        let from = before.map(|r| r.status);
        (from != Some(run.status)).then(|| RunTransition {
            run_id: run.id,
            job_id: run.job_id.clone(),
            to: run.status,
            from,
            node: run.node,
            worker: run.worker.clone(),
            attempt: run.attempt,
            error: run.error.clone(),
            nominal_ms: run.nominal_ms,
            trigger: run.trigger.clone(),
        })
    }

    /// The event name, e.g. `run.started`.
    fn method(&self) -> &'static str {
        match (self.from, self.to) {
            (Some(f), RunStatus::Pending) if f.is_active() => "run.retrying",
            (_, RunStatus::Pending) => "run.pending",
            (_, RunStatus::Queued) => "run.queued",
            (_, RunStatus::Running) => "run.started",
            (_, RunStatus::Succeeded) => "run.succeeded",
            (_, RunStatus::Failed) => "run.failed",
            (_, RunStatus::TimedOut) => "run.timed_out",
            (_, RunStatus::Cancelled) => "run.cancelled",
            (_, RunStatus::Skipped) => "run.skipped",
        }
    }

    fn record(&self, principal: &str) -> AuditRecord {
        let message = match self.to {
            RunStatus::Queued | RunStatus::Running => {
                let node = self.node.map_or_else(|| "?".into(), |n| n.to_string());
                match &self.worker {
                    Some(worker) => format!("attempt {} for worker {worker} on node {node}", self.attempt),
                    None => format!("attempt {} on node {node}", self.attempt),
                }
            }
            _ => self.error.clone(),
        };
        AuditRecord {
            kind: Some(AuditKind::Execution),
            principal: principal.to_string(),
            node: self.node.unwrap_or(0),
            method: self.method().to_string(),
            resource: format!("run {}", self.run_id),
            job_id: self.job_id.clone(),
            run_id: self.run_id,
            message,
            ..AuditRecord::default()
        }
    }
}

impl AclTables for State {
    fn token(&self, accessor_id: &str) -> Option<&Token> {
        self.acl.tokens.get(accessor_id)
    }

    fn stored_role(&self, name: &str) -> Option<&Role> {
        self.acl.roles.get(name)
    }

    fn bound_roles(&self, subject: &str) -> Vec<String> {
        use std::ops::Bound;
        let from = Binding {
            subject: subject.to_string(),
            role: String::new(),
        };
        self.acl
            .bindings
            .range((Bound::Included(from), Bound::Unbounded))
            .take_while(|(b, _)| b.subject == subject)
            .map(|(b, _)| b.role.clone())
            .collect()
    }
}

impl State {
    /// The accessor id of the token whose secret hashes to `hash`.
    pub fn token_by_secret_hash(&self, hash: &[u8; 32]) -> Option<&Token> {
        self.token_by_hash.get(hash).and_then(|a| self.acl.tokens.get(a))
    }

    /// True once `acl bootstrap` has run.
    pub fn acl_bootstrapped(&self) -> bool {
        self.acl.bootstrapped
    }

    /// Stored roles, by name.
    pub fn roles(&self) -> impl Iterator<Item = &Role> {
        self.acl.roles.values()
    }

    /// Tokens, by accessor id.
    pub fn tokens(&self) -> impl Iterator<Item = &Token> {
        self.acl.tokens.values()
    }

    /// Bindings, by subject then role.
    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.acl.bindings.keys()
    }

    /// The audit log.
    pub fn audit(&self) -> &crate::scheduler::audit::AuditLog {
        &self.audit
    }

    /// Changes a stored audit entry without fixing the chain (tests of
    /// tamper detection only).
    #[doc(hidden)]
    pub fn tamper_audit(&mut self, seq: u64, f: impl FnOnce(&mut crate::scheduler::audit::AuditEntry)) {
        self.audit.tamper(seq, f);
    }

    /// Sets how many audit entries this replica keeps (a local setting).
    pub fn set_audit_retain(&mut self, retain: u64) {
        self.audit_retain = retain;
        self.audit.trim(retain);
    }

    /// Rebuilds `token_by_hash` from the tokens.
    pub(super) fn rebuild_security_indexes(&mut self) {
        self.token_by_hash = self
            .acl
            .tokens
            .values()
            .map(|t| (t.secret_hash, t.accessor_id.clone()))
            .collect::<BTreeMap<_, _>>();
    }

    /// Appends one audit record at `at_ms`.
    pub(super) fn audit_append(&mut self, record: AuditRecord, at_ms: i64) {
        let retain = if self.audit_retain == 0 {
            DEFAULT_RETAIN
        } else {
            self.audit_retain
        };
        self.audit.append(record, at_ms, retain);
    }

    /// Appends the execution events of the transitions `changes` collected,
    /// attributed to `principal`.
    pub(super) fn audit_transitions(&mut self, principal: &str, at_ms: i64, changes: &mut Changes) {
        // Runs that ended may start their dependents' runs, whose creation
        // is recorded with them.
        self.follow_upstream(at_ms, changes);
        for transition in std::mem::take(&mut changes.transitions) {
            self.audit_append(transition.record(principal), at_ms);
        }
    }

    /// `Client`: the caller's command, if allowed, and its audit entry.
    pub(super) fn apply_client(
        &mut self,
        index: u64,
        at_ms: i64,
        call: &CallContext,
        command: &Command,
        changes: &mut Changes,
    ) -> CommandResult {
        let allowed = self.resolve_caller(call, command, at_ms);
        let principal = match &allowed {
            Ok(subject) => subject.principal.clone(),
            Err(_) => principal_of(&call.credential, self),
        };
        let result = allowed.and_then(|_| match command {
            Command::Client { .. } | Command::Batch { .. } | Command::RecordAudit { .. } => Err(
                Error::InvalidArgument(format!("{} is not a client command", command.name())),
            ),
            command => self.apply_command(index, at_ms, &principal, command, changes),
        });
        let (code, message) = match &result {
            Ok(_) => (0, String::new()),
            Err(e) => (e.code(), e.to_string()),
        };
        let kind = if is_acl_command(command) {
            AuditKind::Acl
        } else {
            AuditKind::Call
        };
        self.audit_append(
            AuditRecord {
                kind: Some(kind),
                principal: principal.clone(),
                accessor_id: call.credential.accessor().to_string(),
                source: call.source.clone(),
                node: call.node,
                method: call.method.clone(),
                resource: call.resource.clone(),
                job_id: job_of(command).unwrap_or_default().to_string(),
                code,
                message,
                request_id: call.request_id.clone(),
                trace_id: call.trace_id.clone(),
                ..AuditRecord::default()
            },
            at_ms,
        );
        self.audit_transitions(&principal, at_ms, changes);
        result
    }

    /// Who the caller is, if they may run `command` now.
    fn resolve_caller(&self, call: &CallContext, command: &Command, at_ms: i64) -> Result<Subject, Error> {
        if let Command::AclBootstrap { .. } = command {
            // Anyone may bootstrap, once: the command itself refuses a second time.
            return Ok(Subject {
                principal: principal_of(&call.credential, self),
                roles: Vec::new(),
            });
        }
        let subject = self.resolve(&call.credential, at_ms)?;
        for (permission, resource) in self.required_permissions(command) {
            subject.check(permission, &resource)?;
        }
        Ok(subject)
    }

    /// The permissions `command` needs, each on what it touches. A job that
    /// does not exist is checked by its id alone; the command then fails
    /// with `NOT_FOUND` after the check.
    pub fn required_permissions(&self, command: &Command) -> Vec<(Permission, Resource)> {
        let stored = |id: &str| {
            let owner = self.job(id).map_or("", |j| j.spec.owner_service.as_str());
            Resource::job(id, owner)
        };
        let is_exec = |id: &str| self.job(id).is_some_and(|j| j.spec.job_type == EXEC_JOB_TYPE);
        match command {
            Command::CreateJob { id, spec, .. } => {
                let resource = Resource::job(id, &spec.owner_service);
                let mut needed = vec![(Permission::JobWrite, resource.clone())];
                if spec.job_type == EXEC_JOB_TYPE {
                    needed.push((Permission::JobExec, resource));
                }
                needed
            }
            Command::UpdateJob { id, patch, .. } => {
                let mut needed = vec![(Permission::JobWrite, stored(id))];
                let owner = patch.owner_service.clone().unwrap_or_else(|| {
                    self.job(id)
                        .map(|j| j.spec.owner_service.clone())
                        .unwrap_or_default()
                });
                let after = Resource::job(id, &owner);
                if after != stored(id) {
                    needed.push((Permission::JobWrite, after.clone()));
                }
                if is_exec(id) || patch.job_type.as_deref() == Some(EXEC_JOB_TYPE) {
                    needed.push((Permission::JobExec, after));
                }
                needed
            }
            Command::DeleteJob { id, .. }
            | Command::ForceDeleteJob { id, .. }
            | Command::SetPaused { id, .. } => {
                vec![(Permission::JobWrite, stored(id))]
            }
            Command::TriggerJob { id } | Command::Backfill { id, .. } => {
                vec![(Permission::JobTrigger, stored(id))]
            }
            Command::CancelRun { run_id } => {
                let job_id = self.run(*run_id).map(|r| r.job_id.clone()).unwrap_or_default();
                vec![(Permission::RunCancel, stored(&job_id))]
            }
            Command::AclBootstrap { .. } => Vec::new(),
            Command::RegisterJobTypes { types } => types
                .iter()
                .map(|t| (Permission::WorkerConnect, Resource::JobType(t.name.clone())))
                .collect(),
            // A result or heartbeat needs worker:connect on its run's job
            // type; one for a run that is gone needs nothing (it is refused).
            Command::FinishAttempt { run_id, .. } | Command::Heartbeat { run_id, .. } => {
                self.worker_types([*run_id])
            }
            Command::FinishAttempts { results } => self.worker_types(results.iter().map(|r| r.run_id)),
            Command::CreateRole { .. }
            | Command::CreateRoleScoped { .. }
            | Command::DeleteRole { .. }
            | Command::CreateToken { .. }
            | Command::RevokeToken { .. }
            | Command::CreateBinding { .. }
            | Command::DeleteBinding { .. }
            | Command::CreateRoleWithScopes { .. } => vec![(Permission::AclAdmin, Resource::Cluster)],
            Command::PublishEvent { topic, .. } => {
                vec![(Permission::EventPublish, Resource::Topic(topic.clone()))]
            }
            Command::CreateSink { .. } | Command::DeleteSink { .. } => {
                vec![(Permission::SinkAdmin, Resource::Cluster)]
            }
            // Internal commands: only root-like callers could even name
            // them, and `apply_client` refuses them anyway.
            _ => vec![(Permission::ClusterAdmin, Resource::Cluster)],
        }
    }

    /// `worker:connect` on the job type of each of `runs` that still exists.
    fn worker_types(&self, runs: impl IntoIterator<Item = RunId>) -> Vec<(Permission, Resource)> {
        let types: BTreeSet<String> = runs
            .into_iter()
            .filter_map(|id| self.run(id).and_then(|r| self.job(&r.job_id)))
            .map(|j| j.spec.job_type.clone())
            .collect();
        types
            .into_iter()
            .map(|t| (Permission::WorkerConnect, Resource::JobType(t)))
            .collect()
    }

    /// `AclBootstrap`: the root token, once.
    pub(super) fn acl_bootstrap(&mut self, token: &Token, at_ms: i64, principal: &str) -> CommandResult {
        if self.acl.bootstrapped {
            return Err(Error::FailedPrecondition(
                "the ACL is already bootstrapped: ask a holder of acl:admin for a token".into(),
            ));
        }
        self.acl.bootstrapped = true;
        let mut token = token.clone();
        token.roles = vec![ROOT_ROLE.into()];
        token.created_ms = at_ms;
        token.created_by = principal.to_string();
        self.insert_token(token.clone());
        Ok(Response::Token(token))
    }

    /// `CreateRole`.
    pub(super) fn create_role(&mut self, role: &Role, at_ms: i64, principal: &str) -> CommandResult {
        if role.name == ROOT_ROLE || self.acl.roles.contains_key(&role.name) {
            return Err(Error::AlreadyExists(format!(
                "role {:?} already exists",
                role.name
            )));
        }
        let mut role = role.clone();
        role.created_ms = at_ms;
        role.created_by = principal.to_string();
        self.acl.roles.insert(role.name.clone(), role.clone());
        Ok(Response::Role(role))
    }

    /// `DeleteRole`.
    pub(super) fn delete_role(&mut self, name: &str) -> CommandResult {
        if name == ROOT_ROLE {
            return Err(Error::FailedPrecondition(format!(
                "{ROOT_ROLE:?} is the built-in role and cannot be deleted"
            )));
        }
        self.forget_role_types(name);
        self.forget_role_topics(name);
        self.acl
            .roles
            .remove(name)
            .map(|_| Response::Deleted)
            .ok_or_else(|| Error::NotFound(format!("role {name:?} not found")))
    }

    /// `CreateToken`: every role it names must exist.
    pub(super) fn create_token(&mut self, token: &Token, at_ms: i64, principal: &str) -> CommandResult {
        if let Some(missing) = token.roles.iter().find(|r| self.role(r).is_none()) {
            return Err(Error::NotFound(format!("role {missing:?} not found")));
        }
        if self.acl.tokens.contains_key(&token.accessor_id)
            || self.token_by_hash.contains_key(&token.secret_hash)
        {
            return Err(Error::AlreadyExists(format!(
                "token {:?} already exists",
                token.accessor_id
            )));
        }
        let mut token = token.clone();
        token.created_ms = at_ms;
        token.created_by = principal.to_string();
        self.insert_token(token.clone());
        Ok(Response::Token(token))
    }

    fn insert_token(&mut self, token: Token) {
        self.token_by_hash
            .insert(token.secret_hash, token.accessor_id.clone());
        self.acl.tokens.insert(token.accessor_id.clone(), token);
    }

    /// `RevokeToken`.
    pub(super) fn revoke_token(&mut self, accessor_id: &str) -> CommandResult {
        let token = self
            .acl
            .tokens
            .remove(accessor_id)
            .ok_or_else(|| Error::NotFound(format!("token {accessor_id:?} not found")))?;
        self.token_by_hash.remove(&token.secret_hash);
        Ok(Response::Deleted)
    }

    /// `CreateBinding`: the role must exist.
    pub(super) fn create_binding(&mut self, binding: &Binding) -> CommandResult {
        if self.role(&binding.role).is_none() {
            return Err(Error::NotFound(format!("role {:?} not found", binding.role)));
        }
        if self.acl.bindings.insert(binding.clone(), ()).is_some() {
            return Err(Error::AlreadyExists(format!(
                "{:?} is already bound to role {:?}",
                binding.subject, binding.role
            )));
        }
        Ok(Response::Binding(binding.clone()))
    }

    /// `DeleteBinding`.
    pub(super) fn delete_binding(&mut self, binding: &Binding) -> CommandResult {
        self.acl
            .bindings
            .remove(binding)
            .map(|_| Response::Deleted)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "{:?} is not bound to role {:?}",
                    binding.subject, binding.role
                ))
            })
    }

    /// `RecordAudit`: appends each record as given.
    pub(super) fn record_audit(&mut self, records: &[AuditRecord], at_ms: i64) -> CommandResult {
        for record in records {
            self.audit_append(record.clone(), at_ms);
        }
        Ok(Response::Audited(self.audit.head().seq))
    }
}

/// The principal a credential names without checking it (for the audit
/// entry of a refused call).
fn principal_of(credential: &Credential, state: &State) -> String {
    match credential {
        Credential::None => String::new(),
        Credential::Insecure => crate::scheduler::acl::ANONYMOUS.into(),
        Credential::Certificate { subject } => subject.clone(),
        Credential::Token { accessor_id } => state
            .acl
            .tokens
            .get(accessor_id)
            .map_or_else(String::new, |t| t.name.clone()),
    }
}

fn is_acl_command(command: &Command) -> bool {
    matches!(
        command,
        Command::AclBootstrap { .. }
            | Command::CreateRole { .. }
            | Command::DeleteRole { .. }
            | Command::CreateToken { .. }
            | Command::RevokeToken { .. }
            | Command::CreateBinding { .. }
            | Command::DeleteBinding { .. }
            | Command::CreateRoleWithScopes { .. }
    )
}

/// The job a command is about, for the audit entry's `job_id`.
fn job_of(command: &Command) -> Option<&str> {
    match command {
        Command::CreateJob { id, .. }
        | Command::UpdateJob { id, .. }
        | Command::DeleteJob { id, .. }
        | Command::ForceDeleteJob { id, .. }
        | Command::SetPaused { id, .. }
        | Command::TriggerJob { id }
        | Command::Backfill { id, .. } => Some(id),
        _ => None,
    }
}
