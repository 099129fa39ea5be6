//! A root token given to the agent: `--bootstrap-token-file FILE` or
//! `KAIROS_BOOTSTRAP_TOKEN` (see [`crate::config::BootstrapToken`]).
//!
//! Deployments that start every node from the same manifest (Compose,
//! Kubernetes) want to know the root token before the cluster exists,
//! instead of calling `kairos acl bootstrap` once by hand and catching its
//! output. Every node may be given the same secret; [`run`] then does what
//! `kairos acl bootstrap` does, with that secret instead of a random one:
//!
//! - Only the leader writes. Once a second, each node with the setting
//!   looks at its applied state; a node that leads first confirms that
//!   state is current (a linearizable read barrier), and if the ACL is not
//!   bootstrapped yet proposes the same `AclBootstrap` command the API's
//!   `Bootstrap` proposes (root role, a random accessor id, the secret's
//!   SHA-256 only). So it is applied once per cluster, by the first node
//!   that leads; a race with a hand-made `kairos acl bootstrap` is settled by
//!   the state machine, which allows one bootstrap.
//! - It is audited like the RPC: an `acl` entry for method `Bootstrap`,
//!   with no principal (no credential is needed to bootstrap), the source
//!   naming where the secret came from (`--bootstrap-token-file FILE` or
//!   `KAIROS_BOOTSTRAP_TOKEN`) and the node that proposed it.
//! - Idempotent: once the ACL is bootstrapped the task ends, logging that
//!   the root token is the given one, or warning that the cluster was
//!   bootstrapped with another token (then the setting does nothing: it
//!   never replaces, re-creates or revokes a token). A restart with the
//!   setting still there writes nothing.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! - A leader without the setting never applies it: give it to every node
//!   (the manifests under `deploy/` do).

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use crate::config::BootstrapToken;
use crate::error::Error;
use crate::node::{Consistency, Node};
use crate::scheduler::acl::{secret_hash, Credential, Token, ROOT_ROLE, ROOT_TOKEN_NAME};
use crate::scheduler::command::CallContext;
use crate::scheduler::Command;

/// How often a node looks again.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What the cluster's ACL says about the given token.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Not bootstrapped yet.
    Open,
    /// Bootstrapped, and the given secret is a root token.
    InPlace,
    /// Bootstrapped with another root token.
    Other,
}

/// Bootstraps the cluster's ACL with `token` once this node leads, unless
/// it is bootstrapped already; ends when the ACL is bootstrapped (by
/// anyone) or at `shutdown`.
pub async fn run(node: Arc<Node>, token: BootstrapToken, shutdown: CancellationToken) {
    let hash = secret_hash(token.secret());
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if report(node.id, &token, outcome(&node, &hash)) {
            return;
        }
        if node.raft.metrics().borrow().state != ServerState::Leader {
            continue;
        }
        // A new leader may not have applied its predecessor's last entries.
        if let Err(e) = node.read_barrier(Consistency::Linearizable).await {
            tracing::debug!(
                node = node.id,
                "root token from {}: no read barrier yet: {e}",
                token.source()
            );
            continue;
        }
        if report(node.id, &token, outcome(&node, &hash)) {
            return;
        }
        match node.write("", bootstrap_command(node.id, &token, hash)).await {
            Ok(_) => {
                tracing::info!(
                    node = node.id,
                    "bootstrapped the ACL with the root token from {}",
                    token.source()
                );
                return;
            }
            // Someone bootstrapped it meanwhile: the next look says who.
            Err(Error::FailedPrecondition(_)) => {}
            Err(e) => tracing::warn!(
                node = node.id,
                "root token from {}: bootstrap failed, trying again: {e}",
                token.source()
            ),
        }
    }
}

/// The ACL's state as far as this node has applied it.
fn outcome(node: &Node, hash: &[u8; 32]) -> Outcome {
    let state = node.state.read();
    if !state.acl_bootstrapped() {
        return Outcome::Open;
    }
    match state.token_by_secret_hash(hash) {
        Some(token) if token.roles.iter().any(|r| r == ROOT_ROLE) => Outcome::InPlace,
        _ => Outcome::Other,
    }
}

/// Logs a bootstrapped ACL's outcome; whether the task is done.
fn report(node: u64, token: &BootstrapToken, outcome: Outcome) -> bool {
    match outcome {
        Outcome::Open => false,
        Outcome::InPlace => {
            tracing::info!(node, "the root token from {} is in place", token.source());
            true
        }
        Outcome::Other => {
            tracing::warn!(
                node,
                "the ACL was bootstrapped with another root token: {} is not applied \
                 (this setting never replaces a token; a holder of acl:admin manages tokens)",
                token.source()
            );
            true
        }
    }
}

/// The `AclBootstrap` write of `token`, as the API's `Bootstrap` makes it,
/// its audit entry naming the secret's source and this node.
fn bootstrap_command(node: u64, token: &BootstrapToken, hash: [u8; 32]) -> Command {
    let accessor_id = super::acl_service::random_hex(16).unwrap_or_else(|_| {
        // The OS generator failed: an accessor derived from the hash is
        // unique all the same (the accessor id is public, the hash is not
        // reversible).
        hash[..16].iter().map(|b| format!("{b:02x}")).collect()
    });
    Command::Client {
        call: CallContext {
            credential: Credential::None,
            source: token.source().to_string(),
            node,
            method: "Bootstrap".into(),
            resource: "acl".into(),
            request_id: String::new(),
            trace_id: String::new(),
        },
        command: Box::new(Command::AclBootstrap {
            token: Token {
                accessor_id,
                name: ROOT_TOKEN_NAME.into(),
                secret_hash: hash,
                roles: vec![ROOT_ROLE.into()],
                expires_ms: None,
                created_ms: 0,
                created_by: String::new(),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_command_holds_the_hash_only_and_names_its_source() {
        let secret = "0123456789abcdef0123456789abcdef-root";
        let token = BootstrapToken::new(secret.into(), "KAIROS_BOOTSTRAP_TOKEN").unwrap();
        let Command::Client { call, command } = bootstrap_command(3, &token, secret_hash(secret)) else {
            panic!("not a client command");
        };
        assert_eq!(
            (call.source.as_str(), call.node, call.method.as_str()),
            ("KAIROS_BOOTSTRAP_TOKEN", 3, "Bootstrap")
        );
        assert_eq!(call.credential, Credential::None);
        let Command::AclBootstrap { token } = *command else {
            panic!("not a bootstrap");
        };
        assert_eq!(token.secret_hash, secret_hash(secret));
        assert_eq!(token.roles, [ROOT_ROLE]);
        assert_eq!(token.accessor_id.len(), 32);
        assert!(
            !format!("{token:?}").contains(secret),
            "the secret is not in the command"
        );
    }
}
