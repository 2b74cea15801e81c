//! Item 3 (virtual hosts): a request for any host but the three (an unknown name, an IP address,
//! no Host at all), or for another of the three than its TLS handshake named, gets no content.

use std::{
    io::ErrorKind,
    net::{IpAddr, TcpStream},
};

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};

use super::Ctx;
use crate::{
    Item,
    net::{self, Endpoint, Scheme},
};

pub const UNKNOWN_HOST: &str = "unknown-host";

/// The name the probes ask for: under the domain (so a wildcard certificate or DNS entry would
/// cover it), served by nobody.
pub fn unknown_name(domain: &str) -> String {
    format!("unknown-host-probe.{domain}")
}

/// What a probe puts in its Host header.
enum Host {
    Name(String),
    /// The address the connection went to, as a scanner that knows only the IP sends it.
    PeerIp,
    /// No Host header.
    Absent,
}

struct Probe {
    scheme: Scheme,
    /// TLS only: the SNI name; `None` sends none.
    sni: Option<String>,
    host: Host,
    /// The request target: a path or an absolute URI.
    target: String,
    /// `HTTP/1.1` or `HTTP/1.0` (where a missing Host is allowed).
    version: &'static str,
    /// Plain HTTP sent to the TLS port, without a handshake (`scheme` is then `Https`, for the
    /// port): nginx answers it with an error page of its own unless told otherwise.
    plain_on_tls: bool,
}

pub fn unknown_host(ctx: &Ctx<'_>) -> Item {
    let mut item = Item::new(UNKNOWN_HOST, "Unknown hosts (and SNI/Host mismatches) get no content on 443 and 80");
    let connector = match no_verify_connector() {
        Ok(c) => c,
        Err(e) => {
            item.fail(e);
            return item;
        }
    };
    let t = ctx.target;
    let known = t.hosts();
    for probe in probes(&known, &unknown_name(&t.domain)) {
        // Every connection goes where api.<domain> goes (--connect-to included): the server
        // that owns the three names is the one asked about the others.
        let ep = match probe.scheme {
            Scheme::Https => ctx.https_endpoint(&known[0]),
            Scheme::Http => ctx.http_endpoint(&known[0]),
        };
        let label = probe.describe(ep.port);
        match run(ctx, &connector, &ep, &probe, &known) {
            Ok(Verdict::Refused(what)) => item.note(format!("{label} → {what}")),
            Ok(Verdict::Content(what)) => item.fail(format!("{label} → {what}")),
            Err(e) => item.fail(format!("{label}: not probed: {e}")),
        }
    }
    item
}

/// The requests that must get nothing. `known` is api., grafana., prometheus.<domain>.
fn probes(known: &[String; 3], unknown: &str) -> Vec<Probe> {
    let api = &known[0];
    let probe = |scheme, sni: Option<&str>, host, target: &str, version| Probe {
        scheme,
        sni: sni.map(str::to_string),
        host,
        target: target.to_string(),
        version,
        plain_on_tls: false,
    };
    let name = |n: &str| Host::Name(n.to_string());
    let mut list = vec![
        // A handshake for a known host, then a request for another.
        probe(Scheme::Https, Some(api), name(unknown), "/", "HTTP/1.1"),
        probe(Scheme::Https, Some(api), Host::PeerIp, "/", "HTTP/1.1"),
        probe(Scheme::Https, Some(api), Host::Absent, "/", "HTTP/1.1"),
        probe(Scheme::Https, Some(api), Host::Absent, "/", "HTTP/1.0"),
        probe(Scheme::Https, Some(api), name(api), &format!("https://{unknown}/"), "HTTP/1.1"),
        // An unknown name in the handshake, or none (a scanner that only knows the address).
        probe(Scheme::Https, Some(unknown), name(unknown), "/", "HTTP/1.1"),
        probe(Scheme::Https, None, Host::PeerIp, "/", "HTTP/1.1"),
        // Plain HTTP: no redirect (to wherever Host points) either.
        probe(Scheme::Http, None, name(unknown), "/", "HTTP/1.1"),
        probe(Scheme::Http, None, Host::PeerIp, "/", "HTTP/1.1"),
        probe(Scheme::Http, None, Host::Absent, "/", "HTTP/1.1"),
        probe(Scheme::Http, None, Host::Absent, "/", "HTTP/1.0"),
        probe(Scheme::Http, None, name(api), &format!("http://{unknown}/"), "HTTP/1.1"),
        // Plain HTTP to the TLS port.
        Probe { plain_on_tls: true, ..probe(Scheme::Https, None, name(unknown), "/", "HTTP/1.1") },
    ];
    // Each host's handshake with the next host's name in Host: nginx picks the server block by
    // Host, so without a check this reaches the other host's content.
    for (i, sni) in known.iter().enumerate() {
        let other = &known[(i + 1) % known.len()];
        list.push(probe(Scheme::Https, Some(sni), name(other), "/", "HTTP/1.1"));
    }
    list
}

