//! Golden encodings: the bytes this build writes for one value of every kind
//! a node stores or sends to another node, checked in under
//! `tests/golden/v<format version>/` as hex.
//!
//! For each value the test (a) decodes the golden bytes and compares the
//! result with the value built here, (b) encodes the value and compares the
//! bytes with the golden ones, and (c) checks that the same bytes framed with
//! the next format version are refused with an error naming both versions.
//! A failure of (a) or (b) means an encoding changed: if that was meant, bump
//! `codec::FORMAT_VERSION`, give the node a way to read or refuse the old
//! version, and bless new goldens with
//!
//! ```sh
//! KAIROS_BLESS_GOLDEN=1 cargo test --test golden
//! ```
//!
//! which writes the files of the current version (the older versions'
//! directories stay as they are).

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;

use kairos::actors::worker::{PoolInfo, WorkItem};
use kairos::codec::{self, FORMAT_VERSION};
use kairos::error::Error;
use kairos::node::{Forwarded, NodeReport};
use kairos::raft::snapshot_file::{Format, Meta, SnapshotFile};
use kairos::raft::TypeConfig;
use kairos::scheduler::acl::{secret_hash, Binding, Credential, Permission, Role, Token};
use kairos::scheduler::audit::{AuditKind, AuditRecord};
use kairos::scheduler::job::{Catchup, Metadata, Overlap, Policies, RetryPolicy};
use kairos::scheduler::job_type::JobTypeDef;
use kairos::scheduler::run::{AttemptOutcome, AttemptResult};
use kairos::scheduler::schedule::{DependencyCondition, DependencyMode};
use kairos::scheduler::state::{SinkDef, StateImage, V4StateImage, V5StateImage};
use kairos::scheduler::{
    Assignment, CallContext, Changes, Command, JobPatch, JobSpec, Request, Response, ScheduleSpec, State,
};
use openraft::error::{Fatal, InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, StoredMembership, Vote,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// 2026-01-01T00:00:00Z, Unix ms: the time of every value here.
const T0: i64 = 1_767_225_600_000;

/// The directory of this version's goldens.
fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("v{FORMAT_VERSION}"))
}

/// Whether this run writes the goldens instead of checking them.
fn blessing() -> bool {
    std::env::var_os("KAIROS_BLESS_GOLDEN").is_some_and(|v| v == "1")
}

/// `bytes` as hex, 32 bytes a line.
fn to_hex(bytes: &[u8]) -> String {
    let mut text = String::new();
    for line in bytes.chunks(32) {
        for byte in line {
            text.push_str(&format!("{byte:02x}"));
        }
        text.push('\n');
    }
    text
}

/// The bytes of hex `text` (whitespace ignored).
fn from_hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).expect("hex"))
        .collect()
}

/// Checks (or, when blessing, writes) the goldens; collects what differs.
struct Goldens {
    failures: Vec<String>,
    names: Vec<String>,
}

impl Goldens {
    fn new() -> Goldens {
        if blessing() {
            std::fs::create_dir_all(golden_dir()).unwrap();
        }
        Goldens {
            failures: Vec::new(),
            names: Vec::new(),
        }
    }

    /// The golden bytes of `name`, or `None` (a failure noted) when there are none.
    fn golden(&mut self, name: &str, now: &[u8]) -> Option<Vec<u8>> {
        self.names.push(name.to_string());
        let path = golden_dir().join(format!("{name}.hex"));
        if blessing() {
            std::fs::write(&path, to_hex(now)).unwrap();
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(from_hex(&text)),
            Err(e) => {
                self.failures.push(format!(
                    "{name}: no golden at {} ({e}); write it with KAIROS_BLESS_GOLDEN=1 cargo test --test golden",
                    path.display()
                ));
                None
            }
        }
    }

    fn changed(&mut self, name: &str, what: &str) {
        self.failures.push(format!(
            "{name}: {what}: the encoding of {name} changed without a new format version. If that \
             is meant, bump codec::FORMAT_VERSION (today {FORMAT_VERSION}), keep the old version's \
             goldens decodable or refused by name, and bless new ones: \
             KAIROS_BLESS_GOLDEN=1 cargo test --test golden"
        ));
    }

    /// Checks the framed encoding of `value` against the golden `name`.
    fn check<T: Serialize + DeserializeOwned + Debug + PartialEq>(&mut self, name: &str, value: &T) {
        self.check_by(name, value, T::eq);
    }

