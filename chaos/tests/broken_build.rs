//! The checkers can fail: the harness run against a deliberately broken
//! build must exit 1 and name what it broke, while the same short run
//! against the real build exits 0. Without this, a checker that never fires
//! would look like a passing suite. `--break-build duplicate-fires`: every
//! fire runs twice (`unique_runs`); `--break-build no-pre-vote`: elections
//! without a pre-vote, so a flapping follower unseats the leader
//! (`no_needless_elections`); `--break-build stale-reads`: reads without
//! the read barrier (`linearizable_reads`); `--break-build
//! run-on-after-storage-errors`: a node whose fsync failed keeps running
//! (`storage_errors_stop`), and so does one whose disk filled up;
//! `--break-build trusts-wall-clock`: the timer
//! replays fires when the leader's clock steps back (`unique_runs`);
//! `--break-build syncs-in-raft-loop`: each log append waits for its
//! `fdatasync` inside Raft's loop, so a slow disk on the leader stalls its
//! heartbeats and costs an election (`no_needless_elections`); the
//! trusts-wall-clock build is also caught by a `clock_skew` of the leader,
//! set right at the heal (`unique_runs`);
//! `--break-build no-request-limit`: `--max-requests` is ignored, so a
//! flood queues instead of being refused (`overload_answered`);
//! `--break-build no-fdatasync`: the log is acknowledged without
//! `fdatasync`, so a power cut (`torn_write`) loses acknowledged writes and
//! the replicas diverge (`audit_complete`, `replica_digest`);
//! `--break-build no-log-mark`: a node whose disk lost the tail of its log
//! votes by what is left, so a leader without acknowledged writes is
//! elected (`acknowledged_writes`) after a `lost_tail`;
//! `--break-build stays-down-on-damaged-snapshots`: a node whose stored
//! snapshot is damaged refuses to start instead of taking the state from
//! its leader (`damaged_snapshot_recovered`);
//! `--break-build no-joint-finisher`: a leader leaves a joint membership
//! it inherited unfinished, so a re-add whose leader was killed inside the
//! joint step stays joint (`membership_restored`). Where a break
//! is met by chance (a race it opens, torn data that may not be read), the
//! broken round may take up to three seeds to be caught; the real build
//! gets one round, which must pass.

use std::process::Command;

use kairos_testkit::kairos_bin;

/// Runs one short round with `faults` (one fault at most: the first is
/// injected at once and the round's 8 s are over before the next);
/// returns the exit code and the report, with the history's faults added
/// as `faults` (kind, nodes, detail).
/// With `KAIROS_CHAOS_TEST_OUT=DIR` each round's directory (node logs,
/// history, report) is kept under DIR instead of being removed.
fn chaos_round(seed: u64, faults: &str, break_build: Option<&str>) -> (i32, serde_json::Value) {
    let out = match std::env::var_os("KAIROS_CHAOS_TEST_OUT") {
        Some(dir) => {
            std::fs::create_dir_all(&dir).unwrap();
            tempfile::Builder::new()
                .prefix(&format!("{faults}-{seed}-{}-", break_build.unwrap_or("real")))
                .disable_cleanup(true)
                .tempdir_in(dir)
                .unwrap()
        }
        None => tempfile::tempdir().unwrap(),
    };
    let mut command = Command::new(env!("CARGO_BIN_EXE_kairos-chaos"));
    command
        .args([
            "run",
            "--faults",
            faults,
            "--duration",
            "8s",
            "--seed",
            &seed.to_string(),
        ])
        .arg("--kairos-bin")
        .arg(kairos_bin())
        .arg("--out")
        .arg(out.path());
    if let Some(kind) = break_build {
        command.args(["--break-build", kind]);
    }
    let output = command.output().expect("kairos-chaos runs");
    let report = std::fs::read_to_string(out.path().join("report.json")).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let mut report: serde_json::Value = serde_json::from_str(&report).unwrap();
    if let Ok(history) = std::fs::read_to_string(out.path().join("history.json")) {
        let history: serde_json::Value = serde_json::from_str(&history).unwrap();
        report["faults"] = history["faults"].clone();
    }
    (output.status.code().unwrap_or(-1), report)
}

