//! Per-job and per-type metrics, and the guard on their cardinality.
//!
//! A series per job is what lets a dashboard show one job's failures and an
//! alert name the job that stopped succeeding, but a cluster may hold
//! 100,000 jobs and Prometheus should not get 100,000 series from each
//! family. So at most `--metrics-job-limit` jobs (default
//! [`DEFAULT_JOB_LIMIT`]) get a `job` label of their own, and every other
//! job is counted under `job="_other"` ([`OTHER_JOBS`]), summed.
//!
//! **Which jobs are named** ([`NamedJobs`]): the `limit` oldest jobs, by
//! creation time (the leader's clock when the create was applied) and then
//! by id. Both come from the replicated state, so every node names the same
//! jobs. The rule is stable as jobs are added: a new job is the newest, so
//! once the limit is reached it goes to `_other` and no named job loses its
//! label. Only deleting a named job lets the oldest unnamed one move up
//! (its series then start from its replicated counters, and `_other`
//! drops by as much). A job deleted and created again with the same id is
//! a new job, the newest.
//!
//! **From the replicated state, at scrape time** ([`JobMetrics::refresh`]):
//! runs by outcome (`kairos_job_runs_total`), missed and skipped fires
//! (the job's counters, which history retention never truncates), the last
//! success, and the queue depth per job type plus the age of the oldest
//! run waiting for dispatch. Rebuilt on every scrape, so a deleted job's
//! series vanish; every node reports the same figures (dashboards take
//! `max without(instance)`). The cost of a scrape is one pass over the
//! jobs (a map lookup or two each), one over the jobs with runs waiting,
//! and for each named job a look at its kept succeeded runs (at most its
//! `keep_succeeded`): never a pass over every run.
//!
//! **On this node, as it happens**: the fire lateness of each first
//! attempt this node starts ([`JobMetrics::observe_fire_lateness`]), under
//! the same rule. Deciding the label there must not cost a pass over the
//! jobs per fire, so the node keeps the named set it last computed
//! ([`JobLabeler`]): every scrape recomputes it, and an observation that
//! finds it older than a second while the number of jobs changed since, or
//! older than [`LABELS_MAX_AGE`], has it recomputed on the blocking pool
//! (and uses the old one meanwhile). A job that becomes named after a
//! deletion may therefore be observed under `_other` for that long, and a
//! job created past the limit under its own name (its series is dropped at
//! the next scrape).
//!
//! The last success (`kairos_job_last_success_timestamp_seconds`) is the
//! latest finish time of the job's kept succeeded runs (history retention
//! keeps the newest ones): nothing new is stored or replicated for it. It
//! has no `_other` series (a newest time over unrelated jobs tells
//! nothing), and no series for a job that has no kept success.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::raft::state_machine::StateHandle;
use crate::scheduler::job::JobId;
use crate::scheduler::run::JobCounters;
use crate::scheduler::State;

/// Jobs with a `job` label of their own when `--metrics-job-limit` is not given.
pub const DEFAULT_JOB_LIMIT: usize = 1000;
/// The `job` label of every job beyond the limit.
pub const OTHER_JOBS: &str = "_other";
/// How old the named set an observation uses may get before it is
/// recomputed even though the number of jobs did not change.
pub const LABELS_MAX_AGE: Duration = Duration::from_secs(30);
/// How often an observation may recompute the named set when the number of
/// jobs changed.
const LABELS_MIN_AGE: Duration = Duration::from_secs(1);

/// Labels of a per-job metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// The job's id, or [`OTHER_JOBS`].
    pub job: String,
}

/// Labels of the per-job run counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobOutcomeLabels {
    /// The job's id, or [`OTHER_JOBS`].
    pub job: String,
    /// `succeeded`, `failed`, `timed_out` or `cancelled`.
    pub outcome: String,
}

/// Labels of a per-type metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobTypeLabels {
    /// The job type (handler name).
    pub job_type: String,
}

/// Which jobs get a `job` label of their own (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamedJobs {
    /// Every job: there are no more than the limit.
    All,
    /// Only these; every other job is [`OTHER_JOBS`].
    Only(HashSet<JobId>),
}

