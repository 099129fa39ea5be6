//! The node's HTTP endpoints on `--http-addr`.
//!
//! - `GET /livez`: 200 while the process serves HTTP at all.
//! - `GET /readyz`: 200 only when the node knows a leader and has applied the
//!   committed log it found at start; 503 with the reason otherwise. Load
//!   balancers and `kairos dev` wait on it ([`crate::launcher::HttpProbe`]).
//! - `GET /metrics`: Prometheus text format (see [`crate::metrics`]).
//! - `/v1/...`: the REST API ([`crate::rest`]), authenticated as the gRPC
//!   API is; `GET /openapi.json`: its OpenAPI 3.1 document. Any other path
//!   is `404` in the REST API's error shape.
//!
//! The first three and the document need no credential.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::metrics::Metrics;
use crate::node::Node;

#[derive(Clone)]
struct AppState {
    node: Arc<Node>,
    metrics: Arc<Metrics>,
}

/// Serves the HTTP endpoints on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    api: Api,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let document: Arc<str> = crate::rest::openapi::document()
        .to_json()
        .expect("the OpenAPI document serializes")
        .into();
    let app = Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { node, metrics })
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], document.to_string()) }
            }),
        )
        .merge(crate::rest::router(api))
        .fallback(crate::rest::fallback);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}

async fn readyz(State(app): State<AppState>) -> impl IntoResponse {
    match app.node.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}

/// A scrape walks the jobs and may hash new audit entries: it runs on the
/// blocking pool, not on a runtime worker.
async fn metrics_text(State(app): State<AppState>) -> axum::response::Response {
    match tokio::task::spawn_blocking(move || app.metrics.render(&app.node)).await {
        Ok(body) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!("rendering /metrics failed: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering the metrics failed\n",
            )
                .into_response()
        }
    }
}