/// Runs the broken build's round with each of `seeds` in turn until one
/// exits 1 with a violation `caught` accepts; returns that round's
/// violations, or fails naming every round's. For breaks the harness meets
/// by chance (a race the break opens, lost data that may or may not be
/// read): one catch shows the checker can fail; the real build is judged
/// on one round, which must pass.
fn caught_within(
    seeds: &[u64],
    faults: &str,
    break_build: &str,
    caught: impl Fn(&serde_json::Value) -> bool,
) {
    let mut missed = Vec::new();
    for &seed in seeds {
        let (code, report) = chaos_round(seed, faults, Some(break_build));
        let violations = report["violations"].as_array().cloned().unwrap_or_default();
        if code == 1 && violations.iter().any(&caught) {
            return;
        }
        missed.push(format!("seed {seed}: exit {code}, violations {violations:?}"));
    }
    panic!("--break-build {break_build} under {faults} was not caught: {missed:#?}");
}

/// Whether a violation is of `invariant` with a message containing `text`.
fn violation_of(invariant: &'static str, text: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |v| v["invariant"] == invariant && v["message"].as_str().unwrap_or_default().contains(text)
}

#[test]
fn the_broken_build_is_caught_and_the_real_one_passes() {
    let (code, report) = chaos_round(7, "none", Some("duplicate-fires"));
    assert_eq!(code, 1, "the broken build must fail the run: {report}");
    let violations = report["violations"].as_array().unwrap();
    assert!(
        violations.iter().any(|v| v["invariant"] == "unique_runs"
            && v["message"].as_str().unwrap().contains("for one fire")
            && v["job"].as_str().unwrap().starts_with("steady-")),
        "no duplicate-run violation naming a job: {violations:?}"
    );

    let (code, report) = chaos_round(7, "none", None);
    assert_eq!(code, 0, "the real build must pass: {}", report["violations"]);
    assert!(report["runs_checked"].as_u64().unwrap() > 0, "{report}");
    // Every checker ran, the audit log's among them (the cluster has auth on).
    let invariants = report["invariants"].as_array().unwrap();
    assert!(invariants.iter().any(|i| i == "audit_complete"), "{invariants:?}");
}

#[test]
fn a_build_without_pre_vote_is_caught_deposing_the_leader_and_the_real_one_passes() {
    // The returning follower stands only if its election timer fires
    // before it reads the leader's queued heartbeat: a race.
    caught_within(
        &[7, 8, 9],
        "flapping_follower",
        "no-pre-vote",
        violation_of("no_needless_elections", "flapping_follower of node(s)"),
    );

    let (code, report) = chaos_round(7, "flapping_follower", None);
    assert_eq!(code, 0, "the real build must pass: {}", report["violations"]);
    assert!(
        report["faults_by_kind"]["flapping_follower"].as_u64().unwrap() >= 1,
        "{report}"
    );
}

