//! `AuditService`: read and verify the audit log (`audit:read`).
//!
//! `ListAudit` pages through the entries this node keeps in sequence order,
//! filtered by principal, job, method and time, and examines at most
//! [`MAX_SCAN`] entries per call (a filter that matches little answers a
//! short page and where it stopped, `scanned_to_seq`). `VerifyAudit`
//! checks this node's chain from its anchor and reports its head; the CLI
//! asks every node and compares their heads.

use tonic::{Request, Response, Status};

use super::convert::{ms_timestamp, timestamp_ms};
use super::read::page_size;
use super::Api;
use crate::proto as pb;
use crate::proto::audit_service_server::AuditService;
use crate::scheduler::acl::{Permission, Resource};
use crate::scheduler::audit::{hex, AuditEntry};
use crate::scheduler::state::MAX_PAGE_SIZE;

/// Most entries one `ListAudit` call examines.
pub const MAX_SCAN: usize = 50_000;

/// An entry as the API shows it.
pub fn entry_to_pb(entry: &AuditEntry) -> pb::AuditEntry {
    let r = &entry.record;
    pb::AuditEntry {
        seq: entry.seq,
        time: Some(ms_timestamp(entry.at_ms)),
        kind: r.kind.map_or("", |k| k.as_str()).to_string(),
        principal: r.principal.clone(),
        accessor_id: r.accessor_id.clone(),
        source: r.source.clone(),
        node: r.node,
        method: r.method.clone(),
        resource: r.resource.clone(),
        job_id: r.job_id.clone(),
        run_id: r.run_id,
        code: r.code,
        message: r.message.clone(),
        request_id: r.request_id.clone(),
        trace_id: r.trace_id.clone(),
        count: r.count,
        prev_hash: hex(&entry.prev_hash),
        hash: hex(&entry.hash),
    }
}

#[tonic::async_trait]
impl AuditService for Api {
    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let caller = self.caller(&request, "ListAudit").await;
        self.observed(caller.method, async {
            let req = request.into_inner();
            let limit = page_size(req.limit).min(MAX_PAGE_SIZE);
            let since_ms = req.since.as_ref().map(timestamp_ms);
            let consistency = if req.stale {
                pb::ReadConsistency::Stale
            } else {
                pb::ReadConsistency::Linearizable
            };
            self.read(consistency as i32, |state| {
                self.authorize(&caller, state, Permission::AuditRead, &Resource::Cluster)?;
                let audit = state.audit();
                let mut entries = Vec::new();
                let mut scanned_to = req.after_seq;
                for entry in audit.after(req.after_seq).take(MAX_SCAN) {
                    scanned_to = entry.seq;
                    let r = &entry.record;
                    let matches = (req.principal.is_empty() || r.principal == req.principal)
                        && (req.job_id.is_empty() || r.job_id == req.job_id)
                        && (req.method.is_empty() || r.method == req.method)
                        && since_ms.is_none_or(|s| entry.at_ms >= s);
                    if matches {
                        entries.push(entry_to_pb(entry));
                        if entries.len() == limit {
                            break;
                        }
                    }
                }
                let head = audit.head().seq;
                Ok(Response::new(pb::ListAuditResponse {
                    entries,
                    head_seq: head,
                    first_seq: audit.entries().next().map_or(head, |e| e.seq),
                    scanned_to_seq: scanned_to.max(req.after_seq.min(head)),
                }))
            })
            .await
        })
        .await
    }

    async fn verify_audit(
        &self,
        request: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        let caller = self.caller(&request, "VerifyAudit").await;
        self.observed(caller.method, async {
            let state = self.node.state.read();
            self.authorize(&caller, &state, Permission::AuditRead, &Resource::Cluster)?;
            let audit = state.audit();
            let head = audit.head();
            let (ok, bad_seq, reason) = match audit.verify() {
                Ok(_) => (true, 0, String::new()),
                Err(e) => (false, e.seq, e.reason),
            };
            Ok(Response::new(pb::VerifyAuditResponse {
                node: self.node.id,
                ok,
                bad_seq,
                reason,
                head_seq: head.seq,
                head_hash: hex(&head.hash),
                anchor_seq: audit.anchor().seq,
                applied_index: self.node.applied_index(),
            }))
        })
        .await
    }
}
