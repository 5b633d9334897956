//! The Raft node of a replicated server: one thread that drives the sans-IO core
//! (`colony-raft`) with the monotonic clock, persists what each `Ready` says through
//! [`RaftStorage`], sends messages through the peer transport, applies committed entries to
//! the state machine, and answers proposers and readers. It replaces the single-node writer
//! when the agent runs as a replicated server.

use crate::background::BackgroundJob;
use crate::log_store::AppendError;
use crate::metrics::Metrics;
use crate::raft_storage::RaftStorage;
use crate::rpc::Peers;
use crate::snapshot_schedule::SnapshotSchedule;
use crate::watch_hub::WatchHub;
use crate::writer::{Applied, Proposal, StorageMode, WriteError};
use colony_modes::Signal;
use colony_raft::{
    ConfChange, Config, Entry as RaftEntry, EntryKind, ProposeError, Raft, ReadState, Ready,
    RequestError, Restored, Role, Snapshot, SnapshotMeta,
};
use colony_store::{Command, Entry, StateMachine};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// How many inputs the node handles before it persists and sends (one fsync covers them).
const INPUTS_PER_ROUND_MAX: usize = 1024;

/// What the rest of the agent asks of the Raft node.
pub(crate) enum RaftInput {
    /// Append a command (this node must lead).
    Propose(Box<Proposal>),
    /// A message from another server.
    Message {
        from: u64,
        message: Box<colony_raft::Message>,
    },
    /// A linearizable read barrier: answers the index to wait for (this node must lead).
    ReadIndex(oneshot::Sender<Result<u64, ClusterError>>),
    /// Form the cluster with these voters (only a fresh node acts on it).
    Bootstrap(Vec<u64>),
    /// Add or remove a voter (this node must lead).
    ConfChange(ConfChange, oneshot::Sender<Result<u64, ClusterError>>),
    /// Hand leadership to another voter (this node must lead).
    Transfer(u64, oneshot::Sender<Result<(), ClusterError>>),
    /// Server `id`'s stream closed and its RPC port refuses connections: if it leads, elect
    /// another leader now rather than after an election timeout.
    PeerDown(u64),
    /// The agent is shutting down: return from the raft thread (while the runtime it
    /// borrows timers from still runs).
    Stop,
}

/// Why a cluster operation was not done. Nothing changed unless the variant says so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ClusterError {
    /// This server does not lead; `leader` is the one it knows of.
    #[error("not the leader")]
    NotLeader {
        /// The leader's Raft id, if known.
        leader: Option<u64>,
    },
    /// There is no leader now (an election is under way, or quorum is lost).
    #[error("No cluster leader")]
    NoLeader,
    /// The leader lost its leadership before the write committed: it may or may not apply.
    #[error("leadership lost while committing log: the write may or may not have been applied")]
    LeadershipLost,
    /// The leader is busy; try again shortly.
    #[error("{0}")]
    Busy(String),
    /// The request makes no sense (e.g. adding a voter twice).
    #[error("{0}")]
    Invalid(String),
    /// The server is stopping or its storage failed.
    #[error("{0}")]
    Unavailable(String),
}

/// The Raft state other parts of the agent read (status endpoints, forwarding, evidence).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftStatus {
    /// This server's Raft id.
    pub id: u64,
    /// Whether the server has a cluster configuration (bootstrapped or joined).
    pub is_member: bool,
    /// The current term.
    pub term: u64,
    /// Whether this server leads.
    pub is_leader: bool,
    /// The leader this server knows of.
    pub leader: Option<u64>,
    /// Voters, sorted.
    pub voters: Vec<u64>,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Last log index.
    pub last_index: u64,
    /// When this server last heard from a leader (a leader: now), on the monotonic clock
    /// of [`crate::agent::mono_ms`] — never the wall clock, which can be stepped back and
    /// would stretch the lease and the staleness bounds below.
    pub last_contact_mono_ms: u64,
    /// A leader: until when (monotonic ms) its lease lets it answer reads from its own
    /// state ([`colony_raft::Raft::lease_until_ms`]); 0 without a lease.
    pub lease_until_mono_ms: u64,
    /// A leader: when (monotonic ms) the latest heartbeat round a quorum has answered was
    /// sent (the lease's start); 0 when unknown.
    pub quorum_contact_mono_ms: u64,
}

