//! `halol simulate-bots`: simulated MT5 bots that follow seed 004's bot flow against a running
//! web role and Redis, for tests and load. Each bot is a tokio task (see [`bot`]); all share one
//! Redis connection, one HTTP client and, with `--push`, one pub/sub connection.
//!
//! Accounts and keys come from `--create N --first-mt5 M` (made through the library) or from
//! `--keys-file`. The run is bounded by `--duration-secs` and optionally by `--count`
//! heartbeats per bot; SIGTERM or Ctrl-C stops it early. It ends by printing one line of JSON:
//! heartbeats, version checks, fetches (200/304/errors/retries), pauses and fetch latency
//! percentiles. Stopping is safe at any point: the simulator only writes bot heartbeats (which
//! expire in 60 s) and, with `--create`, accounts and keys that a rerun reuses or adds to.

mod bot;
mod fetch;
mod push;
mod setup;
mod stats;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use rust_decimal::Decimal;
use tokio::{task::JoinSet, time::Instant};

use crate::{config::Config, trading::CacheKeys};

/// Options of `halol simulate-bots`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// The web role to fetch configs from (http only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub base_url: String,
    /// Create this many accounts (and an API key each) and simulate their bots.
    #[arg(long, requires = "first_mt5", conflicts_with = "keys_file")]
    pub create: Option<u32>,
    /// MT5 login of the first created account; the others follow it.
    #[arg(long, requires = "create")]
    pub first_mt5: Option<i64>,
    /// Currency of created accounts.
    #[arg(long, default_value = "USD")]
    pub currency: String,
    /// Starting balance of created accounts and of every simulated bot.
    #[arg(long, default_value = "10000")]
    pub balance: Decimal,
    /// Simulate the bots of this file instead: one `mt5,key` per line, `#` comments.
    #[arg(long)]
    pub keys_file: Option<PathBuf>,
    /// Seconds between heartbeats (the contract: 30).
    #[arg(long, default_value_t = 30)]
    pub heartbeat_secs: u64,
    /// Seconds between version checks (the contract: 60).
    #[arg(long, default_value_t = 60)]
    pub version_secs: u64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub duration_secs: u64,
    /// Stop each bot after this many heartbeats.
    #[arg(long)]
    pub count: Option<u64>,
    /// Strategy ids every bot follows (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub strategies: Vec<i64>,
    /// Also listen on `bot:events:{id}` and fetch at once on a message.
    #[arg(long)]
    pub push: bool,
    /// After this many seconds, drop every bot's equity by `--drawdown-percent`.
    #[arg(long)]
    pub drawdown_at: Option<u64>,
    /// How far equity drops at `--drawdown-at`, percent of the balance.
    #[arg(long, default_value = "12")]
    pub drawdown_percent: Decimal,
    /// Attempts per fetch, the first included.
    #[arg(long, default_value_t = 4)]
    pub max_attempts: u32,
    /// Delay before the first retry, ms (doubling, jittered, at most 10 s).
    #[arg(long, default_value_t = 250)]
    pub retry_base_ms: u64,
    /// Timeout of one HTTP request, ms.
    #[arg(long, default_value_t = 5_000)]
    pub http_timeout_ms: u64,
    /// HTTP requests in flight at most, over all bots.
    #[arg(long, default_value_t = 64)]
    pub max_inflight: usize,
}

/// Longest run allowed (a day).
const MAX_DURATION_SECS: u64 = 24 * 3600;

fn check(a: &SimulateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.create.is_some() || a.keys_file.is_some(),
        "give --create N --first-mt5 M, or --keys-file"
    );
    anyhow::ensure!(
        a.create
            .is_none_or(|n| (1..=setup::MAX_CREATE).contains(&n)),
        "--create must be between 1 and {}",
        setup::MAX_CREATE
    );
    anyhow::ensure!(
        (1..=3600).contains(&a.heartbeat_secs),
        "--heartbeat-secs must be between 1 and 3600"
    );
    anyhow::ensure!(
        (1..=3600).contains(&a.version_secs),
        "--version-secs must be between 1 and 3600"
    );
    anyhow::ensure!(
        (1..=MAX_DURATION_SECS).contains(&a.duration_secs),
        "--duration-secs must be between 1 and {MAX_DURATION_SECS}"
    );
    anyhow::ensure!(a.count != Some(0), "--count must be at least 1");
    anyhow::ensure!(
        (1..=20).contains(&a.max_attempts),
        "--max-attempts must be between 1 and 20"
    );
    anyhow::ensure!(
        (1..=60_000).contains(&a.http_timeout_ms),
        "--http-timeout-ms must be between 1 and 60000"
    );
    anyhow::ensure!(
        (1..=10_000).contains(&a.max_inflight),
        "--max-inflight must be between 1 and 10000"
    );
    anyhow::ensure!(
        a.drawdown_percent > Decimal::ZERO && a.drawdown_percent <= Decimal::ONE_HUNDRED,
        "--drawdown-percent must be above 0 and at most 100"
    );
    anyhow::ensure!(
        a.strategies.iter().all(|s| *s > 0),
        "--strategies must be positive ids"
    );
    anyhow::ensure!(a.balance >= Decimal::ZERO, "--balance must not be negative");
    Ok(())
}

