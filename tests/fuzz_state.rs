//! Property-based fuzzing of the replicated state machine (`State::apply`)
//! over arbitrary sequences of commands.
//!
//! A case is a sequence of abstract operations ([`Op`]) at increasing times:
//! job creates, updates, deletes, pauses and resumes; fires as the leader's
//! timer proposes them (on time, ahead of time, stale or made up);
//! triggers and backfills; attempt starts, heartbeats and results with right,
//! stale and random fencing tokens; expiries; run cancels; write ids reused
//! within and beyond their lifetime; and batches of all of these (a batch
//! inside a batch among them); any of them as a client's write by one of a
//! few callers (root, a token of a scoped role, unknown, revoked or
//! expiring tokens, no credential, a certificate subject, an insecure
//! node), ACL changes (bootstrap, roles, tokens, bindings) and audit
//! records. Each operation picks its job from a small
//! pool of ids and its run from the runs the state holds (or one it does
//! not), so that most commands meet state they can act on. It becomes a
//! concrete [`Request`] by reading the first replica's state; every replica
//! then applies that same request, as Raft would have them.
//!
//! Checked at every step:
//!
//! - `apply` does not panic;
//! - two replicas applying the same requests give the same results and end
//!   equal (derived indexes included);
//! - the state rebuilt from its image ([`State::from_image`]) equals the
//!   live one;
//! - the audit chain verifies;
//!
//! and once per case, at a random step: the image encoded and decoded as a
//! snapshot stores it (`codec`) gives a third replica equal to the live
//! one, which then gives the same results for every following request. At
//! the end: at most one scheduled run per job and nominal time.
//!
//! # Adding a command
//!
//! A new command is fuzzed by adding a variant to [`Op`], an arm to [`op`]
//! (its strategy and weight) and an arm to [`Op::command`] (how it reads
//! the state to become a `Command`). Nothing else changes.
//!
//! Cases: `PROPTEST_CASES` (default 64 sequences of up to 60 steps, about
//! 10 s in a debug build); `tests/fuzz-campaign.sh` runs long campaigns.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kairos::codec;
use kairos::scheduler::acl::{secret_hash, Binding, Credential, Permission, Role, Token};
use kairos::scheduler::audit::{AuditKind, AuditRecord};
use kairos::scheduler::job::{
    Catchup, HistoryLimits, JobPatch, JobSpec, Metadata, Overlap, Policies, RetryPolicy, Timeouts,
};
use kairos::scheduler::run::{AttemptOutcome, AttemptResult, RunCause};
use kairos::scheduler::schedule::{DependencyCondition, DependencyMode};
use kairos::scheduler::state::StateImage;
use kairos::scheduler::{
    Assignment, CallContext, Changes, Command, CommandResult, Request, RunId, ScheduleSpec, State,
};
use proptest::prelude::*;

/// The first command's time: 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600_000;
/// The job ids operations choose from.
const JOB_IDS: [&str; 5] = ["a", "b", "c", "d", "e"];
/// Topics of published events.
const TOPICS: [&str; 3] = ["orders.created", "orders.paid", "refunds.created"];
/// The write ids operations choose from (few, so that they repeat).
const WRITE_IDS: [&str; 4] = ["w1", "w2", "w3", "w4"];

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---- choices that read the state -------------------------------------------

/// Which run an operation names: one the state holds (by position in id
/// order, modulo the count), or one it does not.
#[derive(Clone, Copy, Debug)]
enum RunChoice {
    Held(usize),
    Unknown,
}

impl RunChoice {
    fn resolve(self, state: &State) -> RunId {
        let ids: Vec<RunId> = state.runs().map(|r| r.id).collect();
        match self {
            RunChoice::Held(i) if !ids.is_empty() => ids[i % ids.len()],
            _ => state.next_run_id() + 7,
        }
    }
}

