//! One simulated bot, following seed 004's bot flow:
//! - every heartbeat period: write `bot:heartbeat:{id}` (HSET + EXPIRE 60 s in one MULTI), then
//!   read `server:heartbeat:{id}` and pause while the server says PAUSED, the subscription is
//!   not ACTIVE or a drawdown block is set; resume when all clear;
//! - every version period: read the trade-config version (and the given strategies'); a missing
//!   key is "unknown", so fetch; on a change, fetch with `If-None-Match` (304 = unchanged);
//! - on a push message (with `--push`): fetch at once.
//!
//! While ACTIVE the balance random-walks by ≤ 0.05 % a beat and equity floats ±0.2 % around it;
//! from `--drawdown-at` equity sits `--drawdown-percent` below the balance, to trip the
//! server's drawdown guard.
//!
//! Every bot runs inside a `bot` span carrying `mt5_account_id`, so its events do not repeat it.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{SecondsFormat, Utc};
use rand::Rng as _;
use redis::aio::ConnectionManager;
use rust_decimal::Decimal;
use tokio::{
    sync::mpsc,
    time::{Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;

use super::{
    fetch::{self, Http, Outcome},
    stats::Stats,
};
use crate::{bots::BOT_HEARTBEAT_TTL, trading::CacheKeys};

/// What every bot of a run shares.
pub struct Ctx {
    /// The shared Redis connection.
    pub redis: ConnectionManager,
    /// Key names (namespace included).
    pub keys: CacheKeys,
    /// The REST client.
    pub http: Http,
    /// Heartbeat period.
    pub heartbeat_every: Duration,
    /// Version-check period.
    pub version_every: Duration,
    /// Stop a bot after this many heartbeats.
    pub max_heartbeats: Option<u64>,
    /// When equity drops, and by what percent.
    pub drawdown: Option<(Instant, Decimal)>,
    /// Cancelled at the end of the run or on a signal.
    pub cancel: CancellationToken,
}

#[derive(Debug, Default)]
struct Tracked {
    version: Option<i64>,
    etag: Option<String>,
    /// The last fetch failed: repeats are logged at debug, not once a period per bot.
    failing: bool,
}

/// One bot's state.
pub struct Bot {
    mt5: i64,
    key: String,
    paused: bool,
    balance: Decimal,
    peak: Decimal,
    equity: Decimal,
    dd_blocked: bool,
    dd_reason: String,
    trade: Tracked,
    strategies: HashMap<i64, Tracked>,
    push: Option<mpsc::Receiver<String>>,
    stats: Stats,
}

/// Why the server's instructions pause a bot, if they do.
pub fn pause_reason(
    bot_status: Option<&str>,
    subscription_status: Option<&str>,
    dd_blocked: bool,
) -> Option<&'static str> {
    if bot_status == Some("PAUSED") {
        Some("the server paused it")
    } else if subscription_status.is_some_and(|s| s != "ACTIVE") {
        Some("the subscription is not active")
    } else if dd_blocked {
        Some("drawdown protection blocked it")
    } else {
        None
    }
}

impl Bot {
    /// A bot for account `mt5` holding `key`, starting with `balance`.
    pub fn new(
        mt5: i64,
        key: String,
        balance: Decimal,
        strategies: &[i64],
        push: Option<mpsc::Receiver<String>>,
    ) -> Self {
        Self {
            mt5,
            key,
            paused: false,
            balance,
            peak: balance,
            equity: balance,
            dd_blocked: false,
            dd_reason: String::new(),
            trade: Tracked::default(),
            strategies: strategies
                .iter()
                .map(|s| (*s, Tracked::default()))
                .collect(),
            push,
            stats: Stats::default(),
        }
    }

    /// Run until the context is cancelled or `max_heartbeats` are sent.
    pub async fn run(mut self, ctx: Arc<Ctx>) -> Stats {
        // Spread the bots over one period so they do not all beat in the same millisecond.
        let spread = ctx.heartbeat_every.mul_f64(rand::random::<f64>());
        let start = Instant::now() + spread;
        let mut beat = tokio::time::interval_at(start, ctx.heartbeat_every);
        let mut check = tokio::time::interval_at(start, ctx.version_every);
        beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut push = self.push.take();
        // Bounded in time by `ctx.cancel` and in count by this cap.
        for _ in 0..10_000_000u64 {
            tokio::select! {
                biased;
                () = ctx.cancel.cancelled() => break,
                _ = beat.tick() => {
                    self.heartbeat(&ctx).await;
                    if ctx.max_heartbeats.is_some_and(|m| self.stats.heartbeats_sent >= m) {
                        break;
                    }
                }
                _ = check.tick() => self.check_versions(&ctx).await,
                Some(msg) = async { push.as_mut()?.recv().await } => {
                    self.stats.push_messages += 1;
                    self.on_push(&ctx, &msg).await;
                }
            }
        }
        self.stats
    }

    fn step_balances(&mut self, ctx: &Ctx) {
        let mut rng = rand::rng();
        if !self.paused {
            let drift = Decimal::new(rng.random_range(-5..=5), 4);
            self.balance = (self.balance + self.balance * drift)
                .round_dp(2)
                .max(Decimal::ZERO);
            self.peak = self.peak.max(self.balance);
        }
        let float = if self.paused {
            Decimal::ZERO
        } else {
            Decimal::new(rng.random_range(-20..=20), 4)
        };
        self.equity = (self.balance + self.balance * float).round_dp(2);
        if let Some((at, pct)) = ctx.drawdown
            && Instant::now() >= at
        {
            self.equity = (self.balance * (Decimal::ONE_HUNDRED - pct) / Decimal::ONE_HUNDRED)
                .round_dp(2)
                .max(Decimal::ZERO);
        }
    }

    async fn heartbeat(&mut self, ctx: &Ctx) {
        self.step_balances(ctx);
        let key = ctx.keys.bot_heartbeat(self.mt5);
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let fields = [
            ("mt5_account_id", self.mt5.to_string()),
            ("timestamp", now.clone()),
            ("bot_status", self.status().to_owned()),
            ("current_balance", self.balance.to_string()),
            ("peak_balance", self.peak.to_string()),
            ("equity", self.equity.to_string()),
            ("dd_blocked", self.dd_blocked.to_string()),
            ("dd_block_reason", self.dd_reason.clone()),
            ("last_seen", now),
        ];
        let ttl = BOT_HEARTBEAT_TTL.as_secs() as i64;
        let mut conn = ctx.redis.clone();
        let written: redis::RedisResult<()> = redis::pipe()
            .atomic()
            .hset_multiple(&key, &fields)
            .ignore()
            .expire(&key, ttl)
            .ignore()
            .query_async(&mut conn)
            .await;
        match written {
            Ok(()) => self.stats.heartbeats_sent += 1,
            Err(e) => {
                self.stats.heartbeat_errors += 1;
                tracing::warn!(error = %e, "bot {}: heartbeat not written", self.mt5);
                return;
            }
        }
        let server: redis::RedisResult<HashMap<String, String>> = redis::cmd("HGETALL")
            .arg(ctx.keys.server_heartbeat(self.mt5))
            .query_async(&mut conn)
            .await;
        match server {
            Ok(s) if s.is_empty() => self.stats.server_heartbeats_missing += 1,
            Ok(s) => {
                self.stats.server_heartbeats_read += 1;
                let dd = s.get("dd_blocked").map(|v| v == "true");
                self.obey(
                    s.get("bot_status").map(String::as_str),
                    s.get("subscription_status").map(String::as_str),
                    dd,
                    s.get("dd_block_reason").map(String::as_str),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "bot {}: server heartbeat not read", self.mt5);
            }
        }
    }

    fn status(&self) -> &'static str {
        if self.paused { "PAUSED" } else { "ACTIVE" }
    }

    fn obey(
        &mut self,
        bot_status: Option<&str>,
        subscription_status: Option<&str>,
        dd_blocked: Option<bool>,
        dd_reason: Option<&str>,
    ) {
        if let Some(blocked) = dd_blocked {
            if blocked && !self.dd_blocked {
                self.stats.dd_blocks_seen += 1;
            }
            self.dd_blocked = blocked;
            self.dd_reason = dd_reason.unwrap_or_default().to_owned();
        }
        let reason = pause_reason(bot_status, subscription_status, self.dd_blocked);
        match (self.paused, reason) {
            (false, Some(why)) => {
                self.paused = true;
                self.stats.pauses_seen += 1;
                tracing::info!(reason = why, "bot {} pauses: {why}", self.mt5);
            }
            (true, None) => {
                self.paused = false;
                self.stats.resumes_seen += 1;
                tracing::info!("bot {} resumes", self.mt5);
            }
            _ => {}
        }
    }

    async fn check_versions(&mut self, ctx: &Ctx) {
        let mut ids: Vec<i64> = self.strategies.keys().copied().collect();
        ids.sort_unstable();
        let mut pipe = redis::pipe();
        pipe.hget(ctx.keys.trade_config(self.mt5), "version");
        for sid in &ids {
            pipe.hget(ctx.keys.strategy_config(self.mt5, *sid), "version");
        }
        let mut conn = ctx.redis.clone();
        let versions: Vec<Option<String>> = match pipe.query_async(&mut conn).await {
            Ok(v) => v,
            Err(e) => {
                self.stats.version_errors += 1;
                tracing::warn!(error = %e, "bot {}: versions not read", self.mt5);
                return;
            }
        };
        self.stats.version_checks += versions.len() as u64;
        let parsed: Vec<Option<i64>> = versions
            .iter()
            .map(|v| v.as_deref().and_then(|v| v.trim().parse().ok()))
            .collect();
        self.stats.versions_missing += parsed.iter().filter(|v| v.is_none()).count() as u64;
        if let Some(&seen) = parsed.first()
            && (seen.is_none() || seen != self.trade.version)
        {
            self.fetch(ctx, None).await;
        }
        for (sid, seen) in ids.into_iter().zip(parsed.into_iter().skip(1)) {
            let held = self.strategies.get(&sid).and_then(|t| t.version);
            if seen.is_none() || seen != held {
                self.fetch(ctx, Some(sid)).await;
            }
        }
    }

    async fn on_push(&mut self, ctx: &Ctx, msg: &str) {
        let parsed: serde_json::Value = serde_json::from_str(msg).unwrap_or_default();
        let strategy = parsed
            .get("strategy_id")
            .and_then(serde_json::Value::as_i64)
            .filter(|sid| self.strategies.contains_key(sid));
        if parsed.get("kind").and_then(serde_json::Value::as_str) == Some("strategy_config")
            && strategy.is_none()
        {
            return;
        }
        self.fetch(ctx, strategy).await;
    }

    /// Fetch the trade config (`None`) or one strategy's, conditionally on the held ETag.
    async fn fetch(&mut self, ctx: &Ctx, strategy: Option<i64>) {
        let path = match strategy {
            None => format!("/api/bot/trade-config/{}/", self.mt5),
            Some(sid) => format!("/api/bot/strategy-config/{}/{sid}/", self.mt5),
        };
        let held = match strategy {
            None => &self.trade,
            Some(sid) => self.strategies.entry(sid).or_default(),
        };
        let etag = held.etag.clone();
        let done = ctx
            .http
            .get(&path, &self.key, etag.as_deref(), &ctx.cancel)
            .await;
        self.stats.fetch_retries += u64::from(done.retries);
        self.stats.latencies_us.extend(done.latencies_us);
        let held = match strategy {
            None => &mut self.trade,
            Some(sid) => self.strategies.entry(sid).or_default(),
        };
        let (etag, body) = match done.result {
            Ok(Outcome::Fresh { etag, body }) => {
                self.stats.fetches_200 += 1;
                (etag, Some(body))
            }
            Ok(Outcome::NotModified { etag }) => {
                self.stats.fetches_304 += 1;
                (etag, None)
            }
            Err(fetch::FetchError::Cancelled) => return,
            Err(e) => {
                self.stats.fetch_errors += 1;
                let error = fetch::chain(&e);
                if held.failing {
                    tracing::debug!(path = %path, error = %error, "bot {}: fetching {path} failed again", self.mt5);
                } else {
                    tracing::warn!(path = %path, error = %error, "bot {}: fetching {path} failed", self.mt5);
                }
                held.failing = true;
                return;
            }
        };
        if held.failing {
            tracing::info!(path = %path, "bot {}: fetching {path} works again", self.mt5);
            held.failing = false;
        }
        let version = body
            .as_ref()
            .and_then(|b| b.get("version"))
            .and_then(serde_json::Value::as_i64)
            .or_else(|| etag.as_deref().and_then(fetch::etag_version));
        if etag.is_some() {
            held.etag = etag;
        }
        if version.is_some() {
            held.version = version;
        }
        if let (None, Some(b)) = (strategy, body) {
            let text = |f: &str| b.get(f).and_then(serde_json::Value::as_str);
            self.obey(
                text("bot_status"),
                text("subscription_status"),
                b.get("dd_blocked").and_then(serde_json::Value::as_bool),
                text("dd_block_reason"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bot_pauses_for_the_server_the_subscription_or_a_drawdown_block() {
        assert_eq!(pause_reason(Some("ACTIVE"), Some("ACTIVE"), false), None);
        assert_eq!(pause_reason(None, None, false), None);
        assert!(pause_reason(Some("PAUSED"), Some("ACTIVE"), false).is_some());
        assert!(pause_reason(Some("ACTIVE"), Some("EXPIRED"), false).is_some());
        assert!(pause_reason(Some("ACTIVE"), Some("CANCELLED"), false).is_some());
        assert!(pause_reason(Some("ACTIVE"), Some("ACTIVE"), true).is_some());
    }
}
