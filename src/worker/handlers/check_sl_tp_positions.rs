//! `check_sl_tp_positions`, every 5 s: the SL/TP sweep. The sweep itself belongs to the trading
//! core; until it lands the job is consumed and acknowledged so that the schedule, queue and
//! worker path run end to end. Retrying a sweep is pointless (the next tick follows in 5 s), so
//! the job has one attempt.

use apalis_core::{error::BoxDynError, task::data::Data};
use halol_jobs::CheckSlTpPositions;

use crate::worker::AppState;

/// Run one sweep.
pub async fn handle(job: CheckSlTpPositions, _state: Data<AppState>) -> Result<(), BoxDynError> {
    tracing::debug!(tick = %job.tick, "check_sl_tp_positions for tick {}", job.tick);
    Ok(())
}
