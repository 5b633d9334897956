//! Coalesces a server's ReadIndex requests: one request to the leader is in flight at a
//! time, and the reads that arrive while it is out share the next one.
//!
//! A read is linearizable if the index it waits for was asked of the leader after the read
//! arrived. A request that was already on its way when a read arrived cannot serve it; the
//! next request, sent after, can serve every read that arrived in between. So under load a
//! server asks once per leader round trip instead of once per read, which is what makes
//! follower reads cheap. The leader batches the heartbeat rounds behind those requests the
//! same way (`colony_raft::Raft::read_index`).
//!
//! There is no background task: the caller that finds nothing in flight drives a request,
//! answers the batch it took, and hands the driving to the first read that queued meanwhile.
//! If a driving caller is dropped mid-request (its client went away), the hand-off happens
//! in `Drop` and the batch it held retries.

use std::future::Future;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// What a queued read is told.
enum Turn<T> {
    /// The answer of the request that covered it.
    Done(T),
    /// Nothing is in flight any more: it drives the next request.
    Drive,
}

struct State<T> {
    in_flight: bool,
    queued: Vec<oneshot::Sender<Turn<T>>>,
}

/// One in-flight request at a time, shared by every caller that arrived before it was sent.
pub(crate) struct Coalescer<T> {
    state: Mutex<State<T>>,
}

impl<T: Clone> Coalescer<T> {
    /// Nothing in flight.
    pub(crate) fn new() -> Self {
        Coalescer {
            state: Mutex::new(State {
                in_flight: false,
                queued: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The answer of a `request()` made after this call began, shared with other callers.
    pub(crate) async fn run<F, Fut>(&self, request: F) -> T
    where
        F: Fn() -> Fut,
        Fut: Future<Output = T>,
    {
        loop {
            let waiting = {
                let mut state = self.lock();
                if state.in_flight {
                    let (tx, rx) = oneshot::channel();
                    state.queued.push(tx);
                    Some(rx)
                } else {
                    state.in_flight = true;
                    None
                }
            };
            if let Some(rx) = waiting {
                match rx.await {
                    Ok(Turn::Done(answer)) => return answer,
                    Ok(Turn::Drive) => {}
                    // The driver holding this read was dropped: ask again.
                    Err(_) => continue,
                }
            }
            // Driving: the batch is every read queued before the request goes out.
            let batch = std::mem::take(&mut self.lock().queued);
            let mut hand_off = HandOff {
                coalescer: self,
                batch,
            };
            let answer = request().await;
            for tx in std::mem::take(&mut hand_off.batch) {
                let _ = tx.send(Turn::Done(answer.clone()));
            }
            return answer;
        }
    }

    /// Passes the driving to the first queued read still waiting, or marks nothing in
    /// flight.
    fn hand_off(&self) {
        let mut state = self.lock();
        while !state.queued.is_empty() {
            let next = state.queued.remove(0);
            if next.send(Turn::Drive).is_ok() {
                return;
            }
        }
        state.in_flight = false;
    }
}

/// Hands the driving on when the driver finishes or is dropped; a batch still held then
/// (the driver was dropped mid-request) is released to retry.
struct HandOff<'a, T: Clone> {
    coalescer: &'a Coalescer<T>,
    batch: Vec<oneshot::Sender<Turn<T>>>,
}

impl<T: Clone> Drop for HandOff<'_, T> {
    fn drop(&mut self) {
        self.batch.clear();
        self.coalescer.hand_off();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// A request that counts itself, takes a while, and answers its own number.
    async fn numbered(calls: &AtomicU64) -> u64 {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        n
    }

    #[tokio::test]
    async fn a_burst_of_reads_costs_two_requests_and_each_read_gets_a_later_one() {
        let coalescer = Arc::new(Coalescer::new());
        let calls = Arc::new(AtomicU64::new(0));
        let first = {
            let (coalescer, calls) = (coalescer.clone(), calls.clone());
            tokio::spawn(async move { coalescer.run(|| numbered(&calls)).await })
        };
        tokio::task::yield_now().await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the first read drives at once"
        );
        // Fifty reads arrive while request 1 is out: they all wait for request 2.
        let later: Vec<_> = (0..50)
            .map(|_| {
                let (coalescer, calls) = (coalescer.clone(), calls.clone());
                tokio::spawn(async move { coalescer.run(|| numbered(&calls)).await })
            })
            .collect();
        assert_eq!(first.await.expect("first"), 1);
        for read in later {
            assert_eq!(
                read.await.expect("read"),
                2,
                "served by a request sent after it"
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Idle again: the next read drives its own request.
        assert_eq!(coalescer.run(|| numbered(&calls)).await, 3);
    }

    #[tokio::test]
    async fn a_dropped_driver_hands_over_and_its_batch_asks_again() {
        let coalescer = Arc::new(Coalescer::new());
        let calls = Arc::new(AtomicU64::new(0));
        let driver = {
            let (coalescer, calls) = (coalescer.clone(), calls.clone());
            tokio::spawn(async move { coalescer.run(|| numbered(&calls)).await })
        };
        tokio::task::yield_now().await;
        let queued: Vec<_> = (0..3)
            .map(|_| {
                let (coalescer, calls) = (coalescer.clone(), calls.clone());
                tokio::spawn(async move { coalescer.run(|| numbered(&calls)).await })
            })
            .collect();
        tokio::task::yield_now().await;
        // The driver's client goes away mid-request.
        driver.abort();
        for read in queued {
            let answer = read.await.expect("read");
            assert!(
                answer >= 2,
                "answered by a request after the abandoned one: {answer}"
            );
        }
        assert_eq!(
            coalescer.run(|| numbered(&calls)).await,
            calls.load(Ordering::SeqCst)
        );
    }
}
