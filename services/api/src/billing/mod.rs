//! Exact prepaid billing (docs/billing.md): a hold of the call's worst case before any upstream
//! call, settlement at the reported usage after it, and nothing lost on the way: settlements are
//! journaled on local disk before the database write, bad rows are dead-lettered, a dead
//! process's journal and leases are resolved by the next one on the same volume, and expired
//! leases by any replica.

pub mod check;
pub mod journal;
pub mod leases;
pub mod ledger;
pub mod routes;
pub mod settle;

use std::{path::PathBuf, sync::Arc, time::Duration};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::{sync::watch, task::JoinHandle};
use uuid::Uuid;

pub use ledger::{CreditKind, Transaction, fmt_usd};

use self::{
    journal::Journal,
    leases::{Credits, LeaseConfig, UserCredit},
    settle::SettleWriter,
};
use crate::telemetry::metrics as m;

/// One finished call to bill: a journal line and a usage row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settlement {
    pub call_id: Uuid,
    pub user_id: Uuid,
    /// The replica whose lease admitted the call.
    pub replica_id: Uuid,
    pub model: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: Decimal,
    pub estimated: bool,
    /// `over_cap`, `clamped` (see the migration).
    pub flags: Vec<String>,
    pub request_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("insufficient credit: needed {needed}, available {available}")]
    Insufficient { needed: Decimal, available: Decimal },
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
}

#[derive(Clone, Debug)]
pub struct BillingConfig {
    pub journal_dir: PathBuf,
    pub lease: LeaseConfig,
    /// How often the ledger self-check runs (None: never).
    pub check_interval: Option<Duration>,
}

/// The billing engine shared by every call (cheap to clone).
#[derive(Clone)]
pub struct Billing {
    inner: Arc<Inner>,
}

/// The settlement writer (it returns whether it drained, and the journal) and lease maintenance.
type Tasks = (JoinHandle<(bool, Journal)>, JoinHandle<()>);

struct Inner {
    db: PgPool,
    credits: Arc<Credits>,
    writer: SettleWriter,
    stop: watch::Sender<bool>,
    tasks: std::sync::Mutex<Option<Tasks>>,
}

impl Billing {
    /// Adopts the journals of dead predecessors (writes them, then releases their leases),
    /// then starts the settlement writer and the lease maintenance.
    pub async fn start(db: PgPool, cfg: BillingConfig) -> anyhow::Result<Self> {
        let replica_id = Uuid::new_v4();
        let root = cfg.journal_dir.clone();
        let (journal, orphans) = tokio::task::spawn_blocking(move || Journal::open(&root, replica_id)).await??;
        for orphan in orphans {
            adopt(&db, orphan).await?;
        }
        let credits = Arc::new(Credits::new(db.clone(), replica_id, cfg.lease.clone()));
        let (stop, stop_rx) = watch::channel(false);
        let (writer, writer_task) = settle::spawn(db.clone(), journal, credits.clone(), stop_rx.clone());
        let maintenance = tokio::spawn(maintain(db.clone(), credits.clone(), cfg, stop_rx));
        m::zero_billing_series();
        tracing::info!(target: "pr.billing", replica_id = %replica_id, "billing started");
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                credits,
                writer,
                stop,
                tasks: std::sync::Mutex::new(Some((writer_task, maintenance))),
            }),
        })
    }

    pub fn replica_id(&self) -> Uuid {
        self.inner.credits.replica_id
    }

    /// Holds the worst case of one call; the hold is released when dropped unsettled.
    pub async fn hold(&self, user_id: Uuid, amount: Decimal) -> Result<Hold, HoldError> {
        let user = self.inner.credits.reserve(user_id, amount).await?;
        Ok(Hold { billing: self.clone(), user, user_id, amount, done: false })
    }

    /// (balance, held, available) for the balance endpoint: the leases of other replicas and this
    /// replica's holds and unwritten settlements count as held.
    pub async fn balance(&self, user_id: Uuid) -> Result<(Decimal, Decimal, Decimal), sqlx::Error> {
        let (balance, held_db) = ledger::balance(&self.inner.db, user_id).await?;
        let (own_lease, own_used) = self.inner.credits.local_view(user_id);
        let held = (held_db - own_lease).max(Decimal::ZERO) + own_used;
        Ok((balance, held, balance - held))
    }

    /// Calls in flight on this replica.
    pub fn calls_in_flight(&self) -> usize {
        self.inner.credits.calls()
    }

    /// Shutdown: waits (until `deadline`) for the calls in flight, writes their usage, then
    /// returns this replica's leases. Whatever cannot be written in time stays in the journal,
    /// and the leases stay with it, for the next start on this volume (or expiry) to resolve.
    pub async fn shutdown(&self, deadline: tokio::time::Instant) {
        let credits = &self.inner.credits;
        if tokio::time::timeout_at(deadline, credits.wait_idle()).await.is_err() {
            tracing::warn!(target: "pr.billing", calls = credits.calls(), "shutdown: calls still in flight at the end of the grace period; their holds stay leased until the next start or expiry");
        }
        let _ = self.inner.stop.send(true);
        // The writer gets a few seconds even when the requests used up the grace period.
        let deadline = deadline.max(tokio::time::Instant::now() + Duration::from_secs(3));
        let Some((writer, maintenance)) = self.inner.tasks.lock().expect("tasks lock").take() else { return };
        maintenance.abort();
        let abort = writer.abort_handle();
        match tokio::time::timeout_at(deadline, writer).await {
            Ok(Ok((true, journal))) if credits.calls() == 0 => match credits.release_all().await {
                Ok(n) => {
                    let _ = tokio::task::spawn_blocking(move || journal.remove()).await;
                    tracing::info!(target: "pr.billing", leases_released = n, "billing stopped cleanly");
                }
                Err(e) => {
                    tracing::warn!(target: "pr.billing", error = %e, "shutdown: leases not released; they expire")
                }
            },
            Ok(_) => tracing::warn!(target: "pr.billing", "shutdown: billing journal kept for the next start"),
            Err(_) => {
                abort.abort();
                tracing::warn!(target: "pr.billing", backlog = self.inner.writer.backlog(),
                    "shutdown: the database did not take the usage in time; it stays in the journal for the next start");
            }
        }
    }
}

