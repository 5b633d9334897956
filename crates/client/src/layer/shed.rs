//! Priority load shedding as a tower layer over
//! [`crate::policy::shed::PriorityShedder`]: requests say their [`Priority`] through
//! [`HasPriority`]; each priority may fill only its share of the limit, so critical requests
//! are shed last. The limit is fixed or follows a shared adaptive limiter.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{BoxError, Error, Observe};
use crate::event::LayerKind;
use crate::policy::limit::ConcurrencyLimiter;
use crate::policy::shed::{Priority, PriorityShedder, ShedConfig};

/// Requests that carry a priority.
pub trait HasPriority {
    /// The request's priority.
    fn priority(&self) -> Priority;
}

impl<T: HasPriority> HasPriority for super::deadline::WithDeadline<T> {
    fn priority(&self) -> Priority {
        self.request.priority()
    }
}

/// Where the shedder's limit comes from.
#[derive(Debug, Clone)]
pub enum ShedLimit {
    /// A fixed concurrency limit.
    Fixed(u32),
    /// The current limit of an adaptive limiter (shared with a [`super::limit::LimitLayer`]).
    Adaptive(Arc<ConcurrencyLimiter>),
}

impl ShedLimit {
    fn get(&self) -> u32 {
        match self {
            ShedLimit::Fixed(limit) => *limit,
            ShedLimit::Adaptive(limiter) => limiter.limit(),
        }
    }
}

#[derive(Debug)]
struct Shared {
    shedder: PriorityShedder,
    limit: ShedLimit,
    observe: Observe,
}

/// Sheds load by priority.
#[derive(Debug, Clone)]
pub struct ShedLayer {
    shared: Arc<Shared>,
}

impl ShedLayer {
    /// A shedder with `config` under `limit`.
    pub fn new(config: ShedConfig, limit: ShedLimit, observe: Observe) -> Self {
        let shared = Shared {
            shedder: PriorityShedder::new(config),
            limit,
            observe,
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// The shared shedder (its `inflight()` counts the calls running under it).
    pub fn shedder(&self) -> &PriorityShedder {
        &self.shared.shedder
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = ShedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ShedService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The shedder's service; see [`ShedLayer`].
#[derive(Debug, Clone)]
pub struct ShedService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Ends the call in the shedder when dropped.
pub struct Running(Arc<Shared>);

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Running")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.shedder.release();
    }
}

impl<S, Req> Service<Req> for ShedService<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: HasPriority,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ShedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let priority = request.priority();
        if self
            .shared
            .shedder
            .try_acquire(priority, self.shared.limit.get())
        {
            let running = Running(self.shared.clone());
            ShedFuture {
                inner: ShedState::Called {
                    future: self.inner.call(request),
                    running: Some(running),
                },
            }
        } else {
            self.shared.observe.reject(LayerKind::Shed, "priority");
            ShedFuture {
                inner: ShedState::Rejected {
                    error: Some(Error::Shed(priority)),
                },
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The layer's response future.
    pub struct ShedFuture<F> {
        #[pin]
        inner: ShedState<F>,
    }
}

pin_project_lite::pin_project! {
    /// The shedder's response future.
    #[project = ShedProj]
    enum ShedState<F> {
        /// Admitted.
        Called { #[pin] future: F, running: Option<Running> },
        /// Shed.
        Rejected { error: Option<Error> },
    }
}

impl<F, R, E> Future for ShedFuture<F>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            ShedProj::Called { future, running } => {
                let result = std::task::ready!(future.poll(cx));
                running.take();
                Poll::Ready(result.map_err(Into::into))
            }
            ShedProj::Rejected { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion").into()))
            }
        }
    }
}