    /// [`Goldens::check`] for a type without `PartialEq`: `same` compares.
    fn check_by<T: Serialize + DeserializeOwned + Debug>(
        &mut self,
        name: &str,
        value: &T,
        same: impl Fn(&T, &T) -> bool,
    ) {
        let now = codec::encode(value).unwrap();
        let Some(golden) = self.golden(name, &now) else {
            return;
        };
        match codec::decode::<T>(&golden) {
            Ok(decoded) if same(&decoded, value) => {}
            Ok(decoded) => self.changed(name, &format!("the golden decodes to {decoded:?}, not {value:?}")),
            Err(e) => self.changed(name, &format!("the golden no longer decodes ({e})")),
        }
        if now != golden {
            self.changed(
                name,
                &format!("encoded now as\n{}instead of\n{}", to_hex(&now), to_hex(&golden)),
            );
        }
        // The same bytes from a newer node are refused, naming both versions.
        let mut newer = golden;
        newer[2..4].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let refusal = codec::decode::<T>(&newer).map(|_| ()).unwrap_err();
        let expected = format!(
            "is in format version {}, newer than this node understands (it reads {FORMAT_VERSION})",
            FORMAT_VERSION + 1
        );
        if !matches!(&refusal, Error::FailedPrecondition(m) if m.contains(&expected)) {
            self.failures.push(format!(
                "{name}: a newer version is not refused by name: {refusal:?}"
            ));
        }
    }