/// Which fencing token an operation carries.
#[derive(Clone, Copy, Debug)]
enum TokenChoice {
    /// The run's current attempt's.
    Current,
    /// One before it (an older attempt's).
    Stale,
    /// Any number.
    Any(u64),
}

impl TokenChoice {
    fn resolve(self, state: &State, run_id: RunId) -> u64 {
        let current = state.run(run_id).map_or(0, |r| r.token);
        match self {
            TokenChoice::Current => current,
            TokenChoice::Stale => current.saturating_sub(1),
            TokenChoice::Any(token) => token,
        }
    }
}

/// Which version an update or delete expects: the stored one or another.
#[derive(Clone, Copy, Debug)]
enum VersionChoice {
    Stored,
    Off(i8),
}

impl VersionChoice {
    fn resolve(self, state: &State, job: &str) -> u64 {
        let stored = state.job(job).map_or(1, |j| j.version);
        match self {
            VersionChoice::Stored => stored,
            VersionChoice::Off(delta) => stored.saturating_add_signed(i64::from(delta)),
        }
    }
}

// ---- operations --------------------------------------------------------------

/// One abstract operation; [`Op::command`] makes it concrete.
#[derive(Clone, Debug)]
enum Op {
    Create {
        job: usize,
        spec: JobSpec,
        request_id: Option<u8>,
    },
    Update {
        job: usize,
        version: VersionChoice,
        patch: JobPatch,
    },
    Delete {
        job: usize,
        version: Option<VersionChoice>,
    },
    SetPaused {
        job: usize,
        paused: bool,
    },
    /// The timer's fire batch for what is due now, or ahead up to `ahead_ms`.
    Fire {
        ahead_ms: Option<i64>,
    },
    /// A fire of `job` at its next fire time moved by `shift_ms` (stale or made up).
    FireOdd {
        job: usize,
        shift_ms: i64,
    },
    Trigger {
        job: usize,
    },
    /// A published event on one of a few topics, with an idempotency key or none.
    Publish {
        topic: usize,
        key: Option<u8>,
    },
    /// A delete whatever runs after the job.
    ForceDelete {
        job: usize,
    },
    Backfill {
        job: usize,
        back_ms: i64,
        len_ms: i64,
    },
    Start {
        run: RunChoice,
        node: u64,
        attempt_shift: i8,
    },
    /// The dispatcher's start of what is dispatchable now.
    StartDispatchable {
        node: u64,
    },
    Heartbeat {
        run: RunChoice,
        token: TokenChoice,
    },
    Finish {
        run: RunChoice,
        token: TokenChoice,
        outcome: AttemptOutcome,
        output: String,
    },
    FinishMany {
        results: Vec<(RunChoice, TokenChoice, AttemptOutcome)>,
    },
    /// The timer's expiry of what is past its deadline now, plus `extra`.
    Expire {
        extra: Vec<RunChoice>,
    },
    Cancel {
        run: RunChoice,
    },
    Batch {
        ops: Vec<Op>,
    },
    /// A batch inside a batch (refused).
    NestedBatch,
    /// `op` as a client's write, by one of [`CALLERS`] (checked and audited at apply).
    AsClient {
        caller: usize,
        op: Box<Op>,
    },
    /// An ACL change by a client (root, a scoped token, or someone unknown).
    Acl {
        caller: usize,
        change: AclChange,
    },
    /// Audit records a node made (refusals, coalesced counts).
    Audit {
        records: Vec<(usize, u8, u32)>,
    },
    /// The previous request again, with its write id (see [`step`]).
    Repeat,
}

/// The credentials clients call with: the root token (once bootstrapped),
/// a token of the scoped role (once created), tokens that do not exist or
/// were revoked, no credential, a certificate subject, and an insecure node.
const CALLERS: [&str; 6] = ["root", "scoped", "ghost", "none", "cert", "insecure"];

