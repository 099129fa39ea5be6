//! The run's network and the nodes' fixed addresses on it.
//!
//! A container gets a fixed address only on a network whose subnet was given
//! when it was created, but the harness cannot know a free subnet in
//! advance. [`create_with_fixed_subnet`] lets Docker choose one (a plain
//! create), reads it back, removes the network and creates it again with that
//! subnet and gateway spelled out; another network may take the subnet in
//! between, so this is tried [`NETWORK_ATTEMPTS`] times. [`plan_nodes`] then
//! puts node `i` at host part `10 + i`.
//!
//! A partition is made of [`disconnect`]s; [`connect`] brings a node back at
//! its own address, and [`is_attached`] tells which nodes are on the network.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! - IPv4 only: the first IPv4 subnet of the network is used, any IPv6 one is
//!   ignored.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use anyhow::{anyhow, bail, Context, Result};
use bollard::models::{
    ContainerInspectResponse, EndpointIpamConfig, EndpointSettings, Ipam, IpamConfig, NetworkConnectRequest,
    NetworkCreateRequest, NetworkDisconnectRequest, NetworkInspect,
};
use bollard::Docker;

use super::{container_name, ignore_not_found, Node, NodeId};

/// Node `i` gets the host part `FIRST_HOST_OFFSET + i` in the network's subnet.
const FIRST_HOST_OFFSET: u32 = 10;
/// Attempts at creating the network (another network may take the subnet in between).
const NETWORK_ATTEMPTS: usize = 3;

/// An IPv4 subnet such as 172.18.0.0/16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Subnet {
    /// The subnet's first address (host bits zero).
    network: Ipv4Addr,
    /// Leading bits that name the subnet (0..=32).
    prefix_len: u8,
}

