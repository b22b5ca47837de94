//! Start-up of each role: load what it needs, then run until the shutdown signal.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context as _;
use futures::FutureExt as _;

use crate::{
    config::{Config, redact},
    db,
    queue::Producer,
    redis_pool::RedisPool,
    web, worker,
};

/// Connect to Redis, retrying briefly so a role started alongside Redis does not fail at once.
pub async fn redis(config: &Config) -> anyhow::Result<RedisPool> {
    let mut last = None;
    for attempt in 0..5u32 {
        match RedisPool::connect(&config.redis_url, config.redis_pool_size).await {
            Ok(pool) => return Ok(pool),
            Err(e) => {
                tracing::warn!(attempt, error = %e, "redis at {} not reachable yet", redact(&config.redis_url));
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(attempt))).await;
            }
        }
    }
    Err(last
        .map(anyhow::Error::from)
        .unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
    .with_context(|| {
        format!(
            "connecting to Redis at {} (REDIS_URL)",
            redact(&config.redis_url)
        )
    })
}

/// The web role.
pub async fn web(
    config: &Config,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = crate::fleet_metrics::install("web")?;
    let db = db::connect(&config.database_url, config.database_pool_size).await?;
    let redis = redis(config).await?;
    let state = web::WebState {
        trading: config.trading(db.clone(), redis.clone()),
        db,
        redis: redis.clone(),
        queue: config.queue.clone(),
        admin_token: config.admin_token.as_deref().map(Arc::from),
        metrics: Some(metrics.clone()),
    };
    if state.admin_token.is_none() {
        tracing::warn!("ADMIN_TOKEN is not set: the admin dashboard is disabled");
    }
    let router = web::router(state, config.http_request_timeout, config.http_body_limit);
    with_metrics_published(config, metrics, redis, async move {
        web::serve(router, config.port, stop).await
    })
    .await
}

/// The worker role.
pub async fn worker(
    config: &Config,
    queues: Option<String>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let specs = match queues.or_else(|| config.worker_queues.clone()) {
        Some(raw) => worker::parse_queues(&raw, config.worker_concurrency)
            .context("--queues / WORKER_QUEUES")?,
        None => worker::all_queues(config.worker_concurrency),
    };
    if specs.len() + 1 > config.redis_pool_size {
        anyhow::bail!(
            "REDIS_POOL_SIZE={} is too small for {} queues (needs one connection per queue plus one)",
            config.redis_pool_size,
            specs.len()
        );
    }
    let db = db::connect(&config.database_url, config.database_pool_size).await?;
    let redis = redis(config).await?;
    let metrics = crate::fleet_metrics::install("worker")?;
    let state = worker::AppState {
        trading: config.trading(db.clone(), redis.clone()),
        db,
        redis: redis.clone(),
        queue: config.queue.clone(),
    };
    with_metrics_published(config, metrics, redis, async move {
        worker::run(state, specs, config.shutdown_timeout, stop).await
    })
    .await
}

/// Run `role` while publishing this process's metrics; publish once more when it ends.
async fn with_metrics_published<T>(
    config: &Config,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    redis: RedisPool,
    role: impl Future<Output = T>,
) -> T {
    let stop = tokio_util::sync::CancellationToken::new();
    let publisher = tokio::spawn(crate::fleet_metrics::publish_until(
        metrics,
        redis,
        config.queue.prefix.clone(),
        config.metrics_publish_interval,
        stop.clone(),
    ));
    let result = role.await;
    stop.cancel();
    let _ = publisher.await;
    result
}

/// The scheduler role.
pub async fn scheduler(
    config: &Config,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let metrics = crate::fleet_metrics::install("scheduler")?;
    let redis = redis(config).await?;
    let producer = Producer::new(redis.manager(), config.queue.clone());
    with_metrics_published(
        config,
        metrics,
        redis,
        crate::scheduler::run(
            producer,
            halol_schedules::all(),
            config.scheduler_max_lag,
            stop,
        ),
    )
    .await;
    Ok(())
}

/// `migrate` (creates the database first if it is missing).
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    db::ensure_database(&config.database_url).await?;
    let pool = db::connect(&config.database_url, 2).await?;
    db::migrate(&pool).await?;
    tracing::info!("migrations applied to {}", redact(&config.database_url));
    Ok(())
}

/// `dev`: every role in one process.
pub async fn dev(config: &Config) -> anyhow::Result<()> {
    let mut config = config.clone();
    if config.admin_token.is_none() {
        config.admin_token = Some("dev-admin-token-change-me".to_owned());
        tracing::warn!(
            "ADMIN_TOKEN unset: dev uses the token `dev-admin-token-change-me` (never use it in production)"
        );
    }
    migrate(&config).await?;
    // One recorder for the three roles, labelled `role="dev"`.
    crate::fleet_metrics::install("dev")?;
    let stop = crate::shutdown::token();
    let signal = {
        let stop = stop.clone();
        move || {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        }
    };
    tracing::info!(
        "halol dev: web on http://127.0.0.1:{port} — dashboard http://127.0.0.1:{port}/admin (user any, password = ADMIN_TOKEN), \
         metrics /metrics, readiness /readyz; Ctrl-C stops everything",
        port = config.port
    );
    // A role that ends on its own (web cannot bind PORT, Redis never came up) cancels the
    // others, which then drain as on Ctrl-C, and `dev` exits with that role's error. With a
    // plain `join!` the failed role was only reported after Ctrl-C, leaving a half-running
    // system behind a healthy-looking process.
    let ends_all = |role: &'static str, result: anyhow::Result<()>| {
        if stop.is_cancelled() {
            return result.context(role);
        }
        stop.cancel();
        let e = result
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("stopped before the shutdown signal"))
            .context(role);
        // Reported once, by `main`, when `dev` returns it.
        tracing::info!(role, "{role} ended; stopping the other roles");
        Err(e)
    };
    let (web, worker, scheduler) = tokio::join!(
        web(&config, signal()).map(|r| ends_all("web", r)),
        worker(&config, None, signal()).map(|r| ends_all("worker", r)),
        scheduler(&config, stop.clone()).map(|r| ends_all("scheduler", r)),
    );
    web.and(worker).and(scheduler)
}
