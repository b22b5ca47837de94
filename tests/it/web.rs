//! The web role's router against real PostgreSQL and Redis.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use halol::web::{WebState, router};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use crate::helpers::{
    database_url, free_port, pool, pool_at, redis_server, settings, wait_for_redis,
};

const TOKEN: &str = "test-admin-token-0123456789";

async fn state(redis: halol::redis_pool::RedisPool) -> WebState {
    let db = halol::db::connect(&database_url(), 2)
        .await
        .expect("postgres");
    WebState {
        trading: halol::trading::Trading {
            db: db.clone(),
            redis: redis.clone(),
            keys: halol::trading::CacheKeys::new(&format!("it-{}:", ulid::Ulid::new())),
            price_max_age: Duration::from_secs(10),
        },
        db,
        redis,
        queue: settings(|_| {}),
        admin_token: Some(Arc::from(TOKEN)),
        metrics: None,
    }
}

async fn call(state: WebState, req: Request<Body>) -> (StatusCode, serde_json::Value) {
    let response = router(state, Duration::from_secs(5), 1024)
        .oneshot(req)
        .await
        .expect("response");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(format!("not json: {}", String::from_utf8_lossy(&bytes)))
        }),
    )
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

#[tokio::test]
async fn health_and_readiness_answer_when_everything_is_up() {
    let state = state(pool().await).await;
    assert_eq!(call(state.clone(), get("/healthz")).await.0, StatusCode::OK);
    let (status, body) = call(state, get("/readyz")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checks"]["redis"], "ok");
}

#[tokio::test]
async fn readiness_is_503_naming_redis_when_redis_is_down() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut server = redis_server(port);
    wait_for_redis(&url).await;
    let state = state(pool_at(&url).await).await;
    server.signal("KILL");
    let _ = server.0.wait();
    let (status, body) = call(state, get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["checks"]["postgres"], "ok");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("redis") && !e.contains("postgres")),
        "{body}"
    );
}

#[tokio::test]
async fn the_admin_dashboard_needs_the_admin_token() {
    let state = state(pool().await).await;
    let (status, body) = call(state.clone(), get("/admin/queues")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].is_string());
    let wrong = Request::get("/admin/queues")
        .header(header::AUTHORIZATION, "Bearer nope-nope-nope-nope")
        .body(Body::empty())
        .expect("req");
    assert_eq!(call(state.clone(), wrong).await.0, StatusCode::UNAUTHORIZED);
    let right = Request::get("/admin/queues")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .expect("req");
    let (status, body) = call(state.clone(), right).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["queues"].as_array().map(Vec::len),
        Some(halol_jobs::QUEUES.len())
    );
    let unknown = Request::get("/admin/queues/nope/dead")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .expect("req");
    let (status, body) = call(state, unknown).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().is_some_and(|e| e.contains("nope")));
}

#[tokio::test]
async fn unknown_routes_and_oversized_bodies_get_json_errors() {
    let state = state(pool().await).await;
    let (status, body) = call(state.clone(), get("/nowhere")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
    let big = Request::post("/admin/queues/noop/dead/1-0/retry")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_LENGTH, "4096")
        .body(Body::from(vec![b'x'; 4096]))
        .expect("req");
    let (status, body) = call(state, big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body["error"].is_string(), "{body}");
}
