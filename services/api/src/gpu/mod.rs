//! GPU nodes. The poller and node choice live in `crate::fleet`, the admin registry in
//! `crate::routes::gpu_nodes` (older modules); what the API may send to a node is decided here.

pub mod fleet;
pub mod node_policy;
pub mod registry;
