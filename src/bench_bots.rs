//! `halol bench bots`: the bot system's figures on this machine, in a throwaway database
//! (`<DATABASE_URL db>_bench_bots`, recreated) and Redis key namespace.
//!
//! 1. REST: `GET /api/bot/trade-config/{id}/` with a valid key against a `halol web` process this
//!    command starts, driven by `oha` (a second process, loopback): 200s, then the 304 path.
//! 2. Change to visible: a committed config change (raw SQL, so only the LISTEN/NOTIFY publisher
//!    can publish it, and through the admin operation) until the new version is readable in
//!    Redis **and** received on the push channel.
//! 3. One `check_bot_heartbeats` pass over `--bots` simulated bots with fresh heartbeats.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::StreamExt as _;
use redis::AsyncCommands as _;

use crate::{
    bots::{apikeys, heartbeat, manage, publish},
    config::Config,
    trading::{CacheKeys, Trading},
};

/// Options of `halol bench bots`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchBotsArgs {
    /// Simulated bots for the heartbeat pass.
    #[arg(long, default_value_t = 10_000)]
    pub bots: usize,
    /// Heartbeat passes (median reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Config changes timed for change-to-visible.
    #[arg(long, default_value_t = 300)]
    pub changes: usize,
    /// The `oha` binary for the HTTP figures (skipped if not found).
    #[arg(long, default_value = "oha")]
    pub oha: String,
    /// HTTP requests per oha run.
    #[arg(long, default_value_t = 200_000)]
    pub requests: usize,
    /// oha connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// Run the bot benchmarks and print their figures.
pub async fn run(config: &Config, args: BenchBotsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.bots > 0 && args.rounds > 0 && args.changes > 0,
        "--bots, --rounds and --changes must be positive"
    );
    let mut url = url::Url::parse(&config.database_url).context("DATABASE_URL")?;
    let db_name = format!("{}_bench_bots", url.path().trim_start_matches('/'));
    url.set_path(&db_name);
    let bench_url = url.to_string();
    let mut maintenance = url.clone();
    maintenance.set_path("/postgres");
    let admin = crate::db::connect(maintenance.as_str(), 1).await?;
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
    ))
    .execute(&admin)
    .await?;
    admin.close().await;
    crate::db::ensure_database(&bench_url).await?;
    let db = crate::db::connect(&bench_url, 8).await?;
    crate::db::migrate(&db).await?;
    let namespace = format!("bench-{}:", ulid::Ulid::new());
    let redis = crate::redis_pool::RedisPool::connect(&config.redis_url, 8).await?;
    let t = Trading {
        db: db.clone(),
        redis,
        keys: CacheKeys::new(&namespace),
        price_max_age: config.price_max_age,
    };

    println!("setting up {} accounts in {db_name} ...", args.bots);
    sqlx::query(
        "INSERT INTO trading_accounts (mt5_account_id, currency, balance, current_balance,
                                       peak_balance, last_seen_at)
         SELECT 100000 + g, 'USD', 10000, 10000, 10000, now() FROM generate_series(1, $1) g",
    )
    .bind(args.bots as i64)
    .execute(&db)
    .await?;
    sqlx::query("DELETE FROM bot_config_outbox")
        .execute(&db)
        .await?;
    publish::refresh_all(&t).await?;

    // 3. Heartbeat pass over every bot.
    let mut passes = Vec::new();
    for round in 0..args.rounds {
        write_heartbeats(&t, args.bots, round).await?;
        let started = Instant::now();
        let pass = heartbeat::check(&t, chrono::Utc::now()).await?;
        let took = started.elapsed().as_secs_f64() * 1e3;
        anyhow::ensure!(
            pass.alive == args.bots,
            "only {} heartbeats read",
            pass.alive
        );
        println!(
            "heartbeat pass {}: {took:.1} ms ({} bots alive)",
            round + 1,
            pass.alive
        );
        passes.push(took);
    }

    // 2. Change to visible.
    let stop = tokio_util::sync::CancellationToken::new();
    let listener = tokio::spawn(publish::listen(t.clone(), stop.clone()));
    let client = redis::Client::open(config.redis_url.as_str())?;
    let mut pubsub = client.get_async_pubsub().await?;
    let mt5 = 100_001_i64;
    pubsub.subscribe(t.keys.bot_events(mt5)).await?;
    let mut messages = pubsub.on_message();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut raw = Vec::new();
    let mut api = Vec::new();
    for i in 0..args.changes {
        // Never the current value (0.01 at first), so every change bumps the version.
        let lot = format!("0.0{}", 2 + i % 8);
        let started = Instant::now();
        let version: i64 = if i % 2 == 0 {
            sqlx::query_scalar(
                "UPDATE trading_accounts SET lot_size = $2::numeric WHERE mt5_account_id = $1
                 RETURNING trade_config_version",
            )
            .bind(mt5)
            .bind(&lot)
            .fetch_one(&db)
            .await?
        } else {
            let v = manage::update_account(
                &t,
                mt5,
                manage::AccountPatch {
                    lot_size: Some(lot.parse()?),
                    ..Default::default()
                },
                "bench",
            )
            .await?;
            v["trade_config_version"].as_i64().unwrap_or_default()
        };
        // Pushed ...
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(remaining, messages.next())
                .await
                .context("no push within 5 s")?
                .context("pubsub closed")?;
            let payload: serde_json::Value =
                serde_json::from_str(&msg.get_payload::<String>()?).unwrap_or_default();
            if payload["version"].as_i64() >= Some(version) {
                break;
            }
        }
        // ... and readable.
        let mut conn = t.redis.manager();
        loop {
            let got: Option<i64> = conn.hget(t.keys.trade_config(mt5), "version").await?;
            if got >= Some(version) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "version {version} never readable"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if i % 2 == 0 {
            raw.push(ms)
        } else {
            api.push(ms)
        }
    }
    stop.cancel();
    let _ = listener.await;

    // 1. REST throughput through a web process and oha.
    let key = apikeys::create(&db, mt5, Some("bench")).await?.key;
    let version: i64 = sqlx::query_scalar(
        "SELECT trade_config_version FROM trading_accounts WHERE mt5_account_id = $1",
    )
    .bind(mt5)
    .fetch_one(&db)
    .await?;
    let http = http_figures(config, &args, &bench_url, &namespace, mt5, &key, version).await;

    println!("\n== bench-bots ({} bots) ==", args.bots);
    println!(
        "heartbeat pass, {} bots: median {:.1} ms (of {} passes)",
        args.bots,
        percentile(&mut passes, 0.5),
        args.rounds
    );
    println!(
        "change to visible (raw SQL via NOTIFY): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
        percentile(&mut raw, 0.5),
        percentile(&mut raw, 0.99),
        percentile(&mut raw, 1.0),
        raw.len()
    );
    println!(
        "change to visible (admin operation): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
        percentile(&mut api, 0.5),
        percentile(&mut api, 0.99),
        percentile(&mut api, 1.0),
        api.len()
    );
    match http {
        Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
        Err(e) => println!("HTTP figures skipped: {e:#}"),
    }

    // Clean up the namespace's keys (bounded scan).
    let mut conn = t.redis.manager();
    let keys: Vec<String> = conn.keys(format!("{namespace}*")).await.unwrap_or_default();
    for chunk in keys.chunks(1000) {
        let _: Result<(), _> = conn.del(chunk).await;
    }
    Ok(())
}

