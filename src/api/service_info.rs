//! `ServiceInfoService`: what this cluster is and offers, in one record, for
//! a platform's service registry or a developer portal.
//!
//! `DescribeService` needs any valid credential (as `WhoAmI` does: no
//! permission; a call without one, or with an unknown, expired or revoked
//! token, is refused `UNAUTHENTICATED` and audited). Any node answers; the
//! record holds:
//!
//! - **Build**: `name` ("kairos"), `api_version` ("v1"), `build_version`
//!   (the crate's version), `build_commit` (the commit the binary was built
//!   from, which `build.rs` asks git for; "unknown" when built outside a
//!   checkout) and `format_version` ([`crate::codec::FORMAT_VERSION`], what
//!   the nodes write).
//! - **Cluster id** ([`derive_cluster_id`]): Kairos stores no id of its
//!   own, so one is derived from what every node of a cluster already
//!   shares, its cookie (the cluster secret, required on every node):
//!   `hex(HMAC-SHA256(cookie, "kairos cluster id v1")[..16])`, 32 hex
//!   digits. It is the same on every node and across restarts, differs
//!   between clusters with different cookies, and reveals nothing about the
//!   cookie (HMAC is one-way; the label keeps it apart from the task token
//!   key, [`super::task_token`], derived from the same cookie). Node ids
//!   would not do: every cluster started as `1,2,3` would share them.
//! - **Nodes**: every member's id, role, voter flag and client gRPC address,
//!   from the probe `kairos cluster status` makes ([`Api::member_reports`]),
//!   and its HTTP address (`/readyz`, `/metrics`), which each node reports
//!   about itself ([`crate::node::NodeReport::http_addr`]). A member that
//!   does not answer shows as `UNREACHABLE`, with the client address the
//!   node's address book has and no HTTP address.
//! - **Job types**: the built-in ones (no schema) as `ListJobTypes` shows
//!   them, then those external workers registered, with their payload
//!   schemas; read linearizably.
//! - **Permissions**: every permission name ([`Permission::ALL`]).
//! - **Features**: [`FEATURES`], fixed for this build.
//! - **Endpoints**: every method of every public gRPC service, with the
//!   permission it needs ([`grpc_endpoints`]). The list of methods is
//!   decoded from the descriptor set `build.rs` compiles from the protos
//!   and from those of the standard `grpc.health.v1.Health` and
//!   `grpc.reflection.v1{,alpha}.ServerReflection` services the listener
//!   serves too ([`SERVED_DESCRIPTOR_SETS`]), so it cannot drift from what
//!   is served; the permission of each comes from [`GRPC_PERMISSIONS`],
//!   which a unit test holds to the descriptors in both directions. The
//!   peer-only `RaftService` is left out. Then the REST endpoints
//!   ([`rest_endpoints`]). Reflection advertises the same services
//!   ([`public_services`]).
//!
//! The permission of an endpoint is the one it always needs; where the
//! request decides more it is not spelled out: a create or update of an
//! `exec` job also needs `job:exec`, `ListJobTypes` and `GetJobType` accept
//! `worker:connect` instead of `job:read`. An empty permission: any valid
//! credential (`WhoAmI`, `DescribeService`, reflection), or none
//! (`Bootstrap`, health).

use std::sync::LazyLock;

use hmac::{Hmac, KeyInit, Mac};
use prost::Message;
use sha2::Sha256;
use tonic::{Request, Response, Status};

use super::cluster_service::role;
use super::Api;
use crate::codec::FORMAT_VERSION;
use crate::proto as pb;
use crate::proto::service_info_service_server::{ServiceInfoService, ServiceInfoServiceServer};
use crate::scheduler::acl::Permission;
use crate::transport::ClusterSecret;

/// The service's name.
pub const NAME: &str = "kairos";
/// The public API's version (the protos' package).
pub const API_VERSION: &str = "v1";
/// This build's version.
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit this binary was built from (see `build.rs`).
pub const BUILD_COMMIT: &str = env!("KAIROS_BUILD_COMMIT");

/// What this build offers; `rest` and `openapi` are the REST gateway on
/// `--http-addr` and its `/openapi.json` (its routes: [`rest_endpoints`]).
pub const FEATURES: &[&str] = &[
    "cron",
    "interval",
    "one-shot",
    "event-triggers",
    "dependencies",
    "lifecycle-events",
    "sinks",
    "external-workers",
    "rbac",
    "audit-log",
    "tls",
    "rest",
    "openapi",
];