fn credential(caller: usize) -> Credential {
    match CALLERS[caller % CALLERS.len()] {
        "none" => Credential::None,
        "insecure" => Credential::Insecure,
        "cert" => Credential::Certificate {
            subject: "spiffe://fuzz/ci".into(),
        },
        accessor => Credential::Token {
            accessor_id: accessor.into(),
        },
    }
}

fn client(caller: usize, method: &str, command: Command) -> Command {
    Command::Client {
        call: CallContext {
            credential: credential(caller),
            source: "127.0.0.1:5000".into(),
            node: 1 + caller as u64 % 3,
            method: method.into(),
            resource: String::new(),
            request_id: String::new(),
            trace_id: String::new(),
        },
        command: Box::new(command),
    }
}

/// One ACL change.
#[derive(Clone, Debug)]
enum AclChange {
    Bootstrap,
    /// The scoped role: `job:write`, `job:read`, `run:cancel` on owners `o*` (or jobs `a*`).
    CreateRole {
        by_job: bool,
    },
    DeleteRole,
    /// A token holding the scoped role, maybe expiring.
    CreateToken {
        accessor: usize,
        ttl_ms: Option<i64>,
    },
    RevokeToken {
        accessor: usize,
    },
    Bind,
    Unbind,
}

impl AclChange {
    fn command(&self, at_ms: i64) -> Command {
        let binding = || Binding {
            subject: "spiffe://fuzz/ci".into(),
            role: "scoped".into(),
        };
        let token = |accessor: &str, roles: Vec<String>, expires_ms| Token {
            accessor_id: accessor.into(),
            name: format!("{accessor}-name"),
            secret_hash: secret_hash(accessor),
            roles,
            expires_ms,
            created_ms: 0,
            created_by: String::new(),
        };
        match self {
            AclChange::Bootstrap => Command::AclBootstrap {
                token: token("root", vec![], None),
            },
            AclChange::CreateRole { by_job } => Command::CreateRole {
                role: Role {
                    name: "scoped".into(),
                    permissions: [Permission::JobWrite, Permission::JobRead, Permission::RunCancel].into(),
                    owners: if *by_job { vec![] } else { vec!["o*".into()] },
                    jobs: if *by_job { vec!["a*".into()] } else { vec![] },
                    types: vec![],
                    topics: Vec::new(),
                    description: String::new(),
                    created_ms: 0,
                    created_by: String::new(),
                },
            },
            AclChange::DeleteRole => Command::DeleteRole {
                name: "scoped".into(),
            },
            AclChange::CreateToken { accessor, ttl_ms } => Command::CreateToken {
                token: token(
                    CALLERS[accessor % 3],
                    vec!["scoped".into()],
                    ttl_ms.map(|t| at_ms + t),
                ),
            },
            AclChange::RevokeToken { accessor } => Command::RevokeToken {
                accessor_id: CALLERS[accessor % 3].into(),
            },
            AclChange::Bind => Command::CreateBinding { binding: binding() },
            AclChange::Unbind => Command::DeleteBinding { binding: binding() },
        }
    }
}

