//! `check_bot_heartbeats` (every 5 s): read `bot:heartbeat:{id}` of every live account in one
//! pipeline (no `KEYS` scan), record last seen, balances and drawdown state in PostgreSQL, mark
//! a bot DOWN once when its heartbeat has been absent for more than 60 s, and bring it back on
//! its next heartbeat.
//!
//! Last seen is the **server's** time: the moment Redis received the heartbeat, derived from the
//! key's remaining TTL (`now − (60 s − PTTL)`); the bot's own timestamp is display only. A bot
//! goes DOWN at `last_seen + 60 s` (recorded as that time, not the detection time). A bot that
//! was PAUSED when it went down comes back PAUSED.
//!
//! Drawdown guard (all in the account currency; `equity` is the heartbeat's optional `equity`
//! field, else its `current_balance`):
//! - `peak` = the highest `current_balance` ever reported (server-side high-water mark);
//! - `day_ref` = the balance at the first heartbeat of the UTC day (rollover 00:00 UTC);
//! - daily DD % = (day_ref − equity) / day_ref × 100; max DD % = (peak − equity) / peak × 100;
//! - a breach (≥ the limit) sets `dd_blocked` with a reason (which bumps the trade-config
//!   version, so the bot pauses). Max-DD blocks win over daily ones and lift only by an admin;
//!   daily blocks lift at the next rollover.

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use super::BOT_HEARTBEAT_TTL;
use crate::trading::{Trading, TradingError};

/// What one pass did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Pass {
    /// Live accounts checked.
    pub accounts: usize,
    /// Heartbeats read.
    pub alive: usize,
    /// Bots newly marked DOWN.
    pub went_down: Vec<i64>,
    /// Bots back from DOWN.
    pub came_back: Vec<i64>,
    /// Accounts newly DD-blocked.
    pub blocked: Vec<i64>,
    /// Malformed heartbeats skipped.
    pub malformed: usize,
}

#[derive(Debug, sqlx::FromRow)]
struct Live {
    id: i64,
    mt5_account_id: i64,
    bot_status: String,
    status_before_down: Option<String>,
    last_seen_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    peak_balance: Decimal,
    day_ref_balance: Option<Decimal>,
    day_ref_date: Option<NaiveDate>,
    dd_blocked: bool,
    dd_block_kind: Option<String>,
    dd_block_reason: Option<String>,
    dd_protection_enabled: bool,
    daily_dd_limit_percent: Decimal,
    max_account_dd_percent: Decimal,
}

/// A parsed bot heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct Beat {
    /// Reported balance.
    pub current_balance: Decimal,
    /// Reported equity, if the bot sends it.
    pub equity: Option<Decimal>,
    /// Remaining TTL of the key, ms (−1 = no TTL).
    pub pttl_ms: i64,
}

/// The fields read from `bot:heartbeat:{id}`.
pub const FIELDS: [&str; 4] = ["current_balance", "equity", "timestamp", "bot_status"];

/// Parse an `HMGET` of [`FIELDS`]; `Ok(None)` when the key is absent.
pub fn parse(fields: &[Option<String>], pttl_ms: i64) -> Result<Option<Beat>, String> {
    if pttl_ms == -2 || fields.iter().all(Option::is_none) {
        return Ok(None);
    }
    let decimal = |name: &str, v: &Option<String>| -> Result<Option<Decimal>, String> {
        v.as_deref()
            .map(|raw| {
                raw.trim()
                    .parse::<Decimal>()
                    .map_err(|_| format!("{name}={raw:?} is not a decimal"))
            })
            .transpose()
    };
    let current_balance = decimal("current_balance", &fields[0])?
        .ok_or_else(|| "field current_balance is missing".to_owned())?;
    let equity = decimal("equity", &fields[1])?;
    if current_balance < Decimal::ZERO || equity.is_some_and(|e| e < Decimal::ZERO) {
        return Err("negative balance or equity".into());
    }
    Ok(Some(Beat {
        current_balance,
        equity,
        pttl_ms,
    }))
}

/// The drawdown verdict for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dd {
    /// `daily`, `max` or none.
    pub kind: Option<&'static str>,
    /// Human reason.
    pub reason: Option<String>,
}

