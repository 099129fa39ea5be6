//! Resident memory of the timer index and of the replicated state for 1M jobs.
//!
//! `cargo bench --bench state_memory -- index` builds only the
//! earliest-next-fire index (`BTreeSet<(next_fire_ms, job id)>`, as kept by
//! `State`) for 1,000,000 jobs; `-- state` applies 1,000,000 `CreateJob`
//! commands (cron `*/5 * * * *`, 16-byte payload) to a `State`, which holds the
//! jobs and the index; `-- requests` does the same with a request id on every
//! create, as the CLI and `kairos-bench scale` send (the state then also
//! remembers each for 24 h). Each prints the resident-set growth per job, read
//! from /proc/self/statm (with `procfs`). One mode per process, so the allocator starts clean.

use std::collections::BTreeSet;

use kairos::scheduler::job::{Metadata, Policies};
use kairos::scheduler::{Changes, Command, JobSpec, Request, ScheduleSpec, State};

const JOBS: usize = 1_000_000;
const T0: i64 = 1_767_225_600_000;

/// This process's resident memory in bytes (`/proc/self/statm`).
fn resident_bytes() -> u64 {
    let statm = procfs::process::Process::myself()
        .and_then(|p| p.statm())
        .expect("/proc/self/statm");
    statm.resident * procfs::page_size()
}

fn report(what: &str, before: u64) {
    let grown = resident_bytes().saturating_sub(before);
    println!(
        "{{\"what\":\"{what}\",\"jobs\":{JOBS},\"resident_mib\":{:.1},\"bytes_per_job\":{}}}",
        grown as f64 / (1 << 20) as f64,
        grown / JOBS as u64
    );
}

fn main() {
    let mode = std::env::args()
        .skip(1)
        .find(|a| a == "index" || a == "state" || a == "requests")
        .unwrap_or_else(|| "index".into());
    let before = resident_bytes();
    if mode == "index" {
        let index: BTreeSet<(i64, String)> = (0..JOBS)
            .map(|i| (T0 + (i as i64 % 300) * 1_000, format!("job-{i:07}")))
            .collect();
        report("timer index", before);
        assert_eq!(index.len(), JOBS);
    } else {
        let mut state = State::default();
        let spec = JobSpec {
            job_type: "noop".into(),
            owner_service: "bench".into(),
            schedule: ScheduleSpec::Cron {
                expr: "*/5 * * * *".into(),
                timezone: String::new(),
            },
            payload: vec![b'x'; 16],
            metadata: Metadata::default(),
            policies: Policies::default().shared(),
            paused: false,
        };
        for i in 0..JOBS {
            let command = Command::CreateJob {
                id: format!("job-{i:07}"),
                spec: spec.clone(),
                request_id: (mode == "requests").then(|| format!("request-{i:07}")),
            };
            let request = Request {
                at_ms: T0,
                principal: "bench".into(),
                command,
                write_id: None,
            };
            state
                .apply(i as u64 + 1, &request, &mut Changes::default())
                .expect("create");
        }
        let what = if mode == "requests" {
            "state with request ids (jobs + index + request records)"
        } else {
            "state (jobs + index)"
        };
        report(what, before);
        assert_eq!(state.job_count(), JOBS);
    }
}
