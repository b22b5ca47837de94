//! Closing positions: one transaction per batch that locks the candidate rows, re-checks status
//! and trigger against the locked (current) row, closes them, writes the close records and books
//! the realised PnL into the account balances. Zero rows closed means someone else won or the
//! user moved the level: nothing happens. The close record's primary key makes a second close
//! of the same position impossible even if this logic were wrong.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;

use super::{CloseReason, Side, SymbolInfo, is_retryable, money, prices::Quote, rates::Rates};

/// How a batch decides what to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Close only positions the quote triggers (SL/TP), opened before the quote.
    Triggered,
    /// Close unconditionally (an operator's manual close).
    Manual,
}

/// A position this batch closed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Closed {
    /// Position id.
    pub position_id: i64,
    /// Account id.
    pub account_id: i64,
    /// `sl`, `tp` or `manual`.
    pub reason: CloseReason,
    /// Market price it closed at.
    #[serde(with = "rust_decimal::serde::str")]
    pub close_price: Decimal,
    /// PnL in the account currency, if a conversion price was known.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub realised_pnl: Option<Decimal>,
}

#[derive(sqlx::FromRow)]
struct Locked {
    id: i64,
    account_id: i64,
    account_currency: String,
    side: String,
    volume: Decimal,
    contract_size: Decimal,
    open_price: Decimal,
    stop_loss: Option<Decimal>,
    take_profit: Option<Decimal>,
    opened_at: DateTime<Utc>,
}

