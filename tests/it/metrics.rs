//! Fleet metrics: what a process publishes to Redis for the web role's `/metrics`.

use std::time::Duration;

use halol::fleet_metrics;
use redis::AsyncCommands as _;
use tokio_util::sync::CancellationToken;

use crate::helpers::{eventually, pool, settings};

#[tokio::test]
async fn a_stopping_process_publishes_its_metrics_once_more() {
    let handle = fleet_metrics::install("test").expect("recorder");
    let settings = settings(|_| {});
    let redis = pool().await;
    let stop = CancellationToken::new();
    // An interval far longer than the test: only the first and the last publish happen.
    let task = tokio::spawn(fleet_metrics::publish_until(
        handle,
        redis.clone(),
        settings.prefix.clone(),
        Duration::from_secs(3600),
        stop.clone(),
    ));
    let key = fleet_metrics::snapshot_key(&settings.prefix, fleet_metrics::process_name());
    let mut conn = redis.manager();
    eventually(Duration::from_secs(5), "the first snapshot", || {
        let mut conn = conn.clone();
        let key = key.clone();
        async move {
            let exists: bool = conn.exists(&key).await.expect("exists");
            exists.then_some(())
        }
    })
    .await;
    let first: String = conn.get(&key).await.expect("get");
    assert!(!first.contains("halol_test_final_publish_total"), "{first}");
    metrics::counter!("halol_test_final_publish_total").increment(3);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the publisher stops within its timeout")
        .expect("join");
    let last: String = conn.get(&key).await.expect("get");
    let line = last
        .lines()
        .find(|l| l.starts_with("halol_test_final_publish_total{"))
        .unwrap_or_else(|| panic!("no final snapshot: {last}"));
    assert!(
        line.contains(&format!("process=\"{}\"", fleet_metrics::process_name()))
            && line.ends_with(" 3"),
        "{line}"
    );
    // Listed in the index until three intervals from now, and the index itself expires.
    let score: Option<f64> = conn
        .zscore(
            fleet_metrics::index_key(&settings.prefix),
            fleet_metrics::process_name(),
        )
        .await
        .expect("zscore");
    let left_ms = score.expect("indexed") - chrono::Utc::now().timestamp_millis() as f64;
    assert!(left_ms > 3.0 * 3_590_000.0, "{left_ms}");
    let index_ttl: i64 = conn
        .pttl(fleet_metrics::index_key(&settings.prefix))
        .await
        .expect("pttl");
    assert!(index_ttl > 0, "{index_ttl}");
    let _: () = redis::pipe()
        .del(&key)
        .del(fleet_metrics::index_key(&settings.prefix))
        .query_async(&mut conn)
        .await
        .expect("cleanup");
}
