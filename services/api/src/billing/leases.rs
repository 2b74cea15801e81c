//! Credit leases: how a call's worst case is held without a database round trip per call.
//!
//! Each replica leases a slice of a user's available credit (`credit_leases`, one row per user
//! and replica, summed in `user_balances.held_usd` by the same statement) and admits calls
//! against it in memory: a call is admitted only if the lease minus the holds of calls in flight
//! minus the settlements not yet written covers its worst case. When it does not, one statement
//! extends the lease, atomically against every other replica, by a whole number of that worst
//! case (so slices never fragment what a user can spend). Settlements shrink the lease in the
//! statement that writes the usage; an idle user's lease is returned; every lease is renewed
//! while its replica lives and released by any replica once it has expired.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rust_decimal::Decimal;
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{HoldError, Settlement, settle::BatchOutcome};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// A lease extension reserves up to this many worst cases of the call that needed it.
    pub calls: u32,
    /// A lease not renewed for this long may be released by any replica.
    pub ttl: Duration,
    /// A user's lease is returned after this long without calls.
    pub idle: Duration,
}

#[derive(Default)]
pub struct UserCredit {
    local: Mutex<Local>,
    /// Serialises this replica's lease changes for the user (extend, return).
    op: tokio::sync::Mutex<()>,
}

#[derive(Default, Debug)]
struct Local {
    /// This replica's lease as the database has it (never more).
    lease: Decimal,
    /// Worst cases of the calls in flight.
    holds: Decimal,
    /// Costs of finished calls whose usage row is not written yet (still inside the lease).
    pending: Decimal,
    calls: u32,
    last_used: Option<Instant>,
    /// When the database last confirmed the lease; an older lease admits nothing.
    renewed: Option<Instant>,
}

impl Local {
    fn free(&self) -> Decimal {
        self.lease - self.holds - self.pending
    }
}

pub struct Credits {
    db: PgPool,
    pub replica_id: Uuid,
    cfg: LeaseConfig,
    users: Mutex<HashMap<Uuid, Arc<UserCredit>>>,
    calls: AtomicUsize,
    idle: Notify,
}

/// Totals for the gauges.
#[derive(Debug, Default)]
pub struct Totals {
    pub calls: usize,
    pub held: Decimal,
    pub leased: Decimal,
}

impl Credits {
    pub fn new(db: PgPool, replica_id: Uuid, cfg: LeaseConfig) -> Self {
        Self { db, replica_id, cfg, users: Mutex::default(), calls: AtomicUsize::new(0), idle: Notify::new() }
    }

    fn user(&self, user_id: Uuid) -> Arc<UserCredit> {
        self.users.lock().expect("credits lock").entry(user_id).or_default().clone()
    }

    fn fresh(&self, local: &Local) -> bool {
        local.renewed.is_some_and(|t| t.elapsed() < self.cfg.ttl / 2)
    }

