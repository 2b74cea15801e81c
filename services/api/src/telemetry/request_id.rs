//! Request ids: a client's `X-Request-ID` is kept only when it is one header of 1–128 characters
//! from `[A-Za-z0-9._:-]`; anything else is replaced, so a hostile header cannot forge or break a
//! log line or a response header.

use std::{fmt, sync::Arc};

use http::{HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut values = headers.get_all(&X_REQUEST_ID).iter();
        match (values.next(), values.next()) {
            (Some(value), None) if is_valid(value.as_bytes()) => {
                // Valid bytes are ASCII, so this cannot fail.
                Self(Arc::from(value.to_str().unwrap_or_default()))
            }
            _ => Self::generate(),
        }
    }

    pub fn generate() -> Self {
        Self(Arc::from(format!("{:032x}", rand::random::<u128>())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.0).expect("request ids are validated ASCII")
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn is_valid(bytes: &[u8]) -> bool {
    (1..=128).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
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
        id.as_str().len() == 32
            && id
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
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
