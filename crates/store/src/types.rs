//! The records the state machine keeps. Field meanings follow Consul's data model.

pub use colony_base::HealthStatus;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One KV entry with its revision bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    /// The key.
    pub key: crate::Key,
    /// The value, opaque bytes, shared by reference count (so that copies of the state,
    /// for snapshots and history, do not copy values); encoded exactly as a `Vec<u8>`.
    pub value: bytes::Bytes,
    /// Opaque client flags.
    pub flags: u64,
    /// The session holding the lock on this key, if any.
    pub session: Option<String>,
    /// How many times the lock was newly acquired.
    pub lock_index: u64,
    /// The index that created the key.
    pub create_index: u64,
    /// The index that last modified the key.
    pub modify_index: u64,
    /// How many times the key was written since it was created (1 after the first write),
    /// etcd's `version`.
    pub version: u64,
    /// The lease (session) the key is attached to, or 0: the key is deleted when it ends.
    pub lease: i64,
}

impl KvEntry {
    /// A key created at `index`, before its first write: empty, unlocked, no lease,
    /// version 0.
    pub(crate) fn created(key: crate::Key, index: u64) -> Self {
        Self {
            key,
            value: bytes::Bytes::new(),
            flags: 0,
            session: None,
            lock_index: 0,
            create_index: index,
            modify_index: index,
            version: 0,
            lease: 0,
        }
    }
}

/// A catalog node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Node UUID.
    pub id: String,
    /// Node name, unique in the catalog.
    pub name: String,
    /// Address other nodes use.
    pub address: String,
    /// Extra addresses by purpose (`lan`, `wan`).
    pub tagged_addresses: BTreeMap<String, String>,
    /// User metadata.
    pub meta: BTreeMap<String, String>,
    /// Index that created the node.
    pub create_index: u64,
    /// Index that last modified the node.
    pub modify_index: u64,
}

/// Relative weights of a service instance for DNS/balancing, by health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    /// Weight while passing.
    pub passing: u32,
    /// Weight while warning.
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

/// A service instance registered on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Node the instance runs on.
    pub node: String,
    /// Instance ID, unique per node.
    pub id: String,
    /// Service name.
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Address of the instance (empty: the node's).
    pub address: String,
    /// Port.
    pub port: u16,
    /// User metadata.
    pub meta: BTreeMap<String, String>,
    /// Balancing weights.
    pub weights: Weights,
    /// Whether catalog tag edits override the agent's.
    pub enable_tag_override: bool,
    /// Index that created the instance.
    pub create_index: u64,
    /// Index that last modified the instance.
    pub modify_index: u64,
}

/// How the agent runs a check. Stored in the catalog (as Consul's `Definition`) so that the
/// agent that owns the check can run it again after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CheckDefinition {
    /// URL for an HTTP check.
    pub http: Option<String>,
    /// HTTP method (default GET).
    pub method: Option<String>,
    /// HTTP headers.
    pub header: BTreeMap<String, Vec<String>>,
    /// HTTP request body.
    pub body: Option<String>,
    /// `host:port` for a TCP check.
    pub tcp: Option<String>,
    /// Time to live for a TTL check.
    pub ttl_ms: Option<u64>,
    /// How often HTTP/TCP checks run.
    pub interval_ms: Option<u64>,
    /// Probe timeout for HTTP/TCP checks.
    pub timeout_ms: Option<u64>,
    /// Deregister the service after the check has been critical this long.
    pub deregister_critical_service_after_ms: Option<u64>,
    /// Consecutive successes needed before passing.
    pub success_before_passing: u32,
    /// Consecutive failures needed before critical.
    pub failures_before_critical: u32,
}

impl CheckDefinition {
    /// The check kind as Consul names it in `Type`.
    pub fn kind(&self) -> &'static str {
        if self.http.is_some() {
            "http"
        } else if self.tcp.is_some() {
            "tcp"
        } else if self.ttl_ms.is_some() {
            "ttl"
        } else {
            ""
        }
    }
}

/// A health check on a node or on one of its services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Node the check belongs to.
    pub node: String,
    /// Check ID, unique per node.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Current status.
    pub status: HealthStatus,
    /// Free text from the registrant.
    pub notes: String,
    /// Output of the last run that changed the status.
    pub output: String,
    /// Service instance the check belongs to (empty: a node check).
    pub service_id: String,
    /// Name of that service.
    pub service_name: String,
    /// Tags of that service.
    pub service_tags: Vec<String>,
    /// How to run it.
    pub definition: CheckDefinition,
    /// When the current status was observed (proposer's clock, ms since the epoch).
    pub status_observed_ms: u64,
    /// Index that created the check.
    pub create_index: u64,
    /// Index that last modified the check.
    pub modify_index: u64,
}

/// What happens to a session's locks when it is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionBehavior {
    /// Locks are released, keys stay.
    Release,
    /// Locked keys are deleted.
    Delete,
}

impl SessionBehavior {
    /// Consul's name for the behavior.
    pub fn as_str(&self) -> &'static str {
        match self {
            SessionBehavior::Release => "release",
            SessionBehavior::Delete => "delete",
        }
    }
}

/// A session: a lease on a node, bound to health checks and optionally a TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Session UUID.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Node the session is tied to.
    pub node: String,
    /// Node-level checks that must stay non-critical.
    pub node_checks: Vec<String>,
    /// Service checks (by check ID) that must stay non-critical.
    pub service_checks: Vec<String>,
    /// What invalidation does to held locks.
    pub behavior: SessionBehavior,
    /// Time to live, or zero for none.
    pub ttl_ms: u64,
    /// How long a lock released by invalidation stays unacquirable.
    pub lock_delay_ms: u64,
    /// The session's lease ID in the etcd dialect (nonzero, unique): keys put with this lease
    /// are deleted when the session ends.
    pub lease_id: i64,
    /// Index that created the session.
    pub create_index: u64,
    /// Index that last modified the session.
    pub modify_index: u64,
}

impl Session {
    /// Every check ID this session depends on.
    pub fn all_checks(&self) -> impl Iterator<Item = &String> {
        self.node_checks.iter().chain(self.service_checks.iter())
    }
}
