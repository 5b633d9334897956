//! The DNS server: UDP and TCP on one address, answering through [`super::answer`]. The
//! catalog is read through the agent's own HTTP router with `?stale`, as Consul's DNS reads
//! with `allow_stale`: a server answers from its store (with that read's evidence), a client
//! agent forwards to a server.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

use super::answer::{self, DnsConfig, Found, Instance, NodeRecord, Pending, Step, Transport};
use super::lookup::Lookup;
use super::wire::{Rcode, Response, UDP_BYTES_CLASSIC, encode};
use crate::respond::EVIDENCE_HEADER;

/// Queries being looked up at once (over UDP; beyond it, SERVFAIL at once).
const QUERIES_IN_FLIGHT_MAX: usize = 1024;
/// Open TCP connections (beyond it, new ones are closed at once).
const TCP_CONNECTIONS_MAX: usize = 256;
/// How long a TCP connection may sit idle between queries (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How long a lookup may take before the answer is SERVFAIL (a client agent's server may
/// be unreachable; resolvers retry after a few seconds anyway).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest catalog answer read for one lookup.
const CATALOG_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Characters escaped in a path segment.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'?')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// The UDP socket and TCP listener of one DNS address.
pub struct DnsSockets {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl DnsSockets {
    /// Binds UDP and TCP on `addr` (port 0: a free port, the same for both).
    ///
    /// # Errors
    /// The bind error (the port is taken, say).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let udp = UdpSocket::bind(addr).await?;
        let tcp = TcpListener::bind(udp.local_addr()?).await?;
        Ok(Self { udp, tcp })
    }

    /// The bound address.
    ///
    /// # Errors
    /// If the socket has none (it always has, once bound).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }
}

/// Looks names up in the catalog through the HTTP router.
#[derive(Clone)]
struct Resolver {
    router: Router,
    config: Arc<DnsConfig>,
    seeds: Arc<AtomicU64>,
}

/// Serves DNS on `sockets` until `shutdown` completes.
pub async fn serve(
    sockets: DnsSockets,
    router: Router,
    config: DnsConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let resolver = Resolver {
        router,
        config: Arc::new(config),
        seeds: Arc::new(AtomicU64::new(colony_runtime::wall_ms())),
    };
    let udp = tokio::spawn(serve_udp(Arc::new(sockets.udp), resolver.clone()));
    let tcp = tokio::spawn(serve_tcp(sockets.tcp, resolver));
    shutdown.await;
    udp.abort();
    tcp.abort();
}

async fn serve_udp(socket: Arc<UdpSocket>, resolver: Resolver) {
    let permits = Arc::new(Semaphore::new(QUERIES_IN_FLIGHT_MAX));
    let mut buffer = vec![0u8; 65_536];
    loop {
        let (len, peer) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(error) => {
                // Linux reports an earlier answer's ICMP "port unreachable" here: not ours.
                tracing::debug!(%error, "DNS receive failed");
                continue;
            }
        };
        match answer::begin(&buffer[..len], &resolver.config, Transport::Udp, now_s()) {
            Step::Ignore => tracing::debug!(%peer, len, "ignored a DNS message that is no query"),
            Step::Reply(bytes) => send(&socket, &bytes, peer).await,
            Step::Resolve(pending) => {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    let busy = Response::to(&pending.query, Rcode::ServFail);
                    send(&socket, &encode(&busy, UDP_BYTES_CLASSIC).bytes, peer).await;
                    continue;
                };
                let (socket, resolver) = (socket.clone(), resolver.clone());
                tokio::spawn(async move {
                    let bytes = resolver.finish(&pending, Transport::Udp).await;
                    send(&socket, &bytes, peer).await;
                    drop(permit);
                });
            }
        }
    }
}

async fn send(socket: &UdpSocket, bytes: &[u8], peer: SocketAddr) {
    if let Err(error) = socket.send_to(bytes, peer).await {
        tracing::debug!(%error, %peer, "DNS answer not sent");
    }
}

