//! TLS handshake probes: one connection per question ("does this host accept TLS 1.0?", "which
//! TLS 1.2 suites does it accept?"). Probes run at OpenSSL security level 0 with every suite
//! this OpenSSL has, so the answer is the server's, never the local library's policy.

use std::fmt;

use openssl::ssl::{HandshakeError, SslConnector, SslMethod, SslRef, SslVerifyMode, SslVersion};

use crate::{
    Target,
    net::{self, Endpoint},
};

/// Every suite OpenSSL knows, including NULL and anonymous ones, usable at security level 0.
pub const ALL_SUITES: &str = "ALL:COMPLEMENTOFALL:@SECLEVEL=0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

impl Version {
    pub const ALL: [Version; 4] = [Self::Tls10, Self::Tls11, Self::Tls12, Self::Tls13];

    fn openssl(self) -> SslVersion {
        match self {
            Self::Tls10 => SslVersion::TLS1,
            Self::Tls11 => SslVersion::TLS1_1,
            Self::Tls12 => SslVersion::TLS1_2,
            Self::Tls13 => SslVersion::TLS1_3,
        }
    }

    /// OpenSSL's name for the version (`SSL_get_version`).
    fn openssl_name(self) -> &'static str {
        match self {
            Self::Tls10 => "TLSv1",
            Self::Tls11 => "TLSv1.1",
            Self::Tls12 => "TLSv1.2",
            Self::Tls13 => "TLSv1.3",
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tls10 => "TLS 1.0",
            Self::Tls11 => "TLS 1.1",
            Self::Tls12 => "TLS 1.2",
            Self::Tls13 => "TLS 1.3",
        })
    }
}

/// A completed handshake.
#[derive(Debug, Clone)]
pub struct Session {
    pub version: String,
    pub cipher: String,
    /// OpenSSL's one-line description: `NAME VERSION Kx=.. Au=.. Enc=.. Mac=..`.
    pub description: String,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Accepted(Session),
    /// The server refused the handshake (alert or closed connection).
    Refused(String),
    /// The local OpenSSL could not even offer what was asked: nothing was learnt.
    CannotOffer(String),
    /// No TCP connection: nothing was learnt.
    Unreachable(String),
}

/// What the probe offers.
pub struct Offer<'a> {
    pub version: Version,
    /// OpenSSL cipher string for TLS 1.2 and older (ignored for TLS 1.3); `None`: the
    /// library's secure default.
    pub suites: Option<&'a str>,
    /// Verify the certificate chain (system roots + the target's CA file) and the host name.
    pub verify: bool,
}

/// One handshake with `ep`, SNI set to its host name.
pub fn probe(target: &Target, ep: &Endpoint, offer: &Offer<'_>) -> Outcome {
    let connector = match connector(target, offer) {
        Ok(c) => c,
        Err(e) => return Outcome::CannotOffer(e),
    };
    let tcp = match net::connect(target, ep) {
        Ok((tcp, _)) => tcp,
        Err(e) => return Outcome::Unreachable(e),
    };
    let mut config = match connector.configure() {
        Ok(c) => c,
        Err(e) => return Outcome::CannotOffer(e.to_string()),
    };
    if !offer.verify {
        config.set_verify_hostname(false);
    }
    match config.connect(&ep.host, tcp) {
        Ok(stream) => {
            let ssl = stream.ssl();
            let session = session(ssl);
            if session.version != offer.version.openssl_name() {
                // Cannot happen with min = max, but never report a version that was not used.
                return Outcome::Refused(format!("negotiated {} instead", session.version));
            }
            Outcome::Accepted(session)
        }
        Err(e) => {
            let reason = describe_handshake_error(&e);
            if is_local_refusal(&reason) { Outcome::CannotOffer(reason) } else { Outcome::Refused(reason) }
        }
    }
}

fn connector(target: &Target, offer: &Offer<'_>) -> Result<SslConnector, String> {
    let openssl = |e: openssl::error::ErrorStack| format!("local OpenSSL: {e}");
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(openssl)?;
    let v = offer.version.openssl();
    b.set_min_proto_version(Some(v)).map_err(openssl)?;
    b.set_max_proto_version(Some(v)).map_err(openssl)?;
    if offer.verify {
        if let Some(ca) = &target.ca_file {
            b.set_ca_file(ca).map_err(|e| format!("cannot load CA file {}: {e}", ca.display()))?;
        }
        b.set_verify(SslVerifyMode::PEER);
    } else {
        b.set_verify(SslVerifyMode::NONE);
        b.set_security_level(0);
    }
    if let Some(suites) = offer.suites.filter(|_| offer.version != Version::Tls13) {
        b.set_cipher_list(suites).map_err(|e| format!("local OpenSSL has no suite for {suites:?}: {e}"))?;
    }
    Ok(b.build())
}

fn session(ssl: &SslRef) -> Session {
    let (cipher, description) =
        ssl.current_cipher().map(|c| (c.name().to_string(), c.description().trim().to_string())).unwrap_or_default();
    Session { version: ssl.version_str().to_string(), cipher, description }
}

