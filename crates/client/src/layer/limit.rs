//! The adaptive concurrency limit as a tower layer over
//! [`crate::policy::limit::ConcurrencyLimiter`]. Calls over the limit fail at once with
//! [`Error::Limit`] (shed, not queued: queueing is what the limit exists to avoid). Every
//! completed call is a sample; results the classifier calls failures count as drops; a call
//! abandoned before it completes frees its place without a sample.
//!
//! The layer counts its calls in flight itself, by reference counting: every admitted call's
//! future holds a reference to the layer's core, and the layer's shared state holds the only
//! other one, so the calls in flight are the core's reference count less one. A call takes
//! its reference and then reads the count, which includes it and every call admitted and
//! not finished before; over the limit it lets go and is refused. No set of calls alive at
//! once can exceed the limit (the last one admitted saw them all), and the future needed
//! the reference anyway: admission and release are one atomic operation each instead of
//! two.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{BoxError, Classify, Clock, ErrIsFailure, Error, Observe};
use crate::event::{Event, LayerKind};
use crate::policy::limit::{ConcurrencyLimiter, LimitReached, Sample};

/// What a call in flight holds a reference to.
#[derive(Debug)]
struct Core {
    limiter: ConcurrencyLimiter,
    observe: Observe,
    clock: Clock,
}

/// Shared by the layer and its services.
#[derive(Debug)]
struct Shared {
    /// The one reference to the core that is not a call in flight.
    core: Arc<Core>,
}

impl Shared {
    /// Calls in flight.
    fn inflight(&self) -> usize {
        Arc::strong_count(&self.core) - 1
    }
}

/// Limits concurrency adaptively.
#[derive(Debug, Clone)]
pub struct LimitLayer<K = ErrIsFailure> {
    shared: Arc<Shared>,
    classify: K,
}

impl LimitLayer {
    /// A layer over `limiter`; `Err` results count as drops.
    pub fn new(limiter: ConcurrencyLimiter, observe: Observe, clock: Clock) -> Self {
        Self {
            shared: Arc::new(Shared {
                core: Arc::new(Core {
                    limiter,
                    observe,
                    clock,
                }),
            }),
            classify: ErrIsFailure,
        }
    }
}

impl<K> LimitLayer<K> {
    /// Uses `classify` to decide which results are drops.
    pub fn classify<K2>(self, classify: K2) -> LimitLayer<K2> {
        LimitLayer {
            shared: self.shared,
            classify,
        }
    }

    /// The shared limiter (its `limit()` is the exported metric). The layer counts its
    /// calls in flight itself ([`LimitLayer::inflight`]), not in the limiter.
    pub fn limiter(&self) -> &ConcurrencyLimiter {
        &self.shared.core.limiter
    }

    /// Calls admitted by this layer's services and not finished.
    pub fn inflight(&self) -> u32 {
        u32::try_from(self.shared.inflight()).unwrap_or(u32::MAX)
    }
}

impl<S, K: Clone> Layer<S> for LimitLayer<K> {
    type Service = LimitService<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitService {
            inner,
            shared: self.shared.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// The limit's service; see [`LimitLayer`].
#[derive(Debug, Clone)]
pub struct LimitService<S, K = ErrIsFailure> {
    inner: S,
    shared: Arc<Shared>,
    classify: K,
}

impl<S, K, Req> Service<Req> for LimitService<S, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = LimitFuture<S::Future, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // Counted first, then compared (see the module doc).
        let core = self.shared.core.clone();
        let inflight = self.shared.inflight();
        let limit = core.limiter.limit();
        if inflight > limit as usize {
            drop(core);
            self.shared.core.observe.reject(LayerKind::Limit, "limit");
            return LimitFuture {
                inner: LimitState::Rejected {
                    error: Some(Error::Limit(LimitReached { limit })),
                },
            };
        }
        let start_ns = core.clock.call_now_ns();
        LimitFuture {
            inner: LimitState::Called {
                future: self.inner.call(request),
                slot: Slot {
                    core: Some(core),
                    // At most the limit, a `u32`.
                    inflight: inflight as u32,
                    start_ns,
                },
                classify: self.classify.clone(),
            },
        }
    }
}

/// An admitted call's place under the limit. Its completion feeds a sample and frees the
/// place; dropped before that (the caller abandoned the call: a deadline above fired, a hedge
/// lost), it frees the place without a sample, as Netflix's limiter ignores cancelled calls.
/// Without this, every abandoned call would hold its place for good, and the limiter would
/// end up refusing everything.
struct Slot {
    /// The call's place among those in flight, given back when dropped; `None` once the
    /// call has reported.
    core: Option<Arc<Core>>,
    inflight: u32,
    start_ns: u64,
}

impl Slot {
    /// Ends the call with its outcome.
    fn finish(&mut self, is_dropped: bool) {
        let Some(core) = self.core.take() else {
            return;
        };
        let now_ns = core.clock.done_now_ns();
        let sample = Sample {
            now_ns,
            rtt_ns: now_ns.saturating_sub(self.start_ns),
            inflight: self.inflight,
            is_dropped,
        };
        if let Some(limit) = core.limiter.handle_sample(sample) {
            core.observe.sink.emit(&Event::LimitChanged {
                name: &core.observe.name,
                limit,
            });
        }
    }
}

pin_project_lite::pin_project! {
    /// The layer's response future.
    pub struct LimitFuture<F, K> {
        #[pin]
        inner: LimitState<F, K>,
    }
}

pin_project_lite::pin_project! {
    /// The limit's response future.
    #[project = LimitProj]
    enum LimitState<F, K> {
        /// Admitted.
        Called { #[pin] future: F, slot: Slot, classify: K },
        /// Refused.
        Rejected { error: Option<Error> },
    }
}

impl<F, K, R, E> Future for LimitFuture<F, K>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
    K: Classify<R, E>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            LimitProj::Rejected { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion").into()))
            }
            LimitProj::Called {
                future,
                slot,
                classify,
            } => {
                let result = std::task::ready!(future.poll(cx));
                slot.finish(classify.is_failure(&result));
                Poll::Ready(result.map_err(Into::into))
            }
        }
    }
}
