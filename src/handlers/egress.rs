//! The fence around outbound calls: which destinations the `http` job type
//! may reach (`--http-allow`).
//!
//! A job's author chooses the URL an `http` job calls, and the node makes
//! the call from inside the operator's network. Without a fence that is a
//! server-side request forgery: a job can call the node's own gRPC API, a
//! database on loopback, or the cloud metadata service at
//! `169.254.169.254` and read the answer back from the run's output. An
//! [`EgressPolicy`] says which destinations are allowed; everything else is
//! refused before a connection is made.
//!
//! # Patterns
//!
//! The flag is a comma-separated list; a destination is allowed when any
//! pattern allows it:
//!
//! * a CIDR block (`10.0.0.0/8`, `fd00::/8`) or a single address
//!   (`192.0.2.7`, `::1`, `[::1]`) allows those addresses;
//! * a host name (`api.example.com`) allows a URL with exactly that host,
//!   whatever it resolves to; a glob `*.example.com` allows every name below
//!   `example.com` (not `example.com` itself, which needs its own pattern);
//! * `loopback` allows `127.0.0.0/8` and `::1`;
//! * `public` allows every address that is not loopback, link-local
//!   (`169.254.0.0/16`, the cloud metadata address among them, and
//!   `fe80::/10`), unspecified (`0.0.0.0/8`, `::`), multicast, broadcast, or
//!   one of this node's own listener addresses (its gRPC, HTTP and worker
//!   network addresses and its advertised one; a listener on `0.0.0.0` or
//!   `::` stands for every address of the host's interfaces). Private
//!   ranges (`10/8`, `192.168/16`, ...) are public in this sense.
//!
//! The default, when the flag is absent, is `public`. `kairos dev` passes
//! `public,loopback`.
//!
//! # Where the fence is checked
//!
//! Host-name patterns match the URL's host; address patterns match the
//! addresses the host resolves to. The check runs where the address is
//! known, so that a name resolving to `127.0.0.1` is refused like the
//! literal:
//!
//! * a URL whose host is an IP literal never reaches a resolver; it is
//!   checked before the request is sent ([`EgressPolicy::check_url`]);
//! * a host name goes through [`FencedResolver`], the client's DNS resolver,
//!   which resolves it, keeps the allowed addresses and refuses the name when
//!   none is left — the connection is made only to addresses that passed;
//! * every redirect hop is checked by [`redirect_policy`] before anything
//!   else is decided about it.
//!
//! Addresses are compared in canonical form: an IPv4-mapped IPv6 address
//! (`::ffff:127.0.0.1`) is the IPv4 address it maps, so it cannot smuggle a
//! loopback address past an IPv4 rule.
//!
//! A refusal is a [`Refusal`], whose message names the rule that refused,
//! e.g. `destination 169.254.169.254 refused by --http-allow (link-local
//! addresses are not allowed)`; the `http` handler reports it as the
//! non-retryable kind `http_refused`.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! * The host's interface addresses (for a listener on `0.0.0.0` or `::`)
//!   are read once, when the policy is built at start; an address the host
//!   gains later is not excluded from `public`.
//! * When `HTTP_PROXY`/`HTTPS_PROXY` send a call through a proxy, the
//!   resolver sees the proxy's name, not the URL's: the URL's host is then
//!   checked only when it is an IP literal, and the proxy decides the rest.
//! * Redirects are not followed (see the `http` handler). A hop is checked
//!   for what is known without resolving it: a hop to a refused IP literal
//!   fails with the rule; a hop to a host name ends as the 3xx answer, and
//!   the name is never resolved nor connected to.
//! * NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`) addresses count as the
//!   IPv6 addresses they are, not as the IPv4 addresses they embed.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// The flag (and, in messages, the rule) that sets the policy.
pub const FLAG: &str = "--http-allow";
/// The policy when the flag is absent.
pub const DEFAULT_ALLOW: &str = "public";

