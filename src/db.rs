//! PostgreSQL: the source of truth.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::{
    ConnectOptions, Connection, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// A pool of at most `size` connections to `url`.
pub async fn connect(url: &str, size: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url
        .parse()
        .context("DATABASE_URL is not a valid PostgreSQL URL")?;
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL (DATABASE_URL)")
}

/// Create the database `url` names if it does not exist (used by `dev`).
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let options: PgConnectOptions = url
        .parse()
        .context("DATABASE_URL is not a valid PostgreSQL URL")?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .context("connecting to PostgreSQL's `postgres` database to create the app database")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating database {name}"))?;
        tracing::info!(database = %name, "created database {name}");
    }
    let _ = options.disable_statement_logging();
    Ok(())
}

/// Apply pending migrations.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    crate::MIGRATOR
        .run(pool)
        .await
        .context("running migrations")?;
    Ok(())
}