/// What the node is built from.
pub(crate) struct RaftNode {
    pub(crate) id: u64,
    pub(crate) config: Config,
    pub(crate) seed: u64,
    pub(crate) storage: RaftStorage,
    pub(crate) restored: Restored,
    pub(crate) state: Arc<RwLock<StateMachine>>,
    pub(crate) hub: Arc<WatchHub>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) peers: Arc<Peers>,
    pub(crate) status: watch::Sender<RaftStatus>,
    pub(crate) fatal: watch::Sender<Option<String>>,
    pub(crate) snapshot_every_entries: u64,
    pub(crate) wall_ms: fn() -> u64,
    pub(crate) fsync: Arc<crate::disk_watch::FsyncLatencies>,
    pub(crate) storage_mode: Arc<StorageMode>,
    /// Published before anything is sent, for linearizable reads off the Raft threads.
    pub(crate) read_gate: Arc<crate::read_gate::ReadGate>,
}

/// How often a server whose disk is full tries again to persist what it holds.
const DISK_FULL_RETRY: Duration = Duration::from_secs(1);
/// How long compaction waits after a snapshot could not be written for lack of space.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(10);
/// How often (ms) the raft thread looks whether a snapshot being written has finished.
const SNAPSHOT_POLL_MS: u64 = 5;

struct Pending {
    term: u64,
    reply: oneshot::Sender<Result<Applied, WriteError>>,
}

struct Driver {
    raft: Raft,
    storage: RaftStorage,
    state: Arc<RwLock<StateMachine>>,
    hub: Arc<WatchHub>,
    metrics: Arc<Metrics>,
    peers: Arc<Peers>,
    status: watch::Sender<RaftStatus>,
    fatal: watch::Sender<Option<String>>,
    /// When the next snapshot is due.
    schedule: SnapshotSchedule,
    wall_ms: fn() -> u64,
    fsync: Arc<crate::disk_watch::FsyncLatencies>,
    storage_mode: Arc<StorageMode>,
    read_gate: Arc<crate::read_gate::ReadGate>,
    /// A Ready whose persistence failed because the disk is full: it is persisted again
    /// (nothing of it sent or applied meanwhile) before any other Ready is taken.
    held: Option<Ready>,
    /// When to try persisting `held` again.
    held_retry_at: Instant,
    /// A persist failed for lack of space and none has succeeded since.
    disk_full: bool,
    /// No compaction before this time (a snapshot did not fit).
    compact_retry_at: Instant,
    started: Instant,
    config: Config,
    seed: u64,
    /// Proposals appended here as leader, by index.
    pending: BTreeMap<u64, Pending>,
    /// ReadIndex requests by context.
    reads: HashMap<u64, oneshot::Sender<Result<u64, ClusterError>>>,
    next_read_ctx: u64,
    last_contact_mono_ms: u64,
    /// Role, term and leader last logged, so that each change is logged once.
    logged_role: (Role, u64, Option<u64>),
    /// A snapshot of this node's state being written on its own thread.
    snapshot_job: Option<SnapshotJob>,
}

/// A snapshot of the node's own state, being encoded and made durable off the raft thread
/// (a large state takes long to write and fsync; heartbeats, appends and reads go on
/// meanwhile). The log is compacted once it is durable.
struct SnapshotJob {
    index: u64,
    /// The schedule's mark at the capture.
    mark: u64,
    /// The snapshot file, for error messages.
    path: std::path::PathBuf,
    /// Time spent on the raft thread copying the state.
    capture: Duration,
    started: Instant,
    /// Joined when dropped, so a restart in the same process never finds this snapshot
    /// still being renamed into place under it.
    thread: BackgroundJob<(Snapshot, Result<(), AppendError>)>,
}

