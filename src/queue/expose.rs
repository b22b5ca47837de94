//! apalis' expose traits (`ListQueues`, `ListWorkers`, `ListTasks`, `ListAllTasks`, `Metrics`),
//! so apalis-aware dashboards can read our queues. Payloads are exposed as decoded JSON.

use apalis_core::{
    backend::{
        Filter, ListAllTasks, ListQueues, ListTasks, ListWorkers, Metrics, QueueInfo,
        RunningWorker, StatType, Statistic, WireFormatBackend, codec::Codec,
    },
    task::{Task, builder::TaskBuilder, status::Status, task_id::TaskId},
};
use halol_jobs::Job;
use serde_json::Value;

use super::{Keys, QueueError, RedisQueue, inspect};

/// Most tasks one `list_tasks` page returns.
const MAX_PAGE_SIZE: u32 = 1_000;

/// JSON codec between a job and its exposed form.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl<J: Job> Codec<J> for JsonCodec {
    type Error = serde_json::Error;
    type Compact = Value;

    fn encode(&self, val: &J) -> Result<Value, Self::Error> {
        serde_json::to_value(val)
    }

    fn decode(&self, val: &Value) -> Result<J, Self::Error> {
        serde_json::from_value(val.clone())
    }
}

impl<J: Job> WireFormatBackend for RedisQueue<J> {
    type Codec = JsonCodec;
    type Compact = Value;

    fn codec(&self) -> &Self::Codec {
        &JsonCodec
    }
}

fn worker_ttl_ms<J: Job>(q: &RedisQueue<J>) -> i64 {
    (q.settings().lease * 3).as_millis() as i64
}

fn statistics(s: &inspect::QueueStats) -> Vec<Statistic> {
    let mut out = vec![
        stat("ready", s.ready, 1),
        stat("in_flight", s.in_flight, 2),
        stat("delayed", s.delayed, 3),
        stat("dead", s.dead, 4),
        stat("workers", s.workers, 5),
    ];
    let mut counters: Vec<_> = s.counters.iter().collect();
    counters.sort();
    out.extend(
        counters
            .into_iter()
            .map(|(k, v)| stat(&format!("total_{k}"), *v, 10)),
    );
    out
}

fn stat(title: &str, value: u64, priority: u64) -> Statistic {
    Statistic {
        title: title.to_owned(),
        stat_type: StatType::Number,
        value: value.to_string(),
        priority: Some(priority),
    }
}

fn to_task(record: inspect::Record, status: Status) -> Task<Value> {
    let f = &record.fields;
    let payload = f
        .get("p")
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or(Value::Null);
    let attempts = f.get("a").and_then(|a| a.parse().ok()).unwrap_or(0);
    let mut b = TaskBuilder::new(payload).status(status).attempt(attempts);
    if let Some(id) = f.get("id").filter(|id| !id.is_empty()) {
        b = b.task_id(TaskId::from_string(id.clone()));
    }
    if let Some(m) = f.get("m").and_then(|m| m.parse().ok()) {
        b = b.max_attempts(m);
    }
    b.build()
}

async fn list(
    q: &RedisQueue<impl Job>,
    keys: &Keys,
    filter: &Filter,
) -> Result<Vec<Task<Value>>, QueueError> {
    let mut conn = q.redis().manager();
    // Not `Filter::offset()`: it computes `(page - 1) * size` unchecked, so a caller's page 0
    // panics in debug builds and wraps in release. Page 0 reads as page 1, and a page is
    // capped so that one call cannot read a whole backlog.
    let limit = filter.limit().clamp(1, MAX_PAGE_SIZE) as usize;
    let offset = (filter.page.max(1) as usize - 1).saturating_mul(limit);
    let want = offset.saturating_add(limit);
    let (records, status) = match filter.status.clone().unwrap_or(Status::Pending) {
        Status::Done => (inspect::history(&mut conn, keys, want).await?, Status::Done),
        s @ (Status::Failed | Status::Killed) => {
            (inspect::dead_letters(&mut conn, keys, want, None).await?, s)
        }
        s => (inspect::waiting(&mut conn, keys, want).await?, s),
    };
    Ok(records
        .into_iter()
        .skip(offset)
        .map(|r| to_task(r, status.clone()))
        .collect())
}

