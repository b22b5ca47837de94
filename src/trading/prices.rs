//! The price cache `price:{SYMBOL}`: the one module that reads and writes it.
//!
//! A hash with `bid`, `ask` (decimal strings), `timestamp` (the quote's event time, ISO 8601
//! UTC) and `seq` (the source's sequence number), TTL 10 s. A write carrying a sequence number
//! not above the cached one is refused, so a late or replayed quote never replaces a newer one.
//! Anything malformed is skipped with a warning naming the key: a buggy writer must not stop a
//! sweep, and a missing price is never read as 0.

use std::{collections::HashMap, str::FromStr, sync::LazyLock, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};
use redis::aio::ConnectionLike;
use rust_decimal::Decimal;
use serde::Serialize;

use super::{CacheKeys, money::MAX_PRICE};

/// TTL of `price:{SYMBOL}` (the contract: 10 s).
pub const PRICE_TTL: Duration = Duration::from_secs(10);

/// How far in the future a quote's timestamp may be (clock skew of the writer).
pub const MAX_FUTURE_SKEW: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// The largest sequence number: the write script compares them as Lua numbers (doubles), exact
/// up to 2^53 − 1. A larger one is refused on input rather than silently rounded.
pub const MAX_SEQ: u64 = (1 << 53) - 1;

/// One cached quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quote {
    /// Best bid.
    #[serde(with = "rust_decimal::serde::str")]
    pub bid: Decimal,
    /// Best ask.
    #[serde(with = "rust_decimal::serde::str")]
    pub ask: Decimal,
    /// Event time of the quote.
    pub timestamp: DateTime<Utc>,
    /// The source's sequence number.
    pub seq: u64,
}

/// Why a quote cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// No key (never written or expired).
    Missing,
    /// The hash does not parse; the message says what is wrong.
    Malformed(String),
    /// Its event time is older than the allowed age.
    Stale {
        /// How old it is.
        age_ms: i64,
    },
}

impl Unusable {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::Stale { .. } => "stale",
        }
    }
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => f.write_str("no cached price (missing or expired)"),
            Self::Malformed(m) => write!(f, "malformed cached price: {m}"),
            Self::Stale { age_ms } => write!(f, "cached price is {age_ms} ms old"),
        }
    }
}

/// Check a quote's values: both sides positive, not crossed.
pub fn validate(bid: Decimal, ask: Decimal) -> Result<(), (&'static str, String)> {
    if bid <= Decimal::ZERO {
        return Err(("bid", format!("must be greater than 0, got {bid}")));
    }
    if ask <= Decimal::ZERO {
        return Err(("ask", format!("must be greater than 0, got {ask}")));
    }
    if ask < bid {
        return Err(("ask", format!("{ask} is below the bid {bid}")));
    }
    if ask > MAX_PRICE {
        return Err((
            "ask",
            format!("{ask} is above the largest price {MAX_PRICE}"),
        ));
    }
    Ok(())
}

/// Parse the hash fields `[bid, ask, timestamp, seq]` as returned by `HMGET`.
pub fn parse(fields: &[Option<String>]) -> Result<Option<Quote>, Unusable> {
    let [bid, ask, timestamp, seq] = fields else {
        return Err(Unusable::Malformed("wrong number of fields".into()));
    };
    if fields.iter().all(Option::is_none) {
        return Ok(None);
    }
    let field = |name: &str, v: &Option<String>| -> Result<String, Unusable> {
        v.clone()
            .ok_or_else(|| Unusable::Malformed(format!("field {name} is missing")))
    };
    let decimal = |name: &str, v: &Option<String>| -> Result<Decimal, Unusable> {
        let raw = field(name, v)?;
        Decimal::from_str(raw.trim())
            .map_err(|e| Unusable::Malformed(format!("{name}={raw:?} is not a decimal: {e}")))
    };
    let bid = decimal("bid", bid)?;
    let ask = decimal("ask", ask)?;
    validate(bid, ask).map_err(|(f, m)| Unusable::Malformed(format!("{f} {m}")))?;
    let raw_ts = field("timestamp", timestamp)?;
    let timestamp = DateTime::parse_from_rfc3339(raw_ts.trim())
        .map_err(|e| Unusable::Malformed(format!("timestamp={raw_ts:?} is not ISO 8601: {e}")))?
        .with_timezone(&Utc);
    let raw_seq = field("seq", seq)?;
    let seq = raw_seq
        .trim()
        .parse()
        .map_err(|e| Unusable::Malformed(format!("seq={raw_seq:?} is not a number: {e}")))?;
    Ok(Some(Quote {
        bid,
        ask,
        timestamp,
        seq,
    }))
}

