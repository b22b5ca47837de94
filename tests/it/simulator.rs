//! `halol simulate-bots` against a real web role process, PostgreSQL and Redis: heartbeats land
//! with the contract's fields and TTL, configs are fetched (200, then 304 while the version key
//! is missing), the server's instructions pause a bot, and bad options are refused.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use halol::bots::{heartbeat, publish};
use redis::AsyncCommands as _;
use serde_json::Value;
use sqlx::PgPool;

use crate::{
    helpers::{Proc, eventually, free_port, pool, redis_url},
    trading::trading,
};

const FIRST: i64 = 7_700_001;

fn halol(url: &str, namespace: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_halol"));
    cmd.args(args)
        .env("DATABASE_URL", url)
        .env("REDIS_URL", redis_url())
        .env("REDIS_KEY_NAMESPACE", namespace)
        .env("QUEUE_PREFIX", format!("it-{}", ulid::Ulid::new()))
        .env("ADMIN_TOKEN", "test-admin-token-0123456789")
        .env("RUST_LOG", "warn");
    cmd
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn simulated_bots_beat_fetch_their_config_and_obey_the_server(db: PgPool) {
    // Arrange: the first account exists already with an expired subscription, and its keys are
    // published; the simulator creates the other two and finds no version keys for them.
    let t = trading(db.clone(), pool().await);
    let namespace = t.keys.price("").trim_end_matches("price:").to_owned();
    let url = format!(
        "postgres://postgres@127.0.0.1:5432/{}",
        db.connect_options()
            .get_database()
            .expect("test database name")
    );
    sqlx::query(
        "INSERT INTO trading_accounts (mt5_account_id, currency, balance, subscription_status)
         VALUES ($1, 'USD', 10000, 'EXPIRED')",
    )
    .bind(FIRST)
    .execute(&db)
    .await
    .expect("account");
    publish::refresh_all(&t).await.expect("publish");
    let port = free_port();
    let mut web = halol(&url, &namespace, &["web"]);
    web.env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut web = Proc::spawn(web);
    eventually(
        Duration::from_secs(15),
        "the web role to listen",
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        },
    )
    .await;
    assert!(web.alive());

    // Act
    let base = format!("http://127.0.0.1:{port}");
    let first = FIRST.to_string();
    let out = halol(
        &url,
        &namespace,
        &[
            "simulate-bots",
            "--create",
            "3",
            "--first-mt5",
            &first,
            "--base-url",
            &base,
            "--heartbeat-secs",
            "1",
            "--version-secs",
            "1",
            "--duration-secs",
            "6",
        ],
    )
    .output()
    .expect("run simulate-bots");

    // Assert
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "simulate-bots failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary in {stdout:?} (stderr {stderr})"));
    let n = |path: &str| {
        summary
            .pointer(path)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("{path} missing from {summary}"))
    };
    assert_eq!(n("/bots"), 3, "{summary}");
    assert!(
        n("/heartbeats_sent") >= 12,
        "about 6 beats per bot: {summary}"
    );
    assert_eq!(n("/heartbeat_errors"), 0, "{summary}");
    assert!(n("/version_checks") >= 12, "{summary}");
    assert!(
        n("/fetches/ok_200") >= 3,
        "each bot fetched its config: {summary}"
    );
    assert!(
        n("/fetches/not_modified_304") >= 4,
        "missing version keys are refetched conditionally: {summary}"
    );
    assert_eq!(n("/fetches/errors"), 0, "{summary}");
    assert!(
        n("/fetch_latency/count") >= n("/fetches/ok_200"),
        "{summary}"
    );
    assert!(n("/server_heartbeats_read") >= 1, "{summary}");
    assert!(
        n("/pauses_seen") >= 1,
        "the expired subscription pauses its bot: {summary}"
    );

    let mut conn = t.redis.manager();
    for mt5 in FIRST..FIRST + 3 {
        let key = t.keys.bot_heartbeat(mt5);
        let fields: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&key)
            .arg(&heartbeat::FIELDS[..])
            .query_async(&mut conn)
            .await
            .expect("hmget");
        let pttl: i64 = conn.pttl(&key).await.expect("pttl");
        assert!(
            (1..=60_000).contains(&pttl),
            "{key} has the 60 s TTL: {pttl}"
        );
        let beat = heartbeat::parse(&fields, pttl)
            .expect("well formed")
            .expect("present");
        assert!(beat.current_balance > rust_decimal::Decimal::ZERO);
        let status: Option<String> = conn.hget(&key, "bot_status").await.expect("hget");
        let expected = if mt5 == FIRST { "PAUSED" } else { "ACTIVE" };
        assert_eq!(status.as_deref(), Some(expected), "{key}");
        let id: Option<String> = conn.hget(&key, "mt5_account_id").await.expect("hget");
        assert_eq!(id, Some(mt5.to_string()));
    }
    let keys: i64 =
        sqlx::query_scalar("SELECT count(*) FROM bot_api_keys WHERE label = 'simulate-bots'")
            .fetch_one(&db)
            .await
            .expect("count keys");
    assert_eq!(keys, 3);
    drop(web);
    let leftovers: Vec<String> = conn.keys(format!("{namespace}*")).await.unwrap_or_default();
    if !leftovers.is_empty() {
        let _: Result<(), _> = conn.del(leftovers).await;
    }
}

#[sqlx::test(migrator = "halol::MIGRATOR")]
async fn simulate_bots_refuses_bad_options_with_a_message_and_a_non_zero_exit(db: PgPool) {
    let url = format!(
        "postgres://postgres@127.0.0.1:5432/{}",
        db.connect_options()
            .get_database()
            .expect("test database name")
    );
    let namespace = format!("it-{}:", ulid::Ulid::new());
    let cases: [(&[&str], &str); 5] = [
        (
            &["--heartbeat-secs", "0", "--create", "1", "--first-mt5", "1"],
            "--heartbeat-secs",
        ),
        (
            &[
                "--base-url",
                "https://x",
                "--create",
                "1",
                "--first-mt5",
                "1",
            ],
            "--base-url",
        ),
        (&["--keys-file", "/nonexistent/keys.csv"], "--keys-file"),
        (
            &["--create", "1", "--first-mt5", "1", "--currency", "XXX"],
            "--currency",
        ),
        (&["--duration-secs", "1"], "--create"),
    ];
    for (args, named) in cases {
        let mut all = vec!["simulate-bots"];
        all.extend_from_slice(args);
        let out = halol(&url, &namespace, &all).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should be refused");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM trading_accounts")
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(accounts, 0, "a refused run writes nothing");
}
