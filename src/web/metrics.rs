//! `/metrics`: Prometheus text format for the whole fleet, from any web process.
//!
//! - Queue depths and schedule lags are read from Redis at scrape time and rendered without a
//!   `process` label: every web process reports the same series, whichever one a load balancer
//!   picks.
//! - The metrics of every process (job durations, closes, skipped symbols, ...; web processes'
//!   own included) come from the snapshots they publish to Redis (`crate::fleet_metrics`),
//!   merged with this process's own render.

use std::fmt::Write as _;

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
    let mut fleet = String::from("# TYPE halol_queue_jobs gauge\n");
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
                let _ = writeln!(
                    fleet,
                    "halol_queue_jobs{{queue=\"{}\",state=\"{what}\"}} {value}",
                    escape(queue)
                );
            }
        }
    }
    let schedules: std::collections::BTreeMap<String, String> = conn
        .hgetall(crate::scheduler::status_key(&state.queue.prefix))
        .await
        .unwrap_or_default();
    fleet.push_str("# TYPE halol_schedule_last_lag_seconds gauge\n");
    for (name, raw) in schedules {
        if let Some(lag) = serde_json::from_str::<serde_json::Value>(&raw)
            .ok()
            .and_then(|v| v["lag_ms"].as_f64())
        {
            let _ = writeln!(
                fleet,
                "halol_schedule_last_lag_seconds{{schedule=\"{}\"}} {}",
                escape(&name),
                lag / 1000.0
            );
        }
    }
    handle.run_upkeep();
    let own = handle.render();
    let others = match fleet_metrics::snapshots(
        &mut conn,
        &state.queue.prefix,
        fleet_metrics::process_name(),
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
        [fleet.as_str(), own.as_str()]
            .into_iter()
            .chain(others.iter().map(String::as_str)),
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body))
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}
