//! `halol bench sweep` and `halol bench revalue`: the trading core against generated positions in
//! a dedicated database (dropped and recreated by each run; dropped again at the end unless
//! `--keep-database`), with quotes under a throwaway Redis namespace deleted afterwards. Every
//! figure is the median of `--rounds`; each baseline runs in the same process, on the same rows.
//!
//! - sweep: one SL/TP pass over all symbols through `sweep::sweep_symbol` (each symbol reads its
//!   own quote), sequentially and `--concurrency` symbols at once (as the workers run the per-symbol
//!   jobs), at each of `--sizes` open positions, with none and with `--triggering` triggering.
//!   Baseline: the same trigger predicate for every symbol in one statement with index scans
//!   disabled, i.e. a sequential scan of the table.
//! - revalue: `revalue::revalue_all` over `--positions` open positions, against bare `UPDATE`s
//!   writing only the bid and ask: one per symbol (the same shape, hence the ratio) and one over
//!   all open rows. `VACUUM ANALYZE` and `CHECKPOINT` precede every measured statement.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use futures::{StreamExt as _, TryStreamExt as _};
use rust_decimal::Decimal;
use sqlx::{Connection as _, PgPool, postgres::PgConnectOptions};

use crate::{
    config::Config,
    db,
    redis_pool::RedisPool,
    trading::{CacheKeys, SymbolInfo, Trading, prices, revalue, sweep},
};

const SYMBOLS: i64 = 50;
const ACCOUNTS: i64 = 10_000;

/// The trading-core benchmarks.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Suite {
    /// SL/TP sweep over all symbols at several table sizes, against a full scan.
    Sweep(SweepArgs),
    /// Revaluation of every open position, against bare UPDATEs of the same rows.
    Revalue(RevalueArgs),
}

/// Options shared by the trading benchmarks.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Database to DROP, recreate and fill (default: $DATABASE_URL's server, database
    /// `halol_bench`). Its name must contain `bench`.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Leave the database in place afterwards (for EXPLAIN).
    #[arg(long)]
    pub keep_database: bool,
}

/// Options of `halol bench sweep`.
#[derive(Debug, Clone, clap::Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub common: Common,
    /// Open positions, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub sizes: Vec<i64>,
    /// Positions made to trigger in the triggering case.
    #[arg(long, default_value_t = 1_000)]
    pub triggering: i64,
    /// Symbols swept at once (WORKER_CONCURRENCY's default).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

/// Options of `halol bench revalue`.
#[derive(Debug, Clone, clap::Args)]
pub struct RevalueArgs {
    #[command(flatten)]
    pub common: Common,
    /// Open positions.
    #[arg(long, default_value_t = 1_000_000)]
    pub positions: i64,
}

/// Run one suite and print its table.
pub async fn run(config: &Config, suite: Suite) -> anyhow::Result<()> {
    let (common, pool_size) = match &suite {
        Suite::Sweep(a) => (a.common.clone(), a.concurrency as u32 + 2),
        Suite::Revalue(a) => (a.common.clone(), 2),
    };
    anyhow::ensure!(common.rounds > 0, "--rounds must be positive");
    let url = bench_url(config, &common)?;
    recreate_database(&url).await?;
    let pool = db::connect(&url, pool_size).await?;
    db::migrate(&pool).await?;
    seed(&pool).await?;
    let t = Trading {
        db: pool.clone(),
        redis: RedisPool::connect(&config.redis_url, 4).await?,
        keys: CacheKeys::new(&format!("bench-{}:", ulid::Ulid::new())),
        price_max_age: config.price_max_age,
    };
    let symbols = crate::trading::symbols(&pool).await?;
    let result = match suite {
        Suite::Sweep(a) => run_sweep(&t, &symbols, &a).await,
        Suite::Revalue(a) => run_revalue(&t, &symbols, &a).await,
    };
    forget_quotes(&t, &symbols).await?;
    pool.close().await;
    if !common.keep_database {
        drop_database(&url).await?;
    }
    result
}

