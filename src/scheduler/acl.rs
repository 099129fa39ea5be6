//! Access control: who a caller is, and what they may do to what.
//!
//! The security state is replicated like jobs, so every node answers an
//! authorization question the same way at the same applied index:
//!
//! - **Tokens** ([`Token`]): a public accessor id and a secret the caller
//!   sends as `authorization: Bearer <secret>`. Only the SHA-256 of the
//!   secret is stored ([`secret_hash`]); a secret has at least 128 random
//!   bits, so a plain hash (no salt, no stretching) is enough: nobody can
//!   guess a preimage. A token may expire (`expires_ms`); revoking deletes
//!   it, which every node sees at the next applied index.
//! - **Roles** ([`Role`]): a set of [`Permission`]s, optionally narrowed to
//!   jobs whose `owner_service` matches one of `owners` and/or whose id
//!   matches one of `jobs` (globs with `*` and `?`, see [`glob_match`]). The
//!   role [`ROOT_ROLE`] is built in: every permission, no scope; it cannot
//!   be created, changed or deleted, and only `acl bootstrap` hands it out
//!   (an `acl:admin` caller may name it on a new token).
//! - **Bindings** ([`Binding`]): a certificate subject (a client
//!   certificate's URI SAN, else its CN) bound to a role.
//!
//! A [`Credential`] — what the receiving node verified — resolves to a
//! principal and its roles ([`Acl::resolve`]); [`Acl::authorize`] then
//! checks one permission on one [`Resource`]. A caller holds a permission on
//! a job when at least one of their roles grants it and its scope covers
//! the job. The same check runs twice: on the receiving node before a write
//! is proposed (so a denied call costs no log entry), and in `State::apply`
//! against the state at the entry's index (so a token revoked while the
//! write was in flight cannot act, and nothing is decided on stale data).
//!
//! Errors: no, unknown or expired credential → [`Error::Unauthenticated`];
//! a valid one without the permission, or outside the role's scope →
//! [`Error::PermissionDenied`] naming the permission and the resource.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// The built-in role that grants every permission on everything.
pub const ROOT_ROLE: &str = "root";
/// The name of the token `acl bootstrap` creates.
pub const ROOT_TOKEN_NAME: &str = "root";
/// The principal of a node started with `--insecure-disable-auth`.
pub const ANONYMOUS: &str = "anonymous";
/// Longest role, token or subject name, and longest glob, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Most globs of one kind in a role.
pub const MAX_GLOBS: usize = 64;

macro_rules! permissions {
    ($( $(#[doc = $doc:literal])* $variant:ident => $name:literal, )*) => {
        /// One thing a role may allow.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum Permission {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl Permission {
            /// Every permission, in declaration order.
            pub const ALL: &'static [Permission] = &[$(Permission::$variant),*];

            /// The permission's name, e.g. `job:read`.
            pub fn as_str(self) -> &'static str {
                match self { $(Permission::$variant => $name,)* }
            }
        }
    };
}

permissions! {
    /// Read jobs (get, list, describe).
    JobRead => "job:read",
    /// Create, update, pause, resume and delete jobs.
    JobWrite => "job:write",
    /// Trigger and backfill jobs.
    JobTrigger => "job:trigger",
    /// Read secret values of jobs (`http` auth headers, `exec` env values).
    JobSecrets => "job:secrets",
    /// Create or change jobs of the `exec` type (code execution on the nodes).
    JobExec => "job:exec",
    /// Read runs and watch run changes.
    RunRead => "run:read",
    /// Cancel runs.
    RunCancel => "run:cancel",
    /// Read and verify the audit log.
    AuditRead => "audit:read",
    /// Read cluster status and membership.
    ClusterRead => "cluster:read",
    /// Change cluster membership.
    ClusterAdmin => "cluster:admin",
    /// Manage roles, tokens and bindings.
    AclAdmin => "acl:admin",
    /// Publish events that trigger jobs.
    EventPublish => "event:publish",
    /// Connect as an external worker.
    WorkerConnect => "worker:connect",
    /// Watch the lifecycle event stream (`WatchEvents`).
    EventWatch => "event:watch",
    /// Create, list and delete sinks.
    SinkAdmin => "sink:admin",
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Permission {
    type Err = Error;

    fn from_str(name: &str) -> Result<Permission, Error> {
        Permission::ALL
            .iter()
            .copied()
            .find(|p| p.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Permission::ALL.iter().map(|p| p.as_str()).collect();
                Error::InvalidArgument(format!(
                    "unknown permission {name:?}; known: {}",
                    known.join(", ")
                ))
            })
    }
}

