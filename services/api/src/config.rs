//! Runtime configuration: one clap struct, every field also readable from the environment.
//! `.env.example` at the repository root documents each variable.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use ipnet::IpNet;

pub use privaterouter_common::Secret;

/// A comma-separated list of CIDRs (a bare address is a /32 or /128). Unlike a clap list, an
/// empty value (`VAR=` in an env file) is the empty list rather than a start-up error.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetList(pub Vec<IpNet>);

impl std::str::FromStr for NetList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                part.parse::<IpNet>()
                    .or_else(|_| part.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{part}` is not a CIDR (like 10.0.0.0/8) or an IP address"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

#[derive(Parser, Debug, Clone)]
pub struct Config {
    /// Public API listener (the only one nginx proxies to).
    #[arg(long, env = "PR_PUBLIC_ADDR", default_value = "0.0.0.0:8000")]
    pub public_addr: SocketAddr,

    /// Internal listener serving only `/metrics` and `/healthz`. Keep it off public interfaces.
    #[arg(long, env = "PR_METRICS_ADDR", default_value = "127.0.0.1:9100")]
    pub metrics_addr: SocketAddr,

    /// When set (a CIDR such as 172.30.9.0/24), the metrics listener binds this host's one
    /// address inside that network, on `PR_METRICS_ADDR`'s port: scaled replicas have no fixed
    /// address, but each has exactly one on the internal metrics network. Start-up fails when no
    /// interface address, or more than one, is in the network.
    #[arg(long, env = "PR_METRICS_INTERFACE_NET")]
    pub metrics_interface_net: Option<IpNet>,

    /// When set (non-empty), `/metrics` requires `Authorization: Bearer <token>`.
    #[arg(long, env = "PR_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<Secret>,

    /// Postgres connection string.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Secret,

    /// Maximum connections in the database pool.
    #[arg(long, env = "PR_DB_MAX_CONNECTIONS", default_value_t = 20)]
    pub db_max_connections: u32,

    /// How long start-up waits for the database (migrations) before giving up.
    #[arg(long, env = "PR_DB_STARTUP_TIMEOUT_SECS", default_value_t = 60)]
    pub db_startup_timeout_secs: u64,

    /// Comma-separated CIDRs of proxies whose X-Forwarded-For / X-Real-IP are believed.
    /// Empty (the default): the TCP peer address is the client address.
    #[arg(long, env = "PR_TRUSTED_PROXIES", value_delimiter = ',', num_args = 0..)]
    pub trusted_proxies: Vec<IpNet>,

    /// Log filter (tracing `EnvFilter` syntax), for example `info` or `info,sqlx=warn`.
    #[arg(long, env = "PR_LOG", default_value = "info")]
    pub log: String,

    /// Largest accepted request body in bytes; larger bodies get 413.
    #[arg(long, env = "PR_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Time limit for producing a response (headers); exceeded → 504.
    #[arg(long, env = "PR_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,

    /// Time limit for a client to send its request body; exceeded → 408.
    #[arg(long, env = "PR_BODY_READ_TIMEOUT_SECS", default_value_t = 15)]
    pub body_read_timeout_secs: u64,

    /// The model catalog (TOML). Unset: no models (completions answer 404 model_not_found).
    #[arg(long, env = "PR_MODELS_FILE")]
    pub models_file: Option<std::path::PathBuf>,

    /// Longest non-streaming upstream call (and time to a stream's response head).
    #[arg(long, env = "PR_UPSTREAM_TIMEOUT_SECS", default_value_t = 300)]
    pub upstream_timeout_secs: u64,

    /// Longest silence between two chunks of a streamed completion.
    #[arg(long, env = "PR_STREAM_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub stream_idle_timeout_secs: u64,

    /// Connect timeout to upstreams; a refused or unreachable upstream answers 502 after at most this.
    #[arg(long, env = "PR_UPSTREAM_CONNECT_TIMEOUT_SECS", default_value_t = 5)]
    pub upstream_connect_timeout_secs: u64,

    /// How often every enabled GPU node's agent is polled.
    #[arg(long, env = "PR_GPU_POLL_INTERVAL_SECS", default_value_t = 15)]
    pub gpu_poll_interval_secs: u64,

    /// Time limit of one agent poll; a node that does not answer within it is down.
    #[arg(long, env = "PR_GPU_POLL_TIMEOUT_MS", default_value_t = 3000)]
    pub gpu_poll_timeout_ms: u64,

    /// Comma-separated CIDRs that GPU nodes' `agent_url` and `inference_url` must point into.
    /// Empty (the default): any address. When set, those URLs must use literal IP addresses (a
    /// host name could resolve elsewhere later); nodes outside are refused at registration and
    /// never polled or routed to.
    #[arg(long, env = "PR_GPU_NODE_ALLOWED_NETS", default_value = "")]
    pub gpu_node_allowed_nets: NetList,

    /// How long a resolved API key is cached: a revoked key stops working on every replica
    /// within this time (at once on the replica that revoked it).
    #[arg(long, env = "PR_KEY_CACHE_TTL_MS", default_value_t = 1000)]
    pub key_cache_ttl_ms: u64,

    /// Redis shared by the replicas (`redis://:PASSWORD@HOST:6379/0`): exact rate limits across
    /// replicas and instant revocation. Unset: each replica limits alone (with the whole limits).
    #[arg(long, env = "PR_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,

    /// Longest wait for one Redis command; a slower or failed Redis is left alone for 500 ms
    /// (calls use the local fallback meanwhile).
    #[arg(long, env = "PR_REDIS_TIMEOUT_MS", default_value_t = 100)]
    pub redis_timeout_ms: u64,

    /// How many API replicas the operator runs: while Redis is away each limits calls to its
    /// share (limit / replicas, at least 1). Exported as `pr_api_replicas_expected`.
    #[arg(long, env = "PR_API_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub api_replicas: u32,

    /// Default requests per minute of each user whose row sets none (0: no limit). Keys, users
    /// and catalog models may set their own (docs/rate-limits.md).
    #[arg(long, env = "PR_USER_REQUESTS_PER_MINUTE", default_value_t = 0)]
    pub user_requests_per_minute: u32,

    /// Default tokens per minute (input + output) of each user whose row sets none (0: no limit).
    #[arg(long, env = "PR_USER_TOKENS_PER_MINUTE", default_value_t = 0)]
    pub user_tokens_per_minute: u64,

    /// Default concurrent LLM calls of each user whose row sets none (0: no limit).
    #[arg(long, env = "PR_USER_MAX_CONCURRENT", default_value_t = 0)]
    pub user_max_concurrent: u32,

    /// On SIGTERM/Ctrl-C, how long in-flight requests may take to finish before exit.
    #[arg(long, env = "PR_SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,

    /// Folder of the local billing journal (usage not yet in the database). Keep it on a
    /// persistent volume of its own per deployment: a restarted API replays what it finds there.
    #[arg(long, env = "PR_BILLING_JOURNAL_DIR", default_value = "/var/lib/privaterouter/journal")]
    pub billing_journal_dir: std::path::PathBuf,

    /// A credit lease extension reserves up to this many worst cases of the call that needed it.
    #[arg(long, env = "PR_CREDIT_LEASE_CALLS", default_value_t = 16)]
    pub credit_lease_calls: u32,

    /// A credit lease not renewed for this long may be released by any replica.
    #[arg(long, env = "PR_CREDIT_LEASE_TTL_SECS", default_value_t = 120)]
    pub credit_lease_ttl_secs: u64,

    /// A user's lease is returned after this long without calls.
    #[arg(long, env = "PR_CREDIT_LEASE_IDLE_MS", default_value_t = 5000)]
    pub credit_lease_idle_ms: u64,

    /// How often the ledger self-check runs (0: never).
    #[arg(long, env = "PR_LEDGER_CHECK_INTERVAL_SECS", default_value_t = 300)]
    pub ledger_check_interval_secs: u64,

    /// Most API keys a user may have that are not revoked.
    #[arg(long, env = "PR_MAX_API_KEYS_PER_USER", default_value_t = 100)]
    pub max_api_keys_per_user: u32,

    /// Most conversations a user may have.
    #[arg(long, env = "PR_MAX_CONVERSATIONS_PER_USER", default_value_t = 1000)]
    pub max_conversations_per_user: u32,

    /// Most stored messages of one conversation (system prompt included; a send stores two).
    #[arg(long, env = "PR_MAX_MESSAGES_PER_CONVERSATION", default_value_t = 1000)]
    pub max_messages_per_conversation: u32,

    /// Longest message a client may send to a conversation, in characters.
    #[arg(long, env = "PR_MAX_MESSAGE_CHARS", default_value_t = 100_000)]
    pub max_message_chars: usize,

    /// Longest system prompt of a conversation, in characters.
    #[arg(long, env = "PR_MAX_SYSTEM_PROMPT_CHARS", default_value_t = 32_000)]
    pub max_system_prompt_chars: usize,

    /// Longest conversation title, in characters.
    #[arg(long, env = "PR_MAX_TITLE_CHARS", default_value_t = 200)]
    pub max_title_chars: usize,
}