fn bench_url(config: &Config, common: &Common) -> anyhow::Result<String> {
    let url = match &common.database_url {
        Some(u) => u.clone(),
        None => {
            let mut url = url::Url::parse(&config.database_url).context("DATABASE_URL")?;
            url.set_path("/halol_bench");
            url.to_string()
        }
    };
    let options: PgConnectOptions = url.parse().context("--database-url")?;
    anyhow::ensure!(
        options.get_database().is_some_and(|d| d.contains("bench")),
        "the bench drops its database, so its name must contain \"bench\""
    );
    Ok(url)
}

async fn drop_database(url: &str) -> anyhow::Result<()> {
    let options: PgConnectOptions = url.parse()?;
    let name = options
        .get_database()
        .unwrap_or_default()
        .replace('"', "\"\"");
    let mut admin = sqlx::PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .context("connecting to the `postgres` database to drop the bench database")?;
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .with_context(|| format!("dropping database {name}"))?;
    Ok(())
}

async fn recreate_database(url: &str) -> anyhow::Result<()> {
    drop_database(url).await?;
    db::ensure_database(url).await
}

/// 50 symbols `SYM00`..`SYM49` (5 digits, contract 100000, USD) and 10k USD accounts.
async fn seed(db: &PgPool) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO symbols (symbol, digits, contract_size, quote_currency)
         SELECT 'SYM' || lpad(s::text, 2, '0'), 5, 100000, 'USD' FROM generate_series(0, $1 - 1) s",
    )
    .bind(SYMBOLS)
    .execute(db)
    .await?;
    sqlx::query(
        "INSERT INTO trading_accounts (mt5_account_id, currency)
         SELECT 1000000 + a, 'USD' FROM generate_series(1, $1) a",
    )
    .bind(ACCOUNTS)
    .execute(db)
    .await?;
    Ok(())
}

/// The mid of symbol `s` (`SYM07` → 1.14): the bid of every quote the sweep uses.
fn base_price(symbol: &str) -> Decimal {
    let s: i64 = symbol[3..].parse().unwrap_or(0);
    Decimal::ONE + Decimal::new(2 * s, 2)
}

/// Positions number `first .. first + count`: symbol `g % 50`, alternately buy and sell, opened
/// 1 to 31 days ago within ±0.5% of the mid; SL and TP (each NULL on a tenth of the rows) 10% to
/// 50% away from it on the right side, so no quote the bench writes triggers them.
async fn insert_positions(db: &PgPool, first: i64, count: i64) -> sqlx::Result<()> {
    sqlx::query(
        "WITH a AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS k FROM trading_accounts)
         INSERT INTO positions (account_id, account_currency, symbol, side, volume, contract_size,
                                open_price, opened_at, stop_loss, take_profit)
         SELECT a.id, 'USD', 'SYM' || lpad((g % $3)::text, 2, '0'), x.side, 0.10, 100000,
                round(x.p * (0.995 + 0.01 * random()::numeric), 5),
                now() - interval '1 day' - random() * interval '30 days',
                CASE WHEN g % 10 = 0 THEN NULL
                     WHEN x.side = 'buy' THEN round(x.p * (0.5 + 0.4 * random()::numeric), 5)
                     ELSE round(x.p * (1.1 + 0.4 * random()::numeric), 5) END,
                CASE WHEN g % 10 = 1 THEN NULL
                     WHEN x.side = 'buy' THEN round(x.p * (1.1 + 0.4 * random()::numeric), 5)
                     ELSE round(x.p * (0.5 + 0.4 * random()::numeric), 5) END
         FROM generate_series($1::bigint, $1::bigint + $2::bigint - 1) AS g
         CROSS JOIN LATERAL (SELECT CASE WHEN (g / $3) % 2 = 0 THEN 'buy' ELSE 'sell' END AS side,
                                    1 + (g % $3) * 0.02 AS p) AS x
         JOIN a ON a.k = g % $4",
    )
    .bind(first)
    .bind(count)
    .bind(SYMBOLS)
    .bind(ACCOUNTS)
    .execute(db)
    .await?;
    Ok(())
}

