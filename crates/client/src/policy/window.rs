//! Time-bucketed counters shared by the breaker's time window, the retry budget and the
//! client-side throttle: `F` counters per bucket, `buckets` buckets of `bucket_ns` each.
//!
//! Lock-free: recording is a load of the bucket's epoch and one `fetch_add`. When a bucket is
//! reused for a newer epoch, the thread that wins the epoch CAS zeroes it; an increment racing
//! with that reset can be lost. The counts are therefore exact when one thread drives the window
//! (the simulator, the tests) and approximate by at most the racing calls otherwise, which is the
//! precision a resilience policy needs.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Buckets kept at most (bounds the memory and the cost of a sum).
pub(crate) const BUCKETS_MAX: u32 = 1_024;

struct Bucket<const F: usize> {
    /// Which bucket of time (`now_ns / bucket_ns`) the counts belong to; `u64::MAX` when unused.
    epoch: AtomicU64,
    counts: [AtomicU32; F],
}

/// A sliding window of `F` counters over the last `buckets × bucket_ns` nanoseconds.
///
/// The hot path divides by nothing: a bucket's length is rounded up to a power of two
/// nanoseconds (a shift), and the slots to a power of two (a mask); only the last `buckets`
/// epochs are summed.
pub(crate) struct TimeWindow<const F: usize> {
    bucket_shift: u32,
    /// Buckets in the window.
    window: u64,
    slots: Box<[Bucket<F>]>,
}

impl<const F: usize> TimeWindow<F> {
    /// A window of `buckets` buckets, each `bucket_ns` long.
    ///
    /// # Panics
    /// Panics if `buckets` is 0 or above [`BUCKETS_MAX`], or `bucket_ns` is 0.
    pub(crate) fn new(buckets: u32, bucket_ns: u64) -> Self {
        assert!(
            buckets > 0 && buckets <= BUCKETS_MAX,
            "buckets out of range: {buckets}"
        );
        assert!(bucket_ns > 0, "bucket_ns must be positive");
        let bucket_shift = 64 - (bucket_ns - 1).leading_zeros();
        let slots = (0..buckets.next_power_of_two())
            .map(|_| Bucket {
                epoch: AtomicU64::new(u64::MAX),
                counts: std::array::from_fn(|_| AtomicU32::new(0)),
            })
            .collect();
        Self {
            bucket_shift,
            window: u64::from(buckets),
            slots,
        }
    }

    /// The window's length in nanoseconds (bucket lengths rounded up to a power of two).
    pub(crate) fn span_ns(&self) -> u64 {
        self.window << self.bucket_shift
    }

    /// The bucket of time `now_ns`, claimed (and cleared) if its slot still holds an older
    /// one; `None` if the slot holds a newer one already (so `now_ns` has left the window).
    #[inline]
    fn bucket(&self, now_ns: u64) -> Option<&Bucket<F>> {
        let epoch = now_ns >> self.bucket_shift;
        let bucket = &self.slots[(epoch as usize) & (self.slots.len() - 1)];
        let seen = bucket.epoch.load(Ordering::Acquire);
        if seen == epoch {
            return Some(bucket);
        }
        if seen != u64::MAX && seen > epoch {
            return None;
        }
        if bucket
            .epoch
            .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            for count in &bucket.counts {
                count.store(0, Ordering::Release);
            }
        }
        Some(bucket)
    }

    /// Adds `amount` to counter `field` at time `now_ns`; nothing if that time has left the
    /// window (a caller recording an event at the time it began, long ago).
    #[inline]
    pub(crate) fn add(&self, now_ns: u64, field: usize, amount: u32) {
        debug_assert!(field < F);
        if let Some(bucket) = self.bucket(now_ns) {
            bucket.counts[field].fetch_add(amount, Ordering::AcqRel);
        }
    }

    /// The sums of every counter over the window ending at `now_ns`.
    pub(crate) fn sums(&self, now_ns: u64) -> [u64; F] {
        let epoch_now = now_ns >> self.bucket_shift;
        let oldest = epoch_now.saturating_sub(self.window - 1);
        let mut sums = [0u64; F];
        for bucket in self.slots.iter() {
            let epoch = bucket.epoch.load(Ordering::Acquire);
            if epoch != u64::MAX && epoch >= oldest && epoch <= epoch_now {
                for (sum, count) in sums.iter_mut().zip(&bucket.counts) {
                    *sum += u64::from(count.load(Ordering::Acquire));
                }
            }
        }
        sums
    }

    /// Forgets everything.
    pub(crate) fn reset(&self) {
        for bucket in self.slots.iter() {
            bucket.epoch.store(u64::MAX, Ordering::Release);
            for count in &bucket.counts {
                count.store(0, Ordering::Release);
            }
        }
    }
}

impl<const F: usize> std::fmt::Debug for TimeWindow<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeWindow")
            .field("bucket_ns", &(1u64 << self.bucket_shift))
            .field("buckets", &self.window)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_expire_after_span() {
        // Buckets of 10 ns round up to 16 ns: the window is 4 × 16 = 64 ns.
        assert_eq!(TimeWindow::<2>::new(4, 10).span_ns(), 64);
        let window = TimeWindow::<2>::new(4, 16);
        window.add(0, 0, 1);
        window.add(24, 0, 2);
        window.add(24, 1, 5);
        assert_eq!(window.sums(24), [3, 5]);
        // At 63 the bucket of [0, 16) is still inside (0, 64].
        assert_eq!(window.sums(63), [3, 5]);
        // At 64 it has left the window.
        assert_eq!(window.sums(64), [2, 5]);
        // Reusing the slot of epoch 0 for epoch 4 clears it.
        window.add(64, 0, 7);
        assert_eq!(window.sums(64), [9, 5]);
        assert_eq!(window.sums(200), [0, 0]);
        // A count for a time whose slot holds a newer bucket has left the window: dropped.
        window.add(0, 1, 100);
        assert_eq!(window.sums(64), [9, 5]);
        window.reset();
        assert_eq!(window.sums(64), [0, 0]);
    }
}
