//! Blocking queries: answer at once if the result's index moved past the client's, otherwise
//! park on the watch channels of what the result depends on until it does or the wait ends.
//! A parked query is one future awaiting a channel: no thread, no polling.

use crate::query::Blocking;
use colony_runtime::{Agent, Topic};
use colony_store::StateMachine;
use futures_util::future::select_all;
use std::time::Duration;

/// Runs `compute` under the read lock, re-running it after each relevant change, until its
/// index exceeds `blocking.index` or the wait (plus up to 1/16 jitter, as Consul adds) ends.
/// Returns the last result and its index.
pub async fn run<T>(
    agent: &Agent,
    blocking: Blocking,
    topics: &[Topic],
    compute: impl Fn(&StateMachine) -> (T, u64),
) -> (T, u64) {
    assert!(!topics.is_empty(), "a blocking query must watch something");
    if blocking.index == 0 {
        return agent.read(&compute);
    }
    let jitter_ms = agent.random_u64() % (blocking.wait_ms / 16 + 1);
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(blocking.wait_ms + jitter_ms);
    let _parked = ParkedGauge::new(agent);
    loop {
        let mut receivers: Vec<_> = topics.iter().map(|t| agent.subscribe(t)).collect();
        let (result, index) = agent.read(&compute);
        // An index that went backwards (the store was reset) also answers at once, as Consul's
        // clients expect to start over.
        if index != blocking.index || tokio::time::Instant::now() >= deadline {
            return (result, index);
        }
        let changed = select_all(receivers.iter_mut().map(|r| Box::pin(r.changed())));
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return agent.read(&compute);
        }
    }
}

struct ParkedGauge<'a>(&'a Agent);

impl<'a> ParkedGauge<'a> {
    fn new(agent: &'a Agent) -> Self {
        agent.metrics().parked_queries.inc();
        ParkedGauge(agent)
    }
}

impl Drop for ParkedGauge<'_> {
    fn drop(&mut self) {
        self.0.metrics().parked_queries.dec();
    }
}
