//! Configuration, from the environment only. Every variable has a default that works against
//! this machine's local PostgreSQL and Redis; a value that does not parse stops the process at
//! start with a message naming the variable. `.env.sample` lists them all.

use std::{str::FromStr, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};

use crate::queue::QueueSettings;

/// Everything a role needs to start.
#[derive(Clone)]
pub struct Config {
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `DATABASE_POOL_SIZE`: connections per process.
    pub database_pool_size: u32,
    /// `REDIS_URL` (`redis://` or `rediss://`, password in the URL).
    pub redis_url: String,
    /// `REDIS_POOL_SIZE`: Redis connections per process at most.
    pub redis_pool_size: usize,
    /// `PORT`: where `web` listens.
    pub port: u16,
    /// `WORKER_CONCURRENCY`: jobs run at once per queue, unless `--queues` says otherwise.
    pub worker_concurrency: usize,
    /// `WORKER_QUEUES`: default for `worker --queues`.
    pub worker_queues: Option<String>,
    /// Queue behaviour (`QUEUE_*`, `JOB_*`).
    pub queue: Arc<QueueSettings>,
    /// `SCHEDULER_MAX_LAG_MS`: a tick enqueued later than this after its time is skipped.
    pub scheduler_max_lag: Duration,
    /// `ADMIN_TOKEN`: the admin API and dashboard are disabled without it.
    pub admin_token: Option<String>,
    /// `HTTP_REQUEST_TIMEOUT_SECS`.
    pub http_request_timeout: Duration,
    /// `HTTP_BODY_LIMIT_BYTES`.
    pub http_body_limit: usize,
    /// `SHUTDOWN_TIMEOUT_SECS`: how long a role drains after SIGTERM (keep it under 30).
    pub shutdown_timeout: Duration,
    /// `PRICE_MAX_AGE_MS`: a cached quote whose event time is older than this is stale.
    pub price_max_age: Duration,
    /// `REDIS_KEY_NAMESPACE`: prefix of the contract keys (`price:`, `calm:`). Empty in
    /// production: bots read those keys by their exact names.
    pub redis_key_namespace: String,
    /// `METRICS_PUBLISH_INTERVAL_MS`: how often workers and schedulers publish their metrics to
    /// Redis for the web role's `/metrics`.
    pub metrics_publish_interval: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact(&self.database_url))
            .field("redis_url", &redact(&self.redis_url))
            .field("port", &self.port)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Read the configuration from the environment.
    pub fn from_env() -> anyhow::Result<Self> {
        let database_url = var("DATABASE_URL")
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/halol".into());
        check_url("DATABASE_URL", &database_url, &["postgres", "postgresql"])?;
        let redis_url = var("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
        check_url("REDIS_URL", &redis_url, &["redis", "rediss"])?;
        let defaults = QueueSettings::default();
        let queue = QueueSettings {
            prefix: var("QUEUE_PREFIX").unwrap_or(defaults.prefix),
            lease: secs("JOB_LEASE_SECS", defaults.lease)?,
            reclaim_interval: millis("JOB_RECLAIM_INTERVAL_MS", defaults.reclaim_interval)?,
            block: millis("QUEUE_BLOCK_MS", defaults.block)?,
            fetch_batch: parsed("QUEUE_FETCH_BATCH", defaults.fetch_batch)?,
            retry_base: millis("JOB_RETRY_BASE_MS", defaults.retry_base)?,
            retry_max: secs("JOB_RETRY_MAX_SECS", defaults.retry_max)?,
            done_retention: parsed("QUEUE_DONE_RETENTION", defaults.done_retention)?,
            dead_retention: parsed("QUEUE_DEAD_RETENTION", defaults.dead_retention)?,
            history_max_age: secs("QUEUE_HISTORY_MAX_AGE_SECS", defaults.history_max_age)?,
            idempotency_ttl: secs("QUEUE_IDEMPOTENCY_TTL_SECS", defaults.idempotency_ttl)?,
        };
        if queue.prefix.is_empty() || queue.prefix.contains(['{', '}']) {
            bail!(
                "QUEUE_PREFIX must be non-empty and contain no braces, got {:?}",
                queue.prefix
            );
        }
        if queue.lease < Duration::from_secs(1) {
            bail!("JOB_LEASE_SECS must be at least 1");
        }
        let config = Self {
            database_url,
            database_pool_size: parsed("DATABASE_POOL_SIZE", 10)?,
            redis_url,
            redis_pool_size: parsed("REDIS_POOL_SIZE", 20)?,
            port: parsed("PORT", 8080)?,
            worker_concurrency: parsed("WORKER_CONCURRENCY", 8)?,
            worker_queues: var("WORKER_QUEUES"),
            queue: Arc::new(queue),
            scheduler_max_lag: millis("SCHEDULER_MAX_LAG_MS", Duration::from_millis(2_500))?,
            admin_token: var("ADMIN_TOKEN"),
            http_request_timeout: secs("HTTP_REQUEST_TIMEOUT_SECS", Duration::from_secs(10))?,
            http_body_limit: parsed("HTTP_BODY_LIMIT_BYTES", 64 * 1024)?,
            shutdown_timeout: secs("SHUTDOWN_TIMEOUT_SECS", Duration::from_secs(25))?,
            price_max_age: millis("PRICE_MAX_AGE_MS", Duration::from_secs(10))?,
            redis_key_namespace: var("REDIS_KEY_NAMESPACE").unwrap_or_default(),
            metrics_publish_interval: millis(
                "METRICS_PUBLISH_INTERVAL_MS",
                Duration::from_secs(10),
            )?,
        };
        if config.metrics_publish_interval < Duration::from_millis(100) {
            bail!("METRICS_PUBLISH_INTERVAL_MS must be at least 100");
        }
        if config.redis_pool_size < 2 {
            bail!(
                "REDIS_POOL_SIZE must be at least 2 (one shared connection and one per consumed queue)"
            );
        }
        if config.worker_concurrency == 0 {
            bail!("WORKER_CONCURRENCY must be at least 1");
        }
        if let Some(token) = &config.admin_token
            && token.len() < 16
        {
            bail!("ADMIN_TOKEN must be at least 16 characters");
        }
        Ok(config)
    }
}