/// Run the simulation and print its summary.
pub async fn run(config: &Config, args: SimulateArgs) -> anyhow::Result<()> {
    check(&args)?;
    let http = fetch::Http::new(
        &args.base_url,
        Duration::from_millis(args.http_timeout_ms),
        fetch::Retry {
            attempts: args.max_attempts,
            base: Duration::from_millis(args.retry_base_ms),
            cap: Duration::from_secs(10),
        },
        args.max_inflight,
    )?;
    let credentials = match (&args.keys_file, args.create, args.first_mt5) {
        (Some(path), _, _) => {
            let text = tokio::fs::read_to_string(path)
                .await
                .with_context(|| format!("--keys-file: reading {}", path.display()))?;
            setup::parse_keys(&text).with_context(|| format!("--keys-file {}", path.display()))?
        }
        (None, Some(n), Some(first)) => {
            let db = crate::db::connect(&config.database_url, 8).await?;
            let made = setup::create(&db, n, first, &args.currency, args.balance).await?;
            db.close().await;
            made
        }
        _ => anyhow::bail!("give --create N --first-mt5 M, or --keys-file"),
    };
    let stop = crate::shutdown::token();
    let bots_stop = stop.child_token();
    let redis = crate::roles::redis(config).await?;
    let keys = CacheKeys::new(&config.redis_key_namespace);
    let mut mailboxes = if args.push {
        let mt5s: Vec<i64> = credentials.iter().map(|c| c.mt5).collect();
        push::subscribe(&config.redis_url, &keys, &mt5s, bots_stop.clone())
            .await
            .context("subscribing to the bots' push channels (--push)")?
    } else {
        Default::default()
    };
    let started = Instant::now();
    let ctx = Arc::new(bot::Ctx {
        redis: redis.manager(),
        keys,
        http,
        heartbeat_every: Duration::from_secs(args.heartbeat_secs),
        version_every: Duration::from_secs(args.version_secs),
        max_heartbeats: args.count,
        drawdown: args
            .drawdown_at
            .map(|s| (started + Duration::from_secs(s), args.drawdown_percent)),
        cancel: bots_stop.clone(),
    });
    let bots = credentials.len();
    tracing::info!(bots, base_url = %args.base_url, "simulating {bots} bots for {} s", args.duration_secs);
    let mut set = JoinSet::new();
    for c in credentials {
        let span = tracing::info_span!("bot", mt5_account_id = c.mt5);
        let bot = bot::Bot::new(
            c.mt5,
            c.key,
            args.balance,
            &args.strategies,
            mailboxes.remove(&c.mt5),
        );
        set.spawn(tracing::Instrument::instrument(bot.run(ctx.clone()), span));
    }
    let total = join(
        &mut set,
        &bots_stop,
        Duration::from_secs(args.duration_secs),
        Duration::from_millis(args.http_timeout_ms) + Duration::from_secs(5),
    )
    .await;
    let summary = stats::Summary::new(
        bots,
        started.elapsed().as_millis() as u64,
        stop.is_cancelled(),
        total,
    );
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// Collect the bots' stats: stop them after `duration` (or on a signal), and abort any that
/// have not finished `grace` later.
async fn join(
    set: &mut JoinSet<stats::Stats>,
    stop: &tokio_util::sync::CancellationToken,
    duration: Duration,
    grace: Duration,
) -> stats::Stats {
    let mut total = stats::Stats::default();
    let mut collect = |joined: Result<stats::Stats, tokio::task::JoinError>| match joined {
        Ok(s) => total.merge(s),
        Err(e) => tracing::error!(error = %e, "a simulated bot failed"),
    };
    let deadline = Instant::now() + duration;
    // Bounded: each turn ends the wait or collects one bot (bots stop early with --count).
    for _ in 0..=set.len() {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            () = stop.cancelled() => break,
            joined = set.join_next() => match joined {
                Some(j) => collect(j),
                None => break,
            },
        }
    }
    stop.cancel();
    let hard_stop = Instant::now() + grace;
    for _ in 0..=set.len() {
        match tokio::time::timeout_at(hard_stop, set.join_next()).await {
            Ok(Some(j)) => collect(j),
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    left = set.len(),
                    "{} bots did not stop in time; aborting them",
                    set.len()
                );
                set.abort_all();
                break;
            }
        }
    }
    total
}
