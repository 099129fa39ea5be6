//! The `kairos` command: one binary for the server and its clients.
//!
//! - `agent`: run one node ([`agent`]).
//! - `dev`: run a local three-node cluster as child processes ([`dev`]).
//! - `job`, `run`, `cluster`: gRPC clients ([`job`], [`run`], [`cluster`]) that try the
//!   `--endpoints` in turn and follow a leader hint.
//! - `acl`, `audit`: access control and the audit log ([`acl`], [`audit`]).
//! - `type`, `worker`: job types (built-in and registered) and the external
//!   workers serving them ([`job_type`], [`worker`]).
//! - `service describe`: the cluster's service record, for a service
//!   registry ([`service`]).
//! - `sink`: outbound webhooks receiving the lifecycle stream ([`sink`]).
//! - `snapshot save|inspect|restore`: backups of the cluster's state ([`snapshot`]).
//! - `cron next`: fire times from the same schedule code the server uses ([`cron`]).
//! - `probe`: one HTTP GET with an exit status, for container health checks ([`probe`]).
//!
//! Errors end the process with a non-zero code and one line on stderr.

pub mod acl;
pub mod agent;
pub mod audit;
pub mod client;
pub mod cluster;
pub mod cron;
pub mod dev;
pub mod event;
pub mod job;
pub mod job_type;
pub mod output;
pub mod probe;
pub mod run;
pub mod service;
pub mod sink;
pub mod snapshot;
pub mod worker;

use clap::{Parser, Subcommand};

use crate::config::AgentArgs;

/// Default endpoints: the `kairos dev` cluster.
pub const DEV_ENDPOINTS: &str = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";

/// Kairos: a distributed job scheduler.
#[derive(Parser, Debug)]
#[command(name = "kairos", version, about)]
pub struct Cli {
    /// Connection and output flags of the client commands.
    #[command(flatten)]
    pub client: client::ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node.
    Agent(Box<AgentArgs>),
    /// Run a local three-node cluster (data under ./kairos-data) until Ctrl-C.
    Dev(dev::DevArgs),
    /// Create, inspect and change jobs.
    Job(Box<job::JobCommand>),
    /// List, inspect and cancel runs.
    Run(run::RunCommand),
    /// Inspect and change cluster membership.
    Cluster(cluster::ClusterCommand),
    /// Evaluate cron expressions.
    Cron(cron::CronCommand),
    /// Job types: built-in ones and those external workers registered.
    Type(job_type::JobTypeCommand),
    /// External workers connected to the cluster.
    Worker(worker::WorkerCommand),
    /// Publish events that trigger jobs; follow the lifecycle stream.
    Event(event::EventCommand),
    /// The cluster's service record: build, cluster id, nodes, job types, permissions, endpoints.
    Service(service::ServiceCommand),
    /// Access control: bootstrap, roles, tokens, certificate bindings.
    Acl(acl::AclCommand),
    /// Read, export and verify the audit log.
    Audit(audit::AuditCommand),
    /// Sinks: webhooks receiving every lifecycle event, in order, at least once.
    Sink(sink::SinkCommand),
    /// Backups: save the cluster's state to a file, inspect one, restore one into a new cluster.
    Snapshot(snapshot::SnapshotCommand),
    /// GET an HTTP URL (default: this host's /readyz); exit 0 on 2xx, else 1 (container health checks).
    Probe(probe::ProbeArgs),
    /// Internal diagnostics (used by the durability test).
    #[command(hide = true)]
    Debug(agent::DebugCommand),
}

/// Runs a parsed command line; `Err` carries the one-line reason.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent(args) => agent::run_from_args(*args).await,
        Command::Dev(args) => dev::run(args).await,
        Command::Job(cmd) => job::run(*cmd, &cli.client).await,
        Command::Run(cmd) => run::run(cmd, &cli.client).await,
        Command::Cluster(cmd) => cluster::run(cmd, &cli.client).await,
        Command::Cron(cmd) => cron::run(cmd),
        Command::Type(cmd) => job_type::run(cmd, &cli.client).await,
        Command::Worker(cmd) => worker::run(cmd, &cli.client).await,
        Command::Event(cmd) => event::run(cmd, &cli.client).await,
        Command::Service(cmd) => service::run(cmd, &cli.client).await,
        Command::Acl(cmd) => acl::run(cmd, &cli.client).await,
        Command::Audit(cmd) => audit::run(cmd, &cli.client).await,
        Command::Sink(cmd) => sink::run(cmd, &cli.client).await,
        Command::Snapshot(cmd) => snapshot::run(cmd, &cli.client).await,
        Command::Probe(args) => probe::run(args, cli.client.timeout).await,
        Command::Debug(cmd) => agent::debug(cmd).await,
    }
}
