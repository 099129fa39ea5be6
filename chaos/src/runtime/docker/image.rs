//! The run's image, made from the locally built `kairos` binary.
//!
//! There is no registry to pull a base image from, and none is needed: the
//! image is a root filesystem holding `/kairos`, the shared libraries and
//! the dynamic loader that `ldd` resolves for it (each at its host path, so
//! the loader finds them where the binary was linked to look), and empty
//! `/data` and `/tmp` (world-writable, sticky) directories. The fault
//! libraries a round preloads go in the same way: each at its host path,
//! with what `ldd` resolves for it. [`build`] writes
//! it as a ustar archive with the [`tar`] crate (every entry root-owned,
//! mode 0755) into the work directory, streams that file to the daemon's
//! image import with the change `ENTRYPOINT ["/kairos"]`, and deletes it.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! - Libraries the binary opens itself at run time (`dlopen`) are not found by
//!   `ldd` and not included; `kairos` opens none.
//! - A static binary ("not a dynamic executable") gets no libraries, which is
//!   what it needs.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bollard::query_parameters::{CreateImageOptions, RemoveImageOptions};
use bollard::{body_try_stream, Docker};
use futures::TryStreamExt;
use tokio_util::io::ReaderStream;

use super::{ignore_not_found, DOCKER_TIMEOUT};

/// The image's entrypoint: the binary at the root of the filesystem.
const ENTRYPOINT_CHANGE: &str = r#"ENTRYPOINT ["/kairos"]"#;
/// Mode of every directory and file but `/tmp`.
const ENTRY_MODE: u32 = 0o755;
/// Mode of `/tmp`: world-writable, sticky.
const TMP_MODE: u32 = 0o1777;

/// A file or directory of the image, at `path` (relative, no leading `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum RootfsEntry {
    /// An empty directory.
    Dir { path: String, mode: u32 },
    /// A copy of the host file `source` (symlinks followed).
    File {
        path: String,
        mode: u32,
        source: PathBuf,
    },
}

/// Makes the image `tag` from `binary` and the libraries to preload
/// (`preloads`, absolute paths), using `work_dir` for the archive.
pub(super) async fn build(
    docker: &Docker,
    binary: &Path,
    preloads: &[PathBuf],
    work_dir: &Path,
    tag: &str,
) -> Result<()> {
    let mut libraries = shared_libraries(binary).await?;
    for preload in preloads {
        anyhow::ensure!(
            preload.is_absolute(),
            "the library to preload {} is not an absolute path",
            preload.display()
        );
        for library in std::iter::once(preload.clone()).chain(shared_libraries(preload).await?) {
            if !libraries.contains(&library) {
                libraries.push(library);
            }
        }
    }
    let tarball = work_dir.join("rootfs.tar");
    let entries = rootfs_entries(binary, &libraries);
    let target = tarball.clone();
    tokio::task::spawn_blocking(move || write_rootfs_tarball(&target, &entries))
        .await
        .context("rootfs tarball writer panicked")?
        .with_context(|| format!("writing {}", tarball.display()))?;
    let result = import(docker, &tarball, tag).await;
    let _ = std::fs::remove_file(&tarball);
    result.with_context(|| format!("importing {} as image {tag}", tarball.display()))
}

/// Streams the archive to the daemon as a new image `tag`; waits until the
/// daemon has read it all and answered.
async fn import(docker: &Docker, tarball: &Path, tag: &str) -> Result<()> {
    let file = tokio::fs::File::open(tarball).await?;
    let options = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(tag.into()),
        changes: vec![ENTRYPOINT_CHANGE.into()],
        ..Default::default()
    };
    let body = body_try_stream(ReaderStream::new(file));
    docker
        .create_image(Some(options), Some(body), None)
        .try_for_each(|_progress| async { Ok(()) })
        .await?;
    Ok(())
}

/// Removes the image; one that is not there counts as removed.
pub(super) async fn remove(docker: &Docker, tag: &str) -> Result<()> {
    let removed = docker.remove_image(tag, None::<RemoveImageOptions>, None).await;
    ignore_not_found(removed.map(drop)).with_context(|| format!("removing image {tag}"))
}

