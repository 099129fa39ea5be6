//! `kairos audit list|export|verify`.
//!
//! - `list`: the newest-first-agnostic page of entries after `--after`
//!   (oldest first), filtered.
//! - `export`: every matching entry as NDJSON (one protobuf-JSON object per
//!   line), oldest first; each carries its `seq`, so `--after LAST_SEQ`
//!   resumes an interrupted export.
//! - `verify`: asks every member for the verification of its chain and
//!   compares their heads at the lowest head sequence number they share;
//!   fails (exit 1) naming the node and the first bad sequence number. With
//!   `--data-dir`, verifies a stopped node's data offline instead.

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use super::client::Output;
use super::client::{fail, Client, ClientArgs};
use super::output;
use crate::api::convert::ms_timestamp;
use crate::proto as pb;
use crate::proto::audit_service_client::AuditServiceClient;
use crate::proto::cluster_service_client::ClusterServiceClient;

/// `kairos audit`.
#[derive(clap::Args, Debug)]
pub struct AuditCommand {
    #[command(subcommand)]
    action: AuditAction,
}

/// Filters shared by `list` and `export`.
#[derive(clap::Args, Debug, Clone)]
struct Filter {
    /// Only entries of this principal.
    #[arg(long)]
    principal: Option<String>,
    /// Only entries about this job.
    #[arg(long)]
    job: Option<String>,
    /// Only entries of this method (e.g. CreateJob, run.started).
    #[arg(long)]
    method: Option<String>,
    /// Only entries at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Only entries after this sequence number.
    #[arg(long, default_value_t = 0)]
    after: u64,
}

impl Filter {
    fn request(&self, after_seq: u64, limit: u32) -> pb::ListAuditRequest {
        pb::ListAuditRequest {
            after_seq,
            limit,
            principal: self.principal.clone().unwrap_or_default(),
            job_id: self.job.clone().unwrap_or_default(),
            method: self.method.clone().unwrap_or_default(),
            since: self.since.map(|t| ms_timestamp(t.timestamp_millis())),
            stale: false,
        }
    }
}

#[derive(clap::Subcommand, Debug)]
enum AuditAction {
    /// Entries, oldest first.
    List {
        #[command(flatten)]
        filter: Filter,
        /// At most this many (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Every matching entry as NDJSON, oldest first (resume with --after SEQ).
    Export {
        #[command(flatten)]
        filter: Filter,
    },
    /// Verify the chain on every node and that the nodes agree.
    Verify {
        /// Verify a stopped node's data directory offline instead.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn print_entries(entries: &[pb::AuditEntry]) {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                output::timestamp(&e.time, chrono::SecondsFormat::Millis),
                e.principal.clone(),
                e.method.clone(),
                e.resource.clone(),
                e.code.to_string(),
                e.count.to_string(),
                e.message.clone(),
            ]
        })
        .collect();
    output::table(
        &[
            "SEQ",
            "TIME",
            "PRINCIPAL",
            "METHOD",
            "RESOURCE",
            "CODE",
            "COUNT",
            "MESSAGE",
        ],
        &rows,
    );
}

/// Runs a `kairos audit` command.
pub async fn run(cmd: AuditCommand, args: &ClientArgs) -> anyhow::Result<()> {
    match cmd.action {
        AuditAction::Verify { data_dir: Some(dir) } => verify_offline(&dir, args.output).await,
        AuditAction::Verify { data_dir: None } => verify_cluster(&Client::new(args)?, args.output).await,
        AuditAction::List { filter, limit } => {
            let client = Client::new(args)?;
            let request = filter.request(filter.after, limit);
            let page = client
                .send(&request, |ch, r| async move {
                    AuditServiceClient::new(ch).list_audit(r).await
                })
                .await
                .map_err(fail)?;
            output::print(args.output, &page, |p| print_entries(&p.entries))
        }
        AuditAction::Export { filter } => {
            let client = Client::new(args)?;
            let mut after = filter.after;
            let mut head = None;
            loop {
                let request = filter.request(after, 1_000);
                let page = client
                    .send(&request, |ch, r| async move {
                        AuditServiceClient::new(ch).list_audit(r).await
                    })
                    .await
                    .map_err(fail)?;
                // Export up to the head seen at the start, so a busy cluster ends.
                let until = *head.get_or_insert(page.head_seq);
                for entry in &page.entries {
                    if entry.seq > until {
                        return Ok(());
                    }
                    output::outln!("{}", serde_json::to_string(entry)?);
                }
                if page.scanned_to_seq >= until || page.scanned_to_seq <= after {
                    return Ok(());
                }
                after = page.scanned_to_seq;
            }
        }
    }
}

