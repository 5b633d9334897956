//! A follower's linearizable reads without the Raft threads (decisions §30).
//!
//! The Raft core already answers a follower's ReadIndex request at once when the leader and
//! the asker make a quorum (`colony_raft::Raft::read_index`, `docs/protocols/raft.md`,
//! "Follower reads"): the asker, still in the leader's term when it asked, had voted for no
//! one in a later term, and neither had the leader, so no later leader can have committed
//! anything by then. Taking that path costs four thread wake-ups per request (the asker's
//! Raft thread, the leader's, and back). The same rule is checked here off those threads:
//! each Raft thread publishes what the rule needs into its node's [`ReadGate`] *before* it
//! sends anything (a vote in a later term, a commit index), so whatever the gate shows was
//! true of the node as the rest of the cluster can know it. The asking server reads its own
//! gate after its reads arrived ([`ReadGate::follower_ask`]) and asks the leader over the
//! RPC port; the leader's RPC task answers from its gate ([`ReadGate::answer_follower`]) or
//! falls back to its Raft thread.
//!
//! The leader's own linearizable reads use the mirror image (decisions §31): the leader
//! reads its gate after its reads arrived ([`ReadGate::leader_ask`]: it leads term `T` with
//! an entry of `T` committed, among at most three voters) and asks another voter's RPC task
//! whether that voter's gate still shows term `T` ([`ReadGate::confirms_term`]). A yes
//! means neither of the two, a quorum of any configuration a later leader could have been
//! elected in, had voted in a later term by then, so the commit index the leader read
//! covers every write acknowledged before its reads arrived.

use std::sync::Mutex;

use colony_raft::Raft;

/// What the Raft thread last published, before sending anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GateView {
    /// This node's Raft id.
    pub id: u64,
    /// Its current term.
    pub term: u64,
    /// The leader of that term, as far as it knows.
    pub leader: Option<u64>,
    /// Whether it leads the term and has committed an entry of it (before that its commit
    /// index may miss entries an earlier leader committed).
    pub leads_committed: bool,
    /// Its commit index.
    pub commit_index: u64,
    /// The voters its log names, sorted.
    pub voters: Vec<u64>,
}

impl GateView {
    /// The leader's side of the rule: the index a linearizable read of `from`, asked in
    /// `term`, may wait for, or `None` when this view cannot vouch for it (the caller asks
    /// its Raft thread instead). Only when this node leads `term` with an entry of it
    /// committed, and it and `from` are voters making a quorum between them (at most three
    /// voters: with four, a later leader's config could add a fifth and win without them).
    pub(crate) fn answer_follower(&self, term: u64, from: u64) -> Option<u64> {
        let pairs_with_asker = from != self.id && self.voters.contains(&from);
        (self.leads_any_pair_a_quorum() && self.term == term && pairs_with_asker)
            .then_some(self.commit_index)
    }

    /// Whether this node leads with an entry of its term committed, as one of at most three
    /// voters: then it and any other voter are a quorum (two out of at most three).
    fn leads_any_pair_a_quorum(&self) -> bool {
        self.leads_committed && self.voters.len() <= 3 && self.voters.contains(&self.id)
    }

    /// The leader's side of its own reads: its term, its commit index and the other voters
    /// (any one of which can confirm the term), when it leads with an entry of its term
    /// committed among at most three voters including itself, as for
    /// [`GateView::answer_follower`].
    pub(crate) fn leader_ask(&self) -> Option<LeaderAsk> {
        // A lone voter has nobody to ask (its Raft node answers at once).
        let may_ask = self.leads_any_pair_a_quorum() && self.voters.len() >= 2;
        may_ask.then(|| LeaderAsk {
            term: self.term,
            commit_index: self.commit_index,
            others: self
                .voters
                .iter()
                .copied()
                .filter(|id| *id != self.id)
                .collect(),
        })
    }

    /// A voter's side of the leader's question: whether this node is still in `term`, that
    /// is, has sent no vote in a later one (its gate is published before any send).
    pub(crate) fn confirms_term(&self, term: u64) -> bool {
        self.term == term
    }

    /// The asker's side: the term to ask in and the leader to ask, when this node follows a
    /// known leader as a voter of at most three (a non-voter's request counts for nothing,
    /// and with more voters the leader could not answer from its gate).
    pub(crate) fn follower_ask(&self) -> Option<(u64, u64)> {
        let leader = self.leader.filter(|leader| *leader != self.id)?;
        let may_answer = self.voters.len() <= 3 && self.voters.contains(&self.id);
        may_answer.then_some((self.term, leader))
    }
}

/// What a leader asks another voter to confirm before serving its own linearizable reads
/// at `commit_index` (see [`GateView::leader_ask`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaderAsk {
    /// The term the leader leads.
    pub term: u64,
    /// Its commit index when its reads had arrived.
    pub commit_index: u64,
    /// The other voters.
    pub others: Vec<u64>,
}

/// A node's published [`GateView`].
#[derive(Debug, Default)]
pub(crate) struct ReadGate {
    view: Mutex<GateView>,
}

impl ReadGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateView> {
        self.view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Publishes `raft`'s state; the Raft thread calls it before sending any message.
    pub(crate) fn publish(&self, raft: &Raft) {
        let mut view = self.lock();
        view.id = raft.id();
        view.term = raft.term();
        view.leader = raft.leader();
        view.leads_committed = raft.is_leader() && raft.has_committed_in_term();
        view.commit_index = raft.commit_index();
        if view.voters != raft.voters() {
            view.voters = raft.voters().to_vec();
        }
    }

