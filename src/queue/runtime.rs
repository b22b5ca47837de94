//! The background tasks of one worker's queue: fetch, settle and maintain.

use std::{sync::Arc, time::Duration};

use apalis_core::{
    backend::queue::Queue,
    task::{Task, builder::TaskBuilder, task_id::TaskId},
};
use halol_jobs::Job;
use redis::{
    RedisError, Value,
    aio::ConnectionManager,
    streams::{StreamId, StreamReadReply},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    QueueSettings,
    ack::{AckMsg, Delivery, Settled},
    keys::{GROUP, Keys},
    now_ms, scripts,
    settle::{Failure, FailureKind, Verdict, verdict},
};
use crate::redis_pool::{Dedicated, RedisPool};

/// Acks written per script call.
const SETTLE_BATCH: usize = 512;
/// Delayed jobs promoted per script call.
const PROMOTE_BATCH: usize = 500;
/// Expired deliveries re-queued per script call.
const REQUEUE_BATCH: usize = 500;
/// Longest error message kept with a job.
const MAX_ERROR_LEN: usize = 2_000;

/// What the background tasks of one worker share.
pub(crate) struct QueueCtx {
    pub redis: RedisPool,
    pub settings: Arc<QueueSettings>,
    pub keys: Keys,
    pub consumer: String,
}

/// Exponential backoff for reconnect loops.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Self { next: Self::MIN }
    }

    fn reset(&mut self) {
        self.next = Self::MIN;
    }

    /// Sleep for the current delay (or until `stop`), then double it.
    async fn wait(&mut self, stop: &CancellationToken) {
        tokio::select! {
            _ = tokio::time::sleep(self.next) => {}
            _ = stop.cancelled() => {}
        }
        self.next = (self.next * 2).min(Self::MAX);
    }
}

pub(crate) fn is_nogroup(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

/// Create the consumer group (and the stream) if missing. A group created after Redis lost its
/// data starts from the beginning, so jobs pushed before it are not skipped.
pub(crate) async fn ensure_group(
    conn: &mut ConnectionManager,
    keys: &Keys,
) -> Result<(), RedisError> {
    let created: Result<(), RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys.stream())
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}

/// Read ready entries into `tx`, never more than it has room for. Returns the entries it read
/// but could not hand over (the worker stopped), for the caller to hand back.
pub(crate) async fn fetch_loop<J: Job>(
    ctx: Arc<QueueCtx>,
    tx: mpsc::Sender<Task<J>>,
    acks: mpsc::UnboundedSender<AckMsg>,
    stop: CancellationToken,
) -> Vec<String> {
    let mut conn: Option<Dedicated> = None;
    let mut backoff = Backoff::new();
    let mut leftover = Vec::new();
    let stream = ctx.keys.stream();
    let mut down = false;
    // The group may not exist yet on a fresh Redis; a failure here is retried by the loop.
    let _ = ensure_group(&mut ctx.redis.manager(), &ctx.keys).await;
    while !stop.is_cancelled() {
        let permit = tokio::select! {
            permit = tx.reserve() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = stop.cancelled() => break,
        };
        let want = (1 + tx.capacity()).min(ctx.settings.fetch_batch.max(1));
        let dedicated = match &mut conn {
            Some(c) => c,
            None => match ctx.redis.dedicated(ctx.settings.block).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    report_down(&mut down, &ctx.keys, "connect", &e);
                    backoff.wait(&stop).await;
                    continue;
                }
            },
        };
        let reply: Result<Option<StreamReadReply>, RedisError> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&ctx.consumer)
            .arg("COUNT")
            .arg(want)
            .arg("BLOCK")
            .arg(ctx.settings.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query_async(&mut dedicated.conn)
            .await;
        match reply {
            Ok(reply) => {
                report_up(&mut down, &ctx.keys);
                backoff.reset();
                let entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
                let mut permit = Some(permit);
                for entry in entries {
                    let task = match decode::<J>(&ctx, entry) {
                        Ok(task) => task,
                        Err(settled) => {
                            let _ = acks.send(AckMsg::Settle(*settled));
                            continue;
                        }
                    };
                    let sent = match permit.take() {
                        Some(p) => {
                            p.send(task);
                            Ok(())
                        }
                        None => tx.try_send(task).map_err(|e| e.into_inner()),
                    };
                    if let Err(task) = sent {
                        if let Some(d) = task.ctx().data().get::<Delivery>() {
                            leftover.push(d.entry.clone());
                        }
                    }
                }
            }
            Err(e) if is_nogroup(&e) => {
                tracing::warn!(
                    queue = ctx.keys.queue(),
                    "queue {} lost its consumer group (Redis restarted?); recreating it",
                    ctx.keys.queue()
                );
                let mut manager = ctx.redis.manager();
                if let Err(e) = ensure_group(&mut manager, &ctx.keys).await {
                    report_down(&mut down, &ctx.keys, "create group", &e);
                    backoff.wait(&stop).await;
                }
            }
            Err(e) => {
                report_down(&mut down, &ctx.keys, "read", &e);
                conn = None;
                backoff.wait(&stop).await;
            }
        }
    }
    leftover
}

