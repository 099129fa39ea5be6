//! The backup file that `kairos snapshot save` writes. Layout (integers
//! little-endian):
//!
//! ```text
//! "KAIROSBK" | file format version: u16 | header length: u32 | header (JSON)
//!   | state (postcard StateImage) | state length: u64 | SHA-256 of every byte before it (32)
//! ```
//!
//! The file format version ([`FILE_VERSION`], today 1) covers this layout
//! and the header; the state's own encoding is the one of snapshot files,
//! named by the header's `state_format_version` ([`crate::codec`]). The
//! header is JSON so that `inspect` and people can read it and later
//! versions can add fields (unknown ones are ignored on read). The length
//! and checksum come last so the file can be written as a stream, without
//! knowing the state's size first.
//!
//! [`write`] writes a file through any writer, hashing on the way;
//! [`verify`] checks a stored one — magic, format version, header,
//! checksum over the whole file, lengths — reading it once through a
//! buffer, and [`data_reader`] then reads its state. A file of an unknown
//! format version, of another magic (a node's own `kairos-snapshot`
//! file), damaged or cut short is refused with an error that says which.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::raft::state_machine::AppliedPosition;
use crate::raft::NodeId;
use crate::scheduler::State;

/// What every backup file starts with.
pub const MAGIC: &[u8; 8] = b"KAIROSBK";
/// The format version of the files this build writes and reads.
pub const FILE_VERSION: u16 = 1;
/// Largest header accepted on read.
const MAX_HEADER_BYTES: u32 = 1 << 20;
/// Magic, format version and header length.
const PREFIX_LEN: u64 = 8 + 2 + 4;
/// State length and checksum.
const TRAILER_LEN: u64 = 8 + 32;

/// What a backup is: written first, as JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Header {
    /// The version of the kairos that took it.
    pub kairos_version: String,
    /// The commit that kairos was built from.
    pub kairos_commit: String,
    /// The cluster's id (derived from its cookie; empty when unknown).
    pub cluster_id: String,
    /// The node (the leader) that took it.
    pub taken_by: NodeId,
    /// When it was taken, RFC 3339 (UTC).
    pub created_at: String,
    /// When it was taken, Unix ms.
    pub created_at_ms: i64,
    /// The log id of the last entry the state includes.
    pub last_log: LogPosition,
    /// The membership at that entry.
    pub membership: MembershipRecord,
    /// The format version of the state's encoding (`crate::codec`).
    pub state_format_version: u16,
    /// How much of what the state holds.
    pub counts: Counts,
}

/// A Raft log id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    /// The term of the entry.
    pub term: u64,
    /// The node that led that term.
    pub leader: NodeId,
    /// The entry's index.
    pub index: u64,
}

/// A membership: its voter sets (two during a change) and every member's peer address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MembershipRecord {
    /// The voter sets.
    pub voters: Vec<Vec<NodeId>>,
    /// Every member (voters and learners), id → peer address.
    pub nodes: BTreeMap<NodeId, String>,
}

/// Counts of what the state holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counts {
    /// Jobs.
    pub jobs: u64,
    /// Runs kept (history and open ones).
    pub runs: u64,
    /// Audit entries kept.
    pub audit_entries: u64,
    /// The audit chain's head sequence number.
    pub audit_head_seq: u64,
    /// Tokens (revoked ones included).
    pub tokens: u64,
    /// Roles made with `acl role create` (the built-in `root` is not stored).
    pub roles: u64,
    /// Certificate bindings.
    pub bindings: u64,
    /// Job types external workers registered.
    pub job_types: u64,
    /// Sinks.
    pub sinks: u64,
}

impl Header {
    /// The header of a backup of `state`, at `position`, taken now by node
    /// `taken_by` of the cluster `cluster_id`.
    pub fn of(state: &State, position: &AppliedPosition, taken_by: NodeId, cluster_id: &str) -> Header {
        let now = chrono::Utc::now();
        let last = position.log_id.unwrap_or_default();
        let membership = position.membership.membership();
        Header {
            kairos_version: crate::api::service_info::BUILD_VERSION.into(),
            kairos_commit: crate::api::service_info::BUILD_COMMIT.into(),
            cluster_id: cluster_id.into(),
            taken_by,
            created_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            created_at_ms: now.timestamp_millis(),
            last_log: LogPosition {
                term: last.leader_id.term,
                leader: last.leader_id.node_id,
                index: last.index,
            },
            membership: MembershipRecord {
                voters: membership
                    .get_joint_config()
                    .iter()
                    .map(|set| set.iter().copied().collect())
                    .collect(),
                nodes: membership
                    .nodes()
                    .map(|(id, node)| (*id, node.addr.clone()))
                    .collect(),
            },
            state_format_version: crate::codec::FORMAT_VERSION,
            counts: Counts::of(state),
        }
    }
}

