//! The encoding of everything a node stores or sends to another node, and
//! its format version.
//!
//! Raft log entries (in sled), the state in snapshot files, and every
//! message between nodes — openraft's vote, append-entries and
//! install-snapshot requests and their replies, forwarded writes and their
//! results, node reports, and the work items and pool descriptions sent to
//! worker pools — are encoded with postcard: compact and fast, but with no
//! schema of its own. The encoding of a struct is its fields in order, of an
//! enum variant its position in the enum. So the layout of these types *is*
//! the format, and [`FORMAT_VERSION`] names it.
//!
//! Every value [`encode`] writes carries its version in a frame:
//!
//! ```text
//! 0x80 0x00 | format version: u16 little-endian | postcard body
//! ```
//!
//! The two marker bytes cannot begin anything written before versions
//! existed: each such encoding starts with a postcard varint, and a varint
//! byte with the continuation bit (`0x80`) is never followed by a zero
//! (postcard writes the shortest form). So bytes from before versions are
//! recognised as such and never misread as a version. [`decode`] reads the
//! frame first and refuses any version but its own with
//! [`Error::FailedPrecondition`] naming both — never a panic, never a
//! silent misread.
//!
//! Format versions:
//! - 1: snapshot files `KSNAP001` (create request records by request id,
//!   with copies of jobs); log entries and messages without a frame.
//! - 2: snapshot files `KSNAP002` (request records by hash); log entries
//!   and messages without a frame.
//! - 3: every log entry and message framed; snapshot files `KSNAP003`,
//!   whose header states the version of the (unframed) state after it. The
//!   bodies are laid out as in version 2.
//! - 4: security. Commands, results and errors gain variants at the end of
//!   their enums (client writes with their caller, the ACL commands, audit
//!   records; `Unauthenticated`, `PermissionDenied`), so a version 3 log
//!   entry reads the same under version 4 and is migrated by re-framing it
//!   ([`reframe_as_current`]); the state in snapshot files (`KSNAP004`)
//!   gains the ACL tables and the audit log at its end, and a version 3
//!   state is migrated with both empty.
//! - 5: external workers. Commands and results gain variants at the end
//!   (registered job types, attempts assigned to external workers, roles
//!   with type globs), so a version 4 log entry is re-framed as version 3
//!   ones are; the state in snapshot files (`KSNAP005`) gains the workers'
//!   part at its end (job types, external attempts, role type globs), and
//!   a version 4 state is migrated with it empty.
//! - 6: integration. Commands and results gain variants at the end
//!   (published events, forced deletes, sinks, roles with topic globs),
//!   schedules gain `OnEvent` and `After`, run causes `Event` and
//!   `Dependency`, permissions `event:watch` and `sink:admin`, audit kinds
//!   `Event`: all at the end of their enums, so a version 5 log entry is
//!   re-framed as version 4 ones are; the state in snapshot files
//!   (`KSNAP006`) gains the integration part at its end (events, run
//!   triggers, dependency joins, sinks, role topic globs), and a version 5
//!   state is migrated with it empty. A worker's work item gains the
//!   run's event (nodes exchange only the current version).
//!
//! Within a format version, a release may add what the previous release
//! of that format never receives: a variant at the end of an enum, written
//! only once the cluster version says every member reads it
//! ([`crate::cluster_version`]). Release 0.2 (still format 6) adds so the
//! command `SetClusterVersion`, and after a snapshot's state the recorded
//! cluster version once it is above 0.1 (bytes 0.1 does not read: it
//! decodes the state and ignores what follows). Everything else a 0.2 node
//! writes is laid out as 0.1 writes it, which `tests/upgrade.sh` checks by
//! running both in one cluster.
//!
//! The rule: a change to the layout of any encoded type — a field added,
//! removed, reordered or retyped, a variant added, moved or changed — is a
//! new format version, with its golden encodings (`tests/golden/`) and a
//! way to read or refuse what the previous version wrote.
//!
//! IMPLEMENTATION CAVEATS: a node understands exactly one format version on
//! the wire, so every node of a cluster must run the same one (a rolling
//! upgrade works between releases of one format version; a message of
//! another version is refused and the sender's request fails). Stored data of older versions is
//! migrated once, when a node opens its data directory (`raft::log_store`,
//! `raft::legacy`).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// The format version this build writes and reads (see the module docs).
pub const FORMAT_VERSION: u16 = 6;

