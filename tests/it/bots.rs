//! Bot configuration, REST, Redis keys, heartbeats, drawdown guard and central commands against
//! real PostgreSQL (a database per test) and Redis (a key namespace per test).

use std::time::Duration;

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use chrono::{TimeDelta, Utc};
use futures::StreamExt as _;
use halol::{
    bots::{apikeys, commands, heartbeat, manage, publish},
    trading::Trading,
};
use redis::AsyncCommands as _;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::{
    helpers::pool,
    trading::{d, seed, trading},
};

const ADMIN: &str = "test-admin-token-0123456789";

fn state(t: &Trading) -> halol::web::WebState {
    halol::web::WebState {
        redis: t.redis.clone(),
        trading: t.clone(),
        db: t.db.clone(),
        queue: crate::helpers::settings(|_| {}),
        admin_token: Some(std::sync::Arc::from(ADMIN)),
        metrics: None,
    }
}

async fn send(
    t: &Trading,
    method: &str,
    uri: &str,
    auth: Option<&str>,
    extra: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, format!("Bearer {a}"));
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("request");
    crate::helpers::call_router(state(t), req).await
}

async fn version(t: &Trading, mt5: i64) -> i64 {
    sqlx::query_scalar(
        "SELECT trade_config_version FROM trading_accounts WHERE mt5_account_id = $1",
    )
    .bind(mt5)
    .fetch_one(&t.db)
    .await
    .expect("version")
}

