//! The hardening audit: checks a live PrivateRouter deployment from the outside, the way an
//! attacker or a scanner sees it, against the production checklist (docs/hardening.md). `pr-hardening` is a thin CLI over
//! [`audit`]; the stack tests call it directly.
//!
//! Everything goes over raw sockets: paths are sent exactly as written (an HTTP client library
//! would normalise `/%6Detrics` or `/x/../metrics` away), and TLS probes can offer protocol
//! versions and suites that a modern client refuses to speak.

pub mod checks;
pub mod net;
pub mod report;
pub mod target;
pub mod tls;

pub use report::{Item, Report, Status};
pub use target::{ConnectTo, Target};

/// Runs every check against `target`, in checklist order. Never panics on a broken or hostile
/// deployment: whatever goes wrong becomes a failed item with the reason as evidence.
pub fn audit(target: &Target) -> Report {
    checks::run_all(target)
}
