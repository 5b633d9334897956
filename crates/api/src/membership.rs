//! Membership endpoints, served by every agent (server or client): Consul's
//! `/v1/agent/members`, `join`, `leave`, `force-leave`, `/v1/event/fire` and `/v1/event/list`,
//! and the native `/v1/colony/members` with suspect state, incarnation and per-member evidence.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use base64::Engine as _;
use colony_base::{Evidence, Freshness, HlcTimestamp, Lifetime};
use colony_runtime::gossip::{Gossip, KeyringOp, MemberInfo};
use colony_swim::State as MemberState;
use serde_json::json;

use crate::error::ApiError;
use crate::query::Query;
use crate::respond::{evidence_json, local_json};

/// What the membership endpoints need.
#[derive(Clone)]
pub struct MembershipState {
    /// The running membership layer.
    pub gossip: Arc<Gossip>,
    /// Datacenter (a tag of every member).
    pub datacenter: String,
    /// Whether this agent is a server.
    pub server: bool,
    /// Notified when `/v1/agent/leave` has gossiped the departure: the agent then stops.
    pub stop: Arc<tokio::sync::Notify>,
}

/// Routes of the membership endpoints.
pub fn routes(state: MembershipState) -> Router {
    Router::new()
        .route("/v1/agent/members", get(members))
        .route("/v1/agent/join/{addr}", put(join))
        .route("/v1/agent/leave", put(leave))
        .route("/v1/agent/force-leave/{node}", put(force_leave))
        .route("/v1/event/fire/{name}", put(fire))
        .route("/v1/event/list", get(list_events))
        .route("/v1/colony/members", get(colony_members))
        .route(
            "/v1/operator/keyring",
            get(keyring_list)
                .post(keyring_install)
                .put(keyring_use)
                .delete(keyring_remove),
        )
        .with_state(state)
}

/// Consul's member status numbers (serf's `MemberStatus`).
fn consul_status(state: MemberState, leaving: bool) -> u8 {
    match state {
        MemberState::Alive | MemberState::Suspect if leaving => 2,
        MemberState::Alive | MemberState::Suspect => 1,
        MemberState::Left => 3,
        MemberState::Dead => 4,
    }
}

fn gossip_evidence(observer: &str, member: &MemberInfo) -> Evidence {
    Evidence {
        scope: format!("node:{}", member.name),
        source: "gossip".to_string(),
        observed: HlcTimestamp {
            physical_ms: member.since_ms,
            logical: 0,
        },
        observed_by: observer.to_string(),
        lifetime: Lifetime::Ms(0),
        binding: format!(
            "swim:{}:gen={},inc={}",
            member.name, member.generation, member.incarnation
        ),
        freshness: Freshness::Eventual,
    }
}

fn view_evidence(observer: &str, now_ms: u64) -> Evidence {
    Evidence {
        scope: format!("node:{observer}"),
        source: "gossip".to_string(),
        observed: HlcTimestamp {
            physical_ms: now_ms,
            logical: 0,
        },
        observed_by: observer.to_string(),
        lifetime: Lifetime::Ms(0),
        binding: "swim:members".to_string(),
        freshness: Freshness::Eventual,
    }
}

fn member_json(m: &MemberInfo, dc: &str, leaving: bool) -> serde_json::Value {
    let mut tags = serde_json::Map::new();
    tags.insert("dc".into(), json!(dc));
    tags.insert(
        "role".into(),
        json!(if m.meta.role == "server" {
            "consul"
        } else {
            "node"
        }),
    );
    tags.insert("vsn".into(), json!("2"));
    tags.insert("build".into(), json!(env!("CARGO_PKG_VERSION")));
    if !m.meta.zone.is_empty() {
        tags.insert("zone".into(), json!(m.meta.zone));
    }
    for (k, v) in &m.meta.tags {
        tags.insert(k.clone(), json!(v));
    }
    json!({
        "Name": m.name,
        "Addr": m.addr.ip().to_string(),
        "Port": m.addr.port(),
        "Tags": tags,
        "Status": consul_status(m.state, leaving),
        "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
        "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
    })
}