/// A named set of permissions, optionally scoped to some jobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Unique name.
    pub name: String,
    /// What it allows.
    pub permissions: BTreeSet<Permission>,
    /// `owner_service` globs; empty: any owner.
    pub owners: Vec<String>,
    /// Job id globs; empty: any job.
    pub jobs: Vec<String>,
    /// Job type globs limiting `worker:connect`; empty: any type. Not in
    /// the encoding of a role (whose layout format version 4 fixed): the
    /// state keeps it in a table of its own and sets it here.
    #[serde(skip)]
    pub types: Vec<String>,
    /// Event topic globs limiting `event:publish`; empty: any topic. Kept
    /// apart from the role's encoding like `types` (format version 6 on).
    #[serde(skip)]
    pub topics: Vec<String>,
    /// Free text.
    pub description: String,
    /// When it was created, Unix ms.
    pub created_ms: i64,
    /// Who created it.
    pub created_by: String,
}

impl Role {
    /// The built-in [`ROOT_ROLE`].
    pub fn root() -> Role {
        Role {
            name: ROOT_ROLE.into(),
            permissions: Permission::ALL.iter().copied().collect(),
            owners: Vec::new(),
            jobs: Vec::new(),
            types: Vec::new(),
            topics: Vec::new(),
            description: "every permission on everything (built in)".into(),
            created_ms: 0,
            created_by: String::new(),
        }
    }

    /// True when the role's scope covers `resource`.
    pub fn covers(&self, resource: &Resource) -> bool {
        match resource {
            Resource::Cluster => {
                self.owners.is_empty()
                    && self.jobs.is_empty()
                    && self.types.is_empty()
                    && self.topics.is_empty()
            }
            Resource::Topic(topic) => {
                self.topics.is_empty() || self.topics.iter().any(|g| glob_match(g, topic))
            }
            Resource::JobType(name) => {
                self.types.is_empty() || self.types.iter().any(|g| glob_match(g, name))
            }
            Resource::Job { id, owner } => {
                let owner_ok = self.owners.is_empty() || self.owners.iter().any(|g| glob_match(g, owner));
                let job_ok = self.jobs.is_empty() || self.jobs.iter().any(|g| glob_match(g, id));
                owner_ok && job_ok
            }
        }
    }

    /// True when the role grants `permission` on `resource`.
    pub fn allows(&self, permission: Permission, resource: &Resource) -> bool {
        self.permissions.contains(&permission) && self.covers(resource)
    }
}

/// A bearer token. The secret itself is never stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Public id, used to list and revoke it.
    pub accessor_id: String,
    /// The principal the token acts as.
    pub name: String,
    /// SHA-256 of the secret.
    pub secret_hash: [u8; 32],
    /// Roles it holds.
    pub roles: Vec<String>,
    /// Expiry, Unix ms; `None`: never.
    pub expires_ms: Option<i64>,
    /// When it was created, Unix ms.
    pub created_ms: i64,
    /// Who created it.
    pub created_by: String,
}

/// A certificate subject bound to a role.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Binding {
    /// The certificate subject (URI SAN, else CN).
    pub subject: String,
    /// The role it holds.
    pub role: String,
}

/// What the receiving node verified about a caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Credential {
    /// No credential, or one that did not verify.
    None,
    /// A bearer token, by accessor id.
    Token {
        /// The token's accessor id.
        accessor_id: String,
    },
    /// A verified client certificate.
    Certificate {
        /// Its subject (URI SAN, else CN).
        subject: String,
    },
    /// The receiving node runs with `--insecure-disable-auth`: anyone is root.
    Insecure,
}

impl Credential {
    /// The accessor id of a token credential, else empty (for audit entries).
    pub fn accessor(&self) -> &str {
        match self {
            Credential::Token { accessor_id } => accessor_id,
            _ => "",
        }
    }
}

/// What a permission is checked on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    /// Something not owned by a job: the cluster, the ACL, the audit log.
    /// Only unscoped roles cover it.
    Cluster,
    /// A job type, for `worker:connect`: only a role's type globs limit it.
    JobType(String),
    /// An event topic, for `event:publish`: only a role's topic globs limit it.
    Topic(String),
    /// A job, by id and owner.
    Job {
        /// The job id.
        id: String,
        /// Its `owner_service`.
        owner: String,
    },
}

