//! `update_position_prices`: write the current bid/ask and unrealised PnL of every open position
//! from the price cache, one set-based `UPDATE` per symbol. Only `status = 'open'` rows are
//! touched (a row closed meanwhile is re-checked by PostgreSQL and left alone), never SL/TP or
//! status; a symbol without a fresh quote is skipped and keeps its last values; a missing
//! conversion price writes a NULL PnL with the reason, never 0. Rows already valued at this
//! quote are not rewritten.

use std::{collections::HashMap, time::Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{
    SymbolInfo, Trading, TradingError, close, currency_digits, is_retryable, money, prices,
    rates::Rates,
};

/// What one revaluation pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Revaluation {
    /// Positions rewritten.
    pub updated: u64,
    /// Symbols revalued.
    pub symbols: usize,
    /// Symbols skipped, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Closes whose PnL waited for a conversion price, booked by this pass.
    pub booked: usize,
}

/// The per-symbol statement. `$1` symbol, `$2` bid, `$3` ask, `$4` quote time, `$5` now, then
/// per account currency: `$6` code, `$7` rate (NULL = unknown), `$8` money digits, `$9` note.
pub const REVALUE_SQL: &str = "
    UPDATE positions p
    SET current_bid = $2, current_ask = $3, price_ts = $4, revalued_at = $5,
        unrealised_pnl = round(
            (CASE WHEN p.side = 'buy' THEN $2 - p.open_price ELSE p.open_price - $3 END)
            * p.volume * p.contract_size * r.rate, r.digits),
        unrealised_pnl_note = r.note
    FROM unnest($6::text[], $7::numeric[], $8::int[], $9::text[]) AS r(currency, rate, digits, note)
    WHERE p.symbol = $1 AND p.status = 'open' AND p.account_currency = r.currency
      AND p.opened_at < $4
      AND (p.price_ts IS DISTINCT FROM $4 OR p.unrealised_pnl_note IS DISTINCT FROM r.note
           OR (p.unrealised_pnl IS NULL) <> (r.rate IS NULL))";

/// Revalue one symbol at `quote`.
pub async fn revalue_symbol(
    db: &sqlx::PgPool,
    symbol: &SymbolInfo,
    quote: &prices::Quote,
    currencies: &[String],
    rates: &Rates,
    digits: &HashMap<String, u32>,
    now: DateTime<Utc>,
) -> sqlx::Result<u64> {
    let mut codes = Vec::with_capacity(currencies.len());
    let mut rate_col = Vec::with_capacity(currencies.len());
    let mut digit_col = Vec::with_capacity(currencies.len());
    let mut notes = Vec::with_capacity(currencies.len());
    for c in currencies {
        let rate = rates.get(&symbol.quote_currency, c);
        codes.push(c.clone());
        digit_col.push(digits.get(c).copied().unwrap_or(2) as i32);
        notes.push(rate.as_ref().err().cloned());
        rate_col.push(rate.ok());
    }
    let bid = money::round_price(quote.bid, symbol.dp());
    let ask = money::round_price(quote.ask, symbol.dp());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = sqlx::query(REVALUE_SQL)
            .bind(&symbol.symbol)
            .bind(bid)
            .bind(ask)
            .bind(quote.timestamp)
            .bind(now)
            .bind(&codes)
            .bind(&rate_col)
            .bind(&digit_col)
            .bind(&notes)
            .execute(db)
            .await;
        match result {
            Ok(done) => return Ok(done.rows_affected()),
            Err(e) if attempt < 4 && is_retryable(&e) => {
                tracing::warn!(symbol = %symbol.symbol, attempt, "revaluation retried: {e}");
            }
            Err(e) => return Err(e),
        }
    }
}

/// Revalue every symbol at `now`, book closes that waited for a conversion price, and refresh
/// the blurred PnL of positions in calm mode.
pub async fn revalue_all(t: &Trading, now: DateTime<Utc>) -> Result<Revaluation, TradingError> {
    let started = Instant::now();
    let symbols = super::symbols(&t.db).await?;
    let currencies = super::rates::account_currencies(&t.db).await?;
    let digits = currency_digits(&t.db).await?;
    let mut conn = t.redis.manager();
    let names: Vec<&str> = symbols.iter().map(|s| s.symbol.as_str()).collect();
    let quotes = prices::read_many(&mut conn, &t.keys, &names).await?;
    let mut pairs: Vec<(String, String)> = Vec::new();
    for s in &symbols {
        for c in &currencies {
            let pair = (s.quote_currency.clone(), c.clone());
            if !pairs.contains(&pair) {
                pairs.push(pair);
            }
        }
    }
    let rates = Rates::load(&mut conn, &t.keys, &pairs, now, t.price_max_age).await?;

    let mut report = Revaluation::default();
    for symbol in &symbols {
        let quote = match quotes.get(&symbol.symbol) {
            Some(Ok(q)) => q.check_fresh(now, t.price_max_age).map(|()| q),
            Some(Err(e)) => Err(e.clone()),
            None => Err(prices::Unusable::Missing),
        };
        let quote = match quote {
            Ok(q) => q,
            Err(why) => {
                metrics::counter!("halol_revaluation_symbols_skipped_total", "reason" => why.label())
                    .increment(1);
                report
                    .skipped
                    .push((symbol.symbol.clone(), why.to_string()));
                continue;
            }
        };
        report.updated +=
            revalue_symbol(&t.db, symbol, quote, &currencies, &rates, &digits, now).await?;
        report.symbols += 1;
    }
    if !report.skipped.is_empty() {
        tracing::warn!(
            skipped = report.skipped.len(),
            "revaluation skipped {} symbol(s) without a fresh price: {:?}",
            report.skipped.len(),
            report.skipped.iter().take(10).collect::<Vec<_>>()
        );
    }
    report.booked = close::book_pending(&t.db, &rates, &digits, 10_000).await?;
    super::calm::refresh(t, now).await;
    metrics::histogram!("halol_revaluation_seconds").record(started.elapsed().as_secs_f64());
    Ok(report)
}
