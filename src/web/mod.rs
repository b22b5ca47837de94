//! The web role: health, metrics, and the admin queue dashboard. Every error is JSON.

mod admin;
mod bot_api;
mod error;
mod health;
mod metrics;
mod trading;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::Request,
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tower_http::{limit::RequestBodyLimitLayer, timeout::TimeoutLayer, trace::TraceLayer};

pub use error::AppError;

use crate::{queue::QueueSettings, redis_pool::RedisPool};

/// Shared state of every handler.
#[derive(Clone)]
pub struct WebState {
    /// PostgreSQL.
    pub db: PgPool,
    /// Redis.
    pub redis: RedisPool,
    /// The trading core (back-office API).
    pub trading: crate::trading::Trading,
    /// Queue settings (key prefix, lease).
    pub queue: Arc<QueueSettings>,
    /// `ADMIN_TOKEN`; admin routes answer 503 without it.
    pub admin_token: Option<Arc<str>>,
    /// Prometheus renderer.
    pub metrics: Option<PrometheusHandle>,
}

/// The whole HTTP API.
pub fn router(state: WebState, request_timeout: Duration, body_limit: usize) -> Router {
    let admin_token = state.admin_token.clone();
    Router::new()
        .merge(health::router())
        .merge(metrics::router())
        .merge(admin::router(admin_token.clone()))
        .merge(trading::router(admin_token.clone()))
        .merge(bot_api::admin_router(admin_token))
        .merge(bot_api::bot_router())
        .fallback(|| async { AppError::NotFound("no such route".into()) })
        .with_state(state)
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        // Outside the limit and timeout layers, so their bare error responses get a JSON body.
        .layer(axum::middleware::from_fn(json_errors))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let path = req
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
            tracing::info_span!("http", method = %req.method(), path)
        }))
}

/// Error responses produced by layers (413, 408, 405, ...) carry no body: give them a JSON one.
async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let mut replacement = AppError::Status(
            status,
            status.canonical_reason().unwrap_or("error").to_lowercase(),
        )
        .into_response();
        if let Some(v) = response.headers().get(axum::http::header::WWW_AUTHENTICATE) {
            replacement
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, v.clone());
        }
        return replacement;
    }
    response
}

/// Serve `router` on `port` until `stop` resolves, then drain open requests.
pub async fn serve(
    router: Router,
    port: u16,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|e| anyhow::anyhow!("binding PORT={port}: {e}"))?;
    tracing::info!(port, "web listening on http://127.0.0.1:{port}");
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await?;
    tracing::info!("web stopped");
    Ok(())
}

/// Who did an admin action: `admin:<X-Admin-Actor>` if the header is given (control characters
/// dropped, at most 100 characters), else `admin`. Recorded in the audit log.
fn admin_actor(headers: &axum::http::HeaderMap) -> String {
    headers
        .get("x-admin-actor")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.chars()
                .filter(|c| !c.is_control())
                .take(100)
                .collect::<String>()
        })
        .filter(|v| !v.trim().is_empty())
        .map_or_else(|| "admin".to_owned(), |v| format!("admin:{v}"))
}
