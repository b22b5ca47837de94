//! `halol`: one binary, one subcommand per role.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "halol",
    version,
    about = "Halol Broker's background system: scheduler, workers and a thin web role."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP on $PORT: /healthz, /readyz, /metrics and the admin queue dashboard (/admin).
    Web,
    /// Consume job queues. Runs every queue unless --queues limits it; SIGTERM drains.
    Worker {
        /// Queues to consume, as `name[=concurrency],...` (default: all, at $WORKER_CONCURRENCY;
        /// or $WORKER_QUEUES). Example: `check_sl_tp_positions=4,update_position_prices=1`.
        #[arg(long)]
        queues: Option<String>,
    },
    /// Enqueue periodic jobs on their cron schedules. Safe to run several for availability:
    /// each tick is enqueued once.
    Scheduler,
    /// Apply database migrations (the Procfile's release phase).
    Migrate,
    /// Local development: create the database if missing, migrate, and run web, worker and
    /// scheduler in this one process.
    Dev,
    /// Measure the queue (no subcommand): enqueue rate (single and batched) and no-op
    /// processing rate of one worker, against $REDIS_URL under a throwaway key prefix; or the
    /// trading core (`sweep`, `revalue`) or the bot system (`bots`) in throwaway databases.
    Bench(Bench),
    /// Back office: create and list symbols.
    #[command(subcommand)]
    Symbol(halol::cli::SymbolCmd),
    /// Back office: create trading accounts.
    #[command(subcommand)]
    Account(halol::cli::AccountCmd),
    /// Back office: open, modify, close, get and list positions.
    #[command(subcommand)]
    Position(halol::cli::PositionCmd),
    /// Back office: write or read the price cache `price:{SYMBOL}`.
    #[command(subcommand)]
    Price(halol::cli::PriceCmd),
    /// Back office: put a position in or out of calm mode.
    #[command(subcommand)]
    Calm(halol::cli::CalmCmd),
    /// Back office: the bot strategy catalogue.
    #[command(subcommand)]
    Strategy(halol::cli::StrategyCmd),
    /// Back office: create and revoke bot API keys.
    #[command(subcommand)]
    BotKey(halol::cli::BotKeyCmd),
    /// Central bot commands: pause-all, resume-all, emergency-stop, clear-emergency.
    Bots(halol::cli::BotsCmd),
    /// Simulated MT5 bots for tests and load: heartbeats, server-heartbeat checks, version
    /// checks and conditional config fetches against $REDIS_URL and a running web role.
    SimulateBots(halol::bots::simulate::SimulateArgs),
}

/// `halol bench` alone keeps meaning the queue benchmark.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct Bench {
    #[command(subcommand)]
    suite: Option<BenchSuite>,
    #[command(flatten)]
    queue: halol::bench::BenchArgs,
}

#[derive(Subcommand)]
enum BenchSuite {
    #[command(flatten)]
    Trading(halol::bench_trading::Suite),
    /// The bot system: REST req/s and p99 (through `halol web` and oha), change-to-visible
    /// latency, and the heartbeat pass over many bots, in a throwaway database.
    Bots(halol::bench_bots::BenchBotsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    halol::telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("halol: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("halol: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    let config = halol::config::Config::from_env()?;
    use halol::roles;
    match command {
        Command::Web => roles::web(&config, halol::shutdown::signal()).await,
        Command::Worker { queues } => {
            roles::worker(&config, queues, halol::shutdown::signal()).await
        }
        Command::Scheduler => roles::scheduler(&config, halol::shutdown::token()).await,
        Command::Migrate => roles::migrate(&config).await,
        Command::Dev => roles::dev(&config).await,
        Command::Bench(Bench { suite: None, queue }) => halol::bench::run(&config, queue).await,
        Command::Bench(Bench {
            suite: Some(suite), ..
        }) => match suite {
            BenchSuite::Trading(suite) => halol::bench_trading::run(&config, suite).await,
            BenchSuite::Bots(args) => halol::bench_bots::run(&config, args).await,
        },
        Command::Symbol(c) => halol::cli::run(&config, halol::cli::Admin::Symbol(c)).await,
        Command::Account(c) => halol::cli::run(&config, halol::cli::Admin::Account(c)).await,
        Command::Position(c) => halol::cli::run(&config, halol::cli::Admin::Position(c)).await,
        Command::Price(c) => halol::cli::run(&config, halol::cli::Admin::Price(c)).await,
        Command::Calm(c) => halol::cli::run(&config, halol::cli::Admin::Calm(c)).await,
        Command::Strategy(c) => halol::cli::run(&config, halol::cli::Admin::Strategy(c)).await,
        Command::BotKey(c) => halol::cli::run(&config, halol::cli::Admin::BotKey(c)).await,
        Command::Bots(c) => halol::cli::run(&config, halol::cli::Admin::Bots(c)).await,
        Command::SimulateBots(args) => halol::bots::simulate::run(&config, args).await,
    }
}
