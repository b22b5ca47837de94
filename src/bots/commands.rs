//! Central bot commands — pause all, resume all, emergency stop (pause now and refuse resume
//! until cleared) and clearing it — for every account or a filter, in one transaction with
//! their audit record. Every bot sees the change through its trade-config version (bumped by
//! the database) and the push channel.

use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::trading::{Trading, TradingError};

/// Which accounts a command applies to (all when both are `None`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Filter {
    /// Only these MT5 logins.
    pub mt5_account_ids: Option<Vec<i64>>,
    /// Only accounts whose active bot is this strategy.
    pub active_bot_id: Option<i64>,
}

/// A central command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Pause every matching bot.
    PauseAll,
    /// Resume every matching bot not under an emergency stop.
    ResumeAll,
    /// Pause every matching bot and block resume until cleared.
    EmergencyStop,
    /// Lift the emergency stop (bots stay paused until resumed).
    ClearEmergency,
}

impl std::str::FromStr for Command {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pause_all" | "pause-all" => Ok(Self::PauseAll),
            "resume_all" | "resume-all" => Ok(Self::ResumeAll),
            "emergency_stop" | "emergency-stop" => Ok(Self::EmergencyStop),
            "clear_emergency" | "clear-emergency" => Ok(Self::ClearEmergency),
            other => Err(format!(
                "unknown command {other:?}; one of pause_all, resume_all, emergency_stop, clear_emergency"
            )),
        }
    }
}

/// What a command did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The command.
    pub command: Command,
    /// Accounts changed.
    pub changed: Vec<i64>,
    /// Accounts a resume left paused because of an emergency stop.
    pub held_by_emergency_stop: Vec<i64>,
}

const FILTER: &str = "($1::bigint[] IS NULL OR mt5_account_id = ANY($1))
    AND ($2::bigint IS NULL OR active_bot_id = $2)";

/// Run `command` for `filter` as `actor`, then publish.
pub async fn run(
    t: &Trading,
    actor: &str,
    command: Command,
    filter: &Filter,
) -> Result<Outcome, TradingError> {
    let mut tx = t.db.begin().await?;
    let sql = match command {
        Command::PauseAll => format!(
            "UPDATE trading_accounts SET
               bot_status = CASE WHEN bot_status = 'DOWN' THEN 'DOWN' ELSE 'PAUSED' END,
               status_before_down = CASE WHEN bot_status = 'DOWN' THEN 'PAUSED' END,
               updated_at = now()
             WHERE {FILTER} AND (bot_status = 'ACTIVE' OR status_before_down = 'ACTIVE')
             RETURNING mt5_account_id"
        ),
        Command::ResumeAll => format!(
            "UPDATE trading_accounts SET
               bot_status = CASE WHEN bot_status = 'DOWN' THEN 'DOWN' ELSE 'ACTIVE' END,
               status_before_down = CASE WHEN bot_status = 'DOWN' THEN 'ACTIVE' END,
               updated_at = now()
             WHERE {FILTER} AND NOT emergency_stop
               AND (bot_status = 'PAUSED' OR status_before_down = 'PAUSED')
             RETURNING mt5_account_id"
        ),
        Command::EmergencyStop => format!(
            "UPDATE trading_accounts SET
               bot_status = CASE WHEN bot_status = 'DOWN' THEN 'DOWN' ELSE 'PAUSED' END,
               status_before_down = CASE WHEN bot_status = 'DOWN' THEN 'PAUSED' END,
               emergency_stop = true, updated_at = now()
             WHERE {FILTER} AND NOT emergency_stop
             RETURNING mt5_account_id"
        ),
        Command::ClearEmergency => format!(
            "UPDATE trading_accounts SET emergency_stop = false, updated_at = now()
             WHERE {FILTER} AND emergency_stop
             RETURNING mt5_account_id"
        ),
    };
    let mut changed: Vec<i64> = sqlx::query_scalar(&sql)
        .bind(&filter.mt5_account_ids)
        .bind(filter.active_bot_id)
        .fetch_all(&mut *tx)
        .await?;
    changed.sort_unstable();
    let held: Vec<i64> = if command == Command::ResumeAll {
        sqlx::query_scalar(&format!(
            "SELECT mt5_account_id FROM trading_accounts WHERE {FILTER} AND emergency_stop
             ORDER BY mt5_account_id"
        ))
        .bind(&filter.mt5_account_ids)
        .bind(filter.active_bot_id)
        .fetch_all(&mut *tx)
        .await?
    } else {
        Vec::new()
    };
    crate::audit::record(
        &mut tx,
        actor,
        &serde_json::to_value(command)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        json!(filter),
        json!({ "changed": changed.len(), "held_by_emergency_stop": held }),
    )
    .await?;
    tx.commit().await?;
    tracing::warn!(
        actor,
        ?command,
        changed = changed.len(),
        "central bot command {command:?} by {actor}: {} account(s) changed",
        changed.len()
    );
    if let Err(e) = super::publish::drain_outbox(t).await {
        // Committed: the scheduled drain publishes it within seconds.
        tracing::warn!("publishing after {command:?} deferred to the next drain: {e}");
    }
    Ok(Outcome {
        command,
        changed,
        held_by_emergency_stop: held,
    })
}

/// The latest admin actions, newest first.
pub async fn recent_actions(db: &PgPool, limit: i64) -> sqlx::Result<Vec<Value>> {
    let rows: Vec<(
        i64,
        String,
        String,
        Value,
        Value,
        chrono::DateTime<chrono::Utc>,
    )> = sqlx::query_as(
        "SELECT id, actor, action, target, detail, at FROM admin_actions
             ORDER BY id DESC LIMIT $1",
    )
    .bind(limit.clamp(1, 1000))
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, actor, action, target, detail, at)| {
            json!({"id": id, "actor": actor, "action": action, "target": target, "detail": detail, "at": at})
        })
        .collect())
}
