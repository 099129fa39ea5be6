//! One node's container: what it runs, and the faults done to it.
//!
//! A node's container is created once, by [`run`], from the run's image with
//! the `kairos agent` arguments and environment of [`agent_spec`] (the image's
//! entrypoint is `/kairos`; the cookie is in the environment, never an
//! argument), the run's label, the extra environment, a fixed address on the
//! run's network, the sysctl `net.ipv4.ip_nonlocal_bind=1`, and the node's
//! host directory mounted at the same path (its data dir is in there).
//! After that it is only killed ([`kill`], SIGKILL, returning once the
//! process is gone), started again ([`start`]: same container, so same
//! arguments and same data), frozen ([`pause`], [`unpause`]) and finally
//! removed by force ([`remove`]).
//!
//! Errors name the operation and the container, then the daemon's answer.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! - Killing a container that is not running is not an error (the daemon's
//!   409 is taken as "already down"); pausing or unpausing one in the wrong
//!   state is.
//! - [`logs`] reads the whole log at once: the nodes of a round log a few MB.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use bollard::models::{
    ContainerCreateBody, ContainerState, EndpointIpamConfig, EndpointSettings, HostConfig, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, LogsOptions, RemoveContainerOptions,
};
use bollard::Docker;
use futures::TryStreamExt;
use kairos::launcher::AgentSpec;

use super::{ignore_not_found, is_status, Node};

/// The client gRPC port every node listens on, at its own address.
pub(super) const GRPC_PORT: u16 = 7101;
/// The peer port (Raft between nodes) of every node.
const PEER_PORT: u16 = 7401;
/// The HTTP (health, metrics) port of every node.
const HTTP_PORT: u16 = 7201;
/// The worker-network (ractor_cluster) port of every node.
const CLUSTER_PORT: u16 = 7301;
/// Lets a node bind its address while its container is disconnected.
const NONLOCAL_BIND_SYSCTL: (&str, &str) = ("net.ipv4.ip_nonlocal_bind", "1");
/// The signal of a kill fault: no chance to clean up.
const KILL_SIGNAL: &str = "KILL";

/// What a node's container is made from, besides the node itself.
pub(super) struct Spec<'a> {
    /// The run's image tag.
    pub(super) image: &'a str,
    /// The run's network, which the container joins at the node's address.
    pub(super) network: &'a str,
    /// The run's label, `(key, value)`.
    pub(super) label: (&'a str, &'a str),
    /// Extra environment variables, `(name, value)`.
    pub(super) env: &'a [(String, String)],
    /// The arguments after the entrypoint: [`agent_args`].
    pub(super) args: Vec<String>,
    /// The node's host directory, mounted read-write at the same path.
    pub(super) shared_dir: &'a Path,
}

/// The `kairos agent` of `node`, listening on its own address, in a cluster
/// of `nodes` (their peer addresses), with its data in `data_dir` (a path
/// the container and the host share); `extra` is appended to its arguments. Arguments and environment
/// are the launcher's ([`AgentSpec::agent_args`], [`AgentSpec::agent_env`]),
/// as for every other node.
pub(super) fn agent_spec(
    node: &Node,
    nodes: &[Node],
    data_dir: &Path,
    cookie: &str,
    extra: &[String],
) -> AgentSpec {
    let at = |ip: std::net::Ipv4Addr, port: u16| SocketAddr::from((ip, port));
    AgentSpec {
        id: node.id,
        data_dir: data_dir.to_path_buf(),
        grpc_addr: at(node.ip, GRPC_PORT),
        peer_addr: at(node.ip, PEER_PORT),
        http_addr: at(node.ip, HTTP_PORT),
        cluster_addr: at(node.ip, CLUSTER_PORT),
        initial_cluster: nodes
            .iter()
            .map(|n| (n.id, at(n.ip, PEER_PORT).to_string()))
            .collect(),
        cookie: cookie.to_string(),
        extra_args: extra.to_vec(),
    }
}

