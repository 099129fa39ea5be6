//! Sinks: delivering the lifecycle stream to outbound webhooks.
//!
//! A sink (`EventService.CreateSink`, `kairos sink create`) names a URL,
//! optionally a set of lifecycle event kinds and a job glob. Its definition
//! and the position its receiver acknowledged last (`SinkDef::delivered`)
//! are replicated state; the *leader* delivers. [`SinkDelivery`] starts
//! with the other leader-only actors and stops with them (a
//! `CancellationToken`; the HTTP request in flight is dropped, so stopping
//! takes at most [`STOP_ACK_TIMEOUT`] for the last progress record).
//!
//! **What is delivered.** Every lifecycle event (`api::lifecycle`: the
//! audit log read as jobs created, updated, deleted, paused, resumed, runs
//! changing status, events published, ACL changes) after the sink's
//! position that matches its kinds and job glob — one event per `POST`, as
//! the protobuf JSON mapping of `kairos.v1.LifecycleEvent`, with headers
//! `Kairos-Event-Position: <position>`, `Kairos-Sink: <name>` and
//! `Content-Type: application/json`. Positions are the audit sequence
//! numbers: increasing, the same on every node.
//!
//! **In order, at least once.** One task per sink sends the events one at a
//! time in position order and moves on only when the receiver answers 2xx.
//! Anything else — another status, a connection error, no answer within
//! [`REQUEST_TIMEOUT`] — is retried for ever with exponential back-off
//! ([`Backoff`]: [`BACKOFF_FIRST`] doubling to [`BACKOFF_MAX`]), never
//! skipping the event; the error is kept in [`SinkStatus`] (`ListSinks`'s
//! `last_error`, on the leader) and counted
//! (`kairos_sink_delivery_failures_total`). Redirects are not followed (a
//! 3xx is a failure). Events that do not match the sink advance its
//! position without a request.
//!
//! **Progress.** The position is recorded in the replicated state with the
//! internal `AckSink` command, batched ([`Progress`]): at most one proposal
//! per sink per [`ACK_INTERVAL`] unless [`ACK_EVERY`] events were delivered
//! since the last, once more when the sink goes idle, and on stop (which
//! commits only if this node can still commit then: a leader that steps
//! down or shuts down usually cannot). A new leader resumes after the last
//! *recorded* position, so after a failover the receiver may see again the
//! events delivered since the last record (up to about a second's worth):
//! positions only increase, and a receiver drops an event whose position
//! is not above the last it processed.
//! Before it starts, a new leader passes a read barrier, so it resumes
//! from the newest record the cluster committed; a record from a former
//! leader applied later still moves the position forward (never back).
//!
//! **Retention.** Each node keeps the newest `--audit-retain` audit entries.
//! If a sink falls so far behind that the events after its position were
//! dropped (a receiver down for a long time under heavy traffic), they
//! cannot be delivered: the gap is logged at error level and shown as the
//! sink's last error, and delivery continues from the oldest position kept.
//!
//! **Waking.** The tasks wait on the applied audit head
//! (`StateHandle::subscribe_audit_head`), which moves after every apply that
//! appends entries — including `CreateSink` and `DeleteSink`, which the
//! supervisor follows to start and retire tasks. They never poll.
//!
//! **Egress.** Sink URLs are set by holders of `sink:admin`, so the `http`
//! job type's egress allow-list (`--http-allow`) does not apply to them.
//! The client is the one every Kairos HTTP client starts from (rustls with
//! aws-lc, no redirects, the Kairos user agent) and ignores `HTTP(S)_PROXY`.
//!
//! The parts that decide — the next step from the state ([`next_step`]),
//! the back-off, when to record progress, the request — are plain
//! functions and types; the loop reaches the node through [`SinkHost`], so
//! tests drive it with a state of their own.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::lifecycle::{events_after, Dropped, EventFilter};
use crate::error::{Error, Result};
use crate::node::{Consistency, Node};
use crate::proto as pb;
use crate::scheduler::state::SinkDef;
use crate::scheduler::{Command, State};

/// Principal recorded for the leader's `AckSink` proposals.
const PRINCIPAL: &str = "kairos-sinks";
/// How long one delivery may take (connect, send, answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The first wait after a failed delivery.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// The longest wait between two attempts at the same event.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// At most one progress record per sink this often...
pub const ACK_INTERVAL: Duration = Duration::from_secs(1);
/// ... unless this many events were delivered since the last.
pub const ACK_EVERY: u64 = 100;
/// How long a progress record may take before it is given up (and retried).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the last progress record of a stopping delivery may take.
pub const STOP_ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// Response bytes kept for an error message.
const ERROR_BODY_BYTES: usize = 200;
/// Response bytes read at most (so that the connection can be reused).
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The header carrying the event's position.
pub const POSITION_HEADER: &str = "Kairos-Event-Position";
/// The header carrying the sink's name.
pub const SINK_HEADER: &str = "Kairos-Sink";

/// This node's view of its sink deliveries (the leader delivers).
#[derive(Debug, Default)]
pub struct SinkStatus {
    sinks: Mutex<BTreeMap<String, SinkCounters>>,
}

/// What [`SinkStatus`] keeps per sink.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct SinkCounters {
    /// The last delivery error; empty when the latest attempt succeeded.
    error: String,
    /// Failed delivery attempts on this node since it started.
    failures: u64,
}

