//! After the faults: heal everything, stop the fires, let every run finish,
//! and read the final state the checkers judge.
//!
//! Settling pauses every job (recorded as operations like any other), waits
//! until no run is pending, queued or running, and then until every node has
//! applied the same log index twice in a row, at which point each node's
//! state digest is read. Every wait is bounded; what did not settle in time
//! is itself reported by the checkers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::future::join_all;
use kairos::proto as pb;

use crate::client::{classify, request, traced, Clients};
use crate::history::{Op, OpKind, Outcome, RoleSample};
use crate::runtime::Runtime;
use crate::workload::OpLog;

/// Longest wait for the open runs to finish: 90 s, plus the most a clock
/// fault sets a leader's clock ahead (the runs it fired ahead of the real
/// time begin when the workers' clocks reach their nominal times).
const RUNS_TIMEOUT: Duration = Duration::from_secs(90 + crate::faults::MAX_CLOCK_OFFSET_MS as u64 / 1000);
/// Longest wait for the replicas to converge.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the cluster holds after settling.
#[derive(Debug, Default)]
pub struct FinalState {
    /// Every job, as the leader lists it.
    pub jobs: BTreeMap<String, pb::ScheduledJob>,
    /// Every run of every job still stored.
    pub runs: Vec<pb::Run>,
    /// Counters of every job.
    pub counters: BTreeMap<String, pb::JobCounters>,
    /// When the steady jobs were paused (Unix ms): the end of their fire window.
    pub paused_at_unix_ms: BTreeMap<String, i64>,
    /// Each node's (applied index, state digest) when they converged, or the
    /// last answer seen if they did not.
    pub digests: BTreeMap<u64, (u64, String)>,
    /// Whether every run finished within the settle timeout.
    pub runs_settled: bool,
    /// Whether the replicas converged within the timeout.
    pub converged: bool,
    /// Things worth knowing that are not violations.
    pub notes: Vec<String>,
    /// Entries the log grew by while the harness waited for the replicas to
    /// converge, with nothing left to do.
    pub idle_log_growth: u64,
    /// The audit log and each replica's view of it, read last.
    pub audit: AuditEvidence,
}

/// The audit log as the harness read it after settling.
#[derive(Debug, Default)]
pub struct AuditEvidence {
    /// Who the harness's calls were made as (the root token's name).
    pub principal: String,
    /// Every entry kept, oldest first, as node `read_from` lists it.
    pub entries: Vec<pb::AuditEntry>,
    /// The node the entries were read from (0: none could be read).
    pub read_from: u64,
    /// Why the entries could not be read, if they could not.
    pub read_error: Option<String>,
    /// The oldest sequence number kept (1 unless retention dropped entries).
    pub first_seq: u64,
    /// Each replica's `VerifyAudit` answer, or why it gave none.
    pub verify: BTreeMap<u64, Result<pb::VerifyAuditResponse, String>>,
    /// Each replica's `(seq, hash)` of its entry at the lowest head every
    /// replica reached, or why it could not be read.
    pub common: BTreeMap<u64, Result<(u64, String), String>>,
}

/// Heals, restarts and unfreezes every node, then waits for a leader.
pub async fn heal_all(runtime: &mut Runtime, clients: &Clients) -> anyhow::Result<u64> {
    runtime.heal().await?;
    for id in runtime.ids() {
        // Only a paused node needs this; the others refuse it (docker) or ignore it (SIGCONT).
        let _ = runtime.resume(id).await;
        if !runtime.is_running(id) {
            runtime.start(id).await?;
        }
    }
    clients
        .wait_leader(Duration::from_secs(60))
        .await
        .ok_or_else(|| anyhow::anyhow!("no leader 60 s after healing everything"))
}

