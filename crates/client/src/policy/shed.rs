//! Priority load shedding: each priority may fill only its share of the concurrency limit, so
//! as load rises the sheddable traffic is refused first and critical traffic last. With the
//! default shares (sheddable 50%, normal 80%, critical 100%), critical requests always find the
//! top 20% of the limit free of the others.

use std::sync::atomic::{AtomicU32, Ordering};

/// A request's priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    /// Shed first (batch work, prefetches, best-effort).
    Sheddable = 0,
    /// Ordinary traffic.
    Normal = 1,
    /// Shed last (user-facing writes, health checks of the system itself).
    Critical = 2,
}

/// Shares of the limit each priority may fill (0 < share ≤ 1, non-decreasing by priority).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShedConfig {
    /// Share for [`Priority::Sheddable`], [`Priority::Normal`] and [`Priority::Critical`].
    pub shares: [f64; 3],
}

impl Default for ShedConfig {
    fn default() -> Self {
        Self {
            shares: [0.5, 0.8, 1.0],
        }
    }
}

/// The shedder: in-flight count plus the admission rule.
#[derive(Debug)]
pub struct PriorityShedder {
    config: ShedConfig,
    inflight: AtomicU32,
}

impl PriorityShedder {
    /// An idle shedder.
    ///
    /// # Panics
    /// Panics if the shares are not in (0, 1] or decrease with priority.
    pub fn new(config: ShedConfig) -> Self {
        for share in config.shares {
            assert!(share > 0.0 && share <= 1.0, "share out of range: {share}");
        }
        assert!(config.shares[0] <= config.shares[1] && config.shares[1] <= config.shares[2]);
        Self {
            config,
            inflight: AtomicU32::new(0),
        }
    }

    /// Whether `priority` may start a call with `inflight` calls running under `limit`.
    pub fn is_admissible(&self, priority: Priority, inflight: u32, limit: u32) -> bool {
        let ceiling = (f64::from(limit) * self.config.shares[priority as usize]).ceil() as u32;
        inflight < ceiling.max(1)
    }

    /// Starts a call of `priority` if the rule admits it under `limit`.
    pub fn try_acquire(&self, priority: Priority, limit: u32) -> bool {
        let mut inflight = self.inflight.load(Ordering::Acquire);
        loop {
            if !self.is_admissible(priority, inflight, limit) {
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

    /// Ends a call.
    ///
    /// # Panics
    /// Panics if no call was running.
    pub fn release(&self) {
        let before = self.inflight.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "shedder released more calls than it admitted");
    }

    /// Calls running.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shed_fills_by_priority() {
        let shedder = PriorityShedder::new(ShedConfig::default());
        let limit = 10;
        let sheddable = (0..20)
            .filter(|_| shedder.try_acquire(Priority::Sheddable, limit))
            .count();
        assert_eq!(sheddable, 5);
        let normal = (0..20)
            .filter(|_| shedder.try_acquire(Priority::Normal, limit))
            .count();
        assert_eq!(normal, 3);
        let critical = (0..20)
            .filter(|_| shedder.try_acquire(Priority::Critical, limit))
            .count();
        assert_eq!(critical, 2);
        assert_eq!(shedder.inflight(), 10);
        shedder.release();
        assert!(!shedder.try_acquire(Priority::Normal, limit));
        assert!(shedder.try_acquire(Priority::Critical, limit));
    }
}
