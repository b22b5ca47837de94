//! Back-office operations shared by the admin HTTP API and the CLI. Every input is checked
//! before anything is written; a refusal names the field.

use chrono::{DateTime, Utc};
use redis::aio::ConnectionLike;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;

use super::{
    Side, SymbolInfo, Trading, TradingError, close, currency_digits, money, prices, rates,
};

/// Most decimal places of a volume (lots).
pub const VOLUME_DP: u32 = 4;

/// The largest volume of one position, in lots (far above any retail order).
pub const MAX_VOLUME: Decimal = Decimal::from_parts(10_000, 0, 0, false, 0);

/// The largest contract size of a symbol.
pub const MAX_CONTRACT_SIZE: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

/// A symbol to create.
#[derive(Debug, Clone)]
pub struct NewSymbol {
    /// `EURUSD`.
    pub symbol: String,
    /// Price decimal places.
    pub digits: i16,
    /// Units per lot.
    pub contract_size: Decimal,
    /// Currency of its prices.
    pub quote_currency: String,
}

/// Create a symbol (audited as `create_symbol`).
pub async fn create_symbol(
    db: &PgPool,
    s: NewSymbol,
    actor: &str,
) -> Result<SymbolInfo, TradingError> {
    let valid_name = !s.symbol.is_empty()
        && s.symbol.len() <= 32
        && s.symbol
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || "._#-".contains(c));
    if !valid_name {
        return Err(TradingError::invalid(
            "symbol",
            format!("{:?} is not 1-32 of A-Z, 0-9, '.', '_', '#', '-'", s.symbol),
        ));
    }
    if !(0..=10).contains(&s.digits) {
        return Err(TradingError::invalid("digits", "must be between 0 and 10"));
    }
    if s.contract_size <= Decimal::ZERO || s.contract_size > MAX_CONTRACT_SIZE {
        return Err(TradingError::invalid(
            "contract_size",
            format!("must be greater than 0 and at most {MAX_CONTRACT_SIZE}"),
        ));
    }
    known_currency(db, "quote_currency", &s.quote_currency).await?;
    let mut tx = db.begin().await?;
    let created: Option<SymbolInfo> = sqlx::query_as(
        "INSERT INTO symbols (symbol, digits, contract_size, quote_currency)
         VALUES ($1, $2, $3, $4) ON CONFLICT (symbol) DO NOTHING
         RETURNING symbol, digits, contract_size, quote_currency",
    )
    .bind(&s.symbol)
    .bind(s.digits)
    .bind(s.contract_size.normalize())
    .bind(&s.quote_currency)
    .fetch_optional(&mut *tx)
    .await?;
    let created = created
        .ok_or_else(|| TradingError::Conflict(format!("symbol {} already exists", s.symbol)))?;
    crate::audit::record(
        &mut tx,
        actor,
        "create_symbol",
        json!({ "symbol": created.symbol }),
        json!(created),
    )
    .await?;
    tx.commit().await?;
    Ok(created)
}

async fn known_currency(db: &PgPool, field: &'static str, code: &str) -> Result<(), TradingError> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM currencies WHERE code = $1)")
            .bind(code)
            .fetch_one(db)
            .await?;
    if exists {
        Ok(())
    } else {
        Err(TradingError::invalid(
            field,
            format!("unknown currency {code:?}"),
        ))
    }
}

/// A trading account as the back office sees it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Account {
    /// Internal id.
    pub id: i64,
    /// The MT5 login.
    pub mt5_account_id: i64,
    /// Account currency.
    pub currency: String,
    /// Balance (realised PnL is booked here).
    pub balance: Decimal,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// Create a trading account (audited as `create_account`).