/// Pauses `id` through the leader, retrying (bounded) until acknowledged;
/// every attempt is recorded.
async fn pause_job(clients: &Clients, id: &str, log: &OpLog) -> Option<i64> {
    for attempt in 0..20 {
        let node = clients.leader_or_next(attempt).await;
        let start_ms = log.now_ms();
        let trace_id = log.next_trace_id();
        let reply = clients
            .jobs(node)
            .pause_job(traced(pb::PauseJobRequest { id: id.into() }, &trace_id))
            .await;
        let (outcome, version) = match &reply {
            Ok(job) => (Outcome::Ok, Some(job.get_ref().version)),
            Err(status) => (classify(status), None),
        };
        log.record(Op {
            seq: 0,
            kind: OpKind::Pause,
            job_id: id.into(),
            node,
            start_ms,
            end_ms: log.now_ms(),
            outcome: outcome.clone(),
            version,
            run_id: None,
            paused: Some(true),
            trace_id,
            event_id: String::new(),
        });
        match outcome {
            Outcome::Ok => return Some(chrono::Utc::now().timestamp_millis()),
            Outcome::Failed(m) if m.starts_with("NotFound") => return None,
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
    None
}

/// Lists every job (all pages) through `node`.
async fn list_jobs(clients: &Clients, node: u64) -> Result<Vec<pb::ScheduledJob>, tonic::Status> {
    let mut jobs = Vec::new();
    let mut token = String::new();
    loop {
        let page = clients
            .jobs(node)
            .list_jobs(request(pb::ListJobsRequest {
                page_size: 1000,
                page_token: token,
                ..Default::default()
            }))
            .await?
            .into_inner();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return Ok(jobs);
        }
        token = page.next_page_token;
    }
}

/// Lists every run of `job` through `node`.
async fn list_runs(clients: &Clients, node: u64, job: &str) -> Result<Vec<pb::Run>, tonic::Status> {
    let mut runs = Vec::new();
    let mut token = String::new();
    loop {
        let page = clients
            .runs(node)
            .list_runs(request(pb::ListRunsRequest {
                job_id: job.into(),
                page_size: 1000,
                page_token: token,
                ..Default::default()
            }))
            .await?
            .into_inner();
        runs.extend(page.runs);
        if page.next_page_token.is_empty() {
            return Ok(runs);
        }
        token = page.next_page_token;
    }
}

fn is_open(run: &pb::Run) -> bool {
    [
        pb::RunStatus::Pending,
        pb::RunStatus::Queued,
        pb::RunStatus::Running,
    ]
    .iter()
    .any(|s| *s as i32 == run.status)
}

/// Reads jobs, runs and counters through the leader (retrying on errors;
/// while there is none, through each node in turn: the reads are
/// linearizable wherever they are served).
async fn read_state(clients: &Clients) -> anyhow::Result<FinalState> {
    let mut last_error = None;
    for attempt in 0..20 {
        let node = clients.leader_or_next(attempt).await;
        match read_state_once(clients, node).await {
            Ok(state) => return Ok(state),
            Err(e) => last_error = Some(format!("node {node}: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(anyhow::anyhow!(
        "could not read the final state in 20 attempts; the last, {}",
        last_error.unwrap_or_default()
    ))
}

async fn read_state_once(clients: &Clients, node: u64) -> Result<FinalState, tonic::Status> {
    let mut state = FinalState::default();
    for job in list_jobs(clients, node).await? {
        let id = job.id.clone();
        state.runs.extend(list_runs(clients, node, &id).await?);
        let description = clients
            .runs(node)
            .describe_job(request(pb::DescribeJobRequest {
                id: id.clone(),
                consistency: 0,
            }))
            .await?
            .into_inner();
        state
            .counters
            .insert(id.clone(), description.counters.unwrap_or_default());
        state.jobs.insert(id, job);
    }
    Ok(state)
}

/// Settles the cluster and reads the final state.
pub async fn settle(runtime: &mut Runtime, clients: &Clients, log: &OpLog) -> anyhow::Result<FinalState> {
    heal_all(runtime, clients).await?;
    // Stop every fire: pause every job there is.
    let mut paused_at = BTreeMap::new();
    let leader = clients.wait_leader(Duration::from_secs(30)).await.unwrap_or(1);
    let ids: Vec<String> = match list_jobs(clients, leader).await {
        Ok(jobs) => jobs.into_iter().map(|j| j.id).collect(),
        Err(_) => read_state(clients).await?.jobs.into_keys().collect(),
    };
    for id in ids {
        if let Some(at) = pause_job(clients, &id, log).await {
            paused_at.insert(id, at);
        }
    }
    // Let every run finish.
    let deadline = Instant::now() + RUNS_TIMEOUT;
    let mut state = read_state(clients).await?;
    while state.runs.iter().any(is_open) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        state = read_state(clients).await?;
    }
    state.runs_settled = !state.runs.iter().any(is_open);
    state.notes.push(format!(
        "settle: {} jobs paused; open runs finished {:.1} s later",
        paused_at.len(),
        RUNS_TIMEOUT
            .saturating_sub(deadline.saturating_duration_since(Instant::now()))
            .as_secs_f64()
    ));
    state.paused_at_unix_ms = paused_at;
    // Let the replicas converge, then compare digests. With every job paused
    // and no run open nothing should be written any more; how far the log
    // still grew while waiting is kept for the checker.
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let mut previous: BTreeMap<u64, (u64, String)> = BTreeMap::new();
    let mut first_index: Option<u64> = None;
    while Instant::now() < deadline {
        let answers = join_all(clients.ids().into_iter().map(|id| async move {
            let status = clients.local_status(id, true, Duration::from_secs(5)).await;
            (id, status.map(|s| (s.applied_index, s.state_digest)))
        }))
        .await;
        let current: BTreeMap<u64, (u64, String)> = answers
            .into_iter()
            .filter_map(|(id, s)| s.map(|s| (id, s)))
            .collect();
        let indexes: Vec<u64> = current.values().map(|(index, _)| *index).collect();
        let highest = indexes.iter().copied().max().unwrap_or(0);
        first_index.get_or_insert(highest);
        state.idle_log_growth = highest - first_index.unwrap_or(highest).min(highest);
        let same_index = current.len() == clients.ids().len() && indexes.windows(2).all(|w| w[0] == w[1]);
        if same_index && current == previous {
            state.converged = true;
            state
                .notes
                .push(format!("replicas converged at applied index {}", indexes[0]));
            state.digests = current;
            state.audit = read_audit(clients).await;
            state.notes.push(state.audit.summary());
            return Ok(state);
        }
        previous = current;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    state.digests = previous;
    state.audit = read_audit(clients).await;
    state.notes.push(state.audit.summary());
    Ok(state)
}

impl AuditEvidence {
    /// One line for the report's notes.
    pub fn summary(&self) -> String {
        let verified = self
            .verify
            .values()
            .filter(|v| v.as_ref().is_ok_and(|v| v.ok))
            .count();
        let common = self
            .common
            .values()
            .find_map(|c| c.as_ref().ok())
            .map_or(0, |(seq, _)| *seq);
        match &self.read_error {
            Some(error) => format!("audit: not read ({error})"),
            None => format!(
                "audit: {} entries listed by node {} ({} call, {} execution); chain verified on {verified} of {} nodes; compared at seq {common}",
                self.entries.len(),
                self.read_from,
                self.entries.iter().filter(|e| e.kind == "call").count(),
                self.entries.iter().filter(|e| e.kind == "execution").count(),
                self.verify.len(),
            ),
        }
    }
}

/// How long one audit read may take.
const AUDIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Verifies every replica's audit chain, reads each one's entry at the
/// lowest head they all reached, and lists the whole log from the leader.
async fn read_audit(clients: &Clients) -> AuditEvidence {
    let mut evidence = AuditEvidence {
        principal: clients.principal().to_string(),
        ..AuditEvidence::default()
    };
    for id in clients.ids() {
        let mut request = tonic::Request::new(pb::VerifyAuditRequest {});
        request.set_timeout(AUDIT_TIMEOUT);
        let answer = clients.audit(id).verify_audit(request).await;
        evidence.verify.insert(
            id,
            answer.map(tonic::Response::into_inner).map_err(|s| s.to_string()),
        );
    }
    let lowest = evidence
        .verify
        .values()
        .filter_map(|v| v.as_ref().ok().map(|v| v.head_seq))
        .min()
        .unwrap_or(0);
    if lowest > 0 {
        for id in clients.ids() {
            let mut request = tonic::Request::new(pb::ListAuditRequest {
                after_seq: lowest - 1,
                limit: 1,
                stale: true,
                ..Default::default()
            });
            request.set_timeout(AUDIT_TIMEOUT);
            let at = match clients.audit(id).list_audit(request).await {
                Ok(page) => match page.into_inner().entries.into_iter().next() {
                    Some(entry) if entry.seq == lowest => Ok((entry.seq, entry.hash)),
                    Some(entry) => Err(format!("asked for entry {lowest}, got {}", entry.seq)),
                    None => Err(format!("entry {lowest} is not kept")),
                },
                Err(status) => Err(status.to_string()),
            };
            evidence.common.insert(id, at);
        }
    }
    let mut last_error = String::from("no node to read from");
    for attempt in 0..5 {
        let node = clients.leader_or_next(attempt).await;
        match list_audit(clients, node).await {
            Ok((entries, first_seq)) => {
                evidence.entries = entries;
                evidence.first_seq = first_seq;
                evidence.read_from = node;
                evidence.read_error = None;
                return evidence;
            }
            Err(status) => last_error = format!("node {node}: {status}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    evidence.read_error = Some(last_error);
    evidence
}

/// Every audit entry `node` keeps (all pages), and the oldest kept seq.
async fn list_audit(clients: &Clients, node: u64) -> Result<(Vec<pb::AuditEntry>, u64), tonic::Status> {
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let mut request = tonic::Request::new(pb::ListAuditRequest {
            after_seq: after,
            limit: 1000,
            ..Default::default()
        });
        request.set_timeout(AUDIT_TIMEOUT);
        let page = clients.audit(node).list_audit(request).await?.into_inner();
        entries.extend(page.entries);
        if page.scanned_to_seq >= page.head_seq || page.scanned_to_seq <= after {
            return Ok((entries, page.first_seq));
        }
        after = page.scanned_to_seq;
    }
}

/// Samples every node's role every `every` until `stop`.
pub async fn sample_roles(
    clients: Clients,
    started: Instant,
    every: Duration,
    samples: std::sync::Arc<std::sync::Mutex<Vec<RoleSample>>>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let round = join_all(clients.ids().into_iter().map(|id| {
            let clients = clients.clone();
            async move {
                let status = clients.local_status(id, false, Duration::from_millis(300)).await;
                RoleSample {
                    t_ms: started.elapsed().as_millis() as u64,
                    node: id,
                    role: status
                        .as_ref()
                        .map_or(crate::history::Role::Down, crate::client::role),
                    term: status.map_or(0, |s| s.term),
                }
            }
        }))
        .await;
        samples.lock().expect("role samples").extend(round);
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
    }
}
