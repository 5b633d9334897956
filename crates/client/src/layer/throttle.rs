//! Client-side adaptive throttling (Google SRE) as a tower layer over
//! [`crate::policy::throttle::Throttle`]: requests are rejected locally with probability
//! `max(0, (requests − K·accepts) / (requests + 1))`, so a backend that refuses most work is
//! not also buried under the requests it refuses. A result counts as accepted unless the
//! classifier calls it a failure (overload rejections, timeouts), and is counted at the time
//! its request was (see [`Throttle::on_accepted`]). A call abandoned before it completes (a
//! deadline above it fired) was not accepted either: it stays a request with no accept, as a
//! timeout would.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use colony_base::SplitMix64;
use tower::{Layer, Service};

use super::{BoxError, Classify, Clock, ErrIsFailure, Error, Observe};
use crate::event::LayerKind;
use crate::policy::throttle::{ProbabilityCache, Throttle, ThrottleConfig};

#[derive(Debug)]
struct Shared {
    throttle: Throttle,
    observe: Observe,
    clock: Clock,
    seed: AtomicU64,
}

/// Throttles requests adaptively; see the module doc.
#[derive(Debug, Clone)]
pub struct ThrottleLayer<K = ErrIsFailure> {
    shared: Arc<Shared>,
    classify: K,
}

impl ThrottleLayer {
    /// A throttle with `config`; `seed` seeds the random draws.
    pub fn new(config: ThrottleConfig, observe: Observe, clock: Clock, seed: u64) -> Self {
        let shared = Shared {
            throttle: Throttle::new(config),
            observe,
            clock,
            seed: AtomicU64::new(seed),
        };
        Self {
            shared: Arc::new(shared),
            classify: ErrIsFailure,
        }
    }
}

impl<K> ThrottleLayer<K> {
    /// Uses `classify` to decide which results were not accepted by the backend.
    pub fn classify<K2>(self, classify: K2) -> ThrottleLayer<K2> {
        ThrottleLayer {
            shared: self.shared,
            classify,
        }
    }

    /// The shared throttle.
    pub fn throttle(&self) -> &Throttle {
        &self.shared.throttle
    }
}

impl<S, K: Clone> Layer<S> for ThrottleLayer<K> {
    type Service = ThrottleService<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        ThrottleService {
            inner,
            rng: self.shared.rng(),
            cache: ProbabilityCache::default(),
            shared: self.shared.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// The throttle's service; see [`ThrottleLayer`]. Each handle (each clone) draws from its
/// own random stream and keeps its own copy of the reject probability
/// ([`Throttle::admit_cached`]); the counts behind it are shared.
#[derive(Debug)]
pub struct ThrottleService<S, K = ErrIsFailure> {
    inner: S,
    rng: SplitMix64,
    cache: ProbabilityCache,
    shared: Arc<Shared>,
    classify: K,
}

impl<S: Clone, K: Clone> Clone for ThrottleService<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            rng: self.shared.rng(),
            cache: ProbabilityCache::default(),
            shared: self.shared.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl Shared {
    /// A random stream for a new handle.
    fn rng(&self) -> SplitMix64 {
        SplitMix64::new(
            self.seed
                .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed),
        )
    }
}

impl<S, K, Req> Service<Req> for ThrottleService<S, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ThrottleFuture<S::Future, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let shared = &self.shared;
        let now_ns = shared.clock.call_now_ns();
        let random = self.rng.next_u64();
        if shared
            .throttle
            .admit_cached(&mut self.cache, now_ns, random)
        {
            ThrottleFuture {
                state: ThrottleState::Called {
                    future: self.inner.call(request),
                    shared: shared.clone(),
                    classify: self.classify.clone(),
                    requested_ns: now_ns,
                },
            }
        } else {
            shared.observe.reject(LayerKind::Throttle, "throttled");
            ThrottleFuture {
                state: ThrottleState::Rejected,
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The throttle's response future.
    pub struct ThrottleFuture<F, K> {
        #[pin]
        state: ThrottleState<F, K>,
    }
}

pin_project_lite::pin_project! {
    #[project = ThrottleProj]
    enum ThrottleState<F, K> {
        Called { #[pin] future: F, shared: Arc<Shared>, classify: K, requested_ns: u64 },
        Rejected,
    }
}

impl<F, K, R, E> Future for ThrottleFuture<F, K>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
    K: Classify<R, E>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            ThrottleProj::Rejected => Poll::Ready(Err(Error::Throttled.into())),
            ThrottleProj::Called {
                future,
                shared,
                classify,
                requested_ns,
            } => {
                let result = std::task::ready!(future.poll(cx));
                if !classify.is_failure(&result) {
                    shared.throttle.on_accepted(*requested_ns);
                }
                Poll::Ready(result.map_err(Into::into))
            }
        }
    }
}
