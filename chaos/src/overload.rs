//! The `overload` fault: more requests than the cluster can serve, for a
//! few seconds, and what the cluster must do about it.
//!
//! The flood is open-loop: requests go out at [`RATE_PER_S`] whatever the
//! answers, round-robin over the nodes, for 3–5 s (by seed) — well beyond
//! what three nodes on a small machine commit, so queues fill. It mixes
//! writes of two kinds: event publishes on a topic no job listens to (the
//! event-trigger path, without runs the checkers would have to account
//! for) and creates of jobs that never fire, each deleted again at once.
//! Meanwhile one node is asked for [`EXTRA_WATCHES`] more watch streams
//! than its `--max-watches` ([`MAX_WATCHES`] in these rounds); every node
//! runs with `--max-requests` [`MAX_REQUESTS`], so the flood meets that
//! bound too. At most
//! [`MAX_IN_FLIGHT`] flood requests wait for answers at a time (the
//! harness's own memory bound); a request that finds them all taken is not
//! sent and is counted.
//!
//! What the cluster must do; what it did not is the fault's misbehaviour,
//! reported by the checker `overload_answered`:
//!
//! - answer every request within [`ANSWER_WITHIN`] with success, or refuse
//!   it with `RESOURCE_EXHAUSTED` or `UNAVAILABLE` (a create or delete may
//!   also meet `ALREADY_EXISTS`/`NOT_FOUND`); anything else (`INTERNAL`, a
//!   reset connection) is wrong;
//! - serve no more watches than the bound, refusing the rest with
//!   `RESOURCE_EXHAUSTED`;
//! - refuse calls past `--max-requests`: a node that had more than twice
//!   [`MAX_REQUESTS`] flood calls waiting at once (as the harness counts
//!   them) yet refused none by that bound has no bound;
//! - serve a write again within [`RECOVER_WITHIN`] of the flood's end.
//!
//! The leader and its term must not change (`no_needless_elections`
//! watches this fault): heartbeats must not starve. The nodes' resident
//! memory before and after (process mode) is reported in the fault's
//! detail, not judged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kairos::api::convert::ms_timestamp;
use kairos::proto as pb;
use rand::rngs::StdRng;
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::client::Clients;
use crate::runtime::{NodeId, Runtime};

/// `--max-watches` of every node in a round with `overload`.
pub const MAX_WATCHES: usize = 64;
/// `--max-requests` of every node in a round with `overload`: well above
/// what the workload, settling and the checkers ask of a node at once,
/// well below the flood's [`MAX_IN_FLIGHT`] spread over the nodes.
pub const MAX_REQUESTS: usize = 128;
/// Watch streams the flood asks one node for beyond [`MAX_WATCHES`].
const EXTRA_WATCHES: usize = 32;
/// Flood requests sent per second, across the nodes.
const RATE_PER_S: u64 = 3_000;
/// Flood requests waiting for an answer at most.
const MAX_IN_FLIGHT: usize = 1_500;
/// How long a flood request may wait for its answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// How soon after the flood a write must succeed again.
const RECOVER_WITHIN: Duration = Duration::from_secs(30);
/// The topic of the flood's events: no job of the workload listens to it.
const TOPIC: &str = "flood.load";
/// The `owner_service` of the flood's jobs.
const OWNER: &str = "chaos-flood";
/// Distinct wrong answers kept for the report.
const WRONG_KEPT: usize = 5;

/// What one flood did: the fault's detail, and what the cluster did wrong.
pub struct Flood {
    pub detail: String,
    pub misbehaviour: Option<String>,
}

/// The answers to the flood's requests.
#[derive(Default)]
struct Tally {
    ok: u64,
    /// `RESOURCE_EXHAUSTED` or `UNAVAILABLE`.
    refused: u64,
    /// `ALREADY_EXISTS`, `NOT_FOUND`, `ABORTED`: a create or delete that
    /// met the state, answered properly.
    state: u64,
    /// No answer within [`ANSWER_WITHIN`].
    unanswered: u64,
    /// Anything else, by code and message (the first [`WRONG_KEPT`]).
    wrong: BTreeMap<String, u64>,
    /// ms each successful request took.
    ok_ms: Vec<u64>,
    /// The slowest refusal, ms.
    slowest_refusal_ms: u64,
    /// Requests not sent: [`MAX_IN_FLIGHT`] were waiting.
    not_sent: u64,
    /// Refusals naming `--max-requests`.
    by_request_bound: u64,
}

