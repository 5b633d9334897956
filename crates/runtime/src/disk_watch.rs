//! Gray failure of a replicated server's disk: each server compares its own fsync latency
//! with the other servers' about once a second. A server whose disk is much slower marks its
//! storage subsystem Degraded; if it leads, it hands leadership to the server with the
//! fastest disk (every write waits for the leader's fsync, so a slow leader slows everyone).
//!
//! The decision is `colony_modes::slow_disk`'s; this module measures, asks and acts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use colony_modes::Signal;
use colony_modes::slow_disk::{LatencySummary, LatencyWindow, SlowDiskDetector, SlowDiskPolicy};

use crate::agent::Agent;
use crate::raft_node::RaftInput;
use crate::rpc::{RpcRequest, RpcResponse};

/// How often a server compares disks.
const ROUND: Duration = Duration::from_secs(1);
/// How long a peer may take to say how its disk is doing.
const ASK_TIMEOUT: Duration = Duration::from_millis(800);
/// Samples kept per server, and for how long.
const WINDOW_SAMPLES: usize = 256;
const WINDOW_AGE_MS: u64 = 30_000;

/// This server's recent fsync latencies, written by the raft thread after every fsync of
/// log entries and read by the disk watch and by peers (`RpcRequest::DiskStats`).
pub(crate) struct FsyncLatencies {
    epoch: Instant,
    window: Mutex<LatencyWindow>,
}

impl FsyncLatencies {
    pub(crate) fn new() -> Self {
        FsyncLatencies {
            epoch: Instant::now(),
            window: Mutex::new(LatencyWindow::new(WINDOW_SAMPLES, WINDOW_AGE_MS)),
        }
    }

    /// Records one fsync that took `took`.
    pub(crate) fn record(&self, took: Duration) {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        self.window
            .lock()
            .expect("fsync window poisoned")
            .record(now_ms, took.as_micros() as u64);
    }

    /// The window's sample count and p99 now.
    pub(crate) fn summary(&self) -> LatencySummary {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        self.window
            .lock()
            .expect("fsync window poisoned")
            .summary(now_ms)
    }
}

/// Runs the comparison on a replicated server until it stops (nothing on other agents).
pub(crate) fn spawn_disk_watch(agent: Arc<Agent>, policy: SlowDiskPolicy) {
    if agent.replicated().is_none() {
        return;
    }
    tokio::spawn(async move {
        let started = Instant::now();
        let mut detector = SlowDiskDetector::new(policy);
        let mut stop = agent.shutdown_signal();
        let mut ticker = tokio::time::interval(ROUND);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            let Some(replicated) = agent.replicated() else {
                return;
            };
            let status = replicated.status();
            if !status.is_member {
                continue;
            }
            let own = replicated.fsync.summary();
            let peers = ask_peers(&agent, &status.voters).await;
            let now_ms = started.elapsed().as_millis() as u64;
            let verdict = detector.evaluate(now_ms, own, &peers, status.is_leader);
            let reason = match verdict.compared {
                Some((own_us, median_us)) => format!(
                    "fsync p99 {:.1} ms here, {:.1} ms median on the other servers (slow at {}x)",
                    own_us as f64 / 1_000.0,
                    median_us as f64 / 1_000.0,
                    detector.policy().factor
                ),
                None => String::new(),
            };
            if let Some(signal) = verdict.signal {
                agent.storage_mode().signal(
                    agent.metrics(),
                    crate::agent::mono_ms(),
                    signal,
                    &reason,
                );
                if signal == Signal::Impaired && !status.is_leader {
                    tracing::debug!(%reason, "this server's disk is slow");
                }
            }
            if let Some(target) = verdict.transfer_to {
                tracing::warn!(
                    %reason,
                    to = %crate::cluster::server_id_text(target),
                    "this leader's disk is slow; transferring leadership"
                );
                if let Err(error) = replicated
                    .ask(|reply| RaftInput::Transfer(target, reply))
                    .await
                {
                    tracing::warn!(%error, "leadership transfer refused");
                }
            }
        }
    });
}

/// Every other voter's disk summary, asked concurrently; servers that do not answer in
/// time are left out.
async fn ask_peers(agent: &Arc<Agent>, voters: &[u64]) -> Vec<(u64, LatencySummary)> {
    let Some(replicated) = agent.replicated() else {
        return Vec::new();
    };
    let mut asks = tokio::task::JoinSet::new();
    for &id in voters {
        if id == replicated.raft_id {
            continue;
        }
        let Some(addr) = replicated.directory.get(id).map(|info| info.rpc_addr) else {
            continue;
        };
        let agent = agent.clone();
        asks.spawn(async move {
            let replicated = agent.replicated()?;
            match replicated
                .rpc
                .call(addr, RpcRequest::DiskStats, ASK_TIMEOUT)
                .await
            {
                Ok(RpcResponse::DiskStats { samples, p99_us }) => {
                    Some((id, LatencySummary { samples, p99_us }))
                }
                _ => None,
            }
        });
    }
    let mut peers = Vec::new();
    while let Some(answer) = asks.join_next().await {
        if let Ok(Some(peer)) = answer {
            peers.push(peer);
        }
    }
    peers.sort_unstable_by_key(|&(id, _)| id);
    peers
}
