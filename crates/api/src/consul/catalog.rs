//! `/v1/catalog/*` and `/v1/health/*`: the service catalog and its health view.

use super::types::{
    AgentServiceJson, CatalogDeregisterRequest, CatalogRegisterRequest, CheckJson, NodeJson,
};
use super::{bool_answer, check_json, propose_done, table_answer, write_evidence};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::json::decode;
use crate::query::Query;
use crate::respond::StoreAnswer;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};

use colony_store::{
    CatalogRegistration, Check, CheckDefinition, Command, HealthStatus, Node, Service, Table,
    Weights,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

const CATALOG_TABLES: [Table; 3] = [Table::Nodes, Table::Services, Table::Checks];

pub(crate) async fn datacenters(State(app): State<AppState>) -> Response {
    let agent = &app.agent;
    let index = agent.read(|s| s.applied_index());
    let evidence = agent.local_evidence("datacenters".into());
    StoreAnswer::json(&[agent.config().datacenter.clone()], index, evidence).into_response()
}

pub(crate) async fn services(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let agent = &app.agent;
    table_answer(
        agent,
        raw,
        &[Table::Services],
        "catalog:services".into(),
        |s, _| {
            let mut services: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for service in s.services() {
                services
                    .entry(service.name.clone())
                    .or_default()
                    .extend(service.tags.iter().cloned());
            }
            services
        },
    )
    .await
}

fn has_tags(service: &Service, tags: &[&str]) -> bool {
    tags.iter().all(|tag| service.tags.iter().any(|t| t == tag))
}

fn catalog_service_json(service: &Service, node: Option<&Node>, dc: &str) -> Value {
    let (node_id, address, tagged, meta) = node.map_or_else(
        || {
            (
                String::new(),
                String::new(),
                BTreeMap::new(),
                BTreeMap::new(),
            )
        },
        |n| {
            (
                n.id.clone(),
                n.address.clone(),
                n.tagged_addresses.clone(),
                n.meta.clone(),
            )
        },
    );
    json!({
        "ID": node_id,
        "Node": service.node,
        "Address": address,
        "Datacenter": dc,
        "TaggedAddresses": tagged,
        "NodeMeta": meta,
        "ServiceKind": "",
        "ServiceID": service.id,
        "ServiceName": service.name,
        "ServiceTags": service.tags,
        "ServiceAddress": service.address,
        "ServiceWeights": { "Passing": service.weights.passing, "Warning": service.weights.warning },
        "ServiceMeta": service.meta,
        "ServicePort": service.port,
        "ServiceEnableTagOverride": service.enable_tag_override,
        "CreateIndex": service.create_index,
        "ModifyIndex": service.modify_index,
    })
}

pub(crate) async fn service(
    State(app): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let agent = &app.agent;
    let dc = agent.config().datacenter.clone();
    table_answer(
        agent,
        raw,
        &CATALOG_TABLES,
        format!("catalog:service:{name}"),
        |s, q| {
            let tags = q.all("tag");
            s.service_instances(&name)
                .filter(|svc| has_tags(svc, &tags))
                .map(|svc| catalog_service_json(svc, s.node(&svc.node), &dc))
                .collect::<Vec<_>>()
        },
    )
    .await
}

pub(crate) async fn nodes(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let agent = &app.agent;
    let dc = agent.config().datacenter.clone();
    table_answer(
        agent,
        raw,
        &[Table::Nodes],
        "catalog:nodes".into(),
        |s, _| {
            s.nodes()
                .map(|n| NodeJson::from_node(n, &dc))
                .collect::<Vec<_>>()
        },
    )
    .await
}

pub(crate) async fn node(
    State(app): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let agent = &app.agent;
    let dc = agent.config().datacenter.clone();
    table_answer(
        agent,
        raw,
        &[Table::Nodes, Table::Services],
        format!("catalog:node:{name}"),
        |s, _| {
            s.node(&name).map(|n| {
                let services: BTreeMap<String, AgentServiceJson> = s
                    .node_services(&name)
                    .map(|svc| {
                        (
                            svc.id.clone(),
                            AgentServiceJson::from_service(svc, &dc, true),
                        )
                    })
                    .collect();
                json!({ "Node": NodeJson::from_node(n, &dc), "Services": services })
            })
        },
    )
    .await
}

pub(crate) async fn register(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ApiResult<Response> {
    let agent = &app.agent;
    Query::parse(raw.as_deref()).check_datacenter(&agent.config().datacenter)?;
    let request: CatalogRegisterRequest = decode(&body)?;
    let node_name = request
        .node
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("Must provide node"))?;
    let address = request
        .address
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ApiError::bad_request("Must provide address"))?;
    let existing = agent.read(|s| s.node(&node_name).cloned());
    let node = Node {
        id: request
            .id
            .or_else(|| existing.as_ref().map(|n| n.id.clone()))
            .unwrap_or_default(),
        name: node_name.clone(),
        address,
        tagged_addresses: request.tagged_addresses.unwrap_or_default(),
        meta: request.node_meta.unwrap_or_default(),
        create_index: 0,
        modify_index: 0,
    };
    let node = match (request.skip_node_update.unwrap_or(false), existing) {
        (true, Some(existing)) => existing,
        _ => node,
    };
    let service = match request.service {
        None => None,
        Some(svc) => {
            let name = svc
                .service
                .or(svc.name)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| ApiError::bad_request("Must provide service name"))?;
            Some(Service {
                node: node_name.clone(),
                id: svc
                    .id
                    .filter(|i| !i.is_empty())
                    .unwrap_or_else(|| name.clone()),
                name,
                tags: svc.tags.unwrap_or_default(),
                address: svc.address.unwrap_or_default(),
                port: svc.port.unwrap_or(0),
                meta: svc.meta.unwrap_or_default(),
                weights: svc.weights.map_or(Weights::default(), |w| Weights {
                    passing: w.passing,
                    warning: w.warning,
                }),
                enable_tag_override: svc.enable_tag_override.unwrap_or(false),
                create_index: 0,
                modify_index: 0,
            })
        }
    };
    let mut requests: Vec<_> = request.check.into_iter().collect();
    requests.extend(request.checks.unwrap_or_default());
    let mut checks = Vec::new();
    for check in requests {
        // Catalog checks are records kept for an external monitor; the agent does not run them.
        let status = match check.status.as_deref() {
            None | Some("") => HealthStatus::Critical,
            Some(text) => HealthStatus::parse(text)
                .ok_or_else(|| ApiError::bad_request(format!("Invalid check status {text:?}")))?,
        };
        let id = check
            .check_id
            .or(check.id)
            .filter(|i| !i.is_empty())
            .or_else(|| check.name.clone())
            .ok_or_else(|| ApiError::bad_request("Missing check ID"))?;
        checks.push(Check {
            node: node_name.clone(),
            name: check.name.unwrap_or_else(|| id.clone()),
            id,
            status,
            notes: check.notes.unwrap_or_default(),
            output: String::new(),
            service_id: check.service_id.unwrap_or_default(),
            service_name: String::new(),
            service_tags: Vec::new(),
            definition: CheckDefinition::default(),
            status_observed_ms: agent.now_ms(),
            create_index: 0,
            modify_index: 0,
        });
    }
    let index = propose_done(
        agent,
        Command::CatalogRegister(CatalogRegistration {
            node,
            service,
            checks,
            replace_service_checks: false,
        }),
    )
    .await?;
    Ok(bool_answer(
        true,
        index,
        write_evidence(agent, index, &format!("catalog:node:{node_name}")),
    ))
}