impl Op {
    /// The command this operation stands for in `state` at `at_ms`.
    fn command(&self, state: &State, at_ms: i64) -> Command {
        let id = |job: &usize| JOB_IDS[*job].to_string();
        match self {
            Op::Create {
                job,
                spec,
                request_id,
            } => Command::CreateJob {
                id: id(job),
                spec: spec.clone(),
                request_id: request_id.map(|r| format!("req-{r}")),
            },
            Op::Update { job, version, patch } => Command::UpdateJob {
                id: id(job),
                expected_version: version.resolve(state, &id(job)),
                patch: patch.clone(),
            },
            Op::Delete { job, version } => Command::DeleteJob {
                id: id(job),
                expected_version: version.map(|v| v.resolve(state, &id(job))),
            },
            Op::SetPaused { job, paused } => Command::SetPaused {
                id: id(job),
                paused: *paused,
            },
            Op::Fire { ahead_ms: None } => Command::FireBatch {
                fires: state.due_fires(at_ms, 1_000),
            },
            Op::Fire {
                ahead_ms: Some(ahead),
            } => Command::FireWindow {
                fires: state.due_fires(at_ms + ahead, 1_000),
                until_ms: at_ms + ahead,
            },
            Op::FireOdd { job, shift_ms } => {
                let next = state.job(&id(job)).and_then(|j| j.next_fire_ms).unwrap_or(at_ms);
                Command::FireBatch {
                    fires: vec![(id(job), next.saturating_add(*shift_ms))],
                }
            }
            Op::Trigger { job } => Command::TriggerJob { id: id(job) },
            Op::Publish { topic, key } => Command::PublishEvent {
                topic: TOPICS[*topic].into(),
                attributes: [(
                    "region".to_string(),
                    if topic % 2 == 0 { "eu" } else { "us" }.to_string(),
                )]
                .into_iter()
                .collect(),
                payload: vec![*topic as u8],
                idempotency_key: key.map(|k| format!("key-{k}")).unwrap_or_default(),
            },
            Op::ForceDelete { job } => Command::ForceDeleteJob {
                id: id(job),
                expected_version: None,
            },
            Op::Backfill { job, back_ms, len_ms } => Command::Backfill {
                id: id(job),
                start_ms: at_ms - back_ms,
                end_ms: at_ms - back_ms + len_ms,
            },
            Op::Start {
                run,
                node,
                attempt_shift,
            } => {
                let run_id = run.resolve(state);
                let attempt = state.run(run_id).map_or(1, |r| r.attempt + 1);
                Command::StartAttempt {
                    run_id,
                    node: *node,
                    attempt: attempt.saturating_add_signed(i32::from(*attempt_shift)),
                }
            }
            // Odd nodes stand for an external worker on the node (its
            // attempts are named in the state and cancelled in two phases).
            Op::StartDispatchable { node } if node % 2 == 1 => Command::AssignAttempts {
                starts: state
                    .dispatchable_runs(at_ms, 64)
                    .into_iter()
                    .map(|r| Assignment {
                        run_id: r.id,
                        node: *node,
                        attempt: r.attempt + 1,
                        worker: Some(format!("{node}-worker")),
                    })
                    .collect(),
            },
            Op::StartDispatchable { node } => Command::StartAttempts {
                starts: state
                    .dispatchable_runs(at_ms, 64)
                    .into_iter()
                    .map(|r| (r.id, *node, r.attempt + 1))
                    .collect(),
            },
            Op::Heartbeat { run, token } => {
                let run_id = run.resolve(state);
                Command::Heartbeat {
                    run_id,
                    token: token.resolve(state, run_id),
                }
            }
            Op::Finish {
                run,
                token,
                outcome,
                output,
            } => {
                let run_id = run.resolve(state);
                Command::FinishAttempt {
                    run_id,
                    token: token.resolve(state, run_id),
                    outcome: outcome.clone(),
                    output_tail: output.clone(),
                }
            }
            Op::FinishMany { results } => Command::FinishAttempts {
                results: results
                    .iter()
                    .map(|(run, token, outcome)| {
                        let run_id = run.resolve(state);
                        AttemptResult {
                            run_id,
                            token: token.resolve(state, run_id),
                            outcome: outcome.clone(),
                            output_tail: "out".into(),
                        }
                    })
                    .collect(),
            },
            Op::Expire { extra } => {
                let mut run_ids = state.expired_runs(at_ms, 1_000);
                run_ids.extend(extra.iter().map(|r| r.resolve(state)));
                Command::ExpireRuns { run_ids }
            }
            Op::Cancel { run } => Command::CancelRun {
                run_id: run.resolve(state),
            },
            Op::Batch { ops } => Command::Batch {
                requests: ops
                    .iter()
                    .enumerate()
                    .map(|(i, op)| Request {
                        at_ms,
                        principal: format!("p{i}"),
                        command: op.command(state, at_ms),
                        write_id: None,
                    })
                    .collect(),
            },
            Op::AsClient { caller, op } => client(*caller, "Fuzz", op.command(state, at_ms)),
            Op::Acl { caller, change } => client(*caller, "Acl", change.command(at_ms)),
            Op::Audit { records } => Command::RecordAudit {
                records: records
                    .iter()
                    .map(|(caller, code, count)| AuditRecord {
                        kind: Some(AuditKind::Call),
                        principal: CALLERS[caller % CALLERS.len()].into(),
                        method: "DeleteJob".into(),
                        code: u32::from(*code),
                        count: *count,
                        ..AuditRecord::default()
                    })
                    .collect(),
            },
            // Replaced by the previous request before it gets here; alone, nothing.
            Op::Repeat => Command::Batch { requests: vec![] },
            Op::NestedBatch => Command::Batch {
                requests: vec![Request {
                    at_ms,
                    principal: "p".into(),
                    command: Command::Batch { requests: vec![] },
                    write_id: None,
                }],
            },
        }
    }
}