impl SinkStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SinkCounters>> {
        self.sinks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last delivery error of sink `name` (empty when its latest
    /// attempt succeeded or this node does not deliver to it).
    pub fn last_error(&self, name: &str) -> String {
        self.lock().get(name).map(|s| s.error.clone()).unwrap_or_default()
    }

    /// Sets (or with `None` clears) the last error of `name` without
    /// counting a failed attempt.
    pub fn set_error(&self, name: &str, error: Option<String>) {
        self.lock().entry(name.to_string()).or_default().error = error.unwrap_or_default();
    }

    /// Records a failed delivery attempt to `name`.
    pub fn failed(&self, name: &str, error: String) {
        let mut sinks = self.lock();
        let sink = sinks.entry(name.to_string()).or_default();
        sink.error = error;
        sink.failures += 1;
    }

    /// Failed delivery attempts to `name` on this node since it started.
    pub fn failures(&self, name: &str) -> u64 {
        self.lock().get(name).map_or(0, |s| s.failures)
    }

    /// Forgets sink `name` (deleted).
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    /// Clears every last error (this node stopped delivering); the failure
    /// counts stay, as counters do.
    pub fn clear_errors(&self) {
        for sink in self.lock().values_mut() {
            sink.error.clear();
        }
    }
}

/// What the delivery reads and proposes through: the node in production.
pub trait SinkHost: Send + Sync + 'static {
    /// Runs `f` on the applied state.
    fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> T;
    /// The applied audit head; changes after every apply that appends.
    fn subscribe_head(&self) -> watch::Receiver<u64>;
    /// Where delivery outcomes are kept.
    fn status(&self) -> &SinkStatus;
    /// Records that `name`'s receiver acknowledged everything up to
    /// `position` (`AckSink`); done when applied.
    fn ack(&self, name: &str, position: u64) -> impl Future<Output = Result<()>> + Send;
    /// Resolves once the applied state holds what the cluster committed
    /// before this node began to lead (or it gave up trying).
    fn caught_up(&self) -> impl Future<Output = ()> + Send;
}

impl SinkHost for Node {
    fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.read())
    }

    fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.state.subscribe_audit_head()
    }

    fn status(&self) -> &SinkStatus {
        &self.sink_status
    }

    async fn ack(&self, name: &str, position: u64) -> Result<()> {
        let command = Command::AckSink {
            name: name.to_string(),
            position,
        };
        self.propose_local(PRINCIPAL, command).await.map(|_| ())
    }

    async fn caught_up(&self) {
        if let Err(e) = self.read_barrier(Consistency::Linearizable).await {
            tracing::warn!(node = self.id, error = %e, "sink delivery starts without a read barrier");
        }
    }
}

/// Exponential back-off between attempts at one event.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_FIRST }
    }
}

impl Backoff {
    /// The wait before the next attempt; each is twice the one before, up
    /// to [`BACKOFF_MAX`].
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }

    /// After a success: the next failure waits [`BACKOFF_FIRST`] again.
    pub fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

/// A sink's position and when to record it.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Every event up to here was acknowledged by the receiver or does not match.
    pub position: u64,
    /// The position recorded in the state (the start, or the last `AckSink` applied).
    pub recorded: u64,
    /// Events delivered since the last record was proposed.
    delivered_since: u64,
    /// When the last record was proposed (`None`: never).
    last_ack: Option<Instant>,
}

impl Progress {
    /// Progress starting at `recorded`, the sink's replicated position.
    pub fn new(recorded: u64) -> Progress {
        Progress {
            position: recorded,
            recorded,
            delivered_since: 0,
            last_ack: None,
        }
    }

    /// The receiver acknowledged the event at `position`.
    pub fn delivered(&mut self, position: u64) {
        self.position = self.position.max(position);
        self.delivered_since += 1;
    }

    /// Everything up to `position` is done without a request (not matching,
    /// recorded by another leader, dropped by retention). Never moves back.
    pub fn skip_to(&mut self, position: u64) {
        self.position = self.position.max(position);
    }

    /// There is progress to record.
    pub fn pending(&self) -> bool {
        self.position > self.recorded
    }

    /// Whether to record now: something is pending and either
    /// [`ACK_EVERY`] events were delivered or [`ACK_INTERVAL`] has passed
    /// since the last record.
    pub fn due(&self, now: Instant) -> bool {
        self.pending()
            && (self.delivered_since >= ACK_EVERY
                || self.last_ack.is_none_or(|last| now >= last + ACK_INTERVAL))
    }

    /// When to record what is pending if nothing else happens (`None`:
    /// nothing is pending).
    pub fn deadline(&self, now: Instant) -> Option<Instant> {
        if !self.pending() {
            return None;
        }
        Some(match self.last_ack {
            Some(last) if !self.due(now) => last + ACK_INTERVAL,
            _ => now,
        })
    }

    /// A record of the current position is being proposed at `now`.
    pub fn proposing(&mut self, now: Instant) {
        self.last_ack = Some(now);
        self.delivered_since = 0;
    }

    /// The record of `position` was applied.
    pub fn recorded(&mut self, position: u64) {
        self.recorded = self.recorded.max(position);
    }
}

/// What a sink's delivery does next, decided from the applied state.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// The sink was deleted (or replaced by another of the same name).
    Gone,
    /// The events after `after` up to `oldest` were dropped by audit
    /// retention before they were delivered: continue after `oldest`.
    Dropped {
        /// The sink's position.
        after: u64,
        /// The oldest position the node keeps (entries after it are kept).
        oldest: u64,
    },
    /// Deliver `events` (those matching, in order), then move to `scanned`.
    Deliver {
        /// The position the scan started after.
        after: u64,
        /// The matching events after `after` up to `scanned`.
        events: Vec<pb::LifecycleEvent>,
        /// The last position examined (`after` when there was nothing new).
        scanned: u64,
    },
}

