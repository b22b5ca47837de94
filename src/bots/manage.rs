//! Back-office changes to accounts, strategies and per-account strategy settings (what the old
//! Django admin did). Each change is checked first (a refusal names the field and writes
//! nothing), applied in one transaction with its audit record, and published after commit.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::audit::record as audit;
use crate::trading::{Trading, TradingError};

/// A change to an account; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct AccountPatch {
    /// ACTIVE or PAUSED.
    pub bot_status: Option<String>,
    /// ACTIVE or INACTIVE.
    pub account_status: Option<String>,
    /// ACTIVE, EXPIRED or CANCELLED.
    pub subscription_status: Option<String>,
    /// `Some(None)` removes the expiry.
    pub subscription_expiry: Option<Option<DateTime<Utc>>>,
    /// Symbols the bot may trade (must exist).
    pub enabled_symbols: Option<Vec<String>>,
    /// Lots per trade.
    pub lot_size: Option<Decimal>,
    /// Pause around news.
    pub auto_pause_on_news: Option<bool>,
    /// Dynamic sizing.
    pub dynamic_position_sizing_enabled: Option<bool>,
    /// DD protection on/off.
    pub dd_protection_enabled: Option<bool>,
    /// Daily limit, %.
    pub daily_dd_limit_percent: Option<Decimal>,
    /// Max limit, %.
    pub max_account_dd_percent: Option<Decimal>,
    /// `Some(None)` clears the active bot.
    pub active_bot_id: Option<Option<i64>>,
    /// Lift a DD block (a max-DD block re-bases the peak to the current balance).
    pub clear_dd_block: bool,
}

fn one_of(field: &'static str, v: &str, allowed: &[&str]) -> Result<(), TradingError> {
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(TradingError::invalid(
            field,
            format!("must be one of {}, got {v:?}", allowed.join(", ")),
        ))
    }
}

fn percent(field: &'static str, v: Decimal) -> Result<(), TradingError> {
    if v > Decimal::ZERO && v <= Decimal::ONE_HUNDRED {
        Ok(())
    } else {
        Err(TradingError::invalid(
            field,
            format!("must be in (0, 100], got {v}"),
        ))
    }
}

/// Refuse `symbols` naming `field` if one is not in the catalogue.
async fn known_symbols(
    tx: &mut sqlx::PgConnection,
    field: &'static str,
    symbols: &[String],
) -> Result<(), TradingError> {
    let known: Vec<String> =
        sqlx::query_scalar("SELECT symbol FROM symbols WHERE symbol = ANY($1)")
            .bind(symbols)
            .fetch_all(tx)
            .await?;
    match symbols.iter().find(|s| !known.contains(s)) {
        Some(unknown) => Err(TradingError::invalid(
            field,
            format!("unknown symbol {unknown:?}"),
        )),
        None => Ok(()),
    }
}