async fn members(State(st): State<MembershipState>) -> Response {
    let view = st.gossip.view();
    let mut out = Vec::with_capacity(view.members.len() + 1);
    if let Some(local) = &view.local {
        out.push(member_json(local, &st.datacenter, view.leaving));
    }
    out.extend(
        view.members
            .iter()
            .map(|m| member_json(m, &st.datacenter, false)),
    );
    let me = view.local.as_ref().map_or("", |l| l.name.as_str());
    local_json(&out, &view_evidence(me, crate::now_ms()))
}

async fn colony_members(State(st): State<MembershipState>) -> Response {
    let view = st.gossip.view();
    let me = view
        .local
        .as_ref()
        .map_or(String::new(), |l| l.name.clone());
    let item = |m: &MemberInfo, this: bool| {
        let mut evidence = gossip_evidence(&me, m);
        if this {
            evidence.source = "agent".into();
            evidence.freshness = Freshness::Fresh;
        }
        json!({
            "Name": m.name,
            "Addr": m.addr.to_string(),
            "State": if this && view.leaving { "leaving" } else { m.state.as_str() },
            "Incarnation": m.incarnation,
            "Generation": m.generation,
            "Role": m.meta.role,
            "Zone": m.meta.zone,
            "Tags": m.meta.tags,
            "Since": m.since_ms,
            "Self": this,
            "evidence": evidence_json(&evidence),
        })
    };
    let mut out = Vec::new();
    if let Some(local) = &view.local {
        out.push(item(local, true));
    }
    out.extend(view.members.iter().map(|m| item(m, false)));
    let body = json!({
        "Members": out,
        "Awareness": view.awareness,
        "DecodeErrors": view.decode_errors,
        "Stats": {
            "PacketsOut": view.stats.packets_out,
            "BytesOut": view.stats.bytes_out,
            "StreamsOut": view.stats.streams_out,
            "StreamBytesOut": view.stats.stream_bytes_out,
            "PacketsIn": view.stats.packets_in,
            "ProbesOk": view.stats.probes_ok,
            "ProbesFailed": view.stats.probes_failed,
            "SuspicionsRaised": view.stats.suspicions_raised,
            "Refutations": view.stats.refutations,
        },
    });
    local_json(&body, &view_evidence(&me, crate::now_ms()))
}

async fn join(
    State(st): State<MembershipState>,
    Path(addr): Path<String>,
) -> Result<Response, ApiError> {
    let target = parse_gossip_addr(&addr)?;
    if !st.gossip.join(vec![target]).await {
        return Err(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("failed to join {target}: no answer within 5s"),
        });
    }
    Ok(StatusCode::OK.into_response())
}

/// Parses `IP`, `IP:PORT` or `[IPv6]:PORT`; the port defaults to 8301.
pub fn parse_gossip_addr(text: &str) -> Result<SocketAddr, ApiError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, 8301));
    }
    Err(ApiError::bad_request(format!(
        "invalid address {text:?}: expected IP or IP:PORT (hostnames are not resolved)"
    )))
}

async fn leave(State(st): State<MembershipState>) -> Response {
    st.gossip.leave().await;
    st.stop.notify_one();
    StatusCode::OK.into_response()
}

async fn force_leave(
    State(st): State<MembershipState>,
    Path(node): Path<String>,
) -> Result<Response, ApiError> {
    let view = st.gossip.view();
    let Some(member) = view.members.iter().find(|m| m.name == node) else {
        return Err(ApiError::not_found(format!("unknown member {node:?}")));
    };
    if member.state == MemberState::Dead {
        st.gossip.force_leave(&node).await;
    }
    // Consul answers 200 for a live member too: it refutes the leave itself.
    Ok(StatusCode::OK.into_response())
}

