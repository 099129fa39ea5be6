//! Property: **no `Idempotency-Key` succeeds twice, except by a documented
//! retry after lease expiry.**
//!
//! The receiver answers 200 to every delivery, so every delivery is a
//! success. A key may be delivered again only with a higher attempt number,
//! and only up to the attempt count the run's record shows (Kairos retried it
//! because the earlier attempt's lease expired or its result was lost with
//! its node). Two deliveries with the same attempt number, or an attempt
//! number the run never reached, are duplicates.

use std::collections::BTreeMap;

use crate::history::Delivery;
use crate::report::Violation;

use super::Evidence;

pub const NAME: &str = "idempotency";

pub fn check(evidence: &Evidence) -> Vec<Violation> {
    let attempts: BTreeMap<u64, u32> = evidence
        .final_state
        .runs
        .iter()
        .map(|r| (r.id, r.attempt))
        .collect();
    let mut by_key: BTreeMap<(&str, u32), Vec<&Delivery>> = BTreeMap::new();
    for d in &evidence.history.deliveries {
        by_key.entry((&d.key, d.attempt)).or_default().push(d);
    }
    let mut violations = Vec::new();
    for ((key, attempt), deliveries) in &by_key {
        let (job, nominal) = key.split_once(':').unwrap_or((key, ""));
        if deliveries.len() > 1 {
            let times: Vec<String> = deliveries.iter().map(|d| format!("t={}ms", d.t_ms)).collect();
            violations.push(
                Violation::new(
                    NAME,
                    format!(
                        "attempt {attempt} delivered {} times (at {})",
                        deliveries.len(),
                        times.join(", ")
                    ),
                )
                .job(job)
                .time(nominal),
            );
        }
        let run = deliveries[0].run_id;
        if let Some(&recorded) = attempts.get(&run) {
            if *attempt > recorded {
                violations.push(
                    Violation::new(
                        NAME,
                        format!(
                            "attempt {attempt} delivered, but run {run} records only {recorded} attempts"
                        ),
                    )
                    .job(job)
                    .time(nominal),
                );
            }
        }
    }
    violations
}
