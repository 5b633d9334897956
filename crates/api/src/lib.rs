//! Colony's client dialects over one [`Agent`]: Consul's HTTP API (`/v1/agent`, `/v1/catalog`,
//! `/v1/health`, `/v1/kv`, `/v1/txn`, `/v1/session`, `/v1/status`) and colony's native API
//! (`/v1/colony/*`), which adds modes and evidence.
//!
//! What it is: request decoding (Consul's case-insensitive JSON), validation with precise 4xx
//! reasons, blocking queries, and answers that carry Consul's index headers plus
//! `X-Colony-Evidence` on every response.
//!
//! What it is not: no state lives here; every write goes through [`Agent::propose`] and every
//! read through [`Agent::read`].
//!
//! Driving it: build the router with [`router`] and serve it with [`serve`].
#![deny(unreachable_pub)]

pub mod anti_entropy;
pub mod blocking;
pub mod consul;
pub mod dns;
pub mod error;
pub mod forward;
pub mod json;
pub mod local_endpoints;
pub mod local_state;
pub mod membership;
pub mod query;
pub mod respond;

/// The HTTP router every dialect is built on (the DNS interface reads through it too).
pub use axum::Router;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, put};
use colony_runtime::Agent;
use colony_runtime::metrics::{EndpointLabels, HttpLabels};
use consul::{agent as ag, catalog, kv, session};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

/// The largest request body accepted (a transaction of 64 operations with base64 values fits).
pub const REQUEST_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The agent behind the API.
    pub agent: Arc<Agent>,
}

/// Wall-clock milliseconds, for evidence observed now.
pub(crate) fn now_ms() -> u64 {
    colony_runtime::wall_ms()
}

/// Builds the HTTP router of a server (or dev) agent: the store-backed endpoints plus the
/// membership endpoints.
pub fn router(agent: Arc<Agent>, membership: membership::MembershipState) -> Router {
    let state = AppState { agent };
    Router::new()
        .route("/v1/agent/self", get(ag::self_info))
        .route("/v1/agent/services", get(ag::services))
        .route("/v1/agent/service/{id}", get(ag::service))
        .route("/v1/agent/checks", get(ag::checks))
        .route("/v1/agent/service/register", put(ag::register_service))
        .route(
            "/v1/agent/service/deregister/{id}",
            put(ag::deregister_service),
        )
        .route(
            "/v1/agent/service/maintenance/{id}",
            put(ag::service_maintenance),
        )
        .route("/v1/agent/check/register", put(ag::register_check))
        .route("/v1/agent/check/deregister/{id}", put(ag::deregister_check))
        .route(
            "/v1/agent/check/pass/{id}",
            put(ag::check_pass).get(ag::check_pass),
        )
        .route(
            "/v1/agent/check/warn/{id}",
            put(ag::check_warn).get(ag::check_warn),
        )
        .route(
            "/v1/agent/check/fail/{id}",
            put(ag::check_fail).get(ag::check_fail),
        )
        .route("/v1/agent/check/update/{id}", put(ag::check_update))
        .route("/v1/agent/maintenance", put(ag::node_maintenance))
        .route("/v1/agent/metrics", {
            let gossip = membership.gossip.clone();
            get(move |state, query| ag::metrics(state, query, gossip))
        })
        .route("/v1/catalog/datacenters", get(catalog::datacenters))
        .route("/v1/catalog/services", get(catalog::services))
        .route("/v1/catalog/service/{name}", get(catalog::service))
        .route("/v1/catalog/nodes", get(catalog::nodes))
        .route("/v1/catalog/node/{name}", get(catalog::node))
        .route("/v1/catalog/register", put(catalog::register))
        .route("/v1/catalog/deregister", put(catalog::deregister))
        .route("/v1/health/service/{name}", get(catalog::health_service))
        .route("/v1/health/checks/{name}", get(catalog::health_checks))
        .route("/v1/health/node/{name}", get(catalog::health_node))
        .route("/v1/health/state/{state}", get(catalog::health_state))
        .route("/v1/kv", get(kv::get).put(kv::put).delete(kv::delete))
        .route("/v1/kv/", get(kv::get).put(kv::put).delete(kv::delete))
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .route("/v1/txn", put(kv::txn))
        .route("/v1/session/create", put(session::create))
        .route("/v1/session/destroy/{id}", put(session::destroy))
        .route("/v1/session/renew/{id}", put(session::renew))
        .route("/v1/session/info/{id}", get(session::info))
        .route("/v1/session/list", get(session::list))
        .route("/v1/session/node/{node}", get(session::node))
        .route("/v1/status/leader", get(consul::status_leader))
        .route("/v1/status/peers", get(consul::status_peers))
        .route(
            "/v1/operator/raft/configuration",
            get(consul::raft_configuration),
        )
        .route(
            "/v1/operator/raft/peer",
            axum::routing::delete(consul::raft_remove_peer),
        )
        .route("/v1/colony/modes", get(modes))
        .with_state(state.clone())
        .merge(membership::routes(membership))
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .layer(middleware::from_fn_with_state(state, observe))
}

