//! `kairos acl`: bootstrap, roles, tokens, certificate bindings, whoami.
//!
//! `bootstrap` and `token create` print the new secret as their only line
//! (with `-o json`: `{"accessor_id", "secret", "name"}`); it is never shown
//! again. Lists never show secrets.

use std::time::Duration;

use super::client::Output;
use super::client::{fail, Client, ClientArgs};
use super::output;
use crate::api::convert::ms_duration;
use crate::proto as pb;
use crate::proto::acl_service_client::AclServiceClient;

/// `kairos acl`.
#[derive(clap::Args, Debug)]
pub struct AclCommand {
    #[command(subcommand)]
    action: AclAction,
}

#[derive(clap::Subcommand, Debug)]
enum AclAction {
    /// Create the root token, once per cluster; prints its secret.
    Bootstrap,
    /// Roles: named sets of permissions, optionally scoped to owners, job ids and job types.
    Role {
        #[command(subcommand)]
        action: RoleAction,
    },
    /// Tokens: bearer credentials holding roles.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Bindings of client certificate subjects to roles.
    Binding {
        #[command(subcommand)]
        action: BindingAction,
    },
    /// Who the credential you use is, and its roles.
    Whoami,
}

#[derive(clap::Subcommand, Debug)]
enum RoleAction {
    /// Create a role.
    Create {
        /// Its name.
        name: String,
        /// Permissions, comma-separated (e.g. job:read,job:write); see the README for the list.
        #[arg(long, value_delimiter = ',', required = true)]
        allow: Vec<String>,
        /// Limit to jobs whose owner_service matches this glob (repeatable).
        #[arg(long)]
        owner: Vec<String>,
        /// Limit to jobs whose id matches this glob (repeatable).
        #[arg(long)]
        job: Vec<String>,
        /// Limit `worker:connect` to job types matching this glob (repeatable).
        #[arg(long = "type", visible_alias = "types", value_name = "GLOB")]
        types: Vec<String>,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Every role, the built-in `root` first.
    List,
    /// One role.
    Get {
        /// Its name.
        name: String,
    },
    /// Delete a role (tokens and bindings naming it lose it).
    Delete {
        /// Its name.
        name: String,
    },
}

#[derive(clap::Subcommand, Debug)]
enum TokenAction {
    /// Create a token; prints its secret (only now).
    Create {
        /// The principal it acts as.
        #[arg(long)]
        name: String,
        /// A role it holds (repeatable).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Lifetime, e.g. 24h; without it the token does not expire.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// Every token (never its secret).
    List,
    /// Revoke a token by accessor id.
    Revoke {
        /// Its accessor id.
        accessor: String,
    },
}

#[derive(clap::Subcommand, Debug)]
enum BindingAction {
    /// Bind a certificate subject (URI SAN, else CN) to a role.
    Create {
        /// The subject.
        #[arg(long)]
        subject: String,
        /// The role.
        #[arg(long)]
        role: String,
    },
    /// Every binding.
    List,
    /// Remove a binding.
    Delete {
        /// The subject.
        #[arg(long)]
        subject: String,
        /// The role.
        #[arg(long)]
        role: String,
    },
}

/// Prints a new secret: the secret alone, or the three JSON fields.
fn print_secret(output: Output, token: &pb::TokenSecret) -> anyhow::Result<()> {
    match output {
        Output::Json => output::json(&serde_json::json!({
            "accessor_id": token.accessor_id,
            "secret": token.secret,
            "name": token.name,
        })),
        Output::Table => {
            output::outln!("{}", token.secret);
            Ok(())
        }
    }
}

/// The columns of a role table (`role list|get|create`).
const ROLE_COLUMNS: [&str; 6] = ["NAME", "PERMISSIONS", "OWNERS", "JOBS", "TYPES", "DESCRIPTION"];

/// The rows of a role table, in [`ROLE_COLUMNS`] order; a role without globs
/// of a kind shows `*` (it is not limited by that kind).
fn role_rows(roles: &[pb::Role]) -> Vec<Vec<String>> {
    let or_any = |globs: &[String]| {
        if globs.is_empty() {
            "*".to_string()
        } else {
            globs.join(",")
        }
    };
    roles
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.permissions.join(","),
                or_any(&r.owners),
                or_any(&r.jobs),
                or_any(&r.types),
                r.description.clone(),
            ]
        })
        .collect()
}

fn print_roles(roles: &[pb::Role]) {
    output::table(&ROLE_COLUMNS, &role_rows(roles));
}

fn print_tokens(tokens: &[pb::Token]) {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            let expires = match &t.expires_at {
                Some(_) => output::timestamp(&t.expires_at, chrono::SecondsFormat::Secs),
                None => "never".into(),
            };
            vec![
                t.accessor_id.clone(),
                t.name.clone(),
                t.roles.join(","),
                expires,
                t.created_by.clone(),
            ]
        })
        .collect();
    output::table(&["ACCESSOR", "NAME", "ROLES", "EXPIRES", "CREATED BY"], &rows);
}