async fn fire(
    State(st): State<MembershipState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    if name.starts_with(colony_runtime::gossip::INTERNAL_EVENT_PREFIX) {
        return Err(ApiError::bad_request(format!(
            "event names starting with {:?} are reserved for colony",
            colony_runtime::gossip::INTERNAL_EVENT_PREFIX
        )));
    }
    let query = Query::parse(raw.as_deref());
    let filter = |k: &str| query.get(k).unwrap_or_default().to_string();
    let event = st
        .gossip
        .fire_event(&name, body.to_vec())
        .await
        .map_err(ApiError::bad_request)?;
    let payload = if event.payload.is_empty() {
        serde_json::Value::Null
    } else {
        json!(base64::engine::general_purpose::STANDARD.encode(&event.payload))
    };
    let doc = json!({
        "ID": event.id,
        "Name": event.name,
        "Payload": payload,
        "NodeFilter": filter("node"),
        "ServiceFilter": filter("service"),
        "TagFilter": filter("tag"),
        "Version": 1,
        "LTime": 0,
    });
    let me = st.gossip.view().local.map(|l| l.name).unwrap_or_default();
    Ok(local_json(&doc, &view_evidence(&me, crate::now_ms())))
}

async fn list_events(State(st): State<MembershipState>, RawQuery(raw): RawQuery) -> Response {
    let query = Query::parse(raw.as_deref());
    let name = query.get("name").map(str::to_string);
    let view = st.gossip.view();
    let out: Vec<_> = view
        .events
        .iter()
        .filter(|e| {
            !e.name
                .starts_with(colony_runtime::gossip::INTERNAL_EVENT_PREFIX)
        })
        .filter(|e| name.as_deref().is_none_or(|n| n == e.name))
        .map(|e| {
            let payload = if e.payload.is_empty() {
                serde_json::Value::Null
            } else {
                json!(base64::engine::general_purpose::STANDARD.encode(&e.payload))
            };
            json!({
                "ID": e.id, "Name": e.name, "Payload": payload,
                "NodeFilter": "", "ServiceFilter": "", "TagFilter": "",
                "Version": 1, "LTime": e.ltime,
            })
        })
        .collect();
    let me = view.local.map(|l| l.name).unwrap_or_default();
    let mut response = local_json(&out, &view_evidence(&me, crate::now_ms()));
    let index = view.events.last().map_or(1, |e| e.ltime.max(1));
    if let Ok(value) = index.to_string().parse() {
        response.headers_mut().insert("x-consul-index", value);
    }
    response
}

#[derive(serde::Deserialize)]
struct KeyringRequest {
    #[serde(rename = "Key")]
    key: String,
}

/// The key fingerprints of each live member, primary first: this agent's from its keyring,
/// the others' from the `keys` tag they announce (`None` until one is heard).
fn members_keys(gossip: &Gossip) -> Vec<(String, Option<Vec<String>>)> {
    let view = gossip.view();
    let local = view
        .local
        .iter()
        .map(|me| (me.name.clone(), gossip.keyring_fingerprints()));
    let others = view
        .members
        .iter()
        .filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
        .map(|m| {
            let keys = m
                .meta
                .tags
                .get(colony_runtime::gossip::TAG_KEYS)
                .map(|tag| tag.split(',').map(str::to_string).collect());
            (m.name.clone(), keys)
        });
    local.chain(others).collect()
}

/// Consul's keyring listing: for each key this agent holds, how many live members hold it
/// and how many use it as primary, from the key fingerprints every member announces.
async fn keyring_list(State(st): State<MembershipState>) -> Result<Response, ApiError> {
    let keys = st.gossip.keyring_list().ok_or_else(|| {
        ApiError::bad_request(
            "gossip encryption is not enabled on this agent (start it with --encrypt)",
        )
    })?;
    let members = members_keys(&st.gossip);
    let mut counts = serde_json::Map::new();
    let mut primaries = serde_json::Map::new();
    for key in &keys {
        let print = colony_runtime::keyring::parse_key(key)
            .map(|k| colony_runtime::keyring::fingerprint(&k))
            .unwrap_or_default();
        let held = members
            .iter()
            .filter(|(_, prints)| prints.as_ref().is_some_and(|p| p.contains(&print)))
            .count();
        let primary = members
            .iter()
            .filter(|(_, prints)| prints.as_ref().and_then(|p| p.first()) == Some(&print))
            .count();
        counts.insert(key.clone(), json!(held));
        if primary > 0 {
            primaries.insert(key.clone(), json!(primary));
        }
    }
    let messages: serde_json::Map<String, serde_json::Value> = members
        .iter()
        .filter(|(_, prints)| prints.is_none())
        .map(|(name, _)| (name.clone(), json!("has not announced its keys yet")))
        .collect();
    let me = st.gossip.view().local.map(|l| l.name).unwrap_or_default();
    let body = json!([{
        "WAN": false,
        "Datacenter": st.datacenter,
        "Segment": "",
        "Keys": counts,
        "PrimaryKeys": primaries,
        "NumNodes": members.len(),
        "Messages": messages,
    }]);
    Ok(local_json(&body, &view_evidence(&me, crate::now_ms())))
}

