//! Bearer-token check as an extractor: handlers that take [`Authorized`] only run for a request
//! carrying the configured token (or when none is configured). The token is compared in
//! constant time and never logged.

use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, header, request::Parts},
};
use subtle::ConstantTimeEq;

use super::{AgentError, AppState};

pub struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = AgentError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AgentError> {
        let Some(expected) = &state.token else {
            return Ok(Self);
        };
        let presented = bearer_token(&parts.headers);
        let valid = presented.is_some_and(|token| bool::from(token.as_bytes().ct_eq(expected.expose().as_bytes())));
        if valid {
            return Ok(Self);
        }
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.to_string());
        tracing::warn!(
            peer = peer.as_deref().unwrap_or("unknown"),
            path = parts.uri.path(),
            token_presented = presented.is_some(),
            "rejected a request without a valid bearer token"
        );
        Err(AgentError::Unauthorized { invalid_token: presented.is_some() })
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn parses_bearer_tokens_only() {
        assert_eq!(bearer_token(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("Basic abc")), None);
        assert_eq!(bearer_token(&headers("Bearer ")), None);
        assert_eq!(bearer_token(&headers("Bearer")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
