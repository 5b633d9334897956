//! Rate limits: GCRA (the generic cell rate algorithm, as in ATM's traffic policing: one
//! "theoretical arrival time" per limiter, updated with one CAS), a classic token bucket, and
//! a keyed GCRA holding one arrival time per key.
//!
//! Both algorithms admit the same traffic for the same parameters: a sustained `rate_per_s`
//! with bursts of up to `burst` requests. GCRA keeps one `u64` instead of a token count and a
//! timestamp, which is why the hot path is a single lock-free compare-and-swap.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Rate parameters shared by every limiter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Nanoseconds between requests at the sustained rate (1e9 / rate).
    pub emission_ns: u64,
    /// Requests admitted at once after a quiet period.
    pub burst: u32,
}

impl Quota {
    /// `rate_per_s` requests per second with bursts of `burst`.
    ///
    /// # Panics
    /// Panics if `rate_per_s` or `burst` is 0, or the rate exceeds 1e9/s.
    pub fn per_second(rate_per_s: u64, burst: u32) -> Self {
        assert!(
            rate_per_s > 0 && rate_per_s <= 1_000_000_000,
            "rate out of range"
        );
        assert!(burst > 0, "burst must be positive");
        Self {
            emission_ns: 1_000_000_000 / rate_per_s,
            burst,
        }
    }

    fn tolerance_ns(&self) -> u64 {
        self.emission_ns.saturating_mul(u64::from(self.burst) - 1)
    }
}

/// Refused: try again after this long. The limiter's state did not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited, retry after {retry_after_ns} ns")]
pub struct RateLimited {
    /// Earliest wait after which the same request would be admitted.
    pub retry_after_ns: u64,
}

/// The GCRA decision for one arrival: the new theoretical arrival time, or a refusal.
#[inline]
fn gcra_step(quota: &Quota, tat_ns: u64, now_ns: u64) -> Result<u64, RateLimited> {
    let start = tat_ns.max(now_ns);
    let ahead = start - now_ns;
    let tolerance = quota.tolerance_ns();
    if ahead > tolerance {
        return Err(RateLimited {
            retry_after_ns: ahead - tolerance,
        });
    }
    Ok(start + quota.emission_ns)
}

/// A lock-free GCRA limiter.
#[derive(Debug)]
pub struct Gcra {
    quota: Quota,
    /// Theoretical arrival time of the next request at the sustained rate.
    tat_ns: AtomicU64,
}

impl Gcra {
    /// A limiter with a full burst available.
    pub fn new(quota: Quota) -> Self {
        Self {
            quota,
            tat_ns: AtomicU64::new(0),
        }
    }

    /// Admits one request at `now_ns` or says how long to wait.
    ///
    /// # Errors
    /// [`RateLimited`] when over the rate.
    #[inline]
    pub fn check(&self, now_ns: u64) -> Result<(), RateLimited> {
        let mut tat = self.tat_ns.load(Ordering::Acquire);
        loop {
            let next = gcra_step(&self.quota, tat, now_ns)?;
            match self
                .tat_ns
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }
}

/// A classic token bucket (`&mut self`): `burst` tokens, refilled at the quota's rate.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    quota: Quota,
    /// Tokens scaled by `emission_ns` (so refill is exact integer arithmetic).
    scaled_tokens: u64,
    last_ns: u64,
}

impl TokenBucket {
    /// A full bucket at time `now_ns`.
    pub fn new(quota: Quota, now_ns: u64) -> Self {
        let scaled_tokens = u64::from(quota.burst) * quota.emission_ns;
        Self {
            quota,
            scaled_tokens,
            last_ns: now_ns,
        }
    }

    /// Takes one token at `now_ns`.
    ///
    /// # Errors
    /// [`RateLimited`] when the bucket is empty.
    pub fn check(&mut self, now_ns: u64) -> Result<(), RateLimited> {
        let full = u64::from(self.quota.burst) * self.quota.emission_ns;
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        self.scaled_tokens = self.scaled_tokens.saturating_add(elapsed).min(full);
        if self.scaled_tokens >= self.quota.emission_ns {
            self.scaled_tokens -= self.quota.emission_ns;
            Ok(())
        } else {
            Err(RateLimited {
                retry_after_ns: self.quota.emission_ns - self.scaled_tokens,
            })
        }
    }
}

const SHARDS: usize = 16;

/// GCRA per key (per tenant, per client address…). Keys live in 16 mutex-guarded shards; a
/// key whose arrival time has passed is indistinguishable from a new one, so such keys are
/// dropped whenever a shard reaches its share of `keys_max`.
#[derive(Debug)]
pub struct KeyedGcra<K> {
    quota: Quota,
    keys_max_per_shard: usize,
    shards: [Mutex<HashMap<K, u64>>; SHARDS],
}

