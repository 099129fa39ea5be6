//! Property: **a node whose storage fails stops**. Under `fsync_error` a
//! node's `fdatasync`/`fsync` fail with EIO (the disk-fault library,
//! `tests/testkit/disk_faults.c`); under `disk_full` its filesystem is full
//! and a write that needs space fails with ENOSPC. It must not go on as if
//! its data were safe (after a failed fsync the kernel may have dropped the
//! dirty pages, so a later successful fsync proves nothing). Kairos stops
//! the process with exit status 1 and the reason. The harness records a
//! victim that was still running 10 s after its storage began failing, or
//! that exited with success, and this checker reports it. (A node on a full
//! disk whose log names no ENOSPC failed no write, sled having reused free
//! space inside its files, and is not recorded.) That the node acknowledged nothing it could
//! not persist, and that it catches up once restarted, the other checkers
//! judge (`acknowledged_writes`, `replica_digest`).

use crate::history::FaultKind;
use crate::report::Violation;

use super::Evidence;

pub const NAME: &str = "storage_errors_stop";

pub fn check(evidence: &Evidence) -> Vec<Violation> {
    super::misbehaviour_of(evidence, NAME, &[FaultKind::FsyncError, FaultKind::DiskFull])
}