pub async fn create_account(
    db: &PgPool,
    mt5_account_id: i64,
    currency: &str,
    balance: Decimal,
    actor: &str,
) -> Result<Account, TradingError> {
    if mt5_account_id <= 0 {
        return Err(TradingError::invalid(
            "mt5_account_id",
            "must be a positive integer",
        ));
    }
    known_currency(db, "currency", currency).await?;
    let digits = currency_digits(db).await?;
    let dp = digits.get(currency).copied().unwrap_or(2);
    if balance.normalize().scale() > dp {
        return Err(TradingError::invalid(
            "balance",
            format!("{balance} has more than {currency}'s {dp} decimal places"),
        ));
    }
    let mut tx = db.begin().await?;
    let created: Option<Account> = sqlx::query_as(
        "INSERT INTO trading_accounts (mt5_account_id, currency, balance) VALUES ($1, $2, $3)
         ON CONFLICT (mt5_account_id) DO NOTHING
         RETURNING id, mt5_account_id, currency, balance, created_at",
    )
    .bind(mt5_account_id)
    .bind(currency)
    .bind(money::round_money(balance, dp))
    .fetch_optional(&mut *tx)
    .await?;
    let created = created.ok_or_else(|| {
        TradingError::Conflict(format!("account {mt5_account_id} already exists"))
    })?;
    crate::audit::record(
        &mut tx,
        actor,
        "create_account",
        json!({ "mt5_account_id": mt5_account_id }),
        json!({ "currency": created.currency, "balance": created.balance.to_string() }),
    )
    .await?;
    tx.commit().await?;
    Ok(created)
}

/// A position as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Position {
    /// Id.
    pub id: i64,
    /// Internal account id.
    pub account_id: i64,
    /// The account's MT5 login.
    pub mt5_account_id: i64,
    /// Currency of the PnL figures.
    pub account_currency: String,
    /// Symbol.
    pub symbol: String,
    /// `buy` or `sell`.
    pub side: String,
    /// Lots.
    pub volume: Decimal,
    /// Open price.
    pub open_price: Decimal,
    /// Opened.
    pub opened_at: DateTime<Utc>,
    /// Stop loss.
    pub stop_loss: Option<Decimal>,
    /// Take profit.
    pub take_profit: Option<Decimal>,
    /// `open` or `closed`.
    pub status: String,
    /// Closed.
    pub closed_at: Option<DateTime<Utc>>,
    /// Close price.
    pub close_price: Option<Decimal>,
    /// `sl`, `tp` or `manual`.
    pub close_reason: Option<String>,
    /// Realised PnL in the account currency.
    pub realised_pnl: Option<Decimal>,
    /// Why the realised PnL is missing, if it is.
    pub realised_pnl_note: Option<String>,
    /// Bid at the last revaluation.
    pub current_bid: Option<Decimal>,
    /// Ask at the last revaluation.
    pub current_ask: Option<Decimal>,
    /// Event time of that quote.
    pub price_ts: Option<DateTime<Utc>>,
    /// Unrealised PnL at the last revaluation.
    pub unrealised_pnl: Option<Decimal>,
    /// Why the unrealised PnL is missing, if it is.
    pub unrealised_pnl_note: Option<String>,
    /// When it was last revalued.
    pub revalued_at: Option<DateTime<Utc>>,
}

const POSITION_COLUMNS: &str = "p.id, p.account_id, a.mt5_account_id, p.account_currency, p.symbol,
    p.side, p.volume, p.open_price, p.opened_at, p.stop_loss, p.take_profit, p.status,
    p.closed_at, p.close_price, p.close_reason, p.realised_pnl, p.realised_pnl_note,
    p.current_bid, p.current_ask, p.price_ts, p.unrealised_pnl, p.unrealised_pnl_note,
    p.revalued_at";