/// Refusal of a keyed limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyedRejection {
    /// This key is over its rate.
    #[error(transparent)]
    Limited(#[from] RateLimited),
    /// Too many distinct keys are active; the new key was not admitted.
    #[error("too many active keys")]
    KeysFull,
}

impl<K: Hash + Eq + Clone> KeyedGcra<K> {
    /// A limiter tracking at most about `keys_max` active keys.
    ///
    /// # Panics
    /// Panics if `keys_max` is below 16.
    pub fn new(quota: Quota, keys_max: usize) -> Self {
        assert!(keys_max >= SHARDS, "keys_max must be at least {SHARDS}");
        Self {
            quota,
            keys_max_per_shard: keys_max / SHARDS,
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    fn shard(&self, key: &K) -> &Mutex<HashMap<K, u64>> {
        use std::hash::Hasher;
        // SipHash with fixed keys: the shard of a key is the same in every run.
        let mut hasher = std::hash::DefaultHasher::new();
        key.hash(&mut hasher);
        &self.shards[(hasher.finish() as usize) % SHARDS]
    }

    /// Admits one request for `key` at `now_ns`.
    ///
    /// # Errors
    /// [`KeyedRejection`] when the key is over its rate or there is no room for a new key.
    pub fn check(&self, key: &K, now_ns: u64) -> Result<(), KeyedRejection> {
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tat) = shard.get_mut(key) {
            *tat = gcra_step(&self.quota, *tat, now_ns)?;
            return Ok(());
        }
        if shard.len() >= self.keys_max_per_shard {
            shard.retain(|_, tat| *tat > now_ns);
            if shard.len() >= self.keys_max_per_shard {
                return Err(KeyedRejection::KeysFull);
            }
        }
        let tat = gcra_step(&self.quota, 0, now_ns)?;
        shard.insert(key.clone(), tat);
        assert!(shard.len() <= self.keys_max_per_shard);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn gcra_allows_burst_then_rate() {
        let gcra = Gcra::new(Quota::per_second(10, 3));
        let now = 1_000_000_000;
        assert!(gcra.check(now).is_ok());
        assert!(gcra.check(now).is_ok());
        assert!(gcra.check(now).is_ok());
        let refused = gcra.check(now).expect_err("burst used up");
        assert_eq!(refused.retry_after_ns, 100_000_000);
        assert!(gcra.check(now + 100_000_000).is_ok());
        assert!(gcra.check(now + 100_000_000).is_err());
    }

    #[test]
    fn keyed_gcra_limits_keys_independently_and_evicts_idle() {
        let keyed = KeyedGcra::new(Quota::per_second(1, 1), 1_600);
        assert!(keyed.check(&0u32, 10).is_ok());
        assert!(keyed.check(&0u32, 10).is_err());
        assert!(keyed.check(&1u32, 10).is_ok());
        // 1,600 keys fit (100 per shard, some shards fuller than others: count refusals).
        let refused = (2..1_600u32)
            .filter(|k| keyed.check(k, 10).is_err())
            .count();
        assert!(refused > 0, "shards are bounded");
        // Two seconds later every key is idle, so new keys evict them and are admitted.
        for key in 10_000..11_000u32 {
            assert!(keyed.check(&key, 2_000_000_010).is_ok(), "key {key}");
        }
    }

    proptest! {
        /// GCRA and the token bucket admit exactly the same arrivals.
        #[test]
        fn gcra_equals_token_bucket(rate in 1u64..1_000, burst in 1u32..20, gaps in proptest::collection::vec(0u64..5_000_000, 1..500)) {
            let quota = Quota::per_second(rate, burst);
            let gcra = Gcra::new(quota);
            let mut bucket = TokenBucket::new(quota, 0);
            let mut now = 0;
            for gap in gaps {
                now += gap;
                prop_assert_eq!(gcra.check(now).is_ok(), bucket.check(now).is_ok(), "at {}", now);
            }
        }

        /// Over any interval, admitted requests ≤ burst + interval / emission.
        #[test]
        fn gcra_never_exceeds_rate(gaps in proptest::collection::vec(0u64..3_000_000, 1..1_000)) {
            let quota = Quota::per_second(500, 5);
            let gcra = Gcra::new(quota);
            let mut now = 0;
            let mut admitted = Vec::new();
            for gap in gaps {
                now += gap;
                if gcra.check(now).is_ok() { admitted.push(now); }
            }
            for (i, start) in admitted.iter().enumerate() {
                for (j, end) in admitted.iter().enumerate().skip(i) {
                    let count = (j - i + 1) as u64;
                    prop_assert!(count <= 5 + (end - start) / quota.emission_ns);
                }
            }
        }
    }
}