/// Move the SL of `count` random open positions 5 pips past the mid, so the next quote triggers
/// them (a buy's SL above the bid, a sell's below the ask; the TP stays on its side).
async fn make_triggering(db: &PgPool, count: i64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE positions p
         SET stop_loss = CASE WHEN p.side = 'buy' THEN x.p + 0.0005 ELSE x.p - 0.0004 END
         FROM (SELECT id, 1 + substr(symbol, 4)::int * 0.02 AS p FROM positions
               WHERE status = 'open' ORDER BY random() LIMIT $1) AS x
         WHERE p.id = x.id",
    )
    .bind(count)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Fair starting line for a measured statement: no dead rows, fresh statistics, no checkpoint
/// pending from the previous statement's writes.
async fn settle(db: &PgPool) -> sqlx::Result<()> {
    sqlx::raw_sql("VACUUM ANALYZE positions")
        .execute(db)
        .await?;
    sqlx::raw_sql("CHECKPOINT").execute(db).await?;
    Ok(())
}

/// The quotes of every symbol (bid = mid + `shift` × 0.00001, spread 1 pip), stamped now.
fn quotes(symbols: &[SymbolInfo], shift: i64) -> Vec<(String, Decimal, Decimal)> {
    symbols
        .iter()
        .map(|s| {
            let bid = base_price(&s.symbol) + Decimal::new(shift, 5);
            (s.symbol.clone(), bid, bid + Decimal::new(10, 5))
        })
        .collect()
}

async fn write_quotes(t: &Trading, quotes: &[(String, Decimal, Decimal)]) -> anyhow::Result<()> {
    let mut conn = t.redis.manager();
    let timestamp = Utc::now();
    for (symbol, bid, ask) in quotes {
        let quote = prices::NewQuote {
            bid: *bid,
            ask: *ask,
            timestamp,
            seq: None,
        };
        prices::write(&mut conn, &t.keys, symbol, &quote).await?;
    }
    Ok(())
}

async fn forget_quotes(t: &Trading, symbols: &[SymbolInfo]) -> anyhow::Result<()> {
    let mut conn = t.redis.manager();
    let mut pipe = redis::pipe();
    for s in symbols {
        pipe.del(t.keys.price(&s.symbol)).ignore();
    }
    pipe.del(t.keys.calm_index()).ignore();
    pipe.query_async::<()>(&mut conn).await?;
    Ok(())
}

/// One sweep of every symbol at `concurrency`; returns its duration and the positions closed.
async fn sweep_all(
    t: &Trading,
    symbols: &[SymbolInfo],
    concurrency: usize,
) -> anyhow::Result<(Duration, usize)> {
    let now = Utc::now();
    let started = Instant::now();
    let reports: Vec<sweep::SymbolSweep> = futures::stream::iter(symbols)
        .map(|s| sweep::sweep_symbol(t, s, now))
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    let elapsed = started.elapsed();
    if let Some(r) = reports.iter().find(|r| r.skipped.is_some()) {
        anyhow::bail!("sweep skipped {}: {:?}", r.symbol, r.skipped);
    }
    Ok((elapsed, reports.iter().map(|r| r.closed.len()).sum()))
}

/// The baseline: the sweep's predicate for every symbol in one statement, index scans off.
async fn full_scan(
    db: &PgPool,
    quotes: &[(String, Decimal, Decimal)],
) -> anyhow::Result<(Duration, usize)> {
    let (names, bids, asks): (Vec<String>, Vec<Decimal>, Vec<Decimal>) = quotes
        .iter()
        .cloned()
        .fold(Default::default(), |mut acc, (s, b, a)| {
            acc.0.push(s);
            acc.1.push(b);
            acc.2.push(a);
            acc
        });
    let started = Instant::now();
    let mut tx = db.begin().await?;
    sqlx::raw_sql(
        "SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off;
         SET LOCAL enable_indexonlyscan = off",
    )
    .execute(&mut *tx)
    .await?;
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT p.id FROM positions p
         JOIN unnest($1::text[], $2::numeric[], $3::numeric[]) AS q(symbol, bid, ask)
           ON p.symbol = q.symbol
         WHERE p.status = 'open' AND p.opened_at < $4
           AND ((p.side = 'buy' AND (p.stop_loss >= q.bid OR p.take_profit <= q.bid))
             OR (p.side = 'sell' AND (p.stop_loss <= q.ask OR p.take_profit >= q.ask)))",
    )
    .bind(&names)
    .bind(&bids)
    .bind(&asks)
    .bind(Utc::now())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((started.elapsed(), ids.len()))
}

