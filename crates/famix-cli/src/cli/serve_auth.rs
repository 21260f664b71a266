//! `famix serve`'s bearer-token authentication.
//!
//! The key comes from `--api-key-file FILE` or `FAMIX_API_KEY`; it is required when
//! the server binds beyond loopback, unless `--no-auth` says otherwise. Requests carry
//! `Authorization: Bearer <key>`; every route but `/v1/health` and the page itself
//! (static HTML, which asks for the key) answers 401 without it. Keys are compared
//! through their SHA-256 digests in constant time (`subtle`), so neither the length nor
//! a prefix leaks through timing, and the key is never logged or counted.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest key accepted.
const MIN_KEY_CHARS: usize = 16;

/// The service's key, kept as its digest.
#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
}

impl ApiKey {
    fn new(secret: &str, origin: &str) -> Result<Self> {
        let secret = secret.trim();
        if secret.chars().count() < MIN_KEY_CHARS {
            bail!("{origin}: the API key must have at least {MIN_KEY_CHARS} characters (e.g. `openssl rand -hex 32`)");
        }
        Ok(ApiKey { digest: Sha256::digest(secret.as_bytes()).into() })
    }

    /// Whether an `Authorization` header carries the key.
    pub fn accepts(&self, header: Option<&HeaderValue>) -> bool {
        let given = header.and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Bearer ")).unwrap_or("").trim();
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        bool::from(digest.ct_eq(&self.digest)) && !given.is_empty()
    }
}

/// Whether `host` names this machine only.
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The key the server requires, if any: from `file`, else `FAMIX_API_KEY`. Binding
/// beyond loopback without one is refused unless `no_auth`.
pub fn resolve(host: &str, file: Option<&PathBuf>, no_auth: bool) -> Result<Option<ApiKey>> {
    let key = match file {
        Some(f) => {
            let text = std::fs::read_to_string(f).with_context(|| format!("--api-key-file {}: cannot read it", f.display()))?;
            Some(ApiKey::new(&text, &format!("--api-key-file {}", f.display()))?)
        }
        None => match std::env::var("FAMIX_API_KEY") {
            Ok(v) if !v.trim().is_empty() => Some(ApiKey::new(&v, "FAMIX_API_KEY")?),
            _ => None,
        },
    };
    match (&key, no_auth) {
        (Some(_), true) => bail!("--no-auth contradicts the API key given (--api-key-file or FAMIX_API_KEY); use one or the other"),
        (None, false) if !is_loopback(host) => bail!(
            "--host {host} serves the model beyond this machine: give an API key (--api-key-file FILE or the FAMIX_API_KEY variable; clients send `Authorization: Bearer <key>`), or pass --no-auth to serve without authentication"
        ),
        _ => Ok(key),
    }
}

/// Middleware: 401 unless the request carries the key.
pub async fn require_key(State(key): State<Arc<ApiKey>>, req: Request, next: Next) -> Response {
    if key.accepts(req.headers().get(header::AUTHORIZATION)) {
        return next.run(req).await;
    }
    let body = serde_json::json!({"error": "missing or wrong API key (send Authorization: Bearer <key>)", "kind": "unauthorized"});
    let mut r = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"famix\""));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_whole() {
        let k = ApiKey::new("0123456789abcdef-secret", "test").unwrap();
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(k.accepts(Some(&h("Bearer 0123456789abcdef-secret"))));
        assert!(!k.accepts(Some(&h("Bearer 0123456789abcdef"))));
        assert!(!k.accepts(Some(&h("0123456789abcdef-secret"))));
        assert!(!k.accepts(None));
        assert!(ApiKey::new("short", "test").is_err());
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.0.0.1") && is_loopback("::1") && is_loopback("localhost") && is_loopback("127.0.0.2"));
        assert!(!is_loopback("0.0.0.0") && !is_loopback("192.168.1.5") && !is_loopback("::"));
    }
}