impl RaftNode {
    /// Runs until every input sender is gone or storage fails. The thread waits for its
    /// inputs on `waiting`, a current-thread runtime that also runs the tasks reading inbound
    /// Raft streams (they only run while the thread waits; what arrives meanwhile stays in
    /// the sockets' buffers); `runtime`, the agent's, is the context for everything else.
    pub(crate) fn run(
        self,
        runtime: tokio::runtime::Handle,
        waiting: tokio::runtime::Runtime,
        mut rx: mpsc::Receiver<RaftInput>,
    ) {
        let _context = runtime.enter();
        let restored_bytes = self.restored.snapshot.as_ref().map_or(0, |s| s.data.len());
        let raft = Raft::new(self.id, &[], self.config.clone(), self.seed, self.restored);
        let mut driver = Driver {
            raft,
            storage: self.storage,
            state: self.state,
            hub: self.hub,
            metrics: self.metrics,
            peers: self.peers,
            status: self.status,
            fatal: self.fatal,
            schedule: SnapshotSchedule::new(self.snapshot_every_entries, restored_bytes as u64),
            wall_ms: self.wall_ms,
            fsync: self.fsync,
            storage_mode: self.storage_mode,
            read_gate: self.read_gate,
            held: None,
            held_retry_at: Instant::now(),
            disk_full: false,
            compact_retry_at: Instant::now(),
            started: Instant::now(),
            config: self.config,
            seed: self.seed,
            pending: BTreeMap::new(),
            reads: HashMap::new(),
            next_read_ctx: 1,
            last_contact_mono_ms: 0,
            logged_role: (Role::Follower, 0, None),
            snapshot_job: None,
        };
        driver.publish_status();
        loop {
            let now = driver.now_ms();
            let wait_ms = driver
                .raft
                .next_deadline_ms()
                .map_or(0, |at| at.saturating_sub(now))
                .min(if driver.snapshot_job.is_some() {
                    SNAPSHOT_POLL_MS
                } else {
                    1_000
                });
            // Made inside `block_on`, the timeout's timer is the waiting runtime's (see the
            // writer's loop).
            let wait = Duration::from_millis(wait_ms);
            let first = match wait_for_input(&waiting, &mut rx, wait) {
                Ok(Some(input)) => Some(input),
                Ok(None) => return,
                Err(_) => None,
            };
            if let Some(input) = first {
                if matches!(input, RaftInput::Stop) {
                    return;
                }
                driver.handle(input);
                for _ in 1..INPUTS_PER_ROUND_MAX {
                    match rx.try_recv() {
                        Ok(RaftInput::Stop) => return,
                        Ok(input) => driver.handle(input),
                        Err(_) => break,
                    }
                }
            }
            let now = driver.now_ms();
            driver.raft.handle_tick(now);
            if driver.process_ready().is_err() {
                driver.fail_all("the server's storage failed");
                return;
            }
            driver.publish_status();
        }
    }
}

/// Waits on `waiting` up to `wait` for the next input (`Ok(None)`: every sender is gone).
/// The readers of inbound Raft streams woken since the last wait run first: `block_on`
/// polls its future before any task, so with inputs always queued a bare `recv` would be
/// ready every time and the readers would never run.
fn wait_for_input<T>(
    waiting: &tokio::runtime::Runtime,
    rx: &mut mpsc::Receiver<T>,
    wait: Duration,
) -> Result<Option<T>, tokio::time::error::Elapsed> {
    waiting.block_on(async {
        tokio::task::yield_now().await;
        tokio::time::timeout(wait, rx.recv()).await
    })
}

