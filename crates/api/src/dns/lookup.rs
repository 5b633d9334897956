//! What a name under the agent's domain asks for, in Consul's DNS forms:
//! - `[tag.]<service>.service[.<dc>].<domain>` and RFC 2782's `_<service>._<tag>.service…`
//!   (`_tcp` as the tag means any tag);
//! - `<node>.node[.<dc>].<domain>`;
//! - `<hex address>.addr[.<dc>].<domain>` (8 hex digits for IPv4, 32 for IPv6), the names
//!   SRV answers give service instances that have their own address;
//! - reverse names (`4.3.2.1.in-addr.arpa`, 32 nibbles under `ip6.arpa`), outside the domain.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::wire::Name;

/// A name's meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Healthy instances of a service, with a tag if given.
    Service {
        /// The service name, as asked (matched case-insensitively).
        name: String,
        /// A tag the instances must carry (case-insensitively).
        tag: Option<String>,
    },
    /// A node's address.
    Node {
        /// The node name, as asked (matched case-insensitively).
        name: String,
    },
    /// An address spelled in hex.
    Addr(IpAddr),
    /// The domain itself.
    Apex,
    /// A reverse lookup (PTR under `in-addr.arpa` or `ip6.arpa`): the nodes at an address.
    Reverse(IpAddr),
}

/// Where a name falls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// Under the domain, in a form this server answers.
    Ours(Lookup),
    /// Under the domain, but names nothing (NXDOMAIN): an unknown form, another
    /// datacenter (there is no WAN federation), or a label that is not UTF-8.
    NoSuchName,
    /// Outside the domain: this server does no recursion (REFUSED).
    NotOurs,
}

/// Classifies `name` for an agent serving `domain` in `datacenter`.
pub fn classify(name: &Name, domain: &Name, datacenter: &str) -> Classified {
    if let Some(address) = reverse_address(name) {
        return Classified::Ours(Lookup::Reverse(address));
    }
    let Some(labels) = name.strip_suffix(domain) else {
        return Classified::NotOurs;
    };
    let Ok(labels) = labels
        .iter()
        .map(|label| std::str::from_utf8(label).map(str::to_string))
        .collect::<Result<Vec<String>, _>>()
    else {
        return Classified::NoSuchName;
    };
    if labels.is_empty() {
        return Classified::Ours(Lookup::Apex);
    }
    // The kind label is last, or second to last before a datacenter.
    let n = labels.len();
    let (kind_at, dc) = if is_kind(&labels[n - 1]) {
        (n - 1, None)
    } else if n >= 2 && is_kind(&labels[n - 2]) {
        (n - 2, Some(&labels[n - 1]))
    } else {
        return Classified::NoSuchName;
    };
    if dc.is_some_and(|dc| !dc.eq_ignore_ascii_case(datacenter)) {
        return Classified::NoSuchName;
    }
    let parts = &labels[..kind_at];
    let lookup = match labels[kind_at].to_ascii_lowercase().as_str() {
        "service" => service(parts),
        "node" if !parts.is_empty() => Some(Lookup::Node {
            name: parts.join("."),
        }),
        "addr" if parts.len() == 1 => hex_address(&parts[0]).map(Lookup::Addr),
        _ => None,
    };
    lookup.map_or(Classified::NoSuchName, Classified::Ours)
}

fn is_kind(label: &str) -> bool {
    ["service", "node", "addr"]
        .iter()
        .any(|kind| label.eq_ignore_ascii_case(kind))
}

fn service(parts: &[String]) -> Option<Lookup> {
    match parts {
        [name] if !name.is_empty() => Some(Lookup::Service {
            name: name.clone(),
            tag: None,
        }),
        // RFC 2782: _service._protocol, the protocol read as a tag (tcp: any).
        [name, tag]
            if name.len() > 1 && tag.len() > 1 && name.starts_with('_') && tag.starts_with('_') =>
        {
            let tag = &tag[1..];
            Some(Lookup::Service {
                name: name[1..].to_string(),
                tag: (!tag.eq_ignore_ascii_case("tcp")).then(|| tag.to_string()),
            })
        }
        [tag @ .., name] if !tag.is_empty() => Some(Lookup::Service {
            name: name.clone(),
            tag: Some(tag.join(".")),
        }),
        _ => None,
    }
}