/// Close `ids` (positions of `symbol`) at `quote`. Retries a deadlocked transaction a few times.
#[allow(clippy::too_many_arguments)]
pub async fn close_batch(
    db: &PgPool,
    symbol: &SymbolInfo,
    quote: &Quote,
    ids: &[i64],
    mode: Mode,
    closed_by: &str,
    rates: &Rates,
    money_digits: &HashMap<String, u32>,
) -> sqlx::Result<Vec<Closed>> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_close(db, symbol, quote, ids, mode, closed_by, rates, money_digits).await {
            Err(e) if attempt < 4 && is_retryable(&e) => {
                tracing::warn!(symbol = %symbol.symbol, attempt, "close batch retried: {e}");
            }
            other => return other,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn try_close(
    db: &PgPool,
    symbol: &SymbolInfo,
    quote: &Quote,
    ids: &[i64],
    mode: Mode,
    closed_by: &str,
    rates: &Rates,
    money_digits: &HashMap<String, u32>,
) -> sqlx::Result<Vec<Closed>> {
    let mut tx = db.begin().await?;
    // Lock the positions in id order, then their accounts in id order, so two batches (or a
    // batch and a manual close) never deadlock on each other.
    let rows: Vec<Locked> = sqlx::query_as(
        "WITH locked AS (
             SELECT id, account_id, account_currency, side, volume, contract_size, open_price,
                    stop_loss, take_profit, opened_at
             FROM positions
             WHERE id = ANY($1) AND symbol = $2 AND status = 'open'
             ORDER BY id
             FOR UPDATE),
         accounts AS (
             SELECT a.id FROM trading_accounts a
             WHERE a.id IN (SELECT account_id FROM locked)
             ORDER BY a.id
             FOR UPDATE)
         SELECT locked.* FROM locked
         WHERE (SELECT count(*) FROM accounts) >= 0
         ORDER BY id",
    )
    .bind(ids)
    .bind(&symbol.symbol)
    .fetch_all(&mut *tx)
    .await?;

    let bid = money::round_price(quote.bid, symbol.dp());
    let ask = money::round_price(quote.ask, symbol.dp());
    let now = Utc::now();
    let mut closed = Vec::with_capacity(rows.len());
    let mut record = CloseColumns::default();
    for row in rows {
        let Ok(side) = row.side.parse::<Side>() else {
            continue;
        };
        let reason = match mode {
            Mode::Manual => CloseReason::Manual,
            Mode::Triggered => {
                if row.opened_at >= quote.timestamp {
                    continue;
                }
                match money::trigger(side, row.stop_loss, row.take_profit, bid, ask) {
                    Some(r) => r,
                    None => continue,
                }
            }
        };
        let close_price = money::market_price(side, bid, ask);
        let digits = money_digits
            .get(&row.account_currency)
            .copied()
            .unwrap_or(2);
        // An overflow is only reachable with data written around halol's input bounds: leave
        // that row open for an operator rather than fail the whole batch.
        let overflow = || {
            tracing::error!(
                position_id = row.id,
                "position {} not closed: its PnL does not fit a decimal",
                row.id
            );
        };
        let Some(pnl_quote) = money::pnl_quote(
            side,
            row.open_price,
            close_price,
            row.volume,
            row.contract_size,
        ) else {
            overflow();
            continue;
        };
        let (rate, realised, note) = match rates.get(&symbol.quote_currency, &row.account_currency)
        {
            Ok(rate) => match money::convert(pnl_quote, rate, digits) {
                Some(realised) => (Some(rate), Some(realised), None),
                None => {
                    overflow();
                    continue;
                }
            },
            Err(why) => (None, None, Some(why)),
        };
        record.push(
            &row,
            side,
            reason,
            close_price,
            pnl_quote,
            rate,
            realised,
            note,
        );
        closed.push(Closed {
            position_id: row.id,
            account_id: row.account_id,
            reason,
            close_price,
            realised_pnl: realised,
        });
    }
    if closed.is_empty() {
        tx.rollback().await?;
        return Ok(closed);
    }

    let mut deltas: BTreeMap<i64, Decimal> = BTreeMap::new();
    for c in &closed {
        if let Some(pnl) = c.realised_pnl {
            *deltas.entry(c.account_id).or_default() += pnl;
        }
    }
    let (delta_ids, delta_amounts): (Vec<i64>, Vec<Decimal>) = deltas.into_iter().unzip();
    // One statement: close the locked rows, write their close records, book the balances.
    let (updated, recorded): (i64, i64) = sqlx::query_as(
        "WITH u AS (
             SELECT * FROM unnest($1::bigint[], $7::bigint[], $8::text[], $9::numeric[],
                                  $10::numeric[], $11::numeric[], $12::text[], $13::numeric[],
                                  $14::text[], $15::numeric[], $16::numeric[], $17::text[])
                 AS u(id, account_id, side, volume, open_price, close_price, reason, pnl_quote,
                      account_currency, rate, realised_pnl, note)),
         closed AS (
             UPDATE positions p
             SET status = 'closed', closed_at = $4, close_price = u.close_price,
                 close_reason = u.reason, realised_pnl = u.realised_pnl,
                 realised_pnl_note = u.note
             FROM u WHERE p.id = u.id AND p.status = 'open'
             RETURNING p.id),
         recorded AS (
             INSERT INTO position_closes
                 (position_id, account_id, symbol, side, volume, open_price, close_price, reason,
                  price_ts, closed_at, closed_by, pnl_quote, quote_currency, account_currency,
                  conversion_rate, realised_pnl, booked_at)
             SELECT u.id, u.account_id, $2, u.side, u.volume, u.open_price, u.close_price,
                    u.reason, $3, $4, $5, u.pnl_quote, $6, u.account_currency, u.rate,
                    u.realised_pnl, CASE WHEN u.realised_pnl IS NULL THEN NULL ELSE $4 END
             FROM u JOIN closed ON closed.id = u.id
             RETURNING position_id),
         booked AS (
             UPDATE trading_accounts a SET balance = a.balance + d.amount, updated_at = now()
             FROM unnest($18::bigint[], $19::numeric[]) AS d(id, amount)
             WHERE a.id = d.id
             RETURNING a.id)
         SELECT (SELECT count(*) FROM closed), (SELECT count(*) FROM recorded)
         WHERE (SELECT count(*) FROM booked) >= 0",
    )
    .bind(&record.ids)
    .bind(&symbol.symbol)
    .bind(quote.timestamp)
    .bind(now)
    .bind(closed_by)
    .bind(&symbol.quote_currency)
    .bind(&record.account_ids)
    .bind(&record.sides)
    .bind(&record.volumes)
    .bind(&record.open_prices)
    .bind(&record.close_prices)
    .bind(&record.reasons)
    .bind(&record.pnl_quotes)
    .bind(&record.account_currencies)
    .bind(&record.rates)
    .bind(&record.realised)
    .bind(&record.notes)
    .bind(&delta_ids)
    .bind(&delta_amounts)
    .fetch_one(&mut *tx)
    .await?;
    if updated != record.ids.len() as i64 || recorded != updated {
        // Impossible while we hold the row locks; refuse to book anything half-done.
        tx.rollback().await?;
        return Err(sqlx::Error::Protocol(format!(
            "closed {updated} and recorded {recorded} of {} locked positions",
            record.ids.len()
        )));
    }
    tx.commit().await?;
    Ok(closed)
}

/// Add realised PnL to balances, locking the accounts in id order.
async fn book(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    amounts: impl IntoIterator<Item = (i64, Decimal)>,
) -> sqlx::Result<()> {
    let mut deltas: BTreeMap<i64, Decimal> = BTreeMap::new();
    for (account_id, amount) in amounts {
        *deltas.entry(account_id).or_default() += amount;
    }
    if deltas.is_empty() {
        return Ok(());
    }
    let (ids, amounts): (Vec<i64>, Vec<Decimal>) = deltas.into_iter().unzip();
    sqlx::query("SELECT id FROM trading_accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(&ids)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE trading_accounts a SET balance = a.balance + d.amount, updated_at = now()
         FROM unnest($1::bigint[], $2::numeric[]) AS d(id, amount)
         WHERE a.id = d.id",
    )
    .bind(&ids)
    .bind(&amounts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Default)]
