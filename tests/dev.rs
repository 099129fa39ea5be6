//! `kairos dev` as a user runs it, a black box: a usable cluster that stops
//! on SIGTERM with every node; the tour names every node's pid and its
//! gRPC, worker-network and HTTP addresses; a node killed after the binary
//! was replaced (as `cargo build` does) comes back on the binary `dev`
//! started with; a node that cannot be restarted is given up with a message.
//!
//! Every wait is for an output line, a port, or `/readyz`, with a deadline.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kairos::launcher::ChildProcess;
use kairos_testkit::{free_port, http_get, kairos_bin};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long `kairos dev` may take to print each awaited line.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `kairos dev` may take to exit after SIGTERM (its nodes get 10 s each).
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// A base port B such that B+1..=B+3, B+101..=B+103 and B+201..=B+203 are free now.
fn free_dev_base() -> u16 {
    for _ in 0..50 {
        let base = free_port().saturating_sub(400).max(1024);
        let ports: Vec<u16> = [1, 2, 3, 101, 102, 103, 201, 202, 203, 301, 302, 303]
            .iter()
            .map(|o| base + o)
            .collect();
        let held: Vec<_> = ports
            .iter()
            .filter_map(|p| TcpListener::bind(("127.0.0.1", *p)).ok())
            .collect();
        if held.len() == ports.len() {
            return base;
        }
    }
    panic!("no free block of dev ports");
}

/// A temporary directory on the file system of the target directory, so
/// that `kairos dev` links its binary instead of copying it.
fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// A running `kairos dev` and its output (stdout and stderr), line by line.
struct Dev {
    /// The `kairos dev` process (SIGTERMed, then killed, if the test fails).
    process: ChildProcess,
    /// Output lines as they come.
    lines: mpsc::Receiver<String>,
    /// Every line read so far, for failure messages.
    seen: Vec<String>,
}

