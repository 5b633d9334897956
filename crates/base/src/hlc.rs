//! Hybrid logical clock (Kulkarni et al., 2014): physical milliseconds plus a logical counter,
//! so that causally related observations are ordered even when wall clocks disagree.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One reading of a hybrid logical clock.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct HlcTimestamp {
    /// Physical component, milliseconds since the Unix epoch.
    pub physical_ms: u64,
    /// Logical counter that orders events within one physical millisecond.
    pub logical: u32,
}

impl fmt::Display for HlcTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.physical_ms, self.logical)
    }
}

/// A hybrid logical clock. It never reads time itself: callers pass the wall clock in.
#[derive(Debug, Clone, Default)]
pub struct Hlc {
    last: HlcTimestamp,
}

impl Hlc {
    /// Returns a timestamp for a local event, strictly greater than every earlier one.
    pub fn now(&mut self, wall_ms: u64) -> HlcTimestamp {
        let before = self.last;
        self.last = if wall_ms > before.physical_ms {
            HlcTimestamp {
                physical_ms: wall_ms,
                logical: 0,
            }
        } else {
            HlcTimestamp {
                physical_ms: before.physical_ms,
                logical: before.logical + 1,
            }
        };
        assert!(self.last > before, "hlc must be strictly monotonic");
        self.last
    }

    /// Merges a timestamp received from another node, then returns a local timestamp greater
    /// than both.
    pub fn observe(&mut self, wall_ms: u64, remote: HlcTimestamp) -> HlcTimestamp {
        if remote > self.last {
            self.last = remote;
        }
        let stamped = self.now(wall_ms);
        assert!(stamped > remote);
        stamped
    }

    /// The last timestamp handed out, without advancing the clock.
    pub fn last(&self) -> HlcTimestamp {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hlc_wall_clock_going_backwards_stays_monotonic() {
        let mut clock = Hlc::default();
        let a = clock.now(1000);
        let b = clock.now(900);
        let c = clock.now(1000);
        assert!(a < b && b < c);
        assert_eq!(b.physical_ms, 1000);
    }

    #[test]
    fn hlc_observe_remote_ahead_orders_after_it() {
        let mut clock = Hlc::default();
        let remote = HlcTimestamp {
            physical_ms: 5000,
            logical: 7,
        };
        let local = clock.observe(1000, remote);
        assert!(local > remote);
        assert_eq!(local.physical_ms, 5000);
    }
}
