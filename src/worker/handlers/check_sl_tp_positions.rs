//! `check_sl_tp_positions`, every 5 s: fan the sweep out as one `check_sl_tp_symbol` job per
//! symbol, so several workers share a tick. The fan-out is idempotent: each (tick, symbol) job
//! carries the idempotency key `check_sl_tp_symbol:<tick ms>:<symbol>`, so a redelivered tick
//! enqueues nothing new. A sweep is superseded by the next tick, so neither job is retried.

use apalis_core::{error::BoxDynError, task::data::Data};
use halol_jobs::{CheckSlTpPositions, CheckSlTpSymbol, Job as _};

use crate::{
    queue::{NewJob, Producer},
    worker::AppState,
};

/// Enqueue one sweep job per symbol.
pub async fn handle(job: CheckSlTpPositions, state: Data<AppState>) -> Result<(), BoxDynError> {
    let symbols: Vec<String> = sqlx::query_scalar("SELECT symbol FROM symbols ORDER BY symbol")
        .fetch_all(&state.db)
        .await?;
    let tick_ms = job.tick.timestamp_millis();
    let jobs = symbols
        .into_iter()
        .map(|symbol| {
            let key = format!("{}:{tick_ms}:{symbol}", CheckSlTpSymbol::NAME);
            let payload = serde_json::to_string(&CheckSlTpSymbol {
                tick: job.tick,
                symbol,
            })?;
            let mut new = NewJob::new(payload, CheckSlTpSymbol::MAX_ATTEMPTS);
            new.idempotency_key = Some(key);
            Ok(new)
        })
        .collect::<Result<Vec<_>, serde_json::Error>>()?;
    let report = Producer::new(state.redis.manager(), state.queue.clone())
        .push(CheckSlTpSymbol::NAME, &jobs)
        .await?;
    tracing::debug!(tick = %job.tick, symbols = jobs.len(), pushed = report.pushed, "sweep fanned out");
    Ok(())
}
