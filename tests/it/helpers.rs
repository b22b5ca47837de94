use std::{
    future::Future,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use halol::{
    queue::{QueueSettings, inspect},
    redis_pool::RedisPool,
};
use redis::AsyncCommands as _;

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// A database every role can connect to without creating one.
pub fn database_url() -> String {
    "postgres://postgres@127.0.0.1:5432/postgres".into()
}

/// `$DATABASE_URL` (default `halol_test`), created and migrated once per test run, for roles
/// whose jobs need the schema.
pub async fn migrated_database_url() -> String {
    static URL: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    URL.get_or_init(|| async {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/halol_test".into());
        halol::db::ensure_database(&url)
            .await
            .expect("create test database");
        let pool = halol::db::connect(&url, 1)
            .await
            .expect("connect test database");
        halol::db::migrate(&pool)
            .await
            .expect("migrate test database");
        pool.close().await;
        url
    })
    .await
    .clone()
}

/// Send `req` through the whole web router (5 s timeout, 64 KiB body limit) and return the
/// status, headers and JSON body (`null` when empty, a `"not json: ..."` string otherwise).
pub async fn call_router(
    state: halol::web::WebState,
    req: axum::http::Request<axum::body::Body>,
) -> (
    axum::http::StatusCode,
    axum::http::HeaderMap,
    serde_json::Value,
) {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let response = halol::web::router(state, Duration::from_secs(5), 64 * 1024)
        .oneshot(req)
        .await
        .expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let value = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(format!("not json: {}", String::from_utf8_lossy(&bytes)))
        })
    };
    (status, headers, value)
}

/// Settings under a prefix no other test uses.
pub fn settings(f: impl FnOnce(&mut QueueSettings)) -> Arc<QueueSettings> {
    let mut s = QueueSettings {
        prefix: format!("it-{}", ulid::Ulid::new()),
        ..QueueSettings::default()
    };
    f(&mut s);
    Arc::new(s)
}

pub async fn pool() -> RedisPool {
    pool_at(&redis_url()).await
}

pub async fn pool_at(url: &str) -> RedisPool {
    RedisPool::connect(url, 20).await.expect("redis reachable")
}

/// Poll `check` until it returns `Some`, failing the test after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn stats(pool: &RedisPool, settings: &QueueSettings, queue: &str) -> inspect::QueueStats {
    inspect::stats(&mut pool.manager(), &settings.keys(queue), 60_000)
        .await
        .expect("stats")
}

pub fn counter(s: &inspect::QueueStats, name: &str) -> u64 {
    s.counters.get(name).copied().unwrap_or(0)
}

/// Delete every key of a test prefix.
pub async fn cleanup(pool: &RedisPool, settings: &QueueSettings) {
    let mut conn = pool.manager();
    let keys: Vec<String> = conn
        .keys(format!("{{{}:*", settings.prefix))
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = conn.del(keys).await;
    }
    let _: Result<(), _> = conn.del(settings.registry_key()).await;
    let _: Result<(), _> = conn.del(format!("{}:schedules", settings.prefix)).await;
}

/// The `halol` binary with a test's environment.
pub fn halol(args: &[&str], prefix: &str, redis: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_halol"));
    cmd.args(args)
        .env("QUEUE_PREFIX", prefix)
        .env("REDIS_URL", redis)
        .env("DATABASE_URL", database_url())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// A child process killed when the test ends, however it ends.
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn(mut cmd: Command) -> Self {
        Self(cmd.spawn().expect("spawn child"))
    }

    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A private redis-server on `port` that keeps nothing on disk.
pub fn redis_server(port: u16) -> Proc {
    let dir = std::env::temp_dir();
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .arg("--dir")
    .arg(dir)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    Proc::spawn(cmd)
}

pub async fn wait_for_redis(url: &str) {
    eventually(
        Duration::from_secs(10),
        "redis-server to accept connections",
        || async {
            let client = redis::Client::open(url).ok()?;
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .ok()
        },
    )
    .await;
}