impl Quote {
    /// Usable at `now`: not older than `max_age`, not from the future beyond clock skew.
    pub fn check_fresh(&self, now: DateTime<Utc>, max_age: Duration) -> Result<(), Unusable> {
        let age = now - self.timestamp;
        if age < -MAX_FUTURE_SKEW {
            return Err(Unusable::Malformed(format!(
                "timestamp {} is in the future",
                self.timestamp
            )));
        }
        if age.to_std().is_ok_and(|a| a > max_age) {
            return Err(Unusable::Stale {
                age_ms: age.num_milliseconds(),
            });
        }
        Ok(())
    }
}

/// Read the quotes of `symbols` in one round trip. Each entry is the quote, or why there is none
/// (a malformed hash is logged with its key here).
pub async fn read_many(
    conn: &mut impl ConnectionLike,
    keys: &CacheKeys,
    symbols: &[&str],
) -> redis::RedisResult<HashMap<String, Result<Quote, Unusable>>> {
    if symbols.is_empty() {
        return Ok(HashMap::new());
    }
    let mut pipe = redis::pipe();
    // One key of the wrong type (a buggy writer's `SET price:X ...`) must spoil only itself,
    // not the whole pipeline: per-command errors come back one by one.
    pipe.ignore_errors();
    for s in symbols {
        pipe.cmd("HMGET")
            .arg(keys.price(s))
            .arg(&["bid", "ask", "timestamp", "seq"]);
    }
    // Bytes, not strings: one field that is not UTF-8 must not fail the conversion of the
    // whole reply.
    let rows: Vec<redis::RedisResult<Vec<Option<Vec<u8>>>>> = pipe.query_async(conn).await?;
    symbols
        .iter()
        .zip(rows)
        .map(|(s, fields)| {
            let parsed = match fields {
                Ok(fields) => fields
                    .into_iter()
                    .map(|f| f.map(String::from_utf8).transpose())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| Unusable::Malformed("a field is not UTF-8 text".into()))
                    .and_then(|fields| parse(&fields)),
                Err(e) if e.code() == Some("WRONGTYPE") => {
                    Err(Unusable::Malformed("the key is not a hash".into()))
                }
                Err(e) => return Err(e),
            };
            let quote = match parsed {
                Ok(Some(q)) => Ok(q),
                Ok(None) => Err(Unusable::Missing),
                Err(e) => {
                    tracing::warn!(key = %keys.price(s), "skipping {}: {e}", keys.price(s));
                    metrics::counter!("halol_price_malformed_total").increment(1);
                    Err(e)
                }
            };
            Ok(((*s).to_owned(), quote))
        })
        .collect()
}

/// Read one quote.
pub async fn read(
    conn: &mut impl ConnectionLike,
    keys: &CacheKeys,
    symbol: &str,
) -> redis::RedisResult<Result<Quote, Unusable>> {
    let mut all = read_many(conn, keys, &[symbol]).await?;
    Ok(all.remove(symbol).unwrap_or(Err(Unusable::Missing)))
}

