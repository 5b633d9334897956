//! A replicated server's side of the agent: how writes reach the leader, how reads meet the
//! consistency they ask for, how servers find each other through membership, and what only
//! the leader does (adding servers, removing dead ones, expiring sessions).

use crate::agent::Agent;
use crate::gossip::Gossip;
use crate::raft_node::{ClusterError, RaftInput, RaftStatus};
use crate::rpc::{
    CallError, RpcClient, RpcHandler, RpcRequest, RpcResponse, ServerDirectory, ServerInfo,
};
use crate::writer::{Applied, Proposal, WriteError};
use colony_base::Freshness;
use colony_raft::ConfChange;
use colony_store::{Command, Table};
use colony_swim::State;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Membership tag carrying a server's Raft id.
pub const TAG_RAFT_ID: &str = "raft_id";
/// Membership tag carrying a server's RPC address.
pub const TAG_RPC_ADDR: &str = "rpc_addr";
/// Membership tag carrying the URL of a server's etcd gRPC API.
pub const TAG_GRPC_URL: &str = "grpc_url";
/// Membership tag carrying a server's datacenter: servers of another datacenter that end up
/// in the same gossip pool are never bootstrapped with nor added as voters (as Consul
/// ignores a LAN member "in a different datacenter").
pub const TAG_DATACENTER: &str = "dc";
/// How long a write waits for a leader (and for its commit) before it fails.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client agent's poll for its checks waits for a change.
const NODE_CHECKS_WAIT: Duration = Duration::from_secs(60);
/// How often the leader's housekeeping runs at least.
const LEADER_DUTY_INTERVAL: Duration = Duration::from_millis(500);

/// How a server joins a replicated cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Where the RPC port listens.
    pub rpc_addr: SocketAddr,
    /// The IP other servers reach the RPC port at when it listens on an unspecified IP.
    pub rpc_advertise: std::net::IpAddr,
    /// Form a new cluster once this many servers see each other (0: only join one).
    pub bootstrap_expect: usize,
    /// Raft timing and limits.
    pub raft: colony_raft::Config,
    /// A server that membership says has failed for this long is removed from the voters,
    /// if the remaining voters keep a quorum (Consul's autopilot dead-server cleanup).
    pub dead_server_cleanup_ms: u64,
    /// When this server's disk counts as slow against the others' (leadership moves away
    /// and storage turns Degraded); a factor of 0 or less turns the comparison off.
    pub slow_disk: colony_modes::slow_disk::SlowDiskPolicy,
}

/// How fresh a read must be, as Consul's query parameters say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadConsistency {
    /// The leader answers from its state while its lease runs (no parameter; Consul's
    /// leader lease), else after a quorum round; a follower first asks the leader for the
    /// index to wait for (its applied index inside the lease, else a quorum-confirmed
    /// commit index) and waits to apply it.
    #[default]
    Default,
    /// `?consistent`: the leader confirms its leadership with a quorum first (ReadIndex).
    Consistent,
    /// `?stale`: any server answers from what it has; `max_stale_ms` bounds its lag behind
    /// the leader (beyond it, the read is served as `Default`).
    Stale {
        /// `?max_stale`, if given.
        max_stale_ms: Option<u64>,
    },
}

/// What a read is based on: its freshness and the headers Consul sends with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBasis {
    /// Freshness for the evidence.
    pub freshness: Freshness,
    /// `X-Consul-KnownLeader`.
    pub known_leader: bool,
    /// `X-Consul-LastContact`: ms since this server last heard from the leader (0 on it).
    pub last_contact_ms: u64,
}

tokio::task_local! {
    /// What the read being served is based on, set by the API around a request that
    /// [`Agent::prepare_read`] prepared; evidence and Consul's headers read it.
    pub static READ_BASIS: ReadBasis;
}

/// The basis of the read this task serves, if the API prepared one.
pub fn current_read_basis() -> Option<ReadBasis> {
    READ_BASIS.try_with(Clone::clone).ok()
}

/// The replicated-server half of an [`Agent`].
pub(crate) struct Replicated {
    pub(crate) inputs: mpsc::Sender<RaftInput>,
    pub(crate) status: watch::Receiver<RaftStatus>,
    pub(crate) directory: Arc<ServerDirectory>,
    pub(crate) rpc: RpcClient,
    pub(crate) raft_id: u64,
    pub(crate) rpc_addr: SocketAddr,
    pub(crate) config: ClusterConfig,
    /// This server's recent fsync latencies (recorded by the raft thread).
    pub(crate) fsync: Arc<crate::disk_watch::FsyncLatencies>,
    /// The raft thread's runtime, on which inbound Raft streams are read.
    pub(crate) raft_io: tokio::runtime::Handle,
    /// The raft thread, joined at shutdown ([`Agent::stop_replication`]).
    pub(crate) raft_thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// This server's ReadIndex requests, one in flight at a time.
    pub(crate) reads: crate::read_batch::Coalescer<Result<u64, ClusterError>>,
    /// This server's lease read index requests (default-consistency reads), the same way.
    pub(crate) lease_reads: crate::read_batch::Coalescer<Result<u64, ClusterError>>,
    /// What this server's Raft thread last published, for linearizable reads off the Raft
    /// threads (read_gate.rs).
    pub(crate) read_gate: Arc<crate::read_gate::ReadGate>,
}