#[derive(Default)]
struct SweepRow {
    open: i64,
    sequential: Vec<f64>,
    concurrent: Vec<f64>,
    scan: Vec<f64>,
    triggered: Vec<f64>,
    triggered_scan: Vec<f64>,
}

async fn run_sweep(t: &Trading, symbols: &[SymbolInfo], a: &SweepArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.concurrency > 0 && a.triggering > 0 && a.sizes.iter().all(|n| *n >= a.triggering),
        "--concurrency and --triggering must be positive and every size at least --triggering"
    );
    let at_rest = quotes(symbols, 0);
    let mut rows = Vec::new();
    for &n in &a.sizes {
        sqlx::raw_sql("TRUNCATE position_closes, positions RESTART IDENTITY")
            .execute(&t.db)
            .await?;
        let started = Instant::now();
        insert_positions(&t.db, 0, n).await?;
        tracing::info!(
            positions = n,
            "generated {n} positions in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        settle(&t.db).await?;
        let mut row = SweepRow {
            open: n,
            ..SweepRow::default()
        };
        for _ in 0..a.common.rounds {
            write_quotes(t, &at_rest).await?;
            let (seq, closed_seq) = sweep_all(t, symbols, 1).await?;
            let (conc, closed_conc) = sweep_all(t, symbols, a.concurrency).await?;
            let (scan, found) = full_scan(&t.db, &at_rest).await?;
            anyhow::ensure!(
                closed_seq + closed_conc + found == 0,
                "a position triggered at rest"
            );
            row.sequential.push(ms(seq));
            row.concurrent.push(ms(conc));
            row.scan.push(ms(scan));
        }
        for round in 0..a.common.rounds as i64 {
            let moved = make_triggering(&t.db, a.triggering).await?;
            settle(&t.db).await?;
            write_quotes(t, &at_rest).await?;
            let (scan, found) = full_scan(&t.db, &at_rest).await?;
            let (took, closed) = sweep_all(t, symbols, a.concurrency).await?;
            anyhow::ensure!(
                found as u64 == moved && closed as u64 == moved,
                "{moved} positions moved to trigger, the full scan found {found}, the sweep closed {closed}"
            );
            row.triggered_scan.push(ms(scan));
            row.triggered.push(ms(took));
            // Keep `n` open: replace the closed positions with new ones.
            insert_positions(&t.db, n + round * a.triggering, a.triggering).await?;
        }
        tracing::info!(positions = n, "sweep at {n} open positions measured");
        rows.push(row);
    }
    print_sweep(&rows, a);
    Ok(())
}

fn print_sweep(rows: &[SweepRow], a: &SweepArgs) {
    println!(
        "\nSL/TP sweep of {SYMBOLS} symbols, median of {} rounds (ms); full scan = the same predicate in one statement, index scans off:\n",
        a.common.rounds
    );
    println!(
        "| open positions | sweep, none triggering, sequential | sweep, none triggering, {c} at once | full scan, none triggering | full scan ÷ sweep ({c}) | sweep, {t} triggering, {c} at once | full scan, {t} triggering | closes/s |",
        c = a.concurrency,
        t = a.triggering
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let (seq, conc, scan) = (
            median(&r.sequential),
            median(&r.concurrent),
            median(&r.scan),
        );
        let (trig, trig_scan) = (median(&r.triggered), median(&r.triggered_scan));
        println!(
            "| {} | {seq:.1} | {conc:.1} | {scan:.1} | {:.1}× | {trig:.1} | {trig_scan:.1} | {:.0} |",
            r.open,
            scan / conc,
            a.triggering as f64 / (trig / 1_000.0)
        );
    }
    for r in rows {
        println!(
            "rounds at {}: sequential {:?}, concurrent {:?}, scan {:?}, triggered {:?}, triggered scan {:?}",
            r.open,
            rounded(&r.sequential),
            rounded(&r.concurrent),
            rounded(&r.scan),
            rounded(&r.triggered),
            rounded(&r.triggered_scan)
        );
    }
}

