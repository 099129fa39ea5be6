//! Fire lateness at ~100 fires/s on a three-node cluster (release binaries on
//! loopback, started and stopped by this program).
//!
//! `cargo bench --bench fire_lateness` — 100 `http` jobs firing every second
//! for 30 s, each delivered to a recording webhook in this process; lateness
//! is the webhook's receive time minus the `X-Kairos-Nominal-Time` header
//! (nominal time → handler start, plus one loopback HTTP request). Prints one
//! JSON line. Bounded: 30 s of firing. Lateness percentiles come from an
//! HDR histogram of whole milliseconds.

use std::time::Duration;

use hdrhistogram::Histogram;
use kairos::api::convert::ms_duration;
use kairos::proto as pb;
use kairos_testkit::{recorder, TestCluster};

const JOBS: usize = 100;
const SECONDS: u64 = 30;

#[tokio::main]
async fn main() {
    let (url, deliveries) = recorder().await;
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(Duration::from_secs(60)).await;
    let leader = cluster.wait_leader(Duration::from_secs(60)).await;
    let mut jobs = cluster.jobs(leader).await;
    for i in 0..JOBS {
        let job = pb::ScheduledJob {
            id: format!("tick-{i:03}"),
            r#type: "http".into(),
            schedule: "* * * * * *".into(),
            payload: format!(r#"{{"url": "{url}"}}"#).into_bytes(),
            policies: Some(pb::Policies {
                timeouts: Some(pb::Timeouts {
                    heartbeat_timeout: Some(ms_duration(5_000)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        jobs.create_job(pb::CreateJobRequest {
            job: Some(job),
            request_id: String::new(),
        })
        .await
        .unwrap();
    }
    // Skip the first seconds (jobs being created), then measure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let skip = deliveries.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(SECONDS)).await;
    let mut lateness = Histogram::<u64>::new(3).expect("3 significant digits");
    for delivery in &deliveries.lock().unwrap()[skip..] {
        // Never negative: an attempt begins at its nominal time at the earliest.
        lateness
            .record(delivery.lateness_ms.max(0) as u64)
            .expect("an auto-resizing histogram records any value");
    }
    let pct = |q: f64| lateness.value_at_quantile(q);
    println!(
        "{{\"jobs\":{JOBS},\"seconds\":{SECONDS},\"deliveries\":{},\"per_second\":{:.1},\"lateness_p50_ms\":{},\"lateness_p99_ms\":{},\"lateness_max_ms\":{}}}",
        lateness.len(),
        lateness.len() as f64 / SECONDS as f64,
        pct(0.5),
        pct(0.99),
        lateness.max()
    );
}
