//! Consul's HTTP API dialect.

pub(crate) mod agent;
pub(crate) mod catalog;
pub(crate) mod kv;
pub(crate) mod session;
#[allow(missing_docs)]
pub mod types;

use crate::AppState;
use crate::blocking;
use crate::error::{ApiError, ApiResult};
use crate::query::Query;
use crate::respond::{StoreAnswer, evidence_json};
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use colony_base::{Evidence, Freshness, HlcTimestamp, Lifetime};
use colony_runtime::{Agent, Topic, outcome_to_result};
use colony_store::{Check, Command, Table};
use types::CheckJson;

/// Proposes a command that answers `Done` (or is rejected); returns the index it applied at.
pub(crate) async fn propose_done(agent: &Agent, command: Command) -> ApiResult<u64> {
    let applied = agent.propose(command).await?;
    outcome_to_result(applied.outcome).map_err(ApiError::from)?;
    Ok(applied.index)
}

/// Evidence for a write answer: the write is durable and applied at `index`.
pub(crate) fn write_evidence(agent: &Agent, index: u64, what: &str) -> Evidence {
    agent.store_evidence(index, format!("{what}@index={index}"))
}

/// A `true`/`false` JSON answer, as Consul's KV and catalog writes give.
pub(crate) fn bool_answer(value: bool, index: u64, evidence: Evidence) -> Response {
    StoreAnswer::json(&value, index, evidence).into_response()
}

/// A check as JSON with its own evidence: a check this agent runs is fresh while its last
/// observation is younger than its interval or TTL; other checks are as fresh as the store.
pub(crate) fn check_json(agent: &Agent, check: &Check) -> CheckJson {
    let now = agent.now_ms();
    let (observed_ms, lifetime_ms, source) = match agent.check_observation(&check.id) {
        Some((observed, lifetime)) if check.node == agent.node_name() => {
            (observed, lifetime, "agent")
        }
        _ => (check.status_observed_ms, 0, "catalog"),
    };
    let age_ms = now.saturating_sub(observed_ms);
    let freshness = if lifetime_ms == 0 {
        Freshness::Eventual
    } else if age_ms <= lifetime_ms {
        Freshness::Fresh
    } else {
        Freshness::BoundedStale {
            age_ms,
            bound_ms: age_ms,
        }
    };
    let evidence = Evidence {
        scope: format!("node:{}", check.node),
        source: source.to_string(),
        observed: HlcTimestamp {
            physical_ms: observed_ms,
            logical: 0,
        },
        observed_by: check.node.clone(),
        lifetime: Lifetime::Ms(lifetime_ms),
        binding: format!("check:{}:{}", check.node, check.id),
        freshness,
    };
    CheckJson::from_check(check, evidence_json(&evidence))
}

fn topics(tables: &[Table]) -> Vec<Topic> {
    tables.iter().map(|t| Topic::Table(*t)).collect()
}

fn reject_filter(query: &Query) -> ApiResult<()> {
    if query.get("filter").is_some_and(|f| !f.is_empty()) {
        return Err(ApiError::bad_request(
            "filter expressions are not supported by colony yet",
        ));
    }
    Ok(())
}

/// Runs a blocking read over `tables` (`?index`, `?wait`, `?dc`; `?filter` refused) and
/// answers with JSON, the tables' index and store evidence.
pub(crate) async fn table_answer<T: serde::Serialize>(
    agent: &Agent,
    raw: Option<String>,
    tables: &[Table],
    binding: String,
    compute: impl Fn(&colony_store::StateMachine, &Query) -> T,
) -> ApiResult<Response> {
    let query = Query::parse(raw.as_deref());
    query.check_datacenter(&agent.config().datacenter)?;
    reject_filter(&query)?;
    let (value, index) = blocking::run(agent, query.blocking()?, &topics(tables), |s| {
        (compute(s, &query), s.max_table_index(tables))
    })
    .await;
    let evidence = agent.store_evidence(index, binding);
    Ok(StoreAnswer::json(&value, index, evidence).into_response())
}

pub(crate) async fn status_leader(State(app): State<AppState>) -> Response {
    let agent = &app.agent;
    let leader = match agent.raft_status() {
        None => format!("{}:8300", agent.config().advertise_addr),
        Some(status) => status
            .leader
            .and_then(|id| agent.server_rpc_addr(id))
            .map_or_else(String::new, |addr| addr.to_string()),
    };
    let index = agent.read(|s| s.applied_index());
    StoreAnswer::json(&leader, index, agent.local_evidence("raft:leader".into())).into_response()
}

pub(crate) async fn status_peers(State(app): State<AppState>) -> Response {
    let agent = &app.agent;
    let peers: Vec<String> = match agent.raft_status() {
        None => vec![format!("{}:8300", agent.config().advertise_addr)],
        Some(status) => status
            .voters
            .iter()
            .filter_map(|&id| agent.server_rpc_addr(id))
            .map(|addr| addr.to_string())
            .collect(),
    };
    let index = agent.read(|s| s.applied_index());
    StoreAnswer::json(&peers, index, agent.local_evidence("raft:peers".into())).into_response()
}

/// `GET /v1/operator/raft/configuration`: the voters, as Consul lists them.
pub(crate) async fn raft_configuration(State(app): State<AppState>) -> Response {
    let agent = &app.agent;
    let index = agent.read(|s| s.applied_index());
    let servers: Vec<serde_json::Value> = match agent.raft_status() {
        None => vec![serde_json::json!({
            "ID": agent.node_id(),
            "Node": agent.node_name(),
            "Address": format!("{}:8300", agent.config().advertise_addr),
            "Leader": true,
            "ProtocolVersion": "3",
            "Voter": true,
            "LastIndex": index,
        })],
        Some(status) => {
            let known = agent.known_servers();
            status
                .voters
                .iter()
                .map(|&id| {
                    let info = known.iter().find(|(k, _)| *k == id).map(|(_, info)| info);
                    serde_json::json!({
                        "ID": colony_runtime::cluster::server_id_text(id),
                        "Node": info.map_or("", |i| i.name.as_str()),
                        "Address": info.map_or_else(String::new, |i| i.rpc_addr.to_string()),
                        "Leader": status.leader == Some(id),
                        "ProtocolVersion": "3",
                        "Voter": true,
                        "LastIndex": status.last_index,
                    })
                })
                .collect()
        }
    };
    let body = serde_json::json!({ "Servers": servers, "Index": index });
    StoreAnswer::json(
        &body,
        index,
        agent.local_evidence("raft:configuration".into()),
    )
    .into_response()
}

/// `DELETE /v1/operator/raft/peer?id=...` (or `?address=...`): removes a voter.
pub(crate) async fn raft_remove_peer(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let query = Query::parse(raw.as_deref());
    let peer = query
        .get("id")
        .or_else(|| query.get("address"))
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::bad_request("Must specify either ?id with the server's ID or ?address with IP:port of peer to remove"))?;
    app.agent.remove_peer(peer).await?;
    Ok(axum::http::StatusCode::OK.into_response())
}
