//! halol: the background system of Halol Broker (scheduler, workers and a thin web role).

pub mod audit;
pub mod bench;
pub mod bench_bots;
pub mod bench_trading;
pub mod bots;
pub mod cli;
pub mod config;
pub mod db;
pub mod fleet_metrics;
pub mod queue;
pub mod redis_pool;
pub mod roles;
pub mod scheduler;
pub mod shutdown;
pub mod telemetry;
pub mod trading;
pub mod web;
pub mod worker;

/// The database migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
