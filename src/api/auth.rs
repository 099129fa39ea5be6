//! Authentication and authorization of every public call.
//!
//! Each handler starts by naming its caller ([`Api::caller`]): the bearer
//! token in the `authorization` metadata (looked up by the SHA-256 of its
//! secret in this node's applied state, and once more after the read
//! barrier if this node does not know it yet), else the verified client
//! certificate's subject (`super::tls`), else nothing. With
//! `--insecure-disable-auth` every caller is [`Credential::Insecure`]:
//! `anonymous`, allowed everything, still audited.
//!
//! Then, by the kind of call:
//! - **Writes** ([`Api::client_write`]): the caller must authenticate (else
//!   `UNAUTHENTICATED`), the request must be valid, and the caller must hold
//!   what the command needs on what it touches
//!   ([`State::required_permissions`], checked here against this node's
//!   state so that a denied call costs no log entry). The command is then
//!   proposed wrapped in `Command::Client` with the call's context; the
//!   state machine checks again at the entry's index and appends the
//!   call's audit entry in the same apply. A call refused here is recorded
//!   by the [`AuditRecorder`].
//! - **Reads** ([`Api::authenticate`], [`Api::check`]): refused reads are
//!   recorded; allowed ones only with `--audit-reads`. Lists return only
//!   what the caller may read.
//!
//! Errors: no, unknown, revoked or expired credential → `UNAUTHENTICATED`;
//! a valid one without the permission or outside its roles' scope →
//! `PERMISSION_DENIED` naming the permission.
//!
//! IMPLEMENTATION CAVEATS: a call with an unknown bearer token costs a
//! ReadIndex round trip to the leader (bounded by [`RECHECK_TIMEOUT`])
//! before it is refused, so a flood of invalid tokens costs the leader a
//! little more than before. Only tokens are re-checked: a certificate
//! binding or a role created moments ago may still be missing on a
//! lagging node.

use std::net::SocketAddr;

use tonic::{Request, Status};

use super::audit_recorder::AuditRecorder;
use super::{to_status, Api};
use crate::error::Error;
use crate::node::Consistency;
use crate::scheduler::acl::{secret_hash, AclTables, Credential, Permission, Resource, Subject};
use crate::scheduler::audit::{AuditKind, AuditRecord};
use crate::scheduler::{CallContext, Command, Response as CommandResponse, State};

/// How long a call with a bearer token this node does not know may wait
/// for the read barrier before it is refused (see [`Api::caller`]).
pub const RECHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The metadata key of the bearer token.
pub const AUTHORIZATION_HEADER: &str = "authorization";
/// The W3C trace context header, whose trace id audit entries record.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// How this node checks callers (agent flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthSettings {
    /// `--insecure-disable-auth`: every caller is allowed everything.
    pub disabled: bool,
    /// `--audit-reads`: allowed reads are recorded too.
    pub audit_reads: bool,
}

/// Who made one call, as far as this node could verify.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The verified credential ([`Credential::None`] when none verified).
    pub credential: Credential,
    /// Why a presented credential did not verify.
    pub rejected: Option<String>,
    /// The caller's address.
    pub source: String,
    /// The RPC.
    pub method: &'static str,
    /// The trace id of a `traceparent` header, if any.
    pub trace_id: String,
}

impl Caller {
    /// The call's context for a `Client` command.
    pub(super) fn context(&self, node: u64, resource: String, request_id: String) -> CallContext {
        CallContext {
            credential: self.credential.clone(),
            source: self.source.clone(),
            node,
            method: self.method.to_string(),
            resource,
            request_id,
            trace_id: self.trace_id.clone(),
        }
    }
}

/// The secret of an `authorization: Bearer <secret>` value.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, secret) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(secret.trim())
        .filter(|s| !s.is_empty())
}

/// The trace id of a W3C `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`).
fn trace_id(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit())).then(|| trace.to_ascii_lowercase())
}

