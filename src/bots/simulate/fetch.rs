//! The simulated bots' REST client: `GET` a config with `Authorization: Bearer <key>` and
//! `If-None-Match: <last ETag>`, retrying transient failures (transport errors, timeouts, 429,
//! 5xx) with exponential backoff and jitter, a bounded number of times. A refusal (401, 403,
//! 404, ...) is not retried: asking again cannot change the answer.
//!
//! hyper-util's client over the hyper that axum already brings, plain HTTP only: the simulator
//! talks to our own web role, usually on loopback. reqwest was rejected because it would add a
//! second HTTP and TLS stack for a test tool.

use std::{error::Error as StdError, sync::Arc, time::Duration};

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{
    Request, StatusCode,
    body::Bytes,
    header::{AUTHORIZATION, ETAG, HeaderValue, IF_NONE_MATCH},
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::{sync::Semaphore, time::Instant};
use tokio_util::sync::CancellationToken;

/// A config document is a few KB; anything past this is not one.
const BODY_LIMIT: usize = 1024 * 1024;

/// How failures are retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts in all (≥ 1).
    pub attempts: u32,
    /// Delay before the first retry, before jitter.
    pub base: Duration,
    /// Longest delay.
    pub cap: Duration,
}

/// Delay before retry number `retry` (0-based): `min(cap, base × 2^retry)`, then "equal
/// jitter" (half of it fixed, half random by `unit` in [0, 1)), so bots that failed together do
/// not come back together yet never retry at once.
pub fn backoff(retry: u32, policy: Retry, unit: f64) -> Duration {
    let full = policy
        .base
        .saturating_mul(2u32.saturating_pow(retry.min(20)))
        .min(policy.cap);
    full / 2 + full.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
}

