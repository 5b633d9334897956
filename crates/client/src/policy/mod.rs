//! The pure policy cores. None reads a clock or a global RNG: time is `now_ns` (nanoseconds
//! since an epoch the caller keeps fixed) and randomness is a [`colony_base::SplitMix64`] or
//! random bits passed in. The tower layers and the overload simulator drive these same types.
//!
//! Cores shared between threads (breaker, bulkhead, limiter, budget, throttle, GCRA, shedder,
//! latency tracker, and the balancer's picks and results) use atomics and `&self`; the others
//! (`AdaptiveLimit`, `TokenBucket`, the balancer's membership changes) are `&mut self`.

pub mod backoff;
pub mod balance;
pub mod breaker;
pub mod budget;
pub mod bulkhead;
pub mod limit;
pub mod quantile;
pub mod rate;
pub mod sample;
pub mod shed;
pub mod throttle;
mod window;
