//! `kairos type list|get`: the job types a cluster knows, and whether anything
//! serves them.
//!
//! A job's `type` names either a handler compiled into every node (the
//! built-in types, [`BUILTIN_TYPES`]) or a type an external worker
//! registered through `WorkerService.RegisterWorker`, with an optional JSON
//! Schema its payloads must satisfy. A registered type outlives its workers:
//! jobs of a type no worker serves stay valid, and their runs wait, pending,
//! until a worker registers it again. That waiting is silent on the server,
//! so the CLI says it out loud in three places:
//!
//! - `kairos type list`: the WORKERS column counts the workers serving each
//!   external type (`-` for a built-in one, which every node runs itself);
//! - `kairos type get NAME`: `no worker for type NAME` instead of the ids;
//! - `kairos job describe ID`: [`describe_hint`] decides the extra line
//!   (`job describe` fetches the type with [`lookup_type`] when
//!   [`type_needs_lookup`] says so).
//!
//! Everything that turns a response into text is a pure function
//! ([`type_rows`], [`type_lines`], [`describe_hint`], [`pretty_json`]) so
//! that it can be tested without a cluster; `run` only fetches and prints.

use super::client::{fail, Client, ClientArgs};
use super::output;
use crate::handlers::BUILTIN_TYPES;
use crate::proto as pb;
use crate::proto::worker_service_client::WorkerServiceClient;

/// Whether `name` is a built-in job type's ([`BUILTIN_TYPES`]: `exec` only
/// runs on nodes started with `--allow-exec`, but its name is reserved
/// everywhere). Any other type name is an external worker's.
pub fn is_builtin_type(name: &str) -> bool {
    BUILTIN_TYPES.iter().any(|(builtin, _)| *builtin == name)
}

/// `kairos type`.
#[derive(clap::Args, Debug)]
pub struct JobTypeCommand {
    #[command(subcommand)]
    action: JobTypeAction,
}

#[derive(clap::Subcommand, Debug)]
enum JobTypeAction {
    /// Every job type: built-in ones and those external workers registered.
    List,
    /// One job type: who registered it, which workers serve it, its payload schema.
    Get {
        /// The type's name.
        name: String,
    },
}

/// Runs a `kairos type` command.
pub async fn run(cmd: JobTypeCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(args)?;
    match cmd.action {
        JobTypeAction::List => {
            let list = client
                .send(&pb::ListJobTypesRequest {}, |ch, r| async move {
                    WorkerServiceClient::new(ch).list_job_types(r).await
                })
                .await
                .map_err(fail)?;
            output::print(args.output, &list, |l| {
                output::table(&["NAME", "KIND", "WORKERS", "DESCRIPTION"], &type_rows(l))
            })
        }
        JobTypeAction::Get { name } => {
            let job_type = get_job_type(&client, name).await.map_err(fail)?;
            output::print(args.output, &job_type, |t| {
                for line in type_lines(t) {
                    output::outln!("{line}");
                }
            })
        }
    }
}

/// Reads job type `name` (`GetJobType`).
async fn get_job_type(client: &Client, name: String) -> Result<pb::JobType, tonic::Status> {
    client
        .send(&pb::GetJobTypeRequest { name }, |ch, r| async move {
            WorkerServiceClient::new(ch).get_job_type(r).await
        })
        .await
}

/// `builtin` or `external`.
fn kind(job_type: &pb::JobType) -> &'static str {
    if job_type.builtin {
        "builtin"
    } else {
        "external"
    }
}

/// `-` for an empty text.
fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_string()
    }
}

/// The rows of `kairos type list`: NAME, KIND, WORKERS (how many serve an
/// external type; `-` for a built-in one), DESCRIPTION (its first line).
pub fn type_rows(list: &pb::ListJobTypesResponse) -> Vec<Vec<String>> {
    list.job_types
        .iter()
        .map(|t| {
            let workers = if t.builtin {
                "-".to_string()
            } else {
                t.workers.len().to_string()
            };
            let description = t.description.lines().next().unwrap_or("");
            vec![t.name.clone(), kind(t).into(), workers, or_dash(description)]
        })
        .collect()
}