    fn assert_none_failed(self) {
        // Every failure starts with the golden's name.
        let failing: std::collections::BTreeSet<&str> =
            self.failures.iter().filter_map(|f| f.split(':').next()).collect();
        assert!(
            self.failures.is_empty(),
            "{} of {} goldens fail:\n\n{}",
            failing.len(),
            self.names.len(),
            self.failures.join("\n\n")
        );
    }
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn spec() -> JobSpec {
    let policies = Policies {
        overlap: Overlap::BufferOne,
        catchup: Catchup::All,
        catchup_window_ms: 600_000,
        max_catchup: 5,
        retry: RetryPolicy {
            max_attempts: 4,
            initial_interval_ms: 500,
            backoff_coefficient_milli: 1_500,
            max_interval_ms: 60_000,
            jitter_milli: 250,
            non_retryable_errors: vec!["http_4xx".into()],
        },
        ..Policies::default()
    };
    JobSpec {
        job_type: "http".into(),
        owner_service: "billing".into(),
        schedule: ScheduleSpec::Cron {
            expr: "*/5 * * * *".into(),
            timezone: "Europe/Berlin".into(),
        },
        payload: br#"{"url":"http://127.0.0.1:9/hook"}"#.to_vec(),
        metadata: Metadata {
            labels: [("team".to_string(), "payments".to_string())].into(),
            fields_json: r#"{"tier":1}"#.into(),
        },
        policies: policies.shared(),
        paused: false,
    }
}

fn request(at_ms: i64, command: Command, write_id: Option<&str>) -> Request {
    Request {
        at_ms,
        principal: "alice".into(),
        command,
        write_id: write_id.map(str::to_string),
    }
}

fn token() -> Token {
    Token {
        accessor_id: "acc-1".into(),
        name: "ci".into(),
        secret_hash: secret_hash("not-a-real-secret"),
        roles: vec!["billing-ops".into()],
        expires_ms: Some(T0 + 86_400_000),
        created_ms: T0,
        created_by: "root".into(),
    }
}

fn job_type_def() -> JobTypeDef {
    JobTypeDef {
        name: "billing.charge".into(),
        description: "charges a customer".into(),
        payload_schema: r#"{"type":"object","required":["amount"]}"#.into(),
        registered_by: "billing-worker".into(),
        updated_ms: T0,
    }
}

fn role() -> Role {
    Role {
        name: "billing-ops".into(),
        permissions: [Permission::JobRead, Permission::JobWrite].into(),
        owners: vec!["billing*".into()],
        jobs: vec!["nightly-*".into()],
        types: Vec::new(),
        topics: Vec::new(),
        description: "billing jobs".into(),
        created_ms: T0,
        created_by: "root".into(),
    }
}

fn binding() -> Binding {
    Binding {
        subject: "spiffe://example.org/ci".into(),
        role: "billing-ops".into(),
    }
}

/// One command of every kind, in the enum's order.
fn every_command() -> Vec<Command> {
    let commands = vec![
        Command::CreateJob {
            id: "report".into(),
            spec: spec(),
            request_id: Some("req-1".into()),
        },
        Command::UpdateJob {
            id: "report".into(),
            expected_version: 3,
            patch: JobPatch {
                schedule: Some(ScheduleSpec::Every {
                    interval_ms: 60_000,
                    phase_ms: 5_000,
                }),
                paused: Some(true),
                ..JobPatch::default()
            },
        },
        Command::DeleteJob {
            id: "report".into(),
            expected_version: Some(4),
        },
        Command::SetPaused {
            id: "report".into(),
            paused: false,
        },
        Command::FireBatch {
            fires: vec![("report".into(), T0), ("sync".into(), T0 + 1_000)],
        },
        Command::TriggerJob { id: "report".into() },
        Command::Backfill {
            id: "report".into(),
            start_ms: T0 - 3_600_000,
            end_ms: T0,
        },
        Command::StartAttempt {
            run_id: 7,
            node: 2,
            attempt: 1,
        },
        Command::StartAttempts {
            starts: vec![(7, 2, 1), (8, 3, 2)],
        },
        Command::Heartbeat { run_id: 7, token: 41 },
        Command::FinishAttempt {
            run_id: 7,
            token: 41,
            outcome: AttemptOutcome::Succeeded,
            output_tail: "ok".into(),
        },
        Command::FinishAttempts {
            results: vec![AttemptResult {
                run_id: 8,
                token: 42,
                outcome: AttemptOutcome::Failed {
                    kind: "http_5xx".into(),
                    message: "503 Service Unavailable".into(),
                    retryable: true,
                },
                output_tail: String::new(),
            }],
        },
        Command::ExpireRuns { run_ids: vec![9, 10] },
        Command::CancelRun { run_id: 11 },
        Command::Batch {
            requests: vec![
                request(T0, Command::TriggerJob { id: "report".into() }, Some("w-1")),
                request(T0 + 1, Command::CancelRun { run_id: 11 }, None),
            ],
        },
        Command::FireWindow {
            fires: vec![("report".into(), T0 + 100)],
            until_ms: T0 + 100,
        },
        Command::Client {
            call: CallContext {
                credential: Credential::Token {
                    accessor_id: "acc-1".into(),
                },
                source: "127.0.0.1:50000".into(),
                node: 2,
                method: "TriggerJob".into(),
                resource: "report".into(),
                request_id: "req-2".into(),
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            },
            command: Box::new(Command::TriggerJob { id: "report".into() }),
        },
        Command::AclBootstrap { token: token() },
        Command::CreateRole { role: role() },
        Command::DeleteRole {
            name: "billing-ops".into(),
        },
        Command::CreateToken { token: token() },
        Command::RevokeToken {
            accessor_id: "acc-1".into(),
        },
        Command::CreateBinding { binding: binding() },
        Command::DeleteBinding { binding: binding() },
        Command::RecordAudit {
            records: vec![AuditRecord {
                kind: Some(AuditKind::Call),
                principal: "ci".into(),
                source: "127.0.0.1:50001".into(),
                node: 1,
                method: "DeleteJob".into(),
                resource: "report".into(),
                job_id: "report".into(),
                code: 7,
                message: "ci lacks permission job:write".into(),
                count: 12,
                ..AuditRecord::default()
            }],
        },
        Command::RegisterJobTypes {
            types: vec![job_type_def()],
        },
        Command::AssignAttempts {
            starts: vec![
                Assignment {
                    run_id: 7,
                    node: 2,
                    attempt: 1,
                    worker: Some("2-a1b2c3d4e5f60718".into()),
                },
                Assignment {
                    run_id: 8,
                    node: 3,
                    attempt: 2,
                    worker: None,
                },
            ],
        },
        Command::CreateRoleScoped {
            role: role(),
            types: vec!["billing.*".into()],
        },
        Command::PublishEvent {
            topic: "orders.created".into(),
            attributes: [("region".to_string(), "eu".to_string())].into_iter().collect(),
            payload: br#"{"order":42}"#.to_vec(),
            idempotency_key: "order-42".into(),
        },
        Command::ForceDeleteJob {
            id: "report".into(),
            expected_version: Some(3),
        },
        Command::CreateSink {
            sink: SinkDef {
                name: "audit-hook".into(),
                url: "https://hooks.example/kairos".into(),
                kinds: vec![1, 6],
                job: "billing-*".into(),
                ..SinkDef::default()
            },
        },
        Command::DeleteSink {
            name: "audit-hook".into(),
        },
        Command::AckSink {
            name: "audit-hook".into(),
            position: 1234,
        },
        Command::CreateRoleWithScopes {
            role: role(),
            types: vec!["billing.*".into()],
            topics: vec!["orders.*".into()],
        },
        // Added in release 0.2 within format 6: written only once the
        // cluster version is 0.2 (src/cluster_version.rs).
        Command::SetClusterVersion {
            version: kairos::cluster_version::Version::new(0, 2),
        },
    ];
    for command in &commands {
        // Exhaustive on purpose: a new command does not compile here until
        // it is listed above (and so has a golden).
        match command {
            Command::CreateJob { .. }
            | Command::UpdateJob { .. }
            | Command::DeleteJob { .. }
            | Command::SetPaused { .. }
            | Command::FireBatch { .. }
            | Command::TriggerJob { .. }
            | Command::Backfill { .. }
            | Command::StartAttempt { .. }
            | Command::StartAttempts { .. }
            | Command::Heartbeat { .. }
            | Command::FinishAttempt { .. }
            | Command::FinishAttempts { .. }
            | Command::ExpireRuns { .. }
            | Command::CancelRun { .. }
            | Command::Batch { .. }
            | Command::FireWindow { .. }
            | Command::Client { .. }
            | Command::AclBootstrap { .. }
            | Command::CreateRole { .. }
            | Command::DeleteRole { .. }
            | Command::CreateToken { .. }
            | Command::RevokeToken { .. }
            | Command::CreateBinding { .. }
            | Command::DeleteBinding { .. }
            | Command::RecordAudit { .. }
            | Command::RegisterJobTypes { .. }
            | Command::AssignAttempts { .. }
            | Command::CreateRoleScoped { .. }
            | Command::PublishEvent { .. }
            | Command::ForceDeleteJob { .. }
            | Command::CreateSink { .. }
            | Command::DeleteSink { .. }
            | Command::AckSink { .. }
            | Command::CreateRoleWithScopes { .. }
            | Command::SetClusterVersion { .. } => {}
        }
    }
    commands
}

/// A log entry, encoded exactly as one, shown with its request in failures
/// (openraft's `Debug` of an entry shows only "normal").
#[derive(PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
struct LogEntry(Entry<TypeConfig>);

impl Debug for LogEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0.payload {
            EntryPayload::Normal(request) => {
                write!(f, "Entry {{ log_id: {:?}, request: {request:?} }}", self.0.log_id)
            }
            _ => write!(f, "{:?}", self.0),
        }
    }
}

