//! Consul's JSON shapes: request bodies as clients send them, answers as clients parse them.
//! Field names and meanings follow Consul's API reference.

use crate::json::GoDuration;
use base64::Engine as _;
use colony_base::format_go_duration;
use colony_store::{Check, KvEntry, Node, Service, Session};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

// ===== Requests =====

/// A check as given inside a service registration, or on its own (`check/register`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckRequest {
    #[serde(rename = "CheckID", default)]
    pub check_id: Option<String>,
    #[serde(rename = "ID", default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(rename = "ServiceID", default)]
    pub service_id: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(rename = "HTTP", default)]
    pub http: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub header: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(rename = "TCP", default)]
    pub tcp: Option<String>,
    #[serde(rename = "TTL", default)]
    pub ttl: Option<GoDuration>,
    #[serde(default)]
    pub interval: Option<GoDuration>,
    #[serde(default)]
    pub timeout: Option<GoDuration>,
    #[serde(default)]
    pub deregister_critical_service_after: Option<GoDuration>,
    #[serde(default)]
    pub success_before_passing: Option<u32>,
    #[serde(default)]
    pub failures_before_critical: Option<u32>,
    #[serde(rename = "TLSSkipVerify", default)]
    pub tls_skip_verify: Option<bool>,
    // Check kinds colony does not run; present only to refuse them clearly.
    #[serde(default)]
    pub args: Option<serde_json::Value>,
    #[serde(default)]
    pub script_args: Option<serde_json::Value>,
    #[serde(rename = "GRPC", default)]
    pub grpc: Option<serde_json::Value>,
    #[serde(rename = "DockerContainerID", default)]
    pub docker_container_id: Option<serde_json::Value>,
    #[serde(rename = "H2PING", default)]
    pub h2ping: Option<serde_json::Value>,
    #[serde(rename = "UDP", default)]
    pub udp: Option<serde_json::Value>,
    #[serde(rename = "OSService", default)]
    pub os_service: Option<serde_json::Value>,
    #[serde(default)]
    pub alias_service: Option<serde_json::Value>,
    #[serde(default)]
    pub alias_node: Option<serde_json::Value>,
}

/// Balancing weights in a registration.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WeightsJson {
    #[serde(default = "one")]
    pub passing: u32,
    #[serde(default = "one")]
    pub warning: u32,
}

fn one() -> u32 {
    1
}

/// `PUT /v1/agent/service/register`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRequest {
    #[serde(rename = "ID", default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// The service name as catalog registrations spell it (`Service.Service`).
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub weights: Option<WeightsJson>,
    #[serde(default)]
    pub enable_tag_override: Option<bool>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub check: Option<CheckRequest>,
    #[serde(default)]
    pub checks: Option<Vec<CheckRequest>>,
}

/// `PUT /v1/catalog/register`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogRegisterRequest {
    #[serde(rename = "ID", default)]
    pub id: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub datacenter: Option<String>,
    #[serde(default)]
    pub tagged_addresses: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub node_meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub service: Option<ServiceRequest>,
    #[serde(default)]
    pub check: Option<CheckRequest>,
    #[serde(default)]
    pub checks: Option<Vec<CheckRequest>>,
    #[serde(default)]
    pub skip_node_update: Option<bool>,
}

/// `PUT /v1/catalog/deregister`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogDeregisterRequest {
    #[serde(default)]
    pub node: Option<String>,
    #[serde(rename = "ServiceID", default)]
    pub service_id: Option<String>,
    #[serde(rename = "CheckID", default)]
    pub check_id: Option<String>,
    #[serde(default)]
    pub datacenter: Option<String>,
}

/// A service check reference in a session request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceCheckRef {
    #[serde(rename = "ID", default)]
    pub id: String,
}

/// `PUT /v1/session/create`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub checks: Option<Vec<String>>,
    #[serde(default)]
    pub node_checks: Option<Vec<String>>,
    #[serde(default)]
    pub service_checks: Option<Vec<ServiceCheckRef>>,
    #[serde(default)]
    pub behavior: Option<String>,
    #[serde(rename = "TTL", default)]
    pub ttl: Option<GoDuration>,
    #[serde(default)]
    pub lock_delay: Option<GoDuration>,
}

/// `PUT /v1/agent/check/update/:id`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckUpdateRequest {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub output: Option<String>,
}

/// One operation of `PUT /v1/txn`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnOpRequest {
    #[serde(rename = "KV", default)]
    pub kv: Option<TxnKvRequest>,
    #[serde(default)]
    pub node: Option<serde_json::Value>,
    #[serde(default)]
    pub service: Option<serde_json::Value>,
    #[serde(default)]
    pub check: Option<serde_json::Value>,
}

/// The KV part of a transaction operation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnKvRequest {
    #[serde(default)]
    pub verb: String,
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub flags: Option<u64>,
    #[serde(default)]
    pub index: Option<u64>,
    #[serde(default)]
    pub session: Option<String>,
}

// ===== Answers =====

