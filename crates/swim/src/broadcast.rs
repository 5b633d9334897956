//! The dissemination queue: encoded updates waiting to be piggybacked, least-sent first, each
//! dropped after its retransmit limit. A newer update about the same subject replaces the
//! older one, so the queue never holds two facts about one member.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;

/// Smallest encoded update plus framing: once less room than this is left, stop looking.
const MIN_FRAMED_UPDATE: usize = 20;

/// What an update is about: at most one queued update per subject.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    /// A member, by name.
    Member(crate::Name),
    /// A user event, by id.
    Event(String),
}

#[derive(Debug)]
struct Entry {
    subject: Subject,
    bytes: Vec<u8>,
}

/// A priority queue of encoded updates keyed by (times sent, arrival order).
#[derive(Debug, Default)]
pub struct BroadcastQueue {
    queue: BTreeMap<(u32, u64), Entry>,
    by_subject: HashMap<Subject, (u32, u64), BuildHasherDefault<DefaultHasher>>,
    next_id: u64,
}

impl BroadcastQueue {
    /// Queues `bytes` about `subject`, replacing any queued update about the same subject.
    pub fn push(&mut self, subject: Subject, bytes: Vec<u8>) {
        if let Some(key) = self.by_subject.remove(&subject) {
            self.queue.remove(&key);
        }
        let key = (0, self.next_id);
        self.next_id += 1;
        self.by_subject.insert(subject.clone(), key);
        self.queue.insert(key, Entry { subject, bytes });
    }

    /// Number of queued updates.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// True if an update about `subject` is still queued.
    pub fn contains(&self, subject: &Subject) -> bool {
        self.by_subject.contains_key(subject)
    }

    /// Times the queued update about `subject` has been sent.
    pub fn transmits(&self, subject: &Subject) -> Option<u32> {
        self.by_subject.get(subject).map(|k| k.0)
    }

    /// Takes updates, least-sent first, whose encoded sizes (plus 2 bytes of framing each) fit
    /// in `budget` bytes, at most `max_count` of them, skipping `exclude`. Each taken update
    /// counts one transmission and is dropped once sent `limit` times.
    pub fn take(
        &mut self,
        budget: usize,
        max_count: usize,
        limit: u32,
        exclude: Option<&Subject>,
        out: &mut Vec<Vec<u8>>,
    ) {
        let mut left = budget;
        let mut chosen = Vec::new();
        for (key, entry) in &self.queue {
            if out.len() + chosen.len() >= max_count || left < MIN_FRAMED_UPDATE {
                break;
            }
            if exclude.is_some_and(|e| *e == entry.subject) {
                continue;
            }
            let size = entry.bytes.len() + 2;
            if size <= left {
                left -= size;
                chosen.push(*key);
            }
        }
        for key in chosen {
            let Some(entry) = self.queue.remove(&key) else {
                continue;
            };
            out.push(entry.bytes.clone());
            let sent = key.0 + 1;
            if sent >= limit {
                self.by_subject.remove(&entry.subject);
            } else {
                let next = (sent, key.1);
                self.by_subject.insert(entry.subject.clone(), next);
                self.queue.insert(next, entry);
            }
        }
    }

    /// Checks that the two indexes agree.
    pub fn check_invariants(&self) {
        assert_eq!(
            self.queue.len(),
            self.by_subject.len(),
            "broadcast indexes disagree"
        );
        for (subject, key) in &self.by_subject {
            let entry = self.queue.get(key).expect("indexed broadcast is queued");
            assert_eq!(
                &entry.subject, subject,
                "broadcast index points at another subject"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: &str) -> Subject {
        Subject::Member(crate::Name::from(n))
    }

    #[test]
    fn newer_update_replaces_older_and_least_sent_goes_first() {
        let mut q = BroadcastQueue::default();
        q.push(member("a"), vec![1; 30]);
        q.push(member("b"), vec![2; 30]);
        let mut out = Vec::new();
        q.take(35, 10, 3, None, &mut out);
        assert_eq!(out, vec![vec![1; 30]]);
        out.clear();
        q.take(35, 10, 3, None, &mut out);
        assert_eq!(out, vec![vec![2; 30]], "b was sent fewer times");
        q.push(member("a"), vec![3; 5]);
        assert_eq!(q.len(), 2);
        assert_eq!(q.transmits(&member("a")), Some(0));
        q.check_invariants();
    }

    #[test]
    fn updates_are_dropped_after_the_limit() {
        let mut q = BroadcastQueue::default();
        q.push(member("a"), vec![1; 4]);
        let mut out = Vec::new();
        for _ in 0..5 {
            q.take(100, 10, 3, None, &mut out);
        }
        assert_eq!(out.len(), 3);
        assert!(q.is_empty());
        q.check_invariants();
    }

    #[test]
    fn budget_and_count_are_respected() {
        let mut q = BroadcastQueue::default();
        for i in 0..10 {
            q.push(member(&format!("n{i}")), vec![0; 20]);
        }
        let mut out = Vec::new();
        q.take(70, 10, 5, None, &mut out);
        assert_eq!(out.len(), 3, "3 × (20 + 2) fits in 70 bytes, 4 does not");
        out.clear();
        q.take(1000, 2, 5, None, &mut out);
        assert_eq!(out.len(), 2);
    }
}