/// One item of the allow list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    /// `public`: anything but the special addresses and the node's own.
    Public,
    /// `loopback`: 127.0.0.0/8 and ::1.
    Loopback,
    /// A CIDR block or a single address (a /32 or /128), canonical and
    /// without host bits.
    Network {
        /// The first address of the block.
        base: IpAddr,
        /// Leading bits that must match.
        prefix: u8,
    },
    /// A host name, lower case, without a trailing dot.
    Host(String),
    /// `*.suffix`: names strictly below `suffix`.
    Subdomains(String),
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Public => f.write_str("public"),
            Pattern::Loopback => f.write_str("loopback"),
            Pattern::Network { base, prefix } => write!(f, "{base}/{prefix}"),
            Pattern::Host(name) => f.write_str(name),
            Pattern::Subdomains(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// The addresses `public` leaves out, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Special {
    Loopback,
    LinkLocal,
    Unspecified,
    Multicast,
    Broadcast,
    OwnListener,
}

impl Special {
    /// The reason a refusal gives.
    fn reason(self) -> &'static str {
        match self {
            Special::Loopback => "loopback addresses are not allowed",
            Special::LinkLocal => "link-local addresses are not allowed",
            Special::Unspecified => "unspecified addresses are not allowed",
            Special::Multicast => "multicast addresses are not allowed",
            Special::Broadcast => "broadcast addresses are not allowed",
            Special::OwnListener => "it is one of this node's own listener addresses",
        }
    }
}

/// A destination the policy does not allow; its message names the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("destination {destination} refused by {FLAG} ({reason})")]
pub struct Refusal {
    /// The address, or `name (address)` for a resolved name.
    destination: String,
    /// Which rule refused it.
    reason: String,
}

/// Which destinations outbound calls may reach (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressPolicy {
    /// The allow list, in the order given.
    patterns: Vec<Pattern>,
    /// This node's own addresses, canonical: never `public`.
    own_addresses: BTreeSet<IpAddr>,
}

impl Default for EgressPolicy {
    /// `public`, knowing no listener address of its own.
    fn default() -> Self {
        EgressPolicy::parse(DEFAULT_ALLOW, &[]).expect("the default allow list parses")
    }
}

impl fmt::Display for EgressPolicy {
    /// The allow list in canonical form, e.g. `public,loopback,10.0.0.0/8`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.patterns.iter().map(Pattern::to_string).collect();
        f.write_str(&items.join(","))
    }
}

impl EgressPolicy {
    /// Parses the allow list `spec` for a node listening on `own_listeners`
    /// (a listener on an unspecified address stands for every interface
    /// address of the host). The error names the offending item.
    pub fn parse(spec: &str, own_listeners: &[SocketAddr]) -> Result<EgressPolicy, String> {
        let mut patterns = Vec::new();
        for item in spec.split(',').map(str::trim) {
            let pattern = parse_pattern(item)?;
            if !patterns.contains(&pattern) {
                patterns.push(pattern);
            }
        }
        Ok(EgressPolicy {
            patterns,
            own_addresses: own_addresses(own_listeners),
        })
    }

    /// Checks the host of `url` when it is an IP literal (which no resolver
    /// sees); a host name is left to [`FencedResolver`].
    pub fn check_url(&self, url: &Url) -> Result<(), Refusal> {
        // The URL parser has already turned every IPv4 form (`2130706433`,
        // `0x7f.1`) into dotted decimal, and IPv6 hosts come in brackets.
        match url.host_str().and_then(parse_ip) {
            Some(ip) => self.check_ip(ip),
            None => Ok(()),
        }
    }

