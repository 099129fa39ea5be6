//! Credentials for the test clusters: every cluster a test starts has
//! authentication on, so its clients carry a bearer token.
//!
//! [`Bearer`] is a tonic interceptor adding `authorization: Bearer <secret>`
//! to every call; [`authed`] wraps a channel with it. A [`crate::TestCluster`]
//! bootstraps its ACL once its nodes are ready and hands out clients that
//! carry the root token.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Adds `authorization: Bearer <secret>` to every call (none when `None`).
#[derive(Clone, Debug)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// A bearer of `secret`.
    pub fn new(secret: &str) -> Bearer {
        Bearer(Some(
            format!("Bearer {secret}")
                .parse()
                .expect("a token secret is ASCII"),
        ))
    }

    /// No credential (for tests of refusals).
    pub fn none() -> Bearer {
        Bearer(None)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry a credential.
pub type Authed = InterceptedService<Channel, Bearer>;

/// A lazily connecting channel to `addr` carrying `bearer`.
pub fn authed(addr: &str, bearer: Bearer) -> Authed {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a loopback address")
        .connect_lazy();
    InterceptedService::new(channel, bearer)
}