/// Whether `stored` is the sink `def` (not another created under its name
/// since); the position does not count.
pub fn same_sink(stored: &SinkDef, def: &SinkDef) -> bool {
    stored.name == def.name
        && stored.url == def.url
        && stored.kinds == def.kinds
        && stored.job == def.job
        && stored.created_ms == def.created_ms
        && stored.created_by == def.created_by
}

/// The filter of a sink's events.
pub fn sink_filter(def: &SinkDef) -> EventFilter {
    EventFilter {
        kinds: def.kinds.clone(),
        job: def.job.clone(),
        owner: String::new(),
    }
}

/// The next step of sink `def` at `position`: up to
/// [`SCAN_BATCH`](crate::api::lifecycle::SCAN_BATCH) audit
/// entries are examined after the larger of `position` and the recorded
/// position (a former leader's record may be applied after this one began).
pub fn next_step(state: &State, def: &SinkDef, position: u64, filter: &EventFilter) -> Step {
    let Some(stored) = state.sink(&def.name).filter(|s| same_sink(s, def)) else {
        return Step::Gone;
    };
    let after = position.max(stored.delivered);
    match events_after(state, after, filter) {
        Ok((events, scanned)) => Step::Deliver {
            after,
            events,
            scanned,
        },
        Err(Dropped { oldest }) => Step::Dropped { after, oldest },
    }
}

/// The message of a retention gap.
pub fn dropped_message(after: u64, oldest: u64) -> String {
    format!(
        "events after position {after} up to {oldest} were dropped by audit retention (--audit-retain) \
         before they were delivered; delivery continues after {oldest}"
    )
}

/// The client sinks are delivered with: rustls (aws-lc), no redirects, the
/// Kairos user agent, no proxy from the environment.
pub fn http_client() -> std::result::Result<reqwest::Client, String> {
    crate::handlers::HttpHandler::client_builder()
        .no_proxy()
        .build()
        .map_err(|e| crate::handlers::error_chain(&e))
}

/// The request delivering `event` to sink `def`.
pub fn request(
    client: &reqwest::Client,
    def: &SinkDef,
    event: &pb::LifecycleEvent,
) -> std::result::Result<reqwest::RequestBuilder, String> {
    let body = serde_json::to_vec(event).map_err(|e| format!("encoding event {}: {e}", event.position))?;
    Ok(client
        .post(&def.url)
        .timeout(REQUEST_TIMEOUT)
        .header(POSITION_HEADER, event.position.to_string())
        .header(SINK_HEADER, def.name.as_str())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body))
}

/// The error a non-2xx answer stands for: its status and the start of its body.
pub fn status_error(status: reqwest::StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_BYTES)]);
    let text = text.trim();
    if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", text.replace(['\n', '\r'], " "))
    }
}

/// Delivers `event` once: `Ok` when the receiver answered 2xx.
async fn post(
    client: &reqwest::Client,
    def: &SinkDef,
    event: &pb::LifecycleEvent,
) -> std::result::Result<(), String> {
    let position = event.position;
    let failed = |e: reqwest::Error| format!("position {position}: {}", crate::handlers::error_chain(&e));
    let mut response = request(client, def, event)?.send().await.map_err(failed)?;
    let status = response.status();
    // Read (a bounded part of) the body: the connection can then be reused,
    // and an error answer says why.
    let mut body = Vec::new();
    while body.len() < MAX_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) if status.is_success() => {
                // The answer counts; only its body was cut short.
                tracing::debug!(sink = %def.name, position, "reading the answer: {e}");
                break;
            }
            Err(e) => return Err(failed(e)),
        }
    }
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("position {position}: {}", status_error(status, &body)))
    }
}

/// The leader's sink deliveries: one task per sink, supervised.
pub struct SinkDelivery {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl SinkDelivery {
    /// Starts delivering to every sink of `host`'s state, following sinks
    /// created and deleted, until [`SinkDelivery::stop`].
    pub fn start<H: SinkHost>(host: Arc<H>) -> SinkDelivery {
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(host, stop.clone()));
        SinkDelivery { stop, task }
    }

    /// Stops every delivery: requests in flight are dropped, and each sink
    /// records its position (bounded by [`STOP_ACK_TIMEOUT`]). Waits at most
    /// `grace`, then abandons what is left.
    pub async fn stop(self, grace: Duration) {
        self.stop.cancel();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(grace, self.task).await.is_err() {
            tracing::warn!("sink delivery still stopping after {grace:?}; abandoned");
            abort.abort();
        }
    }
}

/// One sink's running delivery, as the supervisor knows it.
struct Running {
    def: SinkDef,
    /// Ends it; a child of the supervisor's stop token. Cancelled on its
    /// own, it retires the delivery without recording (the sink is gone).
    cancel: CancellationToken,
    /// Its task.
    task: tokio::task::Id,
}