impl Tally {
    fn record(&mut self, since: Instant, answer: Result<(), Status>) {
        let ms = since.elapsed().as_millis() as u64;
        match answer {
            Ok(()) => {
                self.ok += 1;
                self.ok_ms.push(ms);
            }
            Err(status) => match status.code() {
                Code::ResourceExhausted | Code::Unavailable => {
                    self.refused += 1;
                    if status.message().contains("--max-requests") {
                        self.by_request_bound += 1;
                    }
                    self.slowest_refusal_ms = self.slowest_refusal_ms.max(ms);
                }
                Code::AlreadyExists | Code::NotFound | Code::Aborted => self.state += 1,
                Code::DeadlineExceeded | Code::Cancelled => self.unanswered += 1,
                code => {
                    let key = format!("{code:?}: {}", status.message());
                    if self.wrong.len() < WRONG_KEPT || self.wrong.contains_key(&key) {
                        *self.wrong.entry(key).or_default() += 1;
                    } else {
                        *self.wrong.entry("(others)".into()).or_default() += 1;
                    }
                }
            },
        }
    }

    fn sent(&self) -> u64 {
        self.ok + self.refused + self.state + self.unanswered + self.wrong.values().sum::<u64>()
    }

    fn ok_p99_ms(&mut self) -> u64 {
        self.ok_ms.sort_unstable();
        match self.ok_ms.len() {
            0 => 0,
            n => self.ok_ms[(n * 99 / 100).min(n - 1)],
        }
    }
}

/// Flood calls waiting for their answer, per node (by index), and the
/// most there ever were at one node.
struct Waiting {
    now: Vec<AtomicUsize>,
    most: AtomicUsize,
}

/// One call counted as waiting until dropped.
struct Entered<'a> {
    count: &'a AtomicUsize,
}

impl Waiting {
    fn new(nodes: usize) -> Waiting {
        Waiting {
            now: (0..nodes).map(|_| AtomicUsize::new(0)).collect(),
            most: AtomicUsize::new(0),
        }
    }

    fn enter(&self, node: usize) -> Entered<'_> {
        let count = &self.now[node];
        let now = count.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        Entered { count }
    }

    fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How the watch streams asked of one node were answered.
#[derive(Default)]
struct Watches {
    served: usize,
    refused: usize,
    wrong: BTreeMap<String, u64>,
}

