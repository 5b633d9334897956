//! Log entries: the commands the state machine applies and the outcomes it returns.

use crate::types::{Check, KvEntry, Node, Service, Session};
use serde::{Deserialize, Serialize};

/// The version byte every encoded entry starts with. Bump it when `Command` changes shape.
/// Version 2 added KV revisions for the etcd dialect (versions, leases, history); logs of
/// version 1 are refused with a message naming the version.
pub const ENTRY_FORMAT_VERSION: u8 = 2;

/// One log entry: a command plus the proposer's wall-clock time, the only time the state
/// machine ever sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Proposer's wall clock, ms since the Unix epoch.
    pub time_ms: u64,
    /// What to do.
    pub command: Command,
}

/// Why bytes could not be decoded into an [`Entry`]. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The buffer is empty.
    #[error("empty entry")]
    Empty,
    /// The entry was written by an unknown format version.
    #[error("unknown entry format version {0}")]
    UnknownVersion(u8),
    /// The payload is malformed or truncated.
    #[error("malformed entry: {0}")]
    Malformed(#[from] postcard::Error),
}

impl Entry {
    /// Encodes the entry: one version byte, then the postcard payload.
    pub fn encode(&self) -> Vec<u8> {
        let out = postcard::to_extend(self, vec![ENTRY_FORMAT_VERSION])
            .expect("encoding to a Vec cannot fail");
        assert_eq!(out[0], ENTRY_FORMAT_VERSION);
        out
    }

    /// Decodes bytes written by [`Entry::encode`].
    ///
    /// # Errors
    /// Returns [`DecodeError`] for empty, truncated, garbage or future-version input.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (&version, payload) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != ENTRY_FORMAT_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let (entry, rest) = postcard::take_from_bytes::<Entry>(payload)?;
        if !rest.is_empty() {
            return Err(DecodeError::Malformed(
                postcard::Error::DeserializeUnexpectedEnd,
            ));
        }
        Ok(entry)
    }
}

/// How a KV set treats the existing entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvSetMode {
    /// Unconditional write.
    Set,
    /// Write only if the entry's modify index equals this (0: only if absent).
    Cas(u64),
    /// Write and take the lock for this session.
    Acquire(String),
    /// Write and release the lock held by this session.
    Release(String),
}

/// A node plus optionally one service and some checks, as Consul's catalog register takes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogRegistration {
    /// The node (indexes are ignored; the state machine assigns them).
    pub node: Node,
    /// A service instance on that node.
    pub service: Option<Service>,
    /// Checks on that node (indexes ignored).
    pub checks: Vec<Check>,
    /// Remove the service's existing checks that `checks` does not name (Consul's
    /// `replace-existing-checks`).
    pub replace_service_checks: bool,
}

/// One operation of a KV transaction, as Consul's `/v1/txn` names the verbs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// `set`: unconditional write.
    Set {
        /// Key.
        key: String,
        /// Value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Flags.
        flags: u64,
    },
    /// `cas`: write if the modify index matches.
    Cas {
        /// Key.
        key: String,
        /// Value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Flags.
        flags: u64,
        /// Expected modify index (0: absent).
        index: u64,
    },
    /// `lock`: write and acquire.
    Lock {
        /// Key.
        key: String,
        /// Value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Flags.
        flags: u64,
        /// Session taking the lock.
        session: String,
    },
    /// `unlock`: write and release.
    Unlock {
        /// Key.
        key: String,
        /// Value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Flags.
        flags: u64,
        /// Session releasing the lock.
        session: String,
    },
    /// `get`: read one key (fails if missing).
    Get {
        /// Key.
        key: String,
    },
    /// `get-tree`: read a prefix.
    GetTree {
        /// Prefix.
        key: String,
    },
    /// `check-index`: fail unless the modify index matches.
    CheckIndex {
        /// Key.
        key: String,
        /// Expected modify index.
        index: u64,
    },
    /// `check-session`: fail unless the key is locked by the session.
    CheckSession {
        /// Key.
        key: String,
        /// Expected session.
        session: String,
    },
    /// `check-not-exists`: fail if the key exists.
    CheckNotExists {
        /// Key.
        key: String,
    },
    /// `delete`: remove one key.
    Delete {
        /// Key.
        key: String,
    },
    /// `delete-tree`: remove a prefix.
    DeleteTree {
        /// Prefix.
        key: String,
    },
    /// `delete-cas`: remove if the modify index matches.
    DeleteCas {
        /// Key.
        key: String,
        /// Expected modify index.
        index: u64,
    },
}

