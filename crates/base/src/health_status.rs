//! The health status vocabulary shared by checks, the catalog and the API.

use serde::{Deserialize, Serialize};

/// Health status of a check, ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HealthStatus {
    /// Healthy.
    Passing,
    /// Working but degraded.
    Warning,
    /// Failing.
    Critical,
}

impl HealthStatus {
    /// The name Consul uses on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            HealthStatus::Passing => "passing",
            HealthStatus::Warning => "warning",
            HealthStatus::Critical => "critical",
        }
    }

    /// Parses Consul's status name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "passing" => Some(HealthStatus::Passing),
            "warning" => Some(HealthStatus::Warning),
            "critical" => Some(HealthStatus::Critical),
            _ => None,
        }
    }
}
