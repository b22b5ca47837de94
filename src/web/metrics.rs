//! `/metrics`: Prometheus text format for the whole fleet, from any web process: queue depths
//! and schedule lags are read from Redis at scrape time, and the metrics of every worker and
//! scheduler process (job durations, closes, skipped symbols, ...) come from the snapshots they
//! publish to Redis (`crate::fleet_metrics`), merged with this process's own.

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use redis::AsyncCommands as _;

use super::{AppError, WebState};
use crate::{fleet_metrics, queue::inspect};

pub(super) fn router() -> Router<WebState> {
    Router::new().route("/metrics", get(render))
}

async fn render(State(state): State<WebState>) -> Result<impl IntoResponse, AppError> {
    let Some(handle) = &state.metrics else {
        return Err(AppError::Unavailable(
            "metrics recorder not installed".into(),
        ));
    };
    let mut conn = state.redis.manager();
    let worker_ttl = (state.queue.lease * 3).as_millis() as i64;
    for queue in halol_jobs::QUEUES {
        if let Ok(s) = inspect::stats(&mut conn, &state.queue.keys(queue), worker_ttl).await {
            for (what, value) in [
                ("ready", s.ready),
                ("in_flight", s.in_flight),
                ("delayed", s.delayed),
                ("dead", s.dead),
                ("workers", s.workers),
            ] {
                metrics::gauge!("halol_queue_jobs", "queue" => *queue, "state" => what)
                    .set(value as f64);
            }
        }
    }
    let schedules: std::collections::HashMap<String, String> = conn
        .hgetall(crate::scheduler::status_key(&state.queue.prefix))
        .await
        .unwrap_or_default();
    for (name, raw) in schedules {
        if let Some(lag) = serde_json::from_str::<serde_json::Value>(&raw)
            .ok()
            .and_then(|v| v["lag_ms"].as_f64())
        {
            metrics::gauge!("halol_schedule_last_lag_seconds", "schedule" => name)
                .set(lag / 1000.0);
        }
    }
    handle.run_upkeep();
    let own = handle.render();
    let others = match fleet_metrics::snapshots(
        &mut conn,
        &state.queue.prefix,
        &fleet_metrics::process_name(),
    )
    .await
    {
        Ok(texts) => texts,
        Err(e) => {
            tracing::warn!("/metrics without the other processes' metrics (Redis: {e})");
            Vec::new()
        }
    };
    let body = fleet_metrics::merge(
        std::iter::once(own.as_str()).chain(others.iter().map(String::as_str)),
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body))
}