/// A keyring operation for the whole cluster: applied here, then announced to every member.
/// `use` waits (409) until every live member holds the key, so that no member is cut off
/// by traffic it cannot open; `remove` waits until no live member uses the key as primary.
async fn keyring_op(
    st: &MembershipState,
    op: KeyringOp,
    body: &[u8],
) -> Result<Response, ApiError> {
    let request: KeyringRequest = crate::json::decode(body)?;
    let key = colony_runtime::keyring::parse_key(&request.key)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let print = colony_runtime::keyring::fingerprint(&key);
    let members = members_keys(&st.gossip);
    let blocking: Vec<&str> = match op {
        KeyringOp::Install => Vec::new(),
        KeyringOp::Use => members
            .iter()
            .filter(|(_, prints)| !prints.as_ref().is_some_and(|p| p.contains(&print)))
            .map(|(name, _)| name.as_str())
            .collect(),
        KeyringOp::Remove => members
            .iter()
            .filter(|(_, prints)| prints.as_ref().and_then(|p| p.first()) == Some(&print))
            .map(|(name, _)| name.as_str())
            .collect(),
    };
    // This agent's own primary is refused below by its keyring, with its own message.
    let only_my_primary = op == KeyringOp::Remove && members_is_only_me(st, &blocking);
    if !blocking.is_empty() && !only_my_primary {
        let what = match op {
            KeyringOp::Use => {
                "do not hold the key yet (install it first; it spreads within seconds)"
            }
            _ => "still use the key as primary (the new primary is still spreading)",
        };
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message: format!(
                "{} of {} members {what}: {}; try again",
                blocking.len(),
                members.len(),
                blocking.join(", ")
            ),
        });
    }
    st.gossip
        .keyring_change(op, &request.key)
        .map_err(ApiError::bad_request)?;
    st.gossip
        .keyring_announce(op, &request.key)
        .await
        .map_err(|e| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("changed here, but announcing it to the members failed: {e}"),
        })?;
    Ok(StatusCode::OK.into_response())
}

/// Whether the only member in `names` is this agent (its own primary check comes from its
/// keyring, with its own error).
fn members_is_only_me(st: &MembershipState, names: &[&str]) -> bool {
    let me = st.gossip.view().local.map(|l| l.name).unwrap_or_default();
    names == [me.as_str()]
}

async fn keyring_install(
    State(st): State<MembershipState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    keyring_op(&st, KeyringOp::Install, &body).await
}

async fn keyring_use(State(st): State<MembershipState>, body: Bytes) -> Result<Response, ApiError> {
    keyring_op(&st, KeyringOp::Use, &body).await
}

async fn keyring_remove(
    State(st): State<MembershipState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    keyring_op(&st, KeyringOp::Remove, &body).await
}

