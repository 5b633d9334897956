//! Answers to Consul-style DNS queries, without IO: [`begin`] reads a query and either
//! answers it at once or says what to look up in the catalog; [`finish`] turns what the
//! catalog held into the answer. Time and randomness (record order) are inputs.

use std::net::IpAddr;

use colony_base::SplitMix64;

use super::lookup::{Classified, Lookup, address_hex, classify};
use super::wire::{
    CLASS_IN, Name, Query, RData, Rcode, Record, Response, TCP_BYTES_MAX, TYPE_A, TYPE_AAAA,
    TYPE_ANY, TYPE_PTR, TYPE_SOA, TYPE_SRV, TYPE_TXT, UDP_BYTES_CLASSIC, UDP_BYTES_MAX, encode,
    header_id_opcode, parse_query,
};

/// How the agent answers DNS (Consul's `dns_config` defaults where it has one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// The domain served (`consul.`).
    pub domain: Name,
    /// This agent's datacenter: `<name>.service.<dc>.<domain>` must name it.
    pub datacenter: String,
    /// TTL of node records, seconds (Consul: 0).
    pub node_ttl_s: u32,
    /// TTL of service records, seconds (Consul: 0).
    pub service_ttl_s: u32,
    /// The most instances in a UDP answer, 0 for no limit beyond the size (Consul: 3). The
    /// rest are left out without the TC bit, so clients do not all retry over TCP; TCP
    /// answers hold every instance that fits in 64 KiB.
    pub udp_answer_limit: usize,
    /// Leave out instances with a warning check too, not only critical ones.
    pub only_passing: bool,
}

impl DnsConfig {
    /// Consul's defaults for `domain` in `datacenter`.
    ///
    /// # Errors
    /// If `domain` is not a domain name.
    pub fn new(domain: &str, datacenter: &str) -> Result<Self, super::wire::NameError> {
        Ok(Self {
            domain: Name::from_dotted(domain)?,
            datacenter: datacenter.to_string(),
            node_ttl_s: 0,
            service_ttl_s: 0,
            udp_answer_limit: 3,
            only_passing: false,
        })
    }
}

/// How the query arrived: it bounds the answer's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A datagram: 512 bytes, or what EDNS offers up to 4096.
    Udp,
    /// A stream: up to 64 KiB.
    Tcp,
}

/// One registered instance of a service, as the catalog has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The node it runs on.
    pub node: String,
    /// That node's address.
    pub node_address: String,
    /// The service's own address, or empty to use the node's.
    pub service_address: String,
    /// Its port.
    pub port: u16,
    /// SRV weight (Consul's `Weights`: 1 by default).
    pub weight: u16,
}

impl Instance {
    fn address(&self) -> &str {
        if self.service_address.is_empty() {
            &self.node_address
        } else {
            &self.service_address
        }
    }
}

/// A node, as the catalog has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Its name.
    pub name: String,
    /// Its address.
    pub address: String,
    /// Its metadata, answered as TXT `key=value` strings.
    pub meta: Vec<(String, String)>,
}

/// What the catalog held for a [`Pending`] lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The healthy instances of the service (already filtered by tag and health).
    Instances(Vec<Instance>),
    /// The node, if it exists.
    Node(Option<NodeRecord>),
    /// The names of the nodes at an address (reverse lookups).
    NodesAt(Vec<String>),
}

/// A query waiting for the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The query.
    pub query: Query,
    /// What to look up.
    pub lookup: Lookup,
}

/// What to do with a datagram or a stream message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Look this up, then call [`finish`].
    Resolve(Pending),
    /// Send nothing (not a query, or not even a header).
    Ignore,
}

