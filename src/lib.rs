//! Kairos: a self-hosted distributed job scheduler.
//!
//! Three (or five) copies of one binary form a cluster. Job definitions live in
//! a Raft-replicated state machine (openraft) stored on local disk (sled), so
//! there is no external database and failover is built in. Clients talk gRPC
//! (tonic) to any node: writes are forwarded to the leader, reads are
//! linearizable by default (ReadIndex), and every node serves health and
//! Prometheus metrics over HTTP.
//!
//! Module map, from the core outwards:
//! - [`scheduler`]: the deterministic core (jobs, schedules, validation, `State::apply`).
//! - [`raft`]: openraft wiring — sled log store with fsync, state machine, snapshots, peer network.
//! - [`backup`]: backup files of the state (`kairos snapshot`), restoring them, and `--force-new-cluster`.
//! - [`cluster_version`]: the version every member supports, which gates what is new during a rolling upgrade.
//! - [`codec`]: the versioned encoding of log entries, snapshots and messages between nodes.
//! - [`node`]: a running node — bootstrap, write forwarding, read barriers, shutdown.
//! - [`actors`]: leader-only actors (the timer that fires due jobs).
//! - [`handlers`]: job types (noop, sleep, http, exec) behind one trait.
//! - [`api`]: gRPC services and protobuf ↔ domain conversion.
//! - [`http`] and [`metrics`]: `/livez`, `/readyz`, `/metrics`.
//! - [`cli`]: the `kairos` command (agent, dev, job, cluster, cron).
//! - [`launcher`]: starts `kairos agent` processes (for `kairos dev`, the tests and the chaos harness).
//! - [`config`]: agent configuration from flags, `KAIROS_*` variables and TOML.
//! - [`transport`] and [`tls`]: authenticated peer connections (cluster secret or mutual TLS) and TLS of the client API.

pub mod actors;
pub mod api;
pub mod backup;
#[cfg(feature = "chaos-break")]
pub mod chaos_break;
pub mod cli;
pub mod cluster_version;
pub mod codec;
pub mod config;
pub mod dial;
pub mod error;
pub mod handlers;
pub mod http;
pub mod launcher;
pub mod metrics;
pub mod node;
pub mod proto;
pub mod raft;
pub mod rest;
pub mod scheduler;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod wall_clock;

pub use error::{Error, Result};
