//! Enqueueing: the one place jobs enter a queue.

use std::sync::Arc;

use futures::future::try_join_all;
use redis::aio::ConnectionManager;

use super::{QueueError, QueueSettings, now_ms, scripts};

/// Jobs per script call; a larger push is split and the calls are pipelined.
const CHUNK: usize = 1_000;

/// A job about to be enqueued, already encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// Job id (a ULID unless the caller chose one).
    pub id: String,
    /// JSON payload.
    pub payload: String,
    /// Attempts before dead-lettering.
    pub max_attempts: u32,
    /// Earliest run time in ms since the epoch; `None` runs now.
    pub run_at_ms: Option<i64>,
    /// A push with a key already seen within the idempotency TTL is dropped.
    pub idempotency_key: Option<String>,
}

impl NewJob {
    /// A job with a fresh id that runs now.
    pub fn new(payload: String, max_attempts: u32) -> Self {
        Self {
            id: ulid::Ulid::new().to_string(),
            payload,
            max_attempts: max_attempts.max(1),
            run_at_ms: None,
            idempotency_key: None,
        }
    }
}

/// What a push did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PushReport {
    /// Jobs added to the queue.
    pub pushed: u64,
    /// Jobs dropped because their idempotency key was already used.
    pub deduplicated: u64,
}

/// Pushes jobs onto queues by name. Cheap to clone.
#[derive(Clone)]
pub struct Producer {
    conn: ConnectionManager,
    settings: Arc<QueueSettings>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("prefix", &self.settings.prefix)
            .finish()
    }
}

impl Producer {
    /// A producer over a shared connection.
    pub fn new(conn: ConnectionManager, settings: Arc<QueueSettings>) -> Self {
        Self { conn, settings }
    }

    /// The shared connection the producer pushes on.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The settings the producer was built with.
    pub fn settings(&self) -> &Arc<QueueSettings> {
        &self.settings
    }

    /// Enqueue `jobs` on `queue`, in order, in as few round trips as possible.
    pub async fn push(&self, queue: &str, jobs: &[NewJob]) -> Result<PushReport, QueueError> {
        let reports = try_join_all(
            jobs.chunks(CHUNK)
                .map(|chunk| self.push_chunk(queue, chunk)),
        )
        .await?;
        Ok(reports
            .into_iter()
            .fold(PushReport::default(), |acc, r| PushReport {
                pushed: acc.pushed + r.pushed,
                deduplicated: acc.deduplicated + r.deduplicated,
            }))
    }

    async fn push_chunk(&self, queue: &str, jobs: &[NewJob]) -> Result<PushReport, QueueError> {
        let keys = self.settings.keys(queue);
        let mut call = scripts::PUSH.prepare_invoke();
        call.key(keys.stream())
            .key(keys.delayed())
            .key(keys.stats());
        call.arg(now_ms())
            .arg(self.settings.idempotency_ttl.as_millis() as u64)
            .arg(jobs.len());
        let mut next_key = 3;
        for job in jobs {
            let (index, key) = match &job.idempotency_key {
                Some(key) => {
                    call.key(keys.idempotency(key));
                    next_key += 1;
                    (next_key, key.as_str())
                }
                None => (0, ""),
            };
            call.arg(&job.id)
                .arg(job.max_attempts.max(1))
                .arg(&job.payload)
                .arg(job.run_at_ms.unwrap_or(0))
                .arg(index)
                .arg(key);
        }
        let mut conn = self.conn.clone();
        let (pushed, deduplicated): (u64, u64) = call.invoke_async(&mut conn).await?;
        Ok(PushReport {
            pushed,
            deduplicated,
        })
    }
}
