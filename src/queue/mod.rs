//! halol's job queue: an apalis backend on Redis Streams.
//!
//! apalis-redis 1.0.0 is not used (see `../shared/research/apalis-1.0.md`): this backend keeps
//! apalis' worker builder, tower layers, `Monitor` and `TaskSink`, and stores jobs as follows.
//!
//! - Push: `XADD` to the queue's stream (or `ZADD` to its delayed set when due later), guarded by
//!   an optional idempotency key (`SET NX PX`, bounded by a TTL).
//! - Fetch: `XREADGROUP ... BLOCK` on a dedicated connection, so an idle worker wakes as soon as
//!   a job arrives; batches are bounded by the worker's free capacity.
//! - Lease: a delivery is owned by its consumer while the consumer renews it (`XCLAIM JUSTID`
//!   every lease/4). A delivery idle longer than the lease belonged to a dead or partitioned
//!   worker: any live worker re-queues it as a new entry, counting the lost run as an attempt.
//! - Settle: outcomes are batched into one script call. `XACK` decides whether the delivery is
//!   still ours, so a late ack never overwrites a newer attempt. Done jobs go to a capped history
//!   stream; failures are retried with exponential backoff and jitter through the delayed set up
//!   to the job's max attempts, then go to a capped dead-letter stream with their last error.
//! - Redis errors never kill a worker: every loop backs off, reconnects and carries on.

mod ack;
mod backend;
mod expose;
pub mod inspect;
pub mod keys;
mod producer;
mod runtime;
mod scripts;
mod settle;

pub use runtime::hostname as runtime_hostname;

use std::time::Duration;

pub use ack::{AckLayer, Delivery};
pub use backend::RedisQueue;
pub use keys::Keys;
pub use producer::{NewJob, Producer, PushReport};
pub use settle::{Failure, FailureKind};

/// Queue behaviour shared by every queue of a process.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Prefix of every key, isolating deployments and tests that share one Redis.
    pub prefix: String,
    /// How long a delivery may go without renewal before another worker re-queues it.
    pub lease: Duration,
    /// How often a worker looks for expired leases and renews its own.
    pub reclaim_interval: Duration,
    /// How long one blocking read waits before it is reissued.
    pub block: Duration,
    /// Most entries one read returns.
    pub fetch_batch: usize,
    /// Delay before the first retry; doubles with each further attempt.
    pub retry_base: Duration,
    /// Longest delay between two attempts.
    pub retry_max: Duration,
    /// Finished jobs kept in a queue's history stream (approximate, rounded up to a stream node).
    pub done_retention: usize,
    /// Dead letters kept per queue.
    pub dead_retention: usize,
    /// How long finished-job history and dead letters are kept at most (trimmed by housekeeping).
    pub history_max_age: Duration,
    /// How long an idempotency key keeps a second push of the same job out.
    pub idempotency_ttl: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            prefix: "halol".into(),
            lease: Duration::from_secs(8),
            reclaim_interval: Duration::from_secs(1),
            block: Duration::from_secs(2),
            fetch_batch: 200,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            done_retention: 10_000,
            dead_retention: 10_000,
            history_max_age: Duration::from_secs(7 * 24 * 3600),
            idempotency_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl QueueSettings {
    /// The keys of `queue` under these settings.
    pub fn keys(&self, queue: &str) -> Keys {
        Keys::new(&self.prefix, queue)
    }

    /// The key of the set naming every queue that was ever used under this prefix.
    pub fn registry_key(&self) -> String {
        format!("{}:queues", self.prefix)
    }
}

/// What can go wrong talking to a queue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// Redis refused or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A job could not be encoded.
    #[error("encoding a job for queue {queue}: {source}")]
    Encode {
        /// The queue.
        queue: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// Redis answered something this version does not understand.
    #[error("unexpected reply from redis for queue {queue}: {detail}")]
    Reply {
        /// The queue.
        queue: String,
        /// What was wrong.
        detail: String,
    },
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