/// Reads a message: answers what needs no catalog (errors, other zones, the apex, `.addr`
/// names) and returns the lookup for the rest.
pub fn begin(bytes: &[u8], config: &DnsConfig, transport: Transport, now_s: u64) -> Step {
    let query = match parse_query(bytes) {
        Ok(query) => query,
        Err(error) => {
            return match (error.rcode(), header_id_opcode(bytes)) {
                (Some(rcode), Some((id, opcode))) => Step::Reply(
                    encode(&Response::error(id, opcode, rcode), UDP_BYTES_CLASSIC).bytes,
                ),
                _ => Step::Ignore,
            };
        }
    };
    let class = query.question.qclass;
    if class != CLASS_IN && class != TYPE_ANY {
        return Step::Reply(reply(
            &Response::to(&query, Rcode::Refused),
            &query,
            transport,
        ));
    }
    match classify(&query.question.name, &config.domain, &config.datacenter) {
        Classified::NotOurs => Step::Reply(reply(
            &Response::to(&query, Rcode::Refused),
            &query,
            transport,
        )),
        Classified::NoSuchName => Step::Reply(reply(
            &negative(&query, config, Rcode::NxDomain, now_s),
            &query,
            transport,
        )),
        Classified::Ours(Lookup::Apex) => {
            let mut response = ours(&query, Rcode::NoError);
            if matches!(query.question.qtype, TYPE_SOA | TYPE_ANY) {
                response.answers.push(soa(config, now_s));
            } else {
                response.authority.push(soa(config, now_s));
            }
            Step::Reply(reply(&response, &query, transport))
        }
        Classified::Ours(Lookup::Addr(address)) => {
            let mut response = ours(&query, Rcode::NoError);
            let name = query.question.name.clone();
            if let Some(data) = address_data(address, query.question.qtype) {
                response.answers.push(Record {
                    name,
                    ttl: config.node_ttl_s,
                    data,
                });
            } else {
                response.authority.push(soa(config, now_s));
            }
            Step::Reply(reply(&response, &query, transport))
        }
        Classified::Ours(lookup) => Step::Resolve(Pending { query, lookup }),
    }
}

/// Builds the answer to `pending` from what the catalog held (`Err`: it could not be read,
/// answered SERVFAIL). `evidence` (the catalog read's) is added as a TXT record named
/// `_evidence.<question>` in the additional section, when it fits; `seed` orders the
/// instances (shuffled, so that clients taking the first spread over them).
pub fn finish(
    pending: &Pending,
    found: Result<Found, ()>,
    evidence: Option<&str>,
    config: &DnsConfig,
    transport: Transport,
    now_s: u64,
    seed: u64,
) -> Vec<u8> {
    let query = &pending.query;
    let Ok(found) = found else {
        return reply(&Response::to(query, Rcode::ServFail), query, transport);
    };
    let mut response = match found {
        Found::Node(None) => negative(query, config, Rcode::NxDomain, now_s),
        Found::Node(Some(node)) => node_answer(query, config, &node, now_s),
        Found::NodesAt(nodes) if nodes.is_empty() => {
            negative(query, config, Rcode::NxDomain, now_s)
        }
        Found::NodesAt(nodes) => reverse_answer(query, config, &nodes, now_s),
        Found::Instances(instances) if instances.is_empty() => {
            negative(query, config, Rcode::NxDomain, now_s)
        }
        Found::Instances(mut instances) => {
            shuffle(&mut instances, seed);
            if transport == Transport::Udp && config.udp_answer_limit > 0 {
                instances.truncate(config.udp_answer_limit);
            }
            service_answer(query, config, &instances, now_s)
        }
    };
    if let Some(evidence) = evidence
        && let Ok(owner) =
            Name::from_dotted("_evidence").and_then(|prefix| prefix.join(&query.question.name))
    {
        response.additional.push(Record {
            name: owner,
            ttl: 0,
            data: RData::Txt(
                evidence
                    .as_bytes()
                    .chunks(255)
                    .map(<[u8]>::to_vec)
                    .collect(),
            ),
        });
    }
    reply(&response, query, transport)
}

fn reply(response: &Response, query: &Query, transport: Transport) -> Vec<u8> {
    let limit = match (transport, query.edns) {
        (Transport::Tcp, _) => TCP_BYTES_MAX,
        (Transport::Udp, None) => UDP_BYTES_CLASSIC,
        (Transport::Udp, Some(edns)) => usize::from(edns.udp_payload).min(UDP_BYTES_MAX),
    };
    encode(response, limit).bytes
}

fn ours(query: &Query, rcode: Rcode) -> Response {
    let mut response = Response::to(query, rcode);
    response.authoritative = true;
    response
}

