//! The ledger self-check, run periodically by every replica and once by
//! `privaterouter-api admin ledger check`: every balance equals the sum of its user's ledger
//! rows, every `held_usd` equals the sum of the user's leases, held credit is covered by the
//! balance, and no expired lease was left behind.

use serde::Serialize;
use sqlx::PgPool;

use crate::telemetry::metrics as m;

/// Expired leases are released by any replica within seconds; one older than this is left behind.
const EXPIRED_GRACE_SECS: f64 = 60.0;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Users whose balance differs from the sum of their ledger rows.
    pub balance_mismatch: i64,
    /// Users whose held_usd differs from the sum of their leases.
    pub held_mismatch: i64,
    /// Users with held credit beyond their balance (balance − held < 0 while something is held).
    pub negative_available: i64,
    /// Leases expired for more than a minute.
    pub expired_leases: i64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations().is_empty()
    }

    /// The `check` label values that failed.
    pub fn violations(&self) -> Vec<&'static str> {
        [
            ("balance_mismatch", self.balance_mismatch),
            ("held_mismatch", self.held_mismatch),
            ("negative_available", self.negative_available),
            ("expired_leases", self.expired_leases),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, _)| name)
        .collect()
    }

    /// Counts each failed check once in `pr_ledger_check_failures_total{check}` and logs it.
    pub fn count(&self) {
        for check in self.violations() {
            metrics::counter!(m::LEDGER_CHECK_FAILURES_TOTAL, "check" => check).increment(1);
        }
        if !self.ok() {
            tracing::error!(target: "pr.billing", report = %serde_json::to_string(self).unwrap_or_default(),
                "ledger self-check failed (docs/runbook.md#privaterouterledgercheckfailed)");
        }
    }
}

pub async fn run(db: &PgPool) -> Result<Report, sqlx::Error> {
    let (balance_mismatch, held_mismatch, negative_available, expired_leases): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT \
           (SELECT count(*) FROM user_balances b \
              FULL JOIN (SELECT user_id, sum(amount_usd) AS s FROM credit_transactions GROUP BY user_id) t USING (user_id) \
              WHERE coalesce(b.balance_usd, 0) <> coalesce(t.s, 0)), \
           (SELECT count(*) FROM user_balances b \
              LEFT JOIN (SELECT user_id, sum(amount_usd) AS s FROM credit_leases GROUP BY user_id) l USING (user_id) \
              WHERE b.held_usd <> coalesce(l.s, 0)), \
           (SELECT count(*) FROM user_balances WHERE held_usd > 0 AND balance_usd - held_usd < 0), \
           (SELECT count(*) FROM credit_leases WHERE expires_at < now() - make_interval(secs => $1))",
    )
    .bind(EXPIRED_GRACE_SECS)
    .fetch_one(db)
    .await?;
    Ok(Report { balance_mismatch, held_mismatch, negative_available, expired_leases })
}