impl Probe {
    fn describe(&self, port: u16) -> String {
        let conn = match (self.scheme, &self.sni) {
            _ if self.plain_on_tls => format!("plain http to the TLS port :{port}"),
            (Scheme::Https, Some(sni)) => format!("https :{port} SNI {sni}"),
            (Scheme::Https, None) => format!("https :{port} no SNI"),
            (Scheme::Http, _) => format!("http :{port}"),
        };
        let host = match &self.host {
            Host::Name(n) => format!("Host: {n}"),
            Host::PeerIp => "Host: <IP address>".to_string(),
            Host::Absent => "no Host".to_string(),
        };
        format!("{conn}, GET {} {}, {host}", self.target, self.version)
    }

    fn request(&self, peer: IpAddr) -> Vec<u8> {
        let host = match &self.host {
            Host::Name(n) => format!("Host: {n}\r\n"),
            Host::PeerIp if peer.is_ipv6() => format!("Host: [{peer}]\r\n"),
            Host::PeerIp => format!("Host: {peer}\r\n"),
            Host::Absent => String::new(),
        };
        format!(
            "GET {} {}\r\n{host}User-Agent: pr-hardening\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n",
            self.target, self.version
        )
        .into_bytes()
    }
}

enum Verdict {
    /// Nothing served: what happened instead.
    Refused(String),
    /// Something served: what.
    Content(String),
}

fn run(
    ctx: &Ctx<'_>,
    connector: &SslConnector,
    ep: &Endpoint,
    probe: &Probe,
    known: &[String; 3],
) -> Result<Verdict, String> {
    let (tcp, addr) = net::connect(ctx.target, ep)?;
    let request = probe.request(addr.ip());
    let reply = match probe.scheme {
        _ if probe.plain_on_tls => net::send_bytes(tcp, &request),
        Scheme::Http => net::send_bytes(tcp, &request),
        Scheme::Https => match handshake(connector, tcp, probe.sni.as_deref()) {
            Ok(stream) => net::send_bytes(stream, &request),
            Err(why) if probe.sni.as_ref().is_some_and(|s| known.contains(s)) => {
                // The handshake for one of our own names must work, or nothing was tested.
                return Err(format!("TLS handshake with {addr} failed: {why}"));
            }
            Err(why) => return Ok(Verdict::Refused(format!("TLS handshake refused ({why})"))),
        },
    };
    let (raw, end) = match reply {
        Ok(reply) => reply,
        // The server closed before the request was even written.
        Err(e) => return Ok(Verdict::Refused(format!("connection closed ({e})"))),
    };
    Ok(judge(&raw, end))
}

/// Passing: closed without an answer, or a non-2xx/3xx status with an empty body.
fn judge(raw: &[u8], end: Option<std::io::Error>) -> Verdict {
    if raw.is_empty() {
        return match end {
            Some(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
                Verdict::Content(format!("no answer and no close within the timeout ({e}); expected 421 or a close"))
            }
            Some(e) => Verdict::Refused(format!("connection closed without an answer ({e})")),
            None => Verdict::Refused("connection closed without an answer".to_string()),
        };
    }
    let resp = match net::parse_response(raw) {
        Ok(r) => r,
        Err(e) => return Verdict::Content(format!("an answer that is not HTTP ({e})")),
    };
    let status = resp.status;
    if (200..400).contains(&status) {
        let location = resp.header("location").map(|l| format!(" Location: {l}")).unwrap_or_default();
        return Verdict::Content(format!("{status}{location} ({} byte body): served", resp.body.len()));
    }
    if !resp.body.is_empty() {
        let start: String = resp.text().chars().take(60).collect();
        return Verdict::Content(format!("{status} with a {} byte body ({start:?}…)", resp.body.len()));
    }
    Verdict::Refused(format!("{status}, no body"))
}

