//! Free loopback ports for the programs that start nodes: the integration
//! tests, the benchmarks and the chaos harness.
//!
//! A node is told its ports on the command line, so the starter must pick
//! them before the node binds them. A port the kernel hands out for
//! `bind(0)` comes from the ephemeral range, which is also where every
//! outgoing connection's local port comes from: between the pick and the
//! node's bind, any test running in parallel may take it for a connection
//! (seen as a node failing with "address in use"). These ports come from
//! below the ephemeral range (20000–31999), spread by process id, and one
//! process never hands out the same port twice. Another process could still
//! bind it first, which is much rarer.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A loopback port that is free now, for a node to bind later.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // Spread processes apart (by pid) and walk the range with a large odd stride.
        let candidate = 20_000 + ((u64::from(std::process::id()) * 7_919 + n * 4_093) % 12_000) as u16;
        let fresh = HANDED_OUT
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(candidate);
        if fresh && TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            return candidate;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(ports.iter().all(|p| (20_000..32_000).contains(p)), "{ports:?}");
    }
}