/// The bare baselines: bid and ask only, per symbol or in one statement over every open row.
async fn bare_update(
    db: &PgPool,
    quotes: &[(String, Decimal, Decimal)],
    per_symbol: bool,
) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let mut rows = 0;
    if per_symbol {
        for (symbol, bid, ask) in quotes {
            rows += sqlx::query(
                "UPDATE positions SET current_bid = $2, current_ask = $3
                 WHERE symbol = $1 AND status = 'open'",
            )
            .bind(symbol)
            .bind(bid)
            .bind(ask)
            .execute(db)
            .await?
            .rows_affected();
        }
    } else {
        let names: Vec<&str> = quotes.iter().map(|q| q.0.as_str()).collect();
        let bids: Vec<Decimal> = quotes.iter().map(|q| q.1).collect();
        let asks: Vec<Decimal> = quotes.iter().map(|q| q.2).collect();
        rows = sqlx::query(
            "UPDATE positions p SET current_bid = q.bid, current_ask = q.ask
             FROM unnest($1::text[], $2::numeric[], $3::numeric[]) AS q(symbol, bid, ask)
             WHERE p.symbol = q.symbol AND p.status = 'open'",
        )
        .bind(&names)
        .bind(&bids)
        .bind(&asks)
        .execute(db)
        .await?
        .rows_affected();
    }
    Ok((started.elapsed(), rows))
}

/// `revalue_all` at a freshly written quote (new timestamp, so no row is skipped).
async fn revalue_round(
    t: &Trading,
    quotes: &[(String, Decimal, Decimal)],
) -> anyhow::Result<(Duration, u64)> {
    write_quotes(t, quotes).await?;
    let started = Instant::now();
    let report = revalue::revalue_all(t, Utc::now()).await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        report.skipped.is_empty(),
        "revaluation skipped {:?}",
        report.skipped
    );
    Ok((elapsed, report.updated))
}

async fn run_revalue(t: &Trading, symbols: &[SymbolInfo], a: &RevalueArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.positions > 0, "--positions must be positive");
    let n = a.positions;
    let started = Instant::now();
    insert_positions(&t.db, 0, n).await?;
    tracing::info!(
        positions = n,
        "generated {n} positions in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Warm-up, unmeasured: the first revaluation fills columns that were NULL (wider rows).
    settle(&t.db).await?;
    revalue_round(t, &quotes(symbols, 1)).await?;
    settle(&t.db).await?;
    bare_update(&t.db, &quotes(symbols, 2), true).await?;
    let (mut lib, mut per, mut one) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=a.common.rounds as i64 {
        let shift = 3 * round;
        settle(&t.db).await?;
        let (took, rows) = revalue_round(t, &quotes(symbols, shift)).await?;
        anyhow::ensure!(rows == n as u64, "revaluation updated {rows} of {n}");
        lib.push(ms(took));
        settle(&t.db).await?;
        let (took, rows) = bare_update(&t.db, &quotes(symbols, shift + 1), true).await?;
        anyhow::ensure!(
            rows == n as u64,
            "bare per-symbol UPDATE updated {rows} of {n}"
        );
        per.push(ms(took));
        settle(&t.db).await?;
        let (took, rows) = bare_update(&t.db, &quotes(symbols, shift + 2), false).await?;
        anyhow::ensure!(rows == n as u64, "bare single UPDATE updated {rows} of {n}");
        one.push(ms(took));
        tracing::info!(round, "revaluation round {round} measured");
    }
    let base = median(&per);
    println!(
        "\nRevaluation of {n} open positions ({SYMBOLS} symbols), median of {} rounds (ms):\n",
        a.common.rounds
    );
    println!("| statement | rounds (ms) | median (ms) | rows/s | ÷ bare per-symbol |");
    println!("|---|---|---:|---:|---:|");
    for (name, v) in [
        ("`revalue_all` (REVALUE_SQL per symbol)", &lib),
        ("bare UPDATE bid/ask, per symbol", &per),
        ("bare UPDATE bid/ask, one statement", &one),
    ] {
        let m = median(v);
        println!(
            "| {name} | {:?} | {m:.0} | {:.0} | {:.2}× |",
            rounded(v),
            n as f64 / (m / 1_000.0),
            m / base
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rounded(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| (x * 10.0).round() / 10.0).collect()
}