// ---- strategies ----------------------------------------------------------------

fn schedule() -> BoxedStrategy<ScheduleSpec> {
    prop_oneof![
        (1u64..10).prop_map(|s| ScheduleSpec::Every {
            interval_ms: s * 1_000,
            phase_ms: 0
        }),
        Just(ScheduleSpec::Every {
            interval_ms: 7_000,
            phase_ms: 3_000
        }),
        prop::sample::select(vec![
            ("*/5 * * * * *", ""),
            ("* * * * * *", ""),
            ("0 * * * * *", "Europe/Berlin"),
            ("0 0 * * *", ""),
            ("*/2 * * * * *", "Australia/Lord_Howe"),
        ])
        .prop_map(|(expr, tz)| ScheduleSpec::Cron {
            expr: expr.into(),
            timezone: tz.into()
        }),
        (0i64..600_000).prop_map(|ms| ScheduleSpec::At { at_ms: T0 + ms }),
        (
            prop::sample::select(vec!["orders.*", "*.created", "refunds.created"]),
            any::<bool>()
        )
            .prop_map(|(topic, eu)| ScheduleSpec::OnEvent {
                topic: topic.into(),
                matches: if eu {
                    [("region".to_string(), "eu".to_string())].into_iter().collect()
                } else {
                    Default::default()
                },
            }),
        (
            prop::collection::vec(0..JOB_IDS.len(), 1..3),
            prop::sample::select(vec![
                DependencyCondition::Succeeded,
                DependencyCondition::Failed,
                DependencyCondition::Completed
            ]),
            any::<bool>()
        )
            .prop_map(|(jobs, condition, all)| ScheduleSpec::After {
                jobs: jobs.into_iter().map(|j| JOB_IDS[j].to_string()).collect(),
                condition,
                mode: if all {
                    DependencyMode::All
                } else {
                    DependencyMode::Any
                },
            }),
    ]
    .boxed()
}

