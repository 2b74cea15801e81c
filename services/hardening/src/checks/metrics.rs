//! Item 1: `/metrics` is never public, in any spelling, and the API's metrics port is closed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
};

use super::Ctx;
use crate::{
    Item,
    net::{self, Request, Scheme},
};

pub const NOT_PUBLIC: &str = "metrics-not-public";
pub const PORT_CLOSED: &str = "metrics-port-closed";

/// Ways to write `/metrics` that a server may normalise to it: case, %-encoding, extra
/// slashes, dot segments, a trailing slash, parameters and queries. Sent byte for byte.
pub const SPELLINGS: &[&str] = &[
    "/metrics",
    "/METRICS",
    "/Metrics",
    "/%6Detrics",
    "/%6d%65%74%72%69%63%73",
    "/%4D%45%54%52%49%43%53",
    "/%2Fmetrics",
    "//metrics",
    "///metrics",
    "/./metrics",
    "/%2e/metrics",
    "/x/../metrics",
    "/x/%2e%2e/metrics",
    "/metrics/",
    "/metrics?x=1",
    "/metrics;x=1",
    "/metrics/../metrics",
];

pub fn not_public(ctx: &Ctx<'_>) -> Item {
    let mut item = Item::new(NOT_PUBLIC, "/metrics is not served on any public host, in any spelling");
    let t = ctx.target;
    for host in t.hosts() {
        sweep(ctx, &mut item, Scheme::Https, &host, None);
        if host == t.prometheus_host()
            && let Some(pw) = &t.prometheus_password
        {
            // Prometheus' own /metrics sits right behind the basic auth: logging in must not
            // open it either.
            sweep(ctx, &mut item, Scheme::Https, &host, Some((&t.prometheus_user, pw)));
        }
        sweep(ctx, &mut item, Scheme::Http, &host, None);
    }
    item
}

/// Every spelling against one host and scheme. Acceptable: 400/403/404 without exposition
/// text, no answer at all, and on plain HTTP a redirect to https://.
fn sweep(ctx: &Ctx<'_>, item: &mut Item, scheme: Scheme, host: &str, auth: Option<(&str, &str)>) {
    let (ep, url_scheme) = match scheme {
        Scheme::Https => (ctx.https_endpoint(host), "https"),
        Scheme::Http => (ctx.http_endpoint(host), "http"),
    };
    // Outcome → the spellings that got it; failing outcomes carry why.
    let mut outcomes: BTreeMap<String, (Option<&str>, Vec<&str>)> = BTreeMap::new();
    let mut errors = Vec::new();
    for path in SPELLINGS {
        let mut req = Request::get(*path);
        if let Some((user, pw)) = auth {
            req = req.basic_auth(user, pw);
        }
        let (key, why) = match ctx.send(scheme, &ep, &req) {
            Ok(resp) => {
                let redirect_to_https = scheme == Scheme::Http
                    && matches!(resp.status, 301 | 302 | 307 | 308)
                    && resp.header("location").is_some_and(|l| l.to_ascii_lowercase().starts_with("https://"));
                if resp.is_exposition() {
                    (format!("{} with Prometheus exposition text", resp.status), Some("metrics are public"))
                } else if matches!(resp.status, 400 | 403 | 404) || redirect_to_https {
                    (resp.status.to_string(), None)
                } else {
                    (resp.status.to_string(), Some("expected 404: the request got past the ingress's /metrics block"))
                }
            }
            Err(e) => {
                errors.push(e);
                ("no answer".to_string(), None)
            }
        };
        let entry = outcomes.entry(key).or_insert((why, Vec::new()));
        entry.1.push(path);
    }
    let summary: Vec<String> = outcomes.iter().map(|(k, (_, paths))| format!("{k} ×{}", paths.len())).collect();
    let who = if auth.is_some() { " with the Prometheus credentials" } else { "" };
    let base = format!("{url_scheme}://{ep}{who}");
    item.note(format!("{base}: {} spellings → {}", SPELLINGS.len(), summary.join(", ")));
    for (key, (why, paths)) in &outcomes {
        if let Some(why) = why {
            item.fail(format!("{base}: {key} for {}: {why}", paths.join(" ")));
        }
    }
    if errors.len() == SPELLINGS.len() {
        item.fail(format!("{base}: nothing could be verified: {}", errors[0]));
    } else if let Some(first) = errors.first() {
        item.note(format!("{base}: no answer counts as not served: {first}"));
    }
}

pub fn port_closed(ctx: &Ctx<'_>) -> Item {
    let t = ctx.target;
    let mut item = Item::new(PORT_CLOSED, "The API's metrics port is not reachable from outside");
    // Every public address the three names lead to, each probed once.
    let mut addrs: BTreeMap<SocketAddr, BTreeSet<String>> = BTreeMap::new();
    for host in t.hosts() {
        let (to_host, to_port) = t.route(&host, t.metrics_port);
        match (to_host.as_str(), to_port).to_socket_addrs() {
            Ok(list) => {
                for a in list {
                    addrs.entry(a).or_default().insert(host.clone());
                }
            }
            Err(e) => item.fail(format!("cannot resolve {to_host} (for {host}): {e}")),
        }
    }
    for (addr, names) in addrs {
        let names: Vec<_> = names.into_iter().collect();
        let label = format!("{addr} ({}:{})", names.join(", "), t.metrics_port);
        match TcpStream::connect_timeout(&addr, t.timeout) {
            Ok(stream) => {
                // What answers there? (Evidence only: an open port fails the item already.)
                let answer = match net::send_plain(stream, &names[0], &Request::get("/metrics")) {
                    Ok(r) if r.is_exposition() => {
                        format!("GET /metrics → {} with metrics", r.status)
                    }
                    Ok(r) => format!("GET /metrics → {}", r.status),
                    Err(e) => format!("no HTTP answer ({e})"),
                };
                item.fail(format!("{label} accepts TCP connections; {answer}"));
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                item.note(format!("{label}: no answer within {:?} (filtered)", t.timeout));
            }
            Err(e) => item.note(format!("{label}: {e}")),
        }
    }
    item
}