/// The most telling part of a failed handshake: OpenSSL's reason strings, or the I/O error.
pub fn describe_handshake_error<S: fmt::Debug>(e: &HandshakeError<S>) -> String {
    match e {
        HandshakeError::SetupFailure(stack) => reasons(stack),
        HandshakeError::Failure(mid) | HandshakeError::WouldBlock(mid) => {
            let err = mid.error();
            let mut text = err
                .ssl_error()
                .map(reasons)
                .filter(|r| !r.is_empty())
                .or_else(|| err.io_error().map(|io| io.to_string()))
                .unwrap_or_else(|| "connection closed during the handshake".to_string());
            let verify = mid.ssl().verify_result();
            if verify.as_raw() != 0 {
                text = format!("{text} (certificate: {})", verify.error_string());
            }
            text
        }
    }
}

fn reasons(stack: &openssl::error::ErrorStack) -> String {
    let list: Vec<String> = stack.errors().iter().map(|e| e.reason().unwrap_or("unknown error").to_string()).collect();
    list.join("; ")
}

/// Errors that OpenSSL raises before anything is sent (nothing offered that could be used).
fn is_local_refusal(reason: &str) -> bool {
    ["no protocols available", "no ciphers available", "no cipher match"].iter().any(|r| reason.contains(r))
}

/// Why a suite (by OpenSSL description) is weak, or `None` if it is not.
///
/// Weak: no encryption, no authentication, no forward secrecy (RSA or PSK key exchange),
/// export-grade or under 128-bit keys, RC4, RC2, DES, 3DES, IDEA, SEED, MD5. CBC suites with
/// forward secrecy are legacy, not weak: [`is_legacy_cbc`] reports them without failing.
pub fn weakness(description: &str) -> Option<String> {
    let field =
        |name: &str| description.split_whitespace().find_map(|f| f.strip_prefix(name)).unwrap_or("").to_string();
    let (kx, au, enc, mac) = (field("Kx="), field("Au="), field("Enc="), field("Mac="));
    let mut why = Vec::new();
    if enc.eq_ignore_ascii_case("None") {
        why.push("no encryption (NULL)".to_string());
    }
    if au.eq_ignore_ascii_case("None") {
        why.push("anonymous: no server authentication".to_string());
    }
    if matches!(kx.as_str(), "RSA" | "PSK" | "RSAPSK" | "SRP") {
        why.push(format!("no forward secrecy (Kx={kx})"));
    }
    let enc_upper = enc.to_ascii_uppercase();
    if let Some(broken) = ["RC4", "RC2", "3DES", "DES", "IDEA", "SEED"].iter().find(|c| enc_upper.starts_with(*c)) {
        why.push(format!("broken or obsolete cipher {broken}"));
    }
    let bits = enc.split_once('(').and_then(|(_, b)| b.trim_end_matches(')').parse::<u32>().ok());
    if matches!(bits, Some(b) if b < 128) {
        why.push(format!("{} bit key", bits.unwrap_or_default()));
    }
    if mac.eq_ignore_ascii_case("MD5") {
        why.push("MD5 MAC".to_string());
    }
    if description.contains("export") || description.contains("EXP-") {
        why.push("export grade".to_string());
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// A suite with forward secrecy and a real cipher, but CBC with HMAC instead of an AEAD.
pub fn is_legacy_cbc(description: &str) -> bool {
    weakness(description).is_none() && !description.contains("Mac=AEAD")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_suites_by_openssl_description() {
        let good = "ECDHE-ECDSA-AES128-GCM-SHA256 TLSv1.2 Kx=ECDH Au=ECDSA Enc=AESGCM(128) Mac=AEAD";
        assert_eq!(weakness(good), None);
        assert!(!is_legacy_cbc(good));
        let cbc = "ECDHE-ECDSA-AES128-SHA TLSv1 Kx=ECDH Au=ECDSA Enc=AES(128) Mac=SHA1";
        assert_eq!(weakness(cbc), None);
        assert!(is_legacy_cbc(cbc));
        let null = "ECDHE-ECDSA-NULL-SHA TLSv1 Kx=ECDH Au=ECDSA Enc=None Mac=SHA1";
        assert!(weakness(null).unwrap().contains("NULL"));
        let anon = "AECDH-AES128-SHA TLSv1 Kx=ECDH Au=None Enc=AES(128) Mac=SHA1";
        assert!(weakness(anon).unwrap().contains("anonymous"));
        let rsa = "AES128-GCM-SHA256 TLSv1.2 Kx=RSA Au=RSA Enc=AESGCM(128) Mac=AEAD";
        assert!(weakness(rsa).unwrap().contains("forward secrecy"));
        let des = "DES-CBC3-SHA SSLv3 Kx=RSA Au=RSA Enc=3DES(168) Mac=SHA1";
        assert!(weakness(des).unwrap().contains("3DES"));
        let rc4 = "RC4-MD5 SSLv3 Kx=RSA Au=RSA Enc=RC4(128) Mac=MD5";
        let why = weakness(rc4).unwrap();
        assert!(why.contains("RC4") && why.contains("MD5"));
        let short = "EXP-DES-CBC-SHA SSLv3 Kx=RSA(512) Au=RSA Enc=DES(40) Mac=SHA1 export";
        assert!(weakness(short).unwrap().contains("40 bit"));
    }
}
