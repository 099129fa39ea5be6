//! Compiles the worker protocol, `proto/kairos/v1/worker.proto` at the root
//! of the repository, into Rust (prost messages, a tonic client and server).
//! The server half is generated too so that tests, and anyone embedding a
//! fake cluster, can stand up a `WorkerService` of their own. protoc comes
//! from `protoc-bin-vendored`, so a fresh machine needs nothing installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let proto = "../../proto/kairos/v1/worker.proto";
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&[proto], &["../../proto"])?;
    println!("cargo:rerun-if-changed={proto}");
    Ok(())
}