impl Api {
    /// Names the caller of `request` (see the module docs).
    ///
    /// A bearer token this node does not know may have been created moments
    /// ago and not be applied here yet (a follower a heartbeat behind, or a
    /// leader still applying): before refusing it, the node passes the read
    /// barrier — everything committed when the call arrived is then applied
    /// here — and looks again, bounded by [`RECHECK_TIMEOUT`]. A token that
    /// was acknowledged as created is so accepted by every node at once.
    pub(super) fn caller<T>(
        &self,
        request: &Request<T>,
        method: &'static str,
    ) -> impl std::future::Future<Output = Caller> + Send + '_ {
        let (mut caller, unknown) = self.caller_now(request, method);
        async move {
            if let Some(hash) = unknown {
                self.recheck_token(&mut caller, &hash).await;
            }
            caller
        }
    }

    /// Looks the bearer token of `caller` (by its secret's hash) up again
    /// once this node has applied what was committed before now.
    async fn recheck_token(&self, caller: &mut Caller, hash: &[u8; 32]) {
        let barrier = self.node.read_barrier(Consistency::Linearizable);
        if !matches!(tokio::time::timeout(RECHECK_TIMEOUT, barrier).await, Ok(Ok(()))) {
            return;
        }
        if let Some(token) = self.node.state.read().token_by_secret_hash(hash) {
            caller.credential = Credential::Token {
                accessor_id: token.accessor_id.clone(),
            };
            caller.rejected = None;
        }
    }

    /// The caller as this node's applied state knows it now, and the secret
    /// hash of a bearer token it does not know.
    fn caller_now<T>(&self, request: &Request<T>, method: &'static str) -> (Caller, Option<[u8; 32]>) {
        let metadata = request.metadata();
        let source = request
            .remote_addr()
            .as_ref()
            .map_or_else(String::new, SocketAddr::to_string);
        let trace_id = metadata
            .get(TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(trace_id)
            .unwrap_or_default();
        let mut caller = Caller {
            credential: Credential::None,
            rejected: None,
            source,
            method,
            trace_id,
        };
        if self.auth.disabled {
            caller.credential = Credential::Insecure;
            return (caller, None);
        }
        if let Some(value) = metadata.get(AUTHORIZATION_HEADER) {
            let mut unknown = None;
            match value.to_str().ok().and_then(bearer) {
                Some(secret) => {
                    let hash = secret_hash(secret);
                    match self.node.state.read().token_by_secret_hash(&hash) {
                        Some(token) => {
                            caller.credential = Credential::Token {
                                accessor_id: token.accessor_id.clone(),
                            }
                        }
                        None => {
                            caller.rejected = Some("the bearer token is invalid or revoked".into());
                            unknown = Some(hash);
                        }
                    }
                }
                None => caller.rejected = Some("authorization: expected `Bearer <secret>`".into()),
            }
            return (caller, unknown);
        }
        if let Some(subject) = crate::tls::certificate_principal(request) {
            caller.credential = Credential::Certificate { subject };
        }
        (caller, None)
    }

    /// Who the caller is; a refusal is recorded and answered `UNAUTHENTICATED`.
    pub(super) fn authenticate(
        &self,
        caller: &Caller,
        state: &State,
        resource: &str,
    ) -> Result<Subject, Status> {
        let resolved = match &caller.rejected {
            Some(reason) => Err(Error::Unauthenticated(reason.clone())),
            None => state.resolve(&caller.credential, now_ms()),
        };
        resolved.map_err(|e| self.refused(caller, state, resource, "", e))
    }

    /// `Ok` when `subject` holds `permission` on `resource`; a refusal is
    /// recorded and answered `PERMISSION_DENIED`. An allowed read is recorded
    /// with `--audit-reads`.
    pub(super) fn check(
        &self,
        caller: &Caller,
        state: &State,
        subject: &Subject,
        permission: Permission,
        resource: &Resource,
    ) -> Result<(), Status> {
        let name = resource_name(resource);
        let job_id = job_id(resource);
        subject
            .check(permission, resource)
            .map_err(|e| self.refused(caller, state, &name, job_id, e))?;
        if self.auth.audit_reads {
            self.recorder
                .record(self.record(caller, &subject.principal, &name, job_id, None));
        }
        Ok(())
    }

    /// [`Api::authenticate`] then [`Api::check`].
    pub(super) fn authorize(
        &self,
        caller: &Caller,
        state: &State,
        permission: Permission,
        resource: &Resource,
    ) -> Result<Subject, Status> {
        let subject = self.authenticate(caller, state, &resource_name(resource))?;
        self.check(caller, state, &subject, permission, resource)?;
        Ok(subject)
    }

    /// A write call: authenticates, records an invalid request, checks the
    /// permissions the command needs here, and proposes it as the caller's
    /// `Client` command (see the module docs). `resource` names what it is
    /// about in the audit log.
    pub(super) async fn client_write(
        &self,
        caller: &Caller,
        resource: &str,
        request_id: &str,
        command: Result<Command, Status>,
    ) -> Result<CommandResponse, Status> {
        let principal = {
            let state = self.node.state.read();
            let subject = self.authenticate(caller, &state, resource)?;
            let command = match &command {
                Ok(command) => command,
                Err(status) => {
                    let error = Error::InvalidArgument(status.message().to_string());
                    let record = self.record(caller, &subject.principal, resource, "", Some(&error));
                    self.recorder.record(AuditRecord {
                        code: status.code() as u32,
                        ..record
                    });
                    return Err(status.clone());
                }
            };
            for (permission, on) in state.required_permissions(command) {
                subject
                    .check(permission, &on)
                    .map_err(|e| self.refused(caller, &state, resource, job_id(&on), e))?;
            }
            subject.principal
        };
        self.propose_client(caller, &principal, resource, request_id, command?)
            .await
    }

    /// Proposes `command` as `caller`'s with no check on this node: the
    /// state machine checks and audits it (for `Bootstrap`, which needs no
    /// credential).
    pub(super) async fn unchecked_write(
        &self,
        caller: &Caller,
        resource: &str,
        command: Command,
    ) -> Result<CommandResponse, Status> {
        self.propose_client(caller, "", resource, "", command).await
    }

    async fn propose_client(
        &self,
        caller: &Caller,
        principal: &str,
        resource: &str,
        request_id: &str,
        command: Command,
    ) -> Result<CommandResponse, Status> {
        let command = Command::Client {
            call: caller.context(self.node.id, resource.to_string(), request_id.to_string()),
            command: Box::new(command),
        };
        let result = self.node.write(principal, command).await;
        if let Err(e) = &result {
            tracing::debug!(method = caller.method, error = %e, "write refused");
        }
        result.map_err(to_status)
    }

    /// Records a refused call and converts the refusal.
    pub(super) fn refused(
        &self,
        caller: &Caller,
        state: &State,
        resource: &str,
        job_id: &str,
        error: Error,
    ) -> Status {
        let principal = match &caller.credential {
            Credential::Token { accessor_id } => state.token(accessor_id).map(|t| t.name.clone()),
            Credential::Certificate { subject } => Some(subject.clone()),
            Credential::Insecure => Some(crate::scheduler::acl::ANONYMOUS.into()),
            Credential::None => None,
        }
        .unwrap_or_default();
        self.recorder
            .record(self.record(caller, &principal, resource, job_id, Some(&error)));
        to_status(error)
    }

    /// The audit record of a call by `principal` with outcome `error` (`None`: OK).
    pub(super) fn record(
        &self,
        caller: &Caller,
        principal: &str,
        resource: &str,
        job_id: &str,
        error: Option<&Error>,
    ) -> AuditRecord {
        AuditRecord {
            kind: Some(AuditKind::Call),
            principal: principal.to_string(),
            accessor_id: caller.credential.accessor().to_string(),
            source: caller.source.clone(),
            node: self.node.id,
            method: caller.method.to_string(),
            resource: resource.to_string(),
            job_id: job_id.to_string(),
            code: error.map_or(0, Error::code),
            message: error.map_or_else(String::new, ToString::to_string),
            trace_id: caller.trace_id.clone(),
            count: 1,
            ..AuditRecord::default()
        }
    }

    /// The recorder of this node's audit records.
    pub(super) fn recorder(&self) -> &AuditRecorder {
        &self.recorder
    }
}

/// What a resource is called in audit entries.
fn resource_name(resource: &Resource) -> String {
    match resource {
        Resource::Cluster => String::new(),
        Resource::JobType(name) => format!("type {name}"),
        Resource::Topic(topic) => format!("topic {topic}"),
        Resource::Job { id, .. } => id.clone(),
    }
}

fn job_id(resource: &Resource) -> &str {
    match resource {
        Resource::Cluster | Resource::JobType(_) | Resource::Topic(_) => "",
        Resource::Job { id, .. } => id,
    }
}

/// This node's clock, Unix ms: when a credential is checked before proposing
/// (the state machine checks again with the leader's time).
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_value_gives_its_secret_and_anything_else_nothing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }

    #[test]
    fn a_traceparent_gives_its_trace_id() {
        assert_eq!(
            trace_id("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id("00-xyz-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id(""), None);
    }
}
