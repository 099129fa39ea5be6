//! Compiles `proto/kairos/v1/*.proto` into Rust (prost + tonic) and generates the
//! protobuf JSON mapping (pbjson) used by `kairos -o json`. Well-known types
//! come from `pbjson_types`, except `Timestamp` (`src/proto/timestamp.rs`).
//! protoc comes from `protoc-bin-vendored`, so a fresh machine needs nothing
//! installed.
//!
//! Also names the commit the binary is built from, `KAIROS_BUILD_COMMIT`
//! (`git rev-parse --short=12 HEAD`, or "unknown" without git or outside a
//! checkout), which `ServiceInfoService` reports.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("kairos_descriptor.bin");
    let protos = [
        "proto/kairos/v1/job.proto",
        "proto/kairos/v1/run.proto",
        "proto/kairos/v1/cluster.proto",
        "proto/kairos/v1/raft.proto",
        "proto/kairos/v1/acl.proto",
        "proto/kairos/v1/audit.proto",
        "proto/kairos/v1/worker.proto",
        "proto/kairos/v1/event.proto",
        "proto/kairos/v1/service.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        // pbjson-types prints timestamps as `…+00:00`; ours prints the
        // canonical `…Z` (see src/proto/timestamp.rs).
        .extern_path(".google.protobuf.Timestamp", "crate::proto::Timestamp")
        .compile_protos(&protos, &["proto"])?;

    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .build(&[".kairos.v1"])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    build_commit();
    Ok(())
}

/// The trimmed output of `git args`, if git ran, succeeded and said something.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// Sets `KAIROS_BUILD_COMMIT`, and reruns this script when HEAD moves: when
/// `HEAD` changes (a checkout), the branch it names does (a commit), or the
/// checkout's reflog of HEAD does (either, also for a packed branch). Only
/// files that exist are named: cargo would rerun the script on every build
/// for a missing one.
fn build_commit() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KAIROS_BUILD_COMMIT={commit}");
    let mut watched = vec![
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["rev-parse", "--git-path", "logs/HEAD"]),
    ];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
    }
    for path in watched.into_iter().flatten() {
        if Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
