//! The result of a chaos run: a JSON report, a human summary, and (in
//! [`crate::timeline`]) the timeline picture.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::history::{History, OpKind, Outcome};

/// A broken invariant, with what is needed to find it in the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The invariant's name (its file in `src/invariants/`).
    pub invariant: String,
    /// What went wrong, in words.
    pub message: String,
    /// The job involved, if one is.
    pub job: Option<String>,
    /// Times involved (nominal times as RFC 3339, or "t=12345ms" run times).
    pub times: Vec<String>,
    /// Nodes involved.
    pub nodes: Vec<u64>,
}

impl Violation {
    /// A violation of `invariant` described by `message`.
    pub fn new(invariant: &str, message: impl Into<String>) -> Violation {
        Violation {
            invariant: invariant.to_string(),
            message: message.into(),
            job: None,
            times: Vec::new(),
            nodes: Vec::new(),
        }
    }

    /// Names the job.
    pub fn job(mut self, job: &str) -> Violation {
        self.job = Some(job.to_string());
        self
    }

    /// Adds a time.
    pub fn time(mut self, time: impl Into<String>) -> Violation {
        self.times.push(time.into());
        self
    }

    /// Names the nodes.
    pub fn nodes(mut self, nodes: impl IntoIterator<Item = u64>) -> Violation {
        self.nodes.extend(nodes);
        self
    }
}

/// Operation counts by outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounts {
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
}

/// What one chaos run did and found.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// Reproduce with `kairos-chaos run --seed <seed>` (and the same options).
    pub seed: u64,
    /// "process" or "docker".
    pub runtime: String,
    pub nodes: u64,
    /// Wall-clock start, RFC 3339.
    pub started_at: String,
    /// Length of the fault phase, ms.
    pub fault_phase_ms: u64,
    /// Whole run including settle and checks, ms.
    pub total_ms: u64,
    /// Faults injected, by kind name.
    pub faults_by_kind: BTreeMap<String, u64>,
    /// Client operations by kind name.
    pub ops: BTreeMap<String, OpCounts>,
    /// Runs listed and checked after settle.
    pub runs_checked: u64,
    /// Webhook deliveries recorded.
    pub deliveries: u64,
    /// Fire lateness seen by the webhook receiver, ms: p50, p99, max.
    pub lateness_ms: [i64; 3],
    /// The invariants checked, by name.
    pub invariants: Vec<String>,
    pub violations: Vec<Violation>,
    /// Observations that are not violations (e.g. a slow convergence).
    pub notes: Vec<String>,
}

impl Report {
    /// Fills the counts that come straight from the history.
    pub fn count(&mut self, history: &History) {
        for fault in &history.faults {
            *self
                .faults_by_kind
                .entry(fault.kind.name().to_string())
                .or_default() += 1;
        }
        for op in &history.ops {
            let counts = self.ops.entry(op_name(&op.kind).to_string()).or_default();
            match op.outcome {
                Outcome::Ok => counts.ok += 1,
                Outcome::Failed(_) => counts.failed += 1,
                Outcome::Unknown(_) => counts.unknown += 1,
            }
        }
        self.deliveries = history.deliveries.len() as u64;
        let mut lateness: Vec<i64> = history.deliveries.iter().map(|d| d.lateness_ms).collect();
        lateness.sort_unstable();
        let at = |q: f64| {
            if lateness.is_empty() {
                0
            } else {
                lateness[((lateness.len() - 1) as f64 * q).round() as usize]
            }
        };
        self.lateness_ms = [at(0.5), at(0.99), lateness.last().copied().unwrap_or(0)];
    }

    /// The human summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let total = |f: fn(&OpCounts) -> u64| {
            self.ops
                .iter()
                .filter(|(kind, _)| kind.as_str() != "read")
                .map(|(_, c)| f(c))
                .sum::<u64>()
        };
        let _ = writeln!(
            out,
            "kairos-chaos: {} nodes ({}), {} s of faults, {} s in all",
            self.nodes,
            self.runtime,
            self.fault_phase_ms / 1000,
            self.total_ms / 1000
        );
        let faults: Vec<String> = self
            .faults_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "  faults: {} ({})",
            self.faults_by_kind.values().sum::<u64>(),
            faults.join(", ")
        );
        let _ = writeln!(
            out,
            "  writes: {} acknowledged, {} refused, {} unknown",
            total(|c| c.ok),
            total(|c| c.failed),
            total(|c| c.unknown)
        );
        if let Some(reads) = self.ops.get("read") {
            let _ = writeln!(
                out,
                "  linearizable reads of hot jobs: {} answered, {} refused, {} unknown",
                reads.ok, reads.failed, reads.unknown
            );
        }
        let _ = writeln!(
            out,
            "  runs checked: {}, webhook deliveries: {}, lateness p50 {} ms / p99 {} ms / max {} ms",
            self.runs_checked, self.deliveries, self.lateness_ms[0], self.lateness_ms[1], self.lateness_ms[2]
        );
        let _ = writeln!(out, "  invariants: {}", self.invariants.join(", "));
        if self.violations.is_empty() {
            let _ = writeln!(out, "  violations: none");
        } else {
            let _ = writeln!(out, "  VIOLATIONS: {}", self.violations.len());
            for v in self.violations.iter().take(20) {
                let _ = writeln!(
                    out,
                    "  - [{}] {}{}{}{}",
                    v.invariant,
                    v.message,
                    v.job.as_ref().map(|j| format!(" (job {j})")).unwrap_or_default(),
                    if v.times.is_empty() {
                        String::new()
                    } else {
                        format!(" at {}", v.times.join(", "))
                    },
                    if v.nodes.is_empty() {
                        String::new()
                    } else {
                        format!(" nodes {:?}", v.nodes)
                    },
                );
            }
            if self.violations.len() > 20 {
                let _ = writeln!(out, "  ... {} more in report.json", self.violations.len() - 20);
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "  note: {note}");
        }
        let _ = writeln!(out, "  reproduce: kairos-chaos run --seed {}", self.seed);
        out
    }
}

/// The snake_case name of an operation kind.
pub fn op_name(kind: &OpKind) -> &'static str {
    match kind {
        OpKind::Create => "create",
        OpKind::Update => "update",
        OpKind::Delete => "delete",
        OpKind::Pause => "pause",
        OpKind::Resume => "resume",
        OpKind::Trigger => "trigger",
        OpKind::Publish => "publish",
        OpKind::Read => "read",
    }
}
