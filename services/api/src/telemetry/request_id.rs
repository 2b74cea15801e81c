//! Request ids: a client's `X-Request-ID` is kept only when it is one header of 1–128 characters
//! from `[A-Za-z0-9._:-]`; anything else is replaced, so a hostile header cannot forge or break a
//! log line or a response header.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A generated id is kept inline (cloning copies 32 bytes, no allocation); a client's id is kept
/// as its header value (cloning shares the bytes). Both are ASCII by construction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestId {
    Generated([u8; 32]),
    Client(HeaderValue),
}

impl RequestId {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut values = headers.get_all(&X_REQUEST_ID).iter();
        match (values.next(), values.next()) {
            (Some(value), None) if is_valid(value.as_bytes()) => Self::Client(value.clone()),
            _ => Self::generate(),
        }
    }

    pub fn generate() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut n = rand::random::<u128>();
        let mut out = [0u8; 32];
        for byte in out.iter_mut().rev() {
            *byte = HEX[(n & 0xf) as usize];
            n >>= 4;
        }
        Self::Generated(out)
    }

    pub fn as_str(&self) -> &str {
        // Only validated or generated ASCII is ever stored.
        match self {
            Self::Generated(bytes) => std::str::from_utf8(bytes).unwrap_or_default(),
            Self::Client(value) => value.to_str().unwrap_or_default(),
        }
    }

    pub fn header_value(&self) -> HeaderValue {
        match self {
            Self::Generated(bytes) => HeaderValue::from_bytes(bytes).expect("hex digits are a valid header value"),
            Self::Client(value) => value.clone(),
        }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub fn is_valid(bytes: &[u8]) -> bool {
    (1..=128).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&[u8]]) -> RequestId {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(&X_REQUEST_ID, HeaderValue::from_bytes(v).unwrap());
        }
        RequestId::from_headers(&headers)
    }

    fn is_generated(id: &RequestId) -> bool {
        id.as_str().len() == 32 && id.as_str().bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    }

    #[test]
    fn keeps_valid_client_ids_verbatim() {
        for ok in ["a", "trace-1.2_3:4", &"x".repeat(128), "ABCdef0123456789"] {
            assert_eq!(with(&[ok.as_bytes()]).as_str(), ok);
        }
    }

    #[test]
    fn replaces_hostile_or_ambiguous_ids() {
        let long = "y".repeat(129);
        let cases: &[&[&[u8]]] = &[
            &[],
            &[b""],
            &[long.as_bytes()],
            &[b"has space"],
            &[b"quote\"injection"],
            &[b"tab\there"],
            &[b"brace{}"],
            &[b"\xc3\xa9t\xc3\xa9"],
            &[b"one", b"two"],
        ];
        for case in cases {
            let id = with(case);
            assert!(is_generated(&id), "{case:?} gave {id}");
        }
        assert_ne!(with(&[]), with(&[]), "generated ids are unique");
    }
}
