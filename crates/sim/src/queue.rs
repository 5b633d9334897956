//! The simulator's clock: a queue of events on virtual time. Events come out in time order,
//! and events due at the same instant in the order they were scheduled, so a run depends on
//! nothing but its inputs and its seed. Both worlds of the simulator (membership and
//! overload) run on it; the time unit is the caller's (µs for membership, ns for overload).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// One scheduled event.
#[derive(Debug)]
struct Entry<E> {
    at: u64,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<E> Eq for Entry<E> {}
impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Entry<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and the earliest event comes first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Events on virtual time; see the module doc.
#[derive(Debug)]
pub struct EventQueue<E> {
    now: u64,
    seq: u64,
    heap: BinaryHeap<Entry<E>>,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> EventQueue<E> {
    /// An empty queue at time 0.
    pub fn new() -> Self {
        Self {
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
        }
    }

    /// The time of the event popped last (or set by [`EventQueue::advance_to`]).
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no event waits.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Schedules `event` at `at`; a time in the past is clamped to now (the event then runs
    /// after everything already due now).
    pub fn schedule(&mut self, at: u64, event: E) {
        self.seq += 1;
        self.heap.push(Entry {
            at: at.max(self.now),
            seq: self.seq,
            event,
        });
    }

    /// The next event due at or before `until`, with its time; the clock moves to it.
    pub fn pop_until(&mut self, until: u64) -> Option<(u64, E)> {
        if self.heap.peek()?.at > until {
            return None;
        }
        let entry = self.heap.pop()?;
        self.now = entry.at;
        Some((entry.at, entry.event))
    }

    /// Moves the clock forward to `at` (never back).
    pub fn advance_to(&mut self, at: u64) {
        self.now = self.now.max(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_pops_in_time_order_and_ties_in_scheduling_order() {
        let mut queue = EventQueue::new();
        queue.schedule(30, "c");
        queue.schedule(10, "a1");
        queue.schedule(20, "b");
        queue.schedule(10, "a2");
        let mut seen = Vec::new();
        while let Some((at, event)) = queue.pop_until(u64::MAX) {
            assert_eq!(queue.now(), at);
            seen.push((at, event));
        }
        assert_eq!(seen, [(10, "a1"), (10, "a2"), (20, "b"), (30, "c")]);
    }

    #[test]
    fn queue_stops_at_the_horizon_and_clamps_the_past_to_now() {
        let mut queue = EventQueue::new();
        queue.schedule(50, 1);
        queue.schedule(100, 2);
        assert_eq!(queue.pop_until(60), Some((50, 1)));
        assert_eq!(queue.pop_until(60), None);
        assert_eq!(queue.len(), 1);
        queue.schedule(10, 3);
        assert_eq!(queue.pop_until(60), Some((50, 3)), "the past runs now");
        queue.advance_to(70);
        queue.advance_to(65);
        assert_eq!(queue.now(), 70);
        assert_eq!(queue.pop_until(u64::MAX), Some((100, 2)));
        assert!(queue.is_empty());
    }
}