/// A stable Raft id for a node, from its persistent UUID.
pub fn raft_id_from_node_id(node_id: &str) -> u64 {
    let hex: String = node_id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(16)
        .collect();
    u64::from_str_radix(&hex, 16).unwrap_or(0).max(1)
}

/// How a server's Raft id is shown to operators (`/v1/operator/raft/configuration`, `colony
/// operator raft list-peers`) and accepted back (`remove-peer --id`): 16 hex digits, the
/// start of its node UUID.
pub fn server_id_text(id: u64) -> String {
    format!("{id:016x}")
}

/// The error of a request to a Raft node whose thread has stopped.
fn stopping() -> ClusterError {
    ClusterError::Unavailable("the server is stopping".into())
}

/// A failed write as the RPC port reports it.
fn to_cluster_error(error: WriteError) -> ClusterError {
    match error {
        WriteError::Cluster(error) => error,
        other => ClusterError::Unavailable(other.to_string()),
    }
}

impl Replicated {
    pub(crate) fn status(&self) -> RaftStatus {
        self.status.borrow().clone()
    }

    /// The leader's RPC address, if a leader is known and reachable by name.
    fn leader_addr(&self, status: &RaftStatus) -> Option<SocketAddr> {
        self.server_addr(status.leader?)
    }

    /// The RPC address of server `id`, if it is this one or known by name.
    fn server_addr(&self, id: u64) -> Option<SocketAddr> {
        if id == self.raft_id {
            return Some(self.rpc_addr);
        }
        self.directory.get(id).map(|info| info.rpc_addr)
    }

    /// Waits until the status changes or `deadline` passes; `false` at the deadline.
    async fn wait_for_change(&self, deadline: Instant) -> bool {
        let mut status = self.status.clone();
        // Poll at least every 50 ms: a directory update (learning the leader's address)
        // does not change the Raft status.
        let until = deadline.min(Instant::now() + Duration::from_millis(50));
        let _ = tokio::time::timeout_at(until, status.changed()).await;
        Instant::now() < deadline
    }

    /// Hands the Raft node an input that answers through `reply`, and waits for the answer.
    pub(crate) async fn ask<T>(
        &self,
        input: impl FnOnce(oneshot::Sender<Result<T, ClusterError>>) -> RaftInput,
    ) -> Result<T, ClusterError> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(input(reply))
            .await
            .map_err(|_| stopping())?;
        answer.await.unwrap_or_else(|_| Err(stopping()))
    }

    /// Proposes on this node, which must lead; never forwards.
    async fn propose_here(&self, command: Command) -> Result<Applied, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(RaftInput::Propose(Box::new(Proposal { command, reply })))
            .await
            .map_err(|_| WriteError::ShuttingDown)?;
        answer.await.unwrap_or(Err(WriteError::ShuttingDown))
    }
}

impl Agent {
    /// Serves `request` on this server, which must lead: what the RPC port does for other
    /// servers and what this server does for itself when it leads.
    async fn serve_as_leader(
        &self,
        replicated: &Replicated,
        request: RpcRequest,
    ) -> Result<RpcResponse, WriteError> {
        match request {
            RpcRequest::Propose(command) => {
                let applied = replicated.propose_here(*command).await?;
                Ok(RpcResponse::Applied {
                    index: applied.index,
                    outcome: applied.outcome,
                })
            }
            RpcRequest::ReadIndex => Ok(RpcResponse::ReadIndex(
                replicated.ask(RaftInput::ReadIndex).await?,
            )),
            RpcRequest::LeaseReadIndex => {
                let status = replicated.status();
                // Inside the lease no other leader can have committed anything. This
                // leader applies its writes before acknowledging them, and its lease
                // starts only once an entry of its term is committed, which covers every
                // write an earlier leader acknowledged: the larger of its applied and
                // commit indexes covers every acknowledged write.
                if status.is_leader
                    && crate::agent::mono_ms() < status.lease_until_mono_ms
                    && !self.storage_mode().is_disk_full()
                {
                    self.metrics().lease_read_index_answers.inc();
                    let applied = self.read(|s| s.applied_index());
                    return Ok(RpcResponse::ReadIndex(applied.max(status.commit_index)));
                }
                Ok(RpcResponse::ReadIndex(
                    replicated.ask(RaftInput::ReadIndex).await?,
                ))
            }
            RpcRequest::FollowerReadIndex { term, from } => {
                if let Some(index) = replicated.read_gate.answer_follower(term, from) {
                    self.metrics().follower_read_index_answers.inc();
                    return Ok(RpcResponse::ReadIndex(index));
                }
                Ok(RpcResponse::ReadIndex(
                    replicated.ask(RaftInput::ReadIndex).await?,
                ))
            }
            RpcRequest::ConfirmTerm { term } => Ok(RpcResponse::TermConfirmed(
                replicated.read_gate.confirms_term(term),
            )),
            RpcRequest::RenewSession(id) => Ok(RpcResponse::Renewed(self.renew_session_here(&id))),
            RpcRequest::SessionRemaining(id) => Ok(RpcResponse::SessionRemaining(
                self.session_remaining_ms(&id),
            )),
            RpcRequest::Membership => Ok(RpcResponse::Membership {
                is_member: replicated.status().is_member,
            }),
            RpcRequest::DiskStats => {
                let summary = replicated.fsync.summary();
                Ok(RpcResponse::DiskStats {
                    samples: summary.samples,
                    p99_us: summary.p99_us,
                })
            }
            // Client agents' requests are served by whichever server receives them, before
            // any routing to the leader.
            RpcRequest::Http(_) | RpcRequest::NodeChecks { .. } | RpcRequest::Submit(_) => {
                Err(ClusterError::Invalid(
                    "a client agent's request is not routed to the leader".into(),
                )
                .into())
            }
        }
    }

