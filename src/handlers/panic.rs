//! `panic`: a test-only job type whose handler panics, so the supervision path
//! (worker restarted, attempt failed with the panic message, retried by the
//! job's policy) can be exercised on a real cluster. It exists only in builds
//! with the `test-handlers` cargo feature (which `kairos-testkit` enables, so
//! the binary the tests start has it and a release build does not), and is
//! registered only on nodes started with the hidden `--test-handlers` flag.
//!
//! Payload: `{"attempts": N}` (default 1): attempts 1..=N panic, later ones
//! succeed, so a retry policy with more than N attempts ends in success.

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{Handler, HandlerError, HandlerResult, Registry, RunContext};

/// The job type's name.
pub const NAME: &str = "panic";

/// `registry`, with the test-only job types added when `enabled` (`--test-handlers`).
pub fn register_if(mut registry: Registry, enabled: bool) -> Registry {
    if enabled {
        registry.register(std::sync::Arc::new(PanicHandler));
    }
    registry
}

/// The `panic` job type.
#[derive(Clone, Copy, Debug, Default)]
pub struct PanicHandler;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    attempts: Option<u32>,
}

fn parse(payload: &[u8]) -> Result<u32, String> {
    if payload.is_empty() {
        return Ok(1);
    }
    let parsed: Payload = serde_json::from_slice(payload).map_err(|e| format!("payload: {e}"))?;
    Ok(parsed.attempts.unwrap_or(1))
}

impl Handler for PanicHandler {
    fn name(&self) -> &'static str {
        NAME
    }

    fn validate(&self, payload: &[u8]) -> Result<(), String> {
        parse(payload).map(|_| ())
    }

    fn run(&self, ctx: RunContext, _cancel: CancellationToken) -> BoxFuture<'static, HandlerResult> {
        async move {
            let attempts = parse(&ctx.payload).map_err(HandlerError::invalid_payload)?;
            if ctx.attempt <= attempts {
                panic!(
                    "test handler panics on attempt {} of run {}",
                    ctx.attempt, ctx.run_id
                );
            }
            Ok(format!("survived after {attempts} panics"))
        }
        .boxed()
    }
}
