//! Publishing bot config to Redis, always after commit and always from PostgreSQL's current
//! rows: `bot:trade_config:{id}` / `bot:strategy_config:{id}:{sid}` (`version`, TTL 24 h),
//! `server:heartbeat:{id}` (TTL 300 s), and a push on `bot:events:{id}`:
//! `{"kind":"trade_config","version":7}` or
//! `{"kind":"strategy_config","strategy_id":1,"version":3}`.
//!
//! A version key is never moved backwards: a publisher holding an older row than the one
//! already published leaves the keys alone. Push messages are at most once (Redis pub/sub);
//! polling the version keys stays the guarantee.

use std::{collections::BTreeSet, sync::LazyLock};

use chrono::Utc;
use serde_json::json;

use super::{
    SERVER_HEARTBEAT_TTL, VERSION_TTL,
    config::{self, ACCOUNT_COLUMNS, ACCOUNT_FROM, AccountRow, STRATEGY_SELECT, StrategyRow},
};
use crate::trading::{Trading, TradingError};

// KEYS[1] version key, KEYS[2] server heartbeat (or none); ARGV: version, version ttl,
// heartbeat ttl, then heartbeat field/value pairs. Returns 1 if written, 0 if a newer version
// is already published.
static WRITE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local cur = tonumber(redis.call('HGET', KEYS[1], 'version'))
        local v = tonumber(ARGV[1])
        if cur and cur > v then return 0 end
        redis.call('HSET', KEYS[1], 'version', ARGV[1])
        redis.call('EXPIRE', KEYS[1], ARGV[2])
        if #KEYS > 1 then
            local hb = {}
            for i = 4, #ARGV do hb[#hb + 1] = ARGV[i] end
            redis.call('HSET', KEYS[2], unpack(hb))
            redis.call('EXPIRE', KEYS[2], ARGV[3])
        end
        return 1
        ",
    )
});

/// What a publish did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Trade configs (and server heartbeats) written.
    pub accounts: usize,
    /// Strategy configs written.
    pub strategies: usize,
    /// Push messages sent.
    pub pushed: usize,
}

/// Write the keys of `accounts` and `strategies` (and push their versions if `push`).
pub async fn publish(
    t: &Trading,
    accounts: &[AccountRow],
    strategies: &[StrategyRow],
    push: bool,
) -> redis::RedisResult<Published> {
    let now = Utc::now();
    let mut pipe = redis::pipe();
    // Events go out only after the keys they announce are written (a retried pipeline must
    // not announce a version twice, or before it is there).
    let mut events = redis::pipe();
    for a in accounts {
        let mut call = WRITE.key(t.keys.trade_config(a.mt5_account_id));
        call.key(t.keys.server_heartbeat(a.mt5_account_id))
            .arg(a.trade_config_version)
            .arg(VERSION_TTL.as_secs())
            .arg(SERVER_HEARTBEAT_TTL.as_secs());
        for (field, value) in config::server_heartbeat(a, now) {
            call.arg(field).arg(value);
        }
        pipe.invoke_script(&call).ignore();
        if push {
            events
                .publish(
                    t.keys.bot_events(a.mt5_account_id),
                    json!({"kind": "trade_config", "version": a.trade_config_version}).to_string(),
                )
                .ignore();
        }
    }
    for s in strategies {
        let mut call = WRITE.key(t.keys.strategy_config(s.mt5_account_id, s.strategy_id));
        call.arg(s.version)
            .arg(VERSION_TTL.as_secs())
            .arg(SERVER_HEARTBEAT_TTL.as_secs());
        pipe.invoke_script(&call).ignore();
        if push {
            events.publish(
                t.keys.bot_events(s.mt5_account_id),
                json!({"kind": "strategy_config", "strategy_id": s.strategy_id, "version": s.version})
                    .to_string(),
            )
            .ignore();
        }
    }
    if accounts.is_empty() && strategies.is_empty() {
        return Ok(Published::default());
    }
    let mut conn = t.redis.manager();
    // Every write in the pipeline is idempotent (versions never move backwards).
    crate::redis_pool::query_with_script::<()>(&mut conn, &pipe, &WRITE).await?;
    if push {
        events.query_async::<()>(&mut conn).await?;
    }
    Ok(Published {
        accounts: accounts.len(),
        strategies: strategies.len(),
        pushed: if push {
            accounts.len() + strategies.len()
        } else {
            0
        },
    })
}

