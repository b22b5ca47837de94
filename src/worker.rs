//! The worker role: one apalis worker per consumed queue, supervised by an apalis `Monitor`.
//!
//! On SIGTERM the monitor stops fetching, lets running jobs finish (up to
//! `SHUTDOWN_TIMEOUT_SECS`), hands prefetched-but-unstarted jobs back to the queue and flushes
//! every ack. A job cut off by the deadline is re-queued when its lease expires.

pub mod handlers;

use std::{str::FromStr, sync::Arc};

use anyhow::{Context as _, bail};
use apalis::layers::WorkerBuilderExt as _;
use apalis_core::{monitor::Monitor, worker::builder::WorkerBuilder};
use halol_jobs::{
    CheckBotHeartbeats, CheckSlTpPositions, CheckSlTpSymbol, Job, Noop, SyncBotKeys, TrimRetention,
    UpdatePositionPrices,
};
use sqlx::PgPool;

use crate::{
    queue::{QueueSettings, RedisQueue},
    redis_pool::RedisPool,
    trading::Trading,
};

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    /// PostgreSQL, the source of truth.
    pub db: PgPool,
    /// Redis: cache and queues.
    pub redis: RedisPool,
    /// Queue settings (for housekeeping and fan-out).
    pub queue: Arc<QueueSettings>,
    /// The trading core.
    pub trading: Trading,
}

/// One queue to consume and how many of its jobs to run at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// Queue name.
    pub name: String,
    /// Jobs run at once.
    pub concurrency: usize,
}

/// Parse `--queues`: `name[=concurrency],...`; names must be known queues.
pub fn parse_queues(raw: &str, default_concurrency: usize) -> anyhow::Result<Vec<QueueSpec>> {
    let mut specs: Vec<QueueSpec> = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, concurrency) = match part.split_once('=') {
            Some((name, c)) => (
                name.trim(),
                usize::from_str(c.trim())
                    .with_context(|| format!("queue {name}: concurrency {c:?} is not a number"))?,
            ),
            None => (part, default_concurrency),
        };
        if !halol_jobs::QUEUES.contains(&name) {
            bail!(
                "unknown queue {name:?}; known queues: {}",
                halol_jobs::QUEUES.join(", ")
            );
        }
        if concurrency == 0 {
            bail!("queue {name}: concurrency must be at least 1");
        }
        if specs.iter().any(|s| s.name == name) {
            bail!("queue {name} listed twice");
        }
        specs.push(QueueSpec {
            name: name.to_owned(),
            concurrency,
        });
    }
    if specs.is_empty() {
        bail!("no queue given");
    }
    Ok(specs)
}

/// Every known queue at `concurrency`.
pub fn all_queues(concurrency: usize) -> Vec<QueueSpec> {
    halol_jobs::QUEUES
        .iter()
        .map(|q| QueueSpec {
            name: (*q).to_owned(),
            concurrency,
        })
        .collect()
}

/// A unique consumer name: `<dyno or host>.<pid>.<queue>.<restart>.<ulid>`. Unique per process
/// and per restart, so a crashed incarnation's deliveries are never mistaken for a live one's.
fn consumer_name(queue: &str, restarts: usize) -> String {
    format!(
        "{}.{}.{queue}.{restarts}.{}",
        crate::queue::runtime_hostname(),
        std::process::id(),
        ulid::Ulid::new()
    )
}

macro_rules! register {
    ($monitor:expr, $state:expr, $spec:expr, $job:ty, $handler:path) => {{
        let state = $state.clone();
        let concurrency = $spec.concurrency;
        $monitor.register(move |restarts| {
            let backend = RedisQueue::<$job>::new(state.redis.clone(), state.queue.clone())
                .with_prefetch(concurrency);
            WorkerBuilder::new(consumer_name(<$job>::NAME, restarts))
                .backend(backend)
                .enable_tracing()
                .concurrency(concurrency)
                .data(state.clone())
                .build($handler)
        })
    }};
}

/// Build the monitor for `specs`.
pub fn monitor(state: &AppState, specs: &[QueueSpec]) -> Monitor {
    let mut monitor = Monitor::new();
    for spec in specs {
        monitor = match spec.name.as_str() {
            CheckSlTpPositions::NAME => register!(
                monitor,
                state,
                spec,
                CheckSlTpPositions,
                handlers::check_sl_tp_positions::handle
            ),
            CheckSlTpSymbol::NAME => register!(
                monitor,
                state,
                spec,
                CheckSlTpSymbol,
                handlers::check_sl_tp_symbol::handle
            ),
            UpdatePositionPrices::NAME => register!(
                monitor,
                state,
                spec,
                UpdatePositionPrices,
                handlers::update_position_prices::handle
            ),
            TrimRetention::NAME => register!(
                monitor,
                state,
                spec,
                TrimRetention,
                handlers::trim_retention::handle
            ),
            CheckBotHeartbeats::NAME => register!(
                monitor,
                state,
                spec,
                CheckBotHeartbeats,
                handlers::bots::check_heartbeats
            ),
            SyncBotKeys::NAME => {
                register!(monitor, state, spec, SyncBotKeys, handlers::bots::sync_keys)
            }
            Noop::NAME => register!(monitor, state, spec, Noop, handlers::noop::handle),
            other => {
                tracing::error!("no handler for queue {other}");
                monitor
            }
        };
    }
    monitor
}

/// Run the worker role until `stop` resolves.
pub async fn run(
    state: AppState,
    specs: Vec<QueueSpec>,
    shutdown_timeout: std::time::Duration,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(queues = ?specs, "worker starting");
    // Publish bot config changes the moment they commit (the scheduled drain is the backstop).
    let listening = tokio_util::sync::CancellationToken::new();
    let listener = tokio::spawn(crate::bots::publish::listen(
        state.trading.clone(),
        listening.clone(),
    ));
    let result = monitor(&state, &specs)
        .shutdown_timeout(shutdown_timeout)
        // Our backend never fails on Redis errors (it retries), so a worker only stops on a
        // bug; restart it under a fresh consumer name rather than leave the queue unserved.
        .should_restart(|ctx, err| {
            tracing::error!(worker = ctx.name(), error = %err, "worker {} stopped with an error; restarting", ctx.name());
            true
        })
        .run_with_signal(async move {
            stop.await;
            Ok(())
        })
        .await
        .context("worker monitor");
    listening.cancel();
    let _ = listener.await;
    result?;
    tracing::info!("worker stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_parse_with_optional_concurrency() {
        let specs = parse_queues("check_sl_tp_positions=4, trim_retention", 2).expect("valid");
        assert_eq!(
            specs,
            vec![
                QueueSpec {
                    name: "check_sl_tp_positions".into(),
                    concurrency: 4
                },
                QueueSpec {
                    name: "trim_retention".into(),
                    concurrency: 2
                },
            ]
        );
    }

    #[test]
    fn unknown_queues_and_bad_concurrency_are_refused() {
        assert!(
            parse_queues("nope", 1)
                .unwrap_err()
                .to_string()
                .contains("unknown queue")
        );
        assert!(parse_queues("noop=x", 1).is_err());
        assert!(parse_queues("noop=0", 1).is_err());
        assert!(parse_queues("noop,noop", 1).is_err());
        assert!(parse_queues("", 1).is_err());
    }
}
