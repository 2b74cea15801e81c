//! Item 2: Grafana refuses its factory login, admin/admin.

use super::Ctx;
use crate::{
    Item,
    net::{Endpoint, Request, Scheme},
};

pub const DEFAULT_PASSWORD: &str = "grafana-default-password";
const TITLE: &str = "Grafana refuses the default admin/admin login";

/// Grafana's factory password.
const DEFAULT: &str = "admin";

pub fn default_password(ctx: &Ctx<'_>) -> Item {
    let item = Item::new(DEFAULT_PASSWORD, TITLE);
    let Some(url) = &ctx.target.grafana_url else {
        return item.skip("not deployed (no --grafana-url given); Grafana's password was not checked");
    };
    check(ctx, url, item)
}

fn check(ctx: &Ctx<'_>, url: &str, mut item: Item) -> Item {
    let (scheme, ep, base) = match parse_url(url) {
        Ok(parts) => parts,
        Err(e) => {
            item.fail(e);
            return item;
        }
    };
    // Is it Grafana at all? Otherwise a 401 from anything would look like a pass.
    match ctx.send(scheme, &ep, &Request::get(format!("{base}/api/health"))) {
        Ok(r) if r.status == 200 && r.text().contains("\"database\"") => {
            item.note(format!("{url}/api/health → 200 (Grafana answers)"));
        }
        Ok(r) => {
            item.fail(format!("{url}/api/health → {}: no Grafana there, nothing was checked", r.status));
            return item;
        }
        Err(e) => {
            item.fail(format!("{url}: {e}"));
            return item;
        }
    }
    let mut users = vec!["admin".to_string()];
    if ctx.target.grafana_user != "admin" {
        users.push(ctx.target.grafana_user.clone());
    }
    for user in users {
        // The API with basic auth, and the login form's JSON endpoint: either one accepting
        // the default password is a failure.
        let api = Request::get(format!("{base}/api/user")).basic_auth(&user, DEFAULT);
        let login =
            Request::post_json(format!("{base}/login"), &serde_json::json!({"user": user, "password": DEFAULT}));
        for (what, req) in [("GET /api/user (basic auth)", api), ("POST /login", login)] {
            match ctx.send(scheme, &ep, &req) {
                Ok(r) if r.status == 200 => {
                    item.fail(format!("{user}/{DEFAULT}: {what} → 200: the default password works"));
                }
                Ok(r) if matches!(r.status, 401 | 403) => {
                    item.note(format!("{user}/{DEFAULT}: {what} → {} (refused)", r.status));
                }
                Ok(r) => item.fail(format!(
                    "{user}/{DEFAULT}: {what} → {}: neither accepted nor refused; check by hand",
                    r.status
                )),
                Err(e) => item.fail(format!("{user}/{DEFAULT}: {what}: {e}")),
            }
        }
    }
    item
}

/// `http[s]://host[:port][/base]` → scheme, endpoint, base path without a trailing slash.
fn parse_url(url: &str) -> Result<(Scheme, Endpoint, String), String> {
    let bad = || format!("--grafana-url {url:?} is not http[s]://HOST[:PORT][/PATH]");
    let (scheme, rest, default_port) = if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest, 443)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest, 80)
    } else {
        return Err(bad());
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = match authority.strip_prefix('[') {
        // [IPv6]:port
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            match after.strip_prefix(':') {
                Some(p) => (host, p.parse().map_err(|_| bad())?),
                None if after.is_empty() => (host, default_port),
                None => return Err(bad()),
            }
        }
        None => match authority.split_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
            None => (authority, default_port),
        },
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((scheme, Endpoint::new(host, port), path.trim_end_matches('/').to_string()))
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::TcpListener,
        thread,
    };

    use super::*;
    use crate::{Status, Target};

    #[test]
    fn parses_grafana_urls() {
        let (s, ep, base) = parse_url("https://grafana.example.com").unwrap();
        assert_eq!((s, ep.host.as_str(), ep.port, base.as_str()), (Scheme::Https, "grafana.example.com", 443, ""));
        let (s, ep, base) = parse_url("http://127.0.0.1:3000/grafana/").unwrap();
        assert_eq!((s, ep.host.as_str(), ep.port, base.as_str()), (Scheme::Http, "127.0.0.1", 3000, "/grafana"));
        let (_, ep, _) = parse_url("https://[::1]:8443").unwrap();
        assert_eq!((ep.host.as_str(), ep.port), ("::1", 8443));
        assert_eq!(parse_url("https://[::1]").unwrap().1.port, 443);
        assert!(parse_url("grafana.example.com").is_err());
        assert!(parse_url("https://host:http").is_err());
    }

    /// A stand-in Grafana on loopback: `/api/health` like Grafana's, and a login that accepts
    /// admin/admin only when `default_works`.
    fn fake_grafana(default_works: bool) -> (u16, thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = thread::spawn(move || {
            // health + 2 attempts for the one user.
            for _ in 0..3 {
                let (mut s, _) = listener.accept().unwrap();
                let req = read_request(&mut s);
                let admin_admin = req.contains("Basic YWRtaW46YWRtaW4=") || req.contains(r#""password":"admin""#);
                let (status, body) = if req.starts_with("GET /api/health") {
                    ("200 OK", r#"{"database":"ok","version":"12.4.2"}"#)
                } else if admin_admin && default_works {
                    ("200 OK", r#"{"message":"Logged in"}"#)
                } else {
                    ("401 Unauthorized", r#"{"message":"Invalid username or password"}"#)
                };
                let _ =
                    write!(s, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            }
        });
        (port, handle)
    }

    /// Reads the header block and a Content-Length body.
    fn read_request(s: &mut impl Read) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if n == 0 || buf.len() >= end + 4 + len {
                    return text;
                }
            } else if n == 0 {
                return text;
            }
        }
    }

    fn run(default_works: bool) -> Item {
        let (port, server) = fake_grafana(default_works);
        let mut target = Target::new("example.test");
        target.grafana_url = Some(format!("http://127.0.0.1:{port}"));
        let ctx = Ctx::new(&target);
        let item = default_password(&ctx);
        server.join().unwrap();
        item
    }

    #[test]
    fn fails_when_admin_admin_logs_in() {
        let item = run(true);
        assert_eq!(item.status, Status::Fail, "{:#?}", item.evidence);
        assert!(item.evidence.iter().any(|e| e.contains("the default password works")));
    }

    #[test]
    fn passes_when_admin_admin_is_refused() {
        let item = run(false);
        assert_eq!(item.status, Status::Pass, "{:#?}", item.evidence);
        assert_eq!(item.evidence.iter().filter(|e| e.contains("(refused)")).count(), 2);
    }

    #[test]
    fn is_skipped_without_a_url() {
        let target = Target::new("example.test");
        let item = default_password(&Ctx::new(&target));
        assert_eq!(item.status, Status::Skipped);
        assert!(item.evidence[0].starts_with("skipped: not deployed"));
    }
}