/// Log entry `index` carrying `command`.
fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(3, index),
        payload: EntryPayload::Normal(request(T0, command, Some("w-7"))),
    }
}

fn membership() -> StoredMembership<u64, BasicNode> {
    let nodes = (1..=3).map(|id| (id, BasicNode::new(format!("127.0.0.1:710{id}"))));
    let membership = Membership::new(
        vec![[1, 2, 3].into()],
        nodes.collect::<std::collections::BTreeMap<_, _>>(),
    );
    StoredMembership::new(Some(log_id(1, 1)), membership)
}

/// A small state: two jobs, fired, one attempt started and finished, with
/// request and write records.
fn small_state() -> State {
    let mut state = State::default();
    let mut index = 0;
    let mut apply = |at_ms: i64, command: Command, write_id: Option<&str>| {
        index += 1;
        state
            .apply(index, &request(at_ms, command, write_id), &mut Changes::default())
            .unwrap();
    };
    let every_second = JobSpec {
        schedule: ScheduleSpec::Every {
            interval_ms: 1_000,
            phase_ms: 0,
        },
        ..spec()
    };
    for id in ["report", "sync"] {
        let create = Command::CreateJob {
            id: id.into(),
            spec: every_second.clone(),
            request_id: Some(format!("req-{id}")),
        };
        apply(T0, create, Some(&format!("w-{id}")));
    }
    let fires = vec![("report".into(), T0 + 1_000), ("sync".into(), T0 + 1_000)];
    apply(T0 + 1_000, Command::FireBatch { fires }, None);
    apply(
        T0 + 1_001,
        Command::StartAttempts {
            starts: vec![(0, 1, 1)],
        },
        None,
    );
    let finish = Command::FinishAttempt {
        run_id: 0,
        token: 4,
        outcome: AttemptOutcome::Succeeded,
        output_tail: "done".into(),
    };
    apply(T0 + 1_500, finish, None);
    apply(
        T0 + 1_550,
        Command::RegisterJobTypes {
            types: vec![job_type_def()],
        },
        None,
    );
    apply(
        T0 + 1_560,
        Command::AssignAttempts {
            starts: vec![Assignment {
                run_id: 1,
                node: 2,
                attempt: 1,
                worker: Some("2-a1b2c3d4e5f60718".into()),
            }],
        },
        None,
    );
    // Format version 6: an event-triggered job, a job after it, an event
    // that fires the first, its run's end that fires the second, a sink.
    let on_orders = JobSpec {
        schedule: ScheduleSpec::OnEvent {
            topic: "orders.*".into(),
            matches: [("region".to_string(), "eu".to_string())].into_iter().collect(),
        },
        ..spec()
    };
    apply(
        T0 + 1_570,
        Command::CreateJob {
            id: "on-orders".into(),
            spec: on_orders,
            request_id: None,
        },
        None,
    );
    let after = JobSpec {
        schedule: ScheduleSpec::After {
            jobs: vec!["on-orders".into()],
            condition: DependencyCondition::Completed,
            mode: DependencyMode::All,
        },
        ..spec()
    };
    apply(
        T0 + 1_571,
        Command::CreateJob {
            id: "after-orders".into(),
            spec: after,
            request_id: None,
        },
        None,
    );
    let publish = Command::PublishEvent {
        topic: "orders.created".into(),
        attributes: [("region".to_string(), "eu".to_string())].into_iter().collect(),
        payload: br#"{"order":42}"#.to_vec(),
        idempotency_key: "order-42".into(),
    };
    apply(T0 + 1_580, publish, None);
    apply(T0 + 1_581, Command::CancelRun { run_id: 2 }, None);
    let sink = SinkDef {
        name: "audit-hook".into(),
        url: "https://hooks.example/kairos".into(),
        ..SinkDef::default()
    };
    apply(T0 + 1_590, Command::CreateSink { sink }, None);
    let call = |method: &str| CallContext {
        credential: Credential::Insecure,
        source: "127.0.0.1:50000".into(),
        node: 1,
        method: method.into(),
        resource: String::new(),
        request_id: String::new(),
        trace_id: String::new(),
    };
    for (method, command) in [
        ("Bootstrap", Command::AclBootstrap { token: token() }),
        ("CreateRole", Command::CreateRole { role: role() }),
        ("CreateBinding", Command::CreateBinding { binding: binding() }),
    ] {
        let command = Box::new(command);
        apply(
            T0 + 1_600,
            Command::Client {
                call: call(method),
                command,
            },
            None,
        );
    }
    state
}

