//! The client workload: a few *steady* jobs that fire every second for the
//! whole run (the fire-accounting checker follows them), and a stream of
//! creates, updates, deletes, pauses, resumes and triggers of other jobs sent
//! to random nodes by several concurrent clients. Every job calls the
//! harness's webhook receiver. Every request is recorded with its outcome.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kairos::api::convert::{ms_duration, ms_timestamp};
use kairos::proto as pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::client::{classify, request, traced, Clients};
use crate::external::JOB_TYPE;
use crate::history::{Op, OpKind, Outcome};

/// A job that fires every second from setup to settle and is never touched
/// by the workload, so every one of its nominal seconds can be accounted for.
#[derive(Clone, Debug)]
pub struct SteadyJob {
    pub id: String,
    pub catchup: pb::CatchupPolicy,
    /// `http`, or the external workers' type ([`crate::external::JOB_TYPE`]).
    pub job_type: &'static str,
}

/// The steady jobs of every run: three `http` ones and, with external
/// workers, two of their type.
pub fn steady_jobs(external: bool) -> Vec<SteadyJob> {
    let steady = |id: &str, catchup, job_type| SteadyJob {
        id: id.into(),
        catchup,
        job_type,
    };
    let mut jobs = vec![
        steady("steady-all-1", pb::CatchupPolicy::All, "http"),
        steady("steady-all-2", pb::CatchupPolicy::All, "http"),
        steady("steady-latest", pb::CatchupPolicy::Latest, "http"),
    ];
    if external {
        jobs.push(steady("steady-ext-all", pb::CatchupPolicy::All, JOB_TYPE));
        jobs.push(steady("steady-ext-latest", pb::CatchupPolicy::Latest, JOB_TYPE));
    }
    jobs
}

/// The shared record of operations.
#[derive(Clone)]
pub struct OpLog {
    started: Instant,
    seq: Arc<AtomicU64>,
    ops: Arc<Mutex<Vec<Op>>>,
    /// The first half of every trace id of the round (random, non-zero).
    trace_prefix: u64,
    /// The second half of the last trace id handed out.
    traces: Arc<AtomicU64>,
}

impl OpLog {
    pub fn new(started: Instant) -> OpLog {
        OpLog {
            started,
            seq: Arc::default(),
            ops: Arc::default(),
            trace_prefix: rand::random::<u64>() | 1,
            traces: Arc::default(),
        }
    }

    /// A trace id no other operation of the round has (32 hex digits).
    pub fn next_trace_id(&self) -> String {
        let n = self.traces.fetch_add(1, Ordering::SeqCst) + 1;
        format!("{:016x}{n:016x}", self.trace_prefix)
    }

    /// Milliseconds since the run started.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Records `op` under the next sequence number.
    pub fn record(&self, mut op: Op) {
        op.seq = self.seq.fetch_add(1, Ordering::SeqCst);
        self.push(op);
    }

    /// Every operation recorded so far.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().expect("op log").clone()
    }

    fn push(&self, op: Op) {
        self.ops.lock().expect("op log").push(op);
    }
}

/// Policies of every chaos job: runs kept for the checkers, retries that
/// outlast a fault, leases that expire quickly on a dead node.
fn policies(catchup: pb::CatchupPolicy) -> pb::Policies {
    pb::Policies {
        overlap: pb::OverlapPolicy::AllowAll as i32,
        catchup: catchup as i32,
        catchup_window: Some(ms_duration(3_600_000)),
        max_catchup: 10_000,
        retry: Some(pb::RetryPolicy {
            max_attempts: Some(20),
            initial_interval: Some(ms_duration(200)),
            backoff_coefficient: 2.0,
            max_interval: Some(ms_duration(2_000)),
            ..Default::default()
        }),
        timeouts: Some(pb::Timeouts {
            start_deadline: Some(ms_duration(3_600_000)),
            attempt_timeout: Some(ms_duration(10_000)),
            heartbeat_timeout: Some(ms_duration(3_000)),
        }),
        history: Some(pb::HistoryLimits {
            keep_succeeded: 1_000,
            keep_failed: 1_000,
        }),
    }
}

