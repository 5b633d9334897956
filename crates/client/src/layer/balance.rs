//! Load-aware balancing as a tower service over [`crate::policy::balance::Balancer`]:
//! power of two choices over peak-EWMA latency, outlier ejection and zone affinity. Endpoints
//! are added and removed with [`Change`]s (fed by hand or by the discovery stream of
//! `crate::discover`). Each call clones the chosen endpoint's service (an HTTP client bound to
//! an address is cheap to clone), waits for it to be ready and calls it.
//!
//! A call reads the clock when it starts (to pick, and as the start of its RTT) and a timed
//! call reads it again when it ends. Each handle times at most one call per
//! `BalanceConfig::rtt_sample_gap_ns` (1 µs by default; see
//! [`crate::policy::sample::RttSampler`]): calls that start at least that far apart are all
//! timed; of calls closer together (bursts, tight loops), the successes between two timed
//! calls are counted without their RTT, which saves a clock read (~10 ns here) each.
//! Failures are always timed (their result can eject).
//!
//! The hot path takes no lock: each `Balance` handle keeps a snapshot of the endpoint table
//! (an `Arc`), checks one atomic generation per call to see whether the set changed, and
//! picks with its own random stream; the core's per-endpoint state is atomics. A change takes
//! the table's mutex, builds a new snapshot (the endpoints' state carries over) and bumps the
//! generation. A call in flight keeps its snapshot, so it reports to the endpoint it was sent
//! to even if that endpoint moved or left.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use colony_base::SplitMix64;
use tower::Service;

use super::{BoxError, Classify, Clock, ErrIsFailure, Error, Observe};
use crate::event::{Event, LayerKind};
use crate::policy::balance::{BalanceConfig, Balancer, Ejection};
use crate::policy::sample::RttSampler;

/// A change to the endpoint set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<K, S> {
    /// Add (or replace) the endpoint `K` in an optional zone.
    Insert(K, Option<String>, S),
    /// Remove the endpoint `K`.
    Remove(K),
}

/// One immutable view of the endpoint set; replaced whole on every change.
struct Table<K, S> {
    /// A handle on the shared endpoint state (see `Balancer::share`).
    balancer: Balancer,
    keys: Vec<K>,
    services: Vec<S>,
    index_of: HashMap<K, usize>,
    observe: Observe,
    clock: Clock,
}

impl<K: Hash + Eq + Clone, S: Clone> Table<K, S> {
    /// The table after `change`.
    fn with(&self, change: Change<K, S>) -> Self {
        let mut next = Table {
            balancer: self.balancer.share(),
            keys: self.keys.clone(),
            services: self.services.clone(),
            index_of: self.index_of.clone(),
            observe: self.observe.clone(),
            clock: self.clock.clone(),
        };
        match change {
            Change::Insert(key, zone, service) => {
                if let Some(index) = next.index_of.get(&key) {
                    next.services[*index] = service;
                    return next;
                }
                let index = next.balancer.add(zone);
                assert_eq!(index, next.keys.len());
                next.keys.push(key.clone());
                next.services.push(service);
                next.index_of.insert(key, index);
            }
            Change::Remove(key) => {
                if let Some(index) = next.index_of.remove(&key) {
                    next.balancer.remove(index);
                    next.keys.swap_remove(index);
                    next.services.swap_remove(index);
                    if let Some(moved) = next.keys.get(index) {
                        next.index_of.insert(moved.clone(), index);
                    }
                }
            }
        }
        assert_eq!(next.keys.len(), next.balancer.len());
        assert_eq!(next.services.len(), next.balancer.len());
        next
    }
}

impl<K, S> Table<K, S> {
    fn emit(&self, ejection: Option<Ejection>) {
        if let Some(e) = ejection {
            self.observe.sink.emit(&Event::Ejected {
                name: &self.observe.name,
                endpoint: e.endpoint,
                reason: e.reason,
            });
        }
    }
}

