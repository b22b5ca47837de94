//! The queue backend under in-process apalis workers, and its apalis expose traits.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use apalis::layers::WorkerBuilderExt as _;
use apalis_core::{
    backend::{Filter, ListAllTasks, ListQueues, ListTasks, ListWorkers, Metrics, Statistic},
    error::BoxDynError,
    task::{Task, attempt::Attempt, data::Data, status::Status},
    worker::builder::WorkerBuilder,
};
use halol::queue::{NewJob, Producer, QueueSettings, RedisQueue, inspect};
use halol::redis_pool::RedisPool;
use halol_jobs::Job;
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::helpers::{cleanup, counter, eventually, pool, settings, stats};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
enum Mode {
    Succeed,
    Fail,
    Panic,
    Hang,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Work {
    n: u64,
    mode: Mode,
}

impl Job for Work {
    const NAME: &'static str = "it_work";
    const MAX_ATTEMPTS: u32 = 3;
    const TIMEOUT: Duration = Duration::from_millis(300);
}

#[derive(Default)]
struct Recorder {
    runs: Mutex<Vec<(u64, usize, Instant)>>,
    seen: Option<mpsc::UnboundedSender<u64>>,
}

async fn work(job: Work, rec: Data<Arc<Recorder>>, attempt: Attempt) -> Result<(), BoxDynError> {
    rec.runs
        .lock()
        .expect("lock")
        .push((job.n, attempt.current(), Instant::now()));
    if let Some(tx) = &rec.seen {
        let _ = tx.send(job.n);
    }
    match job.mode {
        Mode::Succeed => Ok(()),
        Mode::Fail => Err(format!("attempt {} failed", attempt.current()).into()),
        Mode::Panic => panic!("boom on {}", job.n),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        }
    }
}

fn start(
    pool: &RedisPool,
    settings: &Arc<QueueSettings>,
    concurrency: usize,
    rec: Arc<Recorder>,
) -> CancellationToken {
    let stop = CancellationToken::new();
    let backend =
        RedisQueue::<Work>::new(pool.clone(), settings.clone()).with_prefetch(concurrency);
    let worker = WorkerBuilder::new(format!("it-{}", ulid::Ulid::new()))
        .backend(backend)
        .concurrency(concurrency)
        .data(rec)
        .build(work);
    let until = stop.clone();
    tokio::spawn(worker.run_until(async move {
        until.cancelled().await;
        Ok::<(), std::io::Error>(())
    }));
    stop
}