/// Runs a `kairos acl` command.
pub async fn run(cmd: AclCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(args)?;
    macro_rules! call {
        ($req:expr, $method:ident) => {
            client
                .send(&$req, |ch, r| async move {
                    AclServiceClient::new(ch).$method(r).await
                })
                .await
                .map_err(fail)?
        };
    }
    let out = args.output;
    match cmd.action {
        AclAction::Bootstrap => print_secret(out, &call!(pb::BootstrapRequest {}, bootstrap)),
        AclAction::Role { action } => match action {
            RoleAction::Create {
                name,
                allow,
                owner,
                job,
                types,
                description,
            } => {
                let role = pb::Role {
                    name,
                    permissions: allow,
                    owners: owner,
                    jobs: job,
                    types,
                    description,
                    ..pb::Role::default()
                };
                let created = call!(pb::CreateRoleRequest { role: Some(role) }, create_role);
                output::print(out, &created, |r| print_roles(std::slice::from_ref(r)))
            }
            RoleAction::List => {
                let list = call!(pb::ListRolesRequest {}, list_roles);
                output::print(out, &list, |l| print_roles(&l.roles))
            }
            RoleAction::Get { name } => {
                let role = call!(pb::GetRoleRequest { name }, get_role);
                output::print(out, &role, |r| print_roles(std::slice::from_ref(r)))
            }
            RoleAction::Delete { name } => {
                call!(pb::DeleteRoleRequest { name: name.clone() }, delete_role);
                output::print(out, &serde_json::json!({ "deleted": name }), |_| {
                    output::outln!("role {name} deleted")
                })
            }
        },
        AclAction::Token { action } => match action {
            TokenAction::Create { name, roles, ttl } => {
                let ttl = ttl.map(|t| ms_duration(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)));
                let token = call!(pb::CreateTokenRequest { name, roles, ttl }, create_token);
                print_secret(out, &token)
            }
            TokenAction::List => {
                let list = call!(pb::ListTokensRequest {}, list_tokens);
                output::print(out, &list, |l| print_tokens(&l.tokens))
            }
            TokenAction::Revoke { accessor } => {
                call!(
                    pb::RevokeTokenRequest {
                        accessor_id: accessor.clone()
                    },
                    revoke_token
                );
                output::print(out, &serde_json::json!({ "revoked": accessor }), |_| {
                    output::outln!("token {accessor} revoked")
                })
            }
        },
        AclAction::Binding { action } => match action {
            BindingAction::Create { subject, role } => {
                let binding = Some(pb::Binding { subject, role });
                let created = call!(pb::CreateBindingRequest { binding }, create_binding);
                output::print(out, &created, |b| output::outln!("{} → {}", b.subject, b.role))
            }
            BindingAction::List => {
                let list = call!(pb::ListBindingsRequest {}, list_bindings);
                output::print(out, &list, |l| {
                    let rows: Vec<Vec<String>> = l
                        .bindings
                        .iter()
                        .map(|b| vec![b.subject.clone(), b.role.clone()])
                        .collect();
                    output::table(&["SUBJECT", "ROLE"], &rows)
                })
            }
            BindingAction::Delete { subject, role } => {
                let binding = Some(pb::Binding {
                    subject: subject.clone(),
                    role: role.clone(),
                });
                call!(pb::DeleteBindingRequest { binding }, delete_binding);
                output::print(
                    out,
                    &serde_json::json!({ "deleted": { "subject": subject, "role": role } }),
                    |_| output::outln!("binding {subject} → {role} deleted"),
                )
            }
        },
        AclAction::Whoami => {
            let me = call!(pb::WhoAmIRequest {}, who_am_i);
            output::print(out, &me, |m| {
                output::fields(&[
                    ("principal", m.principal.clone()),
                    ("credential", m.credential.clone()),
                    ("accessor", m.accessor_id.clone()),
                    (
                        "roles",
                        m.roles
                            .iter()
                            .map(|r| r.name.clone())
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                ])
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `kairos acl ...` as a command line would give it.
    #[derive(clap::Parser)]
    struct Acl {
        #[command(flatten)]
        command: AclCommand,
    }

    #[test]
    fn role_create_takes_type_globs_like_owner_and_job_globs() {
        let parsed = Acl::try_parse_from([
            "kairos",
            "role",
            "create",
            "billing-workers",
            "--allow",
            "worker:connect",
            "--type",
            "billing.*",
            "--types",
            "invoice.?",
        ])
        .map(|acl| acl.command.action);
        let Ok(AclAction::Role {
            action: RoleAction::Create { types, owner, .. },
        }) = parsed
        else {
            panic!("not a role create: {parsed:?}");
        };
        assert_eq!(types, ["billing.*", "invoice.?"]);
        assert!(owner.is_empty());
    }

    #[test]
    fn a_role_shows_its_type_globs_or_any() {
        let roles = [
            pb::Role {
                name: "billing-workers".into(),
                permissions: vec!["worker:connect".into()],
                types: vec!["billing.*".into(), "invoice.?".into()],
                ..Default::default()
            },
            pb::Role {
                name: "readers".into(),
                permissions: vec!["job:read".into(), "run:read".into()],
                owners: vec!["billing*".into()],
                description: "read billing".into(),
                ..Default::default()
            },
        ];
        assert_eq!(
            output::table_lines(&ROLE_COLUMNS, &role_rows(&roles)),
            [
                "NAME             PERMISSIONS        OWNERS    JOBS  TYPES                DESCRIPTION",
                "billing-workers  worker:connect     *         *     billing.*,invoice.?",
                "readers          job:read,run:read  billing*  *     *                    read billing",
            ]
        );
    }
}