struct Shared<K, S> {
    /// The newest table; locked only to read or replace it on a change.
    current: Mutex<Arc<Table<K, S>>>,
    /// Bumped (after `current` is replaced) on every change: a handle whose snapshot is of an
    /// older generation refreshes it.
    generation: AtomicU64,
    /// Seeds for the random streams of new handles.
    seeds: AtomicU64,
}

impl<K, S> Shared<K, S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<Table<K, S>>> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The balancing service; clones share the endpoint set.
pub struct Balance<K, S, C = ErrIsFailure> {
    shared: Arc<Shared<K, S>>,
    /// This handle's snapshot, of generation `generation`.
    table: Arc<Table<K, S>>,
    generation: u64,
    /// Each handle draws its own choices, so picks share no random state.
    rng: SplitMix64,
    /// Which of this handle's calls are timed.
    sampler: RttSampler,
    classify: C,
}

impl<K, S, C: Clone> Clone for Balance<K, S, C> {
    fn clone(&self) -> Self {
        let seed = self.shared.seeds.fetch_add(1, Ordering::Relaxed);
        Self {
            shared: self.shared.clone(),
            table: self.table.clone(),
            generation: self.generation,
            rng: SplitMix64::new(seed),
            sampler: self.sampler.fresh(),
            classify: self.classify.clone(),
        }
    }
}

impl<K, S, C> std::fmt::Debug for Balance<K, S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balance")
            .field("observe", &self.table.observe)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone, S: Clone> Balance<K, S> {
    /// A balancer with no endpoints; `seed` drives its random choices.
    pub fn new(config: BalanceConfig, observe: Observe, clock: Clock, seed: u64) -> Self {
        let sampler = RttSampler::new(config.rtt_sample_gap_ns);
        let table = Arc::new(Table {
            balancer: Balancer::new(config),
            keys: Vec::new(),
            services: Vec::new(),
            index_of: HashMap::new(),
            observe,
            clock,
        });
        // Clones' streams start elsewhere than this handle's.
        let mut seeds = SplitMix64::new(seed ^ 0x5EED_5EED_5EED_5EED);
        Self {
            shared: Arc::new(Shared {
                current: Mutex::new(table.clone()),
                generation: AtomicU64::new(0),
                seeds: AtomicU64::new(seeds.next_u64()),
            }),
            table,
            generation: 0,
            rng: SplitMix64::new(seed),
            sampler,
            classify: ErrIsFailure,
        }
    }
}

impl<K: Hash + Eq + Clone, S: Clone, C> Balance<K, S, C> {
    /// Uses `classify` to decide which results count against an endpoint.
    pub fn classify<C2>(self, classify: C2) -> Balance<K, S, C2> {
        Balance {
            shared: self.shared,
            table: self.table,
            generation: self.generation,
            rng: self.rng,
            sampler: self.sampler,
            classify,
        }
    }

    /// Applies a change to the endpoint set.
    pub fn update(&self, change: Change<K, S>) {
        let mut current = self.shared.lock();
        *current = Arc::new(current.with(change));
        // Under the lock, so generations and tables advance together.
        self.shared.generation.fetch_add(1, Ordering::Release);
    }

    /// Endpoints known.
    pub fn len(&self) -> usize {
        self.shared.lock().keys.len()
    }

    /// Whether no endpoint is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls picked for endpoint `key` that have not reported back yet (`None` if `key` is
    /// unknown).
    pub fn pending(&self, key: &K) -> Option<u32> {
        let table = self.shared.lock().clone();
        let index = *table.index_of.get(key)?;
        Some(table.balancer.pending(index))
    }

    /// Runs success-rate outlier detection over the interval since the last run.
    pub fn handle_interval(&self) {
        let table = self.shared.lock().clone();
        let now_ns = table.clock.now_ns();
        for e in table.balancer.handle_interval(now_ns) {
            table.emit(Some(e));
        }
    }
}

impl<K, S, C> Balance<K, S, C> {
    /// Brings this handle's snapshot up to date if the endpoint set changed (one atomic load
    /// when it did not).
    fn refresh(&mut self) {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != self.generation {
            let current = self.shared.lock();
            self.table = current.clone();
            self.generation = self.shared.generation.load(Ordering::Acquire);
        }
    }
}

