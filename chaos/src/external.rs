//! The external worker pool (`--external-workers N`): N in-process workers
//! of the Rust SDK (`kairos-worker`) serving the job type [`JOB_TYPE`], each
//! with every node's client address as endpoints (in a different order, so
//! that their registrations spread over the nodes) and the harness's root
//! token. The steady jobs of that type ([`crate::workload::steady_jobs`])
//! carry the same webhook payload as the `http` ones; a worker's handler does
//! what the `http` handler does for them — it records one delivery with the
//! run's idempotency key, job, run id, attempt and nominal time — straight
//! into the receiver's list ([`crate::recorder::push`]) rather than over
//! HTTP, so the checkers read the two kinds of job alike.
//!
//! The workers run until the round's stop token is cancelled (after settle,
//! since settle waits for their runs to end) and are awaited then.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use kairos_worker::{JobTypeSpec, TaskContext, TaskError, Worker, WorkerConfig, WorkerEvent};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::recorder::{self, Deliveries, Identity};

/// The job type the external workers serve.
pub const JOB_TYPE: &str = "chaos.ext";

/// Tasks one worker runs at once.
const CAPACITY: u32 = 4;

/// The running workers.
pub struct ExternalPool {
    tasks: Vec<JoinHandle<()>>,
}

/// Starts `count` workers against `addrs` (id → `host:port`) with the token
/// `secret`; waits (at most `within`) until one has registered, so that the
/// cluster knows [`JOB_TYPE`] before a job of it is created.
pub async fn start(
    count: usize,
    addrs: &BTreeMap<u64, String>,
    secret: &str,
    started: Instant,
    deliveries: Deliveries,
    stop: CancellationToken,
    within: Duration,
) -> anyhow::Result<ExternalPool> {
    let endpoints: Vec<String> = addrs.values().map(|a| format!("http://{a}")).collect();
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for i in 0..count {
        // Worker i starts on node i (mod n) and goes round from there.
        let mut ordered = endpoints.clone();
        ordered.rotate_left(i % endpoints.len().max(1));
        let config = WorkerConfig {
            endpoints: ordered,
            token: Some(secret.to_string()),
            worker_name: format!("chaos-ext-{i}"),
            job_types: vec![JobTypeSpec::new(JOB_TYPE).with_description("kairos-chaos steady jobs")],
            capacity: CAPACITY,
            // A paused (SIGSTOP) node must not hold a worker long.
            call_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(2),
            ..WorkerConfig::default()
        };
        let deliveries = deliveries.clone();
        let handler = Arc::new(move |task: TaskContext| {
            let deliveries = deliveries.clone();
            async move { execute(started, &deliveries, task) }
        });
        let worker = Worker::new(config).with_events(events_tx.clone());
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = worker.serve(handler, stop).await {
                tracing::error!("external worker chaos-ext-{i} stopped: {e}");
            }
        }));
    }
    drop(events_tx);
    let pool = ExternalPool { tasks };
    if count > 0 {
        let registered = tokio::time::timeout(within, async {
            while let Some(event) = events.recv().await {
                if matches!(event, WorkerEvent::Registered { .. }) {
                    return true;
                }
            }
            false
        })
        .await;
        if registered != Ok(true) {
            stop.cancel();
            pool.join().await;
            anyhow::bail!("no external worker registered within {within:?}");
        }
    }
    // Later events are not needed: dropping the receiver drops them.
    Ok(pool)
}

impl ExternalPool {
    /// Waits for every worker to return (once the stop token is cancelled).
    pub async fn join(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// What the `http` handler would deliver for `task`, recorded directly.
fn execute(started: Instant, deliveries: &Deliveries, task: TaskContext) -> Result<String, TaskError> {
    let Some(nominal) = task.nominal_time else {
        return Err(TaskError::non_retryable("task without a nominal time"));
    };
    let nominal_unix_ms = nominal
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    recorder::push(
        started,
        deliveries,
        Identity {
            key: task.idempotency_key,
            job_id: task.job_id,
            run_id: task.run_id,
            attempt: task.attempt,
            nominal_unix_ms,
        },
    );
    Ok(String::new())
}
