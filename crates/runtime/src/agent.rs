//! The agent: owns the store, the writer thread, the watch hub, the check runners and the
//! session TTL timers, and offers the API layer one handle to read, write and wait.

use crate::checks::CheckManager;
use crate::cluster::{ClusterConfig, Replicated, RpcEndpoint, raft_id_from_node_id};
use crate::log_store::{LogStore, OpenError};
use crate::metrics::Metrics;
use crate::raft_node::{RaftInput, RaftNode, RaftStatus};
use crate::raft_storage::{RAFT_DIR_NAME, RaftStorage};
use crate::rpc::{Peers, RpcClient, ServerDirectory};
use crate::snapshot_schedule::SnapshotSchedule;
use crate::watch_hub::{Topic, WatchHub};
use crate::writer::{Applied, Proposal, QUEUE_PROPOSALS_MAX, StorageMode, WriteError, Writer};
use colony_base::{Evidence, Freshness, Hlc, HlcTimestamp, Lifetime, SplitMix64};
use colony_store::{
    CatalogRegistration, Check, CheckDefinition, Command, HealthStatus, NODE_HEALTH_CHECK_ID, Node,
    Outcome, Session, SessionTtlTracker, StateMachine, Table,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use tokio::sync::{Notify, mpsc, oneshot, watch};

/// How an agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name in the catalog.
    pub node_name: String,
    /// Datacenter name.
    pub datacenter: String,
    /// Where the log, snapshot and node ID live.
    pub data_dir: PathBuf,
    /// The address other nodes and clients use for this node.
    pub advertise_addr: String,
    /// Whether the agent is a server (holds the authoritative store).
    pub server: bool,
    /// Whether the agent runs in dev mode.
    pub dev: bool,
    /// Take a snapshot and truncate the log after this many entries.
    pub snapshot_every_entries: u64,
    /// Smallest session TTL accepted (Consul: 10 s).
    pub session_ttl_ms_min: u64,
    /// The address the HTTP API listens on, for `/v1/agent/self`.
    pub http_addr: String,
    /// Replicate the store with Raft among servers (`None`: a single-node server).
    pub cluster: Option<ClusterConfig>,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data dir or store could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The node ID file could not be read or written.
    #[error("node id file {path}: {detail}")]
    NodeId {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// Registering this node in the catalog failed.
    #[error("registering this node failed: {0}")]
    SelfRegistration(String),
    /// The RPC port could not be bound.
    #[error("cannot listen on {addr} for RPC: {detail}")]
    RpcBind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        detail: String,
    },
    /// The data dir was written in the other mode (single-node vs replicated).
    #[error("{0}")]
    WrongMode(String),
}

/// Why an agent-level operation failed. Nothing was changed unless the variant says so.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    /// The named check, session or service does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request does not make sense for its target.
    #[error("{0}")]
    Invalid(String),
    /// The write could not be made.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// One running agent.
pub struct Agent {
    config: AgentConfig,
    node_id: String,
    state: Arc<RwLock<StateMachine>>,
    consensus: Consensus,
    hub: Arc<WatchHub>,
    metrics: Arc<Metrics>,
    storage_mode: Arc<StorageMode>,
    hlc: Mutex<Hlc>,
    rng: Mutex<SplitMix64>,
    sessions: Mutex<SessionTtlTracker>,
    sessions_changed: Notify,
    pub(crate) checks: CheckManager,
    fatal: watch::Receiver<Option<String>>,
    shutdown: watch::Sender<bool>,
    started_ms: u64,
    pub(crate) http_client: crate::checks::HttpClient,
    /// The RPC port of a single-node server (replicated servers keep theirs in `consensus`).
    standalone_rpc_addr: OnceLock<std::net::SocketAddr>,
    /// Serves HTTP API requests that client agents forward (set once the API is built).
    http_forwarder: OnceLock<HttpForwarder>,
}

