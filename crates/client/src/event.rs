//! One event model for every layer: state changes, rejections, retries, hedges, limit
//! changes and ejections. Layers emit [`Event`]s to an [`EventSink`]; the success path emits
//! nothing, so a sink costs only when something happens. Sinks: [`NoopSink`], [`TracingSink`]
//! (structured `tracing` events), [`PrometheusSink`] (counters and gauges, with the
//! `prometheus` feature), and [`FanOut`] to use several.

use std::sync::Arc;

use crate::policy::balance::EjectionReason;
use crate::policy::breaker::BreakerState;

/// Which layer an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerKind {
    /// Circuit breaker.
    Breaker,
    /// Bulkhead.
    Bulkhead,
    /// Adaptive concurrency limit.
    Limit,
    /// Rate limit.
    Rate,
    /// Priority load shedding.
    Shed,
    /// Client-side throttling.
    Throttle,
    /// Retries.
    Retry,
    /// Hedged requests.
    Hedge,
    /// Load balancing.
    Balance,
    /// Deadlines.
    Deadline,
}

impl LayerKind {
    /// The kind's name in metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            LayerKind::Breaker => "breaker",
            LayerKind::Bulkhead => "bulkhead",
            LayerKind::Limit => "limit",
            LayerKind::Rate => "rate",
            LayerKind::Shed => "shed",
            LayerKind::Throttle => "throttle",
            LayerKind::Retry => "retry",
            LayerKind::Hedge => "hedge",
            LayerKind::Balance => "balance",
            LayerKind::Deadline => "deadline",
        }
    }
}

/// Something a layer did, with the name its owner gave the layer instance.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A breaker changed state.
    BreakerTransition {
        /// Instance name.
        name: &'a str,
        /// State before.
        from: BreakerState,
        /// State after.
        to: BreakerState,
    },
    /// A call was refused without reaching the service.
    Rejected {
        /// Instance name.
        name: &'a str,
        /// Which layer refused.
        layer: LayerKind,
        /// Why, in a word or two (`"open"`, `"full"`, `"budget"`…).
        reason: &'static str,
    },
    /// A failed call is retried.
    Retry {
        /// Instance name.
        name: &'a str,
        /// Retry number (1 for the first retry).
        attempt: u32,
        /// Backoff before it.
        delay_ns: u64,
    },
    /// A backup request was sent.
    Hedge {
        /// Instance name.
        name: &'a str,
        /// How long the first request had been waiting.
        delay_ns: u64,
    },
    /// An adaptive concurrency limit moved.
    LimitChanged {
        /// Instance name.
        name: &'a str,
        /// The new limit.
        limit: u32,
    },
    /// A balancer ejected an endpoint.
    Ejected {
        /// Instance name.
        name: &'a str,
        /// The endpoint's index.
        endpoint: usize,
        /// Why.
        reason: EjectionReason,
    },
}

/// Receives events; must be cheap and must not block.
pub trait EventSink: Send + Sync + 'static {
    /// Handles one event.
    fn emit(&self, event: &Event<'_>);
}

/// Drops every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopSink;

impl EventSink for NoopSink {
    fn emit(&self, _event: &Event<'_>) {}
}

/// Sends every event to the several sinks.
#[derive(Clone, Default)]
pub struct FanOut(pub Vec<Arc<dyn EventSink>>);

impl std::fmt::Debug for FanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FanOut").field(&self.0.len()).finish()
    }
}

impl EventSink for FanOut {
    fn emit(&self, event: &Event<'_>) {
        for sink in &self.0 {
            sink.emit(event);
        }
    }
}

/// Logs events with `tracing`: state changes and ejections at `info`, the rest at `debug`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingSink;

impl EventSink for TracingSink {
    fn emit(&self, event: &Event<'_>) {
        match *event {
            Event::BreakerTransition { name, from, to } => {
                tracing::info!(
                    name,
                    from = from.as_str(),
                    to = to.as_str(),
                    "breaker state changed"
                );
            }
            Event::Rejected {
                name,
                layer,
                reason,
            } => {
                tracing::debug!(name, layer = layer.as_str(), reason, "call rejected");
            }
            Event::Retry {
                name,
                attempt,
                delay_ns,
            } => {
                tracing::debug!(name, attempt, delay_ns, "retrying");
            }
            Event::Hedge { name, delay_ns } => tracing::debug!(name, delay_ns, "hedging"),
            Event::LimitChanged { name, limit } => tracing::debug!(name, limit, "limit changed"),
            Event::Ejected {
                name,
                endpoint,
                reason,
            } => {
                tracing::info!(name, endpoint, reason = ?reason, "endpoint ejected");
            }
        }
    }
}

