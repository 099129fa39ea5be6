//! `sleep`: waits `{"ms": N}` milliseconds, then succeeds with `slept N ms`.
//!
//! A stand-in for "a job that takes a while", used to test timeouts,
//! cancellation and overlap policies. `ms` is required and must lie in
//! `0..=86_400_000` (one day). The sleep is cut short by cancellation (kind
//! `cancelled`) or by the attempt timeout when `ms` exceeds it (kind
//! `timeout`, retryable, matching what a real slow job would report).

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::{Fields, Handler, HandlerError, HandlerResult, RunContext, MAX_PAYLOAD_MS};

/// The `sleep` job type.
#[derive(Clone, Copy, Debug, Default)]
pub struct SleepHandler;

/// Fields a `sleep` payload may contain.
const FIELDS: &[&str] = &["ms"];

/// Parses a payload into the sleep length in ms.
fn parse(payload: &[u8]) -> Result<u64, String> {
    let mut f = Fields::parse(payload, FIELDS)?;
    f.take_ms("ms", 0, MAX_PAYLOAD_MS)?
        .ok_or_else(|| "payload.ms: required".to_string())
}

impl Handler for SleepHandler {
    fn name(&self) -> &'static str {
        "sleep"
    }

    fn validate(&self, payload: &[u8]) -> Result<(), String> {
        parse(payload).map(|_| ())
    }

    fn run(&self, ctx: RunContext, cancel: CancellationToken) -> BoxFuture<'static, HandlerResult> {
        async move {
            let ms = parse(&ctx.payload).map_err(HandlerError::invalid_payload)?;
            let want = Duration::from_millis(ms);
            let limit = ctx.timeout;
            tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(HandlerError::cancelled()),
                _ = tokio::time::sleep(want.min(limit)) => {
                    if want > limit {
                        Err(HandlerError::timeout(limit))
                    } else {
                        Ok(format!("slept {ms} ms"))
                    }
                }
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testutil::{assert_table, class, test_ctx};
    use std::time::Instant;

    #[test]
    fn validation_table() {
        let good = [r#"{"ms":0}"#, r#"{"ms":1500}"#, r#"{"ms":86400000}"#];
        let bad = r#"
                               => payload.ms: required
            {}                 => payload.ms: required
            {"ms":null}        => payload.ms: required
            {"ms":-1}          => payload.ms: must be an integer between 0 and 86400000
            {"ms":86400001}    => payload.ms: must be an integer between 0 and 86400000
            {"ms":1.5}         => payload.ms: must be an integer between 0 and 86400000
            {"ms":"10"}        => payload.ms: must be an integer between 0 and 86400000
            {"ms":1,"extra":2} => payload.extra: unknown field
            []                 => payload: must be a JSON object
            {                  => payload: invalid JSON
        "#;
        assert_table(|p| SleepHandler.validate(p), &good, bad);
    }

    #[tokio::test]
    async fn sleeps_and_reports() {
        let ctx = test_ctx(r#"{"ms":20}"#, Duration::from_secs(5));
        let start = Instant::now();
        let out = SleepHandler.run(ctx, CancellationToken::new()).await;
        assert_eq!(out, Ok("slept 20 ms".to_string()));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[tokio::test]
    async fn honours_cancel_mid_sleep() {
        let ctx = test_ctx(r#"{"ms":60000}"#, Duration::from_secs(120));
        let cancel = CancellationToken::new();
        let start = Instant::now();
        let mut fut = SleepHandler.run(ctx, cancel.clone());
        // One poll parks the handler inside its sleep; then cancel it.
        assert!(futures::poll!(&mut fut).is_pending());
        cancel.cancel();
        let err = tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .expect("sleep ignored cancel")
            .unwrap_err();
        assert_eq!(class(&err), ("cancelled", false));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn stops_at_attempt_timeout() {
        let ctx = test_ctx(r#"{"ms":60000}"#, Duration::from_millis(50));
        let start = Instant::now();
        let err = SleepHandler.run(ctx, CancellationToken::new()).await.unwrap_err();
        assert_eq!(class(&err), ("timeout", true));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn invalid_stored_payload_is_not_retryable() {
        let ctx = test_ctx(r#"{"ms":"x"}"#, Duration::from_secs(1));
        let err = SleepHandler.run(ctx, CancellationToken::new()).await.unwrap_err();
        assert_eq!(class(&err), ("invalid_payload", false));
        assert!(err.message.starts_with("payload.ms:"));
    }
}
