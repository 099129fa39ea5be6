//! The checkers can fail: the harness run against the deliberately broken
//! build (`--break-build`, every fire runs twice) must exit 1 and name the
//! duplicate runs, while the same short run against the real build exits 0.
//! Without this, a checker that never fires would look like a passing suite.

use std::process::Command;

use kairos_testkit::kairos_bin;

/// Runs one short fault-free round; returns the exit code and the report.
fn chaos_round(seed: u64, break_build: bool) -> (i32, serde_json::Value) {
    let out = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_kairos-chaos"));
    command
        .args([
            "run",
            "--faults",
            "none",
            "--duration",
            "8s",
            "--seed",
            &seed.to_string(),
        ])
        .arg("--kairos-bin")
        .arg(kairos_bin())
        .arg("--out")
        .arg(out.path());
    if break_build {
        command.arg("--break-build");
    }
    let output = command.output().expect("kairos-chaos runs");
    let report = std::fs::read_to_string(out.path().join("report.json")).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (
        output.status.code().unwrap_or(-1),
        serde_json::from_str(&report).unwrap(),
    )
}

#[test]
fn the_broken_build_is_caught_and_the_real_one_passes() {
    let (code, report) = chaos_round(7, true);
    assert_eq!(code, 1, "the broken build must fail the run: {report}");
    let violations = report["violations"].as_array().unwrap();
    assert!(
        violations.iter().any(|v| v["invariant"] == "unique_runs"
            && v["message"].as_str().unwrap().contains("for one fire")
            && v["job"].as_str().unwrap().starts_with("steady-")),
        "no duplicate-run violation naming a job: {violations:?}"
    );

    let (code, report) = chaos_round(7, false);
    assert_eq!(code, 0, "the real build must pass: {}", report["violations"]);
    assert!(report["runs_checked"].as_u64().unwrap() > 0, "{report}");
    // Every checker ran, the audit log's among them (the cluster has auth on).
    let invariants = report["invariants"].as_array().unwrap();
    assert!(invariants.iter().any(|i| i == "audit_complete"), "{invariants:?}");
}
