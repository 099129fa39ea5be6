//! The stored snapshot: one file beside sled's database, replaced atomically.
//!
//! Snapshots used to live in sled, in the same database as the Raft log, as
//! 1 MiB chunks. sled writes everything through one log, so a `flush` for
//! the next Raft append had to push the tens of megabytes of a snapshot
//! first: at 64 clients creating jobs, each snapshot stalled the log for a
//! few hundred milliseconds (create p999 296–380 ms against 63–99 ms with
//! the store skipped, same hour, 2026-11-27). A file has its own inode, so
//! its `fsync` waits for its own pages only.
//!
//! The file is `kairos-snapshot` in the database's directory (sled's own
//! files there are `conf`, `db`, `blobs/` and `snap.*`). Layout (integers
//! little-endian):
//!
//! ```text
//! "KSNAP001" | meta length: u32 | meta (postcard) | data length: u64 | data | crc32 of all before: u32
//! ```
//!
//! [`SnapshotFile::store`] writes `kairos-snapshot.tmp`, `fsync`s it, renames
//! it over `kairos-snapshot` and `fsync`s the directory, so a crash leaves either the
//! old snapshot or the new one, never a mix. [`SnapshotFile::read_meta`]
//! reads only the header (starting a node must not load hundreds of MB to
//! learn a log id); [`SnapshotFile::read`] reads everything and checks the
//! lengths and the checksum, so a damaged file is an error, not a state.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use super::{decode, encode};

/// The snapshot's description (openraft's `SnapshotMeta` for our types).
pub type Meta = openraft::SnapshotMeta<super::NodeId, openraft::BasicNode>;

const MAGIC: &[u8; 8] = b"KSNAP001";
/// Largest meta accepted on read (a membership and a log id: a few hundred bytes).
const MAX_META_BYTES: u32 = 1 << 20;

/// The snapshot file of one node; see the module docs.
pub struct SnapshotFile {
    path: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
}

impl SnapshotFile {
    /// The snapshot file in `dir` (which must exist).
    pub fn in_dir(dir: &Path) -> SnapshotFile {
        SnapshotFile {
            path: dir.join("kairos-snapshot"),
            tmp: dir.join("kairos-snapshot.tmp"),
            dir: dir.to_path_buf(),
        }
    }

    /// Replaces the stored snapshot with `data` described by `meta`; durable on return.
    pub fn store(&self, meta: &Meta, data: &[u8]) -> io::Result<()> {
        let meta_bytes = encode(meta).map_err(io::Error::other)?;
        let meta_len = u32::try_from(meta_bytes.len()).map_err(io::Error::other)?;
        let mut crc = crc32fast::Hasher::new();
        let mut file = io::BufWriter::new(File::create(&self.tmp)?);
        for part in [
            &MAGIC[..],
            &meta_len.to_le_bytes(),
            &meta_bytes,
            &(data.len() as u64).to_le_bytes(),
            data,
        ] {
            crc.update(part);
            file.write_all(part)?;
        }
        file.write_all(&crc.finalize().to_le_bytes())?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&self.tmp, &self.path)?;
        File::open(&self.dir)?.sync_all()
    }

    /// The stored snapshot's meta, reading only the header; `None` when there is none.
    pub fn read_meta(&self) -> io::Result<Option<Meta>> {
        let Some(file) = self.open()? else {
            return Ok(None);
        };
        let mut reader = BufReader::new(file);
        Ok(Some(read_header(&mut reader)?.0))
    }

    /// The stored snapshot, checked; `None` when there is none.
    pub fn read(&self) -> io::Result<Option<(Meta, Vec<u8>)>> {
        let Some(mut file) = self.open()? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let corrupt = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {what}", self.path.display()),
            )
        };
        let Some((body, stored_crc)) = bytes.split_last_chunk::<4>() else {
            return Err(corrupt("shorter than its header"));
        };
        if crc32fast::hash(body) != u32::from_le_bytes(*stored_crc) {
            return Err(corrupt("checksum mismatch"));
        }
        let mut reader = body;
        let (meta, data_len) = read_header(&mut reader).map_err(|e| corrupt(&e.to_string()))?;
        if reader.len() as u64 != data_len {
            return Err(corrupt(&format!(
                "{} data bytes, header says {data_len}",
                reader.len()
            )));
        }
        // Keep the data in the buffer it was read into (a copy would hold
        // the snapshot twice: hundreds of MB at a million jobs).
        let (body_len, header_len) = (body.len(), body.len() - reader.len());
        bytes.truncate(body_len);
        bytes.drain(..header_len);
        Ok(Some((meta, bytes)))
    }

    fn open(&self) -> io::Result<Option<File>> {
        match OpenOptions::new().read(true).open(&self.path) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Reads magic, meta and data length; leaves `reader` at the data.
fn read_header(reader: &mut impl Read) -> io::Result<(Meta, u64)> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid("not a Kairos snapshot file (bad magic)".into()));
    }
    let mut len4 = [0u8; 4];
    reader.read_exact(&mut len4)?;
    let meta_len = u32::from_le_bytes(len4);
    if meta_len > MAX_META_BYTES {
        return Err(invalid(format!("snapshot meta of {meta_len} bytes")));
    }
    let mut meta_bytes = vec![0u8; meta_len as usize];
    reader.read_exact(&mut meta_bytes)?;
    let meta = decode(&meta_bytes).map_err(|e| invalid(format!("snapshot meta: {e}")))?;
    let mut len8 = [0u8; 8];
    reader.read_exact(&mut len8)?;
    Ok((meta, u64::from_le_bytes(len8)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId, StoredMembership};

    fn meta(index: u64) -> Meta {
        Meta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("3-{index}-1"),
        }
    }

    #[test]
    fn a_stored_snapshot_reads_back_and_replaces_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = SnapshotFile::in_dir(dir.path());
        assert!(file.read_meta().unwrap().is_none());
        assert!(file.read().unwrap().is_none());

        file.store(&meta(10), b"first state").unwrap();
        file.store(&meta(20), &[7u8; 3000]).unwrap();
        assert_eq!(file.read_meta().unwrap(), Some(meta(20)));
        assert_eq!(file.read().unwrap(), Some((meta(20), vec![7u8; 3000])));
        assert!(!dir.path().join("kairos-snapshot.tmp").exists());
    }

    #[test]
    fn a_damaged_or_truncated_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = SnapshotFile::in_dir(dir.path());
        file.store(&meta(10), b"some state bytes").unwrap();
        let path = dir.path().join("kairos-snapshot");
        let good = fs::read(&path).unwrap();

        let mut flipped = good.clone();
        let at = good.len() - 8;
        flipped[at] ^= 1;
        fs::write(&path, &flipped).unwrap();
        let err = file.read().unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");

        fs::write(&path, &good[..good.len() - 3]).unwrap();
        assert!(file.read().is_err());

        fs::write(&path, b"not a snapshot at all").unwrap();
        assert!(file.read_meta().unwrap_err().to_string().contains("magic"));
    }
}