    /// See [`GateView::answer_follower`].
    pub(crate) fn answer_follower(&self, term: u64, from: u64) -> Option<u64> {
        self.lock().answer_follower(term, from)
    }

    /// See [`GateView::follower_ask`].
    pub(crate) fn follower_ask(&self) -> Option<(u64, u64)> {
        self.lock().follower_ask()
    }

    /// See [`GateView::leader_ask`].
    pub(crate) fn leader_ask(&self) -> Option<LeaderAsk> {
        self.lock().leader_ask()
    }

    /// See [`GateView::confirms_term`].
    pub(crate) fn confirms_term(&self, term: u64) -> bool {
        self.lock().confirms_term(term)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader_of_three() -> GateView {
        GateView {
            id: 1,
            term: 7,
            leader: Some(1),
            leads_committed: true,
            commit_index: 42,
            voters: vec![1, 2, 3],
        }
    }

    #[test]
    fn a_leader_of_three_answers_a_voter_in_its_term() {
        let view = leader_of_three();
        assert_eq!(view.answer_follower(7, 2), Some(42));
        assert_eq!(view.answer_follower(7, 3), Some(42));
    }

    #[test]
    fn the_leader_refuses_what_the_rule_does_not_cover() {
        let view = leader_of_three();
        assert_eq!(view.answer_follower(6, 2), None, "asked in an older term");
        assert_eq!(view.answer_follower(8, 2), None, "asked in a newer term");
        assert_eq!(view.answer_follower(7, 4), None, "the asker is no voter");
        assert_eq!(view.answer_follower(7, 1), None, "the leader itself");
        let not_committed = GateView {
            leads_committed: false,
            ..leader_of_three()
        };
        assert_eq!(
            not_committed.answer_follower(7, 2),
            None,
            "no commit in term"
        );
        for (voters, why) in [
            (vec![1, 2, 3, 4], "two of four are no quorum"),
            (vec![1, 2, 3, 4, 5], "two of five are no quorum"),
            (vec![2, 3], "a leader outside its config"),
        ] {
            let view = GateView {
                voters,
                ..leader_of_three()
            };
            assert_eq!(view.answer_follower(7, 2), None, "{why}");
        }
    }

    #[test]
    fn a_leader_of_three_asks_either_other_voter_and_a_voter_confirms_only_its_own_term() {
        let view = leader_of_three();
        assert_eq!(
            view.leader_ask(),
            Some(LeaderAsk {
                term: 7,
                commit_index: 42,
                others: vec![2, 3],
            })
        );
        assert!(view.confirms_term(7));
        assert!(!view.confirms_term(6), "an older term");
        assert!(!view.confirms_term(8), "it may have voted in a newer term");
    }

    #[test]
    fn a_leader_does_not_ask_where_the_rule_does_not_cover() {
        let cases = [
            (
                GateView {
                    leads_committed: false,
                    ..leader_of_three()
                },
                "no commit in its term",
            ),
            (
                GateView {
                    voters: vec![1, 2, 3, 4],
                    ..leader_of_three()
                },
                "two of four are no quorum",
            ),
            (
                GateView {
                    voters: vec![2, 3],
                    ..leader_of_three()
                },
                "a leader outside its config",
            ),
            (
                GateView {
                    voters: vec![1],
                    ..leader_of_three()
                },
                "nobody to ask (a lone voter is asked of its Raft node)",
            ),
        ];
        for (view, why) in cases {
            assert_eq!(view.leader_ask(), None, "{why}");
        }
    }

    #[test]
    fn two_voters_are_a_quorum_of_two() {
        let view = GateView {
            voters: vec![1, 2],
            ..leader_of_three()
        };
        assert_eq!(view.answer_follower(7, 2), Some(42));
    }

    #[test]
    fn only_a_voter_following_a_known_leader_asks() {
        let follower = GateView {
            id: 2,
            leads_committed: false,
            ..leader_of_three()
        };
        assert_eq!(follower.follower_ask(), Some((7, 1)));
        let leaderless = GateView {
            leader: None,
            ..follower.clone()
        };
        assert_eq!(leaderless.follower_ask(), None);
        let learner = GateView {
            id: 9,
            ..follower.clone()
        };
        assert_eq!(learner.follower_ask(), None);
        let of_five = GateView {
            voters: vec![1, 2, 3, 4, 5],
            ..follower.clone()
        };
        assert_eq!(of_five.follower_ask(), None, "the leader could not answer");
        assert_eq!(
            leader_of_three().follower_ask(),
            None,
            "the leader reads itself"
        );
    }

    #[test]
    fn publish_copies_a_fresh_nodes_state() {
        let raft = Raft::new(
            5,
            &[5],
            colony_raft::Config::default(),
            1,
            colony_raft::Restored::default(),
        );
        let gate = ReadGate::default();
        gate.publish(&raft);
        let view = gate.lock().clone();
        assert_eq!(view.id, 5);
        assert_eq!(view.voters, vec![5]);
        assert!(!view.leads_committed, "a new node leads nothing yet");
        assert_eq!(view.follower_ask(), None);
    }
}