impl Resource {
    /// A job resource.
    pub fn job(id: &str, owner: &str) -> Resource {
        Resource::Job {
            id: id.to_string(),
            owner: owner.to_string(),
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Cluster => f.write_str("the cluster"),
            Resource::JobType(name) => write!(f, "job type {name:?}"),
            Resource::Topic(topic) => write!(f, "topic {topic:?}"),
            Resource::Job { id, owner } if owner.is_empty() => write!(f, "job {id:?}"),
            Resource::Job { id, owner } => write!(f, "job {id:?} (owner {owner:?})"),
        }
    }
}

/// A caller resolved against the ACL: who they are and the roles they hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// The principal (token name or certificate subject).
    pub principal: String,
    /// Their roles (unknown role names are left out).
    pub roles: Vec<Role>,
}

impl Subject {
    /// True when one of the roles grants `permission` on `resource`.
    pub fn allows(&self, permission: Permission, resource: &Resource) -> bool {
        self.roles.iter().any(|r| r.allows(permission, resource))
    }

    /// `Ok` when allowed, else [`Error::PermissionDenied`] naming what is missing.
    pub fn check(&self, permission: Permission, resource: &Resource) -> Result<(), Error> {
        if self.allows(permission, resource) {
            return Ok(());
        }
        let held = self.roles.iter().any(|r| r.permissions.contains(&permission));
        Err(Error::PermissionDenied(if held {
            format!(
                "{} has {permission} but not on {resource}: outside its roles' scope",
                self.principal
            )
        } else {
            format!("{} lacks permission {permission} on {resource}", self.principal)
        }))
    }

    /// True when the subject holds `permission` anywhere (for lists, which
    /// then filter item by item).
    pub fn holds(&self, permission: Permission) -> bool {
        self.roles.iter().any(|r| r.permissions.contains(&permission))
    }
}

