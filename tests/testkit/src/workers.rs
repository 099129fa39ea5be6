//! External workers for black-box tests: `examples/python-worker/worker.py`
//! as a child process whose stdout JSON lines are awaited as events.
//!
//! [`PythonWorker::spawn`] starts `python3 worker.py` against chosen nodes of
//! a [`TestCluster`] with a token file; a thread reads its stdout (one JSON
//! object per line: `registered`, `task`, `cancel`, `completed`) into a
//! channel, and [`PythonWorker::wait_event`] awaits one with a deadline. Its
//! stderr (the worker's log) goes to a file in the cluster's directory, kept
//! with the nodes' logs when a test fails. The process is SIGKILLed by
//! [`PythonWorker::kill`] and on drop.
//!
//! [`complete_token`] runs `worker.py complete-token` once and returns its
//! `replay` line.
//!
//! Needs `python3` with grpcio and grpcio-tools:
//! `pip install -r examples/python-worker/requirements.txt`. Without them the
//! first spawn fails with a message saying so.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::TestCluster;

/// Distinguishes the files of the workers of one test process.
static NEXT: AtomicU64 = AtomicU64::new(1);

/// `examples/python-worker/worker.py` of this repository.
pub fn python_worker_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/python-worker/worker.py")
}

/// `examples/python-worker/schema.json` of this repository.
pub fn python_worker_schema() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/python-worker/schema.json")
}

/// Panics with the install command unless `python3` imports grpc and grpc_tools.
fn require_python_grpc() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        match Command::new("python3")
            .args(["-c", "import grpc, grpc_tools"])
            .output()
        {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
            Err(e) => Err(format!("python3: {e}")),
        }
    });
    if let Err(why) = checked {
        panic!(
            "the Python worker needs grpcio: run `pip install -r examples/python-worker/requirements.txt` ({why})"
        );
    }
}

/// `--endpoint` of nodes `ids` of `cluster`, in that order.
fn endpoints(cluster: &TestCluster, ids: &[u64]) -> String {
    ids.iter()
        .map(|id| cluster.node(*id).grpc.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Writes `secret` to a new file in the cluster's directory.
fn token_file(cluster: &TestCluster, secret: &str) -> PathBuf {
    let path = cluster
        .dir()
        .join(format!("worker-token-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&path, secret).expect("write the token file");
    path
}

/// A running `worker.py`.
pub struct PythonWorker {
    child: Child,
    /// Lines from the stdout thread, parsed; closed when stdout closes.
    lines: UnboundedReceiver<Value>,
    /// Every event received so far, in order.
    seen: Vec<Value>,
    /// The worker's stderr.
    log: PathBuf,
}

impl PythonWorker {
    /// Starts `worker.py` with `--endpoint` of nodes `nodes` (in that order),
    /// the secret `token` in a token file, and `args` (e.g. `--type T`).
    pub fn spawn(cluster: &TestCluster, nodes: &[u64], token: &str, args: &[&str]) -> PythonWorker {
        require_python_grpc();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let log = cluster.dir().join(format!("python-worker-{n}.log"));
        let stderr = std::fs::File::create(&log).expect("create the worker's log");
        let mut child = Command::new("python3")
            .arg("-u")
            .arg(python_worker_script())
            .arg(format!("--endpoint={}", endpoints(cluster, nodes)))
            .arg("--token-file")
            .arg(token_file(cluster, token))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start python3 worker.py");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(value) => {
                        if tx.send(value).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("python worker: not a JSON line: {line}"),
                }
            }
        });
        PythonWorker {
            child,
            lines,
            seen: Vec::new(),
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every event received so far, in order.
    pub fn events(&mut self) -> &[Value] {
        while let Ok(value) = self.lines.try_recv() {
            self.seen.push(value);
        }
        &self.seen
    }

    /// The first event (received so far or later) whose `event` is `kind`
    /// and that `pred` accepts; panics, showing the events and the worker's
    /// log, when none comes within `timeout` or the worker's stdout closes.
    pub async fn wait_event(
        &mut self,
        kind: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        let matches = |v: &Value| v["event"] == kind && pred(v);
        self.events();
        if let Some(found) = self.seen.iter().find(|v| matches(v)) {
            return found.clone();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(value)) => {
                    self.seen.push(value.clone());
                    if matches(&value) {
                        return value;
                    }
                }
                Ok(None) => panic!(
                    "python worker {} exited before a {kind:?} event; events {:?}; log:\n{}",
                    self.pid(),
                    self.seen,
                    self.log()
                ),
                Err(_) => panic!(
                    "no {kind:?} event from python worker {} within {timeout:?}; events {:?}; log:\n{}",
                    self.pid(),
                    self.seen,
                    self.log()
                ),
            }
        }
    }

    /// The first `registered` event (awaited up to `timeout`).
    pub async fn registered(&mut self, timeout: Duration) -> Value {
        self.wait_event("registered", |_| true, timeout).await
    }

    /// The worker's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILLs the worker and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PythonWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `worker.py complete-token HEX` against nodes `nodes` with the secret
/// `token` and returns its `replay` line (`{"event":"replay","result":...}`).
pub async fn complete_token(cluster: &TestCluster, nodes: &[u64], token: &str, hex: &str) -> Value {
    require_python_grpc();
    let out = tokio::process::Command::new("python3")
        .arg(python_worker_script())
        .arg(format!("--endpoint={}", endpoints(cluster, nodes)))
        .arg("--token-file")
        .arg(token_file(cluster, token))
        .arg("complete-token")
        .arg(hex)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run python3 worker.py complete-token");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "worker.py complete-token exited with {}: {stdout}\n{stderr}",
        out.status
    );
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "replay")
        .unwrap_or_else(|| panic!("no replay line from worker.py complete-token: {stdout}\n{stderr}"))
}
