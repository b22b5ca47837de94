//! `--push`: one pub/sub connection subscribed to every simulated bot's `bot:events:{id}`,
//! handing each message to its bot. One connection for all bots, not one per bot, so a load
//! run of thousands of bots does not open thousands of Redis connections.
//!
//! Pub/sub is at most once: a message lost here (a full mailbox, a dropped connection) is
//! caught by the bot's next version poll, which is why polling never stops.

use std::collections::HashMap;

use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::trading::CacheKeys;

/// Messages a bot has not yet handled before new ones are dropped.
const MAILBOX: usize = 4;

/// Subscribe to the channels of `mt5s` and start forwarding; returns each bot's mailbox.
pub async fn subscribe(
    redis_url: &str,
    keys: &CacheKeys,
    mt5s: &[i64],
    cancel: CancellationToken,
) -> anyhow::Result<HashMap<i64, mpsc::Receiver<String>>> {
    let client = redis::Client::open(redis_url)?;
    let (mut sink, mut stream) = client.get_async_pubsub().await?.split();
    let mut routes = HashMap::with_capacity(mt5s.len());
    let mut mailboxes = HashMap::with_capacity(mt5s.len());
    for &mt5 in mt5s {
        let (tx, rx) = mpsc::channel(MAILBOX);
        routes.insert(keys.bot_events(mt5), tx);
        mailboxes.insert(mt5, rx);
    }
    let channels: Vec<&String> = routes.keys().collect();
    for chunk in channels.chunks(1_000) {
        sink.subscribe(chunk).await?;
    }
    tracing::info!(
        channels = routes.len(),
        "subscribed to {} bot event channels",
        routes.len()
    );
    tokio::spawn(async move {
        // Keep the sink alive: dropping it would end the subscription.
        let _sink = sink;
        loop {
            let msg = tokio::select! {
                m = stream.next() => m,
                () = cancel.cancelled() => break,
            };
            let Some(msg) = msg else {
                tracing::warn!("the push connection closed; bots keep polling versions");
                break;
            };
            let Some(tx) = routes.get(msg.get_channel_name()) else {
                continue;
            };
            let payload: String = msg.get_payload().unwrap_or_default();
            // A full mailbox means the bot is busy fetching already: dropping is harmless.
            let _ = tx.try_send(payload);
        }
    });
    Ok(mailboxes)
}