impl Config {
    /// The trading core over these connections.
    pub fn trading(
        &self,
        db: sqlx::PgPool,
        redis: crate::redis_pool::RedisPool,
    ) -> crate::trading::Trading {
        crate::trading::Trading {
            db,
            redis,
            keys: crate::trading::CacheKeys::new(&self.redis_key_namespace),
            price_max_age: self.price_max_age,
        }
    }
}

/// A non-empty environment variable.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Parse `name`, or use `default` when it is unset.
pub fn parsed<T: FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={raw:?} is invalid: {e}")),
    }
}

fn secs(name: &str, default: Duration) -> anyhow::Result<Duration> {
    parsed(name, default.as_secs()).map(Duration::from_secs)
}

fn millis(name: &str, default: Duration) -> anyhow::Result<Duration> {
    parsed(name, default.as_millis() as u64).map(Duration::from_millis)
}

fn check_url(name: &str, raw: &str, schemes: &[&str]) -> anyhow::Result<()> {
    let url = url::Url::parse(raw).with_context(|| format!("{name} is not a valid URL"))?;
    if !schemes.contains(&url.scheme()) {
        bail!(
            "{name} must use one of the schemes {schemes:?}, got {:?}",
            url.scheme()
        );
    }
    Ok(())
}

/// `url` with its password replaced, for logs.
pub fn redact(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        Err(_) => "<unparseable url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            redact("redis://:s3cret@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/halol"),
            "postgres://postgres@127.0.0.1/halol"
        );
    }

    #[test]
    fn urls_are_checked_by_scheme() {
        assert!(
            check_url(
                "REDIS_URL",
                "rediss://:pw@example.com:6380",
                &["redis", "rediss"]
            )
            .is_ok()
        );
        let err =
            check_url("REDIS_URL", "http://x", &["redis", "rediss"]).expect_err("wrong scheme");
        assert!(err.to_string().contains("REDIS_URL"));
    }
}
