//! Where this node dials its peers.
//!
//! A node reaches a peer's Raft service at the gRPC address in the membership
//! and the peer's worker network at the address the peer reports. A test
//! harness that wants to cut, slow or break individual links (the chaos suite)
//! starts each node with a *dial map*, `--dial-map "from=to,..."`, and every
//! outgoing peer connection to `from` then goes to `to` instead — a TCP proxy
//! the harness controls. The membership and what peers report are unchanged,
//! so the map is local to one node and invisible to the others.
//!
//! The map is set once at start-up ([`install`]) and read on every dial
//! ([`resolve`]); without one, addresses are used as they are.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::error::{Error, Result};

static DIAL_MAP: OnceLock<BTreeMap<String, String>> = OnceLock::new();

/// Parses `host:port=host:port,...`.
pub fn parse_dial_map(value: &str) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
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
        map.insert(from.to_string(), to.to_string());
    }
    Ok(map)
}

/// Sets this process's dial map; only the first call has an effect.
pub fn install(map: BTreeMap<String, String>) {
    if !map.is_empty() {
        tracing::warn!(entries = map.len(), "peer addresses are rewritten by --dial-map");
    }
    let _ = DIAL_MAP.set(map);
}

/// The address to dial to reach `addr`.
pub fn resolve(addr: &str) -> &str {
    DIAL_MAP
        .get()
        .and_then(|map| map.get(addr))
        .map_or(addr, String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_refuses_garbage() {
        let map = parse_dial_map("127.0.0.1:7102=127.0.0.1:9102, 127.0.0.1:7302=127.0.0.1:9302").unwrap();
        assert_eq!(map["127.0.0.1:7102"], "127.0.0.1:9102");
        assert_eq!(map.len(), 2);
        for bad in ["127.0.0.1:1", "a=b", "127.0.0.1:1=127.0.0.1", "=127.0.0.1:1"] {
            let e = parse_dial_map(bad).unwrap_err().to_string();
            assert!(e.contains("--dial-map"), "{bad}: {e}");
        }
    }
}
