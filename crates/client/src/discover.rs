//! Discovery from colony (or Consul): blocking queries on
//! `/v1/health/service/:name?passing` turned into endpoint [`Change`]s for the balancer.
//!
//! Each query waits (up to `wait`) until the service's health index moves past the last one
//! seen (`X-Consul-Index`), then the answer — the instances whose checks all pass — is
//! compared with the previous one: new instances are inserted, vanished ones removed. An index
//! that goes backwards (a restored snapshot, a new leader) resets to 0, as Consul's clients do.
//!
//! Driving it:
//! 1. Make a [`HealthWatch`] for the agent's address and the service name.
//! 2. Loop on [`HealthWatch::next_changes`]; apply each change to a
//!    [`Balance`](crate::layer::balance::Balance) with a service built for the address
//!    ([`HealthWatch::feed`] does exactly that).
//! 3. On an error, back off (the agent may be restarting) and call again.
//!
//! Or let a stream do the loop: [`HealthWatch::into_stream`] yields [`InstanceChange`]s for
//! ever, retrying failed queries after a pause, and [`HealthWatch::into_discover`] yields
//! `tower::discover::Change`s with a service built per instance — a `tower::discover::Discover`
//! that tower's balancers (and [`InstanceStream`]'s users) consume directly.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::Stream;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::layer::balance::{Balance, Change};

/// Instances kept at most (a bound on the answer we accept).
pub const INSTANCES_MAX: usize = 10_000;

/// One passing instance of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `address:port`, the endpoint's key.
    pub id: String,
    /// The zone, from the service's `zone` meta key, else the node's datacenter.
    pub zone: Option<String>,
}

/// Why a query failed; the watch's state (index, known instances) did not change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoverError {
    /// The request could not be made or the answer not read.
    #[error("health query failed: {0}")]
    Http(String),
    /// The agent answered with an error status.
    #[error("health query answered {0}")]
    Status(u16),
    /// The answer is not the expected JSON.
    #[error("health answer is malformed: {0}")]
    Decode(#[from] serde_json::Error),
    /// More instances than [`INSTANCES_MAX`].
    #[error("health answer lists {0} instances, more than the maximum")]
    TooMany(usize),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    node: Node,
    service: Service,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(default)]
    address: String,
    #[serde(default)]
    datacenter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Service {
    #[serde(default)]
    address: String,
    port: u16,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

/// Parses a `/v1/health/service/:name` answer into instances, sorted by id.
///
/// # Errors
/// [`DiscoverError::Decode`] or [`DiscoverError::TooMany`].
pub fn parse_health(body: &[u8]) -> Result<Vec<Instance>, DiscoverError> {
    let entries: Vec<Entry> = serde_json::from_slice(body)?;
    if entries.len() > INSTANCES_MAX {
        return Err(DiscoverError::TooMany(entries.len()));
    }
    let mut instances: Vec<Instance> = entries
        .into_iter()
        .map(|entry| {
            let host = if entry.service.address.is_empty() {
                entry.node.address
            } else {
                entry.service.address
            };
            let zone = entry
                .service
                .meta
                .and_then(|meta| meta.get("zone").cloned())
                .or(entry.node.datacenter);
            Instance {
                id: format!("{host}:{}", entry.service.port),
                zone,
            }
        })
        .collect();
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    instances.dedup_by(|a, b| a.id == b.id);
    Ok(instances)
}

/// A change to the instance set, before a service is built for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceChange {
    /// A new passing instance.
    Insert(Instance),
    /// An instance no longer passing (or gone), by id.
    Remove(String),
}

/// Blocking queries against one agent for one service; see the module doc.
#[derive(Debug)]
pub struct HealthWatch {
    client: Client<HttpConnector, Empty<Bytes>>,
    agent: String,
    service: String,
    wait: Duration,
    index: u64,
    known: BTreeMap<String, Instance>,
}

impl HealthWatch {
    /// Watches `service` through the agent at `agent` (`http://127.0.0.1:8500`), each query
    /// waiting up to `wait` for a change.
    pub fn new(agent: &str, service: &str, wait: Duration) -> Self {
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self {
            client,
            agent: agent.trim_end_matches('/').to_owned(),
            service: service.to_owned(),
            wait,
            index: 0,
            known: BTreeMap::new(),
        }
    }

    /// The last index seen.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Waits for the next answer and returns what changed (possibly nothing, when the wait
    /// ran out).
    ///
    /// # Errors
    /// [`DiscoverError`] when the query fails; nothing changed then.
    pub async fn next_changes(&mut self) -> Result<Vec<InstanceChange>, DiscoverError> {
        let uri = format!(
            "{}/v1/health/service/{}?passing&index={}&wait={}ms",
            self.agent,
            self.service,
            self.index,
            self.wait.as_millis()
        );
        let uri: hyper::Uri = uri
            .parse()
            .map_err(|e| DiscoverError::Http(format!("{e}")))?;
        let response = self
            .client
            .get(uri)
            .await
            .map_err(|e| DiscoverError::Http(format!("{e}")))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(DiscoverError::Status(status));
        }
        let index = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| DiscoverError::Http(format!("{e}")))?
            .to_bytes();
        let instances = parse_health(&body)?;
        // Consul's rule: an index that went backwards starts over; 0 is never waited on.
        self.index = match index {
            Some(new) if new < self.index => 0,
            Some(new) => new.max(1),
            None => 0,
        };
        Ok(self.apply(instances))
    }

    fn apply(&mut self, instances: Vec<Instance>) -> Vec<InstanceChange> {
        let mut changes = Vec::new();
        let next: BTreeMap<String, Instance> =
            instances.into_iter().map(|i| (i.id.clone(), i)).collect();
        for id in self.known.keys() {
            if !next.contains_key(id) {
                changes.push(InstanceChange::Remove(id.clone()));
            }
        }
        for (id, instance) in &next {
            if self.known.get(id) != Some(instance) {
                changes.push(InstanceChange::Insert(instance.clone()));
            }
        }
        self.known = next;
        changes
    }

    /// Applies one round of changes to `balance`, building each new endpoint's service with
    /// `make`. Returns how many changes were applied.
    ///
    /// # Errors
    /// [`DiscoverError`] when the query fails; the balancer is unchanged then.
    pub async fn feed<S, C>(
        &mut self,
        balance: &Balance<String, S, C>,
        mut make: impl FnMut(&str) -> S,
    ) -> Result<usize, DiscoverError>
    where
        S: Clone,
        String: Hash,
    {
        let changes = self.next_changes().await?;
        let count = changes.len();
        for change in changes {
            match change {
                InstanceChange::Insert(instance) => {
                    let service = make(&instance.id);
                    balance.update(Change::Insert(instance.id, instance.zone, service));
                }
                InstanceChange::Remove(id) => balance.update(Change::Remove(id)),
            }
        }
        Ok(count)
    }
}

