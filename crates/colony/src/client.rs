//! A small HTTP client for the agent's API, used by the CLI commands and the benchmark.

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// One answer of the agent.
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The `X-Consul-Index` header, or 0.
    pub fn index(&self) -> u64 {
        self.headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("the agent answered with invalid JSON")
    }

    /// Fails with the agent's reason unless the status is 2xx.
    pub fn ok(self) -> anyhow::Result<Self> {
        if !self.status.is_success() {
            bail!(
                "the agent answered {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body).trim()
            );
        }
        Ok(self)
    }
}

/// A client bound to one agent.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl ApiClient {
    /// A client for the agent at `addr` (`host:port` or `http://host:port`).
    pub fn new(addr: &str) -> Self {
        let base = if addr.starts_with("http://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build(connector);
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            client,
        }
    }

    /// Sends a request; `path` includes the query string.
    ///
    /// # Errors
    /// A connection or protocol failure, naming the agent's address.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Answer> {
        let uri = format!("{}{path}", self.base);
        let request = hyper::Request::builder()
            .method(method)
            .uri(&uri)
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .context("building the request")?;
        let response = self
            .client
            .request(request)
            .await
            .with_context(|| format!("cannot reach the agent at {}", self.base))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading the answer")?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// Registers a service at the agent (`PUT /v1/agent/service/register`).
    ///
    /// # Errors
    /// A connection failure, or the agent's refusal with its reason.
    pub async fn register_service(&self, service: &serde_json::Value) -> anyhow::Result<()> {
        let body = service.to_string().into_bytes();
        self.put("/v1/agent/service/register", body).await?.ok()?;
        Ok(())
    }

    /// The agent's `host:port`.
    pub fn authority(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// GET.
    pub async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.send(Method::GET, path, None).await
    }

    /// PUT with a body.
    pub async fn put(&self, path: &str, body: Vec<u8>) -> anyhow::Result<Answer> {
        self.send(Method::PUT, path, Some(body)).await
    }

    /// DELETE.
    pub async fn delete(&self, path: &str) -> anyhow::Result<Answer> {
        self.send(Method::DELETE, path, None).await
    }

    /// Any method (`GET`, `PUT`, `POST`, `DELETE`) with a body.
    pub async fn request(&self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<Answer> {
        let method = Method::from_bytes(method.as_bytes())?;
        self.send(method, path, Some(body.to_vec())).await
    }
}

/// Percent-encodes a KV key for a URL path, keeping `/`.
pub fn encode_key(key: &str) -> String {
    const KEY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(key, KEY).to_string()
}