impl Subnet {
    fn parse(text: &str) -> Result<Subnet> {
        let (address, prefix) = text
            .split_once('/')
            .ok_or_else(|| anyhow!("subnet {text:?} has no prefix length"))?;
        let address: Ipv4Addr = address.parse().with_context(|| format!("subnet {text:?}"))?;
        let prefix_len: u8 = prefix.parse().with_context(|| format!("subnet {text:?}"))?;
        if prefix_len > 32 {
            bail!("subnet {text:?}: prefix length above 32");
        }
        let mask = if prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - prefix_len)
        };
        Ok(Subnet {
            network: Ipv4Addr::from(u32::from(address) & mask),
            prefix_len,
        })
    }

    /// The address with host part `host`; an error if the subnet has no such
    /// usable address (the network and broadcast addresses are not usable).
    fn host(&self, host: u32) -> Result<Ipv4Addr> {
        let host_bits = 32 - u32::from(self.prefix_len);
        let size: u64 = 1u64 << host_bits;
        if host == 0 || u64::from(host) >= size.saturating_sub(1) {
            bail!("subnet {self} has no usable host {host}");
        }
        Ok(Ipv4Addr::from(u32::from(self.network) + host))
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Node `i` at host part `10 + i`, named `kchaos-<run_id>-n<i>`.
pub(super) fn plan_nodes(run_id: &str, count: u64, subnet: Subnet, gateway: Ipv4Addr) -> Result<Vec<Node>> {
    (1..=count)
        .map(|id| {
            let host = u32::try_from(id)
                .ok()
                .and_then(|id| id.checked_add(FIRST_HOST_OFFSET))
                .ok_or_else(|| anyhow!("node id {id} too large"))?;
            let ip = subnet.host(host)?;
            if ip == gateway {
                bail!("node {id}'s address {ip} is the gateway of {subnet}");
            }
            Ok(Node {
                id,
                ip,
                container: container_name(run_id, id),
            })
        })
        .collect()
}

/// Creates the network `name` with a subnet Docker chose, given explicitly
/// (see the module documentation); its subnet and gateway. A network of
/// that name that already exists is replaced.
pub(super) async fn create_with_fixed_subnet(
    docker: &Docker,
    name: &str,
    label: (&str, &str),
) -> Result<(Subnet, Ipv4Addr)> {
    remove(docker, name).await?;
    let mut last_error = None;
    for _ in 0..NETWORK_ATTEMPTS {
        match create_once(docker, name, label).await {
            Ok(config) => return Ok(config),
            Err(err) => {
                remove(docker, name).await?;
                last_error = Some(err);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow!("network {name} not created")))
}

/// One attempt of [`create_with_fixed_subnet`].
async fn create_once(docker: &Docker, name: &str, label: (&str, &str)) -> Result<(Subnet, Ipv4Addr)> {
    create(docker, name, label, None).await?;
    let inspect = docker
        .inspect_network(name, None)
        .await
        .with_context(|| format!("inspecting network {name}"))?;
    let (subnet, gateway) = ipv4_config(&inspect)?;
    remove(docker, name).await?;
    create(docker, name, label, Some((subnet, gateway))).await?;
    Ok((subnet, gateway))
}

/// A bridge network with the label, and the given subnet and gateway if any.
async fn create(
    docker: &Docker,
    name: &str,
    (key, value): (&str, &str),
    fixed: Option<(Subnet, Ipv4Addr)>,
) -> Result<()> {
    let ipam = fixed.map(|(subnet, gateway)| Ipam {
        config: Some(vec![IpamConfig {
            subnet: Some(subnet.to_string()),
            gateway: Some(gateway.to_string()),
            ..Default::default()
        }]),
        ..Default::default()
    });
    let request = NetworkCreateRequest {
        name: name.to_string(),
        labels: Some(HashMap::from([(key.to_string(), value.to_string())])),
        ipam,
        ..Default::default()
    };
    docker
        .create_network(request)
        .await
        .with_context(|| format!("creating network {name}"))?;
    Ok(())
}

/// The network's first IPv4 subnet and its gateway (the subnet's first host
/// if Docker names none).
fn ipv4_config(inspect: &NetworkInspect) -> Result<(Subnet, Ipv4Addr)> {
    let configs = inspect.ipam.as_ref().and_then(|ipam| ipam.config.as_deref());
    for config in configs.unwrap_or_default() {
        let Some(Ok(subnet)) = config.subnet.as_deref().map(Subnet::parse) else {
            continue;
        };
        let gateway = match config.gateway.as_deref().filter(|g| !g.is_empty()) {
            Some(gateway) => gateway.parse().with_context(|| format!("gateway {gateway:?}"))?,
            None => subnet.host(1)?,
        };
        return Ok((subnet, gateway));
    }
    bail!(
        "network {:?} has no IPv4 subnet",
        inspect.name.as_deref().unwrap_or_default()
    )
}

/// Whether `container` (running or not) is connected to `network`.
pub(super) async fn is_attached(docker: &Docker, network: &str, container: &str) -> Result<bool> {
    let inspect = docker
        .inspect_container(container, None)
        .await
        .with_context(|| format!("inspecting container {container}"))?;
    Ok(attached_to(&inspect, network))
}

/// Whether an inspected container is connected to `network`.
fn attached_to(inspect: &ContainerInspectResponse, network: &str) -> bool {
    let networks = inspect
        .network_settings
        .as_ref()
        .and_then(|s| s.networks.as_ref());
    networks.is_some_and(|networks| networks.contains_key(network))
}

/// Connects the node's container to `network` at the node's own address.
pub(super) async fn connect(docker: &Docker, network: &str, node: &Node) -> Result<()> {
    let request = NetworkConnectRequest {
        container: node.container.clone(),
        endpoint_config: Some(EndpointSettings {
            ipam_config: Some(EndpointIpamConfig {
                ipv4_address: Some(node.ip.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    docker
        .connect_network(network, request)
        .await
        .with_context(|| connection_context("connecting", node.id, &node.container, network))
}

/// Disconnects the node's container from `network`.
pub(super) async fn disconnect(docker: &Docker, network: &str, node: &Node) -> Result<()> {
    let request = NetworkDisconnectRequest {
        container: node.container.clone(),
        force: None,
    };
    docker
        .disconnect_network(network, request)
        .await
        .with_context(|| connection_context("disconnecting", node.id, &node.container, network))
}

fn connection_context(verb: &str, id: NodeId, container: &str, network: &str) -> String {
    format!("{verb} node {id} (container {container}) and network {network}")
}

/// Removes the network; one that is not there counts as removed.
pub(super) async fn remove(docker: &Docker, name: &str) -> Result<()> {
    ignore_not_found(docker.remove_network(name).await).with_context(|| format!("removing network {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_hosts() {
        let subnet = Subnet::parse("172.18.0.0/16").expect("subnet");
        assert_eq!(subnet.host(11).expect("host"), Ipv4Addr::new(172, 18, 0, 11));
        assert_eq!(
            Subnet::parse("10.0.0.77/24").expect("subnet").to_string(),
            "10.0.0.0/24"
        );
        let small = Subnet::parse("10.0.0.0/29").expect("subnet");
        assert!(small.host(7).is_err(), "broadcast");
        assert!(small.host(11).is_err(), "outside");
    }

    #[test]
    fn nodes_are_planned_from_host_eleven_and_never_on_the_gateway() {
        let subnet = Subnet::parse("172.18.0.0/16").expect("subnet");
        let nodes = plan_nodes("r", 3, subnet, Ipv4Addr::new(172, 18, 0, 1)).expect("plan");
        let planned: Vec<(NodeId, String, String)> = nodes
            .iter()
            .map(|n| (n.id, n.ip.to_string(), n.container.clone()))
            .collect();
        assert_eq!(planned[0], (1, "172.18.0.11".into(), "kchaos-r-n1".into()));
        assert_eq!(planned[2], (3, "172.18.0.13".into(), "kchaos-r-n3".into()));
        assert!(plan_nodes("r", 1, subnet, Ipv4Addr::new(172, 18, 0, 11)).is_err());
    }

    #[test]
    fn network_inspect_gives_subnet_and_gateway() {
        let json = r#"{"Name":"x","IPAM":{"Config":[{"Subnet":"fd00::/64"},
            {"Subnet":"172.19.0.0/16","Gateway":"172.19.0.1"}]}}"#;
        let inspect: NetworkInspect = serde_json::from_str(json).expect("inspect answer");
        let (subnet, gateway) = ipv4_config(&inspect).expect("config");
        assert_eq!(subnet.to_string(), "172.19.0.0/16");
        assert_eq!(gateway, Ipv4Addr::new(172, 19, 0, 1));
        let no_gateway: NetworkInspect =
            serde_json::from_str(r#"{"IPAM":{"Config":[{"Subnet":"10.9.0.0/24"}]}}"#).expect("answer");
        assert_eq!(
            ipv4_config(&no_gateway).expect("config").1,
            Ipv4Addr::new(10, 9, 0, 1)
        );
        let ipv6_only: NetworkInspect =
            serde_json::from_str(r#"{"IPAM":{"Config":[{"Subnet":"fd00::/64"}]}}"#).expect("answer");
        assert!(ipv4_config(&ipv6_only).is_err());
    }

    #[test]
    fn attached_containers_from_inspect() {
        let attached: ContainerInspectResponse =
            serde_json::from_str(r#"{"Name":"/a","NetworkSettings":{"Networks":{"net":{}}}}"#).expect("a");
        let detached: ContainerInspectResponse =
            serde_json::from_str(r#"{"Name":"/b","NetworkSettings":{"Networks":{}}}"#).expect("b");
        assert!(attached_to(&attached, "net"));
        assert!(!attached_to(&attached, "other"));
        assert!(!attached_to(&detached, "net"));
    }
}
