//! The scheduler role: enqueues each periodic job on its cron ticks.
//!
//! Run two or more for availability: every tick is pushed with the idempotency key
//! `(schedule, tick time)`, so the queue keeps the first push and drops the others.
//!
//! Ticks are driven by our own loop over the cron schedule rather than apalis-cron's stream,
//! which stops for good (`OutOfRange` forever) once its consumer stalls longer than one interval.
//! A tick that cannot be enqueued within `SCHEDULER_MAX_LAG_MS` of its time (the process stalled,
//! Redis was down) is skipped: no burst of catch-up jobs. Each enqueue's lag is logged, exported
//! as a metric, and written to the `<prefix>:schedules` hash for the dashboard.

use std::time::Duration;

use chrono::{DateTime, Utc};
use halol_schedules::PeriodicJob;
use redis::AsyncCommands as _;
use tokio_util::sync::CancellationToken;

use crate::queue::{NewJob, Producer};

/// How long to wait between two attempts to push one tick.
const PUSH_RETRY: Duration = Duration::from_millis(250);

/// Run every schedule until `stop` is cancelled.
pub async fn run(
    producer: Producer,
    schedules: Vec<PeriodicJob>,
    max_lag: Duration,
    stop: CancellationToken,
) {
    tracing::info!(schedules = ?schedules.iter().map(|s| (s.name, s.cron)).collect::<Vec<_>>(), "scheduler starting");
    let drivers = schedules
        .into_iter()
        .map(|s| drive(producer.clone(), s, max_lag, stop.clone()));
    futures::future::join_all(drivers).await;
    tracing::info!("scheduler stopped");
}

/// The key of the hash recording each schedule's last enqueue.
pub fn status_key(prefix: &str) -> String {
    format!("{prefix}:schedules")
}

async fn drive(producer: Producer, job: PeriodicJob, max_lag: Duration, stop: CancellationToken) {
    let max_lag = chrono::Duration::from_std(max_lag).unwrap_or(chrono::Duration::seconds(2));
    let mut after = Utc::now();
    while let Some(tick) = job.next_after(after) {
        let wait = (tick - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        enqueue(&producer, &job, tick, max_lag, &stop).await;
        // Skip every tick already too late to enqueue, in one step.
        let now = Utc::now();
        after = if now - tick > max_lag {
            let skipped_from = tick;
            tracing::warn!(
                schedule = job.name,
                "schedule {}: skipping ticks missed since {skipped_from}",
                job.name
            );
            now - max_lag
        } else {
            tick
        };
    }
}

async fn enqueue(
    producer: &Producer,
    job: &PeriodicJob,
    tick: DateTime<Utc>,
    max_lag: chrono::Duration,
    stop: &CancellationToken,
) {
    let payload = match job.payload(tick) {
        Ok(p) => p.to_string(),
        Err(e) => {
            tracing::error!(schedule = job.name, error = %e, "schedule {}: cannot encode payload: {e}", job.name);
            return;
        }
    };
    let mut new_job = NewJob::new(payload, job.max_attempts);
    new_job.idempotency_key = Some(job.idempotency_key(tick));
    let mut warned = false;
    loop {
        let lag = Utc::now() - tick;
        if lag > max_lag {
            metrics::counter!("halol_schedule_ticks_total", "schedule" => job.name, "outcome" => "skipped").increment(1);
            tracing::warn!(schedule = job.name, %tick, lag_ms = lag.num_milliseconds(), "schedule {}: tick {tick} skipped, {} ms late", job.name, lag.num_milliseconds());
            return;
        }
        match producer
            .push(job.queue, std::slice::from_ref(&new_job))
            .await
        {
            Ok(report) => {
                let lag_ms = (Utc::now() - tick).num_milliseconds();
                let outcome = if report.pushed > 0 {
                    "enqueued"
                } else {
                    "duplicate"
                };
                metrics::counter!("halol_schedule_ticks_total", "schedule" => job.name, "outcome" => outcome).increment(1);
                metrics::gauge!("halol_schedule_lag_seconds", "schedule" => job.name)
                    .set(lag_ms as f64 / 1000.0);
                tracing::debug!(schedule = job.name, %tick, lag_ms, outcome, "schedule {}: tick {tick} {outcome}, lag {lag_ms} ms", job.name);
                record_status(producer, job, tick, lag_ms, outcome).await;
                return;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(schedule = job.name, %tick, error = %e, "schedule {}: cannot enqueue tick {tick}, retrying until it is too late: {e}", job.name);
                    warned = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(PUSH_RETRY) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

async fn record_status(
    producer: &Producer,
    job: &PeriodicJob,
    tick: DateTime<Utc>,
    lag_ms: i64,
    outcome: &str,
) {
    let status = serde_json::json!({ "tick": tick, "lag_ms": lag_ms, "outcome": outcome, "by": crate::queue::runtime_hostname() });
    let mut conn = producer.connection();
    let written: Result<(), _> = conn
        .hset(
            status_key(&producer.settings().prefix),
            job.name,
            status.to_string(),
        )
        .await;
    if let Err(e) = written {
        tracing::debug!(error = %e, "could not record schedule status");
    }
}