async fn verify_offline(dir: &std::path::Path, out: Output) -> anyhow::Result<()> {
    let (state, applied) = crate::raft::offline::replay(dir).await?;
    let audit = state.audit();
    let head = audit.head();
    match audit.verify() {
        Ok(_) => output::print(
            out,
            &serde_json::json!({
                "ok": true,
                "head_seq": head.seq,
                "head_hash": crate::scheduler::audit::hex(&head.hash),
                "anchor_seq": audit.anchor().seq,
                "applied_index": applied,
            }),
            |_| {
                output::outln!(
                    "ok: {} entries from {} to {} verify (head {}, applied index {applied})",
                    audit.len(),
                    audit.anchor().seq + 1,
                    head.seq,
                    crate::scheduler::audit::hex(&head.hash)
                )
            },
        ),
        Err(e) => anyhow::bail!("{}: {e}", dir.display()),
    }
}

/// One node's answer to `VerifyAudit`, or why it gave none.
struct NodeVerdict {
    id: u64,
    addr: String,
    answer: Result<pb::VerifyAuditResponse, String>,
    /// The node's hash of the entry every node holds (when compared).
    common_hash: Option<String>,
}

async fn verify_cluster(client: &Client, out: Output) -> anyhow::Result<()> {
    let status = client
        .send(&pb::ClusterStatusRequest::default(), |ch, r| async move {
            ClusterServiceClient::new(ch).status(r).await
        })
        .await
        .map_err(fail)?;
    let mut verdicts = Vec::new();
    for node in &status.nodes {
        let answer = match client.channel(&node.grpc_addr) {
            Ok(channel) => AuditServiceClient::new(channel)
                .verify_audit(client.request(pb::VerifyAuditRequest {}))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| super::client::describe(&s)),
            Err(s) => Err(super::client::describe(&s)),
        };
        verdicts.push(NodeVerdict {
            id: node.id,
            addr: node.grpc_addr.clone(),
            answer,
            common_hash: None,
        });
    }
    // Compare at the lowest head every verified node holds.
    let common = verdicts
        .iter()
        .filter_map(|v| v.answer.as_ref().ok().filter(|a| a.ok).map(|a| a.head_seq))
        .min()
        .unwrap_or(0);
    if common > 0 {
        for verdict in verdicts
            .iter_mut()
            .filter(|v| v.answer.as_ref().is_ok_and(|a| a.ok))
        {
            let Ok(channel) = client.channel(&verdict.addr) else {
                continue;
            };
            let request = pb::ListAuditRequest {
                after_seq: common - 1,
                limit: 1,
                stale: true,
                ..pb::ListAuditRequest::default()
            };
            if let Ok(page) = AuditServiceClient::new(channel)
                .list_audit(client.request(request))
                .await
            {
                verdict.common_hash = page
                    .into_inner()
                    .entries
                    .first()
                    .filter(|e| e.seq == common)
                    .map(|e| e.hash.clone());
            }
        }
    }
    let reference = verdicts.iter().filter_map(|v| v.common_hash.clone()).next();
    let mut failures = Vec::new();
    for v in &verdicts {
        match &v.answer {
            Err(e) => failures.push(format!("node {} ({}) did not answer: {e}", v.id, v.addr)),
            Ok(a) if !a.ok => {
                failures.push(format!("node {}: audit entry {}: {}", v.id, a.bad_seq, a.reason))
            }
            Ok(_) if v.common_hash.is_some() && v.common_hash != reference => failures.push(format!(
                "node {} disagrees at audit entry {common}: hash {} vs {}",
                v.id,
                v.common_hash.clone().unwrap_or_default(),
                reference.clone().unwrap_or_default()
            )),
            Ok(_) => {}
        }
    }
    let summary: Vec<serde_json::Value> = verdicts
        .iter()
        .map(|v| match &v.answer {
            Ok(a) => serde_json::json!({
                "node": v.id, "ok": a.ok, "bad_seq": a.bad_seq, "reason": a.reason,
                "head_seq": a.head_seq, "head_hash": a.head_hash, "anchor_seq": a.anchor_seq,
                "common_hash": v.common_hash,
            }),
            Err(e) => serde_json::json!({ "node": v.id, "ok": false, "error": e }),
        })
        .collect();
    output::print(
        out,
        &serde_json::json!({ "compared_at_seq": common, "nodes": summary }),
        |_| {
            let rows: Vec<Vec<String>> = verdicts
                .iter()
                .map(|v| match &v.answer {
                    Ok(a) => vec![
                        v.id.to_string(),
                        if a.ok {
                            "ok".into()
                        } else {
                            format!("BAD at {}", a.bad_seq)
                        },
                        a.head_seq.to_string(),
                        a.head_hash.chars().take(16).collect(),
                        v.common_hash
                            .clone()
                            .map(|h| h.chars().take(16).collect())
                            .unwrap_or_default(),
                    ],
                    Err(e) => vec![
                        v.id.to_string(),
                        format!("unreachable: {e}"),
                        String::new(),
                        String::new(),
                        String::new(),
                    ],
                })
                .collect();
            output::table(
                &["NODE", "CHAIN", "HEAD", "HEAD HASH", &format!("HASH AT {common}")],
                &rows,
            );
        },
    )?;
    match failures.first() {
        None => Ok(()),
        Some(_) => anyhow::bail!("{}", failures.join("; ")),
    }
}
