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
    use super::*;

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