/// A KV entry as `/v1/kv` returns it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KvJson {
    pub lock_index: u64,
    pub key: String,
    pub flags: u64,
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl KvJson {
    /// Converts a store entry; an empty value is `null`, as Consul answers.
    pub fn from_entry(entry: &KvEntry) -> Self {
        KvJson {
            lock_index: entry.lock_index,
            key: entry.key.to_string(),
            flags: entry.flags,
            value: (!entry.value.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(&entry.value)),
            session: entry.session.clone(),
            create_index: entry.create_index,
            modify_index: entry.modify_index,
        }
    }
}

/// A service instance as the agent endpoints show it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentServiceJson {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub port: u16,
    pub address: String,
    pub weights: WeightsJson,
    pub enable_tag_override: bool,
    pub datacenter: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modify_index: Option<u64>,
}

impl AgentServiceJson {
    /// Converts a store service; `with_indexes` adds Create/ModifyIndex (catalog views).
    pub fn from_service(service: &Service, datacenter: &str, with_indexes: bool) -> Self {
        AgentServiceJson {
            id: service.id.clone(),
            service: service.name.clone(),
            tags: service.tags.clone(),
            meta: service.meta.clone(),
            port: service.port,
            address: service.address.clone(),
            weights: WeightsJson {
                passing: service.weights.passing,
                warning: service.weights.warning,
            },
            enable_tag_override: service.enable_tag_override,
            datacenter: datacenter.to_string(),
            create_index: with_indexes.then_some(service.create_index),
            modify_index: with_indexes.then_some(service.modify_index),
        }
    }
}

/// A node as the catalog and health endpoints show it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeJson {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl NodeJson {
    /// Converts a store node.
    pub fn from_node(node: &Node, datacenter: &str) -> Self {
        NodeJson {
            id: node.id.clone(),
            node: node.name.clone(),
            address: node.address.clone(),
            datacenter: datacenter.to_string(),
            tagged_addresses: node.tagged_addresses.clone(),
            meta: node.meta.clone(),
            create_index: node.create_index,
            modify_index: node.modify_index,
        }
    }
}

/// The definition part of a check answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckDefinitionJson {
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(rename = "TCP", skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deregister_critical_service_after: Option<String>,
}

/// A health check as agent, health and catalog endpoints show it, plus its evidence.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckJson {
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    pub status: String,
    pub notes: String,
    pub output: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub service_name: String,
    pub service_tags: Vec<String>,
    #[serde(rename = "Type")]
    pub kind: String,
    pub interval: String,
    pub timeout: String,
    pub definition: CheckDefinitionJson,
    pub create_index: u64,
    pub modify_index: u64,
    /// Colony's addition: when this result was observed and how long it holds.
    pub evidence: serde_json::Value,
}

impl CheckJson {
    /// Converts a store check with its evidence.
    pub fn from_check(check: &Check, evidence: serde_json::Value) -> Self {
        let definition = &check.definition;
        let fmt = |ms: Option<u64>| ms.map(format_go_duration);
        CheckJson {
            node: check.node.clone(),
            check_id: check.id.clone(),
            name: check.name.clone(),
            status: check.status.as_str().to_string(),
            notes: check.notes.clone(),
            output: check.output.clone(),
            service_id: check.service_id.clone(),
            service_name: check.service_name.clone(),
            service_tags: check.service_tags.clone(),
            kind: definition.kind().to_string(),
            interval: fmt(definition.interval_ms).unwrap_or_default(),
            timeout: fmt(definition.timeout_ms).unwrap_or_default(),
            definition: CheckDefinitionJson {
                http: definition.http.clone(),
                tcp: definition.tcp.clone(),
                interval: fmt(definition.interval_ms),
                timeout: fmt(definition.timeout_ms),
                ttl: fmt(definition.ttl_ms),
                deregister_critical_service_after: fmt(
                    definition.deregister_critical_service_after_ms
                ),
            },
            create_index: check.create_index,
            modify_index: check.modify_index,
            evidence,
        }
    }
}

/// A session as `/v1/session` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionJson {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub node: String,
    /// Nanoseconds, as Consul encodes a Go `time.Duration` here.
    pub lock_delay: u64,
    pub behavior: String,
    #[serde(rename = "TTL")]
    pub ttl: String,
    pub node_checks: Vec<String>,
    pub service_checks: Vec<ServiceCheckJson>,
    pub checks: Vec<String>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A service check reference in a session answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceCheckJson {
    #[serde(rename = "ID")]
    pub id: String,
    pub namespace: String,
}

impl SessionJson {
    /// Converts a store session.
    pub fn from_session(session: &Session) -> Self {
        SessionJson {
            id: session.id.clone(),
            name: session.name.clone(),
            node: session.node.clone(),
            lock_delay: session.lock_delay_ms * 1_000_000,
            behavior: session.behavior.as_str().to_string(),
            ttl: if session.ttl_ms == 0 {
                String::new()
            } else {
                format_go_duration(session.ttl_ms)
            },
            node_checks: session.node_checks.clone(),
            service_checks: session
                .service_checks
                .iter()
                .map(|id| ServiceCheckJson {
                    id: id.clone(),
                    namespace: String::new(),
                })
                .collect(),
            checks: session.all_checks().cloned().collect(),
            create_index: session.create_index,
            modify_index: session.modify_index,
        }
    }
}