    fn try_admit(&self, user: &UserCredit, amount: Decimal) -> bool {
        let mut l = user.local.lock().expect("credit lock");
        if amount.is_zero() || (self.fresh(&l) && l.free() >= amount) {
            l.holds += amount;
            l.calls += 1;
            l.last_used = Some(Instant::now());
            self.calls.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Holds `amount` for one call of `user_id`: from this replica's lease when it covers it
    /// (no database round trip), else after extending the lease.
    pub async fn reserve(&self, user_id: Uuid, amount: Decimal) -> Result<Arc<UserCredit>, HoldError> {
        let user = self.user(user_id);
        if self.try_admit(&user, amount) {
            return Ok(user);
        }
        let op_owner = user.clone();
        let _op = op_owner.op.lock().await;
        if self.try_admit(&user, amount) {
            return Ok(user);
        }
        let free = user.local.lock().expect("credit lock").free();
        // Whole worst cases only; more than one when settlements beyond the lease made it
        // negative; none when the lease has room but was not confirmed lately (then the
        // statement only renews it).
        let min_units = if free >= amount {
            Decimal::ZERO
        } else if free >= Decimal::ZERO {
            Decimal::ONE
        } else {
            ((amount - free) / amount).ceil()
        };
        let granted: Option<(Decimal, bool)> = sqlx::query_as(
            "WITH cur AS ( \
               SELECT user_id, $3::numeric * GREATEST($5::numeric, LEAST($4::numeric, floor((balance_usd - held_usd) / $3::numeric))) AS g \
               FROM user_balances WHERE user_id = $1 AND balance_usd - held_usd >= $3::numeric * $5::numeric FOR UPDATE), \
             upd AS ( \
               UPDATE user_balances b SET held_usd = b.held_usd + cur.g, updated_at = now() FROM cur \
               WHERE b.user_id = cur.user_id RETURNING cur.g), \
             ins AS ( \
               INSERT INTO credit_leases (user_id, replica_id, amount_usd, expires_at) \
               SELECT $1, $2, g, now() + make_interval(secs => $6) FROM upd \
               ON CONFLICT (user_id, replica_id) DO UPDATE SET amount_usd = credit_leases.amount_usd + EXCLUDED.amount_usd, \
                 expires_at = EXCLUDED.expires_at, updated_at = now() \
               RETURNING amount_usd, xmax = 0 AS fresh) \
             SELECT upd.g, ins.fresh FROM upd, ins",
        )
        .bind(user_id)
        .bind(self.replica_id)
        .bind(amount)
        .bind(Decimal::from(self.cfg.calls.max(1)))
        .bind(min_units)
        .bind(self.cfg.ttl.as_secs_f64())
        .fetch_optional(&self.db)
        .await
        .map_err(HoldError::Database)?;
        if let Some((granted, fresh)) = granted {
            {
                let mut l = user.local.lock().expect("credit lock");
                // Deltas, so that settlements committed around this statement and applied in any
                // order leave the local lease equal to the database's. A fresh row means the
                // previous lease was released meanwhile (expired): only the grant counts.
                if fresh {
                    l.lease = granted;
                } else {
                    l.lease += granted;
                }
                l.renewed = Some(Instant::now());
            }
            if self.try_admit(&user, amount) {
                return Ok(user);
            }
        }
        Err(HoldError::Insufficient { needed: amount, available: self.available_after_refusal(user_id, &user).await })
    }

    async fn available_after_refusal(&self, user_id: Uuid, user: &UserCredit) -> Decimal {
        let db: Decimal = sqlx::query_scalar("SELECT balance_usd - held_usd FROM user_balances WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.db)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        db + user.local.lock().expect("credit lock").free().max(Decimal::ZERO)
    }

    /// A call ended without usage to bill: its hold is released.
    pub fn release(&self, user: &UserCredit, amount: Decimal) {
        {
            let mut l = user.local.lock().expect("credit lock");
            l.holds -= amount;
            l.calls -= 1;
            l.last_used = Some(Instant::now());
        }
        self.call_ended();
    }

    /// A call ended with `cost` to bill: its hold becomes a pending settlement.
    pub fn finish(&self, user: &UserCredit, amount: Decimal, cost: Decimal) {
        {
            let mut l = user.local.lock().expect("credit lock");
            l.holds -= amount;
            l.pending += cost;
            l.calls -= 1;
            l.last_used = Some(Instant::now());
        }
        self.call_ended();
    }

    fn call_ended(&self) {
        if self.calls.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Calls in flight on this replica.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Acquire)
    }

    /// Waits until no call is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.calls() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The writer wrote (or set aside) these settlements of this process.
    pub fn settled(&self, done: &[Settlement], outcome: &BatchOutcome) {
        let users = self.users.lock().expect("credits lock");
        let duplicates: std::collections::HashSet<Uuid> = outcome.duplicates.iter().copied().collect();
        for s in done {
            if let Some(u) = users.get(&s.user_id) {
                let mut l = u.local.lock().expect("credit lock");
                l.pending -= s.cost_usd;
                // Already in the ledger: an earlier attempt committed (its answer was lost) and
                // shrank the lease then. Shrink the local lease too (never more than the database).
                if duplicates.contains(&s.call_id) && s.replica_id == self.replica_id {
                    l.lease = (l.lease - s.cost_usd).max(Decimal::ZERO);
                }
            }
        }
        for ((user_id, replica_id), released) in &outcome.released {
            if *replica_id != self.replica_id {
                continue;
            }
            if let Some(u) = users.get(user_id) {
                let mut l = u.local.lock().expect("credit lock");
                l.lease = (l.lease - released).max(Decimal::ZERO);
            }
        }
    }

    /// This replica's unused credit for a user (for the balance endpoint): lease − holds − pending.
    pub fn local_view(&self, user_id: Uuid) -> (Decimal, Decimal) {
        match self.users.lock().expect("credits lock").get(&user_id) {
            Some(u) => {
                let l = u.local.lock().expect("credit lock");
                (l.lease, l.holds + l.pending)
            }
            None => (Decimal::ZERO, Decimal::ZERO),
        }
    }

    pub fn totals(&self) -> Totals {
        let users = self.users.lock().expect("credits lock");
        let mut t = Totals::default();
        for u in users.values() {
            let l = u.local.lock().expect("credit lock");
            t.calls += l.calls as usize;
            t.held += l.holds;
            t.leased += l.lease;
        }
        t
    }

    /// Keeps this replica's leases from expiring; a lease the database no longer has (released
    /// by another replica after expiry) is dropped here too.
    pub async fn renew_all(&self) -> Result<(), sqlx::Error> {
        let started = Instant::now();
        let rows: Vec<(Uuid, Decimal)> = sqlx::query_as(
            "UPDATE credit_leases SET expires_at = now() + make_interval(secs => $2), updated_at = now() \
             WHERE replica_id = $1 RETURNING user_id, amount_usd",
        )
        .bind(self.replica_id)
        .bind(self.cfg.ttl.as_secs_f64())
        .fetch_all(&self.db)
        .await?;
        let db: HashMap<Uuid, Decimal> = rows.into_iter().collect();
        let users = self.users.lock().expect("credits lock");
        for (id, u) in users.iter() {
            let mut l = u.local.lock().expect("credit lock");
            if l.renewed.is_some_and(|t| t > started) {
                continue; // extended meanwhile: its own statement confirmed it
            }
            match db.get(id) {
                Some(amount) => {
                    l.lease = l.lease.min(*amount);
                    l.renewed = Some(started);
                }
                None if l.lease > Decimal::ZERO => {
                    tracing::warn!(target: "pr.billing", user_id = %id, "a credit lease expired and was released elsewhere");
                    l.lease = Decimal::ZERO;
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Returns the leases of users without calls for `idle`, and forgets users with nothing left.
    pub async fn return_idle(&self) {
        let candidates: Vec<(Uuid, Arc<UserCredit>)> = {
            let mut users = self.users.lock().expect("credits lock");
            users.retain(|_, u| {
                let l = u.local.lock().expect("credit lock");
                let empty = l.lease.is_zero() && l.calls == 0 && l.pending.is_zero() && l.holds.is_zero();
                !(empty && Arc::strong_count(u) == 1)
            });
            users
                .iter()
                .filter(|(_, u)| {
                    let l = u.local.lock().expect("credit lock");
                    l.calls == 0
                        && l.pending.is_zero()
                        && l.lease > Decimal::ZERO
                        && l.last_used.is_none_or(|t| t.elapsed() >= self.cfg.idle)
                })
                .map(|(id, u)| (*id, u.clone()))
                .collect()
        };
        for (user_id, user) in candidates {
            let Ok(_op) = user.op.try_lock() else { continue };
            let lease = {
                let mut l = user.local.lock().expect("credit lock");
                if l.calls != 0 || !l.pending.is_zero() {
                    continue;
                }
                std::mem::take(&mut l.lease)
            };
            let result = sqlx::query(
                "WITH locked AS (SELECT user_id FROM user_balances WHERE user_id = $1 FOR UPDATE), \
                 gone AS (DELETE FROM credit_leases WHERE user_id = (SELECT user_id FROM locked) AND replica_id = $2 \
                   RETURNING user_id, amount_usd) \
                 UPDATE user_balances b SET held_usd = b.held_usd - gone.amount_usd, updated_at = now() FROM gone \
                 WHERE b.user_id = gone.user_id",
            )
            .bind(user_id)
            .bind(self.replica_id)
            .execute(&self.db)
            .await;
            if let Err(e) = result {
                // Not restored: the DELETE may have committed with its answer lost, and a lease
                // counted here but gone there would admit calls nobody reserved. If the row is
                // still there it stays held (safe) until shutdown or expiry releases it.
                tracing::warn!(target: "pr.billing", error = %e, user_id = %user_id, %lease,
                    "returning an idle credit lease failed; it is no longer used here and expires");
            }
        }
    }

    /// Releases every lease of this replica (clean shutdown, nothing pending).
    pub async fn release_all(&self) -> Result<u64, sqlx::Error> {
        let n = release_replica(&self.db, self.replica_id).await?;
        for u in self.users.lock().expect("credits lock").values() {
            u.local.lock().expect("credit lock").lease = Decimal::ZERO;
        }
        Ok(n)
    }
}

/// Releases every lease of `replica_id`: a clean shutdown, or a dead predecessor whose journal
/// this process adopted (after writing that journal). Returns the number of leases released.
pub async fn release_replica(db: &PgPool, replica_id: Uuid) -> Result<u64, sqlx::Error> {
    release(db, Some(replica_id)).await
}

/// Releases every expired lease, whoever held it (a replica that died and never came back).
pub async fn release_expired(db: &PgPool) -> Result<u64, sqlx::Error> {
    release(db, None).await
}

/// Deletes the leases of `replica_id` (None: every expired lease) and takes them off `held_usd`,
/// locking the balance rows first like every other lease statement. The condition is repeated in
/// the DELETE so that a lease renewed meanwhile is re-checked on its new row, and kept.
async fn release(db: &PgPool, replica_id: Option<Uuid>) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "WITH locked AS (SELECT user_id FROM user_balances WHERE user_id IN (SELECT user_id FROM credit_leases \
           WHERE CASE WHEN $1::uuid IS NULL THEN expires_at < now() ELSE replica_id = $1 END) \
           ORDER BY user_id FOR UPDATE), \
         gone AS (DELETE FROM credit_leases \
           WHERE CASE WHEN $1::uuid IS NULL THEN expires_at < now() ELSE replica_id = $1 END \
             AND user_id IN (SELECT user_id FROM locked) \
           RETURNING user_id, amount_usd), \
         per AS (SELECT user_id, sum(amount_usd) AS s FROM gone GROUP BY user_id), \
         upd AS (UPDATE user_balances b SET held_usd = b.held_usd - per.s, updated_at = now() FROM per \
                 WHERE b.user_id = per.user_id RETURNING 1) \
         SELECT count(*) FROM gone",
    )
    .bind(replica_id)
    .fetch_one(db)
    .await?;
    Ok(n as u64)
}