/// The lines of `kairos type get`: the type's fields (for an external type
/// also who registered it, when, and the ids of the workers serving it, or
/// `no worker for type NAME`), then its payload schema, re-indented, or
/// `(none: any payload)`.
pub fn type_lines(t: &pb::JobType) -> Vec<String> {
    let mut pairs = vec![
        ("name", t.name.clone()),
        ("kind", kind(t).to_string()),
        ("description", or_dash(&t.description)),
    ];
    if !t.builtin {
        pairs.push(("registered by", or_dash(&t.registered_by)));
        pairs.push((
            "updated at",
            output::timestamp(&t.updated_at, chrono::SecondsFormat::Secs),
        ));
        if !t.workers.is_empty() {
            pairs.push(("workers", t.workers.join(", ")));
        }
    }
    let mut lines = output::field_lines(&pairs);
    if !t.builtin && t.workers.is_empty() {
        lines.push(no_worker_line(t));
    }
    if t.payload_schema.trim().is_empty() {
        lines.push("payload schema: (none: any payload)".into());
    } else {
        lines.push("payload schema:".into());
        // The server checks that a schema is JSON; show anything else as it is.
        let schema = pretty_json(&t.payload_schema).unwrap_or_else(|| t.payload_schema.clone());
        lines.extend(schema.lines().map(str::to_string));
    }
    lines
}

/// The line saying nothing serves external type `name`.
/// "no worker for type X", saying which nodes could not be asked, if any.
fn no_worker_line(t: &pb::JobType) -> String {
    if t.unreachable_nodes.is_empty() {
        return format!("no worker for type {}", t.name);
    }
    let nodes: Vec<String> = t.unreachable_nodes.iter().map(u64::to_string).collect();
    format!(
        "no worker for type {} on the nodes that answered (node {} did not)",
        t.name,
        nodes.join(", ")
    )
}

/// What `GetJobType` said about a job's type, for `kairos job describe`.
#[derive(Clone, Debug, PartialEq)]
pub enum TypeLookup {
    /// The type as the cluster knows it.
    Found(pb::JobType),
    /// `NOT_FOUND`: no worker ever registered the type (or a job predates
    /// its removal).
    Unknown,
    /// Any other failure (no permission, no node answered): nothing to say.
    Failed,
}

/// Fetches job type `name` for `kairos job describe`, folding the answer
/// into a [`TypeLookup`]; never fails the describe.
pub async fn lookup_type(client: &Client, name: &str) -> TypeLookup {
    match get_job_type(client, name.to_string()).await {
        Ok(job_type) => TypeLookup::Found(job_type),
        Err(status) if status.code() == tonic::Code::NotFound => TypeLookup::Unknown,
        Err(_) => TypeLookup::Failed,
    }
}

/// Whether `kairos job describe` should fetch a job's type `job_type` for
/// [`describe_hint`]: only a type that is not built in has workers, or may
/// be unknown.
pub fn type_needs_lookup(job_type: &str) -> bool {
    !job_type.is_empty() && !is_builtin_type(job_type)
}

/// The line `kairos job describe` adds about a job's type `job_type`, given
/// what `GetJobType` said: that its runs wait for a worker when no worker
/// serves the external type, that the type is unknown, or nothing (a
/// built-in type, a served one, a lookup that failed).
pub fn describe_hint(job_type: &str, lookup: &TypeLookup) -> Option<String> {
    if !type_needs_lookup(job_type) {
        return None;
    }
    match lookup {
        TypeLookup::Found(t) if !t.builtin && t.workers.is_empty() => Some(format!(
            "{}: its runs stay pending until a worker registers it",
            no_worker_line(t)
        )),
        TypeLookup::Found(_) | TypeLookup::Failed => None,
        TypeLookup::Unknown => Some(format!("unknown job type {job_type}")),
    }
}