/// Drawdown in percent of `reference` (0 when `reference` ≤ 0).
pub fn drawdown_pct(reference: Decimal, equity: Decimal) -> Decimal {
    if reference <= Decimal::ZERO {
        return Decimal::ZERO;
    }
    (reference - equity) / reference * Decimal::ONE_HUNDRED
}

/// Decide the block after a heartbeat. `current` is the block in force (kind) and whether the
/// day rolled over since it was set.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    enabled: bool,
    current: Option<&str>,
    current_reason: Option<&str>,
    rolled_over: bool,
    peak: Decimal,
    day_ref: Decimal,
    equity: Decimal,
    daily_limit: Decimal,
    max_limit: Decimal,
) -> Dd {
    let keep = |kind: &'static str| Dd {
        kind: Some(kind),
        reason: current_reason.map(str::to_owned),
    };
    if current == Some("max") {
        return keep("max");
    }
    if enabled {
        let max_dd = drawdown_pct(peak, equity);
        if max_dd >= max_limit {
            return Dd {
                kind: Some("max"),
                reason: Some(format!(
                    "max drawdown {}% >= limit {}% (peak {peak}, equity {equity})",
                    max_dd.round_dp(2),
                    max_limit.normalize()
                )),
            };
        }
    }
    if current == Some("daily") && !rolled_over {
        return keep("daily");
    }
    if enabled {
        let daily = drawdown_pct(day_ref, equity);
        if daily >= daily_limit {
            return Dd {
                kind: Some("daily"),
                reason: Some(format!(
                    "daily drawdown {}% >= limit {}% (start of day {day_ref}, equity {equity})",
                    daily.round_dp(2),
                    daily_limit.normalize()
                )),
            };
        }
    }
    Dd {
        kind: None,
        reason: None,
    }
}

