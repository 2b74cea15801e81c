//! The in-process limiter: the same sliding-window logs as `lua/admit.lua`, for one replica.
//! Used while Redis is away (with each limit divided among the replicas) and when no Redis is
//! configured (with the whole limit: one replica).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use uuid::Uuid;

use super::{
    rate_limiter::{Blocked, LimitKind, RateStatus, Verdict, WINDOW, Window},
    rate_limits::RateLimits,
};

#[derive(Default)]
struct Bucket {
    requests: VecDeque<Instant>,
    /// (admitted at, call, tokens charged): the worst case until the call settles.
    tokens: VecDeque<(Instant, Uuid, u64)>,
    token_sum: u64,
    running: HashSet<Uuid>,
}

impl Bucket {
    fn prune(&mut self, now: Instant) {
        while self.requests.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            self.requests.pop_front();
        }
        while let Some(&(t, _, n)) = self.tokens.front() {
            if now.duration_since(t) < WINDOW {
                break;
            }
            self.token_sum -= n;
            self.tokens.pop_front();
        }
    }

    fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.tokens.is_empty() && self.running.is_empty()
    }
}

fn until_free(at: Instant, now: Instant) -> Duration {
    (at + WINDOW).saturating_duration_since(now)
}

#[derive(Default)]
pub(super) struct LocalWindows {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl LocalWindows {
    /// Checks every bucket of `scopes` and records the call in all of them, or in none.
    pub fn admit(&self, scopes: &[(&str, RateLimits)], id: Uuid, tokens: u64, now: Instant) -> Verdict {
        let mut map = self.buckets.lock().expect("rate limiter lock");
        // (is tokens, limit, used, reset) of every bucket, for the headers once the verdict is known.
        let mut seen: Vec<(bool, u64, u64, Duration)> = Vec::new();
        let mut blocked: Option<Blocked> = None;
        for (index, (name, limits)) in scopes.iter().enumerate() {
            let bucket = map.entry((*name).to_owned()).or_default();
            bucket.prune(now);
            if let Some(rpm) = limits.requests_per_minute.map(u64::from) {
                let used = bucket.requests.len() as u64;
                let mut reset = bucket.requests.front().map_or(WINDOW, |t| until_free(*t, now));
                if used + 1 > rpm {
                    reset = until_free(bucket.requests[(used - rpm) as usize], now);
                    blocked = blocked.or(Some(Blocked {
                        kind: LimitKind::Requests,
                        scope: index,
                        retry: Some(reset),
                        limit: rpm,
                    }));
                }
                seen.push((false, rpm, used, reset));
            }
            if let Some(tpm) = limits.tokens_per_minute {
                let sum = bucket.token_sum;
                let mut reset = bucket.tokens.front().map_or(WINDOW, |(t, _, _)| until_free(*t, now));
                if sum + tokens > tpm {
                    let mut retry = None;
                    if tokens <= tpm {
                        let mut freed = 0;
                        for &(t, _, n) in &bucket.tokens {
                            freed += n;
                            if sum - freed + tokens <= tpm {
                                retry = Some(until_free(t, now));
                                break;
                            }
                        }
                    }
                    reset = retry.unwrap_or(WINDOW);
                    blocked = blocked.or(Some(Blocked { kind: LimitKind::Tokens, scope: index, retry, limit: tpm }));
                }
                seen.push((true, tpm, sum, reset));
            }
            if let Some(max) = limits.max_concurrent.map(u64::from)
                && bucket.running.len() as u64 + 1 > max
            {
                let retry = Some(Duration::from_secs(1));
                blocked = blocked.or(Some(Blocked { kind: LimitKind::Concurrent, scope: index, retry, limit: max }));
            }
        }
        let mut status = RateStatus::default();
        for (is_tokens, limit, used, reset) in seen {
            // A refused call is recorded nowhere: what is left does not count it.
            let charge = match (blocked, is_tokens) {
                (Some(_), _) => 0,
                (None, true) => tokens,
                (None, false) => 1,
            };
            let remaining = limit.saturating_sub(used + charge);
            let slot = if is_tokens { &mut status.tokens } else { &mut status.requests };
            *slot = Window::tighter(*slot, limit, remaining, reset);
        }
        if blocked.is_none() {
            for (name, limits) in scopes {
                let bucket = map.get_mut(*name).expect("bucket made above");
                if limits.requests_per_minute.is_some() {
                    bucket.requests.push_back(now);
                }
                if limits.tokens_per_minute.is_some() {
                    bucket.tokens.push_back((now, id, tokens));
                    bucket.token_sum += tokens;
                }
                if limits.max_concurrent.is_some() {
                    bucket.running.insert(id);
                }
            }
        }
        Verdict { blocked, status }
    }

