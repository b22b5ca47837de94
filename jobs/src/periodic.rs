//! Payloads of the jobs the scheduler enqueues. Each carries the tick it was scheduled for, which
//! is also its identity: the scheduler enqueues `(name, tick)` once however many schedulers run.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Job;

/// Sweep open positions for stop-loss / take-profit triggers (every 5 s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSlTpPositions {
    /// The schedule tick this sweep belongs to.
    pub tick: DateTime<Utc>,
}

impl Job for CheckSlTpPositions {
    const NAME: &'static str = "check_sl_tp_positions";
    // A sweep is superseded by the next tick 5 s later: retrying an old one is useless.
    const MAX_ATTEMPTS: u32 = 1;
    const TIMEOUT: Duration = Duration::from_secs(10);
}

/// Revalue open positions from the price cache (every 30 s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePositionPrices {
    /// The schedule tick this revaluation belongs to.
    pub tick: DateTime<Utc>,
}

impl Job for UpdatePositionPrices {
    const NAME: &'static str = "update_position_prices";
    const MAX_ATTEMPTS: u32 = 2;
    const TIMEOUT: Duration = Duration::from_secs(25);
}

/// Housekeeping: trim every queue's finished-job history and dead letters to their retention
/// bounds, and forget workers that stopped heartbeating.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrimRetention {
    /// The schedule tick this run belongs to.
    pub tick: DateTime<Utc>,
}

impl Job for TrimRetention {
    const NAME: &'static str = "trim_retention";
    const MAX_ATTEMPTS: u32 = 3;
    const TIMEOUT: Duration = Duration::from_secs(60);
}

/// A job the scheduler enqueues on a cron schedule: it is built from its tick alone.
pub trait Periodic: Job {
    /// The payload for the tick `tick`.
    fn for_tick(tick: DateTime<Utc>) -> Self;
}

impl Periodic for CheckSlTpPositions {
    fn for_tick(tick: DateTime<Utc>) -> Self {
        Self { tick }
    }
}

impl Periodic for UpdatePositionPrices {
    fn for_tick(tick: DateTime<Utc>) -> Self {
        Self { tick }
    }
}

impl Periodic for TrimRetention {
    fn for_tick(tick: DateTime<Utc>) -> Self {
        Self { tick }
    }
}

/// One symbol's share of a `check_sl_tp_positions` tick. The tick job fans out one of these per
/// symbol so several workers share a sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSlTpSymbol {
    /// The tick of the sweep this belongs to.
    pub tick: DateTime<Utc>,
    /// The symbol to check.
    pub symbol: String,
}

impl Job for CheckSlTpSymbol {
    const NAME: &'static str = "check_sl_tp_symbol";
    // Superseded by the next tick: one attempt.
    const MAX_ATTEMPTS: u32 = 1;
    const TIMEOUT: Duration = Duration::from_secs(10);
}

/// Read every live bot's heartbeat, record it, mark DOWN bots, apply the drawdown guard and
/// publish what changed (every 5 s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckBotHeartbeats {
    /// The schedule tick this pass belongs to.
    pub tick: DateTime<Utc>,
}

impl Job for CheckBotHeartbeats {
    const NAME: &'static str = "check_bot_heartbeats";
    // Superseded by the next tick 5 s later.
    const MAX_ATTEMPTS: u32 = 1;
    const TIMEOUT: Duration = Duration::from_secs(10);
}

impl Periodic for CheckBotHeartbeats {
    fn for_tick(tick: DateTime<Utc>) -> Self {
        Self { tick }
    }
}

/// Rewrite the server heartbeat and config-version keys of every live account from PostgreSQL
/// (every 30 s): keeps them inside their TTLs and rebuilds them after Redis loses them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncBotKeys {
    /// The schedule tick this pass belongs to.
    pub tick: DateTime<Utc>,
}

impl Job for SyncBotKeys {
    const NAME: &'static str = "sync_bot_keys";
    const MAX_ATTEMPTS: u32 = 1;
    const TIMEOUT: Duration = Duration::from_secs(25);
}

impl Periodic for SyncBotKeys {
    fn for_tick(tick: DateTime<Utc>) -> Self {
        Self { tick }
    }
}