fn job(n: u64, mode: Mode) -> NewJob {
    NewJob::new(
        serde_json::to_string(&Work { n, mode }).expect("encode"),
        Work::MAX_ATTEMPTS,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_100k_jobs_drains_every_job_runs_and_memory_stays_within_retention() {
    let pool = pool().await;
    let settings = settings(|s| s.done_retention = 1_000);
    let producer = Producer::new(pool.manager(), settings.clone());
    let total = 100_000u64;
    let jobs: Vec<NewJob> = (0..total).map(|n| job(n, Mode::Succeed)).collect();
    for chunk in jobs.chunks(5_000) {
        producer.push(Work::NAME, chunk).await.expect("push");
    }
    assert_eq!(stats(&pool, &settings, Work::NAME).await.ready, total);

    let rec = Arc::new(Recorder::default());
    let stop = start(&pool, &settings, 256, rec.clone());
    eventually(Duration::from_secs(240), "the backlog to drain", || async {
        (counter(&stats(&pool, &settings, Work::NAME).await, "done") >= total).then_some(())
    })
    .await;

    let mut ran: Vec<u64> = rec.runs.lock().expect("lock").iter().map(|r| r.0).collect();
    ran.sort_unstable();
    ran.dedup();
    assert_eq!(ran.len() as u64, total, "every job ran");
    let s = stats(&pool, &settings, Work::NAME).await;
    assert_eq!((s.ready, s.in_flight, s.dead, s.delayed), (0, 0, 0, 0));
    assert!(
        s.history <= 1_000 + 100,
        "history capped near its bound, got {}",
        s.history
    );

    let mut conn = pool.manager();
    let keys: Vec<String> = conn
        .keys(format!("{{{}:{}}}*", settings.prefix, Work::NAME))
        .await
        .expect("keys");
    let mut bytes = 0u64;
    for key in &keys {
        let used: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut conn)
            .await
            .expect("memory usage");
        bytes += used.unwrap_or(0);
    }
    // 1,100 history entries of ~60 B plus small fixed structures; without retention 100,000
    // entries would take several MB.
    assert!(
        bytes < 512 * 1024,
        "queue keys use {bytes} B after {total} jobs: {keys:?}"
    );
    stop.cancel();
    cleanup(&pool, &settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_picks_up_a_new_job_within_50ms_at_p99() {
    let pool = pool().await;
    let settings = settings(|_| {});
    let producer = Producer::new(pool.manager(), settings.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stop = start(
        &pool,
        &settings,
        4,
        Arc::new(Recorder {
            seen: Some(tx),
            ..Recorder::default()
        }),
    );
    // Warm up: the first job proves the worker is reading.
    producer
        .push(Work::NAME, &[job(0, Mode::Succeed)])
        .await
        .expect("push");
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("worker started");

    let mut latencies = Vec::with_capacity(1_000);
    for n in 1..=1_000u64 {
        let started = Instant::now();
        producer
            .push(Work::NAME, &[job(n, Mode::Succeed)])
            .await
            .expect("push");
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("picked up")
            .expect("open");
        assert_eq!(got, n);
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100 - 1];
    let p50 = latencies[latencies.len() / 2];
    println!("pickup latency p50 {p50:?} p99 {p99:?}");
    assert!(
        p99 < Duration::from_millis(50),
        "p99 pickup {p99:?} (p50 {p50:?})"
    );
    stop.cancel();
    cleanup(&pool, &settings).await;
}

async fn dead_letters(
    pool: &RedisPool,
    settings: &QueueSettings,
    n: usize,
) -> Vec<inspect::Record> {
    eventually(Duration::from_secs(20), "dead letters", || async {
        let dead = inspect::dead_letters(&mut pool.manager(), &settings.keys(Work::NAME), 10, None)
            .await
            .expect("dead");
        (dead.len() >= n).then_some(dead)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_runs_exactly_max_attempts_with_backoff_then_is_dead_lettered_with_its_last_error()
 {
    let pool = pool().await;
    let settings = settings(|s| s.retry_base = Duration::from_millis(200));
    let producer = Producer::new(pool.manager(), settings.clone());
    let rec = Arc::new(Recorder::default());
    let stop = start(&pool, &settings, 2, rec.clone());
    producer
        .push(Work::NAME, &[job(7, Mode::Fail)])
        .await
        .expect("push");

    let dead = dead_letters(&pool, &settings, 1).await;
    let f = &dead[0].fields;
    assert_eq!(f["status"], "failed");
    assert_eq!(f["a"], "3");
    assert_eq!(f["error"], "attempt 3 failed");
    let payload: Work = serde_json::from_str(&f["p"]).expect("payload kept");
    assert_eq!(payload.n, 7);

    let runs = rec.runs.lock().expect("lock").clone();
    assert_eq!(
        runs.iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "exactly three attempts"
    );
    let first_gap = runs[1].2 - runs[0].2;
    let second_gap = runs[2].2 - runs[1].2;
    assert!(
        first_gap >= Duration::from_millis(200),
        "first retry after {first_gap:?}"
    );
    assert!(
        second_gap >= Duration::from_millis(400),
        "second retry after {second_gap:?}"
    );
    let s = stats(&pool, &settings, Work::NAME).await;
    assert_eq!(
        (
            counter(&s, "retried"),
            counter(&s, "dead"),
            s.delayed,
            s.ready,
            s.in_flight
        ),
        (2, 1, 0, 0, 0)
    );
    stop.cancel();
    cleanup(&pool, &settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_and_timed_out_jobs_end_dead_with_their_own_status() {
    let pool = pool().await;
    let settings = settings(|s| s.retry_base = Duration::from_millis(20));
    let producer = Producer::new(pool.manager(), settings.clone());
    let rec = Arc::new(Recorder::default());
    let stop = start(&pool, &settings, 4, rec.clone());
    producer
        .push(Work::NAME, &[job(1, Mode::Panic), job(2, Mode::Hang)])
        .await
        .expect("push");

    let dead = dead_letters(&pool, &settings, 2).await;
    let status_of = |n: u64| {
        dead.iter()
            .find(|r| serde_json::from_str::<Work>(&r.fields["p"]).is_ok_and(|w| w.n == n))
            .map(|r| {
                (
                    r.fields["status"].clone(),
                    r.fields["a"].clone(),
                    r.fields["error"].clone(),
                )
            })
            .expect("dead letter")
    };
    let (status, attempts, error) = status_of(1);
    assert_eq!((status.as_str(), attempts.as_str()), ("panicked", "3"));
    assert!(error.contains("boom on 1"), "{error}");
    let (status, attempts, error) = status_of(2);
    assert_eq!((status.as_str(), attempts.as_str()), ("timed_out", "3"));
    assert!(error.contains("timed out after 300 ms"), "{error}");
    stop.cancel();
    cleanup(&pool, &settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_push_with_the_same_idempotency_key_is_dropped_and_delayed_jobs_wait() {
    let pool = pool().await;
    let settings = settings(|_| {});
    let producer = Producer::new(pool.manager(), settings.clone());
    let mut first = job(1, Mode::Succeed);
    first.idempotency_key = Some("tick:1".into());
    let mut again = job(1, Mode::Succeed);
    again.idempotency_key = Some("tick:1".into());
    assert_eq!(
        producer
            .push(Work::NAME, &[first])
            .await
            .expect("push")
            .pushed,
        1
    );
    let report = producer.push(Work::NAME, &[again]).await.expect("push");
    assert_eq!((report.pushed, report.deduplicated), (0, 1));
    let ttl: i64 = pool
        .manager()
        .pttl(settings.keys(Work::NAME).idempotency("tick:1"))
        .await
        .expect("ttl");
    assert!(
        ttl > 0 && ttl <= settings.idempotency_ttl.as_millis() as i64,
        "idempotency key expires, ttl {ttl}"
    );

    let mut later = job(2, Mode::Succeed);
    later.run_at_ms = Some(chrono::Utc::now().timestamp_millis() + 600);
    producer.push(Work::NAME, &[later]).await.expect("push");
    let s = stats(&pool, &settings, Work::NAME).await;
    assert_eq!((s.ready, s.delayed), (1, 1));

    let pushed_at = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stop = start(
        &pool,
        &settings,
        2,
        Arc::new(Recorder {
            seen: Some(tx),
            ..Recorder::default()
        }),
    );
    let mut order = Vec::new();
    for _ in 0..2 {
        order.push(
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("ran")
                .expect("open"),
        );
    }
    assert_eq!(order, vec![1, 2]);
    assert!(
        pushed_at.elapsed() >= Duration::from_millis(500),
        "the delayed job waited"
    );
    stop.cancel();
    cleanup(&pool, &settings).await;
}

/// A job that takes a while: longer than a short lease, well inside its own timeout.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Slow {
    n: u64,
    sleep_ms: u64,
}

impl Job for Slow {
    const NAME: &'static str = "it_slow";
    const MAX_ATTEMPTS: u32 = 3;
    const TIMEOUT: Duration = Duration::from_secs(60);
}

type Runs = Arc<Mutex<Vec<(u64, usize, Instant)>>>;

async fn slow(job: Slow, runs: Data<Runs>, attempt: Attempt) -> Result<(), BoxDynError> {
    runs.lock()
        .expect("lock")
        .push((job.n, attempt.current(), Instant::now()));
    tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
    Ok(())
}

fn start_slow(pool: &RedisPool, settings: &Arc<QueueSettings>, runs: Runs) -> CancellationToken {
    let stop = CancellationToken::new();
    let worker = WorkerBuilder::new(format!("it-{}", ulid::Ulid::new()))
        .backend(RedisQueue::<Slow>::new(pool.clone(), settings.clone()))
        .concurrency(1)
        .data(runs)
        .build(slow);
    let until = stop.clone();
    tokio::spawn(worker.run_until(async move {
        until.cancelled().await;
        Ok::<(), std::io::Error>(())
    }));
    stop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_running_four_times_its_lease_keeps_it_renewed_and_runs_exactly_once() {
    let pool = pool().await;
    let lease = Duration::from_secs(2);
    let settings = settings(|s| {
        s.lease = lease;
        s.reclaim_interval = Duration::from_millis(100);
    });
    let runs = Runs::default();
    let stops = [
        start_slow(&pool, &settings, runs.clone()),
        start_slow(&pool, &settings, runs.clone()),
    ];
    eventually(
        Duration::from_secs(10),
        "both workers to register",
        || async { (stats(&pool, &settings, Slow::NAME).await.workers == 2).then_some(()) },
    )
    .await;
    let producer = Producer::new(pool.manager(), settings.clone());
    let payload = serde_json::to_string(&Slow {
        n: 1,
        sleep_ms: (lease * 4).as_millis() as u64,
    })
    .expect("encode");
    producer
        .push(Slow::NAME, &[NewJob::new(payload, Slow::MAX_ATTEMPTS)])
        .await
        .expect("push");

    eventually(Duration::from_secs(30), "the job to complete", || async {
        (counter(&stats(&pool, &settings, Slow::NAME).await, "done") == 1).then_some(())
    })
    .await;
    let finished = Instant::now();

    let runs = runs.lock().expect("lock").clone();
    assert_eq!(
        runs.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(),
        vec![(1, 1)],
        "one run, first attempt"
    );
    assert!(
        finished - runs[0].2 >= lease * 4,
        "the job outlived its lease four times"
    );
    let s = stats(&pool, &settings, Slow::NAME).await;
    assert_eq!(
        (
            counter(&s, "reclaimed"),
            counter(&s, "stale_acks"),
            s.dead,
            s.ready,
            s.in_flight
        ),
        (0, 0, 0, 0, 0),
        "{s:?}"
    );
    for stop in stops {
        stop.cancel();
    }
    cleanup(&pool, &settings).await;
}

fn page(status: Option<Status>, page: u32, size: u32) -> Filter {
    Filter {
        status,
        page,
        page_size: Some(size),
    }
}

fn stat_of(stats: &[Statistic], title: &str) -> String {
    stats
        .iter()
        .find(|s| s.title == title)
        .map(|s| s.value.clone())
        .unwrap_or_else(|| panic!("no statistic {title} in {stats:?}"))
}

fn ns(tasks: &[Task<serde_json::Value>]) -> Vec<u64> {
    let mut ns: Vec<u64> = tasks
        .iter()
        .map(|t| t.args["n"].as_u64().expect("n"))
        .collect();
    ns.sort_unstable();
    ns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apalis_expose_traits_report_ready_done_and_dead_jobs_and_live_workers() {
    let pool = pool().await;
    let settings = settings(|_| {});
    let producer = Producer::new(pool.manager(), settings.clone());
    let queue = RedisQueue::<Work>::new(pool.clone(), settings.clone());
    let stop = start(&pool, &settings, 2, Arc::new(Recorder::default()));
    let mut dying = job(3, Mode::Fail);
    dying.max_attempts = 1;
    let finishing = [job(1, Mode::Succeed), job(2, Mode::Succeed)];
    let mut finishing_ids: Vec<String> = finishing.iter().map(|j| j.id.clone()).collect();
    finishing_ids.sort_unstable();
    producer
        .push(
            Work::NAME,
            &[finishing[0].clone(), finishing[1].clone(), dying],
        )
        .await
        .expect("push");
    eventually(Duration::from_secs(20), "two done, one dead", || async {
        let s = stats(&pool, &settings, Work::NAME).await;
        (counter(&s, "done") == 2 && s.dead == 1).then_some(())
    })
    .await;

    let workers = queue.list_workers().await.expect("workers");
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_eq!(workers[0].queue, Work::NAME);
    assert!(workers[0].started_at > 0 && workers[0].last_heartbeat >= workers[0].started_at);
    let all_workers = queue.list_all_workers().await.expect("all workers");
    assert_eq!(
        all_workers.iter().map(|w| &w.id).collect::<Vec<_>>(),
        vec![&workers[0].id]
    );
    stop.cancel();
    eventually(
        Duration::from_secs(20),
        "the worker to deregister",
        || async {
            queue
                .list_workers()
                .await
                .expect("workers")
                .is_empty()
                .then_some(())
        },
    )
    .await;
    producer
        .push(
            Work::NAME,
            &(4..=6).map(|n| job(n, Mode::Succeed)).collect::<Vec<_>>(),
        )
        .await
        .expect("push");

    let queues = queue.list_queues().await.expect("queues");
    let mut names: Vec<&str> = queues.iter().map(|q| q.name.as_str()).collect();
    names.sort_unstable();
    let mut expected: Vec<&str> = halol_jobs::QUEUES.to_vec();
    expected.push(Work::NAME);
    expected.sort_unstable();
    assert_eq!(names, expected, "registered and known queues");
    let ours = queues
        .iter()
        .find(|q| q.name == Work::NAME)
        .expect("our queue");
    assert!(ours.workers.is_empty(), "{ours:?}");
    for (title, value) in [
        ("ready", "3"),
        ("in_flight", "0"),
        ("dead", "1"),
        ("total_done", "2"),
        ("total_enqueued", "6"),
    ] {
        assert_eq!(stat_of(&ours.stats, title), value, "{title}");
    }

    let ready = queue.list_tasks(&page(None, 1, 10)).await.expect("ready");
    assert_eq!(ns(&ready), vec![4, 5, 6]);
    assert!(ready.iter().all(|t| t.ctx().status() == Status::Pending
        && t.ctx().attempt() == 0
        && t.ctx().max_attempts() == Some(3)
        && t.ctx().task_id().is_some()));
    let second_page = queue.list_tasks(&page(None, 2, 2)).await.expect("page 2");
    assert_eq!(ns(&second_page), vec![6], "oldest first, paged");
    let page_zero = queue.list_tasks(&page(None, 0, 2)).await.expect("page 0");
    assert_eq!(ns(&page_zero), vec![4, 5], "page 0 reads as the first page");
    let done = queue
        .list_tasks(&page(Some(Status::Done), 1, 10))
        .await
        .expect("done");
    let mut done_ids: Vec<String> = done
        .iter()
        .map(|t| t.ctx().task_id().expect("id").to_string())
        .collect();
    done_ids.sort_unstable();
    assert_eq!(done_ids, finishing_ids, "history names the finished jobs");
    assert!(
        done.iter()
            .all(|t| t.ctx().status() == Status::Done && t.ctx().attempt() == 1)
    );
    let dead = queue
        .list_tasks(&page(Some(Status::Failed), 1, 10))
        .await
        .expect("dead");
    assert_eq!(ns(&dead), vec![3], "dead letters keep their payload");
    assert_eq!(dead[0].ctx().status(), Status::Failed);
    let everywhere = queue
        .list_all_tasks(&page(None, 1, 10))
        .await
        .expect("all tasks");
    assert_eq!(ns(&everywhere), vec![4, 5, 6], "no other queue has jobs");

    let by_queue = queue.fetch_by_queue().await.expect("queue metrics");
    let global = queue.global().await.expect("global metrics");
    for stats in [&by_queue, &global] {
        assert_eq!(
            (
                stat_of(stats, "ready"),
                stat_of(stats, "dead"),
                stat_of(stats, "total_done"),
                stat_of(stats, "workers")
            ),
            ("3".into(), "1".into(), "2".into(), "0".into())
        );
    }
    cleanup(&pool, &settings).await;
}
