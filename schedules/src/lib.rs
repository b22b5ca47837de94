//! halol's periodic schedules: a pure table of `(name, cron expression, job)`.
//!
//! Cron expressions have a seconds field first (`sec min hour day-of-month month day-of-week`),
//! the syntax of the `cron` crate that apalis-cron builds on. Nothing here does I/O; the scheduler
//! role (`src/scheduler.rs`) drives the table with its own loop, because apalis-cron's stream
//! stops for good after its consumer stalls longer than one interval.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use halol_jobs::{
    CheckBotHeartbeats, CheckSlTpPositions, Periodic, SyncBotKeys, TrimRetention,
    UpdatePositionPrices,
};

/// One periodic job: when it fires and what it enqueues.
#[derive(Debug, Clone)]
pub struct PeriodicJob {
    /// Stable schedule name; with the tick time it identifies one enqueue.
    pub name: &'static str,
    /// Cron expression with seconds.
    pub cron: &'static str,
    /// The queue the job goes to (the job's [`Job::NAME`]).
    pub queue: &'static str,
    /// Attempts before the job is dead-lettered.
    pub max_attempts: u32,
    payload: fn(DateTime<Utc>) -> Result<serde_json::Value, serde_json::Error>,
    schedule: cron::Schedule,
}

impl PeriodicJob {
    /// A schedule named `name` that enqueues `J` on every tick of `cron`.
    pub fn new<J: Periodic>(
        name: &'static str,
        cron: &'static str,
    ) -> Result<Self, cron::error::Error> {
        Ok(Self {
            name,
            cron,
            queue: J::NAME,
            max_attempts: J::MAX_ATTEMPTS,
            payload: |tick| serde_json::to_value(J::for_tick(tick)),
            schedule: cron::Schedule::from_str(cron)?,
        })
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.after(&after).next()
    }

    /// The JSON payload enqueued for `tick`.
    pub fn payload(&self, tick: DateTime<Utc>) -> Result<serde_json::Value, serde_json::Error> {
        (self.payload)(tick)
    }

    /// The identity of one enqueue: the same in every scheduler process that computes it, so the
    /// queue keeps the first push and drops the others.
    pub fn idempotency_key(&self, tick: DateTime<Utc>) -> String {
        format!("{}:{}", self.name, tick.timestamp_millis())
    }
}

/// Every schedule halol runs.
pub fn all() -> Vec<PeriodicJob> {
    // The expressions are constants checked by the unit tests below, so a parse failure here is
    // a programming error caught before release.
    [
        PeriodicJob::new::<CheckSlTpPositions>("check_sl_tp_positions", "*/5 * * * * *"),
        PeriodicJob::new::<UpdatePositionPrices>("update_position_prices", "*/30 * * * * *"),
        PeriodicJob::new::<TrimRetention>("trim_retention", "0 */5 * * * *"),
        PeriodicJob::new::<CheckBotHeartbeats>("check_bot_heartbeats", "*/5 * * * * *"),
        // Offset from the 30 s revaluation so the two do not start together.
        PeriodicJob::new::<SyncBotKeys>("sync_bot_keys", "15,45 * * * * *"),
    ]
    .into_iter()
    .collect::<Result<Vec<_>, _>>()
    .expect("schedule table has a malformed cron expression")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, h, m, s)
            .single()
            .expect("valid date")
    }

    fn find(name: &str) -> PeriodicJob {
        all()
            .into_iter()
            .find(|j| j.name == name)
            .expect("schedule exists")
    }

    #[test]
    fn sl_tp_sweep_fires_every_five_seconds_on_the_boundary() {
        let job = find("check_sl_tp_positions");
        assert_eq!(job.next_after(at(10, 0, 0)), Some(at(10, 0, 5)));
        assert_eq!(job.next_after(at(10, 0, 3)), Some(at(10, 0, 5)));
        assert_eq!(job.next_after(at(10, 0, 59)), Some(at(10, 1, 0)));
    }

    #[test]
    fn revaluation_fires_every_thirty_seconds() {
        let job = find("update_position_prices");
        assert_eq!(job.next_after(at(10, 0, 0)), Some(at(10, 0, 30)));
        assert_eq!(job.next_after(at(10, 0, 30)), Some(at(10, 1, 0)));
    }

    #[test]
    fn housekeeping_fires_every_five_minutes() {
        let job = find("trim_retention");
        assert_eq!(job.next_after(at(10, 0, 1)), Some(at(10, 5, 0)));
    }

    #[test]
    fn every_schedule_targets_a_known_queue() {
        for job in all() {
            assert!(
                halol_jobs::QUEUES.contains(&job.queue),
                "{} has no queue",
                job.name
            );
        }
    }

    #[test]
    fn a_tick_has_one_identity_and_its_payload_carries_the_tick() {
        let job = find("check_sl_tp_positions");
        let tick = at(10, 0, 5);
        assert_eq!(job.idempotency_key(tick), job.idempotency_key(at(10, 0, 5)));
        assert_ne!(
            job.idempotency_key(tick),
            job.idempotency_key(at(10, 0, 10))
        );
        let payload = job.payload(tick).expect("serialises");
        let back: CheckSlTpPositions = serde_json::from_value(payload).expect("deserialises");
        assert_eq!(back.tick, tick);
    }
}