impl Counts {
    /// The counts of `state`.
    pub fn of(state: &State) -> Counts {
        let n = |count: usize| count as u64;
        Counts {
            jobs: n(state.job_count()),
            runs: n(state.run_count()),
            audit_entries: n(state.audit().len()),
            audit_head_seq: state.audit().head().seq,
            tokens: n(state.tokens().count()),
            roles: n(state.roles().count()),
            bindings: n(state.bindings().count()),
            job_types: n(state.job_types().count()),
            sinks: n(state.sinks().count()),
        }
    }
}

/// A writer (or reader) that passes bytes on, hashing and counting them.
struct Hashing<T> {
    inner: T,
    hash: Sha256,
    len: u64,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
            len: 0,
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a backup file of `header` and the state `write_data` writes to
/// `out`; returns the file's length. `out` is not flushed.
pub fn write(
    out: &mut dyn Write,
    header: &Header,
    write_data: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<u64> {
    let header_bytes = serde_json::to_vec_pretty(header).map_err(io::Error::other)?;
    let header_len = u32::try_from(header_bytes.len()).map_err(io::Error::other)?;
    let mut hashing = Hashing::new(out);
    hashing.write_all(MAGIC)?;
    hashing.write_all(&FILE_VERSION.to_le_bytes())?;
    hashing.write_all(&header_len.to_le_bytes())?;
    hashing.write_all(&header_bytes)?;
    let data_start = hashing.len;
    write_data(&mut hashing)?;
    let data_len = hashing.len - data_start;
    hashing.write_all(&data_len.to_le_bytes())?;
    let Hashing { inner, hash, len } = hashing;
    let digest = hash.finalize();
    inner.write_all(&digest)?;
    Ok(len + digest.len() as u64)
}

/// A backup file as [`verify`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Its header.
    pub header: Header,
    /// Where the state starts in the file.
    pub data_offset: u64,
    /// The state's length.
    pub data_len: u64,
    /// The file's length.
    pub file_len: u64,
    /// The file's checksum (SHA-256, hex).
    pub sha256: String,
}

/// `path`'s problem `what`: the file is not one to use.
fn refused(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::FailedPrecondition(format!("{}: {what}", path.display()))
}

/// Reads magic, format version and header; returns the header and its length.
fn read_header(path: &Path, input: &mut impl Read) -> Result<(Header, u64)> {
    let short = |_| refused(path, "not a Kairos backup file (too short)");
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(short)?;
    if &magic != MAGIC {
        let what = if magic.starts_with(b"KSNAP") {
            "this is a node's own snapshot file (kairos-snapshot), not a backup made by `kairos snapshot save`"
        } else {
            "not a Kairos backup file (bad magic)"
        };
        return Err(refused(path, what));
    }
    let mut version = [0u8; 2];
    input.read_exact(&mut version).map_err(short)?;
    let version = u16::from_le_bytes(version);
    if version != FILE_VERSION {
        let advice = if version > FILE_VERSION {
            "; use a newer kairos"
        } else {
            ""
        };
        return Err(refused(
            path,
            format!("backup file format version {version}; this kairos reads version {FILE_VERSION}{advice}"),
        ));
    }
    let mut len = [0u8; 4];
    input.read_exact(&mut len).map_err(short)?;
    let header_len = u32::from_le_bytes(len);
    if header_len > MAX_HEADER_BYTES {
        return Err(refused(
            path,
            format!("a header of {header_len} bytes: the file is damaged"),
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    input
        .read_exact(&mut header)
        .map_err(|_| refused(path, "cut short in its header"))?;
    let header: Header =
        serde_json::from_slice(&header).map_err(|e| refused(path, format!("its header is damaged ({e})")))?;
    Ok((header, u64::from(header_len)))
}

/// Checks the backup file at `path` (see the module docs) and returns
/// what it holds. Reads the whole file once.
pub fn verify(path: &Path) -> Result<Verified> {
    let io = |e: io::Error| Error::InvalidArgument(format!("{}: {e}", path.display()));
    let file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut input = BufReader::with_capacity(1 << 20, file);
    let (header, header_len) = read_header(path, &mut input)?;
    let data_offset = PREFIX_LEN + header_len;
    if file_len < data_offset + TRAILER_LEN {
        return Err(refused(path, "cut short: no state or checksum after the header"));
    }
    // Hash everything but the checksum: from the start again.
    input.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut hashed = Hashing::new(io::sink());
    let copied = io::copy(&mut (&mut input).take(file_len - 32), &mut hashed).map_err(io)?;
    if copied != file_len - 32 {
        return Err(refused(path, "changed while it was read"));
    }
    let mut stored = [0u8; 32];
    input
        .read_exact(&mut stored)
        .map_err(|_| refused(path, "changed while it was read"))?;
    let computed = hashed.hash.finalize();
    if computed[..] != stored[..] {
        return Err(refused(
            path,
            format!(
                "checksum mismatch: the file is damaged or incomplete (SHA-256 stored {}, computed {})",
                hex(&stored),
                hex(&computed)
            ),
        ));
    }
    let mut input = input.into_inner();
    input.seek(SeekFrom::Start(file_len - TRAILER_LEN)).map_err(io)?;
    let mut len = [0u8; 8];
    input.read_exact(&mut len).map_err(io)?;
    let data_len = u64::from_le_bytes(len);
    if data_len != file_len - data_offset - TRAILER_LEN {
        return Err(refused(
            path,
            format!(
                "its state length {data_len} does not match the file's ({} bytes)",
                file_len - data_offset - TRAILER_LEN
            ),
        ));
    }
    Ok(Verified {
        header,
        data_offset,
        data_len,
        file_len,
        sha256: hex(&computed),
    })
}

/// A reader of the state of the file at `path` that [`verify`] found as `verified`.
pub fn data_reader(path: &Path, verified: &Verified) -> Result<impl Read> {
    let io = |e: io::Error| Error::InvalidArgument(format!("{}: {e}", path.display()));
    let mut file = File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(verified.data_offset)).map_err(io)?;
    Ok(BufReader::with_capacity(1 << 20, file).take(verified.data_len))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            kairos_version: "0.1.0".into(),
            cluster_id: "c0ffee".into(),
            taken_by: 2,
            created_at: "2026-12-06T20:00:00.000Z".into(),
            created_at_ms: 1_796_500_000_000,
            last_log: LogPosition {
                term: 4,
                leader: 2,
                index: 812,
            },
            membership: MembershipRecord {
                voters: vec![vec![1, 2, 3]],
                nodes: (1..=3).map(|id| (id, format!("127.0.0.1:740{id}"))).collect(),
            },
            state_format_version: crate::codec::FORMAT_VERSION,
            counts: Counts {
                jobs: 3,
                runs: 40,
                tokens: 2,
                ..Counts::default()
            },
            ..Header::default()
        }
    }

    fn stored(dir: &Path, data: &[u8]) -> std::path::PathBuf {
        let path = dir.join("backup.ksnap");
        let mut bytes = Vec::new();
        let len = write(&mut bytes, &header(), |out| out.write_all(data)).unwrap();
        assert_eq!(len, bytes.len() as u64);
        std::fs::write(&path, &bytes).unwrap();
        path
    }

    #[test]
    fn a_written_file_verifies_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let path = stored(dir.path(), &data);
        let verified = verify(&path).unwrap();
        assert_eq!(verified.header, header());
        assert_eq!(verified.data_len, data.len() as u64);
        assert_eq!(verified.file_len, std::fs::metadata(&path).unwrap().len());
        let mut read = Vec::new();
        data_reader(&path, &verified)
            .unwrap()
            .read_to_end(&mut read)
            .unwrap();
        assert_eq!(read, data);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"KAIROSBK");
        assert_eq!(verified.sha256, hex(&Sha256::digest(&bytes[..bytes.len() - 32])));
    }

    #[test]
    fn a_changed_byte_anywhere_is_a_checksum_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let path = stored(dir.path(), b"some state bytes");
        let good = std::fs::read(&path).unwrap();
        // In the header's JSON, in the state, in the length, in the checksum.
        let header_at = good.windows(6).position(|w| w == b"c0ffee").unwrap();
        for at in [header_at, good.len() - 45, good.len() - 38, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            std::fs::write(&path, &bad).unwrap();
            let err = verify(&path).unwrap_err().to_string();
            assert!(err.contains("checksum mismatch"), "byte {at}: {err}");
        }
        std::fs::write(&path, &good[..good.len() - 5]).unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        std::fs::write(&path, &good[..20]).unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains("cut short"), "{err}");
    }

    #[test]
    fn an_unknown_version_or_another_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = stored(dir.path(), b"state");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(
            err.contains("backup file format version 2; this kairos reads version 1; use a newer kairos"),
            "{err}"
        );
        std::fs::write(&path, b"KSNAP006 and then some bytes").unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains("a node's own snapshot file"), "{err}");
        std::fs::write(&path, b"hello, world: not a backup").unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains("bad magic"), "{err}");
    }

    #[test]
    fn a_header_with_fields_this_build_does_not_know_is_read() {
        let mut json: serde_json::Value = serde_json::to_value(header()).unwrap();
        json["added_later"] = serde_json::json!({"x": 1});
        json["counts"]["widgets"] = serde_json::json!(7);
        let read: Header = serde_json::from_value(json).unwrap();
        assert_eq!(read, header());
    }
}
