//! Rate limits: how many requests per minute, tokens per minute and concurrent requests a key,
//! a user, or a key on one model may use. This module owns where limits come from (the
//! `api_keys` and `users` rows, the `PR_USER_*` defaults, the catalog's per-model defaults) and
//! the rules for setting them; enforcement is the limiter's.
//!
//! - A key's own limits are optional (none: only its user's apply). A key created with a key
//!   inherits the creating key's limits and may only tighten them, and no limit may exceed its
//!   user's: a limited key cannot mint an unlimited one.
//! - A user's limits are the row's values, each falling back to the `PR_USER_*` default.
//! - Admins set any key's (`PATCH /api/admin/keys/{id}`) or user's
//!   (`PATCH /api/admin/users/{id}`) limits freely.

use serde::{Deserialize, Deserializer, Serialize};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::http::error::ApiError;

/// Limits of one bucket; `None`: no limit of that kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub max_concurrent: Option<u32>,
}

/// The largest value any limit may take (a typo guard, far above any real traffic).
const MAX_LIMIT: u64 = 1_000_000_000;

impl RateLimits {
    pub const NONE: Self = Self { requests_per_minute: None, tokens_per_minute: None, max_concurrent: None };

    pub fn is_none(&self) -> bool {
        *self == Self::NONE
    }

    /// Each of `self`'s limits, or `fallback`'s where `self` has none.
    pub fn or(self, fallback: Self) -> Self {
        Self {
            requests_per_minute: self.requests_per_minute.or(fallback.requests_per_minute),
            tokens_per_minute: self.tokens_per_minute.or(fallback.tokens_per_minute),
            max_concurrent: self.max_concurrent.or(fallback.max_concurrent),
        }
    }

    /// From the three columns as stored (`integer`, `bigint`, `integer`; CHECK > 0).
    pub fn from_columns(rpm: Option<i32>, tpm: Option<i64>, concurrent: Option<i32>) -> Self {
        Self {
            requests_per_minute: rpm.and_then(|v| u32::try_from(v).ok()),
            tokens_per_minute: tpm.and_then(|v| u64::try_from(v).ok()),
            max_concurrent: concurrent.and_then(|v| u32::try_from(v).ok()),
        }
    }

    fn columns(&self) -> (Option<i32>, Option<i64>, Option<i32>) {
        (
            self.requests_per_minute.map(|v| v as i32),
            self.tokens_per_minute.map(|v| v as i64),
            self.max_concurrent.map(|v| v as i32),
        )
    }

    /// 422 `invalid_limits` unless every limit is between 1 and 10^9.
    pub fn validate(&self) -> Result<(), ApiError> {
        for (name, value) in self.named() {
            if let Some(v) = value
                && !(1..=MAX_LIMIT).contains(&v)
            {
                return Err(invalid(format!(
                    "limits.{name} must be between 1 and {MAX_LIMIT} (or null: no limit), not {v}"
                )));
            }
        }
        Ok(())
    }

    fn named(&self) -> [(&'static str, Option<u64>); 3] {
        [
            ("requests_per_minute", self.requests_per_minute.map(u64::from)),
            ("tokens_per_minute", self.tokens_per_minute),
            ("max_concurrent", self.max_concurrent.map(u64::from)),
        ]
    }

    /// The limits of a key created with a key limited by `parent` for a user limited by `user`:
    /// what was asked for, else the parent's; 422 when a limit asked for is looser than the
    /// parent's or the user's (it could never be used, and a child must not widen its parent).
    pub fn for_child(requested: Option<Self>, parent: Self, user: Self) -> Result<Self, ApiError> {
        let Some(requested) = requested else { return Ok(parent) };
        requested.validate()?;
        let child = requested.or(parent);
        for ((name, asked), ((_, from_parent), (_, from_user))) in
            requested.named().into_iter().zip(parent.named().into_iter().zip(user.named()))
        {
            let Some(asked) = asked else { continue };
            for (bound, whose) in [(from_parent, "the key that creates it"), (from_user, "your account")] {
                if let Some(bound) = bound
                    && asked > bound
                {
                    return Err(invalid(format!(
                        "limits.{name} = {asked} is above the limit of {whose} ({bound}); a new key may only tighten it"
                    )));
                }
            }
        }
        Ok(child)
    }
}

fn invalid(message: String) -> ApiError {
    ApiError::bad_request("invalid_limits", message)
}

/// A `PATCH` of limits: a field left out keeps its value, `null` removes the limit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    #[serde(default, deserialize_with = "present")]
    pub requests_per_minute: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    pub tokens_per_minute: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    pub max_concurrent: Option<Option<u32>>,
}

