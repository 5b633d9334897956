//! A client agent's anti-entropy, as Consul's agents run it: the catalog's view of this node
//! is made to match the agent's own registrations (`crate::local_state`). Services and checks
//! the agent keeps but the catalog lacks are registered again (from the request that made
//! them); services and checks the catalog holds for this node but the agent does not keep
//! are deregistered. It runs at start-up, whenever a change could not reach a server, and
//! every minute (plus jitter, so clients spread); a failed round is retried within seconds.
//!
//! Left alone: the node's `serfHealth` check (the servers' membership check) and maintenance
//! checks (written by the maintenance endpoints, which the servers keep).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use colony_base::SplitMix64;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use crate::forward::ClientForwarder;
use crate::local_state::{Kind, Registration};

/// Time between two rounds that found nothing to do, before jitter.
const SYNC_INTERVAL: Duration = Duration::from_secs(60);
/// Jitter added to the interval, at most.
const SYNC_JITTER: Duration = Duration::from_secs(15);
/// Time before a failed round (no server, a server error) is retried.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// What one round changed in the catalog.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Registrations written again.
    pub registered: usize,
    /// Services and checks removed from this node.
    pub deregistered: usize,
    /// Registrations the servers refused (kept here; logged).
    pub refused: usize,
}

/// Anti-entropy's counters since start-up, for the client agent's metrics.
#[derive(Debug, Default)]
pub struct SyncCounters {
    rounds_ok: AtomicU64,
    rounds_failed: AtomicU64,
    registered: AtomicU64,
    deregistered: AtomicU64,
    refused: AtomicU64,
}

impl SyncCounters {
    fn count(&self, result: &Result<SyncReport, String>) {
        match result {
            Ok(report) => {
                self.rounds_ok.fetch_add(1, Ordering::Relaxed);
                self.registered
                    .fetch_add(report.registered as u64, Ordering::Relaxed);
                self.deregistered
                    .fetch_add(report.deregistered as u64, Ordering::Relaxed);
                self.refused
                    .fetch_add(report.refused as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.rounds_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// `(name, help, value)` of each counter, names without a prefix.
    pub fn values(&self) -> [(&'static str, &'static str, u64); 5] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            (
                "rounds_ok",
                "Anti-entropy rounds that completed.",
                get(&self.rounds_ok),
            ),
            (
                "rounds_failed",
                "Anti-entropy rounds that failed (no server, a server error).",
                get(&self.rounds_failed),
            ),
            (
                "registered",
                "Registrations anti-entropy wrote to the catalog.",
                get(&self.registered),
            ),
            (
                "deregistered",
                "Services and checks anti-entropy removed from this node.",
                get(&self.deregistered),
            ),
            (
                "refused",
                "Registrations a server refused during anti-entropy.",
                get(&self.refused),
            ),
        ]
    }
}

/// Starts anti-entropy for the client agent behind `forwarder`.
pub fn spawn(forwarder: Arc<ClientForwarder>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let seed = colony_runtime::wall_ms() ^ (u64::from(std::process::id()) << 32);
        let mut rng = SplitMix64::new(seed);
        let mut failing = false;
        loop {
            let result = sync_once(&forwarder).await;
            forwarder.local().sync_counters.count(&result);
            let delay = match result {
                Ok(report) => {
                    if report != SyncReport::default() {
                        tracing::info!(
                            registered = report.registered,
                            deregistered = report.deregistered,
                            refused = report.refused,
                            "anti-entropy: the catalog now matches this agent's registrations"
                        );
                    }
                    failing = false;
                    let jitter_ms = rng.below(SYNC_JITTER.as_millis() as u64 + 1);
                    SYNC_INTERVAL + Duration::from_millis(jitter_ms)
                }
                Err(error) => {
                    // Alone, every round fails: membership already says so.
                    if failing || !forwarder.knows_a_server() {
                        tracing::debug!(%error, "anti-entropy round failed; retrying");
                    } else {
                        tracing::warn!(%error, "anti-entropy round failed; retrying every second");
                    }
                    failing = true;
                    RETRY_DELAY
                }
            };
            tokio::select! {
                () = forwarder.local().wake.notified() => {}
                () = tokio::time::sleep(delay) => {}
            }
        }
    })
}