    /// Serves `request` on the leader, here or forwarded over the RPC port, waiting (up to
    /// [`WRITE_TIMEOUT`]) while there is no leader or the leader changes. A request whose
    /// connection broke after it was sent is sent again only if it is `idempotent`;
    /// otherwise its outcome is unknown and the answer says so.
    async fn on_leader(
        &self,
        replicated: &Replicated,
        request: RpcRequest,
        idempotent: bool,
    ) -> Result<RpcResponse, WriteError> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        loop {
            let status = replicated.status();
            let result = if status.is_leader {
                self.serve_as_leader(replicated, request.clone()).await
            } else if let Some(addr) = replicated.leader_addr(&status) {
                let remaining = deadline.saturating_duration_since(Instant::now());
                match replicated.rpc.call(addr, request.clone(), remaining).await {
                    Ok(response) => Ok(response),
                    Err(CallError::Remote(error)) => Err(error.into()),
                    Err(CallError::Unreachable { .. }) => Err(ClusterError::NoLeader.into()),
                    Err(CallError::Lost(_)) if idempotent => Err(ClusterError::NoLeader.into()),
                    Err(CallError::Lost(_)) => Err(ClusterError::LeadershipLost.into()),
                }
            } else {
                Err(ClusterError::NoLeader.into())
            };
            match result {
                Err(WriteError::Cluster(
                    ClusterError::NotLeader { .. } | ClusterError::NoLeader | ClusterError::Busy(_),
                )) => {
                    if !replicated.wait_for_change(deadline).await {
                        return Err(ClusterError::NoLeader.into());
                    }
                }
                other => return other,
            }
        }
    }

    /// Waits until this server has applied `index`.
    async fn wait_applied(&self, replicated: &Replicated, index: u64) -> Result<(), ClusterError> {
        if self.read(|s| s.applied_index()) >= index {
            return Ok(());
        }
        let mut status = replicated.status.clone();
        let applied = status.wait_for(|s| s.applied_index >= index);
        match tokio::time::timeout(WRITE_TIMEOUT, applied).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(stopping()),
            Err(_) => Err(ClusterError::Unavailable(format!(
                "timed out applying up to index {index}"
            ))),
        }
    }

    /// Proposes through whichever server leads, and returns once this server has applied
    /// the entry too (so that its own reads see it).
    pub(crate) async fn propose_replicated(
        &self,
        replicated: &Replicated,
        command: Command,
    ) -> Result<Applied, WriteError> {
        let request = RpcRequest::Propose(Box::new(command));
        match self.on_leader(replicated, request, false).await? {
            RpcResponse::Applied { index, outcome } => {
                // A server whose disk is full applies nothing new (and serves only stale
                // reads): the leader's answer is the write's outcome.
                if !self.storage_mode().is_disk_full() {
                    self.wait_applied(replicated, index).await?;
                }
                Ok(Applied { index, outcome })
            }
            other => Err(ClusterError::Unavailable(format!(
                "leader answered a write with {other:?}"
            ))
            .into()),
        }
    }

    /// A linearizable read barrier: the leader's commit index, confirmed by a quorum, applied
    /// here.
    async fn read_index(
        &self,
        replicated: &Replicated,
        consistency: ReadConsistency,
    ) -> Result<(), ClusterError> {
        self.metrics().read_barriers.inc();
        // Default reads (and stale ones past their bound, served as default) accept the
        // leader's lease, asked over the RPC port; `?consistent` ones need a quorum
        // confirmation, asked of this server's own Raft node, which goes to the leader
        // itself (a follower's request is its own acknowledgement there: with three
        // servers, the leader answers it without a heartbeat round).
        let index = match consistency {
            ReadConsistency::Consistent => {
                let ask_raft = || async {
                    self.metrics().read_index_requests.inc();
                    if let Some(index) = self.leader_read_index(replicated).await {
                        return Ok(index);
                    }
                    if let Some(index) = self.follower_read_index(replicated).await {
                        return Ok(index);
                    }
                    self.raft_read_index(replicated).await
                };
                replicated.reads.run(ask_raft).await?
            }
            ReadConsistency::Default | ReadConsistency::Stale { .. } => {
                let ask_leader = || async {
                    self.metrics().read_index_requests.inc();
                    match self
                        .on_leader(replicated, RpcRequest::LeaseReadIndex, true)
                        .await
                        .map_err(to_cluster_error)?
                    {
                        RpcResponse::ReadIndex(index) => Ok(index),
                        other => Err(ClusterError::Unavailable(format!(
                            "leader answered a read barrier with {other:?}"
                        ))),
                    }
                };
                replicated.lease_reads.run(ask_leader).await?
            }
        };
        self.wait_applied(replicated, index).await
    }

    /// A follower's read index asked of the leader's RPC port, which answers without either
    /// server's Raft thread when the two of them are a quorum (read_gate.rs); `None` when
    /// this server does not follow a leader as a voter, or the leader could not answer so
    /// (the caller asks its Raft node instead). Must be called after the reads it serves
    /// arrived: the term it asks in is this server's at the call.
    async fn follower_read_index(&self, replicated: &Replicated) -> Option<u64> {
        let (term, leader) = replicated.read_gate.follower_ask()?;
        let addr = replicated.server_addr(leader)?;
        let request = RpcRequest::FollowerReadIndex {
            term,
            from: replicated.raft_id,
        };
        // No longer than the Raft node would take to notice a silent leader.
        let patience = Duration::from_millis(replicated.config.raft.election_timeout_ms_min);
        match replicated.rpc.call(addr, request, patience).await {
            Ok(RpcResponse::ReadIndex(index)) => Some(index),
            _ => None,
        }
    }

    /// A leader's read index for its own linearizable reads: its commit index, confirmed by
    /// another voter's RPC task instead of a heartbeat round through both Raft threads
    /// (read_gate.rs, decisions §31); `None` when this server does not lead three voters or
    /// fewer with an entry of its term committed, or no other voter confirmed the term (the
    /// caller asks its Raft node instead). Must be called after the reads it serves arrived.
    async fn leader_read_index(&self, replicated: &Replicated) -> Option<u64> {
        let ask = replicated.read_gate.leader_ask()?;
        // No longer than the Raft node would take to notice a silent voter.
        let patience = Duration::from_millis(replicated.config.raft.election_timeout_ms_min);
        let confirm = |id: u64| async move {
            let Some(addr) = replicated.server_addr(id) else {
                return false;
            };
            let request = RpcRequest::ConfirmTerm { term: ask.term };
            matches!(
                replicated.rpc.call(addr, request, patience).await,
                Ok(RpcResponse::TermConfirmed(true))
            )
        };
        // Either other voter makes a quorum with this one: the first yes will do.
        let confirmed = match ask.others.as_slice() {
            [one] => confirm(*one).await,
            [a, b] => {
                let (first, second) = (confirm(*a), confirm(*b));
                tokio::pin!(first, second);
                tokio::select! {
                    yes = &mut first => yes || second.await,
                    yes = &mut second => yes || first.await,
                }
            }
            _ => false,
        };
        if !confirmed {
            return None;
        }
        self.metrics().leader_read_confirmations.inc();
        Some(ask.commit_index)
    }

    /// A read index from this server's Raft node, waiting (up to [`WRITE_TIMEOUT`]) while
    /// there is no leader to confirm one.
    async fn raft_read_index(&self, replicated: &Replicated) -> Result<u64, ClusterError> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        loop {
            match replicated.ask(RaftInput::ReadIndex).await {
                Err(
                    ClusterError::NotLeader { .. } | ClusterError::NoLeader | ClusterError::Busy(_),
                ) => {
                    if !replicated.wait_for_change(deadline).await {
                        return Err(ClusterError::NoLeader);
                    }
                }
                other => return other,
            }
        }
    }

    /// Makes a read of the store meet `consistency`: a no-op on a single-node server.
    ///
    /// # Errors
    /// [`ClusterError`] when the cluster cannot give the asked freshness (no leader).
    pub async fn prepare_read(
        &self,
        consistency: ReadConsistency,
    ) -> Result<ReadBasis, ClusterError> {
        let fresh = ReadBasis {
            freshness: Freshness::Fresh,
            known_leader: true,
            last_contact_ms: 0,
        };
        let Some(replicated) = self.replicated() else {
            return Ok(fresh);
        };
        // Nothing new is applied here while the disk is full: only a stale read can be
        // answered, and anything else fails at once rather than wait (even a leader's lease
        // read: the others may commit without it).
        let disk_full = || {
            ClusterError::Unavailable(format!(
                "this server's disk is full, so it applies no new entries ({}); read with \
                 ?stale, or from another server",
                self.storage_mode().reason()
            ))
        };
        let is_stale = matches!(consistency, ReadConsistency::Stale { .. });
        if !is_stale && self.storage_mode().is_disk_full() {
            return Err(disk_full());
        }
        let status = replicated.status();
        // Ages and the lease are measured on the monotonic clock (a stepped wall clock
        // would stretch them).
        let now_ms = crate::agent::mono_ms();
        // 0 stands for "never" (a follower that has heard from no leader since it started).
        let age = |at: u64| {
            if at == 0 {
                u64::MAX
            } else {
                now_ms.saturating_sub(at)
            }
        };
        let last_contact_ms = if status.is_leader {
            0
        } else {
            age(status.last_contact_mono_ms)
        };
        // A leader answers from its own state only inside its lease: past it, another
        // leader may already have been elected, and the read goes through a quorum round.
        let in_lease = status.is_leader && now_ms < status.lease_until_mono_ms;
        match consistency {
            ReadConsistency::Stale { max_stale_ms } => {
                let within = max_stale_ms.is_none_or(|bound| last_contact_ms <= bound);
                if within && status.is_member {
                    // A leader out of its lease is as stale as its quorum's last answer.
                    let age_ms = if status.is_leader {
                        age(status.quorum_contact_mono_ms)
                    } else {
                        last_contact_ms
                    };
                    return Ok(ReadBasis {
                        freshness: if in_lease {
                            Freshness::Fresh
                        } else {
                            Freshness::BoundedStale {
                                age_ms,
                                bound_ms: max_stale_ms.unwrap_or(0),
                            }
                        },
                        known_leader: status.leader.is_some(),
                        last_contact_ms,
                    });
                }
            }
            ReadConsistency::Default if in_lease => return Ok(fresh),
            ReadConsistency::Default | ReadConsistency::Consistent => {}
        }
        if self.storage_mode().is_disk_full() {
            return Err(disk_full());
        }
        self.read_index(replicated, consistency).await?;
        Ok(fresh)
    }

    /// The Raft state, on a replicated server.
    pub fn raft_status(&self) -> Option<RaftStatus> {
        self.replicated().map(Replicated::status)
    }

    /// The RPC address of server `id` (this one included), on a replicated server.
    pub fn server_rpc_addr(&self, id: u64) -> Option<SocketAddr> {
        let replicated = self.replicated()?;
        if id == replicated.raft_id {
            return Some(replicated.rpc_addr);
        }
        replicated.directory.get(id).map(|info| info.rpc_addr)
    }

    /// The servers membership has announced, by Raft id (this one included).
    pub fn known_servers(&self) -> Vec<(u64, ServerInfo)> {
        let Some(replicated) = self.replicated() else {
            return Vec::new();
        };
        let mut all = replicated.directory.all();
        if !all.iter().any(|(id, _)| *id == replicated.raft_id) {
            all.push((
                replicated.raft_id,
                ServerInfo {
                    name: self.node_name().to_string(),
                    rpc_addr: replicated.rpc_addr,
                    alive: true,
                    grpc_url: None,
                },
            ));
            all.sort_by_key(|(id, _)| *id);
        }
        all
    }

    /// Removes a server from the voters (`colony operator raft remove-peer`), by ID (see
    /// [`server_id_text`]), node name or RPC address; this server must lead.
    ///
    /// # Errors
    /// [`ClusterError`]: not a replicated server, unknown peer, or the leader refused.
    pub async fn remove_peer(&self, peer: &str) -> Result<u64, ClusterError> {
        let Some(replicated) = self.replicated() else {
            return Err(ClusterError::Invalid(
                "this agent is not a replicated server".into(),
            ));
        };
        let id = self
            .known_servers()
            .into_iter()
            .find(|(id, info)| {
                server_id_text(*id) == peer
                    || info.name == peer
                    || info.rpc_addr.to_string() == peer
            })
            .map(|(id, _)| id)
            // A server membership has forgotten can still be named by its ID.
            .or_else(|| u64::from_str_radix(peer, 16).ok())
            .ok_or_else(|| ClusterError::Invalid(format!("unknown peer {peer:?}")))?;
        let status = replicated.status();
        if !status.is_leader {
            return Err(ClusterError::NotLeader {
                leader: status.leader,
            });
        }
        if id == replicated.raft_id {
            return Err(ClusterError::Invalid(
                "the leader cannot remove itself; transfer leadership first".into(),
            ));
        }
        replicated
            .ask(|reply| RaftInput::ConfChange(ConfChange::RemoveVoter(id), reply))
            .await
    }

    /// Hands leadership to server `id` (`colony operator raft transfer-leader`); this
    /// server must lead.
    ///
    /// # Errors
    /// [`ClusterError`]: not the leader, or `id` is not another voter.
    pub async fn transfer_leadership(&self, id: u64) -> Result<(), ClusterError> {
        let Some(replicated) = self.replicated() else {
            return Err(ClusterError::Invalid(
                "this agent is not a replicated server".into(),
            ));
        };
        replicated.ask(|reply| RaftInput::Transfer(id, reply)).await
    }

    /// A client agent's checks once the checks table's index differs from `min_index`, or
    /// after [`NODE_CHECKS_WAIT`] (a long poll, like a blocking query).
    pub(crate) async fn node_checks_after(&self, node: &str, min_index: u64) -> RpcResponse {
        let deadline = Instant::now() + NODE_CHECKS_WAIT;
        let mut changes = self.subscribe(&crate::watch_hub::Topic::Table(Table::Checks));
        loop {
            let (index, checks) = self.read(|s| {
                (
                    s.table_index(Table::Checks),
                    s.node_checks(node).cloned().collect::<Vec<_>>(),
                )
            });
            let changed = tokio::time::timeout_at(deadline, changes.changed());
            if index != min_index || !matches!(changed.await, Ok(Ok(()))) {
                return RpcResponse::NodeChecks { index, checks };
            }
        }
    }

    /// Proposes what a client agent's check runners send: a check result or a
    /// deregistration, nothing else.
    pub(crate) async fn submit_for_client(
        &self,
        command: Command,
    ) -> Result<RpcResponse, ClusterError> {
        if !matches!(
            command,
            Command::CheckUpdate { .. } | Command::CatalogDeregister { .. }
        ) {
            return Err(ClusterError::Invalid(
                "client agents submit only check updates and deregistrations".into(),
            ));
        }
        let applied = self.propose(command).await.map_err(to_cluster_error)?;
        Ok(RpcResponse::Applied {
            index: applied.index,
            outcome: applied.outcome,
        })
    }

    /// Renews a session through the leader, which measures TTLs.
    pub(crate) async fn renew_on_leader(
        &self,
        id: &str,
    ) -> Result<Option<colony_store::Session>, ClusterError> {
        let replicated = self
            .replicated()
            .expect("only replicated servers forward renewals");
        let request = RpcRequest::RenewSession(id.to_string());
        match self
            .on_leader(replicated, request, true)
            .await
            .map_err(to_cluster_error)?
        {
            RpcResponse::Renewed(session) => Ok(session),
            other => Err(ClusterError::Unavailable(format!(
                "leader answered a renewal with {other:?}"
            ))),
        }
    }

    /// How long until session `id` expires unless renewed, as whoever measures TTLs says: the
    /// leader on a replicated server (asked over RPC from a follower), this agent otherwise.
    /// A duration, not an instant: each server's TTL clock is its own monotonic one.
    /// `None` if the session is not tracked.
    ///
    /// # Errors
    /// [`ClusterError`] when a follower cannot reach a leader.
    pub async fn session_remaining(&self, id: &str) -> Result<Option<u64>, ClusterError> {
        let Some(replicated) = self.replicated() else {
            return Ok(self.session_remaining_ms(id));
        };
        let request = RpcRequest::SessionRemaining(id.to_string());
        match self
            .on_leader(replicated, request, true)
            .await
            .map_err(to_cluster_error)?
        {
            RpcResponse::SessionRemaining(remaining) => Ok(remaining),
            other => Err(ClusterError::Unavailable(format!(
                "leader answered a session TTL question with {other:?}"
            ))),
        }
    }
}

