//! Accounts. Users and keys live in the older `crate::users` and `crate::auth`; the per-user
//! limits on what an account may store, its rate limits and the admin routes that set them, the
//! limiter that enforces them, and the Redis link that shares limits and revocations between
//! replicas are here.

pub mod admin;
pub mod auth;
pub mod keys;
pub mod limits;
pub mod rate_headers;
pub mod rate_limiter;
pub mod rate_limits;
mod rate_local;
pub mod redis_link;
pub mod revocation;
pub mod users;