/// The shared libraries (and loader) `ldd` resolves for `binary`; none for a static binary.
async fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let mut command = tokio::process::Command::new("ldd");
    command
        .arg(binary)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(DOCKER_TIMEOUT, command.output())
        .await
        .map_err(|_| {
            anyhow!(
                "`ldd {}` did not finish within {DOCKER_TIMEOUT:?}",
                binary.display()
            )
        })?
        .with_context(|| format!("running `ldd {}`", binary.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if is_static_ldd_answer(&stdout) || is_static_ldd_answer(&stderr) {
        return Ok(Vec::new());
    }
    if !output.status.success() {
        bail!(
            "`ldd {}` failed ({}): {}",
            binary.display(),
            output.status,
            stderr.trim()
        );
    }
    parse_ldd(&stdout)
}

fn is_static_ldd_answer(text: &str) -> bool {
    text.contains("not a dynamic executable") || text.contains("statically linked")
}

/// Absolute paths in `ldd` output: `name => /path (0x..)` and `/path (0x..)`
/// lines; the vDSO (no path) is skipped; `=> not found` is an error.
fn parse_ldd(output: &str) -> Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, resolved)) if resolved.trim().starts_with("not found") => {
                bail!("ldd: {} not found", name.trim())
            }
            Some((_, resolved)) => resolved.trim(),
            None => line,
        };
        let path = target.split(" (").next().unwrap_or_default().trim();
        if path.starts_with('/') && !libraries.iter().any(|l: &PathBuf| l == Path::new(path)) {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// `/kairos`, the libraries at their own paths, the directories above them, `/data` and `/tmp`.
fn rootfs_entries(binary: &Path, libraries: &[PathBuf]) -> Vec<RootfsEntry> {
    let mut dirs: BTreeSet<String> = ["data".to_string(), "tmp".to_string()].into_iter().collect();
    let mut files = vec![RootfsEntry::File {
        path: "kairos".into(),
        mode: ENTRY_MODE,
        source: binary.into(),
    }];
    for library in libraries {
        let inside = library.to_string_lossy().trim_start_matches('/').to_string();
        for ancestor in Path::new(&inside).ancestors().skip(1) {
            let ancestor = ancestor.to_string_lossy();
            if !ancestor.is_empty() {
                dirs.insert(ancestor.into_owned());
            }
        }
        files.push(RootfsEntry::File {
            path: inside,
            mode: ENTRY_MODE,
            source: library.clone(),
        });
    }
    // Parents sort before their children; `/tmp` has its own mode (also
    // when a library to preload lives under it).
    let mut entries: Vec<RootfsEntry> = dirs
        .into_iter()
        .map(|path| {
            let mode = if path == "tmp" { TMP_MODE } else { ENTRY_MODE };
            RootfsEntry::Dir { path, mode }
        })
        .collect();
    entries.extend(files);
    entries
}

fn write_rootfs_tarball(target: &Path, entries: &[RootfsEntry]) -> Result<()> {
    let file = File::create(target)?;
    let mut out = write_rootfs(io::BufWriter::new(file), entries, now_unix_seconds())?;
    out.flush()?;
    Ok(())
}

/// Writes `entries` as a ustar archive to `out`: regular files and
/// directories, root-owned, modified at `mtime`; returns `out`.
fn write_rootfs<W: Write>(out: W, entries: &[RootfsEntry], mtime: u64) -> Result<W> {
    let mut archive = tar::Builder::new(out);
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_username("root")?;
        header.set_groupname("root")?;
        header.set_mtime(mtime);
        match entry {
            RootfsEntry::Dir { path, mode } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                archive.append_data(&mut header, path, io::empty())?;
            }
            RootfsEntry::File { path, mode, source } => {
                let file = File::open(source).with_context(|| format!("opening {}", source.display()))?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(file.metadata()?.len());
                archive
                    .append_data(&mut header, path, file)
                    .with_context(|| format!("adding {} as /{path}", source.display()))?;
            }
        }
    }
    Ok(archive.into_inner()?)
}