/// Floods the cluster (see the module notes); returns once the flood's
/// requests are answered, the cluster served a write again (or
/// [`RECOVER_WITHIN`] passed) and the flood's jobs are gone.
pub async fn flood(runtime: &Runtime, clients: &Clients, rng: &mut StdRng) -> Flood {
    let ids = clients.ids();
    let hold = Duration::from_millis(rng.gen_range(3_000..5_000));
    let nonce: u32 = rng.gen();
    let watch_node = ids[rng.gen_range(0..ids.len())];
    let rss_before: Vec<Option<u64>> = ids.iter().map(|&id| runtime.rss_kib(id)).collect();

    let flood_end = Instant::now() + hold;
    let watches = tokio::spawn(ask_for_watches(clients.clone(), watch_node, flood_end));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let waiting = Arc::new(Waiting::new(ids.len()));
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut requests = JoinSet::new();
    let total = RATE_PER_S * hold.as_millis() as u64 / 1_000;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0u64;
    while sent < total && Instant::now() < flood_end {
        tick.tick().await;
        for _ in 0..RATE_PER_S / 1_000 {
            sent += 1;
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tally.lock().expect("tally").not_sent += 1;
                continue;
            };
            let (clients, tally, waiting) = (clients.clone(), tally.clone(), waiting.clone());
            let index = sent as usize % ids.len();
            let node = ids[index];
            let name = format!("flood-{nonce:08x}-{sent}");
            requests.spawn(async move {
                let _slot = slot;
                let _waiting = waiting.enter(index);
                match sent % 2 {
                    0 => {
                        let since = Instant::now();
                        let answer = publish(&clients, node, &name).await;
                        tally.lock().expect("tally").record(since, answer);
                    }
                    _ => {
                        let since = Instant::now();
                        let answer = create(&clients, node, &name).await;
                        tally.lock().expect("tally").record(since, answer);
                        let since = Instant::now();
                        let answer = delete(&clients, node, &name).await;
                        tally.lock().expect("tally").record(since, answer);
                    }
                }
            });
        }
    }
    // Each request ends by its deadline.
    while requests.join_next().await.is_some() {}
    let flood_ms = hold.as_millis();
    let watches = watches.await.unwrap_or_default();
    let recovered_ms = served_again(clients, &ids, nonce).await;
    remove_flood_jobs(clients, &ids).await;
    let rss_after: Vec<Option<u64>> = ids.iter().map(|&id| runtime.rss_kib(id)).collect();

    let mut tally = Arc::try_unwrap(tally)
        .map(|m| m.into_inner().expect("tally"))
        .unwrap_or_default();
    let mut wrong = Vec::new();
    if !tally.wrong.is_empty() {
        wrong.push(format!("answered flood requests wrongly: {:?}", tally.wrong));
    }
    if tally.unanswered > 0 {
        wrong.push(format!(
            "{} flood requests not answered within {ANSWER_WITHIN:?}",
            tally.unanswered
        ));
    }
    let most_waiting = waiting.most();
    if tally.by_request_bound == 0 && most_waiting > 2 * MAX_REQUESTS {
        wrong.push(format!(
            "a node had {most_waiting} flood calls waiting at once and refused none by its bound: \
             --max-requests {MAX_REQUESTS} is not kept"
        ));
    }
    if watches.served > MAX_WATCHES {
        wrong.push(format!(
            "node {watch_node} served {} watch streams, over --max-watches {MAX_WATCHES}",
            watches.served
        ));
    }
    if !watches.wrong.is_empty() {
        wrong.push(format!(
            "node {watch_node} answered watches wrongly: {:?}",
            watches.wrong
        ));
    }
    if recovered_ms.is_none() {
        wrong.push(format!(
            "no write succeeded within {RECOVER_WITHIN:?} after the flood"
        ));
    }
    let memory = ids
        .iter()
        .zip(rss_before.iter().zip(&rss_after))
        .filter_map(|(id, (before, after))| Some(format!("{id}: {}→{}", (*before)? / 1024, (*after)? / 1024)))
        .collect::<Vec<_>>();
    let ok_p99_ms = tally.ok_p99_ms();
    let detail = format!(
        "{} requests in {:.1} s ({} ok, p99 {} ms; {} refused ({} by --max-requests), slowest {} ms; \
         {} met the state; {} not sent, {MAX_IN_FLIGHT} waiting; up to {most_waiting} at one node); \
         node {watch_node}: {} watches served, {} refused; a write served {} after{}",
        tally.sent(),
        flood_ms as f64 / 1000.0,
        tally.ok,
        ok_p99_ms,
        tally.refused,
        tally.by_request_bound,
        tally.slowest_refusal_ms,
        tally.state,
        tally.not_sent,
        watches.served,
        watches.refused,
        recovered_ms.map_or("never".to_string(), |ms| format!("{ms} ms")),
        match memory.is_empty() {
            true => String::new(),
            false => format!("; RSS MiB {}", memory.join(", ")),
        },
    );
    Flood {
        detail,
        misbehaviour: (!wrong.is_empty()).then(|| wrong.join("; ")),
    }
}

/// A request of the flood, due within [`ANSWER_WITHIN`].
fn due<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(ANSWER_WITHIN);
    request
}

/// Waits for `call` at most a little longer than its deadline (a server
/// that never answers counts as unanswered, not as a stuck harness).
async fn bounded<T>(call: impl std::future::Future<Output = Result<T, Status>>) -> Result<(), Status> {
    match tokio::time::timeout(ANSWER_WITHIN + Duration::from_secs(1), call).await {
        Ok(answer) => answer.map(|_| ()),
        Err(_) => Err(Status::deadline_exceeded("no answer (harness timeout)")),
    }
}