/// Apply `patch` to account `mt5` as `actor`.
pub async fn update_account(
    t: &Trading,
    mt5: i64,
    patch: AccountPatch,
    actor: &str,
) -> Result<Value, TradingError> {
    if let Some(s) = &patch.bot_status {
        one_of("bot_status", s, &["ACTIVE", "PAUSED"])?;
    }
    if let Some(s) = &patch.account_status {
        one_of("account_status", s, &["ACTIVE", "INACTIVE"])?;
    }
    if let Some(s) = &patch.subscription_status {
        one_of(
            "subscription_status",
            s,
            &["ACTIVE", "EXPIRED", "CANCELLED"],
        )?;
    }
    if let Some(v) = patch.lot_size
        && (v <= Decimal::ZERO || v.normalize().scale() > 4)
    {
        return Err(TradingError::invalid(
            "lot_size",
            format!("must be > 0 with at most 4 decimal places, got {v}"),
        ));
    }
    if let Some(v) = patch.daily_dd_limit_percent {
        percent("daily_dd_limit_percent", v)?;
    }
    if let Some(v) = patch.max_account_dd_percent {
        percent("max_account_dd_percent", v)?;
    }
    let mut tx = t.db.begin().await?;
    let current: Option<(i64, String, bool)> = sqlx::query_as(
        "SELECT id, bot_status, emergency_stop FROM trading_accounts WHERE mt5_account_id = $1
         FOR UPDATE",
    )
    .bind(mt5)
    .fetch_optional(&mut *tx)
    .await?;
    let (id, status, emergency) =
        current.ok_or_else(|| TradingError::NotFound(format!("no account {mt5}")))?;
    if patch.bot_status.as_deref() == Some("ACTIVE") && emergency {
        return Err(TradingError::Conflict(format!(
            "account {mt5} is under an emergency stop: clear it before resuming"
        )));
    }
    if let Some(symbols) = &patch.enabled_symbols {
        known_symbols(&mut tx, "enabled_symbols", symbols).await?;
    }
    if let Some(Some(bot)) = patch.active_bot_id {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM bot_strategies WHERE id = $1)")
                .bind(bot)
                .fetch_one(&mut *tx)
                .await?;
        if !exists {
            return Err(TradingError::invalid(
                "active_bot_id",
                format!("no bot strategy {bot}"),
            ));
        }
    }
    // While DOWN, a status change is what the bot returns to.
    let down = status == "DOWN";
    sqlx::query(
        "UPDATE trading_accounts SET
           bot_status = CASE WHEN $2::text IS NULL OR $15 THEN bot_status ELSE $2 END,
           status_before_down = CASE WHEN $2::text IS NOT NULL AND $15 THEN $2 ELSE status_before_down END,
           account_status = coalesce($3, account_status),
           subscription_status = coalesce($4, subscription_status),
           subscription_expiry = CASE WHEN $5 THEN $6 ELSE subscription_expiry END,
           enabled_symbols = coalesce($7, enabled_symbols),
           lot_size = coalesce($8, lot_size),
           auto_pause_on_news = coalesce($9, auto_pause_on_news),
           dynamic_position_sizing_enabled = coalesce($10, dynamic_position_sizing_enabled),
           dd_protection_enabled = coalesce($11, dd_protection_enabled),
           daily_dd_limit_percent = coalesce($12, daily_dd_limit_percent),
           max_account_dd_percent = coalesce($13, max_account_dd_percent),
           active_bot_id = CASE WHEN $14 THEN $16 ELSE active_bot_id END,
           peak_balance = CASE WHEN $17 AND dd_block_kind = 'max' THEN current_balance ELSE peak_balance END,
           dd_blocked = CASE WHEN $17 THEN false ELSE dd_blocked END,
           dd_block_kind = CASE WHEN $17 THEN NULL ELSE dd_block_kind END,
           dd_block_reason = CASE WHEN $17 THEN NULL ELSE dd_block_reason END,
           updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(&patch.bot_status)
    .bind(&patch.account_status)
    .bind(&patch.subscription_status)
    .bind(patch.subscription_expiry.is_some())
    .bind(patch.subscription_expiry.flatten())
    .bind(&patch.enabled_symbols)
    .bind(patch.lot_size)
    .bind(patch.auto_pause_on_news)
    .bind(patch.dynamic_position_sizing_enabled)
    .bind(patch.dd_protection_enabled)
    .bind(patch.daily_dd_limit_percent)
    .bind(patch.max_account_dd_percent)
    .bind(patch.active_bot_id.is_some())
    .bind(down)
    .bind(patch.active_bot_id.flatten())
    .bind(patch.clear_dd_block)
    .execute(&mut *tx)
    .await?;
    audit(
        &mut tx,
        actor,
        "update_account",
        json!({ "mt5_account_id": mt5 }),
        json!(format!("{patch:?}")),
    )
    .await?;
    tx.commit().await?;
    publish_after_commit(t).await;
    account_view(&t.db, mt5).await
}

/// Publish what was just committed; a failure is repaired by the scheduled drain.
async fn publish_after_commit(t: &Trading) {
    if let Err(e) = super::publish::drain_outbox(t).await {
        tracing::warn!("publish after commit deferred to the next scheduled drain: {e}");
    }
}

/// The admin view of an account (everything, unlike the bot's document).
pub async fn account_view(db: &sqlx::PgPool, mt5: i64) -> Result<Value, TradingError> {
    let row: Option<Value> = sqlx::query_scalar(
        "SELECT to_jsonb(a) - 'day_ref_date' || jsonb_build_object('day_ref_date', a.day_ref_date)
         FROM trading_accounts a WHERE mt5_account_id = $1",
    )
    .bind(mt5)
    .fetch_optional(db)
    .await?;
    row.ok_or_else(|| TradingError::NotFound(format!("no account {mt5}")))
}

/// Create a bot strategy in the catalogue.
pub async fn create_strategy(
    t: &Trading,
    name: &str,
    strategy_class: &str,
    is_pair_trading: bool,
    actor: &str,
) -> Result<Value, TradingError> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(TradingError::invalid("name", "must be 1-200 characters"));
    }
    let valid_class = strategy_class
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && strategy_class.len() <= 100
        && strategy_class
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_class {
        return Err(TradingError::invalid(
            "strategy_class",
            "must be an identifier (letters, digits, _)",
        ));
    }
    let mut tx = t.db.begin().await?;
    let row: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO bot_strategies (name, strategy_class, is_pair_trading) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO NOTHING RETURNING id",
    )
    .bind(name)
    .bind(strategy_class)
    .bind(is_pair_trading)
    .fetch_optional(&mut *tx)
    .await?;
    let (id,) =
        row.ok_or_else(|| TradingError::Conflict(format!("strategy {name:?} already exists")))?;
    audit(
        &mut tx,
        actor,
        "create_strategy",
        json!({ "strategy_id": id }),
        json!({ "name": name, "strategy_class": strategy_class, "is_pair_trading": is_pair_trading }),
    )
    .await?;
    tx.commit().await?;
    Ok(
        json!({ "id": id, "name": name, "strategy_class": strategy_class, "is_pair_trading": is_pair_trading }),
    )
}