/// Serves `router` on `listener` over HTTP/1.1 until `shutdown` resolves, then lets each open
/// connection finish its current request.
///
/// Each connection is one task running hyper's HTTP/1 connection directly: hyper-util's
/// auto-detecting (HTTP/1 and HTTP/2) connection that `axum::serve` uses kept about 31 KB per
/// idle connection, which thousands of parked blocking queries multiply.
///
/// # Errors
/// The IO error that stopped the listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) if is_transient_accept_error(&error) => {
                    tracing::warn!(%error, "accept failed, retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
                Err(error) => return Err(error),
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    Ok(())
}

/// Accept errors that concern one connection (or a momentary lack of file descriptors), not
/// the listener.
fn is_transient_accept_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted)
        || error.raw_os_error() == Some(24) // EMFILE: too many open files
        || error.raw_os_error() == Some(23) // ENFILE
}

/// The consistency a read of the store asks for (`?stale`, `?consistent`, `?max_stale`), or
/// `None` for requests that do not read the store.
fn read_consistency(
    request: &Request,
) -> Option<Result<colony_runtime::ReadConsistency, error::ApiError>> {
    use colony_runtime::ReadConsistency;
    if request.method() != axum::http::Method::GET {
        return None;
    }
    let path = request.uri().path();
    let reads_store = ["/v1/kv", "/v1/catalog/", "/v1/health/", "/v1/session/"]
        .iter()
        .any(|prefix| path.starts_with(prefix));
    if !reads_store {
        return None;
    }
    let query = query::Query::parse(request.uri().query());
    let stale = query.has("stale");
    let consistent = query.has("consistent");
    Some(match (stale, consistent) {
        (true, true) => Err(error::ApiError::bad_request(
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        )),
        (false, true) => Ok(ReadConsistency::Consistent),
        (_, false) => match query.get("max_stale") {
            Some(text) if !text.is_empty() => colony_base::parse_go_duration_ms(text)
                .map(|bound| ReadConsistency::Stale {
                    max_stale_ms: Some(bound),
                })
                .map_err(|e| error::ApiError::bad_request(format!("Invalid max_stale: {e}"))),
            _ if stale => Ok(ReadConsistency::Stale { max_stale_ms: None }),
            _ => Ok(ReadConsistency::Default),
        },
    })
}

/// Counts and times every request, and makes sure every answer carries evidence (an error
/// answer speaks for this agent only).
async fn observe(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let mut response = if let Some(consistency) = read_consistency(&request) {
        match consistency {
            Ok(consistency) => match app.agent.prepare_read(consistency).await {
                Ok(basis) => {
                    colony_runtime::cluster::READ_BASIS
                        .scope(basis, next.run(request))
                        .await
                }
                Err(error) => error::ApiError::from(error).into_response(),
            },
            Err(error) => error.into_response(),
        }
    } else {
        next.run(request).await
    };
    let code = response.status().as_u16();
    if !response.headers().contains_key(respond::EVIDENCE_HEADER) {
        let evidence = app.agent.local_evidence(format!("http:{endpoint}"));
        respond::insert_evidence(response.headers_mut(), &evidence);
    }
    let metrics = app.agent.metrics();
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            endpoint: endpoint.clone(),
            method: method.clone(),
            code,
        })
        .inc();
    metrics
        .http_latency
        .get_or_create(&EndpointLabels {
            endpoint: endpoint.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    if response.status().is_client_error() || response.status().is_server_error() {
        tracing::debug!(%endpoint, %method, code, "request refused");
    }
    response
}

/// `GET /v1/colony/modes`: the mode of each subsystem and why.
async fn modes(State(app): State<AppState>) -> Response {
    let agent = &app.agent;
    let storage = agent.storage_mode();
    let body = json!({
        "storage": {
            "mode": storage.mode().as_str(),
            "reason": storage.reason(),
        }
    });
    respond::local_json(&body, &agent.local_evidence("modes".into()))
}