pub(crate) async fn deregister(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ApiResult<Response> {
    let agent = &app.agent;
    Query::parse(raw.as_deref()).check_datacenter(&agent.config().datacenter)?;
    let request: CatalogDeregisterRequest = decode(&body)?;
    let node = request
        .node
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("Must provide node"))?;
    let command = Command::CatalogDeregister {
        node: node.clone(),
        service_id: request.service_id.filter(|s| !s.is_empty()),
        check_id: request.check_id.filter(|c| !c.is_empty()),
    };
    let index = propose_done(agent, command).await?;
    Ok(bool_answer(
        true,
        index,
        write_evidence(agent, index, &format!("catalog:node:{node}")),
    ))
}

// ===== /v1/health =====

pub(crate) async fn health_service(
    State(app): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let agent = app.agent.clone();
    let dc = agent.config().datacenter.clone();
    table_answer(
        &app.agent,
        raw,
        &CATALOG_TABLES,
        format!("health:service:{name}"),
        |s, q| {
            let tags = q.all("tag");
            let passing_only = q.flag("passing");
            let mut entries = Vec::new();
            for svc in s
                .service_instances(&name)
                .filter(|svc| has_tags(svc, &tags))
            {
                let checks: Vec<&Check> = s
                    .node_checks(&svc.node)
                    .filter(|c| c.service_id.is_empty() || c.service_id == svc.id)
                    .collect();
                if passing_only && checks.iter().any(|c| c.status != HealthStatus::Passing) {
                    continue;
                }
                let node = s.node(&svc.node).map(|n| NodeJson::from_node(n, &dc));
                let checks: Vec<CheckJson> = checks.iter().map(|c| check_json(&agent, c)).collect();
                entries.push(json!({
                    "Node": node,
                    "Service": AgentServiceJson::from_service(svc, &dc, true),
                    "Checks": checks,
                }));
            }
            entries
        },
    )
    .await
}

pub(crate) async fn health_checks(
    State(app): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let agent = app.agent.clone();
    table_answer(
        &app.agent,
        raw,
        &[Table::Checks],
        format!("health:checks:{name}"),
        |s, _| {
            s.checks()
                .filter(|c| c.service_name == name)
                .map(|c| check_json(&agent, c))
                .collect::<Vec<_>>()
        },
    )
    .await
}

pub(crate) async fn health_node(
    State(app): State<AppState>,
    Path(node): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let agent = app.agent.clone();
    table_answer(
        &app.agent,
        raw,
        &[Table::Checks],
        format!("health:node:{node}"),
        |s, _| {
            s.node_checks(&node)
                .map(|c| check_json(&agent, c))
                .collect::<Vec<_>>()
        },
    )
    .await
}

pub(crate) async fn health_state(
    State(app): State<AppState>,
    Path(state): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let wanted = match state.as_str() {
        "any" => None,
        other => Some(HealthStatus::parse(other).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid check state {other:?}: must be any, passing, warning or critical"
            ))
        })?),
    };
    let agent = app.agent.clone();
    table_answer(
        &app.agent,
        raw,
        &[Table::Checks],
        format!("health:state:{state}"),
        |s, _| {
            s.checks()
                .filter(|c| wanted.is_none_or(|w| c.status == w))
                .map(|c| check_json(&agent, c))
                .collect::<Vec<_>>()
        },
    )
    .await
}
