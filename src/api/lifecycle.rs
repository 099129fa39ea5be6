//! Lifecycle events: every change a platform follows — jobs created,
//! updated, deleted, paused, resumed; runs created and changing status;
//! events published; ACL changes — as one ordered, resumable stream.
//!
//! The stream *is* the audit log, read another way. Every such change
//! already appends an entry to the replicated, hash-chained audit log in
//! the same apply as the change itself (`scheduler::audit`), so the entry's
//! sequence number is a position that means the same on every node, in
//! apply order. [`lifecycle_event`] maps an entry to the event it stands
//! for (or to nothing: denied calls, reads, heartbeats are not lifecycle
//! changes); [`EventFilter`] selects by kind, job glob and owner glob.
//!
//! A watch ([`watch_events`]) reads the applied audit log after its last
//! position, in batches under the state's read lock, and then waits for
//! the applied audit head to move (`StateHandle::subscribe_audit_head`,
//! subscribed before the first read so no change is missed). A client that
//! resumes after position P, on any node, gets every event after P exactly
//! once; a node that has not applied P yet simply has nothing after it to
//! send until it has.
//!
//! Retention: a node keeps the newest `--audit-retain` entries. Resuming
//! from a position older than what the node keeps fails `OUT_OF_RANGE`
//! naming the oldest position kept (as etcd's "compacted" watch error),
//! rather than skipping silently.
//!
//! Visibility: `event:watch` is checked for every event sent, with the
//! event's job as the resource, so a role limited to some jobs or owners
//! sees only those jobs' changes; events about no job (published events,
//! ACL changes) need an unscoped `event:watch`. A revoked credential ends
//! the stream `UNAUTHENTICATED`.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::convert::ms_timestamp;
use crate::proto as pb;
use crate::raft::state_machine::StateHandle;
use crate::scheduler::acl::{glob_match, AclTables, Credential, Permission, Resource};
use crate::scheduler::audit::{AuditEntry, AuditKind};
use crate::scheduler::State;

/// Audit entries examined per pass under the read lock.
pub const SCAN_BATCH: usize = 1000;
/// Events buffered for a slow client.
const STREAM_BUFFER: usize = 256;

/// The lifecycle event an audit entry stands for, if it stands for one.
pub fn lifecycle_event(state: &State, entry: &AuditEntry) -> Option<pb::LifecycleEvent> {
    use pb::LifecycleEventKind as K;
    let record = &entry.record;
    let kind = match record.kind? {
        AuditKind::Call if record.code == 0 => match record.method.as_str() {
            "CreateJob" => K::JobCreated,
            "UpdateJob" => K::JobUpdated,
            "DeleteJob" => K::JobDeleted,
            "PauseJob" => K::JobPaused,
            "ResumeJob" => K::JobResumed,
            _ => return None,
        },
        AuditKind::Execution => K::RunChanged,
        AuditKind::Event => K::EventPublished,
        AuditKind::Acl if record.code == 0 => K::AclChanged,
        _ => return None,
    };
    let owner = state
        .job(&record.job_id)
        .map(|j| j.spec.owner_service.clone())
        .unwrap_or_default();
    let (event_id, topic) = if kind == K::EventPublished {
        (record.resource.clone(), record.message.clone())
    } else {
        (String::new(), String::new())
    };
    Some(pb::LifecycleEvent {
        position: entry.seq,
        kind: kind as i32,
        time: Some(ms_timestamp(entry.at_ms)),
        principal: record.principal.clone(),
        job_id: record.job_id.clone(),
        owner,
        run_id: record.run_id,
        run_status: if kind == K::RunChanged {
            run_status_of(&record.method) as i32
        } else {
            0
        },
        event_id,
        topic,
        method: record.method.clone(),
        resource: record.resource.clone(),
        message: if kind == K::EventPublished {
            String::new()
        } else {
            record.message.clone()
        },
    })
}

/// The run status an execution entry's method (`run.succeeded`) names.
fn run_status_of(method: &str) -> pb::RunStatus {
    use pb::RunStatus as S;
    match method {
        "run.pending" | "run.retrying" => S::Pending,
        "run.queued" => S::Queued,
        "run.started" => S::Running,
        "run.succeeded" => S::Succeeded,
        "run.failed" => S::Failed,
        "run.timed_out" => S::TimedOut,
        "run.cancelled" => S::Cancelled,
        "run.skipped" => S::Skipped,
        _ => S::Unspecified,
    }
}

/// Which lifecycle events a watcher or sink wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Kinds (proto numbers); empty: every kind.
    pub kinds: Vec<i32>,
    /// Job id glob; empty: any (events about no job match only an empty glob).
    pub job: String,
    /// Owner glob; empty: any.
    pub owner: String,
}

impl EventFilter {
    /// True when `event` is wanted.
    pub fn matches(&self, event: &pb::LifecycleEvent) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&event.kind))
            && (self.job.is_empty() || (!event.job_id.is_empty() && glob_match(&self.job, &event.job_id)))
            && (self.owner.is_empty() || (!event.job_id.is_empty() && glob_match(&self.owner, &event.owner)))
    }
}