/// A state-machine command. Each is applied atomically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Does nothing; used to probe that the log accepts writes again.
    Noop,
    /// Write one KV entry.
    KvSet {
        /// Key.
        key: String,
        /// Value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Flags.
        flags: u64,
        /// Condition or lock action.
        mode: KvSetMode,
    },
    /// Delete one key or a prefix.
    KvDelete {
        /// Key or prefix.
        key: String,
        /// Delete every key with this prefix.
        recurse: bool,
        /// Delete only if the modify index matches.
        cas: Option<u64>,
    },
    /// An atomic KV transaction.
    Txn {
        /// Operations, applied in order, all or nothing.
        ops: Vec<TxnOp>,
    },
    /// Register a node, service and checks.
    CatalogRegister(CatalogRegistration),
    /// Remove a node, or one of its services or checks.
    CatalogDeregister {
        /// Node name.
        node: String,
        /// Remove only this service (and its checks).
        service_id: Option<String>,
        /// Remove only this check.
        check_id: Option<String>,
    },
    /// Record a check's new status or output.
    CheckUpdate {
        /// Node name.
        node: String,
        /// Check ID.
        check_id: String,
        /// New status.
        status: crate::HealthStatus,
        /// New output.
        output: String,
    },
    /// Create a session (its ID was chosen by the proposer).
    SessionCreate(Session),
    /// Destroy (invalidate) a session.
    SessionDestroy {
        /// Session ID.
        id: String,
    },
    /// An etcd-style KV transaction (also a lone put or range delete).
    KvTxn(crate::kv_txn::KvTxn),
    /// Forget KV history before a revision.
    KvCompact {
        /// The oldest revision to keep readable.
        revision: u64,
    },
}

impl Command {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Noop => "noop",
            Command::KvSet { .. } => "kv_set",
            Command::KvDelete { .. } => "kv_delete",
            Command::Txn { .. } => "txn",
            Command::CatalogRegister(_) => "catalog_register",
            Command::CatalogDeregister { .. } => "catalog_deregister",
            Command::CheckUpdate { .. } => "check_update",
            Command::SessionCreate(_) => "session_create",
            Command::SessionDestroy { .. } => "session_destroy",
            Command::KvTxn(_) => "kv_txn",
            Command::KvCompact { .. } => "kv_compact",
        }
    }
}

/// What kind of refusal a [`Rejection`] is, for mapping to status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectionKind {
    /// Something named does not exist (a session, node, service or check).
    NotFound,
    /// The command is invalid against the current state.
    Invalid,
}

/// A command the state machine refused; the state is unchanged except for the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// What kind of refusal.
    pub kind: RejectionKind,
    /// What is wrong, for the client.
    pub message: String,
}

/// One result of a successful transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnResult {
    /// An entry read or written by the operation (written entries omit the value).
    Kv(KvEntry),
}

/// One failed operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnError {
    /// Position of the failed operation.
    pub op_index: usize,
    /// What went wrong.
    pub what: String,
}

/// The outcome of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOutcome {
    /// Every operation succeeded and was applied.
    Committed(Vec<TxnResult>),
    /// At least one failed; nothing was applied.
    RolledBack(Vec<TxnError>),
}

/// What applying a command produced, for the caller that proposed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied; nothing to report.
    Done,
    /// A conditional KV write or delete: whether it took effect.
    Bool(bool),
    /// A transaction's results or errors.
    Txn(TxnOutcome),
    /// An etcd-style transaction's result.
    KvTxn(crate::kv_txn::KvTxnResult),
    /// Refused.
    Rejected(Rejection),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips() {
        let entry = Entry {
            time_ms: 17,
            command: Command::KvSet {
                key: "a/b".into(),
                value: b"hello".to_vec(),
                flags: 3,
                mode: KvSetMode::Acquire("s".into()),
            },
        };
        let bytes = entry.encode();
        assert_eq!(Entry::decode(&bytes).expect("round trip"), entry);
    }

    #[test]
    fn entry_truncated_or_garbage_is_an_error() {
        let bytes = Entry {
            time_ms: 1,
            command: Command::Noop,
        }
        .encode();
        assert!(matches!(Entry::decode(&[]), Err(DecodeError::Empty)));
        assert!(matches!(
            Entry::decode(&[9, 1, 2]),
            Err(DecodeError::UnknownVersion(9))
        ));
        assert!(Entry::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn entry_decode_never_panics(bytes in proptest::collection::vec(0u8..=255, 0..64)) {
            let _ = Entry::decode(&bytes);
        }
    }
}