fn policies() -> BoxedStrategy<Policies> {
    let overlap = prop::sample::select(vec![
        Overlap::Skip,
        Overlap::BufferOne,
        Overlap::BufferAll,
        Overlap::CancelOther,
        Overlap::AllowAll,
    ]);
    let catchup = prop::sample::select(vec![Catchup::Latest, Catchup::All, Catchup::None]);
    let retry = (1u32..5, 0u64..3_000, 1_000u32..3_000, 0u32..500, any::<bool>()).prop_map(
        |(max_attempts, initial_interval_ms, backoff_coefficient_milli, jitter_milli, boom_final)| {
            RetryPolicy {
                max_attempts,
                initial_interval_ms,
                backoff_coefficient_milli,
                max_interval_ms: initial_interval_ms.saturating_mul(10),
                jitter_milli,
                non_retryable_errors: if boom_final { vec!["boom".into()] } else { vec![] },
            }
        },
    );
    let timeouts = (0u64..5_000, 500u64..10_000, 500u64..5_000).prop_map(
        |(start_deadline_ms, attempt_timeout_ms, heartbeat_timeout_ms)| Timeouts {
            start_deadline_ms,
            attempt_timeout_ms,
            heartbeat_timeout_ms,
        },
    );
    (
        overlap,
        catchup,
        0u64..10_000,
        1u32..5,
        retry,
        timeouts,
        (1u32..4, 1u32..4),
    )
        .prop_map(
            |(
                overlap,
                catchup,
                catchup_window_ms,
                max_catchup,
                retry,
                timeouts,
                (keep_succeeded, keep_failed),
            )| {
                Policies {
                    overlap,
                    catchup,
                    catchup_window_ms,
                    max_catchup,
                    retry,
                    timeouts,
                    history: HistoryLimits {
                        keep_succeeded,
                        keep_failed,
                    },
                }
            },
        )
        .boxed()
}

fn metadata() -> BoxedStrategy<Metadata> {
    prop::collection::btree_map("[a-c]", "[a-z]{0,3}", 0..3)
        .prop_map(|labels| Metadata {
            labels,
            fields_json: String::new(),
        })
        .boxed()
}

fn spec() -> BoxedStrategy<JobSpec> {
    (
        schedule(),
        policies(),
        metadata(),
        any::<bool>(),
        prop::sample::select(vec!["noop", "sleep"]),
    )
        .prop_map(|(schedule, policies, metadata, paused, job_type)| JobSpec {
            job_type: job_type.into(),
            owner_service: "fuzz".into(),
            schedule,
            payload: b"{}".to_vec(),
            metadata,
            policies: Arc::new(policies),
            paused,
        })
        .boxed()
}

