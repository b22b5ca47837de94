//! `halol bench`: throughput of the queue on this machine, against `$REDIS_URL`, under a
//! throwaway key prefix that is deleted afterwards. Each figure is the median of `--rounds`.
//!
//! - single enqueue: one job per call, `--producers` concurrent callers on one connection;
//! - batched enqueue: `push` of `--batch` jobs per call;
//! - processing: one worker (this process, apalis + our backend, `--concurrency`) drains a
//!   backlog of `--jobs` no-op jobs.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use apalis::layers::WorkerBuilderExt as _;
use apalis_core::{
    error::BoxDynError,
    worker::{builder::WorkerBuilder, context::WorkerContext},
};
use halol_jobs::{Job, Noop};
use redis::AsyncCommands as _;

use crate::{
    config::Config,
    queue::{NewJob, Producer, QueueSettings, RedisQueue, inspect},
    redis_pool::RedisPool,
};

/// Options of `halol bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Jobs per measurement.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Jobs per batched push.
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// Concurrent single-job producers.
    #[arg(long, default_value_t = 32)]
    pub producers: usize,
    /// Jobs run at once by the worker.
    #[arg(long, default_value_t = 512)]
    pub concurrency: usize,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

fn payload(n: u64) -> String {
    serde_json::json!({ "n": n }).to_string()
}

/// Run the benchmark and print a table.
pub async fn run(config: &Config, args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.jobs > 0
            && args.batch > 0
            && args.producers > 0
            && args.concurrency > 0
            && args.rounds > 0,
        "every bench option must be positive"
    );
    let redis = RedisPool::connect(&config.redis_url, 4).await?;
    let mut single = Vec::new();
    let mut batched = Vec::new();
    let mut processed = Vec::new();
    for round in 0..args.rounds {
        let settings = Arc::new(QueueSettings {
            prefix: format!("bench-{}", ulid::Ulid::new()),
            fetch_batch: args.concurrency,
            ..QueueSettings::default()
        });
        let producer = Producer::new(redis.manager(), settings.clone());
        let single_jobs = (args.jobs / 5).max(1);
        single.push(enqueue_single(&producer, single_jobs, args.producers).await?);
        cleanup(&redis, &settings).await?;
        batched.push(enqueue_batched(&producer, args.jobs, args.batch).await?);
        processed.push(process(&redis, &settings, args.jobs, args.concurrency).await?);
        cleanup(&redis, &settings).await?;
        println!(
            "round {}: single enqueue {:.0} jobs/s, batched enqueue {:.0} jobs/s, processing {:.0} jobs/s",
            round + 1,
            single[round],
            batched[round],
            processed[round]
        );
    }
    println!(
        "\nmedian of {} rounds ({} jobs each; single enqueue {} jobs with {} producers; batch {}; worker concurrency {}):",
        args.rounds,
        args.jobs,
        (args.jobs / 5).max(1),
        args.producers,
        args.batch,
        args.concurrency
    );
    println!("  enqueue, single  : {:>9.0} jobs/s", median(&mut single));
    println!("  enqueue, batched : {:>9.0} jobs/s", median(&mut batched));
    println!(
        "  processing no-op : {:>9.0} jobs/s",
        median(&mut processed)
    );
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn enqueue_single(producer: &Producer, jobs: usize, producers: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let per = jobs.div_ceil(producers);
    let tasks = (0..producers).map(|p| {
        let producer = producer.clone();
        async move {
            for i in 0..per {
                producer
                    .push(Noop::NAME, &[NewJob::new(payload((p * per + i) as u64), 1)])
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        }
    });
    futures::future::try_join_all(tasks).await?;
    Ok((per * producers) as f64 / started.elapsed().as_secs_f64())
}

async fn enqueue_batched(producer: &Producer, jobs: usize, batch: usize) -> anyhow::Result<f64> {
    let all: Vec<NewJob> = (0..jobs as u64)
        .map(|n| NewJob::new(payload(n), 1))
        .collect();
    let started = Instant::now();
    for chunk in all.chunks(batch) {
        producer.push(Noop::NAME, chunk).await?;
    }
    Ok(jobs as f64 / started.elapsed().as_secs_f64())
}

async fn noop(_job: Noop, _worker: WorkerContext) -> Result<(), BoxDynError> {
    Ok(())
}

async fn process(
    redis: &RedisPool,
    settings: &Arc<QueueSettings>,
    jobs: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let keys = settings.keys(Noop::NAME);
    let mut conn = redis.manager();
    let backend =
        RedisQueue::<Noop>::new(redis.clone(), settings.clone()).with_prefetch(concurrency);
    let worker = WorkerBuilder::new(format!("bench-{}", ulid::Ulid::new()))
        .backend(backend)
        .concurrency(concurrency)
        .build(noop);
    let stop = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let handle = {
        let stop = stop.clone();
        tokio::spawn(async move {
            worker
                .run_until(async move {
                    stop.cancelled().await;
                    Ok::<(), std::io::Error>(())
                })
                .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let elapsed = loop {
        let done = inspect::stats(&mut conn, &keys, 60_000)
            .await?
            .counters
            .get("done")
            .copied()
            .unwrap_or(0);
        if done as usize >= jobs {
            break started.elapsed();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "processing did not finish within 300 s ({done}/{jobs})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    stop.cancel();
    let _ = handle.await;
    Ok(jobs as f64 / elapsed.as_secs_f64())
}

async fn cleanup(redis: &RedisPool, settings: &QueueSettings) -> anyhow::Result<()> {
    let mut conn = redis.manager();
    let pattern = format!("{{{}:*", settings.prefix);
    let keys: Vec<String> = conn.keys(&pattern).await?;
    if !keys.is_empty() {
        conn.del::<_, ()>(keys).await?;
    }
    conn.del::<_, ()>(settings.registry_key()).await?;
    Ok(())
}
