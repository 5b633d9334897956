//! `/v1/agent/*`: this agent's services, checks, maintenance, members and metrics.

use super::types::{AgentServiceJson, CheckRequest, CheckUpdateRequest, ServiceRequest};
use super::{check_json, propose_done};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::forward::{acting_node, acting_node_record};
use crate::json::decode;
use crate::query::Query;
use crate::respond::{StoreAnswer, local_json};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use colony_runtime::{Agent, Topic};
use colony_store::{
    CatalogRegistration, Check, CheckDefinition, Command, HealthStatus, Service, Table, Weights,
};
use serde_json::json;
use std::collections::BTreeMap;

/// The ID of the node maintenance check, as Consul names it.
pub(crate) const NODE_MAINTENANCE_CHECK_ID: &str = "_node_maintenance";
/// The prefix of service maintenance check IDs, as Consul names them.
pub(crate) const SERVICE_MAINTENANCE_PREFIX: &str = "_service_maintenance:";

pub(crate) async fn self_info(State(app): State<AppState>) -> Response {
    let agent = &app.agent;
    let config = agent.config();
    let body = json!({
        "Config": {
            "Datacenter": config.datacenter,
            "NodeName": config.node_name,
            "NodeID": agent.node_id(),
            "Server": config.server,
            "Revision": "",
            "Version": env!("CARGO_PKG_VERSION"),
            "BuildDate": "",
        },
        "Member": member_json(agent),
        "Meta": {},
        "Stats": {
            "colony": {
                "storage_mode": agent.storage_mode().mode().as_str(),
                "applied_index": agent.read(|s| s.applied_index()).to_string(),
            }
        },
        "DebugConfig": {
            "DataDir": config.data_dir.display().to_string(),
            "HTTPAddr": config.http_addr,
            "DevMode": config.dev,
        },
        "xDS": null,
    });
    local_json(&body, &agent.local_evidence("agent:self".into()))
}

fn member_json(agent: &Agent) -> serde_json::Value {
    let config = agent.config();
    json!({
        "Name": config.node_name,
        "Addr": config.advertise_addr,
        "Port": 8301,
        "Tags": {
            "dc": config.datacenter,
            "id": agent.node_id(),
            "role": "consul",
            "vsn": "2",
            "build": env!("CARGO_PKG_VERSION"),
            "port": "8300",
            "bootstrap": "1",
        },
        "Status": 1,
        "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
        "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
    })
}

pub(crate) async fn services(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let agent = &app.agent;
    let dc = agent.config().datacenter.clone();
    let blocking = Query::parse(raw.as_deref()).blocking()?;
    let topics = [Topic::Table(Table::Services)];
    let node = acting_node(agent);
    let (services, index) = crate::blocking::run(agent, blocking, &topics, |s| {
        let services: BTreeMap<String, AgentServiceJson> = s
            .node_services(&node)
            .map(|svc| {
                (
                    svc.id.clone(),
                    AgentServiceJson::from_service(svc, &dc, false),
                )
            })
            .collect();
        (services, s.max_table_index(&[Table::Services]))
    })
    .await;
    let evidence = agent.local_evidence("agent:services".into());
    Ok(StoreAnswer::json(&services, index, evidence).into_response())
}

pub(crate) async fn service(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let agent = &app.agent;
    let dc = agent.config().datacenter.clone();
    let node = acting_node(agent);
    let service = agent
        .read(|s| {
            s.service(&node, &id)
                .map(|svc| AgentServiceJson::from_service(svc, &dc, false))
        })
        .ok_or_else(|| ApiError::not_found(format!("unknown service ID: {id}")))?;
    Ok(local_json(
        &service,
        &agent.local_evidence(format!("service:{id}")),
    ))
}

pub(crate) async fn checks(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let agent = &app.agent;
    let blocking = Query::parse(raw.as_deref()).blocking()?;
    let topics = [Topic::Table(Table::Checks)];
    let node = acting_node(agent);
    let (checks, index) = crate::blocking::run(agent, blocking, &topics, |s| {
        let checks: BTreeMap<String, _> = s
            .node_checks(&node)
            .map(|c| (c.id.clone(), check_json(agent, c)))
            .collect();
        (checks, s.max_table_index(&[Table::Checks]))
    })
    .await;
    let evidence = agent.local_evidence("agent:checks".into());
    Ok(StoreAnswer::json(&checks, index, evidence).into_response())
}