struct CloseColumns {
    ids: Vec<i64>,
    account_ids: Vec<i64>,
    sides: Vec<String>,
    volumes: Vec<Decimal>,
    open_prices: Vec<Decimal>,
    close_prices: Vec<Decimal>,
    reasons: Vec<String>,
    pnl_quotes: Vec<Decimal>,
    account_currencies: Vec<String>,
    rates: Vec<Option<Decimal>>,
    realised: Vec<Option<Decimal>>,
    notes: Vec<Option<String>>,
}

impl CloseColumns {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        row: &Locked,
        side: Side,
        reason: CloseReason,
        close_price: Decimal,
        pnl_quote: Decimal,
        rate: Option<Decimal>,
        realised: Option<Decimal>,
        note: Option<String>,
    ) {
        self.ids.push(row.id);
        self.account_ids.push(row.account_id);
        self.sides.push(side.as_str().to_owned());
        self.volumes.push(row.volume);
        self.open_prices.push(row.open_price);
        self.close_prices.push(close_price);
        self.reasons.push(reason.as_str().to_owned());
        self.pnl_quotes.push(pnl_quote);
        self.account_currencies.push(row.account_currency.clone());
        self.rates.push(rate);
        self.realised.push(realised);
        self.notes.push(note);
    }
}

/// Book closes whose PnL waited for a conversion price, now that `rates` may have it (at most
/// `limit`, oldest first, only those whose pair has a rate, so closes that still wait never
/// crowd out the ones that can be booked). Returns how many were booked.
pub async fn book_pending(
    db: &PgPool,
    rates: &Rates,
    money_digits: &HashMap<String, u32>,
    limit: i64,
) -> sqlx::Result<usize> {
    let (quotes, accounts): (Vec<&str>, Vec<&str>) = rates.known().map(|(q, a, _)| (q, a)).unzip();
    if quotes.is_empty() {
        return Ok(0);
    }
    let mut tx = db.begin().await?;
    let pending: Vec<(i64, i64, Decimal, String, String)> = sqlx::query_as(
        "SELECT c.position_id, c.account_id, c.pnl_quote, c.quote_currency, c.account_currency
         FROM positions p JOIN position_closes c ON c.position_id = p.id
         WHERE p.status = 'closed' AND p.realised_pnl IS NULL
           AND (c.quote_currency, c.account_currency) IN
               (SELECT * FROM unnest($2::text[], $3::text[]))
         ORDER BY p.id
         LIMIT $1
         FOR UPDATE OF p SKIP LOCKED",
    )
    .bind(limit)
    .bind(&quotes)
    .bind(&accounts)
    .fetch_all(&mut *tx)
    .await?;
    let mut ids = Vec::new();
    let mut used_rates = Vec::new();
    let mut amounts = Vec::new();
    let mut booked = Vec::new();
    for (id, account_id, pnl_quote, quote_ccy, account_ccy) in pending {
        let Ok(rate) = rates.get(&quote_ccy, &account_ccy) else {
            continue;
        };
        let Some(amount) = money::convert(
            pnl_quote,
            rate,
            money_digits.get(&account_ccy).copied().unwrap_or(2),
        ) else {
            tracing::error!(
                position_id = id,
                "close of position {id} not booked: its PnL does not fit a decimal"
            );
            continue;
        };
        ids.push(id);
        used_rates.push(rate);
        amounts.push(amount);
        booked.push((account_id, amount));
    }
    if ids.is_empty() {
        tx.rollback().await?;
        return Ok(0);
    }
    sqlx::query(
        "UPDATE positions p SET realised_pnl = u.amount, realised_pnl_note = NULL
         FROM unnest($1::bigint[], $2::numeric[]) AS u(id, amount) WHERE p.id = u.id",
    )
    .bind(&ids)
    .bind(&amounts)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE position_closes c
         SET conversion_rate = u.rate, realised_pnl = u.amount, booked_at = now()
         FROM unnest($1::bigint[], $2::numeric[], $3::numeric[]) AS u(id, rate, amount)
         WHERE c.position_id = u.id AND c.booked_at IS NULL",
    )
    .bind(&ids)
    .bind(&used_rates)
    .bind(&amounts)
    .execute(&mut *tx)
    .await?;
    book(&mut tx, booked).await?;
    tx.commit().await?;
    Ok(ids.len())
}