/// Publish what the outbox holds (changes committed since the last drain), then delete it. The
/// outbox rows are deleted in the same transaction that read them, committed only after Redis
/// took the keys: a failure leaves them for the next drain.
pub async fn drain_outbox(t: &Trading) -> Result<Published, TradingError> {
    let mut total = Published::default();
    for _ in 0..20 {
        let mut tx = t.db.begin().await?;
        let rows: Vec<(i64, Option<i64>)> = sqlx::query_as(
            "DELETE FROM bot_config_outbox
             WHERE id IN (SELECT id FROM bot_config_outbox ORDER BY id LIMIT 1000
                          FOR UPDATE SKIP LOCKED)
             RETURNING account_id, strategy_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            break;
        }
        let accounts: BTreeSet<i64> = rows.iter().filter(|r| r.1.is_none()).map(|r| r.0).collect();
        let strategies: BTreeSet<(i64, i64)> =
            rows.iter().filter_map(|r| r.1.map(|s| (r.0, s))).collect();
        let (account_rows, strategy_rows) = load(
            &mut tx,
            &accounts.into_iter().collect::<Vec<_>>(),
            &strategies,
        )
        .await?;
        let done = publish(t, &account_rows, &strategy_rows, true).await?;
        tx.commit().await?;
        total.accounts += done.accounts;
        total.strategies += done.strategies;
        total.pushed += done.pushed;
    }
    Ok(total)
}

async fn load(
    tx: &mut sqlx::PgConnection,
    account_ids: &[i64],
    strategies: &BTreeSet<(i64, i64)>,
) -> sqlx::Result<(Vec<AccountRow>, Vec<StrategyRow>)> {
    let accounts: Vec<AccountRow> = sqlx::query_as(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM {ACCOUNT_FROM} WHERE a.id = ANY($1)"
    ))
    .bind(account_ids)
    .fetch_all(&mut *tx)
    .await?;
    let (acc, strat): (Vec<i64>, Vec<i64>) = strategies.iter().copied().unzip();
    let strategies: Vec<StrategyRow> = sqlx::query_as(&format!(
        "{STRATEGY_SELECT}
         JOIN unnest($1::bigint[], $2::bigint[]) AS k(account_id, strategy_id)
           ON k.account_id = c.account_id AND k.strategy_id = c.strategy_id"
    ))
    .bind(&acc)
    .bind(&strat)
    .fetch_all(&mut *tx)
    .await?;
    Ok((accounts, strategies))
}

/// Rewrite the keys of every live account (and its strategies) from PostgreSQL: keeps the
/// server heartbeat and version keys alive well inside their TTLs and rebuilds them all after
/// Redis comes back empty. Drains the outbox first so pushes are not lost.
pub async fn refresh_all(t: &Trading) -> Result<Published, TradingError> {
    let mut total = drain_outbox(t).await?;
    let mut after = 0_i64;
    // Bounded: 10,000 pages of 1,000 accounts.
    for _ in 0..10_000 {
        let accounts: Vec<AccountRow> = sqlx::query_as(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM {ACCOUNT_FROM}
             WHERE a.account_status = 'ACTIVE' AND a.id > $1 ORDER BY a.id LIMIT 1000"
        ))
        .bind(after)
        .fetch_all(&t.db)
        .await?;
        let Some(last) = accounts.last() else {
            break;
        };
        after = last.id;
        let ids: Vec<i64> = accounts.iter().map(|a| a.id).collect();
        let strategies: Vec<StrategyRow> =
            sqlx::query_as(&format!("{STRATEGY_SELECT} WHERE c.account_id = ANY($1)"))
                .bind(&ids)
                .fetch_all(&t.db)
                .await?;
        let done = publish(t, &accounts, &strategies, false).await?;
        total.accounts += done.accounts;
        total.strategies += done.strategies;
    }
    Ok(total)
}

/// PostgreSQL channel the outbox trigger notifies on commit.
pub const NOTIFY_CHANNEL: &str = "halol_bot_config";

/// Publish committed changes as soon as PostgreSQL announces them (any writer, psql included),
/// until `stop`. Runs in every worker; several publishers share the outbox safely (SKIP LOCKED).
/// The scheduled drain stays the guarantee: a lost notification only delays a publish.
pub async fn listen(t: Trading, stop: tokio_util::sync::CancellationToken) {
    let mut backoff = std::time::Duration::from_millis(200);
    while !stop.is_cancelled() {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&t.db).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("bot config listener cannot connect: {e}; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
            tracing::warn!("LISTEN {NOTIFY_CHANNEL} failed: {e}");
            continue;
        }
        backoff = std::time::Duration::from_millis(200);
        // Changes committed while we were not listening.
        let _ = drain_outbox(&t).await;
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                n = listener.try_recv() => n,
            };
            match next {
                Ok(Some(_)) => {
                    if let Err(e) = drain_outbox(&t).await {
                        tracing::warn!(
                            "publishing bot config deferred to the scheduled drain: {e}"
                        );
                    }
                }
                // The connection dropped (notifications may be lost): drain, then re-listen.
                Ok(None) => {
                    let _ = drain_outbox(&t).await;
                }
                Err(e) => {
                    tracing::warn!("bot config listener lost its connection: {e}");
                    break;
                }
            }
        }
    }
}
