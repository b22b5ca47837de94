//! Metrics of the whole fleet on one `/metrics`.
//!
//! Jobs run in worker processes and ticks in the scheduler, but only the web role serves HTTP
//! (a Heroku/Railway worker has no routable port), and a load balancer sends each scrape to any
//! one web process. So every process records into its own Prometheus recorder, labelled
//! `process="<dyno or host>:<pid>:<random>"` and `role`, and publishes a rendered snapshot to
//! Redis every `METRICS_PUBLISH_INTERVAL_MS`:
//!
//! - `<prefix>:metrics:<process>`: the snapshot (Prometheus text), expiring after three intervals;
//! - `<prefix>:metrics`: a sorted set of processes scored by that expiry, so a reader finds the
//!   live snapshots without `SCAN`.
//!
//! The web role merges its own metrics with every other live snapshot, one metric family at a
//! time (the text format allows each `# TYPE` once). A process that stops publishes once more on
//! its way out; its series disappear when the snapshot expires. Losing Redis loses nothing but
//! counters, which Prometheus treats as a reset. Expiry scores use each publisher's clock and
//! are judged by the reader's, so clocks must agree to well within three intervals (NTP does).

use std::{
    collections::BTreeMap,
    sync::{
        LazyLock, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use redis::aio::ConnectionLike;
use tokio_util::sync::CancellationToken;

use crate::redis_pool::RedisPool;

/// Most snapshots one scrape reads.
const MAX_PROCESSES: isize = 1_000;

/// Longest one publish may take: the last one runs during shutdown, whose budget is < 30 s.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the index outlives its last publish (entries expire one by one much sooner).
const INDEX_TTL: Duration = Duration::from_secs(3600);

static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
static PUBLISHING: AtomicBool = AtomicBool::new(false);

/// `<dyno or host>:<pid>:<random>`: the random part keeps two processes apart where host and pid
/// repeat (containers all running as pid 1 on `local`, a restarted dyno overlapping the old one).
static PROCESS_NAME: LazyLock<String> = LazyLock::new(|| {
    let random = ulid::Ulid::new().to_string();
    format!(
        "{}:{}:{}",
        crate::queue::runtime_hostname(),
        std::process::id(),
        &random[random.len() - 6..]
    )
});

/// This process's name in the `process` label and in Redis.
pub fn process_name() -> &'static str {
    &PROCESS_NAME
}

/// The process's recorder, installed on first use with the labels `process` and `role` (the
/// first caller's role: `dev` runs every role in one process).
pub fn install(role: &str) -> anyhow::Result<PrometheusHandle> {
    let mut installed = HANDLE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .add_global_label("process", process_name())
        .add_global_label("role", role)
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?;
    *installed = Some(handle.clone());
    Ok(handle)
}

/// The sorted set of publishing processes.
pub fn index_key(prefix: &str) -> String {
    format!("{prefix}:metrics")
}

/// The snapshot key of `process`.
pub fn snapshot_key(prefix: &str, process: &str) -> String {
    format!("{prefix}:metrics:{process}")
}

/// Publish `handle`'s snapshot every `interval` until `stop`, then once more. Only the first
/// caller in a process publishes (`dev` starts a worker and a scheduler in one process);
/// later calls return at once.
pub async fn publish_until(
    handle: PrometheusHandle,
    redis: RedisPool,
    prefix: String,
    interval: Duration,
    stop: CancellationToken,
) {
    if PUBLISHING.swap(true, Ordering::SeqCst) {
        return;
    }
    let process = process_name();
    let mut conn = redis.manager();
    let mut failing = false;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = ticker.tick() => false,
            _ = stop.cancelled() => true,
        };
        handle.run_upkeep();
        let text = handle.render();
        let published = tokio::time::timeout(
            PUBLISH_TIMEOUT,
            publish(&mut conn, &prefix, process, &text, interval),
        )
        .await
        .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))));
        match published {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("metrics snapshots reach Redis again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(
                    "metrics snapshot not published (Redis: {e}); retrying every {interval:?}"
                );
            }
            Err(_) => {}
        }
        if last {
            break;
        }
    }
    PUBLISHING.store(false, Ordering::SeqCst);
}

/// Write one snapshot: it and its index entry live for three intervals. Expired entries are
/// dropped from the index here too, so it stays small even when nobody scrapes.
pub async fn publish(
    conn: &mut impl ConnectionLike,
    prefix: &str,
    process: &str,
    text: &str,
    interval: Duration,
) -> redis::RedisResult<()> {
    let ttl = (interval * 3).max(Duration::from_secs(1));
    let now = chrono::Utc::now().timestamp_millis();
    let index = index_key(prefix);
    redis::pipe()
        .atomic()
        .cmd("SET")
        .arg(snapshot_key(prefix, process))
        .arg(text)
        .arg("PX")
        .arg(ttl.as_millis() as u64)
        .ignore()
        .cmd("ZREMRANGEBYSCORE")
        .arg(&index)
        .arg("-inf")
        .arg(now)
        .ignore()
        .cmd("ZADD")
        .arg(&index)
        .arg(now + ttl.as_millis() as i64)
        .arg(process)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&index)
        .arg(INDEX_TTL.as_millis() as u64)
        .ignore()
        .query_async(conn)
        .await
}

