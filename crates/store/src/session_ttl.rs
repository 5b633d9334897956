//! Session TTL tracking: a pure core that remembers when each session must be renewed by and
//! reports the ones that expired. The runtime feeds it time; expiries become `SessionDestroy`
//! entries in the log.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Tracks TTL deadlines of sessions. Deadlines are not replicated: after a restart (or, later,
/// a leader change) every session gets a fresh TTL, as Consul does.
#[derive(Debug, Default)]
pub struct SessionTtlTracker {
    deadline_by_session: HashMap<String, u64>,
    sessions_by_deadline: BTreeMap<u64, BTreeSet<String>>,
}

impl SessionTtlTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts or renews `session`: it now expires at `now_ms + ttl_ms`. A zero TTL untracks it.
    pub fn handle_renew(&mut self, now_ms: u64, session: &str, ttl_ms: u64) {
        self.handle_remove(session);
        if ttl_ms == 0 {
            return;
        }
        let deadline = now_ms.saturating_add(ttl_ms);
        self.deadline_by_session
            .insert(session.to_string(), deadline);
        self.sessions_by_deadline
            .entry(deadline)
            .or_default()
            .insert(session.to_string());
        self.check_invariants();
    }

    /// Stops tracking `session` (destroyed, or expiry already proposed).
    pub fn handle_remove(&mut self, session: &str) {
        if let Some(deadline) = self.deadline_by_session.remove(session) {
            let bucket = self
                .sessions_by_deadline
                .get_mut(&deadline)
                .expect("indexed both ways");
            bucket.remove(session);
            if bucket.is_empty() {
                self.sessions_by_deadline.remove(&deadline);
            }
        }
    }

    /// When `session` expires, if tracked.
    pub fn deadline_ms(&self, session: &str) -> Option<u64> {
        self.deadline_by_session.get(session).copied()
    }

    /// Whether `session` is tracked.
    pub fn is_tracked(&self, session: &str) -> bool {
        self.deadline_by_session.contains_key(session)
    }

    /// The tracked sessions.
    pub fn ids(&self) -> Vec<String> {
        self.deadline_by_session.keys().cloned().collect()
    }

    /// Removes and returns every session whose deadline is at or before `now_ms`.
    pub fn take_expired(&mut self, now_ms: u64) -> Vec<String> {
        let later = self.sessions_by_deadline.split_off(&(now_ms + 1));
        let expired = std::mem::replace(&mut self.sessions_by_deadline, later);
        let ids: Vec<String> = expired.into_values().flatten().collect();
        for id in &ids {
            let deadline = self
                .deadline_by_session
                .remove(id)
                .expect("indexed both ways");
            assert!(deadline <= now_ms, "never expire early");
        }
        self.check_invariants();
        ids
    }

    /// The earliest deadline, for arming a timer.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.sessions_by_deadline.keys().next().copied()
    }

    fn check_invariants(&self) {
        debug_assert_eq!(
            self.deadline_by_session.len(),
            self.sessions_by_deadline
                .values()
                .map(BTreeSet::len)
                .sum::<usize>()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_tracker_expires_at_deadline_never_before() {
        let mut tracker = SessionTtlTracker::new();
        tracker.handle_renew(1000, "a", 10_000);
        assert!(tracker.take_expired(10_999).is_empty());
        assert_eq!(tracker.take_expired(11_000), vec!["a".to_string()]);
        assert!(!tracker.is_tracked("a"));
    }

    #[test]
    fn ttl_tracker_renew_moves_deadline() {
        let mut tracker = SessionTtlTracker::new();
        tracker.handle_renew(0, "a", 100);
        tracker.handle_renew(90, "a", 100);
        assert!(tracker.take_expired(150).is_empty());
        assert_eq!(tracker.next_deadline_ms(), Some(190));
        assert_eq!(tracker.take_expired(190).len(), 1);
    }

    #[test]
    fn ttl_tracker_zero_ttl_is_untracked() {
        let mut tracker = SessionTtlTracker::new();
        tracker.handle_renew(0, "a", 0);
        assert!(!tracker.is_tracked("a"));
        assert_eq!(tracker.next_deadline_ms(), None);
    }
}
