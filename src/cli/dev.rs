//! `kairos dev`: a ready-to-use local cluster from a fresh checkout.
//!
//! Starts `--nodes` (default 3) `kairos agent` child processes of this same
//! binary on loopback — separate processes, because a node owns process-global
//! state (signal handlers, and the worker actors' process groups) — with data
//! under `./kairos-data/node-N` and logs in `./kairos-data/node-N/agent.log`.
//! It waits until every node is ready, prints the endpoints and the next
//! commands to try, restarts a node that dies, and on Ctrl-C / SIGTERM sends
//! SIGTERM to every node and waits for them to exit.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::agent::cancel_on_signal;

/// `kairos dev` flags.
#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Number of nodes (1, 3 or 5).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Where node data and logs go.
    #[arg(long, default_value = "kairos-data")]
    pub data_dir: PathBuf,
    /// Node N listens on gRPC BASE+N, HTTP BASE+100+N, cluster BASE+200+N.
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,
}

struct DevNode {
    id: u64,
    args: Vec<String>,
    log: PathBuf,
    http: String,
    child: Option<Child>,
}

impl DevNode {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let exe = std::env::current_exe().context("locate the kairos binary")?;
        let child = Command::new(exe)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start node {}", self.id))?;
        self.child = Some(child);
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

/// Runs the local cluster until Ctrl-C.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    anyhow::ensure!(matches!(args.nodes, 1 | 3 | 5), "--nodes: use 1, 3 or 5");
    let base = args.base_port;
    let port = |offset: u16, id: u64| base + offset + id as u16;
    let initial: Vec<String> = (1..=args.nodes)
        .map(|id| format!("{id}=127.0.0.1:{}", port(0, id)))
        .collect();
    let mut nodes = Vec::new();
    for id in 1..=args.nodes {
        let dir = args.data_dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let http = format!("127.0.0.1:{}", port(100, id));
        let node_args = vec![
            "agent".into(),
            format!("--node-id={id}"),
            format!("--data-dir={}", dir.display()),
            format!("--grpc-addr=127.0.0.1:{}", port(0, id)),
            format!("--http-addr={http}"),
            format!("--cluster-addr=127.0.0.1:{}", port(200, id)),
            format!("--initial-cluster={}", initial.join(",")),
            "--cluster-cookie=kairos-dev".into(),
        ];
        nodes.push(DevNode {
            id,
            args: node_args,
            log: dir.join("agent.log"),
            http,
            child: None,
        });
    }
    for node in &mut nodes {
        node.spawn()?;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    println!(
        "Starting {} Kairos nodes (data and logs under {})...",
        args.nodes,
        args.data_dir.display()
    );
    tokio::select! {
        ready = wait_ready(&nodes) => ready?,
        _ = shutdown.cancelled() => {}
    }
    if !shutdown.is_cancelled() {
        print_tour(&nodes, base);
    }
    supervise(&mut nodes, &shutdown).await;
    println!("\nStopping nodes...");
    for node in &mut nodes {
        node.stop().await;
    }
    println!("All nodes stopped. Data kept in {}.", args.data_dir.display());
    Ok(())
}

async fn wait_ready(nodes: &[DevNode]) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for node in nodes {
        loop {
            if let Ok((200, _)) = crate::http::fetch(&node.http, "/readyz").await {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "node {} is not ready after 60 s; see {}",
                    node.id,
                    node.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Restarts nodes that exit until `shutdown` is cancelled.
async fn supervise(nodes: &mut [DevNode], shutdown: &CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while !shutdown.is_cancelled() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        for node in nodes.iter_mut() {
            let exited = match node.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(e.to_string()),
                _ => None,
            };
            if let Some(status) = exited {
                eprintln!(
                    "node {} exited ({status}); restarting — see {}",
                    node.id,
                    node.log.display()
                );
                if let Err(e) = node.spawn() {
                    eprintln!("node {}: {e:#}", node.id);
                }
            }
        }
    }
}

fn print_tour(nodes: &[DevNode], base: u16) {
    let endpoints: Vec<String> = (1..=nodes.len() as u16)
        .map(|i| format!("127.0.0.1:{}", base + i))
        .collect();
    println!("\nKairos dev cluster is ready.");
    for node in nodes {
        println!(
            "  node {}: gRPC 127.0.0.1:{}  http://{}/metrics  log {}",
            node.id,
            base + node.id as u16,
            node.http,
            node.log.display()
        );
    }
    let env = if base == 7100 {
        String::new()
    } else {
        format!("KAIROS_ENDPOINTS={} ", endpoints.join(","))
    };
    println!("\nTry, in another terminal:");
    println!("  {env}kairos cluster status");
    println!("  {env}kairos job create hello --type noop --schedule '*/5 * * * *' --owner demo");
    println!("  {env}kairos job list");
    println!("  {env}kairos job get hello -o json");
    println!("  kairos cron next '0 9 * * 1-5' --tz Europe/Berlin --count 3");
    println!("(`kairos` is target/release/kairos, or `cargo run --release --`.)");
    println!("\nPress Ctrl-C to stop the cluster.");
}