/// A log written in format version 3 or 4 reads the same under today's
/// types once re-framed, as the log store's migration does: the goldens of
/// those versions decode to the commands of today's goldens.
#[test]
fn version_3_log_entries_read_the_same_after_reframing() {
    assert_eq!(
        older_log_entries_read_the_same("v3"),
        16,
        "every command of version 3"
    );
}

#[test]
fn version_5_log_entries_read_the_same_after_reframing() {
    assert_eq!(
        older_log_entries_read_the_same("v5"),
        28,
        "every command of version 5"
    );
}

#[test]
fn version_4_log_entries_read_the_same_after_reframing() {
    assert_eq!(
        older_log_entries_read_the_same("v4"),
        25,
        "every command of version 4"
    );
}

/// How many log entry goldens of `version` decode, re-framed, to today's
/// command of the same name.
fn older_log_entries_read_the_same(version: &str) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(version);
    let commands = every_command();
    let mut checked = 0;
    for (index, command) in commands.into_iter().enumerate() {
        let path = dir.join(format!("entry-{}.hex", command.name()));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // a command version 3 did not have
        };
        let bytes = codec::reframe_as_current(&from_hex(&text));
        let read: LogEntry = codec::decode(&bytes).unwrap();
        assert_eq!(
            read,
            LogEntry(entry(index as u64 + 1, command)),
            "{}",
            path.display()
        );
        checked += 1;
    }
    checked
}

