//! Bulkhead core: at most `concurrency_max` calls in flight, at most `queue_max` callers
//! waiting for a slot. Lock-free counters; the waiting itself (and its timeout) belongs to the
//! caller — the tower layer waits on a `Notify`, the simulator on its event queue.

use std::sync::atomic::{AtomicU32, Ordering};

/// Bulkhead limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkheadConfig {
    /// Calls in flight at most.
    pub concurrency_max: u32,
    /// Callers waiting for a slot at most; 0 rejects at once when full.
    pub queue_max: u32,
    /// How long a caller may wait in the queue.
    pub queue_timeout_ns: u64,
}

/// Why the bulkhead refused; its counts did not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BulkheadRejection {
    /// Every slot is taken and the queue is full.
    #[error("bulkhead full")]
    Full,
    /// Waited `queue_timeout_ns` without getting a slot.
    #[error("bulkhead queue timeout")]
    QueueTimeout,
}

/// The bulkhead's counters; see the module doc.
#[derive(Debug)]
pub struct Bulkhead {
    config: BulkheadConfig,
    inflight: AtomicU32,
    queued: AtomicU32,
}

impl Bulkhead {
    /// An empty bulkhead.
    ///
    /// # Panics
    /// Panics if `concurrency_max` is 0.
    pub fn new(config: BulkheadConfig) -> Self {
        assert!(
            config.concurrency_max > 0,
            "a bulkhead admits at least one call"
        );
        Self {
            config,
            inflight: AtomicU32::new(0),
            queued: AtomicU32::new(0),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BulkheadConfig {
        &self.config
    }

    /// Takes a slot if one is free.
    pub fn try_acquire(&self) -> bool {
        let mut inflight = self.inflight.load(Ordering::Acquire);
        loop {
            if inflight >= self.config.concurrency_max {
                return false;
            }
            match self.inflight.compare_exchange_weak(
                inflight,
                inflight + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(seen) => inflight = seen,
            }
        }
    }

    /// Gives a slot back.
    ///
    /// # Panics
    /// Panics if no slot was taken.
    pub fn release(&self) {
        let before = self.inflight.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "bulkhead released more slots than it gave");
    }

    /// Joins the wait queue if it has room.
    ///
    /// # Errors
    /// [`BulkheadRejection::Full`] when the queue is full.
    pub fn try_enqueue(&self) -> Result<(), BulkheadRejection> {
        let mut queued = self.queued.load(Ordering::Acquire);
        loop {
            if queued >= self.config.queue_max {
                return Err(BulkheadRejection::Full);
            }
            match self.queued.compare_exchange_weak(
                queued,
                queued + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(seen) => queued = seen,
            }
        }
    }

    /// Leaves the wait queue (with or without a slot).
    ///
    /// # Panics
    /// Panics if nobody was queued.
    pub fn dequeue(&self) {
        let before = self.queued.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "bulkhead dequeued more callers than it queued");
    }

    /// Calls in flight.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Acquire)
    }

    /// Callers waiting.
    pub fn queued(&self) -> u32 {
        self.queued.load(Ordering::Acquire)
    }

    /// Checks the invariants that hold between operations.
    ///
    /// # Panics
    /// Panics if one is broken.
    pub fn check_invariants(&self) {
        assert!(self.inflight() <= self.config.concurrency_max);
        assert!(self.queued() <= self.config.queue_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against a model: slots and queue never exceed their limits, and every operation
        /// succeeds exactly when the model says it should.
        #[test]
        fn bulkhead_matches_model(ops in proptest::collection::vec(0u8..4, 1..300)) {
            let bulkhead = Bulkhead::new(BulkheadConfig { concurrency_max: 3, queue_max: 2, queue_timeout_ns: 0 });
            let (mut inflight, mut queued) = (0u32, 0u32);
            for op in ops {
                match op {
                    0 => { let ok = bulkhead.try_acquire(); prop_assert_eq!(ok, inflight < 3); if ok { inflight += 1; } }
                    1 => if inflight > 0 { bulkhead.release(); inflight -= 1; },
                    2 => { let ok = bulkhead.try_enqueue().is_ok(); prop_assert_eq!(ok, queued < 2); if ok { queued += 1; } }
                    _ => if queued > 0 { bulkhead.dequeue(); queued -= 1; },
                }
                bulkhead.check_invariants();
                prop_assert_eq!(bulkhead.inflight(), inflight);
                prop_assert_eq!(bulkhead.queued(), queued);
                prop_assert!(inflight <= 3 && queued <= 2);
            }
        }
    }
}