/// The container's configuration: `spec` at the node's address.
fn create_body(node: &Node, spec: Spec<'_>) -> ContainerCreateBody {
    let endpoint = EndpointSettings {
        ipam_config: Some(EndpointIpamConfig {
            ipv4_address: Some(node.ip.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (sysctl, value) = NONLOCAL_BIND_SYSCTL;
    ContainerCreateBody {
        image: Some(spec.image.to_string()),
        cmd: Some(spec.args),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(HashMap::from([(
            spec.label.0.to_string(),
            spec.label.1.to_string(),
        )])),
        host_config: Some(HostConfig {
            network_mode: Some(spec.network.to_string()),
            binds: Some(vec![format!("{dir}:{dir}", dir = spec.shared_dir.display())]),
            sysctls: Some(HashMap::from([(sysctl.to_string(), value.to_string())])),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(spec.network.to_string(), endpoint)])),
        }),
        ..Default::default()
    }
}

/// Creates the node's container and starts it.
pub(super) async fn run(docker: &Docker, node: &Node, spec: Spec<'_>) -> Result<()> {
    let options = CreateContainerOptions {
        name: Some(node.container.clone()),
        ..Default::default()
    };
    docker
        .create_container(Some(options), create_body(node, spec))
        .await
        .with_context(|| format!("creating container {}", node.container))?;
    start(docker, &node.container).await
}

/// Starts the (stopped) container.
pub(super) async fn start(docker: &Docker, name: &str) -> Result<()> {
    docker
        .start_container(name, None)
        .await
        .with_context(|| format!("starting container {name}"))
}

/// SIGKILL to the container's process, returning once the container has
/// stopped (its files are then the harness's to tear); a container that is
/// not running is left as it is.
pub(super) async fn kill(docker: &Docker, name: &str) -> Result<()> {
    let options = KillContainerOptions {
        signal: KILL_SIGNAL.to_string(),
    };
    match docker.kill_container(name, Some(options)).await {
        Err(err) if is_status(&err, 409) => return Ok(()),
        result => result.with_context(|| format!("killing container {name}"))?,
    }
    // The daemon answers once the signal is sent; the process may still be
    // finishing a write. A killed process is gone within milliseconds.
    for _ in 0..KILL_POLLS {
        if !state(docker, name).await?.running.unwrap_or(false) {
            return Ok(());
        }
        tokio::time::sleep(KILL_POLL).await;
    }
    anyhow::bail!(
        "container {name} still runs {:?} after SIGKILL",
        KILL_POLL * KILL_POLLS
    )
}

/// How often, and how many times, [`kill`] looks whether the container stopped.
const KILL_POLL: Duration = Duration::from_millis(20);
const KILL_POLLS: u32 = 500;

/// The container's state (running, exit code, process id).
pub(super) async fn state(docker: &Docker, name: &str) -> Result<ContainerState> {
    let inspect = docker
        .inspect_container(name, None)
        .await
        .with_context(|| format!("inspecting container {name}"))?;
    inspect
        .state
        .with_context(|| format!("the daemon gave no state for container {name}"))
}

/// Freezes every process of the container.
pub(super) async fn pause(docker: &Docker, name: &str) -> Result<()> {
    docker
        .pause_container(name)
        .await
        .with_context(|| format!("pausing container {name}"))
}

/// Thaws a frozen container.
pub(super) async fn unpause(docker: &Docker, name: &str) -> Result<()> {
    docker
        .unpause_container(name)
        .await
        .with_context(|| format!("unpausing container {name}"))
}

/// Whether the container runs (paused counts as running).
pub(super) async fn is_running(docker: &Docker, name: &str) -> Result<bool> {
    Ok(state(docker, name).await?.running.unwrap_or(false))
}

/// The container's stdout and stderr, in the order they were written.
pub(super) async fn logs(docker: &Docker, name: &str) -> Result<String> {
    let options = LogsOptions {
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let chunks: Vec<_> = docker
        .logs(name, Some(options))
        .try_collect()
        .await
        .with_context(|| format!("reading the log of container {name}"))?;
    let bytes: Vec<u8> = chunks.iter().flat_map(|chunk| chunk.as_ref().to_vec()).collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Removes the container by force (running or not); one that is not there counts as removed.
pub(super) async fn remove(docker: &Docker, name: &str) -> Result<()> {
    let options = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    ignore_not_found(docker.remove_container(name, Some(options)).await)
        .with_context(|| format!("removing container {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn nodes() -> Vec<Node> {
        (1..=3)
            .map(|id| Node {
                id,
                ip: Ipv4Addr::new(172, 18, 0, 10 + id as u8),
                container: format!("kchaos-r-n{id}"),
            })
            .collect()
    }

    #[test]
    fn agent_args_listen_on_the_node_address_and_name_every_member() {
        let nodes = nodes();
        let spec = agent_spec(
            &nodes[1],
            &nodes,
            Path::new("/run/chaos/node-2/data"),
            "a-chaos-cookie-of-enough-bytes",
            &["--workers".into(), "4".into()],
        );
        let joined = spec.agent_args().join(" ");
        assert!(
            joined.starts_with("agent --node-id=2 --data-dir=/run/chaos/node-2/data "),
            "{joined}"
        );
        assert!(joined.contains("--grpc-addr=172.18.0.12:7101"), "{joined}");
        assert!(joined.contains("--http-addr=172.18.0.12:7201"), "{joined}");
        assert!(joined.contains("--cluster-addr=172.18.0.12:7301"), "{joined}");
        assert!(joined.contains("--peer-addr=172.18.0.12:7401"), "{joined}");
        assert!(
            !joined.contains("a-chaos-cookie"),
            "the cookie is not an argument: {joined}"
        );
        assert_eq!(
            spec.agent_env(),
            [(
                "KAIROS_CLUSTER_COOKIE".to_string(),
                "a-chaos-cookie-of-enough-bytes".to_string()
            )]
        );
        assert!(
            joined.contains("--initial-cluster=1=172.18.0.11:7401,2=172.18.0.12:7401,3=172.18.0.13:7401"),
            "{joined}"
        );
        assert!(joined.ends_with(" --workers 4"), "{joined}");
    }

    #[test]
    fn container_joins_the_network_at_the_node_address_with_nonlocal_bind_and_its_host_dir() {
        let nodes = nodes();
        let env = [("RUST_LOG".to_string(), "info".to_string())];
        let spec = Spec {
            image: "kchaos-r-image:latest",
            network: "kchaos-r",
            label: ("kairos-chaos", "r"),
            env: &env,
            args: vec!["agent".into()],
            shared_dir: Path::new("/run/chaos/node-1"),
        };
        let body = create_body(&nodes[0], spec);
        assert_eq!(body.image.as_deref(), Some("kchaos-r-image:latest"));
        assert_eq!(body.cmd, Some(vec!["agent".to_string()]));
        assert_eq!(body.env, Some(vec!["RUST_LOG=info".to_string()]));
        assert_eq!(body.labels.unwrap()["kairos-chaos"], "r");
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("kchaos-r"));
        assert_eq!(
            host.binds,
            Some(vec!["/run/chaos/node-1:/run/chaos/node-1".to_string()])
        );
        assert_eq!(host.sysctls.unwrap()["net.ipv4.ip_nonlocal_bind"], "1");
        let endpoints = body.networking_config.unwrap().endpoints_config.unwrap();
        let address = endpoints["kchaos-r"]
            .ipam_config
            .as_ref()
            .unwrap()
            .ipv4_address
            .clone();
        assert_eq!(address.as_deref(), Some("172.18.0.11"));
    }
}
