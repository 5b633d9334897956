//! The in-memory view of the log: a snapshot boundary, the entries after it, and the three
//! watermarks (persisted, committed, applied) that the Ready contract moves.

use crate::message::{ConfChange, Entry, EntryKind, Snapshot, SnapshotMeta};

/// The log as this node knows it. Entries `first_index()..=last_index()` are held in memory
/// (the caller's storage holds the persisted prefix of the same entries).
#[derive(Debug, Clone)]
pub(crate) struct RaftLog {
    /// What the latest snapshot covers; entries at or below `snapshot_meta.index` are gone.
    pub(crate) snapshot_meta: SnapshotMeta,
    /// The latest snapshot with its data, kept to send to followers that fall behind it.
    pub(crate) snapshot: Option<Snapshot>,
    /// A snapshot received from the leader and not yet persisted.
    pub(crate) is_snapshot_unstable: bool,
    /// Entries after the snapshot, contiguous.
    pub(crate) entries: Vec<Entry>,
    /// Entries up to here are persisted (fsynced) and still in the log.
    pub(crate) stable_index: u64,
    /// Highest committed index.
    pub(crate) commit: u64,
    /// Highest index the caller has applied (acknowledged through `advance`).
    pub(crate) applied: u64,
    /// The voters as of the snapshot (or the bootstrap voters without one).
    conf_base: Vec<u64>,
    /// Indexes of the `ConfChange` entries held, ascending.
    conf_indexes: Vec<u64>,
}

impl RaftLog {
    pub(crate) fn restore(
        snapshot: Option<Snapshot>,
        entries: Vec<Entry>,
        commit: u64,
        bootstrap_voters: Vec<u64>,
    ) -> Self {
        let snapshot_meta = snapshot.as_ref().map(|s| s.meta).unwrap_or_default();
        let conf_base = snapshot
            .as_ref()
            .map_or(bootstrap_voters, |s| s.voters.clone());
        let conf_indexes = entries
            .iter()
            .filter(|e| e.kind == EntryKind::ConfChange)
            .map(|e| e.index)
            .collect();
        for (offset, entry) in entries.iter().enumerate() {
            assert_eq!(
                entry.index,
                snapshot_meta.index + 1 + offset as u64,
                "restored entries must follow the snapshot contiguously"
            );
        }
        let log = Self {
            snapshot_meta,
            snapshot,
            is_snapshot_unstable: false,
            stable_index: snapshot_meta.index + entries.len() as u64,
            entries,
            commit: commit.max(snapshot_meta.index),
            applied: snapshot_meta.index,
            conf_base,
            conf_indexes,
        };
        assert!(
            log.commit <= log.last_index(),
            "restored commit beyond the log"
        );
        log
    }

    pub(crate) fn first_index(&self) -> u64 {
        self.snapshot_meta.index + 1
    }

    pub(crate) fn last_index(&self) -> u64 {
        self.snapshot_meta.index + self.entries.len() as u64
    }

