//! The checklist items. Each check is a function from the context to one [`Item`]; they run
//! concurrently (each opens its own connections) and are reported in checklist order.

mod grafana;
mod hosts;
mod metrics;
mod prometheus;
mod tls;
mod web;

use openssl::ssl::SslConnector;

use crate::{
    Item, Report, Target,
    net::{self, Endpoint, Request, Response, Scheme},
};

pub use metrics::SPELLINGS;

/// Ids of every item, in report order.
pub const ITEM_IDS: [&str; 13] = [
    metrics::NOT_PUBLIC,
    metrics::PORT_CLOSED,
    grafana::DEFAULT_PASSWORD,
    tls::PROTOCOLS,
    tls::CIPHERS,
    web::HSTS,
    web::REDIRECT,
    hosts::UNKNOWN_HOST,
    prometheus::AUTH,
    prometheus::RETENTION,
    prometheus::ALERT_RULES,
    prometheus::SCRAPE_TARGETS,
    prometheus::SCRAPE_AUTH,
];

type Check = fn(&Ctx<'_>) -> Item;

pub fn run_all(target: &Target) -> Report {
    let ctx = Ctx::new(target);
    let checks: [Check; 13] = [
        metrics::not_public,
        metrics::port_closed,
        grafana::default_password,
        tls::protocols,
        tls::ciphers,
        web::hsts,
        web::redirect,
        hosts::unknown_host,
        prometheus::auth,
        prometheus::retention,
        prometheus::alert_rules,
        prometheus::scrape_targets,
        prometheus::scrape_auth,
    ];
    let items = std::thread::scope(|s| {
        let handles: Vec<_> = checks
            .iter()
            .map(|check| {
                let ctx = &ctx;
                s.spawn(move || check(ctx))
            })
            .collect();
        handles
            .into_iter()
            .zip(ITEM_IDS)
            .map(|(h, id)| {
                h.join().unwrap_or_else(|_| {
                    let mut item = Item::new(id, "(check crashed)");
                    item.fail("the check panicked; this is a bug in pr-hardening");
                    item
                })
            })
            .collect()
    });
    Report::new(&target.domain, items)
}

/// What every check shares: the target and one verifying TLS client.
pub struct Ctx<'a> {
    pub target: &'a Target,
    tls: Result<SslConnector, String>,
}

impl<'a> Ctx<'a> {
    pub fn new(target: &'a Target) -> Self {
        Self { target, tls: net::verifying_connector(target) }
    }

    pub fn https_endpoint(&self, host: &str) -> Endpoint {
        Endpoint::new(host, self.target.https_port)
    }

    pub fn http_endpoint(&self, host: &str) -> Endpoint {
        Endpoint::new(host, self.target.http_port)
    }

    pub fn send(&self, scheme: Scheme, ep: &Endpoint, req: &Request) -> Result<Response, String> {
        let tls = self.tls.as_ref().map_err(Clone::clone)?;
        net::send(self.target, tls, scheme, ep, req)
    }

    pub fn https(&self, host: &str, req: &Request) -> Result<Response, String> {
        self.send(Scheme::Https, &self.https_endpoint(host), req)
    }

    pub fn http(&self, host: &str, req: &Request) -> Result<Response, String> {
        self.send(Scheme::Http, &self.http_endpoint(host), req)
    }

    /// A request to prometheus.<domain> with the audit's credentials, when it has them.
    pub fn prometheus_request(&self, path: &str) -> Request {
        let req = Request::get(path);
        match &self.target.prometheus_password {
            Some(pw) => req.basic_auth(&self.target.prometheus_user, pw),
            None => req,
        }
    }

    /// GET a Prometheus HTTP API path with credentials; returns its `data`.
    pub fn prometheus_api(&self, path: &str) -> Result<serde_json::Value, String> {
        let host = self.target.prometheus_host();
        let resp = self.https(&host, &self.prometheus_request(path))?;
        let hint = if self.target.prometheus_password.is_none() {
            " (no credentials given: pass --prometheus-password or PROMETHEUS_BASIC_AUTH_PASSWORD)"
        } else {
            ""
        };
        if resp.status != 200 {
            return Err(format!("https://{host}{path} answered {}{hint}", resp.status));
        }
        let body: serde_json::Value =
            serde_json::from_slice(&resp.body).map_err(|e| format!("https://{host}{path}: not JSON ({e})"))?;
        if body["status"] != "success" {
            return Err(format!("https://{host}{path}: {}", body["error"]));
        }
        Ok(body["data"].clone())
    }
}