impl Dev {
    /// Starts `<binary> dev --base-port <base> --data-dir <data_dir>`.
    fn start(binary: &Path, base: u16, data_dir: &Path) -> Dev {
        let (tx, lines) = mpsc::channel();
        let mut command = Command::new(binary);
        command
            .args(["dev", "--base-port", &base.to_string(), "--data-dir"])
            .arg(data_dir);
        for stream in 0..2 {
            let (reader, writer) = std::io::pipe().unwrap();
            match stream {
                0 => command.stdout(writer),
                _ => command.stderr(writer),
            };
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(reader).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let process = ChildProcess::spawn(&mut command).unwrap();
        // Our copies of the pipes' write ends close here: the readers end when dev does.
        drop(command);
        Dev {
            process,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line (after those already read) for which `wanted` is true.
    fn expect(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "kairos dev did not print {what} in {LINE_TIMEOUT:?}; it printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// SIGTERM, then the exit status and every line printed until the exit.
    fn stop(&mut self) -> (std::process::ExitStatus, Vec<String>) {
        self.process.signal(Signal::SIGTERM).unwrap();
        let status = self
            .process
            .wait_timeout(EXIT_TIMEOUT)
            .unwrap_or_else(|| panic!("kairos dev did not exit within {EXIT_TIMEOUT:?} of SIGTERM"));
        let rest: Vec<String> = self.lines.iter().collect();
        self.seen.extend(rest.iter().cloned());
        (status, rest)
    }
}

impl Drop for Dev {
    /// Lets a failing test's `kairos dev` stop its nodes before it is killed.
    fn drop(&mut self) {
        self.process.terminate(EXIT_TIMEOUT);
    }
}

/// One node of the tour: `  node N (pid P): gRPC A  peer E  cluster C  http://H/metrics  log L`.
#[derive(Debug)]
struct TourNode {
    id: u64,
    pid: i32,
    grpc: String,
    peer: String,
    cluster: String,
    http: String,
}

fn tour_node(line: &str) -> Option<TourNode> {
    let rest = line.strip_prefix("  node ")?;
    let (id, rest) = rest.split_once(" (pid ")?;
    let (pid, rest) = rest.split_once("): gRPC ")?;
    let (grpc, rest) = rest.split_once("  peer ")?;
    let (peer, rest) = rest.split_once("  cluster ")?;
    let (cluster, rest) = rest.split_once("  http://")?;
    let (http, _) = rest.split_once("/metrics  log ")?;
    Some(TourNode {
        id: id.parse().ok()?,
        pid: pid.parse().ok()?,
        grpc: grpc.into(),
        peer: peer.into(),
        cluster: cluster.into(),
        http: http.into(),
    })
}

/// Reads the "ready" line and the tour's node lines that follow it.
fn read_tour(dev: &mut Dev) -> Vec<TourNode> {
    dev.expect("that the cluster is ready", |l| {
        l.contains("Kairos dev cluster is ready")
    });
    (1..=3)
        .map(|id| {
            let line = dev.expect(&format!("node {id}'s tour line"), |l| l.starts_with("  node "));
            let node = tour_node(&line).unwrap_or_else(|| panic!("not a tour line: {line:?}"));
            assert_eq!(node.id, id, "{line}");
            node
        })
        .collect()
}

/// Whether no process has the pid any more (exited and reaped).
fn gone(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH)
}

/// Awaits `/readyz` 200 at `http`, for at most `LINE_TIMEOUT`.
async fn await_ready(http: &str) {
    let deadline = Instant::now() + LINE_TIMEOUT;
    while !matches!(http_get(http, "/readyz").await, Ok((200, _))) {
        assert!(Instant::now() < deadline, "{http} not ready in {LINE_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kairos_dev_starts_a_usable_cluster_and_stops_it_on_sigterm() {
    let dir = scratch_dir();
    let base = free_dev_base();
    let mut dev = Dev::start(&kairos_bin(), base, dir.path());
    let tour = read_tour(&mut dev);

    // A random cookie, kept 0600 in the data directory, never on a command line.
    let cookie_file = dir.path().join("cluster-cookie");
    let mode = std::fs::metadata(&cookie_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", cookie_file.display());
    let cookie = std::fs::read_to_string(&cookie_file).unwrap();
    assert!(cookie.trim().len() >= 32, "{cookie:?}");
    for node in &tour {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", node.pid)).unwrap();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(cookie.trim()),
            "node {}'s command line holds the cookie",
            node.id
        );
    }
    // dev bootstrapped the ACL and left the root token, readable by its owner only.
    let token_file = dir.path().join("root.token");
    let mode = std::fs::metadata(&token_file)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; dev printed:\n{}",
                token_file.display(),
                dev.seen.join("\n")
            )
        })
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}", token_file.display());
    assert!(
        dev.seen
            .iter()
            .any(|l| l.starts_with("Bootstrapped the ACL: the root token is in ")),
        "{:?}",
        dev.seen
    );

    let endpoints: Vec<String> = (1..=3).map(|i| format!("127.0.0.1:{}", base + i)).collect();
    let create = |token_file: Option<&Path>| {
        let mut command = Command::new(kairos_bin());
        command
            .args([
                "job",
                "create",
                "dev-job",
                "--type",
                "noop",
                "--schedule",
                "@daily",
            ])
            .env("KAIROS_ENDPOINTS", endpoints.join(","))
            .env_remove("KAIROS_TOKEN")
            .env_remove("KAIROS_TOKEN_FILE");
        if let Some(file) = token_file {
            command.arg("--token-file").arg(file);
        }
        command.output().unwrap()
    };
    // Without a credential the cluster refuses; with dev's root token it serves.
    let refused = create(None);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).starts_with("error: Unauthenticated: "),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let created = create(Some(&token_file));
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );

    // The commands the tour suggests work as printed (endpoints and token file in the environment).
    let suggested = dev.expect("the tour's `kairos job list`", |l| {
        l.ends_with(" kairos job list")
    });
    let suggested = suggested.trim_start();
    let mut listed = Command::new(kairos_bin());
    listed.env_remove("KAIROS_TOKEN").env_remove("KAIROS_TOKEN_FILE");
    for assignment in suggested.trim_end_matches(" kairos job list").split(' ') {
        let (name, value) = assignment
            .split_once('=')
            .unwrap_or_else(|| panic!("not an assignment in {suggested:?}"));
        listed.env(name, value);
    }
    let listed = listed.args(["job", "list", "-o", "json"]).output().unwrap();
    assert!(
        listed.status.success(),
        "{suggested}: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("dev-job"),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );

    let (status, rest) = dev.stop();
    assert!(status.success(), "kairos dev exited with {status}");
    assert!(rest.iter().any(|l| l.contains("All nodes stopped")), "{rest:?}");
    for endpoint in &endpoints {
        TcpListener::bind(endpoint.as_str())
            .unwrap_or_else(|e| panic!("{endpoint} still in use after dev stopped: {e}"));
    }
    for node in &tour {
        assert!(
            gone(node.pid),
            "node {} (pid {}) outlived kairos dev",
            node.id,
            node.pid
        );
    }
}