/// Serves one forwarded HTTP API request: the API layer's router, handed to the agent so
/// that its RPC port can answer client agents.
pub type HttpForwarder = Arc<
    dyn Fn(
            crate::rpc::ForwardedHttp,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = crate::rpc::HttpAnswer> + Send>>
        + Send
        + Sync,
>;

/// What both kinds of server share between the agent and its writer.
struct Shared {
    state: Arc<RwLock<StateMachine>>,
    hub: Arc<WatchHub>,
    metrics: Arc<Metrics>,
    storage_mode: Arc<StorageMode>,
    fatal: watch::Receiver<Option<String>>,
}

/// How writes become durable: one node's log, or Raft among servers.
enum Consensus {
    Local(mpsc::Sender<Proposal>),
    Replicated(Box<Replicated>),
}

/// Binds an RPC listener; returns it with the address others reach it at.
async fn bind_rpc(
    addr: std::net::SocketAddr,
    advertise: std::net::IpAddr,
) -> Result<(tokio::net::TcpListener, std::net::SocketAddr), StartError> {
    let failed = |error: std::io::Error| StartError::RpcBind {
        addr,
        detail: error.to_string(),
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(failed)?;
    let mut local = listener.local_addr().map_err(failed)?;
    if local.ip().is_unspecified() {
        local.set_ip(advertise);
    }
    Ok((listener, local))
}

/// Milliseconds on a monotonic clock (since this process first asked): what TTLs and
/// deadlines are measured with. The wall clock can be stepped (NTP, an operator, a resumed
/// VM); measured with it, a step forward would expire every session at once. Never 0, so
/// that 0 can stand for "never" in fields that hold one of its readings. The runtime is the
/// one place that reads it.
pub fn mono_ms() -> u64 {
    static ZERO: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let zero = *ZERO.get_or_init(std::time::Instant::now);
    u64::try_from(zero.elapsed().as_millis())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

/// Wall-clock milliseconds since the Unix epoch: for timestamps shown to people and carried
/// in evidence, never to measure a duration (see [`mono_ms`]). The runtime is the one place
/// that reads it.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Agent {
    /// Opens the data dir, replays the log, starts the writer, registers this node, and starts
    /// check runners and session timers.
    ///
    /// # Errors
    /// [`StartError`] naming the file or step that failed.
    pub async fn start(config: AgentConfig) -> Result<Arc<Agent>, StartError> {
        check_data_dir_mode(&config)?;
        if config.cluster.is_some() {
            return Self::start_replicated(config).await;
        }
        let dir = config.data_dir.clone();
        let (store, recovered) = tokio::task::spawn_blocking(move || LogStore::open(&dir))
            .await
            .expect("store open task panicked")?;
        tracing::info!(
            data_dir = %store.path().display(),
            applied_index = recovered.state.applied_index(),
            replayed = recovered.replayed_count,
            "store opened"
        );
        let node_id = load_or_create_node_id(&config.data_dir)?;
        let metrics = Arc::new(Metrics::new());
        let now = wall_ms();
        let storage_mode = Arc::new(StorageMode::new(mono_ms()));
        metrics.set_mode("storage", storage_mode.mode());
        let state = Arc::new(RwLock::new(recovered.state));
        let hub = Arc::new(WatchHub::new());
        let (tx, rx) = mpsc::channel(QUEUE_PROPOSALS_MAX);
        let (fatal_tx, fatal_rx) = watch::channel(None);
        let schedule = SnapshotSchedule::new(config.snapshot_every_entries, store.snapshot_bytes());
        let writer = Writer {
            store,
            state: state.clone(),
            hub: hub.clone(),
            metrics: metrics.clone(),
            mode: storage_mode.clone(),
            fatal: fatal_tx,
            schedule,
            wall_ms,
            snapshot_in_flight: None,
        };
        let handle = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("colony-log-writer".into())
            .spawn(move || writer.run(handle, rx))
            .expect("spawning the writer thread");
        let agent = Arc::new(Agent::assemble(
            config,
            node_id,
            Shared {
                state,
                hub,
                metrics,
                storage_mode,
                fatal: fatal_rx,
            },
            Consensus::Local(tx),
            now,
        ));
        agent.register_self().await?;
        agent.start_session_timers();
        crate::checks::spawn_reconciler(agent.clone());
        Ok(agent)
    }

    fn assemble(
        config: AgentConfig,
        node_id: String,
        shared: Shared,
        consensus: Consensus,
        now: u64,
    ) -> Agent {
        let seed = now ^ (u64::from(std::process::id()) << 32);
        Agent {
            config,
            node_id,
            state: shared.state,
            consensus,
            hub: shared.hub,
            metrics: shared.metrics,
            storage_mode: shared.storage_mode,
            hlc: Mutex::new(Hlc::default()),
            rng: Mutex::new(SplitMix64::new(seed)),
            sessions: Mutex::new(SessionTtlTracker::new()),
            sessions_changed: Notify::new(),
            checks: CheckManager::default(),
            fatal: shared.fatal,
            shutdown: watch::channel(false).0,
            started_ms: now,
            http_client: crate::checks::http_client(),
            standalone_rpc_addr: OnceLock::new(),
            http_forwarder: OnceLock::new(),
        }
    }

    /// Starts a replicated server: opens `DATA_DIR/raft`, binds the RPC port, starts the Raft
    /// node. The cluster forms (or this server joins one) once membership runs; until then
    /// writes wait for a leader, and this node registers itself once one is there.
    async fn start_replicated(config: AgentConfig) -> Result<Arc<Agent>, StartError> {
        let cluster = config
            .cluster
            .clone()
            .expect("replicated servers have a cluster config");
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| OpenError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let node_id = load_or_create_node_id(&config.data_dir)?;
        let (storage, recovered) = tokio::task::spawn_blocking(move || RaftStorage::open(&dir))
            .await
            .expect("store open task panicked")?;
        let raft_id = raft_id_from_node_id(&node_id);
        tracing::info!(
            raft_id,
            applied_index = recovered.state.applied_index(),
            entries = recovered.restored.entries.len(),
            term = recovered.restored.hard_state.term,
            "raft storage opened"
        );
        let (listener, rpc_addr) = bind_rpc(cluster.rpc_addr, cluster.rpc_advertise).await?;
        let metrics = Arc::new(Metrics::new());
        let now = wall_ms();
        let storage_mode = Arc::new(StorageMode::new(mono_ms()));
        metrics.set_mode("storage", storage_mode.mode());
        let state = Arc::new(RwLock::new(recovered.state));
        let hub = Arc::new(WatchHub::new());
        let (inputs, inputs_rx) = mpsc::channel(QUEUE_PROPOSALS_MAX);
        let (fatal_tx, fatal_rx) = watch::channel(None);
        let (status_tx, status_rx) = watch::channel(RaftStatus::default());
        let directory = Arc::new(ServerDirectory::default());
        let fsync = Arc::new(crate::disk_watch::FsyncLatencies::new());
        let read_gate = Arc::new(crate::read_gate::ReadGate::default());
        let node = RaftNode {
            id: raft_id,
            config: cluster.raft.clone(),
            seed: now ^ raft_id,
            storage,
            restored: recovered.restored,
            state: state.clone(),
            hub: hub.clone(),
            metrics: metrics.clone(),
            peers: Arc::new(Peers::new(
                raft_id,
                directory.clone(),
                metrics.raft_streams_closed_by_peer.clone(),
            )),
            status: status_tx,
            fatal: fatal_tx,
            snapshot_every_entries: config.snapshot_every_entries,
            wall_ms,
            fsync: fsync.clone(),
            storage_mode: storage_mode.clone(),
            read_gate: read_gate.clone(),
        };
        let handle = tokio::runtime::Handle::current();
        // The raft thread waits for its inputs on a runtime of its own, which also reads the
        // inbound Raft streams: a message arriving wakes that one thread (decisions §29).
        let raft_runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building the raft thread's runtime (the OS refused its resources)");
        let raft_io = raft_runtime.handle().clone();
        let raft_thread = std::thread::Builder::new()
            .name("colony-raft".into())
            .spawn(move || node.run(handle, raft_runtime, inputs_rx))
            .expect("spawning the raft thread");
        let replicated = Replicated {
            inputs,
            status: status_rx,
            directory,
            rpc: RpcClient::default(),
            raft_id,
            rpc_addr,
            config: cluster,
            fsync,
            raft_io,
            raft_thread: std::sync::Mutex::new(Some(raft_thread)),
            reads: crate::read_batch::Coalescer::new(),
            lease_reads: crate::read_batch::Coalescer::new(),
            read_gate,
        };
        let agent = Arc::new(Agent::assemble(
            config,
            node_id,
            Shared {
                state,
                hub,
                metrics,
                storage_mode,
                fatal: fatal_rx,
            },
            Consensus::Replicated(Box::new(replicated)),
            now,
        ));
        tokio::spawn(crate::rpc::serve(
            listener,
            Arc::new(RpcEndpoint {
                agent: Arc::downgrade(&agent),
            }),
        ));
        let registering = agent.clone();
        tokio::spawn(async move {
            let mut stop = registering.shutdown_signal();
            loop {
                match registering.register_self().await {
                    Ok(()) => return,
                    Err(error) => tracing::debug!(%error, "registering this node; retrying"),
                }
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                    _ = stop.changed() => return,
                }
            }
        });
        agent.start_session_timers();
        crate::checks::spawn_reconciler(agent.clone());
        Ok(agent)
    }

    /// This server's RPC address: a replicated server's, or the one [`Agent::serve_rpc`]
    /// opened on a single-node server.
    pub fn rpc_addr(&self) -> Option<std::net::SocketAddr> {
        self.replicated()
            .map(|r| r.rpc_addr)
            .or_else(|| self.standalone_rpc_addr.get().copied())
    }

    /// Opens the RPC port of a single-node server (a replicated server opens its own at
    /// start), so that client agents can forward requests to it; returns the address
    /// others reach it at (`advertise` replaces an unspecified IP).
    ///
    /// # Errors
    /// [`StartError::RpcBind`] if the port cannot be bound.
    pub async fn serve_rpc(
        self: &Arc<Self>,
        addr: std::net::SocketAddr,
        advertise: std::net::IpAddr,
    ) -> Result<std::net::SocketAddr, StartError> {
        if let Some(existing) = self.rpc_addr() {
            return Ok(existing);
        }
        let (listener, local) = bind_rpc(addr, advertise).await?;
        let _ = self.standalone_rpc_addr.set(local);
        tokio::spawn(crate::rpc::serve(
            listener,
            Arc::new(RpcEndpoint {
                agent: Arc::downgrade(self),
            }),
        ));
        Ok(local)
    }

    /// Hands the agent the API layer's handler for HTTP requests client agents forward.
    pub fn set_http_forwarder(&self, forwarder: HttpForwarder) {
        let _ = self.http_forwarder.set(forwarder);
    }

    /// Serves a forwarded HTTP request through the API layer.
    pub(crate) async fn serve_forwarded_http(
        &self,
        request: crate::rpc::ForwardedHttp,
    ) -> Result<crate::rpc::HttpAnswer, crate::raft_node::ClusterError> {
        let forwarder = self.http_forwarder.get().cloned().ok_or_else(|| {
            crate::raft_node::ClusterError::Unavailable(
                "the server's HTTP API is not running yet".into(),
            )
        })?;
        Ok(forwarder(request).await)
    }

    /// This server's Raft id, on a replicated server.
    pub fn raft_id(&self) -> Option<u64> {
        self.replicated().map(|r| r.raft_id)
    }

    async fn register_self(&self) -> Result<(), StartError> {
        let node = Node {
            id: self.node_id.clone(),
            name: self.config.node_name.clone(),
            address: self.config.advertise_addr.clone(),
            tagged_addresses: BTreeMap::from([
                ("lan".to_string(), self.config.advertise_addr.clone()),
                ("wan".to_string(), self.config.advertise_addr.clone()),
            ]),
            meta: BTreeMap::from([("consul-network-segment".to_string(), String::new())]),
            create_index: 0,
            modify_index: 0,
        };
        let current = self.read(|s| {
            let node_ok = s.node(&node.name).is_some_and(|n| {
                n.id == node.id && n.address == node.address && n.meta == node.meta
            });
            let check_ok = s
                .check(&node.name, NODE_HEALTH_CHECK_ID)
                .is_some_and(|c| c.status == HealthStatus::Passing);
            node_ok && check_ok
        });
        if current {
            return Ok(());
        }
        let check = node_health_check(&node.name, HealthStatus::Passing);
        let registration = CatalogRegistration {
            node,
            service: None,
            checks: vec![check],
            replace_service_checks: false,
        };
        match self.propose(Command::CatalogRegister(registration)).await {
            Ok(Applied {
                outcome: Outcome::Done,
                ..
            }) => Ok(()),
            Ok(other) => Err(StartError::SelfRegistration(format!("{:?}", other.outcome))),
            Err(error) => Err(StartError::SelfRegistration(error.to_string())),
        }
    }

    /// The agent's configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// This node's persistent UUID.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.config.node_name
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The storage subsystem's mode.
    pub fn storage_mode(&self) -> &StorageMode {
        &self.storage_mode
    }

    /// When the agent started, ms since the epoch.
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// Wall-clock now, ms since the epoch.
    pub fn now_ms(&self) -> u64 {
        wall_ms()
    }

    /// Reads the state under the read lock.
    pub fn read<R>(&self, f: impl FnOnce(&StateMachine) -> R) -> R {
        f(&self.state.read().expect("state lock poisoned"))
    }

    /// Subscribes to changes of `topic` (subscribe before reading, then wait).
    pub fn subscribe(&self, topic: &Topic) -> watch::Receiver<u64> {
        self.hub.subscribe(topic)
    }

    /// Fresh random bits (identifiers, jitter).
    pub fn random_u64(&self) -> u64 {
        self.rng.lock().expect("rng lock poisoned").next_u64()
    }

    /// A fresh UUID.
    pub fn new_uuid(&self) -> String {
        self.rng.lock().expect("rng lock poisoned").uuid()
    }

    pub(crate) fn with_rng<R>(&self, f: impl FnOnce(&mut SplitMix64) -> R) -> R {
        f(&mut self.rng.lock().expect("rng lock poisoned"))
    }

    /// Stamps a local observation with the hybrid logical clock.
    pub fn stamp(&self) -> HlcTimestamp {
        self.hlc.lock().expect("hlc lock poisoned").now(wall_ms())
    }

    /// Evidence for a read of the store at `index`: fresh on a single node (its own leader),
    /// and as the prepared read says on a replicated server (`?stale` reads on a follower
    /// are bounded-stale with their age).
    pub fn store_evidence(&self, index: u64, binding: String) -> Evidence {
        let basis = crate::cluster::current_read_basis();
        let is_stale = basis
            .as_ref()
            .is_some_and(|b| !matches!(b.freshness, Freshness::Fresh));
        Evidence {
            scope: "cluster".to_string(),
            source: if is_stale { "follower" } else { "leader" }.to_string(),
            observed: self.stamp(),
            observed_by: self.config.node_name.clone(),
            lifetime: Lifetime::UntilIndex(index),
            binding,
            freshness: basis.map_or(Freshness::Fresh, |b| b.freshness),
        }
    }

    /// Evidence for an answer about this agent itself.
    pub fn local_evidence(&self, binding: String) -> Evidence {
        Evidence {
            scope: format!("node:{}", self.config.node_name),
            source: "agent".to_string(),
            observed: self.stamp(),
            observed_by: self.config.node_name.clone(),
            lifetime: Lifetime::Ms(0),
            binding,
            freshness: Freshness::Fresh,
        }
    }

    /// Proposes a command and waits until it is durable and applied.
    ///
    /// # Errors
    /// [`WriteError`] if storage refuses writes or the agent is stopping.
    pub async fn propose(&self, command: Command) -> Result<Applied, WriteError> {
        if *self.shutdown.borrow() {
            return Err(WriteError::ShuttingDown);
        }
        match &self.consensus {
            Consensus::Local(proposals) => {
                let (reply, answer) = oneshot::channel();
                proposals
                    .send(Proposal { command, reply })
                    .await
                    .map_err(|_| WriteError::ShuttingDown)?;
                answer.await.unwrap_or(Err(WriteError::ShuttingDown))
            }
            Consensus::Replicated(replicated) => self.propose_replicated(replicated, command).await,
        }
    }

    /// The replicated-server half, if this is one.
    pub(crate) fn replicated(&self) -> Option<&Replicated> {
        match &self.consensus {
            Consensus::Local(_) => None,
            Consensus::Replicated(replicated) => Some(replicated),
        }
    }

    /// Resolves when a fatal storage error stops the agent, with its message.
    pub async fn fatal_error(&self) -> String {
        let mut fatal = self.fatal.clone();
        loop {
            if let Some(message) = fatal.borrow_and_update().clone() {
                return message;
            }
            if fatal.changed().await.is_err() {
                return "log writer stopped".to_string();
            }
        }
    }

    /// Stops check runners and session timers; pending writes finish.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
        self.checks.stop_all();
        self.sessions_changed.notify_one();
    }

    /// On a replicated server, stops the raft thread and waits (up to 5 s) for it to
    /// finish, so that it never outlives the tokio runtime it takes timers from. Call it
    /// last, before the runtime is dropped.
    pub async fn stop_replication(&self) {
        let Some(replicated) = self.replicated() else {
            return;
        };
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            replicated.inputs.send(RaftInput::Stop),
        )
        .await;
        let thread = replicated
            .raft_thread
            .lock()
            .expect("raft thread lock poisoned")
            .take();
        if let Some(thread) = thread {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            if tokio::time::timeout(std::time::Duration::from_secs(5), joined)
                .await
                .is_err()
            {
                tracing::warn!("the raft thread did not stop within 5s");
            }
        }
    }

    /// A receiver that turns true when the agent shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    // ===== Sessions =====

    fn start_session_timers(self: &Arc<Self>) {
        let now = mono_ms();
        {
            // As Consul does after a leader change, every session restored from disk gets a
            // fresh TTL: its holder had no way to renew while this agent was down.
            let mut tracker = self.sessions.lock().expect("session lock poisoned");
            self.read(|s| {
                for session in s.sessions() {
                    tracker.handle_renew(now, &session.id, session.ttl_ms);
                }
            });
        }
        let agent = self.clone();
        tokio::spawn(async move { agent.run_session_expiry().await });
    }

    async fn run_session_expiry(self: Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        let mut was_leader = false;
        // The sessions table's index when the tracker was last matched with the store.
        let mut tracked_index = None;
        loop {
            if *shutdown.borrow_and_update() {
                return;
            }
            let next = self
                .sessions
                .lock()
                .expect("session lock poisoned")
                .next_deadline_ms();
            let mut sleep_ms = next.map_or(3_600_000, |at| at.saturating_sub(mono_ms()));
            if self.replicated().is_some() {
                // Leadership comes and goes, and sessions arrive through other servers.
                sleep_ms = sleep_ms.min(250);
            }
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_millis(sleep_ms)) => {}
                () = self.sessions_changed.notified() => continue,
                _ = shutdown.changed() => return,
            }
            if let Some(replicated) = self.replicated() {
                // Only the leader measures TTLs. A server that has just become leader
                // grants every session a fresh TTL before expiring any (as Consul does),
                // and tracks sessions created through other servers.
                let is_leader = replicated.status.borrow().is_leader;
                if !is_leader {
                    was_leader = false;
                    continue;
                }
                let index = self.read(|s| s.table_index(Table::Sessions));
                if !was_leader || tracked_index != Some(index) {
                    self.track_all_sessions(!was_leader);
                    tracked_index = Some(index);
                }
                was_leader = true;
            }
            let expired = self
                .sessions
                .lock()
                .expect("session lock poisoned")
                .take_expired(mono_ms());
            for id in expired {
                tracing::info!(session = %id, "session TTL expired, invalidating");
                if let Err(error) = self
                    .propose(Command::SessionDestroy { id: id.clone() })
                    .await
                {
                    tracing::warn!(session = %id, %error, "could not invalidate expired session");
                    // Try again shortly rather than leave a dead session holding locks.
                    self.sessions
                        .lock()
                        .expect("session lock poisoned")
                        .handle_renew(mono_ms(), &id, 1_000);
                }
            }
        }
    }

    /// Makes the tracker hold exactly the sessions of the store (run by the leader when the
    /// sessions table changed); with `fresh`, every session's TTL restarts now (a new leader
    /// cannot know when they were last renewed).
    fn track_all_sessions(&self, fresh: bool) {
        let now = mono_ms();
        let sessions: Vec<(String, u64)> =
            self.read(|s| s.sessions().map(|x| (x.id.clone(), x.ttl_ms)).collect());
        let mut tracker = self.sessions.lock().expect("session lock poisoned");
        for (id, ttl_ms) in &sessions {
            if fresh || !tracker.is_tracked(id) {
                tracker.handle_renew(now, id, *ttl_ms);
            }
        }
        let live: std::collections::HashSet<&str> =
            sessions.iter().map(|(id, _)| id.as_str()).collect();
        for id in tracker.ids() {
            if !live.contains(id.as_str()) {
                tracker.handle_remove(&id);
            }
        }
    }

    /// Creates a session; returns its ID.
    ///
    /// # Errors
    /// [`AgentError`] if the session is refused (missing or critical check, unknown node).
    pub async fn create_session(&self, mut session: Session) -> Result<String, AgentError> {
        session.id = self.new_uuid();
        if session.lease_id == 0 {
            session.lease_id = self.new_lease_id();
        }
        let id = session.id.clone();
        let ttl_ms = session.ttl_ms;
        let applied = self.propose(Command::SessionCreate(session)).await?;
        outcome_to_result(applied.outcome)?;
        self.sessions
            .lock()
            .expect("session lock poisoned")
            .handle_renew(mono_ms(), &id, ttl_ms);
        self.sessions_changed.notify_one();
        Ok(id)
    }

    /// A fresh lease ID: random, positive, and (with overwhelming likelihood) unused.
    pub fn new_lease_id(&self) -> i64 {
        loop {
            let id = (self.random_u64() >> 1) as i64;
            if id != 0 && self.read(|s| s.lease_session(id).is_none()) {
                return id;
            }
        }
    }

    /// How long until `id`'s TTL runs out, if it has one and it is tracked here.
    pub fn session_remaining_ms(&self, id: &str) -> Option<u64> {
        let deadline = self
            .sessions
            .lock()
            .expect("session lock poisoned")
            .deadline_ms(id)?;
        Some(deadline.saturating_sub(mono_ms()))
    }

    /// Renews a session's TTL; returns the session, or `None` if it does not exist. On a
    /// replicated server the leader measures TTLs, so a follower forwards the renewal.
    ///
    /// # Errors
    /// [`AgentError::Write`] when there is no leader to renew with.
    pub async fn renew_session(&self, id: &str) -> Result<Option<Session>, AgentError> {
        if self.replicated().is_some() {
            return self
                .renew_on_leader(id)
                .await
                .map_err(|e| AgentError::Write(e.into()));
        }
        Ok(self.renew_session_here(id))
    }

    /// Renews a session's TTL in this agent's tracker.
    pub(crate) fn renew_session_here(&self, id: &str) -> Option<Session> {
        let session = self.read(|s| s.session(id).cloned())?;
        self.sessions
            .lock()
            .expect("session lock poisoned")
            .handle_renew(mono_ms(), id, session.ttl_ms);
        self.sessions_changed.notify_one();
        Some(session)
    }

    /// Destroys a session.
    ///
    /// # Errors
    /// [`AgentError::Write`] if the write fails.
    pub async fn destroy_session(&self, id: &str) -> Result<(), AgentError> {
        self.propose(Command::SessionDestroy { id: id.to_string() })
            .await?;
        self.sessions
            .lock()
            .expect("session lock poisoned")
            .handle_remove(id);
        Ok(())
    }

    // ===== Checks =====

    /// Updates a TTL check's status (Consul's `check/pass|warn|fail|update`) and restarts its
    /// TTL.
    ///
    /// # Errors
    /// [`AgentError::NotFound`] for an unknown check, [`AgentError::Invalid`] for a check that
    /// is not a TTL check.
    pub async fn update_ttl_check(
        &self,
        node: &str,
        check_id: &str,
        status: HealthStatus,
        output: String,
    ) -> Result<(), AgentError> {
        let check = self
            .read(|s| s.check(node, check_id).cloned())
            .ok_or_else(|| AgentError::NotFound(format!("unknown check ID {check_id:?}")))?;
        if check.definition.ttl_ms.is_none() {
            return Err(AgentError::Invalid(format!(
                "check {check_id:?} is not a TTL check"
            )));
        }
        if node == self.config.node_name {
            self.checks.reset_ttl(check_id, mono_ms(), status);
        }
        self.metrics
            .check_results
            .get_or_create(&crate::metrics::CheckLabels {
                kind: "ttl".into(),
                status: status.as_str().into(),
            })
            .inc();
        if check.status != status || check.output != output {
            let command = Command::CheckUpdate {
                node: node.to_string(),
                check_id: check_id.to_string(),
                status,
                output,
            };
            outcome_to_result(self.propose(command).await?.outcome)?;
        }
        Ok(())
    }

    /// When this agent last observed `check_id`'s result, and for how long it holds.
    pub fn check_observation(&self, check_id: &str) -> Option<(u64, u64)> {
        self.checks.observation(check_id)
    }
}

