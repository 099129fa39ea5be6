//! `ClusterService.SaveSnapshot`: a backup file of the replicated state,
//! streamed to the caller (see `crate::backup` for the whole design).
//!
//! The caller needs `cluster:admin`. Only the leader answers: any other
//! node answers `UNAVAILABLE` with the leader's client address
//! (`x-kairos-leader`), which the CLI follows. The leader passes the
//! linearizable read barrier ([`crate::node::Node::leader_barrier`]), then
//! takes its state's image and the log position it is at in one step, and
//! returns the stream at once: the image is encoded on a blocking thread
//! into chunks of [`CHUNK_BYTES`], at most [`CHUNKS_IN_FLIGHT`] waiting for
//! the client, so memory stays bounded whatever the state's size. The
//! encoding stops when the client goes away or the node shuts down.
//!
//! Audit: a refused call is recorded as every refusal is; an allowed one is
//! recorded once its stream ended, with its outcome (resource `snapshot at
//! index N`), so no backup holds its own record.

use std::io::{self, Write};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Response, Status};

use super::auth::Caller;
use super::{to_status, Api};
use crate::backup::file::{self, Header};
use crate::error::Error;
use crate::proto as pb;
use crate::scheduler::acl::{Permission, Resource};
use crate::scheduler::audit::AuditRecord;

/// Bytes of one chunk of the stream.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Chunks encoded ahead of the client.
pub const CHUNKS_IN_FLIGHT: usize = 2;

/// The stream of a backup file's bytes.
pub type SnapshotStream = ReceiverStream<Result<pb::SnapshotChunk, Status>>;

/// Sends what is written to it as chunks of the stream.
struct ChunkSender {
    chunks: mpsc::Sender<Result<pb::SnapshotChunk, Status>>,
    buffer: Vec<u8>,
    shutdown: CancellationToken,
}

impl ChunkSender {
    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if self.shutdown.is_cancelled() {
            return Err(io::Error::other("the node is shutting down"));
        }
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES));
        self.chunks
            .blocking_send(Ok(pb::SnapshotChunk { data }))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client stopped reading"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK_BYTES - self.buffer.len();
        let n = buf.len().min(room);
        self.buffer.extend_from_slice(&buf[..n]);
        if self.buffer.len() == CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

impl Api {
    /// The handler of `SaveSnapshot` for `caller` (see the module docs).
    pub(super) async fn save_snapshot_for(&self, caller: Caller) -> Result<Response<SnapshotStream>, Status> {
        let principal = {
            let state = self.node.state.read();
            self.authorize(&caller, &state, Permission::ClusterAdmin, &Resource::Cluster)?
                .principal
        };
        if let Err(e) = self.node.leader_barrier().await {
            if !matches!(e, Error::Unavailable { leader: Some(_), .. }) {
                let record = self.record(&caller, &principal, "snapshot", "", Some(&e));
                self.recorder().record(record);
            }
            return Err(to_status(e));
        }
        let (image, header) = {
            let (state, position) = self.node.state.read_at();
            let header = Header::of(&state, &position, self.node.id, self.node.cluster_id());
            (state.image(), header)
        };
        let resource = format!("snapshot at index {}", header.last_log.index);
        let record = self.record(&caller, &principal, &resource, "", None);
        let recorder = self.recorder().clone();
        let (chunks, stream) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let mut sender = ChunkSender {
            chunks: chunks.clone(),
            buffer: Vec::with_capacity(CHUNK_BYTES),
            shutdown: self.shutdown.clone(),
        };
        self.node.tasks().spawn_blocking(move || {
            let written = file::write(&mut sender, &header, |out| {
                // postcard writes a byte or a few at a time: buffered, the
                // hashing and the chunking see 64 KiB writes.
                let mut buffered = io::BufWriter::with_capacity(1 << 16, out);
                postcard::to_io(&image, &mut buffered).map_err(io::Error::other)?;
                buffered.flush()
            })
            .and_then(|bytes| sender.flush().map(|()| bytes));
            // The image shares maps with the live state: released here, off the API's tasks.
            drop(image);
            match written {
                Ok(bytes) => {
                    tracing::info!(index = header.last_log.index, bytes, "snapshot saved to a client");
                    recorder.record(record);
                }
                Err(e) => {
                    tracing::warn!(index = header.last_log.index, "saving a snapshot stopped: {e}");
                    let error = match e.kind() {
                        io::ErrorKind::BrokenPipe => Error::Aborted(e.to_string()),
                        _ => Error::unavailable(format!("the snapshot was not sent whole: {e}")),
                    };
                    let _ = chunks.blocking_send(Err(to_status(error.clone())));
                    recorder.record(AuditRecord {
                        code: error.code(),
                        message: error.to_string(),
                        ..record
                    });
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}
