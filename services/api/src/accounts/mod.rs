//! Accounts. Users and keys live in the older `crate::users` and `crate::auth`; the per-user
//! limits on what an account may store, its rate limits, and the admin routes that set them are
//! here.

pub mod admin;
pub mod limits;
pub mod rate_limits;
