//! Load-aware balancing as a tower service over [`crate::policy::balance::Balancer`]:
//! power of two choices over peak-EWMA latency, outlier ejection and zone affinity. Endpoints
//! are added and removed with [`Change`]s (fed by hand or by the discovery stream of
//! `crate::discover`). Each call clones the chosen endpoint's service (an HTTP client bound to
//! an address is cheap to clone), waits for it to be ready and calls it.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use colony_base::SplitMix64;
use tower::Service;

use super::{BoxError, Classify, Clock, ErrIsFailure, Error, Observe};
use crate::event::{Event, LayerKind};
use crate::policy::balance::{BalanceConfig, Balancer, Ejection};

/// A change to the endpoint set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<K, S> {
    /// Add (or replace) the endpoint `K` in an optional zone.
    Insert(K, Option<String>, S),
    /// Remove the endpoint `K`.
    Remove(K),
}

struct Inner<K, S> {
    balancer: Balancer,
    keys: Vec<K>,
    services: Vec<S>,
    index_of: HashMap<K, usize>,
    /// A unique id per inserted endpoint, parallel to `keys`: a call in flight remembers
    /// (index, id), so finishing it needs neither the key nor a hash lookup.
    ids: Vec<u64>,
    next_id: u64,
    rng: SplitMix64,
}

impl<K, S> Inner<K, S> {
    /// The current index of the endpoint a call was sent to, if it is still there.
    fn index_of_call(&self, index: usize, id: u64) -> Option<usize> {
        if self.ids.get(index) == Some(&id) {
            return Some(index);
        }
        // It moved (another endpoint was removed) or is gone: rare, so a scan is fine.
        self.ids.iter().position(|other| *other == id)
    }
}

struct Shared<K, S> {
    inner: Mutex<Inner<K, S>>,
    observe: Observe,
    clock: Clock,
}

impl<K, S> Shared<K, S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, S>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

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

/// The balancing service; clones share the endpoint set.
pub struct Balance<K, S, C = ErrIsFailure> {
    shared: Arc<Shared<K, S>>,
    classify: C,
}

impl<K, S, C: Clone> Clone for Balance<K, S, C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<K, S, C> std::fmt::Debug for Balance<K, S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balance")
            .field("observe", &self.shared.observe)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone, S: Clone> Balance<K, S> {
    /// A balancer with no endpoints; `seed` drives its random choices.
    pub fn new(config: BalanceConfig, observe: Observe, clock: Clock, seed: u64) -> Self {
        let inner = Inner {
            balancer: Balancer::new(config),
            keys: Vec::new(),
            services: Vec::new(),
            index_of: HashMap::new(),
            ids: Vec::new(),
            next_id: 0,
            rng: SplitMix64::new(seed),
        };
        Self {
            shared: Arc::new(Shared {
                inner: Mutex::new(inner),
                observe,
                clock,
            }),
            classify: ErrIsFailure,
        }
    }
}

impl<K: Hash + Eq + Clone, S: Clone, C> Balance<K, S, C> {
    /// Uses `classify` to decide which results count against an endpoint.
    pub fn classify<C2>(self, classify: C2) -> Balance<K, S, C2> {
        Balance {
            shared: self.shared,
            classify,
        }
    }

    /// Applies a change to the endpoint set.
    pub fn update(&self, change: Change<K, S>) {
        let mut inner = self.shared.lock();
        let inner = &mut *inner;
        match change {
            Change::Insert(key, zone, service) => {
                if let Some(index) = inner.index_of.get(&key) {
                    inner.services[*index] = service;
                    return;
                }
                let index = inner.balancer.add(zone);
                assert_eq!(index, inner.keys.len());
                inner.keys.push(key.clone());
                inner.services.push(service);
                inner.next_id += 1;
                inner.ids.push(inner.next_id);
                inner.index_of.insert(key, index);
            }
            Change::Remove(key) => {
                let Some(index) = inner.index_of.remove(&key) else {
                    return;
                };
                inner.balancer.remove(index);
                inner.keys.swap_remove(index);
                inner.ids.swap_remove(index);
                inner.services.swap_remove(index);
                if let Some(moved) = inner.keys.get(index) {
                    inner.index_of.insert(moved.clone(), index);
                }
            }
        }
        assert_eq!(inner.keys.len(), inner.balancer.len());
    }

    /// Endpoints known.
    pub fn len(&self) -> usize {
        self.shared.lock().keys.len()
    }

    /// Whether no endpoint is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs success-rate outlier detection over the interval since the last run.
    pub fn handle_interval(&self) {
        let now_ns = self.shared.clock.now_ns();
        let ejections = self.shared.lock().balancer.handle_interval(now_ns);
        for e in ejections {
            self.shared.emit(Some(e));
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
        let now_ns = self.shared.clock.now_ns();
        let picked = {
            let mut inner = self.shared.lock();
            let inner = &mut *inner;
            inner
                .balancer
                .pick(now_ns, &mut inner.rng)
                .map(|index| ((index, inner.ids[index]), inner.services[index].clone()))
        };
        let Some((slot, service)) = picked else {
            self.shared
                .observe
                .reject(LayerKind::Balance, "no-endpoint");
            return BalanceFuture {
                state: BalanceState::Failed,
                service: None,
                request: None,
                guard: Pending {
                    slot: None,
                    start_ns: now_ns,
                    shared: self.shared.clone(),
                },
                classify: self.classify.clone(),
            };
        };
        BalanceFuture {
            state: BalanceState::Readying,
            service: Some(service),
            request: Some(request),
            guard: Pending {
                slot: Some(slot),
                start_ns: now_ns,
                shared: self.shared.clone(),
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
    /// (index, id) of the endpoint, until the call reports back.
    slot: Option<(usize, u64)>,
    start_ns: u64,
    shared: Arc<Shared<K, S>>,
}

impl<K, S> std::fmt::Debug for Pending<K, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl<K, S> Pending<K, S> {
    fn finish<R, E, C: Classify<R, E>>(&mut self, classify: &C, result: &Result<R, E>) {
        let Some((index, id)) = self.slot.take() else {
            return;
        };
        let shared = &self.shared;
        let now_ns = shared.clock.now_ns();
        let is_success = !classify.is_failure(result);
        let rtt_ns = now_ns.saturating_sub(self.start_ns);
        let ejection = {
            let mut inner = shared.lock();
            // The endpoint may have been removed (or replaced) while the call ran.
            match inner.index_of_call(index, id) {
                Some(index) if inner.balancer.pending(index) > 0 => inner
                    .balancer
                    .handle_result(now_ns, index, rtt_ns, is_success),
                _ => None,
            }
        };
        shared.emit(ejection);
    }
}

impl<K, S> Drop for Pending<K, S> {
    fn drop(&mut self) {
        let Some((index, id)) = self.slot.take() else {
            return;
        };
        let mut inner = self.shared.lock();
        if let Some(index) = inner.index_of_call(index, id)
            && inner.balancer.pending(index) > 0
        {
            inner.balancer.handle_cancel(index);
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