impl NamedJobs {
    /// The named jobs of `state`: the `limit` oldest by `(created_at_ms, id)`.
    pub fn of(state: &State, limit: usize) -> NamedJobs {
        if state.job_count() <= limit {
            return NamedJobs::All;
        }
        let mut order: Vec<(i64, &str)> = state.jobs().map(|j| (j.created_at_ms, j.id.as_str())).collect();
        if limit > 0 {
            // The `limit` smallest keys end up in front, in no order: O(jobs).
            order.select_nth_unstable(limit - 1);
        }
        NamedJobs::Only(order[..limit].iter().map(|(_, id)| id.to_string()).collect())
    }

    /// Whether `job_id` has a label of its own.
    pub fn names(&self, job_id: &str) -> bool {
        match self {
            NamedJobs::All => true,
            NamedJobs::Only(named) => named.contains(job_id),
        }
    }

    /// The `job` label of `job_id`.
    pub fn label<'a>(&self, job_id: &'a str) -> &'a str {
        if self.names(job_id) {
            job_id
        } else {
            OTHER_JOBS
        }
    }
}

/// The named set as last computed, for labelling observations.
#[derive(Debug)]
struct Computed {
    named: NamedJobs,
    job_count: usize,
    at: Instant,
}

/// Labels observations by the named set it last computed (see the module doc).
#[derive(Debug)]
pub struct JobLabeler {
    limit: usize,
    computed: Arc<RwLock<Option<Computed>>>,
    /// Set while a recomputation runs on the blocking pool.
    refreshing: Arc<AtomicBool>,
}

impl JobLabeler {
    /// A labeler naming at most `limit` jobs.
    pub fn new(limit: usize) -> JobLabeler {
        JobLabeler {
            limit,
            computed: Arc::default(),
            refreshing: Arc::default(),
        }
    }

    /// Recomputes the named set from `state` and returns it.
    pub fn recompute(&self, state: &State) -> NamedJobs {
        compute_into(&self.computed, state, self.limit)
    }

    /// The `job` label of `job_id`: O(1) but for the first call, which
    /// computes the named set (a pass over the jobs). A stale set is used
    /// while a new one is computed on the blocking pool, so that an
    /// attempt about to start never waits for that pass.
    pub fn label(&self, state: &StateHandle, job_id: &str) -> String {
        {
            let computed = self.computed.read().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = computed.as_ref() {
                let age = c.at.elapsed();
                let stale = age >= LABELS_MAX_AGE
                    || (age >= LABELS_MIN_AGE
                        && state.try_read().is_some_and(|s| s.job_count() != c.job_count));
                if stale {
                    self.refresh_in_background(state);
                }
                return c.named.label(job_id).to_string();
            }
        }
        self.recompute(&state.read()).label(job_id).to_string()
    }

    /// Recomputes the named set on the blocking pool, unless that is
    /// already under way (or there is no runtime: then not at all, and the
    /// next scrape does).
    fn refresh_in_background(&self, state: &StateHandle) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (computed, refreshing, state, limit) = (
            self.computed.clone(),
            self.refreshing.clone(),
            state.clone(),
            self.limit,
        );
        runtime.spawn_blocking(move || {
            compute_into(&computed, &state.read(), limit);
            refreshing.store(false, Ordering::Release);
        });
    }
}

/// Computes the named set of `state` into `computed` and returns it.
fn compute_into(computed: &RwLock<Option<Computed>>, state: &State, limit: usize) -> NamedJobs {
    let named = NamedJobs::of(state, limit);
    let mut computed = computed.write().unwrap_or_else(|p| p.into_inner());
    *computed = Some(Computed {
        named: named.clone(),
        job_count: state.job_count(),
        at: Instant::now(),
    });
    named
}