/// The live snapshots of every process but `except` (the caller, which renders its own).
pub async fn snapshots(
    conn: &mut impl ConnectionLike,
    prefix: &str,
    except: &str,
) -> redis::RedisResult<Vec<String>> {
    let index = index_key(prefix);
    let now = chrono::Utc::now().timestamp_millis();
    let (processes,): (Vec<String>,) = redis::pipe()
        .cmd("ZREMRANGEBYSCORE")
        .arg(&index)
        .arg("-inf")
        .arg(now)
        .ignore()
        .cmd("ZRANGE")
        .arg(&index)
        .arg(0)
        .arg(MAX_PROCESSES - 1)
        .query_async(conn)
        .await?;
    let keys: Vec<String> = processes
        .iter()
        .filter(|p| p.as_str() != except)
        .map(|p| snapshot_key(prefix, p))
        .collect();
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let texts: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(conn).await?;
    Ok(texts.into_iter().flatten().collect())
}

#[derive(Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<String>,
}

/// Merge Prometheus text expositions into one: each metric family once, with the samples of
/// every input (they differ by their `process` label). Families come out sorted by name.
pub fn merge<'a>(texts: impl IntoIterator<Item = &'a str>) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for text in texts {
        let mut current: Option<String> = None;
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let family = families.entry(name.clone()).or_default();
                family.help.get_or_insert_with(|| line.to_owned());
                current = Some(name);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let family = families.entry(name.clone()).or_default();
                family.kind.get_or_insert_with(|| line.to_owned());
                current = Some(name);
            } else if line.starts_with('#') {
                continue;
            } else {
                // A sample before any `# TYPE` (not produced by our renderer): its own family.
                let name = current.clone().unwrap_or_else(|| {
                    line.split(['{', ' ']).next().unwrap_or_default().to_owned()
                });
                families
                    .entry(name)
                    .or_default()
                    .samples
                    .push(line.to_owned());
            }
        }
    }
    let mut out = String::new();
    for family in families.values() {
        if family.samples.is_empty() {
            continue;
        }
        for line in family
            .help
            .iter()
            .chain(&family.kind)
            .chain(&family.samples)
        {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::merge;

    #[test]
    fn merge_keeps_each_family_once_with_every_processes_samples() {
        let web =
            "# TYPE halol_queue_jobs gauge\nhalol_queue_jobs{process=\"w:1\",queue=\"a\"} 3\n\n";
        let worker = "# HELP halol_jobs_finished_total Jobs finished.\n# TYPE halol_jobs_finished_total counter\nhalol_jobs_finished_total{process=\"k:2\"} 5\n\n# TYPE halol_job_duration_seconds summary\nhalol_job_duration_seconds{process=\"k:2\",quantile=\"0.5\"} 0.1\nhalol_job_duration_seconds_sum{process=\"k:2\"} 1\nhalol_job_duration_seconds_count{process=\"k:2\"} 10\n";
        let other = "# TYPE halol_jobs_finished_total counter\nhalol_jobs_finished_total{process=\"k:3\"} 7\n";
        let merged = merge([web, worker, other]);
        assert_eq!(
            merged.matches("# TYPE halol_jobs_finished_total").count(),
            1
        );
        assert_eq!(
            merged.matches("# HELP halol_jobs_finished_total").count(),
            1
        );
        let finished = merged
            .split("\n\n")
            .find(|f| f.contains("# TYPE halol_jobs_finished_total"))
            .expect("family");
        assert_eq!(
            finished,
            "# HELP halol_jobs_finished_total Jobs finished.\n# TYPE halol_jobs_finished_total counter\nhalol_jobs_finished_total{process=\"k:2\"} 5\nhalol_jobs_finished_total{process=\"k:3\"} 7"
        );
        // A summary's quantiles, _sum and _count stay in its block.
        let summary = merged
            .split("\n\n")
            .find(|f| f.contains("# TYPE halol_job_duration_seconds summary"))
            .expect("summary");
        assert_eq!(summary.lines().count(), 4, "{summary}");
        assert!(summary.contains("halol_job_duration_seconds_count{process=\"k:2\"} 10"));
        assert!(merged.contains("halol_queue_jobs{process=\"w:1\",queue=\"a\"} 3\n"));
        // HELP before TYPE, as the format wants.
        let help = merged
            .find("# HELP halol_jobs_finished_total")
            .expect("help");
        let kind = merged
            .find("# TYPE halol_jobs_finished_total")
            .expect("type");
        assert!(help < kind);
    }

    #[test]
    fn merge_of_nothing_is_empty() {
        assert_eq!(merge([]), "");
        assert_eq!(merge(["\n\n# TYPE x counter\n"]), "");
    }
}
