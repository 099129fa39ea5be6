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
//! "KSNAP" NNN | meta length: u32 | meta | data length: u64 | data | crc32 of all before: u32
//! ```
//!
//! `NNN` is the format version of everything after it, in three ASCII
//! digits ([`crate::codec`]): today `KSNAP006`. Meta and data (a
//! `StateImage`) are encoded without a frame of their own, since the
//! header states their version. A file of an unknown version is refused,
//! naming both versions.
//!
//! [`SnapshotFile::store`] (or [`SnapshotFile::store_with`], which streams
//! the data instead of taking it whole) writes `kairos-snapshot.tmp`, `fsync`s it, renames
//! it over `kairos-snapshot` and `fsync`s the directory, so a crash leaves either the
//! old snapshot or the new one, never a mix. [`SnapshotFile::read_meta`]
//! reads only the header (starting a node must not load hundreds of MB to
//! learn a log id); [`SnapshotFile::read`] reads everything and checks the
//! lengths and the checksum, so a damaged file is an error, not a state.
//! Files of format versions 1 (`KSNAP001`, before 2026-12-01: the older
//! state encoding) and 2 (`KSNAP002`: today's layout) are read as
//! [`Format::V1`] and [`Format::V2`]; the state machine migrates them on
//! open (`raft::legacy`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::codec::{self, FORMAT_VERSION};

/// The snapshot's description (openraft's `SnapshotMeta` for our types).
pub type Meta = openraft::SnapshotMeta<super::NodeId, openraft::BasicNode>;

/// What every snapshot file starts with, before its format version.
const MAGIC_PREFIX: &[u8; 5] = b"KSNAP";

/// How a stored snapshot is encoded, told by the format version in its magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `KSNAP001`: the data is a `LegacyStateImage`, to migrate.
    V1,
    /// `KSNAP002`: laid out as today's; to store again as `KSNAP003`.
    V2,
    /// `KSNAP003`: the data is a `V3StateImage` (no security part), to migrate.
    V3,
    /// `KSNAP004`: the data is a `V4StateImage` (no workers' part), to migrate.
    V4,
    /// `KSNAP005`: the data is a `V5StateImage` (no integration part), to migrate.
    V5,
    /// `KSNAP006` (format version 6, today's): the data is a `StateImage`.
    V6,
}

impl Format {
    /// The format of the files written today.
    pub const CURRENT: Format = Format::V6;

    /// The format of format version `version`, if this build reads it.
    fn of_version(version: u16) -> Option<Format> {
        match version {
            1 => Some(Format::V1),
            2 => Some(Format::V2),
            3 => Some(Format::V3),
            4 => Some(Format::V4),
            5 => Some(Format::V5),
            FORMAT_VERSION => Some(Format::V6),
            _ => None,
        }
    }
}

/// A stored snapshot as read back.
#[derive(Debug, PartialEq)]
pub struct Stored {
    /// What it describes.
    pub meta: Meta,
    /// The encoded state.
    pub data: Vec<u8>,
    /// How `data` is encoded.
    pub format: Format,
}
/// Largest meta accepted on read (a membership and a log id: a few hundred bytes).
const MAX_META_BYTES: u32 = 1 << 20;

/// The snapshot file of one node; see the module docs.
pub struct SnapshotFile {
    path: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
    /// Serializes stores: openraft builds a snapshot on a task of its own
    /// while the state machine may install one, and both write `tmp`.
    storing: std::sync::Mutex<()>,
}

impl SnapshotFile {
    /// The snapshot file in `dir` (which must exist).
    pub fn in_dir(dir: &Path) -> SnapshotFile {
        SnapshotFile {
            path: dir.join("kairos-snapshot"),
            tmp: dir.join("kairos-snapshot.tmp"),
            dir: dir.to_path_buf(),
            storing: std::sync::Mutex::new(()),
        }
    }

    /// Replaces the stored snapshot with `data` described by `meta`, unless
    /// the stored one is newer; durable on return.
    pub fn store(&self, meta: &Meta, data: &[u8]) -> io::Result<()> {
        self.store_with(meta, |out| out.write_all(data)).map(|_| ())
    }