fn webhook_payload(hook: &str, generation: u64) -> Vec<u8> {
    format!(r#"{{"url": "{hook}", "method": "POST", "body": "generation {generation}", "timeout_ms": 2000}}"#)
        .into_bytes()
}

/// A job calling `hook` (an `http` one; an external one records what that
/// call would deliver), firing by `schedule`.
fn job(
    id: &str,
    job_type: &str,
    hook: &str,
    schedule: pb::ScheduleSpec,
    catchup: pb::CatchupPolicy,
) -> pb::ScheduledJob {
    pb::ScheduledJob {
        id: id.into(),
        r#type: job_type.into(),
        owner_service: "chaos".into(),
        schedule_spec: Some(schedule),
        payload: webhook_payload(hook, 0),
        policies: Some(policies(catchup)),
        ..Default::default()
    }
}

fn every_second() -> pb::ScheduleSpec {
    pb::ScheduleSpec {
        kind: Some(pb::schedule_spec::Kind::Cron(pb::CronSchedule {
            expr: "* * * * * *".into(),
            timezone: String::new(),
        })),
    }
}

/// The job that runs after [`CHAIN_UPSTREAM`]'s successes.
pub const CHAIN_JOB: &str = "chain-after-steady";
/// The steady job [`CHAIN_JOB`] runs after.
pub const CHAIN_UPSTREAM: &str = "steady-all-1";
/// The job triggered by the workload's published events.
pub const EVENT_JOB: &str = "on-chaos-event";
/// The hot jobs: one client only reads (linearizable `GetJob`) and updates
/// these, through random nodes, for `linearizable_reads`. Their one fire is
/// a day ahead, so they never run.
pub const HOT_JOBS: [&str; 2] = ["hot-1", "hot-2"];

/// The jobs beside the steady ones: one runs after a steady job's
/// successes, one on the workload's published events.
fn integration_jobs(hook: &str) -> Vec<pb::ScheduledJob> {
    let after = pb::ScheduleSpec {
        kind: Some(pb::schedule_spec::Kind::After(pb::Dependency {
            jobs: vec![CHAIN_UPSTREAM.into()],
            condition: pb::DependencyCondition::Succeeded as i32,
            mode: pb::DependencyMode::All as i32,
        })),
    };
    let on_event = pb::ScheduleSpec {
        kind: Some(pb::schedule_spec::Kind::OnEvent(pb::EventTrigger {
            topic: "chaos.*".into(),
            r#match: [("source".to_string(), "chaos".to_string())]
                .into_iter()
                .collect(),
        })),
    };
    let a_day_ahead = || pb::ScheduleSpec {
        kind: Some(pb::schedule_spec::Kind::At(ms_timestamp(
            chrono::Utc::now().timestamp_millis() + 86_400_000,
        ))),
    };
    let mut jobs = vec![
        job(CHAIN_JOB, "http", hook, after, pb::CatchupPolicy::All),
        job(EVENT_JOB, "http", hook, on_event, pb::CatchupPolicy::All),
    ];
    jobs.extend(
        HOT_JOBS
            .iter()
            .map(|id| job(id, "http", hook, a_day_ahead(), pb::CatchupPolicy::All)),
    );
    jobs
}

/// Creates the steady jobs (and the jobs that follow a steady job or the
/// workload's events), retrying (bounded) until each is acknowledged.
pub async fn create_steady_jobs(
    clients: &Clients,
    hook: &str,
    log: &OpLog,
    steady_jobs: &[SteadyJob],
) -> anyhow::Result<()> {
    let steady_specs = steady_jobs.iter().map(|steady| {
        (
            steady.id.clone(),
            job(&steady.id, steady.job_type, hook, every_second(), steady.catchup),
        )
    });
    let others = integration_jobs(hook).into_iter().map(|j| (j.id.clone(), j));
    for (id, spec) in steady_specs.chain(others).collect::<Vec<_>>() {
        let steady = SteadyJob {
            id,
            catchup: pb::CatchupPolicy::All,
            job_type: "http",
        };
        let mut last = None;
        for attempt in 0..30u64 {
            let node = clients.ids()[(attempt as usize) % clients.ids().len()];
            let op = create(clients, node, spec.clone(), log).await;
            if op.outcome == Outcome::Ok {
                last = None;
                break;
            }
            last = Some(op.outcome);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if let Some(outcome) = last {
            anyhow::bail!(
                "could not create steady job {} in 30 attempts: {outcome:?}",
                steady.id
            );
        }
    }
    Ok(())
}

/// Sends one create to `node` and records it. The request id makes a retry
/// of the same create harmless.
async fn create(clients: &Clients, node: u64, job: pb::ScheduledJob, log: &OpLog) -> Op {
    let start_ms = log.now_ms();
    let id = job.id.clone();
    let trace_id = log.next_trace_id();
    let reply = clients
        .jobs(node)
        .create_job(traced(
            pb::CreateJobRequest {
                request_id: format!("chaos-create-{id}"),
                job: Some(job),
            },
            &trace_id,
        ))
        .await;
    let (outcome, version) = match reply {
        Ok(job) => (Outcome::Ok, Some(job.into_inner().version)),
        Err(status) => (classify(&status), None),
    };
    let op = Op {
        seq: log.seq.fetch_add(1, Ordering::SeqCst),
        kind: OpKind::Create,
        job_id: id,
        node,
        start_ms,
        end_ms: log.now_ms(),
        outcome,
        version,
        run_id: None,
        paused: None,
        trace_id,
        event_id: String::new(),
    };
    log.push(op.clone());
    op
}

/// Jobs of the workload that may exist (created with an ok or unknown outcome, not deleted).
#[derive(Default)]
struct Known {
    jobs: BTreeSet<String>,
}

/// Runs `clients_count` workload clients until `until`; at most `max_ops` operations in all.
pub async fn run(
    clients: Clients,
    hook: String,
    log: OpLog,
    seed: u64,
    until: Instant,
    clients_count: usize,
    max_ops: u64,
) {
    let known = Arc::new(Mutex::new(Known::default()));
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    // One more client reads and updates the hot jobs, at a faster pace.
    {
        let (clients, hook, log, issued) = (clients.clone(), hook.clone(), log.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(clients_count as u64));
            while Instant::now() < until && issued.fetch_add(1, Ordering::SeqCst) < max_ops {
                hot_op(&clients, &hook, &log, &mut rng).await;
                tokio::time::sleep(Duration::from_millis(rng.gen_range(10..60))).await;
            }
        }));
    }
    for client in 0..clients_count {
        let (clients, hook, log, known, issued) = (
            clients.clone(),
            hook.clone(),
            log.clone(),
            known.clone(),
            issued.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(client as u64));
            while Instant::now() < until && issued.fetch_add(1, Ordering::SeqCst) < max_ops {
                one_op(&clients, &hook, &log, &known, &mut rng).await;
                tokio::time::sleep(Duration::from_millis(rng.gen_range(50..250))).await;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

async fn one_op(clients: &Clients, hook: &str, log: &OpLog, known: &Mutex<Known>, rng: &mut StdRng) {
    let ids = clients.ids();
    let node = ids[rng.gen_range(0..ids.len())];
    let target = {
        let known = known.lock().expect("known jobs");
        let jobs: Vec<&String> = known.jobs.iter().collect();
        (!jobs.is_empty()).then(|| jobs[rng.gen_range(0..jobs.len())].clone())
    };
    let roll = rng.gen_range(0..100);
    let Some(target) = target.filter(|_| roll >= 30) else {
        // Create: an every-2-seconds job or a one-shot a few seconds ahead.
        let id = format!(
            "w-{}-{}",
            log.seq.load(Ordering::SeqCst),
            rng.gen_range(0..1_000_000)
        );
        let schedule = if rng.gen_bool(0.5) {
            pb::ScheduleSpec {
                kind: Some(pb::schedule_spec::Kind::Cron(pb::CronSchedule {
                    expr: "@every 2s".into(),
                    timezone: String::new(),
                })),
            }
        } else {
            let at = chrono::Utc::now().timestamp_millis() + rng.gen_range(1_000..8_000);
            pb::ScheduleSpec {
                kind: Some(pb::schedule_spec::Kind::At(ms_timestamp(at))),
            }
        };
        let op = create(
            clients,
            node,
            job(&id, "http", hook, schedule, pb::CatchupPolicy::All),
            log,
        )
        .await;
        if !matches!(op.outcome, Outcome::Failed(_)) {
            known.lock().expect("known jobs").jobs.insert(id);
        }
        return;
    };
    let start_ms = log.now_ms();
    let trace_id = log.next_trace_id();
    let mut op = Op {
        seq: 0,
        kind: OpKind::Trigger,
        job_id: target.clone(),
        node,
        start_ms,
        end_ms: 0,
        outcome: Outcome::Ok,
        version: None,
        run_id: None,
        paused: None,
        trace_id: trace_id.clone(),
        event_id: String::new(),
    };
    let result: Result<(), tonic::Status> = match roll {
        45..=49 => {
            op.kind = OpKind::Publish;
            op.job_id = EVENT_JOB.into();
            publish(clients, node, rng.gen(), &trace_id, &mut op).await
        }
        30..=44 => {
            op.kind = OpKind::Trigger;
            clients
                .runs(node)
                .trigger_job(traced(pb::TriggerJobRequest { id: target.clone() }, &trace_id))
                .await
                .map(|run| op.run_id = Some(run.into_inner().id))
        }
        50..=64 => {
            op.kind = OpKind::Update;
            update(clients, node, &target, hook, rng.gen(), &trace_id, &mut op).await
        }
        65..=79 => {
            let pause = rng.gen_bool(0.5);
            op.kind = if pause { OpKind::Pause } else { OpKind::Resume };
            op.paused = Some(pause);
            let reply = if pause {
                clients
                    .jobs(node)
                    .pause_job(traced(pb::PauseJobRequest { id: target.clone() }, &trace_id))
                    .await
            } else {
                clients
                    .jobs(node)
                    .resume_job(traced(pb::ResumeJobRequest { id: target.clone() }, &trace_id))
                    .await
            };
            reply.map(|job| op.version = Some(job.into_inner().version))
        }
        _ => {
            op.kind = OpKind::Delete;
            let reply = clients
                .jobs(node)
                .delete_job(traced(
                    pb::DeleteJobRequest {
                        id: target.clone(),
                        version: 0,
                        force: false,
                    },
                    &trace_id,
                ))
                .await;
            if reply.is_ok() {
                known.lock().expect("known jobs").jobs.remove(&target);
            }
            reply.map(|_| ())
        }
    };
    op.outcome = match result {
        Ok(()) => Outcome::Ok,
        Err(status) => classify(&status),
    };
    op.end_ms = log.now_ms();
    log.record(op);
}

/// Reads (linearizable `GetJob`, two times in three) or updates one of the
/// [`HOT_JOBS`] through a random node, and records it. An acknowledged
/// update is read back at once through another node: the read that most
/// easily comes out stale where reads are not linearizable.
async fn hot_op(clients: &Clients, hook: &str, log: &OpLog, rng: &mut StdRng) {
    let ids = clients.ids();
    let node = ids[rng.gen_range(0..ids.len())];
    let target = HOT_JOBS[rng.gen_range(0..HOT_JOBS.len())];
    let update_it = rng.gen_range(0..3) == 0;
    let updated = hot_read_or_update(clients, hook, log, rng, node, target, update_it).await;
    if updated {
        let others: Vec<u64> = ids.iter().copied().filter(|&id| id != node).collect();
        if !others.is_empty() {
            let other = others[rng.gen_range(0..others.len())];
            hot_read_or_update(clients, hook, log, rng, other, target, false).await;
        }
    }
}

/// One read (`update` false) or update of hot job `target` through `node`,
/// recorded; returns whether it was an acknowledged update.
async fn hot_read_or_update(
    clients: &Clients,
    hook: &str,
    log: &OpLog,
    rng: &mut StdRng,
    node: u64,
    target: &str,
    update_it: bool,
) -> bool {
    let mut op = Op {
        seq: 0,
        kind: OpKind::Read,
        job_id: target.into(),
        node,
        start_ms: log.now_ms(),
        end_ms: 0,
        outcome: Outcome::Ok,
        version: None,
        run_id: None,
        paused: None,
        trace_id: String::new(),
        event_id: String::new(),
    };
    let result = if !update_it {
        clients
            .jobs(node)
            .get_job(request(pb::GetJobRequest {
                id: target.into(),
                consistency: pb::ReadConsistency::Linearizable as i32,
            }))
            .await
            .map(|job| op.version = Some(job.into_inner().version))
    } else {
        op.kind = OpKind::Update;
        op.trace_id = log.next_trace_id();
        let trace_id = op.trace_id.clone();
        update(clients, node, target, hook, rng.gen(), &trace_id, &mut op).await
    };
    op.outcome = match result {
        Ok(()) => Outcome::Ok,
        Err(status) => classify(&status),
    };
    op.end_ms = log.now_ms();
    let updated = op.kind == OpKind::Update && op.outcome == Outcome::Ok;
    log.record(op);
    updated
}

/// Publishes an event on [`EVENT_TOPIC`]'s branch with a key of its own;
/// an answer without certainty (a leader change) is retried once with the
/// same key, which must not create a second run.
async fn publish(
    clients: &Clients,
    node: u64,
    nonce: u64,
    trace_id: &str,
    op: &mut Op,
) -> Result<(), tonic::Status> {
    let request = pb::PublishEventRequest {
        topic: "chaos.order".into(),
        attributes: [("source".to_string(), "chaos".to_string())]
            .into_iter()
            .collect(),
        payload: format!("{{\"nonce\":{nonce}}}").into_bytes(),
        idempotency_key: format!("chaos-pub-{nonce:016x}"),
    };
    // One attempt: a retry under the same trace id would be a second call
    // (answered `duplicate` by the idempotency key, but audited as a call
    // of its own), which `audit_complete` cannot tell from a write applied
    // twice. An unknown outcome stays unknown.
    let reply = clients
        .events(node)
        .publish_event(traced(request, trace_id))
        .await?;
    op.event_id = reply.into_inner().event_id;
    Ok(())
}

/// Read-modify-write of the job's payload at the version just read; the
/// write carries `trace_id` (the read is not audited).
async fn update(
    clients: &Clients,
    node: u64,
    id: &str,
    hook: &str,
    generation: u64,
    trace_id: &str,
    op: &mut Op,
) -> Result<(), tonic::Status> {
    let current = clients
        .jobs(node)
        .get_job(request(pb::GetJobRequest {
            id: id.into(),
            ..Default::default()
        }))
        .await?
        .into_inner();
    let changed = pb::ScheduledJob {
        id: id.into(),
        version: current.version,
        payload: webhook_payload(hook, generation),
        ..Default::default()
    };
    let reply = clients
        .jobs(node)
        .update_job(traced(
            pb::UpdateJobRequest {
                job: Some(changed),
                update_mask: Some(pbjson_types::FieldMask {
                    paths: vec!["payload".into()],
                }),
            },
            trace_id,
        ))
        .await?;
    op.version = Some(reply.into_inner().version);
    Ok(())
}
