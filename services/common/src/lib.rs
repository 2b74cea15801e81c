//! Pieces shared by the PrivateRouter services (the API and the GPU agent), so that both print
//! the same JSON log lines and treat secrets the same way.

pub mod log_format;
pub mod secret;
pub mod shutdown;

pub use log_format::{JsonLines, unix_now};
pub use secret::Secret;
pub use shutdown::shutdown_signal;
