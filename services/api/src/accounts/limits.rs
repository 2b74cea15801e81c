//! Per-user storage limits (`PR_MAX_*`). Counted limits are exact: creations of one user (and key
//! revocations) are serialised on that user's row, so concurrent requests cannot overshoot.
//! The lock is `FOR NO KEY UPDATE`, which foreign-key checks (`FOR KEY SHARE`) do not wait for:
//! billing writes for the user are never blocked by it.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::http::error::ApiError;

/// Locks the user's row until the end of the transaction.
pub async fn lock_user(tx: &mut PgConnection, user_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE").bind(user_id).execute(tx).await?;
    Ok(())
}

/// 409 `limit_exceeded` when `adding` more `what` to the `held` ones would pass `max`; the
/// message names `variable`, the setting that applies.
pub fn check(held: i64, adding: i64, max: u32, what: &str, variable: &str, advice: &str) -> Result<(), ApiError> {
    if held + adding <= i64::from(max) {
        return Ok(());
    }
    Err(ApiError::LimitExceeded(format!("The limit of {max} {what} is reached ({variable}). {advice}")))
}

/// 400 with `code` when `text` is longer than `max` characters.
pub fn check_chars(text: &str, max: usize, field: &str, variable: &str, code: &'static str) -> Result<(), ApiError> {
    if text.chars().count() <= max {
        return Ok(());
    }
    Err(ApiError::bad_request(code, format!("{field} must be at most {max} characters ({variable})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_their_setting() {
        assert!(check(99, 1, 100, "API keys", "PR_MAX_API_KEYS_PER_USER", "").is_ok());
        let err = check(100, 1, 100, "active API keys", "PR_MAX_API_KEYS_PER_USER", "Revoke one first.").unwrap_err();
        let info = err.info();
        assert_eq!((info.status.as_u16(), info.code), (409, "limit_exceeded"));
        assert!(info.message.contains("100 active API keys") && info.message.contains("PR_MAX_API_KEYS_PER_USER"));
        assert!(check(3, 2, 4, "messages", "X", "").is_err(), "a send stores two messages");
        assert!(
            check_chars("héllo", 5, "title", "PR_MAX_TITLE_CHARS", "invalid_title").is_ok(),
            "characters, not bytes"
        );
        let err = check_chars("hello!", 5, "title", "PR_MAX_TITLE_CHARS", "invalid_title").unwrap_err().info();
        assert_eq!((err.status.as_u16(), err.code), (400, "invalid_title"));
        assert!(err.message.contains("PR_MAX_TITLE_CHARS"));
    }
}
