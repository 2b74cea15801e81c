//! A deliberately dumb HTTP/1.1 client over raw TCP or TLS: the request line goes out byte for
//! byte as given, so the server (not a client library) decides what `/%6Detrics` means.

use std::{
    fmt,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    time::Duration,
};

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};

use crate::Target;

/// Responses larger than this are cut (a Prometheus API answer is a few hundred KiB at most).
const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// A virtual host and port as the public sees it (`api.example.com:443`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self { host: host.into(), port }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// Opens a TCP connection to `ep`, through the target's `connect_to` rules, trying each
/// resolved address in turn. The returned address is the one that answered.
pub fn connect(target: &Target, ep: &Endpoint) -> Result<(TcpStream, SocketAddr), String> {
    let (host, port) = target.route(&ep.host, ep.port);
    let addrs: Vec<SocketAddr> =
        (host.as_str(), port).to_socket_addrs().map_err(|e| format!("cannot resolve {host}: {e}"))?.collect();
    let mut last = format!("{host} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, target.timeout) {
            Ok(stream) => {
                stream.set_read_timeout(Some(target.timeout)).ok();
                stream.set_write_timeout(Some(target.timeout)).ok();
                stream.set_nodelay(true).ok();
                return Ok((stream, addr));
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

/// The TLS client for requests: system roots plus the target's CA file, hostname verified.
pub fn verifying_connector(target: &Target) -> Result<SslConnector, String> {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| format!("OpenSSL: {e}"))?;
    if let Some(ca) = &target.ca_file {
        builder.set_ca_file(ca).map_err(|e| format!("cannot load CA file {}: {e}", ca.display()))?;
    }
    builder.set_verify(SslVerifyMode::PEER);
    Ok(builder.build())
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: &'static str,
    /// Sent verbatim as the request target.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn get(path: impl Into<String>) -> Self {
        Self { method: "GET", path: path.into(), headers: Vec::new(), body: Vec::new() }
    }

    pub fn post_json(path: impl Into<String>, body: &serde_json::Value) -> Self {
        Self {
            method: "POST",
            path: path.into(),
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn basic_auth(self, user: &str, password: &str) -> Self {
        let token = openssl::base64::encode_block(format!("{user}:{password}").as_bytes());
        self.header("Authorization", format!("Basic {token}"))
    }

    fn to_bytes(&self, host: &str) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\nHost: {host}\r\n", self.method, self.path);
        out.push_str("User-Agent: pr-hardening\r\nAccept-Encoding: identity\r\nConnection: close\r\n");
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if !self.body.is_empty() || self.method == "POST" {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Does the body look like Prometheus' text exposition format?
    pub fn is_exposition(&self) -> bool {
        let text = self.text();
        text.lines().any(|l| l.starts_with("# TYPE ") || l.starts_with("# HELP "))
    }
}

/// Sends one request on a fresh connection and reads the whole response.
pub fn send(
    target: &Target,
    tls: &SslConnector,
    scheme: Scheme,
    ep: &Endpoint,
    req: &Request,
) -> Result<Response, String> {
    let (tcp, addr) = connect(target, ep)?;
    let raw = match scheme {
        Scheme::Http => exchange(tcp, &req.to_bytes(&ep.host)),
        Scheme::Https => {
            let stream = tls.connect(&ep.host, tcp).map_err(|e| {
                format!("TLS handshake with {addr} failed: {}", crate::tls::describe_handshake_error(&e))
            })?;
            exchange(stream, &req.to_bytes(&ep.host))
        }
    }
    .map_err(|e| format!("{addr}: {e}"))?;
    parse_response(&raw).map_err(|e| format!("{addr}: {e}"))
}

/// Sends one plain-HTTP request on an already open connection.
pub fn send_plain(stream: TcpStream, host: &str, req: &Request) -> Result<Response, String> {
    let timeout = Some(Duration::from_secs(5));
    stream.set_read_timeout(timeout).ok();
    stream.set_write_timeout(timeout).ok();
    parse_response(&exchange(stream, &req.to_bytes(host))?)
}

fn exchange(stream: impl Read + Write, request: &[u8]) -> Result<Vec<u8>, String> {
    match send_bytes(stream, request)? {
        // A TLS peer that closes without close_notify, after a complete response, is common.
        (raw, _) if !raw.is_empty() => Ok(raw),
        (_, Some(e)) => Err(format!("reading the response: {e}")),
        (_, None) => Err("connection closed without a response".to_string()),
    }
}

/// Writes `request` as it is, then reads until the server closes: returns what arrived (empty
/// when it closed without answering) and the read error that ended it, if one did (a timeout,
/// a reset, a TLS peer gone without close_notify).
pub fn send_bytes(mut stream: impl Read + Write, request: &[u8]) -> Result<(Vec<u8>, Option<std::io::Error>), String> {
    stream.write_all(request).and_then(|()| stream.flush()).map_err(|e| format!("sending the request: {e}"))?;
    let mut raw = Vec::new();
    let end = stream.take(MAX_RESPONSE_BYTES).read_to_end(&mut raw).err();
    Ok((raw, end))
}

/// Parses an HTTP/1.x response: status line, headers, body (chunked or not).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("the response has no complete header block")?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x status line: {status_line:?}"));
    }
    let status = code.parse().map_err(|_| format!("bad status line: {status_line:?}"))?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let rest = &raw[head_end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        rest[..len.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").ok_or("truncated chunked body")?;
        let size_field = String::from_utf8_lossy(&data[..line_end]);
        let size_hex = size_field.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if data.len() < size {
            return Err("truncated chunked body".to_string());
        }
        body.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = parse_response(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\nStrict-Transport-Security: max-age=1\r\n\r\nhello-extra",
        )
        .unwrap();
        assert_eq!(plain.status, 404);
        assert_eq!(plain.body, b"hello");
        assert_eq!(plain.header("strict-transport-security"), Some("max-age=1"));

        let chunked = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n# TY\r\na;ext=1\r\nPE x gauge\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(chunked.text(), "# TYPE x gauge");
        assert!(chunked.is_exposition());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    #[test]
    fn request_line_is_sent_verbatim() {
        let bytes = Request::get("/x/../%6Detrics?x=1").basic_auth("u", "p").to_bytes("api.example.com");
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("GET /x/../%6Detrics?x=1 HTTP/1.1\r\nHost: api.example.com\r\n"));
        assert!(text.contains("Authorization: Basic dTpw\r\n"));
    }
}
