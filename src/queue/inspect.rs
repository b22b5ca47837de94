//! Read-only views of queues for the dashboard, metrics and apalis' expose traits, plus the one
//! repair ops need: re-queue a dead letter.

use std::collections::HashMap;

use redis::{
    AsyncCommands as _, RedisError, Value, aio::ConnectionManager, streams::StreamRangeReply,
};
use serde::Serialize;

use super::{Keys, keys::GROUP, now_ms};

/// Depths and lifetime counters of one queue.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct QueueStats {
    /// Queue name.
    pub queue: String,
    /// Jobs waiting to be fetched.
    pub ready: u64,
    /// Jobs fetched by a worker and not settled yet.
    pub in_flight: u64,
    /// Jobs waiting for their run time (delayed pushes and retries).
    pub delayed: u64,
    /// Dead letters kept.
    pub dead: u64,
    /// Finished jobs kept in history.
    pub history: u64,
    /// Workers that heartbeated recently.
    pub workers: u64,
    /// Lifetime counters: enqueued, deduplicated, done, retried, dead, reclaimed, stale_acks.
    pub counters: HashMap<String, u64>,
}

/// Depths and counters of `keys`' queue.
pub async fn stats(
    conn: &mut ConnectionManager,
    keys: &Keys,
    worker_ttl_ms: i64,
) -> Result<QueueStats, RedisError> {
    let (len, delayed, dead, history, workers, counters): (
        u64,
        u64,
        u64,
        u64,
        u64,
        HashMap<String, u64>,
    ) = redis::pipe()
        .xlen(keys.stream())
        .zcard(keys.delayed())
        .xlen(keys.dead())
        .xlen(keys.done())
        .zcount(keys.workers(), now_ms() - worker_ttl_ms, "+inf")
        .hgetall(keys.stats())
        .query_async(conn)
        .await?;
    let pending: Result<Vec<Value>, RedisError> = redis::cmd("XPENDING")
        .arg(keys.stream())
        .arg(GROUP)
        .query_async(conn)
        .await;
    let in_flight = match pending {
        Ok(summary) => summary
            .first()
            .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
            .unwrap_or(0),
        Err(e) if e.code() == Some("NOGROUP") => 0,
        Err(e) => return Err(e),
    };
    Ok(QueueStats {
        queue: keys.queue().to_owned(),
        ready: len.saturating_sub(in_flight),
        in_flight,
        delayed,
        dead,
        history,
        workers,
        counters,
    })
}

/// One entry of a history or dead-letter stream, fields as stored.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Record {
    /// Stream entry id (also the time it was written).
    pub entry: String,
    /// Its fields: `id`, `status`, `a` (attempts), `m` (max), `error`, `p` (payload), `t` (ms).
    pub fields: HashMap<String, String>,
}

fn records(reply: StreamRangeReply) -> Vec<Record> {
    reply
        .ids
        .into_iter()
        .map(|e| Record {
            fields: e
                .map
                .iter()
                .filter_map(|(k, v)| {
                    redis::from_redis_value_ref::<String>(v)
                        .ok()
                        .map(|v| (k.clone(), v))
                })
                .collect(),
            entry: e.id,
        })
        .collect()
}

/// The newest `count` dead letters, older than `before` when given.
pub async fn dead_letters(
    conn: &mut ConnectionManager,
    keys: &Keys,
    count: usize,
    before: Option<&str>,
) -> Result<Vec<Record>, RedisError> {
    let end = before.map_or_else(|| "+".to_owned(), |b| format!("({b}"));
    let reply: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(keys.dead())
        .arg(end)
        .arg("-")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(records(reply))
}

/// The newest `count` finished jobs.
pub async fn history(
    conn: &mut ConnectionManager,
    keys: &Keys,
    count: usize,
) -> Result<Vec<Record>, RedisError> {
    let reply: StreamRangeReply = conn.xrevrange_count(keys.done(), "+", "-", count).await?;
    Ok(records(reply))
}

