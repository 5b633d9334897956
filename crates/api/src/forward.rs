//! Client agents forward the HTTP API to a server, as Consul's clients do over its RPC port.
//!
//! The client side ([`ClientForwarder`]) picks a live server from membership (members whose
//! role is `server` and that advertise an RPC address), sends the whole request over the RPC
//! port (`RpcRequest::Http`), and relays the answer. The server side ([`http_forwarder`])
//! runs the request through the server's own router, so a forwarded request is answered
//! exactly as the server's HTTP port would answer it (consistency modes, blocking queries,
//! evidence), except that `/v1/agent/*` endpoints and a session's default node act for the
//! client's node ([`acting_node`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use colony_runtime::client_agent::{ClientChecks, ClientLink, LinkError};
use colony_runtime::rpc::{ForwardedHttp, HttpAnswer, OriginNode, RpcRequest, RpcResponse};
use colony_runtime::{Agent, HttpForwarder};
use colony_store::{HealthStatus, Node};
use tower::ServiceExt as _;

use crate::error::{ApiError, ApiResult};
use crate::local_state::LocalState;

/// The answer header naming the server that served a forwarded request.
pub const FORWARDED_TO_HEADER: &str = "x-colony-forwarded-to";
/// How long a forwarded request that is not a blocking query may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// Headers that describe one HTTP connection, not the request: never forwarded.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
    "host",
];

tokio::task_local! {
    /// The client agent a forwarded request came through, set while a server serves it.
    static ORIGIN: OriginNode;
}

/// The node `/v1/agent/*` endpoints act on: the client agent's that forwarded the request
/// being served, else this agent's own.
pub(crate) fn acting_node(agent: &Agent) -> String {
    ORIGIN
        .try_with(|origin| origin.name.clone())
        .unwrap_or_else(|_| agent.node_name().to_string())
}

/// The catalog entry of [`acting_node`]: a client node that membership has not brought into
/// the catalog yet gets a fresh entry with the address it forwarded.
pub(crate) fn acting_node_record(agent: &Agent) -> ApiResult<Node> {
    let name = acting_node(agent);
    if let Some(node) = agent.read(|s| s.node(&name).cloned()) {
        return Ok(node);
    }
    let origin = ORIGIN.try_with(Clone::clone).map_err(|_| {
        ApiError::internal(format!("this agent's node {name:?} is not in the catalog"))
    })?;
    Ok(Node {
        id: String::new(),
        name: origin.name,
        address: origin.address.clone(),
        tagged_addresses: [
            ("lan".to_string(), origin.address.clone()),
            ("wan".to_string(), origin.address),
        ]
        .into(),
        meta: Default::default(),
        create_index: 0,
        modify_index: 0,
    })
}

/// The server side: serves requests forwarded by client agents through `router` (the
/// server's own HTTP router).
pub fn http_forwarder(router: Router) -> HttpForwarder {
    Arc::new(move |forwarded| {
        let router = router.clone();
        Box::pin(serve_forwarded(router, forwarded))
    })
}

async fn serve_forwarded(router: Router, forwarded: ForwardedHttp) -> HttpAnswer {
    let mut builder = Request::builder()
        .method(forwarded.method.as_str())
        .uri(forwarded.uri.as_str());
    for (name, value) in &forwarded.headers {
        builder = builder.header(name.as_str(), value.as_slice());
    }
    let request = match builder.body(Body::from(forwarded.body)) {
        Ok(request) => request,
        Err(error) => {
            return HttpAnswer {
                status: StatusCode::BAD_REQUEST.as_u16(),
                headers: vec![("content-type".into(), b"text/plain; charset=utf-8".to_vec())],
                body: format!("malformed forwarded request: {error}\n").into_bytes(),
            };
        }
    };
    let response = match ORIGIN
        .scope(forwarded.origin, router.oneshot(request))
        .await
    {
        Ok(response) => response,
        Err(infallible) => match infallible {},
    };
    let (parts, body) = response.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes.to_vec(),
        Err(error) => {
            return HttpAnswer {
                status: StatusCode::INTERNAL_SERVER_ERROR.as_u16(),
                headers: Vec::new(),
                body: format!("the server could not produce its answer: {error}\n").into_bytes(),
            };
        }
    };
    HttpAnswer {
        status: parts.status.as_u16(),
        headers: end_to_end_headers(&parts.headers),
        body,
    }
}