/// Turns a state-machine outcome into a result.
///
/// # Errors
/// [`AgentError`] for a rejected command.
pub fn outcome_to_result(outcome: Outcome) -> Result<Outcome, AgentError> {
    match outcome {
        Outcome::Rejected(rejection) => Err(match rejection.kind {
            colony_store::RejectionKind::NotFound => AgentError::NotFound(rejection.message),
            colony_store::RejectionKind::Invalid => AgentError::Invalid(rejection.message),
        }),
        other => Ok(other),
    }
}

/// Refuses a data dir written in the other mode: a single-node log and a replicated
/// server's Raft log are different histories of different stores.
fn check_data_dir_mode(config: &AgentConfig) -> Result<(), StartError> {
    let raft = config.data_dir.join(RAFT_DIR_NAME);
    let single = config.data_dir.join(crate::log_store::WAL_DIR_NAME);
    if config.cluster.is_some() && single.exists() {
        return Err(StartError::WrongMode(format!(
            "data dir {} holds a single-node server's log ({}); a replicated server \
             (--bootstrap-expect) needs its own data dir",
            config.data_dir.display(),
            single.display()
        )));
    }
    if config.cluster.is_none() && raft.exists() {
        return Err(StartError::WrongMode(format!(
            "data dir {} holds a replicated server's Raft log ({}); start it with \
             --bootstrap-expect (or --join a cluster), or use another data dir",
            config.data_dir.display(),
            raft.display()
        )));
    }
    Ok(())
}