/// The address of a complete reverse name: `4.3.2.1.in-addr.arpa` → 1.2.3.4, or 32 nibbles
/// under `ip6.arpa`. Partial names (a network, not an address) are `None`.
fn reverse_address(name: &Name) -> Option<IpAddr> {
    let arpa = |zone: &str| Name::from_dotted(zone).ok();
    if let Some(labels) = name.strip_suffix(&arpa("in-addr.arpa")?) {
        if labels.len() != 4 {
            return None;
        }
        let mut octets = [0u8; 4];
        for (octet, label) in octets.iter_mut().rev().zip(labels) {
            *octet = std::str::from_utf8(label).ok()?.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    let labels = name.strip_suffix(&arpa("ip6.arpa")?)?;
    if labels.len() != 32 {
        return None;
    }
    let mut hex = String::with_capacity(32);
    for label in labels.iter().rev() {
        match label.as_slice() {
            [nibble] if nibble.is_ascii_hexdigit() => hex.push(char::from(*nibble)),
            _ => return None,
        }
    }
    hex_address(&hex)
}

/// `7f000001` → 127.0.0.1; 32 hex digits → an IPv6 address.
pub fn hex_address(label: &str) -> Option<IpAddr> {
    if !label.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match label.len() {
        8 => u32::from_str_radix(label, 16)
            .ok()
            .map(|bits| IpAddr::V4(Ipv4Addr::from(bits))),
        32 => u128::from_str_radix(label, 16)
            .ok()
            .map(|bits| IpAddr::V6(Ipv6Addr::from(bits))),
        _ => None,
    }
}

/// The hex label of `address`, as [`hex_address`] reads it.
pub fn address_hex(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify_text(text: &str) -> Classified {
        let name = Name::from_dotted(text).expect("valid name");
        let domain = Name::from_dotted("consul").expect("valid name");
        classify(&name, &domain, "dc1")
    }

    fn service(name: &str, tag: Option<&str>) -> Classified {
        Classified::Ours(Lookup::Service {
            name: name.to_string(),
            tag: tag.map(str::to_string),
        })
    }

    #[test]
    fn dns_lookup_reads_consul_service_forms() {
        assert_eq!(classify_text("web.service.consul"), service("web", None));
        assert_eq!(classify_text("Web.SERVICE.Consul."), service("Web", None));
        assert_eq!(
            classify_text("web.service.dc1.consul"),
            service("web", None)
        );
        assert_eq!(
            classify_text("web.service.DC1.consul"),
            service("web", None)
        );
        assert_eq!(
            classify_text("v2.web.service.consul"),
            service("web", Some("v2"))
        );
        assert_eq!(
            classify_text("_web._tcp.service.consul"),
            service("web", None)
        );
        assert_eq!(
            classify_text("_web._grpc.service.dc1.consul"),
            service("web", Some("grpc"))
        );
        assert_eq!(
            classify_text("web.service.dc2.consul"),
            Classified::NoSuchName
        );
        assert_eq!(classify_text("service.consul"), Classified::NoSuchName);
    }

    #[test]
    fn dns_lookup_reads_nodes_addresses_and_refuses_other_zones() {
        assert_eq!(
            classify_text("n1.node.consul"),
            Classified::Ours(Lookup::Node {
                name: "n1".to_string()
            })
        );
        assert_eq!(
            classify_text("7f000001.addr.dc1.consul"),
            Classified::Ours(Lookup::Addr("127.0.0.1".parse().expect("ip")))
        );
        let v6: IpAddr = "fd00::1".parse().expect("ip");
        assert_eq!(hex_address(&address_hex(v6)), Some(v6));
        assert_eq!(classify_text("xyz.addr.consul"), Classified::NoSuchName);
        assert_eq!(classify_text("consul"), Classified::Ours(Lookup::Apex));
        assert_eq!(classify_text("foo.consul"), Classified::NoSuchName);
        assert_eq!(classify_text("example.org"), Classified::NotOurs);
        assert_eq!(
            classify_text("4.3.2.10.in-addr.arpa"),
            Classified::Ours(Lookup::Reverse("10.2.3.4".parse().expect("ip")))
        );
        let v6: IpAddr = "fd00::1".parse().expect("ip");
        let nibbles: String = address_hex(v6)
            .chars()
            .rev()
            .map(|c| format!("{c}."))
            .collect();
        assert_eq!(
            classify_text(&format!("{nibbles}ip6.arpa")),
            Classified::Ours(Lookup::Reverse(v6))
        );
        assert_eq!(classify_text("3.2.10.in-addr.arpa"), Classified::NotOurs);
        assert_eq!(
            classify_text("300.3.2.10.in-addr.arpa"),
            Classified::NotOurs
        );
        assert_eq!(classify_text("consul.example.org"), Classified::NotOurs);
    }
}
