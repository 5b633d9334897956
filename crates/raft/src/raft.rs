//! The Raft state machine: roles, elections, replication, compaction and the Ready contract.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use colony_base::SplitMix64;

use crate::config::Config;
use crate::log::RaftLog;
use crate::message::{
    ConfChange, Entry, EntryKind, Envelope, HardState, Message, ReadState, Rejection, Restored,
    Snapshot, SnapshotMeta,
};
use crate::progress::{Progress, ReplicationState};

/// Pending ReadIndex requests a leader holds at most.
pub const READ_REQUESTS_MAX: usize = 4_096;
/// Heartbeat rounds whose send time a leader remembers for its lease.
const HEARTBEAT_ROUNDS_KEPT: usize = 1_024;

/// The role of a node in its current term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking for pre-votes; the term is not yet incremented.
    PreCandidate,
    /// Campaigning in its own term.
    Candidate,
    /// Leads its term.
    Leader,
}

/// Why a proposal was refused. The node's state did not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProposeError {
    /// Only the leader accepts proposals; `leader_hint` is who this node believes leads.
    NotLeader {
        /// The leader this node knows of, if any.
        leader_hint: Option<u64>,
    },
    /// A leadership transfer is under way; retry on the new leader.
    TransferInProgress,
    /// Too many entries await commit (`Config::uncommitted_entries_max`); retry later.
    TooManyUncommitted,
    /// A membership change is still uncommitted, or this leader has not yet committed an
    /// entry of its term (thesis §4.1, the fix for single-server changes); retry later.
    ConfChangeInProgress,
    /// The change is not a change: adding a voter, removing a non-voter, or removing the
    /// leader itself (transfer leadership first).
    InvalidConfChange,
}

impl fmt::Display for ProposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposeError::NotLeader {
                leader_hint: Some(id),
            } => {
                write!(f, "not the leader (leader is {id})")
            }
            ProposeError::NotLeader { leader_hint: None } => write!(f, "not the leader"),
            ProposeError::TransferInProgress => write!(f, "leadership transfer in progress"),
            ProposeError::TooManyUncommitted => write!(f, "too many uncommitted entries"),
            ProposeError::ConfChangeInProgress => write!(f, "a membership change is in progress"),
            ProposeError::InvalidConfChange => write!(f, "invalid membership change"),
        }
    }
}

impl std::error::Error for ProposeError {}

/// Why a leadership transfer or a read request was refused. The node's state did not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// Only the leader serves this; `leader_hint` is who this node believes leads.
    NotLeader {
        /// The leader this node knows of, if any.
        leader_hint: Option<u64>,
    },
    /// The transfer target is this node or not a voter.
    BadTarget,
    /// The leader has not committed an entry in its term yet, so its commit index may be
    /// behind (Raft thesis §6.4); retry shortly.
    NotReady,
    /// Too many requests pending ([`READ_REQUESTS_MAX`]).
    Overloaded,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::NotLeader { .. } => write!(f, "not the leader"),
            RequestError::BadTarget => write!(f, "transfer target is not another voter"),
            RequestError::NotReady => write!(f, "leader has not committed in its term yet"),
            RequestError::Overloaded => write!(f, "too many pending read requests"),
        }
    }
}

impl std::error::Error for RequestError {}

/// What the caller must do, in this order (see the crate documentation; `leader_messages`
/// may also be sent right away, in parallel with step 1):
/// 1. persist `snapshot`, then `entries`, then `hard_state`, and fsync;
/// 2. send `messages` (and `leader_messages` if not sent yet);
/// 3. apply `committed_entries` (and restore `snapshot` into the state machine first);
/// 4. answer `read_states` once applied up to their index;
/// 5. call [`Raft::advance`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "a Ready must be persisted, sent, applied and acknowledged with advance()"]
pub struct Ready {
    /// Persist before sending any message of this Ready. `None`: unchanged.
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader. Persist it (it replaces the whole persisted log)
    /// before `entries`, and restore the state machine from it before applying
    /// `committed_entries`.
    pub snapshot: Option<Snapshot>,
    /// Entries to persist before sending any message. Persisted entries at or after
    /// `entries[0].index` must be overwritten (a new leader may have replaced them).
    pub entries: Vec<Entry>,
    /// Send only after `hard_state`, `snapshot` and `entries` are durable: a vote or an
    /// acknowledgement promises they survive a crash.
    pub messages: Vec<Envelope>,
    /// What this node sent as leader (appends, heartbeats, snapshots, `TimeoutNow`). These
    /// promise nothing about this node's disk — a leader counts its own entries towards a
    /// quorum only once `advance` says they are persisted — so they may be sent at once, in
    /// parallel with persisting this Ready (thesis §10.2.1), or together with `messages`.
    pub leader_messages: Vec<Envelope>,
    /// Committed entries, in order, safe to apply once `entries` are persisted.
    pub committed_entries: Vec<Entry>,
    /// Linearizable reads confirmed by a quorum: serve each once applied up to its index.
    pub read_states: Vec<ReadState>,
    /// Reads given to [`Raft::read_index`] that will never be answered (this node stopped
    /// leading, started an election, or found no leader to ask in time), by `ctx`: ask
    /// again, wherever the leader now is.
    pub read_failures: Vec<u64>,
}

impl Ready {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none()
            && self.snapshot.is_none()
            && self.entries.is_empty()
            && self.messages.is_empty()
            && self.leader_messages.is_empty()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
            && self.read_failures.is_empty()
    }
}

/// How a leader is replicating to one follower (etcd-raft's progress states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Finding where the follower's log matches: one append at a time.
    Probe,
    /// Pipelining appends.
    Replicate,
    /// Waiting for a snapshot covering up to this index to be installed.
    Snapshot(u64),
}

/// A leader's view of one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStatus {
    /// The follower.
    pub id: u64,
    /// Highest index known to match the leader's log.
    pub match_index: u64,
    /// Next index to send.
    pub next_index: u64,
    /// How appends are paced.
    pub state: PeerState,
    /// Heard from since the last check-quorum round.
    pub is_recent_active: bool,
}

/// A snapshot of a node's Raft state, for operators and metrics (`/v1/status/peers`,
/// `/v1/operator/raft/configuration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: u64,
    /// Current term.
    pub term: u64,
    /// Current role.
    pub role: Role,
    /// Known leader of the term.
    pub leader: Option<u64>,
    /// Voters, sorted, as this node's log says.
    pub voters: Vec<u64>,
    /// First index held (after the snapshot).
    pub first_index: u64,
    /// Last index held.
    pub last_index: u64,
    /// Persisted through this index.
    pub persisted_index: u64,
    /// Committed through this index.
    pub commit_index: u64,
    /// Applied through this index.
    pub applied_index: u64,
    /// Leader only: one entry per other voter, by id.
    pub peers: Vec<PeerStatus>,
    /// Leader only: until when (this node's clock) it may answer reads without a quorum
    /// round; see [`Raft::lease_until_ms`].
    pub lease_until_ms: Option<u64>,
}

/// What a handed-out Ready promised; consumed by `advance`.
#[derive(Debug, Clone)]
struct ReadyMark {
    hard_state: HardState,
    persisted_through: Option<(u64, u64)>,
    snapshot_index: Option<u64>,
    applied_through: u64,
}

#[derive(Debug, Clone)]
struct Transfer {
    target: u64,
    deadline_ms: u64,
}

