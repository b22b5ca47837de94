//! [`RedisQueue`]: the apalis `Backend` a worker consumes, and the `Sink` behind apalis'
//! `TaskSink` (`push`, `push_bulk`, `push_task`, ...).

use std::{
    marker::PhantomData,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

fn slot<T>(m: &mut Mutex<T>) -> &mut T {
    m.get_mut().unwrap_or_else(PoisonError::into_inner)
}

use apalis_core::{
    backend::{Backend, BackendConfig, finalize::Ephemeral},
    task::Task,
    worker::context::WorkerContext,
};
use futures::{FutureExt, Sink, future::BoxFuture};
use halol_jobs::Job;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::{
    NewJob, Producer, PushReport, QueueError, QueueSettings,
    ack::{AckLayer, AckMsg, Delivery},
    keys::Keys,
    now_ms,
    runtime::{self, QueueCtx},
};
use crate::redis_pool::RedisPool;

/// How long a stopping worker keeps trying to hand back unstarted jobs before leaving them to
/// lease expiry.
const HAND_BACK_TIMEOUT: Duration = Duration::from_secs(5);

/// The queue of job `J`, named `J::NAME`.
///
/// As a backend it yields decoded tasks: apalis' `Ephemeral` kind is used for that (the tasks are
/// durable in Redis all the same) so that a payload that fails to decode is dead-lettered here
/// instead of surfacing as a backend error, which would stop the apalis worker.
pub struct RedisQueue<J> {
    redis: RedisPool,
    settings: Arc<QueueSettings>,
    keys: Keys,
    producer: Producer,
    prefetch: usize,
    acks: Option<(
        mpsc::UnboundedSender<AckMsg>,
        mpsc::UnboundedReceiver<AckMsg>,
    )>,
    running: Option<Running<J>>,
    // Futures are `Send` but not `Sync`; the mutexes (only ever used through `get_mut`, never
    // locked) make the queue `Sync`, which apalis' expose traits need.
    closing: Mutex<Option<BoxFuture<'static, ()>>>,
    buffer: Vec<NewJob>,
    flushing: Mutex<Option<BoxFuture<'static, Result<PushReport, QueueError>>>>,
    _job: PhantomData<fn() -> J>,
}

struct Running<J> {
    ctx: Arc<QueueCtx>,
    rx: mpsc::Receiver<Task<J>>,
    stop: CancellationToken,
    acks: mpsc::UnboundedSender<AckMsg>,
    fetcher: JoinHandle<Vec<String>>,
    settler: JoinHandle<()>,
    maintainer: JoinHandle<()>,
}

impl<J: Job> RedisQueue<J> {
    /// The queue of `J` on `redis`.
    pub fn new(redis: RedisPool, settings: Arc<QueueSettings>) -> Self {
        let keys = settings.keys(J::NAME);
        let producer = Producer::new(redis.manager(), settings.clone());
        Self {
            redis,
            settings,
            keys,
            producer,
            prefetch: 1,
            acks: None,
            running: None,
            closing: Mutex::new(None),
            buffer: Vec::new(),
            flushing: Mutex::new(None),
            _job: PhantomData,
        }
    }

    /// How many jobs a worker holds at most beyond those running: set it to the worker's
    /// concurrency so that idle workers of the fleet share a burst.
    pub fn with_prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// The queue's keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The producer this queue pushes with.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    pub(crate) fn redis(&self) -> &RedisPool {
        &self.redis
    }

    pub(crate) fn settings(&self) -> &Arc<QueueSettings> {
        &self.settings
    }

    fn start(&mut self, worker: &WorkerContext) {
        let (ack_tx, ack_rx) = self.acks.take().unwrap_or_else(mpsc::unbounded_channel);
        let ctx = Arc::new(QueueCtx {
            redis: self.redis.clone(),
            settings: self.settings.clone(),
            keys: self.keys.clone(),
            consumer: worker.name().to_owned(),
        });
        let (tx, rx) = mpsc::channel(self.prefetch);
        let stop = CancellationToken::new();
        let prefetch = self.prefetch;
        let maintainer = {
            let ctx = ctx.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut conn = ctx.redis.manager();
                if let Err(e) = runtime::register(&mut conn, &ctx, prefetch).await {
                    tracing::warn!(queue = ctx.keys.queue(), error = %e, "could not register worker {}; will retry through maintenance", ctx.consumer);
                }
                runtime::maintain_loop(ctx, stop).await;
            })
        };
        let fetcher = tokio::spawn(runtime::fetch_loop(
            ctx.clone(),
            tx,
            ack_tx.clone(),
            stop.clone(),
        ));
        let settler = tokio::spawn(runtime::settle_loop(ctx.clone(), ack_rx));
        tracing::info!(queue = self.keys.queue(), worker = %ctx.consumer, prefetch, "worker {} consuming {}", ctx.consumer, self.keys.queue());
        self.running = Some(Running {
            ctx,
            rx,
            stop,
            acks: ack_tx,
            fetcher,
            settler,
            maintainer,
        });
    }
}

