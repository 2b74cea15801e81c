//! What the API agrees to send to a registered GPU node. A node is registered by an admin over
//! HTTP, so its row must not be able to make the API hand out its own secrets or reach hosts
//! the operator did not mean: only `PR_GPU_AGENT_TOKEN_*` variables are ever sent as an agent's
//! token, and with `PR_GPU_NODE_ALLOWED_NETS` set, node URLs must be literal IPs inside those
//! networks. Both rules are checked at registration and again before every poll, so rows
//! written before the rules existed are refused too.

use std::net::IpAddr;

use ipnet::IpNet;

/// The only environment variables whose values may be sent to an agent as its bearer token.
pub const AGENT_TOKEN_ENV_PREFIX: &str = "PR_GPU_AGENT_TOKEN_";

pub const AGENT_TOKEN_ENV_RULE: &str = "agent_token_env must be PR_GPU_AGENT_TOKEN_ followed by A-Z, 0-9 or _ \
     (at most 128 characters): only such variables are ever sent to a GPU agent";

/// Whether `var` may name an agent's token (the variable need not be set).
pub fn token_env_allowed(var: &str) -> bool {
    var.len() > AGENT_TOKEN_ENV_PREFIX.len()
        && var.len() <= 128
        && var.starts_with(AGENT_TOKEN_ENV_PREFIX)
        && var.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// `PR_GPU_NODE_ALLOWED_NETS`: empty allows any address.
#[derive(Clone, Debug, Default)]
pub struct AllowedNets(Vec<IpNet>);

impl AllowedNets {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    /// Checks the host of `url` (named `field` in the message). Host names are refused when the
    /// setting is set: one checked now could resolve elsewhere at the next poll (DNS rebinding).
    /// The URL is parsed as the HTTP client parses it, so `http://2130706433/` is 127.0.0.1 here
    /// as there.
    pub fn check(&self, field: &str, url: &str) -> Result<(), String> {
        if self.0.is_empty() {
            return Ok(());
        }
        let parsed = reqwest::Url::parse(url).map_err(|_| format!("{field} is not a valid URL"))?;
        let host = parsed.host_str().unwrap_or_default();
        let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().map(|ip| ip.to_canonical())
        else {
            return Err(format!(
                "{field} host `{host}` is not an IP address: with PR_GPU_NODE_ALLOWED_NETS set, GPU node URLs \
                 must use literal IP addresses inside {}",
                self.list()
            ));
        };
        // `[::ffff:10.0.0.5]` is 10.0.0.5 (to_canonical above); "any address" and multicast
        // name no node.
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(format!("{field} address {ip} is not a node's address"));
        }
        if self.0.iter().any(|net| net.contains(&ip)) {
            Ok(())
        } else {
            Err(format!("{field} address {ip} is outside PR_GPU_NODE_ALLOWED_NETS ({})", self.list()))
        }
    }

    fn list(&self) -> String {
        self.0.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_prefixed_token_variables_are_allowed() {
        assert!(token_env_allowed("PR_GPU_AGENT_TOKEN_A100"));
        assert!(token_env_allowed("PR_GPU_AGENT_TOKEN_NODE_1"));
        for bad in
            ["DATABASE_URL", "PR_METRICS_TOKEN", "PR_GPU_AGENT_TOKEN_", "PR_GPU_AGENT_TOKEN_a", "pr_gpu_agent_token_x"]
        {
            assert!(!token_env_allowed(bad), "{bad}");
        }
        assert!(!token_env_allowed(&format!("{AGENT_TOKEN_ENV_PREFIX}{}", "X".repeat(120))));
    }

    #[test]
    fn allowed_nets_take_literal_ips_inside_them_only() {
        assert!(AllowedNets::default().check("agent_url", "http://anything.example:1").is_ok());
        let nets = AllowedNets::new(vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]);
        assert!(nets.check("agent_url", "http://10.1.2.3:9400").is_ok());
        assert!(nets.check("agent_url", "http://[fd00::5]:9400/v1").is_ok());
        let err = nets.check("agent_url", "http://11.0.0.1:9400").unwrap_err();
        assert!(err.contains("outside PR_GPU_NODE_ALLOWED_NETS (10.0.0.0/8, fd00::/8)"), "{err}");
        assert!(
            nets.check("inference_url", "http://gpu-1.internal:8000/v1").unwrap_err().contains("not an IP address")
        );
        // Spelled the way the client reads it: 167772161 is 10.0.0.1, 0x7f000001 is 127.0.0.1,
        // and so is the IPv4-mapped [::ffff:7f00:1].
        assert!(nets.check("agent_url", "http://167772161/").is_ok());
        let outside = |url: &str| nets.check("agent_url", url).unwrap_err();
        assert!(outside("http://0x7f000001/").contains("address 127.0.0.1 is outside"));
        assert!(outside("http://[::ffff:7f00:1]/").contains("address 127.0.0.1 is outside"));
        let loopback = AllowedNets::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(loopback.check("agent_url", "http://0x7f000001/").is_ok());
        assert!(loopback.check("agent_url", "http://[::ffff:7f00:1]/").is_ok(), "mapped is the IPv4 address");
        let everything = AllowedNets::new(vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()]);
        for url in ["http://0.0.0.0:9400/", "http://[::]:9400/", "http://224.0.0.1/", "http://[::ffff:0.0.0.0]/"] {
            assert!(everything.check("agent_url", url).unwrap_err().contains("is not a node's address"), "{url}");
        }
    }
}