impl Driver {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    fn handle(&mut self, input: RaftInput) {
        let now = self.now_ms();
        match input {
            RaftInput::Propose(proposal) => {
                if let Some(refusal) = self.disk_full_refusal() {
                    let _ = proposal.reply.send(Err(refusal));
                    return;
                }
                let entry = Entry {
                    time_ms: (self.wall_ms)(),
                    command: proposal.command,
                };
                match self.raft.propose(entry.encode()) {
                    Ok(index) => {
                        let term = self.raft.term();
                        self.pending.insert(
                            index,
                            Pending {
                                term,
                                reply: proposal.reply,
                            },
                        );
                    }
                    Err(error) => {
                        let _ = proposal.reply.send(Err(propose_error(error).into()));
                    }
                }
            }
            RaftInput::Message { from, message } => {
                if message.is_from_leader() && message.term() >= self.raft.term() {
                    self.last_contact_mono_ms = crate::agent::mono_ms();
                }
                self.raft.handle_message(now, from, *message);
            }
            RaftInput::ReadIndex(reply) => {
                let ctx = self.next_read_ctx;
                self.next_read_ctx += 1;
                match self.raft.read_index(ctx) {
                    Ok(()) => {
                        self.reads.insert(ctx, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(request_error(error)));
                    }
                }
            }
            RaftInput::Bootstrap(voters) => self.bootstrap(voters),
            RaftInput::ConfChange(change, reply) => {
                let _ = reply.send(self.raft.propose_conf_change(change).map_err(propose_error));
            }
            RaftInput::Transfer(target, reply) => {
                let _ = reply.send(
                    self.raft
                        .transfer_leadership(now, target)
                        .map_err(request_error),
                );
            }
            RaftInput::Stop => {}
            RaftInput::PeerDown(id) => {
                if self.raft.leader() == Some(id) {
                    tracing::info!(
                        leader = %crate::cluster::server_id_text(id),
                        "the leader's port refuses connections; starting an election now"
                    );
                }
                self.raft.handle_leader_unreachable(now, id);
            }
        }
    }

    /// Forms a new cluster: every bootstrapping server writes the same first entries (one
    /// `AddVoter` per voter, term 1, committed), as etcd does, so that servers added later
    /// learn the initial voters from the log itself.
    fn bootstrap(&mut self, mut voters: Vec<u64>) {
        if !self.storage.is_fresh() || !self.raft.voters().is_empty() {
            return;
        }
        voters.sort_unstable();
        voters.dedup();
        if !voters.contains(&self.raft.id()) {
            return;
        }
        let entries: Vec<RaftEntry> = voters
            .iter()
            .enumerate()
            .map(|(offset, &id)| RaftEntry {
                index: offset as u64 + 1,
                term: 1,
                kind: EntryKind::ConfChange,
                data: ConfChange::AddVoter(id).encode(),
            })
            .collect();
        let hard_state = colony_raft::HardState {
            term: 1,
            voted_for: None,
            commit: entries.len() as u64,
        };
        if let Err(error) = self.storage.persist(None, &entries, Some(hard_state)) {
            self.report_fatal(&error);
            return;
        }
        tracing::info!(?voters, "bootstrapped the cluster");
        let restored = Restored {
            hard_state,
            snapshot: None,
            entries,
        };
        self.raft = Raft::new(
            self.raft.id(),
            &[],
            self.config.clone(),
            self.seed,
            restored,
        );
    }

