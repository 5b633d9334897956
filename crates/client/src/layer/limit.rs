//! The adaptive concurrency limit as a tower layer over
//! [`crate::policy::limit::ConcurrencyLimiter`]. Calls over the limit fail at once with
//! [`Error::Limit`] (shed, not queued: queueing is what the limit exists to avoid). Every
//! completed call is a sample; results the classifier calls failures count as drops; a call
//! abandoned before it completes frees its place without a sample.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{BoxError, Classify, Clock, ErrIsFailure, Error, Observe};
use crate::event::{Event, LayerKind};
use crate::policy::limit::{ConcurrencyLimiter, Sample};

#[derive(Debug)]
struct Shared {
    limiter: ConcurrencyLimiter,
    observe: Observe,
    clock: Clock,
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
                limiter,
                observe,
                clock,
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

    /// The shared limiter (its `limit()` is the exported metric).
    pub fn limiter(&self) -> &ConcurrencyLimiter {
        &self.shared.limiter
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
        match self.shared.limiter.try_acquire() {
            Ok(inflight) => LimitFuture {
                inner: LimitState::Called {
                    future: self.inner.call(request),
                    slot: Slot {
                        shared: Some(self.shared.clone()),
                        inflight,
                        start_ns: self.shared.clock.call_now_ns(),
                    },
                    classify: self.classify.clone(),
                },
            },
            Err(reached) => {
                self.shared.observe.reject(LayerKind::Limit, "limit");
                LimitFuture {
                    inner: LimitState::Rejected {
                        error: Some(Error::Limit(reached)),
                    },
                }
            }
        }
    }
}

/// An admitted call's place under the limit. Its completion feeds a sample and frees the
/// place; dropped before that (the caller abandoned the call: a deadline above fired, a hedge
/// lost), it frees the place without a sample, as Netflix's limiter ignores cancelled calls.
/// Without this, every abandoned call would hold its place for good, and the limiter would
/// end up refusing everything.
struct Slot {
    /// `None` once the call has reported.
    shared: Option<Arc<Shared>>,
    inflight: u32,
    start_ns: u64,
}

impl Slot {
    /// Ends the call with its outcome.
    fn finish(&mut self, is_dropped: bool) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let now_ns = shared.clock.done_now_ns();
        let sample = Sample {
            now_ns,
            rtt_ns: now_ns.saturating_sub(self.start_ns),
            inflight: self.inflight,
            is_dropped,
        };
        if let Some(limit) = shared.limiter.release(sample) {
            shared.observe.sink.emit(&Event::LimitChanged {
                name: &shared.observe.name,
                limit,
            });
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.limiter.cancel();
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