/// Run one pass at `now`.
pub async fn check(t: &Trading, now: DateTime<Utc>) -> Result<Pass, TradingError> {
    let live: Vec<Live> = sqlx::query_as(
        "SELECT id, mt5_account_id, bot_status, status_before_down, last_seen_at, created_at,
                peak_balance, day_ref_balance, day_ref_date, dd_blocked, dd_block_kind,
                dd_block_reason, dd_protection_enabled, daily_dd_limit_percent,
                max_account_dd_percent
         FROM trading_accounts WHERE account_status = 'ACTIVE' ORDER BY id",
    )
    .fetch_all(&t.db)
    .await?;
    let mut pass = Pass {
        accounts: live.len(),
        ..Pass::default()
    };
    let mut beats: Vec<(Vec<Option<String>>, i64)> = Vec::with_capacity(live.len());
    let mut conn = t.redis.manager();
    for chunk in live.chunks(2_000) {
        let mut pipe = redis::pipe();
        for a in chunk {
            let key = t.keys.bot_heartbeat(a.mt5_account_id);
            pipe.cmd("HMGET").arg(&key).arg(&FIELDS[..]);
            pipe.cmd("PTTL").arg(&key);
        }
        let raw: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        for pair in raw.chunks(2) {
            let fields: Vec<Option<String>> =
                redis::from_redis_value_ref(&pair[0]).unwrap_or_default();
            let pttl: i64 = redis::from_redis_value_ref(&pair[1]).unwrap_or(-2);
            beats.push((fields, pttl));
        }
    }

    let today = now.date_naive();
    let ttl_ms = BOT_HEARTBEAT_TTL.as_millis() as i64;
    let mut up = Updates::default();
    let mut down: Vec<(i64, DateTime<Utc>)> = Vec::new();
    for (a, (fields, pttl)) in live.iter().zip(beats) {
        let beat = match parse(&fields, pttl) {
            Ok(b) => b,
            Err(why) => {
                let key = t.keys.bot_heartbeat(a.mt5_account_id);
                tracing::warn!(key = %key, "skipping malformed heartbeat {key}: {why}");
                metrics::counter!("halol_bot_heartbeats_malformed_total").increment(1);
                pass.malformed += 1;
                continue;
            }
        };
        let Some(beat) = beat else {
            let last = a.last_seen_at.unwrap_or(a.created_at);
            if a.bot_status != "DOWN" && now - last > TimeDelta::milliseconds(ttl_ms) {
                down.push((a.id, last + TimeDelta::milliseconds(ttl_ms)));
            }
            continue;
        };
        pass.alive += 1;
        let age_ms = if beat.pttl_ms >= 0 {
            (ttl_ms - beat.pttl_ms).clamp(0, ttl_ms)
        } else {
            0
        };
        let seen = now - TimeDelta::milliseconds(age_ms);
        let equity = beat.equity.unwrap_or(beat.current_balance);
        let peak = a.peak_balance.max(beat.current_balance);
        let rolled_over = a.day_ref_date != Some(today);
        let day_ref = match (rolled_over, a.day_ref_balance) {
            (false, Some(r)) => r,
            _ => beat.current_balance,
        };
        let dd = evaluate(
            a.dd_protection_enabled,
            a.dd_block_kind.as_deref(),
            a.dd_block_reason.as_deref(),
            rolled_over,
            peak,
            day_ref,
            equity,
            a.daily_dd_limit_percent,
            a.max_account_dd_percent,
        );
        if dd.kind.is_some() && !a.dd_blocked {
            pass.blocked.push(a.mt5_account_id);
            tracing::warn!(mt5_account_id = a.mt5_account_id, reason = ?dd.reason, "bot {} DD-blocked", a.mt5_account_id);
        }
        let status = if a.bot_status == "DOWN" {
            pass.came_back.push(a.mt5_account_id);
            tracing::info!(
                mt5_account_id = a.mt5_account_id,
                "bot {} is back",
                a.mt5_account_id
            );
            a.status_before_down
                .clone()
                .unwrap_or_else(|| "ACTIVE".into())
        } else {
            a.bot_status.clone()
        };
        up.push(
            a,
            seen,
            beat.current_balance,
            peak,
            equity,
            day_ref,
            today,
            &dd,
            status,
        );
    }

    let mut tx = t.db.begin().await?;
    if !up.ids.is_empty() {
        // Optimistic: a row an admin changed since we read it (status or block) is left for the
        // next pass rather than overwritten.
        sqlx::query(
            "UPDATE trading_accounts a
             SET last_seen_at = u.seen, current_balance = u.balance, peak_balance = u.peak,
                 equity = u.equity, day_ref_balance = u.day_ref, day_ref_date = u.day,
                 dd_blocked = u.kind IS NOT NULL, dd_block_kind = u.kind,
                 dd_block_reason = u.reason, bot_status = u.status,
                 status_before_down = NULL, bot_down_at = NULL, updated_at = now()
             FROM unnest($1::bigint[], $2::timestamptz[], $3::numeric[], $4::numeric[],
                         $5::numeric[], $6::numeric[], $7::date[], $8::text[], $9::text[],
                         $10::text[], $11::text[], $12::text[])
                  AS u(id, seen, balance, peak, equity, day_ref, day, kind, reason, status,
                       prev_status, prev_kind)
             WHERE a.id = u.id AND a.bot_status = u.prev_status
               AND a.dd_block_kind IS NOT DISTINCT FROM u.prev_kind",
        )
        .bind(&up.ids)
        .bind(&up.seen)
        .bind(&up.balance)
        .bind(&up.peak)
        .bind(&up.equity)
        .bind(&up.day_ref)
        .bind(&up.day)
        .bind(&up.kind)
        .bind(&up.reason)
        .bind(&up.status)
        .bind(&up.prev_status)
        .bind(&up.prev_kind)
        .execute(&mut *tx)
        .await?;
    }
    if !down.is_empty() {
        let (ids, at): (Vec<i64>, Vec<DateTime<Utc>>) = down.into_iter().unzip();
        let marked: Vec<i64> = sqlx::query_scalar(
            "UPDATE trading_accounts a
             SET status_before_down = a.bot_status, bot_status = 'DOWN', bot_down_at = d.at,
                 updated_at = now()
             FROM unnest($1::bigint[], $2::timestamptz[]) AS d(id, at)
             WHERE a.id = d.id AND a.bot_status <> 'DOWN'
             RETURNING a.mt5_account_id",
        )
        .bind(&ids)
        .bind(&at)
        .fetch_all(&mut *tx)
        .await?;
        let mut marked = marked;
        marked.sort_unstable();
        for mt5 in &marked {
            tracing::warn!(
                mt5_account_id = mt5,
                "bot {mt5} is DOWN: no heartbeat for over 60 s"
            );
        }
        metrics::counter!("halol_bots_went_down_total").increment(marked.len() as u64);
        pass.went_down = marked;
    }
    tx.commit().await?;
    super::publish::drain_outbox(t).await?;
    Ok(pass)
}

