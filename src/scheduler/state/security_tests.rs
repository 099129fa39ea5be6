//! Tests of the security part of the state: client writes authorized at
//! apply, the ACL commands, and the audit entries of writes and runs.

use super::testing::{Sm, SEC, T0};
use super::*;
use crate::scheduler::acl::{secret_hash, Binding, Credential, Permission, Role, Token, ROOT_ROLE};
use crate::scheduler::audit::{AuditKind, SYSTEM_PRINCIPAL};
use crate::scheduler::command::CallContext;
use crate::scheduler::job::{JobSpec, ScheduleSpec};
use crate::scheduler::run::AttemptOutcome;

fn call(credential: Credential, method: &str) -> CallContext {
    CallContext {
        credential,
        source: "127.0.0.1:4000".into(),
        node: 2,
        method: method.into(),
        resource: String::new(),
        request_id: String::new(),
        trace_id: String::new(),
    }
}

fn token(accessor: &str, name: &str, roles: &[&str], expires_ms: Option<i64>) -> Token {
    Token {
        accessor_id: accessor.into(),
        name: name.into(),
        secret_hash: secret_hash(accessor),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        expires_ms,
        created_ms: 0,
        created_by: String::new(),
    }
}

fn as_token(accessor: &str) -> Credential {
    Credential::Token {
        accessor_id: accessor.into(),
    }
}

fn spec(job_type: &str, owner: &str) -> JobSpec {
    JobSpec {
        job_type: job_type.into(),
        owner_service: owner.into(),
        schedule: ScheduleSpec::Every {
            interval_ms: 1_000,
            phase_ms: 0,
        },
        payload: vec![],
        metadata: Default::default(),
        policies: Default::default(),
        paused: false,
    }
}

impl Sm {
    fn client(
        &mut self,
        at_ms: i64,
        credential: Credential,
        method: &str,
        command: Command,
    ) -> CommandResult {
        self.apply(
            at_ms,
            Command::Client {
                call: call(credential, method),
                command: Box::new(command),
            },
        )
    }

    /// A cluster with the root token `root` and a role `writer` (job:write
    /// on owners `billing*`) held by the token `w`.
    fn secured() -> Sm {
        let mut sm = Sm::new();
        let bootstrap = Command::AclBootstrap {
            token: token("root", "root", &[], None),
        };
        sm.client(T0, Credential::None, "Bootstrap", bootstrap).unwrap();
        let role = Role {
            name: "writer".into(),
            permissions: [Permission::JobWrite].into(),
            owners: vec!["billing*".into()],
            jobs: vec![],
            types: vec![],
            topics: Vec::new(),
            description: String::new(),
            created_ms: 0,
            created_by: String::new(),
        };
        sm.client(T0, as_token("root"), "CreateRole", Command::CreateRole { role })
            .unwrap();
        let w = token("w", "writer-ci", &["writer"], Some(T0 + 60 * SEC));
        sm.client(
            T0,
            as_token("root"),
            "CreateToken",
            Command::CreateToken { token: w },
        )
        .unwrap();
        sm
    }

    fn last_entry(&self) -> crate::scheduler::audit::AuditEntry {
        self.state.audit().entries().last().unwrap().as_ref().clone()
    }
}

#[test]
fn bootstrap_works_once_and_gives_the_root_role() {
    let mut sm = Sm::secured();
    let again = Command::AclBootstrap {
        token: token("root2", "root", &[], None),
    };
    let err = sm.client(T0, Credential::None, "Bootstrap", again).unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
    let root = sm.state.token_by_secret_hash(&secret_hash("root")).unwrap();
    assert_eq!(root.roles, [ROOT_ROLE]);
    assert!(sm.state.token_by_secret_hash(&secret_hash("root2")).is_none());
    // The refused second bootstrap is audited with its code.
    let entry = sm.last_entry();
    assert_eq!((entry.record.kind, entry.record.code), (Some(AuditKind::Acl), 9));
}

