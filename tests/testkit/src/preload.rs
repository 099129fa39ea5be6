//! The fault libraries for `LD_PRELOAD`, built with the system C compiler
//! (`cc`) from their sources beside the test kit:
//!
//! - the disk-fault library (`tests/testkit/disk_faults.c`): a process's
//!   `fdatasync`/`fsync` fail with EIO while the file named by
//!   `KAIROS_TEST_FAIL_SYNC_IF` exists, and sleep first for the
//!   milliseconds written in the file named by `KAIROS_TEST_SLOW_SYNC_IF`
//!   while that one exists; used by `tests/disk_faults.rs` and the chaos
//!   harness's disk faults;
//! - the clock-fault library (`tests/testkit/clock_faults.c`): a process's
//!   wall clock reads the real time plus the milliseconds written in the
//!   file named by `KAIROS_TEST_CLOCK_OFFSET_FILE`, its monotonic clocks
//!   the real time; used by the chaos harness's clock faults.

use std::path::{Path, PathBuf};

/// The disk-fault library's C source.
pub const DISK_FAULTS_SOURCE: &str = include_str!("../disk_faults.c");

/// The clock-fault library's C source.
pub const CLOCK_FAULTS_SOURCE: &str = include_str!("../clock_faults.c");

/// Builds the disk-fault library into `dir`; returns its path, or why it
/// could not be built (no C compiler, a compile error).
pub fn build_disk_fault_library(dir: &Path) -> Result<PathBuf, String> {
    build(dir, "disk_faults", DISK_FAULTS_SOURCE)
}

/// Builds the clock-fault library into `dir`; returns its path, or why it
/// could not be built.
pub fn build_clock_fault_library(dir: &Path) -> Result<PathBuf, String> {
    build(dir, "clock_faults", CLOCK_FAULTS_SOURCE)
}

/// Compiles `source` into `dir/lib<name>.so`.
fn build(dir: &Path, name: &str, source: &str) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let source_file = dir.join(format!("{name}.c"));
    let library = dir.join(format!("lib{name}.so"));
    std::fs::write(&source_file, source).map_err(|e| format!("writing {}: {e}", source_file.display()))?;
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source_file)
        .arg("-ldl")
        .output()
        .map_err(|e| format!("running cc (a C compiler builds the {name} library): {e}"))?;
    if !built.status.success() {
        return Err(format!(
            "cc failed to build the {name} library: {}",
            String::from_utf8_lossy(&built.stderr)
        ));
    }
    Ok(library)
}