/// The snapshot file format version 5 wrote reads as a version 5 state and
/// migrates to today's with an empty integration part.
#[test]
fn version_5_snapshot_file_migrates() {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v5/snapshot-file.hex"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kairos-snapshot"), from_hex(&text)).unwrap();
    let stored = SnapshotFile::in_dir(dir.path()).read().unwrap().unwrap();
    assert_eq!(stored.format, Format::V5);
    let v5 = codec::decode_body::<V5StateImage>(&stored.data).unwrap();
    let state = State::from_image(StateImage::from(v5));
    assert_eq!(state.job_count(), 2);
    assert_eq!(state.job_types().count(), 1, "the workers' part is kept");
    assert_eq!(state.sinks().count(), 0);
    assert!(state.runs().all(|r| r.trigger.is_none()));
}

/// The snapshot file format version 4 wrote reads as a version 4 state and
/// migrates to today's with an empty workers' part.
#[test]
fn version_4_snapshot_file_migrates() {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v4/snapshot-file.hex"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kairos-snapshot"), from_hex(&text)).unwrap();
    let stored = SnapshotFile::in_dir(dir.path()).read().unwrap().unwrap();
    assert_eq!(stored.format, Format::V4);
    let v4 = codec::decode_body::<V4StateImage>(&stored.data).unwrap();
    let state = State::from_image(StateImage::from(v4));
    assert_eq!(state.job_count(), 2);
    assert_eq!(state.job_types().count(), 0);
    assert!(state.runs().all(|r| r.worker.is_none()));
}

#[test]
fn every_stored_and_sent_encoding_matches_its_golden() {
    let mut goldens = Goldens::new();

    // Log entries: one of every command, and the Raft-internal ones.
    let commands = every_command();
    assert_eq!(commands.len(), 35, "one of every command");
    for (index, command) in commands.into_iter().enumerate() {
        let name = format!("entry-{}", command.name());
        goldens.check(&name, &LogEntry(entry(index as u64 + 1, command)));
    }
    let blank: Entry<TypeConfig> = Entry {
        log_id: log_id(3, 20),
        payload: EntryPayload::Blank,
    };
    goldens.check("entry-blank", &blank);
    let member: Entry<TypeConfig> = Entry {
        log_id: log_id(3, 21),
        payload: EntryPayload::Membership(membership().membership().clone()),
    };
    goldens.check("entry-membership", &member);

    // openraft's RPCs and their replies, as the peer service answers them.
    let vote = Vote::new(4, 2);
    goldens.check("vote-request", &VoteRequest::new(vote, Some(log_id(3, 17))));
    let granted: Result<VoteResponse<u64>, RaftError<u64>> = Ok(VoteResponse {
        vote,
        vote_granted: true,
        last_log_id: Some(log_id(3, 17)),
    });
    goldens.check("vote-reply", &granted);
    let stopped: Result<VoteResponse<u64>, RaftError<u64>> = Err(RaftError::Fatal(Fatal::Stopped));
    goldens.check("vote-reply-error", &stopped);
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(4, 1),
        prev_log_id: Some(log_id(3, 17)),
        entries: vec![
            entry(18, Command::TriggerJob { id: "report".into() }),
            blank.clone(),
        ],
        leader_commit: Some(log_id(3, 16)),
    };
    goldens.check_by("append-entries-request", &append, |a, b| {
        (a.vote, a.prev_log_id, &a.entries, a.leader_commit)
            == (b.vote, b.prev_log_id, &b.entries, b.leader_commit)
    });
    let appended: Result<AppendEntriesResponse<u64>, RaftError<u64>> = Ok(AppendEntriesResponse::Success);
    goldens.check("append-entries-reply", &appended);
    let meta: Meta = Meta {
        last_log_id: Some(log_id(3, 16)),
        last_membership: membership(),
        snapshot_id: "3-16-1".into(),
    };
    let install = InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(4, 1),
        meta: meta.clone(),
        offset: 0,
        data: b"the first chunk of a snapshot".to_vec(),
        done: false,
    };
    goldens.check("install-snapshot-request", &install);
    let installed: Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> =
        Ok(InstallSnapshotResponse {
            vote: Vote::new_committed(4, 1),
        });
    goldens.check("install-snapshot-reply", &installed);

    // Kairos's own peer messages.
    let write = Forwarded::Write {
        principal: "alice".into(),
        command: Box::new(Command::TriggerJob { id: "report".into() }),
        write_id: Some("w-9".into()),
    };
    // Forwarded has no PartialEq; its derived Debug shows every field.
    let same_forward = |a: &Forwarded, b: &Forwarded| format!("{a:?}") == format!("{b:?}");
    goldens.check_by("forwarded-write", &write, same_forward);
    let add = Forwarded::AddNode {
        id: 4,
        addr: "127.0.0.1:7104".into(),
    };
    goldens.check_by("forwarded-add-node", &add, same_forward);
    goldens.check_by(
        "forwarded-remove-node",
        &Forwarded::RemoveNode { id: 4 },
        same_forward,
    );
    let state = small_state();
    let job = Arc::new(state.job("report").unwrap().clone());
    let done: Result<Response, Error> = Ok(Response::Job(job));
    goldens.check("forward-reply", &done);
    let refused: Result<Response, Error> =
        Err(Error::Aborted("job \"report\" is at version 4, not 3".into()));
    goldens.check("forward-reply-error", &refused);
    let report = NodeReport {
        id: 2,
        role: "follower".into(),
        term: 4,
        leader: Some(1),
        commit_index: 120,
        applied_index: 119,
        last_log_index: 121,
        snapshot_index: 100,
        purged_index: 90,
        cluster_addr: "127.0.0.1:7302".into(),
        auth_disabled: false,
        audit_head: (17, [0xab; 32]),
        grpc_addr: "127.0.0.1:7102".into(),
        http_addr: "127.0.0.1:7202".into(),
    };
    goldens.check("node-report", &report);
    let item = WorkItem {
        run_id: 7,
        token: 41,
        attempt: 1,
        job_id: "report".into(),
        job_type: "http".into(),
        payload: spec().payload,
        nominal_ms: T0,
        begin_at_ms: T0,
        idempotency_key: "report:2026-01-01T00:00:00.000Z".into(),
        event_id: "ev-7".into(),
        event_payload: br#"{"order":42}"#.to_vec(),
        attempt_timeout_ms: 600_000,
        heartbeat_timeout_ms: 30_000,
        // Not encoded: it travels as the message's trailer (see the
        // worker module's tests).
        trace_parent: String::new(),
    };
    goldens.check("work-item", &item);
    let pool = PoolInfo {
        workers: 8,
        job_types: vec!["http".into(), "noop".into(), "sleep".into()],
    };
    goldens.check("pool-info", &pool);

    check_snapshot_file(&mut goldens, &meta, &state);
    goldens.assert_none_failed();
}

