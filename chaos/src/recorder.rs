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
    push(
        recorder.started,
        &recorder.deliveries,
        Identity {
            key: header("idempotency-key"),
            job_id: header("x-kairos-job"),
            run_id: header("x-kairos-run").parse().unwrap_or(u64::MAX),
            attempt: header("x-kairos-attempt").parse().unwrap_or(0),
            nominal_unix_ms,
        },
    );
    "ok"
}

/// What identifies one execution: what the `http` handler sends in its
/// identity headers.
pub struct Identity {
    /// `Idempotency-Key`.
    pub key: String,
    /// `X-Kairos-Job`.
    pub job_id: String,
    /// `X-Kairos-Run`.
    pub run_id: u64,
    /// `X-Kairos-Attempt`.
    pub attempt: u32,
    /// `X-Kairos-Nominal-Time` as Unix ms.
    pub nominal_unix_ms: i64,
}

/// Records one delivery now: a webhook request, or an external worker's
/// execution (`external`), which records what its webhook would carry.
pub fn push(started: Instant, deliveries: &Deliveries, identity: Identity) {
    let now_unix_ms = chrono::Utc::now().timestamp_millis();
    let delivery = Delivery {
        key: identity.key,
        job_id: identity.job_id,
        run_id: identity.run_id,
        attempt: identity.attempt,
        nominal_unix_ms: identity.nominal_unix_ms,
        t_ms: started.elapsed().as_millis() as u64,
        lateness_ms: now_unix_ms - identity.nominal_unix_ms,
    };
    deliveries.lock().expect("recorder lock").push(delivery);
}
