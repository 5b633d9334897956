//! Rate limiting as a tower layer over [`crate::policy::rate::Gcra`] (one lock-free CAS per
//! call). Over the rate, the call fails at once with [`Error::Rate`] carrying the wait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{BoxError, Clock, Error, Observe};
use crate::event::LayerKind;
use crate::policy::rate::{Gcra, Quota};

#[derive(Debug)]
struct Shared {
    gcra: Gcra,
    observe: Observe,
    clock: Clock,
}

/// Limits the request rate.
#[derive(Debug, Clone)]
pub struct RateLayer {
    shared: Arc<Shared>,
}

impl RateLayer {
    /// A limiter admitting `quota`.
    pub fn new(quota: Quota, observe: Observe, clock: Clock) -> Self {
        Self {
            shared: Arc::new(Shared {
                gcra: Gcra::new(quota),
                observe,
                clock,
            }),
        }
    }
}

impl<S> Layer<S> for RateLayer {
    type Service = RateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The rate limit's service; see [`RateLayer`].
#[derive(Debug, Clone)]
pub struct RateService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, Req> Service<Req> for RateService<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.shared.gcra.check(self.shared.clock.call_now_ns()) {
            Ok(()) => RateFuture {
                inner: RateState::Called {
                    future: self.inner.call(request),
                },
            },
            Err(limited) => {
                self.shared.observe.reject(LayerKind::Rate, "rate");
                RateFuture {
                    inner: RateState::Rejected {
                        error: Some(Error::Rate(limited)),
                    },
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The layer's response future.
    pub struct RateFuture<F> {
        #[pin]
        inner: RateState<F>,
    }
}

pin_project_lite::pin_project! {
    /// The rate limit's response future.
    #[project = RateProj]
    enum RateState<F> {
        /// Admitted.
        Called { #[pin] future: F },
        /// Refused.
        Rejected { error: Option<Error> },
    }
}

impl<F, R, E> Future for RateFuture<F>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            RateProj::Called { future } => future.poll(cx).map_err(Into::into),
            RateProj::Rejected { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion").into()))
            }
        }
    }
}

/// Rate limiting per key (per tenant, per caller, per route) over
/// [`crate::policy::rate::KeyedGcra`]: `key_of` picks each request's key, and each key gets
/// its own quota.
pub struct KeyedRateLayer<K, F> {
    shared: Arc<KeyedShared<K>>,
    key_of: F,
}

struct KeyedShared<K> {
    gcra: crate::policy::rate::KeyedGcra<K>,
    observe: Observe,
    clock: Clock,
}

impl<K, F: Clone> Clone for KeyedRateLayer<K, F> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            key_of: self.key_of.clone(),
        }
    }
}

impl<K, F> std::fmt::Debug for KeyedRateLayer<K, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedRateLayer")
            .field("observe", &self.shared.observe)
            .finish_non_exhaustive()
    }
}

impl<K: std::hash::Hash + Eq + Clone, F> KeyedRateLayer<K, F> {
    /// `quota` per key, for at most about `keys_max` active keys.
    pub fn new(quota: Quota, keys_max: usize, key_of: F, observe: Observe, clock: Clock) -> Self {
        let gcra = crate::policy::rate::KeyedGcra::new(quota, keys_max);
        Self {
            shared: Arc::new(KeyedShared {
                gcra,
                observe,
                clock,
            }),
            key_of,
        }
    }
}

impl<S, K, F: Clone> Layer<S> for KeyedRateLayer<K, F> {
    type Service = KeyedRateService<S, K, F>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedRateService {
            inner,
            shared: self.shared.clone(),
            key_of: self.key_of.clone(),
        }
    }
}

/// The keyed rate limit's service; see [`KeyedRateLayer`].
pub struct KeyedRateService<S, K, F> {
    inner: S,
    shared: Arc<KeyedShared<K>>,
    key_of: F,
}

impl<S: Clone, K, F: Clone> Clone for KeyedRateService<S, K, F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            key_of: self.key_of.clone(),
        }
    }
}

impl<S, K, F> std::fmt::Debug for KeyedRateService<S, K, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedRateService").finish_non_exhaustive()
    }
}

impl<S, K, F, Req> Service<Req> for KeyedRateService<S, K, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: std::hash::Hash + Eq + Clone,
    F: Fn(&Req) -> K,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let key = (self.key_of)(&request);
        let shared = &self.shared;
        match shared.gcra.check(&key, shared.clock.now_ns()) {
            Ok(()) => RateFuture {
                inner: RateState::Called {
                    future: self.inner.call(request),
                },
            },
            Err(rejection) => {
                let (reason, error) = match rejection {
                    crate::policy::rate::KeyedRejection::Limited(limited) => {
                        ("rate", Error::Rate(limited))
                    }
                    crate::policy::rate::KeyedRejection::KeysFull => {
                        ("keys-full", Error::RateKeysFull)
                    }
                };
                shared.observe.reject(LayerKind::Rate, reason);
                RateFuture {
                    inner: RateState::Rejected { error: Some(error) },
                }
            }
        }
    }
}
