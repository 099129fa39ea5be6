//! `create`: concurrent clients creating jobs for a bounded time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kairos::proto::job_service_client::JobServiceClient;

use crate::support::{channel, create_job, latency_histogram, progress, quantile_ms, started_cluster};

pub(crate) async fn create(
    clients: usize,
    payload: usize,
    duration: Duration,
    endpoints: Option<String>,
    connections: Option<usize>,
) {
    let target = "kairos";
    let (cluster, addrs) = match endpoints {
        Some(list) => (None, list.split(',').map(str::to_string).collect::<Vec<_>>()),
        None => {
            let (cluster, leader) = started_cluster().await;
            let addr = cluster.node(leader).grpc.clone();
            (Some(cluster), vec![addr])
        }
    };
    let acknowledged = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + duration;
    let body = serde_json::json!({ "pad": "x".repeat(payload.saturating_sub(12)) }).to_string();
    let mut channels = Vec::new();
    for i in 0..connections.unwrap_or(clients).clamp(1, clients.max(1)) {
        channels.push(channel(&addrs[i % addrs.len()]).await);
    }
    let mut tasks = Vec::new();
    for client in 0..clients {
        let channel = channels[client % channels.len()].clone();
        let (acknowledged, errors, body) = (acknowledged.clone(), errors.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut jobs = JobServiceClient::new(channel);
            let mut latencies = latency_histogram();
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let sent = Instant::now();
                match create_job(&mut jobs, format!("bench-{client}-{n}"), &body).await {
                    Ok(_) => {
                        latencies
                            .record(sent.elapsed().as_micros() as u64)
                            .expect("an auto-resizing histogram records any value");
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    while tasks.iter().any(|t| !t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let done = acknowledged.load(Ordering::Relaxed);
        progress(format!(
            "create ({target}): {:>5.1} s, {done} acknowledged, {:.0}/s",
            started.elapsed().as_secs_f64(),
            done as f64 / started.elapsed().as_secs_f64()
        ));
    }
    eprintln!();
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies = latency_histogram();
    for task in tasks {
        latencies
            .add(task.await.expect("client"))
            .expect("histograms of one precision");
    }
    let result = serde_json::json!({
        "scenario": "create",
        "target": target,
        "clients": clients,
        "payload_bytes": payload,
        "creates": latencies.len(),
        "errors": errors.load(Ordering::Relaxed),
        "seconds": seconds,
        "throughput_per_s": latencies.len() as f64 / seconds,
        "p50_ms": quantile_ms(&latencies, 0.5),
        "p99_ms": quantile_ms(&latencies, 0.99),
        "p999_ms": quantile_ms(&latencies, 0.999),
    });
    println!("{result}");
    println!("| target | clients | payload | writes | per s | p50 ms | p99 ms | p999 ms |");
    println!(
        "| {target} | {clients} | {payload} B | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
        latencies.len(),
        latencies.len() as f64 / seconds,
        quantile_ms(&latencies, 0.5),
        quantile_ms(&latencies, 0.99),
        quantile_ms(&latencies, 0.999)
    );
    drop(cluster);
}
