//! `noop`: succeeds at once with output `ok`.
//!
//! Useful for exercising the scheduler (timing, fan-out, history) without any
//! side effect. The payload is ignored entirely, so any bytes are accepted.

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::{Handler, HandlerError, HandlerResult, RunContext};

/// The `noop` job type.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopHandler;

impl Handler for NoopHandler {
    fn name(&self) -> &'static str {
        "noop"
    }

    fn validate(&self, _payload: &[u8]) -> Result<(), String> {
        Ok(())
    }

    fn run(&self, _ctx: RunContext, cancel: CancellationToken) -> BoxFuture<'static, HandlerResult> {
        let result = if cancel.is_cancelled() {
            Err(HandlerError::cancelled())
        } else {
            Ok("ok".to_string())
        };
        futures::future::ready(result).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testutil::{class, test_ctx};
    use std::time::Duration;

    #[test]
    fn accepts_any_payload() {
        for p in [
            &b""[..],
            b"{}",
            b"not json",
            b"[1,2]",
            br#"{"x":1}"#,
            &[0xff, 0x00],
        ] {
            assert_eq!(NoopHandler.validate(p), Ok(()));
        }
    }

    #[tokio::test]
    async fn succeeds_with_ok() {
        let ctx = test_ctx("whatever", Duration::from_secs(1));
        let out = NoopHandler.run(ctx, CancellationToken::new()).await;
        assert_eq!(out, Ok("ok".to_string()));
    }

    #[tokio::test]
    async fn honours_prior_cancel() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = NoopHandler
            .run(test_ctx("", Duration::from_secs(1)), cancel)
            .await
            .unwrap_err();
        assert_eq!(class(&err), ("cancelled", false));
    }
}
