//! Check runners: one task per HTTP, TCP or TTL check registered on this node. Probes feed
//! the pure rules of `colony-health`; status changes become `CheckUpdate` entries; a service
//! whose check stays critical past `DeregisterCriticalServiceAfter` is deregistered.
//!
//! The runners follow the catalog: a reconciler watches the checks table and starts, restarts
//! or stops runners so that exactly the checks of this node with a definition are running.
//! The same runners serve a server agent (which reads its own store and proposes through
//! Raft) and a client agent (which long-polls a server for its node's checks and sends
//! results through it): both are a [`CheckHost`].

use crate::agent::{Agent, mono_ms, wall_ms};
use crate::metrics::CheckLabels;
use crate::watch_hub::Topic;
use bytes::Bytes;
use colony_health::{CheckTracker, DampingRule, classify_http_status};
use colony_store::{Check, CheckDefinition, Command, HealthStatus, Table};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The HTTP client used by HTTP checks.
pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Consul's default probe timeout for HTTP and TCP checks.
pub const CHECK_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// The most output kept from one probe, in bytes (Consul keeps 4 KiB).
pub const CHECK_OUTPUT_BYTES_MAX: usize = 4 * 1024;

pub(crate) fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

struct CheckShared {
    tracker: Mutex<CheckTracker>,
    /// Woken when a TTL check is updated, to restart its TTL.
    ttl_reset: Notify,
    lifetime_ms: u64,
}

struct RunningCheck {
    definition: CheckDefinition,
    task: JoinHandle<()>,
    shared: Arc<CheckShared>,
}

