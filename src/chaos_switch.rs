//! A deliberately broken build, switched on only by the chaos suite's own
//! test of its checker: `KAIROS_UNSAFE_CHAOS_BREAK=duplicate-fires`.
//!
//! With it, the leader's timer proposes every `FireBatch` twice (as a buggy
//! timer might after a failover) and the state machine, instead of refusing
//! the second copy of a fire that already happened, creates another run for
//! it. Every fire then runs twice — the duplicate the checker must catch.
//! Never set it anywhere else; a node logs a loud warning when it is set.

use std::sync::OnceLock;

/// The environment variable that breaks the build.
pub const VARIABLE: &str = "KAIROS_UNSAFE_CHAOS_BREAK";

/// Whether duplicate fires are let through (read once per process).
pub fn duplicate_fires() -> bool {
    static SET: OnceLock<bool> = OnceLock::new();
    *SET.get_or_init(|| std::env::var(VARIABLE).is_ok_and(|v| v == "duplicate-fires"))
}