#[cfg(feature = "prometheus")]
pub use prometheus_sink::PrometheusSink;

#[cfg(feature = "prometheus")]
mod prometheus_sink {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;

    use super::{Event, EventSink};
    use crate::policy::breaker::BreakerState;

    #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
    struct NameLabels {
        name: String,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
    struct RejectLabels {
        name: String,
        layer: String,
        reason: String,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
    struct TransitionLabels {
        name: String,
        to: String,
    }

    /// Exports events as Prometheus metrics:
    /// `client_rejections_total{name,layer,reason}`, `client_retries_total{name}`,
    /// `client_hedges_total{name}`, `client_ejections_total{name}`,
    /// `client_breaker_transitions_total{name,to}`, `client_breaker_state{name}`
    /// (0 closed, 1 open, 2 half-open) and `client_concurrency_limit{name}`.
    #[derive(Debug, Clone, Default)]
    pub struct PrometheusSink {
        rejections: Family<RejectLabels, Counter>,
        retries: Family<NameLabels, Counter>,
        hedges: Family<NameLabels, Counter>,
        ejections: Family<NameLabels, Counter>,
        transitions: Family<TransitionLabels, Counter>,
        breaker_state: Family<NameLabels, Gauge>,
        limit: Family<NameLabels, Gauge>,
    }

    impl PrometheusSink {
        /// A sink whose metrics are registered in `registry` (under its prefix, if any).
        pub fn new(registry: &mut Registry) -> Self {
            let sink = Self::default();
            let client = registry.sub_registry_with_prefix("client");
            client.register(
                "rejections",
                "Calls refused by a layer",
                sink.rejections.clone(),
            );
            client.register("retries", "Retries sent", sink.retries.clone());
            client.register("hedges", "Hedged requests sent", sink.hedges.clone());
            client.register("ejections", "Endpoints ejected", sink.ejections.clone());
            client.register(
                "breaker_transitions",
                "Breaker state changes",
                sink.transitions.clone(),
            );
            client.register(
                "breaker_state",
                "Breaker state (0 closed, 1 open, 2 half-open)",
                sink.breaker_state.clone(),
            );
            client.register(
                "concurrency_limit",
                "Adaptive concurrency limit",
                sink.limit.clone(),
            );
            sink
        }
    }

    fn name(name: &str) -> NameLabels {
        NameLabels {
            name: name.to_owned(),
        }
    }

    impl EventSink for PrometheusSink {
        fn emit(&self, event: &Event<'_>) {
            match *event {
                Event::BreakerTransition { name: n, to, .. } => {
                    let labels = TransitionLabels {
                        name: n.to_owned(),
                        to: to.as_str().into(),
                    };
                    self.transitions.get_or_create(&labels).inc();
                    let code = match to {
                        BreakerState::Closed => 0,
                        BreakerState::Open => 1,
                        BreakerState::HalfOpen => 2,
                    };
                    self.breaker_state.get_or_create(&name(n)).set(code);
                }
                Event::Rejected {
                    name: n,
                    layer,
                    reason,
                } => {
                    let labels = RejectLabels {
                        name: n.to_owned(),
                        layer: layer.as_str().to_owned(),
                        reason: reason.to_owned(),
                    };
                    self.rejections.get_or_create(&labels).inc();
                }
                Event::Retry { name: n, .. } => {
                    self.retries.get_or_create(&name(n)).inc();
                }
                Event::Hedge { name: n, .. } => {
                    self.hedges.get_or_create(&name(n)).inc();
                }
                Event::LimitChanged { name: n, limit } => {
                    self.limit.get_or_create(&name(n)).set(i64::from(limit));
                }
                Event::Ejected { name: n, .. } => {
                    self.ejections.get_or_create(&name(n)).inc();
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::event::LayerKind;

        #[test]
        fn prometheus_sink_exports_events() {
            let mut registry = Registry::default();
            let sink = PrometheusSink::new(&mut registry);
            sink.emit(&Event::Rejected {
                name: "kv",
                layer: LayerKind::Breaker,
                reason: "open",
            });
            sink.emit(&Event::LimitChanged {
                name: "kv",
                limit: 42,
            });
            sink.emit(&Event::BreakerTransition {
                name: "kv",
                from: BreakerState::Closed,
                to: BreakerState::Open,
            });
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
            assert!(
                text.contains(
                    "client_rejections_total{name=\"kv\",layer=\"breaker\",reason=\"open\"} 1"
                ),
                "{text}"
            );
            assert!(
                text.contains("client_concurrency_limit{name=\"kv\"} 42"),
                "{text}"
            );
            assert!(
                text.contains("client_breaker_state{name=\"kv\"} 1"),
                "{text}"
            );
        }
    }
}