/// The per-job and per-type families (see the module doc).
#[derive(Debug)]
pub struct JobMetrics {
    labeler: JobLabeler,
    runs: Family<JobOutcomeLabels, Counter>,
    fires_missed: Family<JobLabels, Counter>,
    fires_skipped: Family<JobLabels, Counter>,
    last_success: Family<JobLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    fire_lateness: Family<JobLabels, Histogram>,
    /// The `job` labels [`JobMetrics::fire_lateness`] has series for, so a
    /// scrape can drop those of jobs no longer named.
    lateness_labels: Mutex<HashSet<String>>,
    queue_depth: Family<JobTypeLabels, Gauge>,
    oldest_pending_age: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl JobMetrics {
    /// The families, naming at most `limit` jobs.
    pub fn new(limit: usize) -> JobMetrics {
        JobMetrics {
            labeler: JobLabeler::new(limit),
            runs: Family::default(),
            fires_missed: Family::default(),
            fires_skipped: Family::default(),
            last_success: Family::default(),
            // Fewer buckets than the node-wide histogram: this one is per job.
            // 1 ms .. 16 s, ×4.
            fire_lateness: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 4.0, 8))
            }),
            lateness_labels: Mutex::default(),
            queue_depth: Family::default(),
            oldest_pending_age: Gauge::default(),
        }
    }

    /// Registers the families in `registry` (prefixed `kairos_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "job_runs",
            "Runs of each job that ended, by outcome, from the replicated counters (a cluster figure)",
            self.runs.clone(),
        );
        registry.register(
            "job_fires_missed",
            "Fires of each job not run under its catch-up policy or start deadline (a cluster figure)",
            self.fires_missed.clone(),
        );
        registry.register(
            "job_fires_skipped",
            "Fires of each job dropped by its overlap policy (a cluster figure)",
            self.fires_skipped.clone(),
        );
        registry.register(
            "job_last_success_timestamp_seconds",
            "When each job's latest kept succeeded run finished, Unix seconds",
            self.last_success.clone(),
        );
        registry.register(
            "job_fire_lateness_seconds",
            "Nominal fire time to handler start of each job's first attempts started on this node",
            self.fire_lateness.clone(),
        );
        registry.register(
            "queue_depth",
            "Runs waiting for dispatch by job type (a cluster figure)",
            self.queue_depth.clone(),
        );
        registry.register(
            "oldest_pending_run_age_seconds",
            "Now minus the due time of the oldest run waiting for dispatch (0 when none)",
            self.oldest_pending_age.clone(),
        );
    }

    /// Records the lateness of a first attempt of `job_id`, under its label.
    pub fn observe_fire_lateness(&self, state: &StateHandle, job_id: &str, seconds: f64) {
        let job = self.labeler.label(state, job_id);
        self.fire_lateness
            .get_or_create(&JobLabels { job: job.clone() })
            .observe(seconds);
        let mut labels = self.lateness_labels.lock().unwrap_or_else(|p| p.into_inner());
        labels.insert(job);
    }

    /// Rebuilds the families read from `state` at `now_ms` (see the module doc).
    pub fn refresh(&self, state: &State, now_ms: i64) {
        let named = self.labeler.recompute(state);
        self.runs.clear();
        self.fires_missed.clear();
        self.fires_skipped.clear();
        self.last_success.clear();
        self.queue_depth.clear();
        let mut other = JobCounters::default();
        let mut unnamed = 0usize;
        let mut depth: BTreeMap<&str, i64> = BTreeMap::new();
        let none = JobCounters::default();
        for job in state.jobs() {
            depth.entry(job.spec.job_type.as_str()).or_default();
            let counters = state.counters(&job.id).unwrap_or(&none);
            if named.names(&job.id) {
                self.record(&job.id, counters);
                if let Some(ms) = state.last_success_ms(&job.id) {
                    self.last_success
                        .get_or_create(&JobLabels { job: job.id.clone() })
                        .set(ms as f64 / 1000.0);
                }
            } else {
                unnamed += 1;
                add(&mut other, counters);
            }
        }
        if unnamed > 0 {
            self.record(OTHER_JOBS, &other);
        }
        for (job_id, pending) in state.pending_counts() {
            if let Some(job) = state.job(job_id) {
                *depth.entry(job.spec.job_type.as_str()).or_default() +=
                    i64::try_from(pending).unwrap_or(i64::MAX);
            }
        }
        for (job_type, pending) in depth {
            self.queue_depth
                .get_or_create(&JobTypeLabels {
                    job_type: job_type.to_string(),
                })
                .set(pending);
        }
        let age_ms = state
            .oldest_pending_due_ms()
            .map_or(0, |due| now_ms.saturating_sub(due).max(0));
        self.oldest_pending_age.set(age_ms as f64 / 1000.0);
        self.forget_lateness_of_unnamed(state, &named);
    }

    /// Sets the counters of `job` (a job id or [`OTHER_JOBS`]).
    fn record(&self, job: &str, counters: &JobCounters) {
        for (outcome, n) in [
            ("succeeded", counters.succeeded),
            ("failed", counters.failed),
            ("timed_out", counters.timed_out),
            ("cancelled", counters.cancelled),
        ] {
            self.runs
                .get_or_create(&JobOutcomeLabels {
                    job: job.to_string(),
                    outcome: outcome.to_string(),
                })
                .inc_by(n);
        }
        let labels = JobLabels { job: job.to_string() };
        self.fires_missed.get_or_create(&labels).inc_by(counters.missed);
        self.fires_skipped.get_or_create(&labels).inc_by(counters.skipped);
    }

    /// Drops the lateness series of jobs deleted or no longer named.
    fn forget_lateness_of_unnamed(&self, state: &State, named: &NamedJobs) {
        let mut labels = self.lateness_labels.lock().unwrap_or_else(|p| p.into_inner());
        labels.retain(|job| {
            let keep = job == OTHER_JOBS || (state.job(job).is_some() && named.names(job));
            if !keep {
                self.fire_lateness.remove(&JobLabels { job: job.clone() });
            }
            keep
        });
    }
}

