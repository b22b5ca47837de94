//! Redis key layout of one queue.
//!
//! Every key of a queue starts with the hash tag `{<prefix>:<queue>}`, so all of them live in one
//! Redis Cluster slot and each Lua script touches a single slot. The prefix isolates deployments
//! (and tests) sharing one Redis.

/// The consumer group every worker of a queue reads through.
pub const GROUP: &str = "workers";

/// The keys of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    queue: String,
    tag: String,
}

impl Keys {
    /// Keys of `queue` under `prefix`.
    pub fn new(prefix: &str, queue: &str) -> Self {
        Self {
            queue: queue.to_owned(),
            tag: format!("{{{prefix}:{queue}}}"),
        }
    }

    /// The queue's stable name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Stream of ready and in-flight jobs (acked entries are deleted from it).
    pub fn stream(&self) -> String {
        format!("{}:stream", self.tag)
    }

    /// Sorted set of jobs waiting for their run time (delayed pushes and retries), by due time in ms.
    pub fn delayed(&self) -> String {
        format!("{}:delayed", self.tag)
    }

    /// Capped stream recording finished jobs.
    pub fn done(&self) -> String {
        format!("{}:done", self.tag)
    }

    /// Capped dead-letter stream: jobs that used up their attempts, with their last error.
    pub fn dead(&self) -> String {
        format!("{}:dead", self.tag)
    }

    /// Hash of lifetime counters (enqueued, done, retried, dead, ...).
    pub fn stats(&self) -> String {
        format!("{}:stats", self.tag)
    }

    /// Sorted set of live workers, by last heartbeat in ms.
    pub fn workers(&self) -> String {
        format!("{}:workers", self.tag)
    }

    /// Hash describing one worker.
    pub fn worker(&self, consumer: &str) -> String {
        format!("{}:worker:{consumer}", self.tag)
    }

    /// Idempotency key of one enqueue.
    pub fn idempotency(&self, key: &str) -> String {
        format!("{}:idem:{key}", self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_keys_of_a_queue_share_one_hash_tag() {
        let keys = Keys::new("halol", "check_sl_tp_positions");
        let tag = "{halol:check_sl_tp_positions}";
        for key in [
            keys.stream(),
            keys.delayed(),
            keys.done(),
            keys.dead(),
            keys.stats(),
            keys.workers(),
            keys.worker("w1"),
            keys.idempotency("tick:1"),
        ] {
            assert!(key.starts_with(tag), "{key} lacks the hash tag");
        }
    }
}
