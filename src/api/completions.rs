//! Group commit of external workers' results: the `CompleteTask` calls a
//! node receives while its previous batch is being committed go out
//! together, as one `Client` write of `FinishAttempts` per credential.
//!
//! Each `CompleteTask` was already checked on this node (the token, the
//! attempt still current, `worker:connect` on the job's type); the batch is
//! proposed with the call context of its credential, so the state machine
//! authorizes it again at its index and appends one audit record for the
//! batch (method `CompleteTask`, the number of results in its resource),
//! while every run's transition is its own execution record under the
//! worker's principal. Without this, every result was a write of its own:
//! a forwarded RPC, an audit record and a log request each, which at a few
//! thousand results a second cost the nodes half again as much CPU as the
//! runs of their own pools (BENCHMARKS.md).
//!
//! One batch per credential is in flight at a time: what arrives meanwhile
//! waits for the next, so a batch holds what arrived during one commit and
//! the latency added is at most one commit. A result refused in the batch
//! (its attempt no longer current) is answered `FAILED_PRECONDITION` to its
//! caller alone; a write that fails as a whole (no leader) fails each call,
//! and the workers retry.
//!
//! Shutdown: the batcher's task ends when its last handle is dropped (the
//! server stopped) after answering what it holds.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::to_status;
use crate::node::Node;
use crate::scheduler::run::AttemptResult;
use crate::scheduler::{CallContext, Command, Response as CommandResponse};

/// Most results in one batch.
const MAX_BATCH: usize = 512;

/// One `CompleteTask` waiting for its batch.
struct Pending {
    call: CallContext,
    principal: String,
    result: AttemptResult,
    reply: oneshot::Sender<Result<(), Status>>,
}

/// A handle to the node's batcher; cheap to clone.
#[derive(Clone)]
pub struct CompletionBatcher {
    queue: mpsc::UnboundedSender<Pending>,
}

impl CompletionBatcher {
    /// Starts the batcher writing through `node`.
    pub fn start(node: Arc<Node>) -> CompletionBatcher {
        let (queue, incoming) = mpsc::unbounded_channel();
        tokio::spawn(run(node, incoming));
        CompletionBatcher { queue }
    }

    /// Commits `result` for the caller `call` (acting as `principal`) in
    /// the next batch; `Ok` once it is recorded (or acknowledged as a repeat).
    pub async fn complete(
        &self,
        call: CallContext,
        principal: String,
        result: AttemptResult,
    ) -> Result<(), Status> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            call,
            principal,
            result,
            reply,
        };
        self.queue
            .send(pending)
            .map_err(|_| Status::unavailable("the node is stopping"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("the node is stopping")))
    }
}

/// The batcher's loop: take what is queued (at least one), write one batch
/// per credential, concurrently, answer each call, repeat.
async fn run(node: Arc<Node>, mut incoming: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = incoming.recv().await {
        let mut by_credential: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
        let mut taken = 0;
        let mut next = Some(first);
        while let Some(pending) = next.take() {
            let key = format!("{:?}", pending.call.credential);
            by_credential.entry(key).or_default().push(pending);
            taken += 1;
            if taken < MAX_BATCH {
                next = incoming.try_recv().ok();
            }
        }
        let writes = by_credential.into_values().map(|batch| write_batch(&node, batch));
        futures::future::join_all(writes).await;
    }
}

/// Proposes one batch (all of one credential) and answers each call.
async fn write_batch(node: &Node, batch: Vec<Pending>) {
    let mut call = batch[0].call.clone();
    call.resource = match batch.len() {
        1 => format!("run {}", batch[0].result.run_id),
        n => format!("{n} results (runs {}…)", batch[0].result.run_id),
    };
    let principal = batch[0].principal.clone();
    let results = batch.iter().map(|p| p.result.clone()).collect();
    let command = Command::Client {
        call,
        command: Box::new(Command::FinishAttempts { results }),
    };
    match node.write(&principal, command).await {
        Ok(CommandResponse::Finished { refused, .. }) => {
            let refused: BTreeMap<u64, String> = refused.into_iter().collect();
            for pending in batch {
                let answer = match refused.get(&pending.result.run_id) {
                    None => Ok(()),
                    Some(why) => Err(Status::failed_precondition(format!(
                        "{why}: the attempt is no longer current"
                    ))),
                };
                let _ = pending.reply.send(answer);
            }
        }
        Ok(other) => {
            for pending in batch {
                let _ = pending.reply.send(Err(Status::internal(format!(
                    "unexpected state machine reply {other:?}"
                ))));
            }
        }
        Err(error) => {
            let status = to_status(error);
            for pending in batch {
                let _ = pending.reply.send(Err(status.clone()));
            }
        }
    }
}
