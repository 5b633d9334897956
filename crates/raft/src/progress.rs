//! What a leader knows about each follower's log, and how it paces appends to it
//! (etcd-raft's `Progress` with its probe / replicate / snapshot states).

use std::collections::VecDeque;

/// How the leader sends to a follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplicationState {
    /// The follower's log position is unknown: send one append at a time and wait for the
    /// answer (or the next heartbeat response) before sending another.
    Probe,
    /// The follower is known to match: send optimistically, up to `inflight_max` appends ahead.
    Replicate,
    /// The follower needs a snapshot: one was sent and covers up to `pending_index`.
    Snapshot {
        /// Index the snapshot sent covers.
        pending_index: u64,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Progress {
    /// Highest index known to be in the follower's log and equal to ours.
    pub(crate) match_index: u64,
    /// Next index to send.
    pub(crate) next_index: u64,
    pub(crate) state: ReplicationState,
    /// Probe: an append was sent and not yet answered.
    pub(crate) is_probe_sent: bool,
    /// Replicate: last index of each append in flight, oldest first.
    pub(crate) inflight: VecDeque<u64>,
    /// Heard from the follower since the last check-quorum round.
    pub(crate) is_recent_active: bool,
    /// Highest ReadIndex round the follower confirmed.
    pub(crate) read_seq_acked: u64,
}

impl Progress {
    pub(crate) fn new(next_index: u64) -> Self {
        Self {
            match_index: 0,
            next_index,
            state: ReplicationState::Probe,
            is_probe_sent: false,
            inflight: VecDeque::new(),
            is_recent_active: true,
            read_seq_acked: 0,
        }
    }

    pub(crate) fn become_probe(&mut self) {
        self.state = ReplicationState::Probe;
        self.is_probe_sent = false;
        self.inflight.clear();
        self.next_index = self.next_index.max(self.match_index + 1);
    }

    pub(crate) fn become_replicate(&mut self) {
        self.state = ReplicationState::Replicate;
        self.is_probe_sent = false;
        self.inflight.clear();
        self.next_index = self.match_index + 1;
    }

    pub(crate) fn is_paused(&self, inflight_max: usize) -> bool {
        match self.state {
            ReplicationState::Probe => self.is_probe_sent,
            ReplicationState::Replicate => self.inflight.len() >= inflight_max,
            ReplicationState::Snapshot { .. } => true,
        }
    }

    /// Records a successful answer; returns whether the match advanced.
    pub(crate) fn update_match(&mut self, index: u64) -> bool {
        while self.inflight.front().is_some_and(|&last| last <= index) {
            self.inflight.pop_front();
        }
        if index <= self.match_index {
            return false;
        }
        self.match_index = index;
        self.next_index = self.next_index.max(index + 1);
        self.is_probe_sent = false;
        true
    }

    pub(crate) fn check_invariants(&self, last_index: u64, inflight_max: usize) {
        assert!(self.match_index < self.next_index, "match < next");
        assert!(
            self.next_index <= last_index + 1,
            "next beyond the leader's log"
        );
        assert!(self.inflight.len() <= inflight_max, "inflight bounded");
        if self.state != ReplicationState::Replicate {
            assert!(self.inflight.is_empty(), "only replicate pipelines");
        }
        let mut previous = self.match_index;
        for &last in &self.inflight {
            assert!(last > previous, "inflight appends are increasing");
            previous = last;
        }
    }
}
