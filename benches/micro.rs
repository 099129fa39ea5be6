//! Criterion micro-benchmarks of the deterministic core:
//!
//! - `cron_next/*`: `Schedule::next_after` for a few typical expressions;
//! - `apply/create_job`: one `CreateJob` applied to a state of 10,000 jobs;
//! - `apply/fire_batch_1000`: one `FireBatch` of 1,000 due fires (1,000 runs
//!   created, 1,000 jobs advanced) — the timer's unit of work;
//! - `timer_index/insert` and `timer_index/earliest_1000`: the
//!   earliest-next-fire index of a 100,000-job `State`, through its API: a
//!   create inserts into it; `due_fires` reads the 1,000 earliest entries
//!   (the `FireBatch` that moves them on is `apply/fire_batch_1000`).
//!
//! `cargo bench --bench micro` (add `-- cron_next` to pick a group).

use std::hint::black_box;

use chrono::{DateTime, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use kairos::scheduler::job::{Metadata, Policies};
use kairos::scheduler::{Changes, Command, JobSpec, Request, Schedule, ScheduleSpec, State};

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn spec(expr: &str) -> JobSpec {
    JobSpec {
        job_type: "noop".into(),
        owner_service: String::new(),
        schedule: ScheduleSpec::Cron {
            expr: expr.into(),
            timezone: String::new(),
        },
        payload: b"{\"x\":1}".to_vec(),
        metadata: Metadata::default(),
        policies: Policies::default().shared(),
        paused: false,
    }
}

fn apply(state: &mut State, index: u64, at_ms: i64, command: Command) {
    let request = Request {
        at_ms,
        principal: "bench".into(),
        command,
        write_id: None,
    };
    state
        .apply(index, &request, &mut Changes::default())
        .expect("command applies");
}

/// A state with `n` jobs firing every second, created at T0.
fn state_with_jobs(n: usize) -> State {
    let mut state = State::default();
    for i in 0..n {
        let command = Command::CreateJob {
            id: format!("job-{i:07}"),
            spec: spec("* * * * * *"),
            request_id: None,
        };
        apply(&mut state, i as u64 + 1, T0, command);
    }
    state
}

fn cron_next(c: &mut Criterion) {
    let mut group = c.benchmark_group("cron_next");
    let after: DateTime<Utc> = DateTime::from_timestamp_millis(T0 + 12_345).unwrap();
    for (name, expr, zone) in [
        ("every_5_min", "*/5 * * * *", ""),
        ("weekdays_9am_berlin", "0 9 * * 1-5", "Europe/Berlin"),
        ("every_second", "* * * * * *", ""),
        ("monthly_last_days", "0 0 28-31 * *", ""),
    ] {
        let schedule = Schedule::compile(&ScheduleSpec::Cron {
            expr: expr.into(),
            timezone: zone.into(),
        })
        .unwrap();
        group.bench_function(name, |b| {
            b.iter(|| black_box(schedule.next_after(black_box(after))))
        });
    }
    group.finish();
}

fn apply_commands(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    // Creates into a state of 10,000 jobs (it grows by one job per iteration).
    let mut state = state_with_jobs(10_000);
    let mut index = 20_000u64;
    group.bench_function("create_job", |b| {
        b.iter(|| {
            index += 1;
            let command = Command::CreateJob {
                id: format!("new-{index}"),
                spec: spec("*/5 * * * *"),
                request_id: None,
            };
            apply(&mut state, index, T0 + 1, command);
        })
    });
    // 1,000 jobs firing every second: each iteration is the next second's
    // batch. With the default overlap policy (skip) each fire makes a skipped
    // run, and history retention keeps the state from growing.
    let mut state = state_with_jobs(1_000);
    let mut second = 0i64;
    group.bench_function("fire_batch_1000", |b| {
        b.iter(|| {
            second += 1;
            let now = T0 + second * 1_000;
            let fires = state.due_fires(now, 1_000);
            assert_eq!(fires.len(), 1_000);
            apply(
                &mut state,
                10_000 + second as u64,
                now,
                Command::FireBatch { fires },
            );
        })
    });
    group.finish();
}

fn timer_index(c: &mut Criterion) {
    let mut group = c.benchmark_group("timer_index");
    // Insert: a create puts the job into the index of a 100,000-job state.
    let mut state = state_with_jobs(100_000);
    let mut index = 200_000u64;
    group.bench_function("insert", |b| {
        b.iter(|| {
            index += 1;
            let command = Command::CreateJob {
                id: format!("inserted-{index}"),
                spec: spec("* * * * * *"),
                request_id: None,
            };
            apply(&mut state, index, T0 + 1, command);
        })
    });
    // Pop: the 1,000 earliest entries of the index, as the timer reads them.
    group.bench_function("earliest_1000", |b| {
        b.iter(|| black_box(state.due_fires(black_box(T0 + 1_000), 1_000)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = cron_next, apply_commands, timer_index
}
criterion_main!(benches);