/// `Some(value)` for a field that is present (`Some(None)` for `null`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl LimitsPatch {
    pub fn apply(&self, to: RateLimits) -> Result<RateLimits, ApiError> {
        let patched = RateLimits {
            requests_per_minute: self.requests_per_minute.unwrap_or(to.requests_per_minute),
            tokens_per_minute: self.tokens_per_minute.unwrap_or(to.tokens_per_minute),
            max_concurrent: self.max_concurrent.unwrap_or(to.max_concurrent),
        };
        patched.validate()?;
        Ok(patched)
    }
}

/// The `PR_USER_*` defaults, where 0 means none.
pub fn user_defaults(requests_per_minute: u32, tokens_per_minute: u64, max_concurrent: u32) -> RateLimits {
    RateLimits {
        requests_per_minute: (requests_per_minute > 0).then_some(requests_per_minute),
        tokens_per_minute: (tokens_per_minute > 0).then_some(tokens_per_minute),
        max_concurrent: (max_concurrent > 0).then_some(max_concurrent),
    }
}

/// Whose limits: a key's (`api_keys`) or a user's (`users`).
#[derive(Clone, Copy, Debug)]
pub enum Holder {
    Key,
    User,
}

impl Holder {
    fn table(self) -> &'static str {
        match self {
            Self::Key => "api_keys",
            Self::User => "users",
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            Self::Key => "API key",
            Self::User => "User",
        }
    }
}

/// Stores `limits` as the holder's own.
pub async fn set(db: impl PgExecutor<'_>, holder: Holder, id: Uuid, limits: RateLimits) -> Result<bool, sqlx::Error> {
    let (rpm, tpm, concurrent) = limits.columns();
    let sql = format!(
        "UPDATE {} SET requests_per_minute = $2, tokens_per_minute = $3, max_concurrent = $4 WHERE id = $1",
        holder.table()
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(rpm).bind(tpm).bind(concurrent).execute(db).await?;
    Ok(done.rows_affected() == 1)
}

/// Applies `patch` to the holder's own limits under a row lock (two admins changing different
/// fields at once both take effect); the new limits, or None when there is no such holder.
pub async fn patch(db: &PgPool, holder: Holder, id: Uuid, patch: &LimitsPatch) -> Result<Option<RateLimits>, ApiError> {
    let mut tx = db.begin().await?;
    // FOR NO KEY UPDATE: foreign-key checks of billing writes for this user do not wait for it.
    let sql = format!(
        "SELECT requests_per_minute, tokens_per_minute, max_concurrent FROM {} WHERE id = $1 FOR NO KEY UPDATE",
        holder.table()
    );
    let current: Option<(Option<i32>, Option<i64>, Option<i32>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *tx).await?;
    let Some((rpm, tpm, concurrent)) = current else { return Ok(None) };
    let limits = patch.apply(RateLimits::from_columns(rpm, tpm, concurrent))?;
    set(&mut *tx, holder, id, limits).await?;
    tx.commit().await?;
    Ok(Some(limits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(rpm: Option<u32>, tpm: Option<u64>, c: Option<u32>) -> RateLimits {
        RateLimits { requests_per_minute: rpm, tokens_per_minute: tpm, max_concurrent: c }
    }

    #[test]
    fn a_child_inherits_and_may_only_tighten() {
        let parent = l(Some(60), None, Some(4));
        let user = l(None, Some(10_000), None);
        assert_eq!(RateLimits::for_child(None, parent, user).unwrap(), parent);
        let asked = l(Some(30), Some(5_000), None);
        assert_eq!(RateLimits::for_child(Some(asked), parent, user).unwrap(), l(Some(30), Some(5_000), Some(4)));
        assert!(RateLimits::for_child(Some(l(Some(61), None, None)), parent, user).is_err(), "above the parent");
        assert!(RateLimits::for_child(Some(l(None, Some(10_001), None)), parent, user).is_err(), "above the user");
        assert!(RateLimits::for_child(Some(l(Some(0), None, None)), parent, user).is_err(), "zero");
    }

    #[test]
    fn a_patch_keeps_what_it_leaves_out_and_null_removes() {
        let patch: LimitsPatch = serde_json::from_str(r#"{"requests_per_minute": 5, "max_concurrent": null}"#).unwrap();
        let before = l(Some(60), Some(100), Some(2));
        assert_eq!(patch.apply(before).unwrap(), l(Some(5), Some(100), None));
        let bad: LimitsPatch = serde_json::from_str(r#"{"tokens_per_minute": 0}"#).unwrap();
        assert!(bad.apply(before).is_err());
        assert!(serde_json::from_str::<LimitsPatch>(r#"{"rpm": 1}"#).is_err(), "unknown fields are refused");
    }

    #[test]
    fn zero_defaults_mean_no_limit() {
        assert_eq!(user_defaults(0, 0, 0), RateLimits::NONE);
        assert_eq!(user_defaults(60, 0, 3), l(Some(60), None, Some(3)));
        assert_eq!(l(None, Some(1), None).or(l(Some(2), Some(2), Some(2))), l(Some(2), Some(1), Some(2)));
    }
}
