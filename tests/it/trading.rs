//! The trading core against real PostgreSQL (a fresh database per test, `#[sqlx::test]`) and
//! Redis (a key namespace per test).

use std::{str::FromStr, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use halol::{
    redis_pool::RedisPool,
    trading::{CacheKeys, Trading, TradingError, calm, close, ops, prices, revalue, sweep},
};
use redis::AsyncCommands as _;
use rust_decimal::Decimal;
use sqlx::PgPool;

use crate::helpers::{free_port, pool, pool_at, redis_server, wait_for_redis};

pub fn d(s: &str) -> Decimal {
    Decimal::from_str(s).expect("decimal")
}

pub fn trading(db: PgPool, redis: RedisPool) -> Trading {
    Trading {
        db,
        redis,
        keys: CacheKeys::new(&format!("it-{}:", ulid::Ulid::new())),
        price_max_age: Duration::from_secs(10),
    }
}

/// EURUSD (5 digits, 100k), USDJPY (3 digits, JPY), and a USD account 1001 with 10,000.
pub async fn seed(t: &Trading) {
    sqlx::raw_sql(
        "INSERT INTO symbols (symbol, digits, contract_size, quote_currency) VALUES
           ('EURUSD', 5, 100000, 'USD'), ('USDJPY', 3, 100000, 'JPY'), ('GBPUSD', 5, 100000, 'USD');
         INSERT INTO trading_accounts (mt5_account_id, currency, balance) VALUES
           (1001, 'USD', 10000), (2002, 'EUR', 5000);",
    )
    .execute(&t.db)
    .await
    .expect("seed");
}

pub async fn quote_at(t: &Trading, symbol: &str, bid: &str, ask: &str, ts: DateTime<Utc>) {
    let written = prices::write(
        &mut t.redis.manager(),
        &t.keys,
        symbol,
        &prices::NewQuote {
            bid: d(bid),
            ask: d(ask),
            timestamp: ts,
            seq: None,
        },
    )
    .await
    .expect("write price");
    assert!(matches!(written, prices::Written::Stored(_)));
}

pub async fn quote(t: &Trading, symbol: &str, bid: &str, ask: &str) {
    quote_at(t, symbol, bid, ask, Utc::now()).await;
}

/// A position opened a minute ago (so fresh quotes are newer than its opening).
pub async fn position(
    t: &Trading,
    mt5: i64,
    symbol: &str,
    side: &str,
    open: &str,
    sl: Option<&str>,
    tp: Option<&str>,
) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO positions (account_id, account_currency, symbol, side, volume, contract_size,
                                open_price, opened_at, stop_loss, take_profit)
         SELECT a.id, a.currency, s.symbol, $3, 0.1, s.contract_size, $4::numeric,
                now() - interval '1 minute', $5::numeric, $6::numeric
         FROM trading_accounts a, symbols s WHERE a.mt5_account_id = $1 AND s.symbol = $2
         RETURNING id",
    )
    .bind(mt5)
    .bind(symbol)
    .bind(side)
    .bind(open)
    .bind(sl)
    .bind(tp)
    .fetch_one(&t.db)
    .await
    .expect("insert position")
}

async fn sweep(t: &Trading, symbol: &str) -> sweep::SymbolSweep {
    let info = halol::trading::symbol(&t.db, symbol)
        .await
        .expect("db")
        .expect("symbol");
    sweep::sweep_symbol(t, &info, Utc::now())
        .await
        .expect("sweep")
}

#[derive(Debug, sqlx::FromRow, PartialEq)]
struct Row {
    status: String,
    close_price: Option<Decimal>,
    close_reason: Option<String>,
    realised_pnl: Option<Decimal>,
    realised_pnl_note: Option<String>,
}

async fn row(t: &Trading, id: i64) -> Row {
    sqlx::query_as(
        "SELECT status, close_price, close_reason, realised_pnl, realised_pnl_note
         FROM positions WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&t.db)
    .await
    .expect("row")
}

async fn balance(t: &Trading, mt5: i64) -> Decimal {
    sqlx::query_scalar("SELECT balance FROM trading_accounts WHERE mt5_account_id = $1")
        .bind(mt5)
        .fetch_one(&t.db)
        .await
        .expect("balance")
}

