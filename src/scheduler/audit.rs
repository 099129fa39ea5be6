//! The audit log: a replicated, hash-chained record of every call that
//! changed or tried to change something, and of every run transition.
//!
//! Entries are appended by `State::apply` — in the same apply, and so the
//! same Raft entry, as the change they record: a client write's entry is
//! appended whether the write succeeded or was refused, a run's execution
//! event when its status changes. A denial decided on the receiving node
//! before anything was proposed, an allowed read (with `--audit-reads`) and
//! a membership change arrive as records of their own (`RecordAudit`).
//!
//! Each entry is chained to the one before it:
//!
//! ```text
//! hash_n = SHA-256(canonical(entry_n))   where entry_n includes prev_hash = hash_{n-1}
//! ```
//!
//! `canonical` is the postcard encoding of every field but `hash`, in
//! declaration order ([`AuditEntry::compute_hash`]): deterministic, so every
//! replica computes the same chain and replicas can be compared by their
//! head `(seq, hash)`. The first entry's `prev_hash` is 32 zero bytes.
//!
//! Retention: a node keeps the newest `--audit-retain` entries (a local
//! setting; default [`DEFAULT_RETAIN`]). When it drops entries it keeps the
//! newest dropped one's `(seq, hash)` as the chain's [`Anchor`], so
//! [`verify`] still checks what is left from a known starting point, and
//! the head is the same on every replica whatever each one retains.
//!
//! What is never in an entry: request bodies, job payloads, token secrets.
//! An entry names the method, the resource, the principal and the outcome.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::state::Table;

/// Entries a node keeps when `--audit-retain` is not given.
pub const DEFAULT_RETAIN: u64 = 1_000_000;
/// The principal of events the cluster itself causes (fires, dispatch, expiry).
pub const SYSTEM_PRINCIPAL: &str = "kairos";

/// A position in the chain: a sequence number and the hash of its entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// Sequence number (0: before the first entry).
    pub seq: u64,
    /// The entry's hash (zeros before the first entry).
    pub hash: [u8; 32],
}

/// What kind of event an entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditKind {
    /// A client call (write, denied call, or read with `--audit-reads`).
    Call,
    /// A run changed status (an execution security event).
    Execution,
    /// An ACL change (role, token, binding, bootstrap).
    Acl,
    /// An event was published (format version 6 on): `resource` is the
    /// event's id, `message` its topic.
    Event,
}

impl AuditKind {
    /// Lowercase name, as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Call => "call",
            AuditKind::Execution => "execution",
            AuditKind::Acl => "acl",
            AuditKind::Event => "event",
        }
    }
}

/// An event to append: everything but the chain fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// What kind of event.
    pub kind: Option<AuditKind>,
    /// Who (token name, certificate subject, `anonymous`, or [`SYSTEM_PRINCIPAL`]).
    pub principal: String,
    /// The credential's accessor id, when it was a token.
    pub accessor_id: String,
    /// The caller's address as the receiving node saw it.
    pub source: String,
    /// The node that received the call (or ran the attempt).
    pub node: u64,
    /// The RPC (`CreateJob`) or the execution event (`run.started`).
    pub method: String,
    /// What it was about: a job id, `run 42`, `role ci`, ...
    pub resource: String,
    /// The job the event concerns, if any (for filtering).
    pub job_id: String,
    /// The run the event concerns, if any.
    pub run_id: u64,
    /// The outcome as a gRPC status code number (0 = OK).
    pub code: u32,
    /// The outcome's message (empty when OK).
    pub message: String,
    /// The client's request id, if it sent one.
    pub request_id: String,
    /// The W3C trace id of the call, if it carried one.
    pub trace_id: String,
    /// How many identical events this record stands for (coalesced denials); at least 1.
    pub count: u32,
}

/// One entry of the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// The time of the Raft entry that appended it, Unix ms.
    pub at_ms: i64,
    /// The event.
    pub record: AuditRecord,
    /// The previous entry's hash.
    pub prev_hash: [u8; 32],
    /// SHA-256 of the canonical encoding of the fields above.
    pub hash: [u8; 32],
}

impl AuditEntry {
    /// The hash this entry should have: SHA-256 over the postcard encoding
    /// of `(seq, at_ms, record, prev_hash)`.
    pub fn compute_hash(&self) -> [u8; 32] {
        let canonical = postcard::to_stdvec(&(self.seq, self.at_ms, &self.record, &self.prev_hash))
            .expect("encoding an audit entry cannot fail");
        Sha256::digest(&canonical).into()
    }
}

/// The chain as a replica holds it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditLog {
    /// Kept entries by sequence number.
    entries: Table<u64, Arc<AuditEntry>>,
    /// The newest dropped entry (or the start of the chain).
    anchor: Anchor,
    /// The newest entry.
    head: Anchor,
}

impl AuditLog {
    /// Appends `record` at time `at_ms`, then drops the oldest entries beyond `retain`.
    pub fn append(&mut self, mut record: AuditRecord, at_ms: i64, retain: u64) -> u64 {
        record.count = record.count.max(1);
        let mut entry = AuditEntry {
            seq: self.head.seq + 1,
            at_ms,
            record,
            prev_hash: self.head.hash,
            hash: [0; 32],
        };
        entry.hash = entry.compute_hash();
        self.head = Anchor {
            seq: entry.seq,
            hash: entry.hash,
        };
        self.entries.insert(entry.seq, Arc::new(entry));
        self.trim(retain);
        self.head.seq
    }

