//! The audit records a node makes outside the state machine — calls refused
//! before anything was proposed, allowed reads with `--audit-reads`, and
//! membership changes — proposed in batches as `RecordAudit` entries.
//!
//! Handlers hand records over without waiting ([`AuditRecorder::record`]);
//! one task per node drains them every [`FLUSH_INTERVAL`] and proposes what
//! it gathered as one entry. A flood cannot grow the log without bound:
//! within one flush window, records that differ only in time — same source,
//! principal, method, resource and outcome — are itemised up to
//! [`ITEMISED_PER_WINDOW`] times and the rest coalesced into one record
//! with their `count`. The hand-over queue is bounded too
//! ([`QUEUE_CAPACITY`]): records that find it full are counted, and the
//! next flush records how many were lost (`audit.overflow`), so nothing is
//! dropped silently.
//!
//! IMPLEMENTATION CAVEATS: these records are not in the same Raft entry as
//! what they describe (a refused call changed nothing; a membership change
//! is not a state machine command): a node that crashes before its next
//! flush loses its last window's records. A flush that fails (no leader)
//! is retried with the next window's records, up to [`MAX_PENDING`] held.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::node::Node;
use crate::scheduler::audit::{AuditKind, AuditRecord, SYSTEM_PRINCIPAL};
use crate::scheduler::Command;

/// How often gathered records are proposed.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(250);
/// Identical records itemised per flush window before the rest are coalesced.
pub const ITEMISED_PER_WINDOW: u32 = 5;
/// Records waiting to be gathered before new ones are counted as lost.
pub const QUEUE_CAPACITY: usize = 10_000;
/// Most records held for a retry after a failed flush.
pub const MAX_PENDING: usize = 10_000;

/// Hands audit records to the node's recorder task.
#[derive(Clone)]
pub struct AuditRecorder {
    queue: mpsc::Sender<AuditRecord>,
    lost: Arc<AtomicU64>,
}

impl AuditRecorder {
    /// Starts the recorder task of `node`; it ends with the node.
    pub fn start(node: Arc<Node>) -> AuditRecorder {
        let (queue, received) = mpsc::channel(QUEUE_CAPACITY);
        let lost = Arc::new(AtomicU64::new(0));
        let stopping = node.stopping();
        node.tasks()
            .spawn(run(node.clone(), received, lost.clone(), stopping));
        AuditRecorder { queue, lost }
    }

    /// Queues `record` without waiting (counted as lost when the queue is full).
    pub fn record(&self, record: AuditRecord) {
        if self.queue.try_send(record).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The identity of a record for coalescing: everything but its time and count.
type Key = (String, String, String, String, u32, String);

fn key(record: &AuditRecord) -> Key {
    (
        record.source.clone(),
        record.principal.clone(),
        record.method.clone(),
        record.resource.clone(),
        record.code,
        record.message.clone(),
    )
}

/// Records of one window: itemised up to the limit, the rest coalesced.
#[derive(Default)]
struct Window {
    records: Vec<AuditRecord>,
    /// Per key: how many were itemised, and the index of its coalesced record.
    seen: BTreeMap<Key, (u32, Option<usize>)>,
}

impl Window {
    fn add(&mut self, record: AuditRecord) {
        let (itemised, coalesced) = self.seen.entry(key(&record)).or_default();
        if *itemised < ITEMISED_PER_WINDOW {
            *itemised += 1;
            self.records.push(record);
            return;
        }
        match coalesced {
            Some(at) => self.records[*at].count += record.count.max(1),
            None => {
                *coalesced = Some(self.records.len());
                self.records.push(AuditRecord {
                    count: record.count.max(1),
                    ..record
                });
            }
        }
    }
}

/// Gathers records and proposes them every [`FLUSH_INTERVAL`] until `stopping`.
async fn run(
    node: Arc<Node>,
    mut received: mpsc::Receiver<AuditRecord>,
    lost: Arc<AtomicU64>,
    stopping: CancellationToken,
) {
    let mut pending: Vec<AuditRecord> = Vec::new();
    let mut ticker = tokio::time::interval(FLUSH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let mut window = Window::default();
        while let Ok(record) = received.try_recv() {
            window.add(record);
        }
        let lost_now = lost.swap(0, Ordering::Relaxed);
        if lost_now > 0 {
            window.records.push(AuditRecord {
                kind: Some(AuditKind::Call),
                principal: SYSTEM_PRINCIPAL.into(),
                node: node.id,
                method: "audit.overflow".into(),
                message: format!("{lost_now} audit records were lost: the recorder's queue was full"),
                count: u32::try_from(lost_now).unwrap_or(u32::MAX),
                ..AuditRecord::default()
            });
        }
        pending.extend(window.records);
        if pending.is_empty() {
            continue;
        }
        let records = std::mem::take(&mut pending);
        let command = Command::RecordAudit { records };
        match node.write(SYSTEM_PRINCIPAL, command.clone()).await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "audit records not recorded yet; retrying with the next window");
                if let Command::RecordAudit { mut records } = command {
                    records.truncate(MAX_PENDING);
                    pending = records;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(source: &str) -> AuditRecord {
        AuditRecord {
            kind: Some(AuditKind::Call),
            source: source.into(),
            method: "DeleteJob".into(),
            code: 16,
            count: 1,
            ..AuditRecord::default()
        }
    }

    #[test]
    fn a_flood_from_one_source_is_itemised_up_to_the_limit_then_counted_in_one_record() {
        let mut window = Window::default();
        for _ in 0..1_000 {
            window.add(denial("10.0.0.1:1"));
        }
        window.add(denial("10.0.0.2:1"));
        let limit = ITEMISED_PER_WINDOW as usize;
        assert_eq!(window.records.len(), limit + 2);
        assert_eq!(window.records[limit].count, 1_000 - ITEMISED_PER_WINDOW);
        assert_eq!(window.records[limit + 1].source, "10.0.0.2:1");
        let total: u32 = window.records.iter().map(|r| r.count).sum();
        assert_eq!(total, 1_001);
    }
}