/// A quote to write. `seq: None` takes the cached sequence number + 1.
#[derive(Debug, Clone)]
pub struct NewQuote {
    /// Best bid (already normalised to the symbol's digits).
    pub bid: Decimal,
    /// Best ask.
    pub ask: Decimal,
    /// Event time.
    pub timestamp: DateTime<Utc>,
    /// Sequence number, or the next one.
    pub seq: Option<u64>,
}

/// Result of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Stored with this sequence number.
    Stored(u64),
    /// Refused: the cache already holds this sequence number or a newer one.
    NotNewer {
        /// The cached sequence number.
        cached: u64,
    },
}

static WRITE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local cached = tonumber(redis.call('HGET', KEYS[1], 'seq'))
        local seq
        if ARGV[4] == '' then
            seq = (cached or 0) + 1
        else
            seq = tonumber(ARGV[4])
            if cached and cached >= seq then
                return {0, string.format('%d', cached)}
            end
        end
        redis.call('HSET', KEYS[1], 'bid', ARGV[1], 'ask', ARGV[2], 'timestamp', ARGV[3],
            'seq', string.format('%d', seq))
        redis.call('PEXPIRE', KEYS[1], ARGV[5])
        return {1, string.format('%d', seq)}
        ",
    )
});

/// Write a quote (HSET + TTL in one script). Values must already be validated.
pub async fn write(
    conn: &mut impl ConnectionLike,
    keys: &CacheKeys,
    symbol: &str,
    quote: &NewQuote,
) -> redis::RedisResult<Written> {
    let (stored, seq): (i64, String) = WRITE
        .key(keys.price(symbol))
        .arg(quote.bid.to_string())
        .arg(quote.ask.to_string())
        .arg(format_ts(quote.timestamp))
        .arg(quote.seq.map(|s| s.to_string()).unwrap_or_default())
        .arg(PRICE_TTL.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    let seq = seq.parse().unwrap_or(0);
    Ok(if stored == 1 {
        Written::Stored(seq)
    } else {
        Written::NotNewer { cached: seq }
    })
}

/// ISO 8601 UTC with microseconds, as written to `timestamp`.
pub fn format_ts(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: &[&str]) -> Vec<Option<String>> {
        v.iter()
            .map(|s| (!s.is_empty()).then(|| (*s).to_owned()))
            .collect()
    }

    #[test]
    fn a_well_formed_hash_parses() {
        let q = parse(&f(&["1.1", "1.2", "2026-11-22T10:00:00Z", "7"]))
            .expect("ok")
            .expect("some");
        assert_eq!((q.bid.to_string(), q.seq), ("1.1".into(), 7));
        assert_eq!(parse(&f(&["", "", "", ""])), Ok(None));
    }

    #[test]
    fn malformed_hashes_say_what_is_wrong() {
        for (fields, needle) in [
            (["abc", "1.2", "2026-11-22T10:00:00Z", "1"], "bid"),
            (["1.1", "", "2026-11-22T10:00:00Z", "1"], "ask is missing"),
            (["0", "1.2", "2026-11-22T10:00:00Z", "1"], "greater than 0"),
            (["1.3", "1.2", "2026-11-22T10:00:00Z", "1"], "below the bid"),
            (["1.1", "1.2", "yesterday", "1"], "timestamp"),
            (["1.1", "1.2", "2026-11-22T10:00:00Z", "-1"], "seq"),
        ] {
            let err = parse(&f(&fields)).expect_err("malformed");
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn freshness_is_judged_by_event_time() {
        let now = Utc::now();
        let q = |age: i64| Quote {
            bid: Decimal::ONE,
            ask: Decimal::ONE,
            timestamp: now - chrono::TimeDelta::seconds(age),
            seq: 1,
        };
        assert!(q(3).check_fresh(now, Duration::from_secs(10)).is_ok());
        assert!(matches!(
            q(11).check_fresh(now, Duration::from_secs(10)),
            Err(Unusable::Stale { .. })
        ));
        assert!(matches!(
            q(-60).check_fresh(now, Duration::from_secs(10)),
            Err(Unusable::Malformed(_))
        ));
    }
}
