//! Settlement: finished calls become usage rows. A journal stage appends each batch to the local
//! journal (fsync) as it arrives; a write stage writes it in one statement that inserts the rows
//! (each call id at most once, ever),
//! debits the balances and shrinks the leases the calls were admitted against. A batch that the
//! database refuses is retried row by row; a row that can never be written goes to the
//! dead-letter table with its reason. While the database is unreachable the batch stays in the
//! journal and is retried with backoff. Responses never wait for any of this: the hold taken
//! before the call already protects the balance.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rust_decimal::Decimal;
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Settlement, journal::Journal, leases::Credits};
use crate::telemetry::metrics as m;

/// Most rows written in one statement.
const MAX_BATCH: usize = 2048;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What one batch write did, per call id.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Written now.
    pub written: Vec<Uuid>,
    /// Already in the ledger (a replay): nothing changed.
    pub duplicates: Vec<Uuid>,
    /// Set aside in `billing_dead_letters`.
    pub dead: Vec<Uuid>,
    /// Lease credit given back per (user, replica) by the rows written now.
    pub released: HashMap<(Uuid, Uuid), Decimal>,
}

/// A database error that no retry of the same row can fix (a constraint or a value the ledger
/// refuses), as opposed to the database being away.
fn is_permanent(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
}

/// Writes `rows` (call ids unique): in one statement, or, when the database refuses the
/// statement because of a row, row by row with the bad rows dead-lettered. An `Err` means the
/// database is unreachable or failing: nothing of what is not in the outcome was written.
pub async fn write_batch(db: &PgPool, rows: &[Settlement]) -> Result<BatchOutcome, sqlx::Error> {
    match write_rows(db, rows).await {
        Ok(outcome) => Ok(outcome),
        Err(e) if is_permanent(&e) && rows.len() > 1 => {
            tracing::warn!(error = %e, rows = rows.len(), "a usage batch was refused; writing it row by row");
            let mut total = BatchOutcome::default();
            for row in rows {
                match write_rows(db, std::slice::from_ref(row)).await {
                    Ok(one) => total.merge(one),
                    Err(e) if is_permanent(&e) => {
                        dead_letter(db, row, &e.to_string()).await?;
                        total.dead.push(row.call_id);
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(total)
        }
        Err(e) if is_permanent(&e) => {
            dead_letter(db, &rows[0], &e.to_string()).await?;
            Ok(BatchOutcome { dead: vec![rows[0].call_id], ..Default::default() })
        }
        Err(e) => Err(e),
    }
}

impl BatchOutcome {
    fn merge(&mut self, other: BatchOutcome) {
        self.written.extend(other.written);
        self.duplicates.extend(other.duplicates);
        self.dead.extend(other.dead);
        for (k, v) in other.released {
            *self.released.entry(k).or_default() += v;
        }
    }
}

async fn write_rows(db: &PgPool, rows: &[Settlement]) -> Result<BatchOutcome, sqlx::Error> {
    let written: Vec<(Uuid, Uuid, Uuid, Decimal)> = sqlx::query_as(
        "WITH input AS ( \
           SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::numeric[], $4::uuid[], $5::text[], $6::int8[], $7::int8[], \
                                $8::bool[], $9::text[], $10::text[]) \
             AS t(user_id, replica_id, cost, call_id, model, input_tokens, output_tokens, estimated, request_id, flags)), \
         inserted AS ( \
           INSERT INTO credit_transactions (user_id, kind, amount_usd, reason, call_id, model, input_tokens, \
                                            output_tokens, usage_estimated, request_id, usage_flags) \
           SELECT user_id, 'usage', -cost, 'llm call', call_id, model, input_tokens, output_tokens, estimated, request_id, \
                  CASE WHEN flags = '' THEN '{}'::text[] ELSE string_to_array(flags, ',') END FROM input \
           ON CONFLICT (call_id) DO NOTHING RETURNING call_id), \
         spent AS ( \
           SELECT i.user_id, i.replica_id, sum(i.cost) AS total FROM input i JOIN inserted x USING (call_id) \
           GROUP BY i.user_id, i.replica_id), \
         locked AS ( \
           SELECT user_id FROM user_balances WHERE user_id IN (SELECT user_id FROM spent) ORDER BY user_id FOR UPDATE), \
         lease AS ( \
           SELECT l.user_id, l.replica_id, LEAST(l.amount_usd, s.total) AS released FROM credit_leases l \
           JOIN spent s ON s.user_id = l.user_id AND s.replica_id = l.replica_id \
           WHERE l.user_id IN (SELECT user_id FROM locked) FOR UPDATE OF l), \
         leased AS ( \
           UPDATE credit_leases l SET amount_usd = l.amount_usd - lease.released, updated_at = now() FROM lease \
           WHERE l.user_id = lease.user_id AND l.replica_id = lease.replica_id RETURNING l.user_id), \
         per_user AS ( \
           SELECT s.user_id, sum(s.total) AS total, coalesce(sum(lease.released), 0) AS released FROM spent s \
           LEFT JOIN lease ON lease.user_id = s.user_id AND lease.replica_id = s.replica_id GROUP BY s.user_id), \
         debited AS ( \
           UPDATE user_balances b SET balance_usd = b.balance_usd - p.total, held_usd = b.held_usd - p.released, \
                  updated_at = now() \
           FROM per_user p WHERE b.user_id = p.user_id RETURNING b.user_id) \
         SELECT i.call_id, i.user_id, i.replica_id, coalesce(lease.released, 0) FROM inserted x JOIN input i USING (call_id) \
         LEFT JOIN lease ON lease.user_id = i.user_id AND lease.replica_id = i.replica_id",
    )
    .bind(rows.iter().map(|r| r.user_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.replica_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.cost_usd).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.call_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.model.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.input_tokens).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.output_tokens).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.estimated).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.request_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.flags.join(",")).collect::<Vec<_>>())
    .fetch_all(db)
    .await?;
    let mut outcome = BatchOutcome::default();
    let ids: HashSet<Uuid> = written.iter().map(|w| w.0).collect();
    for (call_id, user_id, replica_id, released) in written {
        outcome.written.push(call_id);
        outcome.released.insert((user_id, replica_id), released);
    }
    outcome.duplicates = rows.iter().map(|r| r.call_id).filter(|id| !ids.contains(id)).collect();
    metrics::counter!(m::CREDIT_TRANSACTIONS_TOTAL, "kind" => "usage").increment(outcome.written.len() as u64);
    Ok(outcome)
}