    /// Whether a host-name pattern allows `host`, whatever it resolves to.
    pub fn allows_name(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.patterns.iter().any(|p| match p {
            Pattern::Host(name) => *name == host,
            Pattern::Subdomains(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            _ => false,
        })
    }

    /// Checks one address against the address patterns.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = canonical(ip);
        let special = self.special(ip);
        let allowed = self.patterns.iter().any(|p| match p {
            Pattern::Public => special.is_none(),
            Pattern::Loopback => ip.is_loopback(),
            Pattern::Network { base, prefix } => in_network(ip, *base, *prefix),
            Pattern::Host(_) | Pattern::Subdomains(_) => false,
        });
        if allowed {
            return Ok(());
        }
        let reason = match special {
            Some(special) => special.reason().to_string(),
            None => format!("it matches none of {:?}", self.to_string()),
        };
        Err(Refusal {
            destination: ip.to_string(),
            reason,
        })
    }

    /// The addresses `host` resolved to that may be called: all of them when
    /// a name pattern allows `host`, else those an address pattern allows;
    /// refused when none is left.
    pub fn filter_resolved(&self, host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refusal> {
        if self.allows_name(host) {
            return Ok(addrs);
        }
        let mut first_refusal = None;
        let mut allowed = Vec::with_capacity(addrs.len());
        for addr in addrs {
            match self.check_ip(addr.ip()) {
                Ok(()) => allowed.push(addr),
                Err(refusal) => {
                    first_refusal.get_or_insert(refusal);
                }
            }
        }
        match (allowed.is_empty(), first_refusal) {
            (true, Some(refusal)) => Err(Refusal {
                destination: format!("{host} ({})", refusal.destination),
                reason: refusal.reason,
            }),
            _ => Ok(allowed),
        }
    }

    /// Why `public` leaves `ip` (canonical) out, if it does.
    fn special(&self, ip: IpAddr) -> Option<Special> {
        let special = match ip {
            IpAddr::V4(v4) => {
                if v4.is_loopback() {
                    Some(Special::Loopback)
                } else if v4.is_link_local() {
                    Some(Special::LinkLocal)
                } else if v4.octets()[0] == 0 {
                    // 0.0.0.0/8, "this network": 0.0.0.0 reaches the host itself.
                    Some(Special::Unspecified)
                } else if v4.is_multicast() {
                    Some(Special::Multicast)
                } else if v4.is_broadcast() {
                    Some(Special::Broadcast)
                } else {
                    None
                }
            }
            IpAddr::V6(v6) => {
                if v6.is_loopback() {
                    Some(Special::Loopback)
                } else if v6.segments()[0] & 0xffc0 == 0xfe80 {
                    Some(Special::LinkLocal)
                } else if v6.is_unspecified() {
                    Some(Special::Unspecified)
                } else if v6.is_multicast() {
                    Some(Special::Multicast)
                } else {
                    None
                }
            }
        };
        special.or_else(|| self.own_addresses.contains(&ip).then_some(Special::OwnListener))
    }
}

/// `ip`, with an IPv4-mapped IPv6 address turned into the IPv4 one.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The address as a number and its width in bits.
fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

/// The mask of the leading `prefix` bits of a `width`-bit address.
fn mask(prefix: u8, width: u8) -> u128 {
    let all = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    match prefix {
        0 => 0,
        p => all & !((1u128 << (width - p)) - 1),
    }
}

/// Whether `ip` lies in `base/prefix` (both canonical; families must agree).
fn in_network(ip: IpAddr, base: IpAddr, prefix: u8) -> bool {
    let ((ip_bits, width), (base_bits, base_width)) = (bits(ip), bits(base));
    width == base_width && ip_bits & mask(prefix, width) == base_bits
}

/// One item of the flag; the error quotes it.
fn parse_pattern(item: &str) -> Result<Pattern, String> {
    let fail = |problem: &str| Err(format!("{item:?} {problem}"));
    if item.is_empty() {
        return Err("empty item (two commas in a row, or a comma at an end)".into());
    }
    match item.to_ascii_lowercase().as_str() {
        "public" => return Ok(Pattern::Public),
        "loopback" => return Ok(Pattern::Loopback),
        _ => {}
    }
    if let Some((address, prefix)) = item.split_once('/') {
        let Some(base) = parse_ip(address) else {
            return fail("is not a CIDR block: the part before '/' is not an IP address");
        };
        let (base_bits, width) = bits(base);
        let prefix = match prefix.parse::<u8>() {
            Ok(p) if p <= width && prefix.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => {
                return fail(&format!(
                    "is not a CIDR block: the prefix length must be 0-{width}"
                ))
            }
        };
        if base_bits & !mask(prefix, width) != 0 {
            let network = from_bits(base_bits & mask(prefix, width), width);
            return fail(&format!("has host bits set (did you mean {network}/{prefix}?)"));
        }
        return Ok(Pattern::Network { base, prefix });
    }
    if let Some(ip) = parse_ip(item) {
        let (_, width) = bits(ip);
        return Ok(Pattern::Network {
            base: ip,
            prefix: width,
        });
    }
    if item.contains(':') {
        return fail("is not an IP address, and ports are not part of patterns");
    }
    let name = item.trim_end_matches('.').to_ascii_lowercase();
    let (glob, name) = match name.strip_prefix("*.") {
        Some(suffix) => (true, suffix.to_string()),
        None => (false, name),
    };
    if name.contains('*') {
        return fail("is not a valid glob: '*' may only be the whole first label (*.example.com)");
    }
    match (check_host_name(&name), glob) {
        (Ok(()), true) => Ok(Pattern::Subdomains(name)),
        (Ok(()), false) => Ok(Pattern::Host(name)),
        (Err(problem), _) => fail(&problem),
    }
}

/// An IP address, with or without brackets, in canonical form.
fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    text.parse::<IpAddr>().ok().map(canonical)
}

