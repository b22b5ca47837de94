//! `noop`: does nothing (optionally after a pause). Used by `halol bench` and to check a fleet
//! end to end.

use std::time::Duration;

use apalis_core::{error::BoxDynError, task::data::Data};
use halol_jobs::Noop;

use crate::worker::AppState;

/// Do nothing, after `sleep_ms`.
pub async fn handle(job: Noop, _state: Data<AppState>) -> Result<(), BoxDynError> {
    if job.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
    }
    Ok(())
}