/// The bytes every framed value starts with.
const MARKER: [u8; 2] = [0x80, 0x00];
/// Length of the frame before the body: the marker and the version.
pub const FRAME_LEN: usize = MARKER.len() + 2;

/// Encodes `value`, framed with [`FORMAT_VERSION`], for the log or the wire.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut framed = Vec::with_capacity(64);
    framed.extend_from_slice(&frame(FORMAT_VERSION));
    postcard::to_extend(value, framed).map_err(|e| Error::internal(format!("encode: {e}")))
}

/// The length of [`encode`]'s output, without building it.
pub fn encoded_len<T: Serialize>(value: &T) -> Result<usize> {
    let body = postcard::experimental::serialized_size(value)
        .map_err(|e| Error::internal(format!("encode: {e}")))?;
    Ok(FRAME_LEN + body)
}

/// Decodes a value written by [`encode`], named after its type in errors.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    decode_named(&type_label::<T>(), bytes)
}

/// Decodes a value written by [`encode`]; errors call it `what` (e.g. "log entry").
pub fn decode_named<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    let body = match framed_version(bytes) {
        Some(FORMAT_VERSION) => &bytes[FRAME_LEN..],
        Some(version) => return Err(version_error(what, version)),
        None => {
            return Err(Error::FailedPrecondition(format!(
                "{what} has no format version: it was written before format versions \
                 existed, or is not a Kairos encoding (this node reads format version \
                 {FORMAT_VERSION})"
            )))
        }
    };
    decode_body(body).map_err(|e| Error::internal(format!("decode {what}: {e}")))
}

/// Decodes a value written by [`encode`] followed by a trailer (what
/// [`append_trailer`] added), returning both; the trailer is empty when
/// there is none. Older builds decode the value and ignore the trailer, so
/// a trailer may carry what they do not need (a trace context).
pub fn decode_with_trailer<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, &[u8])> {
    let what = type_label::<T>();
    let body = match framed_version(bytes) {
        Some(FORMAT_VERSION) => &bytes[FRAME_LEN..],
        Some(version) => return Err(version_error(&what, version)),
        None => return decode_named(&what, bytes).map(|value| (value, &[][..])),
    };
    postcard::take_from_bytes(body).map_err(|e| Error::internal(format!("decode {what}: {e}")))
}

/// Appends `trailer` to an encoding made by [`encode`] (see [`decode_with_trailer`]).
pub fn append_trailer<T: Serialize>(encoded: Vec<u8>, trailer: &T) -> Result<Vec<u8>> {
    postcard::to_extend(trailer, encoded).map_err(|e| Error::internal(format!("encode: {e}")))
}

/// The refusal of `what` written in format `version`, which is not this build's.
pub fn version_error(what: &str, version: u16) -> Error {
    let (relation, advice) = if version > FORMAT_VERSION {
        ("newer", "upgrade this node; ")
    } else {
        ("older", "")
    };
    Error::FailedPrecondition(format!(
        "{what} is in format version {version}, {relation} than this node understands \
         (it reads {FORMAT_VERSION}); {advice}every node of a cluster must run the same format version"
    ))
}

/// The unframed postcard encoding of `value`: for data whose version is
/// stated elsewhere (a snapshot's state, after the file's header).
pub fn encode_body<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(value).map_err(|e| Error::internal(format!("encode: {e}")))
}

/// Decodes what [`encode_body`] wrote, or a body of an older format
/// version whose layout this type kept.
pub fn decode_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::internal(format!("decode: {e}")))
}

/// The version `bytes` are framed with, or `None` when they have no frame.
pub fn framed_version(bytes: &[u8]) -> Option<u16> {
    match bytes {
        [m0, m1, v0, v1, ..] if [*m0, *m1] == MARKER => Some(u16::from_le_bytes([*v0, *v1])),
        _ => None,
    }
}