/// The address of `width` bits with value `value`.
fn from_bits(value: u128, width: u8) -> IpAddr {
    match width {
        32 => IpAddr::V4(Ipv4Addr::from(value as u32)),
        _ => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// Whether `name` (lower case) is a DNS host name; the problem if not.
fn check_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("is not a host name (1 to 253 characters)".into());
    }
    if !name.is_ascii() {
        return Err("is not a host name: write an international name in its xn-- (punycode) form".into());
    }
    for label in name.split('.') {
        let valid = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!(
                "is not a host name: label {label:?} must be 1-63 letters, digits, '-' or '_', \
                 not starting or ending with '-'"
            ));
        }
    }
    if name
        .split('.')
        .all(|label| label.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("is neither an IP address nor a host name".into());
    }
    Ok(())
}

/// The canonical addresses of `listeners`; an unspecified one stands for
/// every interface address of the host.
fn own_addresses(listeners: &[SocketAddr]) -> BTreeSet<IpAddr> {
    let mut own = BTreeSet::new();
    for listener in listeners {
        let ip = canonical(listener.ip());
        if ip.is_unspecified() {
            own.extend(host_addresses());
        } else {
            own.insert(ip);
        }
    }
    own
}

/// Every address of the host's interfaces (none if they cannot be listed).
fn host_addresses() -> Vec<IpAddr> {
    let interfaces = match nix::ifaddrs::getifaddrs() {
        Ok(interfaces) => interfaces,
        Err(e) => {
            tracing::warn!("cannot list the host's addresses for {FLAG}: {e}");
            return Vec::new();
        }
    };
    interfaces
        .filter_map(|interface| interface.address)
        .filter_map(|address| {
            if let Some(v4) = address.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                address.as_sockaddr_in6().map(|v6| canonical(IpAddr::V6(v6.ip())))
            }
        })
        .collect()
}

/// The `http` client's DNS resolver: resolves with the system resolver,
/// then keeps only what the policy allows (see the module docs).
#[derive(Clone, Debug)]
pub struct FencedResolver {
    /// The policy every resolved name is checked against.
    policy: Arc<EgressPolicy>,
}