async fn dead_letter(db: &PgPool, row: &Settlement, reason: &str) -> Result<(), sqlx::Error> {
    tracing::error!(target: "pr.billing", call_id = %row.call_id, request_id = row.request_id.as_str(), reason,
        "usage row can never be written; set aside in billing_dead_letters");
    sqlx::query(
        "INSERT INTO billing_dead_letters (call_id, user_id, payload, reason) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (call_id) DO NOTHING",
    )
    .bind(row.call_id)
    .bind(row.user_id)
    .bind(sqlx::types::Json(row))
    .bind(reason.chars().take(1000).collect::<String>())
    .execute(db)
    .await?;
    metrics::counter!(m::BILLING_DEAD_LETTERS_TOTAL).increment(1);
    Ok(())
}

/// The handle calls hand their settlement to.
#[derive(Clone)]
pub struct SettleWriter {
    tx: mpsc::UnboundedSender<Settlement>,
    /// Settlements accepted and not yet in the database (journaled or about to be).
    backlog: Arc<AtomicUsize>,
}

impl SettleWriter {
    pub fn submit(&self, s: Settlement) {
        self.backlog.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.tx.send(s) {
            // Only after shutdown has closed the writer: the call is in no journal, say so loudly.
            let s = e.0;
            self.backlog.fetch_sub(1, Ordering::Relaxed);
            tracing::error!(target: "pr.billing", call_id = %s.call_id, user_id = %s.user_id, cost = %s.cost_usd,
                request_id = s.request_id.as_str(), "usage arrived after the billing writer stopped");
        }
    }

    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }
}