/// What check runners need from the agent they run in.
pub(crate) trait CheckHost: Send + Sync + 'static {
    /// The node whose checks run here.
    fn node_name(&self) -> &str;
    /// The running checks.
    fn check_manager(&self) -> &CheckManager;
    /// The client HTTP checks probe with.
    fn http_client(&self) -> &HttpClient;
    /// Draws from the agent's random generator (probe spreading).
    fn with_rng<R>(&self, f: impl FnOnce(&mut colony_base::SplitMix64) -> R) -> R;
    /// Counts one probe result.
    fn count_result(&self, kind: &str, status: HealthStatus);
    /// The check's status as the catalog holds it.
    fn catalog_status(&self, check_id: &str) -> Option<HealthStatus>;
    /// Writes a check result or deregistration; `Err` says why it was not written.
    fn submit(
        &self,
        command: Command,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

impl CheckHost for Agent {
    fn node_name(&self) -> &str {
        Agent::node_name(self)
    }

    fn check_manager(&self) -> &CheckManager {
        &self.checks
    }

    fn http_client(&self) -> &HttpClient {
        &self.http_client
    }

    fn with_rng<R>(&self, f: impl FnOnce(&mut colony_base::SplitMix64) -> R) -> R {
        Agent::with_rng(self, f)
    }

    fn count_result(&self, kind: &str, status: HealthStatus) {
        self.metrics()
            .check_results
            .get_or_create(&CheckLabels {
                kind: kind.to_string(),
                status: status.as_str().to_string(),
            })
            .inc();
    }

    fn catalog_status(&self, check_id: &str) -> Option<HealthStatus> {
        self.read(|s| s.check(Agent::node_name(self), check_id).map(|c| c.status))
    }

    async fn submit(&self, command: Command) -> Result<(), String> {
        match self.propose(command).await {
            Ok(applied) => crate::agent::outcome_to_result(applied.outcome)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// The set of running check tasks of this agent.
#[derive(Default)]
pub(crate) struct CheckManager {
    running: Mutex<HashMap<String, RunningCheck>>,
}

impl CheckManager {
    pub(crate) fn stop_all(&self) {
        for (_, check) in self.running.lock().expect("checks lock poisoned").drain() {
            check.task.abort();
        }
    }

    pub(crate) fn reset_ttl(&self, check_id: &str, now_ms: u64, status: HealthStatus) {
        if let Some(check) = self
            .running
            .lock()
            .expect("checks lock poisoned")
            .get(check_id)
        {
            check
                .shared
                .tracker
                .lock()
                .expect("tracker lock poisoned")
                .handle_explicit(now_ms, status);
            check.shared.ttl_reset.notify_one();
        }
    }

    pub(crate) fn observation(&self, check_id: &str) -> Option<(u64, u64)> {
        let running = self.running.lock().expect("checks lock poisoned");
        let check = running.get(check_id)?;
        let observed_mono = check
            .shared
            .tracker
            .lock()
            .expect("tracker lock poisoned")
            .observed_ms();
        // The tracker runs on the monotonic clock; evidence speaks wall time.
        let age_ms = mono_ms().saturating_sub(observed_mono);
        Some((wall_ms().saturating_sub(age_ms), check.shared.lifetime_ms))
    }
}

/// Keeps the running checks in step with the catalog, until shutdown.
pub(crate) fn spawn_reconciler(agent: Arc<Agent>) {
    tokio::spawn(async move {
        let mut shutdown = agent.shutdown_signal();
        loop {
            let mut changes = agent.subscribe(&Topic::Table(Table::Checks));
            let node = agent.node_name().to_string();
            let desired: Vec<Check> = agent.read(|s| s.node_checks(&node).cloned().collect());
            reconcile(&agent, desired);
            tokio::select! {
                _ = changes.changed() => {}
                _ = shutdown.changed() => return,
            }
        }
    });
}

/// Starts, restarts or stops runners so that exactly the checks of `node_checks` that have a
/// definition run, each with the definition it has there.
pub(crate) fn reconcile<H: CheckHost>(host: &Arc<H>, node_checks: Vec<Check>) {
    let desired: HashMap<String, Check> = node_checks
        .into_iter()
        .filter(|c| !c.definition.kind().is_empty())
        .map(|c| (c.id.clone(), c))
        .collect();
    let mut running = host
        .check_manager()
        .running
        .lock()
        .expect("checks lock poisoned");
    running.retain(|id, check| {
        let keep = desired
            .get(id)
            .is_some_and(|d| d.definition == check.definition);
        if !keep {
            check.task.abort();
        }
        keep
    });
    for (id, check) in desired {
        if running.contains_key(&id) {
            continue;
        }
        let rule = DampingRule {
            success_before_passing: check.definition.success_before_passing,
            failures_before_critical: check.definition.failures_before_critical,
        };
        let lifetime_ms = check
            .definition
            .ttl_ms
            .or(check.definition.interval_ms)
            .unwrap_or(0);
        let shared = Arc::new(CheckShared {
            tracker: Mutex::new(CheckTracker::new(rule, check.status, mono_ms())),
            ttl_reset: Notify::new(),
            lifetime_ms,
        });
        let task = tokio::spawn(run_check(host.clone(), check.clone(), shared.clone()));
        tracing::debug!(check = %id, kind = check.definition.kind(), "check runner started");
        running.insert(
            id,
            RunningCheck {
                definition: check.definition,
                task,
                shared,
            },
        );
    }
}

async fn run_check<H: CheckHost>(agent: Arc<H>, check: Check, shared: Arc<CheckShared>) {
    if let Some(ttl_ms) = check.definition.ttl_ms {
        return run_ttl_check(agent, check, shared, ttl_ms).await;
    }
    let interval_ms = check.definition.interval_ms.unwrap_or(10_000).max(1);
    let first = agent.with_rng(|rng| colony_health::first_run_delay_ms(interval_ms, rng));
    tokio::time::sleep(Duration::from_millis(first)).await;
    loop {
        let (result, output) = probe(agent.as_ref(), &check.definition).await;
        agent.count_result(check.definition.kind(), result);
        let now = mono_ms();
        let changed = shared
            .tracker
            .lock()
            .expect("tracker lock poisoned")
            .handle_result(now, result);
        if let Some(status) = changed {
            record_status(&agent, &check, status, output).await;
        }
        if deregister_if_critical_too_long(&agent, &check, &shared).await {
            return;
        }
        let delay = agent.with_rng(|rng| colony_health::next_run_delay_ms(interval_ms, rng));
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
}

async fn run_ttl_check<H: CheckHost>(
    agent: Arc<H>,
    check: Check,
    shared: Arc<CheckShared>,
    ttl_ms: u64,
) {
    loop {
        let ttl = tokio::time::sleep(Duration::from_millis(ttl_ms));
        tokio::select! {
            () = ttl => {}
            () = shared.ttl_reset.notified() => continue,
        }
        let changed = shared
            .tracker
            .lock()
            .expect("tracker lock poisoned")
            .handle_explicit(mono_ms(), HealthStatus::Critical);
        // An expired TTL means critical whatever the tracker believed: an update that raced
        // with this runner's start (applied before the runner was registered, so it never
        // reached the tracker) may have left the catalog passing while the tracker still
        // says critical. The catalog is what clients read, so it decides.
        let catalog = agent.catalog_status(&check.id);
        if changed.is_some() || catalog.is_some_and(|status| status != HealthStatus::Critical) {
            tracing::info!(check = %check.id, "TTL expired");
            record_status(
                &agent,
                &check,
                HealthStatus::Critical,
                "TTL expired".to_string(),
            )
            .await;
        }
        // While critical, wake at the deregistration deadline (if one is set) or on the next
        // update; nothing else can change the outcome, so there is nothing to poll.
        let deadline = check
            .definition
            .deregister_critical_service_after_ms
            .and_then(|after| {
                let tracker = shared.tracker.lock().expect("tracker lock poisoned");
                tracker.deregister_in_ms(mono_ms(), after)
            });
        match deadline {
            Some(wait_ms) => {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(wait_ms)) => {
                        if deregister_if_critical_too_long(&agent, &check, &shared).await {
                            return;
                        }
                        // The deregistration was refused (storage in Floor mode): wait for
                        // the next update, which restarts the TTL.
                        shared.ttl_reset.notified().await;
                    }
                    () = shared.ttl_reset.notified() => {}
                }
            }
            None => shared.ttl_reset.notified().await,
        }
    }
}

async fn record_status<H: CheckHost>(
    agent: &Arc<H>,
    check: &Check,
    status: HealthStatus,
    output: String,
) {
    tracing::info!(check = %check.id, status = status.as_str(), "check status changed");
    let command = Command::CheckUpdate {
        node: agent.node_name().to_string(),
        check_id: check.id.clone(),
        status,
        output,
    };
    if let Err(error) = agent.submit(command).await {
        tracing::warn!(check = %check.id, %error, "could not record check status");
    }
}

async fn deregister_if_critical_too_long<H: CheckHost>(
    agent: &Arc<H>,
    check: &Check,
    shared: &CheckShared,
) -> bool {
    let Some(after_ms) = check.definition.deregister_critical_service_after_ms else {
        return false;
    };
    if check.service_id.is_empty() {
        return false;
    }
    let due = shared
        .tracker
        .lock()
        .expect("tracker lock poisoned")
        .should_deregister(mono_ms(), after_ms);
    if !due {
        return false;
    }
    tracing::info!(
        check = %check.id,
        service = %check.service_id,
        "check critical past DeregisterCriticalServiceAfter, deregistering service"
    );
    let command = Command::CatalogDeregister {
        node: agent.node_name().to_string(),
        service_id: Some(check.service_id.clone()),
        check_id: None,
    };
    match agent.submit(command).await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "could not deregister service");
            false
        }
    }
}

