//! What Raft persists and what it sends: log entries, the hard state, snapshots and messages.
//!
//! Every type derives serde so that the runtime can encode it with the workspace codec; the
//! core itself never encodes anything.

use serde::{Deserialize, Serialize};

/// What an entry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A command proposed by the caller; `data` is opaque to Raft.
    Normal,
    /// The no-op a new leader appends so that it can commit entries of earlier terms
    /// (Raft §5.4.2, §8); `data` is empty.
    Empty,
    /// A change of the voter set, `data` is [`ConfChange::encode`]. It takes effect on each
    /// node as soon as it is in that node's log, committed or not (thesis §4.1).
    ConfChange,
}

/// A single-voter membership change (thesis §4.1): one at a time, so that any two
/// consecutive voter sets share a majority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfChange {
    /// Add a voter.
    AddVoter(u64),
    /// Remove a voter (never the leader itself: transfer leadership first).
    RemoveVoter(u64),
}

impl ConfChange {
    /// Nine bytes: a tag (1 add, 2 remove) and the node id, little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let (tag, id) = match *self {
            ConfChange::AddVoter(id) => (1u8, id),
            ConfChange::RemoveVoter(id) => (2u8, id),
        };
        let mut out = vec![tag];
        out.extend_from_slice(&id.to_le_bytes());
        out
    }

    /// The inverse of [`ConfChange::encode`]; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<ConfChange> {
        let (&tag, id) = bytes.split_first()?;
        let id = u64::from_le_bytes(id.try_into().ok()?);
        match tag {
            1 => Some(ConfChange::AddVoter(id)),
            2 => Some(ConfChange::RemoveVoter(id)),
            _ => None,
        }
    }

    /// Applies the change to a sorted voter set.
    pub fn apply(&self, voters: &mut Vec<u64>) {
        match *self {
            ConfChange::AddVoter(id) => {
                if let Err(at) = voters.binary_search(&id) {
                    voters.insert(at, id);
                }
            }
            ConfChange::RemoveVoter(id) => voters.retain(|&v| v != id),
        }
    }
}

/// One position of the replicated log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, from 1.
    pub index: u64,
    /// Term of the leader that created the entry.
    pub term: u64,
    /// Command or no-op.
    pub kind: EntryKind,
    /// The command bytes (empty for [`EntryKind::Empty`]).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// The state that must survive a crash before any message that depends on it leaves the node
/// (Raft Figure 2, "persistent state on all servers", plus the commit index as etcd keeps it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: u64,
    /// The candidate this node voted for in `term`, if any.
    pub voted_for: Option<u64>,
    /// Highest index known committed; persisting it lets a restarted node re-apply without
    /// waiting for a leader.
    pub commit: u64,
}

/// Index and term of the last entry a snapshot covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Last index included in the snapshot.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
}

/// A state machine image covering the log up to `meta.index`; `data` is opaque to Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// The voters as of `meta.index`, sorted.
    pub voters: Vec<u64>,
    /// The caller's encoded state machine.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Why a follower refused an append, with a hint that lets the leader skip a whole term of
/// mismatching entries at once instead of one index per round trip (Raft §5.3, the
/// optimisation etcd-raft implements as `findConflictByTerm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The largest index at or below the rejected `prev_index` whose term is at most the
    /// leader's `prev_term`.
    pub hint_index: u64,
    /// The follower's term at `hint_index`.
    pub hint_term: u64,
}