/// A read a leader holds until a heartbeat round confirms it still leads.
#[derive(Debug, Clone)]
struct PendingRead {
    origin: ReadOrigin,
    index: u64,
    /// The round that confirms it.
    seq: u64,
    /// A voter whose request for this read already showed it follows this leader.
    acked_by: Option<u64>,
}

/// Who asked for a read index.
#[derive(Debug, Clone, Copy)]
enum ReadOrigin {
    /// This node's caller, with its `ctx`.
    Local(u64),
    /// A follower's [`Message::ReadIndex`] request `id`.
    Remote { from: u64, id: u64 },
}

/// A follower's reads on their way to the leader: a request covers every read that arrived
/// before it was sent, and one is out at a time.
#[derive(Debug, Clone, Default)]
struct ForwardedReads {
    /// Reads no request sent covers yet, as (ctx, arrived at).
    waiting: Vec<(u64, u64)>,
    /// The request out, if any.
    in_flight: Option<ReadRequest>,
    /// The last request id used. Ids start at a random point, so that a node restarted
    /// in the same term cannot take an answer meant for a request of its previous life.
    last_id: u64,
    /// No request before this time (the leader could not answer the last one).
    retry_at_ms: u64,
}

#[derive(Debug, Clone)]
struct ReadRequest {
    id: u64,
    /// The leader asked.
    to: u64,
    sent_ms: u64,
    /// The reads it covers, as (ctx, arrived at).
    reads: Vec<(u64, u64)>,
}

impl ForwardedReads {
    fn len(&self) -> usize {
        self.waiting.len() + self.in_flight.as_ref().map_or(0, |r| r.reads.len())
    }

    /// Puts the reads of the request out back with the waiting ones: a later request,
    /// sent after they arrived, serves them as well.
    fn requeue(&mut self) {
        if let Some(request) = self.in_flight.take() {
            let mut reads = request.reads;
            reads.append(&mut self.waiting);
            self.waiting = reads;
        }
    }
}

/// One Raft node, sans-IO. See the crate documentation for how to drive it.
#[derive(Debug, Clone)]
pub struct Raft {
    id: u64,
    voters: Vec<u64>,
    config: Config,
    rng: SplitMix64,
    term: u64,
    voted_for: Option<u64>,
    leader: Option<u64>,
    role: Role,
    log: RaftLog,
    /// Leader only: every other voter.
    progress: BTreeMap<u64, Progress>,
    /// (Pre-)candidate only: answers received, `true` for granted.
    votes: BTreeMap<u64, bool>,
    now_ms: u64,
    /// Followers and candidates: when to campaign. `None`: arm at the next input.
    election_deadline_ms: Option<u64>,
    heartbeat_deadline_ms: u64,
    check_quorum_deadline_ms: u64,
    /// When this node last heard from the leader of its term (leader stickiness).
    leader_contact_ms: Option<u64>,
    /// A restarted node may have answered a leader's heartbeat just before it went down, and
    /// that leader may be counting the answer in its lease; the contact was not persisted,
    /// so the node keeps out of elections until one minimum election timeout after its
    /// first input. `Some(0)` until that input dates the start; `None` for a fresh node,
    /// which answered no one.
    restart_quiet_until_ms: Option<u64>,
    transfer: Option<Transfer>,
    /// No lease reads before this time (set when a transfer is abandoned).
    lease_blocked_until_ms: u64,
    /// The latest heartbeat rounds as (round, sent at), oldest first.
    heartbeat_rounds: VecDeque<(u64, u64)>,
    /// When this node became leader of its current term.
    term_started_ms: u64,
    messages: Vec<Envelope>,
    leader_messages: Vec<Envelope>,
    persisted_hard_state: HardState,
    ready_mark: Option<ReadyMark>,
    reads: VecDeque<PendingRead>,
    read_seq: u64,
    read_states: Vec<ReadState>,
    read_failures: Vec<u64>,
    /// Follower only: reads waiting for a read index from the leader.
    forwarded: ForwardedReads,
}

impl Raft {
    /// Builds a node from what it persisted (`Restored::default()` for a fresh node). The
    /// caller has already restored its state machine from `restored.snapshot`; committed
    /// entries after it come out again through [`Raft::ready`].
    ///
    /// `voters` is the bootstrap voter set, used when `restored` has no snapshot; membership
    /// changes in the log apply on top. A node that is not a voter (a new server waiting to be
    /// added) never campaigns, and follows whichever leader contacts it.
    ///
    /// # Panics
    /// If `config` is invalid or `restored` is inconsistent.
    pub fn new(id: u64, voters: &[u64], config: Config, seed: u64, restored: Restored) -> Self {
        if let Err(error) = config.validate() {
            panic!("{error}");
        }
        let mut voters = voters.to_vec();
        voters.sort_unstable();
        voters.dedup();
        let hard_state = restored.hard_state;
        assert!(
            hard_state.voted_for.is_none() || hard_state.term > 0,
            "a vote belongs to a term"
        );
        let log = RaftLog::restore(
            restored.snapshot,
            restored.entries,
            hard_state.commit,
            voters,
        );
        let voters = log.voters();
        assert!(
            log.last_term() <= hard_state.term,
            "persisted entries from a future term"
        );
        let raft = Self {
            id,
            voters,
            config,
            rng: SplitMix64::new(seed),
            term: hard_state.term,
            voted_for: hard_state.voted_for,
            leader: None,
            role: Role::Follower,
            log,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            now_ms: 0,
            election_deadline_ms: None,
            heartbeat_deadline_ms: 0,
            check_quorum_deadline_ms: 0,
            leader_contact_ms: None,
            restart_quiet_until_ms: (hard_state.term > 0).then_some(0),
            transfer: None,
            lease_blocked_until_ms: 0,
            heartbeat_rounds: VecDeque::new(),
            term_started_ms: 0,
            messages: Vec::new(),
            leader_messages: Vec::new(),
            persisted_hard_state: hard_state,
            ready_mark: None,
            reads: VecDeque::new(),
            read_seq: 0,
            read_states: Vec::new(),
            read_failures: Vec::new(),
            forwarded: ForwardedReads {
                // A stream of its own, so that the election timers draw what they always did.
                last_id: SplitMix64::new(seed ^ 0x5EAD_1D5E_ED00_0000).next_u64(),
                ..ForwardedReads::default()
            },
        };
        raft.check_invariants();
        raft
    }