/// NXDOMAIN, or NOERROR without data, with the zone's SOA for negative caching.
fn negative(query: &Query, config: &DnsConfig, rcode: Rcode, now_s: u64) -> Response {
    let mut response = ours(query, rcode);
    response.authority.push(soa(config, now_s));
    response
}

fn soa(config: &DnsConfig, now_s: u64) -> Record {
    let under = |label: &str| {
        Name::from_dotted(label)
            .and_then(|prefix| prefix.join(&config.domain))
            .unwrap_or_else(|_| config.domain.clone())
    };
    Record {
        name: config.domain.clone(),
        ttl: 0,
        data: RData::Soa {
            mname: under("ns"),
            rname: under("hostmaster"),
            serial: now_s as u32,
            refresh: 3600,
            retry: 600,
            expire: 86_400,
            minimum: 0,
        },
    }
}

/// The record for `address` if it answers `qtype` (A for IPv4, AAAA for IPv6, ANY both).
fn address_data(address: IpAddr, qtype: u16) -> Option<RData> {
    match (address, qtype) {
        (IpAddr::V4(v4), TYPE_A | TYPE_ANY) => Some(RData::A(v4)),
        (IpAddr::V6(v6), TYPE_AAAA | TYPE_ANY) => Some(RData::Aaaa(v6)),
        _ => None,
    }
}

/// The records for an address that may be a host name: A/AAAA for an IP, a CNAME otherwise.
fn address_records(owner: &Name, address: &str, qtype: u16, ttl: u32) -> Option<Record> {
    let data = match address.parse::<IpAddr>() {
        Ok(ip) => address_data(ip, qtype)?,
        Err(_) if matches!(qtype, TYPE_A | TYPE_AAAA | TYPE_ANY) => {
            RData::Cname(Name::from_dotted(address).ok()?)
        }
        Err(_) => return None,
    };
    Some(Record {
        name: owner.clone(),
        ttl,
        data,
    })
}

/// PTR records naming `nodes` (`NODE.node.DC.DOMAIN.`) for a reverse lookup.
fn reverse_answer(query: &Query, config: &DnsConfig, nodes: &[String], now_s: u64) -> Response {
    let mut response = ours(query, Rcode::NoError);
    if matches!(query.question.qtype, TYPE_PTR | TYPE_ANY) {
        for node in nodes {
            if let Some(target) = in_datacenter(config, node, "node") {
                response.answers.push(Record {
                    name: query.question.name.clone(),
                    ttl: config.node_ttl_s,
                    data: RData::Ptr(target),
                });
            }
        }
    }
    if response.answers.is_empty() {
        response.authority.push(soa(config, now_s));
    }
    response
}

fn node_answer(query: &Query, config: &DnsConfig, node: &NodeRecord, now_s: u64) -> Response {
    let mut response = ours(query, Rcode::NoError);
    let owner = &query.question.name;
    let qtype = query.question.qtype;
    if let Some(record) = address_records(owner, &node.address, qtype, config.node_ttl_s) {
        response.answers.push(record);
    }
    if matches!(qtype, TYPE_TXT | TYPE_ANY) && !node.meta.is_empty() {
        response.answers.push(Record {
            name: owner.clone(),
            ttl: config.node_ttl_s,
            data: RData::Txt(
                node.meta
                    .iter()
                    .map(|(key, value)| format!("{key}={value}").into_bytes())
                    .collect(),
            ),
        });
    }
    if response.answers.is_empty() {
        response.authority.push(soa(config, now_s));
    }
    response
}

