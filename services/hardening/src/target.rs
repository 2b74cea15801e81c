//! What to audit: the domain (three virtual hosts under it), how to reach them, what to trust
//! and which credentials the audit may use.

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

/// The deployment under audit.
#[derive(Debug, Clone)]
pub struct Target {
    /// `PR_DOMAIN`: the hosts are `api.`, `grafana.` and `prometheus.` under it.
    pub domain: String,
    pub https_port: u16,
    pub http_port: u16,
    /// The API's internal metrics listener port, which must not answer on any public address.
    pub metrics_port: u16,
    /// Like curl's `--connect-to`: where to open the TCP connection for a host and port,
    /// while SNI and `Host` still name the virtual host. First match wins.
    pub connect_to: Vec<ConnectTo>,
    /// Extra CA certificate(s) to trust (PEM), e.g. the development CA; the system store is
    /// always trusted too.
    pub ca_file: Option<PathBuf>,
    pub prometheus_user: String,
    /// Without it, the checks that read Prometheus' API fail: they cannot be verified.
    pub prometheus_password: Option<String>,
    /// Base URL of Grafana (e.g. `https://grafana.example.com`). Not given: Grafana is taken as
    /// not deployed and its password check is skipped.
    pub grafana_url: Option<String>,
    /// Grafana admin login name to try with the default password, besides `admin`.
    pub grafana_user: String,
    /// Connect, read and write timeout of every single connection.
    pub timeout: Duration,
}

impl Target {
    pub fn new(domain: impl Into<String>) -> Self {
        Self {
            domain: domain.into(),
            https_port: 443,
            http_port: 80,
            metrics_port: 9100,
            connect_to: Vec::new(),
            ca_file: None,
            prometheus_user: "prometheus".to_string(),
            prometheus_password: None,
            grafana_url: None,
            grafana_user: "admin".to_string(),
            timeout: Duration::from_secs(10),
        }
    }

    pub fn api_host(&self) -> String {
        format!("api.{}", self.domain)
    }

    pub fn grafana_host(&self) -> String {
        format!("grafana.{}", self.domain)
    }

    pub fn prometheus_host(&self) -> String {
        format!("prometheus.{}", self.domain)
    }

    /// The three public virtual hosts, in checklist order.
    pub fn hosts(&self) -> [String; 3] {
        [self.api_host(), self.grafana_host(), self.prometheus_host()]
    }

    /// Where a connection for `host:port` really goes, after the `connect_to` rules.
    pub fn route(&self, host: &str, port: u16) -> (String, u16) {
        for rule in &self.connect_to {
            if let Some(to) = rule.apply(host, port) {
                return to;
            }
        }
        (host.to_string(), port)
    }
}

/// `HOST:PORT:CONNECT_HOST:CONNECT_PORT`, curl's `--connect-to` syntax: an empty HOST or PORT
/// matches any, an empty CONNECT_HOST or CONNECT_PORT keeps the original. IPv6 addresses go
/// in brackets (`[::1]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTo {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub to_host: Option<String>,
    pub to_port: Option<u16>,
}

impl ConnectTo {
    pub fn new(host: &str, port: u16, to_host: &str, to_port: u16) -> Self {
        Self {
            host: Some(host.to_string()),
            port: Some(port),
            to_host: Some(to_host.to_string()),
            to_port: Some(to_port),
        }
    }

    fn apply(&self, host: &str, port: u16) -> Option<(String, u16)> {
        let host_ok = self.host.as_deref().is_none_or(|h| h.eq_ignore_ascii_case(host));
        let port_ok = self.port.is_none_or(|p| p == port);
        (host_ok && port_ok)
            .then(|| (self.to_host.clone().unwrap_or_else(|| host.to_string()), self.to_port.unwrap_or(port)))
    }
}

impl FromStr for ConnectTo {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not HOST:PORT:CONNECT_HOST:CONNECT_PORT");
        // Split on ':' outside of [...] (IPv6 literals).
        let mut fields = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (i, c) in s.char_indices() {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                ':' if depth == 0 => {
                    fields.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        fields.push(&s[start..]);
        let [host, port, to_host, to_port] = fields[..] else {
            return Err(bad());
        };
        let text = |f: &str| {
            let f = f.trim_start_matches('[').trim_end_matches(']');
            (!f.is_empty()).then(|| f.to_string())
        };
        let number = |f: &str| -> Result<Option<u16>, String> {
            if f.is_empty() { Ok(None) } else { f.parse().map(Some).map_err(|_| bad()) }
        };
        Ok(Self { host: text(host), port: number(port)?, to_host: text(to_host), to_port: number(to_port)? })
    }
}

impl fmt::Display for ConnectTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = |h: &Option<String>| match h {
            Some(h) if h.contains(':') => format!("[{h}]"),
            Some(h) => h.clone(),
            None => String::new(),
        };
        let port = |p: &Option<u16>| p.map(|p| p.to_string()).unwrap_or_default();
        write!(f, "{}:{}:{}:{}", host(&self.host), port(&self.port), host(&self.to_host), port(&self.to_port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_to_parses_curl_syntax() {
        let rule: ConnectTo = "api.example.com:443:127.0.0.1:32768".parse().unwrap();
        assert_eq!(rule, ConnectTo::new("api.example.com", 443, "127.0.0.1", 32768));
        let any: ConnectTo = "::[::1]:".parse().unwrap();
        assert_eq!(any.host, None);
        assert_eq!(any.port, None);
        assert_eq!(any.to_host.as_deref(), Some("::1"));
        assert_eq!(any.to_port, None);
        assert_eq!(any.to_string(), "::[::1]:");
        assert!("api.example.com:443".parse::<ConnectTo>().is_err());
        assert!("a:x:b:1".parse::<ConnectTo>().is_err());
    }

    #[test]
    fn routes_first_matching_rule_and_keeps_the_rest() {
        let mut t = Target::new("example.com");
        t.connect_to = vec!["api.example.com:443:127.0.0.1:1001".parse().unwrap(), ":443:127.0.0.2:".parse().unwrap()];
        assert_eq!(t.route("API.example.com", 443), ("127.0.0.1".to_string(), 1001));
        assert_eq!(t.route("grafana.example.com", 443), ("127.0.0.2".to_string(), 443));
        assert_eq!(t.route("grafana.example.com", 80), ("grafana.example.com".to_string(), 80));
    }
}