impl FencedResolver {
    /// A resolver checking against `policy`.
    pub fn new(policy: Arc<EgressPolicy>) -> FencedResolver {
        FencedResolver { policy }
    }
}

impl Resolve for FencedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = policy.filter_resolved(&host, addrs)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The `http` client's redirect policy: a hop the policy refuses fails the
/// call with the [`Refusal`]; any other hop is not followed (the 3xx is the
/// answer, see the `http` handler).
pub fn redirect_policy(policy: Arc<EgressPolicy>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| match policy.check_url(attempt.url()) {
        Err(refusal) => attempt.error(refusal),
        Ok(()) => attempt.stop(),
    })
}

/// The [`Refusal`] somewhere in `error`'s chain of sources, if any.
pub fn find_refusal<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refusal> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(refusal) = e.downcast_ref::<Refusal>() {
            return Some(refusal);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(spec: &str) -> EgressPolicy {
        EgressPolicy::parse(spec, &[]).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn allowed(policy: &EgressPolicy, address: &str) -> bool {
        policy.check_ip(ip(address)).is_ok()
    }

    #[test]
    fn the_default_is_public_and_refuses_the_special_addresses() {
        let p = EgressPolicy::default();
        assert_eq!(p.to_string(), "public");
        for good in [
            "93.184.216.34",
            "10.1.2.3",
            "192.168.0.1",
            "2001:db8::1",
            "fd00::1",
        ] {
            assert!(allowed(&p, good), "{good}");
        }
        let refused = [
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("::1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("169.254.0.0", "link-local"),
            ("fe80::1", "link-local"),
            ("febf:ffff::1", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("::", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
        ];
        for (address, class) in refused {
            let err = p.check_ip(ip(address)).unwrap_err().to_string();
            assert!(
                err.contains(&format!("({class} addresses are not allowed)")),
                "{address}: {err}"
            );
        }
        assert!(allowed(&p, "fec0::1"), "just past fe80::/10");
        assert!(allowed(&p, "169.255.0.1") && allowed(&p, "126.255.255.255") && allowed(&p, "128.0.0.0"));
    }

    #[test]
    fn the_refusal_message_names_the_rule() {
        let err = EgressPolicy::default()
            .check_ip(ip("169.254.169.254"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "destination 169.254.169.254 refused by --http-allow (link-local addresses are not allowed)"
        );
        let err = policy("10.0.0.0/8,*.example.com")
            .check_ip(ip("192.0.2.1"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "destination 192.0.2.1 refused by --http-allow (it matches none of \"10.0.0.0/8,*.example.com\")"
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_addresses_are_their_ipv4_address() {
        let p = EgressPolicy::default();
        for mapped in [
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
        ] {
            let err = p.check_ip(ip(mapped)).unwrap_err().to_string();
            assert!(err.contains("not allowed"), "{mapped}: {err}");
        }
        assert!(allowed(&p, "::ffff:93.184.216.34"));
        // An IPv4 block matches the mapped form; a mapped pattern is the IPv4 one.
        assert!(allowed(&policy("127.0.0.0/8"), "::ffff:127.0.0.9"));
        assert!(allowed(&policy("::ffff:10.0.0.1"), "10.0.0.1"));
        assert!(allowed(&policy("loopback"), "::ffff:127.0.0.1"));
    }

    #[test]
    fn cidr_blocks_match_exactly_their_range() {
        let p = policy("10.0.0.0/8,192.168.1.128/25,2001:db8::/32,198.51.100.7");
        for good in [
            "10.0.0.0",
            "10.255.255.255",
            "192.168.1.128",
            "192.168.1.255",
            "2001:db8::",
            "198.51.100.7",
        ] {
            assert!(allowed(&p, good), "{good}");
        }
        for bad in [
            "9.255.255.255",
            "11.0.0.0",
            "192.168.1.127",
            "2001:db9::",
            "198.51.100.8",
            "::a00:1",
        ] {
            assert!(!allowed(&p, bad), "{bad}");
        }
        // /0 is everything of its family, special addresses included; /32 and /128 one address.
        let all_v4 = policy("0.0.0.0/0");
        assert!(allowed(&all_v4, "127.0.0.1") && allowed(&all_v4, "169.254.169.254"));
        assert!(!allowed(&all_v4, "::1"), "an IPv4 block never matches IPv6");
        assert!(allowed(&policy("::/0"), "fe80::1"));
        assert!(allowed(&policy("169.254.169.254/32"), "169.254.169.254"));
        assert!(!allowed(&policy("169.254.169.254/32"), "169.254.169.253"));
        assert!(allowed(&policy("::1/128"), "::1"));
        assert!(allowed(&policy("[::1]"), "::1"));
        // A special address needs an explicit pattern even with `public`.
        assert!(allowed(&policy("public,169.254.169.254"), "169.254.169.254"));
    }

    #[test]
    fn the_nodes_own_listeners_are_not_public() {
        let listeners: [SocketAddr; 2] = [
            "192.0.2.10:7101".parse().unwrap(),
            "[2001:db8::5]:7201".parse().unwrap(),
        ];
        let p = EgressPolicy::parse("public", &listeners).unwrap();
        let err = p.check_ip(ip("192.0.2.10")).unwrap_err().to_string();
        assert!(
            err.ends_with("(it is one of this node's own listener addresses)"),
            "{err}"
        );
        assert!(!allowed(&p, "::ffff:192.0.2.10"));
        assert!(!allowed(&p, "2001:db8::5"));
        assert!(allowed(&p, "192.0.2.11"));
        // An explicit pattern still allows them; loopback listeners need `loopback` anyway.
        assert!(allowed(
            &EgressPolicy::parse("public,192.0.2.10", &listeners).unwrap(),
            "192.0.2.10"
        ));
        let on_loopback =
            EgressPolicy::parse("public,loopback", &["127.0.0.1:7101".parse().unwrap()]).unwrap();
        assert!(allowed(&on_loopback, "127.0.0.1"));
        // A listener on 0.0.0.0 stands for every interface address, loopback among them.
        let everywhere = EgressPolicy::parse("public", &["0.0.0.0:7101".parse().unwrap()]).unwrap();
        assert!(
            everywhere.own_addresses.contains(&ip("127.0.0.1")),
            "{everywhere:?}"
        );
    }

    #[test]
    fn host_names_and_globs_match_the_url_host() {
        let p = policy("api.example.com,*.internal.example.org.,Service.Local");
        assert!(p.allows_name("api.example.com"));
        assert!(p.allows_name("API.Example.com."));
        assert!(p.allows_name("service.local"));
        assert!(!p.allows_name("example.com"));
        assert!(!p.allows_name("xapi.example.com"));
        assert!(p.allows_name("a.internal.example.org"));
        assert!(p.allows_name("a.b.internal.example.org"));
        assert!(
            !p.allows_name("internal.example.org"),
            "a glob is strictly below its suffix"
        );
        assert!(!p.allows_name("evilinternal.example.org"));
        assert!(!p.allows_name(".internal.example.org"));
        // Name patterns say nothing about addresses, and address patterns nothing about names.
        assert!(!allowed(&p, "93.184.216.34"));
        assert!(!policy("public").allows_name("example.com"));
    }

    #[test]
    fn resolved_addresses_are_filtered_unless_the_name_is_allowed() {
        let addrs =
            |list: &[&str]| -> Vec<SocketAddr> { list.iter().map(|a| SocketAddr::new(ip(a), 0)).collect() };
        let p = policy("public,localhost.example");
        let mixed = addrs(&["127.0.0.1", "93.184.216.34", "::1"]);
        assert_eq!(
            p.filter_resolved("mixed.example", mixed).unwrap(),
            addrs(&["93.184.216.34"])
        );
        let err = p
            .filter_resolved("localhost", addrs(&["127.0.0.1", "::1"]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "destination localhost (127.0.0.1) refused by --http-allow (loopback addresses are not allowed)"
        );
        let by_name = p
            .filter_resolved("localhost.example", addrs(&["127.0.0.1"]))
            .unwrap();
        assert_eq!(by_name, addrs(&["127.0.0.1"]));
    }

    #[test]
    fn literal_urls_are_checked_and_names_left_to_the_resolver() {
        let p = EgressPolicy::default();
        let check = |url: &str| p.check_url(&Url::parse(url).unwrap()).map_err(|e| e.to_string());
        assert!(check("http://169.254.169.254/latest/meta-data/").is_err());
        assert!(check("http://[::ffff:127.0.0.1]:8080/").is_err());
        assert!(check("http://[fe80::1]/").is_err());
        // The URL parser reads these as IPv4 literals, so they are checked too.
        assert!(check("http://2130706433/").is_err(), "decimal 127.0.0.1");
        assert!(check("http://0x7f.1/").is_err(), "hex 127.0.0.1");
        assert!(check("http://93.184.216.34/").is_ok());
        assert!(check("http://localhost/").is_ok(), "a name: the resolver decides");
    }

    #[test]
    fn bad_patterns_are_refused_naming_the_item() {
        let cases = [
            ("", "empty item"),
            ("public,,loopback", "empty item"),
            ("public,", "empty item"),
            (
                "10.0.0.1/8",
                "\"10.0.0.1/8\" has host bits set (did you mean 10.0.0.0/8?)",
            ),
            ("10.0.0.0/33", "the prefix length must be 0-32"),
            ("::/129", "the prefix length must be 0-128"),
            ("10.0.0.0/+8", "the prefix length must be 0-32"),
            ("10.0.0.0/", "the prefix length must be 0-32"),
            ("fe80::1/10", "has host bits set (did you mean fe80::/10?)"),
            ("example.com/24", "the part before '/' is not an IP address"),
            ("10.0.0.1:80", "ports are not part of patterns"),
            ("foo*.example.com", "'*' may only be the whole first label"),
            ("*", "'*' may only be the whole first label"),
            ("*.*.example.com", "'*' may only be the whole first label"),
            ("*.", "'*' may only be the whole first label"),
            ("*.-a.com", "is not a host name"),
            ("bad_-.example.com", "not starting or ending with '-'"),
            ("a..b", "label \"\""),
            ("1.2.3", "is neither an IP address nor a host name"),
            ("256.1.1.1", "is neither an IP address nor a host name"),
            ("exämple.com", "punycode"),
        ];
        for (spec, expected) in cases {
            let err = EgressPolicy::parse(spec, &[]).unwrap_err();
            assert!(err.contains(expected), "{spec:?}: {err}");
        }
        // A single label is a host name (`db`, `metadata`), so a misspelt
        // class is one too: the agent logs the policy it runs with.
        assert_eq!(policy("pubic").patterns, [Pattern::Host("pubic".into())]);
    }

    #[test]
    fn the_canonical_form_lists_each_pattern_once() {
        let p = policy(" Public , loopback,10.0.0.0/8,public,[::1],*.Example.com ");
        assert_eq!(p.to_string(), "public,loopback,10.0.0.0/8,::1/128,*.example.com");
        assert_eq!(EgressPolicy::parse(&p.to_string(), &[]).unwrap(), p);
    }

    #[test]
    fn refusals_are_found_in_an_error_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Refusal);
        let refusal = EgressPolicy::default().check_ip(ip("127.0.0.1")).unwrap_err();
        let outer = Outer(refusal.clone());
        assert_eq!(find_refusal(&outer), Some(&refusal));
        assert_eq!(find_refusal(&std::io::Error::other("x")), None);
    }
}
