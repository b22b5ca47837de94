//! Where simulated bots get their accounts and API keys: `--create N --first-mt5 M` makes the
//! accounts `M..M+N` (one set-based `INSERT`, accounts that already exist are kept as they are)
//! and a fresh key for each, straight through the library; `--keys-file` reads `mt5,key` lines.
//!
//! Keys made here are labelled `simulate-bots` so they can be found and revoked afterwards; a
//! second run against the same accounts adds keys rather than reusing the first run's, which
//! were never stored.

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use rust_decimal::Decimal;
use sqlx::PgPool;

use crate::bots::apikeys;

/// Most accounts one `--create` makes.
pub const MAX_CREATE: u32 = 100_000;

/// One bot's identity. `Debug` hides the key.
#[derive(Clone)]
pub struct Credential {
    /// MT5 login.
    pub mt5: i64,
    /// Its API key.
    pub key: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("mt5", &self.mt5)
            .field("key", &"<hidden>")
            .finish()
    }
}

/// Parse a keys file: `mt5,key` per line; blank lines and `#` comments are skipped.
pub fn parse_keys(text: &str) -> anyhow::Result<Vec<Credential>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (mt5, key) = line
            .split_once(',')
            .with_context(|| format!("line {}: expected `mt5,key`", n + 1))?;
        let mt5: i64 = mt5
            .trim()
            .parse()
            .ok()
            .filter(|m| *m > 0)
            .with_context(|| format!("line {}: {:?} is not an MT5 login", n + 1, mt5.trim()))?;
        let key = key.trim();
        anyhow::ensure!(
            !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic()),
            "line {}: the key is empty or has characters a header cannot carry",
            n + 1
        );
        out.push(Credential {
            mt5,
            key: key.to_owned(),
        });
    }
    anyhow::ensure!(!out.is_empty(), "no `mt5,key` lines");
    Ok(out)
}

/// Create accounts `first..first + n` in `currency` with `balance` (skipping existing ones) and
/// one API key each.
pub async fn create(
    db: &PgPool,
    n: u32,
    first: i64,
    currency: &str,
    balance: Decimal,
) -> anyhow::Result<Vec<Credential>> {
    anyhow::ensure!(
        (1..=MAX_CREATE).contains(&n),
        "--create must be between 1 and {MAX_CREATE}"
    );
    let last = first
        .checked_add(i64::from(n) - 1)
        .filter(|_| first > 0)
        .context("--first-mt5 must be positive and leave room for --create accounts")?;
    anyhow::ensure!(balance >= Decimal::ZERO, "--balance must not be negative");
    let digits: Option<i16> = sqlx::query_scalar("SELECT digits FROM currencies WHERE code = $1")
        .bind(currency)
        .fetch_optional(db)
        .await?;
    let digits = digits.with_context(|| format!("--currency: unknown currency {currency:?}"))?;
    anyhow::ensure!(
        balance.normalize().scale() <= u32::try_from(digits).unwrap_or(0),
        "--balance: {balance} has more than {currency}'s {digits} decimal places"
    );
    // The bot reports this balance from its first heartbeat, so start the server's view (and
    // the drawdown peak) there rather than at 0.
    let created: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO trading_accounts
             (mt5_account_id, currency, balance, current_balance, peak_balance)
         SELECT g, $3, $4, $4, $4 FROM generate_series($1::bigint, $2::bigint) AS g
         ON CONFLICT (mt5_account_id) DO NOTHING
         RETURNING mt5_account_id",
    )
    .bind(first)
    .bind(last)
    .bind(currency)
    .bind(balance)
    .fetch_all(db)
    .await
    .context("creating the simulated accounts")?;
    tracing::info!(
        created = created.len(),
        existing = n as usize - created.len(),
        "simulated accounts {first}..={last}: {} created, {} already there",
        created.len(),
        n as usize - created.len()
    );
    // Two round trips per key; a few at once keeps 10,000 keys to seconds.
    futures::stream::iter(first..=last)
        .map(|mt5| async move {
            apikeys::create(db, mt5, Some("simulate-bots"))
                .await
                .map(|k| Credential { mt5, key: k.key })
                .with_context(|| format!("creating an API key for account {mt5}"))
        })
        .buffered(8)
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_files_skip_comments_and_name_the_bad_line() {
        let ok = parse_keys("# mt5,key\n\n1001, hlb_abc_def \n1002,hlb_x_y\n").expect("parsed");
        assert_eq!(
            ok.iter()
                .map(|c| (c.mt5, c.key.as_str()))
                .collect::<Vec<_>>(),
            [(1001, "hlb_abc_def"), (1002, "hlb_x_y")]
        );
        let err = parse_keys("1001,k\nabc,k\n").expect_err("bad login");
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(parse_keys("1001\n").is_err());
        assert!(parse_keys("1001,\n").is_err());
        assert!(parse_keys("-5,k\n").is_err());
        assert!(parse_keys("# nothing\n").is_err());
        assert!(!format!("{:?}", ok[0]).contains("hlb_"));
    }
}
