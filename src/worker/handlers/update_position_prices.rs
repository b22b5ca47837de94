//! `update_position_prices`, every 30 s: revaluation of open positions. The revaluation belongs
//! to the trading core; until it lands the job is consumed and acknowledged.

use apalis_core::{error::BoxDynError, task::data::Data};
use halol_jobs::UpdatePositionPrices;

use crate::worker::AppState;

/// Run one revaluation.
pub async fn handle(job: UpdatePositionPrices, _state: Data<AppState>) -> Result<(), BoxDynError> {
    tracing::debug!(tick = %job.tick, "update_position_prices for tick {}", job.tick);
    Ok(())
}
