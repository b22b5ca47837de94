//! `trim_retention`, every 5 minutes: trims each queue's history and dead letters to their age
//! bound (their length is capped on every write) and forgets workers that stopped heartbeating.
//! Idempotent: trimming twice trims nothing more.

use apalis_core::{error::BoxDynError, task::data::Data};
use halol_jobs::TrimRetention;
use redis::AsyncCommands as _;

use crate::{queue::inspect, worker::AppState};

/// Trim every known queue.
pub async fn handle(job: TrimRetention, state: Data<AppState>) -> Result<(), BoxDynError> {
    let mut conn = state.redis.manager();
    let settings = &state.queue;
    let mut queues: Vec<String> = conn.smembers(settings.registry_key()).await?;
    queues.extend(halol_jobs::QUEUES.iter().map(|q| (*q).to_owned()));
    queues.sort();
    queues.dedup();
    let max_age = settings.history_max_age.as_millis() as i64;
    let worker_ttl = (settings.lease * 3).as_millis() as i64;
    for queue in &queues {
        inspect::trim(&mut conn, &settings.keys(queue), max_age, worker_ttl).await?;
    }
    tracing::info!(tick = %job.tick, queues = queues.len(), "trimmed retention of {} queues", queues.len());
    Ok(())
}
