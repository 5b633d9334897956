//! Fallback: when a layer below refuses a call (an open breaker, a full bulkhead, a shed…),
//! answer with `fallback(&error)` instead of failing, if it returns `Some`. Errors of the
//! inner service itself are passed through: a fallback replaces refusals, not answers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{BoxError, Error};

/// The fallback function: an answer for a refusal, or `None` to pass the refusal on.
type FallbackFn<R> = Arc<dyn Fn(&Error) -> Option<R> + Send + Sync>;

/// Answers refused calls with a fallback.
pub struct FallbackLayer<R> {
    fallback: FallbackFn<R>,
}

impl<R> Clone for FallbackLayer<R> {
    fn clone(&self) -> Self {
        Self {
            fallback: self.fallback.clone(),
        }
    }
}

impl<R> std::fmt::Debug for FallbackLayer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackLayer").finish_non_exhaustive()
    }
}

impl<R> FallbackLayer<R> {
    /// A layer calling `fallback` on refusals.
    pub fn new(fallback: impl Fn(&Error) -> Option<R> + Send + Sync + 'static) -> Self {
        Self {
            fallback: Arc::new(fallback),
        }
    }
}

impl<S, R> Layer<S> for FallbackLayer<R> {
    type Service = FallbackService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        FallbackService {
            inner,
            fallback: self.fallback.clone(),
        }
    }
}

/// The fallback service; see [`FallbackLayer`].
pub struct FallbackService<S, R> {
    inner: S,
    fallback: FallbackFn<R>,
}

impl<S: Clone, R> Clone for FallbackService<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            fallback: self.fallback.clone(),
        }
    }
}

impl<S, R, Req> Service<Req> for FallbackService<S, R>
where
    S: Service<Req, Response = R, Error = BoxError>,
{
    type Response = R;
    type Error = BoxError;
    type Future = FallbackFuture<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        FallbackFuture {
            future: self.inner.call(request),
            fallback: self.fallback.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The fallback's response future.
    pub struct FallbackFuture<F, R> {
        #[pin]
        future: F,
        fallback: FallbackFn<R>,
    }
}

impl<F, R> Future for FallbackFuture<F, R>
where
    F: Future<Output = Result<R, BoxError>>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match std::task::ready!(this.future.poll(cx)) {
            Ok(response) => Poll::Ready(Ok(response)),
            Err(error) => {
                let answer = Error::from_box(&error).and_then(|e| (this.fallback)(e));
                Poll::Ready(answer.ok_or(error))
            }
        }
    }
}