impl<J> Clone for RedisQueue<J> {
    fn clone(&self) -> Self {
        Self {
            redis: self.redis.clone(),
            settings: self.settings.clone(),
            keys: self.keys.clone(),
            producer: self.producer.clone(),
            prefetch: self.prefetch,
            acks: None,
            running: None,
            closing: Mutex::new(None),
            buffer: Vec::new(),
            flushing: Mutex::new(None),
            _job: PhantomData,
        }
    }
}

impl<J> std::fmt::Debug for RedisQueue<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("queue", &self.keys.queue())
            .finish_non_exhaustive()
    }
}

/// Stop fetching, hand back what was fetched but not started, flush every ack, deregister.
async fn close<J: Job>(mut run: Running<J>) {
    run.stop.cancel();
    let mut unstarted = run.fetcher.await.unwrap_or_default();
    run.rx.close();
    while let Ok(task) = run.rx.try_recv() {
        if let Some(d) = task.ctx().data().get::<Delivery>() {
            unstarted.push(d.entry.clone());
        }
    }
    let mut conn = run.ctx.redis.manager();
    if !unstarted.is_empty() {
        match tokio::time::timeout(
            HAND_BACK_TIMEOUT,
            runtime::hand_back(&mut conn, &run.ctx, &unstarted),
        )
        .await
        {
            Ok(Ok(())) => tracing::info!(
                queue = run.ctx.keys.queue(),
                count = unstarted.len(),
                "handed back {} unstarted jobs",
                unstarted.len()
            ),
            _ => tracing::warn!(
                queue = run.ctx.keys.queue(),
                count = unstarted.len(),
                "could not hand back {} unstarted jobs; they return when their lease expires",
                unstarted.len()
            ),
        }
    }
    let (flushed_tx, flushed) = oneshot::channel();
    if run.acks.send(AckMsg::Flush(flushed_tx)).is_ok() {
        let _ = flushed.await;
    }
    run.settler.abort();
    let _ = run.maintainer.await;
    if let Err(e) = runtime::deregister(&mut conn, &run.ctx).await {
        tracing::warn!(queue = run.ctx.keys.queue(), error = %e, "could not deregister worker {}", run.ctx.consumer);
    }
    tracing::info!(queue = run.ctx.keys.queue(), worker = %run.ctx.consumer, "worker {} stopped", run.ctx.consumer);
}

impl<J: Job> Backend for RedisQueue<J> {
    type Task = Task<J>;
    type Error = QueueError;

    fn poll_ready(
        &mut self,
        _cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        if self.running.is_none() && slot(&mut self.closing).is_none() {
            self.start(worker);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        match &mut self.running {
            Some(run) => run.rx.poll_recv(cx).map(|task| task.map(Ok)),
            None => Poll::Ready(None),
        }
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        if slot(&mut self.closing).is_none() {
            match self.running.take() {
                Some(run) => *slot(&mut self.closing) = Some(close(run).boxed()),
                None => return Poll::Ready(Ok(())),
            }
        }
        let closing = slot(&mut self.closing);
        match closing.as_mut().map(|f| f.poll_unpin(cx)) {
            Some(Poll::Pending) => Poll::Pending,
            _ => {
                *closing = None;
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<J: Job> BackendConfig for RedisQueue<J> {
    type Args = J;
    type Id = String;
    type Kind = Ephemeral;
    type Config = Arc<QueueSettings>;
    type Layer = AckLayer;

    fn config(&self) -> &Self::Config {
        &self.settings
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        let (tx, rx) = mpsc::unbounded_channel();
        self.acks = Some((tx.clone(), rx));
        AckLayer::new(tx, J::TIMEOUT, J::NAME)
    }
}

impl<J: Job> RedisQueue<J> {
    fn encode(&self, task: Task<J>) -> Result<NewJob, QueueError> {
        let (args, ctx) = task.take();
        let payload = serde_json::to_string(&args).map_err(|source| QueueError::Encode {
            queue: J::NAME.to_owned(),
            source,
        })?;
        let mut job = NewJob::new(
            payload,
            ctx.max_attempts().map_or(J::MAX_ATTEMPTS, |m| m as u32),
        );
        if let Some(id) = ctx.task_id() {
            job.id = id.to_string();
        }
        job.run_at_ms = ctx
            .run_at()
            .map(|s| s as i64 * 1000)
            .filter(|&at| at > now_ms());
        job.idempotency_key = ctx.idempotency_key().map(str::to_owned);
        Ok(job)
    }

    fn poll_flushing(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), QueueError>> {
        loop {
            if let Some(fut) = slot(&mut self.flushing) {
                let result = futures::ready!(fut.poll_unpin(cx));
                *slot(&mut self.flushing) = None;
                result?;
            }
            if self.buffer.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let jobs = std::mem::take(&mut self.buffer);
            let producer = self.producer.clone();
            *slot(&mut self.flushing) =
                Some(async move { producer.push(J::NAME, &jobs).await }.boxed());
        }
    }
}

impl<J: Job> Sink<Task<J>> for RedisQueue<J> {
    type Error = QueueError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        if slot(&mut this.flushing).is_some() {
            return this.poll_flushing(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, task: Task<J>) -> Result<(), Self::Error> {
        let this = self.get_mut();
        let job = this.encode(task)?;
        this.buffer.push(job);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_flushing(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_flushing(cx)
    }
}
