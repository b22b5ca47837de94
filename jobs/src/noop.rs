use serde::{Deserialize, Serialize};

use crate::Job;

/// A job that does nothing, optionally after a pause: used by `halol bench` to measure the queue
/// itself, and by ops and tests to check a fleet end to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Noop {
    /// A caller-chosen number.
    pub n: u64,
    /// How long the job sleeps before it succeeds, in ms.
    #[serde(default)]
    pub sleep_ms: u64,
}

impl Job for Noop {
    const NAME: &'static str = "noop";
    const MAX_ATTEMPTS: u32 = 1;
}