    /// Corrects the call's tokens to `actual` (while still in the window) and ends its lease.
    pub fn settle(&self, scopes: &[String], id: Uuid, actual: u64) {
        let mut map = self.buckets.lock().expect("rate limiter lock");
        for name in scopes {
            let Some(bucket) = map.get_mut(name) else { continue };
            bucket.running.remove(&id);
            if let Some(entry) = bucket.tokens.iter_mut().find(|(_, call, _)| *call == id) {
                bucket.token_sum = bucket.token_sum - entry.2 + actual;
                entry.2 = actual;
            }
        }
    }

    /// Forgets buckets with nothing left in them (keys that stopped calling).
    pub fn sweep(&self, now: Instant) {
        let mut map = self.buckets.lock().expect("rate limiter lock");
        map.retain(|_, bucket| {
            bucket.prune(now);
            !bucket.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rpm: Option<u32>, tpm: Option<u64>, conc: Option<u32>) -> RateLimits {
        RateLimits { requests_per_minute: rpm, tokens_per_minute: tpm, max_concurrent: conc }
    }

    #[test]
    fn a_sliding_window_admits_exactly_the_limit_in_any_minute() {
        let local = LocalWindows::default();
        let t0 = Instant::now();
        let scope = [("k", limits(Some(3), None, None))];
        let served = (0..5).filter(|_| local.admit(&scope, Uuid::new_v4(), 1, t0).blocked.is_none()).count();
        assert_eq!(served, 3);
        let v = local.admit(&scope, Uuid::new_v4(), 1, t0 + Duration::from_secs(30));
        let blocked = v.blocked.expect("still within the minute");
        assert_eq!((blocked.kind, blocked.retry), (LimitKind::Requests, Some(Duration::from_secs(30))));
        assert!(local.admit(&scope, Uuid::new_v4(), 1, t0 + WINDOW).blocked.is_none(), "the first left the window");
    }

    #[test]
    fn tokens_are_charged_at_the_worst_case_and_corrected_at_settlement() {
        let local = LocalWindows::default();
        let now = Instant::now();
        let scope = [("k", limits(None, Some(100), None))];
        let first = Uuid::new_v4();
        assert!(local.admit(&scope, first, 80, now).blocked.is_none());
        let v = local.admit(&scope, Uuid::new_v4(), 80, now);
        assert_eq!(v.blocked.map(|b| b.kind), Some(LimitKind::Tokens));
        local.settle(&["k".to_owned()], first, 10);
        let v = local.admit(&scope, Uuid::new_v4(), 80, now);
        assert!(v.blocked.is_none());
        assert_eq!(v.status.tokens.map(|w| w.remaining), Some(10));
        let never = local.admit(&scope, Uuid::new_v4(), 101, now).blocked.expect("above the limit");
        assert_eq!(never.retry, None, "a call above the whole limit never fits");
    }

    #[test]
    fn all_or_nothing_and_concurrency_is_released_at_settlement() {
        let local = LocalWindows::default();
        let now = Instant::now();
        let scopes = [("k", limits(Some(10), None, Some(1))), ("u", limits(Some(10), None, None))];
        let a = Uuid::new_v4();
        assert!(local.admit(&scopes, a, 1, now).blocked.is_none());
        let v = local.admit(&scopes, Uuid::new_v4(), 1, now);
        assert_eq!(v.blocked.map(|b| (b.kind, b.scope)), Some((LimitKind::Concurrent, 0)));
        assert_eq!(v.status.requests.map(|w| w.remaining), Some(9), "the refused call was not recorded anywhere");
        local.settle(&["k".to_owned(), "u".to_owned()], a, 0);
        assert!(local.admit(&scopes, Uuid::new_v4(), 1, now).blocked.is_none());
        local.sweep(now + WINDOW * 2);
    }
}