    /// Persists, sends, applies and acknowledges until the core has nothing more.
    fn process_ready(&mut self) -> Result<(), ()> {
        let was_leader = self.raft.is_leader();
        loop {
            // Before anything of this round leaves the node (a vote in a later term, a
            // commit index), the gate shows it (read_gate.rs).
            self.read_gate.publish(&self.raft);
            let ready = match self.held.take() {
                Some(held) if Instant::now() < self.held_retry_at => {
                    self.held = Some(held);
                    break;
                }
                Some(held) => held,
                None if self.raft.has_ready() => {
                    let mut ready = self.raft.ready();
                    self.peers
                        .send_all(std::mem::take(&mut ready.leader_messages));
                    ready
                }
                None => break,
            };
            if ready.snapshot.is_some() {
                // The leader's snapshot supersedes ours: let ours finish writing (so that it
                // cannot replace the installed one on disk) and drop it.
                drop(self.snapshot_job.take());
            }
            let started = Instant::now();
            match self
                .storage
                .persist(ready.snapshot.as_ref(), &ready.entries, ready.hard_state)
            {
                Ok(()) => {}
                Err(error @ AppendError::DiskFull { .. }) => {
                    self.held = Some(ready);
                    self.held_retry_at = Instant::now() + DISK_FULL_RETRY;
                    self.enter_disk_full(&error);
                    break;
                }
                Err(error) => {
                    self.report_fatal(&error);
                    return Err(());
                }
            }
            if self.disk_full {
                self.leave_disk_full();
            }
            if !ready.entries.is_empty() {
                let took = started.elapsed();
                self.fsync.record(took);
                self.metrics.commit_seconds.observe(took.as_secs_f64());
                self.metrics
                    .commit_batch_entries
                    .observe(ready.entries.len() as f64);
            }
            self.peers.send_all(ready.messages);
            if let Some(snapshot) = &ready.snapshot {
                self.install(snapshot);
            }
            self.apply(&ready.committed_entries);
            self.answer_reads(&ready.read_states);
            self.fail_reads(&ready.read_failures);
            self.raft.advance();
            self.maybe_compact()?;
        }
        // A snapshot that finished while nothing else happened is collected here (the loop
        // above only looks after a Ready).
        if self
            .snapshot_job
            .as_ref()
            .is_some_and(|job| job.thread.is_finished())
        {
            self.maybe_compact()?;
        }
        if was_leader && !self.raft.is_leader() {
            // Entries appended as leader may still commit under the next leader, or be
            // overwritten: the outcome is unknown, and the proposers must be told so.
            // (Its reads fail through `Ready::read_failures`.)
            for (_, pending) in std::mem::take(&mut self.pending) {
                let _ = pending.reply.send(Err(ClusterError::LeadershipLost.into()));
            }
        }
        Ok(())
    }

    fn install(&mut self, snapshot: &Snapshot) {
        match StateMachine::from_snapshot(&snapshot.data) {
            Ok(state) => {
                *self.state.write().expect("state lock poisoned") = state;
                self.schedule.installed(snapshot.data.len() as u64);
                self.hub.notify_all(snapshot.meta.index);
                tracing::info!(
                    index = snapshot.meta.index,
                    "installed a snapshot from the leader"
                );
            }
            Err(error) => {
                // The leader encoded it with the same code: this is a bug or a version skew.
                panic!("snapshot from the leader does not decode: {error}");
            }
        }
    }

    fn apply(&mut self, entries: &[RaftEntry]) {
        if entries.is_empty() {
            return;
        }
        let mut results = Vec::with_capacity(entries.len());
        let bytes: usize = entries.iter().map(|entry| entry.data.len()).sum();
        self.schedule.applied(bytes as u64);
        {
            let mut state = self.state.write().expect("state lock poisoned");
            for entry in entries {
                let decoded = match entry.kind {
                    EntryKind::Normal => Entry::decode(&entry.data).unwrap_or_else(|e| {
                        panic!("committed entry {} does not decode: {e}", entry.index)
                    }),
                    EntryKind::Empty | EntryKind::ConfChange => Entry {
                        time_ms: 0,
                        command: Command::Noop,
                    },
                };
                let (outcome, changes) = state.apply(entry.index, &decoded);
                results.push((entry.index, entry.term, outcome, changes));
            }
        }
        self.metrics.applied_entries.inc_by(results.len() as u64);
        for (index, term, outcome, changes) in results {
            self.hub.notify(&changes, index);
            if let Some(pending) = self.pending.remove(&index) {
                let answer = if pending.term == term {
                    Ok(Applied { index, outcome })
                } else {
                    Err(ClusterError::LeadershipLost.into())
                };
                let _ = pending.reply.send(answer);
            }
        }
    }