fn end_to_end_headers(headers: &axum::http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
        .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
        .collect()
}

/// The client side: forwards HTTP API requests to a live server, restarts the TTL of a
/// check the client runs once an update of it was written, and keeps the client's own
/// registrations (`crate::local_state`).
pub struct ClientForwarder {
    link: Arc<ClientLink>,
    checks: Arc<ClientChecks>,
    local: Arc<LocalState>,
}

impl ClientForwarder {
    /// A forwarder over `link`, for a client agent whose checks `checks` runs and whose
    /// registrations `local` keeps.
    pub fn new(link: Arc<ClientLink>, checks: Arc<ClientChecks>, local: Arc<LocalState>) -> Self {
        ClientForwarder {
            link,
            checks,
            local,
        }
    }

    /// The status this agent's runner last wrote for check `id`, as of its last poll.
    pub fn check_status(&self, id: &str) -> Option<HealthStatus> {
        self.checks.last_status(id)
    }

    /// Whether membership names a live server.
    pub fn knows_a_server(&self) -> bool {
        !self.link.servers().is_empty()
    }

    /// The client agent's own registrations.
    pub fn local(&self) -> &LocalState {
        &self.local
    }

    /// Sends one request to a server (as this client's node) and returns the status and
    /// body of its answer; used by anti-entropy.
    ///
    /// # Errors
    /// No server could be reached, or the answer was not an HTTP answer.
    pub async fn exchange(
        &self,
        method: &str,
        uri: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Vec<u8>), String> {
        let forwarded = ForwardedHttp {
            method: method.to_string(),
            uri: uri.to_string(),
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body,
            origin: self.link.origin().clone(),
        };
        let request = RpcRequest::Http(Box::new(forwarded));
        match self
            .link
            .call(request, FORWARD_TIMEOUT, method == "GET")
            .await
        {
            Ok((_, RpcResponse::Http(answer))) => Ok((
                StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                answer.body,
            )),
            Ok((server, other)) => Err(format!("server {server} answered {other:?}")),
            Err(error) => Err(error.to_string()),
        }
    }

    /// Forwards `request` to a server and relays its answer; tries the next server while
    /// the request cannot have been delivered (or is a read).
    pub async fn forward(&self, request: Request) -> Response {
        match self.try_forward(request).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        }
    }

    async fn try_forward(&self, request: Request) -> ApiResult<Response> {
        let (parts, body) = split_request(request).await?;
        let uri = path_and_query(&parts);
        let timeout = forward_timeout(parts.uri.query())?;
        let forwarded = ForwardedHttp {
            method: parts.method.as_str().to_string(),
            uri,
            headers: end_to_end_headers(&parts.headers),
            body: body.to_vec(),
            origin: self.link.origin().clone(),
        };
        let resend_if_lost = parts.method == axum::http::Method::GET;
        let request = RpcRequest::Http(Box::new(forwarded));
        match self.link.call(request, timeout, resend_if_lost).await {
            Ok((server, RpcResponse::Http(answer))) => Ok(relay(*answer, &server)),
            Ok((server, other)) => Err(ApiError::internal(format!(
                "server {server} answered a forwarded request with {other:?}"
            ))),
            Err(LinkError::Remote(error)) => Err(error.into()),
            Err(error) => Err(ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: error.to_string(),
            }),
        }
    }
}

/// A request's head and its whole body (at most [`crate::REQUEST_BODY_BYTES_MAX`] bytes).
pub(crate) async fn split_request(
    request: Request,
) -> ApiResult<(axum::http::request::Parts, axum::body::Bytes)> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, crate::REQUEST_BODY_BYTES_MAX)
        .await
        .map_err(|e| {
            ApiError::too_large(format!(
                "request body too large or unreadable (at most {} bytes): {e}",
                crate::REQUEST_BODY_BYTES_MAX
            ))
        })?;
    Ok((parts, body))
}

/// A request's path with its query.
pub(crate) fn path_and_query(parts: &axum::http::request::Parts) -> String {
    parts.uri.path_and_query().map_or_else(
        || parts.uri.path().to_string(),
        |pq| pq.as_str().to_string(),
    )
}

