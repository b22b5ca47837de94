//! `check_sl_tp_symbol`: one symbol's SL/TP sweep (see [`crate::trading::sweep`]). When Redis
//! is down the sweep is skipped with a warning and resumes by itself at a later tick; it never
//! fails the worker and never uses an invented price.

use apalis_core::{error::BoxDynError, task::data::Data};
use halol_jobs::CheckSlTpSymbol;

use crate::{
    trading::{TradingError, sweep},
    worker::AppState,
};

/// Sweep one symbol.
pub async fn handle(job: CheckSlTpSymbol, state: Data<AppState>) -> Result<(), BoxDynError> {
    let Some(symbol) = crate::trading::symbol(&state.db, &job.symbol).await? else {
        tracing::warn!(symbol = %job.symbol, "sweep for unknown symbol {} ignored", job.symbol);
        return Ok(());
    };
    match sweep::sweep_symbol(&state.trading, &symbol, chrono::Utc::now()).await {
        Ok(report) => {
            if !report.closed.is_empty() {
                tracing::info!(symbol = %job.symbol, tick = %job.tick, closed = report.closed.len(), "sweep of {} closed {} position(s)", job.symbol, report.closed.len());
            }
            Ok(())
        }
        Err(TradingError::Unavailable(why)) => {
            tracing::warn!(symbol = %job.symbol, "SL/TP sweep of {} skipped: {why}", job.symbol);
            metrics::counter!("halol_sltp_symbols_skipped_total", "reason" => "redis_down")
                .increment(1);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