async fn write_heartbeats(t: &Trading, bots: usize, round: usize) -> anyhow::Result<()> {
    let mut conn = t.redis.manager();
    let now = chrono::Utc::now().to_rfc3339();
    for chunk in (0..bots).collect::<Vec<_>>().chunks(2_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let mt5 = 100_001 + *i as i64;
            let key = t.keys.bot_heartbeat(mt5);
            let balance = format!("{}.{:02}", 10_000 + round, i % 100);
            pipe.hset_multiple(
                &key,
                &[
                    ("mt5_account_id", mt5.to_string()),
                    ("timestamp", now.clone()),
                    ("bot_status", "ACTIVE".to_owned()),
                    ("current_balance", balance.clone()),
                    ("equity", balance),
                ],
            )
            .ignore()
            .expire(&key, 60)
            .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn http_figures(
    config: &Config,
    args: &BenchBotsArgs,
    database_url: &str,
    namespace: &str,
    mt5: i64,
    key: &str,
    version: i64,
) -> anyhow::Result<Vec<String>> {
    Command::new(&args.oha)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("{} not found (cargo install oha)", args.oha))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut web = Command::new(std::env::current_exe()?)
        .arg("web")
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", &config.redis_url)
        .env("REDIS_KEY_NAMESPACE", namespace)
        .env("PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting halol web")?;
    let url = format!("http://127.0.0.1:{port}/api/bot/trade-config/{mt5}/");
    let ready = async {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    let result = async {
        anyhow::ensure!(ready.await, "web did not start");
        let mut lines = Vec::new();
        for (label, extra) in [
            ("200 (full document)", None),
            ("304 (If-None-Match)", Some(format!("If-None-Match: \"{version}\""))),
        ] {
            let mut cmd = Command::new(&args.oha);
            cmd.args(["--no-tui", "--output-format", "json", "-n"])
                .arg(args.requests.to_string())
                .arg("-c")
                .arg(args.connections.to_string())
                .arg("-H")
                .arg(format!("Authorization: Bearer {key}"));
            if let Some(h) = extra {
                cmd.arg("-H").arg(h);
            }
            // Warm-up, then the measured run.
            let _ = Command::new(&args.oha)
                .args(["--no-tui", "-n", "2000", "-c", "16", "-H"])
                .arg(format!("Authorization: Bearer {key}"))
                .arg(&url)
                .stdout(Stdio::null())
                .status();
            let out = cmd.arg(&url).output().context("running oha")?;
            let report: serde_json::Value = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("oha output: {}", String::from_utf8_lossy(&out.stderr)))?;
            let rps = report["summary"]["requestsPerSec"].as_f64().unwrap_or_default();
            let p50 = report["latencyPercentiles"]["p50"].as_f64().unwrap_or_default() * 1e3;
            let p99 = report["latencyPercentiles"]["p99"].as_f64().unwrap_or_default() * 1e3;
            let codes = report["statusCodeDistribution"].to_string();
            lines.push(format!(
                "GET trade-config {label}: {rps:.0} req/s, p50 {p50:.2} ms, p99 {p99:.2} ms, status {codes} ({} requests, {} connections, oha)",
                args.requests, args.connections
            ));
        }
        Ok(lines)
    }
    .await;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(web.id().to_string())
        .status();
    let _ = web.wait();
    result
}
