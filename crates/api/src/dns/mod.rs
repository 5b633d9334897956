//! Consul's DNS interface: `<service>.service.consul` (A, AAAA, SRV), tags and RFC 2782
//! names, `<node>.node.consul`, `<hex>.addr.consul`, `consul.service.consul` (the servers),
//! reverse lookups of node addresses, NXDOMAIN with the zone's SOA, and
//! REFUSED outside the domain (no recursion). Every answer from the catalog carries the read's
//! evidence as a TXT record named `_evidence.<question>` in the additional section.
//!
//! - [`wire`]: DNS messages (parse a query, encode an answer within a size limit);
//! - [`lookup`]: what a name asks for;
//! - [`answer`]: the answer, without IO (time and record order are inputs);
//! - [`server`]: UDP and TCP on one address, reading the catalog through the agent's router.

pub mod answer;
pub mod lookup;
pub mod server;
pub mod wire;

pub use answer::DnsConfig;
pub use server::{DnsSockets, serve};