    fn answer_reads(&mut self, read_states: &[ReadState]) {
        for read in read_states {
            if let Some(reply) = self.reads.remove(&read.ctx) {
                let _ = reply.send(Ok(read.index));
            }
        }
    }

    /// Reads the Raft node gave up on (leadership lost, no leader to ask): their callers
    /// ask again once a leader is known.
    fn fail_reads(&mut self, ctxs: &[u64]) {
        for ctx in ctxs {
            if let Some(reply) = self.reads.remove(ctx) {
                let _ = reply.send(Err(ClusterError::NotLeader {
                    leader: self.raft.leader(),
                }));
            }
        }
    }

    /// Snapshots the state machine when the [`SnapshotSchedule`] says so, saves it, and
    /// lets the core drop the log it covers.
    fn maybe_compact(&mut self) -> Result<(), ()> {
        if let Some(job) = self.snapshot_job.take() {
            if !job.thread.is_finished() {
                self.snapshot_job = Some(job);
                return Ok(());
            }
            return self.finish_snapshot(job);
        }
        if Instant::now() < self.compact_retry_at {
            return Ok(());
        }
        let applied = self.raft.applied_index();
        let since = applied.saturating_sub(self.raft.snapshot_meta().index);
        if !self.schedule.due(since) {
            return Ok(());
        }
        let Some(term) = self.raft.term_at(applied) else {
            return Ok(());
        };
        // A copy of the state is quicker to take than its encoding; the encoding, the write
        // and the fsync happen on the snapshot thread (as the single-node writer does).
        let captured = Instant::now();
        let state = {
            let state = self.state.read().expect("state lock poisoned");
            if state.applied_index() != applied {
                return Ok(());
            }
            state.clone()
        };
        let capture = captured.elapsed();
        let meta = SnapshotMeta {
            index: applied,
            term,
        };
        let voters = self.raft.voters().to_vec();
        let writer = self.storage.snapshot_writer();
        let path = writer.path();
        let started = Instant::now();
        // Room for some growth since the last one.
        let last = self.schedule.snapshot_bytes() as usize;
        let capacity_hint = last + last / 8;
        let mark = self.schedule.mark();
        let thread = BackgroundJob::spawn("colony-snapshot", move || {
            let snapshot = Snapshot {
                meta,
                voters,
                data: state.to_snapshot_sized(capacity_hint),
            };
            let result = writer.write(&snapshot);
            (snapshot, result)
        });
        match thread {
            Ok(thread) => {
                self.snapshot_job = Some(SnapshotJob {
                    index: applied,
                    mark,
                    path,
                    capture,
                    started,
                    thread,
                });
                Ok(())
            }
            Err(error) => {
                // No thread to spare: try again later rather than stall this one.
                tracing::warn!(%error, "could not start the snapshot writer thread");
                self.compact_retry_at = Instant::now() + SNAPSHOT_RETRY;
                Ok(())
            }
        }
    }

