//! Calm mode: a position's stress-free flags and its blurred PnL, in Redis only (UI state that
//! may be lost; PostgreSQL keeps the real PnL).
//!
//! Key layout (Redis 7.0 has no per-field TTL, so two keys):
//! - `calm:{POSITION_ID}`: hash `stress_free` = `1`, `hide_pnl` = `1`, `since` (ISO 8601 UTC),
//!   `by` (who enabled it); TTL 1 h. Enabling again restarts the hour.
//! - `calm:{POSITION_ID}:pnl`: hash `band_low`, `band_high`, `currency`, `as_of`; TTL 30 min
//!   (never beyond the flags' own expiry), rewritten by every revaluation while the flags live
//!   and only then. The band is [`money::blur`].
//! - `halol:calm_positions`: our index (ZSET, score = flags expiry in ms) so revaluation finds
//!   calm positions without scanning keys.
//!
//! A closed position's calm keys are deleted after its close commits, and any missed by that
//! are removed by the next revaluation. When Redis is down calm mode is skipped with a warning;
//! nothing else is affected.

use std::{sync::LazyLock, time::Duration};

use chrono::{DateTime, Utc};
use redis::AsyncCommands as _;
use rust_decimal::Decimal;

use super::{Trading, TradingError, money, prices::format_ts};

/// TTL of the flags.
pub const FLAGS_TTL: Duration = Duration::from_secs(3600);
/// TTL of the blurred PnL.
pub const PNL_TTL: Duration = Duration::from_secs(1800);

/// Write the blurred PnL only while the flags live, and never for longer than they do: a close
/// that deleted the flags between our read of the position and this write leaves nothing
/// behind. KEYS: flags, pnl. ARGV: PnL TTL (ms), band_low, band_high, currency, as_of.
static WRITE_PNL: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local left = redis.call('PTTL', KEYS[1])
        redis.call('DEL', KEYS[2])
        if left == -2 then
            return 0
        end
        local ttl = tonumber(ARGV[1])
        if left > 0 and left < ttl then
            ttl = left
        end
        redis.call('HSET', KEYS[2], 'band_low', ARGV[2], 'band_high', ARGV[3],
            'currency', ARGV[4], 'as_of', ARGV[5])
        redis.call('PEXPIRE', KEYS[2], ttl)
        return 1
        ",
    )
});

/// Put an open position in calm mode (restarting its hour).
pub async fn enable(t: &Trading, position_id: i64, by: &str) -> Result<(), TradingError> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM positions WHERE id = $1")
        .bind(position_id)
        .fetch_optional(&t.db)
        .await?;
    match status.as_deref() {
        None => return Err(TradingError::NotFound(format!("no position {position_id}"))),
        Some("open") => {}
        Some(_) => {
            return Err(TradingError::Conflict(format!(
                "position {position_id} is closed"
            )));
        }
    }
    let now = Utc::now();
    let expires = now + chrono::TimeDelta::from_std(FLAGS_TTL).unwrap_or_default();
    let mut conn = t.redis.manager();
    redis::pipe()
        .atomic()
        .del(t.keys.calm(position_id))
        .hset_multiple(
            t.keys.calm(position_id),
            &[
                ("stress_free", "1".to_owned()),
                ("hide_pnl", "1".to_owned()),
                ("since", format_ts(now)),
                ("by", by.to_owned()),
            ],
        )
        .expire(t.keys.calm(position_id), FLAGS_TTL.as_secs() as i64)
        .zadd(t.keys.calm_index(), position_id, expires.timestamp_millis())
        .query_async::<()>(&mut conn)
        .await?;
    // Blur the current PnL at once rather than waiting for the next revaluation.
    refresh_ids(t, &[position_id], now).await?;
    Ok(())
}

/// Take a position out of calm mode.
pub async fn disable(t: &Trading, position_id: i64) -> Result<bool, TradingError> {
    let mut conn = t.redis.manager();
    let (removed, _, _): (i64, i64, i64) = redis::pipe()
        .del(t.keys.calm(position_id))
        .del(t.keys.calm_pnl(position_id))
        .zrem(t.keys.calm_index(), position_id)
        .query_async(&mut conn)
        .await?;
    Ok(removed > 0)
}

/// Forget the calm state of closed positions (best effort: the next revaluation repairs it).
pub async fn forget(t: &Trading, ids: &[i64]) {
    let mut conn = t.redis.manager();
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.del(t.keys.calm(*id)).ignore();
        pipe.del(t.keys.calm_pnl(*id)).ignore();
        pipe.zrem(t.keys.calm_index(), *id).ignore();
    }
    if let Err(e) = pipe.query_async::<()>(&mut conn).await {
        tracing::warn!(
            "calm state of {} closed position(s) not removed now (the next revaluation will): {e}",
            ids.len()
        );
    }
}

/// Rewrite the blurred PnL of every position in calm mode; drop the state of closed ones and
/// expired index entries. Skipped with a warning when Redis is down.
pub async fn refresh(t: &Trading, now: DateTime<Utc>) {
    let result: Result<(), TradingError> = async {
        let mut conn = t.redis.manager();
        // Expired entries: their flags are gone, and their PnL never outlives the flags. (By
        // score, in one command: an entry re-enabled meanwhile has a new score and stays.)
        let _: i64 = conn
            .zrembyscore(t.keys.calm_index(), "-inf", now.timestamp_millis())
            .await?;
        let ids: Vec<i64> = conn
            .zrangebyscore(t.keys.calm_index(), now.timestamp_millis(), "+inf")
            .await?;
        for chunk in ids.chunks(1_000) {
            refresh_ids(t, chunk, now).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!("calm mode skipped this pass: {e}");
        metrics::counter!("halol_calm_skipped_total").increment(1);
    }
}

async fn refresh_ids(t: &Trading, ids: &[i64], now: DateTime<Utc>) -> Result<(), TradingError> {
    let rows: Vec<(i64, String, Option<Decimal>, String)> = sqlx::query_as(
        "SELECT id, status, unrealised_pnl, account_currency FROM positions WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&t.db)
    .await?;
    let mut conn = t.redis.manager();
    let mut pipe = redis::pipe();
    let mut gone: Vec<i64> = ids.to_vec();
    for (id, status, pnl, currency) in rows {
        if status != "open" {
            continue;
        }
        gone.retain(|g| *g != id);
        let Some(pnl) = pnl else {
            // No PnL yet (or no conversion price): no blurred figure rather than a wrong one.
            pipe.del(t.keys.calm_pnl(id)).ignore();
            continue;
        };
        let (low, high) = money::blur(pnl);
        pipe.invoke_script(
            WRITE_PNL
                .key(t.keys.calm(id))
                .key(t.keys.calm_pnl(id))
                .arg(PNL_TTL.as_millis() as u64)
                .arg(low.to_string())
                .arg(high.to_string())
                .arg(currency)
                .arg(format_ts(now)),
        )
        .ignore();
    }
    for id in gone {
        pipe.del(t.keys.calm(id)).ignore();
        pipe.del(t.keys.calm_pnl(id)).ignore();
        pipe.zrem(t.keys.calm_index(), id).ignore();
    }
    crate::redis_pool::query_with_script::<()>(&mut conn, &pipe, &WRITE_PNL).await?;
    Ok(())
}