/// Routes of a client agent: membership is served here; `/v1/agent/self` describes this
/// agent; registrations of this node's services and checks are kept by this agent
/// (`crate::local_state`) and forwarded; everything else (catalog, health, KV, sessions,
/// transactions, reads of this node's services and checks) is forwarded to a server over its
/// RPC port, and answers 503 "No known Consul servers" while none is known.
pub fn client_router(
    state: MembershipState,
    forwarder: Arc<crate::forward::ClientForwarder>,
) -> Router {
    use crate::forward::ttl_update_handler as ttl;
    let forwarded = Router::new()
        .route("/v1/status/leader", get(crate::forward::status_handler))
        .route("/v1/status/peers", get(crate::forward::status_handler))
        .route("/v1/agent/check/pass/{id}", put(ttl).get(ttl))
        .route("/v1/agent/check/warn/{id}", put(ttl).get(ttl))
        .route("/v1/agent/check/fail/{id}", put(ttl).get(ttl))
        .route("/v1/agent/check/update/{id}", put(ttl))
        .route("/v1/agent/services", get(crate::local_endpoints::services))
        .route(
            "/v1/agent/service/{id}",
            get(crate::local_endpoints::service),
        )
        .route("/v1/agent/checks", get(crate::local_endpoints::checks))
        .route(
            "/v1/agent/service/register",
            put(crate::local_endpoints::register_service),
        )
        .route(
            "/v1/agent/service/deregister/{id}",
            put(crate::local_endpoints::deregister_service),
        )
        .route(
            "/v1/agent/check/register",
            put(crate::local_endpoints::register_check),
        )
        .route(
            "/v1/agent/check/deregister/{id}",
            put(crate::local_endpoints::deregister_check),
        )
        .fallback(crate::forward::forward_handler)
        .with_state(forwarder.clone());
    routes(state.clone())
        .route("/v1/agent/self", get(client_self).with_state(state.clone()))
        .route(
            "/v1/agent/metrics",
            get(client_metrics).with_state((state.clone(), forwarder.clone())),
        )
        .merge(forwarded)
        .layer(axum::middleware::from_fn_with_state(state, client_evidence))
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::REQUEST_BODY_BYTES_MAX,
        ))
}

/// Gives a client agent's own answers (its refusals, a registration it keeps pending, "no
/// known servers") the evidence header every answer carries: this agent's view, eventual.
/// Forwarded answers carry the server's.
async fn client_evidence(
    State(st): State<MembershipState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let binding = format!("http:{}", request.uri().path());
    let mut response = next.run(request).await;
    if !response
        .headers()
        .contains_key(crate::respond::EVIDENCE_HEADER)
    {
        let view = st.gossip.view();
        let name = view.local.as_ref().map_or("", |m| m.name.as_str());
        let evidence = Evidence {
            binding,
            source: "agent".to_string(),
            ..view_evidence(name, crate::now_ms())
        };
        crate::respond::insert_evidence(response.headers_mut(), &evidence);
    }
    response
}

async fn client_self(State(st): State<MembershipState>) -> Response {
    let view = st.gossip.view();
    let Some(local) = view.local.as_ref() else {
        return crate::forward::no_known_servers().into_response();
    };
    let body = json!({
        "Config": {
            "Datacenter": st.datacenter,
            "NodeName": local.name,
            "Server": st.server,
            "Version": env!("CARGO_PKG_VERSION"),
        },
        "Member": member_json(local, &st.datacenter, view.leaving),
    });
    local_json(&body, &view_evidence(&local.name, crate::now_ms()))
}

/// Membership's metrics in Prometheus text: members by state as this agent sees them,
/// Lifeguard's awareness score, and the gossip counters.
pub(crate) fn gossip_prometheus(gossip: &Gossip) -> String {
    use std::fmt::Write as _;
    let view = gossip.view();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP colony_gossip_members Members this agent knows, by state (itself included).\n\
         # TYPE colony_gossip_members gauge"
    );
    for (state, count) in members_by_state(&view) {
        let _ = writeln!(out, "colony_gossip_members{{state=\"{state}\"}} {count}");
    }
    let _ = writeln!(
        out,
        "# HELP colony_gossip_awareness Lifeguard's local health score (0 healthy).\n\
         # TYPE colony_gossip_awareness gauge\ncolony_gossip_awareness {}",
        view.awareness
    );
    for (name, help, value) in gossip_counters(&view) {
        let _ = writeln!(
            out,
            "# HELP colony_gossip_{name} {help}\n# TYPE colony_gossip_{name} counter\n\
             colony_gossip_{name}_total {value}"
        );
    }
    out
}

