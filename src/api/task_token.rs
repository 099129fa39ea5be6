//! Task tokens: what an external worker sends back with every heartbeat and
//! result, naming the one attempt it answers for.
//!
//! A token is opaque to the worker. Inside, it names the run, the attempt's
//! fencing token (the log index of the entry that started it), the attempt
//! number, and the node and worker it was given to; a MAC over all of it,
//! keyed by a key derived from the cluster secret, proves the cluster
//! issued it:
//!
//! ```text
//! "KTT1" | postcard(TaskClaim) | HMAC-SHA256(key, "KTT1" | claim)[..16]
//! ```
//!
//! Every node derives the same key, so a worker may heartbeat and complete
//! through any node (its own may have died). A token that does not verify
//! is refused `INVALID_ARGUMENT` before anything is read; a verified one
//! whose attempt is no longer current is refused by the state machine's
//! fencing (`FAILED_PRECONDITION`). The token grants nothing by itself: the
//! caller still needs `worker:connect` on the job's type.
//!
//! IMPLEMENTATION CAVEATS: changing the cluster secret invalidates the tokens
//! of attempts in flight (their workers' answers are refused and the
//! attempts are retried when their leases run out).

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::Error;
use crate::scheduler::RunId;
use crate::transport::ClusterSecret;

/// What every token starts with (and its format's version).
const MAGIC: &[u8; 4] = b"KTT1";
/// Bytes of the MAC kept at the end of a token.
const MAC_LEN: usize = 16;
/// Longest token accepted, bytes (a worker id is short).
const MAX_TOKEN_LEN: usize = 512;

/// What a task token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskClaim {
    /// The run.
    pub run_id: RunId,
    /// The attempt's fencing token.
    pub fencing: u64,
    /// The attempt number.
    pub attempt: u32,
    /// The node the task was given out by.
    pub node: u64,
    /// The worker it was given to.
    pub worker_id: String,
}

/// The key that signs and checks task tokens.
#[derive(Clone)]
pub struct TaskTokenKey([u8; 32]);

impl std::fmt::Debug for TaskTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TaskTokenKey(<secret>)")
    }
}

impl TaskTokenKey {
    /// The key every node of the cluster derives from its secret.
    pub fn derive(secret: &ClusterSecret) -> TaskTokenKey {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(b"kairos task token key v1");
        TaskTokenKey(mac.finalize().into_bytes().into())
    }

    fn mac(&self, signed: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(signed);
        mac
    }

    /// The token of `claim`.
    pub fn issue(&self, claim: &TaskClaim) -> Vec<u8> {
        let mut token = MAGIC.to_vec();
        token.extend(postcard::to_stdvec(claim).expect("encoding a claim cannot fail"));
        let tag = self.mac(&token).finalize().into_bytes();
        token.extend_from_slice(&tag[..MAC_LEN]);
        token
    }

    /// The claim of a token this cluster issued; `INVALID_ARGUMENT` for
    /// anything else.
    pub fn verify(&self, token: &[u8]) -> Result<TaskClaim, Error> {
        let forged = || Error::InvalidArgument("task_token: not a task token this cluster issued".into());
        if token.len() > MAX_TOKEN_LEN || token.len() < MAGIC.len() + MAC_LEN || !token.starts_with(MAGIC) {
            return Err(forged());
        }
        let (signed, tag) = token.split_at(token.len() - MAC_LEN);
        self.mac(signed)
            .verify_truncated_left(tag)
            .map_err(|_| forged())?;
        postcard::from_bytes(&signed[MAGIC.len()..]).map_err(|_| forged())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str) -> TaskTokenKey {
        TaskTokenKey::derive(&ClusterSecret::new(secret.into(), "test").unwrap())
    }

    fn claim() -> TaskClaim {
        TaskClaim {
            run_id: 42,
            fencing: 1_007,
            attempt: 2,
            node: 3,
            worker_id: "3-0123456789abcdef".into(),
        }
    }

    #[test]
    fn a_token_verifies_on_every_node_of_the_cluster_only() {
        let issued = key("a-cluster-secret-of-32-bytes-len").issue(&claim());
        let other_node = key("a-cluster-secret-of-32-bytes-len");
        assert_eq!(other_node.verify(&issued).unwrap(), claim());
        let other_cluster = key("another-cluster-secret-32-bytes!");
        assert!(matches!(
            other_cluster.verify(&issued),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_changed_or_garbage_token_is_refused() {
        let key = key("a-cluster-secret-of-32-bytes-len");
        let issued = key.issue(&claim());
        for i in 0..issued.len() {
            let mut changed = issued.clone();
            changed[i] ^= 0x01;
            let error = key.verify(&changed).unwrap_err().to_string();
            assert!(
                error.contains("not a task token this cluster issued"),
                "byte {i}: {error}"
            );
        }
        for garbage in [&b""[..], b"KTT1", &[0u8; 600][..], &issued[..issued.len() - 1]] {
            assert!(key.verify(garbage).is_err());
        }
    }
}
