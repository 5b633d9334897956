//! Tunables of the Raft core. Times are milliseconds of the caller's clock.

use std::fmt;

/// Raft parameters, validated once by [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// A leader sends heartbeats this often.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the election timeout; each timeout is drawn uniformly from
    /// `[election_timeout_ms_min, 2 × election_timeout_ms_min)` (Raft §5.2). It is also the
    /// check-quorum period and the leader-stickiness window.
    pub election_timeout_ms_min: u64,
    /// Entries per append message at most.
    pub append_entries_max: usize,
    /// Entry bytes per append message at most (an oversized single entry is still sent alone).
    pub append_bytes_max: usize,
    /// Appends in flight per follower at most while pipelining.
    pub inflight_max: usize,
    /// Entries a leader holds beyond its commit index before refusing proposals.
    pub uncommitted_entries_max: u64,
    /// Ask for pre-votes before disrupting the cluster with a new term (thesis §9.6).
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum within an election timeout,
    /// and nodes that heard from a leader recently ignore votes (thesis §6.2, §9.6).
    pub check_quorum: bool,
}

impl Default for Config {
    /// etcd's timing (100 ms heartbeat, 1 s election timeout) with pre-vote and check-quorum on.
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            election_timeout_ms_min: 1_000,
            append_entries_max: 64,
            append_bytes_max: 1 << 20,
            inflight_max: 256,
            uncommitted_entries_max: 16_384,
            pre_vote: true,
            check_quorum: true,
        }
    }
}

/// Why a [`Config`] was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub &'static str);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid raft config: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// How long a leader's lease runs from the latest heartbeat round a quorum answered:
    /// nine tenths of the minimum election timeout, a tenth kept as margin for clock rates
    /// (see [`crate::Raft::lease_until_ms`]).
    pub fn lease_ms(&self) -> u64 {
        self.election_timeout_ms_min * 9 / 10
    }

    /// Checks the relations the protocol depends on.
    ///
    /// # Errors
    /// [`ConfigError`] names the first broken rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval_ms == 0 {
            return Err(ConfigError("heartbeat_interval_ms must be positive"));
        }
        if self.heartbeat_interval_ms * 3 > self.election_timeout_ms_min {
            return Err(ConfigError(
                "election_timeout_ms_min must be at least three heartbeat intervals",
            ));
        }
        if self.append_entries_max == 0 || self.append_bytes_max == 0 {
            return Err(ConfigError("append limits must be positive"));
        }
        if self.inflight_max == 0 {
            return Err(ConfigError("inflight_max must be positive"));
        }
        if self.uncommitted_entries_max == 0 {
            return Err(ConfigError("uncommitted_entries_max must be positive"));
        }
        Ok(())
    }
}
