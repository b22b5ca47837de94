//! The two documents bots fetch, built from PostgreSQL with exactly the seed's fields and types:
//! balances as decimal strings with 4 places, percentages and lot size as JSON numbers,
//! timestamps as ISO 8601 UTC with a `Z`.
//!
//! `bot_status` is the server's instruction (`ACTIVE` or `PAUSED`): while the server considers a
//! bot DOWN it keeps telling it the status it will return to.

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::{Decimal, prelude::ToPrimitive as _};
use serde_json::{Value, json};
use sqlx::PgPool;

/// The columns of an account the trade config, the server heartbeat and the job need.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountRow {
    /// Internal id.
    pub id: i64,
    /// MT5 login.
    pub mt5_account_id: i64,
    /// ACTIVE, PAUSED or DOWN.
    pub bot_status: String,
    /// While DOWN, the status to return to.
    pub status_before_down: Option<String>,
    /// ACTIVE or INACTIVE.
    pub account_status: String,
    /// ACTIVE, EXPIRED or CANCELLED.
    pub subscription_status: String,
    /// Subscription end.
    pub subscription_expiry: Option<DateTime<Utc>>,
    /// Reported balance.
    pub current_balance: Decimal,
    /// High-water mark.
    pub peak_balance: Decimal,
    /// DD block.
    pub dd_blocked: bool,
    /// Why.
    pub dd_block_reason: Option<String>,
    /// Risk config.
    pub dd_protection_enabled: bool,
    /// Daily limit, %.
    pub daily_dd_limit_percent: Decimal,
    /// Max limit, %.
    pub max_account_dd_percent: Decimal,
    /// Trade config.
    pub enabled_symbols: Vec<String>,
    /// Lots per trade.
    pub lot_size: Decimal,
    /// Pause around news.
    pub auto_pause_on_news: bool,
    /// Dynamic sizing.
    pub dynamic_position_sizing_enabled: bool,
    /// The active bot.
    pub active_bot_id: Option<i64>,
    /// Its name.
    pub active_bot_name: Option<String>,
    /// Trade-config version.
    pub trade_config_version: i64,
}

/// `SELECT` list of [`AccountRow`] over `trading_accounts a LEFT JOIN bot_strategies s`.
pub const ACCOUNT_COLUMNS: &str = "a.id, a.mt5_account_id, a.bot_status, a.status_before_down,
    a.account_status, a.subscription_status, a.subscription_expiry, a.current_balance,
    a.peak_balance, a.dd_blocked, a.dd_block_reason, a.dd_protection_enabled,
    a.daily_dd_limit_percent, a.max_account_dd_percent, a.enabled_symbols, a.lot_size,
    a.auto_pause_on_news, a.dynamic_position_sizing_enabled, a.active_bot_id,
    s.name AS active_bot_name, a.trade_config_version";

/// `FROM` clause for [`ACCOUNT_COLUMNS`].
pub const ACCOUNT_FROM: &str =
    "trading_accounts a LEFT JOIN bot_strategies s ON s.id = a.active_bot_id";

impl AccountRow {
    /// The status the server instructs the bot to have.
    pub fn instructed_status(&self) -> &str {
        self.status_before_down
            .as_deref()
            .unwrap_or(&self.bot_status)
    }
}

/// One account by MT5 login.
pub async fn account(db: &PgPool, mt5: i64) -> sqlx::Result<Option<AccountRow>> {
    sqlx::query_as(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM {ACCOUNT_FROM} WHERE a.mt5_account_id = $1"
    ))
    .bind(mt5)
    .fetch_optional(db)
    .await
}

