//! The roles as real processes: SIGKILL, SIGTERM, Redis restarts and redundant schedulers.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use halol::queue::{NewJob, Producer, inspect};
use halol_jobs::{CheckSlTpPositions, Job, Noop, UpdatePositionPrices};

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
    let mut worker = Proc::spawn(halol(
        &["worker", "--queues", "check_sl_tp_positions=2"],
        &settings.prefix,
        &url,
    ));
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
