//! Three API replicas behind nginx, one of them killed (SIGKILL, `docker kill`) while clients
//! send completions through nginx: nginx routes around it, every request gets an answer, and
//! the ledger stays exact once the killed replica is back (Docker's restart policy in compose;
//! here started again by the test) and has settled what its journal held: the usage rows, the
//! balance change and what the clients were served (the 200s' `usage.cost_usd`) are the same
//! amount, each call billed once. Calls in flight on the killed replica are answered by nginx
//! with 502 and billed only if the client was served.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use privaterouter_hardening::net::Request;
use privaterouter_tests::random_hex;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use testcontainers::runners::AsyncRunner;

use crate::{
    harness::{Kit, Stack, eventually},
    standins,
};

const REPLICAS: usize = 3;
const CLIENTS: usize = 4;
const TOPUP: &str = "5";

/// What one client saw: the served calls' costs, and every status.
#[derive(Default)]
struct Seen {
    served: Vec<Decimal>,
    statuses: Vec<u16>,
}

/// Sends completions (a fast and a two-second model in turn, so some are always in flight)
/// until `stop`; a request that gets no HTTP answer at all fails the test.
async fn client(stack: Arc<Stack>, key: String, stop: Arc<AtomicBool>, served: Arc<AtomicUsize>) -> Seen {
    let mut seen = Seen::default();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let model = if n.is_multiple_of(3) { "twosec" } else { "echo" };
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi there"}]});
        let req = Request::post_json("/v1/chat/completions", &body).header("Authorization", format!("Bearer {key}"));
        let r = stack.https("api", req).await.unwrap_or_else(|e| panic!("a completion got no answer: {e}"));
        seen.statuses.push(r.status);
        if r.status == 200 {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            seen.served.push(v["usage"]["cost_usd"].as_str().expect("cost_usd").parse().unwrap());
            served.fetch_add(1, Ordering::Relaxed);
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_under_load_loses_no_answer_and_no_billing() {
    let started = Instant::now();
    let mut kit = Kit::new();
    kit.api_replicas = REPLICAS;
    // As compose runs them: the replicas share Redis (limits and revocations; billing never uses it).
    kit.redis = true;
    standins::serve_through_upstream(&mut kit);
    // The stand-in first: it creates the stack's network, which the stack then joins.
    let _upstream = standins::upstream(&kit).start().await.expect("the upstream stand-in starts");
    let stack = Arc::new(Stack::start(kit).await);

    let admin = stack.api_cli(&["admin", "create-user", "--email", "admin@replicas.test", "--admin"]).await;
    let user = stack.api_cli(&["admin", "create-user", "--email", "user@replicas.test"]).await;
    let (admin_key, user_id) = (admin["api_key"].as_str().unwrap(), user["user_id"].as_str().unwrap().to_owned());
    let key = user["api_key"].as_str().unwrap().to_owned();
    let credit = json!({"kind": "topup", "amount_usd": TOPUP, "reason": "replicas"});
    let req = Request::post_json(format!("/api/admin/users/{user_id}/credits"), &credit)
        .header("Authorization", format!("Bearer {admin_key}"))
        .header("Idempotency-Key", random_hex(8));
    let r = stack.https("api", req).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.text());

    // Load from several clients; once calls are being served, the second replica is killed.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> =
        (0..CLIENTS).map(|_| tokio::spawn(client(stack.clone(), key.clone(), stop.clone(), served.clone()))).collect();
    let at_least = |n: usize| {
        let served = served.clone();
        move || {
            let served = served.clone();
            async move {
                let now = served.load(Ordering::Relaxed);
                if now >= n { Ok(now) } else { Err(format!("{now} served")) }
            }
        }
    };
    let before_kill = eventually("calls served before the kill", Duration::from_secs(60), at_least(20)).await;
    let victim = stack.more_apis[0].id().to_owned();
    let out = std::process::Command::new("docker").args(["kill", "--signal", "KILL", &victim]).output().unwrap();
    assert!(out.status.success(), "docker kill: {}", String::from_utf8_lossy(&out.stderr));
    // nginx routes around it: the others keep serving.
    eventually("calls served after the kill", Duration::from_secs(60), at_least(before_kill + 40)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Seen::default();
    for c in clients {
        let s = c.await.expect("a client task");
        seen.served.extend(s.served);
        seen.statuses.extend(s.statuses);
    }
    let others: Vec<u16> = seen.statuses.iter().copied().filter(|s| !matches!(s, 200 | 502)).collect();
    assert!(others.is_empty(), "answers other than 200, or 502 for a call cut off by the kill: {others:?}");
    let cut_off = seen.statuses.iter().filter(|s| **s == 502).count();
    assert!(cut_off <= CLIENTS, "{cut_off} calls failed; at most the {CLIENTS} in flight at the kill may");

    // The killed replica comes back (compose's restart policy does this) and settles its journal.
    stack.more_apis[0].start().await.expect("the killed replica starts again");
    let client_total: Decimal = seen.served.iter().sum();
    let query = format!(
        "SELECT (SELECT count(*) FROM credit_transactions WHERE user_id = '{user_id}' AND kind = 'usage') || '|' || \
                (SELECT coalesce(-sum(amount_usd), 0) FROM credit_transactions WHERE user_id = '{user_id}' AND kind = 'usage') || '|' || \
                (SELECT {TOPUP} - balance_usd FROM user_balances WHERE user_id = '{user_id}')"
    );
    let want = (seen.served.len(), client_total, client_total);
    let stack2 = stack.clone();
    let ledger = eventually("the ledger holds exactly what the clients were served", Duration::from_secs(60), || {
        let (stack, query) = (stack2.clone(), query.clone());
        async move {
            let row = stack.sql(&query).await;
            let parts: Vec<&str> = row.split('|').collect();
            let got: (usize, Decimal, Decimal) =
                (parts[0].parse().unwrap(), parts[1].parse().unwrap(), parts[2].parse().unwrap());
            if got == want {
                Ok(got)
            } else {
                Err(format!("usage rows, their sum, balance change: {got:?}, want {want:?}"))
            }
        }
    })
    .await;
    eprintln!(
        "{} calls served ({cut_off} cut off by the kill), billed {} exactly, in {:.1} s",
        ledger.0,
        ledger.1,
        started.elapsed().as_secs_f64()
    );
}
