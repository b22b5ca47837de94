//! The bot jobs: `check_bot_heartbeats` (every 5 s) and `sync_bot_keys` (every 30 s). Both are
//! idempotent (PostgreSQL decides with conditional updates; Redis writes never move a version
//! backwards). Redis down: the pass is skipped with a warning and the next tick retries.

use apalis_core::{error::BoxDynError, task::data::Data};
use halol_jobs::{CheckBotHeartbeats, SyncBotKeys};

use crate::{
    bots::{heartbeat, publish},
    trading::TradingError,
    worker::AppState,
};

/// One heartbeat pass.
pub async fn check_heartbeats(
    job: CheckBotHeartbeats,
    state: Data<AppState>,
) -> Result<(), BoxDynError> {
    let started = std::time::Instant::now();
    match heartbeat::check(&state.trading, chrono::Utc::now()).await {
        Ok(pass) => {
            metrics::histogram!("halol_bot_heartbeat_pass_seconds")
                .record(started.elapsed().as_secs_f64());
            tracing::debug!(tick = %job.tick, accounts = pass.accounts, alive = pass.alive, down = pass.went_down.len(), "heartbeat pass");
            Ok(())
        }
        Err(TradingError::Unavailable(why)) => {
            tracing::warn!(tick = %job.tick, "heartbeat pass skipped: {why}");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Rewrite every live account's keys.
pub async fn sync_keys(job: SyncBotKeys, state: Data<AppState>) -> Result<(), BoxDynError> {
    match publish::refresh_all(&state.trading).await {
        Ok(p) => {
            tracing::debug!(tick = %job.tick, accounts = p.accounts, strategies = p.strategies, "bot keys refreshed");
            Ok(())
        }
        Err(TradingError::Unavailable(why)) => {
            tracing::warn!(tick = %job.tick, "bot key refresh skipped: {why}");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