/// Starts, retires and finally stops the per-sink tasks.
async fn supervise<H: SinkHost>(host: Arc<H>, stop: CancellationToken) {
    let client = match http_client() {
        Ok(client) => client,
        Err(e) => {
            let message = format!("cannot build the HTTP client: {e}");
            tracing::error!("sink delivery: {message}");
            let names: Vec<String> = host.with_state(|s| s.sinks().map(|s| s.name.clone()).collect());
            for name in names {
                host.status().set_error(&name, Some(message.clone()));
            }
            stop.cancelled().await;
            return;
        }
    };
    // Resume from the newest positions the cluster committed.
    tokio::select! {
        () = host.caught_up() => {}
        () = stop.cancelled() => return,
    }
    let mut head = host.subscribe_head();
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    // Sinks whose delivery panicked: started again after the next change.
    let mut panicked = std::collections::BTreeSet::new();
    let mut tasks = JoinSet::new();
    loop {
        head.mark_unchanged();
        let sinks: Vec<SinkDef> = host.with_state(|s| s.sinks().cloned().collect());
        // Retire deliveries whose sink is gone or was replaced.
        let current: BTreeMap<&str, &SinkDef> = sinks.iter().map(|s| (s.name.as_str(), s)).collect();
        running.retain(|name, run| {
            let keep = current.get(name.as_str()).is_some_and(|s| same_sink(s, &run.def));
            if !keep {
                tracing::info!(sink = %name, "sink deleted: delivery stopped");
                run.cancel.cancel();
                host.status().forget(name);
            }
            keep
        });
        for def in sinks {
            if running.contains_key(&def.name) || panicked.contains(&def.name) {
                continue;
            }
            tracing::info!(sink = %def.name, url = %def.url, after = def.delivered, "delivering to sink");
            let cancel = stop.child_token();
            let task = tasks
                .spawn(deliver(
                    host.clone(),
                    client.clone(),
                    def.clone(),
                    stop.clone(),
                    cancel.clone(),
                ))
                .id();
            running.insert(def.name.clone(), Running { def, cancel, task });
        }
        tokio::select! {
            changed = head.changed() => {
                if changed.is_err() {
                    break;
                }
                panicked.clear();
            }
            Some(ended) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                // A delivery ends on its own when its sink is gone; one that
                // panicked is started again with the next change.
                let (id, failed) = match ended {
                    Ok((id, ())) => (id, false),
                    Err(e) => (e.id(), true),
                };
                running.retain(|name, run| {
                    if run.task != id {
                        return true;
                    }
                    if failed {
                        tracing::error!(sink = %name, "sink delivery failed; it starts again with the next change");
                        panicked.insert(name.clone());
                    } else {
                        host.status().forget(name);
                    }
                    false
                });
            }
            () = stop.cancelled() => break,
        }
    }
    while tasks.join_next().await.is_some() {}
    host.status().clear_errors();
}

/// Records the position of `def` if it is due; `false` when the sink is gone.
async fn record_if_due<H: SinkHost>(
    host: &H,
    def: &SinkDef,
    progress: &mut Progress,
    cancel: &CancellationToken,
) -> bool {
    let now = Instant::now();
    if !progress.due(now) {
        return true;
    }
    progress.proposing(now);
    let position = progress.position;
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(ACK_TIMEOUT, host.ack(&def.name, position)) => outcome,
        () = cancel.cancelled() => return true,
    };
    match outcome {
        Ok(Ok(())) => progress.recorded(position),
        Ok(Err(Error::NotFound(_))) => return false,
        Ok(Err(e)) => tracing::warn!(sink = %def.name, position, error = %e, "sink position not recorded"),
        Err(_) => tracing::warn!(sink = %def.name, position, "sink position not recorded in {ACK_TIMEOUT:?}"),
    }
    true
}

/// Delivers to sink `def` until `cancel` (a child of `stop`) is cancelled:
/// with `stop` (delivery stops) it records the position reached; alone
/// (the sink is gone) it does not.
async fn deliver<H: SinkHost>(
    host: Arc<H>,
    client: reqwest::Client,
    def: SinkDef,
    stop: CancellationToken,
    cancel: CancellationToken,
) {
    let filter = sink_filter(&def);
    let mut head = host.subscribe_head();
    let mut progress = Progress::new(def.delivered);
    let mut backoff = Backoff::default();
    let gone = 'run: loop {
        head.mark_unchanged();
        let step = host.with_state(|s| next_step(s, &def, progress.position, &filter));
        match step {
            Step::Gone => break 'run true,
            Step::Dropped { after, oldest } => {
                let message = dropped_message(after, oldest);
                tracing::error!(sink = %def.name, "{message}");
                host.status().set_error(&def.name, Some(message));
                progress.skip_to(oldest);
                continue;
            }
            Step::Deliver {
                after,
                events,
                scanned,
            } => {
                progress.skip_to(after);
                for event in events {
                    loop {
                        let outcome = tokio::select! {
                            outcome = post(&client, &def, &event) => outcome,
                            () = cancel.cancelled() => break 'run false,
                        };
                        match outcome {
                            Ok(()) => {
                                backoff.reset();
                                host.status().set_error(&def.name, None);
                                break;
                            }
                            Err(error) => {
                                let delay = backoff.next_delay();
                                tracing::warn!(sink = %def.name, url = %def.url, retry_in = ?delay, "delivery failed: {error}");
                                host.status().failed(&def.name, error);
                                if !record_if_due(&*host, &def, &mut progress, &cancel).await {
                                    break 'run true;
                                }
                                tokio::select! {
                                    () = tokio::time::sleep(delay) => {}
                                    () = cancel.cancelled() => break 'run false,
                                }
                            }
                        }
                    }
                    progress.delivered(event.position);
                    if !record_if_due(&*host, &def, &mut progress, &cancel).await {
                        break 'run true;
                    }
                }
                progress.skip_to(scanned);
                if !record_if_due(&*host, &def, &mut progress, &cancel).await {
                    break 'run true;
                }
                if scanned > after {
                    continue; // maybe more behind this batch
                }
            }
        }
        // Caught up: wait for new entries, recording what is pending meanwhile.
        let record_at = progress.deadline(Instant::now());
        tokio::select! {
            changed = head.changed() => if changed.is_err() { break 'run false },
            () = cancel.cancelled() => break 'run false,
            () = sleep_until(record_at) => {
                if !record_if_due(&*host, &def, &mut progress, &cancel).await {
                    break 'run true;
                }
            }
        }
    };
    if !gone && stop.is_cancelled() && progress.pending() {
        let position = progress.position;
        match tokio::time::timeout(STOP_ACK_TIMEOUT, host.ack(&def.name, position)).await {
            Ok(Ok(())) => tracing::debug!(sink = %def.name, position, "sink position recorded on stop"),
            Ok(Err(e)) => {
                tracing::info!(sink = %def.name, position, error = %e, "sink position not recorded on stop")
            }
            Err(_) => {
                tracing::info!(sink = %def.name, position, "sink position not recorded on stop in time")
            }
        }
    }
}