impl<K, S, C, Req> Service<Req> for Balance<K, S, C>
where
    K: Hash + Eq + Clone + Send + 'static,
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BalanceFuture<K, S, C, Req>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is per endpoint and awaited in the call's future.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.refresh();
        let table = &self.table;
        let now_ns = table.clock.call_now_ns();
        let Some(index) = table.balancer.pick(now_ns, &mut self.rng) else {
            table.observe.reject(LayerKind::Balance, "no-endpoint");
            return BalanceFuture {
                state: BalanceState::Failed,
                service: None,
                request: None,
                guard: Pending {
                    called: None,
                    index: 0,
                    start_ns: now_ns,
                    is_timed: false,
                },
                classify: self.classify.clone(),
            };
        };
        BalanceFuture {
            state: BalanceState::Readying,
            service: Some(table.services[index].clone()),
            request: Some(request),
            guard: Pending {
                called: Some(table.clone()),
                index,
                start_ns: now_ns,
                is_timed: self.sampler.is_timed(now_ns),
            },
            classify: self.classify.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    #[project = BalanceStateProj]
    enum BalanceState<F> {
        Readying,
        Calling { #[pin] future: F },
        Failed,
    }
}

pin_project_lite::pin_project! {
    /// The balancer's response future.
    pub struct BalanceFuture<K, S: Service<Req>, C, Req> {
        #[pin]
        state: BalanceState<S::Future>,
        service: Option<S>,
        request: Option<Req>,
        guard: Pending<K, S>,
        classify: C,
    }
}

/// A picked call that has not reported back; if dropped unfinished (cancelled), it stops
/// counting as pending.
pub struct Pending<K, S> {
    /// The snapshot the call was picked from, until the call reports back.
    called: Option<Arc<Table<K, S>>>,
    /// The endpoint's index in that snapshot.
    index: usize,
    start_ns: u64,
    /// Whether a success reads the clock to report its RTT (failures always do).
    is_timed: bool,
}

impl<K, S> std::fmt::Debug for Pending<K, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl<K, S> Pending<K, S> {
    fn finish<R, E, C: Classify<R, E>>(&mut self, classify: &C, result: &Result<R, E>) {
        let Some(table) = self.called.take() else {
            return;
        };
        let is_success = !classify.is_failure(result);
        if is_success && !self.is_timed {
            table.balancer.handle_untimed_success(self.index);
            return;
        }
        let now_ns = table.clock.done_now_ns();
        let rtt_ns = now_ns.saturating_sub(self.start_ns);
        let ejection = table
            .balancer
            .handle_result(now_ns, self.index, rtt_ns, is_success);
        table.emit(ejection);
    }
}

impl<K, S> Drop for Pending<K, S> {
    fn drop(&mut self) {
        if let Some(table) = self.called.take() {
            table.balancer.handle_cancel(self.index);
        }
    }
}

impl<K, S, C, Req> Future for BalanceFuture<K, S, C, Req>
where
    K: Hash + Eq + Clone,
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                BalanceStateProj::Failed => {
                    return Poll::Ready(Err(Error::NoEndpoint.into()));
                }
                BalanceStateProj::Readying => {
                    let service = this.service.as_mut().expect("service until called");
                    if let Err(error) = std::task::ready!(service.poll_ready(cx)) {
                        let result: Result<S::Response, S::Error> = Err(error);
                        this.guard.finish(this.classify, &result);
                        return Poll::Ready(result.map_err(Into::into));
                    }
                    let request = this.request.take().expect("request until called");
                    let future = service.call(request);
                    this.state.set(BalanceState::Calling { future });
                }
                BalanceStateProj::Calling { future } => {
                    let result = std::task::ready!(future.poll(cx));
                    this.guard.finish(this.classify, &result);
                    return Poll::Ready(result.map_err(Into::into));
                }
            }
        }
    }
}