#[test]
fn the_tour_names_every_port_of_every_node() {
    let line = "  node 2 (pid 4242): gRPC 127.0.0.1:7102  peer 127.0.0.1:7402  cluster 127.0.0.1:7302  http://127.0.0.1:7202/metrics  log kairos-data/node-2/agent.log";
    let node = tour_node(line).unwrap();
    assert_eq!(
        (
            node.id,
            node.pid,
            node.grpc.as_str(),
            node.peer.as_str(),
            node.cluster.as_str(),
            node.http.as_str()
        ),
        (
            2,
            4242,
            "127.0.0.1:7102",
            "127.0.0.1:7402",
            "127.0.0.1:7302",
            "127.0.0.1:7202"
        )
    );
}

/// Puts a link to (or a copy of) the binary under test at `path`.
fn install_binary(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    if std::fs::hard_link(kairos_bin(), path).is_err() {
        std::fs::copy(kairos_bin(), path).unwrap();
    }
}

/// Replaces the file at `path` by a new one, as `cargo build` does: this
/// one is a script that fails, so a node started from `path` never runs.
fn replace_binary(path: &Path) {
    std::fs::remove_file(path).unwrap();
    std::fs::write(path, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kairos_dev_restarts_a_node_after_a_rebuild_and_gives_up_on_one_it_cannot_start() {
    let dir = scratch_dir();
    let binary: PathBuf = dir.path().join("bin").join("kairos");
    install_binary(&binary);
    let data_dir = dir.path().join("data");
    let base = free_dev_base();
    let mut dev = Dev::start(&binary, base, &data_dir);
    let tour = read_tour(&mut dev);
    for node in &tour {
        let port = |offset: u64| format!("127.0.0.1:{}", u64::from(base) + offset + node.id);
        assert_eq!(
            (&node.grpc, &node.peer, &node.cluster, &node.http),
            (&port(0), &port(300), &port(200), &port(100)),
            "node {}'s ports in the tour",
            node.id
        );
    }

    // The binary is rebuilt (here: replaced by one that cannot run a node), then node 2 dies.
    replace_binary(&binary);
    kill(Pid::from_raw(tour[1].pid), Signal::SIGKILL).unwrap();
    let restarted = dev.expect("that node 2 restarted", |l| {
        l.starts_with("node 2 restarted (pid ")
    });
    let new_pid: i32 = restarted
        .trim_start_matches("node 2 restarted (pid ")
        .trim_end_matches(')')
        .parse()
        .unwrap_or_else(|_| panic!("no pid in {restarted:?}"));
    assert_ne!(new_pid, tour[1].pid);
    assert_eq!(
        std::fs::read_link(format!("/proc/{new_pid}/exe")).unwrap(),
        data_dir.join("kairos-agent"),
        "the restarted node runs the binary resolved at start"
    );
    await_ready(&tour[1].http).await;

    // Without a binary to start, node 3 is given up, once.
    std::fs::remove_file(data_dir.join("kairos-agent")).unwrap();
    kill(Pid::from_raw(tour[2].pid), Signal::SIGKILL).unwrap();
    let given_up = dev.expect("that node 3 is given up", |l| l.starts_with("node 3: "));
    assert!(given_up.contains("No such file or directory"), "{given_up}");
    assert!(
        given_up.ends_with("not restarting it — restart `kairos dev` to bring it back"),
        "{given_up}"
    );

    let (status, rest) = dev.stop();
    assert!(status.success(), "kairos dev exited with {status}");
    assert!(rest.iter().any(|l| l.contains("All nodes stopped")), "{rest:?}");
    let node_3_lines: Vec<&String> = dev.seen.iter().filter(|l| l.starts_with("node 3")).collect();
    assert_eq!(node_3_lines.len(), 2, "one exit, one give-up: {node_3_lines:?}");
    for pid in [tour[0].pid, tour[1].pid, tour[2].pid, new_pid] {
        assert!(gone(pid), "pid {pid} outlived kairos dev");
    }
}