/// The oldest `count` jobs waiting in the stream (ready or in flight).
pub async fn waiting(
    conn: &mut ConnectionManager,
    keys: &Keys,
    count: usize,
) -> Result<Vec<Record>, RedisError> {
    let reply: StreamRangeReply = conn.xrange_count(keys.stream(), "-", "+", count).await?;
    Ok(records(reply))
}

/// A worker consuming a queue.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Consumer name.
    pub name: String,
    /// Last heartbeat, ms since the epoch.
    pub last_heartbeat_ms: i64,
    /// What it registered: host, pid, started_at, prefetch.
    pub details: HashMap<String, String>,
}

/// Workers of the queue, most recent heartbeat first.
pub async fn workers(
    conn: &mut ConnectionManager,
    keys: &Keys,
) -> Result<Vec<WorkerInfo>, RedisError> {
    let names: Vec<(String, f64)> = conn.zrevrange_withscores(keys.workers(), 0, -1).await?;
    let mut out = Vec::with_capacity(names.len());
    for (name, score) in names {
        let details: HashMap<String, String> = conn.hgetall(keys.worker(&name)).await?;
        out.push(WorkerInfo {
            name,
            last_heartbeat_ms: score as i64,
            details,
        });
    }
    Ok(out)
}

/// Put dead letter `entry` back in the queue with a fresh set of attempts. Returns false when
/// there is no such dead letter (or it has no payload to re-run).
pub async fn retry_dead(
    conn: &mut ConnectionManager,
    keys: &Keys,
    entry: &str,
) -> Result<bool, RedisError> {
    let moved: i64 = RETRY_DEAD
        .key(keys.dead())
        .key(keys.stream())
        .arg(entry)
        .arg(now_ms())
        .invoke_async(conn)
        .await?;
    Ok(moved == 1)
}

static RETRY_DEAD: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
local r = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #r == 0 then return 0 end
local h = {}
local f = r[1][2]
for j = 1, #f, 2 do h[f[j]] = f[j + 1] end
if h.id == nil or h.id == '' or h.p == nil then return 0 end
redis.call('XADD', KEYS[2], '*', 'id', h.id, 'a', '0', 'm', h.m or '1', 'p', h.p, 'e', ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
"#,
    )
});

/// Trim history and dead letters older than `max_age_ms` and forget workers silent for longer
/// than `worker_ttl_ms` (their consumer is deleted once it holds no delivery).
pub async fn trim(
    conn: &mut ConnectionManager,
    keys: &Keys,
    max_age_ms: i64,
    worker_ttl_ms: i64,
) -> Result<(), RedisError> {
    let min_id = format!("{}-0", (now_ms() - max_age_ms).max(0));
    redis::pipe()
        .cmd("XTRIM")
        .arg(keys.done())
        .arg("MINID")
        .arg("~")
        .arg(&min_id)
        .ignore()
        .cmd("XTRIM")
        .arg(keys.dead())
        .arg("MINID")
        .arg("~")
        .arg(&min_id)
        .ignore()
        .query_async::<()>(conn)
        .await?;
    let stale: Vec<String> = conn
        .zrangebyscore(keys.workers(), "-inf", now_ms() - worker_ttl_ms)
        .await?;
    for name in stale {
        let pending: Result<Vec<Value>, RedisError> = redis::cmd("XPENDING")
            .arg(keys.stream())
            .arg(GROUP)
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(&name)
            .query_async(conn)
            .await;
        let mut pipe = redis::pipe();
        pipe.zrem(keys.workers(), &name)
            .ignore()
            .del(keys.worker(&name))
            .ignore();
        if matches!(pending, Ok(ref p) if p.is_empty()) {
            pipe.cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(keys.stream())
                .arg(GROUP)
                .arg(&name)
                .ignore();
        }
        pipe.query_async::<()>(conn).await?;
    }
    Ok(())
}