async fn probe<H: CheckHost>(agent: &H, definition: &CheckDefinition) -> (HealthStatus, String) {
    let timeout = Duration::from_millis(
        definition
            .timeout_ms
            .unwrap_or(CHECK_TIMEOUT_MS_DEFAULT)
            .max(1),
    );
    if let Some(url) = &definition.http {
        return probe_http(agent, definition, url, timeout).await;
    }
    if let Some(address) = &definition.tcp {
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(_)) => (
                HealthStatus::Passing,
                format!("TCP connect {address}: Success"),
            ),
            Ok(Err(error)) => (
                HealthStatus::Critical,
                format!("dial tcp {address}: {error}"),
            ),
            Err(_) => (
                HealthStatus::Critical,
                format!("dial tcp {address}: i/o timeout"),
            ),
        };
    }
    (HealthStatus::Critical, "check has no probe".to_string())
}

async fn probe_http<H: CheckHost>(
    agent: &H,
    definition: &CheckDefinition,
    url: &str,
    timeout: Duration,
) -> (HealthStatus, String) {
    let method = definition
        .method
        .clone()
        .unwrap_or_else(|| "GET".to_string());
    let mut request = hyper::Request::builder().method(method.as_str()).uri(url);
    for (name, values) in &definition.header {
        for value in values {
            request = request.header(name, value);
        }
    }
    let body = Full::new(Bytes::from(definition.body.clone().unwrap_or_default()));
    let request = match request.body(body) {
        Ok(request) => request,
        Err(error) => {
            return (
                HealthStatus::Critical,
                format!("invalid HTTP check request: {error}"),
            );
        }
    };
    let response = match tokio::time::timeout(timeout, agent.http_client().request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            let detail =
                std::error::Error::source(&error).map_or(error.to_string(), |s| s.to_string());
            return (
                HealthStatus::Critical,
                format!("HTTP {method} {url}: {detail}"),
            );
        }
        Err(_) => {
            return (
                HealthStatus::Critical,
                format!(
                    "HTTP {method} {url}: timed out after {}ms",
                    timeout.as_millis()
                ),
            );
        }
    };
    let status = response.status();
    let body = match tokio::time::timeout(timeout, response.into_body().collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => Bytes::new(),
    };
    let shown = &body[..body.len().min(CHECK_OUTPUT_BYTES_MAX)];
    let output = format!(
        "HTTP {method} {url}: {} {} Output: {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        String::from_utf8_lossy(shown)
    );
    (classify_http_status(status.as_u16()), output)
}