/// Check IDs anti-entropy never removes.
fn is_servers_check(id: &str) -> bool {
    id == "serfHealth" || id == "_node_maintenance" || id.starts_with("_service_maintenance:")
}

/// One round: compare the catalog's view of this node with the agent's registrations and
/// repair the difference.
///
/// # Errors
/// No server answered, or one failed; the round is retried.
pub async fn sync_once(forwarder: &ClientForwarder) -> Result<SyncReport, String> {
    let local = forwarder.local();
    let _changing = local.changing.lock().await;
    let services = catalog_map(forwarder, "/v1/agent/services").await?;
    let checks = catalog_map(forwarder, "/v1/agent/checks").await?;
    let wanted = local.registrations();
    let mut report = SyncReport::default();
    let mut register = Vec::new();
    for (id, registration) in &wanted.services {
        let complete = registration
            .check_ids
            .iter()
            .all(|c| checks.contains_key(c));
        if registration.pending || !services.contains_key(id) || !complete {
            register.push((Kind::Service, id, registration));
        }
    }
    for (id, registration) in &wanted.checks {
        if registration.pending || !checks.contains_key(id) {
            register.push((Kind::Check, id, registration));
        }
    }
    // Services first, so that a check of a service finds it.
    for (kind, id, registration) in register {
        let (status, body) = forwarder
            .exchange(
                "PUT",
                &registration.uri,
                registration.body.clone().into_bytes(),
            )
            .await?;
        if status.is_success() {
            report.registered += 1;
            if registration.pending {
                let synced = Registration {
                    pending: false,
                    ..registration.clone()
                };
                local.set(kind, id, Some(synced))?;
            }
        } else if status.is_client_error() {
            tracing::warn!(
                uri = %registration.uri,
                %status,
                answer = %String::from_utf8_lossy(&body).trim(),
                "anti-entropy: a server refuses a registration this agent keeps"
            );
            report.refused += 1;
        } else {
            return Err(format!(
                "a server answered {status} to {}: {}",
                registration.uri,
                String::from_utf8_lossy(&body).trim()
            ));
        }
    }
    let mut remove = Vec::new();
    for id in services.keys() {
        if !wanted.services.contains_key(id) {
            remove.push(format!("/v1/agent/service/deregister/{}", encode(id)));
        }
    }
    let owned: HashSet<&str> = wanted
        .services
        .values()
        .flat_map(|r| r.check_ids.iter().map(String::as_str))
        .chain(wanted.checks.keys().map(String::as_str))
        .collect();
    for (id, check) in &checks {
        let service_id = check
            .get("ServiceID")
            .and_then(Value::as_str)
            .unwrap_or_default();
        // A check of a service being removed goes with it.
        let goes_with_service = !service_id.is_empty() && !wanted.services.contains_key(service_id);
        if owned.contains(id.as_str()) || is_servers_check(id) || goes_with_service {
            continue;
        }
        remove.push(format!("/v1/agent/check/deregister/{}", encode(id)));
    }
    for uri in remove {
        let (status, body) = forwarder.exchange("PUT", &uri, Vec::new()).await?;
        // Gone already (removed meanwhile) is as good as removed.
        if !status.is_success() && status != axum::http::StatusCode::NOT_FOUND {
            return Err(format!(
                "a server answered {status} to {uri}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        report.deregistered += 1;
    }
    Ok(report)
}

fn encode(id: &str) -> String {
    utf8_percent_encode(id, NON_ALPHANUMERIC).to_string()
}

/// A JSON object answer (`/v1/agent/services`, `/v1/agent/checks`) of the servers, for this
/// node.
async fn catalog_map(
    forwarder: &ClientForwarder,
    uri: &str,
) -> Result<BTreeMap<String, Value>, String> {
    let (status, body) = forwarder.exchange("GET", uri, Vec::new()).await?;
    if !status.is_success() {
        return Err(format!(
            "a server answered {status} to {uri}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    serde_json::from_slice(&body)
        .map_err(|e| format!("a server's answer to {uri} is not a JSON object: {e}"))
}