/// Membership's metrics as Consul's `/v1/agent/metrics` lists them: (gauges, counters).
pub(crate) fn gossip_consul_metrics(
    gossip: &Gossip,
) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let view = gossip.view();
    let mut gauges: Vec<serde_json::Value> = members_by_state(&view)
        .into_iter()
        .map(|(state, count)| {
            json!({"Name": "colony.gossip.members", "Value": count, "Labels": {"state": state}})
        })
        .collect();
    gauges.push(json!({"Name": "colony.gossip.awareness", "Value": view.awareness, "Labels": {}}));
    let counters = gossip_counters(&view)
        .into_iter()
        .map(|(name, _, value)| {
            json!({
                "Name": format!("colony.gossip.{name}"),
                "Count": value, "Sum": value, "Min": value, "Max": value, "Mean": value,
                "Rate": 0, "Stddev": 0, "Labels": {},
            })
        })
        .collect();
    (gauges, counters)
}

fn members_by_state(view: &colony_runtime::gossip::GossipView) -> Vec<(&'static str, u64)> {
    [
        MemberState::Alive,
        MemberState::Suspect,
        MemberState::Dead,
        MemberState::Left,
    ]
    .into_iter()
    .map(|state| {
        let others = view.members.iter().filter(|m| m.state == state).count() as u64;
        let local = view.local.as_ref().is_some_and(|m| m.state == state);
        (state.as_str(), others + u64::from(local))
    })
    .collect()
}

fn gossip_counters(
    view: &colony_runtime::gossip::GossipView,
) -> Vec<(&'static str, &'static str, u64)> {
    let stats = view.stats;
    vec![
        ("packets_out", "Gossip datagrams sent.", stats.packets_out),
        (
            "packets_in",
            "Gossip datagrams received and decoded.",
            stats.packets_in,
        ),
        ("bytes_out", "Gossip datagram bytes sent.", stats.bytes_out),
        (
            "streams_out",
            "State-exchange stream frames sent.",
            stats.streams_out,
        ),
        (
            "decode_errors",
            "Datagrams or frames that could not be decoded, dropped.",
            view.decode_errors,
        ),
        ("probes_ok", "Probes acknowledged.", stats.probes_ok),
        (
            "probes_failed",
            "Probes that ended without an ack.",
            stats.probes_failed,
        ),
        (
            "suspicions_raised",
            "Suspicions raised from this agent's probes.",
            stats.suspicions_raised,
        ),
        (
            "refutations",
            "Suspicions about this agent it refuted.",
            stats.refutations,
        ),
    ]
}

/// `/v1/agent/metrics` on a client agent: membership as it sees it and its registrations'
/// anti-entropy (the store's metrics live on the servers), as Consul's JSON or, with
/// `?format=prometheus`, Prometheus text.
async fn client_metrics(
    State((st, forwarder)): State<(MembershipState, Arc<crate::forward::ClientForwarder>)>,
    RawQuery(raw): RawQuery,
) -> Response {
    use std::fmt::Write as _;
    let local = forwarder.local();
    let query = Query::parse(raw.as_deref());
    if query.get("format") == Some("prometheus") {
        let mut text = gossip_prometheus(&st.gossip);
        let _ = writeln!(
            text,
            "# HELP colony_local_registrations_pending Registrations no server has taken yet.\n\
             # TYPE colony_local_registrations_pending gauge\n\
             colony_local_registrations_pending {}",
            local.pending()
        );
        for (name, help, value) in local.sync_counters.values() {
            let _ = writeln!(
                text,
                "# HELP colony_anti_entropy_{name} {help}\n\
                 # TYPE colony_anti_entropy_{name} counter\n\
                 colony_anti_entropy_{name}_total {value}"
            );
        }
        return (
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            text,
        )
            .into_response();
    }
    let (mut gauges, mut counters) = gossip_consul_metrics(&st.gossip);
    gauges.push(json!({"Name": "colony.local.registrations_pending", "Value": local.pending(), "Labels": {}}));
    for (name, _, value) in local.sync_counters.values() {
        counters.push(json!({
            "Name": format!("colony.anti_entropy.{name}"),
            "Count": value, "Sum": value, "Min": value, "Max": value, "Mean": value,
            "Rate": 0, "Stddev": 0, "Labels": {},
        }));
    }
    let now = crate::now_ms();
    let body = json!({
        "Timestamp": now.to_string(),
        "Gauges": gauges,
        "Points": [],
        "Counters": counters,
        "Samples": [],
    });
    let name = st.gossip.view().local.map(|m| m.name).unwrap_or_default();
    local_json(&body, &view_evidence(&name, now))
}
