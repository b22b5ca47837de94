//! The web API's one error type: client errors carry a message, server errors are opaque and
//! logged once here.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};

/// An HTTP error with a JSON body `{"error": ...}`.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 400/422.
    #[error("{0}")]
    BadRequest(String),
    /// 422: a field of the request is invalid; the body names it.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// 401: missing or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 503: a dependency is down or a feature is disabled.
    #[error("{0}")]
    Unavailable(String),
    /// Any status with a message.
    #[error("{1}")]
    Status(StatusCode, String),
    /// 500; the cause is logged, not returned.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<redis::RedisError> for AppError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(format!("redis unavailable: {:?}", e.kind()).to_lowercase())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Self::Unauthorized(m) => {
                let mut r = (
                    StatusCode::UNAUTHORIZED,
                    Json(serde_json::json!({ "error": m })),
                )
                    .into_response();
                r.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static(
                        "Basic realm=\"halol admin\", charset=\"UTF-8\"",
                    ),
                );
                return r;
            }
            Self::Invalid { field, message } => {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(serde_json::json!({
                        "error": format!("{field}: {message}"),
                        "field": field,
                    })),
                )
                    .into_response();
            }
            Self::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            Self::Status(s, m) => (s, m),
            Self::Internal(e) => {
                tracing::error!(error = ?e, "internal error: {e:#}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                )
            }
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}
