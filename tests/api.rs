//! The job API on a real three-node cluster: follower-side writes, optimistic
//! concurrency, idempotent creates, and bad input that is refused with a clear
//! error and changes nothing. Also the CLI's exit codes and the HTTP endpoints.

use std::time::Duration;

use kairos::api::convert::{ms_timestamp, timestamp_ms};
use kairos::proto as pb;
use kairos::proto::acl_service_client::AclServiceClient;
use kairos::proto::job_service_client::JobServiceClient;
use kairos_testkit::{free_port, http_get, job, kairos_bin, Bearer, TestCluster};
use tonic::Code;

const READY: Duration = Duration::from_secs(30);

fn follower_of(cluster: &TestCluster, leader: u64) -> u64 {
    cluster.running().into_iter().find(|&id| id != leader).unwrap()
}

async fn job_count(cluster: &TestCluster, via: u64) -> usize {
    cluster
        .list_ids(via, pb::ReadConsistency::Linearizable)
        .await
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_api_semantics_on_a_three_node_cluster() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let follower = follower_of(&cluster, leader);
    let mut on_follower = cluster.jobs(follower).await;
    let mut on_leader = cluster.jobs(leader).await;

    // A write on a follower is forwarded to the leader and is then visible to
    // a linearizable read on any node.
    let created = on_follower
        .create_job(pb::CreateJobRequest {
            job: Some(job("report")),
            request_id: "r-1".into(),
        })
        .await
        .expect("follower-side create")
        .into_inner();
    assert_eq!(
        (created.version, created.status),
        (1, pb::JobStatus::Active as i32)
    );
    assert!(created.next_run.is_some());
    // Who created it is the name of the token that authenticated the call.
    assert_eq!(
        (created.created_by.as_str(), created.updated_by.as_str()),
        ("root", "root")
    );
    let read = on_leader
        .get_job(pb::GetJobRequest {
            id: "report".into(),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, created);

    // The same request id and body replays the first result; another body is refused.
    let replay = on_leader
        .create_job(pb::CreateJobRequest {
            job: Some(job("report")),
            request_id: "r-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay, created);
    let mut other = job("report-2");
    other.owner_service = "other".into();
    let err = on_follower
        .create_job(pb::CreateJobRequest {
            job: Some(other),
            request_id: "r-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    // Update with the current version succeeds; with a stale one it is ABORTED
    // and changes nothing.
    let mut change = created.clone();
    change.owner_service = "billing".into();
    let mask = pbjson_types::FieldMask {
        paths: vec!["owner_service".into()],
    };
    let updated = on_follower
        .update_job(pb::UpdateJobRequest {
            job: Some(change.clone()),
            update_mask: Some(mask.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((updated.version, updated.owner_service.as_str()), (2, "billing"));
    change.owner_service = "stale".into();
    let err = on_follower
        .update_job(pb::UpdateJobRequest {
            job: Some(change),
            update_mask: Some(mask),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(err.message().contains("version 2, not 1"), "{}", err.message());
    let now = on_leader
        .get_job(pb::GetJobRequest {
            id: "report".into(),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now, updated);

    // Bad input: refused with INVALID_ARGUMENT naming the field; nothing stored.
    let before = job_count(&cluster, leader).await;
    let mut cases: Vec<(pb::ScheduledJob, &str)> = Vec::new();
    let mut j = job("bad-cron");
    j.schedule = "61 * * * *".into();
    cases.push((j, "schedule.cron"));
    let mut j = job("bad-tz");
    j.schedule_spec = Some(pb::ScheduleSpec {
        kind: Some(pb::schedule_spec::Kind::Cron(pb::CronSchedule {
            expr: "* * * * *".into(),
            timezone: "Mars/Base".into(),
        })),
    });
    cases.push((j, "schedule.timezone"));
    let mut j = job("no-type");
    j.r#type.clear();
    cases.push((j, "type: must not be empty"));
    cases.push((job(&"x".repeat(129)), "id: 129 characters is too long"));
    cases.push((job("a b"), "id: \"a b\" contains ' '"));
    let mut j = job("too-big");
    j.payload = vec![0u8; (1 << 20) + 1];
    cases.push((j, "payload: 1048577 bytes is over the limit"));
    // An explicit 0 is refused, not read as "unset, take the default of 3".
    let mut j = job("zero-attempts");
    j.policies = Some(pb::Policies {
        retry: Some(pb::RetryPolicy {
            max_attempts: Some(0),
            ..Default::default()
        }),
        ..Default::default()
    });
    cases.push((j, "policies.retry.max_attempts: 0 is not in 1..=100"));
    for (bad, want) in cases {
        let id = bad.id.clone();
        let err = on_follower
            .create_job(pb::CreateJobRequest {
                job: Some(bad),
                request_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{id}: {err:?}");
        assert!(
            err.message().contains(want),
            "{id}: want {want:?} in {:?}",
            err.message()
        );
    }
    let dup = on_leader
        .create_job(pb::CreateJobRequest {
            job: Some(job("report")),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let missing = on_follower
        .get_job(pb::GetJobRequest {
            id: "nope".into(),
            consistency: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let missing = on_follower
        .delete_job(pb::DeleteJobRequest {
            id: "nope".into(),
            version: 0,
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // An oversized message and a malformed one are refused; the node lives on.
    let mut huge = job("huge");
    huge.payload = vec![0u8; 3 << 20];
    let err = on_follower
        .create_job(pb::CreateJobRequest {
            job: Some(huge),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let garbage = send_garbage(&cluster, follower).await;
    assert_eq!(garbage.code(), Code::InvalidArgument, "{garbage:?}");
    assert_eq!(
        job_count(&cluster, follower).await,
        before,
        "refused requests stored nothing"
    );

    // Pause, resume, delete with a version.
    let paused = on_follower
        .pause_job(pb::PauseJobRequest { id: "report".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (paused.status, paused.next_run),
        (pb::JobStatus::Paused as i32, None)
    );
    let resumed = on_follower
        .resume_job(pb::ResumeJobRequest { id: "report".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.status, pb::JobStatus::Active as i32);
    let err = on_follower
        .delete_job(pb::DeleteJobRequest {
            id: "report".into(),
            version: 1,
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    on_follower
        .delete_job(pb::DeleteJobRequest {
            id: "report".into(),
            version: resumed.version,
            force: false,
        })
        .await
        .unwrap();
    assert_eq!(job_count(&cluster, leader).await, 0);

    // Health and metrics on every node.
    for id in 1..=3 {
        let http = &cluster.node(id).http;
        assert_eq!(http_get(http, "/livez").await.unwrap().0, 200);
        assert_eq!(http_get(http, "/readyz").await.unwrap().0, 200);
        let (code, body) = http_get(http, "/metrics").await.unwrap();
        assert_eq!(code, 200);
        for metric in [
            "kairos_raft_term",
            "kairos_raft_leader_id",
            "kairos_raft_commit_index",
            "kairos_raft_applied_index",
            "kairos_jobs_stored",
        ] {
            assert!(body.contains(metric), "node {id} metrics lack {metric}");
        }
        if id == follower {
            assert!(
                body.contains("kairos_api_requests_total{method=\"CreateJob\",code=\"InvalidArgument\"}"),
                "{body}"
            );
            assert!(
                body.contains("kairos_api_request_duration_seconds_bucket"),
                "{body}"
            );
        }
    }

    // The CLI: success prints the job, failure exits non-zero with one line.
    let endpoints = format!("{},{}", cluster.node(follower).grpc, cluster.node(leader).grpc);
    let ok = cli(
        cluster.token(),
        &endpoints,
        &[
            "job",
            "create",
            "cli-job",
            "--type",
            "noop",
            "--schedule",
            "@hourly",
            "-o",
            "json",
        ],
    );
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(printed["id"], "cli-job");
    assert_eq!(printed["status"], "JOB_STATUS_ACTIVE");
    assert_eq!(printed["createdBy"], "root", "{printed}");
    // Timestamps in the canonical protobuf JSON form: UTC with a `Z`.
    for field in ["createdAt", "updatedAt", "nextRun"] {
        let text = printed[field].as_str().unwrap_or_default();
        assert!(text.ends_with('Z') && !text.contains('+'), "{field}: {text:?}");
    }
    // `run watch` from the beginning: each triggered run once, in position
    // order, one JSON object per line, past a dead endpoint listed first.
    for _ in 0..2 {
        let out = cli(cluster.token(), &endpoints, &["job", "trigger", "cli-job"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let dead_first = format!("127.0.0.1:{},{endpoints}", free_port());
    let watched = cli(
        cluster.token(),
        &dead_first,
        &[
            "run", "watch", "--job", "cli-job", "--after", "0", "--count", "2", "-o", "json",
        ],
    );
    assert!(
        watched.status.success(),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&watched.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    let revisions: Vec<u64> = events
        .iter()
        .map(|e| e["position"]["revision"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(revisions[0] <= revisions[1], "{revisions:?}");
    assert!(
        events.iter().all(|e| e["run"]["jobId"] == "cli-job"),
        "{events:?}"
    );
    assert_ne!(events[0]["run"]["id"], events[1]["run"]["id"]);
    let bad = cli(
        cluster.token(),
        &endpoints,
        &[
            "job",
            "create",
            "cli-bad",
            "--type",
            "noop",
            "--schedule",
            "* * *",
        ],
    );
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: InvalidArgument: schedule.cron"),
        "{stderr}"
    );
}

/// A reader that stops early (`kairos ... | head -1`) ends the CLI quietly:
/// status 0, nothing on stderr (it used to panic with status 101).
#[test]
fn cli_output_into_a_closed_pipe_ends_quietly() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    // 100,000 lines are megabytes: far more than the pipe holds, so the CLI
    // is still writing when the reader goes.
    let mut child = Command::new(kairos_bin())
        .args(["cron", "next", "* * * * *", "--count", "100000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader was dropped with the BufReader: the pipe is closed.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(first.ends_with(":00Z\n"), "{first:?}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "");
}

/// clap's usage errors are one line on stderr too (exit code 2), naming
/// the problem and the usage; `--help` still prints the whole help.
#[test]
fn cli_usage_errors_are_one_line() {
    let run = |args: &[&str]| {
        std::process::Command::new(kairos_bin())
            .args(args)
            .output()
            .unwrap()
    };
    for (args, want) in [
        (
            &["job", "create"][..],
            "error: the following required arguments were not provided: <ID> (usage: kairos job create <ID>; try '--help')",
        ),
        (
            &["job", "create", "x", "--typ", "noop"][..],
            "error: unexpected argument '--typ' found; tip: a similar argument exists: '--type' \
             (usage: kairos job create --type <JOB_TYPE> <ID>; try '--help')",
        ),
        (
            &["job", "list", "-o", "yaml"][..],
            "error: invalid value 'yaml' for '--output <OUTPUT>' [possible values: table, json] (try '--help')",
        ),
        (
            &["job", "create", "x", "--type", "noop", "--max-attempts", "0"][..],
            "error: invalid value '0' for '--max-attempts <MAX_ATTEMPTS>': 0 is not in 1..=100 (try '--help')",
        ),
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr, format!("{want}\n"), "{args:?}");
    }
    let help = run(&["job", "create", "--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).lines().count() > 10);
}

/// `kairos --endpoints <endpoints> <args>` with the root token `token`.
fn cli(token: &str, endpoints: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(kairos_bin())
        .env("KAIROS_TOKEN", token)
        .arg("--endpoints")
        .arg(endpoints)
        .args(args)
        .output()
        .unwrap()
}

/// A request over the size limit is `RESOURCE_EXHAUSTED` naming the limit,
/// bytes that do not decode are `INVALID_ARGUMENT` naming what failed, the
/// refusal is logged with the peer's address, and the node serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_undecodable_requests_are_the_clients_errors() {
    let cluster = TestCluster::start(1, &[]);
    cluster.wait_ready(READY).await;
    let mut jobs = cluster.jobs(1).await;
    let mut huge = job("huge");
    huge.payload = vec![b' '; 2 << 20];
    let err = jobs
        .create_job(pb::CreateJobRequest {
            job: Some(huge),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let message = err.message();
    assert!(message.starts_with("request is 20971"), "{message}");
    assert!(
        message.contains("this API accepts at most 2097152 bytes per message")
            && message.contains("a job's payload may be at most 1048576 bytes"),
        "{message}"
    );

    let garbage = send_garbage(&cluster, 1).await;
    assert_eq!(garbage.code(), Code::InvalidArgument, "{garbage:?}");
    assert!(
        garbage
            .message()
            .starts_with("request to /kairos.v1.JobService/CreateJob does not decode: failed to decode Protobuf message: CreateJobRequest.job: "),
        "{garbage:?}"
    );
    // Logged at warn with the peer's address (the log is written before the reply).
    let log = cluster.log(1);
    let line = log
        .lines()
        .find(|l| l.contains("refused an oversized or undecodable request"))
        .unwrap_or_else(|| panic!("no warn line in {log}"));
    assert!(
        line.contains("WARN") && line.contains("peer=127.0.0.1:"),
        "{line}"
    );

    // The node lives on and serves.
    let created = jobs
        .create_job(pb::CreateJobRequest {
            job: Some(job("after")),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.id, "after");
    assert_eq!(job_count(&cluster, 1).await, 1);
}

/// A one-shot time in the past is refused and stores nothing; one a few
/// seconds ahead is created and fires, and afterwards a repeat of its create
/// (same request id) still gets the job, and an update that re-sends the
/// stored time passes while one that sets another past time does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_time_in_the_past_is_refused() {
    let cluster = TestCluster::start(1, &[]);
    cluster.wait_ready(READY).await;
    let mut jobs = cluster.jobs(1).await;
    let one_shot = |id: &str, at_ms: i64| pb::ScheduledJob {
        schedule_spec: Some(pb::ScheduleSpec {
            kind: Some(pb::schedule_spec::Kind::At(ms_timestamp(at_ms))),
        }),
        ..job(id)
    };
    let now = chrono::Utc::now().timestamp_millis();
    let err = jobs
        .create_job(pb::CreateJobRequest {
            job: Some(one_shot("late", now - 60_000)),
            request_id: "late".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let message = err.message();
    assert!(
        message.starts_with("schedule.at: ")
            && message.contains("is not in the future (now is ")
            && message.contains("kairos job trigger"),
        "{message}"
    );
    assert_eq!(job_count(&cluster, 1).await, 0, "a refused create stores nothing");

    let at = now + 2_000;
    let create = pb::CreateJobRequest {
        job: Some(one_shot("soon", at)),
        request_id: "soon".into(),
    };
    let created = jobs.create_job(create.clone()).await.unwrap().into_inner();
    assert_eq!(created.status, pb::JobStatus::Active as i32);
    assert_eq!(created.next_run.map(|t| timestamp_ms(&t)), Some(at));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let fired = loop {
        let current = jobs
            .get_job(pb::GetJobRequest {
                id: "soon".into(),
                consistency: 0,
            })
            .await
            .unwrap()
            .into_inner();
        if current.status == pb::JobStatus::Completed as i32 {
            break current;
        }
        assert!(std::time::Instant::now() < deadline, "never fired: {current:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(fired.last_run.map(|t| timestamp_ms(&t)), Some(at));
    // The fire was committed up to --fire-ahead-ms early; the repeat must
    // come when `at` has passed.
    let until_passed = at + 1 - chrono::Utc::now().timestamp_millis();
    if until_passed > 0 {
        tokio::time::sleep(Duration::from_millis(until_passed as u64)).await;
    }

    let repeated = jobs.create_job(create).await.unwrap().into_inner();
    assert_eq!((repeated.id.as_str(), repeated.version), ("soon", 1));
    let err = jobs
        .update_job(pb::UpdateJobRequest {
            job: Some(pb::ScheduledJob {
                version: fired.version,
                ..one_shot("soon", at - 1_000)
            }),
            update_mask: Some(pbjson_types::FieldMask {
                paths: vec!["schedule_spec".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let resent = jobs
        .update_job(pb::UpdateJobRequest {
            job: Some(pb::ScheduledJob {
                owner_service: "other".into(),
                ..fired
            }),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resent.owner_service, "other");
}

/// Sends bytes that are not a `CreateJobRequest` to `CreateJob` on node `id`,
/// with the root token, and returns the answer's status (`Code::Ok` if it
/// was accepted).
async fn send_garbage(cluster: &TestCluster, id: u64) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(cluster.channel(id));
    grpc.ready().await.unwrap();
    // A RaftPayload's field 1 is bytes; CreateJobRequest's field 1 is a message,
    // so these bytes must parse as a ScheduledJob — and they do not.
    let message = pb::RaftPayload {
        data: vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x07],
    };
    let path = http::uri::PathAndQuery::from_static("/kairos.v1.JobService/CreateJob");
    let codec = tonic_prost::ProstCodec::<pb::RaftPayload, pb::RaftPayload>::default();
    match grpc.unary(tonic::Request::new(message), path, codec).await {
        Ok(_) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

/// `run watch --after` a position the log has not reached says that it is
/// waiting for it, and gives up with an error when `--timeout` passes
/// instead of waiting silently for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_after_a_position_beyond_the_log_says_so_and_gives_up() {
    let cluster = TestCluster::start(1, &[]);
    cluster.wait_ready(READY).await;
    let endpoint = cluster.node(1).grpc.clone();
    let token = cluster.token().to_string();
    let out = tokio::task::spawn_blocking(move || {
        cli(
            &token,
            &endpoint,
            &["--timeout", "2s", "run", "watch", "--after", "999999999:0"],
        )
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with(
            "watch: waiting for the log to reach revision 999999999 (the cluster has committed up to "
        ) && lines[0].ends_with("); giving up after 2s"),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with("error: watch: the log did not reach revision 999999999 within 2s"),
        "{stderr}"
    );
}

/// A token is accepted by every node as soon as its creation is
/// acknowledged: a follower that has not applied the creation yet passes
/// the read barrier and looks again instead of refusing it (the first
/// write through a follower right after `acl bootstrap` used to fail with
/// UNAUTHENTICATED). A token nobody created is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_token_is_accepted_by_every_node_at_once() {
    let cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_leader(READY).await;
    let mut acl = cluster.acl(leader);
    for i in 0..20 {
        let name = format!("ci-{i}");
        let token = acl
            .create_token(pb::CreateTokenRequest {
                name: name.clone(),
                roles: vec!["root".into()],
                ttl: None,
            })
            .await
            .unwrap()
            .into_inner();
        // Every follower at once, the write first (it is checked before it is proposed).
        for id in cluster.running().into_iter().filter(|&id| id != leader) {
            let channel = cluster.channel_as(id, Bearer::new(&token.secret));
            let created = JobServiceClient::new(channel.clone())
                .create_job(pb::CreateJobRequest {
                    job: Some(job(&format!("by-{name}-via-{id}"))),
                    request_id: String::new(),
                })
                .await
                .unwrap_or_else(|e| panic!("{name} via node {id}: {e:?}"))
                .into_inner();
            assert_eq!(created.created_by, name);
            let me = AclServiceClient::new(channel)
                .who_am_i(pb::WhoAmIRequest {})
                .await
                .unwrap()
                .into_inner();
            assert_eq!(me.principal, name);
        }
    }
    let follower = follower_of(&cluster, leader);
    let unknown = JobServiceClient::new(cluster.channel_as(follower, Bearer::new("not-a-token")))
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated, "{unknown:?}");
    assert_eq!(unknown.message(), "the bearer token is invalid or revoked");
}
