//! Conversion of PnL from a symbol's quote currency into an account's currency.
//!
//! Rate quote→account = mid of `price:{QUOTE}{ACCOUNT}` if cached, else 1 / mid of
//! `price:{ACCOUNT}{QUOTE}`. The mid (not bid or ask) is used so a conversion never adds a
//! spread of its own. A missing or stale conversion price gives no rate and a reason: the PnL is
//! then NULL with that reason, never 0.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use redis::aio::ConnectionLike;
use rust_decimal::Decimal;

use super::{CacheKeys, prices};

/// Rates from one quote currency into every account currency asked for.
#[derive(Debug, Clone, Default)]
pub struct Rates {
    rates: HashMap<(String, String), Result<Decimal, String>>,
}

impl Rates {
    /// Rate from `quote` into `account`, or why there is none.
    pub fn get(&self, quote: &str, account: &str) -> Result<Decimal, String> {
        if quote == account {
            return Ok(Decimal::ONE);
        }
        self.rates
            .get(&(quote.to_owned(), account.to_owned()))
            .cloned()
            .unwrap_or_else(|| Err(format!("no conversion price for {quote}{account}")))
    }

    /// The pairs that have a rate: `(quote, account, rate)`.
    pub fn known(&self) -> impl Iterator<Item = (&str, &str, Decimal)> {
        self.rates
            .iter()
            .filter_map(|((q, a), r)| r.as_ref().ok().map(|r| (q.as_str(), a.as_str(), *r)))
    }

    /// Load the rates for every (quote, account) pair in one Redis round trip.
    pub async fn load(
        conn: &mut impl ConnectionLike,
        keys: &CacheKeys,
        pairs: &[(String, String)],
        now: DateTime<Utc>,
        max_age: Duration,
    ) -> redis::RedisResult<Self> {
        let wanted: Vec<&(String, String)> = pairs.iter().filter(|(q, a)| q != a).collect();
        let names: Vec<String> = wanted
            .iter()
            .flat_map(|(q, a)| [format!("{q}{a}"), format!("{a}{q}")])
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let quotes = prices::read_many(conn, keys, &refs).await?;
        let usable = |name: &str| -> Option<Decimal> {
            let q = quotes.get(name)?.as_ref().ok()?;
            q.check_fresh(now, max_age).ok()?;
            Some((q.bid + q.ask) / Decimal::TWO)
        };
        let rates = wanted
            .into_iter()
            .map(|(q, a)| {
                let rate = usable(&format!("{q}{a}"))
                    .or_else(|| usable(&format!("{a}{q}")).map(|mid| Decimal::ONE / mid))
                    .ok_or_else(|| format!("no fresh conversion price for {q}{a} or {a}{q}"));
                ((q.clone(), a.clone()), rate)
            })
            .collect();
        Ok(Self { rates })
    }
}

/// What a close of `quote_currency` positions needs: rates into every known currency (one tiny
/// query and one Redis pipeline, cheaper than asking which currencies have accounts) and every
/// currency's money digits.
pub async fn for_close(
    t: &super::Trading,
    quote_currency: &str,
    now: DateTime<Utc>,
) -> Result<(Rates, HashMap<String, u32>), super::TradingError> {
    let digits = super::currency_digits(&t.db).await?;
    let pairs: Vec<(String, String)> = digits
        .keys()
        .map(|a| (quote_currency.to_owned(), a.clone()))
        .collect();
    let rates = Rates::load(
        &mut t.redis.manager(),
        &t.keys,
        &pairs,
        now,
        t.price_max_age,
    )
    .await?;
    Ok((rates, digits))
}

/// Account currencies that have accounts.
pub async fn account_currencies(db: &sqlx::PgPool) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT code FROM currencies c
         WHERE EXISTS (SELECT 1 FROM trading_accounts a WHERE a.currency = c.code)
         ORDER BY code",
    )
    .fetch_all(db)
    .await
}
