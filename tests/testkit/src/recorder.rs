//! A webhook on a free loopback port that records every request the `http`
//! job type delivers to it.

use std::sync::{Arc, Mutex};

/// One request received by the [`recorder`].
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The `Idempotency-Key` header (`job_id:nominal_time`).
    pub key: String,
    /// The `X-Kairos-Attempt` header.
    pub attempt: u32,
    /// Receive time minus the `X-Kairos-Nominal-Time` header, ms.
    pub lateness_ms: i64,
}

/// Every request a recorder received.
pub type Deliveries = Arc<Mutex<Vec<Delivery>>>;

/// A recording webhook on a free loopback port: returns its URL.
pub async fn recorder() -> (String, Deliveries) {
    let deliveries: Deliveries = Arc::default();
    let seen = deliveries.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let seen = seen.clone();
        async move {
            let received = chrono::Utc::now();
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let nominal = chrono::DateTime::parse_from_rfc3339(&header("x-kairos-nominal-time"))
                .map(|t| t.timestamp_millis())
                .unwrap_or(0);
            seen.lock().unwrap().push(Delivery {
                key: header("idempotency-key"),
                attempt: header("x-kairos-attempt").parse().unwrap_or(0),
                lateness_ms: received.timestamp_millis() - nominal,
            });
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, deliveries)
}
