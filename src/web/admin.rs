//! The ops dashboard, behind `ADMIN_TOKEN` (as `Authorization: Bearer <token>`, or as the
//! password of HTTP Basic auth so a browser can open `/admin`).
//!
//! - `GET /admin` — an HTML overview of every queue and schedule;
//! - `GET /admin/queues` — the same as JSON;
//! - `GET /admin/queues/{queue}/dead?count=&before=` — dead letters, newest first;
//! - `GET /admin/queues/{queue}/history?count=` — finished jobs, newest first;
//! - `GET /admin/queues/{queue}/workers` — live workers;
//! - `POST /admin/queues/{queue}/dead/{entry}/retry` — re-queue a dead letter.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, Query, Request, State},
    http::header,
    middleware::Next,
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use redis::AsyncCommands as _;
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq as _;

use super::{AppError, WebState};
use crate::queue::inspect;

pub(super) fn router(token: Option<Arc<str>>) -> Router<WebState> {
    Router::new()
        .route("/admin", get(dashboard))
        .route("/admin/queues", get(queues))
        .route("/admin/queues/{queue}/dead", get(dead))
        .route("/admin/queues/{queue}/history", get(history))
        .route("/admin/queues/{queue}/workers", get(workers))
        .route("/admin/queues/{queue}/dead/{entry}/retry", post(retry))
        .route_layer(axum::middleware::from_fn(
            move |req: Request, next: Next| require_admin(token.clone(), req, next),
        ))
}

pub(super) async fn require_admin(token: Option<Arc<str>>, req: Request, next: Next) -> Response {
    match token {
        None => AppError::Unavailable("admin API disabled: set ADMIN_TOKEN".into()).into_response(),
        Some(token)
            if presented(&req)
                .is_some_and(|p| bool::from(p.as_bytes().ct_eq(token.as_bytes()))) =>
        {
            next.run(req).await
        }
        Some(_) => AppError::Unauthorized("admin credentials required".into()).into_response(),
    }
}

fn presented(req: &Request) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.trim().to_owned());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.strip_prefix("Basic ")?.trim())
        .ok()?;
    let pair = String::from_utf8(decoded).ok()?;
    Some(pair.split_once(':')?.1.to_owned())
}

fn known(queue: &str) -> Result<(), AppError> {
    if halol_jobs::QUEUES.contains(&queue) {
        Ok(())
    } else {
        Err(AppError::NotFound(format!(
            "unknown queue {queue:?}; known queues: {}",
            halol_jobs::QUEUES.join(", ")
        )))
    }
}

async fn overview(state: &WebState) -> Result<Value, AppError> {
    let mut conn = state.redis.manager();
    let worker_ttl = (state.queue.lease * 3).as_millis() as i64;
    let mut queues = Vec::new();
    for queue in halol_jobs::QUEUES {
        queues.push(inspect::stats(&mut conn, &state.queue.keys(queue), worker_ttl).await?);
    }
    let schedules: HashMap<String, String> = conn
        .hgetall(crate::scheduler::status_key(&state.queue.prefix))
        .await?;
    let schedules: HashMap<String, Value> = schedules
        .into_iter()
        .map(|(k, v)| (k, serde_json::from_str(&v).unwrap_or(Value::String(v))))
        .collect();
    Ok(json!({ "queues": queues, "schedules": schedules }))
}

async fn queues(State(state): State<WebState>) -> Result<Json<Value>, AppError> {
    Ok(Json(overview(&state).await?))
}

#[derive(Debug, Deserialize)]
struct Page {
    count: Option<usize>,
    before: Option<String>,
}

impl Page {
    fn count(&self) -> Result<usize, AppError> {
        match self.count {
            None => Ok(50),
            Some(n @ 1..=1000) => Ok(n),
            Some(n) => Err(AppError::BadRequest(format!(
                "count must be between 1 and 1000, got {n}"
            ))),
        }
    }
}

async fn dead(
    State(state): State<WebState>,
    Path(queue): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, AppError> {
    known(&queue)?;
    let mut conn = state.redis.manager();
    let records = inspect::dead_letters(
        &mut conn,
        &state.queue.keys(&queue),
        page.count()?,
        page.before.as_deref(),
    )
    .await?;
    Ok(Json(json!({ "queue": queue, "dead": records })))
}

async fn history(
    State(state): State<WebState>,
    Path(queue): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, AppError> {
    known(&queue)?;
    let mut conn = state.redis.manager();
    let records = inspect::history(&mut conn, &state.queue.keys(&queue), page.count()?).await?;
    Ok(Json(json!({ "queue": queue, "history": records })))
}

async fn workers(
    State(state): State<WebState>,
    Path(queue): Path<String>,
) -> Result<Json<Value>, AppError> {
    known(&queue)?;
    let mut conn = state.redis.manager();
    let workers = inspect::workers(&mut conn, &state.queue.keys(&queue)).await?;
    Ok(Json(json!({ "queue": queue, "workers": workers })))
}

async fn retry(
    State(state): State<WebState>,
    Path((queue, entry)): Path<(String, String)>,
) -> Result<Json<Value>, AppError> {
    known(&queue)?;
    if !entry
        .split_once('-')
        .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok())
    {
        return Err(AppError::BadRequest(format!(
            "entry {entry:?} is not a stream id like 1700000000000-0"
        )));
    }
    let mut conn = state.redis.manager();
    if inspect::retry_dead(&mut conn, &state.queue.keys(&queue), &entry).await? {
        tracing::info!(
            queue,
            entry,
            "dead letter {entry} of {queue} re-queued by admin"
        );
        Ok(Json(
            json!({ "queue": queue, "entry": entry, "requeued": true }),
        ))
    } else {
        Err(AppError::NotFound(format!(
            "no dead letter {entry} in {queue}"
        )))
    }
}

async fn dashboard(State(state): State<WebState>) -> Result<Html<String>, AppError> {
    let data = overview(&state).await?;
    let mut rows = String::new();
    for q in data["queues"].as_array().into_iter().flatten() {
        let c = &q["counters"];
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(q["queue"].as_str().unwrap_or("")),
            q["ready"], q["in_flight"], q["delayed"], q["dead"], q["workers"],
            c.get("done").cloned().unwrap_or(json!(0)), c.get("retried").cloned().unwrap_or(json!(0)), c.get("reclaimed").cloned().unwrap_or(json!(0)),
        ));
    }
    let mut schedules = String::new();
    for (name, s) in data["schedules"].as_object().into_iter().flatten() {
        schedules.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            escape(s["tick"].as_str().unwrap_or("")),
            s["lag_ms"],
            escape(s["outcome"].as_str().unwrap_or("")),
        ));
    }
    Ok(Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=5><title>halol queues</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head>\
         <body><h1>halol queues</h1><table><tr><th>queue</th><th>ready</th><th>in flight</th><th>delayed</th><th>dead</th><th>workers</th><th>done</th><th>retried</th><th>reclaimed</th></tr>{rows}</table>\
         <h2>schedules</h2><table><tr><th>schedule</th><th>last tick</th><th>lag ms</th><th>outcome</th></tr>{schedules}</table>\
         <p>JSON: <code>/admin/queues</code>, <code>/admin/queues/&lt;queue&gt;/dead</code>, <code>/admin/queues/&lt;queue&gt;/history</code>, <code>/admin/queues/&lt;queue&gt;/workers</code></p></body></html>"
    )))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
