//! Hedged requests as a tower layer: when a call has not answered after the tracked latency
//! quantile (online, [`crate::policy::quantile::LatencyTracker`]), send one backup copy if the
//! shared budget allows, answer with whichever finishes first and drop (cancel) the other.
//! Only requests the [`RetryPolicy`] can clone are hedged. The timer is set up only for a
//! call that does not answer at its first poll, and a handle records the latency of at most
//! one call per `HedgeConfig::latency_sample_gap_ns` (1 µs; see [`RttSampler`]), so a call
//! answered at once costs one clock read, not two.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::retry::RetryPolicy;
use super::{BoxError, Clock, Observe};
use crate::event::Event;
use crate::policy::budget::RetryBudget;
use crate::policy::quantile::LatencyTracker;
use crate::policy::sample::RttSampler;

/// Hedging parameters.
#[derive(Debug, Clone, Copy)]
pub struct HedgeConfig {
    /// Hedge after this quantile of recent latencies (0.95 hedges the slowest 5%).
    pub quantile: f64,
    /// No hedging until the window holds this many samples.
    pub samples_min: u64,
    /// Never hedge sooner than this.
    pub delay_min_ns: u64,
    /// Latency window.
    pub window_ns: u64,
    /// Whether this layer deposits each logical request in the budget (off when a retry
    /// layer sharing the budget already does).
    pub deposits: bool,
    /// A handle records the latency of at most one call per this interval (see
    /// [`RttSampler`]); `0` records every call's.
    pub latency_sample_gap_ns: u64,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            quantile: 0.95,
            samples_min: 100,
            delay_min_ns: 1_000_000,
            window_ns: 10_000_000_000,
            deposits: true,
            latency_sample_gap_ns: 1_000,
        }
    }
}

#[derive(Debug)]
struct Shared {
    config: HedgeConfig,
    tracker: LatencyTracker,
    budget: Arc<RetryBudget>,
    observe: Observe,
    clock: Clock,
}

/// Hedges slow calls; see the module doc.
#[derive(Debug, Clone)]
pub struct HedgeLayer<P> {
    shared: Arc<Shared>,
    policy: P,
}

impl<P> HedgeLayer<P> {
    /// A hedge layer drawing on `budget`.
    pub fn new(
        config: HedgeConfig,
        budget: Arc<RetryBudget>,
        policy: P,
        observe: Observe,
        clock: Clock,
    ) -> Self {
        // Recompute the quantile at most every 10 ms.
        let tracker = LatencyTracker::new(config.window_ns, 10_000_000);
        Self {
            shared: Arc::new(Shared {
                config,
                tracker,
                budget,
                observe,
                clock,
            }),
            policy,
        }
    }
}

impl<S, P: Clone> Layer<S> for HedgeLayer<P> {
    type Service = HedgeService<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        HedgeService {
            inner,
            sampler: RttSampler::new(self.shared.config.latency_sample_gap_ns),
            shared: self.shared.clone(),
            policy: self.policy.clone(),
        }
    }
}

/// The hedge service; see [`HedgeLayer`].
#[derive(Debug)]
pub struct HedgeService<S, P> {
    inner: S,
    /// Which of this handle's calls record their latency.
    sampler: RttSampler,
    shared: Arc<Shared>,
    policy: P,
}

impl<S: Clone, P: Clone> Clone for HedgeService<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            sampler: self.sampler.fresh(),
            shared: self.shared.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S, P, Req> Service<Req> for HedgeService<S, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: RetryPolicy<Req, S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = HedgeFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let shared = &self.shared;
        let start_ns = shared.clock.call_now_ns();
        if shared.config.deposits {
            shared.budget.deposit(start_ns);
        }
        let spare = self.policy.clone_request(&request);
        let delay_ns = shared
            .tracker
            .quantile_ns_cached(start_ns, shared.config.quantile, shared.config.samples_min)
            .map(|q| q.max(shared.config.delay_min_ns));
        let clone = self.inner.clone();
        let mut service = std::mem::replace(&mut self.inner, clone);
        let first = service.call(request);
        let hedge_at_ns = match (delay_ns, &spare) {
            (Some(delay), Some(_)) => Some(start_ns.saturating_add(delay)),
            _ => None,
        };
        HedgeFuture {
            first,
            second: Second::Idle,
            sleep: None,
            hedge_at_ns,
            service,
            spare,
            start_ns,
            is_timed: self.sampler.is_timed(start_ns),
            shared: shared.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    #[project = SecondProj]
    enum Second<F> {
        Idle,
        Readying,
        Running { #[pin] future: F },
    }
}

pin_project_lite::pin_project! {
    /// The hedge's response future.
    pub struct HedgeFuture<S: Service<Req>, Req> {
        #[pin]
        first: S::Future,
        #[pin]
        second: Second<S::Future>,
        // Set up when the first call does not answer at once (most answer later; a call
        // answered at its first poll needs no timer).
        #[pin]
        sleep: Option<tokio::time::Sleep>,
        // When to send the backup; `None` once sent, or if the call is not hedged.
        hedge_at_ns: Option<u64>,
        service: S,
        spare: Option<Req>,
        start_ns: u64,
        // Whether the first call's latency is recorded (see `HedgeConfig::latency_sample_gap_ns`).
        is_timed: bool,
        shared: Arc<Shared>,
    }
}

impl<S, Req> Future for HedgeFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(result) = this.first.poll(cx) {
            if *this.is_timed {
                let now_ns = this.shared.clock.done_now_ns();
                this.shared
                    .tracker
                    .record(now_ns, now_ns.saturating_sub(*this.start_ns));
            }
            return Poll::Ready(result.map_err(Into::into));
        }
        if let Some(hedge_at_ns) = *this.hedge_at_ns {
            if this.sleep.is_none() {
                let at = this.shared.clock.instant_at(hedge_at_ns);
                this.sleep.set(Some(tokio::time::sleep_until(at)));
            }
            let sleep = this.sleep.as_mut().as_pin_mut().expect("set up above");
            if sleep.poll(cx).is_ready() {
                *this.hedge_at_ns = None;
                let now_ns = this.shared.clock.now_ns();
                if this.shared.budget.try_withdraw(now_ns) {
                    this.shared.observe.sink.emit(&Event::Hedge {
                        name: &this.shared.observe.name,
                        delay_ns: now_ns.saturating_sub(*this.start_ns),
                    });
                    this.second.set(Second::Readying);
                } else {
                    this.shared
                        .observe
                        .reject(crate::event::LayerKind::Hedge, "budget");
                }
            }
        }
        loop {
            match this.second.as_mut().project() {
                SecondProj::Idle => return Poll::Pending,
                SecondProj::Readying => match this.service.poll_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(_)) => {
                        // The backup could not be sent; the first call still runs.
                        this.second.set(Second::Idle);
                    }
                    Poll::Ready(Ok(())) => {
                        let request = this.spare.take().expect("armed only with a spare");
                        let future = this.service.call(request);
                        this.second.set(Second::Running { future });
                    }
                },
                SecondProj::Running { future } => {
                    match std::task::ready!(future.poll(cx)) {
                        // The first call is dropped (cancelled) with this future.
                        Ok(response) => return Poll::Ready(Ok(response)),
                        // A failed backup does not decide the call: wait for the first.
                        Err(_) => {
                            this.second.set(Second::Idle);
                            return Poll::Pending;
                        }
                    }
                }
            }
        }
    }
}