fn now_unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn ldd_output_gives_resolved_paths_and_the_loader() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f55)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f54)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f55)\n";
        let libraries = parse_ldd(output).expect("parses");
        let expected: Vec<PathBuf> = [
            "/lib/x86_64-linux-gnu/libgcc_s.so.1",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(libraries, expected);
    }

    #[test]
    fn ldd_missing_library_is_an_error() {
        let error = parse_ldd("\tlibfoo.so.1 => not found\n").expect_err("missing library");
        assert!(error.to_string().contains("libfoo.so.1"), "{error}");
    }

    #[test]
    fn static_binaries_are_recognised() {
        assert!(is_static_ldd_answer("\tnot a dynamic executable\n"));
        assert!(is_static_ldd_answer("\tstatically linked\n"));
        assert!(!is_static_ldd_answer("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n"));
    }

    #[test]
    fn rootfs_has_data_tmp_and_parent_directories_first() {
        let libraries = [
            PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
            PathBuf::from("/lib64/ld.so"),
        ];
        let entries = rootfs_entries(Path::new("/bin/kairos"), &libraries);
        let paths: Vec<&str> = entries
            .iter()
            .map(|e| match e {
                RootfsEntry::Dir { path, .. } | RootfsEntry::File { path, .. } => path.as_str(),
            })
            .collect();
        assert_eq!(
            paths,
            [
                "data",
                "lib",
                "lib/x86_64-linux-gnu",
                "lib64",
                "tmp",
                "kairos",
                "lib/x86_64-linux-gnu/libc.so.6",
                "lib64/ld.so"
            ]
        );
    }

    #[test]
    fn a_library_under_tmp_leaves_one_sticky_tmp_before_its_children() {
        let libraries = [PathBuf::from("/tmp/round/preload/libdisk_faults.so")];
        let entries = rootfs_entries(Path::new("/bin/kairos"), &libraries);
        let dirs: Vec<(&str, u32)> = entries
            .iter()
            .filter_map(|e| match e {
                RootfsEntry::Dir { path, mode } => Some((path.as_str(), *mode)),
                RootfsEntry::File { .. } => None,
            })
            .collect();
        assert_eq!(
            dirs,
            [
                ("data", ENTRY_MODE),
                ("tmp", TMP_MODE),
                ("tmp/round", ENTRY_MODE),
                ("tmp/round/preload", ENTRY_MODE)
            ]
        );
    }

    /// The archive reads back with the paths, kinds, modes, owner and
    /// contents written, padded to 512-byte blocks.
    #[test]
    fn rootfs_archive_reads_back_root_owned_with_contents() {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = dir.path().join("file");
        std::fs::write(&source, b"hello").expect("write");
        let entries = [
            RootfsEntry::Dir {
                path: "data".into(),
                mode: ENTRY_MODE,
            },
            RootfsEntry::Dir {
                path: "tmp".into(),
                mode: TMP_MODE,
            },
            RootfsEntry::File {
                path: "lib/x86_64-linux-gnu/file".into(),
                mode: ENTRY_MODE,
                source,
            },
        ];
        let bytes = write_rootfs(Vec::new(), &entries, 1_700_000_000).expect("archive");
        assert_eq!(bytes.len() % 512, 0, "whole blocks");
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let header = entry.header().clone();
            assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
            assert_eq!(header.username().unwrap(), Some("root"));
            assert_eq!(header.mtime().unwrap(), 1_700_000_000);
            let mut contents = String::new();
            entry.read_to_string(&mut contents).expect("contents");
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            seen.push((
                path,
                header.entry_type().is_dir(),
                header.mode().unwrap(),
                contents,
            ));
        }
        let expected = [
            ("data", true, 0o755, ""),
            ("tmp", true, 0o1777, ""),
            ("lib/x86_64-linux-gnu/file", false, 0o755, "hello"),
        ];
        let expected: Vec<(String, bool, u32, String)> = expected
            .iter()
            .map(|(p, d, m, c)| (p.to_string(), *d, *m, c.to_string()))
            .collect();
        assert_eq!(seen, expected);
    }
}
