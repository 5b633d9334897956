//! A client agent's `/v1/agent/*` endpoints for its own registrations
//! (`crate::local_state`): registering and deregistering services and checks (validated
//! here, recorded, then forwarded; kept pending when no server can take them), and reading
//! them back while no server can be reached.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse as _, Response};
use serde::Serialize;

use crate::consul::types::{AgentServiceJson, CheckJson};
use crate::error::{ApiError, ApiResult};
use crate::forward::{ClientForwarder, path_and_query, split_request};
use crate::local_state::{Kind, LocalState, Registration, SYNC_HEADER, parse_check};
use crate::query::Query;

/// Whether a forwarded answer means no server could take the request (as opposed to a
/// server refusing it): the change stays with this agent, for anti-entropy.
fn server_unavailable(response: &Response) -> bool {
    response.status().is_server_error()
}

/// The answer to a change this agent keeps but could not write to the catalog yet.
fn accepted_pending(local: &LocalState) -> Response {
    tracing::info!(
        node = %local.node,
        "no server took a registration change; kept by this agent, anti-entropy will write it"
    );
    local.wake.notify_one();
    let mut response = StatusCode::OK.into_response();
    response
        .headers_mut()
        .insert(SYNC_HEADER, HeaderValue::from_static("pending"));
    response
}

fn internal(error: String) -> ApiError {
    tracing::error!(%error, "keeping a registration");
    ApiError::internal(error)
}

/// Records `registration` under `id`, forwards the request, and undoes the record if a
/// server refuses it. With no server to take it, the record stays (anti-entropy writes it
/// later) if `keep_if_unavailable`; otherwise (only a server could validate it) the
/// server's unavailability is the answer.
async fn record_and_forward(
    forwarder: &ClientForwarder,
    kind: Kind,
    id: &str,
    registration: Registration,
    request: Request,
    keep_if_unavailable: bool,
) -> ApiResult<Response> {
    let local = forwarder.local();
    let _changing = local.changing.lock().await;
    // Recorded as pending first, so that a crash before the server's answer leaves it to
    // anti-entropy.
    let before = local
        .set(kind, id, Some(registration.clone()))
        .map_err(internal)?;
    let response = forwarder.forward(request).await;
    if response.status().is_success() {
        let synced = Registration {
            pending: false,
            ..registration
        };
        local.set(kind, id, Some(synced)).map_err(internal)?;
        return Ok(response);
    }
    if server_unavailable(&response) && keep_if_unavailable {
        return Ok(accepted_pending(local));
    }
    // Refused (or not verifiable here): this agent keeps what it had.
    local.set(kind, id, before).map_err(internal)?;
    Ok(response)
}

/// `PUT /v1/agent/service/register` on a client agent.
pub(crate) async fn register_service(
    State(forwarder): State<Arc<ClientForwarder>>,
    request: Request,
) -> ApiResult<Response> {
    let (parts, body) = split_request(request).await?;
    let query = Query::parse(parts.uri.query());
    if query.has("replace-existing-checks") {
        query.go_bool("replace-existing-checks")?;
    }
    let (service, checks) = forwarder.local().parse_service(&body, crate::now_ms())?;
    let registration = Registration {
        uri: path_and_query(&parts),
        body: utf8(&body)?,
        check_ids: checks.into_iter().map(|c| c.id).collect(),
        pending: true,
    };
    let request = Request::from_parts(parts, Body::from(body));
    record_and_forward(
        &forwarder,
        Kind::Service,
        &service.id,
        registration,
        request,
        true,
    )
    .await
}

/// `PUT /v1/agent/check/register` on a client agent.
pub(crate) async fn register_check(
    State(forwarder): State<Arc<ClientForwarder>>,
    request: Request,
) -> ApiResult<Response> {
    let (parts, body) = split_request(request).await?;
    let check = parse_check(&body, crate::now_ms())?;
    let registration = Registration {
        uri: path_and_query(&parts),
        body: utf8(&body)?,
        check_ids: vec![check.id.clone()],
        pending: true,
    };
    // A check of a service this agent does not keep: only a server knows whether the service
    // exists.
    let verifiable = check.service_id.is_empty()
        || forwarder
            .local()
            .lock()
            .services
            .contains_key(&check.service_id);
    let request = Request::from_parts(parts, Body::from(body));
    record_and_forward(
        &forwarder,
        Kind::Check,
        &check.id,
        registration,
        request,
        verifiable,
    )
    .await
}

