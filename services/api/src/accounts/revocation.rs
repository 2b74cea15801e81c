//! Revocation reaches every replica at once: the replica that revokes keys publishes their ids
//! on [`CHANNEL`], and every replica (itself included) evicts them from its key cache. The
//! subscriber has its own connection and reconnects after [`RETRY_AFTER`]; after each
//! (re)subscription it clears the whole cache, since revocations published while it was away
//! were missed. Without Redis the cache TTL (`PR_KEY_CACHE_TTL_MS`) bounds the delay.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use uuid::Uuid;

use super::redis_link::{RETRY_AFTER, RedisLink};
use crate::auth::KeyCache;

pub const CHANNEL: &str = "pr:keys:revoked";

/// Publishes revoked key ids (comma-separated); false when Redis did not take it.
pub async fn publish(link: &RedisLink, ids: &[Uuid]) -> bool {
    if ids.is_empty() {
        return true;
    }
    let payload = ids.iter().map(Uuid::to_string).collect::<Vec<_>>().join(",");
    let cmd = redis::cmd("PUBLISH").arg(CHANNEL).arg(payload).clone();
    link.run("revocation publish", |mut conn| async move { cmd.query_async::<i64>(&mut conn).await }).await.is_some()
}

fn parse(payload: &str) -> Vec<Uuid> {
    payload.split(',').filter_map(|s| s.trim().parse().ok()).collect()
}

/// Subscribes and evicts until the process ends.
pub async fn listen(link: Arc<RedisLink>, keys: KeyCache) {
    let connect = Duration::from_secs(2);
    loop {
        let subscribed = tokio::time::timeout(connect, async {
            let mut pubsub = link.client().get_async_pubsub().await?;
            pubsub.subscribe(CHANNEL).await?;
            redis::RedisResult::Ok(pubsub)
        })
        .await;
        match subscribed {
            Ok(Ok(mut pubsub)) => {
                link.succeeded();
                keys.clear();
                tracing::info!(target: "pr.redis", channel = CHANNEL, "subscribed to key revocations");
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    if let Ok(payload) = msg.get_payload::<String>() {
                        keys.evict_key_ids(&parse(&payload));
                    }
                }
                link.failed("revocation subscription", "connection closed");
            }
            Ok(Err(e)) => link.failed("revocation subscription", &e.to_string()),
            Err(_) => link.failed("revocation subscription", "timed out"),
        }
        tokio::time::sleep(RETRY_AFTER).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn payloads_are_comma_separated_ids_and_junk_is_skipped() {
        let a = uuid::Uuid::new_v4();
        let b = uuid::Uuid::new_v4();
        assert_eq!(super::parse(&format!("{a},{b}")), vec![a, b]);
        assert_eq!(super::parse(&format!("x,{a}")), vec![a]);
    }
}
