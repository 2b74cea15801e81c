//! Item 3 (TLS part): protocol versions and cipher suites on the three HTTPS hosts.

use super::Ctx;
use crate::{
    Item,
    tls::{self, ALL_SUITES, Offer, Outcome, Version},
};

pub const PROTOCOLS: &str = "tls-protocols";
pub const CIPHERS: &str = "tls-ciphers";

/// More accepted TLS 1.2 suites than any real server offers: stop enumerating there.
const MAX_SUITES: usize = 64;

pub fn protocols(ctx: &Ctx<'_>) -> Item {
    let mut item = Item::new(PROTOCOLS, "TLS 1.0 and 1.1 refused; TLS 1.2 and 1.3 accepted with a trusted certificate");
    for host in ctx.target.hosts() {
        let ep = ctx.https_endpoint(&host);
        let mut seen = Vec::new();
        for version in Version::ALL {
            let legacy = matches!(version, Version::Tls10 | Version::Tls11);
            // Legacy versions: offer everything, verify nothing, so that only the server's
            // own refusal can make the probe fail. Modern ones: the client an operator's users
            // have, verifying the chain and the name.
            let offer = if legacy {
                Offer { version, suites: Some(ALL_SUITES), verify: false }
            } else {
                Offer { version, suites: None, verify: true }
            };
            match (legacy, tls::probe(ctx.target, &ep, &offer)) {
                (true, Outcome::Accepted(s)) => {
                    item.fail(format!("{ep}: {version} accepted ({})", s.cipher));
                }
                (true, Outcome::Refused(why)) => seen.push(format!("{version} refused ({why})")),
                (false, Outcome::Accepted(s)) => {
                    seen.push(format!("{version} accepted ({}, certificate verified)", s.cipher));
                }
                (false, Outcome::Refused(why)) => {
                    item.fail(format!("{ep}: {version} not accepted: {why}"));
                }
                (_, Outcome::CannotOffer(why)) => item.fail(format!(
                    "{ep}: {version} could not be probed: this machine's OpenSSL cannot offer it ({why})"
                )),
                (_, Outcome::Unreachable(why)) => {
                    item.fail(format!("{ep}: {version} not probed: {why}"));
                }
            }
        }
        if !seen.is_empty() {
            item.note(format!("{ep}: {}", seen.join("; ")));
        }
    }
    item
}

pub fn ciphers(ctx: &Ctx<'_>) -> Item {
    let mut item = Item::new(CIPHERS, "No weak cipher suite accepted (TLS 1.2)");
    for host in ctx.target.hosts() {
        let ep = ctx.https_endpoint(&host);
        // Offer every suite, take the one the server picks, strike it, ask again: the
        // accepted set, one handshake per suite.
        let mut accepted: Vec<tls::Session> = Vec::new();
        let problem = loop {
            let exclusions: String = accepted.iter().map(|s| format!(":!{}", s.cipher)).collect();
            let suites = format!("ALL:COMPLEMENTOFALL{exclusions}:@SECLEVEL=0");
            let offer = Offer { version: Version::Tls12, suites: Some(&suites), verify: false };
            match tls::probe(ctx.target, &ep, &offer) {
                Outcome::Accepted(s) if accepted.len() < MAX_SUITES => accepted.push(s),
                Outcome::Accepted(_) => {
                    item.note(format!("{ep}: stopped after {MAX_SUITES} accepted suites"));
                    break None;
                }
                // Every remaining suite refused: the accepted set is complete.
                Outcome::Refused(_) => break None,
                // Struck every suite this OpenSSL has.
                Outcome::CannotOffer(_) if !accepted.is_empty() => break None,
                Outcome::CannotOffer(why) => {
                    break Some(format!("this machine's OpenSSL cannot offer TLS 1.2 suites ({why})"));
                }
                Outcome::Unreachable(why) => break Some(why),
            }
        };
        if let Some(why) = problem {
            item.fail(format!("{ep}: not probed: {why}"));
            continue;
        }
        if accepted.is_empty() {
            item.note(format!("{ep}: TLS 1.2 accepts no suite at all (nothing weak either)"));
            continue;
        }
        let names: Vec<&str> = accepted.iter().map(|s| s.cipher.as_str()).collect();
        item.note(format!("{ep}: TLS 1.2 accepts {}", names.join(", ")));
        for s in &accepted {
            if let Some(why) = tls::weakness(&s.description) {
                item.fail(format!("{ep}: weak suite {} accepted: {why}", s.cipher));
            }
        }
        let legacy: Vec<&str> =
            accepted.iter().filter(|s| tls::is_legacy_cbc(&s.description)).map(|s| s.cipher.as_str()).collect();
        if !legacy.is_empty() {
            item.note(format!(
                "{ep}: note: CBC suites (forward secret, not AEAD; legacy, not counted as weak): {}",
                legacy.join(", ")
            ));
        }
    }
    item
}
