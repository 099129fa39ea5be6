//! `kairos snapshot save|inspect|restore`: backups of the cluster's state
//! (see `crate::backup` for the design, README "Backup and restore" for use).
//!
//! - `save FILE`: streams `ClusterService.SaveSnapshot` from the leader
//!   (the `--endpoints` are tried in turn and a leader hint followed) into
//!   `FILE.tmp`, fsyncs it, checks it as `inspect` does, and renames it over
//!   `FILE` (then fsyncs the directory): `FILE` is either the previous file
//!   or a whole, checked new one. The stream has no deadline (`--timeout`
//!   does not apply to it).
//! - `inspect FILE`: offline; checks the file and prints its header and counts.
//! - `restore FILE --data-dir D --node-id N --initial-cluster ...`: offline;
//!   seeds one new node's data directory (`crate::backup::restore`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::client::{fail, Client, ClientArgs, Output};
use super::output;
use crate::backup::file::{self, Verified};
use crate::backup::restore::{restore, RestoreOptions};
use crate::proto as pb;
use crate::proto::cluster_service_client::ClusterServiceClient;

/// `kairos snapshot`.
#[derive(clap::Args, Debug)]
pub struct SnapshotCommand {
    #[command(subcommand)]
    action: SnapshotAction,
}

#[derive(clap::Subcommand, Debug)]
enum SnapshotAction {
    /// Save a consistent snapshot of the cluster's state, taken on the leader, to FILE (needs cluster:admin).
    Save {
        /// The backup file to write (replaced only by a whole, checked new one).
        file: PathBuf,
    },
    /// Check a backup file and print its header and counts (offline).
    Inspect {
        /// The backup file.
        file: PathBuf,
    },
    /// Seed a new node's empty data directory from a backup (offline; once per node of the new cluster).
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The new node's data directory: must be empty or absent.
        #[arg(long)]
        data_dir: PathBuf,
        /// The new node's id (its --node-id).
        #[arg(long)]
        node_id: u64,
        /// Every member of the new cluster, `id=host:port,...` (peer addresses), the same for every node.
        #[arg(long)]
        initial_cluster: String,
    },
}

/// Runs a `kairos snapshot` command.
pub async fn run(cmd: SnapshotCommand, args: &ClientArgs) -> anyhow::Result<()> {
    match cmd.action {
        SnapshotAction::Save { file } => save(&Client::new(args)?, &file, args.output).await,
        SnapshotAction::Inspect { file } => {
            let verified = file::verify(&file)?;
            print_backup(args.output, &file, &verified)
        }
        SnapshotAction::Restore {
            file,
            data_dir,
            node_id,
            initial_cluster,
        } => {
            let options = RestoreOptions {
                file,
                data_dir,
                node_id,
                initial_cluster: crate::config::parse_initial_cluster(&initial_cluster)?,
            };
            let restored = restore(&options).await?;
            let last = restored.last_log_id;
            let summary = serde_json::json!({
                "data_dir": options.data_dir,
                "node_id": node_id,
                "initial_cluster": options.initial_cluster,
                "last_log_index": last.index,
                "last_log_term": last.leader_id.term,
                "counts": restored.backup.header.counts,
            });
            output::print(args.output, &summary, |_| {
                output::outln!(
                    "restored {} into {} as node {node_id} of {} members at log index {} (term {}): \
                     {} jobs, {} runs, {} audit entries, {} tokens; start it with `kairos agent`",
                    options.file.display(),
                    options.data_dir.display(),
                    options.initial_cluster.len(),
                    last.index,
                    last.leader_id.term,
                    restored.backup.header.counts.jobs,
                    restored.backup.header.counts.runs,
                    restored.backup.header.counts.audit_entries,
                    restored.backup.header.counts.tokens,
                )
            })
        }
    }
}

/// `FILE.tmp` beside `file`.
fn tmp_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    file.with_file_name(name)
}

async fn save(client: &Client, file: &Path, out: Output) -> anyhow::Result<()> {
    anyhow::ensure!(file.file_name().is_some(), "{}: not a file name", file.display());
    let mut stream = client
        .call(|channel| {
            let request = client.stream_request(pb::SaveSnapshotRequest {});
            async move { ClusterServiceClient::new(channel).save_snapshot(request).await }
        })
        .await
        .map_err(fail)?;
    let tmp = tmp_path(file);
    let written = async {
        let mut output = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        while let Some(chunk) = stream.message().await.map_err(fail)? {
            output
                .write_all(&chunk.data)
                .with_context(|| format!("write {}", tmp.display()))?;
        }
        output
            .sync_all()
            .with_context(|| format!("sync {}", tmp.display()))?;
        drop(output);
        let verified = file::verify(&tmp)?;
        std::fs::rename(&tmp, file)
            .with_context(|| format!("rename {} to {}", tmp.display(), file.display()))?;
        let dir = match file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("sync {}", dir.display()))?;
        anyhow::Ok(verified)
    }
    .await;
    match written {
        Ok(verified) => print_backup(out, file, &verified),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e.context(format!("saving {}", file.display())))
        }
    }
}

/// Prints a checked backup file: its header and counts.
fn print_backup(out: Output, path: &Path, verified: &Verified) -> anyhow::Result<()> {
    let header = &verified.header;
    let value = serde_json::json!({
        "file": path,
        "bytes": verified.file_len,
        "sha256": verified.sha256,
        "checksum": "ok",
        "header": header,
    });
    output::print(out, &value, |_| {
        let last = &header.last_log;
        let members: Vec<String> = header
            .membership
            .nodes
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect();
        let rows: Vec<Vec<String>> = [
            ("file", path.display().to_string()),
            ("checksum", format!("ok (sha256 {})", verified.sha256)),
            ("bytes", verified.file_len.to_string()),
            (
                "kairos",
                format!("{} ({})", header.kairos_version, header.kairos_commit),
            ),
            ("cluster id", header.cluster_id.clone()),
            ("taken by", format!("node {}", header.taken_by)),
            ("created", header.created_at.clone()),
            (
                "log position",
                format!("index {} term {} (leader {})", last.index, last.term, last.leader),
            ),
            ("members", members.join(",")),
            ("state format", header.state_format_version.to_string()),
            ("jobs", header.counts.jobs.to_string()),
            ("runs", header.counts.runs.to_string()),
            ("audit entries", header.counts.audit_entries.to_string()),
            ("audit head", header.counts.audit_head_seq.to_string()),
            ("tokens", header.counts.tokens.to_string()),
            ("roles", header.counts.roles.to_string()),
            ("bindings", header.counts.bindings.to_string()),
            ("job types", header.counts.job_types.to_string()),
            ("sinks", header.counts.sinks.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| vec![k.to_string(), v])
        .collect();
        output::table(&["FIELD", "VALUE"], &rows);
    })
}