async fn closes(t: &Trading) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM position_closes")
        .fetch_one(&t.db)
        .await
        .expect("count")
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn longs_check_the_bid_shorts_the_ask_and_a_touch_triggers(db: PgPool) {
    let t = trading(db, pool().await);
    seed(&t).await;
    // Bid 1.10000 / ask 1.10020.
    let long_sl_touched =
        position(&t, 1001, "EURUSD", "buy", "1.10500", Some("1.10000"), None).await;
    let long_sl_below = position(&t, 1001, "EURUSD", "buy", "1.10500", Some("1.09999"), None).await;
    // A long's TP at the ask is not reached: longs look at the bid.
    let long_tp_at_ask =
        position(&t, 1001, "EURUSD", "buy", "1.09000", None, Some("1.10020")).await;
    let short_sl_at_ask =
        position(&t, 1001, "EURUSD", "sell", "1.09000", Some("1.10020"), None).await;
    // A short's TP at the bid is not reached: shorts look at the ask.
    let short_tp_at_bid =
        position(&t, 1001, "EURUSD", "sell", "1.11000", None, Some("1.10000")).await;
    let short_tp_at_ask =
        position(&t, 1001, "EURUSD", "sell", "1.11000", None, Some("1.10020")).await;
    quote(&t, "EURUSD", "1.10000", "1.10020").await;

    let report = sweep(&t, "EURUSD").await;
    assert_eq!(report.closed.len(), 3, "{report:?}");
    let long = row(&t, long_sl_touched).await;
    assert_eq!(
        (
            long.status.as_str(),
            long.close_reason.as_deref(),
            long.close_price
        ),
        ("closed", Some("sl"), Some(d("1.10000")))
    );
    assert_eq!(row(&t, long_sl_below).await.status, "open");
    assert_eq!(row(&t, long_tp_at_ask).await.status, "open");
    let short = row(&t, short_sl_at_ask).await;
    assert_eq!(
        (short.close_reason.as_deref(), short.close_price),
        (Some("sl"), Some(d("1.10020")))
    );
    assert_eq!(row(&t, short_tp_at_bid).await.status, "open");
    let short_tp = row(&t, short_tp_at_ask).await;
    assert_eq!(
        (short_tp.close_reason.as_deref(), short_tp.close_price),
        (Some("tp"), Some(d("1.10020")))
    );
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn a_gap_books_the_real_loss_and_tp_closes_at_market(db: PgPool) {
    let t = trading(db, pool().await);
    seed(&t).await;
    let long = position(
        &t,
        1001,
        "EURUSD",
        "buy",
        "1.10000",
        Some("1.09500"),
        Some("1.11000"),
    )
    .await;
    let short = position(
        &t,
        1001,
        "EURUSD",
        "sell",
        "1.10000",
        Some("1.12000"),
        Some("1.09800"),
    )
    .await;
    // The market gaps down through the long's SL (1.09500) and the short's TP (1.09800).
    quote(&t, "EURUSD", "1.09000", "1.09010").await;
    let report = sweep(&t, "EURUSD").await;
    assert_eq!(report.closed.len(), 2);

    let l = row(&t, long).await;
    assert_eq!(
        l.close_price,
        Some(d("1.09000")),
        "SL fills at the market, not the level"
    );
    // (1.09000 - 1.10000) × 0.1 × 100000 = -100.00 USD, not the -50 the SL level would say.
    assert_eq!(l.realised_pnl, Some(d("-100")));
    let s = row(&t, short).await;
    assert_eq!(s.close_reason.as_deref(), Some("tp"));
    assert_eq!(
        s.close_price,
        Some(d("1.09010")),
        "TP closes at the triggering ask"
    );
    assert_eq!(s.realised_pnl, Some(d("99")));
    assert_eq!(balance(&t, 1001).await, d("9999"));
    let record: (String, Decimal, Decimal, String) = sqlx::query_as(
        "SELECT reason, pnl_quote, realised_pnl, closed_by FROM position_closes WHERE position_id = $1",
    )
    .bind(long)
    .fetch_one(&t.db)
    .await
    .expect("close record");
    assert_eq!(record, ("sl".into(), d("-100"), d("-100"), "sweep".into()));
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn missing_stale_malformed_or_older_than_the_position_quotes_close_nothing(db: PgPool) {
    let t = trading(db, pool().await);
    seed(&t).await;
    let id = position(&t, 1001, "EURUSD", "buy", "1.10000", Some("1.09500"), None).await;

    // Missing.
    let r = sweep(&t, "EURUSD").await;
    assert!(
        r.skipped.as_deref().is_some_and(|s| s.contains("missing")),
        "{r:?}"
    );
    // Stale: the key lives but the quote's event time is 30 s old.
    quote_at(
        &t,
        "EURUSD",
        "1.09000",
        "1.09010",
        Utc::now() - TimeDelta::seconds(30),
    )
    .await;
    let r = sweep(&t, "EURUSD").await;
    assert!(
        r.skipped.as_deref().is_some_and(|s| s.contains("old")),
        "{r:?}"
    );
    // Malformed (a buggy writer): skipped, never read as 0.
    let mut conn = t.redis.manager();
    let _: () = conn
        .hset_multiple(
            t.keys.price("EURUSD"),
            &[
                ("bid", "0"),
                ("ask", "oops"),
                ("timestamp", "now"),
                ("seq", "99"),
            ],
        )
        .await
        .expect("hset");
    let r = sweep(&t, "EURUSD").await;
    assert!(
        r.skipped
            .as_deref()
            .is_some_and(|s| s.contains("malformed")),
        "{r:?}"
    );
    // Not a hash at all (a legacy writer's SET): skipped as malformed, not taken for Redis down.
    let _: () = conn
        .set(t.keys.price("EURUSD"), r#"{"bid":1.09}"#)
        .await
        .expect("set");
    let r = sweep(&t, "EURUSD").await;
    assert!(
        r.skipped
            .as_deref()
            .is_some_and(|s| s.contains("malformed") && s.contains("not a hash")),
        "{r:?}"
    );
    // A field that is not UTF-8 text: malformed, and only this key.
    let _: () = conn.del(t.keys.price("EURUSD")).await.expect("del");
    let _: () = conn
        .hset_multiple(
            t.keys.price("EURUSD"),
            &[
                ("bid", b"\xff\xfe".to_vec()),
                ("ask", b"1.1".to_vec()),
                ("timestamp", b"2026-11-22T10:00:00Z".to_vec()),
                ("seq", b"1".to_vec()),
            ],
        )
        .await
        .expect("hset");
    let r = sweep(&t, "EURUSD").await;
    assert!(
        r.skipped
            .as_deref()
            .is_some_and(|s| s.contains("malformed") && s.contains("UTF-8")),
        "{r:?}"
    );
    let _: () = conn.del(t.keys.price("EURUSD")).await.expect("del");
    // A wrong-typed key of a conversion pair spoils that pair only: the close below (USD into
    // USD) still loads its rates.
    let _: () = conn.set(t.keys.price("USDCHF"), "0.9").await.expect("set");
    // A fresh quote that is not newer than the position's opening.
    let late = position(&t, 1001, "EURUSD", "buy", "1.10000", Some("1.09500"), None).await;
    sqlx::query("UPDATE positions SET opened_at = now() + interval '1 second' WHERE id = $1")
        .bind(late)
        .execute(&t.db)
        .await
        .expect("move opening");
    quote(&t, "EURUSD", "1.09000", "1.09010").await;
    let r = sweep(&t, "EURUSD").await;
    assert_eq!(r.closed.len(), 1, "only the older position closes: {r:?}");
    assert_eq!(row(&t, id).await.status, "closed");
    assert_eq!(row(&t, late).await.status, "open");
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn the_close_rechecks_the_current_row_so_a_moved_sl_is_respected(db: PgPool) {
    let t = trading(db, pool().await);
    seed(&t).await;
    let id = position(&t, 1001, "EURUSD", "buy", "1.10000", Some("1.09500"), None).await;
    quote(&t, "EURUSD", "1.09400", "1.09410").await;
    let info = halol::trading::symbol(&t.db, "EURUSD")
        .await
        .expect("db")
        .expect("sym");
    let q = prices::read(&mut t.redis.manager(), &t.keys, "EURUSD")
        .await
        .expect("redis")
        .expect("quote");
    let found = sweep::candidates(&t.db, "EURUSD", q.bid, q.ask, q.timestamp, 100)
        .await
        .expect("candidates");
    assert_eq!(found, vec![id]);
    // Between detection and close the user moves the SL below the market.
    sqlx::query("UPDATE positions SET stop_loss = 1.09000 WHERE id = $1")
        .bind(id)
        .execute(&t.db)
        .await
        .expect("move sl");
    let closed = close::close_batch(
        &t.db,
        &info,
        &q,
        &found,
        close::Mode::Triggered,
        "test",
        &Default::default(),
        &halol::trading::currency_digits(&t.db)
            .await
            .expect("digits"),
    )
    .await
    .expect("close");
    assert!(closed.is_empty());
    assert_eq!(row(&t, id).await.status, "open");
    assert_eq!(closes(&t).await, 0);
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn concurrent_sweeps_close_each_position_exactly_once(db: PgPool) {
    let t = trading(db, pool().await);
    seed(&t).await;
    // 300 triggering longs and shorts, plus 100 that must stay open.
    sqlx::query(
        "INSERT INTO positions (account_id, account_currency, symbol, side, volume, contract_size,
                                open_price, opened_at, stop_loss, take_profit)
         SELECT a.id, 'USD', 'EURUSD', CASE WHEN g % 2 = 0 THEN 'buy' ELSE 'sell' END, 0.1, 100000,
                1.10000, now() - interval '1 minute',
                CASE WHEN g <= 300 THEN (CASE WHEN g % 2 = 0 THEN 1.09900 ELSE 1.10100 END)
                     ELSE (CASE WHEN g % 2 = 0 THEN 1.00000 ELSE 1.20000 END) END,
                NULL
         FROM trading_accounts a, generate_series(1, 400) g WHERE a.mt5_account_id = 1001",
    )
    .execute(&t.db)
    .await
    .expect("positions");
    // The market jumps: every SL of the first 300 is crossed (longs by the bid, shorts by the ask).
    quote(&t, "EURUSD", "1.09800", "1.10200").await;
    let before = balance(&t, 1001).await;

    let sweeps: Vec<_> = (0..6)
        .map(|_| {
            let t = t.clone();
            tokio::spawn(async move { sweep(&t, "EURUSD").await.closed.len() })
        })
        .collect();
    let mut total = 0;
    for s in sweeps {
        total += s.await.expect("sweep task");
    }
    assert_eq!(total, 300, "each position closed by exactly one sweep");
    assert_eq!(closes(&t).await, 300);
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM positions WHERE status = 'open'")
        .fetch_one(&t.db)
        .await
        .expect("count");
    assert_eq!(open, 100);
    // Every long lost (1.09800 − 1.10000) × 10,000 = −20; every short (1.10000 − 1.10200) = −20.
    assert_eq!(balance(&t, 1001).await, before - d("6000"));
    let booked: Decimal = sqlx::query_scalar("SELECT sum(realised_pnl) FROM position_closes")
        .fetch_one(&t.db)
        .await
        .expect("sum");
    assert_eq!(booked, d("-6000"));
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn the_candidate_scans_use_the_trigger_indexes(db: PgPool) {
    let t = trading(db, pool().await);
    seed(&t).await;
    // 20,000 open positions on two symbols, none near the market, with fresh statistics: the
    // planner is free to choose, and must choose the four partial indexes.
    sqlx::raw_sql(
        "INSERT INTO positions (account_id, account_currency, symbol, side, volume, contract_size,
                                open_price, opened_at, stop_loss, take_profit)
         SELECT a.id, 'USD', CASE WHEN g % 2 = 0 THEN 'EURUSD' ELSE 'GBPUSD' END,
                CASE WHEN g % 4 < 2 THEN 'buy' ELSE 'sell' END, 0.1, 100000, 1.1,
                now() - interval '1 day',
                CASE WHEN g % 4 < 2 THEN 0.5 + (g % 1000) * 0.0001 ELSE 1.7 - (g % 1000) * 0.0001 END,
                CASE WHEN g % 4 < 2 THEN 1.7 - (g % 1000) * 0.0001 ELSE 0.5 + (g % 1000) * 0.0001 END
         FROM generate_series(1, 20000) g, trading_accounts a WHERE a.mt5_account_id = 1001;
         ANALYZE positions;",
    )
    .execute(&t.db)
    .await
    .expect("positions");
    // The sweep's own statement, with its parameters bound.
    let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", sweep::CANDIDATES_SQL))
        .bind("EURUSD")
        .bind(d("1.10000"))
        .bind(d("1.10020"))
        .bind(Utc::now())
        .bind(2_000_i64)
        .fetch_all(&t.db)
        .await
        .expect("explain");
    let plan = plan.join("\n");
    for index in [
        "positions_open_buy_sl",
        "positions_open_buy_tp",
        "positions_open_sell_sl",
        "positions_open_sell_tp",
    ] {
        assert!(plan.contains(index), "{index} not used:\n{plan}");
    }
    assert!(!plan.contains("Seq Scan"), "{plan}");
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn pnl_converts_through_the_cached_pair_and_waits_when_it_is_missing(db: PgPool) {
    let t = trading(db, pool().await);
    seed(&t).await;
    // A EUR account trading USDJPY: PnL in JPY, converted via EURJPY.
    let id = position(&t, 2002, "USDJPY", "buy", "150.000", Some("149.000"), None).await;
    quote(&t, "USDJPY", "148.500", "148.520").await;
    let r = sweep(&t, "USDJPY").await;
    assert_eq!(r.closed.len(), 1);
    let closed = row(&t, id).await;
    assert_eq!(closed.status, "closed");
    assert_eq!(
        closed.realised_pnl, None,
        "no conversion price: no PnL, never 0"
    );
    assert!(
        closed
            .realised_pnl_note
            .as_deref()
            .is_some_and(|n| n.contains("JPYEUR")),
        "{closed:?}"
    );
    assert_eq!(balance(&t, 2002).await, d("5000"));

    // The conversion price arrives; the next revaluation books the close.
    quote(&t, "EURJPY", "160.000", "160.010").await;
    let report = revalue::revalue_all(&t, Utc::now()).await.expect("revalue");
    assert_eq!(report.booked, 1);
    // (148.500 − 150.000) × 0.1 × 100000 = −15000 JPY; / mid 160.005 = −93.747… EUR → −93.75.
    let booked = row(&t, id).await;
    assert_eq!(booked.realised_pnl, Some(d("-93.75")));
    assert_eq!(balance(&t, 2002).await, d("4906.25"));
    let rate: Option<Decimal> =
        sqlx::query_scalar("SELECT conversion_rate FROM position_closes WHERE position_id = $1")
            .bind(id)
            .fetch_one(&t.db)
            .await
            .expect("rate");
    assert!(rate.is_some());
    // Booked once: another pass books nothing more.
    let again = revalue::revalue_all(&t, Utc::now()).await.expect("revalue");
    assert_eq!((again.booked, balance(&t, 2002).await), (0, d("4906.25")));
    // The close record is append-only.
    let tamper = sqlx::query("UPDATE position_closes SET close_price = 1 WHERE position_id = $1")
        .bind(id)
        .execute(&t.db)
        .await;
    assert!(tamper.is_err());
    assert!(
        sqlx::query("DELETE FROM position_closes")
            .execute(&t.db)
            .await
            .is_err()
    );
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn closes_still_waiting_for_a_pair_never_crowd_out_closes_that_can_be_booked(db: PgPool) {
    let t = trading(db, pool().await);
    seed(&t).await;
    // Both in the EUR account: the older waits for EURJPY, the newer for EURUSD.
    let jpy = position(&t, 2002, "USDJPY", "buy", "150.000", Some("149.000"), None).await;
    let usd = position(&t, 2002, "GBPUSD", "buy", "1.30000", Some("1.29000"), None).await;
    quote(&t, "USDJPY", "148.500", "148.520").await;
    quote(&t, "GBPUSD", "1.28000", "1.28020").await;
    assert_eq!(sweep(&t, "USDJPY").await.closed.len(), 1);
    assert_eq!(sweep(&t, "GBPUSD").await.closed.len(), 1);
    quote(&t, "EURUSD", "1.10000", "1.10020").await;
    let pairs = [("JPY", "EUR"), ("USD", "EUR")].map(|(q, a)| (q.to_owned(), a.to_owned()));
    let rates = halol::trading::rates::Rates::load(
        &mut t.redis.manager(),
        &t.keys,
        &pairs,
        Utc::now(),
        t.price_max_age,
    )
    .await
    .expect("rates");
    let digits = halol::trading::currency_digits(&t.db)
        .await
        .expect("digits");
    // Room for one: it goes to the close that can be booked, not the older one that cannot.
    let booked = close::book_pending(&t.db, &rates, &digits, 1)
        .await
        .expect("book");
    assert_eq!(booked, 1);
    assert_eq!(row(&t, jpy).await.realised_pnl, None);
    // (1.28000 − 1.30000) × 0.1 × 100000 = −200 USD; / mid 1.10010 = −181.80 EUR.
    assert_eq!(row(&t, usd).await.realised_pnl, Some(d("-181.80")));
    assert_eq!(balance(&t, 2002).await, d("4818.20"));
}

#[derive(Debug, sqlx::FromRow)]
struct Valued {
    status: String,
    current_bid: Option<Decimal>,
    current_ask: Option<Decimal>,
    unrealised_pnl: Option<Decimal>,
    unrealised_pnl_note: Option<String>,
}

async fn valued(t: &Trading, id: i64) -> Valued {
    sqlx::query_as(
        "SELECT status, current_bid, current_ask, unrealised_pnl, unrealised_pnl_note
         FROM positions WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&t.db)
    .await
    .expect("row")
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn revaluation_values_open_positions_only_and_never_from_a_missing_price(db: PgPool) {
    let t = trading(db, pool().await);
    seed(&t).await;
    let long = position(&t, 1001, "EURUSD", "buy", "1.10000", None, None).await;
    let short = position(&t, 1001, "EURUSD", "sell", "1.10000", None, None).await;
    let closed = position(&t, 1001, "EURUSD", "buy", "1.10000", None, None).await;
    let no_price = position(&t, 1001, "GBPUSD", "buy", "1.30000", None, None).await;
    let eur = position(&t, 2002, "EURUSD", "buy", "1.10000", None, None).await;
    quote(&t, "EURUSD", "1.10100", "1.10120").await;
    ops::close_position(&t, closed, "test")
        .await
        .expect("manual close");
    quote(&t, "EURUSD", "1.10200", "1.10220").await;

    let report = revalue::revalue_all(&t, Utc::now()).await.expect("revalue");
    assert_eq!(report.updated, 3, "{report:?}");
    let l = valued(&t, long).await;
    assert_eq!(
        (l.current_bid, l.current_ask, l.unrealised_pnl),
        (Some(d("1.10200")), Some(d("1.10220")), Some(d("20")))
    );
    // A short is valued at the ask.
    assert_eq!(valued(&t, short).await.unrealised_pnl, Some(d("-22")));
    // The closed position keeps the values of its close, untouched and still closed.
    let c = valued(&t, closed).await;
    assert_eq!((c.status.as_str(), c.current_bid), ("closed", None));
    // GBPUSD has no price: skipped, nothing written.
    let n = valued(&t, no_price).await;
    assert_eq!((n.current_bid, n.unrealised_pnl), (None, None));
    assert!(report.skipped.iter().any(|(s, _)| s == "GBPUSD"));
    // The EUR account converts through EURUSD itself: 20 USD / mid 1.1021 = 18.15 EUR.
    assert_eq!(valued(&t, eur).await.unrealised_pnl, Some(d("18.15")));
    // Same quote again: nothing rewritten.
    let again = revalue::revalue_all(&t, Utc::now()).await.expect("revalue");
    assert_eq!(again.updated, 0);

    // A JPY-quoted symbol for the EUR account, with no EURJPY price cached.
    let jpy = position(&t, 2002, "USDJPY", "buy", "150.000", None, None).await;
    quote(&t, "USDJPY", "151.000", "151.020").await;
    revalue::revalue_all(&t, Utc::now()).await.expect("revalue");
    let j = valued(&t, jpy).await;
    assert_eq!(j.current_bid, Some(d("151.000")));
    assert_eq!(j.unrealised_pnl, None, "no EURJPY price: NULL, never 0");
    assert!(j.unrealised_pnl_note.is_some_and(|n| n.contains("JPYEUR")));
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn calm_mode_blurs_the_pnl_with_two_ttls_and_ends_with_the_position(db: PgPool) {
    let t = trading(db, pool().await);
    seed(&t).await;
    let id = position(&t, 1001, "EURUSD", "buy", "1.10000", None, None).await;
    quote(&t, "EURUSD", "1.11234", "1.11250").await;
    calm::enable(&t, id, "test").await.expect("calm on");
    revalue::revalue_all(&t, Utc::now()).await.expect("revalue");
    let mut conn = t.redis.manager();
    let flags: std::collections::HashMap<String, String> =
        conn.hgetall(t.keys.calm(id)).await.expect("flags");
    assert_eq!(flags.get("stress_free").map(String::as_str), Some("1"));
    let flags_ttl: i64 = conn.ttl(t.keys.calm(id)).await.expect("ttl");
    assert!((3590..=3600).contains(&flags_ttl), "{flags_ttl}");
    // PnL (1.11234 − 1.10000) × 10,000 = 123.40 → band [100, 200).
    let pnl: std::collections::HashMap<String, String> =
        conn.hgetall(t.keys.calm_pnl(id)).await.expect("pnl");
    assert_eq!(
        (
            pnl.get("band_low").map(String::as_str),
            pnl.get("band_high").map(String::as_str)
        ),
        (Some("100"), Some("200")),
        "{pnl:?}"
    );
    let pnl_ttl: i64 = conn.ttl(t.keys.calm_pnl(id)).await.expect("ttl");
    assert!((1790..=1800).contains(&pnl_ttl), "{pnl_ttl}");

    // Closing the position removes its calm state.
    ops::close_position(&t, id, "test").await.expect("close");
    let exists: (bool, bool) = redis::pipe()
        .exists(t.keys.calm(id))
        .exists(t.keys.calm_pnl(id))
        .query_async(&mut conn)
        .await
        .expect("exists");
    assert_eq!(exists, (false, false));
    // And a closed position cannot enter calm mode.
    assert!(matches!(
        calm::enable(&t, id, "test").await,
        Err(TradingError::Conflict(_))
    ));
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn calm_state_left_behind_by_a_close_is_removed_by_the_next_revaluation(db: PgPool) {
    let t = trading(db, pool().await);
    seed(&t).await;
    let id = position(&t, 1001, "EURUSD", "buy", "1.10000", None, None).await;
    quote(&t, "EURUSD", "1.10100", "1.10120").await;
    calm::enable(&t, id, "test").await.expect("calm on");
    // Closed behind the back of the calm cleanup (as if the process died after commit).
    sqlx::query(
        "UPDATE positions SET status = 'closed', closed_at = now(), close_price = 1.1,
                close_reason = 'manual' WHERE id = $1",
    )
    .bind(id)
    .execute(&t.db)
    .await
    .expect("close");
    revalue::revalue_all(&t, Utc::now()).await.expect("revalue");
    let exists: (bool, bool) = redis::pipe()
        .exists(t.keys.calm(id))
        .exists(t.keys.calm_pnl(id))
        .query_async(&mut t.redis.manager())
        .await
        .expect("exists");
    assert_eq!(exists, (false, false));
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn the_blurred_pnl_lives_only_while_the_calm_flags_do(db: PgPool) {
    let t = trading(db, pool().await);
    seed(&t).await;
    let id = position(&t, 1001, "EURUSD", "buy", "1.10000", None, None).await;
    quote(&t, "EURUSD", "1.10100", "1.10120").await;
    calm::enable(&t, id, "test").await.expect("calm on");
    revalue::revalue_all(&t, Utc::now()).await.expect("revalue");
    let mut conn = t.redis.manager();
    let exists: bool = conn.exists(t.keys.calm_pnl(id)).await.expect("exists");
    assert!(exists, "the PnL is blurred while calm");
    // Flags with one minute left: the PnL is never written to outlive them.
    let _: bool = conn.expire(t.keys.calm(id), 60).await.expect("expire");
    quote(&t, "EURUSD", "1.10200", "1.10220").await;
    revalue::revalue_all(&t, Utc::now()).await.expect("revalue");
    let pnl_ttl: i64 = conn.ttl(t.keys.calm_pnl(id)).await.expect("ttl");
    assert!((1..=60).contains(&pnl_ttl), "{pnl_ttl}");
    // The flags gone (a close's cleanup racing the revaluation, or their hour up) while the
    // index still lists the position: the next write finds no flags and leaves no PnL.
    let _: i64 = conn.del(t.keys.calm(id)).await.expect("del");
    quote(&t, "EURUSD", "1.10300", "1.10320").await;
    revalue::revalue_all(&t, Utc::now()).await.expect("revalue");
    let exists: bool = conn.exists(t.keys.calm_pnl(id)).await.expect("exists");
    assert!(!exists, "no blurred PnL without calm flags");
    // An index entry past its expiry leaves the index.
    let _: i64 = conn
        .zadd(t.keys.calm_index(), id, Utc::now().timestamp_millis() - 1)
        .await
        .expect("zadd");
    calm::refresh(&t, Utc::now()).await;
    let indexed: Option<f64> = conn.zscore(t.keys.calm_index(), id).await.expect("zscore");
    assert_eq!(indexed, None);
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn redis_down_skips_the_sweep_and_calm_mode_and_the_sweep_resumes_by_itself(db: PgPool) {
    let port = free_port();
    let mut server = redis_server(port);
    let url = format!("redis://127.0.0.1:{port}/0");
    wait_for_redis(&url).await;
    let t = trading(db, pool_at(&url).await);
    seed(&t).await;
    let id = position(&t, 1001, "EURUSD", "buy", "1.10000", Some("1.09500"), None).await;

    server.signal("KILL");
    let _ = server.0.wait();
    match sweep::sweep_symbol(
        &t,
        &halol::trading::symbol(&t.db, "EURUSD")
            .await
            .expect("db")
            .expect("sym"),
        Utc::now(),
    )
    .await
    {
        Err(TradingError::Unavailable(_)) => {}
        other => panic!("expected a skip for Redis down, got {other:?}"),
    }
    assert!(matches!(
        revalue::revalue_all(&t, Utc::now()).await,
        Err(TradingError::Unavailable(_))
    ));
    assert!(matches!(
        calm::enable(&t, id, "test").await,
        Err(TradingError::Unavailable(_))
    ));
    assert_eq!(
        row(&t, id).await.status,
        "open",
        "nothing invented while Redis is down"
    );

    let _server = redis_server(port);
    wait_for_redis(&url).await;
    crate::helpers::eventually(
        Duration::from_secs(15),
        "the price write to succeed",
        || async {
            prices::write(
                &mut t.redis.manager(),
                &t.keys,
                "EURUSD",
                &prices::NewQuote {
                    bid: d("1.09000"),
                    ask: d("1.09010"),
                    timestamp: Utc::now(),
                    seq: None,
                },
            )
            .await
            .ok()
        },
    )
    .await;
    let r = sweep(&t, "EURUSD").await;
    assert_eq!(r.closed.len(), 1);
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn a_stale_sequence_number_never_replaces_a_newer_quote(db: PgPool) {
    let t = trading(db, pool().await);
    seed(&t).await;
    let mut conn = t.redis.manager();
    let q = |seq| prices::NewQuote {
        bid: d("1.1"),
        ask: d("1.2"),
        timestamp: Utc::now(),
        seq: Some(seq),
    };
    assert_eq!(
        prices::write(&mut conn, &t.keys, "EURUSD", &q(10))
            .await
            .expect("write"),
        prices::Written::Stored(10)
    );
    assert_eq!(
        prices::write(&mut conn, &t.keys, "EURUSD", &q(9))
            .await
            .expect("write"),
        prices::Written::NotNewer { cached: 10 }
    );
    let ttl: i64 = conn.pttl(t.keys.price("EURUSD")).await.expect("ttl");
    assert!((9_000..=10_000).contains(&ttl), "{ttl}");
    let fields: Vec<String> = conn.hkeys(t.keys.price("EURUSD")).await.expect("fields");
    let mut fields = fields;
    fields.sort();
    assert_eq!(fields, ["ask", "bid", "seq", "timestamp"]);
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn a_scheduled_sweep_fans_out_per_symbol_and_a_worker_process_closes_the_position(
    db: PgPool,
) {
    use halol::queue::{NewJob, Producer};
    use halol_jobs::{CheckSlTpPositions, CheckSlTpSymbol, Job as _};

    let t = trading(db.clone(), pool().await);
    seed(&t).await;
    let id = position(&t, 1001, "EURUSD", "buy", "1.10000", Some("1.09500"), None).await;
    quote(&t, "EURUSD", "1.09400", "1.09410").await;
    let settings = crate::helpers::settings(|_| {});
    let tick = Utc::now();
    let job = || {
        let mut j = NewJob::new(
            serde_json::to_string(&CheckSlTpPositions { tick }).expect("json"),
            1,
        );
        j.id = ulid::Ulid::new().to_string();
        j
    };
    let producer = Producer::new(t.redis.manager(), settings.clone());
    // The same tick delivered twice (at-least-once) fans out once.
    producer
        .push(CheckSlTpPositions::NAME, &[job(), job()])
        .await
        .expect("push");

    let url = format!(
        "postgres://postgres@127.0.0.1:5432/{}",
        db.connect_options().get_database().expect("db name")
    );
    let namespace = t.keys.price("").trim_end_matches("price:").to_owned();
    let mut cmd = crate::helpers::halol(
        &[
            "worker",
            "--queues",
            "check_sl_tp_positions=1,check_sl_tp_symbol=2",
        ],
        &settings.prefix,
        &crate::helpers::redis_url(),
    );
    cmd.env("DATABASE_URL", url)
        .env("REDIS_KEY_NAMESPACE", namespace)
        .env("METRICS_PUBLISH_INTERVAL_MS", "200");
    let worker = crate::helpers::Proc::spawn(cmd);

    crate::helpers::eventually(
        Duration::from_secs(20),
        "the sweep to close the position",
        || async { (row(&t, id).await.status == "closed").then_some(()) },
    )
    .await;
    let fan_out =
        crate::helpers::eventually(Duration::from_secs(10), "both ticks done", || async {
            let s = crate::helpers::stats(&t.redis, &settings, CheckSlTpPositions::NAME).await;
            (crate::helpers::counter(&s, "done") == 2).then_some(())
        });
    fan_out.await;
    let per_symbol = crate::helpers::stats(&t.redis, &settings, CheckSlTpSymbol::NAME).await;
    assert_eq!(
        (
            crate::helpers::counter(&per_symbol, "enqueued"),
            crate::helpers::counter(&per_symbol, "deduplicated")
        ),
        (3, 3),
        "one job per symbol (3), however often the tick ran: {per_symbol:?}"
    );
    assert_eq!(row(&t, id).await.close_reason.as_deref(), Some("sl"));

    // The worker's metrics reach the web role's /metrics (the worker has no HTTP port): the
    // two symbols without a quote as skipped, the close, merged with the web's own metrics.
    let web = halol::web::WebState {
        redis: t.redis.clone(),
        trading: t.clone(),
        db: db.clone(),
        queue: settings.clone(),
        admin_token: None,
        metrics: Some(halol::fleet_metrics::install("test").expect("recorder")),
    };
    // `<host>:<pid>:<random>`.
    let worker_name = format!("{}:{}:", halol::queue::runtime_hostname(), worker.pid());
    let worker_label = format!("process=\"{worker_name}");
    let sample = |text: &str, name: &str, label: &str| -> Option<String> {
        text.lines()
            .find(|l| {
                l.starts_with(&format!("{name}{{"))
                    && l.contains(&worker_label)
                    && l.contains(label)
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    let text = crate::helpers::eventually(
        Duration::from_secs(10),
        "the worker's metrics on /metrics",
        || async {
            let req = axum::http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .expect("request");
            let (status, _, body) = crate::helpers::call_router(web.clone(), req).await;
            assert_eq!(status, axum::http::StatusCode::OK);
            let text = body.as_str()?.strip_prefix("not json: ")?.to_owned();
            sample(&text, "halol_positions_closed_total", "reason=\"sl\"").map(|_| text)
        },
    )
    .await;
    assert_eq!(
        sample(
            &text,
            "halol_sltp_symbols_skipped_total",
            "reason=\"missing\""
        )
        .as_deref(),
        Some("2"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "halol_positions_closed_total", "reason=\"sl\"").as_deref(),
        Some("1")
    );
    assert!(text.contains("role=\"worker\""), "{text}");
    for family in ["halol_queue_jobs", "halol_positions_closed_total"] {
        assert_eq!(
            text.matches(&format!("# TYPE {family} ")).count(),
            1,
            "{family} once: {text}"
        );
    }
    // Fleet-wide gauges read from Redis carry no process label: every web reports the same.
    assert!(
        text.contains("halol_queue_jobs{queue=\"check_sl_tp_symbol\",state=\"ready\"} 0\n"),
        "{text}"
    );
    // A stopped worker's snapshot expires with its index entry.
    let mut conn = t.redis.manager();
    let index = halol::fleet_metrics::index_key(&settings.prefix);
    let names: Vec<String> = conn.zrange(&index, 0, -1).await.expect("index");
    let [name] = names.as_slice() else {
        panic!("one publishing process expected: {names:?}");
    };
    assert!(name.starts_with(&worker_name), "{name}");
    let key = halol::fleet_metrics::snapshot_key(&settings.prefix, name);
    worker.signal("TERM");
    crate::helpers::eventually(
        Duration::from_secs(10),
        "the snapshot to expire",
        || async {
            let exists: bool = conn.clone().exists(&key).await.expect("exists");
            let texts = halol::fleet_metrics::snapshots(&mut conn.clone(), &settings.prefix, "")
                .await
                .expect("snapshots");
            (!exists && texts.is_empty()).then_some(())
        },
    )
    .await;
    let left: i64 = conn.zcard(&index).await.expect("zcard");
    assert_eq!(left, 0, "expired processes leave the index");
    crate::helpers::cleanup(&t.redis, &settings).await;
}
