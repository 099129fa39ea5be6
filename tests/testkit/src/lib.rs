//! `kairos-testkit`: what Kairos's black-box tests, its benches and its chaos
//! harness share to start and probe real nodes.
//!
//! - [`TestCluster`] / [`TestNode`]: `kairos agent` processes on free
//!   loopback ports, each with its own temporary data directory, started
//!   through [`kairos::launcher`] and killed when the cluster is dropped (their
//!   logs and data kept when the test is failing).
//! - [`Bearer`], [`authed`]: clients carrying a token. Every test cluster
//!   runs with authentication on; [`TestCluster::wait_ready`] bootstraps its
//!   ACL and [`TestCluster::token`] is the root token's secret.
//!   Their `http` jobs may call loopback ([`TEST_HTTP_ALLOW`]) unless a
//!   test says otherwise.
//! - [`free_port`]: loopback ports for a node to bind later.
//! - [`http_get`]: a node's HTTP endpoints (`/livez`, `/readyz`, `/metrics`).
//! - [`recorder`]: a webhook that records every delivery of the `http` job type.
//! - [`job`] and [`create`]: a minimal valid job and a create that rides out elections;
//!   [`all_runs`]: every run of a job, all pages.
//! - [`kairos_bin`]: the binary under test.
//! - [`TestPki`]: certificate authorities and certificates made at test time.
//! - [`PythonWorker`]: `examples/python-worker/worker.py` as a child process
//!   whose stdout events a test awaits; [`complete_token`] replays a task token.
//!
//! The tests' `kairos` binary has the test-only `panic` job type: kairos's
//! dev-dependency on this crate turns on its `test-handlers` feature, which
//! turns on kairos's, and `cargo test` builds the binary with the features
//! of the whole test build. A build without tests (`cargo build --release
//! --bin kairos`, or `--workspace`) leaves it off.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! * [`kairos_bin`] finds the binary by the layout of cargo's target
//!   directory (`target/<profile>/deps/<test>` next to `target/<profile>/kairos`);
//!   a test executable moved elsewhere does not find it.
//! * Nodes are started synchronously and stopped with blocking waits: the
//!   harness's methods suit `#[tokio::test(flavor = "multi_thread")]` tests,
//!   whose other worker keeps the runtime going meanwhile.

mod auth;
mod certs;
mod cluster;
mod jobs;
mod ports;
mod preload;
mod recorder;
mod workers;

use std::path::PathBuf;

pub use auth::{authed, Authed, Bearer};
pub use certs::{IssuedCert, TestPki};
pub use cluster::{TestCluster, TestNode, TEST_COOKIE, TEST_HTTP_ALLOW};
pub use jobs::{all_runs, create, job};
pub use ports::free_port;
pub use preload::{
    build_clock_fault_library, build_disk_fault_library, CLOCK_FAULTS_SOURCE, DISK_FAULTS_SOURCE,
};
pub use recorder::{recorder, Deliveries, Delivery};
pub use workers::{complete_token, python_worker_schema, python_worker_script, PythonWorker};

/// `GET http://<addr><path>` of a node's HTTP endpoint: the status code and the body.
pub async fn http_get(addr: &str, path: &str) -> kairos::Result<(u16, String)> {
    kairos::launcher::HttpProbe::new()?.get(addr, path).await
}

/// The `kairos` binary that `cargo test` / `cargo bench` built next to the
/// running test executable (`target/<profile>/kairos`).
pub fn kairos_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable is in target/<profile>/deps");
    let bin = profile_dir.join("kairos");
    assert!(
        bin.is_file(),
        "{} not found: `cargo test` and `cargo bench` build it (or `cargo build --bin kairos`)",
        bin.display()
    );
    bin
}