pub(crate) async fn register_service(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ApiResult<Response> {
    let query = Query::parse(raw.as_deref());
    let request: ServiceRequest = decode(&body)?;
    let agent = &app.agent;
    let mut registration = service_registration(agent, request)?;
    registration.replace_service_checks = query.has("replace-existing-checks")
        && query.go_bool("replace-existing-checks")? != Some(false);
    propose_done(agent, Command::CatalogRegister(registration)).await?;
    Ok(ok_empty(agent))
}

/// Builds the catalog registration for a service registered at this agent.
fn service_registration(agent: &Agent, request: ServiceRequest) -> ApiResult<CatalogRegistration> {
    let (service, checks) = service_and_checks(request, acting_node(agent), agent.now_ms())?;
    let node = acting_node_record(agent)?;
    Ok(CatalogRegistration {
        node,
        service: Some(service),
        checks,
        replace_service_checks: false,
    })
}

/// Validates a service registration for `node` and builds the service and its checks
/// (a client agent validates with this before it keeps a registration of its own).
pub(crate) fn service_and_checks(
    request: ServiceRequest,
    node: String,
    now_ms: u64,
) -> ApiResult<(Service, Vec<Check>)> {
    let name = request
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("Missing service name"))?;
    let id = request
        .id
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| name.clone());
    if request.kind.as_deref().is_some_and(|k| !k.is_empty()) {
        return Err(ApiError::bad_request(
            "Service Kind (connect proxies, gateways) is not supported by colony",
        ));
    }
    let weights = request.weights.map_or(Weights::default(), |w| Weights {
        passing: w.passing,
        warning: w.warning,
    });
    if weights.passing == 0 {
        return Err(ApiError::bad_request("Passing must be greater than 0"));
    }
    let service = Service {
        node,
        id: id.clone(),
        name: name.clone(),
        tags: request.tags.unwrap_or_default(),
        address: request.address.unwrap_or_default(),
        port: request.port.unwrap_or(0),
        meta: request.meta.unwrap_or_default(),
        weights,
        enable_tag_override: request.enable_tag_override.unwrap_or(false),
        create_index: 0,
        modify_index: 0,
    };
    let mut requests: Vec<CheckRequest> = request.check.into_iter().collect();
    requests.extend(request.checks.unwrap_or_default());
    let numbered = requests.len() > 1;
    let mut checks = Vec::with_capacity(requests.len());
    for (position, check) in requests.into_iter().enumerate() {
        let default_id = if numbered {
            format!("service:{id}:{}", position + 1)
        } else {
            format!("service:{id}")
        };
        let default_name = format!("Service '{name}' check");
        let mut built = build_check(check, default_id, default_name, now_ms)?;
        built.service_id = id.clone();
        checks.push(built);
    }
    Ok((service, checks))
}

/// Validates a check registered on its own (`/v1/agent/check/register`: it needs a name,
/// which is also its default ID) and builds the store check.
pub(crate) fn standalone_check(request: CheckRequest, now_ms: u64) -> ApiResult<Check> {
    let name = request
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("Missing check name"))?;
    build_check(request, name.clone(), name, now_ms)
}

/// Validates a check request and builds the store check (with its definition).
pub(crate) fn build_check(
    request: CheckRequest,
    default_id: String,
    default_name: String,
    now_ms: u64,
) -> ApiResult<Check> {
    let unsupported = [
        (
            "script",
            request.args.is_some() || request.script_args.is_some(),
        ),
        ("gRPC", request.grpc.is_some()),
        ("Docker", request.docker_container_id.is_some()),
        ("H2PING", request.h2ping.is_some()),
        ("UDP", request.udp.is_some()),
        ("OSService", request.os_service.is_some()),
        (
            "alias",
            request.alias_service.is_some() || request.alias_node.is_some(),
        ),
    ];
    if let Some((kind, _)) = unsupported.iter().find(|(_, present)| *present) {
        return Err(ApiError::bad_request(format!(
            "{kind} checks are not supported by colony: use HTTP, TCP or TTL"
        )));
    }
    let http = request.http.filter(|h| !h.is_empty());
    let tcp = request.tcp.filter(|t| !t.is_empty());
    let ttl_ms = request.ttl.map(|d| d.0).filter(|ms| *ms > 0);
    let kinds =
        usize::from(http.is_some()) + usize::from(tcp.is_some()) + usize::from(ttl_ms.is_some());
    if kinds == 0 {
        return Err(ApiError::bad_request(
            "Invalid check: one of TTL, HTTP or TCP must be set (script, Docker, gRPC and alias \
             checks are not supported)",
        ));
    }
    if kinds > 1 {
        return Err(ApiError::bad_request(
            "Invalid check: set only one of TTL, HTTP or TCP",
        ));
    }
    let interval_ms = request.interval.map(|d| d.0).filter(|ms| *ms > 0);
    if (http.is_some() || tcp.is_some()) && interval_ms.is_none() {
        return Err(ApiError::bad_request(
            "Interval must be > 0 for HTTP or TCP checks",
        ));
    }
    if let Some(url) = &http {
        let parsed: axum::http::Uri = url
            .parse()
            .map_err(|e| ApiError::bad_request(format!("Invalid HTTP check URL {url:?}: {e}")))?;
        if parsed.scheme_str() != Some("http") {
            return Err(ApiError::bad_request(format!(
                "Invalid HTTP check URL {url:?}: only http:// URLs are supported"
            )));
        }
    }
    if let Some(address) = &tcp
        && !address.contains(':')
    {
        return Err(ApiError::bad_request(format!(
            "Invalid TCP check address {address:?}: expected host:port"
        )));
    }
    let status = match request.status.as_deref() {
        None | Some("") => HealthStatus::Critical,
        Some(text) => HealthStatus::parse(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid check status {text:?}: must be passing, warning or critical"
            ))
        })?,
    };
    let id = request
        .check_id
        .or(request.id)
        .filter(|i| !i.is_empty())
        .unwrap_or(default_id);
    let name = request
        .name
        .filter(|n| !n.is_empty())
        .unwrap_or(default_name);
    Ok(Check {
        node: String::new(),
        id,
        name,
        status,
        notes: request.notes.unwrap_or_default(),
        output: String::new(),
        service_id: request.service_id.unwrap_or_default(),
        service_name: String::new(),
        service_tags: Vec::new(),
        definition: CheckDefinition {
            http,
            method: request.method.filter(|m| !m.is_empty()),
            header: request.header.unwrap_or_default(),
            body: request.body,
            tcp,
            ttl_ms,
            interval_ms,
            timeout_ms: request.timeout.map(|d| d.0).filter(|ms| *ms > 0),
            deregister_critical_service_after_ms: request
                .deregister_critical_service_after
                .map(|d| d.0)
                .filter(|ms| *ms > 0),
            success_before_passing: request.success_before_passing.unwrap_or(0),
            failures_before_critical: request.failures_before_critical.unwrap_or(0),
        },
        status_observed_ms: now_ms,
        create_index: 0,
        modify_index: 0,
    })
}