/// `text`, a JSON document, re-indented by two spaces per level with
/// `"key": value` and empty containers as `{}` / `[]` — serde_json's pretty
/// layout — but keeping the keys in their written order and every number and
/// string exactly as written (a schema reads top-down: `type` before
/// `properties`, which parsing into a `serde_json::Value` would sort away).
/// `None` when `text` is not JSON.
pub fn pretty_json(text: &str) -> Option<String> {
    serde_json::from_str::<serde::de::IgnoredAny>(text).ok()?;
    let mut pretty = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let new_line = |pretty: &mut String, depth: usize| {
        pretty.push('\n');
        pretty.push_str(&"  ".repeat(depth));
    };
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            pretty.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                pretty.push(c);
            }
            '{' | '[' => {
                pretty.push(c);
                while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                    chars.next();
                }
                let close = if c == '{' { '}' } else { ']' };
                if chars.peek() == Some(&close) {
                    chars.next();
                    pretty.push(close);
                } else {
                    depth += 1;
                    new_line(&mut pretty, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                new_line(&mut pretty, depth);
                pretty.push(c);
            }
            ',' => {
                pretty.push(c);
                new_line(&mut pretty, depth);
            }
            ':' => pretty.push_str(": "),
            // Outside strings, whitespace is insignificant in (valid) JSON.
            c if c.is_ascii_whitespace() => {}
            c => pretty.push(c),
        }
    }
    Some(pretty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn external(name: &str, workers: &[&str]) -> pb::JobType {
        pb::JobType {
            name: name.into(),
            description: "Charge a card\nsecond line".into(),
            workers: workers.iter().map(|w| w.to_string()).collect(),
            registered_by: "billing-worker".into(),
            updated_at: Some(crate::api::convert::ms_timestamp(1_800_000_000_000)),
            ..Default::default()
        }
    }

    fn builtin(name: &str) -> pb::JobType {
        pb::JobType {
            name: name.into(),
            description: "does nothing".into(),
            builtin: true,
            ..Default::default()
        }
    }

    #[test]
    fn the_list_counts_workers_of_external_types_only() {
        let list = pb::ListJobTypesResponse {
            job_types: vec![builtin("noop"), external("billing.charge", &["n1-w1", "n2-w4"])],
        };
        assert_eq!(
            output::table_lines(&["NAME", "KIND", "WORKERS", "DESCRIPTION"], &type_rows(&list)),
            [
                "NAME            KIND      WORKERS  DESCRIPTION",
                "noop            builtin   -        does nothing",
                "billing.charge  external  2        Charge a card",
            ]
        );
    }

    #[test]
    fn an_external_type_shows_its_workers_and_its_schema_in_written_order() {
        let mut t = external("billing.charge", &["n1-w1", "n2-w4"]);
        t.payload_schema =
            r#"{"type":"object","required":["amount"],"properties":{"amount":{"type":"integer"}}}"#.into();
        assert_eq!(
            type_lines(&t).join("\n"),
            "name:          billing.charge\n\
             kind:          external\n\
             description:   Charge a card\nsecond line\n\
             registered by: billing-worker\n\
             updated at:    2027-01-15T08:00:00Z\n\
             workers:       n1-w1, n2-w4\n\
             payload schema:\n\
             {\n  \"type\": \"object\",\n  \"required\": [\n    \"amount\"\n  ],\n  \
             \"properties\": {\n    \"amount\": {\n      \"type\": \"integer\"\n    }\n  }\n}"
        );
    }

    #[test]
    fn an_external_type_no_worker_serves_says_so() {
        let lines = type_lines(&external("billing.charge", &[]));
        assert!(!lines.iter().any(|l| l.starts_with("workers:")), "{lines:?}");
        assert_eq!(
            lines[lines.len() - 2..],
            [
                "no worker for type billing.charge",
                "payload schema: (none: any payload)"
            ]
        );
    }

    #[test]
    fn a_builtin_type_shows_no_registration_and_no_worker_line() {
        assert_eq!(
            type_lines(&builtin("sleep")),
            [
                "name:        sleep",
                "kind:        builtin",
                "description: does nothing",
                "payload schema: (none: any payload)",
            ]
        );
    }

    #[test]
    fn describe_hints_only_at_an_unserved_or_unknown_external_type() {
        let unserved = TypeLookup::Found(external("billing.charge", &[]));
        assert_eq!(
            describe_hint("billing.charge", &unserved).as_deref(),
            Some("no worker for type billing.charge: its runs stay pending until a worker registers it")
        );
        let served = TypeLookup::Found(external("billing.charge", &["n1-w1"]));
        assert_eq!(describe_hint("billing.charge", &served), None);
        assert_eq!(
            describe_hint("billing.refund", &TypeLookup::Unknown).as_deref(),
            Some("unknown job type billing.refund")
        );
        assert_eq!(describe_hint("billing.charge", &TypeLookup::Failed), None);
        // A built-in type never has workers and never needs a hint.
        for (name, _) in BUILTIN_TYPES {
            assert!(!type_needs_lookup(name));
            assert_eq!(describe_hint(name, &TypeLookup::Found(builtin(name))), None);
            assert_eq!(describe_hint(name, &TypeLookup::Unknown), None);
        }
        // Nor does a description without its job.
        assert!(!type_needs_lookup(""));
        assert_eq!(describe_hint("", &TypeLookup::Unknown), None);
        assert!(type_needs_lookup("billing.charge"));
    }

    #[test]
    fn pretty_json_keeps_strings_numbers_and_empty_containers_as_written() {
        let text = r#" { "a" : "x, {y}: \"[z]\"\\", "n": 1.50e3, "e": {}, "l": [ ], "m": [1,[]] } "#;
        assert_eq!(
            pretty_json(text).as_deref(),
            Some(
                "{\n  \"a\": \"x, {y}: \\\"[z]\\\"\\\\\",\n  \"n\": 1.50e3,\n  \"e\": {},\n  \"l\": [],\n  \
                 \"m\": [\n    1,\n    []\n  ]\n}"
            )
        );
        assert_eq!(pretty_json("true").as_deref(), Some("true"));
        assert_eq!(pretty_json("{not json"), None);
    }

    /// A `WorkerService` that knows one served type (`billing.charge`),
    /// refuses `secret.*` names PERMISSION_DENIED and every other NOT_FOUND.
    struct FakeTypes;

    #[tonic::async_trait]
    impl crate::proto::worker_service_server::WorkerService for FakeTypes {
        async fn register_worker(
            &self,
            _: tonic::Request<pb::RegisterWorkerRequest>,
        ) -> Result<tonic::Response<pb::RegisterWorkerResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }
        async fn poll_task(
            &self,
            _: tonic::Request<pb::PollTaskRequest>,
        ) -> Result<tonic::Response<pb::PollTaskResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }
        async fn heartbeat_task(
            &self,
            _: tonic::Request<pb::HeartbeatTaskRequest>,
        ) -> Result<tonic::Response<pb::HeartbeatTaskResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }
        async fn complete_task(
            &self,
            _: tonic::Request<pb::CompleteTaskRequest>,
        ) -> Result<tonic::Response<pb::CompleteTaskResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }
        async fn list_workers(
            &self,
            _: tonic::Request<pb::ListWorkersRequest>,
        ) -> Result<tonic::Response<pb::ListWorkersResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }
        async fn list_job_types(
            &self,
            _: tonic::Request<pb::ListJobTypesRequest>,
        ) -> Result<tonic::Response<pb::ListJobTypesResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }
        async fn get_job_type(
            &self,
            request: tonic::Request<pb::GetJobTypeRequest>,
        ) -> Result<tonic::Response<pb::JobType>, tonic::Status> {
            match request.into_inner().name.as_str() {
                "billing.charge" => Ok(tonic::Response::new(external("billing.charge", &["n1-w1"]))),
                name if name.starts_with("secret.") => Err(tonic::Status::permission_denied("job:read")),
                name => Err(tonic::Status::not_found(format!("job type {name:?}"))),
            }
        }
    }

    #[tokio::test]
    async fn a_lookup_tells_unknown_types_from_failed_lookups() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(crate::proto::worker_service_server::WorkerServiceServer::new(
                    FakeTypes,
                ))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let args = ClientArgs {
            endpoints: addr.to_string(),
            output: crate::cli::client::Output::Table,
            timeout: std::time::Duration::from_secs(5),
            token: Some("test".into()),
            token_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        };
        let client = Client::new(&args).expect("client");
        assert_eq!(
            lookup_type(&client, "billing.charge").await,
            TypeLookup::Found(external("billing.charge", &["n1-w1"]))
        );
        assert_eq!(lookup_type(&client, "billing.refund").await, TypeLookup::Unknown);
        assert_eq!(lookup_type(&client, "secret.x").await, TypeLookup::Failed);
        server.abort();
        let _ = server.await;
        // No node answering is a failed lookup too, not an error.
        assert_eq!(lookup_type(&client, "billing.charge").await, TypeLookup::Failed);
    }
}