/// `PUT /v1/agent/service/deregister/:id` on a client agent.
pub(crate) async fn deregister_service(
    State(forwarder): State<Arc<ClientForwarder>>,
    UrlPath(id): UrlPath<String>,
    request: Request,
) -> ApiResult<Response> {
    deregister(&forwarder, Kind::Service, &id, request).await
}

/// `PUT /v1/agent/check/deregister/:id` on a client agent.
pub(crate) async fn deregister_check(
    State(forwarder): State<Arc<ClientForwarder>>,
    UrlPath(id): UrlPath<String>,
    request: Request,
) -> ApiResult<Response> {
    deregister(&forwarder, Kind::Check, &id, request).await
}

/// Forgets registration `id` and forwards the deregistration; a registration only this
/// agent knew (not in the catalog, or no server reachable) is forgotten all the same.
async fn deregister(
    forwarder: &ClientForwarder,
    kind: Kind,
    id: &str,
    request: Request,
) -> ApiResult<Response> {
    let local = forwarder.local();
    let _changing = local.changing.lock().await;
    let known = {
        let registrations = local.lock();
        match kind {
            Kind::Service => registrations.services.contains_key(id),
            Kind::Check => registrations.checks.contains_key(id),
        }
    };
    let response = forwarder.forward(request).await;
    if !known {
        return Ok(response);
    }
    let status = response.status();
    if status.is_success() || status == StatusCode::NOT_FOUND || server_unavailable(&response) {
        local.set(kind, id, None).map_err(internal)?;
        if !status.is_success() {
            return Ok(if server_unavailable(&response) {
                accepted_pending(local)
            } else {
                StatusCode::OK.into_response()
            });
        }
    }
    Ok(response)
}

/// `GET /v1/agent/services` on a client agent: the servers' view of this node, or, while no
/// server is reachable, this agent's own registrations.
pub(crate) async fn services(
    State(forwarder): State<Arc<ClientForwarder>>,
    request: Request,
) -> Response {
    let response = forwarder.forward(request).await;
    if !server_unavailable(&response) {
        return response;
    }
    let local = forwarder.local();
    let (services, _) = local.services_and_checks(crate::now_ms(), |_| None);
    let map: BTreeMap<String, AgentServiceJson> = services
        .iter()
        .map(|s| {
            (
                s.id.clone(),
                AgentServiceJson::from_service(s, &local.datacenter, false),
            )
        })
        .collect();
    local_answer(&map)
}

/// `GET /v1/agent/service/:id` on a client agent (see [`services`]).
pub(crate) async fn service(
    State(forwarder): State<Arc<ClientForwarder>>,
    UrlPath(id): UrlPath<String>,
    request: Request,
) -> ApiResult<Response> {
    let response = forwarder.forward(request).await;
    if !server_unavailable(&response) {
        return Ok(response);
    }
    let local = forwarder.local();
    let (services, _) = local.services_and_checks(crate::now_ms(), |_| None);
    let service = services
        .iter()
        .find(|s| s.id == id)
        .ok_or_else(|| ApiError::not_found(format!("unknown service ID: {id}")))?;
    Ok(local_answer(&AgentServiceJson::from_service(
        service,
        &local.datacenter,
        false,
    )))
}

/// `GET /v1/agent/checks` on a client agent (see [`services`]); statuses are the last ones
/// this agent's check runners wrote.
pub(crate) async fn checks(
    State(forwarder): State<Arc<ClientForwarder>>,
    request: Request,
) -> Response {
    let response = forwarder.forward(request).await;
    if !server_unavailable(&response) {
        return response;
    }
    let local = forwarder.local();
    let (_, checks) = local.services_and_checks(crate::now_ms(), |id| forwarder.check_status(id));
    let map: BTreeMap<String, CheckJson> = checks
        .iter()
        .map(|c| {
            (
                c.id.clone(),
                CheckJson::from_check(c, serde_json::Value::Null),
            )
        })
        .collect();
    local_answer(&map)
}

/// An answer from this agent's registrations alone, marked so.
fn local_answer<T: Serialize>(value: &T) -> Response {
    let mut response = axum::Json(value).into_response();
    response
        .headers_mut()
        .insert(SYNC_HEADER, HeaderValue::from_static("local"));
    response
}

fn utf8(body: &[u8]) -> ApiResult<String> {
    String::from_utf8(body.to_vec())
        .map_err(|e| ApiError::bad_request(format!("request body is not UTF-8: {e}")))
}