pub(crate) async fn deregister_service(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let agent = &app.agent;
    let node = acting_node(agent);
    if agent.read(|s| s.service(&node, &id).is_none()) {
        return Err(ApiError::not_found(format!(
            "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
        )));
    }
    let command = Command::CatalogDeregister {
        node,
        service_id: Some(id),
        check_id: None,
    };
    propose_done(agent, command).await?;
    Ok(ok_empty(agent))
}

pub(crate) async fn register_check(
    State(app): State<AppState>,
    body: Bytes,
) -> ApiResult<Response> {
    let agent = &app.agent;
    let check = standalone_check(decode(&body)?, agent.now_ms())?;
    let node_name = acting_node(agent);
    if !check.service_id.is_empty()
        && agent.read(|s| s.service(&node_name, &check.service_id).is_none())
    {
        return Err(ApiError::bad_request(format!(
            "ServiceID {:?} does not exist",
            check.service_id
        )));
    }
    let node = acting_node_record(agent)?;
    let registration = CatalogRegistration {
        node,
        service: None,
        checks: vec![check],
        replace_service_checks: false,
    };
    propose_done(agent, Command::CatalogRegister(registration)).await?;
    Ok(ok_empty(agent))
}

pub(crate) async fn deregister_check(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let agent = &app.agent;
    let node = acting_node(agent);
    if agent.read(|s| s.check(&node, &id).is_none()) {
        return Err(ApiError::not_found(format!("Unknown check ID {id:?}")));
    }
    let command = Command::CatalogDeregister {
        node,
        service_id: None,
        check_id: Some(id),
    };
    propose_done(agent, command).await?;
    Ok(ok_empty(agent))
}

pub(crate) async fn check_pass(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    ttl_update(&app, &id, HealthStatus::Passing, raw).await
}

pub(crate) async fn check_warn(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    ttl_update(&app, &id, HealthStatus::Warning, raw).await
}

pub(crate) async fn check_fail(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    ttl_update(&app, &id, HealthStatus::Critical, raw).await
}

async fn ttl_update(
    app: &AppState,
    id: &str,
    status: HealthStatus,
    raw: Option<String>,
) -> ApiResult<Response> {
    let query = Query::parse(raw.as_deref());
    let output = query.get("note").unwrap_or_default().to_string();
    app.agent
        .update_ttl_check(&acting_node(&app.agent), id, status, output)
        .await?;
    Ok(ok_empty(&app.agent))
}

pub(crate) async fn check_update(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let request: CheckUpdateRequest = decode(&body)?;
    let status_text = request.status.unwrap_or_default();
    let status = HealthStatus::parse(&status_text).ok_or_else(|| {
        ApiError::bad_request(format!(
            "Invalid check status: {status_text:?}: must be passing, warning or critical"
        ))
    })?;
    let mut output = request.output.unwrap_or_default();
    if output.len() > colony_runtime::CHECK_OUTPUT_BYTES_MAX {
        let mut cut = colony_runtime::CHECK_OUTPUT_BYTES_MAX;
        while !output.is_char_boundary(cut) {
            cut -= 1;
        }
        output.truncate(cut);
    }
    app.agent
        .update_ttl_check(&acting_node(&app.agent), &id, status, output)
        .await?;
    Ok(ok_empty(&app.agent))
}