    /// A snapshot writer thread is done: compact the log up to it, or degrade the storage
    /// mode if the disk had no room for it.
    fn finish_snapshot(&mut self, job: SnapshotJob) -> Result<(), ()> {
        let Ok((snapshot, result)) = job.thread.join() else {
            let error = AppendError::Fatal {
                path: job.path,
                detail: format!(
                    "the thread writing the snapshot at index {} panicked",
                    job.index
                ),
            };
            self.report_fatal(&error);
            return Err(());
        };
        match result {
            Ok(()) => {}
            Err(error @ AppendError::DiskFull { .. }) => {
                // The log keeps growing until a snapshot fits; writes still work.
                let reason = format!("cannot write a snapshot: {error}");
                tracing::warn!(%reason, "storage degraded: the log is not compacted");
                self.storage_mode.signal(
                    &self.metrics,
                    crate::agent::mono_ms(),
                    Signal::Impaired,
                    &reason,
                );
                self.compact_retry_at = Instant::now() + SNAPSHOT_RETRY;
                return Ok(());
            }
            Err(error) => {
                self.report_fatal(&error);
                return Err(());
            }
        }
        let index = snapshot.meta.index;
        let bytes = snapshot.data.len();
        self.schedule.written(job.mark, bytes as u64);
        self.storage.handle_snapshot_written(index);
        self.raft.compact(index, snapshot.data);
        self.metrics.snapshots.inc();
        tracing::info!(
            index,
            bytes,
            capture_ms = job.capture.as_millis() as u64,
            write_ms = job.started.elapsed().as_millis() as u64,
            "snapshot written; the log is compacted up to it"
        );
        Ok(())
    }

    fn publish_status(&mut self) {
        let status = self.raft.status();
        let is_leader = status.role == Role::Leader;
        let mono_now = crate::agent::mono_ms();
        let role = (status.role, status.term, status.leader);
        if role != self.logged_role {
            self.logged_role = role;
            tracing::info!(
                role = ?status.role,
                term = status.term,
                leader = %status.leader.map_or("none".into(), crate::cluster::server_id_text),
                "raft role or term changed"
            );
        }
        if is_leader {
            self.last_contact_mono_ms = mono_now;
        }
        // The lease is on the raft clock; carry it over to the agent's monotonic clock, which
        // the API reads (both are monotonic: only their zeros differ).
        let (lease_until_mono_ms, quorum_contact_mono_ms) = match status.lease_until_ms {
            Some(u64::MAX) => (u64::MAX, mono_now),
            Some(until) => {
                let core_now = self.now_ms();
                let lease_ms = self.config.lease_ms();
                let until_mono = (mono_now + until).saturating_sub(core_now);
                (until_mono, until_mono.saturating_sub(lease_ms))
            }
            None => (0, 0),
        };
        let next = RaftStatus {
            id: status.id,
            is_member: !status.voters.is_empty(),
            term: status.term,
            is_leader,
            leader: status.leader,
            voters: status.voters,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            last_index: status.last_index,
            last_contact_mono_ms: self.last_contact_mono_ms,
            lease_until_mono_ms,
            quorum_contact_mono_ms,
        };
        self.status.send_if_modified(|current| {
            // Contact times and the lease alone change on every heartbeat; publish them
            // without waking watchers only when something else changed too.
            let changed = RaftStatus {
                last_contact_mono_ms: current.last_contact_mono_ms,
                lease_until_mono_ms: current.lease_until_mono_ms,
                quorum_contact_mono_ms: current.quorum_contact_mono_ms,
                ..next.clone()
            } != *current;
            *current = next;
            changed
        });
    }

    /// The disk is full: storage goes to Floor, and a leader hands leadership to the most
    /// caught-up voter (again on each retry while it still leads).
    fn enter_disk_full(&mut self, error: &AppendError) {
        let reason = error.to_string();
        if !self.disk_full {
            tracing::error!(%reason, "disk full: storage enters floor mode; writes are refused here");
            self.disk_full = true;
            self.storage_mode.set_disk_full(true);
        }
        self.storage_mode.signal(
            &self.metrics,
            crate::agent::mono_ms(),
            Signal::Failed,
            &reason,
        );
        if !self.raft.is_leader() {
            return;
        }
        let status = self.raft.status();
        let Some(target) = status
            .peers
            .iter()
            .filter(|p| status.voters.contains(&p.id))
            .max_by_key(|p| p.match_index)
            .map(|p| p.id)
        else {
            return;
        };
        match self.raft.transfer_leadership(self.now_ms(), target) {
            Ok(()) => tracing::warn!(
                to = %crate::cluster::server_id_text(target),
                "this leader's disk is full; transferring leadership"
            ),
            Err(error) => tracing::debug!(%error, "leadership transfer not started"),
        }
    }