/// The SHA-256 of a token secret, as stored.
pub fn secret_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Matches `text` against a glob where `*` is any run of characters
/// (including none) and `?` any one character; everything else is literal.
/// Linear in practice (greedy with one back-track point), never exponential.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((star_pi, star_ti)) = star {
            pi = star_pi + 1;
            ti = star_ti + 1;
            star = Some((star_pi, star_ti + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Checks a role, token or subject name: non-empty, at most
/// [`MAX_NAME_LEN`] bytes, no control characters.
pub fn validate_name(field: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::InvalidArgument(format!("{field}: required")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::InvalidArgument(format!(
            "{field}: {} bytes, at most {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "{field}: control characters are not allowed"
        )));
    }
    Ok(())
}

/// Checks a new role's fields (not its name's uniqueness, which `apply` checks).
pub fn validate_role(role: &Role) -> Result<(), Error> {
    validate_name("name", &role.name)?;
    if role.name == ROOT_ROLE {
        return Err(Error::InvalidArgument(format!(
            "name: {ROOT_ROLE:?} is the built-in role and cannot be created or changed"
        )));
    }
    if role.permissions.is_empty() {
        return Err(Error::InvalidArgument(
            "allow: at least one permission is required".into(),
        ));
    }
    for (field, globs) in [
        ("owner", &role.owners),
        ("job", &role.jobs),
        ("type", &role.types),
        ("topic", &role.topics),
    ] {
        if globs.len() > MAX_GLOBS {
            return Err(Error::InvalidArgument(format!(
                "{field}: {} globs, at most {MAX_GLOBS}",
                globs.len()
            )));
        }
        for glob in globs {
            validate_name(field, glob)?;
        }
    }
    Ok(())
}

/// Read access to the security tables, for resolving credentials.
pub trait AclTables {
    /// A token by accessor id.
    fn token(&self, accessor_id: &str) -> Option<&Token>;
    /// A stored role by name (not the built-in root).
    fn stored_role(&self, name: &str) -> Option<&Role>;
    /// The roles bound to a certificate subject.
    fn bound_roles(&self, subject: &str) -> Vec<String>;

    /// A role by name, the built-in [`ROOT_ROLE`] included.
    fn role(&self, name: &str) -> Option<Role> {
        if name == ROOT_ROLE {
            return Some(Role::root());
        }
        self.stored_role(name).cloned()
    }

    /// Who `credential` is at time `at_ms`, with the roles they hold; an
    /// unknown, revoked or expired credential is [`Error::Unauthenticated`].
    fn resolve(&self, credential: &Credential, at_ms: i64) -> Result<Subject, Error> {
        let (principal, role_names) = match credential {
            Credential::None => {
                return Err(Error::Unauthenticated(
                    "no credential: send `authorization: Bearer <secret>` or a client certificate".into(),
                ))
            }
            Credential::Insecure => {
                return Ok(Subject {
                    principal: ANONYMOUS.into(),
                    roles: vec![Role::root()],
                })
            }
            Credential::Token { accessor_id } => {
                let token = self.token(accessor_id).ok_or_else(|| {
                    Error::Unauthenticated(format!("token {accessor_id} is revoked or unknown"))
                })?;
                if token.expires_ms.is_some_and(|e| e <= at_ms) {
                    return Err(Error::Unauthenticated(format!(
                        "token {accessor_id} ({}) has expired",
                        token.name
                    )));
                }
                (token.name.clone(), token.roles.clone())
            }
            Credential::Certificate { subject } => (subject.clone(), self.bound_roles(subject)),
        };
        Ok(Subject {
            principal,
            roles: role_names.iter().filter_map(|n| self.role(n)).collect(),
        })
    }

    /// [`AclTables::resolve`], then [`Subject::check`].
    fn authorize(
        &self,
        credential: &Credential,
        at_ms: i64,
        permission: Permission,
        resource: &Resource,
    ) -> Result<Subject, Error> {
        let subject = self.resolve(credential, at_ms)?;
        subject.check(permission, resource)?;
        Ok(subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(permissions: &[Permission], owners: &[&str], jobs: &[&str]) -> Role {
        Role {
            name: "r".into(),
            permissions: permissions.iter().copied().collect(),
            owners: owners.iter().map(|s| s.to_string()).collect(),
            jobs: jobs.iter().map(|s| s.to_string()).collect(),
            types: Vec::new(),
            topics: Vec::new(),
            description: String::new(),
            created_ms: 0,
            created_by: String::new(),
        }
    }

    #[test]
    fn globs_match_stars_and_question_marks_and_nothing_else() {
        assert!(glob_match("billing-*", "billing-nightly"));
        assert!(glob_match("billing-*", "billing-"));
        assert!(!glob_match("billing-*", "billing"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*-report-*", "x-report-y"));
        assert!(!glob_match("*-report-*", "x-report"));
        assert!(glob_match("nightly", "nightly"));
        assert!(!glob_match("nightly", "nightly2"));
        assert!(glob_match("a*b*c", "aXXbYYbc"));
        // A long run of stars against a long text finishes at once.
        let stars = "*a".repeat(50);
        assert!(!glob_match(&stars, &"a".repeat(49)));
    }

    #[test]
    fn a_scoped_role_covers_only_the_jobs_its_globs_match() {
        let r = role(&[Permission::JobWrite], &["billing*"], &["nightly-*"]);
        assert!(r.allows(Permission::JobWrite, &Resource::job("nightly-1", "billing-eu")));
        assert!(!r.allows(Permission::JobWrite, &Resource::job("hourly-1", "billing-eu")));
        assert!(!r.allows(Permission::JobWrite, &Resource::job("nightly-1", "search")));
        assert!(!r.allows(Permission::JobRead, &Resource::job("nightly-1", "billing-eu")));
        // A scoped role never covers the cluster as a whole.
        assert!(!r.covers(&Resource::Cluster));
        assert!(role(&[Permission::ClusterRead], &[], &[]).covers(&Resource::Cluster));
    }

    #[test]
    fn a_denial_names_the_permission_and_says_whether_scope_was_the_reason() {
        let subject = Subject {
            principal: "ci".into(),
            roles: vec![role(&[Permission::JobWrite], &["billing*"], &[])],
        };
        let outside = subject
            .check(Permission::JobWrite, &Resource::job("a", "search"))
            .unwrap_err();
        assert_eq!(
            outside,
            Error::PermissionDenied(
                "ci has job:write but not on job \"a\" (owner \"search\"): outside its roles' scope".into()
            )
        );
        let missing = subject
            .check(Permission::JobExec, &Resource::job("a", "billing"))
            .unwrap_err();
        assert_eq!(
            missing,
            Error::PermissionDenied("ci lacks permission job:exec on job \"a\" (owner \"billing\")".into())
        );
    }

    #[test]
    fn permissions_parse_by_name_and_unknown_ones_are_listed() {
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>().unwrap(), *p);
        }
        let err = "job:delete".parse::<Permission>().unwrap_err();
        assert!(err
            .to_string()
            .starts_with("unknown permission \"job:delete\"; known: job:read"));
    }

    #[test]
    fn the_root_role_cannot_be_created_and_roles_need_a_permission() {
        let mut r = role(&[], &[], &[]);
        assert!(validate_role(&r).is_err());
        r.permissions.insert(Permission::JobRead);
        assert!(validate_role(&r).is_ok());
        r.name = ROOT_ROLE.into();
        assert!(validate_role(&r).is_err());
    }
}