    // ----- accessors -------------------------------------------------------------------

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The voters, sorted.
    pub fn voters(&self) -> &[u64] {
        &self.voters
    }
    /// Current term.
    pub fn term(&self) -> u64 {
        self.term
    }
    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// Whether this node leads its term.
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }
    /// The leader of the current term as far as this node knows.
    pub fn leader(&self) -> Option<u64> {
        self.leader
    }
    /// The vote cast in the current term.
    pub fn voted_for(&self) -> Option<u64> {
        self.voted_for
    }
    /// Highest committed index known here.
    pub fn commit_index(&self) -> u64 {
        self.log.commit
    }
    /// Whether the commit index is at an entry of the current term: until a new leader's
    /// is, it may not cover everything an earlier leader committed, and it answers no read.
    pub fn has_committed_in_term(&self) -> bool {
        self.log.term_at(self.log.commit) == Some(self.term)
    }
    /// Highest index the caller acknowledged as applied.
    pub fn applied_index(&self) -> u64 {
        self.log.applied
    }
    /// Highest index persisted (acknowledged through `advance`).
    pub fn persisted_index(&self) -> u64 {
        self.log.stable_index
    }
    /// First index still held in the log (the one after the snapshot).
    pub fn first_index(&self) -> u64 {
        self.log.first_index()
    }
    /// Index of the last entry.
    pub fn last_index(&self) -> u64 {
        self.log.last_index()
    }
    /// Term of the entry at `index`; `None` if compacted or beyond the log.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        self.log.term_at(index)
    }
    /// The entry at `index` if still held.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        (index >= self.log.first_index() && index <= self.log.last_index())
            .then(|| self.log.entry(index))
    }
    /// Everything an operator may want to see, in one value.
    pub fn status(&self) -> Status {
        let peers = self
            .progress
            .iter()
            .map(|(&id, p)| PeerStatus {
                id,
                match_index: p.match_index,
                next_index: p.next_index,
                state: match p.state {
                    ReplicationState::Probe => PeerState::Probe,
                    ReplicationState::Replicate => PeerState::Replicate,
                    ReplicationState::Snapshot { pending_index } => {
                        PeerState::Snapshot(pending_index)
                    }
                },
                is_recent_active: p.is_recent_active,
            })
            .collect();
        Status {
            id: self.id,
            term: self.term,
            role: self.role,
            leader: self.leader,
            voters: self.voters.clone(),
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            persisted_index: self.log.stable_index,
            commit_index: self.log.commit,
            applied_index: self.log.applied,
            lease_until_ms: self.lease_until_ms(),
            peers,
        }
    }

    /// The latest snapshot (taken here by `compact` or received from a leader), if any.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.log.snapshot.as_ref()
    }
    /// What the latest snapshot covers.
    pub fn snapshot_meta(&self) -> SnapshotMeta {
        self.log.snapshot_meta
    }
    /// The current hard state (persisted or not).
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            voted_for: self.voted_for,
            commit: self.log.commit,
        }
    }
    /// When the caller should call [`Raft::handle_tick`] next (`None`: at its next
    /// opportunity, to arm the election timer).
    pub fn next_deadline_ms(&self) -> Option<u64> {
        match self.role {
            Role::Leader => {
                let mut at = self.heartbeat_deadline_ms;
                if self.config.check_quorum {
                    at = at.min(self.check_quorum_deadline_ms);
                }
                if let Some(transfer) = &self.transfer {
                    at = at.min(transfer.deadline_ms);
                }
                Some(at)
            }
            _ => self.election_deadline_ms,
        }
    }

    fn is_voter(&self) -> bool {
        self.voters.binary_search(&self.id).is_ok()
    }

    /// Takes the voter set from the log after it changed; a leader starts or stops
    /// replicating to the voters added or removed.
    fn refresh_voters(&mut self) {
        let voters = self.log.voters();
        if voters == self.voters {
            return;
        }
        self.voters = voters;
        if self.role == Role::Leader {
            assert!(self.is_voter(), "a leader never removes itself");
            let next = self.log.last_index() + 1;
            self.progress.retain(|id, _| self.voters.contains(id));
            for peer in self.voters.clone() {
                if peer != self.id {
                    self.progress
                        .entry(peer)
                        .or_insert_with(|| Progress::new(next));
                }
            }
        }
    }

    fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// The leader lease (Consul's default reads; etcd's lease-based reads): until when, on
    /// this node's clock, this leader may answer reads from its own state without a quorum
    /// round. `None` unless it leads with check-quorum on, has committed an entry of its
    /// term, and no leadership transfer is under way or recently abandoned.
    ///
    /// Why it holds: a follower refuses to help depose a leader it heard from within the
    /// minimum election timeout (`is_in_lease`), and this leader votes for no one. A
    /// follower that answered heartbeat round `r` heard from this leader no earlier than
    /// `r` was sent, so once a quorum (this node included) has answered rounds sent at or
    /// after `t`, no other leader can be elected before `t + election timeout`. The lease
    /// runs [`Config::lease_ms`] from `t`.
    pub fn lease_until_ms(&self) -> Option<u64> {
        if self.role != Role::Leader
            || !self.config.check_quorum
            || self.transfer.is_some()
            || self.now_ms < self.lease_blocked_until_ms
            || !self.voters.contains(&self.id)
            || self.log.term_at(self.log.commit) != Some(self.term)
        {
            return None;
        }
        let lease_ms = self.config.lease_ms();
        let others_needed = self.quorum() - 1;
        if others_needed == 0 {
            return Some(u64::MAX);
        }
        let mut heard: Vec<u64> = self
            .voters
            .iter()
            .filter(|&&id| id != self.id)
            .filter_map(|id| self.round_sent_ms(self.progress.get(id)?.read_seq_acked))
            .collect();
        heard.sort_unstable_by(|a, b| b.cmp(a));
        Some(*heard.get(others_needed - 1)? + lease_ms)
    }

    /// When heartbeat round `seq` was sent in this term, if it is still remembered.
    fn round_sent_ms(&self, seq: u64) -> Option<u64> {
        let at = self
            .heartbeat_rounds
            .binary_search_by_key(&seq, |&(round, _)| round)
            .ok()?;
        let (_, sent_ms) = self.heartbeat_rounds[at];
        (sent_ms >= self.term_started_ms).then_some(sent_ms)
    }

    fn send(&mut self, to: u64, message: Message) {
        assert_ne!(to, self.id, "no message to self");
        // A leader's read index promises nothing about its disk either: it is a commit
        // index, which counts this node's entries only once persisted.
        let is_leader_read = matches!(message, Message::ReadIndexResponse { .. });
        if self.role == Role::Leader && (message.is_from_leader() || is_leader_read) {
            self.leader_messages.push(Envelope { to, message });
        } else {
            self.messages.push(Envelope { to, message });
        }
    }

    fn peers(&self) -> Vec<u64> {
        self.voters
            .iter()
            .copied()
            .filter(|&v| v != self.id)
            .collect()
    }

    fn arm_election_timer(&mut self, now_ms: u64) {
        let base = self.config.election_timeout_ms_min;
        self.election_deadline_ms = Some(now_ms + base + self.rng.below(base));
    }

    /// Leader stickiness (thesis §9.6 with check-quorum, etcd's `inLease`): a node that heard
    /// from a live leader within the minimum election timeout refuses to help depose it.
    fn is_in_lease(&self, now_ms: u64) -> bool {
        if !self.config.check_quorum {
            return false;
        }
        match self.role {
            Role::Leader => true,
            _ => {
                let heard_leader = self.leader.is_some()
                    && self
                        .leader_contact_ms
                        .is_some_and(|at| now_ms < at + self.config.election_timeout_ms_min);
                heard_leader
                    || self
                        .restart_quiet_until_ms
                        .is_some_and(|until| now_ms < until)
            }
        }
    }

    // ----- role changes ----------------------------------------------------------------

    fn become_follower(&mut self, term: u64, leader: Option<u64>) {
        assert!(term >= self.term, "terms never go back");
        if term > self.term {
            self.term = term;
            self.voted_for = None;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.progress.clear();
        self.votes.clear();
        self.transfer = None;
        // Reads a leader held fail (its caller asks again); a follower's request to a
        // leader it no longer follows goes to the next one.
        for read in std::mem::take(&mut self.reads) {
            if let ReadOrigin::Local(ctx) = read.origin {
                self.read_failures.push(ctx);
            }
        }
        if self.forwarded.in_flight.as_ref().map(|r| r.to) != leader {
            self.forwarded.requeue();
        }
        self.arm_election_timer(self.now_ms);
        self.send_read_request();
    }

    fn campaign(&mut self, is_pre_vote: bool, is_transfer: bool) {
        assert!(self.role != Role::Leader, "a leader does not campaign");
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.leader = None;
        self.fail_forwarded_reads();
        self.arm_election_timer(self.now_ms);
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        if is_pre_vote {
            self.role = Role::PreCandidate;
            let term = self.term + 1;
            for peer in self.peers() {
                self.send(
                    peer,
                    Message::PreVote {
                        term,
                        last_index,
                        last_term,
                    },
                );
            }
        } else {
            self.role = Role::Candidate;
            self.term += 1;
            self.voted_for = Some(self.id);
            let term = self.term;
            for peer in self.peers() {
                let vote = Message::Vote {
                    term,
                    last_index,
                    last_term,
                    is_transfer,
                };
                self.send(peer, vote);
            }
        }
        self.tally();
    }

    /// Counts the answers of the current (pre-)election and acts on a decision.
    fn tally(&mut self) {
        // Only answers from the current voters count (the set may have changed meanwhile).
        let counted = self.votes.iter().filter(|(id, _)| self.voters.contains(id));
        let (granted, refused) = counted.fold(
            (0, 0),
            |(g, r), (_, &ok)| {
                if ok { (g + 1, r) } else { (g, r + 1) }
            },
        );
        if granted >= self.quorum() {
            match self.role {
                Role::PreCandidate => self.campaign(false, false),
                Role::Candidate => self.become_leader(),
                _ => unreachable!("only candidates tally"),
            }
        } else if refused >= self.quorum() {
            self.become_follower(self.term, None);
        }
    }

    fn become_leader(&mut self) {
        assert_eq!(
            self.role,
            Role::Candidate,
            "only a candidate becomes leader"
        );
        assert_eq!(self.voted_for, Some(self.id), "a leader voted for itself");
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.votes.clear();
        self.term_started_ms = self.now_ms;
        let next = self.log.last_index() + 1;
        self.progress = self
            .peers()
            .into_iter()
            .map(|p| (p, Progress::new(next)))
            .collect();
        self.heartbeat_deadline_ms = self.now_ms + self.config.heartbeat_interval_ms;
        self.check_quorum_deadline_ms = self.now_ms + self.config.election_timeout_ms_min;
        self.election_deadline_ms = None;
        // Raft §5.4.2: entries of earlier terms commit only under an entry of this term.
        self.log.append(Entry {
            index: next,
            term: self.term,
            kind: EntryKind::Empty,
            data: Vec::new(),
        });
        self.broadcast_append(true);
    }

    // ----- inputs ----------------------------------------------------------------------

    /// Advances time: campaigns when the election timer expired, and as leader sends
    /// heartbeats, checks the quorum and gives up a stalled transfer.
    pub fn handle_tick(&mut self, now_ms: u64) {
        self.observe_time(now_ms);
        match self.role {
            Role::Leader => {
                if now_ms >= self.heartbeat_deadline_ms {
                    self.heartbeat_deadline_ms = now_ms + self.config.heartbeat_interval_ms;
                    self.broadcast_heartbeat();
                }
                if self
                    .transfer
                    .as_ref()
                    .is_some_and(|t| now_ms >= t.deadline_ms)
                {
                    self.transfer = None;
                    // The target may still campaign on a late TimeoutNow, and voters grant
                    // transfer votes inside their lease: no lease reads until that is moot.
                    self.lease_blocked_until_ms = now_ms + self.config.election_timeout_ms_min;
                }
                if self.config.check_quorum && now_ms >= self.check_quorum_deadline_ms {
                    self.check_quorum_deadline_ms = now_ms + self.config.election_timeout_ms_min;
                    let active = 1 + self
                        .progress
                        .values()
                        .filter(|p| p.is_recent_active)
                        .count();
                    if active < self.quorum() {
                        // Thesis §6.2: an isolated leader steps down so that clients look
                        // elsewhere instead of waiting on it.
                        let term = self.term;
                        self.become_follower(term, None);
                    } else {
                        for progress in self.progress.values_mut() {
                            progress.is_recent_active = false;
                        }
                    }
                }
            }
            _ => {
                match self.election_deadline_ms {
                    None => self.arm_election_timer(now_ms),
                    Some(deadline) if now_ms >= deadline => {
                        if self.is_voter() {
                            self.campaign(self.config.pre_vote, false);
                        } else {
                            self.arm_election_timer(now_ms);
                        }
                    }
                    Some(_) => {}
                }
                self.tick_forwarded_reads();
            }
        }
        self.check_invariants_in_tests();
    }

    /// Evidence from outside the protocol that `leader` is gone (the runtime saw its stream
    /// close and its port refuse connections): a follower of it gives up the leader's lease
    /// and campaigns after one heartbeat interval (plus two per follower with a lower ID)
    /// instead of a whole election timeout. Only followers with the same evidence, or whose lease ran out,
    /// grant the pre-vote, so one wrong report costs a rejected pre-vote, never a deposed
    /// live leader. Ignored unless `leader` is this node's leader.
    pub fn handle_leader_unreachable(&mut self, now_ms: u64, leader: u64) {
        self.observe_time(now_ms);
        if self.role != Role::Follower || self.leader != Some(leader) {
            return;
        }
        self.leader = None;
        self.leader_contact_ms = None;
        self.forwarded.requeue();
        // Followers take turns by ID, two heartbeat intervals apart, so they do not split the
        // vote; the first waits one interval, so the others' reports (their own probes of the
        // dead leader) land before its pre-vote asks them.
        let interval = self.config.heartbeat_interval_ms.max(1);
        let rank = self
            .voters()
            .iter()
            .filter(|&&v| v != leader && v < self.id)
            .count() as u64;
        let deadline =
            self.now_ms + interval * (1 + 2 * rank) + self.rng.below((interval / 2).max(1));
        self.election_deadline_ms = Some(
            self.election_deadline_ms
                .map_or(deadline, |armed| armed.min(deadline)),
        );
        self.check_invariants_in_tests();
    }

    fn observe_time(&mut self, now_ms: u64) {
        // Time never goes back; a caller passing an older `now` is clamped rather than trusted.
        self.now_ms = self.now_ms.max(now_ms);
        if self.restart_quiet_until_ms == Some(0) {
            self.restart_quiet_until_ms = Some(self.now_ms + self.config.election_timeout_ms_min);
        }
        if self.role != Role::Leader && self.election_deadline_ms.is_none() {
            self.arm_election_timer(self.now_ms);
        }
    }

    /// Handles a message from `from`. Stale and unexpected messages are dropped (or answered
    /// with this node's term so that a stale leader learns it was deposed).
    pub fn handle_message(&mut self, now_ms: u64, from: u64, message: Message) {
        self.observe_time(now_ms);
        // Messages from non-voters are handled too: a leader may know of voters this node's
        // log does not show yet, and a removed node's answers are simply not counted.
        if from == self.id {
            return;
        }
        if !self.admit_term(now_ms, from, &message) {
            self.check_invariants_in_tests();
            return;
        }
        match message {
            Message::PreVote {
                term,
                last_index,
                last_term,
            } => {
                let granted = !self.is_in_lease(now_ms)
                    && term > self.term
                    && self.log.is_up_to_date(last_index, last_term);
                let term = if granted { term } else { self.term };
                self.send(from, Message::PreVoteResponse { term, granted });
            }
            Message::Vote {
                last_index,
                last_term,
                ..
            } => {
                let can_vote = self.voted_for == Some(from)
                    || (self.voted_for.is_none() && self.leader.is_none());
                let granted = can_vote && self.log.is_up_to_date(last_index, last_term);
                if granted {
                    self.voted_for = Some(from);
                    self.arm_election_timer(now_ms);
                }
                self.send(
                    from,
                    Message::VoteResponse {
                        term: self.term,
                        granted,
                    },
                );
            }
            Message::PreVoteResponse { term, granted } => {
                let is_current =
                    (granted && term == self.term + 1) || (!granted && term == self.term);
                if self.role == Role::PreCandidate && is_current {
                    self.votes.insert(from, granted);
                    self.tally();
                }
            }
            Message::VoteResponse { granted, .. } => {
                if self.role == Role::Candidate {
                    self.votes.insert(from, granted);
                    self.tally();
                }
            }
            Message::Append {
                prev_index,
                prev_term,
                entries,
                commit,
                ..
            } => {
                self.follow(now_ms, from);
                self.handle_append(from, prev_index, prev_term, entries, commit);
            }
            Message::Heartbeat {
                commit, read_seq, ..
            } => {
                self.follow(now_ms, from);
                self.log.commit_to(commit);
                self.send(
                    from,
                    Message::HeartbeatResponse {
                        term: self.term,
                        read_seq,
                    },
                );
            }
            Message::InstallSnapshot { snapshot, .. } => {
                self.follow(now_ms, from);
                self.handle_snapshot(from, snapshot);
            }
            Message::TimeoutNow { .. } => {
                if self.role != Role::Leader && self.is_voter() {
                    // Thesis §3.10: the leader asked us to take over; skip pre-vote and
                    // override stickiness, the old leader has stopped accepting writes.
                    self.campaign(false, true);
                }
            }
            Message::AppendResponse {
                index, rejection, ..
            } => {
                if self.role == Role::Leader {
                    self.handle_append_response(from, index, rejection);
                }
            }
            Message::HeartbeatResponse { read_seq, .. } => {
                if self.role == Role::Leader {
                    self.handle_heartbeat_response(from, read_seq);
                }
            }
            Message::ReadIndex { id, .. } => self.handle_read_request(from, id),
            Message::ReadIndexResponse { id, index, .. } => {
                self.handle_read_response(from, id, index);
            }
        }
        self.check_invariants_in_tests();
    }

    /// Raft §5.1 term rules, with pre-vote and stickiness: adopts a higher term (except for
    /// pre-votes and, inside the leader lease, anything a leader did not send), answers
    /// stale leaders and pre-votes with the current term. Returns whether the message is for
    /// the current term and goes on.
    fn admit_term(&mut self, now_ms: u64, from: u64, message: &Message) -> bool {
        let term = message.term();
        if term > self.term {
            match message {
                Message::PreVote { .. } => {}
                Message::PreVoteResponse { granted: true, .. } => {}
                Message::Vote { is_transfer, .. } if !is_transfer && self.is_in_lease(now_ms) => {
                    return false;
                }
                // Only a leader's message proves the leader this node follows was deposed.
                // Anything else with a higher term (a late answer to a pre-vote this node sent
                // before it heard its leader again, rejected by a candidate already in the
                // next term; a late answer to appends it sent as an earlier leader) says only
                // that someone campaigns. Adopting that term inside the lease would clear
                // the leader and the vote, and the node could then vote in that term while
                // its leader still counts its last answer towards its lease.
                // A leadership transfer's vote goes through: the leader asked for it.
                m if !m.is_from_leader()
                    && !matches!(
                        m,
                        Message::Vote {
                            is_transfer: true,
                            ..
                        }
                    )
                    && self.role != Role::Leader
                    && self.is_in_lease(now_ms) =>
                {
                    return false;
                }
                _ => {
                    let leader = message.is_from_leader().then_some(from);
                    self.become_follower(term, leader);
                }
            }
        } else if term < self.term {
            match message {
                Message::Append { .. } | Message::Heartbeat { .. } => {
                    // A deposed leader (or one cut off by a partition) learns the new term
                    // and steps down; without this it could stay stuck with pre-vote on.
                    let reply = Message::AppendResponse {
                        term: self.term,
                        index: 0,
                        rejection: Some(Rejection {
                            hint_index: 0,
                            hint_term: 0,
                        }),
                    };
                    self.send(from, reply);
                }
                Message::PreVote { .. } => {
                    let reply = Message::PreVoteResponse {
                        term: self.term,
                        granted: false,
                    };
                    self.send(from, reply);
                }
                _ => {}
            }
            return false;
        }
        true
    }

    /// A message from the leader of our term: follow it.
    fn follow(&mut self, now_ms: u64, leader: u64) {
        assert_ne!(self.role, Role::Leader, "two leaders in term {}", self.term);
        if self.role != Role::Follower || self.leader != Some(leader) {
            self.become_follower(self.term, Some(leader));
        }
        self.leader_contact_ms = Some(now_ms);
        self.arm_election_timer(now_ms);
    }

    fn handle_append(
        &mut self,
        from: u64,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
    ) {
        let term = self.term;
        if prev_index < self.log.commit {
            // Everything up to our commit matches any leader (§5.4); say so and let the
            // leader continue from there.
            self.acknowledge(from, self.log.commit);
            return;
        }
        if let Some(last_new) = self.log.maybe_append(prev_index, prev_term, entries) {
            self.refresh_voters();
            self.log.commit_to(commit.min(last_new));
            self.acknowledge(from, last_new);
        } else {
            let (hint_index, hint_term) = self
                .log
                .find_conflict_by_term(prev_index.min(self.log.last_index()), prev_term);
            let rejection = Some(Rejection {
                hint_index,
                hint_term,
            });
            let reply = Message::AppendResponse {
                term,
                index: prev_index,
                rejection,
            };
            self.send(from, reply);
        }
    }

    /// Tells the leader `to` that our log matches its own up to `index`.
    fn acknowledge(&mut self, to: u64, index: u64) {
        let term = self.term;
        self.send(
            to,
            Message::AppendResponse {
                term,
                index,
                rejection: None,
            },
        );
    }

    fn handle_snapshot(&mut self, from: u64, snapshot: Snapshot) {
        let meta = snapshot.meta;
        if meta.index <= self.log.commit {
            self.acknowledge(from, self.log.commit);
            return;
        }
        if self.log.matches(meta.index, meta.term) {
            // We hold the snapshot's last entry, hence everything before it: no need to
            // replace the state machine, only to learn that it is committed.
            self.log.commit_to(meta.index);
        } else {
            self.log.install(snapshot);
            self.refresh_voters();
        }
        self.acknowledge(from, meta.index);
    }

    fn handle_append_response(&mut self, from: u64, index: u64, rejection: Option<Rejection>) {
        let last_index = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.is_recent_active = true;
        if let Some(rejection) = rejection {
            let is_stale = match progress.state {
                ReplicationState::Probe => index + 1 != progress.next_index,
                _ => index <= progress.match_index,
            };
            if is_stale {
                return;
            }
            let mut next_probe = rejection.hint_index;
            if rejection.hint_term > 0 {
                next_probe = self
                    .log
                    .find_conflict_by_term(rejection.hint_index, rejection.hint_term)
                    .0;
            }
            let progress = self.progress.get_mut(&from).expect("checked above");
            progress.next_index = index.min(next_probe + 1).max(progress.match_index + 1);
            progress.become_probe();
            self.send_append(from, true);
            return;
        }
        assert!(index <= last_index, "follower acknowledged beyond our log");
        if progress.update_match(index) {
            match progress.state {
                ReplicationState::Probe => progress.become_replicate(),
                ReplicationState::Snapshot { pending_index }
                    if progress.match_index >= pending_index =>
                {
                    progress.become_replicate();
                }
                _ => {}
            }
            if self.maybe_commit() {
                self.broadcast_append(true);
            }
            if let Some(transfer) = &self.transfer
                && transfer.target == from
                && self.progress[&from].match_index == self.log.last_index()
            {
                let term = self.term;
                self.send(from, Message::TimeoutNow { term });
            }
        } else if progress.state == ReplicationState::Probe {
            progress.is_probe_sent = false;
        }
        // Pipelining: fill the follower's window.
        while self.send_append(from, false) {}
    }

    fn handle_heartbeat_response(&mut self, from: u64, read_seq: u64) {
        let inflight_max = self.config.inflight_max;
        let last_index = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.is_recent_active = true;
        progress.read_seq_acked = progress.read_seq_acked.max(read_seq);
        match progress.state {
            ReplicationState::Probe => progress.is_probe_sent = false,
            // The snapshot or some appends may have been lost: fall back to probing, which
            // finds out what the follower holds and resends what it lacks.
            ReplicationState::Snapshot { .. } => progress.become_probe(),
            ReplicationState::Replicate if progress.inflight.len() >= inflight_max => {
                progress.next_index = progress.match_index + 1;
                progress.become_probe();
            }
            ReplicationState::Replicate => {}
        }
        if progress.match_index < last_index {
            // Even with nothing new to send, an empty append at `next - 1` makes a follower
            // that lost pipelined appends reject it, which sends it back to probing; without
            // it an idle leader would never notice the loss.
            self.send_append(from, true);
        }
        self.release_reads();
    }

    /// Sends the next append (or the snapshot) to `to` if its progress allows; returns
    /// whether an append carrying entries (or a snapshot) was sent.
    fn send_append(&mut self, to: u64, is_empty_allowed: bool) -> bool {
        assert_eq!(self.role, Role::Leader);
        let progress = &self.progress[&to];
        if progress.is_paused(self.config.inflight_max) {
            return false;
        }
        let next_index = progress.next_index;
        let prev_index = next_index - 1;
        let Some(prev_term) = self.log.term_at(prev_index) else {
            // Raft §7: the follower needs entries we compacted away.
            let snapshot = self
                .log
                .snapshot
                .clone()
                .expect("a compacted log has a snapshot");
            let pending_index = snapshot.meta.index;
            let progress = self.progress.get_mut(&to).expect("peer progress");
            progress.state = ReplicationState::Snapshot { pending_index };
            progress.inflight.clear();
            let term = self.term;
            self.send(to, Message::InstallSnapshot { term, snapshot });
            return true;
        };
        let entries = self.log.slice(
            next_index,
            self.config.append_entries_max,
            self.config.append_bytes_max,
        );
        if entries.is_empty() && !is_empty_allowed {
            return false;
        }
        let is_sent_entries = !entries.is_empty();
        let progress = self.progress.get_mut(&to).expect("peer progress");
        match progress.state {
            ReplicationState::Replicate => {
                if let Some(last) = entries.last() {
                    progress.next_index = last.index + 1;
                    progress.inflight.push_back(last.index);
                }
            }
            ReplicationState::Probe => progress.is_probe_sent = true,
            ReplicationState::Snapshot { .. } => unreachable!("paused"),
        }
        let message = Message::Append {
            term: self.term,
            prev_index,
            prev_term,
            entries,
            commit: self.log.commit,
        };
        self.send(to, message);
        is_sent_entries && self.progress[&to].state == ReplicationState::Replicate
    }

    fn broadcast_append(&mut self, is_empty_allowed: bool) {
        for peer in self.peers() {
            self.send_append(peer, is_empty_allowed);
        }
    }

    fn broadcast_heartbeat(&mut self) {
        // Every round is numbered and its send time kept: acks of a round date the lease.
        self.read_seq += 1;
        self.heartbeat_rounds
            .push_back((self.read_seq, self.now_ms));
        if self.heartbeat_rounds.len() > HEARTBEAT_ROUNDS_KEPT {
            self.heartbeat_rounds.pop_front();
        }
        let term = self.term;
        let read_seq = self.read_seq;
        for peer in self.peers() {
            let commit = self.log.commit.min(self.progress[&peer].match_index);
            self.send(
                peer,
                Message::Heartbeat {
                    term,
                    commit,
                    read_seq,
                },
            );
        }
    }

    /// Raft §5.3/§5.4.2: commit the highest index a quorum persisted, if it is of this term.
    /// The leader counts itself only up to what it has persisted.
    fn maybe_commit(&mut self) -> bool {
        let mut matches: Vec<u64> = self.progress.values().map(|p| p.match_index).collect();
        matches.push(self.log.stable_index);
        matches.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_index = matches[self.quorum() - 1];
        if quorum_index > self.log.commit && self.log.term_at(quorum_index) == Some(self.term) {
            self.log.commit_to(quorum_index)
        } else {
            false
        }
    }

    /// Voters known to follow this leader since round `seq` was sent: this node, those
    /// that answered that round or a later one, and `acked_by`.
    fn read_acks(&self, seq: u64, acked_by: Option<u64>) -> usize {
        let others = self
            .progress
            .iter()
            .filter(|&(&id, p)| p.read_seq_acked >= seq || acked_by == Some(id))
            .count();
        usize::from(self.voters.contains(&self.id)) + others
    }

    /// Hands a confirmed read to whoever asked for it.
    fn answer_read(&mut self, origin: ReadOrigin, index: u64) {
        match origin {
            ReadOrigin::Local(ctx) => self.read_states.push(ReadState { ctx, index }),
            ReadOrigin::Remote { from, id } => {
                let term = self.term;
                let index = Some(index);
                self.send(from, Message::ReadIndexResponse { term, id, index });
            }
        }
    }

    fn release_reads(&mut self) {
        while let Some(front) = self.reads.front() {
            if self.read_acks(front.seq, front.acked_by) < self.quorum() {
                break;
            }
            let read = self.reads.pop_front().expect("front exists");
            self.answer_read(read.origin, read.index);
        }
        // The reads that arrived while that round was out go in the next one.
        if self.reads.front().is_some_and(|r| r.seq > self.read_seq) {
            self.broadcast_heartbeat();
        }
    }

    // ----- user calls ------------------------------------------------------------------

    /// Appends `data` to the log as leader and starts replicating it; returns its index. The
    /// entry is committed when it comes out in [`Ready::committed_entries`] — or never, if
    /// this leader is deposed first.
    ///
    /// # Errors
    /// [`ProposeError`]; nothing changed.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<u64, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if self.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        if self.log.last_index() - self.log.commit >= self.config.uncommitted_entries_max {
            return Err(ProposeError::TooManyUncommitted);
        }
        let index = self.log.last_index() + 1;
        let term = self.term;
        self.log.append(Entry {
            index,
            term,
            kind: EntryKind::Normal,
            data,
        });
        self.broadcast_append(false);
        self.check_invariants_in_tests();
        Ok(index)
    }

    /// Proposes a single-voter membership change (thesis §4.1). It takes effect on each node
    /// as soon as it is appended to that node's log — on the leader, right now — and the next
    /// change is accepted once this one is committed. Returns the entry's index.
    ///
    /// # Errors
    /// [`ProposeError`]; nothing changed.
    pub fn propose_conf_change(&mut self, change: ConfChange) -> Result<u64, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if self.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        let is_valid = match change {
            ConfChange::AddVoter(id) => !self.voters.contains(&id),
            ConfChange::RemoveVoter(id) => id != self.id && self.voters.contains(&id),
        };
        if !is_valid {
            return Err(ProposeError::InvalidConfChange);
        }
        // One change at a time, and only after this leader committed in its term: otherwise
        // two changes from different terms could each be committed by disjoint majorities.
        if self.log.last_conf_index() > self.log.commit
            || self.log.term_at(self.log.commit) != Some(self.term)
        {
            return Err(ProposeError::ConfChangeInProgress);
        }
        let index = self.log.last_index() + 1;
        let term = self.term;
        let data = change.encode();
        self.log.append(Entry {
            index,
            term,
            kind: EntryKind::ConfChange,
            data,
        });
        self.refresh_voters();
        self.broadcast_append(false);
        // A removal may leave a quorum that is already met.
        if self.maybe_commit() {
            self.broadcast_append(true);
        }
        self.check_invariants_in_tests();
        Ok(index)
    }

    /// Hands leadership to `target` (thesis §3.10): stop accepting proposals, bring the target
    /// up to date, then tell it to campaign at once. Given up after an election timeout.
    ///
    /// # Errors
    /// [`RequestError::NotLeader`] or [`RequestError::BadTarget`]; nothing changed.
    pub fn transfer_leadership(&mut self, now_ms: u64, target: u64) -> Result<(), RequestError> {
        self.observe_time(now_ms);
        if self.role != Role::Leader {
            return Err(RequestError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if target == self.id || !self.voters.contains(&target) {
            return Err(RequestError::BadTarget);
        }
        let deadline_ms = self.now_ms + self.config.election_timeout_ms_min;
        self.transfer = Some(Transfer {
            target,
            deadline_ms,
        });
        if self.progress[&target].match_index == self.log.last_index() {
            let term = self.term;
            self.send(target, Message::TimeoutNow { term });
        } else {
            self.send_append(target, true);
        }
        self.check_invariants_in_tests();
        Ok(())
    }

    /// ReadIndex (thesis §6.4): records the commit index and confirms with a heartbeat round
    /// that this node still leads; the answer comes out in [`Ready::read_states`].
    ///
    /// # Errors
    /// [`RequestError::NotLeader`], [`RequestError::NotReady`] (no entry of this term
    /// committed yet) or [`RequestError::Overloaded`]; nothing changed.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), RequestError> {
        if self.role != Role::Leader {
            return self.forward_read(ctx);
        }
        self.queue_read(ReadOrigin::Local(ctx), None)?;
        self.check_invariants_in_tests();
        Ok(())
    }

    /// A leader's read: answered at the commit index once a quorum is known to follow this
    /// leader since the read arrived — at once if `acked_by` (the follower asking) makes
    /// the quorum, otherwise after the next heartbeat round.
    fn queue_read(
        &mut self,
        origin: ReadOrigin,
        acked_by: Option<u64>,
    ) -> Result<(), RequestError> {
        if !self.has_committed_in_term() {
            return Err(RequestError::NotReady);
        }
        if self.reads.len() >= READ_REQUESTS_MAX {
            return Err(RequestError::Overloaded);
        }
        let index = self.log.commit;
        let acked_by = acked_by.filter(|id| self.progress.contains_key(id));
        // `u64::MAX`: no round answered that, so only this node and `acked_by` count.
        if self.read_acks(u64::MAX, acked_by) >= self.quorum() {
            self.answer_read(origin, index);
            return Ok(());
        }
        // Reads batch: each waits for the next round sent after it arrived. One round is in
        // flight at a time; reads arriving meanwhile share the round sent when it returns.
        let round_in_flight = self.reads.front().is_some_and(|r| r.seq <= self.read_seq);
        self.reads.push_back(PendingRead {
            origin,
            index,
            seq: self.read_seq + 1,
            acked_by,
        });
        if !round_in_flight {
            self.broadcast_heartbeat();
        }
        Ok(())
    }

    /// A follower's read: sent on to the leader (see [`Message::ReadIndex`]).
    fn forward_read(&mut self, ctx: u64) -> Result<(), RequestError> {
        if self.role != Role::Follower || self.leader.is_none() {
            return Err(RequestError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if self.forwarded.len() >= READ_REQUESTS_MAX {
            return Err(RequestError::Overloaded);
        }
        self.forwarded.waiting.push((ctx, self.now_ms));
        self.send_read_request();
        self.check_invariants_in_tests();
        Ok(())
    }

    /// Follower: asks the leader for a read index covering the waiting reads, unless a
    /// request is already out (the reads arriving meanwhile go in the next one).
    fn send_read_request(&mut self) {
        let reads = &mut self.forwarded;
        if self.role != Role::Follower
            || reads.in_flight.is_some()
            || reads.waiting.is_empty()
            || self.now_ms < reads.retry_at_ms
        {
            return;
        }
        let Some(leader) = self.leader else {
            return;
        };
        reads.last_id = reads.last_id.wrapping_add(1);
        let id = reads.last_id;
        reads.in_flight = Some(ReadRequest {
            id,
            to: leader,
            sent_ms: self.now_ms,
            reads: std::mem::take(&mut reads.waiting),
        });
        let term = self.term;
        self.send(leader, Message::ReadIndex { term, id });
    }

    /// Leader: a follower's [`Message::ReadIndex`] (of this term).
    fn handle_read_request(&mut self, from: u64, id: u64) {
        let origin = ReadOrigin::Remote { from, id };
        let refused = self.role != Role::Leader || self.queue_read(origin, Some(from)).is_err();
        if refused {
            let term = self.term;
            self.send(
                from,
                Message::ReadIndexResponse {
                    term,
                    id,
                    index: None,
                },
            );
        }
    }

    /// Follower: the leader's answer to a read request.
    fn handle_read_response(&mut self, from: u64, id: u64, index: Option<u64>) {
        let reads = &mut self.forwarded;
        if !reads
            .in_flight
            .as_ref()
            .is_some_and(|r| r.id == id && r.to == from)
        {
            return; // A late answer to a request given up on.
        }
        match index {
            Some(index) => {
                let request = reads.in_flight.take().expect("matched");
                self.read_states.extend(
                    request
                        .reads
                        .iter()
                        .map(|&(ctx, _)| ReadState { ctx, index }),
                );
            }
            None => {
                reads.requeue();
                reads.retry_at_ms = self.now_ms + self.config.heartbeat_interval_ms;
            }
        }
        self.send_read_request();
    }

    /// Follower: asks again when a request went unanswered for half an election timeout,
    /// and gives up on reads that found no leader to answer them within two.
    fn tick_forwarded_reads(&mut self) {
        let now_ms = self.now_ms;
        let timeout_ms = self.config.election_timeout_ms_min;
        let reads = &mut self.forwarded;
        if reads
            .in_flight
            .as_ref()
            .is_some_and(|r| now_ms >= r.sent_ms + timeout_ms / 2)
        {
            reads.requeue();
        }
        let give_up_before = now_ms.saturating_sub(2 * timeout_ms);
        let failures = &mut self.read_failures;
        reads.waiting.retain(|&(ctx, arrived_ms)| {
            let keep = arrived_ms > give_up_before;
            if !keep {
                failures.push(ctx);
            }
            keep
        });
        self.send_read_request();
    }

    /// A follower turning candidate has no leader to ask: its reads fail.
    fn fail_forwarded_reads(&mut self) {
        self.forwarded.requeue();
        let failed = std::mem::take(&mut self.forwarded.waiting);
        self.read_failures
            .extend(failed.into_iter().map(|(ctx, _)| ctx));
    }

    /// Drops log entries up to `index` after the caller saved a snapshot of its state
    /// machine at `index` (`data`, which is sent to followers that need it).
    ///
    /// # Panics
    /// If `index` is beyond the applied index.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) {
        assert!(index <= self.log.applied, "compact({index}) beyond applied");
        self.log.compact(index, data);
        self.check_invariants_in_tests();
    }

    // ----- Ready / advance -------------------------------------------------------------

    /// Whether [`Raft::ready`] has anything for the caller.
    pub fn has_ready(&self) -> bool {
        if self.ready_mark.is_some() {
            return false;
        }
        self.hard_state() != self.persisted_hard_state
            || self.log.is_snapshot_unstable
            || self.log.stable_index < self.log.last_index()
            || !self.messages.is_empty()
            || !self.leader_messages.is_empty()
            || self.log.commit > self.log.applied
            || !self.read_states.is_empty()
            || !self.read_failures.is_empty()
    }

    /// Takes what the caller must persist, send and apply, in the order documented on
    /// [`Ready`]. Call [`Raft::advance`] once done before the next `ready`.
    ///
    /// # Panics
    /// If the previous Ready was not acknowledged with `advance`.
    pub fn ready(&mut self) -> Ready {
        assert!(self.ready_mark.is_none(), "ready() again before advance()");
        let hard_state = self.hard_state();
        let snapshot = self.log.is_snapshot_unstable.then(|| {
            self.log
                .snapshot
                .clone()
                .expect("an unstable snapshot is held")
        });
        let first_unstable = self.log.stable_index.max(self.log.snapshot_meta.index) + 1;
        let entries = if first_unstable <= self.log.last_index() {
            self.log.slice(first_unstable, usize::MAX, usize::MAX)
        } else {
            Vec::new()
        };
        let apply_from = snapshot.as_ref().map_or(self.log.applied, |s| s.meta.index) + 1;
        let applied_through = self.log.commit.max(apply_from - 1);
        let committed_entries: Vec<Entry> = (apply_from..=self.log.commit)
            .map(|index| self.log.entry(index).clone())
            .collect();
        self.ready_mark = Some(ReadyMark {
            hard_state,
            persisted_through: entries.last().map(|e| (e.index, e.term)),
            snapshot_index: snapshot.as_ref().map(|s| s.meta.index),
            applied_through,
        });
        Ready {
            hard_state: (hard_state != self.persisted_hard_state).then_some(hard_state),
            snapshot,
            entries,
            messages: std::mem::take(&mut self.messages),
            leader_messages: std::mem::take(&mut self.leader_messages),
            committed_entries,
            read_states: std::mem::take(&mut self.read_states),
            read_failures: std::mem::take(&mut self.read_failures),
        }
    }

    /// Acknowledges the last [`Ready`]: its state is persisted, its messages sent and its
    /// committed entries applied. A leader now counts its own persisted entries towards the
    /// commit quorum.
    ///
    /// # Panics
    /// If no Ready is outstanding.
    pub fn advance(&mut self) {
        let mark = self.ready_mark.take().expect("advance() without ready()");
        self.persisted_hard_state = mark.hard_state;
        if let Some(index) = mark.snapshot_index
            && self.log.is_snapshot_unstable
            && self.log.snapshot_meta.index == index
        {
            self.log.is_snapshot_unstable = false;
            self.log.stable_index = self.log.stable_index.max(index);
            self.log.applied = self.log.applied.max(index);
        }
        if let Some((index, term)) = mark.persisted_through {
            // If the log was overwritten after this Ready was taken, only the committed part
            // of what was persisted is certainly still ours (committed entries never change).
            let still_ours = if self.log.matches(index, term) {
                index
            } else if self.log.is_snapshot_unstable {
                // A snapshot replaced the log since: only its own advance counts.
                0
            } else {
                index.min(self.log.commit)
            };
            self.log.stable_index = self.log.stable_index.max(still_ours);
        }
        if mark.applied_through > self.log.applied {
            self.log.applied = mark.applied_through;
        }
        if self.role == Role::Leader && self.maybe_commit() {
            self.broadcast_append(true);
        }
        self.check_invariants_in_tests();
    }

    // ----- invariants ------------------------------------------------------------------

    fn check_invariants_in_tests(&self) {
        // O(log length): on in unit tests and for the simulator (`sim` feature); the
        // integration tests call `check_invariants` after every input themselves.
        if cfg!(any(test, feature = "sim")) {
            self.check_invariants();
        }
    }

    /// Asserts the relations that must hold between any two inputs.
    ///
    /// # Panics
    /// If one does not: that is a bug in this crate.
    pub fn check_invariants(&self) {
        self.log.check_invariants();
        debug_assert_eq!(self.voters, self.log.voters(), "voters follow the log");
        assert!(
            self.log.last_term() <= self.term,
            "an entry from a future term"
        );
        match self.role {
            Role::Leader => {
                assert_eq!(self.leader, Some(self.id));
                assert_eq!(self.voted_for, Some(self.id), "a leader voted for itself");
                assert!(self.is_voter(), "a leader is a voter");
                for voter in &self.voters {
                    assert!(*voter == self.id || self.progress.contains_key(voter));
                }
                assert_eq!(self.progress.len(), self.voters.len() - 1);
                assert!(self.votes.is_empty());
                for progress in self.progress.values() {
                    progress.check_invariants(self.log.last_index(), self.config.inflight_max);
                }
                assert_eq!(
                    self.log.last_term(),
                    self.term,
                    "a leader's log ends in its term"
                );
                if let Some(transfer) = &self.transfer {
                    assert_ne!(transfer.target, self.id);
                }
            }
            Role::Candidate => {
                assert_eq!(
                    self.voted_for,
                    Some(self.id),
                    "a candidate voted for itself"
                );
                assert!(self.leader.is_none());
                assert!(self.progress.is_empty());
                assert!(self.transfer.is_none());
            }
            Role::PreCandidate | Role::Follower => {
                assert!(self.progress.is_empty());
                assert!(self.transfer.is_none());
                assert!(self.reads.is_empty());
            }
        }
        if self.role == Role::Follower {
            if let Some(request) = &self.forwarded.in_flight {
                assert_eq!(Some(request.to), self.leader, "reads asked of the leader");
            }
        } else {
            assert_eq!(self.forwarded.len(), 0, "only a follower forwards reads");
        }
        assert!(self.forwarded.len() <= READ_REQUESTS_MAX);
        if self.role != Role::Leader {
            assert_ne!(
                self.leader,
                Some(self.id),
                "only a leader names itself leader"
            );
        }
        assert!(self.reads.len() <= READ_REQUESTS_MAX);
        assert!(self.persisted_hard_state.term <= self.term);
        assert!(self.persisted_hard_state.commit <= self.log.commit);
    }
}