impl HealthWatch {
    /// The watch as a never-ending stream of changes; a failed query is logged and tried
    /// again after `retry`.
    pub fn into_stream(self, retry: Duration) -> InstanceStream {
        InstanceStream {
            state: StreamState::Idle(Some(self)),
            ready: VecDeque::new(),
            retry,
        }
    }

    /// The watch as a `tower::discover::Discover`: each new instance becomes
    /// `Change::Insert(id, make(&instance))`, each vanished one `Change::Remove(id)`.
    pub fn into_discover<S, F>(self, retry: Duration, make: F) -> DiscoverStream<F>
    where
        F: FnMut(&Instance) -> S + Unpin,
    {
        DiscoverStream {
            inner: self.into_stream(retry),
            make,
        }
    }
}

type Query =
    Pin<Box<dyn Future<Output = (HealthWatch, Result<Vec<InstanceChange>, DiscoverError>)> + Send>>;

enum StreamState {
    /// Between queries (the option is only empty while moving the watch).
    Idle(Option<HealthWatch>),
    /// A blocking query is out.
    Querying(Query),
    /// Pausing after a failed query.
    Waiting(Pin<Box<tokio::time::Sleep>>, Option<HealthWatch>),
}

/// [`HealthWatch::into_stream`]: the instance changes, for ever.
pub struct InstanceStream {
    state: StreamState,
    ready: VecDeque<InstanceChange>,
    retry: Duration,
}

impl std::fmt::Debug for InstanceStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceStream")
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

impl Stream for InstanceStream {
    type Item = InstanceChange;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<InstanceChange>> {
        let this = &mut *self;
        loop {
            if let Some(change) = this.ready.pop_front() {
                return Poll::Ready(Some(change));
            }
            match &mut this.state {
                StreamState::Idle(watch) => {
                    let mut watch = watch.take().expect("the watch is idle here");
                    this.state = StreamState::Querying(Box::pin(async move {
                        let result = watch.next_changes().await;
                        (watch, result)
                    }));
                }
                StreamState::Querying(query) => {
                    let (watch, result) = ready!(query.as_mut().poll(cx));
                    match result {
                        Ok(changes) => {
                            this.ready.extend(changes);
                            this.state = StreamState::Idle(Some(watch));
                        }
                        Err(error) => {
                            tracing::warn!(%error, service = %watch.service, "discovery query failed; retrying");
                            let pause = Box::pin(tokio::time::sleep(this.retry));
                            this.state = StreamState::Waiting(pause, Some(watch));
                        }
                    }
                }
                StreamState::Waiting(pause, watch) => {
                    ready!(pause.as_mut().poll(cx));
                    let watch = watch.take();
                    this.state = StreamState::Idle(watch);
                }
            }
        }
    }
}

/// [`HealthWatch::into_discover`]: instance changes with services built, as tower's
/// `Discover` expects (it never fails and never ends).
pub struct DiscoverStream<F> {
    inner: InstanceStream,
    make: F,
}

impl<F> std::fmt::Debug for DiscoverStream<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoverStream")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, F> Stream for DiscoverStream<F>
where
    F: FnMut(&Instance) -> S + Unpin,
{
    type Item = Result<tower::discover::Change<String, S>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let change = ready!(Pin::new(&mut this.inner).poll_next(cx));
        Poll::Ready(change.map(|change| {
            Ok(match change {
                InstanceChange::Insert(instance) => {
                    let service = (this.make)(&instance);
                    tower::discover::Change::Insert(instance.id, service)
                }
                InstanceChange::Remove(id) => tower::discover::Change::Remove(id),
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_parse_prefers_service_address_and_meta_zone() {
        let body = br#"[
            {"Node": {"Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1"},
             "Service": {"ID": "web-1", "Service": "web", "Address": "", "Port": 80},
             "Checks": []},
            {"Node": {"Node": "n2", "Address": "10.0.0.2", "Datacenter": "dc1"},
             "Service": {"ID": "web-2", "Service": "web", "Address": "192.168.1.2", "Port": 81,
                         "Meta": {"zone": "b"}},
             "Checks": []}
        ]"#;
        let instances = parse_health(body).expect("valid answer");
        assert_eq!(
            instances,
            vec![
                Instance {
                    id: "10.0.0.1:80".into(),
                    zone: Some("dc1".into())
                },
                Instance {
                    id: "192.168.1.2:81".into(),
                    zone: Some("b".into())
                },
            ]
        );
        assert!(parse_health(b"{\"not\": \"a list\"}").is_err());
    }
}