impl Config {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs(self.body_read_timeout_secs)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
    /// The Redis URL, treating an empty variable as unset.
    pub fn redis_url(&self) -> Option<&str> {
        self.redis_url.as_ref().map(Secret::expose).filter(|u| !u.is_empty())
    }

    /// The metrics token, treating an empty variable as unset.
    pub fn metrics_token(&self) -> Option<&str> {
        self.metrics_token.as_ref().map(Secret::expose).filter(|t| !t.is_empty())
    }

    pub fn billing(&self) -> crate::billing::BillingConfig {
        crate::billing::BillingConfig {
            journal_dir: self.billing_journal_dir.clone(),
            lease: crate::billing::leases::LeaseConfig {
                calls: self.credit_lease_calls,
                ttl: Duration::from_secs(self.credit_lease_ttl_secs.max(2)),
                idle: Duration::from_millis(self.credit_lease_idle_ms),
            },
            check_interval: (self.ledger_check_interval_secs > 0)
                .then(|| Duration::from_secs(self.ledger_check_interval_secs)),
        }
    }

    /// A configuration for tests and benchmarks: ephemeral loopback ports, defaults elsewhere.
    pub fn for_tests(database_url: impl Into<String>) -> Self {
        Self {
            public_addr: "127.0.0.1:0".parse().unwrap(),
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            metrics_interface_net: None,
            metrics_token: None,
            database_url: Secret::new(database_url),
            db_max_connections: 10,
            db_startup_timeout_secs: 30,
            trusted_proxies: Vec::new(),
            log: "info".into(),
            max_body_bytes: 1024 * 1024,
            request_timeout_secs: 30,
            body_read_timeout_secs: 15,
            shutdown_grace_secs: 10,
            models_file: None,
            upstream_timeout_secs: 300,
            stream_idle_timeout_secs: 60,
            upstream_connect_timeout_secs: 5,
            key_cache_ttl_ms: 1000,
            redis_url: None,
            redis_timeout_ms: 100,
            api_replicas: 1,
            user_requests_per_minute: 0,
            user_tokens_per_minute: 0,
            user_max_concurrent: 0,
            gpu_node_allowed_nets: NetList::default(),
            gpu_poll_interval_secs: 15,
            gpu_poll_timeout_ms: 3000,
            billing_journal_dir: std::env::temp_dir().join(format!("pr-journal-{}", uuid::Uuid::new_v4())),
            credit_lease_calls: 16,
            credit_lease_ttl_secs: 120,
            credit_lease_idle_ms: 5000,
            ledger_check_interval_secs: 300,
            max_api_keys_per_user: 100,
            max_conversations_per_user: 1000,
            max_messages_per_conversation: 1000,
            max_message_chars: 100_000,
            max_system_prompt_chars: 32_000,
            max_title_chars: 200,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_lists_take_cidrs_and_addresses_and_an_empty_value_is_none() {
        let parse = |v: &str| Config::try_parse_from(["api", "--database-url", "x", "--gpu-node-allowed-nets", v]);
        assert_eq!(parse("").unwrap().gpu_node_allowed_nets, NetList::default());
        let nets = parse("10.0.0.0/8, 192.168.1.7,fd00::/8").unwrap().gpu_node_allowed_nets;
        let want = ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"].map(|n| n.parse::<IpNet>().unwrap());
        assert_eq!(nets.0, want);
        let err = parse("10.0.0.0/8,bogus").unwrap_err().to_string();
        assert!(err.contains("`bogus` is not a CIDR"), "{err}");
    }
}