async fn publish(clients: &Clients, node: NodeId, key: &str) -> Result<(), Status> {
    let request = due(pb::PublishEventRequest {
        topic: TOPIC.into(),
        payload: b"{}".to_vec(),
        idempotency_key: key.into(),
        ..Default::default()
    });
    bounded(clients.events(node).publish_event(request)).await
}

/// A job that never fires in the round: one shot a day ahead.
fn job(id: &str) -> pb::ScheduledJob {
    let at = chrono::Utc::now().timestamp_millis() + 86_400_000;
    pb::ScheduledJob {
        id: id.into(),
        r#type: "http".into(),
        owner_service: OWNER.into(),
        schedule_spec: Some(pb::ScheduleSpec {
            kind: Some(pb::schedule_spec::Kind::At(ms_timestamp(at))),
        }),
        payload: br#"{"url": "http://127.0.0.1:9/flood", "method": "POST"}"#.to_vec(),
        ..Default::default()
    }
}

async fn create(clients: &Clients, node: NodeId, id: &str) -> Result<(), Status> {
    let request = due(pb::CreateJobRequest {
        request_id: id.into(),
        job: Some(job(id)),
    });
    bounded(clients.jobs(node).create_job(request)).await
}

async fn delete(clients: &Clients, node: NodeId, id: &str) -> Result<(), Status> {
    let request = due(pb::DeleteJobRequest {
        id: id.into(),
        ..Default::default()
    });
    bounded(clients.jobs(node).delete_job(request)).await
}

/// Asks `node` for [`MAX_WATCHES`] + [`EXTRA_WATCHES`] event watches at
/// once and holds the ones served until `until`.
async fn ask_for_watches(clients: Clients, node: NodeId, until: Instant) -> Watches {
    let asked = (0..MAX_WATCHES + EXTRA_WATCHES).map(|_| {
        let mut events = clients.events(node);
        async move {
            let request = tonic::Request::new(pb::WatchEventsRequest {
                from_now: true,
                ..Default::default()
            });
            match tokio::time::timeout(ANSWER_WITHIN, events.watch_events(request)).await {
                Ok(answer) => answer.map(|stream| stream.into_inner()),
                Err(_) => Err(Status::deadline_exceeded("watch not answered")),
            }
        }
    });
    let mut watches = Watches::default();
    let mut held = Vec::new();
    for answer in futures::future::join_all(asked).await {
        match answer {
            Ok(stream) => {
                watches.served += 1;
                held.push(stream);
            }
            Err(status) if status.code() == Code::ResourceExhausted => watches.refused += 1,
            Err(status) => {
                *watches
                    .wrong
                    .entry(format!("{:?}: {}", status.code(), status.message()))
                    .or_default() += 1
            }
        }
    }
    tokio::time::sleep_until(until).await;
    drop(held);
    watches
}

/// ms after the flood until a publish through some node succeeded, trying
/// each node in turn; `None` if none did within [`RECOVER_WITHIN`].
async fn served_again(clients: &Clients, ids: &[NodeId], nonce: u32) -> Option<u64> {
    let since = Instant::now();
    let mut attempt = 0usize;
    while since.elapsed() < RECOVER_WITHIN {
        let node = ids[attempt % ids.len()];
        if publish(clients, node, &format!("flood-{nonce:08x}-after-{attempt}"))
            .await
            .is_ok()
        {
            return Some(since.elapsed().as_millis() as u64);
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Deletes the flood's jobs whose delete was refused (bounded: a few
/// passes). A job left over never fires in the round; settling pauses it
/// like any other.
async fn remove_flood_jobs(clients: &Clients, ids: &[NodeId]) {
    for pass in 0..5 {
        let node = ids[pass % ids.len()];
        let listed = clients
            .jobs(node)
            .list_jobs(due(pb::ListJobsRequest {
                page_size: 1_000,
                owner_service: OWNER.into(),
                consistency: pb::ReadConsistency::Linearizable as i32,
                ..Default::default()
            }))
            .await;
        let Ok(listed) = listed else { continue };
        let left: Vec<String> = listed.into_inner().jobs.into_iter().map(|j| j.id).collect();
        if left.is_empty() {
            return;
        }
        for id in left {
            let _ = delete(clients, node, &id).await;
        }
    }
}