fn maintenance_flag(query: &Query) -> ApiResult<bool> {
    if query.get("enable").is_none_or(str::is_empty) {
        return Err(ApiError::bad_request("Missing value for enable"));
    }
    Ok(query.go_bool("enable")?.unwrap_or(false))
}

fn maintenance_check(
    id: String,
    name: &str,
    notes: String,
    service_id: String,
    now_ms: u64,
) -> Check {
    Check {
        node: String::new(),
        id,
        name: name.to_string(),
        status: HealthStatus::Critical,
        notes,
        output: String::new(),
        service_id,
        service_name: String::new(),
        service_tags: Vec::new(),
        definition: CheckDefinition::default(),
        status_observed_ms: now_ms,
        create_index: 0,
        modify_index: 0,
    }
}

pub(crate) async fn node_maintenance(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let query = Query::parse(raw.as_deref());
    let agent = &app.agent;
    let reason = query.get("reason").filter(|r| !r.is_empty()).map_or_else(
        || "Maintenance mode is enabled for this node, but no reason was provided. This is a default message.".to_string(),
        str::to_string,
    );
    toggle_maintenance(
        agent,
        maintenance_flag(&query)?,
        maintenance_check(
            NODE_MAINTENANCE_CHECK_ID.to_string(),
            "Node Maintenance Mode",
            reason,
            String::new(),
            agent.now_ms(),
        ),
    )
    .await
}

pub(crate) async fn service_maintenance(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let query = Query::parse(raw.as_deref());
    let agent = &app.agent;
    let enable = maintenance_flag(&query)?;
    if agent.read(|s| s.service(&acting_node(agent), &id).is_none()) {
        return Err(ApiError::not_found(format!("Unknown service ID {id:?}")));
    }
    let reason = query.get("reason").filter(|r| !r.is_empty()).map_or_else(
        || "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.".to_string(),
        str::to_string,
    );
    let check = maintenance_check(
        format!("{SERVICE_MAINTENANCE_PREFIX}{id}"),
        "Service Maintenance Mode",
        reason,
        id,
        agent.now_ms(),
    );
    toggle_maintenance(agent, enable, check).await
}

async fn toggle_maintenance(agent: &Agent, enable: bool, mut check: Check) -> ApiResult<Response> {
    let node = acting_node(agent);
    let exists = agent.read(|s| s.check(&node, &check.id).is_some());
    if enable && !exists {
        let node_record = acting_node_record(agent)?;
        check.node = node;
        let registration = CatalogRegistration {
            node: node_record,
            service: None,
            checks: vec![check],
            replace_service_checks: false,
        };
        propose_done(agent, Command::CatalogRegister(registration)).await?;
    } else if !enable && exists {
        let command = Command::CatalogDeregister {
            node,
            service_id: None,
            check_id: Some(check.id),
        };
        propose_done(agent, command).await?;
    }
    Ok(ok_empty(agent))
}

/// `/v1/agent/metrics`: the agent's registry and membership's metrics, as Consul's JSON or,
/// with `?format=prometheus`, Prometheus text.
pub(crate) async fn metrics(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
    gossip: std::sync::Arc<colony_runtime::gossip::Gossip>,
) -> Response {
    let query = Query::parse(raw.as_deref());
    let agent = &app.agent;
    if query.get("format") == Some("prometheus") {
        let mut text = agent.metrics().encode();
        // The registry ends with its EOF marker; membership's families go before it.
        if let Some(stripped) = text.strip_suffix("# EOF\n") {
            text = stripped.to_string();
        }
        text.push_str(&crate::membership::gossip_prometheus(&gossip));
        text.push_str("# EOF\n");
        return (
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            text,
        )
            .into_response();
    }
    let (mut gauges, counters) = crate::membership::gossip_consul_metrics(&gossip);
    gauges.push(json!({"Name": "colony.blocking_queries_parked", "Value": agent.metrics().parked_queries.get(), "Labels": {}}));
    let body = json!({
        "Timestamp": agent.now_ms().to_string(),
        "Gauges": gauges,
        "Points": [],
        "Counters": counters,
        "Samples": [],
    });
    local_json(&body, &agent.local_evidence("agent:metrics".into()))
}

/// The empty 200 answer Consul's agent endpoints give to a successful write.
fn ok_empty(agent: &Agent) -> Response {
    let index = agent.read(|s| s.applied_index());
    let mut answer = StoreAnswer::json(&(), index, agent.local_evidence("agent".into()));
    answer.body.clear();
    answer.into_response()
}
