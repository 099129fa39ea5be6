//! Proof that a Raft log append is acknowledged only after `fdatasync` reached
//! the disk, not merely after sled's `sync_file_range`.
//!
//! `kairos debug log-append` appends entries through the real log store one at
//! a time and prints `acked N` (one `write(2)`) after each acknowledgement. We
//! run it under `strace -f -y` and check that between consecutive
//! acknowledgements an `fdatasync` (or `fsync`) of sled's data file completed.
//! Needs `strace` (installed by `.ci/run`).

use std::collections::HashMap;
use std::process::Command;

use kairos_testkit::kairos_bin;

/// Events of interest in an strace log, in completion order.
#[derive(Debug, PartialEq)]
enum Event {
    /// A completed fsync/fdatasync on sled's data file.
    DataFileSynced,
    /// sled's own range sync (not durable against power loss).
    RangeSynced,
    /// The program acknowledged entry N.
    Acked(u64),
}

fn parse(trace: &str) -> Vec<Event> {
    let mut events = Vec::new();
    // pid -> whether its unfinished fsync targets the data file
    let mut pending: HashMap<String, bool> = HashMap::new();
    for line in trace.lines() {
        let (pid, rest) = line.split_once(' ').unwrap_or(("", line));
        let rest = rest.trim_start();
        let is_sync_call = rest.starts_with("fdatasync(") || rest.starts_with("fsync(");
        let on_data_file = rest.contains("/sled/db>");
        if is_sync_call && rest.contains("<unfinished") {
            pending.insert(pid.to_string(), on_data_file);
        } else if is_sync_call && rest.ends_with("= 0") && on_data_file {
            events.push(Event::DataFileSynced);
        } else if rest.starts_with("<... fdatasync resumed>") || rest.starts_with("<... fsync resumed>") {
            if pending.remove(pid) == Some(true) && rest.ends_with("= 0") {
                events.push(Event::DataFileSynced);
            }
        } else if rest.starts_with("sync_file_range(") {
            events.push(Event::RangeSynced);
        } else if rest.starts_with("write(1") {
            if let Some(n) = rest
                .split("\"acked ")
                .nth(1)
                .and_then(|s| s.split('\\').next())
                .and_then(|n| n.parse().ok())
            {
                events.push(Event::Acked(n));
            }
        }
    }
    events
}

#[test]
fn every_acknowledged_append_follows_an_fdatasync_of_the_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let trace_path = dir.path().join("trace");
    let output = Command::new("strace")
        .args([
            "-f",
            "-y",
            "-e",
            "trace=fdatasync,fsync,sync_file_range,write",
            "-o",
        ])
        .arg(&trace_path)
        .arg(kairos_bin())
        .args(["debug", "log-append", "--entries", "5", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .expect("strace must be installed (apt-get install strace); .ci/run installs it");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events = parse(&std::fs::read_to_string(&trace_path).unwrap());

    let mut synced_since_last_ack = false;
    let mut acked = Vec::new();
    for event in &events {
        match event {
            Event::DataFileSynced => synced_since_last_ack = true,
            Event::RangeSynced => {}
            Event::Acked(n) => {
                assert!(
                    synced_since_last_ack,
                    "entry {n} was acknowledged without an fdatasync first: {events:?}"
                );
                synced_since_last_ack = false;
                acked.push(*n);
            }
        }
    }
    assert_eq!(acked, vec![1, 2, 3, 4, 5]);
    // sled's flush on its own only range-syncs; that is why the barrier exists.
    assert!(
        events.contains(&Event::RangeSynced),
        "sled flushes with sync_file_range"
    );
}

#[test]
fn the_parser_notices_an_ack_without_a_sync() {
    let trace = "1 sync_file_range(9</x/sled/db>, 0, 4, SYNC_FILE_RANGE_WRITE) = 0\n\
                 1 write(1</dev/null>, \"acked 1\\n\", 8) = 8\n\
                 2 fdatasync(11</x/sled/db> <unfinished ...>\n\
                 2 <... fdatasync resumed>) = 0\n\
                 1 write(1</dev/null>, \"acked 2\\n\", 8) = 8\n";
    assert_eq!(
        parse(trace),
        vec![
            Event::RangeSynced,
            Event::Acked(1),
            Event::DataFileSynced,
            Event::Acked(2)
        ]
    );
}