/// Serves what other servers send on the RPC port.
pub(crate) struct RpcEndpoint {
    pub(crate) agent: std::sync::Weak<Agent>,
}

impl RpcHandler for RpcEndpoint {
    fn handle_raft(&self, from: u64, to: u64, message: colony_raft::Message) {
        let Some(agent) = self.agent.upgrade() else {
            return;
        };
        let Some(replicated) = agent.replicated() else {
            return;
        };
        if to != replicated.raft_id {
            tracing::warn!(from, to, "raft message for another server; dropped");
            return;
        }
        // A full queue drops the message: Raft retransmits.
        let _ = replicated.inputs.try_send(RaftInput::Message {
            from,
            message: Box::new(message),
        });
    }

    fn raft_streams_runtime(&self) -> Option<tokio::runtime::Handle> {
        let agent = self.agent.upgrade()?;
        Some(agent.replicated()?.raft_io.clone())
    }

    /// When the stream from the current leader ends, connection attempts to its RPC port tell
    /// a dead process (refused: nothing listens on a live host) from a broken link or a
    /// paused process (timeout, or accepted): only a refusal starts an early election.
    fn raft_stream_closed(&self, from: u64) {
        let Some(agent) = self.agent.upgrade() else {
            return;
        };
        let Some(replicated) = agent.replicated() else {
            return;
        };
        if replicated.status().leader != Some(from) {
            tracing::debug!(from = %crate::cluster::server_id_text(from), "a raft stream closed (not the leader's)");
            return;
        }
        let Some(addr) = replicated.directory.get(from).map(|info| info.rpc_addr) else {
            return;
        };
        let inputs = replicated.inputs.clone();
        tokio::spawn(async move {
            // A dying process may close its streams before its listener: probe three times,
            // 30 ms apart, and act on the first refusal; a timeout ends the probe.
            for attempt in 0..3u64 {
                tokio::time::sleep(std::time::Duration::from_millis(30 * attempt)).await;
                let probe = tokio::time::timeout(
                    std::time::Duration::from_millis(250),
                    tokio::net::TcpStream::connect(addr),
                )
                .await;
                match probe {
                    Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                        tracing::debug!(%addr, attempt, "the leader's RPC port refuses connections");
                        let _ = inputs.try_send(RaftInput::PeerDown(from));
                        return;
                    }
                    Ok(Ok(_)) => {
                        tracing::debug!(%addr, attempt, "the leader's RPC port still accepts connections");
                    }
                    other => {
                        tracing::debug!(%addr, attempt, ?other, "probe of the leader's RPC port inconclusive");
                        return;
                    }
                }
            }
        });
    }

    async fn handle_request(
        self: Arc<Self>,
        request: RpcRequest,
    ) -> Result<RpcResponse, ClusterError> {
        let agent = self.agent.upgrade().ok_or_else(stopping)?;
        // Any server, replicated or not, serves what client agents send.
        let request = match request {
            RpcRequest::Http(forwarded) => {
                return agent
                    .serve_forwarded_http(*forwarded)
                    .await
                    .map(|answer| RpcResponse::Http(Box::new(answer)));
            }
            RpcRequest::NodeChecks { node, min_index } => {
                return Ok(agent.node_checks_after(&node, min_index).await);
            }
            RpcRequest::Submit(command) => return agent.submit_for_client(*command).await,
            other => other,
        };
        let replicated = agent
            .replicated()
            .ok_or_else(|| ClusterError::Unavailable("not a replicated server".into()))?;
        let status = replicated.status();
        // Anyone may ask whether this server is a member, how its disk is doing and whether
        // it is still in a term (a leader confirming its own reads); the rest is the
        // leader's work.
        let for_any_server = matches!(
            request,
            RpcRequest::Membership | RpcRequest::DiskStats | RpcRequest::ConfirmTerm { .. }
        );
        if !status.is_leader && !for_any_server {
            return Err(ClusterError::NotLeader {
                leader: status.leader,
            });
        }
        agent
            .serve_as_leader(replicated, request)
            .await
            .map_err(to_cluster_error)
    }
}