fn iso(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn balance(d: Decimal) -> String {
    let mut d = d;
    d.rescale(4);
    d.to_string()
}

fn number(d: Decimal) -> Value {
    d.to_f64()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// `GET /api/bot/trade-config/{mt5_account_id}/`.
pub fn trade_config(a: &AccountRow) -> Value {
    json!({
        "status": "success",
        "version": a.trade_config_version,
        "bot_status": a.instructed_status(),
        "account_status": a.account_status,
        "subscription_status": a.subscription_status,
        "subscription_expiry": a.subscription_expiry.map(iso),
        "current_balance": balance(a.current_balance),
        "peak_balance": balance(a.peak_balance),
        "dd_blocked": a.dd_blocked,
        "dd_block_reason": a.dd_block_reason,
        "risk_config": {
            "dd_protection_enabled": a.dd_protection_enabled,
            "daily_dd_limit_percent": number(a.daily_dd_limit_percent),
            "max_account_dd_percent": number(a.max_account_dd_percent),
        },
        "trade_config": {
            "enabled_symbols": a.enabled_symbols,
            "lot_size": number(a.lot_size),
            "auto_pause_on_news": a.auto_pause_on_news,
            "dynamic_position_sizing_enabled": a.dynamic_position_sizing_enabled,
        },
        "active_bot_id": a.active_bot_id,
        "active_bot_name": a.active_bot_name,
    })
}

/// The fields of `server:heartbeat:{id}` (booleans as `true`/`false`, no reason as `""`), plus
/// `trade_config_version` so bots see the current version even if the version key is gone.
pub fn server_heartbeat(a: &AccountRow, now: DateTime<Utc>) -> Vec<(&'static str, String)> {
    vec![
        ("bot_status", a.instructed_status().to_owned()),
        ("account_status", a.account_status.clone()),
        ("subscription_status", a.subscription_status.clone()),
        ("dd_blocked", a.dd_blocked.to_string()),
        (
            "dd_block_reason",
            a.dd_block_reason.clone().unwrap_or_default(),
        ),
        ("last_update", iso(now)),
        ("trade_config_version", a.trade_config_version.to_string()),
    ]
}

/// The columns the strategy config needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StrategyRow {
    /// Account id.
    pub account_id: i64,
    /// MT5 login.
    pub mt5_account_id: i64,
    /// Strategy id.
    pub strategy_id: i64,
    /// Name.
    pub name: String,
    /// Class.
    pub strategy_class: String,
    /// Pair trading.
    pub is_pair_trading: bool,
    /// ACTIVE or PAUSED.
    pub status: String,
    /// Allowed symbols.
    pub allowed_symbols: Vec<String>,
    /// Parameters.
    pub parameters_by_symbol: Value,
    /// Optimisation config.
    pub optimization_config: Value,
    /// Last optimisation.
    pub last_optimization_date: Option<DateTime<Utc>>,
    /// Version.
    pub version: i64,
}

/// `SELECT` list of [`StrategyRow`].
pub const STRATEGY_SELECT: &str = "SELECT c.account_id, a.mt5_account_id, c.strategy_id, s.name,
    s.strategy_class, s.is_pair_trading, c.status, c.allowed_symbols, c.parameters_by_symbol,
    c.optimization_config, c.last_optimization_date, c.version
    FROM account_strategies c
    JOIN trading_accounts a ON a.id = c.account_id
    JOIN bot_strategies s ON s.id = c.strategy_id";

/// One account's settings of one strategy.
pub async fn strategy(
    db: &PgPool,
    mt5: i64,
    strategy_id: i64,
) -> sqlx::Result<Option<StrategyRow>> {
    sqlx::query_as(&format!(
        "{STRATEGY_SELECT} WHERE a.mt5_account_id = $1 AND c.strategy_id = $2"
    ))
    .bind(mt5)
    .bind(strategy_id)
    .fetch_optional(db)
    .await
}

/// `GET /api/bot/strategy-config/{mt5_account_id}/{strategy_id}/`.
pub fn strategy_config(s: &StrategyRow) -> Value {
    json!({
        "status": "success",
        "version": s.version,
        "bot_strategy_id": s.strategy_id,
        "bot_strategy_name": s.name,
        "bot_status": s.status,
        "bot_strategy_class": s.strategy_class,
        "is_pair_trading": s.is_pair_trading,
        "allowed_symbols": s.allowed_symbols,
        "parameters_by_symbol": s.parameters_by_symbol,
        "optimization_config": s.optimization_config,
        "last_optimization_date": s.last_optimization_date.map(iso),
    })
}
