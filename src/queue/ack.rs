//! The backend's tower layer: it runs every attempt under the job's timeout, turns a panic into a
//! failure, and hands the outcome to the settler. It sits outside every user layer, so what it
//! records is the attempt's final result.

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use apalis_core::{
    error::{AbortError, BoxDynError},
    task::Task,
};
use futures::{FutureExt, future::BoxFuture};
use tokio::sync::{mpsc, oneshot};
use tower::{Layer, Service};

use super::settle::{Failure, FailureKind};

/// Where a task came from: attached to every task the backend yields.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Stream entry id of this delivery.
    pub entry: String,
    /// Job id, stable across attempts.
    pub job_id: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The raw payload, kept for retries and dead letters.
    pub payload: Arc<str>,
    /// When the job was first enqueued, ms.
    pub enqueued_ms: i64,
    /// The idempotency key the job was pushed with.
    pub idempotency_key: Option<String>,
}

/// A finished delivery on its way to Redis.
#[derive(Debug)]
pub(crate) struct Settled {
    pub delivery: Delivery,
    pub outcome: Result<Duration, Failure>,
}

/// Messages to the settler task.
#[derive(Debug)]
pub(crate) enum AckMsg {
    Settle(Settled),
    /// Answered once every message sent before it is written.
    Flush(oneshot::Sender<()>),
}

/// The backend's middleware; see the module docs.
#[derive(Debug, Clone)]
pub struct AckLayer {
    tx: mpsc::UnboundedSender<AckMsg>,
    timeout: Duration,
    queue: Arc<str>,
}

impl AckLayer {
    pub(crate) fn new(tx: mpsc::UnboundedSender<AckMsg>, timeout: Duration, queue: &str) -> Self {
        Self {
            tx,
            timeout,
            queue: queue.into(),
        }
    }
}

impl<S> Layer<S> for AckLayer {
    type Service = AckService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AckService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`AckLayer`].
#[derive(Debug, Clone)]
pub struct AckService<S> {
    inner: S,
    layer: AckLayer,
}

impl<S, Args> Service<Task<Args>> for AckService<S>
where
    S: Service<Task<Args>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError>,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<S::Response, BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Args>) -> Self::Future {
        let delivery = task.ctx().data().get::<Delivery>().cloned();
        let fut = self.inner.call(task);
        let AckLayer { tx, timeout, queue } = self.layer.clone();
        Box::pin(async move {
            let started = Instant::now();
            let result = tokio::time::timeout(timeout, AssertUnwindSafe(fut).catch_unwind()).await;
            let elapsed = started.elapsed();
            let (ret, outcome) = match result {
                Err(_) => {
                    let message = format!("timed out after {} ms", timeout.as_millis());
                    (
                        Err(message.clone().into()),
                        Err(Failure {
                            kind: FailureKind::Timeout,
                            message,
                        }),
                    )
                }
                Ok(Err(panic)) => {
                    let message = format!("panicked: {}", panic_message(panic.as_ref()));
                    (
                        Err(message.clone().into()),
                        Err(Failure {
                            kind: FailureKind::Panic,
                            message,
                        }),
                    )
                }
                Ok(Ok(Err(e))) => {
                    let e: BoxDynError = e.into();
                    let kind = if e.downcast_ref::<AbortError>().is_some() {
                        FailureKind::Abort
                    } else {
                        FailureKind::Error
                    };
                    let message = e.to_string();
                    (Err(e), Err(Failure { kind, message }))
                }
                Ok(Ok(Ok(response))) => (Ok(response), Ok(elapsed)),
            };
            record(&queue, delivery.as_ref(), &outcome, elapsed);
            if let Some(delivery) = delivery {
                // The settler only goes away when the worker is torn down; the delivery is then
                // re-queued when its lease expires.
                let _ = tx.send(AckMsg::Settle(Settled { delivery, outcome }));
            }
            ret
        })
    }
}

fn record(
    queue: &str,
    delivery: Option<&Delivery>,
    outcome: &Result<Duration, Failure>,
    elapsed: Duration,
) {
    let status = match outcome {
        Ok(_) => "done",
        Err(f) => f.kind.status(),
    };
    metrics::counter!("halol_jobs_finished_total", "queue" => queue.to_owned(), "status" => status)
        .increment(1);
    metrics::histogram!("halol_job_duration_seconds", "queue" => queue.to_owned())
        .record(elapsed.as_secs_f64());
    if let (Err(failure), Some(d)) = (outcome, delivery) {
        tracing::warn!(
            queue,
            job.id = %d.job_id,
            job.attempt = d.attempt,
            job.max_attempts = d.max_attempts,
            job.status = status,
            duration_ms = elapsed.as_millis() as u64,
            error = %failure.message,
            "job {} on {queue} attempt {}/{} {status}: {}", d.job_id, d.attempt, d.max_attempts, failure.message
        );
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
