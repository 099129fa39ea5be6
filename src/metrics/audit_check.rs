//! `kairos_audit_chain_verified`: the audit chain checked a little at a time.
//!
//! Verifying the whole kept chain hashes every entry (a million by
//! default): fine once, too much for every scrape. [`AuditCheck`] remembers
//! how far the chain verified (the sequence number and hash of the last
//! good entry) and, on the next scrape, checks only the entries appended
//! since, starting from that position. It starts again from the chain's
//! anchor (the newest dropped entry, see [`crate::scheduler::audit`]) when
//! the remembered position is gone: retention trimmed past it, or the state
//! was replaced (a snapshot installed) and the entry there is not the one
//! verified.
//!
//! IMPLEMENTATION CAVEATS: an entry that was verified and is changed in
//! place later is not noticed until the check starts again from the anchor
//! (`kairos audit verify` always checks everything). Entries are never
//! changed in place by Kairos: that takes someone editing memory.

use std::sync::Mutex;

use crate::scheduler::audit::{verify, Anchor, AuditLog};

/// The position the chain last verified up to; see the module doc.
#[derive(Debug, Default)]
pub struct AuditCheck {
    verified: Mutex<Option<Anchor>>,
}

impl AuditCheck {
    /// Whether `log`'s kept chain verifies from its anchor up to its head,
    /// checking only what was not verified before.
    pub fn verifies(&self, log: &AuditLog) -> bool {
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        let start = verified
            .filter(|at| still_kept(log, *at))
            .unwrap_or_else(|| log.anchor());
        match verify(start, log.after(start.seq).map(|e| e.as_ref())) {
            Ok(head) if head == log.head() => {
                *verified = Some(head);
                true
            }
            Ok(_) | Err(_) => false,
        }
    }
}

/// Whether the entry verified at `at` is still in `log`, unchanged (or is
/// its anchor).
fn still_kept(log: &AuditLog, at: Anchor) -> bool {
    let anchor = log.anchor();
    if at.seq < anchor.seq {
        return false;
    }
    if at.seq == anchor.seq {
        return at.hash == anchor.hash;
    }
    log.after(at.seq - 1)
        .next()
        .is_some_and(|e| e.seq == at.seq && e.hash == at.hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::audit::{AuditKind, AuditRecord};

    fn record(method: &str) -> AuditRecord {
        AuditRecord {
            kind: Some(AuditKind::Call),
            principal: "ci".into(),
            method: method.into(),
            ..AuditRecord::default()
        }
    }

    #[test]
    fn verifies_what_was_appended_since_and_finds_a_bad_new_entry() {
        let check = AuditCheck::default();
        let mut log = AuditLog::default();
        assert!(check.verifies(&log), "an empty chain verifies");
        for i in 0..5 {
            log.append(record("m"), i, 100);
        }
        assert!(check.verifies(&log));
        assert_eq!(check.verified.lock().unwrap().unwrap().seq, 5);
        for i in 5..8 {
            log.append(record("m"), i, 100);
        }
        let mut tampered = log.clone();
        tampered.tamper(7, |e| e.record.principal = "mallory".into());
        assert!(!check.verifies(&tampered), "a changed new entry is found");
        assert_eq!(
            check.verified.lock().unwrap().unwrap().seq,
            5,
            "a failed check keeps the last good position"
        );
        assert!(check.verifies(&log));
        assert_eq!(check.verified.lock().unwrap().unwrap().seq, 8);
    }

    #[test]
    fn starts_again_from_the_anchor_when_the_verified_entry_is_gone() {
        let check = AuditCheck::default();
        let mut log = AuditLog::default();
        for i in 0..5 {
            log.append(record("m"), i, 3);
        }
        assert!(check.verifies(&log));
        // Retention drops the verified position: the rest is checked from the anchor.
        for i in 5..20 {
            log.append(record("m"), i, 3);
        }
        assert!(log.anchor().seq > 5);
        let mut tampered = log.clone();
        let first_kept = log.anchor().seq + 1;
        tampered.tamper(first_kept, |e| e.record.principal = "mallory".into());
        assert!(!check.verifies(&tampered), "checked from the anchor, not from 5");
        assert!(check.verifies(&log));
        // Another chain of the same length (a state replaced by another
        // one's snapshot): the entry at the verified position differs.
        let mut other = AuditLog::default();
        for i in 0..20 {
            other.append(record("other"), i, 3);
        }
        let mut broken = other.clone();
        broken.tamper(19, |e| e.record.principal = "mallory".into());
        assert!(
            !check.verifies(&broken),
            "the verified entry changed: checked again"
        );
        assert!(check.verifies(&other));
    }
}
