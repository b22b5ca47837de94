//! What happens to a finished delivery: done, retried later, or dead-lettered.

use std::time::Duration;

use rand::Rng;

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The handler returned an error.
    Error,
    /// The handler panicked.
    Panic,
    /// The attempt ran longer than the job's timeout and was cut off.
    Timeout,
    /// The handler asked not to be retried (apalis `AbortError`).
    Abort,
    /// The payload could not be decoded; retrying cannot help.
    Undecodable,
}

impl FailureKind {
    /// The status recorded in the dead-letter stream.
    pub fn status(self) -> &'static str {
        match self {
            Self::Error => "failed",
            Self::Panic => "panicked",
            Self::Timeout => "timed_out",
            Self::Abort => "aborted",
            Self::Undecodable => "undecodable",
        }
    }

    fn retryable(self) -> bool {
        matches!(self, Self::Error | Self::Panic | Self::Timeout)
    }
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The kind of failure.
    pub kind: FailureKind,
    /// The error message, kept with the job.
    pub message: String,
}

/// The decision for one failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Try again after this delay.
    Retry(Duration),
    /// No attempts left, or not retryable: dead-letter it.
    Dead,
}

/// Decide what to do after attempt number `attempt` (1-based) of at most `max_attempts` failed.
pub(crate) fn verdict(
    failure: &Failure,
    attempt: u32,
    max_attempts: u32,
    base: Duration,
    max: Duration,
) -> Verdict {
    if !failure.kind.retryable() || attempt >= max_attempts {
        return Verdict::Dead;
    }
    Verdict::Retry(backoff(attempt, base, max))
}

/// `base * 2^(attempt-1)`, capped at `max`, plus up to 20 % jitter so that jobs failing together
/// (one outage, many symbols) do not retry in lockstep.
pub(crate) fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(20);
    let delay = base.saturating_mul(1 << exp).min(max);
    let jitter = rand::rng().random_range(0.0..0.2);
    delay + delay.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);

    fn failure(kind: FailureKind) -> Failure {
        Failure {
            kind,
            message: "boom".into(),
        }
    }

    #[test]
    fn backoff_doubles_per_attempt_within_jitter_and_is_capped() {
        for (attempt, expected) in [(1, 1), (2, 2), (3, 4), (4, 8), (10, 60), (40, 60)] {
            let d = backoff(attempt, BASE, MAX);
            let lo = Duration::from_secs(expected);
            assert!(d >= lo && d <= lo.mul_f64(1.2), "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn a_failure_is_retried_until_the_last_attempt() {
        let f = failure(FailureKind::Error);
        assert!(matches!(verdict(&f, 1, 3, BASE, MAX), Verdict::Retry(_)));
        assert!(matches!(verdict(&f, 2, 3, BASE, MAX), Verdict::Retry(_)));
        assert_eq!(verdict(&f, 3, 3, BASE, MAX), Verdict::Dead);
    }

    #[test]
    fn panics_and_timeouts_are_retried_but_aborts_and_bad_payloads_are_not() {
        for kind in [FailureKind::Panic, FailureKind::Timeout] {
            assert!(matches!(
                verdict(&failure(kind), 1, 3, BASE, MAX),
                Verdict::Retry(_)
            ));
        }
        for kind in [FailureKind::Abort, FailureKind::Undecodable] {
            assert_eq!(verdict(&failure(kind), 1, 3, BASE, MAX), Verdict::Dead);
        }
    }
}