/// Adds `counters` into `sum`.
fn add(sum: &mut JobCounters, counters: &JobCounters) {
    sum.succeeded += counters.succeeded;
    sum.failed += counters.failed;
    sum.timed_out += counters.timed_out;
    sum.cancelled += counters.cancelled;
    sum.missed += counters.missed;
    sum.skipped += counters.skipped;
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;
    use crate::scheduler::job::{JobSpec, Metadata, Policies, ScheduleSpec};
    use crate::scheduler::run::{AttemptOutcome, RunId};
    use crate::scheduler::state::Changes;
    use crate::scheduler::{Command, Request, Response};

    /// 2026-01-01T00:00:00Z, Unix ms.
    const T0: i64 = 1_767_225_600_000;

    /// A state and the log index of its last entry.
    struct Applied(State, u64);

    impl Applied {
        fn apply(&mut self, at_ms: i64, command: Command) -> Response {
            self.1 += 1;
            let request = Request {
                at_ms,
                principal: "t".into(),
                command,
                write_id: None,
            };
            self.0
                .apply(self.1, &request, &mut Changes::default())
                .unwrap_or_else(|e| panic!("{e:?}"))
        }

        /// Creates a `noop` job firing every second (a retry-less one).
        fn create(&mut self, id: &str, at_ms: i64) {
            let mut policies = Policies::default();
            policies.retry.max_attempts = 1;
            let spec = JobSpec {
                job_type: "noop".into(),
                owner_service: String::new(),
                schedule: ScheduleSpec::Every {
                    interval_ms: 1_000,
                    phase_ms: 0,
                },
                payload: vec![],
                metadata: Metadata::default(),
                policies: policies.shared(),
                paused: false,
            };
            let request_id = None;
            self.apply(
                at_ms,
                Command::CreateJob {
                    id: id.into(),
                    spec,
                    request_id,
                },
            );
        }

        fn delete(&mut self, id: &str, at_ms: i64) {
            let command = Command::DeleteJob {
                id: id.into(),
                expected_version: None,
            };
            self.apply(at_ms, command);
        }

        /// Fires every job due at `at_ms`: the runs created.
        fn fire(&mut self, at_ms: i64) -> Vec<RunId> {
            let fires = self.0.due_fires(at_ms, 1_000);
            match self.apply(at_ms, Command::FireBatch { fires }) {
                Response::Fired { created, .. } => created,
                other => panic!("{other:?}"),
            }
        }

        /// Starts and finishes run `run_id` with `outcome` at `at_ms`.
        fn run(&mut self, run_id: RunId, at_ms: i64, outcome: AttemptOutcome) {
            let start = Command::StartAttempt {
                run_id,
                node: 1,
                attempt: 1,
            };
            let token = match self.apply(at_ms, start) {
                Response::Run(run) => run.token,
                other => panic!("{other:?}"),
            };
            let finish = Command::FinishAttempt {
                run_id,
                token,
                outcome,
                output_tail: String::new(),
            };
            self.apply(at_ms + 500, finish);
        }
    }

    fn named(ids: &[&str]) -> NamedJobs {
        NamedJobs::Only(ids.iter().map(|id| id.to_string()).collect())
    }

    #[test]
    fn the_oldest_jobs_are_named_and_stay_named_as_jobs_are_added() {
        let mut s = Applied(State::default(), 0);
        // Created in this order: neither id order nor creation order alone.
        s.create("zeta", T0);
        s.create("beta", T0 + 1);
        s.create("alpha", T0 + 1);
        assert_eq!(NamedJobs::of(&s.0, 3), NamedJobs::All);
        assert_eq!(
            NamedJobs::of(&s.0, 2),
            named(&["zeta", "alpha"]),
            "a tie goes by id"
        );
        s.create("aaa", T0 + 2);
        assert_eq!(
            NamedJobs::of(&s.0, 2),
            named(&["zeta", "alpha"]),
            "a new job does not take a label"
        );
        assert_eq!(NamedJobs::of(&s.0, 2).label("aaa"), OTHER_JOBS);
        s.delete("zeta", T0 + 3);
        assert_eq!(
            NamedJobs::of(&s.0, 2),
            named(&["alpha", "beta"]),
            "a deleted named job's label goes to the oldest unnamed one"
        );
        assert_eq!(NamedJobs::of(&s.0, 0), named(&[]), "0 names none");
    }

    #[test]
    fn a_scrape_counts_named_jobs_alone_and_the_rest_under_other() {
        let mut s = Applied(State::default(), 0);
        for (i, id) in ["first", "second", "third"].iter().enumerate() {
            s.create(id, T0 + i as i64);
        }
        let runs = s.fire(T0 + 1_000);
        assert_eq!(runs.len(), 3, "one run per job");
        let failed = AttemptOutcome::Failed {
            kind: "boom".into(),
            message: "it broke".into(),
            retryable: false,
        };
        s.run(runs[0], T0 + 1_100, AttemptOutcome::Succeeded);
        s.run(runs[2], T0 + 1_100, failed);
        // The second job's run still waits for dispatch.
        let metrics = JobMetrics::new(2);
        metrics.refresh(&s.0, T0 + 4_000);
        let mut registry = Registry::with_prefix("kairos");
        metrics.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            "kairos_job_runs_total{job=\"first\",outcome=\"succeeded\"} 1\n",
            "kairos_job_runs_total{job=\"first\",outcome=\"failed\"} 0\n",
            "kairos_job_runs_total{job=\"second\",outcome=\"succeeded\"} 0\n",
            "kairos_job_runs_total{job=\"_other\",outcome=\"failed\"} 1\n",
            "kairos_job_runs_total{job=\"_other\",outcome=\"succeeded\"} 0\n",
            "kairos_job_fires_missed_total{job=\"_other\"} 0\n",
            // 1_767_225_601_600 ms: the success's finish time.
            "kairos_job_last_success_timestamp_seconds{job=\"first\"} 1767225601.6\n",
            "kairos_queue_depth{job_type=\"noop\"} 1\n",
            // Due at T0 + 1 s, scraped at T0 + 4 s.
            "kairos_oldest_pending_run_age_seconds 3.0\n",
        ] {
            assert!(text.contains(line), "{line}in:\n{text}");
        }
        assert!(!text.contains("job=\"third\""), "{text}");
        assert!(
            !text.contains("last_success_timestamp_seconds{job=\"second\"}"),
            "no success, no series: {text}"
        );
        // A deleted job's series go with the next scrape.
        s.delete("first", T0 + 5_000);
        metrics.refresh(&s.0, T0 + 5_000);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(!text.contains("job=\"first\""), "{text}");
        assert!(
            text.contains("kairos_job_runs_total{job=\"third\",outcome=\"failed\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("job=\"_other\""), "two jobs, two names: {text}");
    }

    #[test]
    fn lateness_is_labelled_by_the_named_set_and_dropped_with_the_job() {
        let handle = StateHandle::default();
        let metrics = JobMetrics::new(1);
        {
            let mut s = Applied(State::default(), 0);
            s.create("old", T0);
            s.create("new", T0 + 1);
            handle.replace_for_tests(s.0);
        }
        metrics.observe_fire_lateness(&handle, "old", 0.002);
        metrics.observe_fire_lateness(&handle, "new", 0.003);
        let mut registry = Registry::with_prefix("kairos");
        metrics.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("kairos_job_fire_lateness_seconds_count{job=\"old\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("kairos_job_fire_lateness_seconds_count{job=\"_other\"} 1\n"),
            "{text}"
        );
        {
            let mut s = Applied(handle.read().clone(), 100);
            s.delete("old", T0 + 2);
            handle.replace_for_tests(s.0);
        }
        metrics.refresh(&handle.read(), T0 + 3);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(!text.contains("job=\"old\""), "{text}");
        assert!(
            text.contains("kairos_job_fire_lateness_seconds_count{job=\"_other\"} 1\n"),
            "{text}"
        );
    }
}