fn service_answer(
    query: &Query,
    config: &DnsConfig,
    instances: &[Instance],
    now_s: u64,
) -> Response {
    let mut response = ours(query, Rcode::NoError);
    let owner = &query.question.name;
    let ttl = config.service_ttl_s;
    match query.question.qtype {
        TYPE_SRV => {
            for instance in instances {
                let Some((target, glue)) = srv_target(config, instance) else {
                    continue;
                };
                response.answers.push(Record {
                    name: owner.clone(),
                    ttl,
                    data: RData::Srv {
                        priority: 1,
                        weight: instance.weight,
                        port: instance.port,
                        target: target.clone(),
                    },
                });
                if let Some(record) =
                    glue.and_then(|address| address_records(&target, &address, TYPE_ANY, ttl))
                    && !response.additional.contains(&record)
                {
                    response.additional.push(record);
                }
            }
        }
        qtype @ (TYPE_A | TYPE_AAAA | TYPE_ANY) => {
            // Addresses, once each; a host name only if there is no address, and only one
            // (a name has at most one CNAME, and none beside other records).
            let (aliases, addresses): (Vec<Record>, Vec<Record>) = instances
                .iter()
                .filter_map(|instance| address_records(owner, instance.address(), qtype, ttl))
                .partition(|record| matches!(record.data, RData::Cname(_)));
            for record in addresses {
                if !response.answers.contains(&record) {
                    response.answers.push(record);
                }
            }
            if response.answers.is_empty() {
                response.answers.extend(aliases.into_iter().take(1));
            }
        }
        _ => {}
    }
    if response.answers.is_empty() {
        response.authority.push(soa(config, now_s));
    }
    response
}

/// An SRV target and the address to add for it: the node's name, unless the instance has
/// its own address (or the node's name is no DNS name); then the address spelled under
/// `.addr`, or the host name it is. `None` when no name can be made.
fn srv_target(config: &DnsConfig, instance: &Instance) -> Option<(Name, Option<String>)> {
    let under = |label: &str, kind: &str| in_datacenter(config, label, kind);
    let own = &instance.service_address;
    if (own.is_empty() || own == &instance.node_address)
        && let Some(target) = under(&instance.node, "node")
    {
        return Some((target, Some(instance.node_address.clone())));
    }
    let address = instance.address();
    match address.parse::<IpAddr>() {
        Ok(ip) => Some((under(&address_hex(ip), "addr")?, Some(address.to_string()))),
        Err(_) => Some((Name::from_dotted(address).ok()?, None)),
    }
}

/// `LABEL.KIND.DC.DOMAIN.` (`n1.node.dc1.consul.`), if that is a domain name.
fn in_datacenter(config: &DnsConfig, label: &str, kind: &str) -> Option<Name> {
    Name::from_dotted(label)
        .and_then(|name| name.join(&Name::from_dotted(kind)?))
        .and_then(|name| name.join(&Name::from_dotted(&config.datacenter)?))
        .and_then(|name| name.join(&config.domain))
        .ok()
}

