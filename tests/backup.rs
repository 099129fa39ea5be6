//! Backup and restore (`kairos snapshot save|inspect|restore`) and recovery
//! from a lost majority (`kairos agent --force-new-cluster`), on real node
//! processes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use kairos::proto as pb;
use kairos::proto::acl_service_client::AclServiceClient;
use kairos::proto::job_service_client::JobServiceClient;
use kairos_testkit::{all_runs, create, http_get, job, kairos_bin, Bearer, TestCluster};
use tokio::time::Instant;

const READY: Duration = Duration::from_secs(60);

/// `kairos --endpoints <endpoints> <args>` with `token` in `KAIROS_TOKEN`.
fn cli(endpoints: &str, token: &str, args: &[&str]) -> Output {
    Command::new(kairos_bin())
        .env("KAIROS_TOKEN", token)
        .arg("--endpoints")
        .arg(endpoints)
        .args(args)
        .output()
        .unwrap()
}

/// `kairos <args>`, offline commands.
fn offline(args: &[&str]) -> Output {
    Command::new(kairos_bin()).args(args).output().unwrap()
}

fn ok(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn endpoints(cluster: &TestCluster) -> String {
    let all: Vec<&str> = cluster.nodes.iter().map(|n| n.grpc.as_str()).collect();
    all.join(",")
}

/// Every job's next fire time (Unix ms, 0 when none) and paused flag, as node `via` sees them.
async fn fire_times(cluster: &TestCluster, via: u64) -> BTreeMap<String, (i64, bool)> {
    let mut client = cluster.jobs(via).await;
    let jobs = client
        .list_jobs(pb::ListJobsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    jobs.into_iter()
        .map(|j| {
            let next = j
                .next_run
                .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
            (j.id, (next, j.paused))
        })
        .collect()
}

async fn create_job(cluster: &TestCluster, id: &str, schedule: &str) {
    let mut spec = job(id);
    spec.schedule = schedule.into();
    cluster
        .jobs(1)
        .await
        .create_job(pb::CreateJobRequest {
            job: Some(spec),
            request_id: format!("req-{id}"),
        })
        .await
        .unwrap_or_else(|s| panic!("create {id}: {s:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_fresh_cluster_with_jobs_runs_tokens_and_the_audit_chain() {
    let source = TestCluster::start(3, &[]);
    source.wait_ready(READY).await;
    let root = source.token().to_string();
    create_job(&source, "yearly", "0 0 1 1 *").await;
    create_job(&source, "daily", "@every 24h").await;
    create_job(&source, "tick", "@every 1s").await;

    // A role and a token made before the backup.
    let eps = endpoints(&source);
    ok(
        &cli(
            &eps,
            &root,
            &["acl", "role", "create", "reader", "--allow", "job:read,run:read"],
        ),
        "create role",
    );
    let token = ok(
        &cli(
            &eps,
            &root,
            &[
                "-o", "json", "acl", "token", "create", "--name", "ci", "--role", "reader",
            ],
        ),
        "create token",
    );
    let token: serde_json::Value = serde_json::from_str(&token).unwrap();
    let ci_secret = token["secret"].as_str().unwrap().to_string();

    // Runs of `tick`, then pause it and let its runs end, so that nothing changes meanwhile.
    let mut runs_client = source.runs(1).await;
    let deadline = Instant::now() + READY;
    while all_runs(&mut runs_client, "tick")
        .await
        .iter()
        .filter(|r| r.status == pb::RunStatus::Succeeded as i32)
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "tick did not run three times");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    source
        .jobs(1)
        .await
        .pause_job(pb::PauseJobRequest { id: "tick".into() })
        .await
        .unwrap();
    let runs_before = loop {
        let runs = all_runs(&mut runs_client, "tick").await;
        let open = runs.iter().any(|r| {
            [
                pb::RunStatus::Pending,
                pb::RunStatus::Queued,
                pb::RunStatus::Running,
            ]
            .iter()
            .any(|s| *s as i32 == r.status)
        });
        if !open {
            break runs;
        }
        assert!(Instant::now() < deadline, "tick's runs did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let run_ids: Vec<u64> = runs_before.iter().map(|r| r.id).collect();
    let times_before = fire_times(&source, 1).await;
    assert_eq!(times_before.len(), 3);
    let roles_before = source
        .acl(1)
        .list_roles(pb::ListRolesRequest {})
        .await
        .unwrap()
        .into_inner()
        .roles
        .len() as u64;
    let audit_head_before = source
        .audit(1)
        .list_audit(pb::ListAuditRequest {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .head_seq;

    // Save, given a follower only: it names the leader, which the CLI asks.
    let leader = source.wait_leader(READY).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("cluster.kbak");
    let file_arg = file.to_str().unwrap();
    let saved = ok(
        &cli(
            &source.node(follower).grpc,
            &root,
            &["snapshot", "save", file_arg],
        ),
        "snapshot save",
    );
    assert!(saved.contains("checksum") && saved.contains("ok"), "{saved}");
    assert!(!backups.path().join("cluster.kbak.tmp").exists());

    // Inspect: the header's counts are the cluster's.
    let inspected = ok(
        &offline(&["-o", "json", "snapshot", "inspect", file_arg]),
        "inspect",
    );
    let inspected: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    let counts = &inspected["header"]["counts"];
    assert_eq!(inspected["checksum"], "ok");
    assert_eq!(counts["jobs"], 3);
    assert_eq!(counts["runs"], run_ids.len() as u64);
    assert_eq!(counts["tokens"], 2, "root and ci");
    assert_eq!(
        counts["roles"],
        roles_before - 1,
        "reader; the built-in root is not stored"
    );
    assert_eq!(counts["audit_head_seq"], audit_head_before);
    assert_eq!(
        counts["audit_entries"], audit_head_before,
        "every entry is kept (none trimmed)"
    );
    assert_eq!(inspected["header"]["taken_by"], leader, "taken on the leader");
    assert_eq!(
        inspected["header"]["membership"]["voters"],
        serde_json::json!([[1, 2, 3]])
    );
    let table = ok(&offline(&["snapshot", "inspect", file_arg]), "inspect as a table");
    assert!(table.contains("jobs") && table.contains("audit head"), "{table}");

    // The save is in the source's audit log, with its outcome.
    let deadline = Instant::now() + READY;
    loop {
        let entries = source
            .audit(1)
            .list_audit(pb::ListAuditRequest {
                method: "SaveSnapshot".into(),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .entries;
        if let Some(entry) = entries.first() {
            assert_eq!((entry.code, entry.principal.as_str()), (0, "root"), "{entry:?}");
            assert!(entry.resource.starts_with("snapshot at index"), "{entry:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no SaveSnapshot audit entry");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A token without cluster:admin may not save.
    let refused = cli(&eps, &ci_secret, &["snapshot", "save", file_arg]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("PermissionDenied"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    drop(source);

    // A damaged file is refused by inspect and restore, which write nothing.
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    let bad = backups.path().join("damaged.kbak");
    std::fs::write(&bad, &bytes).unwrap();
    let refused = offline(&["snapshot", "inspect", bad.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("checksum mismatch"), "{stderr}");

    // Restore into a fresh cluster: one restore per node, then start them.
    let mut target = TestCluster::unstarted(3, &[]);
    let members = target.initial_cluster();
    let bad_dir = backups.path().join("never");
    let refused = offline(&[
        "snapshot",
        "restore",
        bad.to_str().unwrap(),
        "--data-dir",
        bad_dir.to_str().unwrap(),
        "--node-id",
        "1",
        "--initial-cluster",
        &members,
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("checksum mismatch"));
    assert!(!bad_dir.exists(), "a refused restore writes nothing");
    for id in 1..=3u64 {
        let dir = target.node(id).data_dir.to_str().unwrap().to_string();
        let restore = [
            "snapshot",
            "restore",
            file_arg,
            "--data-dir",
            &dir,
            "--node-id",
            &id.to_string(),
            "--initial-cluster",
            &members,
        ];
        ok(&offline(&restore), "restore");
        if id == 1 {
            let again = offline(&restore);
            assert!(!again.status.success());
            assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
        }
    }
    target.use_root_token(&root);
    for id in 1..=3 {
        target.spawn(id);
    }
    target.wait_ready(READY).await;
    target.wait_leader(READY).await;
    for id in 1..=3 {
        assert!(
            !target.log(id).contains("initialized new cluster"),
            "node {id} initialised a cluster instead of starting from its restored state"
        );
    }

    // Every job, with the fire times it had (those not due meanwhile).
    let times_after = fire_times(&target, 2).await;
    assert_eq!(
        times_after.keys().collect::<Vec<_>>(),
        times_before.keys().collect::<Vec<_>>()
    );
    let now_ms = chrono::Utc::now().timestamp_millis();
    for (id, (next, paused)) in &times_before {
        let (next_after, paused_after) = times_after[id];
        assert_eq!(*paused, paused_after, "{id}");
        if *next > now_ms + 60_000 {
            assert_eq!(*next, next_after, "{id}'s next fire time");
        }
    }
    // The runs' history.
    let mut target_runs = target.runs(3).await;
    let ids_after: Vec<u64> = all_runs(&mut target_runs, "tick")
        .await
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids_after, run_ids);
    // A token made before the backup works, with its role's permissions only.
    let mut as_ci = JobServiceClient::new(target.channel_as(1, Bearer::new(&ci_secret)));
    as_ci
        .get_job(pb::GetJobRequest {
            id: "yearly".into(),
            ..Default::default()
        })
        .await
        .expect("the ci token reads jobs");
    let denied = as_ci.pause_job(pb::PauseJobRequest { id: "yearly".into() }).await;
    assert_eq!(denied.unwrap_err().code(), tonic::Code::PermissionDenied);
    let whoami = AclServiceClient::new(target.channel_as(2, Bearer::new(&ci_secret)))
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(whoami.principal, "ci");
    // The audit chain verifies on every node and goes on from the backup's head.
    let verified = ok(
        &cli(&endpoints(&target), &root, &["-o", "json", "audit", "verify"]),
        "audit verify",
    );
    let verified: serde_json::Value = serde_json::from_str(&verified).unwrap();
    let nodes = verified["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{verified}");
    assert!(nodes.iter().all(|n| n["ok"] == true), "{verified}");
    let head_after = target
        .audit(1)
        .list_audit(pb::ListAuditRequest {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .head_seq;
    assert!(
        head_after >= audit_head_before,
        "{head_after} < {audit_head_before}"
    );

    // Fires go on: `tick`, resumed, runs again.
    target
        .jobs(1)
        .await
        .resume_job(pb::ResumeJobRequest { id: "tick".into() })
        .await
        .unwrap();
    let deadline = Instant::now() + READY;
    loop {
        let runs = all_runs(&mut target_runs, "tick").await;
        let new_done = runs
            .iter()
            .filter(|r| !run_ids.contains(&r.id) && r.status == pb::RunStatus::Succeeded as i32)
            .count();
        if new_done > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "tick did not run after the restore");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_keeps_what_the_survivor_applied_and_grows_again() {
    let mut cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    for i in 0..20 {
        assert!(create(&cluster, 1 + i % 3, &format!("job-{i}")).await);
    }
    // The survivor is a follower; the leader and the other follower are lost.
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    let applied = cluster
        .list_ids(survivor, pb::ReadConsistency::Linearizable)
        .await;
    assert_eq!(applied.len(), 20);
    for id in (1..=3).filter(|id| *id != survivor) {
        cluster.kill(id);
    }
    let had = cluster.list_ids(survivor, pb::ReadConsistency::Stale).await;
    cluster.stop(survivor);

    cluster.spawn_with_args(survivor, &["--force-new-cluster"]);
    cluster.wait_ready(READY).await;
    assert_eq!(cluster.wait_leader(READY).await, survivor);
    assert!(
        cluster
            .log(survivor)
            .contains("THIS NODE IS NOW A NEW ONE-NODE CLUSTER"),
        "{}",
        cluster.log(survivor)
    );
    let status = cluster.status(survivor).await;
    let voters: Vec<u64> = status.nodes.iter().filter(|n| n.voter).map(|n| n.id).collect();
    assert_eq!(voters, vec![survivor]);
    assert_eq!(
        cluster
            .list_ids(survivor, pb::ReadConsistency::Linearizable)
            .await,
        had,
        "every job the survivor had applied, and nothing else"
    );
    // It takes writes.
    assert!(create(&cluster, survivor, "after-force").await);

    // A new member catches up.
    let new = cluster.spawn_new_node();
    // Listening (it answers /readyz, with 503 until it is added).
    let deadline = Instant::now() + READY;
    while http_get(&cluster.node(new).http, "/readyz").await.is_err() {
        assert!(Instant::now() < deadline, "node {new} does not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let added = cli(
        &cluster.node(survivor).grpc,
        cluster.token(),
        &[
            "cluster",
            "add-node",
            "--node-id",
            &new.to_string(),
            "--addr",
            &cluster.node(new).peer,
        ],
    );
    ok(&added, "add-node");
    let mut expected = had.clone();
    expected.insert("after-force".into());
    let deadline = Instant::now() + READY;
    loop {
        if cluster.list_ids(new, pb::ReadConsistency::Stale).await == expected {
            break;
        }
        assert!(Instant::now() < deadline, "node {new} did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Started again with the flag left on, it refuses: it has a member now.
    cluster.stop(survivor);
    cluster.spawn_with_args(survivor, &["--force-new-cluster"]);
    let deadline = Instant::now() + READY;
    while !cluster
        .log(survivor)
        .contains("this node was already made a new one-node cluster")
    {
        assert!(Instant::now() < deadline, "{}", cluster.log(survivor));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(Path::new(&cluster.node(survivor).data_dir)
        .join(kairos::backup::force::MARKER)
        .exists());
}