/// Today's encoding of a value written by format version 2 (no frame) or
/// 3 (framed) whose body today's layout reads the same (every log entry
/// and log meta value): the old frame, if any, is replaced by today's.
pub fn reframe_as_current(bytes: &[u8]) -> Vec<u8> {
    let body = match framed_version(bytes) {
        Some(_) => &bytes[FRAME_LEN..],
        None => bytes,
    };
    [&frame(FORMAT_VERSION)[..], body].concat()
}

/// The frame of format `version`.
fn frame(version: u16) -> [u8; FRAME_LEN] {
    let [v0, v1] = version.to_le_bytes();
    [MARKER[0], MARKER[1], v0, v1]
}

/// `T`'s name without module paths, for messages: `Result<VoteResponse<u64>, RaftError<u64>>`.
fn type_label<T>() -> String {
    let mut label = String::new();
    let mut path = String::new();
    for c in std::any::type_name::<T>().chars().map(Some).chain([None]) {
        match c {
            Some(c) if c.is_alphanumeric() || c == '_' || c == ':' => path.push(c),
            _ => {
                label.push_str(path.rsplit("::").next().unwrap_or_default());
                path.clear();
                label.extend(c);
            }
        }
    }
    label
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_round_trips_in_a_frame_of_this_version() {
        let value = (7u64, String::from("job-1"), Some(-3i64));
        let bytes = encode(&value).unwrap();
        assert_eq!(&bytes[..FRAME_LEN], &[0x80, 0x00, 6, 0]);
        assert_eq!(bytes.len(), encoded_len(&value).unwrap());
        assert_eq!(&bytes[FRAME_LEN..], &encode_body(&value).unwrap()[..]);
        assert_eq!(decode::<(u64, String, Option<i64>)>(&bytes).unwrap(), value);
        assert_eq!(framed_version(&bytes), Some(FORMAT_VERSION));
    }

    #[test]
    fn another_version_or_no_frame_is_refused_by_name() {
        let mut newer = encode(&42u64).unwrap();
        newer[2..4].copy_from_slice(&7u16.to_le_bytes());
        let err = decode_named::<u64>("log entry", &newer).unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "log entry is in format version 7, newer than this node understands (it reads 6); \
             upgrade this node; every node of a cluster must run the same format version"
        );
        let mut older = encode(&42u64).unwrap();
        older[2..4].copy_from_slice(&0u16.to_le_bytes());
        let err = decode::<u64>(&older).unwrap_err().to_string();
        assert!(err.starts_with("u64 is in format version 0, older than"), "{err}");

        // Version 2 wrote no frame; its bytes are refused, and framed they read.
        let unframed = encode_body(&42u64).unwrap();
        let err = decode::<u64>(&unframed).unwrap_err().to_string();
        assert!(
            err.contains("no format version") && err.contains("reads format version 6"),
            "{err}"
        );
        assert_eq!(decode::<u64>(&reframe_as_current(&unframed)).unwrap(), 42);
        // Version 3's frame is replaced by today's.
        let mut v3 = encode(&42u64).unwrap();
        v3[2..4].copy_from_slice(&3u16.to_le_bytes());
        assert!(decode::<u64>(&v3).is_err());
        assert_eq!(decode::<u64>(&reframe_as_current(&v3)).unwrap(), 42);
        // Garbage after a good frame is a decode error, not a version error.
        let err = decode::<String>(&[0x80, 0x00, 6, 0, 0xff]).unwrap_err();
        assert!(matches!(err, Error::Internal(_)), "{err:?}");
    }

    #[test]
    fn no_unframed_varint_starts_like_a_frame() {
        // Every first field of an encoded type is a varint (or a string
        // length, or an enum tag): none begins 0x80 0x00.
        for value in [0u64, 1, 127, 128, 255, 256, 1 << 14, 1 << 21, 1 << 35, u64::MAX] {
            let bytes = encode_body(&(value, 0u8)).unwrap();
            assert_eq!(framed_version(&bytes), None, "{value}");
        }
    }

    #[test]
    fn type_labels_drop_module_paths() {
        assert_eq!(type_label::<u64>(), "u64");
        assert_eq!(
            type_label::<std::result::Result<Vec<String>, crate::error::Error>>(),
            "Result<Vec<String>, Error>"
        );
        assert_eq!(type_label::<(u8, Option<&str>)>(), "(u8, Option<&str>)");
    }
}
