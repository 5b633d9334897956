//! API errors: a status code and a plain-text reason, as Consul answers errors.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use colony_runtime::{AgentError, ClusterError, WriteError};

/// An error answer. The body says exactly what is wrong.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The reason, shown to the client as the body.
    pub message: String,
}

impl ApiError {
    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    /// 413 Payload Too Large.
    pub fn too_large(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: message.into(),
        }
    }

    /// 500 Internal Server Error.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }
}

impl From<ClusterError> for ApiError {
    /// A request the cluster refused (400) or could not serve now (503, no leader).
    fn from(error: ClusterError) -> Self {
        WriteError::Cluster(error).into()
    }
}

impl From<WriteError> for ApiError {
    fn from(error: WriteError) -> Self {
        let status = match error {
            WriteError::Refused { .. } => StatusCode::INSUFFICIENT_STORAGE,
            WriteError::ShuttingDown | WriteError::Fatal(_) => StatusCode::SERVICE_UNAVAILABLE,
            WriteError::Cluster(ClusterError::Invalid(_)) => StatusCode::BAD_REQUEST,
            WriteError::Cluster(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError {
            status,
            message: error.to_string(),
        }
    }
}

impl From<AgentError> for ApiError {
    fn from(error: AgentError) -> Self {
        match error {
            AgentError::NotFound(message) => ApiError::not_found(message),
            AgentError::Invalid(message) => ApiError::bad_request(message),
            AgentError::Write(write) => write.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.message;
        body.push('\n');
        (
            self.status,
            [("content-type", "text/plain; charset=utf-8")],
            body,
        )
            .into_response()
    }
}

/// The result type of handlers.
pub type ApiResult<T> = Result<T, ApiError>;
