//! Prometheus metrics of one agent.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of an HTTP request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Route template, e.g. `/v1/kv/{*key}`.
    pub endpoint: String,
    /// HTTP method.
    pub method: String,
    /// Status code.
    pub code: u16,
}

/// Labels of a per-endpoint latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// Route template.
    pub endpoint: String,
}

/// Labels of check results.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// Check kind: http, tcp, ttl.
    pub kind: String,
    /// Result: passing, warning, critical.
    pub status: String,
}

/// Labels of a subsystem mode gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    /// Subsystem name.
    pub subsystem: String,
    /// Mode name.
    pub mode: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_025, 2.0, 18))
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by endpoint, method and code.
    pub http_requests: Family<HttpLabels, Counter>,
    /// HTTP request latency by endpoint, seconds.
    pub http_latency: HistogramFamily<EndpointLabels>,
    /// Check probe results by kind and status.
    pub check_results: Family<CheckLabels, Counter>,
    /// Duration of one durable commit (write + fsync), seconds.
    pub commit_seconds: Histogram,
    /// Entries per durable commit.
    pub commit_batch_entries: Histogram,
    /// Entries applied to the state machine.
    pub applied_entries: Counter,
    /// Snapshots written.
    pub snapshots: Counter,
    /// Blocking queries currently parked.
    pub parked_queries: Gauge,
    /// Reads that waited for a ReadIndex barrier (consistent, linearizable, or default on a
    /// follower or a leader out of its lease).
    pub read_barriers: Counter,
    /// ReadIndex requests this server made for them (at most one in flight; a follower's
    /// Raft node sends each on to the leader).
    pub read_index_requests: Counter,
    /// Default-consistency read index requests this server, as leader, answered from its
    /// lease without a quorum round.
    pub lease_read_index_answers: Counter,
    /// Followers' linearizable read index requests this server, as leader, answered from
    /// what its Raft thread published, without waking it (read_gate.rs).
    pub follower_read_index_answers: Counter,
    /// This leader's own linearizable read barriers confirmed by another voter's RPC task,
    /// without a heartbeat round (read_gate.rs).
    pub leader_read_confirmations: Counter,
    /// Outbound Raft streams that ended because the peer closed them (it stopped or
    /// restarted); the next message opens a new stream.
    pub raft_streams_closed_by_peer: Counter,
    /// 1 for the current mode of each subsystem, 0 for the others.
    pub modes: Family<ModeLabels, Gauge>,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("colony");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_latency: HistogramFamily<EndpointLabels> =
            Family::new_with_constructor(latency_histogram);
        let check_results = Family::<CheckLabels, Counter>::default();
        let commit_seconds = latency_histogram();
        let commit_batch_entries = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        let applied_entries = Counter::default();
        let snapshots = Counter::default();
        let parked_queries = Gauge::default();
        let read_barriers = Counter::default();
        let read_index_requests = Counter::default();
        let lease_read_index_answers = Counter::default();
        let follower_read_index_answers = Counter::default();
        let leader_read_confirmations = Counter::default();
        let raft_streams_closed_by_peer = Counter::default();
        let modes = Family::<ModeLabels, Gauge>::default();
        registry.register(
            "http_requests",
            "HTTP requests served",
            http_requests.clone(),
        );
        registry.register(
            "http_request_seconds",
            "HTTP request latency",
            http_latency.clone(),
        );
        registry.register(
            "check_results",
            "Health check probe results",
            check_results.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "Duration of one durable commit: write and fsync",
            commit_seconds.clone(),
        );
        registry.register(
            "store_commit_batch_entries",
            "Log entries made durable by one fsync (group commit)",
            commit_batch_entries.clone(),
        );
        registry.register(
            "store_applied_entries",
            "Entries applied",
            applied_entries.clone(),
        );
        registry.register("store_snapshots", "Snapshots written", snapshots.clone());
        registry.register(
            "blocking_queries_parked",
            "Blocking queries waiting for a change",
            parked_queries.clone(),
        );
        registry.register(
            "read_barriers",
            "Reads that waited for a ReadIndex barrier",
            read_barriers.clone(),
        );
        registry.register(
            "read_index_requests",
            "ReadIndex requests made for reads (one in flight at a time per server; a follower's go to the leader)",
            read_index_requests.clone(),
        );
        registry.register(
            "lease_read_index_answers",
            "Default reads' index requests answered by this leader from its lease, without a quorum round",
            lease_read_index_answers.clone(),
        );
        registry.register(
            "follower_read_index_answers",
            "Followers' linearizable read index requests answered by this leader without its Raft thread (the asker and the leader are a quorum)",
            follower_read_index_answers.clone(),
        );
        registry.register(
            "leader_read_confirmations",
            "This leader's linearizable read barriers confirmed by another voter without a heartbeat round (the two are a quorum)",
            leader_read_confirmations.clone(),
        );
        registry.register(
            "raft_streams_closed_by_peer",
            "Outbound Raft streams that ended because the peer closed them (it stopped or restarted)",
            raft_streams_closed_by_peer.clone(),
        );
        registry.register(
            "subsystem_mode",
            "Current mode per subsystem",
            modes.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_latency,
            check_results,
            commit_seconds,
            commit_batch_entries,
            applied_entries,
            snapshots,
            parked_queries,
            read_barriers,
            read_index_requests,
            lease_read_index_answers,
            follower_read_index_answers,
            leader_read_confirmations,
            raft_streams_closed_by_peer,
            modes,
        }
    }

    /// Sets the mode gauge of `subsystem` to `mode`.
    pub fn set_mode(&self, subsystem: &str, mode: colony_modes::Mode) {
        use colony_modes::Mode;
        for candidate in [Mode::Target, Mode::Degraded, Mode::Floor, Mode::Recovery] {
            let labels = ModeLabels {
                subsystem: subsystem.to_string(),
                mode: candidate.as_str().to_string(),
            };
            self.modes
                .get_or_create(&labels)
                .set(i64::from(candidate == mode));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
