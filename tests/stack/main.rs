//! The deployment kit as a whole: the real stack (postgres, the API, nginx, Prometheus,
//! Alertmanager; local images, the repository's own configuration) on a private Docker network,
//! audited from the outside with `pr-hardening`'s library. The committed kit passes every item;
//! for every item, a deliberately weakened copy of the configuration fails exactly that item.
//!
//! Each test brings up its own stack (about 20 s, most of it waiting for Prometheus' first
//! scrapes), so they run in parallel under nextest.
//!
//! Also here: three API replicas with one killed under load (`replicas`), per-key rate limits,
//! revocation and a Redis outage across three replicas (`rate_limits`), the end-to-end run through real Prometheus with the upstream and GPU-node
//! stand-ins as containers (`e2e`, `standins`), nginx's connections to the API (`ingress`),
//! nginx's own rules at the edge (`edge`: host names, the per-address limit, the body limit),
//! and the compose file brought up and down by `scripts/up` and `scripts/down` (`compose`), with
//! its networks' isolation probed from inside its containers (`isolation`) and its demo profile's
//! first completion (`first_call`). Without containers:
//! every compose service's confinement as `compose config` shows it (`containers`) and the
//! development CA's name constraints and key placement (`dev_certs`).

mod audit;
mod compose;
mod containers;
mod dev_certs;
mod e2e;
mod edge;
mod first_call;
mod harness;
mod ingress;
mod isolation;
mod promtool;
mod rate_limits;
mod replicas;
mod standins;
