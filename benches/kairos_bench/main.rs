//! `kairos-bench`, the load tool. Each scenario starts its own
//! three-node cluster of release binaries on loopback (or, for `create`, uses
//! `--endpoints` of a running one), drives it for a bounded time, prints a
//! progress line on stderr while it runs, then one JSON object and a short
//! table on stdout.
//!
//! ```text
//! cargo bench --bench kairos-bench -- create   --clients 64 --payload 256 --duration 10s
//! cargo bench --bench kairos-bench -- create   --clients 64 --compare-auth --count 20000 --rounds 3
//! cargo bench --bench kairos-bench -- dispatch --jobs 1000 --rate 500 --duration 20s
//! cargo bench --bench kairos-bench -- dispatch --jobs 10000 --rate 5000 --compare-external
//! cargo bench --bench kairos-bench -- failover --kills 20
//! ```
//!
//! - `create`: N concurrent gRPC clients create jobs (payload of the given
//!   size) for the duration (at most `--count` of them); throughput and
//!   latency p50/p99/p999. Without `--endpoints` every client sends to the
//!   leader of the cluster it starts, with its root token; with them, the
//!   token of `--token` / `KAIROS_TOKEN`. Each client has its own connection
//!   unless `--connections` sets fewer, shared round-robin
//!   (`benches/etcd-compare.sh` runs it beside etcd). `--compare-auth`
//!   measures the same load on a cluster with authentication and on one
//!   started with `--insecure-disable-auth`, in alternating rounds.
//! - `dispatch`: M `noop` jobs on `every` schedules whose phases spread their
//!   fires evenly at the given rate; sustained runs/s completed (succeeded
//!   attempts) and fire lateness (nominal → handler start) p50/p99/p999 from
//!   the nodes' `kairos_fire_lateness_seconds` histograms (bucket upper
//!   bounds, so a percentile reads "at most"). `--external`: the jobs are
//!   of type `bench.noop`, served by `--ext-workers` in-process Rust SDK
//!   workers of `--ext-capacity` each (registered round-robin over the
//!   nodes); runs completed are the results the cluster recorded and start
//!   lateness (nominal → handler start) is measured exactly by the workers.
//!   `--compare-external`: internal then external, each on a fresh cluster.
//! - `failover`: stop the leader repeatedly (`--stop kill`, the default:
//!   kill -9; `term`: SIGTERM, a planned stop with leadership handover;
//!   `both`: alternately, in one run); time from the stop to the first
//!   acknowledged write through a survivor (a trigger of a job), to that
//!   triggered run's start, and to the first scheduled run dispatched after
//!   the stop (the job fires every second), each stop's figures and p50/p99.
//! - `scale`: load N daily cron jobs (64-byte payload, each with a request
//!   id as the CLI sends), due 12 hours after the start so that none fires
//!   while it measures (a fire would add a run and counters per job: that
//!   is the memory of runs, not of jobs); resident memory growth per job of
//!   every node (leader and followers, from /proc/<pid>/status), data
//!   directory size, and the time a restarted follower takes to answer
//!   `/readyz` 200.
//!
//! Latency percentiles come from HDR histograms of microseconds (3
//! significant digits) and are printed in milliseconds; CPU time and
//! resident memory of the nodes are read from `/proc` with `procfs`.
//!
//! One file per scenario (`create.rs`, `dispatch.rs`, `failover.rs`,
//! `scale.rs`) and what they share (`support.rs`).

mod create;
mod dispatch;
mod failover;
mod scale;
mod soak;
mod support;

use std::time::Duration;

use clap::Parser;

use crate::create::{create, CreateArgs};
use crate::dispatch::{dispatch, ExternalArgs, Side};
use crate::failover::failover;
use crate::scale::scale;
use crate::soak::{soak, SoakArgs};

#[derive(Parser, Debug)]
#[command(name = "kairos-bench", about = "Load tool for Kairos")]
enum Scenario {
    /// Concurrent job creates.
    Create(CreateArgs),
    /// Due `noop` jobs at a rate.
    Dispatch {
        #[arg(long, default_value_t = 1000)]
        jobs: usize,
        /// Fires per second.
        #[arg(long, default_value_t = 500)]
        rate: u64,
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Jobs of an external type, served by in-process SDK workers.
        #[arg(long, conflicts_with = "compare_external")]
        external: bool,
        /// Internal workers, then external ones, each on a fresh cluster.
        #[arg(long)]
        compare_external: bool,
        /// Internal workers with tracing off, at sampling 0.01 and at 1.0,
        /// each on a fresh cluster exporting to an in-process OTLP receiver.
        #[arg(long, conflicts_with_all = ["external", "compare_external"])]
        compare_tracing: bool,
        /// In-process external workers.
        #[arg(long, default_value_t = 4)]
        ext_workers: usize,
        /// Capacity of each external worker.
        #[arg(long, default_value_t = 256)]
        ext_capacity: u32,
    },
    /// Repeated leader stops (kill -9, SIGTERM, or both alternately).
    Failover {
        /// Stops in all (with `--stop both`, half of each).
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// How the leader is stopped.
        #[arg(long, value_enum, default_value = "kill")]
        stop: crate::failover::StopMode,
    },
    /// A long run at a fraction of the measured capacity: memory, open
    /// files and disk over time.
    Soak(SoakArgs),
    /// Many cron jobs: memory per job, disk, restart time.
    Scale {
        #[arg(long, default_value_t = 100_000)]
        jobs: usize,
        /// Concurrent loading clients.
        #[arg(long, default_value_t = 32)]
        clients: usize,
    },
}

fn main() {
    // `cargo bench` passes `--bench`; the scenario flags follow `--`.
    let args = std::env::args().filter(|a| a != "--bench");
    let scenario = Scenario::parse_from(args);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        match scenario {
            Scenario::Create(args) => create(args).await,
            Scenario::Soak(args) => soak(args).await,
            Scenario::Dispatch {
                jobs,
                rate,
                duration,
                external,
                compare_external,
                compare_tracing,
                ext_workers,
                ext_capacity,
            } => {
                let sides: &[Side] = match (external, compare_external) {
                    (_, true) => &[Side::Internal, Side::External],
                    (true, false) => &[Side::External],
                    (false, false) => &[Side::Internal],
                };
                let external = ExternalArgs {
                    workers: ext_workers,
                    capacity: ext_capacity,
                };
                dispatch(jobs, rate, duration, sides, external, compare_tracing).await
            }
            Scenario::Failover { kills, stop } => failover(kills, stop).await,
            Scenario::Scale { jobs, clients } => scale(jobs, clients).await,
        }
    });
}
