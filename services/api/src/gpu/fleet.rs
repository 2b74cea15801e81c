//! GPU nodes at run time: the health poller, the `pr_gpu_node_*` gauges and the choice of a node
//! for a pool. The registry itself is the `gpu_nodes` table (`gpu::node_store`, administered
//! through `gpu::registry`); every poll re-reads it, so nodes added, disabled or deleted through
//! any replica are picked up.
//!
//! The gauges are rendered from this state (`gauges`) rather than through the `metrics` registry,
//! so a deleted node's series disappear from `/metrics` at once (the exporter cannot forget a series).

use std::{
    collections::HashMap,
    sync::{
        RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    gpu::{
        node_policy::{self, AllowedNets},
        node_store::{self, NodeRow},
    },
    telemetry::exposition::GpuNodeGauge,
};

/// What the last poll (or a failed request) said about a node.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Health {
    pub up: bool,
    /// Mean over the node's GPUs that report it; `None` when none does (never invented).
    pub utilization_pct: Option<f64>,
    pub gpus: usize,
    pub last_seen: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

#[derive(Default)]
pub struct Fleet {
    nodes: RwLock<HashMap<Uuid, (NodeRow, Health)>>,
    round_robin: AtomicUsize,
    allowed_nets: AllowedNets,
}

/// A node chosen for one call.
#[derive(Clone, Debug)]
pub struct Pick {
    pub node_id: Uuid,
    pub inference_url: String,
}

impl Fleet {
    pub fn new(allowed_nets: AllowedNets) -> Self {
        Self { allowed_nets, ..Self::default() }
    }

    /// `PR_GPU_NODE_ALLOWED_NETS`, also checked at registration.
    pub fn allowed_nets(&self) -> &AllowedNets {
        &self.allowed_nets
    }

    pub fn health(&self, id: Uuid) -> Option<Health> {
        self.nodes.read().expect("fleet lock").get(&id).map(|(_, h)| h.clone())
    }

    pub fn upsert(&self, row: NodeRow) {
        let mut nodes = self.nodes.write().expect("fleet lock");
        let health = nodes.remove(&row.id).map(|(_, h)| h).unwrap_or_default();
        nodes.insert(row.id, (row, health));
    }

    pub fn remove(&self, id: Uuid) {
        self.nodes.write().expect("fleet lock").remove(&id);
    }

    /// A healthy node of `pool`: the least utilized, ties taken in turn. Nodes whose utilization
    /// is unknown come after those that report one.
    pub fn pick(&self, pool: &str) -> Option<Pick> {
        let nodes = self.nodes.read().expect("fleet lock");
        let mut healthy: Vec<(&NodeRow, f64)> = nodes
            .values()
            .filter(|(row, h)| h.up && row.pool == pool)
            .map(|(row, h)| (row, h.utilization_pct.unwrap_or(f64::INFINITY)))
            .collect();
        if healthy.is_empty() {
            return None;
        }
        let least = healthy.iter().map(|(_, u)| *u).fold(f64::INFINITY, f64::min);
        healthy.retain(|(_, u)| *u == least || (u.is_infinite() && least.is_infinite()));
        healthy.sort_by_key(|(row, _)| row.id);
        let (row, _) = healthy[self.round_robin.fetch_add(1, Ordering::Relaxed) % healthy.len()];
        Some(Pick { node_id: row.id, inference_url: row.inference_url.clone() })
    }

    /// A node that failed a request is taken out of rotation until a poll finds it healthy.
    pub fn mark_down(&self, id: Uuid, reason: &str) {
        if let Some((row, health)) = self.nodes.write().expect("fleet lock").get_mut(&id) {
            if health.up {
                tracing::warn!(target: "pr.gpu", node = row.name.as_str(), reason, "GPU node failed a request; marked down");
            }
            health.up = false;
            health.utilization_pct = None;
            health.last_error = Some(reason.chars().take(300).collect());
        }
    }

    /// The node gauges of `/metrics` (rendered by `telemetry::exposition`).
    pub fn gauges(&self) -> Vec<GpuNodeGauge> {
        let nodes = self.nodes.read().expect("fleet lock");
        nodes
            .values()
            .map(|(row, h)| GpuNodeGauge {
                node_id: row.id,
                name: row.name.clone(),
                up: h.up,
                utilization_pct: h.utilization_pct,
            })
            .collect()
    }

    /// One poll round: re-read the registry, then ask every enabled node's agent at once, each
    /// bounded by `timeout` so a slow node never delays the others.
    pub async fn poll_once(&self, db: &PgPool, http: &reqwest::Client, timeout: Duration) {
        let rows = match node_store::list(db, true).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(target: "pr.gpu", error = %e, "cannot read the GPU node registry; keeping the last known nodes");
                self.nodes.read().expect("fleet lock").values().map(|(row, _)| row.clone()).collect()
            }
        };
        {
            let mut nodes = self.nodes.write().expect("fleet lock");
            nodes.retain(|id, _| rows.iter().any(|r| r.id == *id));
        }
        for row in &rows {
            self.upsert(row.clone());
        }
        let results =
            futures_util::future::join_all(rows.iter().map(|row| probe(http, &self.allowed_nets, row, timeout))).await;
        self.record(rows.iter().zip(results));
    }

    /// Polls one node now (a node just registered or enabled is usable without waiting a round).
    pub async fn poll_node(&self, http: &reqwest::Client, row: &NodeRow, timeout: Duration) {
        let result = probe(http, &self.allowed_nets, row, timeout).await;
        self.record(std::iter::once((row, result)));
    }

    fn record<'a>(&self, results: impl Iterator<Item = (&'a NodeRow, Result<(usize, Option<f64>), String>)>) {
        let mut nodes = self.nodes.write().expect("fleet lock");
        for (row, result) in results {
            let Some((_, health)) = nodes.get_mut(&row.id) else { continue };
            match result {
                Ok((gpus, utilization)) => {
                    if !health.up {
                        tracing::info!(target: "pr.gpu", node = row.name.as_str(), gpus, "GPU node is up");
                    }
                    *health = Health {
                        up: true,
                        utilization_pct: utilization,
                        gpus,
                        last_seen: Some(Utc::now()),
                        last_error: None,
                    };
                }
                Err(e) => {
                    if health.up {
                        tracing::warn!(target: "pr.gpu", node = row.name.as_str(), error = e.as_str(), "GPU node is down");
                    }
                    health.up = false;
                    health.utilization_pct = None;
                    health.last_error = Some(e);
                }
            }
        }
    }
}

