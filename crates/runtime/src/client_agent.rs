//! A client agent's side of the RPC port: it holds no store, so it reaches a server for
//! everything ([`ClientLink`]), and it runs its own node's checks ([`ClientChecks`]) from
//! the definitions the servers hold, sending results back through a server.

use crate::checks::{CheckHost, CheckManager, HttpClient};
use crate::cluster::TAG_RPC_ADDR;
use crate::gossip::Gossip;
use crate::raft_node::ClusterError;
use crate::rpc::{CallError, OriginNode, RpcClient, RpcRequest, RpcResponse};
use colony_base::SplitMix64;
use colony_store::{Command, HealthStatus, Outcome};
use colony_swim::State;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a client agent waits for one poll of its checks (the server answers within a
/// minute).
const CHECKS_POLL_TIMEOUT: Duration = Duration::from_secs(75);
/// How long a check result may take to be written.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between two failed polls.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// Why a client agent's request got no answer from any server.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// Membership names no live server.
    #[error("No known Consul servers: this is a client agent and no server is reachable yet")]
    NoKnownServers,
    /// Every known server was tried; none could be reached.
    #[error("no server could be reached: {}", .0.join("; "))]
    Unreachable(Vec<String>),
    /// The connection broke after the request was sent (and it was not safe to resend).
    #[error(
        "lost the connection to server {server} ({addr}) before it answered; the request may or may not have been done"
    )]
    Lost {
        /// The server's node name.
        server: String,
        /// Its RPC address.
        addr: SocketAddr,
    },
    /// A server answered with an error.
    #[error(transparent)]
    Remote(#[from] ClusterError),
}

/// A client agent's way to the servers: picks a live one from membership and sends it
/// requests over its RPC port.
pub struct ClientLink {
    gossip: Arc<Gossip>,
    rpc: RpcClient,
    origin: OriginNode,
    /// This agent's datacenter: servers that announce another one are not used.
    datacenter: String,
    /// The server that answered last; requests stick to it while it answers.
    preferred: Mutex<Option<SocketAddr>>,
}

impl ClientLink {
    /// A link for the client agent `origin` of `datacenter`, finding its servers through
    /// `gossip`.
    pub fn new(gossip: Arc<Gossip>, origin: OriginNode, datacenter: &str) -> Self {
        ClientLink {
            gossip,
            rpc: RpcClient::default(),
            origin,
            datacenter: datacenter.to_string(),
            preferred: Mutex::new(None),
        }
    }

    /// The client agent this link speaks for.
    pub fn origin(&self) -> &OriginNode {
        &self.origin
    }

    /// Live servers (alive or suspect) of this datacenter that advertise an RPC address, the
    /// one that answered last first, the others in an order of their own per client (so
    /// clients spread).
    pub fn servers(&self) -> Vec<(String, SocketAddr)> {
        let view = self.gossip.view();
        let mut servers: Vec<(String, SocketAddr)> = view
            .members
            .iter()
            .filter(|m| m.meta.role == "server")
            .filter(|m| {
                m.meta
                    .tags
                    .get(crate::cluster::TAG_DATACENTER)
                    .is_none_or(|dc| *dc == self.datacenter)
            })
            .filter(|m| matches!(m.state, State::Alive | State::Suspect))
            .filter_map(|m| {
                let addr = m.meta.tags.get(TAG_RPC_ADDR)?.parse().ok()?;
                Some((m.name.clone(), addr))
            })
            .collect();
        servers.sort_by_key(|(name, _)| spread_key(&self.origin.name, name));
        let preferred = *self.preferred.lock().expect("preferred lock poisoned");
        if let Some(position) = servers.iter().position(|(_, a)| Some(*a) == preferred) {
            let first = servers.remove(position);
            servers.insert(0, first);
        }
        servers
    }

    /// Sends `request` to a server; returns the answering server's name with its answer.
    /// The next server is tried while the request cannot have been delivered, or also when
    /// the connection broke after sending if `resend_if_lost` (safe for reads and for
    /// writes that can be applied twice).
    ///
    /// # Errors
    /// [`LinkError`]; whether the request may have been done is in the variant.
    pub async fn call(
        &self,
        request: RpcRequest,
        timeout: Duration,
        resend_if_lost: bool,
    ) -> Result<(String, RpcResponse), LinkError> {
        let servers = self.servers();
        if servers.is_empty() {
            return Err(LinkError::NoKnownServers);
        }
        let mut failures = Vec::new();
        for (name, addr) in servers {
            match self.rpc.call(addr, request.clone(), timeout).await {
                Ok(response) => {
                    *self.preferred.lock().expect("preferred lock poisoned") = Some(addr);
                    return Ok((name, response));
                }
                Err(CallError::Remote(error)) => return Err(LinkError::Remote(error)),
                Err(CallError::Lost(_)) if !resend_if_lost => {
                    return Err(LinkError::Lost { server: name, addr });
                }
                Err(error) => {
                    tracing::debug!(server = %name, %addr, %error, "server unreachable; trying the next one");
                    failures.push(format!("{name} ({addr}): {error}"));
                }
            }
        }
        Err(LinkError::Unreachable(failures))
    }
}

