//! The roles as real processes: SIGKILL, SIGTERM, SIGSTOP stalls, Redis restarts, redundant
//! schedulers and `dev`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use halol::{
    queue::{NewJob, Producer, QueueSettings, inspect},
    redis_pool::RedisPool,
};
use halol_jobs::{CheckSlTpPositions, Job, Noop, UpdatePositionPrices};
use redis::AsyncCommands as _;

use crate::helpers::{
    Proc, cleanup, counter, eventually, free_port, halol, pool, pool_at, redis_server, redis_url,
    settings, stats, wait_for_redis,
};

fn noop(n: u64, sleep_ms: u64) -> NewJob {
    NewJob::new(
        serde_json::to_string(&Noop { n, sleep_ms }).expect("encode"),
        3,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_a_worker_killed_with_sigkill_completes_on_another_worker_within_15s() {
    let pool = pool().await;
    let settings = settings(|_| {});
    let url = redis_url();
    let producer = Producer::new(pool.manager(), settings.clone());
    producer
        .push(Noop::NAME, &[noop(1, 1_500), noop(2, 1_500)])
        .await
        .expect("push");

    let doomed = Proc::spawn(halol(
        &["worker", "--queues", "noop=2"],
        &settings.prefix,
        &url,
    ));
    eventually(
        Duration::from_secs(20),
        "the first worker to hold both jobs",
        || async { (stats(&pool, &settings, Noop::NAME).await.in_flight == 2).then_some(()) },
    )
    .await;
    doomed.signal("KILL");
    let killed_at = Instant::now();

    let _survivor = Proc::spawn(halol(
        &["worker", "--queues", "noop=2"],
        &settings.prefix,
        &url,
    ));
    eventually(Duration::from_secs(30), "both jobs to complete", || async {
        (counter(&stats(&pool, &settings, Noop::NAME).await, "done") == 2).then_some(())
    })
    .await;
    let took = killed_at.elapsed();
    println!("jobs of the killed worker completed {took:?} after SIGKILL");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let s = stats(&pool, &settings, Noop::NAME).await;
    assert_eq!(
        (counter(&s, "reclaimed"), s.dead, s.ready, s.in_flight),
        (2, 0, 0, 0)
    );
    cleanup(&pool, &settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_worker_in_under_30s_and_loses_no_job() {
    let pool = pool().await;
    let settings = settings(|_| {});
    let producer = Producer::new(pool.manager(), settings.clone());
    producer
        .push(
            Noop::NAME,
            &(0..6).map(|n| noop(n, 1_500)).collect::<Vec<_>>(),
        )
        .await
        .expect("push");
    let mut worker = Proc::spawn(halol(
        &["worker", "--queues", "noop=2"],
        &settings.prefix,
        &redis_url(),
    ));
    eventually(Duration::from_secs(20), "two jobs in flight", || async {
        (stats(&pool, &settings, Noop::NAME).await.in_flight == 2).then_some(())
    })
    .await;
    worker.signal("TERM");
    let signalled = Instant::now();
    let status = eventually(Duration::from_secs(30), "the worker to exit", || {
        let status = worker.0.try_wait().expect("wait");
        async move { status }
    })
    .await;
    assert!(status.success(), "exit status {status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(30));
    let s = stats(&pool, &settings, Noop::NAME).await;
    assert_eq!(s.in_flight, 0, "nothing left leased");
    assert!(counter(&s, "done") >= 2, "running jobs finished");
    assert_eq!(
        counter(&s, "done") + s.ready,
        6,
        "every job is done or back in the queue: {s:?}"
    );
    cleanup(&pool, &settings).await;
}

fn ticks(records: &[inspect::Record]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in records {
        let payload: serde_json::Value = serde_json::from_str(&r.fields["p"]).expect("payload");
        *seen
            .entry(payload["tick"].as_str().expect("tick").to_owned())
            .or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_schedulers_for_a_minute_enqueue_each_tick_exactly_once() {
    let pool = pool().await;
    let settings = settings(|_| {});
    let url = redis_url();
    let schedulers: Vec<Proc> = (0..3)
        .map(|_| Proc::spawn(halol(&["scheduler"], &settings.prefix, &url)))
        .collect();
    // The window under test is one minute of wall-clock time.
    tokio::time::sleep(Duration::from_secs(61)).await;
    for s in &schedulers {
        s.signal("TERM");
    }
    let mut conn = pool.manager();
    let sweeps = inspect::waiting(&mut conn, &settings.keys(CheckSlTpPositions::NAME), 1_000)
        .await
        .expect("entries");
    let revaluations =
        inspect::waiting(&mut conn, &settings.keys(UpdatePositionPrices::NAME), 1_000)
            .await
            .expect("entries");
    let (sweep_ticks, reval_ticks) = (ticks(&sweeps), ticks(&revaluations));
    assert!(
        sweep_ticks.values().all(|&n| n == 1),
        "a sweep tick enqueued twice: {sweep_ticks:?}"
    );
    assert!(
        reval_ticks.values().all(|&n| n == 1),
        "a revaluation tick enqueued twice: {reval_ticks:?}"
    );
    assert!(
        sweep_ticks.len() >= 11,
        "only {} sweep ticks in a minute",
        sweep_ticks.len()
    );
    assert!(
        reval_ticks.len() >= 2,
        "only {} revaluation ticks in a minute",
        reval_ticks.len()
    );
    let s = stats(&pool, &settings, CheckSlTpPositions::NAME).await;
    assert!(
        counter(&s, "deduplicated") >= 2 * sweep_ticks.len() as u64 - 2,
        "the other schedulers' pushes were dropped: {s:?}"
    );
    cleanup(&pool, &settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_scheduler_survive_a_redis_restart_and_carry_on() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut server = redis_server(port);
    wait_for_redis(&url).await;
    let settings = settings(|_| {});
    // The sweep's fan-out reads the symbols table: the worker needs a migrated database.
    let mut worker_cmd = halol(
        &["worker", "--queues", "check_sl_tp_positions=2"],
        &settings.prefix,
        &url,
    );
    worker_cmd.env(
        "DATABASE_URL",
        crate::helpers::migrated_database_url().await,
    );
    let mut worker = Proc::spawn(worker_cmd);
    let mut scheduler = Proc::spawn(halol(&["scheduler"], &settings.prefix, &url));
    {
        let pool = pool_at(&url).await;
        eventually(
            Duration::from_secs(20),
            "a sweep to run before the restart",
            || async {
                (counter(
                    &stats(&pool, &settings, CheckSlTpPositions::NAME).await,
                    "done",
                ) >= 1)
                    .then_some(())
            },
        )
        .await;
    }

    server.signal("KILL");
    let _ = server.0.wait();
    // Down long enough for every connection to notice, then back empty (no persistence).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _server = redis_server(port);
    wait_for_redis(&url).await;

    let pool = pool_at(&url).await;
    eventually(
        Duration::from_secs(30),
        "a sweep to run after the restart",
        || async {
            (counter(
                &stats(&pool, &settings, CheckSlTpPositions::NAME).await,
                "done",
            ) >= 1)
                .then_some(())
        },
    )
    .await;
    assert!(worker.alive(), "worker exited");
    assert!(scheduler.alive(), "scheduler exited");
}

#[test]
fn a_bad_configuration_value_stops_the_process_naming_the_variable() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_halol"))
        .arg("scheduler")
        .env("JOB_LEASE_SECS", "soon")
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("JOB_LEASE_SECS"), "{stderr}");
}

/// Sweep ticks waiting in the queue (no worker runs in the scheduler tests).
async fn sweep_ticks(pool: &RedisPool, settings: &QueueSettings) -> Vec<DateTime<Utc>> {
    let keys = settings.keys(CheckSlTpPositions::NAME);
    let waiting = inspect::waiting(&mut pool.manager(), &keys, 1_000)
        .await
        .expect("entries");
    waiting
        .iter()
        .map(|r| {
            serde_json::from_str::<CheckSlTpPositions>(&r.fields["p"])
                .expect("payload")
                .tick
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_stalled_for_12s_skips_the_ticks_it_missed_instead_of_replaying_them() {
    let pool = pool().await;
    let settings = settings(|_| {});
    let max_lag = chrono::Duration::milliseconds(1_000);
    let mut cmd = halol(&["scheduler"], &settings.prefix, &redis_url());
    cmd.env(
        "SCHEDULER_MAX_LAG_MS",
        max_lag.num_milliseconds().to_string(),
    );
    let mut scheduler = Proc::spawn(cmd);
    eventually(Duration::from_secs(20), "a first sweep tick", || async {
        (!sweep_ticks(&pool, &settings).await.is_empty()).then_some(())
    })
    .await;

    scheduler.signal("STOP");
    let stopped_at = Utc::now();
    // The stall under test: long enough for two or three 5-second ticks to pass.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let resumed_at = Utc::now();
    scheduler.signal("CONT");
    eventually(
        Duration::from_secs(15),
        "a sweep tick after the stall",
        || async {
            sweep_ticks(&pool, &settings)
                .await
                .iter()
                .any(|&t| t > resumed_at)
                .then_some(())
        },
    )
    .await;
    let status_key = halol::scheduler::status_key(&settings.prefix);
    let status: serde_json::Value = eventually(
        Duration::from_secs(5),
        "the schedule status of a tick after the stall",
        || async {
            let raw: Option<String> = pool
                .manager()
                .hget(&status_key, CheckSlTpPositions::NAME)
                .await
                .expect("hget");
            let status: serde_json::Value = serde_json::from_str(&raw?).expect("status json");
            let tick: DateTime<Utc> = serde_json::from_value(status["tick"].clone()).ok()?;
            (tick > resumed_at).then_some(status)
        },
    )
    .await;
    scheduler.signal("TERM");
    eventually(Duration::from_secs(10), "the scheduler to exit", || {
        let exited = scheduler.0.try_wait().expect("wait");
        async move { exited }
    })
    .await;

    // Margins absorb signal delivery; a tick inside the window fired while the process was
    // stopped and could only have been pushed more than `max_lag` late.
    let window = (
        stopped_at + chrono::Duration::milliseconds(200),
        resumed_at - max_lag - chrono::Duration::milliseconds(200),
    );
    let sweep = halol_schedules::all()
        .into_iter()
        .find(|s| s.name == CheckSlTpPositions::NAME)
        .expect("sweep schedule");
    let missed: Vec<DateTime<Utc>> =
        std::iter::successors(sweep.next_after(window.0), |&t| sweep.next_after(t))
            .take_while(|&t| t < window.1)
            .take(10)
            .collect();
    assert!(
        missed.len() >= 2,
        "the stall spans several ticks: {missed:?}"
    );
    let enqueued = sweep_ticks(&pool, &settings).await;
    let replayed: Vec<_> = enqueued.iter().filter(|t| missed.contains(t)).collect();
    assert!(
        replayed.is_empty(),
        "missed ticks were replayed: {replayed:?}"
    );
    let late: Vec<_> = enqueued
        .iter()
        .filter(|&&t| t > window.0 && t <= resumed_at)
        .collect();
    assert!(
        late.len() <= 1,
        "a burst of catch-up jobs after the stall: {late:?}"
    );
    let mut conn = pool.manager();
    let keys = settings.keys(CheckSlTpPositions::NAME);
    for tick in &missed {
        let key = keys.idempotency(&sweep.idempotency_key(*tick));
        let exists: bool = conn.exists(&key).await.expect("exists");
        assert!(!exists, "missed tick {tick} was pushed ({key})");
    }
    let s = stats(&pool, &settings, CheckSlTpPositions::NAME).await;
    assert_eq!(
        counter(&s, "enqueued"),
        enqueued.len() as u64,
        "every push is a distinct waiting tick: {s:?}"
    );

    assert_eq!(status["outcome"], "enqueued", "{status}");
    let lag_ms = status["lag_ms"].as_i64().expect("lag_ms");
    assert!(
        (0..=max_lag.num_milliseconds()).contains(&lag_ms),
        "schedule lag exposed and within bounds: {status}"
    );
    cleanup(&pool, &settings).await;
}

/// A `noop` worker process whose lease expires after one second without renewal.
fn short_lease_worker(settings: &QueueSettings) -> Proc {
    let mut cmd = halol(
        &["worker", "--queues", "noop=1"],
        &settings.prefix,
        &redis_url(),
    );
    cmd.env("JOB_LEASE_SECS", "1")
        .env("JOB_RECLAIM_INTERVAL_MS", "100")
        // A stopped worker's blocking read must end before the job is re-queued, or Redis
        // would hand the new entry to the stopped worker.
        .env("QUEUE_BLOCK_MS", "100");
    Proc::spawn(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_ack_from_a_paused_worker_whose_job_was_reclaimed_does_not_settle_the_newer_attempt()
{
    let pool = pool().await;
    let settings = settings(|_| {});
    let producer = Producer::new(pool.manager(), settings.clone());
    producer
        .push(Noop::NAME, &[noop(1, 2_000)])
        .await
        .expect("push");
    let paused = short_lease_worker(&settings);
    eventually(
        Duration::from_secs(20),
        "the first worker to hold the job",
        || async { (stats(&pool, &settings, Noop::NAME).await.in_flight == 1).then_some(()) },
    )
    .await;

    paused.signal("STOP");
    let _rescuer = short_lease_worker(&settings);
    eventually(
        Duration::from_secs(20),
        "the second worker to re-queue the paused worker's job",
        || async {
            (counter(&stats(&pool, &settings, Noop::NAME).await, "reclaimed") == 1).then_some(())
        },
    )
    .await;
    paused.signal("CONT");
    eventually(
        Duration::from_secs(20),
        "the newer attempt to finish and the paused worker's ack to arrive",
        || async {
            let s = stats(&pool, &settings, Noop::NAME).await;
            let (done, stale) = (counter(&s, "done"), counter(&s, "stale_acks"));
            // Without the fence the late ack settles too: done reaches 2 (asserted below).
            ((done >= 1 && stale >= 1) || done >= 2).then_some(())
        },
    )
    .await;

    let s = stats(&pool, &settings, Noop::NAME).await;
    assert_eq!(
        (
            counter(&s, "done"),
            counter(&s, "stale_acks"),
            counter(&s, "reclaimed"),
            s.dead,
            s.delayed,
            s.ready,
            s.in_flight
        ),
        (1, 1, 1, 0, 0, 0, 0),
        "{s:?}"
    );
    let history = inspect::history(&mut pool.manager(), &settings.keys(Noop::NAME), 10)
        .await
        .expect("history");
    assert_eq!(history.len(), 1, "settled once: {history:?}");
    assert_eq!(
        history[0].fields["a"], "2",
        "the outcome recorded is the newer attempt's: {history:?}"
    );
    cleanup(&pool, &settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_exits_non_zero_naming_the_port_when_the_web_port_is_taken() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let settings = settings(|_| {});
    let stderr_path = std::env::temp_dir().join(format!("{}.dev.stderr", settings.prefix));
    let database = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/halol_test".into());
    let mut cmd = halol(&["dev"], &settings.prefix, &redis_url());
    cmd.env("PORT", port.to_string())
        .env("DATABASE_URL", database)
        .env("SHUTDOWN_TIMEOUT_SECS", "5")
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
    let mut dev = Proc::spawn(cmd);

    let status = eventually(Duration::from_secs(45), "dev to exit", || {
        let exited = dev.0.try_wait().expect("wait");
        async move { exited }
    })
    .await;
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let _ = std::fs::remove_file(&stderr_path);
    assert!(!status.success(), "dev exited with {status:?}");
    assert!(
        stderr.contains("web") && stderr.contains(&format!("PORT={port}")),
        "the error names the role and the port: {stderr}"
    );
    drop(taken);
    cleanup(&pool().await, &settings).await;
}
