//! Quick create-latency measurement against a real three-node cluster on
//! loopback (started by this program, stopped when it ends).
//!
//! `cargo bench --bench create_latency` — prints one JSON line per scenario:
//! one client issuing sequential creates, then 16 concurrent clients. Each
//! create is one Raft entry and one fsync on a majority (no batching yet).
//! Bounded: a fixed number of creates per scenario. Latencies are recorded
//! in microseconds in an HDR histogram (3 significant digits) and printed in
//! milliseconds.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kairos::proto as pb;
use kairos_testkit::{job, TestCluster};

/// The latency at quantile `q` of `latencies` (µs), in ms.
fn quantile_ms(latencies: &Histogram<u64>, q: f64) -> f64 {
    latencies.value_at_quantile(q) as f64 / 1e3
}

async fn scenario(cluster: &TestCluster, name: &str, clients: usize, per_client: usize, via: u64) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = cluster.jobs(via).await;
        let name = name.to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new(3).expect("3 significant digits");
            for i in 0..per_client {
                let request = pb::CreateJobRequest {
                    job: Some(job(&format!("{name}-{c}-{i}"))),
                    request_id: format!("{name}-{c}-{i}"),
                };
                let t = Instant::now();
                client.create_job(request).await.expect("create");
                latencies
                    .record(t.elapsed().as_micros() as u64)
                    .expect("an auto-resizing histogram records any value");
            }
            latencies
        }));
    }
    let mut all = Histogram::<u64>::new(3).expect("3 significant digits");
    for t in tasks {
        all.add(t.await.unwrap()).expect("histograms of one precision");
    }
    let elapsed = started.elapsed();
    println!(
        "{{\"scenario\":\"{name}\",\"clients\":{clients},\"creates\":{},\"seconds\":{:.2},\"creates_per_s\":{:.0},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2}}}",
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        quantile_ms(&all, 0.50),
        quantile_ms(&all, 0.99),
        all.max() as f64 / 1e3,
    );
}

#[tokio::main]
async fn main() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(Duration::from_secs(60)).await;
    let leader = cluster.wait_leader(Duration::from_secs(60)).await;
    let follower = cluster.running().into_iter().find(|&id| id != leader).unwrap();
    scenario(&cluster, "warmup", 1, 50, leader).await;
    scenario(&cluster, "leader-1-client", 1, 500, leader).await;
    scenario(&cluster, "follower-1-client", 1, 500, follower).await;
    scenario(&cluster, "leader-16-clients", 16, 125, leader).await;
}