/// A stable per-(client, server) order, so that clients spread over the servers.
fn spread_key(client: &str, server: &str) -> u64 {
    // FNV-1a: stable across runs and platforms, unlike std's randomized hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in client.bytes().chain([0]).chain(server.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A client agent's check runners: the same runners as a server's, fed by a long poll of a
/// server for this node's checks, writing results through a server.
pub struct ClientChecks {
    link: Arc<ClientLink>,
    manager: CheckManager,
    http_client: HttpClient,
    rng: Mutex<SplitMix64>,
    /// Each check's status in the catalog, as of the last poll.
    catalog: Mutex<HashMap<String, HealthStatus>>,
}

impl ClientChecks {
    /// Starts following this node's checks through `link`.
    pub fn start(link: Arc<ClientLink>) -> Arc<ClientChecks> {
        let seed = crate::agent::wall_ms() ^ (u64::from(std::process::id()) << 32);
        let checks = Arc::new(ClientChecks {
            link,
            manager: CheckManager::default(),
            http_client: crate::checks::http_client(),
            rng: Mutex::new(SplitMix64::new(seed)),
            catalog: Mutex::new(HashMap::new()),
        });
        tokio::spawn(follow_checks(checks.clone()));
        checks
    }

    /// Restarts a TTL check's TTL after an update to `status` was written.
    pub fn reset_ttl(&self, check_id: &str, status: HealthStatus) {
        self.manager
            .reset_ttl(check_id, crate::agent::mono_ms(), status);
    }

    /// The status of check `check_id` in the catalog as of the last poll (the last one
    /// this agent's runner wrote), if the catalog had the check.
    pub fn last_status(&self, check_id: &str) -> Option<HealthStatus> {
        self.catalog
            .lock()
            .expect("catalog lock poisoned")
            .get(check_id)
            .copied()
    }

    /// Stops every runner.
    pub fn stop(&self) {
        self.manager.stop_all();
    }
}

/// Polls a server for this node's checks and keeps the runners in step, until the process
/// stops.
async fn follow_checks(checks: Arc<ClientChecks>) {
    let node = checks.link.origin().name.clone();
    let mut index = 0;
    loop {
        let request = RpcRequest::NodeChecks {
            node: node.clone(),
            min_index: index,
        };
        match checks.link.call(request, CHECKS_POLL_TIMEOUT, true).await {
            Ok((
                _,
                RpcResponse::NodeChecks {
                    index: seen,
                    checks: list,
                },
            )) => {
                *checks.catalog.lock().expect("catalog lock poisoned") =
                    list.iter().map(|c| (c.id.clone(), c.status)).collect();
                crate::checks::reconcile(&checks, list);
                index = seen;
            }
            Ok((server, other)) => {
                tracing::warn!(%server, ?other, "unexpected answer to a checks poll");
                tokio::time::sleep(RETRY_DELAY).await;
            }
            Err(error) => {
                tracing::debug!(%error, "polling this node's checks; retrying");
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
    }
}

impl CheckHost for ClientChecks {
    fn node_name(&self) -> &str {
        &self.link.origin().name
    }

    fn check_manager(&self) -> &CheckManager {
        &self.manager
    }

    fn http_client(&self) -> &HttpClient {
        &self.http_client
    }

    fn with_rng<R>(&self, f: impl FnOnce(&mut SplitMix64) -> R) -> R {
        f(&mut self.rng.lock().expect("rng lock poisoned"))
    }

    /// Client agents export no metrics yet.
    fn count_result(&self, _kind: &str, _status: HealthStatus) {}

    fn catalog_status(&self, check_id: &str) -> Option<HealthStatus> {
        self.last_status(check_id)
    }

    async fn submit(&self, command: Command) -> Result<(), String> {
        // A status update or a deregistration written twice is written once.
        let request = RpcRequest::Submit(Box::new(command));
        match self.link.call(request, SUBMIT_TIMEOUT, true).await {
            Ok((_, RpcResponse::Applied { outcome, .. })) => match outcome {
                Outcome::Done => Ok(()),
                other => crate::agent::outcome_to_result(other)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            },
            Ok((server, other)) => Err(format!("server {server} answered {other:?}")),
            Err(error) => Err(error.to_string()),
        }
    }
}