/// Follows membership: records every server's Raft id and RPC address, bootstraps the
/// cluster once `bootstrap_expect` servers see each other, and, on the leader, adds new
/// servers as voters and removes servers dead for longer than the cleanup time.
pub fn spawn_server_tracking(agent: Arc<Agent>, gossip: Arc<Gossip>) {
    let Some(replicated) = agent.replicated() else {
        return;
    };
    if replicated.config.slow_disk.factor > 0.0 {
        crate::disk_watch::spawn_disk_watch(agent.clone(), replicated.config.slow_disk);
    }
    let raft_id = replicated.raft_id;
    let bootstrap_expect = replicated.config.bootstrap_expect;
    let cleanup_ms = replicated.config.dead_server_cleanup_ms;
    let datacenter = agent.config().datacenter.clone();
    tokio::spawn(async move {
        let mut changes = gossip.changes();
        let mut stop = agent.shutdown_signal();
        let mut failed_since: HashMap<u64, u64> = HashMap::new();
        let mut warned_extra = false;
        let mut warned_foreign: HashSet<String> = HashSet::new();
        loop {
            let Some(replicated) = agent.replicated() else {
                return;
            };
            let view = gossip.view();
            let mut alive_servers = vec![raft_id];
            // Alive members last: when two announce one Raft ID (a server restarted on its
            // data dir under a new name, the old name not yet forgotten), the live one's
            // address and name are what the directory keeps, and the ID counts as alive.
            let mut members: Vec<_> = view.members.iter().collect();
            members.sort_by_key(|m| matches!(m.state, State::Alive | State::Suspect));
            for member in members {
                if member.meta.role != "server" {
                    continue;
                }
                if let Some(theirs) = member.meta.tags.get(TAG_DATACENTER)
                    && *theirs != datacenter
                {
                    if warned_foreign.insert(member.name.to_string()) {
                        tracing::warn!(
                            member = %member.name,
                            datacenter = %theirs,
                            ours = %datacenter,
                            "a server of another datacenter is in this gossip pool; it is \
                             not made a voter here (check its --join and --datacenter)"
                        );
                    }
                    continue;
                }
                let id = member
                    .meta
                    .tags
                    .get(TAG_RAFT_ID)
                    .and_then(|v| v.parse::<u64>().ok());
                let addr = member
                    .meta
                    .tags
                    .get(TAG_RPC_ADDR)
                    .and_then(|v| v.parse::<SocketAddr>().ok());
                let (Some(id), Some(addr)) = (id, addr) else {
                    continue;
                };
                let alive = matches!(member.state, State::Alive | State::Suspect);
                replicated.directory.upsert(
                    id,
                    ServerInfo {
                        name: member.name.clone(),
                        rpc_addr: addr,
                        alive,
                        grpc_url: member.meta.tags.get(TAG_GRPC_URL).cloned(),
                    },
                );
                if alive {
                    alive_servers.push(id);
                    failed_since.remove(&id);
                } else if member.state != State::Left {
                    failed_since.entry(id).or_insert_with(crate::agent::mono_ms);
                } else {
                    // A server that left gracefully goes at once, as in Consul (0 marks
                    // it: `mono_ms` is never 0).
                    failed_since.insert(id, LEFT);
                }
            }
            let status = replicated.status();
            // A voter that no member announces any more is as dead as a failed one: its
            // server came back under a new ID after losing its data dir (the new ID is
            // added as a voter; the old one must go, or it stays a dead voter for good), or
            // membership forgot it. Its clock starts when this server first notices.
            for &id in &status.voters {
                if !alive_servers.contains(&id) {
                    failed_since.entry(id).or_insert_with(crate::agent::mono_ms);
                }
            }
            failed_since.retain(|id, _| status.voters.contains(id));
            if !status.is_member && bootstrap_expect > 0 {
                alive_servers.sort_unstable();
                alive_servers.dedup();
                if alive_servers.len() == bootstrap_expect
                    && none_is_member(replicated, &alive_servers).await
                {
                    let _ = replicated
                        .inputs
                        .send(RaftInput::Bootstrap(alive_servers.clone()))
                        .await;
                } else if alive_servers.len() > bootstrap_expect && !warned_extra {
                    warned_extra = true;
                    tracing::warn!(
                        seen = alive_servers.len(),
                        bootstrap_expect,
                        "more servers than --bootstrap-expect see each other; not bootstrapping \
                         (join an existing cluster, or restart with the right count)"
                    );
                }
            }
            if status.is_leader {
                leader_duties(
                    replicated,
                    &status,
                    &alive_servers,
                    &failed_since,
                    cleanup_ms,
                )
                .await;
            }
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep(LEADER_DUTY_INTERVAL) => {}
                _ = stop.changed() => return,
            }
        }
    });
}