/// A Raft message. Every variant carries the sender's `term`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Would you vote for me at `term` (the sender's term plus one, not yet adopted)?
    /// (Ongaro's thesis §9.6.)
    PreVote {
        /// The term the sender would campaign in.
        term: u64,
        /// Index of the sender's last entry.
        last_index: u64,
        /// Term of the sender's last entry.
        last_term: u64,
    },
    /// Answer to [`Message::PreVote`]; a grant carries the asked term, a refusal the
    /// responder's own term.
    PreVoteResponse {
        /// See the variant.
        term: u64,
        /// Whether the pre-vote is granted.
        granted: bool,
    },
    /// RequestVote (Raft §5.2).
    Vote {
        /// The candidate's term.
        term: u64,
        /// Index of the candidate's last entry.
        last_index: u64,
        /// Term of the candidate's last entry.
        last_term: u64,
        /// Sent because the leader asked for a transfer: overrides leader stickiness.
        is_transfer: bool,
    },
    /// Answer to [`Message::Vote`].
    VoteResponse {
        /// The responder's term.
        term: u64,
        /// Whether the vote is granted.
        granted: bool,
    },
    /// AppendEntries (Raft §5.3).
    Append {
        /// The leader's term.
        term: u64,
        /// Index of the entry just before `entries`.
        prev_index: u64,
        /// Term of that entry.
        prev_term: u64,
        /// Entries to append (may be empty: a probe or a commit update).
        entries: Vec<Entry>,
        /// The leader's commit index.
        commit: u64,
    },
    /// Answer to [`Message::Append`] or [`Message::InstallSnapshot`].
    AppendResponse {
        /// The responder's term.
        term: u64,
        /// On success, the highest index known to match the leader; on rejection, the
        /// rejected `prev_index`.
        index: u64,
        /// `None` on success.
        rejection: Option<Rejection>,
    },
    /// Leader liveness, commit propagation and ReadIndex confirmation.
    Heartbeat {
        /// The leader's term.
        term: u64,
        /// `min(leader commit, follower match)`: never beyond what the follower holds.
        commit: u64,
        /// Latest ReadIndex round of the leader, echoed in the response.
        read_seq: u64,
    },
    /// Answer to [`Message::Heartbeat`].
    HeartbeatResponse {
        /// The responder's term.
        term: u64,
        /// The `read_seq` of the heartbeat answered.
        read_seq: u64,
    },
    /// InstallSnapshot (Raft §7), for a follower whose next entry was compacted away.
    InstallSnapshot {
        /// The leader's term.
        term: u64,
        /// The snapshot, data included.
        snapshot: Snapshot,
    },
    /// Start an election now, skipping pre-vote: the leader is handing over (thesis §3.10).
    TimeoutNow {
        /// The leader's term.
        term: u64,
    },
    /// A follower asks its leader for a read index on behalf of the reads it holds (thesis
    /// §6.4). Sent after those reads arrived, by a node still following this leader in
    /// `term`, it also counts as that node's answer in the round confirming the index.
    ReadIndex {
        /// The follower's term.
        term: u64,
        /// The follower's request number, echoed in the answer.
        id: u64,
    },
    /// Answer to [`Message::ReadIndex`].
    ReadIndexResponse {
        /// The responder's term.
        term: u64,
        /// The `id` of the request answered.
        id: u64,
        /// The index to apply before serving the reads; `None` if the responder cannot give
        /// one now (it no longer leads, or has committed nothing in its term yet).
        index: Option<u64>,
    },
}

impl Message {
    /// The sender's term (or the asked term of a pre-vote).
    pub fn term(&self) -> u64 {
        match self {
            Message::PreVote { term, .. }
            | Message::PreVoteResponse { term, .. }
            | Message::Vote { term, .. }
            | Message::VoteResponse { term, .. }
            | Message::Append { term, .. }
            | Message::AppendResponse { term, .. }
            | Message::Heartbeat { term, .. }
            | Message::HeartbeatResponse { term, .. }
            | Message::InstallSnapshot { term, .. }
            | Message::TimeoutNow { term }
            | Message::ReadIndex { term, .. }
            | Message::ReadIndexResponse { term, .. } => *term,
        }
    }

    /// Whether the message can only come from the leader of its term.
    pub fn is_from_leader(&self) -> bool {
        matches!(
            self,
            Message::Append { .. }
                | Message::Heartbeat { .. }
                | Message::InstallSnapshot { .. }
                | Message::TimeoutNow { .. }
        )
    }
}

/// A message and its destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Node id of the receiver.
    pub to: u64,
    /// The message.
    pub message: Message,
}

/// The durable state a node is rebuilt from after a restart: exactly what the caller
/// persisted through [`crate::Ready`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// The last persisted hard state.
    pub hard_state: HardState,
    /// The last persisted snapshot, if any; the caller has restored its state machine from it.
    pub snapshot: Option<Snapshot>,
    /// The persisted entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

/// The answer to a ReadIndex request: once the caller has applied up to `index`, a read
/// served from its state machine is linearizable (Raft thesis §6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's context given to [`crate::Raft::read_index`].
    pub ctx: u64,
    /// The commit index to wait for.
    pub index: u64,
}
