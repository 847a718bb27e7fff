//! API errors: a status and a JSON body that says what and where.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to the caller.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`bad_json`, `not_found`, ...).
    pub code: &'static str,
    /// What is wrong and where, for a human.
    pub message: String,
    /// Per-item details (a batch's refused events).
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    /// A 400.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// A 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
            details: None,
        }
    }

    /// A 409.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// A 422.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// A 503: the engine cannot commit now; retry later.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: message.into(),
            details: None,
        }
    }

    /// A 500 (the message is logged, not shown: it may name internals).
    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %message, "request failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "internal error; see the server log".into(),
            details: None,
        }
    }
}

impl From<parcours_store::StoreError> for ApiError {
    fn from(e: parcours_store::StoreError) -> ApiError {
        ApiError::unavailable(format!("the log is unavailable: {e}"))
    }
}

impl From<parcours_runtime::RuntimeError> for ApiError {
    fn from(e: parcours_runtime::RuntimeError) -> ApiError {
        match e {
            parcours_runtime::RuntimeError::Store(s) => s.into(),
            // A version another process published since this one last looked: its engine
            // loads it within `PUBLISHED_CHECK_EVERY`, and this API reads the engine's
            // versions.
            e @ parcours_runtime::RuntimeError::MissingVersion { .. } => {
                ApiError::unavailable(format!(
                    "{e}: published by another process since this one last looked; it loads it within {} s, ask again then",
                    parcours_runtime::PUBLISHED_CHECK_EVERY.as_secs()
                ))
            }
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(d) = self.details {
            error["details"] = d;
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

impl ApiError {
    /// A 401: no credentials, or credentials that do not check.
    pub fn unauthenticated(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthenticated",
            message: message.into(),
            details: None,
        }
    }

    /// A 403: authenticated, but the role or tenant does not allow it.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: message.into(),
            details: None,
        }
    }
}
