//! `/v1/session/*`: sessions, the leases behind locks.

use super::types::{SessionJson, SessionRequest};
use super::{bool_answer, table_answer, write_evidence};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::json::decode;
use crate::query::Query;
use crate::respond::StoreAnswer;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use colony_base::format_go_duration;
use colony_store::{NODE_HEALTH_CHECK_ID, Session, SessionBehavior, Table};
use serde_json::json;

/// Consul's default lock delay.
pub(crate) const LOCK_DELAY_MS_DEFAULT: u64 = 15_000;
/// Consul's longest session TTL.
pub(crate) const SESSION_TTL_MS_MAX: u64 = 24 * 3600 * 1000;
/// Consul's longest lock delay.
pub(crate) const LOCK_DELAY_MS_MAX: u64 = 60_000;

pub(crate) async fn create(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ApiResult<Response> {
    let agent = &app.agent;
    Query::parse(raw.as_deref()).check_datacenter(&agent.config().datacenter)?;
    let request: SessionRequest = if body.iter().all(u8::is_ascii_whitespace) {
        SessionRequest::default()
    } else {
        decode(&body)?
    };
    let ttl_ms = request.ttl.map_or(0, |d| d.0);
    let ttl_min = agent.config().session_ttl_ms_min;
    if ttl_ms != 0 && !(ttl_min..=SESSION_TTL_MS_MAX).contains(&ttl_ms) {
        return Err(ApiError::bad_request(format!(
            "Invalid Session TTL '{}', must be between [{}={}]",
            format_go_duration(ttl_ms),
            format_go_duration(ttl_min),
            format_go_duration(SESSION_TTL_MS_MAX)
        )));
    }
    let lock_delay_ms = request.lock_delay.map_or(LOCK_DELAY_MS_DEFAULT, |d| d.0);
    if lock_delay_ms > LOCK_DELAY_MS_MAX {
        return Err(ApiError::bad_request(format!(
            "Invalid LockDelay '{}', must be at most {}",
            format_go_duration(lock_delay_ms),
            format_go_duration(LOCK_DELAY_MS_MAX)
        )));
    }
    let behavior = match request.behavior.as_deref() {
        None | Some("") | Some("release") => SessionBehavior::Release,
        Some("delete") => SessionBehavior::Delete,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid Behavior setting {other:?}: must be release or delete"
            )));
        }
    };
    let node_checks = match (request.checks, request.node_checks) {
        (None, None) => vec![NODE_HEALTH_CHECK_ID.to_string()],
        (checks, node_checks) => {
            let mut all = checks.unwrap_or_default();
            all.extend(node_checks.unwrap_or_default());
            all.dedup();
            all
        }
    };
    let session = Session {
        id: String::new(),
        name: request.name.unwrap_or_default(),
        node: request
            .node
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| crate::forward::acting_node(agent)),
        node_checks,
        service_checks: request
            .service_checks
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect(),
        behavior,
        ttl_ms,
        lock_delay_ms,
        lease_id: 0,
        create_index: 0,
        modify_index: 0,
    };
    let id = agent.create_session(session).await.map_err(|e| match e {
        // Consul refuses sessions on missing or critical checks with a 500 whose message names
        // the check; a 400 says more precisely that the request cannot succeed as sent.
        colony_runtime::AgentError::NotFound(message) => ApiError::bad_request(message),
        other => other.into(),
    })?;
    let index = agent.read(|s| s.applied_index());
    let evidence = agent.store_evidence(index, format!("session:{id}"));
    Ok(StoreAnswer::json(&json!({ "ID": id }), index, evidence).into_response())
}

pub(crate) async fn destroy(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let agent = &app.agent;
    agent.destroy_session(&id).await?;
    let index = agent.read(|s| s.applied_index());
    Ok(bool_answer(
        true,
        index,
        write_evidence(agent, index, &format!("session:{id}")),
    ))
}

pub(crate) async fn renew(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let agent = &app.agent;
    let session = agent
        .renew_session(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Session id '{id}' not found")))?;
    let index = agent.read(|s| s.table_index(Table::Sessions).max(1));
    let evidence = agent.store_evidence(index, format!("session:{id}"));
    Ok(StoreAnswer::json(&[SessionJson::from_session(&session)], index, evidence).into_response())
}

async fn sessions_answer(
    app: &AppState,
    raw: Option<String>,
    binding: String,
    select: impl Fn(&Session) -> bool,
) -> ApiResult<Response> {
    table_answer(&app.agent, raw, &[Table::Sessions], binding, |s, _| {
        s.sessions()
            .filter(|x| select(x))
            .map(SessionJson::from_session)
            .collect::<Vec<_>>()
    })
    .await
}

pub(crate) async fn info(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    sessions_answer(&app, raw, format!("session:{id}"), |s| s.id == id).await
}

pub(crate) async fn list(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    sessions_answer(&app, raw, "sessions".to_string(), |_| true).await
}

pub(crate) async fn node(
    State(app): State<AppState>,
    Path(node): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    sessions_answer(&app, raw, format!("sessions:node:{node}"), |s| {
        s.node == node
    })
    .await
}
