//! What the simulated bots did, counted per bot and merged into one JSON summary at the end.
//! Latencies are kept raw (one `u32` of microseconds per request) rather than bucketed: a run is
//! bounded in time, so even 10,000 bots polling every second for ten minutes stay at tens of MB.

use serde::Serialize;

/// Counters of one bot (or of all of them, merged).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// `bot:heartbeat:{id}` written.
    pub heartbeats_sent: u64,
    /// Heartbeat writes Redis refused.
    pub heartbeat_errors: u64,
    /// `server:heartbeat:{id}` found.
    pub server_heartbeats_read: u64,
    /// `server:heartbeat:{id}` absent (nothing to obey).
    pub server_heartbeats_missing: u64,
    /// Version keys read (trade config and strategies).
    pub version_checks: u64,
    /// Version keys absent: "unknown", so fetched.
    pub versions_missing: u64,
    /// Version reads Redis refused.
    pub version_errors: u64,
    /// Push messages received.
    pub push_messages: u64,
    /// Fetches answered 200.
    pub fetches_200: u64,
    /// Fetches answered 304.
    pub fetches_304: u64,
    /// Fetches that failed after their retries, or were refused (4xx).
    pub fetch_errors: u64,
    /// Requests retried after a transient failure.
    pub fetch_retries: u64,
    /// ACTIVE → PAUSED transitions.
    pub pauses_seen: u64,
    /// PAUSED → ACTIVE transitions.
    pub resumes_seen: u64,
    /// Times the server reported a drawdown block the bot did not know of.
    pub dd_blocks_seen: u64,
    /// Round trip of each HTTP request, µs.
    pub latencies_us: Vec<u32>,
}

impl Stats {
    /// Add `other` into `self`.
    pub fn merge(&mut self, other: Stats) {
        self.heartbeats_sent += other.heartbeats_sent;
        self.heartbeat_errors += other.heartbeat_errors;
        self.server_heartbeats_read += other.server_heartbeats_read;
        self.server_heartbeats_missing += other.server_heartbeats_missing;
        self.version_checks += other.version_checks;
        self.versions_missing += other.versions_missing;
        self.version_errors += other.version_errors;
        self.push_messages += other.push_messages;
        self.fetches_200 += other.fetches_200;
        self.fetches_304 += other.fetches_304;
        self.fetch_errors += other.fetch_errors;
        self.fetch_retries += other.fetch_retries;
        self.pauses_seen += other.pauses_seen;
        self.resumes_seen += other.resumes_seen;
        self.dd_blocks_seen += other.dd_blocks_seen;
        self.latencies_us.extend(other.latencies_us);
    }
}

/// Percentiles of the fetch latencies, ms.
#[derive(Debug, Serialize, PartialEq)]
pub struct Latency {
    /// Requests measured.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// Nearest-rank percentiles of `us` (sorted in place); all zero when empty.
pub fn latency(us: &mut [u32]) -> Latency {
    us.sort_unstable();
    let at = |p: f64| -> f64 {
        if us.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * us.len() as f64).ceil() as usize;
        let v = us[rank.clamp(1, us.len()) - 1];
        f64::from(v) / 1000.0
    };
    Latency {
        count: us.len(),
        p50_ms: at(50.0),
        p90_ms: at(90.0),
        p99_ms: at(99.0),
        max_ms: at(100.0),
    }
}

/// The JSON printed at the end of a run.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Bots simulated.
    pub bots: usize,
    /// Wall time of the run, ms.
    pub duration_ms: u64,
    /// Stopped by SIGTERM/SIGINT rather than by time or count.
    pub interrupted: bool,
    /// See [`Stats`].
    pub heartbeats_sent: u64,
    /// See [`Stats`].
    pub heartbeat_errors: u64,
    /// See [`Stats`].
    pub server_heartbeats_read: u64,
    /// See [`Stats`].
    pub server_heartbeats_missing: u64,
    /// See [`Stats`].
    pub version_checks: u64,
    /// See [`Stats`].
    pub versions_missing: u64,
    /// See [`Stats`].
    pub version_errors: u64,
    /// See [`Stats`].
    pub push_messages: u64,
    /// Fetch outcomes.
    pub fetches: Fetches,
    /// See [`Stats`].
    pub pauses_seen: u64,
    /// See [`Stats`].
    pub resumes_seen: u64,
    /// See [`Stats`].
    pub dd_blocks_seen: u64,
    /// HTTP round trips.
    pub fetch_latency: Latency,
}

/// Fetch outcomes.
#[derive(Debug, Serialize)]
pub struct Fetches {
    /// 200.
    pub ok_200: u64,
    /// 304.
    pub not_modified_304: u64,
    /// Failed.
    pub errors: u64,
    /// Retried requests.
    pub retries: u64,
}

impl Summary {
    /// Build the summary of `bots` bots from their merged `stats`.
    pub fn new(bots: usize, duration_ms: u64, interrupted: bool, mut stats: Stats) -> Self {
        Self {
            bots,
            duration_ms,
            interrupted,
            heartbeats_sent: stats.heartbeats_sent,
            heartbeat_errors: stats.heartbeat_errors,
            server_heartbeats_read: stats.server_heartbeats_read,
            server_heartbeats_missing: stats.server_heartbeats_missing,
            version_checks: stats.version_checks,
            versions_missing: stats.versions_missing,
            version_errors: stats.version_errors,
            push_messages: stats.push_messages,
            fetches: Fetches {
                ok_200: stats.fetches_200,
                not_modified_304: stats.fetches_304,
                errors: stats.fetch_errors,
                retries: stats.fetch_retries,
            },
            pauses_seen: stats.pauses_seen,
            resumes_seen: stats.resumes_seen,
            dd_blocks_seen: stats.dd_blocks_seen,
            fetch_latency: latency(&mut stats.latencies_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank_and_are_zero_when_nothing_was_measured() {
        let mut us: Vec<u32> = (1..=100).rev().map(|ms| ms * 1000).collect();
        let l = latency(&mut us);
        assert_eq!(
            l,
            Latency {
                count: 100,
                p50_ms: 50.0,
                p90_ms: 90.0,
                p99_ms: 99.0,
                max_ms: 100.0
            }
        );
        assert_eq!(latency(&mut []).max_ms, 0.0);
        assert_eq!(latency(&mut [1500]).p50_ms, 1.5);
    }

    #[test]
    fn merging_adds_every_counter_and_keeps_every_latency() {
        let mut a = Stats {
            heartbeats_sent: 2,
            fetches_304: 1,
            latencies_us: vec![1],
            ..Stats::default()
        };
        a.merge(Stats {
            heartbeats_sent: 3,
            fetches_304: 4,
            latencies_us: vec![2, 3],
            ..Stats::default()
        });
        assert_eq!((a.heartbeats_sent, a.fetches_304), (5, 5));
        assert_eq!(a.latencies_us.len(), 3);
    }
}