impl<J: Job> ListTasks for RedisQueue<J> {
    async fn list_tasks(&self, filter: &Filter) -> Result<Vec<Task<Value>>, QueueError> {
        list(self, self.keys(), filter).await
    }
}

impl<J: Job> ListAllTasks for RedisQueue<J> {
    async fn list_all_tasks(&self, filter: &Filter) -> Result<Vec<Task<Value>>, QueueError> {
        let mut all = Vec::new();
        for queue in registered(self).await? {
            all.extend(list(self, &self.settings().keys(&queue), filter).await?);
        }
        Ok(all)
    }
}

async fn registered<J: Job>(q: &RedisQueue<J>) -> Result<Vec<String>, QueueError> {
    use redis::AsyncCommands as _;
    let mut names: Vec<String> = q
        .redis()
        .manager()
        .smembers(q.settings().registry_key())
        .await?;
    for known in halol_jobs::QUEUES {
        if !names.iter().any(|n| n == known) {
            names.push((*known).to_owned());
        }
    }
    names.sort();
    Ok(names)
}

impl<J: Job> ListQueues for RedisQueue<J> {
    async fn list_queues(&self) -> Result<Vec<QueueInfo>, QueueError> {
        let mut conn = self.redis().manager();
        let mut out = Vec::new();
        for queue in registered(self).await? {
            let keys = self.settings().keys(&queue);
            let stats = inspect::stats(&mut conn, &keys, worker_ttl_ms(self)).await?;
            let workers = inspect::workers(&mut conn, &keys)
                .await?
                .into_iter()
                .map(|w| w.name)
                .collect();
            out.push(QueueInfo {
                name: queue,
                stats: statistics(&stats),
                workers,
                activity: Vec::new(),
            });
        }
        Ok(out)
    }
}

fn running(keys: &Keys, w: inspect::WorkerInfo) -> RunningWorker {
    RunningWorker {
        queue: keys.queue().to_owned(),
        backend: "halol-redis-streams".to_owned(),
        started_at: w
            .details
            .get("started_at")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        last_heartbeat: w.last_heartbeat_ms as u64,
        layers: String::new(),
        id: w.name,
    }
}

impl<J: Job> ListWorkers for RedisQueue<J> {
    async fn list_workers(&self) -> Result<Vec<RunningWorker>, QueueError> {
        let mut conn = self.redis().manager();
        Ok(inspect::workers(&mut conn, self.keys())
            .await?
            .into_iter()
            .map(|w| running(self.keys(), w))
            .collect())
    }

    async fn list_all_workers(&self) -> Result<Vec<RunningWorker>, QueueError> {
        let mut conn = self.redis().manager();
        let mut out = Vec::new();
        for queue in registered(self).await? {
            let keys = self.settings().keys(&queue);
            out.extend(
                inspect::workers(&mut conn, &keys)
                    .await?
                    .into_iter()
                    .map(|w| running(&keys, w)),
            );
        }
        Ok(out)
    }
}

impl<J: Job> Metrics for RedisQueue<J> {
    async fn global(&self) -> Result<Vec<Statistic>, QueueError> {
        let mut conn = self.redis().manager();
        let mut total = inspect::QueueStats::default();
        for queue in registered(self).await? {
            let s = inspect::stats(
                &mut conn,
                &self.settings().keys(&queue),
                worker_ttl_ms(self),
            )
            .await?;
            total.ready += s.ready;
            total.in_flight += s.in_flight;
            total.delayed += s.delayed;
            total.dead += s.dead;
            total.workers += s.workers;
            for (k, v) in s.counters {
                *total.counters.entry(k).or_default() += v;
            }
        }
        Ok(statistics(&total))
    }

    async fn fetch_by_queue(&self) -> Result<Vec<Statistic>, QueueError> {
        let mut conn = self.redis().manager();
        Ok(statistics(
            &inspect::stats(&mut conn, self.keys(), worker_ttl_ms(self)).await?,
        ))
    }
}