fn shuffle(instances: &mut [Instance], seed: u64) {
    let mut rng = SplitMix64::new(seed);
    for i in (1..instances.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        instances.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::wire::{TYPE_OPT, parse_query, query_bytes};

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        query_bytes(0x1234, name, qtype, None)
    }

    fn config() -> DnsConfig {
        DnsConfig::new("consul", "dc1").expect("valid domain")
    }

    fn rcode(bytes: &[u8]) -> u8 {
        bytes[3] & 0x0f
    }

    fn count(bytes: &[u8], section: usize) -> u16 {
        u16::from_be_bytes([bytes[6 + section * 2], bytes[7 + section * 2]])
    }

    fn instance(node: &str, address: &str, service_address: &str, port: u16) -> Instance {
        Instance {
            node: node.to_string(),
            node_address: address.to_string(),
            service_address: service_address.to_string(),
            port,
            weight: 1,
        }
    }

    fn resolve(name: &str, qtype: u16, transport: Transport, found: Found) -> Vec<u8> {
        let Step::Resolve(pending) = begin(&query(name, qtype), &config(), transport, 1_000) else {
            panic!("{name} needs the catalog");
        };
        finish(&pending, Ok(found), None, &config(), transport, 1_000, 7)
    }

    #[test]
    fn dns_answer_refuses_other_zones_and_denies_unknown_names() {
        let Step::Reply(refused) =
            begin(&query("example.org", TYPE_A), &config(), Transport::Udp, 0)
        else {
            panic!("answered at once");
        };
        assert_eq!(rcode(&refused), Rcode::Refused as u8);
        assert_eq!(refused[2] & 0x04, 0, "not authoritative");
        let Step::Reply(nx) = begin(&query("x.y.consul", TYPE_A), &config(), Transport::Udp, 0)
        else {
            panic!("answered at once");
        };
        assert_eq!(rcode(&nx), Rcode::NxDomain as u8);
        assert_eq!(nx[2] & 0x04, 0x04, "authoritative");
        assert_eq!(count(&nx, 1), 1, "SOA in authority");
        // Garbage with a header gets FORMERR; without one, nothing.
        let mut garbage = query("web.service.consul", TYPE_A);
        garbage.truncate(20);
        let Step::Reply(formerr) = begin(&garbage, &config(), Transport::Udp, 0) else {
            panic!("answered at once");
        };
        assert_eq!(rcode(&formerr), Rcode::FormErr as u8);
        assert_eq!(
            begin(&[1, 2, 3], &config(), Transport::Udp, 0),
            Step::Ignore
        );
    }

    #[test]
    fn dns_answer_gives_addresses_of_instances_deduplicated() {
        let found = Found::Instances(vec![
            instance("n1", "10.0.0.1", "", 80),
            instance("n2", "10.0.0.2", "", 80),
            instance("n3", "10.0.0.2", "", 81),
            instance("n4", "10.0.0.4", "fd00::4", 80),
        ]);
        let bytes = resolve("web.service.consul", TYPE_A, Transport::Tcp, found.clone());
        assert_eq!(rcode(&bytes), 0);
        assert_eq!(count(&bytes, 0), 2, "two distinct IPv4 addresses");
        let bytes = resolve("web.service.consul", TYPE_AAAA, Transport::Tcp, found);
        assert_eq!(count(&bytes, 0), 1, "one IPv6 address");
    }

    #[test]
    fn dns_answer_limits_udp_instances_without_truncation() {
        let found = Found::Instances(
            (1..=10)
                .map(|i| instance(&format!("n{i}"), &format!("10.0.0.{i}"), "", 80))
                .collect(),
        );
        let udp = resolve("web.service.consul", TYPE_A, Transport::Udp, found.clone());
        assert_eq!(count(&udp, 0), 3);
        assert_eq!(udp[2] & 0x02, 0, "no TC bit");
        let tcp = resolve("web.service.consul", TYPE_A, Transport::Tcp, found);
        assert_eq!(count(&tcp, 0), 10);
    }

    #[test]
    fn dns_answer_host_names_are_one_cname_and_only_without_addresses() {
        let hosts = Found::Instances(vec![
            instance("n1", "10.0.0.1", "db1.example.com", 80),
            instance("n2", "10.0.0.2", "db2.example.com", 80),
        ]);
        let a = resolve("db.service.consul", TYPE_A, Transport::Tcp, hosts.clone());
        assert_eq!(count(&a, 0), 1, "one CNAME");
        let srv = resolve("db.service.consul", TYPE_SRV, Transport::Tcp, hosts);
        assert_eq!(
            (count(&srv, 0), count(&srv, 2)),
            (2, 0),
            "host targets, no glue"
        );
        let mixed = Found::Instances(vec![
            instance("n1", "10.0.0.1", "db1.example.com", 80),
            instance("n2", "10.0.0.2", "", 80),
        ]);
        let a = resolve("db.service.consul", TYPE_A, Transport::Tcp, mixed);
        assert_eq!(count(&a, 0), 1, "the address, no CNAME beside it");
        assert_eq!(&a[a.len() - 4..], &[10, 0, 0, 2]);
    }

    #[test]
    fn dns_answer_srv_points_at_nodes_or_hex_addresses_with_glue() {
        let found = Found::Instances(vec![
            instance("n1", "10.0.0.1", "", 8080),
            instance("n2", "10.0.0.2", "10.9.9.9", 9090),
        ]);
        let bytes = resolve("web.service.consul", TYPE_SRV, Transport::Tcp, found);
        assert_eq!(count(&bytes, 0), 2);
        assert_eq!(count(&bytes, 2), 2, "one A record per target");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("n1"), "node target");
        assert!(text.contains(&address_hex("10.9.9.9".parse().expect("ip"))));
    }

    #[test]
    fn dns_answer_no_instances_is_nxdomain_and_failures_servfail() {
        let bytes = resolve(
            "web.service.consul",
            TYPE_A,
            Transport::Udp,
            Found::Instances(vec![]),
        );
        assert_eq!(rcode(&bytes), Rcode::NxDomain as u8);
        let Step::Resolve(pending) = begin(
            &query("web.service.consul", TYPE_A),
            &config(),
            Transport::Udp,
            0,
        ) else {
            panic!("needs the catalog");
        };
        let failed = finish(&pending, Err(()), None, &config(), Transport::Udp, 0, 1);
        assert_eq!(rcode(&failed), Rcode::ServFail as u8);
        // A type the service has no data of: NOERROR, nothing, SOA.
        let txt = resolve(
            "web.service.consul",
            TYPE_TXT,
            Transport::Udp,
            Found::Instances(vec![instance("n1", "10.0.0.1", "", 80)]),
        );
        assert_eq!((rcode(&txt), count(&txt, 0), count(&txt, 1)), (0, 0, 1));
    }

    #[test]
    fn dns_answer_nodes_and_addr_names() {
        let node = NodeRecord {
            name: "n1".to_string(),
            address: "10.0.0.1".to_string(),
            meta: vec![("rack".to_string(), "r1".to_string())],
        };
        let a = resolve(
            "n1.node.consul",
            TYPE_A,
            Transport::Udp,
            Found::Node(Some(node.clone())),
        );
        assert_eq!(count(&a, 0), 1);
        let any = resolve(
            "n1.node.consul",
            TYPE_ANY,
            Transport::Udp,
            Found::Node(Some(node)),
        );
        assert_eq!(count(&any, 0), 2, "address and meta");
        let none = resolve("n9.node.consul", TYPE_A, Transport::Udp, Found::Node(None));
        assert_eq!(rcode(&none), Rcode::NxDomain as u8);
        let Step::Reply(addr) = begin(
            &query("0a000001.addr.consul", TYPE_A),
            &config(),
            Transport::Udp,
            0,
        ) else {
            panic!("answered at once");
        };
        assert_eq!(count(&addr, 0), 1);
        assert_eq!(&addr[addr.len() - 4..], &[10, 0, 0, 1]);
    }

    #[test]
    fn dns_answer_reverse_lookups_name_the_nodes() {
        let found = Found::NodesAt(vec!["n1".to_string()]);
        let ptr = resolve("1.0.0.10.in-addr.arpa", TYPE_PTR, Transport::Udp, found);
        assert_eq!((rcode(&ptr), count(&ptr, 0)), (0, 1));
        assert!(String::from_utf8_lossy(&ptr).contains("n1"));
        let none = resolve(
            "9.0.0.10.in-addr.arpa",
            TYPE_PTR,
            Transport::Udp,
            Found::NodesAt(vec![]),
        );
        assert_eq!(rcode(&none), Rcode::NxDomain as u8);
    }

    #[test]
    fn dns_answer_carries_evidence_and_echoes_edns() {
        let mut bytes = query("web.service.consul", TYPE_A);
        bytes[11] = 1;
        bytes.extend_from_slice(&[0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0]);
        let Step::Resolve(pending) = begin(&bytes, &config(), Transport::Udp, 0) else {
            panic!("needs the catalog");
        };
        assert!(pending.query.edns.is_some());
        let answer = finish(
            &pending,
            Ok(Found::Instances(vec![instance("n1", "10.0.0.1", "", 80)])),
            Some("freshness=fresh"),
            &config(),
            Transport::Udp,
            0,
            1,
        );
        assert_eq!(count(&answer, 2), 2, "evidence TXT and OPT");
        assert!(String::from_utf8_lossy(&answer).contains("freshness=fresh"));
        assert_eq!(TYPE_OPT, 41);
        // The answer parses as a message with the same id (flip QR back to read it).
        let mut echoed = answer.clone();
        echoed[2] &= 0x7f;
        echoed[6..12].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
        let reparsed = parse_query(&echoed).expect("well-formed");
        assert_eq!(reparsed.id, 0x1234);
    }

    #[test]
    fn dns_answer_shuffles_instances_by_seed() {
        let instances: Vec<Instance> = (1..=8)
            .map(|i| instance(&format!("n{i}"), &format!("10.0.0.{i}"), "", 80))
            .collect();
        let firsts: std::collections::HashSet<String> = (0..40u64)
            .map(|seed| {
                let mut shuffled = instances.clone();
                shuffle(&mut shuffled, seed);
                shuffled[0].node.clone()
            })
            .collect();
        assert!(firsts.len() >= 4, "first instance varies: {firsts:?}");
    }
}
