//! `scale`: many cron jobs; memory per job, data size and restart time.

use std::time::{Duration, Instant};

use kairos::proto as pb;
use kairos::proto::job_service_client::JobServiceClient;
use kairos_testkit::http_get;

use crate::support::{channel, load_jobs, progress, resident_bytes, started_cluster};

/// Bytes under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The size of the last snapshot a node built, from its log ("snapshot built ... bytes=N").
fn last_snapshot_bytes(log: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter(|l| l.contains("snapshot built"))
        .filter_map(|l| l.split("bytes=").nth(1)?.split_whitespace().next()?.parse().ok())
        .next_back()
}

pub(crate) async fn scale(jobs: usize, clients: usize) {
    let (mut cluster, leader) = started_cluster().await;
    let before: Vec<(u64, u64)> = cluster
        .nodes
        .iter()
        .map(|n| (n.id, n.pid().map_or(0, resident_bytes)))
        .collect();
    let started = Instant::now();
    // Daily, 12 hours from now: no fire while the scenario measures.
    let due = chrono::Utc::now() + chrono::Duration::hours(12);
    let daily = {
        use chrono::Timelike;
        format!("{} {} * * *", due.minute(), due.hour())
    };
    let schedule = daily.clone();
    load_jobs(
        &cluster.node(leader).grpc,
        cluster.token(),
        jobs,
        clients,
        "scale",
        move |i| pb::ScheduledJob {
            id: format!("scale-{i:08}"),
            r#type: "noop".into(),
            schedule: schedule.clone(),
            payload: vec![b'x'; 64],
            ..Default::default()
        },
    )
    .await;
    let load_seconds = started.elapsed().as_secs_f64();
    eprintln!();
    // Memory at rest: write records (a retry's answer, kept 60 s) expire
    // when an entry is applied after their time; wait that out, then write once.
    progress("scale: waiting 65 s for write records to expire".into());
    tokio::time::sleep(Duration::from_secs(
        std::env::var("KAIROS_BENCH_SETTLE_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(65),
    ))
    .await;
    let mut client = JobServiceClient::new(channel(&cluster.node(leader).grpc, cluster.token()).await);
    client
        .create_job(pb::CreateJobRequest {
            job: Some(pb::ScheduledJob {
                id: "scale-settle".into(),
                r#type: "noop".into(),
                schedule: daily,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("settling write");
    eprintln!();
    let per_node: Vec<serde_json::Value> = cluster
        .nodes
        .iter()
        .map(|n| {
            let base = before.iter().find(|(id, _)| *id == n.id).map_or(0, |(_, b)| *b);
            let now = n.pid().map_or(0, resident_bytes);
            serde_json::json!({
                "node": n.id,
                "role": if n.id == leader { "leader" } else { "follower" },
                "resident_mib": now as f64 / (1 << 20) as f64,
                "bytes_per_job": now.saturating_sub(base) as f64 / jobs as f64,
                "data_dir_mib": dir_bytes(&n.data_dir) as f64 / (1 << 20) as f64,
            })
        })
        .collect();
    // Restart a follower and time it to ready.
    let follower = cluster
        .running()
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    cluster.kill(follower);
    let restarted = Instant::now();
    cluster.spawn(follower);
    let http = cluster.node(follower).http.clone();
    let ready_seconds = loop {
        if let Ok((200, _)) = http_get(&http, "/readyz").await {
            break restarted.elapsed().as_secs_f64();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(300),
            "restarted node not ready in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let restarted_resident = cluster.node(follower).pid().map_or(0, resident_bytes);
    let result = serde_json::json!({
        "scenario": "scale",
        "jobs": jobs,
        "load_seconds": load_seconds,
        "creates_per_s": jobs as f64 / load_seconds,
        "nodes": per_node,
        "restart_to_ready_s": ready_seconds,
        "restarted_resident_mib": restarted_resident as f64 / (1 << 20) as f64,
        "restarted_bytes_per_job": restarted_resident as f64 / jobs as f64,
        "snapshot_bytes": last_snapshot_bytes(&cluster.node(leader).log),
    });
    println!("{result}");
    println!("| node | role | resident MiB | bytes/job | data dir MiB |");
    for n in &per_node {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} |",
            n["node"],
            n["role"].as_str().unwrap_or(""),
            n["resident_mib"].as_f64().unwrap_or(0.0),
            n["bytes_per_job"].as_f64().unwrap_or(0.0),
            n["data_dir_mib"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "restart to ready: {ready_seconds:.1} s (then {:.0} bytes/job resident); load: {:.0} creates/s; snapshot: {} bytes",
        restarted_resident as f64 / jobs as f64,
        jobs as f64 / load_seconds,
        result["snapshot_bytes"]
    );
}