/// Starts the journaler and the writer, two stages in one task. The journaler appends every
/// settlement to the journal (fsync per batch) as soon as it arrives, whatever the database is
/// doing, and hands it on; the writer writes to the database with backoff while it is away; the
/// journal is emptied whenever everything appended is in the database.
///
/// Once `stop` is set (shutdown, after the calls in flight have ended) the journaler takes what
/// is queued and closes; the task returns `(true, journal)` when the writer has nothing left. The
/// caller bounds that with its grace period and may abort it: whatever was accepted by then is
/// in the journal, for the next start to write.
pub fn spawn(
    db: PgPool,
    journal: Journal,
    credits: Arc<Credits>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (SettleWriter, tokio::task::JoinHandle<(bool, Journal)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let backlog = Arc::new(AtomicUsize::new(0));
    let writer = SettleWriter { tx, backlog: backlog.clone() };
    let (forward, journaled_rx) = mpsc::unbounded_channel();
    let progress = Arc::new(Progress::default());
    let task = tokio::spawn({
        let progress = progress.clone();
        async move {
            let (journal, all_written) = tokio::join!(
                journal_stage(journal, rx, forward, progress.clone(), stop),
                write_stage(db, credits, journaled_rx, backlog, progress),
            );
            (all_written, journal)
        }
    });
    (writer, task)
}

/// Counts shared by the two stages: the journal may be emptied when `committed == journaled`.
#[derive(Default)]
struct Progress {
    journaled: std::sync::atomic::AtomicU64,
    committed: std::sync::atomic::AtomicU64,
    wrote: tokio::sync::Notify,
}

impl Progress {
    fn pending(&self) -> usize {
        (self.journaled.load(Ordering::Acquire) - self.committed.load(Ordering::Acquire)) as usize
    }
}

async fn blocking<T: Send + 'static>(
    journal: Journal,
    f: impl FnOnce(&mut Journal) -> T + Send + 'static,
) -> (Journal, T) {
    tokio::task::spawn_blocking(move || {
        let mut j = journal;
        let r = f(&mut j);
        (j, r)
    })
    .await
    .expect("journal task does not panic")
}

async fn journal_stage(
    mut journal: Journal,
    mut rx: mpsc::UnboundedReceiver<Settlement>,
    forward: mpsc::UnboundedSender<Vec<Settlement>>,
    progress: Arc<Progress>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Journal {
    let mut dirty = false;
    let mut stopping = false;
    loop {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        if stopping {
            while let Ok(s) = rx.try_recv() {
                batch.push(s);
            }
        } else {
            tokio::select! {
                n = rx.recv_many(&mut batch, MAX_BATCH) => if n == 0 { stopping = true },
                () = progress.wrote.notified() => {}
                _ = stop.wait_for(|s| *s) => stopping = true,
            }
        }
        if !batch.is_empty() {
            let (j, (result, batch)) = blocking(journal, move |j| (j.append(&batch), batch)).await;
            journal = j;
            if let Err(e) = result {
                // The database write is still tried; only the crash safety of these rows is lost.
                tracing::error!(target: "pr.billing", error = %e, rows = batch.len(), "appending to the billing journal failed");
            }
            dirty = true;
            progress.journaled.fetch_add(batch.len() as u64, Ordering::AcqRel);
            let _ = forward.send(batch);
        }
        if dirty && progress.pending() == 0 {
            let (j, result) = blocking(journal, Journal::clear).await;
            journal = j;
            match result {
                Ok(()) => dirty = false,
                Err(e) => tracing::error!(target: "pr.billing", error = %e, "emptying the billing journal failed"),
            }
        }
        m::set_journal_pending(progress.pending());
        if stopping && rx.is_empty() {
            return journal; // dropping `forward` tells the writer that nothing more comes
        }
    }
}

async fn write_stage(
    db: PgPool,
    credits: Arc<Credits>,
    mut rx: mpsc::UnboundedReceiver<Vec<Settlement>>,
    backlog: Arc<AtomicUsize>,
    progress: Arc<Progress>,
) -> bool {
    // Journaled, not yet in the database, oldest first.
    let mut pending: Vec<Settlement> = Vec::new();
    let mut incoming = Vec::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        if pending.is_empty() {
            if rx.recv_many(&mut incoming, 64).await == 0 {
                return true;
            }
        } else {
            tokio::select! {
                _ = rx.recv_many(&mut incoming, 64) => {}
                () = tokio::time::sleep(backoff) => {}
            }
        }
        pending.extend(incoming.drain(..).flatten());
        while !pending.is_empty() {
            let n = pending.len().min(MAX_BATCH);
            match write_batch(&db, &pending[..n]).await {
                Ok(outcome) => {
                    let done: Vec<Settlement> = pending.drain(..n).collect();
                    credits.settled(&done, &outcome);
                    backlog.fetch_sub(done.len(), Ordering::Relaxed);
                    progress.committed.fetch_add(done.len() as u64, Ordering::AcqRel);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::warn!(target: "pr.billing", error = %e, pending = pending.len(),
                        retry_in_ms = backoff.as_millis() as u64, "usage write failed; kept in the journal");
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    break;
                }
            }
        }
        progress.wrote.notify_one();
    }
}
