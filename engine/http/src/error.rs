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
            parcours_runtime::RuntimeError::InvalidMigration(problems) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid_migration",
                message: format!(
                    "the migration does not fit its versions or this log: {}",
                    problems.join("; ")
                ),
                details: Some(json!({ "problems": problems })),
            },
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

/// Every error answer in the API's shape: what axum itself answers (a query string or
/// path that does not parse, a body over the size limit, a method a route does not
/// have, an unknown content type) is plain text or empty; it becomes
/// `{"error": {"code", "message"}}` with the same status and headers (`allow`,
/// `www-authenticate`, `retry-after` kept), and under `/fhir/` a FHIR OperationOutcome
/// (the guard's own JSON errors too), as FHIR clients expect.
///
/// A body over the size limit (`max_body` bytes) is answered with the limit and how to
/// live with it, not axum's "length limit exceeded".
pub(crate) async fn uniform(
    max_body: usize,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    let fhir = req.uri().path().starts_with("/fhir/");
    let method = req.method().clone();
    // The route's first two segments (`/v1/tasks`, `/fhir/cpts-a`): the rest may hold
    // ids and keys, which a log line does not need.
    let route: String = req
        .uri()
        .path()
        .split('/')
        .take(3)
        .collect::<Vec<_>>()
        .join("/");
    let mut res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    // When to ask again, on every 429 and 503 (a client's backoff reads it): a second
    // for the rate limit (a caller's bucket refills at its rate per second), a few for an
    // engine that cannot commit now, as the start-up gate says.
    let retry_after = match status {
        StatusCode::TOO_MANY_REQUESTS => Some("1"),
        StatusCode::SERVICE_UNAVAILABLE => Some(crate::startup::RETRY_AFTER_SECS),
        _ => None,
    };
    if let Some(secs) = retry_after
        && !res.headers().contains_key(axum::http::header::RETRY_AFTER)
    {
        res.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static(secs),
        );
    }
    // A refused request leaves a line (the answer's body may quote what was sent: not
    // logged), so that a misconfigured integration shows in the logs.
    if status.is_client_error() {
        tracing::info!(status = status.as_u16(), %method, %route, "request refused");
    }
    let ct = res
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let ours = ct.starts_with("application/json");
    if ct.starts_with("application/fhir+json") || (ours && !fhir) {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    // axum's and the guard's error bodies are a line or two.
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE && !ours {
        format!(
            "the request body is larger than this server accepts: at most {max_body} bytes \
             (parcours serve --max-body, PARCOURS_MAX_BODY); send less in one request (a \
             bundle per stay or per day of results) or raise the limit"
        )
    } else if ours {
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.trim().to_string())
    } else if text.trim().is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string()
    } else {
        text.trim().to_string()
    };
    parts.headers.remove(CONTENT_TYPE);
    parts.headers.remove(CONTENT_LENGTH);
    let mut answer = if fhir {
        let code = match status.as_u16() {
            400 | 422 => "invalid",
            401 => "login",
            403 => "forbidden",
            404 => "not-found",
            405 | 415 => "not-supported",
            408 => "timeout",
            413 => "too-costly",
            429 => "throttled",
            _ => "exception",
        };
        crate::fhir::outcome(status, "error", code, &message)
    } else {
        let code = match status.as_u16() {
            400 => "bad_request",
            401 => "unauthenticated",
            403 => "forbidden",
            404 => "not_found",
            405 => "method_not_allowed",
            408 => "timeout",
            413 => "too_large",
            415 => "unsupported_media_type",
            422 => "unprocessable",
            429 => "too_many_requests",
            503 => "unavailable",
            _ => "internal",
        };
        ApiError {
            status,
            code,
            message,
            details: None,
        }
        .into_response()
    };
    for (name, value) in &parts.headers {
        answer.headers_mut().insert(name.clone(), value.clone());
    }
    answer
}
