//! A minimal valid job, and a create that rides out elections.

use std::time::Duration;

use kairos::proto as pb;
use kairos::proto::run_service_client::RunServiceClient;

use crate::{Authed, TestCluster};

/// A minimal valid job message.
pub fn job(id: &str) -> pb::ScheduledJob {
    pb::ScheduledJob {
        id: id.to_string(),
        r#type: "noop".into(),
        owner_service: "tests".into(),
        schedule: "*/5 * * * *".into(),
        payload: b"{}".to_vec(),
        ..Default::default()
    }
}

/// Creates `id` through node `via` with the root token and a request id,
/// retrying while the cluster is unavailable (a retried create with the same
/// request id is idempotent). Returns whether the write was acknowledged.
pub async fn create(cluster: &TestCluster, via: u64, id: &str) -> bool {
    let request = pb::CreateJobRequest {
        job: Some(job(id)),
        request_id: format!("req-{id}"),
    };
    let mut client = cluster.jobs(via).await;
    for _ in 0..20 {
        match client.create_job(request.clone()).await {
            Ok(reply) => {
                assert_eq!(reply.into_inner().id, id);
                return true;
            }
            Err(s) if s.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => panic!("create {id} via node {via}: {s:?}"),
        }
    }
    false
}

/// Every run of `job`, oldest first, through `client` (all pages).
pub async fn all_runs(client: &mut RunServiceClient<Authed>, job: &str) -> Vec<pb::Run> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_runs(pb::ListRunsRequest {
                job_id: job.into(),
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.runs);
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
}