/// One position.
pub async fn get_position(db: &PgPool, id: i64) -> Result<Position, TradingError> {
    sqlx::query_as(&format!(
        "SELECT {POSITION_COLUMNS} FROM positions p JOIN trading_accounts a ON a.id = p.account_id
         WHERE p.id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?
    .ok_or_else(|| TradingError::NotFound(format!("no position {id}")))
}

/// Filter of [`list_positions`].
#[derive(Debug, Clone, Default)]
pub struct PositionFilter {
    /// Only this account's.
    pub mt5_account_id: Option<i64>,
    /// Only this symbol's.
    pub symbol: Option<String>,
    /// `open` or `closed`.
    pub status: Option<String>,
    /// Ids above this (keyset pagination).
    pub after_id: Option<i64>,
    /// At most this many (1..=1000, default 100).
    pub limit: Option<i64>,
}

/// Positions matching `f`, by id.
pub async fn list_positions(
    db: &PgPool,
    f: &PositionFilter,
) -> Result<Vec<Position>, TradingError> {
    if let Some(s) = &f.status
        && s != "open"
        && s != "closed"
    {
        return Err(TradingError::invalid(
            "status",
            format!("must be \"open\" or \"closed\", got {s:?}"),
        ));
    }
    let limit = f.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(TradingError::invalid("limit", "must be between 1 and 1000"));
    }
    Ok(sqlx::query_as(&format!(
        "SELECT {POSITION_COLUMNS} FROM positions p JOIN trading_accounts a ON a.id = p.account_id
         WHERE ($1::bigint IS NULL OR a.mt5_account_id = $1)
           AND ($2::text IS NULL OR p.symbol = $2)
           AND ($3::text IS NULL OR p.status = $3)
           AND p.id > coalesce($4, 0)
         ORDER BY p.id LIMIT $5"
    ))
    .bind(f.mt5_account_id)
    .bind(&f.symbol)
    .bind(&f.status)
    .bind(f.after_id)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

async fn known_symbol(db: &PgPool, symbol: &str) -> Result<SymbolInfo, TradingError> {
    super::symbol(db, symbol)
        .await?
        .ok_or_else(|| TradingError::invalid("symbol", format!("unknown symbol {symbol:?}")))
}

/// The fresh quote of `symbol`, or why there is none.
async fn fresh_quote(
    t: &Trading,
    conn: &mut impl ConnectionLike,
    symbol: &SymbolInfo,
) -> Result<Result<prices::Quote, prices::Unusable>, TradingError> {
    let quote = prices::read(conn, &t.keys, &symbol.symbol).await?;
    Ok(quote.and_then(|q| {
        q.check_fresh(Utc::now(), t.price_max_age)?;
        Ok(prices::Quote {
            bid: money::round_price(q.bid, symbol.dp()),
            ask: money::round_price(q.ask, symbol.dp()),
            ..q
        })
    }))
}

fn level(
    field: &'static str,
    value: Decimal,
    symbol: &SymbolInfo,
    side: Side,
    quote: &Result<prices::Quote, prices::Unusable>,
) -> Result<Decimal, TradingError> {
    let value =
        money::normalise_price(value, symbol.dp()).map_err(|m| TradingError::invalid(field, m))?;
    let quote = quote.as_ref().map_err(|why| {
        TradingError::invalid(
            field,
            format!(
                "cannot be checked against the market: {} has {why}",
                symbol.symbol
            ),
        )
    })?;
    money::check_level_side(side, field, value, quote.bid, quote.ask)
        .map_err(|m| TradingError::invalid(field, m))?;
    Ok(value)
}

/// A position to open.
#[derive(Debug, Clone)]
pub struct OpenPosition {
    /// The account's MT5 login.
    pub mt5_account_id: i64,
    /// Symbol.
    pub symbol: String,
    /// Side.
    pub side: Side,
    /// Lots.
    pub volume: Decimal,
    /// Stop loss.
    pub stop_loss: Option<Decimal>,
    /// Take profit.
    pub take_profit: Option<Decimal>,
    /// Booked price; default the current market price (ask for a buy, bid for a sell).
    pub open_price: Option<Decimal>,
}

/// Open a position (audited as `open_position`).
pub async fn open_position(
    t: &Trading,
    req: OpenPosition,
    actor: &str,
) -> Result<Position, TradingError> {
    if req.volume <= Decimal::ZERO {
        return Err(TradingError::invalid(
            "volume",
            format!("must be greater than 0, got {}", req.volume),
        ));
    }
    if req.volume > MAX_VOLUME {
        return Err(TradingError::invalid(
            "volume",
            format!("at most {MAX_VOLUME} lots, got {}", req.volume),
        ));
    }
    if req.volume.normalize().scale() > VOLUME_DP {
        return Err(TradingError::invalid(
            "volume",
            format!("at most {VOLUME_DP} decimal places"),
        ));
    }
    let symbol = known_symbol(&t.db, &req.symbol).await?;
    let account: Option<(i64, String)> =
        sqlx::query_as("SELECT id, currency FROM trading_accounts WHERE mt5_account_id = $1")
            .bind(req.mt5_account_id)
            .fetch_optional(&t.db)
            .await?;
    let (account_id, currency) = account.ok_or_else(|| {
        TradingError::invalid(
            "mt5_account_id",
            format!("no account {}", req.mt5_account_id),
        )
    })?;
    let mut conn = t.redis.manager();
    let quote = fresh_quote(t, &mut conn, &symbol).await?;
    let stop_loss = req
        .stop_loss
        .map(|v| level("stop_loss", v, &symbol, req.side, &quote))
        .transpose()?;
    let take_profit = req
        .take_profit
        .map(|v| level("take_profit", v, &symbol, req.side, &quote))
        .transpose()?;
    let open_price = match req.open_price {
        Some(p) => money::normalise_price(p, symbol.dp())
            .map_err(|m| TradingError::invalid("open_price", m))?,
        None => match &quote {
            // Buying pays the ask, selling receives the bid.
            Ok(q) => match req.side {
                Side::Buy => q.ask,
                Side::Sell => q.bid,
            },
            Err(why) => {
                return Err(TradingError::Conflict(format!(
                    "cannot open at market: {} has {why}; give open_price to book at a price",
                    symbol.symbol
                )));
            }
        },
    };
    let mut volume = req.volume.normalize();
    volume.rescale(volume.scale().max(2));
    let mut tx = t.db.begin().await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO positions (account_id, account_currency, symbol, side, volume, contract_size,
                                open_price, stop_loss, take_profit)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(account_id)
    .bind(&currency)
    .bind(&symbol.symbol)
    .bind(req.side.as_str())
    .bind(volume)
    .bind(symbol.contract_size)
    .bind(open_price)
    .bind(stop_loss)
    .bind(take_profit)
    .fetch_one(&mut *tx)
    .await?;
    crate::audit::record(
        &mut tx,
        actor,
        "open_position",
        json!({ "position_id": id, "mt5_account_id": req.mt5_account_id }),
        json!({
            "symbol": symbol.symbol,
            "side": req.side.as_str(),
            "volume": volume.to_string(),
            "open_price": open_price.to_string(),
            "stop_loss": stop_loss.map(|v| v.to_string()),
            "take_profit": take_profit.map(|v| v.to_string()),
        }),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(position_id = id, symbol = %symbol.symbol, side = %req.side, actor, "position {id} opened");
    get_position(&t.db, id).await
}

/// A change of SL/TP: `None` leaves a level alone, `Some(None)` removes it.
#[derive(Debug, Clone, Default)]
pub struct Levels {
    /// New stop loss.
    pub stop_loss: Option<Option<Decimal>>,
    /// New take profit.
    pub take_profit: Option<Option<Decimal>>,
}

/// Change a position's SL/TP, checked against the current quote, on the locked open row
/// (audited as `modify_position` with the levels before and after).
pub async fn modify_position(
    t: &Trading,
    id: i64,
    levels: Levels,
    actor: &str,
) -> Result<Position, TradingError> {
    let current = get_position(&t.db, id).await?;
    if current.status != "open" {
        return Err(TradingError::Conflict(format!("position {id} is closed")));
    }
    let symbol = known_symbol(&t.db, &current.symbol).await?;
    let side: Side = current
        .side
        .parse()
        .map_err(|e: String| TradingError::Internal(anyhow::anyhow!(e)))?;
    let mut conn = t.redis.manager();
    let quote = fresh_quote(t, &mut conn, &symbol).await?;
    let check =
        |field, v: Option<Option<Decimal>>| -> Result<Option<Option<Decimal>>, TradingError> {
            match v {
                Some(Some(v)) => Ok(Some(Some(level(field, v, &symbol, side, &quote)?))),
                other => Ok(other),
            }
        };
    let stop_loss = check("stop_loss", levels.stop_loss)?;
    let take_profit = check("take_profit", levels.take_profit)?;
    // Each level is on its side of the market; together they must still be in order (the
    // market may have moved past the level that stays).
    let changed = if stop_loss.is_some() {
        "stop_loss"
    } else {
        "take_profit"
    };
    let out_of_order = || {
        TradingError::invalid(
            changed,
            format!(
                "a {side} position's stop_loss must be {} its take_profit",
                match side {
                    Side::Buy => "below",
                    Side::Sell => "above",
                }
            ),
        )
    };
    if let (Some(sl), Some(tp)) = (
        stop_loss.unwrap_or(current.stop_loss),
        take_profit.unwrap_or(current.take_profit),
    ) && !money::levels_in_order(side, sl, tp)
    {
        return Err(out_of_order());
    }
    let mut tx = t.db.begin().await?;
    // The old levels come from the locked row, so the audit shows what this change replaced.
    let updated: Option<AuditedLevels> = sqlx::query_as(
        "UPDATE positions p
         SET stop_loss = CASE WHEN $2 THEN $3 ELSE p.stop_loss END,
             take_profit = CASE WHEN $4 THEN $5 ELSE p.take_profit END
         FROM (SELECT id, stop_loss, take_profit FROM positions WHERE id = $1 FOR UPDATE) old
         WHERE p.id = old.id AND p.status = 'open'
         RETURNING old.stop_loss AS old_stop_loss, old.take_profit AS old_take_profit,
                   p.stop_loss, p.take_profit",
    )
    .bind(id)
    .bind(stop_loss.is_some())
    .bind(stop_loss.flatten())
    .bind(take_profit.is_some())
    .bind(take_profit.flatten())
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| {
        // A concurrent change of the other level can still put them out of order.
        if e.as_database_error().and_then(|d| d.constraint()) == Some("positions_sl_below_tp") {
            out_of_order()
        } else {
            e.into()
        }
    })?;
    let Some(levels) = updated else {
        return Err(TradingError::Conflict(format!("position {id} is closed")));
    };
    let text = |v: Option<Decimal>| v.map(|v| v.to_string());
    crate::audit::record(
        &mut tx,
        actor,
        "modify_position",
        json!({ "position_id": id }),
        json!({
            "before": { "stop_loss": text(levels.old_stop_loss), "take_profit": text(levels.old_take_profit) },
            "after": { "stop_loss": text(levels.stop_loss), "take_profit": text(levels.take_profit) },
        }),
    )
    .await?;
    tx.commit().await?;
    get_position(&t.db, id).await
}

#[derive(sqlx::FromRow)]
struct AuditedLevels {
    old_stop_loss: Option<Decimal>,
    old_take_profit: Option<Decimal>,
    stop_loss: Option<Decimal>,
    take_profit: Option<Decimal>,
}

/// Close a position at the current market price.
pub async fn close_position(t: &Trading, id: i64, by: &str) -> Result<Position, TradingError> {
    let current = get_position(&t.db, id).await?;
    if current.status != "open" {
        return Err(TradingError::Conflict(format!(
            "position {id} is already closed"
        )));
    }
    let symbol = known_symbol(&t.db, &current.symbol).await?;
    let mut conn = t.redis.manager();
    let quote = fresh_quote(t, &mut conn, &symbol).await?.map_err(|why| {
        TradingError::Conflict(format!(
            "cannot close at market: {} has {why}",
            symbol.symbol
        ))
    })?;
    let (rates, digits) = rates::for_close(t, &symbol.quote_currency, Utc::now()).await?;
    let closed = close::close_batch(
        &t.db,
        &symbol,
        &quote,
        &[id],
        close::Mode::Manual,
        by,
        &rates,
        &digits,
    )
    .await?;
    if closed.is_empty() {
        if get_position(&t.db, id).await?.status == "open" {
            // Only when its PnL overflows (data written around halol's bounds; logged).
            return Err(TradingError::Internal(anyhow::anyhow!(
                "position {id} could not be closed: its PnL does not fit a decimal"
            )));
        }
        return Err(TradingError::Conflict(format!(
            "position {id} is already closed"
        )));
    }
    super::calm::forget(t, &[id]).await;
    tracing::info!(position_id = id, by, "position {id} closed manually");
    get_position(&t.db, id).await
}

/// Write a price to the cache, normalised to the symbol's digits (audited as `set_price`: a
/// manual price can trigger SL/TP closes). The audit row commits only if the write was stored.
pub async fn set_price(
    t: &Trading,
    symbol: &str,
    bid: Decimal,
    ask: Decimal,
    timestamp: Option<DateTime<Utc>>,
    seq: Option<u64>,
    actor: &str,
) -> Result<prices::Quote, TradingError> {
    let info = super::symbol(&t.db, symbol)
        .await?
        .ok_or_else(|| TradingError::NotFound(format!("unknown symbol {symbol:?}")))?;
    let bid =
        money::normalise_price(bid, info.dp()).map_err(|m| TradingError::invalid("bid", m))?;
    let ask =
        money::normalise_price(ask, info.dp()).map_err(|m| TradingError::invalid("ask", m))?;
    prices::validate(bid, ask).map_err(|(f, m)| TradingError::invalid(f, m))?;
    let now = Utc::now();
    let timestamp = timestamp.unwrap_or(now);
    if timestamp > now + prices::MAX_FUTURE_SKEW {
        // Every reader would refuse it as malformed: refuse it here instead.
        return Err(TradingError::invalid(
            "timestamp",
            format!("{timestamp} is in the future (now {now})"),
        ));
    }
    if let Some(s) = seq
        && s > prices::MAX_SEQ
    {
        return Err(TradingError::invalid(
            "seq",
            format!(
                "{s} is above the largest sequence number {}",
                prices::MAX_SEQ
            ),
        ));
    }
    let quote = prices::NewQuote {
        bid,
        ask,
        timestamp,
        seq,
    };
    let mut tx = t.db.begin().await?;
    crate::audit::record(
        &mut tx,
        actor,
        "set_price",
        json!({ "symbol": symbol }),
        json!({
            "bid": bid.to_string(),
            "ask": ask.to_string(),
            "timestamp": prices::format_ts(timestamp),
            "seq": seq,
        }),
    )
    .await?;
    let mut conn = t.redis.manager();
    match prices::write(&mut conn, &t.keys, symbol, &quote).await? {
        prices::Written::Stored(seq) => {
            tx.commit().await?;
            Ok(prices::Quote {
                bid,
                ask,
                timestamp,
                seq,
            })
        }
        prices::Written::NotNewer { cached } => Err(TradingError::invalid(
            "seq",
            format!("the cache already holds seq {cached}; a quote must carry a higher one"),
        )),
    }
}

/// Read a cached price (as cached, whatever its age).
pub async fn get_price(t: &Trading, symbol: &str) -> Result<prices::Quote, TradingError> {
    let mut conn = t.redis.manager();
    match prices::read(&mut conn, &t.keys, symbol).await? {
        Ok(q) => Ok(q),
        Err(why) => Err(TradingError::NotFound(format!("{symbol}: {why}"))),
    }
}
