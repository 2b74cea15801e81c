//! `pr-hardening`: audits a live PrivateRouter deployment from the outside and prints the
//! hardening checklist. Exit status: 0 when every check passes (skipped ones allowed), 1 when
//! any fails, 2 on a usage error.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use privaterouter_hardening::{ConnectTo, Target, audit};

/// Audit a PrivateRouter deployment from the outside: /metrics exposure, TLS versions and
/// suites, HSTS, HTTP redirects, Prometheus' login, retention, alert rules and scrape targets,
/// Grafana's default password.
#[derive(Debug, Parser)]
#[command(name = "pr-hardening", version)]
struct Cli {
    /// The deployment's domain (PR_DOMAIN): api., grafana. and prometheus. under it are audited.
    #[arg(long, env = "PR_DOMAIN")]
    domain: String,

    /// CA certificate(s) to trust besides the system store, PEM (e.g. tls/dev-ca.pem).
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,

    /// Prometheus basic-auth user.
    #[arg(long, env = "PROMETHEUS_BASIC_AUTH_USER", default_value = "prometheus")]
    prometheus_user: String,

    /// Prometheus basic-auth password. Without it, the checks that read Prometheus fail.
    #[arg(long, env = "PROMETHEUS_BASIC_AUTH_PASSWORD", hide_env_values = true)]
    prometheus_password: Option<String>,

    /// Grafana's URL, e.g. https://grafana.example.com. Without it Grafana counts as not
    /// deployed and its default-password check is skipped.
    #[arg(long, value_name = "URL")]
    grafana_url: Option<String>,

    /// Grafana admin login to try with the default password, besides "admin".
    #[arg(long, env = "GRAFANA_ADMIN_USER", default_value = "admin")]
    grafana_user: String,

    /// Connect to CONNECT_HOST:CONNECT_PORT for HOST:PORT (curl's --connect-to; empty fields
    /// match anything / keep the original), e.g. `::203.0.113.7:` for all names and ports,
    /// or `api.example.com:443:127.0.0.1:8443`. Repeatable; the first match wins.
    #[arg(long, value_name = "HOST:PORT:CONNECT_HOST:CONNECT_PORT")]
    connect_to: Vec<ConnectTo>,

    #[arg(long, default_value_t = 443)]
    https_port: u16,

    #[arg(long, default_value_t = 80)]
    http_port: u16,

    /// The API's internal metrics port, which must not be reachable on the public addresses.
    #[arg(long, default_value_t = 9100)]
    metrics_port: u16,

    /// Timeout of each connection, in seconds.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,

    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let report = audit(&Target {
        domain: cli.domain,
        https_port: cli.https_port,
        http_port: cli.http_port,
        metrics_port: cli.metrics_port,
        connect_to: cli.connect_to,
        ca_file: cli.ca_file,
        prometheus_user: cli.prometheus_user,
        prometheus_password: cli.prometheus_password.filter(|p| !p.is_empty()),
        grafana_url: cli.grafana_url,
        grafana_user: cli.grafana_user,
        timeout: Duration::from_secs(cli.timeout_secs.max(1)),
    });
    if cli.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if report.passed { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