fn report_down(down: &mut bool, keys: &Keys, what: &str, e: &RedisError) {
    if !*down {
        tracing::warn!(queue = keys.queue(), error = %e, "queue {}: redis {what} failed, retrying with backoff: {e}", keys.queue());
        metrics::counter!("halol_queue_redis_errors_total", "queue" => keys.queue().to_owned())
            .increment(1);
    }
    *down = true;
}

fn report_up(down: &mut bool, keys: &Keys) {
    if *down {
        tracing::info!(
            queue = keys.queue(),
            "queue {}: redis reachable again",
            keys.queue()
        );
    }
    *down = false;
}

fn field<T: redis::FromRedisValue>(entry: &StreamId, name: &str) -> Option<T> {
    entry
        .map
        .get(name)
        .and_then(|v: &Value| redis::from_redis_value_ref(v).ok())
}

/// Turn a stream entry into a task, or, if it is malformed or its payload does not decode, into
/// a dead letter (logged with the key: a buggy producer must not stall the queue).
fn decode<J: Job>(ctx: &QueueCtx, entry: StreamId) -> Result<Task<J>, Box<Settled>> {
    let payload: Option<String> = field(&entry, "p");
    let delivery = Delivery {
        job_id: field(&entry, "id").unwrap_or_default(),
        attempt: field::<u32>(&entry, "a").unwrap_or(0).saturating_add(1),
        max_attempts: field(&entry, "m").unwrap_or(1),
        payload: payload.clone().unwrap_or_default().into(),
        enqueued_ms: field(&entry, "e").unwrap_or(0),
        idempotency_key: field(&entry, "k"),
        entry: entry.id.clone(),
    };
    let parsed = match (&payload, delivery.job_id.is_empty()) {
        (Some(p), false) => serde_json::from_str::<J>(p)
            .map_err(|e| format!("payload does not decode as {}: {e}", J::NAME)),
        _ => Err("entry lacks its id or payload field".to_owned()),
    };
    match parsed {
        Ok(job) => Ok(TaskBuilder::new(job)
            .task_id(TaskId::from_string(delivery.job_id.clone()))
            .attempt(delivery.attempt as usize - 1)
            .max_attempts(delivery.max_attempts as usize)
            .queue(Queue::from(J::NAME))
            .data(delivery)
            .build()),
        Err(message) => {
            tracing::warn!(key = %ctx.keys.stream(), entry = %entry.id, error = %message, "skipping malformed job {} in {}: {message}", entry.id, ctx.keys.stream());
            Err(Box::new(Settled {
                delivery,
                outcome: Err(Failure {
                    kind: FailureKind::Undecodable,
                    message,
                }),
            }))
        }
    }
}