/// Any certificate, any name: the probes are about what is served, not whom it is served by.
fn no_verify_connector() -> Result<SslConnector, String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| format!("local OpenSSL: {e}"))?;
    b.set_verify(SslVerifyMode::NONE);
    Ok(b.build())
}

fn handshake(
    connector: &SslConnector,
    tcp: TcpStream,
    sni: Option<&str>,
) -> Result<openssl::ssl::SslStream<TcpStream>, String> {
    let mut config = connector.configure().map_err(|e| format!("local OpenSSL: {e}"))?;
    config.set_verify_hostname(false);
    config.set_use_server_name_indication(sni.is_some());
    config.connect(sni.unwrap_or("no-sni.invalid"), tcp).map_err(|e| crate::tls::describe_handshake_error(&e))
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::TcpListener,
        sync::Arc,
        thread,
    };

    use openssl::{
        asn1::Asn1Time,
        bn::BigNum,
        ec::{EcGroup, EcKey},
        hash::MessageDigest,
        nid::Nid,
        pkey::PKey,
        ssl::{NameType, SniError, SslAcceptor, SslAlert},
        x509::{X509, X509NameBuilder},
    };

    use super::*;
    use crate::{ConnectTo, Status, Target};

    const DOMAIN: &str = "example.test";

    /// How a stand-in server treats requests.
    #[derive(Clone, Copy, PartialEq)]
    enum Server {
        /// Every name accepted, everything answered 200 with a page (nginx with no default
        /// server of its own: Debian's welcome page).
        Careless,
        /// Unknown SNI or none refused; over TLS everything 421 without a body; plain HTTP
        /// closed without an answer.
        Strict,
        /// Like Strict, but a request whose Host is one of the three is served, whatever the
        /// handshake said (routing by Host alone).
        RoutesByHost,
    }

    fn known() -> [String; 3] {
        Target::new(DOMAIN).hosts()
    }

    fn acceptor(server: Server) -> SslAcceptor {
        let key =
            PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap())
                .unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", DOMAIN).unwrap();
        let name = name.build();
        let mut cert = X509::builder().unwrap();
        cert.set_version(2).unwrap();
        cert.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap()).unwrap();
        cert.set_subject_name(&name).unwrap();
        cert.set_issuer_name(&name).unwrap();
        cert.set_pubkey(&key).unwrap();
        cert.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
        cert.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
        cert.sign(&key, MessageDigest::sha256()).unwrap();
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        b.set_private_key(&key).unwrap();
        b.set_certificate(&cert.build()).unwrap();
        if server != Server::Careless {
            b.set_servername_callback(|ssl, alert| match ssl.servername(NameType::HOST_NAME) {
                Some(name) if known().iter().any(|k| k.eq_ignore_ascii_case(name)) => Ok(()),
                _ => {
                    *alert = SslAlert::UNRECOGNIZED_NAME;
                    Err(SniError::ALERT_FATAL)
                }
            });
        }
        b.build()
    }

    fn read_head(s: &mut impl Read) -> String {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
            buf.push(byte[0]);
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Answers one connection, plain or TLS, the way `server` does.
    fn answer(mut s: impl Read + Write, tls: bool, server: Server) {
        let head = read_head(&mut s);
        let host = head.lines().find_map(|l| l.strip_prefix("Host: ")).unwrap_or("");
        let served = server == Server::Careless
            || (server == Server::RoutesByHost && known().iter().any(|k| k.eq_ignore_ascii_case(host)));
        let _ = if served {
            let body = "<title>Welcome to nginx!</title>";
            write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
        } else if tls {
            write!(s, "HTTP/1.1 421 Misdirected Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        } else {
            Ok(())
        };
    }

    /// A stand-in on two loopback ports (TLS, plain) for the rest of the test process.
    fn stand_in(server: Server) -> (u16, u16) {
        let acceptor = Arc::new(acceptor(server));
        let tls = TcpListener::bind("127.0.0.1:0").unwrap();
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        let ports = (tls.local_addr().unwrap().port(), plain.local_addr().unwrap().port());
        thread::spawn(move || {
            for s in tls.incoming().flatten() {
                // Plain HTTP on the TLS port (no handshake record first) is answered as nginx
                // does there: like any other request for that server.
                let mut first = [0u8; 1];
                if s.peek(&mut first).is_ok_and(|n| n == 1) && first[0] != 0x16 {
                    answer(s, true, server);
                } else if let Ok(stream) = acceptor.accept(s) {
                    answer(stream, true, server);
                }
            }
        });
        thread::spawn(move || {
            for s in plain.incoming().flatten() {
                answer(s, false, server);
            }
        });
        ports
    }

    fn audit(server: Server) -> Item {
        let (tls, plain) = stand_in(server);
        let mut target = Target::new(DOMAIN);
        target.connect_to = vec![
            format!(":443:127.0.0.1:{tls}").parse::<ConnectTo>().unwrap(),
            format!(":80:127.0.0.1:{plain}").parse::<ConnectTo>().unwrap(),
        ];
        target.timeout = std::time::Duration::from_secs(5);
        unknown_host(&Ctx::new(&target))
    }

    fn failures(item: &Item) -> Vec<&str> {
        item.evidence.iter().filter(|e| e.starts_with("FAIL")).map(String::as_str).collect()
    }

    #[test]
    fn a_server_that_serves_every_name_fails() {
        let item = audit(Server::Careless);
        assert_eq!(item.status, Status::Fail);
        let probes = probes(&known(), &unknown_name(DOMAIN)).len();
        assert_eq!(failures(&item).len(), probes, "every probe got the page: {:#?}", item.evidence);
        let text = item.evidence.join("\n");
        assert!(
            text.contains(
                "FAIL: https :443 SNI api.example.test, GET / HTTP/1.1, Host: unknown-host-probe.example.test → 200 (32 byte body): served"
            ),
            "{text}"
        );
        assert!(text.contains("FAIL: http :80, GET / HTTP/1.0, no Host → 200"), "{text}");
    }

    #[test]
    fn a_server_that_refuses_unknown_names_passes() {
        let item = audit(Server::Strict);
        assert_eq!(item.status, Status::Pass, "{:#?}", item.evidence);
        let text = item.evidence.join("\n");
        assert!(text.contains("SNI unknown-host-probe.example.test, GET / HTTP/1.1, Host: unknown-host-probe.example.test → TLS handshake refused"), "{text}");
        assert!(text.contains("no SNI, GET / HTTP/1.1, Host: <IP address> → TLS handshake refused"), "{text}");
        assert!(
            text.contains("SNI api.example.test, GET / HTTP/1.1, Host: grafana.example.test → 421, no body"),
            "{text}"
        );
        assert!(
            text.contains("http :80, GET / HTTP/1.1, Host: <IP address> → connection closed without an answer"),
            "{text}"
        );
        assert!(
            text.contains(
                "plain http to the TLS port :443, GET / HTTP/1.1, Host: unknown-host-probe.example.test → 421, no body"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_server_that_routes_by_host_alone_fails_on_sni_mismatches() {
        let item = audit(Server::RoutesByHost);
        let fails = failures(&item);
        for (sni, host) in [("api", "grafana"), ("grafana", "prometheus"), ("prometheus", "api")] {
            let want = format!("SNI {sni}.{DOMAIN}, GET / HTTP/1.1, Host: {host}.{DOMAIN} → 200");
            assert!(fails.iter().any(|f| f.contains(&want)), "no failure {want:?} in {fails:#?}");
        }
        assert!(!fails.iter().any(|f| f.contains("Host: unknown-host-probe")), "{fails:#?}");
    }
}