/// Seed plus a strategy "Trend Following Bot" (id returned) active on account 1001.
async fn setup(t: &Trading) -> i64 {
    seed(t).await;
    let s = manage::create_strategy(t, "Trend Following Bot", "TrendFollowingBot", false, "test")
        .await
        .expect("strategy");
    let sid = s["id"].as_i64().expect("id");
    manage::update_account(
        t,
        1001,
        manage::AccountPatch {
            active_bot_id: Some(Some(sid)),
            enabled_symbols: Some(vec!["EURUSD".into()]),
            subscription_expiry: Some(Some("2025-01-25T00:00:00Z".parse().expect("ts"))),
            ..Default::default()
        },
        "test",
    )
    .await
    .expect("account");
    manage::set_account_strategy(
        t,
        1001,
        sid,
        manage::StrategyPatch {
            allowed_symbols: Some(vec!["EURUSD".into(), "GBPUSD".into()]),
            parameters_by_symbol: Some(
                json!({"EURUSD": {"threshold_points": 20, "stop_loss": 30}}),
            ),
            optimization_config: Some(json!({"lookback_days": 90, "tp_sl_ranges": [[20, 200]]})),
            last_optimization_date: Some(Some("2025-12-20T10:30:00Z".parse().expect("ts"))),
            ..Default::default()
        },
        "test",
    )
    .await
    .expect("settings");
    sid
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn versions_bump_in_the_database_for_every_listed_change_and_never_go_down(db: PgPool) {
    let t = trading(db, pool().await);
    seed(&t).await;
    let v0 = version(&t, 1001).await;
    let mut last = v0;
    for change in [
        "UPDATE trading_accounts SET enabled_symbols = '{EURUSD}' WHERE mt5_account_id = 1001",
        "UPDATE trading_accounts SET lot_size = 0.05 WHERE mt5_account_id = 1001",
        "UPDATE trading_accounts SET bot_status = 'PAUSED' WHERE mt5_account_id = 1001",
        "UPDATE trading_accounts SET subscription_status = 'EXPIRED' WHERE mt5_account_id = 1001",
        "UPDATE trading_accounts SET dd_blocked = true, dd_block_kind = 'max', dd_block_reason = 'x' WHERE mt5_account_id = 1001",
        "INSERT INTO bot_strategies (name, strategy_class) VALUES ('S', 'S');
         UPDATE trading_accounts SET active_bot_id = (SELECT id FROM bot_strategies) WHERE mt5_account_id = 1001",
    ] {
        sqlx::raw_sql(change).execute(&t.db).await.expect(change);
        let v = version(&t, 1001).await;
        assert_eq!(v, last + 1, "{change}");
        last = v;
    }
    // Balances are reported state, not configuration: no bump.
    sqlx::query("UPDATE trading_accounts SET current_balance = 123 WHERE mt5_account_id = 1001")
        .execute(&t.db)
        .await
        .expect("balance");
    assert_eq!(version(&t, 1001).await, last);
    // Nobody can set the version by hand, let alone lower it.
    sqlx::query("UPDATE trading_accounts SET trade_config_version = 1 WHERE mt5_account_id = 1001")
        .execute(&t.db)
        .await
        .expect("write");
    assert_eq!(version(&t, 1001).await, last);

    // Strategy settings: parameters, status and allowed symbols bump their version.
    sqlx::raw_sql(
        "INSERT INTO account_strategies (account_id, strategy_id)
         SELECT a.id, s.id FROM trading_accounts a, bot_strategies s WHERE a.mt5_account_id = 1001",
    )
    .execute(&t.db)
    .await
    .expect("insert");
    for (change, expected) in [
        (
            "UPDATE account_strategies SET parameters_by_symbol = '{\"EURUSD\": {\"a\": 1}}'",
            2,
        ),
        ("UPDATE account_strategies SET status = 'PAUSED'", 3),
        (
            "UPDATE account_strategies SET allowed_symbols = '{EURUSD}'",
            4,
        ),
        ("UPDATE account_strategies SET version = 1", 4),
    ] {
        sqlx::raw_sql(change).execute(&t.db).await.expect(change);
        let v: i64 = sqlx::query_scalar("SELECT version FROM account_strategies")
            .fetch_one(&t.db)
            .await
            .expect("v");
        assert_eq!(v, expected, "{change}");
    }
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn the_bot_rest_api_returns_the_seed_documents_with_etags_and_scoped_keys(db: PgPool) {
    let t = trading(db, pool().await);
    let sid = setup(&t).await;
    let key = apikeys::create(&t.db, 1001, Some("vps-1"))
        .await
        .expect("key")
        .key;
    let other = apikeys::create(&t.db, 2002, None).await.expect("key");

    let (status, headers, body) = send(
        &t,
        "GET",
        "/api/bot/trade-config/1001/",
        Some(&key),
        &[],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v = version(&t, 1001).await;
    assert_eq!(body["version"], v);
    assert_eq!(headers[header::ETAG], format!("\"{v}\"").as_str());
    let fields: Vec<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "status",
        "version",
        "bot_status",
        "account_status",
        "subscription_status",
        "subscription_expiry",
        "current_balance",
        "peak_balance",
        "dd_blocked",
        "dd_block_reason",
        "risk_config",
        "trade_config",
        "active_bot_id",
        "active_bot_name",
    ];
    expected.sort_unstable();
    let mut got = fields.clone();
    got.sort_unstable();
    assert_eq!(got, expected);
    assert_eq!(body["status"], "success");
    assert_eq!(body["subscription_expiry"], "2025-01-25T00:00:00Z");
    assert_eq!(
        body["current_balance"], "0.0000",
        "decimal string with 4 places"
    );
    assert_eq!(body["dd_block_reason"], Value::Null);
    assert_eq!(
        body["risk_config"],
        json!({"dd_protection_enabled": true, "daily_dd_limit_percent": 5.0, "max_account_dd_percent": 10.0})
    );
    assert_eq!(
        body["trade_config"],
        json!({"enabled_symbols": ["EURUSD"], "lot_size": 0.01, "auto_pause_on_news": true,
               "dynamic_position_sizing_enabled": false})
    );
    assert_eq!(
        (
            body["active_bot_id"].clone(),
            body["active_bot_name"].clone()
        ),
        (json!(sid), json!("Trend Following Bot"))
    );

    // Conditional GET: 304 with no body, weak tags and lists accepted.
    let etag = format!("\"{v}\"");
    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"999\", {etag}"),
    ] {
        let (status, headers, body) = send(
            &t,
            "GET",
            "/api/bot/trade-config/1001/",
            Some(&key),
            &[("if-none-match", inm.as_str())],
            None,
        )
        .await;
        assert_eq!(
            (status, body),
            (StatusCode::NOT_MODIFIED, Value::Null),
            "{inm}"
        );
        assert_eq!(headers[header::ETAG], etag.as_str());
    }
    let (status, _, _) = send(
        &t,
        "GET",
        "/api/bot/trade-config/1001/",
        Some(&key),
        &[("if-none-match", "\"1\"")],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let (status, headers, body) = send(
        &t,
        "GET",
        &format!("/api/bot/strategy-config/1001/{sid}/"),
        Some(&key),
        &[],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut got: Vec<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    got.sort_unstable();
    let mut expected = vec![
        "status",
        "version",
        "bot_strategy_id",
        "bot_strategy_name",
        "bot_status",
        "bot_strategy_class",
        "is_pair_trading",
        "allowed_symbols",
        "parameters_by_symbol",
        "optimization_config",
        "last_optimization_date",
    ];
    expected.sort_unstable();
    assert_eq!(got, expected);
    assert_eq!(body["bot_strategy_class"], "TrendFollowingBot");
    assert_eq!(
        body["parameters_by_symbol"]["EURUSD"]["threshold_points"],
        20
    );
    assert_eq!(body["last_optimization_date"], "2025-12-20T10:30:00Z");
    assert_eq!(
        headers[header::ETAG],
        format!("\"{}\"", body["version"]).as_str()
    );

    // Auth: missing, unknown and revoked keys are 401; another account's id is 403; unknown
    // strategy is 404. Every error is JSON.
    let (status, _, body) = send(&t, "GET", "/api/bot/trade-config/1001/", None, &[], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].is_string());
    let forged = format!("{}x", &key[..key.len() - 1]);
    let (status, _, _) = send(
        &t,
        "GET",
        "/api/bot/trade-config/1001/",
        Some(&forged),
        &[],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = send(
        &t,
        "GET",
        "/api/bot/trade-config/2002/",
        Some(&key),
        &[],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _, _) = send(
        &t,
        "GET",
        "/api/bot/trade-config/777/",
        Some(&key),
        &[],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no probing for accounts");
    let (status, _, body) = send(
        &t,
        "GET",
        "/api/bot/strategy-config/1001/999/",
        Some(&key),
        &[],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _, _) = send(
        &t,
        "GET",
        "/api/bot/trade-config/2002/",
        Some(&other.key),
        &[("x-api-key", "")],
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "an empty X-API-Key is not a key"
    );
    assert!(apikeys::revoke(&t.db, other.id).await.expect("revoke"));
    let (status, _, _) = send(
        &t,
        "GET",
        "/api/bot/trade-config/2002/",
        Some(&other.key),
        &[],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "revoked");
    let hash: Vec<u8> = sqlx::query_scalar("SELECT key_hash FROM bot_api_keys WHERE id = $1")
        .bind(other.id)
        .fetch_one(&t.db)
        .await
        .expect("hash");
    assert!(
        !String::from_utf8_lossy(&hash).contains(&other.key),
        "only the hash is stored"
    );
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn a_committed_change_is_published_to_redis_and_pushed(db: PgPool) {
    let t = trading(db, pool().await);
    let sid = setup(&t).await;
    let client = redis::Client::open(crate::helpers::redis_url()).expect("client");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub
        .subscribe(t.keys.bot_events(1001))
        .await
        .expect("subscribe");
    let mut messages = pubsub.on_message();

    let after = manage::update_account(
        &t,
        1001,
        manage::AccountPatch {
            bot_status: Some("PAUSED".into()),
            ..Default::default()
        },
        "admin:test",
    )
    .await
    .expect("update");
    let v = after["trade_config_version"].as_i64().expect("version");
    let mut conn = t.redis.manager();
    let published: i64 = conn
        .hget(t.keys.trade_config(1001), "version")
        .await
        .expect("hget");
    assert_eq!(published, v);
    let ttl: i64 = conn.ttl(t.keys.trade_config(1001)).await.expect("ttl");
    assert!((86_390..=86_400).contains(&ttl), "{ttl}");
    let hb: std::collections::HashMap<String, String> = conn
        .hgetall(t.keys.server_heartbeat(1001))
        .await
        .expect("hb");
    assert_eq!(hb.get("bot_status").map(String::as_str), Some("PAUSED"));
    for field in [
        "account_status",
        "subscription_status",
        "dd_blocked",
        "dd_block_reason",
        "last_update",
    ] {
        assert!(hb.contains_key(field), "{field} missing from {hb:?}");
    }
    let ttl: i64 = conn.ttl(t.keys.server_heartbeat(1001)).await.expect("ttl");
    assert!((290..=300).contains(&ttl), "{ttl}");
    let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
        .await
        .expect("a push within 5 s")
        .expect("message");
    let payload: Value =
        serde_json::from_str(&msg.get_payload::<String>().expect("payload")).expect("json");
    assert_eq!(payload, json!({"kind": "trade_config", "version": v}));

    // A writer that commits and dies before publishing (here: raw SQL) is repaired by the next
    // drain; the version key never goes backwards.
    sqlx::query("UPDATE account_strategies SET status = 'PAUSED'")
        .execute(&t.db)
        .await
        .expect("raw change");
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM bot_config_outbox")
        .fetch_one(&t.db)
        .await
        .expect("outbox");
    assert_eq!(pending, 1);
    publish::drain_outbox(&t).await.expect("drain");
    let sv: i64 = conn
        .hget(t.keys.strategy_config(1001, sid), "version")
        .await
        .expect("hget");
    let current: i64 = sqlx::query_scalar("SELECT version FROM account_strategies")
        .fetch_one(&t.db)
        .await
        .expect("v");
    assert_eq!(sv, current);
    let _: () = conn
        .hset(t.keys.strategy_config(1001, sid), "version", current + 10)
        .await
        .expect("hset");
    publish::refresh_all(&t).await.expect("refresh");
    let sv: i64 = conn
        .hget(t.keys.strategy_config(1001, sid), "version")
        .await
        .expect("hget");
    assert_eq!(
        sv,
        current + 10,
        "a publisher never moves a version key backwards"
    );
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn keys_lost_with_redis_are_rebuilt_from_postgres_by_the_refresh(db: PgPool) {
    let t = trading(db, pool().await);
    let sid = setup(&t).await;
    publish::refresh_all(&t).await.expect("refresh");
    let mut conn = t.redis.manager();
    let keys = [
        t.keys.trade_config(1001),
        t.keys.server_heartbeat(1001),
        t.keys.strategy_config(1001, sid),
        t.keys.trade_config(2002),
        t.keys.server_heartbeat(2002),
    ];
    let _: () = conn.del(&keys[..]).await.expect("lose them");
    let rebuilt = publish::refresh_all(&t).await.expect("refresh");
    assert_eq!((rebuilt.accounts, rebuilt.strategies), (2, 1));
    for key in &keys {
        let exists: bool = conn.exists(key).await.expect("exists");
        assert!(exists, "{key} not rebuilt");
    }
    let v: i64 = conn
        .hget(t.keys.trade_config(1001), "version")
        .await
        .expect("v");
    assert_eq!(v, version(&t, 1001).await, "versions survive losing Redis");
}

async fn beat(t: &Trading, mt5: i64, balance: &str, equity: &str) {
    let key = t.keys.bot_heartbeat(mt5);
    let mut conn = t.redis.manager();
    let _: () = redis::pipe()
        .hset_multiple(
            &key,
            &[
                ("mt5_account_id", mt5.to_string()),
                ("timestamp", Utc::now().to_rfc3339()),
                ("bot_status", "ACTIVE".into()),
                ("current_balance", balance.into()),
                ("equity", equity.into()),
            ],
        )
        .expire(&key, 60)
        .query_async(&mut conn)
        .await
        .expect("beat");
}

#[derive(Debug, sqlx::FromRow)]
struct BotState {
    bot_status: String,
    bot_down_at: Option<chrono::DateTime<Utc>>,
    last_seen_at: Option<chrono::DateTime<Utc>>,
    dd_blocked: bool,
    dd_block_kind: Option<String>,
    dd_block_reason: Option<String>,
    peak_balance: rust_decimal::Decimal,
}

async fn bot(t: &Trading, mt5: i64) -> BotState {
    sqlx::query_as(
        "SELECT bot_status, bot_down_at, last_seen_at, dd_blocked, dd_block_kind, dd_block_reason,
                peak_balance FROM trading_accounts WHERE mt5_account_id = $1",
    )
    .bind(mt5)
    .fetch_one(&t.db)
    .await
    .expect("bot")
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn a_silent_bot_goes_down_once_and_comes_back_on_its_next_heartbeat(db: PgPool) {
    let t = trading(db, pool().await);
    seed(&t).await;
    let seen = Utc::now() - TimeDelta::seconds(90);
    sqlx::query("UPDATE trading_accounts SET last_seen_at = $1")
        .bind(seen)
        .execute(&t.db)
        .await
        .expect("seen");
    sqlx::query("UPDATE trading_accounts SET bot_status = 'PAUSED' WHERE mt5_account_id = 2002")
        .execute(&t.db)
        .await
        .expect("pause");
    let v = version(&t, 1001).await;
    let pass = heartbeat::check(&t, Utc::now()).await.expect("pass");
    assert_eq!(pass.went_down, vec![1001, 2002]);
    let b = bot(&t, 1001).await;
    assert_eq!(b.bot_status, "DOWN");
    let down_at = b.bot_down_at.expect("down at");
    assert!(
        (down_at - (seen + TimeDelta::seconds(60)))
            .num_milliseconds()
            .abs()
            < 1,
        "down at last seen + 60 s"
    );
    assert_eq!(version(&t, 1001).await, v + 1, "DOWN bumps the version");
    // Once: the next pass changes nothing.
    let again = heartbeat::check(&t, Utc::now()).await.expect("pass");
    assert!(again.went_down.is_empty());
    assert_eq!(version(&t, 1001).await, v + 1);

    beat(&t, 1001, "10000", "10000").await;
    beat(&t, 2002, "5000", "5000").await;
    let back = heartbeat::check(&t, Utc::now()).await.expect("pass");
    assert_eq!(back.came_back, vec![1001, 2002]);
    let b = bot(&t, 1001).await;
    assert_eq!((b.bot_status.as_str(), b.bot_down_at), ("ACTIVE", None));
    assert!(
        b.last_seen_at
            .is_some_and(|s| (Utc::now() - s).num_seconds() < 5)
    );
    assert_eq!(
        bot(&t, 2002).await.bot_status,
        "PAUSED",
        "a paused bot comes back paused"
    );
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn a_malformed_heartbeat_is_skipped_and_the_others_are_recorded(db: PgPool) {
    let t = trading(db, pool().await);
    seed(&t).await;
    let mut conn = t.redis.manager();
    let _: () = conn
        .hset(t.keys.bot_heartbeat(1001), "current_balance", "lots")
        .await
        .expect("hset");
    beat(&t, 2002, "5100.5", "5100.5").await;
    let pass = heartbeat::check(&t, Utc::now()).await.expect("pass");
    assert_eq!((pass.malformed, pass.alive), (1, 1));
    let b = bot(&t, 2002).await;
    assert_eq!(b.peak_balance, d("5100.5"));
    assert!(bot(&t, 1001).await.last_seen_at.is_none());
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn the_drawdown_guard_blocks_daily_until_rollover_and_max_until_an_admin(db: PgPool) {
    let t = trading(db, pool().await);
    seed(&t).await;
    // Day starts at 10,000; equity falls 5 %: the daily limit (5 %) is reached.
    beat(&t, 1001, "10000", "10000").await;
    heartbeat::check(&t, Utc::now()).await.expect("pass");
    let v = version(&t, 1001).await;
    beat(&t, 1001, "10000", "9500").await;
    let pass = heartbeat::check(&t, Utc::now()).await.expect("pass");
    assert_eq!(pass.blocked, vec![1001]);
    let b = bot(&t, 1001).await;
    assert_eq!(
        (b.dd_blocked, b.dd_block_kind.as_deref()),
        (true, Some("daily"))
    );
    assert!(
        b.dd_block_reason
            .as_deref()
            .is_some_and(|r| r.contains("daily drawdown 5")),
        "{:?}",
        b.dd_block_reason
    );
    assert_eq!(
        version(&t, 1001).await,
        v + 1,
        "the block bumps the version so the bot pauses"
    );
    // Recovering intraday does not lift it.
    beat(&t, 1001, "10000", "10000").await;
    heartbeat::check(&t, Utc::now()).await.expect("pass");
    assert!(bot(&t, 1001).await.dd_blocked);
    // The next UTC day lifts it.
    sqlx::query("UPDATE trading_accounts SET day_ref_date = day_ref_date - 1")
        .execute(&t.db)
        .await
        .expect("yesterday");
    heartbeat::check(&t, Utc::now()).await.expect("pass");
    assert!(!bot(&t, 1001).await.dd_blocked);

    // Max DD from the peak (12,000): equity 10,800 is exactly 10 %: blocked, and sticky.
    beat(&t, 1001, "12000", "12000").await;
    heartbeat::check(&t, Utc::now()).await.expect("pass");
    sqlx::query(
        "UPDATE trading_accounts SET day_ref_date = day_ref_date - 1, daily_dd_limit_percent = 50",
    )
    .execute(&t.db)
    .await
    .expect("no daily");
    beat(&t, 1001, "12000", "10800").await;
    heartbeat::check(&t, Utc::now()).await.expect("pass");
    assert_eq!(bot(&t, 1001).await.dd_block_kind.as_deref(), Some("max"));
    sqlx::query("UPDATE trading_accounts SET day_ref_date = day_ref_date - 1")
        .execute(&t.db)
        .await
        .expect("next day");
    beat(&t, 1001, "12000", "12000").await;
    heartbeat::check(&t, Utc::now()).await.expect("pass");
    assert_eq!(
        bot(&t, 1001).await.dd_block_kind.as_deref(),
        Some("max"),
        "max blocks survive rollover"
    );
    manage::update_account(
        &t,
        1001,
        manage::AccountPatch {
            clear_dd_block: true,
            ..Default::default()
        },
        "admin:test",
    )
    .await
    .expect("clear");
    let b = bot(&t, 1001).await;
    assert!(!b.dd_blocked);
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM admin_actions WHERE actor = 'admin:test' AND action = 'update_account'",
    )
    .fetch_one(&t.db)
    .await
    .expect("audit");
    assert_eq!(audited, 1);
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn central_commands_pause_resume_and_emergency_stop_in_one_audited_transaction(db: PgPool) {
    let t = trading(db, pool().await);
    seed(&t).await;
    let all = commands::Filter::default();
    let v = version(&t, 1001).await;
    let out = commands::run(&t, "ops", commands::Command::PauseAll, &all)
        .await
        .expect("pause");
    assert_eq!(out.changed, vec![1001, 2002]);
    assert_eq!(version(&t, 1001).await, v + 1);
    let mut conn = t.redis.manager();
    let hb: String = conn
        .hget(t.keys.server_heartbeat(1001), "bot_status")
        .await
        .expect("hb");
    assert_eq!(hb, "PAUSED", "published after commit");
    let out = commands::run(&t, "ops", commands::Command::ResumeAll, &all)
        .await
        .expect("resume");
    assert_eq!(out.changed, vec![1001, 2002]);

    let only = commands::Filter {
        mt5_account_ids: Some(vec![2002]),
        active_bot_id: None,
    };
    let out = commands::run(&t, "ops", commands::Command::EmergencyStop, &only)
        .await
        .expect("stop");
    assert_eq!(out.changed, vec![2002]);
    assert_eq!(bot(&t, 2002).await.bot_status, "PAUSED");
    let out = commands::run(&t, "ops", commands::Command::ResumeAll, &all)
        .await
        .expect("resume");
    assert_eq!(out.held_by_emergency_stop, vec![2002]);
    assert_eq!(
        bot(&t, 2002).await.bot_status,
        "PAUSED",
        "resume is blocked until cleared"
    );
    let refused = manage::update_account(
        &t,
        2002,
        manage::AccountPatch {
            bot_status: Some("ACTIVE".into()),
            ..Default::default()
        },
        "admin:test",
    )
    .await;
    assert!(matches!(
        refused,
        Err(halol::trading::TradingError::Conflict(_))
    ));
    commands::run(&t, "ops", commands::Command::ClearEmergency, &only)
        .await
        .expect("clear");
    let out = commands::run(&t, "ops", commands::Command::ResumeAll, &only)
        .await
        .expect("resume");
    assert_eq!(out.changed, vec![2002]);

    let actions: Vec<(String, String)> =
        sqlx::query_as("SELECT actor, action FROM admin_actions ORDER BY id")
            .fetch_all(&t.db)
            .await
            .expect("audit");
    let names: Vec<&str> = actions.iter().map(|(_, a)| a.as_str()).collect();
    assert_eq!(
        names,
        [
            "pause_all",
            "resume_all",
            "emergency_stop",
            "resume_all",
            "clear_emergency",
            "resume_all"
        ]
    );
    assert!(actions.iter().all(|(actor, _)| actor == "ops"));
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn the_admin_api_changes_accounts_and_refuses_bad_input_naming_the_field(db: PgPool) {
    let t = trading(db, pool().await);
    let sid = setup(&t).await;
    let before = version(&t, 1001).await;
    for (body, field) in [
        (json!({"bot_status": "SLEEPING"}), "bot_status"),
        (json!({"lot_size": "-1"}), "lot_size"),
        (
            json!({"daily_dd_limit_percent": 0}),
            "daily_dd_limit_percent",
        ),
        (json!({"enabled_symbols": ["NOPE"]}), "enabled_symbols"),
        (json!({"active_bot_id": 999}), "active_bot_id"),
        (
            json!({"subscription_expiry": "soon"}),
            "subscription_expiry",
        ),
        (json!({"auto_pause_on_news": "yes"}), "auto_pause_on_news"),
        (json!({"colour": 1}), "body"),
    ] {
        let (status, _, err) = send(
            &t,
            "PATCH",
            "/admin/api/accounts/1001",
            Some(ADMIN),
            &[],
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} -> {err}");
        assert_eq!(err["field"], field, "{body} -> {err}");
    }
    assert_eq!(version(&t, 1001).await, before, "nothing written");
    let (status, _, body) = send(
        &t,
        "PATCH",
        "/admin/api/accounts/1001",
        Some(ADMIN),
        &[("x-admin-actor", "alice")],
        Some(json!({"lot_size": 0.02, "enabled_symbols": ["EURUSD", "GBPUSD"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["trade_config_version"], before + 1);
    let (status, _, body) = send(
        &t,
        "PUT",
        &format!("/admin/api/accounts/1001/strategies/{sid}"),
        Some(ADMIN),
        &[],
        Some(json!({"parameters_by_symbol": {"EURUSD": 5}})),
    )
    .await;
    assert_eq!(
        (status, body["field"].clone()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!("parameters_by_symbol")
        )
    );
    let (status, _, body) = send(
        &t,
        "POST",
        "/admin/api/bots/commands",
        Some(ADMIN),
        &[],
        Some(json!({"command": "pause_all", "mt5_account_ids": [1001]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["changed"], json!([1001]));
    let (status, _, body) = send(&t, "GET", "/admin/api/actions", Some(ADMIN), &[], None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["actions"][0]["action"], "pause_all");
    assert!(
        body["actions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["actor"] == "admin:alice"))
    );
    let (status, _, _) = send(
        &t,
        "PATCH",
        "/admin/api/accounts/1001",
        None,
        &[],
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn a_change_by_any_writer_is_published_at_once_by_the_listening_publisher(db: PgPool) {
    let t = trading(db, pool().await);
    seed(&t).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let listener = tokio::spawn(publish::listen(t.clone(), stop.clone()));
    // The initial drain publishes what was committed before it listened.
    let v = version(&t, 1001).await;
    crate::helpers::eventually(Duration::from_secs(5), "the initial publish", || async {
        let got: Option<i64> = t
            .redis
            .manager()
            .hget(t.keys.trade_config(1001), "version")
            .await
            .ok()?;
        (got == Some(v)).then_some(())
    })
    .await;
    // psql-style change: no application code publishes it.
    sqlx::query("UPDATE trading_accounts SET lot_size = 0.07 WHERE mt5_account_id = 1001")
        .execute(&t.db)
        .await
        .expect("raw change");
    let started = std::time::Instant::now();
    crate::helpers::eventually(
        Duration::from_secs(5),
        "the NOTIFY-driven publish",
        || async {
            let got: Option<i64> = t
                .redis
                .manager()
                .hget(t.keys.trade_config(1001), "version")
                .await
                .ok()?;
            (got == Some(v + 1)).then_some(())
        },
    )
    .await;
    println!("raw change visible in Redis after {:?}", started.elapsed());
    stop.cancel();
    listener.await.expect("listener stops");
}