#[test]
fn a_client_write_is_checked_at_apply_and_audited_whatever_its_outcome() {
    let mut sm = Sm::secured();
    let head = sm.state.audit().head().seq;
    // In scope: applied, created_by is the token's name.
    let create = |id: &str, owner: &str| Command::CreateJob {
        id: id.into(),
        spec: spec("noop", owner),
        request_id: None,
    };
    sm.client(T0 + 1, as_token("w"), "CreateJob", create("b1", "billing-eu"))
        .unwrap();
    assert_eq!(&*sm.state.job("b1").unwrap().created_by, "writer-ci");
    let ok = sm.last_entry();
    assert_eq!(
        (
            ok.record.principal.as_str(),
            ok.record.accessor_id.as_str(),
            ok.record.code,
            ok.record.job_id.as_str()
        ),
        ("writer-ci", "w", 0, "b1")
    );
    // Out of scope, an exec job, an unknown token: refused, nothing changed, audited.
    for (credential, command, code) in [
        (as_token("w"), create("s1", "search"), 7),
        (
            as_token("w"),
            Command::CreateJob {
                id: "x1".into(),
                spec: spec("exec", "billing"),
                request_id: None,
            },
            7,
        ),
        (as_token("gone"), create("b2", "billing"), 16),
        (Credential::None, create("b3", "billing"), 16),
    ] {
        let before = sm.state.job_count();
        sm.client(T0 + 2, credential, "CreateJob", command).unwrap_err();
        assert_eq!(sm.state.job_count(), before);
        assert_eq!(sm.last_entry().record.code, code);
    }
    assert_eq!(
        sm.state.audit().head().seq,
        head + 5,
        "one entry per client write"
    );
    // The token expires at T0 + 60 s: at the entry's time, not the proposer's.
    let late = sm.client(T0 + 61 * SEC, as_token("w"), "CreateJob", create("b4", "billing"));
    assert!(matches!(late, Err(Error::Unauthenticated(_))), "{late:?}");
    assert!(sm.state.audit().verify().is_ok());
}

#[test]
fn a_token_revoked_while_a_write_was_in_flight_cannot_act() {
    let mut sm = Sm::secured();
    sm.client(
        T0,
        as_token("root"),
        "RevokeToken",
        Command::RevokeToken {
            accessor_id: "w".into(),
        },
    )
    .unwrap();
    let create = Command::CreateJob {
        id: "b1".into(),
        spec: spec("noop", "billing"),
        request_id: None,
    };
    let err = sm.client(T0 + 1, as_token("w"), "CreateJob", create).unwrap_err();
    assert!(matches!(err, Error::Unauthenticated(_)), "{err:?}");
    assert!(sm.state.job("b1").is_none());
}

#[test]
fn bindings_give_certificate_subjects_their_roles_and_need_an_existing_role() {
    let mut sm = Sm::secured();
    let bind = |role: &str| Command::CreateBinding {
        binding: Binding {
            subject: "spiffe://example/ci".into(),
            role: role.into(),
        },
    };
    let missing = sm
        .client(T0, as_token("root"), "CreateBinding", bind("nope"))
        .unwrap_err();
    assert!(matches!(missing, Error::NotFound(_)), "{missing:?}");
    sm.client(T0, as_token("root"), "CreateBinding", bind("writer"))
        .unwrap();
    let cert = Credential::Certificate {
        subject: "spiffe://example/ci".into(),
    };
    let create = Command::CreateJob {
        id: "b1".into(),
        spec: spec("noop", "billing"),
        request_id: None,
    };
    sm.client(T0, cert, "CreateJob", create).unwrap();
    assert_eq!(&*sm.state.job("b1").unwrap().created_by, "spiffe://example/ci");
}

#[test]
fn every_run_transition_is_an_execution_event_attributed_to_who_caused_it() {
    let mut sm = Sm::secured();
    sm.job("tick", T0, |_| {});
    let (runs, _) = sm.tick(T0 + SEC);
    let token = sm.start(runs[0], T0 + SEC);
    sm.finish(runs[0], token, T0 + 2 * SEC, AttemptOutcome::Succeeded)
        .unwrap();
    let events: Vec<(String, String)> = sm
        .state
        .audit()
        .entries()
        .filter(|e| e.record.kind == Some(AuditKind::Execution) && e.record.run_id == runs[0])
        .map(|e| (e.record.method.clone(), e.record.principal.clone()))
        .collect();
    let system = SYSTEM_PRINCIPAL.to_string();
    assert_eq!(
        events,
        [
            ("run.pending".to_string(), system.clone()),
            ("run.queued".to_string(), system.clone()),
            ("run.succeeded".to_string(), system.clone()),
        ]
    );
    // A trigger's run is attributed to the caller.
    let trigger = Command::TriggerJob { id: "tick".into() };
    sm.client(T0 + 3 * SEC, as_token("root"), "TriggerJob", trigger)
        .unwrap();
    let created = sm.last_entry();
    assert_eq!(
        (created.record.method.as_str(), created.record.principal.as_str()),
        ("run.pending", "root")
    );
    assert!(sm.state.audit().verify().is_ok());
}

#[test]
fn the_security_tables_and_the_audit_log_survive_an_image() {
    let mut sm = Sm::secured();
    sm.job("tick", T0, |_| {});
    sm.tick(T0 + SEC);
    let rebuilt = State::from_image(sm.state.image());
    assert_eq!(rebuilt, sm.state);
    assert!(rebuilt.token_by_secret_hash(&secret_hash("w")).is_some());
}