/// Sleeps until `at`, or for ever when `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use crate::api::lifecycle::{lifecycle_event, SCAN_BATCH};
    use std::sync::RwLock;

    use axum::extract::State as Extract;
    use axum::http::{HeaderMap, StatusCode};

    use super::*;
    use crate::scheduler::audit::{AuditKind, AuditRecord};
    use crate::scheduler::{Changes, Request};

    const T0: i64 = 1_767_225_600_000;

    /// An audit record standing for a successful client call.
    fn call(method: &str, job: &str) -> AuditRecord {
        AuditRecord {
            kind: Some(AuditKind::Call),
            principal: "ci".into(),
            method: method.into(),
            resource: job.into(),
            job_id: job.into(),
            ..AuditRecord::default()
        }
    }

    /// An audit record standing for a run changing status.
    fn run(method: &str, job: &str, run_id: u64) -> AuditRecord {
        AuditRecord {
            kind: Some(AuditKind::Execution),
            principal: "kairos".into(),
            method: method.into(),
            resource: format!("run {run_id}"),
            job_id: job.into(),
            run_id,
            ..AuditRecord::default()
        }
    }

    /// A state machine with its audit head published, as a node has.
    struct TestHost {
        state: RwLock<State>,
        head: watch::Sender<u64>,
        status: SinkStatus,
        index: std::sync::atomic::AtomicU64,
        /// Every `AckSink` applied: (sink, position).
        acks: Mutex<Vec<(String, u64)>>,
    }

    impl TestHost {
        fn new() -> Arc<TestHost> {
            Arc::new(TestHost {
                state: RwLock::default(),
                head: watch::channel(0).0,
                status: SinkStatus::default(),
                index: Default::default(),
                acks: Mutex::default(),
            })
        }

        fn apply(&self, command: Command) -> crate::scheduler::CommandResult {
            let index = self.index.fetch_add(1, Ordering::Relaxed) + 1;
            let request = Request {
                at_ms: T0 + index as i64,
                principal: "t".into(),
                command,
                write_id: None,
            };
            let (result, head) = {
                let mut state = self.state.write().unwrap();
                let result = state.apply(index, &request, &mut Changes::default());
                (result, state.audit().head().seq)
            };
            self.head.send_if_modified(|h| std::mem::replace(h, head) != head);
            result
        }

        fn record(&self, records: Vec<AuditRecord>) {
            self.apply(Command::RecordAudit { records }).unwrap();
        }

        fn create_sink(&self, name: &str, url: &str, kinds: &[i32], job: &str, after: u64) -> SinkDef {
            let sink = SinkDef {
                name: name.into(),
                url: url.into(),
                kinds: kinds.to_vec(),
                job: job.into(),
                delivered: after,
                ..SinkDef::default()
            };
            match self.apply(Command::CreateSink { sink }).unwrap() {
                crate::scheduler::Response::Sink(sink) => *sink,
                other => panic!("{other:?}"),
            }
        }

        fn head(&self) -> u64 {
            self.state.read().unwrap().audit().head().seq
        }

        fn delivered(&self, name: &str) -> Option<u64> {
            self.state.read().unwrap().sink(name).map(|s| s.delivered)
        }
    }

    impl SinkHost for TestHost {
        fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
            f(&self.state.read().unwrap())
        }

        fn subscribe_head(&self) -> watch::Receiver<u64> {
            self.head.subscribe()
        }

        fn status(&self) -> &SinkStatus {
            &self.status
        }

        async fn ack(&self, name: &str, position: u64) -> Result<()> {
            self.apply(Command::AckSink {
                name: name.into(),
                position,
            })?;
            self.acks.lock().unwrap().push((name.into(), position));
            Ok(())
        }

        async fn caught_up(&self) {}
    }

    /// A webhook recording what it accepts and refusing on demand.
    #[derive(Default)]
    struct Receiver {
        /// Accepted: (position header, sink header, body).
        accepted: Mutex<Vec<(u64, String, serde_json::Value)>>,
        /// Positions of refused requests, in order.
        refused: Mutex<Vec<u64>>,
        /// Answer 503 to this many more requests.
        refuse: AtomicU32,
        /// Never answer while set.
        hang: AtomicBool,
        /// Requests that arrived while `hang` was set.
        hung: AtomicU32,
    }

    impl Receiver {
        fn positions(&self) -> Vec<u64> {
            self.accepted.lock().unwrap().iter().map(|(p, _, _)| *p).collect()
        }
    }

    async fn receive(
        Extract(receiver): Extract<Arc<Receiver>>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> (StatusCode, &'static str) {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let position: u64 = header("kairos-event-position").parse().unwrap_or(0);
        if receiver.hang.load(Ordering::SeqCst) {
            receiver.hung.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        let refuse = receiver
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            receiver.refused.lock().unwrap().push(position);
            return (StatusCode::SERVICE_UNAVAILABLE, "busy\n");
        }
        assert_eq!(header("content-type"), "application/json");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
        receiver
            .accepted
            .lock()
            .unwrap()
            .push((position, header("kairos-sink"), body));
        (StatusCode::OK, "ok")
    }

    /// A receiver on a free loopback port: its URL.
    async fn start_receiver() -> (String, Arc<Receiver>) {
        let receiver = Arc::new(Receiver::default());
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, receiver)
    }

    /// Waits (bounded) until `done` holds.
    async fn until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn the_back_off_doubles_up_to_its_ceiling_and_starts_over_after_a_success() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..10).map(|_| backoff.next_delay().as_millis() as u64).collect();
        assert_eq!(
            delays,
            [200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 30_000, 30_000]
        );
        backoff.reset();
        assert_eq!(backoff.next_delay(), BACKOFF_FIRST);
    }

    #[test]
    fn progress_is_recorded_at_most_once_a_second_unless_many_events_went() {
        let t = Instant::now();
        let mut progress = Progress::new(10);
        assert!(!progress.pending());
        assert!(!progress.due(t));
        assert_eq!(progress.deadline(t), None);

        // The first progress is recorded at once.
        progress.delivered(12);
        assert!(progress.due(t));
        assert_eq!(progress.deadline(t), Some(t));
        progress.proposing(t);
        progress.recorded(12);
        assert!(!progress.pending());

        // Then not again within a second...
        progress.delivered(13);
        progress.skip_to(20);
        assert_eq!(progress.position, 20);
        assert!(!progress.due(t + Duration::from_millis(999)));
        assert_eq!(
            progress.deadline(t + Duration::from_millis(5)),
            Some(t + ACK_INTERVAL)
        );
        assert!(progress.due(t + ACK_INTERVAL));
        // ... unless ACK_EVERY events were delivered since.
        let last = 21 + ACK_EVERY - 2;
        for p in 21..last {
            progress.delivered(p);
            assert!(!progress.due(t), "after {} events", p - 19);
        }
        progress.delivered(last);
        assert!(progress.due(t), "after {ACK_EVERY} events");

        // A failed record is retried a second later, not at once.
        progress.proposing(t);
        assert!(!progress.due(t + Duration::from_millis(10)));
        assert!(progress.due(t + ACK_INTERVAL));

        // Positions never move back.
        progress.skip_to(3);
        progress.recorded(3);
        assert_eq!((progress.position, progress.recorded), (last, 12));
    }

    #[test]
    fn the_next_step_delivers_matching_events_and_scans_past_the_rest() {
        let host = TestHost::new();
        let sink = host.create_sink(
            "ci",
            "http://127.0.0.1:9/hook",
            &[
                pb::LifecycleEventKind::JobCreated as i32,
                pb::LifecycleEventKind::RunChanged as i32,
            ],
            "ci-*",
            0,
        );
        // Created at the newest position: nothing before counts.
        assert_eq!(sink.delivered, 0);
        let start = host.head();
        host.record(vec![
            call("CreateJob", "ci-a"),       // start + 1: matches
            call("CreateJob", "web"),        // + 2: another job
            call("PauseJob", "ci-a"),        // + 3: another kind
            run("run.succeeded", "ci-a", 7), // + 4: matches
            call("GetJob", "ci-a"),          // + 5: not a lifecycle event
        ]);
        let filter = sink_filter(&sink);
        let state = host.state.read().unwrap();
        let Step::Deliver {
            after,
            events,
            scanned,
        } = next_step(&state, &sink, start, &filter)
        else {
            panic!("a delivery step");
        };
        assert_eq!((after, scanned), (start, start + 5));
        let got: Vec<(u64, i32, String)> = events
            .iter()
            .map(|e| (e.position, e.kind, e.job_id.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    start + 1,
                    pb::LifecycleEventKind::JobCreated as i32,
                    "ci-a".into()
                ),
                (
                    start + 4,
                    pb::LifecycleEventKind::RunChanged as i32,
                    "ci-a".into()
                ),
            ]
        );
        assert_eq!(events[1].run_status, pb::RunStatus::Succeeded as i32);
        // Caught up: nothing more.
        assert_eq!(
            next_step(&state, &sink, start + 5, &filter),
            Step::Deliver {
                after: start + 5,
                events: vec![],
                scanned: start + 5
            }
        );
    }

    #[test]
    fn the_next_step_starts_after_a_newer_recorded_position_and_scans_in_batches() {
        let host = TestHost::new();
        let sink = host.create_sink("all", "http://127.0.0.1:9/hook", &[], "", 0);
        let start = host.head();
        host.record(
            (0..SCAN_BATCH + 5)
                .map(|i| call("CreateJob", &format!("j{i}")))
                .collect(),
        );
        // Another leader recorded start + 3.
        host.apply(Command::AckSink {
            name: "all".into(),
            position: start + 3,
        })
        .unwrap();
        let filter = sink_filter(&sink);
        let state = host.state.read().unwrap();
        let Step::Deliver {
            after,
            events,
            scanned,
        } = next_step(&state, &sink, start, &filter)
        else {
            panic!("a delivery step");
        };
        assert_eq!(after, start + 3);
        assert_eq!(scanned, start + 3 + SCAN_BATCH as u64);
        assert_eq!(events.len(), SCAN_BATCH);
        assert_eq!(events[0].position, start + 4);
        // Our own position, when ahead, wins.
        let Step::Deliver { after, events, .. } = next_step(&state, &sink, start + 1000, &filter) else {
            panic!("a delivery step");
        };
        assert_eq!(after, start + 1000);
        assert_eq!(events.len(), SCAN_BATCH + 5 - 1000);
    }

    #[test]
    fn a_deleted_or_replaced_sink_is_gone() {
        let host = TestHost::new();
        let sink = host.create_sink("s", "http://127.0.0.1:9/a", &[], "", 0);
        let filter = sink_filter(&sink);
        host.apply(Command::DeleteSink { name: "s".into() }).unwrap();
        assert_eq!(
            next_step(&host.state.read().unwrap(), &sink, 0, &filter),
            Step::Gone
        );
        // The same name, another URL: not the sink the task delivers to.
        host.create_sink("s", "http://127.0.0.1:9/b", &[], "", 0);
        assert_eq!(
            next_step(&host.state.read().unwrap(), &sink, 0, &filter),
            Step::Gone
        );
    }

    #[test]
    fn a_position_dropped_by_retention_continues_from_the_oldest_kept() {
        let host = TestHost::new();
        let sink = host.create_sink("slow", "http://127.0.0.1:9/hook", &[], "", 1);
        host.state.write().unwrap().set_audit_retain(10);
        host.record((0..25).map(|i| call("CreateJob", &format!("j{i}"))).collect());
        let state = host.state.read().unwrap();
        let oldest = state.audit().anchor().seq;
        assert_eq!(oldest, state.audit().head().seq - 10);
        let filter = sink_filter(&sink);
        assert_eq!(
            next_step(&state, &sink, 1, &filter),
            Step::Dropped { after: 1, oldest }
        );
        let message = dropped_message(1, oldest);
        assert!(message.contains("--audit-retain"), "{message}");
        let Step::Deliver { events, .. } = next_step(&state, &sink, oldest, &filter) else {
            panic!("a delivery step");
        };
        assert_eq!(events.len(), 10);
        assert_eq!(events[0].position, oldest + 1);
    }

    #[test]
    fn a_request_carries_the_event_as_protobuf_json_and_the_headers() {
        let host = TestHost::new();
        let sink = host.create_sink("lake", "http://127.0.0.1:9/hook", &[], "", 0);
        host.record(vec![call("CreateJob", "nightly")]);
        let event = lifecycle_event(
            &host.state.read().unwrap(),
            host.state.read().unwrap().audit().after(0).last().unwrap(),
        )
        .unwrap();
        let client = http_client().unwrap();
        let built = request(&client, &sink, &event).unwrap().build().unwrap();
        assert_eq!(built.method(), reqwest::Method::POST);
        assert_eq!(built.url().as_str(), "http://127.0.0.1:9/hook");
        assert_eq!(built.timeout(), Some(&REQUEST_TIMEOUT));
        let header = |name: &str| built.headers().get(name).unwrap().to_str().unwrap().to_string();
        assert_eq!(header("kairos-event-position"), event.position.to_string());
        assert_eq!(header("kairos-sink"), "lake");
        assert_eq!(header("content-type"), "application/json");
        let body: serde_json::Value =
            serde_json::from_slice(built.body().unwrap().as_bytes().unwrap()).unwrap();
        assert_eq!(body["position"], event.position.to_string());
        assert_eq!(body["kind"], "LIFECYCLE_EVENT_KIND_JOB_CREATED");
        assert_eq!(body["jobId"], "nightly");
        assert_eq!(body["method"], "CreateJob");
        assert_eq!(body["principal"], "ci");
        let parsed: pb::LifecycleEvent = serde_json::from_value(body).unwrap();
        assert_eq!(parsed, event);
    }

    #[test]
    fn an_error_answer_names_its_status_and_the_start_of_its_body() {
        assert_eq!(
            status_error(reqwest::StatusCode::SERVICE_UNAVAILABLE, b""),
            "HTTP 503 Service Unavailable"
        );
        assert_eq!(
            status_error(reqwest::StatusCode::BAD_REQUEST, b"  no such\nthing \n"),
            "HTTP 400 Bad Request: no such thing"
        );
        let long = vec![b'x'; 1000];
        assert_eq!(
            status_error(reqwest::StatusCode::BAD_GATEWAY, &long).len(),
            "HTTP 502 Bad Gateway: ".len() + ERROR_BODY_BYTES
        );
    }

    #[test]
    fn the_status_counts_failures_and_keeps_the_last_error() {
        let status = SinkStatus::default();
        assert_eq!((status.last_error("a"), status.failures("a")), (String::new(), 0));
        status.failed("a", "HTTP 503".into());
        status.failed("a", "connection refused".into());
        assert_eq!(status.last_error("a"), "connection refused");
        assert_eq!(status.failures("a"), 2);
        status.set_error("a", None);
        assert_eq!((status.last_error("a"), status.failures("a")), (String::new(), 2));
        status.failed("a", "HTTP 500".into());
        status.clear_errors();
        assert_eq!((status.last_error("a"), status.failures("a")), (String::new(), 3));
        status.forget("a");
        assert_eq!(status.failures("a"), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_matching_event_is_delivered_in_order_and_progress_is_recorded() {
        let (url, receiver) = start_receiver().await;
        let host = TestHost::new();
        let kinds = [
            pb::LifecycleEventKind::JobCreated as i32,
            pb::LifecycleEventKind::JobDeleted as i32,
        ];
        host.create_sink("ci", &url, &kinds, "ci-*", 0);
        let start = host.head();
        let delivery = SinkDelivery::start(host.clone());
        host.record(vec![
            call("CreateJob", "ci-a"),
            call("CreateJob", "web"),
            call("PauseJob", "ci-a"),
            call("CreateJob", "ci-b"),
        ]);
        until("two events", Duration::from_secs(10), || {
            receiver.positions().len() >= 2
        })
        .await;
        // Appended later: the delivery wakes on the new head.
        host.record(vec![call("DeleteJob", "ci-b"), call("CreateJob", "web-2")]);
        until("three events", Duration::from_secs(10), || {
            receiver.positions().len() >= 3
        })
        .await;
        // Idle: what was delivered and scanned is recorded within a second or so.
        let head = host.head();
        until("the position recorded", Duration::from_secs(10), || {
            host.delivered("ci") == Some(head)
        })
        .await;
        assert_eq!(receiver.positions(), [start + 1, start + 4, start + 5]);
        let accepted = receiver.accepted.lock().unwrap().clone();
        let jobs: Vec<(&str, &str)> = accepted
            .iter()
            .map(|(_, _, body)| (body["kind"].as_str().unwrap(), body["jobId"].as_str().unwrap()))
            .collect();
        assert_eq!(
            jobs,
            [
                ("LIFECYCLE_EVENT_KIND_JOB_CREATED", "ci-a"),
                ("LIFECYCLE_EVENT_KIND_JOB_CREATED", "ci-b"),
                ("LIFECYCLE_EVENT_KIND_JOB_DELETED", "ci-b"),
            ]
        );
        assert!(accepted.iter().all(|(_, sink, _)| sink == "ci"));
        // Records only move forward, and there are few of them.
        let acks: Vec<u64> = host.acks.lock().unwrap().iter().map(|(_, p)| *p).collect();
        assert!(acks.windows(2).all(|w| w[0] < w[1]), "{acks:?}");
        assert!(acks.len() <= 4, "{acks:?}");
        assert_eq!(host.status.last_error("ci"), "");
        delivery.stop(Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_event_is_retried_until_accepted_and_never_skipped() {
        let (url, receiver) = start_receiver().await;
        receiver.refuse.store(3, Ordering::SeqCst);
        let host = TestHost::new();
        host.create_sink("flaky", &url, &[], "", 0);
        let start = host.head();
        let delivery = SinkDelivery::start(host.clone());
        host.record(vec![call("CreateJob", "a"), call("CreateJob", "b")]);
        until("a refusal", Duration::from_secs(10), || {
            !receiver.refused.lock().unwrap().is_empty()
        })
        .await;
        until("the error kept", Duration::from_secs(10), || {
            host.status.last_error("flaky").contains("HTTP 503")
        })
        .await;
        until("both events", Duration::from_secs(20), || {
            receiver.positions().len() >= 2
        })
        .await;
        assert_eq!(*receiver.refused.lock().unwrap(), [start + 1; 3]);
        assert_eq!(receiver.positions(), [start + 1, start + 2]);
        assert_eq!(host.status.failures("flaky"), 3);
        assert_eq!(host.status.last_error("flaky"), "", "a success clears the error");
        delivery.stop(Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopping_is_prompt_with_a_request_in_flight_and_records_the_position() {
        let (url, receiver) = start_receiver().await;
        let host = TestHost::new();
        host.create_sink("slow", &url, &[], "", 0);
        let start = host.head();
        let delivery = SinkDelivery::start(host.clone());
        host.record(vec![call("CreateJob", "a")]);
        until("the first event", Duration::from_secs(10), || {
            receiver.positions().len() == 1
        })
        .await;
        // The first progress record goes at once; the next waits a second.
        until("the first record", Duration::from_secs(10), || {
            host.delivered("slow") == Some(start + 1)
        })
        .await;
        host.record(vec![call("UpdateJob", "a")]);
        until("the second event", Duration::from_secs(10), || {
            receiver.positions().len() == 2
        })
        .await;
        receiver.hang.store(true, Ordering::SeqCst);
        host.record(vec![call("DeleteJob", "a")]);
        until("a request in flight", Duration::from_secs(10), || {
            receiver.hung.load(Ordering::SeqCst) == 1
        })
        .await;
        let stopping = Instant::now();
        delivery.stop(Duration::from_secs(5)).await;
        assert!(
            stopping.elapsed() < STOP_ACK_TIMEOUT + Duration::from_millis(500),
            "stopped in {:?}",
            stopping.elapsed()
        );
        // Recorded on stop: what the receiver acknowledged, not the event in flight.
        assert_eq!(host.delivered("slow"), Some(start + 2));
        assert_eq!(receiver.positions(), [start + 1, start + 2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sinks_created_while_leading_are_delivered_and_deleted_ones_stop() {
        let (url, receiver) = start_receiver().await;
        let host = TestHost::new();
        let delivery = SinkDelivery::start(host.clone());
        host.create_sink("late", &url, &[], "", 0);
        let start = host.head();
        host.record(vec![call("CreateJob", "a")]);
        until("the event", Duration::from_secs(10), || {
            receiver.positions() == [start + 1]
        })
        .await;
        host.apply(Command::DeleteSink { name: "late".into() }).unwrap();
        host.record(vec![call("CreateJob", "b")]);
        // A sink created next (to another receiver) shows the delivery is
        // still running; the deleted one gets nothing more.
        let (other_url, other) = start_receiver().await;
        host.create_sink("other", &other_url, &[], "", 0);
        let other_start = host.head();
        host.record(vec![call("CreateJob", "c")]);
        until("the other sink's event", Duration::from_secs(10), || {
            other.positions() == [other_start + 1]
        })
        .await;
        assert_eq!(receiver.positions(), [start + 1], "nothing after the delete");
        delivery.stop(Duration::from_secs(5)).await;
    }
}