async fn serve_tcp(listener: TcpListener, resolver: Resolver) {
    let permits = Arc::new(Semaphore::new(TCP_CONNECTIONS_MAX));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "DNS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many DNS connections; closing a new one");
            continue;
        };
        let resolver = resolver.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_connection(stream, &resolver).await {
                tracing::debug!(%error, %peer, "DNS connection ended");
            }
            drop(permit);
        });
    }
}

/// Length-prefixed queries on one connection, answered in order, until it closes or idles.
async fn serve_connection(mut stream: TcpStream, resolver: &Resolver) -> std::io::Result<()> {
    loop {
        let mut prefix = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut prefix)).await {
            Err(_) => return Ok(()),
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(result) => result?,
        };
        let mut message = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut message))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "query cut short"))??;
        let bytes = match answer::begin(&message, &resolver.config, Transport::Tcp, now_s()) {
            Step::Ignore => continue,
            Step::Reply(bytes) => bytes,
            Step::Resolve(pending) => resolver.finish(&pending, Transport::Tcp).await,
        };
        let len = u16::try_from(bytes.len()).expect("answers fit in 64 KiB");
        stream.write_all(&len.to_be_bytes()).await?;
        stream.write_all(&bytes).await?;
    }
}

fn now_s() -> u64 {
    colony_runtime::wall_ms() / 1000
}

impl Resolver {
    async fn finish(&self, pending: &Pending, transport: Transport) -> Vec<u8> {
        let looked_up = tokio::time::timeout(LOOKUP_TIMEOUT, self.lookup(&pending.lookup))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {LOOKUP_TIMEOUT:?}")));
        let (found, evidence) = match looked_up {
            Ok((found, evidence)) => (Ok(found), evidence),
            Err(reason) => {
                let name = pending.query.question.name.to_dotted();
                tracing::debug!(%name, %reason, "DNS lookup failed");
                (Err(()), None)
            }
        };
        let seed = self
            .seeds
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        answer::finish(
            pending,
            found,
            evidence.as_deref(),
            &self.config,
            transport,
            now_s(),
            seed,
        )
    }

    async fn lookup(&self, lookup: &Lookup) -> Result<(Found, Option<String>), String> {
        match lookup {
            Lookup::Service { name, tag } => {
                let (mut entries, mut evidence) = self.health(name).await?;
                if entries.as_array().is_none_or(Vec::is_empty)
                    && let Some(actual) = self
                        .case_match("/v1/catalog/services?stale", name, |v| {
                            v.as_object()
                                .map(|o| o.keys().cloned().collect())
                                .unwrap_or_default()
                        })
                        .await?
                {
                    (entries, evidence) = self.health(&actual).await?;
                }
                let found = instances(&entries, tag.as_deref(), self.config.only_passing);
                if found.is_empty() && tag.is_none() && name.eq_ignore_ascii_case(SERVERS_SERVICE) {
                    // Consul registers its servers as the `consul` service; colony's
                    // servers are known from membership instead.
                    let (members, evidence) = self.get("/v1/agent/members").await?;
                    let found = servers(&members, &self.config.datacenter);
                    return Ok((Found::Instances(found), evidence));
                }
                Ok((Found::Instances(found), evidence))
            }
            Lookup::Node { name } => {
                let (mut node, mut evidence) = self.node(name).await?;
                if node.is_null()
                    && let Some(actual) = self
                        .case_match("/v1/catalog/nodes?stale", name, |v| node_names(v, None))
                        .await?
                {
                    (node, evidence) = self.node(&actual).await?;
                }
                Ok((Found::Node(node_record(&node)), evidence))
            }
            Lookup::Reverse(address) => {
                let (nodes, evidence) = self.get("/v1/catalog/nodes?stale").await?;
                Ok((Found::NodesAt(node_names(&nodes, Some(*address))), evidence))
            }
            Lookup::Addr(_) | Lookup::Apex => Err("answered without the catalog".to_string()),
        }
    }

