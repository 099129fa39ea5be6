//! `AclService`: bootstrap, roles, tokens and certificate bindings.
//!
//! Every change goes through the state machine like a job write (so it is
//! authorized at its entry and audited in the same apply) and needs
//! `acl:admin`, except `Bootstrap`, which anyone may call once per cluster.
//! Secrets are made here, on the receiving node, from the OS random number
//! generator: 256 bits, shown in hex once in the reply; the log and the
//! state hold only their SHA-256. Accessor ids are 128 random bits in hex.

use rand::rngs::SysRng;
use rand::TryRng;
use tonic::{Request, Response, Status};

use super::convert::{duration_ms, ms_timestamp};
use super::{to_status, Api};
use crate::proto as pb;
use crate::proto::acl_service_server::AclService;
use crate::scheduler::acl::{
    secret_hash, validate_name, validate_role, AclTables, Binding, Credential, Permission, Resource, Role,
    Subject, Token, ROOT_ROLE, ROOT_TOKEN_NAME,
};
use crate::scheduler::{Command, Response as CommandResponse, State};

/// `n` random bytes from the OS, in lowercase hex.
pub(super) fn random_hex(n: usize) -> Result<String, Status> {
    let mut bytes = vec![0u8; n];
    SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| Status::internal(format!("the OS random number generator failed: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A new accessor id and secret.
fn new_secret() -> Result<(String, String), Status> {
    Ok((random_hex(16)?, random_hex(32)?))
}

fn role_to_pb(role: &Role) -> pb::Role {
    pb::Role {
        name: role.name.clone(),
        permissions: role.permissions.iter().map(|p| p.as_str().to_string()).collect(),
        owners: role.owners.clone(),
        jobs: role.jobs.clone(),
        types: role.types.clone(),
        topics: role.topics.clone(),
        description: role.description.clone(),
        created_at: (role.created_ms != 0).then(|| ms_timestamp(role.created_ms)),
        created_by: role.created_by.clone(),
        builtin: role.name == ROOT_ROLE,
    }
}

fn token_to_pb(token: &Token) -> pb::Token {
    pb::Token {
        accessor_id: token.accessor_id.clone(),
        name: token.name.clone(),
        roles: token.roles.clone(),
        expires_at: token.expires_ms.map(ms_timestamp),
        created_at: Some(ms_timestamp(token.created_ms)),
        created_by: token.created_by.clone(),
    }
}

fn binding_from_pb(binding: Option<pb::Binding>) -> Result<Binding, Status> {
    let binding = binding.ok_or_else(|| Status::invalid_argument("binding: required"))?;
    validate_name("binding.subject", &binding.subject).map_err(to_status)?;
    validate_name("binding.role", &binding.role).map_err(to_status)?;
    Ok(Binding {
        subject: binding.subject,
        role: binding.role,
    })
}

fn role_from_pb(role: Option<pb::Role>) -> Result<Role, Status> {
    let role = role.ok_or_else(|| Status::invalid_argument("role: required"))?;
    let permissions = role
        .permissions
        .iter()
        .map(|p| p.trim().parse::<Permission>())
        .collect::<Result<_, _>>()
        .map_err(to_status)?;
    let role = Role {
        name: role.name,
        permissions,
        owners: role.owners,
        jobs: role.jobs,
        types: role.types,
        topics: role.topics,
        description: role.description,
        created_ms: 0,
        created_by: String::new(),
    };
    validate_role(&role).map_err(to_status)?;
    Ok(role)
}

fn unexpected(reply: CommandResponse) -> Status {
    Status::internal(format!("unexpected state machine reply {reply:?}"))
}

fn secret_reply(reply: CommandResponse, secret: String) -> Result<Response<pb::TokenSecret>, Status> {
    match reply {
        CommandResponse::Token(token) => Ok(Response::new(pb::TokenSecret {
            accessor_id: token.accessor_id,
            secret,
            name: token.name,
            roles: token.roles,
            expires_at: token.expires_ms.map(ms_timestamp),
        })),
        other => Err(unexpected(other)),
    }
}

impl Api {
    /// Runs an ACL read: the caller needs `acl:admin`.
    async fn acl_read<T>(
        &self,
        caller: &super::auth::Caller,
        query: impl FnOnce(&State) -> Result<T, Status>,
    ) -> Result<T, Status> {
        self.read(pb::ReadConsistency::Linearizable as i32, |state| {
            self.authorize(caller, state, Permission::AclAdmin, &Resource::Cluster)?;
            query(state)
        })
        .await
    }
}

#[tonic::async_trait]
impl AclService for Api {
    async fn bootstrap(
        &self,
        request: Request<pb::BootstrapRequest>,
    ) -> Result<Response<pb::TokenSecret>, Status> {
        let caller = self.caller(&request, "Bootstrap").await;
        self.observed(caller.method, async {
            let (accessor_id, secret) = new_secret()?;
            let token = Token {
                accessor_id,
                name: ROOT_TOKEN_NAME.into(),
                secret_hash: secret_hash(&secret),
                roles: vec![ROOT_ROLE.into()],
                expires_ms: None,
                created_ms: 0,
                created_by: String::new(),
            };
            // No credential is needed: the state machine allows it once.
            let mut anyone = caller.clone();
            if anyone.rejected.take().is_some() {
                anyone.credential = Credential::None;
            }
            let reply = self
                .unchecked_write(&anyone, "acl", Command::AclBootstrap { token })
                .await?;
            secret_reply(reply, secret)
        })
        .await
    }

    async fn create_role(
        &self,
        request: Request<pb::CreateRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        let caller = self.caller(&request, "CreateRole").await;
        self.observed(caller.method, async {
            let req = request.into_inner();
            let resource = format!("role {}", req.role.as_ref().map_or("", |r| r.name.as_str()));
            let command = role_from_pb(req.role).map(|role| Command::CreateRoleWithScopes {
                types: role.types.clone(),
                topics: role.topics.clone(),
                role,
            });
            match self.client_write(&caller, &resource, "", command).await? {
                CommandResponse::Role(role) => Ok(Response::new(role_to_pb(&role))),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    async fn get_role(&self, request: Request<pb::GetRoleRequest>) -> Result<Response<pb::Role>, Status> {
        let caller = self.caller(&request, "GetRole").await;
        self.observed(caller.method, async {
            let name = request.into_inner().name;
            self.acl_read(&caller, |state| {
                state
                    .role(&name)
                    .map(|r| Response::new(role_to_pb(&r)))
                    .ok_or_else(|| Status::not_found(format!("role {name:?} not found")))
            })
            .await
        })
        .await
    }

    async fn list_roles(
        &self,
        request: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        let caller = self.caller(&request, "ListRoles").await;
        self.observed(caller.method, async {
            self.acl_read(&caller, |state| {
                let roles = std::iter::once(Role::root())
                    .chain(state.roles().cloned())
                    .map(|r| role_to_pb(&r))
                    .collect();
                Ok(Response::new(pb::ListRolesResponse { roles }))
            })
            .await
        })
        .await
    }

    async fn delete_role(
        &self,
        request: Request<pb::DeleteRoleRequest>,
    ) -> Result<Response<pb::DeleteRoleResponse>, Status> {
        let caller = self.caller(&request, "DeleteRole").await;
        self.observed(caller.method, async {
            let name = request.into_inner().name;
            let command = validate_name("name", &name)
                .map_err(to_status)
                .map(|_| Command::DeleteRole { name: name.clone() });
            self.client_write(&caller, &format!("role {name}"), "", command)
                .await?;
            Ok(Response::new(pb::DeleteRoleResponse {}))
        })
        .await
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::TokenSecret>, Status> {
        let caller = self.caller(&request, "CreateToken").await;
        self.observed(caller.method, async {
            let req = request.into_inner();
            let (accessor_id, secret) = new_secret()?;
            let command = (|| {
                validate_name("name", &req.name).map_err(to_status)?;
                if req.roles.is_empty() {
                    return Err(Status::invalid_argument("roles: at least one role is required"));
                }
                for role in &req.roles {
                    validate_name("roles", role).map_err(to_status)?;
                }
                let ttl_ms = match &req.ttl {
                    Some(ttl) => duration_ms(ttl, "ttl").map_err(to_status)?,
                    None => 0,
                };
                let now = chrono::Utc::now().timestamp_millis();
                let expires_ms =
                    (ttl_ms > 0).then(|| now.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX)));
                Ok(Command::CreateToken {
                    token: Token {
                        accessor_id: accessor_id.clone(),
                        name: req.name.clone(),
                        secret_hash: secret_hash(&secret),
                        roles: req.roles.clone(),
                        expires_ms,
                        created_ms: 0,
                        created_by: String::new(),
                    },
                })
            })();
            let reply = self
                .client_write(&caller, &format!("token {accessor_id}"), "", command)
                .await?;
            secret_reply(reply, secret)
        })
        .await
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = self.caller(&request, "ListTokens").await;
        self.observed(caller.method, async {
            self.acl_read(&caller, |state| {
                let tokens = state.tokens().map(token_to_pb).collect();
                Ok(Response::new(pb::ListTokensResponse { tokens }))
            })
            .await
        })
        .await
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let caller = self.caller(&request, "RevokeToken").await;
        self.observed(caller.method, async {
            let accessor_id = request.into_inner().accessor_id;
            let command = validate_name("accessor_id", &accessor_id)
                .map_err(to_status)
                .map(|_| Command::RevokeToken {
                    accessor_id: accessor_id.clone(),
                });
            self.client_write(&caller, &format!("token {accessor_id}"), "", command)
                .await?;
            Ok(Response::new(pb::RevokeTokenResponse {}))
        })
        .await
    }

    async fn create_binding(
        &self,
        request: Request<pb::CreateBindingRequest>,
    ) -> Result<Response<pb::Binding>, Status> {
        let caller = self.caller(&request, "CreateBinding").await;
        self.observed(caller.method, async {
            let binding = binding_from_pb(request.into_inner().binding);
            let resource = binding
                .as_ref()
                .map_or_else(|_| String::new(), |b| format!("binding {} {}", b.subject, b.role));
            let command = binding.map(|binding| Command::CreateBinding { binding });
            match self.client_write(&caller, &resource, "", command).await? {
                CommandResponse::Binding(b) => Ok(Response::new(pb::Binding {
                    subject: b.subject,
                    role: b.role,
                })),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    async fn list_bindings(
        &self,
        request: Request<pb::ListBindingsRequest>,
    ) -> Result<Response<pb::ListBindingsResponse>, Status> {
        let caller = self.caller(&request, "ListBindings").await;
        self.observed(caller.method, async {
            self.acl_read(&caller, |state| {
                let bindings = state
                    .bindings()
                    .map(|b| pb::Binding {
                        subject: b.subject.clone(),
                        role: b.role.clone(),
                    })
                    .collect();
                Ok(Response::new(pb::ListBindingsResponse { bindings }))
            })
            .await
        })
        .await
    }

    async fn delete_binding(
        &self,
        request: Request<pb::DeleteBindingRequest>,
    ) -> Result<Response<pb::DeleteBindingResponse>, Status> {
        let caller = self.caller(&request, "DeleteBinding").await;
        self.observed(caller.method, async {
            let binding = binding_from_pb(request.into_inner().binding);
            let resource = binding
                .as_ref()
                .map_or_else(|_| String::new(), |b| format!("binding {} {}", b.subject, b.role));
            let command = binding.map(|binding| Command::DeleteBinding { binding });
            self.client_write(&caller, &resource, "", command).await?;
            Ok(Response::new(pb::DeleteBindingResponse {}))
        })
        .await
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let caller = self.caller(&request, "WhoAmI").await;
        self.observed(caller.method, async {
            let state = self.node.state.read();
            let Subject { principal, roles } = self.authenticate(&caller, &state, "")?;
            let credential = match &caller.credential {
                Credential::Token { .. } => "token",
                Credential::Certificate { .. } => "certificate",
                Credential::Insecure => "insecure",
                Credential::None => "none",
            };
            Ok(Response::new(pb::WhoAmIResponse {
                principal,
                credential: credential.into(),
                accessor_id: caller.credential.accessor().to_string(),
                roles: roles.iter().map(role_to_pb).collect(),
            }))
        })
        .await
    }
}
