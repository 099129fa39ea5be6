//! The standard gRPC health service, `grpc.health.v1.Health`, on the
//! client listener: what Kubernetes gRPC probes, load balancers and
//! `grpcurl … grpc.health.v1.Health/Check` ask.
//!
//! It says what `/readyz` says ([`Node::readiness`], see [`crate::http`]):
//! `SERVING` while this node knows a leader and has applied the committed
//! log it found at start, `NOT_SERVING` otherwise. The same status is kept
//! for the whole server (service `""`) and for each of Kairos's own public
//! services ([`super::service_info::kairos_services`], e.g.
//! `kairos.v1.JobService`); any other name is answered `NOT_FOUND`. A node
//! does not serve one Kairos service without the others, so one status is
//! all there is to report.
//!
//! The status follows readiness on events, not by polling: readiness is a
//! function of the Raft metrics (the known leader, the applied index), and
//! [`follow_readiness`] recomputes it each time openraft publishes new
//! metrics on its watch channel, changing the reported status (and so
//! waking `Watch` streams) only when it changes. When the node shuts down
//! (its shutdown token, or Raft stopping) every status turns
//! `NOT_SERVING` before the server stops, so a watcher sees the node go.
//!
//! Health needs no credential: probes cannot send one, and it reveals
//! exactly what the unauthenticated `/readyz` does. It is the one
//! deliberate exception to "every RPC authenticates" (`tests/security.rs`).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::node::Node;

/// The health service's name for the whole server (the gRPC convention).
pub const WHOLE_SERVER: &str = "";

/// The health server of `node`, its statuses set from the node's readiness
/// now and kept following it by a task on the current runtime until
/// `shutdown` is cancelled (see the module docs).
pub async fn start(node: Arc<Node>, shutdown: CancellationToken) -> HealthServer<impl Health> {
    let (reporter, server) = tonic_health::server::health_reporter();
    let initial = serving_status(&node.readiness());
    report(&reporter, initial).await;
    tokio::spawn(follow_readiness(node, reporter, initial, shutdown));
    server
}

/// The status that a readiness answer reports.
pub fn serving_status(readiness: &Result<(), String>) -> ServingStatus {
    match readiness {
        Ok(()) => ServingStatus::Serving,
        Err(_) => ServingStatus::NotServing,
    }
}

/// Every service name the statuses are kept for: the whole server, then
/// each of Kairos's public services.
pub fn reported_services() -> Vec<String> {
    std::iter::once(WHOLE_SERVER.to_string())
        .chain(super::service_info::kairos_services())
        .collect()
}

/// Sets `status` for every reported service.
async fn report(reporter: &HealthReporter, status: ServingStatus) {
    for service in reported_services() {
        reporter.set_service_status(service, status).await;
    }
}

/// Recomputes `node`'s readiness whenever its Raft metrics or its leader's
/// silence (see `crate::raft::pre_vote`) change and
/// reports a changed status through `reporter`, starting from `reported`;
/// ends when `shutdown` is cancelled or Raft stops, reporting `NOT_SERVING`.
pub async fn follow_readiness(
    node: Arc<Node>,
    reporter: HealthReporter,
    mut reported: ServingStatus,
    shutdown: CancellationToken,
) {
    let mut metrics = node.raft.metrics();
    let mut silence = node.leader_silence();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = metrics.changed() => if changed.is_err() { break },
            changed = silence.changed() => if changed.is_err() { break },
        }
        let readiness = node.readiness();
        let status = serving_status(&readiness);
        if status != reported {
            match &readiness {
                Ok(()) => tracing::info!(node = node.id, "gRPC health: SERVING"),
                Err(reason) => tracing::info!(node = node.id, %reason, "gRPC health: NOT_SERVING"),
            }
            report(&reporter, status).await;
            reported = status;
        }
    }
    report(&reporter, ServingStatus::NotServing).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_is_serving_and_any_reason_not_to_be_is_not_serving() {
        assert_eq!(serving_status(&Ok(())), ServingStatus::Serving);
        assert_eq!(
            serving_status(&Err("no known leader".into())),
            ServingStatus::NotServing
        );
    }

    #[test]
    fn the_whole_server_and_every_kairos_service_are_reported() {
        let services = reported_services();
        assert_eq!(services[0], WHOLE_SERVER);
        assert!(services.iter().any(|s| s == "kairos.v1.JobService"));
        assert!(services.iter().any(|s| s == "kairos.v1.WorkerService"));
        assert!(
            !services
                .iter()
                .any(|s| s.contains("RaftService") || s.starts_with("grpc.")),
            "{services:?}"
        );
    }
}
