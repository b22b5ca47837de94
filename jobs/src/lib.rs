//! The wire contract of halol's job queues.
//!
//! Every job has a stable string [`Job::NAME`], used as its queue name; payloads are JSON. The web,
//! scheduler and worker roles all depend on this crate, so a payload change here is a protocol
//! change: add fields as `Option`/`#[serde(default)]`, and for a breaking change use a new name
//! (`check_sl_tp_positions_v2`), drain the old queue, then delete it.

mod job;
mod noop;
mod periodic;

pub use job::Job;
pub use noop::Noop;
pub use periodic::{
    CheckBotHeartbeats, CheckSlTpPositions, CheckSlTpSymbol, Periodic, SyncBotKeys, TrimRetention,
    UpdatePositionPrices,
};

/// Every queue a worker consumes by default, by its stable name.
pub const QUEUES: &[&str] = &[
    CheckSlTpPositions::NAME,
    CheckSlTpSymbol::NAME,
    UpdatePositionPrices::NAME,
    TrimRetention::NAME,
    CheckBotHeartbeats::NAME,
    SyncBotKeys::NAME,
    Noop::NAME,
];
