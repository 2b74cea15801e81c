//! Revocation and limit changes reach every replica at once: the replica that revokes keys, or
//! where an admin changes a key's or a user's limits, publishes what to evict on [`CHANNEL`],
//! and every replica (itself included) evicts it from its key cache. The subscriber has its own
//! connection and reconnects after [`RETRY_AFTER`]; after each (re)subscription it clears the
//! whole cache, since messages published while it was away were missed. Without Redis the cache
//! TTL (`PR_KEY_CACHE_TTL_MS`) bounds the delay.
//!
//! A message is a comma-separated list of entries: a key id (`<uuid>`, the original format), or
//! every cached key of a user (`user:<uuid>`). A replica from before the `user:` form skips
//! those entries as junk (its cache drops them within the TTL), so the format stays compatible.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use uuid::Uuid;

use super::redis_link::{RETRY_AFTER, RedisLink};
use crate::accounts::auth::KeyCache;

pub const CHANNEL: &str = "pr:keys:revoked";
const USER_PREFIX: &str = "user:";

/// One entry of a message: what every replica drops from its key cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evict {
    Key(Uuid),
    /// Every key of this user (the user's limits changed).
    User(Uuid),
}

impl Evict {
    fn encode(self) -> String {
        match self {
            Evict::Key(id) => id.to_string(),
            Evict::User(id) => format!("{USER_PREFIX}{id}"),
        }
    }
}

/// Publishes these evictions; false when Redis did not take it.
pub async fn publish(link: &RedisLink, items: &[Evict]) -> bool {
    if items.is_empty() {
        return true;
    }
    let payload = items.iter().map(|e| e.encode()).collect::<Vec<_>>().join(",");
    let cmd = redis::cmd("PUBLISH").arg(CHANNEL).arg(payload).clone();
    link.run("revocation publish", |mut conn| async move { cmd.query_async::<i64>(&mut conn).await }).await.is_some()
}

fn parse(payload: &str) -> Vec<Evict> {
    payload
        .split(',')
        .map(str::trim)
        .filter_map(|s| match s.strip_prefix(USER_PREFIX) {
            Some(user) => user.parse().ok().map(Evict::User),
            None => s.parse().ok().map(Evict::Key),
        })
        .collect()
}

fn apply(keys: &KeyCache, items: &[Evict]) {
    let key_ids: Vec<Uuid> =
        items.iter().filter_map(|e| if let Evict::Key(id) = e { Some(*id) } else { None }).collect();
    keys.evict_key_ids(&key_ids);
    for item in items {
        if let Evict::User(user_id) = item {
            keys.evict_user(*user_id);
        }
    }
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
                        apply(&keys, &parse(&payload));
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
    use super::{Evict, parse};

    #[test]
    fn payloads_are_comma_separated_ids_and_junk_is_skipped() {
        let a = uuid::Uuid::new_v4();
        let b = uuid::Uuid::new_v4();
        assert_eq!(parse(&format!("{a},{b}")), vec![Evict::Key(a), Evict::Key(b)]);
        assert_eq!(parse(&format!("x,{a}")), vec![Evict::Key(a)]);
        assert_eq!(parse(&format!("user:x,admin:{a}")), vec![]);
    }

    #[test]
    fn user_entries_round_trip_next_to_key_ids() {
        let (key, user) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let items = [Evict::Key(key), Evict::User(user)];
        let payload = items.iter().map(|e| e.encode()).collect::<Vec<_>>().join(",");
        assert_eq!(payload, format!("{key},user:{user}"));
        assert_eq!(parse(&payload), items);
    }

    #[test]
    fn a_key_only_parser_skips_user_entries() {
        // What a replica from before `user:` entries does with a message that has both.
        let (key, user) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let payload = format!("{key},user:{user}");
        let old: Vec<uuid::Uuid> = payload.split(',').filter_map(|s| s.trim().parse().ok()).collect();
        assert_eq!(old, vec![key]);
    }
}
