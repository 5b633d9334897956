//! Building answers: JSON bodies with Consul's index headers and colony's evidence header.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use colony_base::Evidence;
use serde::Serialize;

/// The evidence header's name.
pub const EVIDENCE_HEADER: &str = "x-colony-evidence";

/// An answer read from the store at `index`, with its evidence.
pub struct StoreAnswer {
    /// Response status.
    pub status: StatusCode,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Content type.
    pub content_type: &'static str,
    /// The blocking index (`X-Consul-Index`).
    pub index: u64,
    /// Evidence for the answer.
    pub evidence: Evidence,
}

impl StoreAnswer {
    /// A JSON answer.
    pub fn json<T: Serialize>(value: &T, index: u64, evidence: Evidence) -> Self {
        StoreAnswer {
            status: StatusCode::OK,
            body: serde_json::to_vec(value).expect("serializing API types cannot fail"),
            content_type: "application/json",
            index,
            evidence,
        }
    }
}

impl IntoResponse for StoreAnswer {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static(self.content_type));
        headers.insert("x-consul-index", HeaderValue::from(self.index));
        let basis = colony_runtime::cluster::current_read_basis();
        let known_leader = basis.as_ref().is_none_or(|b| b.known_leader);
        let last_contact_ms = basis.as_ref().map_or(0, |b| b.last_contact_ms);
        headers.insert(
            "x-consul-knownleader",
            HeaderValue::from_static(if known_leader { "true" } else { "false" }),
        );
        headers.insert("x-consul-lastcontact", HeaderValue::from(last_contact_ms));
        insert_evidence(&mut headers, &self.evidence);
        (self.status, headers, self.body).into_response()
    }
}

/// Adds the evidence header.
pub fn insert_evidence(headers: &mut HeaderMap, evidence: &Evidence) {
    if let Ok(value) = HeaderValue::from_str(&evidence.to_header_value()) {
        headers.insert(EVIDENCE_HEADER, value);
    }
}

/// A JSON answer with evidence but no store index (agent-local answers).
pub fn local_json<T: Serialize>(value: &T, evidence: &Evidence) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    insert_evidence(&mut headers, evidence);
    let body = serde_json::to_vec(value).expect("serializing API types cannot fail");
    (StatusCode::OK, headers, body).into_response()
}

/// Evidence rendered as a JSON object, for per-item evidence in list answers.
pub fn evidence_json(evidence: &Evidence) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = evidence
        .to_json_fields()
        .into_iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v)))
        .collect();
    serde_json::Value::Object(map)
}
