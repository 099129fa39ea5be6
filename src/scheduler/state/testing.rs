//! The harness of the run and attempt tests: a state machine applied with
//! time passed in and log indexes chosen by the test.

use super::*;
use crate::scheduler::job::{JobSpec, Metadata, Policies, ScheduleSpec};
use crate::scheduler::run::{AttemptOutcome, JobCounters, RunStatus};
use crate::scheduler::Request;

/// The tests' epoch: 2026-01-01T00:00:00Z, Unix ms.
pub const T0: i64 = 1_767_225_600_000;
/// One second, ms.
pub const SEC: i64 = 1_000;

/// A state machine under test with a log index counter.
pub struct Sm {
    /// The state under test.
    pub state: State,
    /// The log index of the last entry applied.
    pub index: u64,
}

impl Sm {
    pub fn new() -> Sm {
        Sm {
            state: State::default(),
            index: 0,
        }
    }

    pub fn apply(&mut self, at_ms: i64, command: Command) -> CommandResult {
        self.index += 1;
        let request = Request {
            at_ms,
            principal: "t".into(),
            command,
            write_id: None,
        };
        self.state.apply(self.index, &request, &mut Changes::default())
    }

    /// Creates job `id` firing every second, with `tweak` applied to its policies.
    pub fn job(&mut self, id: &str, at_ms: i64, tweak: impl FnOnce(&mut Policies)) {
        let mut policies = Policies::default();
        tweak(&mut policies);
        let spec = JobSpec {
            job_type: "noop".into(),
            owner_service: String::new(),
            schedule: ScheduleSpec::Every {
                interval_ms: 1_000,
                phase_ms: 0,
            },
            payload: vec![],
            metadata: Metadata::default(),
            policies: policies.shared(),
            paused: false,
        };
        self.apply(
            at_ms,
            Command::CreateJob {
                id: id.into(),
                spec,
                request_id: None,
            },
        )
        .unwrap();
    }

    /// Proposes a fire batch as the timer would at `at_ms`.
    pub fn tick(&mut self, at_ms: i64) -> (Vec<RunId>, u32) {
        let fires = self.state.due_fires(at_ms, 1_000);
        match self.apply(at_ms, Command::FireBatch { fires }).unwrap() {
            Response::Fired { created, refused } => (created, refused),
            other => panic!("{other:?}"),
        }
    }

    pub fn start(&mut self, run_id: RunId, at_ms: i64) -> u64 {
        let attempt = self.state.run(run_id).unwrap().attempt + 1;
        let run = match self
            .apply(
                at_ms,
                Command::StartAttempt {
                    run_id,
                    node: 1,
                    attempt,
                },
            )
            .unwrap()
        {
            Response::Run(run) => run,
            other => panic!("{other:?}"),
        };
        assert_eq!(run.status, RunStatus::Queued);
        run.token
    }

    pub fn finish(
        &mut self,
        run_id: RunId,
        token: u64,
        at_ms: i64,
        outcome: AttemptOutcome,
    ) -> CommandResult {
        self.apply(
            at_ms,
            Command::FinishAttempt {
                run_id,
                token,
                outcome,
                output_tail: "out".into(),
            },
        )
    }

    pub fn status(&self, run_id: RunId) -> RunStatus {
        self.state.run(run_id).unwrap().status
    }

    pub fn counters(&self, job: &str) -> JobCounters {
        self.state.counters(job).cloned().unwrap_or_default()
    }
}

/// `s` stored and read back record by record, as a restart reads the
/// tables: its replicated parts only, indexes rebuilt (these tests make no
/// request or write records).
pub fn rebuilt_from_parts(s: &State) -> State {
    let mut image = StateImage::default();
    s.jobs().cloned().for_each(|job| image.insert_job(job));
    s.runs().cloned().for_each(|run| image.insert_run(run));
    s.counters_iter()
        .for_each(|(id, counters)| image.insert_counters(id.clone(), counters.clone()));
    image.set_next_run_id(s.next_run_id());
    image.set_security_and_workers_of(&s.image());
    State::from_image(image)
}

/// A fixed pseudo-random sequence (an LCG seeded with `seed`): each call
/// gives a number below its argument.
pub fn walk(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut seed = seed;
    move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    }
}

pub fn failed(retryable: bool) -> AttemptOutcome {
    AttemptOutcome::Failed {
        kind: "boom".into(),
        message: "it broke".into(),
        retryable,
    }
}