/// Writes a dead replica's journal, then releases its leases (in that order: its usage is
/// covered by those leases until it is in the ledger), then deletes its folder.
async fn adopt(db: &PgPool, orphan: journal::Orphan) -> anyhow::Result<()> {
    if orphan.torn_lines > 0 {
        tracing::warn!(target: "pr.billing", replica_id = %orphan.replica_id, lines = orphan.torn_lines,
            "journal lines torn by a crash were skipped");
    }
    let mut rows = orphan.entries.clone();
    dedup(&mut rows);
    let mut written = 0;
    for chunk in rows.chunks(512) {
        written += settle::write_batch(db, chunk).await?.written.len();
    }
    let released = leases::release_replica(db, orphan.replica_id).await?;
    tracing::info!(target: "pr.billing", replica_id = %orphan.replica_id, entries = orphan.entries.len(),
        written, leases_released = released, "adopted the billing journal of a stopped replica");
    let _ = orphan.remove();
    Ok(())
}

fn dedup(rows: &mut Vec<Settlement>) {
    let mut seen = std::collections::HashSet::new();
    rows.retain(|r| seen.insert(r.call_id));
}

/// One call's hold. `settle` bills it; dropping it unsettled (a failed call) releases it.
pub struct Hold {
    billing: Billing,
    user: Arc<UserCredit>,
    user_id: Uuid,
    amount: Decimal,
    done: bool,
}

impl Hold {
    pub fn amount(&self) -> Decimal {
        self.amount
    }

    /// Bills the call: the settlement is journaled and written by the writer; the response
    /// does not wait for it.
    pub fn settle(mut self, mut s: Settlement) {
        self.done = true;
        s.user_id = self.user_id;
        s.replica_id = self.billing.replica_id();
        self.billing.inner.credits.finish(&self.user, self.amount, s.cost_usd);
        self.billing.inner.writer.submit(s);
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.done {
            self.billing.inner.credits.release(&self.user, self.amount);
        }
    }
}

/// Renews leases, returns idle ones, releases expired ones of any replica, runs the ledger
/// self-check, and keeps the gauges current.
async fn maintain(db: PgPool, credits: Arc<Credits>, cfg: BillingConfig, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let renew_every = (cfg.lease.ttl / 4).max(Duration::from_millis(500));
    let mut last_renew = tokio::time::Instant::now();
    let mut last_expiry = tokio::time::Instant::now() - Duration::from_secs(3600);
    let mut last_check = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let t = credits.totals();
        m::set_credit_gauges(t.calls, t.held, t.leased);
        if last_renew.elapsed() >= renew_every {
            match credits.renew_all().await {
                Ok(()) => last_renew = tokio::time::Instant::now(),
                Err(e) => tracing::warn!(target: "pr.billing", error = %e, "renewing credit leases failed"),
            }
        }
        credits.return_idle().await;
        if last_expiry.elapsed() >= Duration::from_secs(5) {
            last_expiry = tokio::time::Instant::now();
            // A replica that died on this volume and was not restarted: its journal is written
            // here before its leases can expire (and be spent again by others).
            let (root, own) = (cfg.journal_dir.clone(), credits.replica_id);
            if let Ok(Ok(orphans)) = tokio::task::spawn_blocking(move || journal::orphans(&root, own)).await {
                for orphan in orphans {
                    if let Err(e) = adopt(&db, orphan).await {
                        tracing::warn!(target: "pr.billing", error = %e, "adopting a stopped replica's journal failed; retried");
                    }
                }
            }
            match leases::release_expired(&db).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(target: "pr.billing", leases = n, "released expired credit leases"),
                Err(e) => tracing::debug!(error = %e, "releasing expired leases failed"),
            }
        }
        if let Some(every) = cfg.check_interval
            && last_check.elapsed() >= every
        {
            last_check = tokio::time::Instant::now();
            // In a task of its own: a slow check on a large ledger must not delay lease renewal.
            let db = db.clone();
            tokio::spawn(async move {
                match check::run(&db).await {
                    Ok(report) => report.count(),
                    Err(e) => tracing::warn!(target: "pr.billing", error = %e, "ledger self-check could not run"),
                }
            });
        }
    }
}
