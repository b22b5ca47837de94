//! The audit log of back-office actions (`admin_actions`): who did what to which target, written
//! in the transaction of the change itself, so a change and its record commit together.
//!
//! Actors: `admin` or `admin:<X-Admin-Actor>` for the HTTP admin API, `cli:<user>` for the CLI.

use serde_json::Value;

/// Record `action` by `actor` on `target` in `tx`.
pub async fn record(
    tx: &mut sqlx::PgConnection,
    actor: &str,
    action: &str,
    target: Value,
    detail: Value,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO admin_actions (actor, action, target, detail) VALUES ($1, $2, $3, $4)",
    )
    .bind(actor)
    .bind(action)
    .bind(target)
    .bind(detail)
    .execute(tx)
    .await?;
    Ok(())
}