/// Polls forever (spawned at start-up).
pub async fn run_poller(
    fleet: std::sync::Arc<Fleet>,
    db: PgPool,
    http: reqwest::Client,
    interval: Duration,
    timeout: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        fleet.poll_once(&db, &http, timeout).await;
    }
}

/// Asks one agent for its GPUs: healthy means 200 with at least one GPU. A row that breaks the
/// node policy (registered before it, or under another configuration) is down and never sent
/// anything: its inference URL is then never used either, since only nodes up are routed to.
async fn probe(
    http: &reqwest::Client,
    allowed_nets: &AllowedNets,
    row: &NodeRow,
    timeout: Duration,
) -> Result<(usize, Option<f64>), String> {
    allowed_nets.check("agent_url", &row.agent_url)?;
    allowed_nets.check("inference_url", &row.inference_url)?;
    let mut request = http.get(format!("{}/v1/gpus", row.agent_url.trim_end_matches('/'))).timeout(timeout);
    if let Some(var) = &row.agent_token_env {
        if !node_policy::token_env_allowed(var) {
            return Err(format!(
                "refused to send the value of {var} to this agent: {}; set a new agent_token_env with PATCH",
                node_policy::AGENT_TOKEN_ENV_RULE
            ));
        }
        match std::env::var(var) {
            Ok(token) if !token.is_empty() => request = request.bearer_auth(token),
            _ => return Err(format!("agent token variable {var} is not set in the API's environment")),
        }
    }
    let response = request
        .send()
        .await
        .map_err(|e| if e.is_timeout() { "agent timed out".to_owned() } else { format!("agent unreachable: {e}") })?;
    if response.status().is_redirection() {
        return Err(format!("agent answered a redirect ({}); redirects are not followed", response.status()));
    }
    if !response.status().is_success() {
        return Err(format!("agent answered {}", response.status()));
    }
    let body: Value = response.json().await.map_err(|e| format!("agent sent an invalid body: {e}"))?;
    let gpus = body.get("gpus").and_then(Value::as_array).ok_or("agent body has no `gpus` list")?;
    if gpus.is_empty() {
        return Err("agent reports no GPUs".into());
    }
    let reported: Vec<f64> = gpus.iter().filter_map(|g| g.get("utilization_gpu_pct").and_then(Value::as_f64)).collect();
    let mean = (!reported.is_empty()).then(|| (reported.iter().sum::<f64>() / reported.len() as f64).clamp(0.0, 100.0));
    Ok((gpus.len(), mean))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, pool: &str) -> NodeRow {
        NodeRow {
            id: Uuid::new_v4(),
            name: name.into(),
            agent_url: "http://a".into(),
            inference_url: format!("http://{name}/v1"),
            pool: pool.into(),
            agent_token_env: None,
            enabled: true,
            created_at: Utc::now(),
        }
    }

    fn set(fleet: &Fleet, row: &NodeRow, up: bool, util: Option<f64>) {
        fleet.upsert(row.clone());
        let mut nodes = fleet.nodes.write().unwrap();
        let h = &mut nodes.get_mut(&row.id).unwrap().1;
        h.up = up;
        h.utilization_pct = util;
    }

    #[test]
    fn picks_the_least_utilized_healthy_node_and_rotates_ties() {
        let fleet = Fleet::default();
        let (a, b, c, other) = (node("a", "p"), node("b", "p"), node("c", "p"), node("d", "q"));
        set(&fleet, &a, true, Some(80.0));
        set(&fleet, &b, true, Some(20.0));
        set(&fleet, &c, false, Some(0.0));
        set(&fleet, &other, true, Some(0.0));
        for _ in 0..5 {
            assert_eq!(fleet.pick("p").unwrap().node_id, b.id);
        }
        set(&fleet, &a, true, Some(20.0));
        let picks: std::collections::HashSet<Uuid> = (0..4).map(|_| fleet.pick("p").unwrap().node_id).collect();
        assert_eq!(picks, [a.id, b.id].into_iter().collect(), "ties alternate");
        fleet.mark_down(a.id, "boom");
        fleet.mark_down(b.id, "boom");
        assert!(fleet.pick("p").is_none());
        assert!(fleet.pick("missing").is_none());
    }

    #[test]
    fn unknown_utilization_comes_last_and_removed_nodes_have_no_gauges() {
        let fleet = Fleet::default();
        let (a, b) = (node("a", "p"), node("b", "p"));
        set(&fleet, &a, true, None);
        set(&fleet, &b, true, Some(90.0));
        assert_eq!(fleet.pick("p").unwrap().node_id, b.id);
        let gauge = |id: Uuid| fleet.gauges().into_iter().find(|g| g.node_id == id);
        assert_eq!(gauge(a.id).map(|g| (g.name, g.up, g.utilization_pct)), Some(("a".into(), true, None)));
        assert_eq!(gauge(b.id).map(|g| (g.up, g.utilization_pct)), Some((true, Some(90.0))));
        fleet.remove(a.id);
        assert_eq!(gauge(a.id), None, "a removed node has no gauges");
    }
}
