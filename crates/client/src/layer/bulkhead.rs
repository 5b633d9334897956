//! The bulkhead as a tower layer over [`crate::policy::bulkhead::Bulkhead`]: a free slot is
//! taken without waiting or allocating; otherwise the caller joins the bounded queue and waits
//! for a released slot up to the queue timeout (this slow path boxes its future).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;
use tower::{Layer, Service};

use super::{BoxError, Error, Observe};
use crate::event::LayerKind;
use crate::policy::bulkhead::{Bulkhead, BulkheadConfig, BulkheadRejection};

#[derive(Debug)]
struct Shared {
    bulkhead: Bulkhead,
    released: Notify,
    observe: Observe,
}

/// A taken slot, given back when dropped (the call finished, failed or was cancelled).
pub struct Slot(Arc<Shared>);

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.bulkhead.release();
        self.0.released.notify_one();
    }
}

/// A place in the wait queue, left when dropped (the wait ended, or the caller abandoned it).
struct QueuePlace(Arc<Shared>);

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.0.bulkhead.dequeue();
    }
}

/// Limits concurrent calls, with a bounded wait queue.
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    shared: Arc<Shared>,
}

impl BulkheadLayer {
    /// A bulkhead with `config`.
    pub fn new(config: BulkheadConfig, observe: Observe) -> Self {
        let shared = Shared {
            bulkhead: Bulkhead::new(config),
            released: Notify::new(),
            observe,
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// The shared counters.
    pub fn bulkhead(&self) -> &Bulkhead {
        &self.shared.bulkhead
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The bulkhead's service; see [`BulkheadLayer`].
#[derive(Debug, Clone)]
pub struct BulkheadService<S> {
    inner: S,
    shared: Arc<Shared>,
}

type Boxed<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

impl<S, Req> Service<Req> for BulkheadService<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BulkheadFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let shared = &self.shared;
        if shared.bulkhead.try_acquire() {
            let slot = Slot(shared.clone());
            return BulkheadFuture {
                inner: BulkheadState::Direct {
                    future: self.inner.call(request),
                    slot: Some(slot),
                },
            };
        }
        if let Err(rejection) = shared.bulkhead.try_enqueue() {
            shared.observe.reject(LayerKind::Bulkhead, "full");
            return BulkheadFuture {
                inner: BulkheadState::Failed {
                    error: Some(Error::Bulkhead(rejection)),
                },
            };
        }
        // Take the service that was made ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = shared.clone();
        // Moved into the wait: an abandoned wait leaves the queue too.
        let place = QueuePlace(shared.clone());
        let timeout = Duration::from_nanos(shared.bulkhead.config().queue_timeout_ns);
        BulkheadFuture {
            inner: BulkheadState::Queued {
                future: Box::pin(async move {
                    let acquired = tokio::time::timeout(timeout, async {
                        loop {
                            let released = shared.released.notified();
                            if shared.bulkhead.try_acquire() {
                                return;
                            }
                            released.await;
                        }
                    })
                    .await;
                    drop(place);
                    if acquired.is_err() {
                        shared.observe.reject(LayerKind::Bulkhead, "queue-timeout");
                        return Err(Error::Bulkhead(BulkheadRejection::QueueTimeout).into());
                    }
                    let _slot = Slot(shared);
                    inner.call(request).await.map_err(Into::into)
                }),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The layer's response future.
    pub struct BulkheadFuture<F, R> {
        #[pin]
        inner: BulkheadState<F, R>,
    }
}

pin_project_lite::pin_project! {
    /// The bulkhead's response future.
    #[project = BulkheadProj]
    enum BulkheadState<F, R> {
        /// Got a slot at once.
        Direct { #[pin] future: F, slot: Option<Slot> },
        /// Waited in the queue.
        Queued { future: Boxed<R> },
        /// Refused.
        Failed { error: Option<Error> },
    }
}

impl<F, R, E> Future for BulkheadFuture<F, R>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            BulkheadProj::Direct { future, slot } => {
                let result = std::task::ready!(future.poll(cx));
                slot.take();
                Poll::Ready(result.map_err(Into::into))
            }
            BulkheadProj::Queued { future } => future.as_mut().poll(cx),
            BulkheadProj::Failed { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion").into()))
            }
        }
    }
}