/// The descriptor set of every compiled proto (written by `build.rs`).
const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kairos_descriptor.bin"));
/// The package of the public API.
const PACKAGE: &str = "kairos.v1";
/// Services of [`PACKAGE`] that are not public: served on the peer listener only.
const PEER_ONLY_SERVICES: &[&str] = &["RaftService"];

/// The permission each public gRPC method needs, by full name
/// (`kairos.v1.Service/Method`); `None`: no permission (see the module docs).
pub const GRPC_PERMISSIONS: &[(&str, Option<Permission>)] = &[
    ("kairos.v1.JobService/CreateJob", Some(Permission::JobWrite)),
    ("kairos.v1.JobService/GetJob", Some(Permission::JobRead)),
    ("kairos.v1.JobService/ListJobs", Some(Permission::JobRead)),
    ("kairos.v1.JobService/UpdateJob", Some(Permission::JobWrite)),
    ("kairos.v1.JobService/DeleteJob", Some(Permission::JobWrite)),
    ("kairos.v1.JobService/PauseJob", Some(Permission::JobWrite)),
    ("kairos.v1.JobService/ResumeJob", Some(Permission::JobWrite)),
    ("kairos.v1.RunService/TriggerJob", Some(Permission::JobTrigger)),
    ("kairos.v1.RunService/BackfillJob", Some(Permission::JobTrigger)),
    ("kairos.v1.RunService/DescribeJob", Some(Permission::JobRead)),
    ("kairos.v1.RunService/ListRuns", Some(Permission::RunRead)),
    ("kairos.v1.RunService/GetRun", Some(Permission::RunRead)),
    ("kairos.v1.RunService/CancelRun", Some(Permission::RunCancel)),
    ("kairos.v1.RunService/WatchRuns", Some(Permission::RunRead)),
    ("kairos.v1.ClusterService/Status", Some(Permission::ClusterRead)),
    ("kairos.v1.ClusterService/AddNode", Some(Permission::ClusterAdmin)),
    (
        "kairos.v1.ClusterService/RemoveNode",
        Some(Permission::ClusterAdmin),
    ),
    (
        "kairos.v1.ClusterService/SaveSnapshot",
        Some(Permission::ClusterAdmin),
    ),
    ("kairos.v1.ClusterService/Version", Some(Permission::ClusterRead)),
    ("kairos.v1.AclService/Bootstrap", None),
    ("kairos.v1.AclService/CreateRole", Some(Permission::AclAdmin)),
    ("kairos.v1.AclService/GetRole", Some(Permission::AclAdmin)),
    ("kairos.v1.AclService/ListRoles", Some(Permission::AclAdmin)),
    ("kairos.v1.AclService/DeleteRole", Some(Permission::AclAdmin)),
    ("kairos.v1.AclService/CreateToken", Some(Permission::AclAdmin)),
    ("kairos.v1.AclService/ListTokens", Some(Permission::AclAdmin)),
    ("kairos.v1.AclService/RevokeToken", Some(Permission::AclAdmin)),
    ("kairos.v1.AclService/CreateBinding", Some(Permission::AclAdmin)),
    ("kairos.v1.AclService/ListBindings", Some(Permission::AclAdmin)),
    ("kairos.v1.AclService/DeleteBinding", Some(Permission::AclAdmin)),
    ("kairos.v1.AclService/WhoAmI", None),
    ("kairos.v1.AuditService/ListAudit", Some(Permission::AuditRead)),
    ("kairos.v1.AuditService/VerifyAudit", Some(Permission::AuditRead)),
    (
        "kairos.v1.WorkerService/RegisterWorker",
        Some(Permission::WorkerConnect),
    ),
    (
        "kairos.v1.WorkerService/PollTask",
        Some(Permission::WorkerConnect),
    ),
    (
        "kairos.v1.WorkerService/HeartbeatTask",
        Some(Permission::WorkerConnect),
    ),
    (
        "kairos.v1.WorkerService/CompleteTask",
        Some(Permission::WorkerConnect),
    ),
    (
        "kairos.v1.WorkerService/ListWorkers",
        Some(Permission::ClusterRead),
    ),
    ("kairos.v1.WorkerService/ListJobTypes", Some(Permission::JobRead)),
    ("kairos.v1.WorkerService/GetJobType", Some(Permission::JobRead)),
    (
        "kairos.v1.EventService/PublishEvent",
        Some(Permission::EventPublish),
    ),
    ("kairos.v1.EventService/WatchEvents", Some(Permission::EventWatch)),
    ("kairos.v1.EventService/CreateSink", Some(Permission::SinkAdmin)),
    ("kairos.v1.EventService/ListSinks", Some(Permission::SinkAdmin)),
    ("kairos.v1.EventService/DeleteSink", Some(Permission::SinkAdmin)),
    ("kairos.v1.ServiceInfoService/DescribeService", None),
    // Needs no credential: what `/readyz` answers (see super::health).
    ("grpc.health.v1.Health/Check", None),
    ("grpc.health.v1.Health/Watch", None),
    // Any valid credential, as DescribeService (see super::reflection).
    ("grpc.reflection.v1.ServerReflection/ServerReflectionInfo", None),
    (
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        None,
    ),
];