/// A change to one account's settings of one strategy.
#[derive(Debug, Clone, Default)]
pub struct StrategyPatch {
    /// ACTIVE or PAUSED.
    pub status: Option<String>,
    /// Symbols it may trade.
    pub allowed_symbols: Option<Vec<String>>,
    /// `{SYMBOL: {param: value}}`.
    pub parameters_by_symbol: Option<Value>,
    /// Optimisation settings (an object).
    pub optimization_config: Option<Value>,
    /// `Some(None)` clears it.
    pub last_optimization_date: Option<Option<DateTime<Utc>>>,
}

/// Create or change account `mt5`'s settings of strategy `strategy_id`.
pub async fn set_account_strategy(
    t: &Trading,
    mt5: i64,
    strategy_id: i64,
    patch: StrategyPatch,
    actor: &str,
) -> Result<Value, TradingError> {
    if let Some(s) = &patch.status {
        one_of("status", s, &["ACTIVE", "PAUSED"])?;
    }
    if let Some(p) = &patch.parameters_by_symbol {
        let Some(map) = p.as_object() else {
            return Err(TradingError::invalid(
                "parameters_by_symbol",
                "must be an object keyed by symbol",
            ));
        };
        if let Some((symbol, _)) = map.iter().find(|(_, v)| !v.is_object()) {
            return Err(TradingError::invalid(
                "parameters_by_symbol",
                format!("the parameters of {symbol} must be an object"),
            ));
        }
    }
    if patch
        .optimization_config
        .as_ref()
        .is_some_and(|v| !v.is_object())
    {
        return Err(TradingError::invalid(
            "optimization_config",
            "must be an object",
        ));
    }
    let mut tx = t.db.begin().await?;
    let account: Option<i64> =
        sqlx::query_scalar("SELECT id FROM trading_accounts WHERE mt5_account_id = $1")
            .bind(mt5)
            .fetch_optional(&mut *tx)
            .await?;
    let account = account.ok_or_else(|| TradingError::NotFound(format!("no account {mt5}")))?;
    let strategy: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM bot_strategies WHERE id = $1)")
            .bind(strategy_id)
            .fetch_one(&mut *tx)
            .await?;
    if !strategy {
        return Err(TradingError::NotFound(format!(
            "no bot strategy {strategy_id}"
        )));
    }
    if let Some(symbols) = &patch.allowed_symbols {
        known_symbols(&mut tx, "allowed_symbols", symbols).await?;
    }
    sqlx::query(
        "INSERT INTO account_strategies (account_id, strategy_id, status, allowed_symbols,
                                         parameters_by_symbol, optimization_config,
                                         last_optimization_date)
         VALUES ($1, $2, coalesce($3, 'ACTIVE'), coalesce($4, '{}'), coalesce($5, '{}'),
                 coalesce($6, '{}'), $8)
         ON CONFLICT (account_id, strategy_id) DO UPDATE SET
           status = coalesce($3, account_strategies.status),
           allowed_symbols = coalesce($4, account_strategies.allowed_symbols),
           parameters_by_symbol = coalesce($5, account_strategies.parameters_by_symbol),
           optimization_config = coalesce($6, account_strategies.optimization_config),
           last_optimization_date = CASE WHEN $7 THEN $8
                                         ELSE account_strategies.last_optimization_date END",
    )
    .bind(account)
    .bind(strategy_id)
    .bind(&patch.status)
    .bind(&patch.allowed_symbols)
    .bind(&patch.parameters_by_symbol)
    .bind(&patch.optimization_config)
    .bind(patch.last_optimization_date.is_some())
    .bind(patch.last_optimization_date.flatten())
    .execute(&mut *tx)
    .await?;
    audit(
        &mut tx,
        actor,
        "set_account_strategy",
        json!({ "mt5_account_id": mt5, "strategy_id": strategy_id }),
        json!(format!("{patch:?}")),
    )
    .await?;
    tx.commit().await?;
    publish_after_commit(t).await;
    let row = super::config::strategy(&t.db, mt5, strategy_id)
        .await?
        .ok_or_else(|| TradingError::NotFound("settings vanished".into()))?;
    Ok(super::config::strategy_config(&row))
}