    /// Replaces the stored snapshot with the data `write_data` writes,
    /// described by `meta`, without holding that data in memory: it goes
    /// through a 1 MiB buffer to the file, its checksum computed on the way,
    /// and its length is filled in afterwards. Durable on return; returns
    /// the data's length.
    ///
    /// A stored snapshot of a later log id is kept and `None` returned: a
    /// build of an older state can finish after a newer snapshot was
    /// installed, and replacing that one would leave the file behind the
    /// log openraft purged for it (a restart would then miss the entries in
    /// between).
    pub fn store_with(
        &self,
        meta: &Meta,
        write_data: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<Option<u64>> {
        let _storing = self.storing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stored) = self.read_meta()? {
            if stored.last_log_id > meta.last_log_id {
                tracing::info!(stored = ?stored.last_log_id, offered = ?meta.last_log_id,
                    "a newer snapshot is stored; the older one is not");
                return Ok(None);
            }
        }
        let meta_bytes = codec::encode_body(meta).map_err(io::Error::other)?;
        let meta_len = u32::try_from(meta_bytes.len()).map_err(io::Error::other)?;
        let prefix = [&magic(FORMAT_VERSION)[..], &meta_len.to_le_bytes(), &meta_bytes].concat();
        let mut file = File::create(&self.tmp)?;
        file.write_all(&prefix)?;
        file.write_all(&0u64.to_le_bytes())?; // the data length, filled in below
        let mut data = io::BufWriter::with_capacity(1 << 20, Checksummed::new(&mut file));
        write_data(&mut data)?;
        let data = data.into_inner().map_err(|e| e.into_error())?;
        let (data_crc, data_len) = (data.crc, data.len);
        // crc32 of prefix | length | data, from the data's own crc32.
        let mut crc = crc32fast::Hasher::new();
        crc.update(&prefix);
        crc.update(&data_len.to_le_bytes());
        crc.combine(&data_crc);
        file.write_all(&crc.finalize().to_le_bytes())?;
        file.seek(SeekFrom::Start(prefix.len() as u64))?;
        file.write_all(&data_len.to_le_bytes())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&self.tmp, &self.path)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(Some(data_len))
    }

    /// The stored snapshot's meta, reading only the header; `None` when there is none.
    pub fn read_meta(&self) -> io::Result<Option<Meta>> {
        Ok(self.read_header()?.map(|(meta, _)| meta))
    }

    /// The stored snapshot's format, reading only the header; `None` when there is none.
    pub fn read_format(&self) -> io::Result<Option<Format>> {
        Ok(self.read_header()?.map(|(_, format)| format))
    }

    fn read_header(&self) -> io::Result<Option<(Meta, Format)>> {
        let Some(file) = self.open()? else {
            return Ok(None);
        };
        let mut reader = BufReader::new(file);
        let (meta, _, format) = read_header(&mut reader).map_err(|e| self.named(e))?;
        Ok(Some((meta, format)))
    }

    /// `e` with the file's path in front.
    fn named(&self, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("{}: {e}", self.path.display()))
    }

    /// The stored snapshot, checked (by [`SnapshotFile::read_with`]); `None`
    /// when there is none.
    pub fn read(&self) -> io::Result<Option<Stored>> {
        // Sized from the file: growing the buffer by doubling held up to
        // twice the snapshot (hundreds of MB at a million jobs).
        let size = match fs::metadata(&self.path) {
            Ok(m) => usize::try_from(m.len()).map_err(io::Error::other)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let read_data = |format: Format, input: &mut dyn Read| {
            let mut data = Vec::with_capacity(size);
            input.read_to_end(&mut data)?;
            Ok((format, data))
        };
        Ok(self
            .read_with(read_data)?
            .map(|(meta, (format, data))| Stored { meta, data, format }))
    }

    /// The stored snapshot's meta and what `decode` makes of its data,
    /// read through a buffer and never held whole (a restart at a million
    /// jobs otherwise held the file's hundreds of MB beside the state it
    /// decoded). The lengths and the checksum are checked after `decode`
    /// returns; on a mismatch the decoded value is dropped and an error
    /// returned. `None` when there is no snapshot.
    pub fn read_with<T>(
        &self,
        decode: impl FnOnce(Format, &mut dyn Read) -> io::Result<T>,
    ) -> io::Result<Option<(Meta, T)>> {
        let Some(file) = self.open()? else {
            return Ok(None);
        };
        let corrupt = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {what}", self.path.display()),
            )
        };
        // The checksum covers everything before it: header and data.
        let mut input = Checksummed::new(BufReader::with_capacity(1 << 20, file));
        let (meta, data_len, format) = read_header(&mut input).map_err(|e| match e.kind() {
            io::ErrorKind::Unsupported => self.named(e),
            _ => corrupt(&e.to_string()),
        })?;
        let mut data = (&mut input).take(data_len);
        let value = decode(format, &mut data)?;
        io::copy(&mut data, &mut io::sink())?;
        if data.limit() != 0 {
            return Err(corrupt("shorter than its header says"));
        }
        let computed = input.crc.clone().finalize();
        let mut stored = [0u8; 4];
        input
            .inner
            .read_exact(&mut stored)
            .map_err(|_| corrupt("no checksum"))?;
        if computed != u32::from_le_bytes(stored) {
            return Err(corrupt("checksum mismatch"));
        }
        if input.inner.read(&mut [0u8; 1])? != 0 {
            return Err(corrupt("longer than its header says"));
        }
        Ok(Some((meta, value)))
    }

    /// Why the stored snapshot is damaged (it does not start as a snapshot
    /// file, or its lengths or checksum do not hold), reading it through
    /// without decoding; `None` when it is whole or there is none. A file
    /// of a format version this build does not know is an error, not
    /// damage: a newer build wrote it.
    pub fn damage(&self) -> io::Result<Option<String>> {
        match self.read_with(|_, data| io::copy(data, &mut io::sink())) {
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidData || e.kind() == io::ErrorKind::UnexpectedEof => {
                Ok(Some(e.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    /// Moves the stored snapshot to `kairos-snapshot.damaged` (replacing an
    /// earlier one there), durably; returns where it went.
    pub fn set_aside(&self) -> io::Result<PathBuf> {
        let aside = self.dir.join("kairos-snapshot.damaged");
        fs::rename(&self.path, &aside)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(aside)
    }

    fn open(&self) -> io::Result<Option<File>> {
        match OpenOptions::new().read(true).open(&self.path) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A writer (or reader) that passes bytes on and keeps their count and crc32.
struct Checksummed<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W> Checksummed<W> {
    fn new(inner: W) -> Self {
        Checksummed {
            inner,
            crc: crc32fast::Hasher::new(),
            len: 0,
        }
    }
}

impl<R: Read> Read for Checksummed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The magic of a file of format `version`: `KSNAP` and three digits.
fn magic(version: u16) -> [u8; 8] {
    let digits = format!("{:03}", version % 1000);
    let mut magic = *b"KSNAP000";
    magic[5..].copy_from_slice(digits.as_bytes());
    magic
}

/// Reads magic, meta and data length; leaves `reader` at the data.
fn read_header(reader: &mut impl Read) -> io::Result<(Meta, u64, Format)> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic)?;
    let (prefix, digits) = magic.split_at(MAGIC_PREFIX.len());
    let version = std::str::from_utf8(digits)
        .ok()
        .filter(|d| prefix == MAGIC_PREFIX && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<u16>().ok())
        .ok_or_else(|| invalid("not a Kairos snapshot file (bad magic)".into()))?;
    // Unsupported, not InvalidData: a newer build's file is not damaged.
    let format = Format::of_version(version).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            codec::version_error("the snapshot file", version).to_string(),
        )
    })?;
    let mut len4 = [0u8; 4];
    reader.read_exact(&mut len4)?;
    let meta_len = u32::from_le_bytes(len4);
    if meta_len > MAX_META_BYTES {
        return Err(invalid(format!("snapshot meta of {meta_len} bytes")));
    }
    let mut meta_bytes = vec![0u8; meta_len as usize];
    reader.read_exact(&mut meta_bytes)?;
    let meta = codec::decode_body(&meta_bytes).map_err(|e| invalid(format!("snapshot meta: {e}")))?;
    let mut len8 = [0u8; 8];
    reader.read_exact(&mut len8)?;
    Ok((meta, u64::from_le_bytes(len8), format))
}

/// The `bytes` of a stored file with its magic replaced by `magic` and the
/// checksum recomputed: the file as another format version would have
/// written it (for tests of migrations and refusals).
#[cfg(test)]
pub(super) fn with_magic(mut bytes: Vec<u8>, magic: &[u8; 8]) -> Vec<u8> {
    bytes[..8].copy_from_slice(magic);
    let body = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..body]);
    bytes[body..].copy_from_slice(&crc.to_le_bytes());
    bytes
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
        let stored = file.read().unwrap().unwrap();
        assert_eq!(
            (stored.meta, stored.data, stored.format),
            (meta(20), vec![7u8; 3000], Format::V6)
        );
        assert!(!dir.path().join("kairos-snapshot.tmp").exists());
    }

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = SnapshotFile::in_dir(dir.path());
        file.store(&meta(20), b"newer").unwrap();
        assert_eq!(
            file.store_with(&meta(10), |out| out.write_all(b"older")).unwrap(),
            None
        );
        let stored = file.read().unwrap().unwrap();
        assert_eq!((stored.meta, stored.data), (meta(20), b"newer".to_vec()));
        // The same log id again, or a later one, replaces it.
        file.store(&meta(20), b"again").unwrap();
        file.store(&meta(21), b"later").unwrap();
        assert_eq!(file.read().unwrap().unwrap().data, b"later".to_vec());
    }

    #[test]
    fn a_streamed_snapshot_reads_back_like_a_stored_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = SnapshotFile::in_dir(dir.path());
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let written = file
            .store_with(&meta(30), |out| {
                for chunk in data.chunks(7) {
                    out.write_all(chunk)?;
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(written, Some(data.len() as u64));
        let streamed = fs::read(dir.path().join("kairos-snapshot")).unwrap();
        assert_eq!(
            file.read().unwrap().map(|s| (s.meta, s.data)),
            Some((meta(30), data.clone()))
        );
        file.store(&meta(30), &data).unwrap();
        let stored = fs::read(dir.path().join("kairos-snapshot")).unwrap();
        assert_eq!(streamed, stored, "the same bytes either way");
    }

    #[test]
    fn reading_through_a_decoder_checks_like_a_whole_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = SnapshotFile::in_dir(dir.path());
        let data: Vec<u8> = (0..2_500_000u32).map(|i| (i % 253) as u8).collect();
        file.store(&meta(40), &data).unwrap();
        let read_all = |format: Format, input: &mut dyn Read| {
            let mut out = Vec::new();
            input.read_to_end(&mut out)?;
            Ok((format, out))
        };
        let (m, (format, got)) = file.read_with(read_all).unwrap().unwrap();
        assert_eq!((m, format, got), (meta(40), Format::V6, data.clone()));
        // A decoder that stops early still has the rest checked.
        let first_byte = |_: Format, input: &mut dyn Read| {
            let mut one = [0u8; 1];
            input.read_exact(&mut one)?;
            Ok(one[0])
        };
        assert_eq!(file.read_with(first_byte).unwrap().unwrap().1, 0);
        let path = dir.path().join("kairos-snapshot");
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.len() - 100;
        bytes[at] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let err = file.read_with(first_byte).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        assert!(file.read_with(first_byte).is_err());
    }

    #[test]
    fn the_header_states_the_format_version_and_an_unknown_one_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = SnapshotFile::in_dir(dir.path());
        file.store(&meta(10), b"state bytes").unwrap();
        let path = dir.path().join("kairos-snapshot");
        let stored = fs::read(&path).unwrap();
        assert_eq!(&stored[..8], b"KSNAP006");
        assert_eq!(file.read_format().unwrap(), Some(Format::CURRENT));

        fs::write(&path, with_magic(stored.clone(), b"KSNAP009")).unwrap();
        for err in [file.read_meta().unwrap_err(), file.read().unwrap_err()] {
            let err = err.to_string();
            assert!(
                err.contains(
                    "the snapshot file is in format version 9, newer than this node understands (it reads 6)"
                ) && err.contains("kairos-snapshot"),
                "{err}"
            );
        }
        // Files of format versions 1 to 3 are read, as such.
        for (magic, format) in [
            (b"KSNAP005", Format::V5),
            (b"KSNAP004", Format::V4),
            (b"KSNAP003", Format::V3),
            (b"KSNAP002", Format::V2),
            (b"KSNAP001", Format::V1),
        ] {
            fs::write(&path, with_magic(stored.clone(), magic)).unwrap();
            let read = file.read().unwrap().unwrap();
            assert_eq!(
                (read.meta, read.data, read.format),
                (meta(10), b"state bytes".to_vec(), format)
            );
        }
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