/// The HMAC label of the cluster id (see the module docs).
const CLUSTER_ID_LABEL: &[u8] = b"kairos cluster id v1";
/// Bytes of the HMAC kept in the cluster id.
const CLUSTER_ID_BYTES: usize = 16;

/// The cluster's id, derived from its cookie (see the module docs).
pub fn derive_cluster_id(secret: &ClusterSecret) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(CLUSTER_ID_LABEL);
    let digest = mac.finalize().into_bytes();
    digest[..CLUSTER_ID_BYTES]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The encoded descriptor sets of every service the client listener
/// serves: Kairos's own (of which [`PEER_ONLY_SERVICES`] are not served
/// there), then the standard health and reflection services
/// ([`super::health`], [`super::reflection`]).
pub const SERVED_DESCRIPTOR_SETS: &[&[u8]] = &[
    DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// Every public service in [`SERVED_DESCRIPTOR_SETS`], by full name
/// (`kairos.v1.JobService`, `grpc.health.v1.Health`), with the full names
/// of its methods (`kairos.v1.JobService/CreateJob`).
fn public_services_with_methods() -> Vec<(String, Vec<String>)> {
    SERVED_DESCRIPTOR_SETS
        .iter()
        .map(|encoded| {
            prost_types::FileDescriptorSet::decode(*encoded).expect("a compiled-in descriptor set decodes")
        })
        .flat_map(|set| set.file)
        .flat_map(|file| {
            let package = file.package().to_string();
            file.service.into_iter().filter_map(move |service| {
                if package == PACKAGE && PEER_ONLY_SERVICES.contains(&service.name()) {
                    return None;
                }
                let name = format!("{package}.{}", service.name());
                let methods = service
                    .method
                    .iter()
                    .map(|method| format!("{name}/{}", method.name()))
                    .collect();
                Some((name, methods))
            })
        })
        .collect()
}

/// Every public gRPC service the client listener serves, by full name,
/// Kairos's first: what reflection advertises.
pub fn public_services() -> Vec<String> {
    public_services_with_methods()
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// Kairos's own public services (`kairos.v1.*`), by full name: those the
/// health service reports on besides the whole server.
pub fn kairos_services() -> Vec<String> {
    public_services()
        .into_iter()
        .filter(|name| {
            name.strip_prefix(PACKAGE)
                .is_some_and(|rest| rest.starts_with('.'))
        })
        .collect()
}

/// Every method of every public service the client listener serves, as
/// `package.Service/Method`, Kairos's in the protos' order, then health's
/// and reflection's.
pub fn grpc_methods() -> Vec<String> {
    public_services_with_methods()
        .into_iter()
        .flat_map(|(_, methods)| methods)
        .collect()
}

/// The public gRPC methods with the permission each needs.
pub fn grpc_endpoints() -> Vec<pb::ApiEndpoint> {
    grpc_methods()
        .into_iter()
        .map(|name| {
            let permission = GRPC_PERMISSIONS
                .iter()
                .find(|(method, _)| *method == name)
                .and_then(|(_, permission)| *permission)
                .map_or("", Permission::as_str);
            pb::ApiEndpoint {
                protocol: "grpc".into(),
                permission: permission.into(),
                name,
            }
        })
        .collect()
}

/// The REST endpoints (`"POST /v1/jobs/{id}:pause"`), from the REST
/// gateway's route table ([`crate::rest::routes::ROUTES`], which builds its
/// router), each with the permission of the gRPC method it calls.
pub fn rest_endpoints() -> Vec<pb::ApiEndpoint> {
    let grpc = grpc_endpoints();
    crate::rest::routes::ROUTES
        .iter()
        .map(|route| {
            let method = route.grpc_name();
            let permission = grpc
                .iter()
                .find(|e| e.name == method)
                .map(|e| e.permission.clone())
                .unwrap_or_else(|| panic!("REST route {} calls {method}, not a public method", route.path));
            pb::ApiEndpoint {
                protocol: "rest".into(),
                name: format!("{} {}", route.method.as_str(), route.public_path()),
                permission,
            }
        })
        .collect()
}

/// Every endpoint, decoded once.
static ENDPOINTS: LazyLock<Vec<pb::ApiEndpoint>> = LazyLock::new(|| {
    let mut endpoints = grpc_endpoints();
    endpoints.extend(rest_endpoints());
    endpoints
});

/// The server of this service, for [`super::serve`].
pub fn server(api: Api) -> ServiceInfoServiceServer<Api> {
    ServiceInfoServiceServer::new(api).max_decoding_message_size(super::MAX_API_MESSAGE_BYTES)
}

impl Api {
    /// Every member as a [`pb::ServiceNode`] (see the module docs).
    async fn service_nodes(&self) -> Vec<pb::ServiceNode> {
        self.member_reports()
            .await
            .into_iter()
            .map(|m| match &m.report {
                Some(r) => pb::ServiceNode {
                    id: m.id,
                    role: role(r) as i32,
                    voter: m.voter,
                    grpc_addr: r.grpc_addr.clone(),
                    http_addr: r.http_addr.clone(),
                },
                None => pb::ServiceNode {
                    id: m.id,
                    role: pb::NodeRole::Unreachable as i32,
                    voter: m.voter,
                    grpc_addr: self.node.client_addr_of(&m.peer_addr).unwrap_or_default(),
                    http_addr: String::new(),
                },
            })
            .collect()
    }

    /// The built-in job types, then the registered ones.
    async fn job_type_infos(&self) -> Result<Vec<pb::JobTypeInfo>, Status> {
        let builtin = self.builtin_types_pb().into_iter().map(|t| pb::JobTypeInfo {
            name: t.name,
            builtin: true,
            description: t.description,
            payload_schema: String::new(),
        });
        let registered = self
            .read(pb::ReadConsistency::Linearizable as i32, |state| {
                Ok(state
                    .job_types()
                    .map(|def| pb::JobTypeInfo {
                        name: def.name.clone(),
                        builtin: false,
                        description: def.description.clone(),
                        payload_schema: def.payload_schema.clone(),
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
        Ok(builtin.chain(registered).collect())
    }
}

#[tonic::async_trait]
impl ServiceInfoService for Api {
    async fn describe_service(
        &self,
        request: Request<pb::DescribeServiceRequest>,
    ) -> Result<Response<pb::ServiceDescription>, Status> {
        let caller = self.caller(&request, "DescribeService").await;
        self.observed(caller.method, async {
            {
                let state = self.node.state.read();
                let subject = self.authenticate(&caller, &state, "service")?;
                if self.auth.audit_reads {
                    let record = self.record(&caller, &subject.principal, "service", "", None);
                    self.recorder().record(record);
                }
            }
            let (nodes, job_types) = tokio::join!(self.service_nodes(), self.job_type_infos());
            Ok(Response::new(pb::ServiceDescription {
                name: NAME.into(),
                api_version: API_VERSION.into(),
                build_version: BUILD_VERSION.into(),
                build_commit: BUILD_COMMIT.into(),
                cluster_id: self.node.cluster_id().into(),
                answered_by: self.node.id,
                nodes,
                job_types: job_types?,
                permissions: Permission::ALL.iter().map(|p| p.as_str().into()).collect(),
                features: FEATURES.iter().map(|f| f.to_string()).collect(),
                endpoints: ENDPOINTS.clone(),
                format_version: u32::from(FORMAT_VERSION),
            }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_public_method_of_the_descriptor_has_a_permission_entry_and_no_entry_is_stale() {
        let methods = grpc_methods();
        let unique: BTreeSet<&str> = methods.iter().map(String::as_str).collect();
        assert_eq!(unique.len(), methods.len(), "a method listed twice: {methods:?}");
        let table: BTreeSet<&str> = GRPC_PERMISSIONS.iter().map(|(m, _)| *m).collect();
        assert_eq!(table.len(), GRPC_PERMISSIONS.len(), "a method twice in the table");
        let missing: Vec<&str> = unique.difference(&table).copied().collect();
        assert!(
            missing.is_empty(),
            "methods without a permission entry: {missing:?}"
        );
        let stale: Vec<&str> = table.difference(&unique).copied().collect();
        assert!(
            stale.is_empty(),
            "entries for methods the protos do not have: {stale:?}"
        );
    }

    #[test]
    fn the_endpoints_are_the_public_services_methods_with_their_permissions() {
        let endpoints = grpc_endpoints();
        let find = |name: &str| endpoints.iter().find(|e| e.name == name);
        let create = find("kairos.v1.JobService/CreateJob").expect("CreateJob");
        assert_eq!(
            (create.protocol.as_str(), create.permission.as_str()),
            ("grpc", "job:write")
        );
        let publish = find("kairos.v1.EventService/PublishEvent").expect("PublishEvent");
        assert_eq!(publish.permission, "event:publish");
        let describe = find("kairos.v1.ServiceInfoService/DescribeService").expect("DescribeService");
        assert_eq!(describe.permission, "");
        assert!(
            !endpoints.iter().any(|e| e.name.contains("RaftService")),
            "the peer-only RaftService is not public"
        );
        // Every public service is there, each with all its methods.
        let services: BTreeSet<&str> = endpoints
            .iter()
            .map(|e| e.name.split_once('/').expect("Service/Method").0)
            .collect();
        let expected: BTreeSet<&str> = [
            "kairos.v1.AclService",
            "kairos.v1.AuditService",
            "kairos.v1.ClusterService",
            "kairos.v1.EventService",
            "kairos.v1.JobService",
            "kairos.v1.RunService",
            "kairos.v1.ServiceInfoService",
            "kairos.v1.WorkerService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
        .into();
        assert_eq!(services, expected);
        assert_eq!(
            public_services().into_iter().collect::<BTreeSet<String>>(),
            expected.iter().map(|s| s.to_string()).collect()
        );
        assert_eq!(kairos_services().len(), 8, "{:?}", kairos_services());
        assert!(kairos_services().iter().all(|s| s.starts_with("kairos.v1.")));
        let health = find("grpc.health.v1.Health/Check").expect("Health/Check");
        assert_eq!(health.permission, "");
        let job_service = endpoints
            .iter()
            .filter(|e| e.name.starts_with("kairos.v1.JobService/"))
            .count();
        assert_eq!(job_service, 7);
    }

    #[test]
    fn the_rest_endpoints_are_the_gateway_routes_with_their_methods_permissions() {
        let rest = rest_endpoints();
        assert_eq!(rest.len(), crate::rest::routes::ROUTES.len());
        let find = |name: &str| {
            rest.iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("{name}"))
        };
        let pause = find("POST /v1/jobs/{id}:pause");
        assert_eq!(
            (pause.protocol.as_str(), pause.permission.as_str()),
            ("rest", "job:write")
        );
        assert_eq!(find("PATCH /v1/jobs/{id}").permission, "job:write");
        assert_eq!(find("GET /v1/service").permission, "");
        assert_eq!(find("POST /v1/events").permission, "event:publish");
        // The gateway's own column says the same as the gRPC table.
        for route in crate::rest::routes::ROUTES {
            let endpoint = find(&format!("{} {}", route.method.as_str(), route.public_path()));
            let expected = match route.permission {
                "none" | "authenticated" => "",
                p => p,
            };
            assert_eq!(endpoint.permission, expected, "{}", endpoint.name);
        }
    }

    #[test]
    fn the_cluster_id_is_a_keyed_digest_of_the_cookie() {
        let id = |cookie: &str| derive_cluster_id(&ClusterSecret::new(cookie.into(), "test").unwrap());
        let a = id("kairos-test-cookie-0123456789abcdef");
        // HMAC-SHA256(cookie, "kairos cluster id v1"), first 16 bytes: a
        // changed derivation would change every cluster's id on upgrade.
        assert_eq!(a, "6ff382b880d8fe2a6ac29bc0d3e70beb");
        assert_eq!(a, id("kairos-test-cookie-0123456789abcdef"), "stable");
        assert_ne!(a, id("another-cookie-0123456789abcdef"), "another cluster");
        assert_eq!(a.len(), 2 * CLUSTER_ID_BYTES);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn the_build_is_named() {
        assert_eq!(BUILD_VERSION, env!("CARGO_PKG_VERSION"));
        assert!(!BUILD_COMMIT.is_empty());
        assert!(
            BUILD_COMMIT == "unknown" || BUILD_COMMIT.bytes().all(|b| b.is_ascii_hexdigit()),
            "{BUILD_COMMIT}"
        );
    }
}
