//! Bot API keys: `hlb_<prefix>_<secret>`, shown once at creation. Only the SHA-256 of the whole
//! key is stored (the key is 256 random bits, so a fast hash is enough); the prefix finds the
//! row and the hash is compared in constant time. A key is scoped to one account; a revoked key
//! is refused at once.

use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq as _;

use crate::trading::TradingError;

/// A key just created: `key` is shown once and never stored.
#[derive(Debug, serde::Serialize)]
pub struct NewKey {
    /// Row id (to revoke it).
    pub id: i64,
    /// The account it is for.
    pub mt5_account_id: i64,
    /// The key itself.
    pub key: String,
}

/// SHA-256 of a presented key.
pub fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Create a key for `mt5` (an account must exist).
pub async fn create(db: &PgPool, mt5: i64, label: Option<&str>) -> Result<NewKey, TradingError> {
    let account: Option<i64> =
        sqlx::query_scalar("SELECT id FROM trading_accounts WHERE mt5_account_id = $1")
            .bind(mt5)
            .fetch_optional(db)
            .await?;
    let account = account.ok_or_else(|| TradingError::NotFound(format!("no account {mt5}")))?;
    let mut prefix = [0u8; 6];
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut prefix);
    rand::rng().fill_bytes(&mut secret);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let prefix = hex::encode(prefix);
    let key = format!("hlb_{prefix}_{}", b64.encode(secret));
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO bot_api_keys (account_id, prefix, key_hash, label) VALUES ($1, $2, $3, $4)
         RETURNING id",
    )
    .bind(account)
    .bind(&prefix)
    .bind(hash(&key))
    .bind(label)
    .fetch_one(db)
    .await?;
    Ok(NewKey {
        id,
        mt5_account_id: mt5,
        key,
    })
}

/// Revoke key `id`. Returns whether it was active.
pub async fn revoke(db: &PgPool, id: i64) -> Result<bool, TradingError> {
    let exists: Option<Option<chrono::DateTime<chrono::Utc>>> =
        sqlx::query_scalar("SELECT revoked_at FROM bot_api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?;
    if exists.is_none() {
        return Err(TradingError::NotFound(format!("no API key {id}")));
    }
    let done = sqlx::query(
        "UPDATE bot_api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The MT5 login `key` is for, if it is a valid, unrevoked key.
pub async fn verify(db: &PgPool, key: &str) -> sqlx::Result<Option<i64>> {
    let Some(prefix) = key
        .strip_prefix("hlb_")
        .and_then(|rest| rest.split_once('_'))
        .map(|(p, _)| p)
        .filter(|p| p.len() == 12 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    else {
        return Ok(None);
    };
    let row: Option<(Vec<u8>, i64)> = sqlx::query_as(
        "SELECT k.key_hash, a.mt5_account_id FROM bot_api_keys k
         JOIN trading_accounts a ON a.id = k.account_id
         WHERE k.prefix = $1 AND k.revoked_at IS NULL",
    )
    .bind(prefix)
    .fetch_optional(db)
    .await?;
    Ok(row.and_then(|(stored, mt5)| bool::from(stored.ct_eq(&hash(key))).then_some(mt5)))
}