#[test]
fn a_build_with_stale_reads_is_caught_and_the_real_one_passes() {
    // A minority cut off while the majority updates the hot jobs: without
    // the read barrier the minority answers from its old state.
    let (code, report) = chaos_round(7, "partition_minority", Some("stale-reads"));
    assert_eq!(code, 1, "the build with stale reads must fail the run: {report}");
    let violations = report["violations"].as_array().unwrap();
    assert!(
        violations.iter().any(|v| v["invariant"] == "linearizable_reads"
            && v["message"].as_str().unwrap().starts_with("stale read: ")
            && v["job"].as_str().unwrap().starts_with("hot-")),
        "no stale-read violation: {violations:?}"
    );

    let (code, report) = chaos_round(7, "partition_minority", None);
    assert_eq!(code, 0, "the real build must pass: {}", report["violations"]);
    assert!(report["ops"]["read"]["ok"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn a_build_that_runs_on_after_a_failed_fsync_is_caught_and_the_real_one_passes() {
    let (code, report) = chaos_round(7, "fsync_error", Some("run-on-after-storage-errors"));
    assert_eq!(code, 1, "the build that runs on must fail the run: {report}");
    let violations = report["violations"].as_array().unwrap();
    assert!(
        violations.iter().any(|v| v["invariant"] == "storage_errors_stop"
            && v["message"].as_str().unwrap().contains("still running")),
        "no storage-error violation: {violations:?}"
    );

    let (code, report) = chaos_round(7, "fsync_error", None);
    assert_eq!(code, 0, "the real build must pass: {}", report["violations"]);
    assert!(
        report["faults_by_kind"]["fsync_error"].as_u64().unwrap() >= 1,
        "{report}"
    );
}

#[test]
fn a_timer_that_trusts_its_wall_clock_is_caught_replaying_fires_and_the_real_one_passes() {
    // Seed 7 moves the leader's clock: forward, then back past the real time.
    trusting_the_wall_clock_is_caught_under("clock_jump", 7);
}

#[test]
fn a_timer_that_trusts_its_wall_clock_is_caught_when_a_skewed_leader_is_set_right_and_the_real_one_passes() {
    // Seed 7 runs the leader's clock ahead for a few seconds, then sets it
    // right in one step: back, past the fires it made early.
    trusting_the_wall_clock_is_caught_under("clock_skew", 7);
}

/// The `trusts-wall-clock` build replays fires under the clock fault
/// `kind` of `seed` (a step back of the leader's clock), and the real
/// build passes the same round.
fn trusting_the_wall_clock_is_caught_under(kind: &str, seed: u64) {
    let (code, report) = chaos_round(seed, kind, Some("trusts-wall-clock"));
    assert_eq!(
        code, 1,
        "the build that trusts its clock must fail the run: {report}"
    );
    let violations = report["violations"].as_array().unwrap();
    assert!(
        violations
            .iter()
            .any(|v| v["invariant"] == "unique_runs"
                && v["message"].as_str().unwrap().contains("for one fire")),
        "no duplicate run after the leader's clock stepped back under {kind}: {violations:?}"
    );

    let (code, report) = chaos_round(seed, kind, None);
    assert_eq!(code, 0, "the real build must pass: {}", report["violations"]);
    assert!(report["faults_by_kind"][kind].as_u64().unwrap() >= 1, "{report}");
}

#[test]
fn a_build_that_syncs_inside_its_raft_loop_loses_its_leader_to_a_slow_disk_and_the_real_one_does_not() {
    // The leader's loop waits on each slow fdatasync; whether a follower's
    // timer runs out meanwhile depends on how the syncs line up: a race.
    caught_within(
        &[8, 9, 10],
        "slow_disk",
        "syncs-in-raft-loop",
        violation_of("no_needless_elections", "slow_disk of node(s)"),
    );

    let (code, report) = chaos_round(8, "slow_disk", None);
    assert_eq!(code, 0, "the real build must pass: {}", report["violations"]);
    assert!(
        report["faults_by_kind"]["slow_disk"].as_u64().unwrap() >= 1,
        "{report}"
    );
}

#[test]
fn a_build_that_runs_on_when_its_disk_is_full_is_caught_and_the_real_one_passes() {
    let (code, report) = chaos_round(7, "disk_full", Some("run-on-after-storage-errors"));
    if report["faults_by_kind"]["disk_full"].is_null() {
        // The harness could not mount the nodes' small filesystems (no
        // right to mount here); it said so in its log.
        eprintln!("disk_full not injected on this machine (mounting a tmpfs is refused); nothing to judge");
        return;
    }
    assert_eq!(code, 1, "the build that runs on must fail the run: {report}");
    let violations = report["violations"].as_array().unwrap();
    assert!(
        violations.iter().any(|v| v["invariant"] == "storage_errors_stop"
            && v["message"].as_str().unwrap().starts_with("disk_full of node")
            && v["message"].as_str().unwrap().contains("still running")),
        "no storage-error violation: {violations:?}"
    );

    let (code, report) = chaos_round(7, "disk_full", None);
    assert_eq!(code, 0, "the real build must pass: {}", report["violations"]);
    assert!(
        report["faults_by_kind"]["disk_full"].as_u64().unwrap() >= 1,
        "{report}"
    );
}

#[test]
fn a_build_without_a_request_bound_is_caught_queueing_a_flood_and_the_real_one_passes() {
    let (code, report) = chaos_round(7, "overload", Some("no-request-limit"));
    assert_eq!(code, 1, "the build without the bound must fail the run: {report}");
    let violations = report["violations"].as_array().unwrap();
    assert!(
        violations.iter().any(|v| v["invariant"] == "overload_answered"
            && v["message"].as_str().unwrap().contains("--max-requests")),
        "no overload violation: {violations:?}"
    );

    let (code, report) = chaos_round(7, "overload", None);
    assert_eq!(code, 0, "the real build must pass: {}", report["violations"]);
    assert!(
        report["faults_by_kind"]["overload"].as_u64().unwrap() >= 1,
        "{report}"
    );
}

#[test]
fn a_build_that_acknowledges_without_fdatasync_loses_writes_to_a_power_cut_and_the_real_one_does_not() {
    // Whether a cut lands while acknowledged writes are unsynced, and
    // whether the torn ones are read again, is chance.
    caught_within(&[1, 2, 3], "torn_write", "no-fdatasync", |v| {
        [
            "audit_complete",
            "replica_digest",
            "acknowledged_writes",
            "settled_runs",
        ]
        .iter()
        .any(|name| v["invariant"] == *name)
    });

    let (code, report) = chaos_round(1, "torn_write", None);
    assert_eq!(code, 0, "the real build must pass: {}", report["violations"]);
    assert!(
        report["faults_by_kind"]["torn_write"].as_u64().unwrap() >= 1,
        "{report}"
    );
}

#[test]
fn a_build_that_ignores_the_log_mark_elects_a_leader_without_acknowledged_writes_and_the_real_one_does_not() {
    // Writes are acknowledged while one follower is cut off (the workload
    // writes all along); their loss is read by the final check.
    caught_within(&[1, 2, 3], "lost_tail", "no-log-mark", |v| {
        ["acknowledged_writes", "audit_complete", "settled_runs"]
            .iter()
            .any(|name| v["invariant"] == *name)
    });

    let (code, report) = chaos_round(1, "lost_tail", None);
    assert_eq!(code, 0, "the real build must pass: {}", report["violations"]);
    assert!(
        report["faults_by_kind"]["lost_tail"].as_u64().unwrap() >= 1,
        "{report}"
    );
}

#[test]
fn a_build_that_stays_down_on_a_damaged_snapshot_is_caught_and_the_real_one_recovers() {
    let (code, report) = chaos_round(1, "damaged_snapshot", Some("stays-down-on-damaged-snapshots"));
    assert_eq!(code, 1, "the broken build must fail the run: {report}");
    let violations = report["violations"].as_array().unwrap();
    assert!(
        violations
            .iter()
            .any(violation_of("damaged_snapshot_recovered", "exited")),
        "no violation naming the node that stayed down: {violations:?}"
    );

    let (code, report) = chaos_round(1, "damaged_snapshot", None);
    assert_eq!(code, 0, "the real build must pass: {}", report["violations"]);
    let detail = report["faults"][0]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("back at the leader's commit index"),
        "the fault damaged a snapshot and the node came back: {detail:?}"
    );
}

#[test]
fn a_build_that_leaves_an_inherited_joint_membership_is_caught_and_the_real_one_finishes_it() {
    // Seed 1's first fault kills the leader while it holds the joint
    // configuration of a re-add; seeds 2 and 3 kill it at a random moment
    // of the add, which sometimes lands in the joint step.
    caught_within(
        &[1, 2, 3],
        "membership_change",
        "no-joint-finisher",
        violation_of("membership_restored", "holds the joint configuration"),
    );

    let (code, report) = chaos_round(1, "membership_change", None);
    assert_eq!(code, 0, "the real build must pass: {}", report["violations"]);
    let detail = report["faults"][0]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("killed holding the joint configuration") && detail.contains("added node"),
        "the leader was killed inside the joint step and the node was added back: {detail:?}"
    );
}
