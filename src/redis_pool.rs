//! Redis connections of one process.
//!
//! Commands share one multiplexed, self-reconnecting `ConnectionManager`. Blocking reads
//! (`XREADGROUP BLOCK`) would stall every command queued behind them on a shared connection, so
//! each consuming queue gets a dedicated connection; `REDIS_POOL_SIZE` caps how many a process
//! opens in total (the shared one included).

use std::{sync::Arc, time::Duration};

use redis::{
    AsyncConnectionConfig, Client, RedisError,
    aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a command may take before it is failed (and retried by its caller).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The Redis connections of one process. Cheap to clone.
#[derive(Clone)]
pub struct RedisPool {
    client: Client,
    manager: ConnectionManager,
    dedicated: Arc<Semaphore>,
}

impl std::fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPool")
            .field("dedicated_available", &self.dedicated.available_permits())
            .finish_non_exhaustive()
    }
}

/// A dedicated connection, holding its place in the pool until dropped.
pub struct Dedicated {
    /// The connection.
    pub conn: MultiplexedConnection,
    _permit: OwnedSemaphorePermit,
}

impl RedisPool {
    /// Connect to `url` (`redis://` or `rediss://`, credentials in the URL), allowing at most
    /// `size` connections.
    pub async fn connect(url: &str, size: usize) -> Result<Self, RedisError> {
        let client = Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let manager = client.get_connection_manager_with_config(config).await?;
        Ok(Self {
            client,
            manager,
            dedicated: Arc::new(Semaphore::new(size.saturating_sub(1).max(1))),
        })
    }

    /// The shared connection.
    pub fn manager(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// A dedicated connection for blocking reads that wait up to `block`.
    pub async fn dedicated(&self, block: Duration) -> Result<Dedicated, RedisError> {
        let permit = self
            .dedicated
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| RedisError::from((redis::ErrorKind::Client, "redis pool closed")))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(block + RESPONSE_TIMEOUT));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(Dedicated {
            conn,
            _permit: permit,
        })
    }
}

/// Run `pipe`, which calls `script` by `EVALSHA`. A pipelined `EVALSHA` is not retried by the
/// client when Redis does not know the script (restarted, failed over, or never saw it), so on
/// `NOSCRIPT` this loads the script and runs the pipeline once more: every command in `pipe`
/// must be idempotent.
pub async fn query_with_script<T: redis::FromRedisValue>(
    conn: &mut ConnectionManager,
    pipe: &redis::Pipeline,
    script: &redis::Script,
) -> redis::RedisResult<T> {
    match pipe.query_async(conn).await {
        Err(e)
            if matches!(
                e.kind(),
                redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
            ) =>
        {
            script.load_async(conn).await?;
            pipe.query_async(conn).await
        }
        other => other,
    }
}
