//! The SL/TP sweep of one symbol: read its quote, find the triggered positions with four index
//! range scans (cost grows with the positions that trigger, not with the open ones), and close
//! them in one transaction per batch.

use std::time::Instant;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use super::{SymbolInfo, Trading, TradingError, close, money, prices, rates::Rates};

/// Most positions closed per transaction.
const BATCH: i64 = 2_000;

/// What one symbol's sweep did.
#[derive(Debug, Clone, Serialize)]
pub struct SymbolSweep {
    /// The symbol.
    pub symbol: String,
    /// Why it was not checked, if it was not.
    pub skipped: Option<String>,
    /// Positions the index scans returned.
    pub candidates: usize,
    /// Positions closed.
    pub closed: Vec<close::Closed>,
}

/// The four index range scans (one per partial index): `$1` symbol, `$2` bid, `$3` ask, `$4`
/// quote time, `$5` limit per scan.
pub const CANDIDATES_SQL: &str = "(SELECT id FROM positions
           WHERE symbol = $1 AND status = 'open' AND side = 'buy'
             AND stop_loss IS NOT NULL AND stop_loss >= $2 AND opened_at < $4 LIMIT $5)
         UNION ALL
         (SELECT id FROM positions
           WHERE symbol = $1 AND status = 'open' AND side = 'buy'
             AND take_profit IS NOT NULL AND take_profit <= $2 AND opened_at < $4 LIMIT $5)
         UNION ALL
         (SELECT id FROM positions
           WHERE symbol = $1 AND status = 'open' AND side = 'sell'
             AND stop_loss IS NOT NULL AND stop_loss <= $3 AND opened_at < $4 LIMIT $5)
         UNION ALL
         (SELECT id FROM positions
           WHERE symbol = $1 AND status = 'open' AND side = 'sell'
             AND take_profit IS NOT NULL AND take_profit >= $3 AND opened_at < $4 LIMIT $5)";

/// The index range scans: the positions of `symbol` the quote triggers, opened before it.
/// Candidates only: the close re-checks each against its locked row.
pub async fn candidates(
    db: &sqlx::PgPool,
    symbol: &str,
    bid: Decimal,
    ask: Decimal,
    quote_ts: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<i64>> {
    let mut ids: Vec<i64> = sqlx::query_scalar(CANDIDATES_SQL)
        .bind(symbol)
        .bind(bid)
        .bind(ask)
        .bind(quote_ts)
        .bind(limit)
        .fetch_all(db)
        .await?;
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Sweep one symbol at `now`.
pub async fn sweep_symbol(
    t: &Trading,
    symbol: &SymbolInfo,
    now: DateTime<Utc>,
) -> Result<SymbolSweep, TradingError> {
    let started = Instant::now();
    let mut report = SymbolSweep {
        symbol: symbol.symbol.clone(),
        skipped: None,
        candidates: 0,
        closed: Vec::new(),
    };
    let mut conn = t.redis.manager();
    let quote = prices::read(&mut conn, &t.keys, &symbol.symbol)
        .await?
        .and_then(|q| q.check_fresh(now, t.price_max_age).map(|()| q));
    let quote = match quote {
        Ok(q) => q,
        Err(why) => {
            if !matches!(why, prices::Unusable::Malformed(_)) {
                tracing::warn!(symbol = %symbol.symbol, reason = why.label(), "SL/TP check of {} skipped: {why}", symbol.symbol);
            }
            metrics::counter!("halol_sltp_symbols_skipped_total", "reason" => why.label())
                .increment(1);
            report.skipped = Some(why.to_string());
            return Ok(report);
        }
    };
    let bid = money::round_price(quote.bid, symbol.dp());
    let ask = money::round_price(quote.ask, symbol.dp());
    let mut for_close: Option<(Rates, _)> = None;
    // Bounded: each round closes or re-checks at most BATCH × 4 rows; ten rounds per job.
    for _ in 0..10 {
        let ids = candidates(&t.db, &symbol.symbol, bid, ask, quote.timestamp, BATCH).await?;
        report.candidates += ids.len();
        if ids.is_empty() {
            break;
        }
        if for_close.is_none() {
            for_close = Some(super::rates::for_close(t, &symbol.quote_currency, now).await?);
        }
        let Some((rates, digits)) = &for_close else {
            break;
        };
        let closed = close::close_batch(
            &t.db,
            symbol,
            &quote,
            &ids,
            close::Mode::Triggered,
            "sweep",
            rates,
            digits,
        )
        .await?;
        let full = ids.len() as i64 >= BATCH;
        for c in &closed {
            metrics::counter!("halol_positions_closed_total", "reason" => c.reason.as_str())
                .increment(1);
            tracing::info!(
                position_id = c.position_id,
                symbol = %symbol.symbol,
                reason = c.reason.as_str(),
                close_price = %c.close_price,
                "position {} closed by {} at {}",
                c.position_id,
                c.reason.as_str(),
                c.close_price
            );
        }
        let progressed = !closed.is_empty();
        report.closed.extend(closed);
        if !full || !progressed {
            break;
        }
    }
    if !report.closed.is_empty() {
        let ids: Vec<i64> = report.closed.iter().map(|c| c.position_id).collect();
        super::calm::forget(t, &ids).await;
    }
    metrics::histogram!("halol_sltp_symbol_seconds").record(started.elapsed().as_secs_f64());
    Ok(report)
}
