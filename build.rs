//! Compiles `proto/kairos/v1/*.proto` into Rust (prost + tonic) and generates the
//! protobuf JSON mapping (pbjson) used by `kairos -o json`. Well-known types
//! come from `pbjson_types`, except `Timestamp` (`src/proto/timestamp.rs`).
//! protoc comes from `protoc-bin-vendored`, so a fresh machine needs nothing
//! installed.

use std::path::PathBuf;

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
    Ok(())
}