fn load_or_create_node_id(dir: &std::path::Path) -> Result<String, StartError> {
    let path = dir.join("node-id");
    let fail = |detail: String| StartError::NodeId {
        path: path.clone(),
        detail,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim().to_string();
            if id.len() != 36 || id.matches('-').count() != 4 {
                return Err(fail(format!("does not hold a UUID: {id:?}")));
            }
            Ok(id)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let seed = wall_ms() ^ u64::from(std::process::id()).rotate_left(17);
            let id = SplitMix64::new(seed).uuid();
            let tmp = dir.join("node-id.tmp");
            std::fs::write(&tmp, format!("{id}\n"))
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| fail(e.to_string()))?;
            Ok(id)
        }
        Err(error) => Err(fail(error.to_string())),
    }
}

/// The node-level check that says whether a member is alive (Consul's `serfHealth`), with
/// Consul's outputs.
pub(crate) fn node_health_check(node: &str, status: HealthStatus) -> Check {
    let output = if status == HealthStatus::Passing {
        "Agent alive and reachable"
    } else {
        "Agent not live or unreachable"
    };
    Check {
        node: node.to_string(),
        id: NODE_HEALTH_CHECK_ID.to_string(),
        name: "Serf Health Status".to_string(),
        status,
        notes: String::new(),
        output: output.to_string(),
        service_id: String::new(),
        service_name: String::new(),
        service_tags: Vec::new(),
        definition: CheckDefinition::default(),
        status_observed_ms: wall_ms(),
        create_index: 0,
        modify_index: 0,
    }
}