#[derive(Default)]
struct Updates {
    ids: Vec<i64>,
    seen: Vec<DateTime<Utc>>,
    balance: Vec<Decimal>,
    peak: Vec<Decimal>,
    equity: Vec<Decimal>,
    day_ref: Vec<Decimal>,
    day: Vec<NaiveDate>,
    kind: Vec<Option<String>>,
    reason: Vec<Option<String>>,
    status: Vec<String>,
    prev_status: Vec<String>,
    prev_kind: Vec<Option<String>>,
}

impl Updates {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        a: &Live,
        seen: DateTime<Utc>,
        balance: Decimal,
        peak: Decimal,
        equity: Decimal,
        day_ref: Decimal,
        day: NaiveDate,
        dd: &Dd,
        status: String,
    ) {
        self.ids.push(a.id);
        self.seen.push(seen);
        self.balance.push(balance);
        self.peak.push(peak);
        self.equity.push(equity);
        self.day_ref.push(day_ref);
        self.day.push(day);
        self.kind.push(dd.kind.map(str::to_owned));
        self.reason.push(dd.reason.clone());
        self.status.push(status);
        self.prev_status.push(a.bot_status.clone());
        self.prev_kind.push(a.dd_block_kind.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().expect("decimal")
    }

    #[test]
    fn drawdown_formulas_and_boundaries() {
        assert_eq!(drawdown_pct(d("10000"), d("9500")), d("5"));
        // Exactly at the limit blocks (≥).
        let at = evaluate(
            true,
            None,
            None,
            false,
            d("10000"),
            d("10000"),
            d("9500"),
            d("5"),
            d("10"),
        );
        assert_eq!(at.kind, Some("daily"));
        let below = evaluate(
            true,
            None,
            None,
            false,
            d("10000"),
            d("10000"),
            d("9501"),
            d("5"),
            d("10"),
        );
        assert_eq!(below.kind, None);
        // Max DD from the peak wins over daily.
        let max = evaluate(
            true,
            None,
            None,
            false,
            d("12000"),
            d("10000"),
            d("10800"),
            d("20"),
            d("10"),
        );
        assert_eq!(max.kind, Some("max"));
        // Disabled protection never blocks.
        assert_eq!(
            evaluate(
                false,
                None,
                None,
                false,
                d("12000"),
                d("10000"),
                d("1"),
                d("5"),
                d("10")
            )
            .kind,
            None
        );
    }

    #[test]
    fn blocks_are_sticky_daily_until_rollover_max_until_an_admin() {
        // Recovered intraday: the daily block stays.
        let kept = evaluate(
            true,
            Some("daily"),
            Some("r"),
            false,
            d("10000"),
            d("10000"),
            d("10000"),
            d("5"),
            d("10"),
        );
        assert_eq!(
            (kept.kind, kept.reason.as_deref()),
            (Some("daily"), Some("r"))
        );
        // Next day: lifted.
        let lifted = evaluate(
            true,
            Some("daily"),
            Some("r"),
            true,
            d("10000"),
            d("10000"),
            d("10000"),
            d("5"),
            d("10"),
        );
        assert_eq!(lifted.kind, None);
        // Max: kept across days.
        let max = evaluate(
            true,
            Some("max"),
            Some("m"),
            true,
            d("10000"),
            d("10000"),
            d("10000"),
            d("5"),
            d("10"),
        );
        assert_eq!(max.kind, Some("max"));
    }

    #[test]
    fn heartbeats_parse_or_say_why_not() {
        let f = |v: &[Option<&str>]| v.iter().map(|s| s.map(str::to_owned)).collect::<Vec<_>>();
        assert_eq!(parse(&f(&[None, None, None, None]), -2), Ok(None));
        let beat = parse(&f(&[Some("100.5"), None, Some("x"), None]), 59_000)
            .expect("ok")
            .expect("beat");
        assert_eq!((beat.current_balance, beat.equity), (d("100.5"), None));
        assert!(parse(&f(&[Some("abc"), None, None, None]), 1).is_err());
        assert!(parse(&f(&[None, Some("1"), None, None]), 1).is_err());
        assert!(parse(&f(&[Some("-1"), None, None, None]), 1).is_err());
    }
}
