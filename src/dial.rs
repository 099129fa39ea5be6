//! Where a node dials its peers.
//!
//! A node reaches a peer's Raft service at the peer address in the membership
//! (`--peer-addr`) and the peer's worker network at the address the peer
//! reports. A rewrite changes only where the bytes go: peer authentication
//! runs end to end, and a TLS client still expects the certificate of the
//! address as the membership names it. A test
//! harness that wants to cut, slow or break individual links (the chaos suite)
//! starts each node with a *dial map*, `--dial-map "from=to,..."`, and every
//! outgoing peer connection to `from` then goes to `to` instead — a TCP proxy
//! the harness controls. The membership and what peers report are unchanged,
//! so the map is local to one node and invisible to the others.
//!
//! The map is parsed once from the agent's configuration and carried in the
//! node's options ([`crate::node::NodeOptions::dial_map`]); everything that
//! dials a peer (the Raft network, the node's forwarding and probe clients,
//! the worker network's connector) asks the node's map ([`DialMap::resolve`]).
//! Nothing is process-wide, so two nodes in one process may dial differently.
//! Without a map, addresses are used as they are.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Peer address rewrites of one node: `from` is dialed at `to`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DialMap {
    /// Address as peers are known (membership, reports) → address to dial.
    rewrites: BTreeMap<String, String>,
}

impl DialMap {
    /// Parses `host:port=host:port,...` (empty: no rewrites).
    pub fn parse(value: &str) -> Result<DialMap> {
        let mut rewrites = BTreeMap::new();
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || Error::InvalidArgument(format!("--dial-map: {part:?} is not host:port=host:port"));
            let (from, to) = part.split_once('=').ok_or_else(bad)?;
            let (from, to) = (from.trim(), to.trim());
            let is_addr = |a: &str| {
                a.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            };
            if !is_addr(from) || !is_addr(to) {
                return Err(bad());
            }
            rewrites.insert(from.to_string(), to.to_string());
        }
        Ok(DialMap { rewrites })
    }

    /// The address to dial to reach `addr`.
    pub fn resolve<'a>(&'a self, addr: &'a str) -> &'a str {
        self.rewrites.get(addr).map_or(addr, String::as_str)
    }

    /// How many addresses are rewritten.
    pub fn len(&self) -> usize {
        self.rewrites.len()
    }

    /// Whether no address is rewritten.
    pub fn is_empty(&self) -> bool {
        self.rewrites.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_refuses_garbage() {
        let map = DialMap::parse("127.0.0.1:7102=127.0.0.1:9102, 127.0.0.1:7302=127.0.0.1:9302").unwrap();
        assert_eq!(map.resolve("127.0.0.1:7102"), "127.0.0.1:9102");
        assert_eq!(map.len(), 2);
        for bad in ["127.0.0.1:1", "a=b", "127.0.0.1:1=127.0.0.1", "=127.0.0.1:1"] {
            let e = DialMap::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--dial-map"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_address_not_in_the_map_is_dialed_as_it_is() {
        let map = DialMap::parse("127.0.0.1:7102=127.0.0.1:9102").unwrap();
        assert_eq!(map.resolve("127.0.0.1:7103"), "127.0.0.1:7103");
        assert_eq!(DialMap::default().resolve("127.0.0.1:7102"), "127.0.0.1:7102");
    }
}
