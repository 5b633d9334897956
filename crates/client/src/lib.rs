//! Colony's client resilience library: what a client of colony (or of anything) puts between
//! its code and the network so that overload does not cascade.
//!
//! Two layers of code:
//! - [`policy`]: pure policy cores — circuit breaker, bulkhead, adaptive concurrency limits
//!   (AIMD, Vegas, Gradient2), backoff with jitter, a retry budget shared by retries and hedges,
//!   SRE client-side throttling, GCRA and token-bucket rate limits (keyed too), priority load
//!   shedding, an online latency histogram, and a peak-EWMA power-of-two-choices balancer with
//!   outlier ejection and zone affinity. Sans-IO: time (`now_ns`) and randomness are inputs, so
//!   the simulator (`colony-sim`, whose overload scenarios replay the classic cascades) drives
//!   the very same code.
//! - [`layer`]: tower `Layer`s and `Service`s over those cores, one per policy (each behind a
//!   feature of the same name; `full` is the default), plus deadlines and fallbacks.
//!
//! Beside them: [`hash`] (ring, rendezvous, jump, Maglev and bounded-load consistent hashing
//! behind one trait, with balance and disruption reports), [`consistency`] (the guarantee
//! lattice, its header form and the type-level `Consistent<T, L>`), and [`event`] (one event
//! model for every layer, to `tracing` and Prometheus).
//!
//! What it is not: an HTTP client. Layers wrap any tower service (hyper's, tonic's, yours).
//!
//! # Building a client
//!
//! 1. Make one [`layer::Clock`] and one [`policy::budget::RetryBudget`] per client: the retry
//!    and hedge layers share the budget, so their extra load has one bound.
//! 2. Stack the layers outside-in: deadline → rate limit → breaker → retry → balancer (or
//!    your endpoint service); add a bulkhead, an adaptive limit or a shedder where the
//!    dependency needs them.
//! 3. Feed the balancer endpoints ([`layer::balance::Change`]), and send events to a sink.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use colony_client::layer::balance::{Balance, Change};
//! use colony_client::layer::breaker::BreakerLayer;
//! use colony_client::layer::deadline::{DeadlineLayer, WithDeadline};
//! use colony_client::layer::rate::RateLayer;
//! use colony_client::layer::retry::{Idempotency, RetryConfig, RetryIdempotentErrors, RetryLayer};
//! use colony_client::layer::{BoxError, Clock, Observe};
//! use colony_client::event::TracingSink;
//! use colony_client::policy::backoff::{Backoff, Jitter};
//! use colony_client::policy::balance::BalanceConfig;
//! use colony_client::policy::breaker::{Breaker, BreakerConfig};
//! use colony_client::policy::budget::{BudgetConfig, RetryBudget};
//! use colony_client::policy::rate::Quota;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! #[derive(Debug, Clone)]
//! struct GetKey(String);
//!
//! impl Idempotency for GetKey {
//!     fn is_idempotent(&self) -> bool {
//!         true // a read: safe to send twice
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let clock = Clock::new();
//! let sink = Arc::new(TracingSink);
//! let observe = |name: &str| Observe::new(name, sink.clone());
//!
//! // Endpoints: here two in-process services; in production, HTTP clients per address.
//! let balance = Balance::new(BalanceConfig::default(), observe("kv-balance"), clock.clone(), 42);
//! for address in ["10.0.0.1:8500", "10.0.0.2:8500"] {
//!     let endpoint = service_fn(move |request: WithDeadline<GetKey>| async move {
//!         Ok::<_, BoxError>(format!("{} from {address}", request.request.0))
//!     });
//!     balance.update(Change::Insert(address.to_owned(), Some("zone-a".into()), endpoint));
//! }
//!
//! let budget = Arc::new(RetryBudget::new(BudgetConfig::default()));
//! let backoff = Backoff { base_ns: 10_000_000, cap_ns: 1_000_000_000, jitter: Jitter::Full };
//! let client = ServiceBuilder::new()
//!     .layer(DeadlineLayer::new(Duration::from_secs(2), clock.clone()))
//!     .layer(RateLayer::new(Quota::per_second(1_000, 100), observe("kv-rate"), clock.clone()))
//!     .layer(BreakerLayer::with_clock(Breaker::new(BreakerConfig::default())?, observe("kv-breaker"), clock.clone()))
//!     .layer(RetryLayer::new(
//!         RetryConfig { retries_max: 3, backoff, deposits: true },
//!         budget,
//!         RetryIdempotentErrors,
//!         observe("kv-retry"),
//!         clock.clone(),
//!         7,
//!     ))
//!     .service(balance);
//!
//! let answer = client.oneshot(WithDeadline { request: GetKey("config".into()), deadline: None }).await?;
//! assert!(answer.starts_with("config from 10.0.0."));
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod consistency;
#[cfg(feature = "discover")]
pub mod discover;
pub mod event;
pub mod hash;
pub mod layer;
pub mod policy;
