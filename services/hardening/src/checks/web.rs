//! Item 3 (HTTP part): HSTS on every HTTPS host, and plain HTTP moving to HTTPS.

use super::Ctx;
use crate::{Item, net::Request};

pub const HSTS: &str = "hsts";
pub const REDIRECT: &str = "http-redirect";

/// 180 days, in seconds.
pub const MIN_HSTS_MAX_AGE: u64 = 180 * 86_400;

pub fn hsts(ctx: &Ctx<'_>) -> Item {
    let mut item = Item::new(HSTS, "HSTS with a max-age of at least 180 days on every host");
    for host in ctx.target.hosts() {
        let url = format!("https://{}/", ctx.https_endpoint(&host));
        let resp = match ctx.https(&host, &Request::get("/")) {
            Ok(r) => r,
            Err(e) => {
                item.fail(format!("{url}: {e}"));
                continue;
            }
        };
        let values = resp.header_all("strict-transport-security");
        let Some(value) = values.first() else {
            item.fail(format!("{url} → {} without a Strict-Transport-Security header", resp.status));
            continue;
        };
        match max_age(value) {
            Some(age) if age >= MIN_HSTS_MAX_AGE => item.note(format!(
                "{url} → {}: Strict-Transport-Security: {value} ({} days)",
                resp.status,
                age / 86_400
            )),
            Some(age) => item.fail(format!(
                "{url}: Strict-Transport-Security: {value}: max-age is {} days, under 180",
                age / 86_400
            )),
            None => item.fail(format!("{url}: Strict-Transport-Security: {value}: no valid max-age")),
        }
        if values.len() > 1 {
            item.note(format!("{url}: {} Strict-Transport-Security headers; browsers use the first", values.len()));
        }
    }
    item
}

/// `max-age` of a Strict-Transport-Security value (RFC 6797: case-insensitive, may be quoted).
pub fn max_age(value: &str) -> Option<u64> {
    value.split(';').find_map(|d| {
        let (name, v) = d.split_once('=')?;
        name.trim().eq_ignore_ascii_case("max-age").then(|| v.trim().trim_matches('"').parse().ok())?
    })
}

pub fn redirect(ctx: &Ctx<'_>) -> Item {
    let mut item = Item::new(REDIRECT, "Plain HTTP redirects to HTTPS on every host");
    for host in ctx.target.hosts() {
        let ep = ctx.http_endpoint(&host);
        let url = format!("http://{ep}/");
        let resp = match ctx.http(&host, &Request::get("/")) {
            Ok(r) => r,
            Err(e) => {
                item.fail(format!("{url}: {e}"));
                continue;
            }
        };
        let location = resp.header("location").unwrap_or("");
        let want = format!("https://{host}");
        let to_same_host_https = location.get(..want.len()).is_some_and(|p| p.eq_ignore_ascii_case(&want))
            && matches!(location[want.len()..].chars().next(), None | Some('/' | ':'));
        if matches!(resp.status, 301 | 302 | 307 | 308) && to_same_host_https {
            item.note(format!("{url} → {} Location: {location}", resp.status));
        } else if matches!(resp.status, 301 | 302 | 307 | 308) {
            item.fail(format!("{url} → {} Location: {location:?}, not https://{host}/", resp.status));
        } else {
            item.fail(format!(
                "{url} → {} instead of a redirect to https://{host}/ (served over plain HTTP)",
                resp.status
            ));
        }
    }
    item
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hsts_max_age() {
        assert_eq!(max_age("max-age=63072000; includeSubDomains"), Some(63_072_000));
        assert_eq!(max_age("includeSubDomains; MAX-AGE=\"15552000\""), Some(15_552_000));
        assert_eq!(max_age("includeSubDomains"), None);
        assert_eq!(max_age("max-age=soon"), None);
        assert!(max_age("max-age=15551999").unwrap() < MIN_HSTS_MAX_AGE);
    }
}