fn patch() -> BoxedStrategy<JobPatch> {
    (
        proptest::option::of(schedule()),
        proptest::option::of(policies()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(prop::collection::vec(any::<u8>(), 0..4)),
        proptest::option::of(metadata()),
        proptest::option::of(Just("sleep".to_string())),
    )
        .prop_map(
            |(schedule, policies, paused, payload, metadata, job_type)| JobPatch {
                job_type,
                owner_service: None,
                schedule,
                payload,
                metadata,
                policies,
                paused,
            },
        )
        .boxed()
}

fn run_choice() -> BoxedStrategy<RunChoice> {
    prop_oneof![9 => any::<usize>().prop_map(RunChoice::Held), 1 => Just(RunChoice::Unknown)].boxed()
}

fn token_choice() -> BoxedStrategy<TokenChoice> {
    prop_oneof![
        8 => Just(TokenChoice::Current),
        1 => Just(TokenChoice::Stale),
        1 => any::<u64>().prop_map(TokenChoice::Any),
    ]
    .boxed()
}

fn version_choice() -> BoxedStrategy<VersionChoice> {
    prop_oneof![4 => Just(VersionChoice::Stored), 1 => any::<i8>().prop_map(VersionChoice::Off)].boxed()
}

fn outcome() -> BoxedStrategy<AttemptOutcome> {
    prop_oneof![
        2 => Just(AttemptOutcome::Succeeded),
        2 => (prop::sample::select(vec!["boom", "timeout", "http_500", "http_refused"]), any::<bool>())
            .prop_map(|(kind, retryable)| AttemptOutcome::Failed {
                kind: kind.into(),
                message: format!("{kind} happened"),
                retryable,
            }),
    ]
    .boxed()
}

/// An attempt's output: short, or past the 4 KiB tail with multi-byte characters.
fn output() -> BoxedStrategy<String> {
    prop_oneof![4 => "[a-z ]{0,12}", 1 => (4_090usize..4_200).prop_map(|n| "é".repeat(n / 2))].boxed()
}

/// One operation that is not a batch, with its weight: the one place that
/// lists the commands (see the module docs).
fn op() -> BoxedStrategy<Op> {
    let job = || 0..JOB_IDS.len();
    prop_oneof![
        6 => (job(), spec(), proptest::option::of(0u8..3))
            .prop_map(|(job, spec, request_id)| Op::Create { job, spec, request_id }),
        3 => (job(), version_choice(), patch()).prop_map(|(job, version, patch)| Op::Update { job, version, patch }),
        1 => (job(), proptest::option::of(version_choice())).prop_map(|(job, version)| Op::Delete { job, version }),
        2 => (job(), any::<bool>()).prop_map(|(job, paused)| Op::SetPaused { job, paused }),
        10 => proptest::option::of(0i64..1_500).prop_map(|ahead_ms| Op::Fire { ahead_ms }),
        1 => (job(), -3_000i64..3_000).prop_map(|(job, shift_ms)| Op::FireOdd { job, shift_ms }),
        2 => job().prop_map(|job| Op::Trigger { job }),
        3 => (0..TOPICS.len(), proptest::option::of(0u8..3)).prop_map(|(topic, key)| Op::Publish { topic, key }),
        1 => job().prop_map(|job| Op::ForceDelete { job }),
        1 => (job(), 0i64..120_000, 0i64..30_000).prop_map(|(job, back_ms, len_ms)| Op::Backfill { job, back_ms, len_ms }),
        2 => (run_choice(), 1u64..4, -1i8..2).prop_map(|(run, node, attempt_shift)| Op::Start { run, node, attempt_shift }),
        6 => (1u64..4).prop_map(|node| Op::StartDispatchable { node }),
        3 => (run_choice(), token_choice()).prop_map(|(run, token)| Op::Heartbeat { run, token }),
        5 => (run_choice(), token_choice(), outcome(), output())
            .prop_map(|(run, token, outcome, output)| Op::Finish { run, token, outcome, output }),
        3 => prop::collection::vec((run_choice(), token_choice(), outcome()), 0..5)
            .prop_map(|results| Op::FinishMany { results }),
        4 => prop::collection::vec(run_choice(), 0..3).prop_map(|extra| Op::Expire { extra }),
        2 => run_choice().prop_map(|run| Op::Cancel { run }),
    ]
    .boxed()
}

fn acl_change() -> BoxedStrategy<AclChange> {
    prop_oneof![
        2 => Just(AclChange::Bootstrap),
        2 => any::<bool>().prop_map(|by_job| AclChange::CreateRole { by_job }),
        1 => Just(AclChange::DeleteRole),
        3 => (0usize..3, proptest::option::of(0i64..30_000))
            .prop_map(|(accessor, ttl_ms)| AclChange::CreateToken { accessor, ttl_ms }),
        1 => (0usize..3).prop_map(|accessor| AclChange::RevokeToken { accessor }),
        1 => Just(AclChange::Bind),
        1 => Just(AclChange::Unbind),
    ]
    .boxed()
}

/// [`op`], or the same as a client's write, an ACL change or audit records.
fn secured_op() -> BoxedStrategy<Op> {
    let caller = || 0..CALLERS.len();
    prop_oneof![
        10 => op(),
        8 => (caller(), op()).prop_map(|(caller, op)| Op::AsClient { caller, op: Box::new(op) }),
        4 => (caller(), acl_change()).prop_map(|(caller, change)| Op::Acl { caller, change }),
        1 => prop::collection::vec((caller(), 0u8..17, 0u32..1_000), 0..4).prop_map(|records| Op::Audit { records }),
    ]
    .boxed()
}

/// One step: how far time moves, an optional write id, and the operation
/// (sometimes a batch of several, sometimes a repeat of the previous
/// request, as a node retrying a forwarded write sends it).
fn step() -> BoxedStrategy<(i64, Option<usize>, Op)> {
    let advance = prop_oneof![
        6 => 0i64..1_500,
        3 => 0i64..20_000,
        1 => 60_000i64..3_600_000,
        1 => Just(25 * 3_600_000i64),
    ];
    let op = prop_oneof![
        24 => secured_op(),
        4 => prop::collection::vec(secured_op(), 0..5).prop_map(|ops| Op::Batch { ops }),
        1 => Just(Op::NestedBatch),
        2 => Just(Op::Repeat),
    ];
    let write_id = prop_oneof![9 => Just(None), 1 => (0..WRITE_IDS.len()).prop_map(Some)];
    (advance, write_id, op).boxed()
}

// ---- the property --------------------------------------------------------------------

/// A replica and the log index it applied last.
struct Replica {
    state: State,
    index: u64,
}

impl Replica {
    fn apply(&mut self, request: &Request) -> CommandResult {
        self.index += 1;
        self.state.apply(self.index, request, &mut Changes::default())
    }
}

/// `state` stored as a snapshot stores it and read back.
fn through_snapshot(state: &State) -> State {
    let bytes = codec::encode(&state.image()).expect("the image encodes");
    let image: StateImage = codec::decode(&bytes).expect("the image decodes");
    State::from_image(image)
}

/// At most one run caused by the schedule per job and nominal time.
fn unique_scheduled_runs(state: &State) -> Result<(), TestCaseError> {
    let mut seen: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    for run in state.runs().filter(|r| r.cause == RunCause::Schedule) {
        prop_assert!(
            seen.entry(run.job_id.as_str())
                .or_default()
                .insert(run.nominal_ms),
            "two scheduled runs of {} at {}",
            run.job_id,
            run.nominal_ms
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(64), max_shrink_iters: 4_000, ..ProptestConfig::default() })]

    #[test]
    fn replicas_agree_and_snapshots_restore_the_state(
        steps in prop::collection::vec(step(), 1..60),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut first = Replica { state: State::default(), index: 0 };
        let mut second = Replica { state: State::default(), index: 0 };
        let mut restored: Option<Replica> = None;
        let cut = cut.index(steps.len());
        let mut at_ms = T0;
        let mut previous: Option<Request> = None;
        for (i, (advance, write_id, op)) in steps.iter().enumerate() {
            if i == cut {
                let state = through_snapshot(&first.state);
                prop_assert!(state == first.state, "the state read back from a snapshot differs at step {}", i);
                restored = Some(Replica { state, index: first.index });
            }
            at_ms += advance;
            let request = match (op, previous.take()) {
                (Op::Repeat, Some(previous)) => Request { at_ms, ..previous },
                _ => Request {
                    at_ms,
                    principal: "fuzz".into(),
                    command: op.command(&first.state, at_ms),
                    write_id: write_id.map(|w| WRITE_IDS[w].to_string()),
                },
            };
            previous = Some(request.clone());
            let result = first.apply(&request);
            prop_assert_eq!(&second.apply(&request), &result, "step {}: {:?}", i, request);
            if let Some(restored) = restored.as_mut() {
                prop_assert_eq!(&restored.apply(&request), &result, "step {} after the snapshot: {:?}", i, request);
            }
            prop_assert!(first.state == second.state, "the replicas differ after step {}: {:?}", i, request);
            let chain = first.state.audit().verify();
            prop_assert!(chain.is_ok(), "the audit chain breaks after step {}: {:?}", i, chain);
            prop_assert!(
                State::from_image(first.state.image()) == first.state,
                "the indexes differ from the rebuilt ones after step {}: {:?}",
                i,
                request
            );
        }
        if let Some(restored) = &restored {
            prop_assert!(restored.state == first.state, "the restored replica differs at the end");
        }
        unique_scheduled_runs(&first.state)?;
    }
}