/// A successful answer.
#[derive(Debug)]
pub enum Outcome {
    /// 200 with the document.
    Fresh {
        /// Its `ETag`.
        etag: Option<String>,
        /// The document.
        body: serde_json::Value,
    },
    /// 304: what we hold is current.
    NotModified {
        /// The `ETag` the server repeated.
        etag: Option<String>,
    },
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A status that retrying cannot change (401, 403, 404, ...).
    #[error("refused with HTTP {0}")]
    Refused(StatusCode),
    /// 429 or 5xx.
    #[error("server answered HTTP {0}")]
    Server(StatusCode),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting or talking failed.
    #[error("request failed")]
    Transport(#[source] hyper_util::client::legacy::Error),
    /// The body could not be read.
    #[error("reading the body failed")]
    Body(#[source] Box<dyn StdError + Send + Sync>),
    /// The body is not JSON.
    #[error("the body is not JSON")]
    Json(#[source] serde_json::Error),
    /// The request could not be built (a key with characters a header cannot carry).
    #[error("invalid request")]
    Build(#[source] hyper::http::Error),
    /// The run is stopping.
    #[error("stopped")]
    Cancelled,
}

impl FetchError {
    fn transient(&self) -> bool {
        matches!(
            self,
            Self::Server(_) | Self::Timeout(_) | Self::Transport(_) | Self::Body(_)
        )
    }
}

/// The result of a fetch with its retries.
#[derive(Debug)]
pub struct Attempted {
    /// The last attempt's result.
    pub result: Result<Outcome, FetchError>,
    /// Attempts after the first.
    pub retries: u32,
    /// Round trip of each attempt, µs.
    pub latencies_us: Vec<u32>,
}

/// The client, shared by every bot of a run.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Empty<Bytes>>,
    base: Arc<str>,
    timeout: Duration,
    retry: Retry,
    /// Caps requests in flight so thousands of bots do not open thousands of sockets.
    inflight: Arc<Semaphore>,
}

impl Http {
    /// A client for `base_url` (`http://host:port`, no TLS).
    pub fn new(
        base_url: &str,
        timeout: Duration,
        retry: Retry,
        max_inflight: usize,
    ) -> anyhow::Result<Self> {
        let url = url::Url::parse(base_url)
            .map_err(|e| anyhow::anyhow!("--base-url: {base_url:?} is not a URL: {e}"))?;
        anyhow::ensure!(
            url.scheme() == "http" && url.host().is_some(),
            "--base-url: {base_url:?} must be an http:// URL with a host (the simulator speaks no TLS)"
        );
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(max_inflight)
            .build(connector);
        Ok(Self {
            client,
            base: base_url.trim_end_matches('/').into(),
            timeout,
            retry,
            inflight: Arc::new(Semaphore::new(max_inflight.max(1))),
        })
    }

    /// `GET {base}{path}` as the bot holding `key`, conditional on `etag`.
    pub async fn get(
        &self,
        path: &str,
        key: &str,
        etag: Option<&str>,
        cancel: &CancellationToken,
    ) -> Attempted {
        let mut latencies_us = Vec::new();
        let mut retries = 0;
        let attempts = self.retry.attempts.max(1);
        for attempt in 0..attempts {
            let result = tokio::select! {
                r = self.once(path, key, etag, &mut latencies_us) => r,
                () = cancel.cancelled() => Err(FetchError::Cancelled),
            };
            let transient = result.as_ref().err().is_some_and(FetchError::transient);
            if !transient || attempt + 1 == attempts {
                return Attempted {
                    result,
                    retries,
                    latencies_us,
                };
            }
            let delay = backoff(attempt, self.retry, rand::random::<f64>());
            if let Err(e) = &result {
                tracing::debug!(path, attempt, delay_ms = delay.as_millis() as u64, error = %e, "retrying {path} in {delay:?}");
            }
            retries += 1;
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = cancel.cancelled() => break,
            }
        }
        Attempted {
            result: Err(FetchError::Cancelled),
            retries,
            latencies_us,
        }
    }

    async fn once(
        &self,
        path: &str,
        key: &str,
        etag: Option<&str>,
        latencies_us: &mut Vec<u32>,
    ) -> Result<Outcome, FetchError> {
        let mut auth = HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|e| FetchError::Build(e.into()))?;
        auth.set_sensitive(true);
        let mut req = Request::get(format!("{}{path}", self.base)).header(AUTHORIZATION, auth);
        if let Some(etag) = etag {
            req = req.header(IF_NONE_MATCH, etag);
        }
        let req = req.body(Empty::new()).map_err(FetchError::Build)?;
        let _permit = self
            .inflight
            .acquire()
            .await
            .map_err(|_| FetchError::Cancelled)?;
        let started = Instant::now();
        let answered = tokio::time::timeout(self.timeout, async {
            let response = self
                .client
                .request(req)
                .await
                .map_err(FetchError::Transport)?;
            let (parts, body) = response.into_parts();
            let bytes = Limited::new(body, BODY_LIMIT)
                .collect()
                .await
                .map_err(FetchError::Body)?
                .to_bytes();
            Ok::<_, FetchError>((parts, bytes))
        })
        .await;
        latencies_us.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
        let (parts, bytes) = answered.map_err(|_| FetchError::Timeout(self.timeout))??;
        let etag = parts
            .headers
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match parts.status {
            StatusCode::OK => Ok(Outcome::Fresh {
                etag,
                body: serde_json::from_slice(&bytes).map_err(FetchError::Json)?,
            }),
            StatusCode::NOT_MODIFIED => Ok(Outcome::NotModified { etag }),
            s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
                Err(FetchError::Server(s))
            }
            s => Err(FetchError::Refused(s)),
        }
    }
}

/// The version an `ETag` of ours names (`"7"` or `W/"7"`).
pub fn etag_version(etag: &str) -> Option<i64> {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}

/// `e` and its sources, for one log line.
pub fn chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    // Bounded: error chains are short; stop at 10 regardless.
    for _ in 0..10 {
        let Some(s) = source else { break };
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_half_of_it_jittered() {
        let policy = Retry {
            attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1_000),
        };
        assert_eq!(backoff(0, policy, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(0, policy, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(2, policy, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(3, policy, 0.5), Duration::from_millis(600));
        assert_eq!(backoff(30, policy, 1.0), Duration::from_millis(1_000));
    }

    #[test]
    fn etags_name_versions_weak_or_strong() {
        assert_eq!(etag_version("\"7\""), Some(7));
        assert_eq!(etag_version("W/\"12\""), Some(12));
        assert_eq!(etag_version("\"abc\""), None);
    }

    #[test]
    fn only_http_base_urls_are_accepted() {
        let retry = Retry {
            attempts: 1,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(1),
        };
        let t = Duration::from_secs(1);
        assert!(Http::new("https://example.com", t, retry, 1).is_err());
        assert!(Http::new("not a url", t, retry, 1).is_err());
    }
}
