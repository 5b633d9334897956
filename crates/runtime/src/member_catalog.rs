//! Keeps the catalog in step with membership, as Consul's leader does with Serf events: a
//! member that is alive gets a node entry with a passing `serfHealth` check, a failed member's
//! check goes critical (so its services drop out of `?passing` answers), and a member that
//! left is deregistered.

use std::collections::BTreeMap;
use std::sync::Arc;

use colony_base::HealthStatus;
use colony_store::{CatalogRegistration, Command, NODE_HEALTH_CHECK_ID, Node};

use crate::agent::{Agent, node_health_check};
use crate::gossip::{Gossip, MemberEvent};
use colony_swim::State;

/// Spawns the task that mirrors membership events into the catalog of `agent`.
pub fn spawn(agent: Arc<Agent>, gossip: Arc<Gossip>) {
    let mut events = gossip.subscribe();
    tokio::spawn(async move {
        let mut stop = agent.shutdown_signal();
        let mut was_leader = false;
        let mut tick = tokio::time::interval(FULL_RECONCILE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                _ = tick.tick() => {
                    // The leader (or a single-node server) also compares the whole membership
                    // with the catalog: at once when it takes over (events seen while another
                    // server led, during the election, or before this task subscribed, as when
                    // `--join` ran at start-up, were not mirrored), then periodically.
                    let is_leader = agent.raft_status().is_none_or(|s| s.is_leader);
                    if is_leader {
                        reconcile_all(&agent, &gossip, !was_leader).await;
                    }
                    was_leader = is_leader;
                    continue;
                }
                _ = stop.changed() => return,
            };
            let event = match event {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "catalog reconciliation fell behind membership events"
                    );
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if let Err(error) = reconcile(&agent, &gossip, &event).await {
                tracing::warn!(?event, %error, "catalog reconciliation failed");
            }
        }
    });
}

/// How often a replicated leader checks that the catalog matches membership.
const FULL_RECONCILE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Mirrors every member's current state (`took_over`: log that the pass follows a change of
/// leader).
async fn reconcile_all(agent: &Agent, gossip: &Gossip, took_over: bool) {
    let view = gossip.view();
    if took_over && agent.raft_status().is_some() {
        tracing::info!(
            members = view.members.len(),
            "leader: reconciling membership into the catalog"
        );
    }
    for member in &view.members {
        let event = match member.state {
            State::Alive | State::Suspect => MemberEvent::Alive(member.name.clone()),
            State::Dead => MemberEvent::Failed(member.name.clone()),
            State::Left => MemberEvent::Left(member.name.clone()),
        };
        if let Err(error) = reconcile(agent, gossip, &event).await {
            tracing::warn!(?event, %error, "catalog reconciliation failed");
        }
    }
}

async fn reconcile(agent: &Agent, gossip: &Gossip, event: &MemberEvent) -> Result<(), String> {
    if agent.raft_status().is_some_and(|status| !status.is_leader) {
        // Among replicated servers, the leader alone mirrors membership (as Consul's does).
        return Ok(());
    }
    let command = match event {
        MemberEvent::Alive(name) | MemberEvent::Failed(name) => {
            let view = gossip.view();
            let Some(member) = view.members.iter().find(|m| &m.name == name) else {
                return Ok(());
            };
            let alive = matches!(event, MemberEvent::Alive(_));
            let address = member.addr.ip().to_string();
            let status = if alive {
                HealthStatus::Passing
            } else {
                HealthStatus::Critical
            };
            let current = agent.read(|s| {
                let node_ok = s.node(name).is_some_and(|n| n.address == address);
                let check_ok = s
                    .check(name, NODE_HEALTH_CHECK_ID)
                    .is_some_and(|c| c.status == status);
                node_ok && check_ok
            });
            if current {
                return Ok(());
            }
            let existing_id = agent.read(|s| s.node(name).map(|n| n.id.clone()));
            Command::CatalogRegister(CatalogRegistration {
                node: Node {
                    id: existing_id.unwrap_or_default(),
                    name: name.clone(),
                    address: address.clone(),
                    tagged_addresses: BTreeMap::from([
                        ("lan".to_string(), address.clone()),
                        ("wan".to_string(), address),
                    ]),
                    meta: BTreeMap::new(),
                    create_index: 0,
                    modify_index: 0,
                },
                service: None,
                checks: vec![node_health_check(name, status)],
                replace_service_checks: false,
            })
        }
        MemberEvent::Left(name) | MemberEvent::Reaped(name) => {
            if agent.read(|s| s.node(name).is_none()) {
                return Ok(());
            }
            Command::CatalogDeregister {
                node: name.clone(),
                service_id: None,
                check_id: None,
            }
        }
    };
    agent
        .propose(command)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
