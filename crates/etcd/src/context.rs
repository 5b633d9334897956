//! What every etcd service shares: the agent, this member's identity, response headers,
//! evidence metadata, and the mapping from colony's errors to etcd's gRPC statuses.

use colony_base::{Evidence, Freshness};
use colony_etcdpb::etcdserverpb::ResponseHeader;
use colony_runtime::{Agent, AgentError, ClusterError, WriteError};
use colony_store::{RangeError, RejectionKind, reject};
use std::sync::Arc;
use tonic::{Code, Response, Status};

/// The largest request accepted, in bytes (etcd's default `--max-request-bytes`, 1.5 MiB).
pub const REQUEST_BYTES_MAX: usize = 1536 * 1024;
/// The largest gRPC message decoded: the request limit plus etcd's allowance for gRPC
/// framing, so that a request just over the limit gets etcd's own error message.
pub const GRPC_MESSAGE_BYTES_MAX: usize = REQUEST_BYTES_MAX + 512 * 1024;
/// The most operations in one transaction (etcd's default `--max-txn-ops`).
pub const TXN_OPS_MAX: usize = 128;
/// The etcd API level this dialect implements, reported by `Maintenance.Status`.
pub const API_VERSION: &str = "3.5.0";

/// Shared state of the etcd services.
pub struct EtcdContext {
    /// The agent whose store the services read and write.
    pub agent: Arc<Agent>,
    /// The cluster ID reported in headers (derived from the datacenter name).
    pub cluster_id: u64,
    /// This member's ID: its Raft ID on a replicated server (so `Status.leader` names a member),
    /// else derived from the node ID.
    pub member_id: u64,
    /// The URL clients reach this member's gRPC API at.
    pub client_url: String,
}

impl EtcdContext {
    /// A context for `agent`, serving clients at `client_url`.
    pub fn new(agent: Arc<Agent>, datacenter: &str, client_url: String) -> Arc<Self> {
        let member_id = agent
            .raft_id()
            .unwrap_or_else(|| fnv64(agent.node_id().as_bytes()));
        Arc::new(EtcdContext {
            cluster_id: fnv64(datacenter.as_bytes()),
            member_id,
            agent,
            client_url,
        })
    }

    /// A response header at `revision`.
    pub fn header(&self, revision: u64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision: revision as i64,
            // A single server is its own leader for its whole life: one term.
            raft_term: 1,
        })
    }

    /// A header at the store's current revision.
    pub fn current_header(&self) -> Option<ResponseHeader> {
        self.header(self.agent.read(|s| s.applied_index()))
    }

    /// Wraps `message` in a response carrying `evidence` as `x-colony-evidence` metadata.
    pub fn respond<T>(&self, message: T, evidence: &Evidence) -> Response<T> {
        let mut response = Response::new(message);
        if let Ok(value) = evidence.to_header_value().parse() {
            response.metadata_mut().insert("x-colony-evidence", value);
        }
        response
    }

    /// Evidence for a read or write of the store at `revision`, with the freshness the read
    /// mode gives.
    pub fn evidence(&self, revision: u64, binding: String, freshness: Freshness) -> Evidence {
        let mut evidence = self.agent.store_evidence(revision, binding);
        evidence.freshness = freshness;
        evidence
    }
}

/// FNV-1a, 64 bits: a stable ID from a name.
fn fnv64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// An etcd error: the status code and message etcd itself gives.
pub fn etcd_error(code: Code, what: &str) -> Status {
    Status::new(code, format!("etcdserver: {what}"))
}

/// etcd's error for a request without a key.
pub fn empty_key() -> Status {
    etcd_error(Code::InvalidArgument, "key is not provided")
}

/// Maps a failed write to etcd's status.
pub fn write_error(error: &WriteError) -> Status {
    match error {
        // A full disk is etcd's NOSPACE alarm.
        WriteError::Refused { .. } => {
            etcd_error(Code::ResourceExhausted, "mvcc: database space exceeded")
        }
        WriteError::ShuttingDown => etcd_error(Code::Unavailable, "server stopped"),
        WriteError::Fatal(what) => Status::unavailable(format!("etcdserver: {what}")),
        WriteError::Cluster(cluster) => match cluster {
            ClusterError::NoLeader | ClusterError::NotLeader { .. } => {
                etcd_error(Code::Unavailable, "no leader")
            }
            ClusterError::LeadershipLost => etcd_error(Code::Unavailable, "leader changed"),
            ClusterError::Busy(_) => etcd_error(Code::Unavailable, "too many requests"),
            ClusterError::Unavailable(_) => etcd_error(Code::Unavailable, "request timed out"),
            ClusterError::Invalid(what) => Status::invalid_argument(format!("etcdserver: {what}")),
        },
    }
}

/// Maps an agent error to etcd's status.
pub fn agent_error(error: &AgentError) -> Status {
    match error {
        AgentError::Write(write) => write_error(write),
        AgentError::NotFound(what) => rejection(RejectionKind::NotFound, what),
        AgentError::Invalid(what) => rejection(RejectionKind::Invalid, what),
    }
}

/// Maps a state-machine rejection to etcd's status.
pub fn rejection(kind: RejectionKind, message: &str) -> Status {
    let code = match message {
        reject::LEASE_NOT_FOUND => Code::NotFound,
        reject::LEASE_EXISTS => Code::FailedPrecondition,
        reject::KEY_NOT_FOUND => Code::InvalidArgument,
        reject::COMPACTED | reject::FUTURE_REV => Code::OutOfRange,
        _ => match kind {
            RejectionKind::NotFound => Code::NotFound,
            RejectionKind::Invalid => Code::InvalidArgument,
        },
    };
    etcd_error(code, message)
}

/// Maps a range failure to etcd's status.
pub fn range_error(error: &RangeError) -> Status {
    match error {
        RangeError::Compacted(_) => etcd_error(Code::OutOfRange, reject::COMPACTED),
        RangeError::Future { .. } => etcd_error(Code::OutOfRange, reject::FUTURE_REV),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(fnv64(b"dc1"), fnv64(b"dc1"));
        assert_ne!(fnv64(b"dc1"), fnv64(b"dc2"));
    }

    #[test]
    fn rejections_map_to_etcds_codes() {
        let lease = rejection(RejectionKind::NotFound, reject::LEASE_NOT_FOUND);
        assert_eq!(lease.code(), Code::NotFound);
        assert_eq!(lease.message(), "etcdserver: requested lease not found");
        assert_eq!(
            rejection(RejectionKind::Invalid, reject::COMPACTED).code(),
            Code::OutOfRange
        );
        assert_eq!(
            rejection(RejectionKind::Invalid, reject::LEASE_EXISTS).code(),
            Code::FailedPrecondition
        );
    }
}
