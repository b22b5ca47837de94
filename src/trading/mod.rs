//! The trading core: positions in PostgreSQL, the price cache in Redis, the SL/TP sweep, the
//! revaluation of open positions and calm mode.
//!
//! Rules (see `../shared/research/trading-semantics.md` §1 and README "Trading rules"):
//! - a long (buy) position is checked and valued at the **bid**, a short (sell) one at the **ask**;
//! - a level that is touched triggers (inclusive);
//! - SL and TP both close at the triggering market price (a gap books the real loss, a
//!   favourable gap the real gain); when a quote crosses both, SL wins;
//! - a missing, malformed or stale quote, or one not newer than the position's opening, means no
//!   check: a warning and a metric, never a price of 0;
//! - PostgreSQL decides every close: a conditional update of the locked row in one transaction
//!   with the close record and the balance.

pub mod calm;
pub mod close;
pub mod money;
pub mod ops;
pub mod prices;
pub mod rates;
pub mod revalue;
pub mod sweep;

use std::{fmt, str::FromStr, sync::Arc, time::Duration};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::redis_pool::RedisPool;

/// Everything the trading core needs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Trading {
    /// PostgreSQL, the truth.
    pub db: PgPool,
    /// Redis: the price cache and calm-mode state.
    pub redis: RedisPool,
    /// Names of the contract keys.
    pub keys: CacheKeys,
    /// A quote whose event time is older than this is stale, even while its key lives.
    pub price_max_age: Duration,
}

/// Names of the Redis keys shared with the Django system and the bots: `price:{SYMBOL}`,
/// `calm:{POSITION_ID}`. `namespace` is empty in production (the contract); tests set one so
/// they can share a Redis.
#[derive(Clone, Debug, Default)]
pub struct CacheKeys {
    namespace: Arc<str>,
}

impl CacheKeys {
    /// Keys under `namespace` (empty = the contract's names).
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.into(),
        }
    }

    /// The namespace (empty in production).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `price:{SYMBOL}`.
    pub fn price(&self, symbol: &str) -> String {
        format!("{}price:{symbol}", self.namespace)
    }

    /// `calm:{POSITION_ID}`: the calm-mode flags (TTL 1 h).
    pub fn calm(&self, position_id: i64) -> String {
        format!("{}calm:{position_id}", self.namespace)
    }

    /// `calm:{POSITION_ID}:pnl`: the blurred PnL (TTL 30 min).
    pub fn calm_pnl(&self, position_id: i64) -> String {
        format!("{}calm:{position_id}:pnl", self.namespace)
    }

    /// Our own index of positions in calm mode (ZSET, score = flags expiry in ms), so the
    /// revaluation finds them without scanning keys.
    pub fn calm_index(&self) -> String {
        format!("{}halol:calm_positions", self.namespace)
    }
}

/// Buy (long) or sell (short).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Long: valued and triggered at the bid.
    Buy,
    /// Short: valued and triggered at the ask.
    Sell,
}

impl Side {
    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Buy => "buy",
            Self::Sell => "sell",
        }
    }
}

impl FromStr for Side {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "buy" => Ok(Self::Buy),
            "sell" => Ok(Self::Sell),
            other => Err(format!("side must be \"buy\" or \"sell\", got {other:?}")),
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a position closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloseReason {
    /// Stop loss.
    Sl,
    /// Take profit.
    Tp,
    /// Closed by an operator.
    Manual,
}

impl CloseReason {
    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sl => "sl",
            Self::Tp => "tp",
            Self::Manual => "manual",
        }
    }
}

/// What the trading core needs to know about a symbol.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct SymbolInfo {
    /// `EURUSD`.
    pub symbol: String,
    /// Decimal places of a price.
    pub digits: i16,
    /// Units per lot.
    pub contract_size: Decimal,
    /// Currency of prices and PnL.
    pub quote_currency: String,
}

impl SymbolInfo {
    /// Decimal places as `u32`.
    pub fn dp(&self) -> u32 {
        self.digits.max(0) as u32
    }
}

/// Every symbol.
pub async fn symbols(db: &PgPool) -> sqlx::Result<Vec<SymbolInfo>> {
    sqlx::query_as(
        "SELECT symbol, digits, contract_size, quote_currency FROM symbols ORDER BY symbol",
    )
    .fetch_all(db)
    .await
}

/// One symbol.
pub async fn symbol(db: &PgPool, symbol: &str) -> sqlx::Result<Option<SymbolInfo>> {
    sqlx::query_as(
        "SELECT symbol, digits, contract_size, quote_currency FROM symbols WHERE symbol = $1",
    )
    .bind(symbol)
    .fetch_optional(db)
    .await
}

/// Money digits per currency code.
pub async fn currency_digits(
    db: impl sqlx::PgExecutor<'_>,
) -> sqlx::Result<std::collections::HashMap<String, u32>> {
    let rows: Vec<(String, i16)> = sqlx::query_as("SELECT code, digits FROM currencies")
        .fetch_all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(c, d)| (c, d.max(0) as u32))
        .collect())
}

/// An error of a trading operation, shaped for HTTP (4xx names the problem) and the CLI.
#[derive(Debug, thiserror::Error)]
pub enum TradingError {
    /// 422: a field is invalid.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: the operation does not fit the current state (position closed, no fresh price).
    #[error("{0}")]
    Conflict(String),
    /// 503: Redis is unavailable.
    #[error("{0}")]
    Unavailable(String),
    /// 500.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl TradingError {
    /// A 422 for `field`.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}

impl From<sqlx::Error> for TradingError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.into())
    }
}

impl From<redis::RedisError> for TradingError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(format!("redis unavailable ({:?})", e.kind()).to_lowercase())
    }
}

/// Is `e` a PostgreSQL deadlock or serialization failure (worth retrying the transaction)?
pub(crate) fn is_retryable(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "40P01" || c == "40001")
}
