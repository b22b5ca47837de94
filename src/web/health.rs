//! `/healthz` (the process is alive) and `/readyz` (PostgreSQL and Redis answer).

use std::time::Duration;

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde_json::{Value, json};

use super::WebState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn router() -> Router<WebState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<WebState>) -> (StatusCode, Json<Value>) {
    let postgres = async {
        match tokio::time::timeout(
            CHECK_TIMEOUT,
            sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.db),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("unreachable: {e}")),
            Err(_) => Err("timed out".to_owned()),
        }
    };
    let redis = async {
        let mut conn = state.redis.manager();
        match tokio::time::timeout(
            CHECK_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("unreachable: {e}")),
            Err(_) => Err("timed out".to_owned()),
        }
    };
    let (postgres, redis) = tokio::join!(postgres, redis);
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    let mut failing = Vec::new();
    if postgres.is_err() {
        failing.push("postgres");
    }
    if redis.is_err() {
        failing.push("redis");
    }
    let body = json!({ "postgres": show(&postgres), "redis": show(&redis) });
    if failing.is_empty() {
        (
            StatusCode::OK,
            Json(json!({ "status": "ready", "checks": body })),
        )
    } else {
        let error = format!("not ready: {} unreachable", failing.join(" and "));
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "error": error, "checks": body })),
        )
    }
}
