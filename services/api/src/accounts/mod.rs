//! Accounts. Users and keys live in the older `crate::users` and `crate::auth`; the per-user
//! limits on what an account may store are here.

pub mod limits;