    async fn health(&self, service: &str) -> Result<(Value, Option<String>), String> {
        let path = format!(
            "/v1/health/service/{}?stale",
            utf8_percent_encode(service, SEGMENT)
        );
        self.get(&path).await
    }

    async fn node(&self, node: &str) -> Result<(Value, Option<String>), String> {
        let path = format!(
            "/v1/catalog/node/{}?stale",
            utf8_percent_encode(node, SEGMENT)
        );
        self.get(&path).await
    }

    /// The catalog's spelling of `name` when it differs only in case (DNS names are
    /// case-insensitive, and resolvers may randomize the case they send).
    async fn case_match(
        &self,
        path: &str,
        name: &str,
        names: impl Fn(&Value) -> Vec<String>,
    ) -> Result<Option<String>, String> {
        let (listing, _) = self.get(path).await?;
        Ok(names(&listing)
            .into_iter()
            .find(|candidate| candidate != name && candidate.eq_ignore_ascii_case(name)))
    }

    async fn get(&self, path: &str) -> Result<(Value, Option<String>), String> {
        let request = Request::get(path)
            .body(Body::empty())
            .map_err(|error| format!("request for {path}: {error}"))?;
        let response = match self.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        let evidence = response
            .headers()
            .get(EVIDENCE_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let body = axum::body::to_bytes(response.into_body(), CATALOG_BYTES_MAX)
            .await
            .map_err(|error| format!("{path}: {error}"))?;
        if status == StatusCode::NOT_FOUND {
            return Ok((Value::Null, evidence));
        }
        if !status.is_success() {
            return Err(format!(
                "{path}: {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        let value = serde_json::from_slice(&body).map_err(|error| format!("{path}: {error}"))?;
        Ok((value, evidence))
    }
}

/// The names in a `/v1/catalog/nodes` answer, of the nodes at `address` if given.
fn node_names(listing: &Value, address: Option<IpAddr>) -> Vec<String> {
    let Some(nodes) = listing.as_array() else {
        return Vec::new();
    };
    nodes
        .iter()
        .filter(|node| {
            address.is_none_or(|address| {
                node["Address"].as_str().and_then(|a| a.parse().ok()) == Some(address)
            })
        })
        .filter_map(|node| node["Node"].as_str().map(str::to_string))
        .collect()
}

/// The service name under which Consul's DNS lists the servers.
const SERVERS_SERVICE: &str = "consul";
/// The RPC port of a server that does not advertise one (Consul's default).
const SERVER_RPC_PORT: u16 = 8300;

/// The live servers among `/v1/agent/members`, as instances on their RPC port.
fn servers(members: &Value, datacenter: &str) -> Vec<Instance> {
    let Some(members) = members.as_array() else {
        return Vec::new();
    };
    members
        .iter()
        .filter(|m| m["Tags"]["role"] == "consul" && m["Status"] == 1)
        .filter(|m| m["Tags"]["dc"].as_str().is_none_or(|dc| dc == datacenter))
        .filter_map(|m| {
            let port = m["Tags"]["rpc_addr"]
                .as_str()
                .and_then(|addr| addr.parse::<SocketAddr>().ok())
                .map_or(SERVER_RPC_PORT, |addr| addr.port());
            Some(Instance {
                node: m["Name"].as_str()?.to_string(),
                node_address: m["Addr"].as_str()?.to_string(),
                service_address: String::new(),
                port,
                weight: 1,
            })
        })
        .collect()
}

/// The instances of `/v1/health/service` entries that DNS answers with: without a critical
/// check (nor a warning one, with `only_passing`), carrying `tag` if given.
fn instances(entries: &Value, tag: Option<&str>, only_passing: bool) -> Vec<Instance> {
    let Some(entries) = entries.as_array() else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let service = &entry["Service"];
            let node = &entry["Node"];
            let statuses: Vec<&str> = entry["Checks"]
                .as_array()
                .map(|checks| checks.iter().filter_map(|c| c["Status"].as_str()).collect())
                .unwrap_or_default();
            if statuses
                .iter()
                .any(|s| *s == "critical" || (only_passing && *s != "passing"))
            {
                return None;
            }
            if let Some(tag) = tag {
                let tags = service["Tags"].as_array()?;
                if !tags
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|t| t.eq_ignore_ascii_case(tag))
                {
                    return None;
                }
            }
            let warning = statuses.contains(&"warning");
            let weight = service["Weights"][if warning { "Warning" } else { "Passing" }]
                .as_u64()
                .map_or(1, |w| u16::try_from(w).unwrap_or(u16::MAX));
            Some(Instance {
                node: node["Node"].as_str()?.to_string(),
                node_address: node["Address"].as_str().unwrap_or_default().to_string(),
                service_address: service["Address"].as_str().unwrap_or_default().to_string(),
                port: u16::try_from(service["Port"].as_u64().unwrap_or(0)).unwrap_or(0),
                weight,
            })
        })
        .collect()
}

/// The node of a `/v1/catalog/node/:name` answer (`null` when there is none).
fn node_record(answer: &Value) -> Option<NodeRecord> {
    let node = &answer["Node"];
    let mut meta: Vec<(String, String)> = node["Meta"]
        .as_object()
        .map(|meta| {
            meta.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    meta.sort();
    Some(NodeRecord {
        name: node["Node"].as_str()?.to_string(),
        address: node["Address"].as_str()?.to_string(),
        meta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dns_instances_leave_out_critical_and_untagged_ones() {
        let entry = |node: &str, tags: Value, status: &str| {
            json!({
                "Node": {"Node": node, "Address": "10.0.0.1"},
                "Service": {"Service": "web", "Tags": tags, "Address": "", "Port": 80,
                            "Weights": {"Passing": 3, "Warning": 1}},
                "Checks": [{"Status": "passing"}, {"Status": status}],
            })
        };
        let entries = json!([
            entry("a", json!(["v1"]), "passing"),
            entry("b", json!(["V2"]), "warning"),
            entry("c", json!(["v2"]), "critical"),
        ]);
        let all = instances(&entries, None, false);
        assert_eq!(
            all.iter()
                .map(|i| (i.node.as_str(), i.weight))
                .collect::<Vec<_>>(),
            [("a", 3), ("b", 1)]
        );
        assert_eq!(instances(&entries, None, true).len(), 1);
        let tagged = instances(&entries, Some("v2"), false);
        assert_eq!(tagged.len(), 1);
        assert_eq!(tagged[0].node, "b");
    }

    #[test]
    fn dns_servers_are_the_live_members_with_the_server_role_in_this_datacenter() {
        let members = json!([
            {"Name": "s1", "Addr": "10.0.0.1", "Status": 1,
             "Tags": {"role": "consul", "rpc_addr": "10.0.0.1:8305", "dc": "dc1"}},
            {"Name": "s2", "Addr": "10.0.0.2", "Status": 4, "Tags": {"role": "consul"}},
            {"Name": "c1", "Addr": "10.0.0.3", "Status": 1, "Tags": {"role": "node"}},
            {"Name": "s3", "Addr": "10.0.0.4", "Status": 1, "Tags": {"role": "consul"}},
            {"Name": "x1", "Addr": "10.0.0.5", "Status": 1, "Tags": {"role": "consul", "dc": "dc2"}},
        ]);
        let found = servers(&members, "dc1");
        assert_eq!(
            found
                .iter()
                .map(|i| (i.node.as_str(), i.port))
                .collect::<Vec<_>>(),
            [("s1", 8305), ("s3", SERVER_RPC_PORT)]
        );
    }

    #[test]
    fn dns_node_record_reads_the_catalog_answer() {
        assert_eq!(node_record(&Value::Null), None);
        let node = node_record(&json!({
            "Node": {"Node": "n1", "Address": "10.0.0.7", "Meta": {"rack": "r2", "az": "a"}},
            "Services": {},
        }))
        .expect("a node");
        assert_eq!(node.address, "10.0.0.7");
        assert_eq!(node.meta[0], ("az".to_string(), "a".to_string()));
    }
}