/// In `failed_since`: the server left gracefully, and goes at once.
const LEFT: u64 = 0;

/// Whether every other server of `ids` answers that it is not part of a cluster yet: a
/// server that sees only part of an existing cluster must join it, never bootstrap its own
/// (two logs with different entries at the same index and term would break Raft).
async fn none_is_member(replicated: &Replicated, ids: &[u64]) -> bool {
    for &id in ids {
        if id == replicated.raft_id {
            continue;
        }
        let Some(info) = replicated.directory.get(id) else {
            return false;
        };
        match replicated
            .rpc
            .call(
                info.rpc_addr,
                RpcRequest::Membership,
                Duration::from_secs(2),
            )
            .await
        {
            Ok(RpcResponse::Membership { is_member: false }) => {}
            _ => return false,
        }
    }
    true
}

/// One change at a time: add a live server that is not a voter, or remove one that has
/// been dead for `cleanup_ms` when the rest keep a quorum.
async fn leader_duties(
    replicated: &Replicated,
    status: &RaftStatus,
    alive_servers: &[u64],
    failed_since: &HashMap<u64, u64>,
    cleanup_ms: u64,
) {
    let change = if let Some(&new) = alive_servers.iter().find(|id| !status.voters.contains(id)) {
        Some(ConfChange::AddVoter(new))
    } else {
        let now = crate::agent::mono_ms();
        let dead: Vec<u64> = status
            .voters
            .iter()
            .copied()
            .filter(|id| {
                failed_since
                    .get(id)
                    .is_some_and(|&since| since == LEFT || now.saturating_sub(since) >= cleanup_ms)
            })
            .collect();
        let healthy = status.voters.len() - dead.len();
        // After removing one, the healthy voters must still be a majority of the rest.
        dead.first()
            .filter(|_| healthy > (status.voters.len() - 1) / 2)
            .map(|&id| ConfChange::RemoveVoter(id))
    };
    let Some(change) = change else {
        return;
    };
    match replicated
        .ask(|reply| RaftInput::ConfChange(change, reply))
        .await
    {
        Ok(index) => tracing::info!(?change, index, "changing the voters"),
        Err(ClusterError::Busy(_)) => {}
        Err(error) => tracing::debug!(?change, %error, "voter change refused"),
    }
}
