//! HTTP GET of a node's endpoints (`/readyz`, `/livez`, `/metrics`), for
//! whoever starts nodes: [`super::NodeProcess::wait_ready`], the tests and
//! the load tool.
//!
//! One reqwest client (the `http` job type's TLS setup, no proxy: a node is
//! probed directly even when `HTTP_PROXY` is set) with a per-request
//! timeout, so a frozen node answers "not ready" instead of hanging the probe.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::handlers::HttpHandler;

/// How long one probe may take, connection included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A reusable HTTP client for a node's endpoints.
#[derive(Clone, Debug)]
pub struct HttpProbe {
    /// Pools connections across probes.
    client: reqwest::Client,
}

impl HttpProbe {
    /// A probe with its own client.
    pub fn new() -> Result<HttpProbe> {
        let client = HttpHandler::client_builder()
            .no_proxy()
            .timeout(PROBE_TIMEOUT)
            .build()
            .map_err(|e| Error::internal(format!("building the HTTP probe's client: {e}")))?;
        Ok(HttpProbe { client })
    }

    /// `GET http://<addr><path>`: the status code and the body.
    pub async fn get(&self, addr: &str, path: &str) -> Result<(u16, String)> {
        let url = format!("http://{addr}{path}");
        let failed = |e: reqwest::Error| Error::unavailable(format!("GET {url}: {e}"));
        let response = self.client.get(&url).send().await.map_err(failed)?;
        let code = response.status().as_u16();
        let body = response.text().await.map_err(failed)?;
        Ok((code, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn get_returns_the_code_and_body_and_names_an_unreachable_url() {
        let app = axum::Router::new().route(
            "/readyz",
            axum::routing::get(|| async {
                (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: no leader\n",
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let probe = HttpProbe::new().unwrap();
        assert_eq!(
            probe.get(&addr, "/readyz").await.unwrap(),
            (503, "not ready: no leader\n".to_string())
        );
        assert_eq!(probe.get(&addr, "/nothing").await.unwrap().0, 404);

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let err = probe.get(&closed_addr, "/readyz").await.unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("GET http://{closed_addr}/readyz")),
            "{err}"
        );
    }
}