/// The snapshot file of `state` at `meta`: written byte for byte as the
/// golden, which reads back as the same state.
fn check_snapshot_file(goldens: &mut Goldens, meta: &Meta, state: &State) {
    let name = "snapshot-file";
    let dir = tempfile::tempdir().unwrap();
    let file = SnapshotFile::in_dir(dir.path());
    file.store(meta, &codec::encode_body(&state.image()).unwrap())
        .unwrap();
    let path = dir.path().join("kairos-snapshot");
    let now = std::fs::read(&path).unwrap();
    let Some(golden) = goldens.golden(name, &now) else {
        return;
    };
    std::fs::write(&path, &golden).unwrap();
    match file.read() {
        Ok(Some(stored)) => {
            let image = codec::decode_body::<StateImage>(&stored.data);
            let same = stored.format == Format::CURRENT
                && stored.meta == *meta
                && image.is_ok_and(|image| State::from_image(image) == *state);
            if !same {
                goldens.changed(name, "the golden reads back as another state");
            }
        }
        other => goldens.changed(name, &format!("the golden no longer reads ({other:?})")),
    }
    if now != golden {
        goldens.changed(name, "the file is written differently now");
    }
    let mut newer = golden;
    newer[5..8].copy_from_slice(format!("{:03}", FORMAT_VERSION + 1).as_bytes());
    std::fs::write(&path, &newer).unwrap();
    let refusal = file.read_meta().map(|_| ()).unwrap_err().to_string();
    let expected = format!(
        "the snapshot file is in format version {}, newer than this node understands (it reads {FORMAT_VERSION})",
        FORMAT_VERSION + 1
    );
    if !refusal.contains(&expected) {
        goldens.failures.push(format!(
            "{name}: a newer version is not refused by name: {refusal}"
        ));
    }
}
