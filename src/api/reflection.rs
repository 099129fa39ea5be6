//! gRPC server reflection on the client listener, both versions
//! (`grpc.reflection.v1.ServerReflection` and the older
//! `grpc.reflection.v1alpha.ServerReflection` that many tools still ask),
//! so that `grpcurl`, `grpcui` or Postman can list and call the API
//! without the `.proto` files.
//!
//! What it serves: the descriptors of every service the listener serves
//! ([`super::service_info::SERVED_DESCRIPTOR_SETS`]: Kairos's protos as
//! `build.rs` compiles them, and the standard health and reflection
//! services), advertising exactly [`super::service_info::public_services`]
//! — so the peer-only `RaftService`, whose messages the descriptor set
//! holds, is not listed as a service here.
//!
//! Who may ask: reflection reveals what `DescribeService` and
//! `/openapi.json` do, and asks what `DescribeService` asks — any valid
//! credential, no permission. [`RequireCaller`] wraps each reflection
//! server and runs the API's own authentication ([`Api::caller`], then
//! [`Api::authenticate`]) before the stream starts: a call without a
//! credential, or with an unknown, expired or revoked one, is answered
//! `UNAUTHENTICATED` and audited under the method's full name, as any
//! refused call; with `--audit-reads` an allowed one is audited too. With
//! `--insecure-disable-auth` everyone is let in, as elsewhere.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::Status;

use super::service_info::{public_services, SERVED_DESCRIPTOR_SETS};
use super::Api;

/// The audited name of a v1 reflection call.
pub const V1_METHOD: &str = "grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
/// The audited name of a v1alpha reflection call.
pub const V1ALPHA_METHOD: &str = "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

/// The reflection servers' builder, with every served descriptor set and
/// the public services advertised.
fn builder() -> tonic_reflection::server::Builder<'static> {
    let builder = tonic_reflection::server::Builder::configure()
        // Both versions' descriptors are in SERVED_DESCRIPTOR_SETS.
        .include_reflection_service(false);
    let builder = SERVED_DESCRIPTOR_SETS
        .iter()
        .fold(builder, |b, set| b.register_encoded_file_descriptor_set(set));
    public_services()
        .into_iter()
        .fold(builder, |b, service| b.with_service_name(service))
}

/// The v1 reflection server, answering authenticated callers of `api`.
pub fn server_v1(
    api: Api,
) -> RequireCaller<
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
> {
    let server = builder()
        .build_v1()
        .expect("the compiled-in descriptor sets are well-formed");
    RequireCaller::new(api, V1_METHOD, server)
}

/// The v1alpha reflection server, answering authenticated callers of `api`.
pub fn server_v1alpha(
    api: Api,
) -> RequireCaller<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
> {
    let server = builder()
        .build_v1alpha()
        .expect("the compiled-in descriptor sets are well-formed");
    RequireCaller::new(api, V1ALPHA_METHOD, server)
}

/// A gRPC service that only authenticated callers reach: the API's
/// authentication runs on each call's metadata and connection first, and a
/// refused call is answered with its status (see the module docs).
#[derive(Clone)]
pub struct RequireCaller<S> {
    api: Api,
    /// The call's name in the audit log.
    method: &'static str,
    inner: S,
}

impl<S> RequireCaller<S> {
    /// `inner`, reached by callers `api` authenticates; refusals are
    /// audited as `method`.
    pub fn new(api: Api, method: &'static str, inner: S) -> RequireCaller<S> {
        RequireCaller { api, method, inner }
    }
}

impl<S: NamedService> NamedService for RequireCaller<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for RequireCaller<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was made ready serves this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (api, method) = (self.api.clone(), self.method);
        // The caller is named from the metadata and the connection's
        // extensions (address, client certificate), as a handler sees them.
        let probe = tonic::Request::from_parts(
            MetadataMap::from_headers(request.headers().clone()),
            request.extensions().clone(),
            (),
        );
        Box::pin(async move {
            match api.admit(&probe, method).await {
                Ok(()) => inner.call(request).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

impl Api {
    /// `Ok` when the caller of `request` (a call's metadata and connection
    /// only) authenticates (any valid
    /// credential, as `DescribeService`); else the refusal, audited.
    async fn admit(&self, request: &tonic::Request<()>, method: &'static str) -> Result<(), Status> {
        let caller = self.caller(request, method).await;
        let principal = {
            let state = self.node.state.read();
            self.authenticate(&caller, &state, "service")?.principal
        };
        if self.auth.audit_reads {
            let record = self.record(&caller, &principal, "service", "", None);
            self.recorder().record(record);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions_build_from_the_served_descriptor_sets() {
        // A malformed or conflicting set would panic here, not at start.
        builder().build_v1().expect("v1");
        builder().build_v1alpha().expect("v1alpha");
    }

    #[test]
    fn the_audited_names_are_the_served_methods() {
        let methods = super::super::service_info::grpc_methods();
        for method in [V1_METHOD, V1ALPHA_METHOD] {
            assert!(methods.iter().any(|m| m == method), "{method}: {methods:?}");
        }
    }
}