/// Consul's answer when a client agent knows no server.
pub(crate) fn no_known_servers() -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: LinkError::NoKnownServers.to_string(),
    }
}

/// How long to wait for a forwarded request: a blocking query waits up to its `wait` (5
/// minutes by default, at most 10, plus Consul's jitter of wait/16) before the server
/// answers, so the forward waits that long and a margin.
fn forward_timeout(raw_query: Option<&str>) -> ApiResult<Duration> {
    let query = crate::query::Query::parse(raw_query);
    if !query.has("index") {
        return Ok(FORWARD_TIMEOUT);
    }
    let wait_ms = match query.get("wait").filter(|w| !w.is_empty()) {
        Some(text) => colony_base::parse_go_duration_ms(text)
            .map_err(|e| ApiError::bad_request(format!("Invalid wait time: {e}")))?,
        None => 300_000,
    }
    .min(600_000);
    Ok(Duration::from_millis(wait_ms + wait_ms / 16) + FORWARD_TIMEOUT)
}

fn relay(answer: HttpAnswer, server: &str) -> Response {
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (name, value) in answer.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            headers.append(name, value);
        }
    }
    if let Ok(value) = HeaderValue::from_str(server) {
        headers.insert(FORWARDED_TO_HEADER, value);
    }
    response
}

/// The fallback handler of a client agent: forwards whatever it does not serve itself.
pub(crate) async fn forward_handler(
    State(forwarder): State<Arc<ClientForwarder>>,
    request: Request,
) -> Response {
    forwarder.forward(request).await
}

/// `/v1/agent/check/{pass,warn,fail,update}/:id` on a client agent: forwarded (the server
/// writes the status for this client's node), then, once written, the TTL of the check this
/// client runs restarts.
pub(crate) async fn ttl_update_handler(
    State(forwarder): State<Arc<ClientForwarder>>,
    request: Request,
) -> ApiResult<Response> {
    let path = request.uri().path().to_string();
    let mut segments = path.trim_start_matches("/v1/agent/check/").splitn(2, '/');
    let (verb, id) = (
        segments.next().unwrap_or_default().to_string(),
        segments.next().unwrap_or_default(),
    );
    let id = percent_encoding::percent_decode_str(id)
        .decode_utf8_lossy()
        .into_owned();
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, crate::REQUEST_BODY_BYTES_MAX)
        .await
        .map_err(|e| ApiError::too_large(format!("request body unreadable: {e}")))?;
    let status = match verb.as_str() {
        "pass" => Some(HealthStatus::Passing),
        "warn" => Some(HealthStatus::Warning),
        "fail" => Some(HealthStatus::Critical),
        // The server validates the body; a valid one names the status.
        _ => crate::json::decode::<crate::consul::types::CheckUpdateRequest>(&body)
            .ok()
            .and_then(|r| r.status)
            .and_then(|text| HealthStatus::parse(&text)),
    };
    let response = forwarder
        .forward(Request::from_parts(parts, Body::from(body)))
        .await;
    if response.status() == StatusCode::OK
        && let Some(status) = status
    {
        forwarder.checks.reset_ttl(&id, status);
    }
    Ok(response)
}

/// `/v1/status/leader` and `/v1/status/peers` on a client agent: forwarded once a server is
/// known; before that, an empty answer (no leader known), as a lone client sees it.
pub(crate) async fn status_handler(
    State(forwarder): State<Arc<ClientForwarder>>,
    request: Request,
) -> Response {
    if forwarder.link.servers().is_empty() {
        let empty = if request.uri().path().ends_with("/peers") {
            serde_json::json!([])
        } else {
            serde_json::json!("")
        };
        return axum::Json(empty).into_response();
    }
    forwarder.forward(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_queries_wait_their_wait_plus_a_margin() {
        assert_eq!(forward_timeout(None).expect("ok"), FORWARD_TIMEOUT);
        assert_eq!(
            forward_timeout(Some("index=5&wait=16s")).expect("ok"),
            Duration::from_millis(17_000) + FORWARD_TIMEOUT
        );
        assert_eq!(
            forward_timeout(Some("index=5&wait=1h")).expect("ok"),
            Duration::from_millis(600_000 + 37_500) + FORWARD_TIMEOUT
        );
        assert!(forward_timeout(Some("index=5&wait=soon")).is_err());
    }
}