/// Refuses a kind number that is not a lifecycle event kind.
pub fn check_kinds(kinds: &[i32], field: &str) -> Result<(), Status> {
    for kind in kinds {
        match pb::LifecycleEventKind::try_from(*kind) {
            Ok(pb::LifecycleEventKind::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "{field}: {kind} is not a lifecycle event kind"
                )))
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Events after a position were dropped by audit retention: the oldest
/// position that can still be resumed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// Resume from here or later.
    pub oldest: u64,
}

impl Dropped {
    /// A watch's answer to resuming after `after`.
    fn to_status(self, after: u64) -> Status {
        let oldest = self.oldest;
        Status::out_of_range(format!(
            "position {after} is older than the oldest this node keeps ({oldest}, --audit-retain): \
             resume from {oldest} or later"
        ))
    }
}

/// Up to [`SCAN_BATCH`] audit entries after `after` as lifecycle events
/// matching `filter`, and the last position examined. `Err` when `after`
/// is older than what this node keeps.
pub fn events_after(
    state: &State,
    after: u64,
    filter: &EventFilter,
) -> Result<(Vec<pb::LifecycleEvent>, u64), Dropped> {
    let audit = state.audit();
    let oldest = audit.anchor().seq;
    if after < oldest {
        return Err(Dropped { oldest });
    }
    let mut last = after;
    let mut found = Vec::new();
    for entry in audit.after(after).take(SCAN_BATCH) {
        last = entry.seq;
        if let Some(event) = lifecycle_event(state, entry).filter(|e| filter.matches(e)) {
            found.push(event);
        }
    }
    Ok((found, last))
}

/// Who watches: each event is sent only if they may watch it now.
#[derive(Clone, Debug)]
pub struct Watcher {
    /// The caller's credential.
    pub credential: Credential,
}

impl Watcher {
    fn may_watch(&self, state: &State, event: &pb::LifecycleEvent) -> Result<bool, Status> {
        let subject = state
            .resolve(&self.credential, chrono::Utc::now().timestamp_millis())
            .map_err(super::to_status)?;
        let resource = if event.job_id.is_empty() {
            Resource::Cluster
        } else {
            Resource::job(&event.job_id, &event.owner)
        };
        Ok(subject.allows(Permission::EventWatch, &resource))
    }
}

/// Streams lifecycle events matching `filter` after `after` (after the
/// newest when `None`, beginning with a progress notice), until the client
/// goes away or `shutdown` fires (then `UNAVAILABLE`: resume elsewhere);
/// the stream holds `slot` until then (see [`super::limits`]).
pub fn watch_events(
    state: StateHandle,
    watcher: Watcher,
    filter: EventFilter,
    after: Option<u64>,
    slot: super::limits::Slot,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<pb::LifecycleEvent, Status>> {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    // Subscribe before the first read: a change applied in between moves the head.
    let head = state.subscribe_audit_head();
    tokio::spawn(async move {
        let _slot = slot;
        let gone = tx.clone();
        tokio::select! {
            _ = follow(state, head, watcher, filter, after, tx.clone()) => {}
            // The client went away while no event was flowing.
            () = gone.closed() => {}
            () = shutdown.cancelled() => {
                let _ = tx.try_send(Err(Status::unavailable("node shutting down")));
            }
        }
    });
    ReceiverStream::new(rx)
}

/// The stream ended: the client went away, or it was told why.
struct Ended;

/// Sends the events of a watch (see [`watch_events`]) until it ends.
async fn follow(
    state: StateHandle,
    mut head: tokio::sync::watch::Receiver<u64>,
    watcher: Watcher,
    filter: EventFilter,
    after: Option<u64>,
    tx: mpsc::Sender<Result<pb::LifecycleEvent, Status>>,
) -> Result<std::convert::Infallible, Ended> {
    let mut last = match after {
        Some(after) => after,
        None => {
            let newest = state.read().audit().head().seq;
            let notice = pb::LifecycleEvent {
                position: newest,
                ..pb::LifecycleEvent::default()
            };
            tx.send(Ok(notice)).await.map_err(|_| Ended)?;
            newest
        }
    };
    loop {
        head.mark_unchanged();
        let batch = {
            let state = state.read();
            events_after(&state, last, &filter)
                .map_err(|dropped| dropped.to_status(last))
                .and_then(|(events, scanned)| {
                    let visible = events
                        .into_iter()
                        .map(|e| watcher.may_watch(&state, &e).map(|ok| ok.then_some(e)))
                        .collect::<Result<Vec<_>, Status>>()?;
                    Ok((visible, scanned))
                })
        };
        let (events, scanned) = match batch {
            Ok(batch) => batch,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return Err(Ended);
            }
        };
        for event in events.into_iter().flatten() {
            tx.send(Ok(event)).await.map_err(|_| Ended)?;
        }
        if scanned > last {
            last = scanned;
            continue; // maybe more behind this batch
        }
        tokio::select! {
            changed = head.changed() => if changed.is_err() {
                let _ = tx.send(Err(Status::unavailable("node shutting down"))).await;
                return Err(Ended);
            },
            () = tx.closed() => return Err(Ended),
        }
    }
}
