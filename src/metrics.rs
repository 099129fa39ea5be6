//! Prometheus metrics of a node, served at `/metrics` in the text format.
//!
//! Raft gauges (term, leader, commit and applied index, ...) are refreshed from
//! openraft's metrics at scrape time, so they are never stale and cost nothing
//! between scrapes. API metrics are recorded by the gRPC services per call:
//! requests by method and status code, and a latency histogram by method.
//! Sink gauges come from the applied state at scrape time (every node
//! reports the same positions: what the last `AckSink` recorded); failed
//! deliveries are counted by the node that delivers (the leader).
//!
//! What else is reported, and where it comes from:
//!
//! - per job and per job type ([`jobs`]): runs by outcome, missed and
//!   skipped fires and the last success from the replicated state at
//!   scrape time, under a cardinality guard (`--metrics-job-limit`); the
//!   fire lateness of each job's first attempts as this node starts them;
//!   attempt durations by type as this node's attempts finish; the queue
//!   depth by type and the age of the oldest waiting run;
//! - Raft: what the Raft layer measures as it goes ([`RaftStats`]: proposal
//!   to commit, log fsyncs, snapshots, leader changes), and at scrape time
//!   the apply lag and, on the leader, each peer's replication lag;
//! - the node: `kairos_ready` (as `/readyz`), the leader timer's fires, and
//!   the audit chain (length, head, and whether it verifies, checked
//!   incrementally by [`audit_check`]);
//! - the process: the standard `process_*` families ([`process`]).
//!
//! Every family is listed in the README's "Observability" section.
//!
//! The body is the Prometheus text format (0.0.4), in which a counter's
//! family is named as its samples (`x_total`); prometheus-client writes the
//! OpenMetrics naming (`# TYPE x counter` above `x_total` samples), so
//! [`text_format_counters`] renames the `HELP` and `TYPE` lines of counters.

pub mod audit_check;
pub mod jobs;
pub mod process;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::metrics::audit_check::AuditCheck;
use crate::metrics::jobs::{JobMetrics, JobTypeLabels, DEFAULT_JOB_LIMIT};
use crate::metrics::process::ProcessCollector;
use crate::node::Node;
use crate::raft::state_machine::StateHandle;
use crate::raft::stats::RaftStats;

/// Labels of an API request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// gRPC method, e.g. `CreateJob`.
    pub method: String,
    /// gRPC status code name, e.g. `Ok`, `InvalidArgument`.
    pub code: String,
}

/// Labels of the API latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// gRPC method.
    pub method: String,
}

/// Labels of the attempt outcome counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Job type (handler name).
    pub job_type: String,
    /// `succeeded`, or the failure kind (e.g. `http_503`, `timeout`, `panic`).
    pub outcome: String,
}

/// Labels of the sink metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    /// The sink's name.
    pub sink: String,
}

/// Labels of the replication lag.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The peer's node id.
    pub peer: String,
}

/// All metrics of a node.
#[derive(Debug)]
pub struct Metrics {
    fire_lateness: Histogram,
    attempts: Family<OutcomeLabels, Counter>,
    busy_workers: Gauge,
    runs_pending: Gauge,
    fires_missed: Gauge,
    fires_skipped: Gauge,
    registry: Registry,
    api_requests: Family<RequestLabels, Counter>,
    api_latency: Family<MethodLabels, Histogram>,
    raft_term: Gauge,
    raft_leader_id: Gauge,
    raft_is_leader: Gauge,
    raft_commit_index: Gauge,
    raft_applied_index: Gauge,
    raft_last_log_index: Gauge,
    raft_snapshot_index: Gauge,
    jobs_stored: Gauge,
    sink_lag: Family<SinkLabels, Gauge>,
    sink_delivered: Family<SinkLabels, Gauge>,
    sink_failures: Family<SinkLabels, Counter>,
    /// Held while the sink families are rebuilt, so concurrent scrapes do
    /// not interleave.
    sink_refresh: Mutex<()>,
    /// Per-job and per-type families, and the queue's oldest run.
    jobs: JobMetrics,
    attempt_duration: Family<JobTypeLabels, Histogram>,
    fires: Counter,
    raft: RaftStats,
    raft_apply_lag: Gauge,
    raft_replication_lag: Family<PeerLabels, Gauge>,
    ready: Gauge,
    audit_chain_length: Gauge,
    audit_head_sequence: Gauge,
    audit_chain_verified: Gauge,
    audit_check: AuditCheck,
    /// The `process_*` families, which carry no `kairos_` prefix.
    process_registry: Registry,
    /// Held for a whole scrape: the families rebuilt from the state are
    /// cleared and refilled, and a concurrent scrape must not see them half-built.
    scraping: Mutex<()>,
}

