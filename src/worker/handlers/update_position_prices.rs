//! `update_position_prices`, every 30 s: revalue open positions from the price cache (see
//! [`crate::trading::revalue`]). Idempotent: rows already valued at the cached quote are not
//! rewritten. Redis down: the pass is skipped with a warning.

use apalis_core::{error::BoxDynError, task::data::Data};
use halol_jobs::UpdatePositionPrices;

use crate::{
    trading::{TradingError, revalue},
    worker::AppState,
};

/// Run one revaluation.
pub async fn handle(job: UpdatePositionPrices, state: Data<AppState>) -> Result<(), BoxDynError> {
    match revalue::revalue_all(&state.trading, chrono::Utc::now()).await {
        Ok(r) => {
            tracing::info!(tick = %job.tick, updated = r.updated, symbols = r.symbols, skipped = r.skipped.len(), booked = r.booked, "revalued {} position(s)", r.updated);
            Ok(())
        }
        Err(TradingError::Unavailable(why)) => {
            tracing::warn!(tick = %job.tick, "revaluation skipped: {why}");
            metrics::counter!("halol_revaluation_skipped_total").increment(1);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
