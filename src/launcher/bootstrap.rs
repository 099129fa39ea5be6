//! Bootstrapping the ACL of a cluster a launcher started: `kairos dev`, the
//! test kit and the benches all want the root token right after the nodes
//! are ready.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;

use crate::error::{Error, Result};
use crate::proto as pb;
use crate::proto::acl_service_client::AclServiceClient;

/// The pause between attempts while the cluster has no leader yet.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Calls `AclService.Bootstrap` on the nodes at `endpoints` (trying each in
/// turn, and again while there is no leader) until it answers or `timeout`
/// passes; the root token with its secret. A cluster bootstrapped already
/// answers [`Error::FailedPrecondition`].
pub async fn bootstrap_root_token(endpoints: &[SocketAddr], timeout: Duration) -> Result<pb::TokenSecret> {
    let deadline = Instant::now() + timeout;
    let mut last = Error::unavailable("no endpoint given");
    loop {
        for addr in endpoints {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| Error::InvalidArgument(format!("{addr}: {e}")))?
                .connect_timeout(Duration::from_secs(2))
                .connect_lazy();
            let mut request = tonic::Request::new(pb::BootstrapRequest {});
            request.set_timeout(Duration::from_secs(10));
            match AclServiceClient::new(channel).bootstrap(request).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(s) if s.code() == Code::FailedPrecondition => {
                    return Err(Error::FailedPrecondition(s.message().to_string()))
                }
                Err(s) => last = Error::unavailable(format!("{addr}: {}", s.message())),
            }
        }
        if Instant::now() + RETRY_PAUSE > deadline {
            return Err(last);
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}
