//! The webhook receiver every chaos job calls: it answers 200 to every
//! request and records the identity headers Kairos sends, so the checkers
//! can see which fire was executed, how often, by which attempt and how late.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::history::Delivery;

/// Deliveries recorded so far.
pub type Deliveries = Arc<Mutex<Vec<Delivery>>>;

#[derive(Clone)]
struct Recorder {
    started: Instant,
    deliveries: Deliveries,
}

/// Starts the receiver on `host` (a free port) until `shutdown`; returns its
/// URL and the shared list of deliveries.
pub async fn start(
    host: &str,
    started: Instant,
    shutdown: CancellationToken,
) -> anyhow::Result<(String, Deliveries)> {
    let listener = tokio::net::TcpListener::bind((host, 0)).await?;
    let addr: SocketAddr = listener.local_addr()?;
    let deliveries = Deliveries::default();
    let app = Router::new().route("/hook", post(record)).with_state(Recorder {
        started,
        deliveries: deliveries.clone(),
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    Ok((format!("http://{addr}/hook"), deliveries))
}

async fn record(State(recorder): State<Recorder>, headers: HeaderMap) -> &'static str {
    let now_unix_ms = chrono::Utc::now().timestamp_millis();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let nominal_unix_ms = chrono::DateTime::parse_from_rfc3339(&header("x-kairos-nominal-time"))
        .map(|t| t.timestamp_millis())
        .unwrap_or(0);
    let delivery = Delivery {
        key: header("idempotency-key"),
        job_id: header("x-kairos-job"),
        run_id: header("x-kairos-run").parse().unwrap_or(u64::MAX),
        attempt: header("x-kairos-attempt").parse().unwrap_or(0),
        nominal_unix_ms,
        t_ms: recorder.started.elapsed().as_millis() as u64,
        lateness_ms: now_unix_ms - nominal_unix_ms,
    };
    recorder.deliveries.lock().expect("recorder lock").push(delivery);
    "ok"
}