    /// Persisting works again: storage starts its way back from Floor.
    fn leave_disk_full(&mut self) {
        tracing::info!("disk space is back: what this server held is durable again");
        self.disk_full = false;
        self.storage_mode.set_disk_full(false);
        self.storage_mode.signal(
            &self.metrics,
            crate::agent::mono_ms(),
            Signal::Healthy,
            "writes are durable again",
        );
    }

    /// Why a proposal cannot be taken while the disk is full, if it is: a leader handing
    /// over answers Busy (the proposer retries on the next leader), otherwise Refused.
    fn disk_full_refusal(&self) -> Option<WriteError> {
        if !self.disk_full {
            return None;
        }
        let reason = self.storage_mode.reason();
        if self.raft.is_leader() && self.raft.voters().len() > 1 {
            Some(
                ClusterError::Busy(format!(
                    "the leader's disk is full, leadership is moving: {reason}"
                ))
                .into(),
            )
        } else {
            Some(WriteError::Refused { reason })
        }
    }

    fn report_fatal(&self, error: &AppendError) {
        let message = error.to_string();
        tracing::error!(%message, "unrecoverable storage error: stopping the server");
        let _ = self.fatal.send(Some(message));
    }

    fn fail_all(&mut self, why: &str) {
        for (_, pending) in std::mem::take(&mut self.pending) {
            let _ = pending.reply.send(Err(WriteError::Fatal(why.to_string())));
        }
        for (_, reply) in self.reads.drain() {
            let _ = reply.send(Err(ClusterError::Unavailable(why.to_string())));
        }
    }
}

fn propose_error(error: ProposeError) -> ClusterError {
    match error {
        ProposeError::NotLeader { leader_hint } => ClusterError::NotLeader {
            leader: leader_hint,
        },
        ProposeError::InvalidConfChange => ClusterError::Invalid(error.to_string()),
        other => ClusterError::Busy(other.to_string()),
    }
}

fn request_error(error: RequestError) -> ClusterError {
    match error {
        RequestError::NotLeader { leader_hint } => ClusterError::NotLeader {
            leader: leader_hint,
        },
        RequestError::BadTarget => ClusterError::Invalid(error.to_string()),
        other => ClusterError::Busy(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// The raft thread's wait lets a task reading a socket on its runtime run even when an
    /// input is always queued: the reader's messages get through.
    #[test]
    fn waiting_with_inputs_always_queued_still_runs_the_socket_readers() {
        let waiting = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (inputs, mut rx) = tokio::sync::mpsc::channel::<u64>(1024);
        let (listener, addr) = waiting.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            (listener, addr)
        });
        let read = Arc::new(AtomicU64::new(0));
        let reading = read.clone();
        waiting.spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut byte = [0u8; 1];
            while socket.read_exact(&mut byte).await.is_ok() {
                reading.fetch_add(1, Ordering::Relaxed);
            }
        });
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut socket = std::net::TcpStream::connect(addr).expect("connect");
            for _ in 0..10 {
                socket.write_all(&[1]).expect("write");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while read.load(Ordering::Relaxed) < 10 {
            assert!(
                std::time::Instant::now() < deadline,
                "the reader starved: {} of 10 bytes read",
                read.load(Ordering::Relaxed)
            );
            // An input is always queued when the thread comes to wait.
            inputs.try_send(1).expect("room");
            let got = super::wait_for_input(&waiting, &mut rx, Duration::from_secs(10));
            assert_eq!(got.ok(), Some(Some(1)));
        }
        writer.join().expect("writer");
    }
}