impl Metrics {
    /// Creates and registers every metric, with the default
    /// `--metrics-job-limit` ([`DEFAULT_JOB_LIMIT`]).
    pub fn new() -> Arc<Metrics> {
        Metrics::with_job_limit(DEFAULT_JOB_LIMIT)
    }

    /// Creates and registers every metric; at most `job_limit` jobs get a
    /// `job` label of their own (see [`jobs`]).
    pub fn with_job_limit(job_limit: usize) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("kairos");
        let api_requests = Family::<RequestLabels, Counter>::default();
        let api_latency = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let m = Metrics {
            api_requests,
            api_latency,
            raft_term: Gauge::default(),
            raft_leader_id: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_last_log_index: Gauge::default(),
            raft_snapshot_index: Gauge::default(),
            jobs_stored: Gauge::default(),
            fire_lateness: Histogram::new(exponential_buckets(0.0005, 2.0, 20)),
            attempts: Family::default(),
            busy_workers: Gauge::default(),
            runs_pending: Gauge::default(),
            fires_missed: Gauge::default(),
            fires_skipped: Gauge::default(),
            sink_lag: Family::default(),
            sink_delivered: Family::default(),
            sink_failures: Family::default(),
            sink_refresh: Mutex::new(()),
            registry: Registry::default(),
            jobs: JobMetrics::new(job_limit),
            // 1 ms .. 35 min
            attempt_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 22))
            }),
            fires: Counter::default(),
            raft: RaftStats::default(),
            raft_apply_lag: Gauge::default(),
            raft_replication_lag: Family::default(),
            ready: Gauge::default(),
            audit_chain_length: Gauge::default(),
            audit_head_sequence: Gauge::default(),
            audit_chain_verified: Gauge::default(),
            audit_check: AuditCheck::default(),
            process_registry: Registry::default(),
            scraping: Mutex::new(()),
        };
        registry.register(
            "api_requests",
            "gRPC API requests by method and status code",
            m.api_requests.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "gRPC API latency by method",
            m.api_latency.clone(),
        );
        registry.register("raft_term", "Current Raft term", m.raft_term.clone());
        registry.register(
            "raft_leader_id",
            "Id of the leader this node knows (0 = none)",
            m.raft_leader_id.clone(),
        );
        registry.register(
            "raft_is_leader",
            "1 when this node is the leader",
            m.raft_is_leader.clone(),
        );
        registry.register(
            "raft_commit_index",
            "Committed log index",
            m.raft_commit_index.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Last applied log index",
            m.raft_applied_index.clone(),
        );
        registry.register(
            "raft_last_log_index",
            "Last log index",
            m.raft_last_log_index.clone(),
        );
        registry.register(
            "raft_snapshot_index",
            "Log index of the latest snapshot",
            m.raft_snapshot_index.clone(),
        );
        registry.register("jobs_stored", "Jobs in the applied state", m.jobs_stored.clone());
        registry.register(
            "fire_lateness_seconds",
            "Nominal fire time to handler start, for first attempts started on this node",
            m.fire_lateness.clone(),
        );
        registry.register(
            "attempts",
            "Attempts finished on this node by job type and outcome",
            m.attempts.clone(),
        );
        registry.register(
            "busy_workers",
            "Workers of this node running an attempt",
            m.busy_workers.clone(),
        );
        registry.register(
            "runs_pending",
            "Runs waiting for dispatch (the cluster's queue depth)",
            m.runs_pending.clone(),
        );
        registry.register(
            "fires_missed",
            "Fires not run under the catch-up policy, all jobs",
            m.fires_missed.clone(),
        );
        registry.register(
            "fires_skipped",
            "Fires dropped by the overlap policy, all jobs",
            m.fires_skipped.clone(),
        );
        registry.register(
            "sink_lag",
            "Lifecycle positions after a sink's recorded position (audit head minus delivered position)",
            m.sink_lag.clone(),
        );
        registry.register(
            "sink_delivered_position",
            "Lifecycle position a sink's receiver acknowledged, as last recorded",
            m.sink_delivered.clone(),
        );
        registry.register(
            "sink_delivery_failures",
            "Failed sink delivery attempts made by this node",
            m.sink_failures.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Finished spans dropped because the trace export queue was full (collector away or slow)",
            crate::telemetry::spans_dropped(),
        );
        m.jobs.register(&mut registry);
        registry.register(
            "attempt_duration_seconds",
            "Attempts finished on this node by job type: handler start to result (for external workers, assignment to result)",
            m.attempt_duration.clone(),
        );
        registry.register(
            "fires",
            "Fires the timer proposed and committed while this node led",
            m.fires.clone(),
        );
        registry.register(
            "raft_proposal_commit_seconds",
            "Entries this node proposed as leader: proposal to committed and applied",
            m.raft.proposal_commit_seconds.clone(),
        );
        registry.register(
            "raft_apply_lag",
            "Committed entries this node has not applied yet",
            m.raft_apply_lag.clone(),
        );
        registry.register(
            "raft_log_fsync_seconds",
            "Durable syncs of this node's Raft log (sled flush and fdatasync)",
            m.raft.log_fsync_seconds.clone(),
        );
        registry.register(
            "raft_snapshot_duration_seconds",
            "Snapshots this node built: encoding and storing the state",
            m.raft.snapshot_duration_seconds.clone(),
        );
        registry.register(
            "raft_snapshot_size_bytes",
            "Size of the last snapshot this node built",
            m.raft.snapshot_size_bytes.clone(),
        );
        registry.register(
            "raft_leader_changes",
            "Leaders this node came to know (a new term with a leader), the first after start included",
            m.raft.leader_changes.clone(),
        );
        registry.register(
            "raft_timeout_now_received",
            "Leadership handovers this node took part in: TimeoutNow requests accepted from a stopping leader",
            m.raft.timeout_now_received.clone(),
        );
        registry.register(
            "raft_pre_votes_won",
            "Pre-votes this node won, each followed by an election it stood in",
            m.raft.pre_votes_won.clone(),
        );
        registry.register(
            "raft_pre_votes_lost",
            "Pre-votes this node lost: elections it did not start because a majority still heard from a leader or did not answer",
            m.raft.pre_votes_lost.clone(),
        );
        registry.register(
            "raft_replication_lag",
            "On the leader: entries of its log each peer has not acknowledged",
            m.raft_replication_lag.clone(),
        );
        registry.register(
            "ready",
            "1 when /readyz answers 200 (a known leader, the startup log applied), else 0",
            m.ready.clone(),
        );
        registry.register(
            "audit_chain_length",
            "Audit entries this node keeps",
            m.audit_chain_length.clone(),
        );
        registry.register(
            "audit_head_sequence",
            "Sequence number of the newest audit entry",
            m.audit_head_sequence.clone(),
        );
        registry.register(
            "audit_chain_verified",
            "1 when the kept audit chain verifies from its anchor up to its head, else 0",
            m.audit_chain_verified.clone(),
        );
        let mut process_registry = Registry::default();
        process_registry.register_collector(Box::new(ProcessCollector));
        Arc::new(Metrics {
            registry,
            process_registry,
            ..m
        })
    }

    /// What the Raft layer records into (the node hands it to storage and
    /// the proposer); the values are shared with this registry.
    pub fn raft_stats(&self) -> RaftStats {
        self.raft.clone()
    }

    /// Records one finished API call.
    pub fn observe_api(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        let code = format!("{code:?}");
        self.api_requests
            .get_or_create(&RequestLabels {
                method: method.into(),
                code,
            })
            .inc();
        self.api_latency
            .get_or_create(&MethodLabels {
                method: method.into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records that a first attempt of `job_id` started `lateness` after
    /// its nominal time (`state` tells the job's label, see [`jobs`]).
    pub fn observe_fire_lateness(&self, state: &StateHandle, job_id: &str, lateness: Duration) {
        let seconds = lateness.as_secs_f64();
        self.fire_lateness.observe(seconds);
        self.jobs.observe_fire_lateness(state, job_id, seconds);
    }

    /// Records how long an attempt of `job_type` took.
    pub fn observe_attempt_duration(&self, job_type: &str, elapsed: Duration) {
        self.attempt_duration
            .get_or_create(&JobTypeLabels {
                job_type: job_type.into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts `fires` the timer proposed and committed as leader.
    pub fn count_fires(&self, fires: usize) {
        self.fires.inc_by(fires as u64);
    }

    /// Records a finished attempt.
    pub fn observe_attempt(&self, job_type: &str, outcome: &str) {
        self.attempts
            .get_or_create(&OutcomeLabels {
                job_type: job_type.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Sets the number of busy workers.
    pub fn set_busy_workers(&self, busy: usize) {
        self.busy_workers.set(busy as i64);
    }

    /// Refreshes the node gauges and renders everything in the Prometheus text format.
    pub fn render(&self, node: &Node) -> String {
        let _scraping = self.scraping.lock().unwrap_or_else(|p| p.into_inner());
        let report = node.report();
        let as_gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.raft_term.set(as_gauge(report.term));
        self.raft_leader_id.set(as_gauge(report.leader.unwrap_or(0)));
        self.raft_is_leader.set(i64::from(report.leader == Some(node.id)));
        self.raft_commit_index.set(as_gauge(report.commit_index));
        self.raft_applied_index.set(as_gauge(report.applied_index));
        self.raft_last_log_index.set(as_gauge(report.last_log_index));
        self.raft_snapshot_index.set(as_gauge(report.snapshot_index));
        self.raft_apply_lag
            .set(as_gauge(report.commit_index.saturating_sub(report.applied_index)));
        self.refresh_replication_lag(node);
        self.ready.set(i64::from(node.readiness().is_ok()));
        let audit = {
            let state = node.state.read();
            self.jobs.refresh(&state, chrono::Utc::now().timestamp_millis());
            self.jobs_stored.set(as_gauge(state.job_count() as u64));
            let pending = state.pending_count();
            self.runs_pending.set(as_gauge(pending as u64));
            let (missed, skipped) = state
                .counters_iter()
                .fold((0u64, 0u64), |(m, s), (_, c)| (m + c.missed, s + c.skipped));
            self.fires_missed.set(as_gauge(missed));
            self.fires_skipped.set(as_gauge(skipped));
            // A copy costs O(1) (the entries are shared): the chain is
            // checked below without holding the state lock.
            state.audit().clone()
        };
        self.audit_chain_length.set(as_gauge(audit.len() as u64));
        self.audit_head_sequence.set(as_gauge(audit.head().seq));
        self.audit_chain_verified
            .set(i64::from(self.audit_check.verifies(&audit)));
        let _refreshing = self.sink_refresh.lock().unwrap_or_else(|p| p.into_inner());
        {
            // Rebuilt on every scrape: a deleted sink's series go away.
            self.sink_lag.clear();
            self.sink_delivered.clear();
            self.sink_failures.clear();
            let state = node.state.read();
            let head = state.audit().head().seq;
            for sink in state.sinks() {
                let labels = SinkLabels {
                    sink: sink.name.clone(),
                };
                self.sink_lag
                    .get_or_create(&labels)
                    .set(as_gauge(head.saturating_sub(sink.delivered)));
                self.sink_delivered
                    .get_or_create(&labels)
                    .set(as_gauge(sink.delivered));
                self.sink_failures
                    .get_or_create(&labels)
                    .inc_by(node.sink_status.failures(&sink.name));
            }
        }
        let mut out = String::new();
        self.encode(&mut out);
        text_format_counters(&out)
    }

    /// Both registries in OpenMetrics text, ended by `# EOF`.
    fn encode(&self, out: &mut String) {
        encode_registry(out, &self.registry).expect("writing to a String cannot fail");
        encode_registry(out, &self.process_registry).expect("writing to a String cannot fail");
        encode_eof(out).expect("writing to a String cannot fail");
    }

    /// Sets each peer's replication lag while this node leads; clears the
    /// family otherwise.
    fn refresh_replication_lag(&self, node: &Node) {
        self.raft_replication_lag.clear();
        let metrics = node.raft.metrics();
        let m = metrics.borrow();
        if m.state != ServerState::Leader {
            return;
        }
        let last = m.last_log_index.unwrap_or(0);
        for (peer, matched) in m.replication.iter().flatten() {
            if *peer == node.id {
                continue;
            }
            let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
            self.raft_replication_lag
                .get_or_create(&PeerLabels {
                    peer: peer.to_string(),
                })
                .set(i64::try_from(lag).unwrap_or(i64::MAX));
        }
    }
}

/// `text` with the `HELP` and `TYPE` lines of every counter family `x`
/// naming it `x_total`, as its samples are named: in the Prometheus text
/// format a sample belongs to the family of its own name, so Prometheus
/// keeps the counter's type and `promtool check metrics` finds its help.
pub fn text_format_counters(text: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .filter(|name| !name.ends_with("_total"))
        .collect();
    let mut out = String::with_capacity(text.len() + 16 * counters.len());
    for line in text.split_inclusive('\n') {
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(renamed) => out.push_str(&renamed),
            None => out.push_str(line),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::node::NodeOptions;
    use crate::scheduler::job::{JobSpec, Metadata, Policies, ScheduleSpec};
    use crate::scheduler::Command;

    /// What `promtool check metrics` checks of the structure: every sample
    /// belongs to a family announced before it by one `# HELP` and one
    /// `# TYPE` line (a histogram's `_bucket`, `_sum` and `_count` samples
    /// to the histogram), no family is announced twice, counters are
    /// named `_total`. The problems found, one per line.
    fn exposition_problems(text: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let (mut helps, mut types) = (BTreeSet::new(), BTreeMap::new());
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                if !helps.insert(name.to_string()) {
                    problems.push(format!("HELP of {name} twice"));
                }
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
                if types.insert(name.to_string(), kind.to_string()).is_some() {
                    problems.push(format!("TYPE of {name} twice"));
                }
                if kind == "counter" && !name.ends_with("_total") {
                    problems.push(format!("counter {name} is not named _total"));
                }
                if !helps.contains(name) {
                    problems.push(format!("TYPE of {name} without a HELP before it"));
                }
            } else if line.starts_with('#') || line.is_empty() {
                continue;
            } else {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|suffix| name.strip_suffix(suffix))
                    .find(|base| types.get(*base).is_some_and(|t| t == "histogram"))
                    .unwrap_or(name);
                if !types.contains_key(family) {
                    problems.push(format!("sample {name} has no TYPE before it: {line}"));
                }
            }
        }
        problems
    }

    /// A `noop` job firing every hour.
    fn create(id: &str) -> Command {
        let spec = JobSpec {
            job_type: "noop".into(),
            owner_service: String::new(),
            schedule: ScheduleSpec::Every {
                interval_ms: 3_600_000,
                phase_ms: 0,
            },
            payload: vec![],
            metadata: Metadata::default(),
            policies: Policies::default().shared(),
            paused: false,
        };
        Command::CreateJob {
            id: id.into(),
            spec,
            request_id: None,
        }
    }

    /// A scrape of a running (single-node) cluster with jobs, a snapshot
    /// and a sample of every recorded metric: valid Prometheus text with
    /// every family of the README.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scrape_of_a_running_node_is_valid_prometheus_text_with_every_family() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::with_job_limit(1);
        let options = NodeOptions {
            id: 1,
            data_dir: dir.path().to_path_buf(),
            advertise_addr: "127.0.0.1:9".into(),
            client_addr: "127.0.0.1:19".into(),
            http_addr: "127.0.0.1:29".into(),
            cluster_id: "test".into(),
            initial_cluster: BTreeMap::from([(1, "127.0.0.1:9".to_string())]),
            tuning: crate::raft::RaftTuning::default(),
            cluster_addr: "127.0.0.1:11".into(),
            dial_map: Arc::default(),
            audit_retain: crate::scheduler::audit::DEFAULT_RETAIN,
            auth_disabled: false,
            peer_security: Arc::new(crate::transport::PeerSecurity::ClusterSecret(
                crate::transport::ClusterSecret::new("sixteen-bytes-ok".into(), "test").unwrap(),
            )),
            metrics: metrics.clone(),
            #[cfg(feature = "chaos-break")]
            chaos_break: None,
        };
        let node = Node::start(&options, CancellationToken::new()).await.unwrap();
        let within = Some(Duration::from_secs(20));
        node.raft
            .wait(within)
            .current_leader(1, "the single node leads")
            .await
            .unwrap();
        for id in ["first", "second"] {
            node.write("test", create(id)).await.unwrap();
        }
        // A run of the first job that succeeds, as the dispatcher and a worker would make it.
        let run = |response| match response {
            Ok(crate::scheduler::Response::Run(run)) => run,
            other => panic!("{other:?}"),
        };
        let trigger = Command::TriggerJob { id: "first".into() };
        let run_id = run(node.write("test", trigger).await).id;
        let start = Command::StartAttempt {
            run_id,
            node: 1,
            attempt: 1,
        };
        let token = run(node.write("test", start).await).token;
        let finish = Command::FinishAttempt {
            run_id,
            token,
            outcome: crate::scheduler::run::AttemptOutcome::Succeeded,
            output_tail: String::new(),
        };
        node.write("test", finish).await.unwrap();
        node.raft.trigger().snapshot().await.unwrap();
        node.raft
            .wait(within)
            .metrics(|m| m.snapshot.is_some(), "a snapshot is built")
            .await
            .unwrap();
        metrics.observe_api("CreateJob", tonic::Code::Ok, Duration::from_millis(3));
        metrics.observe_attempt("noop", "succeeded");
        metrics.observe_attempt_duration("noop", Duration::from_millis(12));
        metrics.observe_fire_lateness(&node.state, "first", Duration::from_millis(2));
        metrics.observe_fire_lateness(&node.state, "second", Duration::from_millis(2));
        metrics.count_fires(2);
        let text = metrics.render(&node);
        node.shutdown().await;

        let problems = exposition_problems(&text);
        assert!(problems.is_empty(), "{}\nin:\n{text}", problems.join("\n"));
        for (family, kind) in [
            ("kairos_job_runs_total", "counter"),
            ("kairos_job_fires_missed_total", "counter"),
            ("kairos_job_fires_skipped_total", "counter"),
            ("kairos_job_last_success_timestamp_seconds", "gauge"),
            ("kairos_job_fire_lateness_seconds", "histogram"),
            ("kairos_attempt_duration_seconds", "histogram"),
            ("kairos_queue_depth", "gauge"),
            ("kairos_fires_total", "counter"),
            ("kairos_raft_proposal_commit_seconds", "histogram"),
            ("kairos_raft_apply_lag", "gauge"),
            ("kairos_raft_log_fsync_seconds", "histogram"),
            ("kairos_raft_snapshot_duration_seconds", "histogram"),
            ("kairos_raft_snapshot_size_bytes", "gauge"),
            ("kairos_raft_leader_changes_total", "counter"),
            ("kairos_raft_timeout_now_received_total", "counter"),
            ("kairos_raft_pre_votes_won_total", "counter"),
            ("kairos_raft_pre_votes_lost_total", "counter"),
            ("kairos_ready", "gauge"),
            ("kairos_oldest_pending_run_age_seconds", "gauge"),
            ("kairos_audit_chain_length", "gauge"),
            ("kairos_audit_head_sequence", "gauge"),
            ("kairos_audit_chain_verified", "gauge"),
            ("process_cpu_seconds_total", "counter"),
            ("process_resident_memory_bytes", "gauge"),
            ("process_virtual_memory_bytes", "gauge"),
            ("process_open_fds", "gauge"),
            ("process_max_fds", "gauge"),
            ("process_start_time_seconds", "gauge"),
            ("process_threads", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} {kind}\n")),
                "{family}:\n{text}"
            );
        }
        let value = |sample: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
        };
        assert_eq!(value("kairos_ready"), 1.0);
        assert_eq!(value("kairos_raft_leader_changes_total"), 1.0);
        assert_eq!(value("kairos_audit_chain_verified"), 1.0);
        assert_eq!(value("kairos_fires_total"), 2.0);
        assert!(value("kairos_raft_snapshot_size_bytes") > 0.0);
        assert_eq!(value("kairos_raft_snapshot_duration_seconds_count"), 1.0);
        assert!(value("kairos_raft_log_fsync_seconds_count") >= 1.0);
        assert!(
            value("kairos_raft_proposal_commit_seconds_count") >= 2.0,
            "the creates"
        );
        assert!(
            value("kairos_audit_chain_length") >= 2.0,
            "the creates are audited"
        );
        assert!(value("process_resident_memory_bytes") > 0.0);
        // One job named (the older), the other one under _other.
        assert_eq!(
            value("kairos_job_runs_total{job=\"first\",outcome=\"succeeded\"}"),
            1.0
        );
        let finished = value("kairos_job_last_success_timestamp_seconds{job=\"first\"}");
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        assert!(finished <= now && finished > now - 60.0, "{finished} vs {now}");
        assert!(
            !text.contains("kairos_raft_replication_lag"),
            "a leader without peers has no replication lag"
        );
        assert_eq!(
            value("kairos_job_runs_total{job=\"_other\",outcome=\"failed\"}"),
            0.0
        );
        assert_eq!(
            value("kairos_job_fire_lateness_seconds_count{job=\"first\"}"),
            1.0
        );
        assert_eq!(
            value("kairos_job_fire_lateness_seconds_count{job=\"_other\"}"),
            1.0
        );
        assert!(!text.contains("job=\"second\""), "{text}");
        assert_eq!(value("kairos_queue_depth{job_type=\"noop\"}"), 0.0);
        assert!(text.ends_with("# EOF\n"), "one EOF, at the end");
        assert_eq!(text.matches("# EOF").count(), 1);
    }

    #[test]
    fn counter_families_are_named_as_their_samples() {
        let text = "# HELP kairos_api_requests gRPC API requests.\n\
                    # TYPE kairos_api_requests counter\n\
                    kairos_api_requests_total{method=\"CreateJob\",code=\"Ok\"} 3\n\
                    # HELP kairos_sink_lag Positions behind.\n\
                    # TYPE kairos_sink_lag gauge\n\
                    kairos_sink_lag{sink=\"a\"} 0\n\
                    # EOF\n";
        assert_eq!(
            text_format_counters(text),
            "# HELP kairos_api_requests_total gRPC API requests.\n\
             # TYPE kairos_api_requests_total counter\n\
             kairos_api_requests_total{method=\"CreateJob\",code=\"Ok\"} 3\n\
             # HELP kairos_sink_lag Positions behind.\n\
             # TYPE kairos_sink_lag gauge\n\
             kairos_sink_lag{sink=\"a\"} 0\n\
             # EOF\n"
        );
    }

    #[test]
    fn the_rendered_metrics_name_every_sample_in_a_help_and_type_line() {
        let metrics = Metrics::new();
        metrics.observe_api("CreateSink", tonic::Code::Ok, Duration::from_millis(3));
        metrics.observe_attempt("noop", "succeeded");
        metrics
            .sink_failures
            .get_or_create(&SinkLabels { sink: "a".into() })
            .inc();
        let mut text = String::new();
        metrics.encode(&mut text);
        let text = text_format_counters(&text);
        for family in [
            "kairos_api_requests_total",
            "kairos_attempts_total",
            "kairos_sink_delivery_failures_total",
        ] {
            assert!(text.contains(&format!("# HELP {family} ")), "{family}:\n{text}");
            assert!(
                text.contains(&format!("# TYPE {family} counter\n")),
                "{family}:\n{text}"
            );
        }
        assert!(
            text.contains("kairos_sink_delivery_failures_total{sink=\"a\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("_total_total"), "{text}");
    }
}
