//! Bot configuration and heartbeats (seed 004): the REST documents bots fetch, the Redis keys
//! they poll, their API keys, the heartbeat/DOWN/drawdown job and the central bot commands.
//!
//! PostgreSQL is the truth. Config versions are bumped by database triggers in the changing
//! transaction (see `migrations/20261122020000_bots.sql`), which also queue the change in
//! `bot_config_outbox`; [`publish`] writes the Redis keys and the push message after commit.

pub mod apikeys;
pub mod commands;
pub mod config;
pub mod heartbeat;
pub mod manage;
pub mod publish;
pub mod simulate;

use std::time::Duration;

use crate::trading::CacheKeys;

/// TTL of `bot:trade_config:{id}` and `bot:strategy_config:{id}:{sid}` (the contract: 24 h).
pub const VERSION_TTL: Duration = Duration::from_secs(24 * 3600);
/// TTL of `server:heartbeat:{id}` (the contract: 300 s).
pub const SERVER_HEARTBEAT_TTL: Duration = Duration::from_secs(300);
/// TTL bots give `bot:heartbeat:{id}` (the contract: 60 s); also the DOWN threshold.
pub const BOT_HEARTBEAT_TTL: Duration = Duration::from_secs(60);

impl CacheKeys {
    /// `bot:heartbeat:{mt5_account_id}` (written by the bot).
    pub fn bot_heartbeat(&self, mt5: i64) -> String {
        format!("{}bot:heartbeat:{mt5}", self.namespace())
    }

    /// `server:heartbeat:{mt5_account_id}`.
    pub fn server_heartbeat(&self, mt5: i64) -> String {
        format!("{}server:heartbeat:{mt5}", self.namespace())
    }

    /// `bot:trade_config:{mt5_account_id}`.
    pub fn trade_config(&self, mt5: i64) -> String {
        format!("{}bot:trade_config:{mt5}", self.namespace())
    }

    /// `bot:strategy_config:{mt5_account_id}:{strategy_id}`.
    pub fn strategy_config(&self, mt5: i64, strategy_id: i64) -> String {
        format!(
            "{}bot:strategy_config:{mt5}:{strategy_id}",
            self.namespace()
        )
    }

    /// The push channel of one account: `bot:events:{mt5_account_id}`.
    pub fn bot_events(&self, mt5: i64) -> String {
        format!("{}bot:events:{mt5}", self.namespace())
    }
}
