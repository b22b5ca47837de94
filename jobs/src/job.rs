use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};

/// A unit of background work with a stable name.
///
/// Delivery is at least once: a job can run twice (a worker died mid-job, an ack was lost), so
/// every handler must be idempotent.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static {
    /// The stable name of the job, also the name of its queue. Never derive it from the Rust
    /// type name: renaming the type would orphan the jobs already queued.
    const NAME: &'static str;

    /// How many times the job is attempted before it is moved to the dead-letter stream.
    const MAX_ATTEMPTS: u32 = 3;

    /// How long one attempt may run before it is cut off and counted as failed.
    const TIMEOUT: Duration = Duration::from_secs(60);
}