/// Write outcomes to Redis in batches, retrying until they land.
pub(crate) async fn settle_loop(ctx: Arc<QueueCtx>, mut rx: mpsc::UnboundedReceiver<AckMsg>) {
    let mut buf = Vec::with_capacity(SETTLE_BATCH);
    let mut conn = ctx.redis.manager();
    let never = CancellationToken::new();
    while rx.recv_many(&mut buf, SETTLE_BATCH).await > 0 {
        let mut batch = Vec::with_capacity(buf.len());
        let mut flushes = Vec::new();
        for msg in buf.drain(..) {
            match msg {
                AckMsg::Settle(s) => batch.push(s),
                AckMsg::Flush(done) => flushes.push(done),
            }
        }
        let mut backoff = Backoff::new();
        let mut down = false;
        while !batch.is_empty() {
            match settle(&mut conn, &ctx, &batch).await {
                Ok(()) => {
                    report_up(&mut down, &ctx.keys);
                    break;
                }
                Err(e) => {
                    report_down(&mut down, &ctx.keys, "ack", &e);
                    backoff.wait(&never).await;
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

async fn settle(
    conn: &mut ConnectionManager,
    ctx: &QueueCtx,
    batch: &[Settled],
) -> Result<(), RedisError> {
    let s = &ctx.settings;
    let now = now_ms();
    let mut call = scripts::SETTLE.prepare_invoke();
    call.key(ctx.keys.stream())
        .key(ctx.keys.delayed())
        .key(ctx.keys.done())
        .key(ctx.keys.dead())
        .key(ctx.keys.stats());
    call.arg(GROUP)
        .arg(now)
        .arg(s.done_retention)
        .arg(s.dead_retention)
        .arg(batch.len());
    for Settled {
        delivery: d,
        outcome,
    } in batch
    {
        call.arg(&d.entry);
        match outcome {
            Ok(duration) => {
                call.arg("d")
                    .arg(&d.job_id)
                    .arg(d.attempt)
                    .arg(d.max_attempts)
                    .arg("")
                    .arg("");
                call.arg(duration.as_millis() as u64);
            }
            Err(failure) => {
                let message: String = failure.message.chars().take(MAX_ERROR_LEN).collect();
                match verdict(
                    failure,
                    d.attempt,
                    d.max_attempts,
                    s.retry_base,
                    s.retry_max,
                ) {
                    Verdict::Retry(delay) => {
                        call.arg("r")
                            .arg(&d.job_id)
                            .arg(d.attempt)
                            .arg(d.max_attempts)
                            .arg(&*d.payload)
                            .arg(message);
                        call.arg(now + delay.as_millis() as i64);
                    }
                    Verdict::Dead => {
                        call.arg("x")
                            .arg(&d.job_id)
                            .arg(d.attempt)
                            .arg(d.max_attempts)
                            .arg(&*d.payload)
                            .arg(message);
                        call.arg(failure.kind.status());
                    }
                }
            }
        }
        call.arg(d.enqueued_ms)
            .arg(d.idempotency_key.as_deref().unwrap_or(""));
    }
    let (_done, _retried, _dead, stale): (u64, u64, u64, u64) = call.invoke_async(conn).await?;
    if stale > 0 {
        tracing::info!(
            queue = ctx.keys.queue(),
            stale,
            "queue {}: {stale} acks arrived after their lease expired and were ignored",
            ctx.keys.queue()
        );
    }
    Ok(())
}

/// Promote due jobs, renew this worker's leases and re-queue other workers' expired ones.
pub(crate) async fn maintain_loop(ctx: Arc<QueueCtx>, stop: CancellationToken) {
    let mut conn = ctx.redis.manager();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let renew_every = ctx.settings.lease / 4;
    let mut last_renew = tokio::time::Instant::now() - renew_every;
    let mut last_reclaim = tokio::time::Instant::now();
    let mut down = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let mut result = promote(&mut conn, &ctx).await;
        if result.is_ok() && last_renew.elapsed() >= renew_every {
            result = renew(&mut conn, &ctx).await;
            last_renew = tokio::time::Instant::now();
        }
        if result.is_ok() && last_reclaim.elapsed() >= ctx.settings.reclaim_interval {
            result = requeue_idle(&mut conn, &ctx).await;
            last_reclaim = tokio::time::Instant::now();
        }
        match result {
            Ok(()) => report_up(&mut down, &ctx.keys),
            Err(e) if is_nogroup(&e) => {
                if let Err(e) = ensure_group(&mut conn, &ctx.keys).await {
                    report_down(&mut down, &ctx.keys, "create group", &e);
                }
            }
            Err(e) => report_down(&mut down, &ctx.keys, "maintenance", &e),
        }
    }
}

async fn promote(conn: &mut ConnectionManager, ctx: &QueueCtx) -> Result<(), RedisError> {
    // Bounded: a huge backlog of due jobs is moved a batch per call, a few batches per tick.
    for _ in 0..10 {
        let (moved, _next): (usize, Option<String>) = scripts::PROMOTE
            .key(ctx.keys.delayed())
            .key(ctx.keys.stream())
            .key(ctx.keys.dead())
            .arg(now_ms())
            .arg(PROMOTE_BATCH)
            .arg(ctx.settings.dead_retention)
            .invoke_async(conn)
            .await?;
        if moved < PROMOTE_BATCH {
            break;
        }
    }
    Ok(())
}

async fn renew(conn: &mut ConnectionManager, ctx: &QueueCtx) -> Result<(), RedisError> {
    let _: u64 = scripts::RENEW
        .key(ctx.keys.stream())
        .key(ctx.keys.workers())
        .key(ctx.keys.worker(&ctx.consumer))
        .arg(GROUP)
        .arg(&ctx.consumer)
        .arg(now_ms())
        .arg((ctx.settings.lease * 3).as_millis() as u64)
        .invoke_async(conn)
        .await?;
    Ok(())
}

async fn requeue_idle(conn: &mut ConnectionManager, ctx: &QueueCtx) -> Result<(), RedisError> {
    let (requeued, dead): (u64, u64) = scripts::REQUEUE
        .key(ctx.keys.stream())
        .key(ctx.keys.dead())
        .key(ctx.keys.stats())
        .arg(GROUP)
        .arg("idle")
        .arg(ctx.settings.lease.as_millis() as u64)
        .arg(REQUEUE_BATCH)
        .arg(now_ms())
        .arg(ctx.settings.dead_retention)
        .invoke_async(conn)
        .await?;
    if requeued + dead > 0 {
        tracing::warn!(
            queue = ctx.keys.queue(),
            requeued,
            dead,
            "queue {}: re-queued {requeued} jobs whose worker stopped renewing its lease ({dead} out of attempts)",
            ctx.keys.queue()
        );
    }
    Ok(())
}

/// Put entries this worker fetched but never started back in the stream.
pub(crate) async fn hand_back(
    conn: &mut ConnectionManager,
    ctx: &QueueCtx,
    entries: &[String],
) -> Result<(), RedisError> {
    for chunk in entries.chunks(REQUEUE_BATCH) {
        let mut call = scripts::REQUEUE.prepare_invoke();
        call.key(ctx.keys.stream())
            .key(ctx.keys.dead())
            .key(ctx.keys.stats());
        call.arg(GROUP)
            .arg("handback")
            .arg(0)
            .arg(0)
            .arg(now_ms())
            .arg(ctx.settings.dead_retention);
        for entry in chunk {
            call.arg(entry);
        }
        let _: (u64, u64) = call.invoke_async(conn).await?;
    }
    Ok(())
}

/// Record this worker in the queue's registry.
pub(crate) async fn register(
    conn: &mut ConnectionManager,
    ctx: &QueueCtx,
    concurrency: usize,
) -> Result<(), RedisError> {
    ensure_group(conn, &ctx.keys).await?;
    let now = now_ms();
    redis::pipe()
        .sadd(ctx.settings.registry_key(), ctx.keys.queue())
        .ignore()
        .hset_multiple(
            ctx.keys.worker(&ctx.consumer),
            &[
                ("queue", ctx.keys.queue().to_owned()),
                ("started_at", now.to_string()),
                ("host", hostname()),
                ("pid", std::process::id().to_string()),
                ("prefetch", concurrency.to_string()),
            ],
        )
        .ignore()
        .pexpire(
            ctx.keys.worker(&ctx.consumer),
            (ctx.settings.lease * 3).as_millis() as i64,
        )
        .ignore()
        .zadd(ctx.keys.workers(), &ctx.consumer, now)
        .ignore()
        .query_async::<()>(conn)
        .await
}

/// Remove this worker from the registry; its consumer is deleted too once it holds nothing.
pub(crate) async fn deregister(
    conn: &mut ConnectionManager,
    ctx: &QueueCtx,
) -> Result<(), RedisError> {
    let pending: Vec<Value> = redis::cmd("XPENDING")
        .arg(ctx.keys.stream())
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(1)
        .arg(&ctx.consumer)
        .query_async(conn)
        .await?;
    let mut pipe = redis::pipe();
    pipe.zrem(ctx.keys.workers(), &ctx.consumer)
        .ignore()
        .del(ctx.keys.worker(&ctx.consumer))
        .ignore();
    if pending.is_empty() {
        pipe.cmd("XGROUP")
            .arg("DELCONSUMER")
            .arg(ctx.keys.stream())
            .arg(GROUP)
            .arg(&ctx.consumer)
            .ignore();
    }
    pipe.query_async::<()>(conn).await
}

pub fn hostname() -> String {
    std::env::var("DYNO")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "local".to_owned())
}