    /// Drops the oldest entries until at most `retain` are left (at least one stays).
    pub fn trim(&mut self, retain: u64) {
        let retain = retain.max(1);
        while self.entries.len() as u64 > retain {
            let Some((seq, entry)) = self.entries.get_min().map(|(s, e)| (*s, e.clone())) else {
                break;
            };
            self.entries.remove(&seq);
            self.anchor = Anchor {
                seq,
                hash: entry.hash,
            };
        }
    }

    /// The newest entry's position.
    pub fn head(&self) -> Anchor {
        self.head
    }

    /// The newest dropped entry's position (where verification starts).
    pub fn anchor(&self) -> Anchor {
        self.anchor
    }

    /// Number of entries kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no entry is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Kept entries with `seq > after`, oldest first.
    pub fn after(&self, after: u64) -> impl Iterator<Item = &Arc<AuditEntry>> {
        use std::ops::Bound;
        self.entries
            .range((Bound::Excluded(after), Bound::Unbounded))
            .map(|(_, e)| e)
    }

    /// Every kept entry, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &Arc<AuditEntry>> {
        self.entries.values()
    }

    /// Checks the kept chain from its anchor (see [`verify`]).
    pub fn verify(&self) -> Result<Anchor, ChainError> {
        let head = verify(self.anchor, self.entries.values().map(|e| e.as_ref()))?;
        if head != self.head {
            return Err(ChainError {
                seq: self.head.seq,
                reason: format!(
                    "the recorded head is {} but the entries end at {}",
                    self.head.seq, head.seq
                ),
            });
        }
        Ok(head)
    }

    /// Replaces an entry as stored (tests of tamper detection only).
    #[doc(hidden)]
    pub fn tamper(&mut self, seq: u64, f: impl FnOnce(&mut AuditEntry)) {
        if let Some(entry) = self.entries.get(&seq) {
            let mut changed = entry.as_ref().clone();
            f(&mut changed);
            self.entries.insert(seq, Arc::new(changed));
        }
    }
}

/// Where and why a chain does not verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainError {
    /// The first bad sequence number.
    pub seq: u64,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for ChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "audit entry {}: {}", self.seq, self.reason)
    }
}

/// Checks that `entries` (oldest first) continue the chain from `anchor`:
/// consecutive sequence numbers, each `prev_hash` the hash before it, each
/// `hash` its own content's. Returns the head, or the first bad entry.
pub fn verify<'a>(
    anchor: Anchor,
    entries: impl IntoIterator<Item = &'a AuditEntry>,
) -> Result<Anchor, ChainError> {
    let mut at = anchor;
    for entry in entries {
        let bad = |reason: String| ChainError {
            seq: entry.seq,
            reason,
        };
        if entry.seq != at.seq + 1 {
            return Err(ChainError {
                seq: at.seq + 1,
                reason: format!("missing: the next entry kept is {}", entry.seq),
            });
        }
        if entry.prev_hash != at.hash {
            return Err(bad("prev_hash does not match the previous entry's hash".into()));
        }
        if entry.compute_hash() != entry.hash {
            return Err(bad(
                "hash does not match the entry's content (changed after it was written)".into(),
            ));
        }
        at = Anchor {
            seq: entry.seq,
            hash: entry.hash,
        };
    }
    Ok(at)
}

/// Lowercase hex of a hash, as printed and exported.
pub fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(method: &str) -> AuditRecord {
        AuditRecord {
            kind: Some(AuditKind::Call),
            principal: "ci".into(),
            method: method.into(),
            ..AuditRecord::default()
        }
    }

    #[test]
    fn a_chain_verifies_and_any_change_to_an_entry_is_found_by_its_sequence_number() {
        let mut log = AuditLog::default();
        for i in 0..5 {
            log.append(record(&format!("m{i}")), 1_000 + i, 100);
        }
        assert_eq!(log.verify().unwrap().seq, 5);
        let mut tampered = log.clone();
        tampered.tamper(3, |e| e.record.principal = "someone-else".into());
        let err = tampered.verify().unwrap_err();
        assert_eq!(err.seq, 3);
        assert!(err.reason.contains("changed after it was written"), "{err}");
        // Rewriting the hash too is caught by the next entry's prev_hash.
        let mut rehashed = log.clone();
        rehashed.tamper(3, |e| {
            e.record.principal = "someone-else".into();
            e.hash = e.compute_hash();
        });
        assert_eq!(rehashed.verify().unwrap_err().seq, 4);
    }

    #[test]
    fn retention_keeps_the_newest_entries_and_an_anchor_that_still_verifies() {
        let mut full = AuditLog::default();
        let mut trimmed = AuditLog::default();
        for i in 0..10 {
            full.append(record("m"), i, 100);
            trimmed.append(record("m"), i, 3);
        }
        assert_eq!(trimmed.len(), 3);
        assert_eq!(trimmed.anchor().seq, 7);
        assert_eq!(trimmed.verify().unwrap(), full.verify().unwrap());
        assert_eq!(trimmed.head(), full.head());
    }

    #[test]
    fn the_hash_covers_every_field() {
        let mut log = AuditLog::default();
        log.append(record("m"), 5, 10);
        let entry = log.entries().next().unwrap().as_ref().clone();
        let base = entry.compute_hash();
        type Change = Box<dyn Fn(&mut AuditEntry)>;
        let variants: Vec<Change> = vec![
            Box::new(|e| e.seq += 1),
            Box::new(|e| e.at_ms += 1),
            Box::new(|e| e.prev_hash[0] ^= 1),
            Box::new(|e| e.record.code = 7),
            Box::new(|e| e.record.count = 2),
            Box::new(|e| e.record.source.push('x')),
        ];
        for change in variants {
            let mut e = entry.clone();
            change(&mut e);
            assert_ne!(e.compute_hash(), base);
        }
    }
}