    pub(crate) fn last_term(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot_meta.term, |e| e.term)
    }

    /// The term of the entry at `index`; `None` if compacted away or beyond the log.
    pub(crate) fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_meta.index {
            return Some(self.snapshot_meta.term);
        }
        if index < self.snapshot_meta.index || index > self.last_index() {
            return None;
        }
        Some(self.entry(index).term)
    }

    pub(crate) fn entry(&self, index: u64) -> &Entry {
        assert!(index >= self.first_index(), "entry {index} was compacted");
        assert!(
            index <= self.last_index(),
            "entry {index} is beyond the log"
        );
        let entry = &self.entries[(index - self.first_index()) as usize];
        debug_assert_eq!(entry.index, index);
        entry
    }

    pub(crate) fn matches(&self, index: u64, term: u64) -> bool {
        self.term_at(index) == Some(term)
    }

    /// Raft §5.4.1: a candidate's log is at least as up to date as ours.
    pub(crate) fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// The largest index at or below `index` whose term is at most `term` (and its term), or
    /// the snapshot boundary if every held entry up to `index` has a larger term.
    pub(crate) fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut at = index.min(self.last_index());
        while at > self.snapshot_meta.index {
            let at_term = self.entry(at).term;
            if at_term <= term {
                return (at, at_term);
            }
            at -= 1;
        }
        (self.snapshot_meta.index, self.snapshot_meta.term)
    }

    /// Entries `from..` limited by count and bytes (at least one if any exists).
    pub(crate) fn slice(&self, from: u64, count_max: usize, bytes_max: usize) -> Vec<Entry> {
        assert!(from >= self.first_index(), "slice from a compacted index");
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut at = from;
        while at <= self.last_index() && out.len() < count_max {
            let entry = self.entry(at);
            if !out.is_empty() && bytes + entry.data.len() > bytes_max {
                break;
            }
            bytes += entry.data.len();
            out.push(entry.clone());
            at += 1;
        }
        out
    }

    /// Appends entries created by this node as leader.
    pub(crate) fn append(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index() + 1,
            "leader appends contiguously"
        );
        assert!(
            entry.term >= self.last_term(),
            "terms never decrease along the log"
        );
        self.push(entry);
    }

    /// The follower side of AppendEntries (Raft §5.3): if the log holds `prev`, append the
    /// entries, truncating at the first conflict, and return the index of the last new entry.
    pub(crate) fn maybe_append(
        &mut self,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
    ) -> Option<u64> {
        if !self.matches(prev_index, prev_term) {
            return None;
        }
        let last_new = prev_index + entries.len() as u64;
        for entry in entries {
            if entry.index <= self.snapshot_meta.index {
                continue;
            }
            match self.term_at(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    // Raft §5.3: delete the conflicting entry and all that follow it. A
                    // committed entry is never in conflict (Leader Completeness, §5.4).
                    assert!(
                        entry.index > self.commit,
                        "conflict at committed index {} (commit {})",
                        entry.index,
                        self.commit
                    );
                    let keep = (entry.index - self.first_index()) as usize;
                    self.entries.truncate(keep);
                    self.conf_indexes.retain(|&at| at < entry.index);
                    self.stable_index = self.stable_index.min(entry.index - 1);
                    self.push(entry);
                }
                None => {
                    assert_eq!(entry.index, self.last_index() + 1, "append leaves no gap");
                    self.push(entry);
                }
            }
        }
        Some(last_new)
    }

    fn push(&mut self, entry: Entry) {
        if entry.kind == EntryKind::ConfChange {
            self.conf_indexes.push(entry.index);
        }
        self.entries.push(entry);
    }

    /// The voters in effect after the entry at `index` (every change in the log counts,
    /// committed or not).
    pub(crate) fn voters_through(&self, index: u64) -> Vec<u64> {
        let mut voters = self.conf_base.clone();
        for &at in self.conf_indexes.iter().take_while(|&&at| at <= index) {
            let change = ConfChange::decode(&self.entry(at).data)
                .expect("conf change entries are validated when proposed");
            change.apply(&mut voters);
        }
        voters
    }

    pub(crate) fn voters(&self) -> Vec<u64> {
        self.voters_through(self.last_index())
    }

    /// Index of the latest membership change held in the log (0 if none).
    pub(crate) fn last_conf_index(&self) -> u64 {
        self.conf_indexes.last().copied().unwrap_or(0)
    }

    pub(crate) fn commit_to(&mut self, index: u64) -> bool {
        if index <= self.commit {
            return false;
        }
        assert!(
            index <= self.last_index(),
            "commit {index} beyond last index {}",
            self.last_index()
        );
        self.commit = index;
        true
    }

    /// Replaces the whole log by a snapshot received from the leader.
    pub(crate) fn install(&mut self, snapshot: Snapshot) {
        assert!(
            snapshot.meta.index > self.commit,
            "a snapshot never rewinds commit"
        );
        self.snapshot_meta = snapshot.meta;
        self.snapshot = Some(snapshot);
        self.is_snapshot_unstable = true;
        self.conf_base = self.snapshot.as_ref().expect("just set").voters.clone();
        self.conf_indexes.clear();
        self.entries.clear();
        self.stable_index = 0;
        self.commit = self.snapshot_meta.index;
    }

    /// Drops entries up to `index`, which the caller's snapshot `data` covers.
    pub(crate) fn compact(&mut self, index: u64, data: Vec<u8>) {
        assert!(index <= self.applied, "compact beyond applied");
        if index <= self.snapshot_meta.index {
            return;
        }
        assert!(index <= self.stable_index, "compact beyond persisted");
        let term = self.term_at(index).expect("index is within the log");
        let voters = self.voters_through(index);
        let drop = (index - self.snapshot_meta.index) as usize;
        self.entries.drain(..drop);
        self.conf_indexes.retain(|&at| at > index);
        self.conf_base = voters.clone();
        self.snapshot_meta = SnapshotMeta { index, term };
        self.snapshot = Some(Snapshot {
            meta: self.snapshot_meta,
            voters,
            data,
        });
        assert_eq!(self.first_index(), index + 1);
    }

    pub(crate) fn check_invariants(&self) {
        let held: Vec<u64> = self
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::ConfChange)
            .map(|e| e.index)
            .collect();
        debug_assert_eq!(held, self.conf_indexes, "conf change index is exact");
        for (offset, entry) in self.entries.iter().enumerate() {
            assert_eq!(
                entry.index,
                self.first_index() + offset as u64,
                "log is contiguous"
            );
        }
        let mut term = self.snapshot_meta.term;
        for entry in &self.entries {
            assert!(entry.term >= term, "terms never decrease along the log");
            term = entry.term;
        }
        assert!(
            self.applied <= self.commit,
            "applied {} > commit {}",
            self.applied,
            self.commit
        );
        assert!(self.commit <= self.last_index(), "commit beyond the log");
        assert!(
            self.stable_index <= self.last_index(),
            "persisted beyond the log"
        );
        assert!(
            self.snapshot_meta.index <= self.commit,
            "snapshot covers uncommitted entries"
        );
        if let Some(snapshot) = &self.snapshot {
            assert_eq!(snapshot.meta, self.snapshot_meta);
        } else {
            assert_eq!(self.snapshot_meta, SnapshotMeta::default());
        }
        if self.is_snapshot_unstable {
            assert!(self.snapshot.is_some(), "an unstable snapshot is held");
        } else {
            assert!(
                self.stable_index >= self.snapshot_meta.index,
                "snapshot persisted"
            );
            assert!(self.applied >= self.snapshot_meta.index, "snapshot applied");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            data: Vec::new(),
        }
    }

    fn log_of(terms: &[u64]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(i, &t)| entry(i as u64 + 1, t))
            .collect();
        RaftLog::restore(None, entries, 0, vec![1, 2, 3])
    }

    #[test]
    fn find_conflict_by_term_skips_larger_terms() {
        // Raft §5.3 fast backtracking: indexes 1..=7 with terms 1 1 2 2 4 4 5.
        let log = log_of(&[1, 1, 2, 2, 4, 4, 5]);
        assert_eq!(log.find_conflict_by_term(7, 3), (4, 2));
        assert_eq!(log.find_conflict_by_term(7, 5), (7, 5));
        assert_eq!(
            log.find_conflict_by_term(10, 4),
            (6, 4),
            "beyond the log clamps"
        );
        assert_eq!(
            log.find_conflict_by_term(3, 0),
            (0, 0),
            "down to the snapshot"
        );
    }

    #[test]
    fn maybe_append_truncates_at_first_conflict_only() {
        let mut log = log_of(&[1, 1, 2, 2]);
        log.stable_index = 4;
        assert_eq!(
            log.maybe_append(5, 2, vec![entry(6, 3)]),
            None,
            "gap refused"
        );
        assert_eq!(
            log.maybe_append(1, 2, vec![entry(2, 3)]),
            None,
            "mismatch refused"
        );
        // Duplicate prefix, then a conflict at 3: 3 and 4 go, 3' and 4' come.
        let update = vec![entry(2, 1), entry(3, 3), entry(4, 3)];
        assert_eq!(log.maybe_append(1, 1, update), Some(4));
        let terms: Vec<u64> = log.entries.iter().map(|e| e.term).collect();
        assert_eq!(terms, vec![1, 1, 3, 3]);
        assert_eq!(
            log.stable_index, 2,
            "persisted watermark falls back to the conflict"
        );
        // A stale, shorter append does not truncate what follows it.
        assert_eq!(log.maybe_append(1, 1, vec![entry(2, 1)]), Some(2));
        assert_eq!(log.last_index(), 4);
        log.check_invariants();
    }

    #[test]
    #[should_panic(expected = "conflict at committed index")]
    fn maybe_append_never_overwrites_committed_entries() {
        let mut log = log_of(&[1, 1, 2]);
        log.commit = 3;
        let _ = log.maybe_append(2, 1, vec![entry(3, 3)]);
    }

    #[test]
    fn compact_keeps_the_voters_as_of_the_snapshot() {
        let mut log = log_of(&[1]);
        let add = Entry {
            index: 2,
            term: 1,
            kind: EntryKind::ConfChange,
            data: ConfChange::AddVoter(4).encode(),
        };
        log.append(add);
        log.append(entry(3, 1));
        log.stable_index = 3;
        log.commit = 3;
        log.applied = 3;
        assert_eq!(log.voters(), vec![1, 2, 3, 4]);
        log.compact(3, vec![7]);
        assert_eq!(log.voters(), vec![1, 2, 3, 4]);
        assert_eq!(
            log.snapshot.as_ref().map(|s| s.voters.clone()),
            Some(vec![1, 2, 3, 4])
        );
        log.check_invariants();
    }

    proptest::proptest! {
        #[test]
        fn conf_change_round_trips(id: u64, is_add: bool) {
            let change = if is_add { ConfChange::AddVoter(id) } else { ConfChange::RemoveVoter(id) };
            proptest::prop_assert_eq!(ConfChange::decode(&change.encode()), Some(change));
        }

        #[test]
        fn conf_change_garbage_never_panics(bytes: Vec<u8>) {
            let _ = ConfChange::decode(&bytes);
        }

        /// Whatever a leader sends, a follower's log stays contiguous with non-decreasing
        /// terms, and an accepted append leaves the leader's entries in place.
        #[test]
        fn maybe_append_keeps_the_log_well_formed(
            start in proptest::collection::vec(1u64..4, 0..8),
            prev_index in 0u64..10,
            sent in proptest::collection::vec(0u64..3, 0..6),
        ) {
            let mut start = start;
            start.sort_unstable();
            let mut log = log_of(&start);
            log.stable_index = log.last_index();
            let prev_term = log.term_at(prev_index).unwrap_or(1);
            // The leader's entries after `prev` have terms at least `prev_term`.
            let base = prev_term;
            let entries: Vec<Entry> = sent
                .iter()
                .scan(base, |term, &step| { *term += step; Some(*term) })
                .enumerate()
                .map(|(i, term)| entry(prev_index + 1 + i as u64, term))
                .collect();
            let accepted = log.maybe_append(prev_index, prev_term, entries.clone());
            log.check_invariants();
            if let Some(last_new) = accepted {
                proptest::prop_assert_eq!(last_new, prev_index + entries.len() as u64);
                for e in &entries {
                    proptest::prop_assert_eq!(log.term_at(e.index), Some(e.term));
                }
            }
        }
    }
}
