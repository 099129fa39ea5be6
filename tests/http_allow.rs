//! `--http-allow` on real nodes: the `http` job type calls only the
//! destinations a node allows, and a refused call fails its run at once.
//!
//! Each test starts one `kairos agent` process on free loopback ports, a
//! webhook on loopback, and an `http` job that can retry three times; it
//! triggers the job and awaits the run's terminal status on `WatchRuns`.
//!
//! - With the agent's default (`public`), a call to the loopback webhook is
//!   refused: the run fails after its first attempt, its error names the
//!   rule, and the webhook received nothing.
//! - A webhook on an allowed address that redirects to a refused one: the
//!   hop is refused the same way, and the refused address received nothing.
//! - With loopback allowed (the test kit's default), the same call succeeds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::response::IntoResponse;
use kairos::api::convert::ms_duration;
use kairos::proto as pb;
use kairos_testkit::{recorder, TestCluster};

const READY: Duration = Duration::from_secs(30);
/// How long a triggered run may take to end.
const RUN_END: Duration = Duration::from_secs(30);

/// An `http` job calling `url` that never fires by itself and may try three times.
fn webhook_job(id: &str, url: &str) -> pb::ScheduledJob {
    pb::ScheduledJob {
        id: id.into(),
        r#type: "http".into(),
        schedule: "@yearly".into(),
        payload: format!(r#"{{"url": "{url}", "method": "POST"}}"#).into_bytes(),
        policies: Some(pb::Policies {
            retry: Some(pb::RetryPolicy {
                max_attempts: Some(3),
                initial_interval: Some(ms_duration(100)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates `job` on the cluster's leader, triggers it and returns the run
/// as it ended, awaited on `WatchRuns`.
async fn trigger_to_end(cluster: &TestCluster, job: pb::ScheduledJob) -> pb::Run {
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let id = job.id.clone();
    cluster
        .jobs(leader)
        .await
        .create_job(pb::CreateJobRequest {
            job: Some(job),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let mut runs = cluster.runs(leader).await;
    let mut watch = runs
        .watch_runs(pb::WatchRunsRequest {
            job_id: id.clone(),
            after: None,
        })
        .await
        .unwrap()
        .into_inner();
    let run_id = runs
        .trigger_job(pb::TriggerJobRequest { id })
        .await
        .unwrap()
        .into_inner()
        .id;
    let ended = async {
        loop {
            let event = watch.message().await.unwrap().expect("the watch stays open");
            if let Some(run) = event.run.filter(|r| r.id == run_id && r.finished_at.is_some()) {
                return run;
            }
        }
    };
    tokio::time::timeout(RUN_END, ended).await.unwrap_or_else(|_| {
        panic!(
            "run {run_id} did not end in {RUN_END:?}; log:\n{}",
            cluster.log(leader)
        )
    })
}

/// A server on `ip`:free port answering every request with a 302 to
/// `location` (or 200 when `location` is empty); returns its base URL and
/// how many requests it received.
async fn server(ip: &str, location: String) -> (String, Arc<AtomicUsize>) {
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    let app = axum::Router::new().fallback(move || {
        count.fetch_add(1, Ordering::SeqCst);
        let location = location.clone();
        async move {
            if location.is_empty() {
                return axum::http::StatusCode::OK.into_response();
            }
            (
                axum::http::StatusCode::FOUND,
                [(axum::http::header::LOCATION, location)],
            )
                .into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_policy_refuses_loopback_and_the_run_fails_without_retrying() {
    let (url, deliveries) = recorder().await;
    let cluster = TestCluster::start_with_agent_http_allow(1, &[]);
    let run = trigger_to_end(&cluster, webhook_job("to-loopback", &url)).await;
    assert_eq!(run.status, pb::RunStatus::Failed as i32, "{run:?}");
    assert_eq!(run.attempt, 1, "a refusal is not retried: {run:?}");
    assert!(
        run.error
            .ends_with("refused by --http-allow (loopback addresses are not allowed)"),
        "{run:?}"
    );
    assert!(run.error.contains("destination 127.0.0.1 "), "{run:?}");
    assert!(deliveries.lock().unwrap().is_empty(), "the webhook was called");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_a_refused_address_is_refused() {
    // 127.0.0.2 is loopback too, but only 127.0.0.1 is allowed.
    let (refused_base, refused_hits) = server("127.0.0.2", String::new()).await;
    let (hop_base, hop_hits) = server("127.0.0.1", format!("{refused_base}/hook")).await;
    let cluster = TestCluster::start(1, &["--http-allow=127.0.0.1"]);
    let run = trigger_to_end(&cluster, webhook_job("redirected", &format!("{hop_base}/start"))).await;
    assert_eq!(run.status, pb::RunStatus::Failed as i32, "{run:?}");
    assert_eq!(run.attempt, 1, "{run:?}");
    assert!(
        run.error
            .ends_with("destination 127.0.0.2 refused by --http-allow (loopback addresses are not allowed)"),
        "{run:?}"
    );
    assert_eq!(
        hop_hits.load(Ordering::SeqCst),
        1,
        "the allowed server was called once"
    );
    assert_eq!(
        refused_hits.load(Ordering::SeqCst),
        0,
        "the refused address was called"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_loopback_allowed_the_call_succeeds() {
    let (url, deliveries) = recorder().await;
    let cluster = TestCluster::start(1, &[]);
    let run = trigger_to_end(&cluster, webhook_job("allowed", &url)).await;
    assert_eq!(run.status, pb::RunStatus::Succeeded as i32, "{run:?}");
    assert_eq!(run.attempt, 1, "{run:?}");
    let delivered = deliveries.lock().unwrap();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert!(delivered[0].key.starts_with("allowed:"), "{delivered:?}");
}
