//! `kairos service describe`: the cluster's service record
//! (`ServiceInfoService.DescribeService`): build, cluster id, nodes, job
//! types, permissions, features and endpoints.
//!
//! `-o json` prints the record in the protobuf JSON mapping, for a service
//! registry to take as it is; otherwise it is printed for people
//! ([`describe_lines`], pure, so that it can be tested without a cluster).

use super::client::{fail, Client, ClientArgs};
use super::output;
use crate::proto as pb;
use crate::proto::service_info_service_client::ServiceInfoServiceClient;

/// `kairos service`.
#[derive(clap::Args, Debug)]
pub struct ServiceCommand {
    #[command(subcommand)]
    action: ServiceAction,
}

#[derive(clap::Subcommand, Debug)]
enum ServiceAction {
    /// What this cluster is and offers: build, cluster id, nodes, job types,
    /// permissions, features and API endpoints (any valid credential).
    Describe,
}

/// Runs a `kairos service` command.
pub async fn run(cmd: ServiceCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(args)?;
    match cmd.action {
        ServiceAction::Describe => {
            let description = client
                .send(&pb::DescribeServiceRequest {}, |ch, r| async move {
                    ServiceInfoServiceClient::new(ch).describe_service(r).await
                })
                .await
                .map_err(fail)?;
            output::print(args.output, &description, |d| {
                for line in describe_lines(d) {
                    output::outln!("{line}");
                }
            })
        }
    }
}

/// `text`, or `-` when it is empty.
fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.into()
    }
}

/// The lines `kairos service describe` prints without `-o json`: the
/// record's fields, then tables of nodes, job types and endpoints.
pub fn describe_lines(d: &pb::ServiceDescription) -> Vec<String> {
    let mut lines = output::field_lines(&[
        ("name", d.name.clone()),
        ("api version", d.api_version.clone()),
        (
            "build",
            format!("{} (commit {})", d.build_version, d.build_commit),
        ),
        ("format version", d.format_version.to_string()),
        ("cluster id", d.cluster_id.clone()),
        ("answered by", format!("node {}", d.answered_by)),
        ("permissions", d.permissions.join(", ")),
        ("features", d.features.join(", ")),
    ]);
    let nodes: Vec<Vec<String>> = d
        .nodes
        .iter()
        .map(|n| {
            let role = pb::NodeRole::try_from(n.role)
                .map(|r| r.as_str_name().trim_start_matches("NODE_ROLE_").to_lowercase())
                .unwrap_or_default();
            vec![
                n.id.to_string(),
                role,
                if n.voter { "voter" } else { "learner" }.to_string(),
                or_dash(&n.grpc_addr),
                or_dash(&n.http_addr),
            ]
        })
        .collect();
    lines.push(String::new());
    lines.extend(output::table_lines(
        &["NODE", "ROLE", "MEMBER", "GRPC ADDRESS", "HTTP ADDRESS"],
        &nodes,
    ));
    let types: Vec<Vec<String>> = d
        .job_types
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                if t.builtin { "built-in" } else { "registered" }.to_string(),
                if t.payload_schema.is_empty() { "-" } else { "yes" }.to_string(),
                or_dash(&t.description),
            ]
        })
        .collect();
    lines.push(String::new());
    lines.extend(output::table_lines(
        &["JOB TYPE", "KIND", "SCHEMA", "DESCRIPTION"],
        &types,
    ));
    let endpoints: Vec<Vec<String>> = d
        .endpoints
        .iter()
        .map(|e| vec![e.protocol.clone(), e.name.clone(), or_dash(&e.permission)])
        .collect();
    lines.push(String::new());
    lines.extend(output::table_lines(
        &["PROTOCOL", "ENDPOINT", "PERMISSION"],
        &endpoints,
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_description_prints_its_fields_then_nodes_types_and_endpoints() {
        let description = pb::ServiceDescription {
            name: "kairos".into(),
            api_version: "v1".into(),
            build_version: "0.1.0".into(),
            build_commit: "cb2ae0da157d".into(),
            cluster_id: "6ff382b880d8fe2a6ac29bc0d3e70beb".into(),
            answered_by: 2,
            nodes: vec![
                pb::ServiceNode {
                    id: 1,
                    role: pb::NodeRole::Leader as i32,
                    voter: true,
                    grpc_addr: "10.0.0.1:7101".into(),
                    http_addr: "10.0.0.1:7201".into(),
                },
                pb::ServiceNode {
                    id: 3,
                    role: pb::NodeRole::Unreachable as i32,
                    voter: false,
                    grpc_addr: String::new(),
                    http_addr: String::new(),
                },
            ],
            job_types: vec![
                pb::JobTypeInfo {
                    name: "noop".into(),
                    builtin: true,
                    description: "does nothing and succeeds".into(),
                    payload_schema: String::new(),
                },
                pb::JobTypeInfo {
                    name: "billing.charge".into(),
                    builtin: false,
                    description: String::new(),
                    payload_schema: r#"{"type":"object"}"#.into(),
                },
            ],
            permissions: vec!["job:read".into(), "event:publish".into()],
            features: vec!["cron".into(), "rbac".into()],
            endpoints: vec![
                pb::ApiEndpoint {
                    protocol: "grpc".into(),
                    name: "kairos.v1.JobService/CreateJob".into(),
                    permission: "job:write".into(),
                },
                pb::ApiEndpoint {
                    protocol: "grpc".into(),
                    name: "kairos.v1.AclService/WhoAmI".into(),
                    permission: String::new(),
                },
            ],
            format_version: 6,
        };
        assert_eq!(
            describe_lines(&description),
            [
                "name:           kairos",
                "api version:    v1",
                "build:          0.1.0 (commit cb2ae0da157d)",
                "format version: 6",
                "cluster id:     6ff382b880d8fe2a6ac29bc0d3e70beb",
                "answered by:    node 2",
                "permissions:    job:read, event:publish",
                "features:       cron, rbac",
                "",
                "NODE  ROLE         MEMBER   GRPC ADDRESS   HTTP ADDRESS",
                "1     leader       voter    10.0.0.1:7101  10.0.0.1:7201",
                "3     unreachable  learner  -              -",
                "",
                "JOB TYPE        KIND        SCHEMA  DESCRIPTION",
                "noop            built-in    -       does nothing and succeeds",
                "billing.charge  registered  yes     -",
                "",
                "PROTOCOL  ENDPOINT                        PERMISSION",
                "grpc      kairos.v1.JobService/CreateJob  job:write",
                "grpc      kairos.v1.AclService/WhoAmI     -",
            ]
        );
    }
}
